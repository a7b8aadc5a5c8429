"""Explain an object detector: torchvision's Faster R-CNN (MobileNetV3-Large FPN) with Eigen-CAM and
Ablation-CAM.

    python usage_examples/detection_example.py [--output-dir cam_output] [--device cpu] [--weights DEFAULT]

The target layer is the whole backbone, ``model.backbone``: it returns the feature pyramid, a dict of
levels ``{'0': (B, 256, H/16, W/16), '1': ..., 'pool': ...}``, and ``fpn_reshape_transform`` resizes
every level to one grid and stacks their channels into one ``(B, 768, h, w)`` map.
``FasterRCNNBoxScoreTarget(labels, boxes)`` scores how well the detector still finds the given boxes:
for each one, the IoU with the best matching detection of the same label plus that detection's score.

* Eigen-CAM (the first principal component of the features) is class-agnostic and cheap: one map for
  the whole image.
* Ablation-CAM gives one map per box: it zeroes each of the 768 channels in turn and measures how much
  the box's score drops, i.e. 768 extra runs of the detector's heads per box (seconds on a CPU at this
  small size; use ``--device cuda`` for large images).

Weights: offline, so the detector has RANDOM weights and every class score is about 1/91, far below the
default ``box_score_thresh`` of 0.05: it would detect nothing. The script sets the threshold to 0 and
keeps the top 2 boxes, which are arbitrary; both get the same class score, so their Ablation-CAM
maps come out the same too. With ``--weights DEFAULT`` (torchvision downloads the
COCO weights, about 75 MB, once: ``fasterrcnn_mobilenet_v3_large_fpn(weights="DEFAULT")``) keep the
default threshold, or a higher one, and the boxes are real detections.
"""

import argparse
from pathlib import Path

import cv2
import numpy as np
import torch
import torchvision

from pytorch_grad_cam import AblationCAM, EigenCAM
from pytorch_grad_cam.utils.image import show_cam_on_image
from pytorch_grad_cam.utils.model_targets import FasterRCNNBoxScoreTarget
from pytorch_grad_cam.utils.reshape_transforms import fpn_reshape_transform

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "cat_and_coffee.jpg"
HEIGHT, WIDTH, BOXES = 128, 256, 2
COLOURS = [(0, 255, 0), (255, 0, 255)]  # RGB, one per box


def draw(overlay: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """``overlay`` (uint8 RGB) with each box outlined in its colour."""
    overlay = overlay.copy()
    for (x1, y1, x2, y2), colour in zip(boxes.round().astype(int), COLOURS):
        cv2.rectangle(overlay, (int(x1), int(y1)), (int(x2), int(y2)), colour, 2)
    return overlay


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--output-dir", default="cam_output")
    parser.add_argument("--device", default="cpu")
    parser.add_argument(
        "--weights", default=None, help="detector weights, e.g. DEFAULT (downloads); default: random"
    )
    args = parser.parse_args()
    out_dir = Path(args.output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)

    bgr = cv2.resize(cv2.imread(str(EXAMPLE)), (WIDTH, HEIGHT), interpolation=cv2.INTER_AREA)
    rgb = np.float32(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)) / 255  # (128, 256, 3) in [0, 1]
    # Detection models take [0, 1] images and normalise them themselves.
    x = torch.from_numpy(rgb.transpose(2, 0, 1))[None].to(args.device)  # (1, 3, 128, 256)

    # A small image and few proposals keep Ablation-CAM's 768 runs of the heads cheap.
    model = torchvision.models.detection.fasterrcnn_mobilenet_v3_large_fpn(
        weights=args.weights,
        weights_backbone=None,
        min_size=HEIGHT,
        max_size=WIDTH,
        rpn_post_nms_top_n_test=5,
        box_detections_per_img=BOXES,
    )
    if args.weights is None:
        model.roi_heads.score_thresh = 0.0  # random weights: every score is about 1/91
        print(
            "the detector has random weights (offline), so its boxes are arbitrary; "
            "pass --weights DEFAULT for COCO weights"
        )
    model = model.eval().to(args.device)
    with torch.no_grad():
        detections = model(x)[0]  # {'boxes': (N, 4), 'labels': (N,), 'scores': (N,)}
    boxes, labels = detections["boxes"].cpu().numpy(), detections["labels"].cpu().numpy()
    for i, (box, label, score) in enumerate(zip(boxes, labels, detections["scores"].tolist())):
        print(f"box {i}: {[round(float(v)) for v in box]} label {label} score {score:.4f}")

    target_layers = [model.backbone]
    with EigenCAM(model, target_layers, reshape_transform=fpn_reshape_transform) as cam:
        grayscale = cam(input_tensor=x, targets=[FasterRCNNBoxScoreTarget(labels, boxes)])[0]  # (128, 256)
    maps = {"eigencam": grayscale}
    with AblationCAM(model, target_layers, reshape_transform=fpn_reshape_transform, batch_size=64) as cam:
        for i in range(len(boxes)):
            target = FasterRCNNBoxScoreTarget(labels[i : i + 1], boxes[i : i + 1])  # this box alone
            maps[f"ablationcam_box{i}"] = cam(input_tensor=x, targets=[target])[0]

    for name, grayscale in maps.items():
        overlay = draw(show_cam_on_image(rgb, grayscale, use_rgb=True), boxes)
        path = out_dir / f"detection_{name}.png"  # PNG: the test reads the box colours back exactly
        cv2.imwrite(str(path), cv2.cvtColor(overlay, cv2.COLOR_RGB2BGR))
        print(f"wrote: {path}")


if __name__ == "__main__":
    main()
