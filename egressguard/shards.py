"""Sandbox sharding: which of N workers keeps a decoded packet, so that every flow of one sandbox lands in one worker.

A worker of `analyze --workers N` (or a Dask task) reads and decodes the whole capture and keeps only the packets
of its shard (nfstream's way for files, ../shared/research/scale-and-ecosystem.md 3). A 5-tuple hash would split a
sandbox's DNS from the connections that use its answers, and its pool connection from the reconnects that inherit
the verdict; so the key is the *sandbox side* of each packet, the same for both directions:

  * the endpoint inside the sandbox networks (`Allowlist.inside`), when exactly one endpoint is inside;
  * otherwise (both or neither inside), for TCP/UDP/SCTP/UDP-Lite: the endpoint with the larger port (a client's
    ephemeral port; DNS 53 and pool ports lose), a tie to the smaller address;
  * ICMP and other portless protocols: the smaller address.

That address is hashed (splitmix64) to a shard. `ShardFilter` runs this per packet in one numba kernel (a binary
search of the inside ranges instead of the allowlist's byte-string lookup, which cost more than decoding); the numpy
functions `sandbox_side`/`shard_key`/`shard_of` say the same over whole PACKET arrays and are the kernel's twin.
"""
from __future__ import annotations

import numpy as np
from numba import njit

from egressguard.netaddr import NAT64_HI, V4_MAPPED
from egressguard.policy.allowlist import Allowlist

PORT_PROTOCOLS = (6, 17, 132, 136)  # IANA protocol numbers with 16-bit ports: TCP, UDP, SCTP, UDP-Lite
_M1, _M2 = np.uint64(0xBF58476D1CE4E5B9), np.uint64(0x94D049BB133111EB)  # splitmix64 finaliser (Vigna, 2015)
_SEED = np.uint64(0x9E3779B97F4A7C15)  # splitmix64's golden-ratio increment


def _mix(hi: np.ndarray, lo: np.ndarray) -> np.ndarray:
    """A 64-bit hash of (hi, lo) address columns (two splitmix64 finaliser rounds; uint64 wraps)."""
    h = np.full(len(hi), _SEED, np.uint64)
    with np.errstate(over="ignore"):
        for c in (hi, lo):
            h ^= np.asarray(c, np.uint64)
            h *= _M1
            h ^= h >> np.uint64(31)
            h *= _M2
            h ^= h >> np.uint64(29)
    return h


def sandbox_side(packets: np.ndarray, rules: Allowlist) -> np.ndarray:
    """bool per PACKET row: True where the source is the sandbox side (see the module doc), False for the
    destination. Symmetric: the reversed packet gets the opposite answer, naming the same address."""
    src_hi, src_lo, dst_hi, dst_lo = packets["src_hi"], packets["src_lo"], packets["dst_hi"], packets["dst_lo"]
    n = len(packets)
    both_in = rules.inside(np.concatenate([src_hi, dst_hi]), np.concatenate([src_lo, dst_lo]))  # one lookup
    src_in, dst_in = both_in[:n], both_in[n:]
    src_smaller = (src_hi < dst_hi) | ((src_hi == dst_hi) & (src_lo <= dst_lo))
    sport, dport = packets["sport"], packets["dport"]
    ported = np.isin(packets["proto"], PORT_PROTOCOLS) & (sport != dport)
    by_port = np.where(ported, sport > dport, src_smaller)
    return np.where(src_in != dst_in, src_in, by_port)


def shard_key(packets: np.ndarray, rules: Allowlist) -> np.ndarray:
    """uint64 per PACKET row: the hash of its sandbox-side address (equal for both directions of a flow)."""
    src = sandbox_side(packets, rules)
    hi = np.where(src, packets["src_hi"], packets["dst_hi"])
    lo = np.where(src, packets["src_lo"], packets["dst_lo"])
    return _mix(hi, lo)


def shard_of(packets: np.ndarray, rules: Allowlist, shards: int) -> np.ndarray:
    """int64 per PACKET row: its shard, 0..shards-1 (rows that carry no IP header go to shard 0: they make no flow,
    and the decoder has counted them in every worker already)."""
    if shards <= 1 or not len(packets):
        return np.zeros(len(packets), np.int64)
    out = (shard_key(packets, rules) % np.uint64(shards)).astype(np.int64)
    out[packets["ip_version"] == 0] = 0
    return out


class ShardFilter:
    """The packets of one shard: `keep(packets)` is the bool mask a worker applies before the flow table."""

    def __init__(self, rules: Allowlist, shard: int, shards: int):
        if not 0 <= shard < shards:
            raise ValueError(f"shard {shard} is not in 0..{shards - 1}")
        self.rules, self.shard, self.shards = rules, shard, shards
        first, last, self._nat64 = rules.inside_ranges()
        self._first = _halves(first)
        self._last = _halves(last)

    def shards_of(self, packets: np.ndarray) -> np.ndarray:
        """int64 shard of every PACKET row (shard_of's answer, from the kernel)."""
        out = np.zeros(len(packets), np.int64)
        if self.shards > 1 and len(packets):
            _shard_kernel(packets["src_hi"], packets["src_lo"], packets["dst_hi"], packets["dst_lo"],
                          packets["sport"], packets["dport"], packets["proto"], packets["ip_version"],
                          *self._first, *self._last, self._nat64, self.shards, out)
        return out

    def keep(self, packets: np.ndarray) -> np.ndarray:
        return self.shards_of(packets) == self.shard


def _halves(k: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """'S16' big-endian keys -> (hi, lo) native uint64 arrays."""
    pairs = np.ascontiguousarray(k).view(">u8").reshape(-1, 2).astype(np.uint64)
    return np.ascontiguousarray(pairs[:, 0]), np.ascontiguousarray(pairs[:, 1])


@njit(cache=True, nogil=True, inline="always")
def _inside(hi, lo, f_hi, f_lo, l_hi, l_lo, nat64):
    """Whether (hi, lo) lies in one of the sorted disjoint ranges [f, l] (NAT64 unwrapped first when asked)."""
    if nat64 and hi == np.uint64(NAT64_HI) and (lo >> np.uint64(32)) == 0:
        hi, lo = np.uint64(0), np.uint64(V4_MAPPED) | lo
    a, b = 0, len(f_hi)
    while a < b:  # the first range that starts after the address
        m = (a + b) // 2
        if f_hi[m] < hi or (f_hi[m] == hi and f_lo[m] <= lo):
            a = m + 1
        else:
            b = m
    j = a - 1
    return j >= 0 and (hi < l_hi[j] or (hi == l_hi[j] and lo <= l_lo[j]))


@njit(cache=True, nogil=True)
def _mix_one(hi, lo):
    h = np.uint64(0x9E3779B97F4A7C15)
    for c in (hi, lo):
        h ^= c
        h *= np.uint64(0xBF58476D1CE4E5B9)
        h ^= h >> np.uint64(31)
        h *= np.uint64(0x94D049BB133111EB)
        h ^= h >> np.uint64(29)
    return h


@njit(cache=True, nogil=True)
def _shard_kernel(src_hi, src_lo, dst_hi, dst_lo, sport, dport, proto, ip_version, f_hi, f_lo, l_hi, l_lo, nat64,
                  shards, out):
    """out[i] = the shard of packet i: sandbox_side, then _mix of that address, modulo `shards` (0 without IP)."""
    for i in range(len(src_hi)):
        if ip_version[i] == 0:
            out[i] = 0
            continue
        s_in = _inside(src_hi[i], src_lo[i], f_hi, f_lo, l_hi, l_lo, nat64)
        d_in = _inside(dst_hi[i], dst_lo[i], f_hi, f_lo, l_hi, l_lo, nat64)
        if s_in != d_in:
            src = s_in
        else:
            p = proto[i]
            if (p == 6 or p == 17 or p == 132 or p == 136) and sport[i] != dport[i]:  # PORT_PROTOCOLS
                src = sport[i] > dport[i]
            else:
                src = src_hi[i] < dst_hi[i] or (src_hi[i] == dst_hi[i] and src_lo[i] <= dst_lo[i])
        h = _mix_one(src_hi[i], src_lo[i]) if src else _mix_one(dst_hi[i], dst_lo[i])
        out[i] = np.int64(h % np.uint64(shards))


__all__ = ["PORT_PROTOCOLS", "ShardFilter", "sandbox_side", "shard_key", "shard_of"]
