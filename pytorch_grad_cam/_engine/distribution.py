"""This package shares its import name, ``pytorch_grad_cam``, with the ``grad-cam`` distribution.

Both install into ``site-packages/pytorch_grad_cam/``. Installed into one environment, the second
installation silently overwrites the first one's modules, and ``pip uninstall`` of either deletes files
the other one needs. Nothing works reliably after that, so importing this package (or its command line)
refuses to go on and says how to repair the environment.
"""

from __future__ import annotations

import importlib.metadata
import os

#: The distribution on PyPI whose package directory is also ``pytorch_grad_cam``.
CONFLICTING_DISTRIBUTION = "grad-cam"

# pytorch_grad_cam/, the parent of this _engine/ folder.
_PACKAGE_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def conflicting_distribution(package_dir: str = _PACKAGE_DIR) -> str | None:
    """The ``grad-cam`` version installed into ``package_dir``'s folder, or None when there is none there.

    A ``grad-cam`` installed elsewhere (``pip install --target DIR``, another virtual environment) does not
    touch this package's files and is not a conflict.
    """
    try:
        dist = importlib.metadata.distribution(CONFLICTING_DISTRIBUTION)
    except importlib.metadata.PackageNotFoundError:
        return None
    theirs = os.path.realpath(str(dist.locate_file("pytorch_grad_cam")))
    return dist.version if theirs == os.path.realpath(package_dir) else None


def check_no_conflicting_distribution(package_dir: str = _PACKAGE_DIR) -> None:
    """Raise ImportError naming both distributions and the fix when ``grad-cam`` shares this package's folder.

    Raises:
        ImportError: ``grad-cam`` is installed into the same ``pytorch_grad_cam/`` folder.
    """
    version = conflicting_distribution(package_dir)
    if version is None:
        return
    raise ImportError(
        f"the distributions 'pytorch_grad_cam' and '{CONFLICTING_DISTRIBUTION}' ({version}) are both "
        f"installed into {package_dir}: they share the import name pytorch_grad_cam, so one has overwritten "
        "the other's modules and uninstalling either deletes files of both. Repair the environment with "
        f"`pip uninstall -y {CONFLICTING_DISTRIBUTION} pytorch_grad_cam` and then `pip install "
        "pytorch_grad_cam` again (to compare with grad-cam, install it apart: `pip install --target DIR "
        "grad-cam`, and import it with DIR first on sys.path in another process)"
    )
