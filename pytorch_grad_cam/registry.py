"""Method name -> class. Feeds the CLI's ``--method`` choices and the tests' parametrisation."""
from __future__ import annotations

from typing import Dict, Type

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
    XGradCAM,
)
from .guided import GuidedBackpropReLUModel, GuidedGradCAM
from .perturbation import ISCAM, SSCAM, AblationCAM, ScoreCAM
from .projection import FEM, KPCA_CAM, EigenCAM, RandomCAM, SegEigenCAM

METHODS: Dict[str, Type[BaseCAM]] = {
    cls.name: cls for cls in (
        GradCAM, GradCAMPlusPlus, XGradCAM, EigenCAM, ScoreCAM, AblationCAM,
        HiResCAM, GradCAMElementWise, LayerCAM, EigenGradCAM, SegEigenCAM, KPCA_CAM, FEM, RandomCAM,
        SSCAM, ISCAM,
        CAM, SmoothGradCAMPlusPlus, ShapleyCAM,
        FullGrad,
        FinerCAM, RefineCAM, SESS,
    )
}


#: Methods that are not CAMs (no targets, no single map): Deep Feature Factorization returns concepts and
#: one heatmap per concept; called as ``cls(model, target_layer)(x, n_components)``.
FACTORIZATION_METHODS = {"dff": DeepFeatureFactorization}

#: Pixel-resolution gradient methods, not CAMs: ``cls(model, ...)(x, targets)`` returns gradients with
#: the input's channels, ``(H, W, C)`` for one image, ``(B, H, W, C)`` for more.
PIXEL_METHODS = {"guidedbackprop": GuidedBackpropReLUModel, "guidedgradcam": GuidedGradCAM}


def get_method(name: str) -> Type[BaseCAM]:
    """The class registered under ``name`` (e.g. ``"gradcam"``), case-insensitive."""
    try:
        return METHODS[name.lower()]
    except KeyError:
        raise ValueError(f"unknown CAM method {name!r}; choose one of {sorted(METHODS)}") from None
