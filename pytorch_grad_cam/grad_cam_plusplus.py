"""The reference library's import path ``pytorch_grad_cam.grad_cam_plusplus``.

The code lives in ``pytorch_grad_cam.methods.gradient``.
"""

from .methods.gradient import GradCAMPlusPlus as GradCAMPlusPlus
