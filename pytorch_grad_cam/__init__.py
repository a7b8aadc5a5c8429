"""Class Activation Maps for PyTorch vision models: Grad-CAM and its family."""
from importlib.metadata import PackageNotFoundError, version

from .base_cam import BaseCAM
from .gradient import (
    EigenGradCAM,
    GradCAM,
    GradCAMElementWise,
    GradCAMPlusPlus,
    HiResCAM,
    LayerCAM,
    XGradCAM,
)
from .perturbation import AblationCAM, ScoreCAM
from .projection import FEM, KPCA_CAM, EigenCAM, RandomCAM, SegEigenCAM
from .registry import METHODS, get_method

try:
    __version__ = version("pytorch_grad_cam")
except PackageNotFoundError:  # running from a source tree that was not installed
    __version__ = "0+unknown"

__all__ = [
    "BaseCAM", "GradCAM", "GradCAMPlusPlus", "XGradCAM", "EigenCAM", "ScoreCAM", "AblationCAM",
    "HiResCAM", "GradCAMElementWise", "LayerCAM", "EigenGradCAM", "SegEigenCAM", "KPCA_CAM", "FEM",
    "RandomCAM",
    "METHODS", "get_method", "__version__",
]
