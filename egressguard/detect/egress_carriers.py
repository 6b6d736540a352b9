"""The allowlist applied to what a sandbox asks its proxy for: the target of an HTTP CONNECT, a SOCKS request or a
WebSocket relay URI (payload/carriers.py).

A sandbox allowed to reach its proxy can ask the proxy for any host; the flow on the wire (sandbox -> proxy) is
allowed, so the question the rules answer is about the inner target. It is judged like a destination (egress.py):
a deny entry matching its name or address -> `denied`; an address in a class treated as deny -> `address_class`; an
allow entry (CIDR, class, or name with its port) -> allowed; a name DNS bound for the sandbox but not allowed ->
`not_allowlisted`; otherwise `unbound_ip` (the sandbox resolved nothing itself: the proxy did, or it asked by
address). One finding per (sandbox, proxy, target, reason) per capture; the finding's flow fields stay those of the
connection on the wire, the target and the carrier chain go in `carrier_target` and `carrier`. Python over the few
rows that have a carrier target.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from egressguard.detect.egress_findings import SCORE, Reason
from egressguard.flows.view import FlowView
from egressguard.netaddr import address_text, endpoint, halves, parse_address
from egressguard.policy.allowlist import Allowlist, FlowContext
from egressguard.schema import Finding, FindingKind, Severity, copy_record, proto_name

MAX_GROUPS = 500  # findings of their own per capture (egress.Params.max_findings)


@dataclass
class _Group:
    rec: np.void
    reason: Reason
    severity: int
    chain: tuple[str, ...]
    target: str
    why: str
    flows: int = 0
    bytes: int = 0
    first_ns: int = 0
    last_ns: int = 0
    ports: set = field(default_factory=set)
    deny_rule: str | None = None


class CarrierTargets:
    """Judges carrier targets batch by batch and reports them when the capture (or a live interval) ends."""

    def __init__(self, binding):
        self.binding = binding
        self._groups: dict[tuple, _Group] = {}

    def inspect(self, view: FlowView, rules: Allowlist, outbound: np.ndarray) -> None:
        """Judge the carrier targets of the outbound rows (bool mask over the view) of one batch."""
        car = view.carriers
        rows = [r for r in car.rows.tolist() if outbound[r] and car.flows[r].carrier.targets]
        if not rows:
            return
        recs = view.records
        for row in rows:
            rec = recs[row]
            flow = car.flows[row]
            for carrier, host, port in flow.carrier.targets:
                verdict = self._judge(rules, rec, host, port)
                if verdict is None:
                    continue
                reason, severity, why, deny_rule = verdict
                target = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
                key = (endpoint(rec, "orig"), endpoint(rec, "resp"), target, reason)
                group = self._groups.get(key)
                if group is None:
                    if len(self._groups) >= MAX_GROUPS:
                        continue
                    group = self._groups[key] = _Group(copy_record(rec), reason, severity, flow.chain, target, why,
                                                       first_ns=int(rec["first_seen_ns"]), deny_rule=deny_rule)
                group.flows += 1
                group.bytes += int(rec["orig_bytes"]) + int(rec["resp_bytes"])
                group.first_ns = min(group.first_ns, int(rec["first_seen_ns"]))
                group.last_ns = max(group.last_ns, int(rec["last_seen_ns"]))
                group.ports.add((int(rec["proto"]), int(rec["resp_port"])))

    def _judge(self, rules: Allowlist, rec: np.void, host: str, port: int):
        """(reason, severity, why, deny rule) for one target, or None when the rules allow it."""
        one = rec[None].copy()
        one["resp_port"] = port
        try:
            address = parse_address(host)
        except ValueError:
            address = None
        if address is not None:
            one["resp_hi"], one["resp_lo"] = halves(address)
        ctx = FlowContext(one["resp_hi"], one["resp_lo"], one["proto"], one["resp_port"], rules.scopes(one))
        scopes = ctx.scopes[:, 0]
        proto = int(rec["proto"])
        entry = rules.match_names("deny", [host], scopes, proto, port) if address is None else None
        if address is not None:
            cls = rules.classify(one["resp_hi"], one["resp_lo"])
            if rules.match_cidr("deny", ctx)[0] or rules.match_class("deny", cls, ctx)[0]:
                entry = rules.first_entry("deny", ctx, 0, int(cls[0]))
                label = entry.label() if entry else "a deny entry"
                return Reason.DENIED, int(entry.severity if entry else Severity.HIGH), \
                    f"the target {host}:{port} is denied by {label}", label
            if rules.treatments[cls[0]] == 0 and not rules.lifted(cls, ctx)[0]:
                return Reason.ADDRESS_CLASS, int(rules.severities[cls[0]]), \
                    (f"the target {host} is in the address class {rules.class_name(int(cls[0]))}, which the rules "
                     f"treat as deny"), None
            if rules.match_cidr("allow", ctx)[0] or rules.match_class("allow", cls, ctx)[0]:
                return None
            live = self.binding.lookup(endpoint(rec, "orig"), address, int(rec["first_seen_ns"]) / 1e9)[0]
            if live and rules.match_names("allow", live, scopes, proto, port) is not None:
                return None
            return Reason.UNBOUND_IP, int(Severity.MEDIUM), \
                f"the target {host}:{port} is an address no allow entry names" + \
                (f" (DNS bound it to {', '.join(live[:4])}, none allowed)" if live else
                 ", and no DNS answer to this sandbox bound a name to it"), None
        if entry is not None:
            return Reason.DENIED, int(entry.severity), f"the target {host}:{port} is denied by {entry.label()}", \
                entry.label()
        if rules.match_names("allow", [host], scopes, proto, port) is not None:
            return None
        if self.binding.addresses(endpoint(rec, "orig"), host):
            return Reason.NOT_ALLOWLISTED, int(Severity.MEDIUM), \
                f"the target {host}:{port} matches no allow entry", None
        return Reason.UNBOUND_IP, int(Severity.MEDIUM), \
            (f"the target {host}:{port} matches no allow entry, and the sandbox resolved no address for it itself "
             f"(the proxy resolves it)"), None

    def emit(self, capture: str, rules: Allowlist) -> list[Finding]:
        """The findings so far (then none again)."""
        out = []
        for g in sorted(self._groups.values(), key=lambda g: g.first_ns):
            rec = g.rec
            proxy = address_text(endpoint(rec, "resp"))
            chain = " > ".join(g.chain)
            where = ", ".join(f"{proto_name(p)}/{port}" for p, port in sorted(g.ports)[:8])
            span = f"{g.flows} flows ({g.bytes:,} bytes)" if g.flows > 1 else f"one flow ({g.bytes:,} bytes)"
            sandbox = rules.sandbox_name(endpoint(rec, "orig"), int(rec["orig_mac"])) or \
                address_text(endpoint(rec, "orig"))
            evidence = (f"through {chain} at {proxy} ({where}) the sandbox asked for {g.target}: {g.why}",
                        f"{sandbox} -> {proxy} -> {g.target}: {span}; the proxy itself is an allowed destination")
            severity = Severity(max(g.severity, 1))
            egress = {
                "reason": str(g.reason),
                "sandbox": rules.sandbox_name(endpoint(rec, "orig"), int(rec["orig_mac"])),
                "destination": proxy,
                "ports": [{"proto": proto_name(p), "port": port} for p, port in sorted(g.ports)[:32]],
                "names": [],
                "server_name": None,
                "server_name_source": None,
                "deny_rule": g.deny_rule,
                "carrier": list(g.chain),
                "carrier_target": g.target,
                "flows": g.flows,
                "bytes": g.bytes,
                "first_seen": round(g.first_ns / 1e9, 6),
                "last_seen": round(g.last_ns / 1e9, 6),
                "rules": rules.source,
            }
            out.append(Finding(kind=FindingKind.UNEXPECTED_DESTINATION, severity=severity, score=SCORE[severity],
                               evidence=evidence, flow=rec, capture=capture,
                               details={"reason": str(g.reason), "egress": egress, "carrier": list(g.chain),
                                        "carrier_target": g.target},
                               subject=f"{g.reason} via {g.chain[0]}"))
        self._groups = {}
        return out


__all__ = ["CarrierTargets"]
