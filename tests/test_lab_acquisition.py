"""The resource-acquisition lab (captures/lab_acquisition.py), run for real (root only): every scenario records a
capture whose labelled flows the sandbox opened and that carry a request and its answer, and the detector finds
every labelled acquisition flow of the fresh recording with its category and nothing on the negatives.
"""
import csv
import os
import sys

import pytest

from conftest import LAB_CAPTURES, lab_scenarios_restored, missing_tools

sys.path.insert(0, str(LAB_CAPTURES))

needs = missing_tools("ip", "tcpdump", "ss", "curl", "openssl")
pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(os.geteuid() != 0, reason="the capture lab creates network namespaces: needs root"),
    pytest.mark.skipif(bool(needs), reason=f"missing tools for the acquisition lab: {', '.join(needs)}"),
]

SANDBOX = "10.77.0.2"


@pytest.fixture(scope="module")
def recorded(tmp_path_factory):
    with lab_scenarios_restored():
        import lab_acquisition

        out = tmp_path_factory.mktemp("acquisition")
        assert lab_acquisition.main(["record", "--out", str(out)]) == 0
        yield out, list(lab_acquisition.ACQUISITION_SCENARIOS)


def _labels(folder):
    with (folder / "labels.csv").open(newline="") as fh:
        return list(csv.DictReader(fh))


def _analyse(path):
    """Flow records and resource_acquisition finding records of one capture, judged by the lab's rules."""
    from egressguard.pipeline import Analyzer, FlowsReady
    from egressguard.policy.rules import load_rules
    from egressguard.report.records import finding_record, flow_record

    flows, findings = [], []
    for event in Analyzer(rules=load_rules(LAB_CAPTURES / "acquisition" / "rules.toml")).analyze(str(path)):
        if isinstance(event, FlowsReady):
            flows += [flow_record(rec, str(path)) for rec in event.view.records]
            findings += [finding_record(f) for f in event.result.findings if f.kind == "resource_acquisition"]
    return flows, findings


def test_every_scenario_wrote_labelled_flows_the_sandbox_opened(recorded):
    folder, names = recorded
    rows = _labels(folder)
    assert {row["file"] for row in rows} == {f"{name}.pcap" for name in names}
    assert {row["class"] for row in rows} == {"cloud_billing", "compute_provisioning", "payment", "crypto_exchange",
                                              "wallet_rpc", "benign"}
    for name in names:
        flows, _ = _analyse(folder / f"{name}.pcap")
        for row in (r for r in rows if r["file"] == f"{name}.pcap"):
            host, _, port = row["server"].rpartition(":")
            match = [f for f in flows if f["src_ip"] == SANDBOX and f["dst_ip"] == host and f["dst_port"] == int(port)]
            assert match, (name, row["server"])
            assert all(f["roles_certain"] or f["proto"] == "udp" for f in match), (name, row["server"])
            assert sum(f["src_payload_bytes"] for f in match) > 20 and sum(f["dst_payload_bytes"] for f in match) > 20


def test_the_detector_finds_the_fresh_recording_with_the_right_categories(recorded):
    folder, names = recorded
    rows = _labels(folder)
    for name in names:
        _, findings = _analyse(folder / f"{name}.pcap")
        got = {f"{f['dst_ip']}:{f['dst_port']}": f["category"] for f in findings}
        want = {r["server"]: r["class"] for r in rows if r["file"] == f"{name}.pcap" and r["class"] != "benign"}
        assert got == want, name
