"""Helpers around the CAM engine: targets, image utilities and transformer reshape transforms.

The image utilities need OpenCV; they are imported on first use, so that ``import pytorch_grad_cam``
does not import it.
"""

from typing import Any

from .model_targets import (
    BinaryClassifierOutputTarget,
    ClassifierOutputReST,
    ClassifierOutputSoftmaxTarget,
    ClassifierOutputTarget,
    DifferenceFromConceptTarget,
    FasterRCNNBoxScoreTarget,
    FinerWeightedTarget,
    RawScoresOutputTarget,
    SemanticSegmentationTarget,
    SimilarityToConceptTarget,
    SoftmaxOutputTarget,
)
from .reshape_transforms import (
    fasterrcnn_reshape_transform,
    fpn_reshape_transform,
    swin_reshape_transform,
    swinT_reshape_transform,
    vit_reshape_transform,
)

__all__ = [
    "BinaryClassifierOutputTarget",
    "ClassifierOutputReST",
    "ClassifierOutputSoftmaxTarget",
    "ClassifierOutputTarget",
    "DifferenceFromConceptTarget",
    "FasterRCNNBoxScoreTarget",
    "FinerWeightedTarget",
    "RawScoresOutputTarget",
    "SemanticSegmentationTarget",
    "SimilarityToConceptTarget",
    "SoftmaxOutputTarget",
    "deprocess_image",
    "fasterrcnn_reshape_transform",
    "fpn_reshape_transform",
    "preprocess_image",
    "scale_cam_image",
    "show_cam_on_image",
    "swinT_reshape_transform",
    "swin_reshape_transform",
    "vit_reshape_transform",
]

_IMAGE_NAMES = ("deprocess_image", "preprocess_image", "scale_cam_image", "show_cam_on_image")


def __getattr__(name: str) -> Any:
    # PEP 562: the image utilities (and OpenCV) load on first access, e.g. ``utils.show_cam_on_image``.
    if name in _IMAGE_NAMES:
        from . import image

        return getattr(image, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
