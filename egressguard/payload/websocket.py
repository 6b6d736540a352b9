"""WebSocket (RFC 6455) from a flow's kept bytes: is it an HTTP Upgrade, and what do the first frames carry.

Used to see protocols tunnelled through WebSocket (e.g. wstunnel carrying SSH). Plain Python on a few KB.
"""
from __future__ import annotations

MAX_FRAMES = 16


def http_upgrade_body(stream: bytes) -> bytes | None:
    """The bytes after the HTTP header block when `stream` starts with a WebSocket upgrade request or response."""
    head_end = stream.find(b"\r\n\r\n")
    if head_end < 0:
        return None
    head = stream[:head_end].lower()
    if b"upgrade: websocket" not in head:
        return None
    if not (head.startswith(b"get ") or head.startswith(b"http/1.1 101")):
        return None
    return stream[head_end + 4:]


def frame_payloads(data: bytes) -> bytes:
    """Concatenated, unmasked payloads of the whole WebSocket frames at the start of `data`."""
    out = bytearray()
    pos = 0
    for _ in range(MAX_FRAMES):
        if pos + 2 > len(data):
            break
        b1 = data[pos + 1]
        masked = b1 & 0x80
        length = b1 & 0x7F
        pos += 2
        if length == 126:
            if pos + 2 > len(data):
                break
            length = int.from_bytes(data[pos:pos + 2], "big")
            pos += 2
        elif length == 127:
            if pos + 8 > len(data):
                break
            length = int.from_bytes(data[pos:pos + 8], "big")
            pos += 8
        key = b""
        if masked:
            if pos + 4 > len(data):
                break
            key = data[pos:pos + 4]
            pos += 4
        chunk = data[pos:pos + length]
        if masked:
            chunk = bytes(c ^ key[i % 4] for i, c in enumerate(chunk))
        out += chunk
        pos += length
        if len(chunk) < length:
            break
    return bytes(out)


def websocket_streams(orig: bytes, resp: bytes) -> tuple[bytes, bytes] | None:
    """(client payload, server payload) carried inside WebSocket frames, or None when the flow is not WebSocket."""
    req, rsp = http_upgrade_body(orig), http_upgrade_body(resp)
    if req is None or rsp is None:
        return None
    return frame_payloads(req), frame_payloads(rsp)
