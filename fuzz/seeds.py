"""Real payload bytes for fuzzing: the first bytes of each TCP direction and each UDP payload of a few captures.

Shared by the property tests (tests/test_fuzz_*.py, as hypothesis seeds) and the atheris corpus builder
(fuzz/make_corpus.py), so both mutate what real flows carry: SSH banners and KEXINITs, TLS ClientHellos, DNS
messages, Stratum JSON-RPC, HTTP heads and WebSocket frames. dpkt reads the captures (plain Python, no kernels).
"""
from __future__ import annotations

from pathlib import Path

import dpkt

KEEP_BYTES = 2048  # as much as the flow table keeps per direction by default (FlowSettings.keep_bytes)
REPO = Path(__file__).resolve().parents[1]
# Lab captures whose payloads cover every inspector (SSH, TLS + DNS, Stratum, xmrig, WebSocket/MQTT, HTTP).
LAB_SEEDS = ("ssh-reverse-shell.pcap", "egress-policy.pcap", "stratum-v1-proxy.pcap", "xmrig-style-login.pcap",
             "stratum-odd-port.pcap", "push-keepalive-benign.pcap", "benign-web.pcap", "jsonrpc-benign.pcap")
# Public captures (read in place, never copied): role-reversed SSH and SSH inside WebSocket.
PUBLIC_SEEDS = ("zeek/ssh/reverse-ssh.pcap", "zeek/websocket/wstunnel-ssh.pcap")
PUBLIC_DIR = REPO.parent / "shared" / "captures" / "public"


def _packets(path: Path):
    with open(path, "rb") as fh:
        head = fh.read(4)
        fh.seek(0)
        reader = dpkt.pcapng.Reader(fh) if head == b"\x0a\x0d\x0d\x0a" else dpkt.pcap.Reader(fh)
        for _, raw in reader:
            try:
                yield dpkt.ethernet.Ethernet(raw)
            except (dpkt.UnpackError, IndexError, ValueError):
                continue


def capture_payloads(path: Path, keep: int = KEEP_BYTES) -> tuple[list[bytes], list[bytes]]:
    """(TCP direction streams, UDP payloads) of one Ethernet capture: each TCP direction's payloads concatenated
    in packet order up to `keep` bytes, as the flow table keeps them."""
    streams: dict[tuple, bytearray] = {}
    udp: list[bytes] = []
    for eth in _packets(path):
        ip = eth.data
        if not isinstance(ip, (dpkt.ip.IP, dpkt.ip6.IP6)):
            continue
        l4 = ip.data
        if isinstance(l4, dpkt.tcp.TCP) and l4.data:
            key = (bytes(ip.src), l4.sport, bytes(ip.dst), l4.dport)
            buf = streams.setdefault(key, bytearray())
            buf += l4.data[:max(0, keep - len(buf))]
        elif isinstance(l4, dpkt.udp.UDP) and l4.data:
            udp.append(bytes(l4.data[:keep]))
    return [bytes(s) for s in streams.values()], udp


def seed_payloads(keep: int = KEEP_BYTES) -> tuple[list[bytes], list[bytes]]:
    """TCP streams and UDP payloads of the lab seeds and (when present) the public seeds, deduplicated, in a fixed
    order so that tests seeded from them are deterministic."""
    paths = [REPO / "captures" / name for name in LAB_SEEDS]
    paths += [PUBLIC_DIR / rel for rel in PUBLIC_SEEDS if (PUBLIC_DIR / rel).exists()]
    tcp: dict[bytes, None] = {}
    udp: dict[bytes, None] = {}
    for path in paths:
        if not path.exists():
            continue
        t, u = capture_payloads(path, keep)
        tcp.update(dict.fromkeys(t))
        udp.update(dict.fromkeys(u))
    return list(tcp), list(udp)
