"""Synthetic captures for the egress tests: DNS answers (UDP and TCP), TCP connections carrying a real TLS
ClientHello (made by Python's ssl module) or an HTTP request, UDP and ICMP, written as a classic pcap.

DNS messages are built by hand (RFC 1035 4.1, names uncompressed) so that a test failure points at the code under
test, not at a builder.
"""
from __future__ import annotations

import ipaddress
import ssl
import struct
from pathlib import Path

from framebuilders import TCP_ACK, TCP_FIN, TCP_SYN, ethernet, icmp, ipv4, ipv6, pcap_file, tcp, udp

TYPES = {"A": 1, "CNAME": 5, "AAAA": 28, "PTR": 12}


def qname(name: str) -> bytes:
    return b"".join(bytes([len(p)]) + p.encode() for p in name.split(".") if p) + b"\0"


def dns_message(name: str, answers=(), *, qtype: str = "A", ident: int = 0x1234, response: bool = True) -> bytes:
    """A DNS query, or a response with answers [(name, type, ttl, value)] (value: address text or target name)."""
    flags = 0x8180 if response else 0x0100
    out = struct.pack("!HHHHHH", ident, flags, 1, len(answers) if response else 0, 0, 0)
    out += qname(name) + struct.pack("!HH", TYPES[qtype], 1)
    for rname, rtype, ttl, value in answers if response else ():
        if rtype == "A":
            rdata = ipaddress.IPv4Address(value).packed
        elif rtype == "AAAA":
            rdata = ipaddress.IPv6Address(value).packed
        else:
            rdata = qname(value)
        out += qname(rname) + struct.pack("!HHIH", TYPES[rtype], 1, ttl, len(rdata)) + rdata
    return out


def client_hello(server_name: str | None, alpn=None) -> bytes:
    """What Python's ssl (OpenSSL) sends first: a real ClientHello, with or without SNI and ALPN."""
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    if alpn:
        ctx.set_alpn_protocols(alpn)
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    obj = ctx.wrap_bio(incoming, outgoing, server_hostname=server_name)
    try:
        obj.do_handshake()
    except ssl.SSLWantReadError:
        pass
    return outgoing.read()


def http_request(host: str, path: str = "/") -> bytes:
    return f"GET {path} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: test\r\n\r\n".encode()


class Capture:
    """Packets in time order (seconds as floats), written as one pcap."""

    def __init__(self, start: float = 1_700_000_000.0):
        self.start = start
        self.records: list[tuple[float, bytes]] = []
        self._port = 40000

    def _ip(self, src: str, dst: str, proto: int, payload: bytes) -> bytes:
        if ":" in src:
            return ethernet(ipv6(src, dst, proto, payload), 0x86DD)
        return ethernet(ipv4(src, dst, proto, payload))

    def add(self, t: float, src: str, dst: str, proto: int, payload: bytes) -> None:
        self.records.append((self.start + t, self._ip(src, dst, proto, payload)))

    def sport(self) -> int:
        self._port += 1
        return self._port

    def dns_udp(self, t: float, client: str, resolver: str, name: str, answers, *, qtype: str = "A",
                port: int = 53) -> None:
        sp = self.sport()
        self.add(t, client, resolver, 17, udp(sp, port, dns_message(name, qtype=qtype, response=False)))
        self.add(t + 0.01, resolver, client, 17, udp(port, sp, dns_message(name, answers, qtype=qtype)))

    def dns_tcp(self, t: float, client: str, resolver: str, name: str, answers, *, qtype: str = "A") -> None:
        query = dns_message(name, qtype=qtype, response=False)
        answer = dns_message(name, answers, qtype=qtype)
        self.tcp_session(t, client, resolver, 53, struct.pack("!H", len(query)) + query,
                         struct.pack("!H", len(answer)) + answer)

    def tcp_session(self, t: float, client: str, server: str, dport: int, request: bytes = b"",
                    response: bytes = b"", *, sport: int | None = None) -> None:
        sp = sport or self.sport()
        c, s = 1000, 5000
        steps = [(client, server, sp, dport, b"", c, 0, TCP_SYN), (server, client, dport, sp, b"", s, c + 1, TCP_SYN | TCP_ACK),
                 (client, server, sp, dport, b"", c + 1, s + 1, TCP_ACK)]
        c += 1
        s += 1
        if request:
            steps.append((client, server, sp, dport, request, c, s, TCP_ACK))
            c += len(request)
        if response:
            steps.append((server, client, dport, sp, response, s, c, TCP_ACK))
            s += len(response)
        steps += [(client, server, sp, dport, b"", c, s, TCP_FIN | TCP_ACK),
                  (server, client, dport, sp, b"", s, c + 1, TCP_FIN | TCP_ACK),
                  (client, server, sp, dport, b"", c + 1, s + 1, TCP_ACK)]
        for i, (a, b, pa, pb, data, seq, ack, flags) in enumerate(steps):
            self.add(t + 0.001 * i, a, b, 6, tcp(pa, pb, data, seq=seq, ack=ack, flags=flags))

    def udp_exchange(self, t: float, client: str, server: str, dport: int, data: bytes = b"x" * 40) -> None:
        sp = self.sport()
        self.add(t, client, server, 17, udp(sp, dport, data))
        self.add(t + 0.01, server, client, 17, udp(dport, sp, data))

    def ping(self, t: float, client: str, server: str) -> None:
        self.add(t, client, server, 1, icmp(8, 0, b"ping"))
        self.add(t + 0.001, server, client, 1, icmp(0, 0, b"ping"))

    def write(self, path: Path) -> Path:
        records = sorted(self.records, key=lambda r: r[0])
        path.write_bytes(pcap_file([(int(ts), int(round((ts % 1) * 1e6)) % 1000000, frame) for ts, frame in records]))
        return path
