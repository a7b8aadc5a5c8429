"""Gradient-weighted CAMs: channel weights computed from the gradient of the score (and CAM, their
gradient-free ancestor: the weights of the final linear layer)."""
from __future__ import annotations

import math
import warnings
from typing import Any, Callable, List, Optional, Sequence, Union

import numpy as np
import torch
from torch import nn

from ._capture import layer_name
from .base_cam import (
    BaseCAM,
    LayerContext,
    Target,
    broadcast_weights,
    first_principal_component,
    min_max_normalize,
    resize_maps,
)
from .utils.model_targets import ClassifierOutputTarget


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


class CAM(BaseCAM):
    """CAM, the original class activation map (Zhou et al., CVPR 2016, arXiv:1512.04150).

    ``cam = sum_k W[c, k] A_k``: the activations of the layer that is pooled into the final linear
    layer, weighted by that layer's row for class ``c``. No gradient is computed. For a model that ends in
    global average pooling + linear, this is Grad-CAM up to a constant factor (Grad-CAM's weights are
    ``W[c] / N`` there, ``N`` the number of positions), which the map's normalisation removes.

    Args:
        fc_layer: the final ``nn.Linear`` (a module of the model, or its dotted name such as ``"fc"``);
            by default the last ``nn.Linear`` of ``model.modules()``. Its ``in_features`` must equal the
            target layer's channel count.
        Other arguments: as :class:`BaseCAM`.

    Targets must be class indices (ints or ``ClassifierOutputTarget``): the weights are a row of ``W``
    (checked after the forward pass, the method's only pass, so a failing target raises its own error).
    The bias is left out (it adds the same constant to every position).

    Shapes: ``W`` ``(num_classes, C)``; activations ``(B, C, *spatial)``; maps ``(B, *spatial)``.

    Example:
        >>> cam = CAM(resnet, target_layers=[resnet.layer4[-1]])  # finds resnet.fc
        >>> maps = cam(x, [281])  # (B, H, W)
    """

    name = "cam"
    uses_gradients = False
    #: Each target layer must be the one pooled into the linear head (its channels are the head's inputs).
    needs_linear_head = True

    def __init__(self, model: nn.Module, target_layers: Union[None, nn.Module, Sequence[nn.Module]] = None,
                 reshape_transform: Optional[Callable[[torch.Tensor], torch.Tensor]] = None, *,
                 fc_layer: Union[None, str, nn.Module] = None, **kwargs: Any) -> None:
        super().__init__(model, target_layers, reshape_transform, **kwargs)
        self.fc_layer = self._find_fc_layer(model, fc_layer)

    @staticmethod
    def _find_fc_layer(model: nn.Module, fc_layer: Union[None, str, nn.Module]) -> nn.Linear:
        if fc_layer is None:
            linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
            if not linears:
                raise ValueError("CAM needs the model's final linear layer (its weights are the class "
                                 "weights), but the model has no nn.Linear module; pass fc_layer=")
            return linears[-1]
        if isinstance(fc_layer, str):
            try:
                module = model.get_submodule(fc_layer)
            except AttributeError:
                raise ValueError(f"fc_layer={fc_layer!r} is not a module of the model") from None
        elif isinstance(fc_layer, nn.Module):
            if not any(m is fc_layer for m in model.modules()):
                raise ValueError(f"fc_layer ({type(fc_layer).__name__}) is not a module of the model")
            module = fc_layer
        else:
            raise TypeError(f"fc_layer must be None, a module of the model or its dotted name, got "
                            f"{type(fc_layer).__name__}")
        if not isinstance(module, nn.Linear):
            raise TypeError(f"fc_layer must be an nn.Linear (the classifier after the pooled target "
                            f"layer), got {type(module).__name__}")
        return module

    def cam_weights(self, activations: torch.Tensor, gradients: Optional[torch.Tensor],
                    context: LayerContext) -> torch.Tensor:
        weight = self.fc_layer.weight.detach()  # (num_classes, in_features)
        channels = activations.shape[1]
        if weight.shape[1] != channels:
            raise ValueError(
                f"CAM: the linear layer '{layer_name(self.model, self.fc_layer)}' has in_features="
                f"{weight.shape[1]} but the target layer '{layer_name(self.model, context.layer)}' has "
                f"{channels} channels; choose the layer that is pooled into it, or pass fc_layer=")
        classes = []
        for i, target in enumerate(context.targets):
            if not isinstance(target, ClassifierOutputTarget):
                raise TypeError(f"targets[{i}] is {target!r}, but CAM needs class indices (ints or "
                                "ClassifierOutputTarget): its weights are the linear layer's row for a class")
            if target.category >= weight.shape[0]:
                raise ValueError(f"targets[{i}]: class {target.category} is out of range for the linear "
                                 f"layer's {weight.shape[0]} outputs")
            classes.append(target.category)
        rows = torch.tensor(classes, device=weight.device)
        return weight[rows].to(device=activations.device, dtype=torch.float32)  # (B, C)


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

    def __init__(self, model: nn.Module, target_layers: Union[None, nn.Module, Sequence[nn.Module]] = None,
                 reshape_transform: Optional[Callable[[torch.Tensor], torch.Tensor]] = None, *,
                 num_samples: int = 4, std: float = 0.3, seed: Optional[int] = None, **kwargs: Any) -> None:
        super().__init__(model, target_layers, reshape_transform, **kwargs)
        if isinstance(num_samples, bool) or not isinstance(num_samples, (int, np.integer)):
            raise TypeError(f"num_samples must be an int >= 1, got {type(num_samples).__name__}")
        if num_samples < 1:
            raise ValueError(f"num_samples must be an int >= 1, got {num_samples}")
        if isinstance(std, bool) or not isinstance(std, (int, float, np.integer, np.floating)):
            raise TypeError(f"std must be a non-negative float, got {type(std).__name__}")
        if not math.isfinite(std) or std < 0:
            raise ValueError(f"std must be a non-negative finite float, got {std}")
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, (int, np.integer))):
            raise TypeError(f"seed must be None or an int, got {type(seed).__name__}")
        self.num_samples = int(num_samples)
        self.std = float(std)
        self.seed = None if seed is None else int(seed)

    def _noisy_copies(self, x: torch.Tensor) -> torch.Tensor:
        """``(S * B, C, *spatial)``: the noisy copies, sample-major (copy ``s`` of image ``b`` is row
        ``s * B + b``)."""
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

    def _compute(self, input_tensor: torch.Tensor, targets: Optional[List[Target]],
                 eigen_smooth: bool) -> torch.Tensor:
        with self._session(input_tensor) as x:  # (B, C, *spatial)
            batch, samples = x.shape[0], self.num_samples
            # The clean pass: activations, targets (top class), scores, and every check of the engine
            # (layers run, scores finite, gradients reach the layers) before the S noisy copies run.
            capture, output = self._forward(x)
            targets = self._resolve_targets(targets, output, batch)
            scores = self._scores(targets, output, batch)  # (B,)
            self._gradients(scores, capture)  # only for its checks: the maps use the noisy gradients
            scores = scores.detach()
            clean = {id(layer): capture.activations[id(layer)].detach() for layer in self.target_layers}
            del capture, output
            # The noisy pass: all S copies in one batch, sample-major (row s * B + b).
            capture, output = self._forward(self._noisy_copies(x))  # (S * B, ...)
            noisy_scores = self._scores(list(targets) * samples, output, samples * batch)  # (S * B,)
            gradients = self._gradients(noisy_scores, capture)
            del capture, output, noisy_scores
            spatial = x.shape[2:]
            maps = []
            for layer in self.target_layers:
                key = id(layer)
                raw = clean[key]
                context = LayerContext(
                    model=self.model, layer=layer, input=x, targets=targets,
                    scores=scores.float(), raw_activations=raw,
                    prefix=None, batch_size=self.batch_size,
                    channel_dim=1 if self.reshape_transform is None else -1)
                activations = self._reshape(raw, layer)  # (B, C, *grid)
                grads = self._reshape(gradients[key], layer)  # (S * B, C, *grid)
                grads = grads.view(samples, batch, *grads.shape[1:])  # (S, B, C, *grid)
                with torch.no_grad():
                    layer_cam = self.layer_map(activations, grads, context, eigen_smooth).float()
                    maps.append(resize_maps(self._normalize(layer_cam.relu(), layer), spatial))
            del clean, gradients
            with torch.no_grad():
                fused = torch.stack(maps, 1).relu().mean(1)  # (B, *spatial)
                return min_max_normalize(fused)

    def cam_weights(self, activations: torch.Tensor, gradients: torch.Tensor,
                    context: LayerContext) -> torch.Tensor:
        d1 = gradients.mean(0)  # (B, C, *spatial)
        d2 = gradients.pow(2).mean(0)
        d3 = gradients.pow(3).mean(0)
        sum_a = broadcast_weights(activations.flatten(2).sum(-1), activations)  # (B, C, 1, ...)
        alpha = d2 / (2 * d2 + sum_a * d3 + 1e-6)
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

    Example:
        >>> cam = ShapleyCAM(model, target_layers=[model.layer4[-1]])
        >>> maps = cam(x, [ClassifierOutputReST(281)])  # (B, H, W)
    """

    name = "shapleycam"

    def _gradients(self, scores: torch.Tensor, capture: Any) -> dict:
        """Per layer ``g - 0.5 * H A`` in the layer's own layout (``reshape_transform`` is linear)."""
        layers = self.target_layers
        if not scores.requires_grad:
            raise ValueError("the target scores do not depend on the target layers' activations (no "
                             "gradient reaches them): the target must return a value computed from the "
                             "model output, and the layers must come before the output")
        inputs = [capture.activations[id(layer)] for layer in layers]
        # create_graph: the gradient is differentiated once more for the Hessian-vector product.
        grads = torch.autograd.grad(scores.sum(), inputs, allow_unused=True, create_graph=True)
        unused = [layer_name(self.model, layer) for layer, g in zip(layers, grads) if g is None]
        if unused:
            raise ValueError(f"no gradient reaches target layer(s) {unused}: the score does not depend on "
                             "them; choose layers on the path to the output")
        effective = {}
        for i, (layer, acts, grad) in enumerate(zip(layers, inputs, grads)):
            hvp = None
            if grad.requires_grad:  # otherwise the gradient does not depend on anything: H = 0
                # H A = d/dA (g . A) with A held constant as the vector; layers one at a time, so that
                # another layer's gradient does not enter this layer's product.
                (hvp,) = torch.autograd.grad((grad * acts.detach()).sum(), acts, allow_unused=True,
                                             retain_graph=i < len(layers) - 1)
            corrected = grad.detach() if hvp is None else grad.detach() - 0.5 * hvp.detach()
            effective[id(layer)] = corrected
        return effective

    def cam_weights(self, activations: torch.Tensor, gradients: torch.Tensor,
                    context: LayerContext) -> torch.Tensor:
        return gradients.flatten(2).mean(-1)  # (B, C): gradients here are g - 0.5 * H A
