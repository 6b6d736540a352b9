"""DNS messages from a flow's kept bytes: questions and answers (A, AAAA, CNAME, ...), over UDP or TCP.

dpkt does the dissection (name compression, record types); this module makes it total: any input gives a result
or None, never an exception. Names come back lower-case without the trailing dot, bounded, as received otherwise.
"""
from __future__ import annotations

import ipaddress
import struct
from dataclasses import dataclass

import dpkt

MAX_NAME = 255  # RFC 1035 2.3.4
TYPE_NAMES = {1: "A", 2: "NS", 5: "CNAME", 6: "SOA", 10: "NULL", 12: "PTR", 15: "MX", 16: "TXT", 28: "AAAA",
              33: "SRV", 64: "SVCB", 65: "HTTPS", 255: "ANY"}


@dataclass(frozen=True)
class DnsRecord:
    """One resource record: `value` is the address text for A/AAAA, the target name for CNAME/NS/PTR/MX, the text
    for TXT, '' otherwise."""

    name: str
    rtype: int
    ttl: int
    value: str


@dataclass(frozen=True)
class DnsMessage:
    id: int
    is_response: bool
    rcode: int
    questions: tuple[tuple[str, int], ...]  # (name, qtype)
    answers: tuple[DnsRecord, ...]


def _name(raw) -> str:
    text = raw if isinstance(raw, str) else bytes(raw).decode("ascii", "backslashreplace")
    return text[:MAX_NAME].rstrip(".").lower()


def parse_message(data: bytes) -> DnsMessage | None:
    """One DNS message (RFC 1035 4.1), or None when `data` is not one."""
    if len(data) < 12:
        return None
    try:
        msg = dpkt.dns.DNS(data)
    except (dpkt.UnpackError, struct.error, IndexError, ValueError, UnicodeDecodeError):
        return None
    answers = []
    for rr in list(msg.an):
        value = ""
        try:
            if rr.type == 1 and len(rr.rdata) == 4:
                value = str(ipaddress.IPv4Address(rr.rdata))
            elif rr.type == 28 and len(rr.rdata) == 16:
                value = str(ipaddress.IPv6Address(rr.rdata))
            elif rr.type in (2, 5, 12):
                value = _name(getattr(rr, "cname", "") or getattr(rr, "nsname", "") or getattr(rr, "ptrname", ""))
            elif rr.type == 15:
                value = _name(getattr(rr, "mxname", ""))
            elif rr.type == 16:
                value = " ".join(t.decode("utf-8", "backslashreplace") if isinstance(t, bytes) else str(t)
                                 for t in getattr(rr, "text", []))[:1024]
        except (AttributeError, ValueError, TypeError):
            value = ""
        answers.append(DnsRecord(_name(rr.name), int(rr.type), int(rr.ttl), value))
    questions = tuple((_name(q.name), int(q.type)) for q in list(msg.qd))
    return DnsMessage(int(msg.id), bool(msg.qr), int(msg.rcode), questions, tuple(answers))


def parse_udp_payloads(pieces: list[bytes]) -> list[DnsMessage]:
    """Each kept UDP payload is one DNS message."""
    return [m for m in (parse_message(p) for p in pieces) if m is not None]


def parse_tcp_stream(stream: bytes) -> list[DnsMessage]:
    """DNS over TCP: messages with a two-byte length prefix (RFC 1035 4.2.2), as far as the kept bytes go."""
    out, pos = [], 0
    while pos + 2 <= len(stream):
        (n,) = struct.unpack_from("!H", stream, pos)
        if n == 0 or pos + 2 + n > len(stream):
            break
        msg = parse_message(stream[pos + 2:pos + 2 + n])
        if msg is not None:
            out.append(msg)
        pos += 2 + n
    return out
