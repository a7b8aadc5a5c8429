"""CAM, Smooth Grad-CAM++, ShapleyCAM (and KPCA-CAM's numerics) against plain references of their formulas.

Also: layers that return a dict of tensors (FPN levels), ShapleyCAM through fused attention and
torchvision's RoIAlign (no double backward in torch), CAM's check that the head reads the pooled layer,
and KPCA-CAM on activations of order 1e-9 (against the kernel formula in 60-digit decimal arithmetic).

The references here are written out in plain torch (float64 copies of the models, forward hooks,
``torch.autograd.grad`` / ``torch.autograd.functional.hvp``, explicit loops over noisy samples) and
reuse nothing from the library. The fused map of one target layer is
``normalize(resize(normalize(relu(cam))))`` (per-layer normalisation, resize to the input, then the
final normalisation after fusing), as documented in ``BaseCAM``.
"""
import copy
import weakref

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from pytorch_grad_cam import (
    CAM,
    METHODS,
    GradCAM,
    GradCAMPlusPlus,
    ShapleyCAM,
    SmoothGradCAMPlusPlus,
    SmoothGradCAMpp,
)
from pytorch_grad_cam.utils.model_targets import (
    ClassifierOutputReST,
    ClassifierOutputSoftmaxTarget,
    ClassifierOutputTarget,
)
from tests.models import seeded_input
from tests.reference_library import REFERENCE_PATH, TESTS_DIR, needs_reference, run_reference

EPS = 1e-7


# ----------------------------------------------------------------------------------- plain helpers
def normalize(maps):
    """Per image min-max over all positions, ``(B, *spatial)``."""
    flat = maps.reshape(maps.shape[0], -1)
    flat = flat - flat.min(1, keepdim=True).values
    return (flat / (flat.max(1, keepdim=True).values + EPS)).reshape(maps.shape)


def resized_layer_map(cam, size):
    """One layer's raw ``sum_k w_k A_k`` ``(B, *grid)`` -> normalised and resized to ``(B, *size)``."""
    mode = {1: "linear", 2: "bilinear", 3: "trilinear"}[cam.ndim - 1]
    layer = normalize(cam.clamp(min=0))
    return F.interpolate(layer[:, None], size=tuple(size), mode=mode, align_corners=False)[:, 0]


def fuse(layer_maps):
    """Resized per-layer maps -> the method's output: relu, mean over layers, normalise."""
    return normalize(torch.stack(layer_maps, 1).clamp(min=0).mean(1))


def final_map(cam, size):
    """The output of a method with one target layer, from that layer's raw map."""
    return fuse([resized_layer_map(cam, size)])


def weighted_sum(weights, acts):
    return (weights.reshape(*weights.shape, *[1] * (acts.ndim - 2)) * acts).sum(1)


def assert_nontrivial(maps):
    flat = maps.reshape(maps.shape[0], -1)
    assert (flat.max(1).values > 0.99).all(), "degenerate case: a reference map is all zeros"
    assert (flat.std(1) > 0.05).all(), "degenerate case: a reference map is nearly flat"


def acts_and_grads(model, layer, x, score_fn, create_graph=False):
    """Activations of ``layer`` and d(sum of scores)/d(activations), on a float64 copy of everything.

    ``score_fn(output) -> (B,)``. With ``create_graph`` the gradient stays differentiable."""
    store = {}

    def hook(module, inputs, output):
        store["a"] = output

    handle = layer.register_forward_hook(hook)
    try:
        out = model(x)
    finally:
        handle.remove()
    (grad,) = torch.autograd.grad(score_fn(out).sum(), store["a"], create_graph=create_graph)
    return store["a"], grad, out


def double_copy(model):
    return copy.deepcopy(model).double().eval()


def logit(classes):
    return lambda out: out[torch.arange(out.shape[0]), torch.tensor(classes)]


def rest(classes):
    idx = torch.arange(len(classes)), torch.tensor(classes)
    return lambda out: out[idx] + torch.log_softmax(out, -1)[idx]


# ============================================================================================== CAM
def test_cam_reference_on_tiny_nets(tiny_2d, tiny_1d, tiny_3d):
    for (model, x), classes in ((tiny_2d, [1, 3]), (tiny_1d, [2, 4]), (tiny_3d, [0, 4])):
        m64 = double_copy(model)
        acts, _, _ = acts_and_grads(m64, m64.relu3, x.double(), logit(classes))
        w = m64.fc.weight.detach()[classes]  # (B, C)
        want = final_map(weighted_sum(w, acts.detach()), x.shape[2:])
        assert_nontrivial(want)
        got = CAM(model, target_layers=[model.relu3])(x, targets=classes)
        torch.testing.assert_close(torch.from_numpy(got), want.float(), atol=1e-5, rtol=1e-4)


def test_cam_equals_gradcam_for_gap_linear_head(tiny_2d):
    """relu3 -> mean over positions -> fc: dy_c/dA = W[c] / N everywhere, so Grad-CAM's weights are
    W[c] / N and its map is CAM's up to the factor 1 / N, which normalisation removes."""
    model, x = tiny_2d
    classes = [1, 3]
    m64 = double_copy(model)
    acts, grads, _ = acts_and_grads(m64, m64.relu3, x.double(), logit(classes))
    n = acts[0, 0].numel()
    expected = m64.fc.weight.detach()[classes][:, :, None, None].expand_as(grads) / n
    torch.testing.assert_close(grads, expected)  # the theory the equality rests on
    cam = CAM(model, target_layers=[model.relu3])(x, targets=classes)
    gradcam = GradCAM(model, target_layers=[model.relu3])(x, targets=classes)
    assert_nontrivial(torch.from_numpy(cam))
    np.testing.assert_allclose(cam, gradcam, atol=1e-5)
    other = CAM(model, target_layers=[model.relu3])(x, targets=[3, 1])
    assert np.abs(other - cam).max() > 0.3  # the class matters


def test_cam_resnet18_finds_fc(resnet18_seeded):
    model = resnet18_seeded
    x = seeded_input(2, 3, 64, 64, seed=7)
    cam = CAM(model, target_layers=[model.layer4[-1]])
    assert cam.fc_layer is model.fc
    got = cam(x, targets=[3, 7])
    m64 = double_copy(model)
    store = {}
    handle = m64.layer4[-1].register_forward_hook(lambda m, i, o: store.__setitem__("a", o))
    with torch.no_grad():
        m64(x.double())
    handle.remove()
    want = final_map(weighted_sum(m64.fc.weight[[3, 7]], store["a"]), x.shape[2:])
    assert_nontrivial(want)
    torch.testing.assert_close(torch.from_numpy(got), want.float(), atol=1e-5, rtol=1e-4)
    # resnet ends in global average pooling + fc after layer4: CAM == Grad-CAM.
    np.testing.assert_allclose(got, GradCAM(model, [model.layer4[-1]])(x, targets=[3, 7]), atol=1e-5)


class TwoHeads(nn.Module):
    """Two linear layers; the one after the features is not the last one registered."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(5)
        self.features = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.ReLU())
        self.classifier = nn.Linear(6, 4)
        self.aux = nn.Linear(4, 2)  # last nn.Linear of model.modules(), 4 inputs

    def forward(self, x):
        logits = self.classifier(self.features(x).mean((2, 3)))
        self.aux(logits)  # computed and thrown away
        return logits


def test_cam_fc_layer_by_name_or_module_and_errors():
    model = TwoHeads().eval()
    x = seeded_input(2, 3, 8, 8, seed=0)
    layers = [model.features]
    # Found automatically: `aux` (4 inputs) does not fit the 6-channel layer; the error names both.
    with pytest.raises(ValueError, match=r"'aux' has in_features=4 .*'features' has 6 channels"):
        CAM(model, layers)(x, targets=[0, 2])
    by_name = CAM(model, layers, fc_layer="classifier")
    assert by_name.fc_layer is model.classifier
    by_module = CAM(model, layers, fc_layer=model.classifier)
    got = by_name(x, targets=[0, 2])
    np.testing.assert_array_equal(got, by_module(x, targets=[0, 2]))
    np.testing.assert_allclose(got, GradCAM(model, layers)(x, targets=[0, 2]), atol=1e-5)
    assert_nontrivial(torch.from_numpy(got))

    with pytest.raises(ValueError, match=r"fc_layer='nope' is not a module of the model"):
        CAM(model, layers, fc_layer="nope")
    with pytest.raises(ValueError, match=r"fc_layer \(Linear\) is not a module of the model"):
        CAM(model, layers, fc_layer=nn.Linear(6, 4))
    with pytest.raises(TypeError, match=r"fc_layer must be an nn.Linear .*got Sequential"):
        CAM(model, layers, fc_layer="features")
    with pytest.raises(TypeError, match=r"fc_layer must be None, a module .*got int"):
        CAM(model, layers, fc_layer=3)
    no_linear = nn.Sequential(nn.Conv2d(3, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten())
    with pytest.raises(ValueError, match=r"no nn.Linear module; pass fc_layer="):
        CAM(no_linear, [no_linear[0]])
    cam = CAM(model, layers, fc_layer="classifier")
    with pytest.raises(TypeError, match=r"targets\[0\] is ClassifierOutputSoftmaxTarget.*CAM needs class "
                                        r"indices"):
        cam(x, targets=[ClassifierOutputSoftmaxTarget(0), 1])
    with pytest.raises(TypeError, match=r"CAM needs class indices"):
        cam(x, targets=lambda out: out[0])
    assert CAM.uses_gradients is False and METHODS["cam"] is CAM


def test_cam_targets_none_is_top_class(tiny_2d):
    model, x = tiny_2d
    top = model(x).argmax(-1).tolist()
    cam = CAM(model, [model.relu3])
    np.testing.assert_array_equal(cam(x), cam(x, targets=top))


# ==================================================================================== Smooth Grad-CAM++
def reference_smooth_gradcampp(model, layer_name, x, classes, num_samples, std, seed, raw=False):
    """The paper's recipe, sample by sample: D^n = mean over noisy copies of g^n (n = 1, 2, 3),
    alpha = D2 / (2 D2 + sum(A) D3), w = sum relu(D1) alpha, A from the clean input. The noise is the
    class docstring's recipe. ``raw``: the layer's ``sum_k w_k A_k`` instead of the method's output."""
    m64 = double_copy(model)
    layer = m64.get_submodule(layer_name)
    x64 = x.double()
    eps = torch.randn((num_samples, *x.shape), generator=torch.Generator().manual_seed(seed))
    sigma = std * (x64.flatten(1).max(1).values - x64.flatten(1).min(1).values)  # (B,)
    d1 = d2 = d3 = 0
    for s in range(num_samples):
        noisy = x64 + sigma.reshape(-1, *[1] * (x.ndim - 1)) * eps[s].double()
        _, g, _ = acts_and_grads(m64, layer, noisy, logit(classes))
        d1, d2, d3 = d1 + g / num_samples, d2 + g ** 2 / num_samples, d3 + g ** 3 / num_samples
    acts, _, _ = acts_and_grads(m64, layer, x64, logit(classes))
    acts = acts.detach()
    sum_a = acts.flatten(2).sum(-1).reshape(*acts.shape[:2], *[1] * (acts.ndim - 2))
    alpha = d2 / (2 * d2 + sum_a * d3 + 1e-6)
    alpha = torch.where(d2 != 0, alpha, torch.zeros_like(alpha))
    w = (d1.clamp(min=0) * alpha).flatten(2).sum(-1)
    return weighted_sum(w, acts) if raw else final_map(weighted_sum(w, acts), x.shape[2:])


@pytest.mark.parametrize("layer,num_samples,std", [("relu2", 4, 0.3), ("conv2", 3, 0.15)])
def test_smooth_gradcampp_reference_2d(tiny_2d, layer, num_samples, std):
    model, x = tiny_2d
    want = reference_smooth_gradcampp(model, layer, x, [1, 3], num_samples, std, seed=11)
    assert_nontrivial(want)
    cam = SmoothGradCAMPlusPlus(model, [model.get_submodule(layer)], num_samples=num_samples, std=std,
                                seed=11)
    got = cam(x, targets=[1, 3])
    torch.testing.assert_close(torch.from_numpy(got), want.float(), atol=1e-5, rtol=1e-4)
    # The noise really changes the map (it is not Grad-CAM++), and another seed changes it again.
    plain = GradCAMPlusPlus(model, [model.get_submodule(layer)])(x, targets=[1, 3])
    assert np.abs(got - plain).max() > 1e-2
    other = SmoothGradCAMPlusPlus(model, [model.get_submodule(layer)], num_samples=num_samples, std=std,
                                  seed=12)(x, targets=[1, 3])
    assert np.abs(got - other).max() > 1e-3


def test_smooth_gradcampp_reference_3d(tiny_3d):
    model, x = tiny_3d
    want = reference_smooth_gradcampp(model, "conv2", x, [0, 4], 2, 0.2, seed=3)
    assert_nontrivial(want)
    got = SmoothGradCAMPlusPlus(model, [model.conv2], num_samples=2, std=0.2, seed=3)(x, targets=[0, 4])
    torch.testing.assert_close(torch.from_numpy(got), want.float(), atol=1e-5, rtol=1e-4)


def test_smooth_gradcampp_fuses_its_layers_through_the_fuse_hook(tiny_2d):
    # Two layers from one noisy pass: the engine's per-layer maps, fused by _fuse (the mean by default; a
    # subclass's own fusion, here the product of the normalised maps, replaces it).
    model, x = tiny_2d
    size = x.shape[2:]
    resized = [resized_layer_map(reference_smooth_gradcampp(model, name, x, [1, 3], 3, 0.3, 5, raw=True),
                                 size) for name in ("conv2", "relu3")]
    mean = fuse(resized)
    product = normalize(normalize(resized[0]) * normalize(resized[1]))
    assert_nontrivial(mean)
    assert_nontrivial(product)
    assert (mean - product).abs().max() > 0.1

    class Product(SmoothGradCAMPlusPlus):
        def _fuse(self, maps):
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
    assert SmoothGradCAMpp is SmoothGradCAMPlusPlus and METHODS["smoothgradcam++"] is SmoothGradCAMPlusPlus


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
    assert (cam.num_samples, cam.seed) == (2, 3) and abs(cam.std - 0.1) < 1e-6


# ========================================================================================== ShapleyCAM
def reference_shapley_weights(model, layer_name, tail, x, score_fn):
    """w = mean_positions(g - 0.5 * H A) with H A from torch.autograd.functional.hvp of the score as a
    function of the layer's activations (``tail``: activations -> model output), in float64."""
    m64 = double_copy(model)
    acts, g, _ = acts_and_grads(m64, m64.get_submodule(layer_name), x.double(), score_fn)
    acts, g = acts.detach(), g.detach()
    _, hvp = torch.autograd.functional.hvp(lambda a: score_fn(tail(m64, a)).sum(), acts, v=acts)
    return (g - 0.5 * hvp).flatten(2).mean(-1), acts, g, hvp


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


@pytest.mark.parametrize("net,layer,tail,classes,score", [
    ("tiny_2d_sigmoid", "conv2", tail_after_conv2, [1, 3], "logit"),
    ("tiny_2d_sigmoid", "conv2", tail_after_conv2, [1, 3], "rest"),
    ("tiny_2d", "relu2", tail_after_relu2, [1, 3], "rest"),
])
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
        _, _, _, hvp = reference_shapley_weights(model, "relu3", lambda m, a: m.fc(a.flatten(2).mean(-1)),
                                                 x, logit(classes))
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
    assert refs and all(r() is None for r in refs)
    assert set(vars(cam)) == attrs
    assert all(p.grad is None for p in model.parameters())


# --------------------------------------------------------- optional: grad-cam 1.5.7's ShapleyCAM
DRIVER = r'''
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
'''


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
    assert METHODS["cam"] is CAM and METHODS["shapleycam"] is ShapleyCAM
    assert METHODS["smoothgradcam++"] is SmoothGradCAMPlusPlus


# ================================================== layers that return a structure of tensors (FPN levels)
class SplitLevels(nn.Module):
    """conv2's output as two "levels" ``{"p0": channels 0-2, "p1": channels 3-5}``, like an FPN's dict."""

    def __init__(self, conv: nn.Module) -> None:
        super().__init__()
        self.conv = conv

    def forward(self, a):
        y = self.conv(a)
        return {"p0": y[:, :3], "p1": y[:, 3:]}


class SplitNet(nn.Module):
    """``TinyConvNet`` (its own modules) with conv2 returning a dict of two levels, concatenated again."""

    def __init__(self, tiny: nn.Module) -> None:
        super().__init__()
        self.tiny = tiny
        self.levels = SplitLevels(tiny.conv2)

    def forward(self, x):
        t = self.tiny
        levels = self.levels(t.relu1(t.conv1(x)))
        y = t.relu2(torch.cat([levels["p0"], levels["p1"]], 1))
        return t.fc(t.relu3(t.conv3(y)).flatten(2).mean(-1))


def concat_levels(levels):
    return torch.cat(list(levels.values()), 1)


def test_smooth_gradcampp_on_a_dict_of_levels(tiny_2d):
    """The dict layer with a concatenating reshape_transform is conv2 itself: the same map as the plain
    reference on conv2 of the tensor model."""
    model, x = tiny_2d
    want = reference_smooth_gradcampp(model, "conv2", x, [1, 3], 3, 0.15, seed=5)
    assert_nontrivial(want)
    split = SplitNet(model).eval()
    cam = SmoothGradCAMPlusPlus(split, [split.levels], reshape_transform=concat_levels, num_samples=3,
                                std=0.15, seed=5)
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
        x, targets=[ClassifierOutputReST(1), ClassifierOutputReST(3)])
    torch.testing.assert_close(torch.from_numpy(got), want.float(), atol=1e-5, rtol=1e-4)


# ==================================== ShapleyCAM through operations torch cannot differentiate twice
def fd_shapley_weights(model, layer, x, score_fn, h=1e-5):
    """w = mean_positions(g - 0.5 * H A), H A by central differences of the gradient along A:
    (g(A (1 + h)) - g(A (1 - h))) / 2h, in float64. Only first derivatives: any attention kernel will do."""
    m64 = double_copy(model)
    target = m64.get_submodule(layer)
    acts, g, _ = acts_and_grads(m64, target, x.double(), score_fn)
    acts, g = acts.detach(), g.detach()

    def grad_at(a):
        a = a.clone().requires_grad_(True)
        handle = target.register_forward_hook(lambda m, i, o: a)  # the layer's output replaced by a
        try:
            return torch.autograd.grad(score_fn(m64(x.double())).sum(), a)[0]
        finally:
            handle.remove()

    hvp = (grad_at(acts * (1 + h)) - grad_at(acts * (1 - h))) / (2 * h)
    return (g - 0.5 * hvp).flatten(2).mean(-1), acts, hvp


class TinyAttentionNet(nn.Module):
    """Patch conv (target) -> tokens -> one head of F.scaled_dot_product_attention -> mean -> linear."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.patch = nn.Conv2d(3, 8, 2, stride=2)
        self.qkv = nn.Linear(8, 24)
        self.fc = nn.Linear(8, 4)

    def forward(self, x):
        tokens = self.patch(x).flatten(2).transpose(1, 2)  # (B, N, 8)
        q, k, v = self.qkv(tokens).unsqueeze(1).chunk(3, -1)  # (B, 1, N, 8) each
        mixed = torch.nn.functional.scaled_dot_product_attention(q, k, v)[:, 0]  # (B, N, 8)
        return self.fc(mixed.mean(1))


def sdpa_flags():
    b = torch.backends.cuda
    return (b.flash_sdp_enabled(), b.mem_efficient_sdp_enabled(), b.math_sdp_enabled(),
            b.cudnn_sdp_enabled())


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


class TinyRoINet(nn.Module):
    """conv features (target) -> torchvision RoIAlign on fixed boxes -> sigmoid -> linear, per image."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(1)
        self.features = nn.Conv2d(3, 4, 3, padding=1)
        self.fc = nn.Linear(4 * 2 * 2 * 2, 3)
        self.register_buffer("boxes", torch.tensor([[1.0, 1.0, 6.5, 5.0], [3.0, 2.0, 11.0, 7.5]]))
        with torch.no_grad():  # pre-activations of order 1: the sigmoid is not linear there
            self.features.weight.mul_(4)
            self.fc.weight.mul_(5)

    def forward(self, x):
        import torchvision

        f = self.features(x)
        rois = [self.boxes.to(f.dtype)] * x.shape[0]
        pooled = torchvision.ops.roi_align(f, rois, output_size=2, sampling_ratio=2)  # (B * 2, 4, 2, 2)
        return self.fc(torch.sigmoid(pooled).reshape(x.shape[0], -1))


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
    from pytorch_grad_cam.gradient import _RoIAlign

    feats = torch.randn(2, 3, 6, 7, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    feats.requires_grad_(True)
    rois = torch.tensor([[0, 0.5, 1.0, 4.5, 5.0], [1, 2.0, 0.0, 6.0, 3.5]], dtype=torch.float64)

    def f(t):
        return _RoIAlign.apply(t, rois, 1.0, 2, 3, 2, False)

    import torchvision
    torch.testing.assert_close(f(feats), torchvision.ops.roi_align(feats, rois, (2, 3), 1.0, 2, False))
    assert torch.autograd.gradcheck(f, (feats,))
    assert torch.autograd.gradgradcheck(f, (feats,))


# ============================================================ CAM: the head must read the pooled layer
def test_cam_warns_when_the_head_does_not_read_the_pooled_layer(tiny_2d):
    import warnings

    from torchvision.models import VisionTransformer

    from pytorch_grad_cam.utils import vit_reshape_transform

    torch.manual_seed(0)
    vit = VisionTransformer(image_size=16, patch_size=4, num_layers=1, num_heads=1, hidden_dim=8,
                            mlp_dim=16, num_classes=3).eval()
    with torch.no_grad():  # torchvision's zero-initialised head would give a zero (constant) map
        vit.heads.head.weight.normal_(0.0, 1.0)
    x = seeded_input(2, 3, 16, 16, seed=2)
    # The head reads the class token, not the mean of the patch tokens: warned, at the caller's line.
    expected = (r"input of the linear layer 'heads.head' is not the spatial average of target layer "
                r"'encoder.layers.encoder_layer_0.ln_1'")
    with pytest.warns(UserWarning, match=expected) as rec:
        CAM(vit, [vit.encoder.layers[0].ln_1], reshape_transform=vit_reshape_transform)(x, targets=[0, 1])
    assert [r.filename for r in rec if "linear layer" in str(r.message)] == [__file__]
    # A layer before the ReLU that comes before the pooling: warned.
    model, x = tiny_2d
    with pytest.warns(UserWarning, match="is not the spatial average of target layer 'conv3'"):
        CAM(model, [model.conv3])(x, targets=[1, 3])
    # The pooled layer itself: no warning at all.
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        CAM(model, [model.relu3])(x, targets=[1, 3])


class SumPoolNet(nn.Module):
    """features -> sum over positions (not mean) -> linear: the head's input is N times the mean."""

    def __init__(self, tiny: nn.Module) -> None:
        super().__init__()
        self.tiny = tiny

    def forward(self, x):
        t = self.tiny
        a = t.relu3(t.conv3(t.relu2(t.conv2(t.relu1(t.conv1(x))))))
        return t.fc(a.flatten(2).sum(-1))


def test_cam_accepts_a_head_fed_by_a_multiple_of_the_mean(tiny_2d):
    import warnings

    model, x = tiny_2d
    net = SumPoolNet(model).eval()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        got = CAM(net, [model.relu3])(x, targets=[1, 3])
    np.testing.assert_allclose(got, CAM(model, [model.relu3])(x, targets=[1, 3]), atol=1e-6)


# ======================================================= KPCA-CAM on small activations (projection.py)
def decimal_kernel_component(acts, kernel, gamma, degree=3, coef0=1.0, digits=60):
    """KPCA-CAM's component written with scikit-learn's kernels as they are (``tanh(g x.y + c)``,
    ``exp(-g |x - y|^2)``, ``(g x.y + c)^d``), evaluated and double-centred in 60-digit decimal arithmetic,
    then the top eigenpair in float64: sqrt(lambda_1) alpha_1, sign by the channel sum. (B, *grid)."""
    from decimal import Decimal, localcontext

    out = np.zeros((acts.shape[0],) + tuple(acts.shape[2:]))
    with localcontext() as ctx:
        ctx.prec = digits
        g, c = Decimal(repr(gamma)), Decimal(repr(coef0))
        for b in range(acts.shape[0]):
            a = acts[b].double().reshape(acts.shape[1], -1).T.tolist()  # (N, C)
            n, ch = len(a), len(a[0])
            X = [[Decimal(repr(v)) for v in row] for row in a]
            means = [sum(X[i][k] for i in range(n)) / n for k in range(ch)]
            X = [[X[i][k] - means[k] for k in range(ch)] for i in range(n)]

            K = [[_decimal_entry(X[i], X[j], kernel, g, c, degree) for j in range(n)] for i in range(n)]
            row = [sum(K[i]) / n for i in range(n)]
            total = sum(row) / n
            centred = np.array([[float(K[i][j] - row[i] - row[j] + total) for j in range(n)]
                                for i in range(n)])
            values, vectors = np.linalg.eigh(centred)
            projection = vectors[:, -1] * np.sqrt(max(values[-1], 0.0))
            channel_sum = acts[b].double().sum(0).reshape(-1).numpy()
            if (projection * (channel_sum - channel_sum.mean())).sum() < 0:
                projection = -projection
            out[b] = projection.reshape(acts.shape[2:])
    return torch.from_numpy(out)


def _decimal_entry(xi, xj, kernel, g, c, degree):
    if kernel == "sigmoid":
        e = (2 * (g * sum(a * b for a, b in zip(xi, xj)) + c)).exp()
        return (e - 1) / (e + 1)
    if kernel == "rbf":
        return (-g * sum((a - b) ** 2 for a, b in zip(xi, xj))).exp()
    return (g * sum(a * b for a, b in zip(xi, xj)) + c) ** degree


@pytest.mark.parametrize("kernel", ["sigmoid", "rbf", "poly"])
def test_kpca_cam_on_small_activations(tiny_2d, kernel):
    """Activations of order 1e-9 (randomly initialised deep nets have such layers): g x.y ~ 1e-18 is lost
    next to coef0 = 1 in float64 when the kernel is computed as written, and the map was flat. Against the
    same formula in 60-digit arithmetic."""
    from pytorch_grad_cam import KPCA_CAM

    model, x = tiny_2d
    model = copy.deepcopy(model)
    with torch.no_grad():  # relu2 = relu(conv2) scaled by 1e-9
        model.conv2.weight.mul_(1e-9)
        model.conv2.bias.mul_(1e-9)
    store = {}
    handle = model.relu2.register_forward_hook(lambda m, i, o: store.__setitem__("a", o.detach()))
    with torch.no_grad():
        model(x)
    handle.remove()
    acts = store["a"]  # (2, 6, 6, 8)
    assert 1e-11 < acts.abs().max() < 1e-8
    gamma = 1.0 / acts.shape[1]
    # The premise: the float64 kernel as written is one number everywhere (the flat map).
    rows = acts.double().flatten(2).transpose(1, 2)
    rows = rows - rows.mean(1, keepdim=True)
    dots = rows @ rows.transpose(1, 2)
    plain = {"sigmoid": torch.tanh(gamma * dots + 1),
             "rbf": torch.exp(-gamma * torch.cdist(rows, rows) ** 2),
             "poly": (gamma * dots + 1) ** 3}[kernel]
    assert (plain == plain.flatten(1)[:, :1, None]).all()
    component = decimal_kernel_component(acts, kernel, gamma)
    want = final_map(component, x.shape[2:])
    assert_nontrivial(want)
    got = KPCA_CAM(model, [model.relu2], kernel=kernel)(x)
    torch.testing.assert_close(torch.from_numpy(got), want.float(), atol=1e-4, rtol=1e-3)


def test_kpca_cam_closed_forms_agree_with_decimal_at_order_one(tiny_2d):
    """Where the kernel is far from its constant (|g x.y| > 1 for some pairs, both branches of the sigmoid
    form), the closed forms equal the formula in 60-digit arithmetic."""
    from pytorch_grad_cam import KPCA_CAM

    model, x = tiny_2d
    store = {}
    handle = model.relu2.register_forward_hook(lambda m, i, o: store.__setitem__("a", o.detach()))
    with torch.no_grad():
        model(x)
    handle.remove()
    acts = store["a"]
    rows = acts.double().flatten(2).transpose(1, 2)
    rows = rows - rows.mean(1, keepdim=True)
    gamma, coef0 = 20.0, -0.5
    assert (gamma * (rows @ rows.transpose(1, 2))).abs().max() > 1
    for kernel, degree in (("sigmoid", 3), ("poly", 2)):
        want = final_map(decimal_kernel_component(acts, kernel, gamma, degree, coef0), x.shape[2:])
        assert_nontrivial(want)
        got = KPCA_CAM(model, [model.relu2], kernel=kernel, gamma=gamma, degree=degree, coef0=coef0)(x)
        torch.testing.assert_close(torch.from_numpy(got), want.float(), atol=1e-5, rtol=1e-4)


def test_kpca_cam_degree_checks(tiny_2d):
    from pytorch_grad_cam import KPCA_CAM

    model = tiny_2d[0]
    with pytest.raises(ValueError, match="degree must be an int >= 1 .* got 0"):
        KPCA_CAM(model, [model.relu2], kernel="poly", degree=0)
    with pytest.raises(TypeError, match="degree must be an int >= 1 .* got float"):
        KPCA_CAM(model, [model.relu2], kernel="poly", degree=2.5)
