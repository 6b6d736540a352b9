"""The forensic pipeline: capture -> decode -> flows (-> detect, in later stages), as a library API.

`analyze_captures` yields events in order: FlowsReady for every batch of finished flows, then (when a detector's
`finish` hook reports findings held back to the end, e.g. unexpected destinations) one FlowsReady with an empty batch,
then CaptureDone with the capture's summary. The CLI and the dashboard only render these events.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Callable, Iterable, Iterator

import numpy as np

from egressguard.capture import CaptureFile, prefetched
from egressguard.capture.files import DEFAULT_CHUNK_BYTES
from egressguard.decode import Decoder
from egressguard.detect import BatchResult, Detector, default_detectors, finish_detectors, run_detectors
from egressguard.errors import CaptureError
from egressguard.flows import FlowBatch, FlowSettings, FlowTable
from egressguard.schema import FLOW_DTYPE, CaptureSummary, EndReason

ProgressCallback = Callable[[str, int, int | None], None]  # (capture, bytes done, total bytes or None)


@dataclass(frozen=True)
class Settings:
    """Everything that tunes a run; immutable so it can be shared between stages."""

    flows: FlowSettings = field(default_factory=FlowSettings)
    chunk_bytes: int = DEFAULT_CHUNK_BYTES
    chunk_frames: int = 1 << 18


@dataclass(frozen=True)
class FlowsReady:
    """A batch of finished flows of one capture and what the detectors made of them.

    `batch` is valid only until the next event is requested; `result` holds findings and per-row annotations.
    """

    capture: str
    batch: FlowBatch
    result: BatchResult = field(default_factory=BatchResult)


@dataclass(frozen=True)
class CaptureDone:
    """A capture was read to its end (or as far as it could be read)."""

    summary: CaptureSummary


Event = FlowsReady | CaptureDone


class Analyzer:
    """Analyses capture files one after another; each capture gets fresh flow state, the memory is reused.

    Args:
        settings: tuning of the run.
        detectors: the detectors to run (default: every registered one).
        rules: the allowlist rules for the default detectors: an Allowlist, or an ActiveRules to swap rules while
            running (`ActiveRules.reload`); None reads rules/default.toml.
    """

    def __init__(self, settings: Settings = Settings(), detectors: list[Detector] | None = None, rules=None):
        self.settings = settings
        self.table = FlowTable(settings.flows)
        self.detectors = default_detectors(rules) if detectors is None else detectors

    def analyze(self, spec: str, progress: ProgressCallback | None = None) -> Iterator[Event]:
        """Events for one capture (a path, or '-' for standard input).

        Args:
            spec: the capture.
            progress: called after each chunk with the bytes read so far and the file size when known.

        Raises:
            CaptureError: the source is missing, unreadable or not a capture.
        """
        for event in _analyze_one(spec, self.settings, self.table, progress):
            if isinstance(event, FlowsReady) and self.detectors:
                event = FlowsReady(event.capture, event.batch, run_detectors(self.detectors, event.batch,
                                                                             event.capture))
            elif isinstance(event, CaptureDone) and self.detectors:
                # detectors that hold flows back or aggregate them report now, before the capture's summary
                result = finish_detectors(self.detectors, event.summary.capture)
                if result.findings:
                    yield FlowsReady(event.summary.capture, FlowBatch(np.zeros(0, FLOW_DTYPE), self.table,
                                                                      releasable=False), result)
            yield event


def analyze_captures(specs: Iterable[str], settings: Settings = Settings(),
                     progress: ProgressCallback | None = None, rules=None) -> Iterator[Event]:
    """Events for several captures in order; a CaptureError stops at the failing capture."""
    analyzer = Analyzer(settings, rules=rules)
    for spec in specs:
        yield from analyzer.analyze(spec, progress)


def _analyze_one(spec: str, settings: Settings, table: FlowTable,
                 progress: ProgressCallback | None) -> Iterator[Event]:
    decoder = Decoder()
    evictions0, denied0, created0 = table.evictions, table.slot_denied, table.created
    total = _file_size(spec)
    capture = CaptureFile(spec, settings.chunk_bytes, settings.chunk_frames)
    name = capture.name
    # idle sweeps scan the whole table: run them every half of the shortest timeout of capture time, not per chunk
    fs = settings.flows
    sweep_every = int(min(fs.tcp_idle_s, fs.other_idle_s, fs.closed_idle_s) * 1e9 / 2)
    last_sweep = -(1 << 62)
    with capture:
        try:
            for chunk in prefetched(capture.chunks()):
                name = capture.name
                packets = decoder.decode_batch(chunk.buf, chunk.frames)
                for batch in table.update(packets, chunk.buf):
                    yield FlowsReady(name, batch)
                if len(packets):
                    now = int(packets["ts_ns"].max())
                    if now - last_sweep >= sweep_every or now < last_sweep:
                        last_sweep = now
                        for batch in table.expire(now):
                            yield FlowsReady(name, batch)
                if progress is not None:
                    progress(name, capture.stats.bytes_read, None if capture.stats.compression else total)
        except CaptureError as exc:
            if capture.stats.frames == 0:
                for batch in table.flush(EndReason.END_OF_INPUT):
                    pass  # nothing was read; leave the table empty for the next capture
                raise
            # part of the capture was read: report it, and say where and why reading stopped
            capture.stats.complete = False
            capture.stats.warnings.append(f"{exc}; stopped reading there")
    for batch in table.flush(EndReason.END_OF_INPUT):
        yield FlowsReady(name, batch)
    stats = capture.stats
    yield CaptureDone(CaptureSummary(
        capture=name,
        format=stats.format,
        compression=stats.compression,
        packets=decoder.count("packets"),
        wire_bytes=decoder.count("wire_bytes"),
        captured_bytes=decoder.count("captured_bytes"),
        flows=table.created - created0,
        snaplen_cut=decoder.count("snaplen_cut"),
        headers_cut=decoder.count("headers_cut"),
        undecodable=decoder.count("undecodable"),
        not_ip=decoder.count("not_ip"),
        fragments=decoder.count("fragments"),
        first_ns=decoder.count("first_ns"),
        last_ns=decoder.count("last_ns"),
        link_types=frozenset(stats.linktypes),
        evictions=table.evictions - evictions0,
        slot_denied=table.slot_denied - denied0,
        complete=stats.complete,
        warnings=tuple(stats.warnings),
    ))


def _file_size(spec: str) -> int | None:
    """Size of a plain file for progress (None for stdin and when unknown)."""
    if spec == "-":
        return None
    try:
        return os.path.getsize(spec)
    except OSError:
        return None
