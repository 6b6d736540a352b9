"""Writing classic pcap files (evidence captures): a file header, then many frames of a chunk at once.

Nanosecond-resolution classic pcap (draft-ietf-opsawg-pcap: 24-byte file header, 16-byte record headers, little
endian here), which tcpdump, Wireshark and egressguard's own readers open. Records are packed by a numba kernel
straight from the chunk buffer, so writing many frames costs no Python step per frame.
"""
from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
from numba import njit

from egressguard.errors import EgressGuardError

PCAP_NS_MAGIC = 0xA1B23C4D  # libpcap: nanosecond-resolution classic pcap
RECORD_HEADER = 16  # ts_sec, ts_frac, incl_len, orig_len (u32 each)
SNAPLEN = 262144  # tcpdump's MAXIMUM_SNAPLEN: readers reject a record larger than the header's snaplen


@njit(cache=True, inline="always")
def _put_u32(out, at, value):
    out[at] = value & 0xFF
    out[at + 1] = (value >> 8) & 0xFF
    out[at + 2] = (value >> 16) & 0xFF
    out[at + 3] = (value >> 24) & 0xFF


@njit(cache=True, nogil=True)
def pack_records(buf, offsets, caplens, wirelens, ts_ns, out):
    """Record header + bytes of each frame, one after another, into `out` (sized by the caller); returns the bytes
    used."""
    pos = 0
    for i in range(offsets.shape[0]):
        ts = ts_ns[i]
        sec = ts // 1_000_000_000
        _put_u32(out, pos, sec)
        _put_u32(out, pos + 4, ts - sec * 1_000_000_000)
        n = caplens[i]
        _put_u32(out, pos + 8, n)
        _put_u32(out, pos + 12, wirelens[i])
        pos += RECORD_HEADER
        start = offsets[i]
        for j in range(n):
            out[pos + j] = buf[start + j]
        pos += n
    return pos


def record_sizes(frames: np.ndarray) -> np.ndarray:
    """Bytes each FRAME row takes in a pcap file (header included)."""
    return frames["caplen"].astype(np.int64) + RECORD_HEADER


def pack(buf: np.ndarray, frames: np.ndarray) -> np.ndarray:
    """The pcap records of `frames` (FRAME rows whose offsets index `buf`), as one byte array."""
    caplens = np.minimum(frames["caplen"].astype(np.int64), SNAPLEN)
    out = np.empty(int(caplens.sum()) + RECORD_HEADER * len(frames), np.uint8)
    used = pack_records(buf, frames["offset"].astype(np.int64), caplens, frames["wirelen"].astype(np.int64),
                        frames["ts_ns"].astype(np.int64), out)
    return out[:used]


class PcapWriter:
    """One pcap file being written: `write` appends frames and flushes, so the file can be read while it grows.

    Raises OSError when the file cannot be created or written (callers name the option that chose the path), and
    FileExistsError when `exclusive` and the file exists."""

    def __init__(self, path: str | Path, linktype: int, exclusive: bool = False):
        self.path = Path(path)
        self.linktype = int(linktype)
        self.packets = 0
        self.bytes = 24
        self._fh = open(self.path, "xb" if exclusive else "wb")
        try:
            self._fh.write(struct.pack("<IHHiIII", PCAP_NS_MAGIC, 2, 4, 0, 0, SNAPLEN, self.linktype))
            self._fh.flush()
        except OSError:
            self._fh.close()
            raise

    def write(self, buf: np.ndarray, frames: np.ndarray) -> int:
        """Append `frames` (all of this file's link type); returns the bytes written."""
        if not len(frames) or self._fh is None:
            return 0
        data = pack(buf, frames)
        self._fh.write(memoryview(data))
        self._fh.flush()
        self.packets += len(frames)
        self.bytes += len(data)
        return len(data)

    @property
    def closed(self) -> bool:
        return self._fh is None

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None


def writable_directory(directory: str | Path, option: str) -> Path:
    """`directory`, created and proven writable; else one EgressGuardError naming the option (exit status 2)."""
    path = Path(directory)
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / ".egressguard-write-test"
        probe.touch()
        probe.unlink()
    except OSError as exc:
        raise EgressGuardError(f"{option} {directory}: cannot write there ({exc.strerror or exc})") from None
    return path


def warm_up() -> None:
    """Compile (or load from the cache) the packing kernel now."""
    frames = np.zeros(1, [("offset", "i8"), ("caplen", "u4"), ("wirelen", "u4"), ("ts_ns", "i8")])
    frames["caplen"] = frames["wirelen"] = 4
    pack(np.zeros(4, np.uint8), frames)


__all__ = ["PCAP_NS_MAGIC", "PcapWriter", "pack", "record_sizes", "warm_up", "writable_directory"]
