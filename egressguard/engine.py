"""The engine: the one decode -> flows -> detect loop. `pipeline.py` drives it with capture files, `live/` with
sockets and timers; neither has a loop of its own.

    engine.start(capture)              a capture (or a live run) begins: fresh counters, detectors start
    engine.feed(chunk)    -> events    frames decoded and aggregated; flows that ended are judged
    engine.tick(now_ns)   -> events    flows idle past their timeout at `now_ns` end and are judged
    engine.flush()        -> events    every open flow ends; then what the detectors held back
    engine.summary(source)             the capture's summary

Each batch of finished flows becomes a FlowView; the names its DNS answers bind are fed to the DNS binding first,
then every detector judges it. An event's view is valid until the next event is asked for.
"""
from __future__ import annotations

import queue
import threading
import time
from dataclasses import dataclass, field, replace
from typing import Callable, Iterator, Sequence

import numpy as np

from egressguard.capture.files import BUFFER_RING, DEFAULT_CHUNK_BYTES, Chunk
from egressguard.decode import Decoder
from egressguard.detect import DETECTORS, BatchResult, Detector, DetectorContext, LiveMode, window_rows
from egressguard.detect.dns_binding import DnsBinding, observe_dns
from egressguard.flows import FlowBatch, FlowSettings, FlowTable
from egressguard.flows.view import FlowView
from egressguard.schema import FRAME_DTYPE, CaptureSummary, EndReason

DetectorFactory = Callable[[DetectorContext], Detector]  # a detector class, or anything that builds one from a context
LIVE_COLUMNS = ("orig_hi", "orig_lo", "orig_bytes", "orig_mac", "last_seen_ns", "ip_version", "proto", "resp_port")


@dataclass(frozen=True)
class Settings:
    """Everything that tunes the engine; immutable so it can be shared."""

    flows: FlowSettings = field(default_factory=FlowSettings)
    chunk_bytes: int = DEFAULT_CHUNK_BYTES
    chunk_frames: int = 1 << 18
    # JA4 of every whole kept ClientHello, for flow records (`ja4`); a run that writes no flow records skips it
    fingerprints: bool = True


@dataclass(frozen=True)
class FlowsReady:
    """A batch of flows of one capture and what the detectors made of them (`view` is valid until the next event;
    a batch of no flows carries findings a detector held back until a capture or a live interval ended)."""

    capture: str
    view: FlowView
    result: BatchResult = field(default_factory=BatchResult)


@dataclass(frozen=True)
class CaptureDone:
    """A capture was read to its end (or as far as it could be read)."""

    summary: CaptureSummary


Event = FlowsReady | CaptureDone


@dataclass(frozen=True)
class SourceFacts:
    """What the source (file reader or live sockets) knows about a capture, for its summary."""

    format: str
    compression: str = ""
    link_types: frozenset[int] = frozenset()
    complete: bool = True
    warnings: tuple[str, ...] = ()


class Engine:
    """Decode, flow table and detectors for one stream of captures (one after another) or one live run.

    Args:
        settings: flow table limits and chunk sizes.
        ctx: what the detectors use (rules, DNS binding, pool list); required when there are detectors.
        detectors: factories of the detectors to run (default: every registered detector class; [] for none).
    """

    def __init__(self, settings: Settings = Settings(), ctx: DetectorContext | None = None,
                 detectors: Sequence[DetectorFactory] | None = None, judge_in_thread: bool = False):
        factories = tuple(DETECTORS if detectors is None else detectors)
        if factories and ctx is None:
            raise ValueError("detectors need a DetectorContext")
        self.settings = settings
        self.ctx = ctx
        self.table = FlowTable(settings.flows)
        self.detectors: list[Detector] = [make(ctx) for make in factories]
        self.decoder = Decoder()
        self.capture = ""
        self.now_ns = 0  # time of the latest packet fed (capture time)
        self._base = (0, 0, 0)  # table counters (created, evictions, slot_denied) when the capture started
        # detectors judge batches in a thread of their own while the table aggregates (files; live judges in line)
        self._threaded = judge_in_thread and bool(self.detectors)
        self._judging: JudgingThread | None = None

    # ---- one capture
    def start(self, capture: str) -> None:
        """A capture begins: decode counters start from zero, and every detector is told."""
        self.capture = capture
        self.decoder = Decoder(ring=BUFFER_RING)
        self.now_ns = 0
        self._base = (self.table.created, self.table.evictions, self.table.slot_denied)
        for det in self.detectors:
            det.start(capture)

    def decode(self, chunk: Chunk) -> np.ndarray:
        """The PACKET rows of a chunk. A reading thread may call this ahead of `feed` (decode and aggregation then
        run on two cores): the rows stay valid for BUFFER_RING - 1 further calls, as the chunk's buffer does."""
        return self.decoder.decode_batch(chunk.buf, chunk.frames)

    def feed(self, chunk: Chunk, packets: np.ndarray | None = None) -> Iterator[FlowsReady]:
        """Aggregate a chunk of frames (decoded here unless `packets`, from `decode`, are given); yields the flows
        that ended, judged."""
        if not len(chunk.frames):
            return
        if packets is None:
            packets = self.decode(chunk)
        for batch in self.table.update(packets, chunk.buf, hold=self._threaded):
            yield from self._judged(batch)
        if len(packets):
            self.now_ns = max(self.now_ns, int(packets["ts_ns"].max()))

    def tick(self, now_ns: int) -> Iterator[FlowsReady]:
        """End the flows idle past their timeout at `now_ns` (capture time for files, the clock when live)."""
        for batch in self.table.expire(now_ns, hold=self._threaded):
            yield from self._judged(batch)

    def flush(self) -> Iterator[FlowsReady]:
        """End every open flow (end of input), then report what the detectors held back."""
        for batch in self.table.flush(EndReason.END_OF_INPUT, hold=self._threaded):
            yield from self._judged(batch)
        if self._judging is not None:
            yield from self._judging.drain()
            self._judging = None
        result = self.finish()
        if result.findings:
            yield FlowsReady(self.capture, FlowView.empty(self.capture), result)

    def discard(self) -> None:
        """Drop every open flow unjudged (a capture that could not be read at all leaves nothing behind)."""
        self.stop()
        for _ in self.table.flush(EndReason.END_OF_INPUT):
            pass

    def stop(self) -> None:
        """Stop judging in a thread without waiting for what is queued (the run is being abandoned)."""
        if self._judging is not None:
            self._judging.stop()
            self._judging = None

    def _judged(self, batch: FlowBatch) -> Iterator[FlowsReady]:
        """The events of a batch: judged here, or handed to the judging thread (then the events it has finished
        come back, in order)."""
        if not self._threaded:
            yield self._judge(batch)
            return
        if self._judging is None:
            self._judging = JudgingThread(self._judge, self.table.release)
        self._judging.submit(batch)
        yield from self._judging.ready()

    def finish(self) -> BatchResult:
        """What the detectors held back (end of a capture, or of a live reporting interval)."""
        result = BatchResult()
        for det in self.detectors:
            result.extend(det.finish())
        return result

    def summary(self, source: SourceFacts) -> CaptureSummary:
        """The capture's summary: the decoder's and the flow table's counters since `start`, and the source's."""
        d = self.decoder
        created, evictions, denied = self._base
        return CaptureSummary(
            capture=self.capture, format=source.format, compression=source.compression,
            packets=d.count("packets"), wire_bytes=d.count("wire_bytes"), captured_bytes=d.count("captured_bytes"),
            flows=self.table.created - created, snaplen_cut=d.count("snaplen_cut"),
            headers_cut=d.count("headers_cut"), undecodable=d.count("undecodable"), not_ip=d.count("not_ip"),
            fragments=d.count("fragments"), first_ns=d.count("first_ns"), last_ns=d.count("last_ns"),
            link_types=source.link_types, evictions=self.table.evictions - evictions,
            slot_denied=self.table.slot_denied - denied, complete=source.complete, warnings=source.warnings)

    def _judge(self, batch: FlowBatch) -> FlowsReady:
        view = FlowView.of_batch(in_canonical_order(batch), self.capture)
        result = BatchResult()
        if self.detectors:
            observe_dns(self.ctx.binding, view)  # first in line: every detector reads names bound in this batch
            for det in self.detectors:
                result.extend(det.inspect(view))
            annotate_carriers(view, result)
            if self.settings.fingerprints:
                for row, value in view.ja4.items():  # TLS client fingerprint of each whole kept ClientHello
                    result.annotate(row, ja4=value)
        return FlowsReady(self.capture, view, result)

    # ---- live rounds: open flows, judged by fresh detectors (a snapshot shows a flow again and again)
    def judge_open(self, since_ns: int) -> tuple[FlowView, BatchResult]:
        """The open flows that saw a packet at or after `since_ns`, judged by fresh instances of the OPEN_FLOWS
        detectors (their DNS answers feed the shared binding first)."""
        view = FlowView.of_batch(self.table.snapshot(since_ns=since_ns), self.capture)
        result = BatchResult()
        fresh = self._fresh(LiveMode.OPEN_FLOWS)
        if len(view) and fresh:
            observe_dns(self.ctx.binding, view)
            for det in fresh:
                result.extend(det.inspect(view))
                result.extend(det.finish())
        return view, result

    def judge_windows(self, limit: int) -> tuple[BatchResult, int]:
        """Every open flow in the window of each OPEN_WINDOW detector (at most the `limit` most recently active),
        judged by a fresh instance; returns the result and how many flows the limit left out."""
        result, skipped = BatchResult(), 0
        cols = None
        for det in self._fresh(LiveMode.OPEN_WINDOW):
            cols = cols if cols is not None else self.table.live_columns(*LIVE_COLUMNS)
            rows, left_out = window_rows(type(det).open_window(cols), cols["last_seen_ns"], limit)
            skipped += left_out
            if len(rows):
                where = np.zeros(len(cols["proto"]), bool)
                where[rows] = True
                result.extend(det.inspect(FlowView.of_batch(self.table.snapshot(where=where), self.capture)))
                result.extend(det.finish())
        return result, skipped

    def live_columns(self, *names: str) -> dict[str, np.ndarray]:
        """Some fields of every open flow (cheap whole-table views, e.g. per-sandbox counts)."""
        return self.table.live_columns(*(names or LIVE_COLUMNS))

    def _fresh(self, mode: LiveMode) -> list[Detector]:
        out = []
        for det in self.detectors:
            if type(det).live is mode:
                fresh = type(det)(self.ctx, det.params)
                fresh.start(self.capture)
                out.append(fresh)
        return out

    # ---- warm-up
    def warm_up(self) -> None:
        """Run every stage once on a few made-up frames with throwaway state: numba kernels are compiled or loaded
        from the cache and lazily imported modules are loaded now (before `watch --user` drops root, after which
        neither the cache nor root-only module paths may be readable)."""
        ctx = replace(self.ctx, binding=DnsBinding()) if self.ctx is not None else None
        small = replace(self.settings, flows=replace(self.settings.flows, capacity=64, payload_slots=8))
        engine = Engine(small, ctx, [type(d) for d in self.detectors])
        engine.start("warm-up")
        buf, frames = _warm_up_frames()
        for _ in engine.feed(Chunk(buf, frames)):
            pass
        engine.judge_open(0)
        engine.judge_windows(16)
        for _ in engine.tick(int(frames["ts_ns"].max()) + (1 << 62)):
            pass
        for _ in engine.flush():
            pass


class JudgingThread:
    """Judges batches in a thread of its own, in order, while the caller's thread goes on aggregating packets: the
    flow table's kernels release the GIL, so the detectors' Python and the table run on two cores at once.

    A batch keeps its payload slots until its event has been handed on; the slots are then given back in the
    caller's thread (the one that updates the table), never in the judging thread. At most `depth` batches wait."""

    def __init__(self, judge: Callable[[FlowBatch], FlowsReady], release: Callable[[FlowBatch], None],
                 depth: int = 2):
        self._judge, self._release = judge, release
        self._todo: queue.Queue = queue.Queue(maxsize=depth)
        self._done: queue.Queue = queue.Queue()
        self._held: list[FlowBatch] = []  # submitted, not yet handed on (their slots are still theirs)
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._work, name="judging", daemon=True)
        self._thread.start()

    def _work(self) -> None:
        while not self._stopped.is_set():
            try:
                batch = self._todo.get(timeout=0.1)
            except queue.Empty:
                continue
            if batch is None:
                return
            try:
                self._done.put(self._judge(batch))
            except BaseException as exc:  # handed to the caller's thread, which raises it
                self._done.put(exc)
                return

    def submit(self, batch: FlowBatch) -> None:
        """Queue a batch (waits while `depth` batches are queued, unless the thread has ended on an error)."""
        self._held.append(batch)
        while self._thread.is_alive():
            try:
                self._todo.put(batch, timeout=0.1)
                return
            except queue.Full:
                continue

    def ready(self, wait: bool = False) -> Iterator[FlowsReady]:
        """The events judged so far, in order (all of the submitted ones when `wait`); each batch's slots are
        released once the caller asks for the next event."""
        while self._held:
            try:
                event = self._done.get(block=wait, timeout=None if not wait else 0.1)
            except queue.Empty:
                if wait and self._thread.is_alive():
                    continue
                if wait and self._done.empty():
                    raise RuntimeError("the judging thread ended with batches left unjudged")
                return
            if isinstance(event, BaseException):
                self.stop()
                raise event
            batch = self._held.pop(0)
            try:
                yield event
            finally:
                self._release(batch)

    def drain(self) -> Iterator[FlowsReady]:
        """Every remaining event, then the thread ends."""
        yield from self.ready(wait=True)
        self._todo.put(None)
        self._thread.join()

    def stop(self) -> None:
        """Abandon the queued work: the thread ends, and every batch still held gives its slots back."""
        self._stopped.set()
        self._thread.join(timeout=5)
        for batch in self._held:
            self._release(batch)
        self._held = []


def _warm_up_frames() -> tuple[np.ndarray, np.ndarray]:
    """Ethernet frames for warm_up: a TCP handshake and an SSH banner each way, a DNS query and its answer."""
    import struct

    def ipv4(proto: int, src: bytes, dst: bytes, l4: bytes) -> bytes:
        head = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(l4), 0, 0x4000, 64, proto, 0, src, dst)
        return b"\x02\x00\x00\x00\x00\x02\x02\x00\x00\x00\x00\x01\x08\x00" + head + l4

    def tcp(sport: int, dport: int, flags: int, seq: int, data: bytes = b"") -> bytes:
        return struct.pack("!HHIIBBHHH", sport, dport, seq, 0, 0x50, flags, 65535, 0, 0) + data

    def udp(sport: int, dport: int, data: bytes) -> bytes:
        return struct.pack("!HHHH", sport, dport, 8 + len(data), 0) + data

    a, b = bytes([10, 0, 0, 2]), bytes([192, 0, 2, 1])
    question = b"\x12\x34\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00\x07example\x03com\x00\x00\x01\x00\x01"
    answer = (b"\x12\x34\x81\x80\x00\x01\x00\x01\x00\x00\x00\x00\x07example\x03com\x00\x00\x01\x00\x01"
              b"\xc0\x0c\x00\x01\x00\x01\x00\x00\x01\x2c\x00\x04" + b)
    raw = [ipv4(6, a, b, tcp(40000, 22, 0x02, 1)), ipv4(6, b, a, tcp(22, 40000, 0x12, 9)),
           ipv4(6, a, b, tcp(40000, 22, 0x18, 2, b"SSH-2.0-OpenSSH_9.2\r\n")),
           ipv4(6, b, a, tcp(22, 40000, 0x18, 10, b"SSH-2.0-OpenSSH_9.2\r\n")),
           ipv4(17, a, b, udp(40001, 53, question)), ipv4(17, b, a, udp(53, 40001, answer))]
    buf = np.frombuffer(b"".join(raw), np.uint8).copy()
    frames = np.zeros(len(raw), FRAME_DTYPE)
    frames["offset"] = np.cumsum([0] + [len(r) for r in raw[:-1]])
    frames["caplen"] = frames["wirelen"] = [len(r) for r in raw]
    frames["ts_ns"] = time.time_ns() + np.arange(len(raw)) * 1000
    frames["linktype"] = 1
    return buf, frames


def in_canonical_order(batch: FlowBatch) -> FlowBatch:
    """The batch's records by first packet, then 5-tuple hash, rather than in the table's slot order: what the
    detectors see (e.g. which of two flows that tie in time an aggregate finding names) then does not depend on what
    the table held before, such as an earlier capture's flows or, with --workers, other shards' sandboxes. Payload
    is reached through each record's slot, so the rows may move; the table releases the original batch."""
    recs = batch.records
    order = np.lexsort((recs["key_hash"], recs["first_seen_ns"]))
    return replace(batch, records=recs[order])


def annotate_carriers(view: FlowView, result: BatchResult) -> None:
    """Flow records name the carrier chain (`carrier`) and the target the carrier asked for (`carrier_target`,
    "host:port") of rows that open with one (payload/carriers.py)."""
    for row, flow in view.carriers.flows.items():
        values: dict = {"carrier": list(flow.chain)}
        if flow.carrier.target_text is not None:
            values["carrier_target"] = flow.carrier.target_text
        result.annotate(row, **values)


__all__ = ["CaptureDone", "DetectorFactory", "Engine", "Event", "FlowsReady", "Settings", "SourceFacts"]
