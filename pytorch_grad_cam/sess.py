"""Import path of the reference library: ``from pytorch_grad_cam.sess import SESS``."""
from .composite import SESS

__all__ = ["SESS"]
