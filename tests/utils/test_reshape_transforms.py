"""pytorch_grad_cam.utils.reshape_transforms: the ViT and Swin transforms on real torchvision tokens, and the
feature pyramid transform (alone and on a layer that returns a dict of levels)."""

import functools
import warnings

import cv2
import numpy as np
import pytest
import torch

from pytorch_grad_cam import GradCAM
from pytorch_grad_cam.utils import (
    fasterrcnn_reshape_transform,
    fpn_reshape_transform,
    swin_reshape_transform,
    swinT_reshape_transform,
    vit_reshape_transform,
)
from tests.models import DictPyramidNet

# -------------------------------------------------------------------------------- reshape transforms


@pytest.fixture(scope="module")
def vit_b16_tokens():
    """The tokens torchvision's ViT-B/16 feeds ``encoder.layers[-1].ln_1``: (B, 197, 768)."""
    from torchvision.models import vit_b_16

    torch.manual_seed(0)
    model = vit_b_16(weights=None).eval()
    captured = {}
    handle = model.encoder.layers[-1].ln_1.register_forward_hook(
        lambda module, inputs, output: captured.setdefault("tokens", output.detach())
    )
    with torch.no_grad():
        model(torch.randn(2, 3, 224, 224))
    handle.remove()
    return captured["tokens"]


def test_vit_transform_on_real_vit_b16_tokens(vit_b16_tokens):
    tokens = vit_b16_tokens
    assert tokens.shape == (2, 197, 768)
    maps = vit_reshape_transform(tokens)
    assert maps.shape == (2, 768, 14, 14)
    for j in (0, 1, 13, 14, 100, 195):
        torch.testing.assert_close(maps[:, :, j // 14, j % 14], tokens[:, j + 1, :], rtol=0, atol=0)
    # The class token is dropped: no grid cell holds it.
    assert not any(torch.equal(maps[0, :, r, c], tokens[0, 0]) for r in range(14) for c in range(14))


def test_vit_transform_b32_grid_and_partial():
    tokens = torch.arange(2 * 50 * 3, dtype=torch.float32).reshape(2, 50, 3)  # 224 px / 32 = 7x7 + class
    maps = vit_reshape_transform(tokens)
    assert maps.shape == (2, 3, 7, 7)
    assert torch.equal(maps[1, 2, 3, 5], tokens[1, 1 + 3 * 7 + 5, 2])
    fixed = functools.partial(vit_reshape_transform, height=7, width=7)
    assert torch.equal(fixed(tokens), maps)


def test_vit_transform_register_tokens():
    tokens = torch.randn(1, 1 + 4 + 196, 8)
    maps = vit_reshape_transform(tokens, num_prefix_tokens=5)
    assert maps.shape == (1, 8, 14, 14)
    assert torch.equal(maps[0, :, 0, 0], tokens[0, 5])
    assert torch.equal(maps[0, :, 13, 13], tokens[0, -1])
    # Inference finds the same split: 201 - 5 = 196 is the first perfect square.
    assert torch.equal(vit_reshape_transform(tokens), maps)


def test_vit_transform_non_square_grid_and_errors():
    tokens = torch.randn(1, 1 + 12 * 16, 4)
    with pytest.raises(ValueError, match="193 tokens"):
        vit_reshape_transform(tokens)
    maps = vit_reshape_transform(tokens, height=12, width=16)
    assert maps.shape == (1, 4, 12, 16)
    assert torch.equal(maps[0, :, 11, 0], tokens[0, 1 + 11 * 16])
    with pytest.raises(ValueError, match="both height and width"):
        vit_reshape_transform(tokens, height=12)
    with pytest.raises(ValueError, match="12x12"):
        vit_reshape_transform(tokens, height=12, width=12, num_prefix_tokens=1)
    with pytest.raises(ValueError, match=r"\(B, N, C\)"):
        vit_reshape_transform(torch.randn(4, 5))
    with pytest.raises(TypeError, match="num_prefix_tokens"):
        vit_reshape_transform(tokens, num_prefix_tokens=1.0)


def test_vit_transform_passes_gradients_back_to_the_tokens():
    tokens = torch.randn(1, 5, 2, requires_grad=True)
    maps = vit_reshape_transform(tokens)  # 1 class token + 2x2
    (grad,) = torch.autograd.grad(maps[0, 1, 1, 0], tokens)
    expected = torch.zeros(1, 5, 2)
    expected[0, 1 + 2, 1] = 1.0
    assert torch.equal(grad, expected)


def test_swin_transform_on_real_swin_t_channels_last_output():
    from torchvision.models import swin_t

    torch.manual_seed(0)
    model = swin_t(weights=None).eval()
    captured = {}
    handle = model.features[-1][-1].norm1.register_forward_hook(
        lambda module, inputs, output: captured.setdefault("out", output.detach())
    )
    with torch.no_grad():
        model(torch.randn(1, 3, 224, 224))
    handle.remove()
    features = captured["out"]
    assert features.shape == (1, 7, 7, 768)
    maps = swinT_reshape_transform(features)
    assert maps.shape == (1, 768, 7, 7)
    assert maps.is_contiguous()
    assert torch.equal(maps[0, 10, 2, 5], features[0, 2, 5, 10])
    torch.testing.assert_close(maps, features.permute(0, 3, 1, 2), rtol=0, atol=0)


def test_swin_transform_tokens_alias_and_errors():
    tokens = torch.arange(2 * 49 * 3, dtype=torch.float32).reshape(2, 49, 3)
    maps = swin_reshape_transform(tokens)
    assert swin_reshape_transform is swinT_reshape_transform
    assert maps.shape == (2, 3, 7, 7)
    assert torch.equal(maps[1, 0, 6, 1], tokens[1, 6 * 7 + 1, 0])
    assert functools.partial(swinT_reshape_transform, height=7, width=7)(tokens).shape == (2, 3, 7, 7)
    with pytest.raises(ValueError, match="50 tokens"):
        swinT_reshape_transform(torch.randn(1, 50, 3))
    with pytest.raises(ValueError, match="height=6"):
        swinT_reshape_transform(torch.randn(1, 7, 7, 3), height=6, width=6)
    with pytest.raises(ValueError, match=r"\(B, H, W, C\)"):
        swinT_reshape_transform(torch.randn(3, 4))


# ------------------------------------------------------------------ the feature pyramid transform
def _levels(batch=2):
    gen = torch.Generator().manual_seed(3)
    from collections import OrderedDict

    return OrderedDict(
        [
            ("0", torch.randn(batch, 2, 8, 6, generator=gen)),
            ("1", torch.randn(batch, 3, 4, 3, generator=gen)),
            ("pool", torch.randn(batch, 2, 2, 2, generator=gen)),
        ]
    )


def _bilinear(a, size):
    """Half-pixel bilinear resize of (H, W) numpy a to size (cv2.resize's sampling), by hand."""
    return cv2.resize(a.astype(np.float64), (size[1], size[0]), interpolation=cv2.INTER_LINEAR)


def test_fpn_reshape_transform_resizes_and_concatenates_the_levels():
    levels = _levels()
    for size, grid, absolute in ((None, (2, 2), True), ("1", (4, 3), False), ((5, 7), (5, 7), True)):
        out = fpn_reshape_transform(levels, size=size, absolute=absolute)
        assert out.shape == (2, 7, *grid)
        planes = [
            level[b, c].numpy() for b in range(2) for level in levels.values() for c in range(level.shape[1])
        ]
        want = np.stack([_bilinear(np.abs(p) if absolute else p, grid) for p in planes]).reshape(2, 7, *grid)
        np.testing.assert_allclose(out.numpy(), want, atol=1e-5)
    # the reference's name: magnitudes on the coarsest ('pool') grid; a list of levels works as a dict
    torch.testing.assert_close(fasterrcnn_reshape_transform(levels), fpn_reshape_transform(levels))
    torch.testing.assert_close(
        fpn_reshape_transform(list(levels.values()), size=1), fpn_reshape_transform(levels, size="1")
    )


@pytest.mark.parametrize(
    ("features", "kwargs", "error", "match"),
    [
        (torch.zeros(1, 2, 3, 3), {}, TypeError, "dict or a list"),
        ({}, {}, ValueError, "no pyramid levels"),
        ({"0": torch.zeros(1, 2, 3)}, {}, ValueError, r"level '0' must be a \(B, C, H, W\)"),
        ({"0": torch.zeros(1, 2, 3, 3), "1": torch.zeros(2, 2, 3, 3)}, {}, ValueError, "batch size"),
        ({"0": torch.zeros(1, 2, 3, 3)}, {"size": "p6"}, ValueError, "not a level"),
        ({"0": torch.zeros(1, 2, 3, 3)}, {"size": (0, 3)}, ValueError, "positive int"),
    ],
)
def test_fpn_reshape_transform_refuses_bad_input(features, kwargs, error, match):
    with pytest.raises(error, match=match):
        fpn_reshape_transform(features, **kwargs)


def test_a_layer_returning_a_dict_of_levels_through_fpn_reshape_transform():
    """The engine captures each level, differentiates each (zeros for the unused 'pool' level) and
    hands the dicts of activations and gradients to the transform: GradCAM by hand on the result."""
    model = DictPyramidNet().eval()
    x = torch.randn(1, 3, 8, 8, generator=torch.Generator().manual_seed(2))
    transform = functools.partial(fpn_reshape_transform, size="0", absolute=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        maps = GradCAM(model, [model.backbone], reshape_transform=transform)(x, targets=[1])
    xg = x.clone()
    levels = model.backbone(xg)
    a = levels["0"].detach().requires_grad_(True)
    score = model.head(a.relu().mean((2, 3)))[0, 1]
    (g,) = torch.autograd.grad(score, a)
    acts = torch.cat(
        [a.detach(), torch.nn.functional.interpolate(levels["pool"].detach(), size=(8, 8), mode="bilinear")],
        1,
    )
    grads = torch.cat([g, torch.zeros(1, 4, 8, 8)], 1)  # no gradient reaches 'pool': zeros
    cam = (grads.mean((2, 3))[:, :, None, None] * acts).sum(1).relu()[0].numpy()
    cam = (cam - cam.min()) / (cam.max() - cam.min() + 1e-7)
    assert cam.std() > 0.05
    np.testing.assert_allclose(maps[0], cam, rtol=1e-4, atol=1e-5)  # eps of the two normalisations


def test_a_dict_layer_without_a_transform_is_refused_clearly():
    model = DictPyramidNet().eval()
    with pytest.raises(TypeError, match=r"'backbone' returns dict.*pass a reshape_transform"):
        GradCAM(model, [model.backbone])(torch.randn(1, 3, 8, 8), targets=[1])
    with pytest.raises(TypeError, match="reshape_transform must return a tensor"):
        GradCAM(model, [model.backbone], reshape_transform=lambda levels: levels)(
            torch.randn(1, 3, 8, 8), targets=[1]
        )
