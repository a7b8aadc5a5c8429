"""Black-box comparison with the reference library, grad-cam 1.5.7 (optional).

Skipped unless ``GRAD_CAM_REFERENCE_PATH`` (by default ``.refcam`` at the root of the clone, see
``reference_library.py``) is a directory holding the reference ``pytorch_grad_cam`` package. Its import
name is the same as ours, so it runs in a subprocess with ``PYTHONPATH`` set to that directory: the test
saves the models' state dicts, the inputs and the cases into ``tmp_path``, a small driver (written below)
computes the reference maps, and we compare.

Cases: a seeded resnet18 at 96x96 (batch 2, a class per image): the gradient methods and EigenCAM on
``layer4[-1]`` and on ``[layer3[-1], layer4[-1]]``; ScoreCAM and AblationCAM on ``layer1[-1]`` (64
channels: one forward pass per channel and image) plus a tiny conv net. EigenCAM is compared up to the
sign of the principal component, which the reference leaves to the SVD backend.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision

from pytorch_grad_cam import METHODS
from tests import references as R
from tests.models import seeded_input, tiny_net
from tests.reference_library import REFERENCE_PATH, TESTS_DIR

pytestmark = pytest.mark.reference

if not (REFERENCE_PATH / "pytorch_grad_cam" / "__init__.py").is_file():
    pytest.skip(
        f"no reference pytorch_grad_cam under {REFERENCE_PATH} (set GRAD_CAM_REFERENCE_PATH)",
        allow_module_level=True,
    )
_probe = subprocess.run(
    [sys.executable, "-c", "import pytorch_grad_cam"],
    capture_output=True,
    text=True,
    env={**os.environ, "PYTHONPATH": str(REFERENCE_PATH)},
)
if _probe.returncode != 0:  # e.g. its own dependencies (matplotlib, scikit-learn) are not installed
    _why = (_probe.stderr.strip().splitlines() or ["?"])[-1]
    pytest.skip(f"the reference under {REFERENCE_PATH} does not import here: {_why}", allow_module_level=True)

REF_CLASSES = {
    "gradcam": "GradCAM",
    "gradcam++": "GradCAMPlusPlus",
    "xgradcam": "XGradCAM",
    "eigencam": "EigenCAM",
    "scorecam": "ScoreCAM",
    "ablationcam": "AblationCAM",
    "hirescam": "HiResCAM",
    "gradcamelementwise": "GradCAMElementWise",
    "layercam": "LayerCAM",
    "fem": "FEM",
}
# Not compared here: RandomCAM (random by design), and three methods whose map is a principal component
# with a sign the reference leaves to its SVD / eigensolver (EigenGrad-CAM, Seg-Eigen-CAM, KPCA-CAM);
# methods/test_formulas.py checks those against plain references, KPCA-CAM for all five kernels.
NOT_COMPARED = {"randomcam", "eigengradcam", "segeigencam", "kpcacam"}
# Compared with grad-cam 1.5.7 in their own family's test file (same black-box subprocess approach), or
# not in the reference at all (SmoothGrad-CAM++, SS-CAM, IS-CAM are torchcam's; CAM is in neither).
COMPARED_ELSEWHERE = {
    "fullgrad": "methods/test_fullgrad.py",
    "shapleycam": "methods/test_gradient.py",
    "finercam": "methods/test_composite.py",
    "refinecam": "methods/test_composite.py",
    "sess": "methods/test_composite.py",
}
NOT_IN_REFERENCE = {"cam", "smoothgradcam++", "sscam", "iscam"}

# name -> (model, target layers (dotted names), method, input, classes)
CASES = {}
for _m in ("gradcam", "gradcam++", "xgradcam", "eigencam"):
    CASES[f"resnet18-layer4-{_m}"] = ("resnet18", ["layer4.1"], _m, "x96", [3, 7])
    if _m != "eigencam":  # EigenCAM's sign is compared per layer, on the single-layer case
        CASES[f"resnet18-layer3+4-{_m}"] = ("resnet18", ["layer3.1", "layer4.1"], _m, "x96", [3, 7])
for _m in ("hirescam", "gradcamelementwise", "layercam", "fem"):
    CASES[f"tiny-relu2-{_m}"] = ("tiny", ["relu2"], _m, "xtiny", [1, 3])
    if _m != "fem":  # FEM's k = 2 threshold flags nothing on resnet18's 3x3 layer4 at 96x96
        CASES[f"resnet18-layer4-{_m}"] = ("resnet18", ["layer4.1"], _m, "x96", [3, 7])
for _layer in ("conv2", "relu2"):
    CASES[f"tiny-{_layer}-eigencam"] = ("tiny", [_layer], "eigencam", "xtiny", [1, 3])
for _m in ("scorecam", "ablationcam"):
    CASES[f"resnet18-layer1-{_m}"] = ("resnet18", ["layer1.1"], _m, "x96", [3, 7])
    CASES[f"tiny-conv2-{_m}"] = ("tiny", ["conv2"], _m, "xtiny", [1, 3])
CASES["tiny-relu1+relu2-ablationcam"] = ("tiny", ["relu1", "relu2"], "ablationcam", "xtiny", [1, 3])
# The reference bug: its AblationCAM with target layers NOT in forward order.
BUG_CASE = "tiny-relu2+relu1-ablationcam"
CASES[BUG_CASE] = ("tiny", ["relu2", "relu1"], "ablationcam", "xtiny", [1, 3])

DRIVER = r"""
import copy, json, sys
import numpy as np, torch, torchvision
import pytorch_grad_cam
work, tests_dir, reference_path = sys.argv[1:4]
assert pytorch_grad_cam.__file__.startswith(reference_path), pytorch_grad_cam.__file__
sys.path.append(tests_dir)  # after the reference: only for models.TinyConvNet
from models import TinyConvNet
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
from pytorch_grad_cam.utils.svd_on_activations import get_2d_projection

cases = json.load(open(f"{work}/cases.json"))
inputs = {k: torch.load(f"{work}/{k}.pt") for k in ("x96", "xtiny")}

def build(name):
    model = torchvision.models.resnet18(weights=None) if name == "resnet18" else TinyConvNet(2)
    model.load_state_dict(torch.load(f"{work}/{name}.pt"))
    return model.eval()

pristine = {name: build(name) for name in ("resnet18", "tiny")}

out, report = {}, {"file": pytorch_grad_cam.__file__, "errors": {}, "layer_types": {}}
for case, (model_name, layer_names, method, x_name, classes) in cases.items():
    model = copy.deepcopy(pristine[model_name])  # a failing reference call may leave a model modified
    layers = [model.get_submodule(n) for n in layer_names]
    cls = getattr(pytorch_grad_cam, method)
    kwargs = {}
    if method == "AblationCAM":
        from pytorch_grad_cam.ablation_layer import AblationLayer
        kwargs["ablation_layer"] = AblationLayer()  # not the shared default instance
    cam = cls(model=model, target_layers=layers, **kwargs)
    cam.batch_size = 64
    targets = [ClassifierOutputTarget(k) for k in classes]
    try:
        out[case] = cam(input_tensor=inputs[x_name], targets=targets)
    except Exception as error:
        report["errors"][case] = f"{type(error).__name__}: {error}"
    report["layer_types"][case] = [type(model.get_submodule(n)).__name__ for n in layer_names]
    if method == "EigenCAM":
        captured = {}
        handle = layers[0].register_forward_hook(lambda m, i, o: captured.setdefault("a", o.detach()))
        with torch.no_grad():
            model(inputs[x_name])
        handle.remove()
        out[case + ":projection"] = get_2d_projection(captured["a"].numpy())
        out[case + ":activations"] = captured["a"].numpy()
np.savez(f"{work}/reference.npz", **out)
json.dump(report, open(f"{work}/report.json", "w"))
"""


def _models():
    torch.manual_seed(0)
    return {"resnet18": torchvision.models.resnet18(weights=None).eval(), "tiny": tiny_net(2, seed=0)}


def _inputs():
    return {"x96": seeded_input(2, 3, 96, 96, seed=11), "xtiny": seeded_input(2, 3, 12, 16, seed=1)}


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """Runs the driver once: ``(maps: dict case -> array, report: dict)``."""
    work = tmp_path_factory.mktemp("refcam")
    for name, model in _models().items():
        torch.save(model.state_dict(), work / f"{name}.pt")
    for name, x in _inputs().items():
        torch.save(x, work / f"{name}.pt")
    cases = {
        k: (m, layers, REF_CLASSES[method], x, classes)
        for k, (m, layers, method, x, classes) in CASES.items()
    }
    (work / "cases.json").write_text(json.dumps(cases))
    (work / "driver.py").write_text(DRIVER)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["PYTHONPATH"] = str(REFERENCE_PATH)
    result = subprocess.run(
        [sys.executable, str(work / "driver.py"), str(work), str(TESTS_DIR), str(REFERENCE_PATH)],
        cwd=work,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    maps = dict(np.load(work / "reference.npz"))
    report = json.loads((work / "report.json").read_text())
    return maps, report


@pytest.fixture(scope="module")
def models_and_inputs():
    return _models(), _inputs()


def ours(models_and_inputs, case, layer_names=None):
    models, inputs = models_and_inputs
    model_name, names, method, x_name, classes = CASES[case]
    model = models[model_name]
    layers = [model.get_submodule(n) for n in (layer_names or names)]
    cam = METHODS[method](model, target_layers=layers, batch_size=64)
    return torch.from_numpy(cam(inputs[x_name], targets=classes))


def test_the_reference_is_the_reference_library(reference):
    _, report = reference
    assert Path(report["file"]).resolve().is_relative_to(REFERENCE_PATH.resolve())
    compared = set(method for _, _, method, _, _ in CASES.values())
    assert compared == set(METHODS) - NOT_COMPARED - set(COMPARED_ELSEWHERE) - NOT_IN_REFERENCE, (
        "a method is not compared"
    )


@pytest.mark.parametrize("case", [c for c in CASES if c != BUG_CASE and CASES[c][2] != "eigencam"])
def test_matches_reference_library(reference, models_and_inputs, case):
    maps, report = reference
    assert case not in report["errors"], report["errors"].get(case)
    want = torch.from_numpy(maps[case])
    assert (want.flatten(1).amax(1) > 0.99).all()
    assert (want.flatten(1).std(1) > 0.05).all()  # not degenerate
    torch.testing.assert_close(ours(models_and_inputs, case), want, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("case", [c for c in CASES if CASES[c][2] == "eigencam"])
def test_eigencam_matches_reference_library_up_to_sign(reference, models_and_inputs, case):
    """The reference's map is ``scale(relu(p))`` with ``p`` its projection, whatever the SVD's sign. Ours
    flips ``p`` when it anti-correlates with the channel sum: per image, ours is the reference's map, or
    (flipped images) the same pipeline on ``-p``; which of the two is decided by our sign rule."""
    maps, report = reference
    assert case not in report["errors"], report["errors"].get(case)
    want, p, acts = maps[case], maps[case + ":projection"], maps[case + ":activations"]
    got = ours(models_and_inputs, case)
    size = got.shape[1:]
    flipped = 0
    for i in range(len(p)):
        channel_sum = acts[i].sum(0) - acts[i].sum(0).mean()
        sign = -1.0 if (p[i].astype(np.float64) * channel_sum).sum() < 0 else 1.0
        # The reference's pipeline rebuilt from its projection (checked on the reference itself first).
        rebuilt = [
            R.normalize(R.resize(R.normalize(np.maximum(s * p[i].astype(np.float64), 0)), size))
            for s in (1.0, -1.0)
        ]
        np.testing.assert_allclose(want[i], rebuilt[0], atol=1e-4)
        expected = want[i] if sign > 0 else rebuilt[1]
        flipped += sign < 0
        torch.testing.assert_close(
            got[i], torch.from_numpy(expected.astype(np.float32)), atol=1e-4, rtol=1e-4
        )
    print(f"{case}: {flipped} of {len(p)} images had the opposite sign in the reference")


def test_reference_ablationcam_bug_target_layers_out_of_forward_order(reference, models_and_inputs):
    """A reference bug we fix: grad-cam 1.5.7's AblationCAM pairs target layer i with the i-th activation
    captured in FORWARD order, so ``target_layers=[relu2, relu1]`` raises IndexError (and leaves an
    AblationLayer inside the model). Ours gives the same maps as in forward order, which match the
    reference's forward-order result."""
    maps, report = reference
    assert report["errors"][BUG_CASE].startswith("IndexError")
    assert report["layer_types"][BUG_CASE] == ["ReLU", "AblationLayer"]  # the model was left modified
    assert report["layer_types"]["tiny-relu1+relu2-ablationcam"] == ["ReLU", "ReLU"]
    reversed_order = ours(models_and_inputs, BUG_CASE)
    forward_order = ours(models_and_inputs, BUG_CASE, layer_names=["relu1", "relu2"])
    torch.testing.assert_close(reversed_order, forward_order, atol=1e-6, rtol=0)
    torch.testing.assert_close(
        reversed_order, torch.from_numpy(maps["tiny-relu1+relu2-ablationcam"]), atol=1e-4, rtol=1e-4
    )
