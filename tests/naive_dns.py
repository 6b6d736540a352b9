"""Plain-Python twins of the DNS message table (test oracles for payload/dns_table.py, name_features.py, suffixes.py).

* `kept_arrays`: the flow table's keep rules (flows/kernels.py _keep_payload) applied to a list of flows, giving the
  arrays decode_dns reads: the first `keep_packets` payload packets per direction, their bytes cut at `keep_bytes`
  per direction, and the early (+size / -size, microseconds) sequence.
* `naive_table`: the rows decode_dns makes of them, names as label tuples, written as directly as possible.
* `split_name`, `name_features`: detect/dns_names.py as it was, the registered domain taken from publicsuffixlist
  (the whole Public Suffix List) instead of its short list of multi-label suffixes.
* `summarize_message`: the tunnel detector's former hand reader (payload/dns.py), a second, independent reader.
"""
from __future__ import annotations

import math
import struct
from collections import Counter
from dataclasses import dataclass

import numpy as np
from publicsuffixlist import PublicSuffixList

MAX_NAME, MAX_POINTERS = 255, 128
A, NS, CNAME, PTR, MX, AAAA, OPT = 1, 2, 5, 12, 15, 28, 41
PSL = PublicSuffixList()


# ------------------------------------------------------------------------------------------------ flow table
@dataclass
class Flow:
    """One flow as the tests describe it: protocol, first_seen_ns and its payload packets (direction, bytes,
    wire length or None for len(bytes), microseconds after first_seen)."""

    proto: int
    packets: list[tuple[int, bytes, int | None, int]]
    first_seen_ns: int = 1_700_000_000_000_000_000


def kept_arrays(flows: list[Flow], keep_bytes=2048, keep_packets=4, sequence=64):
    """(data, cap, length, count, fill, seq_size, seq_dt_us) with one slot per flow, and seq_count per flow."""
    n = len(flows)
    data = np.zeros((n, 2, keep_bytes), np.uint8)
    cap = np.zeros((n, 2, keep_packets), np.uint16)
    length = np.zeros((n, 2, keep_packets), np.uint32)
    count = np.zeros((n, 2), np.uint8)
    fill = np.zeros((n, 2), np.uint32)
    seq_size = np.zeros((n, sequence), np.int32)
    seq_dt = np.zeros((n, sequence), np.uint32)
    seq_count = np.zeros(n, np.int64)
    for s, flow in enumerate(flows):
        for d, payload, wire, dt_us in flow.packets:
            wire = len(payload) if wire is None else wire
            if not wire:
                continue  # only payload packets are kept and sequenced
            k = count[s, d]
            if k < keep_packets:
                take = min(len(payload), keep_bytes - int(fill[s, d]))
                data[s, d, fill[s, d]:fill[s, d] + take] = np.frombuffer(payload[:take], np.uint8)
                cap[s, d, k], length[s, d, k] = take, wire
                fill[s, d] += take
                count[s, d] = k + 1
            c = seq_count[s]
            if c < sequence:
                seq_size[s, c] = wire if d == 0 else -wire
                seq_dt[s, c] = dt_us
                seq_count[s] = c + 1
    return (data, cap, length, count, fill, seq_size, seq_dt), seq_count


# ------------------------------------------------------------------------------------------------ messages
def read_name(msg: bytes, pos: int) -> tuple[tuple[bytes, ...], int] | None:
    """(labels, position after the name) or None: runs off the message, loops, reserved label type, > 255 bytes."""
    labels, after, jumps, total = [], -1, 0, 0
    while pos < len(msg):
        k = msg[pos]
        if k == 0:
            return tuple(labels), (pos + 1 if after < 0 else after)
        if k >= 0xC0:
            if pos + 1 >= len(msg) or jumps >= MAX_POINTERS:
                return None
            after = pos + 2 if after < 0 else after
            pos, jumps = ((k & 0x3F) << 8) | msg[pos + 1], jumps + 1
            continue
        total += k + 1
        if k > 63 or pos + 1 + k > len(msg) or total > MAX_NAME:
            return None
        labels.append(msg[pos + 1:pos + 1 + k])
        pos += 1 + k
    return None


def _answer(msg: bytes, rtype: int, rdata: int, rdlength: int) -> tuple[int, int, tuple | None]:
    hi = lo = 0
    target = None
    if rtype == A and rdlength == 4:
        lo = 0xFFFF00000000 | int.from_bytes(msg[rdata:rdata + 4], "big")
    elif rtype == AAAA and rdlength == 16:
        hi, lo = int.from_bytes(msg[rdata:rdata + 8], "big"), int.from_bytes(msg[rdata + 8:rdata + 16], "big")
    elif rtype in (CNAME, NS, PTR, MX):
        got = read_name(msg, rdata + 2 if rtype == MX else rdata)
        if got is not None and got[1] <= rdata + rdlength:
            target = got[0]
    return hi, lo, target


def decode_message(msg: bytes, wire: int) -> dict:
    """The message row of decode_dns for one message (at least 12 bytes), names as label tuples, with its answers."""
    ident, flags, qd, an, ns, ar = struct.unpack_from("!HHHHHH", msg)
    row = dict(id=ident, flags=flags, is_response=flags >> 15, opcode=(flags >> 11) & 15, rcode=flags & 15,
               qdcount=qd, ancount=an, nscount=ns, arcount=ar, size=min(wire, 65535), truncated=int(len(msg) < wire),
               qtype=0, qclass=0, qname=None, edns_size=0, answers=[], answer_rdata_bytes=0)
    pos = 12
    for q in range(qd):
        got = read_name(msg, pos)
        if got is None or got[1] + 4 > len(msg):
            return row
        if q == 0:
            row["qname"] = got[0]
            row["qtype"], row["qclass"] = struct.unpack_from("!HH", msg, got[1])
        pos = got[1] + 4
    for i in range(an + ns + ar):
        got = read_name(msg, pos)
        if got is None or got[1] + 10 > len(msg):
            break
        rtype, rclass, ttl, rdlength = struct.unpack_from("!HHIH", msg, got[1])
        pos = got[1] + 10 + rdlength
        if pos > len(msg):
            break
        if i < an:
            hi, lo, target = _answer(msg, rtype, got[1] + 10, rdlength)
            row["answers"].append(dict(rtype=rtype, ttl=ttl, rdlength=rdlength, name=got[0], addr_hi=hi, addr_lo=lo,
                                       target=target))
            row["answer_rdata_bytes"] += rdlength
        elif i >= an + ns and rtype == OPT:
            row["edns_size"] = rclass
    return row


def naive_table(arrays, slots, protos, first_seen_ns, seq_count) -> list[dict]:
    """decode_dns's message rows in order, each with row, direction, index, ts_ns and the decode_message fields."""
    data, cap, length, count, fill, seq_size, seq_dt = arrays
    out = []
    for r, (s, proto) in enumerate(zip(slots, protos)):
        if not 0 <= s < len(data) or proto not in (6, 17):
            continue
        sizes = seq_size[s, :min(seq_count[r], seq_size.shape[1])]
        for d in (0, 1):
            times = [first_seen_ns[r] + int(seq_dt[s, q]) * 1000 for q in np.flatnonzero(sizes > 0 if d == 0 else
                                                                                         sizes < 0)]
            stream = data[s, d, :min(int(fill[s, d]), data.shape[2])].tobytes()
            for index, piece, wire, ts in _pieces(proto, stream, cap[s, d], length[s, d], count[s, d], times,
                                                  first_seen_ns[r]):
                if len(piece) >= 12:
                    out.append(dict(row=r, direction=d, index=min(index, 255), ts_ns=ts,
                                    **decode_message(piece, wire)))
    return out


def _pieces(proto, stream, cap, length, count, times, first):
    if proto == 17:
        at = 0
        for k in range(min(int(count), len(cap))):
            piece = stream[at:at + int(cap[k])]
            at += int(cap[k])
            yield k, piece, max(int(length[k]), len(piece)), times[k] if k < len(times) else first
        return
    pos, k = 0, 0
    while pos + 2 <= len(stream):
        n = int.from_bytes(stream[pos:pos + 2], "big")
        if n == 0 or pos + 2 + n > len(stream):
            return
        yield k, stream[pos + 2:pos + 2 + n], n, times[0] if times else first
        pos, k = pos + 2 + n, k + 1


def chains(answers: list[dict], max_chain=32) -> list[tuple[int, set[bytes]]]:
    """detect/dns_binding.DnsBinding.observe's CNAME walk over one response's answers, names compared as
    lower-case dotted bytes: (answer position, names leading to its address) per A/AAAA answer."""
    key = lambda labels: b".".join(x.lower() for x in labels)  # noqa: E731
    aliases: dict[bytes, set[bytes]] = {}
    for rr in answers:
        if rr["rtype"] == CNAME and rr["target"]:
            aliases.setdefault(key(rr["target"]), set()).add(key(rr["name"]))
    out = []
    for i, rr in enumerate(answers):
        if not (rr["rtype"] == A and rr["rdlength"] == 4 or rr["rtype"] == AAAA and rr["rdlength"] == 16):
            continue
        names, frontier = {key(rr["name"])}, [key(rr["name"])]
        while frontier:
            for alias in aliases.get(frontier.pop(), ()):
                if alias not in names and len(names) < max_chain:
                    names.add(alias)
                    frontier.append(alias)
        out.append((i, names))
    return out


# ------------------------------------------------------------------------------------------------ question names
# detect/dns_names.py (SANS "Detecting DNS Tunneling"; NgViz; nDPI), copied as it was; only the registered domain
# now comes from the whole Public Suffix List.
IGNORED_SUFFIXES = ("in-addr.arpa", "ip6.arpa", "local", "localhost", "home.arpa", "invalid")
MAX_TLD = 24
HOSTNAME_BYTES = frozenset(b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_")
HEX = frozenset(b"0123456789abcdef")
BASE32 = frozenset(b"abcdefghijklmnopqrstuvwxyz234567")
VOWELS = frozenset(b"aeiou")
MIN_ENCODED, MIN_RANDOM, RANDOM_ENTROPY, RANDOM_VOWELS, RANDOM_DIGITS = 16, 20, 3.6, 0.3, 2


@dataclass(frozen=True)
class SplitName:
    domain: str
    sub: tuple[bytes, ...]
    no_tld: bool


@dataclass(frozen=True)
class NameFeatures:
    length: int
    longest_label: int
    entropy: float
    charset: str
    encoded: bool


def _plausible_tld(label: bytes) -> bool:
    if label.startswith(b"xn--"):
        return len(label) <= MAX_TLD
    return 2 <= len(label) <= MAX_TLD and label.isalpha() and label.isascii()


def split_name(labels: tuple[bytes, ...]) -> SplitName | None:
    if len(labels) < 2 or not all(labels):
        return None
    lower = [label.lower() for label in labels]
    text = b".".join(lower).decode("ascii", "backslashreplace")
    if any(text == s or text.endswith("." + s) for s in IGNORED_SUFFIXES):
        return None
    if not _plausible_tld(lower[-1]):
        return SplitName(lower[0].decode("ascii", "backslashreplace"), tuple(labels[1:]), True)
    registered = PSL.privatesuffix(tuple(labels))  # was: the longest of MULTI_LABEL_SUFFIXES, else two labels
    if registered is None:
        return None
    keep = len(registered)
    domain = b".".join(lower[-keep:]).decode("ascii", "backslashreplace")
    sub = tuple(label for label in labels[:-keep] if not label.startswith(b"_"))
    return SplitName(domain, sub, False)


def entropy(data: bytes) -> float:
    if not data:
        return 0.0
    n = len(data)
    return -sum(c / n * math.log2(c / n) for c in Counter(data).values())


def _charset(text: bytes) -> str:
    lower, chars = text.lower(), set(text)
    if not text:
        return "text"
    if any(b < 0x21 or b > 0x7E for b in chars):
        return "binary"
    if not chars <= HOSTNAME_BYTES:
        return "symbols"
    if set(lower) <= HEX and any(48 <= b <= 57 for b in chars) and any(97 <= b <= 102 for b in lower):
        return "hex"
    if text != lower and text.upper() != text and any(48 <= b <= 57 for b in chars):
        return "base64"
    if set(lower) <= BASE32 and sum(50 <= b <= 55 for b in lower) * 10 >= len(lower):
        return "base32"
    return "text"


def _random(text: bytes) -> bool:
    letters = [b for b in text if 97 <= b <= 122]
    digits = sum(48 <= b <= 57 for b in text)
    if len(text) < MIN_RANDOM or len(letters) * 2 < len(text) or text.count(b"-") > 1 or digits < RANDOM_DIGITS:
        return False
    return entropy(text) >= RANDOM_ENTROPY and sum(b in VOWELS for b in letters) / len(letters) <= RANDOM_VOWELS


def name_features(sub: tuple[bytes, ...]) -> NameFeatures:
    text = b"".join(sub)
    longest = max((len(label) for label in sub), default=0)
    bits = entropy(text)
    lower = text.lower()
    charset = _charset(text)
    if len(text) < MIN_ENCODED:
        encoded = charset == "binary"
    elif charset in ("binary", "symbols", "hex", "base64"):
        encoded = True
    else:
        encoded = _random(lower) or any(_random(label.lower()) for label in sub if len(label) >= MIN_RANDOM)
        if encoded:
            charset = _charset(max(sub, key=len))
            charset = "random" if charset == "text" else charset
    return NameFeatures(len(text), longest, bits, charset, encoded)


# ------------------------------------------------------------------------------------------------ tunnel view
@dataclass(frozen=True)
class DnsSummary:
    is_response: bool
    rcode: int
    qname: tuple[bytes, ...]
    qtype: int
    answer_types: tuple[int, ...]
    answer_bytes: int
    edns_size: int
    size: int


def _read_name16(data: bytes, pos: int):
    labels: list[bytes] = []
    end, jumps, total = -1, 0, 0
    while pos < len(data):
        n = data[pos]
        if n == 0:
            return tuple(labels), (end if end >= 0 else pos + 1)
        if n & 0xC0 == 0xC0:
            if pos + 1 >= len(data) or jumps >= 16:
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
    """payload/dns.py's summarize_message as it was: None for no question or an opcode other than QUERY."""
    if len(data) < 12:
        return None
    ident, flags, qd, an, ns, ar = struct.unpack_from("!HHHHHH", data)
    if qd == 0 or flags & 0x7800:
        return None
    read = _read_name16(data, 12)
    if read is None or read[1] + 4 > len(data):
        return None
    qname, pos = read
    qtype = struct.unpack_from("!H", data, pos)[0]
    pos += 4
    for _ in range(qd - 1):
        read = _read_name16(data, pos)
        if read is None:
            break
        pos = read[1] + 4
    types, rdata_bytes, edns = [], 0, 0
    for index in range(an + ns + ar):
        read = _read_name16(data, pos)
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
            edns = rclass
    return DnsSummary(bool(flags & 0x8000), flags & 0xF, qname, qtype, tuple(types), rdata_bytes, edns, len(data))


# ------------------------------------------------------------------------------------------------ dpkt
# The reader the DNS binding used before the message table (dpkt does the dissection): the oracle for answers.
import ipaddress  # noqa: E402
from typing import Iterator  # noqa: E402

import dpkt  # noqa: E402

from egressguard.payload.dns import DnsMessage, DnsRecord  # noqa: E402

MAX_NAME = 255


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
