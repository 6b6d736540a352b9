"""Carrier peeling (payload/carriers.py), the view's `carriers`, and what the detectors make of flows inside
carriers, on byte literals and on the lab's carrier captures (captures/carriers, labels.csv)."""
from __future__ import annotations

import base64
import csv
import json
import re
import struct
import zlib
from functools import cache

import numpy as np
import pytest
from conftest import LAB_CAPTURES
from hypothesis import given, settings
from hypothesis import strategies as st

from egressguard.payload.carriers import _peel, candidates, deframe, frames, peel

SSH = b"SSH-2.0-OpenSSH_9.2p1\r\n"
STRATUM = b'{"id":1,"method":"mining.subscribe","params":["cgminer/4.10"]}\n'


def ws_frame(payload: bytes, opcode: int = 2, mask: bytes | None = b"\x01\x02\x03\x04", fin: bool = True,
             rsv1: bool = False) -> bytes:
    """One RFC 6455 frame (7/16/64-bit length chosen by size)."""
    head = bytes([(0x80 if fin else 0) | (0x40 if rsv1 else 0) | opcode])
    m = 0x80 if mask else 0
    n = len(payload)
    if n < 126:
        head += bytes([m | n])
    elif n < 65536:
        head += bytes([m | 126]) + struct.pack(">H", n)
    else:
        head += bytes([m | 127]) + struct.pack(">Q", n)
    if mask:
        payload = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        head += mask
    return head + payload


UPGRADE = (b"GET /?dst=ssh.example.net:22 HTTP/1.1\r\nHost: relay:8000\r\nUpgrade: websocket\r\n"
           b"Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n")
SWITCHED = b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n"


# ------------------------------------------------------------------------------------------------ byte literals
def test_connect_target_and_offsets():
    req = b"CONNECT ssh.example.net:443 HTTP/1.1\r\nHost: ssh.example.net:443\r\n\r\n"
    rsp = b"HTTP/1.1 200 Connection established\r\n\r\n"
    c = peel(req + SSH, rsp + SSH)
    assert c.chain == ("http_connect",) and c.target == ("ssh.example.net", 443)
    assert c.offset == (len(req), len(rsp)) and c.inner(req + SSH, rsp + SSH) == (SSH, SSH)
    assert c.target_text == "ssh.example.net:443"


def test_connect_after_407_and_optimistic_client():
    req = b"CONNECT 10.0.0.9:22 HTTP/1.1\r\nHost: 10.0.0.9:22\r\n\r\n"
    auth = b"CONNECT 10.0.0.9:22 HTTP/1.1\r\nProxy-Authorization: Basic dTpw\r\n\r\n"
    deny = b"HTTP/1.1 407 Proxy Authentication Required\r\nContent-Length: 5\r\n\r\nnope!"
    ok = b"HTTP/1.0 200 OK\r\n\r\n"
    c = peel(req + auth + SSH, deny + ok + SSH)
    assert c.target == ("10.0.0.9", 22) and c.inner(req + auth + SSH, deny + ok + SSH) == (SSH, SSH)
    c = peel(req + SSH, b"")  # the proxy's answer was not kept: the client's side still peels
    assert c.chain == ("http_connect",) and c.inner(req + SSH, b"")[0] == SSH


def test_connect_refused_or_malformed_is_not_a_carrier():
    req = b"CONNECT ssh.example.net:443 HTTP/1.1\r\n\r\n"
    assert peel(req, b"HTTP/1.1 403 Forbidden\r\n\r\n") is None
    assert peel(b"CONNECT ssh.example.net HTTP/1.1\r\n\r\n", b"") is None  # no port
    assert peel(b"CONNECT a:99999 HTTP/1.1\r\n\r\n", b"") is None
    assert peel(b"CONNECT ssh.example.net:443 HTTP/1.1\r\nHost: x", b"") is None  # head never ends


def test_socks4_and_4a():
    req = b"\x04\x01\x00\x16" + bytes([198, 18, 0, 6]) + b"user\x00"
    c = peel(req + SSH, b"\x00\x5a\x00\x00\x00\x00\x00\x00" + SSH)
    assert c.chain == ("socks4",) and c.target == ("198.18.0.6", 22) and c.inner(req + SSH, b"\x00\x5a" + 6 * b"\0"
                                                                                   + SSH) == (SSH, SSH)
    req4a = b"\x04\x01\x01\xbb\x00\x00\x00\x01\x00pool.example\x00"
    c = peel(req4a + STRATUM, b"")
    assert c.target == ("pool.example", 443) and c.inner(req4a + STRATUM, b"")[0] == STRATUM
    assert peel(req, b"\x00\x5b" + 6 * b"\0") is None  # rejected
    assert peel(b"\x04\x01\x00\x16\x01\x02\x03\x04user", b"") is None  # user id never ends


@pytest.mark.parametrize("atyp,addr,host", [
    (1, bytes([198, 18, 0, 7]), "198.18.0.7"),
    (3, b"\x10pool.example.net", "pool.example.net"),
    (4, bytes(15) + b"\x01", "::1"),
])
def test_socks5_address_types(atyp, addr, host):
    req = b"\x05\x01\x00" + b"\x05\x01\x00" + bytes([atyp]) + addr + b"\x0d\x05"
    rsp = b"\x05\x00" + b"\x05\x00\x00\x01" + bytes(6)
    c = peel(req + STRATUM, rsp + b'{"id":1}\n')
    assert c.chain == ("socks5",) and c.target == (host, 3333)
    assert c.inner(req + STRATUM, rsp + b'{"id":1}\n') == (STRATUM, b'{"id":1}\n')


def test_socks5_user_password_and_refusals():
    req = b"\x05\x02\x00\x02" + b"\x01\x03bob\x02pw" + b"\x05\x01\x00\x01" + bytes([10, 0, 0, 1]) + b"\x00\x16"
    rsp = b"\x05\x02" + b"\x01\x00" + b"\x05\x00\x00\x01" + bytes(6)
    c = peel(req + SSH, rsp + SSH)
    assert c.target == ("10.0.0.1", 22) and c.inner(req + SSH, rsp + SSH) == (SSH, SSH)
    assert peel(req, b"\x05\xff") is None  # no acceptable method
    assert peel(req, b"\x05\x02\x01\x01") is None  # authentication failed
    ok = b"\x05\x01\x00\x05\x01\x00\x01" + bytes([10, 0, 0, 1]) + b"\x00\x16"
    assert peel(ok, b"\x05\x00\x05\x05\x00\x01" + bytes(6)) is None  # connection refused
    assert peel(b"\x05\x01\x00\x05\x01\x00\x09" + bytes(8), b"") is None  # no such address type


def test_websocket_target_deframing_and_control_frames():
    client = UPGRADE + ws_frame(SSH[:10]) + ws_frame(b"", opcode=9) + ws_frame(SSH[10:])
    server = SWITCHED + ws_frame(SSH, mask=None) + ws_frame(b"x" * 300, mask=None)
    c = peel(client, server)
    assert c.chain == ("websocket",) and c.target == ("ssh.example.net", 22)
    inner = c.inner(client, server)
    assert inner[0] == SSH and inner[1] == SSH + b"x" * 300
    assert c.details["websocket"]["host"] == "relay:8000"


def test_websocket_text_messages_fragmented_and_deflated():
    msg = b'{"type":"auth","params":{"site_key":"k","user":null}}'
    data = ws_frame(msg[:20], opcode=1, fin=False) + ws_frame(b"", opcode=10) + ws_frame(msg[20:], opcode=0)
    assert deframe(data) == msg + b"\n"
    comp = zlib.compressobj(wbits=-15)
    packed = comp.compress(msg) + comp.flush(zlib.Z_SYNC_FLUSH)
    assert deframe(ws_frame(packed[:-4], opcode=1, rsv1=True)) == msg + b"\n"
    big = b"y" * 70000
    assert frames(ws_frame(big, mask=None))[0][3] == big
    cut = ws_frame(b"z" * 500)[:100]  # the flow kept only part of a frame
    assert deframe(cut) == b"z" * (100 - 8)


def test_wstunnel_jwt_target():
    claims = base64.urlsafe_b64encode(json.dumps({"id": "x", "p": "ReverseTcp", "r": "10.1.2.3", "rp": 2222})
                                      .encode()).rstrip(b"=").decode()
    req = (f"GET /v1/events HTTP/1.1\r\nHost: relay\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
           f"Sec-WebSocket-Protocol: v1, authorization.bearer.eyJhbGciOiJIUzI1NiJ9.{claims}.sig\r\n\r\n").encode()
    c = peel(req, b"")
    assert c.chain == ("websocket",) and c.target == ("10.1.2.3", 2222)


def test_plain_get_and_refused_upgrade_are_not_carriers():
    assert peel(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n", b"HTTP/1.1 200 OK\r\n\r\n") is None
    assert peel(UPGRADE, b"HTTP/1.1 403 Forbidden\r\n\r\n") is None


def test_proxy_v1_v2_and_nesting():
    v1 = b"PROXY TCP4 10.77.0.2 198.18.0.5 40000 7022\r\n"
    c = peel(v1 + SSH, SSH)
    assert c.chain == ("proxy_v1",) and c.target is None and c.inner(v1 + SSH, SSH) == (SSH, SSH)
    assert c.details["proxy_v1"]["destination"] == "198.18.0.5:7022"
    addrs = bytes([10, 77, 0, 2, 198, 18, 0, 5]) + struct.pack(">HH", 40000, 7022)
    v2 = b"\r\n\r\n\x00\r\nQUIT\n" + b"\x21\x11" + struct.pack(">H", len(addrs) + 4) + addrs + b"\x04\x00\x01\x00"
    connect = b"CONNECT pool.example:3333 HTTP/1.1\r\n\r\n"
    c = peel(v2 + connect + STRATUM, b"HTTP/1.1 200 OK\r\n\r\n")
    assert c.chain == ("proxy_v2", "http_connect") and c.target == ("pool.example", 3333)
    assert c.inner(v2 + connect + STRATUM, b"")[0] == STRATUM
    assert peel(b"PROXY TCP9 a b c d\r\n", b"") is None
    assert peel(b"\r\n\r\n\x00\r\nQUIT\n\x11\x11\x00\x00", b"") is None  # version 1 in the binary header


def test_connect_then_websocket():
    connect = b"CONNECT relay.example:80 HTTP/1.1\r\n\r\n"
    ok = b"HTTP/1.1 200 Connection established\r\n\r\n"
    client = connect + UPGRADE + ws_frame(SSH)
    server = ok + SWITCHED + ws_frame(SSH, mask=None)
    c = peel(client, server)
    assert c.chain == ("http_connect", "websocket")
    assert c.targets == (("http_connect", "relay.example", 80), ("websocket", "ssh.example.net", 22))
    assert c.inner(client, server) == (SSH, SSH) and c.text == "http_connect > websocket"


def test_prefilter_picks_carrier_openings_only():
    rows = [(b"CONNECT a:1 HTTP/1.1", b""), (b"\x04\x01\x00\x16\x01\x02\x03\x04", b""), (b"\x05\x01\x00", b""),
            (b"GET /ws HTTP/1.1", b"HTTP/1.1 101 Sw"), (b"GET /ws HTTP/1.1", b""), (b"PROXY TCP4 ", b""),
            (b"\r\n\r\n\x00\r\nQUIT\n\x21", b""),
            (b"GET / HTTP/1.1", b"HTTP/1.1 200 OK"), (b"\x16\x03\x01\x02\x00\x01", b""), (b"SSH-2.0-x", b""),
            (b"POST / HT", b""), (b"\x05\x00", b""), (b"", b"")]
    prefix = np.zeros((len(rows), 2, 16), np.uint8)
    for i, sides in enumerate(rows):
        for d, r in enumerate(sides):
            prefix[i, d, :len(r[:16])] = np.frombuffer(r[:16], np.uint8)
    assert candidates(prefix).tolist() == [True] * 7 + [False] * 6


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=300), st.binary(max_size=300),
       st.sampled_from([b"", b"CONNECT ", b"\x04\x01", b"\x05\x01\x00\x05\x01\x00\x03", b"\x05\x01\x00\x05\x01\x00\x01",
                        b"\x05\x01\x00\x05\x01\x00\x04", b"\x04\x01\x00\x16\x00\x00\x00\x01u\x00", b"GET ", b"PROXY TCP4 ",
                        b"\r\n\r\n\x00\r\nQUIT\n\x21", UPGRADE, b"CONNECT a:1 HTTP/1.1\r\n\r\n",
                        UPGRADE.replace(b"Host:", b"Sec-WebSocket-Protocol: authorization.bearer.a.e30x.b\r\nHost:")]))
def test_peel_never_raises(orig, resp, opening):
    c = _peel(opening + orig, resp)  # the parser itself, without peel's safety net
    if c is not None:
        inner = c.inner(opening + orig, resp)
        assert all(isinstance(x, bytes) for x in inner) and c.chain


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=400))
def test_deframe_never_raises(data):
    assert isinstance(deframe(data), bytes)


# ------------------------------------------------------------------------------------------------ lab captures
CARRIERS = LAB_CAPTURES / "carriers"
NOTE_CHAINS = (("http_connect -> websocket", ("http_connect", "websocket")), ("http_connect", ("http_connect",)),
               ("socks4", ("socks4",)), ("socks5", ("socks5",)), ("websocket", ("websocket",)),
               ("proxy_protocol v1", ("proxy_v1",)), ("proxy_protocol v2", ("proxy_v2",)))
PLAINTEXT_INSIDE = ("http_connect", "socks4", "socks5", "websocket", "proxy_v1", "proxy_v2")


def _labels() -> list[dict]:
    if not (CARRIERS / "labels.csv").exists():
        return []
    with open(CARRIERS / "labels.csv", newline="") as fh:
        return list(csv.DictReader(fh))


def _expected_chain(note: str) -> tuple[str, ...] | None:
    """The carrier chain a label's note starts with (None: no carrier framing, e.g. TLS or plain proxy requests)."""
    note = re.sub(r"^reason \w+: ", "", note)
    for prefix, chain in NOTE_CHAINS:
        if note.startswith(prefix):
            return chain
    return None


def _expected_target(note: str) -> str | None:
    """The inner target a label's note names: "CONNECT/SOCKS/relay target H:P", or "... to H:P" for policy rows."""
    if "websockify" in note:
        return None  # websockify's target is its own configuration, never on the wire (a gap the report names)
    found = re.search(r"(?:CONNECT|SOCKS|relay) target (\S+:\d+)", note) or \
        re.search(r"^(?:reason \w+: )?(?:socks5|http_connect) \([^)]*\) to (\S+:\d+)", note)
    return found.group(1) if found else None


@cache
def _analysed(name: str):
    """(flows: list of (flow fields, annotations, carrier flow or None), findings) of one carrier capture, judged
    by the folder's rules with every detector."""
    from egressguard.pipeline import Analyzer, FlowsReady
    from egressguard.policy.rules import load_rules
    from egressguard.report.records import flow_fields
    analyzer = Analyzer(rules=load_rules(CARRIERS / "rules.toml"))
    flows, findings = [], []
    for event in analyzer.analyze(str(CARRIERS / name)):
        if not isinstance(event, FlowsReady):
            continue
        view = event.view
        for row in range(len(view.records)):
            flows.append((flow_fields(view.records[row]), event.result.annotations.get(row, {}),
                          view.carriers.get(row), int(view.inner_app[row])))
        findings.extend(event.result.findings)
    return flows, findings


def _labelled(label: dict, flows):
    """Flows a label row names: client address, server address:port."""
    host, _, port = label["server"].rpartition(":")
    return [f for f in flows if f[0]["src_ip"] == label["client"] and f[0]["dst_ip"] == host
            and f[0]["dst_port"] == int(port)]


def _about(finding, label: dict) -> bool:
    from egressguard.report.records import flow_fields
    f = flow_fields(finding.flow)
    host, _, port = label["server"].rpartition(":")
    return f["src_ip"] == label["client"] and f["dst_ip"] == host and f["dst_port"] == int(port)


LABELS = _labels()
needs_lab = pytest.mark.skipif(not LABELS, reason="captures/carriers/labels.csv not found")


@needs_lab
@pytest.mark.parametrize("label", LABELS, ids=lambda r: f"{r['file']}:{r['server']}")
def test_lab_chain_target_and_record_fields(label):
    flows = _labelled(label, _analysed(label["file"])[0])
    assert flows, "the labelled flow is in the capture"
    chain, target = _expected_chain(label["note"]), _expected_target(label["note"])
    if chain is None:
        assert all(f[2] is None and "carrier" not in f[1] for f in flows)
        return
    for fields, notes, carried, inner in flows:
        assert carried is not None and carried.chain == chain
        assert notes["carrier"] == list(chain)
        if target is not None and chain != ("http_connect", "websocket"):
            assert carried.carrier.target_text == target and notes["carrier_target"] == target
    inner = [f[3] for f in flows]
    if "ssh" in label["class"]:
        assert all(t & 1 for t in inner)  # AppTag.SSH: the SSH banner is seen inside
    if label["class"] == "stratum":
        assert all(t & 64 for t in inner)  # AppTag.JSON


@needs_lab
@pytest.mark.parametrize("label", [r for r in LABELS if "unexpected_destination" in r["note"]
                                   or r["class"] == "unexpected_destination"], ids=lambda r: r["file"])
def test_lab_policy_on_the_inner_target(label):
    findings = [f for f in _analysed(label["file"])[1] if str(f.kind) == "unexpected_destination"
                and _about(f, label) and "carrier" in f.details]
    target = _expected_target(label["note"])
    chain = _expected_chain(label["note"])
    if target is None:  # the relay's target is not on the wire (websockify): nothing to judge
        assert not findings
        return
    reason = "denied" if "reason denied" in label["note"] else "unbound_ip"
    hits = [f for f in findings if f.details["carrier_target"] == target]
    assert hits, f"no unexpected_destination for {target}"
    assert all(f.details["reason"] == reason and tuple(f.details["carrier"]) == chain for f in hits)
    assert any(target in e and chain[0] in e for e in hits[0].evidence)


@needs_lab
@pytest.mark.parametrize("label", [r for r in LABELS if r["class"] == "stratum"], ids=lambda r: r["file"])
def test_lab_mining_inside_carriers(label):
    chain = _expected_chain(label["note"])
    mining = [f for f in _analysed(label["file"])[1] if str(f.kind) == "mining" and _about(f, label)]
    if chain is None:
        # Stratum inside TLS: only the records' sizes and timing speak (issue 12 point 3), at medium severity
        assert mining, "mining inside TLS was found by its shape"
        assert mining[0].severity.label() == "medium"
        assert any("inside TLS" in e and "pushed" in e for e in mining[0].evidence)
        assert mining[0].details["mining"]["carrier"] == "tls"
        return
    assert mining, "mining inside the carrier was found"
    assert any(" > ".join(chain) in e for f in mining for e in f.evidence)
    assert mining[0].details["mining"]["carrier"] == " > ".join(chain)


@needs_lab
@pytest.mark.parametrize("label", [r for r in LABELS if r["class"] == "benign"], ids=lambda r: f"{r['file']}:{r['server']}")
def test_lab_benign_carriers_stay_quiet(label):
    about = [f for f in _analysed(label["file"])[1] if _about(f, label)]
    assert not [f for f in about if str(f.kind) in ("mining", "ssh_tunnel", "reverse_ssh_tunnel")]
    assert not [f for f in about if "carrier" in f.details]


@pytest.mark.public
def test_public_wstunnel_capture_peels_to_ssh():
    """Zeek's wstunnel test capture (erebe wstunnel, a recording we did not make): WebSocket to the relay, the target
    in the upgrade, SSH inside."""
    from conftest import public_capture

    from egressguard.pipeline import Analyzer, FlowsReady
    path = public_capture("zeek/websocket/wstunnel-ssh.pcap")
    seen = []
    for event in Analyzer(detectors=[]).analyze(str(path)):
        if isinstance(event, FlowsReady):
            for row in event.view.carriers.rows.tolist():
                flow = event.view.carriers.get(row)
                seen.append((flow.chain, flow.carrier.target_text, flow.inner[0][:4], flow.inner[1][:4],
                             int(event.view.inner_app[row]) & 1))
    assert seen and all(s == (("websocket",), "195.201.148.209:22", b"SSH-", b"SSH-", 1) for s in seen)
