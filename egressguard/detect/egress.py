"""Unexpected destinations: flows that leave a sandbox for somewhere the rules do not allow.

Every flow whose originator is inside the sandbox networks and whose destination is outside them (or is the host)
is judged, in this order (detection-science 3.1-3.5; rules/README.md says the same for users):

1. a [[deny]] entry matches it (CIDR, class, or a name: bound by DNS, TLS SNI or HTTP Host) -> `denied`
2. DNS (tcp/udp 53) to a configured resolver -> allowed
3. its address class is treated as deny (metadata, host, link-local, reserved, ...) and no allow entry names that
   class or its addresses -> `address_class`
4. encrypted DNS: a public DoH/DoT resolver on 443/853 (by address or name), any port 853 -> `doh`
5. DNS to any other server, when resolvers are configured -> `rogue_resolver`
6. an allow entry matches its address (CIDR or class) -> allowed
7. names: with a TLS server name (or HTTP Host), that name decides: bound to this address by the sandbox's DNS
   answers and allowed -> allowed; bound but not allowed -> `not_allowlisted`; not bound here but allowed, or the
   address is bound to an allowed name -> `sni_mismatch` (domain fronting, or a stale or hard-coded address).
   Without one, the address is allowed when any name DNS bound to it is allowed, `not_allowlisted` when names
   are bound but none is allowed, `unbound_ip` when no answer bound any name to it.

Forensic order: a flow is judged when it ends, and a DNS flow ends up to a UDP idle timeout after its last packet,
often after the short connection that used its answer. So a flow to an address no DNS answer has bound yet (or that
step 7 would report) waits, `Params.dns_wait_s` of capture time and at most until the capture ends, for answers that
arrive in later batches; then it is judged against every answer that was given before it started. Findings are
aggregated per (sandbox, destination, reason) and reported when the capture ends (`finish`); see egress_findings.py.
A live monitor calls `finish` at the end of each reporting interval.

Vectorised: address, class, port and protocol matching run over the whole batch in numpy; TLS server names are
located in numpy (payload/tls.find_sni); Python looks only at flows whose address DNS bound or that carry a name.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from egressguard.detect.base import BatchResult, DetectorContext, LiveMode
from egressguard.detect.egress_carriers import CarrierTargets
from egressguard.detect.egress_findings import Aggregator, Reason, reason_code
from egressguard.flows.view import FlowView, ServerNames
from egressguard.netaddr import address_text, endpoint
from egressguard.policy.addrclass import DNS_PORT, DOH_NAMES, DOT_PORT, HOST_CRITICAL_PORTS
from egressguard.policy.allowlist import DOH, HOST, Allowlist, FlowContext
from egressguard.schema import FindingKind, Severity, proto_name

ALLOWED, PENDING = 254, 255
TCP_UDP = (6, 17)
RELEASE_ROWS = 32768  # waiting flows judged together


@dataclass(frozen=True)
class Params:
    """Waiting and reporting limits."""

    dns_wait_s: float = 90.0  # UDP flows (DNS) end 60 s after their last packet, plus the 5 s sweep and margin
    max_pending: int = 1 << 18  # flows waiting for DNS answers; past this the oldest are judged at once
    max_destinations_per_sandbox: int = 25  # per reason, per capture; more are summed up in one finding
    max_findings: int = 500  # findings of their own per capture (all sandboxes); more are summed up per reason


class UnexpectedDestinationDetector:
    """Reports `unexpected_destination` findings with a `reason`; reads the DNS binding the engine feeds."""

    name = "unexpected_destination"
    kinds = (FindingKind.UNEXPECTED_DESTINATION,)
    live = LiveMode.OPEN_FLOWS  # a connection to somewhere unexpected is reported while it is open

    def __init__(self, ctx: DetectorContext, params: Params = Params()):
        self.rules = ctx.rules
        self.binding = ctx.binding
        self.params = params
        self._agg = Aggregator(params.max_destinations_per_sandbox, params.max_findings)
        self._carriers = CarrierTargets(ctx.binding)  # what a sandbox asks its proxy for (egress_carriers.py)
        self._pending: list[_Pending] = []
        self._pending_rows = 0
        self._now_ns = 0
        self._capture = ""

    def start(self, capture: str) -> None:
        self._capture = capture
        self._now_ns = 0  # each capture has its own clock

    def inspect(self, view: FlowView) -> BatchResult:
        rules = self.rules.current  # one version of the rules for the whole batch
        self.binding.min_ttl_s = rules.settings.min_dns_ttl_s
        recs = view.records
        if len(recs):
            self._now_ns = max(self._now_ns, int(recs["last_seen_ns"].max()))
            outbound = rules.outbound(recs)
            rows = np.flatnonzero(outbound)
            if len(rows):
                self._carriers.inspect(view, rules, outbound)
                sub, names = recs[rows], _server_names(view.server_names, rows)
                for i in np.flatnonzero(np.isin(rows, view.carriers.rows)).tolist():
                    names.pop(i, None)  # a CONNECT's Host names the proxy's target: judged as that, not as the proxy
                # flows to addresses DNS bound are judged now; the others wait for answers from later batches
                # (their verdict does not change by waiting, and findings are reported at the end anyway)
                now = self.binding.bound_anywhere(sub["resp_hi"], sub["resp_lo"])
                if now.any():
                    at = np.flatnonzero(now)
                    self._judge(rules, sub[at], _subset(names, at), final=False)
                if not now.all():
                    self._wait(sub, names, np.flatnonzero(~now))
        self._release(rules, final=False)
        return BatchResult()

    def finish(self) -> BatchResult:
        """Judge every waiting flow and report the findings aggregated so far (end of a capture, or of a live
        reporting interval)."""
        rules = self.rules.current
        self._release(rules, final=True)
        return BatchResult(findings=self._agg.emit(self._capture, rules) + self._carriers.emit(self._capture, rules))

    # ---- judging
    def _judge(self, rules: Allowlist, recs: np.ndarray, server_names: dict[int, tuple[str, str]],
               final: bool) -> None:
        """Judge flows (FLOW records with their server names); report them, or keep them waiting for DNS."""
        n = len(recs)
        ctx = FlowContext(recs["resp_hi"], recs["resp_lo"], recs["proto"], recs["resp_port"], rules.scopes(recs))
        classes = rules.classify(recs["resp_hi"], recs["resp_lo"])
        code = np.zeros(n, np.uint8)
        severity = rules.severities[classes].copy()
        info: dict[int, dict] = {}
        port, proto = recs["resp_port"], recs["proto"]
        tcp_udp = np.isin(proto, TCP_UDP)
        dns = tcp_udp & (port == DNS_PORT)
        bound = self._bound_names(recs)  # row -> (live, expired, later) for addresses DNS ever bound
        named = sorted(set(bound) | set(server_names))

        def names_of(r: int) -> list[str]:
            live = bound[r][0] if r in bound else []
            return live + [server_names[r][0]] if r in server_names else live

        def decide(mask: np.ndarray, value: int) -> None:
            code[mask & (code == 0)] = value

        all_names = {sn[0] for sn in server_names.values()} | {x for found in bound.values() for x in found[0]}
        doh = tcp_udp & ((port == DOT_PORT) | (rules.is_doh_address(recs["resp_hi"], recs["resp_lo"])
                                                & np.isin(port, (443, DOT_PORT))))
        for r in named if not DOH_NAMES.isdisjoint(all_names) else ():
            if tcp_udp[r] and port[r] == 443 and not DOH_NAMES.isdisjoint(names_of(r)):
                doh[r] = True
        doh_class = np.full(n, DOH, np.int16)
        denied = rules.match_cidr("deny", ctx) | rules.match_class("deny", classes, ctx) | \
            (doh & rules.match_class("deny", doh_class, ctx))
        deny_names = rules.names_with("deny", all_names)  # names some deny pattern matches, ports aside
        for r in named if deny_names else ():
            if deny_names.isdisjoint(names_of(r)):
                continue
            entry = rules.match_names("deny", names_of(r), ctx.scopes[:, r], int(proto[r]), int(port[r]))
            if entry is not None and not denied[r]:
                denied[r] = True
                info[r] = {"deny_rule": entry.label(), "deny_severity": entry.severity}
        for r in np.flatnonzero(denied).tolist():
            entry_info = info.get(r) or self._deny_info(rules, ctx, r, int(classes[r]))
            severity[r] = int(entry_info["deny_severity"])
            info[r] = {**entry_info, "names": bound[r][0] if r in bound else [],
                       "why": _deny_why(recs[r], entry_info["deny_rule"], bound.get(r, ([],))[0],
                                        server_names.get(r))}
            _add_server_name(info[r], server_names.get(r))
        decide(denied, reason_code(Reason.DENIED))
        if len(rules.settings.resolvers):
            decide(dns & rules.is_resolver(recs["resp_hi"], recs["resp_lo"]), ALLOWED)
        class_deny = (rules.treatments[classes] == 0) & (code == 0)
        if class_deny.any():
            class_deny &= ~rules.lifted(classes, ctx)
        host_critical = (classes == HOST) & tcp_udp & np.isin(port, list(HOST_CRITICAL_PORTS))
        severity[class_deny & host_critical] = int(Severity.CRITICAL)
        decide(class_deny, reason_code(Reason.ADDRESS_CLASS))
        if rules.treatments[DOH] != 1:
            doh &= (code == 0) & ~rules.match_class("allow", doh_class, ctx)
            severity[doh] = rules.severities[DOH]
            decide(doh, ALLOWED if rules.treatments[DOH] == 2 else reason_code(Reason.DOH))
        if len(rules.settings.resolvers):
            rogue = dns & (code == 0)
            severity[rogue] = int(Severity.MEDIUM)
            decide(rogue, reason_code(Reason.ROGUE_RESOLVER))
        open_rows = np.flatnonzero(code == 0)
        if len(open_rows):
            allowed = rules.match_cidr("allow", ctx, open_rows) | rules.match_class("allow", classes, ctx, open_rows)
            code[allowed] = ALLOWED
        # step 7: flows with no name at all are unbound at once (or wait for DNS); Python only for named ones
        has_bound = np.zeros(n, bool)
        has_bound[list(bound)] = True
        has_name = has_bound.copy()  # ... or a server name that some allow pattern matches (else it is unbound)
        allow_names = rules.names_with("allow", {sn[0] for sn in server_names.values()})
        has_name[[r for r, sn in server_names.items() if sn[0] in allow_names]] = True
        wait = (code == 0) & ~has_bound if not final else np.zeros(n, bool)
        for r in np.flatnonzero((code == 0) & has_name & ~wait).tolist():
            live, expired, later = bound.get(r, ([], [], []))
            c, sev, facts = self._judge_names(rules, recs[r], live, server_names.get(r), ctx.scopes[:, r])
            if c == 0:
                c, facts = reason_code(Reason.UNBOUND_IP), {**facts, "why": facts.get("why") or _unbound_why(
                    recs[r], expired, later)}
            if not final and c != ALLOWED:
                wait[r] = True  # the binding may still grow from DNS flows that end later
                continue
            code[r], info[r] = c, facts
            severity[r] = max(int(severity[r]), sev)
        code[(code == 0) & ~wait] = reason_code(Reason.UNBOUND_IP)
        for r, (live, _, _) in bound.items():
            if live:  # an open flow keeps the names it was bound to (Cilium: not expired until it terminates)
                rec = recs[r]
                self.binding.keep_alive(endpoint(rec, "orig"), endpoint(rec, "resp"), int(rec["last_seen_ns"]) / 1e9,
                                        since=int(rec["first_seen_ns"]) / 1e9)
        if wait.any():
            self._wait(recs, server_names, np.flatnonzero(wait))
        report = np.flatnonzero((code != ALLOWED) & ~wait)

        def facts(r: int) -> dict | None:
            """What a reported row's finding says beyond its reason (built only for rows that get one)."""
            if r in info:
                return info[r]
            if r not in server_names:
                return None
            sname = server_names[r]
            how = "TLS server name" if sname[1] == "tls_sni" else "HTTP Host"
            out = _add_server_name({"names": []}, sname)
            if code[r] == reason_code(Reason.UNBOUND_IP):
                out["why"] = lambda: (f"the {how} {sname[0]} matches no allow entry, and no DNS answer to this "
                                      f"sandbox bound {_dst(recs[r])}")
            return out
        self._agg.add(recs, report, code, severity, facts)

    def _bound_names(self, recs: np.ndarray) -> dict[int, tuple[list[str], list[str], list[str]]]:
        """(live, expired, answered-later) names of rows whose destination DNS bound for some sandbox."""
        out = {}
        for r in np.flatnonzero(self.binding.bound_anywhere(recs["resp_hi"], recs["resp_lo"])).tolist():
            rec = recs[r]
            found = self.binding.lookup(endpoint(rec, "orig"), endpoint(rec, "resp"), int(rec["first_seen_ns"]) / 1e9)
            if any(found):
                out[r] = found
        return out

    def _judge_names(self, rules: Allowlist, rec: np.void, live: list[str], sname: tuple[str, str] | None,
                     scopes: np.ndarray) -> tuple[int, int, dict]:
        """Step 7 for one flow: (code, severity floor, facts with a `why` built only if it is reported)."""
        proto, port = int(rec["proto"]), int(rec["resp_port"])
        facts: dict = {"names": live}
        bound_allowed = rules.match_names("allow", live, scopes, proto, port)
        if sname is None:
            if bound_allowed is not None:
                return ALLOWED, 0, facts
            if live:
                return reason_code(Reason.NOT_ALLOWLISTED), 0, {**facts, "why": lambda: (
                    f"{_dst(rec)} was bound by DNS to {', '.join(live[:6])}, and no allow entry matches "
                    f"{'it' if len(live) == 1 else 'any of them'} on {_service(proto, port)}")}
            return 0, 0, facts
        name, source = sname
        how = "TLS server name" if source == "tls_sni" else "HTTP Host"
        _add_server_name(facts, sname)
        name_allowed = rules.match_names("allow", [name], scopes, proto, port)
        if name in live:
            if name_allowed is not None:
                return ALLOWED, 0, facts
            return reason_code(Reason.NOT_ALLOWLISTED), 0, {**facts, "why": lambda: (
                f"the {how} {name} (bound to {_dst(rec)} by DNS) matches no allow entry on {_service(proto, port)}")}
        sandbox = endpoint(rec, "orig")

        def seen() -> str:
            elsewhere = self.binding.addresses(sandbox, name)
            return f"; {name} was bound to {', '.join(elsewhere[:4])}" if elsewhere else \
                f"; no DNS answer to this sandbox named {name}"
        resolved = f"which DNS bound to {', '.join(live[:4])}" if live else "which no DNS answer named"
        if name_allowed is not None:
            return reason_code(Reason.SNI_MISMATCH), int(Severity.MEDIUM), {**facts, "why": lambda: (
                f"the {how} {name} is allowed ({name_allowed.label()}) but was never bound to {_dst(rec)}, "
                f"{resolved}: domain fronting, or a stale or hard-coded address{seen()}")}
        if bound_allowed is not None:
            return reason_code(Reason.SNI_MISMATCH), int(Severity.HIGH), {**facts, "why": lambda: (
                f"{_dst(rec)} is allowed as {', '.join(live[:4])} ({bound_allowed.label()}), but the connection "
                f"asks for {name} ({how}), which is not allowed: a fronted or borrowed address{seen()}")}
        if live:
            return reason_code(Reason.NOT_ALLOWLISTED), 0, {**facts, "why": lambda: (
                f"the {how} {name} matches no allow entry; {_dst(rec)} was bound by DNS to {', '.join(live[:4])}, "
                f"which none allows either")}
        return 0, 0, {**facts, "why": lambda: (
            f"the {how} {name} matches no allow entry, and no DNS answer to this sandbox bound {_dst(rec)}")}

    def _deny_info(self, rules: Allowlist, ctx: FlowContext, r: int, cls: int) -> dict:
        entry = rules.first_entry("deny", ctx, r, cls)
        return {"deny_rule": entry.label() if entry else "a deny entry",
                "deny_severity": entry.severity if entry else Severity.HIGH}

    def _wait(self, recs: np.ndarray, server_names: dict[int, tuple[str, str]], rows: np.ndarray) -> None:
        """Keep rows of `recs` (already a copy of the batch's records) until DNS answers may have arrived."""
        self._pending.append(_Pending(recs if len(rows) == len(recs) else recs[rows], _subset(server_names, rows)))
        self._pending_rows += len(rows)

    def _release(self, rules: Allowlist, final: bool) -> None:
        """Judge waiting flows whose wait is over (all of them when `final`), a batch's worth at a time: a chunk is
        due when its newest flow started `dns_wait_s` ago; the oldest go early past `max_pending`. Due chunks are
        judged together once they hold RELEASE_ROWS flows (fewer, larger numpy calls; findings wait for the end
        of the capture in any case)."""
        wait_ns = int(self.params.dns_wait_s * 1e9)
        over = self._pending_rows - self.params.max_pending
        due, keep = [], []
        for chunk in self._pending:
            if final or chunk.first_max + wait_ns <= self._now_ns or over > 0:
                due.append(chunk)
                over -= len(chunk.recs)
            else:
                keep.append(chunk)
        if not due or (not final and over <= 0 and sum(len(c.recs) for c in due) < RELEASE_ROWS):
            return
        self._pending = keep
        self._pending_rows = sum(len(c.recs) for c in keep)
        names, at = {}, 0
        for chunk in due:
            names.update({at + i: v for i, v in chunk.names.items()})
            at += len(chunk.recs)
        self._judge(rules, np.concatenate([c.recs for c in due]), names, final=True)


class _Pending:
    """Flows of one batch waiting for DNS answers (FLOW records, server names by row)."""

    def __init__(self, recs: np.ndarray, names: dict[int, tuple[str, str]]):
        self.recs, self.names = recs, names
        self.first_max = int(recs["first_seen_ns"].max())


def _server_names(names: ServerNames, rows: np.ndarray) -> dict[int, tuple[str, str]]:
    """Server names of `rows` (TLS SNI or HTTP Host), keyed by position in `rows`."""
    return {int(i): names.get(int(rows[i])) for i in np.flatnonzero(names.source[rows] > 0).tolist()}


def _subset(names: dict[int, tuple[str, str]], rows: np.ndarray) -> dict[int, tuple[str, str]]:
    """Server names of `rows`, re-keyed by position in `rows`."""
    if not names:
        return {}
    keys = np.fromiter(names, np.int64, len(names))
    at = np.minimum(np.searchsorted(rows, keys), len(rows) - 1)  # rows are sorted
    hit = rows[at] == keys
    return {int(i): names[int(k)] for i, k in zip(at[hit].tolist(), keys[hit].tolist())}


def _add_server_name(info: dict, sname: tuple[str, str] | None) -> dict:
    if sname is not None:
        info["server_name"], info["server_name_source"] = sname
    return info


def _dst(rec: np.void) -> str:
    return address_text(endpoint(rec, "resp"))


def _service(proto: int, port: int) -> str:
    return f"{proto_name(proto)}/{port}" if proto in TCP_UDP else str(proto_name(proto))


def _deny_why(rec: np.void, rule: str, live: list[str], sname: tuple[str, str] | None):
    def why() -> str:
        shown = ([f"{sname[0]} ({'TLS SNI' if sname[1] == 'tls_sni' else 'HTTP Host'})"] if sname else []) + \
            [f"{n} (DNS)" for n in live[:4] if not sname or n != sname[0]]
        return f"{_dst(rec)} ({', '.join(shown)}) is denied by {rule}" if shown else f"{_dst(rec)} is denied by {rule}"
    return why


def _unbound_why(rec: np.void, expired: list[str], later: list[str]):
    def why() -> str:
        dst = _dst(rec)
        text = f"the sandbox connected to {dst} by address: no DNS answer it received before the connection bound " \
               f"a name to {dst}"
        if expired:
            text += f" (its binding to {', '.join(expired[:4])} had expired)"
        if later:
            text += f" (an answer bound {', '.join(later[:4])} to it only after the connection started)"
        return text
    return why


__all__ = ["Params", "Reason", "UnexpectedDestinationDetector"]
