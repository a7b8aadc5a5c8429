"""The CLI's per-batch work: preprocessing, the methods, and the files written for each image.

Each method name is served by an adapter for its kind, chosen by the registry dict that holds the name:
map methods (``METHODS``: one map per image and class), pixel methods (``PIXEL_METHODS``: guided
backpropagation images) and factorization methods (``FACTORIZATION_METHODS``: concepts and one heatmap
per concept). An adapter computes its method's results for a batch and renders one image's files.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import inspect
import json
import os
import re
import time
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Callable, Protocol

import cv2
import numpy as np
import torch
from torch import nn

from .. import SESS, GuidedBackpropReLUModel
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
from .progress import IMAGES, PASSES, MethodCost, WorkPlan

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

    Its pixels (H, W, 3 float RGB), index in the batch, folder, output key, class per slot, and the batch's
    guided backpropagation images per class slot (with --guided). ``replaced`` collects the names written
    over a file that was there before (an earlier run's).
    """

    image: np.ndarray
    index: int
    out_dir: str
    key: str
    classes: list[int]
    guided: list[np.ndarray] | None = None
    replaced: list[str] = field(default_factory=list)

    def stem(self, method: str, slot: int, per_class: bool = True) -> str:
        """``<key>_<class>_<method>``, or ``<key>_<method>`` for a result that ignores the class."""
        return f"{self.key}_{self.classes[slot]}_{method}" if per_class else f"{self.key}_{method}"

    def resize(self, array: np.ndarray) -> np.ndarray:
        """A map or pixel image at the image's resolution."""
        height, width = self.image.shape[:2]
        return cv2.resize(array, (width, height), interpolation=cv2.INTER_LINEAR)

    def save_jpg(self, name: str, rgb: np.ndarray) -> str:
        """Write an RGB uint8 image under the output folder; returns ``name``."""
        write_image(self._path(name), rgb)
        return name

    def save_npy(self, name: str, array: np.ndarray) -> str:
        """Write an array as .npy under the output folder; returns ``name``."""
        np.save(self._path(name), array)
        return name

    def _path(self, name: str) -> str:
        path = os.path.join(self.out_dir, name)
        if os.path.exists(path):
            self.replaced.append(name)
        return path


# ------------------------------------------------------------------------------------------ adapters
class MethodAdapter(Protocol):
    """What the runner needs of one kind of method.

    Attributes:
        name: the method's registry name, in its output names.
        class_agnostic: the result does not depend on the class (computed for slot 0, reused for the
            others, written once, without the class in its name).
    """

    name: str
    class_agnostic: bool

    def bind(self, ctx: BatchContext) -> Callable[[int], Any]:
        """``slot -> result`` for the batch of ``ctx``; the method is built once per batch."""
        ...

    def render(self, result: Any, out: ImageOut, slot: int) -> tuple[np.ndarray, list[str]]:
        """One image's picture for the grid (RGB uint8) and the files written (named by ``out.stem``)."""
        ...

    def constant(self, result: Any, index: int) -> bool:
        """Whether image ``index``'s result is a constant map (all zeros once normalised, showing nothing)."""
        ...


class MapAdapter:
    """A map method (``cls(model, target_layers=..., reshape_transform=..., device=...)``).

    (B, S, S) maps per class slot; writes the overlay and the map, and with --guided the gb and cam_gb images.
    A method whose map ignores the target (``class_specific = False``: EigenCAM, KPCA-CAM, FEM, RandomCAM) is
    class-agnostic: its map is computed and written once; the guided images still depend on the class.
    """

    def __init__(self, cls: Any) -> None:
        """Adapt the map method class ``cls``."""
        self.cls = cls
        self.name: str = cls.name
        self.class_agnostic = not getattr(cls, "class_specific", True)

    def bind(self, ctx: BatchContext) -> Callable[[int], np.ndarray]:
        """``slot -> (B, S, S)`` maps for the batch of ``ctx``."""
        layer, _, reshape = ctx.setup.layer_of(getattr(self.cls, "name", ""))
        cam = self.cls(ctx.model, target_layers=[layer], reshape_transform=reshape, device=ctx.device)
        options = ctx.options
        return lambda slot: cam(
            ctx.x, targets=ctx.targets(slot), aug_smooth=options.aug_smooth, eigen_smooth=options.eigen_smooth
        )

    def constant(self, result: np.ndarray, index: int) -> bool:
        """Whether image ``index``'s (S, S) map has one value everywhere."""
        return bool(result[index].max() == result[index].min())

    def render(self, result: np.ndarray, out: ImageOut, slot: int) -> tuple[np.ndarray, list[str]]:
        """The overlay shown in the grid, and the files written."""
        grayscale = np.clip(out.resize(result[out.index]), 0.0, 1.0).astype(np.float32)  # (H, W)
        shown = image_utils.show_cam_on_image(out.image, grayscale, use_rgb=True)
        files = []
        if slot == 0 or not self.class_agnostic:
            stem = out.stem(self.name, slot, per_class=not self.class_agnostic)
            files += [out.save_jpg(f"{stem}.jpg", shown), out.save_npy(f"{stem}.npy", grayscale)]
        if out.guided is not None:
            stem = out.stem(self.name, slot)  # guided backpropagation depends on the class
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

    def __init__(self, cls: Any) -> None:
        """Adapt the pixel method class ``cls``."""
        self.cls = cls
        self.name: str = cls.name

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

    def constant(self, result: np.ndarray, index: int) -> bool:
        """False: a gradient image is not a map (an all-zero one comes with the library's warning)."""
        return False

    def render(self, result: np.ndarray, out: ImageOut, slot: int) -> tuple[np.ndarray, list[str]]:
        """The image shown in the grid, and the files written."""
        pixels = out.resize(result[out.index])  # (H, W, 3)
        shown = image_utils.deprocess_image(pixels)
        stem = out.stem(self.name, slot)
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

    def __init__(self, cls: Any) -> None:
        """Adapt the factorization method class ``cls``."""
        self.cls = cls
        self.name: str = cls.name

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

    def constant(self, result: list, index: int) -> bool:
        """False: concepts are not one map (empty ones come with the library's warning)."""
        return False

    def render(self, result: list, out: ImageOut, slot: int) -> tuple[np.ndarray, list[str]]:
        """The concepts over the image, shown in every class row of the grid; written for slot 0 only."""
        explanations, labels = result[out.index]
        resized = np.stack([out.resize(e) for e in explanations])  # (K, H, W)
        shown = image_utils.show_factorization_on_image(out.image, resized, concept_labels=labels)
        stem = out.stem(self.name, slot, per_class=False)
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


# ------------------------------------------------------------------------------------------ costs
#: BaseCAM's default test-time augmentations for --aug-smooth: a horizontal flip x 3 brightness factors.
AUG_SMOOTH_COPIES = 6


def perturbation_passes(cam: Any, channels: Callable[[], int], spatial: Sequence[int]) -> int:
    """The forward passes a perturbation method makes per image and target, read from its configuration.

    SESS: one pass of the whole input, then one per sliding window at every scale of an input of size
    ``spatial``. Score-CAM, SS-CAM, IS-CAM: ``C x inputs_per_mask`` (``C = channels()``, the target layer's;
    SS-CAM's ``num_samples`` noisy copies, IS-CAM's path steps). Ablation-CAM: ``C`` runs of the layers
    after the target layer.
    """
    if isinstance(cam, SESS):
        window, step, sizes = cam.geometry(tuple(spatial))
        return 1 + sum(len(cam.windows.starts(size, window, step)) for size in sizes)
    return channels() * int(getattr(cam, "inputs_per_mask", 1))


def _seconds_per_pass(model: nn.Module, first: torch.Tensor, copies: int = 4) -> float:
    """One forward pass of ``model``, timed on ``copies`` copies of the first image after a warm-up call."""
    x = first.expand(copies, *first.shape[1:]).contiguous()
    with torch.no_grad():
        model(x)
        _synchronize(x.device)
        start = time.perf_counter()
        model(x)
        _synchronize(x.device)
    return (time.perf_counter() - start) / copies


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@contextlib.contextmanager
def counted_passes(model: nn.Module, budget: int, report: Callable[[int], None] | None) -> Iterator[None]:
    """Report the forward passes of ``model`` in the block (one per input row), ``budget`` of them in all.

    A forward pre-hook on the model counts the rows of every call's input, up to ``budget``; what the block
    did not use of ``budget`` is reported when it ends normally, so the run's count is exact whatever the
    method's own calls. The hook is removed in ``finally``.
    """
    if report is None or budget <= 0:
        yield
        return
    done = 0

    def count(module: nn.Module, args: tuple) -> None:
        nonlocal done
        first = args[0] if args else None
        rows = first.shape[0] if isinstance(first, torch.Tensor) and first.ndim else 1
        step = min(rows, budget - done)
        if step > 0:
            done += step
            report(step)

    handle = model.register_forward_pre_hook(count)
    try:
        yield
    finally:
        handle.remove()
    report(budget - done)


# ------------------------------------------------------------------------------------------ warnings
def _computed(
    compute: Callable[[int], Any],
    slot: int,
    model: nn.Module,
    budget: int,
    report: Callable[[int], None] | None,
) -> tuple[Any, list[str]]:
    """``compute(slot)`` and the messages of the warnings it gave (caught, not printed).

    Its forward passes go to ``report`` (:func:`counted_passes`, ``budget`` in all).
    """
    with warnings.catch_warnings(record=True) as caught, counted_passes(model, budget, report):
        warnings.simplefilter("always")
        result = compute(slot)
    return result, [str(w.message) for w in caught]


_IMAGE_LIST = re.compile(r"image\(s\) \[([0-9, ]*)\]")  # the library's "for image(s) [0, 2]"
_ONE_IMAGE = re.compile(r"\bimage (\d+)\b")  # and "(image 0: score ...)"


def for_image(message: str, index: int, paths: Sequence[str]) -> str | None:
    """A library warning as it concerns image ``index`` of the batch; None when it is about other images.

    The library names images by their index in the batch: "... for image(s) [0, 2] ..." becomes "... for
    this image ..." for images 0 and 2 (None for the others), "(image 0: ...)" "(this image: ...)" for
    image 0 and "(image <its path>: ...)" for the others. A message that names no image concerns every one.
    """
    listed = _IMAGE_LIST.search(message)
    if listed:
        indices = {int(i) for i in listed.group(1).replace(" ", "").split(",") if i}
        if index not in indices:
            return None
        message = message[: listed.start()] + "this image" + message[listed.end() :]

    def named(match: re.Match) -> str:
        other = int(match.group(1))
        if other == index:
            return "this image"
        return f"image {paths[other]}" if other < len(paths) else match.group(0)

    return _ONE_IMAGE.sub(named, message)


def _image_remarks(
    messages: list[str], index: int, paths: Sequence[str], adapter: MethodAdapter, result: Any
) -> list[str]:
    """Image ``index``'s warnings from ``messages``; a constant map always gets one, saying what to try."""
    remarks = [m for m in (for_image(message, index, paths) for message in messages) if m is not None]
    if not adapter.constant(result, index):
        return remarks
    hint = "try another --target-layer" + ("" if adapter.class_agnostic else ", another class") + " or method"
    for k, remark in enumerate(remarks):
        if "constant" in remark:  # the library's own warning about it: the hint goes with it
            remarks[k] = f"{remark}; {hint}"
            return remarks
    return [*remarks, f"the map is constant (all zeros), it shows nothing; {hint}"]


# ------------------------------------------------------------------------------------------ the runner
class Runner:
    """Explains batches of images with one model, target layer and list of methods.

    It holds configuration only; every batch's intermediate results live in that batch's call. ``plan`` is
    what an image costs in the progress bar's unit (:class:`.progress.WorkPlan`).
    """

    def __init__(
        self,
        loaded: LoadedModel,
        device: torch.device,
        options: RunOptions,
        setup: TargetSetup,
        plan: WorkPlan | None = None,
    ) -> None:
        """Store the model, the device, the options, the target setup and the plan (default: images)."""
        self.loaded = loaded
        self.device = device
        self.options = options
        self.setup = setup
        self.adapters: dict[str, MethodAdapter] = {name: adapter_for(name) for name in options.methods}
        self.guided = PixelAdapter(GuidedBackpropReLUModel)  # --guided: the same memo as guidedbackprop
        self.plan = plan or WorkPlan(IMAGES, 1)

    @classmethod
    def for_first_image(
        cls,
        loaded: LoadedModel,
        device: torch.device,
        options: RunOptions,
        image: np.ndarray,
        say: Callable[[str], None],
        time_passes: bool = False,
    ) -> Runner:
        """The runner whose target layer, classes and plan are decided on the run's first readable image.

        ``time_passes``: time a few forward passes for the plan's estimate (when a run has a perturbation
        method and the estimate is shown).
        """
        first = preprocess(loaded, image).to(device)
        setup = prepare_target(loaded, options, first, say)
        runner = cls(loaded, device, options, setup)
        runner.plan = runner.work_plan(first, time_passes)
        return runner

    def work_plan(self, first: torch.Tensor, time_passes: bool = False) -> WorkPlan:
        """What an image costs: forward passes when a method is a perturbation method, else one image.

        ``first``: the first image's input (1, 3, S, S); the perturbation methods' passes are read from their
        classes (channels x samples, SESS's windows; x the copies of --aug-smooth) and, with ``time_passes``,
        a pass of the model is timed on it.
        """
        slots = self._class_slots()

        @functools.cache
        def channels() -> int:  # one forward pass, only when a method needs it
            try:
                return int(layer_output_layout(self.loaded.model, self.setup.layer, first).map_shape[1])
            except ValueError:
                return 1  # the method itself says what is wrong with the layer

        costs = [
            cost for cost in (self._cost(name, channels, first) for name in self.options.methods) if cost
        ]
        if not costs:
            return WorkPlan(IMAGES, 1, classes=slots)
        passes = {cost.method: cost.passes for cost in costs}
        per_image = sum(
            passes.get(name, 1) * (1 if adapter.class_agnostic else slots)
            for name, adapter in self.adapters.items()
        )
        seconds = _seconds_per_pass(self.loaded.model, first) if time_passes else None
        return WorkPlan(PASSES, per_image, tuple(costs), slots, seconds)

    def _class_slots(self) -> int:
        if self.setup.categories is not None:
            return len(self.setup.categories)
        return self.options.top_k or 1

    def _cost(self, name: str, channels: Callable[[], int], first: torch.Tensor) -> MethodCost | None:
        """A perturbation method's :class:`.progress.MethodCost`; None for the other methods."""
        adapter = self.adapters[name]
        if not isinstance(adapter, MapAdapter) or not getattr(adapter.cls, "perturbation", False):
            return None
        cam = adapter.cls(
            self.loaded.model, target_layers=[self.setup.layer], reshape_transform=self.setup.reshape
        )
        passes = perturbation_passes(cam, channels, first.shape[2:])
        if self.options.aug_smooth:
            passes *= AUG_SMOOTH_COPIES
        # AblationCAM replays the layers before the target layer: its passes run only the rest of the model.
        partial = bool(getattr(adapter.cls, "records_prefix", False))
        return MethodCost(name, passes, per_class=not adapter.class_agnostic, partial=partial)

    def run_batch(
        self,
        batch: Sequence[InputImage],
        images: Sequence[np.ndarray],
        progress: Callable[[int], None] | None = None,
    ) -> list[dict]:
        """Explain the images (float RGB, any sizes), write their files; one results.jsonl record each.

        ``progress`` is told the units done (``plan.unit``) as they are: every forward pass in a run with a
        perturbation method (within an image too), else every image once its files are written; a batch
        reports ``len(batch) * plan.per_image`` in all. Each map entry holds the warnings its method's call
        gave for that image (``"warnings"``; see :func:`for_image`), and a remark when its map is constant.
        A record whose files replaced files that were already there (an earlier run's) names them under
        ``"replaced"``, for the caller to report; it is not part of what results.jsonl stores.
        """
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
        paths = [item.path for item in batch]
        results, entries = self._compute(ctx, probabilities, paths, progress)
        guided = None
        if self.options.guided:
            guided_of = self.guided.bind(ctx)
            guided = [guided_of(slot) for slot in range(len(classes[0]))]
        records = []
        for i, (item, image) in enumerate(zip(batch, images)):
            out = ImageOut(image, i, self.options.output_dir, item.key, classes[i], guided)
            record = self._write(item, out, results, entries[i])
            if out.replaced:
                record["replaced"] = out.replaced
            records.append(record)
            if progress is not None and self.plan.unit == IMAGES:
                progress(1)
        return records

    def _compute(
        self,
        ctx: BatchContext,
        probabilities: torch.Tensor,
        paths: list[str],
        progress: Callable[[int], None] | None,
    ) -> tuple[dict, list[list[dict]]]:
        """Every method on every class slot: ``{(method, slot): result}``, and each image's map entries.

        The entries (method, class, name, probability, seconds per image, warnings) are in the order they
        are written. In a run counting passes, each call's forward passes go to ``progress``.
        """
        size = len(ctx.classes)
        entries: list[list[dict]] = [[] for _ in range(size)]
        results: dict[tuple[str, int], Any] = {}
        passes = {cost.method: cost.passes for cost in self.plan.costs}
        counting = progress if self.plan.unit == PASSES else None
        for method in self.options.methods:
            adapter = self.adapters[method]
            compute = adapter.bind(ctx)
            messages: list[str] = []
            for slot in range(len(ctx.classes[0])):
                start = time.perf_counter()
                if adapter.class_agnostic and slot > 0:  # computed once, for slot 0
                    results[method, slot] = results[method, 0]
                else:
                    budget = size * passes.get(method, 1)
                    results[method, slot], messages = _computed(compute, slot, ctx.model, budget, counting)
                seconds = (time.perf_counter() - start) / size  # per image: its share of the call
                for i in range(size):
                    c = ctx.classes[i][slot]
                    remarks = _image_remarks(messages, i, paths, adapter, results[method, slot])
                    entries[i].append(self._entry(method, c, float(probabilities[i, c]), seconds, remarks))
        return results, entries

    def _entry(self, method: str, c: int, probability: float, seconds: float, warnings: list[str]) -> dict:
        """One map entry of results.jsonl (its ``files`` are filled in when they are written)."""
        return {
            "method": method,
            "layer": self.setup.layer_of(method)[1],
            "class": c,
            "class_name": self.loaded.class_name(c),
            "probability": probability,
            "seconds": seconds,
            "files": [],
            "warnings": warnings,
        }

    def _write(self, item: InputImage, out: ImageOut, results: dict, entries: list[dict]) -> dict:
        """One image's files, its grid when there is more than one picture or a report, and its record."""
        classes = out.classes
        several = len(classes) > 1
        rows, written = [], []
        entry_iter = iter(entries)
        for method in self.options.methods:
            adapter = self.adapters[method]
            for slot in range(len(classes)):
                entry = next(entry_iter)
                shown, files = adapter.render(results[method, slot], out, slot)
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
