"""A scripted CryptoNote (Monero-family) Stratum pool: newline-delimited JSON-RPC as node-cryptonote-pool speaks it
(`login` answered with a worker id and a job, `job` pushes that carry the worker id, `submit` -> status OK,
`keepalived`). No pool software runs offline from Debian, PyPI or npm, so this stands in for one.

Usage: python cn_pool.py HOST PORT [push=SECONDS] [duration=SECONDS]
"""
from __future__ import annotations

import json
import socket
import sys
import threading
import time


def hexs(n: int, seed: int) -> str:
    return bytes((seed * 131 + i * 7) & 0xFF for i in range(n)).hex()


def serve(conn: socket.socket, push: float, duration: float) -> None:
    lock, state = threading.Lock(), {"job": 0, "worker": None, "closed": False}

    def send(obj: dict) -> None:
        with lock:
            conn.sendall((json.dumps(obj, separators=(",", ":")) + "\n").encode())

    def job() -> dict:
        state["job"] += 1
        j = state["job"]
        # node-cryptonote-pool getJob(): blob, job_id, target, id (the worker id the proxy routes pushes by)
        return {"blob": "0e0e" + hexs(37, j) + "00000000" + hexs(33, j + 3), "job_id": f"{930000 + j}",
                "target": "b88d0600", "id": state["worker"]}

    def pushes() -> None:
        end = time.time() + duration
        while not state["closed"] and time.time() < end:
            time.sleep(push)
            if not state["closed"]:
                send({"jsonrpc": "2.0", "method": "job", "params": job()})

    buf = b""
    try:
        while True:
            chunk = conn.recv(65536)
            if not chunk:
                return
            buf += chunk
            while b"\n" in buf:
                raw, buf = buf.split(b"\n", 1)
                msg = json.loads(raw)
                method, mid = msg.get("method"), msg.get("id")
                if method == "login":
                    state["worker"] = f"{int(time.time() * 1000) & 0xFFFFFFFFFFFF:x}"
                    send({"id": mid, "jsonrpc": "2.0", "error": None,
                          "result": {"id": state["worker"], "job": job(), "status": "OK"}})
                    threading.Thread(target=pushes, daemon=True).start()
                elif method == "submit":
                    send({"id": mid, "jsonrpc": "2.0", "error": None, "result": {"status": "OK"}})
                elif method == "keepalived":
                    send({"id": mid, "jsonrpc": "2.0", "error": None, "result": {"status": "KEEPALIVED"}})
    except (OSError, ValueError):
        pass
    finally:
        state["closed"] = True
        conn.close()


def main() -> None:
    host, port = sys.argv[1], int(sys.argv[2])
    opts = dict(a.split("=", 1) for a in sys.argv[3:])
    push, duration = float(opts.get("push", "2.5")), float(opts.get("duration", "30"))
    srv = socket.socket()
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind((host, port))
    srv.listen(8)
    while True:
        conn, _ = srv.accept()
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        threading.Thread(target=serve, args=(conn, push, duration), daemon=True).start()


if __name__ == "__main__":
    main()
