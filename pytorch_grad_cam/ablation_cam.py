"""Import path of the reference library: ``from pytorch_grad_cam.ablation_cam import AblationCAM``."""
from .perturbation import AblationCAM

__all__ = ["AblationCAM"]
