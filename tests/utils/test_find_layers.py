"""pytorch_grad_cam.utils.find_layers: dotted names, layouts, and the traced automatic choice."""

import pytest
import torch
import torchvision
from torch import nn
from torchvision.models import VisionTransformer
from torchvision.models.swin_transformer import SwinTransformer

from pytorch_grad_cam import GradCAM
from pytorch_grad_cam.utils.find_layers import (
    TokenGridReshape,
    channels_last_reshape,
    find_layer_predicate_recursive,
    find_layer_types_recursive,
    find_target_layer,
    get_layer,
    guess_reshape_transform,
    layer_output_layout,
)
from pytorch_grad_cam.utils.reshape_transforms import vit_reshape_transform


def test_get_layer_by_dotted_name_with_negative_indices():
    model = torchvision.models.resnet18()
    assert get_layer(model, "layer4.-1") is model.layer4[-1]
    assert get_layer(model, "layer4.0.conv1") is model.layer4[0].conv1
    assert get_layer(model, "layer3.1") is model.layer3[1]
    with pytest.raises(ValueError, match=r"layer4 \(Sequential\) has no '2'; it has 2 entries"):
        get_layer(model, "layer4.2")
    with pytest.raises(ValueError, match=r"children are \['conv1', 'bn1'"):
        get_layer(model, "layer9")
    with pytest.raises(ValueError, match="dotted path"):
        get_layer(model, "")


def test_find_layers_by_type_and_predicate():
    model = torchvision.models.resnet18()
    convs = find_layer_types_recursive(model, [nn.Conv2d])
    assert len(convs) == 20
    assert convs[0] is model.conv1
    assert find_layer_predicate_recursive(model, lambda m: m is model.fc) == [model.fc]


def test_guess_reshape_transform_layouts():
    tokens = torch.arange(2 * 17 * 3, dtype=torch.float32).reshape(2, 17, 3)  # class token + 4x4
    transform, ok = guess_reshape_transform(tokens)
    assert ok
    assert transform == TokenGridReshape(1, 4, 4)
    torch.testing.assert_close(transform(tokens), vit_reshape_transform(tokens, 4, 4))
    registers = torch.randn(1, 1 + 4 + 49, 8)  # class token + 4 registers + 7x7
    assert guess_reshape_transform(registers)[0] == TokenGridReshape(5, 7, 7)
    swin = torch.randn(1, 7, 7, 96)
    transform, ok = guess_reshape_transform(swin)
    assert ok
    assert transform is channels_last_reshape
    torch.testing.assert_close(transform(swin), swin.permute(0, 3, 1, 2))
    assert guess_reshape_transform(torch.randn(1, 512, 7, 7)) == (None, True)
    assert guess_reshape_transform(torch.randn(1, 3, 5)) == (None, False)  # no square grid
    assert guess_reshape_transform(torch.randn(1, 10)) == (None, False)


def test_twelve_register_tokens_read_the_same_by_guess_and_vit_transform():
    """Class token + 12 registers + a 7x7 grid (62 tokens): the automatic guess and vit_reshape_transform's
    default inference share one prefix limit, so both drop the 13 leading tokens; the guessed transform is
    picklable and equals the plain reshape written out here."""
    import pickle

    tokens = torch.randn(2, 1 + 12 + 49, 5, generator=torch.Generator().manual_seed(0))
    transform, ok = guess_reshape_transform(tokens)
    assert ok
    assert transform == TokenGridReshape(13, 7, 7)
    assert transform.describe() == "tokens -> 7x7 grid, dropping 13 leading token(s)"
    want = torch.stack(
        [torch.stack([tokens[:, 13 + 7 * r + c, :] for c in range(7)], -1) for r in range(7)], -2
    )  # (B, D, 7, 7)
    assert torch.equal(transform(tokens), want)
    assert torch.equal(vit_reshape_transform(tokens), want)
    assert torch.equal(pickle.loads(pickle.dumps(transform))(tokens), want)
    with pytest.raises(ValueError, match="do not fit a 7x7 grid"):
        transform(tokens[:, 1:])  # a layout that is not the guessed one: vit_reshape_transform's error


def test_channels_last_reshape_is_swins_channels_last_branch():
    from pytorch_grad_cam.utils.reshape_transforms import swinT_reshape_transform

    maps = torch.randn(2, 3, 4, 6)  # (B, H, W, C)
    want = torch.stack([maps[..., c] for c in range(6)], 1)  # (B, C, H, W)
    assert torch.equal(channels_last_reshape(maps), want)
    assert torch.equal(swinT_reshape_transform(maps), want)
    volume = torch.randn(1, 2, 3, 4, 5)  # (B, D, H, W, C): any number of spatial dims
    assert torch.equal(channels_last_reshape(volume), torch.stack([volume[..., c] for c in range(5)], 1))


def _state(model):
    return [m.training for m in model.modules()], [p.requires_grad for p in model.parameters()]


@pytest.mark.parametrize(
    ("arch", "expected"), [("resnet18", "layer4"), ("vgg11", "features"), ("mobilenet_v3_small", "features")]
)
def test_find_target_layer_on_cnns(arch, expected):
    torch.manual_seed(0)
    model = torchvision.models.get_model(arch).train()
    before = _state(model)
    found = find_target_layer(model, torch.randn(1, 3, 64, 64))
    assert found.name == expected
    assert found.reshape_transform is None
    assert len(found.output_shape) == 4
    assert _state(model) == before  # training flags and requires_grad as they were
    assert all(p.grad is None for p in model.parameters())
    assert not any(m._forward_hooks for m in model.modules())


def test_find_target_layer_on_vit_picks_the_last_attention_input():
    """After the last block's attention, patch tokens no longer reach the class token: the gradient
    there is zero at every patch, so the last layer the class score depends on is ln_1 of the last block."""
    torch.manual_seed(0)
    vit = VisionTransformer(
        image_size=32, patch_size=8, num_layers=2, num_heads=2, hidden_dim=32, mlp_dim=64
    ).eval()
    nn.init.normal_(vit.heads.head.weight)  # torchvision initialises the head to zeros
    found = find_target_layer(vit, torch.randn(2, 3, 32, 32))
    assert found.name == "encoder.layers.encoder_layer_1.ln_1"
    assert found.reshape_transform == TokenGridReshape(1, 4, 4)
    maps = GradCAM(vit, [found.layer], reshape_transform=found.reshape_transform)(
        torch.randn(2, 3, 32, 32), targets=[0, 1]
    )
    assert maps.shape == (2, 32, 32)
    assert (maps.reshape(2, -1).std(1) > 0.05).all()


def test_find_target_layer_on_swin():
    torch.manual_seed(0)
    swin = SwinTransformer(
        patch_size=[4, 4], embed_dim=16, depths=[1, 1], num_heads=[2, 2], window_size=[2, 2]
    ).eval()
    found = find_target_layer(swin, torch.randn(1, 3, 32, 32))
    # torchvision's Swin permutes its channels-last features back to (B, C, H, W) after the last norm
    assert found.name == "permute"
    assert found.output_shape == (1, 32, 4, 4)
    head = nn.Sequential(swin.features, swin.norm, nn.Flatten(1), nn.LazyLinear(3))  # (B, H, W, C) norm
    channels_last = find_target_layer(head, torch.randn(1, 3, 32, 32))
    assert channels_last.name == "1"
    assert channels_last.reshape_transform is channels_last_reshape


def test_find_target_layer_moves_the_input_to_the_models_dtype():
    """A bfloat16 model and a float32 input: the input goes to the model's dtype, as in every method
    (it used to raise a dtype mismatch); the user's tensor is untouched and the model left as found."""
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(4, 6, 3, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(6, 3),
    )
    model = model.to(torch.bfloat16).train()
    model[0].weight.requires_grad_(False)
    x = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    x_before, before = x.clone(), _state(model)
    found = find_target_layer(model, x)
    assert found.name == "3"
    assert found.layer is model[3]
    assert found.output_shape == (2, 6, 8, 8)
    assert torch.equal(x, x_before)
    assert x.dtype == torch.float32
    assert not x.requires_grad
    assert _state(model) == before
    assert all(p.grad is None for p in model.parameters())
    assert not any(m._forward_hooks for m in model.modules())
    assert not any(p.dtype != torch.bfloat16 for p in model.parameters())


def test_find_target_layer_errors():
    flat = nn.Sequential(nn.Flatten(), nn.Linear(12, 2))
    with pytest.raises(ValueError, match="no layer with a spatial output"):
        find_target_layer(flat, torch.randn(1, 3, 2, 2))
    seg = torchvision.models.resnet18()
    with pytest.raises(ValueError, match="pass score="):
        find_target_layer(nn.Sequential(*list(seg.children())[:-2]), torch.randn(1, 3, 32, 32))


def test_layer_output_layout_reads_cnn_vit_and_channels_last_outputs():
    """The output shape, the guessed transform and the (B, C, *spatial) shape it gives, for a CNN block,
    ViT tokens (class token + 4x4 patches) and a Swin-style (B, H, W, C) map; the model is left as found."""
    torch.manual_seed(0)
    resnet = torchvision.models.resnet18().train()
    before = _state(resnet)
    layout = layer_output_layout(resnet, resnet.layer4[-1], torch.randn(2, 3, 64, 64))
    assert layout.output_shape == (2, 512, 2, 2)
    assert layout.map_shape == (2, 512, 2, 2)
    assert layout.reshape_transform is None
    assert _state(resnet) == before
    assert not any(m._forward_hooks for m in resnet.modules())

    vit = VisionTransformer(
        image_size=32, patch_size=8, num_layers=2, num_heads=2, hidden_dim=32, mlp_dim=64
    ).eval()
    layer = vit.encoder.layers[-1].ln_1
    x = torch.randn(1, 3, 32, 32)
    layout = layer_output_layout(vit, layer, x)
    assert layout.output_shape == (1, 17, 32)
    assert layout.map_shape == (1, 32, 4, 4)
    assert layout.reshape_transform == TokenGridReshape(1, 4, 4)
    tokens = []
    handle = layer.register_forward_hook(lambda module, inputs, output: tokens.append(output))
    with torch.no_grad():
        vit(x)
    handle.remove()
    grid = layout.reshape_transform(tokens[0])  # patch (r, c) is token 1 + 4 * r + c
    assert torch.equal(grid[0, :, 2, 3], tokens[0][0, 1 + 4 * 2 + 3])

    swin = SwinTransformer(
        patch_size=[4, 4], embed_dim=16, depths=[1, 1], num_heads=[2, 2], window_size=[2, 2]
    ).eval()
    layout = layer_output_layout(swin, swin.norm, torch.randn(1, 3, 32, 32))
    assert layout.output_shape == (1, 4, 4, 32)
    assert layout.map_shape == (1, 32, 4, 4)
    assert layout.reshape_transform is channels_last_reshape


def test_layer_output_layout_errors_name_the_problem():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten(), nn.Linear(4 * 4 * 4, 2))
    unused = nn.Conv2d(3, 3, 1)
    x = torch.randn(1, 3, 6, 6)
    with pytest.raises(ValueError, match="the layer did not run"):
        layer_output_layout(model, unused, x)
    with pytest.raises(ValueError, match=r"its output \(1, 64\) is not a spatial map"):
        layer_output_layout(model, model[1], x)

    class TupleOut(nn.Module):
        def forward(self, x):
            return x, x

    net = nn.Sequential(TupleOut())
    with pytest.raises(ValueError, match="the layer returns tuple"):
        layer_output_layout(net, net[0], x)


# ------------------------------------------------------------------------------ the method's own layer
def _bn_output(model, x):
    kept = []
    handle = model.head_bn.register_forward_hook(lambda m, i, o: kept.append(o))
    with torch.no_grad():
        model(x)
    handle.remove()
    return kept[0]


def test_find_target_layer_moves_past_the_activation_for_methods_that_need_it():
    """Conv-BN-ReLU6 ending whose ReLU6 module also serves the stem (as in the bundled EfficientNet-Lite0):
    the method-agnostic choice, and Grad-CAM's, stays the batch norm; Score-CAM's (a method declaring
    needs_nonnegative_activations) is the input of the pool, the features after the shared ReLU6."""
    from pytorch_grad_cam import GradCAM, ScoreCAM
    from pytorch_grad_cam.utils.find_layers import LayerInput
    from tests.models import seeded_input, shared_activation_net

    model = shared_activation_net()
    x = seeded_input(2, 3, 12, 12, seed=1)
    lowest = float(_bn_output(model, x).min())
    assert lowest < 0  # the case: the batch norm's output has negative values
    plain = find_target_layer(model, x)
    assert (plain.name, plain.layer, plain.reason) == ("head_bn", model.head_bn, "")
    for method in ("gradcam", GradCAM, GradCAM(model, [model.head_bn])):
        found = find_target_layer(model, x, method=method)
        assert (found.name, found.layer, found.reason) == ("head_bn", model.head_bn, "")
    for method in ("scorecam", "ScoreCAM", ScoreCAM, ScoreCAM(model, [model.head_bn])):
        found = find_target_layer(model, x, method=method)
        assert found.name == "pool:input"
        assert isinstance(found.layer, LayerInput)
        assert found.layer.module is model.pool
        assert found.output_shape == (2, 8, 6, 6)
        assert found.reshape_transform is None
        assert found.reason == (
            f"scorecam needs non-negative activations and head_bn's output has negative values (min "
            f"{lowest:.3g}); pool:input is the nearest non-negative activation after it"
        )
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in model.modules())
    with pytest.raises(ValueError, match="unknown method 'nope'"):
        find_target_layer(model, x, method="nope")


def test_find_target_layer_names_a_modules_output_before_a_modules_input():
    """An activation module that runs once is the chosen layer itself (it is the last to finish) for every
    method; the pool's input, the same tensor, is not offered twice."""
    from tests.models import seeded_input, shared_activation_net

    model = shared_activation_net(tap=True)
    x = seeded_input(1, 3, 12, 12, seed=1)
    for method in (None, "gradcam", "scorecam", "xgradcam"):
        found = find_target_layer(model, x, method=method)
        assert (found.name, found.layer, found.reason) == ("tap", model.tap, "")


def test_find_target_layer_falls_back_to_the_nearest_activation_before_or_keeps_its_choice():
    """Nothing non-negative after the batch norm: the nearest ReLU before it, said so; nothing non-negative
    at all (the model's own input is never a candidate): the method-agnostic layer, said so."""
    torch.manual_seed(0)
    head = [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3)]
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Conv2d(4, 4, 3), nn.BatchNorm2d(4), *head).eval()
    with torch.no_grad():
        model[3].bias.fill_(-0.3)
    x = torch.rand(1, 3, 10, 10)  # non-negative, but the model's input
    found = find_target_layer(model, x, method="gradcam++")
    assert (found.name, found.layer) == ("1", model[1])
    assert found.reason.endswith("; 1 is the nearest non-negative activation before it")
    flat = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), *head).eval()
    with torch.no_grad():
        flat[1].bias.fill_(-5.0)
    found = find_target_layer(flat, x, method="scorecam")
    assert (found.name, found.layer) == ("1", flat[1])
    assert found.reason.endswith("but no spatial layer with a non-negative output was found: kept 1")


def test_get_layer_and_layout_of_a_modules_input():
    from pytorch_grad_cam.utils.find_layers import LayerInput
    from tests.models import seeded_input, shared_activation_net

    model = shared_activation_net()
    marked = get_layer(model, "pool:input")
    assert isinstance(marked, LayerInput)
    assert marked.module is model.pool
    assert layer_output_layout(model, marked, seeded_input(1, 3, 12, 12, seed=1)).output_shape == (1, 8, 6, 6)
    with pytest.raises(ValueError, match="the only suffix is ':input'"):
        get_layer(model, "pool:output")
    with pytest.raises(ValueError, match="has no 'nope'"):
        get_layer(model, "nope:input")


def test_scorecams_map_at_its_own_layer_is_not_the_all_zero_map_of_the_batch_norm():
    """The issue in miniature: at the batch norm before the last ReLU6 (the method-agnostic choice) every
    Score-CAM weight is positive and the activations mostly negative, so relu(sum_k w_k A_k) is all zeros
    (with a warning); at the layer find_target_layer gives Score-CAM, the map spans [0, 1]."""
    from pytorch_grad_cam import ScoreCAM
    from tests.models import seeded_input, shared_activation_net

    model = shared_activation_net()
    x = seeded_input(2, 3, 12, 12, seed=1)
    with pytest.warns(RuntimeWarning, match="the CAM of layer 'head_bn' is constant for image"):
        zeros = ScoreCAM(model, [find_target_layer(model, x).layer])(x, targets=[2, 4])
    assert not zeros.any()
    found = find_target_layer(model, x, method="scorecam")
    maps = ScoreCAM(model, [found.layer])(x, targets=[2, 4])
    assert (maps.reshape(2, -1).min(1) == 0).all()
    assert (maps.reshape(2, -1).max(1) > 0.99).all()
