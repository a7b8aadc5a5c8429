"""The gradient family beyond the paper-formula table of test_formulas.py: Smooth Grad-CAM++ and ShapleyCAM
against plain references of their formulas (tests/references.py).

Also: layers that return a dict of tensors (FPN levels), ShapleyCAM through fused attention and
torchvision's RoIAlign (no double backward in torch), and (optional) grad-cam 1.5.7's ShapleyCAM.

The references are written out in plain torch (float64 copies of the models, forward hooks,
``torch.autograd.grad`` / ``torch.autograd.functional.hvp``, explicit loops over noisy samples) and
reuse nothing from the library. The fused map of one target layer is
``normalize(resize(normalize(relu(cam))))`` (per-layer normalisation, resize to the input, then the
final normalisation after fusing), as documented in ``BaseCAM``.
"""

import weakref

import numpy as np
import pytest
import torch

from pytorch_grad_cam import (
    CAM,
    METHODS,
    GradCAM,
    GradCAMPlusPlus,
    ShapleyCAM,
    SmoothGradCAMPlusPlus,
    SmoothGradCAMpp,
)
from pytorch_grad_cam.base_cam import DEFAULT_OPTIONS
from pytorch_grad_cam.utils.model_targets import (
    ClassifierOutputReST,
    ClassifierOutputTarget,
)
from tests.models import SplitNet, TinyAttentionNet, TinyRoINet, seeded_input
from tests.reference_library import REFERENCE_PATH, TESTS_DIR, needs_reference, run_reference
from tests.references import (
    acts_and_grads,
    double_copy,
    fd_shapley_weights,
    final_map,
    fuse,
    logit,
    reference_shapley_weights,
    reference_smooth_gradcampp,
    resized_layer_map,
    rest,
)
from tests.references import (
    assert_nontrivial_t as assert_nontrivial,
)
from tests.references import (
    normalize_t as normalize,
)
from tests.references import (
    weighted_sum_t as weighted_sum,
)

# ----------------------------------------------------------------------------------- plain helpers


# ============================================================================================== CAM


# ==================================================================================== Smooth Grad-CAM++


@pytest.mark.parametrize(("layer", "num_samples", "std"), [("relu2", 4, 0.3), ("conv2", 3, 0.15)])
def test_smooth_gradcampp_reference_2d(tiny_2d, layer, num_samples, std):
    model, x = tiny_2d
    want = reference_smooth_gradcampp(model, layer, x, [1, 3], num_samples, std, seed=11)
    assert_nontrivial(want)
    cam = SmoothGradCAMPlusPlus(
        model, [model.get_submodule(layer)], num_samples=num_samples, std=std, seed=11
    )
    got = cam(x, targets=[1, 3])
    torch.testing.assert_close(torch.from_numpy(got), want.float(), atol=1e-5, rtol=1e-4)
    # The noise really changes the map (it is not Grad-CAM++), and another seed changes it again.
    plain = GradCAMPlusPlus(model, [model.get_submodule(layer)])(x, targets=[1, 3])
    assert np.abs(got - plain).max() > 1e-2
    other = SmoothGradCAMPlusPlus(
        model, [model.get_submodule(layer)], num_samples=num_samples, std=std, seed=12
    )(x, targets=[1, 3])
    assert np.abs(got - other).max() > 1e-3


def test_smooth_gradcampp_reference_3d(tiny_3d):
    model, x = tiny_3d
    want = reference_smooth_gradcampp(model, "conv2", x, [0, 4], 2, 0.2, seed=3)
    assert_nontrivial(want)
    got = SmoothGradCAMPlusPlus(model, [model.conv2], num_samples=2, std=0.2, seed=3)(x, targets=[0, 4])
    torch.testing.assert_close(torch.from_numpy(got), want.float(), atol=1e-5, rtol=1e-4)


def test_smooth_gradcampp_fuses_its_layers_through_the_fuse_hook(tiny_2d):
    # Two layers from one noisy pass: the engine's per-layer maps, fused by fuse_layer_maps (the mean; a
    # subclass's own fusion, here the product of the normalised maps, replaces it).
    model, x = tiny_2d
    size = x.shape[2:]
    resized = [
        resized_layer_map(reference_smooth_gradcampp(model, name, x, [1, 3], 3, 0.3, 5, raw=True), size)
        for name in ("conv2", "relu3")
    ]
    mean = fuse(resized)
    product = normalize(normalize(resized[0]) * normalize(resized[1]))
    assert_nontrivial(mean)
    assert_nontrivial(product)
    assert (mean - product).abs().max() > 0.1

    class Product(SmoothGradCAMPlusPlus):
        def fuse_layer_maps(self, maps, options=DEFAULT_OPTIONS):
            return normalize(maps[0]) * normalize(maps[1])

    for cls, want in ((SmoothGradCAMPlusPlus, mean), (Product, product)):
        got = cls(model, [model.conv2, model.relu3], num_samples=3, std=0.3, seed=5)(x, targets=[1, 3])
        torch.testing.assert_close(torch.from_numpy(got), want.float(), atol=1e-5, rtol=1e-4)


def test_smooth_gradcampp_without_noise_is_gradcampp(tiny_2d):
    model, x = tiny_2d
    got = SmoothGradCAMPlusPlus(model, [model.relu2], num_samples=3, std=0.0)(x, targets=[1, 3])
    want = GradCAMPlusPlus(model, [model.relu2])(x, targets=[1, 3])
    assert_nontrivial(torch.from_numpy(want))
    np.testing.assert_allclose(got, want, atol=1e-6)


def test_smooth_gradcampp_seed_global_rng_and_one_noisy_batch(tiny_2d):
    model, x = tiny_2d
    sizes = []
    handle = model.conv1.register_forward_pre_hook(lambda m, inputs: sizes.append(inputs[0].shape[0]))
    try:
        torch.manual_seed(123)
        state = torch.get_rng_state()
        seeded = SmoothGradCAMPlusPlus(model, [model.relu2], num_samples=5, seed=4)
        a = seeded(x, targets=[1, 3])
        assert torch.equal(torch.get_rng_state(), state), "the global RNG state was used"
        assert sizes == [2, 10]  # the clean batch, then all 5 noisy copies of both images at once
        np.testing.assert_array_equal(a, seeded(x, targets=[1, 3]))  # same seed: same map every call
        unseeded = SmoothGradCAMPlusPlus(model, [model.relu2], num_samples=5)
        b, c = unseeded(x, targets=[1, 3]), unseeded(x, targets=[1, 3])
        assert torch.equal(torch.get_rng_state(), state)
        assert np.abs(b - c).max() > 1e-4  # fresh noise per call
    finally:
        handle.remove()
    assert SmoothGradCAMPlusPlus.deterministic is False
    assert SmoothGradCAMpp is SmoothGradCAMPlusPlus
    assert METHODS["smoothgradcam++"] is SmoothGradCAMPlusPlus


def test_smooth_gradcampp_argument_checks(tiny_2d):
    model, _ = tiny_2d
    layers = [model.relu2]
    for kwargs, error, pattern in (
        ({"num_samples": 0}, ValueError, r"num_samples must be an int >= 1, got 0"),
        ({"num_samples": 2.0}, TypeError, r"num_samples must be an int >= 1, got float"),
        ({"num_samples": True}, TypeError, r"num_samples must be an int >= 1, got bool"),
        ({"std": -0.1}, ValueError, r"std must be a finite float >= 0, got -0.1"),
        ({"std": float("nan")}, ValueError, r"std must be a finite float >= 0, got nan"),
        ({"std": "0.3"}, TypeError, r"std must be a finite float >= 0, got str"),
        ({"seed": 1.5}, TypeError, r"seed must be None or an int, got float"),
    ):
        with pytest.raises(error, match=pattern):
            SmoothGradCAMPlusPlus(model, layers, **kwargs)
    cam = SmoothGradCAMPlusPlus(model, layers, num_samples=np.int64(2), std=np.float32(0.1), seed=np.int64(3))
    assert (cam.num_samples, cam.seed) == (2, 3)
    assert abs(cam.std - 0.1) < 1e-6


# ========================================================================================== ShapleyCAM


def tail_after_conv2(model, a):
    return model.fc(model.relu3(model.conv3(model.relu2(a))).flatten(2).mean(-1))


def tail_after_relu2(model, a):
    return model.fc(model.relu3(model.conv3(a)).flatten(2).mean(-1))


def test_reference_hvp_agrees_with_finite_differences(tiny_2d_sigmoid):
    """Guards the reference: (g(A + hA) - g(A - hA)) / 2h == H A."""
    model, x = tiny_2d_sigmoid
    score = rest([1, 3])
    _, acts, _, hvp = reference_shapley_weights(model, "conv2", tail_after_conv2, x, score)
    m64 = double_copy(model)

    def grad_at(a):
        a = a.clone().requires_grad_(True)
        return torch.autograd.grad(score(tail_after_conv2(m64, a)).sum(), a)[0]

    h = 1e-5
    fd = (grad_at(acts * (1 + h)) - grad_at(acts * (1 - h))) / (2 * h)
    torch.testing.assert_close(hvp, fd, atol=1e-6, rtol=1e-4)
    assert hvp.abs().max() > 1e-3  # the sigmoid head is not linear: the correction is real


@pytest.mark.parametrize(
    ("net", "layer", "tail", "classes", "score"),
    [
        ("tiny_2d_sigmoid", "conv2", tail_after_conv2, [1, 3], "logit"),
        ("tiny_2d_sigmoid", "conv2", tail_after_conv2, [1, 3], "rest"),
        ("tiny_2d", "relu2", tail_after_relu2, [1, 3], "rest"),
    ],
)
def test_shapleycam_reference(request, net, layer, tail, classes, score):
    model, x = request.getfixturevalue(net)
    score_fn = logit(classes) if score == "logit" else rest(classes)
    w, acts, _, hvp = reference_shapley_weights(model, layer, tail, x, score_fn)
    assert hvp.abs().max() > 1e-3
    want = final_map(weighted_sum(w, acts), x.shape[2:])
    assert_nontrivial(want)
    targets = [ClassifierOutputTarget(c) if score == "logit" else ClassifierOutputReST(c) for c in classes]
    got = ShapleyCAM(model, [model.get_submodule(layer)])(x, targets=targets)
    torch.testing.assert_close(torch.from_numpy(got), want.float(), atol=1e-5, rtol=1e-4)
    # The Hessian term matters here: the map is not Grad-CAM's (by 200 times the tolerance above at least).
    gradcam = GradCAM(model, [model.get_submodule(layer)])(x, targets=targets)
    assert np.abs(got - gradcam).max() > 2e-3


def test_shapleycam_is_gradcam_where_the_head_is_linear(tiny_2d, tiny_1d):
    """relu3 -> mean -> fc with the logit as the score: the score is linear in the activations, H A = 0."""
    for (model, x), classes in ((tiny_2d, [1, 3]), (tiny_1d, [2, 4])):
        _, _, _, hvp = reference_shapley_weights(
            model, "relu3", lambda m, a: m.fc(a.flatten(2).mean(-1)), x, logit(classes)
        )
        assert hvp.abs().max() == 0
        got = ShapleyCAM(model, [model.relu3])(x, targets=classes)
        want = GradCAM(model, [model.relu3])(x, targets=classes)
        assert_nontrivial(torch.from_numpy(want))
        np.testing.assert_allclose(got, want, atol=1e-6)


def test_shapleycam_two_layers_and_resnet18(resnet18_seeded):
    """Two layers, each with its own product (layer3's H A is not mixed with layer4's); on resnet18
    with ReST (log-softmax makes the head non-linear)."""
    model = resnet18_seeded
    x = seeded_input(2, 3, 64, 64, seed=7)
    classes = [3, 7]
    m64 = double_copy(model)
    maps = []
    for name in ("layer3", "layer4"):
        layer = m64.get_submodule(name)
        acts, g, _ = acts_and_grads(m64, layer, x.double(), rest(classes))
        acts, g = acts.detach(), g.detach()

        def score_of(a, layer=layer):
            handle = layer.register_forward_hook(lambda m, i, o: a)  # replace the layer's output by a
            try:
                return rest(classes)(m64(x.double())).sum()
            finally:
                handle.remove()

        _, hvp = torch.autograd.functional.hvp(score_of, acts, v=acts)
        assert hvp.abs().max() > 1e-4
        w = (g - 0.5 * hvp).flatten(2).mean(-1)
        maps.append(resized_layer_map(weighted_sum(w, acts), x.shape[2:]))
    want = fuse(maps)
    assert_nontrivial(want)
    targets = [ClassifierOutputReST(c) for c in classes]
    got = ShapleyCAM(model, [model.layer3, model.layer4])(x, targets=targets)
    torch.testing.assert_close(torch.from_numpy(got), want.float(), atol=1e-5, rtol=1e-4)


def test_shapleycam_keeps_no_graph(tiny_2d_sigmoid):
    """The tensors of the (double-backward) graph are freed when the call returns, by reference counting
    alone (no reference cycle, nothing kept on the CAM object)."""
    model, x = tiny_2d_sigmoid
    refs = []
    handle = model.relu2.register_forward_hook(lambda m, i, o: refs.append(weakref.ref(o)))
    try:
        cam = ShapleyCAM(model, [model.conv2])
        attrs = set(vars(cam))
        cam(x, targets=[ClassifierOutputReST(1), ClassifierOutputReST(3)])
    finally:
        handle.remove()
    assert refs
    assert all(r() is None for r in refs)
    assert set(vars(cam)) == attrs
    assert all(p.grad is None for p in model.parameters())


# --------------------------------------------------------- optional: grad-cam 1.5.7's ShapleyCAM
DRIVER = r"""
import sys
import numpy as np, torch
import pytorch_grad_cam
from pytorch_grad_cam import ShapleyCAM
from pytorch_grad_cam.utils.model_targets import ClassifierOutputReST
sys.path.append(sys.argv[2])
from models import tiny_net, seeded_input
assert pytorch_grad_cam.__file__.startswith(sys.argv[3])
model = tiny_net(2, seed=0, act2=torch.nn.Sigmoid())
x = seeded_input(2, 3, 12, 16, seed=1)
maps = ShapleyCAM(model, [model.conv2])(x, targets=[ClassifierOutputReST(1), ClassifierOutputReST(3)])
np.save(sys.argv[1], maps)
"""


@needs_reference
def test_shapleycam_matches_reference_library(tiny_2d_sigmoid, tmp_path):
    model, x = tiny_2d_sigmoid
    out = tmp_path / "maps.npy"
    run_reference(DRIVER, out, TESTS_DIR, REFERENCE_PATH, cwd=tmp_path)
    theirs = np.load(out)
    ours = ShapleyCAM(model, [model.conv2])(x, targets=[ClassifierOutputReST(1), ClassifierOutputReST(3)])
    assert_nontrivial(torch.from_numpy(ours))
    np.testing.assert_allclose(ours, theirs, atol=1e-5)


def test_registry_names():
    assert METHODS["cam"] is CAM
    assert METHODS["shapleycam"] is ShapleyCAM
    assert METHODS["smoothgradcam++"] is SmoothGradCAMPlusPlus


# ================================================== layers that return a structure of tensors (FPN levels)
def concat_levels(levels):
    return torch.cat(list(levels.values()), 1)


def test_smooth_gradcampp_on_a_dict_of_levels(tiny_2d):
    """The dict layer with a concatenating reshape_transform is conv2 itself: the same map as the plain
    reference on conv2 of the tensor model."""
    model, x = tiny_2d
    want = reference_smooth_gradcampp(model, "conv2", x, [1, 3], 3, 0.15, seed=5)
    assert_nontrivial(want)
    split = SplitNet(model).eval()
    cam = SmoothGradCAMPlusPlus(
        split, [split.levels], reshape_transform=concat_levels, num_samples=3, std=0.15, seed=5
    )
    got = cam(x, targets=[1, 3])
    torch.testing.assert_close(torch.from_numpy(got), want.float(), atol=1e-5, rtol=1e-4)


def test_shapleycam_on_a_dict_of_levels(tiny_2d_sigmoid):
    model, x = tiny_2d_sigmoid
    score = rest([1, 3])
    w, acts, _, hvp = reference_shapley_weights(model, "conv2", tail_after_conv2, x, score)
    assert hvp.abs().max() > 1e-3
    want = final_map(weighted_sum(w, acts), x.shape[2:])
    assert_nontrivial(want)
    split = SplitNet(model).eval()
    got = ShapleyCAM(split, [split.levels], reshape_transform=concat_levels)(
        x, targets=[ClassifierOutputReST(1), ClassifierOutputReST(3)]
    )
    torch.testing.assert_close(torch.from_numpy(got), want.float(), atol=1e-5, rtol=1e-4)


# ==================================== ShapleyCAM through operations torch cannot differentiate twice


def sdpa_flags():
    b = torch.backends.cuda
    return (b.flash_sdp_enabled(), b.mem_efficient_sdp_enabled(), b.math_sdp_enabled(), b.cudnn_sdp_enabled())


def test_shapleycam_through_fused_attention():
    model = TinyAttentionNet().eval()
    x = seeded_input(2, 3, 8, 12, seed=3)
    score = rest([1, 2])
    # The premise: the fused CPU attention kernel refuses double backward.
    xr = x.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(score(model(xr)).sum(), xr, create_graph=True)
    with pytest.raises(RuntimeError):
        torch.autograd.grad(g.sum(), xr)
    w, acts, hvp = fd_shapley_weights(model, "patch", x, score)
    assert hvp.abs().max() > 1e-3  # attention is not linear in its input: the correction is real
    want = final_map(weighted_sum(w, acts), x.shape[2:])
    assert_nontrivial(want)
    before = sdpa_flags()
    targets = [ClassifierOutputReST(1), ClassifierOutputReST(2)]
    got = ShapleyCAM(model, [model.patch])(x, targets=targets)
    assert sdpa_flags() == before
    torch.testing.assert_close(torch.from_numpy(got), want.float(), atol=1e-4, rtol=1e-3)
    assert np.abs(got - GradCAM(model, [model.patch])(x, targets=targets)).max() > 1e-2
    # After an error the backend selection is restored too.

    def failing(output):
        raise KeyError("boom")

    with pytest.raises(KeyError):
        ShapleyCAM(model, [model.patch])(x, targets=[failing, failing])
    assert sdpa_flags() == before


def test_shapleycam_through_roi_align():
    import torchvision

    model = TinyRoINet().eval()
    x = seeded_input(2, 3, 8, 12, seed=4)
    score = logit([0, 2])
    # The premise: torchvision's RoIAlign refuses double backward.
    xr = x.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(score(model(xr)).sum(), xr, create_graph=True)
    with pytest.raises(RuntimeError, match="double backwards on roi_align"):
        torch.autograd.grad(g.sum(), xr)
    w, acts, hvp = fd_shapley_weights(model, "features", x, score)
    assert hvp.abs().max() > 1e-3
    want = final_map(weighted_sum(w, acts), x.shape[2:])
    assert_nontrivial(want)
    got = ShapleyCAM(model, [model.features])(x, targets=[0, 2])
    torch.testing.assert_close(torch.from_numpy(got), want.float(), atol=1e-4, rtol=1e-3)
    assert np.abs(got - GradCAM(model, [model.features])(x, targets=[0, 2])).max() > 1e-2
    # The substitution lasted only for the call: torchvision's own op is back.
    (g,) = torch.autograd.grad(score(model(xr)).sum(), xr, create_graph=True)
    with pytest.raises(RuntimeError, match="double backwards on roi_align"):
        torch.autograd.grad(g.sum(), xr)
    assert torchvision.ops.roi_align is not None


def test_twice_differentiable_roi_align_gradgradcheck():
    """The wrapper's first and second derivatives against finite differences (float64)."""
    from pytorch_grad_cam._engine.autograd import _RoIAlign

    feats = torch.randn(2, 3, 6, 7, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    feats.requires_grad_(True)
    rois = torch.tensor([[0, 0.5, 1.0, 4.5, 5.0], [1, 2.0, 0.0, 6.0, 3.5]], dtype=torch.float64)

    def f(t):
        return _RoIAlign.apply(t, rois, 1.0, 2, 3, 2, False)

    import torchvision

    torch.testing.assert_close(f(feats), torchvision.ops.roi_align(feats, rois, (2, 3), 1.0, 2, False))
    assert torch.autograd.gradcheck(f, (feats,))
    assert torch.autograd.gradgradcheck(f, (feats,))
