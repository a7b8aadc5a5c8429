"""RefineCAM: the product of the base method's maps of several layers."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ..._engine.maps import min_max_normalize
from ...base_cam import DEFAULT_OPTIONS, CallOptions, Target
from ..gradient import GradCAMPlusPlus
from .base import BaseMethod, CompositeCAM


def layer_product(maps: list[torch.Tensor]) -> torch.Tensor:
    """Each layer's ``(B, *spatial)`` map exactly as the base method alone would give it, then their product.

    Each map normalised, resized, normalised again; the engine min-max normalises the result.
    """
    product = min_max_normalize(maps[0])  # (B, *spatial)
    for layer_map in maps[1:]:
        product = product * min_max_normalize(layer_map)
    return product


#: The base method's call with RefineCAM's fusion.
_REFINED = CallOptions(fuse=layer_product)


class RefineCAM(CompositeCAM):
    """RefineCAM: the product of the base method's maps of several layers.

    ``cam = norm(prod_l norm(cam_l))`` with ``cam_l`` the base method's (default Grad-CAM++) map of
    target layer ``l``, resized to the input, and ``norm`` the per-image min-max normalisation to
    ``[0, 1]``: a position stays hot only where every layer agrees, which removes the noise of early
    layers while keeping their resolution. (The reference, grad-cam 1.5.7, intends the same per-layer
    normalisation but its loop does not store the result; its maps are already in [0, 1], so the
    formula is the same.)

    All layers come from one forward and one backward pass (as the base method's average would): the
    base method is called with the product as its fusion of layer maps. A base method whose map does not
    come from the target layers (FullGrad) is run once per layer instead.

    Args:
        model, target_layers, reshape_transform: as for every method; order of layers is irrelevant.
        base_method: the CAM method per layer (class or registry name), default Grad-CAM++.
        **kwargs: ``device``, ``batch_size``..., and the base method's own arguments.

    Call ``cam(input_tensor, targets=None, eigen_smooth=False, *, aug_smooth=False)``; returns
    ``(B, *spatial)`` float32 maps in ``[0, 1]``.

    Example:
        >>> cam = RefineCAM(model, [model.layer2[-1], model.layer3[-1], model.layer4[-1]])
        >>> maps = cam(x, targets=[281])  # (B, H, W)
    """

    name = "refinecam"
    default_base = GradCAMPlusPlus
    # The default base's (an instance takes its own base's, as its other capabilities).
    needs_nonnegative_activations = GradCAMPlusPlus.needs_nonnegative_activations

    def __init__(
        self,
        model: nn.Module,
        target_layers: Any = None,
        reshape_transform: Any = None,
        base_method: BaseMethod = GradCAMPlusPlus,
        **kwargs: Any,
    ) -> None:
        """Build the base method, one instance per layer where it does not use target layers."""
        super().__init__(model, target_layers, reshape_transform, base_method, **kwargs)
        # One instance per layer where the base method does not fuse target layers of its own.
        self.per_layer = (
            []
            if self.base_method.uses_target_layers
            else [
                self.base_method(
                    model, [layer], self.reshape_transform, device=self.device, **self.base_kwargs
                )
                for layer in self.target_layers
            ]
        )

    def compute_maps(
        self,
        input_tensor: torch.Tensor,
        targets: list[Target] | None,
        eigen_smooth: bool,
        options: CallOptions = DEFAULT_OPTIONS,
    ) -> torch.Tensor:
        """The normalised product of the layers' maps, ``(B, *spatial)``, in ``[0, 1]``."""
        if not self.per_layer:
            return self.base_cam.compute_maps(input_tensor, targets, eigen_smooth, _REFINED)
        # Each layer's map (B, *spatial) in [0, 1], multiplied.
        product = self.per_layer[0].compute_maps(input_tensor, targets, eigen_smooth)
        for cam in self.per_layer[1:]:
            product = product * cam.compute_maps(input_tensor, targets, eigen_smooth)
        return min_max_normalize(product)
