"""Readable terminal output (rich): per-capture summary and the largest flows. Render functions are pure."""
from __future__ import annotations

import heapq
from typing import Any

import numpy as np
from rich.console import Console, Group
from rich.markup import escape
from rich.table import Table

from egressguard.pipeline import CaptureDone, Event, FlowsReady
from egressguard.report.records import flow_record, summary_record

TOP_FLOWS = 10


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
    t.add_row("capture", escape(summary["capture"]))
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
        t.add_row("[yellow]warning[/yellow]", escape(w))
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


class TableReport:
    """Collects per-capture summaries and the largest flows, then prints them."""

    def __init__(self, console: Console, top: int = TOP_FLOWS):
        self.console = console
        self.top = top
        self._heap: list[tuple[int, int, dict[str, Any]]] = []
        self._seq = 0

    def handle(self, event: Event) -> None:
        if isinstance(event, FlowsReady):
            recs = event.batch.records
            if not len(recs):
                return
            total = recs["orig_bytes"] + recs["resp_bytes"]
            k = min(self.top, len(recs))
            for i in np.argpartition(-total.astype(np.int64), k - 1)[:k]:
                size = int(total[i])
                if len(self._heap) < self.top or size > self._heap[0][0]:
                    self._seq += 1
                    item = (size, self._seq, flow_record(recs[i], event.capture))
                    if len(self._heap) < self.top:
                        heapq.heappush(self._heap, item)
                    else:
                        heapq.heapreplace(self._heap, item)
        elif isinstance(event, CaptureDone):
            flows = [item[2] for item in sorted(self._heap, reverse=True)]
            self._heap = []
            parts = [render_summary(summary_record(event.summary))]
            if flows:
                parts.append(render_top_flows(flows))
            self.console.print(Group(*parts))

    def close(self) -> None:
        pass
