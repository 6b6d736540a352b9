"""Community ID v1 flow hash (github.com/corelight/community-id-spec), the key EVE, Zeek and SIEMs join flows on.

hash = SHA-1(seed as 2 bytes | lower endpoint address | other address | protocol | 0 | lower port | other port),
written "1:" + base64. The endpoints are ordered (address, then port) so both directions of a flow get the same ID;
ports are hashed only for TCP, UDP, SCTP, ICMP and ICMPv6. For ICMP the "ports" are the message type and the type of
its counterpart (echo 8 <-> reply 0), or the code for a message that has none: such one-way messages are never
reordered.
"""
from __future__ import annotations

import base64
import hashlib
import ipaddress
import struct

ICMP, TCP, UDP, ICMPV6, SCTP = 1, 6, 17, 58, 132
PORT_PROTOCOLS = frozenset({ICMP, TCP, UDP, ICMPV6, SCTP})

# ICMP message type -> the type of its request/reply counterpart (community-id-spec, community-id.py ICMP tables)
ICMP_COUNTERPART = {
    ICMP: {8: 0, 0: 8, 13: 14, 14: 13, 15: 16, 16: 15, 10: 9, 9: 10, 17: 18, 18: 17},
    ICMPV6: {128: 129, 129: 128, 133: 134, 134: 133, 135: 136, 136: 135, 130: 131, 131: 130, 139: 140, 140: 139,
             144: 145, 145: 144},
}


def _address(value: str | bytes | ipaddress.IPv4Address | ipaddress.IPv6Address) -> bytes:
    """Network-order bytes of an address given as text, an ipaddress object or already as 4/16 bytes."""
    if isinstance(value, bytes):
        if len(value) not in (4, 16):
            raise ValueError(f"an address is 4 or 16 bytes, not {len(value)}")
        return value
    if isinstance(value, str):
        value = ipaddress.ip_address(value)
    return value.packed


def flow_hash(src: bytes, dst: bytes, proto: int, sport: int | None, dport: int | None, seed: int = 0,
              one_way: bool = False) -> str:
    """The Community ID of an already mapped tuple: ports as they are hashed (for ICMP: type and counterpart
    type or code), `one_way` for ICMP messages without counterpart. Addresses are network-order bytes."""
    if len(src) != len(dst):
        raise ValueError("both addresses must be of one family")
    with_ports = proto in PORT_PROTOCOLS and sport is not None and dport is not None
    if not one_way:
        if with_ports:
            if (src, sport) > (dst, dport):
                src, dst, sport, dport = dst, src, dport, sport
        elif src > dst:
            src, dst = dst, src
    data = struct.pack("!H", seed & 0xFFFF) + src + dst + struct.pack("!BB", proto, 0)
    if with_ports:
        data += struct.pack("!HH", sport, dport)
    return "1:" + base64.b64encode(hashlib.sha1(data).digest()).decode("ascii")


def icmp_ports(proto: int, icmp_type: int, icmp_code: int) -> tuple[int, int, bool]:
    """(sport, dport, one_way) of an ICMP/ICMPv6 message as Community ID hashes it."""
    counterpart = ICMP_COUNTERPART[proto].get(icmp_type)
    if counterpart is None:
        return icmp_type, icmp_code, True
    return icmp_type, counterpart, False


def community_id_v1(src_ip, dst_ip, proto: int, sport: int | None = None, dport: int | None = None,
                    seed: int = 0) -> str:
    """Community ID v1 of a flow as the spec states it: for ICMP/ICMPv6, `sport` is the type and `dport` the code."""
    one_way = False
    if proto in ICMP_COUNTERPART and sport is not None and dport is not None:
        sport, dport, one_way = icmp_ports(proto, sport, dport)
    return flow_hash(_address(src_ip), _address(dst_ip), proto, sport, dport, seed, one_way)


def decoded_community_id(src: bytes, dst: bytes, proto: int, sport: int, dport: int, seed: int = 0) -> str:
    """Community ID of a tuple as egressguard's decoder stores it: for ICMP, `dport` already holds the counterpart
    type (or the code of a one-way message), so only the one-way test remains."""
    one_way = proto in ICMP_COUNTERPART and sport not in ICMP_COUNTERPART[proto]
    return flow_hash(src, dst, proto, sport, dport, seed, one_way)
