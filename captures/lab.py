#!/usr/bin/env python3
"""The capture lab: records real traffic between a "sandbox" and an "outside" host, all inside network namespaces.

Topology (every piece is created by this script and removed afterwards; needs root and iproute2, tcpdump):

    [sbx ns] eth0 10.77.0.2 --veth-- [gw ns] br0 10.77.0.1 (Linux bridge)   gw forwards   [gw ns] 198.18.0.1 --veth-- [out ns] 198.18.0.2

The capture is taken with tcpdump on br0, the sandbox bridge an operator would watch. 198.18.0.0/15 is the RFC 2544
benchmarking range: it looks external to the sandbox and never routes anywhere outside these namespaces.

Usage: python captures/lab.py record [SCENARIO ...] [--out DIR]     (run as root)
       python captures/lab.py list
Each scenario writes DIR/<scenario>.pcap and a row per labelled flow into DIR/labels.csv.
"""
from __future__ import annotations

import argparse
import contextlib
import csv
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

# Scenario modules (lab_mining, lab_egress) `import lab`: when this file runs as the program, let them find it
sys.modules.setdefault("lab", sys.modules[__name__])

SANDBOX_IP = "10.77.0.2"
GATEWAY_IP = "10.77.0.1"
OUTSIDE_IP = "198.18.0.2"
OUTSIDE_GW_IP = "198.18.0.1"


@dataclass
class Lab:
    """Names of one lab instance (unique per process so parallel runs do not collide)."""

    tag: str
    workdir: Path

    @property
    def sbx(self) -> str:
        return f"eg{self.tag}-sbx"

    @property
    def gw(self) -> str:
        return f"eg{self.tag}-gw"

    @property
    def out(self) -> str:
        return f"eg{self.tag}-out"

    def run(self, ns: str, *cmd: str, check: bool = True, timeout: float = 60, **kw) -> subprocess.CompletedProcess:
        """Run a command inside namespace `ns` (argument list, never a shell string)."""
        proc = subprocess.run(["ip", "netns", "exec", ns, *cmd], timeout=timeout, capture_output=True, text=True, **kw)
        if check and proc.returncode != 0:
            raise RuntimeError(f"lab: {' '.join(cmd[:3])}... in {ns} failed ({proc.returncode}): {proc.stderr.strip()[-500:]}")
        return proc

    def popen(self, ns: str, *cmd: str, **kw) -> subprocess.Popen:
        return subprocess.Popen(["ip", "netns", "exec", ns, *cmd], **kw)


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, text=True)


@contextlib.contextmanager
def topology(tag: str | None = None) -> Iterator[Lab]:
    """Create the three namespaces, the bridge and the veth pairs; remove them all on exit."""
    for tool in ("ip", "tcpdump"):
        if shutil.which(tool) is None:
            raise SystemExit(f"lab: {tool} not found (apt-get install iproute2 tcpdump)")
    if os.geteuid() != 0:
        raise SystemExit("lab: must run as root (it creates network namespaces)")
    lab = Lab(tag or str(os.getpid() % 100000), Path(tempfile.mkdtemp(prefix="eglab-")))
    try:
        for ns in (lab.sbx, lab.gw, lab.out):
            _ip("netns", "add", ns)
            # IPv4 only: router/neighbour solicitations would make every capture differ
            lab.run(ns, "sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1", "net.ipv6.conf.default.disable_ipv6=1")
        t = lab.tag
        # sandbox <-> bridge
        _ip("link", "add", f"eg{t}s0", "type", "veth", "peer", "name", f"eg{t}s1")
        _ip("link", "set", f"eg{t}s0", "netns", lab.sbx)
        _ip("link", "set", f"eg{t}s1", "netns", lab.gw)
        # gateway <-> outside
        _ip("link", "add", f"eg{t}o0", "type", "veth", "peer", "name", f"eg{t}o1")
        _ip("link", "set", f"eg{t}o0", "netns", lab.out)
        _ip("link", "set", f"eg{t}o1", "netns", lab.gw)
        lab.run(lab.sbx, "ip", "link", "set", f"eg{t}s0", "name", "eth0")
        lab.run(lab.sbx, "ip", "addr", "add", f"{SANDBOX_IP}/24", "dev", "eth0")
        lab.run(lab.sbx, "ip", "link", "set", "eth0", "up")
        lab.run(lab.sbx, "ip", "link", "set", "lo", "up")
        lab.run(lab.sbx, "ip", "route", "add", "default", "via", GATEWAY_IP)
        lab.run(lab.gw, "ip", "link", "add", "br0", "type", "bridge")
        lab.run(lab.gw, "ip", "link", "set", f"eg{t}s1", "master", "br0")
        lab.run(lab.gw, "ip", "addr", "add", f"{GATEWAY_IP}/24", "dev", "br0")
        for dev in ("br0", f"eg{t}s1", "lo"):
            lab.run(lab.gw, "ip", "link", "set", dev, "up")
        lab.run(lab.gw, "ip", "addr", "add", f"{OUTSIDE_GW_IP}/24", "dev", f"eg{t}o1")
        lab.run(lab.gw, "ip", "link", "set", f"eg{t}o1", "up")
        lab.run(lab.gw, "sysctl", "-qw", "net.ipv4.ip_forward=1")
        lab.run(lab.out, "ip", "link", "set", f"eg{t}o0", "name", "eth0")
        lab.run(lab.out, "ip", "addr", "add", f"{OUTSIDE_IP}/24", "dev", "eth0")
        lab.run(lab.out, "ip", "link", "set", "eth0", "up")
        lab.run(lab.out, "ip", "link", "set", "lo", "up")
        lab.run(lab.out, "ip", "route", "add", "10.77.0.0/24", "via", OUTSIDE_GW_IP)
        # no offloads: the capture should show segments as they cross the wire, not 64 KiB super-packets
        for ns, dev in ((lab.sbx, "eth0"), (lab.out, "eth0")):
            lab.run(ns, "ethtool", "-K", dev, "tso", "off", "gso", "off", "gro", "off", check=False)
        yield lab
    finally:
        for ns in (lab.sbx, lab.gw, lab.out):
            subprocess.run(["ip", "netns", "pids", ns], capture_output=True)
            pids = subprocess.run(["ip", "netns", "pids", ns], capture_output=True, text=True).stdout.split()
            for pid in pids:
                with contextlib.suppress(ProcessLookupError, ValueError):
                    os.kill(int(pid), 9)
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)
        shutil.rmtree(lab.workdir, ignore_errors=True)


@contextlib.contextmanager
def recording(lab: Lab, path: Path) -> Iterator[None]:
    """tcpdump on the sandbox bridge for the duration of the block."""
    # --immediate-mode: tcpdump 4.99 otherwise writes packets only when a 1 s buffer block closes, and the end of
    # a scenario would be lost at random when it stops
    # -B: a 64 MiB kernel buffer; with the default 2 MiB, bursts over ~30 KiB lost their tail on this busy machine
    proc = lab.popen(lab.gw, "tcpdump", "-i", "br0", "-U", "--immediate-mode", "-B", "65536", "-s", "0", "-w",
                     str(path), "-n", stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    # tcpdump says "listening on" when its socket is ready
    deadline = time.time() + 10
    line = b""
    while time.time() < deadline and b"listening" not in line:
        line = proc.stderr.readline()
        if not line and proc.poll() is not None:
            raise RuntimeError("tcpdump failed to start")
    try:
        yield
        time.sleep(0.5)
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def stop_process(proc: subprocess.Popen, grace: float = 5) -> None:
    """Ask a lab process to stop; kill it when it has not stopped after `grace` seconds."""
    proc.terminate()
    try:
        proc.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        proc.kill()


@contextlib.contextmanager
def background(lab: Lab, ns: str, *cmd: str, ready_port: int | None = None) -> Iterator[subprocess.Popen]:
    """A server process in a namespace, stopped on exit; waits until it listens on ready_port (TCP)."""
    proc = lab.popen(ns, *cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        if ready_port is not None:
            _wait_listening(lab, ns, ready_port)
        yield proc
    finally:
        stop_process(proc)


def _wait_listening(lab: Lab, ns: str, port: int, timeout: float = 40) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        out = lab.run(ns, "ss", "-ltnH", f"sport = :{port}", check=False).stdout
        if out.strip():
            return
        time.sleep(0.1)
    raise RuntimeError(f"nothing listens on port {port} in {ns}")


# ----------------------------------------------------------------------------------------------- scenarios
Label = tuple[str, str, str, str]  # (client "ip:port|ip", server "ip:port", class, note)
Scenario = Callable[[Lab], list[Label]]
SCENARIOS: dict[str, Scenario] = {}


def scenario(fn: Scenario) -> Scenario:
    SCENARIOS[fn.__name__.replace("_", "-")] = fn
    return fn


PY_CLIENT_HTTP = """
import socket, sys, time
for i in range(int(sys.argv[2])):
    s = socket.create_connection((sys.argv[1], 8080), timeout=5)
    s.sendall(b"GET /file.bin HTTP/1.0\\r\\nHost: downloads.example\\r\\n\\r\\n")
    while s.recv(65536):
        pass
    s.close()
    time.sleep(0.2)
"""

PY_DNS_SERVER = """
import socket
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("0.0.0.0", 53))
while True:
    q, addr = s.recvfrom(2048)
    # answer: copy id and question, set QR/RD/RA, one A record 198.18.0.2 with TTL 300 (RFC 1035 4.1)
    qend = 12
    while q[qend] != 0:
        qend += q[qend] + 1
    qend += 5
    ans = b"\\xc0\\x0c\\x00\\x01\\x00\\x01\\x00\\x00\\x01\\x2c\\x00\\x04" + bytes([198, 18, 0, 2])
    s.sendto(q[:2] + b"\\x81\\x80" + q[4:6] + b"\\x00\\x01\\x00\\x00\\x00\\x00" + q[12:qend] + ans, addr)
"""

PY_DNS_CLIENT = """
import socket, struct, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.settimeout(3)
for i, name in enumerate(sys.argv[2:]):
    q = struct.pack("!HHHHHH", 0x1000 + i, 0x0100, 1, 0, 0, 0)
    q += b"".join(bytes([len(p)]) + p.encode() for p in name.split(".")) + b"\\x00\\x00\\x01\\x00\\x01"
    s.sendto(q, (sys.argv[1], 53))
    s.recvfrom(2048)
"""


@scenario
def benign_web(lab: Lab) -> list[Label]:
    """A DNS lookup, five HTTP downloads and three pings: ordinary egress that must not raise tunnel findings."""
    www = lab.workdir / "www"
    www.mkdir(exist_ok=True)
    (www / "file.bin").write_bytes(bytes(range(256)) * 120)  # 30 KiB
    with background(lab, lab.out, sys.executable, "-c", PY_DNS_SERVER), \
            background(lab, lab.out, sys.executable, "-m", "http.server", "8080", "--bind", OUTSIDE_IP,
                       "--directory", str(www), ready_port=8080):
        time.sleep(0.3)
        lab.run(lab.sbx, sys.executable, "-c", PY_DNS_CLIENT, OUTSIDE_IP, "downloads.example", "api.example")
        lab.run(lab.sbx, sys.executable, "-c", PY_CLIENT_HTTP, OUTSIDE_IP, "5")
        lab.run(lab.sbx, "ping", "-c", "3", "-i", "0.2", OUTSIDE_IP, check=False)
    return [(SANDBOX_IP, f"{OUTSIDE_IP}:8080", "benign", "HTTP/1.0 downloads of a 30 KiB file"),
            (SANDBOX_IP, f"{OUTSIDE_IP}:53", "benign", "DNS A lookups answered by a scripted resolver")]


# ----------------------------------------------------------------------------------------------- SSH helpers
SSHD_CONFIG = """Port 22
Port 443
ListenAddress 0.0.0.0
HostKey {wd}/host_ed25519
PidFile {wd}/sshd-{name}.pid
AuthorizedKeysFile {wd}/authorized_keys
PermitRootLogin yes
StrictModes no
UsePAM no
PasswordAuthentication no
KbdInteractiveAuthentication no
AllowTcpForwarding yes
PrintMotd no
Subsystem sftp internal-sftp
"""


def _ssh_keys(lab: Lab) -> Path:
    """A host key and a client key in the lab's work dir (created once per lab)."""
    key = lab.workdir / "client_ed25519"
    if not key.exists():
        for path in (key, lab.workdir / "host_ed25519"):
            subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(path)], check=True)
        (lab.workdir / "authorized_keys").write_text((lab.workdir / "client_ed25519.pub").read_text())
        os.chmod(lab.workdir, 0o755)
    return key


@contextlib.contextmanager
def sshd(lab: Lab, ns: str) -> Iterator[None]:
    """Real OpenSSH sshd in namespace ns, listening on ports 22 and 443."""
    _ssh_keys(lab)
    os.makedirs("/run/sshd", exist_ok=True)  # privilege separation directory
    cfg = lab.workdir / f"sshd-{ns}.conf"
    cfg.write_text(SSHD_CONFIG.format(wd=lab.workdir, name=ns))
    sshd_bin = shutil.which("sshd") or "/usr/sbin/sshd"
    with background(lab, ns, sshd_bin, "-D", "-e", "-f", str(cfg), ready_port=22):
        _wait_listening(lab, ns, 443)
        yield


def ssh_args(lab: Lab, *extra: str, program: str = "ssh") -> list[str]:
    key = _ssh_keys(lab)
    return [program, "-i", str(key), "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
            "-o", "BatchMode=yes", "-o", "LogLevel=ERROR", *extra]


def type_into(lab: Lab, ns: str, argv: list[str], lines: list[str], seed: int = 1) -> None:
    """Run argv in ns on a pseudo-terminal and type `lines` with human-like timing (80-260 ms per key)."""
    import pty
    import random
    import select
    import threading

    rng = random.Random(seed)
    master, slave = pty.openpty()
    proc = subprocess.Popen(["ip", "netns", "exec", ns, *argv], stdin=slave, stdout=slave, stderr=slave,
                            start_new_session=True)
    os.close(slave)
    done = threading.Event()

    def drain() -> None:
        while not done.is_set():
            ready, _, _ = select.select([master], [], [], 0.1)
            if ready:
                try:
                    if not os.read(master, 65536):
                        return
                except OSError:
                    return

    reader = threading.Thread(target=drain, daemon=True)
    reader.start()
    time.sleep(2.5)  # let the login finish
    for line in lines:
        for ch in line:
            os.write(master, ch.encode())
            time.sleep(rng.uniform(0.08, 0.26))
        time.sleep(rng.uniform(0.6, 1.5))  # reading the output
    try:
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        proc.kill()
    done.set()
    reader.join(timeout=2)
    os.close(master)


PY_HTTP_FETCH = """
import socket, sys, time
host, port, count = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
for i in range(count):
    s = socket.create_connection((host, port), timeout=10)
    s.sendall(b"GET /file.bin HTTP/1.0\\r\\nHost: internal\\r\\n\\r\\n")
    n = 0
    while True:
        b = s.recv(65536)
        if not b:
            break
        n += len(b)
    s.close()
    assert n > 1000, n
    time.sleep(1.5)
"""

PY_SOCKS_FETCH = """
import socket, struct, sys, time
proxy_port, target_host, target_port, count = int(sys.argv[1]), sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
for i in range(count):
    s = socket.create_connection(("127.0.0.1", proxy_port), timeout=10)
    s.sendall(b"\\x05\\x01\\x00")  # SOCKS5, one method: no authentication (RFC 1928)
    assert s.recv(2) == b"\\x05\\x00"
    s.sendall(b"\\x05\\x01\\x00\\x03" + bytes([len(target_host)]) + target_host.encode() + struct.pack("!H", target_port))
    assert s.recv(10)[1] == 0
    s.sendall(b"GET /file.bin HTTP/1.0\\r\\nHost: internal\\r\\n\\r\\n")
    while s.recv(65536):
        pass
    s.close()
    time.sleep(1.5)
"""


def _web_root(lab: Lab, size: int = 30 * 1024) -> Path:
    www = lab.workdir / "www"
    www.mkdir(exist_ok=True)
    (www / "file.bin").write_bytes((bytes(range(256)) * (size // 256 + 1))[:size])
    return www


@contextlib.contextmanager
def ssh_client(lab: Lab, ns: str, *args: str, program: str = "ssh", settle: float = 2.0) -> Iterator[None]:
    """A long-running ssh/autossh client (e.g. -N -R) in ns, stopped on exit."""
    env = dict(os.environ, AUTOSSH_GATETIME="0", AUTOSSH_POLL="30")
    proc = lab.popen(ns, *ssh_args(lab, *args, program=program), stdout=subprocess.DEVNULL,
                     stderr=subprocess.DEVNULL, env=env)
    try:
        time.sleep(settle)
        if proc.poll() is not None:
            raise RuntimeError(f"{program} exited early with {proc.returncode}")
        yield
    finally:
        stop_process(proc)


SHELL_LINES = ["uname -a\r", "ls -la /etc | head\r", "cat /etc/hostname\r", "id\r", "exit\r"]


@scenario
def ssh_reverse_shell(lab: Lab) -> list[Label]:
    """ssh -N -R to the outside host on port 443; the outside then logs in to the sandbox through the tunnel."""
    with sshd(lab, lab.out), sshd(lab, lab.sbx), \
            ssh_client(lab, lab.sbx, "-N", "-p", "443", "-R", "2222:127.0.0.1:22", f"root@{OUTSIDE_IP}"):
        type_into(lab, lab.out, ssh_args(lab, "-tt", "-p", "2222", "root@127.0.0.1"), SHELL_LINES, seed=2)
    return [(SANDBOX_IP, f"{OUTSIDE_IP}:443", "reverse_ssh_tunnel", "ssh -N -R on 443, interactive shell back in")]


@scenario
def ssh_reverse_idle(lab: Lab) -> list[Label]:
    """ssh -N -R with ServerAliveInterval=2 left idle: keepalives only, nothing comes back through it."""
    with sshd(lab, lab.out), \
            ssh_client(lab, lab.sbx, "-N", "-o", "ServerAliveInterval=2", "-R", "8022:127.0.0.1:22",
                       f"root@{OUTSIDE_IP}", settle=16):
        pass
    return [(SANDBOX_IP, f"{OUTSIDE_IP}:22", "reverse_ssh_tunnel", "ssh -N -R idle with keepalives every 2 s")]


@scenario
def autossh_reverse_http(lab: Lab) -> list[Label]:
    """autossh -M 0 -N -R exposes the sandbox's web server; the outside fetches pages through the tunnel."""
    www = _web_root(lab)
    with sshd(lab, lab.out), \
            background(lab, lab.sbx, sys.executable, "-m", "http.server", "8000", "--bind", "127.0.0.1",
                       "--directory", str(www), ready_port=8000), \
            ssh_client(lab, lab.sbx, "-M", "0", "-N", "-o", "ServerAliveInterval=2", "-o", "ServerAliveCountMax=3",
                       "-R", "9000:127.0.0.1:8000", f"root@{OUTSIDE_IP}", program="autossh", settle=3):
        lab.run(lab.out, sys.executable, "-c", PY_HTTP_FETCH, "127.0.0.1", "9000", "5")
    return [(SANDBOX_IP, f"{OUTSIDE_IP}:22", "reverse_ssh_tunnel", "autossh -M 0 -N -R, 5 HTTP fetches back in")]


@scenario
def ssh_local_forward(lab: Lab) -> list[Label]:
    """ssh -N -L: the sandbox reaches a web server behind the outside host through the tunnel."""
    www = _web_root(lab)
    with sshd(lab, lab.out), \
            background(lab, lab.out, sys.executable, "-m", "http.server", "8080", "--bind", "127.0.0.1",
                       "--directory", str(www), ready_port=8080), \
            ssh_client(lab, lab.sbx, "-N", "-L", "8081:127.0.0.1:8080", f"root@{OUTSIDE_IP}"):
        lab.run(lab.sbx, sys.executable, "-c", PY_HTTP_FETCH, "127.0.0.1", "8081", "5")
    return [(SANDBOX_IP, f"{OUTSIDE_IP}:22", "ssh_tunnel_other", "ssh -N -L, 5 HTTP fetches through it")]


@scenario
def ssh_dynamic_socks(lab: Lab) -> list[Label]:
    """ssh -N -D: a SOCKS5 proxy through the outside host, used for 5 HTTP fetches."""
    www = _web_root(lab)
    with sshd(lab, lab.out), \
            background(lab, lab.out, sys.executable, "-m", "http.server", "8080", "--bind", "127.0.0.1",
                       "--directory", str(www), ready_port=8080), \
            ssh_client(lab, lab.sbx, "-N", "-D", "1080", f"root@{OUTSIDE_IP}"):
        lab.run(lab.sbx, sys.executable, "-c", PY_SOCKS_FETCH, "1080", "127.0.0.1", "8080", "5")
    return [(SANDBOX_IP, f"{OUTSIDE_IP}:22", "ssh_tunnel_other", "ssh -N -D SOCKS5, 5 HTTP fetches through it")]


@scenario
def ssh_interactive(lab: Lab) -> list[Label]:
    """An interactive login from the sandbox to the outside host, typed with human timing."""
    with sshd(lab, lab.out):
        type_into(lab, lab.sbx, ssh_args(lab, "-tt", f"root@{OUTSIDE_IP}"), SHELL_LINES, seed=3)
    return [(SANDBOX_IP, f"{OUTSIDE_IP}:22", "ssh_interactive", "interactive shell, 5 commands typed")]


@scenario
def scp_transfer(lab: Lab) -> list[Label]:
    """scp uploads a 1 MiB file to the outside host, then downloads it again (two connections)."""
    src = lab.workdir / "upload.bin"
    src.write_bytes(os.urandom(1 << 20))
    with sshd(lab, lab.out):
        lab.run(lab.sbx, *ssh_args(lab, program="scp"), str(src), f"root@{OUTSIDE_IP}:{lab.workdir}/remote.bin")
        lab.run(lab.sbx, *ssh_args(lab, program="scp"), f"root@{OUTSIDE_IP}:{lab.workdir}/remote.bin",
                str(lab.workdir / "back.bin"))
    return [(SANDBOX_IP, f"{OUTSIDE_IP}:22", "ssh_transfer", "scp upload then download of 1 MiB")]


# ----------------------------------------------------------------------------------------------- main
def record(names: list[str], out_dir: Path) -> int:
    out_dir.mkdir(parents=True, exist_ok=True)
    labels_path = out_dir / "labels.csv"
    rows: dict[tuple[str, str], list[str]] = {}
    if labels_path.exists():
        with labels_path.open(newline="") as fh:
            for row in csv.DictReader(fh):
                rows[(row["file"], row["server"])] = [row["file"], row["client"], row["server"], row["class"],
                                                      row["note"]]
    for name in names:
        fn = SCENARIOS[name]
        path = out_dir / f"{name}.pcap"
        with topology() as lab:
            with recording(lab, path):
                labels = fn(lab)
        for row_key in [k for k in rows if k[0] == path.name]:
            del rows[row_key]
        for client, server, cls, note in labels:
            rows[(path.name, server)] = [path.name, client, server, cls, note]
        print(f"lab: {name}: wrote {path} ({path.stat().st_size} bytes)")
        with labels_path.open("w", newline="") as fh:  # after every scenario, so a later failure loses nothing
            w = csv.writer(fh)
            w.writerow(["file", "client", "server", "class", "note"])
            for key in sorted(rows):
                w.writerow(rows[key])
    return 0


def scenario_main(argv: list[str] | None, description: str, names: list[str], default_out: Path,
                  record_names=None, describe=None) -> int:
    """The command line every lab module shares: `record [NAME...] [--out DIR]` and `list`. `record_names(names,
    out)` records (default: record); `describe(name)` is the line `list` prints after a name (default: the
    scenario's docstring, whitespace folded)."""
    parser = argparse.ArgumentParser(description=description)
    sub = parser.add_subparsers(dest="cmd", required=True)
    rec = sub.add_parser("record", help="record scenarios (all of this module's when none is named)")
    rec.add_argument("scenarios", nargs="*")
    rec.add_argument("--out", type=Path, default=default_out)
    sub.add_parser("list", help="list the scenarios")
    args = parser.parse_args(argv)
    if args.cmd == "list":
        width = max(map(len, names), default=0) + 2
        for name in names:
            line = describe(name) if describe else " ".join((SCENARIOS[name].__doc__ or "").split())
            print(f"{name:{width}}{line}")
        return 0
    unknown = [n for n in args.scenarios if n not in names]
    if unknown:
        parser.error(f"unknown scenario(s): {', '.join(unknown)}; known: {', '.join(names)}")
    return (record_names or record)(args.scenarios or list(names), args.out)


def main(argv: list[str] | None = None) -> int:
    return scenario_main(argv, __doc__.split("\n\n")[0], list(OWN_SCENARIOS), Path(__file__).resolve().parent)


import lab_mining  # noqa: E402,F401  (mining scenarios: registers them here, also when lab.py runs as the program)
import lab_egress  # noqa: E402,F401  (egress-policy scenario, registered the same way)
import lab_tunnels  # noqa: E402,F401  (DNS and ICMP tunnel scenarios and their benign counterparts)

# the scenarios of this folder (captures/): other lab modules (lab_ssh, lab_carriers, ...) register theirs in
# SCENARIOS as well when imported, but record into folders of their own
OWN_SCENARIOS = tuple(sorted(SCENARIOS))

if __name__ == "__main__":
    sys.exit(main())
