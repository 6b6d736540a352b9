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
        return subprocess.run(["ip", "netns", "exec", ns, *cmd], check=check, timeout=timeout,
                              capture_output=True, text=True, **kw)

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
    proc = lab.popen(lab.gw, "tcpdump", "-i", "br0", "-U", "-s", "0", "-w", str(path), "-n",
                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
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


@contextlib.contextmanager
def background(lab: Lab, ns: str, *cmd: str, ready_port: int | None = None) -> Iterator[subprocess.Popen]:
    """A server process in a namespace, stopped on exit; waits until it listens on ready_port (TCP)."""
    proc = lab.popen(ns, *cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        if ready_port is not None:
            _wait_listening(lab, ns, ready_port)
        yield proc
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()


def _wait_listening(lab: Lab, ns: str, port: int, timeout: float = 15) -> None:
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
    with labels_path.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["file", "client", "server", "class", "note"])
        for key in sorted(rows):
            w.writerow(rows[key])
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    rec = sub.add_parser("record", help="record scenarios (all when none is named)")
    rec.add_argument("scenarios", nargs="*")
    rec.add_argument("--out", type=Path, default=Path(__file__).resolve().parent)
    sub.add_parser("list", help="list the scenarios")
    args = parser.parse_args(argv)
    if args.cmd == "list":
        for name, fn in sorted(SCENARIOS.items()):
            print(f"{name:24} {(fn.__doc__ or '').strip()}")
        return 0
    unknown = [n for n in args.scenarios if n not in SCENARIOS]
    if unknown:
        parser.error(f"unknown scenario(s): {', '.join(unknown)}; known: {', '.join(sorted(SCENARIOS))}")
    return record(args.scenarios or sorted(SCENARIOS), args.out)


if __name__ == "__main__":
    sys.exit(main())
