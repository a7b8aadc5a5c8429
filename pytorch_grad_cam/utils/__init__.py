"""Helpers around the CAM engine: targets, image utilities and transformer reshape transforms."""
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
]
