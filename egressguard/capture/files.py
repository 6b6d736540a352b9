"""Capture files: pcap and pcapng, plain or compressed, from a path or standard input, read in large chunks.

The format is found from the magic number, never from the file name. Record boundaries are found by the numba
walkers in `records.py`; this module only moves bytes, parses the rare pcapng section and interface blocks, and
turns every problem a user can cause into one CaptureError naming the source.
"""
from __future__ import annotations

import bz2
import gzip
import io
import lzma
import mmap
import os
import queue
import stat
import struct
import sys
import threading
import zlib
from dataclasses import dataclass, field
from typing import BinaryIO, Iterator

import numpy as np

from egressguard.capture import records
from egressguard.errors import CaptureError
from egressguard.schema import FRAME_DTYPE, SUPPORTED_LINKTYPES

PCAP_MAGICS = {  # first four bytes -> (big endian, ns resolution)
    b"\xd4\xc3\xb2\xa1": (False, False),
    b"\xa1\xb2\xc3\xd4": (True, False),
    b"\x4d\x3c\xb2\xa1": (False, True),
    b"\xa1\xb2\x3c\x4d": (True, True),
}
PCAPNG_MAGIC = b"\x0a\x0d\x0d\x0a"
COMPRESSED_MAGICS = {b"\x1f\x8b": "gzip", b"BZh": "bzip2", b"\xfd7zXZ\x00": "xz"}
UNSUPPORTED_MAGICS = {
    b"\x28\xb5\x2f\xfd": "zstd-compressed (decompress it first, e.g. `zstd -dc FILE | egressguard analyze -`)",
    b"\x34\xcd\xb2\xa1": "a modified (Kuznetsov) pcap, which is not supported (convert it with editcap)",
    b"\xa1\xb2\xcd\x34": "a modified (Kuznetsov) pcap, which is not supported (convert it with editcap)",
    b"PK\x03\x04": "a zip archive, not a capture (unzip it first)",
}
BYTE_ORDER_MAGIC = 0x1A2B3C4D
MAX_INTERFACES = 65535
# if_tsoffset beyond this many seconds (~136 years) is corruption: a timestamp with it no longer fits int64 ns
MAX_TS_OFFSET_S = 1 << 32
# 4 MiB windows: two stay in a 32 MiB L3 cache while the reader thread fills the next (see stream_through_cache)
DEFAULT_CHUNK_BYTES = 4 << 20
BUFFER_RING = 3  # buffers in rotation: one being filled, one handed over, one being analysed (see prefetched)
COMPRESSED_READ_PIECE = 1 << 16  # bytes asked of a decompressor per read call (see _ChunkReader.fill)
# What a read can raise: OS errors and, from the decompressors, corrupt or cut-off data (BadGzipFile is an OSError;
# invalid deflate data inside a gzip member raises zlib.error, which is not).
_STREAM_ERRORS = (OSError, EOFError, lzma.LZMAError, zlib.error)


@dataclass
class Chunk:
    """A buffer of raw capture bytes and the frames found in it; valid only until the next chunk is requested."""

    buf: np.ndarray
    frames: np.ndarray


@dataclass
class CaptureStats:
    """What reading a capture found, for the summary record."""

    format: str = ""
    compression: str = ""
    bytes_read: int = 0
    frames: int = 0
    warnings: list[str] = field(default_factory=list)
    linktypes: set[int] = field(default_factory=set)
    complete: bool = True  # False when reading stopped before the end of the input (truncation, corruption)


class _PrefixedStream(io.RawIOBase):
    """A stream whose first bytes were already read (to sniff the magic) and are given back first."""

    def __init__(self, prefix: bytes, stream: BinaryIO):
        self._prefix = prefix
        self._stream = stream

    def readable(self) -> bool:
        return True

    def readinto(self, b) -> int:
        if self._prefix:
            n = min(len(b), len(self._prefix))
            b[:n] = self._prefix[:n]
            self._prefix = self._prefix[n:]
            return n
        return self._stream.readinto(b)


def _open_raw(spec: str) -> tuple[BinaryIO, str]:
    """Open a path or '-' for binary reading, mapping OS errors to CaptureError."""
    if spec == "-":
        if sys.stdin is None or sys.stdin.isatty():
            raise CaptureError("<stdin>", "standard input is a terminal; pipe a capture in, e.g. `tcpdump -w - | egressguard analyze -`")
        return sys.stdin.buffer, "<stdin>"
    try:
        if os.path.isdir(spec):
            raise CaptureError(spec, "is a directory, not a capture file")
        return open(spec, "rb"), spec
    except FileNotFoundError:
        raise CaptureError(spec, "no such file") from None
    except PermissionError:
        raise CaptureError(spec, "permission denied (run as a user who may read it)") from None
    except OSError as exc:
        raise CaptureError(spec, f"cannot open: {exc.strerror or exc}") from None


def _read_exact(stream: BinaryIO, n: int) -> bytes:
    out = bytearray()
    while len(out) < n:
        piece = stream.read(n - len(out))
        if not piece:
            break
        out += piece
    return bytes(out)


class CaptureFile:
    """One capture source (a path or '-'), read as a sequence of chunks of frames.

    Args:
        spec: a file path, or '-' for standard input.
        chunk_bytes: size of the read buffer; it grows only if a single record is larger.
        chunk_frames: most frames returned per chunk.
    """

    def __init__(self, spec: str, chunk_bytes: int = DEFAULT_CHUNK_BYTES, chunk_frames: int = 1 << 18):
        self.spec = spec
        self.chunk_bytes = max(chunk_bytes, 1 << 16)
        self.chunk_frames = max(chunk_frames, 1)
        self.stats = CaptureStats()
        self.name = "<stdin>" if spec == "-" else spec
        self._stream: BinaryIO | None = None
        self._owned: list[BinaryIO] = []
        self._maps: list[mmap.mmap] = []

    def __enter__(self) -> "CaptureFile":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        # chunks handed out view the maps: they must not be used after close (numpy keeps a map alive while a view
        # of it exists, so close() of a map still viewed raises BufferError and the map is left to the collector)
        for m in self._maps:
            try:
                m.close()
            except BufferError:
                pass
        self._maps.clear()
        for s in reversed(self._owned):
            try:
                s.close()
            except OSError:
                pass
        self._owned.clear()

    def _open(self) -> tuple[BinaryIO, bytes]:
        raw, self.name = _open_raw(self.spec)
        if self.spec != "-":
            self._owned.append(raw)
        stream: BinaryIO = raw
        for _ in range(3):  # a compressed file inside a compressed file is tolerated, a loop is not
            try:
                magic = _read_exact(stream, 6)
            except _STREAM_ERRORS as exc:
                what = f"corrupt {self.stats.compression} data" if self.stats.compression else "read error"
                raise CaptureError(self.name, f"{what}: {exc}") from None
            if not magic:
                raise CaptureError(self.name, "empty input: no capture data")
            kind = next((k for m, k in COMPRESSED_MAGICS.items() if magic.startswith(m)), None)
            if kind is None:
                return _PrefixedStream(magic, stream), magic
            self.stats.compression = kind
            inner = _PrefixedStream(magic, stream)
            stream = {"gzip": lambda s: gzip.GzipFile(fileobj=s), "bzip2": bz2.BZ2File,
                      "xz": lzma.LZMAFile}[kind](io.BufferedReader(inner))
            self._owned.append(stream)
        raise CaptureError(self.name, "compressed too many times over")

    def chunks(self) -> Iterator[Chunk]:
        """Yield chunks of frames until the capture ends; raises CaptureError for a source that is not a capture."""
        stream, magic = self._open()
        self._stream = stream
        reader = self._mapped_reader() or _ChunkReader(stream, self.name, self.chunk_bytes, self.stats)
        if magic[:4] in PCAP_MAGICS:
            yield from self._pcap_chunks(reader, *PCAP_MAGICS[magic[:4]])
        elif magic[:4] == PCAPNG_MAGIC:
            yield from self._pcapng_chunks(reader)
        else:
            for m, what in UNSUPPORTED_MAGICS.items():
                if magic.startswith(m):
                    raise CaptureError(self.name, f"is {what}")
            raise CaptureError(self.name, f"not a pcap or pcapng capture (starts with bytes {magic[:4].hex(' ')})")

    def _mapped_reader(self) -> "_MappedReader | None":
        """A zero-copy reader over a memory map, for a plain (uncompressed) regular file; None otherwise."""
        if self.spec == "-" or self.stats.compression or not self._owned:
            return None
        raw = self._owned[0]
        try:
            if not stat.S_ISREG(os.fstat(raw.fileno()).st_mode):
                return None
            mapped = mmap.mmap(raw.fileno(), 0, access=mmap.ACCESS_READ)
        except (OSError, ValueError):
            return None  # not mappable (e.g. a FIFO or a special file system): read it instead
        if hasattr(mapped, "madvise"):
            mapped.madvise(mmap.MADV_SEQUENTIAL)
        self._maps.append(mapped)
        return _MappedReader(mapped, self.name, self.chunk_bytes, self.stats)

    def _pcap_chunks(self, reader: "_ChunkReader", big_endian: bool, nanos: bool) -> Iterator[Chunk]:
        self.stats.format = "pcap"
        reader.fill(24)
        if reader.filled < 24:
            raise CaptureError(self.name, "truncated pcap file header (fewer than 24 bytes)")
        endian = ">" if big_endian else "<"
        _, vmaj, vmin, _, _, snaplen, network = struct.unpack(endian + "IHHiIII", bytes(reader.buf[:24]))
        linktype = network & 0xFFFF  # upper bits carry FCS information (pcap spec, LinkType field)
        if linktype not in SUPPORTED_LINKTYPES:
            raise CaptureError(self.name, f"unsupported link type {linktype} (supported: Ethernet, Linux SLL/SLL2, raw IPv4/IPv6, BSD loopback)")
        self.stats.linktypes.add(linktype)
        frame_ring = _FrameRing(self.chunk_frames)
        pos = 24
        frac = 1 if nanos else 1000
        while True:
            frames = frame_ring.next()
            pos, count, outcome = records.walk_pcap(reader.buf, reader.filled, pos, big_endian, frac, linktype, frames)
            if count:
                self.stats.frames += count
                yield Chunk(reader.buf, frames[:count])
            if outcome == records.FRAMES_FULL:
                continue
            if outcome == records.CORRUPT:
                self._warn_corrupt(reader, pos)
                return
            pos = reader.refill(pos)
            if pos < 0:
                return

    def _warn_corrupt(self, reader: "_ChunkReader", pos: int) -> None:
        self.stats.complete = False
        self.stats.warnings.append(
            f"{self.name}: impossible record length at byte {reader.base + pos}; the rest of the file "
            f"({reader.total_after(pos)} bytes read after it) was not decoded")

    def _pcapng_chunks(self, reader: "_ChunkReader") -> Iterator[Chunk]:
        self.stats.format = "pcapng"
        reader.fill(28)
        if reader.filled < 28:  # the smallest section header block
            raise CaptureError(self.name, "truncated pcapng section header (fewer than 28 bytes)")
        frame_ring = _FrameRing(self.chunk_frames)
        section = _PcapngSection()
        last_ts = np.zeros(1, np.int64)
        undefined_warned: set[int] = set()
        pos = 0
        while True:
            frames = frame_ring.next()
            pos, count, outcome = records.walk_pcapng(
                reader.buf, reader.filled, pos, section.big_endian, section.linktype, section.snaplen,
                section.ts_mul, section.ts_div, section.ts_shift, section.ts_offset_ns, section.n_ifaces,
                frames, last_ts)
            if count:
                # one walk never crosses a section header, so every frame here belongs to `section`
                ifaces = frames["iface"][:count]
                if int(ifaces.max()) >= section.n_ifaces:
                    for i in np.unique(ifaces[ifaces >= section.n_ifaces]).tolist():
                        if i not in undefined_warned:
                            undefined_warned.add(i)
                            self.stats.warnings.append(
                                f"{self.name}: packets refer to undefined interface {i} (no interface description "
                                f"block for it in their section); they are counted as undecodable")
                self.stats.frames += count
                yield Chunk(reader.buf, frames[:count])
            if outcome == records.FRAMES_FULL:
                continue
            if outcome == records.CORRUPT:
                self._warn_corrupt(reader, pos)
                return
            if outcome == records.CONTROL_BLOCK:
                used = section.parse_control(reader.buf, reader.filled, pos, self.name, reader.base + pos)
                if used > 0:
                    self.stats.linktypes.update(int(x) for x in section.linktype[:section.n_ifaces])
                    for warning in section.take_warnings():
                        self.stats.warnings.append(f"{self.name}: {warning}")
                    pos += used
                    continue
                if used < 0:
                    self._warn_corrupt(reader, pos)
                    return
            pos = reader.refill(pos)
            if pos < 0:
                return




def _warn_truncated(stats: CaptureStats, name: str, offset: int, size: int) -> None:
    """Record that the input ended inside a record: everything before it was analysed."""
    stats.complete = False
    stats.warnings.append(f"{name}: capture is truncated: the last record (at byte {offset}) is incomplete "
                          f"({size} bytes); everything before it was analysed")


class _ChunkReader:
    """The read buffers: each refill moves the unconsumed tail into the next buffer of a small ring and tops it
    up from the stream, so the chunk handed out before stays intact while it is being analysed."""

    def __init__(self, stream: BinaryIO, name: str, size: int, stats: CaptureStats):
        self.stream = stream
        self.name = name
        self.ring = [np.empty(size, np.uint8)] + [np.empty(0, np.uint8)] * (BUFFER_RING - 1)
        self.current = 0
        self.buf = self.ring[0]
        self.filled = 0
        self.base = 0  # file offset of buf[0]
        self.eof = False
        self.stats = stats

    def fill(self, want: int | None = None) -> None:
        """Read until the buffer is full (or holds `want` bytes) or the stream ends."""
        target = len(self.buf) if want is None else min(want, len(self.buf))
        view = memoryview(self.buf)
        # A decompressor that hits corrupt data raises and the bytes it produced in that same call are lost, so
        # compressed input is read in small pieces: at most one piece before the damage goes unanalysed.
        piece = COMPRESSED_READ_PIECE if self.stats.compression else len(self.buf)
        while self.filled < target and not self.eof:
            try:
                n = self.stream.readinto(view[self.filled:self.filled + piece])
            except _STREAM_ERRORS as exc:
                self.stats.complete = False
                self.stats.warnings.append(f"{self.name}: {self.stats.compression or 'input'} stream ends early or "
                                           f"is corrupt ({exc}); everything before that point was analysed")
                self.eof = True
                break
            if not n:
                self.eof = True
                break
            self.filled += n
            self.stats.bytes_read += n

    def total_after(self, pos: int) -> int:
        return self.filled - pos

    def refill(self, pos: int) -> int:
        """Drop the consumed bytes before `pos`, read more; return the new position or -1 at the end of input."""
        if self.eof:
            if pos < self.filled:
                _warn_truncated(self.stats, self.name, self.base + pos, self.filled - pos)
            return -1
        rest = self.filled - pos
        size = len(self.buf)
        if pos == 0 and rest == size:  # one record fills the whole buffer: the next one must be larger
            if size >= 2 * records.MAX_BLOCK:
                self.stats.complete = False
                self.stats.warnings.append(f"{self.name}: record at byte {self.base} is larger than "
                                           f"{records.MAX_BLOCK} bytes; stopped reading")
                return -1
            size *= 2
        self.current = (self.current + 1) % BUFFER_RING
        if len(self.ring[self.current]) < size:
            self.ring[self.current] = np.empty(size, np.uint8)
        nxt = self.ring[self.current]
        nxt[:rest] = self.buf[pos:self.filled]
        self.buf = nxt
        self.base += pos
        self.filled = rest
        self.fill()
        return 0


class _MappedReader:
    """The _ChunkReader interface over a memory-mapped file: each chunk is a window of the map, nothing is copied.

    The reading thread's record walk touches every page first, so page faults are taken off the analysing thread.
    """

    def __init__(self, mapped: mmap.mmap, name: str, window: int, stats: CaptureStats):
        self.mapped = mapped
        self.released = 0
        self.whole = np.frombuffer(mapped, np.uint8)
        self.name = name
        self.window = window
        self.stats = stats
        self.base = 0
        self.buf = self.whole[:0]
        self.filled = 0
        self.eof = False
        self.fill()

    def fill(self, want: int | None = None) -> None:
        end = min(len(self.whole), self.base + max(self.window, self.filled))
        self.buf = self.whole[self.base:end]
        records.stream_through_cache(self.whole[self.base + self.filled:end])
        self.stats.bytes_read += (end - self.base) - self.filled
        self.filled = end - self.base
        self.eof = end == len(self.whole)

    def total_after(self, pos: int) -> int:
        return self.filled - pos

    def _release_behind(self) -> None:
        """Unmap pages well behind the windows still in use (BUFFER_RING of them), so resident memory stays small
        however large the file; the data stays in the page cache."""
        upto = (self.base - BUFFER_RING * self.window) // mmap.PAGESIZE * mmap.PAGESIZE
        if upto > self.released and hasattr(self.mapped, "madvise"):
            self.mapped.madvise(mmap.MADV_DONTNEED, self.released, upto - self.released)
            self.released = upto

    def refill(self, pos: int) -> int:
        if self.eof:
            if pos < self.filled:
                _warn_truncated(self.stats, self.name, self.base + pos, self.filled - pos)
            return -1
        if pos == 0:  # one record larger than the window: widen it
            self.window = max(self.window, self.filled) * 2
        self.base += pos
        self._release_behind()
        self.filled = 0
        self.fill()
        return 0


class _FrameRing:
    """FRAME arrays in rotation, so a chunk's frames stay intact while later chunks are being found."""

    def __init__(self, size: int):
        self.arrays = [np.empty(size, FRAME_DTYPE) for _ in range(BUFFER_RING)]
        self.current = 0

    def next(self) -> np.ndarray:
        self.current = (self.current + 1) % BUFFER_RING
        return self.arrays[self.current]


def prefetched(chunks: Iterator[Chunk], depth: int = 1) -> Iterator[Chunk]:
    """Run a chunk iterator in a background thread so reading (and decompressing) overlaps the analysis.

    Safe with the buffer and frame rings: with BUFFER_RING >= depth + 2, a buffer is refilled only after the
    consumer asked for the chunk after the one that used it. Exceptions are re-raised in the consumer.
    """
    assert BUFFER_RING >= depth + 2
    handoff: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()
    done = object()

    def offer(item: object) -> bool:
        """Hand one item over, waiting while the consumer is busy; False once the consumer has gone."""
        while not stop.is_set():
            try:
                handoff.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        try:
            for chunk in chunks:
                if not offer(chunk):
                    return
            item: object = done
        except BaseException as exc:  # handed to the consumer, which raises it
            item = exc
        offer(item)

    worker = threading.Thread(target=produce, name="capture-reader", daemon=True)
    worker.start()
    try:
        while True:
            item = handoff.get()
            if item is done:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        worker.join(timeout=5)


class _PcapngSection:
    """Per-section state of a pcapng file: byte order and the interface table (numpy arrays for the walker)."""

    def __init__(self) -> None:
        self.big_endian = False
        self.warnings: list[str] = []
        self._reset()

    def _reset(self) -> None:
        self.n_ifaces = 0
        size = 4
        self.linktype = np.zeros(size, np.uint16)
        self.snaplen = np.zeros(size, np.uint32)
        self.ts_mul = np.ones(size, np.int64)
        self.ts_div = np.ones(size, np.int64)
        self.ts_shift = np.full(size, -1, np.int64)
        self.ts_offset_ns = np.zeros(size, np.int64)

    def take_warnings(self) -> list[str]:
        out, self.warnings = self.warnings, []
        return out

    def parse_control(self, buf: np.ndarray, filled: int, pos: int, name: str, file_offset: int) -> int:
        """Parse the SHB or IDB at `pos`; return its length, 0 if more bytes are needed, -1 if it is corrupt."""
        if pos + 12 > filled:
            return 0
        head = bytes(buf[pos:pos + 12])
        btype_le = struct.unpack("<I", head[:4])[0]
        if btype_le == records.PCAPNG_SHB:  # palindromic type: byte order comes from the magic that follows
            bom = head[8:12]
            if bom == b"\x4d\x3c\x2b\x1a":
                big = False
            elif bom == b"\x1a\x2b\x3c\x4d":
                big = True
            else:
                if pos == 0 and file_offset == 0:
                    raise CaptureError(name, "pcapng section header has no valid byte-order magic")
                return -1
            endian = ">" if big else "<"
            blen = struct.unpack(endian + "I", head[4:8])[0]
            if blen < 28 or blen % 4 or blen > records.MAX_BLOCK:
                if file_offset == 0:
                    raise CaptureError(name, f"pcapng section header has an impossible length {blen}")
                return -1
            if pos + blen > filled:
                return 0
            major = struct.unpack(endian + "H", bytes(buf[pos + 12:pos + 14]))[0]
            if major != 1:
                raise CaptureError(name, f"pcapng major version {major} at byte {file_offset} is not supported (only 1)")
            self.big_endian = big
            self._reset()
            return blen
        endian = ">" if self.big_endian else "<"
        btype, blen = struct.unpack(endian + "II", head[:8])
        if blen < 20 or blen % 4 or blen > records.MAX_BLOCK:
            return -1
        if pos + blen > filled:
            return 0
        body = bytes(buf[pos + 8:pos + blen - 4])
        linktype, _, snaplen = struct.unpack(endian + "HHI", body[:8])
        self._add_interface(linktype, snaplen, body[8:], endian)
        return blen

    def _add_interface(self, linktype: int, snaplen: int, options: bytes, endian: str) -> None:
        i = self.n_ifaces
        if i >= MAX_INTERFACES:
            self.warnings.append("more than 65535 interfaces in one section; later ones ignored")
            return
        if i >= len(self.linktype):
            for attr in ("linktype", "snaplen", "ts_mul", "ts_div", "ts_shift", "ts_offset_ns"):
                old = getattr(self, attr)
                new = np.resize(old, 2 * len(old))
                setattr(self, attr, new)
        self.linktype[i] = linktype
        self.snaplen[i] = snaplen
        self.ts_mul[i], self.ts_div[i], self.ts_shift[i] = 1000, 1, -1  # default if_tsresol = 6 (microseconds)
        self.ts_offset_ns[i] = 0
        if linktype not in SUPPORTED_LINKTYPES:
            self.warnings.append(f"interface {i} has unsupported link type {linktype}; its frames are counted as undecodable")
        off = 0
        while off + 4 <= len(options):
            code, length = struct.unpack(endian + "HH", options[off:off + 4])
            value = options[off + 4:off + 4 + length]
            if code == 0:
                break
            if code == 9 and length >= 1:  # if_tsresol (pcapng spec 4.2)
                res = value[0]
                if res & 0x80:
                    self.ts_shift[i] = min(res & 0x7F, 63)
                elif res <= 9:
                    self.ts_mul[i], self.ts_div[i] = 10 ** (9 - res), 1
                else:
                    self.ts_mul[i], self.ts_div[i] = 1, 10 ** min(res - 9, 18)
            elif code == 14 and length >= 8:  # if_tsoffset: seconds added to every timestamp
                (seconds,) = struct.unpack(endian + "q", value[:8])
                if abs(seconds) > MAX_TS_OFFSET_S:  # in nanoseconds it would not fit the int64 timestamps
                    self.warnings.append(f"interface {i} has an impossible if_tsoffset of {seconds} s; ignored")
                else:
                    self.ts_offset_ns[i] = seconds * 1_000_000_000
            off += 4 + ((length + 3) & ~3)
        self.n_ifaces = i + 1
