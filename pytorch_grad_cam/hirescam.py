"""The reference library's import path ``pytorch_grad_cam.hirescam``.

The code lives in ``pytorch_grad_cam.methods.gradient``.
"""

from .methods.gradient import HiResCAM as HiResCAM
