"""What every detector is: a unit that judges a FlowView and returns findings and flow labels.

The contract (ARCHITECTURE.md 3): a detector class names itself, the finding kinds it reports and how it takes part
in live monitoring; it is built from a DetectorContext (what it may use) and its own frozen Params; the engine calls
`start(capture)` before a capture's first batch, `inspect(view)` for every batch, and `finish()` when the capture
ends (live mode: at the end of every reporting interval) for what the detector held back. Constructors read no
files: the context is built once per run by whoever drives the engine.
"""
from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, ClassVar, Iterable, Protocol

from egressguard.detect.dns_binding import DnsBinding
from egressguard.flows.view import FlowView
from egressguard.policy.acquisition import AcquisitionList
from egressguard.netaddr import endpoint
from egressguard.policy.allowlist import Allowlist
from egressguard.policy.model import Entry, FlowContext
from egressguard.policy.pools import PoolList
from egressguard.policy.rules import ActiveRules
from egressguard.schema import ComputeUsage, Finding, FindingKind

if TYPE_CHECKING:
    import numpy as np


class LiveMode(enum.Enum):
    """How a detector takes part in live rounds (besides judging every finished flow)."""

    FINISHED_ONLY = 0  # finished flows only
    OPEN_FLOWS = 1  # a fresh instance judges a snapshot of the open flows that changed since the last round
    OPEN_WINDOW = 2  # a fresh instance judges every open flow of its window (`open_window`) every window period


class ComputeReadings(Protocol):
    """What the sandboxes compute (live/compute.py samples it while watching; files have none)."""

    def usage(self, address: int, mac: int = 0) -> ComputeUsage | None:
        """The sandbox that owns `address` (storage form; `mac` tells apart namespaces that reuse an address): its
        latest sample, or None."""

    def busy(self, usage: ComputeUsage) -> bool:
        """Whether a sample counts as sustained high compute."""


@dataclass(frozen=True)
class DetectorContext:
    """What a detector may use, built once per run: the rules (ActiveRules swaps them atomically on reload), the
    names DNS answers bound to addresses (fed by the engine before any detector sees a batch) and the pool list."""

    rules: ActiveRules
    binding: DnsBinding
    pools: PoolList = field(default_factory=PoolList)
    acquisition: AcquisitionList = field(default_factory=AcquisitionList)  # empty: no resource_acquisition by name
    compute: ComputeReadings | None = None  # per-sandbox CPU/GPU use (watch only)

    @classmethod
    def build(cls, rules: ActiveRules | Allowlist, pools: PoolList | None = None,
              acquisition: AcquisitionList | None = None, compute: ComputeReadings | None = None) -> "DetectorContext":
        """A context over `rules` with a fresh DNS binding that keeps names at least the rules' min_dns_ttl."""
        active = rules if isinstance(rules, ActiveRules) else ActiveRules(rules)
        return cls(active, DnsBinding(active.current.settings.min_dns_ttl_s), pools or PoolList(),
                   acquisition or AcquisitionList(), compute)


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
    """A detector. `open_window(cols)` (a static method: which open flows, given some live-table columns) is
    required when `live` is OPEN_WINDOW."""

    name: ClassVar[str]
    kinds: ClassVar[tuple[FindingKind, ...]]
    live: ClassVar[LiveMode]

    def __init__(self, ctx: DetectorContext, params=...) -> None: ...

    def start(self, capture: str) -> None:
        """A capture begins: forget per-capture state (findings will name `capture`)."""

    def inspect(self, view: FlowView) -> BatchResult:
        """Judge one batch; never mutates it."""

    def finish(self) -> BatchResult:
        """Report what was held back (flows waiting for DNS answers, aggregates); may be called again later."""


@dataclass(frozen=True)
class AllowMatch:
    """The allow entry that covers a flow's destination: `entry` (None when the tables matched but no entry could be
    named) and the DNS-bound `names` it matched by (empty when it matched by address or class)."""

    entry: "Entry | None"
    names: tuple[str, ...] = ()


def allow_match(rules: Allowlist, binding: DnsBinding, rec: "np.void") -> AllowMatch | None:
    """Which allow entry covers the destination of one flow record: by address or class first, else by a name the
    sandbox's DNS answers bound to that address when the flow started; None when none does."""
    import numpy as np

    recs = rec.reshape(1) if isinstance(rec, np.ndarray) else np.array([rec], rec.dtype)
    flow = FlowContext(recs["resp_hi"], recs["resp_lo"], recs["proto"], recs["resp_port"], rules.scopes(recs))
    classes = rules.classify(recs["resp_hi"], recs["resp_lo"])
    if rules.match_cidr("allow", flow)[0] or rules.match_class("allow", classes, flow)[0]:
        return AllowMatch(rules.first_entry("allow", flow, 0, int(classes[0])))
    names = binding.lookup(endpoint(rec, "orig"), endpoint(rec, "resp"), int(rec["first_seen_ns"]) / 1e9)[0]
    entry = rules.match_names("allow", names, flow.scopes[:, 0], int(rec["proto"]), int(rec["resp_port"])) \
        if names else None
    return AllowMatch(entry, tuple(names)) if entry is not None else None


def noisy_or(weights: Iterable[float]) -> float:
    """1 - prod(1 - w): the probability that at least one of several independent signals is right (each weight
    clipped to 0..1), rounded to 3 decimals."""
    miss = 1.0
    for w in weights:
        miss *= 1.0 - min(max(float(w), 0.0), 1.0)
    return round(1.0 - miss, 3)


def window_rows(mask: "np.ndarray", last_seen_ns: "np.ndarray", limit: int) -> tuple["np.ndarray", int]:
    """The `limit` most recently active rows of `mask` (a bounded round under a flood) and how many were left out."""
    import numpy as np

    rows = np.flatnonzero(mask)
    if len(rows) <= limit:
        return rows, 0
    keep = rows[np.argpartition(last_seen_ns[rows], -limit)[-limit:]]
    return np.sort(keep), len(rows) - limit


__all__ = ["AllowMatch", "BatchResult", "ComputeReadings", "allow_match", "Detector", "DetectorContext", "LiveMode", "noisy_or", "window_rows"]
