"""The house rules, checked: the registry fills itself, composites hold a plain base method, a CAM object
keeps no per-call state (reentrant, and shareable between threads), one validation rule, and importing the
package does not import OpenCV."""

from __future__ import annotations

import subprocess
import sys
import threading

import numpy as np
import pytest
import torch

import pytorch_grad_cam
from pytorch_grad_cam import (
    CAM,
    FEM,
    KPCA_CAM,
    SESS,
    SSCAM,
    BaseCAM,
    FinerCAM,
    GradCAM,
    GradCAMPlusPlus,
    RandomCAM,
    RefineCAM,
)
from pytorch_grad_cam.registry import FACTORIZATION_METHODS, KINDS, METHODS, PIXEL_METHODS, kind_of
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
from tests.models import seeded_input, tiny_net


# -- the registry --------------------------------------------------------------------------------------------
def test_every_registered_class_is_public_and_in_its_kinds_table():
    registered = {cls for table in KINDS.values() for cls in table.values()}
    assert len(METHODS) == 23
    assert set(PIXEL_METHODS) == {"guidedbackprop", "guidedgradcam"}
    assert set(FACTORIZATION_METHODS) == {"dff"}
    for cls in registered:
        assert cls.__name__ in pytorch_grad_cam.__all__
        assert getattr(pytorch_grad_cam, cls.__name__) is cls
        assert KINDS[cls.kind][cls.name] is cls
        assert kind_of(cls.name) == cls.kind
    assert all(issubclass(cls, BaseCAM) for cls in METHODS.values())


def test_a_subclass_registers_only_with_a_name_of_its_own_and_never_over_another():
    class MyGradCAM(GradCAM):  # a user's variant: no name of its own, not registered
        pass

    assert METHODS["gradcam"] is GradCAM
    assert MyGradCAM not in METHODS.values()
    with pytest.raises(ValueError, match=r"the method name 'gradcam' of .* is taken by .*GradCAM"):
        type("Clash", (GradCAM,), {"name": "gradcam"})
    assert METHODS["gradcam"] is GradCAM
    with pytest.raises(ValueError, match="unknown method 'nope'"):
        kind_of("nope")


def test_importing_the_package_does_not_import_opencv():
    code = (
        "import sys, pytorch_grad_cam, pytorch_grad_cam.utils, pytorch_grad_cam.grad_cam\n"
        "assert 'cv2' not in sys.modules, 'cv2 imported'\n"
        "from pytorch_grad_cam.utils import show_cam_on_image\n"
        "assert 'cv2' in sys.modules\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr


# -- composites hold a plain base method ---------------------------------------------------------------------
@pytest.mark.parametrize(
    ("cls", "base"), [(FinerCAM, GradCAM), (RefineCAM, GradCAMPlusPlus), (SESS, GradCAM)]
)
def test_a_composite_holds_an_instance_of_exactly_its_base_class(tiny_2d, cls, base):
    model, _ = tiny_2d
    cam = cls(model, [model.conv2, model.conv3])
    assert type(cam.base_cam) is base  # no subclass made at run time
    assert set(vars(cam.base_cam)) == set(vars(base(model, [model.conv2, model.conv3])))  # nothing injected


# -- no per-call state: recursion and threads ----------------------------------------------------------------
class _Recursion:
    """On its ``after``-th call (a target's call: see the classes below), runs the very same CAM object on
    another input and keeps the maps."""

    def __init__(self, cam, inner_input, category, after):
        self.cam, self.inner_input, self.category, self.after = cam, inner_input, category, after
        self.calls, self.inner_maps = 0, None

    def step(self):
        self.calls += 1
        if self.calls == self.after:
            self.inner_maps = self.cam(self.inner_input, targets=[self.category] * len(self.inner_input))


class _Recursing(ClassifierOutputTarget, _Recursion):
    """Class ``category``'s logit, recursing (a ClassifierOutputTarget, so CAM takes it: its weights are a
    class's)."""

    def __init__(self, cam, inner_input, category, after):
        ClassifierOutputTarget.__init__(self, category)
        _Recursion.__init__(self, cam, inner_input, category, after)

    def __call__(self, output):
        self.step()
        return super().__call__(output)


class _Logit:
    """A plain callable target, class ``category``'s logit: FinerCAM explains it as it is."""

    def __init__(self, category):
        self.category = category

    def __call__(self, output):
        return output[self.category]


class _RecursingLogit(_Recursion):
    """:class:`_Logit`, recursing."""

    def __call__(self, output):
        self.step()
        return output[self.category]


# ``after``: the target's call that recurses; past the first, inside the method's own loop (SS-CAM's masked
# batches, SESS's patches), where per-call state on the object would be overwritten under the outer call.
@pytest.mark.parametrize(
    ("make", "after"),
    [
        (lambda m: GradCAM(m, [m.conv3]), 1),
        (lambda m: CAM(m, [m.relu3]), 1),
        (lambda m: SSCAM(m, [m.conv3], num_samples=2, seed=3, batch_size=4), 3),
        (lambda m: FinerCAM(m, [m.conv3], alpha=0.7), 1),
        (lambda m: SESS(m, [m.conv3], num_scales=2), 2),
    ],
    ids=["gradcam", "cam", "sscam", "finercam", "sess"],
)
def test_a_cam_object_can_be_called_from_inside_its_own_call(tiny_2d, make, after):
    model, x = tiny_2d
    other = seeded_input(1, 3, 12, 16, seed=9)
    cam = make(model)
    # FinerCAM makes class targets into its comparison targets (which would not recurse): a plain callable.
    plain, recursing = (
        (_Logit, _RecursingLogit) if isinstance(cam, FinerCAM) else (ClassifierOutputTarget, _Recursing)
    )
    want_outer = cam(x, targets=[plain(1), ClassifierOutputTarget(1)])
    want_inner = cam(other, targets=[1])
    target = recursing(cam, other, 1, after)
    got_outer = cam(x, targets=[target, ClassifierOutputTarget(1)])
    np.testing.assert_array_equal(target.inner_maps, want_inner)
    np.testing.assert_array_equal(got_outer, want_outer)
    assert (want_outer.max() - want_outer.min()) > 0.5  # a real map, not a constant


def test_two_threads_share_one_cam_object_and_one_model():
    model = tiny_net(2, seed=0)
    inputs = [seeded_input(2, 3, 12, 16, seed=s) for s in range(6)]
    cam = FinerCAM(model, [model.conv3])
    # Each thread its own alpha: a call's options that lived on the object would leak across threads.
    want = {
        (i, alpha): cam(x, targets=[1, 3], alpha=alpha) for i, x in enumerate(inputs) for alpha in (0.2, 0.9)
    }
    got, errors = {}, []

    def work(alpha):
        try:
            for _ in range(3):
                for i, x in enumerate(inputs):
                    got[(i, alpha)] = cam(x, targets=[1, 3], alpha=alpha)
                    np.testing.assert_array_equal(got[(i, alpha)], want[(i, alpha)])
        except BaseException as error:  # reported below, in the main thread
            errors.append(error)

    threads = [threading.Thread(target=work, args=(alpha,)) for alpha in (0.2, 0.9)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=300)
    assert not errors, errors[0]
    assert len(got) == len(want)
    assert not np.array_equal(want[(0, 0.2)], want[(0, 0.9)])  # the alphas do give different maps
    assert not model.training
    assert not any(m._forward_hooks for m in model.modules())


# -- one validation rule -------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("make", "error", "match"),
    [
        (lambda m: FEM(m, [m.conv3], k=float("nan")), ValueError, "k must be a finite float, got nan"),
        (lambda m: FEM(m, [m.conv3], k="2"), TypeError, "k must be a finite float, got str '2'"),
        (
            lambda m: RandomCAM(m, [m.conv3], seed=1.5),
            TypeError,
            "seed must be None or an int, got float 1.5",
        ),
        (
            lambda m: KPCA_CAM(m, [m.conv3], gamma="x"),
            TypeError,
            "gamma must be a finite float > 0, got str 'x'",
        ),
        (
            lambda m: KPCA_CAM(m, [m.conv3], gamma=0.0),
            ValueError,
            "gamma must be a finite float > 0, got 0.0",
        ),
        (lambda m: KPCA_CAM(m, [m.conv3], kernel=3), TypeError, "kernel must be one of .*, got int 3"),
        (lambda m: KPCA_CAM(m, [m.conv3], kernel="tanh"), ValueError, "kernel must be one of .*, got 'tanh'"),
        (lambda m: KPCA_CAM(m, [m.conv3], coef0=float("inf")), ValueError, "coef0 must be a finite float"),
        (
            lambda m: FinerCAM(m, [m.conv3], alpha=float("nan")),
            ValueError,
            "alpha must be a finite float, got nan",
        ),
        (lambda m: SESS(m, [m.conv3], smooth="yes"), TypeError, "smooth must be a bool, got str 'yes'"),
    ],
    ids=[
        "fem-k-nan",
        "fem-k-str",
        "random-seed",
        "kpca-gamma-str",
        "kpca-gamma-0",
        "kpca-kernel-int",
        "kpca-kernel-name",
        "kpca-coef0",
        "finer-alpha",
        "sess-smooth",
    ],
)
def test_wrong_type_is_a_type_error_wrong_range_a_value_error(tiny_2d, make, error, match):
    model, _ = tiny_2d
    with pytest.raises(error, match=match):
        make(model)


def test_show_cam_on_image_follows_the_rule():
    from pytorch_grad_cam.utils.image import show_cam_on_image

    img, mask = np.zeros((4, 5, 3), np.float32), np.zeros((4, 5), np.float32)
    with pytest.raises(TypeError, match="use_rgb must be a bool, got str 'yes'"):
        show_cam_on_image(img, mask, use_rgb="yes")
    with pytest.raises(ValueError, match="image_weight must be a finite float >= 0 and <= 1, got nan"):
        show_cam_on_image(img, mask, image_weight=float("nan"))
    with pytest.raises(TypeError, match="image_weight must be a finite float >= 0 and <= 1, got str"):
        show_cam_on_image(img, mask, image_weight="0.5")


def test_checks_come_before_any_forward_pass(tiny_2d):
    model, x = tiny_2d
    calls = []
    handle = model.register_forward_hook(lambda *args: calls.append(1))
    try:
        with pytest.raises(TypeError):
            KPCA_CAM(model, [model.conv3], degree=2.5)(x)
        with pytest.raises(ValueError, match="comparison_categories must be ranks >= 1"):
            FinerCAM(model, [model.conv3])(x, comparison_categories=[0])
    finally:
        handle.remove()
    assert calls == []
    assert torch.is_tensor(x)


@pytest.mark.parametrize(
    "make",
    [
        lambda m: GradCAM(m, [m.conv3]),
        lambda m: FinerCAM(m, [m.conv3]),
        lambda m: pytorch_grad_cam.GuidedGradCAM(m, [m.conv3]),
        lambda m: pytorch_grad_cam.GuidedBackpropReLUModel(m),
    ],
    ids=["basecam", "finercam", "guidedgradcam", "guidedbackprop"],
)
def test_the_first_apis_target_category_is_targets(tiny_2d, make):
    model, x = tiny_2d
    method = make(model)
    np.testing.assert_array_equal(method(x, target_category=[1, 3]), method(x, targets=[1, 3]))
    assert not np.array_equal(method(x, targets=[1, 3]), method(x, targets=[3, 1]))
    with pytest.raises(
        TypeError, match=r"pass targets or target_category \(the first API's name\), not both"
    ):
        method(x, targets=[1, 3], target_category=[1, 3])
