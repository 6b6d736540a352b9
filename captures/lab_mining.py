"""Mining scenarios of the capture lab: Stratum v1 through a real third-party proxy, the same over TLS with a pool
name resolved by the lab's DNS responder, xmrig-style CryptoNote, EthereumStratum on a non-standard port, the
Stratum V2 handshake sizes, and two negatives (non-mining JSON-RPC; MQTT and WebSocket keepalives with pushes).

Imported at the end of captures/lab.py, so `lab.py list|record` and tests/test_lab.py see these scenarios. Every
address used is one the lab creates: the pools listen on POOL_IP, a second address that these scenarios add to the
outside host (same RFC 2544 range), so that the detector's pair memory and DNS bindings, which rightly carry over
from one capture to the next, never make a negative scenario (on OUTSIDE_IP) look like a pool. Nothing leaves the
namespaces.

Real software: aiostratum-proxy 1.1 (PyPI, MIT; needs aiojsonrpc2 1.0.0) is a Stratum proxy: it runs in the sandbox
and opens the Stratum connection to the pool itself (mining.subscribe, mining.extranonce.subscribe,
mining.authorize, mining.submit), plain or TLS with SNI. It is installed into the lab's work directory with pip at
record time. Neither Debian main nor PyPI has an offline-runnable pool, xmrig, cpuminer or ethminer, so the pool
side and the other miners are scripted; their labels.csv notes say "scripted". The scripted messages follow the
field lists of detection-science 2.1-2.3 and 2.6 (xmrig's JSON envelope, NiceHash EthereumStratum/1.0.0, the SV2
handshake and frame sizes).
"""
from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Iterator

# lab.py registers itself as `lab` even when it runs as the program
import lab as _lab  # noqa: E402
from lab import OUTSIDE_IP, SANDBOX_IP, PY_DNS_SERVER, Lab, Label, background, scenario  # noqa: E402

POOL_IP = "198.18.0.3"  # a second address of the outside host: pools never share an address with the negatives
TLS_POOL_NAME = "zec-eu1.nanopool.org"  # under nanopool.org, which rules/pools.toml lists (Falco, ET Open)
NOSNI_POOL_NAME = "pool.supportxmr.com"  # under supportxmr.com (Falco)
PROXY_REQUIREMENTS = ("aiostratum-proxy==1.1", "aiojsonrpc2==1.0.0")
SESSION_S = 12.0  # how long each mining session runs
PUSH_S = 2.5  # pool pushes (lab time scale: real pools push every 15-60 s, detection-science 2.7)

# One script for every scripted peer: `python -c PEERS ROLE DIALECT HOST PORT [options]`.
PEERS = r'''
import json, os, socket, ssl, struct, sys, threading, time

role, dialect, host, port = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
opts = dict(a.split("=", 1) for a in sys.argv[5:])
duration = float(opts.get("duration", "12"))
push = float(opts.get("push", "2.5"))


def line(obj):
    return (json.dumps(obj, separators=(",", ":")) + "\n").encode()


def hexs(n, seed):
    return (bytes((seed * 131 + i * 7) & 0xFF for i in range(n))).hex()


class Lines:
    def __init__(self, sock):
        self.sock, self.buf = sock, b""

    def read(self, timeout=None):
        self.sock.settimeout(timeout)
        while b"\n" not in self.buf:
            try:
                chunk = self.sock.recv(65536)
            except (socket.timeout, TimeoutError):
                return None
            if not chunk:
                raise EOFError
            self.buf += chunk
        raw, self.buf = self.buf.split(b"\n", 1)
        return json.loads(raw)


class JsonPeer:
    """The pool side of a JSON-lines connection: `send` from any thread, `read` the next message, and `every`
    (seconds, fn) to push on a timer until `close`."""

    def __init__(self, conn):
        self.conn, self.rd, self.lock, self.closed = conn, Lines(conn), threading.Lock(), False

    def send(self, obj):
        with self.lock:
            self.conn.sendall(line(obj))

    def read(self):
        return self.rd.read()

    def every(self, seconds, fn):
        def loop():
            while not self.closed:
                time.sleep(seconds)
                if not self.closed:
                    fn()
        threading.Thread(target=loop, daemon=True).start()

    def close(self):
        self.closed = True


# ------------------------------------------------------------------ pools (outside)
def equihash_pool(conn):
    peer, state = JsonPeer(conn), {"job": 0}
    send = peer.send

    def notify():
        state["job"] += 1
        j = state["job"]
        send({"id": None, "method": "mining.notify", "params": [f"{j:04x}", "04000000", hexs(32, j), hexs(32, j + 1),
                                                                 "00" * 32, f"{int(time.time()):08x}", "1d00ffff",
                                                                 j == 1]})

    peer.every(push, notify)
    try:
        while True:
            msg = peer.read()
            m, mid = msg.get("method"), msg.get("id")
            if m == "mining.subscribe":
                send({"id": mid, "result": [None, "e66c0000"], "error": None})
            elif m == "mining.extranonce.subscribe":
                send({"id": mid, "result": True, "error": None})
            elif m == "mining.authorize":
                send({"id": mid, "result": True, "error": None})
                send({"id": None, "method": "mining.set_target", "params": ["0004189300000000" + "0" * 48]})
                notify()
            elif m == "mining.submit":
                send({"id": mid, "result": True, "error": None})
            else:
                send({"id": mid, "result": None, "error": [20, "Other/Unknown", None]})
    finally:
        peer.close()


def ethstratum_pool(conn):  # NiceHash EthereumStratum/1.0.0
    peer, state = JsonPeer(conn), {"job": 0}
    send = peer.send

    def notify():
        state["job"] += 1
        j = state["job"]
        send({"id": None, "method": "mining.notify", "params": [f"bf0{j:03x}", hexs(32, j), hexs(32, j + 7), True]})

    peer.every(push, notify)
    try:
        while True:
            msg = peer.read()
            m, mid = msg.get("method"), msg.get("id")
            if m == "mining.subscribe":
                send({"id": mid, "result": [["mining.notify", "ae6812eb4cd7735a302a8a9dd95cf71f",
                                             "EthereumStratum/1.0.0"], "080c"], "error": None})
            elif m in ("mining.extranonce.subscribe", "mining.submit"):
                send({"id": mid, "result": True, "error": None})
            elif m == "mining.authorize":
                send({"id": mid, "result": True, "error": None})
                send({"id": None, "method": "mining.set_difficulty", "params": [2]})
                notify()
    finally:
        peer.close()


def cryptonote_pool(conn):  # the answers xmrig parses (Client.cpp parseJob / parseExtensions)
    peer, state = JsonPeer(conn), {"job": 0, "rpc": "479059546883218"}
    send = peer.send

    def job():
        state["job"] += 1
        j = state["job"]
        return {"blob": "0e0e" + hexs(37, j) + "00000000" + hexs(33, j + 3), "job_id": f"{7000 + j}",
                "target": "dcff1100", "algo": "rx/0", "height": 3100000 + j, "seed_hash": hexs(32, 99)}

    started = False
    try:
        while True:
            msg = peer.read()
            m, mid = msg.get("method"), msg.get("id")
            if m == "login":
                send({"id": mid, "jsonrpc": "2.0", "error": None,
                      "result": {"id": state["rpc"], "job": job(), "extensions": ["algo", "nicehash", "connect",
                                                                                  "keepalive"], "status": "OK"}})
                if not started:
                    started = True
                    peer.every(push, lambda: send({"jsonrpc": "2.0", "method": "job", "params": job()}))
            elif m == "submit":
                send({"id": mid, "jsonrpc": "2.0", "error": None, "result": {"status": "OK"}})
            elif m == "keepalived":
                send({"id": mid, "jsonrpc": "2.0", "error": None, "result": {"status": "KEEPALIVED"}})
    finally:
        peer.close()


def sv2_pool(conn):  # sizes only: random bytes in the shapes of sv2-spec 4 (Noise NX) and 3.2 (frames)
    conn.settimeout(duration + 5)
    need = 64
    got = b""
    while len(got) < need:
        chunk = conn.recv(need - len(got))
        if not chunk:
            return
        got += chunk
    conn.sendall(os.urandom(234))  # act 2: 64 + (64 + 16) + (74 + 16)
    conn.recv(4096)  # SetupConnection
    conn.sendall(os.urandom(22 + 40 + 16))  # SetupConnection.Success
    conn.recv(4096)  # OpenStandardMiningChannel
    conn.sendall(os.urandom(22 + 60 + 16))
    end = time.time() + duration
    conn.settimeout(0.2)
    while time.time() < end:
        conn.sendall(os.urandom(22 + 90 + 16))  # NewMiningJob / SetNewPrevHash
        stop = time.time() + push
        while time.time() < stop:
            try:
                data = conn.recv(4096)
            except (socket.timeout, TimeoutError):
                continue
            if not data:
                return
            conn.sendall(os.urandom(22 + 12 + 16))  # SubmitShares.Success


def jsonrpc_server(conn):  # an ordinary JSON-RPC 2.0 service that uses words mining also uses
    peer, state = JsonPeer(conn), {"seq": 0}

    def tick():
        state["seq"] += 1
        peer.send({"jsonrpc": "2.0", "method": "notify", "params": {"event": "tick", "seq": state["seq"]}})

    peer.every(push, tick)
    answers = {"login": {"token": "c2Vzc2lvbg", "expires": 3600}, "eth_blockNumber": "0x10d4f",
               "job.status": {"state": "done"}, "submit": {"status": "OK"}, "echo": "Testing!"}
    try:
        while True:
            msg = peer.read()
            peer.send({"jsonrpc": "2.0", "id": msg.get("id"), "result": answers.get(msg.get("method"), None)})
    finally:
        peer.close()


def mqtt_broker(conn):  # MQTT 3.1.1 (OASIS): CONNACK, SUBACK, PUBLISH pushes, PINGRESP
    conn.settimeout(0.2)
    end = time.time() + duration + 5
    next_push, n = time.time() + push, 0
    subscribed = False
    while time.time() < end:
        try:
            data = conn.recv(4096)
            if not data:
                return
            kind = data[0] >> 4
            if kind == 1:
                conn.sendall(b"\x20\x02\x00\x00")
            elif kind == 8:
                conn.sendall(b"\x90\x03" + data[2:4] + b"\x00")
                subscribed = True
            elif kind == 12:
                conn.sendall(b"\xd0\x00")
        except (socket.timeout, TimeoutError):
            pass
        if subscribed and time.time() >= next_push:
            n += 1
            topic = b"sensors/lab/telemetry"
            body = json.dumps({"seq": n, "temp": 21.5 + n / 10, "ts": time.time()}).encode()
            var = struct.pack("!H", len(topic)) + topic + body
            conn.sendall(b"\x30" + bytes([len(var)]) + var)
            next_push += push


def websocket_server(conn):  # RFC 6455: upgrade, text pushes, pong for ping
    import base64, hashlib
    req = conn.recv(4096)
    key = [l.split(b":", 1)[1].strip() for l in req.split(b"\r\n") if l.lower().startswith(b"sec-websocket-key")][0]
    accept = base64.b64encode(hashlib.sha1(key + b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11").digest())
    conn.sendall(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                 b"Sec-WebSocket-Accept: " + accept + b"\r\n\r\n")
    conn.settimeout(0.2)
    end = time.time() + duration + 5
    next_push, n = time.time() + push, 0
    while time.time() < end:
        try:
            data = conn.recv(4096)
            if not data:
                return
            if data[0] & 0x0F == 9:
                conn.sendall(b"\x8a\x00")
        except (socket.timeout, TimeoutError):
            pass
        if time.time() >= next_push:
            n += 1
            body = json.dumps({"type": "update", "seq": n, "price": 100 + n}).encode()
            conn.sendall(b"\x81" + bytes([len(body)]) + body)
            next_push += push


# ------------------------------------------------------------------ miners and clients (sandbox)
def connect():
    sock = socket.create_connection((host, port), timeout=10)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    if opts.get("tls"):
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE  # like xmrig: pool certificates are not CA-validated (2.2)
        sni = opts.get("sni") or None
        sock = ctx.wrap_socket(sock, server_hostname=sni)
    return sock


def equihash_miner():  # talks to aiostratum-proxy (or straight to the pool when the proxy is not available)
    sock = connect()
    rd = Lines(sock)
    sock.sendall(line({"id": 1, "method": "mining.subscribe", "params": ["lab-miner/1.0", None, host, str(port)]}))
    sock.sendall(line({"id": 2, "method": "mining.authorize", "params": [opts.get("user", "t1LabWallet.rig1"), "x"]}))
    job, n, end = None, 0, time.time() + duration
    while time.time() < end:
        msg = rd.read(timeout=0.5)
        if msg and msg.get("method") == "mining.notify":
            job = msg["params"][0]
        if job and time.time() > end - duration + 2 + n * 2.0:
            n += 1
            sock.sendall(line({"id": 10 + n, "method": "mining.submit",
                               "params": [opts.get("user", "t1LabWallet.rig1"), job, f"{int(time.time()):08x}",
                                          f"{n:06x}", "fd4005" + hexs(100, n)]}))
    sock.close()


def ethstratum_miner():
    sock = connect()
    rd = Lines(sock)
    user = "0x4b999ba68e017854ffb6b494bc2ddb9ef02bd745.rig1"
    sock.sendall(line({"id": 1, "method": "mining.subscribe",
                       "params": ["lab-ethminer/0.19.0", "EthereumStratum/1.0.0"]}))
    rd.read(timeout=5)
    sock.sendall(line({"id": 2, "method": "mining.extranonce.subscribe", "params": []}))
    sock.sendall(line({"id": 3, "method": "mining.authorize", "params": [user, "x"]}))
    job, n, end = None, 0, time.time() + duration
    while time.time() < end:
        msg = rd.read(timeout=0.5)
        if msg and msg.get("method") == "mining.notify":
            job = msg["params"][0]
        if job and time.time() > end - duration + 2 + n * 2.0:
            n += 1
            sock.sendall(line({"id": 10 + n, "method": "mining.submit", "params": [user, job, f"{n:012x}"]}))
    sock.close()


def cryptonote_miner():  # xmrig's envelope: id, jsonrpc, method, params (JsonRequest.cpp)
    sock = connect()
    rd = Lines(sock)
    sock.sendall(line({"id": 1, "jsonrpc": "2.0", "method": "login", "params": {
        "login": "44AFFq5kSiGBoZ4NMDwYtN18obc8AemS33DBLWs3H7otXft3XjrpDtQGv7SqSsaBYBb98uNbr2VBBEt7f2wfn3RVGQBEP3A",
        "pass": "x", "agent": "XMRig/6.26.0 (Linux x86_64) libuv/1.44.2 gcc/12.2.0", "algo": ["rx/0", "cn/r"]}}))
    rpc, job, n, end = None, None, 0, time.time() + duration
    last_send = time.time()
    while time.time() < end:
        msg = rd.read(timeout=0.5)
        if msg:
            result = msg.get("result") or {}
            if isinstance(result, dict) and "job" in result:
                rpc, job = result["id"], result["job"]["job_id"]
            elif msg.get("method") == "job":
                job = msg["params"]["job_id"]
        if job and time.time() > end - duration + 1.5 + n * 3.0 and n < 3:
            n += 1
            sock.sendall(line({"id": 1 + n, "jsonrpc": "2.0", "method": "submit", "params": {
                "id": rpc, "job_id": job, "nonce": f"{n * 2654435761 & 0xFFFFFFFF:08x}", "result": hexs(32, n),
                "algo": "rx/0"}}))
            last_send = time.time()
        elif rpc and time.time() - last_send > 3.0:  # xmrig sends it after kKeepAliveTimeout (60 s) of silence
            sock.sendall(line({"id": 10 + n, "jsonrpc": "2.0", "method": "keepalived", "params": {"id": rpc}}))
            last_send = time.time()
    sock.close()


def sv2_miner():
    sock = connect()
    sock.sendall(os.urandom(64))  # act 1: ElligatorSwift ephemeral key
    got = b""
    while len(got) < 234:
        got += sock.recv(234 - len(got))
    sock.sendall(os.urandom(22 + 80 + 16))  # SetupConnection
    sock.recv(4096)
    sock.sendall(os.urandom(22 + 50 + 16))  # OpenStandardMiningChannel
    end = time.time() + duration
    sock.settimeout(0.3)
    n = 0
    while time.time() < end:
        try:
            sock.recv(4096)
        except (socket.timeout, TimeoutError):
            pass
        if time.time() > end - duration + 1 + n * 2.0:
            n += 1
            sock.sendall(os.urandom(22 + 38 + 16))  # SubmitSharesStandard
    sock.close()


def jsonrpc_client():
    sock = connect()
    rd = Lines(sock)
    calls = [("login", {"login": "alice", "pass": "correct horse"}), ("eth_blockNumber", []),
             ("job.status", {"job_id": "build-17"}), ("submit", {"form": "contact", "result": "ok"}),
             ("echo", ["Testing!"])]
    end, i = time.time() + duration, 0
    while time.time() < end:
        method, params = calls[i % len(calls)]
        i += 1
        sock.sendall(line({"jsonrpc": "2.0", "id": i, "method": method, "params": params}))
        deadline = time.time() + 1.5
        while time.time() < deadline:
            rd.read(timeout=0.3)
    sock.close()


def mqtt_client():
    sock = connect()
    cid = b"lab-sensor"
    var = b"\x00\x04MQTT\x04\x02\x00\x1e" + struct.pack("!H", len(cid)) + cid
    sock.sendall(b"\x10" + bytes([len(var)]) + var)
    sock.recv(16)
    topic = b"sensors/lab/#"
    sub = b"\x00\x01" + struct.pack("!H", len(topic)) + topic + b"\x00"
    sock.sendall(b"\x82" + bytes([len(sub)]) + sub)
    sock.settimeout(0.2)
    end, next_ping = time.time() + duration, time.time() + 3.0
    while time.time() < end:
        try:
            sock.recv(4096)
        except (socket.timeout, TimeoutError):
            pass
        if time.time() >= next_ping:
            sock.sendall(b"\xc0\x00")  # PINGREQ
            next_ping += 3.0
    sock.sendall(b"\xe0\x00")  # DISCONNECT
    sock.close()


def websocket_client():
    sock = connect()
    sock.sendall(b"GET /updates HTTP/1.1\r\nHost: " + host.encode() + b"\r\nUpgrade: websocket\r\n"
                 b"Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                 b"Sec-WebSocket-Version: 13\r\n\r\n")
    sock.recv(4096)
    sock.settimeout(0.2)
    end, next_ping = time.time() + duration, time.time() + 3.0
    while time.time() < end:
        try:
            sock.recv(4096)
        except (socket.timeout, TimeoutError):
            pass
        if time.time() >= next_ping:
            sock.sendall(b"\x89\x80" + os.urandom(4))  # masked ping, empty
            next_ping += 3.0
    sock.sendall(b"\x88\x80" + os.urandom(4))
    sock.close()


SERVERS = {"equihash": equihash_pool, "ethstratum": ethstratum_pool, "cryptonote": cryptonote_pool, "sv2": sv2_pool,
           "jsonrpc": jsonrpc_server, "mqtt": mqtt_broker, "websocket": websocket_server}
CLIENTS = {"equihash": equihash_miner, "ethstratum": ethstratum_miner, "cryptonote": cryptonote_miner,
           "sv2": sv2_miner, "jsonrpc": jsonrpc_client, "mqtt": mqtt_client, "websocket": websocket_client}

if role == "server":
    srv = socket.socket()
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind((host, port))
    srv.listen(8)
    ctx = None
    if opts.get("cert"):
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(opts["cert"], opts["key"])

    def serve(conn):
        try:
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if ctx is not None:
                conn = ctx.wrap_socket(conn, server_side=True)
            SERVERS[dialect](conn)
        except (EOFError, OSError, ValueError):
            pass
        finally:
            conn.close()

    while True:
        c, _ = srv.accept()
        threading.Thread(target=serve, args=(c,), daemon=True).start()
else:
    CLIENTS[dialect]()
'''

PROXY_CONFIG = """proxies:
- name: lab
  max_workers: 256
  extranonce_subscribe: true
  worker_class: aiostratum_proxy.protocols.equihash.EquihashWorkerProtocol
  pool_class: aiostratum_proxy.protocols.equihash.EquihashPoolProtocol
  listen:
  - host: 127.0.0.1
    port: 10666
  pools:
  - name: lab pool
    host: {host}
    port: {port}
    account_name: t1LabWalletAddressForTheCaptureLab.proxy
    account_password: x
    ssl: {ssl}
    ssl_verify: false
"""
# aiostratum-proxy 1.1 calls yaml.load() without a Loader, which PyYAML >= 6 refuses: give it the safe loader
PROXY_LAUNCH = ("import functools, sys, yaml; yaml.load = functools.partial(yaml.load, Loader=yaml.SafeLoader); "
                "from aiostratum_proxy.application import main; sys.argv = ['aiostratum-proxy', '-c', sys.argv[1]]; "
                "main()")


def _peer(lab: Lab, ns: str, role: str, dialect: str, host: str, port: int, **opts) -> list[str]:
    return [sys.executable, "-c", PEERS, role, dialect, host, str(port)] + [f"{k}={v}" for k, v in opts.items()]


def _client(lab: Lab, dialect: str, host: str, port: int, **opts) -> None:
    opts.setdefault("duration", SESSION_S)
    lab.run(lab.sbx, *_peer(lab, lab.sbx, "client", dialect, host, port, **opts), timeout=SESSION_S + 30)


@contextlib.contextmanager
def _server(lab: Lab, dialect: str, port: int, **opts) -> Iterator[None]:
    opts.setdefault("push", PUSH_S)
    opts.setdefault("duration", SESSION_S)
    with background(lab, lab.out, *_peer(lab, lab.out, "server", dialect, "0.0.0.0", port, **opts), ready_port=port):
        yield


@contextlib.contextmanager
def _pool_address(lab: Lab) -> Iterator[None]:
    """POOL_IP on the outside host for the length of a scenario."""
    lab.run(lab.out, "ip", "addr", "add", f"{POOL_IP}/24", "dev", "eth0")
    try:
        yield
    finally:
        lab.run(lab.out, "ip", "addr", "del", f"{POOL_IP}/24", "dev", "eth0", check=False)


def _dns_responder() -> str:
    """The lab's scripted DNS responder, answering POOL_IP instead of OUTSIDE_IP."""
    old = "bytes([198, 18, 0, 2])"
    if old not in PY_DNS_SERVER:
        raise RuntimeError("lab: PY_DNS_SERVER changed; update lab_mining._dns_responder")
    return PY_DNS_SERVER.replace(old, f"bytes([{POOL_IP.replace('.', ', ')}])")


def _certificate(lab: Lab, name: str) -> tuple[Path, Path]:
    """A self-signed certificate for `name`, made now (pool certificates are self-signed as a rule, 2.2)."""
    if shutil.which("openssl") is None:
        raise RuntimeError("lab: openssl not found (apt-get install openssl)")
    cert, key = lab.workdir / f"{name}.crt", lab.workdir / f"{name}.key"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
                    "-nodes", "-days", "2", "-subj", f"/CN={name}", "-keyout", str(key), "-out", str(cert)],
                   check=True, capture_output=True)
    return cert, key


def _third_party(lab: Lab) -> Path | None:
    """aiostratum-proxy and its JSON-RPC library installed into a lab directory (pip, no dependencies: PyYAML is
    used from the running Python when present). None when pip cannot get them: the scenario falls back to a scripted
    miner and says so in its label."""
    target = Path(tempfile.gettempdir()) / "egressguard-lab-site"
    if (target / "aiostratum_proxy").is_dir() and (target / "aiojsonrpc2").is_dir():
        return target
    packages = list(PROXY_REQUIREMENTS)
    try:
        import yaml  # noqa: F401
    except ImportError:
        packages.append("PyYAML>=6")
    proc = subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
                           "--no-deps", "--target", str(target), *packages], capture_output=True, text=True,
                          timeout=300)
    if proc.returncode != 0:
        print(f"lab: could not install {', '.join(packages)} ({proc.stderr.strip()[-300:]}); using a scripted miner",
              file=sys.stderr)
        return None
    return target


@contextlib.contextmanager
def _resolver(lab: Lab, ns: str) -> Iterator[None]:
    """Point the namespace's resolver at the lab's DNS responder on the outside host (`ip netns exec` bind-mounts
    /etc/netns/NS/resolv.conf over /etc/resolv.conf; NS is this lab's own namespace); removed afterwards."""
    folder = Path("/etc/netns") / ns
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "resolv.conf").write_text(f"nameserver {OUTSIDE_IP}\noptions timeout:2 attempts:2\n")
    try:
        with background(lab, lab.out, sys.executable, "-c", _dns_responder()):
            time.sleep(0.3)
            yield
    finally:
        shutil.rmtree(folder, ignore_errors=True)
        with contextlib.suppress(OSError):
            Path("/etc/netns").rmdir()  # only when empty (no other lab or tool uses it)


def _via_proxy(lab: Lab, host: str, port: int, ssl: bool) -> bool:
    """Run aiostratum-proxy in the sandbox toward host:port and a scripted miner against it; False when the proxy
    could not be installed or did not start (nothing was sent then)."""
    site = _third_party(lab)
    if site is None:
        return False
    cfg = lab.workdir / f"proxy-{port}.yaml"
    cfg.write_text(PROXY_CONFIG.format(host=host, port=port, ssl="true" if ssl else "false"))
    env = dict(os.environ, PYTHONPATH=str(site) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = lab.popen(lab.sbx, sys.executable, "-c", PROXY_LAUNCH, str(cfg), stdout=subprocess.DEVNULL,
                     stderr=subprocess.PIPE, env=env)
    try:
        try:
            _lab._wait_listening(lab, lab.sbx, 10666, timeout=20)
        except RuntimeError:
            return False
        _client(lab, "equihash", "127.0.0.1", 10666, user="t1LabMinerBehindProxy.rig7")
        return True
    finally:
        _lab.stop_process(proc)


# ----------------------------------------------------------------------------------------------- scenarios
@scenario
def stratum_v1_proxy(lab: Lab) -> list[Label]:
    """aiostratum-proxy (real, PyPI) in the sandbox mines through a scripted Stratum v1 (equihash) pool on 3333."""
    with _pool_address(lab), _server(lab, "equihash", 3333):
        if _via_proxy(lab, POOL_IP, 3333, ssl=False):
            note = "aiostratum-proxy 1.1 (PyPI) -> scripted equihash pool: subscribe/extranonce/authorize/submit"
        else:
            _client(lab, "equihash", POOL_IP, 3333)
            note = "scripted Stratum v1 miner -> scripted pool (aiostratum-proxy unavailable)"
    return [(SANDBOX_IP, f"{POOL_IP}:3333", "stratum", note)]


@scenario
def stratum_tls_pool_name(lab: Lab) -> list[Label]:
    """aiostratum-proxy over TLS to a pool name the lab's DNS responder resolves (SNI and DNS, port 443)."""
    cert, key = _certificate(lab, TLS_POOL_NAME)
    with _pool_address(lab), _resolver(lab, lab.sbx), _server(lab, "equihash", 443, cert=cert, key=key):
        if _via_proxy(lab, TLS_POOL_NAME, 443, ssl=True):
            note = f"aiostratum-proxy 1.1 (PyPI) over TLS to {TLS_POOL_NAME} (SNI + DNS) -> scripted pool"
        else:
            _client(lab, "equihash", POOL_IP, 443, tls=1, sni=TLS_POOL_NAME)
            note = f"scripted Stratum v1 miner over TLS, SNI {TLS_POOL_NAME} (aiostratum-proxy unavailable)"
    return [(SANDBOX_IP, f"{POOL_IP}:443", "stratum", note)]


@scenario
def stratum_tls_dns_only(lab: Lab) -> list[Label]:
    """A scripted xmrig-style miner over TLS without SNI to an address that the sandbox resolved from a pool name."""
    cert, key = _certificate(lab, NOSNI_POOL_NAME)
    with _pool_address(lab), _resolver(lab, lab.sbx), _server(lab, "cryptonote", 9000, cert=cert, key=key):
        lab.run(lab.sbx, sys.executable, "-c", _lab.PY_DNS_CLIENT, OUTSIDE_IP, NOSNI_POOL_NAME)
        _client(lab, "cryptonote", POOL_IP, 9000, tls=1)
    return [(SANDBOX_IP, f"{POOL_IP}:9000", "stratum",
             f"scripted xmrig-style miner, TLS without SNI, address from a DNS answer for {NOSNI_POOL_NAME}")]


@scenario
def xmrig_style_login(lab: Lab) -> list[Label]:
    """A scripted miner with xmrig's JSON envelope: login (agent, algo), jobs, submits, keepalived (port 14444)."""
    with _pool_address(lab), _server(lab, "cryptonote", 14444):
        _client(lab, "cryptonote", POOL_IP, 14444)
    return [(SANDBOX_IP, f"{POOL_IP}:14444", "stratum",
             "scripted xmrig-style miner and pool: login/job/submit/keepalived")]


@scenario
def stratum_odd_port(lab: Lab) -> list[Label]:
    """A scripted NiceHash EthereumStratum/1.0.0 miner on port 8443, which no pool list names."""
    with _pool_address(lab), _server(lab, "ethstratum", 8443):
        _client(lab, "ethstratum", POOL_IP, 8443)
    return [(SANDBOX_IP, f"{POOL_IP}:8443", "stratum", "scripted EthereumStratum/1.0.0 miner and pool on 8443")]


@scenario
def stratum_v2_sizes(lab: Lab) -> list[Label]:
    """Stratum V2 by sizes: 64 B key, 234 B answer, then 22+n+16 frames (random bytes, scripted), port 34254."""
    with _pool_address(lab), _server(lab, "sv2", 34254):
        _client(lab, "sv2", POOL_IP, 34254)
    return [(SANDBOX_IP, f"{POOL_IP}:34254", "stratum",
             "scripted Stratum V2 handshake and frame sizes (random bytes, no real Noise)")]


@scenario
def jsonrpc_benign(lab: Lab) -> list[Label]:
    """Negative: JSON-RPC 2.0 over TCP on pool port 4444 with login/submit/eth_blockNumber/job.status/notify."""
    with _server(lab, "jsonrpc", 4444):
        _client(lab, "jsonrpc", OUTSIDE_IP, 4444)
    return [(SANDBOX_IP, f"{OUTSIDE_IP}:4444", "benign",
             "scripted non-mining JSON-RPC on a pool port (login without agent, submit without nonce)")]


@scenario
def push_keepalive_benign(lab: Lab) -> list[Label]:
    """Negative: an MQTT subscriber (pushes, PINGREQ) and a WebSocket client (pushes, pings), side by side."""
    with _server(lab, "mqtt", 1883), _server(lab, "websocket", 8080):
        mqtt = lab.popen(lab.sbx, *_peer(lab, lab.sbx, "client", "mqtt", OUTSIDE_IP, 1883, duration=SESSION_S))
        _client(lab, "websocket", OUTSIDE_IP, 8080)
        mqtt.wait(timeout=30)
    return [(SANDBOX_IP, f"{OUTSIDE_IP}:1883", "benign", "scripted MQTT 3.1.1 subscriber: pushes and PINGREQ"),
            (SANDBOX_IP, f"{OUTSIDE_IP}:8080", "benign", "scripted WebSocket client: server pushes, client pings")]
