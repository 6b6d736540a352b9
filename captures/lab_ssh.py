#!/usr/bin/env python3
"""SSH scenarios of the capture lab: tunnels and ordinary use from every common implementation, both roles.

Implementations (real software from the package registries): OpenSSH (ssh, sshd, scp, sftp), autossh, dropbear
(dbclient, dropbear), PuTTY (plink, pscp), sshuttle, rsync and git over SSH (Debian); paramiko, asyncssh and libssh
(bundled by ansible-pylibssh) from PyPI; ssh2 from npm; Go's golang.org/x/crypto/ssh from Debian's
golang-golang-x-crypto-dev, built offline at record time. The small programs that drive the libraries are in
captures/ssh-implementations/src/. Every address used is one the lab creates (sandbox 10.77.0.2, outside host
198.18.0.2); tunnelled traffic ends on a loopback or on addresses that exist only inside a tunnel.

NOT imported by captures/lab.py (the detectors for most of these cases do not exist yet). Record them with
    python captures/lab_ssh.py record [SCENARIO ...] [--out DIR]     (root; default DIR: captures/ssh-implementations)
    python captures/lab_ssh.py list
A scenario whose software is missing is skipped with the reason (`missing()` names it).
"""
from __future__ import annotations

import atexit
import contextlib
import functools
import importlib.metadata
import importlib.util
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable, Iterator

sys.path.insert(0, str(Path(__file__).resolve().parent))
import lab  # noqa: E402
from lab import OUTSIDE_IP, SANDBOX_IP, Lab, Label, background  # noqa: E402

FOLDER = Path(__file__).resolve().parent / "ssh-implementations"
SRC = FOLDER / "src"
PY = sys.executable

# addresses that exist only inside a tunnel (never on the bridge), in the RFC 2544 range like the outside host
SSHUTTLE_TARGET = "198.19.7.10"  # a second address of the outside host, reached through sshuttle only
TUN_SANDBOX, TUN_OUTSIDE = "198.19.9.1", "198.19.9.2"  # ssh -w point-to-point ends

REVERSE, FORWARD = "reverse_ssh_tunnel", "ssh_tunnel_other"
INTERACTIVE, TRANSFER, COMMAND = "ssh_interactive", "ssh_transfer", "ssh_command"

# this module's scenarios in the order they are defined (also registered in lab.SCENARIOS), and what each needs
SCENARIOS: dict[str, Callable[[Lab], list[Label]]] = {}
NAMES: list[str] = []
REQUIRES: dict[str, tuple[str, ...]] = {}


def ssh_scenario(*requires: str) -> Callable:
    """Register a scenario with the lab (`lab.scenario`) and here, and note what it needs: programs, `py:MODULE`,
    `go`, `node:ssh2`, or a device path."""
    def wrap(fn):
        lab.scenario(fn)
        name = fn.__name__.replace("_", "-")
        SCENARIOS[name] = fn
        NAMES.append(name)
        REQUIRES[name] = ("ip", "tcpdump", "ssh-keygen", "sshd", "ssh", *requires)
        return fn
    return wrap


# ----------------------------------------------------------------------------------------------- software
def _program(name: str) -> str | None:
    """The path of a program on PATH or in the sbin folders (sshd, dropbear: root's tools), or None."""
    found = shutil.which(name)
    for folder in ("/usr/sbin", "/sbin"):
        if found is None and os.access(f"{folder}/{name}", os.X_OK):
            found = f"{folder}/{name}"
    return found


GO_XCRYPTO = Path("/usr/share/gocode/src/golang.org/x/crypto/ssh")  # golang-golang-x-crypto-dev


@functools.lru_cache(maxsize=None)
def node_modules() -> str | None:
    """A node_modules folder holding ssh2: $EGLAB_NODE_MODULES, /opt/eglab-node/node_modules, npm's global root, or
    (when npm reaches its registry) a temporary install made now, outside the repository."""
    candidates = [os.environ.get("EGLAB_NODE_MODULES", ""), "/opt/eglab-node/node_modules"]
    if shutil.which("npm"):
        root = subprocess.run(["npm", "root", "-g"], capture_output=True, text=True).stdout.strip()
        candidates.append(root)
    for folder in candidates:
        if folder and (Path(folder) / "ssh2" / "package.json").exists():
            return folder
    if not shutil.which("npm"):
        return None
    prefix = Path(tempfile.mkdtemp(prefix="eglab-node-"))
    atexit.register(shutil.rmtree, prefix, True)
    proc = subprocess.run(["npm", "install", "--prefix", str(prefix), "--no-audit", "--no-fund", "ssh2"],
                          capture_output=True, text=True, timeout=300)
    return str(prefix / "node_modules") if proc.returncode == 0 and (prefix / "node_modules" / "ssh2").exists() \
        else None


def _requirement_missing(req: str) -> str | None:
    """Why `req` is not available here, or None when it is."""
    if req.startswith("py:"):
        module = req[3:]
        package = {"pylibsshext": "ansible-pylibssh"}.get(module, module)
        return None if importlib.util.find_spec(module) else f"Python module {module} (pip install {package})"
    if req == "go":
        if not shutil.which("go"):
            return "go (apt-get install golang)"
        return None if GO_XCRYPTO.is_dir() else "golang.org/x/crypto (apt-get install golang-golang-x-crypto-dev)"
    if req == "node:ssh2":
        if not shutil.which("node"):
            return "node (apt-get install nodejs)"
        return None if node_modules() else "npm package ssh2 (npm install ssh2 into /opt/eglab-node)"
    if req.startswith("/"):
        return None if os.path.exists(req) else f"{req} (the kernel's tun driver)"
    return None if _program(req) else f"{req} (apt-get install {APT.get(req, req)})"


# the Debian package of each program a scenario may need
APT = {"dbclient": "dropbear-bin", "dropbear": "dropbear-bin", "dropbearconvert": "dropbear-bin",
       "plink": "putty-tools", "pscp": "putty-tools", "puttygen": "putty-tools", "ssh": "openssh-client",
       "scp": "openssh-client", "sftp": "openssh-client", "ssh-keygen": "openssh-client", "sshd": "openssh-server",
       "ip": "iproute2", "ping": "iputils-ping"}


def missing(name: str) -> list[str]:
    """What scenario `name` needs and this machine lacks (empty when it can be recorded)."""
    return [m for m in (_requirement_missing(r) for r in REQUIRES.get(name, ())) if m]


@functools.lru_cache(maxsize=None)
def version(tool: str) -> str:
    """The version of a tool, for the label notes."""
    def first(argv: list[str]) -> str:
        """The first line a program prints (some print their version on standard error)."""
        try:
            proc = subprocess.run(argv, capture_output=True, text=True, timeout=20)
        except OSError:
            return "?"
        lines = (proc.stdout + proc.stderr).strip().splitlines()
        return lines[0] if lines else "?"

    if tool in ("paramiko", "asyncssh", "ansible-pylibssh"):
        return importlib.metadata.version(tool)
    if tool == "libssh":
        code = f"import sys; sys.path.insert(0, {str(SRC)!r}); import libssh_peer; " \
               "print(libssh_peer.load_libssh().ssh_version(0).decode().split('/')[0])"
        return first([PY, "-c", code])
    if tool == "openssh":
        return first(["ssh", "-V"]).split(",")[0].replace("OpenSSH_", "")
    if tool == "dropbear":
        return first([_program("dropbear") or "dropbear", "-V"]).split()[-1].lstrip("v")
    if tool in ("plink", "pscp"):
        return first([tool, "-V"]).split("Release")[-1].strip()
    if tool == "go":
        go = first(["go", "version"]).split()[2].replace("go", "")
        xc = first(["dpkg-query", "-W", "-f", "${Version}", "golang-golang-x-crypto-dev"]).split(":")[-1]
        return f"{xc.split('-')[0]} (go {go})"
    if tool == "ssh2":
        return json.loads((Path(node_modules() or "/") / "ssh2" / "package.json").read_text())["version"]
    if tool == "autossh":
        return first(["autossh", "-V"]).split()[-1]
    if tool == "sshuttle":
        return first(["sshuttle", "--version"])
    if tool == "rsync":
        return first(["rsync", "--version"]).split()[2]
    if tool == "git":
        return first(["git", "--version"]).split()[-1]
    raise KeyError(tool)


def impl(tool: str) -> str:
    names = {"openssh": "OpenSSH", "dropbear": "dropbear", "ssh2": "Node ssh2", "go": "Go x/crypto/ssh",
             "libssh": "libssh"}
    return f"{names.get(tool, tool)} {version(tool)}"


_GO_BINARY: dict[str, Path] = {}


def go_binary() -> Path:
    """src/eglab_gossh.go built once per process, offline (GOPATH mode against Debian's x/crypto)."""
    if "bin" not in _GO_BINARY:
        out = Path(tempfile.mkdtemp(prefix="eglab-go-"))
        atexit.register(shutil.rmtree, out, True)
        env = dict(os.environ, GOPATH="/usr/share/gocode", GO111MODULE="off", GOFLAGS="", GOPROXY="off",
                   GOCACHE=os.environ.get("GOCACHE", str(out / "cache")))
        subprocess.run(["go", "build", "-o", str(out / "eglab_gossh"), str(SRC / "eglab_gossh.go")], check=True,
                       env=env, capture_output=True, timeout=300)
        _GO_BINARY["bin"] = out / "eglab_gossh"
    return _GO_BINARY["bin"]


# ----------------------------------------------------------------------------------------------- keys, configs
class Keys:
    """The lab's ed25519 keys in every format the implementations read (one host key for every server)."""

    def __init__(self, lab_: Lab):
        wd = lab_.workdir
        self.client = lab._ssh_keys(lab_)  # OpenSSH format, lab's client key
        self.host = wd / "host_ed25519"
        self.authorized = wd / "authorized_keys"
        self.client_pub = wd / "client_ed25519.pub"
        self.ssh_config = wd / "ssh_config"
        if not self.ssh_config.exists():
            self.ssh_config.write_text(
                "Host *\n"
                f"  IdentityFile {self.client}\n  IdentitiesOnly yes\n  User root\n"
                "  StrictHostKeyChecking no\n  UserKnownHostsFile /dev/null\n  BatchMode yes\n  LogLevel ERROR\n")
        self.home = wd / "home"  # HOME for dbclient, plink and git (their known-hosts files and settings)
        (self.home / ".ssh").mkdir(parents=True, exist_ok=True)

    @functools.cached_property
    def dropbear_client(self) -> Path:
        return self._dropbear(self.client)

    @functools.cached_property
    def dropbear_host(self) -> Path:
        return self._dropbear(self.host)

    @functools.cached_property
    def dropbear_authorized_dir(self) -> Path:
        """A folder bound over /root/.ssh for the dropbear server, which reads ~/.ssh/authorized_keys only."""
        folder = self.host.parent / "dropbear-dotssh"
        folder.mkdir(mode=0o700, exist_ok=True)
        shutil.copy(self.authorized, folder / "authorized_keys")
        os.chmod(folder / "authorized_keys", 0o600)
        return folder

    def _dropbear(self, key: Path) -> Path:
        out = key.with_suffix(".dropbear")
        if not out.exists():
            subprocess.run(["dropbearconvert", "openssh", "dropbear", str(key), str(out)], check=True,
                           capture_output=True)
        return out

    @functools.cached_property
    def ppk(self) -> Path:
        out = self.client.with_suffix(".ppk")
        if not out.exists():
            subprocess.run(["puttygen", str(self.client), "-O", "private", "-o", str(out)], check=True,
                           capture_output=True)
        return out

    @functools.cached_property
    def host_fingerprint(self) -> str:
        line = subprocess.run(["ssh-keygen", "-l", "-E", "sha256", "-f", f"{self.host}.pub"], check=True,
                              capture_output=True, text=True).stdout
        return line.split()[1]  # "SHA256:..."

    def putty_session(self, name: str, **settings: str | int) -> str:
        """A PuTTY saved session (~/.putty/sessions/NAME, key=value lines: PuTTY's unix storage) for settings
        plink has no option for (PingIntervalSecs, Cipher)."""
        folder = self.home / ".putty" / "sessions"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / name).write_text("".join(f"{k}={v}\n" for k, v in settings.items()))
        return name


_KEYS: dict[Path, Keys] = {}


def keys(lab_: Lab) -> Keys:
    """The lab instance's keys (made once per lab)."""
    if lab_.workdir not in _KEYS:
        _KEYS.clear()
        _KEYS[lab_.workdir] = Keys(lab_)
    return _KEYS[lab_.workdir]


def ssh_cmd(lab_: Lab, *args: str, program: str = "ssh") -> list[str]:
    """An OpenSSH client (ssh, scp, sftp) with the lab's key and no host-key prompts."""
    return [program, "-F", str(keys(lab_).ssh_config), *args]


def dbclient_cmd(lab_: Lab, *args: str) -> list[str]:
    k = keys(lab_)
    # by path: its multi-hop mode runs argv[0] again for the inner hop
    return ["env", f"HOME={k.home}", _program("dbclient") or "dbclient", "-y", "-i", str(k.dropbear_client), *args]


def plink_cmd(lab_: Lab, *args: str, program: str = "plink") -> list[str]:
    k = keys(lab_)
    return ["env", f"HOME={k.home}", program, "-batch", "-i", str(k.ppk), "-hostkey", k.host_fingerprint, *args]


SSHD_CONFIG = """{ports}
ListenAddress {listen}
HostKey {host}
PidFile {wd}/sshd-{name}.pid
AuthorizedKeysFile {authorized}
PermitRootLogin yes
StrictModes no
UsePAM no
PasswordAuthentication no
KbdInteractiveAuthentication no
AllowTcpForwarding yes
PermitTunnel {tunnel}
PrintMotd no
Subsystem sftp internal-sftp
"""


@contextlib.contextmanager
def openssh_server(lab_: Lab, ns: str, ports: tuple[int, ...], listen: str = "0.0.0.0", name: str = "main",
                   tunnel: bool = False) -> Iterator[None]:
    """Real OpenSSH sshd in namespace ns on the given ports."""
    k = keys(lab_)
    os.makedirs("/run/sshd", exist_ok=True)  # privilege separation directory
    cfg = lab_.workdir / f"sshd-{name}-{ns}.conf"
    cfg.write_text(SSHD_CONFIG.format(ports="\n".join(f"Port {p}" for p in ports), listen=listen, host=k.host,
                                      wd=lab_.workdir, name=f"{name}-{ns}", authorized=k.authorized,
                                      tunnel="yes" if tunnel else "no"))
    with background(lab_, ns, _program("sshd") or "/usr/sbin/sshd", "-D", "-e", "-f", str(cfg), ready_port=ports[0]):
        for port in ports[1:]:
            lab._wait_listening(lab_, ns, port)
        yield


# mount(2) with MS_BIND (linux/mount.h), then exec: `ip netns exec` runs every command in a mount namespace of its
# own whose mounts never propagate back (MS_SLAVE), so the bind is seen by this process and its children only.
BIND_EXEC = r'''
import ctypes, os, sys
MS_BIND = 4096
libc = ctypes.CDLL(None, use_errno=True)
if libc.mount(sys.argv[1].encode(), sys.argv[2].encode(), None, MS_BIND, None) != 0:
    sys.exit("mount --bind %s %s: %s" % (sys.argv[1], sys.argv[2], os.strerror(ctypes.get_errno())))
os.execvp(sys.argv[3], sys.argv[3:])
'''


@contextlib.contextmanager
def dropbear_server(lab_: Lab, ports: tuple[int, ...], *extra: str) -> Iterator[None]:
    """Real dropbear on the outside host. It reads root's ~/.ssh/authorized_keys and has no option for another
    file, so the lab's folder is bound over /root/.ssh for this process only (BIND_EXEC)."""
    k = keys(lab_)
    os.makedirs("/root/.ssh", mode=0o700, exist_ok=True)  # the bind below needs its mount point
    argv = [_program("dropbear") or "dropbear", "-F", "-E", "-s", "-m", "-r", str(k.dropbear_host),
            "-P", str(lab_.workdir / "dropbear.pid"), *extra]
    for port in ports:
        argv += ["-p", str(port)]
    with background(lab_, lab_.out, PY, "-c", BIND_EXEC, str(k.dropbear_authorized_dir), "/root/.ssh", *argv,
                    ready_port=ports[0]):
        for port in ports[1:]:
            lab._wait_listening(lab_, lab_.out, port)
        yield


@contextlib.contextmanager
def asyncssh_server(lab_: Lab, port: int, keepalive: float = 0) -> Iterator[None]:
    k = keys(lab_)
    argv = [PY, str(SRC / "asyncssh_peer.py"), "server", str(port), str(k.host), str(k.authorized)]
    if keepalive:
        argv += ["--keepalive", str(keepalive)]
    with background(lab_, lab_.out, *argv, ready_port=port):
        yield


@contextlib.contextmanager
def go_server(lab_: Lab, port: int) -> Iterator[None]:
    k = keys(lab_)
    with background(lab_, lab_.out, str(go_binary()), "server", "-listen", f"0.0.0.0:{port}", "-hostkey", str(k.host),
                    "-authorized", str(k.client_pub), ready_port=port):
        yield


@contextlib.contextmanager
def paramiko_server(lab_: Lab, port: int) -> Iterator[None]:
    k = keys(lab_)
    with background(lab_, lab_.out, PY, str(SRC / "paramiko_peer.py"), "server", str(port), str(k.host),
                    str(k.client_pub), ready_port=port):
        yield


def node_cmd(*args: str) -> list[str]:
    return ["env", f"NODE_PATH={node_modules()}", "node", str(SRC / "ssh2_peer.js"), *args]


@contextlib.contextmanager
def ssh2_server(lab_: Lab, port: int) -> Iterator[None]:
    k = keys(lab_)
    with background(lab_, lab_.out, *node_cmd("server", str(port), str(k.host), str(k.client_pub)), ready_port=port):
        yield


def go_client(lab_: Lab, port: int, *args: str) -> list[str]:
    return [str(go_binary()), "client", "-addr", f"{OUTSIDE_IP}:{port}", "-key", str(keys(lab_).client), *args]


def py_peer(peer: str, mode: str, lab_: Lab, port: int, *args: str) -> list[str]:
    """paramiko_peer / asyncssh_peer / libssh_peer in MODE against the outside host."""
    return [PY, str(SRC / f"{peer}_peer.py"), mode, OUTSIDE_IP, str(port), str(keys(lab_).client), *args]


# ----------------------------------------------------------------------------------------------- clients, services
@contextlib.contextmanager
def tunnel(lab_: Lab, argv: list[str], forward_port: int | None = None, local_port: int | None = None,
           env: dict | None = None, settle: float = 0.5, ready_text: str | None = None) -> Iterator[None]:
    """A long-running tunnel client in the sandbox, stopped on exit. Waits until the outside host listens on
    forward_port (a remote forward is up), the sandbox on local_port (-L/-D), or the client has printed
    ready_text, then `settle` seconds."""
    log = lab_.workdir / f"client-{time.monotonic_ns()}.log"
    with log.open("wb") as fh:
        proc = lab_.popen(lab_.sbx, *argv, stdin=subprocess.DEVNULL, stdout=fh, stderr=fh,
                          env=dict(os.environ, **(env or {})), start_new_session=True)
    try:
        try:
            if forward_port is not None:
                lab._wait_listening(lab_, lab_.out, forward_port, timeout=30)
            if local_port is not None:
                lab._wait_listening(lab_, lab_.sbx, local_port, timeout=30)
            deadline = time.time() + 30
            while ready_text and ready_text not in log.read_text(errors="replace"):
                if time.time() > deadline or proc.poll() is not None:
                    raise RuntimeError(f"no {ready_text!r}")
                time.sleep(0.2)
        except RuntimeError:
            raise RuntimeError(f"{argv[0]}: tunnel not up: {log.read_text(errors='replace')[-800:]}") from None
        time.sleep(settle)
        if proc.poll() is not None:
            raise RuntimeError(f"{argv[0]} exited early ({proc.returncode}): {log.read_text(errors='replace')[-800:]}")
        yield
    finally:
        lab.stop_process(proc)


def run(lab_: Lab, ns: str, argv: list[str], timeout: float = 120, env: dict | None = None,
        stdin: str | None = None) -> str:
    """A command that must succeed; its output."""
    proc = lab_.run(ns, *argv, timeout=timeout, env=dict(os.environ, **(env or {})), input=stdin)
    return proc.stdout


# The sandbox's web content: small files of varied sizes and one large file (the issue's "many small requests,
# and one large"); bytes are random so compression (-C) does not shrink them away.
def web_root(lab_: Lab, name: str, sizes: dict[str, int]) -> Path:
    root = lab_.workdir / name
    root.mkdir(exist_ok=True)
    rng = random.Random(len(name))
    for file, size in sizes.items():
        (root / file).write_bytes(rng.randbytes(size))
    return root


SMALL_FILES = {f"page{i}.html": s for i, s in enumerate((1800, 3400, 2200, 5100, 900, 7600, 2600, 4300, 1500,
                                                          6200, 3100, 2000))}
BIG_FILE = {"backup.tar": 800 * 1024}

# Pull files from a web server with HTTP/1.0 (a new connection per file), human-ish pauses between requests.
# `python -c PULL HOST PORT SEED PATH...`
PULL = r'''
import random, socket, sys, time
host, port, rng = sys.argv[1], int(sys.argv[2]), random.Random(int(sys.argv[3]))
for path in sys.argv[4:]:
    s = socket.create_connection((host, port), timeout=20)
    request = "GET /%s HTTP/1.0\r\nHost: %s\r\nUser-Agent: curl/7.88.1\r\nAccept: */*\r\n\r\n" % (path, host)
    s.sendall(request.encode())
    n = 0
    while True:
        b = s.recv(65536)
        if not b:
            break
        n += len(b)
    s.close()
    if n < 200:
        sys.exit("short answer for %s: %d bytes" % (path, n))
    time.sleep(rng.uniform(0.2, 0.9))
'''

# Fetch through a SOCKS5 proxy (RFC 1928, no authentication, domain-name or IPv4 targets).
# `python -c SOCKS PROXY_PORT SEED HOST:PORT/PATH...`
SOCKS = r'''
import random, socket, struct, sys, time
proxy, rng = int(sys.argv[1]), random.Random(int(sys.argv[2]))
for target in sys.argv[3:]:
    hostport, path = target.split("/", 1)
    host, port = hostport.rsplit(":", 1)
    s = socket.create_connection(("127.0.0.1", proxy), timeout=20)
    s.sendall(b"\x05\x01\x00")
    assert s.recv(2) == b"\x05\x00"
    try:
        addr = b"\x01" + socket.inet_aton(host)
    except OSError:
        addr = b"\x03" + bytes([len(host)]) + host.encode()
    s.sendall(b"\x05\x01\x00" + addr + struct.pack("!H", int(port)))
    reply = s.recv(262)
    assert reply[1] == 0, reply
    s.sendall(("GET /%s HTTP/1.1\r\nHost: %s\r\nConnection: close\r\n\r\n" % (path, host)).encode())
    while s.recv(65536):
        pass
    s.close()
    time.sleep(rng.uniform(0.3, 1.2))
'''

# A Redis-like line service (scripted: the service reached through the tunnel, not an SSH peer): PING, SET, GET,
# KEYS, INFO, QUIT, one reply per line. `python -c LINE_SERVICE PORT`
LINE_SERVICE = r'''
import socket, sys, threading
store = {}
def serve(c):
    f = c.makefile("rb")
    for raw in f:
        words = raw.decode(errors="replace").split()
        if not words:
            continue
        cmd = words[0].upper()
        if cmd == "PING":
            out = "+PONG"
        elif cmd == "SET" and len(words) >= 3:
            store[words[1]] = " ".join(words[2:]); out = "+OK"
        elif cmd == "GET" and len(words) == 2:
            v = store.get(words[1]); out = "$-1" if v is None else "$%d\r\n%s" % (len(v), v)
        elif cmd == "KEYS":
            out = "*%d\r\n" % len(store) + "".join("$%d\r\n%s\r\n" % (len(k), k) for k in store)
        elif cmd == "INFO":
            body = "".join("key_%d:%d\r\n" % (i, i * 7919) for i in range(60)); out = "$%d\r\n%s" % (len(body), body)
        elif cmd == "QUIT":
            c.sendall(b"+OK\r\n"); break
        else:
            out = "-ERR unknown command"
        c.sendall((out + "\r\n").encode())
    c.close()
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("127.0.0.1", int(sys.argv[1]))); s.listen(8)
while True:
    c, _ = s.accept()
    threading.Thread(target=serve, args=(c,), daemon=True).start()
'''

# A client of the line service: two sessions of commands with pauses, as a program polling a service would.
# `python -c LINE_CLIENT HOST PORT SEED`
LINE_CLIENT = r'''
import random, socket, sys, time
host, port, rng = sys.argv[1], int(sys.argv[2]), random.Random(int(sys.argv[3]))
for session in range(2):
    s = socket.create_connection((host, port), timeout=20)
    f = s.makefile("rb")
    cmds = ["PING", "INFO"] + ["SET job:%d state=%s" % (i, rng.choice(["queued", "running", "done"])) for i in range(3)]
    cmds += ["GET job:%d" % rng.randrange(3) for _ in range(2)] + ["KEYS *", "QUIT"]
    for cmd in cmds:
        s.sendall((cmd + "\r\n").encode())
        line = f.readline()
        if line.startswith(b"$") and not line.startswith(b"$-1"):
            f.read(int(line[1:]) + 2)
        elif line.startswith(b"*"):
            for _ in range(2 * int(line[1:])):
                f.readline()
        time.sleep(rng.uniform(0.1, 0.4))
    s.close()
    time.sleep(0.8)
'''

SERVICE_PORT = 6379  # the sandbox's line service (Redis' port)


@contextlib.contextmanager
def sandbox_web(lab_: Lab, port: int = 8000, sizes: dict[str, int] | None = None) -> Iterator[Path]:
    """Python's http.server in the sandbox on its loopback: what a reverse tunnel exposes."""
    root = web_root(lab_, "sbx-www", sizes or {**SMALL_FILES, **BIG_FILE})
    with background(lab_, lab_.sbx, PY, "-m", "http.server", str(port), "--bind", "127.0.0.1", "--directory",
                    str(root), ready_port=port):
        yield root


@contextlib.contextmanager
def sandbox_service(lab_: Lab) -> Iterator[None]:
    with background(lab_, lab_.sbx, PY, "-c", LINE_SERVICE, str(SERVICE_PORT), ready_port=SERVICE_PORT):
        yield


@contextlib.contextmanager
def sandbox_sshd(lab_: Lab) -> Iterator[None]:
    """OpenSSH sshd in the sandbox on its loopback: what someone outside logs into through a reverse tunnel."""
    with openssh_server(lab_, lab_.sbx, (22,), listen="127.0.0.1", name="inner"):
        yield


@contextlib.contextmanager
def outside_web(lab_: Lab, sizes: dict[str, int], bind: str = "0.0.0.0", port: int = 8080) -> Iterator[Path]:
    """Python's http.server on the outside host: what forward tunnels reach (bound to 0.0.0.0 so any of its
    loopback addresses answers; nothing in the sandbox connects to it directly)."""
    root = web_root(lab_, "out-www", sizes)
    with background(lab_, lab_.out, PY, "-m", "http.server", str(port), "--bind", bind, "--directory", str(root),
                    ready_port=port):
        yield root


def pull_files(lab_: Lab, port: int, paths: list[str], seed: int) -> None:
    """The outside host pulls files from the sandbox through a reverse tunnel's port on its loopback."""
    run(lab_, lab_.out, [PY, "-c", PULL, "127.0.0.1", str(port), str(seed), *paths])


def use_service(lab_: Lab, port: int, seed: int) -> None:
    run(lab_, lab_.out, [PY, "-c", LINE_CLIENT, "127.0.0.1", str(port), str(seed)])


SHELLS = [
    ["id\r", "uname -a\r", "ls /etc | head\r", "hostname\r", "exit\r"],
    ["whoami\r", "ps aux | head -5\r", "df -h /\r", "uptime\r", "exit\r"],
    ["pwd\r", "ls /tmp | wc -l\r", "ip -br addr\r", "date\r", "exit\r"],
    ["hostname\r", "ls -l /usr/bin | tail -3\r", "free -m\r", "id\r", "exit\r"],
]


def shell_back_in(lab_: Lab, port: int, seed: int) -> None:
    """Someone on the outside host logs into the sandbox's sshd through the reverse tunnel and types 5 commands."""
    lab.type_into(lab_, lab_.out, ssh_cmd(lab_, "-tt", "-p", str(port), "127.0.0.1"), SHELLS[seed % len(SHELLS)],
                  seed=seed)


def out(port: int) -> str:
    return f"{OUTSIDE_IP}:{port}"


# ================================================================================ reverse tunnels: every use
@ssh_scenario("dbclient", "dropbear", "dropbearconvert")
def dropbear_reverse_parked_443(lab_: Lab) -> list[Label]:
    """dbclient -N -R -K 5 to a dropbear server on 443, then only keepalives for 30 s (a parked tunnel)."""
    with dropbear_server(lab_, (443,)), \
            tunnel(lab_, dbclient_cmd(lab_, "-N", "-K", "5", "-p", "443", "-R", "2222:127.0.0.1:22",
                                      f"root@{OUTSIDE_IP}"), forward_port=2222):
        time.sleep(30)
    return [(SANDBOX_IP, out(443), REVERSE, f"{impl('dropbear')} dbclient -> dropbear server, <suite> (defaults), "
             "parked: tcpip-forward then dropbear keepalives (-K 5) only for 30 s, port 443")]


@ssh_scenario("dbclient", "dropbearconvert")
def dropbear_reverse_shell(lab_: Lab) -> list[Label]:
    """dbclient -N -R (aes128-ctr, hmac-sha2-256) to OpenSSH; the outside logs into the sandbox through it."""
    with openssh_server(lab_, lab_.out, (22,)), sandbox_sshd(lab_), \
            tunnel(lab_, dbclient_cmd(lab_, "-N", "-c", "aes128-ctr", "-m", "hmac-sha2-256", "-R",
                                      "2222:127.0.0.1:22", f"root@{OUTSIDE_IP}"), forward_port=2222):
        shell_back_in(lab_, 2222, seed=11)
    return [(SANDBOX_IP, out(22), REVERSE, f"{impl('dropbear')} dbclient -> OpenSSH {version('openssh')} sshd, <suite> "
             "(-c aes128-ctr -m hmac-sha2-256), shell back in: the outside logs into the sandbox's sshd through "
             "-R and types 5 commands (human timing), port 22")]


@ssh_scenario()
def openssh_reverse_parked_silent(lab_: Lab) -> list[Label]:
    """ssh -N -R to an asyncssh server on 8022, no keepalive at all: 20 s of silence after the forward."""
    with asyncssh_server(lab_, 8022), \
            tunnel(lab_, ssh_cmd(lab_, "-N", "-p", "8022", "-R", "9000:127.0.0.1:8000", OUTSIDE_IP),
                   forward_port=9000):
        time.sleep(20)
    return [(SANDBOX_IP, out(8022), REVERSE, f"{impl('openssh')} ssh -N -R -> asyncssh {version('asyncssh')} server, "
             "<suite> (defaults), parked: tcpip-forward then complete silence for 20 s (no keepalive), port 8022")]


@ssh_scenario("go")
def openssh_reverse_service_gcm(lab_: Lab) -> list[Label]:
    """ssh -c aes128-gcm -N -R to a Go server on 2200; the outside uses the sandbox's line service through it."""
    with go_server(lab_, 2200), sandbox_service(lab_), \
            tunnel(lab_, ssh_cmd(lab_, "-N", "-c", "aes128-gcm@openssh.com", "-p", "2200", "-R",
                                 f"16379:127.0.0.1:{SERVICE_PORT}", OUTSIDE_IP), forward_port=16379):
        use_service(lab_, 16379, seed=4)
    return [(SANDBOX_IP, out(2200), REVERSE, f"{impl('openssh')} ssh -N -R -> {impl('go')} server, <suite> (-c "
             "aes128-gcm@openssh.com), service reached: a Redis-like line service (scripted) of the sandbox used "
             "from outside, 2 sessions of 9 commands, port 2200")]


@ssh_scenario()
def openssh_reverse_http_compressed(lab_: Lab) -> list[Label]:
    """ssh -C -N -R (aes128-ctr, hmac-sha2-256-etm) to sshd on 443; the outside pulls files from the sandbox."""
    with openssh_server(lab_, lab_.out, (443,)), sandbox_web(lab_), \
            tunnel(lab_, ssh_cmd(lab_, "-N", "-C", "-c", "aes128-ctr", "-o", "MACs=hmac-sha2-256-etm@openssh.com",
                                 "-p", "443", "-R", "9000:127.0.0.1:8000", OUTSIDE_IP), forward_port=9000):
        pull_files(lab_, 9000, list(SMALL_FILES)[:8] + list(BIG_FILE), seed=5)
    return [(SANDBOX_IP, out(443), REVERSE, f"{impl('openssh')} ssh -C -N -R -> OpenSSH sshd, <suite> (-C -c "
             "aes128-ctr -o MACs=hmac-sha2-256-etm@openssh.com), files pulled: 8 small pages and one 800 KiB file "
             "fetched over HTTP from the sandbox, port 443")]


AUTOSSH_ENV = {"AUTOSSH_GATETIME": "0", "AUTOSSH_POLL": "5", "AUTOSSH_FIRST_POLL": "5"}


@ssh_scenario("autossh")
def autossh_reverse_monitor_parked(lab_: Lab) -> list[Label]:
    """autossh -M 20000 (its monitor loop: test data through a -L/-R pair every 5 s) with -N -R, parked 20 s."""
    with openssh_server(lab_, lab_.out, (22,)), \
            tunnel(lab_, ssh_cmd(lab_, "-M", "20000", "-N", "-R", "2222:127.0.0.1:22", OUTSIDE_IP,
                                 program="autossh"), forward_port=2222, env=AUTOSSH_ENV):
        time.sleep(20)
    return [(SANDBOX_IP, out(22), REVERSE, f"autossh {version('autossh')} (OpenSSH {version('openssh')}) -M 20000 -N "
             "-R -> OpenSSH sshd, <suite> (defaults), parked: nothing used the tunnel; autossh's monitor sends "
             "test data around its own -L 20000/-R 20000 loop every 5 s (AUTOSSH_POLL=5) for 20 s, port 22")]


@ssh_scenario("autossh", "dropbear", "dropbearconvert")
def autossh_reverse_service(lab_: Lab) -> list[Label]:
    """autossh -M 0 -o ServerAliveInterval=3 -N -R to dropbear on 2200; the line service is used through it."""
    with dropbear_server(lab_, (2200,)), sandbox_service(lab_), \
            tunnel(lab_, ssh_cmd(lab_, "-M", "0", "-N", "-o", "ServerAliveInterval=3", "-p", "2200", "-R",
                                 f"16379:127.0.0.1:{SERVICE_PORT}", OUTSIDE_IP, program="autossh"),
                   forward_port=16379, env=AUTOSSH_ENV):
        use_service(lab_, 16379, seed=7)
    return [(SANDBOX_IP, out(2200), REVERSE, f"autossh {version('autossh')} (OpenSSH {version('openssh')}) -M 0 -N -R "
             f"-> {impl('dropbear')} server, <suite> (defaults), ServerAliveInterval=3, service reached: the "
             "sandbox's Redis-like line service (scripted) used from outside, port 2200")]


@ssh_scenario("plink", "puttygen")
def plink_reverse_http(lab_: Lab) -> list[Label]:
    """plink -N -R to sshd on 443; the outside pulls many small pages and one large file from the sandbox."""
    with openssh_server(lab_, lab_.out, (443,)), sandbox_web(lab_), \
            tunnel(lab_, plink_cmd(lab_, "-N", "-P", "443", "-R", "9000:127.0.0.1:8000", f"root@{OUTSIDE_IP}"),
                   forward_port=9000):
        pull_files(lab_, 9000, list(SMALL_FILES) + list(BIG_FILE), seed=8)
    return [(SANDBOX_IP, out(443), REVERSE, f"PuTTY plink {version('plink')} -N -R -> OpenSSH sshd, <suite> "
             "(defaults), files pulled: 12 small pages and one 800 KiB file fetched over HTTP from the sandbox, "
             "port 443")]


@ssh_scenario("plink", "puttygen", "dropbear", "dropbearconvert")
def plink_reverse_parked(lab_: Lab) -> list[Label]:
    """plink -N -R to dropbear on 22 with PuTTY's keepalive (SSH_MSG_IGNORE every 4 s), parked 20 s."""
    session = keys(lab_).putty_session("eglab-ping", PingInterval=0, PingIntervalSecs=4)
    with dropbear_server(lab_, (22,)), \
            tunnel(lab_, plink_cmd(lab_, "-load", session, "-N", "-P", "22", "-R", "2222:127.0.0.1:22",
                                   f"root@{OUTSIDE_IP}"), forward_port=2222):
        time.sleep(20)
    return [(SANDBOX_IP, out(22), REVERSE, f"PuTTY plink {version('plink')} -N -R -> {impl('dropbear')} server, "
             "<suite> (defaults), parked: PuTTY keepalives (SSH_MSG_IGNORE, PingIntervalSecs=4) only for 20 s, "
             "port 22")]


@ssh_scenario("py:paramiko")
def paramiko_reverse_parked(lab_: Lab) -> list[Label]:
    """paramiko request_port_forward with set_keepalive(4) (keepalive@lag.net, no reply) to sshd on 2200, 20 s."""
    with openssh_server(lab_, lab_.out, (2200,)), \
            tunnel(lab_, py_peer("paramiko", "reverse", lab_, 2200, "9000", "8000", "40", "--keepalive", "4"),
                   forward_port=9000):
        time.sleep(20)
    return [(SANDBOX_IP, out(2200), REVERSE, f"paramiko {version('paramiko')} request_port_forward -> OpenSSH sshd, "
             "<suite> (defaults), parked: keepalive@lag.net (want_reply 0) every 4 s only for 20 s, port 2200")]


@ssh_scenario("py:paramiko", "py:asyncssh")
def paramiko_reverse_shell(lab_: Lab) -> list[Label]:
    """paramiko -R to an asyncssh server on 443; the outside logs into the sandbox's sshd through it."""
    with asyncssh_server(lab_, 443), sandbox_sshd(lab_), \
            tunnel(lab_, py_peer("paramiko", "reverse", lab_, 443, "2222", "22", "60"), forward_port=2222):
        shell_back_in(lab_, 2222, seed=12)
    return [(SANDBOX_IP, out(443), REVERSE, f"paramiko {version('paramiko')} request_port_forward -> asyncssh "
             f"{version('asyncssh')} server, <suite> (defaults), shell back in: the outside logs into the "
             "sandbox's sshd through the tunnel and types 5 commands (human timing), port 443")]


@ssh_scenario("py:asyncssh")
def asyncssh_reverse_http(lab_: Lab) -> list[Label]:
    """asyncssh forward_remote_port to sshd on 22; the outside pulls many pages and one 800 KiB file over HTTP."""
    with openssh_server(lab_, lab_.out, (22,)), sandbox_web(lab_), \
            tunnel(lab_, py_peer("asyncssh", "reverse", lab_, 22, "9000", "8000", "120"), forward_port=9000):
        pull_files(lab_, 9000, list(SMALL_FILES) + list(BIG_FILE), seed=9)
    return [(SANDBOX_IP, out(22), REVERSE, f"asyncssh {version('asyncssh')} forward_remote_port -> OpenSSH sshd, "
             "<suite> (defaults), files pulled: 12 small pages and one 800 KiB file fetched over HTTP from the "
             "sandbox, port 22")]


@ssh_scenario("py:asyncssh", "node:ssh2")
def asyncssh_reverse_service(lab_: Lab) -> list[Label]:
    """asyncssh -R (aes256-gcm, keepalive_interval 5) to a Node ssh2 server on 8022; the line service is used."""
    with ssh2_server(lab_, 8022), sandbox_service(lab_), \
            tunnel(lab_, py_peer("asyncssh", "reverse", lab_, 8022, str(16379), str(SERVICE_PORT), "120",
                                 "--cipher", "aes256-gcm@openssh.com", "--keepalive", "5"), forward_port=16379):
        use_service(lab_, 16379, seed=10)
    return [(SANDBOX_IP, out(8022), REVERSE, f"asyncssh {version('asyncssh')} forward_remote_port -> Node ssh2 "
             f"{version('ssh2')} server, <suite> (encryption_algs aes256-gcm@openssh.com), keepalive_interval 5, "
             "service reached: the sandbox's Redis-like line service (scripted) used from outside, port 8022")]


@ssh_scenario("py:pylibsshext")
def libssh_reverse_service(lab_: Lab) -> list[Label]:
    """libssh ssh_channel_listen_forward (aes128-ctr, hmac-sha2-256-etm) to sshd on 443; line service used."""
    with openssh_server(lab_, lab_.out, (443,)), sandbox_service(lab_), \
            tunnel(lab_, py_peer("libssh", "reverse", lab_, 443, "16379", str(SERVICE_PORT), "120", "--cipher",
                                 "aes128-ctr", "--mac", "hmac-sha2-256-etm@openssh.com"), forward_port=16379):
        use_service(lab_, 16379, seed=13)
    return [(SANDBOX_IP, out(443), REVERSE, f"libssh {version('libssh')} (ansible-pylibssh "
             f"{version('ansible-pylibssh')}) ssh_channel_listen_forward -> OpenSSH sshd, <suite> (ciphers "
             "aes128-ctr, hmac hmac-sha2-256-etm@openssh.com), service reached: the sandbox's Redis-like line "
             "service (scripted) used from outside, port 443")]


@ssh_scenario("py:pylibsshext", "py:asyncssh")
def libssh_reverse_parked(lab_: Lab) -> list[Label]:
    """libssh -R to an asyncssh server on 2200 that sends keepalives every 5 s (server-initiated), parked 20 s."""
    with asyncssh_server(lab_, 2200, keepalive=5), \
            tunnel(lab_, py_peer("libssh", "reverse", lab_, 2200, "2222", "22", "40"), forward_port=2222):
        time.sleep(20)
    return [(SANDBOX_IP, out(2200), REVERSE, f"libssh {version('libssh')} (ansible-pylibssh) "
             f"ssh_channel_listen_forward -> asyncssh {version('asyncssh')} server, <suite> (defaults), parked: "
             "only the server's keepalive@openssh.com requests every 5 s (answered with failure) for 20 s, port "
             "2200")]


@ssh_scenario("go")
def go_reverse_http_gcm(lab_: Lab) -> list[Label]:
    """A Go x/crypto/ssh client (aes128-gcm) opens -R to sshd on 2200; the outside fetches 4 files through it."""
    with openssh_server(lab_, lab_.out, (2200,)), sandbox_web(lab_, sizes={f"report{i}.json": 90_000 + 17_000 * i
                                                                           for i in range(4)}), \
            tunnel(lab_, go_client(lab_, 2200, "-cipher", "aes128-gcm@openssh.com", "-remote", "127.0.0.1:9000",
                                   "-local", "127.0.0.1:8000", "-duration", "120", "reverse"), forward_port=9000):
        pull_files(lab_, 9000, [f"report{i}.json" for i in range(4)], seed=14)
    return [(SANDBOX_IP, out(2200), REVERSE, f"{impl('go')} client Listen (tcpip-forward) -> OpenSSH sshd, <suite> "
             "(Ciphers aes128-gcm@openssh.com), files pulled: 4 HTTP fetches of 90-140 KB from the sandbox, port "
             "2200")]


@ssh_scenario("go")
def go_reverse_parked(lab_: Lab) -> list[Label]:
    """A Go client (chacha20-poly1305) opens -R to a Go server on 443, keepalive@openssh.com every 6 s, 20 s."""
    with go_server(lab_, 443), \
            tunnel(lab_, go_client(lab_, 443, "-cipher", "chacha20-poly1305@openssh.com", "-keepalive", "6",
                                   "-remote", "127.0.0.1:2222", "-local", "127.0.0.1:22", "-duration", "40",
                                   "reverse"), forward_port=2222):
        time.sleep(20)
    return [(SANDBOX_IP, out(443), REVERSE, f"{impl('go')} client -> Go server (same library), <suite> (Ciphers "
             "chacha20-poly1305@openssh.com; Go pads to 16), parked: keepalive@openssh.com global requests every "
             "6 s only, 20 s, port 443")]


@ssh_scenario("node:ssh2")
def ssh2_reverse_shell(lab_: Lab) -> list[Label]:
    """Node ssh2 forwardIn to sshd on 8022; the outside logs into the sandbox's sshd through it."""
    with openssh_server(lab_, lab_.out, (8022,)), sandbox_sshd(lab_), \
            tunnel(lab_, node_cmd("reverse", OUTSIDE_IP, "8022", str(keys(lab_).client), "2222", "22", "60"),
                   forward_port=2222):
        shell_back_in(lab_, 2222, seed=15)
    return [(SANDBOX_IP, out(8022), REVERSE, f"Node ssh2 {version('ssh2')} forwardIn -> OpenSSH sshd, <suite> "
             "(defaults), shell back in: the outside logs into the sandbox's sshd through the tunnel and types 5 "
             "commands (human timing), port 8022")]


@ssh_scenario("node:ssh2", "py:paramiko")
def ssh2_reverse_parked(lab_: Lab) -> list[Label]:
    """Node ssh2 client -R with keepaliveInterval 4 s to a paramiko server on 2200, parked 20 s."""
    with paramiko_server(lab_, 2200), \
            tunnel(lab_, node_cmd("reverse", OUTSIDE_IP, "2200", str(keys(lab_).client), "2222", "22", "40", "4"),
                   forward_port=2222):
        time.sleep(20)
    return [(SANDBOX_IP, out(2200), REVERSE, f"Node ssh2 {version('ssh2')} client -> paramiko {version('paramiko')} "
             "server, <suite> (defaults), parked: keepalive@openssh.com every 4 s (keepaliveInterval, answered "
             "with failure) only for 20 s, port 2200")]


# ================================================================================ forward tunnels
BULK_FILES = {f"dataset-{i}.bin": s for i, s in enumerate((310_000, 270_000, 330_000, 290_000, 300_000))}


@ssh_scenario()
def openssh_local_forward_bulk(lab_: Lab) -> list[Label]:
    """ssh -N -L (aes256-gcm) to sshd on 443; five ~300 KB downloads through it, a new channel each, over time."""
    with openssh_server(lab_, lab_.out, (443,)), outside_web(lab_, BULK_FILES, bind="127.0.0.1"), \
            tunnel(lab_, ssh_cmd(lab_, "-N", "-c", "aes256-gcm@openssh.com", "-p", "443", "-L",
                                 "8081:127.0.0.1:8080", OUTSIDE_IP), local_port=8081):
        run(lab_, lab_.sbx, [PY, "-c", PULL, "127.0.0.1", "8081", "20", *BULK_FILES])
    return [(SANDBOX_IP, out(443), FORWARD, f"{impl('openssh')} ssh -N -L -> OpenSSH sshd, <suite> (-c "
             "aes256-gcm@openssh.com), -L bulk: 5 HTTP downloads of 270-330 KB (1.5 MB) through the forward, one "
             "direct-tcpip channel each, port 443")]


@ssh_scenario("dbclient", "dropbear", "dropbearconvert")
def dropbear_local_forward(lab_: Lab) -> list[Label]:
    """dbclient -N -L to dropbear on 2200; eight small page fetches through it."""
    with dropbear_server(lab_, (2200,)), outside_web(lab_, SMALL_FILES, bind="127.0.0.1"), \
            tunnel(lab_, dbclient_cmd(lab_, "-N", "-p", "2200", "-L", "8081:127.0.0.1:8080", f"root@{OUTSIDE_IP}"),
                   local_port=8081):
        run(lab_, lab_.sbx, [PY, "-c", PULL, "127.0.0.1", "8081", "21", *list(SMALL_FILES)[:8]])
    return [(SANDBOX_IP, out(2200), FORWARD, f"{impl('dropbear')} dbclient -N -L -> dropbear server, <suite> "
             "(defaults), -L: 8 HTTP page fetches through the forward, port 2200")]


@ssh_scenario("go", "py:asyncssh")
def go_local_forward(lab_: Lab) -> list[Label]:
    """A Go client's Dial (direct-tcpip, like -L) to an asyncssh server on 22; six page fetches through it."""
    with asyncssh_server(lab_, 22), outside_web(lab_, SMALL_FILES, bind="127.0.0.1"), \
            tunnel(lab_, go_client(lab_, 22, "-listen", "127.0.0.1:8081", "-target", "127.0.0.1:8080", "-duration",
                                   "120", "local"), local_port=8081):
        run(lab_, lab_.sbx, [PY, "-c", PULL, "127.0.0.1", "8081", "22", *list(SMALL_FILES)[2:8]])
    return [(SANDBOX_IP, out(22), FORWARD, f"{impl('go')} client Dial (direct-tcpip) -> asyncssh {version('asyncssh')} "
             "server, <suite> (defaults), -L: 6 HTTP page fetches, port 22")]


SOCKS_TARGETS = ["127.0.0.1:8080/page0.html", "localhost:8080/page3.html", "127.0.0.2:8080/page5.html",
             "localhost:8080/page1.html", "127.0.0.1:8080/page9.html", "127.0.0.3:8080/page7.html"]


@ssh_scenario("dropbear", "dropbearconvert")
def openssh_dynamic_socks(lab_: Lab) -> list[Label]:
    """ssh -N -D to dropbear on 443; six SOCKS5 fetches to several names and addresses behind it."""
    with dropbear_server(lab_, (443,)), outside_web(lab_, SMALL_FILES), \
            tunnel(lab_, ssh_cmd(lab_, "-N", "-p", "443", "-D", "1080", OUTSIDE_IP), local_port=1080):
        run(lab_, lab_.sbx, [PY, "-c", SOCKS, "1080", "23", *SOCKS_TARGETS])
    return [(SANDBOX_IP, out(443), FORWARD, f"{impl('openssh')} ssh -N -D -> {impl('dropbear')} server, <suite> "
             "(defaults), -D SOCKS5: 6 HTTP fetches to names and addresses behind the server, port 443")]


@ssh_scenario("plink", "puttygen")
def plink_dynamic_socks(lab_: Lab) -> list[Label]:
    """plink -N -D to sshd on 22; six SOCKS5 fetches through it."""
    # PuTTY binds a local forward to ::1 first and gives up when the sandbox has no IPv6; only a saved session can
    # ask for IPv4 ("4D1080": PuTTY's PortForwardings syntax with an address-family prefix)
    session = keys(lab_).putty_session("eglab-socks", PortForwardings="4D1080=")
    with openssh_server(lab_, lab_.out, (22,)), outside_web(lab_, SMALL_FILES), \
            tunnel(lab_, plink_cmd(lab_, "-load", session, "-N", "-P", "22", f"root@{OUTSIDE_IP}"), local_port=1080):
        run(lab_, lab_.sbx, [PY, "-c", SOCKS, "1080", "24", *reversed(SOCKS_TARGETS)])
    return [(SANDBOX_IP, out(22), FORWARD, f"PuTTY plink {version('plink')} -N with dynamic forward 4D1080 (= -D) -> "
             "OpenSSH sshd, <suite> (defaults), -D SOCKS5: 6 HTTP fetches, port 22")]


@ssh_scenario("sshuttle", "iptables")
def sshuttle_vpn(lab_: Lab) -> list[Label]:
    """sshuttle (a VPN over one SSH session, nat method) to sshd on 22; HTTP fetches to an address behind it."""
    lab_.run(lab_.out, "ip", "addr", "add", f"{SSHUTTLE_TARGET}/32", "dev", "lo")
    with openssh_server(lab_, lab_.out, (22,)), outside_web(lab_, SMALL_FILES), \
            tunnel(lab_, ["sshuttle", "--method", "nat", "--disable-ipv6", "-e", " ".join(ssh_cmd(lab_)), "-r",
                          f"root@{OUTSIDE_IP}:22", f"{SSHUTTLE_TARGET}/32"], ready_text="Connected to server",
                   settle=1.0):
        run(lab_, lab_.sbx, [PY, "-c", PULL, SSHUTTLE_TARGET, "8080", "25", *list(SMALL_FILES)[:10]])
    return [(SANDBOX_IP, out(22), FORWARD, f"sshuttle {version('sshuttle')} (OpenSSH {version('openssh')} ssh, "
             "<suite>) -> OpenSSH sshd running sshuttle's python server, sshuttle VPN (nat method, iptables in "
             f"the sandbox): 10 HTTP fetches to {SSHUTTLE_TARGET} through the mux, port 22")]


@ssh_scenario("/dev/net/tun", "ping")
def openssh_tun_vpn(lab_: Lab) -> list[Label]:
    """ssh -w (a tun device at each end, point-to-point) to sshd on 2200; pings and HTTP over the tun link."""
    with openssh_server(lab_, lab_.out, (2200,), tunnel=True), \
            tunnel(lab_, ssh_cmd(lab_, "-N", "-p", "2200", "-w", "0:0", "-o", "Tunnel=point-to-point", OUTSIDE_IP)):
        for ns, here, there in ((lab_.sbx, TUN_SANDBOX, TUN_OUTSIDE), (lab_.out, TUN_OUTSIDE, TUN_SANDBOX)):
            _wait_for_link(lab_, ns, "tun0")
            lab_.run(ns, "ip", "addr", "add", here, "peer", there, "dev", "tun0")
            lab_.run(ns, "ip", "link", "set", "tun0", "up")
        with outside_web(lab_, SMALL_FILES, bind=TUN_OUTSIDE):
            lab_.run(lab_.sbx, "ping", "-c", "4", "-i", "0.3", TUN_OUTSIDE)
            run(lab_, lab_.sbx, [PY, "-c", PULL, TUN_OUTSIDE, "8080", "26", *list(SMALL_FILES)[:6]])
    return [(SANDBOX_IP, out(2200), FORWARD, f"{impl('openssh')} ssh -w 0:0 (Tunnel=point-to-point) -> OpenSSH sshd "
             "(PermitTunnel yes), <suite> (defaults), -w tun VPN: 4 pings and 6 HTTP fetches over the tun link, "
             "port 2200")]


def _wait_for_link(lab_: Lab, ns: str, dev: str, timeout: float = 15) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if lab_.run(ns, "ip", "link", "show", dev, check=False).returncode == 0:
            return
        time.sleep(0.2)
    raise RuntimeError(f"{dev} never appeared in {ns}")


@ssh_scenario()
def openssh_jump_host(lab_: Lab) -> list[Label]:
    """ssh -J through sshd on 22 to a second sshd behind it; an interactive session typed through the jump."""
    with openssh_server(lab_, lab_.out, (22,)), openssh_server(lab_, lab_.out, (2201,), listen="127.0.0.1",
                                                               name="target"):
        lab.type_into(lab_, lab_.sbx, ssh_cmd(lab_, "-tt", "-J", f"root@{OUTSIDE_IP}:22", "-p", "2201",
                                              "root@127.0.0.1"), SHELLS[2], seed=16)
    return [(SANDBOX_IP, out(22), FORWARD, f"{impl('openssh')} ssh -J (ProxyJump: -W direct-tcpip) -> OpenSSH sshd as "
             "jump host -> a second sshd behind it, <suite> (defaults) outside, an interactive session of 5 "
             "commands through the jump (nested SSH), port 22")]


@ssh_scenario("dbclient", "dropbearconvert")
def dropbear_multihop_jump(lab_: Lab) -> list[Label]:
    """dbclient's multi-hop syntax (host1,host2: a nested dbclient -B through the first hop) to a second sshd."""
    with openssh_server(lab_, lab_.out, (443,)), openssh_server(lab_, lab_.out, (2201,), listen="127.0.0.1",
                                                                name="target"):
        run(lab_, lab_.sbx, dbclient_cmd(lab_, f"root@{OUTSIDE_IP}/443,root@127.0.0.1/2201",
                                         "uname -a; id; ls -la /etc | head -20"))
        time.sleep(1.5)
        run(lab_, lab_.sbx, dbclient_cmd(lab_, f"root@{OUTSIDE_IP}/443,root@127.0.0.1/2201", "cat /etc/os-release"))
    return [(SANDBOX_IP, out(443), FORWARD, f"{impl('dropbear')} dbclient multi-hop (jump through the first hop with a "
             "nested dbclient -B) -> OpenSSH sshd -> a second sshd behind it, <suite> (defaults), 2 commands run "
             "through the jump (nested SSH), port 443")]


# ================================================================================ benign: interactive sessions
@ssh_scenario("dropbear", "dropbearconvert")
def openssh_interactive_dropbear(lab_: Lab) -> list[Label]:
    """An interactive OpenSSH session (aes128-ctr, hmac-sha2-256) to dropbear on 2200, 5 commands typed."""
    with dropbear_server(lab_, (2200,)):
        lab.type_into(lab_, lab_.sbx, ssh_cmd(lab_, "-tt", "-c", "aes128-ctr", "-o", "MACs=hmac-sha2-256", "-p", "2200",
                                              OUTSIDE_IP), SHELLS[1], seed=17)
    return [(SANDBOX_IP, out(2200), INTERACTIVE, f"{impl('openssh')} ssh -> {impl('dropbear')} server, <suite> (-c "
             "aes128-ctr -o MACs=hmac-sha2-256), interactive shell, 5 commands typed with human timing, port 2200")]


@ssh_scenario("plink", "puttygen")
def plink_interactive(lab_: Lab) -> list[Label]:
    """An interactive plink session to sshd on 443, 5 commands typed."""
    with openssh_server(lab_, lab_.out, (443,)):
        lab.type_into(lab_, lab_.sbx, plink_cmd(lab_, "-t", "-no-antispoof", "-P", "443", f"root@{OUTSIDE_IP}"),
                      SHELLS[3], seed=18)
    return [(SANDBOX_IP, out(443), INTERACTIVE, f"PuTTY plink {version('plink')} -> OpenSSH sshd, <suite> (defaults), "
             "interactive shell, 5 commands typed with human timing, port 443")]


@ssh_scenario("py:paramiko")
def paramiko_interactive(lab_: Lab) -> list[Label]:
    """A paramiko invoke_shell session to sshd on 22, 5 commands typed key by key."""
    with openssh_server(lab_, lab_.out, (22,)):
        run(lab_, lab_.sbx, py_peer("paramiko", "shell", lab_, 22, *[line.rstrip("\r") for line in SHELLS[0]],
                                    "--seed", "19"))
    return [(SANDBOX_IP, out(22), INTERACTIVE, f"paramiko {version('paramiko')} invoke_shell -> OpenSSH sshd, <suite> "
             "(defaults), interactive shell, 5 commands typed with human timing, port 22")]


# ================================================================================ benign: transfers
def _payload(lab_: Lab, name: str, size: int) -> Path:
    path = lab_.workdir / name
    path.write_bytes(random.Random(size).randbytes(size))
    return path


def _remote_dir(lab_: Lab) -> Path:
    folder = lab_.workdir / "remote"
    folder.mkdir(exist_ok=True)
    return folder


@ssh_scenario("dropbear", "dropbearconvert", "scp")
def scp_legacy_dropbear(lab_: Lab) -> list[Label]:
    """scp -O (the legacy scp protocol) uploads 512 KiB to dropbear on 22 and downloads it back."""
    src, remote = _payload(lab_, "upload.bin", 512 * 1024), _remote_dir(lab_)
    with dropbear_server(lab_, (22,)):
        run(lab_, lab_.sbx, ssh_cmd(lab_, "-O", str(src), f"{OUTSIDE_IP}:{remote}/up.bin", program="scp"))
        run(lab_, lab_.sbx, ssh_cmd(lab_, "-O", f"{OUTSIDE_IP}:{remote}/up.bin", str(lab_.workdir / "down.bin"),
                                    program="scp"))
    return [(SANDBOX_IP, out(22), TRANSFER, f"{impl('openssh')} scp -O (scp protocol) -> {impl('dropbear')} server, "
             "<suite> (defaults), upload then download of 512 KiB (two connections), port 22")]


@ssh_scenario("pscp", "puttygen")
def pscp_transfer(lab_: Lab) -> list[Label]:
    """pscp uploads 400 KiB to sshd on 2200 and downloads it back (SFTP, PuTTY's default when offered)."""
    src, remote = _payload(lab_, "upload.bin", 400 * 1024), _remote_dir(lab_)
    with openssh_server(lab_, lab_.out, (2200,)):
        run(lab_, lab_.sbx, plink_cmd(lab_, "-q", "-P", "2200", str(src), f"root@{OUTSIDE_IP}:{remote}/up.bin",
                                      program="pscp"))
        run(lab_, lab_.sbx, plink_cmd(lab_, "-q", "-P", "2200", f"root@{OUTSIDE_IP}:{remote}/up.bin",
                                      str(lab_.workdir / "down.bin"), program="pscp"))
    return [(SANDBOX_IP, out(2200), TRANSFER, f"PuTTY pscp {version('pscp')} -> OpenSSH sshd, <suite> (defaults), SFTP "
             "upload then download of 400 KiB (two connections), port 2200")]


@ssh_scenario("sftp")
def sftp_batch_etm(lab_: Lab) -> list[Label]:
    """OpenSSH sftp -b (aes128-ctr, hmac-sha2-256-etm) to sshd on 8022: put, ls, get, rm."""
    src, remote = _payload(lab_, "upload.bin", 600 * 1024), _remote_dir(lab_)
    batch = lab_.workdir / "sftp.batch"
    batch.write_text(f"put {src} {remote}/up.bin\nls -l {remote}\nget {remote}/up.bin {lab_.workdir}/down.bin\n"
                     f"rm {remote}/up.bin\n")
    with openssh_server(lab_, lab_.out, (8022,)):
        run(lab_, lab_.sbx, ssh_cmd(lab_, "-c", "aes128-ctr", "-o", "MACs=hmac-sha2-256-etm@openssh.com", "-P", "8022",
                                    "-b", str(batch), OUTSIDE_IP, program="sftp"))
    return [(SANDBOX_IP, out(8022), TRANSFER, f"{impl('openssh')} sftp -b -> OpenSSH sshd, <suite> (-c aes128-ctr -o "
             "MACs=hmac-sha2-256-etm@openssh.com), put/ls/get/rm of 600 KiB, port 8022")]


@ssh_scenario("py:asyncssh")
def asyncssh_sftp(lab_: Lab) -> list[Label]:
    """asyncssh's SFTP client to an asyncssh server on 443: put, listdir, get of 500 KiB."""
    src, remote = _payload(lab_, "upload.bin", 500 * 1024), _remote_dir(lab_)
    with asyncssh_server(lab_, 443):
        run(lab_, lab_.sbx, py_peer("asyncssh", "sftp", lab_, 443, str(src), str(remote)))
    return [(SANDBOX_IP, out(443), TRANSFER, f"asyncssh {version('asyncssh')} SFTP client -> asyncssh server, <suite> "
             "(defaults), put/listdir/get of 500 KiB, port 443")]


@ssh_scenario("py:paramiko", "dropbear", "dropbearconvert")
def paramiko_sftp_dropbear(lab_: Lab) -> list[Label]:
    """paramiko's SFTP client to dropbear on 22 (dropbear runs OpenSSH's sftp-server): put, listdir, get."""
    src, remote = _payload(lab_, "upload.bin", 450 * 1024), _remote_dir(lab_)
    with dropbear_server(lab_, (22,)):
        run(lab_, lab_.sbx, py_peer("paramiko", "sftp", lab_, 22, str(src), str(remote)))
    return [(SANDBOX_IP, out(22), TRANSFER, f"paramiko {version('paramiko')} SFTP client -> {impl('dropbear')} server "
             "(sftp-server subsystem), <suite> (defaults), put/listdir/get of 450 KiB, port 22")]


def _tree(root: Path, seed: int, files: int = 24) -> None:
    rng = random.Random(seed)
    for i in range(files):
        sub = root / f"dir{i % 4}"
        sub.mkdir(parents=True, exist_ok=True)
        (sub / f"file{i}.txt").write_bytes(rng.randbytes(rng.randint(2000, 30000)))


@ssh_scenario("rsync")
def rsync_over_ssh_compressed(lab_: Lab) -> list[Label]:
    """rsync -a over ssh -C to sshd on 22: a first copy of a small tree, then an update of a few changed files."""
    tree, dest = lab_.workdir / "tree", _remote_dir(lab_) / "tree"
    _tree(tree, 27)
    rsh = " ".join(ssh_cmd(lab_, "-C"))
    with openssh_server(lab_, lab_.out, (22,)):
        run(lab_, lab_.sbx, ["rsync", "-a", "-e", rsh, f"{tree}/", f"{OUTSIDE_IP}:{dest}/"])
        for f in sorted(tree.rglob("file1*.txt")):
            f.write_bytes(f.read_bytes()[:1000] + random.Random(f.name).randbytes(3000))
        time.sleep(1.0)
        run(lab_, lab_.sbx, ["rsync", "-a", "-e", rsh, f"{tree}/", f"{OUTSIDE_IP}:{dest}/"])
    return [(SANDBOX_IP, out(22), TRANSFER, f"rsync {version('rsync')} -a -e 'ssh -C' ({impl('openssh')}) -> OpenSSH "
             "sshd, <suite> (-C), first copy of a 24-file tree then an update of changed files (two connections), "
             "port 22")]


@ssh_scenario("rsync", "dbclient", "dropbear", "dropbearconvert")
def rsync_over_dropbear(lab_: Lab) -> list[Label]:
    """rsync -a with dbclient as its remote shell to dropbear on 443: copy a tree to the outside, then back."""
    tree, dest = lab_.workdir / "tree", _remote_dir(lab_) / "tree"
    _tree(tree, 28)
    rsh = " ".join(dbclient_cmd(lab_, "-p", "443")[2:])  # without `env HOME=...`: given to rsync's environment
    env = {"HOME": str(keys(lab_).home)}
    with dropbear_server(lab_, (443,)):
        run(lab_, lab_.sbx, ["rsync", "-a", "-e", rsh, f"{tree}/", f"root@{OUTSIDE_IP}:{dest}/"], env=env)
        time.sleep(1.0)
        run(lab_, lab_.sbx, ["rsync", "-a", "-e", rsh, f"root@{OUTSIDE_IP}:{dest}/", f"{lab_.workdir}/back/"], env=env)
    return [(SANDBOX_IP, out(443), TRANSFER, f"rsync {version('rsync')} -a -e dbclient ({impl('dropbear')}) -> "
             "dropbear server, <suite> (defaults), a 24-file tree copied out then back (two connections), port "
             "443")]


GIT_ENV = {"GIT_CONFIG_NOSYSTEM": "1", "GIT_AUTHOR_NAME": "Lab", "GIT_AUTHOR_EMAIL": "lab@example.org",
           "GIT_COMMITTER_NAME": "Lab", "GIT_COMMITTER_EMAIL": "lab@example.org"}


def _git_round(lab_: Lab, port: int, env: dict) -> None:
    """Push a small repository to a bare repository on the outside host, clone it, commit, push again."""
    wd = lab_.workdir
    bare, work, clone = wd / "remote" / "repo.git", wd / "work", wd / "clone"
    bare.parent.mkdir(exist_ok=True)
    env = {**GIT_ENV, "HOME": str(keys(lab_).home), **env}
    run(lab_, lab_.out, ["git", "init", "-q", "--bare", str(bare)], env=env)
    run(lab_, lab_.sbx, ["git", "init", "-q", "-b", "main", str(work)], env=env)
    _tree(work / "src", 29, files=12)
    run(lab_, lab_.sbx, ["git", "-C", str(work), "add", "."], env=env)
    run(lab_, lab_.sbx, ["git", "-C", str(work), "commit", "-q", "-m", "initial"], env=env)
    url = f"ssh://root@{OUTSIDE_IP}:{port}{bare}"
    run(lab_, lab_.sbx, ["git", "-C", str(work), "push", "-q", url, "main"], env=env)
    time.sleep(1.0)
    run(lab_, lab_.sbx, ["git", "clone", "-q", "-b", "main", url, str(clone)], env=env)
    (clone / "NOTES.md").write_text("second commit\n" * 40)
    run(lab_, lab_.sbx, ["git", "-C", str(clone), "add", "."], env=env)
    run(lab_, lab_.sbx, ["git", "-C", str(clone), "commit", "-q", "-m", "notes"], env=env)
    time.sleep(1.0)
    run(lab_, lab_.sbx, ["git", "-C", str(clone), "push", "-q", "origin", "main"], env=env)


@ssh_scenario("git")
def git_over_ssh(lab_: Lab) -> list[Label]:
    """git push, clone and push again over OpenSSH to sshd on 2200 (git-receive-pack / git-upload-pack)."""
    with openssh_server(lab_, lab_.out, (2200,)):
        _git_round(lab_, 2200, {"GIT_SSH_COMMAND": " ".join(ssh_cmd(lab_))})
    return [(SANDBOX_IP, out(2200), TRANSFER, f"git {version('git')} over {impl('openssh')} ssh -> OpenSSH sshd, "
             "<suite> (defaults), push of a 12-file repository, clone, commit, push (three connections), port "
             "2200")]


@ssh_scenario("git", "plink", "puttygen")
def git_over_plink(lab_: Lab) -> list[Label]:
    """git over plink (GIT_SSH_VARIANT=plink) to sshd on 22: push, clone, push."""
    with openssh_server(lab_, lab_.out, (22,)):
        plink = plink_cmd(lab_)[2:]  # HOME is set in git's environment
        _git_round(lab_, 22, {"GIT_SSH_COMMAND": " ".join(plink), "GIT_SSH_VARIANT": "plink"})
    return [(SANDBOX_IP, out(22), TRANSFER, f"git {version('git')} over PuTTY plink {version('plink')} -> OpenSSH "
             "sshd, <suite> (defaults), push of a 12-file repository, clone, commit, push (three connections), "
             "port 22")]


# ================================================================================ benign: command execution
@ssh_scenario()
def openssh_command(lab_: Lab) -> list[Label]:
    """ssh host cmd to sshd on 22, three times: a status check, a listing with output, a log tail."""
    with openssh_server(lab_, lab_.out, (22,)):
        for cmd in ("uptime", "ls -la /etc", "tail -n 50 /etc/services"):
            run(lab_, lab_.sbx, ssh_cmd(lab_, OUTSIDE_IP, cmd))
            time.sleep(0.8)
    return [(SANDBOX_IP, out(22), COMMAND, f"{impl('openssh')} ssh host cmd -> OpenSSH sshd, <suite> (defaults), 3 "
             "commands with output (three connections), port 22")]


@ssh_scenario("dbclient", "dropbearconvert")
def dropbear_command(lab_: Lab) -> list[Label]:
    """dbclient host cmd to sshd on 443, twice."""
    with openssh_server(lab_, lab_.out, (443,)):
        for cmd in ("df -h; free -m", "ls -la /usr/share/doc | head -60"):
            run(lab_, lab_.sbx, dbclient_cmd(lab_, "-p", "443", f"root@{OUTSIDE_IP}", cmd))
            time.sleep(0.8)
    return [(SANDBOX_IP, out(443), COMMAND, f"{impl('dropbear')} dbclient host cmd -> OpenSSH sshd, <suite> "
             "(defaults), 2 commands with output (two connections), port 443")]


@ssh_scenario("plink", "puttygen", "dropbear", "dropbearconvert")
def plink_command(lab_: Lab) -> list[Label]:
    """plink -batch host cmd to dropbear on 2200, twice."""
    with dropbear_server(lab_, (2200,)):
        for cmd in ("uname -a; id", "cat /etc/os-release; ls /var/log"):
            run(lab_, lab_.sbx, plink_cmd(lab_, "-P", "2200", f"root@{OUTSIDE_IP}", cmd))
            time.sleep(0.8)
    return [(SANDBOX_IP, out(2200), COMMAND, f"PuTTY plink {version('plink')} host cmd -> {impl('dropbear')} server, "
             "<suite> (defaults), 2 commands with output (two connections), port 2200")]


@ssh_scenario("py:paramiko", "go")
def paramiko_command(lab_: Lab) -> list[Label]:
    """paramiko exec_command to a Go server on 8022, twice."""
    with go_server(lab_, 8022):
        for cmd in ("hostname; date", "ls -la /etc | head -40"):
            run(lab_, lab_.sbx, py_peer("paramiko", "exec", lab_, 8022, cmd))
            time.sleep(0.8)
    return [(SANDBOX_IP, out(8022), COMMAND, f"paramiko {version('paramiko')} exec_command -> {impl('go')} server, "
             "<suite> (defaults), 2 commands with output (two connections), port 8022")]


@ssh_scenario("py:asyncssh", "py:paramiko")
def asyncssh_command(lab_: Lab) -> list[Label]:
    """asyncssh conn.run to a paramiko server on 2200, twice."""
    with paramiko_server(lab_, 2200):
        for cmd in ("ps aux", "cat /etc/hostname"):
            run(lab_, lab_.sbx, py_peer("asyncssh", "exec", lab_, 2200, cmd))
            time.sleep(0.8)
    return [(SANDBOX_IP, out(2200), COMMAND, f"asyncssh {version('asyncssh')} run -> paramiko {version('paramiko')} "
             "server, <suite> (defaults), 2 commands with output (two connections), port 2200")]


@ssh_scenario("py:pylibsshext", "dropbear", "dropbearconvert")
def libssh_command(lab_: Lab) -> list[Label]:
    """ansible-pylibssh (libssh) exec_command to dropbear on 443, twice."""
    with dropbear_server(lab_, (443,)):
        for cmd in ("uname -a", "ls -la /usr/lib | head -50"):
            run(lab_, lab_.sbx, py_peer("libssh", "exec", lab_, 443, cmd))
            time.sleep(0.8)
    return [(SANDBOX_IP, out(443), COMMAND, f"libssh {version('libssh')} via ansible-pylibssh "
             f"{version('ansible-pylibssh')} exec_command -> {impl('dropbear')} server, <suite> (defaults), 2 "
             "commands with output (two connections), port 443")]


@ssh_scenario("go", "py:asyncssh")
def go_command(lab_: Lab) -> list[Label]:
    """A Go client session.CombinedOutput to an asyncssh server on 22, twice."""
    with asyncssh_server(lab_, 22):
        for cmd in ("id; uptime", "ls -la /usr/bin | head -80"):
            run(lab_, lab_.sbx, go_client(lab_, 22, "-cmd", cmd, "exec"))
            time.sleep(0.8)
    return [(SANDBOX_IP, out(22), COMMAND, f"{impl('go')} client exec -> asyncssh {version('asyncssh')} server, "
             "<suite> (defaults), 2 commands with output (two connections), port 22")]


@ssh_scenario("node:ssh2", "dropbear", "dropbearconvert")
def ssh2_command(lab_: Lab) -> list[Label]:
    """Node ssh2 exec to dropbear on 8022, twice."""
    with dropbear_server(lab_, (8022,)):
        for cmd in ("date; whoami", "ls -la /etc | tail -40"):
            run(lab_, lab_.sbx, node_cmd("exec", OUTSIDE_IP, "8022", str(keys(lab_).client), cmd))
            time.sleep(0.8)
    return [(SANDBOX_IP, out(8022), COMMAND, f"Node ssh2 {version('ssh2')} exec -> {impl('dropbear')} server, <suite> "
             "(defaults), 2 commands with output (two connections), port 8022")]


# ============================================================= compression: the sizes after the login say little
# zlib@openssh.com (dbclient's default, ssh -C) compresses every message after the login, so the tunnel's requests
# and channel opens have no predictable size: these scenarios are read by order, direction and timing alone, each
# rule with two implementations, and with compressed sessions that must not be taken for tunnels.
@ssh_scenario("dbclient", "dropbearconvert")
def dropbear_reverse_pull_compressed(lab_: Lab) -> list[Label]:
    """dbclient -N -R (its default compression) to OpenSSH sshd on 2022; the outside pulls pages and a file."""
    with openssh_server(lab_, lab_.out, (2022,)), sandbox_web(lab_), \
            tunnel(lab_, dbclient_cmd(lab_, "-N", "-p", "2022", "-R", "9000:127.0.0.1:8000", f"root@{OUTSIDE_IP}"),
                   forward_port=9000):
        pull_files(lab_, 9000, list(SMALL_FILES)[3:9] + list(BIG_FILE), seed=31)
    return [(SANDBOX_IP, out(2022), REVERSE, f"{impl('dropbear')} dbclient -N -R -> OpenSSH sshd, <suite> (defaults), "
             "files pulled: 6 pages and one 800 KiB file fetched over HTTP from the sandbox, port 2022")]


@ssh_scenario("dropbear", "dropbearconvert")
def openssh_reverse_parked_compressed(lab_: Lab) -> list[Label]:
    """ssh -C -N -R with ServerAliveInterval 4 to dropbear on 8443, then only keepalives for 25 s (parked)."""
    with dropbear_server(lab_, (8443,)), \
            tunnel(lab_, ssh_cmd(lab_, "-C", "-N", "-o", "ServerAliveInterval=4", "-p", "8443", "-R",
                                 "2222:127.0.0.1:22", f"root@{OUTSIDE_IP}"), forward_port=2222):
        time.sleep(25)
    return [(SANDBOX_IP, out(8443), REVERSE, f"{impl('openssh')} ssh -C -N -R -> {impl('dropbear')} server, <suite> "
             "(-C -o ServerAliveInterval=4), parked: tcpip-forward then keepalives only for 25 s, port 8443")]


@ssh_scenario("dropbear", "dropbearconvert")
def openssh_local_forward_compressed(lab_: Lab) -> list[Label]:
    """ssh -C -N -L to dropbear on 8022; seven page fetches through it, a pause before each."""
    with dropbear_server(lab_, (8022,)), outside_web(lab_, SMALL_FILES, bind="127.0.0.1"), \
            tunnel(lab_, ssh_cmd(lab_, "-C", "-N", "-p", "8022", "-L", "8081:127.0.0.1:8080", f"root@{OUTSIDE_IP}"),
                   local_port=8081):
        run(lab_, lab_.sbx, [PY, "-c", PULL, "127.0.0.1", "8081", "23", *list(SMALL_FILES)[2:9]])
    return [(SANDBOX_IP, out(8022), FORWARD, f"{impl('openssh')} ssh -C -N -L -> {impl('dropbear')} server, <suite> "
             "(-C), -L: 7 HTTP page fetches through the forward, port 8022")]


@ssh_scenario()
def openssh_jump_compressed(lab_: Lab) -> list[Label]:
    """ssh through a compressed jump (ProxyCommand ssh -C -W) via sshd on 2222 to a second sshd; two commands."""
    with openssh_server(lab_, lab_.out, (2222,)), openssh_server(lab_, lab_.out, (2201,), listen="127.0.0.1",
                                                                 name="target"):
        jump = " ".join(ssh_cmd(lab_, "-C", "-W", "%h:%p", "-p", "2222", f"root@{OUTSIDE_IP}"))
        for cmd in ("uname -a; uptime", "ls -la /etc | head -40"):
            run(lab_, lab_.sbx, ssh_cmd(lab_, "-o", f"ProxyCommand={jump}", "-p", "2201", "root@127.0.0.1", cmd))
            time.sleep(0.8)
    return [(SANDBOX_IP, out(2222), FORWARD, f"{impl('openssh')} ssh -C -W (a ProxyCommand jump) -> OpenSSH sshd as "
             "jump host -> a second sshd behind it, <suite> (-C) outside, 2 commands run through the jump (nested "
             "SSH, two connections), port 2222")]


@ssh_scenario("sshuttle", "iptables", "dropbear", "dropbearconvert")
def sshuttle_vpn_compressed(lab_: Lab) -> list[Label]:
    """sshuttle over ssh -C (aes128-ctr, hmac-sha2-256) to dropbear on 2200; fetches and a download behind it."""
    lab_.run(lab_.out, "ip", "addr", "add", f"{SSHUTTLE_TARGET}/32", "dev", "lo")
    ssh = " ".join(ssh_cmd(lab_, "-C", "-c", "aes128-ctr", "-o", "MACs=hmac-sha2-256"))
    with dropbear_server(lab_, (2200,)), outside_web(lab_, {**SMALL_FILES, **BIG_FILE}), \
            tunnel(lab_, ["sshuttle", "--method", "nat", "--disable-ipv6", "-e", ssh, "-r",
                          f"root@{OUTSIDE_IP}:2200", f"{SSHUTTLE_TARGET}/32"], ready_text="Connected to server",
                   settle=1.0):
        run(lab_, lab_.sbx, [PY, "-c", PULL, SSHUTTLE_TARGET, "8080", "33", *list(SMALL_FILES)[4:10],
                             *list(BIG_FILE)])
    return [(SANDBOX_IP, out(2200), FORWARD, f"sshuttle {version('sshuttle')} (OpenSSH {version('openssh')} ssh -C) -> "
             f"{impl('dropbear')} server running sshuttle's python server, <suite> (-C -c aes128-ctr -o "
             f"MACs=hmac-sha2-256), sshuttle VPN (nat method): 6 HTTP fetches and an 800 KiB download to "
             f"{SSHUTTLE_TARGET} through the mux, port 2200")]


@ssh_scenario("dbclient", "dropbear", "dropbearconvert")
def dropbear_interactive_keepalive(lab_: Lab) -> list[Label]:
    """An interactive dbclient session (compressed, keepalives every 3 s) to dropbear on 22; one command a 12 s sleep."""
    with dropbear_server(lab_, (22,)):
        lab.type_into(lab_, lab_.sbx, dbclient_cmd(lab_, "-t", "-K", "3", f"root@{OUTSIDE_IP}"),
                      ["id\r", "sleep 12\r", "ls /etc | head\r", "exit\r"], seed=41)
    return [(SANDBOX_IP, out(22), INTERACTIVE, f"{impl('dropbear')} dbclient -t -K 3 -> {impl('dropbear')} server, "
             "<suite> (defaults), interactive shell: 4 commands typed with human timing, one a 12 s sleep (only "
             "keepalives cross meanwhile), port 22")]


@ssh_scenario()
def openssh_interactive_compressed(lab_: Lab) -> list[Label]:
    """ssh -C -tt with ServerAliveInterval 3 to sshd on 443: commands typed, one of them a 12 s sleep."""
    with openssh_server(lab_, lab_.out, (443,)):
        lab.type_into(lab_, lab_.sbx, ssh_cmd(lab_, "-C", "-tt", "-o", "ServerAliveInterval=3", "-p", "443",
                                              OUTSIDE_IP), ["uname -a\r", "sleep 12\r", "df -h /\r", "exit\r"],
                      seed=42)
    return [(SANDBOX_IP, out(443), INTERACTIVE, f"{impl('openssh')} ssh -C -tt -> OpenSSH sshd, <suite> (-C -o "
             "ServerAliveInterval=3), interactive shell: 4 commands typed with human timing, one a 12 s sleep, "
             "port 443")]


@ssh_scenario("sftp")
def sftp_compressed_paced(lab_: Lab) -> list[Label]:
    """OpenSSH sftp -C typed by a person to sshd on 2200: ls, get, put, get, each after reading the last."""
    remote = _remote_dir(lab_)
    for name, size in (("a.bin", 180 * 1024), ("b.bin", 90 * 1024)):
        (remote / name).write_bytes(random.Random(size).randbytes(size))
    src = _payload(lab_, "up.bin", 120 * 1024)
    with openssh_server(lab_, lab_.out, (2200,)):
        lab.type_into(lab_, lab_.sbx, ssh_cmd(lab_, "-C", "-P", "2200", OUTSIDE_IP, program="sftp"),
                      [f"cd {remote}\r", "ls -l\r", f"get a.bin {lab_.workdir}/a.bin\r", f"put {src}\r",
                       f"get b.bin {lab_.workdir}/b.bin\r", "bye\r"], seed=43)
    return [(SANDBOX_IP, out(2200), TRANSFER, f"{impl('openssh')} sftp -C -> OpenSSH sshd, <suite> (-C), typed by a "
             "person: ls, get 180 KiB, put 120 KiB, get 90 KiB, each after a pause, port 2200")]


# ----------------------------------------------------------------------------------------------- recording
@contextlib.contextmanager
def recording(lab_: Lab, path: Path) -> Iterator[dict]:
    """tcpdump on the sandbox bridge, as lab.recording, with a 64 MiB buffer: with the default 2 MiB, in immediate
    mode (one fixed-size slot per frame), a bulk burst on a busy 2-core machine lost a third of its frames.
    Yields a dict that holds tcpdump's drop count once the block ends."""
    stats: dict = {}
    proc = lab_.popen(lab_.gw, "tcpdump", "-i", "br0", "-B", "65536", "-U", "--immediate-mode", "-s", "0", "-w",
                      str(path), "-n", stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 10
    line = b""
    while time.time() < deadline and b"listening" not in line:
        line = proc.stderr.readline()
        if not line and proc.poll() is not None:
            raise RuntimeError("tcpdump failed to start")
    try:
        yield stats
        time.sleep(0.5)
    finally:
        proc.terminate()
        try:
            tail = proc.communicate(timeout=10)[1].decode(errors="replace")
        except subprocess.TimeoutExpired:
            proc.kill()
            tail = ""
        for text in tail.splitlines():
            if "dropped by kernel" in text:
                stats["dropped"] = int(text.split()[0])


def _pcap_tcp(path: Path) -> Iterator[tuple[str, int, str, int, int, bytes]]:
    """(src, sport, dst, dport, seq, payload) of every IPv4 TCP segment (payload may be empty) in a classic
    Ethernet pcap."""
    import struct

    data = path.read_bytes()
    order = "<" if data[:4] in (b"\xd4\xc3\xb2\xa1", b"\x4d\x3c\xb2\xa1") else ">"
    off = 24
    while off + 16 <= len(data):
        incl = struct.unpack(order + "I", data[off + 8:off + 12])[0]
        frame, off = data[off + 16:off + 16 + incl], off + 16 + incl
        if len(frame) < 54 or frame[12:14] != b"\x08\x00" or frame[23] != 6:
            continue
        ip = frame[14:]
        ihl, total = (ip[0] & 15) * 4, struct.unpack("!H", ip[2:4])[0]
        tcp = ip[ihl:total]
        sport, dport, seq = struct.unpack("!HHI", tcp[:8])
        yield ".".join(map(str, ip[12:16])), sport, ".".join(map(str, ip[16:20])), dport, seq, tcp[(tcp[12] >> 4) * 4:]


def _kexinit(stream: bytes) -> list[list[str]] | None:
    """The ten name-lists of the first SSH_MSG_KEXINIT (RFC 4253 7.1) after the identification line."""
    import struct

    end = stream.find(b"\n", stream.find(b"SSH-"))
    if end < 0 or len(stream) < end + 6 or stream[end + 6] != 20:
        return None
    i, lists = end + 1 + 5 + 17, []  # packet length and padding length, message type and cookie
    for _ in range(10):
        n = struct.unpack("!I", stream[i:i + 4])[0]
        lists.append(stream[i + 4:i + 4 + n].decode(errors="replace").split(","))
        i += 4 + n
    return lists


def negotiated_suite(path: Path, client: str, server: str) -> str:
    """Cipher, MAC and compression the first SSH flow client -> server negotiated (client to server direction,
    RFC 4253 7.1: the client's first choice the server also offers), read from the two KEXINITs in the capture."""
    host, port = server.rsplit(":", 1)
    parts: dict[bool, dict[int, bytes]] = {True: {}, False: {}}
    first_port = None  # the client's port of the first such flow (its SYN comes first): only its segments count
    for src, sport, dst, dport, seq, payload in _pcap_tcp(path):
        if (src, dst, dport) == (client.split(":")[0], host, int(port)) and first_port in (None, sport):
            first_port = sport
            if payload:
                parts[True].setdefault(seq, payload)
        elif (src, sport, dst, dport) == (host, int(port), client.split(":")[0], first_port) and payload:
            parts[False].setdefault(seq, payload)
        if sum(len(p) for p in parts[True].values()) > 8192 and sum(len(p) for p in parts[False].values()) > 8192:
            break
    try:
        c, s = (_kexinit(b"".join(p for _, p in sorted(parts[side].items()))[:65536]) for side in (True, False))
    except (IndexError, ValueError):
        c = s = None
    if not c or not s:
        return "suite not read"

    def pick(k: int) -> str:
        return next((a for a in c[k] if a in s[k]), "?")

    cipher, mac, comp = pick(2), pick(4), pick(6)
    text = cipher if "gcm" in cipher or "chacha20" in cipher else f"{cipher} + {mac}"
    return text + ("" if comp == "none" else f" with {comp} compression")


def record(names: list[str], out_dir: Path) -> tuple[list[str], dict[str, str]]:
    """Record the named scenarios that can run here into out_dir (<scenario>.pcap and labels.csv rows, as
    lab.record does); `<suite>` in a note becomes the suite read from the capture. Scenarios whose software is
    missing are skipped. Returns (recorded, {skipped or failed: reason, starting with "missing" or "failed"})."""
    import csv

    out_dir.mkdir(parents=True, exist_ok=True)
    problems = {name: "missing " + ", ".join(why) for name in names if (why := missing(name))}
    for name, why in problems.items():
        print(f"lab_ssh: {name}: skipped, {why}")
    todo = [n for n in names if n not in problems]
    if any("go" in REQUIRES[n] for n in todo):
        go_binary()  # built once, before any recording starts
    labels_path = out_dir / "labels.csv"
    rows: dict[tuple[str, str], list[str]] = {}
    if labels_path.exists():
        with labels_path.open(newline="") as fh:
            for row in csv.DictReader(fh):
                rows[(row["file"], row["server"])] = [row[k] for k in ("file", "client", "server", "class", "note")]
    recorded = []
    for name in todo:
        path = out_dir / f"{name}.pcap"
        started = time.time()
        try:
            with lab.topology() as lab_:
                with recording(lab_, path) as stats:
                    labels = SCENARIOS[name](lab_)
        except Exception as exc:  # noqa: BLE001 - one scenario's failure must not lose the others
            problems[name] = f"failed: {exc}"
            print(f"lab_ssh: {name}: FAILED: {exc}")
            continue
        recorded.append(name)
        for key in [k for k in rows if k[0] == path.name]:
            del rows[key]
        for client, server, cls, note in labels:
            rows[(path.name, server)] = [path.name, client, server, cls,
                                         note.replace("<suite>", negotiated_suite(path, client, server))]
        lost = f", {stats['dropped']} frames DROPPED by the kernel" if stats.get("dropped") else ""
        print(f"lab_ssh: {name}: wrote {path} ({path.stat().st_size} bytes, {time.time() - started:.1f} s{lost})")
        with labels_path.open("w", newline="") as fh:  # after every scenario, so a later failure loses nothing
            w = csv.writer(fh)
            w.writerow(["file", "client", "server", "class", "note"])
            for key in sorted(rows):
                w.writerow(rows[key])
    return recorded, problems


def main(argv: list[str] | None = None) -> int:
    def record_all(names: list[str], out: Path) -> int:
        started = time.time()
        _, problems = record(names, out)
        print(f"lab_ssh: done in {time.time() - started:.0f} s")
        return 1 if any(why.startswith("failed") for why in problems.values()) else 0

    def describe(name: str) -> str:
        why = missing(name)
        return (SCENARIOS[name].__doc__ or "").strip() + (f"  [missing: {', '.join(why)}]" if why else "")

    return lab.scenario_main(argv, __doc__.split("\n\n")[0], list(NAMES), FOLDER, record_all, describe)


if __name__ == "__main__":
    sys.exit(main())
