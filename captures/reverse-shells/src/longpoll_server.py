"""A long-poll HTTP/1.1 event endpoint: GET /poll?cursor=N is held open 1-3.5 s until "an event arrives", then
answered with a small JSON body; POST /ack answers 204. Keep-alive, so one client connection carries every poll.

Usage: python3 longpoll_server.py HOST PORT
"""
import json
import random
import sys
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # persistent connections (RFC 9112 9.3)
    server_version = "events/1.0"

    def do_GET(self) -> None:
        url = urlparse(self.path)
        if url.path != "/poll":
            self.send_error(404)
            return
        cursor = int(parse_qs(url.query).get("cursor", ["0"])[0])
        rng = random.Random(cursor)
        time.sleep(rng.uniform(1.0, 3.5))
        body = json.dumps({"cursor": cursor + 1, "events": [
            {"id": cursor * 10 + i, "type": rng.choice(["job.started", "job.finished", "log"]),
             "job": f"build-{1400 + cursor}"} for i in range(rng.randint(1, 3))]}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length", "0")))
        self.send_response(204)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args) -> None:
        pass


if __name__ == "__main__":
    ThreadingHTTPServer((sys.argv[1], int(sys.argv[2])), Handler).serve_forever()
