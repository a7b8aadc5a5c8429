"""Import path of the reference library: ``from pytorch_grad_cam.grad_cam import GradCAM``."""
from .gradient import GradCAM

__all__ = ["GradCAM"]
