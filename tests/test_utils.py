"""Tests of pytorch_grad_cam.utils: targets, image helpers and reshape transforms."""
import numpy as np
import pytest
import torch

from pytorch_grad_cam.utils import (
    BinaryClassifierOutputTarget,
    ClassifierOutputSoftmaxTarget,
    ClassifierOutputTarget,
    RawScoresOutputTarget,
    SoftmaxOutputTarget,
)

# ---------------------------------------------------------------------------------------------- targets


def test_classifier_target_picks_the_class_score_and_its_gradient_is_one_hot():
    logits = torch.tensor([0.5, 2.0, -1.0, 3.0], requires_grad=True)
    score = ClassifierOutputTarget(2)(logits)
    assert score.ndim == 0
    assert score.item() == -1.0
    (grad,) = torch.autograd.grad(score, logits)
    assert torch.equal(grad, torch.tensor([0.0, 0.0, 1.0, 0.0]))


def test_classifier_target_accepts_numpy_int_and_2d_outputs():
    target = ClassifierOutputTarget(np.int64(1))
    assert target.category == 1 and type(target.category) is int
    one_row = torch.tensor([[4.0, 5.0, 6.0]])
    assert target(one_row).ndim == 0 and target(one_row).item() == 5.0
    batch = torch.tensor([[4.0, 5.0, 6.0], [7.0, 8.0, 9.0]])
    assert torch.equal(target(batch), torch.tensor([5.0, 8.0]))


@pytest.mark.parametrize("cls", [ClassifierOutputTarget, ClassifierOutputSoftmaxTarget])
@pytest.mark.parametrize("bad, error", [(-1, ValueError), (1.0, TypeError), (True, TypeError),
                                        ("3", TypeError), (None, TypeError)])
def test_category_validation(cls, bad, error):
    with pytest.raises(error, match="category"):
        cls(bad)


@pytest.mark.parametrize("cls", [ClassifierOutputTarget, ClassifierOutputSoftmaxTarget, SoftmaxOutputTarget])
def test_category_out_of_range_names_category_and_class_count(cls):
    with pytest.raises(ValueError, match=r"category 5 .*3 classes"):
        cls(5)(torch.zeros(3))


def test_targets_reject_non_tensors_and_bad_ranks():
    with pytest.raises(TypeError, match="torch.Tensor"):
        ClassifierOutputTarget(0)([1.0, 2.0])
    with pytest.raises(ValueError, match=r"\(2, 3, 4\)"):
        ClassifierOutputTarget(0)(torch.zeros(2, 3, 4))


def test_softmax_target_equals_manual_softmax_and_has_its_gradient():
    logits = torch.tensor([1.0, 2.0, 0.5], requires_grad=True)
    score = ClassifierOutputSoftmaxTarget(1)(logits)
    e = np.exp([1.0, 2.0, 0.5])
    p = e / e.sum()
    assert score.ndim == 0
    assert score.item() == pytest.approx(p[1], rel=1e-6)
    # d p_1 / d z_j = p_1 * (delta_1j - p_j)
    (grad,) = torch.autograd.grad(score, logits)
    expected = p[1] * (np.eye(3)[1] - p)
    np.testing.assert_allclose(grad.numpy(), expected, rtol=1e-5, atol=1e-7)


def test_softmax_output_target_top_class_or_given_category():
    logits = torch.tensor([1.0, 3.0, 2.0])
    e = np.exp([1.0, 3.0, 2.0])
    p = e / e.sum()
    assert SoftmaxOutputTarget()(logits).item() == pytest.approx(p[1], rel=1e-6)
    assert SoftmaxOutputTarget(2)(logits).item() == pytest.approx(p[2], rel=1e-6)
    assert SoftmaxOutputTarget(0)(logits).item() == ClassifierOutputSoftmaxTarget(0)(logits).item()
    batch = torch.stack([logits, logits.flip(0)])
    np.testing.assert_allclose(SoftmaxOutputTarget()(batch).numpy(), [p[1], p[1]], rtol=1e-6)


def test_binary_target_sign_gradient_and_validation():
    logit = torch.tensor([1.5], requires_grad=True)
    positive, negative = BinaryClassifierOutputTarget(1)(logit), BinaryClassifierOutputTarget(0)(logit)
    assert positive.ndim == 0 and positive.item() == 1.5
    assert negative.ndim == 0 and negative.item() == -1.5
    (grad,) = torch.autograd.grad(negative, logit)
    assert grad.item() == -1.0
    batch = torch.tensor([[2.0], [-3.0]])
    assert torch.equal(BinaryClassifierOutputTarget(1)(batch), torch.tensor([2.0, -3.0]))
    with pytest.raises(ValueError, match="0 or 1"):
        BinaryClassifierOutputTarget(2)
    with pytest.raises(TypeError, match="category"):
        BinaryClassifierOutputTarget(True)
    with pytest.raises(ValueError, match="single logit"):
        BinaryClassifierOutputTarget(1)(torch.zeros(3))


def test_raw_scores_target_sums_and_is_the_raw_output_of_a_regressor():
    scores = torch.tensor([1.0, -2.5, 4.0], requires_grad=True)
    total = RawScoresOutputTarget()(scores)
    assert total.ndim == 0 and total.item() == 2.5
    (grad,) = torch.autograd.grad(total, scores)
    assert torch.equal(grad, torch.ones(3))
    assert RawScoresOutputTarget()(torch.tensor([3.25])).item() == 3.25
    assert RawScoresOutputTarget()(torch.tensor(3.25)).item() == 3.25


def test_target_reprs():
    assert repr(ClassifierOutputTarget(281)) == "ClassifierOutputTarget(category=281)"
    assert repr(ClassifierOutputSoftmaxTarget(3)) == "ClassifierOutputSoftmaxTarget(category=3)"
    assert repr(BinaryClassifierOutputTarget(0)) == "BinaryClassifierOutputTarget(category=0)"
    assert repr(RawScoresOutputTarget()) == "RawScoresOutputTarget()"
    assert repr(SoftmaxOutputTarget()) == "SoftmaxOutputTarget(category=None)"
