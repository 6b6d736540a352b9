"""numba kernel: raw frames -> PACKET rows (link layer, IPv4/IPv6 with extension headers, TCP/UDP/ICMP).

Every frame yields exactly one PACKET row; frames that carry no IP or cannot be decoded keep a status bit instead of
disappearing, so the caller can count them.
"""
from __future__ import annotations

import numpy as np
from numba import njit

# PacketStatus bits (schema.PacketStatus), repeated as plain ints for the kernel.
SNAPLEN_CUT = 1
NOT_IP = 2
UNDECODABLE = 4
FRAGMENT = 8
LATER_FRAGMENT = 16
HEADERS_CUT = 32

ETH_IPV4 = 0x0800
ETH_IPV6 = 0x86DD
ETH_VLAN_TAGS = (0x8100, 0x88A8, 0x9100)  # 802.1Q, 802.1ad, pre-standard QinQ
ETH_PPPOE_SESSION = 0x8864
PPP_IPV4 = 0x0021  # RFC 1332
PPP_IPV6 = 0x0057  # RFC 5072
IPV4_MAPPED_HI = np.uint64(0)
IPV4_MAPPED_LO_PREFIX = np.uint64(0xFFFF) << np.uint64(32)  # ::ffff:0:0/96 (RFC 4291 2.5.5.2)
MAX_VLAN_TAGS = 4
MAX_IPV6_EXT_HEADERS = 8
FRAG_CACHE_SIZE = 4096  # first-fragment port memory (power of two)
# frag_cache columns: the datagram's key (both addresses, ident << 8 | key protocol) and what the first fragment
# told (upper-layer protocol << 32 | sport << 16 | dport)
FC_SRC_HI, FC_SRC_LO, FC_DST_HI, FC_DST_LO, FC_TAG, FC_VALUE = 0, 1, 2, 3, 4, 5
FRAG_CACHE_COLS = 6

# counters[] indices
C_PACKETS = 0
C_WIRE_BYTES = 1
C_CAPTURED_BYTES = 2
C_SNAPLEN_CUT = 3
C_NOT_IP = 4
C_UNDECODABLE = 5
C_HEADERS_CUT = 6
C_FRAGMENTS = 7
C_FIRST_NS = 8
C_LAST_NS = 9
N_COUNTERS = 10


@njit(cache=True, nogil=True, inline="always")
def _be16(buf, i):
    return (np.uint32(buf[i]) << 8) | np.uint32(buf[i + 1])


@njit(cache=True, nogil=True, inline="always")
def _be32(buf, i):
    return (np.uint32(buf[i]) << 24) | (np.uint32(buf[i + 1]) << 16) | (np.uint32(buf[i + 2]) << 8) | np.uint32(buf[i + 3])


@njit(cache=True, nogil=True, inline="always")
def _be64(buf, i):
    v = np.uint64(0)
    for k in range(8):
        v = (v << np.uint64(8)) | np.uint64(buf[i + k])
    return v


@njit(cache=True, nogil=True, inline="always")
def _mac(buf, i):
    v = np.uint64(0)
    for k in range(6):
        v = (v << np.uint64(8)) | np.uint64(buf[i + k])
    return v


@njit(cache=True, nogil=True)
def icmp_ports(proto, icmp_type, icmp_code):
    """(sport, dport) for an ICMP/ICMPv6 message, as Community ID v1 maps them: two-way message types pair a
    request with its reply (dport = counterpart type) so both land in one flow; other types use the code."""
    counterpart = -1
    if proto == 1:
        if icmp_type == 8:
            counterpart = 0
        elif icmp_type == 0:
            counterpart = 8
        elif icmp_type == 13:
            counterpart = 14
        elif icmp_type == 14:
            counterpart = 13
        elif icmp_type == 15:
            counterpart = 16
        elif icmp_type == 16:
            counterpart = 15
        elif icmp_type == 10:
            counterpart = 9
        elif icmp_type == 9:
            counterpart = 10
        elif icmp_type == 17:
            counterpart = 18
        elif icmp_type == 18:
            counterpart = 17
    else:
        if icmp_type == 128:
            counterpart = 129
        elif icmp_type == 129:
            counterpart = 128
        elif icmp_type == 133:
            counterpart = 134
        elif icmp_type == 134:
            counterpart = 133
        elif icmp_type == 135:
            counterpart = 136
        elif icmp_type == 136:
            counterpart = 135
        elif icmp_type == 130:
            counterpart = 131
        elif icmp_type == 131:
            counterpart = 130
        elif icmp_type == 139:
            counterpart = 140
        elif icmp_type == 140:
            counterpart = 139
        elif icmp_type == 144:
            counterpart = 145
        elif icmp_type == 145:
            counterpart = 144
    if counterpart >= 0:
        return icmp_type, counterpart
    return icmp_type, icmp_code


@njit(cache=True, nogil=True)
def _frag_slot(src_hi, src_lo, dst_hi, dst_lo, tag):
    h = (src_lo * np.uint64(0x9E3779B97F4A7C15)) ^ (dst_lo + tag * np.uint64(0xBF58476D1CE4E5B9))
    h ^= (src_hi * np.uint64(0x94D049BB133111EB)) ^ (dst_hi * np.uint64(0xD6E8FEB86659FD93))
    h ^= h >> np.uint64(29)
    h *= np.uint64(0x9E3779B97F4A7C15)
    h ^= h >> np.uint64(32)
    return np.int64(h & np.uint64(FRAG_CACHE_SIZE - 1))


@njit(cache=True, nogil=True)
def decode_frames(buf, frames, packets, frag_cache, counters):
    """Decode frames[i] into packets[i] for every i and add up what was seen.

    Args:
        buf: uint8 array holding the frames' bytes (FRAME.offset indexes it).
        frames: FRAME array, shape (n,).
        packets: PACKET array, shape (>= n,); rows 0..n-1 are overwritten.
        frag_cache: uint64 array, shape (FRAG_CACHE_SIZE, FRAG_CACHE_COLS), columns FC_*: per slot the datagram key
            (full source and destination address, ident << 8 | key protocol) and the first fragment's upper-layer
            protocol and ports, so later fragments join their flow. The key protocol is the IPv4 protocol field, or
            for IPv6 the fragment header's next header (later fragments cannot see past it). Mutated; keep it
            across calls.
        counters: int64 array, shape (N_COUNTERS,), indexed by C_* constants; added to (min/max time updated).
    """
    n = frames.shape[0]
    for i in range(n):
        fr = frames[i]
        p = packets[i]
        p.ts_ns = fr.ts_ns
        p.wire_bytes = fr.wirelen
        p.iface = fr.iface
        p.src_hi = 0
        p.src_lo = 0
        p.dst_hi = 0
        p.dst_lo = 0
        p.src_mac = 0
        p.dst_mac = 0
        p.tcp_seq = 0
        p.payload_bytes = 0
        p.payload_offset = 0
        p.payload_caplen = 0
        p.sport = 0
        p.dport = 0
        p.vlan = 0
        p.proto = 0
        p.tcp_flags = 0
        p.ip_version = 0
        status = 0
        if fr.caplen < fr.wirelen:
            status |= SNAPLEN_CUT
        pos = np.int64(fr.offset)
        end = pos + np.int64(fr.caplen)
        lt = fr.linktype
        ethertype = -1
        bad = False
        if lt == 1:  # Ethernet
            if end - pos < 14:
                bad = True
            else:
                p.dst_mac = _mac(buf, pos)
                p.src_mac = _mac(buf, pos + 6)
                ethertype = _be16(buf, pos + 12)
                pos += 14
        elif lt == 113:  # Linux cooked v1: pkttype(2) hatype(2) halen(2) addr(8) protocol(2)
            if end - pos < 16:
                bad = True
            else:
                if _be16(buf, pos + 4) == 6:
                    p.src_mac = _mac(buf, pos + 6)
                ethertype = _be16(buf, pos + 14)
                pos += 16
        elif lt == 276:  # Linux cooked v2: protocol(2) rsv(2) ifindex(4) hatype(2) pkttype(1) halen(1) addr(8)
            if end - pos < 20:
                bad = True
            else:
                ethertype = _be16(buf, pos)
                if buf[pos + 11] == 6:
                    p.src_mac = _mac(buf, pos + 12)
                pos += 20
        elif lt == 101 or lt == 12 or lt == 14:  # raw IP, version from the first nibble
            if end - pos < 1:
                bad = True
            else:
                v = buf[pos] >> 4
                if v == 4:
                    ethertype = ETH_IPV4
                elif v == 6:
                    ethertype = ETH_IPV6
                else:  # the link carries nothing but IP: another version is a broken packet, not "not IP"
                    bad = True
        elif lt == 228:
            ethertype = ETH_IPV4
        elif lt == 229:
            ethertype = ETH_IPV6
        elif lt == 0 or lt == 108:  # BSD loopback: 4-byte address family, host order (0) or network order (108)
            if end - pos < 4:
                bad = True
            else:
                if lt == 108:
                    fam = _be32(buf, pos)
                elif buf[pos] != 0:
                    fam = np.uint32(buf[pos]) | (np.uint32(buf[pos + 1]) << 8)
                else:
                    fam = _be32(buf, pos)
                pos += 4
                # AF_INET is 2 everywhere; AF_INET6 is 24 (NetBSD/OpenBSD), 28 (FreeBSD), 30 (macOS), 10 (Linux)
                if fam == 2:
                    ethertype = ETH_IPV4
                elif fam == 24 or fam == 28 or fam == 30 or fam == 10:
                    ethertype = ETH_IPV6
                else:
                    ethertype = -2
        else:
            bad = True
        # VLAN tags and PPPoE, on any link type that produced an EtherType
        tags = 0
        while not bad and tags < MAX_VLAN_TAGS and (ethertype == 0x8100 or ethertype == 0x88A8 or ethertype == 0x9100):
            if end - pos < 4:
                bad = True
                break
            if tags == 0:
                p.vlan = _be16(buf, pos) & 0x0FFF
            ethertype = _be16(buf, pos + 2)
            pos += 4
            tags += 1
        if not bad and ethertype == ETH_PPPOE_SESSION:
            if end - pos < 8:
                bad = True
            else:
                ppp = _be16(buf, pos + 6)
                pos += 8
                ethertype = ETH_IPV4 if ppp == PPP_IPV4 else (ETH_IPV6 if ppp == PPP_IPV6 else -2)
        if bad:
            p.status = status | UNDECODABLE
            continue
        if ethertype != ETH_IPV4 and ethertype != ETH_IPV6:
            p.status = status | NOT_IP
            continue

        # ---- network layer
        l4 = np.int64(0)
        ip_end = np.int64(0)
        proto = 0
        later_fragment = False
        first_fragment = False
        frag_ident = np.uint32(0)
        frag_key_proto = 0
        if ethertype == ETH_IPV4:
            if end - pos < 20:
                p.status = status | HEADERS_CUT | (UNDECODABLE if fr.caplen >= fr.wirelen else 0)
                continue
            if (buf[pos] >> 4) != 4:
                p.status = status | UNDECODABLE
                continue
            ihl = np.int64(buf[pos] & 0x0F) * 4
            total = np.int64(_be16(buf, pos + 2))
            if ihl < 20 or (total != 0 and total < ihl):
                p.status = status | UNDECODABLE
                continue
            if total == 0:  # TSO/GSO captures on Linux leave total length 0: use what the frame holds
                total = end - pos
            p.ip_version = 4
            p.src_hi = IPV4_MAPPED_HI
            p.src_lo = IPV4_MAPPED_LO_PREFIX | np.uint64(_be32(buf, pos + 12))
            p.dst_hi = IPV4_MAPPED_HI
            p.dst_lo = IPV4_MAPPED_LO_PREFIX | np.uint64(_be32(buf, pos + 16))
            proto = buf[pos + 9]
            frag = _be16(buf, pos + 6)
            frag_ident = np.uint32(_be16(buf, pos + 4))
            frag_key_proto = proto
            if (frag & 0x1FFF) != 0:
                later_fragment = True
            elif (frag & 0x2000) != 0:
                first_fragment = True
            l4 = pos + ihl
            ip_end = pos + total
        else:
            if end - pos < 40:
                p.status = status | HEADERS_CUT | (UNDECODABLE if fr.caplen >= fr.wirelen else 0)
                continue
            if (buf[pos] >> 4) != 6:
                p.status = status | UNDECODABLE
                continue
            p.ip_version = 6
            p.src_hi = _be64(buf, pos + 8)
            p.src_lo = _be64(buf, pos + 16)
            p.dst_hi = _be64(buf, pos + 24)
            p.dst_lo = _be64(buf, pos + 32)
            plen = np.int64(_be16(buf, pos + 4))
            ip_end = pos + 40 + plen if plen != 0 else end  # 0 = jumbogram (RFC 2675) or TSO
            nh = buf[pos + 6]
            l4 = pos + 40
            cut = False
            for _ in range(MAX_IPV6_EXT_HEADERS):
                if nh == 0 or nh == 43 or nh == 60 or nh == 44 or nh == 51 or nh == 135:
                    if end - l4 < 8:
                        cut = True
                        break
                    nxt = buf[l4]
                    if nh == 44:  # fragment header (RFC 8200 4.5)
                        off_m = _be16(buf, l4 + 2)
                        frag_ident = _be32(buf, l4 + 4)
                        frag_key_proto = nxt
                        if (off_m >> 3) != 0:
                            later_fragment = True
                        elif (off_m & 1) != 0:
                            first_fragment = True
                        hlen = 8
                    elif nh == 51:  # AH counts in 4-byte units (RFC 4302)
                        hlen = (np.int64(buf[l4 + 1]) + 2) * 4
                    else:
                        hlen = (np.int64(buf[l4 + 1]) + 1) * 8
                    nh = nxt
                    l4 += hlen
                    if later_fragment:
                        break
                else:
                    break
            if cut:
                p.status = status | HEADERS_CUT
                continue
            proto = nh
        p.proto = proto
        if l4 > ip_end:
            p.status = status | UNDECODABLE
            p.ip_version = 0  # undecodable rows are counted, never flows (the flow table skips version 0)
            continue
        frag_tag = (np.uint64(frag_ident) << np.uint64(8)) | np.uint64(frag_key_proto)
        if first_fragment or later_fragment:
            status |= FRAGMENT
        if later_fragment:
            status |= LATER_FRAGMENT
            slot = _frag_slot(p.src_hi, p.src_lo, p.dst_hi, p.dst_lo, frag_tag)
            if (frag_cache[slot, FC_TAG] == frag_tag and frag_cache[slot, FC_SRC_LO] == p.src_lo
                    and frag_cache[slot, FC_DST_LO] == p.dst_lo and frag_cache[slot, FC_SRC_HI] == p.src_hi
                    and frag_cache[slot, FC_DST_HI] == p.dst_hi):
                value = frag_cache[slot, FC_VALUE]
                p.proto = np.uint8(value >> np.uint64(32))
                p.sport = np.uint16((value >> np.uint64(16)) & np.uint64(0xFFFF))
                p.dport = np.uint16(value & np.uint64(0xFFFF))
            p.payload_bytes = np.uint32(ip_end - l4)
            p.status = status
            continue

        # ---- transport layer
        hdr = 0
        if proto == 6:
            hdr = 20
            if end - l4 < 20:
                p.status = status | HEADERS_CUT
                continue
            p.sport = _be16(buf, l4)
            p.dport = _be16(buf, l4 + 2)
            p.tcp_seq = _be32(buf, l4 + 4)
            hdr = (buf[l4 + 12] >> 4) * 4
            p.tcp_flags = buf[l4 + 13]
            if hdr < 20:
                p.status = status | UNDECODABLE
                p.ip_version = 0
                continue
        elif proto == 17 or proto == 136:  # UDP, UDP-Lite
            hdr = 8
            if end - l4 < 8:
                p.status = status | HEADERS_CUT
                continue
            p.sport = _be16(buf, l4)
            p.dport = _be16(buf, l4 + 2)
        elif proto == 1 or proto == 58:
            hdr = 8
            if end - l4 < 2:
                p.status = status | HEADERS_CUT
                continue
            sp, dp = icmp_ports(proto, np.uint32(buf[l4]), np.uint32(buf[l4 + 1]))
            p.sport = sp
            p.dport = dp
        payload_start = l4 + hdr
        if payload_start > ip_end:
            p.status = status | UNDECODABLE
            p.ip_version = 0
            continue
        p.payload_bytes = np.uint32(ip_end - payload_start)
        p.payload_offset = np.uint32(payload_start)
        avail = min(ip_end, end) - payload_start
        p.payload_caplen = np.uint32(avail) if avail > 0 else 0
        if first_fragment:
            slot = _frag_slot(p.src_hi, p.src_lo, p.dst_hi, p.dst_lo, frag_tag)
            frag_cache[slot, FC_SRC_HI] = p.src_hi
            frag_cache[slot, FC_SRC_LO] = p.src_lo
            frag_cache[slot, FC_DST_HI] = p.dst_hi
            frag_cache[slot, FC_DST_LO] = p.dst_lo
            frag_cache[slot, FC_TAG] = frag_tag
            frag_cache[slot, FC_VALUE] = ((np.uint64(proto) << np.uint64(32)) | (np.uint64(p.sport) << np.uint64(16))
                                          | np.uint64(p.dport))
        p.status = status
    _count(frames, packets, counters)


@njit(cache=True, nogil=True)
def _count(frames, packets, counters):
    for i in range(frames.shape[0]):
        st = packets[i].status
        counters[C_PACKETS] += 1
        counters[C_WIRE_BYTES] += frames[i].wirelen
        counters[C_CAPTURED_BYTES] += frames[i].caplen
        if st & SNAPLEN_CUT:
            counters[C_SNAPLEN_CUT] += 1
        if st & NOT_IP:
            counters[C_NOT_IP] += 1
        if st & UNDECODABLE:
            counters[C_UNDECODABLE] += 1
        if st & HEADERS_CUT:
            counters[C_HEADERS_CUT] += 1
        if st & FRAGMENT:
            counters[C_FRAGMENTS] += 1
        ts = frames[i].ts_ns
        if counters[C_PACKETS] == 1 or ts < counters[C_FIRST_NS]:
            counters[C_FIRST_NS] = ts
        if counters[C_PACKETS] == 1 or ts > counters[C_LAST_NS]:
            counters[C_LAST_NS] = ts
