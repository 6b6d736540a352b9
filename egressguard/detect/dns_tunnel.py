"""DNS tunnels (iodine, dnscat2, dns2tcp, DNSExfiltrator, sods, ...): data carried in question names and answers.

State is kept per (sandbox, registered domain), fixed in size and bounded in number: query count, a capped set of
distinct subdomains, a label-length histogram, entropy and alphabet counts, query types, bytes in queries and
answers, the largest EDNS(0) buffer offered, NXDOMAIN answers, first and last query time, the resolvers used. Each
DNS transaction is usually its own UDP flow (a fresh source port per query), so one flow adds one query; a tunnel
that keeps one source port (iodine, dnscat) is one long flow of which only the first kept messages can be read: its
other queries are counted from the flow's packet counter and attributed to the domain of the messages read.

Works the same for queries to the sandbox's resolver and direct ones (any server on port 53, UDP or TCP). Names
under reverse zones, mDNS/DNS-SD and single-label names are never judged (payload/name_features.py).

A finding names the domain and the figures. It is emitted from `inspect` as soon as the evidence reaches `high`,
and from `finish` (end of a capture, or of a live reporting interval) for everything else that qualifies; a
(sandbox, domain) is reported again only when its severity rises.
"""
from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

import numpy as np

from egressguard.detect.base import BatchResult, DetectorContext, LiveMode
from egressguard.flows.view import FlowView
from egressguard.netaddr import address_text
from egressguard.payload.dns import TYPE_NAMES, name_text
from egressguard.payload.dns_table import domain_text, name_labels, subdomain_keys, unique_names
from egressguard.schema import DNS_CHARSETS, AppTag, Finding, FindingKind, Severity

DNS_PORT = 53  # 5353 (mDNS) and 5355 (LLMNR) are link-local name services, not egress
NXDOMAIN = 3  # RFC 1035 4.1.1 RCODE 3, "Name Error"
NULL, TXT, MX, CNAME, ANY = 10, 16, 15, 5, 255
# Query types tunnels use for their large or free-form answers (iodine: NULL, TXT, MX, CNAME, ...; dnscat2: TXT,
# MX, CNAME; dns2tcp, DNSExfiltrator: TXT; sods: CNAME/TXT polls). KEY (25) and ANY are rare in ordinary lookups.
ODD_QTYPES = frozenset({NULL, TXT, MX, CNAME, ANY, 25})
LENGTH_BINS = 64  # label-length histogram, 1-character bins; the last bin holds 63 (the RFC 1035 maximum)
MAX_EXAMPLE = 80  # characters of the example name quoted in evidence
MAX_DOMAIN_TEXT = 120
INVALID_CHARSETS = (DNS_CHARSETS.index("binary"), DNS_CHARSETS.index("symbols"))  # bytes no host name can hold


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
        self.subdomains = np.zeros(0, np.uint64)  # sorted keys of the distinct subdomains read (bounded)
        self.subdomains_full = False
        self.lengths = np.zeros(LENGTH_BINS, np.int64)
        self.entropy_sum = 0.0
        self.charsets: dict[str, int] = {}
        self.qtypes: dict[int, int] = {}
        self.first_ns, self.last_ns = int(flow["first_seen_ns"]), int(flow["last_seen_ns"])
        self.resolvers: set[int] = set()
        self.example = ""
        self.reported = 0  # severity already reported (0: none)

    def add_subdomains(self, keys: np.ndarray, encoded: np.ndarray, limit: int) -> None:
        """Remember the subdomains of some queries (keys in query order); a subdomain seen for the first time adds
        to `encoded_unique` when it looks encoded; past `limit` distinct ones the set is full (still counted)."""
        fresh, first = np.unique(keys, return_index=True)
        known = np.isin(fresh, self.subdomains, assume_unique=True)
        fresh, first = fresh[~known], first[~known]
        self.encoded_unique += int(encoded[first].sum())
        room = limit - len(self.subdomains)
        if len(fresh) > room:
            self.subdomains_full = True
            fresh = fresh[np.argsort(first)[:max(room, 0)]]  # the first ones seen
        if len(fresh):
            self.subdomains = np.union1d(self.subdomains, fresh)

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
        unread = dns & (recs["slot"] < 0)
        self.unattributed_queries += int(recs["orig_payload_pkts"][unread].sum())
        touched = self._account(view, dns & ~unread)
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

    # ---- accounting, vectorised over the batch's message table (Python once per state and per flow, not per query)
    def _account(self, view: FlowView, flows: np.ndarray) -> list[tuple[int, str]]:
        """Account the queries and answers of the DNS flows `flows` (bool per view row); returns the (sandbox,
        domain) keys touched, in the order their first query came."""
        t = view.dns.table
        m = t.messages
        if not len(m):
            return []
        row = view.dns.flow_rows()
        readable = flows[row] & (m["qdcount"] > 0) & (m["opcode"] == 0) & (m["qname"] >= 0)
        asked = readable & (m["direction"] == 0) & (m["is_response"] == 0)
        judged = np.flatnonzero(asked & (m["domain"] >= 0))
        self.names_read += len(judged)
        self.names_ignored += int(asked.sum()) - len(judged)
        if not len(judged):
            return []
        recs = view.records
        q = Queries(t, judged, row, recs)
        keys = self._states_for(q, recs)
        self._add_queries(q, keys)
        single = self._add_flows(q, keys, recs, readable & (m["direction"] == 0))
        answered = np.flatnonzero(readable & (m["direction"] == 1) & (m["is_response"] == 1) & (m["domain"] >= 0))
        self._add_answers(t, answered, row[answered], single, recs)
        return keys

    def _states_for(self, q: "Queries", recs: np.ndarray) -> list[tuple[int, str]]:
        """The (sandbox, domain) key of every group of `q`, creating missing states in the order their first query
        came (the least recently queried are dropped past max_domains, and counted)."""
        keys = []
        for first in q.group_first.tolist():
            key = (q.sandbox[first], q.domain_text[q.domain[first]])
            state = self._states.get(key)
            if state is None:
                no_tld = bool(q.table.messages["no_tld"][q.message[first]])
                self._states[key] = _DomainState(key[0], key[1], no_tld, recs[q.row[q.message[first]]].copy())
                while len(self._states) > self.params.max_domains:
                    self._states.popitem(last=False)
                    self.dropped_domains += 1
            else:
                self._states.move_to_end(key)
            keys.append(key)
        return keys

    def _add_queries(self, q: "Queries", keys: list[tuple[int, str]]) -> None:
        """Names, lengths, alphabets, query types and EDNS sizes of each state's queries of this batch."""
        m = q.table.messages[q.message]
        sub_keys = subdomain_keys(q.table)[q.message]
        for g, key in enumerate(keys):
            state = self._states.get(key)
            if state is None:  # dropped at once: more domains in this batch than states allowed
                continue
            at = q.members(g)
            sub = m[at]
            encoded = sub["encoded"].astype(bool)
            state.queries += len(at)
            state.read += len(at)
            state.add_subdomains(sub_keys[at], encoded, self.params.max_subdomains)
            state.lengths += np.bincount(np.minimum(sub["longest_label"], LENGTH_BINS - 1), minlength=LENGTH_BINS)
            state.entropy_sum += float(sub["entropy"].astype(np.float64).sum())
            state.encoded += int(encoded.sum())
            state.invalid += int(np.isin(sub["charset"], INVALID_CHARSETS).sum())
            for code, count in zip(*(x.tolist() for x in np.unique(sub["charset"][encoded], return_counts=True))):
                state.charsets[DNS_CHARSETS[code]] = state.charsets.get(DNS_CHARSETS[code], 0) + count
            for qtype in sub["qtype"].tolist():
                if len(state.qtypes) < 16 or qtype in state.qtypes:
                    state.qtypes[qtype] = state.qtypes.get(qtype, 0) + 1
            state.edns_max = max(state.edns_max, int(sub["edns_size"].max()))
            longest = int(np.argmax(sub["sub_length"]))  # the first of the longest: the example the old loop chose
            if int(sub["sub_length"][longest]) > state.example_len:
                state.example_len = int(sub["sub_length"][longest])
                state.example = name_text(name_labels(q.table, int(sub["qname"][longest])), MAX_EXAMPLE)

    def _add_flows(self, q: "Queries", keys: list[tuple[int, str]], recs: np.ndarray,
                   client_messages: np.ndarray) -> dict[int, bool]:
        """Per flow and state: the flow count, resolvers and time span, and the flow's totals beyond the queries
        read: a flow that asked about one domain is all that domain's (its packet counters count its queries); in a
        flow that mixed domains only what was read is attributed, the rest counted as unattributed. Returns, per
        flow, whether it asked about one domain only."""
        sizes = q.table.messages["size"][q.message].astype(np.int64)
        pairs, inverse = np.unique(np.stack([q.row[q.message], q.state_of]), axis=1, return_inverse=True)
        pair_bytes = np.bincount(inverse.reshape(-1), weights=sizes, minlength=pairs.shape[1]).astype(np.int64)
        read = dict(zip(*(x.tolist() for x in np.unique(q.row[q.message], return_counts=True))))
        kept = dict(zip(*(x.tolist() for x in np.unique(q.row[client_messages], return_counts=True))))
        single: dict[int, bool] = {}
        flows, starts = np.unique(pairs[0], return_index=True)
        bounds = starts.tolist() + [pairs.shape[1]]
        for r, i, j in zip(flows.tolist(), bounds[:-1], bounds[1:]):
            rec = recs[r]
            total = int(rec["orig_payload_pkts"]) if int(rec["proto"]) == 17 else kept.get(r, 0)
            single[r] = j - i == 1
            if not single[r]:
                self.unattributed_queries += max(0, total - read[r])
            for g, size in zip(pairs[1, i:j].tolist(), pair_bytes[i:j].tolist()):
                state = self._states.get(keys[g])
                if state is None:
                    continue
                state.flows += 1
                state.resolvers.add((int(rec["resp_hi"]) << 64) | int(rec["resp_lo"]))
                state.first_ns = min(state.first_ns, int(rec["first_seen_ns"]))
                state.last_ns = max(state.last_ns, int(rec["last_seen_ns"]))
                if single[r]:
                    state.queries += total - read[r]
                    state.query_bytes += int(rec["orig_payload_bytes"])
                    state.answer_bytes += int(rec["resp_payload_bytes"])
                    state.answer_max = max(state.answer_max, int(rec["resp_payload_max"]))
                else:
                    state.query_bytes += size
        return single

    def _add_answers(self, t, answered: np.ndarray, rows: np.ndarray, single: dict[int, bool],
                     recs: np.ndarray) -> None:
        """Answers read in flows that asked something judged: NXDOMAIN counts, and their sizes when the flow's
        totals were not attributed."""
        if not len(answered):
            return
        m = t.messages
        group, first = unique_names(t, m["domain"][answered], m["domain_labels"][answered])
        texts = [domain_text(t, int(answered[i])) for i in first.tolist()]
        for msg, r, g in zip(answered.tolist(), rows.tolist(), group.tolist()):
            if r not in single:
                continue
            state = self._states.get(((int(recs["orig_hi"][r]) << 64) | int(recs["orig_lo"][r]), texts[g]))
            if state is None:
                continue
            state.responses += 1
            state.nxdomain += int(m["rcode"][msg]) == NXDOMAIN
            if not single[r]:
                state.answer_bytes += int(m["size"][msg])
                state.answer_max = max(state.answer_max, int(m["size"][msg]))

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


class Queries:
    """The judged queries of one batch (positions `message` in its message table; `row[i]` is the view row of
    message i), grouped by (sandbox, registered domain): group g's members come in message order, and groups are
    numbered in the order of their first query."""

    def __init__(self, table, judged: np.ndarray, row: np.ndarray, recs: np.ndarray):
        m = table.messages
        self.table, self.message, self.row = table, judged, row
        rows = row[judged]
        hi, lo = recs["orig_hi"][rows], recs["orig_lo"][rows]
        self.domain, first = unique_names(table, m["domain"][judged], m["domain_labels"][judged])
        self.domain_text = [domain_text(table, int(judged[i])) for i in first.tolist()]
        keys = np.stack([hi, lo, self.domain.astype(np.uint64)], axis=1)
        _, group_first, state_of = np.unique(keys, axis=0, return_index=True, return_inverse=True)
        order = np.argsort(group_first, kind="stable")
        rank = np.empty_like(order)
        rank[order] = np.arange(len(order))
        self.state_of, self.group_first = rank[state_of.reshape(-1)], group_first[order]
        self.sandbox = [(h << 64) | x for h, x in zip(hi.tolist(), lo.tolist())]
        self._by_group = np.argsort(self.state_of, kind="stable")
        self._bounds = np.searchsorted(self.state_of[self._by_group], np.arange(len(self.group_first) + 1))

    def members(self, group: int) -> np.ndarray:
        """Positions (into `message`) of one group's queries, in message order."""
        return self._by_group[self._bounds[group]:self._bounds[group + 1]]


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
