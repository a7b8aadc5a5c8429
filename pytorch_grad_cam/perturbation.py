"""Perturbation CAMs: channel weights from the scores of perturbed inputs or activations, no gradients.

Both stream their perturbed batches ``batch_size`` at a time, so memory does not grow with the number
of channels.
"""
from __future__ import annotations

import warnings
from collections import defaultdict, deque
from typing import Any, Callable, List, Optional

import torch

from .base_cam import BaseCAM, LayerContext, min_max_normalize, resize_maps, select_output

#: AblationCAM sets an ablated channel to ``min - ABLATION_OFFSET`` when the layer has negative values.
ABLATION_OFFSET = 1e7


def _target_scores(targets: List[Callable], index: int, output: Any, count: int) -> torch.Tensor:
    """Image ``index``'s target on each of the ``count`` outputs of a perturbed batch: ``(count,)``."""
    target = targets[index]
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

    The layers before the target layer are not run again for every ablated channel: the outputs of the
    modules that ran before it are replayed from the first forward pass (their ``forward`` is swapped
    for the call and restored in ``finally``), and only the rest of the model runs on the batch of
    ablated copies. The first batch carries the unablated activation too; if its score does not match
    ``y`` (a model whose forward pass the replay cannot reproduce), the slow path, a full forward pass
    per ablated copy, is used instead, with a warning.
    """

    name = "ablationcam"
    uses_gradients = False
    records_prefix = True

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
            for start in range(0, channels, context.batch_size):
                index = torch.arange(start, min(start + context.batch_size, channels), device=raw.device)
                copies = original.expand(len(index), *original.shape[1:]).clone()
                copies.movedim(channel_dim, 1)[torch.arange(len(index)), index] = value
                ablated[i, start:start + len(index)] = suffix(copies)
        score = context.scores[:, None]  # (B, 1)
        # A zero score would divide by zero: keep it finite (the weights then rank by y - y_k).
        denominator = torch.where(score.abs() < 1e-7, torch.full_like(score, 1e-7), score)
        return (score - ablated) / denominator


class _Suffix:
    """Runs the model from the target layer on, with a batch of replacement outputs for the layer."""

    def __init__(self, context: LayerContext, index: int) -> None:
        self.context = context
        self.index = index
        self.replay = context.prefix is not None
        self.verified = False

    def __call__(self, replacement: torch.Tensor) -> torch.Tensor:
        """Scores ``(n,)`` of image ``index``'s target with the layer's output set to ``replacement``."""
        if self.replay and not self.verified:
            reason = None
            unablated = self.context.raw_activations[self.index:self.index + 1]
            try:
                scores = self._run(torch.cat([unablated, replacement]), replay=True)
            except RuntimeError as error:
                reason = f"replaying it raised {type(error).__name__}: {error}"
            else:
                expected = self.context.scores[self.index]
                tolerance = max(1e-3, 10 * torch.finfo(self.context.input.dtype).eps)
                if torch.isclose(scores[0], expected, rtol=tolerance, atol=tolerance):
                    self.verified = True
                    return scores[1:]
                reason = f"the replayed score {float(scores[0]):.6g} differs from {float(expected):.6g}"
            warnings.warn(
                "AblationCAM could not reuse the layers before the target layer for this model "
                f"({reason}); running the whole model for every ablated channel instead (slower)",
                RuntimeWarning, stacklevel=2)
            self.replay = False
        return self._run(replacement, replay=self.replay)

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
        handles = [
            context.layer.register_forward_pre_hook(lambda module, inputs: started.__setitem__(0, True)),
            context.layer.register_forward_hook(lambda module, inputs, output: replacement),
        ]
        patched: List[tuple] = []  # (module, the instance-level forward it had, if any)
        try:
            if replay:
                queues: dict = defaultdict(deque)
                for module, output in context.prefix:
                    queues[module].append(_one_image(output, self.index, context.input.shape[0], count))
                for module, queue in queues.items():
                    patched.append((module, module.__dict__.get("forward")))
                    module.forward = _replaying_forward(module.forward, queue, started)
            output = context.model(image)
            return _target_scores(context.targets, self.index, output, count)
        finally:
            for handle in handles:
                handle.remove()
            for module, own_forward in patched:
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
