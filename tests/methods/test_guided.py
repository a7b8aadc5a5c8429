"""Guided Backpropagation and Guided Grad-CAM against a plain reference, layouts, targets, the model left
untouched, and (optional) the reference library grad-cam 1.5.7 as a black box.

The reference is independent of the implementation's hooks: a float64 copy of each tiny net written out
layer by layer, with every ReLU replaced by ``GuidedReLU`` (in references.py), an ``autograd.Function`` whose
backward is the guided rule ``(x > 0) * (g > 0) * g`` of Springenberg et al. (arXiv:1412.6806).
"""

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from pytorch_grad_cam import PIXEL_METHODS, GradCAM, GuidedBackpropReLUModel, GuidedGradCAM, LayerCAM
from pytorch_grad_cam.guided_backprop import GuidedBackpropReLUModel as FromReferencePath
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
from tests.models import FunctionalNet
from tests.reference_library import REFERENCE_PATH, needs_reference, run_reference
from tests.references import (
    GuidedReLU6,
    functional_reference,
    module_reference,
    plain_gradient,
)

NUM_CLASSES = 5


def seeded(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def module_net(seed=0, dim=2):
    conv, pool = {1: (nn.Conv1d, nn.MaxPool1d), 2: (nn.Conv2d, nn.MaxPool2d)}[dim]
    bn = {1: nn.BatchNorm1d, 2: nn.BatchNorm2d}[dim]
    torch.manual_seed(seed)
    model = nn.Sequential(
        conv(3, 6, 3, padding=1),
        bn(6),
        nn.ReLU(inplace=True),
        pool(2),
        conv(6, 8, 3, padding=1),
        nn.ReLU(),
        conv(8, 8, 1),
        nn.ReLU(inplace=True),
        nn.Flatten(),
        nn.LazyLinear(NUM_CLASSES),
    )
    with torch.no_grad():
        model(torch.zeros(1, 3, *([8] * dim)))  # materialise the lazy head for 8-pixel inputs
        model[1].running_mean.uniform_(-0.2, 0.2)
        model[1].running_var.uniform_(0.5, 1.5)
    return model.eval()


def assert_guided_is_not_plain(want, model, x, classes):
    """The case is not degenerate: the gradient is non-zero and the guided rule changes it."""
    assert (want.flatten(1).abs().amax(1) > 0).all()
    plain = plain_gradient(copy.deepcopy(model).double(), x.double(), classes)
    assert (want - plain).abs().max() > 0.1 * want.abs().max()


@pytest.mark.parametrize("dim", [1, 2])
def test_module_relus_match_plain_reference(dim):
    model, x, classes = module_net(dim=dim), seeded(2, 3, *([8] * dim), seed=1), [1, 3]
    want = module_reference(model, x, classes)  # (B, C, *spatial)
    assert_guided_is_not_plain(want, model, x, classes)
    got = GuidedBackpropReLUModel(model)(x, targets=classes, channels_last=False)
    assert got.dtype == np.float32
    assert got.shape == tuple(x.shape)
    np.testing.assert_allclose(got, want.numpy(), rtol=1e-5, atol=1e-6 * np.abs(got).max())
    # The default, channels-last layout: (B, *spatial, C).
    channels_last = GuidedBackpropReLUModel(model)(x, targets=classes)
    np.testing.assert_array_equal(channels_last, np.moveaxis(got, 1, -1))


def test_relu6_modules_and_functional_match_plain_reference():
    """MobileNet / EfficientNet-Lite rectify with ReLU6: the guided rule with the mask 0 < x < 6."""
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 6, 3, padding=1),
        nn.ReLU6(),
        nn.Conv2d(6, 8, 3, padding=1),
        nn.ReLU6(inplace=True),
        nn.Flatten(),
        nn.Linear(8 * 64, NUM_CLASSES),
    ).eval()
    with torch.no_grad():
        model[0].weight.mul_(8)  # some inputs above 6, so the upper edge of the mask matters
    x, classes = seeded(2, 3, 8, 8, seed=1), [1, 3]
    reference = copy.deepcopy(model).double()
    h = x.double().requires_grad_(True)
    out = h
    for layer in reference:
        out = GuidedReLU6.apply(out) if isinstance(layer, nn.ReLU6) else layer(out)
    want = torch.autograd.grad(out[torch.arange(2), classes].sum(), h)[0]
    assert bool((reference[0](h) > 6).any())  # the upper edge of the mask is exercised
    assert_guided_is_not_plain(want, model, x, classes)
    got = GuidedBackpropReLUModel(model)(x, targets=classes, channels_last=False)
    np.testing.assert_allclose(got, want.detach().numpy(), rtol=1e-5, atol=1e-6 * np.abs(got).max())

    class Functional(nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, x):
            x = F.relu6(self.inner[0](x))
            x = F.relu6(self.inner[2](x))
            return self.inner[5](self.inner[4](x))

    got = GuidedBackpropReLUModel(Functional(model))(x, targets=classes, channels_last=False)
    np.testing.assert_allclose(got, want.detach().numpy(), rtol=1e-5, atol=1e-6 * np.abs(got).max())


def test_functional_relus_match_plain_reference():
    torch.manual_seed(0)
    model, x, classes = FunctionalNet().eval(), seeded(2, 3, 8, 10, seed=1), [0, 2]
    want = functional_reference(model, x, classes)
    assert_guided_is_not_plain(want, model, x, classes)
    got = GuidedBackpropReLUModel(model)(x, targets=classes, channels_last=False)
    np.testing.assert_allclose(got, want.numpy(), rtol=1e-5, atol=1e-6 * np.abs(got).max())


def test_batched_equals_per_image_and_layouts():
    model, x = module_net(), seeded(3, 3, 8, 8, seed=2)
    gb = GuidedBackpropReLUModel(model)
    batched = gb(x, targets=[0, 1, 4])
    assert batched.shape == (3, 8, 8, 3)
    for i, k in enumerate([0, 1, 4]):
        single = gb(x[i : i + 1], target_category=k)
        assert single.shape == (8, 8, 3)  # one image: the reference library's (H, W, C)
        np.testing.assert_allclose(batched[i], single, rtol=1e-5, atol=1e-7)
        assert gb(x[i : i + 1], targets=[k], channels_last=False).shape == (1, 3, 8, 8)


def test_targets_forms():
    model, x = module_net(), seeded(2, 3, 8, 8, seed=2)
    gb = GuidedBackpropReLUModel(model=model, device="cpu")
    with torch.no_grad():
        top = model(x).argmax(1).tolist()
    np.testing.assert_array_equal(gb(x), gb(x, targets=top))
    np.testing.assert_array_equal(gb(x, targets=[ClassifierOutputTarget(2)] * 2), gb(x, 2))
    np.testing.assert_array_equal(gb(x, target_category=2), gb(x, targets=2))
    assert np.abs(gb(x, 2) - gb(x, 4)).max() > 0  # the class matters
    with pytest.raises(TypeError, match="not both"):
        gb(x, 2, targets=2)
    with pytest.raises(ValueError, match="targets has 3 entries"):
        gb(x, targets=[1, 2, 3])
    with pytest.raises(TypeError, match="channels_last"):
        gb(x, channels_last="yes")
    with pytest.raises(ValueError, match="do not depend on the input"):
        gb(x, targets=lambda out: torch.tensor(1.0))


def test_inside_no_grad_and_inference_mode():
    model, x = module_net(), seeded(2, 3, 8, 8, seed=2)
    want = GuidedBackpropReLUModel(model)(x, [1, 3])
    with torch.no_grad():
        np.testing.assert_array_equal(GuidedBackpropReLUModel(model)(x, [1, 3]), want)
    with torch.inference_mode():
        inference_input = seeded(2, 3, 8, 8, seed=2)
        np.testing.assert_array_equal(GuidedBackpropReLUModel(model)(inference_input, [1, 3]), want)


# ---------------------------------------------------------------------- the model is left untouched
def snapshot(model):
    return {
        "tree": [(name, type(m), id(m), dict(m._modules)) for name, m in model.named_modules()],
        "hooks": [
            (len(m._forward_hooks), len(m._forward_pre_hooks), len(m._backward_hooks))
            for m in model.modules()
        ],
        "training": [m.training for m in model.modules()],
        "requires_grad": [p.requires_grad for p in model.parameters()],
        "grad": [None if p.grad is None else p.grad.clone() for p in model.parameters()],
        "params": [p.detach().clone() for p in model.parameters()],
    }


def assert_same(a, b):
    for key in ("tree", "hooks", "training", "requires_grad"):
        assert a[key] == b[key], key
    for x, y in zip(a["grad"] + a["params"], b["grad"] + b["params"]):
        assert (x is None and y is None) or torch.equal(x, y)


def boom(output):
    raise RuntimeError("target failed")


@pytest.mark.parametrize("make", [module_net, lambda: FunctionalNet()], ids=["modules", "functional"])
def test_model_untouched_after_normal_and_raising_calls(make):
    model = make()
    model.train()
    first, second = list(model.children())[:2]
    second.eval()  # mixed training flags
    params = list(model.parameters())
    params[0].grad = torch.ones_like(params[0])
    params[1].requires_grad_(False)
    x = seeded(2, 3, 8, 8, seed=2).requires_grad_(True)
    x.grad = torch.full_like(x, 0.5)
    x_before = x.detach().clone()
    before = snapshot(model)
    GuidedBackpropReLUModel(model)(x, targets=[1, 3])
    assert_same(before, snapshot(model))
    with pytest.raises(RuntimeError, match="target failed"):
        GuidedBackpropReLUModel(model)(x, targets=[boom, boom])
    assert_same(before, snapshot(model))
    with pytest.raises(ValueError, match=f"category {NUM_CLASSES} is out of range"):
        GuidedGradCAM(model, [first])(x, targets=[1, NUM_CLASSES])  # class 5 of 5: out of range
    assert_same(before, snapshot(model))
    assert torch.equal(x.detach(), x_before)
    assert torch.equal(x.grad, torch.full_like(x, 0.5))
    # The guided rule is gone: ReLUs (module and functional) back-propagate negative gradients again.
    model.eval()
    h = seeded(2, 3, 8, 8, seed=2).requires_grad_(True)
    out = model(h)[[0, 1], [1, 3]].sum()
    plain = torch.autograd.grad(out, h)[0].numpy()
    assert np.abs(plain - GuidedBackpropReLUModel(model)(h, [1, 3], channels_last=False)).max() > 0
    assert F.relu(torch.tensor([-1.0, 2.0])).tolist() == [0.0, 2.0]
    assert not torch.overrides._get_current_function_mode_stack()


def test_non_finite_score_is_refused_as_by_the_engine():
    """A target whose score is NaN or Inf for some image: the engine's ValueError naming the images (as
    GradCAM says it), not a NaN gradient; the hooks and the function mode are gone afterwards."""
    model, x = module_net(), seeded(3, 3, 8, 8, seed=2)
    before = snapshot(model)
    targets = [
        ClassifierOutputTarget(1),
        lambda out: out[1] * float("nan"),
        lambda out: out[2] * float("inf"),
    ]
    message = r"the target score is not finite \(NaN or Inf\) for image\(s\) \[1, 2\]"
    with pytest.raises(ValueError, match=message) as engine:
        GradCAM(model, [model[4]])(x, targets=targets)
    with pytest.raises(ValueError, match=message) as ours:
        GuidedBackpropReLUModel(model)(x, targets=targets)
    assert str(ours.value) == str(engine.value)
    with pytest.raises(ValueError, match=message):
        GuidedGradCAM(model, [model[4]])(x, targets=targets)
    assert_same(before, snapshot(model))
    assert not torch.overrides._get_current_function_mode_stack()


def test_hooks_and_mode_gone_when_the_forward_pass_raises():
    """The model raises half-way through its forward pass, after module and functional ReLUs ran under
    the guided rule: the ReLU hooks are removed and the TorchFunctionMode is popped."""

    class Fails(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv, self.relu = nn.Conv2d(3, 4, 3), nn.ReLU()

        def forward(self, x):
            F.relu(self.relu(self.conv(x)))
            raise RuntimeError("forward failed")

    model = Fails()
    before = snapshot(model)
    with pytest.raises(RuntimeError, match="forward failed"):
        GuidedBackpropReLUModel(model)(seeded(1, 3, 8, 8, seed=0), targets=[0])
    assert_same(before, snapshot(model))
    assert not torch.overrides._get_current_function_mode_stack()
    x = torch.tensor([-1.0, 2.0], requires_grad=True)
    (grad,) = torch.autograd.grad((F.relu(x) * torch.tensor([1.0, -3.0])).sum(), x)
    assert grad.tolist() == [0.0, -3.0]  # the plain rule: the negative gradient passes


# ------------------------------------------------------------------------------- Guided Grad-CAM
def test_guided_gradcam_is_guided_backprop_times_the_map():
    model, x = module_net(), seeded(2, 3, 8, 8, seed=2)
    layer = model[4]
    gb = module_reference(model, x, [1, 3]).float().numpy()  # (B, C, H, W)
    cam = GradCAM(model, [layer])(x, [1, 3])  # (B, H, W)
    assert (cam.reshape(2, -1).std(1) > 0.05).all()
    got = GuidedGradCAM(model, [layer])(x, targets=[1, 3], channels_last=False)
    np.testing.assert_allclose(got, gb * cam[:, None], rtol=1e-5, atol=1e-6 * np.abs(got).max())
    assert GuidedGradCAM(model, [layer])(x[:1], target_category=1).shape == (8, 8, 3)
    # Another map: a class or an object.
    layer_maps = LayerCAM(model, [layer])(x, [1, 3])
    assert np.abs(layer_maps - cam).max() > 0.05
    for other in (
        GuidedGradCAM(model, [layer], cam=LayerCAM),
        GuidedGradCAM(model, cam=LayerCAM(model, [layer])),
    ):
        np.testing.assert_allclose(
            other(x, [1, 3], channels_last=False),
            gb * layer_maps[:, None],
            rtol=1e-5,
            atol=1e-6 * np.abs(got).max(),
        )
    with pytest.raises(TypeError, match="already built"):
        GuidedGradCAM(model, [layer], cam=LayerCAM(model, [layer]))
    with pytest.raises(TypeError, match="cam must be"):
        GuidedGradCAM(model, [layer], cam=nn.ReLU)


def test_registry_and_import_paths():
    assert {"guidedbackprop": GuidedBackpropReLUModel, "guidedgradcam": GuidedGradCAM} == PIXEL_METHODS
    assert FromReferencePath is GuidedBackpropReLUModel


# ------------------------------------------------------------------- the reference library (optional)
DRIVER = r"""
import sys, numpy as np, torch, torchvision
import pytorch_grad_cam
from pytorch_grad_cam.guided_backprop import GuidedBackpropReLUModel
work, reference_path = sys.argv[1:3]
assert pytorch_grad_cam.__file__.startswith(reference_path), pytorch_grad_cam.__file__
model = torchvision.models.resnet18(weights=None)
model.load_state_dict(torch.load(f"{work}/model.pt"))
model.eval()
x = torch.load(f"{work}/x.pt")
gb = GuidedBackpropReLUModel(model=model, device="cpu")
out = [gb(x[i:i + 1], target_category=k) for i, k in ((0, 3), (1, 7))] + [gb(x[:1], target_category=None)]
np.save(f"{work}/out.npy", np.stack(out))
"""


@needs_reference
def test_matches_reference_library_resnet18(tmp_path):
    torch.manual_seed(0)
    model = torchvision.models.resnet18(weights=None).eval()
    x = seeded(2, 3, 64, 64, seed=11)
    torch.save(model.state_dict(), tmp_path / "model.pt")
    torch.save(x, tmp_path / "x.pt")
    run_reference(DRIVER, tmp_path, REFERENCE_PATH, cwd=tmp_path)
    want = np.load(tmp_path / "out.npy")  # (3, H, W, C)
    assert (np.abs(want).reshape(3, -1).max(1) > 0).all()
    gb = GuidedBackpropReLUModel(model=model, device="cpu")
    got = gb(x, targets=[3, 7])  # batched: (2, H, W, C)
    scale = np.abs(want).max()
    np.testing.assert_allclose(got, want[:2], rtol=1e-4, atol=1e-5 * scale)
    np.testing.assert_allclose(gb(x[:1]), want[2], rtol=1e-4, atol=1e-5 * scale)
