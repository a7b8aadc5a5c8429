"""Targets: callables that turn one image's model output into the scalar score a CAM explains.

A target receives ONE image's output, a 1-D tensor of class scores of shape ``(num_classes,)``,
and returns a 0-dim tensor that stays connected to that output, so that gradients flow back
through it. For robustness every target also accepts a 2-D output: ``(1, num_classes)`` gives
the same 0-dim scalar, ``(B, num_classes)`` gives one score per row, shape ``(B,)``.

Example:
    >>> import torch
    >>> from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
    >>> logits = torch.tensor([0.5, 2.0, -1.0], requires_grad=True)
    >>> ClassifierOutputTarget(1)(logits)
    tensor(2., grad_fn=<SelectBackward0>)
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from .._engine.checks import check_float

__all__ = [
    "BinaryClassifierOutputTarget",
    "ClassifierOutputReST",
    "ClassifierOutputSoftmaxTarget",
    "ClassifierOutputTarget",
    "DifferenceFromConceptTarget",
    "FasterRCNNBoxScoreTarget",
    "FinerWeightedTarget",
    "RawScoresOutputTarget",
    "SemanticSegmentationTarget",
    "SimilarityToConceptTarget",
    "SoftmaxOutputTarget",
]


def _check_category(category: Any, name: str = "category") -> int:
    """Return ``category`` as a Python int, or raise if it is not a non-negative integer."""
    # bool is a subclass of int; True as a class index is almost always a bug, so refuse it.
    if isinstance(category, (bool, np.bool_)) or not isinstance(category, (int, np.integer)):
        raise TypeError(
            f"{name} must be a non-negative int (a class index), got {type(category).__name__} {category!r}"
        )
    category = int(category)
    if category < 0:
        raise ValueError(f"{name} must be a non-negative int (a class index), got {category}")
    return category


def _as_rows(output: Any, who: str) -> tuple[torch.Tensor, bool]:
    """View ``output`` as ``(B, num_classes)``; the flag says whether to return a 0-dim scalar.

    ``(num_classes,)`` and ``(1, num_classes)`` are one image (scalar result); ``(B, num_classes)``
    with ``B > 1`` keeps one result per row.
    """
    if not isinstance(output, torch.Tensor):
        raise TypeError(f"{who} expects the model output as a torch.Tensor, got {type(output).__name__}")
    if output.ndim == 1:
        return output.unsqueeze(0), True
    if output.ndim == 2:
        return output, output.shape[0] == 1
    raise ValueError(
        f"{who} expects one image's output of shape (num_classes,) (or (1, num_classes) / "
        f"(B, num_classes)), got shape {tuple(output.shape)}"
    )


def _finish(per_row: torch.Tensor, scalar: bool) -> torch.Tensor:
    # per_row has shape (B,); one image gives a 0-dim tensor, the engine's contract.
    return per_row[0] if scalar else per_row


def _check_in_range(rows: torch.Tensor, category: int, who: str) -> None:
    num_classes = rows.shape[-1]
    if category >= num_classes:
        raise ValueError(
            f"{who}: category {category} is out of range for a model output with "
            f"{num_classes} classes (valid: 0..{num_classes - 1})"
        )


class ClassifierOutputTarget:
    """The raw score (logit) of one class: ``score = output[category]``.

    Args:
        category: the class index, a non-negative int (numpy integers are accepted, bools are not).

    Shapes: ``(num_classes,)`` or ``(1, num_classes)`` -> 0-dim tensor; ``(B, num_classes)`` -> ``(B,)``.

    Example:
        >>> target = ClassifierOutputTarget(281)  # ImageNet "tabby cat"
        >>> score = target(model(x)[0])           # a 0-dim tensor; score.backward() works
    """

    def __init__(self, category: int) -> None:
        """Check and store ``category``; see the class docstring for the arguments."""
        self.category = _check_category(category)

    def __call__(self, model_output: torch.Tensor) -> torch.Tensor:
        """The logit of ``category`` in ``model_output``: 0-dim for one image, ``(B,)`` for ``B`` rows."""
        rows, scalar = _as_rows(model_output, type(self).__name__)
        _check_in_range(rows, self.category, type(self).__name__)
        return _finish(rows[:, self.category], scalar)

    def __repr__(self) -> str:
        """The class name and the category."""
        return f"{type(self).__name__}(category={self.category})"


class ClassifierOutputSoftmaxTarget:
    """The softmax probability of one class: ``score = softmax(output, dim=-1)[category]``.

    Unlike the raw logit, this score also goes up when the other classes' logits go down.

    Args:
        category: the class index, a non-negative int (numpy integers are accepted, bools are not).

    Shapes: ``(num_classes,)`` or ``(1, num_classes)`` -> 0-dim tensor; ``(B, num_classes)`` -> ``(B,)``.

    Example:
        >>> ClassifierOutputSoftmaxTarget(0)(torch.tensor([0.0, 0.0]))
        tensor(0.5000)
    """

    def __init__(self, category: int) -> None:
        """Check and store ``category``; see the class docstring for the arguments."""
        self.category = _check_category(category)

    def __call__(self, model_output: torch.Tensor) -> torch.Tensor:
        """The softmax probability of ``category`` in ``model_output`` (0-dim, or ``(B,)`` per row)."""
        rows, scalar = _as_rows(model_output, type(self).__name__)
        _check_in_range(rows, self.category, type(self).__name__)
        return _finish(torch.softmax(rows, dim=-1)[:, self.category], scalar)

    def __repr__(self) -> str:
        """The class name and the category."""
        return f"{type(self).__name__}(category={self.category})"


class ClassifierOutputReST:
    """ReST, the residual softmax target of ShapleyCAM (Cai et al., arXiv:2501.06261).

    ``score = output[category] + log_softmax(output)[category]``, i.e. the logit minus the
    cross-entropy of the class. It uses both the pre- and the post-softmax score.

    Args:
        category: the class index, a non-negative int (numpy integers are accepted, bools are not).

    Shapes: ``(num_classes,)`` or ``(1, num_classes)`` -> 0-dim tensor; ``(B, num_classes)`` -> ``(B,)``.

    Example:
        >>> ClassifierOutputReST(0)(torch.tensor([0.0, 0.0]))  # 0 + log(0.5)
        tensor(-0.6931)
    """

    def __init__(self, category: int) -> None:
        """Check and store ``category``; see the class docstring for the arguments."""
        self.category = _check_category(category)

    def __call__(self, model_output: torch.Tensor) -> torch.Tensor:
        """The ReST score of ``category`` in ``model_output`` (0-dim, or ``(B,)`` per row)."""
        rows, scalar = _as_rows(model_output, type(self).__name__)
        _check_in_range(rows, self.category, type(self).__name__)
        logit = rows[:, self.category]  # (B,)
        return _finish(logit + torch.log_softmax(rows, dim=-1)[:, self.category], scalar)

    def __repr__(self) -> str:
        """The class name and the category."""
        return f"{type(self).__name__}(category={self.category})"


class FinerWeightedTarget:
    """FinerCAM's target (Zhang et al., arXiv:2501.11309): the main class against similar classes.

    ``score = sum_j p_j (y_main - alpha * y_j) / (sum_j p_j + 1e-9)`` over the comparison classes
    ``j``, with ``y`` the logits and ``p = softmax(y)``. With ``alpha = 0`` it is the plain logit of
    the main class; with ``alpha = 1`` it explains what sets the main class apart from the classes the
    model confuses it with.

    Args:
        main_category: the class to explain (a non-negative int).
        comparison_categories: the classes to compare with, a non-empty sequence of ints.
        alpha: the strength of the comparison, a finite float (usually in [0, 1]).

    Shapes: ``(num_classes,)`` or ``(1, num_classes)`` -> 0-dim tensor; ``(B, num_classes)`` -> ``(B,)``.

    Example:
        >>> target = FinerWeightedTarget(281, [282, 285], alpha=1.0)
    """

    def __init__(self, main_category: int, comparison_categories, alpha: float = 1.0) -> None:
        """Check and store the classes and ``alpha``; see the class docstring for the arguments."""
        self.main_category = _check_category(main_category, "main_category")
        if isinstance(comparison_categories, (str, bytes)) or not hasattr(comparison_categories, "__iter__"):
            raise TypeError(
                f"comparison_categories must be a sequence of class indices, got "
                f"{type(comparison_categories).__name__}"
            )
        comparison = [
            _check_category(c, f"comparison_categories[{i}]") for i, c in enumerate(comparison_categories)
        ]
        if not comparison:
            raise ValueError("comparison_categories is empty; give at least one class to compare with")
        alpha = check_float(alpha, "alpha")
        self.comparison_categories = comparison
        self.alpha = alpha

    def __call__(self, model_output: torch.Tensor) -> torch.Tensor:
        """The FinerCAM score of ``model_output`` (0-dim, or ``(B,)`` per row)."""
        rows, scalar = _as_rows(model_output, type(self).__name__)
        for category in (self.main_category, *self.comparison_categories):
            _check_in_range(rows, category, type(self).__name__)
        main = rows[:, self.main_category, None]  # (B, 1)
        others = rows[:, self.comparison_categories]  # (B, J)
        weights = torch.softmax(rows, dim=-1)[:, self.comparison_categories]  # (B, J)
        score = (weights * (main - self.alpha * others)).sum(-1) / (weights.sum(-1) + 1e-9)  # (B,)
        return _finish(score, scalar)

    def __repr__(self) -> str:
        """The class name, the main and comparison categories and ``alpha``."""
        return (
            f"{type(self).__name__}(main_category={self.main_category}, "
            f"comparison_categories={self.comparison_categories}, alpha={self.alpha})"
        )


class BinaryClassifierOutputTarget:
    """The score of one class of a binary classifier with a single logit.

    ``score = output`` for ``category == 1`` (the positive class) and ``score = -output`` for
    ``category == 0``: a single logit ``z`` means ``p(1) = sigmoid(z)`` and ``p(0) = sigmoid(-z)``.

    Args:
        category: 0 or 1.

    Shapes: ``()``, ``(1,)`` or ``(1, 1)`` -> 0-dim tensor; ``(B, 1)`` -> ``(B,)``.

    Example:
        >>> BinaryClassifierOutputTarget(0)(torch.tensor([1.5]))
        tensor(-1.5000)
    """

    def __init__(self, category: int) -> None:
        """Check (0 or 1) and store ``category``; see the class docstring for the arguments."""
        category = _check_category(category)
        if category not in (0, 1):
            raise ValueError(f"category must be 0 or 1 for a binary classifier, got {category}")
        self.category = category

    def __call__(self, model_output: torch.Tensor) -> torch.Tensor:
        """The single logit of ``model_output``, negated for ``category == 0`` (0-dim, or ``(B,)``)."""
        who = type(self).__name__
        if not isinstance(model_output, torch.Tensor):
            raise TypeError(
                f"{who} expects the model output as a torch.Tensor, got {type(model_output).__name__}"
            )
        sign = 1.0 if self.category == 1 else -1.0
        if model_output.numel() == 1:
            return model_output.reshape(()) * sign
        if model_output.ndim == 2 and model_output.shape[1] == 1:
            return model_output[:, 0] * sign
        raise ValueError(
            f"{who} expects a single logit per image (shape (1,) or (B, 1)), got shape "
            f"{tuple(model_output.shape)}; for a model with one output per class use "
            "ClassifierOutputTarget"
        )

    def __repr__(self) -> str:
        """The class name and the category."""
        return f"{type(self).__name__}(category={self.category})"


class RawScoresOutputTarget:
    """The sum of all the output scores: ``score = sum_k output[k]``.

    With a single-output regression model (output shape ``(1,)``) this is exactly the raw output,
    so the CAM explains the predicted value.

    Shapes: ``()``, ``(N,)`` or ``(1, N)`` -> 0-dim tensor; ``(B, N)`` -> ``(B,)``.

    Example:
        >>> RawScoresOutputTarget()(torch.tensor([3.5]))
        tensor(3.5000)
    """

    def __call__(self, model_output: torch.Tensor) -> torch.Tensor:
        """The sum of the scores of ``model_output`` (0-dim, or ``(B,)`` per row)."""
        if isinstance(model_output, torch.Tensor) and model_output.ndim == 0:
            return model_output  # already the scalar of a regression model
        rows, scalar = _as_rows(model_output, type(self).__name__)
        return _finish(rows.sum(dim=-1), scalar)

    def __repr__(self) -> str:
        """The class name."""
        return f"{type(self).__name__}()"


class SoftmaxOutputTarget:
    """The softmax probability of ``category``, or of the top class when ``category`` is None.

    ``p = softmax(output, dim=-1)``; ``score = p[category]``, or ``score = max_k p[k]`` when
    ``category is None``. The engine needs a scalar per image, so the softmax vector itself is
    reduced to the probability of one class; with ``category`` given this equals
    :class:`ClassifierOutputSoftmaxTarget`.

    Args:
        category: a class index (non-negative int) or None for each image's most probable class.

    Shapes: ``(num_classes,)`` or ``(1, num_classes)`` -> 0-dim tensor; ``(B, num_classes)`` -> ``(B,)``.

    Example:
        >>> SoftmaxOutputTarget()(torch.tensor([0.0, 0.0, 100.0]))
        tensor(1.)
    """

    def __init__(self, category: int | None = None) -> None:
        """Check and store ``category`` (or None); see the class docstring for the arguments."""
        self.category = None if category is None else _check_category(category)

    def __call__(self, model_output: torch.Tensor) -> torch.Tensor:
        """The probability of ``category`` (or of the top class) in ``model_output`` (0-dim, or ``(B,)``)."""
        rows, scalar = _as_rows(model_output, type(self).__name__)
        probs = torch.softmax(rows, dim=-1)
        if self.category is None:
            return _finish(probs.max(dim=-1).values, scalar)
        _check_in_range(rows, self.category, type(self).__name__)
        return _finish(probs[:, self.category], scalar)

    def __repr__(self) -> str:
        """The class name and the category."""
        return f"{type(self).__name__}(category={self.category})"


def _as_float_tensor(value: Any, name: str) -> torch.Tensor:
    """``value`` (a numpy array, a tensor or a nested list of numbers) as a detached floating tensor."""
    if isinstance(value, torch.Tensor):
        tensor = value.detach()
    else:
        try:
            tensor = torch.as_tensor(np.asarray(value))
        except (TypeError, ValueError, RuntimeError):
            raise TypeError(
                f"{name} must be a numpy array or a tensor of numbers, got {type(value).__name__}"
            ) from None
    if tensor.dtype == torch.bool or not (tensor.is_floating_point() or tensor.dtype.is_complex):
        tensor = tensor.to(torch.get_default_dtype())
    if tensor.dtype.is_complex:
        raise TypeError(f"{name} must hold real numbers, got dtype {tensor.dtype}")
    return tensor


class SemanticSegmentationTarget:
    """The summed score of one class over a region: ``score = sum_{h,w} output[category, h, w] * mask[h, w]``.

    For semantic segmentation models, whose output for one image is ``(num_classes, H, W)``. The mask
    says which pixels to explain (a binary mask of the predicted region, or any weights). torchvision's
    segmentation models return a dict; its ``"out"`` entry is used.

    Args:
        category: the class index, a non-negative int.
        mask: ``(H, W)`` (or ``(*spatial)`` for 1D/3D outputs), a numpy array or a tensor; booleans and
            integers are converted to floats. It is moved to the output's device and dtype at each call.

    Shapes: ``(num_classes, *spatial)`` or ``(1, num_classes, *spatial)`` (or a dict with ``"out"`` of
    that shape) -> 0-dim tensor.

    Example:
        >>> mask = (model(x)["out"][0].argmax(0) == 15).numpy()  # the "person" pixels
        >>> cam(x, targets=[SemanticSegmentationTarget(15, mask)])
    """

    def __init__(self, category: int, mask: Any) -> None:
        """Check and store ``category`` and ``mask`` (as floats); see the class docstring for the args."""
        self.category = _check_category(category)
        mask = _as_float_tensor(mask, "mask")
        if mask.ndim == 0:
            raise ValueError(
                "mask must be a spatial array of shape (H, W) (the output's spatial shape), got a scalar"
            )
        if not bool(torch.isfinite(mask).all()):
            raise ValueError("mask contains NaN or Inf")
        self.mask = mask

    def __call__(self, model_output: Any) -> torch.Tensor:
        """The mask-weighted sum of ``category``'s scores in ``model_output``, a 0-dim tensor."""
        who = type(self).__name__
        if isinstance(model_output, dict):
            if "out" not in model_output:
                raise ValueError(
                    f"{who} got a dict output without an 'out' entry (keys: "
                    f"{list(model_output)}); pass the per-pixel class scores"
                )
            model_output = model_output["out"]
        if not isinstance(model_output, torch.Tensor):
            raise TypeError(
                f"{who} expects one image's output (num_classes, *spatial) as a tensor, got "
                f"{type(model_output).__name__}"
            )
        if model_output.ndim == self.mask.ndim + 2 and model_output.shape[0] == 1:
            model_output = model_output[0]  # (1, num_classes, *spatial): one image
        if model_output.ndim != self.mask.ndim + 1 or tuple(model_output.shape[1:]) != tuple(self.mask.shape):
            raise ValueError(
                f"{who}: the mask has shape {tuple(self.mask.shape)} but the model output has "
                f"shape {tuple(model_output.shape)}; the mask must match the output's spatial "
                "shape (num_classes, *mask.shape)"
            )
        num_classes = model_output.shape[0]
        if self.category >= num_classes:
            raise ValueError(
                f"{who}: category {self.category} is out of range for a model output with "
                f"{num_classes} classes (valid: 0..{num_classes - 1})"
            )
        mask = self.mask.to(device=model_output.device, dtype=model_output.dtype)
        return (model_output[self.category] * mask).sum()

    def __repr__(self) -> str:
        """The class name, the category and the mask's shape."""
        return f"{type(self).__name__}(category={self.category}, mask of shape {tuple(self.mask.shape)})"


def _box_iou(boxes1: torch.Tensor, boxes2: torch.Tensor) -> torch.Tensor:
    """IoU of ``(N, 4)`` and ``(M, 4)`` boxes ``(x1, y1, x2, y2)``: ``(N, M)``; 0 where the union is empty."""
    area1 = (boxes1[:, 2] - boxes1[:, 0]).clamp(min=0) * (boxes1[:, 3] - boxes1[:, 1]).clamp(min=0)  # (N,)
    area2 = (boxes2[:, 2] - boxes2[:, 0]).clamp(min=0) * (boxes2[:, 3] - boxes2[:, 1]).clamp(min=0)  # (M,)
    top_left = torch.maximum(boxes1[:, None, :2], boxes2[None, :, :2])  # (N, M, 2)
    bottom_right = torch.minimum(boxes1[:, None, 2:], boxes2[None, :, 2:])  # (N, M, 2)
    inter = (bottom_right - top_left).clamp(min=0).prod(-1)  # (N, M)
    union = area1[:, None] + area2[None, :] - inter
    safe = union.clamp(min=torch.finfo(union.dtype).tiny)  # no 0/0 (and no NaN gradient) for empty boxes
    return torch.where(union > 0, inter / safe, torch.zeros_like(inter))


class FasterRCNNBoxScoreTarget:
    """How well a detector still finds given boxes.

    For object detection models (torchvision's Faster R-CNN, RetinaNet, FCOS...), whose output for one
    image is a dict with ``"boxes"`` ``(M, 4)`` (x1, y1, x2, y2), ``"labels"`` ``(M,)`` and ``"scores"``
    ``(M,)``.

    For each wanted box ``b`` with label ``l`` the detection ``d`` with label ``l`` that overlaps ``b``
    most is found; if ``IoU(b, d) > iou_threshold`` it contributes ``IoU(b, d) + score(d)`` (as in the
    reference library: both the localisation and the classification of the box are explained),
    otherwise 0. ``score = sum_b contribution(b)``.

    When no wanted box is matched the score is a zero that is still connected to the output, so the
    gradients are zero rather than missing (the engine then warns that the target's gradient is zero
    and gives an all-zero map).

    Args:
        labels: one class index per wanted box, a sequence of non-negative ints.
        bounding_boxes: ``(N, 4)`` boxes in the output's coordinates, a numpy array, a tensor or a list.
        iou_threshold: the overlap a detection needs to count, in ``[0, 1)``.

    Shapes: a dict with ``"boxes"`` ``(M, 4)``, ``"labels"`` ``(M,)`` and ``"scores"`` ``(M,)`` -> 0-dim.

    Example:
        >>> detections = model(x)[0]  # what the detector found
        >>> keep = detections["scores"] > 0.9
        >>> target = FasterRCNNBoxScoreTarget(detections["labels"][keep], detections["boxes"][keep])
        >>> cam = EigenCAM(model, [model.backbone], reshape_transform=fpn_reshape_transform)
        >>> maps = cam(x, targets=[target])
    """

    def __init__(self, labels: Any, bounding_boxes: Any, iou_threshold: float = 0.5) -> None:
        """Check and store the labels, the boxes and the threshold; see the class docstring."""
        if isinstance(labels, (torch.Tensor, np.ndarray)):
            labels = labels.tolist()
        if isinstance(labels, (int, np.integer)) or not hasattr(labels, "__iter__"):
            raise TypeError(
                f"labels must be a sequence of class indices (one per box), got {type(labels).__name__}"
            )
        self.labels = [_check_category(label, f"labels[{i}]") for i, label in enumerate(labels)]
        boxes = _as_float_tensor(bounding_boxes, "bounding_boxes")
        if boxes.ndim == 1 and boxes.numel() == 4:
            boxes = boxes[None]  # a single box
        if boxes.numel() == 0:
            boxes = boxes.reshape(0, 4)
        if boxes.ndim != 2 or boxes.shape[1] != 4:
            raise ValueError(
                f"bounding_boxes must have shape (N, 4) (x1, y1, x2, y2), got shape {tuple(boxes.shape)}"
            )
        if boxes.shape[0] != len(self.labels):
            raise ValueError(
                f"labels has {len(self.labels)} entries but bounding_boxes has {boxes.shape[0]} "
                "boxes; give one label per box"
            )
        if not bool(torch.isfinite(boxes).all()):
            raise ValueError("bounding_boxes contains NaN or Inf")
        iou_threshold = check_float(iou_threshold, "iou_threshold", 0, 1, include_maximum=False)
        self.bounding_boxes = boxes
        self.iou_threshold = iou_threshold

    def __call__(self, model_output: Any) -> torch.Tensor:
        """The summed ``IoU + score`` of the matched boxes in ``model_output``, a 0-dim tensor."""
        who = type(self).__name__
        if not isinstance(model_output, dict) or not {"boxes", "labels", "scores"} <= set(model_output):
            got = (
                f"a dict with keys {list(model_output)}"
                if isinstance(model_output, dict)
                else type(model_output).__name__
            )
            raise TypeError(
                f"{who} expects one image's detections, a dict with 'boxes', 'labels' and "
                f"'scores' (torchvision's detection models), got {got}"
            )
        boxes, labels, scores = model_output["boxes"], model_output["labels"], model_output["scores"]
        # A zero connected to the output: without a match the gradients are zero, not missing.
        total = scores.sum() * 0.0
        if boxes.shape[0] == 0:
            return total
        wanted = self.bounding_boxes.to(device=boxes.device, dtype=boxes.dtype)  # (N, 4)
        ious = _box_iou(wanted, boxes)  # (N, M)
        for row, label in enumerate(self.labels):
            same = labels == label  # (M,)
            if not bool(same.any()):
                continue
            candidates = torch.where(same, ious[row], torch.full_like(ious[row], -1.0))
            best = int(candidates.argmax())
            if float(ious[row, best].detach()) > self.iou_threshold:
                total = total + ious[row, best] + scores[best]
        return total

    def __repr__(self) -> str:
        """The class name, the labels, the number of boxes and the threshold."""
        return (
            f"{type(self).__name__}(labels={self.labels}, {self.bounding_boxes.shape[0]} boxes, "
            f"iou_threshold={self.iou_threshold})"
        )


class _ConceptTarget:
    """Shared by the embedding targets: the cosine similarity of the output with a concept vector."""

    def __init__(self, features: Any) -> None:
        concept = _as_float_tensor(features, "features")
        if concept.ndim == 2 and concept.shape[0] == 1:
            concept = concept[0]
        if concept.ndim != 1 or concept.numel() == 0:
            raise ValueError(
                f"features must be one embedding vector of shape (D,) (or (1, D)), got shape "
                f"{tuple(concept.shape)}"
            )
        if not bool(torch.isfinite(concept).all()):
            raise ValueError("features contains NaN or Inf")
        if float(concept.norm()) == 0.0:
            raise ValueError("features is the zero vector; its cosine similarity is undefined")
        self.features = concept

    def _similarity(self, model_output: torch.Tensor) -> torch.Tensor:
        who = type(self).__name__
        rows, scalar = _as_rows(model_output, who)
        if rows.shape[-1] != self.features.numel():
            raise ValueError(
                f"{who}: the model output has {rows.shape[-1]} features (shape "
                f"{tuple(model_output.shape)}) but the concept has {self.features.numel()}"
            )
        concept = self.features.to(device=rows.device, dtype=rows.dtype)
        # cos = <y, f> / max(|y| |f|, eps), as torch.nn.functional.cosine_similarity.
        similarity = torch.nn.functional.cosine_similarity(rows, concept[None], dim=-1)  # (B,)
        return _finish(similarity, scalar)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(features of dimension {self.features.numel()})"


class SimilarityToConceptTarget(_ConceptTarget):
    """For embedding models: the cosine similarity of the image's embedding with a concept's.

    ``score = <y, f> / (|y| |f|)``, so the CAM shows what makes the image look like the concept.

    Args:
        features: the concept's embedding ``(D,)`` (or ``(1, D)``), e.g. the embedding of a
            reference image; a numpy array or a tensor, moved to the output's device at each call.

    Shapes: ``(D,)`` or ``(1, D)`` -> 0-dim tensor; ``(B, D)`` -> ``(B,)``.

    Example:
        >>> car = model(car_image)[0]
        >>> cam(x, targets=[SimilarityToConceptTarget(car)])
    """

    def __call__(self, model_output: torch.Tensor) -> torch.Tensor:
        """The cosine similarity of ``model_output`` with the concept (0-dim, or ``(B,)`` per row)."""
        return self._similarity(model_output)


class DifferenceFromConceptTarget(_ConceptTarget):
    """For embedding models: one minus the cosine similarity of the image's embedding with a concept's.

    ``score = 1 - <y, f> / (|y| |f|)``, so the CAM shows what makes the image differ from the concept.

    Args:
        features: the concept's embedding ``(D,)`` (or ``(1, D)``), a numpy array or a tensor.

    Shapes: ``(D,)`` or ``(1, D)`` -> 0-dim tensor; ``(B, D)`` -> ``(B,)``.

    Example:
        >>> cam(x, targets=[DifferenceFromConceptTarget(model(cloud_image)[0])])
    """

    def __call__(self, model_output: torch.Tensor) -> torch.Tensor:
        """One minus the cosine similarity of ``model_output`` with the concept (0-dim, or ``(B,)``)."""
        return 1.0 - self._similarity(model_output)
