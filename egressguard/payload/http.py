"""HTTP/1.x requests from a client's kept bytes: the method and the host it names (Host header, CONNECT target).

Only the request head is read (RFC 9112 3, RFC 9110 7.2); strings are lower-cased, bounded and kept as received
otherwise (escaping for display is the renderer's job).
"""
from __future__ import annotations

import re

import numpy as np
from numba import njit

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


# ---- the same for many requests at once: one numba pass finds where each request names its host; Python then
# turns only the distinct host texts into strings (request_host above is the kernel's plain twin)
_SPACES = (32, 9, 10, 13, 11, 12)  # bytes.strip(): ASCII whitespace


@njit(cache=True, nogil=True, inline="always")
def _lower(b):
    return b | 0x20 if 65 <= b <= 90 else b


@njit(cache=True, nogil=True, inline="always")
def _space(b):
    return b == 32 or b == 9 or b == 10 or b == 13 or b == 11 or b == 12


@njit(cache=True, nogil=True)
def _host_span(d, n):
    """(start, end) of the host text one request names in d[:n] (request_host's rules), (-1, -1) when none."""
    line_end = -1
    for i in range(n):
        if d[i] == 10:
            line_end = i
            break
    if line_end < 0:
        return -1, -1
    e = line_end
    while e > 0 and d[e - 1] == 13:
        e -= 1
    version = (32, 72, 84, 84, 80, 47, 49, 46)  # " HTTP/1."
    if e < 9 or (d[e - 1] != 49 and d[e - 1] != 48):
        return -1, -1
    for k in range(8):
        if d[e - 9 + k] != version[k]:
            return -1, -1
    connect = (67, 79, 78, 78, 69, 67, 84, 32)  # "CONNECT "
    is_connect = n >= 8
    for k in range(8):
        if is_connect and d[k] != connect[k]:
            is_connect = False
    if is_connect:
        end = line_end
        for i in range(8, line_end):
            if d[i] == 32:
                end = i
                break
        return 8, end
    head = n
    for i in range(n - 3):
        if d[i] == 13 and d[i + 1] == 10 and d[i + 2] == 13 and d[i + 3] == 10:
            head = i
            break
    host = (104, 111, 115, 116)  # "host"
    for exact in (True, False):  # "\nhost:" first, then blanks before the colon (the regular expression)
        for i in range(head):
            if d[i] != 10 or i + 5 > head:
                continue
            ok = True
            for k in range(4):
                if _lower(d[i + 1 + k]) != host[k]:
                    ok = False
            if not ok:
                continue
            j = i + 5
            if not exact:
                while j < head and (d[j] == 32 or d[j] == 9):
                    j += 1
            if j >= head or d[j] != 58:
                continue
            j += 1
            end = j
            while end < head and d[end] != 10 and (exact or d[end] != 13):
                end += 1
            while j < end and _space(d[j]):
                j += 1
            while end > j and _space(d[end - 1]):
                end -= 1
            return j, end
    return -1, -1


@njit(cache=True, nogil=True)
def _host_spans(data, fill, start, end):
    for r in range(data.shape[0]):
        start[r], end[r] = _host_span(data[r], min(fill[r], data.shape[1]))


def request_hosts(data: np.ndarray, fill: np.ndarray) -> list[str | None]:
    """request_host for many requests: `data` uint8 [n, width] holds each client's first bytes, `fill` how many
    were kept. One numba pass locates the host texts; each distinct one is turned into a string once."""
    n = len(data)
    start, end = np.full(n, -1, np.int64), np.full(n, -1, np.int64)
    if n:
        _host_spans(np.ascontiguousarray(data), np.asarray(fill, np.int64), start, end)
    seen: dict[bytes, str | None] = {}
    out: list[str | None] = [None] * n
    for i in np.flatnonzero(start >= 0).tolist():
        raw = data[i, start[i]:end[i]].tobytes().lower()
        host = seen.get(raw, False)
        if host is False:
            host = seen[raw] = _strip_port(raw)
        out[i] = host
    return out
