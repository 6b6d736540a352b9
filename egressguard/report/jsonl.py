"""JSON Lines output: one object per line, always valid JSON and pure ASCII (wire strings are \\u-escaped)."""
from __future__ import annotations

import json
from typing import Any, TextIO

from egressguard.pipeline import CaptureDone, Event, FlowsReady
from egressguard.report.records import finding_record, flow_record, summary_record


def dumps(record: dict[str, Any]) -> str:
    """One JSONL line (without newline); non-ASCII and control characters are escaped by json itself."""
    return json.dumps(record, ensure_ascii=True, separators=(",", ":"), allow_nan=False)


class JsonlReport:
    """Writes flow records (when asked) and one summary record per capture."""

    def __init__(self, out: TextIO, with_flows: bool):
        self.out = out
        self.with_flows = with_flows
        self.findings_total = 0
        self._counts: dict[str, int] = {}

    def handle(self, event: Event) -> None:
        write = self.out.write
        if isinstance(event, FlowsReady):
            if self.with_flows:
                recs = event.batch.records
                notes = event.result.annotations
                for i in range(len(recs)):
                    write(dumps(flow_record(recs[i], event.capture, notes.get(i))) + "\n")
            for finding in event.result.findings:
                write(dumps(finding_record(finding)) + "\n")
                self._counts[str(finding.kind)] = self._counts.get(str(finding.kind), 0) + 1
                self.findings_total += 1
        elif isinstance(event, CaptureDone):
            write(dumps(summary_record(event.summary, self._counts)) + "\n")
            self._counts = {}

    def close(self) -> None:
        self.out.flush()
