"""Prometheus metrics of a live run (`watch --metrics HOST:PORT`): the counters the monitor already keeps, exposed.

Nothing is counted here a second time: at each scrape the collector reads the monitor's last view (interface
counters from the capture sockets, flow table totals), the decoder's and flow table's running counters, the finding
gate's tally and the hook's outcomes. They are exported as counters that never go down: a source counter that
restarts (an interface re-created, a rules reload) adds its new value on top instead of resetting the series.
"""
from __future__ import annotations

import socket
import threading
from typing import Iterator

from prometheus_client import CollectorRegistry, ProcessCollector, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from egressguard.errors import EgressGuardError

DECODE_PROBLEMS = ("snaplen_cut", "headers_cut", "undecodable", "not_ip", "fragments")  # Decoder.count names


def parse_listen_address(text: str) -> tuple[str, int]:
    """(host, port) of `HOST:PORT`, `[IPv6]:PORT` or `:PORT` (all IPv4 addresses); ValueError with the reason."""
    host, sep, port_text = text.rpartition(":")
    if not sep:
        raise ValueError("expected HOST:PORT (e.g. 127.0.0.1:9109, [::1]:9109 or :9109 for every address)")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    elif ":" in host:
        raise ValueError("write an IPv6 address in brackets: [ADDRESS]:PORT")
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise ValueError(f"port {port_text!r} is not a number from 1 to 65535")
    if any(c.isspace() or not c.isprintable() for c in host):
        raise ValueError("the host has spaces or control characters")
    return host or "0.0.0.0", int(port_text)


class _Monotonic:
    """Running totals that never decrease from source counters that may restart from zero."""

    def __init__(self):
        self._last: dict[tuple, int] = {}
        self._total: dict[tuple, int] = {}

    def __call__(self, key: tuple, value: int) -> int:
        last = self._last.get(key)
        grown = value if last is None or value < last else value - last  # smaller: the source restarted
        self._last[key] = value
        self._total[key] = self._total.get(key, 0) + grown
        return self._total[key]


class MonitorCollector(Collector):
    """Reads a LiveMonitor (and the --on-finding hook, when there is one) at each scrape."""

    def __init__(self, monitor, hook=None):
        self.monitor = monitor
        self.hook = hook
        self._totals = _Monotonic()
        self._lock = threading.Lock()  # scrapes may run in parallel (one thread per HTTP request)

    def collect(self) -> Iterator[Metric]:
        with self._lock:
            yield from self._collect()

    def _counter(self, name: str, doc: str, value: int, labels: dict[str, str] | None = None,
                 family: CounterMetricFamily | None = None) -> CounterMetricFamily:
        labels = labels or {}
        family = family or CounterMetricFamily(name, doc, labels=list(labels))
        total = self._totals((name, *labels.values()), int(value))
        family.add_metric(list(labels.values()), total)
        return family

    def _collect(self) -> Iterator[Metric]:
        monitor = self.monitor
        view = monitor.latest_view()
        if view is not None:
            per_interface = [
                ("egressguard_packets_total", "Frames received on the interface (capture socket counters).",
                 "packets"),
                ("egressguard_bytes_total", "Wire bytes of the frames received on the interface.", "bytes"),
                ("egressguard_kernel_drops_total",
                 "Frames the kernel dropped because egressguard read too slowly (PACKET_STATISTICS tp_drops).",
                 "kernel_drops"),
            ]
            per_worker = any(iface.worker is not None for iface in view.interfaces)  # watch --workers N
            for name, doc, attr in per_interface:
                family = CounterMetricFamily(name, doc, labels=["interface", "worker"] if per_worker else ["interface"])
                for iface in view.interfaces:
                    labels = {"interface": iface.name}
                    if per_worker:
                        labels["worker"] = str(iface.worker)
                    self._counter(name, doc, getattr(iface, attr), labels, family)
                yield family
            up = GaugeMetricFamily("egressguard_interface_up", "1 when the interface exists and is up.",
                                   labels=["interface", "worker"] if per_worker else ["interface"])
            for iface in view.interfaces:
                up.add_metric([iface.name] + ([str(iface.worker)] if per_worker else []), 1.0 if iface.up else 0.0)
            yield up
            yield GaugeMetricFamily("egressguard_flows_active", "Open flows in the flow table at the last round.",
                                    value=view.active_flows)
            cpu = GaugeMetricFamily("egressguard_sandbox_cpu_cores", "CPU cores a sandbox's processes kept busy "
                                    "over the last ~10 s (cgroup v2 cpu.stat or /proc; watch --compute).",
                                    labels=["sandbox"])
            for box in view.sandboxes:
                if box.compute is not None:
                    cpu.add_metric([box.name], box.compute.cpu_cores)
            yield cpu
            yield self._counter("egressguard_flows_finished_total", "Flows that ended and went through the detectors.",
                                view.finished_flows)
            yield self._counter("egressguard_flow_evictions_total",
                                "Flows evicted because the flow table was full (raise --capacity).", view.evictions)
            yield GaugeMetricFamily("egressguard_sandboxes", "Sandboxes the monitor keeps per-sandbox counts for.",
                                    value=len(view.sandboxes))
            yield GaugeMetricFamily("egressguard_start_time_seconds", "When the monitor started (Unix time).",
                                    value=view.started_ns / 1e9)
        findings = CounterMetricFamily("egressguard_findings_total",
                                       "Findings reported (let out by the finding gate), by kind and severity.",
                                       labels=["kind", "severity"])
        for (kind, severity), count in sorted(dict(monitor.reported).items()):
            self._counter("egressguard_findings_total", "", count, {"kind": kind, "severity": severity}, findings)
        yield findings
        yield self._counter("egressguard_rounds_total", "Rounds of judging the open flows.", monitor.rounds)
        decode = CounterMetricFamily("egressguard_decode_problems_total",
                                     "Packets the decoder could not read whole, by problem.", labels=["problem"])
        for problem in DECODE_PROBLEMS:
            self._counter("egressguard_decode_problems_total", "", monitor.engine.decoder.count(problem),
                          {"problem": problem}, decode)
        yield decode
        bounds = CounterMetricFamily("egressguard_bounded_out_total",
                                     "Work the per-round bounds left out (said, never dropped silently), by bound.",
                                     labels=["bound"])
        for bound, value in (("new_destination_checks", monitor.book.untracked),
                             ("tunnel_window_flows", monitor.window_skipped),
                             ("payload_slots", monitor.engine.table.slot_denied)):
            self._counter("egressguard_bounded_out_total", "", value, {"bound": bound}, bounds)
        yield bounds
        restarts = getattr(monitor, "restarts", None)  # watch --workers N: the worker pool
        if restarts is not None:
            family = CounterMetricFamily("egressguard_worker_restarts_total",
                                         "Worker processes that died and were started again.", labels=["worker"])
            for w, count in enumerate(restarts):
                self._counter("egressguard_worker_restarts_total", "", count, {"worker": str(w)}, family)
            yield family
        hook = self.hook
        yield self._counter("egressguard_hook_runs_total", "Runs of the --on-finding command.",
                            hook.runs if hook is not None else 0)
        yield self._counter("egressguard_hook_failures_total",
                            "--on-finding runs that failed, timed out or were not started (queue full).",
                            hook.failures if hook is not None else 0)


class MetricsExporter:
    """The HTTP endpoint Prometheus scrapes: a private registry (only egressguard's and this process's metrics,
    nothing another library registered globally) served from a daemon thread."""

    def __init__(self, monitor, hook=None):
        self.collector = MonitorCollector(monitor, hook)
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(self.collector)
        ProcessCollector(registry=self.registry)  # CPU, memory and open files of this process, from /proc
        self._server = None
        self.address: tuple[str, int] | None = None

    @property
    def hook(self):
        return self.collector.hook

    @hook.setter
    def hook(self, hook) -> None:
        self.collector.hook = hook

    def start(self, host: str, port: int) -> None:
        """Listen on host:port; EgressGuardError (exit 2) when the address cannot be used."""
        shown = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        try:
            self._server, _ = start_http_server(port, host, registry=self.registry)
        except socket.gaierror as exc:
            raise EgressGuardError(f"--metrics {shown}: no such address ({exc.strerror or exc}). "
                                   f"Fix: give an address of this host, e.g. 127.0.0.1:{port}") from None
        except OSError as exc:
            raise EgressGuardError(f"--metrics {shown}: cannot listen: {exc.strerror or exc}. "
                                   f"Fix: choose a free port and an address of this host") from None
        self.address = self._server.server_address[:2]

    def close(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None


__all__ = ["MetricsExporter", "MonitorCollector", "parse_listen_address"]
