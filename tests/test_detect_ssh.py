"""SSH tunnel detection: the size model, the handshake parser, each signal, and whole captures that must (not) fire."""
import csv
import dataclasses
import json
import struct

import numpy as np
import pytest

from conftest import LAB_CAPTURES, PUBLIC_CAPTURES, public_capture
from egressguard.detect.ssh_tunnel import SshSignals, SshUse, classify
from egressguard.flows import FlowSettings, FlowTable
from egressguard.payload.ssh import (PostAuth, SshHandshake, SshSide, find_banner, parse_handshake, parse_kexinit,
                                     post_auth, record_model)
from egressguard.pipeline import Analyzer, FlowsReady
from egressguard.report.records import flow_fields
from egressguard.schema import PACKET_DTYPE

# detection-science 1.4 table: keystroke, tunnelled keystroke (inner suite = outer), SERVICE_ACCEPT L(17),
# USERAUTH_SUCCESS L(1), keepalive@openssh L(27); validated there against JA4SSH, Trisul and Althouse constants.
SIZE_TABLE = [
    ("chacha20-poly1305@openssh.com", "", 36, 76, 44, 28, 52),
    ("aes128-gcm@openssh.com", "", 36, 84, 52, 36, 52),
    ("aes128-ctr", "hmac-sha2-256-etm@openssh.com", 52, 116, 68, 52, 68),
    ("aes128-ctr", "hmac-sha2-512-etm@openssh.com", 84, 180, 100, 84, 100),
    ("aes128-ctr", "hmac-sha2-256", 64, 128, 64, 48, 80),
    ("aes128-ctr", "hmac-sha1", 52, 100, 52, 36, 68),
    ("aes128-ctr", "hmac-md5", 48, 96, 48, 32, 64),
    ("aes128-ctr", "umac-128@openssh.com", 48, 96, 48, 32, 64),
]


@pytest.mark.parametrize("cipher,mac,ks,tks,accept,success,keepalive", SIZE_TABLE)
def test_record_model_reproduces_published_sizes(cipher, mac, ks, tks, accept, success, keepalive):
    m = record_model(cipher, mac)
    assert m.size(10) == ks
    assert m.size(9 + m.size(10)) == tks
    assert (m.size(17), m.size(1), m.size(27)) == (accept, success, keepalive)


def test_unknown_algorithms_give_no_model():
    assert record_model("twofish-cbc", "hmac-sha1") is None
    assert record_model("aes128-ctr", "hmac-whirlpool") is None


def test_banner_after_other_lines_and_bounded():
    stream = b"Welcome to host\r\nplease behave\r\nSSH-2.0-OpenSSH_9.6 comment\r\n\x00\x00"
    banner, end = find_banner(stream)
    assert banner == "SSH-2.0-OpenSSH_9.6 comment"
    assert stream[end:] == b"\x00\x00"
    long_banner, _ = find_banner(b"SSH-2.0-" + b"A" * 1000 + b"\r\n")
    assert len(long_banner) == 255
    assert find_banner(b"GET / HTTP/1.1\r\n\r\n") == (None, 0)
    hostile, _ = find_banner(b"SSH-2.0-\x1b[31mred\xff\r\n")
    assert hostile == "SSH-2.0-\x1b[31mred\\xff"  # kept as received (escaped only when rendered), never raises


def _kexinit(kex=b"curve25519-sha256", enc=b"chacha20-poly1305@openssh.com,aes128-ctr", mac=b"hmac-sha2-256",
             comp=b"none"):
    lists = [kex, b"ssh-ed25519", enc, enc, mac, mac, comp, comp, b"", b""]
    payload = bytes([20]) + b"\x11" * 16 + b"".join(struct.pack("!I", len(x)) + x for x in lists) + b"\x00" + b"\0" * 4
    return payload


def _packet(payload):
    pad = 8 - (5 + len(payload)) % 8 + 8
    return struct.pack("!IB", 1 + len(payload) + pad, pad) + payload + b"\0" * pad


def test_kexinit_parse_and_malformed_inputs():
    k = parse_kexinit(_kexinit())
    assert k.kex == ("curve25519-sha256",) and k.enc_c2s == ("chacha20-poly1305@openssh.com", "aes128-ctr")
    assert parse_kexinit(_kexinit()[:30]) is None
    assert parse_kexinit(b"") is None
    assert parse_kexinit(bytes([21]) + _kexinit()[1:]) is None
    rng = np.random.default_rng(5)
    for _ in range(300):  # random bytes never raise
        parse_kexinit(bytes([20]) + rng.bytes(int(rng.integers(0, 300))))
        parse_handshake(b"SSH-2.0-x\r\n" + rng.bytes(200), rng.bytes(100))


def test_handshake_negotiates_first_common_algorithm_and_detects_role_reversal():
    client = b"SSH-2.0-client\r\n" + _packet(_kexinit(enc=b"aes128-ctr,chacha20-poly1305@openssh.com")) + \
        _packet(bytes([30]) + b"k" * 32)
    server = b"SSH-2.0-server\r\n" + _packet(_kexinit(enc=b"chacha20-poly1305@openssh.com,aes128-ctr")) + \
        _packet(bytes([31]) + b"r" * 64)
    hs = parse_handshake(client, server)
    assert hs.client_is_orig and hs.cipher == "aes128-ctr" and hs.mac == "hmac-sha2-256"
    assert hs.keystroke_size() == 64
    reversed_hs = parse_handshake(server, client)  # the TCP originator sends the KEX reply: it is the SSH server
    assert not reversed_hs.client_is_orig
    assert reversed_hs.client.banner == "SSH-2.0-client"


def test_post_auth_reads_tcpip_forward_and_no_more_sessions():
    m = record_model("chacha20-poly1305@openssh.com", "")
    hs = SshHandshake(SshSide(), SshSide(), True, "chacha20-poly1305@openssh.com", "<implicit>", "none", m)
    kex = [41, -41, 1448, 112, -1088, 1208, -1448, -116, 16]
    login = [44, -44, 60, -44, 140, -100, 308, -28]
    assert post_auth(hs, kex + login + [68, 60, -264, -176]) == PostAuth(True, 68, True)  # ssh -N -R
    assert post_auth(hs, kex + login + [60, -264, -148]) == PostAuth(True, None, True)  # ssh -N -L
    assert post_auth(hs, kex + login + [112, -412]) == PostAuth(True, None, False)  # interactive
    assert post_auth(hs, kex + [44, -44, 60, -44, 140, -100] + [-52] * 8).auth_success is False


def _signals(**kw):
    base = dict(keystroke=36, tunnel_keystrokes=(68, 76, 92, 100), echo_fwd=0, echo_rev=0, tunnel_echo_fwd=0,
                tunnel_echo_rev=0, led_fwd=0, led_rev=0, nested_fwd=0, nested_rev=0, acks_fwd=0, acks_rev=0,
                keepalives=0, keepalive_interval=0.0, keepalive_cv=float("inf"), bytes_fwd=5000, bytes_rev=5000,
                answered_fwd=0, answered_rev=0, login=PostAuth(True, None, False))
    base.update(kw)
    return SshSignals(**base)


HS = SshHandshake(SshSide("SSH-2.0-a"), SshSide("SSH-2.0-b"), True, "chacha20-poly1305@openssh.com", "<implicit>",
                  "none", record_model("chacha20-poly1305@openssh.com", ""))


@pytest.mark.parametrize("signals,expected", [
    (_signals(echo_rev=40, tunnel_echo_rev=40), SshUse.REVERSE_TUNNEL),
    (_signals(echo_rev=3, tunnel_echo_rev=3), SshUse.UNDETERMINED),  # below the echo threshold
    (_signals(echo_rev=40, echo_fwd=30, tunnel_echo_rev=40), SshUse.INTERACTIVE),  # not dominant: typing both ways
    (_signals(nested_rev=1), SshUse.REVERSE_TUNNEL),
    (_signals(login=PostAuth(True, 68, True), keepalives=8, keepalive_interval=2.0, keepalive_cv=0.01),
     SshUse.REVERSE_TUNNEL),
    (_signals(answered_rev=4, bytes_fwd=200_000), SshUse.REVERSE_TUNNEL),
    (_signals(led_rev=9, led_fwd=1), SshUse.UNDETERMINED),  # a server that pushes is not a tunnel by itself
    (_signals(acks_rev=300, acks_fwd=2), SshUse.UNDETERMINED),
    (_signals(echo_fwd=50), SshUse.INTERACTIVE),
    (_signals(echo_fwd=12, tunnel_echo_fwd=12), SshUse.TUNNEL),  # an SSH session typed through this one
    (_signals(login=PostAuth(True, None, True), answered_fwd=5, bytes_rev=150_000), SshUse.TUNNEL),
    (_signals(login=PostAuth(True, None, True), keepalives=8, keepalive_interval=2.0, keepalive_cv=0.01),
     SshUse.TUNNEL),
    (_signals(answered_fwd=5, bytes_rev=150_000), SshUse.UNDETERMINED),  # a session opened: could be anything
    (_signals(bytes_fwd=4000, bytes_rev=1_000_000), SshUse.FILE_TRANSFER),
    (_signals(bytes_fwd=1_000_000, bytes_rev=4000, acks_rev=300), SshUse.FILE_TRANSFER),  # upload: ACKs alone are no tunnel
    (_signals(keepalives=8, keepalive_interval=2.0, keepalive_cv=0.01), SshUse.UNDETERMINED),
])
def test_classify_each_signal(signals, expected):
    assert classify(HS, signals).use is expected


def test_role_reversal_alone_is_a_reverse_tunnel():
    hs = dataclasses.replace(HS, client_is_orig=False)
    verdict = classify(hs, _signals())
    assert verdict.use is SshUse.REVERSE_TUNNEL and "answered as the SSH server" in verdict.evidence[0]


def test_evidence_carries_measured_values():
    verdict = classify(HS, _signals(echo_rev=41, tunnel_echo_rev=41, acks_rev=120, acks_fwd=3, led_rev=9, led_fwd=1))
    assert len(verdict.evidence) == 3
    text = " ".join(verdict.evidence)
    assert "41 packets" in text and "68/76/92/100 B" in text and "120 bare ACKs against 3" in text
    assert "9 of 10 bursts" in text
    assert verdict.score > 0.9


# ---- the conversation-shape kernel on synthetic packet sequences
def _packets(events, start_ns=1_700_000_000 * 10**9):
    """PACKET rows for one TCP flow from (direction, payload size, seconds) events; direction 0 = originator."""
    a, b = (0, (0xFFFF << 32) | 0x0A000002), (0, (0xFFFF << 32) | 0xC6120002)
    pk = np.zeros(len(events), PACKET_DTYPE)
    seq = [1000, 5000]
    for i, (d, size, t) in enumerate(events):
        src, dst = (a, b) if d == 0 else (b, a)
        pk[i]["ts_ns"] = start_ns + int(t * 1e9)
        pk[i]["src_hi"], pk[i]["src_lo"] = src
        pk[i]["dst_hi"], pk[i]["dst_lo"] = dst
        pk[i]["sport"], pk[i]["dport"] = (40000, 22) if d == 0 else (22, 40000)
        pk[i]["proto"], pk[i]["ip_version"], pk[i]["tcp_flags"] = 6, 4, 0x18
        pk[i]["payload_bytes"] = size
        pk[i]["wire_bytes"] = size + 54
        pk[i]["tcp_seq"] = seq[d]
        seq[d] += size
    return pk


def _conversation(events):
    table = FlowTable(FlowSettings(capacity=16, payload_slots=4))
    pk = _packets(events)
    for batch in table.update(pk, np.zeros(16, np.uint8)):
        pass
    for batch in table.flush():
        return batch.conversation(0)


def test_kernel_counts_echo_pairs_by_leader_and_size():
    events = [(0, 500, 0.0), (1, 500, 0.01)]  # big packets are never echoes
    t = 5.0
    for _ in range(7):  # the remote side types, the sandbox echoes
        events += [(1, 76, t), (0, 76, t + 0.05)]
        t += 0.3
    events += [(1, 76, t), (0, 76, t + 0.7)]  # too late to be an echo
    conv = _conversation(events)
    assert conv.echoes(1, 76) == 7 and conv.echoes(0, 76) == 0
    assert conv.echo_pairs.sum() == 7


def test_kernel_bursts_nested_handshake_pingpong_and_answers():
    events = [(0, 40, 0.0), (1, 40, 0.01), (0, 1400, 0.02), (1, 1100, 0.03)]  # first burst: outer handshake
    t = 3.0
    for _ in range(6):  # keepalives every 2 s: one packet each way
        events += [(0, 52, t), (1, 28, t + 0.01)]
        t += 2.0
    events += [(1, 92, t), (0, 44, t + 0.01), (1, 1300, t + 0.02), (0, 1350, t + 0.05), (1, 1200, t + 0.1)]
    t += 3
    for _ in range(3):  # the remote side asks, the sandbox answers in bulk
        events += [(1, 120, t)] + [(0, 1448, t + 0.01 + k * 0.001) for k in range(5)]
        t += 3
    conv = _conversation(events)
    assert conv.pingpongs == (6, 0)
    assert conv.pingpong_interval_mean[0] == pytest.approx(2.0)
    assert conv.pingpong_interval_sd[0] == pytest.approx(0.0, abs=1e-6)
    assert conv.nested_handshakes == (0, 1)  # the first burst (outer handshake) never counts
    assert conv.answered == (0, 3)
    assert conv.bursts == 1 + 6 + 1 + 3
    assert conv.bursts_led == (1, 4)


# ---- whole captures
def _ssh_verdicts(path):
    out = {}
    analyzer = Analyzer()
    for event in analyzer.analyze(str(path)):
        if not isinstance(event, FlowsReady):
            continue
        kinds = {}
        for f in event.result.findings:
            kinds[(int(f.flow["orig_port"]), int(f.flow["resp_port"]), flow_fields(f.flow)["src_ip"])] = f
        for row, ann in event.result.annotations.items():
            ff = flow_fields(event.view.records[row])
            key = (ff["src_port"], ff["dst_port"], ff["src_ip"])
            out[key] = (ann.get("ssh_use"), kinds.get(key), ff)
    return out


EXPECTED_USE = {"reverse_ssh_tunnel": "reverse_tunnel", "ssh_tunnel_other": "tunnel",
                "ssh_interactive": "interactive", "ssh_transfer": "file_transfer"}


def _lab_rows():
    path = LAB_CAPTURES / "labels.csv"
    with path.open(newline="") as fh:
        return [r for r in csv.DictReader(fh) if r["class"] in EXPECTED_USE or r["class"] == "benign"]


@pytest.mark.parametrize("row", _lab_rows(), ids=lambda r: f"{r['file']}:{r['server']}")
def test_lab_capture_classified_as_labelled(row):
    server_ip, server_port = row["server"].rsplit(":", 1)
    verdicts = [v for (sp, dp, src), v in _ssh_verdicts(LAB_CAPTURES / row["file"]).items()
                if dp == int(server_port) and v[2]["dst_ip"] == server_ip and src == row["client"]]
    if row["class"] == "benign":
        assert all(v[1] is None for v in verdicts)
        return
    assert verdicts, "no SSH flow found"
    for use, finding, _ in verdicts:
        assert use == EXPECTED_USE[row["class"]]
        if row["class"] == "reverse_ssh_tunnel":
            assert finding is not None and str(finding.kind) == "reverse_ssh_tunnel"
            assert finding.severity.label() in ("high", "critical")
        elif row["class"] == "ssh_tunnel_other":
            assert finding is not None and str(finding.kind) == "ssh_tunnel"
        else:
            assert finding is None  # interactive sessions and copies are never tunnels


def _public_ssh_rows():
    path = PUBLIC_CAPTURES / "labels.csv"
    if not path.exists():
        return []
    with path.open(newline="") as fh:
        return [r for r in csv.DictReader(fh) if r["expected_class"] in EXPECTED_USE and r["flow"].startswith("TCP")]


@pytest.mark.skipif(not (PUBLIC_CAPTURES / "labels.csv").exists(), reason="../shared/captures/public is absent")
@pytest.mark.parametrize("row", _public_ssh_rows(), ids=lambda r: f"{r['file']}:{r['flow'][4:40]}")
def test_public_capture_classified_as_labelled(row):
    src, _, dst = row["flow"][4:].partition(" -> ")
    src_ip, src_port = src.rsplit(":", 1)
    dst_port = int(dst.rsplit(":", 1)[1])
    verdicts = _ssh_verdicts(public_capture(row["file"]))
    use, finding, _ = verdicts[(int(src_port), dst_port, src_ip)]
    assert use == EXPECTED_USE[row["expected_class"]]
    expected_kind = {"reverse_ssh_tunnel": "reverse_ssh_tunnel", "ssh_tunnel_other": "ssh_tunnel"}.get(
        row["expected_class"])
    assert (str(finding.kind) if finding else None) == expected_kind


@pytest.mark.parametrize("name", ["zeek/ssh/ssh.pcap", "ntop-nDPI/ssh.pcap", "zeek/ssh/single-conn.pcap",
                                  "zeek/ssh/ssh-on-port-80.pcap", "FoxIO-ja4/pcap/sshv1.pcap",
                                  "DanieleDeSensi-peafowl/test/pcaps/ssh.cap", "zeek/ssl-and-ssh-using-sslh.pcap"])
def test_public_ordinary_ssh_raises_no_tunnel_finding(name):
    assert all(v[1] is None for v in _ssh_verdicts(public_capture(name)).values())


def test_hassh_matches_ja4_reference_output():
    expected_file = public_capture("FoxIO-ja4/expected/python/ssh-r.pcap.json")
    expected = json.loads(expected_file.read_text())
    verdicts = _ssh_verdicts(public_capture("FoxIO-ja4/pcap/ssh-r.pcap"))
    by_port = {sp: v for (sp, _, _), v in verdicts.items()}
    checked = 0
    analyzer = Analyzer(detectors=[])
    for event in analyzer.analyze(str(public_capture("FoxIO-ja4/pcap/ssh-r.pcap"))):
        if not isinstance(event, FlowsReady):
            continue
        for row in range(len(event.view.records)):
            sport = int(event.view.records[row]["orig_port"])
            ref = next((e for e in expected if int(e.get("srcport", -1)) == sport and "ssh_extras" in e), None)
            if ref is None:
                continue
            hs = parse_handshake(event.view.kept_stream(row, 0), event.view.kept_stream(row, 1))
            if hs is None:  # the rest of a connection cut by the idle timeout carries no handshake
                assert event.view.records[row]["end_reason"] != 0 and not event.view.records[row]["flow_flags"] & 1
                continue
            assert hs.hassh() == ref["ssh_extras"]["hassh"]
            assert hs.hassh_server() == ref["ssh_extras"]["hassh_server"]
            assert hs.client.banner == ref["ssh_extras"]["ssh_protocol_client"]
            assert by_port[sport][0] is not None
            checked += 1
    assert checked == 3


def test_cipher_and_mac_match_zeek_ssh_log():
    log = public_capture("zeek/expected/scripts.base.protocols.ssh.basic/ssh.log").read_text().splitlines()
    fields = next(line for line in log if line.startswith("#fields")).split("\t")[1:]
    rows = [dict(zip(fields, line.split("\t"))) for line in log if not line.startswith("#")]
    analyzer = Analyzer(detectors=[])
    seen = {}
    for event in analyzer.analyze(str(public_capture("zeek/ssh/ssh.pcap"))):
        if isinstance(event, FlowsReady):
            for row in range(len(event.view.records)):
                hs = parse_handshake(event.view.kept_stream(row, 0), event.view.kept_stream(row, 1))
                if hs is not None:
                    seen[int(event.view.records[row]["orig_port"])] = hs
    checked = 0
    for r in rows:
        hs = seen.get(int(r["id.orig_p"]))
        if hs is None or r["cipher_alg"] == "-" or hs.cipher is None:
            continue
        assert hs.cipher == r["cipher_alg"]
        if hs.mac != "<implicit>":
            assert hs.mac == r["mac_alg"]
        assert hs.client.banner == r["client"] and hs.server.banner == r["server"]
        checked += 1
    assert checked >= 10


def test_connection_split_by_timeouts_keeps_its_verdict():
    from egressguard.pipeline import Settings

    settings = Settings(flows=FlowSettings(active_s=4.0))
    findings, records = [], 0
    for event in Analyzer(settings).analyze(str(LAB_CAPTURES / "ssh-reverse-shell.pcap")):
        if isinstance(event, FlowsReady):
            records += sum(1 for r in event.view.records if r["resp_port"] == 443)
            findings += [f for f in event.result.findings if str(f.kind) == "reverse_ssh_tunnel"]
    assert records >= 4  # 19 s cut every 4 s
    assert len(findings) == records
    assert any("continues an SSH connection" in " ".join(f.evidence) for f in findings)


def test_idle_gap_split_rest_is_still_recognised_as_ssh():
    from egressguard.pipeline import Settings

    path = public_capture("FoxIO-ja4/pcap/ssh-r.pcap")  # the PuTTY session pauses for 320 s
    uses = []
    for event in Analyzer(Settings(flows=FlowSettings(tcp_idle_s=300.0))).analyze(str(path)):
        if isinstance(event, FlowsReady):
            for row, ann in event.result.annotations.items():
                if event.view.records[row]["orig_port"] == 64980:
                    uses.append(ann["ssh_use"])
    assert len(uses) == 2 and uses[0] == "interactive"


def _obscured_trains(leader, n_keys, size, start, tail_chaff=10):
    """OpenSSH >= 9.5 ObscureKeystrokeTiming: the typing side sends a packet every 20 ms (real keystrokes, then
    chaff SSH2_MSG_PING of the same size) and the other side answers each within a few ms (echo or PONG)."""
    events, t = [], start
    for _ in range(n_keys + tail_chaff):
        events += [(leader, size, t), (1 - leader, size, t + 0.003)]
        t += 0.020
    return events, t


def test_obscured_keystroke_timing_reverse_and_forward():
    handshake = [(0, 40, 0.0), (1, 40, 0.01), (0, 1400, 0.02), (1, 1100, 0.03)]
    rev, t = _obscured_trains(1, 12, 76, 2.0)  # the outside types through a nested session (K2 = 76)
    conv = _conversation(handshake + rev)
    sig = _signals(echo_rev=conv.echoes(1, 76) + conv.echoes(1, 36), tunnel_echo_rev=conv.echoes(1, 76),
                   echo_fwd=conv.echoes(0, 76) + conv.echoes(0, 36), tunnel_echo_fwd=conv.echoes(0, 76))
    assert sig.tunnel_echo_rev >= 20 and sig.echo_fwd == 0
    assert classify(HS, sig).use is SshUse.REVERSE_TUNNEL
    fwd, _ = _obscured_trains(0, 12, 36, 2.0)  # the sandbox side types into an ordinary session (K1 = 36)
    conv = _conversation(handshake + fwd)
    sig = _signals(echo_fwd=conv.echoes(0, 36), echo_rev=conv.echoes(1, 36))
    assert classify(HS, sig).use is SshUse.INTERACTIVE


def test_auth_inference_reported_for_lab_sessions():
    verdicts = _ssh_verdicts(LAB_CAPTURES / "ssh-interactive.pcap")
    analyzer = Analyzer()
    infos = []
    for event in analyzer.analyze(str(LAB_CAPTURES / "ssh-interactive.pcap")):
        if isinstance(event, FlowsReady):
            infos += [a["ssh"] for a in event.result.annotations.values() if "ssh" in a]
    assert verdicts and infos and all(i["auth"] == "success" for i in infos)
