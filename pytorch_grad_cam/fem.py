"""Import path of the reference library: ``from pytorch_grad_cam.fem import FEM``."""
from .projection import FEM

__all__ = ["FEM"]
