"""Evidence captures (`analyze --evidence DIR`): every finding names a pcap holding its packets, the pcap opens in
an independent reader with as many packets as the flow records count, and re-analysing it gives the same finding."""
import json

import dpkt
from click.testing import CliRunner

from conftest import LAB_CAPTURES
from egressguard.cli import main


def _analyze(*args):
    result = CliRunner().invoke(main, ["analyze", "--format", "jsonl", "--flows", *args])
    records = [json.loads(line) for line in result.output.splitlines() if line.startswith("{")]
    return result, records


def _count(path):
    with open(path, "rb") as fh:
        return sum(1 for _ in dpkt.pcap.Reader(fh))


def test_each_finding_gets_a_pcap_of_its_packets(tmp_path):
    out = tmp_path / "evidence"
    result, records = _analyze("--evidence", str(out), "--rules", str(LAB_CAPTURES / "rules.toml"),
                               str(LAB_CAPTURES / "ssh-reverse-shell.pcap"), str(LAB_CAPTURES / "egress-policy.pcap"))
    assert result.exit_code == 1, result.output
    flows = [r for r in records if r["type"] == "flow"]
    findings = [r for r in records if r["type"] == "finding"]
    assert {f["kind"] for f in findings} >= {"reverse_ssh_tunnel", "unexpected_destination"}
    paths = [f["evidence_pcap"] for f in findings]
    assert len(set(paths)) == len(findings) and all(p.startswith(str(out)) for p in paths)
    for f in findings:
        n = _count(f["evidence_pcap"])
        if f["kind"] == "unexpected_destination":
            # every connection between the sandbox and that destination and port
            same = [r for r in flows if r["capture"] == f["capture"] and r["src_ip"] == f["src_ip"]
                    and r["dst_ip"] == f["dst_ip"] and r["dst_port"] == f["dst_port"] and r["proto"] == f["proto"]]
        else:
            same = [r for r in flows if r["capture"] == f["capture"] and r["src_ip"] == f["src_ip"]
                    and r["src_port"] == f["src_port"] and r["dst_ip"] == f["dst_ip"]
                    and r["dst_port"] == f["dst_port"] and r["proto"] == f["proto"]]
        assert n == sum(r["src_pkts"] + r["dst_pkts"] for r in same) > 0, f


def test_the_evidence_of_a_tunnel_reanalyses_to_the_same_finding(tmp_path):
    _, records = _analyze("--evidence", str(tmp_path), str(LAB_CAPTURES / "ssh-reverse-shell.pcap"))
    [tunnel] = [r for r in records if r["type"] == "finding" and r["kind"] == "reverse_ssh_tunnel"]
    _, again = _analyze(tunnel["evidence_pcap"])
    [same] = [r for r in again if r["type"] == "finding" and r["kind"] == "reverse_ssh_tunnel"]
    assert (same["src_ip"], same["src_port"], same["dst_ip"], same["dst_port"], same["severity"]) == \
        (tunnel["src_ip"], tunnel["src_port"], tunnel["dst_ip"], tunnel["dst_port"], tunnel["severity"])
    assert [r for r in again if r["type"] == "flow"] and len([r for r in again if r["type"] == "flow"]) == 1


def test_evidence_mistakes_are_one_clear_error(tmp_path):
    capture = str(LAB_CAPTURES / "ssh-reverse-shell.pcap")
    result = CliRunner().invoke(main, ["analyze", "--evidence", str(tmp_path), "-"], input=b"")
    assert result.exit_code == 2 and "standard input" in result.output
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    result = CliRunner().invoke(main, ["analyze", "--evidence", str(blocker / "sub"), capture])
    assert result.exit_code == 2 and "cannot write there" in result.output
    assert "Traceback" not in result.output
