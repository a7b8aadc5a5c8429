"""Argument checks shared by every method's constructor: one wording, one rule for error types.

A value of the wrong type raises ``TypeError``; a value of the right type outside its range raises
``ValueError``. Each message names the argument, what was expected and what was given.
"""
from __future__ import annotations

import math
from typing import Any, Optional

import numpy as np

_INTS = (int, np.integer)
_REALS = (int, float, np.integer, np.floating)


def check_int(value: Any, name: str, minimum: Optional[int] = None) -> int:
    """``value`` as a Python int (numpy ints accepted, bools refused), at least ``minimum`` if given."""
    expected = "an int" if minimum is None else f"an int >= {minimum}"
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, _INTS):
        raise TypeError(f"{name} must be {expected}, got {type(value).__name__} {value!r}")
    if minimum is not None and value < minimum:
        raise ValueError(f"{name} must be {expected}, got {int(value)}")
    return int(value)


def check_float(value: Any, name: str, minimum: Optional[float] = None, maximum: Optional[float] = None,
                include_minimum: bool = True) -> float:
    """``value`` as a finite Python float (ints and numpy numbers accepted, bools refused) within
    ``[minimum, maximum]`` (``(minimum, maximum]`` with ``include_minimum=False``)."""
    low = "" if minimum is None else f"{'>=' if include_minimum else '>'} {minimum}"
    high = "" if maximum is None else f"<= {maximum}"
    expected = "a finite float" + (f" {low}" if low else "") + (f" and {high}" if low and high else
                                                               f" {high}" if high else "")
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, _REALS):
        raise TypeError(f"{name} must be {expected}, got {type(value).__name__} {value!r}")
    value = float(value)
    below = minimum is not None and (value < minimum if include_minimum else value <= minimum)
    if not math.isfinite(value) or below or (maximum is not None and value > maximum):
        raise ValueError(f"{name} must be {expected}, got {value}")
    return value


def check_seed(seed: Any, name: str = "seed") -> Optional[int]:
    """``None`` (fresh randomness on every call) or an int seed."""
    if seed is not None and (isinstance(seed, (bool, np.bool_)) or not isinstance(seed, _INTS)):
        raise TypeError(f"{name} must be None or an int, got {type(seed).__name__} {seed!r}")
    return None if seed is None else int(seed)
