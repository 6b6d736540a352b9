"""Addresses as the records store them, and sorted range tables for looking many of them up at once.

Every address is one 128-bit number: IPv6 as is, IPv4 as the IPv4-mapped address ::ffff:a.b.c.d (RFC 4291
2.5.5.2), the layout of PACKET/FLOW rows (`*_hi`, `*_lo`). An IPv4 CIDR a.b.c.d/n is the range ::ffff:a.b.c.d/(96+n).

A `RangeTable` holds sorted, disjoint ranges as 16-byte big-endian keys; numpy's `searchsorted` on fixed-width byte
strings compares them as unsigned numbers, so one call looks up a whole batch of addresses (no per-address Python).
"""
from __future__ import annotations

import ipaddress
import socket
from dataclasses import dataclass
from typing import Callable, Hashable, Iterable, Sequence

import numpy as np

V4_MAPPED = 0xFFFF << 32  # ::ffff:0:0/96
V4_SPACE = (V4_MAPPED, V4_MAPPED | 0xFFFFFFFF)
NAT64_HI = 0x0064FF9B00000000  # 64:ff9b::/96, the well-known NAT64 prefix (RFC 6052 2.1)
MAX_ADDRESS = (1 << 128) - 1


def parse_address(text: str) -> int:
    """An IPv4 or IPv6 address in storage form (IPv4 mapped); ValueError when it is not one."""
    addr = ipaddress.ip_address(text.strip())
    return V4_MAPPED | int(addr) if addr.version == 4 else int(addr)


def parse_network(text: str) -> tuple[int, int]:
    """A CIDR (or a single address) as an inclusive (first, last) range in storage form.

    Raises:
        ValueError: not a network, or host bits are set (the message says which network was meant).
    """
    net = ipaddress.ip_network(text.strip(), strict=True)
    first, last = int(net.network_address), int(net.broadcast_address)
    if net.version == 4:
        return V4_MAPPED | first, V4_MAPPED | last
    return first, last


def address_text(value: int) -> str:
    """Text form of a storage-form address."""
    if value >> 32 == 0xFFFF:
        return str(ipaddress.IPv4Address(value & 0xFFFFFFFF))
    return str(ipaddress.IPv6Address(value))


def format_address(hi: int, lo: int, ip_version: int) -> str:
    """Text form of an address stored as (hi, lo) in a record of the given IP version."""
    if ip_version == 4:
        return socket.inet_ntoa((int(lo) & 0xFFFFFFFF).to_bytes(4, "big"))
    return str(ipaddress.IPv6Address((int(hi) << 64) | int(lo)))


def endpoint(rec, side: str) -> int:
    """Storage-form address of one side ("orig" or "resp") of a FLOW record."""
    return (int(rec[side + "_hi"]) << 64) | int(rec[side + "_lo"])


def endpoint_text(rec, side: str) -> str:
    """Text form of one side ("orig" or "resp") of a FLOW record."""
    return format_address(int(rec[side + "_hi"]), int(rec[side + "_lo"]), int(rec["ip_version"]))


def halves(value: int) -> tuple[int, int]:
    """(hi, lo) of a storage-form address, as the records store it."""
    return value >> 64, value & 0xFFFFFFFFFFFFFFFF


def format_mac(value: int) -> str | None:
    """aa:bb:cc:dd:ee:ff from a MAC in the low 48 bits; None for 0 (the link has none)."""
    if not value:
        return None
    return ":".join(f"{b:02x}" for b in int(value).to_bytes(6, "big"))


def range_text(first: int, last: int) -> str:
    """A range as the CIDRs that cover it exactly (comma-separated)."""
    if first >> 32 == 0xFFFF and last >> 32 == 0xFFFF:
        a, b = ipaddress.IPv4Address(first & 0xFFFFFFFF), ipaddress.IPv4Address(last & 0xFFFFFFFF)
    else:
        a, b = ipaddress.IPv6Address(first), ipaddress.IPv6Address(last)
    return ", ".join(str(n) for n in ipaddress.summarize_address_range(a, b))


def keys(hi: np.ndarray, lo: np.ndarray) -> np.ndarray:
    """16-byte big-endian keys ('S16') of addresses given as uint64 halves; they sort as the numbers do."""
    out = np.empty((len(hi), 2), ">u8")
    out[:, 0] = hi
    out[:, 1] = lo
    return out.view("S16").ravel()


def int_keys(values: Sequence[int]) -> np.ndarray:
    """'S16' keys of Python integers."""
    if not len(values):
        return np.zeros(0, "S16")
    return np.frombuffer(b"".join([v.to_bytes(16, "big") for v in values]), dtype="S16").copy()


def unwrap_nat64(hi: np.ndarray, lo: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Addresses in 64:ff9b::/96 (NAT64, RFC 6052) replaced by the IPv4 address they embed (as ::ffff:a.b.c.d)."""
    nat = (hi == np.uint64(NAT64_HI)) & ((lo >> np.uint64(32)) == 0)
    if not nat.any():
        return hi, lo
    hi, lo = hi.copy(), lo.copy()
    hi[nat] = 0
    lo[nat] = np.uint64(V4_MAPPED) | lo[nat]
    return hi, lo


def subtract(first: int, last: int, holes: Iterable[tuple[int, int]]) -> list[tuple[int, int]]:
    """[first, last] minus the hole ranges, as sorted disjoint ranges."""
    out, at = [], first
    for a, b in sorted(holes):
        if b < at or a > last:
            continue
        if a > at:
            out.append((at, a - 1))
        at = max(at, b + 1)
    if at <= last:
        out.append((at, last))
    return out


@dataclass(frozen=True)
class RangeTable:
    """Sorted disjoint address ranges, each with a value id; `lookup` maps addresses to ids (-1: in no range).

    `values[i]` is whatever the builder combined for range i (e.g. the entries covering it).
    """

    starts: np.ndarray  # 'S16', sorted
    ends: np.ndarray  # 'S16', inclusive
    ids: np.ndarray  # int32 value id of each range
    values: tuple

    @classmethod
    def build(cls, items: Iterable[tuple[int, int, Hashable]],
              combine: Callable[[list[Hashable]], Hashable] = lambda xs: tuple(sorted(set(xs)))) -> "RangeTable":
        """Ranges (first, last, item), possibly overlapping, -> disjoint ranges whose value is `combine` of the
        items covering them (by default the sorted tuple of distinct items). Equal values share one id."""
        ranges = sorted((a, b, x) for a, b, x in items)
        pieces: list[tuple[int, int, Hashable]] = []
        cluster: list[tuple[int, int, Hashable]] = []
        reach = -1
        single: dict[Hashable, Hashable] = {}
        for a, b, x in ranges:  # clusters of overlapping ranges; most clusters hold one range
            if cluster and a > reach:
                if len(cluster) == 1:
                    c = cluster[0]
                    if c[2] not in single:
                        single[c[2]] = combine([c[2]])
                    pieces.append((c[0], c[1], single[c[2]]))
                else:
                    pieces.extend(_sweep(cluster, combine))
                cluster = []
            cluster.append((a, b, x))
            reach = max(reach, b) if len(cluster) > 1 else b
        if cluster:
            pieces.extend(_sweep(cluster, combine))
        merged: list[list] = []
        for a, b, v in pieces:  # neighbours with the same value become one range
            if merged and merged[-1][1] + 1 == a and merged[-1][2] == v:
                merged[-1][1] = b
            else:
                merged.append([a, b, v])
        index: dict[Hashable, int] = {}
        ids = np.array([index.setdefault(v, len(index)) for _, _, v in merged], dtype=np.int32)
        table = cls(int_keys([m[0] for m in merged]).reshape(-1), int_keys([m[1] for m in merged]).reshape(-1),
                    ids, tuple(index))
        for arr in (table.starts, table.ends, table.ids):
            arr.flags.writeable = False
        return table

    def __len__(self) -> int:
        return len(self.starts)

    def lookup_keys(self, k: np.ndarray) -> np.ndarray:
        """Value ids of 'S16' keys (int32, -1 where no range holds the address)."""
        if not len(self.starts) or not len(k):
            return np.full(len(k), -1, np.int32)
        i = np.searchsorted(self.starts, k, side="right") - 1
        j = np.maximum(i, 0)
        hit = (i >= 0) & (k <= self.ends[j])
        return np.where(hit, self.ids[j], -1).astype(np.int32)

    def lookup(self, hi: np.ndarray, lo: np.ndarray) -> np.ndarray:
        """Value ids of addresses given as uint64 halves."""
        return self.lookup_keys(keys(hi, lo))

    def lookup_one(self, value: int):
        """The value (not the id) of the range holding one address, or None."""
        i = int(self.lookup_keys(int_keys([value]))[0])
        return None if i < 0 else self.values[i]


def _sweep(cluster: list[tuple[int, int, Hashable]], combine) -> list[tuple[int, int, Hashable]]:
    """Elementary ranges of a cluster of overlapping ranges, each with the combined value of its cover."""
    if len(cluster) == 1:
        a, b, x = cluster[0]
        return [(a, b, combine([x]))]
    events: dict[int, list[tuple[int, Hashable]]] = {}
    for a, b, x in cluster:
        events.setdefault(a, []).append((1, x))
        events.setdefault(b + 1, []).append((-1, x))
    active: dict[Hashable, int] = {}
    out = []
    points = sorted(events)
    for at, nxt in zip(points, points[1:] + [None]):
        for step, x in events[at]:
            n = active.get(x, 0) + step
            if n:
                active[x] = n
            else:
                active.pop(x, None)
        if active and nxt is not None:
            out.append((at, nxt - 1, combine(list(active))))
    return out
