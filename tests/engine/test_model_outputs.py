"""Models whose output is not a plain tensor of class scores: a namedtuple, a dict, a tuple.

A target receives its image's part of the output in the output's own structure (a namedtuple stays a
namedtuple); a method whose map ignores the targets (EigenCAM, KPCA-CAM, FEM, RandomCAM) needs no class
scores at all, so ``targets=None`` works on any output there. The maps equal those of the same network
returning its logits.
"""

from __future__ import annotations

import collections
import warnings

import numpy as np
import pytest
import torch
from torch import nn

from pytorch_grad_cam import METHODS
from tests.cam_factory import make_cam
from tests.models import seeded_input, tiny_net

Output = collections.namedtuple("Output", "logits features")


class Wrapped(nn.Module):
    """:func:`tiny_net` with its logits packed into ``kind`` of output."""

    def __init__(self, kind: str) -> None:
        super().__init__()
        self.net = tiny_net(2, seed=0)
        self.kind = kind

    def forward(self, x: torch.Tensor):
        logits = self.net(x)
        pooled = x.mean((2, 3))  # (B, C_in): a second entry, per image
        if self.kind == "namedtuple":
            return Output(logits, pooled)
        if self.kind == "dict":
            return {"logits": logits, "features": pooled}
        return (logits, pooled)


def _logits(output):
    """The class scores of one image's output, whatever its structure."""
    if isinstance(output, dict):
        return output["logits"]
    return output[0]


class Logit:
    """Class ``k``'s logit, read from the structured output."""

    def __init__(self, k: int) -> None:
        self.k = k

    def __call__(self, output):
        return _logits(output)[self.k]


@pytest.mark.parametrize("kind", ["namedtuple", "dict", "tuple"])
@pytest.mark.parametrize("name", ["gradcam", "scorecam", "ablationcam", "hirescam"])
def test_a_target_gets_its_images_part_in_the_outputs_structure(kind, name):
    wrapped = Wrapped(kind).eval()
    plain = wrapped.net
    x = seeded_input(2, 3, 12, 16, seed=1)
    want = make_cam(name, plain, [plain.conv3])(x, targets=[1, 3])
    got = make_cam(name, wrapped, [wrapped.net.conv3])(x, targets=[Logit(1), Logit(3)])
    np.testing.assert_array_equal(got, want)
    assert want.max() > 0.99


def test_a_namedtuple_part_is_a_namedtuple():
    wrapped = Wrapped("namedtuple").eval()
    seen = []

    def target(output):
        seen.append(type(output))
        return output.logits[1]

    make_cam("gradcam", wrapped, [wrapped.net.conv3])(seeded_input(2, 3, 12, 16, seed=1), targets=target)
    assert seen == [Output, Output]


AGNOSTIC = sorted(name for name, cls in METHODS.items() if not cls.class_specific)


def test_the_class_agnostic_methods_are_the_ones_expected():
    assert AGNOSTIC == ["eigencam", "fem", "kpcacam", "randomcam"]


@pytest.mark.parametrize("kind", ["namedtuple", "dict", "tuple"])
@pytest.mark.parametrize("name", AGNOSTIC)
def test_a_class_agnostic_method_needs_no_class_scores(kind, name):
    wrapped = Wrapped(kind).eval()
    plain = wrapped.net
    x = seeded_input(2, 3, 12, 16, seed=1)
    want = make_cam(name, plain, [plain.conv3])(x)
    got = make_cam(name, wrapped, [wrapped.net.conv3])(x)
    np.testing.assert_array_equal(got, want)
    assert want.max() > 0.99


@pytest.mark.parametrize("name", ["gradcam", "scorecam"])
def test_a_class_specific_method_still_asks_for_targets(name):
    wrapped = Wrapped("dict").eval()
    with pytest.raises(ValueError, match=r"targets=None picks each image's top class.*returns dict"):
        make_cam(name, wrapped, [wrapped.net.conv3])(seeded_input(1, 3, 12, 16, seed=1))


def test_a_traced_model_gets_a_clear_error_before_any_map():
    """TorchScript inlines the submodules: their hooks never run. The error says so (not 'did not run')."""
    model = tiny_net(2, seed=0)
    x = seeded_input(1, 3, 12, 16, seed=1)
    with warnings.catch_warnings():  # newer torch deprecates tracing (a FutureWarning), older does not
        warnings.simplefilter("ignore", FutureWarning)
        traced = torch.jit.trace(model, x)
    with pytest.raises(ValueError, match=r"the model is a TorchScript module .* explain the original"):
        make_cam("gradcam", traced, [traced.conv3])(x, targets=[1])
