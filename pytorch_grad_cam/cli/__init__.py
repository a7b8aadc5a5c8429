"""Command line: explain images' classifications with CAM methods; overlays, raw maps, grids, a report.

Run as ``pytorch-grad-cam ...`` (the installed console script), ``python cam.py ...`` from a source
checkout, or call :func:`main` with a list of arguments.
"""

from .main import build_parser, main
from .models import CliError

__all__ = ["CliError", "build_parser", "main"]
