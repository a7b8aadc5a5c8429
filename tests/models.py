"""The zoo: every model class the tests use, each with a docstring, and the seeded builders.

Nothing here imports ``pytorch_grad_cam``: the models are plain torch, so that the reference drivers
(subprocesses running grad-cam 1.5.7, see ``reference_library.py``) can import this file too, as the
top-level module ``models`` (``sys.path.append(<tests dir>)``). Tests import it as ``tests.models``;
the fixtures built from it live in ``conftest.py``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F  # noqa: F401
from torch import nn

NUM_CLASSES = 5  # the class count of the engine tests' models

_CONV = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}


class TinyConvNet(nn.Module):
    """conv1 - relu1 - conv2 (stride 2) - relu2 - conv3 - relu3 - global average pool - fc.

    ``conv2`` has negative values and, through ``relu2``/``relu3``, exactly-zero gradients; the head
    after ``relu2`` is non-linear, so gradients vary over positions. Works for 1, 2 or 3 spatial dims.
    ``act2`` replaces ``relu2`` (e.g. ``nn.Sigmoid()``, through which a negative value of ``conv2`` is not
    the same as zero).
    """

    def __init__(
        self, dim: int = 2, in_channels: int = 3, num_classes: int = 5, act2: nn.Module | None = None
    ) -> None:
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


def tiny_net(dim: int, seed: int = 0, in_channels: int = 3, act2: nn.Module | None = None) -> TinyConvNet:
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


# ================================================================ engine: invariants and robustness
class TrainingRecorder(nn.Module):
    """Identity that records ``self.training`` at every forward call."""

    def __init__(self):
        super().__init__()
        self.seen = []

    def forward(self, x):
        self.seen.append(self.training)
        return x


def make_model(seed=0):
    """A :class:`TinyBNNet` with train-mode probes, non-trivial BatchNorm statistics (seeded)."""
    torch.manual_seed(seed)
    model = TinyBNNet(train_mode_probes=True)
    with torch.no_grad():  # non-trivial BatchNorm statistics, so eval and train modes differ
        for bn in (model.stem[1], model.block[1]):
            bn.running_mean.uniform_(-0.2, 0.2)
            bn.running_var.uniform_(0.5, 1.5)
    return model


class InPlaceInput(nn.Module):
    """A model that modifies its input in place: the user's tensor must still come back unchanged."""

    def __init__(self):
        super().__init__()
        self.inner = make_model()

    def forward(self, x):
        x.mul_(2.0)
        return self.inner(x)


class CountingIdentity(torch.autograd.Function):
    """Identity whose backward counts its calls in ``backward_calls``."""

    backward_calls = 0

    @staticmethod
    def forward(ctx, x):
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        CountingIdentity.backward_calls += 1
        return grad


class Counted(nn.Module):
    """Applies :class:`CountingIdentity` (counts the backward passes through it)."""

    def forward(self, x):
        return CountingIdentity.apply(x)


class WithCounter(nn.Module):
    """stem - :class:`Counted` - block - head: counts the backward passes that reach before ``block``."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.ReLU())
        self.counted = Counted()
        self.block = nn.Sequential(nn.Conv2d(6, 8, 3, padding=1), nn.ReLU())
        self.head = nn.Linear(8, NUM_CLASSES)

    def forward(self, x):
        return self.head(self.block(self.counted(self.stem(x))).mean((2, 3)))


def randomize_bn(model, seed=0):
    """Non-trivial BatchNorm statistics and affine parameters (fresh ones are the identity)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.copy_(torch.rand(m.num_features, generator=generator) * 0.4 - 0.2)
                m.running_var.copy_(torch.rand(m.num_features, generator=generator) + 0.5)
                m.weight.copy_(torch.rand(m.num_features, generator=generator) + 0.5)
                m.bias.copy_(torch.rand(m.num_features, generator=generator) * 0.4 - 0.2)
    return model.eval()


class ResBlock(nn.Module):
    """A ResNet basic block, with in-place ops (``ReLU(inplace=True)``, ``out += identity``) or without."""

    def __init__(self, channels, inplace):
        super().__init__()
        self.inplace = inplace
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.relu = nn.ReLU(inplace=inplace)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)

    def forward(self, x):
        identity = x
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        if self.inplace:
            out += identity
        else:
            out = out + identity
        return self.relu(out)


class ResNetTiny(nn.Module):
    """conv - ReLU - two :class:`ResBlock` - global average pool - fc; ``inplace`` as for the blocks."""

    def __init__(self, inplace):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.relu = nn.ReLU(inplace=inplace)
        self.block1 = ResBlock(8, inplace)
        self.block2 = ResBlock(8, inplace)
        self.fc = nn.Linear(8, NUM_CLASSES)

    def forward(self, x):
        x = self.block2(self.block1(self.relu(self.conv(x))))
        return self.fc(x.mean((2, 3)))


class TinyBNNet(nn.Module):
    """stem (conv, BatchNorm, ReLU) - block (stride-2 conv, BatchNorm, ReLU) - global average pool - head.

    ``train_mode_probes=True`` adds what behaves differently in train mode or must stay untouched (the
    engine invariants' model): a :class:`TrainingRecorder` after ``stem``, a registered but never called
    ``unused`` conv and a ``Dropout(0.5)`` before the head. The modules are created in the same order
    either way, so a seed gives each variant the weights it always had.
    """

    def __init__(self, in_channels=3, num_classes=NUM_CLASSES, train_mode_probes=False):
        super().__init__()
        self.train_mode_probes = train_mode_probes
        self.stem = nn.Sequential(nn.Conv2d(in_channels, 6, 3, padding=1), nn.BatchNorm2d(6), nn.ReLU())
        if train_mode_probes:
            self.recorder = TrainingRecorder()
        self.block = nn.Sequential(nn.Conv2d(6, 8, 3, padding=1, stride=2), nn.BatchNorm2d(8), nn.ReLU())
        if train_mode_probes:
            self.unused = nn.Conv2d(8, 8, 1)  # registered but never called
            self.drop = nn.Dropout(0.5)
        self.head = nn.Linear(8, num_classes)

    def forward(self, x):
        if not self.train_mode_probes:
            return self.head(self.block(self.stem(x)).mean((2, 3)))
        x = self.recorder(self.stem(x))
        x = self.block(x)  # (B, 8, H/2, W/2)
        return self.head(self.drop(x.mean((2, 3))))


def make_tiny(seed=0):
    """A seeded :class:`TinyBNNet` with non-trivial BatchNorm (:func:`randomize_bn`), in eval mode."""
    torch.manual_seed(seed)
    return randomize_bn(TinyBNNet(), seed)


class SharedConv(nn.Module):
    """One conv applied twice in a row (a module that runs more than once), after a 1x1 input conv."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(4, 4, 3, padding=1)
        self.inp = nn.Conv2d(3, 4, 1)
        self.head = nn.Linear(4, NUM_CLASSES)

    def forward(self, x):
        x = self.conv(torch.relu(self.conv(self.inp(x))))  # the same module applied twice
        return self.head(x.mean((2, 3)))


class SharedAroundTarget(nn.Module):
    """One conv applied twice before the target layer and once after it (``shared=True``), or three
    separate convs with the same weights (``shared=False``): the same function."""

    def __init__(self, shared):
        super().__init__()
        self.inp = nn.Conv2d(3, 4, 1)
        self.a = nn.Conv2d(4, 4, 3, padding=1)
        self.b = self.a if shared else nn.Conv2d(4, 4, 3, padding=1)
        self.c = self.a if shared else nn.Conv2d(4, 4, 3, padding=1)
        self.target = nn.Conv2d(4, 4, 3, padding=1)
        self.head = nn.Linear(4, NUM_CLASSES)

    def forward(self, x):
        x = torch.tanh(self.b(torch.tanh(self.a(torch.tanh(self.inp(x))))))
        x = self.c(torch.relu(self.target(x)))
        return self.head(x.mean((2, 3)))


class Counting(nn.Module):
    """Wraps a model and counts its forward passes (the 'expensive work')."""

    def __init__(self, inner):
        super().__init__()
        self.inner = inner
        self.calls = 0

    def forward(self, x):
        self.calls += x.shape[0]  # images seen
        return self.inner(x)


class WithExtras(nn.Module):
    """Tiny, plus a layer that never runs, a side branch not on the output path, and a tuple layer."""

    def __init__(self):
        super().__init__()
        self.tiny = make_tiny()
        self.never = nn.Conv2d(8, 8, 1)
        self.side = nn.Conv2d(6, 6, 1)
        self.pair = PairOut()

    def forward(self, x):
        feats = self.tiny.stem(x)
        self.side(feats)  # computed, then thrown away
        feats, _ = self.pair(feats)
        return self.tiny.head(self.tiny.block(feats).mean((2, 3)))


class PairOut(nn.Module):
    """Returns a tuple ``(x, x.detach())``: a layer whose output is not a tensor."""

    def forward(self, x):
        return x, x.detach()


class NaNHead(nn.Module):
    """A seeded :class:`TinyBNNet` whose logits 1 and 4 are multiplied by NaN and Inf."""

    def __init__(self):
        super().__init__()
        self.tiny = make_tiny()

    def forward(self, x):
        out = self.tiny(x)
        return out * torch.tensor([1.0, float("nan"), 1.0, 1.0, float("inf")])


class ConstantLayer(nn.Module):
    """A target layer ``flat`` (zero weights, bias 1) whose output is constant."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 4, 3, padding=1)
        self.flat = nn.Conv2d(4, 4, 1)  # zero weights, bias 1: a constant output, the target
        with torch.no_grad():
            self.flat.weight.zero_()
            self.flat.bias.fill_(1.0)
        self.head = nn.Linear(4, NUM_CLASSES)

    def forward(self, x):
        return self.head(self.flat(self.stem(x)).mean((2, 3)))


class NegativeHead(nn.Module):
    """Non-negative activations and all-negative class weights: every CAM weight is <= 0."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.features = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU())
        self.head = nn.Linear(4, NUM_CLASSES)
        with torch.no_grad():
            self.head.weight.copy_(-torch.rand(NUM_CLASSES, 4) - 0.1)

    def forward(self, x):
        return self.head(self.features(x).mean((2, 3)))


class Net1d(nn.Module):
    """Two Conv1d stages (the second stride 2) - average pool - head, for 2-channel signals."""

    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv1d(2, 6, 5, padding=2), nn.ReLU(), nn.Conv1d(6, 8, 3, padding=1, stride=2), nn.ReLU()
        )
        self.head = nn.Linear(8, NUM_CLASSES)

    def forward(self, x):
        return self.head(self.features(x).mean(-1))


class Net3d(nn.Module):
    """Two Conv3d stages (the second stride 2) - average pool - head, for 1-channel volumes."""

    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv3d(1, 4, 3, padding=1), nn.ReLU(), nn.Conv3d(4, 6, 3, padding=1, stride=2), nn.ReLU()
        )
        self.head = nn.Linear(6, NUM_CLASSES)

    def forward(self, x):
        return self.head(self.features(x).mean((2, 3, 4)))
