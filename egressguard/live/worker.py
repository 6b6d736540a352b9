"""The body of one `watch --workers N` worker process (live/workers.py is the parent): a LiveMonitor over the
member sockets the parent opened, sending what its gate lets out and, every second, its view and counters."""
from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
from dataclasses import dataclass
from typing import Callable

from egressguard.capture.fanout import Member, MemberCapture
from egressguard.errors import EgressGuardError
from egressguard.live.gate import FindingGate, finding_key
from egressguard.live.monitor import LiveMonitor, WatchSettings

SNAPSHOT_EVERY_S = 1.0  # a worker's view and counters go to the parent this often
PR_SET_PDEATHSIG = 1  # prctl(2): the signal a process gets when its parent dies


@dataclass(frozen=True)
class WorkerPlan:
    """What every worker process is started with (pickled by multiprocessing)."""

    rules_file: str | None
    make_context: Callable  # rules -> DetectorContext (pipeline.default_context)
    settings: WatchSettings
    snaplen: int
    user: str | None
    evidence: tuple | None = None  # (DIR, EvidenceLimits) of --evidence: each worker keeps its own buffer and files


class _KeyedGate(FindingGate):
    """A worker's gate that remembers what it last let out: LiveMonitor calls emit right after admit says yes."""

    key: tuple = ()
    severity = 0
    score = 0.0

    def admit(self, finding, now_s: float) -> bool:
        admitted = super().admit(finding, now_s)
        if admitted:
            self.key, self.severity, self.score = finding_key(finding), int(finding.severity), float(finding.score)
        return admitted


def _counters(monitor: LiveMonitor) -> dict[str, int]:
    from egressguard.live.metrics import DECODE_PROBLEMS

    out = {"rounds": monitor.rounds, "untracked": monitor.book.untracked, "window_skipped": monitor.window_skipped,
           "slot_denied": monitor.engine.table.slot_denied}
    out.update({"decode:" + p: monitor.engine.decoder.count(p) for p in DECODE_PROBLEMS})
    return {k: int(v) for k, v in out.items()}


def worker_main(index: int, members: list[Member], plan: WorkerPlan, conn, parent_pid: int) -> None:
    """One worker process: a LiveMonitor over its member sockets until SIGTERM (or its parent is gone)."""
    stop = threading.Event()
    holder: list[LiveMonitor] = []
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the whole process group: the parent decides
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGHUP, lambda *_: holder and holder[0].request_reload())
    with contextlib.suppress(OSError, AttributeError):
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    lock = threading.Lock()

    def send(message: tuple) -> None:
        with lock:
            try:
                conn.send(message)
            except (OSError, ValueError):  # the parent is gone
                stop.set()

    try:
        from egressguard.capture.live import drop_privileges
        from egressguard.policy.rules import load_rules

        ctx = plan.make_context(load_rules(plan.rules_file))
        source = MemberCapture(members, snaplen=plan.snaplen)
        source.open()
        gate = _KeyedGate(plan.settings.suppress_s)
        evidence = None
        if plan.evidence is not None:
            from egressguard.live.evidence_keeper import EvidenceKeeper

            evidence = EvidenceKeeper(*plan.evidence)  # files are named by process id: workers never share one
        monitor = LiveMonitor(source, ctx, lambda record: send(("finding", gate.key, gate.severity, gate.score,
                                                                   record)), plan.settings, evidence=evidence)
        monitor.gate = gate
        holder.append(monitor)
        monitor.warm_up()
        if plan.user is not None and os.geteuid() == 0:  # a restart by a parent that already dropped root
            drop_privileges(plan.user)
    except EgressGuardError as exc:
        send(("error", str(exc)))
        sys.exit(int(exc.exit_status))
    send(("ready", os.getpid()))

    def tick() -> None:
        while not stop.wait(SNAPSHOT_EVERY_S):
            if os.getppid() != parent_pid:
                stop.set()
                return
            view = monitor.snapshot()
            if view is not None:
                send(("view", view, _counters(monitor)))

    threading.Thread(target=tick, name="snapshots", daemon=True).start()
    try:
        summary = monitor.run(stop)
    except EgressGuardError as exc:
        send(("error", str(exc)))
        sys.exit(int(exc.exit_status))
    send(("done", summary, monitor.latest_view(), _counters(monitor), monitor.bounds_hit()))


__all__ = ["WorkerPlan", "worker_main"]
