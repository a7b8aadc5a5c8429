"""SESS: the base method on multi-scale sliding windows, fused into one map.

In three parts: the geometry (:class:`SlidingWindows`: scales and windows), the patch iteration
(:func:`patches`, :func:`batches`: one scaled input at a time, ``batch_size`` patches per call of the base
method) and the fusion (:func:`paste` and :class:`PatchFusion`: each patch map back in the input's frame,
accumulated per image).
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..._engine.checks import check_bool, check_choice, check_float, check_int
from ..._engine.maps import INTERPOLATION, min_max_normalize, warn_if_constant
from ..._engine.memory import auto_batch_size
from ...base_cam import DEFAULT_OPTIONS, CallOptions, Target, select_output
from ...utils.model_targets import ClassifierOutputTarget
from ..gradient import GradCAM
from .base import BaseMethod, CompositeCAM, check_int_list


# -- geometry -----------------------------------------------------------------------------------------------
def _window_starts(length: int, window: int, step: int) -> list[int]:
    """Where the windows start along one axis: every ``step``, the last one moved back inside.

    ``_window_starts(10, 4, 4) == [0, 4, 6]``: windows never cross the border, so all have the same size.
    """
    starts = []
    for start in range(0, length, step):
        if start + window >= length:
            starts.append(max(length - window, 0))
            break
        starts.append(start)
    return starts


@dataclass(frozen=True)
class SlidingWindows:
    """SESS's geometry: the scales an input is resized to, and the windows that slide over each.

    ``scales``: the shorter side of each scaled input (default: ``num_scales`` sizes from the window up,
    every ``round(scale_step_ratio * window)``); ``window_size`` (default: the shorter side) and
    ``step_size`` (default: the window) in pixels of the scaled input.
    """

    scales: list[int] | None
    num_scales: int
    scale_step_ratio: float
    window_size: int | None
    step_size: int | None

    def layout(self, spatial: Sequence[int]) -> tuple[int, int, list[tuple[int, ...]]]:
        """``(window, step, scaled sizes)`` for an input of spatial size ``spatial``.

        Each scaled size has its shorter side at a scale, the others in proportion
        (``int(scale * L / shorter)``).
        """
        shorter = min(spatial)
        window = shorter if self.window_size is None else self.window_size
        if window > shorter:
            raise ValueError(
                f"window_size {window} is larger than the input's shorter side {shorter} "
                f"(spatial size {tuple(spatial)})"
            )
        step = window if self.step_size is None else self.step_size
        if self.scales is None:
            increment = round(window * self.scale_step_ratio)
            scales = [window + increment * i for i in range(self.num_scales)]
        else:
            scales = self.scales
            if min(scales) < window:
                raise ValueError(f"every scale must be at least the window size {window}, got {scales}")
        sizes = [tuple(int(scale * length / shorter) for length in spatial) for scale in scales]
        return window, step, sizes

    @staticmethod
    def starts(size: Sequence[int], window: int, step: int) -> list[tuple[int, ...]]:
        """Every window's start (one index per axis) in a frame of ``size``."""
        return list(itertools.product(*(_window_starts(length, window, step) for length in size)))


# -- patch iteration ---------------------------------------------------------------------------------------
def patches(
    x: torch.Tensor, sizes: Sequence[tuple[int, ...]], window: int, step: int, keep: set[int] | None = None
) -> Iterator[tuple[int, int, int, tuple[int, ...], torch.Tensor]]:
    """``(patch id, image, scale index, starts, patch (C, *window))``, scale by scale.

    One scaled input exists at a time. ``keep``: only these patch ids.
    """
    mode = INTERPOLATION[x.ndim - 2]
    work = x.to(torch.promote_types(x.dtype, torch.float32))  # resized in at least float32
    pid = 0
    for scale_index, size in enumerate(sizes):
        windows = SlidingWindows.starts(size, window, step)
        if keep is not None and not any(pid + k in keep for k in range(len(windows) * x.shape[0])):
            pid += len(windows) * x.shape[0]
            continue
        # A scale below the shorter side shrinks the input: antialiased in 2D, as torchvision's
        # resize (F.interpolate has no antialiased linear/trilinear mode for 1D/3D).
        shrink = x.ndim == 4 and size[0] < x.shape[2]
        scaled = F.interpolate(
            work, size=size, mode=mode, align_corners=False, antialias=shrink
        )  # (B, C, *size)
        for image in range(x.shape[0]):
            for starts in windows:
                if keep is None or pid in keep:
                    index = (image, slice(None), *(slice(s, s + window) for s in starts))
                    yield pid, image, scale_index, starts, scaled[index]  # type: ignore[index]
                pid += 1
        del scaled


def batches(items: Iterable[Any], size: int) -> Iterator[list]:
    """``items`` in lists of ``size`` (the last one shorter)."""
    batch = []
    for item in items:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


# -- fusion --------------------------------------------------------------------------------------------------
def interpolation_matrix(length: int, size: int, device: torch.device) -> torch.Tensor:
    """``(length, size)``: row ``j`` is where a unit at ``j`` goes when resizing a ``length`` axis.

    The axis is resized to ``size``: linear, half-pixel centres, so resizing is ``M.T @ values``, separably
    per axis.
    """
    eye = torch.eye(length, device=device)[None]  # (1, length, length): one impulse per channel
    return F.interpolate(eye, size=size, mode="linear", align_corners=False)[0]  # (length, size)


def gaussian_blur(maps: torch.Tensor, kernel_size: int, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur of ``(B, *spatial)`` maps, mirrored borders (cv2's BORDER_REFLECT_101)."""
    for axis in range(1, maps.ndim):
        length = maps.shape[axis]
        radius = min(kernel_size // 2, length - 1)  # a mirror needs radius < length
        if radius == 0:
            continue
        offsets = torch.arange(-radius, radius + 1, device=maps.device, dtype=maps.dtype)
        kernel = torch.exp(-(offsets**2) / (2 * sigma**2))
        kernel = kernel / kernel.sum()
        moved = maps.movedim(axis, -1)
        flat = moved.reshape(-1, 1, length)  # (N, 1, L)
        blurred = F.conv1d(F.pad(flat, (radius, radius), mode="reflect"), kernel.view(1, 1, -1))
        maps = blurred.view(moved.shape).movedim(-1, axis)
    return maps


def paste(
    maps: torch.Tensor,
    chunk: list,
    sizes: Sequence[tuple[int, ...]],
    spatial: Sequence[int],
    window: int,
    matrices: dict,
) -> torch.Tensor:
    """Each ``(window,)*D`` map placed at its start in its scaled frame and resized to ``spatial``.

    As ``M_1[s_1:s_1+w].T @ ... @ map``: the frame of zeros is never built.
    """
    out = maps
    for axis, length in enumerate(spatial):
        pieces = []
        for item in chunk:
            scaled = sizes[item[2]][axis]
            key = (scaled, length)
            if key not in matrices:
                matrices[key] = interpolation_matrix(scaled, length, maps.device)
            start = item[3][axis]
            pieces.append(matrices[key][start : start + window])  # (w, L)
        slices = torch.stack(pieces)  # (n, w, L)
        moved = out.movedim(axis + 1, -1)  # (n, ..., w)
        shape = moved.shape
        resized = moved.reshape(shape[0], -1, shape[-1]) @ slices  # (n, rest, L)
        out = resized.view(*shape[:-1], length).movedim(-1, axis + 1)
    return out


class PatchFusion:
    """Per-image accumulation of pasted patch maps.

    The mean of the values above ``theta`` at each position (0 where none is), or the maximum. Memory: two
    ``(B, *spatial)`` tensors.
    """

    def __init__(
        self, batch: int, spatial: Sequence[int], pool: str, theta: float, device: torch.device
    ) -> None:
        """Zero totals for ``batch`` images of size ``spatial``; ``pool``: ``"mean"`` or ``"max"``."""
        self.pool, self.theta = pool, theta
        self.total = torch.zeros(batch, *spatial, device=device)  # (B, *spatial)
        self.counts = torch.zeros_like(self.total)

    def add(self, values: torch.Tensor, images: torch.Tensor) -> None:
        """``values`` ``(n, *spatial)`` of the images ``images`` ``(n,)``."""
        if self.pool == "max":
            rows = images.view(-1, *[1] * (values.ndim - 1)).expand_as(values)  # (n, *spatial)
            self.total.scatter_reduce_(0, rows, values, "amax")  # maps are >= 0, total starts at 0
            return
        mask = values > self.theta
        self.total.index_add_(0, images, torch.where(mask, values, torch.zeros_like(values)))
        self.counts.index_add_(0, images, mask.float())

    def result(self) -> torch.Tensor:
        """The fused ``(B, *spatial)`` maps: the mean above ``theta`` (0 where none is), or the maximum."""
        if self.pool == "max":
            return self.total
        mean = self.total / self.counts.clamp_min(1.0)
        return torch.where(self.counts > 0, mean, torch.zeros_like(self.total))


class SESS(CompositeCAM):
    """SESS, Saliency Enhancing with Scaling and Sliding (Tursun et al., arXiv:2207.01769).

    The input is resized so that its shorter side is each of ``scales`` (default: ``num_scales`` sizes
    from the window size up, every ``round(scale_step_ratio * window)``: 224, 288, ..., 928 for a
    224-pixel input); a window of ``window_size`` (default: the shorter side) slides over each scaled
    input with stride ``step_size`` (default: the window size; the last window of an axis is moved
    back inside). For every patch ``p`` of image ``b``:

    * ``s_p = max(0, target_b(softmax(model(p))))`` (the raw output with ``use_softmax_scores=False``);
    * pre-filtering: the ``pre_filter_ratio`` lowest-scoring patches of the image are dropped;
    * ``w_p = s_p / max_kept s`` (channel-wise weight; all 1 when no score is positive);
    * ``m_p = w_p * base_cam(p)``, pasted at its place in the scaled frame (zeros elsewhere) and resized
      back to the input size.

    Fusion ("spatial weighted average"): ``cam = sum_p m_p [m_p > theta] / sum_p [m_p > theta]`` (0 where
    no patch exceeds ``theta``), or ``max_p m_p`` with ``pool="max"``; then a Gaussian blur (kernel 11,
    sigma 5, mirrored borders) with ``smooth=True``, then min-max normalisation to ``[0, 1]``. Works on
    1D, 2D and 3D inputs alike (the window is a segment, square or cube).

    Cost: one scoring forward pass per patch and the base method per kept patch, ``batch_size`` patches
    at a time (memory does not grow with the number of patches), plus one pass of the whole input that
    checks the targets and layers first. Patch maps are pasted with separable interpolation matrices,
    never materialising a scaled-size frame per patch.

    Args:
        model, target_layers, reshape_transform: as for every method.
        base_method: the CAM method per patch (class or registry name), default Grad-CAM.
        scales, num_scales, scale_step_ratio, window_size, step_size, pre_filter_ratio, theta, pool,
        smooth, use_softmax_scores, batch_size: as above (grad-cam 1.5.7's names and defaults).
        smooth_kernel_size, smooth_sigma: the Gaussian blur.
        **kwargs: ``device``..., and the base method's own arguments.

    Call ``cam(input_tensor, targets=None, eigen_smooth=False, *, aug_smooth=False)``; returns
    ``(B, *spatial)`` float32 maps in ``[0, 1]``.

    Example:
        >>> cam = SESS(model, [model.layer4[-1]], num_scales=6, pre_filter_ratio=0.5, batch_size=16)
        >>> maps = cam(x, targets=[281])  # (B, 224, 224)
    """

    name = "sess"
    default_base = GradCAM
    perturbation = True
    shares_batch_size = False

    def __init__(
        self,
        model: nn.Module,
        target_layers: Any = None,
        reshape_transform: Any = None,
        base_method: BaseMethod = GradCAM,
        scales: Sequence[int] | None = None,
        num_scales: int = 12,
        scale_step_ratio: float = 2.0 / 7.0,
        window_size: int | None = None,
        step_size: int | None = None,
        pre_filter_ratio: float = 0.0,
        theta: float = 0.0,
        pool: str = "mean",
        smooth: bool = True,
        use_softmax_scores: bool = True,
        batch_size: int = 32,
        *,
        smooth_kernel_size: int = 11,
        smooth_sigma: float = 5.0,
        **kwargs: Any,
    ) -> None:
        """Check and store the options and build the base method; see the class docstring."""
        pool = check_choice(pool, "pool", ("mean", "max"))  # the spatial weighted average, or the maximum
        pre_filter_ratio = check_float(pre_filter_ratio, "pre_filter_ratio")  # the type; [0, 1) below
        if not 0.0 <= pre_filter_ratio < 1.0:
            raise ValueError(f"pre_filter_ratio must be a float in [0, 1), got {pre_filter_ratio}")
        theta = check_float(theta, "theta")
        num_scales = check_int(num_scales, "num_scales", 1)
        window_size = None if window_size is None else check_int(window_size, "window_size", 1)
        step_size = None if step_size is None else check_int(step_size, "step_size", 1)
        smooth_kernel_size = check_int(smooth_kernel_size, "smooth_kernel_size", 1)
        scale_step_ratio = check_float(scale_step_ratio, "scale_step_ratio", 0, include_minimum=False)
        smooth_sigma = check_float(smooth_sigma, "smooth_sigma", 0, include_minimum=False)
        if scales is not None:
            scales = check_int_list(scales, "scales")
            if not scales or min(scales) < 1:
                raise ValueError(f"scales must be a non-empty list of positive ints, got {scales}")
        super().__init__(
            model, target_layers, reshape_transform, base_method, batch_size=batch_size, **kwargs
        )
        self.windows = SlidingWindows(scales, num_scales, scale_step_ratio, window_size, step_size)
        self.pre_filter_ratio = pre_filter_ratio
        self.theta = theta
        self.pool = pool
        self.smooth = check_bool(smooth, "smooth")
        self.use_softmax_scores = check_bool(use_softmax_scores, "use_softmax_scores")
        self.smooth_kernel_size = smooth_kernel_size
        self.smooth_sigma = smooth_sigma

    @property
    def scales(self) -> list[int] | None:
        """The shorter side of each scaled input, or None for ``num_scales`` from the window up."""
        return self.windows.scales

    @property
    def num_scales(self) -> int:
        """How many scales when ``scales`` is None."""
        return self.windows.num_scales

    # -- geometry --------------------------------------------------------------------------------------------
    def geometry(self, spatial: Sequence[int]) -> tuple[int, int, list[tuple[int, ...]]]:
        """``(window, step, scaled sizes)`` for an input of spatial size ``spatial``.

        See :meth:`SlidingWindows.layout`.
        """
        return self.windows.layout(spatial)

    # -- the computation -------------------------------------------------------------------------
    def _patch_scores(self, output: Any, targets: list[Target], images: list[int]) -> torch.Tensor:
        """``(n,)`` each patch's score under its image's target, on softmax(output) by default."""
        count = len(images)
        if self.use_softmax_scores:
            if not isinstance(output, torch.Tensor) or output.ndim != 2:
                raise ValueError(
                    "SESS weights patches by the softmax of a (B, num_classes) output; this "
                    "model returns something else: pass use_softmax_scores=False"
                )
            output = output.float().softmax(-1)
        scores = []
        for j, image in enumerate(images):
            target = targets[image]
            if (
                type(target) is ClassifierOutputTarget
                and isinstance(output, torch.Tensor)
                and output.ndim == 2
            ):
                scores.append(output[j, target.category].float())
            else:
                scores.append(torch.as_tensor(target(select_output(output, j, count))).reshape(()).float())
        return torch.stack(scores)

    def compute_maps(
        self,
        input_tensor: torch.Tensor,
        targets: list[Target] | None,
        eigen_smooth: bool,
        options: CallOptions = DEFAULT_OPTIONS,
    ) -> torch.Tensor:
        """The input's targets checked, then every patch scored, mapped by the base method and fused."""
        window, step, sizes = self.geometry(input_tensor.shape[2:])
        with self.session(input_tensor) as x:  # (B, C, *spatial) on the model's device and dtype
            # The whole input first: targets, layers and gradients are checked before any patch is run.
            targets = self.base_cam.prepare_targets(x, targets)
            spatial = tuple(x.shape[2:])
            matrices: dict = {}
            if self.pre_filter_ratio == 0.0 and self.theta == 0.0:
                total = self._one_pass(x, targets, sizes, window, step, spatial, eigen_smooth, matrices)
            else:
                total = self._two_passes(x, targets, sizes, window, step, spatial, eigen_smooth, matrices)
            if self.smooth:
                total = gaussian_blur(total, self.smooth_kernel_size, self.smooth_sigma)
            warn_if_constant(total, "the SESS map", reason="no patch has positive evidence for the target")
            return min_max_normalize(total)

    def _clean_scores(self, output: Any, targets: list[Target], images: list[int]) -> torch.Tensor:
        with torch.no_grad():
            scores = self._patch_scores(output, targets, images)
        # A patch whose score is not finite (e.g. a NaN logit in the softmax) gets no weight.
        return torch.nan_to_num(scores, nan=0.0, posinf=0.0).clamp_min(0.0)  # (n,)

    def _patch_maps(
        self, chunk: list, x: torch.Tensor, targets: list[Target], eigen_smooth: bool
    ) -> tuple[torch.Tensor, Any]:
        """The base method's maps of a chunk of patches ``(n, *window)``, and its first scored pass's output.

        A method may score more: Smooth Grad-CAM++ its noisy copies after the clean patches. A background
        patch's map is often constant: no warning for it.
        """
        stacked = torch.stack([item[4] for item in chunk]).to(x.dtype)  # (n, C, *window)
        outputs: list = []
        options = CallOptions(on_output=outputs.append, warn_constant=False)
        maps = self.base_cam.compute_maps(
            stacked, [targets[item[1]] for item in chunk], eigen_smooth, options
        )
        return maps, outputs[0]

    def _patches_per_call(self, x: torch.Tensor) -> int:
        """``batch_size``, or (set to None) as many patches as the device's free memory allows."""
        return self.batch_size or auto_batch_size(x[0])

    def _one_pass(self, x, targets, sizes, window, step, spatial, eigen_smooth, matrices) -> torch.Tensor:
        """No pre-filtering and ``theta == 0``: the scores come from the base method's own forward pass.

        ``w_p m_p > 0`` exactly where ``s_p m_p > 0``, so the score-weighted maps are fused as they come
        and divided by the image's top score at the end; an image with no positive score uses the
        unweighted fusion (all weights 1), kept alongside.
        """
        batch = x.shape[0]
        weighted = PatchFusion(batch, spatial, self.pool, self.theta, x.device)
        plain = PatchFusion(batch, spatial, self.pool, self.theta, x.device)
        top = torch.zeros(batch, device=x.device)
        for chunk in batches(patches(x, sizes, window, step), self._patches_per_call(x)):
            images = [item[1] for item in chunk]
            maps, output = self._patch_maps(chunk, x, targets, eigen_smooth)
            scores = self._clean_scores(output, targets, images)  # (n,)
            pasted = paste(maps, chunk, sizes, spatial, window, matrices)  # (n, *spatial)
            owners = torch.tensor(images, device=x.device)
            weighted.add(pasted * scores.view(-1, *[1] * len(spatial)), owners)
            plain.add(pasted, owners)
            top = top.scatter_reduce(0, owners, scores, "amax")
        scored = top > 0  # (B,)
        view = (-1, *[1] * len(spatial))
        return torch.where(
            scored.view(view), weighted.result() / top.clamp_min(1e-30).view(view), plain.result()
        )

    def _two_passes(self, x, targets, sizes, window, step, spatial, eigen_smooth, matrices) -> torch.Tensor:
        """Pass 1 scores every patch (forward only); pass 2 runs the base method on the kept ones."""
        batch = x.shape[0]
        owners, patch_scores = [], []
        with torch.no_grad():
            for chunk in batches(patches(x, sizes, window, step), self._patches_per_call(x)):
                images = [item[1] for item in chunk]
                output = self.run_model(torch.stack([item[4] for item in chunk]).to(x.dtype))
                patch_scores.append(self._clean_scores(output, targets, images))
                owners.extend(images)
        owners_t = torch.tensor(owners, device=x.device)
        all_scores = torch.cat(patch_scores)  # (P,)

        # Pre-filtering, then the channel-wise weights, per image.
        weights = torch.zeros_like(all_scores)
        keep = set()
        for image in range(batch):
            ids = (owners_t == image).nonzero().flatten()
            order = ids[torch.sort(all_scores[ids], stable=True).indices]
            kept = order[int(len(order) * self.pre_filter_ratio) :]
            top = all_scores[kept].max()
            weights[kept] = all_scores[kept] / top if top > 0 else 1.0
            keep.update(kept.tolist())

        fusion = PatchFusion(batch, spatial, self.pool, self.theta, x.device)
        for chunk in batches(patches(x, sizes, window, step, keep), self._patches_per_call(x)):
            maps, _ = self._patch_maps(chunk, x, targets, eigen_smooth)
            maps = maps * weights[[item[0] for item in chunk]].view(-1, *[1] * len(spatial))
            pasted = paste(maps, chunk, sizes, spatial, window, matrices)  # (n, *spatial)
            fusion.add(pasted, torch.tensor([item[1] for item in chunk], device=x.device))
        return fusion.result()
