"""Methods built on other methods: FinerCAM (targets), RefineCAM (fusion of layers), SESS (the input)."""

from .base import CompositeCAM
from .finer import FinerCAM
from .refine import RefineCAM
from .sess import SESS

__all__ = ["SESS", "CompositeCAM", "FinerCAM", "RefineCAM"]
