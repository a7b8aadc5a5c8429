"""Import path of the reference library: ``from pytorch_grad_cam.random_cam import RandomCAM``."""
from .projection import RandomCAM

__all__ = ["RandomCAM"]
