"""Where live findings go: the alerts file (rotation, crash safety) and the --on-finding hook (real processes)."""
import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time

import pytest

from egressguard.errors import CaptureError
from egressguard.report.alerts import AlertsFile
from egressguard.report.hooks import FindingHook, cut_port, hook_environment, parse_command
from egressguard.schema import Severity

RECORD = {"type": "finding", "kind": "reverse_ssh_tunnel", "severity": "critical", "score": 1.0,
          "evidence": ["banner 'SSH-2.0-x\x1b[2J'"], "src_ip": "10.77.0.2", "src_port": 40000,
          "dst_ip": "198.18.0.2", "dst_port": 443, "proto": "tcp", "src_mac": "02:00:00:00:00:02",
          "sandbox": "agent-1", "sandbox_port": "veth-agent1", "interface": "br0"}


def lines(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


# ---------------------------------------------------------------------------------------------- alerts file
def test_alerts_append_one_line_per_record_and_keep_what_was_there(tmp_path):
    path = tmp_path / "alerts.jsonl"
    path.write_text('{"old": 1}\n')
    alerts = AlertsFile(path)
    alerts.write(RECORD)
    alerts.write({**RECORD, "score": 0.5})
    alerts.close()
    got = lines(path)
    assert got[0] == {"old": 1} and got[1] == RECORD and got[2]["score"] == 0.5


def test_a_half_written_last_line_is_closed_before_new_records(tmp_path):
    path = tmp_path / "alerts.jsonl"
    path.write_text('{"done": 1}\n{"cut off by a cra')
    AlertsFile(path).write(RECORD)
    text = path.read_text().splitlines()
    assert text[1] == '{"cut off by a cra' and json.loads(text[2]) == RECORD


def test_log_rotation_by_rename_or_delete_reopens_the_path(tmp_path):
    path = tmp_path / "alerts.jsonl"
    alerts = AlertsFile(path)
    alerts.write(RECORD)
    os.rename(path, tmp_path / "alerts.jsonl.1")  # logrotate's default
    alerts.write({**RECORD, "score": 0.1})
    os.unlink(path)  # or the file is deleted
    alerts.write({**RECORD, "score": 0.2})
    assert [r["score"] for r in lines(tmp_path / "alerts.jsonl.1")] == [1.0]
    assert [r["score"] for r in lines(path)] == [0.2]


def test_alerts_file_that_cannot_be_opened_is_one_clear_error(tmp_path):
    with pytest.raises(CaptureError, match="cannot open the alerts file"):
        AlertsFile(tmp_path / "no-such-dir" / "alerts.jsonl")


WRITER = textwrap.dedent("""
    import sys
    from egressguard.report.alerts import AlertsFile
    alerts = AlertsFile(sys.argv[1])
    record = {"type": "finding", "kind": "beacon", "evidence": ["x" * 3000], "n": 0}
    print("ready", flush=True)
    n = 0
    while True:
        record["n"] = n
        alerts.write(record)
        n += 1
""")


def test_kill_9_leaves_valid_jsonl_up_to_the_last_line(tmp_path):
    path = tmp_path / "alerts.jsonl"
    proc = subprocess.Popen([sys.executable, "-c", WRITER, str(path)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "ready"
    time.sleep(0.5)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    data = path.read_bytes()
    assert data.endswith(b"\n")  # no half line: each record went out in one write
    records = [json.loads(line) for line in data.splitlines()]
    assert len(records) > 10 and [r["n"] for r in records] == list(range(len(records)))


# ---------------------------------------------------------------------------------------------- hook
HOOK = textwrap.dedent("""
    import json, os, sys
    record = json.load(sys.stdin)
    env = {k: v for k, v in os.environ.items() if k.startswith("EGRESSGUARD_")}
    with open(sys.argv[1], "a") as out:
        out.write(json.dumps({"record": record, "env": env, "argv": sys.argv[2:]}) + "\\n")
    sys.exit(int(sys.argv[2]) if len(sys.argv) > 2 else 0)
""")


def run_hook(tmp_path, argv, records, min_severity=Severity.HIGH, timeout_s=30.0):
    outcomes = []
    done = threading.Event()
    hook = FindingHook(argv, min_severity, lambda o: (outcomes.append(o), done.set()), timeout_s=timeout_s)
    for record in records:
        hook.offer(record)
    hook.close()
    return outcomes


def test_hook_gets_the_finding_on_stdin_and_egressguard_values_in_its_environment(tmp_path):
    script, out = tmp_path / "hook.py", tmp_path / "calls.jsonl"
    script.write_text(HOOK)
    low = {**RECORD, "severity": "low"}
    outcomes = run_hook(tmp_path, [sys.executable, str(script), str(out)], [RECORD, low])
    assert [o.ok for o in outcomes] == [True]  # the low one is below --on-finding-severity
    [call] = lines(out)
    assert call["record"] == RECORD  # escapes and all: JSON carries the wire string safely
    assert call["env"]["EGRESSGUARD_SANDBOX_IP"] == "10.77.0.2"
    assert call["env"]["EGRESSGUARD_SANDBOX_PORT"] == "veth-agent1"
    assert call["env"]["EGRESSGUARD_KIND"] == "reverse_ssh_tunnel" and call["env"]["EGRESSGUARD_SEVERITY"] == "critical"


def test_wire_strings_never_reach_the_command_line_or_environment():
    hostile = {**RECORD, "kind": "mining", "sandbox": "$(reboot)", "evidence": ["`rm -rf /`; $(id)"],
               "mining": {"login": "; reboot"}}
    env = hook_environment(hostile)
    assert not any(c in value for value in env.values() for c in "$`;")
    assert env["EGRESSGUARD_SANDBOX_IP"] == "10.77.0.2" and env["EGRESSGUARD_DST_PORT"] == "443"
    assert all(name.startswith("EGRESSGUARD_") for name in env) and len(env) == 9


def test_hook_failures_are_reported_and_the_next_finding_still_runs(tmp_path):
    script, out = tmp_path / "hook.py", tmp_path / "calls.jsonl"
    script.write_text(HOOK)
    outcomes = run_hook(tmp_path, [sys.executable, str(script), str(out), "3"], [RECORD, RECORD])
    assert [o.ok for o in outcomes] == [False, False] and "exit code 3" in outcomes[0].message
    assert len(lines(out)) == 2
    missing = run_hook(tmp_path, [str(tmp_path / "no-such-hook")], [RECORD])
    assert not missing[0].ok and "not found" in missing[0].message
    slow = run_hook(tmp_path, [sys.executable, "-c", "import time; time.sleep(30)"], [RECORD], timeout_s=0.5)
    assert not slow[0].ok and "did not finish" in slow[0].message


def test_command_text_is_split_like_a_shell_but_never_run_by_one():
    assert parse_command("egressguard hook cut-port") == ["egressguard", "hook", "cut-port"]
    assert parse_command("'/opt/my hooks/cut' --why 'a b'") == ["/opt/my hooks/cut", "--why", "a b"]
    with pytest.raises(ValueError):
        parse_command("")
    with pytest.raises(ValueError):
        parse_command("unbalanced 'quote")


@pytest.mark.parametrize("port", ["", "no-such-if0", "a;b", "x" * 40, "../etc"])
def test_cut_port_refuses_anything_but_an_existing_interface(port):
    with pytest.raises(ValueError, match="no interface named"):
        cut_port(port)
