"""Mining-pool traffic: Stratum v1, CryptoNote/xmrig, Ethereum stratum, getwork over HTTP, Stratum V2, and mining
hidden in TLS or on odd ports (detection-science 2; signals M1-M7 of its table 2.9).

Each batch is narrowed with array operations on the flow records and the first kept bytes; plain Python runs only
on the few flows that remain:

* M1  the kept bytes hold a mining JSON-RPC conversation (payload/stratum.py parses it for real), on any port,
      either direction, also inside HTTP bodies (getwork) and WebSocket frames;
* M2  the Stratum V2 Noise handshake by its sizes: 64 B from the originator (no TLS header), 234 B back;
* M3  a pool domain from rules/pools.toml in the TLS server name, the HTTP Host, or among the names the sandbox's own
      DNS answers bound to the destination address (DnsBinding);
* M4/M5 behaviour: a CESNET-style flow score and quasi-periodic pool pushes with small client messages, for
      long-lived flows whose content cannot be read;
* M6  a well-known pool port (supporting only);
* M7  pair memory: once a (sandbox, destination) pair is proven to be mining, later flows between them (TLS
      reconnects, rest of a connection) inherit the verdict, with a note saying so (nDPI's "host twins" cache).
"""
from __future__ import annotations

import ipaddress
from collections import OrderedDict
from dataclasses import dataclass, field

import numpy as np

from egressguard.detect.base import BatchResult, DetectorContext, LiveMode, allow_match, noisy_or
from egressguard.flows.view import SOURCE_SNI, FlowView
from egressguard.netaddr import format_address
from egressguard.payload.dns_table import name_text, unique_names
from egressguard.payload.suffixes import SuffixSet
from egressguard.payload.stratum import (Family, StratumSession, Sv2Handshake, http_messages, json_messages,
                                         parse_coinhive_session, parse_json_session, parse_session, sv2_handshake)
from egressguard.payload.signatures import HTTP_METHODS, starts_with
from egressguard.payload.tls import WEB_ALPN, hello_traits, parse_client_hello
from egressguard.payload.websocket import websocket_streams
from egressguard.policy.pools import PoolDomain
from egressguard.schema import FLOW_DTYPE, AppTag, Finding, FindingKind, FlowFlag, Severity, copy_record

ORIG, RESP = 0, 1
_IPV4_MAPPED = 0xFFFF << 32
_PREFIX = 16  # first kept bytes looked at by the array prefilters
_HTTP_ALPN = ("h2", "http/1.1", "http/1.0", "h3")
_FAMILY_TEXT = {
    Family.STRATUM_V1: "Stratum v1", Family.ETHEREUM_STRATUM: "EthereumStratum", Family.ETHEREUM_PROXY:
    "Ethereum stratum proxy (eth_submitLogin / eth_getWork)", Family.CRYPTONOTE: "CryptoNote / xmrig stratum",
    Family.GETWORK_HTTP: "getwork over HTTP", Family.STRATUM_V2: "Stratum V2",
    Family.COINHIVE: "CoinHive-style WebSocket mining",
}


# ------------------------------------------------------------------------------------------------ parameters
@dataclass(frozen=True)
class Params:
    """Weights and thresholds, each with where it comes from (detection-science 2.7, 2.9, 7)."""

    w_methods: float = 0.97  # M1: a single DPI hit is decisive (7.2)
    w_methods_both: float = 0.99  # the pool answered the miner: a working session
    w_pool_name: float = 0.9  # M3
    w_web_visit: float = 0.3  # M3 on a web visit (HTTP, or TLS with an HTTP ALPN): a pool's website, not mining
    w_sv2: float = 0.6  # M2
    w_sv2_bitcoin_port: float = 0.3  # M2 on 8333: BIP324 Bitcoin P2P v2 also opens with a 64-byte key
    w_push: float = 0.4  # M5
    w_cesnet_step: float = 0.15  # M4: 0.15 * (score - 6) ...
    w_cesnet_max: float = 0.4  # ... capped: a weak S-signal never exceeds 0.4 on its own (7.6)
    w_port: float = 0.15  # M6, supporting only
    inherit_factor: float = 0.9  # M7: an inherited verdict is a little less certain than the proof
    cesnet_threshold: int = 7  # CESNET miner_detector: 7 of 13 points
    behaviour_min_duration_s: float = 300.0  # CESNET: +3 if active longer than 300 s
    push_min_bursts: int = 10  # M5: >= 10 pool-led bursts
    push_iat_s: tuple[float, float] = (15.0, 120.0)  # M5: median gap between pushes (NOMP 15-55 s, xmrig 60 s)
    push_max_cv: float = 0.5  # M5
    client_max_mean: float = 400.0  # M5: client messages < 400 B (xmrig submit ~200-260 B)
    # egressguard's own addition to M5 (not in the research): below this mean the client sends nothing but keepalives
    # (MQTT PINGREQ is 2 B, a WebSocket ping 6 B, ~30 B inside TLS), the push-service false positive M5 names
    client_min_mean: float = 60.0
    # M5 inside TLS (issue 12 point 3: "decide from about 5 pushes, not 10"): at least this many unasked pushes of
    # one size (within tls_size_tolerance B: a job's JSON differs by a few digits) and this many acknowledged submits
    tls_min_pushes: int = 4
    tls_min_submits: int = 3
    tls_size_tolerance: int = 8
    tls_max_message: float = 600.0  # Stratum jobs and shares are a few hundred bytes (carriers-and-implementations 5)
    tls_min_duration_s: float = 5.0
    tls_ack_s: float = 0.1  # a pool acknowledges a share at once
    # record sizes below which a message is no share and no acknowledgement (Stratum v1 / xmrig JSON lines: a submit
    # names worker, job, nonce and result, ~100 B and more; {"id":4,"result":true,"error":null} is 36 B, then the
    # 21-29 B of TLS): MQTT's 2-byte PINGREQ/PINGRESP and 4-byte PUBACK, HTTP/2 PINGs and pings stay below
    tls_min_submit: int = 100
    tls_min_ack: int = 45
    tls_push_quiet_s: float = 0.3  # a push: no sandbox packet in the 0.3 s before it
    burst_gap_s: float = 1.0  # detection-science 6: a burst ends after >= 1 s of silence
    pair_memory: int = 65536  # proven (sandbox, pool) pairs kept (nDPI lru.mining.size is 1024)
    pair_ttl_s: float = 86400.0  # CESNET's black/white lists expire after 24 h
    dns_watch: int = 65536  # addresses that DNS answers gave for pool names, kept for the array prefilter
    hold_flows: int = 16384  # unexplained flows kept (~6 MB) until the DNS answers that may name them are read
    # C1 (issue 16): what the sandbox computes, joined to the flow. A miner keeps its CPU or GPU busy for as long as
    # it holds a pool connection that the pool feeds with jobs; a weak network signal (a long opaque flow with a
    # steady remote-led rhythm to a destination the rules do not allow) becomes a finding on its own with it
    w_compute_alone: float = 0.5  # medium: compute and rhythm without any protocol seen
    w_compute_support: float = 0.3  # raises the confidence of a mining finding from a busy sandbox
    compute_busy_s: float = 30.0  # the sandbox stayed busy (live/compute.py BUSY_MIN_*) at least this long
    compute_min_flow_s: float = 30.0  # the flow has lasted at least this long
    compute_min_pushes: int = 5  # remote-led bursts in the early packets (M5's rhythm, fewer of them)
    compute_push_gap_s: tuple[float, float] = (1.0, 120.0)  # median gap between pushes (M5 range, down to 1 s)


# ------------------------------------------------------------------------------------------------ signals
@dataclass
class _Signals:
    """Everything found about one flow; `parts` are (code, weight, evidence sentence)."""

    parts: list = field(default_factory=list)
    session: StratumSession | None = None
    sv2: Sv2Handshake | None = None
    pool: str | None = None
    pool_source: str | None = None
    web_visit: bool = False
    proof: bool = False  # strong enough to remember the pair (M1, M2 off 8333, M3 off the web)
    severity: Severity = Severity.LOW
    carrier: str | None = None
    behaviour: dict | None = None
    inherited: dict | None = None
    compute: dict | None = None

    def add(self, code: str, weight: float, text: str, severity: Severity, proof: bool = False) -> None:
        self.parts.append((code, weight, text))
        self.severity = max(self.severity, severity)
        self.proof |= proof

    @property
    def score(self) -> float:
        return noisy_or(w for _, w, _ in self.parts)


@dataclass
class _Proven:
    """A (sandbox, pool) pair proven to be mining (M7)."""

    first: float
    last: float
    severity: Severity
    score: float
    protocol: str | None
    pool: str | None
    port: int
    capture: str


def _address(hi: int, lo: int, version: int) -> str:
    return format_address(hi, lo, version)


def _address_key(text: str) -> tuple[int, int] | None:
    """(hi, lo) as the flow table stores an address (IPv4 mapped into IPv6)."""
    try:
        ip = ipaddress.ip_address(text)
    except ValueError:
        return None
    if ip.version == 4:
        return 0, _IPV4_MAPPED | int(ip)
    value = int(ip)
    return value >> 64, value & ((1 << 64) - 1)


def _member(values: np.ndarray, sorted_unique: np.ndarray) -> np.ndarray:
    """values in sorted_unique (a binary search each; cheaper than np.isin for a large set and a batch)."""
    if not len(sorted_unique):
        return np.zeros(len(values), bool)
    idx = np.minimum(np.searchsorted(sorted_unique, values), len(sorted_unique) - 1)
    return sorted_unique[idx] == values


def _pair_hash(a_hi: np.ndarray, a_lo: np.ndarray, b_hi: np.ndarray, b_lo: np.ndarray) -> np.ndarray:
    """A 64-bit hash of an ordered address pair (multiply-xorshift; collisions only cost an exact check)."""
    k = np.uint64(0x9E3779B97F4A7C15)
    with np.errstate(over="ignore"):
        h = np.asarray(a_hi, np.uint64) * k
        for part in (a_lo, b_hi, b_lo):
            h = (h ^ np.asarray(part, np.uint64)) * k
        return h ^ (h >> np.uint64(31))


# ------------------------------------------------------------------------------------------------ behaviour
def cesnet_score(rec: np.void) -> tuple[int, list[str]]:
    """CESNET NEMEA miner_detector's flow score (detection-science 2.7), adapted from its per-(src,dst,port)
    aggregate to one flow record; threshold 7 of 13. Returns the score and the parts that counted."""
    pkts = int(rec["orig_pkts"]) + int(rec["resp_pkts"])
    if pkts == 0:
        return 0, []
    duration = max((int(rec["last_seen_ns"]) - int(rec["first_seen_ns"])) / 1e9, 1e-9)
    acks = int(rec["orig_bare_acks"]) + int(rec["resp_bare_acks"])
    data = int(rec["orig_payload_pkts"]) + int(rec["resp_payload_pkts"])
    per_packet = (int(rec["orig_bytes"]) + int(rec["resp_bytes"])) / pkts
    per_minute = pkts / (duration / 60.0)
    parts = []
    score = 0
    if acks + data >= 0.8 * pkts:
        score += 2
        parts.append(f"{100 * (acks + data) / pkts:.0f}% ACK/ACK+PSH packets (+2)")
    if 50 <= per_packet <= 130:
        score += 2
        parts.append(f"{per_packet:.0f} B per packet (+2)")
    if not 10 <= pkts <= 20:
        score += 1
        parts.append(f"{pkts} packets (+1)")
    if 8 <= per_minute <= 30:
        score += 2
        parts.append(f"{per_minute:.1f} packets/min (+2)")
    if int(rec["orig_port"]) > int(rec["resp_port"]):
        score += 3
        parts.append("client port above server port (+3)")
    if duration > 300:
        score += 3
        parts.append(f"active {duration:.0f} s (+3)")
    return score, parts


def tls_pool_rhythm(sizes: list[int], times_s: list[float], p: "Params") -> tuple | None:
    """(pushes, push size, median push interval, submits, submit size, ack size) when the records of a TLS flow
    (signed sizes +client / -server, seconds) show a pool's unasked pushes of one size at a steady pace and a
    miner's submits of one size each acknowledged at once by one small answer of one size; else None."""
    pushes: list[tuple[float, int]] = []
    submits: list[tuple[int, int]] = []
    last_client = -1e9
    for k, (size, t) in enumerate(zip(sizes, times_s)):
        if size > 0:
            last_client = t
            if k + 1 < len(sizes) and sizes[k + 1] < 0 and times_s[k + 1] - t <= p.tls_ack_s:
                submits.append((size, -sizes[k + 1]))
        elif t - last_client > p.tls_push_quiet_s:
            pushes.append((t, -size))
    if len(pushes) < p.tls_min_pushes or len(submits) < p.tls_min_submits:
        return None
    tol = p.tls_size_tolerance
    # the most common sizes (a handshake's records come once each, a pool's jobs and shares again and again)
    push_size = max((s for _, s in pushes), key=lambda x: sum(abs(s - x) <= tol for _, s in pushes))
    steady = [(t, s) for t, s in pushes if abs(s - push_size) <= tol]
    sub_size, ack_size = max(submits, key=lambda x: sum(abs(s - x[0]) <= tol and a == x[1] for s, a in submits))
    same = [(s, a) for s, a in submits if abs(s - sub_size) <= tol and a == ack_size]
    if len(steady) < p.tls_min_pushes or len(same) < p.tls_min_submits or ack_size >= 128 or \
            push_size > p.tls_max_message or sub_size > p.tls_max_message or sub_size < p.tls_min_submit or \
            ack_size < p.tls_min_ack:
        return None
    gaps = np.diff([t for t, _ in steady])
    gap = float(np.median(gaps))
    if gap < 1.0 or gaps.std() > p.push_max_cv * gaps.mean():
        return None
    return len(steady), push_size, round(gap, 1), len(same), sub_size, ack_size


def push_rhythm(sizes: np.ndarray, dt_us: np.ndarray, pool_dir: int, gap_s: float = 1.0) -> tuple[int, float, float]:
    """Bursts led by the pool side in the early payload sequence: (count, median gap s, coefficient of variation)."""
    starts: list[float] = []
    last = None
    for size, t_us in zip(sizes.tolist(), dt_us.tolist()):
        t = t_us / 1e6
        if last is None or t - last >= gap_s:
            if (size < 0) == (pool_dir == RESP):
                starts.append(t)
        last = t
    if len(starts) < 2:
        return len(starts), 0.0, float("inf")
    gaps = np.diff(np.asarray(starts))
    mean = float(gaps.mean())
    cv = float(gaps.std(ddof=1) / mean) if len(gaps) > 1 and mean > 0 else float("inf")
    return len(starts), float(np.median(gaps)), cv


# ------------------------------------------------------------------------------------------------ detector
class MiningDetector:
    """Reports mining-pool traffic (`mining`) with the protocol, pool name, login, agent and coin it could see.

    Args:
        binding: the DnsBinding fed by the DnsObserver (names the sandbox's DNS answers bound to addresses); None
            disables the DNS part of M3.
        pools: the pool list; by default rules/pools.toml of this checkout, else of the working directory (none
            found: M3 and M6 are off).
    """

    name = "mining"
    kinds = (FindingKind.MINING,)
    live = LiveMode.OPEN_FLOWS  # a pool connection is reported while it lasts

    def __init__(self, ctx: DetectorContext, params: Params = Params()):
        self.binding = ctx.binding
        self.pools = ctx.pools  # an empty list turns M3 and M6 off
        self.compute = ctx.compute  # None (files): C1 is off
        self.rules = ctx.rules
        self.params = params
        self._capture = ""
        self._proven: OrderedDict[tuple[int, int, int, int], _Proven] = OrderedDict()
        self._proven_pools = np.zeros(0, np.uint64)  # low 64 bits of the proven pools' addresses (array prefilter)
        self._proven_pairs = np.zeros(0, np.uint64)  # 64-bit hashes of the proven (sandbox, pool) pairs
        self._proven_new: list[tuple[int, int, int, int]] = []  # proven since the arrays were last brought up to date
        self._watch: OrderedDict[tuple[int, int], str] = OrderedDict()  # pool-bound address -> a name, for prefilter
        self._hold_ring: np.ndarray | None = None  # records of unexplained flows (allocated at the first batch)
        self._hold_tls = np.zeros(0, bool)
        self._hold_pos = 0
        self._watch_lo = np.zeros(0, np.uint64)
        self._watch_dirty = False
        self._pool_of_name: dict[str, PoolDomain | None] = {}  # server names already matched against the list
        self._pool_suffixes: SuffixSet | None = None  # the list's suffixes for the DNS message table (built on use)

    def start(self, capture: str) -> None:
        """Flows held for a late DNS answer belong to one capture; proven pairs are remembered across captures."""
        self._capture = capture
        if self._hold_ring is not None:
            self._hold_ring["first_seen_ns"] = 0

    def finish(self) -> BatchResult:
        return BatchResult()

    # ---- batch
    def inspect(self, view: FlowView) -> BatchResult:
        result = BatchResult()
        recs = view.records
        if not len(recs):
            return result
        new_pools = None
        if self.binding is not None and self.pools.domains:
            if self._hold_ring is None:
                self._hold_ring = np.zeros(self.params.hold_flows, FLOW_DTYPE)
                self._hold_tls = np.zeros(self.params.hold_flows, bool)
            new_pools = self._watch_dns(view)
        tcp = (recs["proto"] == 6) & (recs["slot"] >= 0)
        prefix = view.prefix(_PREFIX)
        ssh = view.tagged(AppTag.SSH) | view.inner_tagged(AppTag.SSH)  # SSH inside a carrier is no pool either
        http = view.tagged(AppTag.HTTP_REQUEST | AppTag.HTTP_RESPONSE)
        carried = np.zeros(len(recs), bool)  # CONNECT / SOCKS / PROXY protocol / WebSocket (payload/carriers.py)
        carried[view.carriers.rows] = True
        tls = view.tagged(AppTag.TLS)
        json_like = view.tagged(AppTag.JSON)
        mqtt = view.tagged(AppTag.MQTT)
        dns = view.tagged(AppTag.DNS | AppTag.MDNS)
        signals: dict[int, _Signals] = {}

        # M1: mining JSON-RPC (newline-delimited, in HTTP bodies, inside WebSocket frames)
        readable = np.zeros(len(recs), bool)  # JSON that parsed, mining or not: its content was judged
        for row in np.flatnonzero(tcp & json_like & ~http & ~ssh & ~carried).tolist():
            readable[row] = self._json(view, row, signals)
        for row in np.flatnonzero(tcp & carried & ~ssh).tolist():
            readable[row] = self._carried(view, row, signals)
        post = starts_with(prefix, ORIG, b"POST ")
        upgrade = view.tagged(AppTag.WEBSOCKET)
        for row in np.flatnonzero(tcp & (post | upgrade) & ~carried).tolist():
            self._http(view, row, signals, post=bool(post[row]))
        # M3: pool name in the TLS server name (found and matched in numpy; Python for the hits only)
        names = view.server_names
        named = tcp & tls & (names.source == SOURCE_SNI)  # TLS flows that name their server (explains the address)
        if self.pools.domains:
            for row in np.flatnonzero(named).tolist():
                if self._pool(names.name[row]) is not None:
                    self._sni(view, row, signals)
        # M3: pool name bound to the destination by the sandbox's DNS answers
        if self._watch:
            for row in self._watched_rows(recs, tcp & ~ssh).tolist():
                self._dns_name(view, row, signals)
        # M2: Stratum V2 handshake sizes
        sv2 = np.flatnonzero(tcp & ~ssh & ~tls & ~readable & ~http & (recs["orig_payload_min"] <= 64)
                             & (recs["orig_payload_max"] >= 64) & (recs["resp_payload_min"] <= 234)
                             & (recs["resp_payload_max"] >= 234) & (recs["seq_count"] >= 2))
        first2 = view.first_sizes(sv2, 2)
        for row in sv2[(first2[:, 0] == 64) & (first2[:, 1] == -234)].tolist():
            self._sv2(view, row, signals)
        # M4/M5: behaviour of long flows whose content cannot be read
        p = self.params
        duration = (recs["last_seen_ns"] - recs["first_seen_ns"]) / 1e9
        opaque = tcp & ~ssh & ~http & ~mqtt & ~dns
        long_lived = opaque & (duration >= p.behaviour_min_duration_s) & (recs["orig_payload_pkts"] >= 3) & \
            ((recs["resp_payload_pkts"] >= p.push_min_bursts) | (recs["orig_payload_pkts"] >= p.push_min_bursts))
        for row in np.flatnonzero(long_lived & ~readable).tolist():  # readable JSON was judged by its content
            self._behaviour(view, row, signals)
        # Stratum inside TLS, from its first exchanges: small messages both ways, more than a handshake's worth
        small_tls = tcp & tls & ~readable & ~long_lived & (duration >= p.tls_min_duration_s) & \
            (recs["resp_payload_pkts"] >= p.tls_min_pushes + p.tls_min_submits) & \
            (recs["orig_payload_pkts"] >= p.tls_min_submits + 2) & \
            (recs["orig_payload_mean"] < p.tls_max_message) & (recs["resp_payload_mean"] < p.tls_max_message)
        for row in np.flatnonzero(small_tls).tolist():
            self._tls_shape(view, row, signals)
        # C1: sustained compute in the sandbox, joined to its long opaque rhythmic flows
        if self.compute is not None:
            candidates = tcp & ~ssh & ~http & ~mqtt & ~dns & ~readable & ~carried & \
                (duration >= p.compute_min_flow_s) & (recs["resp_payload_pkts"] + recs["orig_payload_pkts"]
                                                      >= p.compute_min_pushes)
            self._compute(view, candidates, signals)
        # M6 for flows with other evidence, then findings; proofs feed the pair memory first
        for row, sig in signals.items():
            port = self.pools.port(int(recs[row]["resp_port"]))
            if port is not None and sig.parts and not sig.web_visit:
                sig.add("M6", p.w_port, f"port {port.port} is a well-known mining pool port "
                                        f"({self.pools.cite(port.sources)}{'; ' + port.note if port.note else ''})",
                        Severity.LOW)
            if sig.proof and not carried[row]:  # a proxy is shared: its pair says nothing about other targets
                self._remember(recs[row], sig)
        # M7: later flows between proven pairs
        if self._proven:
            # like nDPI, only flows that nothing else explains: not SSH, HTTP, MQTT, DNS or readable JSON
            eligible = (recs["proto"] == 6) & ~ssh & ~http & ~mqtt & ~readable & ~dns & ~carried & \
                ((recs["orig_payload_bytes"] + recs["resp_payload_bytes"]) > 0)
            for row in self._paired_rows(recs, eligible).tolist():
                sig = signals.get(row)
                if sig is not None and (sig.proof or sig.severity >= Severity.HIGH):
                    continue
                self._inherit(view, row, signals)
        for row, sig in signals.items():
            if sig.parts:
                client = _roles(recs[row], sig)[0]
                self._report(recs[row], sig, result, row, bool(tls[row]) if client == "orig" else
                             view.kept_stream(row, RESP)[:2] == b"\x16\x03")
        if self._hold_ring is not None:
            if new_pools is not None and len(new_pools):
                self._release_held(new_pools, result)  # flows of earlier batches named by this one's DNS
            self._hold(view, signals, tcp & ~ssh & ~http & ~mqtt & ~readable & ~dns
                       & ((recs["orig_payload_bytes"] + recs["resp_payload_bytes"]) > 0) & ~named, tls)
        return result

    # ---- M1
    def _json(self, view: FlowView, row: int, signals: dict[int, _Signals]) -> bool:
        """M1 on a flow whose kept bytes start like JSON; True when they are JSON (mining or not)."""
        orig, resp = view.kept_stream(row, ORIG), view.kept_stream(row, RESP)
        session = parse_session(orig, resp)
        if session is not None:
            self._methods(view, row, session, signals)
            return True
        return bool(json_messages(orig, limit=1).messages or json_messages(resp, limit=1).messages)

    def _carried(self, view: FlowView, row: int, signals: dict[int, _Signals]) -> bool:
        """M1 on the peeled inner bytes of a flow inside a carrier: Stratum/JSON-RPC, or CoinHive-style WebSocket
        messages; True when they are JSON (mining or not)."""
        flow = view.carriers.get(row)
        orig, resp = flow.inner
        if not any(side.lstrip()[:1] in (b"{", b"[") for side in (orig, resp)):
            return False
        try:
            session = parse_session(orig, resp) or parse_coinhive_session(orig, resp)
        except (ValueError, TypeError, KeyError, IndexError, AttributeError, RecursionError):
            session = None
        if session is not None:
            self._methods(view, row, session, signals, flow.carrier.text)
            return True
        return bool(json_messages(orig, limit=1).messages or json_messages(resp, limit=1).messages)

    def _http(self, view: FlowView, row: int, signals: dict[int, _Signals], post: bool) -> None:
        """HTTP POST (getwork and friends, mining headers, a pool's Host) or JSON inside WebSocket frames."""
        orig, resp = view.kept_stream(row, ORIG), view.kept_stream(row, RESP)
        if not post:
            inner = websocket_streams(orig, resp)
            if inner is not None and any(side.lstrip()[:1] in (b"{", b"[") for side in inner):
                try:
                    session = parse_json_session(*inner)
                except (ValueError, TypeError, KeyError, IndexError, AttributeError, RecursionError):
                    session = None
                if session is not None:
                    self._methods(view, row, session, signals, "websocket")
            return
        session = parse_session(orig, resp)
        if session is not None:
            self._methods(view, row, session, signals)
            return
        for msg in http_messages(orig, limit=2):
            host = msg.headers.get("host", "").split(":")[0].lower()
            hit = self.pools.match(host)
            if hit is not None:
                sig = signals.setdefault(row, _Signals())
                sig.pool, sig.pool_source, sig.web_visit = host, "http_host", True
                sig.add("M3", self.params.w_web_visit,
                        f"an HTTP request to '{host}', a mining pool domain ({hit.suffix}: "
                        f"{self.pools.cite(hit.sources)}), that carries no mining messages: the pool's web site or "
                        f"API, not mining by itself", Severity.LOW)
                return

    def _methods(self, view: FlowView, row: int, s: StratumSession, signals: dict[int, _Signals],
                 carrier: str | None = None) -> None:
        p = self.params
        sig = signals.setdefault(row, _Signals())
        sig.session, sig.carrier = s, carrier
        miner = "sandbox side" if s.miner_is_orig else "responder side"
        what = _FAMILY_TEXT.get(s.family, s.family)
        parts = []
        if s.miner_methods:
            parts.append(f"the {miner} (miner) sent {', '.join(s.miner_methods[:8])}")
        if s.pool_methods or s.pool_answers:
            pool_said = list(s.pool_methods[:8]) + [a for a in s.pool_answers if a != "status OK" or not s.pool_methods]
            parts.append(f"the pool side sent {', '.join(pool_said[:8])}")
        if s.extensions and s.family == Family.GETWORK_HTTP:
            parts.append("HTTP mining headers " + "; ".join(s.extensions[:3]))
        text = f"{what} JSON-RPC in the first payload bytes" + (f" (inside {carrier})" if carrier else "") + \
            ": " + "; ".join(parts)
        if s.shares:
            text += f"; {s.shares} share submission(s)"
        if s.jobs:
            text += f"; {s.jobs} job(s) pushed by the pool"
        if s.login:
            text += f"; login '{s.login}'"
        if s.agent:
            text += f"; miner software '{s.agent}'"
        if s.both_sides:
            sig.add("M1", p.w_methods_both, text + ": a working mining session", Severity.CRITICAL, proof=True)
        else:
            text += ("; the pool side sent nothing recognisable (connection attempt or capture cut)"
                     if s.miner_methods else "; the miner side's messages were not seen")
            sig.add("M1", p.w_methods, text, Severity.HIGH, proof=True)
        if s.pool_host and sig.pool is None:
            sig.pool, sig.pool_source = s.pool_host, ("http_host" if s.family == Family.GETWORK_HTTP else "subscribe")

    # ---- M3
    def _pool(self, name: str | None) -> PoolDomain | None:
        """The pool list entry a server name falls under (cached: a batch names the same servers again and again)."""
        if name is None:
            return None
        hit = self._pool_of_name.get(name, False)
        if hit is False:
            hit = self.pools.match(name)
            if len(self._pool_of_name) >= 65536:
                self._pool_of_name.clear()
            self._pool_of_name[name] = hit
        return hit

    def _sni(self, view: FlowView, row: int, signals: dict[int, _Signals]) -> None:
        hello = parse_client_hello(view.kept_stream(row, ORIG))
        hit = self.pools.match(hello.sni) if hello is not None else None
        if hit is None:
            return
        sig = signals.setdefault(row, _Signals())
        sig.pool, sig.pool_source = hello.sni, "sni"
        web = [a for a in hello.alpn if a.lower() in _HTTP_ALPN]
        note = f"; {hit.note}" if hit.note else ""
        if web:
            sig.web_visit = True
            sig.add("M3", self.params.w_web_visit,
                    f"TLS to '{hello.sni}' (server name), a mining pool domain ({hit.suffix}: "
                    f"{self.pools.cite(hit.sources)}{note}), negotiating {'/'.join(web)}: a visit to the pool's "
                    f"website, not mining by itself", Severity.LOW)
        else:
            sig.add("M3", self.params.w_pool_name,
                    f"TLS to '{hello.sni}' (server name), a mining pool domain ({hit.suffix}: "
                    f"{self.pools.cite(hit.sources)}{note}), with no web protocol offered (ALPN "
                    f"{'/'.join(hello.alpn) or 'none'}): stratum+ssl, the content is encrypted",
                    Severity.HIGH, proof=True)

    def _watch_dns(self, view: FlowView) -> np.ndarray:
        """Remember the addresses that DNS answers in this batch gave for pool names (answers to questions under a
        listed suffix, matched in the batch's message table). The engine has bound them already; this list only lets
        the array prefilter find the flows to those addresses. Returns the low 64 bits of the new addresses."""
        t = view.dns.table
        m, a = t.messages, t.answers
        if not len(a):
            return np.zeros(0, np.uint64)
        if self._pool_suffixes is None:
            self._pool_suffixes = SuffixSet.of(self.pools.domains)
        answers = np.flatnonzero(((a["rtype"] == 1) & (a["rdlength"] == 4)) | ((a["rtype"] == 28) & (a["rdlength"] == 16)))
        msg = a["message"][answers]
        answers = answers[(m["direction"][msg] == 1) & (m["is_response"][msg] == 1) & (m["qname"][msg] >= 0)]
        if not len(answers):
            return np.zeros(0, np.uint64)
        answers = answers[self._pool_suffixes.match(t, m["qname"][a["message"][answers]]) >= 0]
        group, first = unique_names(t, a["name"][answers])
        texts = [name_text(t, int(off)) for off in a["name"][answers][first].tolist()]
        for (hi, lo), g in zip(zip(a["addr_hi"][answers].tolist(), a["addr_lo"][answers].tolist()), group.tolist()):
            self._watch[(hi, lo)] = texts[g]
            self._watch.move_to_end((hi, lo))
            self._watch_dirty = True
        while len(self._watch) > self.params.dns_watch:
            self._watch.popitem(last=False)
        return np.unique(a["addr_lo"][answers])

    def _watched_rows(self, recs: np.ndarray, mask: np.ndarray) -> np.ndarray:
        if self._watch_dirty:
            self._watch_lo = np.unique(np.array([lo for _, lo in self._watch], np.uint64))
            self._watch_dirty = False
        hit = mask & (_member(recs["resp_lo"], self._watch_lo) | _member(recs["orig_lo"], self._watch_lo))
        return np.flatnonzero(hit)

    def _dns_name(self, view: FlowView, row: int, signals: dict[int, _Signals]) -> None:
        rec = view.records[row]
        client, server = _roles(rec, signals.get(row))
        v = int(rec["ip_version"])
        if (int(rec[server + "_hi"]), int(rec[server + "_lo"])) not in self._watch:
            return
        sandbox = _address(int(rec[client + "_hi"]), int(rec[client + "_lo"]), v)
        dst = _address(int(rec[server + "_hi"]), int(rec[server + "_lo"]), v)
        ts = float(rec["first_seen_ns"]) / 1e9
        names = [(n, h) for n in self.binding.names(sandbox, dst, ts) for h in (self.pools.match(n),) if h]
        if not names:
            return
        # the flow may name its server itself: a different name means a shared address (CDN, hosting), not the pool
        orig = view.kept_stream(row, ORIG if client == "orig" else RESP)
        named, web = None, False
        if orig[:1] == b"\x16":
            hello = parse_client_hello(orig)
            if hello is not None:
                named, web = hello.sni, any(a.lower() in _HTTP_ALPN for a in hello.alpn)
        elif orig[:4] in HTTP_METHODS:
            web = True
            msgs = http_messages(orig, limit=1)
            named = msgs[0].headers.get("host", "").split(":")[0].lower() or None if msgs else None
        if named and self.pools.match(named) is None:
            return
        self._dns_evidence(signals.setdefault(row, _Signals()), dst, names, web)

    def _dns_evidence(self, sig: _Signals, dst: str, names: list, web: bool, late: bool = False) -> None:
        name, hit = names[0]
        others = f" (and {len(names) - 1} more pool name(s))" if len(names) > 1 else ""
        text = (f"DNS answers that the sandbox received bind {dst} to '{name}'{others}, a mining pool domain "
                f"({hit.suffix}: {self.pools.cite(hit.sources)})")
        if late:
            text += (" (the answer's DNS flow ended after this flow had been reported, so this finding comes late: "
                     "DNS flows wait for the UDP idle timeout)")
        if sig.pool is None or sig.pool_source != "sni":
            sig.pool, sig.pool_source = name, "dns"
        if web or sig.web_visit:
            sig.web_visit = True
            sig.add("M3", self.params.w_web_visit, text + ": web traffic to the pool's site, not mining by itself",
                    Severity.LOW)
        elif sig.session is not None or (sig.pool_source == "sni" and sig.proof):
            sig.add("M3", 0.5, text, Severity.LOW)  # already proven; this names the pool
        else:
            sig.add("M3", self.params.w_pool_name, text + ", and the flow is not web traffic", Severity.HIGH,
                    proof=True)

    # ---- flows reported before the DNS answer that explains them was read
    def _hold(self, view: FlowView, signals: dict[int, _Signals], candidates: np.ndarray, tls: np.ndarray) -> None:
        """Keep the records of flows that nothing explained (opaque TCP, TLS naming no server) in a fixed ring, so
        that a DNS answer read in a later batch can still name their pool (a UDP DNS flow ends only after the idle
        timeout, often after the TCP connection that used its answer)."""
        if signals:
            candidates = candidates.copy()
            candidates[[r for r, sig in signals.items() if sig.parts]] = False
        rows = np.flatnonzero(candidates)[-len(self._hold_ring):]
        if not len(rows):
            return
        at = (self._hold_pos + np.arange(len(rows))) % len(self._hold_ring)
        self._hold_ring[at] = view.records[rows]
        self._hold_tls[at] = tls[rows]
        self._hold_pos = int((self._hold_pos + len(rows)) % len(self._hold_ring))

    def _release_held(self, pools: np.ndarray, result: BatchResult) -> None:
        ring = self._hold_ring
        if ring is None:
            return
        live = ring["first_seen_ns"] > 0
        for i in np.flatnonzero(live & (_member(ring["resp_lo"], pools) | _member(ring["orig_lo"], pools))).tolist():
            rec = copy_record(ring[i])
            ring[i]["first_seen_ns"] = 0
            client, server = _roles(rec, None)
            if (int(rec[server + "_hi"]), int(rec[server + "_lo"])) not in self._watch:
                continue
            v = int(rec["ip_version"])
            sandbox = _address(int(rec[client + "_hi"]), int(rec[client + "_lo"]), v)
            dst = _address(int(rec[server + "_hi"]), int(rec[server + "_lo"]), v)
            names = [(n, h) for n in self.binding.names(sandbox, dst, float(rec["first_seen_ns"]) / 1e9)
                     for h in (self.pools.match(n),) if h]
            if not names:
                continue
            sig = _Signals()
            self._dns_evidence(sig, dst, names, web=False, late=True)
            port = self.pools.port(int(rec[server + "_port"]))
            if port is not None:
                sig.add("M6", self.params.w_port, f"port {port.port} is a well-known mining pool port "
                                                  f"({self.pools.cite(port.sources)})", Severity.LOW)
            self._remember(rec, sig)
            self._report(rec, sig, result, None, bool(self._hold_tls[i]))

    # ---- M2
    def _sv2(self, view: FlowView, row: int, signals: dict[int, _Signals]) -> None:
        sizes, _ = view.early_sequence(row)
        hs = sv2_handshake(sizes, view.kept_stream(row, ORIG))
        if hs is None:
            return
        rec = view.records[row]
        port = int(rec["resp_port"])
        sig = signals.setdefault(row, _Signals())
        sig.sv2 = hs
        text = (f"the Stratum V2 Noise handshake by its sizes: the sandbox side opened with exactly {hs.act1} B "
                f"(an ElligatorSwift key, no TLS record header) and got exactly {hs.act2} B back (Noise NX act 2)")
        if hs.records_after:
            text += f", then {hs.records_after} encrypted frames of at least 38 B (22 + n + 16)"
        if port in (8333, 18333, 38333, 48333):
            sig.add("M2", self.params.w_sv2_bitcoin_port, text + f"; but port {port} is Bitcoin's, whose P2P v2 "
                    f"(BIP324) also opens with a 64-byte key", Severity.MEDIUM)
        else:
            sig.add("M2", self.params.w_sv2, text, Severity.HIGH, proof=True)

    # ---- M4 / M5
    def _behaviour(self, view: FlowView, row: int, signals: dict[int, _Signals]) -> None:
        p = self.params
        rec = view.records[row]
        score, parts = cesnet_score(rec)
        client, _ = _roles(rec, signals.get(row))
        pool_dir = RESP if client == "orig" else ORIG
        miner = "orig_" if client == "orig" else "resp_"
        client_mean = float(rec[miner + "payload_mean"])
        sizes, dt_us = view.early_sequence(row)
        bursts, median, cv = push_rhythm(sizes, dt_us, pool_dir, p.burst_gap_s)
        conv = view.conversation(row)
        duration = (int(rec["last_seen_ns"]) - int(rec["first_seen_ns"])) / 1e9
        life_pushes = (conv.bursts_led[pool_dir] + conv.pingpongs[pool_dir]) if conv is not None else 0
        m5 = (bursts >= p.push_min_bursts and p.push_iat_s[0] <= median <= p.push_iat_s[1] and cv <= p.push_max_cv
              and p.client_min_mean <= client_mean < p.client_max_mean)
        if not (m5 and score >= p.cesnet_threshold):
            return
        sig = signals.setdefault(row, _Signals())
        sig.behaviour = {"cesnet_score": score, "pool_pushes": int(bursts), "push_interval_median_s": round(median, 1),
                         "push_interval_cv": round(cv, 2), "client_payload_mean": round(client_mean, 1),
                         "duration_s": round(duration, 1), "pushes_over_life": int(life_pushes)}
        sig.add("M5", p.w_push,
                f"the remote side pushed {bursts} bursts at a median interval of {median:.1f} s (CV {cv:.2f}) in the "
                f"first payload packets ({life_pushes} over {duration:.0f} s), while the sandbox side's messages "
                f"average {client_mean:.0f} B: the rhythm of a pool sending jobs (15-120 s) to a miner that submits "
                f"small shares", Severity.MEDIUM)
        sig.add("M4", min(p.w_cesnet_max, p.w_cesnet_step * (score - 6)),
                f"CESNET-style miner score {score}/13 (threshold {p.cesnet_threshold}): " + ", ".join(parts),
                Severity.MEDIUM)

    # ---- M5 inside TLS
    def _tls_shape(self, view: FlowView, row: int, signals: dict[int, _Signals]) -> None:
        """A pool's two rhythms seen through TLS records (issue 12: decide from about 5 pushes): jobs the pool
        pushes unasked, all of one size, at a steady pace; and shares the miner submits, all of one size, each
        answered at once by one small acknowledgement of one size. A client that asks for web protocols (ALPN h2 or
        http/1.1: browsers, curl, gRPC) is not judged."""
        p = self.params
        hello = parse_client_hello(view.kept_stream(row, ORIG))
        if hello is not None and any(a in WEB_ALPN for a in hello.alpn):
            return
        sizes, dt_us = view.early_sequence(row)
        found = tls_pool_rhythm(sizes.tolist(), (dt_us / 1e6).tolist(), p)
        if found is None:
            return
        pushes, push_size, push_gap, submits, submit_size, ack_size = found
        sig = signals.setdefault(row, _Signals())
        sig.carrier = sig.carrier or "tls"  # the records' sizes are read through TLS, as for SSH inside TLS
        sig.behaviour = {"pool_pushes": pushes, "push_record_bytes": push_size, "push_interval_median_s": push_gap,
                         "submits": submits, "submit_record_bytes": submit_size, "ack_record_bytes": ack_size}
        traits = hello_traits(hello, int(view.records[row]["resp_port"]), view.ja4_of(row))
        sig.add("M5", p.w_push,
                f"inside TLS ({traits}) the remote side pushed {pushes} records of {push_size} B unasked "
                f"every {push_gap:.1f} s while the sandbox side sent {submits} records of {submit_size} B, each "
                f"answered at once by {ack_size} B: a pool's jobs and a miner's acknowledged shares, read from "
                f"record sizes and timing alone", Severity.MEDIUM)

    # ---- C1
    def _compute(self, view: FlowView, candidates: np.ndarray, signals: dict[int, _Signals]) -> None:
        """Flows of sandboxes that keep their CPU or GPU busy: a mining finding already made gains the compute as
        evidence and confidence; a long opaque flow with a steady remote-led rhythm to a destination the rules do
        not allow becomes a medium finding on its own."""
        p = self.params
        recs = view.records
        rules = self.rules.current
        outbound = rules.outbound(recs)
        for row in sorted(set(signals) | set(np.flatnonzero(candidates & outbound).tolist())):
            rec = recs[row]
            sig = signals.get(row)
            client = _roles(rec, sig)[0]
            usage = self.compute.usage((int(rec[client + "_hi"]) << 64) | int(rec[client + "_lo"]),
                                       int(rec[client + "_mac"]))
            if usage is None or not self.compute.busy(usage) or usage.busy_for_s < p.compute_busy_s:
                continue
            what = (f"{usage.cpu_cores:.1f} of its {usage.cpu_limit_cores:.1f} CPU cores"
                    + (f" and GPUs at {usage.gpu_percent:.0f} %" if usage.gpu_percent else "")
                    + f" busy for {usage.busy_for_s:.0f} s ({usage.source})")
            if sig is not None and sig.parts:
                sig.compute = usage.evidence()
                sig.add("C1", p.w_compute_support, f"the sandbox keeps {what} while it holds this connection",
                        Severity.LOW)
                continue
            if allow_match(rules, self.binding, rec) is not None:
                continue  # an allowed destination: its rhythm is the service's (beacon notes it)
            sizes, dt_us = view.early_sequence(row)
            pool_dir = RESP if client == "orig" else ORIG
            bursts, median, cv = push_rhythm(sizes, dt_us, pool_dir, p.burst_gap_s)
            if bursts < p.compute_min_pushes or not p.compute_push_gap_s[0] <= median <= p.compute_push_gap_s[1] \
                    or cv > p.push_max_cv:
                continue
            duration = (int(rec["last_seen_ns"]) - int(rec["first_seen_ns"])) / 1e9
            sig = signals.setdefault(row, _Signals())
            sig.compute = usage.evidence()
            sig.behaviour = {"pool_pushes": int(bursts), "push_interval_median_s": round(median, 1),
                             "push_interval_cv": round(cv, 2), "duration_s": round(duration, 1)}
            sig.add("C1", p.w_compute_alone,
                    f"the sandbox keeps {what} while this opaque connection to a destination the rules do not "
                    f"allow has lasted {duration:.0f} s with {bursts} bursts led by the remote side every "
                    f"{median:.1f} s (CV {cv:.2f}): a pool feeding jobs to a miner that computes",
                    Severity.MEDIUM)

    # ---- M7
    def _remember(self, rec: np.void, sig: _Signals) -> None:
        client, server = _roles(rec, sig)
        key = (int(rec[client + "_hi"]), int(rec[client + "_lo"]), int(rec[server + "_hi"]), int(rec[server + "_lo"]))
        ts = float(rec["first_seen_ns"]) / 1e9
        end = float(rec["last_seen_ns"]) / 1e9
        prior = self._proven.pop(key, None)
        if prior is None:
            self._proven_new.append(key)
        protocol = sig.session.family if sig.session else (Family.STRATUM_V2 if sig.sv2 else "tls" if sig.pool_source ==
                                                           "sni" else None)
        if prior is None:
            prior = _Proven(ts, end, sig.severity, sig.score, protocol, sig.pool,
                            int(rec[server + "_port"]), self._capture)
        else:
            prior.first, prior.last = min(prior.first, ts), max(prior.last, end)
            if sig.score > prior.score:
                prior.severity, prior.score = sig.severity, sig.score
            prior.protocol = prior.protocol or protocol
            prior.pool = prior.pool or sig.pool
        self._proven[key] = prior
        while len(self._proven) > self.params.pair_memory:
            self._proven.popitem(last=False)

    def _paired_rows(self, recs: np.ndarray, mask: np.ndarray) -> np.ndarray:
        """Rows between a proven pair, either way round: the pool's address first, then a 64-bit pair hash (an exact
        dictionary check follows in _inherit). The arrays grow by the pairs proven since the last batch and are
        rebuilt only when evictions have left them twice as long as the memory."""
        if self._proven_new:
            keys = np.array(self._proven_new, np.uint64).reshape(-1, 4)
            self._proven_new = []
            if len(self._proven_pairs) + len(keys) > 2 * len(self._proven) + 64:
                keys = np.array(list(self._proven), np.uint64).reshape(-1, 4)
                self._proven_pools, self._proven_pairs = np.zeros(0, np.uint64), np.zeros(0, np.uint64)
            self._proven_pools = np.union1d(self._proven_pools, keys[:, 3])
            self._proven_pairs = np.union1d(self._proven_pairs,
                                            _pair_hash(keys[:, 0], keys[:, 1], keys[:, 2], keys[:, 3]))
        rows = np.flatnonzero(mask & (_member(recs["resp_lo"], self._proven_pools)
                                      | _member(recs["orig_lo"], self._proven_pools)))
        if not len(rows):
            return rows
        r = recs[rows]
        fwd = _pair_hash(r["orig_hi"], r["orig_lo"], r["resp_hi"], r["resp_lo"])
        rev = _pair_hash(r["resp_hi"], r["resp_lo"], r["orig_hi"], r["orig_lo"])
        return rows[_member(fwd, self._proven_pairs) | _member(rev, self._proven_pairs)]

    def _inherit(self, view: FlowView, row: int, signals: dict[int, _Signals]) -> None:
        rec = view.records[row]
        first = view.kept_stream(row, ORIG)
        if first[:2] == b"\x16\x03":
            hello = parse_client_hello(first)
            if hello is not None and hello.sni and self.pools.match(hello.sni) is None:
                return  # TLS that names another server: a shared address (CDN, hosting) explains it
        o = (int(rec["orig_hi"]), int(rec["orig_lo"]))
        r = (int(rec["resp_hi"]), int(rec["resp_lo"]))
        prior = self._proven.get(o + r) or self._proven.get(r + o)
        if prior is None:
            return
        ts = float(rec["first_seen_ns"]) / 1e9
        if ts - prior.last > self.params.pair_ttl_s or prior.first - ts > self.params.pair_ttl_s:
            return
        v = int(rec["ip_version"])
        sig = signals.setdefault(row, _Signals())
        sig.inherited = {"proven_at": round(prior.first, 6), "protocol": prior.protocol, "pool": prior.pool,
                         "port": prior.port}
        sig.pool = sig.pool or prior.pool
        sig.pool_source = sig.pool_source or ("pair" if prior.pool else None)
        what = _FAMILY_TEXT.get(prior.protocol, prior.protocol or "mining")
        sig.add("M7", prior.score * self.params.inherit_factor,
                f"{_address(*o, v)} and {_address(*r, v)} were already proven to be a miner and its pool "
                f"({what} on port {prior.port}, first seen at {prior.first:.3f}): this flow between the same pair "
                f"inherits that verdict (pair memory, like nDPI's mining cache)",
                min(prior.severity, Severity.HIGH))

    # ---- output
    def _report(self, rec: np.void, sig: _Signals, result: BatchResult, row: int | None = None,
                tls: bool = False) -> None:
        """One finding; `row` (this batch's) for flow annotations, None for a flow of an earlier view."""
        s = sig.session
        client, server = _roles(rec, sig)
        v = int(rec["ip_version"])
        if s is not None:
            protocol = s.family
        elif sig.sv2 is not None:
            protocol = Family.STRATUM_V2
        elif tls:
            protocol = "tls"
        else:
            protocol = (sig.inherited or {}).get("protocol") or "unknown"
        mining = {
            "protocol": protocol,
            "signals": sorted({code for code, _, _ in sig.parts}),
            "methods": list(s.methods) if s else [],
            "pool": sig.pool,
            "pool_source": sig.pool_source,
            "login": s.login if s else None,
            "worker": s.worker if s else None,
            "agent": s.agent if s else None,
            "coin": s.coin if s else None,
            "algorithm": s.algorithm if s else None,
            "miner_ip": _address(int(rec[client + "_hi"]), int(rec[client + "_lo"]), v),
            "pool_ip": _address(int(rec[server + "_hi"]), int(rec[server + "_lo"]), v),
            "pool_port": int(rec[server + "_port"]),
        }
        if s is not None:
            mining["shares"] = s.shares
            mining["jobs"] = s.jobs
            if s.extensions:
                mining["extensions"] = list(s.extensions)
        if sig.carrier:
            mining["carrier"] = sig.carrier
        if sig.behaviour:
            mining["behaviour"] = sig.behaviour
        if sig.inherited:
            mining["inherited"] = sig.inherited
        if sig.compute:
            mining["compute"] = sig.compute
        if row is not None and s is not None:
            result.annotate(row, app="getwork" if s.family == Family.GETWORK_HTTP else "stratum")
        elif row is not None and sig.sv2 is not None:
            result.annotate(row, app="stratum_v2")
        ordered = sorted(sig.parts, key=lambda part: -part[1])
        result.findings.append(Finding(
            kind=FindingKind.MINING, severity=sig.severity, score=sig.score,
            evidence=tuple(text for _, _, text in ordered), flow=copy_record(rec), capture=self._capture,
            details={"mining": mining}))


def _roles(rec: np.void, sig: _Signals | None) -> tuple[str, str]:
    """("orig", "resp") when the originator is the miner/sandbox side, else ("resp", "orig"): the messages say so
    when they were read; otherwise a SYN, else the lower port is the server's."""
    if sig is not None and sig.session is not None:
        return ("orig", "resp") if sig.session.miner_is_orig else ("resp", "orig")
    if int(rec["flow_flags"]) & int(FlowFlag.SAW_SYN) or int(rec["orig_port"]) >= int(rec["resp_port"]):
        return "orig", "resp"
    return "resp", "orig"


__all__ = ["MiningDetector", "Params", "cesnet_score", "push_rhythm", "tls_pool_rhythm"]
