"""Command line: explain images' classifications with CAM methods; overlays, raw maps, grids, a report.

Run as ``pytorch-grad-cam ...`` (the installed console script), ``python cam.py ...`` from a source
checkout, or call :func:`main` with a list of arguments.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import time
from typing import List, Optional, Sequence

from .inputs import InputImage, collect_inputs, read_image
from .models import DEFAULT_MODEL, CliError, LoadedModel, load_model, resolve_categories
from .outputs import RESULTS_FILE, append_result, load_results, make_grid, write_image, write_report

__all__ = ["CliError", "build_parser", "main"]

DEFAULT_OUTPUT_DIR = "cam_output"

EXAMPLES = """\
examples:
  # Grad-CAM of the top class, offline pretrained EfficientNet-Lite0:
  python cam.py --image-path examples/cat.jpg
  # a class by name or index (967 = espresso), with Grad-CAM++; or the 3 most likely classes:
  python cam.py --image-path examples/cat_and_coffee.jpg --method gradcam++ --target-category espresso
  python cam.py --image-path examples/cat_and_coffee.jpg --top-k 3
  # a whole folder (recursively) or a glob, several methods side by side, and an HTML report:
  python cam.py examples/ --methods gradcam,gradcam++,scorecam,eigencam --report
  # every method, guided backprop images too, and the raw maps as .npy:
  python cam.py --image-path examples/cat.jpg --methods all --guided
  # smoother maps (test-time augmentation; first principal component):
  python cam.py --image-path examples/coffee.jpg --method eigencam --aug-smooth --eigen-smooth
  # a torchvision model (weights downloaded once, cached by torch), a layer by dotted name:
  python cam.py --image-path examples/cat.jpg --model resnet50 --target-layer layer4.-1 --device cuda
  # your own fine-tuned weights for a torchvision architecture:
  python cam.py --image-path x.jpg --model resnet18 --checkpoint model.pt --target-category 3

outputs (in --output-dir): <image>_<method>.jpg overlays, <image>_<method>.npy raw maps (float32 in
[0, 1], at the image's resolution), <image>_grid.jpg when several methods or classes are asked for,
<image>_<method>_gb.jpg / _cam_gb.jpg with --guided, results.jsonl (one line per image), report.html.
Images already in results.jsonl with the same settings are skipped unless --overwrite.

exit status: 0 success, 1 when any image failed (it is reported and skipped), 2 bad arguments.
"""


def _method_names() -> List[str]:
    """Map methods, then guided backpropagation (pixel images) and Deep Feature Factorization."""
    from ..registry import FACTORIZATION_METHODS, METHODS, PIXEL_METHODS

    return list(METHODS) + list(PIXEL_METHODS) + list(FACTORIZATION_METHODS)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pytorch-grad-cam",
        description="Compute Class Activation Maps (Grad-CAM and family) for images with an ImageNet "
        "classifier, and save them overlaid on the images.",
        epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("inputs", nargs="*", metavar="INPUT",
                        help="images, folders (searched recursively) or glob patterns ('photos/**/*.png')")
    parser.add_argument("--image-path", "--image_path", dest="image_paths", action="extend", nargs="+",
                        default=[], metavar="PATH", help="the same as INPUT (the reference CLI's flag)")
    methods = parser.add_mutually_exclusive_group()
    methods.add_argument("--method", default=None, choices=_method_names(), metavar="NAME",
                         help=f"the CAM method (default: gradcam); one of: {', '.join(_method_names())}")
    methods.add_argument("--methods", metavar="LIST",
                         help="several methods, comma-separated, or 'all': saved side by side in a grid "
                         "(the perturbation methods scorecam, ablationcam, sscam, iscam and sess run "
                         "hundreds to tens of thousands of forward passes per image: slow on a CPU)")
    parser.add_argument("--model", default=DEFAULT_MODEL, metavar="NAME",
                        help=f"'{DEFAULT_MODEL}' (default: ImageNet-pretrained, weights shipped in a pip "
                        "package, no download), a torchvision classification model (resnet50, vgg16, "
                        "densenet121, vit_b_16, swin_t, ...; its weights are downloaded once), or a timm "
                        "model as timm:NAME (needs timm)")
    parser.add_argument("--checkpoint", metavar="FILE",
                        help="a state dict for --model's architecture (e.g. your fine-tuned weights); a "
                        "different number of classes is handled")
    parser.add_argument("--target-layer", "--target_layer", dest="target_layer", default="auto",
                        metavar="NAME", help="the layer to explain by dotted name, negative indices allowed "
                        "(layer4.-1, features.-1), or 'auto' (default): the last layer with a spatial output "
                        "that the score depends on, found by tracing one forward pass and printed")
    parser.add_argument("--target-category", "--target_category", dest="target_category", nargs="+",
                        metavar="K", help="class(es) to explain, by index (281) or ImageNet name "
                        "('tabby cat'); default: the top class")
    parser.add_argument("--top-k", dest="top_k", type=int, metavar="K",
                        help="explain each image's K most likely classes")
    parser.add_argument("--batch-size", dest="batch_size", type=int, default=8, metavar="N",
                        help="images per forward pass (default: %(default)s)")
    device = parser.add_mutually_exclusive_group()
    device.add_argument("--use-cuda", "--use_cuda", dest="use_cuda", action="store_true",
                        help="run on the GPU (same as --device cuda); an error when CUDA is not available")
    device.add_argument("--device", metavar="DEV",
                        help="torch device to run on, e.g. cpu, cuda, cuda:1 (default: cpu)")
    parser.add_argument("--aug-smooth", "--aug_smooth", dest="aug_smooth", action="store_true",
                        help="average the map over test-time augmentations (flips, scales); slower, "
                        "better centred on the object")
    parser.add_argument("--eigen-smooth", "--eigen_smooth", dest="eigen_smooth", action="store_true",
                        help="keep only the first principal component of the weighted activations "
                        "(less noise)")
    parser.add_argument("--n-components", dest="n_components", type=int, default=4, metavar="K",
                        help="concepts for --method dff (default: %(default)s)")
    parser.add_argument("--guided", action="store_true",
                        help="also write guided backpropagation (<image>_<method>_gb.jpg) and guided "
                        "Grad-CAM (<image>_<method>_cam_gb.jpg) images")
    parser.add_argument("--output-dir", "--output_dir", dest="output_dir", default=DEFAULT_OUTPUT_DIR,
                        metavar="DIR", help="folder for the outputs (default: %(default)s)")
    parser.add_argument("--overwrite", action="store_true",
                        help="redo images that results.jsonl says are already done")
    parser.add_argument("--report", action="store_true",
                        help="write report.html: a self-contained page with every image's grid")
    parser.add_argument("--quiet", "-q", action="store_true", help="print only errors")
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    return parser


def _version() -> str:
    try:
        from importlib.metadata import version

        return version("pytorch_grad_cam")
    except Exception:  # noqa: BLE001 -- not installed: running from a source tree
        return "unknown"


# ------------------------------------------------------------------------------------------ checks
def _check_args(args: argparse.Namespace, parser: argparse.ArgumentParser) -> None:
    names = _method_names()
    args.inputs = list(args.image_paths) + list(args.inputs)
    if not args.inputs:
        parser.error("no input: give images, folders or globs (INPUT or --image-path PATH)")
    if args.methods is None:
        args.method_list = [args.method or "gradcam"]
    elif args.methods.strip().lower() == "all":
        args.method_list = names
    else:
        args.method_list = [m.strip().lower() for m in args.methods.split(",") if m.strip()]
        unknown = [m for m in args.method_list if m not in names]
        if unknown or not args.method_list:
            parser.error(f"--methods: unknown method(s) {unknown}; choose from {', '.join(names)} or 'all'")
        args.method_list = list(dict.fromkeys(args.method_list))
    if args.top_k is not None:
        if args.target_category:
            parser.error("give --target-category or --top-k, not both")
        if args.top_k < 1:
            parser.error(f"--top-k must be >= 1, got {args.top_k}")
    if args.n_components < 1:
        parser.error(f"--n-components must be >= 1, got {args.n_components}")
    if args.batch_size < 1:
        parser.error(f"--batch-size must be >= 1, got {args.batch_size}")


def _pick_device(args: argparse.Namespace, parser: argparse.ArgumentParser):
    import torch

    if args.use_cuda:
        if not torch.cuda.is_available():
            parser.error("--use-cuda was given but CUDA is not available on this machine "
                         "(no GPU, or a CPU-only build of torch); leave it out to run on the CPU")
        return torch.device("cuda")
    if args.device is None:
        return torch.device("cpu")
    try:
        device = torch.device(args.device)
    except (RuntimeError, ValueError) as exc:
        parser.error(f"--device {args.device!r} is not a torch device: {exc}")
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error(f"--device {args.device} was given but CUDA is not available on this machine")
    return device


# ------------------------------------------------------------------------------------------ the run
class _Runner:
    def __init__(self, args: argparse.Namespace, parser: argparse.ArgumentParser) -> None:
        self.args = args
        self.parser = parser
        self.device = _pick_device(args, parser)
        self.loaded: Optional[LoadedModel] = None
        self.layer = None
        self.layer_name = ""
        self.reshape = None
        self.categories: Optional[List[int]] = None
        self.failed = 0
        # DFF's computation_on_concepts (the model's last nn.Linear, or None), once it is known.
        self._dff_head = None
        self._dff_head_known = False

    def say(self, text: str) -> None:
        if not self.args.quiet:
            print(text, flush=True)

    def warn(self, text: str) -> None:
        print(f"{self.parser.prog}: {text}", file=sys.stderr, flush=True)

    # -- setup ----------------------------------------------------------------------------------
    def setup(self, first_tensor) -> None:
        import torch

        from ..utils.find_layers import find_target_layer, get_layer

        model = self.loaded.model
        with torch.no_grad():
            num_classes = model(first_tensor).shape[-1]
        self.num_classes = int(num_classes)
        if self.args.target_category:
            self.categories = resolve_categories(self.args.target_category, self.loaded, self.num_classes)
        if self.args.top_k is not None and self.args.top_k > self.num_classes:
            raise CliError(f"--top-k {self.args.top_k} is more than the model's {self.num_classes} classes",
                           code=2)
        if self.args.target_layer == "auto":
            found = find_target_layer(model, first_tensor)
            self.layer, self.layer_name, self.reshape = found.layer, found.name, found.reshape_transform
            self.say(f"target layer (auto): {found.describe()}")
        else:
            try:
                self.layer = get_layer(model, self.args.target_layer)
            except ValueError as exc:
                raise CliError(f"--target-layer: {exc}", code=2) from exc
            self.layer_name = self.args.target_layer
            self.reshape = _reshape_for(model, self.layer, first_tensor, self.args.target_layer)

    def settings_key(self) -> str:
        """What decides the outputs: images done with other settings are redone."""
        a = self.args
        settings = [a.model, a.checkpoint, a.target_layer, a.target_category, a.top_k, a.method_list,
                    a.aug_smooth, a.eigen_smooth, a.guided, a.n_components]
        return hashlib.sha1(json.dumps(settings, default=str).encode()).hexdigest()[:16]

    # -- per batch ------------------------------------------------------------------------------
    def preprocess(self, image):
        import cv2

        from ..utils.image import preprocess_image

        size = self.loaded.input_size
        resized = cv2.resize(image, (size, size), interpolation=cv2.INTER_AREA)
        return preprocess_image(resized, mean=list(self.loaded.mean), std=list(self.loaded.std))

    def run_batch(self, batch: List[InputImage], images: list) -> List[dict]:
        import torch

        x = torch.cat([self.preprocess(image) for image in images]).to(self.device)  # (B, 3, S, S)
        with torch.no_grad():
            probabilities = torch.softmax(self.loaded.model(x).float(), dim=1).cpu()  # (B, K)
        if self.categories is not None:
            classes = [list(self.categories) for _ in batch]
        else:
            k = self.args.top_k or 1
            classes = probabilities.topk(k, dim=1).indices.tolist()
        per_image: List[List[dict]] = [[] for _ in batch]
        results = {}  # (method, class slot) -> (kind, batch result)
        guided_cache: dict = {}
        for method in self.args.method_list:
            compute = self._method_fn(method, x, classes, guided_cache)
            for slot in range(len(classes[0])):
                start = time.perf_counter()
                if method == "dff" and slot > 0:
                    results[method, slot] = results[method, 0]  # class-agnostic: computed once
                else:
                    results[method, slot] = compute(slot)
                seconds = (time.perf_counter() - start) / len(batch)
                for i in range(len(batch)):
                    c = classes[i][slot]
                    per_image[i].append({"method": method, "class": c,
                                         "class_name": self.loaded.class_name(c),
                                         "probability": float(probabilities[i, c]), "seconds": seconds,
                                         "files": []})
        guided = None
        if self.args.guided:
            guided = [self._guided(x, classes, slot, guided_cache) for slot in range(len(classes[0]))]
        return [self._write_outputs(item, image, i, classes[i], results, per_image[i], guided)
                for i, (item, image) in enumerate(zip(batch, images))]

    def _method_fn(self, method: str, x, classes, guided_cache: dict):
        """``slot -> (kind, result)`` for one method: kind "map" (B, S, S) maps, "pixel" (B, S, S, 3)
        images, or "dff" (explanations (B, K, S, S), concept labels per image)."""
        from ..registry import METHODS

        def targets(slot):
            return [c[slot] for c in classes]

        if method in METHODS:
            cam = METHODS[method](self.loaded.model, target_layers=[self.layer],
                                  reshape_transform=self.reshape, device=self.device)
            return lambda slot: ("map", cam(x, targets=targets(slot), aug_smooth=self.args.aug_smooth,
                                            eigen_smooth=self.args.eigen_smooth))
        if method == "guidedbackprop":
            return lambda slot: ("pixel", self._guided(x, classes, slot, guided_cache))
        if method == "guidedgradcam":
            cam = METHODS["gradcam"](self.loaded.model, target_layers=[self.layer],
                                     reshape_transform=self.reshape, device=self.device)

            def guided_gradcam(slot):
                maps = cam(x, targets=targets(slot), aug_smooth=self.args.aug_smooth,
                           eigen_smooth=self.args.eigen_smooth)  # (B, S, S)
                return "pixel", self._guided(x, classes, slot, guided_cache) * maps[..., None]
            return guided_gradcam
        if method == "dff":
            return lambda slot: ("dff", self._dff(x))
        raise CliError(f"unknown method {method!r}", code=2)  # _check_args validated the names

    def _guided(self, x, classes, slot: int, cache: dict):
        """Guided backpropagation images (B, S, S, 3) of class slot ``slot``, computed once."""
        if slot not in cache:
            from .. import GuidedBackpropReLUModel

            gb_model = GuidedBackpropReLUModel(self.loaded.model, device=self.device)
            # one image comes back as (S, S, 3), the reference's layout
            image = gb_model(x, targets=[c[slot] for c in classes], channels_last=True)
            cache[slot] = image.reshape(x.shape[0], *x.shape[2:], -1)
        return cache[slot]

    def _dff(self, x):
        """Deep Feature Factorization of each image on its own: (explanations (K, S, S), labels) per image.
        Concepts are named by the model's last linear layer when it reads the target layer's channels:
        the softmax of its outputs on the concept vectors, the top class and its probability."""
        import torch

        from .. import DeepFeatureFactorization

        dff = DeepFeatureFactorization(self.loaded.model, self.layer, self.reshape,
                                       computation_on_concepts=self._concept_head(x), device=self.device)
        results = []
        for i in range(x.shape[0]):
            concepts, explanations, *outputs = dff(x[i:i + 1], self.args.n_components)
            labels = [f"concept {k}" for k in range(concepts.shape[1])]
            if outputs:
                top = torch.softmax(torch.from_numpy(outputs[0]), -1).max(-1)  # (K,) of (K, num_classes)
                labels = [f"{self.loaded.class_name(int(c))} {float(p):.2f}"
                          for c, p in zip(top.indices, top.values)]
            results.append((explanations[0], labels))
        return results

    def _concept_head(self, x):
        """The model's last ``nn.Linear`` if it reads as many features as the target layer has channels
        (after the reshape transform), else None; found once, with one image's forward pass."""
        if not self._dff_head_known:
            import torch
            from torch import nn

            from .._engine.capture import LayerCapture
            from ..base_cam import reshape_layer_output
            from ..utils.find_layers import find_layer_types_recursive

            model = self.loaded.model
            linears = find_layer_types_recursive(model, [nn.Linear])
            if linears:
                capture = LayerCapture(model, [self.layer], grad=False, structured=self.reshape is not None)
                with capture, torch.no_grad():
                    model(x[:1])
                output = capture.activations.get(id(self.layer))  # (DFF itself says if the layer did not run)
                channels = None if output is None else reshape_layer_output(
                    model, self.layer, self.reshape, output).shape[1]  # of (1, C, *grid)
                if linears[-1].in_features == channels:
                    self._dff_head = linears[-1]
            self._dff_head_known = True
        return self._dff_head

    def _write_outputs(self, item: InputImage, image, index: int, classes: List[int], results: dict,
                       entries: List[dict], guided) -> dict:
        import cv2
        import numpy as np

        from ..utils.image import deprocess_image, show_cam_on_image, show_factorization_on_image

        out_dir = self.args.output_dir
        height, width = image.shape[:2]
        several = len(classes) > 1
        rows = []
        entry_iter = iter(entries)
        written = []

        def save(name, rgb=None, array=None):
            if rgb is not None:
                write_image(os.path.join(out_dir, name), rgb)
            else:
                np.save(os.path.join(out_dir, name), array)
            return name

        for method in self.args.method_list:
            for slot, c in enumerate(classes):
                entry = next(entry_iter)
                kind, result = results[method, slot]
                suffix = f"_{method}" + (f"_c{c}" if several and kind != "dff" else "")
                stem = f"{item.key}{suffix}"
                files = []
                if kind == "map":
                    grayscale = cv2.resize(result[index], (width, height), interpolation=cv2.INTER_LINEAR)
                    grayscale = np.clip(grayscale, 0.0, 1.0).astype(np.float32)
                    shown = show_cam_on_image(image, grayscale, use_rgb=True)
                    files += [save(f"{stem}.jpg", shown), save(f"{stem}.npy", array=grayscale)]
                    if guided is not None:
                        gb = cv2.resize(guided[slot][index], (width, height), interpolation=cv2.INTER_LINEAR)
                        files += [save(f"{stem}_gb.jpg", deprocess_image(gb)),
                                  save(f"{stem}_cam_gb.jpg", deprocess_image(gb * grayscale[..., None]))]
                elif kind == "pixel":
                    pixels = cv2.resize(result[index], (width, height), interpolation=cv2.INTER_LINEAR)
                    shown = deprocess_image(pixels)
                    files += [save(f"{stem}.jpg", shown),
                              save(f"{stem}.npy", array=pixels.astype(np.float32))]
                else:  # dff: one picture per image, whatever the class
                    explanations, labels = result[index]
                    resized = np.stack([cv2.resize(e, (width, height), interpolation=cv2.INTER_LINEAR)
                                        for e in explanations])  # (K, H, W)
                    shown = show_factorization_on_image(image, resized, concept_labels=labels)
                    if slot == 0:
                        files += [save(f"{stem}.jpg", shown), save(f"{stem}.npy", array=resized)]
                entry["files"] = files
                written += files
                rows.append((slot, method, shown))
        record = {"path": item.path, "status": "ok", "settings": self.settings_key(),
                  "model": self.args.model, "layer": self.layer_name, "methods": self.args.method_list,
                  "classes": classes, "maps": entries}
        if len(self.args.method_list) > 1 or several or self.args.report:
            original = np.uint8(np.clip(image * 255, 0, 255))
            grid_rows = []
            for slot, c in enumerate(classes):
                label = f"{c} {self.loaded.class_name(c)}"
                grid_rows.append([(label, original)] + [(m, o) for s, m, o in rows if s == slot])
            record["grid"] = f"{item.key}_grid.jpg"
            write_image(os.path.join(out_dir, record["grid"]), make_grid(grid_rows))
            written.append(record["grid"])
        record["outputs"] = written
        return record


def _reshape_for(model, layer, x, name: str):
    """The reshape transform a named layer's output needs (None for (B, C, *spatial) maps)."""
    import torch

    from ..utils.find_layers import guess_reshape_transform

    seen = []
    handle = layer.register_forward_hook(lambda module, inputs, output: seen.append(output))
    try:
        with torch.no_grad():
            model(x)
    finally:
        handle.remove()
    if not seen or not isinstance(seen[0], torch.Tensor):
        kind = "did not run" if not seen else f"returns {type(seen[0]).__name__}"
        raise CliError(f"--target-layer {name}: the layer {kind}; choose a layer with a tensor output",
                       code=2)
    transform, ok = guess_reshape_transform(seen[0])
    if not ok:
        raise CliError(f"--target-layer {name}: its output {tuple(seen[0].shape)} is not a spatial map "
                       "(B, C, H, W), channels-last (B, H, W, C) or tokens on a square grid", code=2)
    return transform


def _run(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    _check_args(args, parser)
    runner = _Runner(args, parser)
    items, problems = collect_inputs(args.inputs)
    for spec, why in problems:
        runner.warn(f"cannot read image {spec!r}: {why}; skipped")
    runner.failed += len(problems)
    if not items:
        raise CliError("no image to explain")
    runner.loaded = load_model(args.model, args.checkpoint)
    runner.loaded.model.to(runner.device)
    done = {} if args.overwrite else load_results(args.output_dir)
    results = dict(done)

    key = None
    skipped = 0
    progress = _progress(len(items), args.quiet)
    try:
        for start in range(0, len(items), args.batch_size):
            batch, images = [], []
            for item in items[start:start + args.batch_size]:
                try:
                    image = read_image(item.path)
                except ValueError as exc:
                    runner.warn(f"cannot read image {item.path!r}: {exc}; skipped")
                    runner.failed += 1
                    record = {"path": item.path, "status": "error", "error": str(exc)}
                    append_result(args.output_dir, record)
                    results[item.path] = record
                    progress.update(1)
                    continue
                if runner.layer is None:
                    runner.setup(runner.preprocess(image).to(runner.device))
                    key = runner.settings_key()
                if _already_done(done.get(item.path), key, args.output_dir):
                    skipped += 1
                    progress.update(1)
                    continue
                batch.append(item)
                images.append(image)
            if not batch:
                continue
            begin = time.perf_counter()
            try:
                records = runner.run_batch(batch, images)
            except CliError:
                raise
            except Exception as exc:  # noqa: BLE001 -- report the batch's images as failed, go on
                runner.warn(f"failed on {', '.join(i.path for i in batch)}: {type(exc).__name__}: {exc}")
                runner.failed += len(batch)
                records = [{"path": i.path, "status": "error", "error": f"{type(exc).__name__}: {exc}"}
                           for i in batch]
            elapsed = (time.perf_counter() - begin) / len(batch)
            for record in records:
                record["seconds"] = elapsed
                append_result(args.output_dir, record)
                results[record["path"]] = record
                if record["status"] == "ok":
                    _print_record(runner, record)
            progress.update(len(batch))
    finally:
        progress.close()
    if skipped:
        runner.say(f"skipped {skipped} image(s) already done with these settings (see {RESULTS_FILE}; "
                   "--overwrite to redo them)")
    if args.report:
        ordered = [results[i.path] for i in items if i.path in results]
        runner.say(f"wrote: {write_report(args.output_dir, ordered)}")
    if runner.failed:
        runner.warn(f"{runner.failed} input(s) failed; see the messages above")
        return 1
    return 0


def _already_done(previous: Optional[dict], key: str, output_dir: str) -> bool:
    """Done before with the same settings, and every output file still there."""
    if not previous or previous.get("status") != "ok" or previous.get("settings") != key:
        return False
    return all(os.path.isfile(os.path.join(output_dir, name)) for name in previous.get("outputs", []))


def _print_record(runner: _Runner, record: dict) -> None:
    runner.say(f"image: {record['path']}")
    shown = set()
    for entry in record["maps"]:
        if entry["class"] not in shown:
            shown.add(entry["class"])
            runner.say(f"explained class: {entry['class']} ({entry['class_name']}), "
                       f"probability {entry['probability']:.4f}")
    for name in record["outputs"]:
        runner.say(f"wrote: {os.path.join(runner.args.output_dir, name)}")


class _NoProgress:
    def update(self, n: int) -> None:
        pass

    def close(self) -> None:
        pass


def _progress(total: int, quiet: bool):
    """A tqdm bar on stderr for runs of several images; nothing for one image or with --quiet."""
    if quiet or total < 4:
        return _NoProgress()
    from tqdm import tqdm

    return tqdm(total=total, unit="image", file=sys.stderr, leave=False)


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run the command line with ``argv`` (default: ``sys.argv[1:]``); return the exit status.

    Bad arguments raise ``SystemExit(2)`` from argparse, as on the command line.
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return _run(args, parser)
    except CliError as exc:
        print(f"{parser.prog}: error: {exc}", file=sys.stderr)
        return exc.code
    except Exception as exc:  # noqa: BLE001 -- report it, do not dump a traceback at the user
        print(f"{parser.prog}: error: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
