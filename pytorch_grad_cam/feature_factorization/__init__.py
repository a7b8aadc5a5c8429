"""The reference library's import path for Deep Feature Factorization (``pytorch_grad_cam.factorization``)."""
from ..factorization import DeepFeatureFactorization, dff

__all__ = ["DeepFeatureFactorization", "dff"]
