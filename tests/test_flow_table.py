"""FlowTable against the plain-Python reference (tests/naive.py): random packets and real captures.

The table and the reference run in lockstep. After every update/expire/flush the records emitted are compared as
multisets keyed by (5-tuple as oriented, first_seen): integers exactly, floats closely, plus the kept payload, kept
lengths and early sequence of every record; then their emission order, and the placement of the live flows: which
record index holds which flow, the free stack, the payload slots and any eviction scan under way (sweep, eviction
and flush order and the eviction threshold all depend on record indices).
"""
from __future__ import annotations

import collections
import math
from pathlib import Path

import numpy as np
import pytest

from egressguard.flows import FlowSettings, FlowTable, kernels
from egressguard.schema import FLOW_DTYPE, PACKET_DTYPE, EndReason, FlowFlag
from tests.naive import FLOAT_FIELDS, INT_FIELDS, NaiveFlowTable, make_packets, naive_flows, two_way

PUBLIC = Path(__file__).resolve().parents[2] / "shared" / "captures" / "public"
KEY_FIELDS = ("proto", "orig_hi", "orig_lo", "orig_port", "resp_hi", "resp_lo", "resp_port", "first_seen_ns")
EXACT_FIELDS = tuple(n for n in INT_FIELDS if n != "slot")
T0 = 1_700_000_000 * 10**9
SEC = 10**9


# ---------------------------------------------------------------- running the table and comparing


def batch_rows(batch) -> list[dict]:
    """Records of a FlowBatch as dicts, with their kept payload (read while the batch is still valid)."""
    rows = []
    names = FLOW_DTYPE.names
    for i, values in enumerate(batch.records.tolist()):
        row = dict(zip(names, values))
        row["burst_interval_hist"] = tuple(row["burst_interval_hist"].tolist())
        slot = row["slot"]
        row["kept_payload"] = (batch.kept_payload(i, 0), batch.kept_payload(i, 1))
        row["kept_lengths"] = tuple(batch.table.kept_lengths(slot, d).tolist() for d in (0, 1))
        sizes, dts = batch.early_sequence(i)
        row["early_sequence"] = list(zip(sizes.tolist(), dts.tolist()))
        rows.append(row)
    return rows


class Run:
    """Feeds chunks to a FlowTable the way the pipeline does, checking the memory bound after every batch."""

    def __init__(self, settings: FlowSettings, out_size: int = 1 << 14):
        self.table = FlowTable(settings, out_size=out_size)
        self.settings = settings
        self.records: list[dict] = []
        self.max_live = 0
        self.memory = self.table.memory_bytes()

    def _take(self, batches) -> None:
        for batch in batches:
            assert self.table.live <= self.settings.capacity
            self.max_live = max(self.max_live, self.table.live)
            self.records += batch_rows(batch)
        assert self.table.live <= self.settings.capacity
        self.max_live = max(self.max_live, self.table.live)
        self.check_slot_accounting()

    def check_slot_accounting(self) -> None:
        """With no batch outstanding, every payload slot is either free or held by a live record."""
        t = self.table.t
        free_top = int(t.meta[kernels.M_SLOT_FREE_TOP])
        held = t.records["slot"][t.used.astype(bool)]
        held = held[held >= 0]
        assert free_top + len(held) == self.settings.payload_slots
        in_pool = t.slot_free[:free_top]
        assert len(set(in_pool.tolist()) | set(held.tolist())) == self.settings.payload_slots

    def update(self, packets, buf) -> None:
        self._take(self.table.update(packets, buf))

    def expire(self, now_ns: int) -> None:
        self._take(self.table.expire(now_ns))

    def flush(self) -> None:
        self._take(self.table.flush())
        assert self.table.live == 0
        assert self.table.memory_bytes() == self.memory

    def chunks(self, chunks) -> "Run":
        for packets, buf in chunks:
            self.update(packets, buf)
            if len(packets):
                self.expire(int(packets["ts_ns"].max()))
        self.flush()
        return self


def _key(rec: dict) -> tuple:
    return tuple(rec[n] for n in KEY_FIELDS)


def _order(rec: dict) -> tuple:
    return tuple(rec[n] for n in EXACT_FIELDS)


def _show(rec: dict) -> str:
    return ", ".join(f"{n}={rec[n]}" for n in EXACT_FIELDS + FLOAT_FIELDS)


def assert_same_records(got: list[dict], want: list[dict]) -> None:
    """Multiset equality keyed by (5-tuple, first_seen); exact integers, close floats, equal kept payload."""
    by_got, by_want = collections.defaultdict(list), collections.defaultdict(list)
    for r in got:
        by_got[_key(r)].append(r)
    for r in want:
        by_want[_key(r)].append(r)
    missing = [k for k in by_want if len(by_got.get(k, ())) < len(by_want[k])]
    extra = [k for k in by_got if len(by_want.get(k, ())) < len(by_got[k])]
    assert not missing and not extra, (
        f"{len(got)} records vs {len(want)} expected; missing {missing[:3]} "
        f"(e.g. {_show(by_want[missing[0]][0]) if missing else ''}); extra {extra[:3]} "
        f"(e.g. {_show(by_got[extra[0]][0]) if extra else ''})")
    for key, wants in by_want.items():
        gots = sorted(by_got[key], key=_order)
        for g, w in zip(gots, sorted(wants, key=_order)):
            diff = {n: (g[n], w[n]) for n in EXACT_FIELDS if g[n] != w[n]}
            assert not diff, f"flow {key}: fields differ (got, expected): {diff}"
            assert (g["slot"] >= 0) == (w["slot"] >= 0), f"flow {key}: slot {g['slot']} vs {w['slot']}"
            for n in FLOAT_FIELDS:
                assert math.isclose(g[n], w[n], rel_tol=1e-9, abs_tol=1e-12), f"flow {key}: {n} {g[n]} vs {w[n]}"
            for n in ("kept_payload", "kept_lengths", "early_sequence"):
                assert tuple(g[n]) == tuple(w[n]), f"flow {key}: {n} differs:\n got {g[n]}\n exp {w[n]}"


def assert_same_placement(table: FlowTable, ref: NaiveFlowTable, where: str) -> None:
    """The same flows in the same record indices, the same free stack, slots and eviction scan state."""
    t = table.t
    used = np.flatnonzero(t.used).tolist()
    assert used == [i for i, _ in ref.live_flows()], f"{where}: live record indices differ"
    for i in used:
        r, w = t.records[i], ref.records[i]
        got = tuple(int(r[n]) for n in KEY_FIELDS) + (int(r["last_seen_ns"]), int(r["slot"]))
        want = tuple(w.rec[n] for n in KEY_FIELDS) + (w.rec["last_seen_ns"], w.slot)
        assert got == want, f"{where}: record {i} holds {got}, expected {want}"
        assert int(t.seen[i]) == w.rec["last_seen_ns"], f"{where}: seen[{i}] != last_seen_ns"
        assert bool(t.two_way[i]) == two_way(w.rec), f"{where}: two_way[{i}] differs"
    free_top = int(t.meta[kernels.M_FREE_TOP])
    assert t.free[:free_top].tolist() == ref.free, f"{where}: free stacks differ"
    assert int(t.meta[kernels.M_EVICT_POS]) == ref.evict_pos, f"{where}: eviction scan position"
    if ref.evict_pos >= 0:
        assert int(t.meta[kernels.M_EVICT_BEFORE]) == ref.evict_before, f"{where}: eviction threshold"
        assert bool(t.meta[kernels.M_EVICT_ONE_WAY]) == ref.evict_one_way, f"{where}: kind of flows evicted"
    assert int(t.meta[kernels.M_SWEEP_POS]) == -1, f"{where}: an idle sweep was left unfinished"
    assert (table.live, table.evictions, table.slot_denied, table.skipped_packets, table.created) == (
        ref.live, ref.evictions, ref.slot_denied, ref.skipped, ref.created), f"{where}: counters differ"


def assert_matches_naive(chunks, settings: FlowSettings, out_size: int = 1 << 14) -> tuple[Run, NaiveFlowTable]:
    """Run the table and the reference in lockstep over chunks as the pipeline does (update, expire at the chunk's
    latest time, flush at the end), comparing the records of every step, their order and the placement after it.
    A None in `chunks` is a flush between two captures (the pipeline reuses the table)."""
    run, ref = Run(settings, out_size), NaiveFlowTable(settings, out_size)

    def step(where: str, act, want: list[dict]) -> None:
        n = len(run.records)
        act()
        got = run.records[n:]
        assert_same_records(got, want)
        assert [_key(r) for r in got] == [_key(r) for r in want], f"{where}: emission order differs"
        assert_same_placement(run.table, ref, where)

    for c, chunk in enumerate(chunks):
        if chunk is None:
            step(f"flush before chunk {c + 1}", run.flush, ref.flush())
            continue
        packets, buf = chunk
        step(f"chunk {c} update", lambda: run.update(packets, buf), ref.update(packets, buf))
        if len(packets):
            now = int(packets["ts_ns"].max())
            step(f"chunk {c} expire", lambda: run.expire(now), ref.expire(now))
    step("flush", run.flush, ref.flush())
    assert run.max_live <= settings.capacity and ref.max_live <= settings.capacity
    if None not in chunks:
        want, _ = naive_flows(chunks, settings, out_size)  # the stand-alone driver agrees with the lockstep one
        assert_same_records(run.records, want)
    return run, ref


# ---------------------------------------------------------------- random packets

V4 = [0x0000FFFF_00000000 | ip for ip in (0x0A000001, 0x0A000002, 0xC0A80101)]  # IPv4-mapped ::ffff:a.b.c.d
V6 = [(0x20010DB8_00000000, 1), (0x20010DB8_00000000, 2), (0xFE800000_00000000, 0x0211_22FF_FE33_4455)]
PORTS = (22, 53, 443, 40000, 40001, 0)
FLAG_CHOICES = np.array([0x02, 0x12, 0x10, 0x18, 0x11, 0x04, 0x14, 0x00, 0x01, 0x03, 0x06])
FLAG_P = np.array([0.10, 0.07, 0.30, 0.30, 0.08, 0.04, 0.03, 0.02, 0.02, 0.02, 0.02])
GAPS_NS = np.array([0, 50_000_000, 2 * SEC, 6 * SEC, 25 * SEC, -SEC, -12 * SEC])  # kinds of step, see _time_steps
GAP_P = np.array([0.05, 0.70, 0.13, 0.05, 0.03, 0.03, 0.01])


def _time_steps(rng: np.random.Generator, n: int) -> np.ndarray:
    """Mostly short steps, some crossing the idle timeouts (other 5 s, TCP 20 s), some going back in time (a little,
    as merged interfaces do, or by more than an idle timeout, so creation order departs from last-seen order), some
    zero (ties in last_seen: an eviction scan then takes every flow tied with its threshold)."""
    kind = rng.choice(len(GAPS_NS), size=n, p=GAP_P)
    steps = np.zeros(n, np.int64)
    for k, scale in enumerate(GAPS_NS):
        m = kind == k
        lo, hi = (scale // 2, scale * 3 // 2) if k in (3, 4) else (0, abs(scale))  # 3, 4: around the timeouts
        steps[m] = np.sign(scale) * rng.integers(lo, hi + 1, m.sum())
    return steps


def random_chunks(seed: int, n: int = 1500, buf_len: int = 8192) -> list[tuple[np.ndarray, np.ndarray]]:
    """Random PACKET chunks (each with its own payload buffer) over a few hosts and ports, so flows collide."""
    rng = np.random.default_rng(seed)
    hosts = [(0, lo, 4, 0x02_00_00_00_00_10 + i) for i, lo in enumerate(V4)] + \
            [(hi, lo, 6, 0x02_00_00_00_00_20 + i) for i, (hi, lo) in enumerate(V6)]
    tuples: list[tuple] = []  # recent conversations: (src host, dst host, sport, dport, proto)
    seq_state: dict[tuple, int] = {}
    pk = np.zeros(n, PACKET_DTYPE)
    ts = T0 + np.cumsum(_time_steps(rng, n))
    for i in range(n):
        if tuples and rng.random() < 0.75:
            a, b, sp, dp, proto = tuples[-1 - int(rng.integers(0, min(len(tuples), 8)))]
            if rng.random() < 0.5:
                a, b, sp, dp = b, a, dp, sp
        else:
            fam = 4 if rng.random() < 0.6 else 6
            cand = [h for h in range(len(hosts)) if hosts[h][2] == fam]
            a, b = (int(x) for x in rng.choice(cand, 2))  # may be the same host
            proto = int(rng.choice([6, 17, 1 if fam == 4 else 58, 47], p=[0.6, 0.25, 0.1, 0.05]))
            if proto in (1, 58):
                sp, dp = int(rng.integers(0, 12)), int(rng.integers(0, 3))
            elif proto == 47:
                sp = dp = 0
            else:
                sp, dp = int(rng.choice(PORTS)), int(rng.choice(PORTS))
            tuples.append((a, b, sp, dp, proto))
        src, dst = hosts[a], hosts[b]
        p = pk[i]
        p["ts_ns"] = ts[i]
        p["src_hi"], p["src_lo"], p["dst_hi"], p["dst_lo"] = src[0], src[1], dst[0], dst[1]
        p["src_mac"] = 0 if rng.random() < 0.1 else src[3]
        p["dst_mac"] = dst[3]
        p["sport"], p["dport"], p["proto"] = sp, dp, proto
        p["ip_version"] = 0 if rng.random() < 0.03 else src[2]
        p["vlan"] = int(rng.choice([0, 0, 0, 7]))
        p["iface"] = int(rng.choice([0, 0, 1]))
        p["status"] = int(rng.choice([0, 0, 0, 0, 0, 1, 8, 16, 24, 32]))
        r = rng.random()
        if proto == 6:
            pl = 0 if r < 0.4 else (70_000 if r < 0.41 else int(rng.integers(1, 1500)))
        elif proto == 17:
            pl = int(rng.integers(0, 600))
        else:
            pl = int(rng.integers(0, 100))
        caplen = pl if rng.random() < 0.7 else int(rng.integers(0, min(pl, 2000) + 1))
        caplen = min(caplen, 2000)
        p["payload_bytes"], p["payload_caplen"] = pl, caplen
        p["wire_bytes"] = min(pl, 65535) + 54 + int(rng.integers(0, 8))
        if proto == 6:
            flags = int(rng.choice(FLAG_CHOICES, p=FLAG_P))
            k = (a, b, sp, dp)
            if k not in seq_state:
                seq_state[k] = int(rng.choice([0, int(rng.integers(0, 1 << 32)), (1 << 32) - 300]))
            r = rng.random()
            cur = seq_state[k]
            seq = cur if r < 0.75 else ((cur - int(rng.integers(1, 2000))) % (1 << 32) if r < 0.9
                                        else int(rng.integers(0, 1 << 32)))
            p["tcp_flags"], p["tcp_seq"] = flags, seq
            seq_state[k] = (seq + pl + (1 if flags & 0x03 else 0)) % (1 << 32)
    # split into chunks of random sizes (some empty), each with its own buffer
    cuts = np.sort(rng.integers(0, n + 1, 6))
    chunks = []
    for lo, hi in zip(np.r_[0, cuts], np.r_[cuts, n]):
        part = pk[lo:hi].copy()
        buf = rng.integers(0, 256, buf_len, dtype=np.uint8)
        part["payload_offset"] = rng.integers(0, buf_len - part["payload_caplen"].astype(np.int64) + 1)
        chunks.append((part, buf))
    return chunks


SMALL = dict(tcp_idle_s=20.0, other_idle_s=5.0, active_s=30.0)
RANDOM_CASES = {
    # name: (settings, out_size)
    "tiny-table-tiny-out": (FlowSettings(capacity=6, payload_slots=3, keep_packets=2, keep_bytes=32,
                                         sequence_length=4, **SMALL), 3),
    "one-flow": (FlowSettings(capacity=1, payload_slots=1, keep_packets=1, keep_bytes=16, sequence_length=1,
                              **SMALL), 2),
    "roomy-no-active": (FlowSettings(capacity=64, payload_slots=16, keep_packets=3, keep_bytes=64,
                                     sequence_length=6, tcp_idle_s=20.0, other_idle_s=5.0, active_s=0.0), 1 << 15),
    "no-slots-tcp-shorter": (FlowSettings(capacity=12, payload_slots=0, tcp_idle_s=4.0, other_idle_s=7.0,
                                          active_s=15.0), 5),
    "few-slots-no-sequence": (FlowSettings(capacity=20, payload_slots=2, keep_packets=4, keep_bytes=256,
                                           sequence_length=0, **SMALL), 64),
    # long timeouts keep the table full: scans of 48 // 16 = 3 flows, most of them cut short by the 3-record output
    "evict-sixteenth-tiny-out": (FlowSettings(capacity=48, payload_slots=8, keep_packets=2, keep_bytes=64,
                                              sequence_length=4, tcp_idle_s=900.0, other_idle_s=300.0,
                                              active_s=600.0), 3),
}


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("case", RANDOM_CASES)
def test_random_packets_match_reference(seed, case):
    settings, out_size = RANDOM_CASES[case]
    assert_matches_naive(random_chunks(seed), settings, out_size)


@pytest.mark.parametrize("seed", range(2))
def test_table_reused_for_an_older_capture_matches_reference(seed):
    """As the pipeline does: one table, a flush after each capture. The first capture ends with an eviction scan cut
    short by the 3-record output buffer; the second was recorded earlier, so a threshold left over from the first
    would take every flow it reaches (test_flow_kernels.py checks that outcome directly)."""
    settings, out_size = RANDOM_CASES["evict-sixteenth-tiny-out"]
    first = random_chunks(seed)
    ref = NaiveFlowTable(settings, out_size)
    for packets, buf in first:
        ref.update(packets, buf)
        if len(packets):
            ref.expire(int(packets["ts_ns"].max()))
    assert ref.evict_pos > 0  # the guard: a scan is under way when the first capture ends
    second = []
    for packets, buf in random_chunks(seed + 10):
        packets = packets.copy()
        packets["ts_ns"] -= 10**6 * SEC
        second.append((packets, buf))
    run, ref = assert_matches_naive(first + [None] + second, settings, out_size)
    assert ref.evictions > 0 and run.table.created == ref.created


def test_random_generator_reaches_every_rule():
    """The generator must exercise what the comparison is meant to check (guards against a weakened generator)."""
    settings, out_size = RANDOM_CASES["tiny-table-tiny-out"]
    records, ref = [], None
    for seed in range(4):
        recs, ref_seed = naive_flows(random_chunks(seed), settings, out_size)
        records += recs
        assert ref_seed.evictions > 0 and ref_seed.slot_denied > 0 and ref_seed.skipped > 0
    reasons = collections.Counter(r["end_reason"] for r in records)
    for reason in (EndReason.IDLE, EndReason.ACTIVE_TIMEOUT, EndReason.EVICTED, EndReason.END_OF_INPUT,
                   EndReason.PORT_REUSE):
        assert reasons[int(reason)] > 0, f"no {reason.name} record: {reasons}"
    # eviction scans of more than one flow, and scans continued after the output buffer filled
    roomy, out = RANDOM_CASES["roomy-no-active"]
    _, ref = naive_flows(random_chunks(0), roomy, out)
    assert roomy.capacity // 16 > 1 and ref.evictions >= 2 * ref.evict_scans > 0
    cramped, out = RANDOM_CASES["evict-sixteenth-tiny-out"]
    _, ref = naive_flows(random_chunks(0), cramped, out)
    assert ref.evict_resumes > 0
    flags = 0
    for r in records:
        flags |= r["flow_flags"]
    assert flags == int(FlowFlag.SAW_SYN | FlowFlag.SLOT_DENIED | FlowFlag.CONTINUED | FlowFlag.PORT_REUSE)
    # both kinds of eviction scan, and the slot reserve refusing one-way flows, some of which got a slot later
    _, ref = naive_flows(random_chunks(0), cramped, out)
    assert 0 < ref.one_way_scans < ref.evict_scans
    assert ref.reserve_refusals > 0 and ref.waited_then_kept > 0
    assert sum(r["orig_retransmits"] + r["resp_retransmits"] for r in records) > 0
    assert any(r["ip_version"] == 6 for r in records) and any(r["ip_version"] == 4 for r in records)
    # bursts: flows with several of them, intervals in several histogram bins, out-of-order packets inside a burst
    assert max(r["burst_count"] for r in records) >= 4
    assert sum(1 for b in range(len(records[0]["burst_interval_hist"]))
               if any(r["burst_interval_hist"][b] for r in records)) >= 3
    # a SYN-ACK opened some record: its originator is the SYN-ACK's receiver
    assert any(r["flow_flags"] & 1 and not r["orig_tcp_flags"] & 0x02 and r["resp_tcp_flags"] & 0x12 == 0x12
               for r in records)


# ---------------------------------------------------------------- real captures


def capture_chunks(rel: str, chunk_frames: int = 97) -> list[tuple[np.ndarray, np.ndarray]]:
    """Decoded chunks of a public capture (copies: the reader and the decoder reuse their buffers)."""
    from egressguard.capture import CaptureFile
    from egressguard.decode import Decoder

    path = PUBLIC / rel
    if not path.exists():
        pytest.skip(f"public capture {path} is absent (the shared captures folder is not mounted here)")
    decoder = Decoder()
    chunks = []
    with CaptureFile(str(path), chunk_bytes=1 << 16, chunk_frames=chunk_frames) as capture:
        for chunk in capture.chunks():
            packets = decoder.decode_batch(chunk.buf, chunk.frames)
            chunks.append((packets.copy(), chunk.buf.copy()))
    assert chunks, f"{rel}: no frames"
    return chunks


CAPTURES = ["zeek/ssh/ssh.pcap", "ntop-nDPI/mining.pcapng", "FoxIO-ja4/pcap/ssh-r.pcap",
            "dmachard-datasets-malicious-dns/sods.pcap"]
CAPTURE_SETTINGS = {
    "default-timeouts": (FlowSettings(capacity=4096, payload_slots=512), 1 << 15),
    "cramped": (FlowSettings(capacity=8, payload_slots=3, keep_packets=2, keep_bytes=100, sequence_length=8,
                             tcp_idle_s=30.0, other_idle_s=2.0, active_s=60.0), 4),
}


@pytest.mark.public
@pytest.mark.parametrize("variant", CAPTURE_SETTINGS)
@pytest.mark.parametrize("rel", CAPTURES)
def test_public_capture_matches_reference(rel, variant):
    settings, out_size = CAPTURE_SETTINGS[variant]
    chunks = capture_chunks(rel)
    run, ref = assert_matches_naive(chunks, settings, out_size)
    assert run.records, rel
    assert sum(r["orig_pkts"] + r["resp_pkts"] for r in run.records) == \
        sum(int((p["ip_version"] != 0).sum()) for p, _ in chunks)
    if variant == "cramped" and rel.endswith("sods.pcap"):
        assert run.table.evictions > 0  # the comparison covered evictions on real traffic


def _first_tcp_payloads(path: Path) -> dict[tuple, list[bytes]]:
    """dpkt's view: (src, sport, dst, dport) -> TCP payloads in capture order (an independent oracle)."""
    import dpkt

    out: dict[tuple, list[bytes]] = collections.defaultdict(list)
    with open(path, "rb") as f:
        for _, frame in dpkt.pcap.Reader(f):
            eth = dpkt.ethernet.Ethernet(frame)
            ip = eth.data
            if not isinstance(ip, dpkt.ip.IP) or not isinstance(ip.data, dpkt.tcp.TCP):
                continue
            tcp = ip.data
            if tcp.data:
                out[(bytes(ip.src), tcp.sport, bytes(ip.dst), tcp.dport)].append(bytes(tcp.data))
    return out


@pytest.mark.public
def test_ssh_banners_are_kept_from_both_sides():
    chunks = capture_chunks("zeek/ssh/ssh.pcap")
    settings = FlowSettings(capacity=4096, payload_slots=512, keep_packets=4, keep_bytes=2048)
    run = Run(settings).chunks(chunks)
    dpkt_payloads = _first_tcp_payloads(PUBLIC / "zeek/ssh/ssh.pcap")
    ssh = [r for r in run.records if r["proto"] == 6 and r["resp_port"] == 22 and r["flow_flags"] & 1]
    assert len(ssh) >= 10
    both_v2 = 0
    for r in ssh:
        orig, resp = (b"".join(r["kept_payload"][d]) for d in (0, 1))
        assert orig.startswith(b"SSH-") and resp.startswith(b"SSH-"), (orig[:20], resp[:20])
        both_v2 += orig.startswith(b"SSH-2.0-") and resp.startswith(b"SSH-")
    assert both_v2 > 0
    # every TCP flow: the kept bytes are the first payload bytes of each direction (no retransmissions here)
    checked = 0
    for r in run.records:
        if r["proto"] != 6 or r["orig_retransmits"] or r["resp_retransmits"]:
            continue
        o = r["orig_lo"].to_bytes(8, "big")[4:], r["orig_port"]
        s = r["resp_lo"].to_bytes(8, "big")[4:], r["resp_port"]
        for d, (a, b) in enumerate(((o, s), (s, o))):
            pieces = dpkt_payloads[(a[0], a[1], b[0], b[1])][:settings.keep_packets]
            expect = b"".join(pieces)[:settings.keep_bytes]
            assert b"".join(r["kept_payload"][d]) == expect
            assert r["kept_lengths"][d] == [len(x) for x in pieces]
            checked += 1
    assert checked >= 40


# ---------------------------------------------------------------- bounds, slots, snapshot, settings


def _udp(ts_s: float, a: int, b: int, pl: int = 10, sport: int = 1000, dport: int = 53) -> dict:
    return dict(ts_ns=T0 + int(ts_s * SEC), src_hi=0, src_lo=V4[0] + a, dst_hi=0, dst_lo=V4[0] + b, sport=sport,
                dport=dport, proto=17, payload_bytes=pl, payload_caplen=pl, payload_offset=a, wire_bytes=pl + 42)


def test_memory_is_bounded_and_evictions_counted():
    settings = FlowSettings(capacity=5, payload_slots=2, **SMALL)
    rows = [_udp(i * 0.001, i % 17, 100, sport=2000 + i % 17) for i in range(300)]
    packets, buf = make_packets(rows), np.arange(256, dtype=np.uint8)
    run = Run(settings, out_size=2)
    memory = run.table.memory_bytes()
    for lo in range(0, 300, 37):  # several update() calls
        run.update(packets[lo:lo + 37], buf)
        assert run.table.live <= 5
    assert run.max_live == 5
    run.flush()
    assert run.table.memory_bytes() == memory
    ref = NaiveFlowTable(settings, out_size=2)
    want = [r for lo in range(0, 300, 37) for r in ref.update(packets[lo:lo + 37], buf)] + ref.flush()
    assert run.table.evictions == ref.evictions == 300 - 5
    assert_same_records(run.records, want)
    assert collections.Counter(r["end_reason"] for r in run.records) == {int(EndReason.EVICTED): 295,
                                                                          int(EndReason.END_OF_INPUT): 5}


def test_payload_slots_return_to_the_pool():
    settings = FlowSettings(capacity=64, payload_slots=8, **SMALL)
    run = Run(settings)
    lowest = 8
    for packets, buf in random_chunks(11):
        run.update(packets, buf)  # Run checks free + held == payload_slots after every update
        lowest = min(lowest, int(run.table.t.meta[kernels.M_SLOT_FREE_TOP]))
    assert lowest < 8 and run.table.slot_denied > 0  # slots were handed out, and the pool ran dry on the way
    run.flush()
    t = run.table.t
    assert int(t.meta[kernels.M_SLOT_FREE_TOP]) == 8
    assert sorted(t.slot_free.tolist()) == list(range(8))
    assert any(r["slot"] >= 0 for r in run.records)


def test_batch_slots_are_released_once_consumed():
    settings = FlowSettings(capacity=4, payload_slots=4, **SMALL)
    table = FlowTable(settings)
    packets = make_packets([_udp(0, 1, 2), _udp(0.1, 3, 4)])
    buf = np.arange(64, dtype=np.uint8)
    assert list(table.update(packets, buf)) == []
    assert table.t.meta[kernels.M_SLOT_FREE_TOP] == 2
    gen = table.flush()
    batch = next(gen)
    assert len(batch.records) == 2 and (batch.records["slot"] >= 0).all()
    assert table.t.meta[kernels.M_SLOT_FREE_TOP] == 2  # still reserved: the batch's payload is readable
    assert batch.kept_stream(0, 0) in (bytes(range(1, 11)), bytes(range(3, 13)))
    assert list(gen) == []
    assert table.t.meta[kernels.M_SLOT_FREE_TOP] == 4
    assert (batch.records["slot"] == -1).all() and batch.kept_stream(0, 0) == b""
    table.release(batch)  # idempotent
    assert table.t.meta[kernels.M_SLOT_FREE_TOP] == 4


def _answer(ts_s: float, a: int, b: int, pl: int = 10) -> dict:
    """The answer to _udp(ts, b, a) with the default ports."""
    return _udp(ts_s, a, b, pl=pl, sport=53, dport=1000)


def test_slot_exhaustion_sets_flag_and_is_counted():
    """An answered flow that finds no slot free is denied for good, and counted once, at once."""
    settings = FlowSettings(capacity=16, payload_slots=1, keep_bytes=16, **SMALL)
    table = FlowTable(settings)
    buf = np.arange(256, dtype=np.uint8)
    rows = [_udp(0, 1, 2), _udp(0.1, 3, 4), _answer(0.15, 4, 3), _udp(0.2, 5, 6), _answer(0.25, 6, 5),
            _udp(0.3, 3, 4), _udp(0.4, 7, 8, pl=0), _answer(0.45, 8, 7, pl=0)]
    assert list(table.update(make_packets(rows), buf)) == []
    assert table.slot_denied == 2  # flows 3<->4 and 5<->6; the empty 7<->8 wanted no slot; 3<->4 is counted once
    snap = {(int(r["orig_lo"]) - V4[0]): r for r in table.snapshot().records}
    assert snap[1]["slot"] >= 0 and not snap[1]["flow_flags"] & FlowFlag.SLOT_DENIED
    for k in (3, 5):
        assert snap[k]["slot"] == -1 and snap[k]["flow_flags"] & FlowFlag.SLOT_DENIED
    assert snap[7]["flow_flags"] == 0
    # the slot comes back when 1->2 idles out; a denied flow stays denied, a new flow gets the slot
    later = [_udp(5.15, 3, 4), _udp(5.16, 9, 10)]
    for _ in table.expire(T0 + int(5.11 * SEC)):
        pass
    assert table.t.meta[kernels.M_SLOT_FREE_TOP] == 1
    assert list(table.update(make_packets(later), buf)) == []
    snap = {(int(r["orig_lo"]) - V4[0]): r for r in table.snapshot().records}
    assert snap[3]["slot"] == -1 and snap[9]["slot"] >= 0
    assert table.slot_denied == 2
    rows_out = [r for b in table.flush() for r in batch_rows(b)]
    denied = [r for r in rows_out if r["flow_flags"] & FlowFlag.SLOT_DENIED]
    assert len(denied) == 2 and all(r["kept_payload"] == ([], []) for r in denied)


def test_one_way_flows_leave_the_last_quarter_of_the_slots_to_answered_ones():
    """One-way flows may not take the last 1/4 of the payload slots; refused, they wait (not denied) and take a slot
    once answered; a flow answered when no slot is left is denied at once; one still waiting when it ends counts as
    denied then. Each flow that wanted a slot and never got one is counted exactly once."""
    settings = FlowSettings(capacity=64, payload_slots=8, keep_bytes=16, **SMALL)
    run = Run(settings)
    buf = np.arange(256, dtype=np.uint8)

    def snap() -> dict:
        return {int(r["orig_lo"]) - V4[0]: r for r in run.table.snapshot().records}

    run.update(make_packets([_udp(i * 0.01, 10 + i, 100, pl=4) for i in range(8)]), buf)
    assert int(run.table.t.meta[kernels.M_SLOT_FREE_TOP]) == 2  # 6 slots taken, 2 (a quarter) left
    live = snap()
    assert all(live[10 + i]["slot"] >= 0 for i in range(6))
    assert live[16]["slot"] == live[17]["slot"] == -1 and live[16]["flow_flags"] == live[17]["flow_flags"] == 0
    assert run.table.slot_denied == 0
    # a conversation: its query is refused (one-way), its answer takes a reserved slot
    run.update(make_packets([_udp(0.1, 1, 2, pl=5), _answer(0.11, 2, 1, pl=7)]), buf)
    assert snap()[1]["slot"] >= 0 and int(run.table.t.meta[kernels.M_SLOT_FREE_TOP]) == 1
    # the refused flow 16 is answered: it takes the last slot, its answer is kept
    run.update(make_packets([_udp(0.2, 100, 16, pl=3, sport=53, dport=1000)]), buf)
    assert snap()[16]["slot"] >= 0 and int(run.table.t.meta[kernels.M_SLOT_FREE_TOP]) == 0
    # flow 17 is answered with no slot left: denied for good, counted now; a new one-way flow waits, not counted
    run.update(make_packets([_udp(0.3, 100, 17, pl=3, sport=53, dport=1000), _udp(0.4, 30, 100, pl=4)]), buf)
    live = snap()
    assert live[17]["flow_flags"] == FlowFlag.SLOT_DENIED and live[30]["flow_flags"] == 0
    assert run.table.slot_denied == 1
    run.flush()
    by_src = {int(r["orig_lo"]) - V4[0]: r for r in run.records}
    assert by_src[1]["kept_payload"] == ([], [bytes(range(2, 9))])  # the query came before the flow had a slot
    assert by_src[16]["kept_payload"] == ([], [bytes(range(100, 103))])
    assert by_src[16]["flow_flags"] == 0 and by_src[1]["flow_flags"] == 0
    assert by_src[30]["flow_flags"] == FlowFlag.SLOT_DENIED and by_src[30]["kept_payload"] == ([], [])
    assert run.table.slot_denied == 2 == sum(1 for r in run.records if r["flow_flags"] & FlowFlag.SLOT_DENIED)
    assert all(r["flow_flags"] < 16 for r in run.records)  # the internal mark never leaves the table
    want, _ = naive_flows([(make_packets(rows), buf) for rows in (
        [_udp(i * 0.01, 10 + i, 100, pl=4) for i in range(8)], [_udp(0.1, 1, 2, pl=5), _answer(0.11, 2, 1, pl=7)],
        [_udp(0.2, 100, 16, pl=3, sport=53, dport=1000)],
        [_udp(0.3, 100, 17, pl=3, sport=53, dport=1000), _udp(0.4, 30, 100, pl=4)])], settings)
    assert_same_records(run.records, want)


def _tcp(ts_s: float, a: int, b: int, flags: int, seq: int = 0, pl: int = 0, sport: int = 40000,
         dport: int = 443) -> dict:
    return dict(ts_ns=T0 + int(round(ts_s * SEC)), src_hi=0, src_lo=V4[0] + a, dst_hi=0, dst_lo=V4[0] + b,
                sport=sport, dport=dport, proto=6, tcp_flags=flags, tcp_seq=seq, payload_bytes=pl, payload_caplen=pl,
                payload_offset=0, wire_bytes=54 + pl)


def test_flood_of_one_way_flows_spares_a_pausing_conversation():
    """A TCP conversation (handshake, banners both ways) pauses for 10 s while 1000 spoofed SYNs nobody answers pass
    through a 64-flow table: the flood evicts only its own flows and the conversation stays one record with every
    packet and its banners kept, although under plain oldest-first it would have been the first to go. The table
    and the reference agree on every step."""
    settings = FlowSettings(capacity=64, payload_slots=8, keep_bytes=64, tcp_idle_s=900.0, other_idle_s=300.0)
    c, s_ = 1, 2
    talk = [_tcp(0.0, c, s_, 0x02, seq=100), _tcp(0.01, s_, c, 0x12, seq=500, sport=443, dport=40000),
            _tcp(0.02, c, s_, 0x10, seq=101), _tcp(0.03, s_, c, 0x18, seq=501, pl=21, sport=443, dport=40000),
            _tcp(0.04, c, s_, 0x18, seq=101, pl=21)]
    flood = [_tcp(0.1 + i * 0.009, 1000 + i, 3, 0x02, seq=i, sport=1024 + i % 5000) for i in range(1000)]
    resume = [_tcp(10.0, c, s_, 0x18, seq=122, pl=36), _tcp(10.01, s_, c, 0x18, seq=522, pl=36, sport=443,
                                                              dport=40000)]
    buf = np.frombuffer(b"SSH-2.0-OpenSSH_9.6\r\n" + bytes(64), np.uint8).copy()
    chunks = [(make_packets(talk), buf)] + [(make_packets(flood[i:i + 250]), buf) for i in range(0, 1000, 250)] + \
        [(make_packets(resume), buf)]
    run, ref = assert_matches_naive(chunks, settings, out_size=64)
    convo = [r for r in run.records if r["orig_lo"] == V4[0] + c]
    assert len(convo) == 1 and convo[0]["end_reason"] == EndReason.END_OF_INPUT
    assert (convo[0]["orig_pkts"], convo[0]["resp_pkts"]) == (4, 3) and convo[0]["flow_flags"] == FlowFlag.SAW_SYN
    assert [b"".join(p)[:7] for p in convo[0]["kept_payload"]] == [b"SSH-2.0"] * 2
    evicted = [r for r in run.records if r["end_reason"] == EndReason.EVICTED]
    assert run.table.evictions == len(evicted) == ref.evictions > 900  # counted, one per evicted record
    assert all(r["resp_pkts"] == 0 for r in evicted)  # only the flood's own flows went
    # every evicted flow was seen after the conversation paused: plain oldest-first would have evicted it first
    assert min(r["last_seen_ns"] for r in evicted) > talk[-1]["ts_ns"]
    assert ref.one_way_scans == ref.evict_scans > 0


def test_one_way_flows_are_kept_and_evicted_first():
    """One-way flows (syslog export, a probe) are flows like any other: recorded, counted, reported. With at least
    capacity/16 of them live they are the first evicted, younger than every two-way flow though they are; with fewer
    the table evicts oldest-first, so a steady one-way stream is not cut at every scan."""
    settings = FlowSettings(capacity=32, payload_slots=4, keep_bytes=16, tcp_idle_s=900.0, other_idle_s=300.0)  # k=2
    syslog = dict(sport=40514, dport=514)
    rows = []
    for i in range(30):  # 30 answered DNS-like flows at 0 .. 0.29 s
        rows += [_udp(i * 0.01, 10 + i, 200, pl=20), _answer(i * 0.01 + 0.001, 200, 10 + i, pl=60)]
    rows += [_udp(1.0, 5, 250, pl=80, **syslog), _udp(1.05, 6, 251, pl=0)]  # the syslog stream, a bare probe
    first = make_packets(rows)
    buf = np.arange(256, dtype=np.uint8)
    run = Run(settings, out_size=64)
    run.update(first, buf)
    assert run.table.live == 32 and run.table.evictions == 0
    # a new answered flow: 2 one-way flows live (= k), so exactly those two go, not the 2 oldest answered ones
    second = make_packets([_udp(2.0, 60, 200, pl=20), _answer(2.05, 200, 60), _udp(2.1, 5, 250, pl=80, **syslog)])
    run.update(second, buf)
    evicted = [r for r in run.records if r["end_reason"] == EndReason.EVICTED]
    assert sorted(int(r["orig_lo"]) - V4[0] for r in evicted) == [5, 6]
    # the syslog stream goes on in a new record; now one one-way flow (< k): the oldest two answered flows go
    third = make_packets([_udp(2.2, 61, 200, pl=20), _answer(2.25, 200, 61), _udp(2.3, 5, 250, pl=80, **syslog)])
    run.update(third, buf)
    evicted = [int(r["orig_lo"]) - V4[0] for r in run.records if r["end_reason"] == EndReason.EVICTED]
    assert sorted(evicted) == [5, 6, 10, 11]
    run.flush()
    logs = [r for r in run.records if r["orig_lo"] == V4[0] + 5]
    assert [r["end_reason"] for r in logs] == [EndReason.EVICTED, EndReason.END_OF_INPUT]
    assert [(r["orig_pkts"], r["resp_pkts"], r["orig_payload_bytes"]) for r in logs] == [(1, 0, 80), (2, 0, 160)]
    assert run.table.evictions == 4 and run.table.created == 32 + 3
    _, ref = assert_matches_naive([(first, buf), (second, buf), (third, buf)], settings, out_size=64)
    assert ref.one_way_scans == 1 and ref.evict_scans == 2


@pytest.mark.parametrize("case", RANDOM_CASES)
def test_counters_match_the_records(case):
    """payload_slots_exhausted and evictions are honest: slot_denied equals the records with SLOT_DENIED, each of
    which carried payload and kept no slot; every record with fresh payload had a slot or was denied; evictions
    equal the EVICTED records."""
    settings, out_size = RANDOM_CASES[case]
    for seed in range(2):
        run = Run(settings, out_size).chunks(random_chunks(seed))
        denied = [r for r in run.records if r["flow_flags"] & FlowFlag.SLOT_DENIED]
        assert run.table.slot_denied == len(denied)
        assert run.table.evictions == sum(r["end_reason"] == EndReason.EVICTED for r in run.records) > 0
        for r in run.records:
            had_payload = r["orig_payload_pkts"] + r["resp_payload_pkts"] > 0
            assert r["flow_flags"] < 16
            if settings.payload_slots == 0 or not had_payload:
                assert r["slot"] < 0 and not r["flow_flags"] & FlowFlag.SLOT_DENIED
            else:
                assert (r["slot"] >= 0) != bool(r["flow_flags"] & FlowFlag.SLOT_DENIED)


def test_snapshot_returns_live_flows_without_removing_them():
    settings = FlowSettings(capacity=32, payload_slots=8, **SMALL)
    chunks = random_chunks(5, n=400)
    table, ref = FlowTable(settings), NaiveFlowTable(settings)
    for packets, buf in chunks[:3]:
        for _ in table.update(packets, buf):
            pass
        ref.update(packets, buf)
    live, created = table.live, table.created
    assert live > 0
    snap = table.snapshot()
    assert len(snap.records) == live and (snap.records["end_reason"] == int(EndReason.ACTIVE)).all()
    assert table.live == live and table.created == created
    assert_same_records(batch_rows(snap), ref.snapshot())
    assert [_key(r) for r in batch_rows(snap)] == [_key(r) for r in ref.snapshot()]  # both in record index order
    again = table.snapshot()  # snapshots are copies and change nothing
    assert np.array_equal(again.records, snap.records)
    flushed = [r for b in table.flush() for r in batch_rows(b)]
    assert list(map(_key, flushed)) == list(map(_key, batch_rows(snap)))  # flush too goes in record index order
    assert {r["end_reason"] for r in flushed} == {int(EndReason.END_OF_INPUT)}


def test_releasing_a_snapshot_leaves_the_live_flows_slots_alone():
    """A snapshot's records carry the slots of live flows: releasing it (by mistake, or via a helper that releases
    every batch it sees) must not put them back in the pool, where a new flow would take one and overwrite the
    live flow's payload."""
    settings = FlowSettings(capacity=8, payload_slots=2, keep_bytes=16, **SMALL)
    run = Run(settings)
    buf = np.arange(256, dtype=np.uint8)
    run.update(make_packets([_udp(0, 1, 2, pl=5)]), buf)
    snap = run.table.snapshot()
    assert not snap.releasable and len(snap.records) == 1 and snap.records["slot"][0] >= 0
    live_slot = int(snap.records["slot"][0])
    free_top = int(run.table.t.meta[kernels.M_SLOT_FREE_TOP])
    run.table.release(snap)
    run.table.release(snap)
    assert int(run.table.t.meta[kernels.M_SLOT_FREE_TOP]) == free_top == 1
    assert int(snap.records["slot"][0]) == live_slot and snap.kept_stream(0, 0) == bytes(range(1, 6))
    run.check_slot_accounting()  # free + held == payload_slots, with no slot both free and held
    # two new flows with payload: one gets the last free slot, the other is denied (not given the live flow's slot)
    run.update(make_packets([_udp(0.1, 3, 4, pl=5), _udp(0.2, 5, 6, pl=5)]), buf)
    snap = {int(r["orig_lo"]) - V4[0]: r for r in run.table.snapshot().records}
    assert len({int(snap[k]["slot"]) for k in (1, 3)}) == 2 and snap[5]["slot"] == -1
    # 5->6 is one-way: it waits for a slot (the snapshot shows no internal mark) and counts as denied if it ends
    # without one
    assert run.table.slot_denied == 0 and snap[5]["flow_flags"] == 0
    assert run.table.kept_stream(live_slot, 0) == bytes(range(1, 6))  # the first flow's payload is intact
    run.flush()
    assert run.table.slot_denied == 1
    by_src = {int(r["orig_lo"]) - V4[0]: r for r in run.records}
    assert by_src[5]["flow_flags"] == FlowFlag.SLOT_DENIED
    assert b"".join(by_src[1]["kept_payload"][0]) == bytes(range(1, 6))
    assert b"".join(by_src[3]["kept_payload"][0]) == bytes(range(3, 8))
    # batches handed out by the table are still released
    assert int(run.table.t.meta[kernels.M_SLOT_FREE_TOP]) == 2


@pytest.mark.parametrize("bad", [
    dict(capacity=0), dict(capacity=(1 << 28) + 1), dict(capacity=2.5, payload_slots=0), dict(keep_bytes=True),
    dict(payload_slots=-1), dict(capacity=4, payload_slots=5),
    dict(keep_packets=0), dict(keep_packets=256), dict(keep_bytes=15), dict(keep_bytes=65537),
    dict(sequence_length=-1), dict(sequence_length=65536),
    dict(tcp_idle_s=0), dict(other_idle_s=0), dict(tcp_idle_s=-1.0), dict(active_s=-0.5),
    dict(tcp_idle_s=float("nan")), dict(other_idle_s=float("inf")), dict(active_s=float("nan")),
    dict(active_s=1e12),
])
def test_settings_validate_rejects_bad_values(bad):
    name = next(iter(bad))
    settings = FlowSettings(**bad)
    with pytest.raises(ValueError) as err:
        settings.validate()
    words = {"capacity": "capacity", "payload_slots": "payload slots", "keep_packets": "kept packets",
             "keep_bytes": "kept bytes", "sequence_length": "sequence length"}
    message = str(err.value)
    assert name in message or words.get(name, name) in message or "idle timeouts" in message, message
    with pytest.raises(ValueError):
        FlowTable(settings)


def test_settings_validate_accepts_edges():
    for ok in (dict(capacity=1, payload_slots=0), dict(capacity=1, payload_slots=1), dict(active_s=0.0),
               dict(keep_packets=255, keep_bytes=16, sequence_length=0), dict(tcp_idle_s=0.001)):
        FlowSettings(**ok).validate()


def test_update_rejects_wrong_inputs():
    table = FlowTable(FlowSettings(capacity=4, payload_slots=0))
    with pytest.raises(TypeError):
        list(table.update(np.zeros(3, FLOW_DTYPE), np.zeros(4, np.uint8)))
    with pytest.raises(TypeError):
        list(table.update(np.zeros(3, PACKET_DTYPE), np.zeros(4, np.int8)))


def test_long_periodic_flow_matches_reference_through_histogram_halving():
    """A UDP and a TCP flow with 1000 bursts at jittered 20-30 s intervals, split by the active timeout: the
    histogram of the first records halves (a bin passes 255), and the bursts of every record agree with the
    reference."""
    rng = np.random.default_rng(7)
    starts = np.cumsum(rng.uniform(20.0, 30.0, 1000))
    rows = []
    for t in starts:
        rows.append(_udp(t, 1, 2, pl=int(rng.integers(1, 400)), sport=5000, dport=9000))
        rows.append(_udp(t + 0.3, 2, 1, pl=int(rng.integers(1, 400)), sport=9000, dport=5000))
        rows.append(dict(ts_ns=T0 + int(t * SEC), src_lo=V4[0], dst_lo=V4[2], sport=40000, dport=443, proto=6,
                         tcp_flags=0x18, payload_bytes=int(rng.integers(1, 1400)), wire_bytes=100))
    settings = FlowSettings(capacity=8, payload_slots=2, other_idle_s=100.0, tcp_idle_s=100.0, active_s=20000.0)
    chunks = [(make_packets(rows[i:i + 500]), np.zeros(1024, np.uint8)) for i in range(0, len(rows), 500)]
    run, _ = assert_matches_naive(chunks, settings)
    longest = max(run.records, key=lambda r: r["burst_count"])
    assert longest["burst_count"] > 600 and sum(longest["burst_interval_hist"]) < longest["burst_count"] - 300
    assert sum(r["flow_flags"] & int(FlowFlag.CONTINUED) > 0 for r in run.records) == 2
