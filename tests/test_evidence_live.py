"""Evidence captures while watching (`watch --evidence DIR`): each reported finding names a pcap of its packets,
written from the frames still in the bounded buffer and appended as the flow goes on; what a bound left out is said
in the record. The keeper is driven through LiveMonitor by recorded captures replayed chunk by chunk (no root); the
last tests run `watch` for real on a lab bridge with a real OpenSSH reverse tunnel (root)."""
import json
import os
import signal
import subprocess
import sys
import threading
import time

import dpkt
import numpy as np
import pytest
from click.testing import CliRunner

from conftest import LAB_CAPTURES, REPO, lab_capture, missing_tools
from framebuilders import Frame, ethernet, frames_buffer, ipv4, mapped4, pcap_file, tcp
from egressguard.capture import Chunk
from egressguard.capture.pcap_writer import pack
from egressguard.capture.replay import ReplaySource
from egressguard.cli import main
from egressguard.decode import decode_frames_once
from egressguard.live import LiveMonitor, WatchSettings
from egressguard.live.evidence_keeper import INDEX_NAME, EvidenceKeeper, EvidenceLimits
from egressguard.pipeline import Settings, default_context
from egressguard.policy.rules import load_rules
from egressguard.schema import FLOW_DTYPE, Finding, FindingKind, Severity

LAB_RULES = lab_capture("rules.toml")


def replay(path, directory, limits=EvidenceLimits(), chunk_frames=4):
    """Replay a capture through LiveMonitor with an EvidenceKeeper; the largest buffer use seen is kept too."""
    source = ReplaySource(path, "br0", chunk_frames=chunk_frames)
    keeper = EvidenceKeeper(directory, limits)
    emitted, most = [], [0]
    source.on_chunk = lambda src: most.__setitem__(0, max(most[0], keeper.buffer_used))
    monitor = LiveMonitor(source, default_context(load_rules(LAB_RULES)), lambda r: emitted.append(dict(r)),
                          WatchSettings(pipeline=Settings(), judge_every_s=1.0, window_every_s=2.0),
                          clock=source.clock, evidence=keeper)
    monitor.run(threading.Event())
    return monitor, keeper, emitted, most[0]


def analyze(*args):
    result = CliRunner().invoke(main, ["analyze", "--format", "jsonl", "--flows", "--rules", str(LAB_RULES), *args])
    return [json.loads(line) for line in result.output.splitlines() if line.startswith("{")]


def count(path):
    with open(path, "rb") as fh:
        return sum(1 for _ in dpkt.pcap.Reader(fh))


def same_flow(flows, f):
    return [r for r in flows if (r["src_ip"], r["src_port"], r["dst_ip"], r["dst_port"], r["proto"])
            == (f["src_ip"], f["src_port"], f["dst_ip"], f["dst_port"], f["proto"])]


def index(directory):
    return [json.loads(line) for line in (directory / INDEX_NAME).read_text().splitlines()]


def test_a_tunnel_gets_its_whole_flow_written_then_followed(tmp_path):
    capture = lab_capture("ssh-reverse-shell.pcap")
    _, keeper, emitted, _ = replay(capture, tmp_path)
    [record] = [r for r in emitted if r["kind"] == "reverse_ssh_tunnel"]
    assert record["evidence_complete"] is True and record["evidence_incomplete"] == []
    assert record["evidence_following"] is True
    flows = [r for r in analyze(str(capture)) if r["type"] == "flow"]
    [flow] = same_flow(flows, record)
    total = flow["src_pkts"] + flow["dst_pkts"]
    # reported long before the flow ended: the buffer gave its start, the rest was appended as it came
    assert 0 < record["evidence_packets"] < total
    assert count(record["evidence_pcap"]) == total
    [line] = index(tmp_path)
    assert line["evidence_pcap"] == record["evidence_pcap"] and line["packets"] == total and line["closed"] == "end"
    [again] = [r for r in analyze(record["evidence_pcap"]) if r["type"] == "finding"]
    assert again["kind"] == "reverse_ssh_tunnel" and same_flow([again], record)
    assert keeper.bounds_hit() == ()


def test_a_tiny_buffer_drops_the_start_and_the_record_says_so(tmp_path):
    limits = EvidenceLimits(buffer_bytes=16 << 10)
    monitor, keeper, emitted, most = replay(lab_capture("ssh-reverse-shell.pcap"), tmp_path, limits)
    assert 0 < most <= limits.buffer_bytes and keeper.lost_frames > 0  # the bound held, and it cost frames
    [record] = [r for r in emitted if r["kind"] == "reverse_ssh_tunnel"]
    assert record["evidence_complete"] is False and record["evidence_incomplete"] == ["buffer"]
    assert record["evidence_buffer_start"] > record["first_seen"]
    flows = [r for r in analyze(str(lab_capture("ssh-reverse-shell.pcap"))) if r["type"] == "flow"]
    [flow] = same_flow(flows, record)
    written = count(record["evidence_pcap"])
    assert 0 < written < flow["src_pkts"] + flow["dst_pkts"]
    [line] = index(tmp_path)
    assert line["evidence_complete"] is False and line["packets"] == written
    assert any("evidence buffer" in w for w in monitor.bounds_hit())


def test_the_file_limit_stops_a_file_and_says_so(tmp_path):
    limits = EvidenceLimits(file_bytes=8 << 10)
    monitor, _, emitted, _ = replay(lab_capture("ssh-reverse-shell.pcap"), tmp_path, limits)
    [record] = [r for r in emitted if r["kind"] == "reverse_ssh_tunnel"]
    path = record["evidence_pcap"]
    assert os.path.getsize(path) <= limits.file_bytes and count(path) > 0  # cut at a record boundary: valid
    [line] = index(tmp_path)
    assert line["closed"] == "file_limit" and line["evidence_incomplete"] == ["file_limit"]
    assert line["packets_left_out"] > 0 and line["packets"] == count(path)
    assert any("file limit" in w for w in monitor.bounds_hit())


def test_an_unexpected_destination_gets_every_connection_to_it(tmp_path):
    capture = lab_capture("egress-policy.pcap")
    _, _, emitted, _ = replay(capture, tmp_path, chunk_frames=16)
    found = [r for r in emitted if r["kind"] == "unexpected_destination"]
    assert found and len({r["evidence_pcap"] for r in found}) == len(found)
    flows = [r for r in analyze(str(capture)) if r["type"] == "flow"]
    for f in found:
        assert f["evidence_complete"] is True, f
        same = [r for r in flows if (r["src_ip"], r["dst_ip"], r["dst_port"], r["proto"])
                == (f["src_ip"], f["dst_ip"], f["dst_port"], f["proto"])]
        assert count(f["evidence_pcap"]) == sum(r["src_pkts"] + r["dst_pkts"] for r in same) > 0, f


# ---------------------------------------------------------------------------------- the keeper, synthetic chunks
T0 = 1_700_000_000_000_000_000
SANDBOX, OUTSIDE = "10.77.0.2", "198.18.0.2"


def segment(sport, n, first=0, t0=T0, size=200):
    """Chunk of `n` packets of the TCP connection SANDBOX:sport <-> OUTSIDE:443 (every other one an answer), 1 ms
    apart, and its PACKET rows."""
    frames = []
    for i in range(first, first + n):
        up = i % 2 == 0
        src, dst, sp, dp = (SANDBOX, OUTSIDE, sport, 443) if up else (OUTSIDE, SANDBOX, 443, sport)
        frames.append(Frame(ethernet(ipv4(src, dst, 6, tcp(sp, dp, bytes([i % 256]) * size, seq=1000 + i))),
                            ts_ns=t0 + i * 1_000_000))
    buf, rows = frames_buffer(frames)
    return Chunk(buf, rows), decode_frames_once(buf, rows)


def tunnel_finding(sport, packets, first_ns=T0, severity=Severity.HIGH, kind=FindingKind.SSH_TUNNEL):
    rec = np.zeros(1, FLOW_DTYPE)[0]
    (rec["orig_hi"], rec["orig_lo"]), (rec["resp_hi"], rec["resp_lo"]) = mapped4(SANDBOX), mapped4(OUTSIDE)
    rec["orig_port"], rec["resp_port"], rec["proto"], rec["ip_version"] = sport, 443, 6, 4
    rec["first_seen_ns"], rec["last_seen_ns"] = first_ns, first_ns + packets * 1_000_000
    rec["orig_pkts"], rec["resp_pkts"] = (packets + 1) // 2, packets // 2
    return Finding(kind, severity, 0.9, ("evidence",), rec, "live", {})


def test_the_keeper_keeps_its_bound_drops_the_oldest_and_says_so(tmp_path):
    limits = EvidenceLimits(buffer_bytes=64 << 10)
    keeper = EvidenceKeeper(tmp_path, limits)
    for k in range(20):  # 20 chunks of 25 packets of ~250 bytes: about twice what the buffer holds
        keeper.feed(*segment(40000, 25, first=25 * k))
        assert keeper.buffer_used <= limits.buffer_bytes
    assert keeper.lost_frames > 0 and keeper.oldest_ns > T0
    record = {}
    keeper.start(tunnel_finding(40000, 500), record)
    kept = count(record["evidence_pcap"])
    assert record["evidence_complete"] is False and record["evidence_incomplete"] == ["buffer"]
    assert record["evidence_packets"] == kept == 500 - keeper.lost_frames
    assert record["evidence_buffer_start"] == pytest.approx(keeper.oldest_ns / 1e9) and record["evidence_following"]
    keeper.feed(*segment(40000, 10, first=500))  # later packets are appended as they come, flushed
    keeper.feed(*segment(40001, 10, first=510))  # another connection: not this finding's
    assert count(record["evidence_pcap"]) == kept + 10
    keeper.close()
    [line] = index(tmp_path)
    assert line["packets"] == kept + 10 and line["evidence_incomplete"] == ["buffer"] and line["closed"] == "end"
    assert any("evidence buffer" in w for w in keeper.bounds_hit())


def test_a_flow_that_fits_is_complete_and_ends_when_idle(tmp_path):
    keeper = EvidenceKeeper(tmp_path, EvidenceLimits(tcp_idle_s=5.0))
    keeper.feed(*segment(40000, 30))
    record = {}
    keeper.start(tunnel_finding(40000, 30), record)
    assert record["evidence_complete"] is True and record["evidence_packets"] == 30
    again = {}
    keeper.start(tunnel_finding(40000, 30, severity=Severity.CRITICAL), again)  # reported again: the same file
    assert again["evidence_pcap"] == record["evidence_pcap"]
    keeper.feed(*segment(40000, 4, first=30, t0=T0 + 10 * 10**9))  # 10 s later: the follow ended after 5 s idle
    assert count(record["evidence_pcap"]) == 30
    assert [line["closed"] for line in index(tmp_path)] == ["idle"]


def test_followed_files_are_bounded_and_the_least_severe_stops(tmp_path):
    keeper = EvidenceKeeper(tmp_path, EvidenceLimits(max_followed=1))
    keeper.feed(*segment(40000, 4))
    keeper.feed(*segment(40001, 4))
    low, high = {}, {}
    keeper.start(tunnel_finding(40000, 4, severity=Severity.MEDIUM), low)
    keeper.start(tunnel_finding(40001, 4, severity=Severity.CRITICAL), high)
    assert high["evidence_following"] is True
    [line] = index(tmp_path)
    assert line["evidence_pcap"] == low["evidence_pcap"] and line["closed"] == "follow_limit"
    assert line["evidence_incomplete"] == ["follow_limit"]
    lower = {}
    keeper.start(tunnel_finding(40002, 4, severity=Severity.LOW), lower)  # less severe than what is followed
    assert lower["evidence_following"] is False and lower["evidence_incomplete"] == ["follow_limit"]
    assert any("followed at once" in w for w in keeper.bounds_hit())


def test_packing_matches_the_pcap_format():
    """The packing kernel against its plain twin: framebuilders' record headers and bytes."""
    raw = [ethernet(ipv4("10.0.0.2", "192.0.2.9", 6, tcp(40000 + i, 443, b"x" * i))) for i in range(5)]
    buf, frames = frames_buffer([(1, r) for r in raw])
    frames["ts_ns"] = 1_700_000_000_123_456_789 + np.arange(5) * 1_000_000_001
    frames["wirelen"] = frames["caplen"] + 3
    expected = pcap_file([(int(t) // 10**9, int(t) % 10**9, r, len(r) + 3) for t, r in zip(frames["ts_ns"], raw)],
                         nanos=True)[24:]
    assert pack(buf, frames).tobytes() == expected


def test_an_unwritable_evidence_directory_is_one_clear_error(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    result = CliRunner().invoke(main, ["watch", "-i", "lo", "--no-dashboard", "--evidence", str(blocker / "sub")])
    assert result.exit_code == 2 and "--evidence" in result.output and "cannot write there" in result.output
    assert "Traceback" not in result.output and isinstance(result.exception, SystemExit)


# ---------------------------------------------------------------------------------------------- live, as root
needs = missing_tools("ip", "tcpdump", "ssh", "ssh-keygen", "sshd")
live = [pytest.mark.root,
        pytest.mark.skipif(os.geteuid() != 0, reason="watch needs raw sockets and the test creates namespaces: root"),
        pytest.mark.skipif(bool(needs), reason=f"missing tools: {', '.join(needs)}")]


@pytest.fixture(scope="module")
def watched(tmp_path_factory):
    """A real `ssh -N -R` from the lab sandbox, the outside typing back through it, watched on the bridge with
    --evidence while tcpdump records the same bridge."""
    sys.path.insert(0, str(LAB_CAPTURES))
    import lab
    from test_watch import Watcher

    tmp = tmp_path_factory.mktemp("evidence-live")
    out, full = tmp / "evidence", tmp / "bridge.pcap"
    result: dict = {"dir": out, "full": full}
    with lab.topology() as L:
        proc = L.popen(L.gw, sys.executable, "-m", "egressguard", "watch", "-i", "br0", "--no-dashboard",
                       "--rules", str(LAB_RULES), "--evidence", str(out), "--evidence-buffer", "8",
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO)
        watcher = Watcher(proc)
        try:
            assert watcher.ready.wait(120), "\n".join(watcher.stderr)
            time.sleep(1.0)
            with lab.recording(L, full), lab.sshd(L, L.out), lab.sshd(L, L.sbx):
                with lab.ssh_client(L, L.sbx, "-N", "-p", "443", "-R", "2222:127.0.0.1:22",
                                    f"root@{lab.OUTSIDE_IP}"):
                    lab.type_into(L, L.out, lab.ssh_args(L, "-tt", "-p", "2222", "root@127.0.0.1"),
                                  lab.SHELL_LINES[:3], seed=5)
                    result["tunnel"] = watcher.wait_for(lambda r: r["kind"] == "reverse_ssh_tunnel", 30)
                    if result["tunnel"] is not None:  # flushed as written: readable while watch runs
                        time.sleep(1.0)
                        result["while_running"] = _tcpdump_count(result["tunnel"][1]["evidence_pcap"])
                time.sleep(1.0)
            time.sleep(1.0)
        finally:
            proc.send_signal(signal.SIGTERM)
            try:
                result["exit"] = proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
                result["exit"] = "hung"
    result["stderr"] = watcher.stderr
    return result


def _tcpdump_count(path, bpf=()):
    proc = subprocess.run(["tcpdump", "-n", "-q", "-r", str(path), *bpf], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    return len(proc.stdout.splitlines())


def _apply(marks):
    def wrap(fn):
        for mark in marks:
            fn = mark(fn)
        return fn
    return wrap


@_apply(live)
def test_watch_writes_the_tunnel_flow_that_tcpdump_reads_whole(watched):
    assert watched["tunnel"] is not None, watched["stderr"]
    assert watched["exit"] == 0, watched["stderr"]
    _, record = watched["tunnel"]
    path = record["evidence_pcap"]
    assert path.startswith(str(watched["dir"])) and record["evidence_complete"] is True
    assert 0 < record["evidence_packets"] <= watched["while_running"]
    written = _tcpdump_count(path)
    five = ["tcp", "and", "host", record["src_ip"], "and", "port", str(record["src_port"]), "and", "host",
            record["dst_ip"], "and", "port", str(record["dst_port"])]
    assert written == _tcpdump_count(watched["full"], five)  # every packet of the flow tcpdump saw on the bridge
    flows = [r for r in analyze(str(watched["full"])) if r["type"] == "flow"]
    [flow] = same_flow(flows, record)
    assert written == flow["src_pkts"] + flow["dst_pkts"]
    [line] = [x for x in index(watched["dir"]) if x["evidence_pcap"] == path]
    assert line["packets"] == written and line["evidence_complete"] is True


@_apply(live)
def test_the_live_evidence_reanalyses_to_the_same_finding(watched):
    assert watched["tunnel"] is not None, watched["stderr"]
    _, record = watched["tunnel"]
    again = [r for r in analyze(record["evidence_pcap"]) if r["type"] == "finding"]
    assert [r["kind"] for r in again] == ["reverse_ssh_tunnel"] and same_flow(again, record)
