"""Evidence captures while watching (`watch --evidence DIR`): a pcap of each reported finding's packets, in bounded
memory.

The raw frames of the most recent traffic are kept in a ring of segments, at most `buffer_bytes` in all (frame
bytes, their FRAME rows and three 64-bit keys per frame, counted as allocated). When the finding gate lets a finding
out, the packets of its flow (or, for an aggregating finding, every packet between the sandbox and the destination
address and port, flows/keys.py) still in the ring are written to a new file, and every later packet under the same
key is appended as it arrives and flushed, until the key is idle for the flow table's idle timeout, the file reaches
`file_bytes`, or the run ends. At most `max_followed` keys are followed at once. Whatever a bound left out is said:
in the finding's record (`evidence_complete`, `evidence_incomplete`), in `evidence-index.jsonl` in DIR when a file
is closed, and in the run's warnings.
"""
from __future__ import annotations

import json
import os
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from egressguard.capture import Chunk
from egressguard.capture.pcap_writer import PcapWriter, record_sizes, warm_up as warm_up_writer, writable_directory
from egressguard.flows.keys import evidence_key, is_aggregated, match, packet_keys
from egressguard.schema import FRAME_DTYPE, EndReason, Finding

KEYS = 3  # keys per frame: its 5-tuple's, outbound and answering aggregate (flows.keys.packet_keys)
FRAME_META = FRAME_DTYPE.itemsize + 8 * KEYS  # bytes kept per frame beside its own bytes
SEGMENT_MAX = 1 << 20  # ring granularity: eviction frees one segment of up to this many frame bytes
FRAMES_PER_SEGMENT_BYTE = 1 / 256  # frame slots per segment byte (a segment seals when either fills)
INDEX_NAME = "evidence-index.jsonl"
MAX_PROBLEMS = 20  # distinct write problems kept for the warnings at the end


@dataclass(frozen=True)
class EvidenceLimits:
    """The bounds of live evidence keeping (all stated in the README)."""

    buffer_bytes: int = 64 << 20  # recent traffic kept to write a finding's earlier packets (--evidence-buffer)
    file_bytes: int = 256 << 20  # one evidence file stops growing here (--evidence-file-limit)
    max_followed: int = 256  # keys appended to at once (one open file each; well under the usual 1024 fd limit)
    tcp_idle_s: float = 300.0  # a followed TCP key ends after this long without a packet (the flow table's)
    other_idle_s: float = 60.0  # the same for UDP, ICMP and others


class _Segment:
    """Frames of consecutive chunks, copied: their bytes, FRAME rows (offsets into `buf`) and keys."""

    def __init__(self, nbytes: int, nframes: int):
        self.buf = np.empty(nbytes, np.uint8)
        self.frames = np.empty(nframes, FRAME_DTYPE)
        self.keys = np.empty((KEYS, nframes), np.uint64)
        self.used = self.n = 0
        self.cost = nbytes + nframes * FRAME_META

    def fits(self, nbytes: int, nframes: int) -> bool:
        return self.used + nbytes <= len(self.buf) and self.n + nframes <= len(self.frames)

    def add(self, buf: np.ndarray, frames: np.ndarray, keys: tuple[np.ndarray, ...]) -> None:
        lo = int(frames["offset"].min())
        hi = int((frames["offset"] + frames["caplen"]).max())
        self.buf[self.used:self.used + hi - lo] = buf[lo:hi]
        rows = self.frames[self.n:self.n + len(frames)]
        rows[:] = frames
        rows["offset"] += self.used - lo
        for k in range(KEYS):
            self.keys[k, self.n:self.n + len(frames)] = keys[k]
        self.used += hi - lo
        self.n += len(frames)


@dataclass
class _Follow:
    """One evidence file and the key whose packets go into it."""

    key: int
    path: Path
    kind: str
    severity: int
    idle_ns: int
    last_ns: int
    writer: PcapWriter | None = None
    following: bool = True
    incomplete: list[str] = field(default_factory=list)
    left_out: int = 0  # packets not written (file limit, other link type, write error)
    error: str | None = None

    def gap(self, reason: str) -> None:
        if reason not in self.incomplete:
            self.incomplete.append(reason)


class EvidenceKeeper:
    """Keeps recent frames (`feed`) and writes a pcap for each finding the monitor reports (`start`).

    Args:
        directory: where the files go (created; an unwritable one is one EgressGuardError, exit status 2).
        limits: the memory, file and follow bounds.
    """

    def __init__(self, directory: str | Path, limits: EvidenceLimits = EvidenceLimits()):
        self.directory = writable_directory(directory, "--evidence")
        self.limits = limits
        self.segment_bytes = int(min(SEGMENT_MAX, max(4096, limits.buffer_bytes // 8)))
        self._ring: deque[_Segment] = deque()
        self._open: _Segment | None = None
        self.buffer_used = 0  # bytes the ring holds now (allocated)
        self.lost_ns = -1  # newest capture time of a frame the ring let go (or never held)
        self.lost_frames = 0
        self.now_ns = 0
        self._follows: dict[int, _Follow] = {}
        self._count = 0
        self._stem = f"watch-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}-{os.getpid()}"
        self.problems: list[str] = []
        self.files_cut = self.files_unfollowed = self.files_short = 0

    # ---- the ring
    def feed(self, chunk: Chunk, packets: np.ndarray, now_ns: int | None = None) -> None:
        """Keep a chunk's frames (their PACKET rows are `packets`, one per frame) and append those of followed keys
        to their files; `now_ns` (the wall clock, live) ends follows idle past their timeout."""
        n = len(chunk.frames)
        if n:
            keys = packet_keys(packets[:n])
            self._expire(max(self.now_ns, int(chunk.frames["ts_ns"].min())))  # a key idle until now ended first
            if self._follows:
                wanted = np.fromiter(self._follows, np.uint64, len(self._follows))
                for key, rows in match(keys, wanted).items():
                    self._append(self._follows[key], chunk.buf, chunk.frames[rows])
            self._keep(chunk.buf, chunk.frames, keys)
            self.now_ns = max(self.now_ns, int(chunk.frames["ts_ns"].max()))
        if now_ns is not None:
            self.now_ns = max(self.now_ns, int(now_ns))
        self._expire(self.now_ns)

    def _expire(self, now_ns: int) -> None:
        """Follows idle past their timeout end, as the flow table ends such a flow."""
        for f in [f for f in self._follows.values() if now_ns - f.last_ns > f.idle_ns]:
            self._stop(f, "idle")

    def _keep(self, buf: np.ndarray, frames: np.ndarray, keys: tuple[np.ndarray, ...]) -> None:
        span = int((frames["offset"] + frames["caplen"]).max() - frames["offset"].min())
        if span > self.segment_bytes or len(frames) > self.segment_bytes * FRAMES_PER_SEGMENT_BYTE:
            ends = frames["offset"] + frames["caplen"]  # a big chunk: its own segment, cut to fit the buffer
            cost = int(ends.max()) - frames["offset"] + FRAME_META * (len(frames) - np.arange(len(frames)))
            first = np.flatnonzero(cost <= self.limits.buffer_bytes)
            k = int(first[0]) if len(first) else len(frames)
            if k:
                self._lose(frames[:k])
            if k == len(frames):
                return
            frames, keys = frames[k:], tuple(c[k:] for c in keys)
            self._open = None
            seg = _Segment(int(ends.max() - frames["offset"].min()), len(frames))
            self._push(seg)
        else:
            if self._open is None or not self._open.fits(span, len(frames)):
                self._open = _Segment(self.segment_bytes, int(self.segment_bytes * FRAMES_PER_SEGMENT_BYTE))
                self._push(self._open)
            seg = self._open
        seg.add(buf, frames, keys)

    def _push(self, seg: _Segment) -> None:
        self._ring.append(seg)
        self.buffer_used += seg.cost
        while self.buffer_used > self.limits.buffer_bytes and len(self._ring) > 1:
            old = self._ring.popleft()
            self.buffer_used -= old.cost
            self._lose(old.frames[:old.n])

    def _lose(self, frames: np.ndarray) -> None:
        if len(frames):
            self.lost_ns = max(self.lost_ns, int(frames["ts_ns"].max()))
            self.lost_frames += len(frames)

    @property
    def oldest_ns(self) -> int | None:
        """Capture time of the oldest frame the ring holds."""
        for seg in self._ring:
            if seg.n:
                return int(seg.frames["ts_ns"][:seg.n].min())
        return None

    # ---- files
    def start(self, finding: Finding, record: dict) -> None:
        """Write what the ring holds of `finding`'s packets to a file (or go on with the file its key already has),
        follow the key from here on, and put the file and its state in `record`."""
        key = evidence_key(finding)
        f = self._follows.get(key)  # a finding reported again while its file grows names the same file
        if f is None:
            f = self._new_file(finding, key)
        record["evidence_pcap"] = str(f.path) if f.writer is not None else None
        record["evidence_packets"] = f.writer.packets if f.writer is not None else 0
        record["evidence_complete"] = not f.incomplete
        record["evidence_incomplete"] = list(f.incomplete)
        record["evidence_following"] = f.key in self._follows
        if "buffer" in f.incomplete and self.oldest_ns is not None:
            record["evidence_buffer_start"] = round(self.oldest_ns / 1e9, 6)
        if f.error:
            record["evidence_error"] = f.error

    def _new_file(self, finding: Finding, key: int) -> _Follow:
        rec = finding.flow
        self._count += 1
        idle_s = self.limits.tcp_idle_s if int(rec["proto"]) == 6 else self.limits.other_idle_s
        path = self.directory / f"{self._stem}-{self._count:05d}-{finding.kind}.pcap"
        f = _Follow(key, path, str(finding.kind), int(finding.severity), int(idle_s * 1e9),
                    max(self.now_ns, int(rec["last_seen_ns"])))
        since = int(rec["first_seen_ns"])
        if is_aggregated(finding):
            first_s = (finding.details.get("egress") or {}).get("first_seen")
            since = min(since, int(first_s * 1e9)) if isinstance(first_s, (int, float)) else since
            lower = np.iinfo(np.int64).min
        else:
            lower = since
        if self.lost_ns >= since:
            f.gap("buffer")
            self.files_short += 1
        for seg in self._ring:
            rows = match(tuple(seg.keys[:, :seg.n]), np.array([key], np.uint64)).get(key)
            if rows is not None:
                rows = rows[seg.frames["ts_ns"][rows] >= lower]
                self._append(f, seg.buf, seg.frames[rows])
        if f.writer is None:  # nothing kept yet: an empty, valid file that later packets go into
            newest = self._ring[-1] if self._ring and self._ring[-1].n else None
            self._open_writer(f, int(newest.frames["linktype"][newest.n - 1]) if newest is not None else 1)
        ended = int(rec["end_reason"]) != int(EndReason.ACTIVE) and not is_aggregated(finding)
        if f.writer is not None and f.following and not ended:
            self._follow(f)
        elif f.following:
            f.following = False
            self._close(f, "flow ended" if ended else "not followed")
        return f

    def _follow(self, f: _Follow) -> None:
        if len(self._follows) >= self.limits.max_followed:
            victim = min(self._follows.values(), key=lambda v: (v.severity, v.last_ns))
            if victim.severity > f.severity:
                f.gap("follow_limit")  # later packets of this key are not appended
                self.files_unfollowed += 1
                self._close(f, "follow_limit")
                return
            victim.gap("follow_limit")
            self.files_unfollowed += 1
            self._stop(victim, "follow_limit")
        self._follows[f.key] = f

    def _append(self, f: _Follow, buf: np.ndarray, frames: np.ndarray) -> None:
        if not len(frames) or not f.following:
            return
        if f.writer is None and not self._open_writer(f, int(frames["linktype"][0])):
            return
        same = frames["linktype"] == f.writer.linktype
        if not same.all():
            f.gap("link_type")
            f.left_out += int(len(frames) - same.sum())
            frames = frames[same]
        fits = np.cumsum(record_sizes(frames)) <= self.limits.file_bytes - f.writer.bytes
        if not fits.all():
            f.gap("file_limit")
            f.left_out += int(len(frames) - fits.sum())
            frames = frames[fits]
        try:
            f.writer.write(buf, frames)
        except OSError as exc:
            f.error = f"cannot write {f.path} ({exc.strerror or exc})"
            f.gap("write_error")
            self._problem(f"--evidence: {f.error}")
        if "file_limit" in f.incomplete or f.error:
            self.files_cut += "file_limit" in f.incomplete
            self._stop(f, "file_limit" if not f.error else "write_error")
        else:
            f.last_ns = max(f.last_ns, int(frames["ts_ns"].max()) if len(frames) else f.last_ns)

    def _open_writer(self, f: _Follow, linktype: int) -> bool:
        try:
            while True:
                try:  # never over an existing file (another watch, or another monitor of this one, named it)
                    f.writer = PcapWriter(f.path, linktype, exclusive=True)
                    return True
                except FileExistsError:
                    self._count += 1
                    f.path = self.directory / f"{self._stem}-{self._count:05d}-{f.kind}.pcap"
        except OSError as exc:
            f.error = f"cannot write {f.path} ({exc.strerror or exc})"
            f.gap("write_error")
            f.following = False
            self._problem(f"--evidence: {f.error}")
            return False

    def _stop(self, f: _Follow, why: str) -> None:
        f.following = False
        self._follows.pop(f.key, None)
        self._close(f, why)

    def _close(self, f: _Follow, why: str) -> None:
        """Close the file and say in the index what it holds and what it misses."""
        if f.writer is None:
            return
        f.writer.close()
        line = {"evidence_pcap": str(f.path), "kind": f.kind, "packets": f.writer.packets, "bytes": f.writer.bytes,
                "evidence_complete": not f.incomplete, "evidence_incomplete": list(f.incomplete),
                "packets_left_out": f.left_out, "closed": why}
        try:
            fd = os.open(self.directory / INDEX_NAME, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o644)
            try:
                os.write(fd, (json.dumps(line) + "\n").encode())  # one write(2): whole lines, also from workers
            finally:
                os.close(fd)
        except OSError as exc:
            self._problem(f"--evidence: cannot write {self.directory / INDEX_NAME} ({exc.strerror or exc})")

    def _problem(self, text: str) -> None:
        if text not in self.problems:
            self.problems.append(text)
            del self.problems[:-MAX_PROBLEMS]

    def close(self) -> None:
        """The run ended: every followed file is closed."""
        for f in list(self._follows.values()):
            self._stop(f, "end")

    def warm_up(self) -> None:
        """Compile or load the pcap packing kernel now (before `watch --user` drops root)."""
        warm_up_writer()

    def bounds_hit(self) -> tuple[str, ...]:
        """What the evidence bounds left out, said rather than dropped silently."""
        out = list(self.problems)
        if self.files_short:
            out.append(f"{self.files_short} evidence file(s) miss packets older than the "
                       f"{_mib(self.limits.buffer_bytes)} evidence buffer (evidence_incomplete: buffer)")
        if self.files_cut:
            out.append(f"{self.files_cut} evidence file(s) reached the {_mib(self.limits.file_bytes)} file limit "
                       f"and stopped growing (see {INDEX_NAME})")
        if self.files_unfollowed:
            out.append(f"{self.files_unfollowed} evidence file(s) stopped following their packets: more than "
                       f"{self.limits.max_followed} followed at once (see {INDEX_NAME})")
        return tuple(out)


def _mib(n: int) -> str:
    return f"{n / (1 << 20):g} MiB"


__all__ = ["EvidenceKeeper", "EvidenceLimits", "INDEX_NAME"]
