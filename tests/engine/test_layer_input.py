"""LayerInput: the input of a module as a target layer, for features that no module returns on its own.

Every method whose map comes from its target layers gives, at ``LayerInput(model.pool)``, exactly the map it
gives at a module returning that same tensor (``Tap``, in an otherwise identical model), with the hooks
gone afterwards; AblationCAM's replay swaps the pool's ``forward`` to run on the ablated copies.
"""

import numpy as np
import pytest
import torch
from torch import nn

from pytorch_grad_cam import GradCAM, LayerInput
from tests import cam_factory
from tests.models import seeded_input, shared_activation_net


@pytest.mark.parametrize("name", cam_factory.LAYERED)
def test_every_method_at_a_modules_input_equals_the_same_tensor_as_a_modules_output(name):
    model, tapped = shared_activation_net(), shared_activation_net(tap=True)
    x = seeded_input(2, 3, 12, 12, seed=1)
    kwargs = {"fc_layer": model.fc} if name == "cam" else {}
    at_input = cam_factory.make_cam(name, model, [LayerInput(model.pool)], **kwargs)(x, targets=[2, 4])
    kwargs = {"fc_layer": tapped.fc} if name == "cam" else {}
    at_tap = cam_factory.make_cam(name, tapped, [tapped.tap], **kwargs)(x, targets=[2, 4])
    np.testing.assert_array_equal(at_input, at_tap)
    assert float((at_input.reshape(2, -1).max(1) - at_input.reshape(2, -1).min(1)).min()) > 0.5
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in model.modules())
    assert not any("forward" in m.__dict__ for m in model.modules())  # AblationCAM's swap undone


def test_layer_input_is_a_marker_named_after_its_module():
    model = shared_activation_net()
    marked = LayerInput(model.pool)
    assert marked.module is model.pool
    assert list(marked.children()) == []  # not part of the model, nor holding a part of it
    with pytest.raises(TypeError, match="it is never run"):
        marked(torch.zeros(1))
    with pytest.raises(TypeError, match=r"LayerInput takes an nn\.Module, got int"):
        LayerInput(3)
    with pytest.raises(ValueError, match=r"target_layers\[0\] \(LayerInput\) is not a module of the model"):
        GradCAM(model, [LayerInput(nn.ReLU())])
    shared = LayerInput(model.act)  # the ReLU6 of the stem and of the head: runs twice
    with pytest.raises(ValueError, match="target layer 'act:input' ran more than once"):
        GradCAM(model, [shared])(seeded_input(1, 3, 12, 12, seed=1), targets=[0])
