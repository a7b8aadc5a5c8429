"""Finding layers: by dotted name, by type or predicate, and automatically by tracing one forward pass.

Example:
    >>> layer = get_layer(model, "layer4.-1")                      # model.layer4[-1]
    >>> found = find_target_layer(model, x)                         # traces one forward pass
    >>> found.name, found.reshape_transform                         # ('layer4', None)
    >>> cam = GradCAM(model, [found.layer], reshape_transform=found.reshape_transform)
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Callable

import torch
from torch import nn

# MAX_PREFIX_TOKENS: at most this many extra tokens (class, distillation, registers) before the patch grid,
# the same limit as vit_reshape_transform's (kept importable from here, where it used to live).
from .._engine.capture import HookSet, LayerInput, hooked_module
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
    "LayerInput",
    "LayerLayout",
    "TokenGridReshape",
    "channels_last_reshape",
    "find_layer_predicate_recursive",
    "find_layer_types_recursive",
    "find_target_layer",
    "get_layer",
    "guess_reshape_transform",
    "layer_output_layout",
    "needs_nonnegative_activations",
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

    ``"layer4.-1"`` is ``model.layer4[-1]``, ``"features.-1.0"`` is ``model.features[-1][0]``; a name ending
    in ``":input"`` is the input of that module, a :class:`LayerInput` (``"_avg_pooling:input"``: what the
    global pool receives), the form :func:`find_target_layer` names such a choice with.

    Raises ``ValueError`` naming the part that does not exist and what exists there instead.
    """
    if not isinstance(name, str) or not name.strip():
        raise ValueError(f"a layer name must be a dotted path such as 'layer4.-1', got {name!r}")
    path, colon, kind = name.strip().rpartition(":")
    if colon:
        if kind != "input":
            raise ValueError(
                f"layer {name!r}: the only suffix is ':input' (the module's input), got ':{kind}'"
            )
        return LayerInput(get_layer(model, path))
    return _module_at(model, name)


def _module_at(model: nn.Module, name: str) -> nn.Module:
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
        if isinstance(self.layer, LayerInput):  # what the module receives
            self.forward_pre_hook(self.layer.module, self._record_input)
        else:
            self.forward_hook(self.layer, self._record)

    def _record(self, module: nn.Module, inputs, output) -> None:
        if not self.outputs:
            self.outputs.append(output)

    def _record_input(self, module: nn.Module, inputs) -> None:
        self._record(module, (), inputs[0] if inputs else None)


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

    The module (a :class:`LayerInput` when the chosen activation is the input of a module), its dotted name
    (``"<module>:input"`` for a LayerInput), the reshape transform its output needs (None for channels-first
    maps), the shape of its output on the traced input, and why it was chosen over the method-agnostic
    layer (empty when it is that layer).
    """

    layer: nn.Module
    name: str
    reshape_transform: Callable | None
    output_shape: tuple[int, ...]
    reason: str = ""

    def describe(self) -> str:
        """The layer's name, output shape and reshape transform, in one line."""
        how = getattr(self.reshape_transform, "describe", None)
        layout = f"; reshape: {how()}" if how else ""
        return f"{self.name} (output {tuple(self.output_shape)}{layout})"


@dataclass
class _Record:
    """One tensor of the traced pass: a module's output, or (``layer`` a LayerInput) a module's input."""

    name: str
    layer: nn.Module
    tensor: torch.Tensor


def _is_map(value: Any) -> bool:
    return (
        isinstance(value, torch.Tensor)
        and value.is_floating_point()
        and value.ndim >= 3
        and value.requires_grad
    )


class _OutputRecorder(HookSet):
    """Forward hooks and pre-hooks on every module for one ``with`` block.

    They record how often each module ran and, in the order they become available, the floating-point
    tensors with spatial dims that require grad: the outputs of named modules that are not pass-through,
    and the inputs (first positional argument) of named modules.
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.names = {id(module): name for name, module in model.named_modules() if name}
        self.records: list[_Record] = []
        self.calls: dict = {}

    def _register(self) -> None:
        for module in self.model.modules():
            self.forward_pre_hook(module, self._record_input)
            self.forward_hook(module, self._record)

    def _record_input(self, module: nn.Module, inputs) -> None:
        key = id(module)
        if key in self.names and inputs and _is_map(inputs[0]):
            self.records.append(_Record(f"{self.names[key]}:input", LayerInput(module), inputs[0]))

    def _record(self, module: nn.Module, inputs, output) -> None:
        key = id(module)
        self.calls[key] = self.calls.get(key, 0) + 1
        if key in self.names and _is_map(output) and not isinstance(module, _PASS_THROUGH):
            self.records.append(_Record(self.names[key], module, output))

    def candidates(self, model_input: torch.Tensor) -> list[_Record]:
        """The records of modules that ran once, less the inputs that are the model's or an earlier output."""
        kept: list[_Record] = []
        outputs: set[int] = {id(model_input)}
        for record in self.records:
            if self.calls.get(id(hooked_module(record.layer))) != 1:
                continue
            is_input = isinstance(record.layer, LayerInput)
            if is_input and id(record.tensor) in outputs:
                continue  # the same tensor as a module's output (a ReLU's, into the pool): named by that
            if not is_input:
                outputs.add(id(record.tensor))
            kept.append(record)
        return kept


def needs_nonnegative_activations(method: Any) -> bool:
    """Whether ``method`` (a registry name, a method class or an instance) declares that it needs them.

    The methods declare it as the class attribute ``needs_nonnegative_activations`` (Score-CAM, Grad-CAM++,
    XGrad-CAM, ...): their formulas assume ReLU features, and on a layer with negative values their maps can
    vanish (Score-CAM: ``relu(sum_k w_k A_k)`` with ``w > 0``) or point at the wrong object.
    """
    return bool(getattr(_method(method), "needs_nonnegative_activations", False))


def _method(method: Any) -> Any:
    """A method class or instance as given; a registry name as its class (any kind, case-insensitive)."""
    if not isinstance(method, str):
        return method
    from ..registry import KINDS

    classes = [table[method.lower()] for table in KINDS.values() if method.lower() in table]
    if not classes:
        known = sorted(name for table in KINDS.values() for name in table)
        raise ValueError(f"unknown method {method!r}; choose one of {known}")
    return classes[0]


def _trace(
    model: nn.Module, input_tensor: torch.Tensor, score: Callable[[Any], torch.Tensor] | None
) -> list[tuple[_Record, torch.Tensor]]:
    """Every candidate of one traced forward pass with its gradient, in the order they became available."""
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
        candidates = recorder.candidates(x)
        if not candidates or not value.requires_grad:
            return []
        with reentrant_checkpoint_errors("between the model's layers and the score"):
            grads = torch.autograd.grad(value, [r.tensor for r in candidates], allow_unused=True)
    return [(record, grad) for record, grad in zip(candidates, grads) if grad is not None]


def _as_found(record: _Record, grad: torch.Tensor) -> FoundLayer | None:
    """The record as a FoundLayer if it is a map whose gradient is non-zero at two or more positions."""
    transform, ok = guess_reshape_transform(record.tensor)
    if not ok:
        return None
    g = transform(grad) if transform is not None else grad  # (B, C, *spatial)
    positions = g[0].flatten(1).abs().sum(0)  # (N,)
    if positions.numel() > 1 and int((positions > 0).sum()) >= 2:
        return FoundLayer(record.layer, record.name, transform, tuple(record.tensor.shape))
    return None


def _nonnegative_layer(
    traced: list[tuple[_Record, torch.Tensor]], default: int
) -> tuple[FoundLayer | None, str]:
    """The qualifying record nearest after ``traced[default]`` with output >= 0, else the nearest before."""
    after = traced[default + 1 :]
    before = traced[:default][::-1]
    for where, records in (("after", after), ("before", before)):
        for record, grad in records:
            if bool((record.tensor >= 0).all()):
                found = _as_found(record, grad)
                if found is not None:
                    return found, where
    return None, ""


@guarded
def find_target_layer(
    model: nn.Module,
    input_tensor: torch.Tensor,
    score: Callable[[Any], torch.Tensor] | None = None,
    method: Any = None,
) -> FoundLayer:
    """The last layer with a spatial output that the score depends on, found by tracing one forward pass.

    Every module that runs exactly once and returns a tensor is recorded (except pass-through modules:
    adaptive pooling, dropout, identity, flatten). Its output counts as spatial
    when, after :func:`guess_reshape_transform`, it is ``(B, C, *spatial)`` with more than one position.
    The score (default: the sum of each image's top logit) is differentiated once with respect to all
    of them; the chosen layer is the last to finish whose gradient is non-zero at two or more
    positions. That rules out, e.g., a ViT's last blocks whose patch tokens no longer reach the class
    token, and picks the attention input of the last block, as practitioners do by hand.

    ``method`` (a registry name such as ``"scorecam"``, a method class or an instance; None: any method)
    makes the choice the method's: a method whose class declares ``needs_nonnegative_activations = True``
    gets, when that layer's output has negative values on the traced input (a batch norm before the last
    ReLU), the nearest spatial activation after it that is non-negative there: a module's output, or the
    input of a module (a :class:`LayerInput`, e.g. of the global pool, when the activation is functional
    or a shared module), else the nearest such before it. ``FoundLayer.reason`` says why. For the bundled
    EfficientNet-Lite0 that is ``_avg_pooling:input``, the features after the last ReLU6, instead of
    ``_bn1``.

    The input is moved to the model's device and floating dtype, as every method does. The model's
    training flags and parameters are left as they were (it runs in eval mode, and no ``.grad`` is
    written: ``torch.autograd.grad``). Raises ``ValueError`` when no layer qualifies.

    Example:
        >>> find_target_layer(model, x).name, find_target_layer(model, x, method="scorecam").name
        ('_bn1', '_avg_pooling:input')
    """
    nonnegative = method is not None and needs_nonnegative_activations(method)
    traced = _trace(model, input_tensor, score)
    for index in range(len(traced) - 1, -1, -1):
        record, grad = traced[index]
        if isinstance(record.layer, LayerInput):
            continue  # the method-agnostic choice is a module's output
        found = _as_found(record, grad)
        if found is not None:
            return _for_method(found, traced, index, method) if nonnegative else found
    raise ValueError(
        "no layer with a spatial output that the score depends on was found; pick one with "
        "target_layers / --target-layer"
    )


def _for_method(
    found: FoundLayer, traced: list[tuple[_Record, torch.Tensor]], index: int, method: Any
) -> FoundLayer:
    """``found``, or the non-negative layer nearest to it, for a method that needs non-negative inputs."""
    who = getattr(_method(method), "name", type(method).__name__)
    lowest = float(traced[index][0].tensor.detach().min())
    if lowest >= 0:
        return found
    chosen, where = _nonnegative_layer(traced, index)
    why = (
        f"{who} needs non-negative activations and {found.name}'s output has negative values "
        f"(min {lowest:.3g})"
    )
    if chosen is None:
        found.reason = f"{why}, but no spatial layer with a non-negative output was found: kept {found.name}"
        return found
    chosen.reason = f"{why}; {chosen.name} is the nearest non-negative activation {where} it"
    return chosen
