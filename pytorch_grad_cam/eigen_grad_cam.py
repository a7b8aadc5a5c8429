"""Import path of the reference library: ``from pytorch_grad_cam.eigen_grad_cam import EigenGradCAM``."""
from .gradient import EigenGradCAM

__all__ = ["EigenGradCAM"]
