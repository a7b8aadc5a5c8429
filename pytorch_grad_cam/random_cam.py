"""The reference library's import path ``pytorch_grad_cam.random_cam``.

The code lives in ``pytorch_grad_cam.methods.activation``.
"""

from .methods.activation import RandomCAM as RandomCAM
