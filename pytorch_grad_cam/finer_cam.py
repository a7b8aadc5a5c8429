"""The reference library's import path ``pytorch_grad_cam.finer_cam``.

The code lives in ``pytorch_grad_cam.methods.composite.finer``.
"""

from .methods.composite.finer import FinerCAM as FinerCAM
