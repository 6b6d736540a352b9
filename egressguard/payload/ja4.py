"""JA4 TLS client fingerprint of a ClientHello (FoxIO, technical_details/JA4.md; JA4 is BSD-3-Clause).

`t13d1516h2_8daaf6152771_e5627efa2ab1`: protocol, version, SNI or not, cipher and extension counts, ALPN ends; the
truncated SHA-256 of the sorted ciphers; that of the sorted extensions (less SNI and ALPN) and the signature
algorithms in offered order. GREASE values (RFC 8701) count nowhere. Only TLS over TCP ("t") is read here.
"""
from __future__ import annotations

import hashlib
import struct
from dataclasses import dataclass

from egressguard.payload.tls import (
    EXT_ALPN,
    EXT_SERVER_NAME,
    EXT_SUPPORTED_VERSIONS,
    _handshake_bytes,
    looks_like_tls_handshake,
)

EXT_SIGNATURE_ALGORITHMS = 13  # RFC 8446 4.2.3
EMPTY_HASH = "000000000000"  # JA4.md: an empty list is shown as zeros, not hashed
# JA4.md "TLS Version"; anything else is "00"
VERSION_CODES = {0x0304: "13", 0x0303: "12", 0x0302: "11", 0x0301: "10", 0x0300: "s3", 0x0200: "s2", 0x0100: "s1"}


def is_grease(value: int) -> bool:
    """RFC 8701 GREASE code points: 0x0a0a, 0x1a1a, ... 0xfafa."""
    return (value & 0x0F0F) == 0x0A0A and (value >> 8) == (value & 0xFF)


@dataclass(frozen=True)
class HelloFields:
    """The ClientHello fields JA4 reads, GREASE removed, in the order offered."""

    version: int  # highest supported_versions entry, else the hello's client_version
    ciphers: tuple[int, ...]
    extensions: tuple[int, ...]
    signature_algorithms: tuple[int, ...]
    alpn_first: bytes | None  # first ALPN protocol name, None without ALPN


def _u16_list(data: bytes, start: int, length: int) -> tuple[int, ...]:
    count = max(0, min(length, len(data) - start)) // 2
    return struct.unpack_from(f"!{count}H", data, start) if count else ()


def hello_fields(stream: bytes) -> HelloFields | None:
    """JA4's fields of the ClientHello opening a client's bytes (TLS records or the bare handshake), or None when
    they are not one or the kept bytes end inside it (a partial extension list would give a wrong fingerprint)."""
    if looks_like_tls_handshake(stream):
        hs = _handshake_bytes(stream)
    elif stream[:1] == b"\x01":  # already the handshake layer
        hs = stream
    else:
        return None
    if len(hs) < 4 or hs[0] != 1:  # handshake type client_hello
        return None
    body_len = int.from_bytes(hs[1:4], "big")
    body = hs[4:4 + body_len]
    if len(body) < body_len:
        return None
    try:
        (client_version,) = struct.unpack_from("!H", body, 0)
        pos = 2 + 32  # client_version, random
        pos += 1 + body[pos]  # session id
        (cs_len,) = struct.unpack_from("!H", body, pos)
        ciphers = _u16_list(body, pos + 2, cs_len)
        pos += 2 + cs_len
        pos += 1 + body[pos]  # compression methods
    except (IndexError, struct.error):
        return None
    if pos + 2 > len(body):  # a hello without extensions (RFC 5246 7.4.1.2 allows it)
        return HelloFields(client_version, tuple(c for c in ciphers if not is_grease(c)), (), (), None)
    (ext_total,) = struct.unpack_from("!H", body, pos)
    pos += 2
    end = pos + ext_total
    if end > len(body):
        return None
    extensions: list[int] = []
    sigalgs: tuple[int, ...] = ()
    versions: tuple[int, ...] = ()
    alpn: bytes | None = None
    while pos + 4 <= end:
        ext_type, ext_len = struct.unpack_from("!HH", body, pos)
        data = body[pos + 4:pos + 4 + ext_len]
        pos += 4 + ext_len
        if len(data) < ext_len:
            return None
        if is_grease(ext_type):
            continue
        extensions.append(ext_type)
        if ext_type == EXT_SIGNATURE_ALGORITHMS and len(data) >= 2:
            sigalgs = _u16_list(data, 2, int.from_bytes(data[:2], "big"))
        elif ext_type == EXT_SUPPORTED_VERSIONS and data:
            versions = _u16_list(data, 1, data[0])
        elif ext_type == EXT_ALPN and len(data) >= 3:
            alpn = data[3:3 + data[2]]
    offered = [v for v in versions if not is_grease(v)]
    return HelloFields(max(offered) if offered else client_version,
                       tuple(c for c in ciphers if not is_grease(c)), tuple(extensions),
                       tuple(s for s in sigalgs if not is_grease(s)), alpn)


def _alpn_code(name: bytes | None) -> str:
    """First and last character of the first ALPN name; the ends of its hex form when either is not alphanumeric
    (JA4.md "ALPN Extension Value"); "00" without one."""
    if not name:
        return "00"
    first, last = chr(name[0]), chr(name[-1])
    if first.isascii() and first.isalnum() and last.isascii() and last.isalnum():
        return first + last
    text = name.hex()
    return text[0] + text[-1]


def _hash12(items: list[str]) -> str:
    return hashlib.sha256(",".join(items).encode()).hexdigest()[:12] if items else EMPTY_HASH


def fingerprint(fields: HelloFields, proto: str = "t") -> str:
    """JA4 of parsed hello fields; `proto` "t" (TCP) or "q" (QUIC)."""
    exts = fields.extensions
    head = (f"{proto}{VERSION_CODES.get(fields.version, '00')}{'d' if EXT_SERVER_NAME in exts else 'i'}"
            f"{min(len(fields.ciphers), 99):02d}{min(len(exts), 99):02d}{_alpn_code(fields.alpn_first)}")
    cipher_hash = _hash12(sorted(f"{c:04x}" for c in fields.ciphers))
    ext_list = sorted(f"{e:04x}" for e in exts if e not in (EXT_SERVER_NAME, EXT_ALPN))
    if not ext_list:
        ext_hash = EMPTY_HASH
    else:
        text = ",".join(ext_list)
        if fields.signature_algorithms:
            text += "_" + ",".join(f"{s:04x}" for s in fields.signature_algorithms)
        ext_hash = hashlib.sha256(text.encode()).hexdigest()[:12]
    return f"{head}_{cipher_hash}_{ext_hash}"


def ja4(client_hello: bytes) -> str | None:
    """JA4 of the ClientHello opening a TLS client's bytes (one or more handshake records), or None when the bytes
    are not a whole ClientHello."""
    fields = hello_fields(client_hello)
    return None if fields is None else fingerprint(fields)


__all__ = ["HelloFields", "fingerprint", "hello_fields", "is_grease", "ja4"]
