#!/usr/bin/env python3
"""Deterministic generator of a large, mixed classic-pcap capture for benchmarks.

    python benchmarks/make_capture.py OUT.pcap [--packets N] [--flows F] [--seed S] [--snaplen L] [--verify]

or, from Python, ``make_capture(path, packets, flows, seed)``.

The file is classic pcap (little-endian, microsecond timestamps, LINKTYPE_ETHERNET) holding exactly `packets`
frames that belong to exactly `flows` distinct bidirectional 5-tuples:

* IPv4 ~80 % / IPv6 ~20 % of flows; TCP ~75 % / UDP ~25 % of packets (TCP ~65 % of flows).
* TCP flows: SYN, SYN-ACK, ACK, data both ways (bulk downloads, uploads, interactive sessions), then FIN-ACK,
  FIN-ACK, ACK. Sequence and acknowledgement numbers are consistent; ~80 % of flows use the timestamp option.
  Ports 443, 80, 8080, 22, 3333 (stratum) and others; the first payload in each direction of ports 22, 443, 80,
  8080 and 3333 starts like the real protocol (SSH banner, TLS record, HTTP, stratum JSON).
* UDP flows: DNS exchanges (2 or 4 packets) and QUIC / NTP / other streams.
* Sizes: many 54-66-byte bare ACKs (received frames are padded to the 60-byte Ethernet minimum), a mode at
  1514-byte full segments, small DNS-like UDP, mid-size requests and responses.
* Heavy-tailed flow sizes (Pareto): many short flows and a few with tens of thousands of packets.
* Timestamps increase over 10 minutes from 2023-11-14 22:13:20 UTC; flows start at random times and interleave.

Lengths are consistent everywhere (IPv4 total length and header checksum, IPv6 payload length, TCP data offset,
UDP length); TCP/UDP checksums are left 0. Same arguments -> byte-identical file. Everything is numpy-vectorised:
the packets are planned flow by flow as arrays, sorted by time, and written in blocks of 64 Ki records.
"""
from __future__ import annotations

import argparse
import os
import struct
import sys
import time

import numpy as np

DEFAULT_PACKETS = 5_000_000
DEFAULT_FLOWS = 200_000
DEFAULT_SEED = 1
DEFAULT_SNAPLEN = 65535
LINKTYPE_ETHERNET = 1
START_S = 1_700_000_000  # 2023-11-14 22:13:20 UTC
DURATION_S = 600.0
BLOCK = 1 << 16  # records per write block

TCP_DOWN, TCP_UP, TCP_INTER, UDP_DNS, UDP_OTHER = range(5)
MIN_TCP = 6  # SYN, SYN-ACK, ACK, FIN-ACK, FIN-ACK, ACK
MIN_UDP = 2

FIN, SYN, PSH, ACK = 0x01, 0x02, 0x08, 0x10
GATEWAY_MAC = 0x001A2B3C4D5E
CLIENT_MAC_BASE = 0x02005E000000  # locally administered
V6_CLIENT_HI = 0xFD00656772640001  # fd00:6567:7264:1::/64
V6_SERVER_PREFIX = 0x26001F18  # 2600:1f18::/32
GOLDEN64 = 0x9E3779B97F4A7C15
PUBLIC_FIRST_OCTETS = np.array([3, 13, 18, 23, 34, 35, 45, 52, 54, 64, 104, 140, 142, 151, 157, 185, 199, 203, 209],
                               np.uint32)

# Payload openings, keyed by (server port, direction 0 = client->server / 1 = server->client).
PREFIXES = [
    b"",
    b"SSH-2.0-OpenSSH_9.6p1 Ubuntu-3ubuntu13\r\n",
    b"SSH-2.0-OpenSSH_8.9p1 Debian-3\r\n",
    b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03",
    b"\x16\x03\x03\x00\x7a\x02\x00\x00\x76\x03\x03",
    b'{"id":1,"method":"mining.subscribe","params":["cpuminer/2.5.1"]}\n',
    b'{"id":1,"result":[[["mining.notify","ae6812eb4cd7735a302a8a9dd95cf71f"]],"08000002",4],"error":null}\n',
    b"GET /index.html HTTP/1.1\r\nHost: www.example.com\r\n",
    b"HTTP/1.1 200 OK\r\n",
]
PREFIX_BY_PORT = {22: (1, 2), 443: (3, 4), 3333: (5, 6), 80: (7, 8), 8080: (7, 8)}


# ---------------------------------------------------------------------------------------------------- planning
def _heavy_tail(rng: np.random.Generator, count: int, total: int, minimum: int, alpha: float,
                max_share: float = 0.03) -> np.ndarray:
    """`count` integer sizes >= minimum summing to exactly `total`, Pareto(alpha)-distributed above the minimum."""
    sizes = np.full(count, minimum, np.int64)
    extra = total - minimum * count
    if count == 0 or extra <= 0:
        return sizes
    w = rng.pareto(alpha, count) + 1.0
    w = np.minimum(w, max_share * w.sum())  # keep any single flow below a few % of the capture
    alloc = np.floor(extra * (w / w.sum())).astype(np.int64)
    rest = int(extra - alloc.sum())  # 0 <= rest < count
    if rest:
        alloc[rng.choice(count, rest, replace=False)] += 1
    return sizes + alloc


def _segmented_cumsum(x: np.ndarray, first: np.ndarray, n: np.ndarray) -> np.ndarray:
    """Inclusive cumulative sum of x restarting at every flow (flows are contiguous runs: first index, length)."""
    c = np.cumsum(x, dtype=np.int64)
    base = np.where(first > 0, c[np.maximum(first - 1, 0)], 0)
    return c - np.repeat(base, n)


def _public_v4_pool(rng: np.random.Generator, size: int) -> np.ndarray:
    pool = np.zeros(0, np.uint32)
    while len(pool) < size:
        more = (rng.choice(PUBLIC_FIRST_OCTETS, 2 * size) << np.uint32(24)) | \
            rng.integers(1 << 8, 1 << 24, 2 * size, dtype=np.uint32)
        pool = np.unique(np.concatenate([pool, more]))
    return rng.permutation(pool)[:size]


def plan(packets: int, flows: int, seed: int) -> dict:
    """Per-flow and per-packet arrays of the capture (packets in flow-major order) and the time order."""
    if flows < 1:
        raise ValueError("flows must be >= 1")
    rng = np.random.default_rng(seed)
    F = flows

    # --- flow kinds and packet budgets
    f_udp = int(round(F * 0.35)) if F > 1 else 0
    f_tcp = F - f_udp
    f_dns = int(round(f_udp * 0.6))
    f_uo = f_udp - f_dns
    dns_sizes = np.where(rng.random(f_dns) < 0.15, 4, 2).astype(np.int64)
    need = MIN_TCP * f_tcp + MIN_UDP * f_udp
    if packets < need:
        raise ValueError(f"{flows} flows need at least {need} packets (got {packets}); "
                         f"use about 25 packets per flow")
    if packets < MIN_TCP * f_tcp + int(dns_sizes.sum()) + MIN_UDP * f_uo:
        dns_sizes[:] = 2
    p_dns = int(dns_sizes.sum())
    p_uo = max(int(round(packets * 0.25)) - p_dns, MIN_UDP * f_uo) if f_uo else 0
    p_tcp = packets - p_dns - p_uo
    if p_tcp < MIN_TCP * f_tcp:
        p_tcp = MIN_TCP * f_tcp
        p_uo = packets - p_dns - p_tcp
    tcp_kind = rng.choice(np.array([TCP_DOWN, TCP_UP, TCP_INTER]), f_tcp, p=[0.70, 0.12, 0.18])
    kind = np.concatenate([tcp_kind, np.full(f_dns, UDP_DNS), np.full(f_uo, UDP_OTHER)]).astype(np.int8)
    n = np.concatenate([_heavy_tail(rng, f_tcp, p_tcp, MIN_TCP, 1.2),
                        dns_sizes,
                        _heavy_tail(rng, f_uo, p_uo, MIN_UDP, 1.1)])
    assert n.sum() == packets
    # shuffle flows so flow ids carry no meaning
    perm = rng.permutation(F)
    kind, n = kind[perm], n[perm]
    is_tcp = kind <= TCP_INTER

    # --- endpoints
    v6 = rng.random(F) < 0.2
    n_clients = int(np.clip(F // 200, 8, 4096))
    n_servers = int(np.clip(F // 20, 16, 1 << 18))
    client = rng.integers(0, n_clients, F)
    server = np.floor(n_servers * rng.random(F) ** 2.5).astype(np.int64)  # a few popular servers
    v4_pool = _public_v4_pool(rng, n_servers)
    c4 = np.uint32(0x0A140000) + (client + 1).astype(np.uint32)  # 10.20.x.y
    s4 = v4_pool[server]
    c6_lo = ((client + 1).astype(np.uint64) * np.uint64(GOLDEN64))  # odd multiplier: a bijection
    s6_hi = (np.uint64(V6_SERVER_PREFIX) << np.uint64(32)) | \
        ((server.astype(np.uint64) * np.uint64(0x9E3779B1)) & np.uint64(0xFFFFFFFF))
    s6_lo = (server.astype(np.uint64) + np.uint64(1)) * np.uint64(0xD6E8FEB86659FD93)
    client_mac = CLIENT_MAC_BASE + client.astype(np.int64)

    u = rng.random(F)
    sport = np.zeros(F, np.int64)
    high = rng.integers(1024, 32768, F)
    m = kind == TCP_DOWN
    sport[m] = np.select([u[m] < 0.75, u[m] < 0.95], [443, 80], 8080)
    m = kind == TCP_UP
    sport[m] = np.select([u[m] < 0.70, u[m] < 0.90], [443, 22], high[m])
    m = kind == TCP_INTER
    sport[m] = np.select([u[m] < 0.50, u[m] < 0.60, u[m] < 0.80], [22, 3333, 443], high[m])
    sport[kind == UDP_DNS] = 53
    m = kind == UDP_OTHER
    sport[m] = np.select([u[m] < 0.60, u[m] < 0.70, u[m] < 0.80], [443, 123, 3478], high[m])
    cport = rng.integers(32768, 61000, F)
    # distinct 5-tuples: client/server indices map one-to-one to addresses within a family, and client
    # addresses (10/8, fd00::/8) never equal server addresses, so the directed key decides uniqueness.
    for _ in range(1000):
        key = (v6.astype(np.uint64) << np.uint64(63)) | (is_tcp.astype(np.uint64) << np.uint64(62)) | \
            (client.astype(np.uint64) << np.uint64(50)) | (cport.astype(np.uint64) << np.uint64(34)) | \
            (server.astype(np.uint64) << np.uint64(16)) | sport.astype(np.uint64)
        _, first_idx = np.unique(key, return_index=True)
        dup = np.ones(F, bool)
        dup[first_idx] = False
        if not dup.any():
            break
        cport[dup] = rng.integers(32768, 61000, int(dup.sum()))
    else:
        raise RuntimeError("could not make the 5-tuples distinct")

    use_ts = is_tcp & (rng.random(F) < 0.8)
    isn = rng.integers(0, 1 << 32, (F, 2), dtype=np.int64)
    tsoff = rng.integers(0, 1 << 31, (F, 2), dtype=np.int64)
    flow_label = rng.integers(0, 1 << 20, F, dtype=np.int64)
    ttl_in = 64 - (server % 20)

    # --- flow timing (microseconds from the capture start)
    dur_total = int(DURATION_S * 1e6)
    long_flow = n > 2000
    start = np.where(long_flow, rng.random(F) * 0.25, rng.random(F) * 0.97) * DURATION_S
    rtt = np.clip(rng.lognormal(np.log(0.03), 0.8, F), 0.001, 0.5)
    gap = np.select([kind == TCP_INTER, kind == UDP_OTHER, kind == UDP_DNS], [0.3, 0.02, 0.0], 0.0005) * \
        rng.lognormal(0.0, 1.0, F)
    dur = 2 * rtt + n * gap
    start_us = (start * 1e6).astype(np.int64)
    dur_us = np.clip((dur * 1e6).astype(np.int64), n + 1000, dur_total - start_us - 1000)

    # --- packets, flow-major
    P = packets
    first = np.zeros(F, np.int64)
    first[1:] = np.cumsum(n)[:-1]
    fid = np.repeat(np.arange(F, dtype=np.int32), n)
    nf = np.repeat(n, n)
    pos = np.arange(P, dtype=np.int64) - np.repeat(first, n)
    kp = kind[fid]
    tcp_p = kp <= TCP_INTER
    v6_p = v6[fid]
    mss = np.where(v6_p, 1440, 1460) - np.where(use_ts[fid], 12, 0)
    r1 = rng.random(P)
    r2 = rng.random(P)
    dirn = np.zeros(P, np.int8)
    flags = np.zeros(P, np.uint8)
    pay = np.zeros(P, np.int64)

    # TCP bulk (download: the server sends; upload: the client sends)
    bulk = tcp_p & (kp != TCP_INTER)
    side = (kp == TCP_DOWN).astype(np.int8)  # 1 = server->client
    c0, c1, c2 = bulk & (r1 < 0.55), bulk & (r1 >= 0.55) & (r1 < 0.62), bulk & (r1 >= 0.62) & (r1 < 0.97)
    c3 = bulk & (r1 >= 0.97)
    dirn[c0 | c1] = side[c0 | c1]
    dirn[c2 | c3] = 1 - side[c2 | c3]
    pay[c0] = mss[c0]
    flags[c0] = ACK
    pay[c1] = 100 + (r2[c1] * (mss[c1] - 100)).astype(np.int64)
    pay[c3] = 50 + (r2[c3] * 550).astype(np.int64)
    flags[c1 | c3] = PSH | ACK
    flags[c2] = ACK
    # TCP interactive (SSH-like keystrokes and echoes, bigger server output now and then)
    inter = kp == TCP_INTER
    c0, c1 = inter & (r1 < 0.35), inter & (r1 >= 0.35) & (r1 < 0.70)
    c2, c3 = inter & (r1 >= 0.70) & (r1 < 0.85), inter & (r1 >= 0.85)
    dirn[c1 | c3] = 1
    pay[c0] = 20 + (r2[c0] ** 3 * 300).astype(np.int64)
    pay[c1] = 20 + (r2[c1] ** 3 * 1380).astype(np.int64)
    flags[c0 | c1] = PSH | ACK
    flags[c2 | c3] = ACK
    # the first data packet is the client's request (a full segment for uploads)
    m = tcp_p & (pos == 3) & (nf > MIN_TCP)
    dirn[m] = 0
    flags[m] = PSH | ACK
    pay[m] = np.where(kp[m] == TCP_UP, mss[m], 80 + (r2[m] ** 2 * 620).astype(np.int64))
    # handshake and teardown
    for cond, d, fl in ((pos == 0, 0, SYN), (pos == 1, 1, SYN | ACK), (pos == 2, 0, ACK),
                        (pos == nf - 3, 0, FIN | ACK), (pos == nf - 2, 1, FIN | ACK), (pos == nf - 1, 0, ACK)):
        m = tcp_p & cond
        dirn[m], flags[m], pay[m] = d, fl, 0
    # UDP: DNS query/response pairs; other UDP streams (QUIC-like big and small datagrams, NTP, STUN, ...)
    m = kp == UDP_DNS
    dirn[m] = pos[m] % 2
    pay[m] = np.where(dirn[m] == 0, 28 + (r2[m] * 32).astype(np.int64), 45 + (r2[m] ** 2 * 400).astype(np.int64))
    m = kp == UDP_OTHER
    dirn[m] = (pos[m] > 0) & (r1[m] < 0.55)
    r3 = (r1[m] * 7919.0) % 1.0
    pay[m] = np.where(r3 < 0.5, 1200 + (r2[m] * 150).astype(np.int64), 20 + (r2[m] * 180).astype(np.int64))
    m = (kp == UDP_OTHER) & (sport[fid] == 123)
    dirn[m] = pos[m] % 2
    pay[m] = 48

    # protocol openings in the first payload of each direction
    prefix = np.zeros(P, np.uint8)
    idx = np.flatnonzero(tcp_p & (pay > 0))
    _, fi = np.unique(fid[idx].astype(np.int64) * 2 + dirn[idx], return_index=True)
    firsts = idx[fi]
    sp = sport[fid[firsts]]
    for port, ids in PREFIX_BY_PORT.items():
        for d in (0, 1):
            sel = firsts[(sp == port) & (dirn[firsts] == d)]
            prefix[sel] = ids[d]
            pay[sel] = np.maximum(pay[sel], len(PREFIXES[ids[d]]))

    # TCP sequence / acknowledgement numbers
    inc = np.where(tcp_p, pay + ((flags & SYN) > 0) + ((flags & FIN) > 0), 0)
    cum = [_segmented_cumsum(np.where(dirn == d, inc, 0), first, n) for d in (0, 1)]
    d64 = dirn.astype(np.int64)
    own = np.where(d64 == 0, cum[0], cum[1]) - inc
    other = np.where(d64 == 0, cum[1], cum[0])
    seq = (isn[fid, d64] + own) & 0xFFFFFFFF
    ack = np.where((flags & ACK) > 0, (isn[fid, 1 - d64] + other) & 0xFFFFFFFF, 0)
    del cum, own, other, inc

    # packet times: exponential gaps scaled to the flow's duration, strictly increasing inside a flow
    g = rng.exponential(1.0, P)
    g[first] = 0.0
    cs = np.cumsum(g)
    cs -= np.repeat(cs[first], n)
    tot = cs[first + n - 1]
    frac = cs / np.repeat(tot, n)
    t_us = np.repeat(start_us, n) + np.floor(frac * np.repeat(dur_us - n, n)).astype(np.int64) + pos
    order = np.argsort(t_us, kind="stable")

    return dict(
        packets=P, flows=F, kind=kind, n=n, v6=v6, is_tcp=is_tcp, c4=c4, s4=s4, c6_lo=c6_lo, s6_hi=s6_hi,
        s6_lo=s6_lo, client_mac=client_mac, cport=cport, sport=sport, use_ts=use_ts, tsoff=tsoff,
        flow_label=flow_label, ttl_in=ttl_in, fid=fid, dirn=dirn, flags=flags, pay=pay, prefix=prefix,
        seq=seq.astype(np.uint32), ack=ack.astype(np.uint32), t_us=t_us, order=order,
    )


# ---------------------------------------------------------------------------------------------------- writing
def _be(values: np.ndarray, nbytes: int) -> np.ndarray:
    """(n, nbytes) uint8 big-endian bytes of integer values."""
    dt = {1: ">u1", 2: ">u2", 4: ">u4", 8: ">u8"}[nbytes]
    return np.ascontiguousarray(values).astype(dt).view(np.uint8).reshape(-1, nbytes)


def _scatter(buf: np.ndarray, start: np.ndarray, img: np.ndarray, lim: np.ndarray) -> None:
    """buf[start[i] : start[i] + lim[i]] = img[i, :lim[i]] for every row i."""
    for h in np.unique(lim):  # header lengths take a handful of values: one 2-D assignment per value
        if h > 0:
            rows = np.flatnonzero(lim == h)
            buf[start[rows, None] + np.arange(h)] = img[rows, :h]


def _tcp_options(n: int, syn: np.ndarray, ts: np.ndarray, v6: np.ndarray, tsval: np.ndarray,
                 tsecr: np.ndarray) -> np.ndarray:
    """(n, 20) option bytes; the TCP header length decides how many are used (SYN 40/32, else 32/20)."""
    opt = np.zeros((n, 20), np.uint8)
    m = syn & ts  # MSS, SACK_PERM, TS, NOP, WS (Linux order)
    opt[m, 0:4] = [2, 4, 5, 0xB4]
    opt[m & v6, 3] = 0xA0
    opt[m, 4:8] = [4, 2, 8, 10]
    opt[m, 8:12] = _be(tsval[m], 4)
    opt[m, 12:16] = _be(tsecr[m], 4)
    opt[m, 16:20] = [1, 3, 3, 7]
    m = syn & ~ts  # MSS, NOP, WS, NOP, NOP, SACK_PERM
    opt[m, 0:4] = [2, 4, 5, 0xB4]
    opt[m & v6, 3] = 0xA0
    opt[m, 4:12] = [1, 3, 3, 8, 1, 1, 4, 2]
    m = ~syn & ts  # NOP, NOP, TS
    opt[m, 0:4] = [1, 1, 8, 10]
    opt[m, 4:8] = _be(tsval[m], 4)
    opt[m, 8:12] = _be(tsecr[m], 4)
    return opt


def _write_block(f, p: dict, idx: np.ndarray, snaplen: int, pattern: np.ndarray, block_no: int) -> int:
    """Write the records of packets `idx` (in time order); returns bytes written."""
    nb = len(idx)
    fid = p["fid"][idx]
    d = p["dirn"][idx].astype(np.int64)
    out = d == 1  # server -> client
    flags = p["flags"][idx]
    pay = p["pay"][idx]
    t_us = p["t_us"][idx]
    v6 = p["v6"][fid]
    tcp = p["is_tcp"][fid]
    ts = p["use_ts"][fid]
    syn = (flags & SYN) > 0

    ip_hl = np.where(v6, 40, 20)
    l4_hl = np.select([~tcp, syn & ts, syn, ts], [8, 40, 32, 32], 20)  # UDP 8; TCP SYN 40|32, else 32|20
    hdr = 14 + ip_hl + l4_hl
    frame = hdr + pay
    frame = np.where(out, np.maximum(frame, 60), frame)  # received frames carry Ethernet padding
    caplen = np.minimum(frame, snaplen)
    rec_len = 16 + caplen
    off = np.zeros(nb, np.int64)
    off[1:] = np.cumsum(rec_len)[:-1]
    total = int(off[-1] + rec_len[-1])

    # payload bytes: a repeating pseudo-random pattern, shifted per block
    buf = np.empty(total, np.uint8)
    shift = (block_no * 7919) % (len(pattern) // 2)
    src = pattern[shift:]
    for a in range(0, total, len(src)):
        b = min(total, a + len(src))
        buf[a:b] = src[:b - a]

    # header image per record: pcap record header, Ethernet, IPv4|IPv6, TCP|UDP
    img = np.zeros((nb, 16 + 14 + 40 + 40), np.uint8)
    img[:, 0:16] = np.stack([START_S + t_us // 1_000_000, t_us % 1_000_000, caplen, frame], axis=1) \
        .astype("<u4").view(np.uint8)
    cmac = p["client_mac"][fid]
    img[:, 16:22] = _be(np.where(out, cmac, GATEWAY_MAC), 8)[:, 2:]
    img[:, 22:28] = _be(np.where(out, GATEWAY_MAC, cmac), 8)[:, 2:]
    img[:, 28:30] = _be(np.where(v6, 0x86DD, 0x0800), 2)
    proto = np.where(tcp, 6, 17)
    ttl = np.where(out, p["ttl_in"][fid], 64)

    # L4 header (40 bytes max), placed after the IP header
    sp, cp = p["sport"][fid], p["cport"][fid]
    l4 = np.zeros((nb, 40), np.uint8)
    l4[:, 0:2] = _be(np.where(out, sp, cp), 2)
    l4[:, 2:4] = _be(np.where(out, cp, sp), 2)
    t = np.flatnonzero(tcp)
    if len(t):
        l4[t, 4:8] = _be(p["seq"][idx[t]], 4)
        l4[t, 8:12] = _be(p["ack"][idx[t]], 4)
        l4[t, 12] = (l4_hl[t] // 4) << 4
        l4[t, 13] = flags[t]
        win = np.where(syn[t], np.where(out[t], 65160, 64240), np.where(out[t], 2049, 501))
        l4[t, 14:16] = _be(win, 2)
        tsoff = p["tsoff"][fid[t]]
        dt = d[t]
        ms = t_us[t] // 1000
        tsval = (ms + tsoff[np.arange(len(t)), dt]) & 0xFFFFFFFF
        tsecr = np.where(flags[t] == SYN, 0, (ms - 15 + tsoff[np.arange(len(t)), 1 - dt]) & 0xFFFFFFFF)
        l4[t, 20:40] = _tcp_options(len(t), syn[t], ts[t], v6[t], tsval, tsecr)
    u = np.flatnonzero(~tcp)
    if len(u):
        l4[u, 4:6] = _be(8 + pay[u], 2)

    r = np.flatnonzero(~v6)
    if len(r):
        ip = np.zeros((len(r), 20), np.uint8)
        ip[:, 0] = 0x45
        ip[:, 2:4] = _be(ip_hl[r] + l4_hl[r] + pay[r], 2)
        ip[:, 4:6] = _be(((idx[r] * 2654435761) >> 7) & 0xFFFF, 2)
        ip[:, 6] = 0x40  # DF
        ip[:, 8] = ttl[r]
        ip[:, 9] = proto[r]
        c4, s4 = p["c4"][fid[r]], p["s4"][fid[r]]
        ip[:, 12:16] = _be(np.where(out[r], s4, c4), 4)
        ip[:, 16:20] = _be(np.where(out[r], c4, s4), 4)
        s = (ip[:, 0::2].astype(np.uint32) << 8 | ip[:, 1::2]).sum(axis=1)
        s = (s & 0xFFFF) + (s >> 16)
        s = (s & 0xFFFF) + (s >> 16)
        ip[:, 10:12] = _be(~s & 0xFFFF, 2)
        img[r, 30:50] = ip
        img[r, 50:90] = l4[r]
    r = np.flatnonzero(v6)
    if len(r):
        ip = np.zeros((len(r), 40), np.uint8)
        ip[:, 0:4] = _be((6 << 28) | p["flow_label"][fid[r]], 4)
        ip[:, 4:6] = _be(l4_hl[r] + pay[r], 2)
        ip[:, 6] = proto[r]
        ip[:, 7] = ttl[r]
        c_hi = np.full(len(r), V6_CLIENT_HI, np.uint64)
        c_lo = p["c6_lo"][fid[r]]
        s_hi, s_lo = p["s6_hi"][fid[r]], p["s6_lo"][fid[r]]
        o = out[r]
        ip[:, 8:16] = _be(np.where(o, s_hi, c_hi), 8)
        ip[:, 16:24] = _be(np.where(o, s_lo, c_lo), 8)
        ip[:, 24:32] = _be(np.where(o, c_hi, s_hi), 8)
        ip[:, 32:40] = _be(np.where(o, c_lo, s_lo), 8)
        img[r, 30:70] = ip
        img[r, 70:110] = l4[r]
    _scatter(buf, off, img, 16 + np.minimum(hdr, caplen))

    # protocol openings at the start of the payload
    pre = p["prefix"][idx]
    pay_start = off + 16 + hdr
    room = np.clip(caplen - hdr, 0, None)
    for k in np.unique(pre[pre > 0]):
        s = np.frombuffer(PREFIXES[k], np.uint8)
        rows = np.flatnonzero(pre == k)
        _scatter(buf, pay_start[rows], np.broadcast_to(s, (len(rows), len(s))), np.minimum(room[rows], len(s)))
    # Ethernet padding is zeros
    pad = frame - hdr - pay
    rows = np.flatnonzero(pad > 0)
    if len(rows):
        pstart = off[rows] + 16 + hdr[rows] + pay[rows]
        plim = np.clip(caplen[rows] - hdr[rows] - pay[rows], 0, None)
        _scatter(buf, pstart, np.zeros((len(rows), 8), np.uint8), np.minimum(plim, pad[rows]))

    f.write(memoryview(buf))
    return total


def make_capture(path: str | os.PathLike, packets: int = DEFAULT_PACKETS, flows: int = DEFAULT_FLOWS,
                 seed: int = DEFAULT_SEED, snaplen: int = DEFAULT_SNAPLEN, quiet: bool = True) -> dict:
    """Write the capture to `path`; returns what was written (packets, flows, bytes, seconds and mix figures)."""
    if packets < 1:
        raise ValueError("packets must be >= 1")
    if not 64 <= snaplen <= 262144:
        raise ValueError("snaplen must be 64..262144")
    t0 = time.perf_counter()
    p = plan(packets, flows, seed)
    t_plan = time.perf_counter() - t0
    pattern = np.random.default_rng([seed, 0xCAFE]).integers(0, 256, 1 << 20, dtype=np.uint8)
    written = 24
    tmp = f"{path}.part"
    with open(tmp, "wb", buffering=0) as f:
        f.write(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, snaplen, LINKTYPE_ETHERNET))
        order = p["order"]
        for b, a in enumerate(range(0, packets, BLOCK)):
            written += _write_block(f, p, order[a:a + BLOCK], snaplen, pattern, b)
    os.replace(tmp, path)
    seconds = time.perf_counter() - t0
    fid, pay = p["fid"], p["pay"]
    tcp_pkts = int(np.count_nonzero(p["is_tcp"][fid]))
    stats = dict(
        path=str(path), packets=packets, flows=flows, seed=seed, snaplen=snaplen, bytes=written,
        seconds=round(seconds, 3), plan_seconds=round(t_plan, 3),
        tcp_packet_share=round(tcp_pkts / packets, 4),
        ipv6_flow_share=round(float(p["v6"].mean()), 4),
        tcp_flows=int(p["is_tcp"].sum()),
        largest_flow_packets=int(p["n"].max()),
        median_flow_packets=float(np.median(p["n"])),
        mean_frame_bytes=round((written - 24) / packets - 16, 1),
        duration_s=round(float(p["t_us"].max() - p["t_us"].min()) / 1e6, 3),
    )
    if not quiet:
        print(f"wrote {path}: {packets:,} packets, {flows:,} flows, {written:,} bytes "
              f"({written / 2**20:,.1f} MiB) in {seconds:.1f} s "
              f"({packets / seconds / 1e6:.2f} M packets/s; planning {t_plan:.1f} s)")
        print(f"  TCP {stats['tcp_packet_share']:.1%} of packets, {stats['tcp_flows']:,} TCP flows; "
              f"IPv6 {stats['ipv6_flow_share']:.1%} of flows; mean frame {stats['mean_frame_bytes']} B; "
              f"flow sizes median {stats['median_flow_packets']:g}, max {stats['largest_flow_packets']:,} packets; "
              f"{stats['duration_s']:.0f} s of traffic")
    return stats


# ---------------------------------------------------------------------------------------------------- checking
def verify_capture(path: str | os.PathLike, limit: int | None = None) -> dict:
    """Parse the capture with dpkt and check it: every frame is Ethernet / IPv4|IPv6 / TCP|UDP with consistent
    lengths, timestamps never go back, and every TCP flow starts with a SYN. Returns counts and the problems
    found (at most 20 listed)."""
    import dpkt

    problems: list[str] = []
    flows: dict[tuple, int] = {}
    frames = 0
    last_ts = -1.0
    sizes = np.zeros(1515, np.int64)

    def bad(msg: str) -> None:
        if len(problems) < 20:
            problems.append(f"frame {frames}: {msg}")

    with open(path, "rb") as fh:
        reader = dpkt.pcap.Reader(fh)
        if reader.datalink() != LINKTYPE_ETHERNET:
            problems.append(f"linktype {reader.datalink()}")
        snaplen = reader.snaplen
        for ts, buf in reader:
            frames += 1
            whole = len(buf) < snaplen  # a frame of exactly snaplen bytes may have been cut: skip length checks
            if ts < last_ts:
                bad("timestamp goes back")
            last_ts = ts
            sizes[min(len(buf), 1514)] += 1
            eth = dpkt.ethernet.Ethernet(buf)
            ip = eth.data
            if isinstance(ip, dpkt.ip.IP):
                if whole and ip.len != len(ip):  # dpkt trims padding to ip.len; a short frame would leave len(ip) smaller
                    bad(f"IPv4 total length {ip.len} vs {len(ip)} bytes")
                if dpkt.in_cksum(bytes(eth)[14:14 + ip.hl * 4]) != 0:
                    bad("IPv4 header checksum")
                fam = 4
            elif isinstance(ip, dpkt.ip6.IP6):
                if whole and ip.plen != len(ip) - 40:
                    bad(f"IPv6 payload length {ip.plen} vs {len(ip) - 40}")
                fam = 6
            else:
                bad(f"not IP: {type(ip).__name__}")
                continue
            l4 = ip.data
            ip_payload = ip.plen if fam == 6 else ip.len - ip.hl * 4
            if isinstance(l4, dpkt.tcp.TCP):
                if l4.off * 4 != 20 + len(l4.opts) or (whole and l4.off * 4 + len(l4.data) != ip_payload):
                    bad("TCP data offset / length")
                proto = 6
            elif isinstance(l4, dpkt.udp.UDP):
                if whole and l4.ulen != 8 + len(l4.data):
                    bad(f"UDP length {l4.ulen} vs {8 + len(l4.data)}")
                proto = 17
            else:
                bad(f"not TCP/UDP: {type(l4).__name__}")
                continue
            a, b = (ip.src, l4.sport), (ip.dst, l4.dport)
            key = (fam, proto) + ((a, b) if a <= b else (b, a))
            if key not in flows:
                flows[key] = 1
                if proto == 6 and l4.flags & 0x12 != SYN:
                    bad("TCP flow does not start with a SYN")
            else:
                flows[key] += 1
            if limit and frames >= limit:
                break
    return dict(frames=frames, flows=len(flows), problems=problems,
                bare_ack_like=int(sizes[54:67].sum()), full_1514=int(sizes[1514]),
                largest_flow=max(flows.values(), default=0))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("out", help="output pcap path")
    ap.add_argument("--packets", type=int, default=DEFAULT_PACKETS, help="packets (default %(default)s)")
    ap.add_argument("--flows", type=int, default=None,
                    help=f"bidirectional flows (default {DEFAULT_FLOWS} for the default size, else packets/25)")
    ap.add_argument("--seed", type=int, default=DEFAULT_SEED, help="random seed (default %(default)s)")
    ap.add_argument("--snaplen", type=int, default=DEFAULT_SNAPLEN,
                    help="cut frames to this many bytes (default %(default)s: no cut)")
    ap.add_argument("--verify", action="store_true", help="re-read the file with dpkt and check it (slow)")
    args = ap.parse_args(argv)
    flows = args.flows if args.flows is not None else (
        DEFAULT_FLOWS if args.packets == DEFAULT_PACKETS else max(1, args.packets // 25))
    out_dir = os.path.dirname(os.path.abspath(args.out))
    os.makedirs(out_dir, exist_ok=True)
    try:
        make_capture(args.out, args.packets, flows, args.seed, args.snaplen, quiet=False)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.verify:
        t0 = time.perf_counter()
        v = verify_capture(args.out)
        ok = not v["problems"] and v["frames"] == args.packets and v["flows"] == flows
        print(f"verify ({time.perf_counter() - t0:.1f} s): {v['frames']:,} frames, {v['flows']:,} distinct "
              f"bidirectional 5-tuples, {v['bare_ack_like']:,} frames of 54-66 B, {v['full_1514']:,} of 1514 B, "
              f"largest flow {v['largest_flow']:,} packets: {'OK' if ok else 'FAILED'}")
        for msg in v["problems"]:
            print("  " + msg)
        return 0 if ok else 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
