"""JSON Lines output: one object per line, always valid JSON and pure ASCII (wire strings are \\u-escaped)."""
from __future__ import annotations

import json
from typing import Any, TextIO

from egressguard.pipeline import CaptureDone, Event, FlowsReady
from egressguard.report.records import flow_record, summary_record


def dumps(record: dict[str, Any]) -> str:
    """One JSONL line (without newline); non-ASCII and control characters are escaped by json itself."""
    return json.dumps(record, ensure_ascii=True, separators=(",", ":"), allow_nan=False)


class JsonlReport:
    """Writes flow records (when asked) and one summary record per capture."""

    def __init__(self, out: TextIO, with_flows: bool):
        self.out = out
        self.with_flows = with_flows

    def handle(self, event: Event) -> None:
        if isinstance(event, FlowsReady):
            if self.with_flows:
                recs = event.batch.records
                write = self.out.write
                for i in range(len(recs)):
                    write(dumps(flow_record(recs[i], event.capture)) + "\n")
        elif isinstance(event, CaptureDone):
            self.out.write(dumps(summary_record(event.summary)) + "\n")

    def close(self) -> None:
        self.out.flush()
