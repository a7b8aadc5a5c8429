"""Perturbation CAMs (ScoreCAM, SS-CAM, IS-CAM, AblationCAM): channel weights from the scores of
perturbed inputs or activations, no gradients.

All stream their perturbed batches ``batch_size`` at a time, so memory does not grow with the number
of channels.
"""
from __future__ import annotations

import contextlib
from collections import defaultdict, deque
from functools import partial
from typing import Any, Callable, Dict, Iterator, List, Optional

import torch
from torch import nn

from ._capture import layer_name, map_tensors, tensors_of
from ._checks import check_float, check_int, check_seed
from ._warnings import warn
from .base_cam import BaseCAM, LayerContext, min_max_normalize, resize_maps, select_output
from .utils.model_targets import ClassifierOutputTarget

#: AblationCAM sets an ablated channel to ``min - ABLATION_OFFSET`` when the layer has negative values.
ABLATION_OFFSET = 1e7


def _target_scores(targets: List[Callable], index: int, output: Any, count: int) -> torch.Tensor:
    """Image ``index``'s target on each of the ``count`` outputs of a perturbed batch: ``(count,)``."""
    target = targets[index]
    if type(target) is ClassifierOutputTarget and isinstance(output, torch.Tensor) and output.ndim == 2:
        # The common case in one indexing operation instead of ``count`` calls (the category was
        # already checked against the output on the unperturbed forward pass).
        return output[:, target.category].float()
    return torch.stack([target(select_output(output, j, count)).reshape(()) for j in range(count)]).float()


class ScoreCAM(BaseCAM):
    """Score-CAM (Wang et al., arXiv:1910.01279).

    Each channel ``A_k`` is upsampled to the input size (bilinear, corners aligned), scaled to [0, 1]
    by ``(A_k - min) / (max - min + 1e-8)`` and multiplied into the input; ``s_k`` is the target's
    score on that masked input, and ``w = softmax_k(s)``. Costs ``C`` forward passes per image, run
    ``batch_size`` masked inputs at a time; only one batch of masked inputs exists at any moment.

    SS-CAM and IS-CAM share this streamed loop: a subclass only says how many model inputs one mask
    gives (``inputs_per_mask``), how it builds them (:meth:`mask_inputs`) and how it combines their
    scores into one weight per channel (:meth:`combine_scores`).

    Detectors: masking the input applies to them as to classifiers (all three methods): the masks are the
    reshaped channels (e.g. ``fpn_reshape_transform`` of ``model.backbone``'s levels) and the score is the
    target on the detector's output for each masked input (e.g. ``FasterRCNNBoxScoreTarget``; a low
    ``iou_threshold`` keeps masked inputs whose boxes moved from all scoring 0).

    Example:
        >>> cam = ScoreCAM(model, target_layers=[model.layer4[-1]], batch_size=64)
    """

    name = "scorecam"
    uses_gradients = False
    perturbation = True
    #: How many model inputs each channel's mask gives (SS-CAM: noisy samples, IS-CAM: path steps).
    inputs_per_mask: int = 1

    def cam_weights(self, activations: torch.Tensor, gradients: Optional[torch.Tensor],
                    context: LayerContext) -> torch.Tensor:
        x = context.input  # (B, C_in, *S)
        batch, channels = activations.shape[:2]
        per_mask = self.inputs_per_mask
        # Model inputs per image: row r is mask r // per_mask, sample r % per_mask.
        total = channels * per_mask
        scores = torch.empty(batch, total, device=activations.device)  # (B, C * n)
        for i in range(batch):
            self.start_image(x)
            for start in range(0, total, context.batch_size):
                stop = min(start + context.batch_size, total)
                first, last = start // per_mask, (stop - 1) // per_mask + 1  # the masks this batch uses
                masks = resize_maps(activations[i, first:last], x.shape[2:], align_corners=True)  # (m, *S)
                masks = min_max_normalize(masks, eps=1e-8).to(x.dtype)
                rows = torch.arange(start, stop, device=masks.device)
                if per_mask > 1:  # several rows share a mask
                    masks = masks[rows // per_mask - first]  # (n, *S)
                masked = self.mask_inputs(x[i:i + 1], masks, rows % per_mask)
                output = context.model(masked)  # masked: (n, C_in, *S)
                scores[i, start:stop] = _target_scores(context.targets, i, output, stop - start)
        return self.combine_scores(scores.view(batch, channels, per_mask))

    # -- what SS-CAM and IS-CAM change -----------------------------------------------------------
    def start_image(self, x: torch.Tensor) -> None:
        """Called before each image's masked inputs (SS-CAM restarts its noise here)."""

    def mask_inputs(self, image: torch.Tensor, masks: torch.Tensor, samples: torch.Tensor) -> torch.Tensor:
        """The model inputs ``(n, C_in, *S)`` for one image ``(1, C_in, *S)``, one per row: ``masks``
        ``(n, *S)`` in [0, 1] and ``samples`` ``(n,)``, each row's index in ``0..inputs_per_mask-1``."""
        return image * masks.unsqueeze(1)

    def combine_scores(self, scores: torch.Tensor) -> torch.Tensor:
        """``(B, C, inputs_per_mask)`` target scores -> ``(B, C)`` channel weights."""
        return scores[..., 0].softmax(-1)


class SSCAM(ScoreCAM):
    """SS-CAM, Smoothed Score-CAM (Wang, Naidu et al., arXiv:2006.14255).

    Score-CAM with each channel's score averaged over ``num_samples`` noisy copies of its mask. With
    ``m_k`` Score-CAM's normalised mask (upsampled ``A_k``, corners aligned, min-max scaled to [0, 1]):

        ``s_k = (1/N) sum_{j=1..N} y(x * (m_k + d_j))``,  ``d_j ~ N(0, std^2)`` per pixel,
        ``w = softmax_k(s)``,  map ``= ReLU(sum_k w_k A_k)``.

    The noise is added to the normalised mask: the paper's SS-CAM(1), which smooths in feature space
    (its Algorithm 1; torchcam's ``SSCAM`` does the same: ``(mask + noise) * input``). ``noise="input"``
    gives the paper's second variant, SS-CAM(2), which adds the noise to the masked input instead:
    ``y(x * m_k + d_j)`` with ``d_j`` of the input's shape. The paper subtracts the score of a baseline
    image, ``y(x_b)``; it is the same for every channel, so the softmax ignores it and it is left out.
    Defaults follow the paper's code and torchcam: ``num_samples=35``, ``std=2.0``.

    Costs ``C * num_samples`` forward passes per image, streamed ``batch_size`` at a time.

    Noise comes from a ``torch.Generator`` on the compute device, restarted for every image (so an
    image's map does not depend on the others in its batch, nor on ``batch_size``). ``seed=None``
    draws a fresh seed per call (two calls differ); an int makes every call the same.

    Example:
        >>> cam = SSCAM(model, target_layers=[model.layer4[-1]], num_samples=35, std=2.0, seed=0)
        >>> maps = cam(x, targets=[ClassifierOutputTarget(281)])  # (1, 224, 224)
    """

    name = "sscam"
    deterministic = False  # unless a seed is given

    def __init__(self, *args: Any, num_samples: int = 35, std: float = 2.0, seed: Optional[int] = None,
                 noise: str = "mask", **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.num_samples = check_int(num_samples, "num_samples", 1)
        self.std = check_float(std, "std", minimum=0)
        self.seed = check_seed(seed)
        if noise not in ("mask", "input"):
            raise ValueError(f"noise must be 'mask' (SS-CAM(1)) or 'input' (SS-CAM(2)), got {noise!r}")
        self.noise = noise
        self._generator: Optional[torch.Generator] = None
        self._call_seed = 0

    @property
    def inputs_per_mask(self) -> int:  # type: ignore[override]
        return self.num_samples

    def cam_weights(self, activations: torch.Tensor, gradients: Optional[torch.Tensor],
                    context: LayerContext) -> torch.Tensor:
        self._generator = torch.Generator(device=context.input.device)
        self._call_seed = self.seed if self.seed is not None else self._generator.seed()
        try:
            return super().cam_weights(activations, gradients, context)
        finally:
            self._generator = None

    def start_image(self, x: torch.Tensor) -> None:
        self._generator.manual_seed(self._call_seed)

    def mask_inputs(self, image: torch.Tensor, masks: torch.Tensor, samples: torch.Tensor) -> torch.Tensor:
        # One draw per row, in row order: the same noise whatever the batch boundaries.
        shape = masks.shape[1:] if self.noise == "mask" else image.shape[1:]
        noise = torch.stack([torch.randn(shape, generator=self._generator, device=image.device)
                             for _ in range(len(masks))]).to(image.dtype) * self.std  # (n, *shape)
        if self.noise == "mask":
            return image * (masks + noise).unsqueeze(1)
        return image * masks.unsqueeze(1) + noise

    def combine_scores(self, scores: torch.Tensor) -> torch.Tensor:
        return scores.mean(-1).softmax(-1)


class ISCAM(ScoreCAM):
    """IS-CAM, Integrated Score-CAM (Naidu et al., arXiv:2010.03023).

    Score-CAM with each channel's score integrated along a path of growing masks. With ``m_k`` Score-CAM's
    normalised mask, the paper's Algorithm 1 accumulates the mask step by step,
    ``M_i = M_{i-1} + (i/N) m_k`` (``M_0 = 0``), i.e. ``M_i = c_i m_k`` with ``c_i = i (i + 1) / (2N)``, and
    averages the scores of the accumulated masks:

        ``s_k = (1/N) sum_{i=1..N} y(x * c_i m_k)``,  ``w = softmax_k(s)``,  map ``= ReLU(sum_k w_k A_k)``.

    The coefficients grow past 1 (up to ``(N + 1) / 2``): that is the published accumulation, kept as
    is (torchcam's ``ISCAM`` does the same). The baseline score ``y(x_b)`` the paper subtracts is the
    same for every channel and drops out of the softmax. Costs ``C * num_samples`` forward passes per
    image, streamed ``batch_size`` at a time.

    Example:
        >>> cam = ISCAM(model, target_layers=[model.layer4[-1]], num_samples=10)
    """

    name = "iscam"

    def __init__(self, *args: Any, num_samples: int = 10, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.num_samples = check_int(num_samples, "num_samples", 1)

    @property
    def inputs_per_mask(self) -> int:  # type: ignore[override]
        return self.num_samples

    def mask_inputs(self, image: torch.Tensor, masks: torch.Tensor, samples: torch.Tensor) -> torch.Tensor:
        step = (samples + 1).to(image.dtype)  # i = 1..N
        coefficient = step * (step + 1) / (2 * self.num_samples)  # (n,)
        return image * (coefficient.view(-1, *([1] * (masks.ndim - 1))) * masks).unsqueeze(1)

    def combine_scores(self, scores: torch.Tensor) -> torch.Tensor:
        return scores.mean(-1).softmax(-1)


class AblationCAM(BaseCAM):
    """Ablation-CAM (Desai & Ramaswamy, WACV 2020).

    For each channel ``k`` the target layer's output is replaced by a copy with channel ``k`` ablated
    (set to 0, or to ``min - 1e7`` when the layer has negative values) and the rest of the model is run
    on it, giving the score ``y_k``; ``w_k = (y - y_k) / y`` with ``y`` the unablated score.

    Neither the layers before the target layer nor the layer itself are run again for every ablated
    channel: the outputs of the modules that ran before it are replayed from the first forward pass,
    the layer's ``forward`` returns the ablated copies (each ``forward`` is swapped for the call and
    restored in ``finally``), and only the rest of the model runs on the batch of ablated copies.
    A one-row check pass first replays the unablated activation; if its score does not match ``y`` (a
    model whose forward pass the replay cannot reproduce), or the replay fails or writes into the
    recorded outputs, the slow path, a full forward pass per ablated copy, is used instead, with a
    warning.
    """

    name = "ablationcam"
    uses_gradients = False
    perturbation = True
    records_prefix = True
    # Only the layers after the target layer run on a batch, and one batch buffer is reused: a large
    # batch costs little memory and saves calls.
    default_batch_size = 128

    def cam_weights(self, activations: torch.Tensor, gradients: Optional[torch.Tensor],
                    context: LayerContext) -> torch.Tensor:
        raw = context.raw_activations  # the layer's own output, (B, C, ...) or (B, ..., C), or a structure
        batch, channels = activations.shape[:2]
        layout = _channel_layout(raw, context.channel_dim, self.reshape_transform, channels)
        leaves = tensors_of(raw)
        ablated = torch.empty(batch, channels, device=activations.device)  # (B, C)
        for i in range(batch):
            original = map_tensors(partial(_row, index=i), raw)
            lowest = min(float(leaf[i].min()) for leaf in leaves)
            # min - 1e7 overflows to -inf in half precision: stay within the dtype's range.
            floor = torch.finfo(leaves[0].dtype).min / 2
            value = 0.0 if lowest >= 0 else max(lowest - ABLATION_OFFSET, floor)
            suffix = _Suffix(context, i)
            copies = _AblatedCopies(original, layout, value)
            for start in range(0, channels, context.batch_size):
                stop = min(start + context.batch_size, channels)
                index = torch.arange(start, stop, device=activations.device)
                ablated[i, start:start + len(index)] = suffix(copies.ablate(index))
        score = context.scores[:, None]  # (B, 1)
        self._warn_unresolved(score - ablated, activations, context)
        # A zero score would divide by zero: keep it finite (the weights then rank by y - y_k).
        denominator = torch.where(score.abs() < 1e-7, torch.full_like(score, 1e-7), score)
        return (score - ablated) / denominator

    @staticmethod
    def _warn_unresolved(drops: torch.Tensor, activations: torch.Tensor, context: LayerContext) -> None:
        """Warn about images where no ablation changed the score at all (``drops`` ``(B, C)`` all 0) though
        the layer is not all zeros: activations too small next to the score for one rounding step of
        the model's dtype (``|y - y_k| < eps * |y|``), e.g. a random network whose BatchNorm statistics
        were never fitted. Such a map carries no information; without this, only a constant map shows."""
        flat = activations.flatten(1).abs()  # (B, C * positions)
        unresolved = ((drops == 0).all(1) & (flat.amax(1) > 0)).nonzero().flatten().tolist()
        if not unresolved:
            return
        i = unresolved[0]
        warn(
            f"AblationCAM: ablating any one of the {drops.shape[1]} channels of target layer "
            f"'{layer_name(context.model, context.layer)}' leaves the target score of image(s) {unresolved} "
            f"exactly unchanged at {context.input.dtype} precision (image {i}: score "
            f"{float(context.scores[i]):.6g}, largest |activation| {float(flat[i].max()):.3g}): the "
            "activations are too small to move the score by one rounding step (e.g. a randomly initialised "
            "network whose BatchNorm statistics were never fitted), so the map carries no information",
            RuntimeWarning)


class _Layout:
    """Where each channel ``k`` of the reshaped activations lives in the layer's raw output: tensor
    ``leaf[k]`` of the output's structure (0 for a plain tensor), at ``channel[k]`` along that tensor's
    ``axes[leaf[k]]``."""

    def __init__(self, leaf: torch.Tensor, channel: torch.Tensor, axes: List[int]) -> None:
        self.leaf, self.channel, self.axes = leaf, channel, axes


def _channel_layout(raw: Any, channel_dim: int, reshape_transform: Optional[Callable],
                    channels: int) -> _Layout:
    """The raw output's channel behind each of the ``channels`` reshaped channels.

    A plain tensor: channel ``k`` of ``channel_dim`` (the engine's: 1, or the last dim with a
    reshape_transform, as for transformer tokens). A structure of tensors (an FPN's dict of levels,
    turned into one tensor by a reshape_transform such as ``fpn_reshape_transform``): found by a probe,
    every tensor of one image filled with its channels' running numbers along its axis 1 (then, failing
    that, the last axis), each constant over the other axes; the reshape_transform's output must show each
    number once, constant over its positions (true for transforms that concatenate, resize or take the
    magnitude of the levels).
    """
    if isinstance(raw, torch.Tensor):
        dim = channel_dim % raw.ndim
        if raw.shape[dim] != channels:
            raise ValueError(f"AblationCAM ablates axis {channel_dim} of the layer's output "
                             f"{tuple(raw.shape)}, which has {raw.shape[dim]} channels, but the reshaped "
                             f"activations have {channels}: the reshape_transform must keep the channels "
                             "of the layer's last axis")
        zeros = torch.zeros(channels, dtype=torch.long)
        return _Layout(zeros, torch.arange(channels), [dim])
    leaves = tensors_of(raw)
    last_error: Optional[Exception] = None  # why the transform refused a probe, kept as the cause
    for axis in (1, -1):
        counts = [leaf.shape[axis] if leaf.ndim >= 2 else 0 for leaf in leaves]
        if sum(counts) != channels:
            continue
        offsets = [sum(counts[:j]) for j in range(len(counts))]
        probes = iter([_probe(leaf, axis, offset) for leaf, offset in zip(leaves, offsets)])
        with torch.no_grad():
            try:
                out = reshape_transform(map_tensors(partial(_next, probes), raw))
            except Exception as error:  # the transform does not accept the probe: try the other axis
                last_error = error
                continue
        if not isinstance(out, torch.Tensor) or out.ndim < 2 or out.shape[1] != channels:
            continue
        values = out[0].flatten(1).double()  # (C, positions)
        numbers = values[:, 0].round()
        if not (bool(torch.allclose(values, numbers[:, None], atol=1e-3))
                and sorted(numbers.long().tolist()) == list(range(1, channels + 1))):
            continue
        position = numbers.long().cpu() - 1  # the running number behind each reshaped channel
        starts = torch.tensor(offsets)
        leaf = torch.searchsorted(starts, position, right=True) - 1
        return _Layout(leaf, position - starts[leaf], [axis % t.ndim for t in leaves])
    raise ValueError("AblationCAM cannot tell which channel of the target layer's output (a "
                     f"{type(raw).__name__} of {len(leaves)} tensors) each of the {channels} reshaped "
                     "channels is: the reshape_transform must concatenate the tensors' channels (axis 1 "
                     "or the last axis), as fpn_reshape_transform does") from last_error


def _row(tensor: torch.Tensor, _unused: Any = None, *, index: int) -> torch.Tensor:
    return tensor[index:index + 1]


def _next(iterator: Iterator, _unused: Any) -> Any:
    return next(iterator)


def _probe(leaf: torch.Tensor, axis: int, offset: int) -> torch.Tensor:
    """One image's worth of ``leaf``: the running numbers ``offset + 1, offset + 2, ...`` along ``axis``."""
    shape = [1] * leaf.ndim
    shape[axis] = leaf.shape[axis]
    numbers = torch.arange(offset + 1, offset + 1 + leaf.shape[axis], dtype=torch.float64, device=leaf.device)
    return numbers.view(shape).expand(1, *leaf.shape[1:]).clone()


class _AblatedCopies:
    """Row ``r`` of each batch is the layer's output with channel ``index[r]`` ablated.

    The output may be a structure of tensors (an FPN's levels): a channel then lives in one of them
    (``layout``). One buffer per tensor serves every batch of an image: between batches only the channels
    ablated last time are restored and the new ones set, instead of writing ``n`` whole copies again.
    If the model modified a buffer in place (an in-place op right after the target layer), its version
    counter says so and the buffers are filled afresh.
    """

    def __init__(self, original: Any, layout: _Layout, value: float) -> None:
        self.original = original  # the layer's output for one image: (1, ...) tensors
        self.leaves = tensors_of(original)
        self.layout = layout
        self.value = value
        self.buffers: Optional[List[torch.Tensor]] = None
        self.versions: List[int] = []
        self.last_index: Optional[torch.Tensor] = None

    def ablate(self, index: torch.Tensor) -> Any:
        n = len(index)
        buffers = self.buffers
        if (buffers is None or buffers[0].shape[0] != n
                or [b._version for b in buffers] != self.versions):
            buffers = [leaf.expand(n, *leaf.shape[1:]).clone() for leaf in self.leaves]
        else:
            self._write(buffers, self.last_index, restore=True)
        self._write(buffers, index, restore=False)
        self.buffers, self.versions, self.last_index = buffers, [b._version for b in buffers], index
        rows = iter(buffers)
        return map_tensors(lambda t: next(rows), self.original)

    def _write(self, buffers: List[torch.Tensor], index: torch.Tensor, restore: bool) -> None:
        leaf_of = self.layout.leaf.to(index.device)[index]  # (n,)
        channel_of = self.layout.channel.to(index.device)[index]  # (n,)
        rows = torch.arange(len(index), device=index.device)
        for j, (buffer, leaf) in enumerate(zip(buffers, self.leaves)):
            mine = leaf_of == j
            if not bool(mine.any()):
                continue
            axis = self.layout.axes[j]
            target = buffer.movedim(axis, 1)
            if restore:
                target[rows[mine], channel_of[mine]] = leaf.movedim(axis, 1)[0, channel_of[mine]]
            else:
                target[rows[mine], channel_of[mine]] = self.value


class _Suffix:
    """Runs the model from the target layer on, with a batch of replacement outputs for the layer."""

    def __init__(self, context: LayerContext, index: int) -> None:
        self.context = context
        self.index = index
        # A recorded output holding per-image data in an object the replay cannot split per image (e.g.
        # torchvision detectors' ImageList) would be handed out whole: run the full model instead.
        self.replay = context.prefix is not None and all(_splittable(out) for _, out in context.prefix)
        self.verified = False
        # The recorded outputs a replay hands out: their version counters reveal in-place writes.
        self.recorded = [t for _, out in context.prefix or () for t in tensors_of(out)]

    def __call__(self, replacement: Any) -> torch.Tensor:
        """Scores ``(n,)`` of image ``index``'s target with the layer's output set to ``replacement``."""
        if self.replay:
            try:
                if not self.verified:
                    self._verify()
                return self._run(replacement, replay=True)
            except RuntimeError as error:
                # Not swallowed: the full forward pass below runs the same model and raises if the
                # model itself is at fault; here only the shortcut is given up.
                warn(
                    "AblationCAM could not reuse the layers before the target layer for this model "
                    f"({error}); running the whole model for every ablated channel instead (slower)",
                    RuntimeWarning)
                self.replay = False
        return self._run(replacement, replay=False)

    def _verify(self) -> None:
        """The replay must reproduce the unablated score, or it is not used."""
        unablated = map_tensors(lambda t: t[self.index:self.index + 1].clone(), self.context.raw_activations)
        score = self._run(unablated, replay=True)[0]
        expected = self.context.scores[self.index]
        tolerance = max(1e-3, 10 * torch.finfo(self.context.input.dtype).eps)
        if not torch.isclose(score, expected, rtol=tolerance, atol=tolerance):
            raise RuntimeError(f"the replayed score {float(score):.6g} differs from {float(expected):.6g}")
        self.verified = True

    def _run(self, replacement: Any, replay: bool) -> torch.Tensor:
        context, count = self.context, tensors_of(replacement)[0].shape[0]
        # Each pass gets its own copy of the image: a model may modify its input in place.
        image = context.input[self.index:self.index + 1].clone()
        if replay:
            # A broadcast view is enough: only the layers after the target layer really run.
            image = image.expand(count, *image.shape[1:])
        else:
            image = image.repeat(count, *([1] * (image.ndim - 1)))
        started = [False]

        def layer_forward(*args, **kwargs):
            # The target layer itself is not run: its output is the replacement.
            started[0] = True
            return replacement

        forwards = {context.layer: layer_forward}
        if replay:
            queues: dict = defaultdict(deque)
            for module, output in context.prefix:
                queues[module].append(_one_image(output, self.index, context.input.shape[0], count))
            for module, queue in queues.items():
                forwards[module] = _replaying_forward(module.forward, queue, started)
        recorded = self.recorded if replay else []
        versions = [t._version for t in recorded]
        with _swapped_forwards(forwards):
            output = context.model(image)
        if any(t._version != v for t, v in zip(recorded, versions)):
            # This image's rows of the recording are no longer what the layers produced.
            raise RuntimeError("the model modified the output of a layer before the target layer in place")
        return _target_scores(context.targets, self.index, output, count)


@contextlib.contextmanager
def _swapped_forwards(forwards: Dict[nn.Module, Callable]) -> Iterator[None]:
    """Give modules another ``forward`` for the block; restore each in ``finally``."""
    saved = []  # (module, the instance-level forward it had, if any)
    try:
        for module, forward in forwards.items():
            saved.append((module, module.__dict__.get("forward")))
            module.forward = forward
        yield
    finally:
        for module, own_forward in saved:
            if own_forward is None:
                del module.forward  # the class's forward shows again
            else:
                module.forward = own_forward


def _replaying_forward(forward: Callable, queue: deque, started: List[bool]) -> Callable:
    """A module's ``forward`` that returns its recorded outputs, in order, until the target layer starts."""
    def replay(*args, **kwargs):
        if not started[0] and queue:
            return queue.popleft()
        return forward(*args, **kwargs)
    return replay


def _splittable(output: Any) -> bool:
    """Whether ``_one_image`` can take one image's part of a recorded output."""
    if output is None or isinstance(output, (torch.Tensor, bool, int, float, str)):
        return True
    if isinstance(output, dict):
        return all(_splittable(value) for value in output.values())
    if isinstance(output, (list, tuple)):
        return all(_splittable(value) for value in output)
    return False


def _one_image(output: Any, index: int, batch: int, count: int) -> Any:
    """Image ``index``'s rows of a recorded output, broadcast (without copying) to ``count`` rows."""
    if isinstance(output, torch.Tensor):
        if output.ndim and output.shape[0] == batch:
            row = output[index:index + 1]
            return row.expand(count, *row.shape[1:])
        return output
    if isinstance(output, dict):
        return {key: _one_image(value, index, batch, count) for key, value in output.items()}
    if isinstance(output, (list, tuple)):
        return type(output)(_one_image(value, index, batch, count) for value in output)
    return output
