"""The reference library's import path ``pytorch_grad_cam.guided_backprop``.

The code lives in ``pytorch_grad_cam.methods.guided``.
"""

from .methods.guided import GuidedBackpropReLUModel as GuidedBackpropReLUModel
