"""Command line: explain images' classifications with CAM methods; overlays, raw maps, grids, a report.

Run as ``pytorch-grad-cam ...`` (the installed console script), ``python cam.py ...`` from a source
checkout, or call :func:`main` with a list of arguments.
"""

# Its import checks the installation: when grad-cam was installed after this package, its __init__.py
# replaced this package's, and the console script reaches this module through it.
from .. import _engine  # noqa: F401
from .main import build_parser, main
from .models import CliError

__all__ = ["CliError", "build_parser", "main"]
