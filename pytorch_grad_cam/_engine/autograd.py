"""Twice-differentiable stand-ins for operations whose double backward torch lacks (ShapleyCAM's Hessian)."""

from __future__ import annotations

import sys
from functools import partial
from typing import Any

import torch
from torch.overrides import TorchFunctionMode

from .undo import FunctionMode, Undo

#: The scaled-dot-product attention kernels that ``torch.backends.cuda`` can switch (torch >= 2.0).
_SDP_KERNELS = ("flash", "mem_efficient", "cudnn", "math")


def _attention_kernels() -> dict[str, bool]:
    """Which attention kernels are enabled now (none known before torch 2.0)."""
    backends = torch.backends.cuda
    return {
        kernel: getattr(backends, f"{kernel}_sdp_enabled")()
        for kernel in _SDP_KERNELS
        if hasattr(backends, f"enable_{kernel}_sdp")
    }


def _enable_attention_kernels(enabled: dict[str, bool]) -> None:
    for kernel, on in enabled.items():
        getattr(torch.backends.cuda, f"enable_{kernel}_sdp")(on)


def _roi_align_op(name: str) -> Any:
    """Torchvision's registered RoIAlign operator ``name``, or None where torchvision is not loaded."""
    if "torchvision" not in sys.modules:
        return None
    try:
        return getattr(torch.ops.torchvision, name)
    except (AttributeError, RuntimeError):
        return None


class _RoIAlign(torch.autograd.Function):
    """torchvision's RoIAlign, twice differentiable.

    For fixed boxes RoIAlign is linear in its input, so its backward is the adjoint linear map (torchvision's
    ``_roi_align_backward``), and the backward of that is RoIAlign again. torchvision's own op refuses double
    backward; the boxes get no gradient in either.
    """

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
    """The adjoint of RoIAlign (scatters ``(K, C, PH, PW)`` back to the ``(N, C, H, W)`` input).

    Its backward is RoIAlign.
    """

    @staticmethod
    def forward(
        ctx,
        grad: torch.Tensor,
        rois: torch.Tensor,
        input_shape: tuple,
        spatial_scale: float,
        pooled_height: int,
        pooled_width: int,
        sampling_ratio: int,
        aligned: bool,
    ) -> torch.Tensor:
        ctx.save_for_backward(rois)
        ctx.params = (spatial_scale, pooled_height, pooled_width, sampling_ratio, aligned)
        return _roi_align_op("_roi_align_backward")(
            grad, rois, spatial_scale, pooled_height, pooled_width, *input_shape, sampling_ratio, aligned
        )

    @staticmethod
    def backward(ctx, grad_grad: torch.Tensor):
        (rois,) = ctx.saved_tensors
        return (_RoIAlign.apply(grad_grad, rois, *ctx.params),) + (None,) * 7


class _TwiceDifferentiableOps(TorchFunctionMode):
    """torchvision's RoIAlign on an input that requires grad replaced by :class:`_RoIAlign`."""

    def __init__(self) -> None:
        """Look up torchvision's RoIAlign op (None where it is not loaded)."""
        super().__init__()
        self._roi_align = _roi_align_op("roi_align")
        self._roi_align_default = getattr(self._roi_align, "default", None)

    def __torch_function__(self, func, types, args=(), kwargs=None):
        """Run ``func``, with RoIAlign on an input that requires grad replaced by :class:`_RoIAlign`."""
        kwargs = kwargs or {}
        if (
            self._roi_align is not None
            and (func is self._roi_align or func is self._roi_align_default)
            and not kwargs
            and args[0].requires_grad
            and not args[0].is_quantized
        ):
            return _RoIAlign.apply(*args)
        return func(*args, **kwargs)


class TwiceDifferentiable:
    """For one forward pass: the operations without a double backward replaced by twice-differentiable ones.

    The operations that have no double backward in torch or torchvision are replaced by exact
    twice-differentiable equivalents. Scaled-dot-product attention runs with its math kernel (same result);
    torchvision's RoIAlign (Faster/Mask R-CNN box heads) with :class:`_RoIAlign`. The attention kernels
    and the mode stack are restored by undos (:class:`~.undo.Undo`), whatever line an exception strikes.
    """

    def __init__(self) -> None:
        """The mode that replaces RoIAlign; nothing changes before ``__enter__``."""
        self._mode = FunctionMode(_TwiceDifferentiableOps())
        self._kernels: Undo | None = None

    def __enter__(self) -> TwiceDifferentiable:
        """Restrict attention to its math kernel and start replacing RoIAlign."""
        kernels = _attention_kernels()
        self._kernels = Undo(partial(_enable_attention_kernels, kernels))
        try:
            _enable_attention_kernels({kernel: kernel == "math" for kernel in kernels})
            self._mode.__enter__()
        except BaseException:
            self._kernels()
            raise
        return self

    def __exit__(self, *exc_info: object) -> None:
        """Stop replacing RoIAlign and restore the previous attention kernels."""
        try:
            self._mode.__exit__(*exc_info)
        finally:
            if self._kernels is not None:
                self._kernels()
