"""numba kernels: the shape of a conversation over a flow's whole life, from payload sizes, directions and times.

Encrypted tunnels hide their content, not their rhythm. Per payload slot we keep, with fixed-size state:
echo pairs (a small packet answered by one of the same size from the other side within 0.5 s), bursts (runs of
payload packets separated by >= 1 s of silence) with the side that spoke first, ping-pong bursts (one packet each
way: keepalives) with the regularity of their spacing, and bursts that open with a bulk exchange both ways (a
handshake nested inside the flow). No thresholds live here; detectors interpret these facts.

`update_bursts` keeps the rhythm of bursts in the flow record itself (every flow, with or without a payload slot):
count, Welford mean/M2 of the intervals between burst starts and of the bytes per burst, and a log histogram of the
intervals from which detectors read approximate quantiles (RITA-style beacon scores, detection-science 4.3).
"""
from __future__ import annotations

import numpy as np
from numba import njit

from egressguard.schema import BURST_INTERVAL_BINS

ECHO_MAX_SIZE = 256  # echo pairs are counted per 4-byte size bucket below this (SSH records are multiples of 4)
ECHO_BUCKETS = ECHO_MAX_SIZE // 4
ECHO_WINDOW_NS = 500_000_000  # §1.7 R2: the echo follows within 0.5 s
BURST_GAP_NS = 1_000_000_000  # silence that separates bursts (detection-science §6 "burst = gap >= 1 s")
HANDSHAKE_WINDOW_NS = 2_000_000_000  # §1.7 R6: bulk packets both ways within 2 s of the burst start
HANDSHAKE_MIN_SIZE = 500  # §1.7 R6: inner KEXINITs are ~1-1.5 KB
ANSWER_MIN_BYTES = 4096  # a bulk answer: at least this many bytes ...
ANSWER_RATIO = 4  # ... and this many times what the leader sent in the burst (a request and its response)

# conv_i[slot, ...] (int64); a nested handshake is a later burst with >= 1 bulk packet each way and >= 3 in all
CI_PEND_DIR = 0  # direction of the packet waiting for its echo, -1 if none
CI_PEND_LEN = 1
CI_PEND_TS = 2
CI_LAST_TS = 3  # time of the last payload packet, 0 before the first
CI_BURST_START = 4
CI_BURST_LEADER = 5
CI_BURST_PL0 = 6  # payload packets of the open burst, orig / resp
CI_BURST_PL1 = 7
CI_BURST_BIG0 = 8  # packets >= HANDSHAKE_MIN_SIZE within HANDSHAKE_WINDOW_NS of the burst start
CI_BURST_BIG1 = 9
CI_BURSTS = 10  # bursts started
CI_LED0 = 11  # closed bursts that were not ping-pongs, by the side that spoke first
CI_LED1 = 12
CI_NESTED0 = 13  # later bursts that opened with a bulk exchange both ways, by the side that spoke first
CI_NESTED1 = 14
CI_PINGPONG0 = 15  # bursts of exactly one payload packet each way, by the side that spoke first
CI_PINGPONG1 = 16
CI_PINGPONG_LAST0 = 17
CI_PINGPONG_LAST1 = 18
CI_OPEN = 19  # 1 while a burst is open
CI_BURST_BYTES0 = 20  # payload bytes of the open burst, orig / resp
CI_BURST_BYTES1 = 21
CI_ANSWERED0 = 22  # closed bursts in which the other side answered the leader with bulk data, by leader
CI_ANSWERED1 = 23
N_CONV_I = 24

# conv_f[slot, ...] (float64): Welford mean / M2 of the seconds between ping-pong bursts of each leader
CF_PP_MEAN0 = 0
CF_PP_M2_0 = 1
CF_PP_MEAN1 = 2
CF_PP_M2_1 = 3
N_CONV_F = 4


@njit(cache=True, nogil=True)
def conversation_reset(conv_i, conv_f, echo_pairs, s):
    """Clear slot s before a new flow uses it."""
    conv_i[s, :] = 0
    conv_i[s, CI_PEND_DIR] = -1
    conv_f[s, :] = 0.0
    echo_pairs[s, :, :] = 0


@njit(cache=True, nogil=True)
def conversation_close(conv_i, conv_f, s):
    """Close the open burst of slot s (called when a new burst starts and when the flow is emitted)."""
    _close_burst(conv_i[s], conv_f[s])


@njit(cache=True, nogil=True, inline="always")
def _close_burst(ci, cf):
    """_close on the slot's own rows (1-D views: cheaper indexing on the per-packet path)."""
    if ci[CI_OPEN] == 0:
        return
    ci[CI_OPEN] = 0
    leader = ci[CI_BURST_LEADER]
    start = ci[CI_BURST_START]
    if ci[CI_BURST_PL0] == 1 and ci[CI_BURST_PL1] == 1:
        n = ci[CI_PINGPONG0 + leader] + 1
        ci[CI_PINGPONG0 + leader] = n
        last = ci[CI_PINGPONG_LAST0 + leader]
        if n >= 2:
            dt = (start - last) / 1e9
            k = n - 1  # intervals so far
            mean = cf[CF_PP_MEAN0 + 2 * leader]
            delta = dt - mean
            mean += delta / k
            cf[CF_PP_MEAN0 + 2 * leader] = mean
            cf[CF_PP_M2_0 + 2 * leader] += delta * (dt - mean)
        ci[CI_PINGPONG_LAST0 + leader] = start
    else:
        ci[CI_LED0 + leader] += 1
    big0 = ci[CI_BURST_BIG0]
    big1 = ci[CI_BURST_BIG1]
    if ci[CI_BURSTS] >= 2 and big0 >= 1 and big1 >= 1 and big0 + big1 >= 3:
        ci[CI_NESTED0 + leader] += 1
    asked = ci[CI_BURST_BYTES0 + leader]
    answer = ci[CI_BURST_BYTES0 + 1 - leader]
    if answer >= ANSWER_MIN_BYTES and answer >= ANSWER_RATIO * asked:
        ci[CI_ANSWERED0 + leader] += 1


@njit(cache=True, nogil=True)
def conversation_update(conv_i, conv_f, echo_pairs, s, d, size, ts):
    """Account one payload packet (direction d, L4 payload `size` bytes, time ts ns) of the flow in slot s."""
    ci = conv_i[s]
    # echo pairs
    pend = ci[CI_PEND_DIR]
    if size < ECHO_MAX_SIZE:
        if pend == 1 - d and ci[CI_PEND_LEN] == size and ts - ci[CI_PEND_TS] <= ECHO_WINDOW_NS:
            b = size // 4
            if echo_pairs[s, pend, b] < 65535:
                echo_pairs[s, pend, b] += 1
            ci[CI_PEND_DIR] = -1
        else:
            ci[CI_PEND_DIR] = d
            ci[CI_PEND_LEN] = size
            ci[CI_PEND_TS] = ts
    elif pend >= 0:
        ci[CI_PEND_DIR] = -1
    # bursts
    last = ci[CI_LAST_TS]
    if ci[CI_OPEN] == 0 or ts - last >= BURST_GAP_NS:
        _close_burst(ci, conv_f[s])
        ci[CI_OPEN] = 1
        ci[CI_BURSTS] += 1
        ci[CI_BURST_START] = ts
        ci[CI_BURST_LEADER] = d
        ci[CI_BURST_PL0] = 0
        ci[CI_BURST_PL1] = 0
        ci[CI_BURST_BIG0] = 0
        ci[CI_BURST_BIG1] = 0
        ci[CI_BURST_BYTES0] = 0
        ci[CI_BURST_BYTES1] = 0
    ci[CI_BURST_PL0 + d] += 1
    ci[CI_BURST_BYTES0 + d] += size
    if size >= HANDSHAKE_MIN_SIZE and ts - ci[CI_BURST_START] <= HANDSHAKE_WINDOW_NS:
        ci[CI_BURST_BIG0 + d] += 1
    if ts > last:
        ci[CI_LAST_TS] = ts


# left edges of burst-interval bins 1..BURST_INTERVAL_BINS-1 in ms: round(1000 * 2^(k/2)) (2^(1/2) spacing,
# detection-science 4.3); an interval of x ms falls in bin = number of edges <= x
BURST_INTERVAL_EDGES_MS = np.array([round(1000 * 2 ** (k / 2)) for k in range(1, BURST_INTERVAL_BINS)], np.int64)
U32_MAX = 0xFFFFFFFF
HIST_MAX = 255


@njit(cache=True, nogil=True)
def update_bursts(r, size, ts):
    """Account one fresh payload packet (`size` L4 payload bytes at ts ns, either side) in the bursts of record r.

    Mutates r.burst_*: a packet >= BURST_GAP_NS after the previous payload packet closes the open burst (its bytes go
    into the burst-size Welford, the interval between the two starts into the interval Welford and histogram) and
    starts a new one. Times are kept in ms after first_seen_ns; a packet older than first_seen counts as at 0."""
    t_ms = (ts - r.first_seen_ns) // 1_000_000
    t_ms = min(max(t_ms, 0), U32_MAX)
    n = np.int64(r.burst_count)
    if n > 0 and t_ms - np.int64(r.burst_last_ms) < BURST_GAP_NS // 1_000_000:
        r.burst_open_bytes = min(np.int64(r.burst_open_bytes) + size, U32_MAX)
        if t_ms > r.burst_last_ms:
            r.burst_last_ms = t_ms
        return
    if n > 0:
        # close the open burst: n bursts are closed now, n intervals between n + 1 starts
        b = np.float64(r.burst_open_bytes)
        mean = np.float64(r.burst_bytes_mean)
        delta = b - mean
        mean32 = np.float32(mean + delta / n)
        r.burst_bytes_mean = mean32
        r.burst_bytes_m2 = np.float32(np.float64(r.burst_bytes_m2) + delta * (b - np.float64(mean32)))
        gap_ms = t_ms - np.int64(r.burst_start_ms)
        x = gap_ms / 1000.0
        mean = np.float64(r.burst_interval_mean)
        delta = x - mean
        mean32 = np.float32(mean + delta / n)
        r.burst_interval_mean = mean32
        r.burst_interval_m2 = np.float32(np.float64(r.burst_interval_m2) + delta * (x - np.float64(mean32)))
        k = 0
        while k < BURST_INTERVAL_EDGES_MS.shape[0] and gap_ms >= BURST_INTERVAL_EDGES_MS[k]:
            k += 1
        hist = r.burst_interval_hist
        if hist[k] >= HIST_MAX:
            for j in range(hist.shape[0]):
                hist[j] = hist[j] >> 1
        hist[k] += 1
    r.burst_count = min(n + 1, U32_MAX)
    r.burst_start_ms = t_ms
    r.burst_last_ms = t_ms
    r.burst_open_bytes = min(size, U32_MAX)
