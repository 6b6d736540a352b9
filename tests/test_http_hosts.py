"""The host a request names, for many requests at once (payload/http.py request_hosts, a numba pass) against the
one-request reader request_host: on byte literals, on mutated requests, and on every request of the captures."""
import random

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import LAB_CAPTURES, PUBLIC_CAPTURES
from egressguard.payload.http import request_host, request_hosts
from egressguard.pipeline import Analyzer, FlowsReady
from egressguard.schema import AppTag

WIDTH = 256
REQUESTS = [
    b"GET / HTTP/1.1\r\nHost: Example.COM:8080\r\n\r\n", b"CONNECT a.b:443 HTTP/1.1\r\n\r\n",
    b"GET / HTTP/1.0\r\nX: y\r\nhost : x.y \r\n\r\n", b"POST /x HTTP/1.1\nHOST:\t[::1]:80\n\n",
    b"GET / HTTP/1.2\r\nHost: a\r\n\r\n", b"GET / HTTP/1.1\r\n\r\nHost: after.the.head\r\n",
    b"GET / HTTP/1.1\r\nHost: a\rb\r\n\r\n", b"GET / HTTP/1.1\r\nHost: pypi.org.\r\n\r\n", b"GET /",
    b"GET / HTTP/1.1\r\nHost:\r\n\r\n", b"GET / HTTP/1.1\r\nHost: a:b:c\r\n\r\n", b"\r\nHost: x\r\n",
]


def hosts(streams: list[bytes]) -> list:
    data = np.zeros((len(streams), WIDTH), np.uint8)
    fill = np.zeros(len(streams), np.int64)
    for i, s in enumerate(streams):
        s = s[:WIDTH]
        data[i, :len(s)] = np.frombuffer(s, np.uint8)
        fill[i] = len(s)
    return request_hosts(data, fill)


def test_byte_literals():
    assert hosts(REQUESTS) == [request_host(r) for r in REQUESTS]
    assert hosts(REQUESTS)[:4] == ["example.com", "a.b", "x.y", "::1"]


def test_mutated_requests():
    rng = random.Random(3)
    streams = []
    for _ in range(5000):
        s = bytearray(rng.choice(REQUESTS))
        for _ in range(rng.randrange(4)):
            if s:
                s[rng.randrange(len(s))] = rng.choice(b"\r\n :\tHhOoSsTt[]x.")
        streams.append(bytes(s))
    assert hosts(streams) == [request_host(s) for s in streams]


@settings(max_examples=300, deadline=None)
@given(st.lists(st.binary(max_size=300), min_size=1, max_size=10))
def test_any_bytes(streams):
    streams = [b"GET / HTTP/1.1\r\nHost: " + s if i % 2 else s for i, s in enumerate(streams)]
    assert hosts(streams) == [request_host(s[:WIDTH]) for s in streams]


def _captures():
    out = sorted(LAB_CAPTURES.glob("*.pcap"))
    if PUBLIC_CAPTURES.exists():
        out += sorted(p for p in PUBLIC_CAPTURES.rglob("*") if p.suffix in (".pcap", ".pcapng", ".cap"))
    return out


@pytest.mark.parametrize("path", _captures(), ids=lambda p: p.name)
def test_every_request_of_the_captures(path):
    for event in Analyzer(detectors=[]).analyze(str(path)):
        if isinstance(event, FlowsReady) and len(event.view):
            view = event.view
            rows = np.flatnonzero(view.tagged(AppTag.HTTP_REQUEST) & (view.records["slot"] >= 0))
            names = view.server_names
            for row in rows.tolist():
                want = request_host(view.kept_stream(row, 0)[:1024])
                assert (names.name[row] if names.source[row] == 2 else None) == want
