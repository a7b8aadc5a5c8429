"""Every registered method's maps on fixed seeds and inputs: the record that a refactoring changed nothing.

``python tests/integration/golden_maps.py`` (from the clone's root) recomputes every case and writes
``tests/integration/golden_maps.npz``; ``test_golden_maps.py`` recomputes them and compares. The cases use
the public API only (``METHODS``, ``PIXEL_METHODS``, ``FACTORIZATION_METHODS``, the targets), so they
survive any reorganisation of the package: tiny seeded 1D/2D/3D conv nets, a tiny fully convolutional
segmentation net and a random-init ResNet-18, every target kind, ``aug_smooth`` and ``eigen_smooth``.

The maps are compared to the bit where the machine matches the one that wrote the file (same torch,
same CPU capability, one thread): float32 kernels may round differently on another CPU or torch build,
so elsewhere they are compared to within 1e-5.
"""

from __future__ import annotations

import platform
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torchvision
from torch import nn

GOLDEN_FILE = Path(__file__).with_name("golden_maps.npz")

Case = tuple[str, Callable[[], np.ndarray]]


def fingerprint() -> str:
    """What must match for the maps to be compared to the bit."""
    capability = torch.backends.cpu.get_cpu_capability()
    return f"torch {torch.__version__}; {platform.machine()}; cpu {capability}"


class _Tiny(nn.Module):
    def __init__(self, dim: int, in_channels: int) -> None:
        super().__init__()
        conv = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}[dim]
        self.conv1 = conv(in_channels, 4, 3, padding=1)
        self.relu1 = nn.ReLU()
        self.conv2 = conv(4, 6, 3, stride=2, padding=1)
        self.relu2 = nn.ReLU()
        self.conv3 = conv(6, 8, 3, padding=1)
        self.relu3 = nn.ReLU()
        self.fc = nn.Linear(8, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu2(self.conv2(self.relu1(self.conv1(x))))
        x = self.relu3(self.conv3(x))
        return self.fc(x.flatten(2).mean(-1))


class _TinySegmenter(nn.Module):
    """A fully convolutional net: per-pixel scores of 3 classes, ``{"out": (B, 3, H, W)}``."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(3, 6, 3, padding=1), nn.ReLU(), nn.Conv2d(6, 8, 3, padding=1), nn.ReLU()
        )
        self.head = nn.Conv2d(8, 3, 1)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"out": self.head(self.body(x))}


def _tiny(dim: int, seed: int, in_channels: int) -> nn.Module:
    torch.manual_seed(seed)
    model = _Tiny(dim, in_channels).eval()
    with torch.no_grad():
        model.fc.weight.mul_(10)
        model.fc.bias.mul_(10)
    return model


def _input(*shape: int, seed: int) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def _extra_kwargs(name: str, cls: type) -> dict[str, Any]:
    kwargs: dict[str, Any] = {}
    if name in ("sscam", "iscam"):
        kwargs["num_samples"] = 3
    if name == "sess":
        kwargs["num_scales"] = 3
    if name in ("sscam", "randomcam", "smoothgradcam++"):
        kwargs["seed"] = 1
    if getattr(cls, "perturbation", False):
        kwargs["batch_size"] = 8
    return kwargs


#: kind -> (model builder, input builder, *layers): the tiny seeded conv nets of the method cases.
_TINY_KINDS = {
    "2d": (lambda: _tiny(2, 0, 3), lambda: _input(2, 3, 12, 16, seed=1), "conv3", "conv2"),
    "1d": (lambda: _tiny(1, 2, 2), lambda: _input(2, 2, 40, seed=3), "conv3", "conv2"),
    "3d": (lambda: _tiny(3, 4, 1), lambda: _input(2, 1, 6, 8, 10, seed=5), "conv3", "conv2"),
}
# ResNet-18, random init, 64 px: layer4 (C = 512) for the gradient methods, layer3 for the costly ones.
_COSTLY = {"sscam", "iscam", "scorecam", "sess", "ablationcam"}


def _run_tiny(
    name: str, kind: str, layers: tuple[str, ...], targets: Any = None, aug: bool = False, eigen: bool = False
) -> Callable[[], np.ndarray]:
    def compute() -> np.ndarray:
        from pytorch_grad_cam import METHODS

        make_model, make_input, *_ = _TINY_KINDS[kind]
        model, x = make_model(), make_input()
        cls = METHODS[name]
        cam = cls(
            model, target_layers=[getattr(model, layer) for layer in layers], **_extra_kwargs(name, cls)
        )
        return cam(x, targets=targets, aug_smooth=aug, eigen_smooth=eigen)

    return compute


def _method_cases() -> Iterator[Case]:
    """Every CAM method on the tiny 1D/2D/3D nets: top class, two layers, eigen_smooth, aug_smooth."""
    from pytorch_grad_cam import METHODS

    for name in sorted(METHODS):
        for kind in _TINY_KINDS:
            yield f"{name}/{kind}/top", _run_tiny(name, kind, ("conv3",))
            two = ("conv3", "relu3") if name == "cam" else ("conv2", "conv3")  # CAM: layers pooled into fc
            yield f"{name}/{kind}/two-layers/classes", _run_tiny(name, kind, two, [1, 3])
        yield f"{name}/2d/eigen", _run_tiny(name, "2d", ("conv3",), [2, 0], eigen=True)
        if name != "sess":  # SESS's aug_smooth is 6 x its 27 patch passes: covered on the ResNet below
            yield f"{name}/2d/aug", _run_tiny(name, "2d", ("conv3",), None, aug=True)


def _classifier_target_cases() -> Iterator[Case]:
    """Every target kind, through Grad-CAM (gradients of the target) and Score-CAM (scores of the target)."""
    from pytorch_grad_cam.utils import model_targets as mt

    classifier_targets: dict[str, Callable[[], Any]] = {
        "ClassifierOutputTarget": lambda: [mt.ClassifierOutputTarget(1), mt.ClassifierOutputTarget(4)],
        "ClassifierOutputSoftmaxTarget": lambda: [mt.ClassifierOutputSoftmaxTarget(2)] * 2,
        "ClassifierOutputReST": lambda: [mt.ClassifierOutputReST(3)] * 2,
        "RawScoresOutputTarget": lambda: [mt.RawScoresOutputTarget()] * 2,
        "SoftmaxOutputTarget": lambda: [mt.SoftmaxOutputTarget(None), mt.SoftmaxOutputTarget(1)],
        "FinerWeightedTarget": lambda: [mt.FinerWeightedTarget(0, [1, 2], 0.7)] * 2,
        "SimilarityToConceptTarget": lambda: [mt.SimilarityToConceptTarget(torch.arange(5.0) - 2)] * 2,
        "DifferenceFromConceptTarget": lambda: [mt.DifferenceFromConceptTarget(torch.ones(5))] * 2,
    }
    for target_name, make_targets in classifier_targets.items():
        for name in ("gradcam", "scorecam"):
            yield (
                f"target/{target_name}/{name}",
                lambda n=name, m=make_targets: _run_tiny(n, "2d", ("conv3",), m())(),
            )


def _binary() -> np.ndarray:
    from pytorch_grad_cam import METHODS
    from pytorch_grad_cam.utils import model_targets as mt

    torch.manual_seed(7)
    model = nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 1)
    ).eval()
    cam = METHODS["gradcam"](model, target_layers=[model[0]])
    targets = [mt.BinaryClassifierOutputTarget(1), mt.BinaryClassifierOutputTarget(0)]
    return cam(_input(2, 3, 10, 12, seed=8), targets=targets)


def _segmentation(name: str) -> Callable[[], np.ndarray]:
    def compute() -> np.ndarray:
        from pytorch_grad_cam import METHODS
        from pytorch_grad_cam.utils import model_targets as mt

        torch.manual_seed(9)
        model = _TinySegmenter().eval()
        mask = np.zeros((12, 14), dtype=np.float32)
        mask[3:9, 4:11] = 1
        cls = METHODS[name]
        cam = cls(model, target_layers=[model.body[2]], **_extra_kwargs(name, cls))
        targets = [mt.SemanticSegmentationTarget(1, mask), mt.SemanticSegmentationTarget(2, mask)]
        return cam(_input(2, 3, 12, 14, seed=10), targets=targets)

    return compute


def _resnet(name: str, targets: Any, aug: bool = False, eigen: bool = False) -> Callable[[], np.ndarray]:
    def compute() -> np.ndarray:
        from pytorch_grad_cam import METHODS

        torch.manual_seed(0)
        model = torchvision.models.resnet18(weights=None).eval()
        x = _input(2, 3, 64, 64, seed=11)
        cls = METHODS[name]
        layer = model.layer3[-1] if name in _COSTLY else model.layer4[-1]
        cam = cls(model, target_layers=[layer], **_extra_kwargs(name, cls))
        return cam(x, targets=targets, aug_smooth=aug, eigen_smooth=eigen)

    return compute


def _resnet_cases() -> Iterator[Case]:
    from pytorch_grad_cam import METHODS
    from pytorch_grad_cam.utils import model_targets as mt

    for name in sorted(METHODS):
        yield f"resnet18/{name}/top", _resnet(name, None)
        yield f"resnet18/{name}/classes", _resnet(name, [mt.ClassifierOutputTarget(3), 281])
    for name in ("gradcam", "gradcam++", "eigencam", "layercam", "sess"):
        yield f"resnet18/{name}/aug-eigen", _resnet(name, [5, 6], aug=True, eigen=True)


def _pixel(name: str) -> Callable[[], np.ndarray]:
    def compute() -> np.ndarray:
        from pytorch_grad_cam import PIXEL_METHODS

        torch.manual_seed(0)
        model = torchvision.models.resnet18(weights=None).eval()
        cls = PIXEL_METHODS[name]
        method = cls(model) if name == "guidedbackprop" else cls(model, [model.layer4[-1]])
        return np.asarray(method(_input(2, 3, 64, 64, seed=12), targets=[1, 2]))

    return compute


def _factorization(name: str) -> Callable[[], np.ndarray]:
    def compute() -> np.ndarray:
        from pytorch_grad_cam import FACTORIZATION_METHODS

        torch.manual_seed(0)
        model = torchvision.models.resnet18(weights=None).eval()
        method = FACTORIZATION_METHODS[name](model, model.layer4, computation_on_concepts=model.fc)
        concepts, explanations, outputs = method(_input(2, 3, 64, 64, seed=13), n_components=3)
        return np.concatenate([np.ravel(concepts), np.ravel(explanations), np.ravel(outputs)])

    return compute


def cases() -> Iterator[Case]:
    """``(key, compute)`` for every case; ``compute()`` returns the maps as numpy."""
    from pytorch_grad_cam import FACTORIZATION_METHODS, PIXEL_METHODS

    yield from _method_cases()
    yield from _classifier_target_cases()
    yield "target/BinaryClassifierOutputTarget/gradcam", _binary
    for name in ("gradcam", "hirescam", "scorecam", "ablationcam", "eigencam"):
        yield f"target/SemanticSegmentationTarget/{name}", _segmentation(name)
    yield from _resnet_cases()
    for name in sorted(PIXEL_METHODS):
        yield f"pixel/{name}", _pixel(name)
    for name in sorted(FACTORIZATION_METHODS):
        yield f"factorization/{name}", _factorization(name)


def outcome(compute: Callable[[], np.ndarray]) -> np.ndarray:
    """The maps, or for a case that raises, its error (type and message) as a string: also recorded."""
    try:
        return np.asarray(compute())
    except (TypeError, ValueError, RuntimeError) as error:
        return np.array(f"{type(error).__name__}: {error}")


def compute_all() -> dict[str, np.ndarray]:
    """Every case, one thread (reduction orders then do not depend on the machine's load)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return {key: outcome(compute) for key, compute in cases()}
    finally:
        torch.set_num_threads(threads)


def main() -> int:
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # constant-map and zero-gradient warnings are part of some cases
        maps = compute_all()
    errors = {key: str(value) for key, value in maps.items() if value.dtype.kind == "U"}
    for key, error in errors.items():
        print(f"{key}: {error[:150]}")
    np.savez_compressed(GOLDEN_FILE, __fingerprint__=np.array(fingerprint()), **maps)
    print(
        f"wrote {len(maps)} cases to {GOLDEN_FILE} ({GOLDEN_FILE.stat().st_size / 1e6:.1f} MB), "
        f"{fingerprint()}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
