"""The CLI's output names: <key>_<class>_<method> so that runs for other classes never replace each other,
class-agnostic methods written once, glob keys like folder keys, and every replaced file said."""

import json
from pathlib import Path

import cv2
import numpy as np

from pytorch_grad_cam.cli import main

WIDTH, HEIGHT = 40, 30


def _image(path: Path, seed: int = 0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 256, (HEIGHT, WIDTH, 3), dtype=np.uint8)
    assert cv2.imwrite(str(path), pixels)
    return path


def _records(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]


def _model(tiny_model: list[str]) -> list[str]:
    return tiny_model[:4]  # --model resnet18 --checkpoint FILE, without the fixture's --target-category


def test_runs_for_other_classes_keep_each_others_files(tmp_path, tiny_model, capsys):
    image = _image(tmp_path / "x.png")
    out = tmp_path / "out"
    for category in ("0", "1"):
        assert (
            main([str(image), *_model(tiny_model), "--target-category", category, "--output-dir", str(out)])
            == 0
        )
    assert "wrote: " + str(out / "x_1_gradcam.jpg") + "\n" in capsys.readouterr().out
    first, second = np.load(out / "x_0_gradcam.npy"), np.load(out / "x_1_gradcam.npy")
    assert first.shape == second.shape == (HEIGHT, WIDTH)
    assert np.abs(first - second).max() > 0.1  # the two classes' maps, both still there
    assert _records(out)[-1]["outputs"] == ["x_1_gradcam.jpg", "x_1_gradcam.npy"]


def test_a_class_agnostic_method_is_written_once_for_two_classes(tmp_path, tiny_model, capsys):
    image = _image(tmp_path / "x.png")
    out = tmp_path / "out"
    args = [str(image), *_model(tiny_model), "--target-category", "0", "2", "--methods", "eigencam,gradcam"]
    assert main([*args, "--output-dir", str(out)]) == 0
    (record,) = _records(out)
    assert [(m["method"], m["class"], m["files"]) for m in record["maps"]] == [
        ("eigencam", 0, ["x_eigencam.jpg", "x_eigencam.npy"]),
        ("eigencam", 2, []),  # the same map: not written twice
        ("gradcam", 0, ["x_0_gradcam.jpg", "x_0_gradcam.npy"]),
        ("gradcam", 2, ["x_2_gradcam.jpg", "x_2_gradcam.npy"]),
    ]
    written = sorted(p.name for p in out.iterdir() if p.suffix in (".jpg", ".npy"))
    assert written == sorted(
        [*record["maps"][0]["files"], *record["maps"][2]["files"], *record["maps"][3]["files"], "x_grid.jpg"]
    )


def test_glob_keys_are_paths_below_the_globs_folder(tmp_path, tiny_model, monkeypatch):
    """'in/**/*.png' mirrors the folders below in/, as a folder input does (was: x, x-2)."""
    for sub in ("a", "b"):
        _image(tmp_path / "in" / sub / "x.png")
    _image(tmp_path / "top.png")
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "out"
    assert main(["in/**/*.png", "t*.png", *tiny_model, "--output-dir", str(out)]) == 0
    assert sorted(r["key"] for r in _records(out)) == ["a/x", "b/x", "top"]
    assert (out / "a" / "x_2_gradcam.npy").is_file()
    assert (out / "b" / "x_2_gradcam.npy").is_file()
    absolute = tmp_path / "out_abs"
    assert main([str(tmp_path / "in" / "*" / "x.png"), *tiny_model, "--output-dir", str(absolute)]) == 0
    assert sorted(r["key"] for r in _records(absolute)) == ["a/x", "b/x"]


def test_a_file_of_an_earlier_run_is_never_replaced_silently(tmp_path, tiny_model, capsys):
    image = _image(tmp_path / "x.png")
    out = tmp_path / "out"
    assert main([str(image), *tiny_model, "--output-dir", str(out)]) == 0
    assert "replaced" not in capsys.readouterr().out
    assert main([str(image), *tiny_model, "--eigen-smooth", "--output-dir", str(out)]) == 0  # other settings
    out_text = capsys.readouterr().out
    for name in ("x_2_gradcam.jpg", "x_2_gradcam.npy"):
        assert f"wrote: {out / name} (replaced the file of an earlier run)\n" in out_text
