#!/usr/bin/env python
"""Every registered method at the CLI's automatic (method-aware) layer, on the bundled model and photos.

Does the default a user gets work? For each method in ``pytorch_grad_cam.METHODS``: the offline
EfficientNet-Lite0 (``--model efficientnet-lite0``, the CLI's default), each photo preprocessed as the CLI
does it (resized to 224x224, mean = std = 0.5), the target layer the CLI's ``--target-layer auto`` picks for
that method (``find_target_layer(model, first image, method=name)``, traced on the first photo, as the CLI
does), and the method's constructor defaults. Four maps per method:

* ``examples/cat.jpg`` and ``examples/coffee.jpg`` for their top class (285 'Egyptian cat', 967 'espresso');
* the composite ``examples/cat_and_coffee.jpg`` (cat left, cup right) for 285 and for 967.

For each map: whether it is constant (max - min < 1e-6: an all-zero map explains nothing), the pointing
game (is the map's maximum inside the object's box?) and the energy in the box (the map's sum inside it
over its sum everywhere). The boxes are measured by hand on the photos (``BOXES``, pixels of the file):
the cat's head, the cup (rim, coffee, body and handle, not the saucer), and in the composite the cat's
half and the cup. The class-agnostic methods (EigenCAM, KPCA-CAM, FEM, RandomCAM) explain no class, so
on the composite at most one of their two maps can be on its object.

Targets: no constant map; every class-specific method's composite maps on the right object at least as
often as Grad-CAM's.

Heavy methods run with ``--quick`` settings (the default; ``--no-quick`` for their constructor defaults,
hours on a CPU): SS-CAM ``num_samples=1`` and IS-CAM ``num_samples=2`` on the photos at 112x112, SESS
``num_scales=3``. Score-CAM runs in full (one forward pass per non-constant channel of the 1280 at 224 px).

Also: the share of Score-CAM's channels that are constant and so share one forward pass (``ScoreCAM.
scored_channels``), counted from the model calls on the bundled model, and from the layer's activations
on torchvision ResNet-50 ``layer4`` (random weights, ``torch.manual_seed(0)``, ImageNet normalisation).

Usage::

    python benchmarks/bench_default_layers.py                      # the full set, 13 min on 2 cores
    python benchmarks/bench_default_layers.py --methods gradcam,scorecam
    python benchmarks/bench_default_layers.py --layer _bn1         # every method at one fixed layer instead
"""

from __future__ import annotations

import argparse
import datetime
import sys
import time
import warnings
from pathlib import Path

import cv2
import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from pytorch_grad_cam import METHODS  # noqa: E402
from pytorch_grad_cam.cli.models import load_model  # noqa: E402
from pytorch_grad_cam.cli.runner import preprocess  # noqa: E402
from pytorch_grad_cam.methods.perturbation import ScoreCAM  # noqa: E402
from pytorch_grad_cam.utils.find_layers import find_target_layer, get_layer, layer_output_layout  # noqa: E402

CAT, CUP = 285, 967  # 'Egyptian cat', 'espresso'
#: Hand-measured boxes (x0, y0, x1, y1) in the pixels of each file.
BOXES = {
    ("cat.jpg", "cat"): (40, 0, 370, 300),  # the head, not the background at the right
    ("coffee.jpg", "cup"): (165, 15, 430, 310),  # rim, coffee, body and handle, spoon; not the saucer
    ("cat_and_coffee.jpg", "cat"): (0, 0, 224, 224),  # the left half
    ("cat_and_coffee.jpg", "cup"): (254, 0, 404, 180),  # as tests/integration/test_pretrained.py's CUP_BOX
}
#: (photo, class (None: the top class), object) of each map, in the table's order.
CASES = [
    ("cat.jpg", None, "cat"),
    ("coffee.jpg", None, "cup"),
    ("cat_and_coffee.jpg", CAT, "cat"),
    ("cat_and_coffee.jpg", CUP, "cup"),
]
HEAVY = {"sscam", "iscam", "sess", "ablationcam"}
#: name -> (constructor arguments, input side) with --quick; AblationCAM is cheap at the default layer
#: (only the pool and the classifier run after it), so it keeps its defaults.
QUICK = {
    "sscam": ({"num_samples": 1, "seed": 0}, 112),
    "iscam": ({"num_samples": 2}, 112),
    "sess": ({"num_scales": 3}, 224),
}


def read_rgb(name: str) -> np.ndarray:
    bgr = cv2.imread(str(ROOT / "examples" / name))
    return np.float32(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)) / 255


def box_mask(photo: str, obj: str, shape: tuple[int, int], size: tuple[int, int]) -> np.ndarray:
    """The object's box as a boolean mask over a map of ``shape`` covering the photo of ``size`` (h, w)."""
    x0, y0, x1, y1 = BOXES[photo, obj]
    height, width = size
    rows, cols = shape
    mask = np.zeros(shape, bool)
    mask[
        round(y0 / height * rows) : round(y1 / height * rows),
        round(x0 / width * cols) : round(x1 / width * cols),
    ] = True
    return mask


def scores(cam_map: np.ndarray, mask: np.ndarray) -> tuple[bool, bool, float]:
    """(constant, pointing-game hit, energy in the box) of one map."""
    constant = float(cam_map.max() - cam_map.min()) < 1e-6
    peak = np.unravel_index(int(cam_map.argmax()), cam_map.shape)
    total = float(cam_map.sum())
    energy = float(cam_map[mask].sum()) / total if total > 0 else 0.0
    return constant, (not constant) and bool(mask[peak]), energy


class RowCounter:
    """Counts the rows of every model call (a forward pre-hook on the model) inside a ``with`` block."""

    def __init__(self, model: torch.nn.Module) -> None:
        self.model, self.rows, self.handle = model, [], None

    def __enter__(self):
        self.handle = self.model.register_forward_pre_hook(lambda m, args: self.rows.append(args[0].shape[0]))
        return self

    def __exit__(self, *exc) -> None:
        self.handle.remove()


def layers_for(model, first: torch.Tensor, names: list[str], fixed: str | None) -> dict[str, tuple]:
    """Each method's (layer, name, reshape transform): the CLI's automatic choice, or ``fixed`` for all."""
    if fixed is not None:
        layer = get_layer(model, fixed)
        return {name: (layer, fixed, None) for name in names}
    chosen = {}
    for name in names:
        found = find_target_layer(model, first, method=name)
        chosen[name] = (found.layer, found.name, found.reshape_transform)
    return chosen


def run_method(name, model, layer, reshape, inputs, quick) -> tuple[list[np.ndarray], float, list[int]]:
    """The method's four maps, the mean seconds per map, and the model-call rows of each map."""
    cls = METHODS[name]
    kwargs, side = QUICK.get(name, ({}, 224)) if quick else ({}, 224)
    if not cls.deterministic and "seed" not in kwargs:
        kwargs = {**kwargs, "seed": 0}
    cam = cls(model, target_layers=[layer], reshape_transform=reshape, **kwargs)
    maps, rows, start = [], [], time.perf_counter()
    for x, target in inputs:
        if side != x.shape[-1]:
            x = torch.nn.functional.interpolate(x, size=(side, side), mode="bilinear", antialias=True)
        with RowCounter(model) as counter, warnings.catch_warnings():
            warnings.simplefilter("ignore")  # constant-map warnings: the table reports them
            maps.append(cam(x, targets=[target])[0])
        rows.append(sum(counter.rows) - 1)  # less the unperturbed pass
    return maps, (time.perf_counter() - start) / len(inputs), rows


def cell(constant: bool, hit: bool, energy: float) -> str:
    return "constant" if constant else f"{'hit' if hit else 'miss'} {energy:.2f}"


def resnet50_constant_share(photos: dict[str, np.ndarray]) -> list[tuple[str, int, int]]:
    """(photo, constant channels, channels) of torchvision ResNet-50's layer4 (random weights)."""
    import torchvision

    from pytorch_grad_cam.utils.image import preprocess_image

    torch.manual_seed(0)
    model = torchvision.models.resnet50(weights=None).eval()
    kept = []
    handle = model.layer4.register_forward_hook(lambda m, i, o: kept.append(o))
    rows = []
    try:
        for name, rgb in photos.items():
            x = preprocess_image(
                cv2.resize(rgb, (224, 224), interpolation=cv2.INTER_AREA),
                mean=[0.485, 0.456, 0.406],
                std=[0.229, 0.224, 0.225],
            )
            kept.clear()
            with torch.no_grad():
                model(x)
            activations = kept[0][0]  # (2048, 7, 7)
            scored = ScoreCAM.scored_channels(activations)
            constant = activations.shape[0] - (len(scored) - int(bool((scored < 0).any())))
            rows.append((name, constant, activations.shape[0]))
    finally:
        handle.remove()
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--methods", help="comma-separated names (default: every registered map method)")
    parser.add_argument(
        "--quick", action=argparse.BooleanOptionalAction, default=True, help="heavy methods' settings"
    )
    parser.add_argument(
        "--layer", help="one dotted layer name for every method instead of the automatic choice"
    )
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--no-resnet", action="store_true", help="skip ResNet-50's constant-channel count")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    names = args.methods.split(",") if args.methods else sorted(METHODS)
    loaded = load_model("efficientnet-lite0")
    model = loaded.model
    photos = {photo: read_rgb(photo) for photo in dict.fromkeys(p for p, _, _ in CASES)}
    tensors = {photo: preprocess(loaded, rgb) for photo, rgb in photos.items()}
    with torch.no_grad():
        top = {photo: int(model(x).argmax()) for photo, x in tensors.items()}
    inputs = [(tensors[p], top[p] if c is None else c) for p, c, _ in CASES]
    layers = layers_for(model, tensors[CASES[0][0]], names, args.layer)

    started = time.perf_counter()
    lines, composite_hits, constants, share = [], {}, {}, []
    for name in names:
        layer, layer_name, reshape = layers[name]
        maps, seconds, rows = run_method(name, model, layer, reshape, inputs, args.quick)
        cells, hits, constant = [], 0, 0
        for (photo, _, obj), cam_map in zip(CASES, maps):
            result = scores(cam_map, box_mask(photo, obj, cam_map.shape, photos[photo].shape[:2]))
            cells.append(cell(*result))
            constant += result[0]
            hits += result[1] and photo == "cat_and_coffee.jpg"
        composite_hits[name], constants[name] = hits, constant
        settings = (
            ", ".join(f"{k}={v}" for k, v in QUICK.get(name, ({}, 224))[0].items()) if args.quick else ""
        )
        if args.quick and name in QUICK and QUICK[name][1] != 224:
            settings += f", {QUICK[name][1]} px"
        lines.append(
            f"| {name} | `{layer_name}` | {settings or '-'} | {constant} | {' | '.join(cells)} | {hits} of 2 "
            f"| {seconds:.1f} |"
        )
        if name == "scorecam":  # the scored channels depend on the photo only: one row per photo
            share = list(dict(zip((photo for photo, _, _ in CASES), rows)).items())
        print(lines[-1], file=sys.stderr, flush=True)
    elapsed = time.perf_counter() - started

    print(
        f"Measured {datetime.date.today().isoformat()} on {args.threads} CPU cores "
        f"(torch {torch.__version__}), `python benchmarks/bench_default_layers.py"
        f"{'' if args.quick else ' --no-quick'}{f' --layer {args.layer}' if args.layer else ''}`, "
        f"{elapsed / 60:.1f} min. Cells: pointing game (hit: the map's maximum is inside the object's box) "
        "and the share of the map's sum inside the box."
    )
    print()
    print(
        "| method | layer | settings | constant maps | cat.jpg (top class) | coffee.jpg (top class) "
        f"| composite, {CAT} cat | composite, {CUP} espresso | composite on its object | s per map |"
    )
    print("|---|---|---|---:|---|---|---|---|---:|---:|")
    print("\n".join(lines))
    print()
    classy = [n for n in names if METHODS[n].class_specific]
    worse = [
        n for n in classy if "gradcam" in composite_hits and composite_hits[n] < composite_hits["gradcam"]
    ]
    flat = [n for n in names if constants[n]]
    print(
        f"Constant maps: {', '.join(flat) if flat else 'none'}. Class-specific methods on the right object "
        f"in the composite less often than Grad-CAM: {', '.join(worse) if worse else 'none'}."
    )
    if share:
        channels = layer_output_layout(model, layers["scorecam"][0], inputs[0][0]).map_shape[1]
        print()
        print("Score-CAM's constant channels (their masks are all zeros: one forward pass for all of them):")
        print()
        print("| model, layer | photo | channels scored | constant (skipped) |")
        print("|---|---|---:|---:|")
        for photo, rows_i in share:
            print(
                f"| EfficientNet-Lite0, `{layers['scorecam'][1]}` | {photo} | {rows_i} of {channels} "
                f"| {1 - rows_i / channels:.0%} |"
            )
        if not args.no_resnet:
            for photo, constant, total in resnet50_constant_share(photos):
                scored = total - constant + (1 if constant else 0)
                print(
                    f"| ResNet-50 (random weights), `layer4` | {photo} | {scored} of {total} "
                    f"| {1 - scored / total:.0%} |"
                )
    return 0


if __name__ == "__main__":
    sys.exit(main())
