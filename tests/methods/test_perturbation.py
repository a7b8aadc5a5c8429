"""SS-CAM, IS-CAM and the shared Score-CAM loop against plain references of their papers' formulas;
AblationCAM on transformer token outputs (ViT-like, Swin) against a full forward pass per ablated channel.

The references here are written out with explicit loops in float64: their own separable linear
interpolation, their own min-max scaling, one model call per masked input. SS-CAM's noise is the only
thing a reference has to share with the library: it draws the same ``torch.randn`` sequence from a
generator seeded the same way (one draw per model input, in channel-then-sample order, restarted for
every image), which is the documented contract.
"""

from __future__ import annotations

import warnings
from collections import OrderedDict

import numpy as np
import pytest
import torch
import torchvision
from torch import nn

from pytorch_grad_cam import ISCAM, SSCAM, AblationCAM, ScoreCAM
from pytorch_grad_cam.utils.model_targets import FasterRCNNBoxScoreTarget
from pytorch_grad_cam.utils.reshape_transforms import (
    fpn_reshape_transform,
    swinT_reshape_transform,
    vit_reshape_transform,
)
from tests.models import (
    CountCalls,
    SmallNet,
    TinyFPNBackbone,
    TinySegNet,
    TinySwin,
    TinyViT,
    mobilenet_fasterrcnn,
)
from tests.references.perturbation import (
    layer_output,
    maps_from_weights,
    reference_ablation,
    reference_ablation_segmentation,
    reference_iscam,
    reference_sscam,
    score_masks,
    softmax,
)


# ============================================================================ tiny models
def small_net(seed: int = 0) -> SmallNet:
    torch.manual_seed(seed)
    model = SmallNet().eval()
    with torch.no_grad():
        model.fc.weight.mul_(8)
    return model


def small_input(batch: int = 2, seed: int = 1) -> torch.Tensor:
    return torch.randn(batch, 3, 10, 12, generator=torch.Generator().manual_seed(seed))


def assert_nontrivial(weights: np.ndarray, maps: np.ndarray) -> None:
    """Weights that are not all alike and maps that are not flat: a check that could fail."""
    assert (weights.max(1) - weights.min(1)).min() > 1e-3, weights
    for m in maps:
        assert m.max() - m.min() > 0.5, m
        assert 0.01 < (m > 0.5).mean() < 0.95, m


# ============================================================================ SS-CAM
@pytest.mark.parametrize("noise", ["mask", "input"])
def test_sscam_matches_reference(noise):
    model, x, classes = small_net(), small_input(), [1, 3]
    ref_w, ref_maps = reference_sscam(model, x, classes, num_samples=3, std=0.5, seed=7, noise=noise)
    assert_nontrivial(ref_w, ref_maps)
    cam = SSCAM(model, [model.act], num_samples=3, std=0.5, seed=7, noise=noise, batch_size=4)
    np.testing.assert_allclose(cam(x, targets=classes), ref_maps, atol=2e-4)


def test_sscam_default_std_and_samples_match_reference():
    """The paper's defaults (35 samples, std 2) on one image."""
    model, x, classes = small_net(seed=3), small_input(1, seed=4), [2]
    ref_w, ref_maps = reference_sscam(model, x, classes, num_samples=35, std=2.0, seed=0)
    assert (ref_w.max() - ref_w.min()) > 1e-3
    assert ref_maps.max() - ref_maps.min() > 0.5
    cam = SSCAM(model, [model.act], seed=0, batch_size=64)
    assert (cam.num_samples, cam.std) == (35, 2.0)
    np.testing.assert_allclose(cam(x, targets=classes), ref_maps, atol=2e-4)


def test_sscam_without_noise_is_scorecam():
    model, x = small_net(), small_input()
    expected = ScoreCAM(model, [model.act])(x, targets=[1, 3])
    np.testing.assert_allclose(
        SSCAM(model, [model.act], num_samples=2, std=0.0, seed=1)(x, targets=[1, 3]), expected, atol=1e-6
    )


def test_sscam_noise_changes_the_map():
    model, x = small_net(), small_input()
    plain = ScoreCAM(model, [model.act])(x, targets=[1, 3])
    noisy = SSCAM(model, [model.act], num_samples=2, std=2.0, seed=1)(x, targets=[1, 3])
    assert np.abs(plain - noisy).max() > 1e-2


def test_sscam_seed():
    model, x = small_net(), small_input()

    def run(seed, **kwargs):
        return SSCAM(model, [model.act], num_samples=2, std=1.0, seed=seed, **kwargs)(x, targets=[1, 3])

    np.testing.assert_array_equal(run(5), run(5))
    np.testing.assert_array_equal(run(5, batch_size=1), run(5, batch_size=64))  # batching draws the same
    assert np.abs(run(5) - run(6)).max() > 1e-3
    assert np.abs(run(None) - run(None)).max() > 1e-4  # no seed: every call draws afresh
    assert not SSCAM.deterministic
    # Each image's noise restarts: an image's map does not depend on the rest of its batch.
    single = SSCAM(model, [model.act], num_samples=2, std=1.0, seed=5)(x[1:], targets=[3])
    np.testing.assert_allclose(run(5)[1:], single, atol=1e-6)


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"num_samples": 0}, ValueError, "num_samples must be an int >= 1, got 0"),
        ({"num_samples": 2.0}, TypeError, "num_samples must be an int >= 1, got float"),
        ({"std": -1.0}, ValueError, "std must be a finite float >= 0, got -1.0"),
        ({"std": float("nan")}, ValueError, "std must be a finite float >= 0, got nan"),
        ({"seed": 1.5}, TypeError, "seed must be None or an int, got float"),
        ({"noise": "activations"}, ValueError, "noise must be 'mask'"),
    ],
)
def test_sscam_bad_arguments(kwargs, error, match):
    model = small_net()
    with pytest.raises(error, match=match):
        SSCAM(model, [model.act], **kwargs)


# ============================================================================ IS-CAM
def test_iscam_matches_reference():
    model, x, classes = small_net(seed=2), small_input(seed=5), [0, 2]
    ref_w, ref_maps = reference_iscam(model, x, classes, num_samples=4)
    assert_nontrivial(ref_w, ref_maps)
    cam = ISCAM(model, [model.act], num_samples=4, batch_size=3)
    np.testing.assert_allclose(cam(x, targets=classes), ref_maps, atol=2e-4)


def test_iscam_default_matches_reference():
    model, x, classes = small_net(seed=3), small_input(1, seed=4), [2]
    _, ref_maps = reference_iscam(model, x, classes, num_samples=10)
    cam = ISCAM(model, [model.act])
    assert cam.num_samples == 10
    assert ISCAM.deterministic
    np.testing.assert_allclose(cam(x, targets=classes), ref_maps, atol=2e-4)
    # One sample: c_1 = 1 / N * 1 = 1, the plain Score-CAM mask.
    np.testing.assert_allclose(
        ISCAM(model, [model.act], num_samples=1)(x, targets=classes),
        ScoreCAM(model, [model.act])(x, targets=classes),
        atol=1e-6,
    )


def test_iscam_bad_num_samples():
    model = small_net()
    with pytest.raises(ValueError, match="num_samples must be an int >= 1, got -2"):
        ISCAM(model, [model.act], num_samples=-2)


# ============================================================================ the shared stream
@pytest.mark.parametrize(
    ("cls", "kwargs", "per_channel"),
    [(ScoreCAM, {}, 1), (SSCAM, {"num_samples": 3, "seed": 0}, 3), (ISCAM, {"num_samples": 4}, 4)],
)
@pytest.mark.parametrize("batch_size", [1, 4, 7, 100])
def test_one_streamed_loop(cls, kwargs, per_channel, batch_size):
    """Every method: C * n masked inputs per image, in calls of at most batch_size, none wasted."""
    inner = small_net()
    model = CountCalls(inner)
    x = small_input()
    cam = cls(model, [inner.act], batch_size=batch_size, **kwargs)
    cam(x, targets=[1, 3])
    channels = inner.conv2.out_channels
    perturbed = model.batches[1:]  # the first call is the unperturbed batch
    assert sum(perturbed) == x.shape[0] * channels * per_channel
    assert max(perturbed) <= batch_size
    per_image = -(-channels * per_channel // batch_size)
    assert len(perturbed) == x.shape[0] * per_image


# ============================================================================ constant channels
def constant_channels_net() -> SmallNet:
    """small_net with two of act's 5 channels constant: 0 is dead after the ReLU (weights 0, bias -1), 3 is
    0.5 everywhere (weights 0, bias 0.5). Both masks are all zeros: the same masked input."""
    model = small_net()
    with torch.no_grad():
        model.conv2.weight[[0, 3]] = 0.0
        model.conv2.bias[0] = -1.0
        model.conv2.bias[3] = 0.5
    return model


@pytest.mark.parametrize(("cls", "kwargs", "per_mask"), [(ScoreCAM, {}, 1), (ISCAM, {"num_samples": 3}, 3)])
@pytest.mark.parametrize("batch_size", [2, 100])
def test_constant_channels_are_scored_once(cls, kwargs, per_mask, batch_size):
    """Score-CAM and IS-CAM score the constant channels' all-zero mask once per image and share its scores:
    the maps of scoring every channel on its own (the loop as it was, kept by a subclass that does not share)
    to 1e-6 and the float64 references to 1e-5, with (5 - 2 + 1) instead of 5 masks per image run."""
    inner = constant_channels_net()
    x = small_input()
    flat = layer_output(inner, inner.act, x).reshape(2, 5, -1)
    assert (flat.max(2) == flat.min(2)).tolist() == [[True, False, False, True, False]] * 2  # the case

    class EveryChannel(cls):  # no name: not registered
        shares_constant_masks = False

    model, every_model = CountCalls(inner), CountCalls(inner)
    shared = cls(model, [inner.act], batch_size=batch_size, **kwargs)(x, targets=[1, 3])
    every = EveryChannel(every_model, [inner.act], batch_size=batch_size, **kwargs)(x, targets=[1, 3])
    assert sum(model.batches[1:]) == 2 * (5 - 2 + 1) * per_mask  # the first call: the unperturbed batch
    assert sum(every_model.batches[1:]) == 2 * 5 * per_mask
    assert max(model.batches[1:]) <= batch_size
    np.testing.assert_allclose(shared, every, rtol=0, atol=1e-6)
    if cls is ScoreCAM:
        from tests.references import reference_cam

        want = reference_cam("scorecam", inner, [inner.act], x, [1, 3])
    else:
        want = reference_iscam(inner, x, [1, 3], num_samples=3)[1]
    np.testing.assert_allclose(shared, want, rtol=0, atol=1e-5)
    assert (shared.reshape(2, -1).max(1) - shared.reshape(2, -1).min(1)).min() > 0.5  # not a flat map


def test_sscam_scores_every_channel_its_noise_differs():
    inner = constant_channels_net()
    model = CountCalls(inner)
    assert SSCAM.shares_constant_masks is False
    SSCAM(model, [inner.act], num_samples=2, seed=0, batch_size=4)(small_input(), targets=[1, 3])
    assert sum(model.batches[1:]) == 2 * 5 * 2


def test_scored_channels():
    activations = torch.tensor([[[0.0, 0.0]], [[1.0, 2.0]], [[0.5, 0.5]], [[3.0, -1.0]]])  # (C=4, 1, 2)
    assert ScoreCAM.scored_channels(activations).tolist() == [1, 3, -1]
    assert ScoreCAM.scored_channels(activations[[1, 3]]).tolist() == [0, 1]  # none constant: no shared row
    assert SSCAM.scored_channels(activations).tolist() == [0, 1, 2, 3]


def test_ablationcam_vit_tokens_ablate_the_embedding_channel():
    torch.manual_seed(0)
    model = TinyViT(encoder_blocks=2).eval().double()
    x = torch.randn(2, 3, 12, 16, generator=torch.Generator().manual_seed(1)).double()
    classes = [1, 2]
    layer = model.blocks[0]
    weights = reference_ablation(model, layer, x, classes)  # (B, D)
    tokens = torch.from_numpy(layer_output(model, layer, x))
    acts = vit_reshape_transform(tokens, height=3, width=4).numpy()  # (B, D, 3, 4)
    expected = maps_from_weights(acts, weights, (12, 16))
    assert_nontrivial(weights, expected)

    def reshape(t):
        return vit_reshape_transform(t, height=3, width=4)

    cam = AblationCAM(model, [layer], reshape_transform=reshape, batch_size=3)
    np.testing.assert_allclose(cam(x, targets=classes), expected, atol=1e-5)


def test_ablationcam_swin_like_channels_last():
    torch.manual_seed(3)
    model = TinySwin().eval().double()
    x = torch.randn(2, 3, 8, 10, generator=torch.Generator().manual_seed(2)).double()
    classes = [0, 3]
    weights = reference_ablation(model, model.stage1, x, classes)
    acts = layer_output(model, model.stage1, x).transpose(0, 3, 1, 2)  # (B, C, H, W)
    expected = maps_from_weights(acts, weights, (8, 10))
    assert_nontrivial(weights, expected)
    cam = AblationCAM(model, [model.stage1], reshape_transform=swinT_reshape_transform, batch_size=4)
    np.testing.assert_allclose(cam(x, targets=classes), expected, atol=1e-5)


@pytest.mark.slow  # model scale: a torchvision swin_t, 7-40 s on 2 CPU cores
def test_ablationcam_torchvision_swin_t():
    """torchvision's swin_t (random weights) at 64x64 on its first stage (96 channels, (B, 16, 16, 96))."""
    torch.manual_seed(0)
    model = torchvision.models.swin_t(weights=None).eval()
    x = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    layer = model.features[1]
    classes = [int(model(x).argmax())]
    weights = reference_ablation(model, layer, x, classes)
    acts = layer_output(model, layer, x).transpose(0, 3, 1, 2)
    expected = maps_from_weights(acts, weights, (64, 64))
    assert_nontrivial(weights, expected)
    cam = AblationCAM(model, [layer], reshape_transform=swinT_reshape_transform, batch_size=96)
    np.testing.assert_allclose(cam(x, targets=classes), expected, atol=1e-3)


# ============================================================================ Faster R-CNN (FPN dict output)
def tiny_faster_rcnn():
    """torchvision's FasterRCNN (transform, RPN, RoI heads, postprocess) on a tiny FPN backbone; random
    weights, so every proposal is kept (box_score_thresh=0)."""
    from torchvision.models.detection import FasterRCNN
    from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
    from torchvision.models.detection.rpn import AnchorGenerator

    torch.manual_seed(0)
    return FasterRCNN(
        TinyFPNBackbone(),
        min_size=64,
        max_size=64,
        rpn_anchor_generator=AnchorGenerator(((16,), (32,)), ((1.0,), (1.0,))),
        box_roi_pool=torchvision.ops.MultiScaleRoIAlign(["0", "1"], 4, 2),
        box_head=TwoMLPHead(5 * 16, 16),
        box_predictor=FastRCNNPredictor(16, 3),
        box_score_thresh=0.0,
        rpn_pre_nms_top_n_test=30,
        rpn_post_nms_top_n_test=10,
        box_detections_per_img=5,
    ).eval()


def detector_case():
    model = tiny_faster_rcnn()
    x = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        detections = model(x)[0]
    assert len(detections["boxes"]) >= 2
    target = FasterRCNNBoxScoreTarget(detections["labels"][:2], detections["boxes"][:2], iou_threshold=0.5)
    return model, x, target


def fpn_levels(model, x) -> OrderedDict:
    with torch.no_grad():
        return model.backbone(model.transform([x[0]])[0].tensors)


def test_ablationcam_faster_rcnn_fpn_levels():
    """Reshaped channel k is level k // 5's channel k % 5 (fpn_reshape_transform concatenates the levels in
    order); ablating it = that one channel of that one level set to min - 1e7, a full forward pass each."""
    model, x, target = detector_case()
    levels = fpn_levels(model, x)
    lowest = min(float(v.min()) for v in levels.values())
    value = 0.0 if lowest >= 0 else lowest - 1e7
    with torch.no_grad():
        y = float(target(model(x)[0]))
        weights = []
        for name, level in levels.items():
            for c in range(level.shape[1]):

                def ablate(module, inputs, output, name=name, c=c):
                    output = OrderedDict((k, v.clone()) for k, v in output.items())
                    output[name][:, c] = value
                    return output

                handle = model.backbone.register_forward_hook(ablate)
                y_k = float(target(model(x)[0]))
                handle.remove()
                weights.append((y - y_k) / y)
    weights = np.array(weights)[None]
    acts = fpn_reshape_transform(levels).double().numpy()  # (1, 10, 2, 2): the pyramid at the coarsest grid
    expected = maps_from_weights(acts, weights, (64, 64))
    assert_nontrivial(weights, expected)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    cam = AblationCAM(model, [model.backbone], reshape_transform=fpn_reshape_transform, batch_size=3)
    np.testing.assert_allclose(cam(x, targets=[target]), expected, atol=1e-4)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert "forward" not in model.backbone.__dict__  # the swapped forward was restored


@pytest.mark.slow  # model scale: a torchvision detector, 7-40 s on 2 CPU cores
def test_scorecam_family_on_a_detector():
    """Masking the input works for a detector as for a classifier: ScoreCAM's masks are the reshaped
    pyramid's channels (upsampled to the input), the score the box target on each masked input."""
    model, x, target = detector_case()
    # Masked images rarely keep a detection at the box: any overlap counts here, so the scores differ.
    target = FasterRCNNBoxScoreTarget(target.labels, target.bounding_boxes, iou_threshold=0.0)
    acts = fpn_reshape_transform(fpn_levels(model, x)).double().numpy()[0]  # (10, 2, 2)
    masks = score_masks(acts, (64, 64))
    with torch.no_grad():
        s = np.array(
            [float(target(model((x[0].double() * torch.from_numpy(m)).float()[None])[0])) for m in masks]
        )
    weights = softmax(s)
    expected = maps_from_weights(acts[None], weights[None], (64, 64))
    assert_nontrivial(weights[None], expected)
    cam = ScoreCAM(model, [model.backbone], reshape_transform=fpn_reshape_transform, batch_size=4)
    np.testing.assert_allclose(cam(x, targets=[target]), expected, atol=1e-4)
    for cls, kwargs in ((SSCAM, {"num_samples": 2, "std": 0.2, "seed": 0}), (ISCAM, {"num_samples": 2})):
        maps = cls(model, [model.backbone], reshape_transform=fpn_reshape_transform, batch_size=8, **kwargs)(
            x, targets=[target]
        )
        assert maps.shape == (1, 64, 64)
        assert maps.max() - maps.min() > 0.5


@pytest.mark.slow  # model scale: a torchvision detector, 7-40 s on 2 CPU cores
def test_ablationcam_torchvision_fasterrcnn_mobilenet():
    """The real detector (random weights, 128x128, few proposals): 768 FPN channels ablated; the map is
    made, lies in [0, 1], is not flat, and the model is left as it was."""
    model = mobilenet_fasterrcnn(proposals=20, kept_proposals=2, detections=2)
    x = torch.rand(1, 3, 128, 128, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        detections = model(x)[0]
    target = FasterRCNNBoxScoreTarget(detections["labels"][:1], detections["boxes"][:1])
    cam = AblationCAM(model, [model.backbone], reshape_transform=fpn_reshape_transform, batch_size=768)
    maps = cam(x, targets=[target])
    assert maps.shape == (1, 128, 128)
    assert maps.min() >= 0
    assert maps.max() > 0.99
    assert 0.01 < (maps > 0.5).mean() < 0.95
    assert not model.training
    assert "forward" not in model.backbone.__dict__


def test_ablationcam_structure_the_transform_does_not_concatenate():
    """A reshape_transform that mixes the levels' channels cannot be ablated channel by channel."""
    model, x, target = detector_case()

    def mixed(levels):
        return sum(nn.functional.interpolate(v, size=(2, 2)) for v in levels.values())  # (B, 5, 2, 2)

    cam = AblationCAM(model, [model.backbone], reshape_transform=mixed)
    with pytest.raises(ValueError, match="AblationCAM cannot tell which channel"):
        cam(x, targets=[target])


def test_ablationcam_layout_error_keeps_the_transforms_own_error_as_its_cause():
    """A reshape_transform that refuses the channel probe (here: float64 levels) leaves AblationCAM unable
    to find the channels; the transform's own error is chained as the cause, not discarded."""
    model, x, target = detector_case()

    def float32_only(levels):
        if any(v.dtype != torch.float32 for v in levels.values()):
            raise TypeError("float32_only: levels must be float32")
        return fpn_reshape_transform(levels)

    cam = AblationCAM(model, [model.backbone], reshape_transform=float32_only)
    with pytest.raises(ValueError, match="AblationCAM cannot tell which channel") as caught:
        cam(x, targets=[target])
    assert isinstance(caught.value.__cause__, TypeError)
    assert "float32_only: levels must be float32" in str(caught.value.__cause__)


# ============================================================================ AblationCAM, segmentation
def seg_case():
    torch.manual_seed(3)
    model = TinySegNet().eval()
    x = torch.randn(2, 3, 10, 12, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        out = model(x)["out"]
    # Image 0 explains class 1 on its left half, image 1 class 2 where it is predicted.
    masks = [np.zeros((10, 12), np.float32), (out[1].argmax(0) == 2).numpy().astype(np.float32)]
    masks[0][:, :6] = 1.0
    assert 0 < masks[1].sum() < masks[1].size
    return model, x, [1, 2], masks


@pytest.mark.parametrize("layer", ["act", "stem"], ids=["relu-output", "negatives-min-minus-1e7"])
def test_ablationcam_segmentation_dict_output_matches_full_forward_per_channel(layer):
    """SemanticSegmentationTarget on a dict output, through the replay fast path (the stem runs once for
    the whole call), ablated copies in batches of 4 of the 6 channels: the map of the plain reference."""
    from pytorch_grad_cam.utils.model_targets import SemanticSegmentationTarget

    model, x, classes, masks = seg_case()
    weights, acts = reference_ablation_segmentation(model, layer, x, classes, masks)
    expected = maps_from_weights(acts, weights, (10, 12))
    assert_nontrivial(weights, expected)
    targets = [SemanticSegmentationTarget(c, m) for c, m in zip(classes, masks)]
    cam = AblationCAM(model, [getattr(model, layer)], batch_size=4)
    model.stem.calls = 0
    got = cam(x, targets=targets)
    # One forward pass for the whole call when the target is the stem's output; with the target after the
    # stem, its recorded output is replayed for the check pass and every ablated batch.
    assert model.stem.calls == 1
    np.testing.assert_allclose(got, expected, atol=1e-4)
    assert "forward" not in model.stem.__dict__
    assert "forward" not in model.act.__dict__


@pytest.mark.filterwarnings("ignore:the CAM of layer:RuntimeWarning")
def test_ablationcam_warns_when_no_ablation_moves_the_score():
    """Activations far below one rounding step of a large score (here 1e-9 against about 100: a random net
    with unfitted BatchNorm statistics gives such layers): every y - y_k is exactly 0 in float32, as in
    the plain reference; the method says why its map is empty instead of only that it is constant."""
    from pytorch_grad_cam.utils.model_targets import SemanticSegmentationTarget

    model, x, classes, masks = seg_case()
    model.scale = 1e-9
    with torch.no_grad():
        model.head[2].bias.add_(5.0)
    targets = [SemanticSegmentationTarget(c, m) for c, m in zip(classes, masks)]
    with torch.no_grad():
        out = model(x)["out"]
        y = float((out[0, classes[0]] * torch.from_numpy(masks[0])).sum())
    assert abs(y) > 50  # the degenerate case: a large score, tiny activations
    with pytest.warns(
        RuntimeWarning,
        match=r"AblationCAM: ablating any one of the 6 channels of target "
        r"layer 'act' leaves the target score of image\(s\) \[0, 1\] exactly unchanged at "
        r"torch.float32 precision",
    ):
        maps = AblationCAM(model, [model.act])(x, targets=targets)
    assert (maps == 0).all()
    # The same model at a normal scale: no such warning.
    model.scale = 1.0
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        maps = AblationCAM(model, [model.act])(x, targets=targets)
    assert maps.max() > 0.99
