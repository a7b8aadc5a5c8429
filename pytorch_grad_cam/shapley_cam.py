"""Import path of the reference library: ``from pytorch_grad_cam.shapley_cam import ShapleyCAM``."""
from .gradient import ShapleyCAM

__all__ = ["ShapleyCAM"]
