"""Focused tests of the flow kernels (egressguard/flows/kernels.py): record writes, hashing, the hash index, ageing
(record indices, idle sweeps, eviction scans).

Passes with and without JIT (``NUMBA_DISABLE_JIT=1`` runs the kernels as Python, for coverage): structured arrays
handed to the kernels here are ``np.recarray`` views, whose elements take attribute access in plain Python the way
numba records do (numba types a recarray exactly like the plain array, so the JIT run compiles nothing extra).
"""
from __future__ import annotations

import numba
import numpy as np
import pytest
from hypothesis import given, settings as hsettings, strategies as st
from numba import njit

from egressguard.flows import FlowSettings, FlowTable, kernels
from egressguard.schema import FLOW_DTYPE, EndReason, FlowFlag
from tests.naive import key_hash as naive_key_hash
from tests.naive import make_packets

JIT = not numba.config.DISABLE_JIT
# run as plain Python, the kernels' 64/32-bit wrap-around arithmetic on numpy scalars warns (the results are right)
pytestmark = [] if JIT else [pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning")]
SEC = 10**9
T0 = 1_700_000_000 * SEC
V4 = 0x0000FFFF_0A000000  # ::ffff:10.0.0.0


def rec(a: np.ndarray) -> np.ndarray:
    return a.view(np.recarray)


def make_table(settings: FlowSettings, out_size: int = 64) -> FlowTable:
    """A FlowTable whose structured arrays are recarray views (see the module docstring)."""
    table = FlowTable(settings, out_size=out_size)
    table.t = table.t._replace(records=rec(table.t.records))
    table._out = rec(table._out)
    return table


def packets(rows: list[dict]) -> np.ndarray:
    return rec(make_packets(rows))


def udp(ts_s: float, a: int, b: int, sport: int = 1000, dport: int = 53, pl: int = 0, **kw) -> dict:
    return dict(ts_ns=T0 + int(round(ts_s * SEC)), src_lo=V4 + a, dst_lo=V4 + b, sport=sport, dport=dport,
                proto=17, payload_bytes=pl, payload_caplen=pl, wire_bytes=42 + pl, **kw)


def tcp(ts_s: float, a: int, b: int, sport: int, dport: int, flags: int, seq: int = 0, pl: int = 0, **kw) -> dict:
    return dict(ts_ns=T0 + int(round(ts_s * SEC)), src_lo=V4 + a, dst_lo=V4 + b, sport=sport, dport=dport,
                proto=6, tcp_flags=flags, tcp_seq=seq, payload_bytes=pl, payload_caplen=pl, wire_bytes=54 + pl, **kw)


def feed(table: FlowTable, rows: list[dict], buf: np.ndarray | None = None) -> list[np.ndarray]:
    buf = np.zeros(64, np.uint8) if buf is None else buf
    return [b.records.copy() for b in table.update(packets(rows), buf)]


def live_records(table: FlowTable) -> np.ndarray:
    return table.t.records[table.t.used.astype(bool)]


# ---------------------------------------------------------------- numba record writes (canary for numba upgrades)

_FIELDS = FLOW_DTYPE.names


def _value(i: int, name: str):
    kind = FLOW_DTYPE[name]
    if kind.subdtype is not None:  # an array field: element j gets value + j
        kind = kind.subdtype[0]
    if kind.kind == "f":
        return i + 0.25
    return (i * 7 + 3) % (1 << min(8 * kind.itemsize - 1, 31))


def _expected(i: int, name: str):
    shape = FLOW_DTYPE[name].shape
    return _value(i, name) + np.arange(shape[0]) if shape else _value(i, name)


def _write_lines(i: int, name: str) -> str:
    """Source lines setting field `name` of record r: scalars directly, array fields element by element."""
    shape = FLOW_DTYPE[name].shape
    if not shape:
        return f"    r.{name} = {_value(i, name)!r}\n"
    return "".join(f"    r.{name}[{j}] = {_value(i, name) + j!r}\n" for j in range(shape[0]))


def _writer():
    """An njit function writing every FLOW field of a[k] (half through a record variable, half through a record
    passed to another njit function), copying the whole record to out[k] and changing it there via `out[k].field`."""
    half = len(_FIELDS) // 2
    rest_src = "def write_rest(r):\n" + "".join(
        _write_lines(i, name) for i, name in enumerate(_FIELDS) if i >= half)
    main_src = "def write(a, out, k):\n    r = a[k]\n" + "".join(
        _write_lines(i, name) for i, name in enumerate(_FIELDS) if i < half) + (
        "    write_rest(a[k])\n"
        "    out[k] = a[k]\n"
        f"    out[k].{_FIELDS[0]} = out[k].{_FIELDS[0]} + 1\n")
    ns: dict = {}
    exec(rest_src, ns)
    ns["write_rest"] = njit(ns["write_rest"])
    exec(main_src, ns)
    return njit(ns["write"])


def test_numba_record_field_writes_reach_the_array():
    write = _writer()
    a, out = rec(np.zeros(3, FLOW_DTYPE)), rec(np.zeros(3, FLOW_DTYPE))
    write(a, out, 1)
    for i, name in enumerate(_FIELDS):
        assert np.all(a[name][1] == _expected(i, name)), name
        assert not np.any(a[name][0]) and not np.any(a[name][2]), name
        assert np.all(out[name][1] == _expected(i, name) + (1 if i == 0 else 0)), name
    assert rows_of(out[:1]) != rows_of(out[1:2])


def test_kernel_writes_reach_the_table_records():
    table = make_table(FlowSettings(capacity=4, payload_slots=2, keep_bytes=16, sequence_length=4))
    buf = np.arange(64, dtype=np.uint8)
    assert feed(table, [udp(0, 1, 2, pl=5, payload_offset=7, src_mac=0xAB, vlan=9, iface=3, status=8)], buf) == []
    r = live_records(table)
    assert len(r) == 1 and table.live == 1 and table.created == 1
    r = r[0]
    assert (r.orig_lo, r.resp_lo, r.orig_port, r.resp_port, r.proto) == (V4 + 1, V4 + 2, 1000, 53, 17)
    assert (r.orig_pkts, r.orig_bytes, r.orig_payload_bytes, r.orig_payload_pkts) == (1, 47, 5, 1)
    assert (r.orig_mac, r.vlan, r.iface, r.fragments, r.ip_version, r.seq_count) == (0xAB, 9, 3, 1, 4, 1)
    assert r.orig_payload_mean == 5.0 and r.first_seen_ns == r.last_seen_ns == T0 and r.slot >= 0
    assert r.key_hash == naive_key_hash(0, V4 + 1, 0, V4 + 2, 1000, 53, 17)
    batch = table.snapshot()
    assert batch.kept_stream(0, 0) == bytes(range(7, 12)) and batch.kept_stream(0, 1) == b""
    sizes, dts = batch.early_sequence(0)
    assert sizes.tolist() == [5] and dts.tolist() == [0]


# ---------------------------------------------------------------- flow_key_hash

U64 = st.integers(0, (1 << 64) - 1)
PORT = st.integers(0, 65535)


def _hash(a_hi, a_lo, b_hi, b_lo, a_port, b_port, proto) -> int:
    with np.errstate(over="ignore"):  # plain-Python runs (JIT disabled) wrap numpy scalars noisily
        return int(kernels.flow_key_hash(np.uint64(a_hi), np.uint64(a_lo), np.uint64(b_hi), np.uint64(b_lo),
                                         np.uint16(a_port), np.uint16(b_port), np.uint8(proto)))


@hsettings(max_examples=150, deadline=None)
@given(U64, U64, U64, U64, PORT, PORT, st.integers(0, 255))
def test_flow_key_hash_is_symmetric(a_hi, a_lo, b_hi, b_lo, a_port, b_port, proto):
    h = _hash(a_hi, a_lo, b_hi, b_lo, a_port, b_port, proto)
    assert h == _hash(b_hi, b_lo, a_hi, a_lo, b_port, a_port, proto)
    assert h == naive_key_hash(a_hi, a_lo, b_hi, b_lo, a_port, b_port, proto)


def test_flow_key_hash_separates_close_tuples():
    base = (0, V4 + 1, 0, V4 + 2, 1000, 53, 17)
    variants = {base, (0, V4 + 1, 0, V4 + 2, 53, 1000, 17), (0, V4 + 1, 0, V4 + 2, 1000, 53, 6),
                (0, V4 + 1, 0, V4 + 3, 1000, 53, 17), (1, V4 + 1, 0, V4 + 2, 1000, 53, 17),
                (0, V4 + 2, 1, V4 + 1, 1000, 53, 17)}
    assert len(variants) == 6 and _hash(*base) == _hash(0, V4 + 2, 0, V4 + 1, 53, 1000, 17)
    assert len({_hash(*v) for v in variants}) == len(variants)


# ---------------------------------------------------------------- the hash index


def check_index(table: FlowTable) -> None:
    """Every live record is in the index exactly once and reachable from its home slot without crossing a hole."""
    t = table.t
    index = t.index
    mask = len(index) - 1
    used = np.flatnonzero(t.used)
    entries = index[index >= 0]
    assert sorted(entries.tolist()) == sorted(used.tolist()), "index entries != live records"
    assert len(used) == table.live
    for ridx in used.tolist():
        pos = int(t.records[ridx].key_hash) & mask
        while index[pos] != ridx:
            assert index[pos] != -1, f"record {ridx} unreachable from its home {int(t.records[ridx].key_hash) & mask}"
            pos = (pos + 1) & mask


def _probe_packet() -> np.record:
    return packets([udp(0, 1, 2)])[0]


def test_backward_shift_deletion_with_chosen_homes():
    """_create/_emit with hand-picked hashes: clusters that wrap around the end of a 16-entry index."""
    table = make_table(FlowSettings(capacity=8, payload_slots=0), out_size=8)
    t, out = table.t, table._out
    assert len(t.index) == 16
    rng = np.random.default_rng(7)
    p = _probe_packet()
    homes = np.array([13, 14, 15, 15, 0, 0, 1, 14, 13, 2])
    live: dict[int, int] = {}  # ridx -> hash
    serial = 0
    for step in range(400):
        if live and (len(live) == 8 or rng.random() < 0.45):
            ridx = int(rng.choice(sorted(live)))
            n = kernels._emit(t, ridx, 1, out, 0)
            assert n == 1 and out[0].key_hash == live.pop(ridx)
        else:
            serial += 1
            h = np.uint64((serial << 8) | int(rng.choice(homes)))  # home = low 4 bits
            ridx = int(kernels._create(t, h, p, True, 0))
            assert ridx not in live
            live[ridx] = int(h)
        check_index(table)
        assert table.live == len(live)


def _colliding_sports(n: int, homes: set[int], mask: int = 15) -> list[int]:
    """Source ports whose flow (10.0.0.1:sport -> 10.0.0.2:53/udp) lands in one of `homes` of the index."""
    out = []
    for sport in range(1024, 65536):
        if naive_key_hash(0, V4 + 1, 0, V4 + 2, sport, 53, 17) & mask in homes:
            out.append(sport)
            if len(out) == n:
                return out
    raise AssertionError("not enough colliding ports")


def test_index_stays_consistent_through_expiry_and_eviction():
    """Colliding real keys in a tiny table; expiry and eviction delete in record index order, which is random in the
    hash index. After each round every live flow must still be found: one more packet each creates no new record."""
    table = make_table(FlowSettings(capacity=8, payload_slots=0, other_idle_s=5.0, tcp_idle_s=5.0), out_size=4)
    assert len(table.t.index) == 16
    sports = _colliding_sports(14, {14, 15, 0})
    rng = np.random.default_rng(3)
    now = 0.0
    emitted = 0
    for _ in range(60):
        chosen = rng.choice(sports, size=int(rng.integers(1, 6)), replace=False)
        rows = []
        for sp in chosen.tolist():
            now += float(rng.choice([0.01, 0.5, 3.0]))
            rows.append(udp(now, 1, 2, sport=sp))
        emitted += sum(len(b) for b in feed(table, rows))
        check_index(table)
        now += float(rng.choice([0.0, 2.0, 6.0]))
        emitted += sum(len(b.records) for b in table.expire(T0 + int(now * SEC)))
        check_index(table)
        # every live flow is findable: a packet for each (from the responder side) creates nothing
        created, live = table.created, table.live
        before = {int(r.orig_port): int(r.resp_pkts) for r in live_records(table)}
        assert feed(table, [udp(now, 2, 1, sport=53, dport=sp) for sp in before]) == []
        assert (table.created, table.live) == (created, live)
        after = {int(r.orig_port): int(r.resp_pkts) for r in live_records(table)}
        assert after == {sp: n + 1 for sp, n in before.items()}
    assert table.evictions > 0 and emitted > table.evictions  # both kinds of deletion happened
    emitted += sum(len(b.records) for b in table.flush())
    check_index(table)
    assert table.live == 0 and (table.t.index == -1).all()
    assert emitted == table.created


# ---------------------------------------------------------------- ageing: record indices, seen, sweeps, eviction


def live_origs(table: FlowTable) -> list[int]:
    """The originator host number (orig_lo - V4) of every live record, in record index order."""
    return [int(r.orig_lo) - V4 for r in live_records(table)]


def test_free_stack_gives_index_0_first_and_reuses_the_last_freed():
    table = make_table(FlowSettings(capacity=4, payload_slots=0, other_idle_s=5.0))
    feed(table, [udp(0, 1, 2), udp(1, 3, 4), udp(2, 5, 6)])
    assert np.flatnonzero(table.t.used).tolist() == [0, 1, 2] and live_origs(table) == [1, 3, 5]
    expired = [b.records.copy() for b in table.expire(T0 + int(6.5 * SEC))]  # 0 and 1 idle > 5 s, 2 is not
    assert [int(x) - V4 for x in np.concatenate(expired)["orig_lo"]] == [1, 3]  # index order: 0 pushed, then 1
    feed(table, [udp(7, 7, 8)])
    assert table.t.records[1].orig_lo == V4 + 7  # the last freed index is on top of the stack
    feed(table, [udp(7.1, 9, 10), udp(7.2, 11, 12)])
    assert live_origs(table) == [9, 7, 5, 11] and table.live == 4


def test_seen_is_the_newest_packet_time():
    table = make_table(FlowSettings(capacity=8, payload_slots=0, other_idle_s=60.0))
    feed(table, [udp(10, 1, 2), udp(12, 2, 1, sport=53, dport=1000), udp(11, 1, 2),  # older: no change
                 udp(5, 3, 4), udp(4, 3, 4), udp(6, 4, 3, sport=53, dport=1000)])
    t = table.t
    used = t.used.astype(bool)
    assert t.seen[used].tolist() == t.records.last_seen_ns[used].tolist() == [T0 + 12 * SEC, T0 + 6 * SEC]
    assert live_records(table).first_seen_ns.tolist() == [T0 + 10 * SEC, T0 + 5 * SEC]


def test_eviction_frees_the_oldest_sixteenth_at_once():
    """A new flow in a full table of 64 evicts the 4 flows seen longest ago, all in one scan, and no kept flow was
    seen before any evicted one; the next 3 new flows need no eviction."""
    cap, k = 64, 64 // kernels.EVICT_FRACTION
    table = make_table(FlowSettings(capacity=cap, payload_slots=0, other_idle_s=1e6), out_size=64)
    rng = np.random.default_rng(11)
    now, host = 0.0, 0
    rounds = 0
    while rounds < 12:
        now += float(rng.choice([0.001, 0.1, 1.0]))  # strictly increasing: last-seen times are distinct
        if table.live == 0 or (table.live < cap and rng.random() < 0.5):
            host += 1
            assert feed(table, [udp(now, host, 1)]) == []
            continue
        if table.live < cap or rng.random() < 0.6:  # touch a live flow: index order departs from last-seen order
            assert feed(table, [udp(now, int(rng.choice(live_origs(table))), 1)]) == []
            continue
        before = {int(r.orig_lo) - V4: int(r.last_seen_ns) for r in live_records(table)}
        order = live_origs(table)
        host += 1
        (evicted,) = feed(table, [udp(now, host, 1)])
        gone = [int(x) - V4 for x in evicted.orig_lo]
        assert (evicted.end_reason == EndReason.EVICTED).all() and len(gone) == k
        assert sorted(gone) == sorted(sorted(before, key=before.get)[:k])  # the k seen longest ago
        assert gone == [a for a in order if a in gone]  # emitted in record index order
        kept = [before[a] for a in before if a not in gone]
        assert max(evicted.last_seen_ns) < min(kept) and evicted.last_seen_ns.tolist() == [before[a] for a in gone]
        assert table.live == cap - k + 1 and int(table.t.meta[kernels.M_EVICT_POS]) == -1
        for _ in range(k - 1):  # room for k - 1 more flows without evicting
            host += 1
            now += 0.001
            assert feed(table, [udp(now, host, 1)]) == []
        assert table.live == cap
        rounds += 1
    assert table.evictions == 12 * k


def test_eviction_takes_every_flow_tied_with_the_threshold():
    table = make_table(FlowSettings(capacity=16, payload_slots=0, other_idle_s=1e6))  # k = 1
    # hosts 100..103 last seen at 0 s, 104..107 at 1 s, 108..115 at 8..15 s; created in a shuffled order
    order = [5, 0, 9, 2, 4, 15, 1, 3, 6, 7, 8, 10, 11, 12, 13, 14]
    rows = [udp(0 if i < 4 else 1 if i < 8 else i, 100 + i, 1) for i in order]
    assert feed(table, rows) == [] and table.live == 16
    (evicted,) = feed(table, [udp(20, 1, 2)])
    assert sorted(int(x) - 100 - V4 for x in evicted.orig_lo) == [0, 1, 2, 3]
    assert table.evictions == 4 and table.live == 13
    (evicted,) = feed(table, [udp(21, 2, 3), udp(22, 3, 4), udp(23, 4, 5), udp(24, 5, 6)])
    assert sorted(int(x) - 100 - V4 for x in evicted.orig_lo) == [4, 5, 6, 7] and table.live == 13


TIMEOUT_S = {"udp": 60, "tcp-open": 900, "tcp-closed": 10}  # the FlowSettings defaults


def aged_rows(seed: int, n: int = 60) -> tuple[list[dict], dict[int, tuple[int, int]]]:
    """n flows (originator host a = 1..n) of three kinds, created in random order, each with its packets within a
    second from a whole-second start in 0..999 s; returns the rows and {a: (idle timeout ns, last packet ns)}."""
    rng = np.random.default_rng(seed)
    rows, expect = [], {}
    for a in rng.permutation(np.arange(1, n + 1)).tolist():
        kind = ("udp", "tcp-open", "tcp-closed")[a % 3]
        t0 = float(rng.integers(0, 1000))
        if kind == "udp":
            flow = [udp(t0, a, 200), udp(t0 + 0.5, 200, a, sport=53, dport=1000)]
        else:
            flow = [tcp(t0, a, 200, 5000, 443, 0x02), tcp(t0 + 0.25, 200, a, 443, 5000, 0x12)]
            if kind == "tcp-open":
                flow.append(tcp(t0 + 0.5, a, 200, 5000, 443, 0x10))
            elif a % 2:
                flow += [tcp(t0 + 0.5, a, 200, 5000, 443, 0x11), tcp(t0 + 0.75, 200, a, 443, 5000, 0x11)]
            else:
                flow.append(tcp(t0 + 0.5, 200, a, 443, 5000, 0x04))
        rows += flow
        expect[a] = (TIMEOUT_S[kind] * SEC, flow[-1]["ts_ns"])
    return rows, expect


def test_sweep_emits_exactly_the_idle_ones():
    rows, expect = aged_rows(2)
    table = make_table(FlowSettings(capacity=64, payload_slots=0), out_size=64)
    assert feed(table, rows) == [] and table.live == len(expect)
    timeout, last = expect[35]  # a closed TCP flow (FIN both ways): exactly at its timeout, then 1 ns past it
    assert timeout == 10 * SEC
    nows = sorted([last + timeout, last + timeout + 1, T0 + 400 * SEC, T0 + 1000 * SEC, T0 + 1500 * SEC,
                   T0 + 1910 * SEC])
    emitted = 0
    for now in nows:
        order = live_origs(table)
        idle = [a for a in order if now - expect[a][1] > expect[a][0]]
        out = [b.records.copy() for b in table.expire(now)]
        got = [int(x) - V4 for x in np.concatenate(out)["orig_lo"]] if out else []
        assert got == idle, f"now={now}"  # exactly the idle ones, in record index order
        emitted += len(got)
        assert all((b.end_reason == EndReason.IDLE).all() for b in out)
        assert live_origs(table) == [a for a in order if a not in idle]
        assert int(table.t.meta[kernels.M_SWEEP_POS]) == -1
        if now == last + timeout:
            assert 35 not in got and 35 in live_origs(table)
        if now == last + timeout + 1:
            assert 35 in got
    assert table.live == 0 and emitted == len(expect)


def rows_of(records: np.ndarray) -> list[tuple]:
    """FLOW records as comparable tuples (array fields such as burst_interval_hist become tuples too)."""
    return [tuple(tuple(v.tolist()) if isinstance(v, np.ndarray) else v for v in r) for r in records.tolist()]


def _emit_all(kernel, t, out: np.ndarray, *args) -> tuple[list, int]:
    """Call a resumable kernel until it reports completion; (emitted records as tuples, calls)."""
    got, calls = [], 0
    while True:
        res = kernel(t, *args, out)
        n, finished = res if isinstance(res, tuple) else (res, res == 0)
        got += rows_of(out[:n])
        calls += 1
        assert calls < 1000
        if finished:
            return got, calls


def _same_state(a: FlowTable, b: FlowTable) -> None:
    for name in ("records", "used", "seen", "index", "free", "meta"):
        assert np.array_equal(getattr(a.t, name), getattr(b.t, name)), name


def test_sweep_and_flush_resume_when_out_is_tiny():
    """A sweep through a one-record output buffer, one call per emitted record, gives the very records and the
    very table state that one call with a large buffer gives; the same for flush."""
    rows, expect = aged_rows(4)
    settings = FlowSettings(capacity=64, payload_slots=0)
    tiny, large = make_table(settings), make_table(settings)
    feed(tiny, rows)
    feed(large, rows)
    now = T0 + 1100 * SEC
    n_idle = sum(now - last > timeout for timeout, last in expect.values())
    assert 3 < n_idle < len(expect) - 3
    got, calls = _emit_all(kernels.expire_idle, tiny.t, rec(np.zeros(1, FLOW_DTYPE)), np.int64(now))
    want, one = _emit_all(kernels.expire_idle, large.t, rec(np.zeros(64, FLOW_DTYPE)), np.int64(now))
    assert one == 1 and calls >= n_idle and len(got) == n_idle and got == want
    _same_state(tiny, large)
    # FlowTable.expire with its smallest output buffer hands out the same records in the same order
    a, b = make_table(settings, out_size=2), make_table(settings, out_size=256)
    feed(a, rows)
    feed(b, rows)
    small_batches = [x.records.copy() for x in a.expire(now)]
    assert len(small_batches) >= n_idle // 2
    assert rows_of(np.concatenate(small_batches)) == rows_of(np.concatenate([x.records.copy() for x in b.expire(now)]))
    _same_state(a, b)
    # flush: each call starts over at index 0; the records that are left come out in index order either way
    order = live_origs(tiny)
    got, calls = _emit_all(kernels.flush_table, tiny.t, rec(np.zeros(1, FLOW_DTYPE)), int(EndReason.END_OF_INPUT))
    want, one = _emit_all(kernels.flush_table, large.t, rec(np.zeros(64, FLOW_DTYPE)), int(EndReason.END_OF_INPUT))
    assert got == want and len(got) == len(order) == calls - 1 and one == 2
    assert [r[FLOW_DTYPE.names.index("orig_lo")] - V4 for r in got] == order
    _same_state(tiny, large)
    assert tiny.live == 0


def test_eviction_scan_resumes_with_the_same_threshold():
    """An eviction scan cut short by a full output buffer continues at the next call with the threshold it started
    with, even when younger flows were seen in between; the records it emits are those one long scan emits."""
    settings = FlowSettings(capacity=32, payload_slots=0, other_idle_s=1e6)  # k = 2
    # hosts 11, 13, 15 last seen at 1 s (the threshold: the 2nd smallest), 16 at 2 s, the others later
    rows = [udp(float(s), 10 + i, 1) for i, s in enumerate([5, 1, 9, 1, 7, 1, 2, 3] + list(range(10, 34)))]
    tiny, large = make_table(settings), make_table(settings)
    feed(tiny, rows)
    feed(large, rows)
    assert tiny.live == 32
    one, big = rec(np.zeros(1, FLOW_DTYPE)), rec(np.zeros(64, FLOW_DTYPE))
    n = kernels._evict_oldest(large.t, big, 0)
    want = rows_of(big[:n])
    assert sorted(int(x) - V4 for x in big[:n].orig_lo) == [11, 13, 15]  # the three tied at 1 s
    got = []
    while True:
        n = kernels._evict_oldest(tiny.t, one, 0)
        got += rows_of(one[:n])
        if int(tiny.t.meta[kernels.M_EVICT_POS]) < 0:
            break
        assert int(tiny.t.meta[kernels.M_EVICT_BEFORE]) == T0 + SEC
    assert got == want and tiny.evictions == large.evictions == 3
    _same_state(tiny, large)
    # through update_table with a 2-record buffer: the scan stops after two records, the new flow is created, and
    # the rest of the scan happens at the next eviction, with the old threshold (1 s): host 15 goes, host 16 (2 s)
    # stays although a new scan would now take it as the 2nd oldest
    t = make_table(settings, out_size=2)
    feed(t, rows)
    (first,) = feed(t, [udp(40, 1, 2)])
    assert [int(x) - V4 for x in first.orig_lo] == [11, 13] and int(t.t.meta[kernels.M_EVICT_POS]) > 0
    assert feed(t, [udp(41, 2, 3)]) == []  # a free record: no eviction
    (second,) = feed(t, [udp(42, 3, 4)])
    assert [int(x) - V4 for x in second.orig_lo] == [15] and int(t.t.meta[kernels.M_EVICT_POS]) == -1
    assert t.evictions == 3 and t.live == 32 and 16 in live_origs(t)
    (third,) = feed(t, [udp(43, 4, 5)])  # a new scan: threshold 3 s, the 2nd smallest of 2 s, 3 s, 5 s, ...
    assert [int(x) - V4 for x in third.orig_lo] == [16, 17] and t.evictions == 5


def test_flush_ends_an_eviction_scan_under_way():
    """The pipeline reuses one table for capture after capture, flushing it in between. An eviction scan cut short
    in one capture must not resume in the next with its old threshold: with an older next capture, every flow from
    the scan's position on would be last seen before that threshold and evicted at once."""
    settings = FlowSettings(capacity=32, payload_slots=0, other_idle_s=1e6)  # k = 2
    table = make_table(settings, out_size=64)
    buf = np.zeros(8, np.uint8)
    # capture A: records 0, 1, 2 last seen at 100 s (the threshold), the others later; a 2-record output buffer
    # cuts the scan short after records 0 and 1
    assert feed(table, [udp(100.0 + max(i - 2, 0), 10 + i, 1) for i in range(32)]) == []
    small = rec(np.zeros(2, FLOW_DTYPE))
    assert kernels.update_table(table.t, buf, packets([udp(200, 1, 2)]), 0, small) == (1, 2)
    assert int(table.t.meta[kernels.M_EVICT_POS]) == 2 and table.evictions == 2
    for _ in table.flush():
        pass
    assert table.live == 0
    assert int(table.t.meta[kernels.M_EVICT_POS]) == -1 and int(table.t.meta[kernels.M_SWEEP_POS]) == -1
    # capture B, recorded earlier than A: a full table, then one new flow evicts the 2 oldest flows of B, no more
    assert feed(table, [udp(float(i), 50 + i, 1) for i in range(32)]) == []
    (evicted,) = feed(table, [udp(40, 1, 2)])
    assert sorted(int(x) - V4 for x in evicted.orig_lo) == [50, 51]
    assert table.evictions == 4 and table.live == 31


def test_two_way_marks_flows_both_sides_spoke_in():
    """two_way is set by the first packet from the side that had not spoken yet (a SYN-ACK answering a SYN, a
    SYN-ACK seen first then the client's ACK, a UDP answer), never by more packets from one side, and a record
    reused for a new flow starts one-way; a flow continued by the active timeout starts one-way again."""
    table = make_table(FlowSettings(capacity=8, payload_slots=0, active_s=10.0))
    feed(table, [tcp(0, 1, 2, 5555, 22, 0x02), tcp(0.1, 1, 2, 5555, 22, 0x02),  # SYN and its retry: one-way
                 tcp(0, 3, 4, 6666, 22, 0x12),  # a SYN-ACK seen first: its receiver's side has not spoken
                 udp(0, 5, 6), udp(0.1, 5, 6)])
    assert [int(x) for x in table.t.two_way[:3]] == [0, 0, 0]
    feed(table, [tcp(0.2, 2, 1, 22, 5555, 0x12), tcp(0.2, 4, 3, 22, 6666, 0x10), udp(0.2, 6, 5, sport=53, dport=1000)])
    assert [int(x) for x in table.t.two_way[:3]] == [1, 1, 1]
    feed(table, [udp(10.5, 5, 6)])  # active timeout: a CONTINUED record, one-way until the other side speaks
    t = table.t
    (i,) = np.flatnonzero(t.used.astype(bool) & ((t.records.flow_flags & FlowFlag.CONTINUED) != 0))
    assert int(t.records[i].orig_lo) == V4 + 5 and int(t.two_way[i]) == 0


def test_one_way_eviction_scan_resumes_with_its_kind_and_spares_a_flow_answered_meanwhile():
    """A one-way-only scan cut short by the output buffer continues with the same threshold and kind; a flow that
    was one-way when the scan started but was answered before the scan reached it stays; two-way flows older than
    the threshold stay throughout."""
    settings = FlowSettings(capacity=32, payload_slots=0, other_idle_s=1e6)  # k = 2
    table = make_table(settings, out_size=64)
    # hosts 10..13: two-way, seen at 0 s (the oldest); 14..41: one-way, seen at 1 s (14, 15, 16 tied) and later
    rows = []
    for a in range(10, 14):
        rows += [udp(0, a, 1), udp(0, 1, a, sport=53, dport=1000)]
    rows += [udp(1.0 if a < 17 else float(a), a, 1) for a in range(14, 42)]
    feed(table, rows)
    assert table.live == 32 and int(table.t.two_way.sum()) == 4
    one = rec(np.zeros(1, FLOW_DTYPE))
    n = kernels._evict_oldest(table.t, one, 0)
    assert n == 1 and int(one[0].orig_lo) - V4 == 14 and int(table.t.meta[kernels.M_EVICT_ONE_WAY]) == 1
    assert int(table.t.meta[kernels.M_EVICT_POS]) > 0 and int(table.t.meta[kernels.M_EVICT_BEFORE]) == T0 + SEC
    feed(table, [udp(0.5, 1, 15, sport=53, dport=1000)])  # 15 answered (its last packet stays the older 1 s)
    gone = []
    while True:
        n = kernels._evict_oldest(table.t, one, 0)
        gone += [int(x) - V4 for x in one[:n].orig_lo]
        if int(table.t.meta[kernels.M_EVICT_POS]) < 0:
            break
    assert gone == [16] and table.evictions == 2
    assert {10, 11, 12, 13, 15} <= set(live_origs(table))


# ---------------------------------------------------------------- kernel rules, one by one


def test_syn_ack_seen_first_makes_its_receiver_the_originator():
    table = make_table(FlowSettings(capacity=4, payload_slots=0))
    feed(table, [tcp(0, 2, 1, 22, 5555, 0x12, seq=100, src_mac=0x22),   # SYN-ACK from the server
                 tcp(0.1, 1, 2, 5555, 22, 0x10, seq=7, src_mac=0x11)])  # the client's ACK
    (r,) = live_records(table)
    assert (r.orig_lo, r.orig_port, r.resp_lo, r.resp_port) == (V4 + 1, 5555, V4 + 2, 22)
    assert r.flow_flags == FlowFlag.SAW_SYN and (r.orig_pkts, r.resp_pkts) == (1, 1)
    assert (r.orig_mac, r.resp_mac) == (0x11, 0x22)  # the originator's MAC comes from its first packet
    assert r.resp_next_seq == 101


def test_active_timeout_split_keeps_orientation():
    table = make_table(FlowSettings(capacity=4, payload_slots=0, active_s=10.0, tcp_idle_s=100.0))
    out = feed(table, [tcp(0, 1, 2, 5555, 22, 0x02, src_mac=0x11), tcp(0.1, 2, 1, 22, 5555, 0x12, src_mac=0x22),
                       tcp(5, 1, 2, 5555, 22, 0x18, seq=1, pl=10), tcp(10.5, 2, 1, 22, 5555, 0x18, pl=4, src_mac=0x22),
                       tcp(11, 1, 2, 5555, 22, 0x10, seq=11, src_mac=0x11)])
    (first,) = np.concatenate(out)
    assert first["end_reason"] == EndReason.ACTIVE_TIMEOUT and first["orig_pkts"] == 2
    (r,) = live_records(table)
    assert (r.orig_lo, r.orig_port) == (V4 + 1, 5555)  # the responder's packet opened it, roles are kept
    assert r.flow_flags == FlowFlag.CONTINUED | FlowFlag.SAW_SYN
    assert (r.orig_pkts, r.resp_pkts, r.first_seen_ns) == (1, 1, T0 + int(10.5 * SEC))
    assert (r.orig_mac, r.resp_mac) == (0x11, 0x22)


@pytest.mark.parametrize("closing", [
    [(1, 2, 0x11), (2, 1, 0x11)],  # FIN both ways
    [(2, 1, 0x04)],  # RST
])
def test_new_syn_on_a_closed_connection_starts_a_new_flow(closing):
    table = make_table(FlowSettings(capacity=4, payload_slots=0))
    rows = [tcp(0, 1, 2, 5555, 80, 0x02), tcp(0.1, 2, 1, 80, 5555, 0x12)]
    rows += [tcp(0.2 + i / 10, a, b, 5555 if a == 1 else 80, 80 if a == 1 else 5555, f)
             for i, (a, b, f) in enumerate(closing)]
    rows.append(tcp(1, 2, 1, 80, 5555, 0x02))  # the other side reuses the 5-tuple
    (first,) = np.concatenate(feed(table, rows))
    assert first["end_reason"] == EndReason.PORT_REUSE
    (r,) = live_records(table)
    assert r.flow_flags == FlowFlag.PORT_REUSE | FlowFlag.SAW_SYN and (r.orig_lo, r.orig_port) == (V4 + 2, 80)
    # a SYN on an open connection is just counted
    table2 = make_table(FlowSettings(capacity=4, payload_slots=0))
    assert feed(table2, rows[:2] + [rows[-1]]) == [] and table2.live == 1


def test_retransmission_rule_across_sequence_wrap():
    table = make_table(FlowSettings(capacity=4, payload_slots=2, keep_bytes=64))
    top = (1 << 32) - 5
    feed(table, [tcp(0, 1, 2, 5555, 22, 0x02, seq=top - 1),       # next expected: top
                 tcp(0.1, 1, 2, 5555, 22, 0x18, seq=top, pl=10),  # fresh, wraps: next expected 5
                 tcp(0.2, 1, 2, 5555, 22, 0x18, seq=top, pl=10),  # retransmission
                 tcp(0.3, 1, 2, 5555, 22, 0x18, seq=5, pl=3),     # fresh after the wrap
                 tcp(0.4, 1, 2, 5555, 22, 0x18, seq=2, pl=3)])    # overlaps: counted as a retransmission
    (r,) = live_records(table)
    assert (r.orig_payload_pkts, r.orig_payload_bytes, r.orig_retransmits, r.orig_next_seq) == (2, 13, 2, 8)
    assert [len(x) for x in table.snapshot().kept_payload(0, 0)] == [10, 3]


def test_update_resumes_when_the_output_is_full():
    """update_table stops before a packet that could overflow `out` and resumes from the returned index."""
    table = make_table(FlowSettings(capacity=1, payload_slots=0))
    pk = packets([udp(i * 0.1, 1, 2, sport=1000 + i) for i in range(5)])
    out = rec(np.zeros(2, FLOW_DTYPE))
    buf = np.zeros(8, np.uint8)
    start, seen = 0, []
    calls = 0
    while start < len(pk):
        start, n = kernels.update_table(table.t, buf, pk, start, out)
        seen += out[:n].orig_port.tolist()
        calls += 1
    assert seen == [1000, 1001, 1002, 1003] and calls == 4 and table.evictions == 4
    assert int(table.t.meta[kernels.M_SKIPPED]) == 0


def test_packets_without_ip_are_skipped():
    table = make_table(FlowSettings(capacity=4, payload_slots=0))
    feed(table, [udp(0, 1, 2), dict(udp(0.1, 3, 4), ip_version=0), dict(udp(0.2, 1, 2), ip_version=6)])
    assert table.skipped_packets == 1 and table.live == 1 and live_records(table)[0].orig_pkts == 2


@pytest.mark.skipif(not JIT, reason="checks the compiled kernels")
def test_kernels_compile_once_per_type():
    """A recarray view is the same numba type as the plain array: no second specialisation of the hot kernel."""
    before = len(kernels.update_table.signatures)
    for table in (make_table(FlowSettings(capacity=4, payload_slots=1)), FlowTable(FlowSettings(capacity=4, payload_slots=1))):
        buf = np.zeros(8, np.uint8)
        for _ in table.update(make_packets([udp(0, 1, 2)]), buf):
            pass
    assert len(kernels.update_table.signatures) == max(before, 1)


# ---------------------------------------------------------------- bursts (flows/conversation.py update_bursts)

def _burst_flow(starts_s: list[float], sizes: list[int], settings: FlowSettings | None = None) -> np.recarray:
    """One UDP flow whose bursts start at starts_s, each of two packets (size and 10 B back, 0.2 s apart); returns
    its live record (the table is not flushed: the last burst stays open)."""
    table = make_table(settings or FlowSettings(capacity=4, payload_slots=1, keep_bytes=16, active_s=0.0,
                                                other_idle_s=1e6))
    rows = []
    for t, size in zip(starts_s, sizes):
        rows += [udp(t, 1, 2, dport=9000, pl=size), udp(t + 0.2, 2, 1, sport=9000, dport=1000, pl=10)]
    assert feed(table, rows) == []
    return live_records(table)[0]


def test_bursts_of_a_periodic_flow_are_counted_with_their_intervals():
    r = _burst_flow([0, 30, 60.5, 90, 120], [100, 100, 300, 100, 100])
    # 5 bursts; intervals 30, 30.5, 29.5, 30 s (bin 9: [2^4.5, 2^5) s = [22.6, 32) s); closed bursts 110/110/310/110
    assert (r.burst_count, r.burst_start_ms, r.burst_last_ms, r.burst_open_bytes) == (5, 120_000, 120_200, 110)
    assert r.burst_interval_mean == pytest.approx(30.0, abs=1e-5)
    assert r.burst_interval_m2 == pytest.approx(0.5, rel=1e-5)  # deviations -0, +0.5, -0.5, 0
    assert r.burst_bytes_mean == pytest.approx(160.0) and r.burst_bytes_m2 == pytest.approx(30000.0, rel=1e-6)
    hist = list(r.burst_interval_hist)
    assert hist[9] == 4 and sum(hist) == 4
    # the open burst folded in: 110, 110, 310, 110, 110 -> mean 150, sd sqrt(32000 / 4)
    from egressguard.flows import burst_bytes
    mean, sd = burst_bytes(np.array([r], FLOW_DTYPE) if not isinstance(r, np.void) else r[None])
    assert mean[0] == pytest.approx(150.0) and sd[0] == pytest.approx(np.sqrt(32000 / 4), rel=1e-5)


def test_a_gap_under_one_second_stays_in_the_burst():
    r = _burst_flow([0, 0.7, 1.69, 2.69], [50, 50, 50, 50])
    # packets at 0, .2, .7, .9, 1.69, 1.89, 2.69 (gap 0.8 s), 2.89: one burst
    assert (r.burst_count, r.burst_open_bytes, r.burst_last_ms) == (1, 240, 2890)
    assert sum(r.burst_interval_hist) == 0 and r.burst_interval_mean == 0.0


@pytest.mark.parametrize("edge", [1, 2, 9, 22])
def test_interval_bins_split_at_powers_of_root_two(edge):
    """An interval of exactly the left edge of bin k lands in bin k, one ms less in bin k - 1."""
    from egressguard.flows.conversation import BURST_INTERVAL_EDGES_MS
    from tests.naive import BURST_EDGES_MS
    assert BURST_INTERVAL_EDGES_MS.tolist() == BURST_EDGES_MS
    ms = int(BURST_INTERVAL_EDGES_MS[edge - 1])
    assert ms == round(1000 * 2 ** (edge / 2))
    for gap_ms, want in ((ms, edge), (ms - 1, edge - 1)):
        r = _burst_flow([0, gap_ms / 1000], [20, 20])
        assert np.flatnonzero(r.burst_interval_hist).tolist() == [want], gap_ms


def test_histogram_halves_instead_of_saturating():
    """600 intervals of 10 s: the bin reaches 255, all bins halve, counting goes on; the shape survives."""
    starts = [0.0, 2.0] + [2.0 + 10 * i for i in range(1, 600)]  # one 2 s interval, then 599 of 10 s
    r = _burst_flow(starts, [20] * len(starts))
    hist = r.burst_interval_hist.tolist()
    # bin 6 ([8, 11.3) s) halves at its 256th, 384th and 512th count (255 -> 127, +1): 128 + 87 = 215; the single
    # 2 s interval (bin 2) was halved to 0 at the first halving
    assert r.burst_count == 601 and hist[6] == 215 and hist[2] == 0 and sum(hist) == 215
    assert r.burst_interval_mean == pytest.approx((2 + 599 * 10) / 600, rel=1e-6)
