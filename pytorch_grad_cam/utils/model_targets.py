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

__all__ = [
    "BinaryClassifierOutputTarget",
    "ClassifierOutputReST",
    "ClassifierOutputSoftmaxTarget",
    "ClassifierOutputTarget",
    "FinerWeightedTarget",
    "RawScoresOutputTarget",
    "SoftmaxOutputTarget",
]


def _check_category(category: Any, name: str = "category") -> int:
    """Return ``category`` as a Python int, or raise if it is not a non-negative integer."""
    # bool is a subclass of int; True as a class index is almost always a bug, so refuse it.
    if isinstance(category, (bool, np.bool_)) or not isinstance(category, (int, np.integer)):
        raise TypeError(f"{name} must be a non-negative int (a class index), "
                        f"got {type(category).__name__} {category!r}")
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
    raise ValueError(f"{who} expects one image's output of shape (num_classes,) (or (1, num_classes) / "
                     f"(B, num_classes)), got shape {tuple(output.shape)}")


def _finish(per_row: torch.Tensor, scalar: bool) -> torch.Tensor:
    # per_row has shape (B,); one image gives a 0-dim tensor, the engine's contract.
    return per_row[0] if scalar else per_row


def _check_in_range(rows: torch.Tensor, category: int, who: str) -> None:
    num_classes = rows.shape[-1]
    if category >= num_classes:
        raise ValueError(f"{who}: category {category} is out of range for a model output with "
                         f"{num_classes} classes (valid: 0..{num_classes - 1})")


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
        self.category = _check_category(category)

    def __call__(self, model_output: torch.Tensor) -> torch.Tensor:
        rows, scalar = _as_rows(model_output, type(self).__name__)
        _check_in_range(rows, self.category, type(self).__name__)
        return _finish(rows[:, self.category], scalar)

    def __repr__(self) -> str:
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
        self.category = _check_category(category)

    def __call__(self, model_output: torch.Tensor) -> torch.Tensor:
        rows, scalar = _as_rows(model_output, type(self).__name__)
        _check_in_range(rows, self.category, type(self).__name__)
        return _finish(torch.softmax(rows, dim=-1)[:, self.category], scalar)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(category={self.category})"


class ClassifierOutputReST:
    """ReST, the residual softmax target of ShapleyCAM (Cai et al., arXiv:2501.06261):
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
        self.category = _check_category(category)

    def __call__(self, model_output: torch.Tensor) -> torch.Tensor:
        rows, scalar = _as_rows(model_output, type(self).__name__)
        _check_in_range(rows, self.category, type(self).__name__)
        logit = rows[:, self.category]  # (B,)
        return _finish(logit + torch.log_softmax(rows, dim=-1)[:, self.category], scalar)

    def __repr__(self) -> str:
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
        self.main_category = _check_category(main_category, "main_category")
        try:
            comparison = [_check_category(c, "comparison_categories[]") for c in comparison_categories]
        except TypeError as error:
            if not hasattr(comparison_categories, "__iter__"):
                raise TypeError(f"comparison_categories must be a sequence of class indices, got "
                                f"{type(comparison_categories).__name__}") from None
            raise error
        if not comparison:
            raise ValueError("comparison_categories is empty; give at least one class to compare with")
        if isinstance(alpha, bool) or not isinstance(alpha, (int, float, np.integer, np.floating)) \
                or not np.isfinite(alpha):
            raise TypeError(f"alpha must be a finite float, got {alpha!r}")
        self.comparison_categories = comparison
        self.alpha = float(alpha)

    def __call__(self, model_output: torch.Tensor) -> torch.Tensor:
        rows, scalar = _as_rows(model_output, type(self).__name__)
        for category in (self.main_category, *self.comparison_categories):
            _check_in_range(rows, category, type(self).__name__)
        main = rows[:, self.main_category, None]  # (B, 1)
        others = rows[:, self.comparison_categories]  # (B, J)
        weights = torch.softmax(rows, dim=-1)[:, self.comparison_categories]  # (B, J)
        score = (weights * (main - self.alpha * others)).sum(-1) / (weights.sum(-1) + 1e-9)  # (B,)
        return _finish(score, scalar)

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(main_category={self.main_category}, "
                f"comparison_categories={self.comparison_categories}, alpha={self.alpha})")


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
        category = _check_category(category)
        if category not in (0, 1):
            raise ValueError(f"category must be 0 or 1 for a binary classifier, got {category}")
        self.category = category

    def __call__(self, model_output: torch.Tensor) -> torch.Tensor:
        who = type(self).__name__
        if not isinstance(model_output, torch.Tensor):
            raise TypeError(f"{who} expects the model output as a torch.Tensor, got "
                            f"{type(model_output).__name__}")
        sign = 1.0 if self.category == 1 else -1.0
        if model_output.numel() == 1:
            return model_output.reshape(()) * sign
        if model_output.ndim == 2 and model_output.shape[1] == 1:
            return model_output[:, 0] * sign
        raise ValueError(f"{who} expects a single logit per image (shape (1,) or (B, 1)), got shape "
                         f"{tuple(model_output.shape)}; for a model with one output per class use "
                         "ClassifierOutputTarget")

    def __repr__(self) -> str:
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
        if isinstance(model_output, torch.Tensor) and model_output.ndim == 0:
            return model_output  # already the scalar of a regression model
        rows, scalar = _as_rows(model_output, type(self).__name__)
        return _finish(rows.sum(dim=-1), scalar)

    def __repr__(self) -> str:
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
        self.category = None if category is None else _check_category(category)

    def __call__(self, model_output: torch.Tensor) -> torch.Tensor:
        rows, scalar = _as_rows(model_output, type(self).__name__)
        probs = torch.softmax(rows, dim=-1)
        if self.category is None:
            return _finish(probs.max(dim=-1).values, scalar)
        _check_in_range(rows, self.category, type(self).__name__)
        return _finish(probs[:, self.category], scalar)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(category={self.category})"
