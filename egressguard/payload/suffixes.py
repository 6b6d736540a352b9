"""Public suffixes and suffix lists, matched on DNS names in wire form by hashes of their label suffixes.

The Public Suffix List (publicsuffix.org; shipped, and updated with it, by the `publicsuffixlist` package) is compiled
once, on first use, into a hash table (64-bit FNV-1a) of the suffixes its rules name, each with the kinds of rule
naming it: normal, wildcard (`*.`), exception (`!`), ICANN and private sections alike. A kernel hashes every suffix
of a name's lower-cased dotted form that starts at a label and applies the list's algorithm exactly as
`publicsuffixlist.PublicSuffixList.privatesuffix` does for a tuple of byte labels (longest candidate first; at each
length an exception, then a wildcard, then a normal rule; the default rule `*`). Every hash hit is confirmed on the
bytes, so a crafted name cannot collide its way into a rule. `SuffixSet` does the same for any list of suffixes
(e.g. rules/pools.toml). Also here: case-folded keys and comparisons of wire names.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Iterable, NamedTuple

import numpy as np
from numba import njit

from egressguard.policy.cache import cached_arrays

MAX_NAME = 255  # RFC 1035 2.3.4: label bytes plus length bytes
MAX_LABELS = 127  # each label takes at least 2 of those 255 bytes
FNV_OFFSET = np.uint64(0xCBF29CE484222325)  # FNV-1a, 64 bits (draft-eastlake-fnv)
FNV_PRIME = np.uint64(0x100000001B3)
RULE, WILDCARD, EXCEPTION = 1, 2, 4  # PublicSuffixRules.kinds bits


class HashedSuffixes(NamedTuple):
    """Suffixes (lower-case dotted bytes) in an open-addressing hash table: `slots` holds entry numbers (-1: free),
    probed linearly from the hash; `start`/`length` locate each entry's bytes in `text`."""

    hashes: np.ndarray  # uint64 per entry
    start: np.ndarray  # int64 per entry
    length: np.ndarray  # int64 per entry
    text: np.ndarray  # uint8
    slots: np.ndarray  # int32, a power of two at least twice the entries


@dataclass(frozen=True)
class PublicSuffixRules:
    """The PSL compiled for the kernels: every suffix a rule names, the kinds of rule naming it, and how many labels
    a candidate suffix may have."""

    suffixes: HashedSuffixes
    kinds: np.ndarray  # uint8 per entry: RULE (the string as written is a rule), WILDCARD ("*.s"), EXCEPTION ("!s")
    max_depth: int  # publicsuffixlist's _maxlabel + 1: longer suffixes cannot match any rule


# ------------------------------------------------------------------------------------------------ kernels
@njit(cache=True, nogil=True)
def dotted_name(names, off, dotted, label_start):
    """The wire name at names[off] as lower-case dotted bytes in `dotted` (ASCII folding only) and the start of each
    label in it; returns (bytes, labels), (-1, 0) when no well-formed name starts at `off`."""
    n = 0
    labels = 0
    pos = off
    size = names.shape[0]
    if off < 0:
        return -1, 0
    while pos < size:
        k = np.int64(names[pos])
        if k == 0:
            return max(n - 1, 0), labels
        if k > 63 or pos + 1 + k > size or labels >= MAX_LABELS or n + k > MAX_NAME:
            return -1, 0
        label_start[labels] = n
        labels += 1
        for j in range(k):
            b = names[pos + 1 + j]
            dotted[n + j] = b + 32 if 65 <= b <= 90 else b
        n += k
        dotted[n] = 46  # '.'
        n += 1
        pos += 1 + k
    return -1, 0


@njit(cache=True, nogil=True)
def suffix_hashes(dotted, n, label_start, labels, hashes):
    """hashes[i] = FNV-1a of dotted[label_start[i]:n] read from its last byte back (so each longer suffix extends
    the hash of the shorter one)."""
    h = FNV_OFFSET
    i = labels - 1
    for j in range(n - 1, -1, -1):
        h = (h ^ np.uint64(dotted[j])) * FNV_PRIME
        while i >= 0 and label_start[i] == j:
            hashes[i] = h
            i -= 1


@njit(cache=True, nogil=True)
def _hash_bytes(text, start, length, out):
    for i in range(start.shape[0]):
        h = FNV_OFFSET
        for j in range(start[i] + length[i] - 1, start[i] - 1, -1):
            h = (h ^ np.uint64(text[j])) * FNV_PRIME
        out[i] = h


@njit(cache=True, nogil=True)
def find_suffix(table, h, dotted, s, e):
    """Entry number of the suffix equal to dotted[s:e], whose hash is h; -1 when there is none."""
    mask = table.slots.shape[0] - 1
    j = np.int64((h ^ (h >> np.uint64(29))) & np.uint64(mask))
    while table.slots[j] >= 0:
        i = table.slots[j]
        if table.hashes[i] == h and table.length[i] == e - s:
            t = table.start[i]
            same = True
            for k in range(e - s):
                if table.text[t + k] != dotted[s + k]:
                    same = False
                    break
            if same:
                return i
        j = (j + 1) & mask
    return -1


@njit(cache=True, nogil=True)
def _fill_slots(hashes, slots):
    mask = slots.shape[0] - 1
    for i in range(hashes.shape[0]):
        h = hashes[i]
        j = np.int64((h ^ (h >> np.uint64(29))) & np.uint64(mask))
        while slots[j] >= 0:
            j = (j + 1) & mask
        slots[j] = i


@njit(cache=True, nogil=True)
def public_suffix_labels(dotted, n, label_start, labels, hashes, suffixes, kinds, max_depth):
    """Labels of the public suffix of a name (publicsuffixlist's _countpublic with accept_unknown): longest
    candidate first; at each length an exception rule gives one label less, a wildcard one more (the whole name
    when nothing is left of it), a normal rule its own length; nothing: the default rule "*", one label."""
    if labels == 1:
        return 1
    for i in range(max(0, labels - max_depth), labels):
        depth = labels - i
        k = find_suffix(suffixes, hashes[i], dotted, label_start[i], n)
        kind = kinds[k] if k >= 0 else 0
        if kind & EXCEPTION:
            return depth - 1
        if kind & WILDCARD:
            return depth + 1 if i > 0 else depth
        if kind & RULE:
            return depth
    return 1


@njit(cache=True, nogil=True)
def _registered_starts(names, offsets, suffixes, kinds, max_depth, out):
    """out[r]: label index where the registered domain of the name at offsets[r] starts, -1 for none."""
    dotted = np.empty(MAX_NAME + 1, np.uint8)
    label_start = np.empty(MAX_LABELS + 1, np.int64)
    hashes = np.empty(MAX_LABELS + 1, np.uint64)
    for r in range(offsets.shape[0]):
        out[r] = -1
        n, labels = dotted_name(names, offsets[r], dotted, label_start)
        if n < 0 or labels == 0:
            continue
        suffix_hashes(dotted, n, label_start, labels, hashes)
        public = public_suffix_labels(dotted, n, label_start, labels, hashes, suffixes, kinds, max_depth)
        if public > 0 and labels >= public + 1:
            out[r] = labels - public - 1


@njit(cache=True, nogil=True)
def _match_longest(names, offsets, table, ids, out):
    """out[r]: ids of the longest suffix in `table` that the name at offsets[r] equals or lies under, -1 for none."""
    dotted = np.empty(MAX_NAME + 1, np.uint8)
    label_start = np.empty(MAX_LABELS + 1, np.int64)
    hashes = np.empty(MAX_LABELS + 1, np.uint64)
    for r in range(offsets.shape[0]):
        out[r] = -1
        n, labels = dotted_name(names, offsets[r], dotted, label_start)
        suffix_hashes(dotted, max(n, 0), label_start, labels, hashes)
        for i in range(labels):  # the whole name first: the longest suffix wins
            k = find_suffix(table, hashes[i], dotted, label_start[i], n)
            if k >= 0:
                out[r] = ids[k]
                break


@njit(cache=True, nogil=True)
def same_name(names, a, b, limit):
    """The names at a and b have the same first `limit` labels, ASCII case folded (False when one runs off the
    buffer)."""
    size = names.shape[0]
    for _ in range(limit):
        if a >= size or b >= size:
            return False
        k = np.int64(names[a])
        if k != names[b] or a + k >= size or b + k >= size:
            return False
        for j in range(1, k + 1):
            x, y = names[a + j], names[b + j]
            if (x + 32 if 65 <= x <= 90 else x) != (y + 32 if 65 <= y <= 90 else y):
                return False
        if k == 0:
            return True
        a += k + 1
        b += k + 1
    return True


@njit(cache=True, nogil=True)
def name_keys(names, offsets, limits, out):
    """FNV-1a of each name's first `limits[i]` labels in wire form, ASCII case folded (a -1 offset hashes nothing;
    a name running off the buffer is cut there)."""
    size = names.shape[0]
    for i in range(offsets.shape[0]):
        h, pos = FNV_OFFSET, offsets[i]
        for _ in range(limits[i] if pos >= 0 else 0):
            if pos >= size:
                break
            k = np.int64(names[pos])
            for j in range(pos, min(pos + k + 1, size)):
                b = names[j]
                h = (h ^ np.uint64(b + 32 if 65 <= b <= 90 else b)) * FNV_PRIME
            if k == 0:
                break
            pos += k + 1
        out[i] = h


@njit(cache=True, nogil=True)
def same_names(names, offsets, rep, limit):
    """out[i]: names[offsets[i]] equals names[offsets[rep[i]]] (first limit[i] labels, case folded)."""
    out = np.empty(offsets.shape[0], np.bool_)
    for i in range(offsets.shape[0]):
        a, b = offsets[i], offsets[rep[i]]
        out[i] = a == b or a >= 0 and b >= 0 and limit[i] == limit[rep[i]] and same_name(names, a, b, limit[i])
    return out


# ------------------------------------------------------------------------------------------------ building
def hash_suffixes(items: list[bytes]) -> HashedSuffixes:
    """Distinct lower-case dotted suffixes in a hash table; entry i is items[i]."""
    lengths = np.array([len(s) for s in items], np.int64)
    start = np.cumsum(lengths) - lengths
    text = np.frombuffer(b"".join(items), np.uint8).copy()
    hashes = np.zeros(len(items), np.uint64)
    _hash_bytes(text, start, lengths, hashes)
    slots = np.full(1 << (2 * len(items) + 1).bit_length(), -1, np.int32)
    _fill_slots(hashes, slots)
    return HashedSuffixes(hashes, start, lengths, text, slots)


def _psl_lines() -> Iterable[str]:
    from publicsuffixlist import PSLFILE  # the list the package ships

    with open(PSLFILE, encoding="utf-8") as f:
        for line in f:
            rule = line.lower().split(" ")[0].rstrip()  # PSL format: rule up to the first space, comments "//"
            if rule and not rule.startswith("//"):
                yield rule


@functools.cache
def public_suffix_rules() -> PublicSuffixRules:
    """The PSL, compiled on first use (about 10,000 rules; nothing is read at import) and cached by its content
    (policy/cache.py: compiling it takes 0.3-1 s, loading it a few ms)."""
    from publicsuffixlist import PSLFILE  # the list the package ships

    with open(PSLFILE, "rb") as f:
        source = f.read()
    arrays = cached_arrays("psl", source, _compile_rules)
    suffixes = HashedSuffixes(*(arrays[name] for name in HashedSuffixes._fields))
    return PublicSuffixRules(suffixes, arrays["kinds"], int(arrays["max_depth"]))


def _compile_rules() -> dict[str, np.ndarray]:
    rules: set[str] = set()
    depth = 0
    for rule in _psl_lines():
        depth = max(depth, rule.count(".") + 1)
        rules.add(rule)
        # names travel as A-labels (RFC 5890): add each rule's punycode form, as publicsuffixlist does
        idn = rule.lstrip("!").encode("idna").decode("ascii")
        rules.add("!" + idn if rule.startswith("!") else idn)
    # Unicode rules cannot equal the lower-cased ASCII of a wire name (publicsuffixlist compares them as text
    # with undecodable bytes escaped): their A-label forms above are what names carry
    kinds: dict[bytes, int] = {}
    for rule in sorted(r.encode() for r in rules if r.isascii()):
        kinds[rule] = kinds.get(rule, 0) | RULE
        if rule.startswith(b"*."):
            kinds[rule[2:]] = kinds.get(rule[2:], 0) | WILDCARD
        elif rule.startswith(b"!"):
            kinds[rule[1:]] = kinds.get(rule[1:], 0) | EXCEPTION
    hashed = hash_suffixes(list(kinds))
    return {**hashed._asdict(), "kinds": np.array(list(kinds.values()), np.uint8),
            "max_depth": np.array(depth + 1, np.int64)}


def registered_domain_start(table, name_offsets: np.ndarray, rules: PublicSuffixRules | None = None) -> np.ndarray:
    """For each name (offset into table.names), the label index where its registered domain (public suffix plus
    one label) starts, -1 when it has none (it is a public suffix itself, or no readable name): int32."""
    rules = public_suffix_rules() if rules is None else rules
    offsets = np.ascontiguousarray(name_offsets, np.int64)
    out = np.empty(len(offsets), np.int32)
    _registered_starts(table.names, offsets, rules.suffixes, rules.kinds, rules.max_depth, out)
    return out


@dataclass(frozen=True)
class SuffixSet:
    """A list of DNS suffixes matched at label boundaries (a name matches a suffix it equals or lies under)."""

    suffixes: tuple[str, ...]
    hashed: HashedSuffixes
    ids: np.ndarray  # int32: index in `suffixes` of each hashed entry (the first of equal ones)

    @classmethod
    def of(cls, suffixes: Iterable[str]) -> "SuffixSet":
        """Build from dotted suffixes ("nanopool.org"); case and a trailing dot are ignored, duplicates kept once."""
        kept: dict[bytes, int] = {}
        given = tuple(suffixes)
        for i, suffix in enumerate(given):
            text = suffix.lower().rstrip(".")
            if not text or not text.isascii() or "" in text.split(".") or len(text) > MAX_NAME - 1:
                raise ValueError(f"not a DNS suffix: {suffix!r} (ASCII labels joined by single dots, e.g. "
                                 "'pool.example'; internationalised names in their xn-- form)")
            kept.setdefault(text.encode(), i)
        return cls(given, hash_suffixes(list(kept)), np.array(list(kept.values()), np.int32))

    def match(self, table, name_offsets: np.ndarray) -> np.ndarray:
        """Per name (offset into table.names): index in `suffixes` of the longest suffix it equals or lies under,
        -1 for none (int32)."""
        offsets = np.ascontiguousarray(name_offsets, np.int64)
        out = np.empty(len(offsets), np.int32)
        _match_longest(table.names, offsets, self.hashed, self.ids, out)
        return out


__all__ = ["HashedSuffixes", "PublicSuffixRules", "SuffixSet", "dotted_name", "find_suffix", "public_suffix_labels",
           "public_suffix_rules", "registered_domain_start", "name_keys", "same_name", "same_names", "suffix_hashes"]
