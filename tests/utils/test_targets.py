"""pytorch_grad_cam.utils.model_targets: every target against its formula written out by hand (the plain
class score, softmax, binary and raw-score targets, and those beyond: ReST, FinerCAM's, segmentation,
detection, embeddings), and targets as the engine takes them."""

import math

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
from pytorch_grad_cam.utils.model_targets import ClassifierOutputReST, FinerWeightedTarget


def test_rest_is_the_logit_plus_the_log_probability():
    logits = torch.tensor([1.0, -0.5, 2.0, 0.25], dtype=torch.float64, requires_grad=True)
    values = logits.detach().numpy()
    log_p = values[2] - math.log(np.exp(values).sum())
    score = ClassifierOutputReST(2)(logits)
    assert score.shape == ()
    assert score.item() == pytest.approx(values[2] + log_p, rel=1e-12)
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
    assert batch.shape == (2,)
    assert batch[1].item() == pytest.approx(want, rel=1e-9)


@pytest.mark.parametrize(
    ("args", "error", "match"),
    [
        ((1, [], 1.0), ValueError, "comparison_categories is empty"),
        ((1, 3, 1.0), TypeError, "comparison_categories must be a sequence"),
        ((1, [2, -1], 1.0), ValueError, "non-negative"),
        # The one rule: the right type (a float) out of range (NaN) is a ValueError, as for FinerCAM.
        ((1, [2], float("nan")), ValueError, "alpha must be a finite float, got nan"),
        ((1, [2], "1"), TypeError, "alpha must be a finite float, got str '1'"),
        ((1, [2, -1], 1.0), ValueError, r"comparison_categories\[1\] must be a non-negative int"),
        ((True, [2], 1.0), TypeError, "main_category"),
    ],
)
def test_finer_weighted_target_refuses_bad_arguments(args, error, match):
    with pytest.raises(error, match=match):
        FinerWeightedTarget(*args)


# ------------------------------------------------------------------ segmentation, detection, embeddings

from pytorch_grad_cam import GradCAM  # noqa: E402
from pytorch_grad_cam.base_cam import normalize_targets  # noqa: E402
from pytorch_grad_cam.utils import (  # noqa: E402
    DifferenceFromConceptTarget,
    FasterRCNNBoxScoreTarget,
    SemanticSegmentationTarget,
    SimilarityToConceptTarget,
)
from tests.models import TinyConvHead  # noqa: E402


def test_semantic_segmentation_target_is_the_masked_sum_of_the_class_map():
    gen = torch.Generator().manual_seed(0)
    out = torch.randn(3, 4, 5, generator=gen, dtype=torch.float64, requires_grad=True)
    mask = np.zeros((4, 5), np.float32)
    mask[1:3, 2:5] = 1.0
    mask[0, 0] = 0.5  # weights, not only a binary mask
    values = out.detach().numpy()
    want = sum(values[2, h, w] * mask[h, w] for h in range(4) for w in range(5))
    score = SemanticSegmentationTarget(2, mask)(out)
    assert score.shape == ()
    assert score.dtype == torch.float64
    assert score.item() == pytest.approx(want, rel=1e-12)
    score.backward()  # d score / d out[c] = mask for c == 2, else 0
    want_grad = np.zeros((3, 4, 5))
    want_grad[2] = mask
    np.testing.assert_array_equal(out.grad.numpy(), want_grad)
    # torchvision's dict output (one image's, as the engine's select_output gives it), a bool tensor mask,
    # and a (1, C, H, W) output
    bool_mask = torch.from_numpy(mask > 0)
    want_bool = values[2][mask > 0].sum()
    target = SemanticSegmentationTarget(np.int64(2), bool_mask)
    assert target({"out": out.detach(), "aux": out.detach() * 0}).item() == pytest.approx(want_bool)
    assert target(out.detach()[None]).item() == pytest.approx(want_bool)


@pytest.mark.parametrize(
    ("call", "error", "match"),
    [
        (
            lambda: SemanticSegmentationTarget(1, np.ones((4, 6)))(torch.zeros(3, 4, 5)),
            ValueError,
            r"mask has shape \(4, 6\) but the model output has shape \(3, 4, 5\)",
        ),
        (
            lambda: SemanticSegmentationTarget(3, np.ones((4, 5)))(torch.zeros(3, 4, 5)),
            ValueError,
            "out of range",
        ),
        (lambda: SemanticSegmentationTarget(-1, np.ones((4, 5))), ValueError, "non-negative"),
        (lambda: SemanticSegmentationTarget(1.0, np.ones((4, 5))), TypeError, "category"),
        (lambda: SemanticSegmentationTarget(1, "mask"), TypeError, "mask must be a numpy array"),
        (lambda: SemanticSegmentationTarget(1, np.float32(1.0)), ValueError, "got a scalar"),
        (lambda: SemanticSegmentationTarget(1, np.full((2, 2), np.nan)), ValueError, "NaN"),
        (
            lambda: SemanticSegmentationTarget(1, np.ones((4, 5)))({"aux": torch.zeros(3, 4, 5)}),
            ValueError,
            "without an 'out' entry",
        ),
    ],
)
def test_semantic_segmentation_target_refuses_bad_arguments(call, error, match):
    with pytest.raises(error, match=match):
        call()


def _detections(requires_grad=True):
    boxes = torch.tensor(
        [
            [0.0, 0.0, 10.0, 10.0],  # label 1
            [1.0, 1.0, 11.0, 11.0],  # label 2: overlaps the first
            [20.0, 20.0, 30.0, 40.0],  # label 1
            [0.0, 0.0, 9.0, 10.0],
        ],
        dtype=torch.float64,
        requires_grad=requires_grad,
    )  # label 2
    scores = torch.tensor([0.9, 0.8, 0.7, 0.6], dtype=torch.float64, requires_grad=requires_grad)
    return {"boxes": boxes, "labels": torch.tensor([1, 2, 1, 2]), "scores": scores}


def _iou(a, b):
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union


def test_box_score_target_sums_iou_plus_score_of_the_best_same_label_detection():
    det = _detections()
    wanted = np.array([[0.0, 0.0, 10.0, 10.0], [21.0, 20.0, 30.0, 40.0], [0.5, 0.0, 10.0, 10.0]])
    boxes = det["boxes"].detach().numpy()
    # box 0, label 2: detections 1 and 3 have label 2; detection 3 overlaps it more (0.9 vs 81/119)
    iou_a = max(_iou(wanted[0], boxes[1]), _iou(wanted[0], boxes[3]))
    assert iou_a == pytest.approx(0.9)
    # box 1, label 1: detection 2 (iou 0.9); box 2, label 7: no detection of that class
    iou_b = _iou(wanted[1], boxes[2])
    want = (iou_a + 0.6) + (iou_b + 0.7)
    score = FasterRCNNBoxScoreTarget([2, 1, 7], wanted)(det)
    assert score.shape == ()
    assert score.item() == pytest.approx(want, rel=1e-12)
    score.backward()  # gradients reach the matched detections' scores only
    np.testing.assert_array_equal(det["scores"].grad.numpy(), [0.0, 0.0, 1.0, 1.0])
    assert det["boxes"].grad[[2, 3]].abs().sum() > 0
    assert det["boxes"].grad[[0, 1]].abs().sum() == 0
    # the threshold: box 0 with label 1 matches detection 0 exactly (IoU 1), not with threshold 0.99 on
    # a shifted box
    assert FasterRCNNBoxScoreTarget([1], wanted[:1])(_detections()).item() == pytest.approx(1.0 + 0.9)
    shifted = wanted[:1] + np.array([[1.0, 0.0, 1.0, 0.0]])  # IoU 9/11 with detection 0
    assert FasterRCNNBoxScoreTarget([1], shifted, iou_threshold=0.85)(_detections()).item() == 0.0
    assert FasterRCNNBoxScoreTarget([1], shifted, iou_threshold=0.8)(_detections()).item() == pytest.approx(
        9 / 11 + 0.9
    )


def test_box_score_target_without_a_match_is_a_connected_zero():
    det = _detections()
    score = FasterRCNNBoxScoreTarget([5], [[0.0, 0.0, 10.0, 10.0]])(det)
    assert score.item() == 0.0
    assert score.requires_grad
    score.backward()
    assert det["scores"].grad.abs().sum() == 0
    empty = {
        "boxes": torch.zeros(0, 4),
        "labels": torch.zeros(0, dtype=torch.int64),
        "scores": torch.zeros(0, requires_grad=True),
    }
    score = FasterRCNNBoxScoreTarget([1], [[0.0, 0.0, 10.0, 10.0]])(empty)
    assert score.item() == 0.0
    assert score.requires_grad
    assert score.shape == ()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_targets_follow_the_output_to_cuda():
    det = {k: v.detach().cuda() for k, v in _detections().items()}
    assert FasterRCNNBoxScoreTarget([1], [[0.0, 0.0, 10.0, 10.0]])(det).device.type == "cuda"
    out = torch.ones(3, 4, 5, device="cuda")
    assert SemanticSegmentationTarget(1, np.ones((4, 5)))(out).item() == 20.0
    assert SimilarityToConceptTarget(np.ones(4))(torch.ones(4, device="cuda")).item() == pytest.approx(1.0)


def test_targets_move_their_tensors_to_the_output_dtype():
    # A float64 mask/box/concept on a float32 output (and the reverse) computes in the output's dtype.
    out = torch.ones(2, 3, 3, dtype=torch.float32)
    assert SemanticSegmentationTarget(0, torch.ones(3, 3, dtype=torch.float64))(out).dtype == torch.float32
    det = {k: v.detach().float() if v.is_floating_point() else v for k, v in _detections().items()}
    assert FasterRCNNBoxScoreTarget([1], np.array([[0.0, 0.0, 10.0, 10.0]]))(det).dtype == torch.float32
    assert SimilarityToConceptTarget(torch.ones(4, dtype=torch.float64))(torch.ones(4)).dtype == torch.float32


@pytest.mark.parametrize(
    ("args", "error", "match"),
    [
        (([1, 2], np.zeros((3, 4))), ValueError, "labels has 2 entries but bounding_boxes has 3"),
        (([1], np.zeros((1, 5))), ValueError, r"shape \(N, 4\)"),
        ((1, np.zeros((1, 4))), TypeError, "labels must be a sequence"),
        (([-1], np.zeros((1, 4))), ValueError, "non-negative"),
        (
            ([1], np.zeros((1, 4)), 1.5),
            ValueError,
            r"iou_threshold must be a finite float >= 0 and < 1, got 1.5",
        ),
        (
            ([1], np.zeros((1, 4)), float("nan")),
            ValueError,
            r"iou_threshold must be a finite float >= 0 and < 1",
        ),
        (([1], np.zeros((1, 4)), "0.5"), TypeError, "iou_threshold"),
        (([1], np.full((1, 4), np.inf)), ValueError, "NaN or Inf"),
    ],
)
def test_box_score_target_refuses_bad_arguments(args, error, match):
    with pytest.raises(error, match=match):
        FasterRCNNBoxScoreTarget(*args)


def test_box_score_target_refuses_a_classifier_output():
    with pytest.raises(TypeError, match="expects one image's detections"):
        FasterRCNNBoxScoreTarget([1], [[0, 0, 1, 1]])(torch.zeros(10))


def test_concept_targets_are_cosine_similarity_and_its_complement():
    y = torch.tensor([0.5, -1.0, 2.0, 0.25], dtype=torch.float64, requires_grad=True)
    f = np.array([1.0, 0.5, -0.5, 2.0])
    v = y.detach().numpy()
    cos = float(v @ f / (np.linalg.norm(v) * np.linalg.norm(f)))
    similarity = SimilarityToConceptTarget(f)(y)
    assert similarity.shape == ()
    assert similarity.item() == pytest.approx(cos, rel=1e-12)
    difference = DifferenceFromConceptTarget(torch.from_numpy(f)[None])(y)
    assert difference.item() == pytest.approx(1 - cos, rel=1e-12)
    similarity.backward()  # d cos / d y = f / (|y||f|) - cos * y / |y|^2
    want = f / (np.linalg.norm(v) * np.linalg.norm(f)) - cos * v / (v @ v)
    np.testing.assert_allclose(y.grad.numpy(), want, rtol=1e-10)
    # the same concept is similarity 1; rows give one score each
    assert SimilarityToConceptTarget(f)(torch.from_numpy(2 * f)).item() == pytest.approx(1.0)
    rows = torch.stack([torch.from_numpy(f), -torch.from_numpy(f)])
    np.testing.assert_allclose(DifferenceFromConceptTarget(f)(rows).numpy(), [0.0, 2.0], atol=1e-12)


@pytest.mark.parametrize(
    ("call", "error", "match"),
    [
        (lambda: SimilarityToConceptTarget(np.zeros(4)), ValueError, "zero vector"),
        (lambda: SimilarityToConceptTarget(np.ones((2, 4))), ValueError, r"shape \(D,\)"),
        (lambda: DifferenceFromConceptTarget("cat"), TypeError, "features must be a numpy array"),
        (
            lambda: SimilarityToConceptTarget(np.ones(4))(torch.ones(5)),
            ValueError,
            "the model output has 5 features .* but the concept has 4",
        ),
    ],
)
def test_concept_targets_refuse_bad_arguments(call, error, match):
    with pytest.raises(error, match=match):
        call()


# ------------------------------------------------------------------ targets as the engine takes them
@pytest.mark.parametrize(
    "targets",
    [
        2,
        np.int64(2),
        torch.tensor(2),
        [2, 2],
        (2, 2),
        np.array([2, 2]),
        torch.tensor([2, 2]),
        [np.int32(2), ClassifierOutputTarget(2)],
    ],
)
def test_class_indices_are_accepted_wherever_a_target_list_is(targets):
    model = TinyConvHead().eval()
    x = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    want = GradCAM(model, [model.features])(x, targets=[ClassifierOutputTarget(2)] * 2)
    resolved = normalize_targets(targets, 2)
    assert [type(t) for t in resolved] == [ClassifierOutputTarget] * 2
    assert [t.category for t in resolved] == [2, 2]
    np.testing.assert_array_equal(GradCAM(model, [model.features])(x, targets=targets), want)


@pytest.mark.parametrize(
    ("targets", "error", "match"),
    [
        ([2], ValueError, "targets has 1 entries but the batch has 2"),
        ([2, -1], ValueError, r"targets\[1\] must be a class index >= 0"),
        ([2, 1.5], TypeError, r"targets\[1\] must be a callable target"),
        ("2", TypeError, "targets"),
    ],
)
def test_bad_class_indices_are_refused(targets, error, match):
    with pytest.raises(error, match=match):
        normalize_targets(targets, 2)


def test_a_target_with_zero_gradient_warns_and_gives_zeros():
    """A detection target that matches nothing is a connected zero: the map is all zeros with a warning
    that names the reason, not an error."""
    model = TinyConvHead().eval()
    x = torch.randn(1, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    with (
        pytest.warns(RuntimeWarning, match="gradient of the target score .* is exactly zero for image"),
        pytest.warns(RuntimeWarning, match=r"CAM of layer 'features' is constant for image\(s\) \[0\]"),
    ):
        maps = GradCAM(model, [model.features])(x, targets=[lambda out: out.sum() * 0.0])
    np.testing.assert_array_equal(maps, np.zeros((1, 8, 8), np.float32))


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
    assert target.category == 1
    assert type(target.category) is int
    one_row = torch.tensor([[4.0, 5.0, 6.0]])
    assert target(one_row).ndim == 0
    assert target(one_row).item() == 5.0
    batch = torch.tensor([[4.0, 5.0, 6.0], [7.0, 8.0, 9.0]])
    assert torch.equal(target(batch), torch.tensor([5.0, 8.0]))


@pytest.mark.parametrize("cls", [ClassifierOutputTarget, ClassifierOutputSoftmaxTarget])
@pytest.mark.parametrize(
    ("bad", "error"),
    [(-1, ValueError), (1.0, TypeError), (True, TypeError), ("3", TypeError), (None, TypeError)],
)
def test_category_validation(cls, bad, error):
    with pytest.raises(error, match="category"):
        cls(bad)


@pytest.mark.parametrize("cls", [ClassifierOutputTarget, ClassifierOutputSoftmaxTarget, SoftmaxOutputTarget])
def test_category_out_of_range_names_category_and_class_count(cls):
    with pytest.raises(ValueError, match=r"category 5 .*3 classes"):
        cls(5)(torch.zeros(3))


def test_targets_reject_non_tensors_and_bad_ranks():
    with pytest.raises(TypeError, match=r"torch\.Tensor"):
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
    assert positive.ndim == 0
    assert positive.item() == 1.5
    assert negative.ndim == 0
    assert negative.item() == -1.5
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
    assert total.ndim == 0
    assert total.item() == 2.5
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
