"""The carrier lab (captures/lab_carriers.py), run for real (root only): every scenario records a capture in which
each labelled (client, server) flow is present and carries a real conversation, the sandbox talks only to the
hosts it may reach (its proxy host and the web host; the tunnel and pool targets stay behind the relays), and the
detectors classify the fresh recordings as labelled: every carrier case as its kind, nothing on the negatives.
"""
import csv
import functools
import importlib.util
import os
import shutil
import sys
from collections import defaultdict

import pytest

from conftest import LAB_CAPTURES, REPO, lab_scenarios_restored, missing_tools

sys.path.insert(0, str(LAB_CAPTURES))
sys.path.insert(0, str(REPO / "benchmarks"))

TOOLS = ("ip", "tcpdump", "ssh", "ssh-keygen", "sshd", "scp", "sftp", "squid", "tinyproxy", "corkscrew",
         "proxytunnel", "danted", "nc", "ncat", "stunnel4", "socat", "websockify", "haproxy", "nginx", "proxychains4",
         "curl", "openssl", "git", "ping", "node", "npm")
MODULES = ("pproxy", "websockets", "grpc")
needs = missing_tools(*TOOLS) + [f"python:{m}" for m in MODULES if importlib.util.find_spec(m) is None]
if not os.path.exists("/usr/lib/apt/apt-helper"):
    needs.append("apt-helper")
pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(os.geteuid() != 0, reason="the capture lab creates network namespaces: needs root"),
    pytest.mark.skipif(bool(needs), reason=f"missing tools for the carrier lab: {', '.join(needs)}"),
]

SANDBOX = "10.77.0.2"
REACHABLE = {"198.18.0.2", "198.18.0.5"}  # the web host and the proxy host (captures/carriers/rules.toml allows both)


@pytest.fixture(scope="module")
def recorded(tmp_path_factory):
    with lab_scenarios_restored():
        import lab_carriers

        try:
            lab_carriers._node_modules()  # wstunnel, coin-hive-stratum: found, or installed by npm outside the repo
        except RuntimeError as exc:
            pytest.skip(f"npm packages for the carrier lab unavailable: {exc}")
        out = tmp_path_factory.mktemp("carriers")
        assert lab_carriers.main(["record", "--out", str(out)]) == 0
        yield out, list(lab_carriers.OURS)


def _labels(folder):
    with (folder / "labels.csv").open(newline="") as fh:
        return list(csv.DictReader(fh))


@functools.lru_cache(maxsize=None)
def _flows(path):
    """The flow records of one capture (the fields of the JSONL `flow` records)."""
    from egressguard.pipeline import FlowsReady, analyze_captures
    from egressguard.report.records import flow_record

    flows = []
    for event in analyze_captures([str(path)]):
        if isinstance(event, FlowsReady):
            flows += [flow_record(rec, str(path)) for rec in event.view.records]
    return flows


def test_every_scenario_wrote_a_capture_within_budget(recorded):
    folder, names = recorded
    labelled = {row["file"] for row in _labels(folder)}
    total = 0
    for name in names:
        size = (folder / f"{name}.pcap").stat().st_size
        total += size
        assert 2000 < size <= 2 * 1024 * 1024, (name, size)
        assert f"{name}.pcap" in labelled, name
    assert total <= 25 * 1024 * 1024


def test_every_labelled_flow_is_in_its_capture(recorded):
    folder, _ = recorded
    by_file = defaultdict(list)
    for row in _labels(folder):
        by_file[row["file"]].append(row)
    for file, rows in by_file.items():
        flows = _flows(folder / file)
        for row in rows:
            host, _, port = row["server"].rpartition(":")
            match = [f for f in flows if f["src_ip"] == row["client"] and f["dst_ip"] == host
                     and f["dst_port"] == int(port)]
            assert match, (file, row["client"], row["server"])
            if match[0]["proto"] == "tcp":
                # a conversation, not a refused or empty connection (an SSE or long-poll client sends one request)
                assert sum(f["src_payload_bytes"] for f in match) > 60, (file, row["server"])
                assert sum(f["dst_payload_bytes"] for f in match) > 300, (file, row["server"])
                assert sum(f["src_pkts"] + f["dst_pkts"] for f in match) >= 12, (file, row["server"])


def test_tunnels_and_pools_stay_behind_the_relays(recorded):
    """The bridge sees the sandbox talk only to its proxy host and the web host: the tunnel and pool targets are
    reached by the relays, so the allowlist question is about the carrier's inner target."""
    folder, names = recorded
    for name in names:
        for f in _flows(folder / f"{name}.pcap"):
            if f["src_ip"] == SANDBOX and f["proto"] in ("tcp", "udp", "icmp"):
                assert f["dst_ip"] in REACHABLE, (name, f["dst_ip"], f["dst_port"])


def test_positive_scenarios_have_substantial_tunnels(recorded):
    """Reverse tunnels and forwards carried real use: file pulls and downloads of at least 100 KB, shells with
    dozens of packets; mining sessions several pool messages."""
    folder, _ = recorded
    for row in _labels(folder):
        if row["class"] == "benign" or row["class"] == "unexpected_destination":
            continue
        host, _, port = row["server"].rpartition(":")
        match = [f for f in _flows(folder / row["file"]) if f["src_ip"] == row["client"] and f["dst_ip"] == host
                 and f["dst_port"] == int(port)]
        packets = sum(f["src_pkts"] + f["dst_pkts"] for f in match)
        payload = sum(f["src_payload_bytes"] + f["dst_payload_bytes"] for f in match)
        if "pull" in row["note"] or "download" in row["note"]:
            assert payload > 100_000, (row["file"], payload)
        elif row["class"] == "stratum":
            assert sum(f["dst_pkts"] for f in match) >= 6, (row["file"], packets)
        else:
            assert packets >= 60, (row["file"], packets)


def test_fresh_recordings_are_classified_as_labelled(recorded):
    """The detectors judged on captures made in this run, with this run's timing and sizes, not only on the ones kept
    in captures/carriers: each tunnel and pool through each carrier found as its kind, each proxy target the rules
    do not allow reported, and no finding on the ordinary traffic through the same relays."""
    import evaluate

    folder, _ = recorded
    shutil.copy(LAB_CAPTURES / "carriers" / "rules.toml", folder)  # the policy the labels assume
    result = evaluate.evaluate([folder])
    assert result["errors"] == [], result["errors"]
    assert result["classes"]["reverse_ssh_tunnel"]["true_positive"] >= 10
