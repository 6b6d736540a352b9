"""TLS ClientHello from a flow's kept bytes: server name (SNI), ALPN, offered versions.

Hand-parsed (RFC 8446 4.1.2, RFC 6066 3, RFC 7301) so that a hello cut short by the kept-bytes budget still yields
every extension that arrived whole. `find_sni` walks the same layout for many flows at once in numpy, for detectors
that need the server name of every TLS flow of a batch. Strings from the wire are returned as received (bounded, decoded with
`backslashreplace`); escaping for display is the renderer's job.
"""
from __future__ import annotations

import ipaddress
import struct
from dataclasses import dataclass

import numpy as np

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


HTTPS_PORTS = frozenset({443, 8443})  # IANA "https" and its registered alternate "pcsync-https"/"https-alt"
WEB_ALPN = frozenset({"h2", "http/1.1", "http/1.0", "h3", "spdy/3.1"})  # IANA TLS ALPN protocol IDs of the web


def hello_traits(hello: ClientHello | None, port: int, ja4: str | None = None) -> str:
    """What a ClientHello says about its client, in words for evidence: server name (missing, or an IP address
    where a name belongs), ALPN (none, or no web protocol), a port that is not HTTPS's, and the JA4 fingerprint.
    The signs nDPI gives for "TLS (probably) not carrying HTTPS"."""
    parts = []
    if hello is None or not hello.sni:
        parts.append("no server name")
    elif _is_address(hello.sni):
        parts.append(f"an IP address as server name ({hello.sni})")
    else:
        parts.append(f"server name {hello.sni}")
    if hello is None or not hello.alpn:
        parts.append("no ALPN")
    elif not any(a.lower() in WEB_ALPN for a in hello.alpn):
        parts.append("ALPN " + ",".join(hello.alpn) + " (no web protocol)")
    else:
        parts.append("ALPN " + ",".join(hello.alpn))
    if port not in HTTPS_PORTS:
        parts.append(f"port {port}, not an HTTPS port")
    if ja4:
        parts.append(f"JA4 {ja4}")
    return ", ".join(parts)


def _is_address(name: str) -> bool:
    try:
        ipaddress.ip_address(name.strip("[]"))
    except ValueError:
        return False
    return True


MAX_EXTENSIONS = 48  # walked per hello before handing the rest to the Python parser


def _be16(data: np.ndarray, rows: np.ndarray, pos: np.ndarray) -> np.ndarray:
    width = data.shape[1]
    return (data[rows, np.minimum(pos, width - 1)].astype(np.int64) << 8) | data[rows, np.minimum(pos + 1, width - 1)]


def find_sni(data: np.ndarray, fill: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Where the server name sits in many clients' first bytes at once (numpy, no per-flow Python).

    Args:
        data: uint8 [n, width], each row a client's kept bytes (zero past `fill`).
        fill: bytes kept per row.

    Returns:
        (offset, length, status): int64 [n] each; offset -1 when no server name was found; status 0 not a
        ClientHello, 1 walked (with or without a name), 2 unusual layout (hello over several records, very many
        extensions): parse that row with `parse_client_hello`.
    """
    n, width = data.shape
    fill = np.minimum(fill.astype(np.int64), width)
    offset = np.full(n, -1, np.int64)
    length = np.zeros(n, np.int64)
    status = np.zeros(n, np.int64)
    rows = np.flatnonzero((fill >= 44) & (data[:, 0] == 22) & (data[:, 1] == 3) & (data[:, 2] <= 4)
                          & (data[:, 5] == 1))
    if not len(rows):
        return offset, length, status
    record_end = 5 + _be16(data, rows, np.full(len(rows), 3))
    hs_len = (data[rows, 6].astype(np.int64) << 16) | (data[rows, 7].astype(np.int64) << 8) | data[rows, 8]
    status[rows] = np.where(hs_len + 4 > record_end - 5, 2, 1)
    pos = 44 + data[rows, 43].astype(np.int64)  # past record and handshake headers, version, random, session id
    pos = pos + 2 + _be16(data, rows, pos)  # cipher suites
    pos = pos + 1 + data[rows, np.minimum(pos, width - 1)].astype(np.int64)  # compression methods
    end = np.minimum(np.minimum(pos + 2 + _be16(data, rows, pos), record_end), fill[rows])
    pos = pos + 2
    active = status[rows] == 1
    for _ in range(MAX_EXTENSIONS):
        active &= pos + 4 <= end
        if not active.any():
            break
        r, p = rows[active], pos[active]
        ext_type, ext_len = _be16(data, r, p), _be16(data, r, p + 2)
        name_len = _be16(data, r, p + 7)
        found = (ext_type == 0) & (data[r, np.minimum(p + 6, width - 1)] == 0) & (p + 9 + name_len <= end[active]) \
            & (name_len > 0)
        offset[r[found]] = p[found] + 9
        length[r[found]] = name_len[found]
        idx = np.flatnonzero(active)
        active[idx[found]] = False
        pos[idx] = p + 4 + ext_len
    else:
        status[rows[active & (pos + 4 <= end)]] = 2
    return offset, length, status


def sni_text(raw: bytes) -> str:
    """A server name from the wire as `parse_client_hello` returns it (lower case, no trailing dot, bounded)."""
    return raw[:MAX_NAME].decode("ascii", "backslashreplace").rstrip(".").lower()
