"""paramiko_peer: an SSH client and server made with paramiko (PyPI), for the capture lab (captures/lab_ssh.py).

  python paramiko_peer.py server PORT HOSTKEY AUTHORIZED_PUB
      public-key login; tcpip-forward (RFC 4254 7.1): listens on the outside host's loopback and opens a
      forwarded-tcpip channel per connection; "exec" requests run through /bin/sh; other global requests
      (keepalives) are answered with failure, as sshd answers
  python paramiko_peer.py reverse HOST PORT KEY REMOTE_PORT LOCAL_PORT DURATION_S [--keepalive S] [--cipher C]
      like ssh -N -R REMOTE_PORT:127.0.0.1:LOCAL_PORT (paramiko's demos/rforward.py: bind address "")
  python paramiko_peer.py shell HOST PORT KEY LINE... [--seed N]
      an interactive shell with a pty; each line typed key by key with human timing (80-260 ms per key); the
      last line should end the shell (exit)
  python paramiko_peer.py exec HOST PORT KEY COMMAND
  python paramiko_peer.py sftp HOST PORT KEY LOCAL_FILE REMOTE_DIR
"""
from __future__ import annotations

import argparse
import os
import random
import select
import socket
import subprocess
import sys
import threading
import time

import paramiko


class Server(paramiko.ServerInterface):
    """paramiko's server side: the callbacks its Transport calls."""

    def __init__(self, transport: paramiko.Transport, allowed: str):
        self.transport, self.allowed, self.listeners = transport, allowed, {}

    def get_allowed_auths(self, username: str) -> str:
        return "publickey"

    def check_auth_publickey(self, username: str, key: paramiko.PKey) -> int:
        return paramiko.AUTH_SUCCESSFUL if key.get_base64() == self.allowed else paramiko.AUTH_FAILED

    def check_channel_request(self, kind: str, chanid: int) -> int:
        return paramiko.OPEN_SUCCEEDED if kind == "session" else paramiko.OPEN_FAILED_ADMINISTRATIVELY_PROHIBITED

    def check_channel_exec_request(self, channel: paramiko.Channel, command: bytes) -> bool:
        def run() -> None:
            proc = subprocess.run(["/bin/sh", "-c", command.decode()], capture_output=True)
            channel.sendall(proc.stdout)
            channel.sendall_stderr(proc.stderr)
            channel.send_exit_status(proc.returncode)
            channel.close()

        # paramiko sends the request's success reply only after this callback returns: start a moment later, so
        # that a quick command's output and close never overtake the reply
        threading.Timer(0.1, run).start()
        return True

    def check_port_forward_request(self, address: str, port: int) -> int | bool:
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            listener.bind(("127.0.0.1", port))  # the outside host's loopback, as sshd binds without GatewayPorts
        except OSError:
            return False
        listener.listen(8)
        bound = listener.getsockname()[1]
        self.listeners[port] = listener

        def accept() -> None:
            while True:
                try:
                    conn, peer = listener.accept()
                except OSError:
                    return
                chan = self.transport.open_forwarded_tcpip_channel(peer, (address, bound))
                threading.Thread(target=pipe, args=(chan, conn), daemon=True).start()

        threading.Thread(target=accept, daemon=True).start()
        return bound

    def cancel_port_forward_request(self, address: str, port: int) -> None:
        listener = self.listeners.pop(port, None)
        if listener:
            listener.close()


def pipe(chan: paramiko.Channel, sock: socket.socket) -> None:
    """Both ways between a channel and a socket until either side closes."""
    try:
        while True:
            ready, _, _ = select.select([sock, chan], [], [])
            if sock in ready:
                data = sock.recv(32768)
                if not data:
                    break
                chan.sendall(data)
            if chan in ready:
                data = chan.recv(32768)
                if not data:
                    break
                sock.sendall(data)
    finally:
        chan.close()
        sock.close()


def server(args: argparse.Namespace) -> None:
    host_key = paramiko.Ed25519Key.from_private_key_file(args.hostkey)
    with open(args.authorized) as fh:
        allowed = fh.read().split()[1]
    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("0.0.0.0", args.port))
    listener.listen(8)
    while True:
        conn, _ = listener.accept()
        transport = paramiko.Transport(conn)
        transport.add_server_key(host_key)
        transport.start_server(server=Server(transport, allowed))

        def drain(t: paramiko.Transport = transport) -> None:
            """Take the session channels (their exec runs in the callbacks) and hold them: paramiko closes a
            Channel object that is garbage collected."""
            held = []
            while t.is_active():
                chan = t.accept(timeout=1)
                if chan is not None:
                    held.append(chan)

        threading.Thread(target=drain, daemon=True).start()


def connect(args: argparse.Namespace) -> paramiko.SSHClient:
    client = paramiko.SSHClient()
    client.set_missing_host_key_policy(paramiko.AutoAddPolicy())  # the lab's own throwaway host key
    disabled = {}
    if getattr(args, "cipher", None):
        disabled["ciphers"] = [c for c in paramiko.Transport._preferred_ciphers if c != args.cipher]
    client.connect(args.host, args.port, username="root", key_filename=args.key, look_for_keys=False,
                   allow_agent=False, timeout=10, disabled_algorithms=disabled)
    return client


def relay(chan: paramiko.Channel, local_port: int) -> None:
    """One forwarded-tcpip channel to the sandbox's local service, both ways until either side closes."""
    pipe(chan, socket.create_connection(("127.0.0.1", local_port)))


def reverse(args: argparse.Namespace) -> None:
    client = connect(args)
    transport = client.get_transport()
    if args.keepalive:
        transport.set_keepalive(args.keepalive)  # keepalive@lag.net, want_reply 0
    transport.request_port_forward("", args.remote_port)
    deadline = time.time() + args.duration
    while time.time() < deadline:
        chan = transport.accept(timeout=0.5)
        if chan is not None:
            threading.Thread(target=relay, args=(chan, args.local_port), daemon=True).start()
    client.close()


def shell(args: argparse.Namespace) -> None:
    rng = random.Random(args.seed)
    client = connect(args)
    chan = client.invoke_shell(term="xterm", width=120, height=40)

    def drain() -> None:
        while True:
            data = chan.recv(65536)
            if not data:
                return

    threading.Thread(target=drain, daemon=True).start()
    time.sleep(1.5)  # the prompt
    for line in args.lines:
        for ch in line + "\r":
            chan.send(ch.encode())
            time.sleep(rng.uniform(0.08, 0.26))
        time.sleep(rng.uniform(0.6, 1.5))  # reading the output
    deadline = time.time() + 5
    while not chan.exit_status_ready() and time.time() < deadline:
        time.sleep(0.1)
    client.close()


def run_exec(args: argparse.Namespace) -> None:
    client = connect(args)
    _, stdout, _ = client.exec_command(args.command)
    sys.stdout.write(stdout.read().decode(errors="replace"))
    client.close()


def sftp(args: argparse.Namespace) -> None:
    client = connect(args)
    session = client.open_sftp()
    remote = f"{args.remote_dir}/{os.path.basename(args.local_file)}"
    session.put(args.local_file, remote)
    session.listdir(args.remote_dir)
    session.get(remote, args.local_file + ".back")
    session.close()
    client.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="mode", required=True)
    srv = sub.add_parser("server")
    srv.add_argument("port", type=int)
    srv.add_argument("hostkey")
    srv.add_argument("authorized")
    for mode in ("reverse", "shell", "exec", "sftp"):
        p = sub.add_parser(mode)
        p.add_argument("host")
        p.add_argument("port", type=int)
        p.add_argument("key")
        p.add_argument("--cipher")
        if mode == "reverse":
            p.add_argument("remote_port", type=int)
            p.add_argument("local_port", type=int)
            p.add_argument("duration", type=float)
            p.add_argument("--keepalive", type=int, default=0)
        elif mode == "shell":
            p.add_argument("lines", nargs="+")
            p.add_argument("--seed", type=int, default=1)
        elif mode == "exec":
            p.add_argument("command")
        else:
            p.add_argument("local_file")
            p.add_argument("remote_dir")
    args = parser.parse_args()
    {"server": server, "reverse": reverse, "shell": shell, "exec": run_exec, "sftp": sftp}[args.mode](args)


if __name__ == "__main__":
    main()
