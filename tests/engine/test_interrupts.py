"""A KeyboardInterrupt (Ctrl-C in a notebook) at any moment of a call leaves nothing behind.

A tracer (``sys.settrace``) counts the 'line' events of a whole call in every frame, torch's and the
standard library's included (inside ``Module.register_forward_hook``, ``TorchFunctionMode.__enter__``,
``contextlib``'s ``__exit__``...), then raises ``KeyboardInterrupt`` at the ``k``-th event of a new call,
for many ``k``. The exception is held while the state is checked, as a notebook holds the last traceback
(``sys.last_traceback``): a generator suspended in that traceback must not be what restores the model.
Afterwards: every module's hook dicts and instance-level ``forward``, the training flags,
``requires_grad``, the parameters' and buffers' values and devices, torch's global hook dicts, the
torch-function mode stack, ``torch.utils.checkpoint.CheckpointFunction``, the attention kernels, grad mode,
the model's lock (free for another thread) are as before, and the next call gives the maps of a fresh one.
"""

from __future__ import annotations

import sys
import threading
from typing import Any, Callable

import numpy as np
import pytest
import torch
import torch.utils.checkpoint
from torch.nn.modules import module as module_globals

import pytorch_grad_cam
from pytorch_grad_cam import DeepFeatureFactorization, GuidedBackpropReLUModel, GuidedGradCAM, model_lock
from pytorch_grad_cam._engine import checkpointing
from pytorch_grad_cam.utils.find_layers import find_target_layer
from tests.cam_factory import make_cam
from tests.engine.test_invariants import _HOOK_DICTS  # one list of the modules' hook dicts
from tests.models import checkpointed_net, make_tiny, seeded_input

CALLS = [*sorted(pytorch_grad_cam.METHODS), "guidedbackprop", "guidedgradcam", "dff", "find_target_layer"]
#: The calls run on the checkpointed model in the quick suite (each engine path once); ``slow``: all.
CHECKPOINTED_QUICK = ["gradcam", "scorecam", "ablationcam", "fullgrad", "shapleycam", "guidedbackprop"]
#: All of the first events (the call's setup), then this many more, evenly spaced, in the quick suite.
HEAD, SPREAD = 200, 12

_GLOBAL_HOOK_DICTS = [name for name in dir(module_globals) if name.startswith("_global_") and "hook" in name]
_CHECKPOINT_FUNCTION = torch.utils.checkpoint.CheckpointFunction
_SDP = ("flash", "mem_efficient", "math", "cudnn")


def _model_state(model: torch.nn.Module) -> list:
    modules = [
        (
            name,
            module.training,
            vars(module).get("forward"),
            [(attr, list(getattr(module, attr, {}).items())) for attr in _HOOK_DICTS],
        )
        for name, module in model.named_modules()
    ]
    tensors = [
        (name, t.requires_grad, t.device, t.detach().clone(), t.grad is None)
        for name, t in [*model.named_parameters(), *model.named_buffers()]
    ]
    return [modules, tensors]


def _global_state() -> list:
    return [
        [(name, list((getattr(module_globals, name) or {}).items())) for name in _GLOBAL_HOOK_DICTS],
        torch._C._len_torch_function_stack(),  # the depth of the mode stack (no public name)
        torch.utils.checkpoint.CheckpointFunction is _CHECKPOINT_FUNCTION,
        checkpointing._inline_here(),
        [getattr(torch.backends.cuda, f"{kind}_sdp_enabled")() for kind in _SDP],
        torch.is_grad_enabled(),
        torch.is_inference_mode_enabled(),
    ]


def _assert_same(before: list, after: list, what: str) -> None:
    # tensors compare with torch.equal; everything else with ==
    assert len(before) == len(after), what
    for a, b in zip(before, after):
        if isinstance(a, torch.Tensor):
            assert torch.equal(a, b), what
        elif isinstance(a, (list, tuple)):
            _assert_same(list(a), list(b), what)
        else:
            assert a == b, f"{what}: {a!r} became {b!r}"


def _lock_is_free(model: torch.nn.Module) -> bool:
    got: list[bool] = []

    def take() -> None:
        lock = model_lock(model)
        got.append(lock.acquire(timeout=5))
        if got[0]:
            lock.release()

    thread = threading.Thread(target=take, daemon=True)
    thread.start()
    thread.join(timeout=10)  # alive: blocked for good (a lock guarding the model's lock left held)
    return got == [True]


class _Tracer:
    """Counts 'line' events in every frame; raises KeyboardInterrupt at event ``at`` (never if None)."""

    def __init__(self, at: int | None = None) -> None:
        self.at = at
        self.count = 0

    def __call__(self, frame: Any, event: str, arg: Any) -> Callable:
        return self._local

    def _local(self, frame: Any, event: str, arg: Any) -> Callable:
        if event == "line":
            self.count += 1
            if self.count == self.at:
                raise KeyboardInterrupt(f"injected at line event {self.at}")
        return self._local


def _traced(call: Callable[[], Any], tracer: _Tracer) -> BaseException | None:
    """Run ``call`` under ``tracer``: the KeyboardInterrupt it raised (held by the caller), or None."""
    previous = sys.gettrace()
    unraisable = sys.unraisablehook
    # An interrupt raised inside a finaliser is printed and dropped by Python: not the call's business.
    sys.unraisablehook = lambda info: None
    sys.settrace(tracer)
    try:
        call()
    except KeyboardInterrupt as error:
        return error
    finally:
        sys.settrace(previous)
        sys.unraisablehook = unraisable
    return None


def _setup(name: str, checkpointed: bool) -> tuple[torch.nn.Module, Callable[[], Any]]:
    """The model and a call of ``name`` on it (a fixed input and targets)."""
    if checkpointed:
        model = checkpointed_net((1, 4), "reentrant")
        layer = model.blocks[3]
    else:
        model = make_tiny()
        layer = model.block
    x = seeded_input(1, 3, 16, 16, seed=1)
    if name == "guidedbackprop":
        gb = GuidedBackpropReLUModel(model, device="cpu")
        return model, lambda: gb(x, target_category=1)
    if name == "guidedgradcam":
        ggc = GuidedGradCAM(model, [layer], device="cpu")
        return model, lambda: ggc(x, targets=[1])
    if name == "dff":
        dff = DeepFeatureFactorization(
            model, layer, computation_on_concepts=model.fc if checkpointed else model.head
        )
        return model, lambda: dff(x, n_components=2)
    if name == "find_target_layer":
        return model, lambda: find_target_layer(model, x)
    cam = make_cam(name, model, [layer], perturbation_batch=4)
    return model, lambda: cam(x, targets=[1])


def _same_result(a: Any, b: Any) -> bool:
    if isinstance(a, tuple):
        return len(a) == len(b) and all(_same_result(u, v) for u, v in zip(a, b))
    if isinstance(a, np.ndarray):
        return bool(np.array_equal(a, b))
    return a is b or a == b


def _reset_globals(before: list) -> None:
    """After a leftover: torch's global state as before, for the other trials and tests."""
    while torch._C._len_torch_function_stack() > before[1]:
        torch._C._pop_torch_function_stack()
    torch.utils.checkpoint.CheckpointFunction = _CHECKPOINT_FUNCTION
    torch.set_grad_enabled(True)


def injection_points(total: int, head: int, spread: int) -> list[int]:
    """Every event of the first ``head``, then ``spread`` more evenly spaced up to ``total``."""
    first = list(range(1, min(head, total) + 1))
    rest = np.linspace(head + 1, total, spread).round().astype(int).tolist() if total > head else []
    return sorted(set(first + rest))


def leftovers(name: str, checkpointed: bool, head: int, spread: int, every_call: bool = False) -> list[str]:
    """Interrupt a call of ``name`` at each injection point; one line per trial that left something.

    The next call's result is compared with a fresh one after every trial (``every_call``), else once, after
    the last (a leftover that changes the result persists until then).
    """
    model, call = _setup(name, checkpointed)
    fresh = call()
    model_before, global_before = _model_state(model), _global_state()
    counter = _Tracer()
    assert _traced(call, counter) is None
    found = []
    for k in injection_points(counter.count, head, spread):
        error = _traced(call, _Tracer(k))  # held until the checks are done, like a notebook's traceback
        try:
            _assert_same(model_before, _model_state(model), "model")
            _assert_same(global_before, _global_state(), "torch's global state")
            assert _lock_is_free(model), "the model's lock is held"
            assert not every_call or _same_result(fresh, call()), "the next call's result differs"
        except AssertionError as failure:
            found.append(f"{name} k={k}/{counter.count} ({error!r}): {str(failure).splitlines()[0]}")
            if "lock" in str(failure):
                return found  # every further call would wait for it
            _reset_globals(global_before)
            model, call = _setup(name, checkpointed)  # a fresh model: one leftover per trial
            model_before = _model_state(model)
        del error
    if not _same_result(fresh, call()):
        found.append(f"{name}: the result of a call after the trials differs")
    return found


@pytest.mark.parametrize("name", CALLS)
def test_an_interrupt_leaves_nothing_behind(name):
    assert leftovers(name, False, HEAD, SPREAD) == []


@pytest.mark.parametrize("name", CHECKPOINTED_QUICK)
def test_an_interrupt_leaves_nothing_behind_with_reentrant_checkpoints(name):
    assert leftovers(name, True, HEAD, SPREAD) == []


@pytest.mark.slow
@pytest.mark.parametrize("name", [name for name in CALLS if name not in CHECKPOINTED_QUICK])
def test_an_interrupt_leaves_nothing_behind_with_reentrant_checkpoints_every_call(name):
    """The other calls on the checkpointed model (the quick test runs six). Bounded like the quick tests:
    every interruption point of a whole call, with the result compared after each, takes minutes per method
    (about 2,100 points for Grad-CAM), too long for CI."""
    assert leftovers(name, True, HEAD, SPREAD) == []
