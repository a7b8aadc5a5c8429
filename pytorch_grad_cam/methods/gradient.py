"""Gradient-weighted CAMs: channel (or position) weights computed from the gradient of the score."""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial
from typing import Any, Callable

import torch
from torch import nn

from .._engine.autograd import TwiceDifferentiable
from .._engine.capture import layer_name, map_tensors
from .._engine.checks import check_float, check_int, check_seed
from .._engine.maps import broadcast_weights, first_principal_component, min_max_normalize
from .._engine.warnings import warn
from ..base_cam import (
    DEFAULT_OPTIONS,
    BaseCAM,
    CallOptions,
    ForwardPass,
    LayerContext,
    Target,
    gradient_or_zeros,
    warn_if_zero_gradients,
)


class GradCAM(BaseCAM):
    """Grad-CAM (Selvaraju et al., arXiv:1610.02391).

    ``w_k = mean_ij dy/dA_k[i, j]``; ``cam = relu(sum_k w_k A_k)``.

    Example:
        >>> cam = GradCAM(model, target_layers=[model.layer4[-1]])
        >>> maps = cam(x, [ClassifierOutputTarget(281)])  # (B, H, W)
    """

    name = "gradcam"

    def cam_weights(
        self, activations: torch.Tensor, gradients: torch.Tensor, context: LayerContext
    ) -> torch.Tensor:
        """``w_k = mean_ij g_k[i, j]``, ``(B, C)``."""
        return gradients.flatten(2).mean(-1)  # (B, C)


class GradCAMPlusPlus(BaseCAM):
    """Grad-CAM++ (Chattopadhyay et al., arXiv:1710.11063, eq. 19, with exp(S) as the score).

    ``alpha = g^2 / (2 g^2 + sum_ab(A) g^3 + 1e-6)`` (0 where ``g == 0``);
    ``w_k = sum_ij relu(g_ij) alpha_ij``, with ``g = dy/dA_k``.
    """

    name = "gradcam++"
    # sum_ab(A) < 0 (a batch norm's output) can turn alpha negative and the whole map to zeros.
    needs_nonnegative_activations = True

    def cam_weights(
        self, activations: torch.Tensor, gradients: torch.Tensor, context: LayerContext
    ) -> torch.Tensor:
        """Grad-CAM++'s ``w_k = sum_ij relu(g_ij) alpha_ij``, ``(B, C)``; see the class docstring."""
        g2 = gradients.pow(2)  # (B, C, *spatial)
        g3 = g2 * gradients
        sum_a = broadcast_weights(activations.flatten(2).sum(-1), activations)  # (B, C, 1, ...)
        alpha = _where_finite(g2 / (2 * g2 + sum_a * g3 + 1e-6), lambda: _alpha64(gradients.double(), sum_a))
        alpha = torch.where(gradients != 0, alpha, torch.zeros_like(alpha))
        return (gradients.relu() * alpha).flatten(2).sum(-1)  # (B, C)


def _alpha64(gradients: torch.Tensor, sum_a: torch.Tensor) -> torch.Tensor:
    """Grad-CAM++'s ``alpha = D2 / (2 D2 + sum(A) D3 + 1e-6)``, computed in float64.

    ``D_n`` is ``g^n`` for ``(B, C, *spatial)`` gradients, and its mean over the samples for Smooth
    Grad-CAM++'s ``(S, B, C, *spatial)``.
    """
    g2, g3 = gradients.pow(2), gradients.pow(3)
    if gradients.ndim > sum_a.ndim:  # Smooth Grad-CAM++'s samples
        g2, g3 = g2.mean(0), g3.mean(0)
    return g2 / (2 * g2 + sum_a.double() * g3 + 1e-6)


def _where_finite(alpha: torch.Tensor, exact: Callable[[], torch.Tensor]) -> torch.Tensor:
    """``alpha`` where it is finite, else ``exact()``: the same ratio in float64.

    At extreme gradients (``|g|`` above about 1e12 in float32) ``g^2`` and ``g^3`` overflow, and the ratio
    is inf/inf = NaN.
    """
    finite = torch.isfinite(alpha)
    if bool(finite.all()):
        return alpha
    return torch.where(finite, alpha, exact().to(alpha.dtype))


class XGradCAM(BaseCAM):
    """XGrad-CAM (Fu et al., arXiv:2008.02312).

    ``w_k = sum_ij (g_ij A_k[i, j]) / (sum_ij A_k[i, j] + 1e-7)``.
    """

    name = "xgradcam"
    needs_nonnegative_activations = True  # divides by sum_ij A_k, ~0 or negative before a ReLU

    def cam_weights(
        self, activations: torch.Tensor, gradients: torch.Tensor, context: LayerContext
    ) -> torch.Tensor:
        """``w_k = sum_ij (g_ij A_k[i, j]) / (sum_ij A_k[i, j] + 1e-7)``, ``(B, C)``."""
        return (gradients * activations).flatten(2).sum(-1) / (activations.flatten(2).sum(-1) + 1e-7)


class HiResCAM(BaseCAM):
    """HiResCAM (Draelos & Carin, arXiv:2011.08891).

    ``cam = sum_k g_k * A_k`` element-wise: the gradient is not pooled, so the map is exactly what
    the score attributes to each position (for models that end in a linear layer after pooling).
    Eigen smoothing gives that faithfulness guarantee up, hence a warning.
    """

    name = "hirescam"

    def cam_weights(
        self, activations: torch.Tensor, gradients: torch.Tensor, context: LayerContext
    ) -> torch.Tensor:
        """The gradients themselves, ``(B, C, *spatial)``: one weight per position."""
        return gradients  # (B, C, *spatial): one weight per position

    def layer_map(
        self, activations: torch.Tensor, gradients: torch.Tensor, context: LayerContext, eigen_smooth: bool
    ) -> torch.Tensor:
        """The base map ``sum_k g_k * A_k``; warns that ``eigen_smooth`` loses the faithfulness guarantee."""
        if eigen_smooth:
            warn(
                "HiResCAM with eigen_smooth=True is no longer guaranteed to be faithful to the "
                "model: the principal component replaces the exact element-wise attribution",
                UserWarning,
            )
        return super().layer_map(activations, gradients, context, eigen_smooth)


class GradCAMElementWise(BaseCAM):
    """Grad-CAM element-wise: ``cam = sum_k relu(g_k * A_k)``; only positive contributions count."""

    name = "gradcamelementwise"

    def layer_map(
        self, activations: torch.Tensor, gradients: torch.Tensor, context: LayerContext, eigen_smooth: bool
    ) -> torch.Tensor:
        """The map ``sum_k relu(g_k * A_k)``.

        With ``eigen_smooth``: the first principal component of ``relu(g * A)`` instead.
        """
        contributions = (gradients * activations).relu()  # (B, C, *spatial)
        return first_principal_component(contributions) if eigen_smooth else contributions.sum(1)


class LayerCAM(BaseCAM):
    """LayerCAM (Jiang et al., IEEE TIP 2021): ``cam = sum_k relu(g_k) * A_k``.

    Spatial weights: each position keeps its own positive gradient, which makes the maps of early
    layers usable.
    """

    name = "layercam"

    def cam_weights(
        self, activations: torch.Tensor, gradients: torch.Tensor, context: LayerContext
    ) -> torch.Tensor:
        """``relu(g)``, ``(B, C, *spatial)``: each position's own positive gradient."""
        return gradients.relu()  # (B, C, *spatial)


class SmoothGradCAMPlusPlus(BaseCAM):
    """Smooth Grad-CAM++ (Omeiza et al., arXiv:1908.01224): Grad-CAM++ with SmoothGrad's noise averaging.

    With ``g_s = dy/dA`` on noisy copy ``s`` of the input and ``A`` the activations of the clean input,
    ``D1, D2, D3 = mean_s g_s, mean_s g_s^2, mean_s g_s^3`` (the 1st/2nd/3rd order terms of Grad-CAM++
    with ``exp(y)`` as the score, averaged over the samples);
    ``alpha = D2 / (2 D2 + sum_ab(A) D3 + 1e-6)`` (0 where ``D2 == 0``); ``w_k = sum_ij relu(D1) alpha``;
    ``cam = relu(sum_k w_k A_k)``. With ``std=0`` it is Grad-CAM++.

    Args:
        num_samples: noisy copies per image (``S``), an int >= 1.
        std: the noise level relative to each image's range: copy ``s`` of image ``b`` is
            ``x_b + std * (max(x_b) - min(x_b)) * eps[s, b]``.
        seed: fixes the noise: ``eps = torch.randn((S, *x.shape), generator=torch.Generator().
            manual_seed(seed))`` (drawn on the CPU in float32, then cast to the input's device and dtype);
            the same seed gives the same map on every call and every device. ``None``: fresh noise each
            call. The global random state is never used.
        Other arguments: as :class:`BaseCAM`.

    Two forward/backward passes: the clean batch (activations, targets and the checks, so that an error
    comes before the noisy copies run), then the ``S`` noisy copies in one batch of ``S * B``.

    Shapes: the ``gradients`` given to :meth:`cam_weights` are ``(S, B, C, *spatial)``.

    Example:
        >>> cam = SmoothGradCAMPlusPlus(model, [model.layer4[-1]], num_samples=8, seed=0)
        >>> maps = cam(x, [281])  # (B, H, W)
    """

    name = "smoothgradcam++"
    deterministic = False  # without a seed, every call draws new noise
    needs_nonnegative_activations = True  # Grad-CAM++'s alpha, with sum_ab(A)

    def __init__(
        self,
        model: nn.Module,
        target_layers: nn.Module | Sequence[nn.Module] | None = None,
        reshape_transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
        *,
        num_samples: int = 4,
        std: float = 0.3,
        seed: int | None = None,
        **kwargs: Any,
    ) -> None:
        """Check and store ``num_samples``, ``std`` and ``seed``; see the class docstring."""
        super().__init__(model, target_layers, reshape_transform, **kwargs)
        self.num_samples = check_int(num_samples, "num_samples", 1)
        self.std = check_float(std, "std", 0)
        self.seed = check_seed(seed)

    def _noisy_copies(self, x: torch.Tensor) -> torch.Tensor:
        """``(S * B, C, *spatial)``: the noisy copies, sample-major.

        Copy ``s`` of image ``b`` is row ``s * B + b``.
        """
        generator = torch.Generator()  # its own state: the global RNG is left alone
        if self.seed is None:
            generator.seed()
        else:
            generator.manual_seed(self.seed)
        eps = torch.randn((self.num_samples, *x.shape), generator=generator)  # (S, B, C, *spatial)
        eps = eps.to(device=x.device, dtype=x.dtype)
        flat = x.flatten(1)  # (B, C * prod(spatial))
        sigma = self.std * (flat.amax(1) - flat.amin(1))  # (B,)
        noisy = x + broadcast_weights(sigma, x) * eps  # (S, B, C, *spatial)
        return noisy.flatten(0, 1)

    def compute_maps(
        self,
        input_tensor: torch.Tensor,
        targets: list[Target] | None,
        eigen_smooth: bool,
        options: CallOptions = DEFAULT_OPTIONS,
    ) -> torch.Tensor:
        """The clean pass (targets, scores, checks), then the ``S`` noisy copies in one batch; fused maps."""
        with self.session(input_tensor) as x:  # (B, C, *spatial)
            batch, samples = x.shape[0], self.num_samples
            # The clean pass: activations, targets (top class), scores, and every check of the engine
            # (layers run, scores finite, gradients reach the layers) before the S noisy copies run.
            # Its gradients are only for the checks: the maps use the noisy gradients.
            clean, resolved, scores = self.scored_pass(x, targets, options)[:3]
            scores = scores.detach()
            # A layer's output may be a structure of tensors (an FPN's dict of levels): detach each tensor.
            clean.activations = {
                key: map_tensors(torch.Tensor.detach, value) for key, value in clean.activations.items()
            }
            clean.output = None
            # The noisy pass: all S copies in one batch, sample-major (row s * B + b).
            noisy = self.forward_pass(self._noisy_copies(x), options)  # (S * B, ...)
            noisy_scores = self.score_targets(
                list(resolved) * samples, noisy.output, samples * batch, options
            )  # (S * B,)
            gradients = self.layer_gradients(noisy_scores, noisy)
            del noisy, noisy_scores
            # The clean activations with the noisy gradients (reshape_gradients: (S, B, C, *grid)).
            maps = self.layer_maps(x, resolved, scores, clean, gradients, eigen_smooth, options)
            del clean, gradients
            with torch.no_grad():
                fused = self.fuse_layer_maps(maps, options)  # (B, *spatial)
                return min_max_normalize(fused)

    def reshape_gradients(self, gradients: Any, layer: nn.Module) -> torch.Tensor:
        """The noisy copies' gradients, sample-major, as ``(S, B, C, *grid)``."""
        grads = self.reshape_activations(gradients, layer)  # (S * B, C, *grid), sample-major
        return grads.view(self.num_samples, -1, *grads.shape[1:])  # (S, B, C, *grid)

    def cam_weights(
        self, activations: torch.Tensor, gradients: torch.Tensor, context: LayerContext
    ) -> torch.Tensor:
        """Grad-CAM++'s weights from the sample means ``D1, D2, D3``, ``(B, C)``; see the class docstring."""
        d1 = gradients.mean(0)  # (B, C, *spatial)
        d2 = gradients.pow(2).mean(0)
        d3 = gradients.pow(3).mean(0)
        sum_a = broadcast_weights(activations.flatten(2).sum(-1), activations)  # (B, C, 1, ...)
        alpha = _where_finite(d2 / (2 * d2 + sum_a * d3 + 1e-6), lambda: _alpha64(gradients.double(), sum_a))
        alpha = torch.where(d2 != 0, alpha, torch.zeros_like(alpha))
        return (d1.relu() * alpha).flatten(2).sum(-1)  # (B, C)


#: torchcam's name for the same method.
SmoothGradCAMpp = SmoothGradCAMPlusPlus


class ShapleyCAM(BaseCAM):
    """ShapleyCAM (Cai et al., arXiv:2501.06261): Grad-CAM with a second-order (Hessian) correction.

    ``w_k = mean_ij (g - 0.5 * H A)_k[i, j]``; ``cam = relu(sum_k w_k A_k)``, with ``g = dy/dA`` and
    ``H A`` the Hessian of the score with respect to the activations times the activations (a
    Hessian-vector product by double backward: ``d/dA (g . stopgrad(A))``). It is the closed form of a
    second-order Taylor approximation of the activations' Shapley values. Where the model is linear after
    the layer (e.g. ReLU features -> pooling -> linear, with the logit as the score) ``H A = 0`` and the
    map is Grad-CAM's. The paper recommends the ReST score,
    :class:`~pytorch_grad_cam.utils.model_targets.ClassifierOutputReST`.

    Costs one extra backward pass (through the graph of the first one) per target layer; nothing is kept
    after the call.

    Second derivatives need every operation after the target layer to have a double backward. During the
    forward pass, scaled-dot-product attention is restricted to its math kernel (``sdpa_kernel``: the fused
    flash/memory-efficient kernels of ViTs have none; note that this selection is process-wide while the
    call runs) and torchvision's RoIAlign (Faster/Mask R-CNN heads) is replaced by an exact
    twice-differentiable wrapper; both are restored afterwards. Any other operation without one raises a
    ``RuntimeError`` naming the layer. A layer returning a dict/list of tensors (FPN levels, with a
    ``reshape_transform``) gets ``g - 0.5 * H A`` per tensor, ``H`` the Hessian over all of them.

    Example:
        >>> cam = ShapleyCAM(model, target_layers=[model.layer4[-1]])
        >>> maps = cam(x, [ClassifierOutputReST(281)])  # (B, H, W)
    """

    name = "shapleycam"

    def forward_pass(self, x: torch.Tensor, options: CallOptions = DEFAULT_OPTIONS) -> ForwardPass:
        """The base forward pass, with attention and RoIAlign made twice differentiable for its duration."""
        # The Hessian-vector product differentiates the backward pass of every operation after the target
        # layer, and which backward an operation gets is fixed in the forward pass. The fused
        # scaled_dot_product_attention kernels (flash, memory-efficient, cuDNN: what nn.MultiheadAttention
        # and most vision transformers use) have no double backward: the forward pass runs with the math
        # kernel (the same attention from differentiable operations; more memory for long sequences).
        # torchvision's RoIAlign has none either: an exact twice-differentiable wrapper replaces it.
        # Both are undone on exit, also after an exception.
        with TwiceDifferentiable():
            return super().forward_pass(x, options)

    def layer_gradients(self, scores: torch.Tensor, forward: ForwardPass) -> dict[int, Any]:
        """Per layer ``g - 0.5 * H A`` in the layer's own layout (``reshape_transform`` is linear).

        A tensor, or for a layer that returns a structure of tensors (an FPN's dict of levels) the same
        structure.
        """
        layers = self.target_layers
        # create_graph: the gradient is differentiated once more for the Hessian-vector product.
        per_layer, grads_per_layer = self.raw_layer_gradients(scores, forward, create_graph=True)
        effective = {}
        for i, (layer, tensors, grads) in enumerate(zip(layers, per_layer, grads_per_layer)):
            # H A = d/dA (g . A) with A held constant as the vector (summed over every tensor of the layer's
            # structure); layers one at a time, so that another layer's gradient does not enter this
            # layer's product.
            pairs = [(t, g) for t, g in zip(tensors, grads) if g is not None and g.requires_grad]
            # A gradient that depends on nothing: H = 0 there.
            hvps: Sequence[torch.Tensor | None] = [None] * len(pairs)
            if pairs:
                product = sum((g * t.detach()).sum() for t, g in pairs)
                try:
                    hvps = torch.autograd.grad(
                        product, [t for t, _ in pairs], allow_unused=True, retain_graph=i < len(layers) - 1
                    )
                except RuntimeError as error:
                    if "derivative" not in str(error) and "double backward" not in str(error):
                        raise
                    raise RuntimeError(
                        f"ShapleyCAM needs second derivatives of the score with respect to target layer "
                        f"'{layer_name(self.model, layer)}', but an operation after it has no double "
                        f"backward in torch ({error}). Scaled-dot-product attention and torchvision's "
                        "RoIAlign are already made twice differentiable; for another custom or fused "
                        "kernel, use a model built with plain differentiable operations, or a "
                        "first-order method such as GradCAM"
                    ) from error
            hessian = {id(t): h for (t, _), h in zip(pairs, hvps)}
            corrected = {
                id(t): g if (h := hessian.get(id(t))) is None else g - 0.5 * h
                for t, g in zip(tensors, grads)
                if g is not None
            }
            # As the engine's gradients: a tensor of the structure that the score does not use gets zeros.
            effective[id(layer)] = map_tensors(
                partial(gradient_or_zeros, corrected), forward.activations[id(layer)]
            )
        del grads_per_layer
        warn_if_zero_gradients(effective, scores.shape[0], forward.output)
        return effective

    def cam_weights(
        self, activations: torch.Tensor, gradients: torch.Tensor, context: LayerContext
    ) -> torch.Tensor:
        """``w_k = mean_ij (g - 0.5 * H A)_k[i, j]``, ``(B, C)``."""
        return gradients.flatten(2).mean(-1)  # (B, C): gradients here are g - 0.5 * H A
