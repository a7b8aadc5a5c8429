"""The command line's entry point: the argument parser, the argument checks and the run over all images.

The per-batch work (preprocessing, the methods, the files written) is in :mod:`.runner`; it and
:mod:`.outputs` import torch and OpenCV, so they are imported only when a run starts: ``--help`` and
``--version`` stay quick.
"""

from __future__ import annotations

import argparse
import functools
import os
import sys
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Callable

from .inputs import MAX_PIXELS, InputImage, example_image, gather_inputs, read_image, skipped_summary
from .models import DEFAULT_MODEL, CliError, load_model
from .progress import MIN_IMAGES_FOR_A_BAR, PASSES, Progress
from .results import already_done
from .text import printable

__all__ = ["EXAMPLES", "build_parser", "main"]

DEFAULT_OUTPUT_DIR = "cam_output"

EXAMPLES = """\
examples:
  # (pytorch-grad-cam is the same as python -m pytorch_grad_cam, or python cam.py in a checkout)
  # Grad-CAM of the top class of the example photo that comes with the package (a cat and a cup of
  # coffee), with the offline pretrained EfficientNet-Lite0:
  pytorch-grad-cam --example
  # a class by name or index (967 = espresso), with Grad-CAM++; or the 3 most likely classes:
  pytorch-grad-cam --example --method gradcam++ --target-category espresso
  pytorch-grad-cam --example --top-k 3
  # a whole folder (recursively) or a glob, several methods side by side, and an HTML report:
  pytorch-grad-cam photos/ "more/**/*.png" --methods gradcam,gradcam++,scorecam,eigencam --report
  # every method, guided backprop images too (the perturbation methods take minutes on a CPU):
  pytorch-grad-cam --example --methods all --guided
  # smoother maps (test-time augmentation; first principal component):
  pytorch-grad-cam --example --method eigencam --aug-smooth --eigen-smooth
  # a torchvision model (weights downloaded once, cached by torch), a layer by dotted name:
  pytorch-grad-cam --example --model resnet50 --target-layer layer4.-1 --device cuda
  # your own fine-tuned weights for a torchvision architecture (torch.save(model.state_dict(), FILE)):
  pytorch-grad-cam x.jpg --model resnet18 --checkpoint model.pt --target-category 3

outputs (in --output-dir): <image>_<class>_<method>.jpg overlays and <image>_<class>_<method>.npy raw
maps (float32 in [0, 1], at the image's resolution), e.g. cat_285_gradcam.jpg; class-agnostic methods
(eigencam, kpcacam, fem, randomcam, dff) are written once, as <image>_<method>.jpg. <image>_grid.jpg
when several methods or classes are asked for, <image>_<class>_<method>_gb.jpg / _cam_gb.jpg with
--guided, results.jsonl (one line per image), report.html. <image> is the file's path below the folder
given (or below a glob's leading folder), without extension; when another file's record in
results.jsonl already holds that name (a.jpg beside a done a.png, x.png of a second folder), it becomes
<image>-2, -3, ...: outputs of another image are never overwritten, and a file of an earlier run that
is written again is said ("replaced the file of an earlier run").

resuming: an image is skipped (unless --overwrite) when results.jsonl has a record of the same file
(real path), the same content (size and SHA-256), the same settings, and its output files are still
there. Every record is checked when read back; a bad one, or a line cut short by a killed run, is moved
to results.rejected.jsonl with a warning, the file is rewritten valid, and its image is redone.

file reading: a folder is searched recursively for .jpg, .jpeg, .png, .bmp, .tif, .tiff, .webp, .ppm,
.pgm and .pbm files; its other files and hidden files are listed as skipped (name a file to try it
anyway). An image whose header declares more than --max-pixels pixels (default 100,000,000) is refused
before it is decoded. A file too large or unreadable is reported and recorded in results.jsonl, and the
run goes on with the next image (exit status 1). Names are printed with control characters escaped
(\\x1b), and a byte that is not UTF-8 as \\xff.

progress and warnings: a run with a perturbation method prints each one's forward passes per image and
an estimate of the time, and its progress bar counts forward passes (within an image too); other runs
count images. The library's warnings are one line each, "pytorch-grad-cam: warning: <file>: <method>:
<message>"; a constant (all-zero) map always gets one, saying what to try. They are kept in
results.jsonl ("warnings" of each map) and report.html. "seconds" in results.jsonl are per image (its
share of its batch's time), for the record and for each map.

exit status: 0 success, 1 when any image failed (it is reported and skipped), 2 bad arguments.
"""


def _method_names() -> list[str]:
    """Map methods, then guided backpropagation (pixel images) and Deep Feature Factorization."""
    from ..registry import FACTORIZATION_METHODS, METHODS, PIXEL_METHODS

    return list(METHODS) + list(PIXEL_METHODS) + list(FACTORIZATION_METHODS)


# ------------------------------------------------------------------------------------------ the rule
def _reject(parser: argparse.ArgumentParser, option: str, expected: str, got: object, why: str = "") -> None:
    """The one rule for a bad option value: exit 2 through argparse.

    The message names the option, what it must be and what it got
    (``--batch-size must be an int >= 1, got 0``).
    """
    parser.error(f"{option} must be {expected}, got {got}{why}")


class _IntAtLeast(argparse.Action):
    """``type=int`` with a lower bound, checked while parsing.

    Checked there, every use of :func:`build_parser` gets checked values; a word or a number below
    ``minimum`` goes through :func:`_reject`.
    """

    def __init__(self, option_strings: Sequence[str], dest: str, minimum: int = 1, **kwargs) -> None:
        super().__init__(option_strings, dest, **kwargs)
        self.minimum = minimum

    def __call__(self, parser, namespace, values, option_string=None) -> None:
        expected = f"an int >= {self.minimum}"
        try:
            value = int(values)
        except ValueError:
            _reject(parser, self.option_strings[0], expected, repr(values))
        if value < self.minimum:
            _reject(parser, self.option_strings[0], expected, value)
        setattr(namespace, self.dest, value)


# ------------------------------------------------------------------------------------------ the parser
def build_parser() -> argparse.ArgumentParser:
    """The CLI's argument parser (``pytorch-grad-cam --help`` prints it, with :data:`EXAMPLES`)."""
    parser = argparse.ArgumentParser(
        prog="pytorch-grad-cam",
        description="Compute Class Activation Maps (Grad-CAM and family) for images with an ImageNet "
        "classifier, and save them overlaid on the images.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    # In four groups, in the order --help lists them.
    _add_input_and_method_options(parser)
    _add_model_and_class_options(parser)
    _add_compute_options(parser)
    _add_output_options(parser)
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    return parser


def _add_input_and_method_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "inputs",
        nargs="*",
        metavar="INPUT",
        help="images, folders (searched recursively) or glob patterns ('photos/**/*.png')",
    )
    parser.add_argument(
        "--image-path",
        "--image_path",
        dest="image_paths",
        action="extend",
        nargs="+",
        default=[],
        metavar="PATH",
        help="the same as INPUT (the reference CLI's flag)",
    )
    parser.add_argument(
        "--example",
        action="store_true",
        help="also explain the example photo that comes with the package (a cat and a cup of coffee, "
        "448x224, CC0): try the command line from any folder",
    )
    parser.add_argument(
        "--max-pixels",
        dest="max_pixels",
        action=_IntAtLeast,
        default=MAX_PIXELS,
        metavar="N",
        help="refuse an image whose header declares more than N pixels (width x height), before "
        f"decoding it (default: {MAX_PIXELS:,})",
    )
    names = _method_names()
    methods = parser.add_mutually_exclusive_group()
    methods.add_argument(
        "--method",
        default=None,
        choices=names,
        metavar="NAME",
        help=f"the CAM method (default: gradcam); one of: {', '.join(names)}",
    )
    methods.add_argument(
        "--methods",
        metavar="LIST",
        help="several methods, comma-separated, or 'all': saved side by side in a grid "
        "(the perturbation methods scorecam, ablationcam, sscam, iscam and sess run "
        "hundreds to tens of thousands of forward passes per image: slow on a CPU; the run "
        "prints their passes and an estimate of the time first, and its progress bar counts "
        "forward passes)",
    )


def _add_model_and_class_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--model",
        default=DEFAULT_MODEL,
        metavar="NAME",
        help=f"'{DEFAULT_MODEL}' (default: ImageNet-pretrained, weights shipped in a pip "
        "package, no download), a torchvision classification model (resnet50, vgg16, "
        "densenet121, vit_b_16, swin_t, ...; its weights are downloaded once), or a timm "
        "model as timm:NAME (needs timm)",
    )
    parser.add_argument(
        "--checkpoint",
        metavar="FILE",
        help="a state dict for --model's architecture (e.g. your fine-tuned weights, saved with "
        "torch.save(model.state_dict(), FILE)); a different number of classes is handled. A whole "
        "pickled model (torch.save(model)) is refused: loading it would run code from the file",
    )
    parser.add_argument(
        "--target-layer",
        "--target_layer",
        dest="target_layer",
        default="auto",
        metavar="NAME",
        help="the layer to explain by dotted name, negative indices allowed "
        "(layer4.-1, features.-1; NAME:input is what that module receives), or 'auto' (default): the "
        "last layer with a spatial output that the score depends on, found by tracing one forward pass "
        "and printed; the methods that need non-negative activations (scorecam, gradcam++, xgradcam, "
        "...) get the nearest non-negative activation after it",
    )
    parser.add_argument(
        "--target-category",
        "--target_category",
        dest="target_category",
        nargs="+",
        metavar="K",
        help="class(es) to explain, by index (281) or ImageNet name ('tabby', 'Egyptian cat': the whole "
        "name, any case; another name is an error that suggests close ones); default: the top class",
    )
    parser.add_argument(
        "--top-k",
        dest="top_k",
        action=_IntAtLeast,
        metavar="K",
        help="explain each image's K most likely classes",
    )


def _add_compute_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--batch-size",
        dest="batch_size",
        action=_IntAtLeast,
        default=8,
        metavar="N",
        help="images per forward pass (default: %(default)s)",
    )
    device = parser.add_mutually_exclusive_group()
    device.add_argument(
        "--use-cuda",
        "--use_cuda",
        dest="use_cuda",
        action="store_true",
        help="run on the GPU (same as --device cuda); an error when CUDA is not available",
    )
    device.add_argument(
        "--device", metavar="DEV", help="torch device to run on, e.g. cpu, cuda, cuda:1 (default: cpu)"
    )
    parser.add_argument(
        "--aug-smooth",
        "--aug_smooth",
        dest="aug_smooth",
        action="store_true",
        help="average the map over test-time augmentations (flips, scales); slower, "
        "better centred on the object",
    )
    parser.add_argument(
        "--eigen-smooth",
        "--eigen_smooth",
        dest="eigen_smooth",
        action="store_true",
        help="keep only the first principal component of the weighted activations (less noise)",
    )
    parser.add_argument(
        "--n-components",
        dest="n_components",
        action=_IntAtLeast,
        default=4,
        metavar="K",
        help="concepts for --method dff (default: %(default)s)",
    )
    parser.add_argument(
        "--guided",
        action="store_true",
        help="also write guided backpropagation (<image>_<class>_<method>_gb.jpg) and guided "
        "Grad-CAM (<image>_<class>_<method>_cam_gb.jpg) images",
    )


def _add_output_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--output-dir",
        "--output_dir",
        dest="output_dir",
        default=DEFAULT_OUTPUT_DIR,
        metavar="DIR",
        help="folder for the outputs (default: %(default)s)",
    )
    parser.add_argument(
        "--overwrite", action="store_true", help="redo images that results.jsonl says are already done"
    )
    parser.add_argument(
        "--report",
        action="store_true",
        help="write report.html: a self-contained page with every image's grid",
    )
    parser.add_argument(
        "--quiet",
        "-q",
        action="store_true",
        help="print only errors and warnings (no progress bar, no estimate, no list of files written)",
    )


def _version() -> str:
    try:
        from importlib.metadata import version

        return version("pytorch_grad_cam")
    except Exception:
        return "unknown"


# ------------------------------------------------------------------------------------------ checks
def _check_args(args: argparse.Namespace, parser: argparse.ArgumentParser) -> None:
    """What argparse cannot check alone: an input given, the method list, option combinations.

    Sets ``args.inputs`` (INPUT, --image-path and --example together) and ``args.method_list``.
    """
    args.inputs = list(args.image_paths) + list(args.inputs) + ([example_image()] if args.example else [])
    if not args.inputs:
        parser.error("no input: give images, folders or globs (INPUT or --image-path PATH), or --example")
    args.method_list = _method_list(args, parser)
    if args.top_k is not None and args.target_category:
        parser.error("give --target-category or --top-k, not both")


def _method_list(args: argparse.Namespace, parser: argparse.ArgumentParser) -> list[str]:
    """--method's or --methods' names, each once, in the order given ('all': every method)."""
    names = _method_names()
    if args.methods is None:
        return [args.method or "gradcam"]
    if args.methods.strip().lower() == "all":
        return names
    chosen = [m.strip().lower() for m in args.methods.split(",") if m.strip()]
    unknown = [m for m in chosen if m not in names]
    if unknown or not chosen:
        why = f" (unknown: {', '.join(unknown)})" if unknown else ""
        _reject(
            parser,
            "--methods",
            f"'all' or a comma-separated list of method names ({', '.join(names)})",
            repr(args.methods),
            why,
        )
    return list(dict.fromkeys(chosen))


def _pick_device(args: argparse.Namespace, parser: argparse.ArgumentParser):
    """The torch device of --use-cuda / --device (default: the CPU); an unusable one exits 2."""
    import torch

    if args.use_cuda:
        if not torch.cuda.is_available():
            parser.error(
                "--use-cuda was given but CUDA is not available on this machine "
                "(no GPU, or a CPU-only build of torch); leave it out to run on the CPU"
            )
        return torch.device("cuda")
    if args.device is None:
        return torch.device("cpu")
    expected = "a torch device such as cpu, cuda or cuda:1"
    try:
        device = torch.device(args.device)
    except (RuntimeError, ValueError) as exc:
        _reject(parser, "--device", expected, repr(args.device), f" ({exc})")
    if device.type == "cuda" and not torch.cuda.is_available():
        _reject(
            parser,
            "--device",
            expected + " that this machine has",
            args.device,
            " (CUDA is not available on this machine)",
        )
    return device


# ------------------------------------------------------------------------------------------ the run
@dataclass(frozen=True)
class _Console:
    """Where the run speaks: lines on stdout (none with --quiet), problems on stderr, both through the bar."""

    prog: str
    quiet: bool
    progress: Progress = field(default_factory=Progress)

    def say(self, text: str) -> None:
        """A line on stdout (none with --quiet), control characters escaped (:func:`.text.printable`)."""
        if not self.quiet:
            self.progress.write(printable(text), sys.stdout)

    def warn(self, text: str) -> None:
        """A line on stderr, ``<prog>: <text>``, control characters escaped."""
        self.progress.write(f"{self.prog}: {printable(text)}", sys.stderr)

    def show_warning(self, message, category, filename, lineno, file=None, line=None) -> None:
        """``warnings.showwarning`` for the run: a warning outside the methods' calls, as one line."""
        self.warn(f"warning: {message}")


@dataclass
class _Totals:
    """What the run did so far, owned by one :func:`_run` call: the records by real path, failures, skips."""

    records: dict[str, dict] = field(default_factory=dict)
    failed: int = 0
    skipped: int = 0


def _run(args: argparse.Namespace, parser: argparse.ArgumentParser, console: _Console) -> int:
    """Check the arguments, explain every input in batches, write the report; the exit status."""
    from . import runner as runner_module  # torch and OpenCV: only once a run starts
    from .outputs import write_report
    from .results import RESULTS_FILE, assign_keys, load_results

    _check_args(args, parser)
    device = _pick_device(args, parser)
    inputs = gather_inputs(args.inputs)
    items, problems = inputs.images, inputs.problems
    for spec, why in problems:
        console.warn(f"cannot read image {spec!r}: {why}; skipped")
    for spec, skipped in inputs.skipped.items():
        console.say(skipped_summary(spec, skipped))
    if not items:
        raise CliError("no image to explain")
    loaded = load_model(args.model, args.checkpoint)
    loaded.model.to(device)
    options = runner_module.RunOptions.from_args(args)
    results = load_results(args.output_dir)
    for note in results.notes:
        console.warn(f"{note}; its image is redone if it is among the inputs")
    items = assign_keys(items, results.records)  # never the key of another file's outputs
    done = {} if args.overwrite else results.records
    totals = _Totals(records=dict(results.records), failed=len(problems))

    def make_runner(image) -> runner_module.Runner:
        return runner_module.Runner.for_first_image(
            loaded, device, options, image, console.say, time_passes=not options.quiet
        )

    read = functools.partial(read_image, max_pixels=args.max_pixels)
    with console.progress:
        _explain_all(items, done, options, make_runner, console, totals, read)
    if totals.skipped:
        console.say(
            f"skipped {totals.skipped} image(s) already done with these settings (see "
            f"{RESULTS_FILE}; --overwrite to redo them)"
        )
    if args.report:
        files = [os.path.realpath(i.path) for i in items]
        ordered = [totals.records[f] for f in files if f in totals.records]
        console.say(f"wrote: {write_report(args.output_dir, ordered)}")
    if totals.failed:
        console.warn(f"{totals.failed} input(s) failed; see the messages above")
        return 1
    return 0


def _explain_all(
    items: list[InputImage],
    done: dict[str, dict],
    options,
    make_runner: Callable,
    console: _Console,
    totals: _Totals,
    read: Callable[[str], object] = read_image,
) -> None:
    """Every item, ``options.batch_size`` at a time, each read with ``read``.

    Unreadable ones and ones already done are recorded or skipped one by one, the rest explained together. The
    runner is made from the first readable image (it decides the target layer and what an image costs),
    also when that image turns out to be done already; the progress bar starts then, with the images
    settled before it counted in.
    """
    runner = None
    settled = 0  # images done with (unreadable, or done already) that the bar has not counted yet
    for start in range(0, len(items), options.batch_size):
        batch: list[tuple[InputImage, object, dict]] = []
        for item in items[start : start + options.batch_size]:
            got = _read_or_record(item, options.output_dir, console, totals, read)
            if got is not None:
                image, identity = got
                if runner is None:
                    runner = make_runner(image)
                    _start_progress(runner.plan, len(items), console)
                if not already_done(
                    done.get(identity["file"]), identity, options.settings, options.output_dir
                ):
                    batch.append((item, image, identity))
                    continue
                totals.skipped += 1
            settled += 1
        if runner is not None:
            console.progress.advance(settled * runner.plan.per_image)
            settled = 0
        if batch:
            _explain_batch(runner, batch, options.output_dir, console, totals)


def _start_progress(plan, images: int, console: _Console) -> None:
    """A perturbation run's estimate, then the bar: always for a perturbation run, else from a few images."""
    if console.quiet:
        return
    for line in plan.estimates(images):
        console.say(line)
    if plan.unit == PASSES or images >= MIN_IMAGES_FOR_A_BAR:
        console.progress.open(images * plan.per_image, plan.unit)


def _read_or_record(
    item: InputImage,
    output_dir: str,
    console: _Console,
    totals: _Totals,
    read: Callable[[str], object] = read_image,
):
    """``(image (float RGB) that ``read`` gives, source identity)``, or None after recording why not.

    ``read`` raises ValueError for a file it cannot read (:func:`.inputs.read_image`: also one too large).
    """
    from .results import append_result, source_identity

    try:
        return read(item.path), source_identity(item.path)
    except (ValueError, OSError) as exc:
        why = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        console.warn(f"cannot read image {item.path!r}: {why}; skipped")
        file = os.path.realpath(item.path)
        record = {"path": item.path, "file": file, "status": "error", "error": why}
        append_result(output_dir, record)
        totals.records[file] = record
        totals.failed += 1
        return None


def _explain_batch(
    runner, batch: list[tuple[InputImage, object, dict]], output_dir: str, console: _Console, totals: _Totals
) -> None:
    """One batch through the runner, its progress on the bar.

    A failure (other than a CliError, which ends the run) marks the batch's images failed, and the run goes on
    with the next batch; the bar counts the batch's whole cost either way.
    """
    from .results import append_result

    items = [item for item, _, _ in batch]
    reported = 0

    def progress(units: int) -> None:
        nonlocal reported
        reported += units
        console.progress.advance(units)

    begin = time.perf_counter()
    try:
        records = runner.run_batch(items, [image for _, image, _ in batch], progress)
    except CliError:
        raise
    except Exception as exc:
        error = f"{type(exc).__name__}: {exc}"
        console.warn(f"failed on {', '.join(i.path for i in items)}: {error}")
        totals.failed += len(items)
        records = [{"path": i.path, "status": "error", "error": error} for i in items]
    console.progress.advance(len(items) * runner.plan.per_image - reported)
    elapsed = (time.perf_counter() - begin) / len(items)  # per image: its share of the batch's time
    for record, (item, _, identity) in zip(records, batch):
        replaced = set(record.pop("replaced", ()))  # said, not stored
        if record["status"] == "ok":  # what resuming checks: this file, its content, its outputs' key
            record.update(identity, key=item.key)
        else:
            record["file"] = identity["file"]
        record["seconds"] = elapsed
        append_result(output_dir, record)
        totals.records[identity["file"]] = record
        if record["status"] == "ok":
            _print_record(console, record, output_dir, replaced)


def _print_record(console: _Console, record: dict, output_dir: str, replaced: set[str]) -> None:
    """The image, its classes, its maps' warnings, and every file written (saying which replaced a file)."""
    console.say(f"image: {record['path']}")
    shown = set()
    for entry in record["maps"]:
        if entry["class"] not in shown:
            shown.add(entry["class"])
            console.say(
                f"explained class: {entry['class']} ({entry['class_name']}), "
                f"probability {entry['probability']:.4f}"
            )
    _print_warnings(console, record)
    for name in record["outputs"]:
        note = " (replaced the file of an earlier run)" if name in replaced else ""
        console.say(f"wrote: {os.path.join(output_dir, name)}{note}")


def _print_warnings(console: _Console, record: dict) -> None:
    """``<prog>: warning: <file>: <method>: <message>``, once per method and message (also with --quiet)."""
    several = len(record["classes"]) > 1
    said = set()
    for entry in record["maps"]:
        for message in entry.get("warnings", ()):
            if (entry["method"], message) in said:
                continue
            said.add((entry["method"], message))
            method = f"{entry['method']} (class {entry['class']})" if several else entry["method"]
            console.warn(f"warning: {record['path']}: {method}: {message}")


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line with ``argv`` (default: ``sys.argv[1:]``); return the exit status.

    Bad arguments raise ``SystemExit(2)`` from argparse, as on the command line.
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    console = _Console(parser.prog, args.quiet)
    try:
        with warnings.catch_warnings():
            # A warning that no method's call caught (the runner's own) is one line, not Python's format.
            warnings.showwarning = console.show_warning
            return _run(args, parser, console)
    except CliError as exc:
        print(f"{parser.prog}: error: {printable(str(exc))}", file=sys.stderr)
        return exc.code
    except Exception as exc:
        print(f"{parser.prog}: error: {type(exc).__name__}: {printable(str(exc))}", file=sys.stderr)
        return 1
