"""Merging what the workers of `watch --workers N` report into the one view and summary the parent shows: one
interface row per worker, counters summed and carried over a worker's restarts (so that they never go down),
findings, sandboxes and new destinations side by side (sharding by sandbox keeps them apart)."""
from __future__ import annotations

from collections import defaultdict
from dataclasses import fields, replace
from typing import Sequence

from egressguard.schema import CaptureSummary, InterfaceView, LiveSnapshot, Severity


class Slot:
    """One worker: its current process, pipe and latest state, and what its earlier processes counted."""

    def __init__(self):
        self.proc = None
        self.conn = None
        self.pid = 0
        self.ready = False
        self.error: str | None = None
        self.started = 0.0
        self.restart_at: float | None = None
        self.replacing = False  # stopped on purpose: its interface got new sockets
        self.fails = 0
        self.restarts = 0
        self.view: LiveSnapshot | None = None
        self.counters: dict[str, int] = {}
        self.carry: defaultdict = defaultdict(int)  # counters of the worker's earlier processes
        self.summary: CaptureSummary | None = None
        self.bounds: tuple[str, ...] = ()
        self.seen_messages: tuple[str, ...] = ()

    def total(self, key) -> int:
        return self.carry[key] + self.counters.get(key, 0)

    def retire(self) -> None:
        """The process ended: keep what it counted, forget its state."""
        for key, value in self.counters.items():
            self.carry[key] += value
        if self.view is not None:
            self.carry["finished"] += self.view.finished_flows
            self.carry["evictions"] += self.view.evictions
            for iv in self.view.interfaces:
                for attr in ("packets", "bytes", "kernel_drops"):
                    self.carry[(iv.name, attr)] += getattr(iv, attr)
        self.view, self.counters, self.ready = None, {}, False


class Sums:
    """Counters the metrics collector reads from a LiveMonitor (engine.decoder.count, engine.table.slot_denied,
    book.untracked), summed over the workers."""

    def __init__(self, pool):  # a WorkerPool: its total(key) sums a counter over the workers
        self._pool = pool
        self.decoder, self.table = self, self

    def count(self, problem: str) -> int:
        return self._pool.total("decode:" + problem)

    @property
    def slot_denied(self) -> int:
        return self._pool.total("slot_denied")

    @property
    def untracked(self) -> int:
        return self._pool.total("untracked")


def merge_views(interfaces: Sequence[str], slots: Sequence[Slot], settings, time_ns: int, started_ns: int,
                messages: tuple[str, ...]) -> LiveSnapshot:
    """The parent's LiveSnapshot from the workers' latest ones (a worker still starting has none)."""
    rows = []
    for name in interfaces:
        for w, slot in enumerate(slots):
            view, c = slot.view, slot.carry
            iv = next((i for i in view.interfaces if i.name == name), None) if view is not None else None
            rows.append(InterfaceView(
                name, bool(iv and iv.up), (iv.packets if iv else 0) + c[(name, "packets")],
                (iv.bytes if iv else 0) + c[(name, "bytes")],
                (iv.kernel_drops if iv else 0) + c[(name, "kernel_drops")],
                iv.pps_history if iv else (), iv.bps_history if iv else (), worker=w))
    live = [slot.view for slot in slots if slot.view is not None]
    findings = sorted((r for v in live for r in v.findings),
                      key=lambda r: (-_severity(r), -float(r.get("score") or 0), -float(r.get("last_seen") or 0)))
    sandboxes = sorted((b for v in live for b in v.sandboxes),
                       key=lambda b: (-(int(b.worst) if b.worst else 0), -b.bytes_out, b.address))
    recent = sorted((d for v in live for d in v.new_destinations), key=lambda d: -d.time_ns)
    return LiveSnapshot(
        time_ns=time_ns, started_ns=started_ns, interfaces=tuple(rows), active_flows=sum(v.active_flows for v in live),
        finished_flows=sum(v.finished_flows for v in live) + sum(slot.carry["finished"] for slot in slots),
        evictions=sum(v.evictions for v in live) + sum(slot.carry["evictions"] for slot in slots),
        findings=tuple(findings[:settings.max_findings_shown]), sandboxes=tuple(sandboxes[:settings.max_sandboxes]),
        new_destinations=tuple(recent[:settings.recent_destinations]), messages=messages)


def merge_summaries(name: str, slots: Sequence[Slot], view: LiveSnapshot | None,
                    warnings: tuple[str, ...]) -> CaptureSummary:
    """The workers' last summaries summed; packets, flows and evictions from the merged view, which also counts the
    processes of a worker that died."""
    done = [slot.summary for slot in slots if slot.summary is not None]
    values = {}
    for f in fields(CaptureSummary):
        if done and type(getattr(done[0], f.name)) is int and f.name not in ("first_ns", "last_ns"):
            values[f.name] = sum(getattr(s, f.name) for s in done)
    base = done[0] if done else CaptureSummary(name, "live", "", 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, frozenset(), 0, 0,
                                               False)
    if view is not None:
        values.update(packets=sum(i.packets for i in view.interfaces), flows=view.finished_flows,
                      evictions=view.evictions)
    if done:
        values.update(first_ns=min(s.first_ns for s in done), last_ns=max(s.last_ns for s in done),
                      link_types=frozenset().union(*(s.link_types for s in done)))
    return replace(base, capture=name, warnings=warnings, **values)


def _severity(record: dict) -> int:
    try:
        return int(Severity.parse(record.get("severity")))
    except ValueError:
        return 0


__all__ = ["Slot", "Sums", "merge_summaries", "merge_views"]
