"""The zoo: every model class the tests use, each with a docstring, and the seeded builders.

Nothing here imports ``pytorch_grad_cam``: the models are plain torch, so that the reference drivers
(subprocesses running grad-cam 1.5.7, see ``reference_library.py``) can import this file too, as the
top-level module ``models`` (``sys.path.append(<tests dir>)``). Tests import it as ``tests.models``;
the fixtures built from it live in ``conftest.py``.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import nn

_CONV = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}


class TinyConvNet(nn.Module):
    """conv1 - relu1 - conv2 (stride 2) - relu2 - conv3 - relu3 - global average pool - fc.

    ``conv2`` has negative values and, through ``relu2``/``relu3``, exactly-zero gradients; the head
    after ``relu2`` is non-linear, so gradients vary over positions. Works for 1, 2 or 3 spatial dims.
    ``act2`` replaces ``relu2`` (e.g. ``nn.Sigmoid()``, through which a negative value of ``conv2`` is not
    the same as zero).
    """

    def __init__(self, dim: int = 2, in_channels: int = 3, num_classes: int = 5,
                 act2: Optional[nn.Module] = None) -> None:
        super().__init__()
        conv = _CONV[dim]
        self.conv1 = conv(in_channels, 4, 3, padding=1)
        self.relu1 = nn.ReLU()
        self.conv2 = conv(4, 6, 3, stride=2, padding=1)
        self.relu2 = nn.ReLU() if act2 is None else act2
        self.conv3 = conv(6, 8, 3, padding=1)
        self.relu3 = nn.ReLU()
        self.fc = nn.Linear(8, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu2(self.conv2(self.relu1(self.conv1(x))))
        x = self.relu3(self.conv3(x))
        return self.fc(x.flatten(2).mean(-1))


def tiny_net(dim: int, seed: int = 0, in_channels: int = 3, act2: Optional[nn.Module] = None) -> TinyConvNet:
    """A :class:`TinyConvNet` with weights drawn from ``torch.manual_seed(seed)``, in eval mode.

    The classifier is scaled by 10 so that the logits are of order 1 (ScoreCAM's softmax weights are then
    not all alike, and its maps depend on the class)."""
    torch.manual_seed(seed)
    model = TinyConvNet(dim, in_channels, act2=act2).eval()
    with torch.no_grad():
        model.fc.weight.mul_(10)
        model.fc.bias.mul_(10)
    return model


def seeded_input(*shape: int, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=generator)
