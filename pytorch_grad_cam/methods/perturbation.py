"""Perturbation CAMs (ScoreCAM, SS-CAM, IS-CAM, AblationCAM): no gradients.

Channel weights from the scores of perturbed inputs or activations.

All stream their perturbed batches ``batch_size`` at a time, so memory does not grow with the number
of channels.
"""

from __future__ import annotations

from functools import partial
from typing import Any, Callable

import torch

from .._engine.capture import layer_name, map_tensors, tensors_of
from .._engine.checks import check_float, check_int, check_seed
from .._engine.maps import min_max_normalize, resize_maps
from .._engine.memory import auto_batch_size
from .._engine.replay import AblatedCopies, ReplaySuffix, channel_layout, image_rows
from .._engine.warnings import warn
from ..base_cam import BaseCAM, LayerContext, select_output
from ..utils.model_targets import ClassifierOutputTarget

#: AblationCAM sets an ablated channel to ``min - ABLATION_OFFSET`` when the layer has negative values.
ABLATION_OFFSET = 1e7


def _target_scores(targets: list[Callable], index: int, output: Any, count: int) -> torch.Tensor:
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
    ``batch_size`` masked inputs at a time; only one batch of masked inputs exists at any moment. A
    constant channel (all zeros after a ReLU, often half of them) has an all-zero mask: every constant
    channel gives the same masked input, so it is scored once per image and its score shared
    (:meth:`scored_channels`), which gives the same weights.

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
    needs_nonnegative_activations = True  # relu(sum_k w_k A_k) with w = softmax(s) > 0
    default_batch_size = None  # sized at each call to the device's free memory
    #: How many model inputs each channel's mask gives (SS-CAM: noisy samples, IS-CAM: path steps).
    inputs_per_mask: int = 1
    #: Whether every constant channel gives the same model inputs. Its mask is all zeros (``A_k - min = 0``),
    #: so they are scored once and the scores shared: an all-zero channel after a ReLU costs no forward
    #: pass of its own. SS-CAM's noisy inputs differ for every row, so it scores each.
    shares_constant_masks: bool = True

    def cam_weights(
        self, activations: torch.Tensor, gradients: torch.Tensor | None, context: LayerContext
    ) -> torch.Tensor:
        """``w = softmax_k(s)`` from the masked inputs' scores, ``(B, C)``; see the class docstring."""
        x = context.input  # (B, C_in, *S)
        batch, channels = activations.shape[:2]
        scores = torch.empty(batch, channels, self.inputs_per_mask, device=activations.device)  # (B, C, n)
        rows = context.batch_size or auto_batch_size(x[0])
        # The call's own noise source (SS-CAM's), restarted for every image so that an image's map does
        # not depend on the others in its batch, nor on batch_size. A local: calls never share it.
        generator = torch.Generator(device=x.device)
        seed = self.noise_seed(generator)
        for i in range(batch):
            generator.manual_seed(seed)
            sources = self.scored_channels(activations[i])  # (M,): a channel, or -1 for a constant one
            scored = self._score_masks(activations[i], sources, i, context, rows, generator)  # (M, n)
            scores[i] = self._spread(scored, sources, channels)
        return self.combine_scores(scores)

    @classmethod
    def scored_channels(cls, activations: torch.Tensor) -> torch.Tensor:
        """The channels of one image's ``(C, *grid)`` activations whose masks are scored, ``(M,)`` long.

        Every channel; with ``shares_constant_masks``, the non-constant ones and then ``-1`` (once) standing
        for all the constant ones, whose masks are all zeros.
        """
        channels = activations.shape[0]
        every = torch.arange(channels, device=activations.device)
        if not cls.shares_constant_masks:
            return every
        flat = activations.flatten(1)  # (C, N)
        constant = flat.amax(1) == flat.amin(1)  # (C,)
        if not bool(constant.any()):
            return every
        return torch.cat([every[~constant], every.new_full((1,), -1)])

    @staticmethod
    def _spread(scored: torch.Tensor, sources: torch.Tensor, channels: int) -> torch.Tensor:
        """``(M, n)`` scores of the scored masks -> ``(C, n)``: a constant channel gets the shared row."""
        if len(sources) == 0 or int(sources[-1]) >= 0:  # every channel scored on its own
            return scored
        spread = scored[-1].expand(channels, -1).clone()  # (C, n): the constant channels' shared scores
        spread[sources[:-1]] = scored[:-1]
        return spread

    def _score_masks(
        self,
        activations: torch.Tensor,
        sources: torch.Tensor,
        index: int,
        context: LayerContext,
        rows: int,
        generator: torch.Generator,
    ) -> torch.Tensor:
        """Image ``index``'s target scores ``(M, n)`` on the inputs of the masks of ``sources``, streamed."""
        x = context.input  # (B, C_in, *S)
        per_mask = self.inputs_per_mask
        # Model inputs of this image: row r is mask r // per_mask, sample r % per_mask.
        total = len(sources) * per_mask
        scores = torch.empty(total, device=activations.device)  # (M * n,)
        for start in range(0, total, rows):
            stop = min(start + rows, total)
            first, last = start // per_mask, (stop - 1) // per_mask + 1  # the masks this batch uses
            masks = self._masks(activations, sources[first:last], x.shape[2:], x.dtype)  # (m, *S)
            row = torch.arange(start, stop, device=masks.device)
            if per_mask > 1:  # several rows share a mask
                masks = masks[row // per_mask - first]  # (n, *S)
            masked = self.mask_inputs(x[index : index + 1], masks, row % per_mask, generator)
            output = context.model(masked)  # masked: (n, C_in, *S)
            scores[start:stop] = _target_scores(context.targets, index, output, stop - start)
        return scores.view(len(sources), per_mask)

    @staticmethod
    def _masks(
        activations: torch.Tensor, sources: torch.Tensor, size: Any, dtype: torch.dtype
    ) -> torch.Tensor:
        """The normalised masks ``(m, *S)`` of channels ``sources`` (``-1``: a constant channel's, zeros)."""
        real = sources >= 0
        if bool(real.all()):
            masks = resize_maps(activations[sources], size, align_corners=True)  # (m, *S)
            return min_max_normalize(masks, eps=1e-8).to(dtype)
        masks = torch.zeros(len(sources), *size, dtype=dtype, device=activations.device)
        if bool(real.any()):
            upsampled = resize_maps(activations[sources[real]], size, align_corners=True)
            masks[real] = min_max_normalize(upsampled, eps=1e-8).to(dtype)
        return masks

    # -- what SS-CAM and IS-CAM change -----------------------------------------------------------
    def noise_seed(self, generator: torch.Generator) -> int:
        """The seed each image's ``generator`` restarts from in this call.

        SS-CAM: its ``seed``, or a fresh one per call. Score-CAM and IS-CAM draw no noise.
        """
        return 0

    def mask_inputs(
        self, image: torch.Tensor, masks: torch.Tensor, samples: torch.Tensor, generator: torch.Generator
    ) -> torch.Tensor:
        """The model inputs ``(n, C_in, *S)`` for one image ``(1, C_in, *S)``, one per row.

        ``masks``: ``(n, *S)`` in [0, 1]; ``samples``: ``(n,)``, each row's index in
        ``0..inputs_per_mask-1``; ``generator`` is the call's noise source, restarted for each image.
        """
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

    Args:
        num_samples: ``N``, the noisy copies of each channel's mask (default 35).
        std: the standard deviation of the Gaussian noise (default 2.0).
        seed: the noise seed: None for a fresh seed per call, an int for the same noise in every call.
        noise: ``"mask"`` (SS-CAM(1), the default) or ``"input"`` (SS-CAM(2)): where the noise is added.
        *args, **kwargs: :class:`BaseCAM`'s arguments.

    Example:
        >>> cam = SSCAM(model, target_layers=[model.layer4[-1]], num_samples=35, std=2.0, seed=0)
        >>> maps = cam(x, targets=[ClassifierOutputTarget(281)])  # (1, 224, 224)
    """

    name = "sscam"
    deterministic = False  # unless a seed is given
    shares_constant_masks = False  # every row's noise differs: no two inputs are the same

    def __init__(
        self,
        *args: Any,
        num_samples: int = 35,
        std: float = 2.0,
        seed: int | None = None,
        noise: str = "mask",
        **kwargs: Any,
    ) -> None:
        """Check and store the SS-CAM options; the other arguments are :class:`BaseCAM`'s."""
        super().__init__(*args, **kwargs)
        self.num_samples = check_int(num_samples, "num_samples", 1)
        self.std = check_float(std, "std", minimum=0)
        self.seed = check_seed(seed)
        if noise not in ("mask", "input"):
            raise ValueError(f"noise must be 'mask' (SS-CAM(1)) or 'input' (SS-CAM(2)), got {noise!r}")
        self.noise = noise

    @property
    def inputs_per_mask(self) -> int:  # type: ignore[override]
        """``num_samples`` noisy inputs per channel's mask."""
        return self.num_samples

    def noise_seed(self, generator: torch.Generator) -> int:
        """``seed``, or a fresh seed drawn by ``generator`` when ``seed`` is None."""
        return self.seed if self.seed is not None else generator.seed()

    def mask_inputs(
        self, image: torch.Tensor, masks: torch.Tensor, samples: torch.Tensor, generator: torch.Generator
    ) -> torch.Tensor:
        """One noisy input per row: ``x * (m_k + d)`` (``noise='mask'``) or ``x * m_k + d`` (``'input'``)."""
        # One draw per row, in row order: the same noise whatever the batch boundaries.
        shape = masks.shape[1:] if self.noise == "mask" else image.shape[1:]
        noise = (
            torch.stack(
                [torch.randn(shape, generator=generator, device=image.device) for _ in range(len(masks))]
            ).to(image.dtype)
            * self.std
        )  # (n, *shape)
        if self.noise == "mask":
            return image * (masks + noise).unsqueeze(1)
        return image * masks.unsqueeze(1) + noise

    def combine_scores(self, scores: torch.Tensor) -> torch.Tensor:
        """The softmax over channels of the scores averaged over the noisy samples, ``(B, C)``."""
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

    Args:
        num_samples: ``N``, the steps of the path of growing masks (default 10).
        *args, **kwargs: :class:`BaseCAM`'s arguments.

    Example:
        >>> cam = ISCAM(model, target_layers=[model.layer4[-1]], num_samples=10)
    """

    name = "iscam"

    def __init__(self, *args: Any, num_samples: int = 10, **kwargs: Any) -> None:
        """Check and store ``num_samples``; the other arguments are :class:`BaseCAM`'s."""
        super().__init__(*args, **kwargs)
        self.num_samples = check_int(num_samples, "num_samples", 1)

    @property
    def inputs_per_mask(self) -> int:  # type: ignore[override]
        """``num_samples`` path steps per channel's mask."""
        return self.num_samples

    def mask_inputs(
        self, image: torch.Tensor, masks: torch.Tensor, samples: torch.Tensor, generator: torch.Generator
    ) -> torch.Tensor:
        """One input per row: ``x * c_i m_k`` with ``c_i = i (i + 1) / (2N)``, ``i`` the row's step (1..N)."""
        step = (samples + 1).to(image.dtype)  # i = 1..N
        coefficient = step * (step + 1) / (2 * self.num_samples)  # (n,)
        return image * (coefficient.view(-1, *([1] * (masks.ndim - 1))) * masks).unsqueeze(1)

    def combine_scores(self, scores: torch.Tensor) -> torch.Tensor:
        """The softmax over channels of the scores averaged over the path steps, ``(B, C)``."""
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
    # batch costs little memory and saves calls. Sized at each call to the device's free memory, by the
    # layer's output rather than the input.
    default_batch_size = None

    def cam_weights(
        self, activations: torch.Tensor, gradients: torch.Tensor | None, context: LayerContext
    ) -> torch.Tensor:
        """``w_k = (y - y_k) / y`` from the ablated copies' scores, ``(B, C)``; see the class docstring."""
        raw = context.raw_activations  # the layer's own output, (B, C, ...) or (B, ..., C), or a structure
        batch, channels = activations.shape[:2]
        layout = channel_layout(raw, context.channel_dim, self.reshape_transform, channels)
        leaves = tensors_of(raw)
        ablated = torch.empty(batch, channels, device=activations.device)  # (B, C)
        rows = context.batch_size or auto_batch_size(activations[0])  # ablated copies per pass
        for i in range(batch):
            original = map_tensors(partial(image_rows, index=i), raw)
            lowest = min(float(leaf[i].min()) for leaf in leaves)
            # min - 1e7 overflows to -inf in half precision: stay within the dtype's range.
            floor = torch.finfo(leaves[0].dtype).min / 2
            value = 0.0 if lowest >= 0 else max(lowest - ABLATION_OFFSET, floor)
            suffix = ReplaySuffix(context, i, partial(_target_scores, context.targets))
            copies = AblatedCopies(original, layout, value)
            for start in range(0, channels, rows):
                stop = min(start + rows, channels)
                index = torch.arange(start, stop, device=activations.device)
                ablated[i, start : start + len(index)] = suffix(copies.ablate(index))
        score = context.scores[:, None]  # (B, 1)
        self._warn_unresolved(score - ablated, activations, context)
        # A zero score would divide by zero: keep it finite (the weights then rank by y - y_k).
        denominator = torch.where(score.abs() < 1e-7, torch.full_like(score, 1e-7), score)
        return (score - ablated) / denominator

    @staticmethod
    def _warn_unresolved(drops: torch.Tensor, activations: torch.Tensor, context: LayerContext) -> None:
        """Warn about images where no ablation changed the score at all (``drops`` ``(B, C)`` all 0).

        Only where the layer is not all zeros: its activations are then too small next to the score for one
        rounding step of the model's dtype (``|y - y_k| < eps * |y|``), e.g. a random network whose BatchNorm
        statistics were never fitted. Such a map carries no information; without this, only a constant map
        shows.
        """
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
            RuntimeWarning,
        )
