"""Command line: a thin shell over the library API. Errors a user can cause become one line and an exit code.

Heavy modules (numba kernels) are imported inside the commands, so `egressguard --help` compiles nothing.
"""
from __future__ import annotations

import os
import sys

import click

from egressguard import __version__
from egressguard.errors import EgressGuardError, ExitStatus

EXIT_CODES_HELP = """Exit codes: 0 nothing found, 1 findings reported, 2 usage error, 3 a capture could not be read,
4 invalid rules file, 130 interrupted."""


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
@click.option("--format", "fmt", type=click.Choice(["table", "jsonl"]), default="table", show_default=True,
              help="Readable tables, or one JSON object per line on stdout.")
@click.option("--flows", "with_flows", is_flag=True, help="With --format jsonl: also write one record per flow.")
@click.option("--capacity", type=click.IntRange(1, 1 << 28), default=1 << 18, show_default=True,
              help="Most flows held at once; the oldest idle flow is evicted (and counted) beyond it.")
@click.option("--payload-slots", type=click.IntRange(0, 1 << 28), default=None,
              help="Flows that may keep their first payload bytes at once [default: capacity/8].")
@click.option("--tcp-idle", type=click.FloatRange(min=0, min_open=True), default=300.0, show_default=True,
              help="Seconds without packets after which a TCP flow ends.")
@click.option("--idle", "other_idle", type=click.FloatRange(min=0, min_open=True), default=60.0, show_default=True,
              help="Seconds without packets after which a UDP/ICMP/other flow ends.")
@click.option("--active-timeout", type=click.FloatRange(min=0), default=3600.0, show_default=True,
              help="Seconds after which a long flow is reported and continues in a new record (0: never).")
@click.option("--detect/--no-detect", default=True, show_default=True,
              help="Run the detectors; --no-detect only aggregates flows (faster, no findings).")
@click.option("--rules", "rules_file", type=click.Path(dir_okay=False), default=None,
              help="Allowlist rules (TOML, see rules/README.md) [default: rules/default.toml].")
@click.option("--progress/--no-progress", default=None,
              help="Progress bar on stderr [default: when stderr is a terminal].")
def analyze(captures: tuple[str, ...], fmt: str, with_flows: bool, capacity: int, payload_slots: int | None,
            tcp_idle: float, other_idle: float, active_timeout: float, detect: bool, rules_file: str | None,
            progress: bool | None) -> None:
    """Analyse pcap/pcapng captures (plain, gzip, bzip2 or xz; '-' reads standard input)."""
    if with_flows and fmt != "jsonl":
        raise click.UsageError("--flows needs --format jsonl")
    if captures.count("-") > 1:
        raise click.UsageError("standard input ('-') can be read only once")
    from egressguard.flows import FlowSettings
    from egressguard.pipeline import Analyzer, CaptureDone, Settings

    slots = capacity // 8 if payload_slots is None else payload_slots
    if slots > capacity:
        raise click.UsageError(f"--payload-slots ({slots}) cannot exceed --capacity ({capacity})")
    settings = Settings(flows=FlowSettings(capacity=capacity, payload_slots=slots, tcp_idle_s=tcp_idle,
                                           other_idle_s=other_idle, active_s=active_timeout))
    try:
        settings.flows.validate()
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None
    rules = _load_rules(rules_file) if detect else None
    report = _make_report(fmt, with_flows)
    show_progress = sys.stderr.isatty() if progress is None else progress
    failures = 0
    try:
        analyzer = Analyzer(settings, detectors=None if detect else [], rules=rules)
        with _Progress(show_progress) as bar:
            for spec in captures:
                try:
                    for event in analyzer.analyze(spec, bar.update):
                        report.handle(event)
                        if isinstance(event, CaptureDone):
                            for w in event.summary.warnings:
                                bar.echo(f"egressguard: warning: {w}")
                except EgressGuardError as exc:
                    failures += 1
                    bar.echo(f"egressguard: error: {exc}")
        report.close()
    except KeyboardInterrupt:
        _fail("interrupted", ExitStatus.INTERRUPTED)
    except BrokenPipeError:
        # the reader went away (e.g. `| head`): stop quietly, as other Unix tools do
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        sys.exit(int(ExitStatus.OK))
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


def _load_rules(path: str | None):
    """The Allowlist of a rules file (the default file when None); an invalid file ends the run with exit 4."""
    from egressguard.rules import load_rules

    try:
        return load_rules(path)
    except EgressGuardError as exc:
        _fail(str(exc), exc.exit_status)


def _make_report(fmt: str, with_flows: bool):
    if fmt == "jsonl":
        from egressguard.report.jsonl import JsonlReport

        return JsonlReport(sys.stdout, with_flows)
    from rich.console import Console

    from egressguard.report.table import TableReport

    # a pipe or file gets wide lines rather than folded addresses
    return TableReport(Console(highlight=False, width=None if sys.stdout.isatty() else 140))


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


