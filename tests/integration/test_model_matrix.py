"""Every CAM method on real torchvision architectures (random weights, no download).

The matrix: resnet18, resnet50, vgg11, densenet121, mnasnet1_0, vit_b_16 and swin_t, each at the target
layer the reference library documents for it, x the six original methods of ``METHODS`` x a batch of 1
and of 2. Each cell checks the output contract (shape ``(B, H, W)``, float32, finite, in [0, 1], per image
min 0 and max 1, or all zeros together with the constant-map warning) and that batching changes nothing:
each image of the batch-2 call equals its own batch-1 call (see ``BATCH_ATOL`` for the tolerance).

Inputs are 64x64: 2x2 maps for the CNNs and swin_t, a 4x4 patch grid for vit_b_16 (built with
``image_size=64``). The perturbation methods cost one forward pass (ScoreCAM) or one pass of the layers
after the target (AblationCAM) per channel and per image, so some cells use the smallest input that still
gives a 2x2 map (``Case.method_size``): 33x33 for resnet18 and resnet50, 32x32 (a 2x2 grid) for
vit_b_16, 48x48 for swin_t, 61x61 for densenet121; or a 1x2 map, on a non-square input (so a swapped
height and width shows): 32x64 for vgg11 (whose classifier alone costs 0.12 GMACs per pass) and 16x33
for mnasnet1_0 (slow depthwise convolutions).

Cells not run by default: ScoreCAM on resnet50, densenet121, vit_b_16 and swin_t (2048, 1024, 768 and
768 channels). Even at those smallest inputs one batch-of-2 call costs 20-50 s of CPU (single-threaded,
measured: resnet50 30 s, densenet121 35 s, vit_b_16 20 s, swin_t 50 s), so each cell (batch 1 and 2, two
single images) costs 40-100 s, more than the whole test suite's share for this file. They are in the
matrix, with the same checks, and run when the environment variable ``PYTORCH_GRAD_CAM_FULL_MATRIX=1``
is set (about 5 minutes more). ScoreCAM's own code is the same for every model and is run by default
here on resnet18, vgg11 and mnasnet1_0; the transformer layouts (reshape_transform) are run by default
with the five other methods.
"""

import os
import warnings
from dataclasses import dataclass, field
from typing import Callable, Optional, Union

import numpy as np
import pytest
import torch
import torchvision
from torch import nn

from pytorch_grad_cam import METHODS
from pytorch_grad_cam.utils.reshape_transforms import swinT_reshape_transform, vit_reshape_transform

pytestmark = pytest.mark.slow

#: The six original methods (METHODS may hold more; those are not part of this matrix).
ALL_METHODS = ["gradcam", "gradcam++", "xgradcam", "eigencam", "scorecam", "ablationcam"]
FULL_MATRIX = os.environ.get("PYTORCH_GRAD_CAM_FULL_MATRIX", "") not in ("", "0")
#: (model, method) cells run only with PYTORCH_GRAD_CAM_FULL_MATRIX=1 (see the module docstring).
EXPENSIVE = {
    ("resnet50", "scorecam"),
    ("densenet121", "scorecam"),
    ("vit_b_16", "scorecam"),
    ("swin_t", "scorecam"),
}
#: Batch vs single images, atol. torch's own float32 forward pass differs slightly between a batch of 1
#: and of 2 (other conv algorithms: 3e-6 on densenet121's features, 4e-5 on resnet50's logits of about
#: 50), and the min-max normalisation divides by the raw CAM's range, which is small for random weights:
#: up to 7.5e-5 was measured (densenet121/xgradcam). AblationCAM's weights ``(y - y_k) / y`` are tiny
#: differences of two large scores (512-2048 channels), which amplifies that noise further: up to 3e-4
#: (resnet50). In float64 batch and single maps are identical (checked by hand for resnet50/AblationCAM),
#: so these tolerances hide no mixing of images; a mix-up shows as differences of order 0.1-1.
DEFAULT_BATCH_ATOL = 2e-4
BATCH_ATOL = {"ablationcam": 1e-3}
CONSTANT_WARNING = "is constant for image"
REPLAY_FALLBACK_WARNING = "could not reuse the layers before the target layer"


def _vit(image_size: int) -> nn.Module:
    model = torchvision.models.vit_b_16(weights=None, image_size=image_size)
    # torchvision initialises the classification head to zero: every logit is then the (zero) bias,
    # no gradient reaches the encoder and every map would be constant. Give it random weights.
    nn.init.normal_(model.heads.head.weight, std=0.02)
    return model


@dataclass
class Case:
    """One architecture: how to build it, its target layer, its reshape transform and input sizes."""

    build: Callable[[int], nn.Module]  # image side -> model (only vit_b_16 uses the side)
    layer: Callable[[nn.Module], nn.Module]
    reshape_transform: Optional[Callable] = None
    size: int = 64
    #: Smaller inputs for some methods, a side or (height, width); only where the cost needs it.
    method_size: dict[str, Union[int, tuple[int, int]]] = field(default_factory=dict)


MODELS: dict[str, Case] = {
    "resnet18": Case(
        lambda s: torchvision.models.resnet18(weights=None),
        lambda m: m.layer4[-1],
        method_size={"scorecam": 33},
    ),
    "resnet50": Case(
        lambda s: torchvision.models.resnet50(weights=None),
        lambda m: m.layer4[-1],
        method_size={"scorecam": 33},
    ),
    "vgg11": Case(
        lambda s: torchvision.models.vgg11(weights=None),
        lambda m: m.features[-1],
        method_size={"scorecam": (32, 64)},
    ),
    "densenet121": Case(
        lambda s: torchvision.models.densenet121(weights=None),
        lambda m: m.features[-1],
        method_size={"scorecam": 61},
    ),
    "mnasnet1_0": Case(
        lambda s: torchvision.models.mnasnet1_0(weights=None),
        lambda m: m.layers[-1],
        method_size={"scorecam": (16, 33)},
    ),
    "vit_b_16": Case(
        _vit,
        lambda m: m.encoder.layers[-1].ln_1,
        vit_reshape_transform,
        method_size={"scorecam": 32, "ablationcam": 32},
    ),
    "swin_t": Case(
        lambda s: torchvision.models.swin_t(weights=None),
        lambda m: m.features[-1][-1].norm1,
        swinT_reshape_transform,
        method_size={"scorecam": 48},
    ),
}


class Built:
    """A built model (seeded), its inputs, and a cache of CAM results:
    ``(method, which) -> (maps, warning messages)``.

    ``which`` is ``0`` or ``1`` (that image alone) or ``"both"`` (the batch of 2).
    """

    def __init__(self, name: str) -> None:
        self.name = name
        self.case = MODELS[name]
        self.models: dict[int, nn.Module] = {}
        self.results: dict[tuple[str, object], tuple[np.ndarray, list]] = {}

    def size(self, method: str) -> tuple[int, int]:
        """(height, width) of the inputs for ``method``."""
        size = self.case.method_size.get(method, self.case.size)
        return (size, size) if isinstance(size, int) else size

    def model(self, size: tuple[int, int]) -> nn.Module:
        # vit_b_16's positional embedding depends on the (square) image size; the others are built once.
        key = size[0] if self.name == "vit_b_16" else 0
        if key not in self.models:
            torch.manual_seed(0)
            self.models[key] = self.case.build(size[0]).eval()
        return self.models[key]

    def inputs(self, size: tuple[int, int]) -> torch.Tensor:
        generator = torch.Generator().manual_seed(1)
        return torch.randn(2, 3, *size, generator=generator)

    def maps(self, method: str, which) -> tuple[np.ndarray, list]:
        key = (method, which)
        if key not in self.results:
            size = self.size(method)
            model = self.model(size)
            x = self.inputs(size)
            x = x if which == "both" else x[which : which + 1]
            cam = METHODS[method](
                model, target_layers=[self.case.layer(model)], reshape_transform=self.case.reshape_transform
            )
            cam.batch_size = 1024  # one or two forward passes per image for the perturbation methods
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                maps = cam(x)
            self.results[key] = (maps, [str(w.message) for w in caught])
        return self.results[key]


@pytest.fixture(scope="module", params=list(MODELS))
def built(request):
    """One architecture at a time (module-scoped, parametrised): tests are grouped by model, and each
    model and its results are dropped before the next one is built."""
    return Built(request.param)


def _skip_expensive(built: Built, method: str) -> None:
    if (built.name, method) in EXPENSIVE and not FULL_MATRIX:
        pytest.skip(
            f"{method} on {built.name}: one forward pass per channel, 20-40 s on 2 cores; "
            "set PYTORCH_GRAD_CAM_FULL_MATRIX=1 to run it"
        )


def check_maps(maps: np.ndarray, batch: int, size: tuple[int, int], messages: list) -> None:
    assert isinstance(maps, np.ndarray)
    assert maps.shape == (batch, *size)
    assert maps.dtype == np.float32
    assert np.isfinite(maps).all()
    assert maps.min() >= 0.0
    assert maps.max() <= 1.0
    constant_warned = any(CONSTANT_WARNING in m for m in messages)
    for i, single in enumerate(maps):
        if single.max() == 0.0:
            assert constant_warned, f"image {i}: an all-zero map without the constant-map warning"
        else:
            assert single.min() == 0.0, f"image {i}: min {single.min()} after min-max normalisation"
            # max = range / (range + 1e-7) for each of the two normalisations: 1 up to that epsilon
            # (random-weight models can have raw CAM ranges of 1e-3 or less).
            assert single.max() == pytest.approx(1.0, abs=1e-3), f"image {i}: max {single.max()}"
            # A 2x2 (or 1x2) map resized to the input: it is not a constant, nor a single hot pixel.
            assert (single > 0.01).mean() > 0.01


@pytest.mark.parametrize("batch", [1, 2])
@pytest.mark.parametrize("method", ALL_METHODS)
def test_cam_contract(built, method, batch):
    _skip_expensive(built, method)
    maps, messages = built.maps(method, 0 if batch == 1 else "both")
    check_maps(maps, batch, built.size(method), messages)
    # No unexpected warnings: the constant-map warning is the only one a model may cause (and
    # AblationCAM's replay fallback, checked by test_ablation_reuses_the_layers_before_the_target).
    unexpected = [m for m in messages if CONSTANT_WARNING not in m and REPLAY_FALLBACK_WARNING not in m]
    assert not unexpected


@pytest.mark.parametrize("method", ALL_METHODS)
def test_batch_equals_single_images(built, method):
    _skip_expensive(built, method)
    both, _ = built.maps(method, "both")
    atol = BATCH_ATOL.get(method, DEFAULT_BATCH_ATOL)
    for i in range(2):
        single, _ = built.maps(method, i)
        np.testing.assert_allclose(
            both[i], single[0], rtol=0, atol=atol, err_msg=f"{built.name}/{method}: image {i} of the batch"
        )


def test_ablation_reuses_the_layers_before_the_target(built):
    """AblationCAM replays the layers before the target layer instead of re-running them per channel
    (the fallback, a full forward pass per ablated channel, gives the same maps, only slower). mnasnet's
    target layer is a ReLU(inplace=True): fed the replayed tensors it used to fail and fall back."""
    _, messages = built.maps("ablationcam", "both")
    assert not [m for m in messages if REPLAY_FALLBACK_WARNING in m]
