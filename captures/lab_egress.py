"""Egress-policy scenario of the capture lab: allowed, denied, unbound, mismatched and other unexpected destinations,
judged by captures/rules.toml.

Imported at the end of captures/lab.py, so `lab.py list|record` and tests/test_lab.py see the scenario. Every
address used is one the lab creates: the scenario adds 198.18.0.10-16 to the outside host (the lab's RFC 2544
range; the other scenarios use 198.18.0.2-3, which captures/rules.toml allows). Nothing leaves the namespaces.

The outside host runs a scripted DNS responder (UDP and TCP, CNAME chains, the zone below) on the lab resolver
198.18.0.2, a second "rogue" responder on 198.18.0.15, a TLS server (OpenSSL through Python's ssl module, a
self-signed certificate made at record time) on port 443, Python's http.server on port 80 and plain TCP listeners on
8443 and 853. The sandbox runs one scripted client that resolves names, then connects: every connection's TLS
ClientHello is Python's own (real SNI), every HTTP request carries a Host header.
"""
from __future__ import annotations

import subprocess
import sys
import time

# lab.py registers itself as `lab` even when it runs as the program
from lab import OUTSIDE_IP, SANDBOX_IP, Lab, Label, background, scenario  # noqa: E402

CDN_IP = "198.18.0.10"  # bound to pkg.example (through a CNAME chain) and docs.example: allowed
TUNNEL_IP = "198.18.0.11"  # bound to upload.tunnel.example: denied by name
DIRECT_IP = "198.18.0.12"  # never resolved: reached by address
FRONT_IP = "198.18.0.13"  # bound to cdn2.other.example; the client sends SNI pkg.example to it
MIRROR_IP = "198.18.0.14"  # bound to mirror.other.example, which no entry allows
ROGUE_IP = "198.18.0.15"  # a DNS server the sandbox was not given
DOT_IP = "198.18.0.16"  # DNS over TLS (port 853)
UNUSED_IP = "198.18.0.19"  # what the rogue resolver answers (no host)
EXTRA_IPS = (CDN_IP, TUNNEL_IP, DIRECT_IP, FRONT_IP, MIRROR_IP, ROGUE_IP, DOT_IP)

# name -> list of (type, ttl, value): the lab resolver's zone. TTLs are short on purpose: rules.toml raises them.
ZONE = {
    "pkg.example": [("CNAME", 30, "edge.cdn.example"), ("A", 5, CDN_IP)],  # chain: pkg -> edge.cdn -> address
    "docs.example": [("A", 30, CDN_IP)],
    "upload.tunnel.example": [("A", 30, TUNNEL_IP)],
    "cdn2.other.example": [("A", 30, FRONT_IP)],
    "mirror.other.example": [("A", 30, MIRROR_IP)],
}

# The scripted DNS responder: `python -c DNS_SERVER BIND_IP ZONE_JSON|- FALLBACK_IP`, UDP and TCP on port 53.
# Answers follow RFC 1035 4.1 (names uncompressed); a CNAME is followed by the records of its target.
DNS_SERVER = r'''
import json, socket, struct, sys, threading
bind, zone, fallback = sys.argv[1], json.loads(sys.argv[2]) if sys.argv[2] != "-" else {}, sys.argv[3]
TYPES = {"A": 1, "CNAME": 5}
def wire(name):
    return b"".join(bytes([len(p)]) + p.encode() for p in name.split(".") if p) + b"\0"
def answer(q):
    end = 12
    labels = []
    while q[end]:
        labels.append(q[end + 1:end + 1 + q[end]].decode()); end += q[end] + 1
    end += 5
    name = ".".join(labels).lower()
    records, seen = [], name
    chain = zone.get(name, [["A", 60, fallback]] if fallback != "-" else [])
    for rtype, ttl, value in chain:
        rdata = socket.inet_aton(value) if rtype == "A" else wire(value)
        records.append(wire(seen) + struct.pack("!HHIH", TYPES[rtype], 1, ttl, len(rdata)) + rdata)
        if rtype == "CNAME":
            seen = value
    head = q[:2] + b"\x81\x80" + q[4:6] + struct.pack("!HHH", len(records), 0, 0)
    return head + q[12:end] + b"".join(records)
def udp():
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind((bind, 53))
    while True:
        q, addr = s.recvfrom(2048); s.sendto(answer(q), addr)
def tcp_client(c):
    with c:
        n = struct.unpack("!H", c.recv(2))[0]; q = c.recv(n); a = answer(q)
        c.sendall(struct.pack("!H", len(a)) + a)
def tcp():
    s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); s.bind((bind, 53)); s.listen(8)
    while True:
        c, _ = s.accept(); threading.Thread(target=tcp_client, args=(c,), daemon=True).start()
threading.Thread(target=udp, daemon=True).start()
tcp()
'''

# TLS on 443 (a real handshake with a self-signed certificate, or, without one, read the hello and close), plain
# TCP on 8443 and 853 (read, answer a few bytes, close). `python -c SERVERS CERT KEY`
SERVERS = r'''
import socket, ssl, sys, threading
cert, key = sys.argv[1], sys.argv[2]
ctx = None
if cert != "-":
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER); ctx.load_cert_chain(cert, key)
def serve(port, tls):
    s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); s.bind(("0.0.0.0", port)); s.listen(16)
    while True:
        c, _ = s.accept()
        def handle(c=c):
            try:
                c.settimeout(5)
                if tls and ctx is not None:
                    with ctx.wrap_socket(c, server_side=True) as t:
                        t.recv(4096); t.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
                else:
                    c.recv(4096); c.sendall(b"ok\n"); c.close()
            except (OSError, ssl.SSLError):
                c.close()
        threading.Thread(target=handle, daemon=True).start()
for port, tls in ((443, True), (8443, False), (853, False)):
    threading.Thread(target=serve, args=(port, tls), daemon=True).start()
threading.Event().wait()
'''

# The sandbox's client: `python -c CLIENT RESOLVER ROGUE`; each step as a real application would do it.
CLIENT = r'''
import socket, ssl, struct, sys, time
resolver, rogue = sys.argv[1], sys.argv[2]
def query(name, server=resolver, tcp=False):
    q = struct.pack("!HHHHHH", 0x2000 + len(name), 0x0100, 1, 0, 0, 0)
    q += b"".join(bytes([len(p)]) + p.encode() for p in name.split(".")) + b"\0\0\1\0\1"
    if tcp:
        s = socket.create_connection((server, 53), timeout=5); s.sendall(struct.pack("!H", len(q)) + q)
        n = struct.unpack("!H", s.recv(2))[0]; a = s.recv(n); s.close()
    else:
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.settimeout(5); s.sendto(q, (server, 53))
        a = s.recvfrom(2048)[0]; s.close()
    return socket.inet_ntoa(a[-4:])  # the last record is the address (the lab zone ends every chain with an A)
def tls(address, server_name):
    ctx = ssl.create_default_context(); ctx.check_hostname = False; ctx.verify_mode = ssl.CERT_NONE
    with socket.create_connection((address, 443), timeout=5) as raw:
        try:
            with ctx.wrap_socket(raw, server_hostname=server_name) as t:
                t.sendall(b"GET / HTTP/1.1\r\nHost: " + server_name.encode() + b"\r\n\r\n"); t.recv(4096)
        except (ssl.SSLError, OSError):
            pass
def http(address, host):
    with socket.create_connection((address, 80), timeout=5) as s:
        s.sendall(b"GET /index.txt HTTP/1.1\r\nHost: " + host.encode() + b"\r\nConnection: close\r\n\r\n")
        while s.recv(65536):
            pass
def plain(address, port, data=b"hello\n"):
    with socket.create_connection((address, port), timeout=5) as s:
        s.sendall(data); s.recv(64)
tls(query("pkg.example"), "pkg.example"); time.sleep(0.2)                    # allowed: bound through a CNAME chain
http(query("docs.example", tcp=True), "docs.example"); time.sleep(0.2)        # allowed: bound by DNS over TCP
tls(query("upload.tunnel.example"), "upload.tunnel.example"); time.sleep(0.2)  # denied by name
for _ in range(3):
    plain("198.18.0.12", 8443); time.sleep(0.2)                               # direct-IP egress (3 flows, one finding)
tls(query("cdn2.other.example"), "pkg.example"); time.sleep(0.2)             # allowed SNI on an address never bound to it
http(query("mirror.other.example"), "mirror.other.example"); time.sleep(0.2)  # bound, not allowed
query("x.example", server=rogue); time.sleep(0.2)                             # a resolver the sandbox was not given
plain("198.18.0.16", 853, b"\x00\x1c" + b"\x00" * 28)                          # DNS over TLS port
'''


def _certificate(lab: Lab) -> tuple[str, str]:
    """A throwaway self-signed certificate for the lab's TLS server; ("-", "-") when openssl is missing."""
    cert, key = lab.workdir / "tls-cert.pem", lab.workdir / "tls-key.pem"
    proc = subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
                           "-nodes", "-subj", "/CN=lab.example", "-days", "1", "-keyout", str(key), "-out", str(cert)],
                          capture_output=True)
    return (str(cert), str(key)) if proc.returncode == 0 else ("-", "-")


@scenario
def egress_policy(lab: Lab) -> list[Label]:
    """DNS, TLS and HTTP to allowed, denied, direct-IP, fronted and unlisted hosts, a rogue resolver, DNS over TLS."""
    import json

    for ip in EXTRA_IPS:
        lab.run(lab.out, "ip", "addr", "add", f"{ip}/32", "dev", "eth0")
    www = lab.workdir / "www-egress"
    www.mkdir(exist_ok=True)
    (www / "index.txt").write_text("lab page\n" * 64)
    cert, key = _certificate(lab)
    with background(lab, lab.out, sys.executable, "-c", DNS_SERVER, OUTSIDE_IP, json.dumps(ZONE), "-",
                    ready_port=53), \
            background(lab, lab.out, sys.executable, "-c", DNS_SERVER, ROGUE_IP, "-", UNUSED_IP, ready_port=53), \
            background(lab, lab.out, sys.executable, "-c", SERVERS, cert, key, ready_port=853), \
            background(lab, lab.out, sys.executable, "-m", "http.server", "80", "--bind", "0.0.0.0",
                       "--directory", str(www), ready_port=80):
        time.sleep(0.3)
        lab.run(lab.sbx, sys.executable, "-c", CLIENT, OUTSIDE_IP, ROGUE_IP, timeout=60)
    ud = "unexpected_destination"
    return [
        (SANDBOX_IP, f"{OUTSIDE_IP}:53", "benign", "DNS (UDP and TCP) to the configured resolver"),
        (SANDBOX_IP, f"{CDN_IP}:443", "benign", "TLS, SNI pkg.example, bound through a CNAME chain: allowed"),
        (SANDBOX_IP, f"{CDN_IP}:80", "benign", "HTTP Host docs.example, bound by DNS over TCP: allowed"),
        (SANDBOX_IP, f"{TUNNEL_IP}:443", ud, "reason denied: SNI upload.tunnel.example, deny entry"),
        (SANDBOX_IP, f"{DIRECT_IP}:8443", ud, "reason unbound_ip: 3 connections by address, never resolved"),
        (SANDBOX_IP, f"{FRONT_IP}:443", ud, "reason sni_mismatch: SNI pkg.example to an address bound to "
                                            "cdn2.other.example"),
        (SANDBOX_IP, f"{MIRROR_IP}:80", ud, "reason not_allowlisted: HTTP Host mirror.other.example, bound by DNS"),
        (SANDBOX_IP, f"{ROGUE_IP}:53", ud, "reason rogue_resolver: DNS to a server the sandbox was not given"),
        (SANDBOX_IP, f"{DOT_IP}:853", ud, "reason doh: DNS-over-TLS port"),
    ]
