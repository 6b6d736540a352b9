"""Detect stage: finished flows -> findings (and per-flow labels such as `app` and `ssh_use`)."""
from __future__ import annotations

from egressguard.detect.base import BatchResult, Detector
from egressguard.detect.dns_binding import DnsBinding, DnsObserver
from egressguard.detect.ssh_tunnel import SshTunnelDetector
from egressguard.flows import FlowBatch

DETECTORS: dict[str, type] = {
    SshTunnelDetector.name: SshTunnelDetector,
}


def default_detectors() -> list[Detector]:
    """One instance of every detector, with default parameters; detectors that use names bound by DNS answers
    share one DnsBinding, fed first by the DnsObserver."""
    binding = DnsBinding()
    return [DnsObserver(binding)] + [cls() for cls in DETECTORS.values()]


def run_detectors(detectors: list[Detector], batch: FlowBatch, capture: str) -> BatchResult:
    """Run every detector over one batch and merge their results."""
    result = BatchResult()
    for detector in detectors:
        result.extend(detector.inspect(batch, capture))
    return result


__all__ = ["BatchResult", "DETECTORS", "Detector", "default_detectors", "run_detectors"]
