"""Projection CAMs: the map is the activations' projection on a principal component.

Of ``A``, of ``g * A`` for Eigen-Grad-CAM, or in a kernel's feature space for KPCA-CAM.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from .._engine.checks import check_choice, check_float, check_int
from .._engine.maps import first_principal_component, orient_like_channel_sum
from ..base_cam import BaseCAM, LayerContext


class EigenCAM(BaseCAM):
    """Eigen-CAM (Muhammad & Yeasin, arXiv:2008.00299).

    The map is the projection of the activations on their first principal component: per image, the
    activations as (positions x channels), each channel centred, times the first right singular vector.
    Class-agnostic (targets are ignored) and gradient-free. The sign is fixed so that the map
    correlates positively with the total activation (see ``first_principal_component``).
    """

    name = "eigencam"
    principal_component = True
    uses_gradients = False
    class_specific = False

    def layer_map(
        self,
        activations: torch.Tensor,
        gradients: torch.Tensor | None,
        context: LayerContext,
        eigen_smooth: bool,
    ) -> torch.Tensor:
        """The first principal component of the activations, ``(B, *spatial)``."""
        return first_principal_component(activations)  # (B, *spatial)


class SegEigenCAM(BaseCAM):
    """Seg-Eigen-CAM (Chung & Ying, Applied Sciences 2025): the first principal component of ``|g| * A``.

    The activations weighted by the magnitude of their gradient, made for semantic segmentation. The
    component's sign is fixed by the rule of ``first_principal_component``: the map correlates positively with
    the channel sum of ``|g| * A``.
    """

    name = "segeigencam"
    principal_component = True

    def layer_map(
        self,
        activations: torch.Tensor,
        gradients: torch.Tensor,
        context: LayerContext,
        eigen_smooth: bool,
    ) -> torch.Tensor:
        """The first principal component of ``|g| * A``, ``(B, *spatial)``."""
        return first_principal_component(gradients.abs() * activations)  # (B, *spatial)


def _kernel(x: torch.Tensor, kernel: str, gamma: float, degree: int, coef0: float) -> torch.Tensor:
    """``(B, N, C)`` rows -> ``(B, N, N)`` kernel matrices (scikit-learn's definitions) minus a constant.

    KPCA-CAM double-centres the kernel matrix, which removes any constant, so each kernel is computed
    without its constant part: ``exp(-g d^2) - 1`` (``expm1``), ``tanh(g x.y + c) - tanh(c)`` and
    ``(g x.y + c)^d - c^d`` in closed forms that never subtract two nearly equal numbers. Written as in
    scikit-learn, the term ``g x.y`` is lost next to ``c`` (and ``d^2`` next to 1) once it falls below
    float64's resolution (``1e-16 * c``): with small activations (``|x| ~ 1e-8``, as in randomly
    initialised or deep unnormalised layers) every entry rounds to the same number and the map is flat.
    """
    if kernel == "linear":
        return x @ x.transpose(1, 2)
    if kernel == "rbf":
        return torch.expm1(-gamma * torch.cdist(x, x).pow(2))
    if kernel == "sigmoid":
        # tanh(a + c) - tanh(c) = tanh(a) sech(c)^2 / (1 + tanh(a) tanh(c)): exact, and free of cancellation
        # for |a| < 1 (the denominator is then >= 0.23); the plain difference elsewhere, where it is accurate.
        a = gamma * (x @ x.transpose(1, 2))
        t = torch.tanh(a)
        sech2 = 4 * math.exp(-2 * abs(coef0)) / (1 + math.exp(-2 * abs(coef0))) ** 2  # no overflow
        small = t * sech2 / (1 + t * math.tanh(coef0))
        return torch.where(a.abs() < 1, small, torch.tanh(a + coef0) - math.tanh(coef0))
    if kernel == "poly":
        # (u + c)^d - c^d = u * sum_{j<d} (u + c)^j c^(d-1-j), for an integer degree d >= 1
        u = gamma * (x @ x.transpose(1, 2))
        a = u + coef0
        return u * sum(a.pow(j) * coef0 ** (degree - 1 - j) for j in range(degree))
    if kernel == "cosine":
        # Scale-free: a global rescale first keeps tiny rows away from normalize's eps (1e-12).
        scale = x.abs().amax((1, 2), keepdim=True).clamp_min(torch.finfo(x.dtype).tiny)
        unit = torch.nn.functional.normalize(x / scale, dim=-1)
        return unit @ unit.transpose(1, 2)
    raise ValueError(f"kernel must be one of {KPCA_KERNELS}, got {kernel!r}")


KPCA_KERNELS = ("linear", "rbf", "sigmoid", "poly", "cosine")


class KPCA_CAM(BaseCAM):
    """KPCA-CAM (Karmani et al., arXiv:2410.00267): Eigen-CAM with kernel PCA.

    Per image the activations become ``X`` = (positions x channels), centred per channel; ``K`` is
    the kernel matrix of the rows, double-centred (``K - 1K - K1 + 1K1``), and the map is the first
    kernel principal component ``sqrt(lambda_1) * alpha_1`` (top eigenpair of the centred ``K``),
    sign-fixed like Eigen-CAM. Gradient-free and class-agnostic.

    Args (besides BaseCAM's): ``kernel`` ('linear', 'rbf', 'sigmoid' (default), 'poly', 'cosine'),
    ``gamma`` (default ``1 / C``), ``degree`` (3, an int >= 1) and ``coef0`` (1), as in scikit-learn's
    KernelPCA.

    The kernels are evaluated without their constant part (which the centring removes): as written,
    ``tanh(gamma x.y + 1)`` rounds to ``tanh(1)`` everywhere in float64 once ``|gamma x.y| < 1e-16``, so
    layers with small activations (``|x| ~ 1e-8``, common in randomly initialised or unnormalised deep
    nets) gave a flat map. For such activations the sigmoid, rbf and poly kernels tend to a multiple of
    the linear one, and the map to Eigen-CAM's.

    Example:
        >>> cam = KPCA_CAM(model, target_layers=[model.layer4[-1]], kernel="rbf")
        >>> maps = cam(x)  # (B, H, W), class-agnostic
    """

    name = "kpcacam"
    principal_component = True
    uses_gradients = False
    class_specific = False

    def __init__(
        self,
        *args: Any,
        kernel: str = "sigmoid",
        gamma: float | None = None,
        degree: int = 3,
        coef0: float = 1.0,
        **kwargs: Any,
    ) -> None:
        """Check and store the kernel's options; see the class docstring for the arguments."""
        kernel = check_choice(kernel, "kernel", KPCA_KERNELS)
        if gamma is not None:
            gamma = check_float(gamma, "gamma", 0, include_minimum=False)
        # The 'poly' kernel's exponent.
        degree = check_int(degree, "degree", 1)
        coef0 = check_float(coef0, "coef0")
        super().__init__(*args, **kwargs)
        self.kernel, self.gamma, self.degree, self.coef0 = kernel, gamma, int(degree), float(coef0)

    def layer_map(
        self,
        activations: torch.Tensor,
        gradients: torch.Tensor | None,
        context: LayerContext,
        eigen_smooth: bool,
    ) -> torch.Tensor:
        """The first kernel principal component of the centred activations, ``(B, *spatial)``."""
        acts = torch.nan_to_num(activations.float(), nan=0.0)
        x = acts.flatten(2).transpose(1, 2).double()  # (B, N, C); float64 for the eigensolver
        x = x - x.mean(1, keepdim=True)
        gamma = self.gamma if self.gamma is not None else 1.0 / x.shape[-1]
        k = _kernel(x, self.kernel, gamma, self.degree, self.coef0)  # (B, N, N)
        k = k - k.mean(1, keepdim=True) - k.mean(2, keepdim=True) + k.mean((1, 2), keepdim=True)
        values, vectors = torch.linalg.eigh(k)  # ascending eigenvalues
        projection = vectors[..., -1] * values[..., -1:].clamp_min(0).sqrt()  # (B, N)
        return orient_like_channel_sum(projection.float(), acts)


class EigenGradCAM(BaseCAM):
    """Eigen-Grad-CAM: the first principal component of ``g * A`` (class-discriminative Eigen-CAM)."""

    name = "eigengradcam"
    principal_component = True

    def layer_map(
        self, activations: torch.Tensor, gradients: torch.Tensor, context: LayerContext, eigen_smooth: bool
    ) -> torch.Tensor:
        """The first principal component of ``g * A``, ``(B, *spatial)``."""
        return first_principal_component(gradients * activations)  # (B, *spatial)
