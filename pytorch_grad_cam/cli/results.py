"""The CLI's results.jsonl: one record per explained image, what resuming a run trusts, and its checks.

A run appends one JSON line per image as soon as its files are written, so a killed run keeps what it
finished. The next run reads the file back, and trusts nothing in it unchecked:

- every record is validated field by field (types, ranges, output paths inside the output folder); a
  record that fails is moved to ``results.rejected.jsonl``, reported, and its image is redone;
- a line cut short (a run killed while writing it) is moved there too, and the file is rewritten whole
  (a temporary file, then a rename), so it is never left invalid;
- an image counts as done only when its record names the same file (its real path), the same content
  (size and SHA-256), the same settings, and every output file it lists is still there;
- outputs are named by a key that no other file's record holds, so a new image never overwrites the
  maps of another one (``x.png`` of a second folder becomes ``x-2``).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Callable

from .inputs import InputImage

RESULTS_FILE = "results.jsonl"
REJECTED_FILE = "results.rejected.jsonl"

_HASH_CHUNK = 1 << 20


def source_identity(path: str) -> dict[str, Any]:
    """What a record says about its input: the real path, the size in bytes and the SHA-256 of the content.

    Raises:
        OSError: the file cannot be read.
    """
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(_HASH_CHUNK), b""):
            digest.update(chunk)
        size = handle.tell()
    return {"file": os.path.realpath(path), "size": size, "sha256": digest.hexdigest()}


# ------------------------------------------------------------------------------------------ checks
# Each check returns "" for a good value, else what the value must be.
Check = Callable[[Any], str]


def _text(value: Any) -> str:
    return "" if isinstance(value, str) and "\x00" not in value else "a string"


def _count(value: Any) -> str:
    ok = isinstance(value, int) and not isinstance(value, bool) and value >= 0
    return "" if ok else "an int >= 0"


def _number(low: float, high: float) -> Check:
    def check(value: Any) -> str:
        number = isinstance(value, (int, float)) and not isinstance(value, bool)
        ok = number and math.isfinite(value) and low <= value <= high
        return "" if ok else f"a number in [{low:g}, {high:g}]"

    return check


def _digest(value: Any) -> str:
    ok = isinstance(value, str) and re.fullmatch(r"[0-9a-f]{64}", value) is not None
    return "" if ok else "a SHA-256 hex digest"


def _output_path(value: Any) -> str:
    """A path relative to the output folder that stays inside it (the report embeds these files)."""
    expected = "a relative path inside the output folder"
    if _text(value) or not value or os.path.isabs(value) or os.path.splitdrive(value)[0]:
        return expected
    parts = os.path.normpath(value).replace("\\", "/").split("/")
    return expected if ".." in parts else ""


def _list_of(check: Check, what: str) -> Check:
    def each(value: Any) -> str:
        ok = isinstance(value, list) and not any(check(item) for item in value)
        return "" if ok else f"a list of {what}"

    return each


def _one_of(*choices: str) -> Check:
    return lambda value: "" if value in choices else " or ".join(repr(c) for c in choices)


_MAP_FIELDS: dict[str, Check] = {
    "method": _text,
    "class": _count,
    "class_name": _text,
    "probability": _number(0.0, 1.0),
    "seconds": _number(0.0, math.inf),
    "files": _list_of(_output_path, "relative paths inside the output folder"),
}


#: Absent in records of runs before the CLI kept warnings (no warnings) and named the layer per map.
_OPTIONAL_MAP_FIELDS: dict[str, Check] = {"warnings": _list_of(_text, "strings"), "layer": _text}


def _map_entry(value: Any) -> str:
    ok = isinstance(value, dict) and not _fields_problem(value, _MAP_FIELDS, _OPTIONAL_MAP_FIELDS)
    return "" if ok else "a map entry"


_OK_FIELDS: dict[str, Check] = {
    "path": _text,
    "file": _text,
    "size": _count,
    "sha256": _digest,
    "key": _output_path,
    "status": _one_of("ok"),
    "settings": _text,
    "model": _text,
    "layer": _text,
    "methods": _list_of(_text, "strings"),
    "classes": _list_of(_count, "ints >= 0"),
    "maps": _list_of(
        _map_entry, "map entries (method, class, class_name, probability, seconds, files[, warnings])"
    ),
    "outputs": _list_of(_output_path, "relative paths inside the output folder"),
    "seconds": _number(0.0, math.inf),
}
_OPTIONAL_OK_FIELDS: dict[str, Check] = {"grid": _output_path}
_ERROR_FIELDS: dict[str, Check] = {"path": _text, "file": _text, "status": _one_of("error"), "error": _text}


def _fields_problem(record: dict, fields: dict[str, Check], optional: dict[str, Check] | None = None) -> str:
    for name, check in fields.items():
        if name not in record:
            return f"'{name}' is missing"
        expected = check(record[name])
        if expected:
            return f"'{name}' must be {expected}, got {_shown(record[name])}"
    for name, check in (optional or {}).items():
        if name in record and check(record[name]):
            return f"'{name}' must be {check(record[name])}, got {_shown(record[name])}"
    return ""


def _shown(value: Any) -> str:
    text = json.dumps(value, ensure_ascii=True)
    return f"{type(value).__name__} {text[:40]}{'...' if len(text) > 40 else ''}"


def record_problem(record: Any) -> str:
    """What is wrong with a results.jsonl record ("" when nothing is): the first bad field, and why."""
    if not isinstance(record, dict):
        return f"a record must be a JSON object, got {type(record).__name__}"
    status = record.get("status")
    if status == "ok":
        problem = _fields_problem(record, _OK_FIELDS, _OPTIONAL_OK_FIELDS)
        if not problem and len(record["maps"]) != len(record["methods"]) * len(record["classes"]):
            problem = "'maps' must have one entry per method and class"
        return problem
    if status == "error":
        return _fields_problem(record, _ERROR_FIELDS)
    return f"'status' must be 'ok' or 'error', got {_shown(status)}"


# ------------------------------------------------------------------------------------------ the file
@dataclass
class Results:
    """results.jsonl read back: the valid records by real path, and what was wrong with the rest."""

    records: dict[str, dict] = field(default_factory=dict)
    #: One line per rejected or repaired line: ``"results.jsonl line 3: ...; moved to ..."``.
    notes: list[str] = field(default_factory=list)


def load_results(output_dir: str) -> Results:
    """The last valid record of each file in ``output_dir``'s results.jsonl; invalid lines set aside.

    A line that is not a valid record (wrong JSON, a field of the wrong type or range, an output path
    outside the folder, a line cut short) is appended to results.rejected.jsonl and removed from
    results.jsonl, which is then rewritten whole (temporary file and rename): nothing is lost, and the
    file is valid again for the runs after this one.
    """
    path = os.path.join(output_dir, RESULTS_FILE)
    results = Results()
    if not os.path.isfile(path):
        return results
    with open(path, encoding="utf-8", errors="replace") as handle:
        text = handle.read()
    kept, rejected = [], []
    lines = text.split("\n")
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        cut = number == len(lines)  # no newline after it: the write was interrupted
        problem = _line_problem(line, cut)
        if problem:
            rejected.append(line)
            results.notes.append(f"{RESULTS_FILE} line {number}: {problem}; moved to {REJECTED_FILE}")
            continue
        record = json.loads(line)
        kept.append(line)
        results.records[record["file"]] = record
    if rejected or (text and not text.endswith("\n")):
        _set_aside(output_dir, rejected)
        _rewrite(path, kept)
    return results


def _line_problem(line: str, cut: bool) -> str:
    try:
        record = json.loads(line)
    except json.JSONDecodeError as exc:
        return "cut short (an interrupted run)" if cut else f"not JSON ({exc.msg})"
    return record_problem(record)


def _set_aside(output_dir: str, lines: Sequence[str]) -> None:
    if lines:
        with open(os.path.join(output_dir, REJECTED_FILE), "a", encoding="utf-8") as handle:
            handle.write("".join(line + "\n" for line in lines))


def _rewrite(path: str, lines: Iterable[str]) -> None:
    temporary = f"{path}.tmp-{os.getpid()}"
    try:
        with open(temporary, "w", encoding="utf-8") as handle:
            handle.write("".join(line + "\n" for line in lines))
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    finally:
        if os.path.exists(temporary):
            os.remove(temporary)


def append_result(output_dir: str, record: dict) -> None:
    r"""Add one record to results.jsonl, flushed at once: an interrupted run keeps what it finished.

    The line is UTF-8 JSON; a record holding a name that is not valid UTF-8 is written in ASCII JSON instead
    (``\udcff`` escapes), so that the file stays valid UTF-8 and the name reads back unchanged.
    """
    os.makedirs(output_dir, exist_ok=True)
    line = json.dumps(record, ensure_ascii=False)
    try:
        line.encode("utf-8")
    except UnicodeEncodeError:
        # A file name with bytes that are not UTF-8 (lone surrogates in Python): as \udcff escapes, which
        # json.loads reads back as the same name.
        line = json.dumps(record, ensure_ascii=True)
    with open(os.path.join(output_dir, RESULTS_FILE), "a", encoding="utf-8") as handle:
        handle.write(line + "\n")
        handle.flush()


# ------------------------------------------------------------------------------------------ resuming
def assign_keys(items: Sequence[InputImage], records: dict[str, dict]) -> list[InputImage]:
    """The items with output keys that no other file's record holds, and unique within the run.

    A file that has a record keeps its key (its outputs are already there under it). Any other file takes
    its own key if free, else the first free ``key-2``, ``key-3``, ...
    """
    owner: dict[str, str] = {}  # key -> the real path of the file whose record holds it
    for file, record in records.items():
        if record.get("status") == "ok":
            owner.setdefault(record["key"], file)
    files = [os.path.realpath(item.path) for item in items]
    assigned: dict[int, str] = {}
    for i, file in enumerate(files):
        held = records.get(file, {})
        if held.get("status") == "ok" and owner.get(held["key"]) == file:
            assigned[i] = held["key"]
    taken = set(owner) | set(assigned.values())
    for i, item in enumerate(items):
        if i in assigned:
            continue
        key, n = item.key, 1
        while key in taken:
            n += 1
            key = f"{item.key}-{n}"
        taken.add(key)
        assigned[i] = key
    return [InputImage(item.path, assigned[i]) for i, item in enumerate(items)]


def already_done(previous: dict | None, identity: dict[str, Any], settings: str, output_dir: str) -> bool:
    """Done before: the same file and content, the same settings, and every output file still there."""
    if not previous or previous.get("status") != "ok" or previous.get("settings") != settings:
        return False
    if any(previous.get(name) != identity[name] for name in ("file", "size", "sha256")):
        return False
    return all(os.path.isfile(os.path.join(output_dir, name)) for name in previous["outputs"])
