"""Making strings from the wire safe to show: no terminal control, no rich markup, bounded length."""
from __future__ import annotations

import re

from rich.markup import escape as escape_markup

MAX_WIRE_TEXT = 200
# C0 and C1 controls, DEL, and Unicode format characters that reorder or hide text (bidi overrides, zero-width)
_UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\u200b-\u200f\u202a-\u202e\u2060-\u2069\ufeff]")


def safe_text(value: object, limit: int = MAX_WIRE_TEXT) -> str:
    """A printable, bounded form of an untrusted string: controls become \\xNN / \\uNNNN, the rest is kept."""
    text = str(value)
    if len(text) > limit:
        text = text[:limit] + f"...(+{len(text) - limit} chars)"
    return _UNSAFE.sub(lambda m: f"\\x{ord(m.group()):02x}" if ord(m.group()) < 0x100 else f"\\u{ord(m.group()):04x}",
                       text)


def safe_markup(value: object, limit: int = MAX_WIRE_TEXT) -> str:
    """safe_text, then escaped so rich renders it literally (no [markup] interpretation)."""
    return escape_markup(safe_text(value, limit))
