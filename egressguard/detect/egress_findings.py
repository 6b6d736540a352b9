"""Unexpected-destination findings: aggregation per (sandbox, destination, reason) and the sentences that explain
them.

One finding per (sandbox, destination, reason) per capture, with the number of flows, bytes, ports and the time
span it covers; at most `max_destinations_per_sandbox` destinations per (sandbox, reason) and `max_findings` in all
get a finding of their own (the first ones seen); the rest of each reason is summed up in one more finding that
counts flows, destinations and sandboxes. So 10,000 flows to one unknown address give one finding, and a scan of
50,000 addresses gives a bounded report that still says how much there was. Grouping is vectorised (numpy unique
over 33-byte keys); Python touches only the groups that get a finding of their own.
"""
from __future__ import annotations

import enum
import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from egressguard.policy.addrclass import DOH_NAMES, DOT_PORT, HOST_PORT_NAMES
from egressguard.policy.allowlist import CLASS_NAMES, CLASSES, Allowlist
from egressguard.netaddr import address_text, endpoint, keys
from egressguard.schema import Finding, FindingKind, Severity, proto_name

SCORE = {Severity.LOW: 0.3, Severity.MEDIUM: 0.5, Severity.HIGH: 0.8, Severity.CRITICAL: 0.95}


class Reason(enum.StrEnum):
    """Why a flow out of a sandbox is reported (the `reason` field of unexpected_destination findings)."""

    DENIED = "denied"  # a [[deny]] entry matches the destination (by CIDR, class or name)
    ADDRESS_CLASS = "address_class"  # a class treated as deny: cloud metadata, the host, link-local, reserved, ...
    DOH = "doh"  # DNS over HTTPS/TLS/QUIC: a known public resolver on 443/853, or any port 853
    ROGUE_RESOLVER = "rogue_resolver"  # DNS to a server other than the configured resolver(s)
    SNI_MISMATCH = "sni_mismatch"  # the TLS server name (or HTTP Host) is not a name DNS bound to the address
    NOT_ALLOWLISTED = "not_allowlisted"  # DNS bound names to the address, none of them allowed
    UNBOUND_IP = "unbound_ip"  # no DNS answer seen for the address: direct-IP egress


REASONS = tuple(Reason)


def reason_code(reason: Reason) -> int:
    """1-based code (0 never ends a key, so byte-string keys compare safely)."""
    return REASONS.index(reason) + 1


@dataclass
class _Group:
    rec: np.void
    code: int
    severity: int
    flows: int
    bytes: int
    first_ns: int
    last_ns: int
    ports: set = field(default_factory=set)
    info: dict | None = None


@dataclass
class _Overflow:
    flows: int = 0
    bytes: int = 0
    severity: int = 0
    rec: np.void | None = None
    dests: list = field(default_factory=list)
    sandboxes: list = field(default_factory=list)


class _Columns:
    """Columns of some rows of a FLOW array, taken only when used (no copy of whole 264-byte records)."""

    def __init__(self, recs: np.ndarray, rows: np.ndarray):
        self._recs, self._rows, self._cols = recs, rows, {}

    def __getitem__(self, name: str) -> np.ndarray:
        col = self._cols.get(name)
        if col is None:
            col = self._cols[name] = self._recs[name][self._rows]
        return col

    def __len__(self) -> int:
        return len(self._rows)

    def record(self, i: int) -> np.void:
        return self._recs[int(self._rows[i])].copy()


def _keys33(recs, rows: np.ndarray, codes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(sandbox, destination, reason) and (sandbox, reason) keys of some rows, as 'S33' and 'S17'."""
    n = len(rows)
    raw = np.empty((n, 33), np.uint8)
    raw[:, :16] = keys(recs["orig_hi"][rows], recs["orig_lo"][rows]).view(np.uint8).reshape(n, 16)
    raw[:, 16:32] = keys(recs["resp_hi"][rows], recs["resp_lo"][rows]).view(np.uint8).reshape(n, 16)
    raw[:, 32] = codes
    bucket = np.empty((n, 17), np.uint8)
    bucket[:, :16] = raw[:, :16]
    bucket[:, 16] = codes
    return raw.view("S33").ravel(), bucket.view("S17").ravel()


class Aggregator:
    """Collects judged flows of one capture and turns them into findings at its end."""

    def __init__(self, max_destinations_per_sandbox: int, max_findings: int):
        self.per_sandbox = max_destinations_per_sandbox
        self.max_findings = max_findings
        self.reset()

    def reset(self) -> None:
        self._groups: dict[bytes, _Group] = {}
        self._keys = np.zeros(0, "S33")
        self._buckets: dict[bytes, int] = {}
        self._overflow: dict[int, _Overflow] = {}

    def add(self, all_recs: np.ndarray, rows: np.ndarray, all_codes: np.ndarray, all_severity: np.ndarray,
            all_facts: Callable[[int], dict | None]) -> None:
        """Judged flows with a reason: `rows` of FLOW records `all_recs` with their reason codes and severities;
        `all_facts(row)` gives a row's details (called only for rows that become a finding of their own)."""
        if not len(rows):
            return
        recs = _Columns(all_recs, rows)
        codes, severity = all_codes[rows], all_severity[rows]

        def facts(i: int) -> dict | None:
            return all_facts(int(rows[i]))
        # exact grouping by (sandbox, destination, reason): lexsort of the key columns, earliest flow first
        order = np.lexsort((recs["first_seen_ns"], recs["resp_lo"], recs["resp_hi"], codes, recs["orig_lo"],
                            recs["orig_hi"]))
        change = np.zeros(len(order), bool)
        change[0] = True
        for col in (recs["orig_hi"], recs["orig_lo"], codes):
            c = col[order]
            change[1:] |= c[1:] != c[:-1]
        new_bucket = change.copy()  # groups come sorted by (sandbox, reason): the buckets of the caps
        for col in (recs["resp_hi"], recs["resp_lo"]):
            c = col[order]
            change[1:] |= c[1:] != c[:-1]
        starts = np.flatnonzero(change)
        bucket = np.cumsum(new_bucket[starts]) - 1
        inverse = np.empty(len(order), np.int64)
        inverse[order] = np.cumsum(change) - 1
        rep = order[starts]  # the earliest flow of each group
        uniq, k17 = _keys33(recs, rep, codes[rep])
        flows = np.diff(np.r_[starts, len(order)])
        nbytes = np.add.reduceat((recs["orig_bytes"] + recs["resp_bytes"])[order], starts).astype(np.int64)
        first = recs["first_seen_ns"][rep]
        last = np.maximum.reduceat(recs["last_seen_ns"][order], starts)
        sev = np.maximum.reduceat(severity[order], starts)
        known = np.zeros(len(uniq), bool)
        if len(self._keys):
            i = np.minimum(np.searchsorted(self._keys, uniq), len(self._keys) - 1)
            known = self._keys[i] == uniq
        admit = self._admit(bucket, k17, first, known)
        detailed = np.flatnonzero(known | admit)
        for g in detailed.tolist():
            key = uniq[g].tobytes()
            r = int(rep[g])
            group = self._groups.get(key)
            if group is None:
                group = self._groups[key] = _Group(recs.record(r), int(codes[r]), 0, 0, 0, int(first[g]), 0,
                                                   info=facts(r))
            elif int(first[g]) < group.first_ns:
                group.rec, group.first_ns, group.info = recs.record(r), int(first[g]), facts(r) or group.info
            group.flows += int(flows[g])
            group.bytes += int(nbytes[g])
            group.last_ns = max(group.last_ns, int(last[g]))
            group.severity = max(group.severity, int(sev[g]))
        if detailed.size:
            member = np.flatnonzero(np.isin(inverse, detailed))
            for g, proto, port in set(zip(inverse[member].tolist(), recs["proto"][member].tolist(),
                                          recs["resp_port"][member].tolist())):
                self._groups[uniq[g].tobytes()].ports.add((proto, port))
        if admit.any():
            self._keys = np.sort(np.concatenate([self._keys, uniq[admit]]))
        self._spill(np.flatnonzero(~(known | admit)), uniq, k17, rep, recs, codes, flows, nbytes, sev)

    def _admit(self, bucket: np.ndarray, k17: np.ndarray, first: np.ndarray, known: np.ndarray) -> np.ndarray:
        """New groups that get a finding of their own: the first ones of each (sandbox, reason) bucket (`bucket`:
        non-decreasing ids; `k17`: their keys across batches), within the caps."""
        admit = np.zeros(len(bucket), bool)
        room = self.max_findings - len(self._groups)
        if room <= 0:
            return admit
        new = np.flatnonzero(~known)
        new = new[np.lexsort((first[new], bucket[new]))]
        if not len(new):
            return admit
        starts = np.r_[0, np.flatnonzero(np.diff(bucket[new])) + 1]
        for lo, hi in zip(starts.tolist(), np.r_[starts[1:], len(new)].tolist()):
            key = k17[new[lo]].tobytes()
            take = min(hi - lo, self.per_sandbox - self._buckets.get(key, 0))
            if take > 0:
                admit[new[lo:lo + take]] = True
                self._buckets[key] = self._buckets.get(key, 0) + take
        chosen = np.flatnonzero(admit)
        if len(chosen) > room:  # the global cap keeps the earliest
            admit[chosen[np.argsort(first[chosen], kind="stable")[room:]]] = False
        return admit

    def _spill(self, groups, uniq, buckets, rep, recs, codes, flows, nbytes, sev) -> None:
        for code in np.unique(codes[rep[groups]]).tolist():
            g = groups[codes[rep[groups]] == code]
            over = self._overflow.setdefault(code, _Overflow())
            over.flows += int(flows[g].sum())
            over.bytes += int(nbytes[g].sum())
            over.severity = max(over.severity, int(sev[g].max()))
            over.dests.append(uniq[g])
            over.sandboxes.append(buckets[g])
            r = int(rep[g][np.argmin(recs["first_seen_ns"][rep[g]])])
            if over.rec is None or int(recs["first_seen_ns"][r]) < int(over.rec["first_seen_ns"]):
                over.rec = recs.record(r)

    def emit(self, capture: str, rules: Allowlist) -> list[Finding]:
        """The findings of the capture so far (then empty again)."""
        out = [self._finding(g, capture, rules) for g in sorted(self._groups.values(), key=lambda g: g.first_ns)]
        for code, over in sorted(self._overflow.items()):
            out.append(self._summary(code, over, capture, rules))
        self.reset()
        return out

    def _finding(self, g: _Group, capture: str, rules: Allowlist) -> Finding:
        reason = REASONS[g.code - 1]
        info = g.info or {}
        rec = g.rec
        sandbox = _sandbox(rec, rules)
        dst = _address(rec, "resp")
        ports = sorted(g.ports, key=lambda p: (p[1], p[0]))
        where = ", ".join(f"{proto_name(p)}/{port}" if p in (6, 17) else f"{proto_name(p)}" for p, port in ports[:8])
        names = info.get("names", [])
        why = info.get("why")
        evidence = [(why() if callable(why) else why) or _default_why(reason, rec, info, rules)]
        span = (f"{g.flows} flows ({g.bytes:,} bytes) between {_clock(g.first_ns)} and {_clock(g.last_ns)}"
                if g.flows > 1 else f"one flow ({g.bytes:,} bytes) at {_clock(g.first_ns)}")
        evidence.append(f"{sandbox} -> {dst} ({where}): {span}")
        if names and reason is not Reason.NOT_ALLOWLISTED:
            evidence.append(f"names bound to {dst} by this sandbox's DNS answers: {', '.join(names[:8])}")
        severity = Severity(max(g.severity, 1))
        egress = {
            "reason": str(reason),
            "sandbox": rules.sandbox_name(endpoint(rec, "orig"), int(rec["orig_mac"])),
            "destination": dst,
            "ports": [{"proto": proto_name(p), "port": port} for p, port in ports[:32]],
            "names": names,
            "server_name": info.get("server_name"),
            "server_name_source": info.get("server_name_source"),
            "deny_rule": info.get("deny_rule"),
            "address_class": info.get("class") or rules.class_name(int(rules.classify(rec["resp_hi"][None],
                                                                                       rec["resp_lo"][None])[0])),
            "flows": g.flows,
            "bytes": g.bytes,
            "first_seen": round(g.first_ns / 1e9, 6),
            "last_seen": round(g.last_ns / 1e9, 6),
            "rules": rules.source,
        }
        return Finding(kind=FindingKind.UNEXPECTED_DESTINATION, severity=severity, score=SCORE[severity],
                       evidence=tuple(evidence), flow=rec, capture=capture,
                       details={"reason": str(reason), "egress": egress}, subject=str(reason))

    def _summary(self, code: int, over: _Overflow, capture: str, rules: Allowlist) -> Finding:
        reason = REASONS[code - 1]
        dests = _distinct(np.concatenate(over.dests))
        sandboxes = _distinct(np.concatenate(over.sandboxes))
        severity = Severity(max(over.severity, 1))
        text = (f"{len(dests):,} more (sandbox, destination) pairs with reason {reason} from {len(sandboxes):,} "
                f"sandbox(es), {over.flows:,} flows ({over.bytes:,} bytes), beyond the "
                f"{self.per_sandbox} destinations per sandbox and {self.max_findings} findings reported one by one; "
                f"the first of them is shown; run with --format jsonl --flows for every flow")
        egress = {"reason": str(reason), "summary": True, "pairs": int(len(dests)), "sandboxes": int(len(sandboxes)),
                  "flows": over.flows, "bytes": over.bytes, "rules": rules.source}
        return Finding(kind=FindingKind.UNEXPECTED_DESTINATION, severity=severity, score=SCORE[severity],
                       evidence=(text,), flow=over.rec, capture=capture,
                       details={"reason": str(reason), "egress": egress}, subject=f"{reason} (more)")


def _distinct(k: np.ndarray) -> np.ndarray:
    """Distinct byte-string keys (sort-based: numpy's hash-based unique is slow on long byte strings)."""
    k = np.sort(k)
    return k[np.r_[True, k[1:] != k[:-1]]] if len(k) else k


def _address(rec: np.void, side: str) -> str:
    return address_text(endpoint(rec, side))


def _sandbox(rec: np.void, rules: Allowlist) -> str:
    name = rules.sandbox_name(endpoint(rec, "orig"), int(rec["orig_mac"]))
    return f"{_address(rec, 'orig')} ({name})" if name else _address(rec, "orig")


def _clock(ns: int) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(ns / 1e9)) + f".{ns % 1_000_000_000 // 1_000_000:03d}Z"


def _default_why(reason: Reason, rec: np.void, info: dict, rules: Allowlist) -> str:
    """The first evidence sentence for flows judged in bulk (no names involved)."""
    dst = _address(rec, "resp")
    if reason is Reason.UNBOUND_IP:
        return (f"the sandbox connected to {dst} by address: no DNS answer it received bound a name to {dst} "
                f"(direct-IP egress, or a name resolved outside the sandbox's view)")
    if reason is Reason.ADDRESS_CLASS:
        cls = info.get("class") or rules.class_name(int(rules.classify(rec["resp_hi"][None], rec["resp_lo"][None])[0]))
        meaning = CLASSES[CLASS_NAMES.index(cls)].meaning if cls in CLASS_NAMES[:-1] else cls
        text = f"{dst} is in the address class {cls} ({meaning}), which the rules treat as deny"
        port = int(rec["resp_port"])
        if cls == "host" and int(rec["proto"]) == 6 and port in HOST_PORT_NAMES:
            text += f"; port {port} is the host's {HOST_PORT_NAMES[port]}: a sandbox escape attempt"
        return text
    if reason is Reason.ROGUE_RESOLVER:
        resolvers = ", ".join(address_text(a) if a == b else f"{address_text(a)}-{address_text(b)}"
                              for a, b in rules.settings.resolvers)
        return f"DNS to {dst}, which is not a configured resolver ({resolvers}): a resolver the monitor does not see"
    if reason is Reason.DOH:
        port = int(rec["resp_port"])
        names = [n for n in info.get("names", []) + [info.get("server_name")] if n in DOH_NAMES]
        what = (f"{names[0]} is a public DNS-over-HTTPS resolver" if names else
                "port 853 is DNS over TLS (RFC 7858) or QUIC (RFC 9250)" if port == DOT_PORT else
                f"{dst} is a public DNS-over-HTTPS/TLS resolver")
        return f"encrypted DNS to {dst}:{port}: {what}; the names it resolves are invisible to the monitor"
    if reason is Reason.DENIED:
        return f"{dst} matches {info.get('deny_rule') or 'a deny entry'}"
    return f"{dst} matches no allow entry"
