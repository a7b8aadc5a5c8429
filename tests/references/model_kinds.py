"""Independent references the model-kinds tests compare with: the formulas written out, in float64."""

from __future__ import annotations

import copy

import torch
from torch import nn


class _RefGuidedReLU(torch.autograd.Function):
    """The guided rule written out (Springenberg et al., arXiv:1412.6806): forward ``clamp(x, 0, upper)``,
    backward ``(0 < x < upper) * (g > 0) * g``; ``upper`` is 6 for ReLU6, none for ReLU."""

    @staticmethod
    def forward(ctx, x, upper):
        ctx.save_for_backward(x)
        ctx.upper = upper
        return x.clamp(0, upper)

    @staticmethod
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        gate = x > 0
        if ctx.upper is not None:
            gate &= x < ctx.upper
        return grad.clamp(min=0) * gate, None


class _RefGuidedModule(nn.Module):
    def __init__(self, upper: float | None) -> None:
        super().__init__()
        self.upper = upper

    def forward(self, x):
        return _RefGuidedReLU.apply(x, self.upper)


def _image_output(output, i: int, batch: int):
    """Image i's part of a classifier tensor, a segmentation dict or a detector's list of dicts."""
    if isinstance(output, dict):
        return {key: value[i] for key, value in output.items()}
    if isinstance(output, list):
        return output[i]
    return output[i]


def _reference_gradients(model: nn.Module, x: torch.Tensor, targets, guided: bool, monkeypatch):
    """d(sum_i score_i)/dx on a deep copy of ``model`` (eval mode) whose ReLU/ReLU6 modules are swapped for
    :class:`_RefGuidedModule` and whose ``F.relu`` (Faster R-CNN's box head) is the guided rule, when
    ``guided``; the plain gradient otherwise. (B, C, *spatial) float32 numpy."""
    model = copy.deepcopy(model).eval()
    if guided:
        for module in list(model.modules()):
            for name, child in module.named_children():
                if isinstance(child, nn.ReLU6):
                    setattr(module, name, _RefGuidedModule(6.0))
                elif isinstance(child, nn.ReLU):
                    setattr(module, name, _RefGuidedModule(None))
    x = x.detach().clone().requires_grad_(True)
    with monkeypatch.context() as patch:
        if guided:
            patch.setattr(torch.nn.functional, "relu", lambda t, inplace=False: _RefGuidedReLU.apply(t, None))
        output = model(x)
        scores = []
        for i, target in enumerate(targets):
            part = _image_output(output, i, x.shape[0])
            scores.append(part[target] if isinstance(target, int) else target(part))
        (grad,) = torch.autograd.grad(torch.stack(scores).sum(), x)
    return grad.numpy()
