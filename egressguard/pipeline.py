"""The forensic pipeline, as a library API: capture files -> the engine -> events.

`Analyzer.analyze(spec)` yields, in order: FlowsReady for every batch of finished flows (a batch of no flows
carries findings the detectors held back until the capture ended, e.g. unexpected destinations), then CaptureDone
with the capture's summary. The CLI only renders these events.
"""
from __future__ import annotations

import contextlib
import os
from typing import Callable, Iterable, Iterator, Sequence

import numpy as np

from egressguard.capture import CaptureFile, prefetched
from egressguard.detect import DetectorContext
from egressguard.engine import CaptureDone, DetectorFactory, Engine, Event, FlowsReady, Settings, SourceFacts
from egressguard.errors import CaptureError
from egressguard.policy.allowlist import Allowlist
from egressguard.policy.acquisition import DEFAULT_ACQUISITION, AcquisitionList, load_acquisition
from egressguard.policy.pools import DEFAULT_POOLS, PoolList, load_pools
from egressguard.policy.rules import ActiveRules, load_rules

ProgressCallback = Callable[[str, int, int | None], None]  # (capture, bytes done, total bytes or None)
PacketFilter = Callable[[np.ndarray], np.ndarray]  # PACKET rows -> bool mask of the rows to keep


def default_context(rules: ActiveRules | Allowlist | None = None, pools: PoolList | None = None) -> DetectorContext:
    """The detector context of a run: the given rules (default: rules/default.toml) and pool list (default:
    rules/pools.toml as packaged; an installation without it runs with no pool names or ports)."""
    if pools is None:
        pools = load_pools(DEFAULT_POOLS) if DEFAULT_POOLS.exists() else PoolList()
    acquisition = load_acquisition(DEFAULT_ACQUISITION) if DEFAULT_ACQUISITION.exists() else AcquisitionList()
    return DetectorContext.build(rules if rules is not None else load_rules(), pools, acquisition)


class Analyzer:
    """Analyses capture files one after another; each capture gets fresh flow state, the memory is reused.

    Args:
        settings: tuning of the run.
        detectors: factories of the detectors to run (default: every registered detector class; [] for none).
        rules: the rules for the default context (an Allowlist, or an ActiveRules to swap rules while running);
            None reads rules/default.toml. Ignored when `ctx` is given.
        ctx: the detector context (rules, DNS binding, pool list), built once for the run.
    """

    def __init__(self, settings: Settings = Settings(), detectors: Sequence[DetectorFactory] | None = None,
                 rules: ActiveRules | Allowlist | None = None, ctx: DetectorContext | None = None):
        self.settings = settings
        if ctx is None and (detectors is None or len(detectors)):
            ctx = default_context(rules)
        self.engine = Engine(settings, ctx, detectors, judge_in_thread=True)

    @property
    def detectors(self) -> list:
        return self.engine.detectors

    def analyze(self, spec: str, progress: ProgressCallback | None = None,
                keep: PacketFilter | None = None) -> Iterator[Event]:
        """Events for one capture (a path, or '-' for standard input).

        Args:
            spec: the capture.
            progress: called after each chunk with the bytes read so far and the file size when known.
            keep: a bool mask over each chunk's decoded PACKET rows: only those go into the flow table (a worker's
                shard, shards.py). The decode counters still count every packet, and the capture clock (idle
                sweeps) follows every packet, so a shard's flows end exactly when they would in a whole run.

        Raises:
            CaptureError: the source is missing, unreadable or not a capture.
        """
        engine = self.engine
        total = _file_size(spec)
        capture = CaptureFile(spec, self.settings.chunk_bytes, self.settings.chunk_frames)
        engine.start(capture.name)
        # idle sweeps scan the whole table: run them every half of the shortest timeout of capture time, not per chunk
        fs = self.settings.flows
        sweep_every = int(min(fs.tcp_idle_s, fs.other_idle_s, fs.closed_idle_s) * 1e9 / 2)
        last_sweep = -(1 << 62)
        def decoded() -> Iterator[tuple]:  # runs in the reading thread: decoding overlaps the aggregation
            for chunk in capture.chunks():
                packets = engine.decode(chunk)
                if keep is None:
                    yield chunk, packets, 0
                else:
                    latest = int(packets["ts_ns"].max()) if len(packets) else 0
                    yield chunk, packets[keep(packets)], latest

        with capture, _stopping(engine):
            try:
                for chunk, packets, latest in prefetched(decoded()):
                    yield from engine.feed(chunk, packets)
                    engine.now_ns = max(engine.now_ns, latest)  # a shard's clock is the whole capture's
                    now = engine.now_ns
                    if now and (now - last_sweep >= sweep_every or now < last_sweep):
                        last_sweep = now
                        yield from engine.tick(now)
                    if progress is not None:
                        progress(capture.name, capture.stats.bytes_read,
                                 None if capture.stats.compression else total)
            except CaptureError as exc:
                if capture.stats.frames == 0:
                    engine.discard()  # nothing was read; leave the table empty for the next capture
                    raise
                # part of the capture was read: report it, and say where and why reading stopped
                capture.stats.complete = False
                capture.stats.warnings.append(f"{exc}; stopped reading there")
        yield from engine.flush()
        stats = capture.stats
        yield CaptureDone(engine.summary(SourceFacts(stats.format, stats.compression, frozenset(stats.linktypes),
                                                     stats.complete, tuple(stats.warnings))))


def analyze_captures(specs: Iterable[str], settings: Settings = Settings(),
                     progress: ProgressCallback | None = None, rules=None) -> Iterator[Event]:
    """Events for several captures in order; a CaptureError stops at the failing capture."""
    analyzer = Analyzer(settings, rules=rules)
    for spec in specs:
        yield from analyzer.analyze(spec, progress)


@contextlib.contextmanager
def _stopping(engine: Engine) -> Iterator[None]:
    """Stop the engine's judging thread if the run is abandoned (an error, or a consumer that stops reading)."""
    try:
        yield
    except BaseException:
        engine.stop()
        raise


def _file_size(spec: str) -> int | None:
    """Size of a plain file for progress (None for stdin and when unknown)."""
    if spec == "-":
        return None
    try:
        return os.path.getsize(spec)
    except OSError:
        return None


__all__ = ["Analyzer", "CaptureDone", "Event", "FlowsReady", "PacketFilter", "ProgressCallback",
           "Settings", "analyze_captures", "default_context"]
