"""The activation family: CAM (the class weights of the linear head), FEM and RandomCAM.

CAM against a plain reference of its formula (tests/references.py: float64 copies of the models, forward
hooks), CAM's search for the head (``fc_layer``) and its check that the head reads the pooled layer.
FEM and RandomCAM are checked against their references in test_formulas.py.
"""

import numpy as np
import pytest
import torch
from torch import nn

from pytorch_grad_cam import (
    CAM,
    METHODS,
    GradCAM,
)
from pytorch_grad_cam.utils.model_targets import (
    ClassifierOutputSoftmaxTarget,
)
from tests.models import SumPoolNet, TwoHeads, seeded_input
from tests.references import (
    acts_and_grads,
    double_copy,
    final_map,
    logit,
)
from tests.references import (
    assert_nontrivial_t as assert_nontrivial,
)
from tests.references import (
    weighted_sum_t as weighted_sum,
)


def test_cam_reference_on_tiny_nets(tiny_2d, tiny_1d, tiny_3d):
    for (model, x), classes in ((tiny_2d, [1, 3]), (tiny_1d, [2, 4]), (tiny_3d, [0, 4])):
        m64 = double_copy(model)
        acts, _, _ = acts_and_grads(m64, m64.relu3, x.double(), logit(classes))
        w = m64.fc.weight.detach()[classes]  # (B, C)
        want = final_map(weighted_sum(w, acts.detach()), x.shape[2:])
        assert_nontrivial(want)
        got = CAM(model, target_layers=[model.relu3])(x, targets=classes)
        torch.testing.assert_close(torch.from_numpy(got), want.float(), atol=1e-5, rtol=1e-4)


def test_cam_equals_gradcam_for_gap_linear_head(tiny_2d):
    """relu3 -> mean over positions -> fc: dy_c/dA = W[c] / N everywhere, so Grad-CAM's weights are
    W[c] / N and its map is CAM's up to the factor 1 / N, which normalisation removes."""
    model, x = tiny_2d
    classes = [1, 3]
    m64 = double_copy(model)
    acts, grads, _ = acts_and_grads(m64, m64.relu3, x.double(), logit(classes))
    n = acts[0, 0].numel()
    expected = m64.fc.weight.detach()[classes][:, :, None, None].expand_as(grads) / n
    torch.testing.assert_close(grads, expected)  # the theory the equality rests on
    cam = CAM(model, target_layers=[model.relu3])(x, targets=classes)
    gradcam = GradCAM(model, target_layers=[model.relu3])(x, targets=classes)
    assert_nontrivial(torch.from_numpy(cam))
    np.testing.assert_allclose(cam, gradcam, atol=1e-5)
    other = CAM(model, target_layers=[model.relu3])(x, targets=[3, 1])
    assert np.abs(other - cam).max() > 0.3  # the class matters


def test_cam_resnet18_finds_fc(resnet18_seeded):
    model = resnet18_seeded
    x = seeded_input(2, 3, 64, 64, seed=7)
    cam = CAM(model, target_layers=[model.layer4[-1]])
    assert cam.fc_layer is model.fc
    got = cam(x, targets=[3, 7])
    m64 = double_copy(model)
    store = {}
    handle = m64.layer4[-1].register_forward_hook(lambda m, i, o: store.__setitem__("a", o))
    with torch.no_grad():
        m64(x.double())
    handle.remove()
    want = final_map(weighted_sum(m64.fc.weight[[3, 7]], store["a"]), x.shape[2:])
    assert_nontrivial(want)
    torch.testing.assert_close(torch.from_numpy(got), want.float(), atol=1e-5, rtol=1e-4)
    # resnet ends in global average pooling + fc after layer4: CAM == Grad-CAM.
    np.testing.assert_allclose(got, GradCAM(model, [model.layer4[-1]])(x, targets=[3, 7]), atol=1e-5)


def test_cam_fc_layer_by_name_or_module_and_errors():
    model = TwoHeads().eval()
    x = seeded_input(2, 3, 8, 8, seed=0)
    layers = [model.features]
    # Found automatically: `aux` (4 inputs) does not fit the 6-channel layer; the error names both.
    with pytest.raises(ValueError, match=r"'aux' has in_features=4 .*'features' has 6 channels"):
        CAM(model, layers)(x, targets=[0, 2])
    by_name = CAM(model, layers, fc_layer="classifier")
    assert by_name.fc_layer is model.classifier
    by_module = CAM(model, layers, fc_layer=model.classifier)
    got = by_name(x, targets=[0, 2])
    np.testing.assert_array_equal(got, by_module(x, targets=[0, 2]))
    np.testing.assert_allclose(got, GradCAM(model, layers)(x, targets=[0, 2]), atol=1e-5)
    assert_nontrivial(torch.from_numpy(got))

    with pytest.raises(ValueError, match=r"fc_layer='nope' is not a module of the model"):
        CAM(model, layers, fc_layer="nope")
    with pytest.raises(ValueError, match=r"fc_layer \(Linear\) is not a module of the model"):
        CAM(model, layers, fc_layer=nn.Linear(6, 4))
    with pytest.raises(TypeError, match=r"fc_layer must be an nn.Linear .*got Sequential"):
        CAM(model, layers, fc_layer="features")
    with pytest.raises(TypeError, match=r"fc_layer must be None, a module .*got int"):
        CAM(model, layers, fc_layer=3)
    no_linear = nn.Sequential(nn.Conv2d(3, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten())
    with pytest.raises(ValueError, match=r"no nn.Linear module; pass fc_layer="):
        CAM(no_linear, [no_linear[0]])
    cam = CAM(model, layers, fc_layer="classifier")
    with pytest.raises(
        TypeError,
        match=r"targets\[0\] is ClassifierOutputSoftmaxTarget.*CAM needs class "
        r"indices",
    ):
        cam(x, targets=[ClassifierOutputSoftmaxTarget(0), 1])
    with pytest.raises(TypeError, match=r"CAM needs class indices"):
        cam(x, targets=lambda out: out[0])
    assert CAM.uses_gradients is False
    assert METHODS["cam"] is CAM


def test_cam_targets_none_is_top_class(tiny_2d):
    model, x = tiny_2d
    top = model(x).argmax(-1).tolist()
    cam = CAM(model, [model.relu3])
    np.testing.assert_array_equal(cam(x), cam(x, targets=top))


def test_cam_warns_when_the_head_does_not_read_the_pooled_layer(tiny_2d):
    import warnings

    from torchvision.models import VisionTransformer

    from pytorch_grad_cam.utils import vit_reshape_transform

    torch.manual_seed(0)
    vit = VisionTransformer(
        image_size=16, patch_size=4, num_layers=1, num_heads=1, hidden_dim=8, mlp_dim=16, num_classes=3
    ).eval()
    with torch.no_grad():  # torchvision's zero-initialised head would give a zero (constant) map
        vit.heads.head.weight.normal_(0.0, 1.0)
    x = seeded_input(2, 3, 16, 16, seed=2)
    # The head reads the class token, not the mean of the patch tokens: warned, at the caller's line.
    expected = (
        r"input of the linear layer 'heads.head' is not the spatial average of target layer "
        r"'encoder.layers.encoder_layer_0.ln_1'"
    )
    with pytest.warns(UserWarning, match=expected) as rec:
        CAM(vit, [vit.encoder.layers[0].ln_1], reshape_transform=vit_reshape_transform)(x, targets=[0, 1])
    assert [r.filename for r in rec if "linear layer" in str(r.message)] == [__file__]
    # A layer before the ReLU that comes before the pooling: warned.
    model, x = tiny_2d
    with pytest.warns(UserWarning, match="is not the spatial average of target layer 'conv3'"):
        CAM(model, [model.conv3])(x, targets=[1, 3])
    # The pooled layer itself: no warning at all.
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        CAM(model, [model.relu3])(x, targets=[1, 3])


def test_cam_accepts_a_head_fed_by_a_multiple_of_the_mean(tiny_2d):
    import warnings

    model, x = tiny_2d
    net = SumPoolNet(model).eval()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        got = CAM(net, [model.relu3])(x, targets=[1, 3])
    np.testing.assert_allclose(got, CAM(model, [model.relu3])(x, targets=[1, 3]), atol=1e-6)
