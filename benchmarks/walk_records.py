#!/usr/bin/env python3
"""Baseline for the peer comparison: walk every record header of a classic pcap file in a numba loop.

    python benchmarks/walk_records.py [--time] FILE

Opens FILE with mmap (madvise sequential where available), then a `@njit(cache=True, nogil=True)` loop visits
every record: it reads the record header's incl_len (in the file's byte order) to find the next record, and reads
the first byte of every frame (folded into a checksum that is returned, so the compiler cannot drop the read and
the data pages are really faulted in). Prints the number of records on stdout; with --time, also (on stderr) the
seconds from opening the file to the end of the walk, i.e. without the interpreter, imports and kernel loading.
Classic pcap only (either byte order, microsecond or nanosecond timestamps); pcapng and compressed files are
refused with an error (exit 2).

This is the least work any capture analyser must do to see every packet: no decoding, no flow table, no output.
It is a whole process (interpreter start, `import numpy` and `import numba`, loading the cached kernel), like the
programs it is compared with in compare_peers.py. Set NUMBA_CACHE_DIR to choose where the compiled loop is kept.
"""
from __future__ import annotations

import mmap
import sys
import time

import numba
import numpy as np

PCAP_HEADER = 24
RECORD_HEADER = 16
# magic as read little-endian -> (big-endian records, nanosecond timestamps)
MAGICS = {0xA1B2C3D4: (False, False), 0xA1B23C4D: (False, True),
          0xD4C3B2A1: (True, False), 0x4D3CB2A1: (True, True)}
NOT_CLASSIC = {b"\x0a\x0d\x0d\x0a": "a pcapng file (pcapng is out of scope for this baseline: convert it with "
                                    "`editcap -F pcap IN OUT` first)",
               b"\x1f\x8b": "gzip-compressed (decompress it first)",
               b"BZh": "bzip2-compressed (decompress it first)",
               b"\xfd7zXZ": "xz-compressed (decompress it first)"}


@numba.njit(cache=True, nogil=True)
def walk(buf, big_endian):
    """(records, offset where the walk stopped, checksum of the frames' first bytes). The walk stops at the end of
    the buffer or before a record whose header or data does not fit in it (a cut-off last record)."""
    n = 0
    acc = 0
    pos = PCAP_HEADER
    size = buf.shape[0]
    while pos + RECORD_HEADER <= size:
        p = pos + 8  # incl_len
        if big_endian:
            incl = (np.int64(buf[p]) << 24) | (np.int64(buf[p + 1]) << 16) | (np.int64(buf[p + 2]) << 8) \
                | np.int64(buf[p + 3])
        else:
            incl = np.int64(buf[p]) | (np.int64(buf[p + 1]) << 8) | (np.int64(buf[p + 2]) << 16) \
                | (np.int64(buf[p + 3]) << 24)
        data = pos + RECORD_HEADER
        if data + incl > size:
            break
        if incl > 0:
            acc += buf[data]
        n += 1
        pos = data + incl
    return n, pos, acc


def main(argv: list[str]) -> int:
    timed = "--time" in argv
    argv = [a for a in argv if a != "--time"]
    if len(argv) != 1 or argv[0] in ("-h", "--help") or argv[0].startswith("--"):
        print("usage: " + __doc__.strip().split("\n\n")[1].strip(), file=sys.stderr)
        return 2
    path = argv[0]
    # load (or compile) the kernel before the clock starts, for the type the mapped file has: read-only uint8
    warm = np.zeros(PCAP_HEADER + RECORD_HEADER, np.uint8)
    warm.flags.writeable = False
    walk(warm, False)
    t0 = time.perf_counter()
    try:
        fh = open(path, "rb")
    except OSError as e:
        print(f"walk_records: {path}: {e.strerror}", file=sys.stderr)
        return 2
    with fh:
        head = fh.read(PCAP_HEADER)
        for magic, what in NOT_CLASSIC.items():
            if head.startswith(magic):
                print(f"walk_records: {path}: {what}", file=sys.stderr)
                return 2
        if len(head) < PCAP_HEADER or int.from_bytes(head[:4], "little") not in MAGICS:
            print(f"walk_records: {path}: not a classic pcap file (bad magic {head[:4].hex() or 'none'}; "
                  "pcapng is out of scope)", file=sys.stderr)
            return 2
        big_endian, _ns = MAGICS[int.from_bytes(head[:4], "little")]
        mm = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ)
        if hasattr(mm, "madvise") and hasattr(mmap, "MADV_SEQUENTIAL"):
            mm.madvise(mmap.MADV_SEQUENTIAL)
        buf = np.frombuffer(mm, np.uint8)
        n, pos, _acc = walk(buf, big_endian)
        size = buf.shape[0]
        del buf  # the array holds an export of the map; release it before closing
        mm.close()
    seconds = time.perf_counter() - t0
    print(n)
    if timed:
        print(f"walk_records: {n} records, {size / 2**20:.1f} MiB, walked in {seconds:.3f} s", file=sys.stderr)
    if pos != size:
        print(f"walk_records: {path}: the last record is cut off at byte {pos:,} of {size:,}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
