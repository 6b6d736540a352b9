"""Beaconing and long connections (detection-science 4): an implant that calls home on a timer looks the same
whatever its protocol, and a tunnel or C2 channel is often one connection held open for hours.

Three views, each with fixed-size state (detection-science 4.3, the streaming form of RITA's analyses):

* connection starts per (sandbox, destination address, port, protocol) across flows: a bounded pair table holds a
  log histogram and Welford mean/M2 of the intervals between starts and of the bytes the sandbox sent per
  connection, the count and the first and last start; scored as RITA v5 does (detect/rhythm.py beacon_score),
  coverage being (last - first start) / the capture time seen.
* bursts inside one long flow, from the flow kernel's burst state (flows/conversation.py update_bursts), merged
  over the records an active timeout cut a connection into: C2 polling or a reverse shell's keepalive every 30 s
  inside one TLS connection.
* long connections: RITA's buckets (3600 s base, 14400, 28800, 43200 s) over first_seen -> last_seen, records of
  one connection merged. A live snapshot judges the open record as it is.

Periodic by design, and not judged: DNS (tcp/udp 53: lookups repeat with the TTL; DNS tunnels are the dns_tunnel
detector's), NTP (udp 123 with NTP-sized packets, RFC 5905: clients poll every 64-1024 s), DHCP, mDNS, SSDP,
NetBIOS and ICMP (ping; ICMP tunnels are the icmp_tunnel detector's). Keepalive-sized bursts (MQTT PINGREQ,
WebSocket and HTTP/2 pings, SSH ServerAliveInterval) are periodic too: bursts inside a flow that average under
`keepalive_bytes` are reported at low severity only, and only from `min_flow_span_s` (10 min, the first Zeek
long-connections notice) on. Connection starts are judged only over a span of at least `min_span_s` (the same
10 min): a script's loop that fetches every few seconds for a minute is no rhythm. A destination the rules allow by
address (an allow CIDR or class) or by a name the sandbox's DNS answers bound to it is not a finding: its flow
records get a `rhythm` object instead (a monitoring agent's health check, a server-sent-events stream), which
keeps what RITA users asked to see (rita-legacy issue 713) without an alarm.
"""
from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

import numpy as np

from egressguard.detect.base import BatchResult, DetectorContext, LiveMode, allow_match
from egressguard.detect.rhythm import (BEACON_BUCKETS, LONG_BUCKETS, Rhythm, add_to_histograms, beacon_score,
                                       bin_of, checkin_intervals, measure_rhythm, merge_welford,
                                       merge_welford_groups, rita_bucket, rita_severity)
from egressguard.flows import burst_bytes
from egressguard.flows.conversation import BURST_INTERVAL_EDGES_MS
from egressguard.flows.view import FlowView
from egressguard.netaddr import address_text, endpoint
from egressguard.schema import FLOW_DTYPE, EndReason, Finding, FindingKind, FlowFlag, copy_record, proto_name

# (protocol, responder port) pairs that poll by design; NTP only with NTP-sized packets (see NTP_MAX_PAYLOAD)
EXEMPT_SERVICES = frozenset({(6, 53), (17, 53), (17, 67), (17, 68), (17, 137), (17, 138), (17, 1900), (17, 5353)})
NTP_PORT = 123
NTP_MAX_PAYLOAD = 68  # RFC 5905 7.3: 48-byte header + 4-byte key id + 16-byte MD5 digest
EXEMPT_PROTOS = (1, 58)  # ICMP, ICMPv6
PAIR_BINS = 48
# intervals between connection starts: bin k >= 1 from 2^((k - 6) / 2) s (0.18 s ... 16.9 days), 2^(1/2) spacing
PAIR_GAP_EDGES_S = 2.0 ** ((np.arange(1, PAIR_BINS) - 6) / 2)
# bytes per connection: bin k >= 1 from 2^(k / 2) B (1.4 B ... 11.9 MB)
PAIR_SIZE_EDGES_B = 2.0 ** (np.arange(1, PAIR_BINS) / 2)
FLOW_GAP_EDGES_S = BURST_INTERVAL_EDGES_MS / 1000.0


@dataclass(frozen=True)
class Params:
    """Thresholds (RITA's defaults where RITA has one) and table sizes."""

    min_connections: int = 4  # RITA unique_connection_threshold (check-ins), judged when the capture ends
    inspect_connections: int = 10  # judged before the end from this many on (an early verdict cannot be taken back)
    min_intervals: int = 3  # RITA: at least 3 non-zero intervals
    # ... over at least this span: Zeek's long-connections package notices first at 10 min (RITA itself looks at a
    # day and wants 6 hours of it for its duration score); shorter series are a script's loop, not a rhythm
    min_span_s: float = 600.0
    same_checkin_s: float = 1.0  # starts closer than this are one check-in (RITA's timestamps are whole seconds)
    report_beacon: float = 0.7  # RITA's "low" beacon threshold (its base, 50 %, lets Poisson traffic of one size in)
    # and the intervals themselves must be regular: their CV at most max_cv (the mining detector's M5 rhythm rule),
    # at most max_cv_few below few_intervals intervals (3 exponential intervals reach CV <= 0.25 5 % of the time,
    # 6 only 0.2 %; a beacon with +-30 % uniform jitter stays under it 90 % of the time even with 3)
    max_cv: float = 0.5
    max_cv_few: float = 0.25
    few_intervals: int = 12
    min_bursts: int = 10  # bursts inside one flow (the mining detector's M5 rule uses 10 as well)
    min_flow_span_s: float = 600.0  # periodic bursts are judged in flows at least this long (Zeek: 10 min notice)
    keepalive_bytes: float = 200.0  # bursts averaging less than this are keepalive-sized: reported low
    long_connection_s: float = 3600.0  # RITA's long-connection base
    max_pairs: int = 32768  # (sandbox, destination, port, protocol) series, ~750 B each (24 MB); least recent go
    max_connections: int = 16384  # connections cut by the active timeout, waiting for their next record


class _Pairs:
    """Fixed-size table of connection-start series, vectorised over a batch (numpy; slots found by sorted keys)."""

    def __init__(self, size: int):
        self.size = size
        self.keys = np.zeros(0, np.uint64)  # sorted pair hashes
        self.slot_of = np.zeros(0, np.int64)  # slot of each sorted key
        self.free = list(range(size - 1, -1, -1))
        self.count = np.zeros(size, np.int64)  # connections
        self.checkins = np.zeros(size, np.int64)
        self.first_ns = np.zeros(size, np.int64)
        self.last_ns = np.zeros(size, np.int64)  # latest check-in start
        self.gap = np.zeros((size, 3))  # Welford n, mean, M2 of intervals (s)
        self.sent = np.zeros((size, 3))  # Welford n, mean, M2 of bytes sent per connection
        self.gap_hist = np.zeros((size, PAIR_BINS), np.uint32)
        self.sent_hist = np.zeros((size, PAIR_BINS), np.uint32)
        self.latest = np.zeros(size, FLOW_DTYPE)  # the pair's latest connection, for the finding
        self.reported = np.zeros(size, np.int8)  # severity reported so far, 0 none
        self.dirty = np.zeros(size, bool)  # changed since last judged
        self.evicted = 0

    def slots(self, keys: np.ndarray) -> np.ndarray:
        """Slot of every key (sorted unique keys in), new slots for new keys; when the table is full, the least
        recently started eighth of it (at least what is needed) is evicted at once (amortises the scan)."""
        at = np.searchsorted(self.keys, keys)
        found = at < len(self.keys)
        found[found] = self.keys[at[found]] == keys[found]
        out = np.empty(len(keys), np.int64)
        out[found] = self.slot_of[at[found]]
        new = np.flatnonzero(~found)
        if len(new) > len(self.free):
            self._evict(max(len(new) - len(self.free), self.size // 8), keep=out[found])
        if not len(new):
            return out
        fresh = np.array(self.free[len(self.free) - len(new):][::-1], np.int64)
        del self.free[len(self.free) - len(new):]
        out[new] = fresh
        self._clear(fresh)
        pos = np.searchsorted(self.keys, keys[new])
        self.keys, self.slot_of = np.insert(self.keys, pos, keys[new]), np.insert(self.slot_of, pos, fresh)
        return out

    def _evict(self, n: int, keep: np.ndarray) -> None:
        age = np.full(self.size, np.iinfo(np.int64).max)
        age[self.slot_of] = self.last_ns[self.slot_of]
        age[keep] = np.iinfo(np.int64).max  # pairs of the batch being added stay
        n = min(n, len(self.slot_of) - len(keep))
        if n <= 0:
            return
        gone = np.argpartition(age, n - 1)[:n]
        self.evicted += n
        dropped = np.zeros(self.size, bool)
        dropped[gone] = True
        stay = ~dropped[self.slot_of]
        self.keys, self.slot_of = self.keys[stay], self.slot_of[stay]
        self.free.extend(gone.tolist())

    def _clear(self, s: np.ndarray) -> None:
        for a in (self.count, self.checkins, self.first_ns, self.last_ns, self.gap, self.sent, self.gap_hist,
                  self.sent_hist, self.reported, self.dirty):
            a[s] = 0


def _hash_pairs(recs: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """A 64-bit hash of (sandbox, destination, port, protocol) of records recs[idx] (splitmix64 rounds)."""
    with np.errstate(over="ignore"):
        h = recs["proto"][idx].astype(np.uint64) << np.uint64(16) | recs["resp_port"][idx].astype(np.uint64)
        for name in ("orig_hi", "orig_lo", "resp_hi", "resp_lo"):
            h = (h ^ recs[name][idx]) * np.uint64(0x9E3779B97F4A7C15)
            h ^= h >> np.uint64(31)
            h *= np.uint64(0xBF58476D1CE4E5B9)
            h ^= h >> np.uint64(29)
    return h


class BeaconDetector:
    """Reports `beacon` (regular connection starts, or regular bursts inside one flow) and `long_connection`; reads
    the rules (who is a sandbox, what is allowed) and the DNS binding (names that make a destination allowed)."""

    name = "beacon"
    kinds = (FindingKind.BEACON, FindingKind.LONG_CONNECTION)
    live = LiveMode.OPEN_FLOWS  # snapshots of open flows: long connections are reported while open

    def __init__(self, ctx: DetectorContext, params: Params = Params()):
        self.rules = ctx.rules
        self.binding = ctx.binding
        self.params = params
        self._capture = ""
        self._reset()

    def _reset(self) -> None:
        self.pairs = _Pairs(self.params.max_pairs)
        # connections cut by the active timeout: 5-tuple -> merged state (first_seen, bursts, reported severities)
        self._open: OrderedDict[tuple, dict] = OrderedDict()
        self.open_evicted = 0
        self._span = [0, 0]  # capture time seen: earliest first_seen, latest last_seen (ns)
        self._due: list[int] = []  # pair slots with enough check-ins to be judged at the end of this batch
        self._row_of: dict[int, int] = {}  # pair slot -> its latest row in the batch being inspected

    # ---- Detector protocol
    def start(self, capture: str) -> None:
        """A new capture starts with a clean slate (live mode keeps one capture)."""
        self._capture = capture
        self._reset()

    def inspect(self, view: FlowView) -> BatchResult:
        result = BatchResult()
        recs = view.records
        if not len(recs):
            return result
        rows = self._judged_rows(recs)
        self._row_of = {}
        if not len(rows):
            return result
        first, last = int(recs["first_seen_ns"][rows].min()), int(recs["last_seen_ns"][rows].max())
        self._span = [min(self._span[0], first) if self._span[0] else first, max(self._span[1], last)]
        self._update_pairs(recs, rows)
        self._judge_flows(recs, rows, result)
        self._judge_pairs_due(result)
        return result

    def finish(self) -> BatchResult:
        """Report every pair series whose evidence now suffices (or got worse since it was reported); live mode
        calls this every few seconds, so only series that changed since they were last judged are looked at."""
        result = BatchResult()
        if self.pairs.keys.size:
            slots = self.pairs.slot_of
            self._judge_pairs(slots[self.pairs.dirty[slots]], result)
        return result

    # ---- which flows
    def _judged_rows(self, recs: np.ndarray) -> np.ndarray:
        """Outbound flows (the policy's definition) of services that do not poll by design."""
        outbound = self.rules.current.outbound(recs)
        if not outbound.any():
            return np.zeros(0, np.int64)
        proto, port = recs["proto"].astype(np.int64), recs["resp_port"].astype(np.int64)
        exempt = np.isin(proto, EXEMPT_PROTOS) | np.isin(proto * 65536 + port,
                                                         [p * 65536 + q for p, q in EXEMPT_SERVICES])
        exempt |= (proto == 17) & (port == NTP_PORT) & (np.maximum(recs["orig_payload_max"],
                                                                   recs["resp_payload_max"]) <= NTP_MAX_PAYLOAD)
        return np.flatnonzero(outbound & ~exempt)

    # ---- connection starts per pair
    def _update_pairs(self, recs: np.ndarray, rows: np.ndarray) -> None:
        """Add the connection starts of finished flows recs[rows] to their pairs' series (a continued record is no
        new connection; a snapshot's open flows are not finished). Columns are read by index: no record copies."""
        keep = ((recs["flow_flags"][rows] & int(FlowFlag.CONTINUED)) == 0) & \
            (recs["end_reason"][rows] != int(EndReason.ACTIVE))
        idx = rows[keep]
        if not len(idx):
            return
        p = self.pairs
        uniq, inverse = np.unique(_hash_pairs(recs, idx), return_inverse=True)
        uslots = p.slots(uniq)
        slot = uslots[inverse]
        per_pair = np.bincount(inverse, minlength=len(uniq))
        t = recs["first_seen_ns"][idx].astype(np.int64)
        order = np.lexsort((t, slot))
        slot, t = slot[order], t[order]
        unit = max(int(self.params.same_checkin_s * 1e9), 1)
        new_pair, ci, gap_at, gap_s = checkin_intervals(slot, t, p.last_ns[slot], p.count[slot] == 0, unit)
        gslot = slot[gap_at]
        sent = recs["orig_payload_bytes"][idx[order]].astype(np.float64)
        p.count[uslots] += per_pair
        cs, cc = np.unique(slot[ci], return_counts=True)
        p.checkins[cs] += cc
        p.first_ns[slot[new_pair]] = t[new_pair]
        merge_welford_groups(p.gap, gslot, gap_s)
        merge_welford_groups(p.sent, slot, sent)
        add_to_histograms(p.gap_hist, gslot, bin_of(gap_s, PAIR_GAP_EDGES_S))
        add_to_histograms(p.sent_hist, slot, bin_of(sent, PAIR_SIZE_EDGES_B))
        if len(ci):  # rows are sorted by time within each pair: its last check-in row holds its latest start
            last_ci = ci[np.r_[slot[ci][1:] != slot[ci][:-1], True]]
            p.last_ns[slot[last_ci]] = np.maximum(p.last_ns[slot[last_ci]], t[last_ci])
        latest = np.flatnonzero(np.r_[slot[1:] != slot[:-1], True])
        touched = slot[latest]
        self._row_of = dict(zip(touched.tolist(), idx[order[latest]].tolist()))
        p.dirty[touched] = True
        repeat = p.checkins[touched] >= 2  # a pair seen once cannot be reported yet: no record copy for it
        p.latest[touched[repeat]] = recs[idx[order[latest[repeat]]]]
        ready = touched[p.checkins[touched] >= self.params.inspect_connections]
        self._due.extend(ready.tolist())

    def _judge_pairs(self, slots: np.ndarray, result: BatchResult) -> None:
        p, prm = self.pairs, self.params
        slots = slots[(p.checkins[slots] >= prm.min_connections) & (p.gap[slots, 0] >= prm.min_intervals)]
        p.dirty[slots] = False
        span_s = max((self._span[1] - self._span[0]) / 1e9, 1e-9)
        for s in slots.tolist():
            gaps = measure_rhythm(p.gap_hist[s], PAIR_GAP_EDGES_S, int(p.gap[s, 0]), p.gap[s, 1], p.gap[s, 2])
            sent = measure_rhythm(p.sent_hist[s], PAIR_SIZE_EDGES_B, int(p.sent[s, 0]), p.sent[s, 1], p.sent[s, 2])
            covered = (p.last_ns[s] - p.first_ns[s]) / 1e9
            if covered < prm.min_span_s:
                continue
            beacon, parts = beacon_score(gaps, sent, min(1.0, covered / span_s))
            if beacon < prm.report_beacon or gaps.median < prm.same_checkin_s or not self._regular(gaps):
                continue
            rec = _record(p.latest[s], p.first_ns[s])
            evidence = [
                f"{int(p.count[s])} connections from {_addr(rec, 'orig')} to {_dst(rec)} every "
                f"{_seconds(gaps.median)} (MAD {_seconds(gaps.mad)}, skew {gaps.skew:.2f}) over "
                f"{_duration(covered)}; {_size(sent.median)} sent each \u00b1{100 * sent.cv():.0f}%",
                _score_sentence(beacon, parts, f" of {_duration(span_s)} seen")]
            details = {"beacon": {"scope": "connections", "connections": int(p.count[s]), **_timing(gaps),
                                  "bytes_sent": round(sent.median, 1), "score": beacon,
                                  "parts": [round(x, 3) for x in parts]}}
            self._emit(FindingKind.BEACON, rita_bucket(beacon, BEACON_BUCKETS), rec, evidence, details, result,
                       lambda sev: _store(p.reported, s, sev), int(p.reported[s]), self._row_of.get(s))

    def _regular(self, gaps: Rhythm) -> bool:
        prm = self.params
        return gaps.cv() <= (prm.max_cv if gaps.n >= prm.few_intervals else prm.max_cv_few)

    # ---- bursts inside flows, and long connections
    def _judge_flows(self, recs: np.ndarray, rows: np.ndarray, result: BatchResult) -> None:
        """Bursts and duration of long flows recs[rows] (and of every record of a connection the active timeout
        cut)."""
        prm = self.params
        dur_s = (recs["last_seen_ns"][rows] - recs["first_seen_ns"][rows]) / 1e9
        cut = (recs["end_reason"][rows] == int(EndReason.ACTIVE_TIMEOUT)) | \
            ((recs["flow_flags"][rows] & int(FlowFlag.CONTINUED)) > 0)
        rows = rows[cut | (dur_s >= min(prm.min_flow_span_s, prm.long_connection_s))]
        if not len(rows):
            return
        sub = recs[rows]
        mean_b, sd_b = burst_bytes(sub)
        for i, row in enumerate(rows.tolist()):
            rec = sub[i]
            conn = self._connection(rec, float(mean_b[i]), float(sd_b[i]))
            self._judge_bursts(rec, conn, result, row)
            self._judge_long(rec, conn, result, row)

    def _judge_pairs_due(self, result: BatchResult) -> None:
        if self._due:
            self._judge_pairs(np.unique(np.array(self._due, np.int64)), result)
            self._due = []

    def _connection(self, rec: np.void, bytes_mean: float, bytes_sd: float) -> dict:
        """The connection `rec` belongs to, with the bursts of all its records so far merged (Chan's formulas)."""
        key = tuple(int(rec[n]) for n in ("orig_hi", "orig_lo", "orig_port", "resp_hi", "resp_lo", "resp_port",
                                          "proto"))
        conn = self._open.pop(key, None) if rec["flow_flags"] & int(FlowFlag.CONTINUED) else None
        if conn is None:
            # "gaps" and "bytes": Welford (n, mean, M2) of the intervals between bursts and of the bytes per burst
            conn = {"first_ns": int(rec["first_seen_ns"]), "gaps": (0, 0.0, 0.0), "bytes": (0, 0.0, 0.0),
                    "bursts": 0, "hist": np.zeros(len(FLOW_GAP_EDGES_S) + 1, np.int64), "reported": {}}
        n = int(rec["burst_count"])
        k = max(n - 1, 0)  # intervals in this record
        if k:
            conn["gaps"] = merge_welford(*conn["gaps"], k, float(rec["burst_interval_mean"]),
                                         float(rec["burst_interval_m2"]))
            conn["hist"] += rec["burst_interval_hist"]
        if n:
            conn["bytes"] = merge_welford(*conn["bytes"], n, bytes_mean, bytes_sd ** 2 * (n - 1))
        conn["bursts"] += n
        conn["last_ns"] = int(rec["last_seen_ns"])
        if rec["end_reason"] == int(EndReason.ACTIVE_TIMEOUT):
            self._open[key] = conn
            if len(self._open) > self.params.max_connections:
                self._open.popitem(last=False)
                self.open_evicted += 1
        return conn

    def _judge_bursts(self, rec: np.void, conn: dict, result: BatchResult, row: int | None = None) -> None:
        prm = self.params
        span_s = (conn["last_ns"] - conn["first_ns"]) / 1e9
        n_gaps, mean_gap, _ = conn["gaps"]
        if conn["bursts"] < prm.min_bursts or n_gaps < prm.min_intervals or span_s < prm.min_flow_span_s:
            return
        gaps = measure_rhythm(conn["hist"], FLOW_GAP_EDGES_S, *conn["gaps"])
        b = conn["bytes"]
        sizes = measure_rhythm(None, PAIR_SIZE_EDGES_B, int(b[0]), b[1], b[2])
        covered = min(1.0, n_gaps * mean_gap / span_s) if span_s > 0 else 0.0
        beacon, parts = beacon_score(gaps, sizes, covered)
        if beacon < prm.report_beacon or not self._regular(gaps):
            return
        score = rita_bucket(beacon, BEACON_BUCKETS)
        keepalive = sizes.mean < prm.keepalive_bytes
        out = _record(rec, conn["first_ns"])
        evidence = [
            f"{_addr(rec, 'orig')} holds one connection to {_dst(rec)} open for {_duration(span_s)} with "
            f"{conn['bursts']} bursts of traffic every {_seconds(gaps.median)} (MAD {_seconds(gaps.mad)}, skew "
            f"{gaps.skew:.2f}); {_size(sizes.mean)} per burst \u00b1{100 * sizes.cv():.0f}%",
            _score_sentence(beacon, parts)]
        if keepalive:
            score = min(score, 0.2)
            evidence.append(f"the bursts are keepalive-sized (under {prm.keepalive_bytes:.0f} B on average), as "
                            "MQTT, WebSocket, HTTP/2 and SSH keepalives are")
        details = {"beacon": {"scope": "bursts", "bursts": conn["bursts"], **_timing(gaps),
                              "bytes_per_burst": round(sizes.mean, 1), "keepalive_sized": keepalive,
                              "score": beacon, "parts": [round(x, 3) for x in parts]}}
        self._emit(FindingKind.BEACON, score, out, evidence, details, result,
                   lambda sev: conn["reported"].__setitem__("beacon", sev), conn["reported"].get("beacon", 0), row)

    def _judge_long(self, rec: np.void, conn: dict, result: BatchResult, row: int | None = None) -> None:
        span_s = (conn["last_ns"] - conn["first_ns"]) / 1e9
        if span_s < self.params.long_connection_s:
            return
        score = rita_bucket(min(span_s, LONG_BUCKETS[-1][0]), LONG_BUCKETS)
        pieces = "" if conn["first_ns"] == int(rec["first_seen_ns"]) else \
            " (several records: the active timeout cut it)"
        still = "still open" if rec["end_reason"] == int(EndReason.ACTIVE) else "open"
        evidence = [f"{_addr(rec, 'orig')} held a connection to {_dst(rec)} {still} for {_duration(span_s)}"
                    f"{pieces}; {_size(rec['orig_payload_bytes'])} sent, {_size(rec['resp_payload_bytes'])} "
                    f"received in its latest record",
                    "RITA rates connections from 1 h (low) over 4 h (medium) and 8 h (high); Zeek's "
                    "long-connections package notices at 1 h and again at 12 h"]
        details = {"long_connection": {"duration_s": round(span_s, 3), "score": round(score, 3)}}
        self._emit(FindingKind.LONG_CONNECTION, score, _record(rec, conn["first_ns"]), evidence, details, result,
                   lambda sev: conn["reported"].__setitem__("long", sev), conn["reported"].get("long", 0), row)

    # ---- reporting
    def _emit(self, kind: FindingKind, score: float, rec: np.void, evidence: list[str], details: dict,
              result: BatchResult, remember, reported: int, row: int | None = None) -> None:
        """Append a finding unless one at this severity or worse was already reported for the same subject; for a
        destination the rules allow, annotate the flow record (`row` of the batch) with the rhythm instead."""
        severity = rita_severity(score)
        allowed = self._allowed(rec)
        if allowed:
            if row is not None:
                (key, value), = details.items()
                result.annotate(row, rhythm={"kind": str(kind), "allowed_by": allowed, "evidence": evidence[0],
                                             **value})
            return
        if int(severity) <= reported:
            return
        remember(int(severity))
        result.findings.append(Finding(kind=kind, severity=severity, score=round(float(score), 3),
                                       evidence=tuple(evidence), flow=rec, capture=self._capture, details=details))

    def _allowed(self, rec: np.void) -> str:
        """Which allow rule covers the destination (by address or class, or a name DNS bound to it), or ''."""
        match = allow_match(self.rules.current, self.binding, rec)
        if match is None:
            return ""
        label = match.entry.label() if match.entry is not None else "an allow entry"
        return f"{label} via {', '.join(match.names[:3])}" if match.names else label


def _score_sentence(beacon: float, parts: tuple, coverage_of: str = "") -> str:
    return (f"RITA-style beacon score {beacon:.2f}: timing {parts[0]:.2f}, size {parts[1]:.2f}, coverage "
            f"{parts[2]:.2f}{coverage_of}, evenness {parts[3]:.2f}")


def _timing(gaps: Rhythm) -> dict:
    return {"interval_s": round(gaps.median, 3), "mad_s": round(gaps.mad, 3), "skew": round(gaps.skew, 3)}


def _store(arr: np.ndarray, i: int, value: int) -> None:
    arr[i] = value


def _record(rec: np.void, first_ns: int) -> np.void:
    out = copy_record(rec)
    out["first_seen_ns"] = first_ns
    return out


def _addr(rec: np.void, side: str) -> str:
    return address_text(endpoint(rec, side))


def _dst(rec: np.void) -> str:
    addr = _addr(rec, "resp")
    host = f"[{addr}]" if ":" in addr else addr
    return f"{host}:{int(rec['resp_port'])}/{proto_name(int(rec['proto']))}"


def _seconds(s: float) -> str:
    return f"{s:.1f} s" if s < 600 else f"{s / 60:.1f} min"


def _duration(s: float) -> str:
    if s < 120:
        return f"{s:.0f} s"
    if s < 7200:
        return f"{s / 60:.0f} min"
    return f"{s / 3600:.1f} h"


def _size(b: float) -> str:
    b = float(b)
    return f"{b:.0f} B" if b < 1000 else f"{b / 1000:.1f} kB" if b < 1e6 else f"{b / 1e6:.1f} MB"


__all__ = ["BeaconDetector", "Params"]
