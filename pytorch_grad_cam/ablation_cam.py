"""The reference library's import path ``pytorch_grad_cam.ablation_cam``.

The code lives in ``pytorch_grad_cam.methods.perturbation``.
"""

from .methods.perturbation import AblationCAM as AblationCAM
