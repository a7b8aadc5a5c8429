"""Every warning names the user's line, whatever the path through the library (plain call, forward(),
aug_smooth, a composite method wrapping another)."""

import warnings

import pytest
import torch
from torch import nn

from pytorch_grad_cam import SESS, AblationCAM, FullGrad, GradCAM, HiResCAM, RefineCAM
from pytorch_grad_cam._engine.checks import check_float, check_int, check_seed


def tiny():
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(4, 4, 3, padding=1),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(4, 3),
    ).eval()
    return model


def zero_score(output):
    return output.sum() * 0.0  # no evidence for anything: a zero gradient, a constant map


def caught(fn):
    with warnings.catch_warnings(record=True) as records:
        warnings.simplefilter("always")
        fn()
    return records


CALLS = {
    "call": lambda m, x: GradCAM(m, [m[2]])(x, targets=[zero_score]),
    "forward": lambda m, x: GradCAM(m, [m[2]]).forward(x, targets=[zero_score]),
    "aug_smooth": lambda m, x: GradCAM(m, [m[2]])(x, targets=[zero_score], aug_smooth=True),
    "refinecam": lambda m, x: RefineCAM(m, [m[0], m[2]])(x, targets=[zero_score]),
    "sess": lambda m, x: SESS(m, [m[2]], num_scales=2)(x, targets=[zero_score]),
    "hirescam-eigen": lambda m, x: HiResCAM(m, [m[2]])(x, targets=[1], eigen_smooth=True),
    "ablation": lambda m, x: AblationCAM(m, [m[2]])(x, targets=[zero_score]),
    "fullgrad": lambda m, x: FullGrad(m)(x, targets=[zero_score]),
}


@pytest.mark.parametrize("path", sorted(CALLS))
def test_warnings_point_at_the_callers_line(path):
    model, x = tiny(), torch.randn(1, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    records = caught(lambda: CALLS[path](model, x))
    assert records, f"{path}: expected a warning"
    for record in records:
        assert record.filename == __file__, (path, record.filename, str(record.message))


def test_argument_checks_follow_one_rule():
    assert check_int(3, "n", 1) == 3
    assert check_float(2, "f", minimum=0) == 2.0
    assert check_seed(None) is None
    with pytest.raises(TypeError, match=r"n must be an int >= 1, got bool True"):
        check_int(True, "n", 1)
    with pytest.raises(ValueError, match=r"n must be an int >= 1, got 0"):
        check_int(0, "n", 1)
    with pytest.raises(TypeError, match=r"f must be a finite float >= 0, got str 'a'"):
        check_float("a", "f", minimum=0)
    with pytest.raises(ValueError, match=r"f must be a finite float > 0 and <= 1, got 0.0"):
        check_float(0.0, "f", minimum=0, maximum=1, include_minimum=False)
    with pytest.raises(ValueError, match=r"got inf"):
        check_float(float("inf"), "f")
    with pytest.raises(TypeError, match=r"seed must be None or an int, got float 1.5"):
        check_seed(1.5)
