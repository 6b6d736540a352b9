"""Readable terminal output (rich): per-capture summary and the largest flows. Render functions are pure."""
from __future__ import annotations

import heapq
from typing import Any

import numpy as np
from rich.console import Console, Group
from rich.markup import escape
from rich.table import Table

from egressguard.report.records import finding_record, flow_record, summary_record
from egressguard.report.text import safe_markup
from egressguard.schema import CaptureSummary, Finding

TOP_FLOWS = 10
MAX_PATH_TEXT = 1000  # characters of a capture name shown (PATH_MAX is 4096)


def _human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


def _endpoint(ip: str, port: int) -> str:
    return f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}"


def _human_duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.3f} s"
    minutes, sec = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    days, hours = divmod(hours, 24)
    return (f"{days}d " if days else "") + f"{hours:02d}:{minutes:02d}:{sec:02d}"


def render_summary(summary: dict[str, Any]) -> Table:
    """A two-column table of one summary record."""
    t = Table(show_header=False, title_justify="left")
    t.add_column("what", style="bold", no_wrap=True)
    t.add_column("value", overflow="fold")
    # a file name is the user's, but may have been chosen by whoever wrote the capture: shown as safely as wire text
    t.add_row("capture", safe_markup(summary["capture"], MAX_PATH_TEXT))
    fmt = summary["format"] + (f" ({summary['compression']})" if summary["compression"] else "")
    t.add_row("format", escape(fmt))
    t.add_row("packets", f"{summary['packets']:,}")
    t.add_row("bytes", f"{summary['bytes']:,} ({_human_bytes(summary['bytes'])})")
    t.add_row("flows", f"{summary['flows']:,}")
    t.add_row("time span", _human_duration(summary["duration"]))
    for key, label in (("truncated", "cut by snaplen"), ("headers_cut", "headers cut"),
                       ("undecodable", "undecodable"), ("not_ip", "not IP"), ("fragments", "IP fragments"),
                       ("evictions", "flows evicted (table full)"),
                       ("payload_slots_exhausted", "flows without payload kept (pool full)")):
        if summary[key]:
            t.add_row(label, f"{summary[key]:,}")
    if not summary["file_complete"]:
        t.add_row("[red]complete[/red]", "[red]no: reading stopped early[/red]")
    for w in summary["warnings"]:
        t.add_row("[yellow]warning[/yellow]", safe_markup(w, MAX_PATH_TEXT + 200))
    return t


SEVERITY_STYLE = {"critical": "bold white on red", "high": "bold red", "medium": "yellow", "low": "cyan"}
SEVERITY_ORDER = {"critical": 0, "high": 1, "medium": 2, "low": 3}


def _finding_details(f: dict[str, Any]) -> list[str]:
    """Kind-specific lines under the evidence (all wire strings made safe)."""
    lines = []
    ssh = f.get("ssh")
    if ssh:
        lines.append(f"ssh client: {safe_markup(ssh.get('client_banner'))}   server: {safe_markup(ssh.get('server_banner'))}")
        lines.append(f"cipher {safe_markup(ssh.get('cipher'))}, mac {safe_markup(ssh.get('mac'))}, "
                     f"login {safe_markup(ssh.get('auth') or 'unknown')}, "
                     f"hassh {safe_markup(ssh.get('hassh'))}, hassh_server {safe_markup(ssh.get('hassh_server'))}")
    mining = f.get("mining")
    if mining:
        pool = mining.get("pool")
        head = f"mining: {safe_markup(mining.get('protocol'))}"
        if pool:
            head += f", pool {safe_markup(pool)} (from {safe_markup(mining.get('pool_source'))})"
        if mining.get("methods"):
            head += f", methods {safe_markup(', '.join(mining['methods']), 300)}"
        lines.append(head)
        who = [f"{label} {safe_markup(mining[key])}" for key, label in
               (("login", "login"), ("worker", "worker"), ("agent", "agent"), ("coin", "coin"),
                ("algorithm", "algorithm")) if mining.get(key)]
        if who:
            lines.append(", ".join(who))
    egress = f.get("egress")
    if egress:
        parts = [f"reason {safe_markup(egress.get('reason'))}"]
        for key, label in (("deny_rule", "rule"), ("server_name", "server name"), ("address_class", "class"),
                           ("sandbox", "sandbox")):
            if egress.get(key):
                parts.append(f"{label} {safe_markup(egress[key])}")
        lines.append(", ".join(parts))
    return lines


MAX_FINDINGS_SHOWN = 50  # a terminal shows the worst ones in full; --format jsonl has them all


def render_findings(findings: list[dict[str, Any]], limit: int = MAX_FINDINGS_SHOWN) -> Table:
    """Findings, worst first, each with its flow, evidence sentences and details; beyond `limit`, a count by kind."""
    t = Table(title=f"Findings ({len(findings)})", title_justify="left", show_lines=True, expand=False)
    t.add_column("severity", no_wrap=True)
    t.add_column("finding", overflow="fold")
    ordered = sorted(findings, key=lambda f: (SEVERITY_ORDER.get(f["severity"], 9), -f["score"], f["first_seen"]))
    if len(ordered) > limit:
        rest: dict[tuple[str, str], int] = {}
        for f in ordered[limit:]:
            rest[(f["severity"], f["kind"])] = rest.get((f["severity"], f["kind"]), 0) + 1
        t.caption = (f"{len(ordered) - limit} more not shown (`--format jsonl` lists every finding): " + ", ".join(
            f"{n} {safe_markup(kind)} ({sev})" for (sev, kind), n in sorted(
                rest.items(), key=lambda kv: (SEVERITY_ORDER.get(kv[0][0], 9), -kv[1]))))
        t.caption_justify = "left"
        ordered = ordered[:limit]
    for f in ordered:
        sev = f["severity"]
        head = (f"[bold]{safe_markup(f['kind'])}[/bold] (score {f['score']:.2f})  {safe_markup(f['proto'])} "
                f"{safe_markup(_endpoint(f['src_ip'], f['src_port']))} -> {safe_markup(_endpoint(f['dst_ip'], f['dst_port']))}"
                f"  {_human_duration(f['last_seen'] - f['first_seen'])}")
        body = [head] + [f"  - {safe_markup(e, 1000)}" for e in f["evidence"]] + [f"  {x}" for x in _finding_details(f)]
        t.add_row(f"[{SEVERITY_STYLE.get(sev, '')}]{sev}[/]", "\n".join(body))
    return t


def render_top_flows(flows: list[dict[str, Any]]) -> Table:
    """The largest flows of a capture, by bytes in both directions."""
    t = Table(title="Largest flows", title_justify="left")
    for col in ("proto", "source", "destination", "packets", "bytes", "duration"):
        t.add_column(col, justify="right" if col in ("packets", "bytes", "duration") else "left",
                     overflow="fold", no_wrap=col not in ("source", "destination"))
    for f in flows:
        t.add_row(str(f["proto"]), escape(_endpoint(f["src_ip"], f["src_port"])), escape(_endpoint(f["dst_ip"], f["dst_port"])),
                  f"{f['src_pkts'] + f['dst_pkts']:,}", _human_bytes(f["src_bytes"] + f["dst_bytes"]),
                  _human_duration(f["duration"]))
    return t


def flow_rank(rec: np.void) -> tuple[int, int, int]:
    """How a flow ranks among the largest: bytes both ways, ties to the earlier flow, then to the smaller 5-tuple
    hash; a total order, so the same flows are shown however the records were batched (or split over workers)."""
    return (int(rec["orig_bytes"]) + int(rec["resp_bytes"]), -int(rec["first_seen_ns"]), -int(rec["key_hash"]))


def top_rows(recs: np.ndarray, k: int) -> np.ndarray:
    """The rows of the `k` highest-ranked flows of a FLOW array (flow_rank's order, best first)."""
    total = (recs["orig_bytes"] + recs["resp_bytes"]).astype(np.int64)
    return np.lexsort((recs["key_hash"], recs["first_seen_ns"], -total))[:k]


class TableReport:
    """Collects per-capture summaries and the largest flows, then prints them."""

    def __init__(self, console: Console, top: int = TOP_FLOWS):
        self.console = console
        self.top = top
        self._heap: list[tuple[tuple[int, int, int], int, dict[str, Any]]] = []
        self._seq = 0
        self._findings: list[dict[str, Any]] = []
        self.findings_total = 0

    def batch(self, capture: str, recs: np.ndarray, annotations: dict[int, dict], findings: list[Finding]) -> None:
        """A batch of flow records (FLOW array) with their annotations, and findings."""
        for finding in findings:
            self._findings.append(finding_record(finding))
            self.findings_total += 1
        if not len(recs):
            return
        for i in top_rows(recs, self.top).tolist():
            rank = flow_rank(recs[i])
            if len(self._heap) < self.top or rank > self._heap[0][0]:
                self._seq += 1
                item = (rank, self._seq, flow_record(recs[i], capture))
                if len(self._heap) < self.top:
                    heapq.heappush(self._heap, item)
                else:
                    heapq.heapreplace(self._heap, item)

    def summary(self, summary: CaptureSummary) -> None:
        """A capture ended: print its findings, its summary and its largest flows."""
        flows = [item[2] for item in sorted(self._heap, reverse=True)]
        self._heap = []
        counts: dict[str, int] = {}
        for f in self._findings:
            counts[f["kind"]] = counts.get(f["kind"], 0) + 1
        parts = []
        if self._findings:
            parts.append(render_findings(self._findings))
        else:
            parts.append("[green]No findings.[/green]")
        self._findings = []
        parts.append(render_summary(summary_record(summary, counts)))
        if flows:
            parts.append(render_top_flows(flows))
        self.console.print(Group(*parts))

    def close(self) -> None:
        pass
