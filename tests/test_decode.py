"""Decoder: byte-literal frames for every link type and layer, fragments, cut and broken frames, counters, fuzzing.

Frames are built by tests/framebuilders.py and placed at unaligned offsets in a buffer filled with 0xee around
them, so offsets and reads past a frame's end show up in the results.
"""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import framebuilders as fb
from egressguard.decode import Decoder, decode_frames_once
from egressguard.schema import FRAME_DTYPE, PACKET_DTYPE, PacketStatus as S
from framebuilders import Frame

A4, B4 = "192.0.2.10", "198.51.100.20"
A6, B6 = "2001:db8:1::10", "2001:db8:2::20"
UDP_PAYLOAD = b"0123456789"


def decode(*frames):
    """Decode frames (Frame or (linktype, bytes)) in one batch; returns (packets copy, frames array, decoder)."""
    buf, arr = fb.frames_buffer(frames)
    d = Decoder()
    pk = d.decode_batch(buf, arr).copy()
    return pk, arr, d


def one(data: bytes, linktype: int = 1, wirelen: int | None = None):
    pk, arr, _ = decode(Frame(data, linktype, wirelen))
    return pk[0], arr[0]


def v4_udp(sport=40000, dport=53, payload=UDP_PAYLOAD, src=A4, dst=B4):
    return fb.ipv4(src, dst, 17, fb.udp(sport, dport, payload))


def v6_udp(sport=40000, dport=53, payload=UDP_PAYLOAD, src=A6, dst=B6):
    return fb.ipv6(src, dst, 17, fb.udp(sport, dport, payload))


def assert_v4(p, src=A4, dst=B4):
    assert p["ip_version"] == 4
    assert (int(p["src_hi"]), int(p["src_lo"])) == fb.mapped4(src)
    assert (int(p["dst_hi"]), int(p["dst_lo"])) == fb.mapped4(dst)


def assert_v6(p, src=A6, dst=B6):
    assert p["ip_version"] == 6
    assert (int(p["src_hi"]), int(p["src_lo"])) == fb.addr6(src)
    assert (int(p["dst_hi"]), int(p["dst_lo"])) == fb.addr6(dst)


def assert_udp(p, fr, l4_offset, sport=40000, dport=53, payload=UDP_PAYLOAD):
    """UDP at l4_offset bytes into the frame, carrying `payload`, fully captured."""
    assert (p["proto"], p["sport"], p["dport"], p["status"]) == (17, sport, dport, 0)
    assert p["payload_bytes"] == len(payload) and p["payload_caplen"] == len(payload)
    assert p["payload_offset"] == fr["offset"] + l4_offset + 8


# ============================================================================================ a full row

def test_ethernet_ipv4_tcp_every_field():
    seg = fb.tcp(51000, 443, b"hi", seq=0xDEADBEEF, ack=7, flags=fb.TCP_PSH | fb.TCP_ACK)
    frame = fb.ethernet(fb.ipv4(A4, B4, 6, seg), pad_to=60)  # 56 bytes + 4 bytes of Ethernet trailer
    assert len(frame) == 60
    pk, arr, d = decode(Frame(frame, 1, ts_ns=1_234_567_890_123_456_789, iface=3))
    p, fr = pk[0], arr[0]
    assert p["ts_ns"] == 1_234_567_890_123_456_789 and p["iface"] == 3
    assert_v4(p)
    assert p["src_mac"] == fb.mac_int(fb.MAC_A) and p["dst_mac"] == fb.mac_int(fb.MAC_B)
    assert (p["proto"], p["sport"], p["dport"]) == (6, 51000, 443)
    assert p["tcp_seq"] == 0xDEADBEEF and p["tcp_flags"] == 0x18
    assert p["wire_bytes"] == 60
    assert p["payload_bytes"] == 2 and p["payload_caplen"] == 2  # the 4 trailer bytes are not payload
    assert p["payload_offset"] == fr["offset"] + 14 + 20 + 20
    assert (p["vlan"], p["status"]) == (0, 0)
    assert d.count("packets") == 1 and d.count("wire_bytes") == 60 and d.count("captured_bytes") == 60
    for name in ("not_ip", "undecodable", "headers_cut", "fragments", "snaplen_cut"):
        assert d.count(name) == 0, name


def test_tcp_with_options_payload_offset():
    seg = fb.tcp(1, 2, b"payload!", options=b"\x02\x04\x05\xb4\x01\x03\x03\x07\x04\x02\x00\x00", flags=fb.TCP_SYN)
    p, fr = one(fb.ethernet(fb.ipv4(A4, B4, 6, seg)))
    assert p["payload_offset"] == fr["offset"] + 14 + 20 + 32
    assert (p["payload_bytes"], p["payload_caplen"], p["tcp_flags"], p["status"]) == (8, 8, fb.TCP_SYN, 0)


def test_udp_over_ethernet():
    p, fr = one(fb.ethernet(v4_udp()))
    assert_v4(p)
    assert_udp(p, fr, 14 + 20)


# ============================================================================================ link layers

@pytest.mark.parametrize("tags,vlan", [
    ([(0x8100, 100)], 100),
    ([(0x8100, 0xE000 | 4094)], 4094),  # priority bits are not part of the id
    ([(0x8100, 0)], 0),
    ([(0x88A8, 200), (0x8100, 300)], 200),  # 802.1ad QinQ: the outer tag wins
    ([(0x9100, 7), (0x8100, 8)], 7),
    ([(0x8100, 1), (0x8100, 2), (0x8100, 3)], 1),
])
def test_vlan_tags(tags, vlan):
    p, fr = one(fb.ethernet(v4_udp(), tags=tags))
    assert p["vlan"] == vlan
    assert_v4(p)
    assert_udp(p, fr, 14 + 4 * len(tags) + 20)


def test_vlan_tag_cut_is_undecodable():
    frame = fb.ethernet(b"\x00\x64", 0x8100)  # a tag with no inner EtherType
    p, _ = one(frame)
    assert p["status"] == S.UNDECODABLE and p["ip_version"] == 0


@pytest.mark.parametrize("ppp,inner,version", [(0x0021, v4_udp(), 4), (0x0057, v6_udp(), 6)])
def test_pppoe_session(ppp, inner, version):
    p, fr = one(fb.ethernet(fb.pppoe_session(inner, ppp), 0x8864))
    assert p["ip_version"] == version
    assert_udp(p, fr, 14 + 8 + (20 if version == 4 else 40))


def test_pppoe_in_vlan():
    p, fr = one(fb.ethernet(fb.pppoe_session(v4_udp(), 0x0021), 0x8864, tags=[(0x8100, 785)]))
    assert p["vlan"] == 785
    assert_v4(p)
    assert_udp(p, fr, 14 + 4 + 8 + 20)


def test_pppoe_control_protocols_are_not_ip():
    p, _ = one(fb.ethernet(fb.pppoe_session(b"\x01\x01\x00\x04", 0xC021), 0x8864))  # LCP
    assert p["status"] == S.NOT_IP and p["ip_version"] == 0
    p, _ = one(fb.ethernet(b"\x11\x09\x00\x00\x00\x00", 0x8863, pad_to=60))  # PPPoE discovery
    assert p["status"] == S.NOT_IP


def test_linux_sll():
    p, fr = one(fb.sll(v4_udp(), 0x0800, pkttype=4), 113)
    assert_v4(p)
    assert_udp(p, fr, 16 + 20)
    assert p["src_mac"] == fb.mac_int(fb.MAC_A) and p["dst_mac"] == 0
    p, fr = one(fb.sll(v6_udp(), 0x86DD), 113)
    assert_v6(p)
    assert_udp(p, fr, 16 + 40)


def test_linux_sll_without_a_6_byte_address_has_no_mac():
    p, fr = one(fb.sll(v4_udp(), 0x0800, hatype=772, addr=b""), 113)  # loopback: address length 0
    assert p["src_mac"] == 0
    assert_udp(p, fr, 16 + 20)


def test_linux_sll_vlan_and_non_ip():
    p, fr = one(fb.sll(b"\x00\x2a\x08\x00" + v4_udp(), 0x8100), 113)
    assert p["vlan"] == 42
    assert_udp(p, fr, 16 + 4 + 20)
    p, _ = one(fb.sll(fb.arp_request(), 0x0806), 113)
    assert p["status"] == S.NOT_IP


def test_linux_sll2():
    p, fr = one(fb.sll2(v4_udp(), 0x0800), 276)
    assert_v4(p)
    assert_udp(p, fr, 20 + 20)
    assert p["src_mac"] == fb.mac_int(fb.MAC_A)
    p, fr = one(fb.sll2(v6_udp(), 0x86DD, addr=b""), 276)
    assert_v6(p)
    assert_udp(p, fr, 20 + 40)
    assert p["src_mac"] == 0


@pytest.mark.parametrize("linktype", [101, 12, 14])
def test_raw_ip_either_version(linktype):
    p, fr = one(v4_udp(), linktype)
    assert_v4(p)
    assert_udp(p, fr, 20)
    p, fr = one(v6_udp(), linktype)
    assert_v6(p)
    assert_udp(p, fr, 40)
    assert p["src_mac"] == 0 and p["dst_mac"] == 0


@pytest.mark.parametrize("linktype", [101, 12, 14, 228, 229])
def test_raw_ip_with_a_bad_version_is_undecodable(linktype):
    data = bytearray(v4_udp(payload=b"x" * 40))  # long enough for an IPv6 header too
    data[0] = 0x55
    p, _ = one(bytes(data), linktype)
    assert p["status"] == S.UNDECODABLE and p["ip_version"] == 0


def test_raw_ipv4_and_ipv6_linktypes():
    p, fr = one(v4_udp(), 228)
    assert_v4(p)
    assert_udp(p, fr, 20)
    p, fr = one(v6_udp(), 229)
    assert_v6(p)
    assert_udp(p, fr, 40)
    p, _ = one(v6_udp(), 228)  # an IPv6 packet on the IPv4-only link type
    assert p["status"] == S.UNDECODABLE


@pytest.mark.parametrize("family,big_endian,version", [
    (2, False, 4), (2, True, 4),
    (24, False, 6), (24, True, 6), (28, False, 6), (28, True, 6), (30, False, 6), (30, True, 6),
])
def test_bsd_null(family, big_endian, version):
    inner = v4_udp() if version == 4 else v6_udp()
    p, fr = one(fb.bsd_null(inner, family, big_endian=big_endian), 0)
    assert p["ip_version"] == version
    assert_udp(p, fr, 4 + (20 if version == 4 else 40))


@pytest.mark.parametrize("family,version", [(2, 4), (24, 6), (28, 6), (30, 6)])
def test_openbsd_loop(family, version):
    inner = v4_udp() if version == 4 else v6_udp()
    p, fr = one(fb.bsd_null(inner, family, big_endian=True), 108)
    assert p["ip_version"] == version
    assert_udp(p, fr, 4 + (20 if version == 4 else 40))


def test_null_unknown_family_is_not_ip():
    p, _ = one(fb.bsd_null(b"\0" * 40, 7), 0)
    assert p["status"] == S.NOT_IP


def test_loop_is_network_order_only():
    # LINKTYPE_LOOP is always network byte order: a little-endian AF_INET there is family 0x02000000, not IP
    p, _ = one(fb.bsd_null(v4_udp(), 2, big_endian=False), 108)
    assert p["status"] == S.NOT_IP


@pytest.mark.parametrize("ethertype,payload", [
    (0x0806, fb.arp_request()),
    (0x88CC, b"\x02\x07\x04" + b"\0" * 40),  # LLDP
    (0x0026, b"\x42\x42\x03" + b"\0" * 40),  # 802.3 length field + LLC (STP)
])
def test_non_ip_ethernet(ethertype, payload):
    pk, arr, d = decode(Frame(fb.ethernet(payload, ethertype, pad_to=60)))
    p = pk[0]
    assert p["status"] == S.NOT_IP and p["ip_version"] == 0
    assert p["src_mac"] == fb.mac_int(fb.MAC_A) and p["dst_mac"] == fb.mac_int(fb.MAC_B)
    assert (p["proto"], p["sport"], p["dport"], p["payload_bytes"]) == (0, 0, 0, 0)
    assert d.count("not_ip") == 1 and d.count("undecodable") == 0 and d.count("packets") == 1


def test_unknown_linktype_is_undecodable():
    p, _ = one(v4_udp(), 0xFFFF)
    assert p["status"] == S.UNDECODABLE and p["ip_version"] == 0


# ============================================================================================ IPv4

def test_ipv4_with_options():
    opts = b"\x94\x04\x00\x00" + b"\x01\x01\x01\x00"  # router alert, NOPs, end of list: ihl = 7
    p, fr = one(fb.ethernet(fb.ipv4(A4, B4, 17, fb.udp(40000, 53, UDP_PAYLOAD), options=opts)))
    assert_v4(p)
    assert_udp(p, fr, 14 + 28)


def test_ipv4_tso_total_length_zero():
    p, fr = one(fb.ethernet(fb.ipv4(A4, B4, 6, fb.tcp(1, 2, b"x" * 3000), total_length=0)))
    assert (p["status"], p["payload_bytes"], p["payload_caplen"]) == (0, 3000, 3000)


@pytest.mark.parametrize("mutate", ["ihl4", "total_lt_ihl", "tcp_off3", "udp_beyond_total"])
def test_broken_ipv4_is_undecodable(mutate):
    pkt = bytearray(fb.ipv4(A4, B4, 6, fb.tcp(1, 2, b"abc")))
    if mutate == "ihl4":
        pkt[0] = 0x44
    elif mutate == "total_lt_ihl":
        pkt[2:4] = (12).to_bytes(2, "big")
    elif mutate == "tcp_off3":
        pkt[20 + 12] = 0x30
    elif mutate == "udp_beyond_total":
        pkt = bytearray(fb.ipv4(A4, B4, 17, fb.udp(1, 2), total_length=24))  # 4 bytes of UDP per IP length
    pk, _, d = decode(Frame(fb.ethernet(bytes(pkt), pad_to=60)))
    assert pk[0]["status"] == S.UNDECODABLE
    assert pk[0]["ip_version"] == 0  # undecodable rows must not become flows (the flow table skips version 0)
    assert d.count("undecodable") == 1


def test_ipv4_fragments_share_ports_through_the_cache():
    whole = fb.udp(5353, 53, b"A" * 2000)
    first = fb.ipv4(A4, B4, 17, whole[:1480], ident=0xBEEF, mf=True)
    middle = fb.ipv4(A4, B4, 17, whole[1480:1960], ident=0xBEEF, mf=True, frag_offset=1480)
    last = fb.ipv4(A4, B4, 17, whole[1960:], ident=0xBEEF, frag_offset=1960)
    orphan = fb.ipv4(A4, B4, 17, b"B" * 80, ident=0xBEF0, frag_offset=1480)  # its first fragment never came
    other_src = fb.ipv4("192.0.2.11", B4, 17, b"C" * 80, ident=0xBEEF, frag_offset=1480)
    other_proto = fb.ipv4(A4, B4, 6, b"D" * 80, ident=0xBEEF, frag_offset=1480)
    unfragmented = fb.ipv4(A4, B4, 17, fb.udp(7, 8), ident=0xBEEF, df=True)
    d = Decoder()
    buf, arr = fb.frames_buffer([(1, fb.ethernet(x)) for x in (first, middle, orphan, other_src, other_proto,
                                                               unfragmented)])
    pk = d.decode_batch(buf, arr).copy()
    assert [(int(p["sport"]), int(p["dport"])) for p in pk] == [(5353, 53), (5353, 53), (0, 0), (0, 0), (0, 0),
                                                               (7, 8)]
    assert [int(p["status"]) for p in pk] == [S.FRAGMENT] + [S.FRAGMENT | S.LATER_FRAGMENT] * 4 + [0]
    assert [int(p["proto"]) for p in pk] == [17, 17, 17, 17, 6, 17]
    assert pk[0]["payload_bytes"] == 1480 - 8 and pk[0]["payload_caplen"] == 1472
    assert pk[1]["payload_bytes"] == 480 and pk[1]["payload_caplen"] == 0
    assert d.count("fragments") == 5
    # the cache lives in the Decoder: the last fragment, in the next batch, still finds the ports
    buf, arr = fb.frames_buffer([(1, fb.ethernet(last))])
    pk = d.decode_batch(buf, arr)
    assert (pk[0]["sport"], pk[0]["dport"], pk[0]["status"]) == (5353, 53, S.FRAGMENT | S.LATER_FRAGMENT)
    assert pk[0]["payload_bytes"] == len(whole) - 1960
    assert d.count("fragments") == 6 and d.count("packets") == 7
    # a fresh decoder knows nothing
    assert decode_frames_once(buf, arr)[0]["sport"] == 0


def test_ipv4_first_fragment_icmp_ports_are_cached():
    msg = fb.icmp(8, 0, b"x" * 3000)
    first = fb.ipv4(A4, B4, 1, msg[:1480], ident=9, mf=True)
    later = fb.ipv4(A4, B4, 1, msg[1480:], ident=9, frag_offset=1480)
    pk, _, _ = decode((1, fb.ethernet(first)), (1, fb.ethernet(later)))
    assert [(int(p["sport"]), int(p["dport"])) for p in pk] == [(8, 0), (8, 0)]


# ============================================================================================ IPv6

def test_ipv6_extension_header_chain():
    chain = fb.hop_by_hop(43) + fb.routing_header(60) + fb.destination_options(17, 2) + fb.udp(40000, 53, UDP_PAYLOAD)
    p, fr = one(fb.ethernet(fb.ipv6(A6, B6, 0, chain), 0x86DD))
    assert_v6(p)
    assert_udp(p, fr, 14 + 40 + 8 + 24 + 24)


def test_ipv6_ah_then_tcp():
    p, fr = one(fb.ethernet(fb.ipv6(A6, B6, 51, fb.ah_header(6) + fb.tcp(22, 50000, b"ssh")), 0x86DD))
    assert (p["proto"], p["sport"], p["dport"], p["payload_bytes"], p["status"]) == (6, 22, 50000, 3, 0)
    assert p["payload_offset"] == fr["offset"] + 14 + 40 + 24 + 20


def test_ipv6_esp_is_address_only():
    p, fr = one(fb.ethernet(fb.ipv6(A6, B6, 50, b"\0\0\0\x01\0\0\0\x01" + b"e" * 40), 0x86DD))
    assert_v6(p)
    assert (p["proto"], p["sport"], p["dport"], p["payload_bytes"], p["status"]) == (50, 0, 0, 48, 0)


def test_ipv6_fragments_with_extension_headers_on_both_sides():
    whole_udp = fb.udp(53, 33000, b"T" * 2500)
    pre = lambda nh: fb.hop_by_hop(43) + fb.routing_header(nh)  # noqa: E731 - unfragmentable part
    # fragmentable part: destination options, then UDP (so the fragment header's next header is 60)
    fragmentable = fb.destination_options(17) + whole_udp
    first = fb.ipv6(B6, A6, 0, pre(44) + fb.fragment_header(60, 0, True, 0xCAFE) + fragmentable[:1232])
    second = fb.ipv6(B6, A6, 0, pre(44) + fb.fragment_header(60, 1232, True, 0xCAFE) + fragmentable[1232:2464])
    third = fb.ipv6(B6, A6, 0, pre(44) + fb.fragment_header(60, 2464, False, 0xCAFE) + fragmentable[2464:])
    orphan = fb.ipv6(B6, A6, 44, fb.fragment_header(17, 1232, False, 0xCAFF) + b"x" * 64)
    pk, arr, d = decode(*[(1, fb.ethernet(x, 0x86DD)) for x in (first, second, third, orphan)])
    assert [(int(p["sport"]), int(p["dport"])) for p in pk] == [(53, 33000)] * 3 + [(0, 0)]
    assert [int(p["proto"]) for p in pk] == [17, 17, 17, 17]
    assert [int(p["status"]) for p in pk] == [S.FRAGMENT] + [S.FRAGMENT | S.LATER_FRAGMENT] * 3
    for p in pk:
        assert_v6(p, B6, A6)
    assert pk[0]["payload_offset"] == arr[0]["offset"] + 14 + 40 + 8 + 24 + 8 + 16 + 8
    assert pk[1]["payload_bytes"] == 1232 and pk[3]["payload_bytes"] == 64
    assert d.count("fragments") == 4


def test_ipv6_fragment_cache_compares_whole_addresses():
    # same low 64 bits (interface id), different prefixes: distinct hosts, so distinct datagrams
    a, b = "2001:db8:aaaa::1", "2001:db8:bbbb::1"
    first = fb.ipv6(a, B6, 44, fb.fragment_header(17, 0, True, 77) + fb.udp(1000, 2000, b"z" * 64))
    later_other_host = fb.ipv6(b, B6, 44, fb.fragment_header(17, 72, False, 77) + b"y" * 64)
    later_same_host = fb.ipv6(a, B6, 44, fb.fragment_header(17, 72, False, 77) + b"y" * 64)
    pk, _, _ = decode(*[(229, x) for x in (first, later_other_host, later_same_host)])
    assert [(int(p["sport"]), int(p["dport"])) for p in pk] == [(1000, 2000), (0, 0), (1000, 2000)]


def test_ipv6_atomic_fragment_is_not_a_fragment():
    p, fr = one(fb.ipv6(A6, B6, 44, fb.fragment_header(17, 0, False, 5) + fb.udp(40000, 53, UDP_PAYLOAD)), 229)
    assert_udp(p, fr, 48)


def test_ipv6_payload_length_excludes_trailer():
    p, fr = one(fb.ethernet(fb.ipv6(A6, B6, 6, fb.tcp(1, 2, b"")), 0x86DD) + b"\0" * 6)  # trailer after IPv6
    assert (p["payload_bytes"], p["payload_caplen"], p["status"]) == (0, 0, 0)


# ============================================================================================ ICMP and others

@pytest.mark.parametrize("version,icmp_type,code,ports", [
    (4, 8, 0, (8, 0)),  # echo request: dport = echo reply type
    (4, 0, 0, (0, 8)),  # echo reply
    (4, 13, 0, (13, 14)),  # timestamp
    (4, 3, 3, (3, 3)),  # destination unreachable / port unreachable: one-way, dport = code
    (4, 3, 13, (3, 13)),
    (4, 11, 1, (11, 1)),  # time exceeded
    (6, 128, 0, (128, 129)),  # ICMPv6 echo request
    (6, 129, 0, (129, 128)),
    (6, 135, 0, (135, 136)),  # neighbour solicitation / advertisement
    (6, 1, 4, (1, 4)),  # destination unreachable, port unreachable
    (6, 2, 0, (2, 0)),  # packet too big
])
def test_icmp_ports(version, icmp_type, code, ports):
    msg = fb.icmp(icmp_type, code, b"ping-data")
    pkt = fb.ipv4(A4, B4, 1, msg) if version == 4 else fb.ipv6(A6, B6, 58, msg)
    p, fr = one(fb.ethernet(pkt, 0x0800 if version == 4 else 0x86DD))
    assert (p["proto"], p["sport"], p["dport"], p["status"]) == ((1 if version == 4 else 58), *ports, 0)
    assert p["payload_bytes"] == 9 and p["payload_caplen"] == 9
    assert p["payload_offset"] == fr["offset"] + 14 + (20 if version == 4 else 40) + 8


def test_other_ip_protocol_is_address_only():
    p, fr = one(fb.ethernet(fb.ipv4(A4, B4, 47, fb.gre(v4_udp()))))
    assert_v4(p)
    assert (p["proto"], p["sport"], p["dport"], p["status"]) == (47, 0, 0, 0)
    assert p["payload_bytes"] == 4 + 38 and p["payload_offset"] == fr["offset"] + 14 + 20


# ============================================================================================ cut frames

def test_snaplen_cut_inside_tcp_header():
    full = fb.ethernet(fb.ipv4(A4, B4, 6, fb.tcp(1234, 80, b"GET / HTTP/1.1\r\n")))
    pk, _, d = decode(Frame(full[:14 + 20 + 10], 1, wirelen=len(full)))
    p = pk[0]
    assert p["status"] == S.SNAPLEN_CUT | S.HEADERS_CUT
    assert_v4(p)
    assert (p["proto"], p["sport"], p["dport"], p["payload_caplen"]) == (6, 0, 0, 0)
    assert p["wire_bytes"] == len(full)
    assert d.count("snaplen_cut") == 1 and d.count("headers_cut") == 1 and d.count("undecodable") == 0
    assert d.count("captured_bytes") == 44 and d.count("wire_bytes") == len(full)


def test_snaplen_cut_inside_payload():
    full = fb.ethernet(fb.ipv4(A4, B4, 6, fb.tcp(1234, 80, b"x" * 1000)))
    p, fr = one(full[:96], 1, wirelen=len(full))
    assert p["status"] == S.SNAPLEN_CUT
    assert (p["sport"], p["dport"], p["payload_bytes"], p["payload_caplen"]) == (1234, 80, 1000, 96 - 54)


def test_snaplen_cut_inside_ip_headers():
    full4 = fb.ethernet(v4_udp())
    p, _ = one(full4[:14 + 12], 1, wirelen=len(full4))
    assert p["status"] == S.SNAPLEN_CUT | S.HEADERS_CUT and p["ip_version"] == 0
    full6 = fb.ethernet(fb.ipv6(A6, B6, 0, fb.hop_by_hop(17) + fb.udp(1, 2)), 0x86DD)
    p, _ = one(full6[:14 + 44], 1, wirelen=len(full6))  # cut inside the hop-by-hop header
    assert p["status"] == S.SNAPLEN_CUT | S.HEADERS_CUT
    assert_v6(p)
    p, _ = one(full6[:14 + 48 + 4], 1, wirelen=len(full6))  # cut inside UDP
    assert p["status"] == S.SNAPLEN_CUT | S.HEADERS_CUT and p["proto"] == 17


def test_short_frame_not_cut_by_capture():
    # the frame really is that short (caplen == wirelen): the IP header is missing, which is undecodable
    p, _ = one(fb.ethernet(v4_udp())[:14 + 12])
    assert p["status"] == S.HEADERS_CUT | S.UNDECODABLE and p["ip_version"] == 0


@pytest.mark.parametrize("linktype", [0, 1, 12, 14, 101, 108, 113, 228, 229, 276])
def test_caplen_zero(linktype):
    pk, _, d = decode(Frame(b"", linktype, wirelen=60), Frame(b"", linktype, wirelen=0))
    assert pk[0]["status"] & S.SNAPLEN_CUT and not pk[1]["status"] & S.SNAPLEN_CUT
    for p in pk:
        assert p["status"] & (S.UNDECODABLE | S.HEADERS_CUT)
        assert p["ip_version"] == 0 and p["payload_caplen"] == 0
    assert d.count("packets") == 2 and d.count("snaplen_cut") == 1 and d.count("captured_bytes") == 0


def test_caplen_zero_ethernet_exact_status():
    pk, _, _ = decode(Frame(b"", 1, wirelen=60), Frame(b"", 1, wirelen=0))
    assert [int(p["status"]) for p in pk] == [S.SNAPLEN_CUT | S.UNDECODABLE, S.UNDECODABLE]


# ============================================================================================ batches, counters

def test_counters_over_a_mixed_batch():
    frames = [
        Frame(fb.ethernet(v4_udp()), ts_ns=5_000),
        Frame(fb.ethernet(fb.arp_request(), 0x0806, pad_to=60), ts_ns=3_000),
        Frame(b"\x01\x02", 1, wirelen=2, ts_ns=9_000),  # undecodable
        Frame(fb.ethernet(v4_udp())[:30], 1, wirelen=52, ts_ns=4_000),  # snaplen cut in IP header
        Frame(fb.ethernet(fb.ipv4(A4, B4, 17, b"x" * 64, ident=3, frag_offset=64)), ts_ns=7_000),
        Frame(v6_udp(), 229, ts_ns=6_000),
    ]
    pk, arr, d = decode(*frames)
    assert [int(p["status"]) for p in pk] == [0, S.NOT_IP, S.UNDECODABLE, S.SNAPLEN_CUT | S.HEADERS_CUT,
                                              S.FRAGMENT | S.LATER_FRAGMENT, 0]
    assert d.count("packets") == 6
    assert d.count("not_ip") == 1 and d.count("undecodable") == 1 and d.count("headers_cut") == 1
    assert d.count("snaplen_cut") == 1 and d.count("fragments") == 1
    assert d.count("wire_bytes") == int(arr["wirelen"].sum()) == sum(
        len(f.data) if f.wirelen is None else f.wirelen for f in frames)
    assert d.count("captured_bytes") == sum(len(f.data) for f in frames)
    assert d.count("first_ns") == 3_000 and d.count("last_ns") == 9_000
    # a second batch adds to the counters and moves first/last
    buf, arr2 = fb.frames_buffer([Frame(fb.ethernet(v4_udp()), ts_ns=1_000), Frame(v6_udp(), 229, ts_ns=20_000)])
    d.decode_batch(buf, arr2)
    assert d.count("packets") == 8 and d.count("first_ns") == 1_000 and d.count("last_ns") == 20_000


def test_rows_are_reused_and_fully_rewritten():
    d = Decoder()
    buf, arr = fb.frames_buffer([(1, fb.ethernet(fb.ipv4(A4, B4, 6, fb.tcp(1, 2, b"abc", seq=99)), tags=[(0x8100, 5)]))])
    first = d.decode_batch(buf, arr)
    assert first["tcp_seq"][0] == 99 and first["vlan"][0] == 5
    buf, arr = fb.frames_buffer([(1, fb.ethernet(fb.arp_request(), 0x0806, pad_to=60))])
    second = d.decode_batch(buf, arr)
    assert len(second) == 1
    p = second[0]
    assert p["status"] == S.NOT_IP
    for field in ("tcp_seq", "vlan", "sport", "dport", "proto", "tcp_flags", "ip_version", "payload_bytes",
                  "payload_offset", "payload_caplen", "src_lo", "dst_lo"):
        assert p[field] == 0, field


def test_empty_batch_and_dtypes():
    d = Decoder()
    out = d.decode_batch(np.zeros(0, np.uint8), np.zeros(0, FRAME_DTYPE))
    assert len(out) == 0 and out.dtype == PACKET_DTYPE and d.count("packets") == 0
    with pytest.raises(TypeError):
        d.decode_batch(np.zeros(10, np.uint8), np.zeros(1, PACKET_DTYPE))
    with pytest.raises(AttributeError):
        d.count("no_such_counter")


def test_large_batch_grows_output():
    frames = [Frame(fb.ethernet(v4_udp(sport=1000 + i)), ts_ns=i) for i in range(3000)]
    pk, _, d = decode(*frames)
    assert len(pk) == 3000 and pk["sport"].tolist() == list(range(1000, 4000))
    assert d.count("packets") == 3000


# ============================================================================================ fuzzing

LINKTYPES = [0, 1, 12, 14, 101, 108, 113, 228, 229, 276, 0xFFFF]


def _valid_frame(linktype: int, version: int, l4: int) -> bytes:
    """A well-formed frame for the link type, carrying IPv4/IPv6 with TCP/UDP/ICMP/fragments."""
    if l4 == 0:
        seg, proto = fb.tcp(1, 2, b"data", options=b"\x01" * 4), 6
    elif l4 == 1:
        seg, proto = fb.udp(3, 4, b"data"), 17
    elif l4 == 2:
        seg, proto = fb.icmp(8, 0, b"data"), (1 if version == 4 else 58)
    else:
        seg, proto = b"fragment" * 4, 17
    if version == 4:
        ip = fb.ipv4(A4, B4, proto, seg, options=b"\x01" * 4 if l4 == 1 else b"", frag_offset=64 if l4 == 3 else 0)
        et, fam = 0x0800, 2
    else:
        if l4 == 3:
            ip = fb.ipv6(A6, B6, 0, fb.hop_by_hop(44) + fb.fragment_header(proto, 64, True, 1) + seg)
        else:
            ip = fb.ipv6(A6, B6, 60, fb.destination_options(proto) + seg)
        et, fam = 0x86DD, 24
    if linktype == 1:
        return fb.ethernet(fb.pppoe_session(ip, 0x21 if version == 4 else 0x57), 0x8864, tags=[(0x88A8, 1)]) \
            if l4 == 2 else fb.ethernet(ip, et, tags=[(0x8100, 9)] if l4 == 1 else ())
    if linktype == 113:
        return fb.sll(ip, et)
    if linktype == 276:
        return fb.sll2(ip, et)
    if linktype == 0:
        return fb.bsd_null(ip, fam)
    if linktype == 108:
        return fb.bsd_null(ip, fam, big_endian=True)
    return ip


@st.composite
def fuzz_frames(draw):
    linktype = draw(st.sampled_from(LINKTYPES))
    if draw(st.booleans()):
        data = bytearray(draw(st.binary(max_size=120)))
    else:
        data = bytearray(_valid_frame(linktype, draw(st.sampled_from([4, 6])), draw(st.integers(0, 3))))
        for _ in range(draw(st.integers(0, 4))):  # flip a few bytes
            if data:
                i = draw(st.integers(0, len(data) - 1))
                data[i] = draw(st.integers(0, 255))
        # cut anywhere, but mostly inside the headers (the first 90 bytes), where the bounds checks are
        data = data[:draw(st.one_of(st.integers(0, min(len(data), 90)), st.integers(0, len(data))))]
    wirelen = len(data) + draw(st.sampled_from([0, 0, 1, 1000]))
    return Frame(bytes(data), linktype, wirelen)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(fuzz_frames(), min_size=1, max_size=6))
def test_fuzz_no_crash_and_invariants(frames):
    # decode twice with different filler after every frame: a kernel that reads past a frame's captured bytes
    # would see the filler, and the two results would differ
    buf_a, arr = fb.frames_buffer(frames, gap=b"\x00" * 64, tail=b"\x00" * 64)
    buf_b, arr_b = fb.frames_buffer(frames, gap=b"\xff" * 64, tail=b"\xff" * 64)
    assert (arr == arr_b).all()
    d = Decoder()
    pa = d.decode_batch(buf_a, arr).copy()
    pb = Decoder().decode_batch(buf_b, arr)
    assert pa.tobytes() == pb.tobytes()
    assert d.count("packets") == len(frames)
    for p, f in zip(pa, arr):
        st_ = int(p["status"])
        assert bool(st_ & S.SNAPLEN_CUT) == (f["caplen"] < f["wirelen"])
        problems = st_ & (S.NOT_IP | S.UNDECODABLE | S.HEADERS_CUT)
        if not problems:
            assert p["ip_version"] in (4, 6)
        if st_ & (S.NOT_IP | S.UNDECODABLE):
            assert p["ip_version"] == 0
        assert p["payload_caplen"] <= p["payload_bytes"]
        if p["payload_caplen"]:
            assert f["offset"] <= p["payload_offset"]
            assert p["payload_offset"] + p["payload_caplen"] <= f["offset"] + f["caplen"]
        assert p["wire_bytes"] == f["wirelen"] and p["ts_ns"] == f["ts_ns"]
    assert d.count("not_ip") == int(((pa["status"] & S.NOT_IP) != 0).sum())
    assert d.count("undecodable") == int(((pa["status"] & S.UNDECODABLE) != 0).sum())


@pytest.mark.parametrize("linktype", LINKTYPES)
def test_every_prefix_of_valid_frames_reads_only_captured_bytes(linktype):
    """Each well-formed frame cut at every possible length, as if by snaplen: the decoder must only read the
    captured bytes (results identical whatever follows them) and must flag every cut that loses headers."""
    frames = []
    for version in (4, 6):
        for l4 in range(4):
            full = _valid_frame(linktype, version, l4)
            frames += [Frame(full[:n], linktype, len(full)) for n in range(len(full) + 1)]
    buf_a, arr = fb.frames_buffer(frames, gap=b"\x00" * 64, tail=b"\x00" * 64)
    buf_b, _ = fb.frames_buffer(frames, gap=b"\xff" * 64, tail=b"\xff" * 64)
    pa = Decoder().decode_batch(buf_a, arr).copy()
    pb = Decoder().decode_batch(buf_b, arr)
    assert pa.tobytes() == pb.tobytes()
    for f, p in zip(frames, pa):
        st_ = int(p["status"])
        if len(f.data) < f.wirelen:
            assert st_ & S.SNAPLEN_CUT
        assert p["payload_caplen"] <= p["payload_bytes"]
        if linktype == 0xFFFF:
            assert st_ & S.UNDECODABLE
        elif not st_ & (S.UNDECODABLE | S.HEADERS_CUT):
            # whatever was decoded came from the captured bytes only
            assert p["ip_version"] in (4, 6)
