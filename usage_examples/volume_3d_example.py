"""Grad-CAM on a 3-D volume: the same call as for images, on a (1, 1, D, H, W) input.

    python usage_examples/volume_3d_example.py [--output-dir cam_output] [--device cpu] [--octant 1 0 1]

A small 3-D conv net is trained for a few seconds on synthetic 24^3 volumes of noise, half of them with
a bright 6^3 cube somewhere ("is there a cube?"). Grad-CAM on its last conv block, for the class
"cube", then shows where the evidence is: on a test volume with the cube planted in one octant the
map, a (24, 24, 24) volume, peaks there. Nothing but the input's rank changes compared with 2-D:
the engine averages the gradients over all spatial axes and upsamples the map trilinearly.

Writes three orthogonal slices through the planted cube (axial z, coronal y, sagittal x), the map
over the volume in grey, each scaled up to 192 x 192 pixels, and prints the map's peak voxel and
the share of the map's mass that lies in the planted octant (1/8 if it were spread evenly).
"""

import argparse
from pathlib import Path

import cv2
import numpy as np
import torch
from torch import nn

from pytorch_grad_cam import GradCAM
from pytorch_grad_cam.utils.image import show_cam_on_image
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

SIDE, CUBE = 24, 6
CUBE_CLASS = 1


def volumes(batch: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """``(batch, 1, 24, 24, 24)`` noise volumes, a bright cube at a random place in every other one."""
    x = 0.3 * torch.randn(batch, 1, SIDE, SIDE, SIDE, generator=generator)
    labels = torch.arange(batch) % 2  # (batch,): 1 = has a cube
    for i in range(0, batch, 2):
        z, y, w = torch.randint(0, SIDE - CUBE + 1, (3,), generator=generator).tolist()
        x[i + 1, 0, z : z + CUBE, y : y + CUBE, w : w + CUBE] += 1.0
    return x, labels


def make_model() -> nn.Module:
    # Global max pooling asks "is there a cube anywhere?"; replicate padding keeps the volume's faces
    # from looking like edges (with zero padding the map lights up the borders).
    conv = dict(kernel_size=3, padding=1, padding_mode="replicate")
    return nn.Sequential(
        nn.Conv3d(1, 8, **conv),
        nn.ReLU(),
        nn.Conv3d(8, 16, stride=2, **conv),
        nn.ReLU(),
        nn.Conv3d(16, 16, **conv),
        nn.ReLU(),  # model[4], the target layer: (B, 16, 12, 12, 12)
        nn.AdaptiveMaxPool3d(1),
        nn.Flatten(),
        nn.Linear(16, 2),
    )


def train(model: nn.Module, steps: int, device: str) -> float:
    generator = torch.Generator().manual_seed(0)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(steps):
        x, labels = volumes(16, generator)
        loss = nn.functional.cross_entropy(model(x.to(device)), labels.to(device))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    x, labels = volumes(64, generator)
    with torch.no_grad():
        return float((model(x.to(device)).argmax(1).cpu() == labels).float().mean())


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--output-dir", default="cam_output")
    parser.add_argument("--device", default="cpu")
    parser.add_argument(
        "--octant",
        type=int,
        nargs=3,
        default=[1, 0, 1],
        metavar=("Z", "Y", "X"),
        help="the octant of the test cube: 0 = lower half, 1 = upper half, per axis",
    )
    parser.add_argument("--steps", type=int, default=40, help="training steps (batches of 16 volumes)")
    args = parser.parse_args()
    out_dir = Path(args.output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)

    model = make_model().to(args.device)
    accuracy = train(model, args.steps, args.device)
    model.eval()
    print(f"trained a 3-D conv net for {args.steps} steps; held-out accuracy {accuracy:.2f}")

    # A test volume with the cube in the middle of the chosen octant.
    start = [SIDE // 4 - CUBE // 2 + half * SIDE // 2 for half in args.octant]  # 3 or 15 per axis
    volume = 0.3 * torch.randn(1, 1, SIDE, SIDE, SIDE, generator=torch.Generator().manual_seed(1))
    box = tuple(slice(s, s + CUBE) for s in start)
    volume[(0, 0, *box)] += 1.0

    with GradCAM(model=model, target_layers=[model[4]]) as cam:
        target = ClassifierOutputTarget(CUBE_CLASS)
        grayscale = cam(input_tensor=volume.to(args.device), targets=[target])[0]  # (24, 24, 24) in [0, 1]
    peak = np.unravel_index(grayscale.argmax(), grayscale.shape)
    octant = tuple(slice(half * SIDE // 2, (half + 1) * SIDE // 2) for half in args.octant)
    share = grayscale[octant].sum() / grayscale.sum()
    print(
        f"cube at voxels {[(s.start, s.stop - 1) for s in box]} (octant {tuple(args.octant)}); "
        f"map peak at voxel {tuple(int(p) for p in peak)}; share of the map in the octant {share:.2f}"
    )

    vol = volume[0, 0].numpy()
    vol = (vol - vol.min()) / (vol.max() - vol.min())  # [0, 1] for display
    centre = [s + CUBE // 2 for s in start]
    for axis, name in enumerate(("axial", "coronal", "sagittal")):
        index = [slice(None)] * 3
        index[axis] = centre[axis]
        grey = np.repeat(vol[tuple(index)][..., None], 3, axis=-1).astype(np.float32)  # (24, 24, 3)
        overlay = show_cam_on_image(grey, grayscale[tuple(index)], use_rgb=True)
        overlay = cv2.resize(overlay, (192, 192), interpolation=cv2.INTER_NEAREST)
        path = out_dir / f"volume_{name}_slice.png"
        cv2.imwrite(str(path), cv2.cvtColor(overlay, cv2.COLOR_RGB2BGR))
        print(f"wrote: {path}")


if __name__ == "__main__":
    main()
