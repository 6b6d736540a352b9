"""Evidence captures (issue 16): for every finding of an analysed capture, a pcap of the packets behind it.

A finding about one flow gets that flow's packets (its 5-tuple, between its first and last packet); a finding that
aggregates connections (`unexpected_destination`, a `beacon` over connection starts) gets every packet between its
sandbox and the destination's address and port. The file is named when the finding is reported (the record's
`evidence_pcap`), and written by a second read of the capture once the capture is analysed: packets are matched by
64-bit keys over whole decoded chunks (flows/keys.py, shared with `watch --evidence`), so the cost is one more read
and decode of the file. Files are classic pcap with nanosecond timestamps and the link type of the first frame;
frames of another link type are counted, not written (`skipped`).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from egressguard.capture.files import CaptureFile
from egressguard.capture.pcap_writer import PcapWriter, writable_directory
from egressguard.decode import Decoder
from egressguard.errors import EgressGuardError
from egressguard.flows.keys import evidence_key, is_aggregated, match, packet_keys
from egressguard.schema import Finding


@dataclass
class _Wanted:
    path: Path
    key: int
    first_ns: int
    last_ns: int
    skipped: int = 0
    writer: PcapWriter | None = None

    @property
    def packets(self) -> int:
        return self.writer.packets if self.writer is not None else 0


class EvidenceWriter:
    """Names an evidence file for each finding (`assign`) and writes them all after the capture (`write`)."""

    def __init__(self, directory: str | Path):
        self.directory = writable_directory(directory, "--evidence")
        self._wanted: dict[str, list[_Wanted]] = {}
        self._count = 0

    def assign(self, capture: str, finding: Finding) -> str:
        """The file that will hold `finding`'s packets; also put in its record as `evidence_pcap`."""
        self._count += 1
        stem = Path(capture).name.split(".")[0] or "capture"
        path = self.directory / f"{stem}-{self._count:05d}-{finding.kind}.pcap"
        rec = finding.flow
        if is_aggregated(finding):
            first, last = np.iinfo(np.int64).min, np.iinfo(np.int64).max
        else:
            first, last = int(rec["first_seen_ns"]), int(rec["last_seen_ns"])
        self._wanted.setdefault(capture, []).append(_Wanted(path, evidence_key(finding), first, last))
        finding.details["evidence_pcap"] = str(path)
        return str(path)

    def write(self, capture: str) -> list[tuple[str, int, int]]:
        """Read `capture` again and write the files assigned for it: [(path, packets, skipped)]."""
        wanted = self._wanted.pop(capture, [])
        if not wanted:
            return []
        if capture == "-":
            raise EgressGuardError("--evidence needs capture files: standard input cannot be read twice")
        by_key: dict[int, list[_Wanted]] = {}
        for w in wanted:
            by_key.setdefault(w.key, []).append(w)
        keys = np.array(sorted(by_key), np.uint64)
        decoder = Decoder()
        try:
            with CaptureFile(capture) as source:
                for chunk in source.chunks():
                    packets = decoder.decode_batch(chunk.buf, chunk.frames)
                    if not len(packets):
                        continue
                    ts = packets["ts_ns"]
                    for key, rows in match(packet_keys(packets), keys).items():
                        for w in by_key[key]:
                            inside = rows[(ts[rows] >= w.first_ns) & (ts[rows] <= w.last_ns)]
                            if len(inside):
                                self._append(w, chunk, inside)
            for w in wanted:
                if w.writer is None:  # an empty, valid file rather than a dangling name
                    self._open(w, 1)
        finally:
            for w in wanted:
                if w.writer is not None:
                    w.writer.close()
        return [(str(w.path), w.packets, w.skipped) for w in wanted]

    def _append(self, w: _Wanted, chunk, rows: np.ndarray) -> None:
        frames = chunk.frames[rows]
        if w.writer is None:
            self._open(w, int(frames["linktype"][0]))
        same = frames["linktype"] == w.writer.linktype
        w.skipped += int(len(frames) - same.sum())
        try:
            w.writer.write(chunk.buf, frames[same])
        except OSError as exc:
            raise EgressGuardError(f"--evidence: cannot write {w.path} ({exc.strerror or exc})") from None

    @staticmethod
    def _open(w: _Wanted, linktype: int) -> None:
        try:
            w.writer = PcapWriter(w.path, linktype)
        except OSError as exc:
            raise EgressGuardError(f"--evidence: cannot write {w.path} ({exc.strerror or exc})") from None


__all__ = ["EvidenceWriter"]
