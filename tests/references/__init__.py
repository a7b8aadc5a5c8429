"""Plain reference implementations of every CAM method, written from the papers' formulas.

Independent of the engine on purpose: nothing here imports ``pytorch_grad_cam``. Activations and
gradients come from our own forward hook and ``torch.autograd.grad``; everything after that is numpy
in float64 with explicit loops over images and channels. Slow and obvious rather than fast and clever:
ScoreCAM builds its own masks, AblationCAM runs the WHOLE model once per ablated channel.

Conventions (the library's documented numerics):

* one layer:  ``cam = relu(layer_map)``, then per image ``(cam - min) / (max - min)`` (0 where constant), then
  resized to the input (2D: ``cv2.resize`` bilinear; 1D/3D: separable linear interpolation with half-pixel
  centres, which is what ``cv2.resize`` does in 2D);
* several layers: stack the resized maps, relu, mean over layers, normalise again (also for one layer);
* eigen smoothing: the first principal component of ``w * A`` (positions x channels, each channel
  centred), with the sign chosen so that the projection correlates non-negatively with the centred
  channel sum of what was projected.

Targets are class indices (one per image): the score is ``output[i, k]``.
"""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np
import torch
from torch import nn

SCORECAM_EPS = 1e-8
ABLATION_OFFSET = 1e7


# ------------------------------------------------------------------------ activations and gradients
def activations_and_gradients(
    model: nn.Module,
    layers: Sequence[nn.Module],
    x: torch.Tensor,
    classes: Sequence[int],
    with_gradients: bool = True,
) -> dict[str, list]:
    """One forward pass: each layer's output and d(sum_i output[i, classes[i]])/d(output), as float64.

    Returns ``{"activations": [A_layer (B, C, *S)], "gradients": [G_layer or None], "scores": (B,)}``.
    """
    assert not model.training, "the reference expects a model in eval mode"
    outputs: list[torch.Tensor] = [None] * len(layers)

    def make_hook(index):
        def hook(module, inputs, output):
            if with_gradients and not output.requires_grad:
                output = output.detach().requires_grad_(True)  # e.g. a layer that returns the input
            outputs[index] = output
            # Later in-place operations (ReLU(inplace=True), out += identity) then modify the copy.
            return output.clone()

        return hook

    handles = [layer.register_forward_hook(make_hook(i)) for i, layer in enumerate(layers)]
    try:
        with torch.enable_grad():
            logits = model(x.detach().clone())
            scores = torch.stack([logits[i, int(k)] for i, k in enumerate(classes)])
            gradients = [None] * len(layers)
            if with_gradients:
                gradients = list(torch.autograd.grad(scores.sum(), outputs))
    finally:
        for handle in handles:
            handle.remove()
    as_np = lambda t: None if t is None else t.detach().double().cpu().numpy()  # noqa: E731
    return {
        "activations": [as_np(a) for a in outputs],
        "gradients": [as_np(g) for g in gradients],
        "scores": as_np(scores),
    }


# ------------------------------------------------------------------------------ per-method weights
def gradcam_weights(acts: np.ndarray, grads: np.ndarray) -> np.ndarray:
    """Grad-CAM: ``w_k = mean over positions of dy/dA_k``. (B, C)."""
    batch, channels = acts.shape[:2]
    w = np.zeros((batch, channels))
    for i in range(batch):
        for k in range(channels):
            w[i, k] = grads[i, k].mean()
    return w


def gradcampp_weights(acts: np.ndarray, grads: np.ndarray) -> np.ndarray:
    """Grad-CAM++ (eq. 19 with exp(S)): ``alpha = g^2 / (2 g^2 + sum(A) g^3 + 1e-6)``, 0 where g == 0;
    ``w_k = sum relu(g) * alpha``. (B, C)."""
    batch, channels = acts.shape[:2]
    w = np.zeros((batch, channels))
    for i in range(batch):
        for k in range(channels):
            g = grads[i, k]
            sum_a = acts[i, k].sum()
            alpha = g**2 / (2 * g**2 + sum_a * g**3 + 1e-6)
            alpha = np.where(g != 0, alpha, 0.0)
            w[i, k] = (np.maximum(g, 0) * alpha).sum()
    return w


def xgradcam_weights(acts: np.ndarray, grads: np.ndarray) -> np.ndarray:
    """XGrad-CAM: ``w_k = sum(g * A_k) / (sum(A_k) + 1e-7)``. (B, C)."""
    batch, channels = acts.shape[:2]
    w = np.zeros((batch, channels))
    for i in range(batch):
        for k in range(channels):
            w[i, k] = (grads[i, k] * acts[i, k]).sum() / (acts[i, k].sum() + 1e-7)
    return w


def scorecam_weights(
    model: nn.Module, x: torch.Tensor, acts: np.ndarray, classes: Sequence[int], chunk: int = 128
) -> np.ndarray:
    """Score-CAM: mask_k = minmax(upsample_aligned(A_k)) (eps 1e-8), s_k = y(x * mask_k), w = softmax(s)."""
    batch, channels = acts.shape[:2]
    spatial = tuple(x.shape[2:])
    w = np.zeros((batch, channels))
    for i in range(batch):
        masks = []
        for k in range(channels):
            up = resize_align_corners(acts[i, k], spatial)
            masks.append((up - up.min()) / (up.max() - up.min() + SCORECAM_EPS))
        masks = torch.from_numpy(np.stack(masks)).to(x.dtype)  # (C, *S)
        scores = []
        with torch.no_grad():
            for start in range(0, channels, chunk):
                masked = x[i : i + 1] * masks[start : start + chunk, None]  # (n, C_in, *S)
                scores.append(model(masked)[:, int(classes[i])].double().numpy())
        s = np.concatenate(scores)
        e = np.exp(s - s.max())
        w[i] = e / e.sum()
    return w


def ablation_value(lowest: float) -> float:
    """What an ablated channel is set to, given the lowest value of the image's activation."""
    return 0.0 if lowest >= 0 else lowest - ABLATION_OFFSET


def ablationcam_weights(
    model: nn.Module, layer: nn.Module, x: torch.Tensor, classes: Sequence[int], chunk: int = 128
) -> np.ndarray:
    """Ablation-CAM, the naive way: for every channel k a FULL forward pass of the model with the layer's
    output channel k set to 0 (or to min - 1e7 when the image's activation has negative values);
    ``w_k = (y - y_k) / y``. (Several ablated copies share one batched forward pass.)"""
    batch = x.shape[0]
    with torch.no_grad():
        captured = {}
        handle = layer.register_forward_hook(lambda m, i, o: captured.__setitem__("a", o.clone()))
        try:
            logits = model(x.detach().clone())
        finally:
            handle.remove()
    acts = captured["a"]  # float32, as the model produced it
    channels = acts.shape[1]
    w = np.zeros((batch, channels))
    for i in range(batch):
        y = float(logits[i, int(classes[i])])
        value = ablation_value(float(acts[i].min()))
        y_ablated = []
        for start in range(0, channels, chunk):
            ks = list(range(start, min(start + chunk, channels)))
            replacement = acts[i : i + 1].repeat(len(ks), *([1] * (acts.ndim - 1)))
            for row, k in enumerate(ks):
                replacement[row, k] = value
            handle = layer.register_forward_hook(lambda m, inp, out, r=replacement: r)
            try:
                with torch.no_grad():
                    out = model(x[i : i + 1].repeat(len(ks), *([1] * (x.ndim - 1))))
            finally:
                handle.remove()
            y_ablated.extend(float(v) for v in out[:, int(classes[i])])
        for k in range(channels):
            w[i, k] = (y - y_ablated[k]) / y
    return w


# ------------------------------------------------------------------------------ maps and resizing
def weighted_sum(weights: np.ndarray, acts: np.ndarray) -> np.ndarray:
    """``sum_k w_k A_k`` per image: (B, C) x (B, C, *S) -> (B, *S)."""
    out = np.zeros((acts.shape[0], *acts.shape[2:]))
    for i in range(acts.shape[0]):
        for k in range(acts.shape[1]):
            out[i] += weights[i, k] * acts[i, k]
    return out


def first_principal_component(acts: np.ndarray) -> np.ndarray:
    """Per image: X = positions x channels, centred per channel; X @ v1 (first right singular vector),
    sign flipped if it anti-correlates with the centred channel sum. (B, C, *S) -> (B, *S)."""
    out = np.zeros((acts.shape[0], *acts.shape[2:]))
    for i in range(acts.shape[0]):
        a = acts[i]
        X = a.reshape(a.shape[0], -1).T  # (N, C)
        X = X - X.mean(axis=0, keepdims=True)
        _, _, vt = np.linalg.svd(X, full_matrices=False)
        projection = X @ vt[0]
        channel_sum = a.sum(axis=0).reshape(-1)
        channel_sum = channel_sum - channel_sum.mean()
        if (projection * channel_sum).sum() < 0:
            projection = -projection
        out[i] = projection.reshape(a.shape[1:])
    return out


def normalize(cam: np.ndarray) -> np.ndarray:
    """One map: ``(cam - min) / (max - min)``; all zeros where the map is constant (scale-invariant)."""
    span = cam.max() - cam.min()
    return (cam - cam.min()) / span if span > 0 else np.zeros_like(cam)


def _interp_axis(values: np.ndarray, axis: int, size: int, align_corners: bool) -> np.ndarray:
    """Linear interpolation of ``values`` along one axis to ``size`` samples."""
    n = values.shape[axis]
    if align_corners:
        src = np.zeros(size) if size == 1 else np.arange(size) * (n - 1) / (size - 1)
    else:
        src = (np.arange(size) + 0.5) * n / size - 0.5  # half-pixel centres; np.interp clamps the ends
    moved = np.moveaxis(values, axis, -1)
    flat = moved.reshape(-1, n)
    res = np.stack([np.interp(src, np.arange(n), row) for row in flat])
    return np.moveaxis(res.reshape((*moved.shape[:-1], size)), -1, axis)


def resize(cam: np.ndarray, size: Sequence[int]) -> np.ndarray:
    """One map to ``size``: cv2.resize (bilinear) in 2D, separable half-pixel linear in 1D and 3D."""
    size = tuple(size)
    if cam.shape == size:
        return cam
    if cam.ndim == 2:
        return cv2.resize(cam, (size[1], size[0]), interpolation=cv2.INTER_LINEAR)
    for axis, n in enumerate(size):
        cam = _interp_axis(cam, axis, n, align_corners=False)
    return cam


def resize_align_corners(a: np.ndarray, size: Sequence[int]) -> np.ndarray:
    """Separable linear interpolation with corner samples aligned (ScoreCAM's masks)."""
    for axis, n in enumerate(size):
        a = _interp_axis(a, axis, n, align_corners=True)
    return a


def fem_weights(acts: np.ndarray, k: float = 2.0) -> np.ndarray:
    """FEM: the fraction of each channel's positions at or above ``mean + k * std`` (population std)."""
    w = np.zeros(acts.shape[:2])
    for i in range(acts.shape[0]):
        for c in range(acts.shape[1]):
            values = acts[i, c].reshape(-1)
            w[i, c] = np.mean(values >= values.mean() + k * values.std())
    return w


def random_weights(shape, seed: int) -> np.ndarray:
    """RandomCAM: ``torch.rand`` from a generator seeded with ``seed``, mapped to [-1, 1]."""
    return (torch.rand(shape, generator=torch.Generator().manual_seed(seed)).double() * 2 - 1).numpy()


def kernel_matrix(X: np.ndarray, kernel: str, gamma: float, degree: int = 3, coef0: float = 1.0):
    """scikit-learn's kernel definitions, written out: (N, C) rows -> (N, N)."""
    if kernel == "linear":
        return X @ X.T
    if kernel == "rbf":
        sq = ((X[:, None, :] - X[None, :, :]) ** 2).sum(-1)
        return np.exp(-gamma * sq)
    if kernel == "sigmoid":
        return np.tanh(gamma * X @ X.T + coef0)
    if kernel == "poly":
        return (gamma * X @ X.T + coef0) ** degree
    if kernel == "cosine":
        U = X / np.maximum(np.linalg.norm(X, axis=1, keepdims=True), 1e-12)
        return U @ U.T
    raise KeyError(kernel)


def kernel_principal_component(acts: np.ndarray, kernel: str = "sigmoid", gamma=None) -> np.ndarray:
    """Per image: X = positions x channels, centred; K = kernel(X), double-centred H K H (H = I - 1/N);
    the map is sqrt(lambda_1) * alpha_1 of the top eigenpair, sign as for the linear component."""
    out = np.zeros((acts.shape[0], *acts.shape[2:]))
    for i in range(acts.shape[0]):
        a = acts[i]
        X = a.reshape(a.shape[0], -1).T
        X = X - X.mean(axis=0, keepdims=True)
        n = X.shape[0]
        H = np.eye(n) - np.full((n, n), 1.0 / n)
        K = H @ kernel_matrix(X, kernel, 1.0 / X.shape[1] if gamma is None else gamma) @ H
        values, vectors = np.linalg.eigh(K)
        projection = vectors[:, -1] * np.sqrt(max(values[-1], 0.0))
        channel_sum = a.sum(axis=0).reshape(-1)
        if (projection * (channel_sum - channel_sum.mean())).sum() < 0:
            projection = -projection
        out[i] = projection.reshape(a.shape[1:])
    return out


# Methods whose map is an element-wise product of gradients and activations, summed over channels
# (or, with eigen smoothing, its first principal component).
ELEMENTWISE = {
    "hirescam": lambda acts, grads: grads * acts,
    "gradcamelementwise": lambda acts, grads: np.maximum(grads * acts, 0),
    "layercam": lambda acts, grads: np.maximum(grads, 0) * acts,
}
# Methods whose map is always a principal component of something.
COMPONENT = {
    "eigencam": lambda acts, grads: first_principal_component(acts),
    "eigengradcam": lambda acts, grads: first_principal_component(grads * acts),
    "segeigencam": lambda acts, grads: first_principal_component(np.abs(grads) * acts),
    "kpcacam": lambda acts, grads: kernel_principal_component(acts),
}
USES_GRADIENTS = {
    "gradcam",
    "gradcam++",
    "xgradcam",
    "hirescam",
    "gradcamelementwise",
    "layercam",
    "eigengradcam",
    "segeigencam",
}
RANDOM_SEED = 0  # the tests construct RandomCAM with this seed (it gives no all-negative map on them)


# ------------------------------------------------------------------------------------- the whole CAM
GRADIENT_WEIGHTS = {"gradcam": gradcam_weights, "gradcam++": gradcampp_weights, "xgradcam": xgradcam_weights}
#: The methods this file has a reference for (the others are checked against references in their own
#: test files: see OWN_FORMULA_TESTS in methods/test_formulas.py).
COVERED = (
    set(GRADIENT_WEIGHTS)
    | set(ELEMENTWISE)
    | set(COMPONENT)
    | {"scorecam", "ablationcam", "fem", "randomcam"}
)


def layer_weights(method: str, model, layer, x, classes, acts, grads) -> np.ndarray:
    if method in GRADIENT_WEIGHTS:
        return GRADIENT_WEIGHTS[method](acts, grads)
    if method == "scorecam":
        return scorecam_weights(model, x, acts, classes)
    if method == "ablationcam":
        return ablationcam_weights(model, layer, x, classes)
    if method == "fem":
        return fem_weights(acts)
    if method == "randomcam":
        return random_weights(acts.shape[:2], RANDOM_SEED)
    raise KeyError(method)


def reference_cam(
    method: str,
    model: nn.Module,
    layers: Sequence[nn.Module],
    x: torch.Tensor,
    classes: Sequence[int],
    eigen_smooth: bool = False,
    details: dict | None = None,
) -> np.ndarray:
    """The fused map ``(B, *spatial)`` (float64) of ``method`` for class ``classes[i]`` of image ``i``.

    ``details``, if given, receives the per-layer activations, gradients, weights and resized maps (for
    assertions about the test case itself, e.g. that some gradients are exactly zero).
    """
    layers = list(layers)
    data = activations_and_gradients(model, layers, x, classes, with_gradients=method in USES_GRADIENTS)
    spatial = tuple(x.shape[2:])
    batch = x.shape[0]
    per_layer = []
    if details is not None:
        details.update(data, weights=[])
    for layer, acts, grads in zip(layers, data["activations"], data["gradients"]):
        if method in COMPONENT:
            layer_map = COMPONENT[method](acts, grads)
        elif method in ELEMENTWISE:
            contributions = ELEMENTWISE[method](acts, grads)
            layer_map = first_principal_component(contributions) if eigen_smooth else contributions.sum(1)
        else:
            w = layer_weights(method, model, layer, x, classes, acts, grads)
            if details is not None:
                details["weights"].append(w)
            if eigen_smooth:
                weighted = acts * w.reshape(w.shape + (1,) * (acts.ndim - 2))
                layer_map = first_principal_component(weighted)
            else:
                layer_map = weighted_sum(w, acts)
        maps = np.stack([resize(normalize(np.maximum(layer_map[i], 0)), spatial) for i in range(batch)])
        per_layer.append(maps)
        if details is not None:
            details.setdefault("layer_maps", []).append(maps)
    fused = np.maximum(np.stack(per_layer, axis=1), 0).mean(axis=1)
    return np.stack([normalize(fused[i]) for i in range(batch)])


# ============================================================ torch float64 helpers and method references
# The references of CAM, Smooth Grad-CAM++, ShapleyCAM and KPCA-CAM's small-activation numerics (used by
# tests/methods/test_activation.py, test_gradient.py, test_projection.py), written in plain torch on
# float64 copies of the models. ``*_t`` names: the torch twins of the numpy functions above. The fused
# map of one target layer is ``normalize(resize(normalize(relu(cam))))``, as documented in ``BaseCAM``.
import copy  # noqa: E402

import torch.nn.functional as F  # noqa: E402


def normalize_t(maps):
    """Per image min-max over all positions, ``(B, *spatial)``."""
    flat = maps.reshape(maps.shape[0], -1)
    flat = flat - flat.min(1, keepdim=True).values
    peak = flat.max(1, keepdim=True).values
    return torch.where(peak > 0, flat / peak, torch.zeros_like(flat)).reshape(maps.shape)


def resized_layer_map(cam, size):
    """One layer's raw ``sum_k w_k A_k`` ``(B, *grid)`` -> normalised and resized to ``(B, *size)``."""
    mode = {1: "linear", 2: "bilinear", 3: "trilinear"}[cam.ndim - 1]
    layer = normalize_t(cam.clamp(min=0))
    return F.interpolate(layer[:, None], size=tuple(size), mode=mode, align_corners=False)[:, 0]


def fuse(layer_maps):
    """Resized per-layer maps -> the method's output: relu, mean over layers, normalise."""
    return normalize_t(torch.stack(layer_maps, 1).clamp(min=0).mean(1))


def final_map(cam, size):
    """The output of a method with one target layer, from that layer's raw map."""
    return fuse([resized_layer_map(cam, size)])


def weighted_sum_t(weights, acts):
    return (weights.reshape(*weights.shape, *[1] * (acts.ndim - 2)) * acts).sum(1)


def assert_nontrivial_t(maps):
    flat = maps.reshape(maps.shape[0], -1)
    assert (flat.max(1).values > 0.99).all(), "degenerate case: a reference map is all zeros"
    assert (flat.std(1) > 0.05).all(), "degenerate case: a reference map is nearly flat"


def acts_and_grads(model, layer, x, score_fn, create_graph=False):
    """Activations of ``layer`` and d(sum of scores)/d(activations), on a float64 copy of everything.

    ``score_fn(output) -> (B,)``. With ``create_graph`` the gradient stays differentiable."""
    store = {}

    def hook(module, inputs, output):
        store["a"] = output

    handle = layer.register_forward_hook(hook)
    try:
        out = model(x)
    finally:
        handle.remove()
    (grad,) = torch.autograd.grad(score_fn(out).sum(), store["a"], create_graph=create_graph)
    return store["a"], grad, out


def double_copy(model):
    return copy.deepcopy(model).double().eval()


def logit(classes):
    return lambda out: out[torch.arange(out.shape[0]), torch.tensor(classes)]


def rest(classes):
    idx = torch.arange(len(classes)), torch.tensor(classes)
    return lambda out: out[idx] + torch.log_softmax(out, -1)[idx]


def reference_smooth_gradcampp(model, layer_name, x, classes, num_samples, std, seed, raw=False):
    """The paper's recipe, sample by sample: D^n = mean over noisy copies of g^n (n = 1, 2, 3),
    alpha = D2 / (2 D2 + sum(A) D3), w = sum relu(D1) alpha, A from the clean input. The noise is the
    class docstring's recipe. ``raw``: the layer's ``sum_k w_k A_k`` instead of the method's output."""
    m64 = double_copy(model)
    layer = m64.get_submodule(layer_name)
    x64 = x.double()
    eps = torch.randn((num_samples, *x.shape), generator=torch.Generator().manual_seed(seed))
    sigma = std * (x64.flatten(1).max(1).values - x64.flatten(1).min(1).values)  # (B,)
    d1 = d2 = d3 = 0
    for s in range(num_samples):
        noisy = x64 + sigma.reshape(-1, *[1] * (x.ndim - 1)) * eps[s].double()
        _, g, _ = acts_and_grads(m64, layer, noisy, logit(classes))
        d1, d2, d3 = d1 + g / num_samples, d2 + g**2 / num_samples, d3 + g**3 / num_samples
    acts, _, _ = acts_and_grads(m64, layer, x64, logit(classes))
    acts = acts.detach()
    sum_a = acts.flatten(2).sum(-1).reshape(*acts.shape[:2], *[1] * (acts.ndim - 2))
    alpha = d2 / (2 * d2 + sum_a * d3 + 1e-6)
    alpha = torch.where(d2 != 0, alpha, torch.zeros_like(alpha))
    w = (d1.clamp(min=0) * alpha).flatten(2).sum(-1)
    return weighted_sum_t(w, acts) if raw else final_map(weighted_sum_t(w, acts), x.shape[2:])


def reference_shapley_weights(model, layer_name, tail, x, score_fn):
    """w = mean_positions(g - 0.5 * H A) with H A from torch.autograd.functional.hvp of the score as a
    function of the layer's activations (``tail``: activations -> model output), in float64."""
    m64 = double_copy(model)
    acts, g, _ = acts_and_grads(m64, m64.get_submodule(layer_name), x.double(), score_fn)
    acts, g = acts.detach(), g.detach()
    _, hvp = torch.autograd.functional.hvp(lambda a: score_fn(tail(m64, a)).sum(), acts, v=acts)
    return (g - 0.5 * hvp).flatten(2).mean(-1), acts, g, hvp


def fd_shapley_weights(model, layer, x, score_fn, h=1e-5):
    """w = mean_positions(g - 0.5 * H A), H A by central differences of the gradient along A:
    (g(A (1 + h)) - g(A (1 - h))) / 2h, in float64. Only first derivatives: any attention kernel will do."""
    m64 = double_copy(model)
    target = m64.get_submodule(layer)
    acts, g, _ = acts_and_grads(m64, target, x.double(), score_fn)
    acts, g = acts.detach(), g.detach()

    def grad_at(a):
        a = a.clone().requires_grad_(True)
        handle = target.register_forward_hook(lambda m, i, o: a)  # the layer's output replaced by a
        try:
            return torch.autograd.grad(score_fn(m64(x.double())).sum(), a)[0]
        finally:
            handle.remove()

    hvp = (grad_at(acts * (1 + h)) - grad_at(acts * (1 - h))) / (2 * h)
    return (g - 0.5 * hvp).flatten(2).mean(-1), acts, hvp


def decimal_kernel_component(acts, kernel, gamma, degree=3, coef0=1.0, digits=60):
    """KPCA-CAM's component written with scikit-learn's kernels as they are (``tanh(g x.y + c)``,
    ``exp(-g |x - y|^2)``, ``(g x.y + c)^d``), evaluated and double-centred in 60-digit decimal arithmetic,
    then the top eigenpair in float64: sqrt(lambda_1) alpha_1, sign by the channel sum. (B, *grid)."""
    from decimal import Decimal, localcontext

    out = np.zeros((acts.shape[0], *acts.shape[2:]))
    with localcontext() as ctx:
        ctx.prec = digits
        g, c = Decimal(repr(gamma)), Decimal(repr(coef0))
        for b in range(acts.shape[0]):
            a = acts[b].double().reshape(acts.shape[1], -1).T.tolist()  # (N, C)
            n, ch = len(a), len(a[0])
            X = [[Decimal(repr(v)) for v in row] for row in a]
            means = [sum(X[i][k] for i in range(n)) / n for k in range(ch)]
            X = [[X[i][k] - means[k] for k in range(ch)] for i in range(n)]

            K = [[_decimal_entry(X[i], X[j], kernel, g, c, degree) for j in range(n)] for i in range(n)]
            row = [sum(K[i]) / n for i in range(n)]
            total = sum(row) / n
            centred = np.array(
                [[float(K[i][j] - row[i] - row[j] + total) for j in range(n)] for i in range(n)]
            )
            values, vectors = np.linalg.eigh(centred)
            projection = vectors[:, -1] * np.sqrt(max(values[-1], 0.0))
            channel_sum = acts[b].double().sum(0).reshape(-1).numpy()
            if (projection * (channel_sum - channel_sum.mean())).sum() < 0:
                projection = -projection
            out[b] = projection.reshape(acts.shape[2:])
    return torch.from_numpy(out)


def _decimal_entry(xi, xj, kernel, g, c, degree):
    if kernel == "sigmoid":
        e = (2 * (g * sum(a * b for a, b in zip(xi, xj)) + c)).exp()
        return (e - 1) / (e + 1)
    if kernel == "rbf":
        return (-g * sum((a - b) ** 2 for a, b in zip(xi, xj))).exp()
    return (g * sum(a * b for a, b in zip(xi, xj)) + c) ** degree


# -- Deep Feature Factorization: NMF (NNDSVDa + Lee & Seung) and DFF, from test_factorization.py -----
TINY = np.finfo(np.float64).tiny


def ref_nndsvda(v, k):
    """Boutsidis & Gallopoulos' NNDSVD, one singular triplet at a time; zeros filled with mean(v)."""
    u, s, vt = np.linalg.svd(v, full_matrices=False)
    w, h = np.zeros((v.shape[0], k)), np.zeros((k, v.shape[1]))
    for j in range(k):
        x, y = u[:, j], vt[j]
        xp, xn, yp, yn = np.maximum(x, 0), np.maximum(-x, 0), np.maximum(y, 0), np.maximum(-y, 0)
        m_pos = np.linalg.norm(xp) * np.linalg.norm(yp)
        m_neg = np.linalg.norm(xn) * np.linalg.norm(yn)
        if m_pos > m_neg:
            a, b, sigma = xp / np.linalg.norm(xp), yp / np.linalg.norm(yp), m_pos
        else:
            a, b, sigma = xn / np.linalg.norm(xn), yn / np.linalg.norm(yn), m_neg
        w[:, j] = np.sqrt(s[j] * sigma) * a
        h[j] = np.sqrt(s[j] * sigma) * b
    w[w == 0] = v.mean()
    h[h == 0] = v.mean()
    return w, h


def ref_nmf(v, k, max_iter, tol=0.0):
    """Lee & Seung's multiplicative updates (H, then W), written entry by entry for H's update."""
    w, h = ref_nndsvda(v, k)
    error_0 = previous = np.linalg.norm(v - w @ h)
    n_iter = 0
    for n_iter in range(1, max_iter + 1):
        wtv, wtw = w.T @ v, w.T @ w
        new_h = np.empty_like(h)
        for a in range(h.shape[0]):
            for mu in range(h.shape[1]):
                new_h[a, mu] = h[a, mu] * wtv[a, mu] / max(float(wtw[a] @ h[:, mu]), TINY)
        h = new_h
        w = w * (v @ h.T) / np.maximum(w @ (h @ h.T), TINY)
        if tol > 0 and n_iter % 10 == 0:
            error = np.linalg.norm(v - w @ h)
            if previous - error <= tol * error_0:
                break
            previous = error
    return w, h, n_iter


def ref_dff(acts, k, max_iter, tol=0.0):
    """DFF of (B, C, *spatial) float64 activations: concepts (C, K), heatmaps (B, K, *spatial)."""
    batch, channels, spatial = acts.shape[0], acts.shape[1], acts.shape[2:]
    v = np.moveaxis(acts, 1, 0).reshape(channels, -1)
    offset = np.minimum(v.min(1), 0)  # only channels with negative values are shifted
    w, h, _ = ref_nmf(v - offset[:, None], k, max_iter, tol)
    peak = h.max(1)
    w, h = w * peak, h / peak[:, None]
    return w + offset[:, None], np.swapaxes(h.reshape(k, batch, *spatial), 0, 1)


# -- guided backpropagation: the guided ReLU rule and its references, from test_guided.py ------------
class GuidedReLU(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return x.clamp(min=0)

    @staticmethod
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        return g * (x > 0) * (g > 0)


class GuidedReLU6(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return x.clamp(0, 6)

    @staticmethod
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        return g * ((x > 0) & (x < 6)) * (g > 0)


def module_reference(model, x, classes):
    """float64, layer by layer, every nn.ReLU replaced by GuidedReLU."""
    model = copy.deepcopy(model).double()
    h = x.double().requires_grad_(True)
    out = h
    for layer in model:
        out = GuidedReLU.apply(out) if isinstance(layer, nn.ReLU) else layer(out)
    score = out[torch.arange(len(classes)), classes].sum()
    return torch.autograd.grad(score, h)[0]


def functional_reference(model, x, classes):
    model = copy.deepcopy(model).double()
    h = x.double().requires_grad_(True)
    score = model(h, relu=GuidedReLU.apply)[torch.arange(len(classes)), classes].sum()
    return torch.autograd.grad(score, h)[0]


def plain_gradient(model, x, classes):
    h = x.detach().clone().requires_grad_(True)
    return torch.autograd.grad(model(h)[torch.arange(len(classes)), classes].sum(), h)[0]
