"""Map arithmetic shared by every method: resize, normalise, broadcast, principal component, constant maps."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from .warnings import warn

#: The interpolation mode of ``F.interpolate`` for 1, 2 and 3 spatial dimensions.
INTERPOLATION = {1: "linear", 2: "bilinear", 3: "trilinear"}


def resize_maps(maps: torch.Tensor, size: Sequence[int], align_corners: bool = False) -> torch.Tensor:
    """Resize ``(B, *spatial)`` maps to ``(B, *size)``: (bi/tri)linear, half-pixel centres by default.

    The same sampling as ``cv2.resize``.
    """
    size = tuple(int(s) for s in size)
    if tuple(maps.shape[1:]) == size:
        return maps
    mode = INTERPOLATION[len(size)]
    return F.interpolate(maps.unsqueeze(1), size=size, mode=mode, align_corners=align_corners)[:, 0]


def min_max_normalize(maps: torch.Tensor, eps: float | torch.Tensor | None = None) -> torch.Tensor:
    """Per map: ``(m - min) / (max - min)`` over all positions; a constant map becomes all zeros.

    ``(B, *spatial)`` in and out. Without ``eps`` it is scale-invariant: scaling a map by any positive
    factor (scores times 1e-12, say) gives the same normalised map, peaking at exactly 1. (The reference
    library divides by ``max - min + 1e-7``, so a map whose range is 1e-6 peaks at 0.91 there; in the
    usual range of maps the two agree to 1e-7 relative.) ``eps`` adds an epsilon to the denominator
    instead: a float, or one per map ``(B,)`` (FullGrad's, relative to each image's score); Score-CAM's
    masks take the paper's ``1e-8``.
    """
    flat = maps.flatten(1)  # (B, N)
    flat = flat - flat.amin(1, keepdim=True)
    peak = flat.amax(1, keepdim=True)  # (B, 1), >= 0
    if eps is not None:
        eps = eps.reshape(-1, 1) if isinstance(eps, torch.Tensor) else eps  # (B, 1) or a float
        peak = peak + eps
    return (flat / torch.where(peak > 0, peak, torch.ones_like(peak))).view_as(maps)


def broadcast_weights(weights: torch.Tensor, activations: torch.Tensor) -> torch.Tensor:
    """``(B, C)`` channel weights viewed as ``(B, C, 1, ..., 1)`` to multiply ``(B, C, *spatial)``."""
    return weights.reshape(*weights.shape, *([1] * (activations.ndim - weights.ndim)))


def first_principal_component(activations: torch.Tensor) -> torch.Tensor:
    """Projection of each position on the first principal component of the channels.

    ``(B, C, *spatial)`` -> ``(B, *spatial)``. Per image the activations are reshaped to
    ``X`` = (positions x channels), each channel is centred, and ``X v`` is returned, with ``v`` the
    first right singular vector of ``X`` (EigenCAM, arXiv:2008.00299). Computed in float32 in one
    batched SVD.

    The sign of a singular vector is arbitrary (it depends on the SVD backend), so it is fixed here:
    the projection is made to correlate non-negatively with the channel sum of the activations, the
    map one gets without the SVD. For EigenCAM that is the total activation; for eigen smoothing of
    ``w * A`` it is the plain CAM. So the component always points at what the layer responds to, never
    at the background.
    """
    acts = torch.nan_to_num(activations.float(), nan=0.0)
    x = acts.flatten(2).transpose(1, 2)  # (B, N, C)
    x = x - x.mean(1, keepdim=True)
    _, _, vh = torch.linalg.svd(x, full_matrices=False)  # vh: (B, min(N, C), C)
    projection = (x @ vh[:, 0, :, None])[..., 0]  # (B, N)
    return orient_like_channel_sum(projection, acts)


def orient_like_channel_sum(projection: torch.Tensor, activations: torch.Tensor) -> torch.Tensor:
    """Fix the arbitrary sign of a component; returns ``(B, *spatial)``.

    The ``(B, N)`` projections are flipped where they correlate negatively with the channel sum of the
    ``(B, C, *spatial)`` activations.
    """
    reference = activations.flatten(2).sum(1)  # (B, N)
    reference = reference - reference.mean(1, keepdim=True)
    sign = torch.where((projection * reference).sum(1) < 0, -1.0, 1.0)  # (B,)
    return (projection * sign[:, None]).view(activations.shape[0], *activations.shape[2:])


_CONSTANT_REASON = "often: all weights negative, or no positive evidence for the target"


def warn_if_constant(maps: torch.Tensor, what: str, reason: str = _CONSTANT_REASON) -> None:
    """A ``RuntimeWarning`` naming the images whose ``(B, *spatial)`` map is constant.

    Such a map normalises to all zeros; the warning is attributed to the user's line. ``what`` names the map,
    e.g. "the CAM of layer 'layer4'"; ``reason`` says why it usually happens for this method.
    """
    flat = maps.flatten(1)
    constant = (flat.amax(1) == flat.amin(1)).nonzero().flatten().tolist()
    if constant:
        warn(f"{what} is constant for image(s) {constant} ({reason}); its map is all zeros", RuntimeWarning)
