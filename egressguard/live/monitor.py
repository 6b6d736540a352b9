"""Live monitoring, as a library API: the engine driven by live interfaces and timers.

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
from typing import Callable, Iterator, Protocol


from egressguard.capture import Chunk
from egressguard.detect import BatchResult, DetectorContext
from egressguard.engine import Engine, FlowsReady, Settings, SourceFacts
from egressguard.live.evidence_keeper import EvidenceKeeper
from egressguard.live.gate import FindingGate, finding_key
from egressguard.live.sandboxes import NEW_DESTINATIONS_PER_CALL, RateMeter, SandboxBook
from egressguard.netaddr import endpoint, format_mac
from egressguard.report.records import finding_record
from egressguard.schema import CaptureSummary, DestinationView, Finding, InterfaceView, LiveSnapshot, SandboxView, \
    Severity, proto_name

WINDOW_FLOWS = 20_000  # open flows an aggregating detector (DNS/ICMP tunnels) judges per round, newest first


class LiveSource(Protocol):
    """What the monitor reads from (egressguard.capture.live.LiveCapture)."""

    interfaces: list[str]

    def chunks(self, timeout_s: float = 0.1) -> Iterator[Chunk]: ...

    def interface_stats(self) -> list: ...

    def close(self) -> None: ...


@dataclass(frozen=True)
class WatchSettings:
    """Tuning of live monitoring on top of the engine's Settings."""

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
    compute_every_s: float = 2.0  # each sandbox's CPU/GPU use is sampled this often (when the context samples it)


class LiveMonitor:
    """Runs the engine over a LiveSource until `stop` is set; `emit` gets each new finding record (with `sandbox`,
    `sandbox_port` and `interface` added) in the monitor's thread; `snapshot()` may be called from any thread.

    Args:
        source: the open live capture.
        ctx: the detector context (its ActiveRules is reloaded in place through `reload_rules`).
        emit: called for every finding the gate lets through.
        settings: timers and bounds.
        clock: ns wall clock (tests pass their own).
        evidence: keeps recent frames and writes a pcap of each finding let out (`watch --evidence`).
    """

    def __init__(self, source: LiveSource, ctx: DetectorContext, emit: Callable[[dict], None],
                 settings: WatchSettings = WatchSettings(), clock: Callable[[], int] = time.time_ns,
                 evidence: EvidenceKeeper | None = None):
        self.source = source
        self.ctx = ctx
        self.rules = ctx.rules
        self.binding = ctx.binding
        self.emit = emit
        self.settings = settings
        self.clock = clock
        self.evidence = evidence
        self.name = "live:" + ",".join(source.interfaces)
        self.engine = Engine(settings.pipeline, ctx)
        self.engine.start(self.name)
        self.gate = FindingGate(settings.suppress_s)
        self.book = SandboxBook(settings.max_sandboxes, settings.max_destinations, settings.recent_destinations)
        self.rates = {name: RateMeter(settings.rate_history_s) for name in source.interfaces}
        self.findings: OrderedDict[tuple, tuple[Finding, dict]] = OrderedDict()  # current findings by key
        self.messages: list[str] = []
        self.emitted = 0
        self.reported: dict[tuple[str, str], int] = {}  # findings let out by the gate, by (kind, severity)
        self.rounds = 0  # open-flow judging rounds run
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
        if ctx.compute is not None and hasattr(ctx.compute, "gpu_status"):
            self.note(ctx.compute.gpu_status)
        self._refresh_view()

    @property
    def detectors(self) -> list:
        return self.engine.detectors

    def warm_up(self) -> None:
        """Compile or load every kernel and import every module now (see Engine.warm_up)."""
        self.engine.warm_up()
        if self.evidence is not None:
            self.evidence.warm_up()
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
        sampler = self.ctx.compute if hasattr(self.ctx.compute, "start") else None
        if sampler is not None:
            sampler.start(s.compute_every_s)
        try:
            for chunk in self.source.chunks(timeout_s=min(0.2, s.sweep_every_s)):
                packets = None
                if self.evidence is not None:  # the frames are kept before a finding may ask for them
                    packets = self.engine.decode(chunk) if len(chunk.frames) else None
                    self.evidence.feed(chunk, packets, self.clock())
                for event in self.engine.feed(chunk, packets):
                    self._finished_batch(event)
                now = self.clock()
                if now - last_sweep >= s.sweep_every_s * 1e9:
                    last_sweep = now
                    for event in self.engine.tick(now):
                        self._finished_batch(event)
                if now - last_judge >= s.judge_every_s * 1e9:
                    last_judge = now
                    self._judge_open_flows()
                    self._report(self.engine.finish())
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
                for event in self.engine.flush():
                    self._finished_batch(event)
                self._refresh_view()
            finally:
                if self.evidence is not None:
                    self.evidence.close()
                if sampler is not None:
                    sampler.stop()
                self.done = True
        return self.summary()

    def _finished_batch(self, event: FlowsReady) -> None:
        recs = event.view.records
        self._finished += len(recs)
        self._report(event.result)
        if len(recs):
            self.book.add_flows(recs, self.rules.current.inside(recs["orig_hi"], recs["orig_lo"]), finished=True)

    def _judge_open_flows(self) -> None:
        """Judge the open flows that saw packets since the last round (a flow that did not change has no new
        evidence); the per-sandbox open counts come from a few columns of all of them."""
        self.rounds += 1
        rules = self.rules.current
        cols = self.engine.live_columns()
        self._active = len(cols["orig_hi"])
        self.book.count_open(cols, rules.inside(cols["orig_hi"], cols["orig_lo"]))
        now = self.clock()
        if now - self._last_window_ns >= self.settings.window_every_s * 1e9:
            self._last_window_ns = now
            result, skipped = self.engine.judge_windows(WINDOW_FLOWS)
            self.window_skipped += skipped
            self._report(result)
        view, result = self.engine.judge_open(self._last_round_ns)
        recs = view.records
        if not len(recs):
            return
        self._last_round_ns = int(recs["last_seen_ns"].max()) + 1
        new = recs["first_seen_ns"] >= self._round_started_ns  # flows that began since the last round
        self._round_started_ns = self._last_round_ns
        self.book.add_flows(recs[new], rules.inside(recs["orig_hi"][new], recs["orig_lo"][new]), finished=False)
        self._report(result)

    def _report(self, result: BatchResult) -> None:
        if not result.findings:
            return
        now_s = self.clock() / 1e9
        for finding in result.findings:
            record = self._record(finding)
            key = finding_key(finding)
            with self._lock:
                self.findings[key] = (finding, record)
                self.findings.move_to_end(key)
                while len(self.findings) > self.settings.max_findings_shown:
                    self.findings.popitem(last=False)
            self.book.note_finding(finding, endpoint(finding.flow, "orig"))
            if self.gate.admit(finding, now_s):
                self.emitted += 1
                kind_severity = (str(finding.kind), Severity(finding.severity).label())
                self.reported[kind_severity] = self.reported.get(kind_severity, 0) + 1
                if self.evidence is not None:
                    self.evidence.start(finding, record)
                self.emit(record)

    def _record(self, finding: Finding) -> dict:
        """The finding's output record with where it happened: the sandbox's name, MAC, interface and bridge port."""
        record = finding_record(finding)
        rec = finding.flow
        key = endpoint(rec, "orig")
        name = self.rules.current.sandbox_name(key, int(rec["orig_mac"]))
        record["sandbox"] = name if name is not None else record.get("src_ip")
        mac = int(rec["orig_mac"])
        record["src_mac"] = format_mac(mac)
        iface = int(rec["iface"])
        record["interface"] = self.source.interfaces[iface] if iface < len(self.source.interfaces) else None
        record["sandbox_port"] = self._port(mac, record["interface"])
        self.book.set_port(key, record["sandbox_port"])
        usage = self.ctx.compute.usage(key, mac) if self.ctx.compute is not None else None
        if usage is not None:
            record["compute"] = usage.evidence()  # what the sandbox computed when the finding was made
        return record

    def _port(self, mac: int, interface: str | None) -> str | None:
        """The bridge port (veth) behind which a MAC sits, when the capture interface is a bridge; else the capture
        interface itself (watching a veth directly)."""
        now = time.monotonic()
        # every 2 s, and at once (at most 10 times a second) for a MAC the bridge learned since the last read
        if now - self._ports_at > 2.0 or (mac and mac not in self._ports and now - self._ports_at > 0.1):
            self._ports_at = now
            self._ports = {}
            from egressguard.capture.live import bridge_ports

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
                                         box.worst_kind,
                                         self.ctx.compute.usage(key, box.mac) if self.ctx.compute is not None
                                         else None))
        sandboxes.sort(key=lambda v: (-(int(v.worst) if v.worst else 0), -v.bytes_out, v.address))
        names_of = {key: rules.sandbox_name(key, box.mac) or box.address for key, box in self.book.items()}
        recent = []
        for ts, key, text, dst, port, proto in sorted(self.book.recent, reverse=True)[:self.settings.recent_destinations]:
            dest = f"[{text}]:{port}" if ":" in text else f"{text}:{port}"
            names = tuple(self.binding.names(key, dst, ts / 1e9)) if proto in (6, 17) else ()
            recent.append(DestinationView(ts, names_of.get(key, ""), f"{dest}/{proto_name(proto)}", names))
        with self._lock:
            ranked = sorted(self.findings.values(), key=lambda fr: (-int(fr[0].severity), -float(fr[0].score),
                                                                    -int(fr[0].flow["last_seen_ns"])))
            self._view = LiveSnapshot(
                time_ns=now, started_ns=self.started_ns, interfaces=interfaces, active_flows=self._active,
                finished_flows=self._finished, evictions=self.engine.table.evictions,
                findings=tuple(record for _, record in ranked), sandboxes=tuple(sandboxes),
                new_destinations=tuple(recent), messages=tuple(self.messages))

    def snapshot(self) -> LiveSnapshot | None:
        """The latest view (refreshed twice a second by the monitor thread); None once the monitor has stopped."""
        if self.done:
            return None
        with self._lock:
            view = self._view
            if view is not None and self.messages and view.messages != tuple(self.messages):
                view = replace(view, messages=tuple(self.messages))
        return view

    def latest_view(self) -> LiveSnapshot | None:
        """The last view built, also after the monitor stopped (the metrics exporter reads its counters)."""
        with self._lock:
            return self._view

    def summary(self) -> CaptureSummary:
        return self.engine.summary(SourceFacts("live", warnings=tuple(self.messages) + self.bounds_hit()))

    def bounds_hit(self) -> tuple[str, ...]:
        """What the per-round bounds left out, said rather than dropped silently."""
        out = []
        if self.book.untracked:
            out.append(f"{self.book.untracked} flows were not checked for a new destination (more than "
                       f"{NEW_DESTINATIONS_PER_CALL} at once)")
        if self.window_skipped:
            out.append(f"{self.window_skipped} open DNS/echo flows were left out of tunnel rounds (more than "
                       f"{WINDOW_FLOWS} at once)")
        if self.evidence is not None:
            out.extend(self.evidence.bounds_hit())
        return tuple(out)


def _is_bridge(name: str) -> bool:
    return os.path.isdir(f"/sys/class/net/{name}/bridge")


__all__ = ["LiveMonitor", "LiveSource", "WatchSettings", "WINDOW_FLOWS"]
