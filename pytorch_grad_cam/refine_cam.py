"""The reference library's import path ``pytorch_grad_cam.refine_cam``.

The code lives in ``pytorch_grad_cam.methods.composite.refine``.
"""

from .methods.composite.refine import RefineCAM as RefineCAM
