"""Activation CAMs: channel weights that come from the activations or the model's weights, no gradients.

CAM (the linear head's weights), FEM (each channel's active fraction) and RandomCAM (a baseline).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Callable

import torch
from torch import nn

from .._engine.capture import HookSet, layer_name
from .._engine.checks import check_float, check_seed
from .._engine.warnings import warn
from ..base_cam import DEFAULT_OPTIONS, BaseCAM, CallOptions, ForwardPass, LayerContext
from ..utils.model_targets import ClassifierOutputTarget


class _InputRecorder(HookSet):
    """The tensor inputs of one module during a ``with`` block, in call order (``self.inputs``)."""

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.module = module
        self.inputs: list[torch.Tensor] = []

    def _register(self) -> None:
        self.forward_hook(self.module, self._record)

    def _record(self, module: nn.Module, inputs: tuple, output: Any) -> None:
        if inputs and isinstance(inputs[0], torch.Tensor):
            self.inputs.append(inputs[0].detach())


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

    The formula holds only if the head reads the spatial average of the target layer. That is checked on
    the call's own forward pass: where ``fc_layer`` runs once on a ``(B, C)`` input, that input must be
    proportional to the spatial mean of the (reshaped) target layer (cosine >= 0.999 per image), else a
    ``UserWarning`` says the map does not show what the head reads. It catches e.g. a ViT token layer (the
    head reads the class token, not the mean of the patch tokens), a layer before a ReLU or a norm that
    comes before the pooling, or max pooling. Not checked where the head runs several times or its input
    is not ``(B, C)``.

    Shapes: ``W`` ``(num_classes, C)``; activations ``(B, C, *spatial)``; maps ``(B, *spatial)``.

    Example:
        >>> cam = CAM(resnet, target_layers=[resnet.layer4[-1]])  # finds resnet.fc
        >>> maps = cam(x, [281])  # (B, H, W)
    """

    name = "cam"
    uses_gradients = False
    # W[c] weighs what the head pools: in a CNN the features after its last activation.
    needs_nonnegative_activations = True

    def __init__(
        self,
        model: nn.Module,
        target_layers: nn.Module | Sequence[nn.Module] | None = None,
        reshape_transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
        *,
        fc_layer: str | nn.Module | None = None,
        **kwargs: Any,
    ) -> None:
        """Set up as :class:`BaseCAM` and find ``fc_layer``; see the class docstring for the arguments."""
        super().__init__(model, target_layers, reshape_transform, **kwargs)
        self.fc_layer = self._find_fc_layer(model, fc_layer)

    @staticmethod
    def _find_fc_layer(model: nn.Module, fc_layer: str | nn.Module | None) -> nn.Linear:
        if fc_layer is None:
            linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
            if not linears:
                raise ValueError(
                    "CAM needs the model's final linear layer (its weights are the class "
                    "weights), but the model has no nn.Linear module; pass fc_layer="
                )
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
            raise TypeError(
                f"fc_layer must be None, a module of the model or its dotted name, got "
                f"{type(fc_layer).__name__}"
            )
        if not isinstance(module, nn.Linear):
            raise TypeError(
                f"fc_layer must be an nn.Linear (the classifier after the pooled target "
                f"layer), got {type(module).__name__}"
            )
        return module

    #: The cosine between the head's input and the target layer's spatial mean below which CAM warns.
    pooled_cosine_tolerance = 0.999

    def forward_pass(self, x: torch.Tensor, options: CallOptions = DEFAULT_OPTIONS) -> ForwardPass:
        """The base forward pass, with ``fc_layer``'s inputs recorded in ``extras["head_inputs"]``."""
        # fc_layer's inputs in this forward pass, for the pooled-head check: kept in the pass's extras (one
        # call's, never the object's), so every caller of forward_pass gets them (SESS runs the method on
        # each patch).
        with _InputRecorder(self.fc_layer) as head:
            forward = super().forward_pass(x, options)
        forward.extras["head_inputs"] = head.inputs
        return forward

    def _check_pooled_into_head(self, activations: torch.Tensor, context: LayerContext) -> None:
        """Warn where ``fc_layer``'s input is not the spatial mean of the target layer (up to a scale)."""
        layer = context.layer
        head_inputs = context.extras.get("head_inputs", [])
        if len(head_inputs) != 1 or head_inputs[0].shape != activations.shape[:2]:
            return  # the head ran several times, or not on (B, C): cannot tell
        head = head_inputs[0].float()  # (B, C)
        pooled = activations.flatten(2).float().mean(-1)  # (B, C)
        cosine = torch.nn.functional.cosine_similarity(pooled, head, dim=1, eps=1e-30)  # (B,)
        bad = (cosine < self.pooled_cosine_tolerance) & (head.norm(dim=1) > 0)
        if bool(bad.any()):
            worst = float(cosine[bad].min())
            warn(
                f"CAM: the input of the linear layer '{layer_name(self.model, self.fc_layer)}' is not the "
                f"spatial average of target layer '{layer_name(self.model, layer)}' (cosine {worst:.3f} for "
                f"image(s) {bad.nonzero().flatten().tolist()}), so W[c] does not weigh these activations "
                "the way the head does and the map may not show what the model uses (e.g. a ViT head reads "
                "only the class token, or a ReLU/norm/max-pool lies between the layer and the head); choose "
                "the layer that is average-pooled into the head, or a gradient method such as GradCAM",
                UserWarning,
            )

    def cam_weights(
        self, activations: torch.Tensor, gradients: torch.Tensor | None, context: LayerContext
    ) -> torch.Tensor:
        """``W[c]``, the head's row for each image's class, ``(B, C)``, after the pooled-head check."""
        weight = self.fc_layer.weight.detach()  # (num_classes, in_features)
        channels = activations.shape[1]
        if weight.shape[1] != channels:
            raise ValueError(
                f"CAM: the linear layer '{layer_name(self.model, self.fc_layer)}' has in_features="
                f"{weight.shape[1]} but the target layer '{layer_name(self.model, context.layer)}' has "
                f"{channels} channels; choose the layer that is pooled into it, or pass fc_layer="
            )
        self._check_pooled_into_head(activations, context)
        classes = []
        for i, target in enumerate(context.targets):
            if not isinstance(target, ClassifierOutputTarget):
                raise TypeError(
                    f"targets[{i}] is {target!r}, but CAM needs class indices (ints or "
                    "ClassifierOutputTarget): its weights are the linear layer's row for a class"
                )
            if target.category >= weight.shape[0]:
                raise ValueError(
                    f"targets[{i}]: class {target.category} is out of range for the linear "
                    f"layer's {weight.shape[0]} outputs"
                )
            classes.append(target.category)
        rows = torch.tensor(classes, device=weight.device)
        return weight[rows].to(device=activations.device, dtype=torch.float32)  # (B, C)


class FEM(BaseCAM):
    """FEM, the Feature Explanation Method (Fuad et al., IPTA 2020).

    Each channel is binarised at ``mu_k + k * sigma_k`` (its spatial mean and standard deviation),
    and weighted by how much of it is active: ``w_k = mean_ij [A_k[i, j] >= mu_k + k sigma_k]``;
    ``cam = sum_k w_k A_k``. Gradient-free and class-agnostic. ``k`` (default 2) is a constructor
    argument.

    Args:
        k: the threshold in standard deviations above each channel's mean (default 2.0).
        *args, **kwargs: :class:`BaseCAM`'s arguments.
    """

    name = "fem"
    uses_gradients = False
    class_specific = False
    # Thresholds activity above the mean: on a batch norm's mostly negative output the map is constant.
    needs_nonnegative_activations = True

    def __init__(self, *args: Any, k: float = 2.0, **kwargs: Any) -> None:
        """Check and store ``k``; see the class docstring for the arguments."""
        self.k = check_float(k, "k")
        super().__init__(*args, **kwargs)

    def cam_weights(
        self, activations: torch.Tensor, gradients: torch.Tensor | None, context: LayerContext
    ) -> torch.Tensor:
        """``w_k = mean_ij [A_k[i, j] >= mu_k + k sigma_k]``, the active fraction, ``(B, C)``."""
        flat = activations.flatten(2)  # (B, C, N)
        threshold = flat.mean(-1, keepdim=True) + self.k * flat.std(-1, unbiased=False, keepdim=True)
        return (flat >= threshold).float().mean(-1)  # (B, C): the active fraction


class RandomCAM(BaseCAM):
    """Random channel weights in [-1, 1]: a baseline for CAM metrics (a real method should beat it).

    ``seed`` (constructor) makes it reproducible: every call draws the same weights for the same shapes.

    Args:
        seed: None (the default) for fresh weights at every call, or an int for the same weights.
        *args, **kwargs: :class:`BaseCAM`'s arguments.
    """

    name = "randomcam"
    uses_gradients = False
    class_specific = False
    deterministic = False  # unless a seed is given

    def __init__(self, *args: Any, seed: int | None = None, **kwargs: Any) -> None:
        """Check and store ``seed``; see the class docstring for the arguments."""
        self.seed = check_seed(seed)
        super().__init__(*args, **kwargs)

    def cam_weights(
        self, activations: torch.Tensor, gradients: torch.Tensor | None, context: LayerContext
    ) -> torch.Tensor:
        """Uniform random weights in [-1, 1], ``(B, C)``, from ``seed`` (or a fresh seed) on the CPU."""
        generator = torch.Generator()
        if self.seed is None:
            generator.seed()
        else:
            generator.manual_seed(self.seed)
        weights = torch.rand(activations.shape[:2], generator=generator) * 2 - 1  # (B, C)
        return weights.to(activations.device)
