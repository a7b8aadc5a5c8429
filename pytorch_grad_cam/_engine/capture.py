"""Forward hooks that capture the target layers' activations for exactly one forward pass."""

from __future__ import annotations

import threading
from collections.abc import Sequence
from functools import partial
from typing import Any, Callable

import torch
from torch import nn

from .undo import Undo


def tensors_of(output: Any) -> list[torch.Tensor]:
    """The tensors in a layer output: the tensor itself, or those in a (nested) dict/list/tuple."""
    if isinstance(output, torch.Tensor):
        return [output]
    if isinstance(output, dict):
        output = list(output.values())
    if isinstance(output, (list, tuple)):
        return [t for value in output for t in tensors_of(value)]
    return []


def rebuild(sequence: list | tuple, items: list) -> list | tuple:
    """A list or tuple of ``sequence``'s type holding ``items`` (a namedtuple takes them as arguments)."""
    if isinstance(sequence, tuple) and hasattr(sequence, "_fields"):
        return type(sequence)(*items)
    return type(sequence)(items)


def map_tensors(fn: Callable[[torch.Tensor], Any], output: Any) -> Any:
    """``output`` with every tensor ``t`` in it replaced by ``fn(t)``; containers keep their type."""
    if isinstance(output, torch.Tensor):
        return fn(output)
    if isinstance(output, dict):
        return type(output)((key, map_tensors(fn, value)) for key, value in output.items())
    if isinstance(output, (list, tuple)):
        return rebuild(output, [map_tensors(fn, value) for value in output])
    return output


class LayerInput(nn.Module):
    """The input of ``module`` as a target layer: the tensor ``module`` receives (its first argument).

    For a feature map that no module returns: an activation applied functionally, or by a module that also
    runs elsewhere, right before a pooling module. The bundled EfficientNet-Lite0 applies its last ReLU6
    with the module its stem uses too, so ``LayerInput(model._avg_pooling)`` is its last feature map after
    that ReLU6. Captured by a forward pre-hook on ``module`` for the duration of a call, like any target
    layer; its name is ``"<module's name>:input"`` (``get_layer`` reads that form). It is a marker, never
    run, and not part of the model (``module`` is not registered as its child).

    Example:
        >>> cam = ScoreCAM(model, target_layers=[LayerInput(model._avg_pooling)])
    """

    module: nn.Module

    def __init__(self, module: nn.Module) -> None:
        """Mark the input of ``module``."""
        super().__init__()
        if not isinstance(module, nn.Module):
            raise TypeError(f"LayerInput takes an nn.Module, got {type(module).__name__}")
        object.__setattr__(self, "module", module)  # not a child: the marker holds no part of the model

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        """Refused: a marker of a module's input is not a layer to run."""
        raise TypeError("LayerInput marks the input of a module as a target layer; it is never run")

    def extra_repr(self) -> str:
        """The marked module's type."""
        return f"input of {type(self.module).__name__}"


def hooked_module(layer: nn.Module) -> nn.Module:
    """The module whose call yields ``layer``'s activation: the layer, or the module a LayerInput marks."""
    return layer.module if isinstance(layer, LayerInput) else layer


def layer_name(model: nn.Module, layer: nn.Module) -> str:
    """The dotted name of ``layer`` inside ``model`` (for messages); ``"<name>:input"`` for a LayerInput."""
    if isinstance(layer, LayerInput):
        return f"{layer_name(model, layer.module)}:input"
    for name, module in model.named_modules():
        if module is layer:
            return name or "<the model itself>"
    return type(layer).__name__


#: A module's hook dicts: the one that holds the hook, then those torch keeps flags in under the same id.
_FORWARD_HOOK_DICTS = ("_forward_hooks_with_kwargs", "_forward_hooks_always_called", "_forward_hooks")
_FORWARD_PRE_HOOK_DICTS = ("_forward_pre_hooks_with_kwargs", "_forward_pre_hooks")


def _unregister(module: nn.Module, wrapper: Callable, dicts: tuple[str, ...]) -> None:
    """Delete the hook ``wrapper`` from ``module``'s hook dicts, under every id it is registered with.

    Idempotent, and it finishes what an interrupted run of it left: the flags go first, the hook itself
    last, so a hook still found is found with its flags.
    """
    hooks = getattr(module, dicts[-1])
    for key in [key for key, value in list(hooks.items()) if value is wrapper]:
        for name in dicts:
            getattr(module, name).pop(key, None)


class HookSet:
    """Hooks that live for one ``with`` block, and act only on the thread that entered it.

    ``_register`` registers them through :meth:`forward_hook` / :meth:`forward_pre_hook`; all are removed on
    exit, and also when registering fails half-way. A hook does nothing when the module runs on another
    thread: a plain ``model(x)`` elsewhere while a CAM call holds the model never sees a hook's effect,
    and never feeds the call's captures.

    An exception anywhere (a KeyboardInterrupt inside torch's ``register_forward_hook``, after the hook is
    in the module's dict but before its handle is returned) leaves no hook: each hook is recorded before it
    is registered, and removed by value, not by handle (an :class:`~.undo.Undo` pending until removal).
    """

    def __init__(self) -> None:
        """No hooks yet: they are registered on entering the block."""
        self._hooked: list[tuple[nn.Module, Callable, tuple[str, ...]]] = []
        self._thread: int | None = None
        self._undo: Undo | None = None

    def _register(self) -> None:
        raise NotImplementedError

    def __enter__(self):
        """Register the hooks (all removed again if registering fails); returns the hook set."""
        self._thread = threading.get_ident()
        self._undo = Undo(self.remove)
        try:
            self._register()
        except BaseException:
            self._undo()
            raise
        return self

    def __exit__(self, *exc_info) -> None:
        """Remove the hooks; exceptions propagate."""
        if self._undo is not None:
            self._undo()

    def remove(self) -> None:
        """Remove every registered hook (idempotent)."""
        for module, wrapper, dicts in self._hooked:
            _unregister(module, wrapper, dicts)

    def forward_hook(self, module: nn.Module, hook: Callable, **kwargs: Any) -> None:
        """``module.register_forward_hook(hook, **kwargs)``, acting only on this block's thread."""
        wrapper = self._own_thread_only(hook)
        self._hooked.append((module, wrapper, _FORWARD_HOOK_DICTS))  # before: the handle may never come
        module.register_forward_hook(wrapper, **kwargs)

    def forward_pre_hook(self, module: nn.Module, hook: Callable) -> None:
        """``module.register_forward_pre_hook(hook)``, acting only on this block's thread."""
        wrapper = self._own_thread_only(hook)
        self._hooked.append((module, wrapper, _FORWARD_PRE_HOOK_DICTS))
        module.register_forward_pre_hook(wrapper)

    def _own_thread_only(self, hook: Callable) -> Callable:
        owner = self._thread

        def on_owner_thread(*args: Any) -> Any:
            # Returning None leaves a forward on another thread exactly as it would run without the hook.
            return hook(*args) if threading.get_ident() == owner else None

        return on_owner_thread


class LayerCapture(HookSet):
    """Hooks on the target layers for the duration of one ``with`` block.

    Each hooked layer's output is replaced by a copy, and the original is kept: in-place operations
    after the layer (``ReLU(inplace=True)``, ``out += identity``) then modify the copy, never what was
    captured. With ``grad=True`` the first hooked layer switches autograd on: the forward pass before
    it runs under ``no_grad`` (nothing recorded, nothing differentiated), everything after it is
    recorded so the score can be differentiated with respect to the captured activations.

    With ``record_prefix=True`` it also records, for each target layer, the outermost module calls
    that completed before that layer started, with their outputs (see ``AblationCAM``).

    With ``grad=True``, ``cut_off`` lists the target layers after which the model switched autograd off
    again (a reentrant activation checkpoint around the layer, or a ``torch.no_grad()`` block of the
    model): found off at the next target layer, or at :meth:`finish`. Their gradient can only be missing,
    and the error then says why.
    """

    def __init__(
        self,
        model: nn.Module,
        layers: Sequence[nn.Module],
        grad: bool,
        record_prefix: bool = False,
        structured: bool = False,
    ) -> None:
        """Store the model, the layers and the capture options; the hooks are registered on entering."""
        super().__init__()
        self.model = model
        self.layers = list(layers)
        self.grad = grad
        # Whether a layer may return a dict/list/tuple of tensors (an FPN's levels): each tensor in it is
        # captured; a reshape_transform must then turn the structure into one tensor.
        self.structured = structured
        self.record_prefix = record_prefix
        self.activations: dict[int, torch.Tensor] = {}
        # For each target layer: [(module, output), ...] of the outermost calls completed before it.
        self.prefix: dict[int, list[tuple[nn.Module, object]]] = {}
        self._depth = 0
        self._done: list[tuple[int, nn.Module, object]] = []
        self.cut_off: list[nn.Module] = []
        # The target layers captured since autograd was last found on (grad=True).
        self._recorded: list[nn.Module] = []

    def _register(self) -> None:
        if self.record_prefix:
            for module in self.model.modules():
                self.forward_pre_hook(module, self._enter_module)
                self.forward_hook(module, self._leave_module)
        for layer in self.layers:
            if isinstance(layer, LayerInput):
                self.forward_pre_hook(layer.module, partial(self._capture_input, layer))
            else:
                self.forward_hook(layer, self._capture)
            if self.record_prefix:
                self.forward_pre_hook(hooked_module(layer), partial(self._snapshot_prefix, layer))

    def remove(self) -> None:
        """Remove every hook and forget the completed module calls."""
        super().remove()
        self._done.clear()

    # -- hooks -------------------------------------------------------------------------------
    def _capture(self, module: nn.Module, inputs, output):
        key = id(module)
        if key in self.activations:
            raise ValueError(
                f"target layer '{layer_name(self.model, module)}' ran more than once in one forward "
                "pass, so its activation is ambiguous; choose a module that runs once (for a shared "
                "activation such as ResNet's `relu`, pick the block or the layer before it)"
            )
        if not isinstance(output, torch.Tensor) and not (self.structured and tensors_of(output)):
            raise TypeError(
                f"target layer '{layer_name(self.model, module)}' returns {type(output).__name__}, "
                "expected a single tensor; choose a layer whose output is a tensor (for a tuple output, "
                "pick one of its sub-modules), or pass a reshape_transform that turns the output into one "
                "tensor (e.g. fpn_reshape_transform for a feature pyramid's dict of levels)"
            )
        if self.grad:
            self._record_from(module)
        captured = map_tensors(self._leaf, output)
        self.activations[key] = captured
        return map_tensors(torch.Tensor.clone, captured)

    def _record_from(self, module: nn.Module) -> None:
        """Autograd on from target layer ``module``; layers captured before it that lost it are cut off."""
        if not torch.is_grad_enabled():
            # Everything before this point ran without recording a graph (the no_grad prefix, or a part of
            # the model that switched autograd off after an earlier target layer); record from here on.
            self.finish()
            torch.set_grad_enabled(True)
        self._recorded.append(module)

    def finish(self) -> None:
        """At the end of the forward pass (inside its ``no_grad``): the layers autograd was lost after."""
        if self.grad and not torch.is_grad_enabled():
            self.cut_off.extend(self._recorded)
            self._recorded.clear()

    def _capture_input(self, target: LayerInput, module: nn.Module, inputs: tuple) -> tuple:
        if not inputs:
            raise TypeError(
                f"target layer '{layer_name(self.model, target)}': the module was called without "
                "positional arguments, so it has no input to capture"
            )
        return (self._capture(target, inputs, inputs[0]), *inputs[1:])

    def _leaf(self, output: torch.Tensor) -> torch.Tensor:
        if self.grad and output.requires_grad:
            return output
        # A leaf: frozen models, no_grad prefixes, and gradient-free methods all land here.
        return output.detach().requires_grad_(self.grad and output.is_floating_point())

    def _enter_module(self, module: nn.Module, inputs) -> None:
        self._depth += 1

    def _leave_module(self, module: nn.Module, inputs, output) -> None:
        self._depth -= 1
        # Calls nested inside this one are replaced by this one: only outermost calls are kept.
        while self._done and self._done[-1][0] > self._depth:
            self._done.pop()
        self._done.append((self._depth, module, output))

    def _snapshot_prefix(self, layer: nn.Module, module: nn.Module, inputs) -> None:
        self.prefix[id(layer)] = [(m, out) for _, m, out in self._done]


def capture_forward(
    model: nn.Module,
    layers: Sequence[nn.Module],
    run: Callable[[], Any],
    *,
    grad: bool,
    record_prefix: bool = False,
    structured: bool = False,
) -> tuple[LayerCapture, Any]:
    """One forward pass, ``run()``, with ``layers`` captured: returns ``(capture, model output)``.

    The pass runs under ``no_grad`` until the first target layer, whose hook turns autograd on when
    ``grad`` (``capture.cut_off``: the layers after which the model turned it off again); a layer that did
    not run is a ValueError naming it.
    """
    capture = LayerCapture(model, layers, grad=grad, record_prefix=record_prefix, structured=structured)
    with capture, torch.no_grad():
        output = run()
        capture.finish()
    missing = [layer for layer in layers if id(layer) not in capture.activations]
    if missing and isinstance(model, torch.jit.ScriptModule):
        raise ValueError(
            "the model is a TorchScript module (torch.jit.trace or torch.jit.script): its compiled graph "
            "does not call its submodules' forward, so no hook on a target layer ever runs; explain the "
            "original nn.Module (the traced model's weights are the same: model.load_state_dict("
            "traced.state_dict()))"
        )
    if missing:
        names = ", ".join(f"'{layer_name(model, layer)}'" for layer in missing)
        raise ValueError(
            f"target layer(s) {names} did not run in the model's forward pass; choose "
            "layers that the forward pass uses"
        )
    return capture, output
