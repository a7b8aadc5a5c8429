"""Command line: explain one image's classification with a CAM method and save the overlay.

Run as ``pytorch-grad-cam ...`` (the installed console script), ``python cam.py ...`` from a
source checkout, or call :func:`main` with a list of arguments.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence

DEFAULT_MODEL = "efficientnet-lite0"
DEFAULT_OUTPUT_DIR = "cam_output"

EXAMPLES = """\
examples:
  # Grad-CAM of the top class, offline pretrained EfficientNet-Lite0:
  python cam.py --image-path examples/cat.jpg
  # explain a class other than the top one (967 = espresso), with Grad-CAM++:
  python cam.py --image-path examples/cat_and_coffee.jpg --method gradcam++ --target-category 967
  # smoother maps (test-time augmentation; first principal component):
  python cam.py --image-path examples/coffee.jpg --method eigencam --aug-smooth --eigen-smooth
  # a torchvision model (its weights are downloaded once, then cached by torch):
  python cam.py --image-path examples/cat.jpg --model resnet50 --device cuda

exit status: 0 success, 1 failure (unreadable image, weights not available, ...),
2 bad arguments.
"""

# torchvision classification model name prefix -> the CAM target layer, as a function of the model.
# The last convolutional stage before global pooling.
_TORCHVISION_TARGET_LAYERS: Sequence[tuple[tuple[str, ...], str, Callable]] = (
    (("resnet", "resnext", "wide_resnet"), "model.layer4[-1]", lambda m: m.layer4[-1]),
    (("vgg", "densenet"), "model.features[-1]", lambda m: m.features[-1]),
    (("mnasnet",), "model.layers[-1]", lambda m: m.layers[-1]),
    (("efficientnet", "mobilenet", "convnext"), "model.features[-1]", lambda m: m.features[-1]),
)


class CliError(Exception):
    """A failure to report on stderr, then exit with ``code``."""

    def __init__(self, message: str, code: int = 1) -> None:
        super().__init__(message)
        self.code = code


def _method_names() -> list[str]:
    from .registry import METHODS

    return list(METHODS)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Compute a Class Activation Map (Grad-CAM and family) for one image with an "
        "ImageNet classifier, and save it overlaid on the image as <output-dir>/<stem>_<method>.jpg.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--image-path", "--image_path", dest="image_path", required=True, metavar="PATH",
                        help="the image to explain (any format OpenCV reads)")
    parser.add_argument("--method", default="gradcam", choices=_method_names(),
                        help="the CAM method (default: %(default)s)")
    device = parser.add_mutually_exclusive_group()
    device.add_argument("--use-cuda", "--use_cuda", dest="use_cuda", action="store_true",
                        help="run on the GPU (same as --device cuda); an error when CUDA is not available")
    device.add_argument("--device", metavar="DEV",
                        help="torch device to run on, e.g. cpu, cuda, cuda:1 (default: cpu)")
    parser.add_argument("--aug-smooth", "--aug_smooth", dest="aug_smooth", action="store_true",
                        help="average the map over test-time augmentations (flips, scales); slower, "
                        "better centred on the object")
    parser.add_argument("--eigen-smooth", "--eigen_smooth", dest="eigen_smooth", action="store_true",
                        help="keep only the first principal component of the weighted activations "
                        "(less noise)")
    parser.add_argument("--target-category", "--target_category", dest="target_category", type=int,
                        metavar="K", help="ImageNet class index (0-999) to explain (default: the top class)")
    parser.add_argument("--output-dir", "--output_dir", dest="output_dir", default=DEFAULT_OUTPUT_DIR,
                        metavar="DIR", help="folder for the overlay image (default: %(default)s)")
    parser.add_argument("--model", default=DEFAULT_MODEL, metavar="NAME",
                        help=f"'{DEFAULT_MODEL}' (default: ImageNet-pretrained, weights shipped in a pip "
                        "package, no download) or a torchvision classification model name such as resnet50, "
                        "vgg16, densenet121, mobilenet_v3_large, efficientnet_b0, convnext_tiny "
                        "(its default weights are downloaded once)")
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    return parser


def _version() -> str:
    try:
        from importlib.metadata import version

        return version("pytorch_grad_cam")
    except Exception:  # noqa: BLE001 -- not installed: running from a source tree
        return "unknown"


def _pick_device(args: argparse.Namespace, parser: argparse.ArgumentParser):
    import torch

    if args.use_cuda:
        if not torch.cuda.is_available():
            parser.error("--use-cuda was given but CUDA is not available on this machine "
                         "(no GPU, or a CPU-only build of torch); leave it out to run on the CPU")
        return torch.device("cuda")
    if args.device is None:
        return torch.device("cpu")
    try:
        device = torch.device(args.device)
    except (RuntimeError, ValueError) as exc:
        parser.error(f"--device {args.device!r} is not a torch device: {exc}")
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error(f"--device {args.device} was given but CUDA is not available on this machine")
    return device


def _torchvision_target_layer(name: str, parser: argparse.ArgumentParser):
    for prefixes, description, getter in _TORCHVISION_TARGET_LAYERS:
        if name.startswith(prefixes):
            return description, getter
    known = ", ".join(p + "*" for prefixes, _, _ in _TORCHVISION_TARGET_LAYERS for p in prefixes)
    parser.error(f"--model {name}: no known CAM target layer for this architecture; the CLI supports "
                 f"{DEFAULT_MODEL} and torchvision's {known} (use the Python API to pick a layer yourself)")


def _load_model(name: str, parser: argparse.ArgumentParser):
    """Return (model, target_layer, mean, std, input_size, class_names)."""
    if name == DEFAULT_MODEL:
        from . import pretrained

        try:
            model = pretrained.load_efficientnet_lite0()
        except ImportError as exc:
            raise CliError(str(exc)) from exc
        return (model, pretrained.efficientnet_target_layer(model), pretrained.EFFICIENTNET_LITE0_MEAN,
                pretrained.EFFICIENTNET_LITE0_STD, pretrained.EFFICIENTNET_LITE0_INPUT_SIZE,
                pretrained.IMAGENET_CLASSES)

    import torch
    import torchvision

    available = torchvision.models.list_models(module=torchvision.models)
    if name not in available:
        parser.error(f"--model {name!r}: not '{DEFAULT_MODEL}' nor a torchvision classification model "
                     f"(e.g. {', '.join(n for n in ('resnet50', 'vgg16', 'densenet121') if n in available)})")
    _, get_layer = _torchvision_target_layer(name, parser)
    weights = torchvision.models.get_model_weights(name).DEFAULT
    try:
        model = torchvision.models.get_model(name, weights="DEFAULT")
    except Exception as exc:  # URLError, HTTPError, SSL, checksum mismatch, ...
        hub_dir = torch.hub.get_dir()
        file_name = os.path.basename(weights.url)
        raise CliError(
            f"could not download the pretrained weights of {name} ({type(exc).__name__}: {exc}).\n"
            f"torch caches downloaded weights under {hub_dir} (in its 'checkpoints' folder); copy "
            f"{file_name} (from {weights.url}) to {os.path.join(hub_dir, 'checkpoints', file_name)} "
            f"and run again, or leave out --model to use the offline {DEFAULT_MODEL}."
        ) from exc
    model.eval()
    transforms = weights.transforms()
    mean = tuple(getattr(transforms, "mean", (0.485, 0.456, 0.406)))
    std = tuple(getattr(transforms, "std", (0.229, 0.224, 0.225)))
    crop = getattr(transforms, "crop_size", [224])
    input_size = int(crop[0] if isinstance(crop, (list, tuple)) else crop)
    return model, get_layer(model), mean, std, input_size, list(weights.meta.get("categories", []))


def _read_image(path: str):
    """The image as float32 RGB in [0, 1], HxWx3."""
    import cv2
    import numpy as np

    if not os.path.isfile(path):
        raise CliError(f"cannot read image {path!r}: no such file")
    bgr = cv2.imread(path, cv2.IMREAD_COLOR)
    if bgr is None:
        raise CliError(f"cannot read image {path!r}: not an image format OpenCV can decode")
    rgb = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
    return np.float32(rgb) / 255.0


def _run(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    import cv2
    import numpy as np
    import torch

    from .registry import METHODS
    from .utils.image import preprocess_image, show_cam_on_image
    from .utils.model_targets import ClassifierOutputTarget

    device = _pick_device(args, parser)
    if args.target_category is not None and args.target_category < 0:
        parser.error(f"--target-category must be >= 0, got {args.target_category}")
    image = _read_image(args.image_path)
    model, target_layer, mean, std, size, class_names = _load_model(args.model, parser)
    model = model.to(device)

    resized = cv2.resize(image, (size, size), interpolation=cv2.INTER_AREA)
    input_tensor = preprocess_image(resized, mean=list(mean), std=list(std)).to(device)

    with torch.no_grad():
        probabilities = torch.softmax(model(input_tensor).float(), dim=1)[0].cpu()
    num_classes = probabilities.numel()
    if args.target_category is None:
        category = int(probabilities.argmax())
    else:
        category = args.target_category
        if category >= num_classes:
            parser.error(f"--target-category {category} is out of range: the model has {num_classes} classes")

    cam_class = METHODS[args.method]
    with cam_class(model=model, target_layers=[target_layer], device=device) as cam:
        grayscale = cam(input_tensor=input_tensor, targets=[ClassifierOutputTarget(category)],
                        aug_smooth=args.aug_smooth, eigen_smooth=args.eigen_smooth)[0]

    # Overlay at the image's own resolution: the map is upsampled back from the model's input size.
    height, width = image.shape[:2]
    if grayscale.shape != (height, width):
        grayscale = cv2.resize(grayscale, (width, height), interpolation=cv2.INTER_LINEAR)
    grayscale = np.clip(grayscale, 0.0, 1.0).astype(np.float32)
    overlay_rgb = show_cam_on_image(image, grayscale, use_rgb=True)

    os.makedirs(args.output_dir, exist_ok=True)
    stem = os.path.splitext(os.path.basename(args.image_path))[0]
    out_path = os.path.join(args.output_dir, f"{stem}_{args.method}.jpg")
    if not cv2.imwrite(out_path, cv2.cvtColor(overlay_rgb, cv2.COLOR_RGB2BGR)):
        raise CliError(f"could not write {out_path}")

    name = class_names[category] if category < len(class_names) else "?"
    print(f"model: {args.model}  method: {args.method}  device: {device}")
    print(f"explained class: {category} ({name}), probability {float(probabilities[category]):.4f}")
    print(f"wrote: {out_path}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line with ``argv`` (default: ``sys.argv[1:]``); return the exit status.

    Bad arguments raise ``SystemExit(2)`` from argparse, as on the command line.
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return _run(args, parser)
    except CliError as exc:
        print(f"{parser.prog}: error: {exc}", file=sys.stderr)
        return exc.code
    except Exception as exc:  # noqa: BLE001 -- report it, do not dump a traceback at the user
        print(f"{parser.prog}: error: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
