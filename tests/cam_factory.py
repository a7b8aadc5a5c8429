"""How the generic tests build any registered method: one place for the arguments some methods need.

The generic suites (test_invariants, test_robustness, ...) are parametrised over ``METHODS``; a method
whose constructor needs more than ``(model, target_layers)`` declares those extra arguments here, so a
new method is covered by every generic test as soon as it is registered.
"""
from __future__ import annotations

from typing import Any, Callable, Dict

from pytorch_grad_cam import METHODS

#: name -> function ``(model, layers) -> extra constructor kwargs`` for the generic tests.
EXTRA_KWARGS: Dict[str, Callable[[Any, Any], dict]] = {
    # SS-CAM and IS-CAM cost num_samples forward passes per channel: keep the generic tests quick.
    "sscam": lambda model, layers: {"num_samples": 3},
    "iscam": lambda model, layers: {"num_samples": 3},
    # SESS runs the base method on every sliding-window patch of every scale: three scales (9 patches of
    # a square input, 3 windows of overlap at the larger scales) keep the generic tests quick.
    "sess": lambda model, layers: {"num_scales": 3},
}

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
