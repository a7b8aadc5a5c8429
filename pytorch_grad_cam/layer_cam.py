"""The reference library's import path ``pytorch_grad_cam.layer_cam``.

The code lives in ``pytorch_grad_cam.methods.gradient``.
"""

from .methods.gradient import LayerCAM as LayerCAM
