"""Temporary changes that an exception at any moment of a call (Ctrl-C included) cannot leave behind.

A ``with`` block restores its changes in ``__exit__``, but an exception can strike ``__exit__`` itself
before it restores anything (a KeyboardInterrupt on its first line, or on a line of ``contextlib``'s
``__exit__`` before it resumes the generator). A generator left suspended that way restores only when it
is garbage-collected, and a notebook keeps the traceback that holds it (``sys.last_traceback``).

So each temporary change is made in three steps: its :class:`Undo` is registered in this thread's pending
list *before* the change is made (an undo must then tolerate a change that was never made, or made half),
the change is made, and the undo runs when the block ends. An undo runs once: later calls (a generator's
``finally`` when it is collected, long after) do nothing. Every public entry point is decorated with
:func:`guarded`: when the call ends by an exception, it runs, newest first, the undos its blocks left
pending, and restores grad mode. A change that cannot be recorded first (torch's ``no_grad`` blocks) is
covered by what the guard restores.
"""

from __future__ import annotations

import contextlib
import functools
import threading
import types
import weakref
from typing import Any, Callable, TypeVar

import torch

_F = TypeVar("_F", bound=Callable[..., Any])
_THREAD = threading.local()


def _pending() -> list[Undo]:
    pending = getattr(_THREAD, "pending", None)
    if pending is None:
        pending = _THREAD.pending = []
    return pending


class Undo:
    """Undoes one temporary change, once; registered in this thread's pending list on creation.

    ``restore`` must be idempotent and must work whether the change was made, made half, or not made: it
    may be interrupted and run again by the guard.
    """

    def __init__(self, restore: Callable[[], None]) -> None:
        """Register ``restore`` (before the change is made)."""
        self._restore: Callable[[], None] | None = restore
        _pending().append(self)

    def __call__(self) -> None:
        """Undo the change, the first time only; then it is no longer pending."""
        restore = self._restore
        if restore is not None:
            restore()
            self._restore = None
        pending = getattr(_THREAD, "pending", [])
        if self in pending:  # not there when run by another thread (a generator collected there)
            pending.remove(self)


def unwind(mark: int) -> None:
    """Run the undos this thread registered since the pending list had ``mark`` entries, newest first."""
    pending = _pending()
    while len(pending) > mark:
        pending[-1]()


#: The code of ``contextlib.contextmanager``'s ``__exit__``: an exception on one of its lines before it
#: resumes the generator leaves the generator suspended (torch's own, e.g. ``_pop_mode_temporarily``).
_CONTEXTMANAGER_EXIT = contextlib._GeneratorContextManager.__exit__.__code__  # noqa: SLF001  (no public name)


def close_suspended_generators(traceback: types.TracebackType | None) -> None:
    """Close, innermost first, the context-manager generators whose ``__exit__`` the exception interrupted.

    Each would otherwise finish only when the traceback is collected, much later (a notebook keeps it), and
    then do its ``finally`` at a random moment: torch's ``_pop_mode_temporarily`` pushing a mode back onto
    the stack long after the call popped it. Closed now, its ``finally`` runs before the undos.
    """
    frames = []
    while traceback is not None:
        frames.append(traceback.tb_frame)
        traceback = traceback.tb_next
    for frame in reversed(frames):
        manager = frame.f_locals.get("self") if frame.f_code is _CONTEXTMANAGER_EXIT else None
        generator = getattr(manager, "gen", None)
        if isinstance(generator, types.GeneratorType) and generator.gi_frame is not None:
            with contextlib.suppress(Exception):  # what its own __exit__ would have raised: the call's
                generator.close()  # exception is the one reported


def guarded(function: _F) -> _F:
    """Decorate a public entry point: an exception leaves none of its temporary changes behind.

    When the call raises (a KeyboardInterrupt included, wherever it strikes), the context-manager
    generators it left suspended are closed (:func:`close_suspended_generators`), the undos its blocks left
    pending run, newest first, and grad mode is restored to the caller's.
    """

    @functools.wraps(function)
    def call(*args: Any, **kwargs: Any) -> Any:
        mark, grad, depth = len(_pending()), torch.is_grad_enabled(), function_mode_depth()
        try:
            return function(*args, **kwargs)
        except BaseException as error:
            try:
                close_suspended_generators(error.__traceback__)
                unwind(mark)
                _pop_own_modes(depth)
            finally:
                torch.set_grad_enabled(grad)
            raise

    return call  # type: ignore[return-value]


def function_mode_depth() -> int:
    """The depth of torch's function-mode stack (``TorchFunctionMode``)."""
    return torch._C._len_torch_function_stack()  # noqa: SLF001  (torch has no public name for it)


def _pop_own_modes(depth: int) -> None:
    """Pop the modes :class:`FunctionMode` entered that are still on the stack above ``depth``.

    A mode pushed back after its block ended: by torch's ``_pop_mode_temporarily`` generator, closed late.
    """
    while function_mode_depth() > depth:
        top = torch._C._get_function_stack_at(function_mode_depth() - 1)  # noqa: SLF001  (no public name)
        if top not in _OWN_MODES:
            return
        torch._C._pop_torch_function_stack()  # noqa: SLF001  (TorchFunctionMode.__exit__ does the same)


def pop_function_mode(mode: Any, depth: int) -> None:
    """Pop ``mode`` if it is on top of the mode stack at position ``depth`` (its ``__enter__`` pushed it)."""
    if function_mode_depth() == depth + 1 and torch._C._get_function_stack_at(depth) is mode:  # noqa: SLF001
        torch._C._pop_torch_function_stack()  # noqa: SLF001  (TorchFunctionMode.__exit__ does the same)


#: The modes :class:`FunctionMode` entered (for :func:`_pop_own_modes`).
_OWN_MODES: weakref.WeakSet = weakref.WeakSet()


class FunctionMode:
    """``with FunctionMode(mode):`` enters a ``TorchFunctionMode`` for the block, without a leftover.

    ``mode.__enter__`` pushes the mode (an exception inside it, after the push, used to leave it on the
    stack, where it changes every later computation); the block's end pops it if it is still there.
    """

    def __init__(self, mode: Any) -> None:
        """Enter ``mode`` (a ``TorchFunctionMode``) on ``__enter__``."""
        self.mode = mode
        self._undo: Undo | None = None

    def __enter__(self) -> Any:
        """Push the mode; returns it."""
        _OWN_MODES.add(self.mode)
        self._undo = Undo(functools.partial(pop_function_mode, self.mode, function_mode_depth()))
        try:
            self.mode.__enter__()
        except BaseException:
            self._undo()
            raise
        return self.mode

    def __exit__(self, *exc_info: object) -> None:
        """Pop the mode; exceptions propagate."""
        if self._undo is not None:
            self._undo()


_T = TypeVar("_T")


def under_lock(lock: Any, function: Callable[[], _T]) -> _T:
    """``function()`` holding ``lock`` (a ``threading.Lock``), released whatever line an exception strikes.

    Not ``with lock:``: the call of ``__exit__`` at the end of a ``with`` block is outside the block, and
    an exception there (a KeyboardInterrupt at its line) would leave the lock held.
    """
    held = False
    try:
        held = lock.acquire()
        result = function()
        held = lock.release()  # None: the release and its record in one line, nothing between them
    finally:
        if held:
            lock.release()
    return result


class HeldLock:
    """A lock taken for a block and released by an :class:`Undo`, once, whatever line an exception strikes."""

    def __init__(self, lock: Any) -> None:
        """Hold ``lock`` (a ``threading.RLock``): :meth:`acquire` takes it, the returned undo releases it."""
        self.lock = lock
        self.held = False

    def acquire(self) -> Undo:
        """Take the lock (blocking); the undo that gives it back."""
        undo = Undo(self._release)
        self.held = self.lock.acquire()  # taken and recorded in one line
        return undo

    def _release(self) -> None:
        if self.held:
            self.held = self.lock.release()  # None: released and recorded in one line
