"""Explain a semantic segmentation model: which features make it call a region 'cat'?

    python usage_examples/segmentation_example.py [--output-dir cam_output] [--device cpu] [--weights DEFAULT]

torchvision's FCN-ResNet50 outputs a dict whose ``"out"`` is ``(B, 21, H, W)`` per-pixel scores of the
21 Pascal VOC classes (8 = cat). ``SemanticSegmentationTarget(category, mask)`` turns one image's output
into one number, ``sum(out[category] * mask)``: the class score summed over the pixels to explain. The
CAM's target layer is the backbone's last stage, ``model.backbone.layer4``.

Two methods: Grad-CAM averages each channel's gradient over the whole feature map, so its map can
light up far from the region; HiResCAM multiplies gradients and activations position by position and
so stays on what the region's pixels can see (this FCN has no global pooling: outside the region's
receptive field the gradients are exactly zero).

Weights: offline, so the model has RANDOM weights and predicts no real classes; the region is then the
left half of examples/cat_and_coffee.jpg, where the cat is. With ``--weights DEFAULT`` (torchvision
downloads the VOC weights, about 135 MB, once: ``fcn_resnet50(weights="DEFAULT")``) the region is the
model's own prediction, ``out.argmax(0) == 8``.
"""

import argparse
from pathlib import Path

import cv2
import numpy as np
import torch
import torchvision

from pytorch_grad_cam import GradCAM, HiResCAM
from pytorch_grad_cam.utils.image import preprocess_image, show_cam_on_image
from pytorch_grad_cam.utils.model_targets import SemanticSegmentationTarget

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "cat_and_coffee.jpg"
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
VOC_CAT = 8


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--output-dir", default="cam_output")
    parser.add_argument("--device", default="cpu")
    parser.add_argument(
        "--weights", default=None, help="fcn_resnet50 weights, e.g. DEFAULT (downloads); default: random"
    )
    args = parser.parse_args()
    out_dir = Path(args.output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)

    bgr = cv2.resize(cv2.imread(str(EXAMPLE)), (320, 160), interpolation=cv2.INTER_AREA)  # small: fast
    rgb = np.float32(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)) / 255  # (160, 320, 3) in [0, 1]
    x = preprocess_image(rgb, mean=IMAGENET_MEAN, std=IMAGENET_STD).to(args.device)  # (1, 3, 160, 320)

    model = torchvision.models.segmentation.fcn_resnet50(weights=args.weights, weights_backbone=None)
    model = model.eval().to(args.device)
    if args.weights is None:
        print("fcn_resnet50 has random weights (offline); pass --weights DEFAULT for the VOC weights")
        mask = np.zeros(rgb.shape[:2], np.float32)
        mask[:, : rgb.shape[1] // 2] = 1  # the cat's half of the photo
    else:
        with torch.no_grad():
            mask = (model(x)["out"][0].argmax(0) == VOC_CAT).float().cpu().numpy()  # (160, 320)
    targets = [SemanticSegmentationTarget(VOC_CAT, mask)]

    for name, method in (("gradcam", GradCAM), ("hirescam", HiResCAM)):
        with method(model=model, target_layers=[model.backbone.layer4]) as cam:
            grayscale = cam(input_tensor=x, targets=targets)[0]  # (160, 320) in [0, 1]
        overlay = show_cam_on_image(rgb, grayscale, use_rgb=True)
        path = out_dir / f"segmentation_{name}.jpg"
        cv2.imwrite(str(path), cv2.cvtColor(overlay, cv2.COLOR_RGB2BGR))
        print(f"wrote: {path}")


if __name__ == "__main__":
    main()
