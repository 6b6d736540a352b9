"""reverse_shell: every lab reverse shell found with its evidence, nothing on the interactive protocols and other
captures, the plaintext recogniser on byte literals, and live: a real `bash -i >& /dev/tcp` reported in seconds."""
import contextlib
import csv
import json
import os
import random
import shlex
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from conftest import LAB_CAPTURES, PUBLIC_CAPTURES, REPO, missing_tools
from egressguard.detect import BY_NAME, DETECTORS
from egressguard.detect.base import LiveMode
from egressguard.detect.reverse_shell import (Params, ReverseShellDetector, measure_shape, recognise,
                                              remote_commands, shape_verdict, strip_connect)
from egressguard.errors import CaptureError
from egressguard.pipeline import Analyzer, FlowsReady
from egressguard.policy.rules import load_rules
from egressguard.report.records import flow_fields
from egressguard.schema import FindingKind

SHELLS = LAB_CAPTURES / "reverse-shells"
CAPTURE_SUFFIXES = (".pcap", ".pcapng", ".cap", ".pcap.gz", ".pcapng.gz")


def _findings(path: Path, rules: Path | None = None) -> list:
    """reverse_shell findings of one capture, with only this detector running."""
    analyzer = Analyzer(detectors=[ReverseShellDetector], rules=load_rules(rules) if rules else None)
    out = []
    for event in analyzer.analyze(str(path)):
        if isinstance(event, FlowsReady):
            out += [f for f in event.result.findings if f.kind is FindingKind.REVERSE_SHELL]
    return out


def _labels() -> list[dict]:
    with (SHELLS / "labels.csv").open(newline="") as fh:
        return list(csv.DictReader(fh))


@pytest.fixture(scope="module")
def shell_findings() -> dict[str, list]:
    files = sorted({row["file"] for row in _labels()})
    return {name: _findings(SHELLS / name, SHELLS / "rules.toml") for name in files}


def test_registered_and_reported_while_open():
    assert ReverseShellDetector in DETECTORS and BY_NAME["reverse_shell"] is ReverseShellDetector
    assert ReverseShellDetector.live is LiveMode.OPEN_FLOWS
    assert FindingKind("reverse_shell") is FindingKind.REVERSE_SHELL


def _shell_rows() -> list[dict]:
    return [row for row in _labels() if row["class"] == "reverse_shell"]


@pytest.mark.parametrize("row", _shell_rows(), ids=lambda r: r["file"])
def test_every_lab_reverse_shell_is_found_with_its_evidence(shell_findings, row):
    server_ip, server_port = row["server"].rsplit(":", 1)
    hits = [f for f in shell_findings[row["file"]]
            if flow_fields(f.flow)["src_ip"] == row["client"] and flow_fields(f.flow)["dst_ip"] == server_ip
            and flow_fields(f.flow)["dst_port"] == int(server_port)]
    assert len(hits) == 1, [flow_fields(f.flow) for f in shell_findings[row["file"]]]
    finding = hits[0]
    info = finding.details["reverse_shell"]
    assert info["remote_led_bursts"] > info["sandbox_led_bursts"]  # the remote side leads
    assert info["median_command_gap_s"] >= 1.0  # commands a person types, seconds apart
    note = row["note"]
    if "carrier tls" in note:
        assert info["evidence"] == "shape" and info["carrier"] == "tls"
        assert info["first_command"] is None and info["median_remote_bytes"] < info["median_sandbox_bytes"]
        assert any("shape and timing alone" in e for e in finding.evidence)
        if "pty" in note and "no pty" not in note:  # one key per record: typing measured
            assert info["keystrokes"] >= 8 and 50 <= info["median_keystroke_gap_ms"] <= 400
        assert finding.severity.label() in ("medium", "high")
    else:
        assert info["evidence"] == "plaintext" and finding.severity.label() == "high"
        command = info["first_command"]
        assert command.split()[0] in ("id", "whoami", "uname", "python3"), command
        if "carrier http_connect" in note:
            assert info["carrier"].startswith("http_connect to 198.18.0.5:")
        if "carrier websocket" in note:
            assert info["carrier"] == "websocket"
        if " -i " in note or "(pty" in note or "on a pty" in note:  # an interactive shell prints a prompt
            assert info["first_prompt"] is not None and ("#" in info["first_prompt"] or "$" in info["first_prompt"])
            assert "\x1b" not in info["first_prompt"] and "\x07" not in info["first_prompt"]  # escaped


def test_recall_is_one_on_the_lab_shells(shell_findings):
    rows = _shell_rows()
    assert len(rows) == 12
    found = sum(1 for r in rows if shell_findings[r["file"]])
    assert found == len(rows)


@pytest.mark.parametrize("name", sorted({r["file"] for r in _labels() if r["class"] == "benign"}))
def test_no_reverse_shell_on_the_interactive_protocol_negatives(shell_findings, name):
    assert shell_findings[name] == []


def test_shape_alone_still_finds_most_lab_shells_and_no_negative():
    """The fallback for shells the recogniser cannot read (other tools, other first commands): with the plaintext
    recogniser switched off, the conversation's shape alone finds 11 of the 12 and none of the negatives."""
    shape_only = Params(min_plain_weight=2.0)
    found, false = 0, []
    for name in sorted({r["file"] for r in _labels()}):
        analyzer = Analyzer(detectors=[lambda ctx: ReverseShellDetector(ctx, shape_only)],
                            rules=load_rules(SHELLS / "rules.toml"))
        hits = [f for e in analyzer.analyze(str(SHELLS / name)) if isinstance(e, FlowsReady)
                for f in e.result.findings]
        assert all(f.details["reverse_shell"]["evidence"] == "shape" for f in hits)
        if any(r["file"] == name and r["class"] == "reverse_shell" for r in _labels()):
            found += bool(hits)
        elif hits:
            false.append(name)
    assert found >= 11 and not false, (found, false)


def _captures(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.name.endswith(CAPTURE_SUFFIXES))


@pytest.mark.parametrize("folder", ["", "ssh-implementations", "carriers"])
def test_no_reverse_shell_on_the_other_lab_captures(folder):
    base = LAB_CAPTURES / folder
    rules = base / "rules.toml"
    paths = sorted(base.glob("*.pcap"))
    assert paths
    # no label in these folders says reverse_shell (reverse SSH tunnels are the SSH detector's)
    with (base / "labels.csv").open(newline="") as fh:
        assert not any(row["class"] == "reverse_shell" for row in csv.DictReader(fh))
    hits = {p.name: len(_findings(p, rules if rules.exists() else None)) for p in paths}
    assert not any(hits.values()), {k: v for k, v in hits.items() if v}


@pytest.mark.public
def test_no_reverse_shell_on_the_public_captures():
    if not PUBLIC_CAPTURES.exists():
        pytest.skip(f"public captures not found (expected under {PUBLIC_CAPTURES})")
    hits = {}
    for path in _captures(PUBLIC_CAPTURES):
        with contextlib.suppress(CaptureError):
            hits[str(path.relative_to(PUBLIC_CAPTURES))] = len(_findings(path))
    assert hits
    assert not any(hits.values()), {k: v for k, v in hits.items() if v}


# ------------------------------------------------------------------------------------------- plaintext recogniser
def test_bash_devtcp_bytes_are_a_shell():
    sandbox = (b"bash: cannot set terminal process group (-1): Inappropriate ioctl for device\n"
               b"bash: no job control in this shell\n\x1b]0;root@box: ~\x07root@box:~# ")
    found = recognise(sandbox, b"id\nuname -a\n")
    assert found is not None and found.commands == ("id", "uname -a")
    assert found.first_prompt == "root@box:~# "
    assert any("job-control" in s for _, s in found.markers)


def test_shell_without_prompt_is_recognised_by_its_output():
    assert recognise(b"uid=0(root) gid=0(root) groups=0(root)\nlab\n"
                     b"Linux lab 6.1.0-18-amd64 #1 SMP PREEMPT_DYNAMIC Debian x86_64 GNU/Linux\n",
                     b"id\nhostname\nuname -a\n") is not None


def test_keys_sent_one_by_one_and_rubbed_out_are_joined():
    assert remote_commands(b"i" b"x\x7f" b"d" b"\r" b"l" b"s") == ["id"]  # "ls" has no Enter yet
    assert remote_commands(b"sudo -i\nLANG=C ls /tmp\n/tmp/enum.sh\n") == ["sudo -i", "LANG=C ls /tmp", "/tmp/enum.sh"]


def test_prompt_forms():
    for prompt in (b"bash-5.2$ ", b"sh-5.2# ", b"# ", b"/ # ", b"kim@host:~/src$ ", b"PS C:\\Users\\kim> ",
                   b"C:\\Windows\\system32>"):
        assert recognise(prompt + (b"" if prompt.endswith(b"> ") or prompt.endswith(b">") else b""),
                         b"whoami\n", min_weight=0.6) is not None, prompt


@pytest.mark.parametrize("sandbox,remote", [
    (b"EHLO lab-sandbox\r\nMAIL FROM:<ci@lab.example>\r\n", b"220 mail.lab.example ESMTP\r\n250-mail.lab.example\r\n"),
    (b"USER lab\r\nPASS labpass\r\nSYST\r\nLIST\r\n", b"220 pyftpdlib 1.5.7 ready.\r\n331 Username ok.\r\n"),
    (b"NICK kim\r\nJOIN #build\r\nPRIVMSG #build :ls -la done\r\n",
     b":irc.lab.example 001 kim :Welcome\r\n:dana!~d@h PRIVMSG #build :id\r\n"),
    (b"*2\r\n$9\r\nSUBSCRIBE\r\n$6\r\nalerts\r\n", b"*3\r\n$7\r\nmessage\r\n$6\r\nalerts\r\n$2\r\nid\r\n"),
    (b"+OK\r\n$5\r\nhello\r\n", b"*1\r\n$4\r\nPING\r\n"),
    (b"a1 LOGIN kim secret\r\na2 SELECT INBOX\r\n", b"* OK IMAP4rev1 ready\r\na1 OK LOGIN completed\r\n"),
    (b"USER kim\r\nPASS x\r\nLIST\r\n", b"+OK POP3 ready\r\n+OK\r\n1 120\r\n.\r\n"),
])
def test_line_protocols_are_not_shells(sandbox, remote):
    assert recognise(sandbox, remote) is None


def test_the_sandbox_typing_into_a_remote_shell_is_not_a_reverse_shell():
    """A bind shell outside used from the sandbox: commands go out, output comes in: roles reversed."""
    assert recognise(b"id\nuname -a\n", b"uid=0(root) gid=0(root) groups=0(root)\nroot@c2:~# ") is None


def test_a_command_word_alone_is_not_enough():
    assert recognise(b"HTTP/1.1 200 OK\r\n\r\nhello", b"ls\ncat notes\n") is None


def test_connect_preamble_is_peeled():
    peeled = strip_connect(b"CONNECT 198.18.0.5:4444 HTTP/1.0\r\n\r\nuid=0(root)",
                           b"HTTP/1.0 200 Connection established\r\nProxy-agent: x\r\n\r\nid\n")
    assert peeled == (b"uid=0(root)", b"id\n", "198.18.0.5:4444")
    assert strip_connect(b"GET / HTTP/1.1\r\n\r\n", b"HTTP/1.1 200 OK\r\n\r\n") is None


def _sequence(events: list[tuple[float, int]]) -> tuple[np.ndarray, np.ndarray]:
    return np.array([s for _, s in events], np.int32), np.array([int(t * 1e6) for t, _ in events], np.uint32)


def test_shape_of_commands_from_outside_answered_by_output():
    rng = random.Random(3)
    events, t = [(0.0, 517), (0.002, -1339), (0.006, 80)], 0.0
    for _ in range(6):
        t += rng.uniform(2.0, 6.0)
        events += [(t, -rng.randint(25, 45)), (t + 0.004, rng.randint(60, 400))]
    verdict = shape_verdict(measure_shape(*_sequence(events)))
    assert verdict is not None and verdict[0] < 0.85  # shape only: medium


def test_shape_of_pushes_nobody_answers_and_of_a_timer_are_not_shells():
    pushes = [(0.0, 300), (0.01, -200)] + [(1.5 + 2.2 * i + (i % 3) * 0.7, -80) for i in range(8)]
    assert shape_verdict(measure_shape(*_sequence(pushes))) is None
    timer = [(0.0, 300), (0.01, -200)] + [e for i in range(8) for e in ((2.0 + 5.0 * i, -40), (2.01 + 5.0 * i, 90))]
    assert shape_verdict(measure_shape(*_sequence(timer))) is None  # metronome: a ping answered, not a person


# ------------------------------------------------------------------------------------------------------ live
LIVE_NEEDS = missing_tools("ip", "tcpdump", "nc.traditional", "bash", "unshare")
FINDING_WITHIN_S = 10.0  # from the operator's first Enter to the finding on stdout


@pytest.mark.root
@pytest.mark.skipif(os.geteuid() != 0, reason="watch needs raw sockets and the test creates namespaces: root")
@pytest.mark.skipif(bool(LIVE_NEEDS), reason=f"missing tools: {', '.join(LIVE_NEEDS)}")
def test_live_bash_devtcp_shell_is_reported_within_seconds_and_runs_the_hook(tmp_path):
    sys.path.insert(0, str(LAB_CAPTURES))
    import lab
    import lab_shells

    hook_out = tmp_path / "hook.jsonl"
    hook = [sys.executable, "-c", "import os,sys; open(sys.argv[1], 'a').write(os.environ['EGRESSGUARD_KIND'] + "
                                  "' ' + os.environ['EGRESSGUARD_SEVERITY'] + '\\n')", str(hook_out)]
    findings: list[tuple[float, dict]] = []
    stderr: list[str] = []
    ready = threading.Event()
    with lab.topology() as L:
        proc = L.popen(L.gw, sys.executable, "-m", "egressguard", "watch", "-i", "br0", "--no-dashboard",
                       "--rules", str(SHELLS / "rules.toml"), "--on-finding", shlex.join(hook),
                       "--on-finding-severity", "high",
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO)

        def read_out():
            for line in proc.stdout:
                findings.append((time.time(), json.loads(line)))

        def read_err():
            for line in proc.stderr:
                stderr.append(line.rstrip("\n"))
                if "watching" in line:
                    ready.set()

        threading.Thread(target=read_out, daemon=True).start()
        threading.Thread(target=read_err, daemon=True).start()
        try:
            assert ready.wait(300), "\n".join(stderr)  # a cold numba cache compiles first
            rng = random.Random(14)
            with lab_shells.terminal(L, L.out, ["nc.traditional", "-lvnp", "4444"]) as op:
                lab._wait_listening(L, L.out, 4444)
                shell = lab_shells.sandboxed(L, lab_shells.bash_devtcp(4444), home=True)
                with lab_shells.service(L, L.sbx, *shell, env=lab_shells.SANDBOX_ENV):
                    lab_shells.wait_established(L, L.out, 4444)
                    time.sleep(1.0)
                    op.session(["id"], rng, read_s=(0.8, 1.2))
                    first_enter = time.time() - 1.0
                    op.session(["uname -a", "ls -la"], rng, read_s=(1.0, 1.5))
                    deadline = first_enter + FINDING_WITHIN_S + 5
                    hit = None
                    while time.time() < deadline and hit is None:
                        hit = next((item for item in findings if item[1]["kind"] == "reverse_shell"), None)
                        time.sleep(0.2)
                    assert b"uid=0(root)" in op.output, op.tail()
                shell_closed = time.time()
            assert hit is not None, "\n".join(stderr[-20:])
            at, record = hit
            assert at - first_enter < FINDING_WITHIN_S
            print(f"reverse_shell reported {at - first_enter:.1f} s after the first command")
            assert record["src_ip"] == lab.SANDBOX_IP and record["dst_port"] == 4444
            assert record["severity"] == "high" and record["reverse_shell"]["evidence"] == "plaintext"
            assert at < shell_closed  # reported while the shell is still open
            deadline = time.time() + 10
            while time.time() < deadline and not (hook_out.exists() and "reverse_shell" in hook_out.read_text()):
                time.sleep(0.2)
            assert "reverse_shell high" in hook_out.read_text()
        finally:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
