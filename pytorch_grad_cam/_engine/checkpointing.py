"""Activation checkpointing inside the user's model: reentrant checkpoints run inline during a call.

``torch.utils.checkpoint.checkpoint(fn, *args, use_reentrant=True)`` (also through
``checkpoint_sequential``) is ``CheckpointFunction.apply(fn, preserve_rng_state, *args)``, an autograd
Function that runs ``fn`` under ``no_grad`` and runs it again in its backward. Three things break a CAM
there: a target layer inside ``fn`` has its output cut from the graph (the Function's forward switches
autograd off again after the layer's hook switched it on), the Function's output requires grad only if
one of its inputs does, and its backward refuses ``torch.autograd.grad``. Non-reentrant checkpointing
(``use_reentrant=False``) has none of these problems and is left alone.

During a call (in the calling thread only) :func:`inline_reentrant_checkpoints` makes that ``apply`` plain
``fn(*args)``: the values are the same (the checkpoint only decides what is kept for the backward), and the
graph is the one of the same model without checkpointing. What cannot be inlined (another library's
reentrant checkpoint, or torch's ``CheckpointFunction`` bound before the call) is named in the errors:
:func:`autograd_switched_off` and :func:`reentrant_checkpoint_errors`.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from functools import partial
from typing import Any

import torch.utils.checkpoint as torch_checkpoint

from .undo import Undo, under_lock

#: What to do about a reentrant checkpoint that is not inlined; the end of both errors.
_ADVICE = (
    "use torch.utils.checkpoint.checkpoint(..., use_reentrant=False) (non-reentrant checkpointing works "
    "in every layout), or turn checkpointing off for the call (timm: model.set_grad_checkpointing(False))"
)

# The blocks in progress (a call may run another one: a composite method, a target that runs a CAM): one
# token each, in this thread's set and in the set of all threads. torch's reentrant checkpoints run inline in
# a thread whose set is not empty; the stand-in is installed while any set is not empty. Sets, not counters:
# adding or discarding a token twice (an undo run again after an interrupt) changes nothing.
_THREAD = threading.local()
_ACTIVE: set[object] = set()
# Serialises installing and removing the stand-in.
_INSTALL_LOCK = threading.Lock()


def _thread_tokens() -> set[object]:
    tokens = getattr(_THREAD, "tokens", None)
    if tokens is None:
        tokens = _THREAD.tokens = set()
    return tokens


def _inline_here() -> bool:
    return bool(getattr(_THREAD, "tokens", None))


class _InlineCheckpointFunction:
    """Stands in for ``torch.utils.checkpoint.CheckpointFunction`` while calls are in progress.

    In a thread inside a call, ``apply(fn, preserve_rng_state, *args)`` is ``fn(*args)``; in any other thread
    (a training loop running meanwhile) it is the original's, and so is every other attribute.
    """

    def __init__(self, original: Any) -> None:
        """Keep the original class, which every call outside a CAM call goes to."""
        self.original = original

    def apply(self, function: Any, preserve_rng_state: bool, *args: Any) -> Any:
        """``function(*args)`` inside a call in this thread, else the original checkpoint."""
        if _inline_here():
            return function(*args)
        return self.original.apply(function, preserve_rng_state, *args)

    def __getattr__(self, name: str) -> Any:
        """The original's attribute."""
        return getattr(self.original, name)


def _sync() -> None:
    """Under the lock: the stand-in installed while a block is in progress, else torch's (idempotent)."""
    current = getattr(torch_checkpoint, "CheckpointFunction", None)
    if _ACTIVE and current is not None and not isinstance(current, _InlineCheckpointFunction):
        setattr(torch_checkpoint, "CheckpointFunction", _InlineCheckpointFunction(current))  # noqa: B010
    elif not _ACTIVE and isinstance(current, _InlineCheckpointFunction):
        # Put back only what this module installed (someone may have replaced it meanwhile).
        setattr(torch_checkpoint, "CheckpointFunction", current.original)  # noqa: B010


def _leave(token: object, tokens: set[object]) -> None:
    tokens.discard(token)
    _ACTIVE.discard(token)
    under_lock(_INSTALL_LOCK, _sync)


@contextlib.contextmanager
def inline_reentrant_checkpoints() -> Iterator[None]:
    """For the block, in this thread: ``torch.utils.checkpoint``'s reentrant checkpoints run inline.

    ``checkpoint(fn, *args, use_reentrant=True)`` is then ``fn(*args)``, as if the model did not checkpoint:
    same values, a graph that ``torch.autograd.grad`` can differentiate, the target layers' hooks run once.
    Other threads keep torch's checkpoint; torch's module is restored when the last block in progress ends
    (by an :class:`~.undo.Undo`, registered before anything changes).
    """
    token, tokens = object(), _thread_tokens()
    undo = Undo(partial(_leave, token, tokens))
    try:
        tokens.add(token)
        _ACTIVE.add(token)
        under_lock(_INSTALL_LOCK, _sync)
        yield
    finally:
        undo()


def autograd_switched_off(names: list[str]) -> str:
    """The error for target layers after which the model switched autograd off again (no gradient reaches)."""
    listed = ", ".join(f"'{name}'" for name in names)
    return (
        f"no gradient can reach target layer(s) {listed}: the model's forward pass switched autograd off "
        "again after they ran, so what follows them was not recorded. The layer runs inside a reentrant "
        "activation checkpoint (an autograd Function that runs its segment under no_grad: DeepSpeed's, "
        "fairscale's, or torch's CheckpointFunction called directly; torch.utils.checkpoint(..., "
        "use_reentrant=True) itself runs inline during a call and is supported) or inside a torch.no_grad() "
        f"block of the model. Choose a target layer outside it, or {_ADVICE}"
    )


def is_reentrant_checkpoint_error(error: RuntimeError) -> bool:
    """Whether ``error`` is a reentrant checkpoint's backward refusing ``torch.autograd.grad``.

    torch's message (every version) and DeepSpeed's name checkpointing and ``.grad()``.
    """
    message = str(error)
    return "checkpoint" in message.lower() and ".grad()" in message


@contextlib.contextmanager
def reentrant_checkpoint_errors(where: str) -> Iterator[None]:
    """Run a ``torch.autograd.grad`` in the block; a reentrant checkpoint refusing it becomes a ValueError.

    ``where``: where the checkpoint is, for the message (e.g. "between the target layers and the score").
    ``torch.autograd.grad`` writes no ``.grad``: nothing of the model has changed when the refusal comes.
    """
    try:
        yield
    except RuntimeError as error:
        if not is_reentrant_checkpoint_error(error):
            raise
        raise ValueError(
            f"the model runs a reentrant activation checkpoint {where} (an autograd Function that "
            "recomputes its segment in the backward pass: DeepSpeed's, fairscale's, or torch's "
            "CheckpointFunction called directly; torch.utils.checkpoint(..., use_reentrant=True) itself "
            "runs inline during a call and is supported). Its backward refuses torch.autograd.grad, which "
            f"the CAM uses so that the model's .grad are never written: {_ADVICE}"
        ) from error
