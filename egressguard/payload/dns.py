"""DNS messages from a flow's kept bytes: questions and answers (A, AAAA, CNAME, ...), over UDP or TCP.

dpkt does the dissection (name compression, record types); this module makes it total: any input gives a result
or None, never an exception. Names come back lower-case without the trailing dot, bounded, as received otherwise.
"""
from __future__ import annotations

import ipaddress
import struct
from dataclasses import dataclass
from typing import Iterator

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


def tcp_messages(stream: bytes) -> Iterator[bytes]:
    """DNS over TCP: the messages of a stream, each behind a two-byte length prefix (RFC 1035 4.2.2), as far as the
    kept bytes go."""
    pos = 0
    while pos + 2 <= len(stream):
        (n,) = struct.unpack_from("!H", stream, pos)
        if n == 0 or pos + 2 + n > len(stream):
            return
        yield stream[pos + 2:pos + 2 + n]
        pos += 2 + n


def parse_tcp_stream(stream: bytes) -> list[DnsMessage]:
    """The DNS messages of a kept TCP stream."""
    return [m for m in (parse_message(piece) for piece in tcp_messages(stream)) if m is not None]


# ------------------------------------------------------------------------------------------------ tunnel view
# What the DNS tunnel detector reads from every kept message. Tunnels put bytes that are no text into names (iodine's
# raw and base128 labels), which dpkt refuses to decode: this reader walks the wire format itself (RFC 1035 4.1,
# compression 4.1.4, EDNS(0) OPT RFC 6891 6.1.2) and keeps the question name as raw labels, case and all.
OPT = 41
MAX_POINTERS = 16  # compression pointers followed per name (a loop guard)


@dataclass(frozen=True)
class DnsSummary:
    """One message as the tunnel detector sees it: raw question labels, types, sizes and the EDNS UDP size.

    `answer_types` and `answer_bytes` cover the answer records that were read completely (a kept message may be cut).
    """

    is_response: bool
    rcode: int
    qname: tuple[bytes, ...]  # labels of the first question, as sent (no case folding, no decoding)
    qtype: int
    answer_types: tuple[int, ...]
    answer_bytes: int  # RDATA bytes of those answers
    edns_size: int  # requestor's UDP payload size from an OPT record, 0 without one
    size: int  # bytes of the message


def _read_name(data: bytes, pos: int) -> tuple[tuple[bytes, ...], int] | None:
    """(labels, position after the name) or None when the name runs off the data or loops."""
    labels: list[bytes] = []
    end, jumps, total = -1, 0, 0
    while pos < len(data):
        n = data[pos]
        if n == 0:
            return tuple(labels), (end if end >= 0 else pos + 1)
        if n & 0xC0 == 0xC0:
            if pos + 1 >= len(data) or jumps >= MAX_POINTERS:
                return None
            if end < 0:
                end = pos + 2
            pos, jumps = ((n & 0x3F) << 8) | data[pos + 1], jumps + 1
            continue
        if n & 0xC0 or pos + 1 + n > len(data):
            return None
        labels.append(data[pos + 1:pos + 1 + n])
        total += n + 1
        if total > MAX_NAME:
            return None
        pos += 1 + n
    return None


def summarize_message(data: bytes) -> DnsSummary | None:
    """The tunnel view of one DNS message, or None when `data` is not one (never raises)."""
    if len(data) < 12:
        return None
    ident, flags, qd, an, ns, ar = struct.unpack_from("!HHHHHH", data)
    if qd == 0 or flags & 0x7800:  # no question, or an opcode other than QUERY (RFC 1035 4.1.1)
        return None
    read = _read_name(data, 12)
    if read is None or read[1] + 4 > len(data):
        return None
    qname, pos = read
    qtype = struct.unpack_from("!H", data, pos)[0]
    pos += 4
    for _ in range(qd - 1):
        read = _read_name(data, pos)
        if read is None:
            break
        pos = read[1] + 4
    types, rdata_bytes, edns = [], 0, 0
    for index in range(an + ns + ar):
        read = _read_name(data, pos)
        if read is None or read[1] + 10 > len(data):
            break
        rtype, rclass, _ttl, rdlength = struct.unpack_from("!HHIH", data, read[1])
        pos = read[1] + 10 + rdlength
        if pos > len(data):
            break
        if index < an:
            types.append(rtype)
            rdata_bytes += rdlength
        elif rtype == OPT and index >= an + ns:
            edns = rclass  # OPT's CLASS field is the requestor's UDP payload size
    return DnsSummary(bool(flags & 0x8000), flags & 0xF, qname, qtype, tuple(types), rdata_bytes, edns, len(data))


def summarize_tcp_stream(stream: bytes) -> list[DnsSummary]:
    """The tunnel view of the DNS messages of a kept TCP stream."""
    return [m for m in (summarize_message(piece) for piece in tcp_messages(stream)) if m is not None]


def name_text(labels: tuple[bytes, ...], limit: int = MAX_NAME) -> str:
    """A name for evidence: labels joined by dots, bytes outside printable ASCII as \\xNN, cut to `limit` chars."""
    text = ".".join(label.decode("ascii", "backslashreplace") for label in labels)
    text = "".join(c if " " < c < "\x7f" else f"\\x{ord(c):02x}" for c in text)
    return text if len(text) <= limit else text[:limit - 3] + "..."
