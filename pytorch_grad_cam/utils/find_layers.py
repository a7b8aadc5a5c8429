"""Finding layers: by dotted name, by type or predicate, and automatically by tracing one forward pass.

Example:
    >>> layer = get_layer(model, "layer4.-1")                      # model.layer4[-1]
    >>> found = find_target_layer(model, x)                         # traces one forward pass
    >>> found.name, found.reshape_transform                         # ('layer4', None)
    >>> cam = GradCAM(model, [found.layer], reshape_transform=found.reshape_transform)
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Callable

import torch
from torch import nn

# MAX_PREFIX_TOKENS: at most this many extra tokens (class, distillation, registers) before the patch grid,
# the same limit as vit_reshape_transform's (kept importable from here, where it used to live).
from .._engine.capture import HookSet
from .._engine.checkpointing import reentrant_checkpoint_errors
from .._engine.session import compute_session
from .._engine.undo import guarded
from .reshape_transforms import (
    TokenGridReshape,
    channels_last_reshape,
    guess_reshape_transform,
)

__all__ = [
    "FoundLayer",
    "LayerLayout",
    "TokenGridReshape",
    "channels_last_reshape",
    "find_layer_predicate_recursive",
    "find_layer_types_recursive",
    "find_target_layer",
    "get_layer",
    "guess_reshape_transform",
    "layer_output_layout",
    "replace_all_layer_type_recursive",
    "replace_layer_recursive",
]

#: Modules whose output adds nothing to locate: resampling or identity-like (VGG's avgpool only copies
#: its input into a 7x7 grid).
_PASS_THROUGH = (
    nn.AdaptiveAvgPool1d,
    nn.AdaptiveAvgPool2d,
    nn.AdaptiveAvgPool3d,
    nn.AdaptiveMaxPool1d,
    nn.AdaptiveMaxPool2d,
    nn.AdaptiveMaxPool3d,
    nn.Dropout,
    nn.Dropout1d,
    nn.Dropout2d,
    nn.Dropout3d,
    nn.AlphaDropout,
    nn.FeatureAlphaDropout,
    nn.Identity,
    nn.Flatten,
)


def _children(module: nn.Module) -> list[tuple[str, nn.Module]]:
    """Every ``(name, child)`` of ``module``, a child registered under two names included.

    Unlike ``named_children``, which gives a shared module once.
    """
    return [
        (name, child)
        for name, child in module.named_modules(remove_duplicate=False)
        if name and "." not in name
    ]


def get_layer(model: nn.Module, name: str) -> nn.Module:
    """The sub-module of ``model`` at a dotted path; integers index sequences, negatives count from the end.

    ``"layer4.-1"`` is ``model.layer4[-1]``, ``"features.-1.0"`` is ``model.features[-1][0]``.

    Raises ``ValueError`` naming the part that does not exist and what exists there instead.
    """
    if not isinstance(name, str) or not name.strip():
        raise ValueError(f"a layer name must be a dotted path such as 'layer4.-1', got {name!r}")
    module = model
    walked: list[str] = []
    for part in name.strip().split("."):
        child = None
        if _is_int(part) and isinstance(module, (nn.Sequential, nn.ModuleList)):
            index = int(part)
            if -len(module) <= index < len(module):
                child = module[index]
        else:
            child = dict(_children(module)).get(part)
        if child is None:
            where = ".".join(walked) or "the model"
            children = [child_name for child_name, _ in _children(module)]
            hint = (
                f"it has {len(module)} entries (use 0..{len(module) - 1} or -1)"
                if isinstance(module, (nn.Sequential, nn.ModuleList))
                else f"its children are {children}"
                if children
                else "it has no children"
            )
            raise ValueError(f"layer {name!r}: {where} ({type(module).__name__}) has no {part!r}; {hint}")
        module = child
        walked.append(part)
    return module


def _is_int(text: str) -> bool:
    return text.lstrip("-").isdigit()


def find_layer_types_recursive(model: nn.Module, layer_types: Iterable[type[nn.Module]]) -> list[nn.Module]:
    """Every sub-module (the model included) that is an instance of one of ``layer_types``, in order."""
    types = tuple(layer_types)
    return [module for module in model.modules() if isinstance(module, types)]


def find_layer_predicate_recursive(
    model: nn.Module, predicate: Callable[[nn.Module], bool]
) -> list[nn.Module]:
    """Every sub-module (the model included) for which ``predicate(module)`` is true, in order."""
    return [module for module in model.modules() if predicate(module)]


def replace_layer_recursive(model: nn.Module, old_layer: nn.Module, new_layer: nn.Module) -> bool:
    """Put ``new_layer`` wherever ``old_layer`` is a child in ``model``'s tree; True if found.

    This CHANGES the model (the CAM methods never do this; it is a utility for the user's own edits).
    """
    found = False
    for module in list(model.modules()):
        for key, child in _children(module):
            if child is old_layer:
                setattr(module, key, new_layer)
                found = True
    return found


def replace_all_layer_type_recursive(
    model: nn.Module, old_layer_type: type[nn.Module], new_layer: nn.Module
) -> None:
    """Replace every child of type ``old_layer_type`` with ``new_layer`` (changes the model)."""
    for module in list(model.modules()):
        for key, child in _children(module):
            if isinstance(child, old_layer_type):
                setattr(module, key, new_layer)


@dataclass(frozen=True)
class LayerLayout:
    """How one layer's output reads as a CAM's map, from :func:`layer_output_layout`.

    Attributes:
        output_shape: the output's shape as the layer returns it, e.g. ``(1, 197, 768)`` for ViT tokens.
        reshape_transform: what turns that output into ``(B, C, *spatial)`` (None when it already is).
        map_shape: the shape after ``reshape_transform``, ``(B, C, *spatial)``, e.g. ``(1, 768, 14, 14)``.
    """

    output_shape: tuple[int, ...]
    reshape_transform: Callable | None
    map_shape: tuple[int, ...]


class _FirstOutput(HookSet):
    """A forward hook on one module for one ``with`` block, keeping what its first call returned."""

    def __init__(self, layer: nn.Module) -> None:
        super().__init__()
        self.layer = layer
        self.outputs: list[Any] = []

    def _register(self) -> None:
        self.forward_hook(self.layer, self._record)

    def _record(self, module: nn.Module, inputs, output) -> None:
        if not self.outputs:
            self.outputs.append(output)


@guarded
def layer_output_layout(model: nn.Module, layer: nn.Module, input_tensor: torch.Tensor) -> LayerLayout:
    """Run ``model`` once on ``input_tensor`` and read ``layer``'s output layout.

    Its shape, the reshape transform :func:`guess_reshape_transform` picks for it, and the
    ``(B, C, *spatial)`` shape that gives.

    The forward pass runs without gradients, in eval mode, with the input on the model's device and
    floating dtype; the model's training flags are restored afterwards and its hook is removed, also when
    the forward pass raises.

    Example:
        >>> layout = layer_output_layout(vit, vit.encoder.layers[-1].ln_1, x)  # x: (1, 3, 224, 224)
        >>> layout.output_shape, layout.map_shape  # (1, 197, 768), (1, 768, 14, 14)
        >>> cam = GradCAM(vit, [vit.encoder.layers[-1].ln_1], reshape_transform=layout.reshape_transform)

    Raises:
        ValueError: the layer did not run, returned something other than a tensor, or returned a tensor
            that is not a spatial map, a channels-last map or tokens on a square grid. The message says
            which, in words that can follow the layer's name.
    """
    recorder = _FirstOutput(layer)
    with compute_session(model, None, input_tensor) as x, torch.no_grad(), recorder:
        model(x)
    if not recorder.outputs:
        raise ValueError("the layer did not run; choose a layer with a tensor output")
    output = recorder.outputs[0]
    if not isinstance(output, torch.Tensor):
        raise ValueError(f"the layer returns {type(output).__name__}; choose a layer with a tensor output")
    transform, ok = guess_reshape_transform(output)
    if not ok:
        raise ValueError(
            f"its output {tuple(output.shape)} is not a spatial map (B, C, H, W), channels-last "
            "(B, H, W, C) or tokens on a square grid"
        )
    mapped = transform(output) if transform is not None else output  # (B, C, *spatial)
    return LayerLayout(tuple(output.shape), transform, tuple(mapped.shape))


# --------------------------------------------------------------------------------- automatic choice
@dataclass
class FoundLayer:
    """What :func:`find_target_layer` chose.

    The module, its dotted name, the reshape transform its output needs (None for channels-first maps), and
    the shape of its output on the traced input.
    """

    layer: nn.Module
    name: str
    reshape_transform: Callable | None
    output_shape: tuple[int, ...]

    def describe(self) -> str:
        """The layer's name, output shape and reshape transform, in one line."""
        how = getattr(self.reshape_transform, "describe", None)
        layout = f"; reshape: {how()}" if how else ""
        return f"{self.name} (output {tuple(self.output_shape)}{layout})"


class _OutputRecorder(HookSet):
    """Forward hooks on every module for one ``with`` block.

    They record how often each module ran, and the floating-point outputs with spatial dims that require grad,
    of named modules that are not pass-through.
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.names = {id(module): name for name, module in model.named_modules() if name}
        self.records: list[tuple[str, nn.Module, torch.Tensor]] = []
        self.calls: dict = {}

    def _register(self) -> None:
        for module in self.model.modules():
            self.forward_hook(module, self._record)

    def _record(self, module: nn.Module, inputs, output) -> None:
        key = id(module)
        self.calls[key] = self.calls.get(key, 0) + 1
        spatial = isinstance(output, torch.Tensor) and output.is_floating_point() and output.ndim >= 3
        if key in self.names and spatial and output.requires_grad and not isinstance(module, _PASS_THROUGH):
            self.records.append((self.names[key], module, output))


@guarded
def find_target_layer(
    model: nn.Module, input_tensor: torch.Tensor, score: Callable[[Any], torch.Tensor] | None = None
) -> FoundLayer:
    """The last layer with a spatial output that the score depends on, found by tracing one forward pass.

    Every module that runs exactly once and returns a tensor is recorded (except pass-through modules:
    adaptive pooling, dropout, identity, flatten). Its output counts as spatial
    when, after :func:`guess_reshape_transform`, it is ``(B, C, *spatial)`` with more than one position.
    The score (default: the sum of each image's top logit) is differentiated once with respect to all
    of them; the chosen layer is the last to finish whose gradient is non-zero at two or more
    positions. That rules out, e.g., a ViT's last blocks whose patch tokens no longer reach the class
    token, and picks the attention input of the last block, as practitioners do by hand.

    The input is moved to the model's device and floating dtype, as every method does. The model's
    training flags and parameters are left as they were (it runs in eval mode, and no ``.grad`` is
    written: ``torch.autograd.grad``). Raises ``ValueError`` when no layer qualifies.
    """
    recorder = _OutputRecorder(model)
    # The engine's session: eval mode, restored afterwards; the input on the model's device and dtype.
    with compute_session(model, None, input_tensor) as x, torch.enable_grad():
        x = x.clone().requires_grad_(True)  # (B, C, *spatial): outputs require grad even if frozen
        with recorder:
            output = model(x)
        if score is None:
            if not isinstance(output, torch.Tensor) or output.ndim != 2:
                raise ValueError(
                    "find_target_layer: the model output is not (B, num_classes); pass "
                    "score=... (a function of the output returning a scalar)"
                )
            value = output.max(-1).values.sum()
        else:
            value = score(output)
        candidates = [r for r in recorder.records if recorder.calls[id(r[1])] == 1]
        grads: Sequence[torch.Tensor | None] = []
        if not candidates or not value.requires_grad:
            candidates = []
        else:
            with reentrant_checkpoint_errors("between the model's layers and the score"):
                grads = torch.autograd.grad(value, [r[2] for r in candidates], allow_unused=True)
    for (name, module, out), grad in reversed(list(zip(candidates, grads))):
        if grad is None:
            continue
        transform, ok = guess_reshape_transform(out)
        if not ok:
            continue
        g = transform(grad) if transform is not None else grad  # (B, C, *spatial)
        positions = g[0].flatten(1).abs().sum(0)  # (N,)
        if positions.numel() > 1 and int((positions > 0).sum()) >= 2:
            return FoundLayer(module, name, transform, tuple(out.shape))
    raise ValueError(
        "no layer with a spatial output that the score depends on was found; pick one with "
        "target_layers / --target-layer"
    )
