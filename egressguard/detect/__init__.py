"""Detect stage: a FlowView of finished (or open) flows -> findings and per-flow labels (`app`, `ssh_use`).

Every detector follows the contract in base.py; DETECTORS lists them in the order they run. The DNS binding they
share is fed by the engine (dns_binding.observe_dns) before any of them sees a batch.
"""
from __future__ import annotations

from egressguard.detect.base import BatchResult, Detector, DetectorContext, LiveMode, noisy_or, window_rows
from egressguard.detect.beacon import BeaconDetector
from egressguard.detect.dns_binding import DnsBinding, observe_dns
from egressguard.detect.dns_tunnel import DnsTunnelDetector
from egressguard.detect.egress import UnexpectedDestinationDetector
from egressguard.detect.icmp_tunnel import IcmpTunnelDetector
from egressguard.detect.mining import MiningDetector
from egressguard.detect.resource_acquisition import ResourceAcquisitionDetector
from egressguard.detect.reverse_shell import ReverseShellDetector
from egressguard.detect.ssh_tunnel import SshTunnelDetector

DETECTORS: tuple[type[Detector], ...] = (SshTunnelDetector, MiningDetector, UnexpectedDestinationDetector,
                                         DnsTunnelDetector, IcmpTunnelDetector, BeaconDetector,
                                         ReverseShellDetector, ResourceAcquisitionDetector)
BY_NAME: dict[str, type[Detector]] = {cls.name: cls for cls in DETECTORS}

__all__ = ["BY_NAME", "BatchResult", "DETECTORS", "Detector", "DetectorContext", "DnsBinding", "LiveMode",
           "noisy_or", "observe_dns", "window_rows"]
