"""Perturbation CAMs: channel weights from the scores of perturbed inputs or activations, no gradients.

Both stream their perturbed batches ``batch_size`` at a time, so memory does not grow with the number
of channels.
"""
from __future__ import annotations

import contextlib
import warnings
from collections import defaultdict, deque
from typing import Any, Callable, Dict, Iterator, List, Optional

import torch
from torch import nn

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

    Example:
        >>> cam = ScoreCAM(model, target_layers=[model.layer4[-1]], batch_size=64)
    """

    name = "scorecam"
    uses_gradients = False
    perturbation = True

    def cam_weights(self, activations: torch.Tensor, gradients: Optional[torch.Tensor],
                    context: LayerContext) -> torch.Tensor:
        x = context.input  # (B, C_in, *S)
        batch, channels = activations.shape[:2]
        scores = torch.empty(batch, channels, device=activations.device)  # (B, C)
        for i in range(batch):
            for start in range(0, channels, context.batch_size):
                stop = min(start + context.batch_size, channels)
                masks = resize_maps(activations[i, start:stop], x.shape[2:], align_corners=True)  # (n, *S)
                masks = min_max_normalize(masks, eps=1e-8)
                masked = x[i:i + 1] * masks.unsqueeze(1).to(x.dtype)  # (n, C_in, *S)
                output = context.model(masked)
                scores[i, start:stop] = _target_scores(context.targets, i, output, stop - start)
        return scores.softmax(-1)


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
        raw = context.raw_activations  # the layer's own output, (B, C, ...) or (B, ..., C)
        channel_dim = context.channel_dim % raw.ndim
        batch, channels = raw.shape[0], raw.shape[channel_dim]
        ablated = torch.empty(batch, channels, device=raw.device)  # (B, C)
        for i in range(batch):
            original = raw[i:i + 1]
            lowest = float(original.min())
            # min - 1e7 overflows to -inf in half precision: stay within the dtype's range.
            value = 0.0 if lowest >= 0 else max(lowest - ABLATION_OFFSET, torch.finfo(raw.dtype).min / 2)
            suffix = _Suffix(context, i)
            copies = _AblatedCopies(original, channel_dim, value)
            for start in range(0, channels, context.batch_size):
                index = torch.arange(start, min(start + context.batch_size, channels), device=raw.device)
                ablated[i, start:start + len(index)] = suffix(copies.ablate(index))
        score = context.scores[:, None]  # (B, 1)
        # A zero score would divide by zero: keep it finite (the weights then rank by y - y_k).
        denominator = torch.where(score.abs() < 1e-7, torch.full_like(score, 1e-7), score)
        return (score - ablated) / denominator


class _AblatedCopies:
    """Row ``r`` of each batch is the layer's output with channel ``index[r]`` ablated.

    One buffer serves every batch of an image: between batches only the channels ablated last time are
    restored and the new ones set, instead of writing ``n`` whole copies again. If the model modified
    the buffer in place (an in-place op right after the target layer), its version counter says so and
    it is filled afresh.
    """

    def __init__(self, original: torch.Tensor, channel_dim: int, value: float) -> None:
        self.original = original  # (1, ...) the layer's output for one image
        self.channel_dim = channel_dim
        self.value = value
        self.buffer: Optional[torch.Tensor] = None
        self.version = -1
        self.last_index: Optional[torch.Tensor] = None

    def ablate(self, index: torch.Tensor) -> torch.Tensor:
        rows = torch.arange(len(index), device=index.device)
        buffer = self.buffer
        if buffer is None or buffer.shape[0] != len(index) or buffer._version != self.version:
            buffer = self.original.expand(len(index), *self.original.shape[1:]).clone()
        else:
            restore = self.original.movedim(self.channel_dim, 1)[0, self.last_index]  # (n, ...)
            buffer.movedim(self.channel_dim, 1)[rows, self.last_index] = restore
        buffer.movedim(self.channel_dim, 1)[rows, index] = self.value
        self.buffer, self.version, self.last_index = buffer, buffer._version, index
        return buffer


class _Suffix:
    """Runs the model from the target layer on, with a batch of replacement outputs for the layer."""

    def __init__(self, context: LayerContext, index: int) -> None:
        self.context = context
        self.index = index
        self.replay = context.prefix is not None
        self.verified = False
        # The recorded outputs a replay hands out: their version counters reveal in-place writes.
        self.recorded = [t for _, out in context.prefix or () for t in _tensors(out)]

    def __call__(self, replacement: torch.Tensor) -> torch.Tensor:
        """Scores ``(n,)`` of image ``index``'s target with the layer's output set to ``replacement``."""
        if self.replay:
            try:
                if not self.verified:
                    self._verify()
                return self._run(replacement, replay=True)
            except RuntimeError as error:
                # Not swallowed: the full forward pass below runs the same model and raises if the
                # model itself is at fault; here only the shortcut is given up.
                warnings.warn(
                    "AblationCAM could not reuse the layers before the target layer for this model "
                    f"({error}); running the whole model for every ablated channel instead (slower)",
                    RuntimeWarning, stacklevel=3)
                self.replay = False
        return self._run(replacement, replay=False)

    def _verify(self) -> None:
        """The replay must reproduce the unablated score, or it is not used."""
        unablated = self.context.raw_activations[self.index:self.index + 1].clone()
        score = self._run(unablated, replay=True)[0]
        expected = self.context.scores[self.index]
        tolerance = max(1e-3, 10 * torch.finfo(self.context.input.dtype).eps)
        if not torch.isclose(score, expected, rtol=tolerance, atol=tolerance):
            raise RuntimeError(f"the replayed score {float(score):.6g} differs from {float(expected):.6g}")
        self.verified = True

    def _run(self, replacement: torch.Tensor, replay: bool) -> torch.Tensor:
        context, count = self.context, replacement.shape[0]
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


def _tensors(output: Any) -> List[torch.Tensor]:
    """The tensors in a (nested) module output."""
    if isinstance(output, torch.Tensor):
        return [output]
    if isinstance(output, dict):
        output = list(output.values())
    if isinstance(output, (list, tuple)):
        return [t for value in output for t in _tensors(value)]
    return []


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
