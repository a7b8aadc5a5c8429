"""Method name -> class. Feeds the CLI's ``--method`` choices and the tests' parametrisation."""
from __future__ import annotations

from typing import Dict, Type

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

METHODS: Dict[str, Type[BaseCAM]] = {
    cls.name: cls for cls in (
        GradCAM, GradCAMPlusPlus, XGradCAM, EigenCAM, ScoreCAM, AblationCAM,
        HiResCAM, GradCAMElementWise, LayerCAM, EigenGradCAM, SegEigenCAM, KPCA_CAM, FEM, RandomCAM,
    )
}


def get_method(name: str) -> Type[BaseCAM]:
    """The class registered under ``name`` (e.g. ``"gradcam"``), case-insensitive."""
    try:
        return METHODS[name.lower()]
    except KeyError:
        raise ValueError(f"unknown CAM method {name!r}; choose one of {sorted(METHODS)}") from None
