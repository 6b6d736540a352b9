"""Live terminal dashboard (rich) for `watch`: pure render functions of a LiveSnapshot, and the one refresh loop.

One terminal line per row (cells never wrap; long ones end in an ellipsis), so the layout fits any height by
counting; only the rows that fit are looked at, so a frame costs the same however much the engine holds. Wire
strings go through `_wire` into `rich.text.Text`: never parsed as markup, never raw control characters.
"""
from __future__ import annotations

import math
import threading
import time
import unicodedata
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from rich.cells import cell_len
from rich.console import Console, ConsoleOptions, Group, RenderableType, RenderResult
from rich.live import Live
from rich.rule import Rule
from rich.table import Table
from rich.text import Text

from egressguard.report.text import safe_text
from egressguard.schema import InterfaceView, LiveSnapshot, SandboxView, Severity

SEVERITY_STYLE = {"critical": "bold white on red", "high": "bold red", "medium": "yellow", "low": "cyan"}
MAX_INTERFACES = 8  # rows per section when the terminal height is not known
MAX_FINDINGS = 8
MAX_SANDBOXES = 10
MAX_DESTINATIONS = 5
MAX_MESSAGES = 3
EVIDENCE_LINES = 2  # evidence sentences under each finding; fewer when the terminal is short
SPARK_WIDTH = 16  # seconds of rate history drawn
SPARK_BLOCKS = "▁▂▃▄▅▆▇█"  # U+2581..U+2588, eight levels above zero; zero is a blank
WIRE_LIMIT = 160  # characters kept of one wire string; cells cut further to the terminal width
# Escaped whether or not safe_text's list names them: controls, format characters (bidi, zero-width, rarer ones such
# as U+110BD, U+1D173), lone surrogates (a UTF-8 console cannot write them), line and paragraph separators.
_HIDDEN_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Zl", "Zp"})


def _wire(value: object, limit: int = WIRE_LIMIT) -> str:
    """An untrusted string made printable and bounded: safe_text, then every remaining invisible code point escaped."""
    text = safe_text("" if value is None else value, limit)
    if text.isascii():
        return text
    return "".join((f"\\u{ord(c):04x}" if ord(c) <= 0xFFFF else f"\\U{ord(c):08x}")
                   if c > "\x7f" and unicodedata.category(c) in _HIDDEN_CATEGORIES else c for c in text)


def _line(*parts: str | tuple[str, str]) -> Text:
    """One terminal line that never wraps; a part is plain text or (text, style); nothing is parsed as markup."""
    out = Text(no_wrap=True, overflow="ellipsis")
    for text, style in (part if isinstance(part, tuple) else (part, "") for part in parts):
        out.append(text, style=style or None)
    return out


def _si(value: float) -> str:
    """Compact decimal number: 950, 12.3k, 4.5M, 1.2G."""
    if not math.isfinite(value) or value < 0:
        return "0"
    for unit, size in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if value >= size:
            return f"{value / size:.1f}{unit}"
    return f"{value:.0f}"


def _human_bytes(n: float) -> str:
    """Bytes in binary units, as the analyze table shows them: 512 B, 1.5 KiB, 3.2 MiB."""
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


def _uptime(seconds: float) -> str:
    days, rest = divmod(max(0, int(seconds)), 86400)
    hours, rest = divmod(rest, 3600)
    minutes, sec = divmod(rest, 60)
    if days:
        return f"{days}d {hours:02d}h {minutes:02d}m"
    return f"{hours}h {minutes:02d}m {sec:02d}s" if hours else f"{minutes}m {sec:02d}s"


def _clock(seconds: float) -> str:
    """HH:MM:SS in UTC (the snapshot's clock; UTC so that every operator and test reads the same)."""
    try:
        return time.strftime("%H:%M:%S", time.gmtime(seconds))
    except (OverflowError, OSError, ValueError, TypeError):
        return "--:--:--"


def sparkline(values: Sequence[float], width: int = SPARK_WIDTH) -> str:
    """The last `width` values as block characters scaled to their maximum; zero (or no data) is a blank."""
    recent = [v if isinstance(v, (int, float)) and math.isfinite(v) and v > 0 else 0.0 for v in values[-width:]]
    top = max(recent, default=0.0)
    if top <= 0:
        return " " * len(recent)
    return "".join(SPARK_BLOCKS[max(0, math.ceil(v / top * len(SPARK_BLOCKS)) - 1)] if v else " " for v in recent)


def render_header(snapshot: LiveSnapshot) -> Text:
    """One line: clock (UTC), uptime, finding count, flow totals, evictions (highlighted: the flow table overflowed)."""
    now = snapshot.time_ns / 1e9
    worst = str(snapshot.findings[0].get("severity")) if snapshot.findings else ""
    return _line(("egressguard", "bold"), f"  {_clock(now)} UTC  up {_uptime(now - snapshot.started_ns / 1e9)}  ",
                 (f"findings {len(snapshot.findings):,}", SEVERITY_STYLE.get(worst, "")),
                 f"  flows {snapshot.active_flows:,} active, {snapshot.finished_flows:,} ended  ",
                 (f"evictions {snapshot.evictions:,}", "bold yellow" if snapshot.evictions else ""))


class Column(NamedTuple):
    """A table column: header, justification, and when it goes on a narrow terminal (0: never; highest rank first)."""

    header: str
    justify: str = "left"
    drop_rank: int = 0


@dataclass
class FittedTable:
    """A borderless table, one line per row, that leaves out its least important columns when the width it is drawn
    at cannot show them whole (the columns it keeps are cut with an ellipsis if they still do not fit)."""

    columns: tuple[Column, ...]
    rows: list[list[Text]] = field(default_factory=list)

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        columns = self.columns
        widths = [max([cell_len(c.header)] + [row[i].cell_len for row in self.rows]) for i, c in enumerate(columns)]
        keep = list(range(len(columns)))
        droppable = sorted((i for i, c in enumerate(columns) if c.drop_rank), key=lambda i: -columns[i].drop_rank)
        while droppable and sum(widths[i] for i in keep) + 2 * (len(keep) - 1) > options.max_width:
            keep.remove(droppable.pop(0))
        table = Table(box=None, header_style="bold", pad_edge=False, show_edge=False)
        for i in keep:
            table.add_column(columns[i].header, justify=columns[i].justify,  # type: ignore[arg-type]
                             no_wrap=True, overflow="ellipsis")
        for row in self.rows:
            table.add_row(*(row[i] for i in keep))
        yield table


def _split(count: int, lines: int | None, overhead: int, default: int) -> tuple[int, int]:
    """How many items fit in a section of `lines` lines (`overhead` of them title and column header; one an
    "and N more" line when not all fit), and how many don't; `None` lines: `default` rows."""
    rows = default if lines is None else lines - overhead
    shown = count if count <= rows else max(0, rows - 1)
    return shown, count - shown


def _section(title: str, table: FittedTable | None, lines: list[Text], more: str = "",
             more_first: bool = False) -> Group:
    """A titled section: column header and rows, other lines, and the line that counts what did not fit."""
    parts: list[RenderableType] = [Rule(Text(title, style="bold"), align="left", characters="─")]
    if more and more_first:
        parts.append(_line((f"  {more}", "dim")))
    if table is not None and table.rows:
        parts.append(table)
    parts.extend(lines)
    if more and not more_first:
        parts.append(_line((f"  {more}", "dim")))
    return Group(*parts)


def _more(hidden: int, noun: str) -> str:
    return f"and {hidden:,} more {noun}" if hidden else ""


def _table_size(count: int, default: int) -> tuple[int, int]:
    """(smallest, wanted) line count of a table section: title, column header, rows (an "and N more" among them)."""
    if not count:
        return 2, 2
    return 2 + min(count, 2), 2 + min(count, default)


def _interface_row(view: InterfaceView) -> list[Text]:
    pps = view.pps_history[-1] if view.pps_history else 0.0
    bps = view.bps_history[-1] if view.bps_history else 0.0
    state = _line(("up", "green") if view.up else ("down", "bold red"))
    drops = _line((f"{view.kernel_drops:,}", "bold red" if view.kernel_drops else ""))
    name = view.name if view.worker is None else f"{view.name} w{view.worker}"  # watch --workers: one row each
    return [_line(_wire(name, 40)), state, drops, _line(_si(pps)), _line(_si(bps)),
            _line((sparkline(view.pps_history), "green")), _line(f"{view.packets:,}")]


def render_interfaces(snapshot: LiveSnapshot, lines: int | None = None) -> Group:
    """Monitored interfaces: state, kernel drops, packets and bits per second now, packet-rate history, packets."""
    views = snapshot.interfaces
    shown, hidden = _split(len(views), lines, 2, MAX_INTERFACES)
    # most important first: on a narrow terminal the right-hand columns are the ones cut off
    table = FittedTable((Column("interface"), Column("state"), Column("drops", "right"),
                         Column("pkt/s", "right", 2), Column("bit/s", "right", 3),
                         Column(f"pkt/s, last {SPARK_WIDTH} s", drop_rank=4), Column("packets", "right", 5)))
    table.rows += [_interface_row(view) for view in views[:shown]]
    empty = [_line(("  no interfaces", "dim"))] if not views else []
    return _section(f"Interfaces ({len(views)})", table, empty, _more(hidden, "interfaces"))


def _evidence(finding: dict[str, Any]) -> list[Any]:
    ev = finding.get("evidence")
    return list(ev[:EVIDENCE_LINES]) if isinstance(ev, (list, tuple)) else [ev] if ev else []


def _plan_findings(findings: Sequence[dict[str, Any]], lines: int | None) -> tuple[int, int, int]:
    """(findings shown, evidence lines each, lines used) for a body of `lines` lines: as many evidence lines as
    still let the first three findings (or all, if fewer) show; `None`: the default number of findings."""
    if not findings:
        return 0, 0, 1  # the "no findings" line
    budget = MAX_FINDINGS * (1 + EVIDENCE_LINES) + 1 if lines is None else lines
    first = findings[:MAX_FINDINGS]
    for per in range(EVIDENCE_LINES, -1, -1):
        used = shown = 0
        for f in first:
            height = 1 + min(len(_evidence(f)), per)
            if used + height + (shown + 1 < len(findings)) > budget:
                break
            used, shown = used + height, shown + 1
        if shown >= min(len(findings), 3):
            break
    return shown, per, used + (shown < len(findings))


def _destination(f: dict[str, Any]) -> str:
    ip, port, proto = f.get("dst_ip"), f.get("dst_port"), f.get("proto")
    host = f"[{ip}]" if ":" in str(ip) else str(ip)
    return f"{host}:{port}/{proto}" if port is not None else f"{host}/{proto}"


def _finding_detail(f: dict[str, Any]) -> str:
    """The kind-specific words that identify a finding at a glance (SSH banner, pool and login, server name)."""
    ssh, mining, egress = f.get("ssh"), f.get("mining"), f.get("egress")
    words = []
    if isinstance(ssh, dict) and ssh.get("client_banner"):
        words.append(f"client {_wire(ssh['client_banner'], 60)}")
    if isinstance(mining, dict):
        words += [f"{label} {_wire(mining[key], 60)}" for key, label in (("pool", "pool"), ("login", "login"))
                  if mining.get(key)]
    if isinstance(egress, dict):
        words += [_wire(egress.get("reason"), 40)]
        if egress.get("server_name"):
            words.append(f"name {_wire(egress['server_name'], 60)}")
    return "  ".join(words)


def _finding_lines(f: dict[str, Any], per: int, kind_width: int) -> list[Text]:
    severity = str(f.get("severity"))
    score = f.get("score")
    label = severity.upper() if severity in SEVERITY_STYLE else _wire(severity, 8)
    head = _line((label, SEVERITY_STYLE.get(severity, "")), " " * max(2, 10 - len(label)),
                 (f"{_wire(f.get('kind'), 40):<{kind_width}}", "bold"),
                 f"  {_wire(f.get('sandbox') or f.get('src_ip'), 40)} -> {_wire(_destination(f), 80)}",
                 f"  score {score:.2f}" if isinstance(score, (int, float)) else "",
                 f"  since {_clock(f.get('first_seen'))}" if isinstance(f.get("first_seen"), (int, float)) else "")
    detail = _finding_detail(f)
    if detail:
        head.append(f"  {detail}", "dim")
    return [head] + [_line(f"    {_wire(sentence, 400)}") for sentence in _evidence(f)[:per]]


def render_findings(snapshot: LiveSnapshot, lines: int | None = None) -> Group:
    """Current findings in the engine's order (worst first): a head line each, then its first evidence sentences."""
    findings = snapshot.findings
    shown, per, _ = _plan_findings(findings, None if lines is None else lines - 1)
    body: list[Text] = []
    kind_width = max((len(_wire(f.get("kind"), 40)) for f in findings[:shown]), default=0)
    for f in findings[:shown]:
        body += _finding_lines(f, per, kind_width)
    if not findings:
        body.append(_line(("  no findings", "green")))
    return _section(f"Findings ({len(findings):,})", None, body, _more(len(findings) - shown, "findings"))


_SEVERITY_VALUES = frozenset(int(s) for s in Severity)


def _sandbox_row(view: SandboxView) -> list[Text]:
    worst = _line("-")
    if view.worst in _SEVERITY_VALUES:
        label = Severity(view.worst).label()
        worst = _line((label, SEVERITY_STYLE[label]), f" {_wire(view.worst_kind, 40)}" if view.worst_kind else "")
    return [_line(_wire(view.name, 40)), _line(_wire(view.address, 45)), _line(_wire(view.port or "-", 20)), worst,
            _compute_cell(view), _line(_human_bytes(view.bytes_out)), _line(f"{view.flows:,}"),
            _line(f"{view.destinations:,}")]


def _compute_cell(view: SandboxView) -> Text:
    """CPU cores in use out of the sandbox's limit (GPU % when its processes use one); red while busy."""
    c = view.compute
    if c is None:
        return _line(("-", "dim"))
    text = f"{c.cpu_cores:.1f}/{c.cpu_limit_cores:.0f}" + (f" gpu {c.gpu_percent:.0f}%" if c.gpu_percent else "")
    return _line((text, "bold red" if c.busy_for_s > 0 else ""))


def render_sandboxes(snapshot: LiveSnapshot, lines: int | None = None) -> Group:
    """Sandboxes in the engine's order (worst finding first): name, address, bridge port, worst finding, CPU cores
    in use of its limit (watch samples them), traffic."""
    views = snapshot.sandboxes
    shown, hidden = _split(len(views), lines, 2, MAX_SANDBOXES)
    table = FittedTable((Column("sandbox"), Column("address", drop_rank=3), Column("port", drop_rank=1),
                         Column("worst finding"), Column("cpu", "right", 4), Column("bytes out", "right", 2),
                         Column("flows", "right", 5), Column("destinations", "right", 6)))
    table.rows += [_sandbox_row(view) for view in views[:shown]]
    empty = [_line(("  no sandbox traffic yet", "dim"))] if not views else []
    return _section(f"Sandboxes ({len(views):,})", table, empty, _more(hidden, "sandboxes"))


def render_new_destinations(snapshot: LiveSnapshot, lines: int | None = None) -> Group:
    """Destinations contacted for the first time, newest first, with the DNS names bound to them."""
    views = snapshot.new_destinations
    shown, hidden = _split(len(views), lines, 2, MAX_DESTINATIONS)
    table = FittedTable((Column("time", drop_rank=2), Column("sandbox"), Column("destination"),
                         Column("names", drop_rank=1)))
    for view in views[:shown]:
        names = ", ".join(_wire(n, 60) for n in view.names[:3])
        names += f" +{len(view.names) - 3}" if len(view.names) > 3 else ""
        table.rows.append([_line(_clock(view.time_ns / 1e9)), _line(_wire(view.sandbox, 40)),
                           _line(_wire(view.destination, 60)), _line(names)])
    empty = [_line(("  none yet", "dim"))] if not views else []
    return _section("New destinations", table, empty, _more(hidden, "destinations"))


def render_messages(snapshot: LiveSnapshot, lines: int | None = None) -> Group:
    """The most recent operator messages (hook failures, rule reloads, interface changes), newest last."""
    messages = snapshot.messages
    shown, hidden = _split(len(messages), lines, 1, MAX_MESSAGES)
    body = [_line((f"  {_wire(m, 300)}", "yellow")) for m in messages[len(messages) - shown:]] if shown else []
    return _section("Messages", None, body, f"{hidden:,} earlier messages not shown" if hidden else "", True)


def _sizes(snapshot: LiveSnapshot) -> dict[str, tuple[int, int]]:
    """(smallest, wanted) line count of each section, including its title line."""
    n_messages = len(snapshot.messages)
    return {
        "findings": (2 + (len(snapshot.findings) > 1), 1 + _plan_findings(snapshot.findings, None)[2]),
        "interfaces": _table_size(len(snapshot.interfaces), MAX_INTERFACES),
        "sandboxes": _table_size(len(snapshot.sandboxes), MAX_SANDBOXES),
        "messages": (1 + min(n_messages, 2), 1 + min(n_messages, MAX_MESSAGES)) if n_messages else (0, 0),
        "new_destinations": _table_size(len(snapshot.new_destinations), MAX_DESTINATIONS),
    }


_RENDER = {"interfaces": render_interfaces, "findings": render_findings, "sandboxes": render_sandboxes,
           "new_destinations": render_new_destinations, "messages": render_messages}
_TOP_TO_BOTTOM = ("interfaces", "findings", "sandboxes", "new_destinations", "messages")
_PRIORITY = ("findings", "interfaces", "sandboxes", "messages", "new_destinations")  # who gets lines first


def _allocate(snapshot: LiveSnapshot, height: int) -> dict[str, int]:
    """Lines per section for a terminal `height` lines high (one goes to the header): every section that fits gets
    its smallest form, in priority order, then the rest is handed out in the same order up to what each wants."""
    left = height - 1
    sizes = _sizes(snapshot)
    given: dict[str, int] = {}
    for name in _PRIORITY:
        smallest = sizes[name][0]
        if smallest and smallest <= left:
            given[name] = smallest
            left -= smallest
    for name in given:
        extra = min(sizes[name][1] - given[name], left)
        given[name] += extra
        left -= extra
    return given


def render_dashboard(snapshot: LiveSnapshot, height: int | None = None) -> RenderableType:
    """The whole dashboard, top to bottom: header, interfaces, findings, sandboxes, new destinations, messages.

    Args:
        snapshot: what the live engine knows now.
        height: terminal lines to fit in (sections shrink, then drop out: findings last); None for default sizes.

    Returns:
        A renderable that is at most `height` lines high at any width.
    """
    if height is not None and height < 1:
        return Text("")
    if height is None:
        lines: dict[str, int | None] = {name: None for name in _TOP_TO_BOTTOM
                                        if name != "messages" or snapshot.messages}
    else:
        lines = dict(_allocate(snapshot, height))
    return Group(render_header(snapshot), *(_RENDER[name](snapshot, lines[name]) for name in _TOP_TO_BOTTOM
                                            if name in lines))


def run_dashboard(next_snapshot: Callable[[], LiveSnapshot | None], console: Console, refresh_s: float = 0.5,
                  stop: threading.Event | None = None) -> None:
    """Redraw the dashboard every `refresh_s` seconds until `stop` is set or `next_snapshot` returns None.

    On a terminal it takes the full screen; elsewhere (a file, a pipe) the last frame is printed when it ends.

    Args:
        next_snapshot: returns the engine's current snapshot, or None when the engine has stopped.
        console: where to draw.
        refresh_s: seconds between frames.
        stop: set it (from any thread) to end the loop within one frame.
    """
    stop = stop or threading.Event()
    with Live(console=console, auto_refresh=False, screen=console.is_terminal, transient=False) as live:
        while not stop.is_set():
            snapshot = next_snapshot()
            if snapshot is None:
                break
            live.update(render_dashboard(snapshot, console.size.height if console.is_terminal else None),
                        refresh=True)
            stop.wait(refresh_s)
