"""Grad-CAM on Vision Transformers: torchvision's ViT-B/16 and a timm-style ViT.

    python usage_examples/vit_example.py [--output-dir cam_output] [--device cpu] [--weights DEFAULT]

A transformer layer outputs tokens ``(B, 1 + h*w, C)``, not ``(B, C, h, w)`` maps, so the CAM gets
``reshape_transform=vit_reshape_transform``: it drops the class token and lays the patch tokens out
on the h x w patch grid (14 x 14 for a 224 x 224 input with 16 x 16 patches). The target layer is
the LayerNorm before the last block's attention (``model.encoder.layers[-1].ln_1`` in torchvision,
``model.blocks[-1].norm1`` in timm): after the last block only the class token reaches the classifier,
so the patch tokens of the final output get no gradient at all.

Weights: this script runs offline, so by default the ViT has RANDOM weights and its map shows nothing
meaningful. torchvision initialises the classification head of a ViT to zeros, which makes every class
score constant and every gradient zero (an all-zero map); with random weights the script therefore
re-initialises the head. For a meaningful map pass ``--weights DEFAULT`` (torchvision downloads the
ImageNet weights, about 330 MB, once) - i.e. ``torchvision.models.vit_b_16(weights="DEFAULT")``.

The second map uses a tiny ViT written below with timm's attribute names (``patch_embed``,
``cls_token``, ``pos_embed``, ``blocks[i].norm1``, ``norm``, ``head``); with timm installed it uses
``timm.create_model("vit_tiny_patch16_224")`` instead (random weights too; ``pretrained=True``
downloads them). timm models with register tokens need
``partial(vit_reshape_transform, num_prefix_tokens=model.num_prefix_tokens)``.
"""

import argparse
import importlib.util
from pathlib import Path

import cv2
import numpy as np
import torch
import torchvision
from torch import nn

from pytorch_grad_cam import GradCAM
from pytorch_grad_cam.utils.image import preprocess_image, show_cam_on_image
from pytorch_grad_cam.utils.reshape_transforms import vit_reshape_transform

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "cat.jpg"
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


class TimmStyleBlock(nn.Module):
    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, N, C) -> (B, N, C)
        h = self.norm1(x)
        x = x + self.attn(h, h, h, need_weights=False)[0]
        return x + self.mlp(self.norm2(x))


class TimmStyleViT(nn.Module):
    """A tiny ViT with the attribute names of timm's VisionTransformer (random weights)."""

    def __init__(
        self,
        img_size: int = 224,
        patch: int = 16,
        dim: int = 64,
        depth: int = 2,
        heads: int = 4,
        num_classes: int = 10,
    ) -> None:
        super().__init__()
        self.patch_embed = nn.Conv2d(3, dim, kernel_size=patch, stride=patch)
        self.cls_token = nn.Parameter(0.02 * torch.randn(1, 1, dim))
        self.pos_embed = nn.Parameter(0.02 * torch.randn(1, 1 + (img_size // patch) ** 2, dim))
        self.blocks = nn.Sequential(*[TimmStyleBlock(dim, heads) for _ in range(depth)])
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, 3, H, W) -> (B, num_classes)
        patches = self.patch_embed(x).flatten(2).transpose(1, 2)  # (B, h*w, C)
        tokens = torch.cat([self.cls_token.expand(len(x), -1, -1), patches], dim=1) + self.pos_embed
        return self.head(self.norm(self.blocks(tokens))[:, 0])  # the class token


def save_overlay(rgb: np.ndarray, grayscale: np.ndarray, path: Path) -> None:
    overlay = show_cam_on_image(rgb, grayscale, use_rgb=True)  # (H, W, 3) uint8 RGB
    cv2.imwrite(str(path), cv2.cvtColor(overlay, cv2.COLOR_RGB2BGR))
    print(f"wrote: {path}")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--output-dir", default="cam_output")
    parser.add_argument("--device", default="cpu")
    parser.add_argument(
        "--weights",
        default=None,
        help="torchvision weights for vit_b_16, e.g. DEFAULT (downloads); default: random",
    )
    args = parser.parse_args()
    out_dir = Path(args.output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)

    bgr = cv2.resize(cv2.imread(str(EXAMPLE)), (224, 224))
    rgb = np.float32(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)) / 255  # (224, 224, 3) in [0, 1]
    x = preprocess_image(rgb, mean=IMAGENET_MEAN, std=IMAGENET_STD).to(args.device)  # (1, 3, 224, 224)

    # 1. torchvision's ViT-B/16.
    model = torchvision.models.vit_b_16(weights=args.weights).eval().to(args.device)
    if args.weights is None:
        # torchvision zero-initialises the head: all class scores would be 0 and all gradients zero.
        nn.init.normal_(model.heads.head.weight, std=0.02)
        print("vit_b_16 has random weights (offline); pass --weights DEFAULT for ImageNet weights")
    with GradCAM(
        model=model, target_layers=[model.encoder.layers[-1].ln_1], reshape_transform=vit_reshape_transform
    ) as cam:
        grayscale = cam(input_tensor=x, targets=None)[0]  # the top class; (224, 224) in [0, 1]
    save_overlay(rgb, grayscale, out_dir / "vit_torchvision.jpg")

    # 2. A timm-style ViT: same transform, target layer blocks[-1].norm1.
    if importlib.util.find_spec("timm") is not None:
        import timm

        model = timm.create_model("vit_tiny_patch16_224", pretrained=False)
    else:
        model = TimmStyleViT()
    model = model.eval().to(args.device)
    with GradCAM(
        model=model, target_layers=[model.blocks[-1].norm1], reshape_transform=vit_reshape_transform
    ) as cam:
        grayscale = cam(input_tensor=x, targets=None)[0]
    save_overlay(rgb, grayscale, out_dir / "vit_timm_style.jpg")


if __name__ == "__main__":
    main()
