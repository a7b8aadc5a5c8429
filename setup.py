# All metadata lives in pyproject.toml but one field; this shim also serves old tools that still call
# "python setup.py ...". The licence is here because pyproject.toml's `license = "MIT"` is written as
# `License-Expression`, which `pip show` before pip 25 prints as an empty `License:`; the core-metadata
# `License` field written from here is shown by every pip.
from setuptools import setup

setup(license="MIT")
