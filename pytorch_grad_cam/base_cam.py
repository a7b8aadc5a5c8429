"""The engine shared by every CAM method: hooks, targets, the batched compute loop, fusion, smoothing.

A method is a small subclass of :class:`BaseCAM` that overrides :meth:`BaseCAM.cam_weights` (one weight
per channel, or per position) or, for the few that are not a weighted sum, :meth:`BaseCAM.layer_map`.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from functools import partial
from typing import Any, Callable, Iterator, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ._capture import LayerCapture, layer_name, map_tensors, tensors_of
from ._model_state import compute_session
from ._warnings import warn
from .utils.model_targets import ClassifierOutputTarget

Target = Callable[[torch.Tensor], torch.Tensor]
TargetsArg = Union[None, int, Target, Sequence[Union[int, Target]]]

_INTERPOLATION = {1: "linear", 2: "bilinear", 3: "trilinear"}
_MISSING = object()


def resize_maps(maps: torch.Tensor, size: Sequence[int], align_corners: bool = False) -> torch.Tensor:
    """Resize ``(B, *spatial)`` maps to ``(B, *size)``: (bi/tri)linear, half-pixel centres by default
    (the same sampling as ``cv2.resize``)."""
    size = tuple(int(s) for s in size)
    if tuple(maps.shape[1:]) == size:
        return maps
    mode = _INTERPOLATION[len(size)]
    return F.interpolate(maps.unsqueeze(1), size=size, mode=mode, align_corners=align_corners)[:, 0]


def min_max_normalize(maps: torch.Tensor, eps: float = 1e-7) -> torch.Tensor:
    """Per map: ``(m - min) / (max - min + eps)`` over all positions. ``(B, *spatial)`` in and out."""
    flat = maps.flatten(1)  # (B, N)
    flat = flat - flat.amin(1, keepdim=True)
    flat = flat / (flat.amax(1, keepdim=True) + eps)
    return flat.view_as(maps)


def broadcast_weights(weights: torch.Tensor, activations: torch.Tensor) -> torch.Tensor:
    """``(B, C)`` channel weights viewed as ``(B, C, 1, ..., 1)`` to multiply ``(B, C, *spatial)``."""
    return weights.reshape(*weights.shape, *([1] * (activations.ndim - weights.ndim)))


def first_principal_component(activations: torch.Tensor) -> torch.Tensor:
    """Projection of each position on the first principal component of the channels.

    ``(B, C, *spatial)`` -> ``(B, *spatial)``. Per image the activations are reshaped to
    ``X`` = (positions x channels), each channel is centred, and ``X v`` is returned, with ``v`` the
    first right singular vector of ``X`` (EigenCAM, arXiv:2008.00299). Computed in float32 in one
    batched SVD.

    The sign of a singular vector is arbitrary (it depends on the SVD backend), so it is fixed here:
    the projection is made to correlate non-negatively with the channel sum of the activations, the
    map one gets without the SVD. For EigenCAM that is the total activation; for eigen smoothing of
    ``w * A`` it is the plain CAM. So the component always points at what the layer responds to, never
    at the background.
    """
    acts = torch.nan_to_num(activations.float(), nan=0.0)
    x = acts.flatten(2).transpose(1, 2)  # (B, N, C)
    x = x - x.mean(1, keepdim=True)
    _, _, vh = torch.linalg.svd(x, full_matrices=False)  # vh: (B, min(N, C), C)
    projection = (x @ vh[:, 0, :, None])[..., 0]  # (B, N)
    return orient_like_channel_sum(projection, acts)


def orient_like_channel_sum(projection: torch.Tensor, activations: torch.Tensor) -> torch.Tensor:
    """Fix the arbitrary sign of a component: ``(B, N)`` projections are flipped where they correlate
    negatively with the channel sum of ``(B, C, *spatial)`` activations; returns ``(B, *spatial)``."""
    reference = activations.flatten(2).sum(1)  # (B, N)
    reference = reference - reference.mean(1, keepdim=True)
    sign = torch.where((projection * reference).sum(1) < 0, -1.0, 1.0)  # (B,)
    return (projection * sign[:, None]).view(activations.shape[0], *activations.shape[2:])


def select_output(output: Any, index: int, batch: int) -> Any:
    """Image ``index``'s part of a model output: a tensor row, a list element, or a dict of rows."""
    if isinstance(output, torch.Tensor):
        return output[index]
    if isinstance(output, dict):
        return {key: select_output(value, index, batch) for key, value in output.items()}
    if isinstance(output, (list, tuple)):
        if len(output) == batch and all(isinstance(o, dict) for o in output):
            return output[index]  # detection models: one dict per image
        return type(output)(select_output(value, index, batch) for value in output)
    return output


def _as_target(target: Any, where: str) -> Target:
    if isinstance(target, (int, np.integer)) and not isinstance(target, (bool, np.bool_)):
        if target < 0:
            raise ValueError(f"{where} must be a class index >= 0 or a callable target, got {int(target)}")
        return ClassifierOutputTarget(int(target))
    if not callable(target):
        raise TypeError(f"{where} must be a callable target (e.g. ClassifierOutputTarget(281)) or a class "
                        f"index, got {type(target).__name__}")
    return target


def _gradient_or_zeros(grads: dict, activation: torch.Tensor) -> torch.Tensor:
    gradient = grads.get(id(activation))
    return torch.zeros_like(activation) if gradient is None else gradient.detach()


def target_scores(targets: Sequence[Target], output: Any, batch: int) -> torch.Tensor:
    """Each image's target score on the model output, ``(B,)``: ``targets[i]`` gets image ``i``'s part
    (:func:`select_output`). Refuses a target that does not return a scalar tensor and a score that is
    not finite (NaN or Inf), naming the image(s). Grad mode is the caller's."""
    scores = []
    for i, target in enumerate(targets):
        score = target(select_output(output, i, batch))
        if not isinstance(score, torch.Tensor) or score.numel() != 1:
            got = tuple(score.shape) if isinstance(score, torch.Tensor) else type(score).__name__
            raise ValueError(f"targets[{i}] ({target!r}) must return a scalar tensor computed from "
                             f"the model output, got {got}")
        scores.append(score.reshape(()))
    scores = torch.stack(scores)
    bad = (~torch.isfinite(scores.detach())).nonzero().flatten().tolist()
    if bad:
        raise ValueError(f"the target score is not finite (NaN or Inf) for image(s) {bad}")
    return scores


def reshape_layer_output(model: nn.Module, layer: nn.Module, reshape_transform: Optional[Callable],
                         output: Any) -> torch.Tensor:
    """A target layer's output (or its gradient) as float32 ``(B, C, *spatial)``: through
    ``reshape_transform`` when given (it may take a structure of tensors, e.g. an FPN's dict of levels,
    and must return one tensor); refuses anything without spatial dimensions, saying what to do."""
    if reshape_transform is not None:
        output = reshape_transform(output)
        if not isinstance(output, torch.Tensor):
            raise TypeError(f"reshape_transform must return a tensor (B, C, *spatial), got "
                            f"{type(output).__name__} for target layer '{layer_name(model, layer)}'")
    if output.ndim < 3:
        raise ValueError(f"target layer '{layer_name(model, layer)}' gives shape "
                         f"{tuple(output.shape)}; a CAM needs (B, C, *spatial): choose a layer with "
                         "spatial output or pass a reshape_transform (e.g. vit_reshape_transform for "
                         "transformer tokens)")
    return output.float()


_CONSTANT_REASON = "often: all weights negative, or no positive evidence for the target"


def warn_if_constant(maps: torch.Tensor, what: str, reason: str = _CONSTANT_REASON) -> None:
    """A ``RuntimeWarning`` naming the images whose ``(B, *spatial)`` map is constant (it normalises to
    all zeros), attributed to the user's line. ``what`` names the map, e.g. "the CAM of layer 'layer4'";
    ``reason`` says why it usually happens for this method."""
    flat = maps.flatten(1)
    constant = (flat.amax(1) == flat.amin(1)).nonzero().flatten().tolist()
    if constant:
        warn(f"{what} is constant for image(s) {constant} ({reason}); its map is all zeros", RuntimeWarning)


@dataclass
class LayerContext:
    """What a method may use besides the activations and gradients of one target layer."""

    model: nn.Module
    layer: nn.Module
    input: torch.Tensor  # (B, C_in, *spatial): the input on the model's device and dtype
    targets: List[Target]  # one per image
    scores: torch.Tensor  # (B,) float32: each image's target score on the unmodified input
    # The layer's output as the model produced it (before reshape_transform): a tensor, or the dict/list/tuple
    # of tensors of a layer such as a feature pyramid (only with a reshape_transform).
    raw_activations: Any
    prefix: Optional[list]  # outermost module calls completed before the layer (record_prefix methods)
    batch_size: int
    channel_dim: int  # the channel axis of raw_activations


class BaseCAM:
    """Base class of every CAM method: hooks, targets, device, the batched loop, fusion and smoothing.

    Args:
        model: the network; any ``nn.Module`` taking ``(B, C, *spatial)``. Left exactly as it was:
            training flags, ``requires_grad``, ``.grad`` and devices are restored after every call.
        target_layers: the layer(s) to explain, a list or a single module. Their maps are made,
            normalised and resized to the input, then averaged.
        reshape_transform: turns a layer's output (and its gradient) into ``(B, C, *grid)``, e.g.
            :func:`pytorch_grad_cam.utils.reshape_transforms.vit_reshape_transform`.
        device: where to compute; by default the model's device. ``use_cuda=True`` (first API) means
            ``device="cuda"``. A model elsewhere is moved for the call and moved back after it.
        tta_transforms: a ``ttach.Compose`` for ``aug_smooth`` (default: horizontal flip x multiply
            by 0.9, 1.0, 1.1).
        batch_size: how many perturbed inputs go through the model at once (perturbation methods).
        target_layer, use_cuda: the first API generation's names, still accepted.

    Call ``cam(input_tensor, targets=None, aug_smooth=False, eigen_smooth=False)`` with a
    ``(B, C, *spatial)`` tensor; it returns ``np.float32`` maps ``(B, *spatial)`` in ``[0, 1]``.

    Example:
        >>> cam = GradCAM(model, target_layers=[model.layer4[-1]])
        >>> maps = cam(x, targets=[ClassifierOutputTarget(281)])  # (1, 224, 224)
    """

    #: Whether the method needs the gradient of the score with respect to the activations.
    uses_gradients: bool = True
    #: Whether the method needs the outermost module calls that ran before the target layer.
    records_prefix: bool = False
    #: The default of ``batch_size``.
    default_batch_size: int = 32
    #: Whether the map depends on the targets (EigenCAM, KPCA-CAM, FEM and RandomCAM ignore them).
    class_specific: bool = True
    #: Whether two calls on the same input give the same map (RandomCAM without a seed does not).
    deterministic: bool = True
    #: Whether the method runs the model on many perturbed inputs, ``batch_size`` at a time.
    perturbation: bool = False
    #: Whether the map comes from ``target_layers``. FullGrad's does not: it uses every layer with a bias,
    #: so its ``target_layers`` may be left out (and are ignored when given).
    uses_target_layers: bool = True

    def __init__(
        self,
        model: nn.Module,
        target_layers: Union[None, nn.Module, Sequence[nn.Module]] = None,
        reshape_transform: Optional[Callable[[torch.Tensor], torch.Tensor]] = None,
        *,
        target_layer: Optional[nn.Module] = None,
        use_cuda: Optional[bool] = None,
        device: Union[None, str, torch.device] = None,
        tta_transforms: Any = None,
        batch_size: Optional[int] = None,
    ) -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        if isinstance(reshape_transform, bool):
            # First-generation positional call: GradCAM(model, target_layer, use_cuda).
            if use_cuda is not None:
                raise TypeError("use_cuda given twice (positionally and by name)")
            reshape_transform, use_cuda = None, reshape_transform
        if reshape_transform is not None and not callable(reshape_transform):
            raise TypeError(f"reshape_transform must be callable, got {type(reshape_transform).__name__}")
        self.model = model
        if not self.uses_target_layers and target_layers is None and target_layer is None:
            self.target_layers: List[nn.Module] = []
        else:
            self.target_layers = self._check_layers(model, target_layers, target_layer)
        self.reshape_transform = reshape_transform
        self.device = self._check_device(use_cuda, device)
        self.tta_transforms = tta_transforms
        self.batch_size = self.default_batch_size if batch_size is None else batch_size

    # -- configuration -------------------------------------------------------------------------
    @staticmethod
    def _check_layers(model, target_layers, target_layer) -> List[nn.Module]:
        if target_layers is not None and target_layer is not None:
            raise TypeError("pass target_layers (a list) or target_layer (the first API's name), not both")
        layers = target_layers if target_layers is not None else target_layer
        if layers is None:
            raise TypeError("target_layers is required: the layer(s) to explain, e.g. [model.layer4[-1]]")
        if isinstance(layers, nn.Module):
            layers = [layers]  # one module means that module, even an iterable nn.Sequential
        try:
            layers = list(layers)
        except TypeError:
            raise TypeError(
                f"target_layers must be a list of nn.Module, got {type(layers).__name__}") from None
        if not layers:
            raise ValueError("target_layers is empty; give at least one layer")
        in_model = {id(m) for m in model.modules()}
        for i, layer in enumerate(layers):
            if not isinstance(layer, nn.Module):
                raise TypeError(f"target_layers[{i}] must be an nn.Module, got {type(layer).__name__}")
            if id(layer) not in in_model:
                raise ValueError(f"target_layers[{i}] ({type(layer).__name__}) is not a module of the model")
        if len({id(layer) for layer in layers}) != len(layers):
            raise ValueError("target_layers lists the same module more than once")
        return layers

    @staticmethod
    def _check_device(use_cuda, device) -> Optional[torch.device]:
        if use_cuda is not None and device is not None:
            raise TypeError("pass device or use_cuda (the first API's name), not both")
        if use_cuda:
            device = "cuda"
        if device is None:
            return None
        device = torch.device(device)
        if device.type == "cuda":
            if not torch.cuda.is_available():
                raise ValueError(f"device {device} was requested (use_cuda=True or device='cuda') but CUDA "
                                 "is not available here; use device='cpu' or leave it out to follow the "
                                 "model")
            if device.index is None:
                device = torch.device("cuda", torch.cuda.current_device())
        return device

    @property
    def batch_size(self) -> int:
        """Perturbed inputs per forward pass (ScoreCAM, AblationCAM). Settable: ``cam.batch_size = 32``."""
        return self._batch_size

    @batch_size.setter
    def batch_size(self, value: int) -> None:
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
            raise TypeError(f"batch_size must be a positive int, got {type(value).__name__}")
        if value <= 0:
            raise ValueError(f"batch_size must be a positive int, got {value}")
        self._batch_size = int(value)

    def __enter__(self) -> "BaseCAM":
        return self

    def __exit__(self, *exc_info) -> None:
        # Hooks only exist during a call, so there is nothing to release; exceptions propagate.
        return None

    # -- what a method overrides -------------------------------------------------------------
    def cam_weights(self, activations: torch.Tensor, gradients: Optional[torch.Tensor],
                    context: LayerContext) -> torch.Tensor:
        """Channel weights ``(B, C)`` (or position weights ``(B, C, *spatial)``), float32."""
        raise NotImplementedError(f"{type(self).__name__} must implement cam_weights or layer_map")

    def layer_map(self, activations: torch.Tensor, gradients: Optional[torch.Tensor],
                  context: LayerContext, eigen_smooth: bool) -> torch.Tensor:
        """One target layer's map ``(B, *spatial)`` before ReLU: ``sum_k w_k A_k``, or the first principal
        component of ``w * A`` with ``eigen_smooth``."""
        weights = self.cam_weights(activations, gradients, context)
        weighted = broadcast_weights(weights, activations) * activations  # (B, C, *spatial)
        if eigen_smooth:
            return first_principal_component(weighted)
        return weighted.sum(1)

    # -- the public call -----------------------------------------------------------------------
    def __call__(self, input_tensor: torch.Tensor, targets: TargetsArg = None, aug_smooth: bool = False,
                 eigen_smooth: bool = False, *, target_category: Any = _MISSING) -> np.ndarray:
        """Maps ``(B, *spatial)`` float32 in ``[0, 1]`` for a ``(B, C, *spatial)`` input.

        ``targets``: ``None`` (each image's top class), one class index or target for every image, or a
        list with one per image of class indices or callables (``ClassifierOutputTarget(k)``...).
        ``target_category`` is the first API's name for the same thing.
        """
        if target_category is not _MISSING:
            if targets is not None:
                raise TypeError("pass targets or target_category (the first API's name), not both")
            targets = target_category
        x = self._check_input(input_tensor)
        target_list = self._check_targets(targets, x.shape[0])
        if aug_smooth:
            maps = self._augmentation_smoothing(x, target_list, eigen_smooth)
        else:
            maps = self._compute(x, target_list, eigen_smooth)
        return maps.detach().cpu().numpy().astype(np.float32, copy=False)

    def forward(self, input_tensor: torch.Tensor, targets: TargetsArg = None,
                eigen_smooth: bool = False) -> np.ndarray:
        """The call without augmentation smoothing (the reference library's ``forward``)."""
        return self(input_tensor, targets, eigen_smooth=eigen_smooth)

    # -- validation ----------------------------------------------------------------------------
    @staticmethod
    def _check_input(input_tensor) -> torch.Tensor:
        if not isinstance(input_tensor, torch.Tensor):
            raise TypeError(f"input_tensor must be a torch.Tensor of shape (B, C, *spatial), got "
                            f"{type(input_tensor).__name__}")
        if not input_tensor.is_floating_point():
            raise TypeError(f"input_tensor must be a floating-point tensor, got dtype {input_tensor.dtype}")
        if input_tensor.ndim < 3:
            raise ValueError(f"input_tensor must have shape (B, C, *spatial) with 1-3 spatial dims, got "
                             f"shape {tuple(input_tensor.shape)}")
        if input_tensor.shape[0] == 0:
            raise ValueError("input_tensor is an empty batch (B == 0)")
        if input_tensor.ndim - 2 not in _INTERPOLATION:
            raise ValueError(
                f"input_tensor has {input_tensor.ndim - 2} spatial dims; 1, 2 or 3 are supported")
        if not bool(torch.isfinite(input_tensor).all()):
            raise ValueError("input_tensor contains NaN or Inf")
        return input_tensor

    @staticmethod
    def _check_targets(targets: TargetsArg, batch: int) -> Optional[List[Target]]:
        if targets is None:
            return None
        if isinstance(targets, (int, np.integer)) or callable(targets):
            return [_as_target(targets, "targets")] * batch  # one target for every image
        if isinstance(targets, (torch.Tensor, np.ndarray)) and targets.ndim == 0:
            return [_as_target(targets.item(), "targets")] * batch  # a 0-dim class index, for every image
        if isinstance(targets, torch.Tensor):
            targets = targets.tolist()
        if isinstance(targets, (str, bytes)):
            raise TypeError(f"targets must be None, a class index, a callable or a list of those, got "
                            f"{type(targets).__name__} {targets!r}")
        try:
            targets = list(targets)
        except TypeError:
            raise TypeError(f"targets must be None, a class index, a callable or a list of those, got "
                            f"{type(targets).__name__}") from None
        if len(targets) != batch:
            raise ValueError(f"targets has {len(targets)} entries but the batch has {batch} images; give one "
                             "target per image (or None for each image's top class)")
        return [_as_target(t, f"targets[{i}]") for i, t in enumerate(targets)]

    # -- the engine ----------------------------------------------------------------------------
    def _compute(self, input_tensor: torch.Tensor, targets: Optional[List[Target]],
                 eigen_smooth: bool) -> torch.Tensor:
        """Fused maps ``(B, *spatial)``, float32, on the compute device."""
        with self._session(input_tensor) as x:  # (B, C, *spatial) on the model's device and dtype
            capture, output = self._forward(x)
            targets = self._resolve_targets(targets, output, x.shape[0])
            scores = self._scores(targets, output, x.shape[0])  # (B,)
            gradients = self._gradients(scores, capture) if self.uses_gradients else {}
            maps = self._layer_maps(x, targets, scores, capture.activations, gradients, eigen_smooth,
                                    capture.prefix)
            del capture, output, gradients
            with torch.no_grad():
                fused = self._fuse(maps)  # (B, *spatial)
                return min_max_normalize(fused)

    def _layer_maps(self, x: torch.Tensor, targets: List[Target], scores: torch.Tensor, activations: dict,
                    gradients: dict, eigen_smooth: bool,
                    prefixes: Optional[dict] = None) -> List[torch.Tensor]:
        """Each target layer's map, ready for :meth:`_fuse`: ``(B, *spatial)`` at the input's size, in
        ``[0, 1]`` (``relu(layer_map)``, min-max normalised, resized), one per layer in order.

        ``x``: the input ``(B, C, *spatial)``; ``scores``: ``(B,)`` the targets' scores on it;
        ``activations``/``gradients``/``prefixes``: keyed by ``id(layer)``, each layer's output as the model
        produced it (a tensor or a structure such as a dict of FPN levels), its gradient in the same
        layout (no entry: the method uses none) and the module calls before it (``records_prefix``).
        """
        spatial = x.shape[2:]
        prefixes = {} if prefixes is None else prefixes
        maps = []
        for layer in self.target_layers:
            key = id(layer)
            raw = map_tensors(torch.Tensor.detach, activations[key])
            context = LayerContext(
                model=self.model, layer=layer, input=x, targets=targets,
                scores=scores.detach().float(), raw_activations=raw,
                prefix=prefixes.get(key), batch_size=self.batch_size,
                channel_dim=1 if self.reshape_transform is None else -1)
            layer_activations = self._reshape(raw, layer)  # (B, C, *grid)
            grads = self._reshape_gradients(gradients[key], layer) if key in gradients else None
            with torch.no_grad():
                layer_cam = self.layer_map(layer_activations, grads, context, eigen_smooth).float()
                maps.append(resize_maps(self._normalize(layer_cam.relu(), layer), spatial))
        return maps

    def _fuse(self, maps: List[torch.Tensor]) -> torch.Tensor:
        """The target layers' maps, each ``(B, *spatial)`` in ``[0, 1]`` at the input's size, made into one
        ``(B, *spatial)`` map (min-max normalised afterwards): their mean. A method that combines layers
        differently (RefineCAM: their product) overrides this."""
        return torch.stack(maps, 1).relu().mean(1)  # (B, *spatial)

    @contextlib.contextmanager
    def _session(self, input_tensor: torch.Tensor) -> Iterator[torch.Tensor]:
        """The model in eval mode on the compute device, and the input there.

        ``inference_mode(False)``: the call must also work inside the user's ``torch.inference_mode()``.
        The model is never given this tensor itself, only copies (``_run_model``), so a model that
        modifies its input in place changes neither the user's tensor nor what later passes see.
        """
        with compute_session(self.model, self.device, input_tensor) as x:
            yield x

    def _run_model(self, x: torch.Tensor) -> Any:
        return self.model(x.clone())

    def _forward(self, x: torch.Tensor):
        """One forward pass with the target layers captured; returns (capture, model output)."""
        capture = LayerCapture(self.model, self.target_layers, grad=self.uses_gradients,
                               record_prefix=self.records_prefix,
                               structured=self.reshape_transform is not None)
        with capture, torch.no_grad():
            # Under no_grad until the first target layer, whose hook turns autograd on.
            output = self._run_model(x)
        missing = [layer for layer in self.target_layers if id(layer) not in capture.activations]
        if missing:
            names = ", ".join(f"'{layer_name(self.model, layer)}'" for layer in missing)
            raise ValueError(f"target layer(s) {names} did not run in the model's forward pass; choose "
                             "layers that the forward pass uses")
        return capture, output

    @staticmethod
    def _resolve_targets(targets, output, batch) -> List[Target]:
        if targets is not None:
            return targets
        if not isinstance(output, torch.Tensor) or output.ndim != 2 or output.shape[0] != batch:
            shape = tuple(output.shape) if isinstance(output, torch.Tensor) else type(output).__name__
            raise ValueError(f"targets=None picks each image's top class, which needs a (B, num_classes) "
                             f"output; this model returns {shape}: pass explicit targets")
        return [ClassifierOutputTarget(int(k)) for k in output.argmax(-1).tolist()]

    def _scores(self, targets: List[Target], output, batch: int) -> torch.Tensor:
        """Each image's target score, ``(B,)``, still attached to the graph when gradients are used."""
        with torch.enable_grad() if self.uses_gradients else torch.no_grad():
            return target_scores(targets, output, batch)

    def _layer_gradients(self, scores: torch.Tensor, capture: LayerCapture,
                         create_graph: bool = False) -> Tuple[List[list], List[list]]:
        """For each target layer: its captured tensors that require grad (one, or several for a layer
        returning a structure such as an FPN's dict of levels), and the gradient of the summed scores
        with respect to each (None where the score does not use it). Refuses a layer that gets none."""
        layers = self.target_layers
        if not scores.requires_grad:
            raise ValueError("the target scores do not depend on the target layers' activations (no "
                             "gradient reaches them): the target must return a value computed from the "
                             "model output, and the layers must come before the output")
        per_layer = [[t for t in tensors_of(capture.activations[id(layer)]) if t.requires_grad]
                     for layer in layers]
        inputs = [t for tensors in per_layer for t in tensors]
        # Only the graph from the target layers to the score is differentiated; parameters' .grad
        # are neither read nor written.
        flat = iter(torch.autograd.grad(scores.sum(), inputs, allow_unused=True, create_graph=create_graph))
        grads_per_layer = [[next(flat) for _ in tensors] for tensors in per_layer]
        unused = [layer_name(self.model, layer) for layer, grads in zip(layers, grads_per_layer)
                  if all(g is None for g in grads)]
        if unused:
            raise ValueError(f"no gradient reaches target layer(s) {unused}: the score does not depend on "
                             "them; choose layers on the path to the output")
        return per_layer, grads_per_layer

    def _gradients(self, scores: torch.Tensor, capture: LayerCapture) -> dict:
        per_layer, grads_per_layer = self._layer_gradients(scores, capture)
        grads = {}
        for layer, tensors, layer_grads in zip(self.target_layers, per_layer, grads_per_layer):
            by_tensor = {id(t): g for t, g in zip(tensors, layer_grads)}
            # A tensor of the structure that the score does not use (an unused pyramid level) gets zeros.
            grads[id(layer)] = map_tensors(partial(_gradient_or_zeros, by_tensor),
                                           capture.activations[id(layer)])
        self._warn_zero_gradients(grads, scores.shape[0])
        return grads

    def _warn_zero_gradients(self, grads: dict, batch: int) -> None:
        """Warn about images whose target score has an exactly-zero gradient in every target layer."""
        nonzero = torch.zeros(batch, dtype=torch.bool)
        for structure in grads.values():
            for g in tensors_of(structure):
                if g.ndim and g.shape[0] == batch:
                    nonzero |= g.reshape(batch, -1).ne(0).any(1).cpu()
                else:
                    nonzero[:] = True  # not per image: cannot tell
        zero = (~nonzero).nonzero().flatten().tolist()
        if zero:
            warn(f"the gradient of the target score with respect to the target layers is exactly "
                          f"zero for image(s) {zero}: the score does not change with these activations "
                          "(e.g. a FasterRCNNBoxScoreTarget whose boxes match no detection, or a score read "
                          "past a saturated/dead unit), so their gradient-based maps carry no information",
                          RuntimeWarning)

    def _reshape(self, tensor: torch.Tensor, layer: nn.Module) -> torch.Tensor:
        return reshape_layer_output(self.model, layer, self.reshape_transform, tensor)

    def _reshape_gradients(self, gradients: Any, layer: nn.Module) -> torch.Tensor:
        """A layer's gradient in the layout :meth:`layer_map` gets (by default the activations')."""
        return self._reshape(gradients, layer)

    def _normalize(self, maps: torch.Tensor, layer: nn.Module) -> torch.Tensor:
        # The warning points at the user's call: _normalize, _layer_maps, _compute, __call__, the caller.
        warn_if_constant(maps, f"the CAM of layer '{layer_name(self.model, layer)}'")
        return min_max_normalize(maps)

    # -- smoothing -----------------------------------------------------------------------------
    def _augmentation_smoothing(self, x: torch.Tensor, targets: Optional[List[Target]],
                                eigen_smooth: bool) -> torch.Tensor:
        """Test-time augmentation: every augmented copy in one batch, each map de-augmented, averaged."""
        transforms = self.tta_transforms
        if transforms is None:
            if x.ndim != 4:
                raise ValueError("aug_smooth's default augmentations are for 2D images (B, C, H, W); pass "
                                 "tta_transforms for other inputs")
            import ttach as tta

            transforms = tta.Compose([tta.HorizontalFlip(), tta.Multiply(factors=[0.9, 1, 1.1])])
        transforms = list(transforms)
        batch = x.shape[0]
        if targets is None:
            # Explain each image's top class on the unaugmented image, the same class in every copy.
            with self._session(x) as x_on_device, torch.no_grad():
                output = self._run_model(x_on_device)
            targets = self._resolve_targets(None, output, batch)
        augmented = torch.cat([t.augment_image(x) for t in transforms])  # (T*B, C, *spatial)
        maps = self._compute(augmented, targets * len(transforms), eigen_smooth)  # (T*B, *spatial)
        maps = maps.view(len(transforms), batch, *maps.shape[1:])
        restored = [t.deaugment_mask(m.unsqueeze(1))[:, 0] for t, m in zip(transforms, maps)]
        return torch.stack(restored).mean(0)
