"""Reshape transforms: turn a transformer layer's output into the ``(B, C, h, w)`` maps the engine expects.

The engine applies ``reshape_transform`` to a target layer's activations and to their gradients,
so both come out as ``(B, C, h, w)`` channel maps on the patch grid. Pass a function directly
(``reshape_transform=vit_reshape_transform``) or fix its options with ``functools.partial``
(``partial(vit_reshape_transform, height=12, width=16)``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F

__all__ = [
    "ChannelsLastReshape",
    "TokenGridReshape",
    "channels_last_reshape",
    "fasterrcnn_reshape_transform",
    "fpn_reshape_transform",
    "guess_reshape_transform",
    "swinT_reshape_transform",
    "swin_reshape_transform",
    "vit_reshape_transform",
]

#: The most prefix tokens guessed when none are given (class token, distillation token, registers): the
#: one limit of :func:`vit_reshape_transform` and of :func:`guess_reshape_transform`, so that a
#: layout one of them recognises, the other reads the same way.
MAX_PREFIX_TOKENS = 16


def _optional_positive_int(value: Any, name: str) -> int | None:
    if value is None:
        return None
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be a positive int or None, got {type(value).__name__} {value!r}")
    if value <= 0:
        raise ValueError(f"{name} must be a positive int or None, got {value}")
    return int(value)


def _grid_from_pair(height: int | None, width: int | None, who: str) -> tuple[int, int] | None:
    height = _optional_positive_int(height, "height")
    width = _optional_positive_int(width, "width")
    if (height is None) != (width is None):
        raise ValueError(
            f"{who}: give both height and width of the patch grid, or neither (to infer a "
            f"square grid); got height={height}, width={width}"
        )
    return None if height is None or width is None else (height, width)


def _square_side(count: int) -> int | None:
    """The side of a square grid with ``count`` cells, or None if ``count`` is not a positive square."""
    if count <= 0:
        return None
    side = math.isqrt(count)
    return side if side * side == count else None


def infer_square_grid(tokens: int) -> tuple[int, int] | None:
    """``(prefix, side)`` for ``tokens`` = ``prefix`` leading tokens + a ``side x side`` patch grid.

    The smallest ``prefix`` in ``0..MAX_PREFIX_TOKENS`` that leaves a perfect square; None if there is none.
    """
    for prefix in range(min(MAX_PREFIX_TOKENS, tokens) + 1):
        side = _square_side(tokens - prefix)
        if side is not None:
            return prefix, side
    return None


def channels_last_to_first(tensor: torch.Tensor) -> torch.Tensor:
    """``(B, *spatial, C)`` -> ``(B, C, *spatial)``, contiguous (Swin-style channels-last maps)."""
    return tensor.movedim(-1, 1).contiguous()


def _require_tensor(tensor: Any, who: str) -> None:
    if not isinstance(tensor, torch.Tensor):
        raise TypeError(f"{who} expects a torch.Tensor, got {type(tensor).__name__}")


def vit_reshape_transform(
    tensor: torch.Tensor,
    height: int | None = None,
    width: int | None = None,
    num_prefix_tokens: int | None = None,
) -> torch.Tensor:
    """ViT tokens ``(B, N, C)`` -> channel maps ``(B, C, h, w)`` on the patch grid.

    A ViT layer outputs ``N = p + h * w`` tokens: ``p`` prefix tokens (the class token, and in some
    models a distillation token or register tokens) followed by the patch tokens in row-major
    order. The prefix tokens are dropped and patch token ``j`` goes to grid cell ``(j // w, j % w)``:
    ``out[b, c, j // w, j % w] = tensor[b, p + j, c]``.

    The number of prefix tokens ``p`` is, in order of precedence:
      * ``num_prefix_tokens`` when given;
      * ``N - height * width`` when the grid is given;
      * otherwise the smallest ``p`` in ``0..16`` (``MAX_PREFIX_TOKENS``) for which ``N - p`` is a
        perfect square (197 tokens -> 1 + 14x14, 50 -> 1 + 7x7, 62 -> 1 + 12 registers + 7x7). Pass
        the grid for non-square inputs.

    Works for torchvision's ``vit_b_16`` (``model.encoder.layers[-1].ln_1``) and timm's ViTs
    (``model.blocks[-1].norm1``), both ``(B, 1 + h*w, C)``.

    Args:
        tensor: ``(B, N, C)`` token tensor (activations or gradients).
        height: the patch grid's height (e.g. 12 for a 192x256 input with 16x16 patches); give both
            ``height`` and ``width`` or neither.
        width: the patch grid's width (e.g. 16 for a 192x256 input with 16x16 patches).
        num_prefix_tokens: how many leading non-patch tokens to drop (e.g. 5 for 1 class + 4 registers).

    Returns:
        ``(B, C, h, w)`` tensor (contiguous).

    Example:
        >>> tokens = torch.randn(2, 197, 768)
        >>> vit_reshape_transform(tokens).shape
        torch.Size([2, 768, 14, 14])
        >>> reshape = functools.partial(vit_reshape_transform, height=12, width=16)
    """
    who = "vit_reshape_transform"
    _require_tensor(tensor, who)
    if tensor.ndim != 3:
        raise ValueError(f"{who} expects tokens of shape (B, N, C), got shape {tuple(tensor.shape)}")
    grid = _grid_from_pair(height, width, who)
    if num_prefix_tokens is not None:
        is_int = isinstance(num_prefix_tokens, (int, np.integer))
        if isinstance(num_prefix_tokens, (bool, np.bool_)) or not is_int:
            raise TypeError(
                f"num_prefix_tokens must be a non-negative int or None, got "
                f"{type(num_prefix_tokens).__name__} {num_prefix_tokens!r}"
            )
        if num_prefix_tokens < 0:
            raise ValueError(f"num_prefix_tokens must be a non-negative int or None, got {num_prefix_tokens}")
        num_prefix_tokens = int(num_prefix_tokens)

    batch, tokens, channels = tensor.shape
    if grid is not None:
        h, w = grid
        prefix = tokens - h * w if num_prefix_tokens is None else num_prefix_tokens
        if prefix < 0 or tokens - prefix != h * w:
            raise ValueError(
                f"{who}: {tokens} tokens do not fit a {h}x{w} grid ({h * w} patches) "
                + (
                    f"after {num_prefix_tokens} prefix tokens"
                    if num_prefix_tokens is not None
                    else "plus prefix tokens"
                )
            )
    elif num_prefix_tokens is not None:
        prefix = num_prefix_tokens
        side = _square_side(tokens - prefix)
        if side is None:
            raise ValueError(
                f"{who}: {tokens} tokens minus {prefix} prefix tokens leaves {tokens - prefix}, "
                "not a square grid; pass height and width"
            )
        h = w = side
    else:
        inferred = infer_square_grid(tokens)
        if inferred is None:
            raise ValueError(
                f"{who}: cannot infer a square patch grid from {tokens} tokens (no count of "
                f"0..{MAX_PREFIX_TOKENS} prefix tokens leaves a perfect square); pass "
                "height and width, or num_prefix_tokens"
            )
        prefix, side = inferred
        h = w = side

    patches = tensor[:, prefix:, :]  # (B, h*w, C), row-major over the grid
    # The reshape is a strided view of the transposed tokens; make it contiguous for the engine's math.
    return patches.transpose(1, 2).reshape(batch, channels, h, w).contiguous()


def swinT_reshape_transform(
    tensor: torch.Tensor, height: int | None = None, width: int | None = None
) -> torch.Tensor:
    """Swin Transformer features -> channel maps ``(B, C, H, W)``.

    Two layouts are accepted:
      * channels-last maps ``(B, H, W, C)`` (torchvision's ``swin_t`` at
        ``model.features[-1][-1].norm1``, and recent timm): ``out = tensor.permute(0, 3, 1, 2)``;
      * tokens ``(B, L, C)`` (older timm), with no class token: ``L = H * W`` patch tokens in
        row-major order, ``out[b, c, j // W, j % W] = tensor[b, j, c]``. The grid is square unless
        ``height`` and ``width`` are given.

    A 4-D input is always read as channels-last; CNN-style ``(B, C, H, W)`` maps need no transform.

    Args:
        tensor: ``(B, H, W, C)`` or ``(B, L, C)`` (activations or gradients).
        height: the grid's height; give both ``height`` and ``width`` or neither. With a 4-D input
            they are only checked.
        width: the grid's width.

    Returns:
        ``(B, C, H, W)`` tensor (contiguous).

    Example:
        >>> swinT_reshape_transform(torch.randn(1, 7, 7, 768)).shape
        torch.Size([1, 768, 7, 7])
    """
    who = "swinT_reshape_transform"
    _require_tensor(tensor, who)
    grid = _grid_from_pair(height, width, who)
    if tensor.ndim == 4:
        if grid is not None and tuple(tensor.shape[1:3]) != grid:
            raise ValueError(
                f"{who}: got a {tensor.shape[1]}x{tensor.shape[2]} grid (shape "
                f"{tuple(tensor.shape)}, read as (B, H, W, C)) but height={grid[0]}, "
                f"width={grid[1]}"
            )
        return channels_last_to_first(tensor)  # (B, C, H, W)
    if tensor.ndim == 3:
        batch, tokens, channels = tensor.shape
        if grid is None:
            side = _square_side(tokens)
            if side is None:
                raise ValueError(f"{who}: {tokens} tokens do not form a square grid; pass height and width")
            grid = (side, side)
        elif grid[0] * grid[1] != tokens:
            raise ValueError(
                f"{who}: {tokens} tokens do not fit a {grid[0]}x{grid[1]} grid ({grid[0] * grid[1]} cells)"
            )
        return tensor.transpose(1, 2).reshape(batch, channels, *grid).contiguous()
    raise ValueError(f"{who} expects (B, H, W, C) maps or (B, L, C) tokens, got shape {tuple(tensor.shape)}")


#: Alias of :func:`swinT_reshape_transform`.
swin_reshape_transform = swinT_reshape_transform


def _pyramid_levels(features: Any, who: str) -> tuple[list, list]:
    """The levels of a pyramid (a dict, in its order, or a list/tuple) and their names, checked.

    Each level must be a ``(B, C, H, W)`` tensor of one batch size.
    """
    if isinstance(features, Mapping):
        levels, names = list(features.values()), list(features.keys())
    elif isinstance(features, (list, tuple)):
        levels, names = list(features), list(range(len(features)))
    else:
        raise TypeError(
            f"{who} expects the pyramid levels as a dict or a list of (B, C, H, W) tensors, got "
            f"{type(features).__name__}"
        )
    if not levels:
        raise ValueError(f"{who}: got no pyramid levels")
    for name, level in zip(names, levels):
        if not isinstance(level, torch.Tensor) or level.ndim != 4:
            got = tuple(level.shape) if isinstance(level, torch.Tensor) else type(level).__name__
            raise ValueError(f"{who}: level {name!r} must be a (B, C, H, W) tensor, got {got}")
        if level.shape[0] != levels[0].shape[0]:
            raise ValueError(
                f"{who}: level {name!r} has batch size {level.shape[0]}, level {names[0]!r} has "
                f"{levels[0].shape[0]}"
            )
    return levels, names


def _pyramid_grid(size: Any, levels: list, names: list, who: str) -> tuple:
    """The common grid ``(h, w)``: the coarsest level's (``size=None``), a named level's, or ``size``."""
    if size is None:
        shapes = [tuple(level.shape[-2:]) for level in levels]
        return min(shapes, key=lambda hw: hw[0] * hw[1])
    if isinstance(size, (str, int)) and not isinstance(size, bool) and size in names:
        return tuple(levels[names.index(size)].shape[-2:])
    if isinstance(size, str):
        raise ValueError(f"{who}: size {size!r} is not a level of the pyramid (levels: {names})")
    grid = (
        (_optional_positive_int(size[0], "size[0]"), _optional_positive_int(size[1], "size[1]"))
        if isinstance(size, (list, tuple)) and len(size) == 2
        else None
    )
    if grid is None or None in grid:
        raise ValueError(f"{who}: size must be None, a level's key or (height, width), got {size!r}")
    return grid


def fpn_reshape_transform(
    features: Mapping[Any, torch.Tensor] | Sequence[torch.Tensor],
    size: str | Sequence[int] | None = None,
    absolute: bool = True,
) -> torch.Tensor:
    """A feature pyramid's levels -> one ``(B, sum_l C_l, h, w)`` tensor.

    Every level is resized to one grid and the levels are concatenated along the channels.

    For detectors whose backbone returns a dict of pyramid levels (torchvision's Faster R-CNN,
    RetinaNet, FCOS: ``target_layers=[model.backbone]``, output ``OrderedDict('0': (B, C, H/8, W/8),
    ..., 'pool': ...)``). With ``absolute`` (the default, as the reference library's tutorial) each level
    is replaced by its magnitude first, since FPN outputs are signed (no ReLU); the engine applies the
    transform to the gradients as well, so pass ``absolute=False`` (``functools.partial``) to keep the
    gradients' signs for gradient-based methods.

    ``out = cat_l resize(|F_l|, (h, w))`` with bilinear resizing (half-pixel centres).

    Args:
        features: the levels, a dict (in its order) or a list/tuple of ``(B, C_l, H_l, W_l)`` tensors.
        size: the common grid: ``None`` for the coarsest level's (the smallest, ``'pool'`` in
            torchvision, as the reference library), a key of ``features`` for that level's, or ``(h, w)``.
        absolute: whether to take each level's absolute value.

    Returns:
        ``(B, sum_l C_l, h, w)`` tensor.

    Example:
        >>> cam = EigenCAM(model, [model.backbone], reshape_transform=fpn_reshape_transform)
        >>> levels = {"0": torch.randn(1, 256, 32, 32), "pool": torch.randn(1, 256, 8, 8)}
        >>> fpn_reshape_transform(levels).shape
        torch.Size([1, 512, 8, 8])
    """
    who = "fpn_reshape_transform"
    levels, names = _pyramid_levels(features, who)
    grid = _pyramid_grid(size, levels, names, who)
    resized = []
    for level in levels:
        level = level.abs() if absolute else level
        if tuple(level.shape[-2:]) != grid:
            level = F.interpolate(level, size=grid, mode="bilinear", align_corners=False)
        resized.append(level)  # (B, C_l, h, w)
    return torch.cat(resized, dim=1)


def fasterrcnn_reshape_transform(
    features: Mapping[Any, torch.Tensor] | Sequence[torch.Tensor],
) -> torch.Tensor:
    """The reference library's name for :func:`fpn_reshape_transform` with its defaults.

    Every level's magnitude, resized to the coarsest level's grid, concatenated along the channels.
    """
    return fpn_reshape_transform(features)


# ------------------------------------------------------------- transforms found from one example output
@dataclass(frozen=True)
class TokenGridReshape:
    """Transformer tokens ``(B, prefix + H*W, D)`` -> ``(B, D, H, W)``, dropping ``prefix`` leading tokens.

    The leading tokens: the class token, registers. :func:`vit_reshape_transform` with the grid and
    prefix fixed. A picklable callable, usable as any ``reshape_transform``.
    """

    prefix: int
    height: int
    width: int

    def __call__(self, tensor: torch.Tensor) -> torch.Tensor:
        """The tokens ``(B, prefix + H*W, D)`` as ``(B, D, H, W)`` maps."""
        return vit_reshape_transform(tensor, self.height, self.width, self.prefix)  # (B, D, H, W)

    def describe(self) -> str:
        """A one-line description of the transform (the grid and the dropped tokens)."""
        extra = f", dropping {self.prefix} leading token(s)" if self.prefix else ""
        return f"tokens -> {self.height}x{self.width} grid{extra}"


@dataclass(frozen=True)
class ChannelsLastReshape:
    """``(B, *spatial, C)`` -> ``(B, C, *spatial)`` (Swin-style channels-last feature maps).

    For ``(B, H, W, C)`` the channels-last branch of ``swinT_reshape_transform``. A picklable callable.
    """

    def __call__(self, tensor: torch.Tensor) -> torch.Tensor:
        """The channels-last ``(B, *spatial, C)`` tensor as ``(B, C, *spatial)``."""
        return channels_last_to_first(tensor)

    def describe(self) -> str:
        """A one-line description of the transform."""
        return "channels-last (B, H, W, C) -> (B, C, H, W)"


#: The channels-last transform that :func:`guess_reshape_transform` finds.
channels_last_reshape = ChannelsLastReshape()


def guess_reshape_transform(output: torch.Tensor) -> tuple[Callable | None, bool]:
    """Recognise a layer output's layout from one example; returns ``(transform or None, ok)``.

    * ``(B, C, *spatial)`` with channels first: no transform needed.
    * ``(B, H, W, C)`` channels last (Swin): the last axis is longer than both spatial ones.
    * ``(B, N, D)`` transformer tokens: ``N - p`` must be a square ``H * H`` for some ``p`` in
      ``0..MAX_PREFIX_TOKENS`` (class token, distillation token, registers); the smallest such ``p`` wins.
    ``ok`` is False when the layout is not recognisable (e.g. tokens that form no square grid).
    """
    if output.ndim == 3:
        # vit_reshape_transform's own inference, at least a 2x2 grid (a 1x1 grid locates nothing).
        inferred = infer_square_grid(output.shape[1])
        if inferred is None or inferred[1] < 2:
            return None, False
        prefix, side = inferred
        return TokenGridReshape(prefix, side, side), True
    if output.ndim == 4 and output.shape[3] > output.shape[1] and output.shape[3] > output.shape[2]:
        return channels_last_reshape, True
    return None, output.ndim >= 3
