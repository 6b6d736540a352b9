"""`watch --workers N`: N worker processes, each running the whole engine (a LiveMonitor) on its own member socket of
every interface's fanout group (capture/fanout.py: sharded by sandbox), and one parent that keeps the output: one
finding gate, stdout, the alerts file, hooks, metrics and the dashboard.

Workers send the findings their own gate lets out, with the gate key, so that the parent's gate decides (a
restarted worker reports its sandboxes' findings again; the parent says them once), and every second their
LiveSnapshot and counters, over one Pipe each (a shared Queue would hang every worker on its lock when one is killed
holding it). The parent merges the snapshots (merge.py): one interface row per worker, counters summed and carried
over a worker's restarts, findings, sandboxes and destinations side by side. A worker that dies is
reported (stderr, dashboard, `egressguard_worker_restarts_total`) and started again on the same sockets. Workers are
started with `spawn` (a fresh interpreter): a fork of a parent whose threads may hold locks could hang.
"""
from __future__ import annotations

import contextlib
import multiprocessing
import os
import signal
import sys
import threading
import time
from dataclasses import replace
from multiprocessing.connection import wait as wait_for
from typing import Callable, Sequence

from egressguard.capture.fanout import Member, default_inside, interface_addresses, open_group, set_program, \
    shard_program
from egressguard.capture.packet_socket import IFF_UP, InterfaceDown, PacketSocket, interface_state
from egressguard.errors import CaptureError
from egressguard.live.gate import FindingGate
from egressguard.live.merge import Slot, Sums, merge_summaries, merge_views
from egressguard.live.worker import WorkerPlan, worker_main
from egressguard.schema import CaptureSummary, LiveSnapshot

READY_TIMEOUT_S = 300.0  # first start: compiling the kernels on a cold numba cache takes minutes
STOP_TIMEOUT_S = 60.0  # a worker flushes its open flows through the detectors before it exits
BACKOFF_S = (0.0, 1.0, 2.0, 5.0, 10.0, 30.0)  # restart delays for a worker that keeps dying within STABLE_S
STABLE_S = 10.0


class WorkerPool:
    """The parent of `watch --workers N`; offers what `watch`, the dashboard and the metrics exporter use of a
    LiveMonitor (run, snapshot, latest_view, note, request_reload, summary, bounds_hit, emitted, reported, ...).

    Args:
        interfaces: interface names (up when the pool opens); workers: processes (fanout members) per interface.
        ctx: the parent's detector context (its rules give the sandbox networks and service addresses).
        emit: called (in the thread running `run`) for each finding the parent's gate lets out.
        plan: what each worker runs; bpf: optional kernel filter; warn: one line for stderr.
    """

    def __init__(self, interfaces: Sequence[str], workers: int, ctx, emit: Callable[[dict], None], plan: WorkerPlan,
                 bpf: str | None = None, ring_bytes: int = 32 << 20, warn: Callable[[str], None] | None = None,
                 clock: Callable[[], int] = time.time_ns):
        self.interfaces = list(interfaces)
        self.workers = workers
        self.rules = ctx.rules
        self.emit = emit
        self.plan = plan
        self.settings = plan.settings
        self.bpf, self.ring_bytes = bpf, ring_bytes
        self.warn = warn or (lambda text: print(f"egressguard: {text}", file=sys.stderr, flush=True))
        self.clock = clock
        self.name = "live:" + ",".join(self.interfaces)
        self.gate = FindingGate(plan.settings.suppress_s)
        self.emitted = 0
        self.reported: dict[tuple[str, str], int] = {}
        self.messages: list[str] = []
        self.started_ns = clock()
        self.done = False
        self.engine = self.book = Sums(self)
        self._slots = [Slot() for _ in range(workers)]
        self._members: list[list[Member]] = [[] for _ in range(workers)]
        self._groups: list[list[PacketSocket]] = []
        self._mp = multiprocessing.get_context("spawn")
        self._stopping = False
        self._ctl = None  # socket for interface ioctls (interface re-created?)
        self._next_check = 0.0
        self._reopen_failed: set[str] = set()
        self._reload = threading.Event()
        self._lock = threading.Lock()
        self._view: LiveSnapshot | None = None

    # ---- counters the metrics exporter reads
    def total(self, key) -> int:
        return sum(slot.total(key) for slot in self._slots)

    @property
    def rounds(self) -> int:
        return self.total("rounds")

    @property
    def window_skipped(self) -> int:
        return self.total("window_skipped")

    @property
    def restarts(self) -> list[int]:
        return [slot.restarts for slot in self._slots]

    # ---- start
    def program(self) -> list[tuple]:
        """The fanout program for the rules in force and the interfaces' own addresses (the gateway)."""
        rules = self.rules.current.settings
        services = [(a, a) for a in interface_addresses(self.interfaces)]
        services += list(rules.resolvers) + list(rules.host_addresses)
        return shard_program(services, list(rules.sandbox_networks) or default_inside())

    def open(self) -> None:
        """Open every interface's fanout group, one member socket per worker (needs root or CAP_NET_RAW)."""
        import socket

        program = self.program()
        self._ctl = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            for index, name in enumerate(self.interfaces):
                try:
                    members, ports = open_group(name, index, self.workers, program, self.bpf, self.plan.snaplen,
                                                self.ring_bytes, False)
                except InterfaceDown:
                    raise CaptureError(name, "interface is down (with --workers the interfaces must be up when "
                                             "watch starts)") from None
                self._groups.append(ports)
                for member in members:
                    self._members[member.worker].append(member)
        except BaseException:
            self.close()
            raise

    def warm_up(self) -> None:
        """Start every worker and wait until each has compiled its kernels and reads its rings."""
        for w in range(self.workers):
            self._start(w)
        deadline = time.monotonic() + READY_TIMEOUT_S
        while not all(slot.ready for slot in self._slots):
            self._pump(0.5)
            for w, slot in enumerate(self._slots):
                if not slot.ready and slot.proc.exitcode is not None:
                    self._drain(slot)
                    self.close()
                    raise CaptureError(f"worker {w}", slot.error or f"exited with status {slot.proc.exitcode}")
            if time.monotonic() > deadline:
                self.close()
                raise CaptureError("workers", f"not ready after {READY_TIMEOUT_S:.0f} s")
        self._refresh_view()

    def _start(self, w: int) -> None:
        slot = self._slots[w]
        receiver, sender = self._mp.Pipe(duplex=False)
        proc = self._mp.Process(target=worker_main, args=(w, self._members[w], self.plan, sender, os.getpid()),
                                name=f"egressguard-worker-{w}", daemon=True)
        proc.start()
        sender.close()
        slot.proc, slot.conn, slot.pid, slot.error = proc, receiver, proc.pid, None
        slot.started, slot.restart_at, slot.ready = time.monotonic(), None, False
        self.warn(f"worker {w} started (pid {proc.pid})")

    # ---- operator actions (as LiveMonitor)
    def note(self, text: str) -> None:
        stamp = time.strftime("%H:%M:%S", time.localtime(self.clock() / 1e9))
        with self._lock:
            self.messages.append(f"{stamp} {text}")
            del self.messages[:-20]

    def request_reload(self) -> None:
        """Reload the rules at the loop's next turn, in the parent (the fanout program) and every worker."""
        self._reload.set()

    def _reload_rules(self) -> None:
        error = self.rules.reload()
        if error is None:
            program = self.program()
            for ports in self._groups:
                with contextlib.suppress(OSError):
                    set_program(ports[0].raw, program)
        for slot in self._slots:
            if slot.proc is not None and slot.proc.exitcode is None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(slot.pid, signal.SIGHUP)
        self.note(f"rules not reloaded, the old ones stay: {error}" if error is not None
                  else f"rules reloaded from {self.rules.current.source_path} (parent and workers)")

    # ---- the loop
    def run(self, stop: threading.Event) -> CaptureSummary:
        """Take findings and views from the workers, restart the ones that die, until `stop`; then stop every
        worker (each flushes its open flows and sends its last findings) and return the merged summary."""
        last_view = 0.0
        try:
            while not stop.is_set():
                self._pump(0.25)
                self._check_interfaces()
                self._supervise()
                if self._reload.is_set():
                    self._reload.clear()
                    self._reload_rules()
                if time.monotonic() - last_view >= 0.5:
                    last_view = time.monotonic()
                    self._refresh_view()
        finally:
            self._stop_workers()
            self._refresh_view()
            self.close()
            self.done = True
        return self.summary()

    def _pump(self, timeout: float) -> None:
        """Handle every message waiting (or arriving within `timeout`) on the workers' pipes."""
        conns = {slot.conn: slot for slot in self._slots if slot.conn is not None}
        if not conns:
            time.sleep(timeout)
            return
        for conn in wait_for(list(conns), timeout):
            self._read(conns[conn])

    def _drain(self, slot: Slot) -> None:
        while slot.conn is not None and slot.conn.poll():
            self._read(slot)

    def _read(self, slot: Slot) -> None:
        try:
            message = slot.conn.recv()
        except (EOFError, OSError):
            slot.conn.close()
            slot.conn = None
            return
        kind = message[0]
        if kind == "finding":
            _, key, severity, score, record = message
            if self.gate.admit_key(key, severity, score, self.clock() / 1e9):
                self.emitted += 1
                tally = (str(record.get("kind")), str(record.get("severity")))
                self.reported[tally] = self.reported.get(tally, 0) + 1
                self.emit(record)
        elif kind == "view":
            slot.view, slot.counters = message[1], message[2]
            self._take_messages(slot)
        elif kind == "ready":
            slot.ready = True
        elif kind == "error":
            slot.error = message[1]
        elif kind == "done":
            _, slot.summary, slot.view, slot.counters, slot.bounds = message

    def _take_messages(self, slot: Slot) -> None:
        w = self._slots.index(slot)
        new = [m for m in slot.view.messages if m not in slot.seen_messages]
        slot.seen_messages = slot.view.messages
        with self._lock:
            for text in new:
                self.messages.append(f"{text[:8]} worker {w}: {text[9:]}")
            del self.messages[:-20]

    def _check_interfaces(self) -> None:
        """An interface deleted and re-created has unbound every member socket for good (packet_notifier): open a
        new fanout group on it and restart the workers on the new sockets (their flow state starts afresh)."""
        now = time.monotonic()
        if now < self._next_check or self._ctl is None:
            return
        self._next_check = now + 1.0
        for index, name in enumerate(self.interfaces):
            ifindex, flags = interface_state(self._ctl, name)
            if not ifindex or ifindex == self._groups[index][0].ifindex or not flags & IFF_UP:
                continue
            try:
                members, ports = open_group(name, index, self.workers, self.program(), self.bpf, self.plan.snaplen,
                                            self.ring_bytes, False)
            except CaptureError as exc:
                if name not in self._reopen_failed:
                    self._reopen_failed.add(name)
                    self.warn(f"warning: {name} was re-created but cannot be reopened: {exc}")
                    self.note(f"{name} was re-created but cannot be reopened: {exc}")
                continue
            self._reopen_failed.discard(name)
            for port in self._groups[index]:
                port.release()
            self._groups[index] = ports
            for member in members:
                self._members[member.worker][index] = member
            self.warn(f"{name} was re-created: new fanout group; restarting the workers on it")
            self.note(f"{name} was re-created: new fanout group; restarting the workers on it")
            for slot in self._slots:
                if slot.proc is not None and slot.proc.exitcode is None:
                    slot.replacing = True
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(slot.proc.pid, signal.SIGTERM)

    def _supervise(self) -> None:
        """Report and restart workers whose process ended (with a growing delay when one keeps dying)."""
        now = time.monotonic()
        for w, slot in enumerate(self._slots):
            if slot.proc is not None and slot.proc.exitcode is not None and slot.restart_at is None:
                self._drain(slot)
                if slot.replacing:  # stopped for new sockets: not a death
                    slot.retire()
                    slot.proc.join(1)
                    if slot.conn is not None:
                        slot.conn.close()
                    slot.proc, slot.conn, slot.replacing, slot.restart_at = None, None, False, now
                    self._start(w)
                    continue
                code = slot.proc.exitcode
                how = f"killed by signal {-code}" if code < 0 else f"exited with status {code}"
                if slot.error:
                    how += f" ({slot.error})"
                slot.fails = slot.fails + 1 if now - slot.started < STABLE_S else 0
                delay = BACKOFF_S[min(slot.fails, len(BACKOFF_S) - 1)]
                text = f"worker {w} (pid {slot.pid}) {how}; restarting it" + (f" in {delay:.0f} s" if delay else "")
                self.warn(f"warning: {text}")
                self.note(text)
                slot.restarts += 1
                slot.retire()
                slot.proc.join(1)
                if slot.conn is not None:
                    slot.conn.close()
                slot.proc = slot.conn = None
                slot.restart_at = now + delay
            if slot.proc is None and slot.restart_at is not None and now >= slot.restart_at:
                self._start(w)

    def _stop_workers(self) -> None:
        self._stopping = True
        for slot in self._slots:
            if slot.proc is not None and slot.proc.exitcode is None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(slot.proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + STOP_TIMEOUT_S
        while time.monotonic() < deadline and any(slot.conn is not None or (slot.proc is not None and
                                                                            slot.proc.exitcode is None)
                                                  for slot in self._slots):
            self._pump(0.2)
        for w, slot in enumerate(self._slots):
            if slot.proc is None:
                continue
            if slot.proc.exitcode is None:
                self.warn(f"warning: worker {w} (pid {slot.pid}) did not stop in {STOP_TIMEOUT_S:.0f} s; killed")
                slot.proc.kill()
            slot.proc.join(10)

    def close(self) -> None:
        """Kill workers still running (a start that failed) and close the sockets the parent kept."""
        for slot in self._slots:
            if slot.proc is not None and slot.proc.exitcode is None:
                slot.proc.kill()
                slot.proc.join(10)
            if slot.conn is not None:
                slot.conn.close()
                slot.conn = None
        for ports in self._groups:
            for port in ports:
                port.release()
        self._groups = []
        if self._ctl is not None:
            self._ctl.close()
            self._ctl = None
        for members in self._members:
            for member in members:
                with contextlib.suppress(OSError):
                    member.sock.close()

    # ---- views
    def _refresh_view(self) -> None:
        view = merge_views(self.interfaces, self._slots, self.settings, self.clock(), self.started_ns,
                           tuple(self.messages))
        with self._lock:
            self._view = view

    def snapshot(self) -> LiveSnapshot | None:
        """The merged view (refreshed twice a second); None once the pool has stopped."""
        if self.done:
            return None
        with self._lock:
            view = self._view
            if view is not None and view.messages != tuple(self.messages):
                view = replace(view, messages=tuple(self.messages))
        return view

    def latest_view(self) -> LiveSnapshot | None:
        with self._lock:
            return self._view

    def summary(self) -> CaptureSummary:
        """The workers' last summaries summed; packets, flows and evictions also count restarted workers."""
        return merge_summaries(self.name, self._slots, self.latest_view(), tuple(self.messages) + self.bounds_hit())

    def bounds_hit(self) -> tuple[str, ...]:
        out = [f"worker {w}: {text}" for w, slot in enumerate(self._slots) for text in slot.bounds]
        if any(self.restarts):
            out.append("worker restarts: " + ", ".join(f"worker {w} {n}" for w, n in enumerate(self.restarts) if n))
        return tuple(out)


__all__ = ["WorkerPlan", "WorkerPool", "worker_main"]
