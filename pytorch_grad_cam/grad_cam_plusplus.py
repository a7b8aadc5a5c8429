"""The reference library's import path for ``GradCAMPlusPlus``."""
from .gradient import GradCAMPlusPlus

__all__ = ["GradCAMPlusPlus"]
