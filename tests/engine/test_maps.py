"""The map arithmetic: min-max normalisation is scale-invariant (a map of tiny values still peaks at 1)."""

import numpy as np
import pytest
import torch
from torch import nn

from pytorch_grad_cam._engine.maps import min_max_normalize
from tests.cam_factory import make_cam
from tests.models import make_tiny, seeded_input


def test_min_max_normalize_is_scale_invariant():
    maps = torch.rand(3, 5, 7, generator=torch.Generator().manual_seed(0))  # (B, H, W)
    want = min_max_normalize(maps)
    assert torch.equal(want.flatten(1).amax(1), torch.ones(3))
    for scale in (1e-12, 1e-6, 1e6):
        torch.testing.assert_close(min_max_normalize(maps * scale), want, rtol=0, atol=1e-6)
    # A constant map is all zeros, not NaN; a given epsilon is added as before (Score-CAM's masks).
    assert torch.equal(min_max_normalize(torch.full((1, 2, 2), 3.0)), torch.zeros(1, 2, 2))
    torch.testing.assert_close(
        min_max_normalize(torch.tensor([[0.0, 1e-6]]), eps=1e-7), torch.tensor([[0.0, 1e-6 / 1.1e-6]])
    )
    per_map = min_max_normalize(torch.tensor([[0.0, 1.0], [0.0, 1.0]]), eps=torch.tensor([0.0, 1.0]))
    torch.testing.assert_close(per_map, torch.tensor([[0.0, 1.0], [0.0, 0.5]]))


class _Scaled(nn.Module):
    """The model with its logits times ``factor``: every gradient scaled by it."""

    def __init__(self, model, factor):
        super().__init__()
        self.model, self.factor = model, factor

    def forward(self, x):
        return self.model(x) * self.factor


#: The methods whose channel weights are proportional to the gradients (homogeneous of degree 1): scaling
#: the scores scales the layer map, and the normalised map must not change. (Grad-CAM++'s alphas and
#: Score-CAM's softmax are not homogeneous: their maps change with the scale by their formulas.)
LINEAR_IN_GRADIENTS = ["gradcam", "xgradcam", "hirescam", "gradcamelementwise", "layercam", "eigengradcam"]


@pytest.mark.parametrize("method", LINEAR_IN_GRADIENTS)
def test_maps_of_scores_times_1e_minus_12_are_the_same_maps(method):
    """The reference library divides by ``max + 1e-7``: there such a map peaked at 0.93 (item 15)."""
    model = make_tiny(seed=7)
    x = seeded_input(2, 3, 12, 12, seed=3)
    want = make_cam(method, model, [model.block])(x, targets=[1, 2])
    scaled = _Scaled(model, 1e-12)
    got = make_cam(method, scaled, [model.block])(x, targets=[1, 2])
    assert np.allclose(want.reshape(2, -1).max(1), 1.0)
    np.testing.assert_allclose(got.reshape(2, -1).max(1), 1.0, rtol=0, atol=1e-6)
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-5)
