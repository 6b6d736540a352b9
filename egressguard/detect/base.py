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
    """A detector: `name` and `inspect(batch, capture) -> BatchResult`; it never mutates the batch."""

    name: str

    def inspect(self, batch: FlowBatch, capture: str) -> BatchResult: ...
