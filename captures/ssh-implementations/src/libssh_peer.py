"""libssh_peer: an SSH client made with libssh, for the capture lab (captures/lab_ssh.py).

libssh comes from PyPI's ansible-pylibssh, which bundles it. Its Python API has no port forwarding, so the reverse
mode calls the bundled library's C API through ctypes (ssh_channel_listen_forward / ssh_channel_accept_forward, the
calls of libssh's own examples); the exec mode uses ansible-pylibssh's API.

  python libssh_peer.py reverse HOST PORT KEY REMOTE_PORT LOCAL_PORT DURATION_S [--cipher C] [--mac M]
      like ssh -N -R REMOTE_PORT:127.0.0.1:LOCAL_PORT
  python libssh_peer.py exec HOST PORT KEY COMMAND
"""
from __future__ import annotations

import argparse
import ctypes
import glob
import os
import select
import socket
import sys
import time

# enum ssh_options_e (libssh.h; the same order as ansible-pylibssh's includes/libssh.pxd)
SSH_OPTIONS_HOST, SSH_OPTIONS_PORT, SSH_OPTIONS_USER, SSH_OPTIONS_KNOWNHOSTS = 0, 1, 4, 8
SSH_OPTIONS_CIPHERS_C_S, SSH_OPTIONS_CIPHERS_S_C = 15, 16
SSH_OPTIONS_STRICTHOSTKEYCHECK = 21
SSH_OPTIONS_HMAC_C_S, SSH_OPTIONS_HMAC_S_C = 29, 30
SSH_OPTIONS_PROCESS_CONFIG = 38
SSH_OK, SSH_AUTH_SUCCESS = 0, 0


def load_libssh() -> ctypes.CDLL:
    """The libssh that ansible-pylibssh bundles (a wheel's .libs folder), else the system's libssh.so.4."""
    import pylibsshext

    site = os.path.dirname(os.path.dirname(pylibsshext.__file__))
    found = sorted(glob.glob(os.path.join(site, "ansible_pylibssh.libs", "libssh*.so*")))
    lib = ctypes.CDLL(found[0] if found else "libssh.so.4")
    vp, cp, ip = ctypes.c_void_p, ctypes.c_char_p, ctypes.POINTER(ctypes.c_int)
    for name, res, argtypes in (
            ("ssh_new", vp, []), ("ssh_options_set", ctypes.c_int, [vp, ctypes.c_int, vp]),
            ("ssh_connect", ctypes.c_int, [vp]), ("ssh_get_error", cp, [vp]),
            ("ssh_pki_import_privkey_file", ctypes.c_int, [cp, cp, vp, vp, ctypes.POINTER(vp)]),
            ("ssh_userauth_publickey", ctypes.c_int, [vp, cp, vp]),
            ("ssh_channel_listen_forward", ctypes.c_int, [vp, cp, ctypes.c_int, ip]),
            ("ssh_channel_accept_forward", vp, [vp, ctypes.c_int, ip]),
            ("ssh_channel_read_nonblocking", ctypes.c_int, [vp, vp, ctypes.c_uint32, ctypes.c_int]),
            ("ssh_channel_write", ctypes.c_int, [vp, vp, ctypes.c_uint32]),
            ("ssh_channel_is_eof", ctypes.c_int, [vp]), ("ssh_channel_send_eof", ctypes.c_int, [vp]),
            ("ssh_channel_close", ctypes.c_int, [vp]), ("ssh_channel_free", None, [vp]),
            ("ssh_disconnect", None, [vp]), ("ssh_free", None, [vp]), ("ssh_version", cp, [ctypes.c_int])):
        fn = getattr(lib, name)
        fn.restype, fn.argtypes = res, argtypes
    return lib


def reverse(args: argparse.Namespace) -> None:
    lib = load_libssh()
    s = lib.ssh_new()

    def option(opt: int, value) -> None:
        if isinstance(value, str):
            ref = ctypes.c_char_p(value.encode())
            rc = lib.ssh_options_set(s, opt, ctypes.cast(ref, ctypes.c_void_p))
        else:
            rc = lib.ssh_options_set(s, opt, ctypes.cast(ctypes.pointer(value), ctypes.c_void_p))
        if rc != SSH_OK:
            sys.exit(f"libssh_peer: option {opt}: {lib.ssh_get_error(s).decode()}")

    option(SSH_OPTIONS_PROCESS_CONFIG, ctypes.c_bool(False))  # no ~/.ssh/config
    option(SSH_OPTIONS_HOST, args.host)
    option(SSH_OPTIONS_PORT, ctypes.c_uint(args.port))
    option(SSH_OPTIONS_USER, "root")
    option(SSH_OPTIONS_KNOWNHOSTS, "/dev/null")
    option(SSH_OPTIONS_STRICTHOSTKEYCHECK, ctypes.c_int(0))  # the lab's own throwaway host key
    if args.cipher:
        option(SSH_OPTIONS_CIPHERS_C_S, args.cipher)
        option(SSH_OPTIONS_CIPHERS_S_C, args.cipher)
    if args.mac:
        option(SSH_OPTIONS_HMAC_C_S, args.mac)
        option(SSH_OPTIONS_HMAC_S_C, args.mac)
    if lib.ssh_connect(s) != SSH_OK:
        sys.exit(f"libssh_peer: connect: {lib.ssh_get_error(s).decode()}")
    key = ctypes.c_void_p()
    if lib.ssh_pki_import_privkey_file(args.key.encode(), None, None, None, ctypes.byref(key)) != SSH_OK:
        sys.exit("libssh_peer: cannot read the key")
    if lib.ssh_userauth_publickey(s, None, key) != SSH_AUTH_SUCCESS:
        sys.exit(f"libssh_peer: auth: {lib.ssh_get_error(s).decode()}")
    bound = ctypes.c_int()
    if lib.ssh_channel_listen_forward(s, b"127.0.0.1", args.remote_port, ctypes.byref(bound)) != SSH_OK:
        sys.exit(f"libssh_peer: tcpip-forward: {lib.ssh_get_error(s).decode()}")
    buf = ctypes.create_string_buffer(32768)
    open_channels: list[tuple[int, socket.socket]] = []
    deadline = time.time() + args.duration
    while time.time() < deadline:
        port = ctypes.c_int()
        chan = lib.ssh_channel_accept_forward(s, 50, ctypes.byref(port))  # also reads what the server sent
        if chan:
            open_channels.append((chan, socket.create_connection(("127.0.0.1", args.local_port))))
        for chan, sock in list(open_channels):
            done = False
            n = lib.ssh_channel_read_nonblocking(chan, buf, len(buf), 0)
            if n > 0:
                sock.sendall(buf.raw[:n])
            elif n < 0 or lib.ssh_channel_is_eof(chan):
                done = True
            while not done and select.select([sock], [], [], 0)[0]:
                data = sock.recv(32768)
                if not data:
                    done = True
                    break
                lib.ssh_channel_write(chan, data, len(data))
            if done:
                lib.ssh_channel_send_eof(chan)
                lib.ssh_channel_close(chan)
                lib.ssh_channel_free(chan)
                sock.close()
                open_channels.remove((chan, sock))
    lib.ssh_disconnect(s)
    lib.ssh_free(s)


def run_exec(args: argparse.Namespace) -> None:
    from pylibsshext.session import Session

    session = Session()
    with open(args.key, "rb") as fh:
        session.connect(host=args.host, port=args.port, user="root", private_key=fh.read(), look_for_keys=False,
                        host_key_checking=False)  # the lab's own throwaway host key
    channel = session.new_channel()
    result = channel.exec_command(args.command)
    sys.stdout.write(result.stdout.decode(errors="replace"))
    channel.close()
    session.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="mode", required=True)
    for mode in ("reverse", "exec"):
        p = sub.add_parser(mode)
        p.add_argument("host")
        p.add_argument("port", type=int)
        p.add_argument("key")
        if mode == "reverse":
            p.add_argument("remote_port", type=int)
            p.add_argument("local_port", type=int)
            p.add_argument("duration", type=float)
            p.add_argument("--cipher")
            p.add_argument("--mac")
        else:
            p.add_argument("command")
    args = parser.parse_args()
    {"reverse": reverse, "exec": run_exec}[args.mode](args)


if __name__ == "__main__":
    main()
