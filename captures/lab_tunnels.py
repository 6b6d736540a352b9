"""DNS and ICMP tunnel scenarios of the capture lab, with real tunnel tools from Debian's packages, and their benign
counterparts (ordinary lookups, every kind of ping and traceroute).

Imported at the end of captures/lab.py, so `lab.py list|record` and tests/test_lab.py see these scenarios. Tools:
iodine/iodined 0.7.0 (IP over DNS, needs /dev/net/tun), dns2tcp 0.5.2 (TCP over DNS TXT), ptunnel-ng 1.42 (TCP over
ICMP echo), iputils ping and traceroute. Every address used is one the lab creates; the tunnel servers run on the
outside host (198.18.0.2), the tunnelled traffic goes to services on its loopback. Nothing leaves the namespaces.
"""
from __future__ import annotations

import contextlib
import shutil
import sys
import time
from typing import Iterator

# lab.py registers itself as `lab` even when it runs as the program
import lab as _lab  # noqa: E402
from lab import OUTSIDE_IP, SANDBOX_IP, Lab, Label, background, scenario  # noqa: E402

TUNNEL_NET_SERVER = "10.99.0.1"  # iodine's tunnel addresses (inside the DNS tunnel only)
ECHO_PORT = 0  # an ICMP echo flow's destination "port": the reply type, as Community ID pairs echo types
DNS2TCP_SERVER_IP = "198.18.0.4"  # dns2tcpd's own address on the outside host, reached only by the resolver
IODINE_DOMAIN = "t.tunnel-lab.example"
DNS2TCP_DOMAIN = "d2t.tunnel-lab.example"
PASSWORD = "labsecret"

# A forwarding resolver (the sandbox's configured resolver, 198.18.0.2:53, as captures/rules.toml names it): every
# query goes upstream from a fresh socket, its answer goes back to the asker. `python -c FORWARDER LISTEN UPSTREAM`.
FORWARDER = r'''
import socket, sys, threading
listen, upstream = sys.argv[1], sys.argv[2]
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind((listen, 53))
def relay(q, addr):
    u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); u.settimeout(5)
    try:
        u.sendto(q, (upstream, 53)); s.sendto(u.recvfrom(4096)[0], addr)
    except OSError:
        pass
    finally:
        u.close()
while True:
    q, addr = s.recvfrom(4096)
    threading.Thread(target=relay, args=(q, addr), daemon=True).start()
'''

# Ordinary lookups: package mirrors, CDN edges (long, low-entropy names; many cloudfront distributions), cloud
# endpoints, a DKIM/SPF/DMARC check, reverse lookups. `python -c LOOKUPS RESOLVER`.
LOOKUPS = r'''
import random, socket, struct, sys, time
resolver = sys.argv[1]
rng = random.Random(7)
TYPES = {"A": 1, "AAAA": 28, "TXT": 16, "PTR": 12, "MX": 15, "CNAME": 5}
names = [("pypi.org", "A"), ("files.pythonhosted.org", "A"), ("files.pythonhosted.org", "AAAA"),
         ("deb.debian.org", "A"), ("security.debian.org", "A"), ("github.com", "A"),
         ("objects.githubusercontent.com", "A"), ("registry.npmjs.org", "A"), ("dualstack.python.map.fastly.net", "A"),
         ("example.com", "MX"), ("example.com", "TXT"), ("_dmarc.example.com", "TXT"),
         ("selector1._domainkey.example.com", "TXT"), ("google._domainkey.example.org", "TXT")]
names += [(f"e{rng.randint(1000, 99999)}.dscb.akamaiedge.net", "A") for _ in range(30)]
names += [("d" + "".join(rng.choice("abcdefghijklmnopqrstuvwxyz0123456789") for _ in range(13)) + ".cloudfront.net",
           "A") for _ in range(40)]
names += [(f"prod-{rng.choice(['api', 'web', 'cdn'])}-{rng.randint(10**9, 10**10)}.us-east-1.elb.amazonaws.com", "A")
          for _ in range(10)]
names += [(f"{rng.randint(1, 254)}.{rng.randint(0, 255)}.18.198.in-addr.arpa", "PTR") for _ in range(30)]
names += [(n, "A") for n in ("pypi.org", "github.com", "deb.debian.org")] * 5
for i, (name, qtype) in enumerate(names):
    q = struct.pack("!HHHHHH", 0x2000 + i, 0x0100, 1, 0, 0, 0)
    q += b"".join(bytes([len(p)]) + p.encode() for p in name.split(".")) + b"\x00" + struct.pack("!HH", TYPES[qtype], 1)
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.settimeout(3)
    s.sendto(q, (resolver, 53))
    try:
        s.recvfrom(4096)
    except OSError:
        pass
    s.close()
    time.sleep(0.02)
'''


SETTLE_S = 2.5  # idle time at the end of a scenario: tcpdump (TPACKET_V3, 1 s block timeout, no immediate mode)
# hands packets over only when a block retires, and lab.recording() stops it 0.5 s after the scenario returns


def _require(*tools: str) -> None:
    missing = [t for t in tools if shutil.which(t) is None]
    if missing:
        raise RuntimeError(f"lab: {', '.join(missing)} not found (apt-get install iodine dns2tcp ptunnel-ng "
                           f"traceroute)")


@contextlib.contextmanager
def _resolver_and_server_address(lab: Lab) -> Iterator[None]:
    """The sandbox's resolver on 198.18.0.2 forwarding to a second address of the outside host, where the tunnel
    server listens (the bridge sees only the sandbox's queries to its resolver)."""
    lab.run(lab.out, "ip", "addr", "add", f"{DNS2TCP_SERVER_IP}/24", "dev", "eth0")
    try:
        with background(lab, lab.out, sys.executable, "-c", FORWARDER, OUTSIDE_IP, DNS2TCP_SERVER_IP):
            time.sleep(0.3)
            yield
    finally:
        lab.run(lab.out, "ip", "addr", "del", f"{DNS2TCP_SERVER_IP}/24", "dev", "eth0", check=False)


def _wait_for(lab: Lab, ns: str, argv: list[str], timeout: float = 20) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if lab.run(ns, *argv, check=False).returncode == 0:
            return
        time.sleep(0.3)
    raise RuntimeError(f"lab: {' '.join(argv)} never succeeded in {ns}")


@scenario
def dns_tunnel_iodine(lab: Lab) -> list[Label]:
    """iodine (IP over DNS, NULL records) straight to its server on the outside host; 5 pings through the tunnel."""
    _require("iodine", "iodined")
    with background(lab, lab.out, "iodined", "-f", "-c", "-P", PASSWORD, "-l", OUTSIDE_IP, "-p", "53",
                    f"{TUNNEL_NET_SERVER}/27", IODINE_DOMAIN):
        time.sleep(0.5)
        with background(lab, lab.sbx, "iodine", "-f", "-r", "-P", PASSWORD, "-I", "1", OUTSIDE_IP, IODINE_DOMAIN):
            _wait_for(lab, lab.sbx, ["ping", "-c", "1", "-W", "1", TUNNEL_NET_SERVER])
            lab.run(lab.sbx, "ping", "-c", "5", "-i", "0.3", TUNNEL_NET_SERVER, check=False)
    time.sleep(SETTLE_S)
    return [(SANDBOX_IP, f"{OUTSIDE_IP}:53", "dns_tunnel", f"iodine 0.7.0 -> iodined, NULL queries under "
             f"{IODINE_DOMAIN}, one source port; 5 pings through the tunnel")]


@scenario
def dns_tunnel_dns2tcp(lab: Lab) -> list[Label]:
    """dns2tcp (TCP over DNS TXT) through the sandbox's resolver to its server; one HTTP download through it."""
    _require("dns2tcpc", "dns2tcpd")
    www = _lab._web_root(lab, size=8 * 1024)
    conf = lab.workdir / "dns2tcpd.conf"
    conf.write_text(f"listen = {DNS2TCP_SERVER_IP}\nport = 53\nuser = nobody\nchroot = /tmp\n"
                    f"domain = {DNS2TCP_DOMAIN}\nresources = web:127.0.0.1:8080\n")
    with background(lab, lab.out, sys.executable, "-m", "http.server", "8080", "--bind", "127.0.0.1",
                    "--directory", str(www), ready_port=8080), _resolver_and_server_address(lab), \
            background(lab, lab.out, "dns2tcpd", "-F", "-f", str(conf)):
        time.sleep(0.5)
        with background(lab, lab.sbx, "dns2tcpc", "-z", DNS2TCP_DOMAIN, "-r", "web", "-l", "8081", OUTSIDE_IP,
                        ready_port=8081):
            lab.run(lab.sbx, sys.executable, "-c", _lab.PY_HTTP_FETCH, "127.0.0.1", "8081", "1", timeout=90)
    time.sleep(SETTLE_S)
    return [(SANDBOX_IP, f"{OUTSIDE_IP}:53", "dns_tunnel", f"dns2tcp 0.5.2 TXT queries under {DNS2TCP_DOMAIN} "
             f"through the sandbox's resolver (a forwarder) to dns2tcpd; one 8 KiB HTTP download through the tunnel")]


@scenario
def dns_lookups_benign(lab: Lab) -> list[Label]:
    """Ordinary lookups at the sandbox's resolver: package mirrors, CDN edges, cloud names, mail TXT, PTR."""
    with background(lab, lab.out, sys.executable, "-c", _lab.PY_DNS_SERVER):
        time.sleep(0.3)
        lab.run(lab.sbx, sys.executable, "-c", LOOKUPS, OUTSIDE_IP, timeout=120)
    time.sleep(SETTLE_S)
    return [(SANDBOX_IP, f"{OUTSIDE_IP}:53", "benign", "150 ordinary lookups: package mirrors, 30 akamaiedge and 40 "
             "cloudfront names, ELB names, MX/TXT/DKIM/DMARC, 30 reverse PTR")]


@contextlib.contextmanager
def _no_kernel_echo(lab: Lab, ns: str) -> Iterator[None]:
    """The tunnel server answers echo requests itself: the kernel's own replies are switched off (as ptunnel's
    documentation asks)."""
    lab.run(ns, "sysctl", "-qw", "net.ipv4.icmp_echo_ignore_all=1")
    try:
        yield
    finally:
        lab.run(ns, "sysctl", "-qw", "net.ipv4.icmp_echo_ignore_all=0", check=False)


@scenario
def icmp_tunnel_ptunnel(lab: Lab) -> list[Label]:
    """ptunnel-ng (TCP over ICMP echo) to the outside host; two HTTP downloads through it."""
    _require("ptunnel-ng")
    www = _lab._web_root(lab, size=16 * 1024)
    with background(lab, lab.out, sys.executable, "-m", "http.server", "8080", "--bind", "127.0.0.1",
                    "--directory", str(www), ready_port=8080), _no_kernel_echo(lab, lab.out), \
            background(lab, lab.out, "ptunnel-ng", "-r127.0.0.1", "-R8080", "-v", "-1"):
        time.sleep(0.5)
        with background(lab, lab.sbx, "ptunnel-ng", "-p", OUTSIDE_IP, "-l", "8022", "-r127.0.0.1", "-R8080",
                        "-v", "-1", ready_port=8022):
            lab.run(lab.sbx, sys.executable, "-c", _lab.PY_HTTP_FETCH, "127.0.0.1", "8022", "2", timeout=90)
    time.sleep(SETTLE_S)
    return [(SANDBOX_IP, f"{OUTSIDE_IP}:{ECHO_PORT}", "icmp_tunnel", "ptunnel-ng 1.42 (magic 0xDEADC0DE), two 16 KiB "
             "HTTP downloads through the tunnel; ICMP echo")]


@scenario
def icmp_ping_benign(lab: Lab) -> list[Label]:
    """Every kind of ping: default, -s 1400, -p ff, a short flood (-f), and traceroute (UDP and ICMP)."""
    _require("traceroute")
    for args in (["-c", "4", "-i", "0.2"], ["-c", "3", "-i", "0.2", "-s", "1400"], ["-c", "3", "-i", "0.2", "-p", "ff"],
                 ["-f", "-c", "200"]):
        lab.run(lab.sbx, "ping", *args, OUTSIDE_IP, check=False)
    lab.run(lab.sbx, "traceroute", "-n", "-q", "1", "-w", "1", OUTSIDE_IP, check=False)
    lab.run(lab.sbx, "traceroute", "-I", "-n", "-q", "1", "-w", "1", OUTSIDE_IP, check=False)
    time.sleep(SETTLE_S)
    return [(SANDBOX_IP, f"{OUTSIDE_IP}:{ECHO_PORT}", "benign", "iputils ping (default, -s 1400, -p ff, -f -c 200) "
             "and traceroute -I to the outside host; ICMP echo")]
