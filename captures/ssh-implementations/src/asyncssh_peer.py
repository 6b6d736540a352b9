"""asyncssh_peer: an SSH client and server made with asyncssh (PyPI), for the capture lab (captures/lab_ssh.py).

  python asyncssh_peer.py server PORT HOSTKEY AUTHORIZED [--keepalive S]
      public-key login; remote forwards (tcpip-forward: asyncssh listens on the outside host's loopback), local
      forwards, SFTP, and "exec" requests run through /bin/sh
  python asyncssh_peer.py reverse HOST PORT KEY REMOTE_PORT LOCAL_PORT DURATION_S [--keepalive S] [--cipher C]
      like ssh -N -R REMOTE_PORT:127.0.0.1:LOCAL_PORT
  python asyncssh_peer.py sftp HOST PORT KEY LOCAL_FILE REMOTE_DIR [--cipher C]
      upload LOCAL_FILE, list REMOTE_DIR, download the file back
  python asyncssh_peer.py exec HOST PORT KEY COMMAND [--cipher C]
"""
from __future__ import annotations

import argparse
import asyncio
import os
import sys

import asyncssh


class Server(asyncssh.SSHServer):
    def server_requested(self, listen_host: str, listen_port: int) -> bool:
        return True  # remote forwards: asyncssh itself listens on listen_host:listen_port

    def connection_requested(self, dest_host: str, dest_port: int, orig_host: str, orig_port: int) -> bool:
        return True  # local forwards: asyncssh connects to the destination


async def run_command(process: asyncssh.SSHServerProcess) -> None:
    """An exec request: the command runs through /bin/sh, its output goes back on the channel."""
    if not process.command:
        process.exit(1)
        return
    child = await asyncio.create_subprocess_exec("/bin/sh", "-c", process.command, stdin=asyncio.subprocess.PIPE,
                                                 stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    await process.redirect(stdin=child.stdin, stdout=child.stdout, stderr=child.stderr)
    process.exit(await child.wait())


async def server(args: argparse.Namespace) -> None:
    await asyncssh.listen("0.0.0.0", args.port, server_host_keys=[args.hostkey],
                          authorized_client_keys=args.authorized, server_factory=Server,
                          process_factory=run_command, sftp_factory=True, allow_scp=True,
                          keepalive_interval=args.keepalive or 0, encoding=None)
    await asyncio.Event().wait()


def connect(args: argparse.Namespace):
    options = {}
    if args.cipher:
        options["encryption_algs"] = [args.cipher]
    if args.keepalive:
        options["keepalive_interval"] = args.keepalive
    return asyncssh.connect(args.host, args.port, username="root", client_keys=[args.key], known_hosts=None,
                            **options)  # known_hosts=None: the lab's own throwaway host key


async def reverse(args: argparse.Namespace) -> None:
    async with connect(args) as conn:
        await conn.forward_remote_port("127.0.0.1", args.remote_port, "127.0.0.1", args.local_port)
        await asyncio.sleep(args.duration)


async def sftp(args: argparse.Namespace) -> None:
    async with connect(args) as conn, conn.start_sftp_client() as client:
        name = os.path.basename(args.local_file)
        remote = f"{args.remote_dir}/{name}"
        await client.put(args.local_file, remote)
        await client.listdir(args.remote_dir)
        await client.get(remote, args.local_file + ".back")


async def run_exec(args: argparse.Namespace) -> None:
    async with connect(args) as conn:
        result = await conn.run(args.command, check=True)
        sys.stdout.write(str(result.stdout))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="mode", required=True)
    srv = sub.add_parser("server")
    srv.add_argument("port", type=int)
    srv.add_argument("hostkey")
    srv.add_argument("authorized")
    srv.add_argument("--keepalive", type=float, default=0)
    for mode in ("reverse", "sftp", "exec"):
        p = sub.add_parser(mode)
        p.add_argument("host")
        p.add_argument("port", type=int)
        p.add_argument("key")
        p.add_argument("--cipher")
        p.add_argument("--keepalive", type=float, default=0)
        if mode == "reverse":
            p.add_argument("remote_port", type=int)
            p.add_argument("local_port", type=int)
            p.add_argument("duration", type=float)
        elif mode == "sftp":
            p.add_argument("local_file")
            p.add_argument("remote_dir")
        else:
            p.add_argument("command")
    args = parser.parse_args()
    coro = {"server": server, "reverse": reverse, "sftp": sftp, "exec": run_exec}[args.mode]
    asyncio.run(coro(args))


if __name__ == "__main__":
    main()
