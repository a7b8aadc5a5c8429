"""Import path of the reference library: ``from pytorch_grad_cam.eigen_cam import EigenCAM``."""
from .projection import EigenCAM

__all__ = ["EigenCAM"]
