"""Activation checkpointing (``torch.utils.checkpoint``) before, around or after the target layer.

The correct map is the one of the same model without checkpointing: a checkpoint only decides what is kept
for the backward pass. Reentrant checkpoints (``use_reentrant=True``, also through ``checkpoint_sequential``)
run inline during a call; non-reentrant ones need nothing. A reentrant checkpoint that cannot be inlined
(torch's ``CheckpointFunction`` called directly, standing for DeepSpeed's or fairscale's) is refused with
an error that names it. The model is left as found: ``.grad``, training flags, hooks, and torch's
checkpoint module itself.
"""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch
import torch.utils.checkpoint

from pytorch_grad_cam import GradCAM, GuidedBackpropReLUModel
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
from tests.cam_factory import GRADIENT, make_cam
from tests.engine.test_invariants import assert_state_equal, hooks_snapshot, state_snapshot
from tests.models import TORCH_CHECKPOINT_FUNCTION, checkpointed_net, seeded_input

TARGETS = [ClassifierOutputTarget(1), ClassifierOutputTarget(3)]

#: layout -> (the checkpointed blocks, the target layers' paths). The target is ``blocks[1][0]`` (the conv
#: of the second block) unless said otherwise.
LAYOUTS = {
    "segment-before-target": ((0, 1), ["blocks.1.0"]),
    "target-first-in-segment": ((1, 3), ["blocks.1.0"]),
    "target-inside-segment": ((0, 2), ["blocks.1.0"]),  # blocks.0 runs in the segment before the target
    "segment-after-target": ((2, 4), ["blocks.1.0"]),
    "targets-inside-and-after-segment": ((1, 3), ["blocks.1.0", "blocks.3.0"]),
}
CHECKPOINTS = ["reentrant", "non-reentrant"]
#: Cheap enough for every layout of both kinds; every other gradient method runs on the reentrant layouts.
FEW = ["gradcam", "gradcam++", "hirescam", "layercam", "xgradcam", "shapleycam", "fullgrad"]
#: SESS runs its base method on every patch of every scale: the layouts that failed before, only.
COSTLY = {"sess": ["target-inside-segment", "segment-after-target", "one-layer"]}


def cases(layouts, checkpoints):
    """(method, layout, checkpoint): every gradient method on the reentrant checkpoints, FEW on the others."""
    return [
        (name, layout, checkpoint)
        for name in GRADIENT
        for layout in layouts
        for checkpoint in checkpoints
        if (name in FEW or "non-reentrant" not in checkpoint) and layout in COSTLY.get(name, layouts)
    ]


def layers_of(model, paths):
    return [model.get_submodule(path) for path in paths]


def maps(name, model, paths, x):
    return make_cam(name, model, layers_of(model, paths))(x, TARGETS)


@pytest.fixture(scope="module")
def x():
    return seeded_input(2, 3, 12, 12, seed=2)  # a seed where no layer map is constant


@pytest.fixture(scope="module")
def expected(x):
    """name, target paths -> the maps of the model without checkpointing."""
    cache: dict = {}

    def get(name, paths):
        key = (name, tuple(paths))
        if key not in cache:
            cache[key] = maps(name, checkpointed_net(), paths, x)
        return cache[key]

    return get


# -- the maps equal the model's without checkpointing ----------------------------------------------------
@pytest.mark.parametrize(("name", "layout", "checkpoint"), cases(list(LAYOUTS), CHECKPOINTS))
def test_maps_equal_those_without_checkpointing(name, layout, checkpoint, x, expected):
    segment, paths = LAYOUTS[layout]
    got = maps(name, checkpointed_net(segment, checkpoint), paths, x)
    np.testing.assert_allclose(got, expected(name, paths), rtol=0, atol=1e-5)


#: checkpoint_sequential checkpoints blocks 0-2 one by one: a target layer inside one, segments before and
#: after it; or one layer in the first and one in the third.
SEQUENTIAL_PATHS = {"one-layer": ["blocks.1.0"], "two-layers": ["blocks.0.1", "blocks.2.0"]}


@pytest.mark.parametrize(
    ("name", "layout", "checkpoint"),
    cases(list(SEQUENTIAL_PATHS), ["sequential-reentrant", "sequential-non-reentrant"]),
)
def test_checkpoint_sequential(name, layout, checkpoint, x, expected):
    paths = SEQUENTIAL_PATHS[layout]
    got = maps(name, checkpointed_net(checkpoint=checkpoint), paths, x)
    np.testing.assert_allclose(got, expected(name, paths), rtol=0, atol=1e-5)


def test_pixel_gradients_equal_those_without_checkpointing(x):
    # Guided backpropagation differentiates the whole model, through every segment.
    want = GuidedBackpropReLUModel(checkpointed_net())(x, targets=TARGETS)
    for model in (checkpointed_net((1, 3), "reentrant"), checkpointed_net(checkpoint="sequential-reentrant")):
        got = GuidedBackpropReLUModel(model)(x, targets=TARGETS)
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-6)


# -- the model and torch are left as found --------------------------------------------------------------
def prepared(segment, checkpoint):
    """A checkpointed net with known ``.grad`` on some parameters (None on the others) and mixed training
    flags, as a model in the middle of training."""
    model = checkpointed_net(segment, checkpoint)
    for i, param in enumerate(model.parameters()):
        param.grad = torch.full_like(param, float(i + 1)) if i % 2 == 0 else None
    model.train()
    model.blocks[2].eval()
    return model


@pytest.mark.parametrize("checkpoint", CHECKPOINTS)
@pytest.mark.parametrize("layout", list(LAYOUTS))
@pytest.mark.parametrize("name", FEW)
def test_the_model_is_left_as_found(name, layout, checkpoint, x):
    segment, paths = LAYOUTS[layout]
    model = prepared(segment, checkpoint)
    state, hooks = state_snapshot(model), hooks_snapshot(model)
    grads = [param.grad for param in model.parameters()]
    make_cam(name, model, layers_of(model, paths))(x, TARGETS)
    assert_state_equal(state, state_snapshot(model))
    assert hooks_snapshot(model) == hooks
    # The very tensors: nothing replaced, nothing accumulated into them.
    assert all(param.grad is grad for param, grad in zip(model.parameters(), grads))
    assert torch.utils.checkpoint.CheckpointFunction is TORCH_CHECKPOINT_FUNCTION


def test_torch_checkpoint_is_restored_after_a_call_that_raises(x):
    model = checkpointed_net((1, 3), "reentrant")

    def failing(output):
        raise RuntimeError("target failed")

    with pytest.raises(RuntimeError, match="target failed"):
        GradCAM(model, [model.blocks[1][0]])(x, [failing, failing])
    assert torch.utils.checkpoint.CheckpointFunction is TORCH_CHECKPOINT_FUNCTION


def checkpoint_node(requires_grad_input: torch.Tensor) -> str:
    """The type of the grad_fn that a reentrant checkpoint of ``2 * t`` gives in this thread."""
    out = torch.utils.checkpoint.checkpoint(lambda t: t * 2, requires_grad_input, use_reentrant=True)
    return type(out.grad_fn).__name__


def test_other_threads_keep_torchs_checkpoint_during_a_call(x):
    # Inline only in the thread of the call: a training loop running meanwhile in another thread keeps
    # its checkpoint (and its memory savings).
    seen = {}

    def target(output):
        leaf = torch.ones(3, requires_grad=True)
        with torch.enable_grad():
            seen["call"] = checkpoint_node(leaf)
            other = threading.Thread(target=lambda: seen.setdefault("other", checkpoint_node(leaf)))
            other.start()
            other.join()
        return output[1]

    model = checkpointed_net((1, 3), "reentrant")
    GradCAM(model, [model.blocks[1][0]])(x, [target, target])
    assert seen["other"] == "CheckpointFunctionBackward"
    assert seen["call"] == "MulBackward0"  # inline: the function's own graph
    assert checkpoint_node(torch.ones(3, requires_grad=True)) == "CheckpointFunctionBackward"


# -- a reentrant checkpoint that cannot be inlined: refused, naming it ---------------------------------------
# torch warns that the segment's input does not require grad (it runs in the forward pass's no_grad part).
@pytest.mark.filterwarnings("ignore:None of the inputs have requires_grad=True:UserWarning")
@pytest.mark.parametrize("name", ["gradcam", "layercam", "shapleycam"])
def test_a_foreign_checkpoint_before_the_target_layer_works(name, x, expected):
    got = maps(name, checkpointed_net((0, 1), "foreign"), ["blocks.1.0"], x)
    np.testing.assert_allclose(got, expected(name, ["blocks.1.0"]), rtol=0, atol=1e-5)


@pytest.mark.filterwarnings("ignore:None of the inputs have requires_grad=True:UserWarning")
@pytest.mark.parametrize(
    ("segment", "paths"),
    [((1, 3), ["blocks.1.0"]), ((0, 2), ["blocks.1.0"]), ((0, 2), ["blocks.1.0", "blocks.3.0"])],
)
@pytest.mark.parametrize("name", ["gradcam", "hirescam", "shapleycam"])
def test_a_foreign_checkpoint_around_the_target_layer_is_named(name, segment, paths, x):
    model = prepared(segment, "foreign")
    state = state_snapshot(model)
    with pytest.raises(
        ValueError, match=r"target layer\(s\) 'blocks\.1\.0': the model's forward pass switched"
    ) as info:
        make_cam(name, model, layers_of(model, paths))(x, TARGETS)
    message = str(info.value)
    assert "reentrant activation checkpoint" in message
    assert "use_reentrant=False" in message
    assert "blocks.3.0" not in message  # that layer gets its gradient
    assert_state_equal(state, state_snapshot(model))


@pytest.mark.parametrize("name", ["gradcam", "xgradcam", "shapleycam"])
def test_a_foreign_checkpoint_after_the_target_layer_is_named(name, x):
    model = prepared((2, 4), "foreign")
    state = state_snapshot(model)
    with pytest.raises(
        ValueError, match="reentrant activation checkpoint between the target layers and the score"
    ):
        make_cam(name, model, [model.blocks[1][0]])(x, TARGETS)
    assert_state_equal(state, state_snapshot(model))


@pytest.mark.parametrize("segment", [(0, 1), (1, 3), (2, 4)])
def test_a_foreign_checkpoint_is_named_for_input_gradients(segment, x):
    # FullGrad and guided backpropagation differentiate from the input on: every layout crosses it.
    model = prepared(segment, "foreign")
    state = state_snapshot(model)
    with pytest.raises(ValueError, match="reentrant activation checkpoint between the input and the score"):
        make_cam("fullgrad", model, [])(x, TARGETS)
    with pytest.raises(ValueError, match="reentrant activation checkpoint between the input and the score"):
        GuidedBackpropReLUModel(model)(x, targets=TARGETS)
    assert_state_equal(state, state_snapshot(model))


@pytest.mark.parametrize("name", ["gradcam", "layercam"])
def test_a_no_grad_block_around_the_target_layer_is_named(name, x):
    # The same cause without a checkpoint: a part of the model that runs under torch.no_grad().
    model = checkpointed_net((1, 3), "no-grad")
    with pytest.raises(ValueError, match="switched autograd off again after they ran") as info:
        make_cam(name, model, [model.blocks[1][0]])(x, TARGETS)
    assert "torch.no_grad() block" in str(info.value)
