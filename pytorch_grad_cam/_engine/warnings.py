"""Warnings that point at the user's line, however deep in the library they are raised.

A fixed ``stacklevel`` is right for one call path only: the same warning reached through ``cam(...)``,
``cam.forward(...)``, ``aug_smooth=True`` or a composite method (SESS, RefineCAM) sits at a different
depth. :func:`warn` counts the frames inside this package instead, so the warning always names the
first line outside it.
"""

from __future__ import annotations

import inspect
import os
import warnings

# pytorch_grad_cam/, the parent of this _engine/ folder.
_PACKAGE_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__))) + os.sep


def warn(message: str, category: type = UserWarning) -> None:
    """``warnings.warn(message, category)`` attributed to the first caller outside ``pytorch_grad_cam``."""
    level, frame = 1, inspect.currentframe()  # this function's frame
    while frame is not None and os.path.abspath(frame.f_code.co_filename).startswith(_PACKAGE_DIR):
        frame = frame.f_back
        level += 1
    warnings.warn(message, category, stacklevel=level)
