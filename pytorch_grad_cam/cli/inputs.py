"""The CLI's inputs: files, folders (recursively) and glob patterns, each image read once."""

from __future__ import annotations

import glob
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # numpy and OpenCV load when an image is read, not when the CLI starts
    import numpy as np

#: Extensions taken when walking a folder (any explicitly named file is tried whatever its name).
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".pbm")


@dataclass(frozen=True)
class InputImage:
    """One image to explain: where it is, and the stem of its outputs' names."""

    path: str  # as the user can find it (the path given, or under the folder given)
    key: str  # where its outputs go, relative to --output-dir, without extension: "cat" or "sub/cat"


def collect_inputs(specs: Sequence[str]) -> tuple[list[InputImage], list[tuple[str, str]]]:
    """Expand files, folders and globs into images, in a stable order, each once.

    Returns ``(images, problems)``: ``problems`` are ``(spec, why)`` for specs that match nothing.
    Output keys mirror the folder structure below a folder given, and are made unique (``cat-2``).
    """
    found: list[tuple[str, str]] = []  # (path, key)
    problems: list[tuple[str, str]] = []
    for spec in specs:
        matched, why = _expand(spec)
        found.extend(matched)
        if why:
            problems.append((spec, why))
    images, seen_paths, seen_keys = [], set(), set()
    for path, key in found:
        real = os.path.realpath(path)
        if real in seen_paths:
            continue
        seen_paths.add(real)
        unique, n = key, 1
        while unique in seen_keys:
            n += 1
            unique = f"{key}-{n}"
        seen_keys.add(unique)
        images.append(InputImage(path, unique))
    return images, problems


def _expand(spec: str) -> tuple[list[tuple[str, str]], str]:
    """``([(path, key)], why)`` of one spec: a folder (walked), a file, or a glob.

    ``why`` says why it matches nothing (empty when it matches something, or is a file).
    """
    if os.path.isdir(spec):
        paths = sorted(_walk_images(spec))
        why = "" if paths else f"no images ({', '.join(IMAGE_EXTENSIONS[:4])}, ...) in this folder"
        return [(p, _stem(os.path.relpath(p, spec))) for p in paths], why
    if os.path.isfile(spec):
        return [(spec, _stem(os.path.basename(spec)))], ""
    if glob.has_magic(spec):
        paths = sorted(p for p in glob.glob(spec, recursive=True) if os.path.isfile(p))
        return [
            (p, _stem(os.path.basename(p))) for p in paths
        ], "" if paths else "the pattern matches no file"
    return [], "no such file or folder"


def _walk_images(root: str) -> Iterator[str]:
    for folder, dirs, files in os.walk(root):
        dirs.sort()
        for name in files:
            if name.lower().endswith(IMAGE_EXTENSIONS) and not name.startswith("."):
                yield os.path.join(folder, name)


def _stem(relative: str) -> str:
    return os.path.splitext(relative)[0].replace(os.sep, "/")


def read_image(path: str) -> np.ndarray:
    """The image as float32 RGB in [0, 1], HxWx3; raises ValueError saying why it cannot be read."""
    import cv2
    import numpy as np

    data = np.fromfile(path, dtype=np.uint8) if os.path.isfile(path) else None
    if data is None:
        raise ValueError("no such file")
    bgr = cv2.imdecode(data, cv2.IMREAD_COLOR) if data.size else None
    if bgr is None:
        raise ValueError("not an image OpenCV can decode")
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB).astype(np.float32) / 255.0
