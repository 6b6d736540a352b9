"""The finding gate: in live mode a snapshot shows an open flow again and again, and every round judges it afresh;
the gate lets a finding out once, and again only when it got worse or after the suppression interval."""
from __future__ import annotations

from collections import OrderedDict

from egressguard.schema import Finding


def finding_key(finding: Finding) -> tuple:
    """What makes two findings 'the same thing': kind, sandbox, destination and what the finding is about beyond
    that (its subject: the egress reason, the tunnelled DNS domain)."""
    f = finding.flow
    return (str(finding.kind), int(f["orig_hi"]), int(f["orig_lo"]), int(f["resp_hi"]), int(f["resp_lo"]),
            int(f["resp_port"]), int(f["proto"]), finding.subject)


class FindingGate:
    """Lets a finding through the first time, when it is worse than what was last let through (higher severity,
    or a score higher by `worse_by`), or when `suppress_s` have passed since; remembers at most `capacity` keys."""

    def __init__(self, suppress_s: float, capacity: int = 100_000, worse_by: float = 0.1):
        self.suppress_s = suppress_s
        self.capacity = capacity
        self.worse_by = worse_by
        self.suppressed = 0
        self._last: OrderedDict[tuple, tuple[float, int, float]] = OrderedDict()  # key -> (time, severity, score)

    def admit(self, finding: Finding, now_s: float) -> bool:
        return self.admit_key(finding_key(finding), int(finding.severity), float(finding.score), now_s)

    def admit_key(self, key: tuple, severity: int, score: float, now_s: float) -> bool:
        """admit() for a finding known by its key (a worker process's finding, in `watch --workers`)."""
        last = self._last.get(key)
        if last is not None:
            at, sev, sc = last
            if severity <= sev and score < sc + self.worse_by and now_s - at < self.suppress_s:
                self.suppressed += 1
                return False
        self._last[key] = (now_s, max(severity, last[1]) if last else severity, score)
        self._last.move_to_end(key)
        while len(self._last) > self.capacity:
            self._last.popitem(last=False)
        return True


__all__ = ["FindingGate", "finding_key"]
