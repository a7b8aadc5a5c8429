"""Invariants of every CAM method: the model, its parameters and the input are left exactly as found.

After a normal call and after a call that raises: no hooks left, training flags restored, ``.grad`` and
``requires_grad`` untouched, the module tree (and every ``forward`` attribute) unchanged, the input
unchanged. The backward pass never runs through the layers before the target layer, and a call keeps no
state: the user's own forward passes are not captured, several CAM objects and several threads do not
interfere.
"""

import copy
import threading

import numpy as np
import pytest
import torch
from torch.nn.modules import module as module_globals

from tests import cam_factory
from tests.models import (
    CountingIdentity,
    InPlaceInput,
    WithCounter,
    make_model,
)

ALL = cam_factory.ALL
GRADIENT = cam_factory.GRADIENT
LAYERED = cam_factory.LAYERED  # the methods whose map comes from target_layers
PERTURBATION = cam_factory.PERTURBATION
NUM_CLASSES = 5
#: HiResCAM with eigen_smooth=True warns (on purpose) that it gives up its faithfulness.
HIRESCAM_EIGEN_WARNING = "HiResCAM with eigen_smooth=True is no longer guaranteed to be faithful"


def make_input(batch=2, size=16, seed=1):
    return torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(seed))


def make_cam(name, model, layers=None, **kwargs):
    return cam_factory.make_cam(
        name, model, [model.block] if layers is None else layers, perturbation_batch=4, **kwargs
    )


# -- snapshots ---------------------------------------------------------------------------------------
_HOOK_DICTS = (
    "_forward_hooks",
    "_forward_pre_hooks",
    "_backward_hooks",
    "_backward_pre_hooks",
    "_forward_hooks_with_kwargs",
    "_forward_hooks_always_called",
    "_forward_pre_hooks_with_kwargs",
    "_state_dict_hooks",
    "_load_state_dict_pre_hooks",
)
_GLOBAL_HOOK_DICTS = (
    "_global_forward_hooks",
    "_global_forward_pre_hooks",
    "_global_backward_hooks",
    "_global_backward_pre_hooks",
    "_global_forward_hooks_always_called",
    "_global_module_registration_hooks",
    "_global_parameter_registration_hooks",
    "_global_buffer_registration_hooks",
)


def hooks_snapshot(model):
    per_module = {
        name: {attr: list(getattr(module, attr, {}).items()) for attr in _HOOK_DICTS}
        for name, module in model.named_modules()
    }
    global_hooks = {attr: list(getattr(module_globals, attr, {}).items()) for attr in _GLOBAL_HOOK_DICTS}
    tensor_hooks = {name: list((p._backward_hooks or {}).items()) for name, p in model.named_parameters()}
    return per_module, global_hooks, tensor_hooks


def tree_snapshot(model):
    return [
        (
            name,
            id(module),
            type(module),
            module.__dict__.get("forward"),
            sorted(module.__dict__),
            sorted((k, id(v)) for k, v in module._modules.items()),
            sorted((k, id(v)) for k, v in module._parameters.items()),
            sorted((k, id(v)) for k, v in module._buffers.items()),
        )
        for name, module in model.named_modules()
    ]


def state_snapshot(model):
    return {
        "training": [(name, m.training) for name, m in model.named_modules()],
        "requires_grad": [(name, p.requires_grad) for name, p in model.named_parameters()],
        "grad": [(name, None if p.grad is None else p.grad.clone()) for name, p in model.named_parameters()],
        "values": {k: v.clone() for k, v in model.state_dict().items()},
    }


def assert_state_equal(before, after):
    assert before["training"] == after["training"]
    assert before["requires_grad"] == after["requires_grad"]
    for (name, g0), (_, g1) in zip(before["grad"], after["grad"]):
        if g0 is None:
            assert g1 is None, f"{name}.grad was None and is now set"
        else:
            assert g1 is not None, f"{name}.grad changed"
            assert torch.equal(g0, g1), f"{name}.grad changed"
    assert before["values"].keys() == after["values"].keys()
    for key, value in before["values"].items():
        assert torch.equal(value, after["values"][key]), f"{key} changed"


class Boom(Exception):
    pass


def raising_target(output):
    raise Boom("target failed")


class RaiseOnCall:
    """A target that works for its first ``n`` calls and raises afterwards (mid-perturbation)."""

    def __init__(self, n, category=1):
        self.n, self.calls, self.category = n, 0, category

    def __call__(self, output):
        self.calls += 1
        if self.calls > self.n:
            raise Boom("target failed in the middle of the call")
        return output[self.category]


def failing_calls(name, model):
    """(description, callable that raises, exception type) for a variety of failures inside a call."""
    x = make_input()
    calls = [
        ("target raises", lambda: make_cam(name, model)(x, targets=[raising_target] * 2), Boom),
        ("class out of range", lambda: make_cam(name, model)(x, targets=[1, NUM_CLASSES]), ValueError),
    ]
    if name in LAYERED:
        calls += [
            ("layer never runs", lambda: make_cam(name, model, [model.unused])(x), ValueError),
            (
                "layer runs, one never",
                lambda: make_cam(name, model, [model.block, model.unused])(x),
                ValueError,
            ),
        ]
    if name in PERTURBATION:
        # Raises after the first forward pass, while perturbed inputs/activations are being scored
        # (AblationCAM has swapped the prefix modules' forward at that point).
        calls.append(
            (
                "target raises mid-perturbation",
                lambda: make_cam(name, model)(x[:1], targets=[RaiseOnCall(3)]),
                Boom,
            )
        )
    return calls


def mixed_mode_model(seed=0):
    model = make_model(seed)
    model.train()
    model.stem[1].eval()  # one BatchNorm frozen, the other in training mode
    model.drop.eval()
    return model


# -- hooks ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ALL)
def test_no_hooks_left_after_normal_and_raising_calls(name):
    model = make_model()
    # The user's own hooks must survive, untouched.
    user_hook = model.block.register_forward_hook(lambda m, i, o: None)
    before = hooks_snapshot(model)
    maps = make_cam(name, model)(make_input())
    assert maps.shape == (2, 16, 16)
    assert hooks_snapshot(model) == before
    for what, call, error in failing_calls(name, model):
        with pytest.raises(error):
            call()
        assert hooks_snapshot(model) == before, f"hooks left after a call that failed with: {what}"
    user_hook.remove()
    assert all(not m._forward_hooks for m in model.modules())


def test_mid_perturbation_failure_really_happens_mid_perturbation():
    # Guards the test above: the RaiseOnCall target must get past the unperturbed scoring.
    model = make_model()
    target = RaiseOnCall(3)
    with pytest.raises(Boom):
        make_cam("ablationcam", model)(make_input(1), targets=[target])
    assert target.calls == 4


# -- training flags ----------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ALL)
def test_training_flags_restored_and_eval_during_call(name):
    model = mixed_mode_model()
    flags = [(n, m.training) for n, m in model.named_modules()]
    assert {f for _, f in flags} == {True, False}
    maps = make_cam(name, model)(make_input())
    assert model.recorder.seen, "the model must run in eval mode"
    assert not any(model.recorder.seen), "the model must run in eval mode"
    assert [(n, m.training) for n, m in model.named_modules()] == flags
    for what, call, error in failing_calls(name, model):
        with pytest.raises(error):
            call()
        assert [(n, m.training) for n, m in model.named_modules()] == flags, what
    assert not any(model.recorder.seen)

    # And eval mode really matters for this model: the map equals the one of the model in eval mode.
    reference = make_model()
    reference.eval()
    np.testing.assert_allclose(maps, make_cam(name, reference)(make_input()), atol=1e-6)


# -- parameters: .grad and requires_grad ----------------------------------------------------------
@pytest.mark.parametrize("name", ALL)
def test_parameter_grads_untouched(name):
    model = make_model()
    params = dict(model.named_parameters())
    generator = torch.Generator().manual_seed(3)
    for key in ("stem.0.weight", "block.0.bias", "head.weight"):  # some set, the others None
        params[key].grad = torch.randn(params[key].shape, generator=generator)
    before = state_snapshot(model)
    make_cam(name, model)(make_input())
    assert_state_equal(before, state_snapshot(model))
    for _what, call, error in failing_calls(name, model):
        with pytest.raises(error):
            call()
        assert_state_equal(before, state_snapshot(model))
    assert params["block.0.weight"].grad is None
    assert params["head.weight"].grad is not None


@pytest.mark.parametrize("name", ALL)
@pytest.mark.parametrize("frozen", ["all", "prefix", "target", "none"])
def test_requires_grad_unchanged(name, frozen):
    model = make_model()
    groups = {"all": [model], "prefix": [model.stem], "target": [model.block], "none": []}[frozen]
    for group in groups:
        group.requires_grad_(False)
    before = [(n, p.requires_grad) for n, p in model.named_parameters()]
    maps = make_cam(name, model)(make_input())
    assert [(n, p.requires_grad) for n, p in model.named_parameters()] == before
    for _, call, error in failing_calls(name, model):
        with pytest.raises(error):
            call()
        assert [(n, p.requires_grad) for n, p in model.named_parameters()] == before
    assert all(p.grad is None for p in model.parameters())
    # Freezing changes nothing in the maps.
    np.testing.assert_allclose(maps, make_cam(name, make_model())(make_input()), atol=1e-6)


# -- the module tree ---------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ALL)
def test_module_tree_and_forward_attributes_unchanged(name):
    model = make_model()
    # One module with an instance-level forward of the user's own: it must be kept, not deleted.
    own_forward = model.stem[2].forward
    model.stem[2].forward = own_forward
    before = tree_snapshot(model)
    make_cam(name, model)(make_input())
    assert tree_snapshot(model) == before
    assert model.stem[2].__dict__["forward"] is own_forward
    for what, call, error in failing_calls(name, model):
        with pytest.raises(error):
            call()
        assert tree_snapshot(model) == before, f"module tree changed after: {what}"
    assert "forward" not in model.block.__dict__
    assert "forward" not in model.stem[0].__dict__


# -- the input tensor ----------------------------------------------------------------------------------


@pytest.mark.filterwarnings("ignore:AblationCAM could not reuse:RuntimeWarning")  # mul_ on a broadcast
@pytest.mark.parametrize("name", ALL)
@pytest.mark.parametrize("requires_grad", [False, True])
@pytest.mark.parametrize("device", [None, "cpu"])
def test_input_tensor_unchanged(name, requires_grad, device):
    model = InPlaceInput()
    x = make_input()
    if requires_grad:
        x.requires_grad_(True)
        x.grad = torch.full_like(x, 0.25)
    values, version = x.detach().clone(), x._version
    cam = make_cam(name, model, [model.inner.block], device=device)
    maps = cam(x)
    assert torch.equal(x.detach(), values)
    assert x._version == version, "the input was modified in place"
    assert x.requires_grad is requires_grad
    assert x.is_leaf
    if requires_grad:
        assert torch.equal(x.grad, torch.full_like(x, 0.25))
    else:
        assert x.grad is None
    assert maps.shape == (2, 16, 16)
    assert maps.max() > 0.99


@pytest.mark.filterwarnings("ignore:AblationCAM could not reuse:RuntimeWarning")  # mul_ on a broadcast
@pytest.mark.parametrize("name", ALL)
def test_model_modifying_its_input_in_place_sees_the_user_values_every_pass(name):
    # Every forward pass of the call must start from the values the user passed (doubled once by the
    # model), not from a tensor modified by an earlier pass.
    model = InPlaceInput()
    maps = make_cam(name, model, [model.inner.block])(make_input())
    reference = make_cam(name, model.inner, [model.inner.block])(make_input() * 2.0)
    np.testing.assert_allclose(maps, reference, atol=1e-6)


@pytest.mark.parametrize("name", ALL)
def test_smoothing_paths_leave_model_and_input_unchanged(name):
    # aug_smooth (test-time augmentation, several passes) and eigen_smooth go through other code paths.
    model = mixed_mode_model()
    model.head.weight.grad = torch.ones_like(model.head.weight)
    x = make_input().requires_grad_(True)
    values = x.detach().clone()
    hooks, tree, state = hooks_snapshot(model), tree_snapshot(model), state_snapshot(model)
    with cam_factory.warns_if(name == "hirescam", UserWarning, HIRESCAM_EIGEN_WARNING):
        maps = make_cam(name, model)(x, aug_smooth=True, eigen_smooth=True)
    assert maps.shape == (2, 16, 16)
    assert maps.max() > 0.5  # a mean of maps: not renormalised
    assert hooks_snapshot(model) == hooks
    assert tree_snapshot(model) == tree
    assert_state_equal(state, state_snapshot(model))
    assert torch.equal(x.detach(), values)
    assert x.grad is None
    assert x.requires_grad
    assert model.recorder.seen
    assert not any(model.recorder.seen)
    with pytest.raises(ValueError, match=f"category {NUM_CLASSES} is out of range"):
        make_cam(name, model)(x, targets=[0, NUM_CLASSES], aug_smooth=True, eigen_smooth=True)
    assert hooks_snapshot(model) == hooks
    assert tree_snapshot(model) == tree
    assert_state_equal(state, state_snapshot(model))


# -- the backward pass stops at the target layer ---------------------------------------------------


@pytest.mark.parametrize("name", LAYERED)  # FullGrad differentiates down to the input by definition
@pytest.mark.parametrize("input_requires_grad", [False, True])
def test_backward_does_not_run_before_the_target_layer(name, input_requires_grad):
    torch.manual_seed(0)
    model = WithCounter()
    hook_calls = []
    handle = model.stem.register_full_backward_hook(lambda m, gi, go: hook_calls.append(1))
    x = make_input().requires_grad_(input_requires_grad)

    # The counters work: an ordinary backward pass through the whole model triggers both.
    model(x.detach().requires_grad_(True)).sum().backward()
    assert CountingIdentity.backward_calls == 1
    assert len(hook_calls) == 1
    model.zero_grad(set_to_none=True)
    CountingIdentity.backward_calls, hook_calls[:] = 0, []

    maps = make_cam(name, model, [model.block])(x)
    assert maps.shape == (2, 16, 16)
    assert maps.max() > 0.99
    assert CountingIdentity.backward_calls == 0
    assert hook_calls == []
    assert all(p.grad is None for p in model.parameters())
    handle.remove()


# -- no state kept between calls ---------------------------------------------------------------------
@pytest.mark.parametrize("name", ALL)
def test_user_forward_passes_are_not_captured(name):
    model = make_model()
    x, other = make_input(seed=1), make_input(seed=2)
    with torch.no_grad():
        expected = model.eval()(other)
    cam = make_cam(name, model)
    first = cam(x)
    grad_mode = torch.is_grad_enabled()
    with torch.no_grad():
        out = model(other)  # the user's own forward pass between two calls
        assert torch.is_grad_enabled() is False
    assert torch.is_grad_enabled() is grad_mode
    assert not out.requires_grad
    assert torch.equal(out, expected)
    out = model(other)  # with grad enabled: an ordinary graph, nothing captured or detached
    assert out.requires_grad
    assert out.grad_fn is not None
    second = cam(x)
    np.testing.assert_array_equal(first, second)
    # The user's forward after the calls sees the model exactly as before them.
    with torch.no_grad():
        assert torch.equal(model(other), expected)


def test_grad_mode_restored_after_a_call():
    model = make_model()
    cam = make_cam("gradcam", model)
    with torch.no_grad():
        cam(make_input())
        assert not torch.is_grad_enabled()
    assert torch.is_grad_enabled()
    with torch.no_grad():
        with pytest.raises(Boom):
            cam(make_input(), targets=raising_target)
        assert not torch.is_grad_enabled()
    assert torch.is_grad_enabled()


def _fresh_layer(attr):
    model = make_model()
    return model, [getattr(model, attr)]


@pytest.mark.parametrize("name", ALL)
def test_two_cam_objects_interleaved_give_the_maps_of_each_alone(name):
    x = make_input()
    model_a, layers_a = _fresh_layer("block")
    alone_block = make_cam(name, model_a, layers_a)(x)
    model_b, layers_b = _fresh_layer("stem")
    alone_stem = make_cam("gradcam", model_b, layers_b)(x)

    model = make_model()
    cam_block = make_cam(name, model, [model.block])
    cam_stem = make_cam("gradcam", model, [model.stem])
    for _ in range(2):
        np.testing.assert_array_equal(cam_block(x), alone_block)
        np.testing.assert_array_equal(cam_stem(x), alone_stem)
    assert np.abs(alone_block - alone_stem).max() > 0.05


def test_two_threads_with_their_own_models():
    x = make_input(batch=2, size=24)
    jobs = [(name, seed) for seed, name in enumerate(ALL)]
    serial = {job: make_cam(job[0], make_model(job[1]))(x) for job in jobs}
    # Built here: torch.manual_seed is process-global, so seeding inside the threads would race.
    models = {job: make_model(job[1]) for job in jobs}
    results, errors = {}, []

    def worker(my_jobs):
        try:
            for job in my_jobs:
                name, seed = job
                cam = make_cam(name, models[job])
                for _ in range(2):
                    results.setdefault((name, seed), []).append(cam(x, targets=None))
        except BaseException as error:  # reported to the main thread
            errors.append(error)

    threads = [threading.Thread(target=worker, args=(jobs[i::2],)) for i in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert not errors, errors
    assert sorted(results) == sorted(jobs)
    for job, maps in results.items():
        for m in maps:
            np.testing.assert_allclose(m, serial[job], atol=1e-6, err_msg=str(job))


def test_same_model_copied_across_threads_keeps_grad_modes_thread_local():
    # One thread inside no_grad, the other not: each call restores its own thread's grad mode.
    model = make_model()
    x = make_input()
    expected = make_cam("gradcam", copy.deepcopy(model))(x)
    seen, errors = {}, []

    def worker(key, no_grad):
        try:
            m = copy.deepcopy(model)
            if no_grad:
                with torch.no_grad():
                    out = make_cam("gradcam", m)(x)
                    seen[key] = (out, torch.is_grad_enabled())
            else:
                out = make_cam("gradcam", m)(x)
                seen[key] = (out, torch.is_grad_enabled())
        except BaseException as error:
            errors.append(error)

    threads = [threading.Thread(target=worker, args=(k, k == "no_grad")) for k in ("no_grad", "grad")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert not errors, errors
    assert seen["no_grad"][1] is False
    assert seen["grad"][1] is True
    for out, _ in seen.values():
        np.testing.assert_allclose(out, expected, atol=1e-6)
