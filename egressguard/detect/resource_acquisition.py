"""Resource acquisition: a sandbox reaching for money or compute (`resource_acquisition`, issue 16).

A flow out of a sandbox is reported when
* its server name (TLS SNI, HTTP Host, or a name the sandbox's own DNS answers bound to the destination address)
  falls under an entry of policy/acquisition.toml: cloud billing, compute provisioning, payment, crypto exchange or
  hosted wallet RPC, each entry citing the provider's documentation (high);
* it goes to a node RPC port of that list (bitcoind 8332, geth 8545) carrying a JSON or HTTP request (high);
* its plaintext request holds a JSON-RPC wallet or transaction method (`eth_sendRawTransaction`, `sendtoaddress`,
  `walletpassphrase`, ...): high, critical for a method that moves funds, unlocks a wallet or exports a key.
A rules file's [[acquisition]] entries allow categories or endpoints for the sandboxes that need them.

Vectorised: server names are located by the FlowView (numpy), each distinct name is matched once per batch; DNS
answers are matched per distinct question name and their addresses kept for a numpy membership test; payload is
searched only in flows whose originator's first kept bytes are "{", "[" or "POST ".
"""
from __future__ import annotations

import re
from collections import OrderedDict
from dataclasses import dataclass, field

import numpy as np

from egressguard.detect.base import BatchResult, DetectorContext, LiveMode, noisy_or
from egressguard.flows.view import SOURCE_NAMES, FlowView
from egressguard.netaddr import address_text, endpoint
from egressguard.payload.dns_table import name_text, unique_names
from egressguard.payload.signatures import starts_with
from egressguard.policy.acquisition import Endpoint
from egressguard.schema import AppTag, Finding, FindingKind, Severity, copy_record

ORIG = 0
# JSON-RPC methods that move funds, unlock a wallet or export a key (critical), from the Ethereum execution API
# (ethereum.github.io/execution-apis), geth's personal namespace (geth.ethereum.org/docs/interacting-with-geth/rpc)
# and Bitcoin Core's wallet RPCs (developer.bitcoin.org/reference/rpc)
CRITICAL_METHODS = frozenset({
    "eth_sendRawTransaction", "eth_sendTransaction", "eth_signTransaction", "personal_unlockAccount",
    "personal_sendTransaction", "personal_signTransaction", "sendtoaddress", "sendmany", "sendrawtransaction",
    "walletpassphrase", "signrawtransactionwithwallet", "signrawtransactionwithkey", "send", "sendall",
    "walletcreatefundedpsbt", "walletprocesspsbt", "dumpprivkey", "dumpwallet", "importprivkey",
})
# wallet reads and message signing (high): what an agent does before it moves funds
WALLET_METHODS = frozenset({
    "eth_sign", "personal_sign", "eth_signTypedData", "eth_signTypedData_v4", "eth_accounts", "personal_listAccounts",
    "personal_newAccount", "getbalance", "getbalances", "getnewaddress", "listunspent", "getwalletinfo", "listwallets",
    "loadwallet", "createwallet", "listtransactions",
})
METHODS = CRITICAL_METHODS | WALLET_METHODS
# a JSON key "method" and its string value (JSON-RPC 2.0 section 4 and Bitcoin Core's JSON-RPC 1.0 dialect)
_METHOD_RE = re.compile(rb'"method"\s*:\s*"([A-Za-z0-9_]{1,64})"')
_PREFIX = 8
_MAX_SCAN = 16384  # bytes of the originator's kept stream searched for methods


def find_methods(data: bytes) -> list[str]:
    """Wallet and transaction JSON-RPC methods named in `data` (request bodies, batches), in order, each once."""
    out: list[str] = []
    for m in _METHOD_RE.finditer(data[:_MAX_SCAN]):
        name = m.group(1).decode("ascii")
        if name in METHODS and name not in out:
            out.append(name)
    return out


@dataclass(frozen=True)
class Params:
    w_name: float = 0.85  # a listed API name in the flow itself (SNI, Host): the sandbox asked for that service
    w_dns: float = 0.8  # a listed name bound to the address by the sandbox's DNS answers
    w_port: float = 0.6  # a node RPC port with a request on it
    w_method: float = 0.95  # a wallet method in plaintext
    w_critical: float = 0.99  # a method that moves funds or unlocks a wallet
    dns_watch: int = 65536  # addresses bound to listed names, kept for the array prefilter


@dataclass
class _Hit:
    parts: list = field(default_factory=list)  # (weight, evidence sentence)
    category: str | None = None
    name: str | None = None
    name_from: str | None = None
    entry: Endpoint | None = None
    listed: str | None = None
    methods: list = field(default_factory=list)
    severity: Severity = Severity.HIGH


class ResourceAcquisitionDetector:
    """Reports flows to billing, provisioning, payment, exchange and wallet endpoints (`resource_acquisition`)."""

    name = "resource_acquisition"
    kinds = (FindingKind.RESOURCE_ACQUISITION,)
    live = LiveMode.OPEN_FLOWS  # a payment or a launch is reported while its connection lasts

    def __init__(self, ctx: DetectorContext, params: Params = Params()):
        self.rules = ctx.rules
        self.binding = ctx.binding
        self.endpoints = ctx.acquisition
        self.params = params
        self._capture = ""
        self._of_name: dict[str, tuple[str, Endpoint] | None] = {}
        self._watch: OrderedDict[tuple[int, int], str] = OrderedDict()
        self._watch_lo = np.zeros(0, np.uint64)
        self._watch_dirty = False

    def start(self, capture: str) -> None:
        self._capture = capture

    def finish(self) -> BatchResult:
        return BatchResult()

    def _match(self, name: str | None) -> tuple[str, Endpoint] | None:
        if not name:
            return None
        if name not in self._of_name:
            if len(self._of_name) >= 65536:
                self._of_name.clear()
            self._of_name[name] = self.endpoints.match(name)
        return self._of_name[name]

    # ---- batch
    def inspect(self, view: FlowView) -> BatchResult:
        result = BatchResult()
        recs = view.records
        if not len(recs):
            return result
        rules = self.rules.current
        if self.endpoints.endpoints:
            self._watch_dns(view)
        out = rules.outbound(recs) & ((recs["proto"] == 6) | (recs["proto"] == 17)) & \
            (recs["orig_payload_bytes"] > 0)
        if not out.any():
            return result
        hits: dict[int, _Hit] = {}
        names = view.server_names
        named = out & (names.source > 0)
        if self.endpoints.endpoints and named.any():
            rows = np.flatnonzero(named)
            distinct, inverse = np.unique(names.name[rows].astype(str), return_inverse=True)
            matched = [self._match(n) for n in distinct.tolist()]
            for i, row in enumerate(rows.tolist()):
                m = matched[inverse[i]]
                if m is not None:
                    self._name_hit(hits.setdefault(row, _Hit()), names.name[row], SOURCE_NAMES[int(names.source[row])],
                                   m, self.params.w_name)
        # names bound by DNS, for flows that do not name another server themselves
        if self._watch:
            if self._watch_dirty:
                self._watch_lo = np.unique(np.array([lo for _, lo in self._watch], np.uint64))
                self._watch_dirty = False
            idx = np.minimum(np.searchsorted(self._watch_lo, recs["resp_lo"]), max(len(self._watch_lo) - 1, 0))
            bound = out & (names.source == 0) & (self._watch_lo[idx] == recs["resp_lo"])
            for row in np.flatnonzero(bound).tolist():
                self._dns_name(recs[row], hits, row)
        # node RPC ports carrying a request
        prefix = view.prefix(_PREFIX)
        request = starts_with(prefix, ORIG, b"{") | starts_with(prefix, ORIG, b"[") | \
            starts_with(prefix, ORIG, b"POST ")
        ports = np.array(self.endpoints.ports, np.int64)
        tcp_out = out & (recs["proto"] == 6)
        if len(ports):
            at_port = tcp_out & np.isin(recs["resp_port"], ports) & (request | view.tagged(AppTag.HTTP_REQUEST))
            for row in np.flatnonzero(at_port).tolist():
                entry = self.endpoints.port(int(recs[row]["resp_port"]))
                hit = hits.setdefault(row, _Hit())
                hit.category = hit.category or entry.category
                hit.entry = hit.entry or entry
                hit.parts.append((self.params.w_port, f"a request to port {entry.port}, the {entry.provider} port "
                                                      f"({entry.source})"))
        # JSON-RPC wallet and transaction methods in plaintext requests
        for row in np.flatnonzero(tcp_out & request & (recs["slot"] >= 0)).tolist():
            methods = find_methods(view.kept_stream(row, ORIG))
            if methods:
                self._method_hit(hits.setdefault(row, _Hit()), methods)
        for row, hit in hits.items():
            self._report(recs[row], hit, rules, result, row)
        return result

    # ---- signals
    def _name_hit(self, hit: _Hit, name: str, source: str, match: tuple[str, Endpoint], weight: float) -> None:
        listed, entry = match
        hit.category, hit.name, hit.name_from, hit.entry, hit.listed = entry.category, name, source, entry, listed
        where = {"tls_sni": "TLS server name", "http_host": "HTTP Host", "dns": "DNS answer"}[source]
        note = f"; {entry.note}" if entry.note else ""
        hit.parts.append((weight, f"'{name}' ({where}) is a {entry.category} endpoint: {entry.provider} "
                                  f"({listed}, documented at {entry.source}{note})"))

    def _dns_name(self, rec: np.void, hits: dict[int, _Hit], row: int) -> None:
        sandbox, dst = endpoint(rec, "orig"), endpoint(rec, "resp")
        for name in self.binding.names(sandbox, dst, float(rec["first_seen_ns"]) / 1e9):
            m = self._match(name)
            if m is not None:
                hit = hits.setdefault(row, _Hit())
                self._name_hit(hit, name, "dns", m, self.params.w_dns)
                hit.parts[-1] = (hit.parts[-1][0], f"the sandbox's DNS answers bound {address_text(dst)} to "
                                 + hit.parts[-1][1])
                return

    def _method_hit(self, hit: _Hit, methods: list[str]) -> None:
        hit.methods = methods
        critical = [m for m in methods if m in CRITICAL_METHODS]
        if critical:
            hit.severity = Severity.CRITICAL
            hit.parts.append((self.params.w_critical, f"plaintext JSON-RPC wallet call(s) {', '.join(methods)}: "
                                                      f"{', '.join(critical)} move(s) funds, unlock(s) a wallet or "
                                                      "export(s) a key"))
        else:
            hit.parts.append((self.params.w_method, f"plaintext JSON-RPC wallet call(s) {', '.join(methods)}"))
        hit.category = "wallet_rpc" if hit.category in (None, "wallet_rpc") else hit.category

    # ---- findings
    def _report(self, rec: np.void, hit: _Hit, rules, result: BatchResult, row: int) -> None:
        if not hit.parts:
            return
        category = "wallet_rpc" if hit.methods else hit.category
        sandbox = endpoint(rec, "orig")
        for grant in rules.settings.acquisition:
            if grant.covers(category, hit.name) and grant.applies_to(sandbox, int(rec["orig_mac"])):
                result.annotate(row, acquisition_allowed=grant.label())
                return
        acquisition = {"category": category, "name": hit.name, "name_from": hit.name_from,
                       "provider": hit.entry.provider if hit.entry else None,
                       "listed": hit.listed, "source": hit.entry.source if hit.entry else None,
                       "method": hit.methods[0] if hit.methods else None, "methods": hit.methods}
        result.findings.append(Finding(
            kind=FindingKind.RESOURCE_ACQUISITION, severity=hit.severity,
            score=noisy_or(w for w, _ in hit.parts), evidence=tuple(text for _, text in hit.parts),
            flow=copy_record(rec), capture=self._capture,
            details={"category": category, "acquisition": acquisition},
            subject=f"{category}:{hit.name or (hit.methods[0] if hit.methods else '')}"))

    # ---- DNS
    def _watch_dns(self, view: FlowView) -> None:
        """Remember the addresses that this batch's DNS answers gave for listed names (each distinct question name
        matched once); the engine has bound them already, this only lets the array prefilter find the flows."""
        t = view.dns.table
        m, a = t.messages, t.answers
        if not len(a):
            return
        answers = np.flatnonzero(((a["rtype"] == 1) & (a["rdlength"] == 4)) | ((a["rtype"] == 28) &
                                                                                  (a["rdlength"] == 16)))
        msg = a["message"][answers]
        answers = answers[(m["direction"][msg] == 1) & (m["is_response"][msg] == 1) & (m["qname"][msg] >= 0)]
        if not len(answers):
            return
        qnames = m["qname"][a["message"][answers]]
        group, first = unique_names(t, qnames)
        texts = [name_text(t, int(off)) for off in qnames[first].tolist()]
        listed = np.array([self._match(s) is not None for s in texts], bool)
        for i in np.flatnonzero(listed[group]).tolist():
            key = (int(a["addr_hi"][answers[i]]), int(a["addr_lo"][answers[i]]))
            self._watch[key] = texts[group[i]]
            self._watch.move_to_end(key)
            self._watch_dirty = True
        while len(self._watch) > self.params.dns_watch:
            self._watch.popitem(last=False)


__all__ = ["CRITICAL_METHODS", "METHODS", "Params", "ResourceAcquisitionDetector", "find_methods"]
