"""Detect stage: finished flows -> findings (and per-flow labels such as `app` and `ssh_use`)."""
from __future__ import annotations

from egressguard.detect.base import BatchResult, Detector
from egressguard.detect.beacon import BeaconDetector
from egressguard.detect.dns_binding import DnsBinding, DnsObserver
from egressguard.detect.dns_tunnel import DnsTunnelDetector
from egressguard.detect.egress import UnexpectedDestinationDetector
from egressguard.detect.icmp_tunnel import IcmpTunnelDetector
from egressguard.detect.mining import MiningDetector
from egressguard.detect.ssh_tunnel import SshTunnelDetector
from egressguard.flows import FlowBatch

DETECTORS: dict[str, type] = {
    SshTunnelDetector.name: SshTunnelDetector,
    MiningDetector.name: MiningDetector,
    UnexpectedDestinationDetector.name: UnexpectedDestinationDetector,
    DnsTunnelDetector.name: DnsTunnelDetector,
    IcmpTunnelDetector.name: IcmpTunnelDetector,
    BeaconDetector.name: BeaconDetector,
}


def default_detectors(rules=None) -> list[Detector]:
    """One instance of every detector, with default parameters; detectors that use names bound by DNS answers
    share one DnsBinding, fed first by the DnsObserver (a class with `uses_dns_binding = True` gets it), and a
    class with `uses_rules = True` gets `rules` (an ActiveRules or Allowlist; None: rules/default.toml)."""
    binding = DnsBinding()
    extra = lambda cls: {"rules": rules} if getattr(cls, "uses_rules", False) else {}  # noqa: E731
    return [DnsObserver(binding)] + [cls(binding, **extra(cls)) if getattr(cls, "uses_dns_binding", False)
                                     else cls(**extra(cls)) for cls in DETECTORS.values()]


def run_detectors(detectors: list[Detector], batch: FlowBatch, capture: str) -> BatchResult:
    """Run every detector over one batch and merge their results."""
    result = BatchResult()
    for detector in detectors:
        result.extend(detector.inspect(batch, capture))
    return result


def finish_detectors(detectors: list[Detector], capture: str) -> BatchResult:
    """Call the optional `finish(capture)` hook of every detector that has one (after a capture's last batch)."""
    result = BatchResult()
    for detector in detectors:
        finish = getattr(detector, "finish", None)
        if finish is not None:
            result.extend(finish(capture))
    return result


__all__ = ["BatchResult", "DETECTORS", "Detector", "default_detectors", "finish_detectors", "run_detectors"]
