"""`egressguard watch` for real (root only): three sandboxes behind a Linux bridge in network namespaces.

One sandbox opens a real OpenSSH reverse tunnel to the outside host and the outside logs back in through it, one
runs a mining exchange, one fetches web pages. The watcher runs on the bridge with --no-dashboard, --alerts and the
shipped kill switch (`egressguard hook cut-port`) for critical findings: the right findings must arrive within
seconds, attributed to the right sandbox and bridge port, nothing for the benign one, and the kill switch must
really set the offending sandboxes' ports down. All traffic stays inside the namespaces the test creates.
"""
import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time

import pytest

from conftest import LAB_CAPTURES, REPO, missing_tools

sys.path.insert(0, str(LAB_CAPTURES))

needs = missing_tools("ip", "tcpdump", "ssh", "ssh-keygen", "sshd")
pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(os.geteuid() != 0, reason="watch needs raw sockets and the test creates namespaces: root"),
    pytest.mark.skipif(bool(needs), reason=f"missing tools: {', '.join(needs)}"),
]

BENIGN_IP, MINER_IP = "10.77.0.3", "10.77.0.4"
FINDING_WITHIN_S = 20.0  # from the first packet of the offending connection to the finding on stdout


class Watcher:
    """The watch process and what it printed, with arrival times."""

    def __init__(self, proc: subprocess.Popen):
        self.proc = proc
        self.findings: list[tuple[float, dict]] = []
        self.stderr: list[str] = []
        self.ready = threading.Event()
        threading.Thread(target=self._out, daemon=True).start()
        threading.Thread(target=self._err, daemon=True).start()

    def _out(self) -> None:
        for line in self.proc.stdout:
            self.findings.append((time.time(), json.loads(line)))

    def _err(self) -> None:
        for line in self.proc.stderr:
            self.stderr.append(line.rstrip("\n"))
            if "watching" in line:
                self.ready.set()

    def wait_for(self, pred, timeout: float) -> tuple[float, dict] | None:
        deadline = time.time() + timeout
        while time.time() < deadline:
            for item in list(self.findings):
                if pred(item[1]):
                    return item
            time.sleep(0.2)
        return None


def _add_sandbox(lab_mod, lab, name: str, address: str) -> tuple[str, str]:
    """Another sandbox namespace on the lab bridge: returns (namespace, its bridge port in the gateway)."""
    ns, port, inner = f"eg{lab.tag}-{name}", f"eg{lab.tag}{name[0]}1", f"eg{lab.tag}{name[0]}0"
    lab_mod._ip("netns", "add", ns)
    lab_mod._ip("link", "add", inner, "type", "veth", "peer", "name", port)
    lab_mod._ip("link", "set", inner, "netns", ns)
    lab_mod._ip("link", "set", port, "netns", lab.gw)
    lab.run(ns, "sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1", "net.ipv6.conf.default.disable_ipv6=1")
    lab.run(ns, "ip", "link", "set", inner, "name", "eth0")
    lab.run(ns, "ip", "addr", "add", f"{address}/24", "dev", "eth0")
    for dev in ("eth0", "lo"):
        lab.run(ns, "ip", "link", "set", dev, "up")
    lab.run(ns, "ip", "route", "add", "default", "via", lab_mod.GATEWAY_IP)
    lab.run(ns, "ethtool", "-K", "eth0", "tso", "off", "gso", "off", "gro", "off", check=False)
    lab.run(lab.gw, "ip", "link", "set", port, "master", "br0")
    lab.run(lab.gw, "ip", "link", "set", port, "up")
    return ns, port


@contextlib.contextmanager
def _extra_namespaces(lab):
    """Namespaces the test adds to the lab's three, removed (with their processes) on exit."""
    names: list[str] = []
    try:
        yield names
    finally:
        for ns in names:
            for pid in subprocess.run(["ip", "netns", "pids", ns], capture_output=True, text=True).stdout.split():
                with contextlib.suppress(ProcessLookupError, ValueError):
                    os.kill(int(pid), signal.SIGKILL)
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)


def _link_up(lab, port: str) -> bool:
    out = lab.run(lab.gw, "ip", "-o", "link", "show", "dev", port).stdout
    return ",UP" in out or "<UP" in out


@pytest.fixture(scope="module")
def session(tmp_path_factory):
    import lab
    import lab_mining

    tmp = tmp_path_factory.mktemp("watch")
    rules = tmp / "rules.toml"
    text = (LAB_CAPTURES / "rules.toml").read_text()
    rules.write_text(text.replace('[sandboxes]\n', f'[sandboxes]\n"{BENIGN_IP}" = "web-agent"\n'
                                                   f'"{MINER_IP}" = "miner-agent"\n', 1))
    alerts = tmp / "alerts.jsonl"
    result: dict = {}
    with lab.topology() as L, _extra_namespaces(L) as extra:
        benign_ns, benign_port = _add_sandbox(lab, L, "web", BENIGN_IP)
        miner_ns, miner_port = _add_sandbox(lab, L, "mine", MINER_IP)
        extra += [benign_ns, miner_ns]
        tunnel_port = f"eg{L.tag}s1"
        hook = f"{sys.executable} -m egressguard hook cut-port"
        proc = L.popen(L.gw, sys.executable, "-m", "egressguard", "watch", "-i", "br0", "--no-dashboard",
                       "--rules", str(rules), "--alerts", str(alerts), "--on-finding", hook,
                       "--on-finding-severity", "critical", stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                       text=True, cwd=REPO)
        watcher = Watcher(proc)
        try:
            assert watcher.ready.wait(120), "\n".join(watcher.stderr)
            time.sleep(1.0)
            # 1. benign: web downloads from the web agent
            www = lab._web_root(L)
            with lab.background(L, L.out, sys.executable, "-m", "http.server", "8080", "--bind", lab.OUTSIDE_IP,
                                "--directory", str(www), ready_port=8080):
                L.run(benign_ns, sys.executable, "-c", lab.PY_HTTP_FETCH, lab.OUTSIDE_IP, "8080", "3")
            # 2. mining: an xmrig-style session from the miner agent
            with lab_mining._pool_address(L), lab_mining._server(L, "cryptonote", 14444):
                result["mining_start"] = time.time()
                L.run(miner_ns, *lab_mining._peer(L, miner_ns, "client", "cryptonote", lab_mining.POOL_IP, 14444,
                                                  duration=10.0), timeout=60, check=False)
            result["mining"] = watcher.wait_for(lambda r: r["kind"] == "mining", 30)
            result["miner_port_up"] = _wait_down(L, miner_port)
            # 3. reverse tunnel from the lab sandbox; the outside logs back in through it
            with lab.sshd(L, L.out), lab.sshd(L, L.sbx):
                result["tunnel_start"] = time.time()
                with lab.ssh_client(L, L.sbx, "-N", "-p", "443", "-R", "2222:127.0.0.1:22",
                                    f"root@{lab.OUTSIDE_IP}"):
                    lab.type_into(L, L.out, lab.ssh_args(L, "-tt", "-p", "2222", "root@127.0.0.1"),
                                  lab.SHELL_LINES[:3], seed=5)
                    result["tunnel"] = watcher.wait_for(lambda r: r["kind"] == "reverse_ssh_tunnel", 30)
                    result["tunnel_port_up"] = _wait_down(L, tunnel_port)
            result["benign_port_up"] = _link_up(L, benign_port)
            time.sleep(1.0)
        finally:
            proc.send_signal(signal.SIGTERM)
            try:
                result["exit"] = proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
                result["exit"] = "hung"
        time.sleep(0.3)
    result.update(findings=[r for _, r in watcher.findings], stderr=watcher.stderr, alerts=alerts,
                  tunnel_port=tunnel_port, miner_port=miner_port)
    return result


def _wait_down(lab, port: str, timeout: float = 15.0) -> bool:
    """True when the port is still up after `timeout` (the kill switch did not cut it)."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        if not _link_up(lab, port):
            return False
        time.sleep(0.2)
    return True


def test_reverse_tunnel_is_reported_within_seconds_with_its_sandbox_and_port(session):
    assert session["tunnel"] is not None, session["stderr"]
    at, record = session["tunnel"]
    assert at - session["tunnel_start"] < FINDING_WITHIN_S
    assert record["src_ip"] == "10.77.0.2" and record["sandbox"] == "lab-sandbox"
    assert record["dst_port"] == 443 and record["sandbox_port"] == session["tunnel_port"]
    assert record["interface"] == "br0" and record["ssh"]["client_banner"].startswith("SSH-2.0-OpenSSH")


def test_mining_is_reported_for_the_miner_sandbox(session):
    assert session["mining"] is not None, session["stderr"]
    at, record = session["mining"]
    assert at - session["mining_start"] < FINDING_WITHIN_S
    assert record["src_ip"] == MINER_IP and record["sandbox"] == "miner-agent" and record["dst_port"] == 14444
    assert record["sandbox_port"] == session["miner_port"]


def test_nothing_is_reported_for_the_benign_sandbox(session):
    assert [r for r in session["findings"] if r["src_ip"] == BENIGN_IP] == []
    assert session["benign_port_up"]


def test_kill_switch_really_cut_the_offending_sandboxes(session):
    assert session["miner_port_up"] is False and session["tunnel_port_up"] is False
    assert any("hook" in line and "ran" in line for line in session["stderr"]), session["stderr"]


def test_sigterm_ends_cleanly_and_the_alerts_file_has_every_finding(session):
    assert session["exit"] == 0, session["stderr"]
    assert any("stopped:" in line for line in session["stderr"])
    alerts = [json.loads(line) for line in session["alerts"].read_text().splitlines()]
    assert alerts == session["findings"] and alerts
    kinds = {(r["kind"], r["src_ip"]) for r in alerts}
    assert ("mining", MINER_IP) in kinds and ("reverse_ssh_tunnel", "10.77.0.2") in kinds


def test_user_option_drops_root_after_opening_the_sockets(tmp_path):
    """watch --user nobody: the sockets are opened as root, then the process runs as nobody and still captures."""
    ns = f"egw{os.getpid() % 100000}-user"
    subprocess.run(["ip", "netns", "add", ns], check=True)
    try:
        subprocess.run(["ip", "netns", "exec", ns, "ip", "link", "set", "lo", "up"], check=True)
        proc = subprocess.Popen(["ip", "netns", "exec", ns, sys.executable, "-m", "egressguard", "watch", "-i", "lo",
                                 "--no-dashboard", "--user", "nobody"], stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, cwd=REPO)
        watcher = Watcher(proc)
        try:
            assert watcher.ready.wait(120), "\n".join(watcher.stderr)
            # `ip netns exec` execs the interpreter in place: the pid is egressguard's own
            status = open(f"/proc/{proc.pid}/status").read()
            uids = next(line for line in status.splitlines() if line.startswith("Uid:")).split()[1:]
            nobody = subprocess.run(["id", "-u", "nobody"], capture_output=True, text=True).stdout.strip()
            assert set(uids) == {nobody}, uids  # real, effective, saved and filesystem uid
            subprocess.run(["ip", "netns", "exec", ns, "ping", "-c", "3", "-i", "0.2", "127.0.0.1"],
                           capture_output=True, timeout=20)
            time.sleep(1.0)
        finally:
            proc.send_signal(signal.SIGTERM)
            code = proc.wait(timeout=60)
        assert code == 0, watcher.stderr
        stopped = [line for line in watcher.stderr if "stopped:" in line]
        assert stopped and " 0 packets" not in stopped[0], watcher.stderr
    finally:
        subprocess.run(["ip", "netns", "del", ns], capture_output=True)


def test_dashboard_is_the_default_on_a_terminal_and_stops_cleanly(tmp_path):
    """On a real pseudo-terminal, with no --no-dashboard: the dashboard draws (header, the interface row with its
    packet count rising), SIGTERM restores the terminal and exits 0 with the summary line."""
    import fcntl
    import pty
    import re
    import select
    import struct
    import termios

    ns = f"egw{os.getpid() % 100000}-tty"
    subprocess.run(["ip", "netns", "add", ns], check=True)
    master, slave = pty.openpty()
    try:
        subprocess.run(["ip", "netns", "exec", ns, "ip", "link", "set", "lo", "up"], check=True)
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))
        proc = subprocess.Popen(["ip", "netns", "exec", ns, sys.executable, "-m", "egressguard", "watch", "-i", "lo"],
                                stdin=slave, stdout=slave, stderr=slave, cwd=REPO, start_new_session=True)
        os.close(slave)
        out = b""

        def read_for(seconds: float) -> None:
            nonlocal out
            end = time.time() + seconds
            while time.time() < end:
                if select.select([master], [], [], 0.2)[0]:
                    try:
                        out += os.read(master, 65536)
                    except OSError:
                        return
        read_for(4)
        subprocess.run(["ip", "netns", "exec", ns, "ping", "-c", "4", "-i", "0.2", "127.0.0.1"], capture_output=True)
        read_for(3)
        proc.send_signal(signal.SIGTERM)
        read_for(2)
        assert proc.wait(timeout=60) == 0
    finally:
        os.close(master)
        subprocess.run(["ip", "netns", "del", ns], capture_output=True)
    text = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", out.decode("utf-8", "replace"))
    assert "Traceback" not in text
    assert "egressguard" in text and "Interfaces (1)" in text and "Findings (0)" in text
    rows = [line.split()[-1] for line in text.replace("\r", "").split("\n")
            if line.strip().startswith("lo ") and " up " in line]
    assert rows and max(int(r) for r in rows if r.isdigit()) >= 8, rows  # 4 echo requests and 4 replies on lo
    assert "\x1b[?1049h" in out.decode("latin-1") and "\x1b[?1049l" in out.decode("latin-1")  # alternate screen
    assert "stopped:" in text
