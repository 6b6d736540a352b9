"""The signature table (payload/signatures.py): byte literals for every tag and its near misses, the kernel against
its numpy twin on random bytes and on every flow of the lab and public captures."""
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import LAB_CAPTURES, PUBLIC_CAPTURES
from egressguard.payload.signatures import app_tags
from egressguard.pipeline import Analyzer, FlowsReady
from egressguard.schema import AppTag
from naive_signatures import app_tags as naive_app_tags


def tags_of(orig: bytes, resp: bytes = b"", proto: int = 6, sport: int = 40000, dport: int = 4444) -> AppTag:
    """The tags of one flow whose directions kept these first bytes."""
    data = np.zeros((1, 2, 64), np.uint8)
    for d, b in enumerate((orig, resp)):
        data[0, d, :len(b)] = np.frombuffer(b, np.uint8)
    fills = np.array([[len(orig), len(resp)]], np.uint32)
    return AppTag(int(app_tags(data, fills, np.array([0]), np.array([proto]), np.array([sport]),
                               np.array([dport]))[0]))


@pytest.mark.parametrize("orig, resp, expected", [
    (b"SSH-2.0-OpenSSH_9.2\r\n", b"", AppTag.SSH),
    (b"", b"ssh-2.0-dropbear\r\n", AppTag.SSH),  # Zeek's dpd.sig matches case-insensitively, either direction
    (b"SSH 2.0", b"", AppTag.NONE),
    (b"\x16\x03\x01\x02\x00\x01", b"", AppTag.TLS | AppTag.TLS_CLIENT_HELLO),
    (b"\x16\x03\x03\x00\x30\x02", b"", AppTag.TLS),
    (b"\x17\x03\x03", b"", AppTag.NONE),
    (b"GET / HTTP/1.1\r\n", b"HTTP/1.1 200 OK\r\n", AppTag.HTTP_REQUEST | AppTag.HTTP_RESPONSE),
    (b"GET /ws HTTP/1.1\r\n", b"HTTP/1.1 101 Switching", AppTag.HTTP_REQUEST | AppTag.HTTP_RESPONSE | AppTag.WEBSOCKET),
    (b"PATCH /x", b"", AppTag.HTTP_REQUEST),
    (b"GETX", b"", AppTag.NONE),
    (b'  \r\n{"id": 1}', b"", AppTag.JSON),
    (b"", b'[1, 2]', AppTag.JSON),
    (b"x{", b"", AppTag.NONE),
    (b"\x10\x0c\x00\x04MQTT\x04", b"", AppTag.MQTT),
    (b"\x10\x82\x01\x00\x06MQIsdp", b"", AppTag.MQTT),
    (b"CONNECT host:22 HTTP/1.1\r\n", b"HTTP/1.1 200 Connection established", AppTag.HTTP_REQUEST
     | AppTag.HTTP_RESPONSE | AppTag.HTTP_CONNECT),
    (b"\x04\x01\x00\x16\xc6\x12\x00\x02\x00", b"\x00\x5a", AppTag.SOCKS4),
    (b"\x04\x01\x00\x16", b"\x01\x5a", AppTag.NONE),
    (b"\x05\x01\x00", b"\x05\x00", AppTag.SOCKS5),
    (b"\x05\x01\x00", b"\x05\x07", AppTag.NONE),
    (b"PROXY TCP4 10.0.0.2 198.18.0.2 40000 22\r\nSSH-2.0-x", b"", AppTag.PROXY_V1),
    (b"\r\n\r\n\x00\r\nQUIT\n\x21\x11\x00\x0c", b"", AppTag.PROXY_V2),
])
def test_tcp_signatures(orig, resp, expected):
    assert tags_of(orig, resp) == expected


def test_port_and_protocol_signatures():
    assert tags_of(b"\x12\x34\x01\x00", proto=17, dport=53) == AppTag.DNS
    assert tags_of(b"\x00\x20\x12\x34", proto=6, dport=53) == AppTag.DNS
    assert tags_of(b"", proto=17, dport=5353) == AppTag.MDNS
    assert tags_of(b"abc", proto=1, sport=8, dport=0) == AppTag.ECHO
    assert tags_of(b"abc", proto=58, sport=128, dport=129) == AppTag.ECHO
    assert tags_of(b"abc", proto=1, sport=3, dport=3) == AppTag.NONE  # an ICMP error is no echo
    assert tags_of(b"SSH-2.0-x", proto=17, dport=22) == AppTag.NONE  # byte signatures are TCP's


def test_rows_without_a_payload_slot_get_port_tags_only():
    data = np.full((1, 2, 16), ord("S"), np.uint8)
    tags = app_tags(data, np.full((1, 2), 16, np.uint32), np.array([-1, -1]), np.array([6, 17]),
                    np.array([1, 1]), np.array([22, 53]))
    assert tags.tolist() == [0, int(AppTag.DNS)]


def _agree(prefix: np.ndarray, fills: np.ndarray, proto, sport, dport) -> None:
    n = len(proto)
    masked = prefix * (np.arange(prefix.shape[2])[None, None, :] < fills[:, :, None])
    got = app_tags(prefix, fills.astype(np.uint32), np.arange(n), proto, sport, dport)
    want = naive_app_tags(masked[:, :, :16], proto, sport, dport)
    assert got.tolist() == want.tolist()


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.binary(max_size=20), st.binary(max_size=20), st.sampled_from([1, 6, 17, 58]),
                          st.sampled_from([0, 8, 22, 53, 128, 129, 5353, 40000]),
                          st.sampled_from([0, 8, 53, 129, 443, 5353])), min_size=1, max_size=20))
def test_kernel_equals_its_numpy_twin_on_random_bytes(flows):
    prefix = np.zeros((len(flows), 2, 20), np.uint8)
    fills = np.zeros((len(flows), 2), np.int64)
    seeds = [b"SSH-", b"\x16\x03", b"GET ", b"HTTP/1.1 101", b" {", b"\x05\x01", b"PROXY TCP4 "]
    for i, (a, b, *_rest) in enumerate(flows):
        for d, raw in enumerate((seeds[i % len(seeds)] + a if i % 2 else a, b)):
            raw = raw[:20]
            prefix[i, d, :len(raw)] = np.frombuffer(raw, np.uint8)
            fills[i, d] = len(raw)
    cols = np.array([f[2:] for f in flows], np.int64).T
    _agree(prefix, fills, *cols)


def _captures():
    out = sorted(LAB_CAPTURES.glob("*.pcap"))
    if PUBLIC_CAPTURES.exists():
        out += sorted(p for p in PUBLIC_CAPTURES.rglob("*") if p.suffix in (".pcap", ".pcapng", ".cap"))
    return out


@pytest.mark.parametrize("path", _captures(), ids=lambda p: p.name)
def test_kernel_equals_its_twin_on_every_flow_of_the_captures(path):
    for event in Analyzer(detectors=[]).analyze(str(path)):
        if isinstance(event, FlowsReady) and len(event.view):
            view, recs = event.view, event.view.records
            prefix = view.prefix(16)
            want = naive_app_tags(prefix, recs["proto"], recs["orig_port"], recs["resp_port"])
            assert view.app.tolist() == want.tolist()
