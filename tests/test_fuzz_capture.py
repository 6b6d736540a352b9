"""Fuzzing the capture readers (and what follows them) with random and mutated pcap / pcapng bytes.

Seeds are real captures (lab recordings, two public pcapng files read in place) and a pcapng written by
tests/framebuilders.py with several sections and interfaces. Mutations aim at the fields a reader trusts: record and
block lengths (0, 1, impossible, 2^32-1), interface ids, byte-order magics, cuts anywhere, and compression wrappers
(gzip/bzip2/xz, whole or cut off). Properties: the reader either raises CaptureError (the documented error, which the
CLI turns into exit 3) or yields frames that lie inside their buffer and are bounded by the input; a warning says why
whenever reading stopped early; memory stays bounded (a gzip bomb is streamed, not inflated into memory).

Examples per test: EGRESSGUARD_FUZZ_EXAMPLES (default 60; e.g. 2000 for a long run).
"""
from __future__ import annotations

import bz2
import gzip
import json
import lzma
import os
import random
import struct
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import framebuilders as fb
from conftest import LAB_CAPTURES, PUBLIC_CAPTURES
from egressguard.capture import CaptureFile
from egressguard.capture import records
from egressguard.decode import Decoder
from egressguard.errors import CaptureError
from egressguard.schema import FRAME_DTYPE

EXAMPLES = int(os.environ.get("EGRESSGUARD_FUZZ_EXAMPLES", "60"))
FUZZ = settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                              HealthCheck.data_too_large,
                                                                              HealthCheck.function_scoped_fixture])
SEED_BYTES = 12_000  # the first records of each seed are enough to reach every block type it has


def _synthetic_pcapng() -> bytes:
    """Two sections (both byte orders), three interfaces with different resolutions, every packet block type."""
    frame = fb.ethernet(fb.ipv4("10.0.0.1", "10.0.0.2", 6, fb.tcp(40000, 22, b"SSH-2.0-x\r\n")))
    return b"".join([
        fb.shb(), fb.idb(1, 0, opts=[fb.opt_tsresol(9)]), fb.idb(113, 96),
        fb.epb(0, 1_700_000_000_000_000_000, frame), fb.epb(1, 1_700_000_000_000_000, fb.sll(frame[14:])),
        fb.spb(frame), fb.pb(0, 1_700_000_000_000_000_001, frame), fb.nrb(), fb.isb(0, 5), fb.custom_block(),
        fb.shb(big_endian=True), fb.idb(101, 0, big_endian=True, opts=[fb.opt_tsresol(0x80 | 20)]),
        fb.epb(0, 1 << 40, frame[14:], big_endian=True), fb.dsb(big_endian=True),
    ])


def _seeds() -> list[bytes]:
    out = [_synthetic_pcapng()]
    for name in ("stratum-v1-proxy.pcap", "ssh-reverse-idle.pcap", "egress-policy.pcap"):
        out.append((LAB_CAPTURES / name).read_bytes()[:SEED_BYTES])
    for rel in ("nesfit-DI-cryptominingdetection/PCAPs/xmr-eu1.nanopool.org.pcapng", "ntop-nDPI/dns.pcap"):
        if (PUBLIC_CAPTURES / rel).exists():
            out.append((PUBLIC_CAPTURES / rel).read_bytes()[:SEED_BYTES])
    return out


SEEDS = _seeds()


def _field_offsets(data: bytes) -> list[tuple[int, int]]:
    """(offset, width) of the length, caplen and interface fields of each record or block of a capture."""
    out: list[tuple[int, int]] = []
    if data[:4] == b"\x0a\x0d\x0d\x0a":
        pos, endian = 0, "<"
        while pos + 12 <= len(data):
            if data[pos:pos + 4] == b"\x0a\x0d\x0d\x0a":
                endian = ">" if data[pos + 8:pos + 12] == b"\x1a\x2b\x3c\x4d" else "<"
            btype, blen = struct.unpack_from(endian + "II", data, pos)
            out += [(pos + 4, 4), (pos + 8, 4)]  # block length; interface id / byte-order magic / link type
            if btype in (2, 6):
                out += [(pos + 20, 4), (pos + 24, 4), (pos + blen - 4, 4)]  # caplen, wirelen, trailing length
            if blen < 12 or blen % 4:
                break
            pos += blen
    elif len(data) >= 24:
        endian = "<" if data[:4] in (b"\xd4\xc3\xb2\xa1", b"\x4d\x3c\xb2\xa1") else ">"
        out.append((20, 4))  # link type
        pos = 24
        while pos + 16 <= len(data):
            out += [(pos + 8, 4), (pos + 12, 4)]  # caplen, wirelen
            (caplen,) = struct.unpack_from(endian + "I", data, pos + 8)
            pos += 16 + caplen
    return out


LENGTHS = (0, 1, 3, 11, 12, 16, 28, 32, 0xFFFF, records.MAX_FRAME + 1, records.MAX_BLOCK + 4, 0x7FFFFFFF,
           0xFFFFFFFC, 0xFFFFFFFF)


@st.composite
def mutated_capture(draw) -> bytes:
    data = bytearray(draw(st.sampled_from(SEEDS)))
    fields = _field_offsets(bytes(data))
    for _ in range(draw(st.integers(1, 5))):
        op = draw(st.integers(0, 4))
        if op <= 1 and fields:  # a length, caplen or interface field set to an extreme value
            off, width = draw(st.sampled_from(fields))
            value = draw(st.sampled_from(LENGTHS + (2, 7, 0xFFFE)))
            data[off:off + width] = value.to_bytes(width, draw(st.sampled_from(["little", "big"])))
        elif op == 2 and data:
            data[draw(st.integers(0, len(data) - 1))] = draw(st.integers(0, 255))
        elif op == 3:
            del data[draw(st.integers(0, len(data))):]
        else:
            i = draw(st.integers(0, len(data)))
            data[i:i] = draw(st.binary(max_size=24))
    return bytes(data[:len(SEEDS[0]) * 8 + SEED_BYTES])


@st.composite
def wrapped(draw, inner) -> bytes:
    """Raw, or compressed (gzip, bzip2, xz), possibly twice, possibly cut off or with a flipped byte."""
    data = draw(inner)
    for _ in range(draw(st.sampled_from([0, 0, 1, 1, 2]))):
        data = draw(st.sampled_from([gzip.compress, bz2.compress, lzma.compress]))(data)
        if draw(st.booleans()):
            data = data[:draw(st.integers(0, len(data)))]
        elif draw(st.booleans()) and len(data) > 12:
            i = draw(st.integers(10, len(data) - 1))
            data = data[:i] + bytes([data[i] ^ draw(st.integers(1, 255))]) + data[i + 1:]
    return data


def _decompressed_bound(data: bytes) -> int:
    """An upper bound on the capture bytes behind `data` (what the inner decompressors could yield)."""
    return max(len(data), 1) * 1100  # bzip2 and xz can expand ~1000x on runs; this input is never a bomb


def read_all(path: Path, **kw) -> tuple[int, list[str], bool]:
    """Read a capture to the end checking each chunk; returns (frames, warnings, complete)."""
    n = 0
    decoder = Decoder()
    with CaptureFile(str(path), **kw) as cf:
        for chunk in cf.chunks():
            frames = chunk.frames
            assert frames.dtype == FRAME_DTYPE and chunk.buf.dtype == np.uint8
            if len(frames):
                assert int((frames["offset"].astype(np.int64) + frames["caplen"]).max()) <= len(chunk.buf)
                assert int(frames["caplen"].max()) <= records.MAX_FRAME
                packets = decoder.decode_batch(chunk.buf, frames)
                assert len(packets) == len(frames)
                assert (packets["payload_caplen"] <= packets["payload_bytes"]).all()
            n += len(frames)
        stats = cf.stats
    assert stats.frames == n
    if not stats.complete:
        assert stats.warnings, "reading stopped early without a warning saying why"
    return n, list(stats.warnings), stats.complete


def _check(tmp_path: Path, data: bytes, **kw) -> None:
    path = tmp_path / "fuzz.cap"
    path.write_bytes(data)
    try:
        n, warnings, _ = read_all(path, **kw)
    except CaptureError as exc:
        assert str(exc).startswith(str(path)) and "\n" not in str(exc)
        return
    assert n <= _decompressed_bound(data) // 12  # every record takes at least 12 bytes (pcapng SPB header...)
    assert all(w.startswith(str(path)) for w in warnings)


@FUZZ
@given(data=wrapped(mutated_capture()), small=st.booleans())
def test_mutated_captures_read_or_fail_cleanly(tmp_path, data, small):
    kw = dict(chunk_bytes=1, chunk_frames=7) if small else {}
    _check(tmp_path, data, **kw)


@FUZZ
@given(data=st.one_of(st.binary(max_size=2000),
                      st.sampled_from([b"\xd4\xc3\xb2\xa1", b"\x0a\x0d\x0d\x0a", b"\x1f\x8b", b"BZh", b"\xfd7zXZ\x00"])
                      .flatmap(lambda magic: st.binary(max_size=600).map(lambda rest: magic + rest))))
def test_random_bytes_behind_every_magic(tmp_path, data):
    _check(tmp_path, data)


@FUZZ
@given(iface=st.sampled_from([2, 3, 255, 65535, 65536, 0x7FFFFFFF, 0xFFFFFFFF]), n_idb=st.integers(0, 2))
def test_bogus_interface_ids_are_counted_as_undecodable(tmp_path, iface, n_idb):
    frame = fb.ethernet(fb.ipv4("10.0.0.1", "10.0.0.2", 17, fb.udp(1, 2, b"x")))
    data = fb.shb() + b"".join(fb.idb(1) for _ in range(n_idb)) + fb.epb(iface, 5, frame) + fb.epb(0, 6, frame)
    path = tmp_path / "ifaces.pcapng"
    path.write_bytes(data)
    frames, stats = fb.read_capture(path)
    assert len(frames) == 2
    assert frames[0].linktype == 0xFFFF and frames[0].iface == min(iface, 0xFFFF)
    assert any("undefined interface" in w for w in stats.warnings)
    assert frames[1].linktype == (1 if n_idb else 0xFFFF)


@pytest.mark.parametrize("blen", [0, 4, 8, 12, 13, 0xFFFFFFFC, 0xFFFFFFFF])
def test_zero_and_huge_block_lengths_stop_with_a_warning(tmp_path, blen):
    frame = fb.ethernet(fb.ipv4("10.0.0.1", "10.0.0.2", 17, fb.udp(1, 2, b"x")))
    good = fb.shb() + fb.idb(1) + fb.epb(0, 5, frame)
    bad = bytearray(fb.epb(0, 6, frame))
    bad[4:8] = struct.pack("<I", blen)
    path = tmp_path / "blen.pcapng"
    path.write_bytes(good + bytes(bad) + fb.epb(0, 7, frame))
    n, warnings, complete = read_all(path)
    assert n == 1 and not complete
    assert any(f"at byte {len(good)}" in w for w in warnings)


def test_gzip_bomb_is_streamed_in_bounded_memory(tmp_path):
    """64 MiB of zero-length pcap records in a 64 KiB gzip file: every record is read (4 Mi frames), while the peak
    of traced allocations (numpy buffers included) stays far below the inflated size."""
    inflated = 64 << 20
    header = fb.pcap_header()
    comp = gzip.compress(header + bytes(inflated), compresslevel=9)
    path = tmp_path / "bomb.pcap.gz"
    path.write_bytes(comp)
    assert len(comp) < inflated // 500
    tracemalloc.start()
    try:
        with CaptureFile(str(path)) as cf:
            n = sum(len(c.frames) for c in cf.chunks())
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert n == inflated // 16
    assert peak < 48 << 20, f"peak {peak >> 20} MiB while streaming a {inflated >> 20} MiB bomb"


@pytest.mark.parametrize("cut", [10, 11, 100, 1000, -9, -1])
def test_truncated_gzip_at_every_kind_of_place(tmp_path, cut):
    """A gzip stream cut in its header, in the deflate data or in its trailer: exit-3 error or a warning."""
    rng = random.Random(8)  # payloads that do not compress, so every cut lands inside real data
    raw = fb.pcap_file([(1_700_000_000 + i, 0, fb.ethernet(fb.ipv4("10.0.0.1", "10.0.0.2", 17,
                                                                   fb.udp(1, 2, rng.randbytes(1000)))))
                        for i in range(50)])
    comp = gzip.compress(raw)
    assert len(comp) > 40_000
    path = tmp_path / "cut.pcap.gz"
    path.write_bytes(comp[:cut])
    try:
        n, warnings, complete = read_all(path)
    except CaptureError as exc:
        assert "gzip" in str(exc) or "empty" in str(exc) or "truncated" in str(exc)
        return
    assert not complete and warnings and n < 50


PIPELINE_EXAMPLES = max(5, EXAMPLES // 4)


@settings(max_examples=PIPELINE_EXAMPLES, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                 HealthCheck.function_scoped_fixture])
@given(data=mutated_capture())
def test_mutated_captures_through_the_whole_pipeline(tmp_path, data):
    """Decode, flow table (tiny, so evictions happen), detectors and JSONL records on mutated real captures: no
    exception but CaptureError, every record serialisable as strict JSON."""
    from egressguard.flows import FlowSettings
    from egressguard.pipeline import Analyzer, CaptureDone, FlowsReady, Settings
    from egressguard.report.jsonl import dumps
    from egressguard.report.records import finding_record, summary_record

    path = tmp_path / "fuzz.cap"
    path.write_bytes(data)
    analyzer = Analyzer(Settings(flows=FlowSettings(capacity=16, payload_slots=4)))
    try:
        for event in analyzer.analyze(str(path)):
            if isinstance(event, FlowsReady):
                for f in event.result.findings:
                    json.loads(dumps(finding_record(f)))
            elif isinstance(event, CaptureDone):
                json.loads(dumps(summary_record(event.summary)))
    except CaptureError:
        pass


@pytest.mark.parametrize("seconds", [-(1 << 63), (1 << 63) - 1, (1 << 33), -(1 << 40)])
def test_impossible_if_tsoffset_is_a_warning_not_a_crash(tmp_path, seconds):
    """Found by fuzz/fuzz_capture.py (atheris): an if_tsoffset of 2^63-1 seconds overflowed int64 when converted
    to nanoseconds (OverflowError). The offset is now ignored with a warning naming the interface."""
    frame = fb.ethernet(fb.ipv4("10.0.0.1", "10.0.0.2", 17, fb.udp(1, 2, b"x")))
    path = tmp_path / "offset.pcapng"
    path.write_bytes(fb.shb() + fb.idb(1, opts=[fb.opt_tsoffset(seconds)]) + fb.epb(0, 5, frame))
    frames, stats = fb.read_capture(path)
    assert len(frames) == 1 and frames[0].ts_ns == 5000  # raw 5 us, offset ignored
    assert any("impossible if_tsoffset" in w and "interface 0" in w for w in stats.warnings)


def test_atheris_crash_input_reads_cleanly(tmp_path):
    """The input atheris wrote (crash-8204962e...): an SHB, then an IDB whose options hold if_tsoffset
    0x8c0e... seconds, then a block of junk."""
    data = bytes.fromhex(
        "0a0d0d0a1c0000004d3c2b1a01000000ffffffffffffffff1c00000001000000480000000000000000000000140000000e00008c"
        "4c000000c100000000006106cc9e580b2a0000002a000000ffffffffffff0a6e250108000604000142bae9eebddc0a757500")
    _check(tmp_path, data)
