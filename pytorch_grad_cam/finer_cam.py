"""Import path of the reference library: ``from pytorch_grad_cam.finer_cam import FinerCAM``."""
from .composite import FinerCAM

__all__ = ["FinerCAM"]
