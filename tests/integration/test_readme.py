"""Every Python snippet of the README runs as shown, offline, from the clone's root (issue: `rgb_img` was
never defined, `ScoreCAM` never imported, `weights="DEFAULT"` needed a download, the ViT's zero head gave
all-zero maps). A snippet that says it continues the one above runs in that one's namespace."""

import os
import re
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[2]
CONTINUES = "(continuing the example above)"


def _snippets() -> list[tuple[int, str, bool]]:
    """``(line, code, continues the previous one)`` of every ```python block."""
    text = (REPO / "README.md").read_text()
    found = []
    for match in re.finditer(r"^```python\n(.*?)^```", text, flags=re.S | re.M):
        before = text[: match.start()].rstrip().splitlines()[-1] if match.start() else ""
        found.append((text[: match.start()].count("\n") + 1, match.group(1), CONTINUES in before))
    return found


def test_the_readme_has_snippets():
    assert len(_snippets()) >= 3


@pytest.mark.slow
def test_every_readme_snippet_runs(monkeypatch):
    monkeypatch.chdir(REPO)
    namespace: dict = {}
    for line, code, continues in _snippets():
        if not continues:
            namespace = {"__name__": "__readme__"}
        try:
            exec(compile(code, f"README.md:{line}", "exec"), namespace)
        except Exception as error:  # the line of the README that failed, in the message
            raise AssertionError(f"the README snippet at line {line} fails: {error!r}") from error
        for name in ("grayscale_cam", "vit_map", "swin_map"):
            if name in namespace:
                maps = np.asarray(namespace[name])
                assert maps.max() > 0.5, (line, name)  # a real map, not zeros (aug_smooth averages six)
    assert os.getcwd() == str(REPO)
