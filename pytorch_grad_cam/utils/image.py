"""Image helpers: overlay a CAM on an image, normalise an image for a model, rescale CAMs."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import cv2
import numpy as np
import torch

from .._engine.checks import check_bool, check_float

__all__ = [
    "deprocess_image",
    "preprocess_image",
    "scale_cam_image",
    "show_cam_on_image",
    "show_factorization_on_image",
]

# The reference library's defaults; torchvision's ImageNet models want
# mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225), passed explicitly.
_DEFAULT_MEAN = (0.5, 0.5, 0.5)
_DEFAULT_STD = (0.5, 0.5, 0.5)


def _require_array(value: Any, name: str) -> np.ndarray:
    if not isinstance(value, np.ndarray):
        raise TypeError(f"{name} must be a numpy.ndarray, got {type(value).__name__}")
    return value


def _require_unit_float_image(img: np.ndarray, name: str) -> None:
    """Raise unless ``img`` is a float image with values in [0, 1] (the usual 0-255 mistake included)."""
    hint = "pass a float image in [0, 1], e.g. np.float32(img) / 255"
    if not np.issubdtype(img.dtype, np.floating):
        raise ValueError(f"{name} must be a float image with values in [0, 1], got dtype {img.dtype}; {hint}")
    if img.size == 0:
        raise ValueError(f"{name} is empty (shape {img.shape})")
    lo, hi = float(np.min(img)), float(np.max(img))
    if not (np.isfinite(lo) and np.isfinite(hi)):
        raise ValueError(f"{name} contains NaN or infinite values")
    if hi > 1:
        raise ValueError(f"{name} has values above 1 (max {hi:g}); {hint}")
    if lo < 0:
        raise ValueError(
            f"{name} has values below 0 (min {lo:g}); pass the image before mean/std "
            "normalisation, with values in [0, 1]"
        )


def _check_image_weight(image_weight: Any) -> float:
    """The image's weight in an overlay blend: a real number in [0, 1] (bools refused)."""
    return check_float(image_weight, "image_weight", 0, 1)


def _check_unit_range(values: np.ndarray, name: str, hint: str = "") -> None:
    """Raise unless ``values`` (non-empty) are finite and in [0, 1], up to a float round-off of 1e-6.

    Anything further out would wrap around in the uint8 cast of an overlay.
    """
    lo, hi = float(np.min(values)), float(np.max(values))
    if not (np.isfinite(lo) and np.isfinite(hi)):
        raise ValueError(f"{name} contain NaN or infinite values")
    if lo < -1e-6 or hi > 1 + 1e-6:
        raise ValueError(f"{name} must be in [0, 1], got min {lo:g} and max {hi:g}{hint}")


def show_cam_on_image(
    img: np.ndarray,
    mask: np.ndarray,
    use_rgb: bool = False,
    colormap: int = cv2.COLORMAP_JET,
    image_weight: float = 0.5,
) -> np.ndarray:
    """Overlay a CAM, drawn as a colour heatmap, on an image.

    ``heatmap = applyColorMap(uint8(255 * mask), colormap) / 255`` (BGR, converted to RGB when
    ``use_rgb``), ``cam = (1 - image_weight) * heatmap + image_weight * img``, then
    ``cam = cam / max(cam)`` and the result is ``uint8(255 * cam)``.

    Args:
        img: ``(H, W, 3)`` float image with values in [0, 1] (float32 or float64), in the same
            channel order as the heatmap: RGB if ``use_rgb`` else BGR.
        mask: ``(h, w)`` CAM with values in [0, 1], e.g. one map from a CAM call. If its size
            differs from the image's it is resized to ``(H, W)`` with bilinear interpolation
            (``cv2.resize``, ``INTER_LINEAR``).
        use_rgb: return the heatmap in RGB order (for matplotlib/PIL) rather than OpenCV's BGR.
        colormap: an OpenCV colormap id, e.g. ``cv2.COLORMAP_JET``.
        image_weight: weight of the image in the blend, in [0, 1]; the heatmap gets ``1 - image_weight``.

    Returns:
        ``(H, W, 3)`` uint8 image. The inputs are not modified.

    Example:
        >>> rgb = np.float32(cv2.imread("cat.jpg")[:, :, ::-1]) / 255
        >>> overlay = show_cam_on_image(rgb, grayscale_cam[0], use_rgb=True)
    """
    _require_array(img, "img")
    _require_array(mask, "mask")
    if img.ndim != 3 or img.shape[2] != 3:
        raise ValueError(f"img must have shape (H, W, 3), got shape {img.shape}")
    _require_unit_float_image(img, "img")
    if mask.ndim != 2:
        raise ValueError(
            f"mask must be a 2-D (H, W) map, got shape {mask.shape}; for a batch of CAMs "
            "pass one map, e.g. grayscale_cam[0]"
        )
    if mask.size == 0:
        raise ValueError(f"mask is empty (shape {mask.shape})")
    image_weight = _check_image_weight(image_weight)
    use_rgb = check_bool(use_rgb, "use_rgb")
    if isinstance(colormap, bool) or not isinstance(colormap, (int, np.integer)):
        raise TypeError(
            f"colormap must be an OpenCV colormap id (int, e.g. cv2.COLORMAP_JET), "
            f"got {type(colormap).__name__}"
        )

    mask = mask.astype(np.float32)  # a copy: cv2.resize needs float32, and the caller's array stays intact
    _check_unit_range(mask, "mask values", "; normalise it first, e.g. with scale_cam_image")
    height, width = img.shape[:2]
    if mask.shape != (height, width):
        mask = cv2.resize(mask, (width, height), interpolation=cv2.INTER_LINEAR)
    mask = np.clip(mask, 0.0, 1.0)

    heatmap = cv2.applyColorMap((255 * mask).astype(np.uint8), int(colormap))
    if use_rgb:
        heatmap = cv2.cvtColor(heatmap, cv2.COLOR_BGR2RGB)
    heatmap = heatmap.astype(np.float32) / 255

    cam = (1 - image_weight) * heatmap + image_weight * img
    peak = np.max(cam)
    # Stretch so the brightest pixel is white; an all-black blend (possible only with image_weight=1
    # on a black image) stays black instead of dividing by zero.
    if peak > 0:
        cam = cam / peak
    return (255 * cam).astype(np.uint8)


def _three_floats(values: Any, name: str, channels: int) -> np.ndarray:
    try:
        arr = np.asarray(values, dtype=np.float32)
    except (TypeError, ValueError):
        raise TypeError(f"{name} must be a sequence of {channels} numbers, got {values!r}") from None
    if arr.shape != (channels,):
        raise ValueError(f"{name} must have one value per channel ({channels}), got {values!r}")
    return arr


def preprocess_image(
    img: np.ndarray, mean: Sequence[float] = _DEFAULT_MEAN, std: Sequence[float] = _DEFAULT_STD
) -> torch.Tensor:
    """Turn an ``(H, W, 3)`` image into a normalised ``(1, 3, H, W)`` float32 tensor for a model.

    ``x[c] = (img[..., c] - mean[c]) / std[c]``, with a uint8 image first divided by 255.
    The defaults (0.5 for every channel, mapping [0, 1] to [-1, 1]) are the reference library's, so
    old code gets the same tensors; torchvision's ImageNet models want
    ``mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225)``.

    Args:
        img: ``(H, W, 3)`` float image in [0, 1], or a uint8 image in [0, 255].
        mean: per-channel mean (tuple, list or array of 3 numbers).
        std: per-channel standard deviation (3 positive numbers).

    Returns:
        ``(1, 3, H, W)`` float32 tensor.

    Example:
        >>> x = preprocess_image(np.float32(rgb) / 255, mean=(0.485, 0.456, 0.406),
        ...                      std=(0.229, 0.224, 0.225))  # (1, 3, H, W), ready for model(x)
    """
    _require_array(img, "img")
    if img.ndim != 3 or img.shape[2] != 3:
        raise ValueError(f"img must have shape (H, W, 3), got shape {img.shape}")
    if img.dtype == np.uint8:
        img = img.astype(np.float32) / 255
    else:
        _require_unit_float_image(img, "img")
    mean_arr = _three_floats(mean, "mean", 3)
    std_arr = _three_floats(std, "std", 3)
    if np.any(std_arr <= 0):
        raise ValueError(f"std must be positive, got {std!r}")
    normalised = (img.astype(np.float32) - mean_arr) / std_arr  # new array; the input is untouched
    return torch.from_numpy(np.ascontiguousarray(normalised.transpose(2, 0, 1)))[None]


def deprocess_image(img: np.ndarray) -> np.ndarray:
    """Map an image-shaped array of arbitrary range (e.g. guided-backprop gradients) to a uint8 image.

    ``img = (img - mean(img)) / (std(img) + 1e-5) * 0.1 + 0.5``, clipped to [0, 1], times 255:
    the values are centred on mid-grey with a standard deviation of 0.1, so ±5 std fit in range.

    Args:
        img: array of any shape, typically ``(H, W, 3)``.

    Returns:
        uint8 array of the same shape. The input is not modified.

    Example:
        >>> gb = GuidedBackpropReLUModel(model)(x)  # (H, W, 3) float gradients
        >>> cv2.imwrite("gb.jpg", deprocess_image(gb))
    """
    _require_array(img, "img")
    if img.size == 0:
        raise ValueError(f"img is empty (shape {img.shape})")
    img = img.astype(np.float64)
    img = img - np.mean(img)
    img = img / (np.std(img) + 1e-5)
    img = img * 0.1
    img = img + 0.5
    img = np.clip(img, 0, 1)
    return (img * 255).astype(np.uint8)


def _check_target_size(target_size: Any, rank: int) -> tuple[int, ...]:
    if isinstance(target_size, (int, np.integer)) and not isinstance(target_size, (bool, np.bool_)):
        target_size = (target_size,)
    try:
        size = tuple(target_size)
    except TypeError:
        raise TypeError(f"target_size must be a tuple of ints, got {type(target_size).__name__}") from None
    if rank not in (1, 2):
        raise ValueError(
            f"target_size is supported for 1-D and 2-D maps, but each map here has {rank} "
            "dimensions; pass target_size=None to only normalise"
        )
    expected = "(W, H)" if rank == 2 else "(L,)"
    if len(size) != rank or not all(
        isinstance(s, (int, np.integer)) and not isinstance(s, (bool, np.bool_)) and s > 0 for s in size
    ):
        raise ValueError(
            f"target_size for {rank}-D maps must be {expected} with positive ints, got {target_size!r}"
        )
    return tuple(int(s) for s in size)


def _resize_1d(signal: np.ndarray, length: int) -> np.ndarray:
    """Linear resize with half-pixel centres and clamped edges, as cv2.resize does along one axis."""
    n = signal.shape[0]
    positions = (np.arange(length, dtype=np.float64) + 0.5) * (n / length) - 0.5
    return np.interp(np.clip(positions, 0, n - 1), np.arange(n), signal)


def scale_cam_image(cam: np.ndarray, target_size: int | Sequence[int] | None = None) -> np.ndarray:
    """Min-max normalise each map of a batch to [0, 1], then optionally resize it.

    Per image: ``m = m - min(m)``, ``m = m / (1e-7 + max(m))`` (a constant map becomes all zeros).
    With ``target_size`` each map is then resized by linear interpolation: ``cv2.resize`` with
    ``INTER_LINEAR`` for 2-D maps, the same half-pixel linear rule for 1-D maps.

    Args:
        cam: ``(B, *map_shape)`` array: ``(B, H, W)`` for images, ``(B, L)`` for 1-D signals.
        target_size: ``(W, H)`` (OpenCV order: width first) for 2-D maps, ``(L,)`` or ``L`` for
            1-D maps; None to keep the size. Other map ranks can only be normalised.

    Returns:
        float32 array ``(B, H_out, W_out)`` (or ``(B, L_out)``, or ``cam``'s shape when not resizing).

    Example:
        >>> scale_cam_image(np.array([[[0., 2.], [4., 8.]]]))[0]
        array([[0.  , 0.25],
               [0.5 , 1.  ]], dtype=float32)
        >>> scale_cam_image(np.random.rand(2, 7, 7), target_size=(224, 224)).shape
        (2, 224, 224)
    """
    _require_array(cam, "cam")
    if cam.ndim < 1:
        raise ValueError("cam must be a batch of maps of shape (B, ...), got a 0-d array")
    size = None if target_size is None else _check_target_size(target_size, cam.ndim - 1)
    # Integers and float16 are computed in float64; cv2.resize handles float32/float64 only.
    work_dtype = cam.dtype if cam.dtype in (np.float32, np.float64) else np.float64

    result = []
    for img in cam:
        img = img.astype(work_dtype)  # a copy, so the caller's array is never modified
        img = img - np.min(img)
        img = img / (1e-7 + np.max(img))
        if size is not None:
            if img.ndim == 2:
                img = cv2.resize(img, size, interpolation=cv2.INTER_LINEAR)
            else:
                img = _resize_1d(img, size[0])
        result.append(img)
    if not result:  # an empty batch still gets the right trailing shape
        tail = cam.shape[1:] if size is None else tuple(reversed(size))
        return np.zeros((0, *tail), dtype=np.float32)
    return np.stack(result).astype(np.float32)


def _concept_colors(colors: Any, n_components: int) -> np.ndarray:
    """``(K, 3)`` RGB floats in [0, 1]: the given colours, or ``K`` hues evenly spaced on the colour wheel."""
    if colors is None:
        import colorsys

        return np.array([colorsys.hsv_to_rgb(i / n_components, 1.0, 1.0) for i in range(n_components)])
    try:
        rows = [np.asarray(c, dtype=np.float64).reshape(-1) for c in colors]
    except (TypeError, ValueError):
        raise TypeError(
            f"colors must be a list of RGB (or RGBA) colours with values in [0, 1], got {colors!r}"
        ) from None
    if len(rows) != n_components:
        raise ValueError(
            f"colors has {len(rows)} entries but explanations has {n_components} components; "
            "give one colour per component"
        )
    for i, row in enumerate(rows):
        if row.shape[0] not in (3, 4) or not np.all(np.isfinite(row)) or row.min() < 0 or row.max() > 1:
            raise ValueError(
                f"colors[{i}] must be 3 (RGB) or 4 (RGBA) values in [0, 1], got {colors[i]!r}; "
                "for 0-255 colours divide by 255"
            )
    return np.stack([row[:3] for row in rows])


def _legend_panel(height: int, width: int, colors: np.ndarray, labels: Sequence[str]) -> np.ndarray:
    """A white ``(height, width, 3)`` uint8 panel: per concept a box of its colour and its label's lines.

    Drawn with OpenCV's Hershey font (ASCII only: other characters are drawn as '?'), sized so that
    every line fits the panel.
    """
    font = cv2.FONT_HERSHEY_SIMPLEX
    panel = np.full((height, width, 3), 255, dtype=np.uint8)
    entries = [
        [line.encode("ascii", "replace").decode("ascii") for line in label.split("\n")] for label in labels
    ]
    rows = sum(len(lines) for lines in entries) + 0.5 * (len(entries) + 1)  # lines plus half-row gaps
    row = min(height / rows, height / 8)
    margin = max(1.0, 0.02 * width)
    box = 0.8 * row
    text_x = margin + box + margin
    (_, text_h), _ = cv2.getTextSize("Ag", font, 1.0, 1)
    widest = max(
        (cv2.getTextSize(line, font, 1.0, 1)[0][0] for lines in entries for line in lines if line), default=1
    )
    scale = min(0.6 * row / text_h, max(width - text_x - margin, 1.0) / max(widest, 1))
    thickness = max(1, round(scale))
    y = 0.5 * row
    for color, lines in zip(colors, entries):
        rgb = tuple(round(255 * c) for c in color)
        top = round(y + 0.1 * row)
        cv2.rectangle(
            panel,
            (round(margin), top),
            (round(margin + box), round(top + box)),
            rgb,
            thickness=-1,
        )
        for j, line in enumerate(lines):
            baseline = round(y + j * row + (row + scale * text_h) / 2)
            cv2.putText(
                panel, line, (round(text_x), baseline), font, scale, (0, 0, 0), thickness, cv2.LINE_AA
            )
        y += (len(lines) + 0.5) * row
    return panel


def show_factorization_on_image(
    img: np.ndarray,
    explanations: np.ndarray,
    colors: Sequence[Sequence[float]] | None = None,
    image_weight: float = 0.5,
    concept_labels: Sequence[str] | None = None,
) -> np.ndarray:
    r"""Colour each pixel by its dominant concept of a Deep Feature Factorization, blended with the image.

    At each pixel the concept with the largest explanation value ``e`` wins (ties: the lowest index);
    the pixel gets that concept's colour at brightness ``e`` (its hue and saturation, with HSV value
    ``e``: ``e * c / max(c)``), and ``out = uint8(255 * (image_weight * img + (1 - image_weight) * mask))``.

    Args:
        img: ``(H, W, 3)`` RGB float image with values in [0, 1].
        explanations: ``(K, h, w)`` heatmaps in [0, 1], e.g. ``explanations[i]`` of a
            :class:`~pytorch_grad_cam.DeepFeatureFactorization` call; resized to ``(H, W)`` (bilinear) if
            needed. Not modified.
        colors: one RGB (or RGBA, alpha ignored) colour per concept, values in [0, 1]; by default ``K``
            hues evenly spaced on the colour wheel (red first).
        image_weight: weight of the image in the blend, in [0, 1].
        concept_labels: one string per concept (``"\n"`` separates lines); if given, a legend panel as
            large as the image, with each concept's colour and label, is drawn (with OpenCV) to the right.

    Returns:
        ``(H, W, 3)`` uint8 RGB image, or ``(H, 2 * W, 3)`` with the legend.

    Example:
        >>> concepts, explanations, logits = dff(x, n_components=4)
        >>> vis = show_factorization_on_image(rgb, explanations[0], image_weight=0.3,
        ...                                   concept_labels=["cat", "dog", "grass", "sky"])
    """
    _require_array(img, "img")
    _require_array(explanations, "explanations")
    if img.ndim != 3 or img.shape[2] != 3:
        raise ValueError(f"img must have shape (H, W, 3), got shape {img.shape}")
    _require_unit_float_image(img, "img")
    if explanations.ndim != 3 or explanations.shape[0] == 0 or explanations.size == 0:
        raise ValueError(
            f"explanations must have shape (K, H, W) with K >= 1 (one image's heatmaps, e.g. "
            f"batch_explanations[0]), got shape {explanations.shape}"
        )
    _check_image_weight(image_weight)
    n_components = explanations.shape[0]
    palette = _concept_colors(colors, n_components)  # (K, 3)
    if concept_labels is not None:
        if isinstance(concept_labels, str) or len(concept_labels) != n_components:
            raise ValueError(
                f"concept_labels must be a list of {n_components} strings (one per component), "
                f"got {concept_labels!r}"
            )
        if not all(isinstance(label, str) for label in concept_labels):
            raise TypeError("concept_labels must be strings")

    maps = explanations.astype(np.float64)  # a copy: the caller's array is never modified
    _check_unit_range(maps, "explanations")
    height, width = img.shape[:2]
    if maps.shape[1:] != (height, width):
        maps = np.stack([cv2.resize(m, (width, height), interpolation=cv2.INTER_LINEAR) for m in maps])
    maps = np.clip(maps, 0.0, 1.0)  # (K, H, W)

    brightest = palette.max(1, keepdims=True)  # (K, 1)
    # Full-brightness colours; a black colour has no hue, so like HSV it becomes grey.
    full = np.where(brightest > 0, palette / np.where(brightest > 0, brightest, 1), 1.0)  # (K, 3)
    dominant = maps.argmax(0)  # (H, W)
    strength = np.take_along_axis(maps, dominant[None], 0)[0]  # (H, W)
    mask = full[dominant] * strength[..., None]  # (H, W, 3)
    result = (255 * (image_weight * img.astype(np.float64) + (1 - image_weight) * mask)).astype(np.uint8)
    if concept_labels is None:
        return result
    return np.hstack((result, _legend_panel(height, width, palette, concept_labels)))
