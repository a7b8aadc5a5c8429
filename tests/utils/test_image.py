"""Tests of pytorch_grad_cam.utils: targets, image helpers and reshape transforms."""
import functools

import cv2
import numpy as np
import pytest
import torch

from pytorch_grad_cam.utils import (
    BinaryClassifierOutputTarget,
    ClassifierOutputSoftmaxTarget,
    ClassifierOutputTarget,
    RawScoresOutputTarget,
    SoftmaxOutputTarget,
    deprocess_image,
    preprocess_image,
    scale_cam_image,
    show_cam_on_image,
    swin_reshape_transform,
    swinT_reshape_transform,
    vit_reshape_transform,
)

# ---------------------------------------------------------------------------------------------- targets


def test_classifier_target_picks_the_class_score_and_its_gradient_is_one_hot():
    logits = torch.tensor([0.5, 2.0, -1.0, 3.0], requires_grad=True)
    score = ClassifierOutputTarget(2)(logits)
    assert score.ndim == 0
    assert score.item() == -1.0
    (grad,) = torch.autograd.grad(score, logits)
    assert torch.equal(grad, torch.tensor([0.0, 0.0, 1.0, 0.0]))


def test_classifier_target_accepts_numpy_int_and_2d_outputs():
    target = ClassifierOutputTarget(np.int64(1))
    assert target.category == 1 and type(target.category) is int
    one_row = torch.tensor([[4.0, 5.0, 6.0]])
    assert target(one_row).ndim == 0 and target(one_row).item() == 5.0
    batch = torch.tensor([[4.0, 5.0, 6.0], [7.0, 8.0, 9.0]])
    assert torch.equal(target(batch), torch.tensor([5.0, 8.0]))


@pytest.mark.parametrize("cls", [ClassifierOutputTarget, ClassifierOutputSoftmaxTarget])
@pytest.mark.parametrize("bad, error", [(-1, ValueError), (1.0, TypeError), (True, TypeError),
                                        ("3", TypeError), (None, TypeError)])
def test_category_validation(cls, bad, error):
    with pytest.raises(error, match="category"):
        cls(bad)


@pytest.mark.parametrize("cls", [ClassifierOutputTarget, ClassifierOutputSoftmaxTarget, SoftmaxOutputTarget])
def test_category_out_of_range_names_category_and_class_count(cls):
    with pytest.raises(ValueError, match=r"category 5 .*3 classes"):
        cls(5)(torch.zeros(3))


def test_targets_reject_non_tensors_and_bad_ranks():
    with pytest.raises(TypeError, match="torch.Tensor"):
        ClassifierOutputTarget(0)([1.0, 2.0])
    with pytest.raises(ValueError, match=r"\(2, 3, 4\)"):
        ClassifierOutputTarget(0)(torch.zeros(2, 3, 4))


def test_softmax_target_equals_manual_softmax_and_has_its_gradient():
    logits = torch.tensor([1.0, 2.0, 0.5], requires_grad=True)
    score = ClassifierOutputSoftmaxTarget(1)(logits)
    e = np.exp([1.0, 2.0, 0.5])
    p = e / e.sum()
    assert score.ndim == 0
    assert score.item() == pytest.approx(p[1], rel=1e-6)
    # d p_1 / d z_j = p_1 * (delta_1j - p_j)
    (grad,) = torch.autograd.grad(score, logits)
    expected = p[1] * (np.eye(3)[1] - p)
    np.testing.assert_allclose(grad.numpy(), expected, rtol=1e-5, atol=1e-7)


def test_softmax_output_target_top_class_or_given_category():
    logits = torch.tensor([1.0, 3.0, 2.0])
    e = np.exp([1.0, 3.0, 2.0])
    p = e / e.sum()
    assert SoftmaxOutputTarget()(logits).item() == pytest.approx(p[1], rel=1e-6)
    assert SoftmaxOutputTarget(2)(logits).item() == pytest.approx(p[2], rel=1e-6)
    assert SoftmaxOutputTarget(0)(logits).item() == ClassifierOutputSoftmaxTarget(0)(logits).item()
    batch = torch.stack([logits, logits.flip(0)])
    np.testing.assert_allclose(SoftmaxOutputTarget()(batch).numpy(), [p[1], p[1]], rtol=1e-6)


def test_binary_target_sign_gradient_and_validation():
    logit = torch.tensor([1.5], requires_grad=True)
    positive, negative = BinaryClassifierOutputTarget(1)(logit), BinaryClassifierOutputTarget(0)(logit)
    assert positive.ndim == 0 and positive.item() == 1.5
    assert negative.ndim == 0 and negative.item() == -1.5
    (grad,) = torch.autograd.grad(negative, logit)
    assert grad.item() == -1.0
    batch = torch.tensor([[2.0], [-3.0]])
    assert torch.equal(BinaryClassifierOutputTarget(1)(batch), torch.tensor([2.0, -3.0]))
    with pytest.raises(ValueError, match="0 or 1"):
        BinaryClassifierOutputTarget(2)
    with pytest.raises(TypeError, match="category"):
        BinaryClassifierOutputTarget(True)
    with pytest.raises(ValueError, match="single logit"):
        BinaryClassifierOutputTarget(1)(torch.zeros(3))


def test_raw_scores_target_sums_and_is_the_raw_output_of_a_regressor():
    scores = torch.tensor([1.0, -2.5, 4.0], requires_grad=True)
    total = RawScoresOutputTarget()(scores)
    assert total.ndim == 0 and total.item() == 2.5
    (grad,) = torch.autograd.grad(total, scores)
    assert torch.equal(grad, torch.ones(3))
    assert RawScoresOutputTarget()(torch.tensor([3.25])).item() == 3.25
    assert RawScoresOutputTarget()(torch.tensor(3.25)).item() == 3.25


def test_target_reprs():
    assert repr(ClassifierOutputTarget(281)) == "ClassifierOutputTarget(category=281)"
    assert repr(ClassifierOutputSoftmaxTarget(3)) == "ClassifierOutputSoftmaxTarget(category=3)"
    assert repr(BinaryClassifierOutputTarget(0)) == "BinaryClassifierOutputTarget(category=0)"
    assert repr(RawScoresOutputTarget()) == "RawScoresOutputTarget()"
    assert repr(SoftmaxOutputTarget()) == "SoftmaxOutputTarget(category=None)"


# ------------------------------------------------------------------------------------ show_cam_on_image

# cv2.COLORMAP_JET maps 0 to BGR (128, 0, 0) (dark blue) and 255 to BGR (0, 0, 128) (dark red).
_JET_LOW_BGR = np.array([128, 0, 0]) / 255
_JET_HIGH_BGR = np.array([0, 0, 128]) / 255


def _small_image_and_mask():
    img = np.array([[[0.2, 0.4, 0.6], [1.0, 0.0, 0.5]]], dtype=np.float32)  # (1, 2, 3)
    mask = np.array([[0.0, 1.0]], dtype=np.float32)
    return img, mask


def test_show_cam_on_image_matches_a_plain_computation():
    img, mask = _small_image_and_mask()
    blend = 0.5 * np.stack([_JET_LOW_BGR, _JET_HIGH_BGR])[None] + 0.5 * img
    expected = np.uint8(255 * (blend / blend.max()))
    out = show_cam_on_image(img, mask)
    assert out.dtype == np.uint8 and out.shape == (1, 2, 3)
    np.testing.assert_array_equal(out, expected)
    # By hand: pixel (0, 0) blue = 0.5*128/255 + 0.5*0.2; the brightest value is pixel (0, 1) red,
    # 0.5*128/255 + 0.5*0.5, so blue = uint8(255 * 0.35098 / 0.50098) = 178.
    peak = 0.5 * 128 / 255 + 0.5 * 0.5
    assert out[0, 0, 0] == int(255 * (0.5 * 128 / 255 + 0.5 * 0.2) / peak) == 178


def test_show_cam_on_image_rgb_and_image_weight():
    img, mask = _small_image_and_mask()
    w = 0.2
    blend = (1 - w) * np.stack([_JET_LOW_BGR[::-1], _JET_HIGH_BGR[::-1]])[None] + w * img
    np.testing.assert_array_equal(show_cam_on_image(img, mask, use_rgb=True, image_weight=w),
                                  np.uint8(255 * blend / blend.max()))
    # image_weight=1: the image alone, stretched so its maximum becomes 255.
    np.testing.assert_array_equal(show_cam_on_image(img, mask, image_weight=1.0), np.uint8(255 * img))


def test_show_cam_on_image_resizes_a_smaller_mask_bilinearly():
    rng = np.random.default_rng(0)
    img = rng.random((8, 12, 3)).astype(np.float32)
    small = rng.random((4, 6)).astype(np.float32)
    resized = cv2.resize(small, (12, 8), interpolation=cv2.INTER_LINEAR)
    np.testing.assert_array_equal(show_cam_on_image(img, small), show_cam_on_image(img, resized))


def test_show_cam_on_image_does_not_modify_its_inputs():
    rng = np.random.default_rng(1)
    img = rng.random((5, 6, 3))
    mask = rng.random((3, 3)).astype(np.float32)
    img_copy, mask_copy = img.copy(), mask.copy()
    show_cam_on_image(img, mask, use_rgb=True)
    np.testing.assert_array_equal(img, img_copy)
    np.testing.assert_array_equal(mask, mask_copy)


def test_show_cam_on_image_errors():
    img, mask = _small_image_and_mask()
    with pytest.raises(ValueError, match=r"np\.float32\(img\) / 255"):
        show_cam_on_image(img * 255, mask)
    with pytest.raises(ValueError, match=r"np\.float32\(img\) / 255"):
        show_cam_on_image(np.uint8(img * 255), mask)
    with pytest.raises(ValueError, match=r"\(H, W, 3\)"):
        show_cam_on_image(img[..., 0], mask)
    with pytest.raises(ValueError, match="mask"):
        show_cam_on_image(img, mask[None])
    with pytest.raises(ValueError, match="image_weight"):
        show_cam_on_image(img, mask, image_weight=1.5)
    with pytest.raises(ValueError, match="mask values"):
        show_cam_on_image(img, mask * 3)
    with pytest.raises(TypeError, match="img"):
        show_cam_on_image(img.tolist(), mask)
    with pytest.raises(TypeError, match="mask"):
        show_cam_on_image(img, torch.from_numpy(mask))


def test_overlays_share_the_image_weight_and_unit_range_rules():
    """show_cam_on_image and show_factorization_on_image accept and refuse the same image_weight values
    with the same words, and refuse a map outside [0, 1] beyond the 1e-6 round-off, or with NaN/Inf."""
    from pytorch_grad_cam.utils.image import show_factorization_on_image

    img, mask = _small_image_and_mask()
    explanations = np.stack([mask, 1 - mask])  # (2, h, w)
    overlays = (lambda **kw: show_cam_on_image(img, mask, **kw),
                lambda **kw: show_factorization_on_image(img, explanations, **kw))
    for bad, error in ((1.5, ValueError), (-0.1, ValueError), (float("nan"), ValueError), (True, TypeError),
                       ("0.5", TypeError)):
        messages = set()
        for overlay in overlays:
            with pytest.raises(error, match="image_weight") as caught:
                overlay(image_weight=bad)
            messages.add(str(caught.value))
        assert len(messages) == 1, messages
    for weight in (0, 1, 0.25, np.float32(0.75)):
        for overlay in overlays:
            assert overlay(image_weight=weight).dtype == np.uint8
    # Round-off within 1e-6 is accepted (and clipped), anything further out is refused, as is NaN.
    assert show_cam_on_image(img, mask * (1 + 5e-7)).dtype == np.uint8
    assert show_factorization_on_image(img, explanations * (1 + 5e-7)).dtype == np.uint8
    with pytest.raises(ValueError, match=r"mask values must be in \[0, 1\], got min 0 and max 1\.0001"):
        show_cam_on_image(img, mask * 1.0001)
    with pytest.raises(ValueError, match=r"explanations must be in \[0, 1\], got min -0\.001 and max 1"):
        show_factorization_on_image(img, np.stack([mask, mask - 0.001]))
    with pytest.raises(ValueError, match="mask values contain NaN or infinite values"):
        show_cam_on_image(img, np.where(mask > 0.5, np.nan, mask))
    with pytest.raises(ValueError, match="explanations contain NaN or infinite values"):
        show_factorization_on_image(img, np.stack([mask, np.full_like(mask, np.inf)]))


# -------------------------------------------------------------------------- preprocess / deprocess


def test_preprocess_image_matches_the_formula():
    rng = np.random.default_rng(2)
    img = rng.random((4, 5, 3)).astype(np.float32)
    mean, std = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
    x = preprocess_image(img, mean=mean, std=std)
    assert x.shape == (1, 3, 4, 5) and x.dtype == torch.float32
    for c in range(3):
        np.testing.assert_allclose(x[0, c].numpy(), (img[:, :, c] - mean[c]) / std[c], rtol=1e-6, atol=1e-6)
    # Pixel (1, 2), channel 0, by hand.
    assert x[0, 0, 1, 2].item() == pytest.approx((img[1, 2, 0] - 0.485) / 0.229, rel=1e-6)
    # The defaults are the reference library's: 0.5 for every channel, so [0, 1] maps to [-1, 1].
    np.testing.assert_allclose(preprocess_image(img)[0].permute(1, 2, 0).numpy(), img * 2 - 1, atol=1e-6)


def test_preprocess_image_list_stats_uint8_input_and_errors():
    img = np.array([[[0.0, 0.5, 1.0]]], dtype=np.float64)
    x = preprocess_image(img, mean=[0.5, 0.5, 0.5], std=[0.5, 0.5, 0.5])
    np.testing.assert_allclose(x.flatten().numpy(), [-1.0, 0.0, 1.0])
    as_uint8 = np.array([[[0, 51, 255]]], dtype=np.uint8)
    np.testing.assert_allclose(preprocess_image(as_uint8, mean=(0, 0, 0), std=(1, 1, 1)).flatten().numpy(),
                               [0.0, 0.2, 1.0], rtol=1e-6)
    untouched = img.copy()
    preprocess_image(img)
    np.testing.assert_array_equal(img, untouched)
    with pytest.raises(ValueError, match=r"\(H, W, 3\)"):
        preprocess_image(np.zeros((4, 4)))
    with pytest.raises(ValueError, match="mean"):
        preprocess_image(img, mean=(0.5, 0.5))
    with pytest.raises(ValueError, match="std"):
        preprocess_image(img, std=(0.5, 0.0, 0.5))
    with pytest.raises(ValueError, match="above 1"):
        preprocess_image(img * 255)


def test_deprocess_image_matches_the_formula():
    rng = np.random.default_rng(3)
    grads = rng.normal(scale=0.01, size=(6, 7, 3)).astype(np.float32)
    unit = (grads - grads.mean()) / (grads.std() + 1e-5) * 0.1 + 0.5
    expected = np.uint8(np.clip(unit, 0, 1) * 255)
    out = deprocess_image(grads)
    assert out.dtype == np.uint8 and out.shape == grads.shape
    # Allow one grey level for float32-vs-float64 rounding at a truncation boundary.
    assert np.abs(out.astype(int) - expected.astype(int)).max() <= 1
    # A constant image becomes mid-grey: 0.5 * 255 = 127.5 -> 127.
    assert np.all(deprocess_image(np.full((2, 2, 3), 7.0)) == 127)


# ------------------------------------------------------------------------------------ scale_cam_image


def test_scale_cam_image_normalises_each_map():
    cam = np.array([[[0.0, 2.0], [4.0, 8.0]], [[-1.0, -1.0], [1.0, 3.0]]])
    out = scale_cam_image(cam)
    assert out.dtype == np.float32 and out.shape == (2, 2, 2)
    np.testing.assert_allclose(out[0], [[0.0, 0.25], [0.5, 1.0]], rtol=1e-6)
    np.testing.assert_allclose(out[1], [[0.0, 0.0], [0.5, 1.0]], rtol=1e-6)
    # A constant map has nothing to show: all zeros, not NaN.
    np.testing.assert_array_equal(scale_cam_image(np.full((1, 3, 3), 5.0)), np.zeros((1, 3, 3)))


def test_scale_cam_image_resizes_like_cv2_and_keeps_the_input():
    rng = np.random.default_rng(4)
    cam = rng.random((2, 7, 7)).astype(np.float32) * 3
    before = cam.copy()
    out = scale_cam_image(cam, target_size=(20, 10))  # (W, H)
    assert out.shape == (2, 10, 20)
    for i in range(2):
        normalised = (cam[i] - cam[i].min()) / (1e-7 + (cam[i] - cam[i].min()).max())
        np.testing.assert_allclose(out[i], cv2.resize(normalised, (20, 10), interpolation=cv2.INTER_LINEAR),
                                   rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(cam, before)


def test_scale_cam_image_1d_maps_use_half_pixel_linear_interpolation():
    signal = np.array([[0.0, 1.0, 4.0]])
    out = scale_cam_image(signal, target_size=6)
    # Output sample i sits at input position (i + 0.5) * 3/6 - 0.5, clamped to [0, 2].
    expected = np.interp([0.0, 0.25, 0.75, 1.25, 1.75, 2.0], [0, 1, 2], [0.0, 0.25, 1.0])
    np.testing.assert_allclose(out[0], expected, rtol=1e-6)
    # The same rule as cv2.resize on a one-row image.
    row = np.float32([[0.0, 0.25, 1.0]])
    np.testing.assert_allclose(out[0], cv2.resize(row, (6, 1), interpolation=cv2.INTER_LINEAR)[0], atol=1e-6)
    assert scale_cam_image(signal, target_size=(6,)).shape == (1, 6)


def test_scale_cam_image_errors_and_empty_batch():
    with pytest.raises(ValueError, match="target_size"):
        scale_cam_image(np.zeros((1, 2, 3, 4)), target_size=(4, 4, 4))
    with pytest.raises(ValueError, match=r"\(W, H\)"):
        scale_cam_image(np.zeros((1, 4, 4)), target_size=(4,))
    with pytest.raises(TypeError, match="cam"):
        scale_cam_image(torch.zeros(1, 4, 4))
    assert scale_cam_image(np.zeros((0, 7, 7)), target_size=(5, 3)).shape == (0, 3, 5)


# -------------------------------------------------------------------------------- reshape transforms


@pytest.fixture(scope="module")
def vit_b16_tokens():
    """The tokens torchvision's ViT-B/16 feeds ``encoder.layers[-1].ln_1``: (B, 197, 768)."""
    from torchvision.models import vit_b_16

    torch.manual_seed(0)
    model = vit_b_16(weights=None).eval()
    captured = {}
    handle = model.encoder.layers[-1].ln_1.register_forward_hook(
        lambda module, inputs, output: captured.setdefault("tokens", output.detach()))
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
        lambda module, inputs, output: captured.setdefault("out", output.detach()))
    with torch.no_grad():
        model(torch.randn(1, 3, 224, 224))
    handle.remove()
    features = captured["out"]
    assert features.shape == (1, 7, 7, 768)
    maps = swinT_reshape_transform(features)
    assert maps.shape == (1, 768, 7, 7) and maps.is_contiguous()
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
