"""Class Activation Maps for PyTorch models: Grad-CAM and its family.

Importing the package defines every method (each registers itself in ``pytorch_grad_cam.registry``) and
does not import OpenCV: only ``pytorch_grad_cam.utils.image`` and the command line need it.
"""

from importlib.metadata import PackageNotFoundError, version

from . import registry
from ._engine.capture import LayerInput
from ._engine.session import model_lock
from .base_cam import BaseCAM
from .methods.activation import CAM, FEM, RandomCAM
from .methods.composite import SESS, FinerCAM, RefineCAM
from .methods.factorization import DeepFeatureFactorization
from .methods.fullgrad import FullGrad
from .methods.gradient import (
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
from .methods.guided import GuidedBackpropReLUModel, GuidedGradCAM
from .methods.perturbation import ISCAM, SSCAM, AblationCAM, ScoreCAM
from .methods.projection import KPCA_CAM, EigenCAM, EigenGradCAM, SegEigenCAM
from .registry import FACTORIZATION_METHODS, METHODS, PIXEL_METHODS, get_method

try:
    __version__ = version("pytorch_grad_cam")
except PackageNotFoundError:  # running from a source tree that was not installed
    __version__ = "0+unknown"

# Every registered class, then the aliases and the registry itself: derived, never edited by hand.
__all__ = [
    "BaseCAM",
    *sorted({cls.__name__ for table in registry.KINDS.values() for cls in table.values()}),
    "SmoothGradCAMpp",
    "FACTORIZATION_METHODS",
    "LayerInput",
    "METHODS",
    "PIXEL_METHODS",
    "__version__",
    "get_method",
    "model_lock",
]
