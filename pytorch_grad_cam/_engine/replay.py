"""AblationCAM's prefix replay: the model run from the target layer on, on ablated copies of its output.

The outputs of the outermost modules that ran before the target layer are replayed from the first
forward pass, the layer's ``forward`` returns the ablated copies (each ``forward`` is swapped for the
call and restored in ``finally``), and only the rest of the model runs on the batch of ablated copies.
"""

from __future__ import annotations

import contextlib
import threading
from collections import defaultdict, deque
from collections.abc import Iterator
from functools import partial
from typing import Any, Callable

import torch
from torch import nn

from .capture import LayerInput, map_tensors, tensors_of
from .undo import Undo
from .warnings import warn


def version_of(tensor: torch.Tensor) -> int:
    """The tensor's version counter: it grows with every in-place write."""
    return tensor._version  # noqa: SLF001  (torch has no public name for it)


class ChannelLayout:
    """Where each channel ``k`` of the reshaped activations lives in the layer's raw output.

    Tensor ``leaf[k]`` of the output's structure (0 for a plain tensor), at ``channel[k]`` along that tensor's
    ``axes[leaf[k]]``.
    """

    def __init__(self, leaf: torch.Tensor, channel: torch.Tensor, axes: list[int]) -> None:
        """Store the per-channel ``leaf`` and ``channel`` indices and each leaf's channel axis."""
        self.leaf, self.channel, self.axes = leaf, channel, axes


def channel_layout(
    raw: Any, channel_dim: int, reshape_transform: Callable | None, channels: int
) -> ChannelLayout:
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
            raise ValueError(
                f"AblationCAM ablates axis {channel_dim} of the layer's output "
                f"{tuple(raw.shape)}, which has {raw.shape[dim]} channels, but the reshaped "
                f"activations have {channels}: the reshape_transform must keep the channels "
                "of the layer's last axis"
            )
        zeros = torch.zeros(channels, dtype=torch.long)
        return ChannelLayout(zeros, torch.arange(channels), [dim])
    if reshape_transform is None:  # the engine captures a structure only with a transform
        raise TypeError(f"a layer returning a {type(raw).__name__} needs a reshape_transform")
    leaves = tensors_of(raw)
    last_error: Exception | None = None  # why the transform refused a probe, kept as the cause
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
        if not (
            bool(torch.allclose(values, numbers[:, None], atol=1e-3))
            and sorted(numbers.long().tolist()) == list(range(1, channels + 1))
        ):
            continue
        position = numbers.long().cpu() - 1  # the running number behind each reshaped channel
        starts = torch.tensor(offsets)
        leaf = torch.searchsorted(starts, position, right=True) - 1
        return ChannelLayout(leaf, position - starts[leaf], [axis % t.ndim for t in leaves])
    raise ValueError(
        "AblationCAM cannot tell which channel of the target layer's output (a "
        f"{type(raw).__name__} of {len(leaves)} tensors) each of the {channels} reshaped "
        "channels is: the reshape_transform must concatenate the tensors' channels (axis 1 "
        "or the last axis), as fpn_reshape_transform does"
    ) from last_error


def image_rows(tensor: torch.Tensor, _unused: Any = None, *, index: int) -> torch.Tensor:
    """Image ``index``'s rows ``(1, ...)`` of a batched tensor (for ``map_tensors``)."""
    return tensor[index : index + 1]


def _next(iterator: Iterator, _unused: Any) -> Any:
    return next(iterator)


def _probe(leaf: torch.Tensor, axis: int, offset: int) -> torch.Tensor:
    """One image's worth of ``leaf``: the running numbers ``offset + 1, offset + 2, ...`` along ``axis``."""
    shape = [1] * leaf.ndim
    shape[axis] = leaf.shape[axis]
    numbers = torch.arange(offset + 1, offset + 1 + leaf.shape[axis], dtype=torch.float64, device=leaf.device)
    return numbers.view(shape).expand(1, *leaf.shape[1:]).clone()


class AblatedCopies:
    """Row ``r`` of each batch is the layer's output with channel ``index[r]`` ablated.

    The output may be a structure of tensors (an FPN's levels): a channel then lives in one of them
    (``layout``). One buffer per tensor serves every batch of an image: between batches only the channels
    ablated last time are restored and the new ones set, instead of writing ``n`` whole copies again.
    If the model modified a buffer in place (an in-place op right after the target layer), its version
    counter says so and the buffers are filled afresh.
    """

    def __init__(self, original: Any, layout: ChannelLayout, value: float) -> None:
        """Ablate channels of ``original`` (one image's output) by setting them to ``value``."""
        self.original = original  # the layer's output for one image: (1, ...) tensors
        self.leaves = tensors_of(original)
        self.layout = layout
        self.value = value
        self.buffers: list[torch.Tensor] | None = None
        self.versions: list[int] = []
        self.last_index: torch.Tensor | None = None

    def ablate(self, index: torch.Tensor) -> Any:
        """The layer's output for ``len(index)`` copies, row ``r`` with channel ``index[r]`` ablated."""
        n = len(index)
        buffers = self.buffers
        if (
            buffers is None
            or self.last_index is None
            or buffers[0].shape[0] != n
            or [version_of(b) for b in buffers] != self.versions
        ):
            buffers = [leaf.expand(n, *leaf.shape[1:]).clone() for leaf in self.leaves]
        else:
            self._write(buffers, self.last_index, restore=True)
        self._write(buffers, index, restore=False)
        self.buffers, self.versions, self.last_index = buffers, [version_of(b) for b in buffers], index
        rows = iter(buffers)
        return map_tensors(lambda t: next(rows), self.original)

    def _write(self, buffers: list[torch.Tensor], index: torch.Tensor, restore: bool) -> None:
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


class ReplaySuffix:
    """Runs the model from the target layer on, with a batch of replacement outputs for the layer.

    ``context`` is the method's layer context (model, layer, input, targets, scores, raw activations and
    the recorded prefix); ``score(index, output, count)`` gives image ``index``'s target score on each of
    the ``count`` outputs of a batch, ``(count,)``.
    """

    def __init__(self, context: Any, index: int, score: Callable[[int, Any, int], torch.Tensor]) -> None:
        """Replay image ``index`` of ``context``, scored by ``score``; see the class docstring."""
        self.context = context
        self.index = index
        self.score = score
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
                    RuntimeWarning,
                )
                self.replay = False
        return self._run(replacement, replay=False)

    def _verify(self) -> None:
        """The replay must reproduce the unablated score, or it is not used."""
        unablated = map_tensors(
            lambda t: t[self.index : self.index + 1].clone(), self.context.raw_activations
        )
        score = self._run(unablated, replay=True)[0]
        expected = self.context.scores[self.index]
        tolerance = max(1e-3, 10 * torch.finfo(self.context.input.dtype).eps)
        if not torch.isclose(score, expected, rtol=tolerance, atol=tolerance):
            raise RuntimeError(f"the replayed score {float(score):.6g} differs from {float(expected):.6g}")
        self.verified = True

    def _run(self, replacement: Any, replay: bool) -> torch.Tensor:
        context, count = self.context, tensors_of(replacement)[0].shape[0]
        # Each pass gets its own copy of the image: a model may modify its input in place.
        image = context.input[self.index : self.index + 1].clone()
        if replay:
            # A broadcast view is enough: only the layers after the target layer really run.
            image = image.expand(count, *image.shape[1:])
        else:
            image = image.repeat(count, *([1] * (image.ndim - 1)))
        started = [False]
        forwards = dict([_target_forward(context.layer, replacement, started)])
        if replay:
            queues: dict = defaultdict(deque)
            for module, output in context.prefix:
                queues[module].append(_one_image(output, self.index, context.input.shape[0], count))
            for module, queue in queues.items():
                forwards[module] = _replaying_forward(module.forward, queue, started)
        recorded = self.recorded if replay else []
        versions = [version_of(t) for t in recorded]
        with _swapped_forwards(forwards):
            output = context.model(image)
        if any(version_of(t) != v for t, v in zip(recorded, versions)):
            # This image's rows of the recording are no longer what the layers produced.
            raise RuntimeError("the model modified the output of a layer before the target layer in place")
        return self.score(self.index, output, count)


def _target_forward(layer: nn.Module, replacement: Any, started: list[bool]) -> tuple[nn.Module, Callable]:
    """The module to swap for the target layer and its ``forward``, which marks the target as started.

    A layer's ``forward`` returns the replacement instead of running; for a ``LayerInput`` the module whose
    input it is runs on the replacement as that input.
    """
    if isinstance(layer, LayerInput):
        module, own = layer.module, layer.module.forward

        def input_forward(*args, **kwargs):
            started[0] = True
            return own(replacement, *args[1:], **kwargs)

        return module, input_forward

    def layer_forward(*args, **kwargs):
        # The target layer itself is not run: its output is the replacement.
        started[0] = True
        return replacement

    return layer, layer_forward


@contextlib.contextmanager
def _swapped_forwards(forwards: dict[nn.Module, Callable]) -> Iterator[None]:
    """Give modules another ``forward`` for the block, on this thread only; restore each in ``finally``.

    A call of the module on another thread (a plain ``model(x)`` while this call holds the model) runs the
    module's own ``forward``. Each swap is recorded before it is made and undone only where it was made
    (an :class:`~.undo.Undo`): an exception at any line leaves every module's ``forward`` as it was.
    """
    saved: list[tuple[nn.Module, Callable | None, Callable]] = []  # (module, its own forward, the swap)
    owner = threading.get_ident()
    undo = Undo(partial(_restore_forwards, saved))
    try:
        for module, forward in forwards.items():
            swap = _on_thread(owner, forward, module.forward)
            saved.append((module, module.__dict__.get("forward"), swap))
            module.forward = swap
        yield
    finally:
        undo()


def _restore_forwards(saved: list[tuple[nn.Module, Callable | None, Callable]]) -> None:
    for module, own_forward, swap in saved:
        if module.__dict__.get("forward") is not swap:
            continue  # never swapped (interrupted before), or already restored
        if own_forward is None:
            del module.forward  # the class's forward shows again
        else:
            module.forward = own_forward


def _on_thread(owner: int, forward: Callable, own: Callable) -> Callable:
    """``forward`` when called on thread ``owner``, else the module's own ``own``."""

    def dispatch(*args, **kwargs):
        return (forward if threading.get_ident() == owner else own)(*args, **kwargs)

    return dispatch


def _replaying_forward(forward: Callable, queue: deque, started: list[bool]) -> Callable:
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
            row = output[index : index + 1]
            return row.expand(count, *row.shape[1:])
        return output
    if isinstance(output, dict):
        return {key: _one_image(value, index, batch, count) for key, value in output.items()}
    if isinstance(output, (list, tuple)):
        return type(output)(_one_image(value, index, batch, count) for value in output)
    return output
