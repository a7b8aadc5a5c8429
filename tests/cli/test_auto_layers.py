"""--target-layer auto per method: the methods that need non-negative activations get the layer after the
last ReLU6 of the bundled EfficientNet-Lite0 (the input of its pool), the others keep ``_bn1``."""

import json
import re
from pathlib import Path

import numpy as np
import pytest

from pytorch_grad_cam.cli import main

REPO = Path(__file__).resolve().parents[2]
CAT = REPO / "examples" / "cat.jpg"

needs_pretrained = pytest.mark.usefixtures("pretrained_packages")


def _records(folder: Path) -> list[dict]:
    return [json.loads(line) for line in (folder / "results.jsonl").read_text().splitlines()]


@needs_pretrained
def test_each_method_gets_its_layer_printed_recorded_and_used(tmp_path, capsys):
    auto = tmp_path / "auto"
    assert main([str(CAT), "--methods", "gradcam,gradcam++", "--output-dir", str(auto)]) == 0
    out = capsys.readouterr().out
    assert "target layer (auto): _bn1 (output (1, 1280, 7, 7))" in out
    match = re.search(
        r"^target layer \(auto\) for gradcam\+\+: _avg_pooling:input \(output \(1, 1280, 7, 7\)\): "
        r"gradcam\+\+ needs non-negative activations and _bn1's output has negative values "
        r"\(min (-[0-9.]+)\); "
        r"_avg_pooling:input is the nearest non-negative activation after it$",
        out,
        re.MULTILINE,
    )
    assert match, out
    assert float(match.group(1)) < -1
    (record,) = _records(auto)
    assert record["layer"] == "_bn1"  # the first method's
    assert [(m["method"], m["layer"]) for m in record["maps"]] == [
        ("gradcam", "_bn1"),
        ("gradcam++", "_avg_pooling:input"),
    ]
    # The same map as naming that layer (the ':input' form names a module's input).
    named = tmp_path / "named"
    layer = ["--target-layer", "_avg_pooling:input"]
    assert main([str(CAT), "--method", "gradcam++", *layer, "--output-dir", str(named)]) == 0
    assert "target layer (auto)" not in capsys.readouterr().out  # a named layer is every method's
    npy = f"cat_{record['classes'][0]}_gradcam++.npy"  # <image>_<class>_<method>
    np.testing.assert_array_equal(np.load(auto / npy), np.load(named / npy))
    assert _records(named)[0]["maps"][0]["layer"] == "_avg_pooling:input"


@needs_pretrained
@pytest.mark.slow
def test_scorecam_with_the_automatic_layer_is_not_an_all_zero_map(tmp_path, capsys):
    """The issue: `--methods gradcam,scorecam,...` wrote Score-CAM maps that were exactly 0 (at _bn1)."""
    assert main([str(CAT), "--method", "scorecam", "--output-dir", str(tmp_path)]) == 0
    assert "target layer (auto) for scorecam: _avg_pooling:input" in capsys.readouterr().out
    (npy,) = [f for f in _records(tmp_path)[0]["outputs"] if f.endswith(".npy")]
    cam_map = np.load(tmp_path / npy)
    assert cam_map.shape == (300, 451)
    assert cam_map.min() == 0
    assert cam_map.max() > 0.99
    assert 0.05 < (cam_map > 0.5).mean() < 0.9
    assert _records(tmp_path)[0]["maps"][0]["layer"] == "_avg_pooling:input"
