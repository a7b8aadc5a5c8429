"""CAM, Smooth Grad-CAM++ and ShapleyCAM against plain references of their formulas.

The references here are written out in plain torch (float64 copies of the models, forward hooks,
``torch.autograd.grad`` / ``torch.autograd.functional.hvp``, explicit loops over noisy samples) and
reuse nothing from the library. The fused map of one target layer is
``normalize(resize(normalize(relu(cam))))`` (per-layer normalisation, resize to the input, then the
final normalisation after fusing), as documented in ``BaseCAM``.
"""
import copy
import os
import subprocess
import sys
import weakref
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import seeded_input
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
def reference_smooth_gradcampp(model, layer_name, x, classes, num_samples, std, seed):
    """The paper's recipe, sample by sample: D^n = mean over noisy copies of g^n (n = 1, 2, 3),
    alpha = D2 / (2 D2 + sum(A) D3), w = sum relu(D1) alpha, A from the clean input. The noise is the
    class docstring's recipe."""
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
    return final_map(weighted_sum(w, acts), x.shape[2:])


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
        ({"std": -0.1}, ValueError, r"std must be a non-negative finite float, got -0.1"),
        ({"std": float("nan")}, ValueError, r"std must be a non-negative finite float, got nan"),
        ({"std": "0.3"}, TypeError, r"std must be a non-negative float, got str"),
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
REFERENCE_PATH = Path(os.environ.get("GRAD_CAM_REFERENCE_PATH") or "/work/refcam")
DRIVER = r'''
import sys
import numpy as np, torch
import pytorch_grad_cam
from pytorch_grad_cam import ShapleyCAM
from pytorch_grad_cam.utils.model_targets import ClassifierOutputReST
sys.path.append(sys.argv[2])
from conftest import tiny_net, seeded_input
assert pytorch_grad_cam.__file__.startswith(sys.argv[3])
model = tiny_net(2, seed=0, act2=torch.nn.Sigmoid())
x = seeded_input(2, 3, 12, 16, seed=1)
maps = ShapleyCAM(model, [model.conv2])(x, targets=[ClassifierOutputReST(1), ClassifierOutputReST(3)])
np.save(sys.argv[1], maps)
'''


@pytest.mark.skipif(not (REFERENCE_PATH / "pytorch_grad_cam" / "__init__.py").is_file(),
                    reason="grad-cam 1.5.7 not available (set GRAD_CAM_REFERENCE_PATH)")
def test_shapleycam_matches_reference_library(tiny_2d_sigmoid, tmp_path):
    model, x = tiny_2d_sigmoid
    out = tmp_path / "maps.npy"
    run = subprocess.run([sys.executable, "-c", DRIVER, str(out), str(Path(__file__).parent),
                          str(REFERENCE_PATH)], capture_output=True, text=True, cwd=tmp_path,
                         env={**os.environ, "PYTHONPATH": str(REFERENCE_PATH)})
    if run.returncode != 0:
        pytest.skip(f"the reference library did not run: {run.stderr.strip().splitlines()[-1:]}")
    theirs = np.load(out)
    ours = ShapleyCAM(model, [model.conv2])(x, targets=[ClassifierOutputReST(1), ClassifierOutputReST(3)])
    assert_nontrivial(torch.from_numpy(ours))
    np.testing.assert_allclose(ours, theirs, atol=1e-5)


def test_registry_names():
    assert METHODS["cam"] is CAM and METHODS["shapleycam"] is ShapleyCAM
    assert METHODS["smoothgradcam++"] is SmoothGradCAMPlusPlus
