"""Import path of the reference library:
``from pytorch_grad_cam.guided_backprop import GuidedBackpropReLUModel``."""
from .guided import GuidedBackpropReLUModel

__all__ = ["GuidedBackpropReLUModel"]
