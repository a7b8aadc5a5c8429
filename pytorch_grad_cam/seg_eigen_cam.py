"""Import path of the reference library: ``from pytorch_grad_cam.seg_eigen_cam import SegEigenCAM``."""
from .projection import SegEigenCAM

__all__ = ["SegEigenCAM"]
