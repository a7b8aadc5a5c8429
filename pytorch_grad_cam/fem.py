"""The reference library's import path ``pytorch_grad_cam.fem``.

The code lives in ``pytorch_grad_cam.methods.activation``.
"""

from .methods.activation import FEM as FEM
