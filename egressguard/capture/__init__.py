"""Capture stage: capture files and live interfaces -> chunks of raw frames (scapy is imported only when a live
capture opens its sockets)."""
from egressguard.capture.files import CaptureFile, CaptureStats, Chunk, prefetched
from egressguard.capture.live import InterfaceCounters, LiveCapture, bridge_ports, drop_privileges

__all__ = ["CaptureFile", "CaptureStats", "Chunk", "InterfaceCounters", "LiveCapture", "bridge_ports",
           "drop_privileges", "prefetched"]
