# All metadata lives in pyproject.toml; this shim only serves old tools that
# still call "python setup.py ...".
from setuptools import setup

setup()
