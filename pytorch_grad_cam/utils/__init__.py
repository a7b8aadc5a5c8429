"""Helpers around the CAM engine: targets, image utilities and transformer reshape transforms."""
from .image import deprocess_image, preprocess_image, scale_cam_image, show_cam_on_image
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
    "preprocess_image",
    "scale_cam_image",
    "fasterrcnn_reshape_transform",
    "fpn_reshape_transform",
    "show_cam_on_image",
    "swinT_reshape_transform",
    "swin_reshape_transform",
    "vit_reshape_transform",
]
