"""Import path of the reference library: ``from pytorch_grad_cam.hirescam import HiResCAM``."""
from .gradient import HiResCAM

__all__ = ["HiResCAM"]
