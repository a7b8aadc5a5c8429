"""Resuming a run never trusts the wrong map: outputs named by keys no other file holds, a record that must
match the file's real path, content and settings, and a results.jsonl that is checked on load, repaired when
cut short, and never reaches report.html unescaped."""

import hashlib
import json
import shutil
import subprocess
from pathlib import Path

import cv2
import numpy as np
import pytest

from pytorch_grad_cam.cli import main
from pytorch_grad_cam.cli.inputs import InputImage
from pytorch_grad_cam.cli.results import (
    REJECTED_FILE,
    RESULTS_FILE,
    assign_keys,
    load_results,
    record_problem,
    source_identity,
)
from tests.cli.test_cli_batch import CHROMIUM, CHROMIUM_FLAGS, needs_pretrained

REPO = Path(__file__).resolve().parents[2]
CAT = REPO / "examples" / "cat.jpg"
COFFEE = REPO / "examples" / "coffee.jpg"
EXPLAIN_285 = ["--target-category", "285"]  # one class for every image: the same output names


def records_of(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / RESULTS_FILE).read_text().splitlines()]


def write_as(source: Path, target: Path, size=(96, 80)) -> Path:
    """``source`` resized to ``size`` (W, H) and written as ``target`` (its extension picks the format)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(target), cv2.resize(cv2.imread(str(source)), size))
    return target


def good_record(**changes) -> dict:
    record = {
        "path": "a.png",
        "file": "/data/a.png",
        "size": 10,
        "sha256": "0" * 64,
        "key": "a",
        "status": "ok",
        "settings": "abc",
        "model": "m",
        "layer": "l",
        "methods": ["gradcam"],
        "classes": [3],
        "maps": [
            {
                "method": "gradcam",
                "class": 3,
                "class_name": "x",
                "probability": 0.5,
                "seconds": 0.1,
                "files": ["a_3_gradcam.jpg"],
            }
        ],
        "outputs": ["a_3_gradcam.jpg", "a_3_gradcam.npy"],
        "seconds": 0.2,
    }
    record.update(changes)
    return record


# ------------------------------------------------------------------------------------------ the checks
def test_a_good_record_passes_and_each_bad_field_is_named():
    assert record_problem(good_record()) == ""
    assert record_problem({"path": "a", "file": "/a", "status": "error", "error": "why"}) == ""
    entry = good_record()["maps"][0]
    bad = {
        "classes": (["<img src=x onerror=alert(1)>"], "'classes' must be a list of ints >= 0"),
        "seconds": ("fast", "'seconds' must be a number in [0, inf], got str"),
        "size": (True, "'size' must be an int >= 0"),
        "sha256": ("abc", "'sha256' must be a SHA-256 hex digest"),
        "outputs": (["../../etc/passwd"], "'outputs' must be a list of relative paths inside"),
        "key": ("/tmp/x", "'key' must be a relative path inside the output folder"),
        "grid": ("/etc/passwd", "'grid' must be a relative path inside the output folder"),
        "maps": ([{**entry, "class": "3"}], "'maps' must be a list of map entries"),
        "status": ("done", "'status' must be 'ok' or 'error'"),
    }
    for name, (value, message) in bad.items():
        assert record_problem(good_record(**{name: value})).startswith(message), name
    assert record_problem(good_record(maps=[{**entry, "probability": float("nan")}])).startswith("'maps'")
    assert record_problem(good_record(maps=[{**entry, "warnings": ["the map is constant"]}])) == ""
    for warnings in ("the map is constant", [3], ["a\x00b"]):
        assert record_problem(good_record(maps=[{**entry, "warnings": warnings}])).startswith("'maps'")
    twice = good_record(maps=[entry, entry])
    assert record_problem(twice) == "'maps' must have one entry per method and class"
    missing = good_record()
    del missing["sha256"]
    assert record_problem(missing) == "'sha256' is missing"
    assert record_problem([1, 2]) == "a record must be a JSON object, got list"


def test_a_cut_line_and_bad_records_are_set_aside_and_the_file_rewritten(tmp_path):
    good = good_record(file="/data/good.png")
    bad = good_record(file="/data/bad.png", seconds="slow")
    text = json.dumps(good) + "\n" + json.dumps(bad) + "\n" + "not json\n" + json.dumps(good)[:50]
    (tmp_path / RESULTS_FILE).write_text(text)
    results = load_results(str(tmp_path))
    assert list(results.records) == ["/data/good.png"]
    assert [note.split(":")[0] for note in results.notes] == [
        f"{RESULTS_FILE} line 2",
        f"{RESULTS_FILE} line 3",
        f"{RESULTS_FILE} line 4",
    ]
    assert "'seconds' must be a number" in results.notes[0]
    assert "not JSON" in results.notes[1]
    assert "cut short" in results.notes[2]
    assert (tmp_path / RESULTS_FILE).read_text() == json.dumps(good) + "\n"  # valid again, good line kept
    rejected = (tmp_path / REJECTED_FILE).read_text().splitlines()  # nothing lost
    assert rejected == [json.dumps(bad), "not json", json.dumps(good)[:50]]
    assert load_results(str(tmp_path)).notes == []  # repaired once, for good


def test_a_complete_last_line_without_newline_is_kept_and_the_newline_added(tmp_path):
    (tmp_path / RESULTS_FILE).write_text(json.dumps(good_record()))
    results = load_results(str(tmp_path))
    assert list(results.records) == ["/data/a.png"]
    assert results.notes == []
    assert (tmp_path / RESULTS_FILE).read_text() == json.dumps(good_record()) + "\n"
    assert not (tmp_path / REJECTED_FILE).exists()


def test_keys_held_by_another_files_record_are_not_given_out():
    records = {"/a/x.png": good_record(file="/a/x.png", key="x"), "/c/y.png": good_record(file="/c/y.png")}
    records["/c/y.png"]["key"] = "y"
    items = [InputImage("/b/x.png", "x"), InputImage("/a/x.png", "x-2"), InputImage("/b/y.png", "y")]
    keys = [item.key for item in assign_keys(items, records)]
    assert keys == ["x-2", "x", "y-2"]  # /a/x.png keeps its key; the others take the next free one


def test_source_identity_is_the_content(tmp_path):
    a, b = tmp_path / "a.bin", tmp_path / "b.bin"
    a.write_bytes(b"same bytes")
    b.write_bytes(b"same bytes")
    ia, ib = source_identity(str(a)), source_identity(str(b))
    assert ia["file"] == str(a.resolve())
    assert ia["size"] == 10
    assert ia["sha256"] == ib["sha256"] == hashlib.sha256(b"same bytes").hexdigest()
    b.write_bytes(b"other bytes")
    assert source_identity(str(b))["sha256"] != ia["sha256"]


# ------------------------------------------------------------------------------------------ the runs
@needs_pretrained
def test_a_new_file_with_the_same_stem_never_overwrites_a_done_one(tmp_path, capsys):
    folder, out = tmp_path / "in", tmp_path / "out"
    write_as(CAT, folder / "a.png")
    assert main([str(folder), "--output-dir", str(out), *EXPLAIN_285]) == 0
    cat_map = np.load(out / "a_285_gradcam.npy")
    write_as(COFFEE, folder / "a.jpg")
    assert main([str(folder), "--output-dir", str(out), *EXPLAIN_285]) == 0
    assert "skipped 1 image(s) already done" in capsys.readouterr().out
    np.testing.assert_array_equal(np.load(out / "a_285_gradcam.npy"), cat_map)  # still a.png's map
    coffee_map = np.load(out / "a-2_285_gradcam.npy")
    assert not np.array_equal(coffee_map, cat_map)
    keys = {Path(r["path"]).name: r["key"] for r in records_of(out)}
    assert keys == {"a.png": "a", "a.jpg": "a-2"}
    assert main([str(folder), "--output-dir", str(out), *EXPLAIN_285]) == 0  # both done now
    assert "skipped 2 image(s) already done" in capsys.readouterr().out


@needs_pretrained
def test_two_folders_with_the_same_file_name_into_one_output_dir(tmp_path, capsys):
    first, second, out = tmp_path / "A", tmp_path / "B", tmp_path / "out"
    write_as(CAT, first / "x.png")
    write_as(COFFEE, second / "x.png")
    assert main([str(first), "--output-dir", str(out), *EXPLAIN_285]) == 0
    cat_map = np.load(out / "x_285_gradcam.npy")
    assert main([str(second), "--output-dir", str(out), *EXPLAIN_285]) == 0
    np.testing.assert_array_equal(np.load(out / "x_285_gradcam.npy"), cat_map)
    assert (out / "x-2_285_gradcam.npy").is_file()
    assert main([str(first), "--output-dir", str(out), *EXPLAIN_285]) == 0  # the first folder is still done
    assert "skipped 1 image(s) already done" in capsys.readouterr().out
    np.testing.assert_array_equal(np.load(out / "x_285_gradcam.npy"), cat_map)


@needs_pretrained
def test_a_changed_image_at_the_same_path_is_redone_under_its_key(tmp_path, capsys):
    folder, out = tmp_path / "in", tmp_path / "out"
    write_as(CAT, folder / "a.png")
    assert main([str(folder), "--output-dir", str(out), *EXPLAIN_285]) == 0
    cat_map = np.load(out / "a_285_gradcam.npy")
    write_as(COFFEE, folder / "a.png")  # same path and name, other content
    assert main([str(folder), "--output-dir", str(out), *EXPLAIN_285]) == 0
    assert "already done" not in capsys.readouterr().out
    assert not np.array_equal(np.load(out / "a_285_gradcam.npy"), cat_map)
    assert [r["key"] for r in records_of(out)] == ["a", "a"]


@needs_pretrained
def test_a_record_of_the_wrong_type_is_reported_and_redone(tmp_path, capsys):
    folder, out = tmp_path / "in", tmp_path / "out"
    write_as(CAT, folder / "a.png")
    assert main([str(folder), "--output-dir", str(out)]) == 0
    record = records_of(out)[0]
    hostile = {**record, "seconds": "<img src=x onerror=alert(1)>"}
    (out / RESULTS_FILE).write_text(json.dumps(hostile) + "\n")
    assert main([str(folder), "--output-dir", str(out), "--report"]) == 0  # no crash
    captured = capsys.readouterr()
    assert f"{RESULTS_FILE} line 1: 'seconds' must be a number" in captured.err
    assert "already done" not in captured.out  # redone
    (redone,) = records_of(out)
    assert isinstance(redone["seconds"], float)
    assert "onerror" not in (out / "report.html").read_text()
    assert json.loads((out / REJECTED_FILE).read_text()) == hostile


@needs_pretrained
def test_a_run_killed_mid_line_is_repaired_by_the_next(tmp_path, capsys):
    folder, out = tmp_path / "in", tmp_path / "out"
    write_as(CAT, folder / "a.png")
    write_as(COFFEE, folder / "b.png")
    assert main([str(folder), "--output-dir", str(out)]) == 0
    lines = (out / RESULTS_FILE).read_text().splitlines()
    (out / RESULTS_FILE).write_text(lines[0] + "\n" + lines[1][: len(lines[1]) // 2])  # killed while writing
    assert main([str(folder), "--output-dir", str(out)]) == 0
    captured = capsys.readouterr()
    assert "line 2: cut short" in captured.err
    assert "skipped 1 image(s) already done" in captured.out  # a.png; b.png redone
    records = records_of(out)  # every line is valid JSON again
    assert [Path(r["path"]).name for r in records] == ["a.png", "b.png"]
    assert all(record_problem(r) == "" for r in records)


@needs_pretrained
@pytest.mark.skipif(CHROMIUM is None, reason="headless Chromium is not installed (apt-get install chromium)")
def test_hostile_strings_in_results_jsonl_never_run_in_the_report(tmp_path, capsys):
    """A record edited to carry markup in its string fields (valid types) is shown as text by Chromium."""
    folder, out = tmp_path / "in", tmp_path / "out"
    write_as(CAT, folder / "a.png")
    assert main([str(folder), "--output-dir", str(out)]) == 0
    record = records_of(out)[0]
    payload = "<img src=x onerror=\"document.title='pwned'\">"
    record["maps"][0]["class_name"] = payload
    record["model"] = record["layer"] = record["maps"][0]["method"] = payload
    (out / RESULTS_FILE).write_text(json.dumps(record) + "\n")
    assert main([str(folder), "--output-dir", str(out), "--report"]) == 0
    assert "skipped 1 image(s) already done" in capsys.readouterr().out  # the record is valid: trusted
    page = out / "report.html"
    assert payload not in page.read_text()
    flags = [*CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'profile'}"]
    dom = subprocess.run(
        [shutil.which(CHROMIUM) or CHROMIUM, *flags, "--dump-dom", page.as_uri()],
        capture_output=True,
        text=True,
        timeout=120,
    ).stdout
    assert "<title>Class Activation Maps</title>" in dom, dom[:300]
    assert "pwned</title>" not in dom
    assert "&lt;img src=x onerror=" in dom  # shown as text


def test_help_states_the_resume_rules(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "the same content (size and SHA-256)" in text
    assert "moved to results.rejected.jsonl" in text
    assert "outputs of another image are never overwritten" in text
