"""Grad-CAM on a Swin Transformer (torchvision's swin_t), with the library's Swin reshape transform.

    python usage_examples/swin_example.py [--output-dir cam_output] [--device cpu] [--weights DEFAULT]

A Swin block works on channels-last maps: ``model.features[-1][-1].norm1`` (the LayerNorm before the
last block's window attention) outputs ``(B, 7, 7, 768)`` for a 224 x 224 input.
``reshape_transform=swin_reshape_transform`` (alias ``swinT_reshape_transform``) permutes it to the
``(B, C, H, W)`` maps the CAM expects. Older timm Swin models output tokens ``(B, H*W, C)`` at
``model.layers[-1].blocks[-1].norm1`` instead; the same transform lays them out on a square grid
(pass ``functools.partial(swin_reshape_transform, height=h, width=w)`` for a non-square one).

Weights: offline, so swin_t has RANDOM weights here and the map shows nothing meaningful. For a real
map pass ``--weights DEFAULT`` (torchvision downloads the ImageNet weights, about 110 MB, once),
i.e. ``torchvision.models.swin_t(weights="DEFAULT")``.
"""

import argparse
import importlib.util
from pathlib import Path

import cv2
import numpy as np
import torch
import torchvision

from pytorch_grad_cam import GradCAM
from pytorch_grad_cam.utils.image import preprocess_image, show_cam_on_image
from pytorch_grad_cam.utils.reshape_transforms import swin_reshape_transform

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "cat.jpg"
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--output-dir", default="cam_output")
    parser.add_argument("--device", default="cpu")
    parser.add_argument(
        "--weights",
        default=None,
        help="torchvision weights for swin_t, e.g. DEFAULT (downloads); default: random",
    )
    parser.add_argument(
        "--timm",
        action="store_true",
        help="use timm's swin_tiny_patch4_window7_224 (random weights) if timm is installed",
    )
    args = parser.parse_args()
    out_dir = Path(args.output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)

    bgr = cv2.resize(cv2.imread(str(EXAMPLE)), (224, 224))
    rgb = np.float32(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)) / 255  # (224, 224, 3) in [0, 1]
    x = preprocess_image(rgb, mean=IMAGENET_MEAN, std=IMAGENET_STD).to(args.device)  # (1, 3, 224, 224)

    if args.timm and importlib.util.find_spec("timm") is not None:
        import timm

        model = timm.create_model("swin_tiny_patch4_window7_224", pretrained=False)
        target_layer = model.layers[-1].blocks[-1].norm1  # (B, 7, 7, C) or, in older timm, (B, 49, C)
        name = "swin_timm.jpg"
    else:
        model = torchvision.models.swin_t(weights=args.weights)
        target_layer = model.features[-1][-1].norm1  # (B, 7, 7, 768)
        name = "swin_torchvision.jpg"
    if args.weights is None:
        print("swin has random weights (offline); pass --weights DEFAULT for ImageNet weights")
    model = model.eval().to(args.device)

    with GradCAM(model=model, target_layers=[target_layer], reshape_transform=swin_reshape_transform) as cam:
        grayscale = cam(input_tensor=x, targets=None)[0]  # the top class; (224, 224) in [0, 1]
    overlay = show_cam_on_image(rgb, grayscale, use_rgb=True)  # (224, 224, 3) uint8 RGB
    path = out_dir / name
    cv2.imwrite(str(path), cv2.cvtColor(overlay, cv2.COLOR_RGB2BGR))
    print(f"wrote: {path}")


if __name__ == "__main__":
    main()
