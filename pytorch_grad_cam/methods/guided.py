"""Guided Backpropagation and Guided Grad-CAM: pixel-resolution gradients, not ``(B, *spatial)`` maps."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from typing import Any, Callable

import numpy as np
import torch
from torch import nn
from torch.overrides import TorchFunctionMode

from .._engine.capture import HookSet
from .._engine.checkpointing import reentrant_checkpoint_errors
from .._engine.checks import check_bool, check_device, check_input
from .._engine.session import compute_session
from .._engine.undo import FunctionMode, guarded
from ..base_cam import (
    UNSET,
    BaseCAM,
    TargetsArg,
    first_api_targets,
    normalize_targets,
    target_scores,
    top_class_targets,
)
from ..registry import Registered
from .gradient import GradCAM

# The rectifier modules that get the guided rule: ReLU, and ReLU6 (MobileNet, EfficientNet-Lite), whose
# own backward then masks with 0 < x < 6.
_RELU_MODULES = (nn.ReLU, nn.ReLU6)
# The functional spellings of them that the forward pass may call instead of a module.
_FUNCTIONAL_RELUS = frozenset(
    {
        torch.relu,
        torch.relu_,
        torch.nn.functional.relu,
        torch.nn.functional.relu_,
        torch.Tensor.relu,
        torch.Tensor.relu_,
        torch.nn.functional.relu6,
    }
)


class _PositiveGradient(torch.autograd.Function):
    """Identity forward; backward lets only positive gradients through.

    Placed on a ReLU's output, the ReLU's own backward then applies its forward mask: the gradient that
    reaches the ReLU's input is ``(x > 0) * relu(grad_out)``, the guided-backpropagation rule.
    """

    @staticmethod
    def forward(ctx, output: torch.Tensor) -> torch.Tensor:
        # A copy, not a view: in-place operations after the ReLU (ResNet's ``out += identity``) must
        # not modify the output of a custom Function, and the module's own output stays untouched.
        return output.clone()

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        return grad.clamp(min=0)


class _ReLUModuleHooks(HookSet):
    """The guided rule on every ``nn.ReLU`` / ``nn.ReLU6`` module of ``model``, by forward hooks.

    For one ``with`` block. ``depth > 0`` while such a module runs (its own ``F.relu`` call is then left to
    the hook, so nothing is wrapped twice).
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.depth = 0

    def _register(self) -> None:
        for module in self.model.modules():
            if isinstance(module, _RELU_MODULES):
                self.forward_pre_hook(module, self._enter_relu)
                self.forward_hook(module, self._leave_relu, always_call=True)

    def _enter_relu(self, module: nn.Module, inputs) -> None:
        self.depth += 1

    def _leave_relu(self, module: nn.Module, inputs, output):
        self.depth -= 1
        if isinstance(output, torch.Tensor) and output.requires_grad:
            return _PositiveGradient.apply(output)
        return None


class _FunctionalReLUs(TorchFunctionMode):
    """The guided rule on the functional ReLUs called in ``forward``, outside the hooked ReLU modules.

    The functional ReLUs: ``F.relu``, ``torch.relu``, ``x.relu()``, their in-place forms; the ReLU modules are
    those that ``modules`` hooks. An in-place functional ReLU whose result is discarded
    (``torch.relu_(x); return x``) cannot be reached: the guided rule applies to the returned tensor.
    """

    def __init__(self, modules: _ReLUModuleHooks) -> None:
        super().__init__()
        self.modules = modules

    def __torch_function__(self, func, types, args=(), kwargs=None):
        result = func(*args, **(kwargs or {}))
        if (
            func in _FUNCTIONAL_RELUS
            and self.modules.depth == 0
            and isinstance(result, torch.Tensor)
            and result.requires_grad
        ):
            return _PositiveGradient.apply(result)
        return result


@contextlib.contextmanager
def _guided_relus(model: nn.Module) -> Iterator[None]:
    """For one forward pass: the guided rule on every ReLU, module or functional.

    The hooks are removed and the mode is popped on exit, also when the block, or entering the mode, raises
    (:class:`~.._engine.undo.FunctionMode`: an exception inside ``TorchFunctionMode.__enter__``, after the
    push, leaves no mode on the stack).
    """
    hooks = _ReLUModuleHooks(model)
    with hooks, FunctionMode(_FunctionalReLUs(hooks)):
        yield


def _layout(gradients: torch.Tensor, channels_last: bool) -> np.ndarray:
    """``(B, C, *spatial)`` -> float32 numpy, channels last or not.

    ``(B, *spatial, C)`` (``(*spatial, C)`` for one image) or ``(B, C, *spatial)``.
    """
    if channels_last:
        gradients = gradients.movedim(1, -1)  # (B, *spatial, C)
        if gradients.shape[0] == 1:
            gradients = gradients[0]  # the reference library's (H, W, C) for one image
    return gradients.detach().float().cpu().numpy()


class GuidedBackpropReLUModel(Registered):
    """Guided Backpropagation (Springenberg et al., arXiv:1412.6806, section 3.4).

    The gradient of each image's target score with respect to the input pixels, where every ReLU's
    backward pass lets through only positive gradients at positions where its input was positive:
    ``R_l = (f_l > 0) * (R_{l+1} > 0) * R_{l+1}``. Applies to ``nn.ReLU`` and ``nn.ReLU6`` modules (by
    forward hooks; for ReLU6 the mask is ``0 < f_l < 6``) and to functional ReLUs in ``forward``
    (``F.relu``, ``torch.relu``, ``x.relu()``, ``F.relu6``...); other activations (SiLU, GELU) keep their
    plain gradient. The model's
    modules are never replaced, and its hooks, training flags, ``requires_grad``, ``.grad`` and device
    are as before after every call, also after one that raises.

    Args:
        model: the network, ``(B, C, *spatial)`` in.
        device: where to compute; by default the model's device (a model elsewhere is moved for the call
            and back). ``use_cuda=True`` (first API) means ``device="cuda"``.

    Call ``gb(input_tensor, target_category=None, *, targets=None, channels_last=True)``: ``targets``
    (or ``target_category``, the reference's name) is ``None`` (each image's top class), one class index
    or callable target for every image, or one per image. Returns float32 numpy gradients:

    - ``channels_last=True`` (default, the reference library's layout): ``(B, *spatial, C)``, and for a
      batch of one image ``(*spatial, C)``, e.g. ``(H, W, 3)``, as grad-cam 1.5.7 returns;
    - ``channels_last=False``: ``(B, C, *spatial)`` like the input, whatever ``B``.

    Example:
        >>> gb = GuidedBackpropReLUModel(model=model, device="cpu")(x, target_category=None)  # (H, W, 3)
        >>> cv2.imwrite("gb.jpg", deprocess_image(gb))
    """

    name = "guidedbackprop"
    kind = "pixel"

    def __init__(
        self, model: nn.Module, device: str | torch.device | None = None, *, use_cuda: bool | None = None
    ) -> None:
        """Check and store ``model`` and the compute device; see the class docstring for the arguments."""
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        self.model = model
        self.device = check_device(use_cuda, device)

    def forward(self, input_img: torch.Tensor) -> Any:
        """The model's output (the reference library's ``forward``)."""
        return self.model(input_img)

    @guarded
    def __call__(
        self,
        input_img: torch.Tensor,
        target_category: Any = None,
        *,
        targets: TargetsArg = None,
        channels_last: bool = True,
    ) -> np.ndarray:
        """The guided gradients of each image's target score w.r.t. the input: see the class docstring."""
        targets = first_api_targets(targets, target_category, unset=None)  # the reference's default: None
        channels_last = check_bool(channels_last, "channels_last")
        x = check_input(input_img, self.model)
        target_list = normalize_targets(targets, x.shape[0])
        with compute_session(self.model, self.device, x) as x_dev:
            return _layout(self._gradients(x_dev, target_list), channels_last)

    def _gradients(self, x: torch.Tensor, targets) -> torch.Tensor:
        """Guided gradients ``(B, C, *spatial)`` of the target scores, on the compute device."""
        x_in = x.detach().clone().requires_grad_(True)  # a copy: the user's tensor keeps its flags
        with torch.enable_grad():
            with _guided_relus(self.model):
                output = self.model(x_in.clone())  # a model that modifies its input in place keeps x_in
            if targets is None:
                targets = top_class_targets(output, x.shape[0])
            total = target_scores(targets, output, x.shape[0]).sum()
        if not total.requires_grad:
            raise ValueError(
                "the target scores do not depend on the input: the target must return a "
                "value computed from the model output"
            )
        # Only the graph from the input copy to the scores: parameters' .grad are neither read nor written.
        with reentrant_checkpoint_errors("between the input and the score"):
            (grad,) = torch.autograd.grad(total, x_in, allow_unused=True)
        return torch.zeros_like(x_in) if grad is None else grad.detach()


class GuidedGradCAM(Registered):
    """Guided Grad-CAM (Selvaraju et al., arXiv:1610.02391, section 3).

    Guided backpropagation times the class map upsampled to the input, ``cam_gb = gb * cam[..., None]``,
    high-resolution and class-discriminative.

    Args:
        model: the network.
        target_layers, reshape_transform: for the map method (Grad-CAM by default).
        cam: the map: ``None`` (Grad-CAM), a :class:`BaseCAM` subclass (built with ``model``,
            ``target_layers``, ``reshape_transform``, ``device``) or any CAM object already built
            (then ``target_layers`` / ``reshape_transform`` must be left out).
        device: where to compute (as for the CAMs).

    Call ``ggc(input_tensor, targets=None, *, channels_last=True)``; the result has the layout of
    :class:`GuidedBackpropReLUModel` (``(H, W, C)`` for one image, ``(B, H, W, C)`` for more, or
    ``(B, C, H, W)`` with ``channels_last=False``), float32.

    Example:
        >>> ggc = GuidedGradCAM(model, target_layers=[model.layer4[-1]])
        >>> cam_gb = ggc(x, targets=[ClassifierOutputTarget(281)])  # (H, W, 3)
        >>> cv2.imwrite("cam_gb.jpg", deprocess_image(cam_gb))
    """

    name = "guidedgradcam"
    kind = "pixel"

    def __init__(
        self,
        model: nn.Module,
        target_layers: nn.Module | Sequence[nn.Module] | None = None,
        reshape_transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
        *,
        cam: type | Callable[..., np.ndarray] | None = None,
        device: str | torch.device | None = None,
        use_cuda: bool | None = None,
    ) -> None:
        """Build the guided backpropagation and the map method; see the class docstring for the arguments."""
        self.guided_backprop = GuidedBackpropReLUModel(model, device, use_cuda=use_cuda)
        if cam is None or (isinstance(cam, type) and issubclass(cam, BaseCAM)):
            cls = GradCAM if cam is None else cam
            cam = cls(model, target_layers, reshape_transform, device=self.guided_backprop.device)
        elif isinstance(cam, type) or not callable(cam):
            raise TypeError(f"cam must be None, a BaseCAM subclass or a CAM object, got {cam!r}")
        elif target_layers is not None or reshape_transform is not None:
            raise TypeError("cam is already built: give target_layers / reshape_transform to it, not here")
        self.model = model
        self.cam = cam

    def __call__(
        self,
        input_tensor: torch.Tensor,
        targets: TargetsArg = None,
        *,
        target_category: Any = UNSET,
        channels_last: bool = True,
    ) -> np.ndarray:
        """``cam_gb = gb * cam[..., None]``, in the layout of :class:`GuidedBackpropReLUModel`."""
        targets = first_api_targets(targets, target_category)
        gb = self.guided_backprop(input_tensor, targets=targets, channels_last=False)  # (B, C, *spatial)
        maps = np.asarray(self.cam(input_tensor, targets), dtype=np.float32)  # (B, *spatial)
        if maps.shape != gb.shape[:1] + gb.shape[2:]:
            raise ValueError(
                f"the cam returned maps of shape {maps.shape}, expected "
                f"{gb.shape[:1] + gb.shape[2:]} (one per image, the input's size)"
            )
        return _layout(torch.from_numpy(gb * maps[:, None]), channels_last)
