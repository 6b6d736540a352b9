"""Capture stage: capture files (and, later, live interfaces) -> chunks of raw frames."""
from egressguard.capture.files import CaptureFile, CaptureStats, Chunk, prefetched

__all__ = ["CaptureFile", "CaptureStats", "Chunk", "prefetched"]
