"""FullGrad: the input-gradient and every bias-gradient of the network, summed into one saliency map."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

from .._engine.capture import HookSet
from .._engine.checkpointing import reentrant_checkpoint_errors
from .._engine.checks import check_bool, check_input
from .._engine.maps import first_principal_component, min_max_normalize, resize_maps, warn_if_constant
from ..base_cam import DEFAULT_OPTIONS, BaseCAM, CallOptions, Target, TargetsArg, normalize_targets

# Modules whose bias is added along the channel axis (dim 1) of a ``(B, C, *spatial)`` output.
_BATCH_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm)
_CHANNEL_BIAS = (
    nn.Conv1d,
    nn.Conv2d,
    nn.Conv3d,
    nn.ConvTranspose1d,
    nn.ConvTranspose2d,
    nn.ConvTranspose3d,
    *_BATCH_NORMS,
    nn.GroupNorm,
    nn.InstanceNorm1d,
    nn.InstanceNorm2d,
    nn.InstanceNorm3d,
)
# Modules whose bias is added along the trailing dims of the output (``(..., F)`` for Linear).
_TRAILING_BIAS = (nn.Linear, nn.LayerNorm, nn.Bilinear)


def effective_bias(module: nn.Module) -> torch.Tensor | None:
    """The bias a module adds to its output, ``None`` for a module without one.

    BatchNorm with running statistics is affine in eval mode: ``y = gamma (x - mean) / sqrt(var + eps)
    + beta``, so its bias is ``beta - mean * gamma / sqrt(var + eps)`` (``gamma = 1, beta = 0`` without
    ``affine``). Every other module: its ``bias`` Parameter, if it has one.
    """
    if (
        isinstance(module, _BATCH_NORMS)
        and module.running_mean is not None
        and module.running_var is not None
    ):
        mean, var = module.running_mean, module.running_var
        gamma = module.weight if module.weight is not None else torch.ones_like(var)
        beta = module.bias if module.bias is not None else torch.zeros_like(mean)
        return (beta - mean * gamma / torch.sqrt(var + module.eps)).detach()
    bias = getattr(module, "bias", None)
    if isinstance(bias, nn.Parameter):
        return bias.detach()
    return None


def _broadcast_bias(module: nn.Module, bias: torch.Tensor, output: torch.Tensor) -> torch.Tensor | None:
    """``bias`` viewed to broadcast against ``output`` the way the module adds it, or ``None``.

    Conv/BatchNorm/GroupNorm/InstanceNorm add it on the channel axis, Linear/LayerNorm on the trailing
    axes; other modules (and subclasses that permute, such as a channels-first ``LayerNorm2d``) are
    read from the shapes: channel axis if ``bias`` is ``(C,)`` with ``C == output.shape[1]``, else
    trailing axes if they match.
    """
    as_channel = as_trailing = None
    if output.ndim >= 2 and bias.ndim == 1 and bias.numel() == output.shape[1]:
        as_channel = bias.reshape(1, -1, *([1] * (output.ndim - 2)))
    if 0 < bias.ndim < output.ndim and tuple(output.shape[-bias.ndim :]) == tuple(bias.shape):
        as_trailing = bias
    if isinstance(module, _TRAILING_BIAS):
        return as_trailing if as_trailing is not None else as_channel
    return as_channel if as_channel is not None else as_trailing


@dataclass
class FullGradTerms:
    """The full-gradient decomposition of each image's score (FullGrad, eq. 2 of arXiv:1905.00780).

    For a network that is piecewise linear in its input (ReLU, max-pool, BatchNorm in eval, no
    normalisation by batch or input statistics): ``score = sum(input_term) + sum_l sum(bias_terms[l])``
    per image, exactly (up to rounding).
    """

    #: ``x * d score / d x``, ``(B, C, *spatial)``.
    input_term: torch.Tensor
    #: one entry per call of a module with a bias: ``(name, d score / d out * bias)`` in the module's
    #: output layout, all modules included (also those without spatial output, e.g. the classifier).
    bias_terms: list[tuple[str, torch.Tensor]]
    #: ``(B,)`` the target scores.
    scores: torch.Tensor


class _BiasCapture(HookSet):
    """Forward hooks on every module with a bias, for one forward pass (removed on exit).

    Each call's output is kept and a copy is returned to the model, so in-place operations after the
    module (``ReLU(inplace=True)``, ``out += identity``) never modify what is differentiated.
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.records: list[tuple[str, nn.Module, torch.Tensor, torch.Tensor]] = []

    def _register(self) -> None:
        for name, module in self.model.named_modules():
            if effective_bias(module) is not None:
                self.forward_hook(module, self._make_hook(name or "<model>"))

    def _make_hook(self, name: str) -> Callable:
        def hook(module: nn.Module, inputs, output):
            if not isinstance(output, torch.Tensor) or not output.is_floating_point():
                return None
            effective = effective_bias(module)
            if effective is None:  # only modules with a bias are hooked
                return None
            bias = _broadcast_bias(module, effective.to(output.dtype), output)
            if bias is None:
                return None
            if not output.requires_grad:
                # Independent of the input (a constant branch): a leaf, so its bias term still counts.
                output = output.detach().requires_grad_(True)
            self.records.append((name, module, output, bias))
            return output.clone()

        return hook


#: The absolute epsilon of each term's min-max (grad-cam 1.5.7's): a channel whose term is tiny
#: (``|grad * bias| ~ 1e-9``) stays near 0 instead of being stretched to [0, 1]. It is FullGrad's noise
#: floor and makes its maps match the reference library's; unlike every other normalisation here it is not
#: scale-invariant (scores times 1e-12 put every channel below it).
TERM_EPS = 1e-7


class FullGrad(BaseCAM):
    """FullGrad (Srinivas & Fleuret, arXiv:1905.00780).

    The full-gradient decomposition ``f(x) = sum(x * grad_x f) + sum_l sum(grad_{z_l} f * b_l)`` (exact
    for ReLU networks) splits the score into the input-gradient term and one bias-gradient term per
    layer ``l`` with output ``z_l`` and bias ``b_l``. The map aggregates them all:

    ``map = norm( post(|x * grad_x|) + sum_l post(|grad_{z_l} * b_l|) )`` where ``post`` min-max
    normalises each channel (``per_channel=True``, the numerics of grad-cam 1.5.7) or each image
    (``per_channel=False``, the paper's code), sums the channels and resizes (bi/tri-linearly) to the
    input size, and ``norm`` is the final per-image min-max normalisation.

    The bias layers are found generically: every module with a ``bias`` Parameter (or BatchNorm with
    running statistics, whose eval-mode bias is ``beta - mean * gamma / sqrt(var + eps)``) whose output
    has as many dims as the input: convolutions, transposed convolutions, BatchNorm, GroupNorm,
    InstanceNorm, LayerNorm, Linear layers on spatial maps... A ``(C,)`` bias added on the last axis
    (a Linear or LayerNorm on a channels-last ``(B, *spatial, C)`` map, as in ConvNeXt and Swin) is read
    as channels-last (so a Linear over a spatial axis, which is rare, is misread). The classifier's bias
    (no spatial output) and token layers (``(B, N, D)``) only enter through the gradients. Works for 1D,
    2D and 3D inputs.

    ``target_layers`` is not used: it may be left out or empty, and when given (for the reference API,
    ``FullGrad(model, target_layers)``) it is checked like any CAM's and otherwise ignored.
    ``reshape_transform`` is not supported (a ``ValueError``). ``eigen_smooth=True`` replaces the sum of
    the terms by their first principal component (each term rescaled to [0, 1], at 1/8 of the input
    resolution, as in grad-cam 1.5.7; its sign fixed to correlate with the sum of the terms).

    One forward pass and one ``torch.autograd.grad`` over a copy of the input and every bias layer's
    output; the user's model and tensor are left as they were.

    Args:
        per_channel: min-max normalise each channel of a term (True, grad-cam 1.5.7's numerics) or each
            image (False, the paper's code).
        model, target_layers, reshape_transform, **kwargs: as for :class:`BaseCAM` (``target_layers``
            ignored, ``reshape_transform`` refused).

    Example:
        >>> cam = FullGrad(model)
        >>> maps = cam(x, targets=[ClassifierOutputTarget(281)])  # (B, H, W) in [0, 1]
        >>> terms = cam.decompose(x)  # the raw terms, which sum to the scores
    """

    name = "fullgrad"
    uses_target_layers = False

    def __init__(
        self,
        model: nn.Module,
        target_layers: nn.Module | Sequence[nn.Module] | None = None,
        reshape_transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
        *,
        per_channel: bool = True,
        **kwargs,
    ) -> None:
        """Check the arguments as :class:`BaseCAM` (no ``reshape_transform``) and store ``per_channel``."""
        if isinstance(target_layers, (list, tuple)) and not target_layers:
            target_layers = None  # FullGrad(model, target_layers=[]), the reference's usual call
        super().__init__(model, target_layers, reshape_transform, **kwargs)
        if self.reshape_transform is not None:
            raise ValueError(
                "FullGrad does not support reshape_transform: it uses every bias layer whose "
                "output is (B, C, *spatial) like the input; leave reshape_transform out"
            )
        self.per_channel = check_bool(per_channel, "per_channel")

    # -- the raw decomposition -----------------------------------------------------------------
    def _decomposition(
        self, x: torch.Tensor, targets: list[Target] | None, options: CallOptions = DEFAULT_OPTIONS
    ) -> tuple:
        """Inside a session: one forward pass and one gradient.

        Returns ``x * grad_x`` ``(B, C, *spatial)``, ``[(name, module, bias, grad_out), ...]`` (``bias``
        viewed to broadcast against ``grad_out``) and the scores ``(B,)``.
        """
        x_in = x.detach().clone().requires_grad_(True)  # a copy (also of inference tensors): never the user's
        with _BiasCapture(self.model) as capture, torch.enable_grad():
            output = self.run_model(x_in)
        targets = self.resolve_targets(targets, output, x.shape[0], options)
        scores = self.score_targets(targets, output, x.shape[0], options)  # (B,)
        if not scores.requires_grad:
            raise ValueError(
                "the target scores do not depend on the input: the target must return a "
                "value computed from the model output"
            )
        outputs = [out for _, _, out, _ in capture.records]
        with reentrant_checkpoint_errors("between the input and the score"):
            grads = torch.autograd.grad(scores.sum(), [x_in, *outputs], allow_unused=True)
        grad_x = grads[0] if grads[0] is not None else torch.zeros_like(x_in)
        records = [
            (name, module, bias, torch.zeros_like(out) if g is None else g)
            for (name, module, out, bias), g in zip(capture.records, grads[1:])
        ]
        return x_in.detach() * grad_x, records, scores.detach()

    def decompose(self, input_tensor: torch.Tensor, targets: TargetsArg = None) -> FullGradTerms:
        """The raw full-gradient terms of each image's score (no abs, no normalisation).

        On the compute device, in the model's dtype. See :class:`FullGradTerms`.
        """
        x = check_input(input_tensor, self.model)
        target_list = normalize_targets(targets, x.shape[0])
        with self.session(x) as x_dev:
            input_term, records, scores = self._decomposition(x_dev, target_list)
            bias_terms = [(name, grad * bias) for name, _, bias, grad in records]
            return FullGradTerms(input_term, bias_terms, scores)

    # -- the map ---------------------------------------------------------------------------------
    def _post(self, term: torch.Tensor, spatial: Sequence[int]) -> torch.Tensor:
        """``(B, C, *s)`` term -> ``(B, *spatial)``: abs, min-max, channel sum, resize.

        The min-max is per channel (or per image). Resizing is linear, so resizing the channel sum equals
        summing resized channels.
        """
        term = term.float().abs()  # (B, C, *s)
        flat = term.flatten(0, 1) if self.per_channel else term
        normalised = min_max_normalize(flat, eps=TERM_EPS).view_as(term)
        return resize_maps(normalised.sum(1), spatial)  # (B, *spatial)

    def compute_maps(
        self,
        input_tensor: torch.Tensor,
        targets: list[Target] | None,
        eigen_smooth: bool,
        options: CallOptions = DEFAULT_OPTIONS,
    ) -> torch.Tensor:
        """The FullGrad map ``(B, *spatial)`` in ``[0, 1]`` of one batch: see the class docstring."""
        # FullGrad has no target layers to fuse: its terms are every bias layer's, summed; options may
        # change how targets are resolved and see the pass's output.
        with self.session(input_tensor) as x:  # (B, C, *spatial) on the model's device and dtype
            spatial = x.shape[2:]
            input_term, records, _ = self._decomposition(x, targets, options)
            with torch.no_grad():
                if eigen_smooth:  # each input channel is one term, as in grad-cam 1.5.7
                    terms = [self._post(input_term[:, c : c + 1], spatial) for c in range(x.shape[1])]
                else:
                    terms = [self._post(input_term, spatial)]
                for _, _, bias, grad in records:
                    if grad.ndim == x.ndim and grad.shape[0] == x.shape[0]:  # spatial output, per image
                        term = grad * bias
                        if bias.ndim == 1:  # a (C,) bias on the last axis: a channels-last output,
                            term = term.movedim(-1, 1)  # e.g. ConvNeXt's / Swin's Linear on (B, H, W, C)
                        terms.append(self._post(term, spatial))  # (B, *spatial)
                del records
                if eigen_smooth:
                    small = [max(1, s // 8) for s in spatial]
                    # Each term rescaled to [0, 1] first, so no layer dominates by its channel count.
                    reduced = torch.stack([resize_maps(min_max_normalize(t), small) for t in terms], 1)
                    component = first_principal_component(reduced)  # (B, *small)
                    if options.orient is not None:  # test-time augmented copies: consistent signs
                        component = options.orient(component)
                    fused = resize_maps(component, spatial)
                else:
                    fused = torch.stack(terms, 1).sum(1)  # (B, *spatial)
                warn_if_constant(
                    fused, "the FullGrad map", reason="no gradient reaches the input or the bias layers"
                )
                return min_max_normalize(fused)
