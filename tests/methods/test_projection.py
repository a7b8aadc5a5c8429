"""The projection family (EigenCAM, SegEigenCAM, KPCA-CAM, EigenGradCAM): numerics of KPCA-CAM.

KPCA-CAM on activations of order 1e-9 (against the kernel formula in 60-digit decimal arithmetic, in
tests/references.py), its closed forms at order one, its ``degree`` checks. The maps of all four methods
against the plain references of their formulas are in test_formulas.py.
"""

import copy

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
