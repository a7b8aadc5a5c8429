"""Import path of the reference library: ``from pytorch_grad_cam.refine_cam import RefineCAM``."""
from .composite import RefineCAM

__all__ = ["RefineCAM"]
