"""The reference library's import path ``pytorch_grad_cam.eigen_cam``.

The code lives in ``pytorch_grad_cam.methods.projection``.
"""

from .methods.projection import EigenCAM as EigenCAM
