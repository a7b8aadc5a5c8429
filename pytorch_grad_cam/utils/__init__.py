"""Helpers around the CAM engine: targets, image utilities and transformer reshape transforms."""
from .image import deprocess_image, preprocess_image, scale_cam_image, show_cam_on_image
from .model_targets import (
    BinaryClassifierOutputTarget,
    ClassifierOutputSoftmaxTarget,
    ClassifierOutputTarget,
    RawScoresOutputTarget,
    SoftmaxOutputTarget,
)

__all__ = [
    "BinaryClassifierOutputTarget",
    "ClassifierOutputSoftmaxTarget",
    "ClassifierOutputTarget",
    "RawScoresOutputTarget",
    "SoftmaxOutputTarget",
    "deprocess_image",
    "preprocess_image",
    "scale_cam_image",
    "show_cam_on_image",
]
