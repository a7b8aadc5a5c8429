"""The CLI's progress: what the run costs (:class:`WorkPlan`), the bar on stderr and the writer of every line.

A run with a perturbation method (Score-CAM and its SS/IS variants, Ablation-CAM, SESS: hundreds to tens of
thousands of forward passes per image) counts forward passes, so that the bar moves within an image; any
other run counts images. The runner reports units as they are done (:meth:`.runner.Runner.run_batch`'s
``progress``); while the bar is shown, every console line goes through its writer, so that no line is
printed into the middle of the bar.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Any, TextIO

__all__ = ["MIN_IMAGES_FOR_A_BAR", "MethodCost", "Progress", "WorkPlan", "duration"]

#: A run counting images shows its bar from this many images on (a perturbation run always shows one).
MIN_IMAGES_FOR_A_BAR = 4

PASSES = "pass"
IMAGES = "image"


@dataclass(frozen=True)
class MethodCost:
    """One perturbation method's forward passes per image and class slot (with --aug-smooth's copies).

    ``per_class``: False for a class-agnostic method (computed once whatever the number of classes).
    ``partial``: its passes run only the layers after the target layer (Ablation-CAM), so the time of
    whole passes is an upper bound.
    """

    method: str
    passes: int
    per_class: bool = True
    partial: bool = False


@dataclass(frozen=True)
class WorkPlan:
    """What one image costs, in the unit the progress bar counts.

    Attributes:
        unit: ``"pass"`` (forward passes, when the run has a perturbation method) or ``"image"``.
        per_image: units per image: every method's passes (1 for a method that is not a perturbation
            method) times its class slots, or 1 when counting images.
        costs: the perturbation methods' passes, for the estimate printed before the run.
        classes: class slots per image.
        seconds_per_pass: one forward pass of the model, timed on the first image (None: not timed).
    """

    unit: str
    per_image: int
    costs: tuple[MethodCost, ...] = ()
    classes: int = 1
    seconds_per_pass: float | None = None

    def estimates(self, images: int) -> list[str]:
        """One line per perturbation method: its passes per image and about how long ``images`` take here.

        ``scorecam: 1,280 forward passes per image, about 6 min here for 1 image``.
        Several perturbation methods: one line each.
        """
        lines = []
        for cost in self.costs:
            slots = self.classes if cost.per_class else 1
            per = "per image and class" if slots > 1 else "per image"
            line = f"{cost.method}: {cost.passes:,} forward passes {per}"
            if cost.partial:
                line += " (of the layers after the target layer)"
            if self.seconds_per_pass is not None:
                seconds = cost.passes * slots * images * self.seconds_per_pass
                bound = "at most " if cost.partial and seconds >= 1 else ""
                line += f", {bound}{duration(seconds)} here for {images} image{'s' if images != 1 else ''}"
            lines.append(line)
        return lines


def duration(seconds: float) -> str:
    """``"under 1 s"``, ``"about 40 s"``, ``"about 3 min"``, ``"about 2.5 h"``: a rough duration."""
    if seconds < 1:
        return "under 1 s"
    if seconds < 90:
        return f"about {round(seconds)} s"
    if seconds < 90 * 60:
        return f"about {round(seconds / 60)} min"
    return f"about {seconds / 3600:.1f} h"


class Progress:
    """The run's progress bar (tqdm, on stderr) and the writer of every console line.

    Nothing is drawn until :meth:`open`; then :meth:`write` prints through the bar (tqdm clears it, prints
    the line, draws it again), and :meth:`close` (or leaving the ``with`` block) removes it.
    """

    def __init__(self) -> None:
        """No bar yet."""
        self._bar: Any = None

    def open(self, total: int, unit: str) -> None:
        """Show a bar of ``total`` units (``"pass"``: forward passes, ``"image"``: images)."""
        from tqdm import tqdm

        self.close()
        desc = "forward passes" if unit == PASSES else None
        self._bar = tqdm(total=total, unit=unit, desc=desc, file=sys.stderr, leave=False, dynamic_ncols=True)

    def advance(self, units: int) -> None:
        """``units`` more done (nothing without a bar, or for ``units <= 0``)."""
        if self._bar is not None and units > 0:
            self._bar.update(units)

    def write(self, text: str, file: TextIO) -> None:
        """Print a line to ``file``, through the bar when one is shown."""
        if self._bar is None:
            print(text, file=file, flush=True)
            return
        self._bar.write(text, file=file)
        file.flush()

    def close(self) -> None:
        """Remove the bar, if there is one."""
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def __enter__(self) -> Progress:
        """The progress itself; the bar is closed when the block ends."""
        return self

    def __exit__(self, *exc_info: object) -> None:
        """Close the bar."""
        self.close()
