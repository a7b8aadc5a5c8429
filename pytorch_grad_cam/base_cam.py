"""BaseCAM: the pipeline every CAM method runs, its targets, and the contract for writing a method.

A method is a small subclass of :class:`BaseCAM`; see its docstring for the extension contract.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Callable, Optional, Union, cast

import numpy as np
import torch
from torch import nn

from ._engine.capture import LayerCapture, capture_forward, layer_name, map_tensors, rebuild, tensors_of
from ._engine.checkpointing import autograd_switched_off, reentrant_checkpoint_errors
from ._engine.checks import check_batch_size, check_device, check_input, check_layer_layout, check_layers
from ._engine.maps import (
    broadcast_weights,
    first_principal_component,
    min_max_normalize,
    resize_maps,
    warn_if_constant,
)
from ._engine.session import compute_session
from ._engine.undo import guarded
from ._engine.warnings import warn
from .registry import Registered
from .utils.model_targets import ClassifierOutputTarget

Target = Callable[[Any], torch.Tensor]
TargetsArg = Union[None, int, Target, Sequence[Union[int, Target]]]
#: ``(targets or None, model output, batch) -> one target per image``: how a call's targets are resolved.
TargetResolver = Callable[[Optional[list[Target]], Any, int], list[Target]]
#: ``[(B, *spatial) per target layer] -> (B, *spatial)``: how a call fuses its layers' maps.
LayerFusion = Callable[[list[torch.Tensor]], torch.Tensor]


class _Unset:
    """The type of :data:`UNSET`; shown as ``<not given>`` in signatures and ``help()``."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "<not given>"


#: Marks an argument that was not given (``None`` is a meaningful value for ``targets``).
UNSET: Any = _Unset()


# -- targets: normalisation, resolution and scoring -------------------------------------------------------
def first_api_targets(targets: Any, target_category: Any, unset: Any = UNSET) -> Any:
    """``targets``, or ``target_category`` (the first API generation's name for it) when that is given.

    ``unset`` is what an omitted ``target_category`` is; giving both is a TypeError.
    """
    if target_category is unset:
        return targets
    if targets is not None:
        raise TypeError("pass targets or target_category (the first API's name), not both")
    return target_category


def select_output(output: Any, index: int, batch: int) -> Any:
    """Image ``index``'s part of a model output: a tensor row, a list element, or a dict of rows."""
    if isinstance(output, torch.Tensor):
        return output[index]
    if isinstance(output, dict):
        return {key: select_output(value, index, batch) for key, value in output.items()}
    if isinstance(output, (list, tuple)):
        if len(output) == batch and all(isinstance(o, dict) for o in output):
            return output[index]  # detection models: one dict per image
        return rebuild(output, [select_output(value, index, batch) for value in output])
    return output


def _as_target(target: Any, where: str) -> Target:
    if isinstance(target, (int, np.integer)) and not isinstance(target, (bool, np.bool_)):
        if target < 0:
            raise ValueError(f"{where} must be a class index >= 0 or a callable target, got {int(target)}")
        return ClassifierOutputTarget(int(target))
    if not callable(target):
        raise TypeError(
            f"{where} must be a callable target (e.g. ClassifierOutputTarget(281)) or a class "
            f"index, got {type(target).__name__}"
        )
    return target


def normalize_targets(targets: TargetsArg, batch: int) -> list[Target] | None:
    """A call's ``targets`` as one callable per image, or ``None`` (each image's top class).

    Accepted: ``None``; one class index or callable for every image (also a 0-dim tensor or array); a
    list (or 1-D tensor/array) with one class index or callable per image. A length that is not the
    batch's is a ValueError; anything else a TypeError.
    """
    if targets is None:
        return None
    if isinstance(targets, (int, np.integer)) or callable(targets):
        return [_as_target(targets, "targets")] * batch  # one target for every image
    if isinstance(targets, (torch.Tensor, np.ndarray)) and targets.ndim == 0:
        return [_as_target(targets.item(), "targets")] * batch  # a 0-dim class index, for every image
    if isinstance(targets, torch.Tensor):
        targets = targets.tolist()
    if isinstance(targets, (str, bytes)):
        raise TypeError(
            f"targets must be None, a class index, a callable or a list of those, got "
            f"{type(targets).__name__} {targets!r}"
        )
    try:
        targets = list(targets)
    except TypeError:
        raise TypeError(
            f"targets must be None, a class index, a callable or a list of those, got "
            f"{type(targets).__name__}"
        ) from None
    if len(targets) != batch:
        raise ValueError(
            f"targets has {len(targets)} entries but the batch has {batch} images; give one "
            "target per image (or None for each image's top class)"
        )
    return [_as_target(t, f"targets[{i}]") for i, t in enumerate(targets)]


def is_class_scores(output: Any, batch: int) -> bool:
    """Whether a model output is ``(B, num_classes)`` class scores (what a top class is read from)."""
    return isinstance(output, torch.Tensor) and output.ndim == 2 and output.shape[0] == batch


class IgnoredTarget:
    """A zero score: the target of a map that ignores its targets, on a model without class scores.

    Used for ``class_specific = False`` methods (EigenCAM, KPCA-CAM, FEM, RandomCAM) called with
    ``targets=None`` on a model whose output has no top class to read (a dict, a tuple, a detector's).
    """

    def __call__(self, model_output: Any) -> torch.Tensor:
        """A zero scalar on the output's device."""
        tensors = tensors_of(model_output)
        return torch.zeros((), device=tensors[0].device if tensors else None)

    def __repr__(self) -> str:
        """``IgnoredTarget()``."""
        return "IgnoredTarget()"


def top_class_targets(output: Any, batch: int) -> list[Target]:
    """Each image's top class as a :class:`ClassifierOutputTarget`; needs a ``(B, num_classes)`` output."""
    if not is_class_scores(output, batch):
        shape = tuple(output.shape) if isinstance(output, torch.Tensor) else type(output).__name__
        raise ValueError(
            f"targets=None picks each image's top class, which needs a (B, num_classes) "
            f"output; this model returns {shape}: pass explicit targets"
        )
    return [ClassifierOutputTarget(int(k)) for k in output.argmax(-1).tolist()]


def target_scores(targets: Sequence[Target], output: Any, batch: int) -> torch.Tensor:
    """Each image's target score on the model output, ``(B,)``.

    ``targets[i]`` gets image ``i``'s part (:func:`select_output`). Refuses a target that does not return a
    scalar tensor and a score that is not finite (NaN or Inf), naming the image(s). Grad mode is the
    caller's.
    """
    scores = []
    for i, target in enumerate(targets):
        score = target(select_output(output, i, batch))
        if not isinstance(score, torch.Tensor) or score.numel() != 1:
            got = tuple(score.shape) if isinstance(score, torch.Tensor) else type(score).__name__
            raise ValueError(
                f"targets[{i}] ({target!r}) must return a scalar tensor computed from "
                f"the model output, got {got}"
            )
        scores.append(score.reshape(()))
    stacked = torch.stack(scores)
    bad = (~torch.isfinite(stacked.detach())).nonzero().flatten().tolist()
    if bad:
        raise ValueError(f"the target score is not finite (NaN or Inf) for image(s) {bad}")
    return stacked


# -- layers, gradients ------------------------------------------------------------------------------------
def reshape_layer_output(
    model: nn.Module, layer: nn.Module, reshape_transform: Callable | None, output: Any
) -> torch.Tensor:
    """A target layer's output (or its gradient) as float32 ``(B, C, *spatial)``.

    Through ``reshape_transform`` when given (it may take a structure of tensors, e.g. an FPN's dict of
    levels, and must return one tensor); refuses anything without spatial dimensions, saying what to do.
    """
    if reshape_transform is not None:
        output = reshape_transform(output)
        if not isinstance(output, torch.Tensor):
            raise TypeError(
                f"reshape_transform must return a tensor (B, C, *spatial), got "
                f"{type(output).__name__} for target layer '{layer_name(model, layer)}'"
            )
    if output.ndim < 3:
        raise ValueError(
            f"target layer '{layer_name(model, layer)}' gives shape "
            f"{tuple(output.shape)}; a CAM needs (B, C, *spatial): choose a layer with "
            "spatial output or pass a reshape_transform (e.g. vit_reshape_transform for "
            "transformer tokens)"
        )
    return output.float()


def gradient_or_zeros(grads: dict[int, torch.Tensor | None], activation: torch.Tensor) -> torch.Tensor:
    """The gradient computed for ``activation`` (keyed by ``id``), detached.

    Zeros where the score does not use it (a tensor of a layer's structure, such as an unused pyramid
    level).
    """
    gradient = grads.get(id(activation))
    return torch.zeros_like(activation) if gradient is None else gradient.detach()


def warn_if_zero_gradients(grads: dict[int, Any], batch: int, output: Any = None) -> None:
    """Warn about images whose target score has an exactly-zero gradient in every target layer.

    With the model ``output``, images whose class scores are all equal get their own cause: a head of zeros.
    """
    nonzero = torch.zeros(batch, dtype=torch.bool)
    for structure in grads.values():
        for g in tensors_of(structure):
            if g.ndim and g.shape[0] == batch:
                nonzero |= g.reshape(batch, -1).ne(0).any(1).cpu()
            else:
                nonzero[:] = True  # not per image: cannot tell
    zero = (~nonzero).nonzero().flatten().tolist()
    flat_scores = _equal_class_scores(output, batch)
    if zero and all(i in flat_scores for i in zero):
        warn(
            f"the model gives every class the same score for image(s) {zero}, so no score depends on the "
            "target layers and their maps are all zeros: a classification head of zeros (torchvision's "
            "ViT, for one, initialises its head to zero when built without weights); load trained weights, "
            "or initialise the head (e.g. torch.nn.init.normal_(model.heads.head.weight, std=0.02))",
            RuntimeWarning,
        )
    elif zero:
        warn(
            f"the gradient of the target score with respect to the target layers is exactly "
            f"zero for image(s) {zero}: the score does not change with these activations "
            "(e.g. a FasterRCNNBoxScoreTarget whose boxes match no detection, or a score read "
            "past a saturated/dead unit), so their gradient-based maps carry no information",
            RuntimeWarning,
        )


def _equal_class_scores(output: Any, batch: int) -> set[int]:
    """The images whose row of ``(B, num_classes)`` class scores is constant (none for other outputs)."""
    if not is_class_scores(output, batch) or output.shape[-1] < 2:
        return set()
    rows = output.detach().reshape(batch, -1)
    return set((rows.amax(1) == rows.amin(1)).nonzero().flatten().tolist())


def to_numpy(maps: torch.Tensor) -> np.ndarray:
    """Maps as the public call returns them: float32 numpy on the CPU."""
    return maps.detach().cpu().numpy().astype(np.float32, copy=False)


# -- the per-call objects ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class CallOptions:
    """How one call departs from the method's own pipeline.

    Given by a method that runs another one (FinerCAM, RefineCAM, SESS) through :meth:`BaseCAM.explain`
    or :meth:`BaseCAM.compute_maps`.

    Attributes:
        resolve_targets: replaces :meth:`BaseCAM.resolve_targets` (FinerCAM's comparison targets).
        fuse: replaces :meth:`BaseCAM.fuse_layer_maps` (RefineCAM's product of the layers' maps).
        on_output: called with the model output of every scored pass, in order (SESS weighs each patch by
            its score on the first one).
        warn_constant: whether a constant layer map warns (SESS's background patches often are).
        orient: re-orients the principal components of a batch, ``(B, *grid)`` in and out (the arbitrary sign
            of each copy's component made consistent across test-time augmentations; see
            :meth:`BaseCAM.smooth_over_augmentations`). Applied to the layer maps of methods whose map is a
            principal component (``principal_component = True``) and of ``eigen_smooth``.
    """

    resolve_targets: TargetResolver | None = None
    fuse: LayerFusion | None = None
    on_output: Callable[[Any], None] | None = None
    warn_constant: bool = True
    orient: Callable[[torch.Tensor], torch.Tensor] | None = None


#: A call with the method's own pipeline.
DEFAULT_OPTIONS = CallOptions()


@dataclass
class ForwardPass:
    """One forward pass of a call: the model output and what was captured, keyed by ``id(layer)``.

    Attributes:
        output: the model output.
        activations: each target layer's output as the model produced it (a tensor, or a structure such
            as a dict of FPN levels), attached to the graph when the method uses gradients.
        prefix: for ``records_prefix`` methods, the outermost module calls completed before each layer.
        extras: what a method's :meth:`BaseCAM.forward_pass` records for its own use in this call (CAM:
            the inputs of the linear head), handed to its layers as ``LayerContext.extras``.
        cut_off: the target layers after which the model switched autograd off again (a reentrant
            activation checkpoint or a ``no_grad`` block around them): why a gradient is missing.
    """

    output: Any
    activations: dict[int, Any]
    prefix: dict[int, list] = field(default_factory=dict)
    extras: dict[str, Any] = field(default_factory=dict)
    cut_off: list[nn.Module] = field(default_factory=list)


@dataclass
class LayerContext:
    """What a method may use besides the activations and gradients of one target layer."""

    model: nn.Module
    layer: nn.Module
    input: torch.Tensor  # (B, C_in, *spatial): the input on the model's device and dtype
    targets: list[Target]  # one per image
    scores: torch.Tensor  # (B,) float32: each image's target score on the unmodified input
    # The layer's output as the model produced it (before reshape_transform): a tensor, or the dict/list/tuple
    # of tensors of a layer such as a feature pyramid (only with a reshape_transform).
    raw_activations: Any
    prefix: list | None  # outermost module calls completed before the layer (records_prefix methods)
    batch_size: int | None  # perturbed inputs per pass; None: sized to the device's free memory (ScoreCAM...)
    channel_dim: int  # the channel axis of raw_activations
    extras: dict[str, Any] = field(default_factory=dict)  # ForwardPass.extras of this call


def orient_augmented_copies(projection: torch.Tensor, transforms: Sequence[Any], batch: int) -> torch.Tensor:
    """Principal components of augmented copies of ``batch`` images, their signs made consistent.

    ``projection`` is ``(T*B, *grid)``, copy ``t`` of image ``b`` at row ``t * B + b`` (the layout of
    :meth:`BaseCAM.smooth_over_augmentations`). Each copy is de-augmented at the grid's resolution
    (``transform.deaugment_mask``) and flipped where it correlates negatively with the first copy of its
    image, which keeps the sign the method's own rule gave it. ``(T*B, *grid)`` out, in the copies' frames.
    """
    grid = projection.shape[1:]
    copies = projection.reshape(len(transforms), batch, *grid)  # (T, B, *grid)
    restored = torch.stack(
        [t.deaugment_mask(c.unsqueeze(1))[:, 0] for t, c in zip(transforms, copies)]
    ).flatten(2)  # (T, B, N)
    agreement = (restored * restored[:1]).sum(-1)  # (T, B)
    signs = torch.where(agreement < 0, -1.0, 1.0).to(projection.dtype)
    return (copies * signs.view(*signs.shape, *([1] * len(grid)))).reshape(projection.shape)


class BaseCAM(Registered):
    """Base class of every CAM method: hooks, targets, device, the batched loop, fusion and smoothing.

    Args:
        model: the network; any ``nn.Module`` taking ``(B, C, *spatial)``. Left exactly as it was:
            training flags, ``requires_grad``, ``.grad`` and devices are restored after every call.
        target_layers: the layer(s) to explain, a list or a single module. Their maps are made,
            normalised and resized to the input, then averaged.
        reshape_transform: turns a layer's output (and its gradient) into ``(B, C, *grid)``, e.g.
            :func:`pytorch_grad_cam.utils.reshape_transforms.vit_reshape_transform`.
        device: where to compute; by default the model's device. ``use_cuda=True`` (first API) means
            ``device="cuda"``. A model elsewhere is moved for the call and moved back after it.
        tta_transforms: a ``ttach.Compose`` for ``aug_smooth`` (default: horizontal flip x multiply
            by 0.9, 1.0, 1.1).
        batch_size: how many perturbed inputs go through the model at once (perturbation methods); by default
            the method's ``default_batch_size``, where None means sized at each call to the free memory of
            the device (see :func:`pytorch_grad_cam._engine.memory.auto_batch_size`).
        target_layer, use_cuda: the first API generation's names, still accepted.

    Call ``cam(input_tensor, targets=None, aug_smooth=False, eigen_smooth=False)`` with a
    ``(B, C, *spatial)`` tensor; it returns ``np.float32`` maps ``(B, *spatial)`` in ``[0, 1]``;
    :meth:`explain` returns the same maps as a tensor on the compute device.

    Example:
        >>> cam = GradCAM(model, target_layers=[model.layer4[-1]])
        >>> maps = cam(x, targets=[ClassifierOutputTarget(281)])  # (1, 224, 224)

    **Writing a method: the extension contract**, tier by tier; use the first tier that suffices.

    1. The formula. Override :meth:`cam_weights` (channel weights ``(B, C)``, or position weights
       ``(B, C, *spatial)``; the map is ``sum_k w_k A_k``), or :meth:`layer_map` for a map that is not a
       weighted sum (EigenCAM). Declare what the method needs as class attributes (``uses_gradients``,
       ``records_prefix``, ``class_specific``...) and set ``name`` to register it: the registry, the
       package's ``__all__``, the CLI and the generic test suites follow.
    2. Named pipeline steps, each documented below, for methods that change how a call runs rather than
       the formula. A call is :meth:`explain` (checks) -> :meth:`smooth_over_augmentations` (with
       ``aug_smooth``) -> :meth:`compute_maps` (one batch, in a :meth:`session`), which runs
       :meth:`scored_pass` (:meth:`forward_pass` -> :meth:`resolve_targets` -> :meth:`score_targets` ->
       :meth:`layer_gradients`) -> :meth:`layer_maps` (:meth:`reshape_activations`,
       :meth:`reshape_gradients`, the formula, :meth:`normalize_layer_map`) -> :meth:`fuse_layer_maps`.
       CAM extends :meth:`forward_pass` (it records the head's input in ``ForwardPass.extras``),
       ShapleyCAM :meth:`forward_pass` and :meth:`layer_gradients`, Smooth Grad-CAM++ and FullGrad
       :meth:`compute_maps`.
    3. A method built on another method holds an instance of it and calls its public API with
       :class:`CallOptions`: a target resolver (FinerCAM), a fusion of layer maps (RefineCAM), a callback
       for each scored pass's output and no constant-map warning (SESS). Nothing is injected into the
       inner object, and no state lives on either object between or during calls.
    """

    #: Whether the method needs the gradient of the score with respect to the activations.
    uses_gradients: bool = True
    #: Whether the method needs the outermost module calls that ran before the target layer.
    records_prefix: bool = False
    #: The default of ``batch_size``: an int, or None for one sized at each call to the device's free memory.
    default_batch_size: int | None = 32
    #: Whether the map depends on the targets (EigenCAM, KPCA-CAM, FEM and RandomCAM ignore them).
    class_specific: bool = True
    #: Whether two calls on the same input give the same map (RandomCAM without a seed does not).
    deterministic: bool = True
    #: Whether the method runs the model on many perturbed inputs, ``batch_size`` at a time.
    perturbation: bool = False
    #: Whether the formula assumes non-negative (post-ReLU) activations: at a layer with negative values the
    #: map can vanish or move (Score-CAM: ``relu(sum_k w_k A_k)`` with ``w > 0``); the automatic layer
    #: (``find_target_layer(..., method=...)``, the CLI's ``--target-layer auto``) then moves past the ReLU.
    needs_nonnegative_activations: bool = False
    #: Whether the map comes from ``target_layers``. FullGrad's does not: it uses every layer with a bias,
    #: so its ``target_layers`` may be left out (and are ignored when given).
    uses_target_layers: bool = True
    #: Whether ``layer_map`` is a principal component, whose sign is arbitrary (EigenCAM and its kin): its
    #: test-time augmented copies are oriented consistently (:meth:`smooth_over_augmentations`).
    principal_component: bool = False

    def __init__(
        self,
        model: nn.Module,
        target_layers: nn.Module | Sequence[nn.Module] | None = None,
        reshape_transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
        *,
        target_layer: nn.Module | None = None,
        use_cuda: bool | None = None,
        device: str | torch.device | None = None,
        tta_transforms: Any = None,
        batch_size: int | None = None,
    ) -> None:
        """Check and store the model, the target layers and the options; see the class docstring."""
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        if isinstance(reshape_transform, bool):
            # First-generation positional call: GradCAM(model, target_layer, use_cuda).
            if use_cuda is not None:
                raise TypeError("use_cuda given twice (positionally and by name)")
            reshape_transform, use_cuda = None, reshape_transform
        if reshape_transform is not None and not callable(reshape_transform):
            raise TypeError(f"reshape_transform must be callable, got {type(reshape_transform).__name__}")
        self.model = model
        if not self.uses_target_layers and target_layers is None and target_layer is None:
            self.target_layers: list[nn.Module] = []
        else:
            self.target_layers = check_layers(model, target_layers, target_layer)
        self.reshape_transform = reshape_transform
        self.device = check_device(use_cuda, device)
        self.tta_transforms = tta_transforms
        self.batch_size = self.default_batch_size if batch_size is None else batch_size

    @property
    def batch_size(self) -> int | None:
        """Perturbed inputs per forward pass (ScoreCAM, AblationCAM). Settable: ``cam.batch_size = 32``.

        None: sized at each call to the device's free memory (the perturbation methods' default); setting
        None restores the method's default.
        """
        return self._batch_size

    @batch_size.setter
    def batch_size(self, value: int | None) -> None:
        self._batch_size = self.default_batch_size if value is None else check_batch_size(value)

    def __enter__(self) -> BaseCAM:
        """The CAM itself: ``with GradCAM(...) as cam:`` is still accepted."""
        return self

    def __exit__(self, *exc_info: object) -> None:
        """Nothing to release (hooks only exist during a call); exceptions propagate."""
        # Hooks only exist during a call, so there is nothing to release; exceptions propagate.
        return None

    # -- tier 1: the formula ---------------------------------------------------------------------------
    def cam_weights(
        self, activations: torch.Tensor, gradients: torch.Tensor, context: LayerContext
    ) -> torch.Tensor:
        """Channel weights ``(B, C)`` (or position weights ``(B, C, *spatial)``), float32."""
        raise NotImplementedError(f"{type(self).__name__} must implement cam_weights or layer_map")

    def layer_map(
        self,
        activations: torch.Tensor,
        gradients: torch.Tensor,
        context: LayerContext,
        eigen_smooth: bool,
    ) -> torch.Tensor:
        """One target layer's map ``(B, *spatial)`` before ReLU.

        ``sum_k w_k A_k``, or the first principal component of ``w * A`` with ``eigen_smooth``.
        """
        weights = self.cam_weights(activations, gradients, context)
        weighted = broadcast_weights(weights, activations) * activations  # (B, C, *spatial)
        if eigen_smooth:
            return first_principal_component(weighted)
        return weighted.sum(1)

    # -- the public call -------------------------------------------------------------------------------
    def __call__(
        self,
        input_tensor: torch.Tensor,
        targets: TargetsArg = None,
        aug_smooth: bool = False,
        eigen_smooth: bool = False,
        *,
        target_category: Any = UNSET,
    ) -> np.ndarray:
        """Maps ``(B, *spatial)`` float32 in ``[0, 1]`` for a ``(B, C, *spatial)`` input.

        ``targets``: ``None`` (each image's top class), one class index or target for every image, or a
        list with one per image of class indices or callables (``ClassifierOutputTarget(k)``...).
        ``target_category`` is the first API's name for the same thing.
        """
        targets = first_api_targets(targets, target_category)
        return to_numpy(self.explain(input_tensor, targets, aug_smooth=aug_smooth, eigen_smooth=eigen_smooth))

    def forward(
        self, input_tensor: torch.Tensor, targets: TargetsArg = None, eigen_smooth: bool = False
    ) -> np.ndarray:
        """The call without augmentation smoothing (the reference library's ``forward``)."""
        return self(input_tensor, targets, eigen_smooth=eigen_smooth)

    @guarded
    def explain(
        self,
        input_tensor: torch.Tensor,
        targets: TargetsArg = None,
        *,
        aug_smooth: bool = False,
        eigen_smooth: bool = False,
        options: CallOptions = DEFAULT_OPTIONS,
    ) -> torch.Tensor:
        """The maps as a tensor: ``(B, *spatial)`` float32 in ``[0, 1]`` on the compute device.

        The input and the targets are checked first (before any forward pass); ``options`` changes steps
        of this one call (see :class:`CallOptions`).
        """
        x = check_input(input_tensor, self.model)
        target_list = normalize_targets(targets, x.shape[0])
        if aug_smooth:
            return self.smooth_over_augmentations(x, target_list, eigen_smooth, options)
        return self.compute_maps(x, target_list, eigen_smooth, options)

    # -- tier 2: the pipeline steps --------------------------------------------------------------------
    def compute_maps(
        self,
        input_tensor: torch.Tensor,
        targets: list[Target] | None,
        eigen_smooth: bool,
        options: CallOptions = DEFAULT_OPTIONS,
    ) -> torch.Tensor:
        """Step: one checked batch -> fused maps ``(B, *spatial)``, float32 in ``[0, 1]``.

        On the compute device. ``targets``: one per image, or ``None``.
        """
        with self.session(input_tensor) as x:  # (B, C, *spatial) on the model's device and dtype
            forward, resolved, scores, gradients = self.scored_pass(x, targets, options)
            maps = self.layer_maps(x, resolved, scores, forward, gradients, eigen_smooth, options)
            del forward, gradients
            with torch.no_grad():
                fused = self.fuse_layer_maps(maps, options)  # (B, *spatial)
                return min_max_normalize(fused)

    @contextlib.contextmanager
    def session(self, input_tensor: torch.Tensor) -> Iterator[torch.Tensor]:
        """Step: the model in eval mode on the compute device, and the input there.

        ``inference_mode(False)``: the call must also work inside the user's ``torch.inference_mode()``.
        The model is never given this tensor itself, only copies (:meth:`run_model`), so a model that
        modifies its input in place changes neither the user's tensor nor what later passes see.
        """
        with compute_session(self.model, self.device, input_tensor) as x:
            yield x

    def scored_pass(
        self, x: torch.Tensor, targets: list[Target] | None, options: CallOptions = DEFAULT_OPTIONS
    ) -> tuple[ForwardPass, list[Target], torch.Tensor, dict[int, Any]]:
        """Step: a scored forward pass of ``x`` (inside :meth:`session`).

        :meth:`forward_pass`, :meth:`resolve_targets`, :meth:`score_targets` and, for gradient methods,
        :meth:`layer_gradients`. Returns the pass, the targets, the scores ``(B,)`` and the gradients (empty
        for methods without).
        """
        forward = self.forward_pass(x, options)
        resolved = self.resolve_targets(targets, forward.output, x.shape[0], options)
        scores = self.score_targets(resolved, forward.output, x.shape[0], options)  # (B,)
        gradients = self.layer_gradients(scores, forward) if self.uses_gradients else {}
        return forward, resolved, scores, gradients

    def run_model(self, x: torch.Tensor) -> Any:
        """Step: the model's output on a copy of ``x`` (inside :meth:`session`)."""
        return self.model(x.clone())

    def forward_pass(self, x: torch.Tensor, options: CallOptions = DEFAULT_OPTIONS) -> ForwardPass:
        """Step: one forward pass with the target layers captured.

        Under ``no_grad`` until the first of them; a layer that did not run is a ValueError.
        """
        capture, output = self._capture(x)
        return ForwardPass(output, capture.activations, capture.prefix, cut_off=capture.cut_off)

    def _capture(self, x: torch.Tensor) -> tuple[LayerCapture, Any]:
        return capture_forward(
            self.model,
            self.target_layers,
            partial(self.run_model, x),
            grad=self.uses_gradients,
            record_prefix=self.records_prefix,
            structured=self.reshape_transform is not None,
        )

    def resolve_targets(
        self, targets: list[Target] | None, output: Any, batch: int, options: CallOptions = DEFAULT_OPTIONS
    ) -> list[Target]:
        """Step: the call's targets, one per image: as given, else each image's top class.

        A resolver in ``options`` replaces this.
        """
        if options.resolve_targets is not None:
            return options.resolve_targets(targets, output, batch)
        if targets is not None:
            return targets
        if not self.class_specific and not is_class_scores(output, batch):
            # The map ignores the targets: a model without class scores is explained all the same.
            return [IgnoredTarget()] * batch
        return top_class_targets(output, batch)

    def score_targets(
        self, targets: list[Target], output: Any, batch: int, options: CallOptions = DEFAULT_OPTIONS
    ) -> torch.Tensor:
        """Step: each image's target score, ``(B,)``, still attached to the graph when gradients are used.

        ``options.on_output`` first sees the output.
        """
        if options.on_output is not None:
            options.on_output(output.detach() if isinstance(output, torch.Tensor) else output)
        with torch.enable_grad() if self.uses_gradients else torch.no_grad():
            return target_scores(targets, output, batch)

    def raw_layer_gradients(
        self, scores: torch.Tensor, forward: ForwardPass, create_graph: bool = False
    ) -> tuple[list[list], list[list]]:
        """For each target layer: its captured tensors that require grad, and the scores' gradients.

        The tensors: one, or several for a layer returning a structure such as an FPN's dict of levels;
        the gradients: of the summed scores with respect to each (None where the score does not use it).
        Refuses a layer that gets none.
        """
        layers = self.target_layers
        if not scores.requires_grad:
            self._refuse_cut_off(layers, forward)
            raise ValueError(
                "the target scores do not depend on the target layers' activations (no "
                "gradient reaches them): the target must return a value computed from the "
                "model output, and the layers must come before the output"
            )
        per_layer = [
            [t for t in tensors_of(forward.activations[id(layer)]) if t.requires_grad] for layer in layers
        ]
        inputs = [t for tensors in per_layer for t in tensors]
        # Only the graph from the target layers to the score is differentiated; parameters' .grad
        # are neither read nor written.
        with reentrant_checkpoint_errors("between the target layers and the score"):
            flat = iter(
                torch.autograd.grad(scores.sum(), inputs, allow_unused=True, create_graph=create_graph)
            )
        grads_per_layer = [[next(flat) for _ in tensors] for tensors in per_layer]
        unused = [layer for layer, grads in zip(layers, grads_per_layer) if all(g is None for g in grads)]
        if unused:
            self._refuse_cut_off(unused, forward)
            raise ValueError(
                f"no gradient reaches target layer(s) {[layer_name(self.model, layer) for layer in unused]}: "
                "the score does not depend on them; choose layers on the path to the output"
            )
        return per_layer, grads_per_layer

    def _refuse_cut_off(self, layers: list[nn.Module], forward: ForwardPass) -> None:
        """A ValueError naming the cause if one of ``layers`` (no gradient reaches them) was cut off."""
        cut_off = [
            layer_name(self.model, layer) for layer in layers if any(layer is cut for cut in forward.cut_off)
        ]
        if cut_off:
            raise ValueError(autograd_switched_off(cut_off))

    def layer_gradients(self, scores: torch.Tensor, forward: ForwardPass) -> dict[int, Any]:
        """Step: each target layer's gradient, keyed by ``id(layer)``, in the layout of its activations.

        Zeros for a tensor of its structure that the score does not use; warns about images whose
        gradient is zero everywhere.
        """
        per_layer, grads_per_layer = self.raw_layer_gradients(scores, forward)
        grads = {}
        for layer, tensors, layer_grads in zip(self.target_layers, per_layer, grads_per_layer):
            by_tensor = {id(t): g for t, g in zip(tensors, layer_grads)}
            grads[id(layer)] = map_tensors(
                partial(gradient_or_zeros, by_tensor), forward.activations[id(layer)]
            )
        warn_if_zero_gradients(grads, scores.shape[0], forward.output)
        return grads

    def layer_maps(
        self,
        x: torch.Tensor,
        targets: list[Target],
        scores: torch.Tensor,
        forward: ForwardPass,
        gradients: dict[int, Any],
        eigen_smooth: bool,
        options: CallOptions = DEFAULT_OPTIONS,
    ) -> list[torch.Tensor]:
        """Step: each target layer's map, ready for :meth:`fuse_layer_maps`, one per layer.

        ``(B, *spatial)`` at the input's size, in ``[0, 1]`` (``relu(layer_map)``, min-max normalised,
        resized).

        ``x``: the input ``(B, C, *spatial)``; ``scores``: ``(B,)`` the targets' scores on it;
        ``forward``: the pass whose activations (and prefix, extras) are explained; ``gradients``: keyed by
        ``id(layer)``, in the layout of the activations (no entry: the method uses none).
        """
        spatial = x.shape[2:]
        maps = []
        for layer in self.target_layers:
            key = id(layer)
            raw = map_tensors(torch.Tensor.detach, forward.activations[key])
            context = LayerContext(
                model=self.model,
                layer=layer,
                input=x,
                targets=targets,
                scores=scores.detach().float(),
                raw_activations=raw,
                prefix=forward.prefix.get(key),
                batch_size=self.batch_size,
                channel_dim=1 if self.reshape_transform is None else -1,
                extras=forward.extras,
            )
            layer_activations = self.reshape_activations(raw, layer)  # (B, C, *grid)
            check_layer_layout(layer_activations, x, layer_name(self.model, layer), self.reshape_transform)
            # None for a method without gradients (uses_gradients = False): its formula takes an Optional.
            grads = cast(
                torch.Tensor, self.reshape_gradients(gradients[key], layer) if key in gradients else None
            )
            with torch.no_grad():
                layer_cam = self.layer_map(layer_activations, grads, context, eigen_smooth).float()
                if options.orient is not None and (eigen_smooth or self.principal_component):
                    layer_cam = options.orient(layer_cam)  # (B, *grid), signs consistent across copies
                normalized = self.normalize_layer_map(layer_cam.relu(), layer, options)
                maps.append(resize_maps(normalized, spatial))
        return maps

    def reshape_activations(self, activations: Any, layer: nn.Module) -> torch.Tensor:
        """Step: a layer's output as float32 ``(B, C, *grid)`` (through ``reshape_transform``)."""
        return reshape_layer_output(self.model, layer, self.reshape_transform, activations)

    def reshape_gradients(self, gradients: Any, layer: nn.Module) -> torch.Tensor:
        """Step: a layer's gradient in the layout :meth:`layer_map` gets (by default the activations')."""
        return self.reshape_activations(gradients, layer)

    def normalize_layer_map(
        self, maps: torch.Tensor, layer: nn.Module, options: CallOptions = DEFAULT_OPTIONS
    ) -> torch.Tensor:
        """Step: one layer's ``(B, *grid)`` map min-max normalised, warning where it is constant."""
        if options.warn_constant:
            warn_if_constant(maps, f"the CAM of layer '{layer_name(self.model, layer)}'")
        return min_max_normalize(maps)

    def fuse_layer_maps(
        self, maps: list[torch.Tensor], options: CallOptions = DEFAULT_OPTIONS
    ) -> torch.Tensor:
        """Step: the target layers' maps made into one ``(B, *spatial)`` map.

        Each is ``(B, *spatial)`` in ``[0, 1]`` at the input's size; the result (min-max normalised
        afterwards) is their mean, or ``options.fuse``.
        """
        if options.fuse is not None:
            return options.fuse(maps)
        return torch.stack(maps, 1).relu().mean(1)  # (B, *spatial)

    def smooth_over_augmentations(
        self,
        x: torch.Tensor,
        targets: list[Target] | None,
        eigen_smooth: bool,
        options: CallOptions = DEFAULT_OPTIONS,
    ) -> torch.Tensor:
        """Step: test-time augmentation: every augmented copy in one batch, each map de-augmented, averaged.

        The targets are resolved on the unaugmented image (each image's top class, or the
        resolver's targets), so every copy explains the same thing. A principal component's sign is
        arbitrary, and the rule that fixes it for one image rests on a correlation that may be near zero;
        so each copy's component is oriented, after de-augmenting it, to correlate positively with the first
        copy's (:func:`orient_augmented_copies`), and the average never cancels.
        """
        transforms = self.tta_transforms
        if transforms is None:
            if x.ndim != 4:
                raise ValueError(
                    "aug_smooth's default augmentations are for 2D images (B, C, H, W); pass "
                    "tta_transforms for other inputs"
                )
            import ttach as tta

            transforms = tta.Compose([tta.HorizontalFlip(), tta.Multiply(factors=[0.9, 1, 1.1])])
        transforms = list(transforms)
        batch = x.shape[0]
        if targets is None or options.resolve_targets is not None:
            with self.session(x) as x_on_device, torch.no_grad():
                output = self.run_model(x_on_device)
            targets = self.resolve_targets(targets, output, batch, options)
        augmented = torch.cat([t.augment_image(x) for t in transforms])  # (T*B, C, *spatial)
        orient = partial(orient_augmented_copies, transforms=transforms, batch=batch)
        options = dataclasses.replace(options, orient=orient)
        maps = self.compute_maps(augmented, targets * len(transforms), eigen_smooth, options)  # (T*B, ...)
        maps = maps.view(len(transforms), batch, *maps.shape[1:])
        restored = [t.deaugment_mask(m.unsqueeze(1))[:, 0] for t, m in zip(transforms, maps)]
        return torch.stack(restored).mean(0)

    def prepare_targets(
        self, input_tensor: torch.Tensor, targets: list[Target] | None, options: CallOptions = DEFAULT_OPTIONS
    ) -> list[Target]:
        """Step: the targets resolved on one forward pass of the (checked) batch, and scored.

        For gradient methods also differentiated, so that every error of a call comes before its
        expensive work; no map is made. SESS calls it on the whole input before running the method on its
        patches.
        """
        with self.session(input_tensor) as x:
            return self.scored_pass(x, targets, options)[1]
