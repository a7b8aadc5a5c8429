"""CAMs that project the activations on their principal components; no gradients needed."""
from __future__ import annotations

from typing import Optional

import torch

from .base_cam import BaseCAM, LayerContext, first_principal_component


class EigenCAM(BaseCAM):
    """Eigen-CAM (Muhammad & Yeasin, arXiv:2008.00299).

    The map is the projection of the activations on their first principal component: per image, the
    activations as (positions x channels), each channel centred, times the first right singular vector.
    Class-agnostic (targets are ignored) and gradient-free. The sign is fixed so that the map
    correlates positively with the total activation (see ``first_principal_component``).
    """

    name = "eigencam"
    uses_gradients = False

    def layer_map(self, activations: torch.Tensor, gradients: Optional[torch.Tensor],
                  context: LayerContext, eigen_smooth: bool) -> torch.Tensor:
        return first_principal_component(activations)  # (B, *spatial)
