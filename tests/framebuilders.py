"""Byte-literal builders for tests: classic pcap and pcapng files, link-layer headers, IPv4/IPv6 (with extension
headers), TCP/UDP/ICMP, all written by hand with `struct` (no scapy/dpkt), plus small helpers that turn frames into
the FRAME arrays the decoder takes and read a whole capture back into plain Python values.

Everything here follows the specifications directly so that a test failure points at the code under test:
- classic pcap: draft-ietf-opsawg-pcap (24-byte file header, 16-byte record header);
- pcapng: draft-ietf-opsawg-pcapng (block = type, total length, body padded to 4, total length again);
- headers: RFC 791 (IPv4), RFC 8200 (IPv6), RFC 9293 (TCP), RFC 768 (UDP), RFC 792/4443 (ICMP/ICMPv6),
  RFC 2516 (PPPoE), IEEE 802.1Q/802.1ad, tcpdump.org linktypes (SLL, SLL2, NULL, LOOP).
Checksums are left 0: nothing under test verifies them.
"""
from __future__ import annotations

import ipaddress
import struct
from dataclasses import dataclass

import numpy as np

from egressguard.schema import FRAME_DTYPE

# ----------------------------------------------------------------------------------------------- classic pcap

PCAP_MAGIC_US = 0xA1B2C3D4
PCAP_MAGIC_NS = 0xA1B23C4D


def _e(big_endian: bool) -> str:
    return ">" if big_endian else "<"


def pcap_header(linktype: int = 1, *, big_endian: bool = False, nanos: bool = False, snaplen: int = 65535,
                network: int | None = None) -> bytes:
    """24-byte pcap file header; `network` overrides the whole LinkType-and-more 32-bit field."""
    magic = PCAP_MAGIC_NS if nanos else PCAP_MAGIC_US
    return struct.pack(_e(big_endian) + "IHHiIII", magic, 2, 4, 0, 0, snaplen,
                       linktype if network is None else network)


def pcap_record(sec: int, frac: int, data: bytes, wirelen: int | None = None, *, big_endian: bool = False) -> bytes:
    """16-byte record header + data; `frac` is microseconds or nanoseconds as the file header says."""
    return struct.pack(_e(big_endian) + "IIII", sec, frac, len(data), len(data) if wirelen is None else wirelen) + data


def pcap_file(records, linktype: int = 1, *, big_endian: bool = False, nanos: bool = False,
              snaplen: int = 65535) -> bytes:
    """A whole pcap file; records are (sec, frac, data) or (sec, frac, data, wirelen)."""
    out = [pcap_header(linktype, big_endian=big_endian, nanos=nanos, snaplen=snaplen)]
    for rec in records:
        out.append(pcap_record(*rec, big_endian=big_endian))
    return b"".join(out)


# ----------------------------------------------------------------------------------------------- pcapng

BT_SHB = 0x0A0D0D0A
BT_IDB = 0x00000001
BT_PB = 0x00000002
BT_SPB = 0x00000003
BT_NRB = 0x00000004
BT_ISB = 0x00000005
BT_EPB = 0x00000006
BT_DSB = 0x0000000A
BT_CUSTOM = 0x00000BAD
BT_CUSTOM_NOCOPY = 0x40000BAD

OPT_COMMENT = 1
OPT_IF_NAME = 2
OPT_IF_TSRESOL = 9
OPT_IF_TSOFFSET = 14
OPT_EPB_FLAGS = 2
OPT_SHB_HARDWARE = 2


def pad4(data: bytes) -> bytes:
    return data + b"\0" * (-len(data) % 4)


def options(opts, *, big_endian: bool = False) -> bytes:
    """Option list [(code, value bytes), ...] with padding and opt_endofopt; empty list -> no bytes."""
    if not opts:
        return b""
    e = _e(big_endian)
    out = [struct.pack(e + "HH", code, len(value)) + pad4(value) for code, value in opts]
    return b"".join(out) + struct.pack(e + "HH", 0, 0)


def opt_tsresol(value: int) -> tuple[int, bytes]:
    """if_tsresol: value < 128 means 10^-value s, 0x80 | n means 2^-n s."""
    return (OPT_IF_TSRESOL, bytes([value]))


def opt_tsoffset(seconds: int, *, big_endian: bool = False) -> tuple[int, bytes]:
    return (OPT_IF_TSOFFSET, struct.pack(_e(big_endian) + "q", seconds))


def block(btype: int, body: bytes, *, big_endian: bool = False) -> bytes:
    body = pad4(body)
    total = len(body) + 12
    e = _e(big_endian)
    return struct.pack(e + "II", btype, total) + body + struct.pack(e + "I", total)


def shb(*, big_endian: bool = False, opts=(), section_length: int = -1, major: int = 1, minor: int = 0) -> bytes:
    body = struct.pack(_e(big_endian) + "IHHq", 0x1A2B3C4D, major, minor, section_length)
    return block(BT_SHB, body + options(opts, big_endian=big_endian), big_endian=big_endian)


def idb(linktype: int, snaplen: int = 0, *, big_endian: bool = False, opts=()) -> bytes:
    body = struct.pack(_e(big_endian) + "HHI", linktype, 0, snaplen)
    return block(BT_IDB, body + options(opts, big_endian=big_endian), big_endian=big_endian)


def epb(iface: int, ts_raw: int, data: bytes, wirelen: int | None = None, *, big_endian: bool = False,
        opts=()) -> bytes:
    body = struct.pack(_e(big_endian) + "IIIII", iface, ts_raw >> 32, ts_raw & 0xFFFFFFFF, len(data),
                       len(data) if wirelen is None else wirelen)
    return block(BT_EPB, body + pad4(data) + options(opts, big_endian=big_endian), big_endian=big_endian)


def pb(iface: int, ts_raw: int, data: bytes, wirelen: int | None = None, *, drops: int = 0,
       big_endian: bool = False, opts=()) -> bytes:
    """Obsolete Packet Block (type 2): 16-bit interface id and 16-bit drops count."""
    body = struct.pack(_e(big_endian) + "HHIIII", iface, drops, ts_raw >> 32, ts_raw & 0xFFFFFFFF, len(data),
                       len(data) if wirelen is None else wirelen)
    return block(BT_PB, body + pad4(data) + options(opts, big_endian=big_endian), big_endian=big_endian)


def spb(data: bytes, wirelen: int | None = None, *, big_endian: bool = False) -> bytes:
    body = struct.pack(_e(big_endian) + "I", len(data) if wirelen is None else wirelen)
    return block(BT_SPB, body + pad4(data), big_endian=big_endian)


def nrb(entries=(("10.0.0.1", "host.example"),), *, big_endian: bool = False) -> bytes:
    """Name Resolution Block with IPv4 records (type 1) and the end record."""
    e = _e(big_endian)
    out = []
    for ip, name in entries:
        value = ipaddress.ip_address(ip).packed + name.encode() + b"\0"
        out.append(struct.pack(e + "HH", 1, len(value)) + pad4(value))
    out.append(struct.pack(e + "HH", 0, 0))
    return block(BT_NRB, b"".join(out), big_endian=big_endian)


def isb(iface: int, ts_raw: int, *, big_endian: bool = False) -> bytes:
    """Interface Statistics Block with isb_ifrecv (code 4) = 7."""
    e = _e(big_endian)
    body = struct.pack(e + "III", iface, ts_raw >> 32, ts_raw & 0xFFFFFFFF)
    return block(BT_ISB, body + options([(4, struct.pack(e + "Q", 7))], big_endian=big_endian),
                 big_endian=big_endian)


def custom_block(data: bytes = b"vendor data", *, pen: int = 32473, copy: bool = True,
                 big_endian: bool = False) -> bytes:
    return block(BT_CUSTOM if copy else BT_CUSTOM_NOCOPY, struct.pack(_e(big_endian) + "I", pen) + data,
                 big_endian=big_endian)


def dsb(secret: bytes = b"CLIENT_RANDOM 00 00", *, big_endian: bool = False) -> bytes:
    """Decryption Secrets Block (TLS key log)."""
    e = _e(big_endian)
    return block(BT_DSB, struct.pack(e + "II", 0x544C534B, len(secret)) + pad4(secret), big_endian=big_endian)


# ----------------------------------------------------------------------------------------------- link layer

MAC_A = bytes.fromhex("020000000001")
MAC_B = bytes.fromhex("020000000002")


def mac_int(mac: bytes) -> int:
    return int.from_bytes(mac, "big")


def ethernet(payload: bytes, ethertype: int = 0x0800, *, dst: bytes = MAC_B, src: bytes = MAC_A, tags=(),
             pad_to: int = 0) -> bytes:
    """Ethernet II frame; tags = [(tpid, tci), ...] outermost first; pad_to adds a zero trailer (60 = minimum)."""
    head = dst + src
    for tpid, tci in tags:
        head += struct.pack(">HH", tpid, tci)
    frame = head + struct.pack(">H", ethertype) + payload
    return frame + b"\0" * max(0, pad_to - len(frame))


def pppoe_session(payload: bytes, ppp_protocol: int, session: int = 0x1234) -> bytes:
    """PPPoE session header (ver 1, type 1, code 0) + 2-byte PPP protocol (RFC 2516)."""
    return struct.pack(">BBHHH", 0x11, 0x00, session, len(payload) + 2, ppp_protocol) + payload


def sll(payload: bytes, protocol: int = 0x0800, *, pkttype: int = 0, hatype: int = 1, addr: bytes = MAC_A) -> bytes:
    """Linux cooked capture v1 (LINKTYPE_LINUX_SLL, 16 bytes)."""
    return struct.pack(">HHH", pkttype, hatype, len(addr)) + addr.ljust(8, b"\0")[:8] + struct.pack(">H", protocol) \
        + payload


def sll2(payload: bytes, protocol: int = 0x0800, *, ifindex: int = 2, hatype: int = 1, pkttype: int = 4,
         addr: bytes = MAC_A) -> bytes:
    """Linux cooked capture v2 (LINKTYPE_LINUX_SLL2, 20 bytes)."""
    return struct.pack(">HHIHBB", protocol, 0, ifindex, hatype, pkttype, len(addr)) + addr.ljust(8, b"\0")[:8] \
        + payload


def bsd_null(payload: bytes, family: int, *, big_endian: bool = False) -> bytes:
    """LINKTYPE_NULL (host byte order family) or, with big_endian=True, LINKTYPE_LOOP's network order."""
    return struct.pack(_e(big_endian) + "I", family) + payload


def arp_request(sender_ip: str = "10.0.0.1", target_ip: str = "10.0.0.2") -> bytes:
    return struct.pack(">HHBBH", 1, 0x0800, 6, 4, 1) + MAC_A + ipaddress.IPv4Address(sender_ip).packed \
        + b"\0" * 6 + ipaddress.IPv4Address(target_ip).packed


# ----------------------------------------------------------------------------------------------- network layer

def ipv4(src: str, dst: str, proto: int, payload: bytes, *, ident: int = 0x1234, df: bool = False,
         mf: bool = False, frag_offset: int = 0, ttl: int = 64, options: bytes = b"",
         total_length: int | None = None) -> bytes:
    """IPv4 header + payload. frag_offset is in bytes (multiple of 8); options are padded to 4 bytes."""
    assert frag_offset % 8 == 0
    options = pad4(options)
    ihl = (20 + len(options)) // 4
    total = 20 + len(options) + len(payload) if total_length is None else total_length
    flags = (0x4000 if df else 0) | (0x2000 if mf else 0) | (frag_offset // 8)
    head = struct.pack(">BBHHHBBH4s4s", 0x40 | ihl, 0, total, ident, flags, ttl, proto, 0,
                       ipaddress.IPv4Address(src).packed, ipaddress.IPv4Address(dst).packed)
    return head + options + payload


def ipv6(src: str, dst: str, next_header: int, payload: bytes, *, payload_length: int | None = None,
         hop_limit: int = 64, flow_label: int = 0) -> bytes:
    plen = len(payload) if payload_length is None else payload_length
    return struct.pack(">IHBB16s16s", (6 << 28) | flow_label, plen, next_header, hop_limit,
                       ipaddress.IPv6Address(src).packed, ipaddress.IPv6Address(dst).packed) + payload


def ipv6_ext(next_header: int, data: bytes = b"") -> bytes:
    """Generic 8-octet-unit extension header (hop-by-hop, destination options, routing) padded with PadN/zeros."""
    body = data + b"\0" * (-(2 + len(data)) % 8)
    return struct.pack(">BB", next_header, (2 + len(body)) // 8 - 1) + body


def hop_by_hop(next_header: int) -> bytes:
    """Hop-by-hop options with a Router Alert option (RFC 2711) and PadN."""
    return ipv6_ext(next_header, bytes([5, 2, 0, 0, 1, 0]))  # 2+6 = 8 bytes


def destination_options(next_header: int, extra_units: int = 1) -> bytes:
    """Destination options made of PadN only, 8 * (1 + extra_units) bytes long."""
    n = 6 + 8 * extra_units
    return ipv6_ext(next_header, bytes([1, n - 2]) + b"\0" * (n - 2))


def routing_header(next_header: int, addresses=("2001:db8::99",), segments_left: int = 1) -> bytes:
    """Type 0 routing header (deprecated, still a valid header to skip): reserved + addresses."""
    data = struct.pack(">BBI", 0, segments_left, 0) + b"".join(ipaddress.IPv6Address(a).packed for a in addresses)
    return ipv6_ext(next_header, data)


def fragment_header(next_header: int, offset: int, more: bool, ident: int) -> bytes:
    """IPv6 fragment header; offset in bytes (multiple of 8)."""
    assert offset % 8 == 0
    return struct.pack(">BBHI", next_header, 0, offset | (1 if more else 0), ident)


def ah_header(next_header: int, icv: bytes = b"\0" * 12) -> bytes:
    """Authentication header (RFC 4302): length in 4-octet units minus 2."""
    body = struct.pack(">II", 0x100, 1) + icv
    return struct.pack(">BBH", next_header, (len(body) + 4) // 4 - 2, 0) + body


# ----------------------------------------------------------------------------------------------- transport layer

TCP_FIN, TCP_SYN, TCP_RST, TCP_PSH, TCP_ACK = 0x01, 0x02, 0x04, 0x08, 0x10


def tcp(sport: int, dport: int, payload: bytes = b"", *, seq: int = 1000, ack: int = 0, flags: int = TCP_ACK,
        window: int = 65535, options: bytes = b"") -> bytes:
    options = pad4(options)
    off = (20 + len(options)) // 4
    return struct.pack(">HHIIBBHHH", sport, dport, seq, ack, off << 4, flags, window, 0, 0) + options + payload


def udp(sport: int, dport: int, payload: bytes = b"") -> bytes:
    return struct.pack(">HHHH", sport, dport, 8 + len(payload), 0) + payload


def icmp(icmp_type: int, code: int = 0, payload: bytes = b"", *, ident: int = 0x77, seq: int = 1) -> bytes:
    """ICMP or ICMPv6 message: type, code, checksum, then ident/seq (echo) or unused/MTU (others)."""
    return struct.pack(">BBHHH", icmp_type, code, 0, ident, seq) + payload


def gre(payload: bytes = b"", protocol: int = 0x0800) -> bytes:
    return struct.pack(">HH", 0, protocol) + payload


# ----------------------------------------------------------------------------------------------- expectations

def mapped4(addr: str) -> tuple[int, int]:
    """(hi, lo) of an IPv4 address stored IPv4-mapped (::ffff:a.b.c.d)."""
    return 0, (0xFFFF << 32) | int(ipaddress.IPv4Address(addr))


def addr6(addr: str) -> tuple[int, int]:
    v = int(ipaddress.IPv6Address(addr))
    return v >> 64, v & ((1 << 64) - 1)


# ----------------------------------------------------------------------------------------------- decoder input

@dataclass
class Frame:
    """One frame for the decoder: its bytes, link type, and optionally a wire length larger than the bytes."""

    data: bytes
    linktype: int = 1
    wirelen: int | None = None
    ts_ns: int = 1_700_000_000_000_000_000
    iface: int = 0


def frames_buffer(frames, *, lead: bytes = b"\xee" * 5, gap: bytes = b"\xee" * 3, tail: bytes = b"\xee" * 64):
    """(buf, FRAME array) holding `frames` (Frame objects or (linktype, data) pairs) at non-zero, unaligned offsets,
    with filler bytes between and after them (so a read past a frame's caplen sees filler, not zeros)."""
    items = [f if isinstance(f, Frame) else Frame(f[1], f[0]) for f in frames]
    out = np.zeros(len(items), FRAME_DTYPE)
    parts = [lead]
    pos = len(lead)
    for i, f in enumerate(items):
        out[i]["offset"] = pos
        out[i]["caplen"] = len(f.data)
        out[i]["wirelen"] = len(f.data) if f.wirelen is None else f.wirelen
        out[i]["ts_ns"] = f.ts_ns
        out[i]["linktype"] = f.linktype
        out[i]["iface"] = f.iface
        parts.append(f.data)
        parts.append(gap)
        pos += len(f.data) + len(gap)
    parts.append(tail)
    return np.frombuffer(b"".join(parts), np.uint8).copy(), out


# ----------------------------------------------------------------------------------------------- reading back

@dataclass(frozen=True)
class ReadFrame:
    data: bytes
    caplen: int
    wirelen: int
    ts_ns: int
    linktype: int
    iface: int


def read_capture(path, **kwargs):
    """All frames of a capture as ReadFrame values (copied out of each chunk) and the reader's stats."""
    from egressguard.capture import CaptureFile

    out = []
    with CaptureFile(str(path), **kwargs) as cf:
        for chunk in cf.chunks():
            buf = chunk.buf
            for f in chunk.frames:
                off, cap = int(f["offset"]), int(f["caplen"])
                out.append(ReadFrame(bytes(buf[off:off + cap]), cap, int(f["wirelen"]), int(f["ts_ns"]),
                                     int(f["linktype"]), int(f["iface"])))
        stats = cf.stats
    return out, stats
