"""Leave the user's model exactly as it was found, whatever a CAM call does to it."""

from __future__ import annotations

import contextlib
import itertools
import threading
import weakref
from collections.abc import Iterator
from functools import partial

import torch
from torch import nn

from .checkpointing import inline_reentrant_checkpoints
from .undo import HeldLock, Undo


def model_device(model: nn.Module) -> torch.device | None:
    """The device of the model's first parameter or buffer; ``None`` for a model with neither."""
    for tensor in itertools.chain(model.parameters(), model.buffers()):
        return tensor.device
    return None


def model_float_dtype(model: nn.Module) -> torch.dtype | None:
    """The dtype of the model's first floating-point parameter or buffer, if any."""
    for tensor in itertools.chain(model.parameters(), model.buffers()):
        if tensor.is_floating_point():
            return tensor.dtype
    return None


def _move(tensor: torch.Tensor, device: torch.device) -> None:
    # ``.data`` assignment keeps the user's Parameter objects (optimisers hold them) intact.
    if tensor.device != device:
        tensor.data = tensor.data.to(device)
        if tensor.grad is not None:
            tensor.grad.data = tensor.grad.data.to(device)


@contextlib.contextmanager
def evaluation_state(model: nn.Module, device: torch.device | None = None) -> Iterator[None]:
    """Run the block with ``model`` in eval mode (and on ``device`` if given), then restore it.

    Restored in ``finally``, also when the block raises: every module's ``training`` flag, every
    parameter's ``requires_grad``, and the device of every parameter and buffer. The state is read before
    anything changes, and restored by an :class:`~.undo.Undo` (an exception at any line, also one that
    keeps this generator suspended, leaves nothing changed once the call's guard has run).
    """
    training = [(module, module.training) for module in model.modules()]
    requires_grad = [(param, param.requires_grad) for param in model.parameters()]
    devices = {tensor: tensor.device for tensor in itertools.chain(model.parameters(), model.buffers())}
    undo = Undo(partial(_restore_state, training, requires_grad, devices))
    try:
        model.eval()
        if device is not None:
            for tensor in devices:
                _move(tensor, device)
        yield
    finally:
        undo()


def _restore_state(
    training: list[tuple[nn.Module, bool]],
    requires_grad: list[tuple[nn.Parameter, bool]],
    devices: dict[torch.Tensor, torch.device],
) -> None:
    for module, flag in training:
        module.training = flag
    for param, flag in requires_grad:
        param.requires_grad_(flag)
    for tensor, original in devices.items():
        _move(tensor, original)


# weakref.ref(model) -> the model's lock. A plain dict: ``setdefault`` is one step (no lock needed around
# it, so none can be left held); a ref hashes and compares as its model, and its callback drops the entry.
_LOCKS: dict[weakref.ref, threading.RLock] = {}


def _forget(ref: weakref.ref) -> None:
    _LOCKS.pop(ref, None)


def model_lock(model: nn.Module) -> threading.RLock:
    """The lock that serialises the calls on ``model``.

    A call's hooks, mode and device changes are the model's, so two threads explaining one model take turns.
    Re-entrant: a call made inside a call (a target that runs a CAM itself) on the same thread goes through.
    """
    return _LOCKS.setdefault(weakref.ref(model, _forget), threading.RLock())


@contextlib.contextmanager
def compute_session(
    model: nn.Module, device: torch.device | None, input_tensor: torch.Tensor
) -> Iterator[torch.Tensor]:
    """The model in eval mode on the compute device, and a detached copy of the input there.

    The device is ``device`` if given, else the model's, else the input's; the dtype is the model's
    floating dtype. A model elsewhere than ``device`` is moved for the block and moved back, and its
    state is restored in ``finally`` (:func:`evaluation_state`). ``inference_mode(False)``: the block
    must also work inside the user's ``torch.inference_mode()``. Calls on one model from several threads
    take turns (:func:`model_lock`). The model's reentrant activation checkpoints run inline
    (:func:`~.checkpointing.inline_reentrant_checkpoints`).
    """
    # Not ``with lock:`` (see HeldLock). The device is read under the lock: another call may be moving it.
    release = HeldLock(model_lock(model)).acquire()
    try:
        model_dev = model_device(model)
        target = device or model_dev or input_tensor.device
        dtype = model_float_dtype(model) or input_tensor.dtype
        move_to = device if device is not None and device != model_dev else None
        with torch.inference_mode(False), evaluation_state(model, move_to), inline_reentrant_checkpoints():
            yield input_tensor.detach().to(device=target, dtype=dtype)
    finally:
        release()
