"""Targets beyond the plain class score, each against its formula written out by hand."""
import math

import numpy as np
import pytest
import torch

from pytorch_grad_cam.utils.model_targets import ClassifierOutputReST, FinerWeightedTarget


def test_rest_is_the_logit_plus_the_log_probability():
    logits = torch.tensor([1.0, -0.5, 2.0, 0.25], dtype=torch.float64, requires_grad=True)
    values = logits.detach().numpy()
    log_p = values[2] - math.log(np.exp(values).sum())
    score = ClassifierOutputReST(2)(logits)
    assert score.shape == () and score.item() == pytest.approx(values[2] + log_p, rel=1e-12)
    score.backward()  # connected to the output: d/dy_c = 1 + (1 - p_c), d/dy_j = -p_j
    p = np.exp(values) / np.exp(values).sum()
    want = -p
    want[2] = 2 - p[2]
    np.testing.assert_allclose(logits.grad.numpy(), want, rtol=1e-12)
    rows = torch.stack([logits.detach(), logits.detach().flip(0)])
    assert ClassifierOutputReST(2)(rows).shape == (2,)
    with pytest.raises(ValueError, match="out of range"):
        ClassifierOutputReST(4)(logits)


def test_finer_weighted_target_formula_and_limits():
    y = torch.tensor([0.3, 2.0, 1.5, -1.0, 0.7], dtype=torch.float64)
    p = np.exp(y.numpy()) / np.exp(y.numpy()).sum()
    main, others, alpha = 1, [2, 4], 0.6
    want = sum(p[j] * (y[main].item() - alpha * y[j].item()) for j in others) / (p[2] + p[4] + 1e-9)
    assert FinerWeightedTarget(main, others, alpha)(y).item() == pytest.approx(want, rel=1e-9)
    # alpha = 0: the main logit itself, whatever the comparison classes (up to the 1e-9 in the denominator)
    assert FinerWeightedTarget(main, [0, 3], 0.0)(y).item() == pytest.approx(2.0, rel=1e-7)
    batch = FinerWeightedTarget(main, others, alpha)(torch.stack([y, y]))
    assert batch.shape == (2,) and batch[1].item() == pytest.approx(want, rel=1e-9)


@pytest.mark.parametrize("args, error, match", [
    ((1, [], 1.0), ValueError, "comparison_categories is empty"),
    ((1, 3, 1.0), TypeError, "comparison_categories must be a sequence"),
    ((1, [2, -1], 1.0), ValueError, "non-negative"),
    ((1, [2], float("nan")), TypeError, "alpha must be a finite float"),
    ((True, [2], 1.0), TypeError, "main_category"),
])
def test_finer_weighted_target_refuses_bad_arguments(args, error, match):
    with pytest.raises(error, match=match):
        FinerWeightedTarget(*args)
