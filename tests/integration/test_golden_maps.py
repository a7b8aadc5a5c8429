"""The maps of every registered method on fixed seeds and inputs, as recorded before the reorganisation.

``golden_maps.py`` lists the cases and rewrites ``golden_maps.npz`` (only when a change of the maps is
intended, said in the commit). Compared to the bit on the machine kind that wrote the file (same torch,
same CPU capability); to within 1e-5 elsewhere, where float32 kernels may round differently.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from tests.integration import golden_maps

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def recorded() -> dict:
    with np.load(golden_maps.GOLDEN_FILE) as data:
        return {key: data[key] for key in data.files}


@pytest.fixture(scope="module")
def recomputed() -> dict:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # some cases are constant maps, whose warning is tested elsewhere
        return golden_maps.compute_all()


def test_the_same_cases(recorded, recomputed):
    assert sorted(recomputed) == sorted(key for key in recorded if key != "__fingerprint__")


def test_the_same_maps(recorded, recomputed):
    exact = str(recorded["__fingerprint__"]) == golden_maps.fingerprint()
    differ = []
    for key, value in recomputed.items():
        expected = recorded[key]
        if expected.dtype.kind == "U" or value.dtype.kind == "U":  # a recorded error: the same error
            same = str(expected) == str(value)
        elif exact:
            same = expected.dtype == value.dtype and np.array_equal(expected, value)
        else:
            same = expected.shape == value.shape and np.allclose(expected, value, rtol=0, atol=1e-5)
        if not same:
            differ.append(key)
    assert not differ, f"{len(differ)} of {len(recomputed)} cases changed: {differ[:20]}"
