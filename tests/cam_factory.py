"""How the generic tests build any registered method: one place for the arguments some methods need.

The generic suites (test_invariants, test_robustness, ...) are parametrised over ``METHODS``; a method
whose constructor needs more than ``(model, target_layers)`` declares those extra arguments here, so a
new method is covered by every generic test as soon as it is registered.
"""

from __future__ import annotations

import contextlib
from typing import Any, Callable

import pytest

from pytorch_grad_cam import METHODS

#: name -> function ``(model, layers) -> extra constructor kwargs`` for the generic tests.
EXTRA_KWARGS: dict[str, Callable[[Any, Any], dict]] = {
    # SS-CAM and IS-CAM cost num_samples forward passes per channel: keep the generic tests quick.
    "sscam": lambda model, layers: {"num_samples": 3},
    "iscam": lambda model, layers: {"num_samples": 3},
    # SESS runs the base method on every sliding-window patch of every scale: three scales (9 patches of
    # a square input, 3 windows of overlap at the larger scales) keep the generic tests quick.
    "sess": lambda model, layers: {"num_scales": 3},
}

# ------------------------------------------------------------------------ test-only traits of methods
# What the generic tests need to know about a method beyond the library's own flags, keyed by registry
# name. Kept here, not on the library classes: they describe how a test may check a method, not the
# method. A new method is in none of these sets unless a generic test proves it must be.

#: Methods whose map does NOT explain the target's own score on the input as given: generic tests that
#: derive a map from the target's score by hand skip them. FinerCAM explains a rewritten target mixing
#: every class's logit; SESS explains the scores of rescaled patches.
EXPLAINS_GIVEN_SCORE_EXCEPT = frozenset({"finercam", "sess"})
#: Methods for which half precision does NOT give the float32 map up to rounding. SESS: its fusion
#: counts, at each position, the patch maps above ``theta``, and rounding moves values across it.
LOW_PRECISION_UNSTABLE = frozenset({"sess"})
#: Methods whose every target layer must be the one pooled into the linear head (its channels are the
#: head's inputs): CAM, which reads its weights from that head.
NEEDS_LINEAR_HEAD = frozenset({"cam"})


def explains_given_score(name: str) -> bool:
    """Whether method ``name``'s map explains the target's score on the input as given."""
    return name not in EXPLAINS_GIVEN_SCORE_EXCEPT


def low_precision_stable(name: str) -> bool:
    """Whether half precision gives method ``name``'s float32 map up to rounding."""
    return name not in LOW_PRECISION_UNSTABLE


def needs_linear_head(name: str) -> bool:
    """Whether method ``name`` only explains the layer pooled into the model's linear head."""
    return name in NEEDS_LINEAR_HEAD


ALL = sorted(METHODS)
GRADIENT = [name for name in ALL if METHODS[name].uses_gradients]
PERTURBATION = [name for name in ALL if METHODS[name].perturbation]
#: Methods whose map comes from the target layers (FullGrad's does not).
LAYERED = [name for name in ALL if METHODS[name].uses_target_layers]


def make_cam(name: str, model, layers, perturbation_batch: int = 8, **kwargs):
    """``METHODS[name](model, target_layers=layers, ...)`` with what the generic tests need fixed."""
    cls = METHODS[name]
    if cls.perturbation:
        kwargs.setdefault("batch_size", perturbation_batch)
    if not cls.deterministic:
        kwargs.setdefault("seed", 1)  # RandomCAM: these tests compare calls, so fix its draw (a seed
        # whose weights are not all negative for any image here, which would make a map constant)
    extra = EXTRA_KWARGS.get(name)
    if extra is not None:
        for key, value in extra(model, layers).items():
            kwargs.setdefault(key, value)
    return cls(model, target_layers=layers, **kwargs)


#: CAM's warning when the target layer is not the one average-pooled into the linear head.
LINEAR_HEAD_WARNING = "CAM: the input of the linear layer"
#: The engine's warning for a map that is constant (all zeros) for some image.
CONSTANT_MAP_WARNING = "is constant for image"


def warns_if(condition: bool, category: type, match: str):
    """``pytest.warns(category, match=match)`` where ``condition`` holds, else no expectation (a warning
    then fails the test: pyproject sets ``filterwarnings = ["error"]``)."""
    return pytest.warns(category, match=match) if condition else contextlib.nullcontext()
