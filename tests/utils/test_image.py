"""pytorch_grad_cam.utils.image: show_cam_on_image, the overlays, preprocess/deprocess, scale_cam_image."""

import cv2
import numpy as np
import pytest
import torch

from pytorch_grad_cam.utils import (
    deprocess_image,
    preprocess_image,
    scale_cam_image,
    show_cam_on_image,
)

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
    assert out.dtype == np.uint8
    assert out.shape == (1, 2, 3)
    np.testing.assert_array_equal(out, expected)
    # By hand: pixel (0, 0) blue = 0.5*128/255 + 0.5*0.2; the brightest value is pixel (0, 1) red,
    # 0.5*128/255 + 0.5*0.5, so blue = uint8(255 * 0.35098 / 0.50098) = 178.
    peak = 0.5 * 128 / 255 + 0.5 * 0.5
    assert out[0, 0, 0] == int(255 * (0.5 * 128 / 255 + 0.5 * 0.2) / peak) == 178


def test_show_cam_on_image_rgb_and_image_weight():
    img, mask = _small_image_and_mask()
    w = 0.2
    blend = (1 - w) * np.stack([_JET_LOW_BGR[::-1], _JET_HIGH_BGR[::-1]])[None] + w * img
    np.testing.assert_array_equal(
        show_cam_on_image(img, mask, use_rgb=True, image_weight=w), np.uint8(255 * blend / blend.max())
    )
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
    overlays = (
        lambda **kw: show_cam_on_image(img, mask, **kw),
        lambda **kw: show_factorization_on_image(img, explanations, **kw),
    )
    for bad, error in (
        (1.5, ValueError),
        (-0.1, ValueError),
        (float("nan"), ValueError),
        (True, TypeError),
        ("0.5", TypeError),
    ):
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
    assert x.shape == (1, 3, 4, 5)
    assert x.dtype == torch.float32
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
    np.testing.assert_allclose(
        preprocess_image(as_uint8, mean=(0, 0, 0), std=(1, 1, 1)).flatten().numpy(),
        [0.0, 0.2, 1.0],
        rtol=1e-6,
    )
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
    assert out.dtype == np.uint8
    assert out.shape == grads.shape
    # Allow one grey level for float32-vs-float64 rounding at a truncation boundary.
    assert np.abs(out.astype(int) - expected.astype(int)).max() <= 1
    # A constant image becomes mid-grey: 0.5 * 255 = 127.5 -> 127.
    assert np.all(deprocess_image(np.full((2, 2, 3), 7.0)) == 127)


# ------------------------------------------------------------------------------------ scale_cam_image


def test_scale_cam_image_normalises_each_map():
    cam = np.array([[[0.0, 2.0], [4.0, 8.0]], [[-1.0, -1.0], [1.0, 3.0]]])
    out = scale_cam_image(cam)
    assert out.dtype == np.float32
    assert out.shape == (2, 2, 2)
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
        np.testing.assert_allclose(
            out[i], cv2.resize(normalised, (20, 10), interpolation=cv2.INTER_LINEAR), rtol=1e-6, atol=1e-6
        )
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
