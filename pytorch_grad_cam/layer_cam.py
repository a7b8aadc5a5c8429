"""Import path of the reference library: ``from pytorch_grad_cam.layer_cam import LayerCAM``."""
from .gradient import LayerCAM

__all__ = ["LayerCAM"]
