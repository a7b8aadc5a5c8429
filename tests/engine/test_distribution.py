"""grad-cam installed into the same folder as this package: a clear ImportError, from the library and the CLI.

The two distributions share the import name ``pytorch_grad_cam``. Each case copies this package into a
temporary site folder, adds a ``grad_cam-1.5.7.dist-info`` that owns that folder as pip would write it,
and imports in a subprocess.
"""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytorch_grad_cam
from pytorch_grad_cam._engine.distribution import conflicting_distribution

PACKAGE = Path(pytorch_grad_cam.__file__).parent


def _site(tmp_path: Path, with_grad_cam: bool) -> Path:
    site = tmp_path / "site"
    shutil.copytree(PACKAGE, site / "pytorch_grad_cam", ignore=shutil.ignore_patterns("__pycache__"))
    if with_grad_cam:
        info = site / "grad_cam-1.5.7.dist-info"
        info.mkdir()
        (info / "METADATA").write_text("Metadata-Version: 2.1\nName: grad-cam\nVersion: 1.5.7\n")
        (info / "RECORD").write_text("pytorch_grad_cam/__init__.py,,\npytorch_grad_cam/grad_cam.py,,\n")
    return site


def _run(site: Path, code: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(site)}
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=site, timeout=120
    )


def test_grad_cam_in_the_same_folder_is_a_clear_import_error(tmp_path):
    site = _site(tmp_path, with_grad_cam=True)
    done = _run(site, "import pytorch_grad_cam")
    assert done.returncode == 1
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("ImportError: the distributions 'pytorch_grad_cam' and 'grad-cam' (1.5.7)")
    assert "pip uninstall -y grad-cam pytorch_grad_cam" in last


def test_the_cli_says_it_too_when_grad_cams_init_replaced_this_one(tmp_path):
    """grad-cam installed second: its __init__.py runs, not this package's; the console script still stops."""
    site = _site(tmp_path, with_grad_cam=True)
    (site / "pytorch_grad_cam" / "__init__.py").write_text("GRAD_CAM_1_5_7 = True\n")
    done = _run(site, "from pytorch_grad_cam.cli import main")
    assert done.returncode == 1
    assert "ImportError: the distributions 'pytorch_grad_cam' and 'grad-cam'" in done.stderr


def test_without_grad_cam_or_with_it_elsewhere_nothing_is_said(tmp_path):
    site = _site(tmp_path, with_grad_cam=False)
    done = _run(site, "import pytorch_grad_cam; print(pytorch_grad_cam.GradCAM.name)")
    assert done.returncode == 0, done.stderr
    assert done.stdout == "gradcam\n"
    assert conflicting_distribution(str(site / "pytorch_grad_cam")) is None  # grad-cam nowhere on sys.path


def test_grad_cam_installed_apart_is_not_a_conflict(tmp_path, monkeypatch):
    """``pip install --target DIR grad-cam`` (how the tests compare with it): its folder is not this one."""
    apart = _site(tmp_path, with_grad_cam=True)
    monkeypatch.syspath_prepend(str(apart))
    import importlib

    importlib.invalidate_caches()
    assert conflicting_distribution(str(apart / "pytorch_grad_cam")) == "1.5.7"  # found, and it is there
    assert conflicting_distribution(str(PACKAGE)) is None  # ...but not in this package's folder
