"""Output records: Community ID against the reference implementation, address text, record fields."""
import ipaddress
import json
import random
import socket

import pytest

from egressguard.report.jsonl import dumps
from egressguard.report.records import address_bytes, community_id, format_address

communityid = pytest.importorskip("communityid", reason="the reference Community ID package is a test extra")


def _reference(proto, src, dst, sport, dport):
    cid = communityid.CommunityID()
    if proto == 6:
        tpl = communityid.FlowTuple.make_tcp(src, dst, sport, dport)
    elif proto == 17:
        tpl = communityid.FlowTuple.make_udp(src, dst, sport, dport)
    elif proto in (1, 58):
        tpl = communityid.FlowTuple(proto, src, dst, sport, dport)
    else:
        tpl = communityid.FlowTuple.make_ip(src, dst, proto)
    return cid.calc(tpl)


def _random_ip(rng, v6):
    if v6:
        return str(ipaddress.IPv6Address(rng.getrandbits(128)))
    return str(ipaddress.IPv4Address(rng.getrandbits(32)))


@pytest.mark.parametrize("seed", range(5))
def test_community_id_matches_reference_tcp_udp_other(seed):
    rng = random.Random(seed)
    for _ in range(200):
        v6 = rng.random() < 0.4
        src, dst = _random_ip(rng, v6), _random_ip(rng, v6)
        if rng.random() < 0.1:
            dst = src  # equal addresses: ordering falls to the ports
        proto = rng.choice([6, 17, 47])
        sport, dport = rng.randrange(65536), rng.randrange(65536)
        ours = community_id(socket.inet_pton(socket.AF_INET6 if v6 else socket.AF_INET, src),
                            socket.inet_pton(socket.AF_INET6 if v6 else socket.AF_INET, dst), proto,
                            sport if proto != 47 else 0, dport if proto != 47 else 0)
        assert ours == _reference(proto, src, dst, sport, dport)


@pytest.mark.parametrize("proto,v6,types", [(1, False, [0, 3, 5, 8, 11, 13, 14, 15, 16, 9, 10, 17, 18, 42]),
                                            (58, True, [1, 2, 128, 129, 130, 131, 133, 134, 135, 136, 139, 140, 144, 145, 200])])
def test_community_id_icmp_matches_reference(proto, v6, types):
    from egressguard.decode.kernels import icmp_ports

    rng = random.Random(7)
    fam = socket.AF_INET6 if v6 else socket.AF_INET
    for icmp_type in types:
        for _ in range(10):
            src, dst = _random_ip(rng, v6), _random_ip(rng, v6)
            code = rng.randrange(4)
            sport, dport = icmp_ports(proto, icmp_type, code)
            ours = community_id(socket.inet_pton(fam, src), socket.inet_pton(fam, dst), proto, int(sport), int(dport))
            cid = communityid.CommunityID()
            ref = cid.calc(communityid.FlowTuple.make_icmp6(src, dst, icmp_type, code) if v6 else
                           communityid.FlowTuple.make_icmp(src, dst, icmp_type, code))
            assert ours == ref, (icmp_type, code)


def test_community_id_known_value():
    # the value Zeek's communityid test prints for this IPv6 SMTP flow (zeek/communityid/ipv6.pcap)
    src = socket.inet_pton(socket.AF_INET6, "2001:470:e5bf:dead:4957:2174:e82c:4887")
    dst = socket.inet_pton(socket.AF_INET6, "2607:f8b0:400c:c03::1a")
    assert community_id(src, dst, 6, 63943, 25) == "1:/qFaeAR+gFe1KYjMzVDsMv+wgU4="
    assert community_id(dst, src, 6, 25, 63943) == "1:/qFaeAR+gFe1KYjMzVDsMv+wgU4="


@pytest.mark.parametrize("text", ["10.0.0.1", "255.255.255.255", "0.0.0.0"])
def test_ipv4_mapped_addresses_format_as_dotted_quad(text):
    lo = (0xFFFF << 32) | int(ipaddress.IPv4Address(text))
    assert format_address(0, lo, 4) == text
    assert address_bytes(0, lo, 4) == socket.inet_aton(text)


@pytest.mark.parametrize("text", ["::1", "2001:db8::42", "fe80::1:2:3:4", "::ffff:1.2.3.4"])
def test_ipv6_addresses_format(text):
    value = int(ipaddress.IPv6Address(text))
    assert ipaddress.IPv6Address(format_address(value >> 64, value & (2**64 - 1), 6)) == ipaddress.IPv6Address(text)


def test_hostile_wire_strings_render_literally_in_tables():
    import io

    import numpy as np
    from rich.console import Console

    from egressguard.report.table import render_findings
    from egressguard.report.records import finding_record
    from egressguard.schema import FLOW_DTYPE, Finding, FindingKind, Severity

    rec = np.zeros(1, FLOW_DTYPE)[0]
    rec["ip_version"], rec["proto"] = 4, 6
    rec["orig_lo"], rec["resp_lo"] = (0xFFFF << 32) | 0x0A000002, (0xFFFF << 32) | 0xC6120002
    hostile = "SSH-2.0-[bold red]owned[/bold red]\x1b[2J\x1b]0;title\x07\u202eevil" + "A" * 500
    finding = Finding(FindingKind.SSH_TUNNEL, Severity.HIGH, 0.9, ("evidence [link=x]y[/link]",), rec, "c.pcap",
                      {"ssh": {"client_banner": hostile, "server_banner": "s", "cipher": None, "mac": None,
                               "hassh": None, "hassh_server": None, "auth": None}})
    out = io.StringIO()
    Console(file=out, width=100, color_system=None).print(render_findings([finding_record(finding)]))
    text = out.getvalue()
    assert "\x1b" not in text and "\x07" not in text and "\u202e" not in text
    flat = "".join(c for c in text if not c.isspace() and c not in "│")  # wrapping may split anywhere
    assert "[boldred]owned[/boldred]" in flat and "\\x1b[2J" in flat and "\\u202e" in flat
    assert "[link=x]y[/link]" in flat
    assert f"...(+{len(hostile) - 200}chars)" in flat  # bounded at 200 characters
    record = json.loads(dumps(finding_record(finding)))
    assert record["ssh"]["client_banner"] == hostile  # JSON keeps the exact string, escaped by the encoder
    assert all(ord(c) < 128 for c in dumps(finding_record(finding)))
