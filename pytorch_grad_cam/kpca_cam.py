"""Import path of the reference library: ``from pytorch_grad_cam.kpca_cam import KPCA_CAM``."""
from .projection import KPCA_CAM

__all__ = ["KPCA_CAM"]
