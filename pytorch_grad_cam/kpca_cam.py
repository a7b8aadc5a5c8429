"""The reference library's import path ``pytorch_grad_cam.kpca_cam``.

The code lives in ``pytorch_grad_cam.methods.projection``.
"""

from .methods.projection import KPCA_CAM as KPCA_CAM
