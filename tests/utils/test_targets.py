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


# ------------------------------------------------------------------ segmentation, detection, embeddings
import functools  # noqa: E402
import warnings  # noqa: E402

from torch import nn  # noqa: E402

from pytorch_grad_cam import GradCAM  # noqa: E402
from pytorch_grad_cam.base_cam import BaseCAM  # noqa: E402
from pytorch_grad_cam.utils import (  # noqa: E402
    ClassifierOutputTarget,
    DifferenceFromConceptTarget,
    FasterRCNNBoxScoreTarget,
    SemanticSegmentationTarget,
    SimilarityToConceptTarget,
    fasterrcnn_reshape_transform,
    fpn_reshape_transform,
)


def test_semantic_segmentation_target_is_the_masked_sum_of_the_class_map():
    gen = torch.Generator().manual_seed(0)
    out = torch.randn(3, 4, 5, generator=gen, dtype=torch.float64, requires_grad=True)
    mask = np.zeros((4, 5), np.float32)
    mask[1:3, 2:5] = 1.0
    mask[0, 0] = 0.5  # weights, not only a binary mask
    values = out.detach().numpy()
    want = sum(values[2, h, w] * mask[h, w] for h in range(4) for w in range(5))
    score = SemanticSegmentationTarget(2, mask)(out)
    assert score.shape == () and score.dtype == torch.float64
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


@pytest.mark.parametrize("call, error, match", [
    (lambda: SemanticSegmentationTarget(1, np.ones((4, 6)))(torch.zeros(3, 4, 5)), ValueError,
     r"mask has shape \(4, 6\) but the model output has shape \(3, 4, 5\)"),
    (lambda: SemanticSegmentationTarget(3, np.ones((4, 5)))(torch.zeros(3, 4, 5)), ValueError,
     "out of range"),
    (lambda: SemanticSegmentationTarget(-1, np.ones((4, 5))), ValueError, "non-negative"),
    (lambda: SemanticSegmentationTarget(1.0, np.ones((4, 5))), TypeError, "category"),
    (lambda: SemanticSegmentationTarget(1, "mask"), TypeError, "mask must be a numpy array"),
    (lambda: SemanticSegmentationTarget(1, np.float32(1.0)), ValueError, "got a scalar"),
    (lambda: SemanticSegmentationTarget(1, np.full((2, 2), np.nan)), ValueError, "NaN"),
    (lambda: SemanticSegmentationTarget(1, np.ones((4, 5)))({"aux": torch.zeros(3, 4, 5)}), ValueError,
     "without an 'out' entry"),
])
def test_semantic_segmentation_target_refuses_bad_arguments(call, error, match):
    with pytest.raises(error, match=match):
        call()


def _detections(requires_grad=True):
    boxes = torch.tensor([[0.0, 0.0, 10.0, 10.0],   # label 1
                          [1.0, 1.0, 11.0, 11.0],   # label 2: overlaps the first
                          [20.0, 20.0, 30.0, 40.0],  # label 1
                          [0.0, 0.0, 9.0, 10.0]], dtype=torch.float64, requires_grad=requires_grad)  # label 2
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
    assert score.shape == () and score.item() == pytest.approx(want, rel=1e-12)
    score.backward()  # gradients reach the matched detections' scores only
    np.testing.assert_array_equal(det["scores"].grad.numpy(), [0.0, 0.0, 1.0, 1.0])
    assert det["boxes"].grad[[2, 3]].abs().sum() > 0 and det["boxes"].grad[[0, 1]].abs().sum() == 0
    # the threshold: box 0 with label 1 matches detection 0 exactly (IoU 1), not with threshold 0.99 on
    # a shifted box
    assert FasterRCNNBoxScoreTarget([1], wanted[:1])(_detections()).item() == pytest.approx(1.0 + 0.9)
    shifted = wanted[:1] + np.array([[1.0, 0.0, 1.0, 0.0]])  # IoU 9/11 with detection 0
    assert FasterRCNNBoxScoreTarget([1], shifted, iou_threshold=0.85)(_detections()).item() == 0.0
    assert FasterRCNNBoxScoreTarget([1], shifted, iou_threshold=0.8)(_detections()).item() == \
        pytest.approx(9 / 11 + 0.9)


def test_box_score_target_without_a_match_is_a_connected_zero():
    det = _detections()
    score = FasterRCNNBoxScoreTarget([5], [[0.0, 0.0, 10.0, 10.0]])(det)
    assert score.item() == 0.0 and score.requires_grad
    score.backward()
    assert det["scores"].grad.abs().sum() == 0
    empty = {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64),
             "scores": torch.zeros(0, requires_grad=True)}
    score = FasterRCNNBoxScoreTarget([1], [[0.0, 0.0, 10.0, 10.0]])(empty)
    assert score.item() == 0.0 and score.requires_grad and score.shape == ()


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


@pytest.mark.parametrize("args, error, match", [
    (([1, 2], np.zeros((3, 4))), ValueError, "labels has 2 entries but bounding_boxes has 3"),
    (([1], np.zeros((1, 5))), ValueError, r"shape \(N, 4\)"),
    ((1, np.zeros((1, 4))), TypeError, "labels must be a sequence"),
    (([-1], np.zeros((1, 4))), ValueError, "non-negative"),
    (([1], np.zeros((1, 4)), 1.5), ValueError, r"iou_threshold must be in \[0, 1\)"),
    (([1], np.zeros((1, 4)), "0.5"), TypeError, "iou_threshold"),
    (([1], np.full((1, 4), np.inf)), ValueError, "NaN or Inf"),
])
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
    assert similarity.shape == () and similarity.item() == pytest.approx(cos, rel=1e-12)
    difference = DifferenceFromConceptTarget(torch.from_numpy(f)[None])(y)
    assert difference.item() == pytest.approx(1 - cos, rel=1e-12)
    similarity.backward()  # d cos / d y = f / (|y||f|) - cos * y / |y|^2
    want = f / (np.linalg.norm(v) * np.linalg.norm(f)) - cos * v / (v @ v)
    np.testing.assert_allclose(y.grad.numpy(), want, rtol=1e-10)
    # the same concept is similarity 1; rows give one score each
    assert SimilarityToConceptTarget(f)(torch.from_numpy(2 * f)).item() == pytest.approx(1.0)
    rows = torch.stack([torch.from_numpy(f), -torch.from_numpy(f)])
    np.testing.assert_allclose(DifferenceFromConceptTarget(f)(rows).numpy(), [0.0, 2.0], atol=1e-12)


@pytest.mark.parametrize("call, error, match", [
    (lambda: SimilarityToConceptTarget(np.zeros(4)), ValueError, "zero vector"),
    (lambda: SimilarityToConceptTarget(np.ones((2, 4))), ValueError, r"shape \(D,\)"),
    (lambda: DifferenceFromConceptTarget("cat"), TypeError, "features must be a numpy array"),
    (lambda: SimilarityToConceptTarget(np.ones(4))(torch.ones(5)), ValueError,
     "the model output has 5 features .* but the concept has 4"),
])
def test_concept_targets_refuse_bad_arguments(call, error, match):
    with pytest.raises(error, match=match):
        call()


# ------------------------------------------------------------------ targets as the engine takes them
class _Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.features = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU())
        self.head = nn.Linear(4, 3)

    def forward(self, x):
        return self.head(self.features(x).mean((2, 3)))


@pytest.mark.parametrize("targets", [
    2, np.int64(2), torch.tensor(2), [2, 2], (2, 2), np.array([2, 2]), torch.tensor([2, 2]),
    [np.int32(2), ClassifierOutputTarget(2)],
])
def test_class_indices_are_accepted_wherever_a_target_list_is(targets):
    model = _Tiny().eval()
    x = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    want = GradCAM(model, [model.features])(x, targets=[ClassifierOutputTarget(2)] * 2)
    resolved = BaseCAM._check_targets(targets, 2)
    assert [type(t) for t in resolved] == [ClassifierOutputTarget] * 2
    assert [t.category for t in resolved] == [2, 2]
    np.testing.assert_array_equal(GradCAM(model, [model.features])(x, targets=targets), want)


@pytest.mark.parametrize("targets, error, match", [
    ([2], ValueError, "targets has 1 entries but the batch has 2"),
    ([2, -1], ValueError, r"targets\[1\] must be a class index >= 0"),
    ([2, 1.5], TypeError, r"targets\[1\] must be a callable target"),
    ("2", TypeError, "targets"),
])
def test_bad_class_indices_are_refused(targets, error, match):
    with pytest.raises(error, match=match):
        BaseCAM._check_targets(targets, 2)


def test_a_target_with_zero_gradient_warns_and_gives_zeros():
    """A detection target that matches nothing is a connected zero: the map is all zeros with a warning
    that names the reason, not an error."""
    model = _Tiny().eval()
    x = torch.randn(1, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    with pytest.warns(RuntimeWarning, match="gradient of the target score .* is exactly zero for image"):
        maps = GradCAM(model, [model.features])(x, targets=[lambda out: out.sum() * 0.0])
    np.testing.assert_array_equal(maps, np.zeros((1, 8, 8), np.float32))


# ------------------------------------------------------------------ the feature pyramid transform
def _levels(batch=2):
    gen = torch.Generator().manual_seed(3)
    from collections import OrderedDict
    return OrderedDict([("0", torch.randn(batch, 2, 8, 6, generator=gen)),
                        ("1", torch.randn(batch, 3, 4, 3, generator=gen)),
                        ("pool", torch.randn(batch, 2, 2, 2, generator=gen))])


def _bilinear(a, size):
    """Half-pixel bilinear resize of (H, W) numpy a to size (cv2.resize's sampling), by hand."""
    import cv2
    return cv2.resize(a.astype(np.float64), (size[1], size[0]), interpolation=cv2.INTER_LINEAR)


def test_fpn_reshape_transform_resizes_and_concatenates_the_levels():
    levels = _levels()
    for size, grid, absolute in ((None, (2, 2), True), ("1", (4, 3), False), ((5, 7), (5, 7), True)):
        out = fpn_reshape_transform(levels, size=size, absolute=absolute)
        assert out.shape == (2, 7, *grid)
        planes = [level[b, c].numpy() for b in range(2) for level in levels.values()
                  for c in range(level.shape[1])]
        want = np.stack([_bilinear(np.abs(p) if absolute else p, grid) for p in planes]).reshape(2, 7, *grid)
        np.testing.assert_allclose(out.numpy(), want, atol=1e-5)
    # the reference's name: magnitudes on the coarsest ('pool') grid; a list of levels works as a dict
    torch.testing.assert_close(fasterrcnn_reshape_transform(levels), fpn_reshape_transform(levels))
    torch.testing.assert_close(fpn_reshape_transform(list(levels.values()), size=1),
                               fpn_reshape_transform(levels, size="1"))


@pytest.mark.parametrize("features, kwargs, error, match", [
    (torch.zeros(1, 2, 3, 3), {}, TypeError, "dict or a list"),
    ({}, {}, ValueError, "no pyramid levels"),
    ({"0": torch.zeros(1, 2, 3)}, {}, ValueError, r"level '0' must be a \(B, C, H, W\)"),
    ({"0": torch.zeros(1, 2, 3, 3), "1": torch.zeros(2, 2, 3, 3)}, {}, ValueError, "batch size"),
    ({"0": torch.zeros(1, 2, 3, 3)}, {"size": "p6"}, ValueError, "not a level"),
    ({"0": torch.zeros(1, 2, 3, 3)}, {"size": (0, 3)}, ValueError, "positive int"),
])
def test_fpn_reshape_transform_refuses_bad_input(features, kwargs, error, match):
    with pytest.raises(error, match=match):
        fpn_reshape_transform(features, **kwargs)


class _Pyramid(nn.Module):
    """A backbone returning a dict of two levels, and a head that reads only the first one."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.stem = nn.Conv2d(3, 4, 3, padding=1)
        self.down = nn.Conv2d(4, 4, 3, stride=2, padding=1)

    def forward(self, x):
        a = self.stem(x)
        return {"0": a, "pool": self.down(a)}


class _PyramidNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.backbone = _Pyramid()
        self.head = nn.Linear(4, 3)

    def forward(self, x):
        levels = self.backbone(x)
        return self.head(levels["0"].relu().mean((2, 3)))


def test_a_layer_returning_a_dict_of_levels_through_fpn_reshape_transform():
    """The engine captures each level, differentiates each (zeros for the unused 'pool' level) and
    hands the dicts of activations and gradients to the transform: GradCAM by hand on the result."""
    model = _PyramidNet().eval()
    x = torch.randn(1, 3, 8, 8, generator=torch.Generator().manual_seed(2))
    transform = functools.partial(fpn_reshape_transform, size="0", absolute=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        maps = GradCAM(model, [model.backbone], reshape_transform=transform)(x, targets=[1])
    xg = x.clone()
    levels = model.backbone(xg)
    a = levels["0"].detach().requires_grad_(True)
    score = model.head(a.relu().mean((2, 3)))[0, 1]
    (g,) = torch.autograd.grad(score, a)
    acts = torch.cat([a.detach(), torch.nn.functional.interpolate(levels["pool"].detach(), size=(8, 8),
                                                                 mode="bilinear")], 1)
    grads = torch.cat([g, torch.zeros(1, 4, 8, 8)], 1)  # no gradient reaches 'pool': zeros
    cam = (grads.mean((2, 3))[:, :, None, None] * acts).sum(1).relu()[0].numpy()
    cam = (cam - cam.min()) / (cam.max() - cam.min() + 1e-7)
    assert cam.std() > 0.05
    np.testing.assert_allclose(maps[0], cam, rtol=1e-4, atol=1e-5)  # eps of the two normalisations


def test_a_dict_layer_without_a_transform_is_refused_clearly():
    model = _PyramidNet().eval()
    with pytest.raises(TypeError, match="'backbone' returns dict.*pass a reshape_transform"):
        GradCAM(model, [model.backbone])(torch.randn(1, 3, 8, 8), targets=[1])
    with pytest.raises(TypeError, match="reshape_transform must return a tensor"):
        GradCAM(model, [model.backbone], reshape_transform=lambda levels: levels)(torch.randn(1, 3, 8, 8),
                                                                                   targets=[1])
