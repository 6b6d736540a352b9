"""TLS ClientHello from a flow's kept bytes: server name (SNI), ALPN, offered versions.

Hand-parsed (RFC 8446 4.1.2, RFC 6066 3, RFC 7301) so that a hello cut short by the kept-bytes budget still yields
every extension that arrived whole. Strings from the wire are returned as received (bounded, decoded with
`backslashreplace`); escaping for display is the renderer's job.
"""
from __future__ import annotations

import struct
from dataclasses import dataclass

MAX_NAME = 255  # a DNS name is at most 255 octets (RFC 1035 2.3.4)
EXT_SERVER_NAME = 0
EXT_ALPN = 16
EXT_SUPPORTED_VERSIONS = 43


@dataclass(frozen=True)
class ClientHello:
    """What a TLS client said about where it is going."""

    sni: str | None
    alpn: tuple[str, ...]
    versions: tuple[int, ...]  # supported_versions, else the legacy record version
    complete: bool  # False when the kept bytes ended inside the hello


def looks_like_tls_handshake(stream: bytes) -> bool:
    """A TLS record header of type handshake (22), major version 3 (SSL 3.0 .. TLS 1.3)."""
    return len(stream) >= 3 and stream[0] == 22 and stream[1] == 3 and stream[2] <= 4


def _handshake_bytes(stream: bytes) -> bytes:
    """The handshake-layer bytes of consecutive TLS handshake records (a hello may span several records)."""
    out = bytearray()
    pos = 0
    while pos + 5 <= len(stream) and stream[pos] == 22:
        (length,) = struct.unpack_from("!H", stream, pos + 3)
        out += stream[pos + 5:pos + 5 + length]
        pos += 5 + length
    return bytes(out)


def parse_client_hello(stream: bytes) -> ClientHello | None:
    """The ClientHello at the start of a client's kept bytes, or None when the bytes are not one."""
    if not looks_like_tls_handshake(stream):
        return None
    hs = _handshake_bytes(stream)
    if len(hs) < 4 or hs[0] != 1:  # handshake type client_hello
        return None
    body_len = int.from_bytes(hs[1:4], "big")
    body = hs[4:4 + body_len]
    complete = len(body) >= body_len
    legacy_version = (stream[1] << 8) | stream[2]
    try:
        pos = 2 + 32  # client_version, random
        sid_len = body[pos]
        pos += 1 + sid_len
        (cs_len,) = struct.unpack_from("!H", body, pos)
        pos += 2 + cs_len
        comp_len = body[pos]
        pos += 1 + comp_len
        (ext_total,) = struct.unpack_from("!H", body, pos)
        pos += 2
    except (IndexError, struct.error):
        return ClientHello(None, (), (legacy_version,), False)
    sni, alpn, versions = None, (), ()
    end = min(len(body), pos + ext_total)
    while pos + 4 <= end:
        ext_type, ext_len = struct.unpack_from("!HH", body, pos)
        data = body[pos + 4:pos + 4 + ext_len]
        pos += 4 + ext_len
        if len(data) < ext_len:
            complete = False
            break
        if ext_type == EXT_SERVER_NAME:
            sni = _server_name(data) or sni
        elif ext_type == EXT_ALPN:
            alpn = _alpn(data)
        elif ext_type == EXT_SUPPORTED_VERSIONS and data:
            n = data[0]
            versions = tuple(struct.unpack_from("!H", data, 1 + 2 * i)[0] for i in range(min(n, len(data) - 1) // 2))
    return ClientHello(sni, alpn, versions or (legacy_version,), complete)


def _server_name(data: bytes) -> str | None:
    # server_name_list: uint16 length, then entries of (type u8, uint16 length, name)
    pos = 2
    while pos + 3 <= len(data):
        name_type = data[pos]
        (n,) = struct.unpack_from("!H", data, pos + 1)
        name = data[pos + 3:pos + 3 + n]
        pos += 3 + n
        if name_type == 0 and name:
            return name[:MAX_NAME].decode("ascii", "backslashreplace").rstrip(".").lower()
    return None


def _alpn(data: bytes) -> tuple[str, ...]:
    out = []
    pos = 2
    while pos < len(data):
        n = data[pos]
        out.append(data[pos + 1:pos + 1 + n].decode("ascii", "backslashreplace"))
        pos += 1 + n
    return tuple(out[:16])
