"""FinerCAM: the base method explaining the main class against the classes it is confused with."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from functools import partial
from typing import Any

import numpy as np
import torch
from torch import nn

from ..._engine.checks import check_float, check_int
from ..._engine.undo import guarded
from ...base_cam import DEFAULT_OPTIONS, UNSET, CallOptions, Target, first_api_targets, to_numpy
from ...utils.model_targets import ClassifierOutputTarget, FinerWeightedTarget
from ..gradient import GradCAM
from .base import BaseMethod, CompositeCAM, check_int_list


class FinerCAM(CompositeCAM):
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

    def __init__(
        self,
        model: nn.Module,
        target_layers: Any = None,
        reshape_transform: Any = None,
        base_method: BaseMethod = GradCAM,
        *,
        alpha: float = 1.0,
        num_comparisons: int = 3,
        **kwargs: Any,
    ) -> None:
        """Check and store ``alpha`` and ``num_comparisons``, and build the base method."""
        self.alpha = check_float(alpha, "alpha")
        self.num_comparisons = check_int(num_comparisons, "num_comparisons", 1)
        super().__init__(model, target_layers, reshape_transform, base_method, **kwargs)

    # The reference library's argument order (eigen_smooth third), not BaseCAM's: hence the override.
    def __call__(  # type: ignore[override]
        self,
        input_tensor: torch.Tensor,
        targets: Any = None,
        eigen_smooth: bool = False,
        alpha: float | None = None,
        comparison_categories: Sequence[int] | None = None,
        target_idx: int | None = None,
        *,
        comparison_classes: Any = None,
        aug_smooth: bool = False,
        target_category: Any = UNSET,
    ) -> np.ndarray:
        """Maps ``(B, *spatial)`` in ``[0, 1]`` (the reference's argument order): see the class docstring."""
        aug_smooth, eigen_smooth = self.check_call_order(aug_smooth, eigen_smooth)
        options = self._check_options(
            input_tensor, alpha, comparison_categories, target_idx, comparison_classes
        )
        if target_idx is not None and (targets is not None or target_category is not UNSET):
            raise TypeError("pass targets or target_idx (one main class for every image), not both")
        targets = first_api_targets(targets, target_category)
        return to_numpy(
            self._explain(input_tensor, targets, aug_smooth, eigen_smooth, options, DEFAULT_OPTIONS)
        )

    def forward(
        self,
        input_tensor: torch.Tensor,
        targets: Any = None,
        eigen_smooth: bool = False,
        alpha: float | None = None,
        comparison_categories: Sequence[int] | None = None,
        target_idx: int | None = None,
        **kwargs: Any,
    ) -> np.ndarray:
        """The reference library's ``forward``: the call without augmentation smoothing."""
        return self(input_tensor, targets, eigen_smooth, alpha, comparison_categories, target_idx, **kwargs)

    @guarded
    def explain(
        self,
        input_tensor: torch.Tensor,
        targets: Any = None,
        *,
        aug_smooth: bool = False,
        eigen_smooth: bool = False,
        options: CallOptions = DEFAULT_OPTIONS,
    ) -> torch.Tensor:
        """The maps as a tensor, with the constructor's ``alpha`` and comparison classes."""
        finer = self._check_options(input_tensor, None, None, None, None)
        return self._explain(input_tensor, targets, aug_smooth, eigen_smooth, finer, options)

    def _explain(
        self,
        input_tensor: torch.Tensor,
        targets: Any,
        aug_smooth: bool,
        eigen_smooth: bool,
        finer: dict[str, Any],
        options: CallOptions,
    ) -> torch.Tensor:
        # The base method resolves its targets with FinerCAM's resolver, on its own forward pass: one
        # forward and one backward pass in all. With aug_smooth the comparison classes come from the
        # unaugmented image and are the same in every copy (the base method's smoothing resolves the
        # targets once, before augmenting).
        call = dataclasses.replace(options, resolve_targets=partial(self._finer_targets, finer))
        return self.base_cam.explain(
            input_tensor, targets, aug_smooth=aug_smooth, eigen_smooth=eigen_smooth, options=call
        )

    def _check_options(
        self,
        input_tensor: Any,
        alpha: Any,
        comparison_categories: Any,
        target_idx: Any,
        comparison_classes: Any,
    ) -> dict[str, Any]:
        """One call's FinerCAM arguments, checked, with the constructor's defaults filled in."""
        alpha = self.alpha if alpha is None else check_float(alpha, "alpha")
        if comparison_categories is not None and comparison_classes is not None:
            raise TypeError(
                "pass comparison_categories (ranks by similarity) or comparison_classes (class "
                "indices), not both"
            )
        if comparison_categories is None:
            ranks = list(range(1, self.num_comparisons + 1))
        else:
            ranks = check_int_list(comparison_categories, "comparison_categories")
            if not ranks or min(ranks) < 1:
                raise ValueError(
                    f"comparison_categories must be ranks >= 1 in the order of similarity to "
                    f"the main class (rank 0 is the main class itself), got {ranks}"
                )
        if target_idx is not None:
            target_idx = check_int(target_idx, "target_idx", 0)
        per_image = (
            None
            if comparison_classes is None
            else _check_comparison_classes(comparison_classes, input_tensor)
        )
        return {"alpha": alpha, "ranks": ranks, "target_idx": target_idx, "classes": per_image}

    @staticmethod
    def _finer_targets(
        options: dict[str, Any], targets: list[Target] | None, output: Any, batch: int
    ) -> list[Target]:
        """The FinerCAM target of each image, from the logits of the forward pass (no extra pass).

        ``options`` are the call's (:meth:`_check_options`).
        """
        if targets is not None and not any(isinstance(t, ClassifierOutputTarget) for t in targets):
            return targets  # every target given, none of them a class: explained as they are
        given: list[Target | None] = [None] * batch if targets is None else list(targets)
        if not isinstance(output, torch.Tensor) or output.ndim != 2 or output.shape[0] != batch:
            shape = tuple(output.shape) if isinstance(output, torch.Tensor) else type(output).__name__
            raise ValueError(
                f"FinerCAM compares class logits and needs a (B, num_classes) model output; "
                f"this model returns {shape}: pass FinerWeightedTarget targets yourself"
            )
        logits = output.detach().float()  # (B, K)
        num_classes = logits.shape[1]
        resolved: list[Target] = []
        for i, target in enumerate(given):
            if target is not None and not isinstance(target, ClassifierOutputTarget):
                resolved.append(target)
                continue
            if isinstance(target, ClassifierOutputTarget):
                main = target.category
                where = f"targets[{i}]"
            elif options["target_idx"] is not None:
                main, where = options["target_idx"], "target_idx"
            else:
                main, where = int(logits[i].argmax()), "top class"
            if main >= num_classes:
                raise ValueError(
                    f"{where}: category {main} is out of range for a model output with "
                    f"{num_classes} classes (valid: 0..{num_classes - 1})"
                )
            comparison = _comparison_classes(options, logits[i], i, main)
            resolved.append(FinerWeightedTarget(main, comparison, options["alpha"]))
        return resolved


def _check_comparison_classes(comparison_classes: Any, input_tensor: Any) -> list[list[int]]:
    """``comparison_classes`` as one checked list of class indices per image.

    Given as one list for every image, or a list of lists (one per image).
    """
    try:
        items = list(comparison_classes)
    except TypeError:
        raise TypeError(
            f"comparison_classes must be a list of class indices, or a list of such "
            f"lists (one per image), got {type(comparison_classes).__name__}"
        ) from None
    nested = bool(items) and all(not isinstance(c, (int, np.integer)) for c in items)
    batch = input_tensor.shape[0] if isinstance(input_tensor, torch.Tensor) else None
    if nested:
        if batch is not None and len(items) != batch:
            raise ValueError(
                f"comparison_classes has {len(items)} lists but the batch has {batch} "
                "images; give one list per image, or one list for all"
            )
        per_image = [check_int_list(c, f"comparison_classes[{i}]") for i, c in enumerate(items)]
    else:
        per_image = [check_int_list(items, "comparison_classes")] * (batch or 1)
    for i, classes in enumerate(per_image):
        if not classes or min(classes) < 0:
            raise ValueError(
                f"comparison_classes (image {i}) must be a non-empty list of class "
                f"indices >= 0, got {classes}"
            )
    return per_image


def _comparison_classes(options: dict[str, Any], logits: torch.Tensor, image: int, main: int) -> list[int]:
    """The classes image ``image``'s main class is compared with.

    The call's ``comparison_classes``, or the classes at the call's ranks of closeness of their logit ``(K,)``
    to the main class's.
    """
    num_classes = logits.shape[0]
    if options["classes"] is not None:
        comparison = options["classes"][image]
        bad = [c for c in comparison if c >= num_classes]
        if bad:
            raise ValueError(
                f"comparison_classes: category {bad[0]} is out of range for a model "
                f"output with {num_classes} classes"
            )
        return comparison
    distance = (logits - logits[main]).abs()  # (K,)
    distance[main] = -1.0  # rank 0 is the main class itself, even with ties
    order = torch.sort(distance, stable=True).indices.tolist()
    comparison = [order[r] for r in options["ranks"] if r < num_classes]
    if not comparison:
        raise ValueError(
            f"FinerCAM needs a class to compare with: the model has {num_classes} "
            f"class(es) and the comparison ranks are {options['ranks']}"
        )
    return comparison
