"""The command line on many inputs: folders, broken files, classes by name, top-k, grids, results.jsonl,
skipping done images, checkpoints, named and traced target layers, the HTML report in headless Chromium."""

import json
import shutil
import subprocess
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
import torchvision

from pytorch_grad_cam import GradCAM
from pytorch_grad_cam.cli import build_parser, main
from pytorch_grad_cam.registry import METHODS

REPO = Path(__file__).resolve().parents[2]
CAT = REPO / "examples" / "cat.jpg"
COFFEE = REPO / "examples" / "coffee.jpg"
BOTH = REPO / "examples" / "cat_and_coffee.jpg"

needs_pretrained = pytest.mark.usefixtures("pretrained_packages")


def records_of(out: Path):
    return [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]


@pytest.fixture
def photo_folder(tmp_path):
    """cat and coffee in a sub-folder, a broken .jpg beside them and a text file that is ignored."""
    folder = tmp_path / "in"
    (folder / "sub").mkdir(parents=True)
    shutil.copy(CAT, folder / "sub" / "cat.jpg")
    shutil.copy(COFFEE, folder / "coffee.jpg")
    (folder / "sub" / "broken.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    (folder / "notes.txt").write_text("not an image, not even by name")
    return folder


@needs_pretrained
def test_folder_with_a_broken_file_then_rerun_skips_done_images(photo_folder, tmp_path, capsys):
    out = tmp_path / "out"
    code = main([str(photo_folder), "--output-dir", str(out), "--batch-size", "2"])
    captured = capsys.readouterr()
    assert code == 1  # one input failed...
    assert "broken.jpg" in captured.err
    assert "cannot read image" in captured.err
    # ...but the others were explained, with outputs mirroring the folder structure
    records = {Path(r["path"]).name: r for r in records_of(out)}
    for key, source in (("sub/cat", CAT), ("coffee", COFFEE)):
        stem = f"{key}_{records[Path(key).name + '.jpg']['classes'][0]}_gradcam"
        overlay = cv2.imread(str(out / f"{stem}.jpg"))
        assert overlay is not None
        assert overlay.shape == cv2.imread(str(source)).shape
        raw = np.load(out / f"{stem}.npy")
        assert raw.dtype == np.float32
        assert raw.shape == overlay.shape[:2]
        assert raw.min() >= 0
        assert raw.max() > 0.99  # resizing may shave the peak
    assert set(records) == {"cat.jpg", "coffee.jpg", "broken.jpg"}  # notes.txt is not an image: not taken
    assert records["broken.jpg"]["status"] == "error"
    coffee = records["coffee.jpg"]
    assert coffee["status"] == "ok"
    assert coffee["layer"] == "_bn1"
    assert coffee["methods"] == ["gradcam"]
    assert coffee["maps"][0]["class"] == 967
    assert coffee["maps"][0]["class_name"] == "espresso"
    assert 0.5 < coffee["maps"][0]["probability"] <= 1
    assert coffee["outputs"] == ["coffee_967_gradcam.jpg", "coffee_967_gradcam.npy"]
    mtime = (out / "coffee_967_gradcam.npy").stat().st_mtime_ns

    # the same run again: both good images are skipped, the broken one fails again
    assert main([str(photo_folder), "--output-dir", str(out)]) == 1
    assert "skipped 2 image(s) already done" in capsys.readouterr().out
    assert (out / "coffee_967_gradcam.npy").stat().st_mtime_ns == mtime
    # other settings are not "done"; --overwrite redoes everything
    assert main([str(photo_folder / "coffee.jpg"), "--output-dir", str(out), "--overwrite"]) == 0
    assert (out / "coffee_967_gradcam.npy").stat().st_mtime_ns != mtime


@needs_pretrained
def test_npy_is_the_library_map_at_the_image_resolution(tmp_path, capsys):
    """The raw map the CLI saves is exactly what the Python API gives for the same preprocessing."""
    from pytorch_grad_cam import pretrained
    from pytorch_grad_cam.utils.image import preprocess_image

    assert main([str(COFFEE), "--output-dir", str(tmp_path), "--target-category", "967"]) == 0
    saved = np.load(tmp_path / "coffee_967_gradcam.npy")
    model = pretrained.load_efficientnet_lite0()
    rgb = np.float32(cv2.cvtColor(cv2.imread(str(COFFEE)), cv2.COLOR_BGR2RGB)) / 255
    resized = cv2.resize(rgb, (224, 224), interpolation=cv2.INTER_AREA)
    x = preprocess_image(resized, mean=[0.5] * 3, std=[0.5] * 3)
    want = GradCAM(model, [pretrained.efficientnet_target_layer(model)])(x, targets=[967])[0]
    want = cv2.resize(want, (rgb.shape[1], rgb.shape[0]), interpolation=cv2.INTER_LINEAR)
    np.testing.assert_allclose(saved, np.clip(want, 0, 1), atol=1e-5)


@needs_pretrained
def test_class_names_top_k_and_several_categories(tmp_path, capsys):
    assert (
        main(
            [
                str(BOTH),
                "--output-dir",
                str(tmp_path / "a"),
                "--target-category",
                "tabby",
                "espresso",
                "967",
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "explained class: 281 (tabby)" in out
    assert "explained class: 967 (espresso)" in out
    record = records_of(tmp_path / "a")[0]
    assert record["classes"] == [281, 967, 967]
    cat_map = np.load(tmp_path / "a" / "cat_and_coffee_281_gradcam.npy")
    coffee_map = np.load(tmp_path / "a" / "cat_and_coffee_967_gradcam.npy")
    half = cat_map.shape[1] // 2  # the cat is on the left, the coffee on the right
    assert cat_map[:, :half].mean() > cat_map[:, half:].mean()
    assert coffee_map[:, half:].mean() > coffee_map[:, :half].mean()
    assert (tmp_path / "a" / "cat_and_coffee_grid.jpg").is_file()  # several classes: a grid

    assert main([str(COFFEE), "--output-dir", str(tmp_path / "b"), "--top-k", "3"]) == 0
    record = records_of(tmp_path / "b")[0]
    probabilities = [m["probability"] for m in record["maps"]]
    assert record["classes"][0] == 967
    assert len(set(record["classes"])) == 3
    assert probabilities == sorted(probabilities, reverse=True)


@needs_pretrained
@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("cat", "no class of that name"),
        ("espreso", "did you mean 'espresso' (967)"),
        ("1000", "out of range"),
    ],
)
def test_bad_class_names_exit_2(tmp_path, capsys, value, message):
    assert main([str(CAT), "--output-dir", str(tmp_path), "--target-category", value]) == 2
    assert message in capsys.readouterr().err


@needs_pretrained
def test_methods_grid_labels_each_method(tmp_path, capsys):
    assert main([str(CAT), "--output-dir", str(tmp_path), "--methods", "gradcam,eigencam,layercam"]) == 0
    grid = cv2.imread(str(tmp_path / "cat_grid.jpg"))
    names = ("cat_285_gradcam.jpg", "cat_eigencam.jpg", "cat_285_layercam.jpg")  # Eigen-CAM: any class
    overlays = [cv2.imread(str(tmp_path / name)) for name in names]
    tile_h = 224 + 26  # label bar + tile
    assert grid.shape[0] == tile_h
    tile_w = round(CAT_SHAPE[1] * 224 / CAT_SHAPE[0])
    assert grid.shape[1] == 4 * tile_w + 3 * 4  # the image and three methods, 4 px gutters
    tiles = [grid[26:, i * (tile_w + 4) : i * (tile_w + 4) + tile_w].astype(float) for i in range(4)]
    for tile, overlay in zip(tiles[1:], overlays):  # each column is that method's overlay
        small = cv2.resize(overlay, (tile_w, 224), interpolation=cv2.INTER_AREA).astype(float)
        assert np.abs(tile - small).mean() < 6
    assert np.abs(tiles[1] - tiles[2]).mean() > 10  # and the methods differ
    assert (grid[:26] < 128).any()  # the label bar has text on it


CAT_SHAPE = cv2.imread(str(CAT)).shape


def test_methods_all_and_bad_method_lists():
    parser = build_parser()
    from pytorch_grad_cam.cli.main import _check_args

    args = parser.parse_args([str(CAT), "--methods", "all"])
    _check_args(args, parser)
    assert args.method_list == [*METHODS, "guidedbackprop", "guidedgradcam", "dff"]
    args = parser.parse_args([str(CAT), "--methods", "gradcam, eigencam,gradcam"])
    _check_args(args, parser)
    assert args.method_list == ["gradcam", "eigencam"]
    with pytest.raises(SystemExit):
        _check_args(parser.parse_args([str(CAT), "--methods", "gradcam,nope"]), parser)
    with pytest.raises(SystemExit):
        parser.parse_args([str(CAT), "--methods", "gradcam", "--method", "eigencam"])


@needs_pretrained
def test_quiet_prints_nothing_and_progress_bar_on_long_runs(tmp_path, capsys):
    folder = tmp_path / "many"
    folder.mkdir()
    for i in range(4):
        shutil.copy(COFFEE, folder / f"c{i}.jpg")
    assert main([str(folder), "--output-dir", str(tmp_path / "o1"), "--quiet"]) == 0
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err == ""
    assert main([str(folder / "*.jpg"), "--output-dir", str(tmp_path / "o2"), "--batch-size", "3"]) == 0
    err = capsys.readouterr().err
    assert "0/4" in err  # tqdm's bar (its first draw; later ones are rate-limited)
    assert "image/s" in err
    assert len(records_of(tmp_path / "o2")) == 4


def _tiny_checkpoint(tmp_path, num_classes=3):
    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=num_classes)
    path = tmp_path / "resnet18_3classes.pt"
    torch.save({"state_dict": model.state_dict()}, path)
    return path


def test_checkpoint_named_and_traced_layers(tmp_path, capsys):
    ckpt = _tiny_checkpoint(tmp_path)
    common = [str(COFFEE), "--model", "resnet18", "--checkpoint", str(ckpt), "--target-category", "2"]
    assert main([*common, "--output-dir", str(tmp_path / "auto")]) == 0
    out = capsys.readouterr().out
    assert "target layer (auto): layer4 (output (1, 512, 7, 7))" in out
    assert "explained class: 2 (class 2)" in out
    assert main([*common, "--output-dir", str(tmp_path / "named"), "--target-layer", "layer4.-1"]) == 0
    # layer4 and layer4[-1] are the same tensor: the same map
    np.testing.assert_allclose(
        np.load(tmp_path / "named" / "coffee_2_gradcam.npy"),
        np.load(tmp_path / "auto" / "coffee_2_gradcam.npy"),
        atol=1e-6,
    )
    assert records_of(tmp_path / "named")[0]["layer"] == "layer4.-1"
    assert main([*common, "--output-dir", str(tmp_path / "bad"), "--target-layer", "layer9"]) == 2
    assert "children are" in capsys.readouterr().err


def test_timm_models_by_name(tmp_path, monkeypatch, capsys):
    """timm is optional and not installed here: a stand-in module with timm's create_model API."""
    import sys
    import types

    created = {}

    def create_model(name, pretrained=False, num_classes=None):
        created.update(name=name, pretrained=pretrained)
        torch.manual_seed(0)
        model = torchvision.models.resnet18(num_classes=5)
        model.pretrained_cfg = {"input_size": (3, 64, 64), "mean": (0.5,) * 3, "std": (0.25,) * 3}
        return model

    monkeypatch.setitem(sys.modules, "timm", types.SimpleNamespace(create_model=create_model))
    monkeypatch.setattr("importlib.util.find_spec", lambda name: object() if name == "timm" else None)
    assert main([str(CAT), "--model", "timm:resnet18d", "--output-dir", str(tmp_path)]) == 0
    assert created == {"name": "resnet18d", "pretrained": True}
    (record,) = records_of(tmp_path)
    assert np.load(tmp_path / f"cat_{record['classes'][0]}_gradcam.npy").shape == CAT_SHAPE[:2]


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@needs_pretrained
@pytest.mark.skipif(CHROMIUM is None, reason="headless Chromium is not installed (apt-get install chromium)")
def test_report_renders_in_headless_chromium(photo_folder, tmp_path, capsys):
    out = tmp_path / "report"
    code = main([str(photo_folder), "--methods", "gradcam,eigencam", "--report", "--output-dir", str(out)])
    assert code == 1  # the broken file
    page = out / "report.html"
    assert f"wrote: {page}" in capsys.readouterr().out
    common = [*CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'profile'}"]
    dom = subprocess.run(
        [CHROMIUM, *common, "--dump-dom", page.as_uri()], capture_output=True, text=True, timeout=120
    ).stdout
    # every embedded grid decoded in the browser (set by the page's script on load)
    assert 'data-images-expected="2"' in dom, dom[:500]
    assert 'data-images-loaded="2"' in dom, dom[:500]
    assert "espresso" in dom
    assert "failed: cannot read its width and height before decoding" in dom  # the broken .jpg
    shot = tmp_path / "shot.png"
    subprocess.run(
        [CHROMIUM, *common, "--window-size=1200,900", f"--screenshot={shot}", page.as_uri()],
        capture_output=True,
        timeout=120,
    )
    image = cv2.imread(str(shot))
    assert image is not None
    assert image.shape[:2] == (900, 1200)
    # the heat maps are on screen: strongly red and strongly blue pixels, not a blank or broken page
    b, g, r = (image[..., i].astype(int) for i in range(3))
    assert ((r > 180) & (g < 90) & (b < 90)).mean() > 0.005
    assert ((b > 120) & (r < 90)).mean() > 0.005


@needs_pretrained
def test_guided_backprop_images(tmp_path, capsys):
    """--guided writes gb and cam_gb like the reference CLI; Guided Grad-CAM of espresso lights the cup."""
    assert main([str(BOTH), "--guided", "--target-category", "967", "--output-dir", str(tmp_path)]) == 0
    gb = cv2.imread(str(tmp_path / "cat_and_coffee_967_gradcam_gb.jpg")).astype(float)
    cam_gb = cv2.imread(str(tmp_path / "cat_and_coffee_967_gradcam_cam_gb.jpg")).astype(float)
    assert gb.shape == cam_gb.shape == cv2.imread(str(BOTH)).shape
    # deprocess_image centres at 128: the detail is the deviation from grey
    assert np.abs(gb - 128).mean() > 5  # guided backprop has detail on both halves
    half = cam_gb.shape[1] // 2
    left, right = np.abs(cam_gb[:, :half] - 128).mean(), np.abs(cam_gb[:, half:] - 128).mean()
    assert right > 3 * left  # the cup (right half), not the cat
    record = records_of(tmp_path)[0]
    want = ["cat_and_coffee_967_gradcam_gb.jpg", "cat_and_coffee_967_gradcam_cam_gb.jpg"]
    assert record["maps"][0]["files"][2:] == want


@needs_pretrained
def test_pixel_methods_and_dff_in_a_grid(tmp_path, capsys):
    """--method choices include guided backprop, Guided Grad-CAM and DFF (one picture per image)."""
    args = [
        str(BOTH),
        "--methods",
        "guidedbackprop,guidedgradcam,dff",
        "--n-components",
        "3",
        "--target-category",
        "281",
        "967",
        "--output-dir",
        str(tmp_path),
    ]
    assert main(args) == 0
    height, width = CAT_AND_COFFEE_SHAPE[:2]
    explanations = np.load(tmp_path / "cat_and_coffee_dff.npy")
    assert explanations.shape == (3, height, width)
    assert explanations.min() >= 0
    assert explanations.max() <= 1
    dominant = explanations.argmax(0)  # (H, W): each pixel's concept
    half = width // 2
    left = np.bincount(dominant[:, :half].ravel(), minlength=3).argmax()
    right = np.bincount(dominant[:, half:].ravel(), minlength=3).argmax()
    assert left != right  # the cat and the cup are different concepts
    for c in (281, 967):
        gb = np.load(tmp_path / f"cat_and_coffee_{c}_guidedbackprop.npy")
        ggc = np.load(tmp_path / f"cat_and_coffee_{c}_guidedgradcam.npy")
        assert gb.shape == ggc.shape == (height, width, 3)
        assert np.abs(gb).sum() > 0
    cup = np.load(tmp_path / "cat_and_coffee_967_guidedgradcam.npy")
    assert np.abs(cup[:, half:]).sum() > 3 * np.abs(cup[:, :half]).sum()
    record = records_of(tmp_path)[0]
    assert record["maps"][-1]["files"] == []  # DFF is written once, not once per class
    assert cv2.imread(str(tmp_path / "cat_and_coffee_grid.jpg")) is not None


def test_dff_concepts_named_by_the_softmax_of_the_models_head(tmp_path, monkeypatch):
    """Each concept's label is the top class of softmax(W c + b), the model's last linear layer on the
    concept vector c, and its probability ("name 0.xx"), written out here in float64 numpy; a target layer
    whose channel count the head does not read gets "concept k" labels."""
    import pytorch_grad_cam.utils.image as image_utils
    from pytorch_grad_cam import DeepFeatureFactorization, pretrained

    seen = {"labels": [], "calls": []}
    show = image_utils.show_factorization_on_image
    call = DeepFeatureFactorization.__call__

    def record_labels(*args, concept_labels=None, **kwargs):
        seen["labels"].append(concept_labels)
        return show(*args, concept_labels=concept_labels, **kwargs)

    def record_call(self, *args, **kwargs):
        result = call(self, *args, **kwargs)
        seen["calls"].append((self.computation_on_concepts, result[0]))
        return result

    monkeypatch.setattr(image_utils, "show_factorization_on_image", record_labels)
    monkeypatch.setattr(DeepFeatureFactorization, "__call__", record_call)
    assert main([str(BOTH), "--methods", "dff", "--n-components", "3", "--output-dir", str(tmp_path)]) == 0
    ((head, concepts),) = seen["calls"]
    assert head is not None
    assert concepts.shape == (head.in_features, 3)
    logits = (
        concepts.T.astype(np.float64) @ head.weight.detach().double().numpy().T
        + head.bias.detach().double().numpy()
    )  # (K, num_classes)
    probabilities = np.exp(logits - logits.max(1, keepdims=True))
    probabilities /= probabilities.sum(1, keepdims=True)
    class_name = pretrained.imagenet_class_name  # the default model's class names
    want = [f"{class_name(int(k))} {p:.2f}" for k, p in zip(probabilities.argmax(1), probabilities.max(1))]
    assert seen["labels"] == [want]
    assert len(set(probabilities.argmax(1))) > 1
    assert probabilities.max() > 0.2  # the labels say something

    seen["labels"].clear(), seen["calls"].clear()
    assert (
        main(
            [
                str(BOTH),
                "--methods",
                "dff",
                "--n-components",
                "3",
                "--target-layer",
                "_blocks.3",
                "--output-dir",
                str(tmp_path / "early"),
            ]
        )
        == 0
    )
    assert seen["calls"][0][0] is None
    assert seen["labels"] == [["concept 0", "concept 1", "concept 2"]]


CAT_AND_COFFEE_SHAPE = cv2.imread(str(BOTH)).shape
