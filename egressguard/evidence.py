"""Evidence captures (issue 16): for every finding of an analysed capture, a pcap of the packets behind it.

A finding about one flow gets that flow's packets (its 5-tuple, between its first and last packet); a finding that
aggregates connections (`unexpected_destination`, a `beacon` over connection starts) gets every packet between its
sandbox and the destination's address and port. The file is named when the finding is reported (the record's
`evidence_pcap`), and written by a second read of the capture once the capture is analysed: packets are matched by
64-bit keys over whole decoded chunks (numpy), so the cost is one more read and decode of the file. Files are
classic pcap with nanosecond timestamps and the link type of the first frame; frames of another link type are
counted, not written (`skipped`).
"""
from __future__ import annotations

import struct
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from egressguard.capture.files import CaptureFile
from egressguard.decode import Decoder
from egressguard.errors import EgressGuardError
from egressguard.schema import Finding, FindingKind

PCAP_NS_MAGIC = 0xA1B23C4D  # libpcap: nanosecond-resolution classic pcap
AGGREGATED = (FindingKind.UNEXPECTED_DESTINATION, FindingKind.BEACON)
_M1, _M2 = np.uint64(0xBF58476D1CE4E5B9), np.uint64(0x94D049BB133111EB)  # splitmix64 finaliser constants
_ANY_PORT = np.uint64(1 << 20)  # an address alone: a "port" no packet has


def _mix(*columns) -> np.ndarray:
    """A 64-bit hash of equal-length integer columns (splitmix64 steps; wraps as uint64 does)."""
    h = np.full(len(columns[0]), 0x9E3779B97F4A7C15, np.uint64)
    with np.errstate(over="ignore"):
        for c in columns:
            h ^= np.asarray(c).astype(np.uint64)
            h *= _M1
            h ^= h >> np.uint64(31)
            h *= _M2
            h ^= h >> np.uint64(29)
    return h


def _endpoint(hi, lo, port) -> np.ndarray:
    return _mix(hi, lo, port)


@dataclass
class _Wanted:
    path: Path
    key: int
    first_ns: int
    last_ns: int
    packets: int = 0
    skipped: int = 0
    linktype: int | None = None
    chunks: list = field(default_factory=list)


class EvidenceWriter:
    """Names an evidence file for each finding (`assign`) and writes them all after the capture (`write`)."""

    def __init__(self, directory: str | Path):
        self.directory = Path(directory)
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            probe = self.directory / ".egressguard-write-test"
            probe.touch()
            probe.unlink()
        except OSError as exc:
            raise EgressGuardError(f"--evidence {directory}: cannot write there ({exc.strerror or exc})") from None
        self._wanted: dict[str, list[_Wanted]] = {}
        self._count = 0

    def assign(self, capture: str, finding: Finding) -> str:
        """The file that will hold `finding`'s packets; also put in its record as `evidence_pcap`."""
        self._count += 1
        stem = Path(capture).name.split(".")[0] or "capture"
        path = self.directory / f"{stem}-{self._count:05d}-{finding.kind}.pcap"
        rec = finding.flow
        if finding.kind in AGGREGATED:
            key = _aggregate_key(rec["proto"], rec["orig_hi"], rec["orig_lo"], rec["resp_hi"], rec["resp_lo"],
                                 rec["resp_port"])
            first, last = np.iinfo(np.int64).min, np.iinfo(np.int64).max
        else:
            key = _flow_key(rec["proto"], rec["orig_hi"], rec["orig_lo"], rec["orig_port"], rec["resp_hi"],
                            rec["resp_lo"], rec["resp_port"])
            first, last = int(rec["first_seen_ns"]), int(rec["last_seen_ns"])
        self._wanted.setdefault(capture, []).append(_Wanted(path, int(key[0]), first, last))
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
        handles = {}
        decoder = Decoder()
        try:
            with CaptureFile(capture) as source:
                for chunk in source.chunks():
                    packets = decoder.decode_batch(chunk.buf, chunk.frames)
                    if not len(packets):
                        continue
                    p = packets
                    five = _flow_key(p["proto"], p["src_hi"], p["src_lo"], p["sport"], p["dst_hi"], p["dst_lo"],
                                     p["dport"])
                    out = _aggregate_key(p["proto"], p["src_hi"], p["src_lo"], p["dst_hi"], p["dst_lo"], p["dport"])
                    back = _aggregate_key(p["proto"], p["dst_hi"], p["dst_lo"], p["src_hi"], p["src_lo"], p["sport"])
                    for column in (five, out, back):
                        hit = np.flatnonzero(np.isin(column, keys))
                        for i in hit.tolist():
                            for w in by_key[int(column[i])]:
                                ts = int(p["ts_ns"][i])
                                if w.first_ns <= ts <= w.last_ns:
                                    self._append(w, chunk, i, handles)
        finally:
            for fh in handles.values():
                fh.close()
        done = []
        for w in wanted:
            if w.packets == 0 and not w.path.exists():
                self._open(w, handles, 1).close()  # an empty, valid file rather than a dangling name
            done.append((str(w.path), w.packets, w.skipped))
        return done

    def _append(self, w: _Wanted, chunk, i: int, handles: dict) -> None:
        frame = chunk.frames[i]
        linktype = int(frame["linktype"])
        if w.linktype is None:
            w.linktype = linktype
        if linktype != w.linktype:
            w.skipped += 1
            return
        fh = handles.get(w.path) or self._open(w, handles, linktype)
        ts = int(frame["ts_ns"])
        caplen, offset = int(frame["caplen"]), int(frame["offset"])
        fh.write(struct.pack("<IIII", ts // 1_000_000_000, ts % 1_000_000_000, caplen, int(frame["wirelen"])))
        fh.write(chunk.buf[offset:offset + caplen].tobytes())
        w.packets += 1

    @staticmethod
    def _open(w: _Wanted, handles: dict, linktype: int):
        try:
            fh = open(w.path, "wb")
        except OSError as exc:
            raise EgressGuardError(f"--evidence: cannot write {w.path} ({exc.strerror or exc})") from None
        fh.write(struct.pack("<IHHiIII", PCAP_NS_MAGIC, 2, 4, 0, 0, 262144, linktype))
        handles[w.path] = fh
        return fh


def _flow_key(proto, a_hi, a_lo, a_port, b_hi, b_lo, b_port) -> np.ndarray:
    """Direction-free key of a 5-tuple."""
    a = _endpoint(np.atleast_1d(a_hi), np.atleast_1d(a_lo), np.atleast_1d(a_port))
    b = _endpoint(np.atleast_1d(b_hi), np.atleast_1d(b_lo), np.atleast_1d(b_port))
    return _mix(np.atleast_1d(proto), a ^ b)


def _aggregate_key(proto, sandbox_hi, sandbox_lo, dst_hi, dst_lo, dst_port) -> np.ndarray:
    """Key of (protocol, sandbox address, destination address and port): every connection between them."""
    s = _endpoint(np.atleast_1d(sandbox_hi), np.atleast_1d(sandbox_lo),
                  np.full(np.atleast_1d(sandbox_hi).shape, _ANY_PORT))
    d = _endpoint(np.atleast_1d(dst_hi), np.atleast_1d(dst_lo), np.atleast_1d(dst_port))
    return _mix(np.atleast_1d(proto), s, d) ^ _ANY_PORT


__all__ = ["EvidenceWriter"]
