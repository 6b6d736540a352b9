"""Command line: a thin shell over the library API. Errors a user can cause become one line and an exit code.

Heavy modules (numba kernels) are imported inside the commands, so `egressguard --help` compiles nothing.
"""
from __future__ import annotations

import os
import sys

import click

from egressguard import __version__
from egressguard.errors import EgressGuardError, ExitStatus

_TOO_BIG = ("--capacity {capacity}: the flow table (about 1 KiB per flow) does not fit in memory. "
            "Fix: give a smaller --capacity")
MAX_TIMEOUT_S = 1e9  # flows.table.MAX_TIMEOUT_S, repeated: importing flows here would load numba for --help
EXIT_CODES_HELP = """Exit codes: 0 nothing found, 1 findings reported, 2 usage error, 3 a capture could not be read,
4 invalid rules file, 130 interrupted."""


class Seconds(click.FloatRange):
    """A duration option: a finite number of seconds in range (click's FloatRange lets NaN through)."""


    def convert(self, value, param, ctx):
        value = super().convert(value, param, ctx)
        if value != value:
            self.fail("NaN is not a number of seconds", param, ctx)
        return value


def _quick_process() -> None:
    """Start-up and shutdown costs of a command-line run that are not egressguard's work:

    * numba probes for a BLAS when its array functions load, by importing scipy.linalg (0.3-0.8 s measured here
      when scipy is installed); egressguard's kernels call no BLAS routine (no np.dot, no np.linalg), so scipy is
      hidden from that probe and numba loads without it;
    * at exit the interpreter's last garbage collection walks numba's type and compiler objects (0.4-1.5 s
      measured by perf in gc_collect_main); frozen objects are left to the process's end instead.
    The library API (Analyzer, LiveMonitor) is not touched: only a process started from this command line."""
    import atexit
    import gc
    import importlib

    atexit.register(gc.freeze)
    if "scipy" in sys.modules or "numba.np.arraymath" in sys.modules:
        return
    sys.modules["scipy"] = None  # an import of scipy now fails at once, and numba records "no BLAS"
    try:
        importlib.import_module("numba.np.arraymath")
    finally:
        if sys.modules.get("scipy", 0) is None:
            del sys.modules["scipy"]


def _fail(message: str, status: ExitStatus) -> None:
    click.echo(f"egressguard: error: {message}", err=True)
    sys.exit(int(status))


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
             epilog=EXIT_CODES_HELP)
@click.version_option(__version__, prog_name="egressguard")
def main() -> None:
    """Network egress monitor for sandboxes: reverse SSH tunnels, mining pools and unexpected destinations."""


@main.command(epilog=EXIT_CODES_HELP)
@click.argument("captures", nargs=-1, required=True, metavar="CAPTURE...")
@click.option("--format", "fmt", type=click.Choice(["table", "jsonl", "eve", "zeek"]), default="table",
              show_default=True,
              help="Readable tables; one JSON object per line on stdout (jsonl); Suricata EVE JSON events (eve, "
                   "flows included); Zeek conn/dns/ssl JSON logs for RITA (zeek, needs --output-dir).")
@click.option("--flows", "with_flows", is_flag=True, help="With --format jsonl: also write one record per flow.")
@click.option("-o", "--output", "output_file", type=click.Path(dir_okay=False), default=None,
              help="With --format jsonl or eve: write the lines to this file instead of stdout.")
@click.option("--output-dir", type=click.Path(file_okay=False), default=None,
              help="With --format zeek: the directory for conn.log, dns.log and ssl.log (created; files replaced).")
@click.option("--capacity", type=click.IntRange(1, 1 << 28), default=1 << 18, show_default=True,
              help="Most flows held at once; the oldest idle flow is evicted (and counted) beyond it.")
@click.option("--payload-slots", type=click.IntRange(0, 1 << 28), default=None,
              help="Flows that may keep their first payload bytes at once [default: capacity/8].")
@click.option("--tcp-idle", type=Seconds(min=0, min_open=True, max=MAX_TIMEOUT_S), default=300.0,
              show_default=True, help="Seconds without packets after which a TCP flow ends.")
@click.option("--idle", "other_idle", type=Seconds(min=0, min_open=True, max=MAX_TIMEOUT_S), default=60.0,
              show_default=True, help="Seconds without packets after which a UDP/ICMP/other flow ends.")
@click.option("--active-timeout", type=Seconds(min=0, max=MAX_TIMEOUT_S), default=3600.0,
              show_default=True,
              help="Seconds after which a long flow is reported and continues in a new record (0: never).")
@click.option("--detect/--no-detect", default=True, show_default=True,
              help="Run the detectors; --no-detect only aggregates flows (faster, no findings).")
@click.option("--rules", "rules_file", type=click.Path(dir_okay=False), default=None,
              help="Allowlist rules (TOML, see rules/README.md) [default: rules/default.toml].")
@click.option("--progress/--no-progress", default=None,
              help="Progress bar on stderr [default: when stderr is a terminal].")
@click.option("--evidence", "evidence_dir", type=click.Path(file_okay=False), default=None, metavar="DIR",
              help="Write each finding's packets to a pcap in DIR (named in the record's evidence_pcap).")
@click.option("--workers", type=click.IntRange(1, 1024), default=None, metavar="N",
              help="Split the work over N local processes by sandbox: each reads every capture and keeps its "
                   "sandboxes' packets; the output is that of one process [default: 1].")
@click.option("--dask", "dask_address", default=None, metavar="ADDRESS",
              help="Run the sandbox shards as tasks on a Dask cluster (e.g. tcp://127.0.0.1:8786; --workers "
                   "shards, default one per worker thread); workers open captures and rules at the same paths.")
def analyze(captures: tuple[str, ...], fmt: str, with_flows: bool, output_file: str | None, output_dir: str | None,
            capacity: int, payload_slots: int | None, tcp_idle: float, other_idle: float, active_timeout: float,
            detect: bool, rules_file: str | None, progress: bool | None, evidence_dir: str | None,
            workers: int | None = None, dask_address: str | None = None) -> None:
    """Analyse pcap/pcapng captures (plain, gzip, bzip2 or xz; '-' reads standard input)."""
    if with_flows and fmt not in ("jsonl", "eve"):
        raise click.UsageError("--flows needs --format jsonl (--format eve always writes flows)")
    if (fmt == "zeek") != (output_dir is not None):
        raise click.UsageError("--format zeek needs --output-dir DIR" if fmt == "zeek"
                               else "--output-dir is for --format zeek")
    if output_file is not None and fmt not in ("jsonl", "eve"):
        raise click.UsageError("--output is for --format jsonl or eve")
    if captures.count("-") > 1:
        raise click.UsageError("standard input ('-') can be read only once")
    sharded = (workers or 1) > 1 or dask_address is not None
    if sharded and "-" in captures:
        raise click.UsageError("--workers and --dask need capture files: every worker reads each capture, and "
                               "standard input can be read only once")
    _quick_process()
    from egressguard.engine import FlowsReady, Settings
    from egressguard.flows import FlowSettings
    from egressguard.pipeline import Analyzer

    slots = capacity // 8 if payload_slots is None else payload_slots
    if slots > capacity:
        raise click.UsageError(f"--payload-slots ({slots}) cannot exceed --capacity ({capacity})")
    # JA4 goes into flow records only: JSONL with --flows, and EVE's flow events
    settings = Settings(flows=FlowSettings(capacity=capacity, payload_slots=slots, tcp_idle_s=tcp_idle,
                                           other_idle_s=other_idle, active_s=active_timeout),
                        fingerprints=(fmt == "jsonl" and with_flows) or fmt == "eve")
    try:
        settings.flows.validate()
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None
    ctx = _context(rules_file) if detect else None
    from egressguard.report.text import safe_text

    try:
        report = _make_report(fmt, with_flows, output_file, output_dir)
        evidence = None
        if evidence_dir is not None:
            if "-" in captures:
                raise click.UsageError("--evidence needs capture files: standard input cannot be read twice")
            from egressguard.evidence import EvidenceWriter
            evidence = EvidenceWriter(evidence_dir)
    except EgressGuardError as exc:
        _fail(str(exc), exc.exit_status)
    wants_view = getattr(report, "wants_view", False)  # eve/zeek read DNS messages and TLS names from the view
    show_progress = sys.stderr.isatty() if progress is None else progress
    failures = 0
    try:
        try:
            if sharded:
                analyzer = _sharded_analyzer(captures, settings, fmt, with_flows, rules_file, detect, workers,
                                             dask_address)
            else:
                analyzer = Analyzer(settings, detectors=None if detect else [], ctx=ctx)
        except MemoryError:
            _fail(_TOO_BIG.format(capacity=capacity), ExitStatus.USAGE)
        with _Progress(show_progress) as bar:
            for spec in captures:
                try:
                    for event in analyzer.analyze(spec, bar.update):
                        if isinstance(event, FlowsReady):
                            for finding in event.result.findings if evidence is not None else ():
                                evidence.assign(spec, finding)
                            report.batch(event.capture, event.view.records, event.result.annotations,
                                         event.result.findings, **({"view": event.view} if wants_view else {}))
                            continue
                        report.summary(event.summary)
                        for w in event.summary.warnings:
                            bar.echo(f"egressguard: warning: {safe_text(w)}")
                    for path, _, skipped in evidence.write(spec) if evidence is not None else ():
                        if skipped:
                            bar.echo(f"egressguard: warning: {safe_text(path)}: {skipped} packet(s) of another "
                                     f"link type left out")
                except EgressGuardError as exc:
                    if getattr(exc, "fatal", False):  # the Dask cluster went away: no capture can be analysed
                        raise
                    failures += 1
                    bar.echo(f"egressguard: error: {safe_text(str(exc))}")
                except MemoryError:  # a worker's flow table (--workers, --dask)
                    _fail(_TOO_BIG.format(capacity=capacity), ExitStatus.USAGE)
        report.close()
    except EgressGuardError as exc:
        _fail(str(exc), exc.exit_status)
    except KeyboardInterrupt:
        _fail("interrupted", ExitStatus.INTERRUPTED)
    except BrokenPipeError:
        # the reader went away (e.g. `| head`): stop quietly, as other Unix tools do
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        sys.exit(int(ExitStatus.OK))
    finally:
        if sharded and "analyzer" in locals():
            analyzer.close()  # workers still running after an error or Ctrl-C are stopped
    if failures:
        sys.exit(int(ExitStatus.CAPTURE))
    if report.findings_total:
        sys.exit(int(ExitStatus.FINDINGS))


@main.group()
def rules() -> None:
    """Allowlist rules files (TOML; every key is described in rules/README.md)."""


@rules.command("check", epilog=EXIT_CODES_HELP)
@click.argument("rules_file", metavar="FILE", type=click.Path(dir_okay=False))
def rules_check(rules_file: str) -> None:
    """Validate a rules file and print what it allows and denies (exit 4 with the file, line, key, value and fix
    when it is invalid)."""
    allowlist = _load_rules(rules_file)
    from rich.console import Console

    from egressguard.report.rules_table import render_rules

    Console(highlight=False, width=None if sys.stdout.isatty() else 140).print(render_rules(allowlist))


@main.command(epilog=EXIT_CODES_HELP.replace("0 nothing found, 1 findings reported", "0 stopped by a signal"))
@click.option("-i", "--interface", "interfaces", multiple=True, required=True, metavar="IFACE",
              help="Interface to watch: a sandbox bridge, its veth ports or any interface (repeat for several).")
@click.option("--filter", "bpf", default=None, metavar="BPF", help="Kernel packet filter (tcpdump syntax).")
@click.option("--rules", "rules_file", type=click.Path(dir_okay=False), default=None,
              help="Allowlist rules (TOML) [default: rules/default.toml]; SIGHUP reloads the file.")
@click.option("--dashboard/--no-dashboard", default=None,
              help="Live terminal dashboard [default: when stdout is a terminal]; without it findings go to "
                   "stdout as JSON lines.")
@click.option("--alerts", "alerts_file", type=click.Path(dir_okay=False), default=None,
              help="Also append each finding as one JSON line to this file (reopened after log rotation).")
@click.option("--format", "fmt", type=click.Choice(["jsonl", "eve"]), default="jsonl", show_default=True,
              help="Findings on stdout and in --alerts as egressguard JSON lines, or as Suricata EVE alerts.")
@click.option("--on-finding", "on_finding", default=None, metavar="CMD",
              help="Run CMD (no shell) for each new finding, the finding JSON on stdin and EGRESSGUARD_* variables "
                   "in its environment; 'egressguard hook cut-port' cuts the sandbox's veth.")
@click.option("--on-finding-severity", type=click.Choice(["low", "medium", "high", "critical"]), default="high",
              show_default=True, help="Least severity for which --on-finding runs.")
@click.option("--suppress", type=Seconds(min=0, max=MAX_TIMEOUT_S), default=600.0, show_default=True,
              help="Seconds before the same finding is reported again (sooner when it gets worse).")
@click.option("--capacity", type=click.IntRange(64, 1 << 28), default=1 << 18, show_default=True,
              help="Most flows held at once; the oldest idle flow is evicted (and counted) beyond it.")
@click.option("--tcp-idle", type=Seconds(min=0, min_open=True, max=MAX_TIMEOUT_S), default=300.0, show_default=True,
              help="Seconds without packets after which a TCP flow ends.")
@click.option("--idle", "other_idle", type=Seconds(min=0, min_open=True, max=MAX_TIMEOUT_S), default=60.0,
              show_default=True,
              help="Seconds without packets after which a UDP/ICMP/other flow ends.")
@click.option("--user", default=None, metavar="USER",
              help="Drop root for this user once the capture sockets are open.")
@click.option("--metrics", "metrics_address", default=None, metavar="HOST:PORT",
              help="Serve Prometheus metrics at http://HOST:PORT/metrics ('[::1]:PORT' for IPv6, ':PORT' for all).")
@click.option("--compute/--no-compute", "sample_compute", default=True, show_default=True,
              help="Sample each sandbox's CPU (cgroup v2, /proc) and GPU (NVML) use and join it to its flows.")
@click.option("--evidence", "evidence_dir", type=click.Path(file_okay=False), default=None, metavar="DIR",
              help="Write each reported finding's packets to a pcap in DIR (evidence_pcap), appended while the flow "
                   "lasts.")
@click.option("--evidence-buffer", type=click.IntRange(1, 1 << 20), default=64, show_default=True, metavar="MiB",
              help="With --evidence: memory for the most recent frames, from which a finding's earlier packets are "
                   "written.")
@click.option("--evidence-file-limit", type=click.IntRange(1, 1 << 20), default=256, show_default=True,
              metavar="MiB", help="With --evidence: one evidence file stops growing at this size.")
@click.option("--workers", type=click.IntRange(1, 64), default=1, show_default=True,
              help="Worker processes, each with its own ring in one kernel fanout group per interface, traffic "
                   "sharded by sandbox (see README); 1 runs everything in this process.")
def watch(interfaces: tuple[str, ...], bpf: str | None, rules_file: str | None, dashboard: bool | None,
          alerts_file: str | None, fmt: str, on_finding: str | None, on_finding_severity: str, suppress: float,
          capacity: int, tcp_idle: float, other_idle: float, user: str | None,
          metrics_address: str | None = None, sample_compute: bool = True, evidence_dir: str | None = None,
          evidence_buffer: int = 64, evidence_file_limit: int = 256, workers: int = 1) -> None:
    """Watch interfaces live: findings as they happen, per sandbox (needs root or CAP_NET_RAW)."""
    _quick_process()
    import signal
    import threading

    from egressguard.capture.live import LiveCapture, drop_privileges
    from egressguard.engine import Settings
    from egressguard.flows import FlowSettings
    from egressguard.live import LiveMonitor, WatchSettings
    from egressguard.report.alerts import AlertsFile
    from egressguard.report.eve import alert_event
    from egressguard.report.hooks import FindingHook, parse_command
    from egressguard.schema import Severity
    from egressguard.report.jsonl import dumps

    if len(set(interfaces)) != len(interfaces):
        raise click.UsageError("an interface is named twice")
    metrics = listen = None
    if metrics_address is not None:
        from egressguard.live.metrics import MetricsExporter, parse_listen_address

        try:
            listen = parse_listen_address(metrics_address)
        except ValueError as exc:
            raise click.BadParameter(f"{metrics_address!r}: {exc}", param_hint="--metrics") from None
    argv = None
    if on_finding is not None:
        try:
            argv = parse_command(on_finding)
        except ValueError as exc:
            raise click.BadParameter(f"{on_finding!r}: {exc}", param_hint="--on-finding") from None
    ctx = _context(rules_file)
    if sample_compute:
        from dataclasses import replace

        from egressguard.live.compute import ComputeSampler

        ctx = replace(ctx, compute=ComputeSampler())
    rules = ctx.rules
    show_dashboard = sys.stdout.isatty() if dashboard is None else dashboard
    flows = FlowSettings(capacity=capacity, payload_slots=capacity // 8, tcp_idle_s=tcp_idle, other_idle_s=other_idle)
    try:
        flows.validate()
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None
    settings = WatchSettings(pipeline=Settings(flows=flows), suppress_s=suppress)
    source = LiveCapture(list(interfaces), bpf=bpf) if workers == 1 else None
    stop = threading.Event()
    hook = None
    alerts = None
    try:
        evidence = evidence_plan = None
        if evidence_dir is not None:
            from egressguard.live.evidence_keeper import EvidenceKeeper, EvidenceLimits

            limits = EvidenceLimits(buffer_bytes=evidence_buffer << 20, file_bytes=evidence_file_limit << 20,
                                    tcp_idle_s=tcp_idle, other_idle_s=other_idle)
            if source is not None:
                evidence = EvidenceKeeper(evidence_dir, limits)
            else:  # every worker keeps its own buffer (N x --evidence-buffer) and writes its own files
                from egressguard.capture.pcap_writer import writable_directory

                evidence_plan = (str(writable_directory(evidence_dir, "--evidence")), limits)
        if source is not None:
            source.open()
            monitor = LiveMonitor(source, ctx, lambda record: emit(record), settings, evidence=evidence)
        else:  # N processes, one fanout member each (egressguard/live/workers.py)
            from egressguard.live.workers import WorkerPlan, WorkerPool
            from functools import partial

            from egressguard.live.compute import with_compute
            from egressguard.pipeline import default_context

            make_context = partial(with_compute, default_context) if sample_compute else default_context
            source = monitor = WorkerPool(interfaces, workers, ctx, lambda record: emit(record),
                                          WorkerPlan(rules_file, make_context, settings, 65535, user,
                                                     evidence_plan), bpf=bpf)
            monitor.open()
        alerts = AlertsFile(alerts_file) if alerts_file else None
        if listen is not None:  # before dropping root (a port below 1024 needs it) and before the slow warm-up
            metrics = MetricsExporter(monitor)
            metrics.start(*listen)
        monitor.warm_up()  # compile/load every kernel and import every module while still root
        if user is not None:
            drop_privileges(user)
    except MemoryError:
        source.close()
        _fail(_TOO_BIG.format(capacity=capacity), ExitStatus.USAGE)
    except EgressGuardError as exc:
        source.close()
        _fail(str(exc), exc.exit_status)

    def emit(record: dict) -> None:
        line_record = alert_event(record) if fmt == "eve" else record  # the hook keeps egressguard's record
        if not show_dashboard:
            try:
                sys.stdout.write(dumps(line_record) + "\n")
                sys.stdout.flush()
            except BrokenPipeError:
                stop.set()
        if alerts is not None:
            try:
                alerts.write(line_record)
            except EgressGuardError as exc:
                monitor.note(str(exc))
                click.echo(f"egressguard: error: {exc}", err=True)
        if hook is not None:
            hook.offer(record)

    if argv is not None:
        def hook_report(outcome) -> None:
            monitor.note(outcome.message)
            if not outcome.ok or not show_dashboard:
                click.echo(f"egressguard: {'hook' if outcome.ok else 'warning'}: {outcome.message}", err=True)
        hook = FindingHook(argv, Severity.parse(on_finding_severity), hook_report)
        if metrics is not None:
            metrics.hook = hook

    def on_stop(signum, frame) -> None:
        stop.set()

    signal.signal(signal.SIGINT, on_stop)
    signal.signal(signal.SIGTERM, on_stop)
    signal.signal(signal.SIGHUP, lambda signum, frame: monitor.request_reload())
    click.echo(f"egressguard: watching {', '.join(interfaces)}" + (f" (filter: {bpf})" if bpf else "")
               + f"; rules {rules.current.source_path or 'built-in default'}", err=True)
    failure: list[EgressGuardError] = []

    def run_monitor() -> None:
        try:
            monitor.run(stop)
        except EgressGuardError as exc:
            failure.append(exc)
            stop.set()

    if show_dashboard:
        from rich.console import Console

        from egressguard.report.dashboard import run_dashboard

        worker = threading.Thread(target=run_monitor, name="monitor")
        worker.start()
        try:
            run_dashboard(monitor.snapshot, Console(), refresh_s=0.5, stop=stop)
        finally:
            stop.set()
            worker.join()
    else:
        run_monitor()
    if hook is not None:
        hook.close()
    if alerts is not None:
        alerts.close()
    if metrics is not None:
        metrics.close()
    summary = monitor.summary()
    click.echo(f"egressguard: stopped: {summary.packets} packets, {summary.flows} flows, {monitor.emitted} findings"
               f" reported, {summary.evictions} flows evicted", err=True)
    for warning in monitor.bounds_hit():
        click.echo(f"egressguard: warning: {warning}", err=True)
    if failure:
        _fail(str(failure[0]), failure[0].exit_status)
    sys.exit(int(ExitStatus.OK))


@main.group()
def hook() -> None:
    """Ready-made --on-finding commands."""


@hook.command("cut-port")
def hook_cut_port() -> None:
    """Set the sandbox's bridge port (EGRESSGUARD_SANDBOX_PORT) down: cuts that sandbox off the network."""
    from egressguard.report.hooks import cut_port

    try:
        click.echo(cut_port(os.environ.get("EGRESSGUARD_SANDBOX_PORT", "")))
    except ValueError as exc:
        _fail(str(exc), ExitStatus.USAGE)
    except (RuntimeError, OSError) as exc:
        _fail(str(exc), ExitStatus.CAPTURE)


def _sharded_analyzer(captures: tuple[str, ...], settings, fmt: str, with_flows: bool, rules_file: str | None,
                      detect: bool, workers: int | None, dask_address: str | None):
    """The analyzer of `--workers N` or `--dask ADDRESS`: sandbox shards in local processes or on a Dask cluster;
    workers send back only what `fmt` renders. A cluster that cannot be used ends the run (exit 2)."""
    from egressguard.parallel import Ship, sharded_analyzer
    from egressguard.report.table import TOP_FLOWS

    _load_rules(rules_file)  # workers load the file themselves (also for --no-detect: it says who is a sandbox)
    ship = Ship(flows="all" if fmt in ("eve", "zeek") or with_flows else "top" if fmt == "table" else "none",
                top=TOP_FLOWS, facts=fmt in ("eve", "zeek"))
    try:
        return sharded_analyzer(captures, settings, rules_file, detect, ship, workers, dask_address)
    except EgressGuardError as exc:
        _fail(str(exc), exc.exit_status)


def _load_rules(path: str | None):
    """The Allowlist of a rules file (the default file when None); an invalid file ends the run with exit 4."""
    from egressguard.policy.rules import load_rules

    try:
        return load_rules(path)
    except EgressGuardError as exc:
        _fail(str(exc), exc.exit_status)


def _context(rules_file: str | None):
    """The detector context of a run (rules, pool list); an invalid file ends the run with exit 4."""
    from egressguard.pipeline import default_context

    allowlist = _load_rules(rules_file)
    try:
        return default_context(allowlist)
    except EgressGuardError as exc:
        _fail(str(exc), exc.exit_status)


def _make_report(fmt: str, with_flows: bool, output_file: str | None = None, output_dir: str | None = None):
    out = sys.stdout if output_file is None else _open_output(output_file)
    if fmt == "jsonl":
        from egressguard.report.jsonl import JsonlReport

        return JsonlReport(out, with_flows)
    if fmt == "eve":
        from egressguard.report.eve import EveReport

        return EveReport(out)
    if fmt == "zeek":
        from egressguard.report.zeek import ZeekReport

        return ZeekReport(output_dir)
    from rich.console import Console

    from egressguard.report.table import TableReport

    # a pipe or file gets wide lines rather than folded addresses
    return TableReport(Console(highlight=False, width=None if sys.stdout.isatty() else 140))


def _open_output(path: str):
    """The --output file, opened for writing (exit 2 with the reason when it cannot be)."""
    try:
        return open(path, "w", encoding="ascii")
    except OSError as exc:
        _fail(f"{path}: cannot write the output file: {exc.strerror or exc}", ExitStatus.USAGE)


class _Progress:
    """A rich progress bar on stderr, or nothing; messages printed through it do not tear the bar."""

    def __init__(self, enabled: bool):
        self.enabled = enabled
        self._progress = None
        self._tasks: dict[str, int] = {}

    def __enter__(self) -> "_Progress":
        if self.enabled:
            from rich.console import Console
            from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn

            self._progress = Progress(TextColumn("{task.description}"), BarColumn(), DownloadColumn(),
                                      TimeRemainingColumn(), console=Console(stderr=True), transient=True)
            self._progress.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        if self._progress is not None:
            self._progress.__exit__(*exc)

    def update(self, name: str, done: int, total: int | None) -> None:
        if self._progress is None:
            return
        if name not in self._tasks:
            from rich.markup import escape

            self._tasks[name] = self._progress.add_task(escape(name), total=total)
        self._progress.update(self._tasks[name], completed=done, total=total)

    def echo(self, message: str) -> None:
        if self._progress is not None:
            self._progress.console.print(message, markup=False, highlight=False)
        else:
            click.echo(message, err=True)


