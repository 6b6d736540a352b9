"""ICMP tunnels: IP over ICMP (the public icmptunnel capture), ptunnel framing (the lab's ptunnel-ng recording and
synthetic ptunnel packets), replies that do not mirror their requests, random changing payloads; none for ping as
iputils, BSD and Windows send it (default, -s 1400, -p ff, flood), lost replies, ICMPv6 ping, traceroute and ICMP
errors that quote packets."""
import csv
import random
import struct
import sys
from pathlib import Path

import pytest

from conftest import LAB_CAPTURES, PUBLIC_CAPTURES, public_capture
from egressguard.detect import BY_NAME
from egressguard.detect.icmp_tunnel import IcmpTunnelDetector
from egressguard.pipeline import Analyzer, FlowsReady
from egressguard.schema import FindingKind, Severity

sys.path.insert(0, str(Path(__file__).parent))
from egressbuilders import Capture  # noqa: E402
from framebuilders import icmp, ipv4, udp  # noqa: E402
from tunnelbuilders import (PTUNNEL_MAGIC, WINDOWS_PING, bsd_ping_payload, inner_ipv4,  # noqa: E402
                            linux_ping_payload, ping_flow, random_payloads)

SBX, PEER, SBX6, PEER6 = "10.77.0.2", "198.51.100.7", "fd77::2", "2001:db8::7"


def icmp_findings(path):
    out = []
    for event in Analyzer(detectors=[IcmpTunnelDetector]).analyze(str(path)):
        if isinstance(event, FlowsReady):
            out += event.result.findings
    assert all(f.kind == FindingKind.ICMP_TUNNEL for f in out)
    return out


def written(tmp_path, build) -> Path:
    cap = Capture()
    build(cap)
    return cap.write(tmp_path / "icmp.pcap")


# ----------------------------------------------------------------------------------------------- public and lab
def test_public_ip_over_icmp_tunnel_is_found():
    labels = PUBLIC_CAPTURES / "labels.csv"
    if labels.exists():
        with labels.open(newline="") as fh:
            assert {r["file"] for r in csv.DictReader(fh) if r["expected_class"] == "icmp_tunnel"} == \
                {"ntop-nDPI/icmp-tunnel.pcap"}
    found = icmp_findings(public_capture("ntop-nDPI/icmp-tunnel.pcap"))
    assert found and all(f.severity == Severity.HIGH for f in found)
    first = found[0]
    assert first.details["icmp_tunnel"]["inner_ip"].startswith("IPv4 ")
    assert first.details["icmp_tunnel"]["requester"] == "192.168.154.131"
    assert first.details["icmp_tunnel"]["peer"] == "192.168.154.132"
    assert "IP over ICMP" in " ".join(first.evidence)
    assert len(found) == len({(f.details["icmp_tunnel"]["requester"], f.details["icmp_tunnel"]["peer"])
                              for f in found})  # one finding per pair


def _public_negatives():
    if not PUBLIC_CAPTURES.exists():
        return []
    files = sorted(p for p in PUBLIC_CAPTURES.rglob("*") if p.suffix in (".pcap", ".pcapng", ".cap"))
    return [str(p.relative_to(PUBLIC_CAPTURES)) for p in files if p.name != "icmp-tunnel.pcap"]


@pytest.mark.parametrize("name", _public_negatives())
def test_public_captures_without_an_icmp_tunnel_raise_none(name):
    assert icmp_findings(public_capture(name)) == []


@pytest.mark.parametrize("name", sorted(p.name for p in LAB_CAPTURES.glob("*.pcap")))
def test_lab_captures_raise_icmp_tunnel_findings_only_for_the_tunnel_scenario(name):
    found = icmp_findings(LAB_CAPTURES / name)
    if name.startswith("icmp-tunnel-"):
        assert len(found) == 1 and found[0].details["icmp_tunnel"]["ptunnel"] == "magic 0xDEADC0DE"  # ptunnel-ng
    else:
        assert found == []


def test_detector_is_registered():
    assert BY_NAME["icmp_tunnel"] is IcmpTunnelDetector


# ----------------------------------------------------------------------------------------------- negatives
NEGATIVES = {
    "linux_default": lambda c: ping_flow(c, 0, SBX, PEER, [linux_ping_payload(i) for i in range(10)]),
    "linux_size_1400": lambda c: ping_flow(c, 0, SBX, PEER, [linux_ping_payload(i, 1400) for i in range(10)]),
    "linux_pattern_ff": lambda c: ping_flow(c, 0, SBX, PEER, [linux_ping_payload(i, 56, b"\xff") for i in range(10)]),
    "linux_pattern_16": lambda c: ping_flow(c, 0, SBX, PEER, [linux_ping_payload(i, 100, bytes(range(0xa0, 0xb0)))
                                                             for i in range(10)]),
    "linux_flood": lambda c: ping_flow(c, 0, SBX, PEER, [linux_ping_payload(i) for i in range(2000)], interval=0.0004),
    "linux_two_sizes": lambda c: (ping_flow(c, 0, SBX, PEER, [linux_ping_payload(i, 100) for i in range(5)]),
                                  ping_flow(c, 10, SBX, PEER, [linux_ping_payload(i, 1000) for i in range(5)])),
    "lost_replies": lambda c: ping_flow(c, 0, SBX, PEER, [linux_ping_payload(i) for i in range(20)],
                                        reply=lambda i, d: d if i % 3 else None),
    "no_replies": lambda c: ping_flow(c, 0, SBX, PEER, [linux_ping_payload(i) for i in range(20)],
                                      reply=lambda i, d: None),
    "bsd": lambda c: ping_flow(c, 0, SBX, PEER, [bsd_ping_payload(i) for i in range(10)]),
    "windows": lambda c: ping_flow(c, 0, SBX, PEER, [WINDOWS_PING] * 4),
    "ipv6_ping": lambda c: ping_flow(c, 0, SBX6, PEER6, [linux_ping_payload(i) for i in range(10)], v6=True),
    "fping_random_data": lambda c: ping_flow(c, 0, SBX, PEER, random_payloads(1, 10, 56, 56)),
    "traceroute_icmp": lambda c: _traceroute(c, icmp_probes=True),
    "traceroute_udp": lambda c: _traceroute(c, icmp_probes=False),
    "unreachable_errors": lambda c: [c.add(i, PEER, SBX, 1, icmp(3, 3, ipv4(SBX, PEER, 17, udp(40000 + i, 53, b"q"
                                                                                                 * 40))[:28]))
                                     for i in range(20)],
}


def _traceroute(cap: Capture, icmp_probes: bool) -> None:
    """Probes with rising TTL; routers answer time-exceeded quoting the probe, the target echo reply/unreachable."""
    hops = ["10.77.0.1", "192.0.2.1", "192.0.2.2", PEER]
    for ttl, hop in enumerate(hops, 1):
        for k in range(3):
            t = ttl + k * 0.1
            if icmp_probes:  # traceroute -I: echo requests with counting data from 0x40
                data = bytes((0x40 + i) & 0xFF for i in range(32))
                probe = icmp(8, 0, data, ident=0x1234, seq=ttl * 3 + k)
                cap.add(t, SBX, PEER, 1, probe)
                answer = icmp(0, 0, data, ident=0x1234, seq=ttl * 3 + k) if hop == PEER else \
                    icmp(11, 0, ipv4(SBX, PEER, 1, probe)[:28])
            else:
                probe = udp(45000 + ttl, 33434 + ttl * 3 + k, bytes(32))
                cap.add(t, SBX, PEER, 17, probe)
                answer = icmp(3, 3, ipv4(SBX, PEER, 17, probe)[:28]) if hop == PEER else \
                    icmp(11, 0, ipv4(SBX, PEER, 17, probe)[:28])
            cap.add(t + 0.002, hop, SBX, 1, answer)


@pytest.mark.parametrize("name", sorted(NEGATIVES))
def test_ping_and_icmp_errors_raise_no_finding(name, tmp_path):
    assert icmp_findings(written(tmp_path, NEGATIVES[name])) == []


# ----------------------------------------------------------------------------------------------- positives
def test_ip_over_icmp_is_high_and_names_the_inner_packet(tmp_path):
    rng = random.Random(1)

    def build(cap):
        inner = [inner_ipv4("10.95.1.1", "10.95.1.2", rng.randbytes(rng.randint(20, 900))) for _ in range(12)]
        ping_flow(cap, 0, SBX, PEER, inner, reply=lambda i, d: inner_ipv4("10.95.1.2", "10.95.1.1", rng.randbytes(60)))
    (finding,) = icmp_findings(written(tmp_path, build))
    facts = finding.details["icmp_tunnel"]
    assert finding.severity == Severity.HIGH and facts["inner_ip"] == "IPv4 TCP 10.95.1.1 -> 10.95.1.2"
    assert facts["requests"] == 12 and facts["replies"] == 12 and facts["mismatched_replies"] == 4
    assert finding.evidence[0].startswith(f"{SBX} sent 12 echo requests to {PEER} and got 12 replies over 11 s")


def test_ptunnel_framing_is_found_by_its_magic_and_by_its_header(tmp_path):
    def packet(magic: int, data: bytes, state: int) -> bytes:
        return struct.pack("!6IHH", magic, 0x7F000001, 22, state, 0, len(data), 1, 7) + data

    rng = random.Random(2)
    for magic, shown in ((0xD5200880, "magic 0xD5200880"), (0xDEADC0DE, "magic 0xDEADC0DE"),
                         (0x12345678, "a header with state 2")):
        cap = Capture()
        requests = [packet(magic, rng.randbytes(40), 0x40000002) for _ in range(3)]
        ping_flow(cap, 0, SBX, PEER, requests, reply=lambda i, d: packet(magic, rng.randbytes(300), 0x80000002))
        (finding,) = icmp_findings(cap.write(tmp_path / f"{magic:x}.pcap"))
        assert shown in finding.details["icmp_tunnel"]["ptunnel"]
    assert PTUNNEL_MAGIC == struct.pack("!I", 0xD5200880)


def test_replies_that_do_not_mirror_requests(tmp_path):
    rng = random.Random(3)

    def build(cap):  # icmpsh-style: commands come back in replies, the requests poll
        ping_flow(cap, 0, SBX, PEER, [linux_ping_payload(i) for i in range(8)],
                  reply=lambda i, d: rng.randbytes(len(d)))
    (finding,) = icmp_findings(written(tmp_path, build))
    assert finding.severity == Severity.HIGH and finding.details["icmp_tunnel"]["mismatched_replies"] == 4
    assert "mirror no request" in " ".join(finding.evidence)


def test_more_replies_than_requests(tmp_path):
    def build(cap):
        ping_flow(cap, 0, SBX, PEER, [linux_ping_payload(i) for i in range(4)])
        for i in range(30):  # the server pushes data in unsolicited replies
            cap.add(5 + i * 0.1, PEER, SBX, 1, icmp(0, 0, linux_ping_payload(i), ident=0x77, seq=100 + i))
    (finding,) = icmp_findings(written(tmp_path, build))
    assert "34 replies to 4 requests" in " ".join(finding.evidence)


def test_mirrored_random_payloads_of_varying_size_are_medium(tmp_path):
    def build(cap):  # data both ways, echoed by the kernel: only the content and sizes tell
        ping_flow(cap, 0, SBX, PEER, random_payloads(4, 40, 100, 1400), interval=0.05)
    (finding,) = icmp_findings(written(tmp_path, build))
    assert finding.severity == Severity.MEDIUM
    assert "follows no ping fill pattern" in " ".join(finding.evidence)


def test_icmpv6_tunnel(tmp_path):
    rng = random.Random(5)

    def build(cap):
        ping_flow(cap, 0, SBX6, PEER6, random_payloads(6, 10, 64, 512), v6=True, reply=lambda i, d: rng.randbytes(200))
    (finding,) = icmp_findings(written(tmp_path, build))
    assert finding.details["icmp_tunnel"]["requester"] == SBX6 and finding.severity == Severity.HIGH


def test_capture_starting_with_replies_keeps_requester_and_peer(tmp_path):
    rng = random.Random(7)

    def build(cap):
        cap.add(0, PEER, SBX, 1, icmp(0, 0, rng.randbytes(100)))  # a reply seen first: the flow's originator is PEER
        ping_flow(cap, 0.5, SBX, PEER, random_payloads(8, 6, 64, 64), reply=lambda i, d: rng.randbytes(64))
    (finding,) = icmp_findings(written(tmp_path, build))
    assert (finding.details["icmp_tunnel"]["requester"], finding.details["icmp_tunnel"]["peer"]) == (SBX, PEER)


def test_one_finding_per_pair_unless_worse(tmp_path):
    rng = random.Random(9)

    def build(cap):  # three bursts 2 minutes apart: three flows (60 s idle timeout), one tunnel
        for burst in range(3):
            ping_flow(cap, burst * 120, SBX, PEER, random_payloads(burst, 6, 64, 600),
                      reply=lambda i, d: rng.randbytes(80))
    assert len(icmp_findings(written(tmp_path, build))) == 1


def test_a_flood_of_one_packet_pings_is_judged_in_numpy_and_a_lone_tunnel_packet_still_found(tmp_path, monkeypatch):
    """Spoofed one-packet echo requests (random identifiers, so each is its own flow) never reach the per-flow Python
    reader; a one-packet flow whose payload starts like ptunnel's header or an IPv4 packet does, and fires."""
    import egressguard.detect.icmp_tunnel as icmp_tunnel

    rng = random.Random(11)
    calls = []
    real = icmp_tunnel.echo_facts
    monkeypatch.setattr(icmp_tunnel, "echo_facts", lambda batch, row: calls.append(row) or real(batch, row))

    def build(cap):
        for i in range(2000):
            src = f"10.{rng.randrange(256)}.{rng.randrange(256)}.{rng.randrange(1, 255)}"
            cap.add(i * 0.001, src, PEER, 1, icmp(8, payload=rng.randbytes(18 + 46 * (i % 2)), ident=i, seq=1))
        header = PTUNNEL_MAGIC + struct.pack("!5I", 0x0A000001, 22, 0, 0, 36) + bytes(36)
        cap.add(3.0, SBX, PEER, 1, icmp(8, payload=header, ident=9999, seq=1))
        cap.add(3.1, SBX, PEER, 1, icmp(8, payload=inner_ipv4(SBX, "192.0.2.9", b"x" * 20), ident=9998, seq=1))
    found = icmp_findings(written(tmp_path, build))
    assert sorted(f.details["icmp_tunnel"]["requester"] for f in found) == [SBX]  # one finding per pair
    assert "ptunnel" in " ".join(found[0].evidence)
    assert len(calls) < 20  # a random payload rarely starts like an IP or ptunnel header; 2000 do not get here
