"""Gradient-weighted CAMs: channel weights computed from the gradient of the score."""
from __future__ import annotations

import warnings

import torch

from .base_cam import BaseCAM, LayerContext, broadcast_weights, first_principal_component


class GradCAM(BaseCAM):
    """Grad-CAM (Selvaraju et al., arXiv:1610.02391).

    ``w_k = mean_ij dy/dA_k[i, j]``; ``cam = relu(sum_k w_k A_k)``.

    Example:
        >>> cam = GradCAM(model, target_layers=[model.layer4[-1]])
        >>> maps = cam(x, [ClassifierOutputTarget(281)])  # (B, H, W)
    """

    name = "gradcam"

    def cam_weights(self, activations: torch.Tensor, gradients: torch.Tensor,
                    context: LayerContext) -> torch.Tensor:
        return gradients.flatten(2).mean(-1)  # (B, C)


class GradCAMPlusPlus(BaseCAM):
    """Grad-CAM++ (Chattopadhyay et al., arXiv:1710.11063, eq. 19, with exp(S) as the score).

    ``alpha = g^2 / (2 g^2 + sum_ab(A) g^3 + 1e-6)`` (0 where ``g == 0``);
    ``w_k = sum_ij relu(g_ij) alpha_ij``, with ``g = dy/dA_k``.
    """

    name = "gradcam++"

    def cam_weights(self, activations: torch.Tensor, gradients: torch.Tensor,
                    context: LayerContext) -> torch.Tensor:
        g2 = gradients.pow(2)  # (B, C, *spatial)
        g3 = g2 * gradients
        sum_a = broadcast_weights(activations.flatten(2).sum(-1), activations)  # (B, C, 1, ...)
        alpha = g2 / (2 * g2 + sum_a * g3 + 1e-6)
        alpha = torch.where(gradients != 0, alpha, torch.zeros_like(alpha))
        return (gradients.relu() * alpha).flatten(2).sum(-1)  # (B, C)


class XGradCAM(BaseCAM):
    """XGrad-CAM (Fu et al., arXiv:2008.02312).

    ``w_k = sum_ij (g_ij A_k[i, j]) / (sum_ij A_k[i, j] + 1e-7)``.
    """

    name = "xgradcam"

    def cam_weights(self, activations: torch.Tensor, gradients: torch.Tensor,
                    context: LayerContext) -> torch.Tensor:
        return (gradients * activations).flatten(2).sum(-1) / (activations.flatten(2).sum(-1) + 1e-7)


class HiResCAM(BaseCAM):
    """HiResCAM (Draelos & Carin, arXiv:2011.08891).

    ``cam = sum_k g_k * A_k`` element-wise: the gradient is not pooled, so the map is exactly what
    the score attributes to each position (for models that end in a linear layer after pooling).
    Eigen smoothing gives that faithfulness guarantee up, hence a warning.
    """

    name = "hirescam"

    def cam_weights(self, activations: torch.Tensor, gradients: torch.Tensor,
                    context: LayerContext) -> torch.Tensor:
        return gradients  # (B, C, *spatial): one weight per position

    def layer_map(self, activations: torch.Tensor, gradients: torch.Tensor,
                  context: LayerContext, eigen_smooth: bool) -> torch.Tensor:
        if eigen_smooth:
            warnings.warn("HiResCAM with eigen_smooth=True is no longer guaranteed to be faithful to the "
                          "model: the principal component replaces the exact element-wise attribution",
                          UserWarning, stacklevel=4)
        return super().layer_map(activations, gradients, context, eigen_smooth)


class GradCAMElementWise(BaseCAM):
    """Grad-CAM element-wise: ``cam = sum_k relu(g_k * A_k)``; only positive contributions count."""

    name = "gradcamelementwise"

    def layer_map(self, activations: torch.Tensor, gradients: torch.Tensor,
                  context: LayerContext, eigen_smooth: bool) -> torch.Tensor:
        contributions = (gradients * activations).relu()  # (B, C, *spatial)
        return first_principal_component(contributions) if eigen_smooth else contributions.sum(1)


class LayerCAM(BaseCAM):
    """LayerCAM (Jiang et al., IEEE TIP 2021): ``cam = sum_k relu(g_k) * A_k``.

    Spatial weights: each position keeps its own positive gradient, which makes the maps of early
    layers usable.
    """

    name = "layercam"

    def cam_weights(self, activations: torch.Tensor, gradients: torch.Tensor,
                    context: LayerContext) -> torch.Tensor:
        return gradients.relu()  # (B, C, *spatial)


class EigenGradCAM(BaseCAM):
    """Eigen-Grad-CAM: the first principal component of ``g * A`` (class-discriminative Eigen-CAM)."""

    name = "eigengradcam"

    def layer_map(self, activations: torch.Tensor, gradients: torch.Tensor,
                  context: LayerContext, eigen_smooth: bool) -> torch.Tensor:
        return first_principal_component(gradients * activations)  # (B, *spatial)
