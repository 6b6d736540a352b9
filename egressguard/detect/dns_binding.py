"""Names bound to addresses by the DNS answers seen on the wire (the way Cilium's toFQDNs policies bind them).

Each sandbox (the client that asked) has its own binding: address -> {name: (bound at, expiry)}, plus the reverse
index name -> addresses for evidence ("pypi.org was bound to 151.101.0.223, not to this address"). A name is bound
from the time of the answer that carried it until that time plus the answer's TTL, raised to a minimum (Cilium's
--tofqdns-min-ttl; detection-science 3.2), all in capture time; `keep_alive` extends it while a flow to the address
is open ("live connections are not expired until they terminate"). CNAME chains are followed back to the name that
was asked for, so a CDN edge address is bound to the asked name and to every alias on the way; every name that
leads to an address is kept (CDN addresses are shared), up to MAX_NAMES_PER_ADDRESS. PTR answers bind nothing:
reverse DNS is chosen by whoever owns the address (Little Snitch rejects it for the same reason).

`observe_dns` feeds the binding from a batch's DNS flows (UDP and TCP, ports 53 and 5353); the engine runs it before
every detector, so all of them read names bound by the answers in the same batch.
"""
from __future__ import annotations

from collections import OrderedDict

import numpy as np

from egressguard.flows.view import FlowView
from egressguard.netaddr import address_text, keys, parse_address
from egressguard.payload.dns import DnsMessage
from egressguard.payload.dns_table import bindings, name_text, unique_names

MIN_TTL_S = 3600.0  # Cilium's default --tofqdns-min-ttl: short TTLs must not unbind names still in use
MAX_BOUND_ADDRESSES = 1 << 20  # bounded memory: the least recently answered (sandbox, address) pairs go first
MAX_NAMES_PER_ADDRESS = 64  # CDN edges serve many names; beyond this the soonest-expiring name goes
MAX_CHAIN = 32  # names followed back along CNAME chains per answer
A, CNAME, AAAA = 1, 5, 28

Key = tuple[int, int]  # (sandbox address, bound address), both in storage form (IPv4 as ::ffff:a.b.c.d)


def _addr(value: int | str) -> int:
    return value if isinstance(value, int) else parse_address(value)


class DnsBinding:
    """Address -> names per sandbox, from DNS answers; bounded (LRU by (sandbox, address)) and expiring by TTL.

    Sandboxes and addresses may be given as text or as storage-form integers (`(hi << 64) | lo`).
    """

    def __init__(self, min_ttl_s: float = MIN_TTL_S, max_addresses: int = MAX_BOUND_ADDRESSES):
        self.min_ttl_s = min_ttl_s
        self.max_addresses = max_addresses
        self._bound: OrderedDict[Key, dict[str, list[float]]] = OrderedDict()  # name -> [bound_at, expiry]
        self._by_name: dict[tuple[int, str], set[int]] = {}
        self._addr_refs: dict[int, int] = {}  # address -> number of sandboxes it is bound for
        self._keys_cache: np.ndarray | None = None
        self.version = 0  # bumped on every change of which addresses are bound

    # ---- feeding
    def observe(self, sandbox: int | str, message: DnsMessage, ts: float) -> None:
        """Bind every address in a response to the names that lead to it (question name and CNAME chain)."""
        if not message.is_response or not message.answers:
            return
        sandbox = _addr(sandbox)
        aliases: dict[str, set[str]] = {}  # target -> names that point to it
        for rr in message.answers:
            if rr.rtype == CNAME and rr.value:
                aliases.setdefault(rr.value, set()).add(rr.name)
        for rr in message.answers:
            if rr.rtype not in (A, AAAA) or not rr.value:
                continue
            try:
                address = parse_address(rr.value)
            except ValueError:
                continue
            names = {rr.name}
            frontier = [rr.name]
            while frontier:  # walk the CNAME chain back to the name that was asked for
                name = frontier.pop()
                for alias in aliases.get(name, ()):
                    if alias not in names and len(names) < MAX_CHAIN:
                        names.add(alias)
                        frontier.append(alias)
            self._bind(sandbox, address, names, ts, ts + max(float(rr.ttl), self.min_ttl_s))
        while len(self._bound) > self.max_addresses:
            self._drop(*self._bound.popitem(last=False))

    def bind_answers(self, sandbox_hi: np.ndarray, sandbox_lo: np.ndarray, addr_hi: np.ndarray,
                     addr_lo: np.ndarray, answer: np.ndarray, names: list[str], ts: np.ndarray,
                     ttl: np.ndarray) -> None:
        """Bind many answers at once: rows of one answer (same `answer` id, consecutive) give an address and the
        names leading to it (payload/dns_table.bindings), for the sandbox that received it at `ts` (s)."""
        if not len(answer):
            return
        starts = np.flatnonzero(np.r_[True, answer[1:] != answer[:-1]]).tolist() + [len(answer)]
        s_hi, s_lo, a_hi, a_lo = (x.tolist() for x in (sandbox_hi, sandbox_lo, addr_hi, addr_lo))
        ts, ttl = ts.tolist(), ttl.tolist()
        for i, j in zip(starts[:-1], starts[1:]):
            expiry = ts[i] + max(float(ttl[i]), self.min_ttl_s)
            self._bind((s_hi[i] << 64) | s_lo[i], (a_hi[i] << 64) | a_lo[i], set(names[i:j]), ts[i], expiry)
        while len(self._bound) > self.max_addresses:
            self._drop(*self._bound.popitem(last=False))

    def _bind(self, sandbox: int, address: int, names: set[str], ts: float, expiry: float) -> None:
        key = (sandbox, address)
        entry = self._bound.pop(key, None)
        if entry is None:
            entry = {}
            self._addr_refs[address] = self._addr_refs.get(address, 0) + 1
            self._keys_cache = None
            self.version += 1
        for name in names:
            held = entry.get(name)
            if held is None:
                entry[name] = [ts, expiry]
                self._by_name.setdefault((sandbox, name), set()).add(address)
            else:
                held[0], held[1] = min(held[0], ts), max(held[1], expiry)
        while len(entry) > MAX_NAMES_PER_ADDRESS:
            gone = min(entry, key=lambda n: entry[n][1])
            del entry[gone]
            self._unindex(sandbox, gone, address)
        self._bound[key] = entry

    def _drop(self, key: Key, entry: dict[str, list[float]]) -> None:
        sandbox, address = key
        for name in entry:
            self._unindex(sandbox, name, address)
        left = self._addr_refs.get(address, 1) - 1
        if left:
            self._addr_refs[address] = left
        else:
            self._addr_refs.pop(address, None)
        self._keys_cache = None
        self.version += 1

    def _unindex(self, sandbox: int, name: str, address: int) -> None:
        held = self._by_name.get((sandbox, name))
        if held is not None:
            held.discard(address)
            if not held:
                del self._by_name[(sandbox, name)]

    def keep_alive(self, sandbox: int | str, address: int | str, until: float, since: float | None = None) -> None:
        """A flow to `address` was open until `until`: the names bound to it stay bound at least that long (only
        those bound when the flow started, when its start `since` is given)."""
        entry = self._bound.get((_addr(sandbox), _addr(address)))
        if entry is not None:
            for held in entry.values():
                if since is None or held[0] <= since <= held[1]:
                    held[1] = max(held[1], until)

    # ---- reading
    def names(self, sandbox: int | str, address: int | str, ts: float) -> list[str]:
        """Names bound to `address` for `sandbox` at time ts: answered at or before ts, not yet expired (sorted)."""
        return self.lookup(sandbox, address, ts)[0]

    def lookup(self, sandbox: int | str, address: int | str, ts: float) -> tuple[list[str], list[str], list[str]]:
        """(live names, names whose binding had expired by ts, names answered only after ts), each sorted."""
        entry = self._bound.get((_addr(sandbox), _addr(address)))
        if not entry:
            return [], [], []
        live, expired, later = [], [], []
        for name, (bound_at, expiry) in entry.items():
            (later if bound_at > ts else live if expiry >= ts else expired).append(name)
        return sorted(live), sorted(expired), sorted(later)

    def addresses(self, sandbox: int | str, name: str, ts: float | None = None) -> list[str]:
        """Addresses `name` was bound to for `sandbox` (live at ts when given), as text, sorted."""
        sandbox = _addr(sandbox)
        out = []
        for address in self._by_name.get((sandbox, name), ()):
            held = self._bound.get((sandbox, address), {}).get(name)
            if held is not None and (ts is None or held[0] <= ts <= held[1]):
                out.append(address)
        return [address_text(a) for a in sorted(out)]

    def bound_anywhere(self, hi: np.ndarray, lo: np.ndarray) -> np.ndarray:
        """Vectorised prefilter: which addresses are bound for any sandbox at any time (bool per address)."""
        if not self._addr_refs:
            return np.zeros(len(hi), bool)
        if self._keys_cache is None:
            values = sorted(self._addr_refs)
            self._keys_cache = keys(np.array([v >> 64 for v in values], np.uint64),
                                    np.array([v & 0xFFFFFFFFFFFFFFFF for v in values], np.uint64))
        k = keys(hi, lo)
        i = np.minimum(np.searchsorted(self._keys_cache, k), len(self._keys_cache) - 1)
        return self._keys_cache[i] == k

    def __len__(self) -> int:
        return len(self._bound)


def observe_dns(binding: DnsBinding, view: FlowView) -> None:
    """Feed `binding` from the DNS answers of a batch (UDP and TCP, DNS and mDNS ports), read from the batch's
    message table. The engine calls this before any detector sees the batch, so every detector reads names bound
    by the answers in the same batch. Each answer is bound at the time of the packet that carried it (UDP), or of
    the first answer segment (TCP); names are turned into text once per distinct name."""
    dns = view.dns
    t = dns.table
    if not len(t.answers):
        return
    answer, name = bindings(t)
    message = t.answers["message"][answer]
    keep = t.messages["direction"][message] == 1  # what the server side said
    if not keep.any():
        return
    answer, name, message = answer[keep], name[keep], message[keep]
    group, first = unique_names(t, name)
    texts = [name_text(t, int(off)) for off in name[first].tolist()]
    rows = dns.rows[t.messages["row"][message]]
    recs = view.records
    sandbox_hi, sandbox_lo = recs["orig_hi"][rows], recs["orig_lo"][rows]
    ans = t.answers[answer]
    binding.bind_answers(sandbox_hi, sandbox_lo, ans["addr_hi"], ans["addr_lo"], answer, [texts[g] for g in group],
                         t.messages["ts_ns"][message] / 1e9, ans["ttl"])
