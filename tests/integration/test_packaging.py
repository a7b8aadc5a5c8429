"""What ``pip show`` and ``help()`` tell a user: every method in the summary, the licence, signatures."""

import importlib.metadata
import inspect
import re

from pytorch_grad_cam.registry import KINDS


def _folded(text: str) -> str:
    return re.sub(r"[\s\-]", "", text.lower())


def test_the_summary_names_every_registered_method():
    summary = _folded(importlib.metadata.metadata("pytorch_grad_cam")["Summary"])
    aliases = {"dff": "deepfeaturefactorization(dff)"}
    missing = [name for table in KINDS.values() for name in table if aliases.get(name, name) not in summary]
    assert missing == []


def test_the_licence_is_in_the_field_every_pip_shows():
    metadata = importlib.metadata.metadata("pytorch_grad_cam")
    assert metadata["License"] == "MIT"  # pip 23's `pip show` prints only this field
    assert "License :: OSI Approved :: MIT License" in metadata.get_all("Classifier")


def test_signatures_show_no_object_reprs():
    """``target_category=<object object at 0x...>`` was what help(GradCAM) showed for the first API's name."""
    shown = [
        f"{cls.__name__}.{method}: {inspect.signature(getattr(cls, method))}"
        for table in KINDS.values()
        for cls in table.values()
        for method in ("__init__", "__call__")
    ]
    assert not [line for line in shown if " at 0x" in line]
    gradcam = next(line for line in shown if line.startswith("GradCAM.__call__"))
    assert "target_category: 'Any' = <not given>" in gradcam
