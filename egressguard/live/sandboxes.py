"""Per-sandbox aggregates for the dashboard (flows opened, bytes sent, destinations, worst finding) and per-interface
rate meters, with bounded memory: the least active sandboxes and the oldest destinations are forgotten first."""
from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import Iterable

import numpy as np

from egressguard.netaddr import format_address
from egressguard.schema import Finding, Severity

NEW_DESTINATIONS_PER_CALL = 5000  # flows a batch or round checks for a new destination (bounds work under floods)


@dataclass
class _Sandbox:
    address: str
    mac: int = 0
    port: str | None = None
    flows: int = 0  # finished flows
    bytes_out: int = 0  # of finished flows
    open_flows: int = 0  # from the last snapshot
    open_bytes_out: int = 0
    destinations: int = 0
    worst: Severity | None = None
    worst_kind: str | None = None
    last_active_ns: int = 0


class SandboxBook:
    """Per-sandbox aggregates for the dashboard: flows opened, bytes sent, destinations, worst finding."""

    def __init__(self, max_sandboxes: int, max_destinations: int, recent: int):
        self.max_sandboxes = max_sandboxes
        self.max_destinations = max_destinations
        self._sandboxes: dict[int, _Sandbox] = {}
        self._seen: OrderedDict[tuple, None] = OrderedDict()  # (sandbox, dst, port, proto) already contacted
        self.recent: list[tuple[int, int, str, int, int, int]] = []  # (time, sandbox, dst text, dst, port, proto)
        self._recent_max = recent
        self.untracked = 0  # flows not checked for a new destination (more than a round can look at)

    @staticmethod
    def _key(hi: int, lo: int) -> int:
        return (hi << 64) | lo

    def _get(self, key: int, version: int) -> _Sandbox:
        box = self._sandboxes.get(key)
        if box is None:
            if len(self._sandboxes) >= self.max_sandboxes:  # forget the least recently active
                oldest = min(self._sandboxes, key=lambda k: self._sandboxes[k].last_active_ns)
                del self._sandboxes[oldest]
            box = self._sandboxes[key] = _Sandbox(format_address(key >> 64, key & ((1 << 64) - 1), version))
        return box

    def _per_sandbox(self, cols, inside: np.ndarray):
        """(sandbox, flows, bytes sent, latest packet, a row) per originator among the `inside` rows, grouped in
        numpy so that a flood costs one pass."""
        hi, lo = cols["orig_hi"][inside], cols["orig_lo"][inside]
        if not len(hi):
            return
        keys = np.stack([hi, lo], axis=1)
        uniq, first, group = np.unique(keys, axis=0, return_index=True, return_inverse=True)
        group = group.reshape(-1)
        counts = np.bincount(group, minlength=len(uniq))
        sent = np.bincount(group, weights=cols["orig_bytes"][inside].astype(np.float64), minlength=len(uniq))
        latest = np.full(len(uniq), np.iinfo(np.int64).min, np.int64)
        np.maximum.at(latest, group, cols["last_seen_ns"][inside].astype(np.int64))
        rows = np.flatnonzero(inside)[first]
        for g, (h, l) in enumerate(uniq.tolist()):
            row = int(rows[g])
            box = self._get(self._key(h, l), int(cols["ip_version"][row]))
            box.mac = int(cols["orig_mac"][row]) or box.mac
            box.last_active_ns = max(box.last_active_ns, int(latest[g]))
            yield box, int(counts[g]), int(sent[g])

    def count_open(self, cols: dict[str, np.ndarray], inside: np.ndarray) -> None:
        """Replace the open-flow counts with those of the live table's columns (`FlowTable.live_columns`)."""
        for box in self._sandboxes.values():
            box.open_flows = box.open_bytes_out = 0
        for box, flows, sent in self._per_sandbox(cols, inside):
            box.open_flows, box.open_bytes_out = flows, sent

    def add_flows(self, recs: np.ndarray, inside: np.ndarray, finished: bool) -> None:
        """Flows opened by sandboxes (`inside` marks rows whose originator is one): finished flows add to the
        totals; every row is checked for a new destination, at most NEW_DESTINATIONS_PER_CALL of them (the rest
        are counted in `untracked`)."""
        if finished:
            for box, flows, sent in self._per_sandbox(recs, inside):
                box.flows += flows
                box.bytes_out += sent
        fresh = np.flatnonzero(inside)
        if len(fresh) > NEW_DESTINATIONS_PER_CALL:
            self.untracked += len(fresh) - NEW_DESTINATIONS_PER_CALL
            fresh = fresh[:NEW_DESTINATIONS_PER_CALL]
        for i in fresh.tolist():
            rec = recs[i]
            key = self._key(int(rec["orig_hi"]), int(rec["orig_lo"]))
            dest = (key, int(rec["resp_hi"]), int(rec["resp_lo"]), int(rec["resp_port"]), int(rec["proto"]))
            if dest in self._seen:
                self._seen.move_to_end(dest)
                continue
            self._seen[dest] = None
            if len(self._seen) > self.max_destinations:
                self._seen.popitem(last=False)
            box = self._sandboxes.get(key)
            if box is not None:
                box.destinations += 1
            text = format_address(int(rec["resp_hi"]), int(rec["resp_lo"]), int(rec["ip_version"]))
            self.recent.append((int(rec["first_seen_ns"]), key, text, (dest[1] << 64) | dest[2], dest[3], dest[4]))
        if len(self.recent) > 4 * self._recent_max:
            self.recent = sorted(self.recent)[-self._recent_max:]

    def note_finding(self, finding: Finding, key: int) -> None:
        box = self._sandboxes.get(key)
        if box is not None and (box.worst is None or finding.severity > box.worst):
            box.worst, box.worst_kind = finding.severity, str(finding.kind)

    def set_port(self, key: int, port: str | None) -> None:
        if key in self._sandboxes and port:
            self._sandboxes[key].port = port

    def items(self) -> Iterable[tuple[int, _Sandbox]]:
        return self._sandboxes.items()


# ------------------------------------------------------------------------------------------------ rates
class RateMeter:
    """Per-second packet and bit rates of one interface from its cumulative counters."""

    def __init__(self, history: int):
        self.history = history
        self.pps: list[float] = []
        self.bps: list[float] = []
        self._last: tuple[float, int, int] | None = None

    def sample(self, now_s: float, packets: int, nbytes: int) -> None:
        if self._last is not None:
            t, p, b = self._last
            dt = now_s - t
            if dt < 0.5:
                return
            self.pps.append(max(packets - p, 0) / dt)
            self.bps.append(max(nbytes - b, 0) * 8 / dt)
            del self.pps[:-self.history], self.bps[:-self.history]
        self._last = (now_s, packets, nbytes)
