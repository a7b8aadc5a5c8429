"""Independent references the fullgrad tests compare with: the formulas written out, in float64."""

import copy

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torchvision.ops.misc import Permute

BIAS_TYPES = (
    nn.Conv1d,
    nn.Conv2d,
    nn.Conv3d,
    nn.BatchNorm2d,
    nn.BatchNorm3d,
    nn.GroupNorm,
    nn.Linear,
    nn.LayerNorm,
)


def reference_terms(model, x, classes, with_layout=False):
    """float64, layer by layer: ``(x * dS/dx, [(dS/dz_l, bias_l broadcast), ...], scores)`` for every
    bias layer ``l`` (those without spatial output too); ``with_layout`` adds to each pair whether the
    layer's output is channels-last (after an odd number of ``Permute`` layers)."""
    model = copy.deepcopy(model).double()
    h = x.double().requires_grad_(True)
    inp = h
    outputs, biases, layouts, channels_last = [], [], [], False
    for layer in model:
        out = layer(h)
        channels_last ^= isinstance(layer, Permute)
        if isinstance(layer, BIAS_TYPES):
            with torch.no_grad():
                biases.append(layer(torch.zeros_like(h)))  # the layer's bias, broadcast like its output
            outputs.append(out)
            layouts.append(channels_last)
        h = out
    scores = h[torch.arange(len(classes)), classes]
    grads = torch.autograd.grad(scores.sum(), [inp, *outputs])
    pairs = list(zip(grads[1:], biases, layouts)) if with_layout else list(zip(grads[1:], biases))
    return (inp * grads[0]).detach(), pairs, scores.detach()


def minmax(a, axes, eps=0.0):
    """``(a - min) / (max - min + eps)`` over ``axes`` (0 where that is 0)."""
    a = a - a.min(axis=axes, keepdims=True)
    peak = a.max(axis=axes, keepdims=True) + eps
    return np.divide(a, peak, out=np.zeros_like(a), where=peak > 0)


def resize(a, size):
    """(*s) -> size, float64: cv2.resize for 2D (the reference library's), F.interpolate otherwise."""
    if a.ndim == 2:
        return cv2.resize(a, (size[1], size[0]), interpolation=cv2.INTER_LINEAR)
    mode = {1: "linear", 3: "trilinear"}[a.ndim]
    resized = F.interpolate(torch.from_numpy(a)[None, None], size=size, mode=mode, align_corners=False)
    return resized[0, 0].numpy()


def reference_fullgrad(model, x, classes, per_channel=True):
    input_term, bias_terms, _ = reference_terms(model, x, classes, with_layout=True)
    size = tuple(x.shape[2:])
    terms = [input_term.numpy()]
    for g, b, channels_last in bias_terms:
        if g.ndim == x.ndim:
            term = (g * b).numpy()
            terms.append(np.moveaxis(term, -1, 1) if channels_last else term)
    maps = []
    for i in range(x.shape[0]):
        total = np.zeros(size)
        for term in terms:
            t = np.abs(term[i])  # (C, *s)
            axes = tuple(range(1, t.ndim)) if per_channel else tuple(range(t.ndim))
            t = minmax(t, axes, eps=1e-7)  # each term's noise floor, grad-cam 1.5.7's
            for channel in t:  # normalise, resize each channel, then sum (the reference library's order)
                total += resize(channel, size)
        maps.append(minmax(total, None))
    return np.stack(maps)
