"""ICMP tunnels (ptunnel/ptunnel-ng, icmptunnel, hans, icmpsh): data carried in echo requests and replies.

What ping sends is known: iputils ping (Linux) a 16-byte timeval then the bytes 0x10, 0x11, ... (ping_common.c
fills `i` at offset i), 56 B by default; BSD/macOS ping an 8-byte timeval then the same counting pattern; `ping -p`
a repeated pattern of up to 16 bytes; Windows "abcdefghijklmnopqrstuvwabcdefghi" (32 B); traceroute -I counting
bytes from 0x40. And a real echo reply mirrors its request (RFC 792: "the data received in the echo message must be
returned in the echo reply message"; RFC 4443 4.2 for ICMPv6). A tunnel breaks these: its payloads follow no fill
pattern and change from packet to packet, sizes vary, replies carry other data than their requests (the tunnel
server answers itself, with the kernel's echo replies switched off), replies may outnumber requests, and some
tunnels give themselves away by their framing: ptunnel's 28-byte header (ptunnel.h `ping_tunnel_pkt_t`: a magic,
0xD5200880 in ptunnel and 0xDEADC0DE by default in ptunnel-ng, then a state and a data length that fits the payload),
or a whole IPv4/IPv6 packet as the payload (icmptunnel, hans: IP over ICMP).

Each echo flow (both directions, request and reply types paired as Community ID pairs them) is judged when it ends,
from its counters (packets, sizes) and its first kept payloads; one finding per (requester, peer) and capture,
repeated only when the severity rises.
"""
from __future__ import annotations

import struct
from collections import OrderedDict
from dataclasses import dataclass

import numpy as np

from egressguard.detect.base import BatchResult, DetectorContext, LiveMode
from egressguard.flows.view import FlowView
from egressguard.netaddr import address_text, endpoint
from egressguard.schema import AppTag, Finding, FindingKind, Severity, copy_record

ECHO_REQUEST = {1: 8, 58: 128}  # ICMP type 8 (RFC 792), ICMPv6 type 128 (RFC 4443)
ECHO_REPLY = {1: 0, 58: 129}
PTUNNEL_MAGICS = (0xD5200880, 0xDEADC0DE)  # ptunnel.h kPing_magic; ptunnel-ng's default (`-m` changes it)
PTUNNEL_HEADER = 28  # ptunnel's ping_tunnel_pkt_t: magic, dst_ip, dst_port, state, ack, data_len, seq_no, id_no
PTUNNEL_STATES = 4  # kProxy_start .. kProto_authenticate; the top two bits flag user (1 << 30) and proxy (1 << 31)
TIMESTAMP_BYTES = 16  # iputils puts a struct timeval (16 B on 64-bit) first; BSD an 8-byte one
MAX_PERIOD = 32  # `ping -p` repeats up to 16 bytes; Windows repeats a 23-letter alphabet
MAX_PAIRS = 1 << 16  # (requester, peer) pairs remembered per capture for de-duplication


@dataclass(frozen=True)
class Params:
    """Thresholds (ping's own behaviour is the reference: one size, mirrored replies, a fill pattern)."""

    mismatched_replies: int = 2  # kept replies matching no kept request (one may be the reply to an unkept request)
    size_gap: float = 8.0  # B between mean request and mean reply payload (a mirrored reply has the same size)
    min_pkts_for_gap: int = 3  # packets each way before the size gap counts
    changed_share: float = 0.25  # share of differing bytes past the timestamp between kept requests
    volume_bytes: int = 65536  # payload bytes in a flow that count as volume with changing, unpatterned content


@dataclass(frozen=True)
class EchoFacts:
    """What one echo flow showed (requests = the side that sent echo requests)."""

    requests: int
    replies: int
    request_bytes: int
    reply_bytes: int
    size_min: int
    size_max: int
    mean_gap: float  # |mean request payload - mean reply payload|, 0 when either side is short
    magic: str  # "" or how ptunnel's framing showed ("magic 0xDEADC0DE", "header")
    inner_ip: str  # "" or a description of the inner packet, e.g. "IPv4 TCP 10.0.0.1 -> 10.0.0.2"
    mismatched: int  # kept replies that mirror no kept request
    replies_read: int
    unpatterned: int  # kept requests whose data past the timestamp follows no ping fill pattern
    requests_read: int
    changed: float  # share of differing bytes past the timestamp between consecutive kept requests


class IcmpTunnelDetector:
    """Reports `icmp_tunnel` findings on echo flows whose payloads are not what ping sends."""

    name = "icmp_tunnel"
    kinds = (FindingKind.ICMP_TUNNEL,)
    live = LiveMode.OPEN_WINDOW  # a fresh instance judges every open echo flow each window period

    @staticmethod
    def open_window(cols: dict[str, np.ndarray]) -> np.ndarray:
        """Which open flows a round shows it (columns proto of FlowTable.live_columns): ICMP and ICMPv6."""
        return np.isin(cols["proto"], (1, 58))

    def __init__(self, ctx: DetectorContext | None = None, params: Params = Params()):
        self.params = params
        self._reported: OrderedDict[tuple[int, int], int] = OrderedDict()
        self._capture = ""

    def start(self, capture: str) -> None:
        self._capture = capture
        self._reported.clear()

    def finish(self) -> BatchResult:
        return BatchResult()

    def inspect(self, view: FlowView) -> BatchResult:
        recs = view.records
        result = BatchResult()
        if not len(recs):
            return result
        payload = (recs["orig_payload_bytes"] + recs["resp_payload_bytes"]) > 0
        for row in _candidates(view, np.flatnonzero(view.tagged(AppTag.ECHO) & payload)).tolist():
            facts = echo_facts(view, row)
            severity, reasons = self._verdict(facts)
            if severity is None:
                continue
            rec = recs[row]
            req_side = "orig" if int(rec["orig_port"]) == ECHO_REQUEST[int(rec["proto"])] else "resp"
            rep_side = "resp" if req_side == "orig" else "orig"
            pair = (endpoint(rec, req_side), endpoint(rec, rep_side))
            if self._reported.get(pair, 0) >= int(severity):
                continue
            self._reported[pair] = int(severity)
            self._reported.move_to_end(pair)
            while len(self._reported) > MAX_PAIRS:
                self._reported.popitem(last=False)
            result.findings.append(_finding(rec, facts, severity, reasons, pair, self._capture))
        return result

    def _verdict(self, f: EchoFacts) -> tuple[Severity | None, list[str]]:
        p = self.params
        strong, weak = [], []
        if f.magic:
            strong.append(f"payloads carry ptunnel's packet header ({f.magic})")
        if f.inner_ip:
            strong.append(f"payloads are whole IP packets (IP over ICMP): {f.inner_ip}")
        if f.mismatched >= min(p.mismatched_replies, max(1, f.replies_read)) and f.replies_read:
            strong.append(f"{f.mismatched} of {f.replies_read} replies read mirror no request (a real echo reply "
                          f"returns the request's data)")
        elif f.mean_gap > p.size_gap:
            strong.append(f"replies average {f.mean_gap:.0f} B more or less than requests (a real reply has the "
                          f"request's size)")
        if f.replies > f.requests * 1.1 + 2:
            strong.append(f"{f.replies} replies to {f.requests} requests (ping never gets more answers than it asks)")
        changing = f.unpatterned >= 2 and f.changed >= p.changed_share
        if changing:
            weak.append(f"request data changes between packets ({f.changed:.0%} of the bytes past a 16-byte timestamp "
                        f"differ) and follows no ping fill pattern ({f.unpatterned} of {f.requests_read} read)")
        if f.size_min != f.size_max and changing:
            weak.append(f"request sizes vary from {f.size_min} to {f.size_max} B (ping sends one size)")
        if changing and f.request_bytes + f.reply_bytes >= p.volume_bytes:
            weak.append(f"{f.request_bytes + f.reply_bytes} B of echo payload")
        if strong:
            return Severity.HIGH, strong + weak
        if changing and len(weak) >= 2:
            return Severity.MEDIUM, weak
        return None, []


def _candidates(view: FlowView, rows: np.ndarray) -> np.ndarray:
    """The echo rows worth reading in Python. A flow with one payload packet can only show a ptunnel header or an
    inner IP packet, both visible in its first bytes: those are tested here for whole batches at once, so a flood of
    one-packet pings (spoofed, scans) costs numpy work, not a Python call per flow."""
    recs = view.records[rows]
    single = (recs["orig_payload_pkts"].astype(np.int64) + recs["resp_payload_pkts"]) <= 1
    if not single.any():
        return rows
    one = rows[single]
    prefix = view.prefix(PTUNNEL_HEADER)[one]
    first = np.where((view.records["orig_payload_pkts"][one] > 0)[:, None], prefix[:, 0], prefix[:, 1])
    size = np.maximum(view.records["orig_payload_max"][one], view.records["resp_payload_max"][one])
    words = first.astype(np.uint32)
    version, ihl = words[:, 0] >> 4, (words[:, 0] & 0xF) * 4
    length = words[:, 2] << 8 | words[:, 3]  # IPv4 total length; for IPv6, bytes 4-5 hold the payload length
    ip_like = (size >= 20) & (version == 4) & (ihl >= 20) & (ihl <= length) & (length <= size)  # as _inner_ip
    ip_like |= (size >= 40) & (version == 6) & ((words[:, 4] << 8 | words[:, 5]) + 40 == size)
    state = (words[:, 12] << 24 | words[:, 13] << 16 | words[:, 14] << 8 | words[:, 15]) & 0x3FFFFFFF
    magic = words[:, 0] << 24 | words[:, 1] << 16 | words[:, 2] << 8 | words[:, 3]
    ptunnel_like = (size >= PTUNNEL_HEADER) & (np.isin(magic, PTUNNEL_MAGICS) | (state <= PTUNNEL_STATES))
    return np.sort(np.concatenate([rows[~single], one[ip_like | ptunnel_like]]))


def echo_facts(view: FlowView, row: int) -> EchoFacts:
    """Counters and payload tests of one echo flow (a row of `view` that carries ICMP/ICMPv6 echo)."""
    rec = view.records[row]
    req = "orig" if int(rec["orig_port"]) == ECHO_REQUEST[int(rec["proto"])] else "resp"
    rep = "resp" if req == "orig" else "orig"
    req_dir, rep_dir = (0, 1) if req == "orig" else (1, 0)
    requests, replies = view.kept_payload(row, req_dir), view.kept_payload(row, rep_dir)
    n_req, n_rep = int(rec[req + "_payload_pkts"]), int(rec[rep + "_payload_pkts"])
    gap = 0.0
    # only when every request was answered: an unanswered one (lost, or still in flight when live mode looks at an
    # open flow) shifts one side's mean by up to its size without saying anything about the payloads
    if min(n_req, n_rep) >= Params.min_pkts_for_gap and n_req == n_rep:
        gap = abs(float(rec[req + "_payload_mean"]) - float(rec[rep + "_payload_mean"]))
    pieces = requests + replies
    wire = [int(n) for d in (req_dir, rep_dir) for n in view.kept_lengths(row, d)]
    inner = next((d for d in (_inner_ip(p, n) for p, n in zip(pieces, wire)) if d), "")
    mismatched = sum(1 for r in replies if not any(_same(r, q) for q in requests)) if requests else 0
    unpatterned = sum(1 for q in requests if len(q) > TIMESTAMP_BYTES + 8 and not _patterned(q[TIMESTAMP_BYTES:]))
    changed = [_changed(a[TIMESTAMP_BYTES:], b[TIMESTAMP_BYTES:]) for a, b in zip(requests, requests[1:])]
    return EchoFacts(
        requests=int(rec[req + "_pkts"]), replies=int(rec[rep + "_pkts"]),
        request_bytes=int(rec[req + "_payload_bytes"]), reply_bytes=int(rec[rep + "_payload_bytes"]),
        size_min=int(rec[req + "_payload_min"]), size_max=int(rec[req + "_payload_max"]), mean_gap=gap,
        magic=next((m for m in (_ptunnel(p, n) for p, n in zip(pieces, wire)) if m), ""), inner_ip=inner,
        mismatched=mismatched,
        replies_read=len(replies), unpatterned=unpatterned, requests_read=len(requests),
        changed=max(changed, default=0.0))


def _ptunnel(data: bytes, wire_length: int) -> str:
    """How `data` shows ptunnel's header: its known magic, or a header whose state and data length fit; or ""."""
    if len(data) < PTUNNEL_HEADER:
        return ""
    magic, _ip, _port, state, _ack, length = struct.unpack_from("!6I", data)
    if magic in PTUNNEL_MAGICS:
        return f"magic 0x{magic:08X}"
    if state & 0x3FFFFFFF <= PTUNNEL_STATES and length + PTUNNEL_HEADER == wire_length and length > 0:
        return f"a header with state {state & 0x3FFFFFFF} and a data length that fits, magic 0x{magic:08X}"
    return ""


def _same(reply: bytes, request: bytes) -> bool:
    """The reply mirrors the request past the timestamp, as far as both were kept. Ping's data after its timestamp
    is the same in every request, so the reply to a request that was not kept (the first ones lost) still matches."""
    n = min(len(reply), len(request))
    skip = TIMESTAMP_BYTES if n > TIMESTAMP_BYTES else 0
    return reply[skip:n] == request[skip:n]


def _patterned(data: bytes) -> bool:
    """Ping's fill: constant, counting up by one (mod 256), or a repetition with a period of up to MAX_PERIOD."""
    if len(data) < 2:
        return True
    arr = np.frombuffer(data, np.uint8)
    if (np.diff(arr.astype(np.int16)) % 256 == 1).all():
        return True
    for period in range(1, min(MAX_PERIOD, len(arr) - 1) + 1):
        if (arr[period:] == arr[:-period]).all():
            return True
    return False


def _changed(a: bytes, b: bytes) -> float:
    n = min(len(a), len(b))
    if n == 0:
        return 0.0
    return float((np.frombuffer(a[:n], np.uint8) != np.frombuffer(b[:n], np.uint8)).mean())


def _inner_ip(data: bytes, wire_length: int) -> str:
    """A description of the IPv4/IPv6 packet `data` (kept bytes of a payload of `wire_length` bytes) starts with,
    judged by a valid IPv4 header checksum or an IPv6 payload length that fits, or ""."""
    names = {1: "ICMP", 6: "TCP", 17: "UDP", 58: "ICMPv6"}
    if len(data) >= 20 and data[0] >> 4 == 4 and data[0] & 0xF >= 5:
        ihl = (data[0] & 0xF) * 4
        total = struct.unpack_from("!H", data, 2)[0]
        if len(data) < ihl or not ihl <= total <= wire_length or _checksum(data[:ihl]) != 0:
            return ""
        src, dst = (".".join(str(b) for b in data[12 + k:16 + k]) for k in (0, 4))
        return f"IPv4 {names.get(data[9], f'protocol {data[9]}')} {src} -> {dst}"
    if len(data) >= 40 and data[0] >> 4 == 6 and struct.unpack_from("!H", data, 4)[0] + 40 == wire_length:
        return f"IPv6 {names.get(data[6], f'next header {data[6]}')}"
    return ""


def _checksum(header: bytes) -> int:
    """RFC 1071 one's-complement sum of a header including its checksum field: 0 when the checksum is right."""
    total = sum(struct.unpack(f"!{len(header) // 2}H", header[:len(header) // 2 * 2]))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return 0xFFFF - total


def _finding(rec: np.void, f: EchoFacts, severity: Severity, reasons: list[str], pair: tuple[int, int],
             capture: str) -> Finding:
    seconds = (int(rec["last_seen_ns"]) - int(rec["first_seen_ns"])) / 1e9
    requester, peer = (address_text(a) for a in pair)
    first = (f"{requester} sent {f.requests} echo requests to {peer} and got {f.replies} replies over {seconds:.0f} s "
             f"({f.size_min}-{f.size_max} B request payloads, {f.request_bytes + f.reply_bytes} B of payload in all)")
    score = min(1.0, 0.45 + 0.15 * len(reasons))
    details = {"icmp_tunnel": {
        "requester": requester, "peer": peer, "requests": f.requests, "replies": f.replies,
        "request_bytes": f.request_bytes, "reply_bytes": f.reply_bytes, "size_min": f.size_min,
        "size_max": f.size_max, "ptunnel": f.magic or None, "inner_ip": f.inner_ip or None,
        "mismatched_replies": f.mismatched, "replies_read": f.replies_read, "unpatterned_requests": f.unpatterned,
        "requests_read": f.requests_read, "changed_share": round(f.changed, 3), "reasons": reasons}}
    return Finding(FindingKind.ICMP_TUNNEL, severity, score, (first, *reasons), copy_record(rec), capture, details)


__all__ = ["EchoFacts", "IcmpTunnelDetector", "Params", "echo_facts"]
