"""The installed package runs its own --help examples: python -m pytorch_grad_cam, and --example with the
photo the wheel carries, from any folder."""

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from pytorch_grad_cam.cli import main
from pytorch_grad_cam.cli.main import EXAMPLES

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = "pytorch_grad_cam/data/example.jpg"

needs_pretrained = pytest.mark.usefixtures("pretrained_packages")


def _build_wheel(tmp_path: Path) -> Path:
    """A wheel of a copy of the checkout (pip builds in the source folder: not in this one)."""
    source = tmp_path / "source"
    source.mkdir()
    for name in ("pyproject.toml", "setup.py", "README.md", "LICENSE"):
        shutil.copy(REPO / name, source / name)
    shutil.copytree(
        REPO / "pytorch_grad_cam", source / "pytorch_grad_cam", ignore=shutil.ignore_patterns("__pycache__")
    )
    wheels = tmp_path / "wheels"
    build = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index"]
    result = subprocess.run(
        [*build, "-w", str(wheels), str(source)], capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, result.stdout + result.stderr
    (wheel,) = wheels.glob("pytorch_grad_cam-*.whl")
    return wheel


@pytest.mark.slow  # builds a wheel: half a minute
@needs_pretrained
def test_the_wheel_carries_an_example_photo_that_python_m_runs_from_another_folder(tmp_path):
    wheel = _build_wheel(tmp_path)
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        assert EXAMPLE in names
        assert "pytorch_grad_cam/__main__.py" in names
        assert 10_000 < archive.getinfo(EXAMPLE).file_size < 60_000
        site = tmp_path / "site"
        archive.extractall(site)  # installed, as pip would, without the checkout's examples/
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = dict(os.environ, PYTHONPATH=str(site))
    where = subprocess.run(
        [sys.executable, "-c", "import pytorch_grad_cam; print(pytorch_grad_cam.__file__)"],
        capture_output=True, text=True, env=env, cwd=elsewhere, timeout=120,
    )  # fmt: skip
    assert where.stdout.strip() == str(site / "pytorch_grad_cam" / "__init__.py")  # the wheel's, not ours
    result = subprocess.run(
        [sys.executable, "-m", "pytorch_grad_cam", "--example", "--output-dir", "out"],
        capture_output=True, text=True, env=env, cwd=elsewhere, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert f"image: {site / EXAMPLE}\n" in result.stdout
    assert "explained class: 285 (Egyptian cat)" in result.stdout
    assert (elsewhere / "out" / "example_285_gradcam.jpg").is_file()


def test_the_example_photo_is_the_checkouts_cat_and_coffee():
    assert (REPO / EXAMPLE).read_bytes() == (REPO / "examples" / "cat_and_coffee.jpg").read_bytes()


@needs_pretrained
def test_example_flag_explains_the_bundled_photo(tmp_path, capsys):
    assert main(["--example", "--target-category", "espresso", "--output-dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert f"image: {REPO / EXAMPLE}\n" in out
    assert (tmp_path / "example_967_gradcam.npy").is_file()


def test_help_examples_need_no_photo_of_the_checkout(capsys):
    """Every example that explains a photo uses --example (or a placeholder), not examples/*.jpg."""
    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    assert "--example" in out
    commands = [line.strip() for line in EXAMPLES.splitlines() if line.strip().startswith("pytorch-grad-cam")]
    assert len(commands) >= 6
    assert not [c for c in commands if "examples/" in c]
    assert sum("--example" in c for c in commands) >= 4
