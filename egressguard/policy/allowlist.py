"""The compiled rules: an immutable Allowlist whose matching is vectorised over a batch of flows.

Addresses are looked up in sorted range tables (numpy `searchsorted`, netaddr.RangeTable), names in hash tables
(exact names, `*.suffix`, `**.suffix`, and the few patterns with `*` inside a label indexed by their fixed suffix),
ports and protocols in one sorted table of (service set, protocol, port) keys. The cost of a batch grows with the
number of flows and, slightly, with the number of distinct `sources` sets; never with the number of entries.
Built by rules.py (which validates); nothing here raises on user input.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Iterable, Sequence

import numpy as np

from egressguard.policy.addrclass import (ADDRESS_CLASSES, DOH_ADDRESSES, DOH_CLASS, GLOBAL_CLASS, HOST_CLASS,
                                   AddressClass, Treatment)
from egressguard.netaddr import RangeTable, int_keys, keys, parse_address, parse_network, unwrap_nat64
from egressguard.policy.model import Entry, EntryTable, FlowContext, RuleSettings, Services, Sources  # noqa: F401
from egressguard.schema import Severity

CLASSES: tuple[AddressClass, ...] = ADDRESS_CLASSES + (HOST_CLASS, GLOBAL_CLASS)
CLASS_INDEX = {c.name: i for i, c in enumerate(CLASSES)}
HOST, GLOBAL = CLASS_INDEX["host"], CLASS_INDEX["global"]
DOH = len(CLASSES)  # the encrypted-DNS pseudo-class: selectable and overridable like the address classes
CLASS_NAMES = tuple(c.name for c in CLASSES) + (DOH_CLASS,)


class _Groups:
    """Interned sets of entries, and per (set, sources scope) the union of their services, as sorted keys."""

    def __init__(self, entries: "EntryTable", scope_of: list[int], n_scopes: int):
        self.entries, self.scope_of, self.n_scopes = entries, scope_of, n_scopes
        self.members: list[tuple[int, ...]] = []
        self._ids: dict[tuple[int, ...], int] = {}

    def intern(self, members: Iterable[int]) -> int:
        key = tuple(sorted(set(members)))
        if key not in self._ids:
            self._ids[key] = len(self.members)
            self.members.append(key)
        return self._ids[key]

    def freeze(self) -> None:
        unions: dict[tuple, int] = {}
        rows = []
        for g, members in enumerate(self.members):
            if len(members) == 1:  # most groups: one entry, its services as they are
                e = members[0]
                su = unions.setdefault(self.entries.services(e).ranges, len(unions))
                rows.append((g * self.n_scopes + self.scope_of[e], su))
                continue
            by_scope: dict[int, list[tuple[int, int]]] = {}
            for e in members:
                by_scope.setdefault(self.scope_of[e], []).extend(self.entries.services(e).ranges)
            for s, ranges in by_scope.items():
                su = unions.setdefault(Services.merge(ranges).ranges, len(unions))
                rows.append((g * self.n_scopes + s, su))
        rows.sort()
        self.keys = np.array([k for k, _ in rows], np.int64)
        self.su = np.array([u for _, u in rows], np.int32)
        svc = sorted((su << 24 | a, su << 24 | b) for ranges, su in unions.items() for a, b in ranges)
        self.svc_starts = np.array([a for a, _ in svc], np.uint64)
        self.svc_ends = np.array([b for _, b in svc], np.uint64)

    def match(self, groups: np.ndarray, ctx: FlowContext, rows: np.ndarray | None = None) -> np.ndarray:
        """Rows whose group holds an entry whose sources and services fit the flow."""
        sel = np.arange(len(groups)) if rows is None else rows
        out = np.zeros(len(groups), bool)
        g = groups[sel]
        for s in range(self.n_scopes):
            r = sel[(g >= 0) & ctx.scopes[s, sel]]
            if not len(r) or not len(self.keys):
                continue
            k = groups[r].astype(np.int64) * self.n_scopes + s
            i = np.minimum(np.searchsorted(self.keys, k), len(self.keys) - 1)
            su = np.where(self.keys[i] == k, self.su[i], -1).astype(np.int64)
            key = (np.maximum(su, 0).astype(np.uint64) << np.uint64(24)) | \
                (ctx.proto[r].astype(np.uint64) << np.uint64(16)) | ctx.port[r].astype(np.uint64)
            j = np.searchsorted(self.svc_starts, key, side="right") - 1
            ok = (su >= 0) & (j >= 0) & (key <= self.svc_ends[np.maximum(j, 0)])
            out[r[ok]] = True
        return out

    def first(self, group: int, scopes_of_row: np.ndarray, proto: int, port: int) -> Entry | None:
        """The first entry (file order) of a group that fits one flow (for explaining a verdict)."""
        for e in self.members[group] if group >= 0 else ():
            if scopes_of_row[self.scope_of[e]] and self.entries.services(e).contains(proto, port):
                return self.entries[e]
        return None


class _DomainIndex:
    """Domain patterns of one action -> entry ids, by hashing (exact, `*.suffix`, `**.suffix`, fixed suffix)."""

    def __init__(self) -> None:
        self.exact: dict[str, int | list[int]] = {}
        self.one_label: dict[str, int | list[int]] = {}
        self.any_depth: dict[str, int | list[int]] = {}
        self.infix: dict[str, list[tuple[re.Pattern, int]]] = {}
        self.every: list[int] = []
        self._cache: dict[str, tuple[int, ...]] = {}

    def add(self, pattern: str, entry: int) -> None:
        labels = pattern.split(".")
        if pattern == "**":
            self.every.append(entry)
        elif labels[0] == "**":
            _put(self.any_depth, ".".join(labels[1:]), entry)
        elif "*" not in pattern:
            _put(self.exact, pattern, entry)
        elif labels[0] == "*" and "*" not in ".".join(labels[1:]):
            _put(self.one_label, ".".join(labels[1:]), entry)
        else:
            last = max(i for i, label in enumerate(labels) if "*" in label)
            regex = re.compile(r"\.".join("[^.]*".join(re.escape(p) for p in label.split("*")) for label in labels)
                               + r"\Z")
            self.infix.setdefault(".".join(labels[last + 1:]), []).append((regex, entry))

    def lookup(self, name: str) -> tuple[int, ...]:
        """Entry ids whose pattern matches `name`, in file order."""
        hit = self._cache.get(name)
        if hit is not None:
            return hit
        found = set(self.every) | _get(self.exact, name)
        labels = name.split(".")
        for i in range(1, len(labels) + 1):
            suffix = ".".join(labels[i:])
            if i == 1:
                found |= _get(self.one_label, suffix)
            if i < len(labels):
                found |= _get(self.any_depth, suffix)
            for regex, entry in self.infix.get(suffix, ()):
                if regex.match(name):
                    found.add(entry)
        hit = tuple(sorted(found))
        if len(self._cache) < 65536:
            self._cache[name] = hit
        return hit


def _put(index: dict, key: str, entry: int) -> None:
    """One entry id per key as a plain int (compact to cache), several as a list."""
    held = index.get(key)
    if held is None:
        index[key] = entry
    elif isinstance(held, list):
        held.append(entry)
    else:
        index[key] = [held, entry]


def _get(index: dict, key: str) -> set[int]:
    held = index.get(key)
    return set() if held is None else {held} if isinstance(held, int) else set(held)


@dataclass(frozen=True, eq=False)
class Allowlist:
    """Compiled rules (immutable once built; see rules.load_rules). Deny entries come first in `entries`."""

    entries: EntryTable
    settings: RuleSettings
    source: str
    source_path: str | None
    treatments: np.ndarray  # uint8 per class index (CLASSES + doh): 0 deny, 1 allowlist, 2 ignore
    severities: np.ndarray  # uint8 Severity per class index
    _t: dict = field(repr=False)

    @classmethod
    def compile(cls, entries: Sequence[Entry], settings: RuleSettings, source: str,
                source_path: str | None = None) -> "Allowlist":
        """Build the lookup tables of validated entries and settings."""
        table = EntryTable(entries)  # what the Allowlist keeps; the loops below read the Entry objects given
        sources = sorted({e.sources for e in entries if e.sources is not None}, key=repr)
        scope_ids = {s: i + 1 for i, s in enumerate(sources)}
        scope_of = [scope_ids.get(e.sources, 0) if e.sources is not None else 0 for e in entries]
        groups = _Groups(table, scope_of, len(sources) + 1)
        t: dict = {"groups": groups, "scopes": [_scope_table(s) for s in sources]}
        classes = RangeTable.build(
            [(a, b, (b - a, i)) for i, c in enumerate(ADDRESS_CLASSES) for a, b in map(parse_network, c.cidrs)]
            + [(a, b, (b - a - (1 << 129), HOST)) for a, b in settings.host_addresses],
            combine=lambda xs: min(xs)[1])
        t["classes"] = classes
        t["class_ids"] = np.array(classes.values, np.int16)
        treat = [c.treatment for c in CLASSES] + [Treatment.DENY]
        sev = [c.severity for c in CLASSES] + [Severity.HIGH]
        for name, treatment, severity in settings.class_overrides:
            i = CLASS_NAMES.index(name)
            treat[i] = treatment
            sev[i] = severity or sev[i]
        codes = {Treatment.DENY: 0, Treatment.ALLOWLIST: 1, Treatment.IGNORE: 2}
        items: dict[str, list[tuple[int, int, int]]] = {"deny": [], "allow": []}
        by_class: dict[str, dict[str, list[int]]] = {"deny": {}, "allow": {}}
        t["deny_names"], t["allow_names"] = _DomainIndex(), _DomainIndex()
        for i, e in enumerate(entries):
            if len(e.ranges) == 1:
                items[e.action].append((e.ranges[0][0], e.ranges[0][1], i))
            elif e.ranges:
                items[e.action].extend((a, b, i) for a, b in e.ranges)
            for name in e.classes:
                by_class[e.action].setdefault(name, []).append(i)
            for pattern in e.domains:
                t[e.action + "_names"].add(pattern, i)
        for action in ("deny", "allow"):
            t[action + "_cidr"] = _group_table(groups, items[action])
            t[action + "_class"] = np.array([groups.intern(by_class[action][name]) if name in by_class[action]
                                             else -1 for name in CLASS_NAMES], np.int32)
        declared = {i: [parse_network(x) for x in c.cidrs] for i, c in enumerate(ADDRESS_CLASSES)}
        declared[HOST] = list(settings.host_addresses)
        allow_first = int_keys([a for a, _, _ in items["allow"]])
        allow_last = int_keys([b for _, b, _ in items["allow"]])
        t["lift"] = {c: _group_table(groups, _inside(items["allow"], allow_first, allow_last, rs))
                     for c, rs in declared.items() if treat[c] == Treatment.DENY and rs}
        t["inside"] = RangeTable.build((a, b, 0) for a, b in settings.sandbox_networks)
        t["resolvers"] = RangeTable.build((a, b, 0) for a, b in settings.resolvers)
        t["doh"] = RangeTable.build((parse_address(x), parse_address(x), 0) for x in DOH_ADDRESSES)
        t["names_cidr"] = RangeTable.build(((v[0], v[1], (v[1] - v[0], n)) for v, n in settings.sandbox_names
                                            if isinstance(v, tuple)), combine=lambda xs: min(xs)[1])
        t["names_mac"] = {v: n for v, n in settings.sandbox_names if isinstance(v, int)}
        groups.freeze()
        return cls(table, settings, source, source_path, np.array([codes[x] for x in treat], np.uint8),
                   np.array([int(s) for s in sev], np.uint8), t)

    # ---- vectorised, per batch
    def classify(self, hi: np.ndarray, lo: np.ndarray) -> np.ndarray:
        """Class index (into CLASSES) of each address; NAT64 addresses are classified by the IPv4 they embed."""
        hi, lo = unwrap_nat64(hi, lo)
        ids = self._t["classes"].lookup(hi, lo)
        out = np.full(len(hi), GLOBAL, np.int16)
        hit = ids >= 0
        out[hit] = self._t["class_ids"][ids[hit]]
        return out

    def inside(self, hi: np.ndarray, lo: np.ndarray, classes: np.ndarray | None = None) -> np.ndarray:
        """Addresses inside the sandbox networks; with none configured, private and CGNAT addresses."""
        if len(self.settings.sandbox_networks):
            return self._t["inside"].lookup(hi, lo) >= 0
        classes = self.classify(hi, lo) if classes is None else classes
        return (classes == CLASS_INDEX["private"]) | (classes == CLASS_INDEX["cgnat"])

    def inside_ranges(self) -> tuple[np.ndarray, np.ndarray, bool]:
        """What `inside` holds as sorted disjoint inclusive ranges ('S16' first and last keys), and whether NAT64
        addresses count by the IPv4 address they embed (they do for address classes): for kernels that test
        millions of addresses (shards.py)."""
        if len(self.settings.sandbox_networks):
            return self._t["inside"].starts, self._t["inside"].ends, False
        table = self._t["classes"]
        cls = self._t["class_ids"][table.ids] if len(table) else np.zeros(0, np.int16)
        keep = (cls == CLASS_INDEX["private"]) | (cls == CLASS_INDEX["cgnat"])
        return table.starts[keep], table.ends[keep], True

    def dest_inside(self, hi: np.ndarray, lo: np.ndarray) -> np.ndarray:
        """Destinations inside the sandbox networks (east-west traffic); none when no networks are configured."""
        if not len(self.settings.sandbox_networks):
            return np.zeros(len(hi), bool)
        return self._t["inside"].lookup(hi, lo) >= 0

    def outbound(self, recs: np.ndarray) -> np.ndarray:
        """FLOW rows the policy judges: opened by a sandbox (not by the host itself) towards somewhere outside the
        sandbox networks, or towards the host, and not to a class the rules ignore (loopback, multicast, ...)."""
        inside = self.inside(recs["orig_hi"], recs["orig_lo"])
        if not inside.any():
            return inside
        if len(self.settings.host_addresses):  # the host itself is no sandbox
            inside &= self.classify(recs["orig_hi"], recs["orig_lo"]) != HOST
        classes = self.classify(recs["resp_hi"], recs["resp_lo"])
        leaves = ~self.dest_inside(recs["resp_hi"], recs["resp_lo"]) | (classes == HOST)
        return inside & leaves & (self.treatments[classes] != 2)

    def scopes(self, recs: np.ndarray, iface_names: dict[int, str] | None = None) -> np.ndarray:
        """bool [n_scopes, n]: which `sources` sets each flow's originator belongs to (row 0: any)."""
        out = np.ones((1 + len(self._t["scopes"]), len(recs)), bool)
        for s, (table, macs, ifaces, names) in enumerate(self._t["scopes"], 1):
            hit = table.lookup(recs["orig_hi"], recs["orig_lo"]) >= 0 if len(table) else np.zeros(len(recs), bool)
            if len(macs):
                hit |= np.isin(recs["orig_mac"], macs)
            known = set(ifaces) | {i for i, n in (iface_names or {}).items() if n in names}
            if known:
                hit |= np.isin(recs["iface"], np.array(sorted(known), np.int64))
            out[s] = hit
        return out

    def match_cidr(self, action: str, ctx: FlowContext, rows: np.ndarray | None = None) -> np.ndarray:
        """Rows whose destination is in a CIDR of a fitting `action` entry."""
        return self._t["groups"].match(self._cidr_groups(action, ctx), ctx, rows)

    def match_class(self, action: str, classes: np.ndarray, ctx: FlowContext,
                    rows: np.ndarray | None = None) -> np.ndarray:
        """Rows whose class (index; DOH for encrypted DNS) a fitting `action` entry names under `classes`."""
        return self._t["groups"].match(self._t[action + "_class"][classes], ctx, rows)

    def lifted(self, classes: np.ndarray, ctx: FlowContext) -> np.ndarray:
        """Rows of deny-treated classes that an allow entry lifts: it names the class, or its CIDR lies inside the
        class's own ranges (e.g. 169.254.169.254/32 lifts `metadata`; 0.0.0.0/0 lifts nothing)."""
        out = self.match_class("allow", classes, ctx)
        for c, table in self._t["lift"].items():
            rows = np.flatnonzero(classes == c)
            if len(rows) and len(table):
                groups = np.full(len(classes), -1, np.int32)
                groups[rows] = _lookup_groups(table, ctx.dst_hi[rows], ctx.dst_lo[rows])
                out |= self._t["groups"].match(groups, ctx, rows)
        return out

    def is_resolver(self, hi: np.ndarray, lo: np.ndarray) -> np.ndarray:
        return self._t["resolvers"].lookup(hi, lo) >= 0

    def is_doh_address(self, hi: np.ndarray, lo: np.ndarray) -> np.ndarray:
        return self._t["doh"].lookup(hi, lo) >= 0

    def _cidr_groups(self, action: str, ctx: FlowContext) -> np.ndarray:
        hi, lo = unwrap_nat64(ctx.dst_hi, ctx.dst_lo)
        return _lookup_groups(self._t[action + "_cidr"], hi, lo)

    # ---- per flow, for the few flows that need it
    def match_names(self, action: str, names: Iterable[str], scopes_of_row: np.ndarray, proto: int,
                    port: int) -> Entry | None:
        """The first `action` entry (file order) with a domain pattern matching one of `names` that fits the flow."""
        index: _DomainIndex = self._t[action + "_names"]
        groups: _Groups = self._t["groups"]
        best = None
        for name in names:
            for e in index.lookup(name):
                if best is not None and e >= best:
                    break
                if scopes_of_row[groups.scope_of[e]] and self.entries.services(e).contains(proto, port):
                    best = e
                    break
        return None if best is None else self.entries[best]

    def names_with(self, action: str, names: set[str]) -> set[str]:
        """The names that some `action` entry's domain pattern matches (before looking at ports and sources)."""
        index: _DomainIndex = self._t[action + "_names"]
        return {name for name in names if index.lookup(name)}

    def first_entry(self, action: str, ctx: FlowContext, row: int, cls: int) -> Entry | None:
        """The first `action` entry matching one flow by CIDR or class (to name it in a finding)."""
        groups: _Groups = self._t["groups"]
        proto, port = int(ctx.proto[row]), int(ctx.port[row])
        hi, lo = unwrap_nat64(ctx.dst_hi[row:row + 1], ctx.dst_lo[row:row + 1])
        found = [groups.first(int(_lookup_groups(self._t[action + "_cidr"], hi, lo)[0]), ctx.scopes[:, row], proto,
                              port),
                 groups.first(int(self._t[action + "_class"][cls]), ctx.scopes[:, row], proto, port)]
        found = [e for e in found if e is not None]
        return min(found, key=lambda e: (e.action != "deny", e.index)) if found else None

    def sandbox_name(self, address: int, mac: int) -> str | None:
        """The human name the rules give a sandbox (by MAC, else the most specific CIDR)."""
        return self._t["names_mac"].get(mac) or self._t["names_cidr"].lookup_one(address)

    def class_name(self, index: int) -> str:
        return CLASS_NAMES[index]

    def treatment(self, index: int) -> Treatment:
        return (Treatment.DENY, Treatment.ALLOWLIST, Treatment.IGNORE)[int(self.treatments[index])]


def _scope_table(sources: Sources) -> tuple:
    table = RangeTable.build((a, b, 0) for a, b in sources.cidrs)
    return (table, np.array(sources.macs, np.uint64), [i for i in sources.interfaces if isinstance(i, int)],
            {i for i in sources.interfaces if isinstance(i, str)})


def _inside(items: list[tuple[int, int, int]], first: np.ndarray, last: np.ndarray,
            ranges: list[tuple[int, int]]) -> list[tuple[int, int, int]]:
    """The items (first, last, entry; keys `first`, `last`) lying entirely inside one of `ranges` (vectorised)."""
    if not items:
        return []
    hit = np.zeros(len(items), bool)
    for x, y in ranges:
        lo, hi = int_keys([x, y])
        hit |= (first >= lo) & (last <= hi)
    return [items[i] for i in np.flatnonzero(hit).tolist()]


@dataclass(frozen=True)
class _GroupTable:
    """Address ranges -> entry group ids."""

    table: RangeTable
    values: np.ndarray

    def __len__(self) -> int:
        return len(self.table)


def _group_table(groups: _Groups, items: list[tuple[int, int, int]]) -> _GroupTable:
    table = RangeTable.build(items, combine=groups.intern)
    return _GroupTable(table, np.array(table.values or (0,), np.int32))


def _lookup_groups(gt: _GroupTable, hi: np.ndarray, lo: np.ndarray) -> np.ndarray:
    ids = gt.table.lookup_keys(keys(hi, lo))
    return np.where(ids >= 0, gt.values[np.maximum(ids, 0)], -1).astype(np.int32)
