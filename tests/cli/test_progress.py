"""The CLI's progress and warnings: a bar that counts forward passes for the perturbation methods (within an
image too) and images otherwise, an estimate before a long run, nothing with --quiet; the library's warnings
as one line per file and method, through the bar, with a remark on a constant map in results.jsonl and the
report; seconds per image. The model is tests/cli/conftest.py's TinyNet (a pass takes microseconds)."""

import html
import json
import math
import re
import sys
from pathlib import Path
from typing import ClassVar

import cv2
import numpy as np
import pytest
import tqdm

from pytorch_grad_cam.cli import main
from pytorch_grad_cam.cli.runner import for_image

WIDTH, HEIGHT = 48, 40
PASSES_SCORECAM = 16  # TinyNet's features.3 has 16 channels
PASSES_SSCAM = 16 * 35  # SS-CAM: 35 noisy copies of each channel's mask


class FakeBar:
    """tqdm's interface, recording what the CLI asks of it; every line written through it is printed."""

    made: ClassVar[list] = []

    def __init__(self, total=None, unit="it", desc=None, file=None, leave=True, **kwargs):
        self.total, self.unit, self.desc, self.file = total, unit, desc, file
        self.updates: list[int] = []
        self.lines: list[tuple[str, int]] = []  # (line, units done when it was written)
        self.closed = False
        FakeBar.made.append(self)

    def update(self, n=1):
        self.updates.append(n)

    def write(self, text, file=None):
        self.lines.append((text, sum(self.updates)))
        print(text, file=file or sys.stdout)

    def close(self):
        self.closed = True


@pytest.fixture
def bars(monkeypatch):
    FakeBar.made = []
    monkeypatch.setattr(tqdm, "tqdm", FakeBar)
    return FakeBar.made


def _image(path: Path, seed: int | None = 0) -> Path:
    """A random image, or (seed None) a uniform grey one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if seed is None:
        pixels = np.full((HEIGHT, WIDTH, 3), 128, np.uint8)
    else:
        pixels = np.random.default_rng(seed).integers(0, 256, (HEIGHT, WIDTH, 3), dtype=np.uint8)
    assert cv2.imwrite(str(path), pixels)
    return path


def _records(out: Path) -> dict:
    lines = (out / "results.jsonl").read_text().splitlines()
    return {Path(r["path"]).name: r for r in map(json.loads, lines)}


# ------------------------------------------------------------------------------------------ progress
def test_one_image_of_a_perturbation_method_gets_an_estimate_and_a_bar_of_its_passes(
    tmp_path, tiny_net, bars, capsys
):
    """One image had no bar at all, and SS-CAM's 560 passes ran without a word."""
    image = _image(tmp_path / "x.png")
    assert main([str(image), *tiny_net, "--method", "sscam", "--output-dir", str(tmp_path / "out")]) == 0
    out = capsys.readouterr().out
    assert re.search(
        rf"^sscam: {PASSES_SSCAM} forward passes per image, (about \d+ s|under 1 s) here for 1 image$",
        out,
        re.MULTILINE,
    ), out
    (bar,) = bars
    assert (bar.total, bar.unit, bar.desc) == (PASSES_SSCAM, "pass", "forward passes")
    assert sum(bar.updates) == PASSES_SSCAM
    # Within the image: once per batch of masked inputs (the batch size follows the free memory: <= 256).
    assert len(bar.updates) >= 1 + PASSES_SSCAM // 256
    assert bar.closed
    assert (f"image: {image}", PASSES_SSCAM) in bar.lines  # printed through the bar, after its passes


def test_several_images_count_one_by_one(tmp_path, tiny_net, bars, capsys):
    """The bar moved once per --batch-size group (2, 2, 1): now once per image."""
    for i in range(5):
        _image(tmp_path / "in" / f"{i}.png", seed=i)
    args = [str(tmp_path / "in"), *tiny_net, "--batch-size", "2", "--output-dir", str(tmp_path / "out")]
    assert main(args) == 0
    (bar,) = bars
    assert (bar.total, bar.unit) == (5, "image")
    assert bar.updates == [1, 1, 1, 1, 1]
    assert "forward passes per image" not in capsys.readouterr().out  # no estimate for a quick run


def test_a_mixed_run_counts_passes_also_for_unreadable_and_done_images(tmp_path, tiny_net, bars, capsys):
    folder = tmp_path / "in"
    (folder / "a_broken.png").parent.mkdir(parents=True)
    (folder / "a_broken.png").write_bytes(b"not a png")
    _image(folder / "b.png", seed=1)
    _image(folder / "c.png", seed=2)
    args = [str(folder), *tiny_net, "--methods", "gradcam,scorecam,eigencam", "--top-k", "2"]
    args += ["--output-dir", str(tmp_path / "out")]
    args.remove("--target-category"), args.remove("1")
    assert main(args) == 1  # the broken file
    per_image = 2 * 1 + 2 * PASSES_SCORECAM + 1  # gradcam and scorecam per class, eigencam once
    (bar,) = bars
    assert (bar.total, bar.unit) == (3 * per_image, "pass")
    assert sum(bar.updates) == 3 * per_image
    estimate = r"^scorecam: 16 forward passes per image and class, (under 1 s|about \d+ s) here for 3 images$"
    assert re.search(estimate, capsys.readouterr().out, re.MULTILINE)
    assert main(args) == 1  # b and c done: skipped, counted all the same
    assert sum(bars[1].updates) == bars[1].total == 3 * per_image


def test_estimates_of_ablation_cam_and_sess(tmp_path, tiny_net, bars, capsys):
    """Ablation-CAM's passes run the layers after the target layer only; SESS's are its sliding windows."""
    image = _image(tmp_path / "x.png")
    args = [str(image), *tiny_net, "--methods", "ablationcam,sess", "--output-dir", str(tmp_path / "out")]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert re.search(
        r"^ablationcam: 16 forward passes per image \(of the layers after the target layer\), "
        r"(under 1 s|at most about \d+ s) here for 1 image$",
        out,
        re.MULTILINE,
    ), out
    # SESS: one pass of the whole input, then every 32-pixel window of 12 scales (32, 41, ..., 131 pixels)
    windows = sum(math.ceil(size / 32) ** 2 for size in range(32, 132, 9))
    assert re.search(
        rf"^sess: {1 + windows} forward passes per image, (under 1 s|about \d+ s) here", out, re.M
    )
    (bar,) = bars
    assert bar.total == sum(bar.updates) == 16 + 1 + windows


def test_quiet_shows_no_bar_and_no_estimate(tmp_path, tiny_net, bars, capsys):
    image = _image(tmp_path / "x.png")
    assert (
        main([str(image), *tiny_net, "--method", "scorecam", "--quiet", "--output-dir", str(tmp_path)]) == 0
    )
    assert bars == []
    assert capsys.readouterr().out == ""


# ------------------------------------------------------------------------------------------ warnings
CONSTANT = (
    "the CAM of layer 'features.3' is constant for this image (often: all weights negative, or no positive "
    "evidence for the target); its map is all zeros; try another --target-layer, another class or method"
)


def test_a_constant_map_is_one_warning_line_naming_the_file_and_the_method(tmp_path, tiny_net, capsys):
    """A uniform image in a batch of two: the library's warning for image(s) [0] was printed in Python's
    format, with the batch index; now one line names the file and the method, and says what to try."""
    folder = tmp_path / "in"
    _image(folder / "grey.png", seed=None)
    _image(folder / "noise.png")
    out = tmp_path / "out"
    assert main([str(folder), *tiny_net, "--batch-size", "2", "--report", "--output-dir", str(out)]) == 0
    err = capsys.readouterr().err
    assert err == f"pytorch-grad-cam: warning: {folder / 'grey.png'}: gradcam: {CONSTANT}\n"
    records = _records(out)
    assert records["grey.png"]["maps"][0]["warnings"] == [CONSTANT]
    assert records["noise.png"]["maps"][0]["warnings"] == []
    assert np.load(out / "grey_1_gradcam.npy").max() == 0  # the constant map, normalised
    report = (out / "report.html").read_text()
    assert report.count("<tr class='warning'>") == 1
    assert "<td>warning: " + html.escape(CONSTANT) + "</td>" in report


def test_warnings_are_printed_through_the_bar(tmp_path, tiny_net, bars, capsys):
    _image(tmp_path / "grey.png", seed=None)
    args = [
        str(tmp_path / "grey.png"),
        *tiny_net,
        "--method",
        "scorecam",
        "--output-dir",
        str(tmp_path / "o"),
    ]
    assert main(args) == 0
    (bar,) = bars
    lines = [line for line, _ in bar.lines if line.startswith("pytorch-grad-cam: warning:")]
    assert lines == [f"pytorch-grad-cam: warning: {tmp_path / 'grey.png'}: scorecam: " + CONSTANT]
    assert "RuntimeWarning" not in capsys.readouterr().err


def test_a_warning_outside_the_methods_calls_is_one_line_too(tmp_path, tiny_net, monkeypatch, capsys):
    """Not in Python's format ('file.py:5: UserWarning: ...' and the source line)."""
    import warnings

    from pytorch_grad_cam.cli import runner

    real = runner.preprocess

    def preprocess(loaded, image):
        warnings.warn("a warning of the preprocessing", UserWarning, stacklevel=1)
        return real(loaded, image)

    monkeypatch.setattr(runner, "preprocess", preprocess)
    image = _image(tmp_path / "x.png")
    with warnings.catch_warnings():
        warnings.simplefilter("always")  # as outside pytest: shown, not raised
        assert main([str(image), *tiny_net, "--output-dir", str(tmp_path / "out")]) == 0
    lines = capsys.readouterr().err.splitlines()
    assert (
        lines == ["pytorch-grad-cam: warning: a warning of the preprocessing"] * 2
    )  # the first image, its batch


def test_for_image_puts_the_batch_indices_in_words():
    paths = ["a.png", "b.png", "c.png"]
    message = "leaves the score of image(s) [0, 2] unchanged (image 0: score 1.5)"
    assert for_image(message, 0, paths) == "leaves the score of this image unchanged (this image: score 1.5)"
    assert for_image(message, 1, paths) is None
    assert for_image(message, 2, paths) == "leaves the score of this image unchanged (image a.png: score 1.5)"
    assert for_image("no image named", 1, paths) == "no image named"


# ------------------------------------------------------------------------------------------ seconds
def test_seconds_are_per_image(tmp_path, tiny_net):
    """Each record's seconds and each map's are its image's share of its batch, not the batch's total."""
    import time

    for i in range(4):
        _image(tmp_path / "in" / f"{i}.png", seed=i)
    out = tmp_path / "out"
    begin = time.perf_counter()
    args = [str(tmp_path / "in"), *tiny_net, "--methods", "sscam,gradcam", "--batch-size", "4"]
    assert main([*args, "--output-dir", str(out)]) == 0
    wall = time.perf_counter() - begin
    records = list(_records(out).values())
    assert len({r["seconds"] for r in records}) == 1  # one batch: one share
    assert 4 * records[0]["seconds"] <= wall
    for record in records:
        assert sum(m["seconds"] for m in record["maps"]) <= record["seconds"]
