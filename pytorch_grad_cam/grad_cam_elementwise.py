"""Import path of the reference library:
``from pytorch_grad_cam.grad_cam_elementwise import GradCAMElementWise``."""
from .gradient import GradCAMElementWise

__all__ = ["GradCAMElementWise"]
