"""Every registered map method on every kind of model: the method x kind table.

Kinds (all random-init, no download, tiny so that the whole table runs in about a minute on one CPU):
  * ``cnn2d``, ``cnn3d``, ``cnn1d``: a conv net of planted weights (:class:`PlantedNet`) on an image, a
    volume and a signal. Class 0 is the response to input channel 0, class 1 to input channel 1; the
    input has a patch of channel 0 in one corner and of channel 1 in the opposite one, so a class-specific
    map must be hot on its own class's patch (and cold on the other's).
  * ``vit``: torchvision's ``VisionTransformer`` (32x32 input, 8x8 patches, 2 layers, width 32) at
    ``encoder.layers[-1].ln_1`` with ``vit_reshape_transform``.
  * ``swin``: torchvision's ``SwinTransformer`` (32x32 input, 4x4 patches, two stages of width 16/32,
    2x2 windows) at ``features[-1][-1].norm1`` with ``swin_reshape_transform``.
  * ``segmentation``: torchvision's ``deeplabv3_mobilenet_v3_large`` (3 classes, 64x64 input, dict
    output) at ``classifier[3]`` (the head's last ReLU) with :class:`SemanticSegmentationTarget` on its
    predicted region.
  * ``detection``: torchvision's ``fasterrcnn_mobilenet_v3_large_fpn`` (128x128, score threshold 0, so
    random weights detect) at ``backbone`` (a dict of FPN levels) with ``fpn_reshape_transform`` and
    :class:`FasterRCNNBoxScoreTarget` on two of its own detections.

Each cell asserts the output contract (``(B, *spatial)`` float32, finite, in [0, 1], every map with max 1
and not flat) and, for class-specific methods on the planted nets, that each class's map is hot on its
own patch. A cell where the method cannot apply by its nature asserts the exact clear error
(``CLEAR_ERRORS``); a cell that fails because of a bug elsewhere is a strict xfail (``KNOWN_BUGS``).

Cost: the perturbation methods (ScoreCAM family, AblationCAM, SESS) cost a forward pass (or the layers
after the target) per channel. The ScoreCAM family gets the segmentation layer's first 32 of 256 channels
(``_first_channels``), and on the detector the first 16 channels of the finest FPN level
(``_fpn_few_channels``: one masked batch) instead of all 768; SS-/IS-CAM and SmoothGrad-CAM++ get fewer
samples on the two torchvision dense models (``CHEAP_SAMPLES``).
"""

from __future__ import annotations

import functools
import inspect
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import pytest
import torch
import torchvision
from torch import nn
from torchvision.models import VisionTransformer
from torchvision.models.swin_transformer import SwinTransformer

from pytorch_grad_cam import (
    METHODS,
    DeepFeatureFactorization,
    GradCAM,
    GuidedBackpropReLUModel,
    GuidedGradCAM,
)
from pytorch_grad_cam.methods.factorization import dff
from pytorch_grad_cam.utils import (
    FasterRCNNBoxScoreTarget,
    SemanticSegmentationTarget,
    fpn_reshape_transform,
    swin_reshape_transform,
    vit_reshape_transform,
)
from tests.cam_factory import make_cam
from tests.models import PlantedNet, mobilenet_fasterrcnn
from tests.references.model_kinds import _reference_gradients

pytestmark = pytest.mark.slow

KINDS = ["cnn2d", "cnn3d", "cnn1d", "vit", "swin", "segmentation", "detection"]
PLANTED = {"cnn2d", "cnn3d", "cnn1d"}
HEAVY = {"segmentation", "detection"}
#: num_samples for the sampling methods on the heavy kinds (the code path is the same with fewer samples).
CHEAP_SAMPLES = 2

#: (method, kind) -> (exception type, regex): the method cannot apply to the kind, and says why.
CLEAR_ERRORS: dict[tuple[str, str], tuple[type, str]] = {
    # CAM's weights are the final linear layer's rows: a segmentation net has no linear layer, a detector's
    # last one (the box regressor, 1024 inputs) is not fed by the pooled backbone.
    ("cam", "segmentation"): (ValueError, "CAM needs the model's final linear layer .* no nn.Linear"),
    ("cam", "detection"): (ValueError, "in_features=1024 but the target layer 'backbone' has 768 channels"),
    # FullGrad sums every bias layer's (B, C, *spatial) gradient map: no token/dict layouts.
    ("fullgrad", "vit"): (ValueError, "FullGrad does not support reshape_transform"),
    ("fullgrad", "swin"): (ValueError, "FullGrad does not support reshape_transform"),
    ("fullgrad", "detection"): (ValueError, "FullGrad does not support reshape_transform"),
}
#: (method, kind) -> (exception raised, reason): a bug outside this file's owner's modules (strict xfail).
KNOWN_BUGS: dict[tuple[str, str], tuple[Any, str]] = {}
#: (method, kind) -> a warning the call must give: CAM on a layer that is not average-pooled into the
#: head (the ViT head reads the class token; Swin's norm1 of the last block is not the pooled output).
EXPECTED_WARNINGS = {
    ("cam", "vit"): "CAM: the input of the linear layer 'heads.head' is not the spatial",
    ("cam", "swin"): "CAM: the input of the linear layer 'head' is not the spatial",
}
#: Class-specific methods whose map need not be hot on the planted patch, and why.
HOT_CHECK_EXEMPT = {
    # |x * grad_x| min-max normalised per input channel (the reference library's post-processing): the
    # other class's input channel, with tiny gradients, is stretched to [0, 1] as well.
    "fullgrad": "per-channel normalisation makes both patches equally bright",
}


# ---------------------------------------------------------------------------------------------- models
def _planted_input(dim: int, size: int = 12) -> tuple[torch.Tensor, np.ndarray]:
    """Two copies of one input: channel 0 bright in the first corner, channel 1 in the opposite corner,
    plus faint seeded noise. Returns (x (2, 3, *S), hot (2, *S) bool: image i's target patch)."""
    gen = torch.Generator().manual_seed(1)
    shape = (size,) * dim
    x = 0.05 * torch.randn(1, 3, *shape, generator=gen)
    low = (slice(1, 5),) * dim
    high = (slice(size - 5, size - 1),) * dim
    x[(0, 0, *low)] += 1.0
    x[(0, 1, *high)] += 1.0
    hot = np.zeros((2, *shape), bool)
    hot[(0, *low)] = True  # image 0 explains class 0: the channel-0 patch
    hot[(1, *high)] = True  # image 1 explains class 1: the channel-1 patch
    return x.repeat(2, *([1] * (dim + 1))), hot


@dataclass
class Kind:
    model: nn.Module
    layers: list[nn.Module]
    x: torch.Tensor
    targets: list[Any]
    reshape_transform: Callable | None = None
    hot: np.ndarray | None = None  # (B, *spatial) where a class-specific map must be hot
    #: reshape_transform for the perturbation methods (fewer channels, to bound their cost)
    perturbation_transform: Callable | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def _planted(dim: int) -> Kind:
    size = {1: 24, 2: 12, 3: 12}[dim]
    # The patch is 4**dim of the size**dim pooled positions: the same logit (about 4.4) in every dim.
    model = PlantedNet(dim, gain=40.0 * (16 / 144) * size**dim / 4**dim).eval()
    x, hot = _planted_input(dim, size=size)
    # SS-CAM's noisy masks (std 2) need more than the generic tests' 3 samples to find the patch.
    return Kind(model, [model.features], x, [0, 1], hot=hot, extra={"sscam": {"num_samples": 16, "seed": 0}})


def _vit() -> Kind:
    torch.manual_seed(0)
    model = VisionTransformer(
        image_size=32, patch_size=8, num_layers=2, num_heads=2, hidden_dim=32, mlp_dim=64, num_classes=5
    ).eval()
    with torch.no_grad():  # torchvision initialises the head to zeros: every gradient would be zero
        model.heads.head.weight.normal_(0.0, 1.0)
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    return Kind(model, [model.encoder.layers[-1].ln_1], x, [1, 3], reshape_transform=vit_reshape_transform)


def _swin() -> Kind:
    torch.manual_seed(0)
    model = SwinTransformer(
        patch_size=[4, 4], embed_dim=16, depths=[1, 1], num_heads=[1, 2], window_size=[2, 2], num_classes=5
    ).eval()
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    return Kind(model, [model.features[-1][-1].norm1], x, [1, 3], reshape_transform=swin_reshape_transform)


def _segmentation() -> Kind:
    torch.manual_seed(0)
    model = torchvision.models.segmentation.deeplabv3_mobilenet_v3_large(
        weights=None, weights_backbone=None, num_classes=3
    )
    # Fit the BatchNorm statistics once (cumulative average), as a trained model has them: with the
    # unfitted ones the head's activations are ~1e-10 against a score of ~88, and no single channel moves
    # the float32 score (AblationCAM then has nothing to measure, and says so).
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.momentum = None
    with torch.no_grad():
        model.train()(torch.randn(4, 3, 64, 64, generator=torch.Generator().manual_seed(9)))
    model.eval()
    x = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        prediction = model(x)["out"][0].argmax(0)  # (64, 64)
    category = int(prediction.flatten().mode().values)
    mask = (prediction == category).numpy()
    assert mask.sum() > 0
    # The head's last ReLU (256 channels on a 4x4 grid); the ScoreCAM family explains its first 32.
    return Kind(
        model,
        [model.classifier[3]],
        x,
        [SemanticSegmentationTarget(category, mask)],
        perturbation_transform=_first_channels,
        extra={"sess": {"use_softmax_scores": False}},
    )


def _first_channels(activations):
    """A layer's first 32 channels: bounds the ScoreCAM family's cost (one masked batch)."""
    return activations[:, :32]


def _fpn_few_channels(levels):
    """The finest FPN level's first 16 channels: the perturbation methods' cost is one masked batch."""
    first = next(iter(levels))
    return fpn_reshape_transform({first: levels[first][:, :16]})


def _detection() -> Kind:
    model = mobilenet_fasterrcnn(proposals=30, kept_proposals=10, detections=5)
    x = torch.rand(1, 3, 128, 128, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        detections = model(x)[0]
    assert len(detections["boxes"]) >= 2
    target = FasterRCNNBoxScoreTarget(detections["labels"][:2], detections["boxes"][:2])
    # The coarsest level is 2x2 at this size: resize the levels to the finest grid instead.
    transform = functools.partial(fpn_reshape_transform, size="0")
    return Kind(
        model,
        [model.backbone],
        x,
        [target],
        reshape_transform=transform,
        perturbation_transform=_fpn_few_channels,
        extra={"sess": {"use_softmax_scores": False}},
    )


_BUILDERS = {
    "cnn2d": lambda: _planted(2),
    "cnn3d": lambda: _planted(3),
    "cnn1d": lambda: _planted(1),
    "vit": _vit,
    "swin": _swin,
    "segmentation": _segmentation,
    "detection": _detection,
}


@pytest.fixture(scope="module")
def kinds():
    """Each kind built once, on first use."""
    cache: dict[str, Kind] = {}

    def get(name: str) -> Kind:
        if name not in cache:
            cache[name] = _BUILDERS[name]()
        return cache[name]

    return get


# ---------------------------------------------------------------------------------------------- the table
def _build(method: str, kind_name: str, kind: Kind):
    cls = METHODS[method]
    transform = kind.reshape_transform
    if cls.perturbation and not cls.records_prefix and kind.perturbation_transform is not None:
        # The ScoreCAM family runs the whole model per channel (AblationCAM only the layers after the target).
        transform = kind.perturbation_transform
    kwargs: dict[str, Any] = dict(kind.extra.get(method, {}))
    if transform is not None:
        kwargs["reshape_transform"] = transform
    parameters = inspect.signature(cls.__init__).parameters
    if kind_name in HEAVY and ("num_samples" in parameters or method in ("sscam", "iscam")):
        kwargs["num_samples"] = CHEAP_SAMPLES
    return make_cam(method, kind.model, kind.layers, perturbation_batch=64, **kwargs)


def _cells():
    for method in sorted(METHODS):
        for kind in KINDS:
            marks = []
            if (method, kind) in KNOWN_BUGS:
                raises, reason = KNOWN_BUGS[(method, kind)]
                marks.append(pytest.mark.xfail(strict=True, raises=raises, reason=reason))
            yield pytest.param(method, kind, marks=marks, id=f"{method}-{kind}")


def assert_contract(maps: np.ndarray, x: torch.Tensor) -> None:
    assert isinstance(maps, np.ndarray)
    assert maps.dtype == np.float32
    assert maps.shape == (x.shape[0], *x.shape[2:])
    assert np.isfinite(maps).all()
    assert maps.min() >= 0.0
    assert maps.max() <= 1.0
    flat = maps.reshape(maps.shape[0], -1)
    assert (flat.max(1) > 0.99).all(), "a map is all zeros"
    assert (flat.std(1) > 0.02).all(), "a map is nearly flat"


def assert_hot_on_planted_patch(maps: np.ndarray, hot: np.ndarray) -> None:
    """Each image's map is clearly higher on its class's patch than elsewhere, and than on the other
    class's patch (which is the other image's hot region)."""
    for i in range(maps.shape[0]):
        inside = maps[i][hot[i]].mean()
        outside = maps[i][~hot[i]].mean()
        other = maps[i][hot[1 - i]].mean()
        assert inside > outside + 0.2, f"image {i}: {inside:.3f} on its patch vs {outside:.3f} elsewhere"
        # The ScoreCAM family's softmax weights are soft: its own patch leads by about 0.1-0.15 in 3D.
        assert inside > other + 0.05, f"image {i}: {inside:.3f} on its patch vs {other:.3f} on the other"


@pytest.mark.parametrize(("method", "kind_name"), list(_cells()))
def test_method_on_model_kind(method, kind_name, kinds):
    kind = kinds(kind_name)
    expected_error = CLEAR_ERRORS.get((method, kind_name))
    if expected_error is not None:
        error, match = expected_error
        with pytest.raises(error, match=match):
            _build(method, kind_name, kind)(kind.x, targets=kind.targets)
        return
    cam = _build(method, kind_name, kind)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        warnings.simplefilter("error", RuntimeWarning)  # no constant map, no zero gradient, no fallback
        maps = cam(kind.x, targets=kind.targets)
    expected_warning = EXPECTED_WARNINGS.get((method, kind_name))
    if expected_warning is not None:
        assert any(expected_warning in str(w.message) for w in caught), [str(w.message) for w in caught]
    assert_contract(maps, kind.x)
    if kind.hot is not None and METHODS[method].class_specific and method not in HOT_CHECK_EXEMPT:
        assert_hot_on_planted_patch(maps, kind.hot)


def test_the_planted_nets_answer_to_their_patches():
    """The premise of the hot-patch check: class c's logit is driven by input channel c."""
    for dim in (1, 2, 3):
        kind = _planted(dim)
        with torch.no_grad():
            logits = kind.model(kind.x)[0]
            x0 = kind.x.clone()
            x0[:, 0] = 0
            logits0 = kind.model(x0)[0]
        assert logits[0] > logits[2] + 1
        assert logits[1] > logits[2] + 1
        drop = float(logits[0] - logits0[0])  # removing channel 0 drops class 0, barely moves class 1
        assert drop > 1
        assert abs(float(logits0[1] - logits[1])) < 0.2 * drop


# ---------------------------------------------------------------------------- the non-map methods
# Guided backpropagation, Guided Grad-CAM and Deep Feature Factorization return pixel gradients and
# (concepts, explanations) rather than (B, *spatial) maps: each gets its own test over the seven kinds.


def _has_relus(model: nn.Module) -> bool:
    return any(isinstance(m, (nn.ReLU, nn.ReLU6)) for m in model.modules())


_HOOK_DICTS = ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks")


def _state(model: nn.Module) -> dict[str, Any]:
    return {
        "hooks": [[list(getattr(m, attr)) for attr in _HOOK_DICTS] for m in model.modules()],
        "training": [m.training for m in model.modules()],
        "requires_grad": [p.requires_grad for p in model.parameters()],
        "grad": [p.grad for p in model.parameters()],
        "values": {k: v.clone() for k, v in model.state_dict().items()},
    }


def _assert_state(before: dict[str, Any], after: dict[str, Any]) -> None:
    for key in ("hooks", "training", "requires_grad"):
        assert before[key] == after[key], key
    assert all(g0 is g1 for g0, g1 in zip(before["grad"], after["grad"]))
    for key, value in before["values"].items():  # e.g. BatchNorm running statistics not updated
        assert torch.equal(value, after["values"][key]), key


def _call_in_mixed_training_mode(model: nn.Module, call: Callable[[], Any]) -> Any:
    """``call()`` with ``model`` in train mode except its first child (mixed flags); asserts the model's
    hooks, flags, requires_grad, .grad and state (BatchNorm statistics) are as before; back to eval."""
    try:
        model.train()
        next(model.children()).eval()
        before = _state(model)
        result = call()
        _assert_state(before, _state(model))
        assert not torch.overrides._get_current_function_mode_stack()  # no guided mode left active
        return result
    finally:
        model.eval()


def _energy_ratio(energy: np.ndarray, region: np.ndarray, other: np.ndarray) -> float:
    return float(energy[region].mean() / energy[other].mean())


@pytest.mark.parametrize("kind_name", KINDS)
def test_guided_backprop_on_model_kind(kind_name, kinds, monkeypatch):
    """Guided backprop equals the guided rule written out on a copy of the model (ReLU/ReLU6 modules
    swapped, F.relu patched), in the input's layout; on the planted nets it is hot on the class's patch,
    in the class's input channel."""
    kind = kinds(kind_name)
    gb = _call_in_mixed_training_mode(
        kind.model,
        lambda: GuidedBackpropReLUModel(kind.model)(kind.x, targets=kind.targets, channels_last=False),
    )
    assert isinstance(gb, np.ndarray)
    assert gb.dtype == np.float32
    assert gb.shape == tuple(kind.x.shape)
    assert np.isfinite(gb).all()
    assert (gb != 0).mean() > 0.5
    want = _reference_gradients(kind.model, kind.x, kind.targets, True, monkeypatch)
    scale = np.abs(want).max()
    assert scale > 0
    np.testing.assert_allclose(gb, want, rtol=1e-4, atol=1e-4 * scale)
    plain = _reference_gradients(kind.model, kind.x, kind.targets, False, monkeypatch)
    if _has_relus(kind.model):
        # Far above float32 noise (the planted nets' gradients are mostly positive: 1% of the scale there).
        assert np.abs(plain - want).max() > 3e-3 * scale, "the guided rule changes nothing here"
    else:  # ViT and Swin (GELU): no rectifier, the plain gradient
        np.testing.assert_allclose(gb, plain, rtol=1e-4, atol=1e-5 * scale)
    last = GuidedBackpropReLUModel(kind.model)(kind.x, targets=kind.targets)  # channels last
    moved = np.moveaxis(gb, 1, -1)
    np.testing.assert_allclose(last, moved[0] if gb.shape[0] == 1 else moved, rtol=1e-5, atol=1e-6 * scale)
    if kind.hot is not None:
        energy = (gb**2).sum(1)  # (B, *spatial)
        for i, c in enumerate(kind.targets):
            # Measured: 1.9-3.1 times the energy elsewhere; 83-99% of it in the class's input channel.
            assert _energy_ratio(energy[i], kind.hot[i], ~kind.hot[i]) > 1.5
            assert (gb[i, c] ** 2)[kind.hot[i]].sum() > 0.75 * energy[i][kind.hot[i]].sum()


@pytest.mark.parametrize("kind_name", KINDS)
def test_guided_gradcam_on_model_kind(kind_name, kinds, monkeypatch):
    """Guided Grad-CAM = guided backprop (the written-out rule) x the kind's Grad-CAM map; on the planted
    nets the product is far more class-discriminative than guided backprop alone."""
    kind = kinds(kind_name)
    ggc = _call_in_mixed_training_mode(
        kind.model,
        lambda: GuidedGradCAM(kind.model, kind.layers, kind.reshape_transform)(
            kind.x, targets=kind.targets, channels_last=False
        ),
    )
    cam = GradCAM(kind.model, kind.layers, kind.reshape_transform)(kind.x, targets=kind.targets)
    assert (cam.reshape(cam.shape[0], -1).std(1) > 0.02).all()
    gb = _reference_gradients(kind.model, kind.x, kind.targets, True, monkeypatch)
    want = gb * cam[:, None]
    assert ggc.dtype == np.float32
    assert ggc.shape == tuple(kind.x.shape)
    assert np.isfinite(ggc).all()
    np.testing.assert_allclose(ggc, want, rtol=1e-4, atol=1e-4 * np.abs(want).max())
    assert np.abs(want).max() > 0
    assert np.abs(want - gb).max() > 0.1 * np.abs(gb).max()
    if kind.hot is not None:
        for i in range(2):
            # Own patch vs the other class's patch: guided backprop 1.2-6.2, Guided Grad-CAM 5.3-1500.
            alone = _energy_ratio((gb[i] ** 2).sum(0), kind.hot[i], kind.hot[1 - i])
            guided_cam = _energy_ratio((ggc[i] ** 2).sum(0), kind.hot[i], kind.hot[1 - i])
            assert guided_cam > 4, (alone, guided_cam)
            assert guided_cam > 2 * alone, (alone, guided_cam)


def _layer_activations(kind: Kind) -> torch.Tensor:
    """The kind's target layer output through its reshape_transform, (B, C, *grid), by a plain hook."""
    captured = []
    handle = kind.layers[0].register_forward_hook(lambda module, inputs, output: captured.append(output))
    try:
        with torch.no_grad():
            kind.model(kind.x)
    finally:
        handle.remove()
    (activations,) = captured
    return activations if kind.reshape_transform is None else kind.reshape_transform(activations)


@pytest.mark.parametrize("kind_name", KINDS)
def test_deep_feature_factorization_on_model_kind(kind_name, kinds):
    """DFF (K=2) at the kind's layer: concepts (C, K) above the per-channel shift (non-negative for
    non-negative activations), explanations (B, K, *spatial) in [0, 1] and not flat, and concepts x the
    grid heatmaps reconstruct the (shifted) activations as well as the best rank-2 approximation does.
    On the planted nets the two patches land in different concepts."""
    kind = kinds(kind_name)
    dff_ = DeepFeatureFactorization(kind.model, kind.layers, kind.reshape_transform)
    concepts, explanations = _call_in_mixed_training_mode(kind.model, lambda: dff_(kind.x, n_components=2))
    acts = _layer_activations(kind).double()  # (B, C, *grid)
    batch, channels = acts.shape[:2]
    assert concepts.dtype == np.float32
    assert concepts.shape == (channels, 2)
    assert explanations.dtype == np.float32
    assert explanations.shape == (batch, 2, *kind.x.shape[2:])
    assert np.isfinite(concepts).all()
    assert np.isfinite(explanations).all()
    assert explanations.min() >= 0
    assert explanations.max() <= 1
    assert (explanations.reshape(batch * 2, -1).std(1) > 0.05).all(), "a flat explanation"
    v = acts.transpose(0, 1).reshape(channels, -1).numpy()  # (C, B*N)
    offset = np.minimum(v.min(1), 0)  # (C,): the shift of channels with negative values
    assert (offset < 0).any() == (kind_name in ("vit", "swin"))  # tokens are signed, the rest non-negative
    assert (concepts >= offset[:, None] - 1e-6).all()
    if not (offset < 0).any():
        assert concepts.min() >= 0
    # The grid heatmaps of the same factorisation (the call's explanations are them resized).
    grid_concepts, grid = dff(acts.float().numpy(), 2)
    np.testing.assert_allclose(grid_concepts, concepts, rtol=1e-4, atol=1e-5 * np.abs(concepts).max())
    if acts.shape[2:] == kind.x.shape[2:]:
        np.testing.assert_allclose(grid, explanations, atol=1e-6)
    shifted = v - offset[:, None]
    h = grid.astype(np.float64).transpose(1, 0, *range(2, grid.ndim)).reshape(2, -1)  # (K, B*N)
    error = np.linalg.norm(shifted - (concepts - offset[:, None]) @ h) / np.linalg.norm(shifted)
    singular = np.linalg.svd(shifted, compute_uv=False)
    rank1, rank2 = (np.sqrt((singular[r:] ** 2).sum()) / np.linalg.norm(shifted) for r in (1, 2))
    assert error <= 1.03 * rank2, (error, rank2, rank1)  # measured: <= 1.01 * rank 2
    assert error < rank1, (error, rank2, rank1)
    if kind.hot is not None:
        # Mean of each concept over image i's patch: patch 0 and patch 1 are led by different concepts.
        means = np.array([[explanations[i, k][kind.hot[i]].mean() for k in range(2)] for i in range(2)])
        leader = means.argmax(1)
        assert leader[0] != leader[1], means
        assert (means.max(1) - means.min(1) > 0.3).all(), means  # measured: >= 0.34


def test_deep_feature_factorization_on_the_detector_needs_its_reshape_transform(kinds):
    """The detector's backbone returns a dict of FPN levels: without a reshape_transform, or with one that
    does not make them one tensor, DFF says so."""
    kind = kinds("detection")
    with pytest.raises(TypeError, match=r"returns OrderedDict, expected a single tensor.*fpn_reshape_trans"):
        DeepFeatureFactorization(kind.model, kind.layers)(kind.x, n_components=2)
    with pytest.raises(TypeError, match=r"reshape_transform must return a tensor .* got OrderedDict"):
        DeepFeatureFactorization(kind.model, kind.layers, lambda levels: levels)(kind.x, n_components=2)
