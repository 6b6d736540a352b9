"""JSON Lines output: one object per line, always valid JSON and pure ASCII (wire strings are \\u-escaped)."""
from __future__ import annotations

import json
import re
from typing import Any, TextIO

import numpy as np

from egressguard.report.records import finding_record, flow_record, summary_record
from egressguard.schema import CaptureSummary, Finding


def dumps(record: dict[str, Any]) -> str:
    """One JSONL line (without newline); non-ASCII and control characters are escaped by json itself.

    A lone surrogate (a JSON-RPC login sent as "\\ud800" comes back from the JSON parser as one) would be written
    as a lone \\ud800 escape, which strict JSON readers reject and no UTF-8 decoder can represent: such strings are
    written with the surrogate spelled out as text instead. Only lines that contain a \\ud escape are checked.
    """
    line = json.dumps(record, ensure_ascii=True, separators=(",", ":"), allow_nan=False)
    if "\\ud" in line:
        line = json.dumps(_without_lone_surrogates(record), ensure_ascii=True, separators=(",", ":"),
                          allow_nan=False)
    return line


_SURROGATE = re.compile("[\ud800-\udfff]")  # in a Python str, only a lone surrogate can be one


def _without_lone_surrogates(value: Any) -> Any:
    """The record with each lone surrogate in its strings written out as the six characters \\udXXX."""
    if isinstance(value, str):
        return _SURROGATE.sub(lambda m: f"\\u{ord(m.group()):04x}", value)
    if isinstance(value, dict):
        return {_without_lone_surrogates(k): _without_lone_surrogates(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_without_lone_surrogates(v) for v in value]
    return value


class JsonlReport:
    """Writes flow records (when asked) and one summary record per capture."""

    def __init__(self, out: TextIO, with_flows: bool):
        self.out = out
        self.with_flows = with_flows
        self.findings_total = 0
        self._counts: dict[str, int] = {}

    def batch(self, capture: str, recs: np.ndarray, annotations: dict[int, dict], findings: list[Finding]) -> None:
        """A batch of flow records (FLOW array) with their annotations, and findings."""
        write = self.out.write
        if self.with_flows:
            for i in range(len(recs)):
                write(dumps(flow_record(recs[i], capture, annotations.get(i))) + "\n")
        for finding in findings:
            write(dumps(finding_record(finding)) + "\n")
            self._counts[str(finding.kind)] = self._counts.get(str(finding.kind), 0) + 1
            self.findings_total += 1

    def summary(self, summary: CaptureSummary) -> None:
        """A capture ended: its summary record, with the findings counted per kind."""
        self.out.write(dumps(summary_record(summary, self._counts)) + "\n")
        self._counts = {}

    def close(self) -> None:
        self.out.flush()
