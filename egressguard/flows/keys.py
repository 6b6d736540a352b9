"""64-bit keys that tie packets to a finding (issue 16's evidence captures, `analyze` and `watch` alike).

A finding about one flow is keyed by its direction-free 5-tuple; a finding that aggregates connections
(`unexpected_destination`, a `beacon` over connection starts) by (protocol, sandbox address, destination address and
port), which every packet between them carries one way or the other. Every packet of a decoded chunk gets its three
candidate keys at once (numpy), and `match` finds the packets of many wanted keys without a loop over packets.
"""
from __future__ import annotations

import numpy as np

from egressguard.schema import Finding, FindingKind

_M1, _M2 = np.uint64(0xBF58476D1CE4E5B9), np.uint64(0x94D049BB133111EB)  # splitmix64 finaliser constants
_ANY_PORT = np.uint64(1 << 20)  # an address alone: a "port" no packet has


def mix(*columns) -> np.ndarray:
    """A 64-bit hash of equal-length integer columns (splitmix64 steps; wraps as uint64 does)."""
    h = np.full(len(columns[0]), 0x9E3779B97F4A7C15, np.uint64)
    with np.errstate(over="ignore"):
        for c in columns:
            h ^= np.asarray(c).astype(np.uint64)
            h *= _M1
            h ^= h >> np.uint64(31)
            h *= _M2
            h ^= h >> np.uint64(29)
    return h


def flow_key(proto, a_hi, a_lo, a_port, b_hi, b_lo, b_port) -> np.ndarray:
    """Direction-free key of a 5-tuple."""
    a = mix(np.atleast_1d(a_hi), np.atleast_1d(a_lo), np.atleast_1d(a_port))
    b = mix(np.atleast_1d(b_hi), np.atleast_1d(b_lo), np.atleast_1d(b_port))
    return mix(np.atleast_1d(proto), a ^ b)


def aggregate_key(proto, sandbox_hi, sandbox_lo, dst_hi, dst_lo, dst_port) -> np.ndarray:
    """Key of (protocol, sandbox address, destination address and port): every connection between them."""
    s = mix(np.atleast_1d(sandbox_hi), np.atleast_1d(sandbox_lo),
            np.full(np.atleast_1d(sandbox_hi).shape, _ANY_PORT))
    d = mix(np.atleast_1d(dst_hi), np.atleast_1d(dst_lo), np.atleast_1d(dst_port))
    return mix(np.atleast_1d(proto), s, d) ^ _ANY_PORT


def packet_keys(p: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The keys a PACKET row may be wanted under: its 5-tuple's, as a packet to (dst, dport), as an answer from
    (src, sport)."""
    five = flow_key(p["proto"], p["src_hi"], p["src_lo"], p["sport"], p["dst_hi"], p["dst_lo"], p["dport"])
    out = aggregate_key(p["proto"], p["src_hi"], p["src_lo"], p["dst_hi"], p["dst_lo"], p["dport"])
    back = aggregate_key(p["proto"], p["dst_hi"], p["dst_lo"], p["src_hi"], p["src_lo"], p["sport"])
    return five, out, back


def is_aggregated(finding: Finding) -> bool:
    """Whether a finding is about every connection to a destination rather than one flow."""
    if finding.kind == FindingKind.UNEXPECTED_DESTINATION:
        return True
    beacon = finding.details.get("beacon") if finding.kind == FindingKind.BEACON else None
    return isinstance(beacon, dict) and beacon.get("scope") != "bursts"  # bursts: inside one long flow


def evidence_key(finding: Finding) -> int:
    """The key of the packets behind a finding (see `is_aggregated`)."""
    rec = finding.flow
    if is_aggregated(finding):
        key = aggregate_key(rec["proto"], rec["orig_hi"], rec["orig_lo"], rec["resp_hi"], rec["resp_lo"],
                            rec["resp_port"])
    else:
        key = flow_key(rec["proto"], rec["orig_hi"], rec["orig_lo"], rec["orig_port"], rec["resp_hi"],
                       rec["resp_lo"], rec["resp_port"])
    return int(key[0])


def match(columns, wanted: np.ndarray) -> dict[int, np.ndarray]:
    """For each wanted key that some packet carries in one of `columns`: the sorted indices of those packets."""
    wanted = np.asarray(wanted, np.uint64)
    if not len(wanted) or not len(columns[0]):
        return {}
    rows, keys = [], []
    for column in columns:
        hit = np.flatnonzero(np.isin(column, wanted))
        rows.append(hit)
        keys.append(column[hit])
    rows_a, keys_a = np.concatenate(rows), np.concatenate(keys)
    if not len(rows_a):
        return {}
    order = np.lexsort((rows_a, keys_a))
    rows_a, keys_a = rows_a[order], keys_a[order]
    distinct, starts = np.unique(keys_a, return_index=True)
    out = {}
    for key, part in zip(distinct.tolist(), np.split(rows_a, starts[1:])):  # one step per wanted key found
        out[int(key)] = np.unique(part)
    return out


__all__ = ["aggregate_key", "evidence_key", "flow_key", "is_aggregated", "match", "mix", "packet_keys"]
