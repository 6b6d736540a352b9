"""The command line as a user runs it: output contract, exit codes, one-line errors, stdin, compressed input."""
import gzip
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from egressguard.cli import main

REPO = Path(__file__).resolve().parents[1]
DEMO = REPO / "captures" / "benign-web.pcap"
FLOW_FIELDS = {"type", "capture", "src_ip", "src_port", "dst_ip", "dst_port", "proto", "first_seen", "last_seen",
               "src_pkts", "dst_pkts", "src_bytes", "dst_bytes", "community_id"}
SUMMARY_FIELDS = {"type", "capture", "packets", "bytes", "flows", "truncated", "undecodable", "first_seen",
                  "last_seen", "duration", "warnings"}


LAB_RULES = REPO / "captures" / "rules.toml"  # the lab's captures are judged by the lab's own policy


def run(*args, input=None):
    args = [str(a) for a in args]
    if args[:1] == ["analyze"] and "--rules" not in args:
        args[1:1] = ["--rules", str(LAB_RULES)]
    return CliRunner().invoke(main, args, input=input)


def jsonl(text):
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def test_jsonl_flows_and_summary_fields():
    result = run("analyze", "--format", "jsonl", "--flows", DEMO)
    assert result.exit_code == 0, result.output
    records = jsonl(result.stdout)
    flows = [r for r in records if r["type"] == "flow"]
    summaries = [r for r in records if r["type"] == "summary"]
    assert len(summaries) == 1 and records[-1]["type"] == "summary"
    assert flows and all(FLOW_FIELDS <= set(f) for f in flows)
    assert SUMMARY_FIELDS <= set(summaries[0])
    assert summaries[0]["flows"] == len(flows)
    assert summaries[0]["packets"] == sum(f["src_pkts"] + f["dst_pkts"] for f in flows) + summaries[0]["not_ip"]
    http = [f for f in flows if f["dst_port"] == 8080]
    assert len(http) == 5
    assert all(f["src_ip"] == "10.77.0.2" and f["dst_ip"] == "198.18.0.2" and f["proto"] == "tcp" for f in http)
    assert all(f["dst_bytes"] > 30 * 1024 > f["src_bytes"] for f in http)  # the download flows to the originator
    assert all(f["community_id"].startswith("1:") for f in flows)


def test_summary_only_without_flows_flag():
    result = run("analyze", "--format", "jsonl", DEMO)
    assert result.exit_code == 0
    assert [r["type"] for r in jsonl(result.stdout)] == ["summary"]


def test_table_output_names_capture_and_counts():
    result = run("analyze", DEMO)
    assert result.exit_code == 0
    assert "benign-web.pcap" in result.stdout and "packets" in result.stdout and "198.18.0.2" in result.stdout


def test_several_files_one_summary_each(tmp_path):
    copy = tmp_path / "second.pcap"
    copy.write_bytes(DEMO.read_bytes())
    records = jsonl(run("analyze", "--format", "jsonl", DEMO, copy).stdout)
    assert [r["capture"] for r in records] == [str(DEMO), str(copy)]


def test_gzip_input_matches_plain(tmp_path):
    gz = tmp_path / "demo.pcap.gz"
    gz.write_bytes(gzip.compress(DEMO.read_bytes()))
    plain = jsonl(run("analyze", "--format", "jsonl", "--flows", DEMO).stdout)
    packed = jsonl(run("analyze", "--format", "jsonl", "--flows", gz).stdout)
    strip = lambda rs: [{k: v for k, v in r.items() if k not in ("capture", "compression")} for r in rs]
    assert strip(plain) == strip(packed)
    assert packed[-1]["compression"] == "gzip"


def test_stdin_pipe_like_tcpdump():
    env = dict(os.environ, PYTHONPATH=str(REPO))
    proc = subprocess.run([sys.executable, "-m", "egressguard", "analyze", "--format", "jsonl", "--rules",
                           str(LAB_RULES), "-"], input=DEMO.read_bytes(), capture_output=True, env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout)
    assert summary["capture"] == "<stdin>" and summary["packets"] > 0


def test_empty_stdin_is_one_clear_error():
    env = dict(os.environ, PYTHONPATH=str(REPO))
    proc = subprocess.run([sys.executable, "-m", "egressguard", "analyze", "-"], input=b"",
                          capture_output=True, env=env, timeout=120)
    assert proc.returncode == 3
    assert proc.stderr.decode().strip() == "egressguard: error: <stdin>: empty input: no capture data"


@pytest.mark.parametrize("content,expected", [
    (None, "no such file"),
    (b"", "empty input"),
    (b"hello, this is text\n", "not a pcap or pcapng capture"),
    (b"\x28\xb5\x2f\xfd" + b"\0" * 40, "zstd"),
])
def test_bad_inputs_exit_3_with_one_line(tmp_path, content, expected):
    path = tmp_path / "input.pcap"
    if content is not None:
        path.write_bytes(content)
    result = run("analyze", path)
    assert result.exit_code == 3
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and str(path) in lines[0] and expected in lines[0]
    assert "Traceback" not in result.output


def test_directory_is_an_error(tmp_path):
    result = run("analyze", tmp_path)
    assert result.exit_code == 3 and "directory" in result.stderr


def test_good_file_still_reported_when_another_fails(tmp_path):
    result = run("analyze", "--format", "jsonl", tmp_path / "missing.pcap", DEMO)
    assert result.exit_code == 3
    assert [r["capture"] for r in jsonl(result.stdout)] == [str(DEMO)]


def test_truncated_file_warns_and_keeps_earlier_packets(tmp_path):
    data = DEMO.read_bytes()
    cut = tmp_path / "cut.pcap"
    cut.write_bytes(data[:-7])
    result = run("analyze", "--format", "jsonl", cut)
    assert result.exit_code == 0
    summary = jsonl(result.stdout)[-1]
    full = jsonl(run("analyze", "--format", "jsonl", DEMO).stdout)[-1]
    assert summary["packets"] == full["packets"] - 1
    assert summary["file_complete"] is False and any("truncated" in w for w in summary["warnings"])
    assert "warning" in result.stderr and "truncated" in result.stderr


@pytest.mark.parametrize("args", [[], ["--flows", str(DEMO)], ["--capacity", "0", str(DEMO)],
                                  ["--payload-slots", "99", "--capacity", "10", str(DEMO)], ["-", "-"]])
def test_usage_errors_exit_2(args):
    assert run("analyze", *args).exit_code == 2


def test_help_compiles_nothing():
    code = ("import sys\nfrom click.testing import CliRunner\nfrom egressguard.cli import main\n"
            "r = CliRunner().invoke(main, ['analyze', '--help'])\nassert r.exit_code == 0\n"
            "assert 'numba' not in sys.modules, 'help imported numba'\nprint('ok')")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                          env=dict(os.environ, PYTHONPATH=str(REPO)))
    assert proc.stdout.strip() == "ok", proc.stderr


def test_flow_capacity_bounds_memory_and_counts_evictions():
    result = run("analyze", "--format", "jsonl", "--flows", "--capacity", "2", DEMO)
    records = jsonl(result.stdout)
    summary = records[-1]
    assert summary["evictions"] > 0
    assert sum(1 for r in records if r["type"] == "flow" and r["end_reason"] == "evicted") == summary["evictions"]


RULES_DIR = REPO / "rules"


def test_rules_check_prints_what_the_file_allows_and_denies():
    result = run("rules", "check", RULES_DIR / "default.toml")
    assert result.exit_code == 0, result.output
    for text in ("deny[0]", "tunnel and reverse-proxy services", "allow[2]", "package registries", "pypi.org",
                 "tcp: 443", "metadata", "critical", "minimum DNS TTL"):
        assert text in result.stdout, text


@pytest.mark.parametrize("command", [["rules", "check"], ["analyze", "--rules"]])
def test_invalid_rules_exit_4_with_one_line_naming_file_line_key_value_fix(tmp_path, command):
    bad = tmp_path / "bad.toml"
    bad.write_text('version = 1\n\n[[allow]]\nname = "registries"\ncidrs = ["10.0.0.0/33"]\n')
    args = command + [bad] + ([DEMO] if command[0] == "analyze" else [])
    result = run(*args)
    assert result.exit_code == 4
    assert result.stderr == (f'egressguard: error: {bad}:5: allow[0].cidrs[0] = "10.0.0.0/33": the prefix length must '
                             f'be 0-32 for IPv4. Fix: write e.g. "10.0.0.0/32" for the one address\n')
    assert result.stdout == ""  # nothing was analysed with half a configuration


def test_analyze_with_rules_reports_unexpected_destinations():
    result = run("analyze", "--rules", REPO / "captures" / "rules.toml", REPO / "captures" / "egress-policy.pcap")
    assert result.exit_code == 1
    assert "unexpected_destination" in result.stdout and "reason sni_mismatch" in result.stdout


def test_rules_help_compiles_nothing():
    code = ("import sys\nfrom click.testing import CliRunner\nfrom egressguard.cli import main\n"
            "r = CliRunner().invoke(main, ['rules', 'check', 'rules/default.toml'])\nassert r.exit_code == 0\n"
            "assert 'numba' not in sys.modules, 'rules check imported numba'\nprint('ok')")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=REPO,
                          env=dict(os.environ, PYTHONPATH=str(REPO)))
    assert proc.stdout.strip() == "ok", proc.stderr
