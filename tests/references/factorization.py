"""Independent references the factorization tests compare with: the formulas written out, in float64."""

import numpy as np


def resize_ref(maps, size):
    """(B, K, h, w) -> (B, K, *size) with cv2.resize (bilinear, half-pixel centres)."""
    import cv2

    return np.stack(
        [
            np.stack(
                [cv2.resize(np.float64(m), (size[1], size[0]), interpolation=cv2.INTER_LINEAR) for m in image]
            )
            for image in maps
        ]
    )
