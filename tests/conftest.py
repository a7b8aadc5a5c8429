"""Shared fixtures (only fixtures: the models are in tests/models.py): tiny seeded conv nets (1D/2D/3D),
a seeded resnet18, seeded inputs."""

import pytest
import torch
import torchvision
from torch import nn

from tests.models import seeded_input, tiny_net


@pytest.fixture
def tiny_2d():
    """(model, input (2, 3, 12, 16)): non-square so that a swapped height/width shows."""
    return tiny_net(2, seed=0), seeded_input(2, 3, 12, 16, seed=1)


@pytest.fixture
def tiny_1d():
    """(model, input (2, 2, 40))."""
    return tiny_net(1, seed=2, in_channels=2), seeded_input(2, 2, 40, seed=3)


@pytest.fixture
def tiny_3d():
    """(model, input (2, 1, 6, 8, 10))."""
    return tiny_net(3, seed=4, in_channels=1), seeded_input(2, 1, 6, 8, 10, seed=5)


@pytest.fixture
def tiny_2d_sigmoid():
    """(model, input) as ``tiny_2d`` but with a sigmoid after ``conv2``."""
    return tiny_net(2, seed=0, act2=nn.Sigmoid()), seeded_input(2, 3, 12, 16, seed=1)


@pytest.fixture(scope="session")
def resnet18_seeded():
    """A random-init torchvision resnet18 (``torch.manual_seed(0)``, no download), in eval mode.

    Session-scoped: tests must not modify it (CAM calls restore the model's state).
    """
    torch.manual_seed(0)
    return torchvision.models.resnet18(weights=None).eval()
