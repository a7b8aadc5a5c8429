"""Methods built on other methods: FinerCAM, RefineCAM and SESS.

Each takes a ``base_method`` (a :class:`BaseCAM` subclass or its registry name) and changes one step of
it: FinerCAM the target, RefineCAM the fusion of the target layers, SESS the input (multi-scale sliding
windows). They are :class:`BaseCAM` objects themselves (same call, same ``aug_smooth``, same guarantees on
the user's model), computing through an instance of the base method, ``cam.base_cam``.

FinerCAM and RefineCAM need no extra pass: the base method is used through a small subclass of it
(made once per base class) whose target resolution (FinerCAM) or layer fusion (RefineCAM) is replaced,
so the model runs once forward and once backward, as for the base method alone.
"""
from __future__ import annotations

import functools
import itertools
from typing import Any, Callable, Iterator, List, Optional, Sequence, Tuple, Type, Union

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ._checks import check_float, check_int
from .base_cam import (
    _INTERPOLATION,
    _MISSING,
    BaseCAM,
    Target,
    min_max_normalize,
    select_output,
    warn_if_constant,
)
from .gradient import GradCAM, GradCAMPlusPlus
from .utils.model_targets import ClassifierOutputTarget, FinerWeightedTarget

BaseMethod = Union[str, Type[BaseCAM]]

#: The capability attributes a composite takes over from its base method.
_CAPABILITIES = ("uses_gradients", "records_prefix", "class_specific", "deterministic", "uses_target_layers")


def _base_class(base_method: BaseMethod) -> Type[BaseCAM]:
    if isinstance(base_method, str):
        from .registry import get_method  # the registry imports this module

        base_method = get_method(base_method)
    if not (isinstance(base_method, type) and issubclass(base_method, BaseCAM)):
        raise TypeError(f"base_method must be a CAM class (e.g. GradCAM) or its registry name (e.g. "
                        f"'gradcam'), got {base_method!r}")
    if issubclass(base_method, _Composite):
        raise TypeError(f"base_method must be a plain CAM method, not the composite {base_method.__name__}")
    return base_method


class _Composite(BaseCAM):
    """A method computed through an instance of a base method (``self.base_cam``).

    The composite validates the common arguments itself (``BaseCAM.__init__``), then builds the base
    method on the same model, layers, transform and device; extra keyword arguments go to the base
    method (e.g. ``seed`` for RandomCAM). Subclasses set ``_variant`` (a function of the base class giving
    the class actually instantiated) and override ``_compute``.
    """

    default_base: Type[BaseCAM] = GradCAM
    #: Whether the map explains the target's own score on the input as given. False for FinerCAM (it
    #: explains a rewritten target mixing every class's logit) and SESS (scores of rescaled patches);
    #: generic tests that derive a map from the target's score by hand skip such methods.
    explains_given_score: bool = True
    #: Whether half precision gives the float32 map up to rounding. False for SESS: its fusion counts,
    #: at each position, the patch maps above ``theta``, and rounding moves values across it.
    low_precision_stable: bool = True
    #: Whether the composite's ``batch_size`` is the base method's (False: the composite's own, SESS).
    _shares_batch_size = True

    def __init__(self, model: nn.Module, target_layers: Any = None, reshape_transform: Any = None,
                 base_method: Optional[BaseMethod] = None, *, target_layer: Optional[nn.Module] = None,
                 use_cuda: Optional[bool] = None, device: Any = None, tta_transforms: Any = None,
                 batch_size: Optional[int] = None, **base_kwargs: Any) -> None:
        base_cls = _base_class(self.default_base if base_method is None else base_method)
        own_batch = None if self._shares_batch_size else batch_size
        super().__init__(model, target_layers, reshape_transform, target_layer=target_layer,
                         use_cuda=use_cuda, device=device, tta_transforms=tta_transforms,
                         batch_size=own_batch)
        if self._shares_batch_size and batch_size is not None:
            base_kwargs["batch_size"] = batch_size
        self.base_method = base_cls
        self._base_kwargs = dict(base_kwargs, tta_transforms=tta_transforms)
        self.base_cam = self._variant(base_cls)(model, self.target_layers, self.reshape_transform,
                                                device=self.device, tta_transforms=tta_transforms,
                                                **base_kwargs)
        for attribute in _CAPABILITIES:
            setattr(self, attribute, getattr(base_cls, attribute))
        if self._shares_batch_size:
            self.perturbation = base_cls.perturbation

    @staticmethod
    def _variant(base_cls: Type[BaseCAM]) -> Type[BaseCAM]:
        return base_cls

    @property
    def batch_size(self) -> int:
        """Perturbed inputs per forward pass: the base method's (FinerCAM, RefineCAM) or patches (SESS)."""
        if self._shares_batch_size and "base_cam" in self.__dict__:
            return self.base_cam.batch_size
        return self._batch_size

    @batch_size.setter
    def batch_size(self, value: int) -> None:
        BaseCAM.batch_size.fset(self, value)  # validates
        if self._shares_batch_size and "base_cam" in self.__dict__:
            self.base_cam.batch_size = value

    def __call__(self, input_tensor: torch.Tensor, targets: Any = None, eigen_smooth: bool = False, *,
                 aug_smooth: bool = False, target_category: Any = _MISSING) -> np.ndarray:
        """Maps ``(B, *spatial)`` float32 in ``[0, 1]``. The reference library's argument order:
        ``(input_tensor, targets, eigen_smooth)``; ``aug_smooth`` is keyword-only."""
        self._check_call_order(aug_smooth, eigen_smooth)
        return super().__call__(input_tensor, targets, aug_smooth, eigen_smooth,
                                target_category=target_category)

    def forward(self, input_tensor: torch.Tensor, targets: Any = None,
                eigen_smooth: bool = False) -> np.ndarray:
        """The reference library's ``forward``: the call without augmentation smoothing."""
        return self(input_tensor, targets, eigen_smooth)

    def _check_call_order(self, aug_smooth: Any, eigen_smooth: Any) -> None:
        for name, value in (("aug_smooth", aug_smooth), ("eigen_smooth", eigen_smooth)):
            if not isinstance(value, (bool, np.bool_)):
                raise TypeError(f"{name} must be a bool, got {type(value).__name__} (note: the reference "
                                f"library's {type(self).__name__} call is (input_tensor, targets, "
                                "eigen_smooth, ...); aug_smooth is keyword-only here)")


# ============================================================================================ FinerCAM
@functools.lru_cache(maxsize=None)
def _finer_variant(base_cls: Type[BaseCAM]) -> Type[BaseCAM]:
    class Finer(base_cls):  # type: ignore[misc, valid-type]
        """``base_cls`` whose targets are made into FinerCAM targets on the forward pass's output."""

        _finer_resolver: Optional[Callable] = None

        def _resolve_targets(self, targets, output, batch):
            if self._finer_resolver is None:  # used on its own: the base method's behaviour
                return super()._resolve_targets(targets, output, batch)
            return self._finer_resolver(targets, output, batch)

    Finer.__name__ = Finer.__qualname__ = f"Finer{base_cls.__name__}"
    return Finer


def _check_rank_list(value: Any, name: str) -> List[int]:
    try:
        items = list(value)
    except TypeError:
        raise TypeError(f"{name} must be a sequence of ints, got {type(value).__name__}") from None
    return [check_int(item, f"{name}[{i}]") for i, item in enumerate(items)]


class FinerCAM(_Composite):
    """FinerCAM (Zhang et al., arXiv:2501.11309): the main class against the classes it is confused with.

    The target becomes :class:`~pytorch_grad_cam.utils.model_targets.FinerWeightedTarget`:
    ``score = sum_j p_j (y_main - alpha * y_j) / sum_j p_j`` over comparison classes ``j``, with ``y`` the
    logits and ``p = softmax(y)``; the base method (default Grad-CAM) explains that score, so the map
    shows what separates the main class from its look-alikes. By default the comparison classes are the
    ``num_comparisons`` classes whose logits are closest to the main class's, ``|y_j - y_main|``
    smallest (ranks 1, 2, 3 of that order; rank 0 is the main class itself), picked from the same
    forward pass the base method uses: one forward and one backward pass in all.

    The main class of each image: its ``ClassifierOutputTarget``/class index in ``targets``, else
    ``target_idx`` (one class for every image), else its top class. A ``FinerWeightedTarget`` in
    ``targets`` is used as given, and so is any other callable target (its main class is unknown), which
    the base method then explains unchanged. Unlike grad-cam 1.5.7, where given targets are always used
    unchanged, ``targets=[281]`` here explains class 281 against its similar classes.

    Args:
        model, target_layers, reshape_transform: as for every method.
        base_method: the CAM method to run (class or registry name), default Grad-CAM.
        alpha: the default strength of the comparison (``alpha=0`` is the base method on the logit).
        num_comparisons: the default number of comparison classes (ranks ``1..num_comparisons``).
        **kwargs: ``device``, ``batch_size``..., and the base method's own arguments.

    Call ``cam(input_tensor, targets=None, eigen_smooth=False, alpha=None, comparison_categories=None,
    target_idx=None, *, comparison_classes=None, aug_smooth=False)`` (the reference's argument order):
    ``comparison_categories`` are ranks in the similarity order (the reference's meaning), e.g. ``[1, 2]``
    the two most similar classes; ``comparison_classes`` are class indices, one list for every image or a
    list of lists, one per image. Returns ``(B, *spatial)`` float32 maps in ``[0, 1]``.

    Example:
        >>> cam = FinerCAM(model, [model.layer4[-1]])
        >>> maps = cam(x, targets=[281], alpha=0.6)  # tabby cat vs the cats it is confused with
    """

    name = "finercam"
    default_base = GradCAM
    explains_given_score = False

    def __init__(self, model: nn.Module, target_layers: Any = None, reshape_transform: Any = None,
                 base_method: BaseMethod = GradCAM, *, alpha: float = 1.0, num_comparisons: int = 3,
                 **kwargs: Any) -> None:
        self.alpha = self._check_alpha(alpha)
        self.num_comparisons = check_int(num_comparisons, "num_comparisons", 1)
        super().__init__(model, target_layers, reshape_transform, base_method, **kwargs)
        self.base_cam._finer_resolver = self._resolve_targets
        self._options: Optional[dict] = None

    _variant = staticmethod(_finer_variant)

    @staticmethod
    def _check_alpha(alpha: Any) -> float:
        return check_float(alpha, "alpha")

    def __call__(self, input_tensor: torch.Tensor, targets: Any = None, eigen_smooth: bool = False,
                 alpha: Optional[float] = None, comparison_categories: Optional[Sequence[int]] = None,
                 target_idx: Optional[int] = None, *, comparison_classes: Any = None,
                 aug_smooth: bool = False, target_category: Any = _MISSING) -> np.ndarray:
        self._check_call_order(aug_smooth, eigen_smooth)
        options = self._check_options(input_tensor, alpha, comparison_categories, target_idx,
                                      comparison_classes)
        if target_idx is not None and (targets is not None or target_category is not _MISSING):
            raise TypeError("pass targets or target_idx (one main class for every image), not both")
        self._options = options
        try:
            return BaseCAM.__call__(self, input_tensor, targets, aug_smooth, eigen_smooth,
                                    target_category=target_category)
        finally:
            self._options = None

    def forward(self, input_tensor: torch.Tensor, targets: Any = None, eigen_smooth: bool = False,
                alpha: Optional[float] = None, comparison_categories: Optional[Sequence[int]] = None,
                target_idx: Optional[int] = None, **kwargs: Any) -> np.ndarray:
        """The reference library's ``forward``: the call without augmentation smoothing."""
        return self(input_tensor, targets, eigen_smooth, alpha, comparison_categories, target_idx, **kwargs)

    def _check_options(self, input_tensor, alpha, comparison_categories, target_idx,
                       comparison_classes) -> dict:
        alpha = self.alpha if alpha is None else self._check_alpha(alpha)
        if comparison_categories is not None and comparison_classes is not None:
            raise TypeError("pass comparison_categories (ranks by similarity) or comparison_classes (class "
                            "indices), not both")
        if comparison_categories is None:
            ranks = list(range(1, self.num_comparisons + 1))
        else:
            ranks = _check_rank_list(comparison_categories, "comparison_categories")
            if not ranks or min(ranks) < 1:
                raise ValueError(f"comparison_categories must be ranks >= 1 in the order of similarity to "
                                 f"the main class (rank 0 is the main class itself), got {ranks}")
        if target_idx is not None:
            target_idx = check_int(target_idx, "target_idx", 0)
        per_image = None
        if comparison_classes is not None:
            try:
                items = list(comparison_classes)
            except TypeError:
                raise TypeError(f"comparison_classes must be a list of class indices, or a list of such "
                                f"lists (one per image), got {type(comparison_classes).__name__}") from None
            nested = bool(items) and all(not isinstance(c, (int, np.integer)) for c in items)
            batch = input_tensor.shape[0] if isinstance(input_tensor, torch.Tensor) else None
            if nested:
                if batch is not None and len(items) != batch:
                    raise ValueError(f"comparison_classes has {len(items)} lists but the batch has {batch} "
                                     "images; give one list per image, or one list for all")
                per_image = [_check_rank_list(c, f"comparison_classes[{i}]") for i, c in enumerate(items)]
            else:
                per_image = [_check_rank_list(items, "comparison_classes")] * (batch or 1)
            for i, classes in enumerate(per_image):
                if not classes or min(classes) < 0:
                    raise ValueError(f"comparison_classes (image {i}) must be a non-empty list of class "
                                     f"indices >= 0, got {classes}")
        return {"alpha": alpha, "ranks": ranks, "target_idx": target_idx, "classes": per_image}

    def _resolve_targets(self, targets: Optional[List[Target]], output: Any, batch: int) -> List[Target]:
        """The FinerCAM target of each image, from the logits of the forward pass (no extra pass)."""
        options = self._options or self._check_options(None, None, None, None, None)
        convert = [targets is None or isinstance(targets[i], ClassifierOutputTarget) for i in range(batch)]
        if not any(convert):
            return targets
        if not isinstance(output, torch.Tensor) or output.ndim != 2 or output.shape[0] != batch:
            shape = tuple(output.shape) if isinstance(output, torch.Tensor) else type(output).__name__
            raise ValueError(f"FinerCAM compares class logits and needs a (B, num_classes) model output; "
                             f"this model returns {shape}: pass FinerWeightedTarget targets yourself")
        logits = output.detach().float()  # (B, K)
        num_classes = logits.shape[1]
        resolved = []
        for i in range(batch):
            if not convert[i]:
                resolved.append(targets[i])
                continue
            if targets is not None:
                main = targets[i].category
                where = f"targets[{i}]"
            elif options["target_idx"] is not None:
                main, where = options["target_idx"], "target_idx"
            else:
                main, where = int(logits[i].argmax()), "top class"
            if main >= num_classes:
                raise ValueError(f"{where}: category {main} is out of range for a model output with "
                                 f"{num_classes} classes (valid: 0..{num_classes - 1})")
            if options["classes"] is not None:
                comparison = options["classes"][i]
                bad = [c for c in comparison if c >= num_classes]
                if bad:
                    raise ValueError(f"comparison_classes: category {bad[0]} is out of range for a model "
                                     f"output with {num_classes} classes")
            else:
                distance = (logits[i] - logits[i, main]).abs()  # (K,)
                distance[main] = -1.0  # rank 0 is the main class itself, even with ties
                order = torch.sort(distance, stable=True).indices.tolist()
                comparison = [order[r] for r in options["ranks"] if r < num_classes]
                if not comparison:
                    raise ValueError(f"FinerCAM needs a class to compare with: the model has {num_classes} "
                                     f"class(es) and the comparison ranks are {options['ranks']}")
            resolved.append(FinerWeightedTarget(main, comparison, options["alpha"]))
        return resolved

    def _compute(self, input_tensor: torch.Tensor, targets: Optional[List[Target]],
                 eigen_smooth: bool) -> torch.Tensor:
        return self.base_cam._compute(input_tensor, targets, eigen_smooth)

    def _augmentation_smoothing(self, x: torch.Tensor, targets: Optional[List[Target]],
                                eigen_smooth: bool) -> torch.Tensor:
        # The comparison classes come from the unaugmented image and are the same in every copy.
        if targets is None or any(isinstance(t, ClassifierOutputTarget) for t in targets):
            with self._session(x) as x_on_device, torch.no_grad():
                output = self._run_model(x_on_device)
            targets = self._resolve_targets(targets, output, x.shape[0])
        return super()._augmentation_smoothing(x, targets, eigen_smooth)


# ============================================================================================ RefineCAM
def _overrides_compute(base_cls: Type[BaseCAM]) -> bool:
    return base_cls._compute is not BaseCAM._compute


@functools.lru_cache(maxsize=None)
def _refine_variant(base_cls: Type[BaseCAM]) -> Type[BaseCAM]:
    if _overrides_compute(base_cls):
        return base_cls  # RefineCAM then runs one instance per layer (see RefineCAM._compute)

    class Refined(base_cls):  # type: ignore[misc, valid-type]
        """``base_cls`` whose layer maps are multiplied instead of averaged."""

        def _fuse(self, maps):
            # Each layer's map exactly as the base method alone would give it (normalised, resized,
            # normalised again), then their product; the engine min-max normalises the result.
            product = None
            for layer_map in maps:
                layer_map = min_max_normalize(layer_map)  # (B, *spatial)
                product = layer_map if product is None else product * layer_map
            return product

    Refined.__name__ = Refined.__qualname__ = f"Refined{base_cls.__name__}"
    return Refined


class RefineCAM(_Composite):
    """RefineCAM: the product of the base method's maps of several layers.

    ``cam = norm(prod_l norm(cam_l))`` with ``cam_l`` the base method's (default Grad-CAM++) map of
    target layer ``l``, resized to the input, and ``norm`` the per-image min-max normalisation to
    ``[0, 1]``: a position stays hot only where every layer agrees, which removes the noise of early
    layers while keeping their resolution. (The reference, grad-cam 1.5.7, intends the same per-layer
    normalisation but its loop does not store the result; its maps are already in [0, 1], so the
    formula is the same.)

    All layers come from one forward and one backward pass (as the base method's average would); a
    base method that overrides the engine's ``_compute`` is run once per layer instead.

    Args:
        model, target_layers, reshape_transform: as for every method; order of layers is irrelevant.
        base_method: the CAM method per layer (class or registry name), default Grad-CAM++.
        **kwargs: ``device``, ``batch_size``..., and the base method's own arguments.

    Call ``cam(input_tensor, targets=None, eigen_smooth=False, *, aug_smooth=False)``; returns
    ``(B, *spatial)`` float32 maps in ``[0, 1]``.

    Example:
        >>> cam = RefineCAM(model, [model.layer2[-1], model.layer3[-1], model.layer4[-1]])
        >>> maps = cam(x, targets=[281])  # (B, H, W)
    """

    name = "refinecam"
    default_base = GradCAMPlusPlus

    def __init__(self, model: nn.Module, target_layers: Any = None, reshape_transform: Any = None,
                 base_method: BaseMethod = GradCAMPlusPlus, **kwargs: Any) -> None:
        super().__init__(model, target_layers, reshape_transform, base_method, **kwargs)
        if _overrides_compute(self.base_method):
            self._per_layer = [self.base_method(model, [layer], self.reshape_transform, device=self.device,
                                                **self._base_kwargs) for layer in self.target_layers]

    _variant = staticmethod(_refine_variant)

    def _compute(self, input_tensor: torch.Tensor, targets: Optional[List[Target]],
                 eigen_smooth: bool) -> torch.Tensor:
        if not _overrides_compute(self.base_method):
            return self.base_cam._compute(input_tensor, targets, eigen_smooth)
        product = None
        for cam in self._per_layer:
            layer_map = cam._compute(input_tensor, targets, eigen_smooth)  # (B, *spatial) in [0, 1]
            product = layer_map if product is None else product * layer_map
        return min_max_normalize(product)


# ============================================================================================ SESS
@functools.lru_cache(maxsize=None)
def _quiet_variant(base_cls: Type[BaseCAM]) -> Type[BaseCAM]:
    class Quiet(base_cls):  # type: ignore[misc, valid-type]
        """``base_cls`` without the constant-map warning (a background patch's map is often constant),
        keeping the output of the first forward pass on each patch batch for SESS's patch scores."""

        _sess_output: Any = None

        def _normalize(self, maps, layer):
            return min_max_normalize(maps)

        def _scores(self, targets, output, batch):
            # SESS weighs each patch by its score on the patch itself: the output of the first scored pass
            # since SESS reset _sess_output to None. A method scoring more passes (Smooth Grad-CAM++: the
            # clean patches, then their noisy copies) must not replace it.
            if self._sess_output is None:
                self._sess_output = output.detach() if isinstance(output, torch.Tensor) else output
            return super()._scores(targets, output, batch)

    Quiet.__name__ = Quiet.__qualname__ = f"Quiet{base_cls.__name__}"
    return Quiet


def _window_starts(length: int, window: int, step: int) -> List[int]:
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


def _interpolation_matrix(length: int, size: int, device: torch.device) -> torch.Tensor:
    """``(length, size)``: row ``j`` is where a unit at ``j`` goes when a ``length`` axis is resized to
    ``size`` (linear, half-pixel centres), so resizing is ``M.T @ values``, separably per axis."""
    eye = torch.eye(length, device=device)[None]  # (1, length, length): one impulse per channel
    return F.interpolate(eye, size=size, mode="linear", align_corners=False)[0]  # (length, size)


def _gaussian_blur(maps: torch.Tensor, kernel_size: int, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur of ``(B, *spatial)`` maps, mirrored borders (cv2's BORDER_REFLECT_101)."""
    for axis in range(1, maps.ndim):
        length = maps.shape[axis]
        radius = min(kernel_size // 2, length - 1)  # a mirror needs radius < length
        if radius == 0:
            continue
        offsets = torch.arange(-radius, radius + 1, device=maps.device, dtype=maps.dtype)
        kernel = torch.exp(-offsets ** 2 / (2 * sigma ** 2))
        kernel = kernel / kernel.sum()
        moved = maps.movedim(axis, -1)
        flat = moved.reshape(-1, 1, length)  # (N, 1, L)
        blurred = F.conv1d(F.pad(flat, (radius, radius), mode="reflect"), kernel.view(1, 1, -1))
        maps = blurred.view(moved.shape).movedim(-1, axis)
    return maps


class SESS(_Composite):
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
    explains_given_score = False
    low_precision_stable = False
    _shares_batch_size = False

    def __init__(self, model: nn.Module, target_layers: Any = None, reshape_transform: Any = None,
                 base_method: BaseMethod = GradCAM, scales: Optional[Sequence[int]] = None,
                 num_scales: int = 12, scale_step_ratio: float = 2.0 / 7.0, window_size: Optional[int] = None,
                 step_size: Optional[int] = None, pre_filter_ratio: float = 0.0, theta: float = 0.0,
                 pool: str = "mean", smooth: bool = True, use_softmax_scores: bool = True,
                 batch_size: int = 32, *, smooth_kernel_size: int = 11, smooth_sigma: float = 5.0,
                 **kwargs: Any) -> None:
        if pool not in ("mean", "max"):
            raise ValueError(f"pool must be 'mean' (spatial weighted average) or 'max', got {pool!r}")
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
            scales = _check_rank_list(scales, "scales")
            if not scales or min(scales) < 1:
                raise ValueError(f"scales must be a non-empty list of positive ints, got {scales}")
        super().__init__(model, target_layers, reshape_transform, base_method, batch_size=batch_size,
                         **kwargs)
        self.scales = scales
        self.num_scales = num_scales
        self.scale_step_ratio = scale_step_ratio
        self.window_size = window_size
        self.step_size = step_size
        self.pre_filter_ratio = pre_filter_ratio
        self.theta = theta
        self.pool = pool
        self.smooth = bool(smooth)
        self.use_softmax_scores = bool(use_softmax_scores)
        self.smooth_kernel_size = smooth_kernel_size
        self.smooth_sigma = smooth_sigma

    _variant = staticmethod(_quiet_variant)

    # -- geometry ------------------------------------------------------------------------------
    def geometry(self, spatial: Sequence[int]) -> Tuple[int, int, List[Tuple[int, ...]]]:
        """``(window, step, scaled sizes)`` for an input of spatial size ``spatial``: each scaled size
        has its shorter side at a scale, the others in proportion (``int(scale * L / shorter)``)."""
        shorter = min(spatial)
        window = shorter if self.window_size is None else self.window_size
        if window > shorter:
            raise ValueError(f"window_size {window} is larger than the input's shorter side {shorter} "
                             f"(spatial size {tuple(spatial)})")
        step = window if self.step_size is None else self.step_size
        if self.scales is None:
            increment = int(round(window * self.scale_step_ratio))
            scales = [window + increment * i for i in range(self.num_scales)]
        else:
            scales = self.scales
            if min(scales) < window:
                raise ValueError(f"every scale must be at least the window size {window}, got {scales}")
        sizes = [tuple(int(scale * length / shorter) for length in spatial) for scale in scales]
        return window, step, sizes

    @staticmethod
    def _windows(size: Sequence[int], window: int, step: int) -> List[Tuple[int, ...]]:
        return list(itertools.product(*(_window_starts(length, window, step) for length in size)))

    def _patches(self, x: torch.Tensor, sizes, window: int, step: int,
                 keep: Optional[set] = None) -> Iterator[Tuple[int, int, int, Tuple[int, ...], torch.Tensor]]:
        """``(patch id, image, scale index, starts, patch (C, *window))`` scale by scale; one scaled
        input exists at a time. ``keep``: only these patch ids."""
        mode = _INTERPOLATION[x.ndim - 2]
        work = x.to(torch.promote_types(x.dtype, torch.float32))  # resized in at least float32
        pid = 0
        for scale_index, size in enumerate(sizes):
            windows = self._windows(size, window, step)
            if keep is not None and not any(pid + k in keep for k in range(len(windows) * x.shape[0])):
                pid += len(windows) * x.shape[0]
                continue
            # A scale below the shorter side shrinks the input: antialiased in 2D, as torchvision's
            # resize (F.interpolate has no antialiased linear/trilinear mode for 1D/3D).
            shrink = x.ndim == 4 and size[0] < x.shape[2]
            scaled = F.interpolate(work, size=size, mode=mode, align_corners=False,
                                   antialias=shrink)  # (B, C, *size)
            for image in range(x.shape[0]):
                for starts in windows:
                    if keep is None or pid in keep:
                        index = (image, slice(None), *(slice(s, s + window) for s in starts))
                        yield pid, image, scale_index, starts, scaled[index]
                    pid += 1
            del scaled

    @staticmethod
    def _batches(patches: Iterator, size: int) -> Iterator[list]:
        batch = []
        for item in patches:
            batch.append(item)
            if len(batch) == size:
                yield batch
                batch = []
        if batch:
            yield batch

    # -- the computation -------------------------------------------------------------------------
    def _patch_scores(self, output: Any, targets: List[Target], images: List[int]) -> torch.Tensor:
        """``(n,)`` each patch's score under its image's target, on softmax(output) by default."""
        count = len(images)
        if self.use_softmax_scores:
            if not isinstance(output, torch.Tensor) or output.ndim != 2:
                raise ValueError("SESS weights patches by the softmax of a (B, num_classes) output; this "
                                 "model returns something else: pass use_softmax_scores=False")
            output = output.float().softmax(-1)
        scores = []
        for j, image in enumerate(images):
            target = targets[image]
            if type(target) is ClassifierOutputTarget and isinstance(output, torch.Tensor) \
                    and output.ndim == 2:
                scores.append(output[j, target.category].float())
            else:
                scores.append(torch.as_tensor(target(select_output(output, j, count))).reshape(()).float())
        return torch.stack(scores)

    def _compute(self, input_tensor: torch.Tensor, targets: Optional[List[Target]],
                 eigen_smooth: bool) -> torch.Tensor:
        base = self.base_cam
        batch = input_tensor.shape[0]
        window, step, sizes = self.geometry(input_tensor.shape[2:])
        base._sess_output = None  # also after a call that raised half-way
        with base._session(input_tensor) as x:  # (B, C, *spatial) on the model's device and dtype
            # The whole input first: targets, layers and gradients are checked before any patch is run.
            capture, output = base._forward(x)
            targets = base._resolve_targets(targets, output, batch)
            scores = base._scores(targets, output, batch)
            if base.uses_gradients:
                base._gradients(scores, capture)
            del capture, output, scores
            base._sess_output = None

            spatial = tuple(x.shape[2:])
            matrices: dict = {}
            if self.pre_filter_ratio == 0.0 and self.theta == 0.0:
                total = self._one_pass(x, targets, sizes, window, step, spatial, eigen_smooth, matrices)
            else:
                total = self._two_passes(x, targets, sizes, window, step, spatial, eigen_smooth, matrices)
            if self.smooth:
                total = _gaussian_blur(total, self.smooth_kernel_size, self.smooth_sigma)
            # At the user's call: _compute, BaseCAM.__call__, _Composite.__call__, the caller.
            warn_if_constant(total, "the SESS map",
                             reason="no patch has positive evidence for the target")
            return min_max_normalize(total)

    def _clean_scores(self, output: Any, targets: List[Target], images: List[int]) -> torch.Tensor:
        with torch.no_grad():
            scores = self._patch_scores(output, targets, images)
        # A patch whose score is not finite (e.g. a NaN logit in the softmax) gets no weight.
        return torch.nan_to_num(scores, nan=0.0, posinf=0.0).clamp_min(0.0)  # (n,)

    def _patch_maps(self, chunk: list, x: torch.Tensor, targets: List[Target], eigen_smooth: bool):
        """The base method's maps of a chunk of patches ``(n, *window)`` and the model output."""
        patches = torch.stack([item[4] for item in chunk]).to(x.dtype)  # (n, C, *window)
        maps = self.base_cam._compute(patches, [targets[item[1]] for item in chunk], eigen_smooth)
        output, self.base_cam._sess_output = self.base_cam._sess_output, None
        return maps, output

    def _one_pass(self, x, targets, sizes, window, step, spatial, eigen_smooth, matrices) -> torch.Tensor:
        """No pre-filtering and ``theta == 0``: the scores come from the base method's own forward pass.

        ``w_p m_p > 0`` exactly where ``s_p m_p > 0``, so the score-weighted maps are fused as they come
        and divided by the image's top score at the end; an image with no positive score uses the
        unweighted fusion (all weights 1), kept alongside.
        """
        batch = x.shape[0]
        weighted = _Fusion(batch, spatial, self.pool, self.theta, x.device)
        plain = _Fusion(batch, spatial, self.pool, self.theta, x.device)
        top = torch.zeros(batch, device=x.device)
        for chunk in self._batches(self._patches(x, sizes, window, step), self.batch_size):
            images = [item[1] for item in chunk]
            maps, output = self._patch_maps(chunk, x, targets, eigen_smooth)
            scores = self._clean_scores(output, targets, images)  # (n,)
            pasted = self._paste(maps, chunk, sizes, spatial, window, matrices)  # (n, *spatial)
            owners = torch.tensor(images, device=x.device)
            weighted.add(pasted * scores.view(-1, *[1] * len(spatial)), owners)
            plain.add(pasted, owners)
            top = top.scatter_reduce(0, owners, scores, "amax")
        scored = top > 0  # (B,)
        view = (-1, *[1] * len(spatial))
        return torch.where(scored.view(view), weighted.result() / top.clamp_min(1e-30).view(view),
                           plain.result())

    def _two_passes(self, x, targets, sizes, window, step, spatial, eigen_smooth, matrices) -> torch.Tensor:
        """Pass 1 scores every patch (forward only); pass 2 runs the base method on the kept ones."""
        batch = x.shape[0]
        owners, patch_scores = [], []
        with torch.no_grad():
            for chunk in self._batches(self._patches(x, sizes, window, step), self.batch_size):
                images = [item[1] for item in chunk]
                output = self.base_cam._run_model(torch.stack([item[4] for item in chunk]).to(x.dtype))
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
            kept = order[int(len(order) * self.pre_filter_ratio):]
            top = all_scores[kept].max()
            weights[kept] = all_scores[kept] / top if top > 0 else 1.0
            keep.update(kept.tolist())

        fusion = _Fusion(batch, spatial, self.pool, self.theta, x.device)
        for chunk in self._batches(self._patches(x, sizes, window, step, keep), self.batch_size):
            maps, _ = self._patch_maps(chunk, x, targets, eigen_smooth)
            maps = maps * weights[[item[0] for item in chunk]].view(-1, *[1] * len(spatial))
            pasted = self._paste(maps, chunk, sizes, spatial, window, matrices)  # (n, *spatial)
            fusion.add(pasted, torch.tensor([item[1] for item in chunk], device=x.device))
        return fusion.result()

    @staticmethod
    def _paste(maps: torch.Tensor, chunk: list, sizes, spatial, window: int, matrices: dict) -> torch.Tensor:
        """Each ``(window,)*D`` map placed at its start in its scaled frame and resized to ``spatial``,
        as ``M_1[s_1:s_1+w].T @ ... @ map``: the frame of zeros is never built."""
        out = maps
        for axis, length in enumerate(spatial):
            slices = []
            for item in chunk:
                scaled = sizes[item[2]][axis]
                key = (scaled, length)
                if key not in matrices:
                    matrices[key] = _interpolation_matrix(scaled, length, maps.device)
                start = item[3][axis]
                slices.append(matrices[key][start:start + window])  # (w, L)
            slices = torch.stack(slices)  # (n, w, L)
            moved = out.movedim(axis + 1, -1)  # (n, ..., w)
            shape = moved.shape
            resized = moved.reshape(shape[0], -1, shape[-1]) @ slices  # (n, rest, L)
            out = resized.view(*shape[:-1], length).movedim(-1, axis + 1)
        return out


class _Fusion:
    """Per-image accumulation of pasted patch maps: the mean of the values above ``theta`` at each
    position (0 where none is), or the maximum. Memory: two ``(B, *spatial)`` tensors."""

    def __init__(self, batch: int, spatial: Sequence[int], pool: str, theta: float,
                 device: torch.device) -> None:
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
        if self.pool == "max":
            return self.total
        mean = self.total / self.counts.clamp_min(1.0)
        return torch.where(self.counts > 0, mean, torch.zeros_like(self.total))
