"""The reverse-shell lab (captures/lab_shells.py), run for real (root only): every scenario records a capture in
which each labelled (client, server) flow is present, was opened by the sandbox and carries a real, human-paced
conversation; the sandbox talks only to the outside host (the listener behind the proxy stays behind it).

The detectors then judge the fresh recordings: every shell a `reverse_shell`, nothing on the line-protocol
negatives.
"""
import csv
import glob
import os
import shutil
import subprocess
import sys
from collections import defaultdict

import pytest

from conftest import LAB_CAPTURES, REPO, lab_scenarios_restored, missing_tools

sys.path.insert(0, str(LAB_CAPTURES))
sys.path.insert(0, str(REPO / "benchmarks"))

TOOLS = ("ip", "tcpdump", "ss", "unshare", "runuser", "bash", "dash", "socat", "ncat", "nc.openbsd", "nc.traditional",
         "wget", "curl", "openssl", "websockify", "tinyproxy", "swaks", "tnftp", "lftp", "ngircd", "irssi", "ii",
         "redis-server", "redis-cli", "psql")
DEBIAN_MODULES = ("websockets", "aiosmtpd", "pyftpdlib")  # for /usr/bin/python3, Debian's python3-* packages


def _debian_modules_missing() -> list[str]:
    if not os.access("/usr/bin/python3", os.X_OK):
        return ["/usr/bin/python3"]
    return [f"python3-{m}" for m in DEBIAN_MODULES
            if subprocess.run(["/usr/bin/python3", "-c", f"import {m}"], capture_output=True).returncode != 0]


def _postgres_missing() -> list[str]:
    """initdb and postgres: on PATH, or where Debian's postgresql-NN package keeps them."""
    return [name for name in ("initdb", "postgres")
            if missing_tools(name) and not glob.glob(f"/usr/lib/postgresql/*/bin/{name}")]


needs = missing_tools(*TOOLS) + _debian_modules_missing() + _postgres_missing()
pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(os.geteuid() != 0, reason="the capture lab creates network namespaces: needs root"),
    pytest.mark.skipif(bool(needs), reason=f"missing tools for the reverse-shell lab: {', '.join(needs)}"),
]

SANDBOX = "10.77.0.2"
OUTSIDE = "198.18.0.2"  # every server and listener the bridge sees (198.18.0.5 is reached only through the proxy)


@pytest.fixture(scope="module")
def recorded(tmp_path_factory):
    with lab_scenarios_restored():
        import lab_shells

        out = tmp_path_factory.mktemp("reverse-shells")
        assert lab_shells.main(["record", "--out", str(out)]) == 0
        yield out, list(lab_shells.SHELL_SCENARIOS)


def _labels(folder):
    with (folder / "labels.csv").open(newline="") as fh:
        return list(csv.DictReader(fh))


def _flows(path):
    from egressguard.pipeline import FlowsReady, analyze_captures
    from egressguard.report.records import flow_record

    flows = []
    for event in analyze_captures([str(path)]):
        if isinstance(event, FlowsReady):
            flows += [flow_record(rec, str(path)) for rec in event.view.records]
    return flows


def _labelled_flows(folder, row):
    host, _, port = row["server"].rpartition(":")
    return [f for f in _flows(folder / row["file"]) if f["src_ip"] == row["client"] and f["dst_ip"] == host
            and f["dst_port"] == int(port) and f["proto"] == "tcp"]


def test_every_scenario_wrote_a_labelled_capture_within_budget(recorded):
    folder, names = recorded
    rows = _labels(folder)
    assert {row["file"] for row in rows} == {f"{name}.pcap" for name in names}
    assert {row["class"] for row in rows} == {"reverse_shell", "benign"}
    total = 0
    for name in names:
        size = (folder / f"{name}.pcap").stat().st_size
        total += size
        assert 2000 < size <= 2 * 1024 * 1024, (name, size)
    assert total <= 25 * 1024 * 1024


def test_every_labelled_flow_is_a_conversation_the_sandbox_opened(recorded):
    folder, _ = recorded
    for row in _labels(folder):
        match = _labelled_flows(folder, row)
        assert match, (row["file"], row["client"], row["server"])
        for f in match:
            assert f["roles_certain"] and f["src_ip"] == SANDBOX, (row["file"], f)
        assert sum(f["src_payload_bytes"] for f in match) > 40, (row["file"], row["server"])
        assert sum(f["dst_payload_bytes"] for f in match) > 40, (row["file"], row["server"])
        assert sum(f["src_pkts"] + f["dst_pkts"] for f in match) >= 12, (row["file"], row["server"])


def test_shells_are_driven_at_a_persons_pace(recorded):
    """A reverse shell carries several commands typed by a person: many packets over many seconds, output back."""
    folder, _ = recorded
    for row in _labels(folder):
        match = _labelled_flows(folder, row)
        packets = sum(f["src_pkts"] + f["dst_pkts"] for f in match)
        longest = max(f["duration"] for f in match)
        if row["class"] == "reverse_shell":
            assert packets >= 20 and longest >= 10, (row["file"], packets, longest)
            # command output (ls, ps, os-release) leaves the sandbox
            assert sum(f["src_payload_bytes"] for f in match) > 800, row["file"]


def test_the_sandbox_talks_only_to_the_outside_host(recorded):
    folder, names = recorded
    for name in names:
        for f in _flows(folder / f"{name}.pcap"):
            if SANDBOX in (f["src_ip"], f["dst_ip"]) and f["proto"] in ("tcp", "udp"):
                assert {f["src_ip"], f["dst_ip"]} == {SANDBOX, OUTSIDE}, (name, f)


def _holes(path) -> dict:
    """TCP sequence space missing from a capture (bytes a side sent that the capture never showed), per stream."""
    import dpkt

    seen = defaultdict(list)
    with open(path, "rb") as fh:
        for _, frame in dpkt.pcap.Reader(fh):
            ip = dpkt.ethernet.Ethernet(frame).data
            if not isinstance(ip, dpkt.ip.IP) or not isinstance(ip.data, dpkt.tcp.TCP):
                continue
            tcp = ip.data
            size = len(tcp.data) + (1 if tcp.flags & (dpkt.tcp.TH_SYN | dpkt.tcp.TH_FIN) else 0)
            if size:
                seen[(ip.src, tcp.sport, ip.dst, tcp.dport)].append((tcp.seq, size))
    holes = {}
    for stream, segments in seen.items():
        segments.sort()
        end, missing = segments[0][0], 0
        for seq, size in segments:
            missing += max(0, seq - end)
            end = max(end, seq + size)
        if missing:
            holes[stream] = missing
    return holes


def test_captures_are_complete(recorded):
    """Every byte sent shows in the capture (bursts such as redis-cli's 170 KiB COMMAND DOCS reply included)."""
    folder, names = recorded
    for name in names:
        assert not _holes(folder / f"{name}.pcap"), name



def test_fresh_recordings_are_classified_as_labelled(recorded):
    """The detectors judged on shells typed in this run (their own timing, prompts and sizes), not only on the
    captures kept in captures/reverse-shells: every shell found, plain or wrapped, and no finding on the sandbox's
    own use of SMTP, FTP, IRC, Redis, psql, a WebSocket chat or long polling."""
    import evaluate

    folder, _ = recorded
    shutil.copy(LAB_CAPTURES / "reverse-shells" / "rules.toml", folder)
    result = evaluate.evaluate([folder])
    assert result["errors"] == [], result["errors"]
    assert result["classes"]["reverse_shell"]["true_positive"] >= 12
