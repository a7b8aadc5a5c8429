"""``pytorch_grad_cam.feature_factorization.deep_feature_factorization``: the reference library's module path.

The implementation lives in :mod:`pytorch_grad_cam.factorization`.
"""
from ..factorization import DeepFeatureFactorization, create_labels_legend, dff, run_dff_on_image

__all__ = ["DeepFeatureFactorization", "create_labels_legend", "dff", "run_dff_on_image"]
