"""HTTP/1.x requests from a client's kept bytes: the method and the host it names (Host header, CONNECT target).

Only the request head is read (RFC 9112 3, RFC 9110 7.2); strings are lower-cased, bounded and kept as received
otherwise (escaping for display is the renderer's job).
"""
from __future__ import annotations

import re

import numpy as np

MAX_HOST = 255
METHODS = (b"GET ", b"POST", b"HEAD", b"PUT ", b"DELE", b"OPTI", b"PATC", b"CONN", b"TRAC")
_METHOD_PREFIXES = np.array([np.frombuffer(m, np.uint8) for m in METHODS])
_HOST = re.compile(rb"\r?\nhost[ \t]*:[ \t]*([^\r\n]*)", re.IGNORECASE)


def looks_like_request(prefix: np.ndarray) -> np.ndarray:
    """Rows (uint8 [n, >=4]) whose first four bytes start an HTTP/1 request method."""
    head = prefix[:, :4]
    return (head[:, None, :] == _METHOD_PREFIXES[None, :, :]).all(axis=2).any(axis=1)


def request_host(stream: bytes) -> str | None:
    """The host a request is for: the CONNECT target, else the Host header; without port, lower case."""
    line_end = stream.find(b"\n")
    if line_end < 0 or not stream[:line_end].rstrip(b"\r").endswith((b" HTTP/1.1", b" HTTP/1.0")):
        return None
    if stream.startswith(b"CONNECT "):
        return _strip_port(stream[8:line_end].split(b" ", 1)[0])
    end = stream.find(b"\r\n\r\n")
    head = (stream if end < 0 else stream[:end]).lower()
    at = head.find(b"\nhost:")
    if at < 0:
        h = _HOST.search(head)  # tolerate blanks before the colon
        return _strip_port(h.group(1).strip()) if h else None
    value = head[at + 6:head.find(b"\n", at + 6) if head.find(b"\n", at + 6) >= 0 else len(head)]
    return _strip_port(value.strip())


def _strip_port(raw: bytes) -> str | None:
    raw = raw[:MAX_HOST + 8]
    if raw.startswith(b"["):  # an IPv6 literal, RFC 3986 3.2.2
        host = raw[1:raw.find(b"]")] if b"]" in raw else raw[1:]
    else:
        host = raw.rsplit(b":", 1)[0] if raw.count(b":") == 1 else raw
    text = host[:MAX_HOST].decode("ascii", "backslashreplace").rstrip(".").lower()
    return text or None
