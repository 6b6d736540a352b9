"""Plain-Python reference of the flow table (a test oracle for egressguard/flows).

Flows live in a list indexed by record number, as in the kernel, because the order of idle sweeps, evictions and
flushes and the eviction threshold depend on which record a flow occupies; a dict maps the canonical bidirectional
5-tuple to its record. Free record numbers form a stack (a list popped from the end) that starts as cap-1 .. 0, so
the first record is 0, and an emitted record's number goes back on top. Every rule mirrors
egressguard/flows/kernels.py, written as directly as possible:

* packets with ip_version 0 are skipped (counted);
* the originator is the sender of a bare SYN, the receiver of a SYN-ACK seen first, else the sender of the first
  packet; a bare SYN or a SYN-ACK opening a record sets SAW_SYN;
* a record's last_seen_ns is the time of its newest packet (a packet older than it changes nothing);
* when a packet of a live 5-tuple arrives, in this order: later than the idle timeout after the record's last packet
  -> END_IDLE; a bare SYN on a closed connection (RST seen, or FIN in both directions) -> END_PORT_REUSE (the new
  record gets PORT_REUSE); older than the active timeout since the record's first packet -> END_ACTIVE_TIMEOUT (the
  new record keeps the orientation and SAW_SYN and gets CONTINUED). The idle timeout is other_idle for non-TCP; for
  TCP it is closed_idle when the connection is closed, else tcp_idle;
* a flow is two-way once both sides sent a packet (orig_pkts > 0 and resp_pkts > 0), else one-way;
* a new record in a full table runs eviction scans while the table is full and the output buffer has room: a scan
  with k = max(1, capacity // EVICT_FRACTION) takes, when at least k live flows are one-way, T = the k-th smallest
  last_seen_ns of the one-way flows and evicts only one-way flows; else T = the k-th smallest last_seen_ns of all
  live records and evicts any kind. It walks the records in index order emitting (END_EVICTED, counted) every live
  one of its kind (judged when the scan reaches it) last seen at or before T. When the output buffer fills, the scan
  stops and a later scan continues from there with the same T and kind;
* TCP payload whose sequence number lies before the direction's next expected one is a retransmission: counted, not
  added to the payload statistics and not kept (a SYN only sets the next expected number; 0 means unknown);
* the first ``keep_packets`` fresh payload packets per direction keep their first bytes (``keep_bytes`` per
  direction in all), and the first ``sequence_length`` fresh payload packets of the flow give the early sequence
  (+size orig / -size resp, microseconds since first_seen), even when none of its bytes were captured; this
  needs a payload slot, asked for at each such packet until the flow has one or is denied: a one-way flow is
  refused while free slots * SLOT_RESERVE_FRACTION <= payload_slots (it is marked SLOT_WAITING and asks again
  with its next payload packet, e.g. once answered); a two-way flow finding no slot free gets SLOT_DENIED (counted
  once, WAITING cleared) and never keeps payload; a flow still WAITING when it is emitted leaves with SLOT_DENIED
  instead and is counted then; WAITING never appears in emitted records or snapshots;
* every fresh payload packet (with or without a slot) counts in the flow's bursts: times in whole ms after
  first_seen (clipped to 0 .. 2^32-1); a packet >= 1000 ms after the last payload packet closes the open burst
  (bytes -> burst-size Welford; interval since the previous start -> interval Welford and log histogram, whose
  bins all halve when one would pass 255) and opens a new one; Welford states are float32, rounded after each step;
* emitted records keep their slot until the batch that carries them is released: at the end of each update(), or
  when the output buffer of ``out_size`` records cannot take two more records (the kernel returns early);
* expire(now) emits, in index order, every record idle for longer than its timeout at `now` (the kernel may do this
  over several calls when its output buffer fills, which comes to the same); flush() emits everything in index order
  and ends any eviction scan under way (the next one computes a fresh threshold); snapshot() lists the live records
  in index order.
"""
from __future__ import annotations

import numpy as np

from egressguard.schema import FLOW_DTYPE, PACKET_DTYPE

M64 = (1 << 64) - 1
TCP, FIN, SYN, RST, ACK = 6, 0x01, 0x02, 0x04, 0x10
SAW_SYN, SLOT_DENIED, CONTINUED, PORT_REUSE = 1, 2, 4, 8
SLOT_WAITING = 16  # the table's internal mark of a one-way flow refused by the slot reserve
SLOT_RESERVE_FRACTION = 4  # one-way flows may not take the last quarter of the payload slots
ACTIVE, END_IDLE, END_ACTIVE_TIMEOUT, END_EVICTED, END_OF_INPUT, END_PORT_REUSE = 0, 1, 2, 3, 4, 5
EVICT_FRACTION = 16  # an eviction scan evicts down to the k-th oldest flow, k = max(1, capacity // EVICT_FRACTION)
FLOW_FIELDS = FLOW_DTYPE.names
DIRECTION_FIELDS = ("pkts", "bytes", "payload_bytes", "payload_pkts", "bare_acks", "retransmits", "tcp_flags",
                    "payload_min", "payload_max", "payload_mean", "payload_m2", "iat_mean", "iat_m2", "last_ns",
                    "next_seq")
BURST_GAP_MS = 1000
BURST_BINS = FLOW_DTYPE["burst_interval_hist"].shape[0]
# left edges (ms) of interval bins 1.. : 2^(k/2) s rounded to the ms
BURST_EDGES_MS = [round(1000 * 2 ** (k / 2)) for k in range(1, BURST_BINS)]
FLOAT_FIELDS = tuple(n for n in FLOW_FIELDS if FLOW_DTYPE[n].kind == "f")
INT_FIELDS = tuple(n for n in FLOW_FIELDS if FLOW_DTYPE[n].kind != "f")


def _mix(h: int, v: int) -> int:
    return h ^ ((v + 0x9E3779B97F4A7C15 + ((h << 6) & M64) + (h >> 2)) & M64)


def key_hash(a_hi: int, a_lo: int, b_hi: int, b_lo: int, a_port: int, b_port: int, proto: int) -> int:
    """flow_key_hash in plain Python (64-bit wrap-around made explicit)."""
    if (a_hi, a_lo, a_port) > (b_hi, b_lo, b_port):
        a_hi, a_lo, a_port, b_hi, b_lo, b_port = b_hi, b_lo, b_port, a_hi, a_lo, a_port
    h = proto
    for v in (a_hi, a_lo, b_hi, b_lo, (a_port << 16) | b_port):
        h = _mix(h, v)
    h ^= h >> 30
    h = (h * 0xBF58476D1CE4E5B9) & M64
    h ^= h >> 27
    h = (h * 0x94D049BB133111EB) & M64
    h ^= h >> 31
    return h


def canonical_key(p: dict) -> tuple:
    """The direction-free identity of a packet's flow."""
    a = (p["src_hi"], p["src_lo"], p["sport"])
    b = (p["dst_hi"], p["dst_lo"], p["dport"])
    return (p["proto"],) + (a + b if a <= b else b + a)


def packets_as_dicts(packets: np.ndarray) -> list[dict]:
    names = PACKET_DTYPE.names
    return [dict(zip(names, row)) for row in packets.tolist()]


def make_packets(rows: list[dict]) -> np.ndarray:
    """A PACKET array from dicts (missing fields are 0; ip_version defaults to 4)."""
    out = np.zeros(len(rows), PACKET_DTYPE)
    for i, row in enumerate(rows):
        out[i]["ip_version"] = 4
        for k, v in row.items():
            out[i][k] = v
    return out


def two_way(rec: dict) -> bool:
    """Both sides of the flow sent a packet."""
    return rec["orig_pkts"] > 0 and rec["resp_pkts"] > 0


def _seq_before(seq: int, next_seq: int) -> bool:
    diff = (seq - next_seq) & 0xFFFFFFFF
    return diff >= 0x80000000


class _Flow:
    __slots__ = ("key", "rec", "slot", "kept", "kept_len", "fill", "seq")

    def __init__(self, key: tuple, rec: dict):
        self.key = key
        self.rec = rec
        self.slot = -1
        self.kept: tuple[list[bytes], list[bytes]] = ([], [])
        self.kept_len: tuple[list[int], list[int]] = ([], [])
        self.fill = [0, 0]
        self.seq: list[tuple[int, int]] = []


class NaiveFlowTable:
    """The reference table; update/expire/flush return the emitted records (dicts) in emission order.

    Each record dict has every FLOW_DTYPE field, plus ``kept_payload`` (two lists of bytes: orig, resp),
    ``kept_lengths`` (two lists of L4 payload lengths) and ``early_sequence`` (list of (signed size, dt_us)).
    """

    def __init__(self, settings, out_size: int = 1 << 14):
        self.s = settings
        self.out_cap = max(out_size, 2)
        self.tcp_idle = int(settings.tcp_idle_s * 1e9)
        self.other_idle = int(settings.other_idle_s * 1e9)
        self.active = int(settings.active_s * 1e9)
        self.closed_idle = int(settings.closed_idle_s * 1e9)
        self.records: list[_Flow | None] = [None] * settings.capacity  # by record index, None = free
        self.by_key: dict[tuple, int] = {}  # canonical 5-tuple -> record index
        self.free = list(range(settings.capacity - 1, -1, -1))  # stack of free record indices, top = end
        self.evict_pos = -1  # where an unfinished eviction scan continues, -1 when none is under way
        self.evict_before = 0  # that scan's threshold T
        self.evict_one_way = False  # that scan evicts only one-way flows
        self.one_way_scans = 0  # scans that evicted only one-way flows (the rest evicted any kind)
        self.reserve_refusals = 0  # payload packets of one-way flows refused by the slot reserve
        self.waited_then_kept = 0  # flows refused by the reserve that got a slot later
        self.n_out = 0  # records emitted by update() into the kernel's output buffer since the last hand-out
        self.evict_scans = self.evict_resumes = 0  # eviction scans started; scans continued after out filled
        self.free_slots = list(range(settings.payload_slots - 1, -1, -1))
        self.pending: list[int] = []  # slots of emitted records not yet released
        self.evictions = self.slot_denied = self.skipped = self.created = 0
        self.max_live = 0

    @property
    def live(self) -> int:
        return len(self.by_key)

    def live_flows(self) -> list[tuple[int, _Flow]]:
        """(record index, flow) of every live record, in index order."""
        return [(i, f) for i, f in enumerate(self.records) if f is not None]

    # ---- records
    def _new_record(self, p: dict, orig_is_src: bool, flags: int) -> dict:
        rec = {n: 0 for n in FLOW_FIELDS}
        for n in FLOAT_FIELDS:
            rec[n] = 0.0
        rec["burst_interval_hist"] = [0] * BURST_BINS
        s, d = ("src", "dst") if orig_is_src else ("dst", "src")
        rec.update(
            key_hash=key_hash(p["src_hi"], p["src_lo"], p["dst_hi"], p["dst_lo"], p["sport"], p["dport"], p["proto"]),
            orig_hi=p[s + "_hi"], orig_lo=p[s + "_lo"], resp_hi=p[d + "_hi"], resp_lo=p[d + "_lo"],
            orig_port=p["sport"] if orig_is_src else p["dport"], resp_port=p["dport"] if orig_is_src else p["sport"],
            first_seen_ns=p["ts_ns"], last_seen_ns=p["ts_ns"], vlan=p["vlan"], iface=p["iface"], proto=p["proto"],
            ip_version=p["ip_version"], flow_flags=flags, slot=-1)
        return rec

    def _create(self, key: tuple, rec: dict) -> _Flow:
        f = _Flow(key, rec)
        ridx = self.free.pop()
        assert self.records[ridx] is None
        self.records[ridx] = f
        self.by_key[key] = ridx
        self.created += 1
        self.max_live = max(self.max_live, self.live)
        return f

    def _emit(self, ridx: int, reason: int, out: list[dict]) -> None:
        """Append record ridx to out with its end reason and free it (its slot stays pending until released)."""
        f = self.records[ridx]
        self.records[ridx] = None
        del self.by_key[f.key]
        self.free.append(ridx)
        rec = dict(f.rec)
        rec["burst_interval_hist"] = tuple(rec["burst_interval_hist"])
        rec["end_reason"] = reason
        rec["slot"] = f.slot
        if rec["flow_flags"] & SLOT_WAITING:  # refused by the reserve, never got a slot: denied after all
            rec["flow_flags"] = rec["flow_flags"] & ~SLOT_WAITING | SLOT_DENIED
            self.slot_denied += 1
        self._attach_payload(rec, f)
        if f.slot >= 0:
            self.pending.append(f.slot)
        out.append(rec)
        self.n_out += 1

    @staticmethod
    def _attach_payload(out: dict, f: _Flow) -> None:
        out["kept_payload"] = (list(f.kept[0]), list(f.kept[1]))
        out["kept_lengths"] = (list(f.kept_len[0]), list(f.kept_len[1]))
        out["early_sequence"] = list(f.seq)

    def _release(self) -> None:
        self.free_slots.extend(self.pending)
        self.pending.clear()

    # ---- per packet
    def _stats(self, rec: dict, d: int, p: dict) -> bool:
        """Direction statistics; True when the packet carries fresh (not retransmitted) payload."""
        x = "orig_" if d == 0 else "resp_"
        fl, pl, ts = p["tcp_flags"], p["payload_bytes"], p["ts_ns"]
        n_before = rec[x + "pkts"]
        rec[x + "pkts"] += 1
        rec[x + "bytes"] += p["wire_bytes"]
        rec[x + "tcp_flags"] |= fl
        if p["proto"] == TCP and fl & ACK and pl == 0 and not fl & (SYN | FIN | RST):
            rec[x + "bare_acks"] += 1
        if n_before > 0:
            dt = max(ts - rec[x + "last_ns"], 0) / 1e9
            delta = dt - rec[x + "iat_mean"]
            rec[x + "iat_mean"] += delta / n_before
            rec[x + "iat_m2"] += delta * (dt - rec[x + "iat_mean"])
        rec[x + "last_ns"] = max(ts, rec[x + "last_ns"])
        if rec[x + "mac"] == 0:
            rec[x + "mac"] = p["src_mac"]
        fresh = True
        if p["proto"] == TCP:
            if fl & SYN:
                rec[x + "next_seq"] = (p["tcp_seq"] + 1) & 0xFFFFFFFF
            elif pl > 0:
                if rec[x + "next_seq"] != 0 and _seq_before(p["tcp_seq"], rec[x + "next_seq"]):
                    rec[x + "retransmits"] += 1
                    fresh = False
                else:
                    rec[x + "next_seq"] = (p["tcp_seq"] + pl) & 0xFFFFFFFF
        if pl > 0 and fresh:
            rec[x + "payload_pkts"] += 1
            rec[x + "payload_bytes"] += pl
            size = min(pl, 65535)
            if rec[x + "payload_min"] == 0 or size < rec[x + "payload_min"]:
                rec[x + "payload_min"] = size
            rec[x + "payload_max"] = max(rec[x + "payload_max"], size)
            delta = pl - rec[x + "payload_mean"]
            rec[x + "payload_mean"] += delta / rec[x + "payload_pkts"]
            rec[x + "payload_m2"] += delta * (pl - rec[x + "payload_mean"])
        return fresh and pl > 0

    def _keep(self, f: _Flow, d: int, p: dict, buf) -> None:
        rec = f.rec
        if f.slot < 0:
            if rec["flow_flags"] & SLOT_DENIED:
                return
            if not two_way(rec) and len(self.free_slots) * SLOT_RESERVE_FRACTION <= self.s.payload_slots:
                rec["flow_flags"] |= SLOT_WAITING
                self.reserve_refusals += 1
                return
            if not self.free_slots:
                rec["flow_flags"] = rec["flow_flags"] & ~SLOT_WAITING | SLOT_DENIED
                self.slot_denied += 1
                return
            if rec["flow_flags"] & SLOT_WAITING:
                rec["flow_flags"] &= ~SLOT_WAITING
                self.waited_then_kept += 1
            f.slot = self.free_slots.pop()
        s = self.s
        if len(f.kept[d]) < s.keep_packets:
            n = max(0, min(p["payload_caplen"], s.keep_bytes - f.fill[d]))
            off = p["payload_offset"]
            f.kept[d].append(bytes(buf[off:off + n]))
            f.kept_len[d].append(p["payload_bytes"])
            f.fill[d] += n
        if len(f.seq) < s.sequence_length:
            size = min(p["payload_bytes"], 0x7FFFFFFF)
            dt_us = min(max((p["ts_ns"] - rec["first_seen_ns"]) // 1000, 0), 0xFFFFFFFF)
            f.seq.append((size if d == 0 else -size, dt_us))
            rec["seq_count"] = len(f.seq)

    # ---- the table's operations
    def update(self, packets: np.ndarray, buf) -> list[dict]:
        out: list[dict] = []
        self.n_out = 0
        for p in packets_as_dicts(packets):
            if self.n_out + 1 >= self.out_cap:  # the kernel hands out a batch; the consumer releases its slots
                self._release()
                self.n_out = 0
            if p["ip_version"] == 0:
                self.skipped += 1
                continue
            self._packet(p, buf, out)
        self._release()
        return out

    def _evict_oldest(self, out: list[dict]) -> None:
        """One eviction scan (or the rest of one that the full output buffer interrupted)."""
        if self.evict_pos < 0:
            k = max(1, self.s.capacity // EVICT_FRACTION)
            times = sorted(f.rec["last_seen_ns"] for _, f in self.live_flows() if not two_way(f.rec))
            self.evict_one_way = len(times) >= k
            if not self.evict_one_way:
                times = sorted(f.rec["last_seen_ns"] for _, f in self.live_flows())
                if not times:
                    return
                k = min(k, len(times))
            self.evict_before = times[k - 1]
            self.evict_pos = 0
            self.evict_scans += 1
            self.one_way_scans += self.evict_one_way
        else:
            self.evict_resumes += 1
        for i in range(self.evict_pos, self.s.capacity):
            if self.n_out >= self.out_cap:
                self.evict_pos = i
                return
            f = self.records[i]
            if f is not None and f.rec["last_seen_ns"] <= self.evict_before \
                    and not (self.evict_one_way and two_way(f.rec)):
                self._emit(i, END_EVICTED, out)
                self.evictions += 1
        self.evict_pos = -1

    def _packet(self, p: dict, buf, out: list[dict]) -> None:
        key = canonical_key(p)
        ts, fl = p["ts_ns"], p["tcp_flags"]
        is_tcp = p["proto"] == TCP
        bare_syn = is_tcp and fl & (SYN | ACK) == SYN
        syn_ack = is_tcp and fl & (SYN | ACK) == SYN | ACK
        ridx = self.by_key.get(key)
        f = None if ridx is None else self.records[ridx]
        d = 0
        if f is not None:
            rec = f.rec
            is_orig_src = (p["src_hi"], p["src_lo"], p["sport"]) == (rec["orig_hi"], rec["orig_lo"], rec["orig_port"]) \
                and (p["dst_hi"], p["dst_lo"], p["dport"]) == (rec["resp_hi"], rec["resp_lo"], rec["resp_port"])
            d = 0 if is_orig_src else 1
        new_flags, orig_is_src, fresh_orientation = 0, True, True
        if f is not None:
            rec = f.rec
            closed = self._closed(rec)
            idle = self._idle(rec)
            reason = 0
            if ts - rec["last_seen_ns"] > idle:
                reason = END_IDLE
            elif bare_syn and closed:
                reason, new_flags = END_PORT_REUSE, PORT_REUSE
            elif self.active > 0 and ts - rec["first_seen_ns"] > self.active:
                reason = END_ACTIVE_TIMEOUT
                new_flags = CONTINUED | (rec["flow_flags"] & SAW_SYN)
                orig_is_src, fresh_orientation = d == 0, False
            if reason:
                self._emit(ridx, reason, out)
                f = None
        if f is None:
            if fresh_orientation:
                d = 0
                if bare_syn:
                    new_flags |= SAW_SYN
                elif syn_ack:
                    new_flags |= SAW_SYN
                    orig_is_src, d = False, 1
            while self.live >= self.s.capacity and self.n_out < self.out_cap:
                self._evict_oldest(out)
            assert self.live < self.s.capacity
            f = self._create(key, self._new_record(p, orig_is_src, new_flags))  # _stats fills in the sender's MAC
        rec = f.rec
        rec["last_seen_ns"] = max(rec["last_seen_ns"], ts)
        if p["status"] & 8:  # PacketStatus.FRAGMENT
            rec["fragments"] += 1
        if self._stats(rec, d, p):
            self._bursts(rec, p["payload_bytes"], p["ts_ns"])
            if self.s.payload_slots > 0:
                self._keep(f, d, p, buf)

    @staticmethod
    def _bursts(rec: dict, size: int, ts: int) -> None:
        """One fresh payload packet in the record's bursts (update_bursts in flows/conversation.py)."""
        f32 = lambda v: float(np.float32(v))  # noqa: E731 - the kernel stores float32 after every step
        t_ms = min(max((ts - rec["first_seen_ns"]) // 1_000_000, 0), 0xFFFFFFFF)
        n = rec["burst_count"]
        if n > 0 and t_ms - rec["burst_last_ms"] < BURST_GAP_MS:
            rec["burst_open_bytes"] = min(rec["burst_open_bytes"] + size, 0xFFFFFFFF)
            rec["burst_last_ms"] = max(rec["burst_last_ms"], t_ms)
            return
        if n > 0:
            b = float(rec["burst_open_bytes"])
            delta = b - rec["burst_bytes_mean"]
            rec["burst_bytes_mean"] = f32(rec["burst_bytes_mean"] + delta / n)
            rec["burst_bytes_m2"] = f32(rec["burst_bytes_m2"] + delta * (b - rec["burst_bytes_mean"]))
            gap_ms = t_ms - rec["burst_start_ms"]
            x = gap_ms / 1000.0
            delta = x - rec["burst_interval_mean"]
            rec["burst_interval_mean"] = f32(rec["burst_interval_mean"] + delta / n)
            rec["burst_interval_m2"] = f32(rec["burst_interval_m2"] + delta * (x - rec["burst_interval_mean"]))
            k = sum(1 for edge in BURST_EDGES_MS if gap_ms >= edge)
            hist = rec["burst_interval_hist"]
            if hist[k] >= 255:
                hist[:] = [v // 2 for v in hist]
            hist[k] += 1
        rec["burst_count"] = min(n + 1, 0xFFFFFFFF)
        rec["burst_start_ms"] = rec["burst_last_ms"] = t_ms
        rec["burst_open_bytes"] = min(size, 0xFFFFFFFF)

    @staticmethod
    def _closed(rec) -> bool:
        """A TCP connection that saw RST, or FIN in both directions."""
        flags = rec["orig_tcp_flags"] | rec["resp_tcp_flags"]
        return rec["proto"] == TCP and (bool(flags & RST) or bool(rec["orig_tcp_flags"] & FIN and rec["resp_tcp_flags"] & FIN))

    def _idle(self, rec) -> int:
        if rec["proto"] != TCP:
            return self.other_idle
        return self.closed_idle if self._closed(rec) else self.tcp_idle

    def expire(self, now_ns: int) -> list[dict]:
        out: list[dict] = []
        for ridx, f in self.live_flows():
            if now_ns - f.rec["last_seen_ns"] > self._idle(f.rec):
                self._emit(ridx, END_IDLE, out)
        self._release()
        return out

    def flush(self, reason: int = END_OF_INPUT) -> list[dict]:
        out: list[dict] = []
        for ridx, _ in self.live_flows():
            self._emit(ridx, reason, out)
        self.evict_pos = -1  # the empty table has no eviction scan under way any more
        self._release()
        return out

    def snapshot(self) -> list[dict]:
        out = []
        for _, f in self.live_flows():
            rec = dict(f.rec)
            rec["burst_interval_hist"] = tuple(rec["burst_interval_hist"])
            rec["end_reason"] = ACTIVE
            rec["flow_flags"] &= ~SLOT_WAITING
            rec["slot"] = f.slot
            self._attach_payload(rec, f)
            out.append(rec)
        return out


def naive_flows(chunks, settings, out_size: int = 1 << 14, expire: bool = True) -> tuple[list[dict], NaiveFlowTable]:
    """Run the reference over chunks of (PACKET array, payload buffer) as the pipeline does: update each chunk, then
    (if `expire`) expire at the chunk's latest timestamp, and flush at the end. Returns (records, table)."""
    table = NaiveFlowTable(settings, out_size)
    records: list[dict] = []
    for packets, buf in chunks:
        records += table.update(packets, buf)
        if expire and len(packets):
            records += table.expire(int(packets["ts_ns"].max()))
    records += table.flush(END_OF_INPUT)
    return records, table
