"""The reference library's import path ``pytorch_grad_cam.seg_eigen_cam``.

The code lives in ``pytorch_grad_cam.methods.projection``.
"""

from .methods.projection import SegEigenCAM as SegEigenCAM
