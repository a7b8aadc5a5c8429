#!/usr/bin/env python
"""Relative cost of EVERY registered method (and guided backprop, DFF), measured in one run.

The detailed benchmark (bench_methods.py) compares the original methods with grad-cam 1.5.7; this one
fills the README method table's "relative cost" column for all of them, on one configuration:
torchvision resnet18 (``weights=None``, seeded, eval), a 224x224 input, batch 1, the CPU.

* Methods that run one forward pass and one gradient (and the gradient-free projections): the target
  layer is ``layer4[-1]`` (512 channels) and the ratio is to one forward pass plus
  ``torch.autograd.grad`` of the score with respect to that layer ("fwd+grad").
* Perturbation methods (``perturbation = True``) run C or more forward passes; they are measured on
  ``layer1[-1]`` (C = 64 channels), and the ratio is to one ``no_grad`` forward pass ("fwd").
  Their cost grows with C: multiply by 8 for layer4's 512 channels.

Every number is the median over ``--repeats`` interleaved rounds (each round runs every item once, in a
shuffled order), so the machine's load affects all items alike. Usage::

    python benchmarks/bench_all_methods.py                 # prints a markdown table
    python benchmarks/bench_all_methods.py --repeats 3 --methods gradcam,fullgrad
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import time

import torch
import torchvision


def build(seed: int = 0):
    torch.manual_seed(seed)
    model = torchvision.models.resnet18().eval()
    x = torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(seed))
    return model, x


def baselines(model, x):
    layer = model.layer4[-1]

    def forward():
        with torch.no_grad():
            model(x)

    def forward_grad():
        kept = []
        handle = layer.register_forward_hook(lambda m, i, o: kept.append(o))
        try:
            with torch.enable_grad():
                out = model(x)
                torch.autograd.grad(out[0, 1], kept[0])
        finally:
            handle.remove()

    return {"fwd": forward, "fwd+grad": forward_grad}


def method_calls(model, x, names):
    from pytorch_grad_cam import DeepFeatureFactorization, GuidedBackpropReLUModel
    from pytorch_grad_cam.registry import METHODS

    calls = {}
    for name in names:
        if name == "guidedbackprop":
            gb = GuidedBackpropReLUModel(model, device="cpu")
            calls[name] = ("fwd+grad", lambda gb=gb: gb(x, target_category=1))
            continue
        if name == "dff":
            dff = DeepFeatureFactorization(model, model.layer4[-1])
            calls[name] = ("fwd+grad", lambda dff=dff: dff(x, 4))
            continue
        cls = METHODS[name]
        layer = model.layer1[-1] if cls.perturbation else model.layer4[-1]
        kwargs = {"seed": 0} if not cls.deterministic else {}
        cam = cls(model, target_layers=[layer], **kwargs)
        calls[name] = ("fwd" if cls.perturbation else "fwd+grad", lambda cam=cam: cam(x, targets=[1]))
    return calls


def main(argv=None) -> int:
    from pytorch_grad_cam.registry import METHODS

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--methods", help="comma-separated names (default: all, guidedbackprop and dff)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    names = args.methods.split(",") if args.methods else [*METHODS, "guidedbackprop", "dff"]
    model, x = build()
    base = baselines(model, x)
    calls = method_calls(model, x, names)
    times = {key: [] for key in list(base) + list(calls)}
    items = [(k, f) for k, f in base.items()] + [(k, f) for k, (_, f) in calls.items()]
    for _, fn in items:  # warm-up
        fn()
    order = random.Random(0)
    for _ in range(args.repeats):
        order.shuffle(items)
        for key, fn in items:
            start = time.perf_counter()
            fn()
            times[key].append(time.perf_counter() - start)
    med = {k: statistics.median(v) for k, v in times.items()}
    print(
        f"resnet18, 224x224, batch 1, CPU, {args.threads} thread(s), median of {args.repeats} rounds; "
        f"fwd = {med['fwd'] * 1e3:.1f} ms, fwd+grad = {med['fwd+grad'] * 1e3:.1f} ms"
    )
    print("| method | layer | relative cost |")
    print("|---|---|---|")
    for name, (baseline, _) in calls.items():
        layer = "layer1[-1] (C=64)" if baseline == "fwd" else "layer4[-1]"
        print(f"| {name} | {layer} | {med[name] / med[baseline]:.2f}x {baseline} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
