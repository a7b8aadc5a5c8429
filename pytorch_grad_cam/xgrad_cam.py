"""The reference library's import path ``pytorch_grad_cam.xgrad_cam``.

The code lives in ``pytorch_grad_cam.methods.gradient``.
"""

from .methods.gradient import XGradCAM as XGradCAM
