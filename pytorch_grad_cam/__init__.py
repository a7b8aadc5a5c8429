"""Class Activation Maps for PyTorch vision models: Grad-CAM and its family."""
from importlib.metadata import PackageNotFoundError, version

from .base_cam import BaseCAM
from .gradient import GradCAM, GradCAMPlusPlus, XGradCAM
from .perturbation import AblationCAM, ScoreCAM
from .projection import EigenCAM
from .registry import METHODS, get_method

try:
    __version__ = version("pytorch_grad_cam")
except PackageNotFoundError:  # running from a source tree that was not installed
    __version__ = "0+unknown"

__all__ = [
    "BaseCAM", "GradCAM", "GradCAMPlusPlus", "XGradCAM", "EigenCAM", "ScoreCAM", "AblationCAM",
    "METHODS", "get_method", "__version__",
]
