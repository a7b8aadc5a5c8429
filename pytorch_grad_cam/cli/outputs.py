"""The CLI's outputs: labelled grids, the results.jsonl log and the HTML report."""

from __future__ import annotations

import base64
import html
import os
from collections.abc import Sequence

import cv2
import numpy as np

from .text import printable

REPORT_FILE = "report.html"
TILE_HEIGHT = 224
LABEL_HEIGHT = 26


def write_image(path: str, rgb: np.ndarray) -> None:
    """Write an RGB uint8 image (the folder is created); raises OSError when it cannot be written."""
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    ok, encoded = cv2.imencode(os.path.splitext(path)[1] or ".jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    if not ok:
        raise OSError(f"could not encode {path}")
    encoded.tofile(path)


def _tile(rgb: np.ndarray, label: str) -> np.ndarray:
    """The image scaled to TILE_HEIGHT with a white label bar above it."""
    height, width = rgb.shape[:2]
    new_width = max(1, round(width * TILE_HEIGHT / height))
    body = cv2.resize(rgb, (new_width, TILE_HEIGHT), interpolation=cv2.INTER_AREA)
    bar = np.full((LABEL_HEIGHT, new_width, 3), 255, np.uint8)
    text = label  # OpenCV's Hershey fonts are ASCII: shorten with "~" until it fits
    while len(text) > 1 and cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, 0.5, 1)[0][0] > new_width - 8:
        text = text[:-2] + "~"
    cv2.putText(bar, text, (4, 18), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (0, 0, 0), 1, cv2.LINE_AA)
    return np.concatenate([bar, body], 0)


def make_grid(rows: Sequence[Sequence[tuple]]) -> np.ndarray:
    """Rows of ``(label, rgb uint8 image)`` tiles side by side, rows stacked, 4-pixel white gutters."""
    built = []
    for row in rows:
        tiles = [_tile(image, label) for label, image in row]
        gutter = np.full((tiles[0].shape[0], 4, 3), 255, np.uint8)
        parts = []
        for tile in tiles:
            parts += [tile, gutter]
        built.append(np.concatenate(parts[:-1], 1))
    width = max(r.shape[1] for r in built)
    padded = [np.pad(r, ((0, 4), (0, width - r.shape[1]), (0, 0)), constant_values=255) for r in built]
    return np.concatenate(padded, 0)[:-4]


def write_report(output_dir: str, records: list[dict], title: str = "Class Activation Maps") -> str:
    """A self-contained HTML page; returns the page's path.

    Every image's grid embedded (base64), its classes, method(s), layer and timing.
    """
    sections = []
    for record in records:
        sections.append(_section(output_dir, record))
    ok = sum(r.get("status") == "ok" for r in records)
    page = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<title>{html.escape(title)}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 24px; color: #222; background: #fafafa; }}
h1 {{ font-size: 22px; }} h2 {{ font-size: 16px; margin: 0 0 6px; word-break: break-all; }}
section {{ background: #fff; border: 1px solid #ddd; border-radius: 6px; padding: 12px; margin: 0 0 16px; }}
img {{ max-width: 100%; height: auto; display: block; margin: 8px 0; }}
table {{ border-collapse: collapse; font-size: 13px; }} td, th {{ border: 1px solid #ddd; padding: 3px 8px; }}
.error {{ color: #b00020; }} .meta {{ font-size: 13px; color: #555; }}
tr.warning td {{ background: #fff4e0; }} tr.warning td:last-child {{ color: #8a4b00; }}
</style></head>
<body data-images-expected="{sum("grid" in r for r in records)}">
<h1>{html.escape(title)}</h1>
<p class="meta">{ok} of {len(records)} image(s) explained.</p>
{"".join(sections)}
<script>
window.addEventListener('load', () => {{
  const images = Array.from(document.images);
  document.body.dataset.imagesLoaded = images.filter(i => i.complete && i.naturalWidth > 0).length;
}});
</script>
</body></html>
"""
    path = os.path.join(output_dir, REPORT_FILE)
    with open(path, "w", encoding="utf-8") as handle:
        handle.write(page)
    return path


def _esc(value: object) -> str:
    """A value as HTML text: control characters and undecodable bytes escaped (names), then HTML-escaped."""
    return html.escape(printable(str(value)))


def _section(output_dir: str, record: dict) -> str:
    esc = _esc
    head = f"<h2>{esc(record['path'])}</h2>"
    if record.get("status") != "ok":
        return f"<section>{head}<p class='error'>failed: {esc(record.get('error', '?'))}</p></section>"
    model, layer = esc(record.get("model")), esc(record.get("layer"))
    seconds = esc(f"{record.get('seconds', 0):.2f}")
    meta = f"<p class='meta'>model {model} · layer {layer} · {seconds} s for this image</p>"
    image = ""
    grid = record.get("grid")
    if grid and os.path.isfile(os.path.join(output_dir, grid)):
        with open(os.path.join(output_dir, grid), "rb") as handle:
            data = base64.b64encode(handle.read()).decode("ascii")
        image = f"<img alt='{esc(grid)}' src='data:image/jpeg;base64,{data}'>"
    rows = "".join(_map_row(m) for m in record.get("maps", []))
    table = (
        "<table><tr><th>method</th><th>class</th><th>name</th><th>probability</th><th>seconds per image</th>"
        f"<th>remarks</th></tr>{rows}</table>"
    )
    return f"<section>{head}{meta}{image}{table}</section>"


def _map_row(entry: dict) -> str:
    """One map's table row; every cell escaped (results.jsonl's checks already made the numbers numbers).

    Its warnings (a constant map, a zero gradient, ...) are the row's remarks, and mark the row.
    """
    cells = [
        entry["method"],
        entry["class"],
        entry["class_name"],
        f"{entry['probability']:.4f}",
        f"{entry['seconds']:.3f}",
    ]
    warnings = entry.get("warnings") or []
    remarks = "<br>".join(_esc(f"warning: {message}") for message in warnings)
    marked = " class='warning'" if warnings else ""
    return f"<tr{marked}>" + "".join(f"<td>{_esc(cell)}</td>" for cell in cells) + f"<td>{remarks}</td></tr>"
