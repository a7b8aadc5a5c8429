"""Import path of the reference library: ``from pytorch_grad_cam.xgrad_cam import XGradCAM``."""
from .gradient import XGradCAM

__all__ = ["XGradCAM"]
