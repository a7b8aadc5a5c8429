"""Deep Feature Factorization: non-negative matrix factorisation of a layer's activations.

Deep Feature Factorization (Collins, Achanta & Süsstrunk, arXiv:1806.10206) factorises the
activations of one layer, of all images of a batch together, into ``K`` concepts: channel loadings
(what a concept looks like to the network) and, per image, a heatmap of where each concept is. It needs
no gradients and no targets. The NMF is written here in torch (Lee & Seung's multiplicative updates),
so it runs on the model's device and needs no scikit-learn.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping, Sequence
from typing import Any, Callable, NamedTuple

import numpy as np
import torch
from torch import nn

from .._engine.capture import capture_forward, map_tensors
from .._engine.checks import check_choice, check_device, check_float, check_input, check_int, check_layers
from .._engine.maps import resize_maps
from .._engine.session import compute_session, evaluation_state, model_device, model_float_dtype
from .._engine.undo import guarded
from .._engine.warnings import warn
from ..base_cam import reshape_layer_output
from ..registry import Registered

__all__ = ["DeepFeatureFactorization", "NMFResult", "create_labels_legend", "dff", "nmf", "run_dff_on_image"]

NMF_INITS = ("nndsvda", "random")
NEGATIVES = ("shift", "clamp")

#: How often (in iterations) the reconstruction error is measured for the ``tol`` stopping rule.
_CHECK_EVERY = 10


class NMFResult(NamedTuple):
    """``w`` ``(M, K)`` and ``h`` ``(K, N)``, non-negative, ``V ~ w @ h``, after ``n_iter`` updates."""

    w: torch.Tensor
    h: torch.Tensor
    n_iter: int


def _nndsvda(v: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """NNDSVD initialisation (Boutsidis & Gallopoulos, 2008), zeros filled with the mean of ``v``.

    For each of the top ``k`` singular triplets ``(s_j, u_j, v_j)``, the positive or the negative part
    of ``(u_j, v_j)``, whichever has the larger product of norms ``m``, is kept and normalised:
    ``w_j = sqrt(s_j m) u_j+ / |u_j+|``, ``h_j = sqrt(s_j m) v_j+ / |v_j+|``. The choice does not depend
    on the arbitrary sign of the singular vectors, so the initialisation is deterministic. Exact zeros
    are replaced by ``mean(v)`` ("NNDSVDa"): a multiplicative update can never move a zero.
    """
    u, s, vh = torch.linalg.svd(v, full_matrices=False)
    u, s, vh = u[:, :k], s[:k], vh[:k]  # (M, K), (K,), (K, N)
    tiny = torch.finfo(v.dtype).tiny
    up, un = u.clamp_min(0), (-u).clamp_min(0)  # (M, K)
    vp, vn = vh.clamp_min(0), (-vh).clamp_min(0)  # (K, N)
    up_norm, un_norm = up.norm(dim=0), un.norm(dim=0)  # (K,)
    vp_norm, vn_norm = vp.norm(dim=1), vn.norm(dim=1)  # (K,)
    m_pos, m_neg = up_norm * vp_norm, un_norm * vn_norm  # (K,)
    positive = m_pos > m_neg
    w_dir = torch.where(positive, up / up_norm.clamp_min(tiny), un / un_norm.clamp_min(tiny))  # (M, K)
    h_dir = torch.where(
        positive[:, None], vp / vp_norm.clamp_min(tiny)[:, None], vn / vn_norm.clamp_min(tiny)[:, None]
    )  # (K, N)
    scale = (s * torch.where(positive, m_pos, m_neg)).sqrt()  # (K,)
    w, h = w_dir * scale, h_dir * scale[:, None]
    mean = v.mean()
    w = torch.where(w == 0, mean, w)
    h = torch.where(h == 0, mean, h)
    return w, h


def _random_init(v: torch.Tensor, k: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``|N(0, 1)| * sqrt(mean(v) / k)`` from a CPU generator seeded with ``seed``.

    The same draw on any device, so that ``w @ h`` has about the mean of ``v``.
    """
    generator = torch.Generator().manual_seed(seed)
    scale = (v.mean() / k).sqrt()
    w = torch.randn(v.shape[0], k, generator=generator, dtype=v.dtype).abs().to(v.device) * scale
    h = torch.randn(k, v.shape[1], generator=generator, dtype=v.dtype).abs().to(v.device) * scale
    return w, h


def nmf(
    matrix: torch.Tensor,
    n_components: int,
    *,
    max_iter: int = 200,
    tol: float = 1e-4,
    init: str = "nndsvda",
    seed: int = 0,
) -> NMFResult:
    """Non-negative matrix factorisation ``V ~ W H`` by Lee & Seung's multiplicative updates.

    Minimises ``|V - W H|_F`` over ``W >= 0`` ``(M, K)`` and ``H >= 0`` ``(K, N)`` by alternating

        ``H <- H * (W^T V) / (W^T W H)``,   then   ``W <- W * (V H^T) / (W H H^T)``,

    each of which never increases the error (Lee & Seung, NIPS 2000). Denominators are clamped at the
    smallest normal float (a denominator is zero only where its numerator is, so this changes no scale).
    Every 10 updates the error is measured; the loop stops when it fell by less than
    ``tol * |V - W0 H0|_F`` over those 10 updates (``tol=0``: always ``max_iter`` updates).

    Computed on ``matrix``'s device, in float64 for a float64 matrix and float32 otherwise.

    Args:
        matrix: ``(M, N)`` non-negative tensor.
        n_components: ``K``, between 1 and ``min(M, N)``.
        max_iter: the most updates of both factors (0: only the initialisation).
        tol: the relative stopping tolerance, >= 0.
        init: ``"nndsvda"`` (default; deterministic, from the SVD, see ``_nndsvda``) or ``"random"``
            (``|N(0, 1)| * sqrt(mean(V) / K)`` from a generator seeded with ``seed``).
        seed: the seed of the random initialisation.

    Returns:
        :class:`NMFResult` ``(w, h, n_iter)``.

    Example:
        >>> v = torch.rand(20, 3) @ torch.rand(3, 30)
        >>> w, h, n_iter = nmf(v, 3, tol=0, max_iter=500)  # (20, 3), (3, 30); w @ h ~ v
    """
    if not isinstance(matrix, torch.Tensor):
        raise TypeError(f"matrix must be a torch.Tensor, got {type(matrix).__name__}")
    if matrix.ndim != 2:
        raise ValueError(f"matrix must be 2-D (M, N), got shape {tuple(matrix.shape)}")
    k = check_int(n_components, "n_components", 1)
    if k > min(matrix.shape):
        raise ValueError(
            f"n_components must be at most min(M, N) = {min(matrix.shape)} for a matrix of "
            f"shape {tuple(matrix.shape)}, got {k}"
        )
    max_iter = check_int(max_iter, "max_iter", 0)
    tol = check_float(tol, "tol", minimum=0)
    check_choice(init, "init", NMF_INITS)
    seed = check_int(seed, "seed", 0)
    v = matrix.detach().to(torch.float64 if matrix.dtype == torch.float64 else torch.float32)
    if not bool(torch.isfinite(v).all()):
        raise ValueError("matrix contains NaN or Inf")
    if bool((v < 0).any()):
        raise ValueError(f"matrix must be non-negative, its minimum is {float(v.min()):g}")

    w, h = _nndsvda(v, k) if init == "nndsvda" else _random_init(v, k, seed)
    tiny = torch.finfo(v.dtype).tiny
    error_0 = previous = float(torch.linalg.norm(v - w @ h)) if tol > 0 else 0.0
    n_iter = 0
    for n_iter in range(1, max_iter + 1):
        h = h * (w.T @ v) / ((w.T @ w) @ h).clamp_min(tiny)  # (K, N)
        w = w * (v @ h.T) / (w @ (h @ h.T)).clamp_min(tiny)  # (M, K)
        if tol > 0 and n_iter % _CHECK_EVERY == 0:
            error = float(torch.linalg.norm(v - w @ h))
            if previous - error <= tol * error_0:
                break
            previous = error
    return NMFResult(w, h, n_iter)


def _factorize(
    activations: torch.Tensor,
    n_components: int,
    max_iter: int,
    tol: float,
    init: str,
    seed: int,
    negatives: str,
) -> tuple[torch.Tensor, torch.Tensor]:
    """DFF of ``(B, C, *spatial)`` activations -> concepts ``(C, K)`` and heatmaps ``(B, K, *spatial)``.

    ``V`` = the activations as (channels x every position of every image); with negative values each
    channel with a negative minimum is shifted up by it (``negatives="shift"``) or ``V`` is clamped at
    0 (``"clamp"``). ``V - offset ~ W H`` by NMF, and each component is rescaled so that its heatmap
    peaks at 1 over the batch: ``W_k *= max(H_k)``, ``H_k /= max(H_k)``. The concepts are
    ``W + offset``: the activation vector where concept ``k`` alone is at full strength.
    """
    if activations.ndim < 3:
        raise ValueError(f"activations must have shape (B, C, *spatial), got {tuple(activations.shape)}")
    if not bool(torch.isfinite(activations).all()):
        raise ValueError("the activations contain NaN or Inf; DFF needs finite activations")
    dtype = torch.float64 if activations.dtype == torch.float64 else torch.float32
    acts = activations.detach().to(dtype)
    batch, channels, spatial = acts.shape[0], acts.shape[1], acts.shape[2:]
    v = acts.transpose(0, 1).reshape(channels, -1)  # (C, B*N): every position of every image
    k = check_int(n_components, "n_components", 1)
    if k > min(v.shape):
        raise ValueError(
            f"n_components must be at most min(channels, positions) = {min(v.shape)} (the "
            f"activations have {channels} channels and {v.shape[1]} positions over the batch), "
            f"got {k}"
        )
    if negatives == "shift":
        offset = v.amin(1).clamp_max(0)  # (C,): 0 for channels that are already non-negative
        v = v - offset[:, None]
    else:
        offset = torch.zeros(channels, dtype=dtype, device=v.device)
        v = v.clamp_min(0)
    if not bool((v > 0).any()):
        warn(
            "the activations are all zero (after making them non-negative): every concept and "
            "every explanation is zero",
            RuntimeWarning,
        )
    w, h, _ = nmf(v, k, max_iter=max_iter, tol=tol, init=init, seed=seed)  # (C, K), (K, B*N)
    peak = h.amax(1)  # (K,)
    empty = (peak <= 0).nonzero().flatten().tolist()
    if empty and bool((v > 0).any()):
        warn(f"NMF component(s) {empty} are empty (zero everywhere); use fewer n_components", RuntimeWarning)
    scale = torch.where(peak > 0, peak, torch.ones_like(peak))
    w, h = w * scale, h / scale[:, None]
    concepts = w + offset[:, None]  # (C, K)
    explanations = h.reshape(k, batch, *spatial).transpose(0, 1)  # (B, K, *spatial)
    return concepts, explanations


def dff(
    activations: np.ndarray | torch.Tensor,
    n_components: int = 5,
    *,
    max_iter: int = 200,
    tol: float = 1e-4,
    init: str = "nndsvda",
    seed: int = 0,
    negatives: str = "shift",
) -> tuple[np.ndarray, np.ndarray]:
    """Deep Feature Factorization of already computed activations (the reference library's ``dff``).

    Args:
        activations: ``(B, C, *spatial)`` numpy array or tensor (e.g. ``(B, C, H, W)``).
        n_components: the number of concepts ``K``, at most ``min(C, B * H * W)``.
        max_iter: the NMF's most updates of both factors (:func:`nmf`).
        tol: the NMF's relative stopping tolerance, >= 0.
        init: the NMF's initialisation, ``"nndsvda"`` (default) or ``"random"``.
        seed: the seed of the NMF's random initialisation.
        negatives: ``"shift"`` or ``"clamp"`` (see :class:`DeepFeatureFactorization`).

    Returns:
        ``(concepts, explanations)``: float32 ``(C, K)`` channel loadings and ``(B, K, *spatial)``
        heatmaps on the layer's grid (not resized), in [0, 1], each concept peaking at 1 over the batch.
    """
    check_choice(negatives, "negatives", NEGATIVES)
    if isinstance(activations, np.ndarray):
        activations = torch.from_numpy(activations)
    if not isinstance(activations, torch.Tensor):
        raise TypeError(
            f"activations must be a numpy array or a torch.Tensor, got {type(activations).__name__}"
        )
    if not activations.is_floating_point():
        activations = activations.float()
    concepts, explanations = _factorize(activations, n_components, max_iter, tol, init, seed, negatives)
    return (concepts.cpu().numpy().astype(np.float32), explanations.cpu().numpy().astype(np.float32))


class DeepFeatureFactorization(Registered):
    """Deep Feature Factorization (Collins, Achanta & Süsstrunk, arXiv:1806.10206).

    The target layer's activations of all ``B`` images are put side by side as a non-negative matrix
    ``V`` (channels ``C`` x positions ``B * H * W``) and factorised by NMF: ``V ~ W H``, ``W`` ``(C, K)``,
    ``H`` ``(K, B * H * W)``. Column ``k`` of ``W`` is a concept, a pattern of channels; row ``k`` of
    ``H``, cut per image, says where that concept is. Concepts are shared by the images of one call,
    so a call on several images co-segments them. No gradients, no targets.

    Details (see :func:`nmf` for the factorisation):
      * Negative activations (a layer before its ReLU, a transformer's tokens): with
        ``negatives="shift"`` (default, as the reference library) each channel whose minimum over the
        batch is negative is shifted up by it, ``V - offset ~ W H``, and the offset is added back to the
        concepts; channels that are already non-negative (every ReLU output) are left as they are, so
        on ReLU features this is exactly the paper's DFF. ``negatives="clamp"`` sets them to 0 instead.
      * Scale: each component is rescaled so that its heatmap peaks at 1 over the batch
        (``W_k *= max(H_k)``, ``H_k /= max(H_k)``). A concept vector ``W_k + offset`` is then the
        activation the factorisation predicts where concept ``k`` alone is at full strength, which is
        what ``computation_on_concepts`` (e.g. the classifier head) is applied to.
      * Explanations are those heatmaps resized (bilinear, as ``cv2.resize``) to the input: values in
        [0, 1], comparable across the images of the call (the reference normalises each map per image).
      * Deterministic: NNDSVDa initialisation by default (``init="random"`` uses ``seed``).

    Args:
        model: the network; left exactly as found (hooks only during a call, eval mode restored).
        target_layer: the layer whose output is factorised (a module, or a list holding one).
        reshape_transform: turns the layer's output into ``(B, C, *grid)``, e.g. ``vit_reshape_transform``;
            with one, the layer may return a dict or list of tensors, e.g. a detector's ``backbone``
            (FPN levels) with ``fpn_reshape_transform``.
        computation_on_concepts: optional callable applied to the ``(K, C)`` concept vectors, e.g.
            ``model.fc`` for a ResNet: its ``(K, num_classes)`` outputs (raw, no softmax) say what each
            concept is. An ``nn.Module`` runs in eval mode, restored afterwards.
        max_iter, tol, init, seed: of the NMF (defaults 200, 1e-4, ``"nndsvda"``, 0).
        negatives: ``"shift"`` or ``"clamp"``, see above.
        device: where to compute; by default the model's device.

    Call ``dff(input_tensor, n_components=16)`` with a ``(B, C_in, *spatial)`` tensor. Returns
    ``(concepts, explanations)``, or ``(concepts, explanations, concept_outputs)`` when
    ``computation_on_concepts`` is given, all float32 numpy arrays:

      * ``concepts``: ``(C, K)`` channel loadings (non-negative for non-negative activations);
      * ``explanations``: ``(B, K, *spatial)`` heatmaps at the input's size, in [0, 1]
        (``explanations[i]`` is image ``i``'s ``(K, H, W)``, for ``show_factorization_on_image``);
      * ``concept_outputs``: ``(K, ...)``, ``computation_on_concepts(concepts.T)``.

    Example:
        >>> dff = DeepFeatureFactorization(model, model.layer4, computation_on_concepts=model.fc)
        >>> concepts, explanations, logits = dff(x, n_components=4)  # (512, 4), (B, 4, 224, 224), (4, 1000)
        >>> probs = torch.softmax(torch.from_numpy(logits), -1)  # what each concept looks like to the model
        >>> vis = show_factorization_on_image(rgb, explanations[0], image_weight=0.3)
    """

    name = "dff"
    kind = "factorization"
    uses_gradients = False
    class_specific = False

    def __init__(
        self,
        model: nn.Module,
        target_layer: nn.Module | Sequence[nn.Module],
        reshape_transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
        computation_on_concepts: Callable[[torch.Tensor], torch.Tensor] | None = None,
        *,
        max_iter: int = 200,
        tol: float = 1e-4,
        init: str = "nndsvda",
        seed: int = 0,
        negatives: str = "shift",
        device: str | torch.device | None = None,
    ) -> None:
        """Check and store the model, the layer and the NMF options; see the class docstring."""
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        layers = check_layers(model, target_layer, None)
        if len(layers) != 1:
            raise ValueError(f"target_layer must be one layer, got {len(layers)}; DFF factorises one layer")
        if reshape_transform is not None and not callable(reshape_transform):
            raise TypeError(f"reshape_transform must be callable, got {type(reshape_transform).__name__}")
        if computation_on_concepts is not None and not callable(computation_on_concepts):
            raise TypeError(
                f"computation_on_concepts must be callable (e.g. the classifier head), got "
                f"{type(computation_on_concepts).__name__}"
            )
        self.model = model
        self.target_layer = layers[0]
        self.reshape_transform = reshape_transform
        self.computation_on_concepts = computation_on_concepts
        self.max_iter = check_int(max_iter, "max_iter", 1)
        self.tol = check_float(tol, "tol", minimum=0)
        self.init = check_choice(init, "init", NMF_INITS)
        self.seed = check_int(seed, "seed", 0)
        self.negatives = check_choice(negatives, "negatives", NEGATIVES)
        self.device = check_device(None, device)

    def __enter__(self) -> DeepFeatureFactorization:
        """The object itself, for ``with DeepFeatureFactorization(...) as dff:``."""
        return self

    def __exit__(self, *exc_info) -> None:
        """Nothing to release (hooks only exist during a call); exceptions propagate."""
        # Hooks only exist during a call: nothing to release, exceptions propagate.
        return None

    @guarded
    def __call__(self, input_tensor: torch.Tensor, n_components: int = 16) -> tuple:
        """``(concepts, explanations[, concept_outputs])`` for ``input_tensor``: see the class docstring."""
        x = check_input(input_tensor, self.model)
        check_int(n_components, "n_components", 1)
        with compute_session(self.model, self.device, x) as x:
            activations = self._activations(x)  # (B, C, *grid)
            concepts, explanations = _factorize(
                activations, n_components, self.max_iter, self.tol, self.init, self.seed, self.negatives
            )
            with torch.no_grad():
                batch, k = explanations.shape[:2]
                resized = resize_maps(
                    explanations.reshape(batch * k, *explanations.shape[2:]).float(), x.shape[2:]
                )
                resized = resized.reshape(batch, k, *x.shape[2:]).clamp(0, 1)  # (B, K, *spatial)
            result = (concepts.cpu().numpy().astype(np.float32), resized.cpu().numpy().astype(np.float32))
            if self.computation_on_concepts is None:
                return result
            return (*result, _concept_outputs(self.computation_on_concepts, concepts, x.dtype))

    @property
    def target_layers(self) -> list[nn.Module]:
        """The target layer as a one-element list, as the CAMs have it."""
        return [self.target_layer]

    def _activations(self, x: torch.Tensor) -> torch.Tensor:
        """The target layer's output as ``(B, C, *grid)``, in its own floating dtype."""
        layer = self.target_layer
        # The engine's forward pass: the layer captured (a dict/list of tensors allowed with a
        # reshape_transform, e.g. a detector's FPN levels), under no_grad, on a copy of the input, and the
        # engine's error for a layer that did not run.
        capture, _ = capture_forward(
            self.model,
            [layer],
            lambda: self.model(x.clone()),
            grad=False,
            structured=self.reshape_transform is not None,
        )
        raw = map_tensors(torch.Tensor.detach, capture.activations[id(layer)])
        reshaped = []

        def transform(output: Any) -> Any:
            output = output if self.reshape_transform is None else self.reshape_transform(output)
            reshaped.append(output)
            return output

        # The engine's checks and messages (a tensor with spatial dims); its float32 copy is not used:
        # a float64 layer is factorised in float64.
        reshape_layer_output(self.model, layer, transform, raw)
        return reshaped[0]


def _concept_outputs(
    head: Callable[[torch.Tensor], Any], concepts: torch.Tensor, dtype: torch.dtype
) -> np.ndarray:
    """``head`` (``computation_on_concepts``) on the concept vectors ``(K, C)``, in its own eval mode."""
    vectors = concepts.T.contiguous()  # (K, C)
    if isinstance(head, nn.Module):
        head_dev, head_dtype = model_device(head), model_float_dtype(head)
        vectors = vectors.to(device=head_dev or vectors.device, dtype=head_dtype or dtype)
        state: contextlib.AbstractContextManager = evaluation_state(head)
    else:
        vectors = vectors.to(dtype)
        state = contextlib.nullcontext()
    with state, torch.no_grad():
        outputs = head(vectors)
    if not isinstance(outputs, torch.Tensor):
        raise TypeError(f"computation_on_concepts must return a tensor, got {type(outputs).__name__}")
    return outputs.detach().float().cpu().numpy()


def create_labels_legend(
    concept_scores: np.ndarray, labels: Mapping[int, str] | Sequence[str], top_k: int = 2
) -> list[str]:
    """One legend string per concept: its ``top_k`` classes as ``"name:score"``, one per line.

    ``name`` is the class label up to its third comma-separated synonym. ``concept_scores`` is
    ``(K, num_classes)``, e.g. the softmax of a :class:`DeepFeatureFactorization` call's
    ``concept_outputs``; ``labels`` maps a class index to its name (a dict such as a Hugging Face
    ``model.config.id2label``, or a list). Feeds ``show_factorization_on_image(concept_labels=...)``.
    """
    scores = np.asarray(concept_scores)
    if scores.ndim != 2:
        raise ValueError(f"concept_scores must be (K, num_classes), got shape {scores.shape}")
    top_k = check_int(top_k, "top_k", 1)
    legend = []
    for row in scores:
        best = np.argsort(row)[::-1][:top_k]
        legend.append("\n".join(f"{','.join(str(labels[int(c)]).split(',')[:3])}:{row[c]:.2f}" for c in best))
    return legend


def run_dff_on_image(
    model: nn.Module,
    target_layer: nn.Module,
    classifier: Callable[[torch.Tensor], torch.Tensor],
    img_pil: Any,
    img_tensor: torch.Tensor,
    reshape_transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
    n_components: int = 5,
    top_k: int = 2,
    labels: Mapping[int, str] | Sequence[str] | None = None,
) -> np.ndarray:
    """DFF of one image, drawn: the image next to its concepts with a legend of the classifier's top classes.

    Args:
        model: the network, as for :class:`DeepFeatureFactorization`.
        target_layer: the layer to factorise, as for :class:`DeepFeatureFactorization`.
        classifier: applied to the concept vectors (``computation_on_concepts``); its softmax names them.
        img_pil: the image, ``(H, W, 3)`` RGB uint8 (a PIL image or a numpy array).
        img_tensor: the model's input for it, ``(C, H, W)``.
        reshape_transform: as for :class:`DeepFeatureFactorization`.
        n_components: the number of concepts.
        top_k: the classes shown per concept.
        labels: class index -> name; by default ``model.config.id2label`` (Hugging Face models), else
            the index itself.

    Returns:
        ``(H, 3 * W, 3)`` uint8: the image, the concepts on it, and the legend.
    """
    from ..utils.image import show_factorization_on_image

    rgb = np.asarray(img_pil)
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
        raise ValueError(
            f"img_pil must be an (H, W, 3) RGB uint8 image, got shape {rgb.shape} and dtype {rgb.dtype}"
        )
    if labels is None:
        labels = getattr(getattr(model, "config", None), "id2label", None)
    dff_ = DeepFeatureFactorization(
        model, target_layer, reshape_transform, computation_on_concepts=classifier
    )
    _, explanations, outputs = dff_(img_tensor[None], n_components)
    scores = torch.softmax(torch.from_numpy(outputs), dim=-1).numpy()
    if labels is None:
        labels = [str(i) for i in range(scores.shape[1])]
    legend = create_labels_legend(scores, labels, top_k)
    visualization = show_factorization_on_image(
        rgb.astype(np.float32) / 255, explanations[0], image_weight=0.3, concept_labels=legend
    )
    return np.hstack((rgb, visualization))
