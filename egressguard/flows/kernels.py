"""numba kernels of the flow table: hash lookup, per-direction statistics, payload keeping, timeouts, eviction.

State lives in `TableArrays` (a NamedTuple of numpy arrays, built by flows/table.py). The hash index uses linear
probing with backward-shift deletion (no tombstones). Nothing is maintained per packet for ageing: idle sweeps and
evictions scan the compact `seen` array (last packet time per record), which costs far less than keeping an LRU
list in order on every packet. When the table is full, one scan evicts 1/EVICT_FRACTION of the flows at once: the
oldest one-way flows (one side never sent a packet: half-open SYNs, spoofed UDP/ICMP, scans) while there are that
many, else the oldest flows of any kind. Payload slots are shared the same way: one-way flows may not take the last
1/SLOT_RESERVE_FRACTION of them. So a flood of one-packet flows churns among itself and leaves answered
conversations (a tunnel pausing for seconds, an SSH banner waiting for a slot) alone. Emitted records are copied into
an output array; their payload slots stay reserved until the caller releases them, so the caller can read the kept
bytes first.
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np
from numba import njit

from egressguard.flows.conversation import (conversation_close, conversation_reset, conversation_update,
                                            update_bursts)

# meta[] indices (int64 counters and list heads)
M_LIVE = 0
M_SWEEP_POS = 1  # record index where an unfinished idle sweep continues, -1 when none is under way
M_SWEEP_NOW = 2  # the time that sweep compares against
M_FREE_TOP = 3  # number of free record indices on the free stack
M_SLOT_FREE_TOP = 4
M_EVICTIONS = 5
M_SLOT_DENIED = 6  # flows that wanted a payload slot and ended without one (see _keep_payload)
M_SKIPPED = 7  # packets with no IP addresses (not IP / undecodable), not aggregated
M_CREATED = 8
M_EVICT_BEFORE = 9  # an eviction scan under way evicts records last seen at or before this time
M_EVICT_POS = 10  # where that scan continues, -1 when none is under way
M_EVICT_ONE_WAY = 11  # 1 when that scan evicts only one-way flows, 0 when it evicts flows of any kind
META_SIZE = 12

EVICT_FRACTION = 16  # a full table frees capacity/16 records per eviction scan (amortises the O(capacity) scan)
# Payload slots kept back for two-way flows: a one-way flow (a spoofed UDP/ICMP flood, a SYN nobody answered, a scan)
# may take a slot only while more than 1/SLOT_RESERVE_FRACTION of them are free, so one-packet noise cannot hold every
# slot when a real conversation's first bytes (an SSH banner, a ClientHello) arrive. Refused, such a flow waits: it
# takes a slot once answered, and counts as denied only if it ends without one. (A capture that sees one direction
# only can use 3/4 of the slots.) Engineer E's flood measurements, benchmarks/bench_flood.py.
SLOT_RESERVE_FRACTION = 4

# params[] indices (int64)
P_TCP_IDLE_NS = 0
P_OTHER_IDLE_NS = 1
P_ACTIVE_NS = 2  # 0 disables the active timeout
P_CLOSED_IDLE_NS = 3  # TCP connections that saw RST, or FIN both ways
PARAMS_SIZE = 4

# FlowFlag / EndReason values (schema.py), as plain ints for the kernels
F_SAW_SYN = 1
F_SLOT_DENIED = 2
F_CONTINUED = 4
F_PORT_REUSE = 8
# internal: a one-way flow the slot reserve refused, which may still get a slot; _emit turns it into F_SLOT_DENIED
# (and counts it) when the flow ends without one. Never leaves the table (emitted records and snapshots drop it).
F_SLOT_WAITING = 16
END_IDLE = 1
END_ACTIVE_TIMEOUT = 2
END_EVICTED = 3
END_OF_INPUT = 4
END_PORT_REUSE = 5

TCP_FIN = 0x01
TCP_SYN = 0x02
TCP_RST = 0x04
TCP_ACK = 0x10


class TableArrays(NamedTuple):
    """All state of one flow table; every field is a numpy array (mutated in place by the kernels).

    records FLOW[capacity]; used u1[capacity]; seen i8[capacity] (last packet time of each used record); two_way
    u1[capacity] (1 once both sides of the record sent a packet);
    index i4[index_size] (power of two, -1 = empty); free i4[capacity] (stack of free record indices); meta i8[META_SIZE];
    params i8[PARAMS_SIZE]; slot_free i4[n_slots]; keep_data u1[n_slots, 2, keep_bytes] (first payload bytes per
    direction, packets concatenated); keep_len u4[n_slots, 2, keep_pkts] (L4 payload length of each kept packet);
    keep_cap u2[n_slots, 2, keep_pkts] (bytes of it actually kept); keep_count u1[n_slots, 2]; keep_fill
    u4[n_slots, 2] (bytes used in keep_data); seq_size i4[n_slots, seq_len] (+orig / -resp payload size of the
    early payload packets); seq_dt_us u4[n_slots, seq_len] (their time since first_seen, microseconds);
    conv_i i8[n_slots, N_CONV_I], conv_f f8[n_slots, N_CONV_F], echo_pairs u2[n_slots, 2, ECHO_BUCKETS]: the
    conversation shape over the flow's whole life (flows/conversation.py).
    """

    records: np.ndarray
    used: np.ndarray
    seen: np.ndarray
    two_way: np.ndarray
    index: np.ndarray
    free: np.ndarray
    meta: np.ndarray
    params: np.ndarray
    slot_free: np.ndarray
    keep_data: np.ndarray
    keep_len: np.ndarray
    keep_cap: np.ndarray
    keep_count: np.ndarray
    keep_fill: np.ndarray
    seq_size: np.ndarray
    seq_dt_us: np.ndarray
    conv_i: np.ndarray
    conv_f: np.ndarray
    echo_pairs: np.ndarray


@njit(cache=True, nogil=True, inline="always")
def _mix(h, v):
    h ^= v + np.uint64(0x9E3779B97F4A7C15) + (h << np.uint64(6)) + (h >> np.uint64(2))
    return h


@njit(cache=True, nogil=True)
def flow_key_hash(a_hi, a_lo, b_hi, b_lo, a_port, b_port, proto):
    """Direction-free hash of a 5-tuple: the same for both directions of a flow."""
    if (a_hi, a_lo, a_port) > (b_hi, b_lo, b_port):
        a_hi, a_lo, a_port, b_hi, b_lo, b_port = b_hi, b_lo, b_port, a_hi, a_lo, a_port
    h = np.uint64(proto)
    h = _mix(h, a_hi)
    h = _mix(h, a_lo)
    h = _mix(h, b_hi)
    h = _mix(h, b_lo)
    h = _mix(h, (np.uint64(a_port) << np.uint64(16)) | np.uint64(b_port))
    # final avalanche (splitmix64 finaliser)
    h ^= h >> np.uint64(30)
    h *= np.uint64(0xBF58476D1CE4E5B9)
    h ^= h >> np.uint64(27)
    h *= np.uint64(0x94D049BB133111EB)
    h ^= h >> np.uint64(31)
    return h


@njit(cache=True, nogil=True, inline="always")
def _matches(r, h, s_hi, s_lo, d_hi, d_lo, sp, dp, proto):
    """0 if record r is not this flow, 1 if the packet goes orig->resp, 2 if resp->orig."""
    if r.key_hash != h or r.proto != proto:
        return 0
    if r.orig_hi == s_hi and r.orig_lo == s_lo and r.orig_port == sp and r.resp_hi == d_hi and r.resp_lo == d_lo \
            and r.resp_port == dp:
        return 1
    if r.orig_hi == d_hi and r.orig_lo == d_lo and r.orig_port == dp and r.resp_hi == s_hi and r.resp_lo == s_lo \
            and r.resp_port == sp:
        return 2
    return 0


@njit(cache=True, nogil=True)
def _index_remove(t, ridx):
    """Remove record ridx from the hash index (backward-shift deletion for linear probing)."""
    index = t.index
    mask = index.shape[0] - 1
    pos = np.int64(t.records[ridx].key_hash & np.uint64(mask))
    while index[pos] != ridx:
        pos = (pos + 1) & mask
    hole = pos
    nxt = (hole + 1) & mask
    while index[nxt] != -1:
        home = np.int64(t.records[index[nxt]].key_hash & np.uint64(mask))
        # move entry at nxt into the hole if its home is not in (hole, nxt] cyclically
        if (nxt > hole and (home <= hole or home > nxt)) or (nxt < hole and (home <= hole and home > nxt)):
            index[hole] = index[nxt]
            hole = nxt
        nxt = (nxt + 1) & mask
    index[hole] = -1


@njit(cache=True, nogil=True)
def _emit(t, ridx, reason, out, n_out):
    """Copy record ridx to out[n_out] with its end reason and free it (its payload slot stays reserved)."""
    if t.records[ridx].slot >= 0:
        conversation_close(t.conv_i, t.conv_f, t.records[ridx].slot)
    out[n_out] = t.records[ridx]
    out[n_out].end_reason = reason
    if (out[n_out].flow_flags & F_SLOT_WAITING) != 0:  # refused by the slot reserve and never given a slot
        out[n_out].flow_flags = (out[n_out].flow_flags & (0xFF ^ F_SLOT_WAITING)) | F_SLOT_DENIED
        t.meta[M_SLOT_DENIED] += 1
    _index_remove(t, ridx)
    t.used[ridx] = 0
    t.records[ridx].slot = -1
    t.free[t.meta[M_FREE_TOP]] = ridx
    t.meta[M_FREE_TOP] += 1
    t.meta[M_LIVE] -= 1
    return n_out + 1


@njit(cache=True, nogil=True)
def _create(t, h, p, orig_is_src, flags):
    """Start a record for packet p; orig_is_src says whether the packet's source is the originator."""
    t.meta[M_FREE_TOP] -= 1
    ridx = t.free[t.meta[M_FREE_TOP]]
    r = t.records[ridx]
    r.key_hash = h
    if orig_is_src:
        r.orig_hi = p.src_hi
        r.orig_lo = p.src_lo
        r.resp_hi = p.dst_hi
        r.resp_lo = p.dst_lo
        r.orig_port = p.sport
        r.resp_port = p.dport
        r.orig_mac = p.src_mac
        r.resp_mac = 0
    else:
        r.orig_hi = p.dst_hi
        r.orig_lo = p.dst_lo
        r.resp_hi = p.src_hi
        r.resp_lo = p.src_lo
        r.orig_port = p.dport
        r.resp_port = p.sport
        r.orig_mac = 0
        r.resp_mac = p.src_mac
    r.first_seen_ns = p.ts_ns
    r.last_seen_ns = p.ts_ns
    r.vlan = p.vlan
    r.iface = p.iface
    r.proto = p.proto
    r.ip_version = p.ip_version
    r.flow_flags = flags
    r.end_reason = 0
    r.fragments = 0
    r.slot = -1
    r.seq_count = 0
    r.orig_pkts = 0
    r.orig_bytes = 0
    r.orig_payload_bytes = 0
    r.orig_payload_pkts = 0
    r.orig_bare_acks = 0
    r.orig_retransmits = 0
    r.orig_tcp_flags = 0
    r.orig_payload_min = 0
    r.orig_payload_max = 0
    r.orig_payload_mean = 0.0
    r.orig_payload_m2 = 0.0
    r.orig_iat_mean = 0.0
    r.orig_iat_m2 = 0.0
    r.orig_last_ns = 0
    r.orig_next_seq = 0
    r.resp_pkts = 0
    r.resp_bytes = 0
    r.resp_payload_bytes = 0
    r.resp_payload_pkts = 0
    r.resp_bare_acks = 0
    r.resp_retransmits = 0
    r.resp_tcp_flags = 0
    r.resp_payload_min = 0
    r.resp_payload_max = 0
    r.resp_payload_mean = 0.0
    r.resp_payload_m2 = 0.0
    r.resp_iat_mean = 0.0
    r.resp_iat_m2 = 0.0
    r.resp_last_ns = 0
    r.resp_next_seq = 0
    r.burst_count = 0
    r.burst_start_ms = 0
    r.burst_last_ms = 0
    r.burst_open_bytes = 0
    r.burst_interval_mean = 0.0
    r.burst_interval_m2 = 0.0
    r.burst_bytes_mean = 0.0
    r.burst_bytes_m2 = 0.0
    for k in range(r.burst_interval_hist.shape[0]):
        r.burst_interval_hist[k] = 0
    t.used[ridx] = 1
    t.two_way[ridx] = 0
    # insert into the index
    mask = t.index.shape[0] - 1
    pos = np.int64(h & np.uint64(mask))
    while t.index[pos] != -1:
        pos = (pos + 1) & mask
    t.index[pos] = ridx
    t.seen[ridx] = p.ts_ns
    t.meta[M_LIVE] += 1
    t.meta[M_CREATED] += 1
    return ridx


@njit(cache=True, nogil=True)
def _update_direction_stats(r, d, p, ts):
    """Counters, flags, Welford means of payload size and inter-arrival time for direction d (0 orig, 1 resp).

    Returns True when the packet's payload is new data (not a TCP retransmission) and may be kept."""
    fl = p.tcp_flags
    pl = np.int64(p.payload_bytes)
    bare_ack = p.proto == 6 and (fl & TCP_ACK) != 0 and pl == 0 and (fl & (TCP_SYN | TCP_FIN | TCP_RST)) == 0
    fresh = True
    if d == 0:
        n_before = r.orig_pkts
        r.orig_pkts += 1
        r.orig_bytes += p.wire_bytes
        r.orig_tcp_flags |= fl
        if bare_ack:
            r.orig_bare_acks += 1
        if n_before > 0:
            dt = max(ts - r.orig_last_ns, 0) / 1e9
            delta = dt - r.orig_iat_mean
            r.orig_iat_mean += delta / n_before
            r.orig_iat_m2 += delta * (dt - r.orig_iat_mean)
        r.orig_last_ns = max(ts, r.orig_last_ns)
        if r.orig_mac == 0:  # the flow may have been opened by the responder's packet (SYN-ACK seen first)
            r.orig_mac = p.src_mac
        if p.proto == 6:
            if (fl & TCP_SYN) != 0:
                r.orig_next_seq = p.tcp_seq + np.uint32(1)
            elif pl > 0:
                if r.orig_next_seq != 0 and np.int32(p.tcp_seq - r.orig_next_seq) < 0:
                    r.orig_retransmits += 1
                    fresh = False
                else:
                    r.orig_next_seq = p.tcp_seq + np.uint32(pl)
        if pl > 0 and fresh:
            r.orig_payload_pkts += 1
            r.orig_payload_bytes += pl
            size = min(pl, 65535)
            if r.orig_payload_min == 0 or size < r.orig_payload_min:
                r.orig_payload_min = size
            if size > r.orig_payload_max:
                r.orig_payload_max = size
            delta = pl - r.orig_payload_mean
            r.orig_payload_mean += delta / r.orig_payload_pkts
            r.orig_payload_m2 += delta * (pl - r.orig_payload_mean)
    else:
        n_before = r.resp_pkts
        r.resp_pkts += 1
        r.resp_bytes += p.wire_bytes
        r.resp_tcp_flags |= fl
        if bare_ack:
            r.resp_bare_acks += 1
        if n_before > 0:
            dt = max(ts - r.resp_last_ns, 0) / 1e9
            delta = dt - r.resp_iat_mean
            r.resp_iat_mean += delta / n_before
            r.resp_iat_m2 += delta * (dt - r.resp_iat_mean)
        r.resp_last_ns = max(ts, r.resp_last_ns)
        if r.resp_mac == 0:
            r.resp_mac = p.src_mac
        if p.proto == 6:
            if (fl & TCP_SYN) != 0:
                r.resp_next_seq = p.tcp_seq + np.uint32(1)
            elif pl > 0:
                if r.resp_next_seq != 0 and np.int32(p.tcp_seq - r.resp_next_seq) < 0:
                    r.resp_retransmits += 1
                    fresh = False
                else:
                    r.resp_next_seq = p.tcp_seq + np.uint32(pl)
        if pl > 0 and fresh:
            r.resp_payload_pkts += 1
            r.resp_payload_bytes += pl
            size = min(pl, 65535)
            if r.resp_payload_min == 0 or size < r.resp_payload_min:
                r.resp_payload_min = size
            if size > r.resp_payload_max:
                r.resp_payload_max = size
            delta = pl - r.resp_payload_mean
            r.resp_payload_mean += delta / r.resp_payload_pkts
            r.resp_payload_m2 += delta * (pl - r.resp_payload_mean)
    return fresh and pl > 0


@njit(cache=True, nogil=True)
def _keep_payload(t, r, d, p, buf):
    """Keep the first payload bytes and the (direction, size, time) sequence of early payload packets.

    A flow takes a payload slot at its first fresh payload packet. A one-way flow is refused while at most
    1/SLOT_RESERVE_FRACTION of the slots are free and asks again with its next payload packet (F_SLOT_WAITING); a
    two-way flow that finds no slot free gets F_SLOT_DENIED for good. Either way M_SLOT_DENIED counts each flow that
    wanted a slot and never got one exactly once: at once for a denied flow, when it ends for a waiting one."""
    if r.slot < 0:
        if (r.flow_flags & F_SLOT_DENIED) != 0:
            return
        free = t.meta[M_SLOT_FREE_TOP]
        if (r.orig_pkts == 0 or r.resp_pkts == 0) and free * SLOT_RESERVE_FRACTION <= t.slot_free.shape[0]:
            r.flow_flags |= F_SLOT_WAITING
            return
        if free == 0:
            r.flow_flags = (r.flow_flags & (0xFF ^ F_SLOT_WAITING)) | F_SLOT_DENIED
            t.meta[M_SLOT_DENIED] += 1
            return
        r.flow_flags &= 0xFF ^ F_SLOT_WAITING
        t.meta[M_SLOT_FREE_TOP] -= 1
        s = t.slot_free[t.meta[M_SLOT_FREE_TOP]]
        r.slot = s
        t.keep_count[s, 0] = 0
        t.keep_count[s, 1] = 0
        t.keep_fill[s, 0] = 0
        t.keep_fill[s, 1] = 0
        conversation_reset(t.conv_i, t.conv_f, t.echo_pairs, s)
    s = r.slot
    keep_pkts = t.keep_len.shape[2]
    keep_bytes = t.keep_data.shape[2]
    k = t.keep_count[s, d]
    if k < keep_pkts:
        fill = np.int64(t.keep_fill[s, d])
        n = min(np.int64(p.payload_caplen), keep_bytes - fill)
        if n < 0:
            n = 0
        src = np.int64(p.payload_offset)
        t.keep_data[s, d, fill:fill + n] = buf[src:src + n]
        t.keep_len[s, d, k] = p.payload_bytes
        t.keep_cap[s, d, k] = n
        t.keep_fill[s, d] = fill + n
        t.keep_count[s, d] = k + 1
    c = r.seq_count
    if c < t.seq_size.shape[1]:
        size = np.int32(min(np.int64(p.payload_bytes), 0x7FFFFFFF))
        t.seq_size[s, c] = size if d == 0 else -size
        dt_us = (p.ts_ns - r.first_seen_ns) // 1000
        t.seq_dt_us[s, c] = np.uint32(min(max(dt_us, 0), 0xFFFFFFFF))
        r.seq_count = c + 1
    conversation_update(t.conv_i, t.conv_f, t.echo_pairs, s, d, np.int64(p.payload_bytes), p.ts_ns)


@njit(cache=True, nogil=True)
def update_table(t, buf, packets, start, out):
    """Aggregate packets[start:] into the table, emitting finished records into `out`.

    Args:
        t: TableArrays (mutated). buf: uint8 chunk the packets' payload offsets point into.
        packets: PACKET array. start: first packet to process. out: FLOW array for emitted records.

    Returns:
        (index of the first packet not processed, records written to out). Processing stops early only when
        `out` is full; call again with the returned index after draining it.
    """
    n = packets.shape[0]
    n_out = 0
    out_cap = out.shape[0]
    capacity = t.records.shape[0]
    mask = t.index.shape[0] - 1
    i = start
    while i < n:
        if n_out + 1 >= out_cap:
            return i, n_out
        p = packets[i]
        i += 1
        if p.ip_version == 0:
            t.meta[M_SKIPPED] += 1
            continue
        ts = p.ts_ns
        h = flow_key_hash(p.src_hi, p.src_lo, p.dst_hi, p.dst_lo, p.sport, p.dport, p.proto)
        pos = np.int64(h & np.uint64(mask))
        ridx = -1
        d = 0
        while t.index[pos] != -1:
            m = _matches(t.records[t.index[pos]], h, p.src_hi, p.src_lo, p.dst_hi, p.dst_lo, p.sport, p.dport,
                         p.proto)
            if m != 0:
                ridx = t.index[pos]
                d = m - 1
                break
            pos = (pos + 1) & mask
        fl = p.tcp_flags
        bare_syn = p.proto == 6 and (fl & (TCP_SYN | TCP_ACK)) == TCP_SYN
        new_flags = 0
        orig_is_src = True
        if ridx >= 0:
            r = t.records[ridx]
            closed = _closed(r)
            idle = _idle_timeout(t, r, closed)
            reason = 0
            if ts - r.last_seen_ns > idle:
                reason = END_IDLE
            elif bare_syn and closed:
                reason = END_PORT_REUSE
                new_flags = F_PORT_REUSE
            elif t.params[P_ACTIVE_NS] > 0 and ts - r.first_seen_ns > t.params[P_ACTIVE_NS]:
                reason = END_ACTIVE_TIMEOUT
                new_flags = F_CONTINUED | (r.flow_flags & F_SAW_SYN)
                orig_is_src = d == 0
            if reason != 0:
                n_out = _emit(t, ridx, reason, out, n_out)
                ridx = -1
                d = 0 if orig_is_src else 1
        if ridx < 0:
            if reason_is_fresh(new_flags):
                # the originator is the SYN sender; a SYN-ACK seen first means its receiver opened the flow
                if bare_syn:
                    new_flags |= F_SAW_SYN
                elif p.proto == 6 and (fl & (TCP_SYN | TCP_ACK)) == (TCP_SYN | TCP_ACK):
                    new_flags |= F_SAW_SYN
                    orig_is_src = False
                    d = 1
            while t.meta[M_LIVE] >= capacity and n_out < out_cap:
                n_out = _evict_oldest(t, out, n_out)
            ridx = _create(t, h, p, orig_is_src, new_flags)
        r = t.records[ridx]
        if ts > r.last_seen_ns:
            r.last_seen_ns = ts
            t.seen[ridx] = ts
        if (p.status & 8) != 0:  # PacketStatus.FRAGMENT
            r.fragments += 1
        fresh = _update_direction_stats(r, d, p, ts)
        if t.two_way[ridx] == 0 and r.orig_pkts > 0 and r.resp_pkts > 0:
            t.two_way[ridx] = 1
        if fresh:
            update_bursts(r, np.int64(p.payload_bytes), ts)
            if t.keep_data.shape[0] > 0:
                _keep_payload(t, r, d, p, buf)
    return i, n_out


@njit(cache=True, nogil=True, inline="always")
def reason_is_fresh(new_flags):
    """A record started by the active timeout keeps its orientation; any other new record picks one."""
    return (new_flags & F_CONTINUED) == 0


@njit(cache=True, nogil=True, inline="always")
def _closed(r):
    """A TCP connection that saw RST, or FIN in both directions."""
    return r.proto == 6 and (((r.orig_tcp_flags | r.resp_tcp_flags) & TCP_RST) != 0 or (
        (r.orig_tcp_flags & TCP_FIN) != 0 and (r.resp_tcp_flags & TCP_FIN) != 0))


@njit(cache=True, nogil=True, inline="always")
def _idle_timeout(t, r, closed):
    if r.proto != 6:
        return t.params[P_OTHER_IDLE_NS]
    return t.params[P_CLOSED_IDLE_NS] if closed else t.params[P_TCP_IDLE_NS]


@njit(cache=True, nogil=True)
def _evict_oldest(t, out, n_out):
    """Evict k = capacity/EVICT_FRACTION records: while at least k one-way flows are live, every one-way flow last
    seen at or before the time of the k-th oldest of them; else every record last seen at or before the time of the
    k-th oldest record.

    One-way flows go first because under a flood they are the flood, while a two-way flow idle for a few seconds may
    be a tunnel between keystrokes. With fewer than k of them they are no flood (a syslog or NetFlow export, a few
    unanswered probes), and plain oldest-first treats them like any other flow instead of cutting a steady one-way
    stream at every scan. Resumable: when `out` fills, the scan continues at the next call with the same threshold
    and kind (a flow answered meanwhile is then spared). Returns the new n_out."""
    cap = t.records.shape[0]
    if t.meta[M_EVICT_POS] < 0:
        k = max(1, cap // EVICT_FRACTION)
        times = t.seen[(t.used != 0) & (t.two_way == 0)]
        t.meta[M_EVICT_ONE_WAY] = 1
        if times.shape[0] < k:
            times = t.seen[t.used.view(np.bool_)]
            t.meta[M_EVICT_ONE_WAY] = 0
            if times.shape[0] == 0:
                return n_out
            k = min(k, times.shape[0])
        t.meta[M_EVICT_BEFORE] = np.partition(times, k - 1)[k - 1]
        t.meta[M_EVICT_POS] = 0
    before = t.meta[M_EVICT_BEFORE]
    one_way_only = t.meta[M_EVICT_ONE_WAY] != 0
    i = t.meta[M_EVICT_POS]
    while i < cap:
        if n_out >= out.shape[0]:
            t.meta[M_EVICT_POS] = i
            return n_out
        if t.used[i] and t.seen[i] <= before and not (one_way_only and t.two_way[i] != 0):
            n_out = _emit(t, i, END_EVICTED, out, n_out)
            t.meta[M_EVICTIONS] += 1
        i += 1
    t.meta[M_EVICT_POS] = -1
    return n_out


@njit(cache=True, nogil=True)
def expire_idle(t, now_ns, out):
    """Emit every record idle past its timeout at time now_ns (in record order), until out is full.

    A sweep that filled `out` continues where it stopped at the next call (with the same `now`); a call that finds
    no sweep under way starts one. Returns (records written to out, True when the sweep is complete)."""
    cap = t.records.shape[0]
    if t.meta[M_SWEEP_POS] < 0:
        t.meta[M_SWEEP_POS] = 0
        t.meta[M_SWEEP_NOW] = now_ns
    now = t.meta[M_SWEEP_NOW]
    n_out = 0
    i = t.meta[M_SWEEP_POS]
    while i < cap:
        if n_out >= out.shape[0]:
            t.meta[M_SWEEP_POS] = i
            return n_out, False
        if t.used[i] and now - t.seen[i] > _idle_timeout(t, t.records[i], _closed(t.records[i])):
            n_out = _emit(t, i, END_IDLE, out, n_out)
        i += 1
    t.meta[M_SWEEP_POS] = -1
    return n_out, True


@njit(cache=True, nogil=True)
def flush_table(t, reason, out):
    """Emit every live record (in record order) with the given end reason, until out is full; returns the count."""
    n_out = 0
    cap = t.records.shape[0]
    for i in range(cap):
        if n_out >= out.shape[0]:
            break
        if t.used[i]:
            n_out = _emit(t, i, reason, out, n_out)
    if t.meta[M_LIVE] == 0:
        # an empty table has no sweep or eviction scan under way: one that was cut short must not resume on the
        # next flows (the pipeline reuses the table for the next capture) with its old time or threshold
        t.meta[M_SWEEP_POS] = -1
        t.meta[M_EVICT_POS] = -1
    return n_out


@njit(cache=True, nogil=True)
def release_slots(t, slots):
    """Give payload slots of consumed records back to the pool (negative entries are ignored)."""
    for s in slots:
        if s >= 0:
            t.slot_free[t.meta[M_SLOT_FREE_TOP]] = s
            t.meta[M_SLOT_FREE_TOP] += 1
