"""The capture lab, run for real (root only): every scenario records traffic that the detectors classify as its label.

This is the integration test of the SSH tunnel detector against real OpenSSH, autossh and scp in network
namespaces joined by a Linux bridge. All traffic stays inside the namespaces the lab creates.
"""
import os
import shutil
import sys

import pytest

from conftest import LAB_CAPTURES, REPO, missing_tools

sys.path.insert(0, str(LAB_CAPTURES))
sys.path.insert(0, str(REPO / "benchmarks"))

needs = missing_tools("ip", "tcpdump", "ssh", "ssh-keygen", "sshd", "autossh", "scp", "iodine", "iodined", "dns2tcpc",
                      "dns2tcpd", "ptunnel-ng", "traceroute")
pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(os.geteuid() != 0, reason="the capture lab creates network namespaces: needs root"),
    pytest.mark.skipif(bool(needs), reason=f"missing tools for the lab: {', '.join(needs)}"),
]


@pytest.fixture(scope="module")
def recorded(tmp_path_factory):
    import lab

    out = tmp_path_factory.mktemp("lab")
    assert lab.record(list(lab.OWN_SCENARIOS), out) == 0  # not the scenarios other lab modules registered
    shutil.copy(LAB_CAPTURES / "rules.toml", out)  # the policy the lab's unexpected_destination labels assume
    return out


def test_every_scenario_wrote_a_capture_and_labels(recorded):
    import lab

    for name in lab.OWN_SCENARIOS:
        assert (recorded / f"{name}.pcap").stat().st_size > 1000
    assert (recorded / "labels.csv").read_text().count("\n") >= len(lab.OWN_SCENARIOS) + 1


def test_lab_recordings_are_classified_as_labelled(recorded):
    import evaluate

    result = evaluate.evaluate([recorded])
    for cls in ("reverse_ssh_tunnel", "ssh_tunnel_other", "ssh_interactive", "ssh_transfer", "benign",
                "unexpected_destination"):
        row = result["classes"][cls]
        assert row["recall"] == 1.0, (cls, result["errors"])
    for cls in ("reverse_ssh_tunnel", "ssh_tunnel_other"):
        assert result["classes"][cls]["precision"] == 1.0, (cls, result["errors"])
    assert result["errors"] == []
