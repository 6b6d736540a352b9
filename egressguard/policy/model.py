"""What a rules file says, as values: the services (ports and protocols), sources and entries of [[allow]]/[[deny]],
the [settings], and the per-flow facts matching reads. rules.py builds them; allowlist.py compiles them.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, NamedTuple, Sequence

import numpy as np

from egressguard.policy.addrclass import Treatment
from egressguard.netaddr import range_text
from egressguard.schema import PROTO_NAMES, Severity

ANY_SERVICE = ((0, 0xFFFFFF),)  # keys are protocol << 16 | port


class Services(NamedTuple):
    """The protocols and ports an entry covers, as merged ranges of (protocol << 16 | port) keys."""

    ranges: tuple[tuple[int, int], ...] = ANY_SERVICE

    @classmethod
    def build(cls, ports: list[tuple[int, int]], protocols: list[int]) -> "Services":
        if not protocols:
            return cls(ANY_SERVICE)
        if not ports:
            return cls.merge((p << 16, p << 16 | 0xFFFF) for p in protocols)
        return cls.merge((p << 16 | a, p << 16 | b) for p in protocols for a, b in ports)

    @classmethod
    def merge(cls, ranges: Iterable[tuple[int, int]]) -> "Services":
        out: list[list[int]] = []
        for a, b in sorted(ranges):
            if out and a <= out[-1][1] + 1:
                out[-1][1] = max(out[-1][1], b)
            else:
                out.append([a, b])
        return cls(tuple((a, b) for a, b in out))

    def contains(self, proto: int, port: int) -> bool:
        k = proto << 16 | port
        return any(a <= k <= b for a, b in self.ranges)

    def text(self) -> str:
        """e.g. "tcp, udp: 53, 67" or "any"."""
        if self.ranges == ANY_SERVICE:
            return "any"
        by_proto: dict[int, list[str]] = {}
        for a, b in self.ranges:
            for proto in range(a >> 16, (b >> 16) + 1):
                lo = a & 0xFFFF if proto == a >> 16 else 0
                hi = b & 0xFFFF if proto == b >> 16 else 0xFFFF
                by_proto.setdefault(proto, []).append("" if (lo, hi) == (0, 0xFFFF) else
                                                      str(lo) if lo == hi else f"{lo}-{hi}")
        groups: dict[tuple[str, ...], list[str]] = {}
        for proto, ports in by_proto.items():
            name = "sctp" if proto == 132 else str(PROTO_NAMES.get(proto, proto))
            groups.setdefault(tuple(p for p in ports if p), []).append(name)
        return "; ".join(", ".join(names) + (": " + ", ".join(ports) if ports else "")
                         for ports, names in groups.items())


@dataclass(frozen=True)
class Sources:
    """Which sandboxes an entry applies to: any of these originator addresses, MACs or capture interfaces."""

    cidrs: tuple[tuple[int, int], ...] = ()
    macs: tuple[int, ...] = ()
    interfaces: tuple[str | int, ...] = ()

    def text(self) -> str:
        parts = [range_text(a, b) for a, b in self.cidrs]
        parts += [":".join(f"{b:02x}" for b in m.to_bytes(6, "big")) for m in self.macs]
        parts += [f"interface {i}" for i in self.interfaces]
        return ", ".join(parts)


class Entry(NamedTuple):
    """One [[allow]] or [[deny]] entry, validated."""

    action: str
    index: int
    name: str
    line: int
    ranges: tuple[tuple[int, int], ...]  # cidrs minus except, as inclusive address ranges
    cidr_text: tuple[str, ...]
    except_text: tuple[str, ...]
    domains: tuple[str, ...]
    classes: tuple[str, ...]
    services: Services
    sources: Sources | None
    severity: Severity | None  # deny entries only
    ssh_tunnels: tuple[str, ...] = ()  # allow entries: SSH tunnel uses expected to this destination (never by default)

    def label(self) -> str:
        """How findings and messages name the entry: `deny[0] "tunnel services" (line 12)`."""
        return f'{self.action}[{self.index}] "{self.name}"' + (f" (line {self.line})" if self.line else "")


class EntryTable(Sequence):
    """The entries of an Allowlist, kept as plain tuples (100,000 of them load from the rules cache in ~0.1 s);
    an Entry is made when one is asked for."""

    def __init__(self, entries: Iterable[Entry]):
        # the address ranges live on in the compiled tables; the rows keep what messages and `rules check` show
        self._rows = [tuple(e[:4]) + ((),) + tuple(e[5:]) for e in entries]

    def __len__(self) -> int:
        return len(self._rows)

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [Entry(*row) for row in self._rows[i]]
        return Entry(*self._rows[i])

    def services(self, i: int) -> Services:
        return self._rows[i][9]

    def action(self, i: int) -> str:
        return self._rows[i][0]


@dataclass(frozen=True)
class RuleSettings:
    """The [settings], [sandboxes] and [classes] of a rules file."""

    sandbox_networks: tuple[tuple[int, int], ...] = ()
    host_addresses: tuple[tuple[int, int], ...] = ()
    resolvers: tuple[tuple[int, int], ...] = ()
    min_dns_ttl_s: float = 3600.0
    sandbox_names: tuple[tuple[object, str], ...] = ()  # ((first, last) | mac int, name)
    class_overrides: tuple[tuple[str, Treatment, Severity | None], ...] = ()
    acquisition: tuple = ()  # AcquisitionGrant per [[acquisition]] entry (policy/acquisition.py)


@dataclass(frozen=True)
class FlowContext:
    """The per-flow facts matching needs, for a batch (all arrays of one length)."""

    dst_hi: np.ndarray
    dst_lo: np.ndarray
    proto: np.ndarray
    port: np.ndarray
    scopes: np.ndarray  # bool [n_scopes, n]: row in scope s (scope 0 = any sandbox)
