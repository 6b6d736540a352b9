"""Names bound to addresses by the DNS answers seen on the wire (the way Cilium's toFQDNs policies bind them).

Each sandbox (the client that asked) gets its own binding: IP -> {name: expiry}. A binding lives for the answer's
TTL, raised to a minimum (detection-science 3.2; Cilium's --tofqdns-min-ttl), measured in capture time. CNAME chains
are followed, so the address of a CDN edge is bound to the name the sandbox asked for as well as to the edge name.
`DnsObserver` is the detector that feeds the binding from DNS flows; it reports nothing by itself.
"""
from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

import numpy as np

from egressguard.detect.base import BatchResult
from egressguard.flows import FlowBatch
from egressguard.payload.dns import DnsMessage, parse_tcp_stream, parse_udp_payloads
from egressguard.report.records import format_address

DNS_PORTS = (53, 5353)
MIN_TTL_S = 3600.0  # Cilium's default --tofqdns-min-ttl is 3600 s: short TTLs must not unbind live connections
MAX_BOUND_ADDRESSES = 1 << 20  # bounded memory: the oldest bindings go first


@dataclass
class Binding:
    names: dict[str, float]  # name -> expiry (epoch seconds of capture time)


class DnsBinding:
    """IP -> names per sandbox, from DNS answers; bounded (LRU by address) and expiring by TTL."""

    def __init__(self, min_ttl_s: float = MIN_TTL_S, max_addresses: int = MAX_BOUND_ADDRESSES):
        self.min_ttl_s = min_ttl_s
        self.max_addresses = max_addresses
        self._bound: OrderedDict[tuple[str, str], Binding] = OrderedDict()

    def observe(self, sandbox: str, message: DnsMessage, ts: float) -> None:
        """Bind every address in a response to the names that lead to it (question name and CNAME chain)."""
        if not message.is_response or not message.answers:
            return
        aliases: dict[str, set[str]] = {}  # target -> names that point to it
        for rr in message.answers:
            if rr.rtype == 5 and rr.value:
                aliases.setdefault(rr.value, set()).add(rr.name)
        for rr in message.answers:
            if rr.rtype not in (1, 28) or not rr.value:
                continue
            names = {rr.name}
            frontier = [rr.name]
            while frontier:  # walk the CNAME chain back to the name that was asked for
                name = frontier.pop()
                for alias in aliases.get(name, ()):
                    if alias not in names and len(names) < 32:
                        names.add(alias)
                        frontier.append(alias)
            expiry = ts + max(float(rr.ttl), self.min_ttl_s)
            key = (sandbox, rr.value)
            binding = self._bound.pop(key, None) or Binding({})
            for name in names:
                binding.names[name] = max(binding.names.get(name, 0.0), expiry)
            self._bound[key] = binding
        while len(self._bound) > self.max_addresses:
            self._bound.popitem(last=False)

    def names(self, sandbox: str, address: str, ts: float) -> list[str]:
        """Names bound to `address` for `sandbox` at time ts (sorted)."""
        binding = self._bound.get((sandbox, address))
        if binding is None:
            return []
        return sorted(n for n, expiry in binding.names.items() if expiry >= ts)

    def keep_alive(self, sandbox: str, address: str, until: float) -> None:
        """A flow to `address` is still open at `until`: its names stay bound at least that long."""
        binding = self._bound.get((sandbox, address))
        if binding is not None:
            for name, expiry in binding.names.items():
                binding.names[name] = max(expiry, until)


class DnsObserver:
    """Feeds a DnsBinding from the DNS flows of each batch (UDP and TCP, ports 53 and 5353)."""

    name = "dns"

    def __init__(self, binding: DnsBinding):
        self.binding = binding

    def inspect(self, batch: FlowBatch, capture: str) -> BatchResult:
        recs = batch.records
        dns = np.isin(recs["resp_port"], DNS_PORTS) & np.isin(recs["proto"], (6, 17)) & (recs["slot"] >= 0)
        for row in np.flatnonzero(dns):
            rec = recs[row]
            client = format_address(int(rec["orig_hi"]), int(rec["orig_lo"]), int(rec["ip_version"]))
            if int(rec["proto"]) == 17:
                messages = parse_udp_payloads(batch.kept_payload(int(row), 1))
            else:
                messages = parse_tcp_stream(batch.kept_stream(int(row), 1))
            ts = float(rec["first_seen_ns"]) / 1e9
            for message in messages:
                self.binding.observe(client, message, ts)
        return BatchResult()
