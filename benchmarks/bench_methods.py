#!/usr/bin/env python
"""Time and peak memory of every CAM method, each as a ratio to the model's own cost in the same run.

For torchvision ResNets (``weights=None``, seeded, eval mode, target layer ``layer4[-1]``) on the CPU:

* gradcam, gradcam++, xgradcam: vs one forward pass with a forward hook keeping the target layer's
  output, then ``torch.autograd.grad(score_sum, activation)`` ("fwd+grad"). Target ratio <= 1.2.
* eigencam: vs one ``no_grad`` forward pass at the same batch. No target: reported only.
* ablationcam: vs ONE ``no_grad`` forward pass at the same batch. Target ratio <= 3.
* scorecam: vs ``B * ceil(C / batch_size)`` ``no_grad`` forward passes of ``batch_size`` images
  (``C``: channels of the target layer): the forward passes ScoreCAM cannot avoid. Target <= 1.1.

The machine is shared and noisy, so every number is a median over repeats, and the repeats are
interleaved: each round runs every item of a configuration (baselines, our methods, the reference)
once, in a shuffled order, and the ratio is taken between medians of the same rounds.

Perturbation methods can take minutes (ScoreCAM on resnet50 at 224 px runs 2048 forward passes per
image). Their first (warm-up) call is stopped after ``--chunks`` batches of perturbed inputs, and if
the whole call is then estimated to take longer than ``--full-budget`` seconds, every timed call is
stopped the same way and the time of the whole call is extrapolated as

    (time until the first perturbed batch starts) + total_batches * (time per perturbed batch)

where the time per perturbed batch is measured between the starts of consecutive model calls (so it
includes building the masks or ablated copies, the forward pass and the scoring). Such rows are marked
``est.`` and the output says exactly what was measured. Full runs also report what the same
extrapolation would have given, which checks it.

Peak memory: the peak of the bytes held by tensors allocated during the call (the sum of the
allocator's allocation and free events in time order, from ``torch.profiler`` with
``profile_memory=True``), one profiled call per item after the timing (profiling slows a call down, so
it is never timed). RSS is not used: it is far too noisy on a shared machine.

The reference grad-cam library (``--reference-path``, default ``.refcam`` at the root of the clone, where
``.ci/run`` installs it) has the same import
name, so it runs in a worker subprocess (``PYTHONPATH=<path>``) on the same state dicts and inputs,
saved to a temporary directory; the worker is driven item by item, inside the same rounds.

Usage (see benchmarks/README.md)::

    python benchmarks/bench_methods.py                 # the default configuration, writes results.md
    python benchmarks/bench_methods.py --quick         # resnet18, batch 1, fewer repeats
    python benchmarks/bench_methods.py --models resnet50 --batch-sizes 8 --methods scorecam --chunks 2
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import platform
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

import torch
import torchvision

#: Where ``.ci/run`` installs the reference grad-cam 1.5.7: ``.refcam`` at the root of this clone.
DEFAULT_REFERENCE_PATH = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), ".refcam")

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)

GRADIENT_METHODS = ("gradcam", "gradcam++", "xgradcam")
PERTURBATION_METHODS = ("scorecam", "ablationcam")
ALL_METHODS = (*GRADIENT_METHODS, "eigencam", *PERTURBATION_METHODS)
TARGET_RATIO: dict[str, float | None] = {
    "gradcam": 1.2,
    "gradcam++": 1.2,
    "xgradcam": 1.2,
    "eigencam": None,
    "ablationcam": 3.0,
    "scorecam": 1.1,
}
BASELINE_OF = {m: "fwd+grad" for m in GRADIENT_METHODS}
BASELINE_OF.update({"eigencam": "fwd(B)", "ablationcam": "fwd(B)", "scorecam": "fwd(bs) x chunks"})
MIB = 2.0**20
# The clock of every timing: the process's CPU time by default (see --clock), or wall time.
CLOCK = [time.process_time]
WORKER_TAG = "@@BENCH "


class _Stop(Exception):
    """Raised from a forward pre-hook to stop a perturbation call after a number of batches.

    Not a RuntimeError on purpose: the engine catches RuntimeError around its first replayed batch."""


# -- models, inputs, layers ---------------------------------------------------------------------------
def build_model(name: str, seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    return getattr(torchvision.models, name)(weights=None).eval()


def resolve_layer(model: torch.nn.Module, spec: str) -> torch.nn.Module:
    """``"layer4[-1]"`` -> ``model.layer4[-1]``; dotted names and ``[i]`` indices, nothing else."""
    module = model
    for part in spec.replace("]", "").replace("[", ".").split("."):
        if part:
            module = module[int(part)] if part.lstrip("-").isdigit() else getattr(module, part)
    return module


def make_input(batch: int, size: int, seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed * 1000 + batch * 10 + size)
    return torch.randn(batch, 3, size, size, generator=generator)


def _children(module: torch.nn.Module) -> dict:
    """The dict in which torch keeps ``module``'s children: torch has no public way to put a module's
    children back in place (the reference swaps the target layer during a call)."""
    return module._modules  # noqa: SLF001 - see the docstring


# -- measuring one call -------------------------------------------------------------------------------
def peak_allocated_bytes(fn) -> tuple:
    """(peak bytes held by tensors allocated while ``fn`` runs, fn's return value), via torch.profiler."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        result = fn()
    events = [e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"]
    events.sort(key=lambda e: e.start_ns())
    current = peak = 0
    for event in events:
        current += event.nbytes()
        peak = max(peak, current)
    return peak, result


def run_counted(model: torch.nn.Module, fn, chunk_rows=(), stop_after_chunks: int | None = None) -> dict:
    """Run ``fn`` with the start time and batch size of every call of ``model`` recorded.

    A call after the first one whose batch has ``chunk_rows`` rows is a batch of perturbed inputs (the
    capturing pass, a check pass or the reference's extra pass have other sizes). With
    ``stop_after_chunks=N``, ``_Stop`` is raised at the start of perturbed batch N + 1."""
    stamps: list[tuple] = []
    chunk_calls: list[int] = []

    def pre_hook(module, inputs):
        batch = inputs[0].shape[0] if inputs and isinstance(inputs[0], torch.Tensor) else -1
        stamps.append((CLOCK[0](), batch))
        if len(stamps) > 1 and batch in chunk_rows:
            chunk_calls.append(len(stamps) - 1)
            if stop_after_chunks is not None and len(chunk_calls) > stop_after_chunks:
                raise _Stop()

    handle = model.register_forward_pre_hook(pre_hook)
    stopped = False
    start = CLOCK[0]()
    try:
        fn()
    except _Stop:
        stopped = True
    finally:
        handle.remove()
    end = CLOCK[0]()
    return {"start": start, "end": end, "stamps": stamps, "stopped": stopped, "chunk_calls": chunk_calls}


def summarize_perturbation(run: dict, chunks: int, total_chunks: int) -> dict:
    """Seconds of the call (measured, or extrapolated when stopped) and what was measured."""
    stamps = [t for t, _ in run["stamps"]]
    first = run["chunk_calls"][: chunks + 1]  # indices of the calls starting perturbed batches 1..N+1
    out = {
        "calls": len(stamps),
        "chunk_calls": len(run["chunk_calls"]),
        "preamble_calls": first[0] if first else None,
        "batches_seen": [b for _, b in run["stamps"][: (first[-1] + 1) if first else None]],
    }
    if len(first) > chunks:  # enough batches to extrapolate from the first `chunks` of them
        preamble_s = stamps[first[0]] - run["start"]
        period = (stamps[first[chunks]] - stamps[first[0]]) / chunks
        out.update(preamble_s=preamble_s, period_s=period, estimate_s=preamble_s + total_chunks * period)
    if run["stopped"]:
        out.update(seconds=out["estimate_s"], estimated=True)
    else:
        out.update(seconds=run["end"] - run["start"], estimated=False)
    return out


class Runner:
    """Runs measurement requests in this process, for ``impl`` "ours" or "reference"."""

    def __init__(self, impl: str, workdir: str, seed: int) -> None:
        self.impl = impl
        self.workdir = workdir
        self.seed = seed
        self.models: dict[str, torch.nn.Module] = {}
        self.inputs: dict[tuple, torch.Tensor] = {}
        import pytorch_grad_cam  # ours or the reference, whichever sys.path gives

        self.package_file = pytorch_grad_cam.__file__
        from pytorch_grad_cam import AblationCAM, EigenCAM, GradCAM, GradCAMPlusPlus, ScoreCAM, XGradCAM
        from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

        self.classes = {
            "gradcam": GradCAM,
            "gradcam++": GradCAMPlusPlus,
            "xgradcam": XGradCAM,
            "eigencam": EigenCAM,
            "scorecam": ScoreCAM,
            "ablationcam": AblationCAM,
        }
        self.target_cls = ClassifierOutputTarget

    def model(self, name: str) -> torch.nn.Module:
        if name not in self.models:
            model = getattr(torchvision.models, name)(weights=None)
            model.load_state_dict(torch.load(os.path.join(self.workdir, f"{name}.pt")))
            self.models[name] = model.eval()
        return self.models[name]

    def input(self, batch: int, size: int) -> torch.Tensor:
        key = (batch, size)
        if key not in self.inputs:
            self.inputs[key] = torch.load(os.path.join(self.workdir, f"x_{batch}_{size}.pt"))
        return self.inputs[key]

    def handle(self, req: dict) -> dict:
        model = self.model(req["model"])
        layer = resolve_layer(model, req["layer"])
        x = self.input(req["batch"], req["size"])
        kind = req["kind"]
        perturbation = kind == "cam" and req["method"] in PERTURBATION_METHODS
        if kind == "cam":
            fn, bs = self._cam_call(req, model, layer, x)
        else:
            fn, bs = _baseline_call(kind, req, model, layer, x), None
        chunk_rows: tuple = ()
        if perturbation:
            # Every batch of perturbed inputs but an image's last has min(bs, C) rows (+1 when an
            # engine appends the unperturbed input to its first batch).
            rows = min(bs, req["channels"])
            if req["batch"] in (rows, rows + 1):
                raise ValueError(
                    f"batch {req['batch']} cannot be told from a perturbed batch of {rows} "
                    "rows: choose another --batch-sizes or perturbation batch size"
                )
            chunk_rows = (rows, rows + 1)
        total_chunks = req["batch"] * math.ceil(req["channels"] / bs) if perturbation else None
        stop = req["chunks"] if perturbation and req.get("chunks_only") else None

        # A stopped call may leave a model modified (the reference swaps the target layer for its
        # AblationLayer during the call): the module tree is put back afterwards.
        tree = [(module, dict(_children(module))) for module in model.modules()]

        def go():
            try:
                return run_counted(model, fn, chunk_rows, stop)
            finally:
                for module, children in tree:
                    now = _children(module)
                    if now != children:
                        now.clear()
                        now.update(children)

        if req.get("profile"):
            peak, run = peak_allocated_bytes(go)
        else:
            peak, run = None, go()
        result = {"peak_bytes": peak}
        if perturbation:
            result.update(
                summarize_perturbation(run, req["chunks"], total_chunks), bs=bs, total_chunks=total_chunks
            )
        else:
            result.update(seconds=run["end"] - run["start"], estimated=False, calls=len(run["stamps"]))
        return result

    def _cam_call(self, req: dict, model, layer, x):
        method = req["method"]
        cam = self.classes[method](model, target_layers=[layer])
        if method in PERTURBATION_METHODS and req.get("bs"):
            cam.batch_size = req["bs"]
        # The batch size in use: set above, or the library's default (the reference's ScoreCAM uses 16
        # when it has no batch_size attribute).
        bs = getattr(cam, "batch_size", 16) if method in PERTURBATION_METHODS else None
        targets = [self.target_cls(int(k)) for k in req["targets"]]

        def call():
            try:
                cam(input_tensor=x, targets=targets)
            finally:
                # The reference keeps its hooks on the model until released.
                release = getattr(getattr(cam, "activations_and_grads", None), "release", None)
                if release is not None:
                    release()

        return call, bs


def _baseline_call(kind: str, req: dict, model, layer, x):
    if kind == "forward":  # one no_grad forward pass of `rows` images (the first image repeated)
        rows = req.get("rows", x.shape[0])
        data = x if rows == x.shape[0] else x[:1].expand(rows, *x.shape[1:]).contiguous()

        def forward():
            with torch.no_grad():
                model(data)

        return forward

    targets = torch.tensor(req["targets"])[:, None]
    strict = kind == "forward_grad_strict"

    def forward_grad():
        kept = {}

        def keep(module, inputs, output):
            if strict:  # record the graph only from the layer on (what a CAM engine can do)
                torch.set_grad_enabled(True)
                output = output.detach().requires_grad_(True)
            kept["a"] = output
            return output

        handle = layer.register_forward_hook(keep)
        try:
            with torch.no_grad() if strict else torch.enable_grad():
                out = model(x)
                score = out.gather(1, targets).sum()
            torch.autograd.grad(score, kept["a"])
        finally:
            handle.remove()

    return forward_grad


# -- the reference worker -----------------------------------------------------------------------------
def worker_main(workdir: str, seed: int, reference_path: str) -> None:
    out = sys.stdout
    sys.stdout = sys.stderr  # anything the library prints must not mix with the replies
    try:
        runner = Runner("reference", workdir, seed)
        ok = os.path.abspath(runner.package_file).startswith(os.path.abspath(reference_path))
        hello = {"ok": ok, "file": runner.package_file}
    except Exception as error:  # reported to the main process
        runner, hello = None, {"ok": False, "file": f"import failed: {error!r}"}
    out.write(WORKER_TAG + json.dumps(hello) + "\n")
    out.flush()
    if not hello["ok"]:
        return
    for line in sys.stdin:
        req = json.loads(line)
        try:
            reply = runner.handle(req)
        except Exception as error:  # reported to the main process
            reply = {"error": repr(error)}
        out.write(WORKER_TAG + json.dumps(reply) + "\n")
        out.flush()


class ReferenceWorker:
    def __init__(self, path: str, workdir: str, seed: int, threads: int, clock: str) -> None:
        env = dict(os.environ, PYTHONPATH=path, OMP_NUM_THREADS=str(threads))
        self.log = open(os.path.join(workdir, "reference_worker.log"), "w")  # noqa: SIM115
        self.proc = subprocess.Popen(
            [
                sys.executable,
                os.path.abspath(__file__),
                "--_worker",
                workdir,
                "--seed",
                str(seed),
                "--reference-path",
                path,
                "--threads",
                str(threads),
                "--clock",
                clock,
            ],
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self.log,
            text=True,
            cwd=workdir,
        )
        self.hello = self._read()

    def _read(self) -> dict:
        for line in self.proc.stdout:
            if line.startswith(WORKER_TAG):
                return json.loads(line[len(WORKER_TAG) :])
        raise RuntimeError(f"the reference worker exited (log: {self.log.name})")

    def handle(self, req: dict) -> dict:
        self.proc.stdin.write(json.dumps(req) + "\n")
        self.proc.stdin.flush()
        reply = self._read()
        if "error" in reply:
            raise RuntimeError(f"reference worker: {reply['error']}")
        return reply

    def close(self) -> None:
        if self.proc.stdin:
            self.proc.stdin.close()
        self.proc.wait(timeout=60)
        self.log.close()


# -- the benchmark ------------------------------------------------------------------------------------
class Item:
    """One thing timed in a round: a baseline, one of our methods, or the reference's."""

    def __init__(self, key: str, executor: str, req: dict, repeats: int) -> None:
        self.key, self.executor, self.req, self.repeats = key, executor, req, repeats
        self.times: list[float] = []
        self.details: list[dict] = []
        self.peak: int | None = None
        self.skip_reason: str | None = None


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


class Bench:
    def __init__(self, args) -> None:
        self.args = args
        self.rng = random.Random(args.seed)
        self.workdir = tempfile.mkdtemp(prefix="bench_cam_")
        self.notes: list[str] = []
        self.rows: list[dict] = []
        self.mem_rows: list[dict] = []
        self.demo_rows: list[dict] = []
        self.channels: dict[tuple, int] = {}
        self.targets: dict[tuple, list[int]] = {}
        sys.path.insert(0, REPO)  # benchmark this checkout
        self.code_version = _engine_version()
        self.ours = Runner("ours", self.workdir, args.seed)
        self.models = {name: build_model(name, args.seed) for name in set(args.models) | {args.demo_model}}
        for name, model in self.models.items():
            torch.save(model.state_dict(), os.path.join(self.workdir, f"{name}.pt"))
        self.reference = None
        if args.reference_path and not args.no_reference:
            if os.path.isdir(args.reference_path):
                worker = ReferenceWorker(
                    args.reference_path, self.workdir, args.seed, torch.get_num_threads(), args.clock
                )
                if worker.hello["ok"]:
                    self.reference = worker
                    self.notes.append(f"Reference: {worker.hello['file']} (worker subprocess).")
                else:
                    worker.close()
                    self.notes.append(f"Reference not used: the worker imported {worker.hello['file']}.")
            else:
                self.notes.append(f"Reference not used: {args.reference_path} does not exist.")

    # -- helpers
    def prepare(self, model_name: str, layer: str, batch: int, size: int) -> None:
        path = os.path.join(self.workdir, f"x_{batch}_{size}.pt")
        if not os.path.exists(path):
            torch.save(make_input(batch, size, self.args.seed), path)
        key = (model_name, layer, batch, size)
        if key not in self.targets:
            model = self.models[model_name]
            x = torch.load(path)
            shapes = {}
            handle = resolve_layer(model, layer).register_forward_hook(
                lambda m, i, o: shapes.__setitem__("c", o.shape[1])
            )
            with torch.no_grad():
                out = model(x)
            handle.remove()
            self.targets[key] = out.argmax(1).tolist()
            self.channels[(model_name, layer, size)] = shapes["c"]

    def execute(self, item: Item, **extra) -> dict:
        req = dict(item.req, **extra)
        if item.executor == "reference":
            return self.reference.handle(req)
        return self.ours.handle(req)

    def run_rounds(self, items: list[Item]) -> None:
        """Warm every item up once, then interleave the timed calls in shuffled rounds."""
        self.warm_up(items)
        self.timed_rounds(items)
        if not self.args.no_memory:
            for item in items:
                if not item.skip_reason:
                    item.peak = self.execute(item, profile=True)["peak_bytes"]

    def warm_up(self, items: list[Item]) -> None:
        """One untimed call of each item; an item the reference fails on is skipped."""
        for item in items:
            if item.skip_reason:
                continue
            try:
                warm = self.execute(item, chunks_only=True)
            except Exception as error:  # the reference may fail where ours works
                if item.executor != "reference":
                    raise
                item.skip_reason = f"the reference failed: {error}"
                continue
            if item.req["kind"] == "cam" and item.req["method"] in PERTURBATION_METHODS:
                # Full calls when the whole call is cheap enough, else stopped after `chunks` batches.
                item.req["chunks_only"] = warm["seconds"] > self.args.full_budget

    def timed_rounds(self, items: list[Item]) -> None:
        for round_index in range(max(item.repeats for item in items)):
            todo = [item for item in items if not item.skip_reason and round_index < item.repeats]
            self.rng.shuffle(todo)
            for item in todo:
                result = self.execute(item)
                item.times.append(result["seconds"])
                item.details.append(result)
            loads = os.getloadavg()[0]
            print(f"    round {round_index + 1}: load {loads:.2f}, {time.strftime('%H:%M:%S')}", flush=True)

    # -- one configuration
    def config(self, model_name: str, batch: int) -> None:
        args, size, layer = self.args, self.args.size, self.args.layer
        self.prepare(model_name, layer, batch, size)
        channels = self.channels[(model_name, layer, size)]
        targets = self.targets[(model_name, layer, batch, size)]
        base = {"model": model_name, "layer": layer, "batch": batch, "size": size, "targets": targets}
        bs = args.scorecam_batch_size
        total_chunks = batch * math.ceil(channels / bs)  # ScoreCAM's forward passes of bs images
        print(f"== {model_name} batch {batch} ({size}x{size}, {layer}, C={channels})", flush=True)

        for methods in self.method_groups():
            items = self.config_items(methods, base, channels)
            self.run_rounds(list(items.values()))
            for method in methods:
                self.collect(model_name, batch, channels, bs, total_chunks, method, items)

    def method_groups(self) -> list[list[str]]:
        """The methods timed together: ScoreCAM, the slowest, in a group of its own."""
        args = self.args
        fast = [m for m in args.methods if m not in PERTURBATION_METHODS]
        slow = [m for m in args.methods if m in PERTURBATION_METHODS]
        groups = []
        if fast or "ablationcam" in slow:
            groups.append([m for m in args.methods if m != "scorecam"])
        if "scorecam" in slow:
            groups.append(["scorecam"])
        return groups

    def config_items(self, methods: list[str], base: dict, channels: int) -> dict[str, Item]:
        """The baselines that ``methods`` are compared with, each method and its reference twin."""
        args = self.args
        bs = args.scorecam_batch_size
        items: dict[str, Item] = {}
        needs_grad = any(m in GRADIENT_METHODS for m in methods)
        fast_reps = args.repeats
        slow_reps = min(args.repeats, args.slow_repeats)
        if needs_grad:
            items["fwd+grad"] = Item("fwd+grad", "ours", dict(base, kind="forward_grad"), fast_reps)
            items["fwd+grad strict"] = Item(
                "fwd+grad strict", "ours", dict(base, kind="forward_grad_strict"), fast_reps
            )
        if any(m in ("eigencam", "ablationcam") for m in methods):
            reps = fast_reps if "eigencam" in methods else slow_reps
            items["fwd(B)"] = Item("fwd(B)", "ours", dict(base, kind="forward"), reps)
        if "scorecam" in methods:
            items["fwd(bs)"] = Item("fwd(bs)", "ours", dict(base, kind="forward", rows=bs), slow_reps)
        for method in methods:
            reps = slow_reps if method in PERTURBATION_METHODS else fast_reps
            method_bs = bs if method == "scorecam" else args.ablation_batch_size
            req = dict(base, kind="cam", method=method, bs=method_bs, chunks=args.chunks, channels=channels)
            items[method] = Item(method, "ours", req, reps)
            items[method + " ref"] = self.reference_item(method, req, reps)
        return items

    def reference_item(self, method: str, req: dict, reps: int) -> Item:
        args = self.args
        ref = Item(method + " ref", "reference", dict(req), reps)
        if self.reference is None:
            ref.skip_reason = "no reference"
        elif method == "scorecam":
            # The reference materialises every masked input (and upsampled mask) at once.
            need = req["batch"] * req["channels"] * 4 * req["size"] * req["size"] * 4
            if need > args.reference_max_gb * 2**30:
                ref.skip_reason = (
                    f"skipped: the reference materialises B*C masked inputs at once "
                    f"(~{need / 2**30:.1f} GB > --reference-max-gb "
                    f"{args.reference_max_gb:g})"
                )
        return ref

    def collect(self, model_name, batch, channels, bs, total_chunks, method, items) -> None:
        ours, ref = items[method], items[method + " ref"]
        notes = []
        if method in GRADIENT_METHODS:
            base = items["fwd+grad"]
            base_times = base.times
            strict = items["fwd+grad strict"]
            strict_ms = median(strict.times) * 1e3
            notes.append(
                f"vs the strict baseline (no graph before the layer, {strict_ms:.1f} ms): "
                f"{median(ours.times) / median(strict.times):.2f}x"
            )
        elif method == "scorecam":
            base = items["fwd(bs)"]
            base_times = [t * total_chunks for t in base.times]
            notes.append(
                f"baseline = {total_chunks} x a no_grad forward of {bs} images "
                f"({median(base.times) * 1e3:.1f} ms each; {total_chunks} = B*ceil(C/bs) = "
                f"{batch}*ceil({channels}/{bs}))"
            )
        else:
            base = items["fwd(B)"]
            base_times = base.times
        ours_s, base_s = median(ours.times), median(base_times)
        if method in PERTURBATION_METHODS:
            notes.extend(self.perturbation_notes("ours", ours, base if method == "scorecam" else None))
            if not ref.skip_reason:
                notes.extend(self.perturbation_notes("reference", ref, None))
        ref_s = median(ref.times) if ref.times else None
        target = TARGET_RATIO[method]
        ratio = ours_s / base_s
        self.rows.append(
            {
                "method": method,
                "model": model_name,
                "batch": batch,
                "ours_ms": ours_s * 1e3,
                "ours_est": any(d.get("estimated") for d in ours.details),
                "baseline_ms": base_s * 1e3,
                "baseline": BASELINE_OF[method],
                "ratio": ratio,
                "target": target,
                "ok": None if target is None else ratio <= target,
                "ref_ms": None if ref_s is None else ref_s * 1e3,
                "ref_est": any(d.get("estimated") for d in ref.details),
                "ref_skip": ref.skip_reason,
                "speedup": None if ref_s is None else ref_s / ours_s,
                "repeats": len(ours.times),
                "spread": _spread(ours.times, base_times),
                "notes": notes,
            }
        )
        if ours.peak is not None:
            self.mem_rows.append(
                {
                    "method": method,
                    "model": model_name,
                    "batch": batch,
                    "ours": ours.peak,
                    "baseline": base.peak,
                    "baseline_name": "fwd(bs)" if method == "scorecam" else base.key,
                    "ref": ref.peak,
                    "ref_skip": ref.skip_reason,
                    "est": ours.req.get("chunks_only"),
                }
            )

    def perturbation_notes(self, who: str, item: Item, fwd_bs: Item | None) -> list[str]:
        d = [x for x in item.details if "period_s" in x]
        if not item.details:
            return []
        first = item.details[0]
        chunks, total, bs = item.req["chunks"], first["total_chunks"], first["bs"]
        batches = "batch 1" if chunks == 1 else f"batches 1-{chunks}"
        head = (
            f"{who} (batch_size {bs}): {first['preamble_calls']} model call(s) before the first "
            f"perturbed batch"
        )
        if item.req.get("chunks_only"):
            text = (
                f"{head}; estimated = time until the first perturbed batch "
                f"({median([x['preamble_s'] for x in d]) * 1e3:.0f} ms) + {total} batches x "
                f"{median([x['period_s'] for x in d]) * 1e3:.1f} ms per batch, the period measured over "
                f"{batches} of the call (calls stopped there)"
            )
        else:
            text = (
                f"{head}; full calls ({first['chunk_calls']} perturbed batches, expected "
                f"B*ceil(C/bs) = {total}; {first['calls']} model calls in all)"
            )
            if d:
                est = median([x["estimate_s"] for x in d])
                text += (
                    f"; the extrapolation from {batches} would give {est * 1e3:.0f} ms "
                    f"vs {median(item.times) * 1e3:.0f} ms measured"
                )
        if fwd_bs is not None and d:
            text += (
                f"; per batch {median([x['period_s'] for x in d]) / median(fwd_bs.times):.3f}x a plain "
                f"forward of {bs} images"
            )
        return [text]

    # -- ScoreCAM peak memory vs the number of channels
    def memory_demo(self) -> None:
        args = self.args
        model_name, size = args.demo_model, args.demo_size
        print(f"== ScoreCAM peak memory vs C ({model_name}, {size}x{size}, batch 1)", flush=True)
        cases = [(layer, args.scorecam_batch_size) for layer in args.demo_layers]
        cases += [
            (args.demo_layers[-1], bs) for bs in args.demo_batch_sizes if bs != args.scorecam_batch_size
        ]
        for layer, bs in cases:
            self.prepare(model_name, layer, 1, size)
            channels = self.channels[(model_name, layer, size)]
            req = {
                "model": model_name,
                "layer": layer,
                "batch": 1,
                "size": size,
                "targets": self.targets[(model_name, layer, 1, size)],
                "kind": "cam",
                "method": "scorecam",
                "bs": bs,
                "chunks": 1,
                "channels": channels,
                "profile": True,
            }
            ours = self.ours.handle(req)
            fwd = self.ours.handle(dict(req, kind="forward", rows=bs))
            ref = None
            if self.reference is not None and bs == args.scorecam_batch_size:
                ref = self.reference.handle(req)
            self.demo_rows.append(
                {
                    "layer": layer,
                    "C": channels,
                    "bs": bs,
                    "ours": ours["peak_bytes"],
                    "ours_calls": ours["calls"],
                    "fwd": fwd["peak_bytes"],
                    "ref": None if ref is None else ref["peak_bytes"],
                }
            )
            print(f"    {layer} C={channels} bs={bs}: ours {ours['peak_bytes'] / MIB:.1f} MiB", flush=True)

    def close(self) -> None:
        if self.reference is not None:
            self.reference.close()
        shutil.rmtree(self.workdir, ignore_errors=True)


def _spread(ours: list[float], base: list[float]) -> str:
    pairs = [o / b for o, b in zip(ours, base)]
    return f"{min(pairs):.2f}-{max(pairs):.2f}" if pairs else ""


# -- output -------------------------------------------------------------------------------------------
def fmt_ms(value: float | None, est: bool = False) -> str:
    if value is None:
        return "-"
    text = f"{value:,.0f}" if value >= 100 else f"{value:.1f}"
    return text + (" (est.)" if est else "")


def render(bench: Bench, argv: list[str], started: float, loads: tuple) -> str:
    args = bench.args
    lines = ["# CAM method benchmark", ""]
    lines.append(
        f"`python benchmarks/bench_methods.py {' '.join(argv)}` on "
        f"{datetime.datetime.now().strftime('%Y-%m-%d %H:%M')}, {time.time() - started:.0f} s wall."
    )
    lines.append("")
    cpu = _cpu_name()
    code = f"- Code: {bench.code_version}, loaded at the start"
    now = _engine_version()
    if now != bench.code_version:
        code += f" (pytorch_grad_cam/ changed on disk during the run; now {now}: not measured here)"
    lines.append(code + ".")
    lines.append(
        f"- Machine: {cpu}, {os.cpu_count()} CPUs, torch {torch.__version__} with "
        f"{torch.get_num_threads()} threads, torchvision {torchvision.__version__}, Python "
        f"{platform.python_version()}. Shared with other jobs: load average {loads[0]:.2f} at the "
        f"start, {os.getloadavg()[0]:.2f} at the end."
    )
    lines.append(
        f"- Models: torchvision {', '.join(args.models)} (`weights=None`, seed {args.seed}, eval), "
        f"target layer `{args.layer}`, random {args.size}x{args.size} inputs, each image's top "
        f"class as target. ScoreCAM runs with `batch_size={args.scorecam_batch_size}` (ours and "
        f"the reference); AblationCAM with "
        + (
            f"`batch_size={args.ablation_batch_size}`"
            if args.ablation_batch_size
            else "each library's default `batch_size` (see the notes)"
        )
        + "."
    )
    lines.append(
        f"- Times (ms): median of {args.repeats} calls ({min(args.repeats, args.slow_repeats)} for "
        "ScoreCAM/AblationCAM, and for the forward pass they are compared with), after one warm-up, "
        "in interleaved shuffled rounds; ratio = median(ours) / median(baseline) of the same "
        "rounds. Constructing the CAM object is not timed."
    )
    clock = (
        "CPU time of the process (`time.process_time`: the work done, not the time spent waiting "
        "for a core on this shared machine)"
        if args.clock == "cpu"
        else "wall time (`time.perf_counter`)"
    )
    lines.append(f"- Clock: {clock}, with {torch.get_num_threads()} torch thread(s) in both processes.")
    lines.append(
        "- Baselines: `fwd+grad` = a forward pass (autograd on, as a plain model call) with a "
        "forward hook keeping the target layer's output, then `torch.autograd.grad(score_sum, "
        "activation)`; `fwd(B)` = one `no_grad` forward of the batch; `fwd(bs) x chunks` = "
        "`B*ceil(C/bs)` `no_grad` forward passes of `bs` images (C = channels of the target layer)."
    )
    lines.append(
        "- `(est.)`: the call was stopped after a few batches of perturbed inputs and its time "
        "extrapolated (see the notes below the table for exactly what was measured)."
    )
    lines.append(f"- {' '.join(bench.notes)}")
    lines.append("")
    lines.append("## Time")
    lines.append("")
    lines.append(
        "| method | model | batch | ours ms | baseline ms | ratio | target | ok? | reference ms | speed-up |"
    )
    lines.append("|---|---|---|---:|---:|---:|---:|---|---:|---:|")
    for r in bench.rows:
        target = "-" if r["target"] is None else f"<= {r['target']:g}"
        ok = "-" if r["ok"] is None else ("yes" if r["ok"] else "**NO**")
        ref = (
            fmt_ms(r["ref_ms"], r["ref_est"])
            if not r["ref_skip"]
            else ("-" if r["ref_skip"] == "no reference" else "skipped")
        )
        speed = "-" if r["speedup"] is None else f"{r['speedup']:.1f}x"
        ours = fmt_ms(r["ours_ms"], r["ours_est"])
        lines.append(
            f"| {r['method']} | {r['model']} | {r['batch']} | {ours} | "
            f"{fmt_ms(r['baseline_ms'])} ({r['baseline']}) | {r['ratio']:.2f} | {target} | {ok} | "
            f"{ref} | {speed} |"
        )
    lines.append("")
    lines.append("Notes per row (ratio range = min-max of the per-round ratios):")
    lines.append("")
    for r in bench.rows:
        extra = "; ".join(
            r["notes"] + ([r["ref_skip"]] if r["ref_skip"] and r["ref_skip"] != "no reference" else [])
        )
        lines.append(
            f"- {r['method']} {r['model']} b{r['batch']}: {r['repeats']} repeats, per-round ratio "
            f"{r['spread']}" + (f"; {extra}" if extra else "") + "."
        )
    if bench.mem_rows:
        lines.append("")
        lines.append("## Peak memory")
        lines.append("")
        lines.append(
            "Peak bytes held by tensors allocated during one call (torch.profiler `profile_memory`"
            ": allocation and free events summed in time order; model weights and the input, which "
            "exist before the call, are not counted). Calls marked (est.) were stopped after the "
            "first batches of perturbed inputs, which are all alike, so their peak is the call's."
        )
        lines.append("")
        lines.append("| method | model | batch | ours MiB | baseline MiB | ratio | reference MiB |")
        lines.append("|---|---|---|---:|---:|---:|---:|")
        for r in bench.mem_rows:
            ref = "-" if r["ref"] is None else f"{r['ref'] / MIB:.1f}"
            if r["ref_skip"] and r["ref_skip"] != "no reference":
                ref = "skipped"
            est = " (est.)" if r["est"] else ""
            lines.append(
                f"| {r['method']} | {r['model']} | {r['batch']} | {r['ours'] / MIB:.1f}{est} | "
                f"{r['baseline'] / MIB:.1f} ({r['baseline_name']}) | "
                f"{r['ours'] / r['baseline']:.2f} | {ref} |"
            )
    if bench.demo_rows:
        lines.append("")
        lines.append(
            f"## ScoreCAM peak memory vs the number of channels C ({args.demo_model}, "
            f"{args.demo_size}x{args.demo_size}, one image, full calls)"
        )
        lines.append("")
        lines.append(
            "Same measurement as above. `fwd(bs)` is a `no_grad` forward of `bs` images: the least "
            "a batch of `bs` masked inputs costs."
        )
        lines.append("")
        lines.append("| target layer | C | bs | ours MiB | fwd(bs) MiB | ours / fwd(bs) | reference MiB |")
        lines.append("|---|---:|---:|---:|---:|---:|---:|")
        for r in bench.demo_rows:
            ref = "-" if r["ref"] is None else f"{r['ref'] / MIB:.1f}"
            lines.append(
                f"| `{r['layer']}` | {r['C']} | {r['bs']} | {r['ours'] / MIB:.1f} | "
                f"{r['fwd'] / MIB:.1f} | {r['ours'] / r['fwd']:.2f} | {ref} |"
            )
    lines.append("")
    return "\n".join(lines)


def _engine_version() -> str:
    """The checkout's commit, and whether the package's files differ from it."""

    def git(*args: str) -> str:
        return subprocess.run(
            ["git", "-C", REPO, *args], capture_output=True, text=True, check=True
        ).stdout.strip()

    try:
        # The last commit that touched the package, and whether its files differ from it now.
        head = git("log", "-1", "--format=%h", "--", "pytorch_grad_cam")
        dirty = git("status", "--porcelain", "--", "pytorch_grad_cam")
    except (OSError, subprocess.CalledProcessError):
        return "not a git checkout"
    return f"pytorch_grad_cam/ as of commit {head}" + (" plus uncommitted changes" if dirty else "")


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def parse_args(argv: list[str]):
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--models", nargs="+", default=["resnet18", "resnet50"])
    p.add_argument("--batch-sizes", nargs="+", type=int, default=[1, 8])
    p.add_argument("--methods", nargs="+", default=list(ALL_METHODS), choices=ALL_METHODS)
    p.add_argument("--size", type=int, default=224, help="input height and width (default 224)")
    p.add_argument("--layer", default="layer4[-1]", help="target layer (default layer4[-1])")
    p.add_argument("--repeats", type=int, default=5, help="timed calls per item (default 5)")
    p.add_argument(
        "--slow-repeats",
        type=int,
        default=3,
        help="timed calls for ScoreCAM/AblationCAM and their baselines (default 3)",
    )
    p.add_argument(
        "--scorecam-batch-size",
        type=int,
        default=32,
        help="cam.batch_size of ScoreCAM, ours and the reference (default 32)",
    )
    p.add_argument(
        "--ablation-batch-size",
        type=int,
        default=None,
        help="cam.batch_size of AblationCAM (default: each library's own default)",
    )
    p.add_argument(
        "--chunks",
        type=int,
        default=2,
        help="batches of perturbed inputs a stopped call measures (default 2)",
    )
    p.add_argument(
        "--full-budget",
        type=float,
        default=15.0,
        help="run perturbation calls in full when the warm-up estimates them at most this many "
        "seconds, else stop them after --chunks batches (default 15)",
    )
    p.add_argument(
        "--reference-path",
        default=os.environ.get("CAM_REFERENCE_PATH", DEFAULT_REFERENCE_PATH),
        help="directory holding the reference pytorch_grad_cam (default: .refcam at the root of the clone)",
    )
    p.add_argument("--no-reference", action="store_true")
    p.add_argument(
        "--reference-max-gb",
        type=float,
        default=2.0,
        help="skip the reference ScoreCAM when its all-at-once masks would exceed this many GB (default 2)",
    )
    p.add_argument("--no-memory", action="store_true", help="skip the profiled peak-memory calls")
    p.add_argument("--no-memory-demo", action="store_true", help="skip the ScoreCAM memory-vs-C table")
    p.add_argument("--demo-model", default="resnet50")
    p.add_argument("--demo-size", type=int, default=64)
    p.add_argument(
        "--demo-layers",
        nargs="+",
        default=["layer1[-1]", "layer4[-1]"],
        help="target layers of the memory-vs-C table (default: C=256 and C=2048 on resnet50)",
    )
    p.add_argument(
        "--demo-batch-sizes",
        nargs="+",
        type=int,
        default=[8],
        help="other batch_size values tried on the last demo layer (ours only; default 8)",
    )
    p.add_argument(
        "--quick",
        action="store_true",
        help="resnet18, batch 1, 3 repeats (2 for perturbation methods), 2 chunks, small demo",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--clock",
        choices=["cpu", "wall"],
        default="cpu",
        help="cpu (default): the process's CPU time (time.process_time), which on a shared "
        "machine counts the work done, not the waiting for a core; with --threads 1 it is "
        "the single thread's time. wall: time.perf_counter",
    )
    p.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads, here and in the reference worker (default 1: on a shared, "
        "oversubscribed machine several OpenMP threads wait on each other and single "
        "calls vary 5-10x; 0 keeps torch's default)",
    )
    p.add_argument(
        "--output",
        default=os.path.join(HERE, "results.md"),
        help="Markdown file to write (default benchmarks/results.md); '-' for none",
    )
    p.add_argument("--_worker", dest="worker", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.quick:
        args.models, args.batch_sizes, args.repeats, args.slow_repeats = ["resnet18"], [1], 3, 2
        args.chunks = 2
        args.demo_model, args.demo_batch_sizes = "resnet18", []
        args.demo_layers = ["layer3[-1]", "layer4[-1]"]
    if args.chunks < 1:
        p.error("--chunks must be >= 1")
    return args


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    CLOCK[0] = time.process_time if args.clock == "cpu" else time.perf_counter
    if args.worker:
        worker_main(args.worker, args.seed, args.reference_path)
        return 0
    started, loads = time.time(), os.getloadavg()
    bench = Bench(args)
    print(f"ours: {bench.ours.package_file}; {' '.join(bench.notes)}", flush=True)
    try:
        for model_name in args.models:
            for batch in args.batch_sizes:
                bench.config(model_name, batch)
        if not args.no_memory_demo and not args.no_memory and "scorecam" in args.methods:
            bench.memory_demo()
    finally:
        bench.close()
    text = render(bench, argv, started, loads)
    print()
    print(text)
    if args.output != "-":
        with open(args.output, "w") as f:
            f.write(text)
        print(f"written to {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
