"""Independent references the perturbation tests compare with: the formulas written out, in float64."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from . import normalize


# ============================================================================ plain references
def interp_axis(a: np.ndarray, axis: int, n: int, align_corners: bool) -> np.ndarray:
    """Linear interpolation of ``a`` along ``axis`` to ``n`` samples (PyTorch's two sampling conventions)."""
    m = a.shape[axis]
    out = []
    for i in range(n):
        if align_corners:
            src = 0.0 if n == 1 else i * (m - 1) / (n - 1)
        else:
            src = min(max((i + 0.5) * m / n - 0.5, 0.0), m - 1)
        lo = int(np.floor(src))
        hi = min(lo + 1, m - 1)
        t = src - lo
        out.append((1 - t) * np.take(a, lo, axis) + t * np.take(a, hi, axis))
    return np.stack(out, axis)


def resize(a: np.ndarray, size, align_corners: bool) -> np.ndarray:
    for axis, n in enumerate(size):
        a = interp_axis(a, axis, n, align_corners)
    return a


def layer_output(model: nn.Module, layer: nn.Module, x: torch.Tensor) -> np.ndarray:
    store = {}
    handle = layer.register_forward_hook(lambda m, i, o: store.setdefault("a", o.detach().clone()))
    with torch.no_grad():
        model(x)
    handle.remove()
    return store["a"].double().numpy()


def score_masks(acts: np.ndarray, size) -> np.ndarray:
    """Score-CAM's masks of one image: each channel upsampled (corners aligned), scaled to [0, 1]."""
    masks = []
    for a in acts:
        up = resize(a, size, align_corners=True)
        masks.append((up - up.min()) / (up.max() - up.min() + 1e-8))
    return np.stack(masks)


def target_score(model: nn.Module, masked: np.ndarray, category: int) -> float:
    with torch.no_grad():
        return float(model(torch.from_numpy(masked[None]))[0, category])


def softmax(s: np.ndarray) -> np.ndarray:
    e = np.exp(s - s.max())
    return e / e.sum()


def cam_from_weights(acts: np.ndarray, weights: np.ndarray, size) -> np.ndarray:
    """relu(sum_k w_k A_k) -> min-max -> resized to the input (half-pixel centres) -> min-max."""
    cam = np.maximum((weights[:, None, None] * acts).sum(0), 0)
    cam = normalize(cam)
    cam = np.maximum(resize(cam, size, align_corners=False), 0)
    return normalize(cam)


def reference_sscam(model, x, category, num_samples, std, seed, noise="mask"):
    """(weights (B, C), maps (B, H, W)): s_k = mean_j y(x * (m_k + d_j)) (or y(x * m_k + d_j)), softmax."""
    model64 = _double(model)
    acts = layer_output(model64, model64.act, x.double())
    size = x.shape[2:]
    all_w, maps = [], []
    for i in range(x.shape[0]):
        image = x[i].double().numpy()
        generator = torch.Generator().manual_seed(seed)  # restarted for every image
        masks = score_masks(acts[i], size)
        s = np.zeros(len(masks))
        for k, mask in enumerate(masks):
            total = 0.0
            for _ in range(num_samples):
                shape = mask.shape if noise == "mask" else image.shape
                d = torch.randn(shape, generator=generator).double().numpy() * std
                masked = image * (mask + d) if noise == "mask" else image * mask + d
                total += target_score(model64, masked, category[i])
            s[k] = total / num_samples
        w = softmax(s)
        all_w.append(w)
        maps.append(cam_from_weights(acts[i], w, size))
    return np.stack(all_w), np.stack(maps)


def reference_iscam(model, x, category, num_samples):
    """IS-CAM, Algorithm 1: M <- M + (i/N) m_k for i = 1..N, s_k = mean_i y(x * M), softmax."""
    model64 = _double(model)
    acts = layer_output(model64, model64.act, x.double())
    size = x.shape[2:]
    all_w, maps = [], []
    for i in range(x.shape[0]):
        image = x[i].double().numpy()
        masks = score_masks(acts[i], size)
        s = np.zeros(len(masks))
        for k, mask in enumerate(masks):
            accumulated = np.zeros_like(mask)
            total = 0.0
            for step in range(1, num_samples + 1):
                accumulated = accumulated + step / num_samples * mask
                total += target_score(model64, image * accumulated, category[i])
            s[k] = total / num_samples
        w = softmax(s)
        all_w.append(w)
        maps.append(cam_from_weights(acts[i], w, size))
    return np.stack(all_w), np.stack(maps)


def _double(model: nn.Module) -> nn.Module:
    import copy

    return copy.deepcopy(model).double()


# ============================================================================ AblationCAM on transformers
def reference_ablation(model: nn.Module, layer: nn.Module, x: torch.Tensor, classes) -> np.ndarray:
    """Ablation-CAM the plain way: a full forward pass per ablated channel, the channel being the LAST
    dim of the layer's raw output (tokens' embedding channel; Swin's (B, H, W, C) channel); w_k =
    (y - y_k) / y, with the channel set to 0, or to min - 1e7 when the image's output has negatives."""
    weights = []
    with torch.no_grad():
        y = model(x)
        raw = {}
        handle = layer.register_forward_hook(lambda m, i, o: raw.setdefault("a", o.detach().clone()))
        model(x)
        handle.remove()
        channels = raw["a"].shape[-1]
        for i in range(x.shape[0]):
            lowest = float(raw["a"][i].min())
            value = 0.0 if lowest >= 0 else lowest - 1e7
            y_k = []
            for start in range(0, channels, 32):  # copy r of a chunk has channel start + r ablated
                count = min(32, channels - start)

                def ablate(module, inputs, output, start=start, count=count, value=value):
                    output = output.clone()
                    for r in range(count):
                        output[r, ..., start + r] = value
                    return output

                handle = layer.register_forward_hook(ablate)
                copies = x[i : i + 1].repeat(count, *([1] * (x.ndim - 1)))
                y_k.append(model(copies)[:, classes[i]].double().numpy())
                handle.remove()
            score = float(y[i, classes[i]])
            weights.append((score - np.concatenate(y_k)) / score)
    return np.stack(weights)


def maps_from_weights(acts: np.ndarray, weights: np.ndarray, size) -> np.ndarray:
    return np.stack([cam_from_weights(a, w, size) for a, w in zip(acts, weights)])


def reference_ablation_segmentation(model, layer, x, classes, masks):
    """Ablation-CAM the plain way on a dict-output segmentation net, in float64: one full forward pass per
    ablated channel (a forward hook sets channel k of the layer's output to 0, or to min - 1e7 when the
    image's output has negatives); the score is sum_{h,w} out[category, h, w] * mask[h, w]."""
    model = _double(model)
    layer = dict(model.named_modules())[layer]
    x = x.double()
    acts = layer_output(model, layer, x)  # (B, C, h, w)
    weights = []
    with torch.no_grad():
        for i in range(x.shape[0]):
            mask = torch.from_numpy(masks[i]).double()

            def score(output, i=i, mask=mask):
                return float((output["out"][0, classes[i]] * mask).sum())

            y = score(model(x[i : i + 1]))
            value = 0.0 if acts[i].min() >= 0 else float(acts[i].min()) - 1e7
            w = []
            for k in range(acts.shape[1]):

                def ablate(module, inputs, output, k=k, value=value):
                    output = output.clone()
                    output[:, k] = value
                    return output

                handle = layer.register_forward_hook(ablate)
                w.append((y - score(model(x[i : i + 1]))) / y)
                handle.remove()
            weights.append(w)
    return np.array(weights), acts
