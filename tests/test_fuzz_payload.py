"""Fuzzing the payload inspectors (SSH, TLS, DNS, HTTP, WebSocket, Stratum JSON-RPC) with random and mutated inputs.

Inputs are random bytes and real payloads (the first bytes of each flow direction of the lab captures and two public
ones, fuzz/seeds.py) mutated the way a hostile peer or a cut capture would: flipped bytes, cuts, inserted junk and
length fields set to 0, 2^15, 2^31 or 2^32-1. Properties: no exception (every inspector documents "any input gives a
result or None"), outputs bounded by their documented limits, work and memory bounded by the input size.

Examples per test: EGRESSGUARD_FUZZ_EXAMPLES (default 60, so the suite stays fast; e.g. 5000 for a long run).
"""
from __future__ import annotations

import os
import sys
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "fuzz"))
import seeds  # noqa: E402  (fuzz/seeds.py: real payloads, shared with the atheris corpus)

from egressguard.payload import dns, http, ssh, stratum, tls, websocket  # noqa: E402
from egressguard.payload.dns_table import decode_dns, name_text  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
import naive_dns  # noqa: E402

EXAMPLES = int(os.environ.get("EGRESSGUARD_FUZZ_EXAMPLES", "60"))
FUZZ = settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                              HealthCheck.data_too_large])
TCP_SEEDS, UDP_SEEDS = seeds.seed_payloads()
# backslashreplace turns one undecodable byte into 4 characters (\xNN)
ESCAPED = 4
EXTREME_LENGTHS = (0, 1, 0x7FFF, 0x8000, 0xFFFF, 0x7FFFFFFF, 0x80000000, 0xFFFFFFFF)


def _by_prefix(prefixes: tuple[bytes, ...], pool=None) -> list[bytes]:
    pool = TCP_SEEDS if pool is None else pool
    found = [s for s in pool if s.startswith(prefixes)]
    assert found, f"no seed payload starts with {prefixes}: are the lab captures there?"
    return found


SSH_SEEDS = _by_prefix((b"SSH-",))
TLS_SEEDS = _by_prefix((b"\x16\x03",))
HTTP_SEEDS = _by_prefix((b"GET ", b"HTTP/1."))
JSON_SEEDS = _by_prefix((b"{",))
DNS_SEEDS = list(UDP_SEEDS) + [s[2:] for s in TCP_SEEDS if len(s) > 14 and int.from_bytes(s[:2], "big") == len(s) - 2]


@st.composite
def mutated(draw, pool: list[bytes]) -> bytes:
    """A real payload with a few mutations: byte flips, cuts, insertions, deletions, extreme length fields."""
    data = bytearray(draw(st.sampled_from(pool)))
    for _ in range(draw(st.integers(0, 6))):
        op = draw(st.integers(0, 5))
        if not data:
            data += draw(st.binary(min_size=1, max_size=16))
            continue
        i = draw(st.integers(0, len(data) - 1))
        if op == 0:
            data[i] = draw(st.integers(0, 255))
        elif op == 1:
            del data[draw(st.integers(0, len(data))):]
        elif op == 2:
            data[i:i] = draw(st.binary(max_size=32))
        elif op == 3:
            del data[i:i + draw(st.integers(1, 64))]
        elif op == 4:  # a length field (2 or 4 bytes, either order) set to an extreme value
            width = draw(st.sampled_from([2, 4]))
            value = draw(st.sampled_from(EXTREME_LENGTHS)) & ((1 << (8 * width)) - 1)
            data[i:i + width] = value.to_bytes(width, draw(st.sampled_from(["big", "little"])))
        else:  # a repeated piece: runs of frames, records, names
            piece = bytes(data[i:i + draw(st.integers(1, 40))])
            data[i:i] = piece * draw(st.integers(1, 20))
    return bytes(data)


def inputs(pool: list[bytes]):
    return st.one_of(st.binary(max_size=600), mutated(pool))


def _bounded(text, limit: int) -> None:
    assert text is None or (isinstance(text, str) and len(text) <= limit), (len(text), limit)


# ------------------------------------------------------------------------------------------------ SSH
def _check_side(side: ssh.SshSide, stream: bytes) -> None:
    _bounded(side.banner, ssh.MAX_BANNER * ESCAPED)
    assert len(side.messages) <= len(stream) // 6 + 1  # each clear-text packet takes at least 6 bytes
    if side.newkeys_at is not None:
        assert 0 < side.newkeys_at <= len(stream)
    if side.kexinit:
        for names in (side.kexinit.kex, side.kexinit.enc_c2s, side.kexinit.mac_s2c, side.kexinit.comp_c2s):
            assert sum(len(n) for n in names) <= 8192 * ESCAPED  # a name-list is at most 8192 bytes (parser limit)
        assert len(side.kexinit.hassh(True)) == 32


@FUZZ
@given(inputs(SSH_SEEDS), inputs(SSH_SEEDS), st.lists(st.integers(-2000, 2000), max_size=40))
def test_ssh_handshake_any_bytes(orig, resp, sizes):
    hs = ssh.parse_handshake(orig, resp)
    banner, at = ssh.find_banner(orig)
    _bounded(banner, ssh.MAX_BANNER * ESCAPED)
    assert 0 <= at <= len(orig)
    if hs is None:
        assert banner is None and ssh.find_banner(resp)[0] is None
        return
    _check_side(hs.orig, orig)
    _check_side(hs.resp, resp)
    for name in (hs.cipher, hs.mac, hs.compression):
        _bounded(name, 8192 * ESCAPED)
    if hs.model is not None:
        assert hs.keystroke_size() > 0 and all(s > 0 for s in hs.tunnelled_keystroke_sizes())
    pa = ssh.post_auth(hs, sizes)
    assert pa.auth_success in (None, True, False)
    assert pa.forward_request is None or pa.forward_request in [abs(s) for s in sizes]


@FUZZ
@given(st.binary(max_size=400), st.sampled_from(EXTREME_LENGTHS), st.integers(0, 9))
def test_ssh_kexinit_name_list_lengths(tail, length, which):
    """A KEXINIT whose n-th name-list claims an extreme length is refused, never read past its end."""
    body = bytes([ssh.MSG_KEXINIT]) + b"\x00" * 16
    for i in range(10):
        n = length if i == which else 3
        body += n.to_bytes(4, "big") + (b"abc" if i != which else tail)
    kex = ssh.parse_kexinit(body)
    if length > 8192 or length > len(tail):
        assert kex is None
    stream = b"SSH-2.0-x\r\n" + (len(body) + 1 + 4).to_bytes(4, "big") + b"\x04" + body + b"\x00" * 4
    _check_side(ssh.parse_side(stream), stream)


# ------------------------------------------------------------------------------------------------ TLS
@FUZZ
@given(inputs(TLS_SEEDS))
def test_tls_client_hello_any_bytes(stream):
    hello = tls.parse_client_hello(stream)
    if hello is not None:
        _bounded(hello.sni, tls.MAX_NAME * ESCAPED)
        assert len(hello.alpn) <= 16 and all(len(a) <= 255 * ESCAPED for a in hello.alpn)
        assert len(hello.versions) <= max(1, len(stream) // 2)
    width = 512
    row = np.zeros((1, width), np.uint8)
    kept = stream[:width]
    row[0, :len(kept)] = np.frombuffer(kept, np.uint8)
    offset, length, status = tls.find_sni(row, np.array([len(kept)]))
    assert status[0] in (0, 1, 2)
    if offset[0] >= 0:
        assert status[0] == 1 and 0 < length[0] and offset[0] + length[0] <= len(kept)
        name = tls.sni_text(bytes(row[0, offset[0]:offset[0] + length[0]]))
        _bounded(name, tls.MAX_NAME * ESCAPED)
        assert tls.parse_client_hello(kept) is not None


@FUZZ
@given(st.lists(inputs(TLS_SEEDS), min_size=1, max_size=8), st.sampled_from([44, 64, 300, 2048]))
def test_tls_find_sni_batch_stays_inside_each_row(streams, width):
    data = np.zeros((len(streams), width), np.uint8)
    fill = np.zeros(len(streams), np.int64)
    for i, s in enumerate(streams):
        s = s[:width]
        data[i, :len(s)] = np.frombuffer(s, np.uint8)
        fill[i] = len(s)
    offset, length, status = tls.find_sni(data, fill)
    found = offset >= 0
    assert ((offset + length)[found] <= fill[found]).all() and (length[found] > 0).all()
    assert set(status.tolist()) <= {0, 1, 2}


# ------------------------------------------------------------------------------------------------ DNS
def _decode(flows: list[tuple[int, list[bytes]]]):
    """The message table of flows given as (protocol, responder-side payloads), read as a flow table keeps them."""
    arrays, seq = naive_dns.kept_arrays([naive_dns.Flow(p, [(1, m, None, 5 + i) for i, m in enumerate(ms)])
                                         for p, ms in flows])
    n = len(flows)
    table = decode_dns(arrays, np.arange(n), np.array([p for p, _ in flows]), np.zeros(n, np.int64), seq)
    names = table.names
    for off in np.concatenate([table.messages["qname"], table.answers["name"], table.answers["target"]]).tolist():
        assert -1 <= off < max(len(names), 1)
        if off >= 0:
            _bounded(name_text(table, off), dns.MAX_NAME * ESCAPED)
    return table


@FUZZ
@given(inputs(DNS_SEEDS))
def test_dns_message_any_bytes(data):
    table = _decode([(17, [data, data[:12]])])
    assert len(table.messages) <= 2
    assert len(table.answers) <= len(data)  # each record takes bytes of its own


@FUZZ
@given(st.lists(inputs(DNS_SEEDS), max_size=5), st.binary(max_size=8))
def test_dns_over_tcp_any_framing(messages, junk):
    stream = b"".join(len(m).to_bytes(2, "big") + m for m in messages) + junk
    table = _decode([(6, [stream])])
    assert len(table.messages) <= len(messages) + 1


@FUZZ
@given(st.integers(0, 255), st.integers(1, 12))
def test_dns_compression_pointer_loops_end(target, hops):
    """Names made only of compression pointers that point at each other (a loop) end, not hang."""
    header = b"\x12\x34\x81\x80\x00\x01\x00\x01\x00\x00\x00\x00"
    pointers = b"".join((0xC000 | (12 + 2 * ((i + 1) % hops))).to_bytes(2, "big") for i in range(hops))
    data = header + pointers + b"\x00\x01\x00\x01" + (0xC000 | (12 + target % (2 * hops))).to_bytes(2, "big") \
        + b"\x00\x01\x00\x01\x00\x00\x00\x3c\x00\x04\x0a\x00\x00\x01"
    _decode([(17, [data])])


# ------------------------------------------------------------------------------------------------ HTTP, WebSocket
@FUZZ
@given(inputs(HTTP_SEEDS))
def test_http_request_host_any_bytes(stream):
    host = http.request_host(stream)
    _bounded(host, http.MAX_HOST * ESCAPED)
    row = np.zeros((1, 8), np.uint8)
    row[0, :min(8, len(stream))] = np.frombuffer(stream[:8], np.uint8)
    assert http.looks_like_request(row).shape == (1,)


@FUZZ
@given(inputs(HTTP_SEEDS), inputs(HTTP_SEEDS))
def test_websocket_any_bytes(orig, resp):
    assert len(websocket.frame_payloads(orig)) <= len(orig)
    body = websocket.http_upgrade_body(orig)
    assert body is None or len(body) <= len(orig)
    streams = websocket.websocket_streams(orig, resp)
    if streams is not None:
        assert len(streams[0]) <= len(orig) and len(streams[1]) <= len(resp)


@FUZZ
@given(st.lists(st.tuples(st.booleans(), st.sampled_from([0, 5, 125, 126, 127]), st.sampled_from(EXTREME_LENGTHS),
                          st.binary(max_size=30)), min_size=1, max_size=20))
def test_websocket_frames_with_extreme_lengths(frames):
    data = b""
    for masked, code, length, payload in frames:
        data += b"\x82" + bytes([(0x80 if masked else 0) | code])
        width = 2 if code == 126 else 8
        data += (length & ((1 << (8 * width)) - 1)).to_bytes(width, "big") if code >= 126 else b""
        data += (b"\x01\x02\x03\x04" if masked else b"") + payload
    out = websocket.frame_payloads(data)
    assert len(out) <= len(data)


# ------------------------------------------------------------------------------------------------ Stratum
@FUZZ
@given(inputs(JSON_SEEDS + HTTP_SEEDS), inputs(JSON_SEEDS + HTTP_SEEDS), st.lists(st.integers(-300, 300), max_size=12))
def test_stratum_session_any_bytes(orig, resp, sizes):
    session = stratum.parse_session(orig, resp)
    if session is not None:
        for value, limit in ((session.login, stratum.MAX_TEXT), (session.agent, stratum.MAX_TEXT),
                             (session.pool_host, stratum.MAX_TEXT), (session.worker, stratum.MAX_WORKER),
                             (session.algorithm, 32), (session.coin, 16)):
            _bounded(value, limit + 3)  # "..." marks a cut
        assert len(session.methods) <= stratum.MAX_METHODS
        assert all(len(m) <= 64 for m in session.methods)
    sv2 = stratum.sv2_handshake(sizes, orig)
    assert sv2 is None or (sv2.act1 == 64 and sv2.records_after <= len(sizes))


class _CountingDecoder:
    """Wraps the Stratum JSON decoder and adds up the characters each call could scan."""

    def __init__(self, inner):
        self.inner = inner
        self.scanned = 0

    def raw_decode(self, text, pos=0):
        self.scanned += len(text) - pos
        return self.inner.raw_decode(text, pos)

    def decode(self, text):
        self.scanned += len(text)
        return self.inner.decode(text)


@pytest.mark.parametrize("line", [b'["\n', b'{"a":"\n', b'[1,\n', b'{"k":[\n'])
def test_json_reader_work_is_linear_in_the_kept_bytes(monkeypatch, line):
    """Lines that each open a value that only the end of the input could close (strings may hold raw newlines with
    strict=False): every retry used to rescan to the end, 64 KiB of them cost 0.3 s per flow. The reader now gives
    up after MAX_JUNK_LINES lines that fail to parse, so the characters scanned stay a small multiple of the input."""
    counting = _CountingDecoder(stratum._DECODER)
    monkeypatch.setattr(stratum, "_DECODER", counting)
    text = line * (stratum.MAX_STREAM // len(line))
    out = stratum.json_messages(text)
    assert out.messages == [] or out.truncated
    assert counting.scanned <= (stratum.MAX_JUNK_LINES + 2) * len(text)


# ------------------------------------------------------------------------------------------------ memory
HUGE_LENGTH_INPUTS = {
    "ssh packet length 2^32-1": b"SSH-2.0-x\r\n\xff\xff\xff\xff\x04\x14" + b"\x00" * 64,
    "ssh name-list 2^32-1": b"SSH-2.0-x\r\n\x00\x00\x01\x00\x04\x14" + b"\x00" * 16 + b"\xff\xff\xff\xff" + b"a" * 200,
    "tls record and hello 2^24": b"\x16\x03\x01\xff\xff\x01\xff\xff\xff\x03\x03" + b"\x00" * 40,
    "tls extension 2^16": b"\x16\x03\x01\x00\x40\x01\x00\x00\x3c\x03\x03" + b"\x00" * 33 + b"\x00\x02\x00\x00\x01\x00"
                          + b"\xff\xff\x00\x00\xff\xff",
    "websocket frame 2^63": b"\x82\xff" + (1 << 63).to_bytes(8, "big") + b"\x01\x02\x03\x04" + b"x" * 50,
    "dns counts 65535": b"\x12\x34\x81\x80\xff\xff\xff\xff\xff\xff\xff\xff" + b"\xc0\x0c" * 30,
    "http content-length 2^62": b"POST / HTTP/1.1\r\nContent-Length: 4611686018427387904\r\n\r\n"
                                b'{"method":"getwork"}',
    "http chunk size 2^64": b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nffffffffffffffff\r\nabc",
    "json integer of 10^5 digits": b'{"id":' + b"9" * 100_000 + b',"method":"mining.subscribe"}\n',
}


def _run_every_inspector(data: bytes) -> None:
    ssh.parse_handshake(data, data)
    tls.parse_client_hello(data)
    _decode([(17, [data]), (6, [data])])
    http.request_host(data)
    websocket.frame_payloads(data)
    websocket.websocket_streams(data, data)
    stratum.parse_session(data, data)


@pytest.mark.parametrize("name", sorted(HUGE_LENGTH_INPUTS))
def test_length_fields_never_drive_allocation(name):
    """A length field of 2^32 (or 2^63) must not allocate what it claims: peak Python allocation stays within a
    small multiple of the input (tracemalloc sees every Python-level allocation, bytes and lists included)."""
    data = HUGE_LENGTH_INPUTS[name]
    _run_every_inspector(data)  # warm caches and imports outside the measurement
    tracemalloc.start()
    try:
        _run_every_inspector(data)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak <= 2_000_000 + 40 * len(data), f"{name}: peak {peak} bytes for a {len(data)}-byte input"
