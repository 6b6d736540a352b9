"""A capture file played back as a live source: the live engine (monitor.LiveMonitor) reads it like an interface,
with the capture's own timestamps as the clock, so its timers, snapshots and finding gate run as they would live
(for tests, benchmarks and trying a rules file or a hook on a recording)."""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable, Iterator

from egressguard.capture.files import CaptureFile, Chunk


@dataclass
class ReplayCounters:
    """InterfaceCounters' shape (capture.live), for a file."""

    name: str
    up: bool = True
    packets: int = 0
    bytes: int = 0
    kernel_drops: int = 0


class ReplaySource:
    """Chunks of `path` in capture order under one interface name; `now_ns` is the newest packet time read so far
    (pass `clock=source.clock` to LiveMonitor). `pace_pps` plays back at most that many packets per second of wall
    time; `on_chunk(source)` runs after each chunk (a test may stop the monitor from there)."""

    def __init__(self, path: str, interface: str = "replay", chunk_frames: int = 1 << 14,
                 pace_pps: float | None = None, on_chunk: Callable[["ReplaySource"], None] | None = None):
        self.path = str(path)
        self.interfaces = [interface]
        self.chunk_frames = chunk_frames
        self.pace_pps = pace_pps
        self.on_chunk = on_chunk
        self.counters = ReplayCounters(interface)
        self.now_ns = 0
        self.closed = False

    def clock(self) -> int:
        return self.now_ns

    def chunks(self, timeout_s: float = 0.1) -> Iterator[Chunk]:
        started = time.perf_counter()
        with CaptureFile(self.path, chunk_frames=self.chunk_frames) as capture:
            for chunk in capture.chunks():
                if self.closed:
                    return
                if len(chunk.frames):
                    self.now_ns = max(self.now_ns, int(chunk.frames["ts_ns"].max()))
                    self.counters.packets += len(chunk.frames)
                    self.counters.bytes += int(chunk.frames["wirelen"].sum())
                if self.pace_pps:
                    ahead = self.counters.packets / self.pace_pps - (time.perf_counter() - started)
                    if ahead > 0:
                        time.sleep(ahead)
                yield chunk
                if self.on_chunk is not None:
                    self.on_chunk(self)

    def interface_stats(self) -> list[ReplayCounters]:
        return [self.counters]

    def close(self) -> None:
        self.closed = True
