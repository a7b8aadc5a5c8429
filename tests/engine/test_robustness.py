"""Robustness: in-place ops, grad modes, half precision, layer order, shared modules, clear early errors,
degenerate maps, 1D/3D inputs and parameter-free models."""

import copy
import functools
import types
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from pytorch_grad_cam import METHODS, AblationCAM, GradCAM
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
from tests import cam_factory
from tests.models import (
    ConstantLayer,
    Counting,
    NaNHead,
    NegativeHead,
    Net1d,
    Net3d,
    ResNetTiny,
    SharedAroundTarget,
    SharedConv,
    WithExtras,
    make_tiny,
    randomize_bn,
)

ALL = cam_factory.ALL
GRADIENT = cam_factory.GRADIENT
LAYERED = cam_factory.LAYERED  # the methods whose map comes from target_layers
PERTURBATION = cam_factory.PERTURBATION
NUM_CLASSES = 5
LINEAR_HEAD_WARNING = cam_factory.LINEAR_HEAD_WARNING


def make_cam(name, model, layers, **kwargs):
    return cam_factory.make_cam(name, model, layers, perturbation_batch=8, **kwargs)


def make_input(shape=(2, 3, 16, 16), seed=1):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


# ============================================================================ in-place ops after the layer


def resnet_pair():
    torch.manual_seed(0)
    inplace = randomize_bn(ResNetTiny(inplace=True))
    plain = ResNetTiny(inplace=False)
    plain.load_state_dict(inplace.state_dict())
    return inplace, randomize_bn(plain)  # the same seed: the same BatchNorm values


def _plain_basic_block_forward(self, x):
    identity = x if self.downsample is None else self.downsample(x)
    out = F.relu(self.bn1(self.conv1(x)))
    out = self.bn2(self.conv2(out))
    return F.relu(out + identity)


@functools.lru_cache(maxsize=1)
def resnet18_pair():
    """A ResNet-18 and its in-place-free twin; cached: a CAM call leaves a model exactly as it was."""
    torch.manual_seed(0)
    inplace = randomize_bn(torchvision.models.resnet18(weights=None, num_classes=10))
    plain = copy.deepcopy(inplace)
    for m in plain.modules():
        if isinstance(m, nn.ReLU):
            m.inplace = False
        if isinstance(m, torchvision.models.resnet.BasicBlock):
            m.forward = types.MethodType(_plain_basic_block_forward, m)
    return inplace, plain


LAYERS = {
    "conv1 (then bn, inplace relu)": lambda m: [m.block2.conv1],
    "bn1 (then inplace relu)": lambda m: [m.block2.bn1],
    "bn2 (then out += identity)": lambda m: [m.block1.bn2],
    "conv (then inplace relu)": lambda m: [m.conv],
    "block1 (its output is block2's identity)": lambda m: [m.block1],
}


@pytest.mark.parametrize("name", ALL)
@pytest.mark.parametrize("where", sorted(LAYERS))
def test_inplace_ops_after_the_target_layer(name, where):
    inplace, plain = resnet_pair()
    x = make_input((2, 3, 12, 12))
    with torch.no_grad():
        assert torch.equal(inplace(x), plain(x))  # the two models compute the same thing
    # CAM: none of these layers is the one pooled into the head (warned); on bn2, image 1's CAM is all
    # negative (warned too).
    for model, which in ((inplace, "ours"), (plain, "expected")):
        with (
            cam_factory.warns_if(cam_factory.needs_linear_head(name), UserWarning, LINEAR_HEAD_WARNING),
            cam_factory.warns_if(
                cam_factory.needs_linear_head(name) and where.startswith("bn2"),
                RuntimeWarning,
                r"'block1\.bn2' is constant for image\(s\) \[1\]",
            ),
        ):
            maps = make_cam(name, model, LAYERS[where](model))(x)
        if which == "ours":
            ours = maps
        else:
            expected = maps
    assert expected.max() > 0.99
    np.testing.assert_allclose(ours, expected, atol=1e-6)


@pytest.mark.parametrize("name", GRADIENT)  # all methods: on ResNetTiny above
def test_inplace_ops_resnet18(name):
    inplace, plain = resnet18_pair()
    x = make_input((1, 3, 64, 64))
    with torch.no_grad():
        np.testing.assert_allclose(inplace(x), plain(x), rtol=0, atol=1e-5)
    # layer3[-1].bn2 is followed by `out += identity`, layer4[-1].bn1 by ReLU(inplace=True).
    for get in (lambda m: [m.layer3[-1].bn2], lambda m: [m.layer4[-1].bn1]):
        ours = make_cam(name, inplace, get(inplace), batch_size=256)(x, targets=[1])
        expected = make_cam(name, plain, get(plain), batch_size=256)(x, targets=[1])
        assert expected.max() > 0.99
        np.testing.assert_allclose(ours, expected, atol=1e-5)


# ============================================================================ grad modes and frozen models


@pytest.mark.parametrize("name", ALL)
def test_no_grad_inference_mode_and_frozen_give_the_normal_maps(name):
    model = make_tiny()
    x = make_input()
    expected = make_cam(name, model, [model.block])(x, targets=[1, 3])
    assert expected.max() > 0.99

    with torch.no_grad():
        inside_no_grad = make_cam(name, model, [model.block])(x, targets=[1, 3])
        assert not torch.is_grad_enabled()
    np.testing.assert_allclose(inside_no_grad, expected, atol=1e-6)

    with torch.inference_mode():
        x_inference = make_input()  # an inference tensor
        assert x_inference.is_inference()
        inside_inference = make_cam(name, model, [model.block])(x_inference, targets=[1, 3])
        assert torch.is_inference_mode_enabled()
    np.testing.assert_allclose(inside_inference, expected, atol=1e-6)

    frozen = make_tiny().requires_grad_(False)
    np.testing.assert_allclose(make_cam(name, frozen, [frozen.block])(x, targets=[1, 3]), expected, atol=1e-6)
    assert not any(p.requires_grad for p in frozen.parameters())


# ============================================================================ half precision
# Measured on this model (torch 2.x CPU), largest difference from the float32 maps over all methods:
# fp16 (11-bit mantissa) 1.8e-3, bf16 (8-bit mantissa) 1.8e-2 (GradCAM/XGradCAM). The tolerances leave
# a factor ~2.5 of headroom; a map computed wrongly (e.g. not normalised, or in half precision with
# overflow) differs by O(0.1-1).
HALF_ATOL = {torch.float16: 5e-3, torch.bfloat16: 4e-2}


def _cpu_supports(dtype):
    try:
        conv = nn.Conv2d(2, 2, 3).to(dtype)
        x = torch.randn(1, 2, 5, 5, dtype=dtype, requires_grad=True)
        conv(x).sum().backward()
        F.interpolate(x.detach(), size=(7, 7), mode="bilinear", align_corners=False)
        torch.linalg.svd(torch.randn(3, 3))
        return True
    except (RuntimeError, NotImplementedError):
        return False


@pytest.mark.parametrize("name", ALL)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
def test_half_precision_models(name, dtype):
    if not _cpu_supports(dtype):
        pytest.skip(f"this torch has no CPU convolution for {dtype}")
    if not cam_factory.low_precision_stable(name):
        pytest.skip(
            "a thresholded fusion (SESS: the mean of the patch maps above theta at each position): "
            "half precision moves values across the threshold; see methods/test_composite.py"
        )
    model = make_tiny()
    x = make_input((2, 3, 24, 24))
    expected = make_cam(name, model, [model.block])(x, targets=[1, 3])
    half = make_tiny().to(dtype)
    for inputs in (x, x.to(dtype)):  # a float32 input is cast to the model's dtype
        maps = make_cam(name, half, [half.block])(inputs, targets=[1, 3])
        assert maps.dtype == np.float32
        assert maps.shape == (2, 24, 24)
        assert np.isfinite(maps).all()
        assert maps.min() >= 0
        assert maps.max() <= 1
        if METHODS[name].uses_target_layers:
            np.testing.assert_allclose(maps, expected, atol=HALF_ATOL[dtype])
        else:
            # FullGrad's map is per pixel, nothing is pooled: a ReLU whose input rounds to the other
            # sign in half precision changes the gradient at its pixels fully (here 1 of 6912 gates
            # flips in fp16, 11 in bf16: max differences 0.03 / 0.17), so the maps agree on average
            # (measured mean differences 5.7e-4 / 3.2e-3).
            assert np.abs(maps - expected).mean() < HALF_ATOL[dtype] / 2
    assert all(p.dtype == dtype for p in half.parameters())


# ============================================================================ several target layers
def test_target_layer_order_does_not_matter_resnet18():
    torch.manual_seed(0)
    model = randomize_bn(torchvision.models.resnet18(weights=None, num_classes=10))
    x = make_input((2, 3, 64, 64))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # neither layer's map is degenerate for these targets
        a = GradCAM(model, [model.layer4, model.layer3])(x, targets=[1, 3])
        b = GradCAM(model, [model.layer3, model.layer4])(x, targets=[1, 3])
        only4 = GradCAM(model, [model.layer4])(x, targets=[1, 3])
    np.testing.assert_array_equal(a, b)
    assert np.abs(a - only4).max() > 0.01  # the second layer really contributes


@pytest.mark.parametrize("name", LAYERED)
def test_target_layer_order_does_not_matter(name):
    if cam_factory.needs_linear_head(name):
        pytest.skip("CAM explains only the layer pooled into the linear head; 'stem' is not")
    model = make_tiny()
    x = make_input()
    a = make_cam(name, model, [model.block, model.stem])(x, targets=[1, 3])
    b = make_cam(name, model, [model.stem, model.block])(x, targets=[1, 3])
    np.testing.assert_allclose(a, b, atol=1e-6)
    # Nested target layers (a block and a module inside it) work too, in either order.
    c = make_cam(name, model, [model.block, model.block[0]])(x, targets=[1, 3])
    d = make_cam(name, model, [model.block[0], model.block])(x, targets=[1, 3])
    np.testing.assert_allclose(c, d, atol=1e-6)
    assert c.max() > 0.99
    assert np.abs(c - a).max() > 1e-3


# ============================================================================ a module that runs twice


@pytest.mark.parametrize("name", LAYERED)
def test_module_that_runs_twice_is_refused(name):
    torch.manual_seed(0)  # seeded: some unseeded draws give constant maps on 'inp' (a warning by chance)
    model = SharedConv()
    with pytest.raises(ValueError, match=r"'conv' ran more than once"):
        make_cam(name, model, [model.conv])(make_input())
    # 'inp' is not pooled into the head: CAM warns.
    with cam_factory.warns_if(cam_factory.needs_linear_head(name), UserWarning, LINEAR_HEAD_WARNING):
        assert make_cam(name, model, [model.inp])(make_input()).shape == (2, 16, 16)


@pytest.mark.parametrize("name", ALL)
def test_shared_module_before_and_after_the_target_layer(name):
    torch.manual_seed(0)
    shared = SharedAroundTarget(shared=True)
    separate = SharedAroundTarget(shared=False)
    state = shared.state_dict()
    for copy_to in ("b", "c"):
        state.update(
            {
                key.replace("a.", f"{copy_to}.", 1): value
                for key, value in shared.state_dict().items()
                if key.startswith("a.")
            }
        )
    separate.load_state_dict(state)
    x = make_input((2, 3, 12, 12))
    with torch.no_grad():
        assert torch.equal(shared(x), separate(x))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # AblationCAM replays the prefix without falling back
        # 'target' is not pooled into the head: CAM says so (and nothing else may warn).
        with cam_factory.warns_if(cam_factory.needs_linear_head(name), UserWarning, LINEAR_HEAD_WARNING):
            ours = make_cam(name, shared, [shared.target])(x, targets=[1, 2])
    with cam_factory.warns_if(cam_factory.needs_linear_head(name), UserWarning, LINEAR_HEAD_WARNING):
        expected = make_cam(name, separate, [separate.target])(x, targets=[1, 2])
    assert expected.max() > 0.99
    np.testing.assert_allclose(ours, expected, atol=1e-6)


@pytest.mark.parametrize("name", ALL)
def test_unusual_but_valid_models_and_inputs(name):
    model = make_tiny()
    x = make_input()
    expected = make_cam(name, model, [model.block])(x, targets=[1, 3])
    # Modules before the target whose output is thrown away or is a tuple (AblationCAM replays them).
    extras = WithExtras()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        got = make_cam(name, extras, [extras.tiny.block])(x, targets=[1, 3])
    np.testing.assert_allclose(got, expected, atol=1e-6)
    double = make_tiny().double()
    got = make_cam(name, double, [double.block])(x, targets=[1, 3])
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, expected, atol=1e-5)
    np.testing.assert_allclose(
        make_cam(name, model, [model.block])(x.double(), targets=[1, 3]), expected, atol=1e-6
    )
    channels_last = make_tiny().to(memory_format=torch.channels_last)
    got = make_cam(name, channels_last, [channels_last.block])(
        x.to(memory_format=torch.channels_last), targets=[1, 3]
    )
    np.testing.assert_allclose(got, expected, atol=1e-5)
    transposed = x.transpose(2, 3).contiguous().transpose(2, 3)  # the same values, not contiguous
    assert not transposed.is_contiguous()
    np.testing.assert_allclose(
        make_cam(name, model, [model.block])(transposed, targets=[1, 3]), expected, atol=1e-6
    )


# ============================================================================ clear errors, raised early


def counting_extras():
    model = Counting(WithExtras())
    return model, model.inner


@pytest.mark.parametrize("name", LAYERED)
@pytest.mark.parametrize(
    ("bad", "error", "match"),
    [
        (lambda m: [nn.Conv2d(8, 8, 1)], ValueError, r"target_layers\[0\].*not a module of the model"),
        (lambda m: [m.tiny.block, nn.ReLU()], ValueError, r"target_layers\[1\].*not a module of the model"),
        (lambda m: [], ValueError, "target_layers is empty"),
        (lambda m: ["block"], TypeError, r"target_layers\[0\] must be an nn.Module"),
        (lambda m: [m.tiny.block, m.tiny.block], ValueError, "target_layers lists the same module"),
    ],
    ids=["foreign", "foreign-second", "empty", "string", "duplicate"],
)
def test_bad_target_layers_at_construction(name, bad, error, match):
    model, inner = counting_extras()
    with pytest.raises(error, match=match):
        make_cam(name, model, bad(inner))
    assert model.calls == 0


@pytest.mark.parametrize("name", LAYERED)
def test_layer_that_never_runs(name):
    model, inner = counting_extras()
    with pytest.raises(ValueError, match=r"'inner\.never' did not run"):
        make_cam(name, model, [inner.tiny.block, inner.never])(make_input())
    assert model.calls == 2  # one forward pass of the batch, no perturbations


@pytest.mark.parametrize("name", [n for n in GRADIENT if n in LAYERED])
def test_no_gradient_reaching_the_layer(name):
    model, inner = counting_extras()
    with pytest.raises(ValueError, match=r"no gradient reaches target layer\(s\) \['inner\.side'\]"):
        make_cam(name, model, [inner.side])(make_input())
    assert model.calls == 2
    with pytest.raises(ValueError, match="do not depend on the target layers"):
        make_cam(name, model, [inner.tiny.block])(make_input(), targets=lambda out: torch.tensor(1.0))
    assert model.calls == 4


@pytest.mark.parametrize("name", LAYERED)
def test_layer_with_tuple_output(name):
    model, inner = counting_extras()
    with pytest.raises(TypeError, match=r"'inner\.pair' returns tuple"):
        make_cam(name, model, [inner.pair])(make_input())
    assert model.calls == 2


@pytest.mark.parametrize("name", ALL)
@pytest.mark.parametrize(
    ("bad", "error", "match"),
    [
        (lambda: make_input().numpy(), TypeError, "input_tensor must be a torch.Tensor"),
        (lambda: [make_input()], TypeError, "input_tensor must be a torch.Tensor"),
        (lambda: torch.ones(2, 3, 16, 16, dtype=torch.int64), TypeError, "input_tensor must be a floating"),
        (lambda: torch.ones(2, 3, 16, 16, dtype=torch.uint8), TypeError, "input_tensor must be a floating"),
        (lambda: make_input()[:, :, 0, 0], ValueError, r"input_tensor must have shape.*\(2, 3\)"),
        (lambda: make_input()[:0], ValueError, r"input_tensor is an empty batch"),
        (
            lambda: make_input().index_put(
                (torch.tensor(1), torch.tensor(0), torch.tensor(3), torch.tensor(4)),
                torch.tensor(float("nan")),
            ),
            ValueError,
            "input_tensor contains NaN",
        ),
        (
            lambda: make_input().index_put((torch.tensor(0),), torch.tensor(float("-inf"))),
            ValueError,
            "input_tensor contains NaN or Inf",
        ),
    ],
    ids=["numpy", "list", "int64", "uint8", "rank2", "empty", "nan", "inf"],
)
def test_bad_inputs_raise_before_any_forward_pass(name, bad, error, match):
    model, inner = counting_extras()
    cam = make_cam(name, model, [inner.tiny.block])
    with pytest.raises(error, match=match):
        cam(bad())
    assert model.calls == 0


@pytest.mark.parametrize("name", ALL)
@pytest.mark.parametrize(
    ("targets", "error", "match"),
    [
        ([1, -1], ValueError, r"targets\[1\] must be a class index >= 0.*-1"),
        (-2, ValueError, r"targets must be a class index >= 0.*-2"),
        ([1, "cat"], TypeError, r"targets\[1\] must be a callable target"),
        ([1.5, 0], TypeError, r"targets\[0\] must be a callable target"),
        (2.5, TypeError, "targets must be None, a class index, a callable or a list"),
        (True, TypeError, r"targets must be a callable target.*bool"),
        ([True, 1], TypeError, r"targets\[0\] must be a callable target.*bool"),
        ([1, 2, 3], ValueError, r"targets has 3 entries but the batch has 2 images"),
        ([1], ValueError, r"targets has 1 entries but the batch has 2 images"),
    ],
    ids=[
        "negative-in-list",
        "negative",
        "string",
        "float",
        "float-scalar",
        "bool",
        "bool-in-list",
        "too-many",
        "too-few",
    ],
)
def test_bad_targets_raise_before_any_forward_pass(name, targets, error, match):
    model, inner = counting_extras()
    cam = make_cam(name, model, [inner.tiny.block])
    with pytest.raises(error, match=match):
        cam(make_input(), targets=targets)
    assert model.calls == 0


@pytest.mark.parametrize("name", ALL)
@pytest.mark.filterwarnings("ignore:Converting a tensor with requires_grad=True to a scalar:UserWarning")
def test_targets_failing_on_the_output_raise_before_perturbations(name):
    model, inner = counting_extras()
    cam = make_cam(name, model, [inner.tiny.block])
    with pytest.raises(ValueError, match=rf"category {NUM_CLASSES} is out of range .*{NUM_CLASSES} classes"):
        cam(make_input(), targets=[0, NUM_CLASSES])
    assert model.calls == 2
    with pytest.raises(ValueError, match=r"targets\[0\] .*must return a scalar tensor.*\(5,\)"):
        cam(make_input(), targets=lambda out: out * 2)  # the whole vector
    assert model.calls == 4
    with pytest.raises(ValueError, match=r"targets\[0\] .*must return a scalar tensor.*float"):
        cam(make_input(), targets=lambda out: float(out[0]))
    assert model.calls == 6


@pytest.mark.parametrize("name", ALL)
def test_model_producing_nan_scores(name):
    model = Counting(NaNHead())
    cam = make_cam(name, model, [model.inner.tiny.block])
    with pytest.raises(ValueError, match=r"score is not finite \(NaN or Inf\) for image\(s\) \[0, 1\]"):
        cam(make_input(), targets=1)
    if not cam_factory.explains_given_score(name):
        return  # FinerCAM's score weighs every class by its softmax: a NaN logit makes every image's NaN
    with pytest.raises(ValueError, match=r"not finite .*image\(s\) \[1\]"):
        cam(make_input(), targets=[0, 4])
    assert model.calls == 4  # no perturbed passes after the first forward pass
    # The NaN/Inf factors of the head reach the gradients (0 * nan in the backward pass): the projections
    # of EigenGrad-CAM and Seg-Eigen-CAM are then constant for both images (warned).
    with cam_factory.warns_if(
        name in ("eigengradcam", "segeigencam"),
        RuntimeWarning,
        r"'inner\.tiny\.block' is constant for image\(s\) \[0, 1\]",
    ):
        assert cam(make_input(), targets=[0, 2]).shape == (2, 16, 16)


@pytest.mark.parametrize("cls", [METHODS["scorecam"], METHODS["ablationcam"], GradCAM])
@pytest.mark.parametrize(
    ("value", "error"),
    [
        (0, ValueError),
        (-1, ValueError),
        (2.5, TypeError),
        (True, TypeError),
        ("8", TypeError),
        (np.float32(4), TypeError),
    ],
)
def test_bad_batch_size(cls, value, error):
    model = make_tiny()
    with pytest.raises(error, match="batch_size must be a positive int"):
        cls(model, [model.block], batch_size=value)
    cam = cls(model, [model.block], batch_size=3)
    with pytest.raises(error, match="batch_size must be a positive int"):
        cam.batch_size = value
    assert cam.batch_size == 3
    cam.batch_size = np.int64(5)
    assert cam.batch_size == 5
    assert type(cam.batch_size) is int
    # None, at construction or set, is the method's default: sized to the free memory at each call for
    # the perturbation methods, Grad-CAM's unused 32.
    cam.batch_size = None
    assert cam.batch_size is cls.default_batch_size
    assert cls(model, [model.block]).batch_size is cls.default_batch_size
    assert cls.default_batch_size == (None if cls.perturbation else 32)


@pytest.mark.parametrize("batch_size", [1, 3, 64])
@pytest.mark.parametrize("name", PERTURBATION)
def test_batch_size_does_not_change_the_maps(name, batch_size):
    model = make_tiny()
    x = make_input()
    expected = make_cam(name, model, [model.block], batch_size=8)(x, targets=[1, 3])
    np.testing.assert_allclose(
        make_cam(name, model, [model.block], batch_size=batch_size)(x, targets=[1, 3]), expected, atol=1e-5
    )


# ============================================================================ degenerate maps


def _assert_zeros_with_warning(call, shape):
    with pytest.warns(RuntimeWarning, match="is constant for image"):
        maps = call()
    assert maps.shape == shape
    assert np.isfinite(maps).all()
    np.testing.assert_array_equal(maps, np.zeros(shape, np.float32))


@pytest.mark.parametrize("name", ALL)
def test_constant_layer_output_gives_zeros_with_a_warning(name):
    torch.manual_seed(0)
    model = ConstantLayer()
    _assert_zeros_with_warning(
        lambda: make_cam(name, model, [model.flat])(make_input(), targets=[1, 2]), (2, 16, 16)
    )


@pytest.mark.parametrize("name", ["gradcam", "gradcam++", "xgradcam"])
def test_all_negative_weights_give_zeros_with_a_warning(name):
    model = NegativeHead()
    _assert_zeros_with_warning(
        lambda: make_cam(name, model, [model.features])(make_input(), targets=[0, 3]), (2, 16, 16)
    )


def test_ablation_with_a_zero_original_score_stays_finite():
    model = make_tiny()
    x = make_input((1, 3, 16, 16))
    with torch.no_grad():
        original = model(x)[0, 2].clone()
    target = ZeroAtOriginal(2, original)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no divide-by-zero, no fallback to the slow path
        maps = AblationCAM(model, [model.block], batch_size=8)(x, targets=[target])
    assert target.first_score == 0.0  # the score really was exactly 0
    assert np.isfinite(maps).all()
    assert maps.min() == 0.0
    assert maps.max() > 0.99
    # With y == 0 the weights are (0 - y_k) / 1e-7 (the denominator is clamped, not the weights lost).
    np.testing.assert_allclose(maps, _weights_only_map(model, x, original), atol=1e-4)


class ZeroAtOriginal:
    """``output[k] - offset``: exactly 0 on the unperturbed input when ``offset`` is that score."""

    def __init__(self, category, offset):
        self.category, self.offset, self.first_score = category, offset, None

    def __call__(self, output):
        score = output[self.category] - self.offset
        if self.first_score is None:
            self.first_score = float(score)
        return score


def _weights_only_map(model, x, original):
    """AblationCAM by hand for y == 0: w_k = (0 - (y_k - y0)) / 1e-7, cam = relu(sum w_k A_k)."""
    with torch.no_grad():
        feats = model.block(model.stem(x))  # (1, 8, 8, 8)
        scores = []
        for k in range(feats.shape[1]):
            ablated = feats.clone()
            ablated[:, k] = 0.0  # the activations are post-ReLU, non-negative: ablation value 0
            scores.append(model.head(ablated.mean((2, 3)))[0, 2] - original)
        weights = (0.0 - torch.stack(scores)) / 1e-7
        cam = (weights[None, :, None, None] * feats).sum(1).relu()
        cam = (cam - cam.min()) / (cam.max() - cam.min() + 1e-7)
        cam = F.interpolate(cam[None], size=x.shape[2:], mode="bilinear", align_corners=False)[0]
        cam = (cam - cam.min()) / (cam.max() - cam.min() + 1e-7)
    return cam.numpy()


# ============================================================================ 1D signals and 3D volumes


def _gradcam_by_hand(model, x, category):
    acts = model.features(x).detach().requires_grad_(True)
    pooled = acts.flatten(2).mean(-1)
    (grads,) = torch.autograd.grad(model.head(pooled)[:, category].sum(), acts)
    with torch.no_grad():
        weights = grads.flatten(2).mean(-1)
        cam = (weights.reshape(*weights.shape, *[1] * (acts.ndim - 2)) * acts).sum(1).relu()
        flat = cam.flatten(1)
        flat = (flat - flat.amin(1, keepdim=True)) / (
            flat.amax(1, keepdim=True) - flat.amin(1, keepdim=True) + 1e-7
        )
        mode = {1: "linear", 3: "trilinear"}[acts.ndim - 2]
        cam = F.interpolate(flat.view_as(cam)[:, None], size=x.shape[2:], mode=mode, align_corners=False)[
            :, 0
        ]
        flat = cam.flatten(1)
        flat = (flat - flat.amin(1, keepdim=True)) / (
            flat.amax(1, keepdim=True) - flat.amin(1, keepdim=True) + 1e-7
        )
    return flat.view_as(cam).numpy()


@pytest.mark.parametrize("name", ALL)
@pytest.mark.parametrize("kind", ["1d", "3d"])
def test_1d_signals_and_3d_volumes(name, kind):
    torch.manual_seed(0)
    model, shape = (Net1d(), (3, 2, 40)) if kind == "1d" else (Net3d(), (2, 1, 8, 10, 12))
    x = make_input(shape)
    maps = make_cam(name, model, [model.features])(x, targets=2)
    assert maps.shape == (shape[0], *shape[2:])
    assert maps.dtype == np.float32
    assert np.isfinite(maps).all()
    assert maps.min() >= 0
    assert maps.max() <= 1
    assert np.allclose(maps.reshape(shape[0], -1).max(1), 1.0, atol=1e-5)
    assert np.allclose(maps.reshape(shape[0], -1).min(1), 0.0)
    if name == "gradcam":
        np.testing.assert_allclose(maps, _gradcam_by_hand(model, x, 2), atol=1e-5)


# ============================================================================ a model without parameters
# The hand derivation below holds for maps that are weighted sums of the activations; EigenGrad-CAM
# and Seg-Eigen-CAM project on a principal component instead (covered in methods/test_formulas.py);
# FullGrad has no target layer (its map of this model is checked in methods/test_fullgrad.py).
@pytest.mark.parametrize(
    "name",
    [
        n
        for n in GRADIENT
        if n in LAYERED and n not in ("eigengradcam", "segeigencam") and cam_factory.explains_given_score(n)
    ],
)
def test_model_without_parameters(name):
    model = nn.Sequential(nn.AvgPool2d(2), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten())
    assert not list(model.parameters())
    assert not list(model.buffers())
    x = make_input((2, 3, 16, 16))
    maps = make_cam(name, model, [model[0]])(x, targets=[0, 2])
    assert maps.shape == (2, 16, 16)
    assert np.isfinite(maps).all()
    # The score of class k is the mean of relu(pool(x)[k]); its gradient is positive exactly where the
    # pooled channel k is, so every gradient method's map is relu(pool(x)[k]), normalised and resized.
    with torch.no_grad():
        pooled = F.avg_pool2d(x, 2)[[0, 1], [0, 2]].relu()  # (2, 8, 8)
        flat = pooled.flatten(1)
        ref = (
            (flat - flat.amin(1, keepdim=True))
            / (flat.amax(1, keepdim=True) - flat.amin(1, keepdim=True) + 1e-7)
        ).view_as(pooled)
        ref = F.interpolate(ref[:, None], size=(16, 16), mode="bilinear", align_corners=False)[:, 0]
        flat = ref.flatten(1)
        ref = (
            (flat - flat.amin(1, keepdim=True))
            / (flat.amax(1, keepdim=True) - flat.amin(1, keepdim=True) + 1e-7)
        ).view_as(ref)
    np.testing.assert_allclose(maps, ref.numpy(), atol=1e-5)


def test_target_objects_from_utils_work_with_every_engine_path():
    # Sanity for the error tests above: the same model and targets work when nothing is wrong.
    model, inner = counting_extras()
    maps = GradCAM(model, [inner.tiny.block])(
        make_input(), targets=[ClassifierOutputTarget(4), ClassifierOutputTarget(0)]
    )
    assert maps.shape == (2, 16, 16)
    assert maps.max() > 0.99
    assert model.calls == 2
