"""Capture readers: classic pcap, pcapng, compression, stdin, chunking, truncation and user errors.

Every capture here is written byte by byte by tests/framebuilders.py; expected timestamps are literal numbers
worked out by hand from the raw values and the resolution rules of the formats.
"""
from __future__ import annotations

import bz2
import gzip
import json
import lzma
import os
import random
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from egressguard.capture import CaptureFile
from egressguard.errors import CaptureError, ExitStatus
from egressguard.schema import FRAME_DTYPE
import framebuilders as fb

REPO = Path(__file__).resolve().parents[1]

# A few distinct frames (contents do not matter to the reader, but real frames make failures readable).
F1 = fb.ethernet(fb.ipv4("10.0.0.1", "10.0.0.2", 17, fb.udp(1111, 53, b"query")))
F2 = fb.ethernet(fb.ipv4("10.0.0.2", "10.0.0.1", 17, fb.udp(53, 1111, b"answer!")))
F3 = fb.ethernet(fb.ipv4("10.0.0.1", "10.0.0.3", 6, fb.tcp(40000, 443, flags=fb.TCP_SYN)), pad_to=60)
RAW4 = fb.ipv4("192.0.2.1", "192.0.2.2", 1, fb.icmp(8))
RAW6 = fb.ipv6("2001:db8::1", "2001:db8::2", 58, fb.icmp(128))
SLL = fb.sll(fb.ipv4("10.1.0.1", "10.1.0.2", 17, fb.udp(5, 6)))


def write(tmp_path: Path, name: str, data: bytes) -> Path:
    p = tmp_path / name
    p.write_bytes(data)
    return p


def frames_of(path, **kw):
    frames, stats = fb.read_capture(path, **kw)
    return frames, stats


# ============================================================================================ classic pcap

@pytest.mark.parametrize("big_endian", [False, True], ids=["le", "be"])
def test_pcap_microseconds(tmp_path, big_endian):
    data = fb.pcap_file([
        (1_700_000_000, 123_456, F1),
        (1_700_000_001, 0, F2, 1500),  # wirelen larger than caplen
        (0xFFFFFFFF, 999_999, F3),  # the largest unsigned second value must not turn negative
    ], big_endian=big_endian)
    frames, stats = frames_of(write(tmp_path, "us.pcap", data))
    assert [f.ts_ns for f in frames] == [1_700_000_000_123_456_000, 1_700_000_001_000_000_000,
                                         4_294_967_295_999_999_000]
    assert [f.data for f in frames] == [F1, F2, F3]
    assert [f.caplen for f in frames] == [len(F1), len(F2), len(F3)]
    assert [f.wirelen for f in frames] == [len(F1), 1500, len(F3)]
    assert {f.linktype for f in frames} == {1} and {f.iface for f in frames} == {0}
    assert (stats.format, stats.compression, stats.frames, stats.warnings) == ("pcap", "", 3, [])
    assert stats.linktypes == {1}
    assert stats.bytes_read == len(data)


@pytest.mark.parametrize("big_endian", [False, True], ids=["le", "be"])
def test_pcap_nanoseconds(tmp_path, big_endian):
    data = fb.pcap_file([
        (1_700_000_000, 123_456_789, RAW4),
        (1_700_000_000, 999_999_999, RAW6),
        (1, 1, RAW4),
    ], linktype=101, big_endian=big_endian, nanos=True)
    frames, stats = frames_of(write(tmp_path, "ns.pcap", data))
    assert [f.ts_ns for f in frames] == [1_700_000_000_123_456_789, 1_700_000_000_999_999_999, 1_000_000_001]
    assert [f.data for f in frames] == [RAW4, RAW6, RAW4]
    assert {f.linktype for f in frames} == {101}
    assert stats.linktypes == {101} and stats.format == "pcap" and stats.frames == 3


def test_pcap_linktype_field_upper_bits_are_fcs_information(tmp_path):
    # LinkType field: FCS-length and F bits live in the upper bits; the link type is the low 16 bits.
    data = fb.pcap_header(network=0x9000_0071) + fb.pcap_record(5, 6, SLL)
    frames, stats = frames_of(write(tmp_path, "fcs.pcap", data))
    assert [(f.linktype, f.ts_ns, f.data) for f in frames] == [(113, 5_000_006_000, SLL)]


def test_pcap_header_only_is_an_empty_capture(tmp_path):
    frames, stats = frames_of(write(tmp_path, "hdr.pcap", fb.pcap_header()))
    assert frames == [] and stats.frames == 0 and stats.warnings == [] and stats.format == "pcap"


def test_pcap_zero_length_records(tmp_path):
    data = fb.pcap_file([(1, 0, b"", 0), (2, 0, b"", 60), (3, 0, F1)])
    frames, stats = frames_of(write(tmp_path, "zero.pcap", data))
    assert [(f.caplen, f.wirelen, f.ts_ns) for f in frames] == [(0, 0, 1_000_000_000), (0, 60, 2_000_000_000),
                                                                (len(F1), len(F1), 3_000_000_000)]


@pytest.mark.parametrize("linktype", [0, 1, 12, 14, 101, 108, 113, 228, 229, 276])
def test_pcap_supported_linktypes(tmp_path, linktype):
    frames, stats = frames_of(write(tmp_path, "lt.pcap", fb.pcap_file([(1, 2, RAW4)], linktype=linktype)))
    assert [f.linktype for f in frames] == [linktype]
    assert stats.linktypes == {linktype}


@pytest.mark.parametrize("linktype", [105, 127, 147, 0xFFFF])
def test_pcap_unsupported_linktype_is_an_error(tmp_path, linktype):
    p = write(tmp_path, "wifi.pcap", fb.pcap_file([(1, 2, F1)], linktype=linktype))
    with pytest.raises(CaptureError) as ei:
        frames_of(p)
    assert str(p) in str(ei.value)
    assert f"unsupported link type {linktype}" in str(ei.value)
    assert ei.value.exit_status == ExitStatus.CAPTURE


# ============================================================================================ pcapng

NS_RAW = 1_700_000_000_123_456_789  # if_tsresol 9
MS_RAW = 1_700_000_001_234  # if_tsresol 3
BIN_RAW = (1_700_000_002 << 20) | 3  # if_tsresol 0x94 = 2^-20 s, 3 units = 3e9/2^20 ns = 2861.02 ns
US_RAW = 1_700_000_003_000_007  # no if_tsresol: microseconds


def multi_section_pcapng() -> tuple[bytes, list[tuple]]:
    """Three sections (LE, BE, LE), several interfaces with different link types and resolutions, every packet
    block type, options everywhere and blocks the reader must skip. Returns (bytes, expected frames) where each
    expected frame is (data, caplen, wirelen, ts_ns, linktype, iface)."""
    spb_big = bytes(range(96))
    be = dict(big_endian=True)
    s1 = b"".join([
        fb.shb(opts=[(fb.OPT_SHB_HARDWARE, b"x86_64"), (fb.OPT_COMMENT, b"section one")]),
        fb.idb(1, 96, opts=[fb.opt_tsresol(9), (fb.OPT_IF_NAME, b"eth0")]),
        fb.nrb(),
        fb.idb(101, 0, opts=[fb.opt_tsresol(3), (fb.OPT_COMMENT, b"raw ip, milliseconds")]),
        fb.idb(113, 262144, opts=[fb.opt_tsresol(0x80 | 20), fb.opt_tsoffset(100)]),
        fb.idb(1, 0),  # no options: default microsecond resolution
        fb.epb(0, NS_RAW, F1),
        fb.isb(0, NS_RAW),
        fb.epb(1, MS_RAW, RAW4, opts=[(fb.OPT_COMMENT, b"a comment"), (fb.OPT_EPB_FLAGS, b"\x01\x00\x00\x00")]),
        fb.custom_block(),
        fb.epb(2, BIN_RAW, SLL, 1000),
        fb.spb(spb_big, 1514),  # caplen = min(wirelen, interface 0 snaplen 96)
        fb.spb(F2),  # 49-byte frame padded to 52: caplen must be 49, not 52
        fb.dsb(),
        fb.pb(3, US_RAW, F3, drops=5),
        fb.custom_block(b"not copied", copy=False),
        fb.epb(3, US_RAW + 1, F1),
    ])
    s2 = b"".join([
        fb.shb(**be),
        fb.idb(228, 0, **be),
        fb.idb(229, 0, opts=[fb.opt_tsresol(9), fb.opt_tsoffset(-5, **be)], **be),
        fb.epb(1, 1_700_000_020_000_000_005, RAW6, **be),
        fb.isb(1, 0, **be),
        fb.epb(0, 1_700_000_010_000_001, RAW4, opts=[(fb.OPT_COMMENT, b"big endian")], **be),
        fb.spb(RAW4, **be),
        fb.pb(1, 1_700_000_021_000_000_000, RAW6, **be),
    ])
    s3 = b"".join([
        fb.shb(),
        fb.idb(1, 0),
        fb.epb(0, 1_700_000_030_000_000, F2),
    ])
    expected = [
        (F1, len(F1), len(F1), 1_700_000_000_123_456_789, 1, 0),
        (RAW4, len(RAW4), len(RAW4), 1_700_000_001_234_000_000, 101, 1),
        (SLL, len(SLL), 1000, 1_700_000_102_000_002_861, 113, 2),
        (spb_big, 96, 1514, 1_700_000_102_000_002_861, 1, 0),
        (F2, len(F2), len(F2), 1_700_000_102_000_002_861, 1, 0),
        (F3, len(F3), len(F3), 1_700_000_003_000_007_000, 1, 3),
        (F1, len(F1), len(F1), 1_700_000_003_000_008_000, 1, 3),
        (RAW6, len(RAW6), len(RAW6), 1_700_000_015_000_000_005, 229, 1),
        (RAW4, len(RAW4), len(RAW4), 1_700_000_010_000_001_000, 228, 0),
        (RAW4, len(RAW4), len(RAW4), 1_700_000_010_000_001_000, 228, 0),
        (RAW6, len(RAW6), len(RAW6), 1_700_000_016_000_000_000, 229, 1),
        (F2, len(F2), len(F2), 1_700_000_030_000_000_000, 1, 0),
    ]
    return s1 + s2 + s3, expected


def as_tuples(frames):
    return [(f.data, f.caplen, f.wirelen, f.ts_ns, f.linktype, f.iface) for f in frames]


def test_pcapng_sections_interfaces_resolutions_and_block_types(tmp_path):
    data, expected = multi_section_pcapng()
    frames, stats = frames_of(write(tmp_path, "multi.pcapng", data))
    got = as_tuples(frames)
    for i, (g, e) in enumerate(zip(got, expected)):
        assert g == e, f"frame {i}"
    assert len(got) == len(expected)
    assert stats.format == "pcapng" and stats.compression == ""
    assert stats.frames == len(expected)
    assert stats.linktypes == {1, 101, 113, 228, 229}
    assert stats.warnings == []
    assert stats.bytes_read == len(data)


@pytest.mark.parametrize("big_endian", [False, True], ids=["le", "be"])
@pytest.mark.parametrize("resol,raw,ts_ns", [
    (0, 1_700_000_000, 1_700_000_000_000_000_000),  # seconds
    (3, 1_700_000_000_001, 1_700_000_000_001_000_000),  # milliseconds
    (6, 1_700_000_000_000_001, 1_700_000_000_000_001_000),
    (7, 17_000_000_000_000_001, 1_700_000_000_000_000_100),  # 100 ns units
    (9, 1_700_000_000_000_000_001, 1_700_000_000_000_000_001),
    (0x80 | 10, (1_700_000_000 << 10) | 512, 1_700_000_000_500_000_000),  # 2^-10: 512/1024 s
    (0x80 | 20, (1_700_000_000 << 20) | 1, 1_700_000_000_000_000_953),  # 1e9/2^20 = 953.67
    (0x80 | 30, (1 << 30) + (1 << 29), 1_500_000_000),
    (0x80 | 40, (1_000 << 40) | (1 << 39), 1_000_500_000_000),  # fraction * 1e9 needs more than 64 bits
    (0x80 | 40, (1_000 << 40) | ((1 << 40) - 1), 1_000_999_999_999),
])
def test_pcapng_if_tsresol(tmp_path, big_endian, resol, raw, ts_ns):
    be = dict(big_endian=big_endian)
    data = fb.shb(**be) + fb.idb(1, 0, opts=[fb.opt_tsresol(resol)], **be) + fb.epb(0, raw, F1, **be)
    frames, stats = frames_of(write(tmp_path, "res.pcapng", data))
    assert [f.ts_ns for f in frames] == [ts_ns]


def test_pcapng_if_tsoffset_applies_per_interface(tmp_path):
    data = (fb.shb() + fb.idb(1, 0, opts=[fb.opt_tsoffset(1_600_000_000)]) + fb.idb(1, 0)
            + fb.epb(0, 5_000_001, F1) + fb.epb(1, 5_000_001, F1))
    frames, _ = frames_of(write(tmp_path, "off.pcapng", data))
    assert [f.ts_ns for f in frames] == [1_600_000_005_000_001_000, 5_000_001_000]


def test_pcapng_new_section_forgets_interfaces(tmp_path):
    # interface 1 exists in section 1 only: in section 2 a block naming it refers to an undefined interface
    data = (fb.shb() + fb.idb(1, 0) + fb.idb(101, 0, opts=[fb.opt_tsresol(9)]) + fb.epb(1, 7, RAW4)
            + fb.shb() + fb.idb(113, 0) + fb.epb(0, 2_000_000, SLL) + fb.epb(1, 3_000_000, RAW4))
    frames, stats = frames_of(write(tmp_path, "sec.pcapng", data))
    assert [(f.linktype, f.iface, f.ts_ns) for f in frames] == [
        (101, 1, 7), (113, 0, 2_000_000_000), (0xFFFF, 1, 2_000_000_000)]
    assert any("interface 1" in w and "undefined" in w for w in stats.warnings), stats.warnings


def test_pcapng_packet_of_undefined_interface_is_counted_and_reported(tmp_path):
    data = fb.shb() + fb.idb(1, 0) + fb.epb(0, 1_000_000, F1) + fb.epb(7, 2_000_000, F2) + fb.epb(0, 3_000_000, F3)
    frames, stats = frames_of(write(tmp_path, "undef.pcapng", data))
    assert [(f.data, f.linktype, f.iface, f.ts_ns) for f in frames] == [
        (F1, 1, 0, 1_000_000_000), (F2, 0xFFFF, 7, 1_000_000_000), (F3, 1, 0, 3_000_000_000)]
    assert stats.frames == 3
    assert len(stats.warnings) == 1
    assert "interface 7" in stats.warnings[0] and str(tmp_path / "undef.pcapng") in stats.warnings[0]


def test_pcapng_packets_before_any_interface(tmp_path):
    data = fb.shb() + fb.spb(F1) + fb.epb(0, 5, F2)
    frames, stats = frames_of(write(tmp_path, "noidb.pcapng", data))
    assert [(f.data, f.linktype) for f in frames] == [(F1, 0xFFFF), (F2, 0xFFFF)]
    assert stats.warnings  # reported, not silently dropped


def test_pcapng_unsupported_interface_linktype_is_a_warning(tmp_path):
    data = (fb.shb() + fb.idb(105, 0) + fb.idb(1, 0)
            + fb.epb(0, 1_000_000, b"\x08\x02" + b"\0" * 30) + fb.epb(1, 2_000_000, F1))
    p = write(tmp_path, "wifi.pcapng", data)
    frames, stats = frames_of(p)
    assert [(f.linktype, f.iface) for f in frames] == [(105, 0), (1, 1)]
    assert stats.frames == 2
    assert len(stats.warnings) == 1
    assert "unsupported link type 105" in stats.warnings[0] and str(p) in stats.warnings[0]
    assert stats.linktypes == {105, 1}


def test_pcapng_idb_options_without_end_marker_and_odd_lengths(tmp_path):
    # options list that just runs to the end of the block (no opt_endofopt), with an odd-length option before
    body = struct.pack("<HHI", 1, 0, 0) + struct.pack("<HH", 2, 3) + b"ab\0\0" + struct.pack("<HHB", 9, 1, 3) + b"\0" * 3
    data = fb.shb() + fb.block(fb.BT_IDB, body) + fb.epb(0, 1_700_000_000_123, F1)
    frames, _ = frames_of(write(tmp_path, "opts.pcapng", data))
    assert [f.ts_ns for f in frames] == [1_700_000_000_123_000_000]


# ============================================================================================ compression, stdin

def _pcap_and_expected():
    recs = [(1_700_000_000 + i, i * 7, fb.ethernet(fb.ipv4("10.0.0.1", "10.0.0.2", 17, fb.udp(i, 53, bytes(i)))))
            for i in range(50)]
    exp = [(r[2], 1_700_000_000_000_000_000 + i * 1_000_000_000 + i * 7_000) for i, r in enumerate(recs)]
    return fb.pcap_file(recs), exp


COMPRESSORS = {"gzip": gzip.compress, "bzip2": bz2.compress, "xz": lzma.compress}


@pytest.mark.parametrize("kind", sorted(COMPRESSORS))
@pytest.mark.parametrize("fmt", ["pcap", "pcapng"])
def test_compressed_inputs(tmp_path, kind, fmt):
    if fmt == "pcap":
        raw, exp = _pcap_and_expected()
    else:
        raw, exp_full = multi_section_pcapng()
        exp = [(e[0], e[3]) for e in exp_full]
    p = write(tmp_path, f"cap.{fmt}.whatever", COMPRESSORS[kind](raw))
    frames, stats = frames_of(p)
    assert [(f.data, f.ts_ns) for f in frames] == exp
    assert stats.compression == kind and stats.format == fmt
    assert stats.bytes_read == len(raw)  # bytes of capture data, after decompression


def test_compressed_twice(tmp_path):
    raw, exp = _pcap_and_expected()
    frames, stats = frames_of(write(tmp_path, "cap.pcap.xz.gz", gzip.compress(lzma.compress(raw))))
    assert [(f.data, f.ts_ns) for f in frames] == exp
    assert stats.format == "pcap"


def test_compressed_too_many_times(tmp_path):
    data, _ = _pcap_and_expected()
    for _ in range(4):
        data = gzip.compress(data)
    p = write(tmp_path, "deep.gz", data)
    with pytest.raises(CaptureError, match="compressed too many times") as ei:
        frames_of(p)
    assert str(p) in str(ei.value)


def _random_pcap(n: int, seed: int = 7):
    rng = random.Random(seed)
    recs = [(1_700_000_000 + i, i, rng.randbytes(rng.randrange(60, 400))) for i in range(n)]
    return fb.pcap_file(recs), [(r[2], 1_700_000_000_000_000_000 + i * 1_000_001_000) for i, r in enumerate(recs)]


@pytest.mark.parametrize("kind", sorted(COMPRESSORS))
def test_truncated_compressed_stream_keeps_earlier_frames(tmp_path, kind):
    raw, exp = _random_pcap(2000)  # ~500 KB: several bzip2 blocks at level 1 (100 KB each)
    comp = bz2.compress(raw, 1) if kind == "bzip2" else COMPRESSORS[kind](raw)
    p = write(tmp_path, "cut.cmp", comp[:len(comp) * 3 // 4])
    frames, stats = frames_of(p, chunk_bytes=65536)
    got = [(f.data, f.ts_ns) for f in frames]
    assert got == exp[:len(got)]
    assert len(exp) // 3 < len(got) < len(exp)
    assert stats.complete is False
    assert stats.warnings and all(str(p) in w for w in stats.warnings)
    assert f"{kind} stream ends early" in stats.warnings[0]


def test_truncated_bzip2_without_a_whole_block_is_a_capture_error(tmp_path):
    raw, _ = _pcap_and_expected()
    comp = bz2.compress(raw)
    p = write(tmp_path, "cut.bz2", comp[:len(comp) // 2])
    _expect_error(p, "bzip2")


def _gzip_header() -> bytes:
    return b"\x1f\x8b\x08\x00" + b"\0\0\0\0" + b"\x00\xff"  # deflate, no flags, mtime 0, xfl 0, OS unknown


def test_gzip_with_invalid_deflate_data_at_start_is_a_capture_error(tmp_path):
    # block header 0b111: final block of the reserved type 3 -> zlib.error "invalid block type"
    p = write(tmp_path, "bad.gz", _gzip_header() + b"\xff" * 32)
    with pytest.raises(CaptureError) as ei:
        frames_of(p)
    assert str(p) in str(ei.value) and "gzip" in str(ei.value)


def test_gzip_with_invalid_deflate_data_mid_stream_is_a_warning(tmp_path):
    raw, exp = _random_pcap(1000)
    # three valid stored deflate blocks (180 KB), then a stored-block header whose NLEN is not ~LEN
    blocks = [raw[i:i + 60_000] for i in (0, 60_000, 120_000)]
    deflate = b"".join(b"\x00" + struct.pack("<HH", len(b), len(b) ^ 0xFFFF) + b for b in blocks)
    deflate += b"\x00" + struct.pack("<HH", 100, 100)
    p = write(tmp_path, "mid.gz", _gzip_header() + deflate + b"\0" * 200)
    frames, stats = frames_of(p)  # default 16 MiB buffer: the damage sits inside the very first buffer fill
    got = [(f.data, f.ts_ns) for f in frames]
    assert got == exp[:len(got)]
    # at least every record inside the first 100 KB survives (the damage is at 180 KB)
    ends = np.cumsum([24 + 16 + len(exp[0][0])] + [16 + len(d) for d, _ in exp[1:]])
    assert len(got) >= int((ends <= 100_000).sum()) > 300
    assert stats.complete is False
    assert any("corrupt" in w and str(p) in w for w in stats.warnings), stats.warnings


_STDIN_SCRIPT = r"""
import json, sys
from egressguard.capture import CaptureFile
from egressguard.errors import CaptureError
try:
    with CaptureFile("-", chunk_bytes=65536, chunk_frames=7) as cf:
        out = []
        for chunk in cf.chunks():
            for f in chunk.frames:
                out.append([bytes(chunk.buf[f["offset"]:f["offset"] + f["caplen"]]).hex(), int(f["ts_ns"])])
    print(json.dumps({"frames": out, "format": cf.stats.format, "compression": cf.stats.compression,
                      "warnings": cf.stats.warnings}))
except CaptureError as exc:
    print(json.dumps({"error": str(exc)}))
"""


def _run_stdin(data: bytes) -> dict:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    res = subprocess.run([sys.executable, "-c", _STDIN_SCRIPT], input=data, capture_output=True, env=env,
                         cwd=str(REPO), timeout=300)
    assert res.returncode == 0, res.stderr.decode()
    return json.loads(res.stdout)


def test_stdin_pipe_plain_pcap_and_gzip_pcapng():
    raw, exp = _pcap_and_expected()
    out = _run_stdin(raw)
    assert out["format"] == "pcap" and out["compression"] == "" and out["warnings"] == []
    assert [(bytes.fromhex(h), ts) for h, ts in out["frames"]] == exp

    ng, ng_exp = multi_section_pcapng()
    out = _run_stdin(gzip.compress(ng))
    assert out["format"] == "pcapng" and out["compression"] == "gzip"
    assert [(bytes.fromhex(h), ts) for h, ts in out["frames"]] == [(e[0], e[3]) for e in ng_exp]

    out = _run_stdin(b"this is not a capture\n")
    assert out["error"].startswith("<stdin>: not a pcap or pcapng capture")


def test_stdin_via_monkeypatched_pipe(monkeypatch):
    raw, exp = _pcap_and_expected()
    r, w = os.pipe()
    with os.fdopen(w, "wb") as wf:
        wf.write(raw)  # fits in the pipe buffer (~4 KB)
    with os.fdopen(r, "r") as stdin:
        monkeypatch.setattr(sys, "stdin", stdin)
        frames, stats = fb.read_capture("-")
    assert [(f.data, f.ts_ns) for f in frames] == exp
    assert stats.format == "pcap"


# ============================================================================================ chunking

def _big_pcap() -> bytes:
    rng = random.Random(1234)
    recs = []
    for i in range(400):
        size = rng.choice([42, 60, 64, 590, 1514, 3000, 9000])
        if i == 150:
            size = 100_000  # larger than a 64 KiB buffer: the buffer must grow
        if i == 300:
            size = 200_001
        recs.append((1_700_000_000 + i, rng.randrange(1_000_000), bytes([i & 0xFF]) * size, size + (i % 3)))
    return fb.pcap_file(recs)


def _big_pcapng() -> bytes:
    rng = random.Random(99)
    be = dict(big_endian=False)
    parts = [fb.shb(), fb.idb(1, 0, opts=[fb.opt_tsresol(9)])]
    for i in range(400):
        size = rng.choice([42, 60, 61, 590, 1514, 3001])
        if i == 100:
            size = 150_003
        data = bytes([i & 0xFF]) * size
        ts = 1_700_000_000_000_000_000 + i * 1_000_003
        kind = i % 7
        if kind == 0:
            parts.append(fb.spb(data, **be))
        elif kind == 1:
            parts.append(fb.pb(0, ts, data, **be))
        elif kind == 2:
            parts.append(fb.isb(0, i, **be) + fb.epb(0, ts, data, opts=[(1, b"c" * 300)], **be))
        elif kind == 3 and i % 5 == 0:  # a new section, alternating byte order, with big option blocks
            be = dict(big_endian=not be["big_endian"])
            parts.append(fb.shb(opts=[(1, b"s" * 2000)], **be)
                         + fb.idb(1, 0, opts=[fb.opt_tsresol(9), (2, b"x" * 1000)], **be)
                         + fb.epb(0, ts, data, **be))
            parts.append(fb.idb(113, 0, **be) + fb.epb(1, ts // 1000, data, **be))
        else:
            parts.append(fb.epb(0, ts, data, **be))
    return b"".join(parts)


@pytest.mark.parametrize("maker", [_big_pcap, _big_pcapng], ids=["pcap", "pcapng"])
def test_tiny_chunks_give_identical_frames(tmp_path, maker):
    p = write(tmp_path, "big.cap", maker())
    ref, ref_stats = frames_of(p)
    assert len(ref) >= 400 and ref_stats.warnings == []
    for kw in (dict(chunk_bytes=65536), dict(chunk_frames=3), dict(chunk_bytes=1, chunk_frames=1),
               dict(chunk_bytes=70_001, chunk_frames=5)):
        got, stats = frames_of(p, **kw)
        assert got == ref, kw
        assert stats.warnings == [] and stats.frames == len(ref)
    # the small settings really did split the input: count chunks and check their sizes
    with CaptureFile(str(p), chunk_bytes=65536, chunk_frames=3) as cf:
        sizes = [len(c.frames) for c in cf.chunks()]
    assert max(sizes) == 3 and len(sizes) >= len(ref) // 3
    assert sum(sizes) == len(ref)


def test_chunk_frames_have_frame_dtype_and_index_the_buffer(tmp_path):
    p = write(tmp_path, "big.pcap", _big_pcap())
    with CaptureFile(str(p), chunk_bytes=65536) as cf:
        for chunk in cf.chunks():
            assert chunk.frames.dtype == FRAME_DTYPE and chunk.buf.dtype == np.uint8
            assert int((chunk.frames["offset"] + chunk.frames["caplen"]).max()) <= len(chunk.buf)


# ============================================================================================ truncation, corruption

@pytest.mark.parametrize("cut", [1, 7, 16, 20])
def test_truncated_last_pcap_record(tmp_path, cut):
    recs = [(1_700_000_000 + i, i, F1) for i in range(5)]
    data = fb.pcap_file(recs)
    assert cut < 16 + len(F1)  # only the last record is cut
    p = write(tmp_path, "cut.pcap", data[:-cut])
    frames, stats = frames_of(p)
    assert [f.ts_ns for f in frames] == [1_700_000_000_000_000_000 + i * 1_000_000_000 + i * 1000 for i in range(4)]
    assert len(stats.warnings) == 1
    assert "truncated" in stats.warnings[0] and str(p) in stats.warnings[0]
    assert stats.complete is False


def test_truncated_inside_record_header(tmp_path):
    data = fb.pcap_file([(1, 0, F1), (2, 0, F2)])
    p = write(tmp_path, "cut.pcap", data + b"\x01\x00\x00\x00\x00\x00")  # 6 bytes of a third header
    frames, stats = frames_of(p)
    assert [f.data for f in frames] == [F1, F2]
    assert len(stats.warnings) == 1 and "truncated" in stats.warnings[0]


def test_truncated_last_pcapng_block(tmp_path):
    data, expected = multi_section_pcapng()
    p = write(tmp_path, "cut.pcapng", data[:-10])
    frames, stats = frames_of(p)
    assert as_tuples(frames) == expected[:-1]
    assert len(stats.warnings) == 1 and "truncated" in stats.warnings[0] and str(p) in stats.warnings[0]
    assert stats.complete is False


def test_truncated_big_record_with_small_buffer(tmp_path):
    data = fb.pcap_file([(1, 0, F1), (2, 0, b"x" * 300_000)])
    p = write(tmp_path, "cutbig.pcap", data[:-1000])
    frames, stats = frames_of(p, chunk_bytes=65536)
    assert [f.data for f in frames] == [F1]
    assert len(stats.warnings) == 1 and "truncated" in stats.warnings[0]


def test_impossible_pcap_record_length(tmp_path):
    data = fb.pcap_file([(1, 0, F1)]) + struct.pack("<IIII", 2, 0, 0xFFFF_FFF0, 60) + b"\0" * 100
    p = write(tmp_path, "corrupt.pcap", data)
    frames, stats = frames_of(p)
    assert [f.data for f in frames] == [F1]
    assert len(stats.warnings) == 1
    assert "impossible record length" in stats.warnings[0] and f"byte {24 + 16 + len(F1)}" in stats.warnings[0]
    assert stats.complete is False


@pytest.mark.parametrize("bad_len", [0, 8, 30, 0x7FFF_FFF0])
def test_impossible_pcapng_block_length(tmp_path, bad_len):
    head = fb.shb() + fb.idb(1, 0) + fb.epb(0, 1, F1)
    p = write(tmp_path, "corrupt.pcapng", head + struct.pack("<II", 6, bad_len) + b"\0" * 64)
    frames, stats = frames_of(p)
    assert [f.data for f in frames] == [F1]
    assert len(stats.warnings) == 1 and "impossible record length" in stats.warnings[0]


def test_pcapng_epb_caplen_beyond_block(tmp_path):
    bad = fb.epb(0, 1, F1)
    bad = bad[:20] + struct.pack("<I", 5000) + bad[24:]  # captured length larger than the block
    p = write(tmp_path, "caplen.pcapng", fb.shb() + fb.idb(1, 0) + fb.epb(0, 1, F2) + bad)
    frames, stats = frames_of(p)
    assert [f.data for f in frames] == [F2]
    assert len(stats.warnings) == 1


# ============================================================================================ not a capture

def _expect_error(path, *fragments):
    with pytest.raises(CaptureError) as ei:
        frames_of(path)
    msg = str(ei.value)
    assert msg.startswith(f"{path}: "), msg
    for frag in fragments:
        assert frag in msg, msg
    return msg


def test_empty_file(tmp_path):
    _expect_error(write(tmp_path, "empty.pcap", b""), "empty")


def test_empty_gzip(tmp_path):
    _expect_error(write(tmp_path, "empty.pcap.gz", gzip.compress(b"")), "empty")


def test_text_file(tmp_path):
    _expect_error(write(tmp_path, "notes.pcap", b"hello, this is text\n" * 20), "not a pcap or pcapng capture",
                  "68 65 6c 6c")


def test_gzipped_text_file(tmp_path):
    _expect_error(write(tmp_path, "notes.pcap.gz", gzip.compress(b"hello, this is text\n")), "not a pcap")


def test_tiny_file(tmp_path):
    _expect_error(write(tmp_path, "tiny.pcap", b"\xd4\xc3"), "not a pcap")


def test_zstd_file(tmp_path):
    _expect_error(write(tmp_path, "cap.pcap.zst", b"\x28\xb5\x2f\xfd" + b"\0" * 40), "zstd")


def test_zip_and_kuznetsov(tmp_path):
    _expect_error(write(tmp_path, "cap.zip", b"PK\x03\x04" + b"\0" * 40), "zip")
    _expect_error(write(tmp_path, "kuz.pcap", b"\x34\xcd\xb2\xa1" + b"\0" * 40), "Kuznetsov")


def test_directory(tmp_path):
    _expect_error(tmp_path, "directory")


def test_missing_file(tmp_path):
    _expect_error(tmp_path / "nope.pcap", "no such file")


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0, reason="root can read a chmod 000 file")
def test_unreadable_file(tmp_path):
    p = write(tmp_path, "secret.pcap", fb.pcap_file([(1, 0, F1)]))
    p.chmod(0)
    try:
        _expect_error(p, "permission denied")
    finally:
        p.chmod(0o600)


def test_permission_error_is_mapped_even_as_root(tmp_path, monkeypatch):
    # the chmod test above cannot run as root; the mapping of the OS error is checked by faking it
    import builtins

    import egressguard.capture.files as files_module

    p = write(tmp_path, "secret.pcap", fb.pcap_file([(1, 0, F1)]))

    def deny(path, *args, **kwargs):
        if str(path) == str(p):
            raise PermissionError(13, "Permission denied", str(path))
        return builtins.open(path, *args, **kwargs)

    monkeypatch.setattr(files_module, "open", deny, raising=False)
    _expect_error(p, "permission denied")


def test_pcapng_section_header_only(tmp_path):
    frames, stats = frames_of(write(tmp_path, "shb.pcapng", fb.shb(opts=[(fb.OPT_COMMENT, b"nothing")])))
    assert frames == [] and stats.warnings == [] and stats.format == "pcapng" and stats.complete


def test_truncated_pcap_file_header(tmp_path):
    _expect_error(write(tmp_path, "short.pcap", fb.pcap_header()[:20]), "truncated pcap file header")


@pytest.mark.parametrize("n", [4, 8, 12, 20])
def test_truncated_pcapng_section_header(tmp_path, n):
    _expect_error(write(tmp_path, "short.pcapng", fb.shb()[:n]), "pcapng section header")


def test_pcapng_bad_byte_order_magic(tmp_path):
    data = bytearray(fb.shb() + fb.idb(1, 0))
    data[8:12] = b"\x11\x22\x33\x44"
    _expect_error(write(tmp_path, "bom.pcapng", bytes(data)), "byte-order magic")


def test_pcapng_major_version_2(tmp_path):
    _expect_error(write(tmp_path, "v2.pcapng", fb.shb(major=2) + fb.idb(1, 0)), "major version 2")
