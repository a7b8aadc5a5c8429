"""The reference library's import path ``pytorch_grad_cam.fullgrad_cam``.

The code lives in ``pytorch_grad_cam.methods.fullgrad``.
"""

from .methods.fullgrad import FullGrad as FullGrad
