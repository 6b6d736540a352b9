"""FlowTable: the Python face of the flow kernels. It validates input, owns the arrays and hands out finished flows.

Memory is fixed at construction: `capacity` flow records plus `payload_slots` payload slots; nothing grows later.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterator

import numpy as np

from egressguard.flows import conversation, kernels
from egressguard.schema import FLOW_DTYPE, PACKET_DTYPE, EndReason

MAX_TIMEOUT_S = 1e9  # about 31 years: timeouts are kept as int64 nanoseconds


@dataclass(frozen=True)
class FlowSettings:
    """Limits and timeouts of the flow table.

    Defaults: TCP idle 900 s, three times Zeek's tcp_inactivity_timeout, because a reverse tunnel left idle for
    minutes must stay one flow with its handshake; closed TCP connections (RST, or FIN both ways) end 10 s after
    their last packet (Zeek's tcp_close_delay is 5 s); other protocols 60 s (Zeek udp/icmp inactivity); active
    timeout 3600 s. Payload keeping of 4 packets / 2 KiB per direction holds an SSH banner with its KEXINIT,
    a TLS ClientHello or the first Stratum messages.
    """

    capacity: int = 1 << 18
    payload_slots: int = 1 << 15
    keep_packets: int = 4
    keep_bytes: int = 2048
    sequence_length: int = 64
    tcp_idle_s: float = 900.0
    other_idle_s: float = 60.0
    active_s: float = 3600.0
    closed_idle_s: float = 10.0

    def validate(self) -> None:
        """Raise ValueError naming the setting when a value is out of range."""
        for name in ("capacity", "payload_slots", "keep_packets", "keep_bytes", "sequence_length"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
                raise ValueError(f"{name} must be an integer, got {value!r}")
        for name in ("tcp_idle_s", "other_idle_s", "active_s", "closed_idle_s"):
            # NaN and infinity would pass the range checks below and then fail (or overflow int64) as nanoseconds
            if not math.isfinite(getattr(self, name)) or getattr(self, name) > MAX_TIMEOUT_S:
                raise ValueError(f"{name} must be a finite number of seconds up to {MAX_TIMEOUT_S:g}, "
                                 f"got {getattr(self, name)!r}")
        if not 1 <= self.capacity <= 1 << 28:
            raise ValueError(f"flow capacity must be 1..{1 << 28}, got {self.capacity}")
        if not 0 <= self.payload_slots <= self.capacity:
            raise ValueError(f"payload slots must be 0..capacity ({self.capacity}), got {self.payload_slots}")
        if not 1 <= self.keep_packets <= 255:
            raise ValueError(f"kept packets per direction must be 1..255, got {self.keep_packets}")
        if not 16 <= self.keep_bytes <= 65536:
            raise ValueError(f"kept bytes per direction must be 16..65536, got {self.keep_bytes}")
        if not 0 <= self.sequence_length <= 65535:
            raise ValueError(f"sequence length must be 0..65535, got {self.sequence_length}")
        for name in ("tcp_idle_s", "other_idle_s", "active_s", "closed_idle_s"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must not be negative")
        if self.tcp_idle_s == 0 or self.other_idle_s == 0 or self.closed_idle_s == 0:
            raise ValueError("idle timeouts must be positive")


@dataclass(frozen=True)
class Conversation:
    """A flow's conversation shape (see flows/conversation.py); index 0 = originator, 1 = responder.

    echo_pairs[d, b]: packets of size 4b..4b+3 sent by side d and answered by the same size from the other side.
    """

    echo_pairs: np.ndarray
    bursts: int
    bursts_led: tuple[int, int]
    nested_handshakes: tuple[int, int]
    answered: tuple[int, int]  # bursts whose leader got a bulk answer (a request and its response), by leader
    pingpongs: tuple[int, int]
    pingpong_interval_mean: tuple[float, float]
    pingpong_interval_sd: tuple[float, float]

    def echoes(self, leader: int, size: int) -> int:
        """Echo pairs of exactly this size class led by `leader`."""
        return int(self.echo_pairs[leader, size // 4]) if 0 <= size < conversation.ECHO_MAX_SIZE else 0


@dataclass(frozen=True)
class FlowBatch:
    """Finished (or snapshot) flow records and read access to the payload each one kept.

    `records` is a FLOW array; `table` is the owning table, valid until `FlowTable.release(batch)`. A snapshot is
    not `releasable`: its records name the payload slots of flows that are still live, which stay the table's.
    """

    records: np.ndarray
    table: "FlowTable"
    releasable: bool = True

    def payload_prefix(self, n: int) -> np.ndarray:
        """The first n kept payload bytes of every record, both directions: uint8 [rows, 2, n], zeros where none."""
        return self.table.payload_prefix(self.records["slot"], n)

    def kept_payload(self, row: int, direction: int) -> list[bytes]:
        """The kept payload pieces of one direction (0 orig, 1 resp) of records[row], one bytes per packet."""
        return self.table.kept_payload(int(self.records[row]["slot"]), direction)

    def kept_stream(self, row: int, direction: int) -> bytes:
        """The kept payload of one direction as one byte string (packets concatenated)."""
        return self.table.kept_stream(int(self.records[row]["slot"]), direction)

    def conversation(self, row: int) -> "Conversation | None":
        """The conversation shape of records[row] over its whole life, or None when it kept no payload slot."""
        return self.table.conversation(int(self.records[row]["slot"]))

    def early_sequence(self, row: int) -> tuple[np.ndarray, np.ndarray]:
        """(signed payload sizes: + orig / - resp, microseconds since first_seen) of the early payload packets."""
        rec = self.records[row]
        return self.table.early_sequence(int(rec["slot"]), int(rec["seq_count"]))


def burst_bytes(recs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(mean, standard deviation) of the payload bytes per burst of FLOW records, the still-open last burst included
    (the kernel folds a burst into its Welford state only when the next one starts). float64 arrays; 0 without
    bursts, sd 0 with one burst."""
    n = recs["burst_count"].astype(np.float64)
    closed = np.maximum(n - 1, 0)
    mean0 = recs["burst_bytes_mean"].astype(np.float64)
    m2 = recs["burst_bytes_m2"].astype(np.float64)
    x = recs["burst_open_bytes"].astype(np.float64)
    has = n > 0
    delta = x - mean0
    mean = np.where(has, mean0 + delta / np.maximum(n, 1), 0.0)
    m2 = np.where(has, m2 + delta * (x - mean), 0.0)
    sd = np.sqrt(np.maximum(m2, 0.0) / np.maximum(closed, 1)) * (closed > 0)
    return mean, sd


class FlowTable:
    """Bidirectional flow aggregation with bounded memory.

    Args:
        settings: FlowSettings (validated here).
        out_size: records one hand-out can hold (16384: large enough to keep the detectors' numpy calls big; the
            buffer is part of the table's fixed memory, ~1/16 of a record per flow slot at the default capacity).
    """

    def __init__(self, settings: FlowSettings = FlowSettings(), out_size: int = 1 << 14):
        settings.validate()
        self.settings = settings
        cap = settings.capacity
        index_size = 1 << max(4, int(2 * cap - 1).bit_length())  # load factor <= 0.5
        slots = settings.payload_slots
        params = np.zeros(kernels.PARAMS_SIZE, np.int64)
        params[kernels.P_TCP_IDLE_NS] = int(settings.tcp_idle_s * 1e9)
        params[kernels.P_OTHER_IDLE_NS] = int(settings.other_idle_s * 1e9)
        params[kernels.P_ACTIVE_NS] = int(settings.active_s * 1e9)
        params[kernels.P_CLOSED_IDLE_NS] = int(settings.closed_idle_s * 1e9)
        meta = np.zeros(kernels.META_SIZE, np.int64)
        meta[kernels.M_SWEEP_POS] = meta[kernels.M_EVICT_POS] = -1
        meta[kernels.M_FREE_TOP] = cap
        meta[kernels.M_SLOT_FREE_TOP] = slots
        self.t = kernels.TableArrays(
            records=np.zeros(cap, FLOW_DTYPE),
            used=np.zeros(cap, np.uint8),
            seen=np.zeros(cap, np.int64),
            two_way=np.zeros(cap, np.uint8),
            index=np.full(index_size, -1, np.int32),
            free=np.arange(cap - 1, -1, -1, dtype=np.int32),
            meta=meta,
            params=params,
            slot_free=np.arange(slots - 1, -1, -1, dtype=np.int32),
            keep_data=np.zeros((slots, 2, settings.keep_bytes), np.uint8),
            keep_len=np.zeros((slots, 2, settings.keep_packets), np.uint32),
            keep_cap=np.zeros((slots, 2, settings.keep_packets), np.uint16),
            keep_count=np.zeros((slots, 2), np.uint8),
            keep_fill=np.zeros((slots, 2), np.uint32),
            seq_size=np.zeros((slots, settings.sequence_length), np.int32),
            seq_dt_us=np.zeros((slots, settings.sequence_length), np.uint32),
            conv_i=np.zeros((slots, conversation.N_CONV_I), np.int64),
            conv_f=np.zeros((slots, conversation.N_CONV_F), np.float64),
            echo_pairs=np.zeros((slots, 2, conversation.ECHO_BUCKETS), np.uint16),
        )
        self._out = np.zeros(max(out_size, 2), FLOW_DTYPE)

    # ---- counters
    @property
    def live(self) -> int:
        return int(self.t.meta[kernels.M_LIVE])

    @property
    def evictions(self) -> int:
        return int(self.t.meta[kernels.M_EVICTIONS])

    @property
    def slot_denied(self) -> int:
        """Flows that wanted a payload slot and never got one (a one-way flow refused by the slot reserve counts when
        it ends without a slot; see kernels._keep_payload)."""
        return int(self.t.meta[kernels.M_SLOT_DENIED])

    @property
    def skipped_packets(self) -> int:
        return int(self.t.meta[kernels.M_SKIPPED])

    @property
    def created(self) -> int:
        return int(self.t.meta[kernels.M_CREATED])

    def memory_bytes(self) -> int:
        """Bytes held by the table's arrays (fixed at construction)."""
        return sum(a.nbytes for a in self.t) + self._out.nbytes

    # ---- aggregation
    def update(self, packets: np.ndarray, buf: np.ndarray, hold: bool = False) -> Iterator[FlowBatch]:
        """Aggregate a PACKET array whose payload offsets point into `buf`; yield batches of finished flows.

        Each yielded batch must be consumed (and released, or it is released when the next one is requested)
        before iteration continues; with `hold`, batches keep their payload slots until `release(batch)` is called
        (from the thread that updates the table).
        """
        if packets.dtype != PACKET_DTYPE:
            raise TypeError(f"packets must have PACKET_DTYPE, got {packets.dtype}")
        if buf.dtype != np.uint8 or buf.ndim != 1:
            raise TypeError("buf must be a 1-D uint8 array")
        start = 0
        while start < len(packets):
            start, n_out = kernels.update_table(self.t, buf, packets, start, self._out)
            if n_out:
                yield from self._hand_out(n_out, hold)

    def expire(self, now_ns: int, hold: bool = False) -> Iterator[FlowBatch]:
        """Emit flows idle past their timeout at `now_ns` (`hold`: as for update)."""
        finished = False
        while not finished:
            n_out, finished = kernels.expire_idle(self.t, np.int64(now_ns), self._out)
            if n_out:
                yield from self._hand_out(n_out, hold)

    def flush(self, reason: EndReason = EndReason.END_OF_INPUT, hold: bool = False) -> Iterator[FlowBatch]:
        """Emit every live flow with the given end reason, leaving the table empty (`hold`: as for update)."""
        while True:
            n_out = kernels.flush_table(self.t, int(reason), self._out)
            if not n_out:
                return
            yield from self._hand_out(n_out, hold)

    def snapshot(self, since_ns: int | None = None, where: np.ndarray | None = None) -> FlowBatch:
        """The live flows as they are now (copies; their payload slots stay owned by the table); with `since_ns`,
        only those that saw a packet at or after it (live mode re-judges only what changed); with `where`, a bool
        mask over the live flows in `live_columns` order, only those.

        The payload it reads is that of the live flows: valid until the table is next updated, expired or flushed.
        Releasing it does nothing."""
        live = self.t.used.astype(bool)
        if where is not None:
            live[np.flatnonzero(live)[~where]] = False
        if since_ns is not None:
            live &= self.t.records["last_seen_ns"] >= since_ns
        rows = self.t.records[live]  # boolean indexing copies
        rows["end_reason"] = int(EndReason.ACTIVE)
        rows["flow_flags"] &= 0xFF ^ kernels.F_SLOT_WAITING  # internal: a live flow may still get its slot
        return FlowBatch(rows, self, releasable=False)

    def live_columns(self, *names: str) -> dict[str, np.ndarray]:
        """Some fields of every live flow, as separate arrays (cheap whole-table views, e.g. per-sandbox counts)."""
        live = self.t.used.astype(bool)
        return {name: self.t.records[name][live] for name in names}

    def _hand_out(self, n_out: int, hold: bool = False) -> Iterator[FlowBatch]:
        batch = FlowBatch(self._out[:n_out].copy(), self)
        if hold:
            yield batch
            return
        try:
            yield batch
        finally:
            self.release(batch)

    def release(self, batch: FlowBatch) -> None:
        """Return the payload slots of emitted records to the pool (idempotent per batch; a snapshot is ignored:
        its slots belong to live flows)."""
        if not batch.releasable:
            return
        slots = batch.records["slot"]
        if (slots >= 0).any():
            kernels.release_slots(self.t, slots.astype(np.int32))
            batch.records["slot"] = -1

    # ---- payload access
    def payload_prefix(self, slots: np.ndarray, n: int) -> np.ndarray:
        n = min(n, self.settings.keep_bytes)
        out = np.zeros((len(slots), 2, n), np.uint8)
        has = slots >= 0
        if has.any():
            out[has] = self.t.keep_data[slots[has], :, :n]
            fill = self.t.keep_fill[slots[has]]  # bytes kept per direction: mask what lies past them
            out[has] &= (np.arange(n)[None, None, :] < fill[:, :, None]).astype(np.uint8) * 255
        return out

    def kept_rows(self, slots: np.ndarray, direction: int, width: int) -> tuple[np.ndarray, np.ndarray]:
        """(uint8 [len(slots), w] kept bytes of one direction, bytes kept per slot capped at w), w = min(width,
        keep_bytes); a negative slot reads as empty. Bytes past the fill are not meaningful."""
        width = min(width, self.settings.keep_bytes)
        slots = np.asarray(slots)
        has = slots >= 0
        if has.all():
            return (self.t.keep_data[slots, direction, :width],
                    np.minimum(self.t.keep_fill[slots, direction].astype(np.int64), width))
        data = np.zeros((len(slots), width), np.uint8)
        fill = np.zeros(len(slots), np.int64)
        data[has] = self.t.keep_data[slots[has], direction, :width]
        fill[has] = np.minimum(self.t.keep_fill[slots[has], direction].astype(np.int64), width)
        return data, fill

    def sequence_prefix(self, slots: np.ndarray, k: int) -> np.ndarray:
        """int32 [len(slots), k]: the first k early-sequence sizes of each slot (zeros for a negative slot or past
        the sequence length; the caller masks entries past each record's seq_count)."""
        out = np.zeros((len(slots), k), np.int32)
        k = min(k, self.t.seq_size.shape[1])
        has = slots >= 0
        out[has, :k] = self.t.seq_size[slots[has], :k]
        return out

    def kept_arrays(self):
        """The arrays behind kept payload, for kernels that read many slots at once (payload/dns_table.py)."""
        t = self.t
        return t.keep_data, t.keep_cap, t.keep_len, t.keep_count, t.keep_fill, t.seq_size, t.seq_dt_us

    def kept_payload(self, slot: int, direction: int) -> list[bytes]:
        if slot < 0:
            return []
        t = self.t
        count = int(t.keep_count[slot, direction])
        pieces, at = [], 0
        for k in range(count):
            n = int(t.keep_cap[slot, direction, k])
            pieces.append(t.keep_data[slot, direction, at:at + n].tobytes())
            at += n
        return pieces

    def kept_stream(self, slot: int, direction: int) -> bytes:
        if slot < 0:
            return b""
        return self.t.keep_data[slot, direction, :int(self.t.keep_fill[slot, direction])].tobytes()

    def kept_lengths(self, slot: int, direction: int) -> np.ndarray:
        """L4 payload length of each kept packet of one direction (what the wire carried, not what was kept)."""
        if slot < 0:
            return np.zeros(0, np.uint32)
        return self.t.keep_len[slot, direction, :int(self.t.keep_count[slot, direction])].copy()

    def conversation(self, slot: int) -> "Conversation | None":
        if slot < 0:
            return None
        ci, cf = self.t.conv_i[slot], self.t.conv_f[slot]
        c = conversation
        pp = (int(ci[c.CI_PINGPONG0]), int(ci[c.CI_PINGPONG1]))
        sd = tuple(float(np.sqrt(cf[c.CF_PP_M2_0 + 2 * d] / (pp[d] - 1))) if pp[d] > 2 else 0.0 for d in (0, 1))
        return Conversation(
            echo_pairs=self.t.echo_pairs[slot].astype(np.int64),
            bursts=int(ci[c.CI_BURSTS]),
            bursts_led=(int(ci[c.CI_LED0]), int(ci[c.CI_LED1])),
            nested_handshakes=(int(ci[c.CI_NESTED0]), int(ci[c.CI_NESTED1])),
            answered=(int(ci[c.CI_ANSWERED0]), int(ci[c.CI_ANSWERED1])),
            pingpongs=pp,
            pingpong_interval_mean=(float(cf[c.CF_PP_MEAN0]), float(cf[c.CF_PP_MEAN1])),
            pingpong_interval_sd=sd,
        )

    def early_sequence(self, slot: int, count: int) -> tuple[np.ndarray, np.ndarray]:
        if slot < 0:
            return np.zeros(0, np.int32), np.zeros(0, np.uint32)
        return self.t.seq_size[slot, :count].copy(), self.t.seq_dt_us[slot, :count].copy()
