"""DNS tunnels (iodine, dnscat2, dns2tcp, DNSExfiltrator, sods, ...): data carried in question names and answers.

State is kept per (sandbox, registered domain), fixed in size and bounded in number: query count, a capped set of
distinct subdomains, a label-length histogram, entropy and alphabet counts, query types, bytes in queries and
answers, the largest EDNS(0) buffer offered, NXDOMAIN answers, first and last query time, the resolvers used. Each
DNS transaction is usually its own UDP flow (a fresh source port per query), so one flow adds one query; a tunnel
that keeps one source port (iodine, dnscat) is one long flow of which only the first kept messages can be read: its
other queries are counted from the flow's packet counter and attributed to the domain of the messages read.

Works the same for queries to the sandbox's resolver and direct ones (any server on port 53, UDP or TCP). Names
under reverse zones, mDNS/DNS-SD and single-label names are never judged (dns_names.IGNORED_SUFFIXES).

A finding names the domain and the figures. It is emitted from `inspect` as soon as the evidence reaches `high`,
and from `finish` (end of a capture, or of a live reporting interval) for everything else that qualifies; a
(sandbox, domain) is reported again only when its severity rises.
"""
from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

import numpy as np

from egressguard.detect.base import BatchResult, DetectorContext, LiveMode
from egressguard.detect.dns_names import name_features, split_name
from egressguard.flows.view import FlowView
from egressguard.netaddr import address_text
from egressguard.payload.dns import TYPE_NAMES, DnsSummary, name_text, summarize_message, summarize_tcp_stream
from egressguard.schema import AppTag, Finding, FindingKind, Severity

DNS_PORT = 53  # 5353 (mDNS) and 5355 (LLMNR) are link-local name services, not egress
NXDOMAIN = 3  # RFC 1035 4.1.1 RCODE 3, "Name Error"
NULL, TXT, MX, CNAME, ANY = 10, 16, 15, 5, 255
# Query types tunnels use for their large or free-form answers (iodine: NULL, TXT, MX, CNAME, ...; dnscat2: TXT,
# MX, CNAME; dns2tcp, DNSExfiltrator: TXT; sods: CNAME/TXT polls). KEY (25) and ANY are rare in ordinary lookups.
ODD_QTYPES = frozenset({NULL, TXT, MX, CNAME, ANY, 25})
LENGTH_BINS = 64  # label-length histogram, 1-character bins; the last bin holds 63 (the RFC 1035 maximum)
MAX_EXAMPLE = 80  # characters of the example name quoted in evidence
MAX_DOMAIN_TEXT = 120


@dataclass(frozen=True)
class Params:
    """Thresholds and memory limits (the figures behind them are in the comments)."""

    max_domains: int = 8192  # (sandbox, domain) states; the least recently queried are dropped first, and counted
    max_subdomains: int = 1024  # distinct subdomains remembered per state (a bounded set; more are still counted)
    forget_after_s: float = 3600.0  # a state not queried for an hour of capture time is forgotten
    encoded_share: float = 0.3  # share of read names that look encoded (sods mixes encoded uploads and plain polls)
    unique_medium: int = 8  # distinct encoded subdomains for a medium finding (dnscat2's 12-query session setup)
    unique_high: int = 20  # ... for a high one, whatever their share
    odd_share: float = 0.5  # share of TXT/NULL/MX/CNAME/ANY queries that makes encoded names high at once
    null_queries: int = 2  # NULL queries (RFC 1035 "experimental", iodine's default) that are suspicious by themselves
    polling_unique: int = 30  # distinct subdomains polled with odd query types and no encoding (sods' CNAME polls)
    one_shot_length: int = 48  # one encoded subdomain this long is reported even alone (data exfiltration in one query)


class _DomainState:
    """Fixed-size counters of one (sandbox, domain); `subdomains` is a bounded set."""

    __slots__ = ("sandbox", "domain", "no_tld", "queries", "read", "subdomains", "subdomains_full", "lengths",
                 "entropy_sum", "encoded", "encoded_unique", "invalid", "charsets", "qtypes", "query_bytes",
                 "answer_bytes", "answer_max", "edns_max", "responses", "nxdomain", "first_ns", "last_ns", "flows",
                 "resolvers", "flow", "example", "example_len", "reported")

    def __init__(self, sandbox: int, domain: str, no_tld: bool, flow: np.void):
        self.sandbox, self.domain, self.no_tld, self.flow = sandbox, domain, no_tld, flow
        self.queries = self.read = self.encoded = self.encoded_unique = self.invalid = 0
        self.responses = self.nxdomain = self.flows = 0
        self.query_bytes = self.answer_bytes = self.answer_max = self.edns_max = self.example_len = 0
        self.subdomains: set[bytes] = set()
        self.subdomains_full = False
        self.lengths = np.zeros(LENGTH_BINS, np.int64)
        self.entropy_sum = 0.0
        self.charsets: dict[str, int] = {}
        self.qtypes: dict[int, int] = {}
        self.first_ns, self.last_ns = int(flow["first_seen_ns"]), int(flow["last_seen_ns"])
        self.resolvers: set[int] = set()
        self.example = ""
        self.reported = 0  # severity already reported (0: none)

    def unique(self) -> int:
        """Distinct subdomains read, extrapolated to the unread queries when every name read so far was new."""
        seen = len(self.subdomains)
        if self.read and seen == self.read and self.queries > self.read:
            return self.queries
        return seen

    def unique_encoded(self) -> int:
        """Distinct encoded-looking subdomains read, extrapolated like `unique`."""
        if self.read and len(self.subdomains) == self.read and self.queries > self.read:
            return self.encoded_unique * self.queries // self.read
        return self.encoded_unique

    def median_length(self) -> int:
        if not self.read:
            return 0
        return int(np.searchsorted(np.cumsum(self.lengths), (self.read + 1) // 2))


class DnsTunnelDetector:
    """Reports `dns_tunnel` findings per (sandbox, registered domain)."""

    name = "dns_tunnel"
    kinds = (FindingKind.DNS_TUNNEL,)
    # live mode: a fresh instance judges every open DNS flow each window period (a one-port tunnel is one flow that
    # never ends; query-per-port tunnels leave their flows open for the idle timeout, so a round sees about a minute)
    live = LiveMode.OPEN_WINDOW

    @staticmethod
    def open_window(cols: dict[str, np.ndarray]) -> np.ndarray:
        """Which open flows a round shows it (columns proto, resp_port of FlowTable.live_columns)."""
        return (cols["resp_port"] == DNS_PORT) & np.isin(cols["proto"], (6, 17))

    def __init__(self, ctx: DetectorContext | None = None, params: Params = Params()):
        self.params = params
        self._states: OrderedDict[tuple[int, str], _DomainState] = OrderedDict()
        self._capture = ""
        self.dropped_domains = 0  # states dropped because max_domains were tracked (each counted once)
        self.unattributed_queries = 0  # queries in flows whose names could not be read (no payload slot, mixed)
        self.names_read = 0  # question names read and judged
        self.names_ignored = 0  # ... read and never judged (reverse, mDNS, single-label names)

    def start(self, capture: str) -> None:
        """A new capture starts from nothing (live mode keeps one capture)."""
        self._capture = capture
        self._states.clear()

    def inspect(self, view: FlowView) -> BatchResult:
        recs = view.records
        if not len(recs):
            return BatchResult()
        dns = view.tagged(AppTag.DNS) & (recs["orig_payload_pkts"] > 0)
        touched: set[tuple[int, str]] = set()
        for row in np.flatnonzero(dns).tolist():
            touched |= self._add_flow(view, row)
        self._forget(int(recs["last_seen_ns"].max()))
        result = BatchResult()
        for key in touched:
            state = self._states.get(key)
            finding = self._report(state, early=True) if state is not None else None
            if finding is not None:
                result.findings.append(finding)
        return result

    def finish(self) -> BatchResult:
        """Report every (sandbox, domain) that qualifies and was not yet reported at this severity."""
        findings = [f for f in (self._report(s, early=False) for s in list(self._states.values())) if f is not None]
        return BatchResult(findings=findings)

    # ---- accounting
    def _add_flow(self, view: FlowView, row: int) -> set[tuple[int, str]]:
        """Account one DNS flow; returns the (sandbox, domain) keys it touched."""
        rec = view.records[row]
        if int(rec["slot"]) < 0:
            self.unattributed_queries += int(rec["orig_payload_pkts"])
            return set()
        if int(rec["proto"]) == 17:
            asked = [summarize_message(p) for p in view.kept_payload(row, 0)]
            answered = [summarize_message(p) for p in view.kept_payload(row, 1)]
            total = int(rec["orig_payload_pkts"])
        else:
            asked = summarize_tcp_stream(view.kept_stream(row, 0))
            answered = summarize_tcp_stream(view.kept_stream(row, 1))
            total = len(asked)
        queries = [(q, split_name(q.qname)) for q in asked if q is not None and not q.is_response]
        judged = [(q, s) for q, s in queries if s is not None]
        self.names_read += len(judged)
        self.names_ignored += len(queries) - len(judged)
        if not judged:
            return set()
        sandbox = (int(rec["orig_hi"]) << 64) | int(rec["orig_lo"])
        for q, split in judged:
            self._add_query(self._state(sandbox, split.domain, split.no_tld, rec), q, split.sub)
        keys = {(sandbox, split.domain) for _, split in judged}
        # a flow that asked about one domain is all that domain's: the queries beyond the kept ones count for it
        single = len(keys) == 1
        if not single:
            self.unattributed_queries += max(0, total - len(judged))
        for key in keys:
            state = self._states.get(key)
            if state is None:  # dropped at once: more domains in this flow than states allowed
                continue
            state.flows += 1
            state.resolvers.add((int(rec["resp_hi"]) << 64) | int(rec["resp_lo"]))
            state.first_ns = min(state.first_ns, int(rec["first_seen_ns"]))
            state.last_ns = max(state.last_ns, int(rec["last_seen_ns"]))
            if single:
                state.queries += total - len(judged)
                state.query_bytes += int(rec["orig_payload_bytes"])
                state.answer_bytes += int(rec["resp_payload_bytes"])
                state.answer_max = max(state.answer_max, int(rec["resp_payload_max"]))
            else:
                state.query_bytes += sum(q.size for q, split in judged if (sandbox, split.domain) == key)
        self._add_answers(sandbox, answered, single)
        return keys

    def _add_answers(self, sandbox: int, answered: list[DnsSummary | None], single: bool) -> None:
        """Answers read: NXDOMAIN counts, and their sizes when the flow's totals were not attributed."""
        for r in (a for a in answered if a is not None and a.is_response):
            split = split_name(r.qname)
            state = self._states.get((sandbox, split.domain)) if split is not None else None
            if state is not None:
                state.responses += 1
                state.nxdomain += r.rcode == NXDOMAIN
                if not single:
                    state.answer_bytes += r.size
                    state.answer_max = max(state.answer_max, r.size)

    def _state(self, sandbox: int, domain: str, no_tld: bool, rec: np.void) -> _DomainState:
        key = (sandbox, domain)
        state = self._states.get(key)
        if state is None:
            state = _DomainState(sandbox, domain, no_tld, rec.copy())
            self._states[key] = state
            while len(self._states) > self.params.max_domains:
                self._states.popitem(last=False)
                self.dropped_domains += 1
        else:
            self._states.move_to_end(key)
        return state

    def _add_query(self, state: _DomainState, q: DnsSummary, sub: tuple[bytes, ...]) -> None:
        features = name_features(sub)
        state.queries += 1
        state.read += 1
        text = b".".join(sub).lower()
        if text not in state.subdomains:
            state.encoded_unique += features.encoded
            if len(state.subdomains) < self.params.max_subdomains:
                state.subdomains.add(text)
            else:
                state.subdomains_full = True
        state.lengths[min(features.longest_label, LENGTH_BINS - 1)] += 1
        state.entropy_sum += features.entropy
        state.encoded += features.encoded
        state.invalid += features.invalid
        if features.encoded:
            state.charsets[features.charset] = state.charsets.get(features.charset, 0) + 1
        if len(state.qtypes) < 16 or q.qtype in state.qtypes:
            state.qtypes[q.qtype] = state.qtypes.get(q.qtype, 0) + 1
        state.edns_max = max(state.edns_max, q.edns_size)
        if features.length > state.example_len or (features.encoded and not state.example):
            state.example, state.example_len = name_text(q.qname, MAX_EXAMPLE), features.length

    def _forget(self, now_ns: int) -> None:
        horizon = now_ns - int(self.params.forget_after_s * 1e9)
        while self._states:
            key, state = next(iter(self._states.items()))
            if state.last_ns >= horizon:
                break
            del self._states[key]

    # ---- judging and reporting
    def _verdict(self, s: _DomainState) -> tuple[Severity | None, list[str]]:
        """(severity or None, the reasons in words) of one state."""
        p = self.params
        if not s.read:
            return None, []
        odd = sum(n for t, n in s.qtypes.items() if t in ODD_QTYPES) / s.read
        encoded = s.encoded / s.read
        unique = s.unique()
        reasons, level = [], 0
        if s.invalid:
            kinds = " and ".join(k for k in ("binary", "symbols") if s.charsets.get(k))
            reasons.append(f"{s.invalid} name(s) hold bytes no host name can ({kinds or 'symbols'})")
            level = max(level, Severity.HIGH if s.queries >= 3 else Severity.MEDIUM)
        unique_encoded = s.unique_encoded()
        if unique_encoded >= p.unique_medium and (encoded >= p.encoded_share or unique_encoded >= p.unique_high):
            high = unique_encoded >= p.unique_high or odd >= p.odd_share
            reasons.append(f"{unique_encoded} distinct encoded-looking subdomains ({encoded:.0%} of the names read)")
            level = max(level, Severity.HIGH if high else Severity.MEDIUM)
        nulls = s.qtypes.get(NULL, 0)
        if nulls >= p.null_queries:
            reasons.append(f"{nulls} NULL queries (a record type only tunnels ask for)")
            level = max(level, Severity.HIGH if s.encoded else Severity.MEDIUM)
        if odd >= p.odd_share and unique >= p.polling_unique and not reasons:
            reasons.append(f"{unique} distinct subdomains polled with TXT/MX/CNAME queries")
            level = max(level, Severity.MEDIUM)
        if not reasons and s.encoded and s.example_len >= p.one_shot_length:
            reasons.append(f"one encoded subdomain of {s.example_len} characters (data sent in a single query)")
            level = Severity.MEDIUM
        if s.no_tld and reasons:
            reasons.append("the names end in no valid top-level domain, so only a server that expects them answers")
        return (Severity(level) if level else None), reasons

    def _report(self, s: _DomainState, early: bool) -> Finding | None:
        severity, reasons = self._verdict(s)
        if severity is None or int(severity) <= s.reported or (early and severity < Severity.HIGH):
            return None
        s.reported = int(severity)
        flow = s.flow.copy()
        flow["first_seen_ns"], flow["last_seen_ns"] = s.first_ns, s.last_ns
        unique = s.unique()
        score = min(1.0, 0.5 + 0.1 * len(reasons) + (0.2 if severity >= Severity.HIGH else 0.0))
        details = {"dns_tunnel": {
            "domain": s.domain[:MAX_DOMAIN_TEXT], "sandbox": address_text(s.sandbox),
            "resolvers": sorted(address_text(r) for r in s.resolvers)[:8], "queries": s.queries,
            "names_read": s.read, "unique_subdomains": unique, "unique_capped": s.subdomains_full,
            "median_label": s.median_length(), "entropy": round(s.entropy_sum / s.read, 2),
            "encoded_share": round(s.encoded / s.read, 3), "qtypes": _qtype_shares(s.qtypes, s.read),
            "query_bytes": s.query_bytes, "answer_bytes": s.answer_bytes, "answer_max": s.answer_max,
            "edns_max": s.edns_max, "nxdomain": s.nxdomain, "flows": s.flows, "example": s.example,
            "reasons": reasons}}
        return Finding(FindingKind.DNS_TUNNEL, severity, score, tuple(_evidence(s, reasons)), flow, self._capture,
                       details, subject=s.domain[:MAX_DOMAIN_TEXT])


def _duration(seconds: float) -> str:
    return f"{seconds:.1f} s" if seconds < 10 else f"{seconds:.0f} s"


def _qtype_shares(qtypes: dict[int, int], read: int) -> dict[str, float]:
    ranked = sorted(qtypes.items(), key=lambda kv: -kv[1])
    return {TYPE_NAMES.get(t, f"TYPE{t}"): round(n / read, 3) for t, n in ranked}


def _evidence(s: _DomainState, reasons: list[str]) -> list[str]:
    """Sentences with the measured values, e.g. "412 queries for 398 unique subdomains of biillpi.com in 61 s"."""
    seconds = (s.last_ns - s.first_ns) / 1e9
    unique = s.unique()
    domain = s.domain[:MAX_DOMAIN_TEXT]
    resolvers = ", ".join(sorted(address_text(r) for r in s.resolvers)[:4])
    estimated = "~" if unique > len(s.subdomains) else ""
    first = (f"{address_text(s.sandbox)} sent {s.queries} {'query' if s.queries == 1 else 'queries'} for "
             f"{estimated}{unique} unique subdomain{'' if unique == 1 else 's'} of {domain} in {_duration(seconds)} "
             f"over {s.flows} flow(s) to {resolvers}")
    if s.read < s.queries:
        first += f" ({s.read} names read; the others counted from the flows' packet totals)"
    mix = ", ".join(f"{k} {n / s.read:.0%}" for k, n in sorted(s.charsets.items(), key=lambda kv: -kv[1]))
    names = (f"median label {s.median_length()} chars, entropy {s.entropy_sum / s.read:.1f} bits/char"
             + (f"; encoded-looking names: {mix}" if mix else "") + f"; e.g. {s.example}")
    shares = ", ".join(f"{t} {v:.0%}" for t, v in list(_qtype_shares(s.qtypes, s.read).items())[:5])
    volume = f"qtypes {shares}; {s.query_bytes} B in queries, {s.answer_bytes} B in answers (largest {s.answer_max} B)"
    if s.edns_max:
        volume += f"; EDNS buffer {s.edns_max} B"
    if s.responses:
        volume += f"; NXDOMAIN {s.nxdomain / s.responses:.0%} of {s.responses} answers read"
    why = "; ".join(reasons)
    return [first, names, volume, why[:1].upper() + why[1:]]


__all__ = ["DnsTunnelDetector", "Params"]
