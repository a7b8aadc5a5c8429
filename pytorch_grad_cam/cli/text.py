r"""Text the CLI shows: file names and messages with control characters and undecodable bytes escaped.

A file name can hold anything but ``/`` and NUL: a terminal escape sequence (``ESC ] 0 ; title BEL`` sets the
window title, others move the cursor or rewrite the screen), a newline, or bytes that are not UTF-8 (Python
keeps them as lone surrogates, ``\udcff``, which no UTF-8 terminal, JSON file or HTML page can take).
Every line the CLI prints and every name report.html shows goes through :func:`printable`.
"""

from __future__ import annotations

import unicodedata

__all__ = ["printable"]

# Characters that reorder the text after them (the "Trojan Source" controls): a name could look like another.
_BIDI_CONTROLS = frozenset("\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")


def _escaped(char: str) -> str:
    code = ord(char)
    if 0xDC80 <= code <= 0xDCFF:  # a byte that was not valid UTF-8 (os.fsdecode's surrogateescape)
        return f"\\x{code - 0xDC00:02x}"
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def _unsafe(char: str) -> bool:
    return unicodedata.category(char) in ("Cc", "Cs") or char in _BIDI_CONTROLS


def printable(text: str) -> str:
    r"""``text`` safe to print and to write as UTF-8: every control character escaped, the rest kept.

    C0 and C1 controls (ESC, BEL, newline, tab, ...) and DEL become ``\x1b``-style escapes, the
    bidirectional controls ``\u202e``-style ones, and a byte of a name that is not valid UTF-8 is shown as
    that byte, ``\xff``; other lone surrogates as ``\udXXX``. Letters of any script, spaces and
    backslashes are kept as they are.

    Example:
        >>> printable("\x1b]0;pwned\x07.png")
        '\\x1b]0;pwned\\x07.png'
    """
    if not any(_unsafe(char) for char in text):
        return text
    return "".join(_escaped(char) if _unsafe(char) else char for char in text)
