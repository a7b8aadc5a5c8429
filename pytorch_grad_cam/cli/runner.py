"""The CLI's per-batch work: preprocessing, the methods, and the files written for each image.

Each method name is served by an adapter for its kind, chosen by the registry dict that holds the name:
map methods (``METHODS``: one map per image and class), pixel methods (``PIXEL_METHODS``: guided
backpropagation images) and factorization methods (``FACTORIZATION_METHODS``: concepts and one heatmap
per concept). An adapter computes its method's results for a batch and renders one image's files.
"""

from __future__ import annotations

import functools
import hashlib
import inspect
import json
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Callable, Protocol

import cv2
import numpy as np
import torch
from torch import nn

from .. import GuidedBackpropReLUModel
from ..registry import FACTORIZATION_METHODS, KINDS, METHODS, kind_of

# The module, not its functions: they are looked up when called, so a substitute put there (as the tests
# do for show_factorization_on_image) is the one used.
from ..utils import image as image_utils
from ..utils.find_layers import (
    find_layer_types_recursive,
    find_target_layer,
    get_layer,
    layer_output_layout,
    needs_nonnegative_activations,
)
from .inputs import InputImage
from .models import CliError, LoadedModel, resolve_categories
from .outputs import make_grid, write_image

__all__ = [
    "BatchContext",
    "FactorizationAdapter",
    "ImageOut",
    "MapAdapter",
    "MethodAdapter",
    "PixelAdapter",
    "RunOptions",
    "Runner",
    "TargetSetup",
    "adapter_for",
    "prepare_target",
    "preprocess",
]


# ------------------------------------------------------------------------------------------ settings
@dataclass(frozen=True)
class RunOptions:
    """The parsed arguments the run uses (``method_list`` already checked by the parser's checks)."""

    methods: tuple[str, ...]
    model_name: str
    checkpoint: str | None
    target_layer: str
    target_category: tuple[str, ...] | None
    top_k: int | None
    aug_smooth: bool
    eigen_smooth: bool
    guided: bool
    n_components: int
    batch_size: int
    output_dir: str
    report: bool
    quiet: bool

    @classmethod
    def from_args(cls, args: Any) -> RunOptions:
        """The options of an ``argparse.Namespace`` that went through the CLI's argument checks."""
        category = tuple(args.target_category) if args.target_category else None
        return cls(
            tuple(args.method_list),
            args.model,
            args.checkpoint,
            args.target_layer,
            category,
            args.top_k,
            args.aug_smooth,
            args.eigen_smooth,
            args.guided,
            args.n_components,
            args.batch_size,
            args.output_dir,
            args.report,
            args.quiet,
        )

    @property
    def settings(self) -> str:
        """What decides the outputs, hashed: images done with other settings are redone."""
        category = list(self.target_category) if self.target_category else None
        # 'auto' moves methods that need non-negative activations past the ReLU: their maps done before that
        # rule (at the batch norm, often all zeros) are redone.
        auto = self.target_layer == "auto" and any(needs_nonnegative_activations(m) for m in self.methods)
        settings = [
            self.model_name,
            self.checkpoint,
            self.target_layer,
            category,
            self.top_k,
            list(self.methods),
            self.aug_smooth,
            self.eigen_smooth,
            self.guided,
            self.n_components,
            *(["auto: method-aware"] if auto else []),
        ]
        return hashlib.sha1(json.dumps(settings, default=str).encode()).hexdigest()[:16]


@dataclass(frozen=True)
class TargetSetup:
    """What the first image decides: the target layer, its reshape transform, the classes, the concept head.

    The classes are those asked for by name or index; the head names DFF's concepts (None when no concept can
    be named). ``method_layers``: ``(layer, name, reshape)`` of the methods whose automatic layer is another
    one (methods that need non-negative activations); every other method uses ``layer``.
    """

    layer: nn.Module
    layer_name: str
    reshape: Callable | None
    categories: list[int] | None
    concept_head: nn.Module | None
    method_layers: dict[str, tuple[nn.Module, str, Callable | None]] = field(default_factory=dict)

    def layer_of(self, method: str) -> tuple[nn.Module, str, Callable | None]:
        """``(layer, name, reshape transform)`` of ``method``."""
        return self.method_layers.get(method, (self.layer, self.layer_name, self.reshape))


def preprocess(loaded: LoadedModel, image: np.ndarray) -> torch.Tensor:
    """An (H, W, 3) float RGB image in [0, 1] as the model's (1, 3, S, S) input."""
    size = loaded.input_size
    resized = cv2.resize(image, (size, size), interpolation=cv2.INTER_AREA)
    return image_utils.preprocess_image(resized, mean=list(loaded.mean), std=list(loaded.std))


def prepare_target(
    loaded: LoadedModel, options: RunOptions, first: torch.Tensor, say: Callable[[str], None]
) -> TargetSetup:
    """The :class:`TargetSetup` for a run, from its first image's input ``first`` (1, 3, S, S).

    Raises:
        CliError: (code 2) a class or target layer that the model does not have.
    """
    model = loaded.model
    with torch.no_grad():
        num_classes = int(model(first).shape[-1])
    categories = None
    if options.target_category:
        categories = resolve_categories(options.target_category, loaded, num_classes)
    if options.top_k is not None and options.top_k > num_classes:
        raise CliError(
            f"--top-k must be an int <= the model's {num_classes} classes, got {options.top_k}", code=2
        )
    layer, name, reshape = _target_layer(model, options.target_layer, first, say)
    head = None
    if any(method in FACTORIZATION_METHODS for method in options.methods):
        head = _concept_head(model, layer, first)
    return TargetSetup(
        layer, name, reshape, categories, head, _method_layers(model, options, first, name, say)
    )


def _target_layer(model: nn.Module, name: str, x: torch.Tensor, say: Callable[[str], None]):
    """``(layer, name, reshape transform)`` of --target-layer: traced for 'auto', else by dotted name."""
    if name == "auto":
        found = find_target_layer(model, x)
        say(f"target layer (auto): {found.describe()}")
        return found.layer, found.name, found.reshape_transform
    try:
        layer = get_layer(model, name)
    except ValueError as exc:
        raise CliError(f"--target-layer: {exc}", code=2) from exc
    try:
        layout = layer_output_layout(model, layer, x)
    except ValueError as exc:
        raise CliError(f"--target-layer {name}: {exc}", code=2) from exc
    return layer, name, layout.reshape_transform


def _method_layers(
    model: nn.Module, options: RunOptions, x: torch.Tensor, default: str, say: Callable[[str], None]
) -> dict[str, tuple[nn.Module, str, Callable | None]]:
    """For --target-layer auto: the layer of methods that need non-negative activations, if not ``default``.

    One trace for the group (they share the need); says which layer and why.
    """
    needy = [m for m in options.methods if m in METHODS and needs_nonnegative_activations(m)]
    if options.target_layer != "auto" or not needy:
        return {}
    found = find_target_layer(model, x, method=needy[0])
    if found.name == default:
        return {}
    say(f"target layer (auto) for {', '.join(needy)}: {found.describe()}: {found.reason}")
    return {m: (found.layer, found.name, found.reshape_transform) for m in needy}


def _concept_head(model: nn.Module, layer: nn.Module, x: torch.Tensor) -> nn.Module | None:
    """The model's last ``nn.Linear`` if it reads as many features as the target layer's map has channels.

    A concept is then a valid input to it; else None.
    """
    linears = find_layer_types_recursive(model, [nn.Linear])
    if not linears:
        return None
    try:
        layout = layer_output_layout(model, layer, x[:1])
    except ValueError:
        return None  # DFF itself then says what is wrong with the layer
    return linears[-1] if linears[-1].in_features == layout.map_shape[1] else None


# ------------------------------------------------------------------------------------------ one batch
@dataclass
class BatchContext:
    """What the methods need for one batch; made by :meth:`Runner.run_batch` and dropped after it.

    ``memo`` keeps results within the batch: guided backpropagation is computed once per class slot for
    the ``guidedbackprop`` method and for ``--guided``.
    """

    model: nn.Module
    setup: TargetSetup
    options: RunOptions
    device: torch.device
    x: torch.Tensor  # (B, 3, S, S)
    classes: list[list[int]]  # per image, one class per slot
    class_name: Callable[[int], str]
    _memo: dict[Any, Any] = field(default_factory=dict)

    def targets(self, slot: int) -> list[int]:
        """Each image's class at ``slot``."""
        return [c[slot] for c in self.classes]

    def memo(self, key: Any, compute: Callable[[], Any]) -> Any:
        """``compute()``, once per key in this batch."""
        if key not in self._memo:
            self._memo[key] = compute()
        return self._memo[key]

    def gradcam(self) -> Callable[..., np.ndarray]:
        """Grad-CAM with this run's --aug-smooth / --eigen-smooth: ``f(x, targets) -> (B, S, S)``."""
        cam = METHODS["gradcam"](
            self.model,
            target_layers=[self.setup.layer],
            reshape_transform=self.setup.reshape,
            device=self.device,
        )
        return functools.partial(
            cam, aug_smooth=self.options.aug_smooth, eigen_smooth=self.options.eigen_smooth
        )


@dataclass(frozen=True)
class ImageOut:
    """One image's place in the outputs.

    Its pixels (H, W, 3 float RGB), index in the batch, folder, and the batch's guided backpropagation
    images per class slot (with --guided).
    """

    image: np.ndarray
    index: int
    out_dir: str
    guided: list[np.ndarray] | None = None

    def resize(self, array: np.ndarray) -> np.ndarray:
        """A map or pixel image at the image's resolution."""
        height, width = self.image.shape[:2]
        return cv2.resize(array, (width, height), interpolation=cv2.INTER_LINEAR)

    def save_jpg(self, name: str, rgb: np.ndarray) -> str:
        """Write an RGB uint8 image under the output folder; returns ``name``."""
        write_image(os.path.join(self.out_dir, name), rgb)
        return name

    def save_npy(self, name: str, array: np.ndarray) -> str:
        """Write an array as .npy under the output folder; returns ``name``."""
        np.save(os.path.join(self.out_dir, name), array)
        return name


# ------------------------------------------------------------------------------------------ adapters
class MethodAdapter(Protocol):
    """What the runner needs of one kind of method.

    Attributes:
        class_agnostic: the result does not depend on the class (computed for slot 0, reused for the
            others, written once).
    """

    class_agnostic: bool

    def bind(self, ctx: BatchContext) -> Callable[[int], Any]:
        """``slot -> result`` for the batch of ``ctx``; the method is built once per batch."""
        ...

    def render(self, result: Any, out: ImageOut, slot: int, stem: str) -> tuple[np.ndarray, list[str]]:
        """One image's picture for the grid (RGB uint8) and the files written, named from ``stem``."""
        ...


class MapAdapter:
    """A map method (``cls(model, target_layers=..., reshape_transform=..., device=...)``).

    (B, S, S) maps per class slot; writes the overlay and the map, and with --guided the gb and cam_gb images.
    """

    class_agnostic = False

    def __init__(self, cls: type) -> None:
        """Adapt the map method class ``cls``."""
        self.cls = cls

    def bind(self, ctx: BatchContext) -> Callable[[int], np.ndarray]:
        """``slot -> (B, S, S)`` maps for the batch of ``ctx``."""
        layer, _, reshape = ctx.setup.layer_of(getattr(self.cls, "name", ""))
        cam = self.cls(ctx.model, target_layers=[layer], reshape_transform=reshape, device=ctx.device)
        options = ctx.options
        return lambda slot: cam(
            ctx.x, targets=ctx.targets(slot), aug_smooth=options.aug_smooth, eigen_smooth=options.eigen_smooth
        )

    def render(self, result: np.ndarray, out: ImageOut, slot: int, stem: str) -> tuple[np.ndarray, list[str]]:
        """The overlay shown in the grid, and the files written."""
        grayscale = np.clip(out.resize(result[out.index]), 0.0, 1.0).astype(np.float32)  # (H, W)
        shown = image_utils.show_cam_on_image(out.image, grayscale, use_rgb=True)
        files = [out.save_jpg(f"{stem}.jpg", shown), out.save_npy(f"{stem}.npy", grayscale)]
        if out.guided is not None:
            gb = out.resize(out.guided[slot][out.index])  # (H, W, 3)
            files += [
                out.save_jpg(f"{stem}_gb.jpg", image_utils.deprocess_image(gb)),
                out.save_jpg(f"{stem}_cam_gb.jpg", image_utils.deprocess_image(gb * grayscale[..., None])),
            ]
        return shown, files


class PixelAdapter:
    """A pixel method (guided backpropagation, Guided Grad-CAM): (B, S, S, 3) gradient images per class slot.

    Computed once per batch and slot; writes the image (deprocessed) and the raw gradients.
    """

    class_agnostic = False

    def __init__(self, cls: type) -> None:
        """Adapt the pixel method class ``cls``."""
        self.cls = cls

    def bind(self, ctx: BatchContext) -> Callable[[int], np.ndarray]:
        """``slot -> (B, S, S, 3)`` images for the batch of ``ctx``."""
        return lambda slot: ctx.memo((self.cls, slot), lambda: self._compute(ctx, slot))

    def _compute(self, ctx: BatchContext, slot: int) -> np.ndarray:
        kwargs: dict[str, Any] = {"device": ctx.device}
        if "cam" in inspect.signature(self.cls).parameters:
            # Guided Grad-CAM multiplies by a map method's map: Grad-CAM, smoothed as this run asks.
            kwargs["cam"] = ctx.gradcam()
        method = self.cls(ctx.model, **kwargs)
        images = method(ctx.x, targets=ctx.targets(slot), channels_last=True)
        return images.reshape(ctx.x.shape[0], *ctx.x.shape[2:], -1)  # one image comes back as (S, S, 3)

    def render(self, result: np.ndarray, out: ImageOut, slot: int, stem: str) -> tuple[np.ndarray, list[str]]:
        """The image shown in the grid, and the files written."""
        pixels = out.resize(result[out.index])  # (H, W, 3)
        shown = image_utils.deprocess_image(pixels)
        return shown, [
            out.save_jpg(f"{stem}.jpg", shown),
            out.save_npy(f"{stem}.npy", pixels.astype(np.float32)),
        ]


class FactorizationAdapter:
    """A factorization method (Deep Feature Factorization): one picture per image.

    Each image is factorised on its own into --n-components concepts, whatever the class.

    Concepts are named by the run's concept head (the model's last linear layer when it reads the
    target layer's channels): the softmax of its outputs on the concept vectors, top class and probability.
    """

    class_agnostic = True

    def __init__(self, cls: type) -> None:
        """Adapt the factorization method class ``cls``."""
        self.cls = cls

    def bind(self, ctx: BatchContext) -> Callable[[int], list[tuple[np.ndarray, list[str]]]]:
        """``slot -> [(explanations (K, S, S), concept labels)] per image`` (the same for every slot)."""
        return lambda slot: self._compute(ctx)

    def _compute(self, ctx: BatchContext) -> list[tuple[np.ndarray, list[str]]]:
        setup = ctx.setup
        method = self.cls(
            ctx.model,
            setup.layer,
            setup.reshape,
            computation_on_concepts=setup.concept_head,
            device=ctx.device,
        )
        results = []
        for i in range(ctx.x.shape[0]):
            concepts, explanations, *outputs = method(ctx.x[i : i + 1], ctx.options.n_components)
            labels = [f"concept {k}" for k in range(concepts.shape[1])]
            if outputs:
                top = torch.softmax(torch.from_numpy(outputs[0]), -1).max(-1)  # (K,) of (K, num_classes)
                labels = [f"{ctx.class_name(int(c))} {float(p):.2f}" for c, p in zip(top.indices, top.values)]
            results.append((explanations[0], labels))
        return results

    def render(self, result: list, out: ImageOut, slot: int, stem: str) -> tuple[np.ndarray, list[str]]:
        """The concepts over the image, shown in every class row of the grid; written for slot 0 only."""
        explanations, labels = result[out.index]
        resized = np.stack([out.resize(e) for e in explanations])  # (K, H, W)
        shown = image_utils.show_factorization_on_image(out.image, resized, concept_labels=labels)
        files = (
            [out.save_jpg(f"{stem}.jpg", shown), out.save_npy(f"{stem}.npy", resized)] if slot == 0 else []
        )
        return shown, files


#: The adapter for each kind of method in the registry.
_ADAPTERS: dict[str, Callable[[Any], MethodAdapter]] = {
    "map": MapAdapter,
    "pixel": PixelAdapter,
    "factorization": FactorizationAdapter,
}


def adapter_for(name: str) -> MethodAdapter:
    """The adapter of the method registered as ``name``, by the registry's kind of it."""
    try:
        kind = kind_of(name)
    except ValueError:
        raise CliError(f"unknown method {name!r}", code=2) from None  # the argument checks validated it
    return _ADAPTERS[kind](KINDS[kind][name])


# ------------------------------------------------------------------------------------------ the runner
class Runner:
    """Explains batches of images with one model, target layer and list of methods.

    It holds configuration only; every batch's intermediate results live in that batch's call.
    """

    def __init__(
        self, loaded: LoadedModel, device: torch.device, options: RunOptions, setup: TargetSetup
    ) -> None:
        """Store the loaded model, the device, the options and the target setup; one adapter per method."""
        self.loaded = loaded
        self.device = device
        self.options = options
        self.setup = setup
        self.adapters: dict[str, MethodAdapter] = {name: adapter_for(name) for name in options.methods}
        self.guided = PixelAdapter(GuidedBackpropReLUModel)  # --guided: the same memo as guidedbackprop

    @classmethod
    def for_first_image(
        cls,
        loaded: LoadedModel,
        device: torch.device,
        options: RunOptions,
        image: np.ndarray,
        say: Callable[[str], None],
    ) -> Runner:
        """The runner whose target layer and classes are decided on the run's first readable image."""
        first = preprocess(loaded, image).to(device)
        return cls(loaded, device, options, prepare_target(loaded, options, first, say))

    def run_batch(self, batch: Sequence[InputImage], images: Sequence[np.ndarray]) -> list[dict]:
        """Explain the images (float RGB, any sizes), write their files; one results.jsonl record each."""
        x = torch.cat([preprocess(self.loaded, image) for image in images]).to(self.device)  # (B, 3, S, S)
        with torch.no_grad():
            probabilities = torch.softmax(self.loaded.model(x).float(), dim=1).cpu()  # (B, K)
        if self.setup.categories is not None:
            classes = [list(self.setup.categories) for _ in batch]
        else:
            classes = probabilities.topk(self.options.top_k or 1, dim=1).indices.tolist()
        ctx = BatchContext(
            self.loaded.model, self.setup, self.options, self.device, x, classes, self.loaded.class_name
        )
        results, entries = self._compute(ctx, probabilities)
        guided = None
        if self.options.guided:
            guided_of = self.guided.bind(ctx)
            guided = [guided_of(slot) for slot in range(len(classes[0]))]
        return [
            self._write(
                item, ImageOut(image, i, self.options.output_dir, guided), classes[i], results, entries[i]
            )
            for i, (item, image) in enumerate(zip(batch, images))
        ]

    def _compute(self, ctx: BatchContext, probabilities: torch.Tensor) -> tuple[dict, list[list[dict]]]:
        """Every method on every class slot: ``{(method, slot): result}``, and each image's map entries.

        The entries (method, class, name, probability, seconds per image) are in the order they are written.
        """
        size = len(ctx.classes)
        entries: list[list[dict]] = [[] for _ in range(size)]
        results: dict[tuple[str, int], Any] = {}
        for method in self.options.methods:
            adapter = self.adapters[method]
            compute = adapter.bind(ctx)
            for slot in range(len(ctx.classes[0])):
                start = time.perf_counter()
                shared = adapter.class_agnostic and slot > 0  # computed once, for slot 0
                results[method, slot] = results[method, 0] if shared else compute(slot)
                seconds = (time.perf_counter() - start) / size
                for i in range(size):
                    c = ctx.classes[i][slot]
                    entries[i].append(
                        {
                            "method": method,
                            "layer": self.setup.layer_of(method)[1],
                            "class": c,
                            "class_name": self.loaded.class_name(c),
                            "probability": float(probabilities[i, c]),
                            "seconds": seconds,
                            "files": [],
                        }
                    )
        return results, entries

    def _write(
        self, item: InputImage, out: ImageOut, classes: list[int], results: dict, entries: list[dict]
    ) -> dict:
        """One image's files, its grid when there is more than one picture or a report, and its record."""
        several = len(classes) > 1
        rows, written = [], []
        entry_iter = iter(entries)
        for method in self.options.methods:
            adapter = self.adapters[method]
            for slot, c in enumerate(classes):
                entry = next(entry_iter)
                suffix = f"_{method}" + (f"_c{c}" if several and not adapter.class_agnostic else "")
                shown, files = adapter.render(results[method, slot], out, slot, f"{item.key}{suffix}")
                entry["files"] = files
                written += files
                rows.append((slot, method, shown))
        record: dict[str, Any] = {
            "path": item.path,
            "status": "ok",
            "settings": self.options.settings,
            "model": self.options.model_name,
            "layer": self.setup.layer_of(self.options.methods[0])[1],  # each map entry has its own
            "methods": list(self.options.methods),
            "classes": classes,
            "maps": entries,
        }
        if len(self.options.methods) > 1 or several or self.options.report:
            record["grid"] = self._write_grid(item, out, classes, rows)
            written.append(record["grid"])
        record["outputs"] = written
        return record

    def _write_grid(self, item: InputImage, out: ImageOut, classes: list[int], rows: list) -> str:
        """``<image>_grid.jpg``: a row per class slot, the image then each method's picture."""
        original = np.clip(out.image * 255, 0, 255).astype(np.uint8)
        grid_rows = []
        for slot, c in enumerate(classes):
            label = f"{c} {self.loaded.class_name(c)}"
            grid_rows.append([(label, original)] + [(m, shown) for s, m, shown in rows if s == slot])
        return out.save_jpg(f"{item.key}_grid.jpg", make_grid(grid_rows))
