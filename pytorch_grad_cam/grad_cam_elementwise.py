"""The reference library's import path ``pytorch_grad_cam.grad_cam_elementwise``.

The code lives in ``pytorch_grad_cam.methods.gradient``.
"""

from .methods.gradient import GradCAMElementWise as GradCAMElementWise
