"""FullGrad against a plain float64 reference of its formula, the completeness identity of the paper, and
(optional) the reference library grad-cam 1.5.7 as a black box.

The reference here knows nothing of the implementation: the tiny nets are ``nn.Sequential`` run layer by
layer in float64, the bias layers are listed by hand, and each layer's bias is read as the layer's output
for a zero input (``conv(0) = b``, ``BatchNorm_eval(0) = beta - mean * gamma / sqrt(var + eps)``,
``GroupNorm(0) = beta``, ``Linear(0) = b``), so BatchNorm's effective bias is not derived the same way.
"""

import warnings

import numpy as np
import pytest
import torch
import torchvision
from torch import nn
from torchvision.ops.misc import Permute

from pytorch_grad_cam import METHODS, FullGrad
from pytorch_grad_cam.fullgrad_cam import FullGrad as FullGradFromReferencePath
from tests.models import Shared
from tests.reference_library import REFERENCE_PATH, needs_reference, run_reference
from tests.references.fullgrad import minmax, reference_fullgrad, reference_terms, resize

NUM_CLASSES = 5


def seeded(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def randomize_norms(model, seed=0):
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)):
                m.running_mean.copy_(torch.rand(m.num_features, generator=gen) * 0.4 - 0.2)
                m.running_var.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
            if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.GroupNorm)):
                m.weight.copy_(torch.rand(m.weight.shape, generator=gen) + 0.5)
                m.bias.copy_(torch.rand(m.bias.shape, generator=gen) * 0.4 - 0.2)
    return model.eval()


def net_2d(inplace=False, seed=0):
    torch.manual_seed(seed)
    return randomize_norms(
        nn.Sequential(
            nn.Conv2d(3, 6, 3, padding=1),
            nn.BatchNorm2d(6),
            nn.ReLU(inplace=inplace),
            nn.MaxPool2d(2),
            nn.Conv2d(6, 8, 3, padding=1),
            nn.BatchNorm2d(8),
            nn.ReLU(inplace=inplace),
            nn.Conv2d(8, 8, 1),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
            nn.Linear(8, NUM_CLASSES),
        ),
        seed,
    )


def net_1d(seed=0):
    """GroupNorm, a strided conv and a Linear on the channels of a channels-last (B, L, C) signal."""
    torch.manual_seed(seed)
    return randomize_norms(
        nn.Sequential(
            nn.Conv1d(2, 6, 5, padding=2),
            nn.GroupNorm(2, 6),
            nn.ReLU(),
            nn.Conv1d(6, 8, 3, stride=2, padding=1),
            nn.ReLU(),
            Permute([0, 2, 1]),
            nn.Linear(8, 8),
            nn.ReLU(),
            Permute([0, 2, 1]),
            nn.Flatten(),
            nn.Linear(8 * 16, NUM_CLASSES),
        ),
        seed,
    )


def net_3d(seed=0):
    torch.manual_seed(seed)
    return randomize_norms(
        nn.Sequential(
            nn.Conv3d(1, 4, 3, padding=1),
            nn.BatchNorm3d(4),
            nn.ReLU(),
            nn.Conv3d(4, 6, 3, stride=2, padding=1),
            nn.ReLU(),
            nn.Conv3d(6, 6, 1),
            nn.Sigmoid(),
            nn.AdaptiveAvgPool3d(1),
            nn.Flatten(),
            nn.Linear(6, NUM_CLASSES),
        ),
        seed,
    )


def net_channels_last(seed=0):
    """ConvNeXt-style: a Linear and a LayerNorm on a channels-last (B, H, W, C) map between permutes."""
    torch.manual_seed(seed)
    model = nn.Sequential(
        nn.Conv2d(3, 6, 3, padding=1),
        Permute([0, 2, 3, 1]),
        nn.Linear(6, 8),
        nn.LayerNorm(8),
        nn.ReLU(),
        Permute([0, 3, 1, 2]),
        nn.Conv2d(8, 8, 3, padding=1, stride=2),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(8, NUM_CLASSES),
    )
    with torch.no_grad():
        model[3].weight.uniform_(0.5, 1.5)
        model[3].bias.uniform_(-0.2, 0.2)
    return model.eval()


def assert_nontrivial(maps):
    flat = maps.reshape(maps.shape[0], -1)
    assert (flat.max(1) > 0.99).all(), "degenerate test case"
    assert (flat.std(1) > 0.05).all(), "degenerate test case"


CASES = {
    "2d": (net_2d, (2, 3, 12, 16), [1, 3]),
    "1d": (net_1d, (2, 2, 32), [2, 4]),
    "3d": (net_3d, (2, 1, 6, 8, 10), [0, 2]),
    "channels-last": (net_channels_last, (2, 3, 12, 16), [1, 3]),
}


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("per_channel", [True, False])
def test_matches_plain_reference(case, per_channel):
    make, shape, classes = CASES[case]
    model, x = make(), seeded(*shape, seed=1)
    want = reference_fullgrad(model, x, classes, per_channel)
    assert_nontrivial(want)
    got = FullGrad(model, per_channel=per_channel)(x, targets=classes)
    assert got.dtype == np.float32
    assert got.shape == (2, *shape[2:])
    np.testing.assert_allclose(got, want, atol=2e-5)


def test_every_term_contributes_and_normalisations_differ():
    model, x = net_2d(), seeded(2, 3, 12, 16, seed=1)
    _, bias_terms, _ = reference_terms(model, x, [1, 3])
    spatial = [(g * b).abs() for g, b in bias_terms if g.ndim == x.ndim]
    assert len(spatial) == 5  # 3 convs + 2 BN
    assert all(t.flatten(1).amax(1).min() > 0 for t in spatial)
    a = FullGrad(model)(x, targets=[1, 3])
    b = FullGrad(model, per_channel=False)(x, targets=[1, 3])
    assert np.abs(a - b).max() > 0.05


def test_inplace_relu_model_equals_the_plain_one():
    x = seeded(2, 3, 12, 16, seed=1)
    plain = FullGrad(net_2d(inplace=False))(x, targets=[1, 3])
    inplace = FullGrad(net_2d(inplace=True))(x, targets=[1, 3])
    np.testing.assert_allclose(inplace, plain, atol=1e-6)


@pytest.mark.parametrize("make", [net_2d, lambda: randomize_norms(Shared())], ids=["sequential", "shared"])
def test_completeness_identity(make):
    """Srinivas & Fleuret eq. 2: for a piecewise-linear net (ReLU, max-pool, BatchNorm in eval),
    ``score = sum(x * grad_x) + sum_l sum(grad_{z_l} * b_l)`` exactly."""
    model = make().double()
    x = seeded(2, 3, 12, 16, seed=1).double()
    terms = FullGrad(model).decompose(x, targets=[1, 3])
    with torch.no_grad():
        scores = model(x)[[0, 1], [1, 3]]
    torch.testing.assert_close(terms.scores, scores)
    total = terms.input_term.flatten(1).sum(1) + sum(t.flatten(1).sum(1) for _, t in terms.bias_terms)
    torch.testing.assert_close(total, scores, atol=1e-10, rtol=1e-10)
    # Not trivially: the bias part is a sizeable share of the score.
    bias_part = sum(t.flatten(1).sum(1) for _, t in terms.bias_terms)
    assert (bias_part.abs() > 0.05 * scores.abs()).all()
    names = [name for name, _ in terms.bias_terms]
    if make is net_2d:
        assert names == ["0", "1", "4", "5", "7", "11"]  # convs, BatchNorms and the classifier
    else:
        assert names.count("conv") == 2
        assert names.count("bn") == 2
        assert names.count("inp") == 2


def test_decompose_matches_plain_reference_terms():
    model, x = net_1d(), seeded(2, 2, 32, seed=1)
    want_input, want_bias, want_scores = reference_terms(model, x, [2, 4])
    terms = FullGrad(model.double()).decompose(x.double(), targets=[2, 4])
    torch.testing.assert_close(terms.input_term, want_input)
    torch.testing.assert_close(terms.scores, want_scores)
    assert len(terms.bias_terms) == len(want_bias)
    for (_, got), (g, b) in zip(terms.bias_terms, want_bias):
        torch.testing.assert_close(got, g * b)


def test_target_layers_are_optional_and_ignored():
    model, x = net_2d(), seeded(2, 3, 12, 16, seed=1)
    want = FullGrad(model)(x, targets=[1, 3])
    for layers in ([], [model[4]], model[0]):
        np.testing.assert_array_equal(FullGrad(model, layers)(x, targets=[1, 3]), want)
    first_api = FullGrad(model=model, target_layer=model[4], use_cuda=False)
    np.testing.assert_array_equal(first_api(input_tensor=x, target_category=[1, 3]), want)
    with pytest.raises(ValueError, match="not a module of the model"):
        FullGrad(model, [nn.Conv2d(3, 3, 1)])
    assert FullGradFromReferencePath is FullGrad
    assert METHODS["fullgrad"] is FullGrad


def test_bad_arguments():
    model = net_2d()
    with pytest.raises(ValueError, match="reshape_transform"):
        FullGrad(model, reshape_transform=lambda t: t)
    with pytest.raises(TypeError, match="per_channel"):
        FullGrad(model, per_channel="yes")
    with pytest.raises(ValueError, match="do not depend on the input"):
        FullGrad(model)(seeded(2, 3, 12, 16), targets=lambda out: torch.tensor(1.0))


def test_constant_map_warns_at_the_callers_line():
    # A score whose gradient is zero everywhere: every term is zero, so the map is constant.
    model, x = net_2d(), seeded(2, 3, 12, 16, seed=1)
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        maps = FullGrad(model)(x, targets=lambda out: out.sum() * 0.0)
    constant = [w for w in record if "constant" in str(w.message)]
    assert [str(w.message) for w in constant] == [
        "the FullGrad map is constant for image(s) [0, 1] (no gradient reaches the input or the bias "
        "layers); its map is all zeros"
    ]
    assert constant[0].category is RuntimeWarning
    assert constant[0].filename == __file__, "the warning should point at the caller's line"
    np.testing.assert_array_equal(maps, np.zeros((2, 12, 16), np.float32))


def test_top_class_by_default_and_batch_equals_single():
    model, x = net_2d(), seeded(2, 3, 12, 16, seed=1)
    with torch.no_grad():
        top = model(x).argmax(1).tolist()
    cam = FullGrad(model)
    both = cam(x)
    np.testing.assert_array_equal(both, cam(x, targets=top))
    for i in range(2):
        np.testing.assert_allclose(both[i], cam(x[i : i + 1], targets=[top[i]])[0], atol=1e-6)


def test_eigen_smooth_is_the_principal_component_of_the_terms():
    """Each term (input channels separately) rescaled to [0, 1], at 1/8 resolution, projected on its
    first principal component (sign: correlates with the term sum), back to full size, rescaled."""
    model, x = net_2d(), seeded(2, 3, 32, 48, seed=1)
    input_term, bias_terms, _ = reference_terms(model, x, [1, 3])
    size, small = (32, 48), (4, 6)
    got = FullGrad(model)(x, targets=[1, 3], eigen_smooth=True)
    for i in range(2):
        layers = [minmax(np.abs(input_term[i, c : c + 1].numpy()), (1, 2), eps=1e-7) for c in range(3)]
        layers += [minmax(np.abs((g * b)[i].numpy()), (1, 2), eps=1e-7) for g, b in bias_terms if g.ndim == 4]
        terms = [minmax(sum(resize(c, size) for c in t), None) for t in layers]
        stack = np.stack([resize(t, small) for t in terms], -1).reshape(-1, len(terms))  # (N, T)
        centred = stack - stack.mean(0)
        projection = centred @ np.linalg.svd(centred, full_matrices=False)[2][0]
        total = stack.sum(1) - stack.sum(1).mean()
        projection *= -1 if (projection * total).sum() < 0 else 1
        want = minmax(resize(projection.reshape(small), size), None)
        assert want.std() > 0.05
        np.testing.assert_allclose(got[i], want, atol=1e-4)


# ------------------------------------------------------------------- the reference library (optional)
DRIVER = r"""
import sys, numpy as np, torch, torchvision
import pytorch_grad_cam
from pytorch_grad_cam import FullGrad
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
work, reference_path = sys.argv[1:3]
assert pytorch_grad_cam.__file__.startswith(reference_path), pytorch_grad_cam.__file__
model = torchvision.models.resnet18(weights=None)
model.load_state_dict(torch.load(f"{work}/model.pt"))
model.eval()
x = torch.load(f"{work}/x.pt")
targets = [ClassifierOutputTarget(3), ClassifierOutputTarget(7)]
out = {"plain": FullGrad(model, [])(x, targets), "eigen": FullGrad(model, [])(x, targets, eigen_smooth=True)}
np.savez(f"{work}/out.npz", **out)
"""


@needs_reference
def test_matches_reference_library_resnet18(tmp_path):
    torch.manual_seed(0)
    model = torchvision.models.resnet18(weights=None)
    randomize_norms(model)
    x = seeded(2, 3, 64, 64, seed=11)
    torch.save(model.state_dict(), tmp_path / "model.pt")
    torch.save(x, tmp_path / "x.pt")
    run_reference(DRIVER, tmp_path, REFERENCE_PATH, cwd=tmp_path)
    want = dict(np.load(tmp_path / "out.npz"))
    assert_nontrivial(want["plain"])
    cam = FullGrad(model)
    np.testing.assert_allclose(cam(x, targets=[3, 7]), want["plain"], atol=1e-4)
    # eigen_smooth: the same component; the reference leaves its sign to the SVD, ours fixes it.
    eigen = cam(x, targets=[3, 7], eigen_smooth=True)
    for got, ref in zip(eigen, want["eigen"]):
        assert ref.std() > 0.05
        assert min(np.abs(got - ref).max(), np.abs(got - (1 - ref)).max()) < 1e-4
