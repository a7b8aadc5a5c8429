"""Every method against the plain reference of its paper formula (tests/references.py).

Cases: tiny seeded 1D/2D/3D conv nets (batch 2, a different class per image), a layer with negative
values, exactly-zero gradients, eigen smoothing, two target layers at different resolutions, and a
random-init torchvision resnet18 (in-place ReLU, residual adds, BatchNorm).
"""

import copy
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from pytorch_grad_cam import METHODS
from tests import references as R
from tests.cam_factory import warns_if

# Methods whose plain reference lives in their own family's test file (same standard: an independent
# float64 implementation of the paper's formula, non-degenerate cases).
OWN_FORMULA_TESTS = {
    "cam": "test_activation.py",
    "smoothgradcam++": "test_gradient.py",
    "shapleycam": "test_gradient.py",
    "fullgrad": "test_fullgrad.py",
    "sscam": "test_perturbation.py",
    "iscam": "test_perturbation.py",
    "finercam": "test_composite.py",
    "refinecam": "test_composite.py",
    "sess": "test_composite.py",
}
ALL_METHODS = sorted(name for name in METHODS if name in R.COVERED)
GRADIENT_METHODS = sorted(name for name in ALL_METHODS if METHODS[name].uses_gradients)
CLASS_DEPENDENT = sorted(name for name in ALL_METHODS if METHODS[name].class_specific)
# (method, eigen_smooth): EigenCAM is already a principal component, so its eigen_smooth is the same map.
METHOD_SMOOTH = [(m, False) for m in ALL_METHODS] + [(m, True) for m in ALL_METHODS if m != "eigencam"]


def ours(method, model, layers, x, classes, eigen_smooth=False):
    seed = {"seed": R.RANDOM_SEED} if method == "randomcam" else {}
    cam = METHODS[method](model, target_layers=layers, batch_size=128, **seed)
    # HiResCAM with eigen smoothing warns that it gives up faithfulness (test_hirescam_warns_... below).
    with warns_if(
        method == "hirescam" and eigen_smooth,
        UserWarning,
        "HiResCAM with eigen_smooth=True is no longer guaranteed to be faithful",
    ):
        maps = cam(x, targets=list(classes), eigen_smooth=eigen_smooth)
    assert isinstance(maps, np.ndarray)
    assert maps.dtype == np.float32
    assert maps.shape == (x.shape[0], *x.shape[2:])
    return torch.from_numpy(maps)


def assert_nontrivial(maps, peak=0.99):
    """A reference map that is all zeros (or flat) would let a broken method pass: refuse the case."""
    flat = maps.reshape(maps.shape[0], -1)
    assert (flat.max(1) > peak).all(), "degenerate test case: a reference map is all zeros"
    assert (flat.std(1) > 0.05).all(), "degenerate test case: a reference map is nearly flat"


def assert_matches_reference(method, model, layers, x, classes, eigen_smooth=False, details=None):
    details = {} if details is None else details
    want = R.reference_cam(method, model, layers, x, classes, eigen_smooth, details=details)
    assert_nontrivial(want)
    for layer_maps in details["layer_maps"]:  # every layer contributes, not just one of two
        assert_nontrivial(layer_maps, peak=0.3)  # resizing need not keep the peak of 1
    got = ours(method, model, layers, x, classes, eigen_smooth)
    torch.testing.assert_close(got, torch.from_numpy(want.astype(np.float32)), atol=1e-5, rtol=1e-4)
    return want


def test_every_registered_method_has_a_plain_reference():
    """Here (references.py) or in its family's test file, which must exist and test it."""
    from pathlib import Path

    for name in METHODS:
        if name in R.COVERED:
            continue
        assert name in OWN_FORMULA_TESTS, f"no plain reference test for {name!r}"
        path = Path(__file__).with_name(OWN_FORMULA_TESTS[name])
        assert path.is_file(), path
        text = path.read_text()
        assert "reference" in text, (name, path)
        assert name in text or METHODS[name].__name__ in text, (name, path)


# ------------------------------------------------------------------------- the reference itself
def test_reference_resizes_follow_the_documented_conventions():
    """cv2.resize / the separable half-pixel interpolation == F.interpolate(align_corners=False), and
    the aligned one == align_corners=True, in 1D, 2D and 3D (checks the reference, not the engine)."""
    gen = torch.Generator().manual_seed(0)
    for shape, size, mode in (
        ((5,), (13,), "linear"),
        ((3, 4), (11, 7), "bilinear"),
        ((2, 3, 4), (5, 7, 6), "trilinear"),
    ):
        a = torch.rand(shape, generator=gen, dtype=torch.float64)
        for align, ours_fn in ((False, R.resize), (True, R.resize_align_corners)):
            want = F.interpolate(a[None, None], size=size, mode=mode, align_corners=align)[0, 0]
            torch.testing.assert_close(torch.from_numpy(np.asarray(ours_fn(a.numpy(), size))), want)


def test_reference_gradcam_on_an_analytic_model():
    """Target layer = the input itself, head = global average pool + linear W: the gradient is W[c] / N
    everywhere, so Grad-CAM's weights are W[c] / N, and XGrad-CAM's W[c] / N * sum(x_k) / (sum(x_k) + 1e-7).
    The map is then normalised twice (once per layer, once after fusing the layers)."""
    torch.manual_seed(3)
    model = nn.Sequential(nn.Identity(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(3, 4)).eval()
    x = torch.randn(2, 3, 5, 6)
    classes = [1, 2]
    w = model[3].weight.detach().double().numpy()
    xs = x.double().numpy()

    def norm(m):
        return (m - m.min()) / (m.max() - m.min())

    for method in ("gradcam", "xgradcam"):
        details = {}
        got = R.reference_cam(method, model, [model[0]], x, classes, details=details)
        for i, c in enumerate(classes):
            sums = xs[i].sum((1, 2))
            weights = w[c] / 30 if method == "gradcam" else w[c] / 30 * sums / (sums + 1e-7)
            np.testing.assert_allclose(details["weights"][0][i], weights, rtol=1e-5)
            cam = np.maximum((weights[:, None, None] * xs[i]).sum(0), 0)
            np.testing.assert_allclose(got[i], norm(norm(cam)), atol=1e-6)


# ------------------------------------------------------------------------------ tiny 2D conv net
@pytest.mark.parametrize("layer", ["relu2", "conv2"])
@pytest.mark.parametrize(("method", "eigen_smooth"), METHOD_SMOOTH)
def test_tiny_2d(tiny_2d, method, eigen_smooth, layer):
    model, x = tiny_2d
    assert_matches_reference(method, model, [getattr(model, layer)], x, [1, 3], eigen_smooth)


@pytest.mark.parametrize("method", ALL_METHODS)
def test_tiny_2d_two_layers_at_two_resolutions(tiny_2d, method):
    model, x = tiny_2d  # relu1: 12x16, the input's size (no resize); conv2: 6x8, negative values
    assert_matches_reference(method, model, [model.relu1, model.conv2], x, [1, 3])


def test_tiny_2d_targets_differ_per_image(tiny_2d):
    """The fixtures' two classes give different maps, so routing a target to the wrong image fails."""
    model, x = tiny_2d
    for method in CLASS_DEPENDENT:
        a = R.reference_cam(method, model, [model.conv2], x, [1, 3])
        b = R.reference_cam(method, model, [model.conv2], x, [3, 1])
        # ScoreCAM's softmax over near-equal scores makes it only weakly class-dependent here; still 100
        # times the tolerance of the comparisons.
        assert np.abs(a - b).max() > (1e-3 if method == "scorecam" else 0.3), method


@pytest.mark.parametrize("net", ["tiny_2d", "tiny_3d"])
def test_gradcam_and_gradcampp_differ(request, net):
    """A method wired to the other formula cannot pass: the two maps are far apart on these cases."""
    model, x = request.getfixturevalue(net)
    classes = [1, 3] if net == "tiny_2d" else [2, 4]
    for layer in (model.relu2, model.conv2):
        a = R.reference_cam("gradcam", model, [layer], x, classes)
        b = R.reference_cam("gradcam++", model, [layer], x, classes)
        assert np.abs(a - b).max() > 0.25
        for method, other in (("gradcam", b), ("gradcam++", a)):
            got = ours(method, model, [layer], x, classes)
            assert (got - torch.from_numpy(other)).abs().max() > 0.25


def test_gradcampp_with_exactly_zero_gradients(tiny_2d):
    """conv2 feeds a ReLU: wherever conv2 < 0 its gradient is exactly 0 (alpha must be 0 there)."""
    model, x = tiny_2d
    details = {}
    assert_matches_reference("gradcam++", model, [model.conv2], x, [1, 3], details=details)
    grads = details["gradients"][0]
    assert (grads == 0).mean() > 0.2
    assert (grads != 0).mean() > 0.2


def test_ablationcam_negative_activations_use_min_minus_1e7(tiny_2d_sigmoid, monkeypatch):
    """conv2 has negative values and feeds a sigmoid, so ablating a channel to 0, to its min or to
    min - 1e7 give three different maps; ours must be the min - 1e7 one."""
    model, x = tiny_2d_sigmoid
    details = {}
    want = assert_matches_reference("ablationcam", model, [model.conv2], x, [1, 3], details=details)
    assert (details["activations"][0].reshape(2, -1).min(1) < 0).all()
    for wrong in (lambda lowest: 0.0, lambda lowest: lowest):
        monkeypatch.setattr(R, "ablation_value", wrong)
        other = R.reference_cam("ablationcam", model, [model.conv2], x, [1, 3])
        assert np.abs(other - want).max() > 0.1


# --------------------------------------------------------------------------------- 1D and 3D nets
@pytest.mark.parametrize(
    ("method", "eigen_smooth"), [(m, False) for m in ALL_METHODS] + [(m, True) for m in GRADIENT_METHODS]
)
@pytest.mark.parametrize("net", ["tiny_1d", "tiny_3d"])
def test_tiny_1d_and_3d(request, net, method, eigen_smooth):
    model, x = request.getfixturevalue(net)
    assert_matches_reference(method, model, [model.conv2], x, [2, 4], eigen_smooth)


@pytest.mark.parametrize("method", ALL_METHODS)
@pytest.mark.parametrize("net", ["tiny_1d", "tiny_3d"])
def test_tiny_1d_and_3d_two_layers(request, net, method):
    model, x = request.getfixturevalue(net)
    assert_matches_reference(method, model, [model.relu1, model.relu2], x, [2, 4])


# -------------------------------------------------------------------------------------- resnet18
def resnet_input(batch, size, seed=7):
    return torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(seed))


# ScoreCAM and the naive reference AblationCAM cost one full forward pass per channel (512 in layer4,
# 256 more in layer3): those run on one 33x33 image (layer4 is then 2x2, layer3 3x3), ScoreCAM on layer4
# only and AblationCAM on the two-layer case only (which also covers its replay of the layers before
# each target layer).
# FEM is left out of these: layer4 is 2x2 here, and with N positions no value can exceed
# mean + sqrt(N - 1) * std, so its k = 2 threshold flags nothing and the map is zero by definition
# (the tiny nets, with 12x16 maps, cover it).
LAYER4_CASES = [
    (m, s) for m, s in METHOD_SMOOTH if m not in ("ablationcam", "fem") and not (m == "scorecam" and s)
]


@pytest.mark.parametrize(("method", "eigen_smooth"), LAYER4_CASES)
def test_resnet18_layer4(resnet18_seeded, method, eigen_smooth):
    model = resnet18_seeded
    x, classes = (resnet_input(1, 33), [7]) if method == "scorecam" else (resnet_input(2, 64), [3, 7])
    assert_matches_reference(method, model, [model.layer4[-1]], x, classes, eigen_smooth)


@pytest.mark.parametrize("method", [m for m in ALL_METHODS if m not in ("scorecam", "fem")])
def test_resnet18_layer3_and_layer4(resnet18_seeded, method):
    model = resnet18_seeded
    x, classes = (resnet_input(1, 33), [7]) if method == "ablationcam" else (resnet_input(2, 64), [3, 7])
    assert_matches_reference(method, model, [model.layer3[-1], model.layer4[-1]], x, classes)


# ------------------------------------------------------------------------- method-specific options
@pytest.mark.parametrize("kernel", ["linear", "rbf", "sigmoid", "poly", "cosine"])
def test_kpca_cam_kernels(tiny_2d, kernel):
    model, x = tiny_2d
    classes = [1, 3]
    layer = model.relu2
    data = R.activations_and_gradients(model, [layer], x, classes, with_gradients=False)
    component = R.kernel_principal_component(data["activations"][0], kernel=kernel)
    want = np.stack([R.resize(R.normalize(np.maximum(c, 0)), x.shape[2:]) for c in component])
    want = np.stack([R.normalize(w) for w in want])
    assert_nontrivial(want)
    got = METHODS["kpcacam"](model, target_layers=[layer], kernel=kernel)(x, targets=list(classes))
    torch.testing.assert_close(
        torch.from_numpy(got), torch.from_numpy(want.astype(np.float32)), atol=1e-5, rtol=1e-4
    )


def test_kpca_cam_rejects_bad_options(tiny_2d):
    model = tiny_2d[0]
    with pytest.raises(ValueError, match="kernel"):
        METHODS["kpcacam"](model, target_layers=[model.relu2], kernel="laplace")
    with pytest.raises(ValueError, match="gamma"):
        METHODS["kpcacam"](model, target_layers=[model.relu2], gamma=0)


def test_random_cam_is_random_unless_seeded(tiny_2d):
    model, x = tiny_2d
    make = lambda **kw: METHODS["randomcam"](model, target_layers=[model.relu2], **kw)  # noqa: E731
    with warnings.catch_warnings():
        # An unseeded draw may be all negative for an image (a constant map, warned): that is chance, not
        # what this test is about.
        warnings.filterwarnings("ignore", "the CAM of layer .* is constant for image", RuntimeWarning)
        first, second = make()(x), make()(x)
    assert np.abs(first - second).max() > 0.05, "two unseeded RandomCAMs drew the same weights"
    # Seeds 0 and 1 (not 3 and 4, whose draws are all negative for an image here: constant maps).
    np.testing.assert_array_equal(make(seed=0)(x), make(seed=0)(x))
    assert np.abs(make(seed=0)(x) - make(seed=1)(x)).max() > 0.05


def test_hirescam_warns_that_eigen_smoothing_gives_up_faithfulness(tiny_2d):
    model, x = tiny_2d
    classes = [1, 3]
    cam = METHODS["hirescam"](model, target_layers=[model.relu2])
    with pytest.warns(UserWarning, match="faithful") as record:
        cam(x, targets=list(classes), eigen_smooth=True)
    assert record[0].filename == __file__, "the warning should point at the caller's line"


def _scaled_head(model, scale):
    """A copy of ``model`` whose logits (and so every gradient) are ``scale`` times larger."""
    model = copy.deepcopy(model)
    with torch.no_grad():
        model.fc.weight.mul_(scale)
        model.fc.bias.mul_(scale)
    return model


def test_gradcampp_at_extreme_gradients_is_the_formula_not_nan(tiny_2d):
    """Logits x 1e30: the float32 g^2, g^3 of Grad-CAM++'s alpha overflow (inf / inf = NaN, an all-NaN map
    before); the ratio is computed in float64 there, as the reference does throughout."""
    model, x = tiny_2d
    model = _scaled_head(model, 1e30)
    assert_matches_reference("gradcam++", model, [model.conv3], x, [1, 3])


def test_smooth_gradcampp_at_extreme_gradients_is_the_formula_not_nan(tiny_2d):
    from pytorch_grad_cam import SmoothGradCAMPlusPlus

    model, x = tiny_2d
    model = _scaled_head(model, 1e30)
    want = R.reference_smooth_gradcampp(model, "conv3", x, [1, 3], 3, 0.2, seed=5)
    assert_nontrivial(want.numpy())
    got = SmoothGradCAMPlusPlus(model, [model.conv3], num_samples=3, std=0.2, seed=5)(x, targets=[1, 3])
    torch.testing.assert_close(torch.from_numpy(got), want.float(), atol=1e-5, rtol=1e-4)
