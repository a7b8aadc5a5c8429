"""The reference library's import path for Deep Feature Factorization (``pytorch_grad_cam.factorization``)."""
from ..factorization import DeepFeatureFactorization, create_labels_legend, dff, run_dff_on_image

__all__ = ["DeepFeatureFactorization", "create_labels_legend", "dff", "run_dff_on_image"]
