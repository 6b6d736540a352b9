"""What every detector is: a unit that looks at a batch of finished flows and returns findings and flow labels."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

from egressguard.flows import FlowBatch
from egressguard.schema import Finding


@dataclass
class BatchResult:
    """Findings of a batch and per-row annotations that go into flow records (e.g. `app`, `ssh_use`)."""

    findings: list[Finding] = field(default_factory=list)
    annotations: dict[int, dict] = field(default_factory=dict)

    def annotate(self, row: int, **values) -> None:
        self.annotations.setdefault(row, {}).update(values)

    def extend(self, other: "BatchResult") -> None:
        self.findings.extend(other.findings)
        for row, values in other.annotations.items():
            self.annotate(row, **values)


class Detector(Protocol):
    """A detector: `name` and `inspect(batch, capture) -> BatchResult`; it never mutates the batch.

    Optional hook `finish(capture) -> BatchResult`: called once after the last batch of a capture (by
    pipeline.Analyzer; live mode may call it at the end of each reporting interval). A detector that holds flows back
    (e.g. until the DNS answers that may explain them have arrived, as flows end out of order) or aggregates them
    reports them here. Its findings are not tied to a batch row: they carry their own flow record, and arrive in a
    FlowsReady event with an empty batch just before CaptureDone. Annotations returned by `finish` are ignored.
    """

    name: str

    def inspect(self, batch: FlowBatch, capture: str) -> BatchResult: ...
