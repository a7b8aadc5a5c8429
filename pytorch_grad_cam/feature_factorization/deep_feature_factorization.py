"""``pytorch_grad_cam.feature_factorization.deep_feature_factorization``: the reference library's module path.

The implementation lives in :mod:`pytorch_grad_cam.factorization`.
"""
from ..factorization import DeepFeatureFactorization, dff

__all__ = ["DeepFeatureFactorization", "dff"]
