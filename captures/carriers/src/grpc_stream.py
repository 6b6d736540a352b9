"""gRPC streaming over TLS with grpcio (PyPI), both ends: a telemetry service with a server-streaming call (the
server pushes updates at irregular intervals) and a bidirectional call (client reports, server acknowledges).
Messages are raw bytes (JSON) through generic handlers, so no generated code is needed.

Usage: python grpc_stream.py server HOST:PORT CERT KEY
       python grpc_stream.py client TARGET CA DURATION_S     (honours grpc_proxy / https_proxy: HTTP CONNECT)
"""
from __future__ import annotations

import json
import random
import sys
import time
from concurrent import futures

import grpc

SERVICE = "lab.telemetry.v1.Telemetry"


def identity(b: bytes) -> bytes:
    return b


def subscribe(request: bytes, context):
    rng = random.Random(3)
    for n in range(int(json.loads(request)["count"])):
        time.sleep(rng.uniform(0.2, 1.4))
        yield json.dumps({"seq": n, "metric": rng.choice(["cpu", "mem", "disk", "net"]),
                          "value": rng.random(), "labels": {"host": f"node-{rng.randint(1, 40)}"}}).encode()


def report(requests, context):
    for raw in requests:
        msg = json.loads(raw)
        yield json.dumps({"ack": msg["seq"], "ts": time.time()}).encode()


def server(addr: str, cert: str, key: str) -> None:
    handlers = grpc.method_handlers_generic_handler(SERVICE, {
        "Subscribe": grpc.unary_stream_rpc_method_handler(subscribe, identity, identity),
        "Report": grpc.stream_stream_rpc_method_handler(report, identity, identity),
    })
    srv = grpc.server(futures.ThreadPoolExecutor(max_workers=4), handlers=[handlers])
    with open(cert, "rb") as c, open(key, "rb") as k:
        creds = grpc.ssl_server_credentials([(k.read(), c.read())])
    srv.add_secure_port(addr, creds)
    srv.start()
    srv.wait_for_termination()


def client(target: str, ca: str, duration: float) -> None:
    with open(ca, "rb") as fh:
        creds = grpc.ssl_channel_credentials(root_certificates=fh.read())
    rng = random.Random(8)
    with grpc.secure_channel(target, creds) as channel:
        sub = channel.unary_stream(f"/{SERVICE}/Subscribe", request_serializer=identity,
                                   response_deserializer=identity)
        rep = channel.stream_stream(f"/{SERVICE}/Report", request_serializer=identity,
                                    response_deserializer=identity)
        got = sum(1 for _ in sub(json.dumps({"count": int(duration / 1.6)}).encode(), timeout=duration + 20))

        def reports():
            for n in range(8):
                time.sleep(rng.uniform(0.1, 0.6))
                yield json.dumps({"seq": n, "samples": [rng.random() for _ in range(rng.randint(5, 60))]}).encode()

        acks = sum(1 for _ in rep(reports(), timeout=30))
    if not got or acks != 8:
        raise SystemExit(f"grpc client: {got} updates, {acks} acks")


def main() -> None:
    if sys.argv[1] == "server":
        server(sys.argv[2], sys.argv[3], sys.argv[4])
    else:
        client(sys.argv[2], sys.argv[3], float(sys.argv[4]))


if __name__ == "__main__":
    main()
