"""Eight threads, each with its own CAM object, on one shared model in train mode (a web service does this).

Calls on one model take turns (``_engine.session.model_lock``): each call's hooks, eval mode and swapped
``forward``s exist only while it holds the model, and every call restores what it found. So the maps
equal the single-threaded ones, and the model's flags, buffers, forwards and hooks end exactly as before.
"""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch
from torch import nn

import pytorch_grad_cam
from pytorch_grad_cam import PIXEL_METHODS, DeepFeatureFactorization
from tests.cam_factory import make_cam
from tests.models import make_tiny, seeded_input

#: Every registered map method (gradients, perturbed inputs, AblationCAM's swapped forwards and replay,
#: projections, FullGrad's bias hooks, the composites), then guided backpropagation and Guided Grad-CAM
#: (ReLU hooks and TorchFunctionMode) and Deep Feature Factorization.
METHODS = [*pytorch_grad_cam.METHODS, "guidedbackprop", "guidedgradcam", "dff"]
THREADS = 8
CALLS = 3


def _state(model: torch.nn.Module) -> dict:
    return {
        "training": [m.training for m in model.modules()],
        "tensors": {k: v.clone() for k, v in model.state_dict().items()},
        "requires_grad": [p.requires_grad for p in model.parameters()],
        "own_forwards": [m for m in model.modules() if "forward" in vars(m)],
        "hooks": sum(
            len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._backward_hooks)
            for m in model.modules()
        ),
    }


def _run(work, n):
    errors, done = [], []

    def target(i):
        try:
            work(i)
            done.append(i)
        except BaseException as error:  # reported in the main thread
            errors.append(error)

    threads = [threading.Thread(target=target, args=(i,)) for i in range(n)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=240)
    assert not any(thread.is_alive() for thread in threads), "a thread did not finish in time"
    assert not errors, repr(errors[0])
    assert sorted(done) == list(range(n))


def test_eight_threads_share_one_model_in_train_mode():
    model = make_tiny(seed=3).train()
    model.stem[0].weight.requires_grad_(False)  # a frozen layer: its flag must survive too
    inputs = [seeded_input(2, 3, 12, 12, seed=10 + i) for i in range(THREADS)]
    layers = [model.block]  # average-pooled into the head, as CAM needs

    def one(method, x):
        if method == "guidedbackprop":
            return PIXEL_METHODS[method](model)(x, targets=[1, 2])
        if method == "guidedgradcam":
            return PIXEL_METHODS[method](model, layers)(x, targets=[1, 2])
        if method == "dff":
            concepts, explanations, scores = DeepFeatureFactorization(model, model.block, None, model.head)(
                x, 2
            )
            return np.concatenate([concepts.ravel(), explanations.ravel(), scores.ravel()])
        return make_cam(method, model, layers)(x, targets=[1, 2])

    want = {(i, m): one(m, inputs[i]) for i in range(THREADS) for m in METHODS}
    before = _state(model)
    assert all(before["training"])
    assert before["hooks"] == 0
    assert not before["own_forwards"]

    got: dict = {}

    def work(i):
        # Each thread runs every method in its own order, so different machineries overlap in time.
        order = METHODS[i % len(METHODS) :] + METHODS[: i % len(METHODS)]
        for _ in range(CALLS):
            for method in order:
                got[(i, method)] = one(method, inputs[i])
                np.testing.assert_array_equal(got[(i, method)], want[(i, method)], err_msg=method)

    _run(work, THREADS)
    after = _state(model)
    assert after["training"] == before["training"]
    assert after["requires_grad"] == before["requires_grad"]
    assert after["own_forwards"] == []
    assert after["hooks"] == 0
    for key, value in before["tensors"].items():  # BatchNorm statistics untouched: no train-mode forward
        assert torch.equal(after["tensors"][key], value), key
    assert len(got) == THREADS * len(METHODS)


@pytest.mark.parametrize("method", ["gradcam", "ablationcam"])
def test_a_thread_in_a_call_does_not_see_another_threads_hooks(method):
    """Two threads on one model: while one is inside a call (its hooks registered, AblationCAM's forwards
    swapped), the other's call still gets exactly its single-threaded maps (it waits for the model)."""
    model = make_tiny(seed=4).eval()
    x1, x2 = seeded_input(1, 3, 12, 12, seed=1), seeded_input(1, 3, 12, 12, seed=2)
    layers = [model.block[0]]
    want2 = make_cam(method, model, layers)(x2, targets=[3])
    inside, release = threading.Event(), threading.Event()

    class Pausing:
        """Class 0's logit; the first time it is scored (inside the call) it waits for the main thread."""

        def __init__(self):
            self.paused = False

        def __call__(self, output):
            if not self.paused:
                self.paused = True
                inside.set()
                release.wait(timeout=60)
            return output[0]

    results = {}

    def first(_):
        results[1] = make_cam(method, model, layers)(x1, targets=[Pausing()])

    def second(_):
        assert inside.wait(timeout=60)
        results[2] = make_cam(method, model, layers)(x2, targets=[3])

    starter = threading.Thread(target=first, args=(0,))
    starter.start()
    assert inside.wait(timeout=60)
    waiter = threading.Thread(target=second, args=(0,))
    waiter.start()
    waiter.join(timeout=2)
    assert waiter.is_alive()  # it waits: the model is in the first call
    release.set()
    starter.join(timeout=120)
    waiter.join(timeout=120)
    np.testing.assert_array_equal(results[2], want2)
    assert results[1].shape == (1, 12, 12)


class _Gate(nn.Module):
    """Identity; on thread ``thread``, its ``pause_at``-th call waits for ``release`` (after ``inside``)."""

    def __init__(self, pause_at):
        super().__init__()
        self.thread, self.calls, self.pause_at = None, 0, pause_at
        self.inside, self.release = threading.Event(), threading.Event()

    def forward(self, x):
        if threading.get_ident() == self.thread:
            self.calls += 1
            if self.calls == self.pause_at:
                self.inside.set()
                self.release.wait(timeout=60)
        return x


class _GatedTiny(nn.Module):
    """TinyBNNet with a :class:`_Gate` after its block: a call can be held in the middle of a forward pass."""

    def __init__(self, pause_at):
        super().__init__()
        tiny = make_tiny(seed=5)
        self.stem, self.block, self.head = tiny.stem, tiny.block, tiny.head
        self.gate = _Gate(pause_at)

    def forward(self, x):
        return self.head(self.gate(self.block(self.stem(x))).mean((2, 3)))


@pytest.mark.parametrize(
    ("method", "pause_at"),
    [("gradcam", 1), ("ablationcam", 2), ("fullgrad", 1), ("scorecam", 2), ("guidedbackprop", 1)],
)
def test_a_plain_forward_in_another_thread_never_sees_a_calls_hooks(method, pause_at):
    """While a call is held in the middle of a forward pass (its capture hooks registered, AblationCAM's
    forwards swapped, FullGrad's bias hooks, guided backpropagation's ReLU hooks), a plain ``model(x)`` on
    another thread runs as if no call were there, and the held call's maps are its single-threaded ones."""
    model = _GatedTiny(pause_at).eval()
    x, y = seeded_input(2, 3, 12, 12, seed=20), seeded_input(3, 3, 12, 12, seed=21)

    def explain():
        if method in PIXEL_METHODS:
            return PIXEL_METHODS[method](model)(x, targets=[1, 2])
        return make_cam(method, model, [model.block[0]])(x, targets=[1, 2])

    want_maps = explain()
    with torch.no_grad():
        want_plain = model(y)
    y_in = y.clone().requires_grad_()
    want_grad = torch.autograd.grad(model(y_in).sum(), y_in)[0]
    got = {}

    def held():
        model.gate.thread = threading.get_ident()
        got["maps"] = explain()

    thread = threading.Thread(target=held)
    thread.start()
    try:
        assert model.gate.inside.wait(timeout=60)
        with torch.no_grad():
            plain = model(y)  # (3, 10), while the call's hooks are on the model
        y_in = y.clone().requires_grad_()
        grad = torch.autograd.grad(model(y_in).sum(), y_in)[0]
    finally:
        model.gate.release.set()
        thread.join(timeout=120)
    assert not thread.is_alive()
    torch.testing.assert_close(plain, want_plain, rtol=0, atol=1e-6)
    torch.testing.assert_close(grad, want_grad, rtol=0, atol=1e-6)
    np.testing.assert_allclose(got["maps"], want_maps, rtol=0, atol=1e-6)


def test_model_lock_makes_a_plain_forward_wait_for_a_call():
    """``pytorch_grad_cam.model_lock(model)`` is the lock calls hold: taken around a plain forward, it waits
    until a held call has left (so that forward sees the model's own mode, never the call's eval mode)."""
    model = _GatedTiny(pause_at=1).train()
    x = seeded_input(2, 3, 12, 12, seed=22)
    seen = {}

    def held():
        model.gate.thread = threading.get_ident()
        make_cam("gradcam", model, [model.block[0]])(x, targets=[1, 2])

    def plain():
        with pytorch_grad_cam.model_lock(model):
            seen["training"] = model.training

    thread = threading.Thread(target=held)
    thread.start()
    assert model.gate.inside.wait(timeout=60)
    assert not model.training  # the call's eval mode
    waiter = threading.Thread(target=plain)
    waiter.start()
    waiter.join(timeout=1)
    assert waiter.is_alive()  # waits for the call
    model.gate.release.set()
    thread.join(timeout=60)
    waiter.join(timeout=60)
    assert seen == {"training": True}
