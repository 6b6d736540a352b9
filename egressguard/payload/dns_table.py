"""Every DNS message a batch of flows kept, decoded once in a kernel into a message table (schema DNS_MESSAGE_*).

Reads the flow table's kept payload per direction: over UDP each kept packet is one message; over TCP the stream holds
messages behind a two-byte length (RFC 1035 4.2.2), read up to the first one that does not fit. The decoder walks the
wire format itself (RFC 1035 4.1; compression 4.1.4; EDNS(0) OPT, RFC 6891 6.1.2) and is total: any bytes give rows
or no rows. Names are copied into one buffer decompressed and in wire form, bytes and case as sent, so the raw and
binary labels that tunnels send (iodine) stay unambiguous. The first question's name is then judged in place
(payload/name_features.py: registered domain from the whole Public Suffix List; length, entropy, alphabet and an
encoded-or-not verdict of the labels below it).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
from numba import njit

from egressguard.payload.name_features import judge_questions
from egressguard.payload.suffixes import (FNV_OFFSET, FNV_PRIME, MAX_LABELS, MAX_NAME, PublicSuffixRules, name_keys,
                                          public_suffix_rules, same_name, same_names)
from egressguard.schema import DNS_ANSWER_DTYPE, DNS_MESSAGE_DTYPE

MAX_POINTERS = 128  # compression pointers followed per name: a loop guard (a sane name needs one per label at most)
A, NS, CNAME, PTR, MX, AAAA, OPT = 1, 2, 5, 12, 15, 28, 41
MAX_CHAIN = 32  # names followed back along a CNAME chain per address (detect/dns_binding.MAX_CHAIN)
NAME_ROOM = MAX_NAME + 1  # bytes one decoded name may take in `names` (labels, length bytes, the root byte)


class KeptArrays(NamedTuple):
    """The flow table's kept payload (flows/table.py, TableArrays keep_* and seq_*), indexed by payload slot."""

    data: np.ndarray  # uint8 [slots, 2, keep_bytes]: each direction's kept bytes, packets concatenated
    cap: np.ndarray  # uint16 [slots, 2, keep_packets]: bytes kept of packet k
    length: np.ndarray  # uint32 [slots, 2, keep_packets]: packet k's payload length on the wire
    count: np.ndarray  # uint8 [slots, 2]: packets kept
    fill: np.ndarray  # uint32 [slots, 2]: bytes kept
    seq_size: np.ndarray  # int32 [slots, sequence]: early payload packets, +size originator / -size responder
    seq_dt_us: np.ndarray  # uint32 [slots, sequence]: their time, microseconds after first_seen_ns

    @classmethod
    def of(cls, t) -> "KeptArrays":
        """From a flow table's arrays (FlowTable.t)."""
        return cls(t.keep_data, t.keep_cap, t.keep_len, t.keep_count, t.keep_fill, t.seq_size, t.seq_dt_us)


class _Rows(NamedTuple):
    slot: np.ndarray
    proto: np.ndarray
    first_seen_ns: np.ndarray
    seq_count: np.ndarray


@dataclass(frozen=True)
class DnsTable:
    """Messages (DNS_MESSAGE_DTYPE), answer records (DNS_ANSWER_DTYPE) and the names buffer their offsets point to."""

    messages: np.ndarray
    answers: np.ndarray
    names: np.ndarray


# ------------------------------------------------------------------------------------------------ wire format
@njit(cache=True, nogil=True)
def _u16(buf, p):
    return (np.int64(buf[p]) << 8) | np.int64(buf[p + 1])


@njit(cache=True, nogil=True)
def _u64(buf, p):
    v = np.uint64(0)
    for j in range(8):
        v = (v << np.uint64(8)) | np.uint64(buf[p + j])
    return v


@njit(cache=True, nogil=True)
def _read_name(buf, base, end, pos, out, at):
    """Decompress the name at buf[pos] of the message buf[base:end] into out[at:] (wire form); returns (position
    after the name where it was read, bytes written, labels), position -1 when it runs off the message, loops, holds
    a reserved label type or is longer than 255 bytes (RFC 1035 2.3.4; counted without the root byte, as dpkt)."""
    after, jumps, total, labels, w = -1, 0, 0, 0, at
    while pos < end:
        k = np.int64(buf[pos])
        if k == 0:
            out[w] = 0
            return (pos + 1 if after < 0 else after), w + 1 - at, labels
        if k >= 0xC0:
            if pos + 1 >= end or jumps >= MAX_POINTERS:
                return -1, 0, 0
            if after < 0:
                after = pos + 2
            pos = base + (((k & 0x3F) << 8) | np.int64(buf[pos + 1]))
            jumps += 1
            continue
        total += k + 1
        if k > 63 or pos + 1 + k > end or total > MAX_NAME:
            return -1, 0, 0
        out[w] = k
        for j in range(1, k + 1):
            out[w + j] = buf[pos + j]
        w += k + 1
        labels += 1
        pos += 1 + k
    return -1, 0, 0


@njit(cache=True, nogil=True)
def _answer(buf, base, end, rtype, rdata, rdlength, ans, names, used):
    """Fill one answer row from its RDATA: the address of A/AAAA, the target name of CNAME/NS/PTR/MX."""
    if rtype == A and rdlength == 4:
        ans.addr_lo = np.uint64(0xFFFF00000000 | (_u16(buf, rdata) << 16) | _u16(buf, rdata + 2))
    elif rtype == AAAA and rdlength == 16:
        ans.addr_hi = _u64(buf, rdata)
        ans.addr_lo = _u64(buf, rdata + 8)
    elif rtype == CNAME or rtype == NS or rtype == PTR or rtype == MX:
        start = rdata + 2 if rtype == MX else rdata  # MX: PREFERENCE first (RFC 1035 3.3.9)
        after, written, _ = _read_name(buf, base, end, start, names, used[2])
        if after >= 0 and after <= rdata + rdlength:  # the name must lie in the RDATA (RFC 1035 3.3)
            ans.target = used[2]
            used[2] += written


@njit(cache=True, nogil=True)
def _decode_message(buf, base, end, wire, row, d, index, ts, messages, answers, names, used):
    """One message buf[base:end] (at least a header) into messages[used[0]] and its answers; used = counts."""
    m = used[0]
    used[0] += 1
    rec = messages[m]
    flags = _u16(buf, base + 2)
    rec.row, rec.direction, rec.index, rec.ts_ns = row, d, min(index, 255), ts
    rec.id, rec.flags, rec.is_response, rec.opcode, rec.rcode = _u16(buf, base), flags, flags >> 15, \
        (flags >> 11) & 15, flags & 15
    qd, an, ns, ar = _u16(buf, base + 4), _u16(buf, base + 6), _u16(buf, base + 8), _u16(buf, base + 10)
    rec.qdcount, rec.ancount, rec.nscount, rec.arcount = qd, an, ns, ar
    rec.size, rec.truncated = min(wire, 65535), end - base < wire
    rec.qname, rec.qname_labels, rec.qtype, rec.qclass, rec.edns_size = -1, 0, 0, 0, 0
    rec.answer_first, rec.answer_count, rec.answers_read, rec.answer_rdata_bytes = used[1], 0, 0, 0
    rec.domain, rec.domain_labels, rec.no_tld, rec.sub_length, rec.longest_label = -1, 0, 0, 0, 0
    rec.entropy, rec.charset, rec.encoded = 0.0, 0, 0  # the buffers are not zeroed: every field is written here
    pos = base + 12
    for q in range(qd):  # the first question's name is kept; the others are read into the free space and dropped
        after, written, labels = _read_name(buf, base, end, pos, names, used[2])
        if after < 0 or after + 4 > end:
            return
        if q == 0:
            rec.qname, rec.qname_labels, rec.qtype, rec.qclass = used[2], labels, _u16(buf, after), \
                _u16(buf, after + 2)
            used[2] += written
        pos = after + 4
    read, rdata_bytes = 0, 0
    for i in range(an + ns + ar):
        at = used[2]
        after, written, _ = _read_name(buf, base, end, pos, names, at)
        if after < 0 or after + 10 > end:
            break
        rtype, rclass, rdlength = _u16(buf, after), _u16(buf, after + 2), _u16(buf, after + 8)
        pos = after + 10 + rdlength
        if pos > end:
            break
        if i < an:
            used[2] += written
            ans = answers[used[1]]
            used[1] += 1
            ans.message, ans.rtype, ans.rdlength, ans.name, ans.target = m, rtype, rdlength, at, -1
            ans.addr_hi, ans.addr_lo = 0, 0
            ans.ttl = (_u16(buf, after + 4) << 16) | _u16(buf, after + 6)
            _answer(buf, base, end, rtype, after + 10, rdlength, ans, names, used)
            read += 1
            rdata_bytes += rdlength
        elif i >= an + ns and rtype == OPT:
            rec.edns_size = rclass  # OPT's CLASS is the requestor's UDP payload size (RFC 6891 6.1.2)
    rec.answers_read, rec.answer_count, rec.answer_rdata_bytes = read, read, rdata_bytes


@njit(cache=True, nogil=True, inline="always")  # array arguments cost per call: this runs per message
def _nth_time(keep, rows, r, s, d, q):
    """(time of the first sequence entry of direction d at or after q, the entry after it): first_seen when none."""
    n = min(np.int64(rows.seq_count[r]), keep.seq_size.shape[1])
    while q < n and not (keep.seq_size[s, q] > 0 if d == 0 else keep.seq_size[s, q] < 0):
        q += 1
    if q >= n:
        return rows.first_seen_ns[r], q
    return rows.first_seen_ns[r] + np.int64(keep.seq_dt_us[s, q]) * 1000, q + 1


@njit(cache=True, nogil=True, inline="always")  # array arguments cost per call: this runs per message
def _decode_direction(keep, rows, r, s, d, messages, answers, names, used):
    buf = keep.data[s, d]
    fill = min(np.int64(keep.fill[s, d]), buf.shape[0])
    if rows.proto[r] == 17:  # one message per kept packet, timed by that packet's sequence entry
        at, q = 0, 0
        for k in range(min(np.int64(keep.count[s, d]), keep.cap.shape[2])):
            base = at
            at += np.int64(keep.cap[s, d, k])
            ts, q = _nth_time(keep, rows, r, s, d, q)
            end = min(at, fill)
            if end - base >= 12:
                wire = max(np.int64(keep.length[s, d, k]), end - base)
                _decode_message(buf, base, end, wire, r, d, k, ts, messages, answers, names, used)
        return
    ts, _ = _nth_time(keep, rows, r, s, d, 0)
    pos, k = 0, 0
    while pos + 2 <= fill:  # RFC 1035 4.2.2: two-byte length, then the message
        n = _u16(buf, pos)
        if n == 0 or pos + 2 + n > fill:
            return
        if n >= 12:
            _decode_message(buf, pos + 2, pos + 2 + n, n, r, d, k, ts, messages, answers, names, used)
        pos += 2 + n
        k += 1


@njit(cache=True, nogil=True)
def _decode_rows(keep, rows, start, messages, answers, names, used):
    """Decode rows[start:]; returns the first row not decoded (its worst case would not fit the buffers left)."""
    width = keep.data.shape[2]
    for r in range(start, rows.slot.shape[0]):
        s = rows.slot[r]
        if s < 0 or s >= keep.data.shape[0] or (rows.proto[r] != 6 and rows.proto[r] != 17):
            continue
        kept = min(np.int64(keep.fill[s, 0]), width) + min(np.int64(keep.fill[s, 1]), width)
        most = kept // 12 + 1  # messages have a 12-byte header; every resource record takes at least 11 bytes
        if used[0] + most > messages.shape[0] or used[1] + kept // 11 + 1 > answers.shape[0] or \
                used[2] + (most + 2 * (kept // 11 + 1) + 1) * NAME_ROOM > names.shape[0]:
            return r
        for d in range(2):
            _decode_direction(keep, rows, r, s, d, messages, answers, names, used)
    return rows.slot.shape[0]


# ------------------------------------------------------------------------------------------------ the wrapper
def _check(keep: KeptArrays) -> None:
    want = {"data": (np.uint8, 3), "cap": (np.uint16, 3), "length": (np.uint32, 3), "count": (np.uint8, 2),
            "fill": (np.uint32, 2), "seq_size": (np.int32, 2), "seq_dt_us": (np.uint32, 2)}
    slots = keep.data.shape[0] if keep.data.ndim == 3 else -1
    for name, (dtype, ndim) in want.items():
        a = getattr(keep, name)
        if not isinstance(a, np.ndarray) or a.dtype != dtype or a.ndim != ndim or a.shape[0] != slots or \
                (ndim == 3 or name in ("count", "fill")) and a.shape[1] != 2:
            raise TypeError(f"KeptArrays.{name} must be a {ndim}-D {np.dtype(dtype).name} array of {slots} slots "
                            f"(the flow table's layout), got {getattr(a, 'dtype', type(a))} {getattr(a, 'shape', '')}")
    if keep.cap.shape != keep.length.shape or keep.seq_size.shape != keep.seq_dt_us.shape:
        raise TypeError("KeptArrays.cap/length and seq_size/seq_dt_us must have the same shapes")


def decode_dns(keep: KeptArrays | tuple, slots: np.ndarray, protos: np.ndarray, first_seen_ns: np.ndarray,
               seq_count: np.ndarray, rules: PublicSuffixRules | None = None) -> DnsTable:
    """Decode the DNS messages kept by the given flows (per-row arrays of their FLOW records: slot, proto,
    first_seen_ns, seq_count; only TCP and UDP rows with a slot are read) and judge their question names.

    `rules`: the Public Suffix List to split names with (default: the one publicsuffixlist ships)."""
    keep = KeptArrays(*keep)  # also from a plain tuple (FlowTable.kept_arrays)
    _check(keep)
    rows = _Rows(*(np.ascontiguousarray(a, np.int64) for a in (slots, protos, first_seen_ns, seq_count)))
    if len({len(a) for a in rows}) != 1 or rows.slot.ndim != 1:
        raise ValueError("slots, protos, first_seen_ns and seq_count must be 1-D arrays of one length")
    has = (rows.slot >= 0) & (rows.slot < keep.data.shape[0])
    guess = int(keep.count[rows.slot[has]].sum()) + 16
    width = keep.data.shape[2]
    row_worst = ((2 * width) // 12 + 2 * ((2 * width) // 11) + 5) * NAME_ROOM
    # not zeroed: the kernel writes every field of the rows it fills, and pages never written cost no memory
    messages, answers = np.empty(guess, DNS_MESSAGE_DTYPE), np.empty(2 * guess, DNS_ANSWER_DTYPE)
    names, used = np.empty(guess * 160 + row_worst, np.uint8), np.zeros(3, np.int64)
    start = 0
    while True:
        start = _decode_rows(keep, rows, start, messages, answers, names, used)
        if start >= len(rows.slot):
            break
        messages = _grown(messages, used[0], (2 * width) // 12 + 1)
        answers = _grown(answers, used[1], (2 * width) // 11 + 1)
        names = _grown(names, used[2], row_worst)
    table = DnsTable(messages[:used[0]], answers[:used[1]], names[:used[2]])
    judge_questions(table.messages, table.names, public_suffix_rules() if rules is None else rules)
    return table


def _grown(a: np.ndarray, used: int, room: int) -> np.ndarray:
    """A larger buffer (doubled, and at least `room` free items) holding the `used` items of `a`."""
    out = np.empty(max(2 * len(a), int(used) + room), a.dtype)
    out[:used] = a[:used]
    return out


# ------------------------------------------------------------------------------------------------ reading the table
def name_labels(table: DnsTable, off: int, limit: int = MAX_LABELS) -> tuple[bytes, ...]:
    """The labels of the name at names[off] (the first `limit`), raw: bytes and case as sent; () for off -1."""
    names, out, pos = table.names, [], int(off)
    while 0 <= pos < len(names) and names[pos] and len(out) < limit:
        k = int(names[pos])
        out.append(names[pos + 1:pos + 1 + k].tobytes())
        pos += 1 + k
    return tuple(out)


def name_text(table: DnsTable, off: int) -> str:
    """A name as the DNS binding keys it: dotted, lower case, bytes outside ASCII as \\xNN, at most 255 characters,
    no trailing dot."""
    text = b".".join(name_labels(table, off)).decode("ascii", "backslashreplace")
    return text[:MAX_NAME].rstrip(".").lower()


def domain_text(table: DnsTable, message: int) -> str | None:
    """The registered domain of a message's question ("biillpi.com"; the first label when no_tld), lower case,
    bytes outside ASCII as \\xNN; None when the name is never judged."""
    rec = table.messages[message]
    if rec["domain"] < 0:
        return None
    labels = name_labels(table, rec["domain"], int(rec["domain_labels"]))
    return b".".join(label.lower() for label in labels).decode("ascii", "backslashreplace")


def unique_names(table: DnsTable, offsets: np.ndarray, labels: np.ndarray | None = None
                 ) -> tuple[np.ndarray, np.ndarray]:
    """Group names (offsets into table.names, -1 for none; only their first `labels[i]` labels when given) that are
    equal up to ASCII case: (group of each name, int32; the position of each group's first member, int32). The
    caller turns only the few distinct names into text."""
    offsets = np.ascontiguousarray(offsets, np.int64)
    limit = np.full(len(offsets), MAX_LABELS + 1, np.int64) if labels is None else \
        np.ascontiguousarray(labels, np.int64)
    keys = np.empty(len(offsets), np.uint64)
    name_keys(table.names, offsets, limit, keys)
    _, first, group = np.unique(keys, return_index=True, return_inverse=True)
    if not same_names(table.names, offsets, first[group], limit).all():
        found: dict[bytes, int] = {}  # a 64-bit hash collision (crafted names): group by the bytes themselves
        firsts = []
        for i, off in enumerate(offsets.tolist()):
            key = b".".join(x.lower() for x in name_labels(table, off, int(limit[i]))) if off >= 0 else b"\0"
            if key not in found:
                found[key] = len(found)
                firsts.append(i)
            group[i] = found[key]
        first = np.array(firsts, np.int64)
    return group.astype(np.int32), first.astype(np.int32)


@njit(cache=True, nogil=True)
def _chains(messages, answers, names, name_key, target_key, out_answer, out_name):
    """Per A/AAAA answer of a response: its owner and every name whose CNAME leads to it, transitively (at most
    MAX_CHAIN); written when out_* have room, counted always."""
    count = 0
    chain, keys = np.empty(MAX_CHAIN, np.int64), np.empty(MAX_CHAIN, np.uint64)
    for m in range(messages.shape[0]):
        a0 = np.int64(messages[m].answer_first)
        a1 = a0 + messages[m].answer_count
        for a in range(a0, a1 if messages[m].is_response else a0):
            rtype, rdlength = answers[a].rtype, answers[a].rdlength
            if not (rtype == A and rdlength == 4 or rtype == AAAA and rdlength == 16):
                continue
            chain[0], keys[0], n, i = answers[a].name, name_key[a], 1, 0
            while i < n:  # breadth first, back from the address's owner towards the name that was asked for
                for c in range(a0, a1):
                    t = answers[c].target
                    if answers[c].rtype != CNAME or t < 0 or names[t] == 0 or target_key[c] != keys[i] or \
                            not same_name(names, t, chain[i], MAX_LABELS + 1):
                        continue
                    owner, known = answers[c].name, False
                    for j in range(n):
                        known = known or keys[j] == name_key[c] and same_name(names, chain[j], owner, MAX_LABELS + 1)
                    if not known and n < MAX_CHAIN:
                        chain[n], keys[n] = owner, name_key[c]
                        n += 1
                i += 1
            if count + n <= out_answer.shape[0]:
                out_answer[count:count + n] = a
                out_name[count:count + n] = chain[:n]
            count += n
    return count


def bindings(table: DnsTable) -> tuple[np.ndarray, np.ndarray]:
    """What DNS answers bind (detect/dns_binding.py): for every A/AAAA answer of a response, with an address of
    the type's size, one row per name leading to it: its owner name and every alias whose CNAME chain in the same
    message ends there (at most MAX_CHAIN). Returns (answer row, name offset), int32 each, owner first."""
    ans = table.answers
    full = np.full(len(ans), MAX_LABELS + 1, np.int64)
    name_key, target_key = np.empty(len(ans), np.uint64), np.empty(len(ans), np.uint64)
    name_keys(table.names, ans["name"].astype(np.int64), full, name_key)
    name_keys(table.names, ans["target"].astype(np.int64), full, target_key)
    args = (table.messages, ans, table.names, name_key, target_key)
    n = _chains(*args, np.empty(0, np.int32), np.empty(0, np.int32))
    out_answer, out_name = np.empty(n, np.int32), np.empty(n, np.int32)
    _chains(*args, out_answer, out_name)
    return out_answer, out_name


@njit(cache=True, nogil=True)
def _subdomain_keys(names, qname, domain, out):
    """FNV-1a of the labels from each question name's start up to its registered domain, ASCII case folded and
    joined by '.', structural labels (starting with '_': SRV, DKIM, DMARC) left out; 0 for names never judged."""
    size = names.shape[0]
    for i in range(qname.shape[0]):
        if domain[i] < 0 or qname[i] < 0:
            out[i] = 0
            continue
        h, pos, first = FNV_OFFSET, np.int64(qname[i]), True
        while pos < domain[i] and pos < size and names[pos] != 0:
            k = np.int64(names[pos])
            if pos + 1 < size and names[pos + 1] != 95:  # "_"
                if not first:
                    h = (h ^ np.uint64(46)) * FNV_PRIME
                first = False
                for j in range(pos + 1, min(pos + 1 + k, size)):
                    b = names[j]
                    h = (h ^ np.uint64(b + 32 if 65 <= b <= 90 else b)) * FNV_PRIME
            pos += k + 1
        out[i] = h


def subdomain_keys(table: DnsTable) -> np.ndarray:
    """A 64-bit key per message of the text below its question's registered domain (what makes two queries ask
    for the same subdomain, case aside); 0 where the name is never judged."""
    out = np.zeros(len(table.messages), np.uint64)
    if len(out):
        _subdomain_keys(table.names, table.messages["qname"].astype(np.int64),
                        table.messages["domain"].astype(np.int64), out)
    return out


__all__ = ["DnsTable", "KeptArrays", "bindings", "decode_dns", "domain_text", "name_labels", "name_text",
           "subdomain_keys", "unique_names"]
