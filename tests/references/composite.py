"""Independent references the composite tests compare with: the formulas written out, in float64.

SESS's reference writes out the scaling, sliding, scoring, pasting and fusion; its default patch map is
the library's GradCAM, whose own formula is tested against ``tests.references`` (``cam_patch_map_by_hand``
is a patch map written out, for the CAM base method).
"""

import warnings

import cv2
import numpy as np
import torch
import torch.nn.functional as F
import torchvision

from pytorch_grad_cam import GradCAM
from tests.models import tiny_net

STAGES = ("conv1", "relu1", "conv2", "relu2", "conv3", "relu3")


MODES = {1: "linear", 2: "bilinear", 3: "trilinear"}


def assert_nontrivial(maps, peak=0.99):
    flat = np.asarray(maps).reshape(len(maps), -1)
    assert (flat.max(1) > peak).all(), "degenerate test case: a reference map is all zeros"
    assert (flat.std(1) > 0.05).all(), "degenerate test case: a reference map is nearly flat"


def normalize(maps):
    """Per map: (m - min) / (max - min), 0 where constant, torch (B, *spatial)."""
    flat = maps.flatten(1)
    flat = flat - flat.min(1, keepdim=True).values
    peak = flat.max(1, keepdim=True).values
    return torch.where(peak > 0, flat / peak, torch.zeros_like(flat)).view_as(maps)


def split(model, x, layer):
    """(activations of ``layer`` with requires_grad, logits computed from them) for a TinyConvNet."""
    h = x
    for i, name in enumerate(STAGES):
        h = getattr(model, name)(h)
        if name == layer:
            acts = h.detach().requires_grad_(True)
            h = acts
            for rest in STAGES[i + 1 :]:
                h = getattr(model, rest)(h)
            return acts, model.fc(h.flatten(2).mean(-1))
    raise KeyError(layer)


def layer_map_by_hand(acts, grads, method):
    """Grad-CAM or Grad-CAM++ map of one layer (B, *grid), before normalisation (float64)."""
    if method == "gradcam":
        weights = grads.flatten(2).mean(-1)
    else:  # Grad-CAM++, eq. 19 with exp(S)
        g2, g3 = grads**2, grads**3
        sum_a = acts.flatten(2).sum(-1).reshape(*acts.shape[:2], *[1] * (acts.ndim - 2))
        alpha = g2 / (2 * g2 + sum_a * g3 + 1e-6)
        alpha = torch.where(grads != 0, alpha, torch.zeros_like(alpha))
        weights = (grads.relu() * alpha).flatten(2).sum(-1)
    weighted = weights.reshape(*weights.shape, *[1] * (acts.ndim - 2)) * acts
    return weighted.sum(1).relu()


def full_map(layer_map, size):
    """normalise, resize to ``size`` (half-pixel linear), normalise: one layer's map as a method gives it."""
    resized = F.interpolate(
        normalize(layer_map)[:, None], size=tuple(size), mode=MODES[len(size)], align_corners=False
    )[:, 0]
    return normalize(resized)


# ============================================================================================ FinerCAM
def finer_by_hand(model, x, layer, alpha=1.0, ranks=(1, 2, 3), mains=None, classes=None):
    """Grad-CAM of sum_j p_j (y_m - alpha y_j) / (sum_j p_j + 1e-9), in float64, classes picked in numpy."""
    model = tiny_copy_double(model)
    x = x.double()
    acts, logits = split(model, x, layer)
    y = logits.detach().numpy()  # (B, K)
    scores = []
    for i in range(len(x)):
        main = int(np.argmax(y[i])) if mains is None else mains[i]
        if classes is None:
            distance = np.abs(y[i] - y[i, main])
            distance[main] = -1.0
            order = np.argsort(distance, kind="stable")
            comparison = [int(order[r]) for r in ranks]
        else:
            comparison = classes[i]
        p = torch.softmax(logits[i], -1)[comparison]
        scores.append((p * (logits[i, main] - alpha * logits[i, comparison])).sum() / (p.sum() + 1e-9))
    (grads,) = torch.autograd.grad(torch.stack(scores).sum(), acts)
    with torch.no_grad():
        return full_map(layer_map_by_hand(acts, grads, "gradcam"), x.shape[2:]).numpy()


def tiny_copy_double(model):
    copy = tiny_net(model.conv1.weight.ndim - 2, in_channels=model.conv1.in_channels)
    copy.load_state_dict(model.state_dict())
    return copy.double()


# ============================================================================================ RefineCAM
def refine_by_hand(model, x, layers, classes, method="gradcam++"):
    """prod_l normalise(resize(normalise(cam_l))), normalised; each layer by hand, float64."""
    model = tiny_copy_double(model)
    x = x.double()
    product = None
    for layer in layers:
        acts, logits = split(model, x, layer)
        (grads,) = torch.autograd.grad(logits[torch.arange(len(x)), classes].sum(), acts)
        with torch.no_grad():
            layer_map = full_map(layer_map_by_hand(acts, grads, method), x.shape[2:])
        assert_nontrivial(layer_map.numpy(), peak=0.9)
        product = layer_map if product is None else product * layer_map
    return normalize(product).numpy()


# ============================================================================================ SESS
def window_starts_by_hand(length, window, step):
    starts, start = [], 0
    while True:
        if start + window >= length:
            starts.append(max(length - window, 0))
            return starts
        starts.append(start)
        start += step


def blur_by_hand(cam, size=11, sigma=5.0):
    """Separable Gaussian, mirrored borders without repeating the edge (numpy 'reflect')."""
    radius = size // 2
    offsets = np.arange(-radius, radius + 1)
    kernel = np.exp(-(offsets**2) / (2 * sigma**2))
    kernel /= kernel.sum()
    for axis in range(cam.ndim):
        padded = np.pad(
            cam, [(radius, radius) if a == axis else (0, 0) for a in range(cam.ndim)], mode="reflect"
        )
        cam = np.apply_along_axis(lambda v: np.convolve(v, kernel, mode="valid"), axis, padded)
    return cam


def _gradcam_patch_map(model, layers):
    """``patch_map`` of :func:`sess_by_hand` by default: GradCAM of ``layers``."""
    base = GradCAM(model, layers)

    def patch_map(patch, cls):
        # A window without evidence for the class has a constant map; SESS itself does not warn per
        # window, so neither does its reference.
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", "the CAM of layer .* is constant for image", RuntimeWarning)
            return base(patch, [cls])[0]

    return patch_map


def _patches_by_hand(x, i, scales, window, step, use_cv2):
    """Every window of every scaled copy of image ``i``: a list of (patch, scaled size, starts)."""
    spatial = x.shape[2:]
    shorter = min(spatial)
    patches = []
    for scale in scales:
        size = [int(scale * n / shorter) for n in spatial]
        if use_cv2:  # cv2.resize takes (width, height)
            image = np.moveaxis(x[i].numpy(), 0, -1)
            scaled = torch.from_numpy(np.moveaxis(cv2.resize(image, (size[1], size[0])), -1, 0))[None]
        elif len(size) == 2:  # torchvision: bilinear, antialiased when shrinking
            scaled = torchvision.transforms.functional.resize(x[i : i + 1], size)
        else:
            scaled = F.interpolate(x[i : i + 1], size=size, mode=MODES[len(size)], align_corners=False)
        grids = [window_starts_by_hand(n, window, step) for n in size]
        for starts in np.stack(np.meshgrid(*grids, indexing="ij"), -1).reshape(-1, len(size)):
            index = (slice(None), slice(None), *(slice(s, s + window) for s in starts))
            patches.append((scaled[index], size, starts))
    return patches


def _patch_scores_by_hand(model, patches, cls, softmax):
    scores = []
    for patch, _, _ in patches:
        with torch.no_grad():
            out = model(patch)[0]
        score = (torch.softmax(out, -1) if softmax else out)[cls].item()
        scores.append(max(score, 0.0))
    return scores


def _pooled_by_hand(patches, scores, order, cls, spatial, window, theta, pool, use_cv2, patch_map):
    """The windows' weighted maps, put back at full size and pooled (max, or mean above ``theta``)."""
    top = max(scores[k] for k in order)
    total, count = np.zeros(spatial), np.zeros(spatial)
    for k in order:
        patch, size, starts = patches[k]
        weight = scores[k] / top if top > 0 else 1.0
        weighted = patch_map(patch, cls) * weight
        frame = np.zeros(size, np.float32)
        frame[tuple(slice(s, s + window) for s in starts)] = weighted
        if use_cv2:
            back = cv2.resize(frame, (spatial[1], spatial[0]))
        else:
            back = F.interpolate(
                torch.from_numpy(frame)[None, None],
                size=tuple(spatial),
                mode=MODES[len(size)],
                align_corners=False,
            )[0, 0].numpy()
        if pool == "max":
            total = np.maximum(total, back)
        else:
            total += np.where(back > theta, back, 0.0)
            count += back > theta
    return total if pool == "max" else np.where(count > 0, total / np.maximum(count, 1), 0.0)


def sess_by_hand(
    model,
    layers,
    x,
    classes,
    scales,
    window,
    step,
    pre_filter_ratio=0.0,
    theta=0.0,
    pool="mean",
    smooth=True,
    softmax=True,
    use_cv2=False,
    patch_map=None,
):
    """SESS as a plain loop: every image, scale and window one after the other. ``patch_map(patch, class)``
    gives a patch's map (default: GradCAM of ``layers``)."""
    spatial = x.shape[2:]
    if patch_map is None:
        patch_map = _gradcam_patch_map(model, layers)
    maps = []
    for i in range(len(x)):
        patches = _patches_by_hand(x, i, scales, window, step, use_cv2)
        scores = _patch_scores_by_hand(model, patches, classes[i], softmax)
        order = np.argsort(scores, kind="stable")[int(len(scores) * pre_filter_ratio) :]
        cam = _pooled_by_hand(
            patches, scores, order, classes[i], spatial, window, theta, pool, use_cv2, patch_map
        )
        if smooth:
            cam = cv2.GaussianBlur(cam.astype(np.float32), (11, 11), 5.0) if use_cv2 else blur_by_hand(cam)
        cam = cam - cam.min()
        maps.append(cam / cam.max() if cam.max() > 0 else cam)
    return np.stack(maps)


def cam_patch_map_by_hand(model, patch, cls):
    """CAM (Zhou et al.) of TinyConvNet's relu3, the layer pooled into fc, for one (1, C, *window) patch:
    relu(sum_k W[c, k] A_k), normalised, resized to the patch, normalised (float64)."""
    model = tiny_copy_double(model)
    with torch.no_grad():
        acts = model.relu3(model.conv3(model.relu2(model.conv2(model.relu1(model.conv1(patch.double()))))))
        layer_map = (model.fc.weight[cls].view(1, -1, *[1] * (acts.ndim - 2)) * acts).sum(1).relu()
        return full_map(layer_map, patch.shape[2:])[0].numpy()
