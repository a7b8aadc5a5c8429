"""Class Activation Maps for PyTorch vision models: Grad-CAM and its family."""
from importlib.metadata import PackageNotFoundError, version

from .base_cam import BaseCAM
from .composite import SESS, FinerCAM, RefineCAM
from .factorization import DeepFeatureFactorization
from .fullgrad import FullGrad
from .gradient import (
    CAM,
    EigenGradCAM,
    GradCAM,
    GradCAMElementWise,
    GradCAMPlusPlus,
    HiResCAM,
    LayerCAM,
    ShapleyCAM,
    SmoothGradCAMPlusPlus,
    SmoothGradCAMpp,
    XGradCAM,
)
from .guided import GuidedBackpropReLUModel, GuidedGradCAM
from .perturbation import ISCAM, SSCAM, AblationCAM, ScoreCAM
from .projection import FEM, KPCA_CAM, EigenCAM, RandomCAM, SegEigenCAM
from .registry import FACTORIZATION_METHODS, METHODS, PIXEL_METHODS, get_method

try:
    __version__ = version("pytorch_grad_cam")
except PackageNotFoundError:  # running from a source tree that was not installed
    __version__ = "0+unknown"

__all__ = [
    "BaseCAM", "GradCAM", "GradCAMPlusPlus", "XGradCAM", "EigenCAM", "ScoreCAM", "AblationCAM",
    "HiResCAM", "GradCAMElementWise", "LayerCAM", "EigenGradCAM", "SegEigenCAM", "KPCA_CAM", "FEM",
    "RandomCAM", "CAM", "SmoothGradCAMPlusPlus", "SmoothGradCAMpp", "ShapleyCAM",
    "SSCAM", "ISCAM",
    "FullGrad",
    "GuidedBackpropReLUModel", "GuidedGradCAM", "PIXEL_METHODS",
    "FinerCAM", "RefineCAM", "SESS",
    "DeepFeatureFactorization", "FACTORIZATION_METHODS",
    "METHODS", "get_method", "__version__",
]
