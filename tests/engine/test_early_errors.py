"""The common mistakes of a first call get a clear ValueError before the expensive work (issue: they fell
through to torch's errors): one image without the batch dimension and channels last before any forward pass,
tokens without a reshape_transform right after it; and a head of zeros gets its own warning."""

import pytest
import torch

from pytorch_grad_cam import METHODS, PIXEL_METHODS, DeepFeatureFactorization, FullGrad, GradCAM
from tests.cam_factory import make_cam
from tests.models import TinyViT, make_tiny, seeded_input


def _forwards(model):
    calls = []
    model.register_forward_pre_hook(lambda module, args: calls.append(1))
    return calls


CALLS = {
    "gradcam": lambda model, x: GradCAM(model, [model.block])(x),
    "scorecam": lambda model, x: make_cam("scorecam", model, [model.block])(x),
    "fullgrad": lambda model, x: FullGrad(model)(x),
    "guidedbackprop": lambda model, x: PIXEL_METHODS["guidedbackprop"](model)(x),
    "dff": lambda model, x: DeepFeatureFactorization(model, model.block)(x, 2),
}


@pytest.mark.parametrize("call", list(CALLS))
def test_one_image_without_the_batch_dimension(call):
    model = make_tiny()
    calls = _forwards(model)
    with pytest.raises(
        ValueError, match=r"got shape \(3, 12, 12\): one input without the batch dimension"
    ) as e:
        CALLS[call](model, seeded_input(3, 12, 12))
    assert "input_tensor.unsqueeze(0)" in str(e.value)
    assert "(B, 3, H, W)" in str(e.value)
    assert calls == []  # before any forward pass (BatchNorm's "expected 4D input" came from one)


@pytest.mark.parametrize("call", list(CALLS))
def test_channels_last_images(call):
    model = make_tiny()
    calls = _forwards(model)
    with pytest.raises(ValueError, match=r"got shape \(1, 12, 10, 3\): channels last; pass input_tensor"):
        CALLS[call](model, seeded_input(1, 12, 10, 3))
    assert calls == []


def test_a_1d_model_takes_a_batch_of_one_channel_signals():
    """Not a false alarm: (B, C, L) for a Conv1d model whose B equals its channels is a batch."""
    model = torch.nn.Sequential(
        torch.nn.Conv1d(2, 4, 3), torch.nn.ReLU(), torch.nn.Flatten(), torch.nn.LazyLinear(3)
    )
    x = seeded_input(2, 2, 16)
    model(x)
    assert GradCAM(model, [model[1]])(x, targets=[0, 1]).shape == (2, 16)


@pytest.mark.parametrize("method", ["gradcam", "scorecam", "ablationcam", "eigencam"])
def test_tokens_without_a_reshape_transform_name_the_fix(method):
    torch.manual_seed(0)
    model = TinyViT(encoder_blocks=2).eval()
    with pytest.raises(
        ValueError, match=r"target layer 'blocks.1' outputs \(1, 13, 8\) for an input of shape"
    ) as e:
        make_cam(method, model, [model.blocks[1]])(seeded_input(1, 3, 12, 16), targets=[0])
    assert "reshape_transform=vit_reshape_transform" in str(e.value)
    assert "find_target_layer(model, x)" in str(e.value)


def test_a_head_of_zeros_is_named_not_the_target():
    """torchvision's ViT built without weights has a zero head: every class scores the same."""
    model = make_tiny()
    torch.nn.init.zeros_(model.head.weight)
    torch.nn.init.zeros_(model.head.bias)
    with pytest.warns(RuntimeWarning) as record:
        maps = METHODS["gradcam"](model, [model.block])(seeded_input(2, 3, 12, 12), targets=[1, 2])
    assert (maps == 0).all()
    messages = [str(w.message) for w in record]
    assert messages[0].startswith("the model gives every class the same score for image(s) [0, 1]")
    assert "torchvision's ViT" in messages[0]
    assert not any("FasterRCNNBoxScoreTarget" in m for m in messages)  # the old, wrong blame
