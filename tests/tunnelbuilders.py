"""Synthetic captures for the DNS and ICMP tunnel tests: DNS messages with any label bytes, query type and EDNS(0)
buffer, and ICMP/ICMPv6 echo payloads the way each ping implementation fills them (or a tunnel would).

DNS messages follow RFC 1035 4.1 (names uncompressed) and RFC 6891 6.1.2 (OPT record); ping payloads follow the
tools' sources: iputils ping_common.c (16-byte timeval, then byte i at offset i), FreeBSD ping.c (8-byte timeval,
then the same counting bytes), Windows ping's alphabet. Randomness is always seeded.
"""
from __future__ import annotations

import random
import struct

from egressbuilders import Capture
from framebuilders import icmp, ipv4, udp

QTYPES = {"A": 1, "NS": 2, "CNAME": 5, "NULL": 10, "PTR": 12, "MX": 15, "TXT": 16, "AAAA": 28, "SRV": 33, "ANY": 255}
WINDOWS_PING = b"abcdefghijklmnopqrstuvwabcdefghi"  # 32 B, Windows ping's default data
PTUNNEL_MAGIC = b"\xd5\x20\x08\x80"


def wire_name(labels) -> bytes:
    """A name in wire form from labels (str or bytes)."""
    out = b""
    for label in labels:
        raw = label.encode() if isinstance(label, str) else label
        out += bytes([len(raw)]) + raw
    return out + b"\0"


def dns_query(name, qtype: str = "A", *, ident: int = 0x4242, edns: int = 0) -> bytes:
    """A query for `name` (text with dots, or a tuple of raw labels), with an OPT record when `edns` is set."""
    labels = name.split(".") if isinstance(name, str) else name
    out = struct.pack("!HHHHHH", ident, 0x0100, 1, 0, 0, 1 if edns else 0)
    out += wire_name(labels) + struct.pack("!HH", QTYPES[qtype], 1)
    if edns:
        out += b"\0" + struct.pack("!HHIH", 41, edns, 0, 0)
    return out


def dns_answer(query: bytes, rdata: bytes = b"\xc6\x12\x00\x02", *, rtype: int | None = None,
               rcode: int = 0) -> bytes:
    """The response to `query`: its question, and one answer of `rtype` (default: the question's type) unless
    rcode is set (e.g. 3, NXDOMAIN)."""
    head = bytearray(query[:12])
    head[2:4] = struct.pack("!H", 0x8180 | rcode)
    end = 12
    while query[end]:
        end += query[end] + 1
    qtype = struct.unpack_from("!H", query, end + 1)[0]
    question = query[12:end + 5]
    if rcode:
        head[6:12] = struct.pack("!HHH", 0, 0, 0)
        return bytes(head) + question
    head[6:12] = struct.pack("!HHH", 1, 0, 0)
    answer = b"\xc0\x0c" + struct.pack("!HHIH", rtype or qtype, 1, 0, len(rdata)) + rdata
    return bytes(head) + question + answer


def dns_exchange(cap: Capture, t: float, client: str, server: str, name, qtype: str = "A", *,
                 sport: int | None = None, rdata: bytes = b"\xc6\x12\x00\x02", rcode: int = 0, edns: int = 0) -> None:
    """One query and its answer over UDP; a fresh source port per exchange unless `sport` is given."""
    sp = sport or cap.sport()
    query = dns_query(name, qtype, edns=edns)
    cap.add(t, client, server, 17, udp(sp, 53, query))
    cap.add(t + 0.004, server, client, 17, udp(53, sp, dns_answer(query, rdata, rcode=rcode)))


def encoded_label(rng: random.Random, n: int, alphabet: str) -> str:
    return "".join(rng.choice(alphabet) for _ in range(n))


HEX = "0123456789abcdef"
BASE32 = "abcdefghijklmnopqrstuvwxyz234567"
BASE64URL = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"


# ----------------------------------------------------------------------------------------------- ICMP echo
def linux_ping_payload(seq: int, size: int = 56, pattern: bytes | None = None) -> bytes:
    """iputils: a 16-byte struct timeval, then byte i at offset i (or `ping -p` pattern repeated)."""
    stamp = struct.pack("<QQ", 1_700_000_000 + seq, (seq * 7919) % 1_000_000)
    if pattern:
        fill = (pattern * (size // len(pattern) + 1))[:size - 16]
    else:
        fill = bytes(i & 0xFF for i in range(16, size))
    return (stamp + fill)[:size]


def bsd_ping_payload(seq: int, size: int = 56) -> bytes:
    """FreeBSD/macOS: an 8-byte timeval, then byte i at offset i."""
    return struct.pack("<II", 1_700_000_000 + seq, seq * 1000) + bytes(i & 0xFF for i in range(8, size))


def ping_flow(cap: Capture, t: float, client: str, server: str, payloads, *, interval: float = 1.0,
              ident: int = 0x77, reply=None, v6: bool = False) -> None:
    """Echo requests with the given payloads, each answered by the mirrored payload (or `reply(i, payload)`, None
    for no reply)."""
    req, rep, proto = (128, 129, 58) if v6 else (8, 0, 1)
    for i, data in enumerate(payloads):
        ts = t + i * interval
        cap.add(ts, client, server, proto, icmp(req, 0, data, ident=ident, seq=i + 1))
        back = data if reply is None else reply(i, data)
        if back is not None:
            cap.add(ts + 0.0005, server, client, proto, icmp(rep, 0, back, ident=ident, seq=i + 1))


def inner_ipv4(src: str, dst: str, payload: bytes, proto: int = 6) -> bytes:
    """A whole IPv4 packet with a correct header checksum (what icmptunnel/hans put inside echo messages)."""
    packet = bytearray(ipv4(src, dst, proto, payload))
    packet[10:12] = b"\0\0"
    total = sum(struct.unpack("!10H", bytes(packet[:20])))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    packet[10:12] = struct.pack("!H", 0xFFFF - total)
    return bytes(packet)


def random_payloads(seed: int, count: int, low: int, high: int) -> list[bytes]:
    rng = random.Random(seed)
    return [rng.randbytes(rng.randint(low, high)) for _ in range(count)]
