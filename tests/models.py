"""The zoo: every model class the tests use, each with a docstring, and the seeded builders.

Nothing here imports ``pytorch_grad_cam``: the models are plain torch, so that the reference drivers
(subprocesses running grad-cam 1.5.7, see ``reference_library.py``) can import this file too, as the
top-level module ``models`` (``sys.path.append(<tests dir>)``). Tests import it as ``tests.models``;
the fixtures built from it live in ``conftest.py``.
"""

from __future__ import annotations

from collections import OrderedDict

import torch
import torch.nn.functional as F
import torch.utils.checkpoint
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


class SharedActivationNet(nn.Module):
    """The bundled EfficientNet-Lite0's ending in miniature: Conv-BN-act stem, Conv-BN-act head, pool, linear.

    One ``act`` (ReLU6) module serves the stem and the head, so the head's post-activation map is no module's
    output of its own (``act`` runs twice): it is only reachable as the input of ``pool``
    (``LayerInput(model.pool)``); ``head_bn``'s output is mostly negative once :func:`randomize_bn` has
    set its statistics. ``tap=True`` puts :class:`Tap` (a module returning its input) between ``act`` and
    ``pool``: the same map as a module's output, for comparisons.
    """

    def __init__(self, tap: bool = False, num_classes: int = NUM_CLASSES) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 6, 3, padding=1)
        self.stem_bn = nn.BatchNorm2d(6)
        self.head = nn.Conv2d(6, 8, 3, stride=2, padding=1)
        self.head_bn = nn.BatchNorm2d(8)
        self.act = nn.ReLU6()
        self.tap = Tap() if tap else None
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(8, num_classes)

    def forward(self, x):
        x = self.act(self.stem_bn(self.stem(x)))
        x = self.act(self.head_bn(self.head(x)))  # (B, 8, H/2, W/2), in [0, 6]
        if self.tap is not None:
            x = self.tap(x)
        return self.fc(self.pool(x).flatten(1))


class Tap(nn.Module):
    """Returns its input: makes a tensor the output of a module of its own (not an ``nn.Identity``)."""

    def forward(self, x):
        return x


def shared_activation_net(tap: bool = False, seed: int = 0) -> SharedActivationNet:
    """A seeded :class:`SharedActivationNet` in eval mode; ``head_bn`` shifted: its output mostly negative."""
    torch.manual_seed(seed)
    model = randomize_bn(SharedActivationNet(tap), seed)
    with torch.no_grad():
        model.head_bn.bias.sub_(0.5)
    return model


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


# ============================================================================ activation checkpointing
#: torch's reentrant checkpoint Function as bound when this module is imported. A model that calls it
#: directly stands for another library's reentrant checkpoint (DeepSpeed, fairscale), which a CAM call
#: cannot run inline.
TORCH_CHECKPOINT_FUNCTION = torch.utils.checkpoint.CheckpointFunction


class CheckpointedNet(nn.Module):
    """Four conv-SiLU blocks (3-4-6-8-8 channels, the second with stride 2) - global average pool - fc.

    ``blocks[start:stop]`` (``segment``) run as one activation-checkpointed segment, by ``checkpoint``:
    ``"none"`` (no checkpoint), ``"reentrant"`` / ``"non-reentrant"``
    (``torch.utils.checkpoint.checkpoint(..., use_reentrant=True/False)``), ``"sequential-reentrant"`` /
    ``"sequential-non-reentrant"`` (``checkpoint_sequential`` over all four blocks in four segments:
    blocks 0-2 checkpointed, block 3 not; ``segment`` is ignored), ``"foreign"``
    (:data:`TORCH_CHECKPOINT_FUNCTION` called directly), or ``"no-grad"`` (not a checkpoint: the segment
    under ``torch.no_grad()``, as a frozen part). The model always checkpoints, also in eval mode.
    SiLU is smooth, so the score's Hessian is not zero (ShapleyCAM).
    """

    def __init__(self, segment: tuple[int, int] | None = None, checkpoint: str = "reentrant") -> None:
        super().__init__()
        widths = [(3, 4, 1), (4, 6, 2), (6, 8, 1), (8, 8, 1)]
        self.blocks = nn.Sequential(
            *[nn.Sequential(nn.Conv2d(a, b, 3, stride=s, padding=1), nn.SiLU()) for a, b, s in widths]
        )
        self.fc = nn.Linear(8, NUM_CLASSES)
        self.segment = segment
        self.checkpoint = checkpoint

    def _checkpointed(self, segment: nn.Module, x: torch.Tensor) -> torch.Tensor:
        if self.checkpoint == "foreign":
            return TORCH_CHECKPOINT_FUNCTION.apply(segment, True, x)
        if self.checkpoint == "no-grad":
            with torch.no_grad():
                return segment(x)
        reentrant = self.checkpoint == "reentrant"
        return torch.utils.checkpoint.checkpoint(segment, x, use_reentrant=reentrant)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.checkpoint.startswith("sequential"):
            reentrant = self.checkpoint == "sequential-reentrant"
            x = torch.utils.checkpoint.checkpoint_sequential(self.blocks, 4, x, use_reentrant=reentrant)
        elif self.segment is None or self.checkpoint == "none":
            x = self.blocks(x)
        else:
            start, stop = self.segment
            x = self.blocks[:start](x)
            x = self._checkpointed(self.blocks[start:stop], x)
            x = self.blocks[stop:](x)
        return self.fc(x.mean((2, 3)))


def checkpointed_net(segment: tuple[int, int] | None = None, checkpoint: str = "none") -> CheckpointedNet:
    """A :class:`CheckpointedNet` with the weights of ``torch.manual_seed(0)`` (the same for every layout)."""
    torch.manual_seed(0)
    model = CheckpointedNet(segment, checkpoint).eval()
    with torch.no_grad():
        model.fc.weight.mul_(10)  # logits of order 1
    return model


# ============================================================================ call counters
class CountCalls(nn.Module):
    """Wraps a model and records its forward calls: ``calls`` (how many) and ``batches`` (the batch size
    of each, e.g. for checking that perturbation methods batch their masked inputs). Attributes it does
    not have are looked up on the wrapped model. (:class:`Counting` counts images instead of calls.)"""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner
        self.calls = 0
        self.batches: list = []

    def forward(self, x):
        self.calls += 1
        self.batches.append(x.shape[0])
        return self.inner(x)

    def __getattr__(self, name):
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(self.inner, name)


# ============================================================================ small CNN classifiers
class SmallNet(nn.Module):
    """conv - relu - conv (stride 2) - relu [target] - mean - linear (logits of order 1).

    (B, 3, H, W) -> ``act``: (B, 5, H/2, W/2) -> (B, ``num_classes``); the perturbation tests (4 classes)
    build it with :func:`small_net`.
    """

    def __init__(self, num_classes: int = 4) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 4, 3, padding=1)
        self.conv2 = nn.Conv2d(4, 5, 3, stride=2, padding=1)
        self.act = nn.ReLU()
        self.fc = nn.Linear(5, num_classes)

    def forward(self, x):
        return self.fc(self.act(self.conv2(torch.relu(self.conv1(x)))).flatten(2).mean(-1))


class TinyConvHead(nn.Module):
    """``features`` (conv 3 -> 4, ReLU) - global average pool - linear (4 -> 3); seeds itself with
    ``torch.manual_seed(0)``. For the tests of targets as the engine takes them."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.features = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU())
        self.head = nn.Linear(4, 3)

    def forward(self, x):
        return self.head(self.features(x).mean((2, 3)))


class TwoHeads(nn.Module):
    """Two linear layers; the one after the features is not the last one registered.

    ``features`` (conv 3 -> 6, ReLU) - mean - ``classifier`` (6 -> 4); ``aux`` (4 -> 2) is computed on
    the logits and thrown away. Seeds itself with ``torch.manual_seed(5)``. For CAM's choice of fc layer.
    """

    def __init__(self):
        super().__init__()
        torch.manual_seed(5)
        self.features = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.ReLU())
        self.classifier = nn.Linear(6, 4)
        self.aux = nn.Linear(4, 2)  # last nn.Linear of model.modules(), 4 inputs

    def forward(self, x):
        logits = self.classifier(self.features(x).mean((2, 3)))
        self.aux(logits)  # computed and thrown away
        return logits


class FunctionalNet(nn.Module):
    """ReLUs written four ways in ``forward``, none of them an nn.ReLU module.

    c1 (3 -> 6) - c2 (6 -> 6) - c3 (6 -> 8) - c4 (8 -> 8, 1x1), each followed by a functional ReLU
    (or ``relu`` when given), mean, head (8 -> ``num_classes``). For guided backpropagation.
    """

    def __init__(self, num_classes: int = NUM_CLASSES):
        super().__init__()
        self.c1 = nn.Conv2d(3, 6, 3, padding=1)
        self.c2 = nn.Conv2d(6, 6, 3, padding=1)
        self.c3 = nn.Conv2d(6, 8, 3, padding=1)
        self.c4 = nn.Conv2d(8, 8, 1)
        self.head = nn.Linear(8, num_classes)

    def forward(self, x, relu=None):
        x = F.relu(self.c1(x)) if relu is None else relu(self.c1(x))
        x = torch.relu(self.c2(x)) if relu is None else relu(self.c2(x))
        x = self.c3(x).relu() if relu is None else relu(self.c3(x))
        x = F.relu(self.c4(x), inplace=True) if relu is None else relu(self.c4(x))
        return self.head(x.mean((2, 3)))


class Shared(nn.Module):
    """A conv applied twice (both calls are bias terms) and a residual add after a BatchNorm.

    inp (3 -> 4) and bn used twice, max pool 2, conv (4 -> 4) used twice, mean, head (4 -> ``num_classes``).
    For FullGrad's bias terms.
    """

    def __init__(self, num_classes: int = NUM_CLASSES):
        super().__init__()
        self.inp = nn.Conv2d(3, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.conv = nn.Conv2d(4, 4, 3, padding=1)
        self.head = nn.Linear(4, num_classes)

    def forward(self, x):
        h = torch.relu(self.bn(self.inp(x)))
        y = self.bn(self.inp(x))  # BatchNorm then an in-place add
        y += h
        x = self.conv(torch.relu(self.conv(F.max_pool2d(y.relu(), 2))))
        return self.head(x.mean((2, 3)))


class PlantedNet(nn.Module):
    """conv (3 -> 6) - ReLU - conv (6 -> 6) - ReLU [= ``features``] - global average pool - linear (6 -> 3).

    Channels 0 and 1 of both convs pass input channels 0 and 1 through (a centre weight of 1 plus small
    seeded noise); channels 2-5 are seeded noise. The head's row ``c`` weighs channel ``c`` by ``gain``
    and the others by small noise, so class 0 answers to input channel 0 and class 1 to input channel 1.
    Works for 1, 2 or 3 spatial dims; draws its weights from its own generator seeded with ``seed``.
    """

    def __init__(self, dim: int, gain: float = 40.0, seed: int = 0) -> None:
        super().__init__()
        gen = torch.Generator().manual_seed(seed)
        conv = _CONV[dim]
        self.features = nn.Sequential(
            conv(3, 6, 3, padding=1), nn.ReLU(), conv(6, 6, 3, padding=1), nn.ReLU()
        )
        self.fc = nn.Linear(6, 3)
        centre = (0,) + (1,) * dim
        with torch.no_grad():
            for layer in (self.features[0], self.features[2]):
                layer.weight.copy_(0.05 * torch.randn(layer.weight.shape, generator=gen))
                layer.bias.zero_()
                for k in (0, 1):
                    layer.weight[(k, k, *centre[1:])] += 1.0
            self.fc.weight.copy_(0.1 * torch.randn(3, 6, generator=gen))
            for c in (0, 1):
                # Logits of order 10: ScoreCAM's softmax over the channels' scores then tells them apart.
                self.fc.weight[c, c] = gain
            self.fc.bias.zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(x).flatten(2).mean(-1))


class TinyRoINet(nn.Module):
    """conv features (target) -> torchvision RoIAlign on fixed boxes -> sigmoid -> linear, per image.

    (B, 3, H, W) -> ``features`` (B, 4, H, W) -> two boxes pooled to 2x2 -> (B, 3). Seeds itself with
    ``torch.manual_seed(1)``; torchvision is imported in ``forward``. For ShapleyCAM through an operation
    torch cannot differentiate twice.
    """

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(1)
        self.features = nn.Conv2d(3, 4, 3, padding=1)
        self.fc = nn.Linear(4 * 2 * 2 * 2, 3)
        self.register_buffer("boxes", torch.tensor([[1.0, 1.0, 6.5, 5.0], [3.0, 2.0, 11.0, 7.5]]))
        with torch.no_grad():  # pre-activations of order 1: the sigmoid is not linear there
            self.features.weight.mul_(4)
            self.fc.weight.mul_(5)

    def forward(self, x):
        import torchvision

        f = self.features(x)
        rois = [self.boxes.to(f.dtype)] * x.shape[0]
        pooled = torchvision.ops.roi_align(f, rois, output_size=2, sampling_ratio=2)  # (B * 2, 4, 2, 2)
        return self.fc(torch.sigmoid(pooled).reshape(x.shape[0], -1))


# ============================================================================ wrappers of a TinyConvNet
class SumPoolNet(nn.Module):
    """features -> sum over positions (not mean) -> linear: the head's input is N times the mean.

    Reuses the modules of a :class:`TinyConvNet` ``tiny`` (no weights of its own).
    """

    def __init__(self, tiny: nn.Module) -> None:
        super().__init__()
        self.tiny = tiny

    def forward(self, x):
        t = self.tiny
        a = t.relu3(t.conv3(t.relu2(t.conv2(t.relu1(t.conv1(x))))))
        return t.fc(a.flatten(2).sum(-1))


class SplitLevels(nn.Module):
    """conv2's output as two "levels" ``{"p0": channels 0-2, "p1": channels 3-5}``, like an FPN's dict."""

    def __init__(self, conv: nn.Module) -> None:
        super().__init__()
        self.conv = conv

    def forward(self, a):
        y = self.conv(a)
        return {"p0": y[:, :3], "p1": y[:, 3:]}


class SplitNet(nn.Module):
    """``TinyConvNet`` (its own modules) with conv2 returning a dict of two levels, concatenated again."""

    def __init__(self, tiny: nn.Module) -> None:
        super().__init__()
        self.tiny = tiny
        self.levels = SplitLevels(tiny.conv2)

    def forward(self, x):
        t = self.tiny
        levels = self.levels(t.relu1(t.conv1(x)))
        y = t.relu2(torch.cat([levels["p0"], levels["p1"]], 1))
        return t.fc(t.relu3(t.conv3(y)).flatten(2).mean(-1))


# ============================================================================ transformer-like models
class TinyViT(nn.Module):
    """Patch embedding (4x4 patches, 3 -> ``dim``) + class token, a token mixer, a head on the class token.

    Two variants, for the two kinds of test that use it (the module creation order of each is that of the
    model the tests were written with, so a seed gives the same weights):

    * ``encoder_blocks=0`` (factorization tests): one token-mixing block ``mix`` ending in the LayerNorm
      ``norm``, whose output tokens (B, 1 + h*w, ``dim``) have negative values (the target layer);
    * ``encoder_blocks=n`` (perturbation tests: 2): a position embedding for a ``grid`` of patches and
      ``n`` pre-norm transformer encoder blocks ``blocks``, each (B, 1 + h*w, ``dim``) (``blocks[0]`` is
      the target layer), then ``norm`` and the head.
    """

    def __init__(self, dim: int = 8, num_classes: int = 4, encoder_blocks: int = 0, grid=(3, 4)) -> None:
        super().__init__()
        self.embed = nn.Conv2d(3, dim, 4, stride=4)
        self.cls = nn.Parameter(torch.randn(1, 1, dim))
        if encoder_blocks:
            self.pos = nn.Parameter(0.5 * torch.randn(1, 1 + grid[0] * grid[1], dim))
            self.blocks = nn.ModuleList(
                nn.TransformerEncoderLayer(dim, 2, 16, dropout=0.0, batch_first=True, norm_first=True)
                for _ in range(encoder_blocks)
            )
        else:
            self.mix = nn.Linear(dim, dim)
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, num_classes)

    def forward(self, x):
        tokens = self.embed(x).flatten(2).transpose(1, 2)  # (B, h*w, dim)
        tokens = torch.cat([self.cls.expand(x.shape[0], -1, -1), tokens], 1)
        if not hasattr(self, "blocks"):
            tokens = self.norm(tokens + torch.tanh(self.mix(tokens)))  # (B, 1 + h*w, dim)
            return self.head(tokens[:, 0])
        tokens = tokens + self.pos
        for block in self.blocks:
            tokens = block(tokens)
        return self.head(self.norm(tokens[:, 0]))


class TinySwin(nn.Module):
    """A Swin-like stack: channels-last (B, H, W, C) stages, the target ``stage1`` in the middle.

    embed (conv 3 -> 6, 2x2 stride 2), permuted to (B, H/2, W/2, 6) - ``stage1`` (LayerNorm, linear,
    GELU; 6 channels) - ``stage2`` (6 -> 5) - mean over positions - head (5 -> ``num_classes``).
    """

    def __init__(self, num_classes: int = 4) -> None:
        super().__init__()
        self.embed = nn.Conv2d(3, 6, 2, stride=2)
        self.stage1 = nn.Sequential(nn.LayerNorm(6), nn.Linear(6, 6), nn.GELU())
        self.stage2 = nn.Sequential(nn.LayerNorm(6), nn.Linear(6, 5))
        self.head = nn.Linear(5, num_classes)

    def forward(self, x):
        h = self.stage2(self.stage1(self.embed(x).permute(0, 2, 3, 1)))  # (B, H, W, C)
        return self.head(h.mean((1, 2)))


class TinyAttentionNet(nn.Module):
    """Patch conv (target) -> tokens -> one head of F.scaled_dot_product_attention -> mean -> linear.

    (B, 3, H, W) -> ``patch`` (B, 8, H/2, W/2) -> (B, 4). Seeds itself with ``torch.manual_seed(0)``.
    For ShapleyCAM through a fused kernel torch cannot differentiate twice.
    """

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.patch = nn.Conv2d(3, 8, 2, stride=2)
        self.qkv = nn.Linear(8, 24)
        self.fc = nn.Linear(8, 4)

    def forward(self, x):
        tokens = self.patch(x).flatten(2).transpose(1, 2)  # (B, N, 8)
        q, k, v = self.qkv(tokens).unsqueeze(1).chunk(3, -1)  # (B, 1, N, 8) each
        mixed = torch.nn.functional.scaled_dot_product_attention(q, k, v)[:, 0]  # (B, N, 8)
        return self.fc(mixed.mean(1))


# ======================================================================= layers returning dicts of levels
class TinyPyramid(nn.Module):
    """stem (conv 3->4, ReLU; 8x8) -> ``pyramid`` returning a dict of two levels {"fine": (B, 4, 8, 8),
    "coarse": (B, 4, 4, 4)} -> linear head on both levels' pooled ReLUs (5 classes). Seeds itself with
    ``torch.manual_seed(seed)``."""

    class Levels(nn.Module):
        def __init__(self):
            super().__init__()
            self.fine = nn.Conv2d(4, 4, 3, padding=1)
            self.coarse = nn.Conv2d(4, 4, 3, padding=1, stride=2)

        def forward(self, h):
            return {"fine": self.fine(h), "coarse": self.coarse(h)}

    def __init__(self, seed=0):
        super().__init__()
        torch.manual_seed(seed)
        self.stem = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU())
        self.pyramid = self.Levels()
        self.fc = nn.Linear(8, 5)
        with torch.no_grad():
            self.fc.weight.mul_(10)

    def head(self, levels):
        pooled = [levels[k].relu().flatten(2).mean(-1) for k in ("fine", "coarse")]
        return self.fc(torch.cat(pooled, 1))

    def forward(self, x):
        return self.head(self.pyramid(self.stem(x)))


class DictPyramid(nn.Module):
    """A backbone returning a dict of two levels, {"0": stem (B, 4, H, W), "pool": down (B, 4, H/2, W/2)}.

    Seeds itself with ``torch.manual_seed(0)``.
    """

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.stem = nn.Conv2d(3, 4, 3, padding=1)
        self.down = nn.Conv2d(4, 4, 3, stride=2, padding=1)

    def forward(self, x):
        a = self.stem(x)
        return {"0": a, "pool": self.down(a)}


class DictPyramidNet(nn.Module):
    """:class:`DictPyramid` ``backbone`` and a head (4 -> 3) that reads only its first level ("0")."""

    def __init__(self):
        super().__init__()
        self.backbone = DictPyramid()
        self.head = nn.Linear(4, 3)

    def forward(self, x):
        levels = self.backbone(x)
        return self.head(levels["0"].relu().mean((2, 3)))


class TinyFPNBackbone(nn.Module):
    """Two conv stages and torchvision's FeaturePyramidNetwork: an OrderedDict of two levels of 5 channels.

    (B, 3, H, W) -> {"0": (B, 5, H/4, W/4), "1": (B, 5, H/8, W/8)}; ``out_channels`` = 5, as torchvision's
    FasterRCNN wants of a backbone. torchvision is imported in ``__init__``.
    """

    def __init__(self) -> None:
        super().__init__()
        from torchvision.ops import FeaturePyramidNetwork

        self.c1 = nn.Sequential(nn.Conv2d(3, 4, 3, stride=4, padding=1), nn.ReLU())
        self.c2 = nn.Sequential(nn.Conv2d(4, 6, 3, stride=2, padding=1), nn.ReLU())
        self.fpn = FeaturePyramidNetwork([4, 6], 5)
        self.out_channels = 5

    def forward(self, x):
        a = self.c1(x)
        return self.fpn(OrderedDict([("0", a), ("1", self.c2(a))]))


# ============================================================================ segmentation
class Stem(nn.Module):
    """conv - ReLU - conv (stride 2); counts its own calls (the replay must not run it per ablation).

    (B, 3, H, W) -> (B, 6, H/2, W/2).
    """

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 6, 3, padding=1)
        self.conv2 = nn.Conv2d(6, 6, 3, stride=2, padding=1)
        self.calls = 0

    def forward(self, x):
        self.calls += 1
        return self.conv2(torch.relu(self.conv1(x)))


class TinySegNet(nn.Module):
    """A torchvision-like segmentation net: stem -> ReLU [``act``] -> head (conv 3x3, ReLU, conv 1x1 to 3
    classes) -> bilinear upsampling to the input; returns ``{"out": (B, 3, H, W), "aux": (B, 3, h, w)}``."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = Stem()
        self.act = nn.ReLU()
        self.head = nn.Sequential(nn.Conv2d(6, 6, 3, padding=1), nn.ReLU(), nn.Conv2d(6, 3, 1))
        self.aux = nn.Conv2d(6, 3, 1)
        self.scale = 1.0  # 1e-9: activations too small to move the score (the degenerate case)

    def forward(self, x):
        features = self.act(self.stem(x)) * self.scale
        logits = self.head(features)
        out = nn.functional.interpolate(logits, size=x.shape[2:], mode="bilinear", align_corners=False)
        return {"out": out, "aux": self.aux(features)}


# ============================================================================ pretrained wrappers
class Features(nn.Module):
    """EfficientNet-Lite0 with its last feature map (after the final ReLU6) as the output of a module.

    The model applies that ReLU6 with a module it also uses in the stem, which cannot be hooked on its
    own; ``features`` (an identity) can. The logits are the model's own (checked). ``net`` is an
    ``efficientnet_lite_pytorch`` EfficientNet (no weights of its own here).
    """

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net
        self.features = nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = self.features(self.net.extract_features(x))  # (B, 1280, H/32, W/32), in [0, 6]
        return self.net._fc(self.net._dropout(self.net._avg_pooling(f).flatten(1)))


def mobilenet_fasterrcnn(proposals: int, kept_proposals: int, detections: int) -> nn.Module:
    """torchvision's Faster R-CNN with a MobileNetV3-Large FPN backbone at 128 px, random weights
    (``torch.manual_seed(0)``, no download), in eval mode. A score threshold of 0 lets random weights
    detect; ``proposals`` / ``kept_proposals`` (the RPN's before and after NMS) and ``detections`` (per
    image) keep it cheap."""
    import torchvision  # only the detector tests need it; the reference drivers import this module

    torch.manual_seed(0)
    return torchvision.models.detection.fasterrcnn_mobilenet_v3_large_fpn(
        weights=None,
        weights_backbone=None,
        min_size=128,
        max_size=128,
        box_score_thresh=0.0,
        rpn_pre_nms_top_n_test=proposals,
        rpn_post_nms_top_n_test=kept_proposals,
        box_detections_per_img=detections,
    ).eval()
