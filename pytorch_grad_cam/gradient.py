"""Gradient-weighted CAMs: channel weights computed from the gradient of the score (and CAM, their
gradient-free ancestor: the weights of the final linear layer)."""
from __future__ import annotations

import contextlib
import sys
from functools import partial
from typing import Any, Callable, List, Optional, Sequence, Union

import torch
from torch import nn
from torch.overrides import TorchFunctionMode

from ._capture import layer_name, map_tensors
from ._checks import check_float, check_int, check_seed
from ._warnings import warn
from .base_cam import (
    BaseCAM,
    LayerContext,
    Target,
    _gradient_or_zeros,
    broadcast_weights,
    first_principal_component,
    min_max_normalize,
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
            warn("HiResCAM with eigen_smooth=True is no longer guaranteed to be faithful to the "
                          "model: the principal component replaces the exact element-wise attribution",
                          UserWarning)
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

    #: The cosine between the head's input and the target layer's spatial mean below which CAM warns.
    pooled_cosine_tolerance = 0.999

    def _forward(self, x: torch.Tensor):
        # fc_layer's inputs in this forward pass, read by _check_pooled_into_head. Made here, not in
        # _compute, so that every caller of _forward gets it (SESS runs the base method's _forward
        # directly); the (B, C) tensors of the last pass stay referenced until the next one.
        self._head_inputs: List[torch.Tensor] = []

        def record(module, inputs, output):
            if inputs and isinstance(inputs[0], torch.Tensor):
                self._head_inputs.append(inputs[0].detach())

        handle = self.fc_layer.register_forward_hook(record)
        try:
            return super()._forward(x)
        finally:
            handle.remove()

    def _check_pooled_into_head(self, activations: torch.Tensor, layer: nn.Module) -> None:
        """Warn where ``fc_layer``'s input is not the spatial mean of the target layer (up to a scale)."""
        head_inputs = getattr(self, "_head_inputs", [])
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
                UserWarning)

    def cam_weights(self, activations: torch.Tensor, gradients: Optional[torch.Tensor],
                    context: LayerContext) -> torch.Tensor:
        weight = self.fc_layer.weight.detach()  # (num_classes, in_features)
        channels = activations.shape[1]
        if weight.shape[1] != channels:
            raise ValueError(
                f"CAM: the linear layer '{layer_name(self.model, self.fc_layer)}' has in_features="
                f"{weight.shape[1]} but the target layer '{layer_name(self.model, context.layer)}' has "
                f"{channels} channels; choose the layer that is pooled into it, or pass fc_layer=")
        self._check_pooled_into_head(activations, context.layer)
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
        self.num_samples = check_int(num_samples, "num_samples", 1)
        self.std = check_float(std, "std", 0)
        self.seed = check_seed(seed)

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
            # A layer's output may be a structure of tensors (an FPN's dict of levels): detach each tensor.
            clean = {id(layer): map_tensors(torch.Tensor.detach, capture.activations[id(layer)])
                     for layer in self.target_layers}
            del capture, output
            # The noisy pass: all S copies in one batch, sample-major (row s * B + b).
            capture, output = self._forward(self._noisy_copies(x))  # (S * B, ...)
            noisy_scores = self._scores(list(targets) * samples, output, samples * batch)  # (S * B,)
            gradients = self._gradients(noisy_scores, capture)
            del capture, output, noisy_scores
            # The clean activations with the noisy gradients (_reshape_gradients: (S, B, C, *grid)).
            maps = self._layer_maps(x, targets, scores, clean, gradients, eigen_smooth)
            del clean, gradients
            with torch.no_grad():
                fused = self._fuse(maps)  # (B, *spatial)
                return min_max_normalize(fused)

    def _reshape_gradients(self, gradients: Any, layer: nn.Module) -> torch.Tensor:
        grads = self._reshape(gradients, layer)  # (S * B, C, *grid), sample-major
        return grads.view(self.num_samples, -1, *grads.shape[1:])  # (S, B, C, *grid)

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


def _math_attention() -> contextlib.AbstractContextManager:
    """Scaled-dot-product attention restricted to its math kernel for the block (the fused kernels have no
    double backward); the previous selection is restored on exit. A no-op before torch 2.0 (no SDPA)."""
    try:
        from torch.nn.attention import SDPBackend, sdpa_kernel  # torch >= 2.3
    except ImportError:
        cuda_backends = getattr(torch.backends, "cuda", None)
        if cuda_backends is not None and hasattr(cuda_backends, "sdp_kernel"):  # torch 2.0 - 2.2
            return cuda_backends.sdp_kernel(enable_flash=False, enable_math=True, enable_mem_efficient=False)
        return contextlib.nullcontext()
    return sdpa_kernel(SDPBackend.MATH)


def _roi_align_op(name: str) -> Any:
    """torchvision's registered RoIAlign operator ``name``, or None where torchvision is not loaded."""
    if "torchvision" not in sys.modules:
        return None
    try:
        return getattr(torch.ops.torchvision, name)
    except (AttributeError, RuntimeError):
        return None


class _RoIAlign(torch.autograd.Function):
    """torchvision's RoIAlign, twice differentiable. For fixed boxes RoIAlign is linear in its input, so its
    backward is the adjoint linear map (torchvision's ``_roi_align_backward``), and the backward of that
    is RoIAlign again. torchvision's own op refuses double backward; the boxes get no gradient in either."""

    @staticmethod
    def forward(ctx, input: torch.Tensor, rois: torch.Tensor, *params: Any) -> torch.Tensor:
        ctx.save_for_backward(rois)
        ctx.params, ctx.input_shape = params, tuple(input.shape)
        return _roi_align_op("roi_align")(input, rois, *params)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (rois,) = ctx.saved_tensors
        adjoint = _RoIAlignAdjoint.apply(grad, rois, ctx.input_shape, *ctx.params)
        return (adjoint, None) + (None,) * len(ctx.params)


class _RoIAlignAdjoint(torch.autograd.Function):
    """The adjoint of RoIAlign (scatters ``(K, C, PH, PW)`` back to the ``(N, C, H, W)`` input); its backward
    is RoIAlign."""

    @staticmethod
    def forward(ctx, grad: torch.Tensor, rois: torch.Tensor, input_shape: tuple, spatial_scale: float,
                pooled_height: int, pooled_width: int, sampling_ratio: int, aligned: bool) -> torch.Tensor:
        ctx.save_for_backward(rois)
        ctx.params = (spatial_scale, pooled_height, pooled_width, sampling_ratio, aligned)
        return _roi_align_op("_roi_align_backward")(grad, rois, spatial_scale, pooled_height, pooled_width,
                                                    *input_shape, sampling_ratio, aligned)

    @staticmethod
    def backward(ctx, grad_grad: torch.Tensor):
        (rois,) = ctx.saved_tensors
        return (_RoIAlign.apply(grad_grad, rois, *ctx.params),) + (None,) * 7


class _TwiceDifferentiable(TorchFunctionMode):
    """For one forward pass: the operations that have no double backward in torch or torchvision replaced by
    exact twice-differentiable equivalents. Scaled-dot-product attention runs with its math kernel (same
    result); torchvision's RoIAlign (Faster/Mask R-CNN box heads) with :class:`_RoIAlign`."""

    def __init__(self) -> None:
        super().__init__()
        self._roi_align = _roi_align_op("roi_align")
        self._roi_align_default = getattr(self._roi_align, "default", None)
        self._attention = _math_attention()

    def __enter__(self) -> "_TwiceDifferentiable":
        self._attention.__enter__()
        try:
            return super().__enter__()
        except BaseException:
            self._attention.__exit__(*sys.exc_info())
            raise

    def __exit__(self, *exc_info) -> None:
        try:
            super().__exit__(*exc_info)
        finally:
            self._attention.__exit__(*exc_info)

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if self._roi_align is not None and (func is self._roi_align or func is self._roi_align_default) \
                and not kwargs and args[0].requires_grad and not args[0].is_quantized:
            return _RoIAlign.apply(*args)
        return func(*args, **kwargs)


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

    def _forward(self, x: torch.Tensor):
        # The Hessian-vector product differentiates the backward pass of every operation after the target
        # layer, and which backward an operation gets is fixed in the forward pass. The fused
        # scaled_dot_product_attention kernels (flash, memory-efficient, cuDNN: what nn.MultiheadAttention
        # and most vision transformers use) have no double backward: the forward pass runs with the math
        # kernel (the same attention from differentiable operations; more memory for long sequences).
        # torchvision's RoIAlign has none either: an exact twice-differentiable wrapper replaces it.
        # Both are undone on exit, also after an exception.
        with _TwiceDifferentiable():
            return super()._forward(x)

    def _gradients(self, scores: torch.Tensor, capture: Any) -> dict:
        """Per layer ``g - 0.5 * H A`` in the layer's own layout (``reshape_transform`` is linear): a tensor,
        or for a layer that returns a structure of tensors (an FPN's dict of levels) the same structure."""
        layers = self.target_layers
        # create_graph: the gradient is differentiated once more for the Hessian-vector product.
        per_layer, grads_per_layer = self._layer_gradients(scores, capture, create_graph=True)
        effective = {}
        for i, (layer, tensors, grads) in enumerate(zip(layers, per_layer, grads_per_layer)):
            # H A = d/dA (g . A) with A held constant as the vector (summed over every tensor of the layer's
            # structure); layers one at a time, so that another layer's gradient does not enter this
            # layer's product.
            pairs = [(t, g) for t, g in zip(tensors, grads) if g is not None and g.requires_grad]
            hvps = [None] * len(pairs)  # a gradient that depends on nothing: H = 0 there
            if pairs:
                product = sum((g * t.detach()).sum() for t, g in pairs)
                try:
                    hvps = torch.autograd.grad(product, [t for t, _ in pairs], allow_unused=True,
                                               retain_graph=i < len(layers) - 1)
                except RuntimeError as error:
                    if "derivative" not in str(error) and "double backward" not in str(error):
                        raise
                    raise RuntimeError(
                        f"ShapleyCAM needs second derivatives of the score with respect to target layer "
                        f"'{layer_name(self.model, layer)}', but an operation after it has no double "
                        f"backward in torch ({error}). Scaled-dot-product attention and torchvision's "
                        "RoIAlign are already made twice differentiable; for another custom or fused "
                        "kernel, use a model built with plain differentiable operations, or a "
                        "first-order method such as GradCAM") from error
            hessian = {id(t): h for (t, _), h in zip(pairs, hvps)}
            corrected = {id(t): g if hessian.get(id(t)) is None else g - 0.5 * hessian[id(t)]
                         for t, g in zip(tensors, grads) if g is not None}
            # As the engine's gradients: a tensor of the structure that the score does not use gets zeros.
            effective[id(layer)] = map_tensors(partial(_gradient_or_zeros, corrected),
                                               capture.activations[id(layer)])
        del grads_per_layer
        self._warn_zero_gradients(effective, scores.shape[0])
        return effective

    def cam_weights(self, activations: torch.Tensor, gradients: torch.Tensor,
                    context: LayerContext) -> torch.Tensor:
        return gradients.flatten(2).mean(-1)  # (B, C): gradients here are g - 0.5 * H A
