"""Live monitoring, as a library API: live interfaces -> decode -> flows -> detect, driven by timers.

Flows still open are judged every `judge_every_s` from a snapshot of the flow table, so a reverse tunnel or a pool
connection is reported while it lasts, not when it ends; finished flows go through the same detectors as in
`analyze`. A FindingGate lets a finding out once, and again only when it got worse or after the suppression
interval. The CLI's `watch` and the dashboard only render what LiveMonitor hands them.
"""
from __future__ import annotations

import os
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field, replace
from typing import Callable, Iterable, Iterator, Protocol

import numpy as np

from egressguard.capture import Chunk
from egressguard.decode import Decoder
from egressguard.detect import BatchResult, DETECTORS, Detector, finish_detectors, run_detectors
from egressguard.detect.dns_binding import DnsBinding, DnsObserver
from egressguard.detect.mining import MiningDetector
from egressguard.flows import FlowBatch, FlowTable
from egressguard.pipeline import Settings
from egressguard.report.records import finding_record, format_address, format_mac
from egressguard.schema import (CaptureSummary, DestinationView, EndReason, Finding, InterfaceView, LiveSnapshot,
                                SandboxView, Severity, proto_name)

SEVERITY_OF = {s.label(): s for s in Severity}
WINDOW_FLOWS = 20_000  # open flows an aggregating detector (DNS/ICMP tunnels) judges per round, newest first
NEW_DESTINATIONS_PER_CALL = 5000  # flows a batch or round checks for a new destination (bounds work under floods)


class LiveSource(Protocol):
    """What the monitor reads from (egressguard.capture.live.LiveCapture)."""

    interfaces: list[str]

    def chunks(self, timeout_s: float = 0.1) -> Iterator[Chunk]: ...

    def interface_stats(self) -> list: ...

    def close(self) -> None: ...


@dataclass(frozen=True)
class WatchSettings:
    """Tuning of live monitoring on top of the pipeline's Settings."""

    pipeline: Settings = field(default_factory=Settings)
    judge_every_s: float = 2.0  # open flows are judged this often (from a table snapshot)
    window_every_s: float = 10.0  # aggregating detectors (DNS/ICMP tunnels) re-read every open flow this often
    suppress_s: float = 600.0  # the same finding again only after this long, unless it got worse
    sweep_every_s: float = 1.0  # idle flows are expired on this timer even when no packet arrives
    rate_history_s: int = 60  # seconds of packet/bit rate history per interface
    max_findings_shown: int = 200  # current findings kept for the dashboard
    max_sandboxes: int = 4096  # per-sandbox rows kept (the least active are dropped first)
    max_destinations: int = 100_000  # (sandbox, destination) pairs remembered to tell new destinations
    recent_destinations: int = 50


# ------------------------------------------------------------------------------------------------ finding gate
def finding_key(record: dict) -> tuple:
    """What makes two findings 'the same thing': kind, sandbox, destination and what the finding is about beyond
    that (the egress reason, the tunnelled DNS domain)."""
    subject = record.get("reason") or (record.get("dns_tunnel") or {}).get("domain")
    return (record.get("kind"), record.get("src_ip"), record.get("dst_ip"), record.get("dst_port"),
            record.get("proto"), subject)


class FindingGate:
    """Lets a finding through the first time, when it is worse than what was last let through (higher severity,
    or a score higher by `worse_by`), or when `suppress_s` have passed since; remembers at most `capacity` keys."""

    def __init__(self, suppress_s: float, capacity: int = 100_000, worse_by: float = 0.1):
        self.suppress_s = suppress_s
        self.capacity = capacity
        self.worse_by = worse_by
        self.suppressed = 0
        self._last: OrderedDict[tuple, tuple[float, int, float]] = OrderedDict()  # key -> (time, severity, score)

    def admit(self, record: dict, now_s: float) -> bool:
        key = finding_key(record)
        severity = int(SEVERITY_OF.get(record.get("severity"), Severity.LOW))
        score = float(record.get("score", 0.0))
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


# ------------------------------------------------------------------------------------------------ sandboxes
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

    def note_finding(self, record: dict, key: int) -> None:
        box = self._sandboxes.get(key)
        severity = SEVERITY_OF.get(record.get("severity"))
        if box is not None and severity is not None and (box.worst is None or severity > box.worst):
            box.worst, box.worst_kind = severity, str(record.get("kind"))

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


# ------------------------------------------------------------------------------------------------ the monitor
def _judges_open_flows(cls: type) -> bool:
    """Judges the open flows that changed since the last round (`judges_open_flows = True`)."""
    return getattr(cls, "judges_open_flows", False) is True


def _judges_open_window(cls: type) -> bool:
    """Aggregates over many flows: judges every open flow its `open_window(columns)` selects, each round."""
    return getattr(cls, "judges_open_flows", False) == "window"


class LiveMonitor:
    """Runs the live pipeline over a LiveSource until `stop` is set; `emit` gets each new finding record (with
    `sandbox`, `sandbox_port` and `interface` added) in the monitor's thread; `snapshot()` may be called from any
    thread.

    Args:
        source: the open live capture.
        rules: an ActiveRules (reloaded in place on SIGHUP by the caller through `reload_rules`).
        emit: called for every finding the gate lets through.
        settings: timers and bounds.
        clock: ns wall clock (tests pass their own).
    """

    def __init__(self, source: LiveSource, rules, emit: Callable[[dict], None],
                 settings: WatchSettings = WatchSettings(), clock: Callable[[], int] = time.time_ns):
        from egressguard.detect.egress import UnexpectedDestinationDetector

        self.source = source
        self.rules = rules
        self.emit = emit
        self.settings = settings
        self.clock = clock
        self.name = "live:" + ",".join(source.interfaces)
        self.table = FlowTable(settings.pipeline.flows)
        self.decoder = Decoder()
        self.binding = DnsBinding(rules.current.settings.min_dns_ttl_s)
        self.pools = MiningDetector(None).pools  # loaded once, shared by the per-round detectors
        self._egress_cls = UnexpectedDestinationDetector
        self.detectors = self._final_detectors()
        self.gate = FindingGate(settings.suppress_s)
        self.book = SandboxBook(settings.max_sandboxes, settings.max_destinations, settings.recent_destinations)
        self.rates = {name: RateMeter(settings.rate_history_s) for name in source.interfaces}
        self.findings: OrderedDict[tuple, dict] = OrderedDict()  # current findings by key
        self.messages: list[str] = []
        self.emitted = 0
        self.started_ns = clock()
        self._lock = threading.Lock()
        self._view: LiveSnapshot | None = None
        self._ports: dict[int, str] = {}
        self._ports_at = 0.0
        self._active = 0
        self._finished = 0
        self._reload = threading.Event()
        self._last_round_ns = 0
        self._round_started_ns = 0
        self._last_window_ns = 0
        self.window_skipped = 0  # open flows left out of aggregating detectors' rounds (more than WINDOW_FLOWS)
        self.done = False
        self._refresh_view()

    # ---- detectors
    def _final_detectors(self) -> list[Detector]:
        """Every registered detector, fed finished flows (as `analyze` does), sharing one DNS binding."""
        out: list[Detector] = [DnsObserver(self.binding)]
        for cls in DETECTORS.values():
            out.append(self._make(cls))
        return out

    def _make(self, cls: type) -> Detector:
        kw: dict = {}
        if getattr(cls, "uses_rules", False):
            kw["rules"] = self.rules
        if cls is MiningDetector:
            kw["pools"] = self.pools
        return cls(self.binding, **kw) if getattr(cls, "uses_dns_binding", False) else cls(**kw)

    def _round_detectors(self) -> list[Detector]:
        """Fresh detectors for one judgement of the open flows: a snapshot shows a flow again and again, so these
        keep no memory between rounds (the gate drops what was already said)."""
        return [DnsObserver(self.binding)] + [self._make(cls) for cls in DETECTORS.values()
                                              if _judges_open_flows(cls)]

    def warm_up(self) -> None:
        """Run every stage once on a few made-up frames with throwaway state: numba kernels are compiled or loaded
        from the cache and lazily imported modules are loaded now (before `watch --user` drops root, after which
        neither the cache nor root-only module paths may be readable)."""
        buf, frames = _warm_up_frames()
        table = FlowTable(replace(self.settings.pipeline.flows, capacity=64, payload_slots=8))
        packets = Decoder().decode_batch(buf, frames)
        for _ in table.update(packets, buf):
            pass
        snap = table.snapshot()
        detectors = [DnsObserver(DnsBinding())] + [self._make(cls) for cls in DETECTORS.values()]
        for det in detectors:  # fresh instances: their state is thrown away
            if hasattr(det, "binding") and det.binding is self.binding:
                det.binding = DnsBinding()
        run_detectors(detectors, snap, "warm-up")
        for _ in table.expire(int(frames["ts_ns"].max()) + (1 << 62)):
            pass
        for batch in table.flush(EndReason.END_OF_INPUT):
            run_detectors(detectors, batch, "warm-up")
        finish_detectors(detectors, "warm-up")
        self._refresh_view()

    # ---- operator actions
    def reload_rules(self) -> str:
        """Reload the rules file in force; on error the old rules stay. Returns the message to show."""
        error = self.rules.reload()
        text = (f"rules not reloaded, the old ones stay: {error}" if error is not None
                else f"rules reloaded from {self.rules.current.source_path}")
        self.note(text)
        return text

    def request_reload(self) -> None:
        """Ask for a rules reload at the loop's next turn (safe from a signal handler)."""
        self._reload.set()

    def note(self, text: str) -> None:
        """An operator message for the dashboard (kept: the last 20)."""
        stamp = time.strftime("%H:%M:%S", time.localtime(self.clock() / 1e9))
        with self._lock:
            self.messages.append(f"{stamp} {text}")
            del self.messages[:-20]

    # ---- the loop
    def run(self, stop: threading.Event) -> CaptureSummary:
        """Read, aggregate and judge until `stop` is set (or the source ends); then flush every open flow through
        the detectors, so nothing pending is lost, and return the run's summary."""
        s = self.settings
        last_sweep = last_judge = last_view = 0
        try:
            for chunk in self.source.chunks(timeout_s=min(0.2, s.sweep_every_s)):
                if len(chunk.frames):
                    packets = self.decoder.decode_batch(chunk.buf, chunk.frames)
                    for batch in self.table.update(packets, chunk.buf):
                        self._finished_batch(batch)
                now = self.clock()
                if now - last_sweep >= s.sweep_every_s * 1e9:
                    last_sweep = now
                    for batch in self.table.expire(now):
                        self._finished_batch(batch)
                if now - last_judge >= s.judge_every_s * 1e9:
                    last_judge = now
                    self._judge_open_flows()
                    self._report(finish_detectors(self.detectors, self.name))
                if self._reload.is_set():
                    self._reload.clear()
                    self.reload_rules()
                if now - last_view >= 0.5e9:
                    last_view = now
                    self._refresh_view()
                if stop.is_set():
                    break
        finally:
            self.source.close()
            try:  # what is still open is judged as if the capture ended here: no pending finding is lost
                for batch in self.table.flush(EndReason.END_OF_INPUT):
                    self._finished_batch(batch)
                self._report(finish_detectors(self.detectors, self.name))
                self._refresh_view()
            finally:
                self.done = True
        return self.summary()

    def _finished_batch(self, batch: FlowBatch) -> None:
        recs = batch.records
        self._finished += len(recs)
        self._report(run_detectors(self.detectors, batch, self.name))
        if len(recs):
            self.book.add_flows(recs, self.rules.current.inside(recs["orig_hi"], recs["orig_lo"]), finished=True)

    def _judge_open_flows(self) -> None:
        """Judge the open flows that saw packets since the last round (a flow that did not change has no new
        evidence); the per-sandbox open counts come from a few columns of all of them."""
        rules = self.rules.current
        cols = self.table.live_columns("orig_hi", "orig_lo", "orig_bytes", "orig_mac", "last_seen_ns", "ip_version",
                                       "proto", "resp_port")
        self._active = len(cols["orig_hi"])
        self.book.count_open(cols, rules.inside(cols["orig_hi"], cols["orig_lo"]))
        now = self.clock()
        windows = now - self._last_window_ns >= self.settings.window_every_s * 1e9
        if windows:
            self._last_window_ns = now
        for cls in DETECTORS.values():
            if windows and _judges_open_window(cls):
                window = cls.open_window(cols)
                if window.sum() > WINDOW_FLOWS:  # bounded work under a flood: the most recently active ones
                    rows = np.flatnonzero(window)
                    keep = rows[np.argpartition(cols["last_seen_ns"][rows], -WINDOW_FLOWS)[-WINDOW_FLOWS:]]
                    self.window_skipped += len(rows) - WINDOW_FLOWS
                    window = np.zeros_like(window)
                    window[keep] = True
                if window.any():
                    view, detector = self.table.snapshot(where=window), self._make(cls)
                    result = detector.inspect(view, self.name)
                    result.extend(finish_detectors([detector], self.name))
                    self._report(result)
        batch = self.table.snapshot(since_ns=self._last_round_ns)
        recs = batch.records
        if not len(recs):
            return
        self._last_round_ns = int(recs["last_seen_ns"].max()) + 1
        new = recs["first_seen_ns"] >= self._round_started_ns  # flows that began since the last round
        self._round_started_ns = self._last_round_ns
        self.book.add_flows(recs[new], rules.inside(recs["orig_hi"][new], recs["orig_lo"][new]), finished=False)
        detectors = self._round_detectors()
        result = run_detectors(detectors, batch, self.name)
        result.extend(finish_detectors(detectors, self.name))
        self._report(result)

    def _report(self, result: BatchResult) -> None:
        if not result.findings:
            return
        now_s = self.clock() / 1e9
        for finding in result.findings:
            record = self._record(finding)
            key = finding_key(record)
            with self._lock:
                self.findings[key] = record
                self.findings.move_to_end(key)
                while len(self.findings) > self.settings.max_findings_shown:
                    self.findings.popitem(last=False)
            self.book.note_finding(record, (int(finding.flow["orig_hi"]) << 64) | int(finding.flow["orig_lo"]))
            if self.gate.admit(record, now_s):
                self.emitted += 1
                self.emit(record)

    def _record(self, finding: Finding) -> dict:
        record = finding_record(finding)
        rec = finding.flow
        key = (int(rec["orig_hi"]) << 64) | int(rec["orig_lo"])
        rules = self.rules.current
        name = rules.sandbox_name(key, int(rec["orig_mac"]))
        record["sandbox"] = name if name is not None else record.get("src_ip")
        mac = int(rec["orig_mac"])
        record["src_mac"] = format_mac(mac)
        iface = int(rec["iface"])
        record["interface"] = self.source.interfaces[iface] if iface < len(self.source.interfaces) else None
        record["sandbox_port"] = self._port(mac, record["interface"])
        self.book.set_port(key, record["sandbox_port"])
        return record

    def _port(self, mac: int, interface: str | None) -> str | None:
        """The bridge port (veth) behind which a MAC sits, when the capture interface is a bridge; else the capture
        interface itself (watching a veth directly)."""
        now = time.monotonic()
        # every 2 s, and at once (at most 10 times a second) for a MAC the bridge learned since the last read
        if now - self._ports_at > 2.0 or (mac and mac not in self._ports and now - self._ports_at > 0.1):
            self._ports_at = now
            self._ports = {}
            try:
                from egressguard.capture.live import bridge_ports
            except ImportError:  # pragma: no cover - the live layer is part of the package
                bridge_ports = None
            if bridge_ports is not None:
                for name in self.source.interfaces:
                    for m, port in bridge_ports(name).items():
                        self._ports[m] = port
        return self._ports.get(mac, None if interface is None or _is_bridge(interface) else interface)

    # ---- views
    def _refresh_view(self) -> None:
        now = self.clock()
        stats = list(self.source.interface_stats())
        for st in stats:
            meter = self.rates.get(st.name)
            if meter is not None:
                meter.sample(now / 1e9, st.packets, st.bytes)
        interfaces = tuple(InterfaceView(st.name, bool(st.up), int(st.packets), int(st.bytes), int(st.kernel_drops),
                                         tuple(self.rates[st.name].pps), tuple(self.rates[st.name].bps))
                           for st in stats)
        rules = self.rules.current
        sandboxes = []
        for key, box in self.book.items():
            name = rules.sandbox_name(key, box.mac) or box.address
            mac = format_mac(box.mac)
            if box.port is None and box.mac:
                box.port = self._port(box.mac, None)
            sandboxes.append(SandboxView(name, box.address, mac, box.port, box.flows + box.open_flows,
                                         box.bytes_out + box.open_bytes_out, box.destinations, box.worst,
                                         box.worst_kind))
        sandboxes.sort(key=lambda v: (-(int(v.worst) if v.worst else 0), -v.bytes_out, v.address))
        names_of = {key: rules.sandbox_name(key, box.mac) or box.address for key, box in self.book.items()}
        recent = []
        for ts, key, text, dst, port, proto in sorted(self.book.recent, reverse=True)[:self.settings.recent_destinations]:
            dest = f"[{text}]:{port}" if ":" in text else f"{text}:{port}"
            names = tuple(self.binding.names(key, dst, ts / 1e9)) if proto in (6, 17) else ()
            recent.append(DestinationView(ts, names_of.get(key, ""), f"{dest}/{proto_name(proto)}", names))
        with self._lock:
            findings = sorted(self.findings.values(),
                              key=lambda r: (-int(SEVERITY_OF.get(r.get("severity"), Severity.LOW)),
                                             -float(r.get("score", 0)), -float(r.get("last_seen") or 0)))
            self._view = LiveSnapshot(
                time_ns=now, started_ns=self.started_ns, interfaces=interfaces, active_flows=self._active,
                finished_flows=self._finished, evictions=self.table.evictions, findings=tuple(findings),
                sandboxes=tuple(sandboxes), new_destinations=tuple(recent), messages=tuple(self.messages))

    def snapshot(self) -> LiveSnapshot | None:
        """The latest view (refreshed twice a second by the monitor thread); None once the monitor has stopped."""
        if self.done:
            return None
        with self._lock:
            view = self._view
            if view is not None and self.messages and view.messages != tuple(self.messages):
                view = replace(view, messages=tuple(self.messages))
        return view

    def summary(self) -> CaptureSummary:
        d = self.decoder
        return CaptureSummary(
            capture=self.name, format="live", compression="", packets=d.count("packets"),
            wire_bytes=d.count("wire_bytes"), captured_bytes=d.count("captured_bytes"), flows=self.table.created,
            snaplen_cut=d.count("snaplen_cut"), headers_cut=d.count("headers_cut"),
            undecodable=d.count("undecodable"), not_ip=d.count("not_ip"), fragments=d.count("fragments"),
            first_ns=d.count("first_ns"), last_ns=d.count("last_ns"), link_types=frozenset(),
            evictions=self.table.evictions, slot_denied=self.table.slot_denied, complete=True,
            warnings=tuple(self.messages) + self.bounds_hit())

    def bounds_hit(self) -> tuple[str, ...]:
        """What the per-round bounds left out, said rather than dropped silently."""
        out = []
        if self.book.untracked:
            out.append(f"{self.book.untracked} flows were not checked for a new destination (more than "
                       f"{NEW_DESTINATIONS_PER_CALL} at once)")
        if self.window_skipped:
            out.append(f"{self.window_skipped} open DNS/echo flows were left out of tunnel rounds (more than "
                       f"{WINDOW_FLOWS} at once)")
        return tuple(out)


def _warm_up_frames() -> tuple[np.ndarray, np.ndarray]:
    """Ethernet frames for warm_up: a TCP handshake and an SSH banner each way, a DNS query and its answer."""
    import struct

    from egressguard.schema import FRAME_DTYPE

    def ipv4(proto: int, src: bytes, dst: bytes, l4: bytes) -> bytes:
        head = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(l4), 0, 0x4000, 64, proto, 0, src, dst)
        return b"\x02\x00\x00\x00\x00\x02\x02\x00\x00\x00\x00\x01\x08\x00" + head + l4

    def tcp(sport: int, dport: int, flags: int, seq: int, data: bytes = b"") -> bytes:
        return struct.pack("!HHIIBBHHH", sport, dport, seq, 0, 0x50, flags, 65535, 0, 0) + data

    def udp(sport: int, dport: int, data: bytes) -> bytes:
        return struct.pack("!HHHH", sport, dport, 8 + len(data), 0) + data

    a, b = bytes([10, 0, 0, 2]), bytes([192, 0, 2, 1])
    question = b"\x12\x34\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00\x07example\x03com\x00\x00\x01\x00\x01"
    answer = (b"\x12\x34\x81\x80\x00\x01\x00\x01\x00\x00\x00\x00\x07example\x03com\x00\x00\x01\x00\x01"
              b"\xc0\x0c\x00\x01\x00\x01\x00\x00\x01\x2c\x00\x04" + b)
    raw = [ipv4(6, a, b, tcp(40000, 22, 0x02, 1)), ipv4(6, b, a, tcp(22, 40000, 0x12, 9)),
           ipv4(6, a, b, tcp(40000, 22, 0x18, 2, b"SSH-2.0-OpenSSH_9.2\r\n")),
           ipv4(6, b, a, tcp(22, 40000, 0x18, 10, b"SSH-2.0-OpenSSH_9.2\r\n")),
           ipv4(17, a, b, udp(40001, 53, question)), ipv4(17, b, a, udp(53, 40001, answer))]
    buf = np.frombuffer(b"".join(raw), np.uint8).copy()
    frames = np.zeros(len(raw), FRAME_DTYPE)
    frames["offset"] = np.cumsum([0] + [len(r) for r in raw[:-1]])
    frames["caplen"] = frames["wirelen"] = [len(r) for r in raw]
    frames["ts_ns"] = time.time_ns() + np.arange(len(raw)) * 1000
    frames["linktype"] = 1
    return buf, frames


def _is_bridge(name: str) -> bool:
    return os.path.isdir(f"/sys/class/net/{name}/bridge")
