"""Argument checks shared by every method's constructor: one wording, one rule for error types.

A value of the wrong type raises ``TypeError``; a value of the right type outside its range raises
``ValueError``. Each message names the argument, what was expected and what was given.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from .capture import hooked_module

#: The spatial ranks a CAM supports: 1D signals, 2D images, 3D volumes.
SPATIAL_RANKS = (1, 2, 3)

_INTS = (int, np.integer)
_REALS = (int, float, np.integer, np.floating)


def check_int(value: Any, name: str, minimum: int | None = None) -> int:
    """``value`` as a Python int (numpy ints accepted, bools refused), at least ``minimum`` if given."""
    expected = "an int" if minimum is None else f"an int >= {minimum}"
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, _INTS):
        raise TypeError(f"{name} must be {expected}, got {type(value).__name__} {value!r}")
    if minimum is not None and value < minimum:
        raise ValueError(f"{name} must be {expected}, got {int(value)}")
    return int(value)


def check_float(
    value: Any,
    name: str,
    minimum: float | None = None,
    maximum: float | None = None,
    include_minimum: bool = True,
    include_maximum: bool = True,
) -> float:
    """``value`` as a finite Python float within ``[minimum, maximum]``.

    Ints and numpy numbers are accepted, bools refused; each end is open with ``include_minimum=False`` /
    ``include_maximum=False``.
    """
    low = "" if minimum is None else f"{'>=' if include_minimum else '>'} {minimum}"
    high = "" if maximum is None else f"{'<=' if include_maximum else '<'} {maximum}"
    expected = (
        "a finite float"
        + (f" {low}" if low else "")
        + (f" and {high}" if low and high else f" {high}" if high else "")
    )
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, _REALS):
        raise TypeError(f"{name} must be {expected}, got {type(value).__name__} {value!r}")
    value = float(value)
    below = minimum is not None and (value < minimum if include_minimum else value <= minimum)
    above = maximum is not None and (value > maximum if include_maximum else value >= maximum)
    if not math.isfinite(value) or below or above:
        raise ValueError(f"{name} must be {expected}, got {value}")
    return value


def check_seed(seed: Any, name: str = "seed") -> int | None:
    """``None`` (fresh randomness on every call) or an int seed."""
    if seed is not None and (isinstance(seed, (bool, np.bool_)) or not isinstance(seed, _INTS)):
        raise TypeError(f"{name} must be None or an int, got {type(seed).__name__} {seed!r}")
    return None if seed is None else int(seed)


def check_batch_size(value: Any) -> int:
    """``batch_size``: a positive int (numpy ints accepted, bools refused)."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, _INTS):
        raise TypeError(f"batch_size must be a positive int, got {type(value).__name__}")
    if value <= 0:
        raise ValueError(f"batch_size must be a positive int, got {value}")
    return int(value)


def check_bool(value: Any, name: str) -> bool:
    """``value`` as a bool (numpy bools accepted); anything else is a TypeError."""
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be a bool, got {type(value).__name__} {value!r}")
    return bool(value)


def check_choice(value: Any, name: str, choices: Sequence[str]) -> str:
    """``value`` as one of the strings ``choices``.

    A non-string is a TypeError, another string a ValueError.
    """
    if not isinstance(value, str):
        raise TypeError(f"{name} must be one of {tuple(choices)}, got {type(value).__name__} {value!r}")
    if value not in choices:
        raise ValueError(f"{name} must be one of {tuple(choices)}, got {value!r}")
    return value


def check_layers(model: nn.Module, target_layers: Any, target_layer: Any = None) -> list[nn.Module]:
    """The target layers as a list of distinct modules of ``model``.

    ``target_layers`` is a list of modules or one module (``target_layer`` is the first API's name for
    one module); a module that is not in the model, a repeated module or an empty list is refused.
    """
    if target_layers is not None and target_layer is not None:
        raise TypeError("pass target_layers (a list) or target_layer (the first API's name), not both")
    layers = target_layers if target_layers is not None else target_layer
    if layers is None:
        raise TypeError("target_layers is required: the layer(s) to explain, e.g. [model.layer4[-1]]")
    if isinstance(layers, nn.Module):
        layers = [layers]  # one module means that module, even an iterable nn.Sequential
    try:
        layers = list(layers)
    except TypeError:
        raise TypeError(f"target_layers must be a list of nn.Module, got {type(layers).__name__}") from None
    if not layers:
        raise ValueError("target_layers is empty; give at least one layer")
    in_model = {id(m) for m in model.modules()}
    for i, layer in enumerate(layers):
        if not isinstance(layer, nn.Module):
            raise TypeError(f"target_layers[{i}] must be an nn.Module, got {type(layer).__name__}")
        if id(hooked_module(layer)) not in in_model:  # a LayerInput: the module whose input it is
            raise ValueError(f"target_layers[{i}] ({type(layer).__name__}) is not a module of the model")
    if len({id(layer) for layer in layers}) != len(layers):
        raise ValueError("target_layers lists the same module more than once")
    return layers


def check_device(use_cuda: bool | None, device: str | torch.device | None) -> torch.device | None:
    """The compute device: ``device``, or CUDA for ``use_cuda=True`` (the first API's name), or ``None``.

    ``None``: follow the model. A CUDA device that is not available is a ValueError.
    """
    if use_cuda is not None and device is not None:
        raise TypeError("pass device or use_cuda (the first API's name), not both")
    if use_cuda:
        device = "cuda"
    if device is None:
        return None
    device = torch.device(device)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(
                f"device {device} was requested (use_cuda=True or device='cuda') but CUDA "
                "is not available here; use device='cpu' or leave it out to follow the "
                "model"
            )
        if device.index is None:
            device = torch.device("cuda", torch.cuda.current_device())
    return device


def check_input(input_tensor: Any, model: nn.Module | None = None) -> torch.Tensor:
    """A finite floating-point ``(B, C, *spatial)`` tensor with 1-3 spatial dims and ``B >= 1``.

    With ``model``, also the two layout mistakes its first convolution shows before any forward pass: one
    image without the batch dimension (``(C, H, W)`` for a ``Conv2d``), and channels last (``(B, H, W, C)``).
    """
    if not isinstance(input_tensor, torch.Tensor):
        raise TypeError(
            f"input_tensor must be a torch.Tensor of shape (B, C, *spatial), got "
            f"{type(input_tensor).__name__}"
        )
    if not input_tensor.is_floating_point():
        raise TypeError(f"input_tensor must be a floating-point tensor, got dtype {input_tensor.dtype}")
    if model is not None:
        _check_layout_for(model, input_tensor)
    if input_tensor.ndim < 3:
        raise ValueError(
            f"input_tensor must have shape (B, C, *spatial) with 1-3 spatial dims, got "
            f"shape {tuple(input_tensor.shape)}"
        )
    if input_tensor.shape[0] == 0:
        raise ValueError("input_tensor is an empty batch (B == 0)")
    if input_tensor.ndim - 2 not in SPATIAL_RANKS:
        raise ValueError(f"input_tensor has {input_tensor.ndim - 2} spatial dims; 1, 2 or 3 are supported")
    if not bool(torch.isfinite(input_tensor).all()):
        raise ValueError("input_tensor contains NaN or Inf")
    return input_tensor


_CONVOLUTIONS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)


def _check_layout_for(model: nn.Module, x: torch.Tensor) -> None:
    """The layout mistakes that the model's first convolution (in registration order) makes certain."""
    conv = next((m for m in model.modules() if isinstance(m, _CONVOLUTIONS)), None)
    if conv is None or not conv.in_channels:  # no convolution, or a lazy one not initialised yet
        return
    dims, channels = len(conv.kernel_size), conv.in_channels
    layout = f"(B, {channels}, {', '.join('HWD'[:dims] if dims > 1 else 'L')})"
    if x.ndim == dims + 1 and x.shape[0] == channels:
        raise ValueError(
            f"input_tensor must have shape {layout} (the model's first convolution, {type(conv).__name__}, "
            f"takes {channels} channels), got shape {tuple(x.shape)}: one input without the batch "
            "dimension; pass input_tensor.unsqueeze(0)"
        )
    if x.ndim == dims + 2 and x.shape[1] != channels and x.shape[-1] == channels:
        raise ValueError(
            f"input_tensor must have shape {layout} (the model's first convolution, {type(conv).__name__}, "
            f"takes {channels} channels), got shape {tuple(x.shape)}: channels last; pass "
            "input_tensor.movedim(-1, 1)"
        )


def check_layer_layout(activations: torch.Tensor, x: torch.Tensor, name: str, reshape: Any) -> None:
    """A target layer's reshaped output must be ``(B, C, *grid)`` with as many spatial dims as the input.

    Checked right after the forward pass, before any map is made; the usual cause is a transformer's
    tokens ``(B, N, C)`` without a ``reshape_transform``.
    """
    if activations.ndim == x.ndim:
        return
    shape, given = tuple(activations.shape), tuple(x.shape)
    if reshape is None and activations.ndim == 3 and x.ndim == 4:
        raise ValueError(
            f"target layer '{name}' outputs {shape} for an input of shape {given}: a sequence of tokens "
            "(B, N, C), not a (B, C, H, W) map; pass reshape_transform=vit_reshape_transform (from "
            "pytorch_grad_cam.utils.reshape_transforms), or let find_target_layer(model, x) choose the "
            "layer and its reshape_transform"
        )
    through = "" if reshape is None else " after reshape_transform"
    raise ValueError(
        f"target layer '{name}' outputs {shape}{through} for an input of shape {given}: expected "
        f"(B, C, *grid) with {x.ndim - 2} spatial dim(s) like the input; choose another layer or a "
        "reshape_transform that gives that layout"
    )
