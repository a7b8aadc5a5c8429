"""Import path of the reference library: ``from pytorch_grad_cam.grad_cam_plusplus import GradCAMPlusPlus``."""
from .gradient import GradCAMPlusPlus

__all__ = ["GradCAMPlusPlus"]
