"""Scripted HTTP push servers (Python's http.server): server-sent events and long polling, optionally over TLS.
They stand in for an application's own event endpoints; the clients that talk to them are real (curl).

Usage: python http_push.py sse HOST PORT every=SECONDS [jitter=SECONDS] [cert=PEM key=PEM]
       python http_push.py longpoll HOST PORT hold=MIN-MAX [cert=PEM key=PEM]
SSE (WHATWG HTML "Server-sent events"): `text/event-stream`, an `id`/`event`/`data` block per push; with jitter 0 the
pushes come on a fixed timer (a status feed), otherwise after every ± jitter seconds (a news or build feed).
Long polling: each GET /poll is held MIN-MAX seconds, then answered with a small JSON body (keep-alive).
"""
from __future__ import annotations

import json
import random
import ssl
import sys
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

MODE, HOST, PORT = sys.argv[1], sys.argv[2], int(sys.argv[3])
OPTS = dict(a.split("=", 1) for a in sys.argv[4:])
RNG = random.Random(int(OPTS.get("seed", "5")))


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, fmt, *args):  # quiet
        pass

    def do_GET(self):
        if MODE == "sse":
            self.sse()
        else:
            self.longpoll()

    def sse(self):
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-cache")
        self.end_headers()
        every, jitter = float(OPTS.get("every", "5")), float(OPTS.get("jitter", "0"))
        n = 0
        next_at = time.time() + every
        try:
            while True:
                time.sleep(max(0.0, next_at - time.time()))
                n += 1
                data = json.dumps({"seq": n, "status": RNG.choice(["ok", "ok", "degraded"]),
                                   "queue": RNG.randint(0, 40), "ts": round(time.time(), 3)})
                self.wfile.write(f"id: {n}\nevent: status\ndata: {data}\n\n".encode())
                self.wfile.flush()
                next_at += every + (RNG.uniform(-jitter, jitter) if jitter else 0.0)
        except OSError:
            pass

    def longpoll(self):
        lo, hi = (float(x) for x in OPTS.get("hold", "1-3").split("-"))
        time.sleep(RNG.uniform(lo, hi))
        body = json.dumps({"events": [{"id": RNG.randint(1, 10**6), "kind": RNG.choice(["build", "comment", "push"]),
                                       "text": "x" * RNG.randint(20, 400)}]}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


def main() -> None:
    server = ThreadingHTTPServer((HOST, PORT), Handler)
    server.daemon_threads = True
    if "cert" in OPTS:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(OPTS["cert"], OPTS["key"])
        server.socket = ctx.wrap_socket(server.socket, server_side=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
