"""Making strings from the wire safe to show: no terminal control, no rich markup, bounded length."""
from __future__ import annotations

import re

from rich.markup import escape as escape_markup

MAX_WIRE_TEXT = 200
# What a terminal may act on or that hides or reorders text (Unicode categories Cc, Cf, Cs, Zl, Zp as far as they
# matter here): C0 and C1 controls (C1 0x9b is a one-byte CSI), DEL, soft hyphen, Arabic letter mark, Mongolian
# vowel separator, zero-width and bidi marks, line/paragraph separators, bidi embeddings/overrides/isolates
# (Trojan Source, CVE-2021-42574), invisible operators, BOM, interlinear annotations, lone surrogates (which cannot
# even be encoded for a UTF-8 terminal) and tag characters.
_UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\u00ad\u061c\u180e\u200b-\u200f\u2028-\u202e\u2060-\u206f\ufeff"
                     "\ufff9-\ufffb\ud800-\udfff\U000e0000-\U000e007f]")


def _escaped(match: re.Match) -> str:
    code = ord(match.group())
    if code < 0x100:
        return f"\\x{code:02x}"
    return f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}"


def safe_text(value: object, limit: int = MAX_WIRE_TEXT) -> str:
    """A printable, bounded form of an untrusted string: controls become \\xNN / \\uNNNN, the rest is kept."""
    text = str(value)
    if len(text) > limit:
        text = text[:limit] + f"...(+{len(text) - limit} chars)"
    return _UNSAFE.sub(_escaped, text)


def safe_markup(value: object, limit: int = MAX_WIRE_TEXT) -> str:
    """safe_text, then escaped so rich renders it literally (no [markup] interpretation)."""
    return escape_markup(safe_text(value, limit))
