"""Running grad-cam 1.5.7, the reference library, as a black box for the optional comparison tests.

Its import name is ours too (``pytorch_grad_cam``), so it only ever runs in a subprocess whose
``PYTHONPATH`` is ``GRAD_CAM_REFERENCE_PATH``. Its default is ``.refcam`` at the root of this clone
(``<repo root>/.refcam``, next to ``tests/``), which is where ``.ci/run`` installs it
(``pip install --no-deps --target .refcam grad-cam==1.5.7``); set the variable to use another directory.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

TESTS_DIR = Path(__file__).resolve().parent
REPO_ROOT = TESTS_DIR.parent
REFERENCE_PATH = Path(os.environ.get("GRAD_CAM_REFERENCE_PATH") or REPO_ROOT / ".refcam")


def reference_has(relative: str = "__init__.py") -> bool:
    """Whether the reference package is installed and holds ``relative`` (a module file or folder)."""
    return (REFERENCE_PATH / "pytorch_grad_cam" / relative).exists()


_skip_without_reference = pytest.mark.skipif(
    not reference_has(), reason="no grad-cam 1.5.7 under GRAD_CAM_REFERENCE_PATH"
)


def needs_reference(test):
    """Marks ``test`` ``reference`` (``-m "not reference"`` leaves it out) and skips it where the reference
    library is not installed."""
    return pytest.mark.reference(_skip_without_reference(test))


def run_reference(driver: str, *args, cwd) -> subprocess.CompletedProcess:
    """``python -c driver *args`` in ``cwd`` with the reference first on the path. ``cwd`` must not be
    our checkout: ``-c`` puts the working directory before ``PYTHONPATH``, and our package would shadow
    the reference (every driver asserts which one it imported). Skips the test only when the reference
    cannot be imported here (one of its own dependencies missing); any other failure of the driver
    fails the test, with its stderr."""
    env = {**os.environ, "PYTHONPATH": str(REFERENCE_PATH)}
    result = subprocess.run(
        [sys.executable, "-c", driver, *map(str, args)],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    if result.returncode != 0 and "ModuleNotFoundError" in result.stderr:
        pytest.skip(f"the reference does not import here: {result.stderr.strip().splitlines()[-1]}")
    assert result.returncode == 0, result.stderr[-3000:]
    return result
