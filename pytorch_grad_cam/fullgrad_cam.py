"""Import path of the reference library: ``from pytorch_grad_cam.fullgrad_cam import FullGrad``."""
from .fullgrad import FullGrad

__all__ = ["FullGrad"]
