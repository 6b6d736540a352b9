"""FlowView: one batch of flow records as every detector sees it.

It gives the records, the bytes each flow kept per direction, the early packet sizes and the conversation shape,
and computes, at most once per batch and only when a detector first asks, what several detectors need: the
application tag of every row (payload/signatures.py), the TLS server names and HTTP hosts, and the DNS messages
(payload/dns_table.py, one numba pass). Detectors never touch the flow table itself.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np

from egressguard.flows.table import Conversation, FlowBatch, FlowTable
from egressguard.payload.carriers import Carrier, candidates, peel
from egressguard.payload.dns_table import DnsTable, decode_dns
from egressguard.payload.http import request_hosts
from egressguard.payload.ja4 import ja4 as hello_ja4
from egressguard.payload.signatures import SIGNATURE_BYTES, app_tags
from egressguard.payload.tls import find_sni, parse_client_hello, sni_text
from egressguard.schema import DNS_ANSWER_DTYPE, DNS_MESSAGE_DTYPE, FLOW_DTYPE, AppTag

ORIG, RESP = 0, 1
SNI_FIRST_LOOK = 640  # bytes of each ClientHello looked at first: most name their server early
SNI_WIDTH = 2048  # a ClientHello with a post-quantum key share is ~1.8 KB; the flow table keeps 2 KiB by default
HTTP_HEAD = 1024  # bytes of a request searched for its Host header
CHUNK = 2048  # rows per numpy pass over kept bytes (keeps temporary arrays at a few MB)
SOURCE_SNI, SOURCE_HOST = 1, 2
SOURCE_NAMES = {SOURCE_SNI: "tls_sni", SOURCE_HOST: "http_host"}
EMPTY_DNS = DnsTable(np.zeros(0, DNS_MESSAGE_DTYPE), np.zeros(0, DNS_ANSWER_DTYPE), np.zeros(0, np.uint8))


@dataclass(frozen=True)
class BatchDns:
    """The DNS messages of a batch (payload/dns_table.py) and the view rows of the flows that carried them:
    message i belongs to view row `rows[table.messages["row"][i]]`."""

    rows: np.ndarray  # int64, the DNS/mDNS rows of the view that kept payload
    table: DnsTable

    def flow_rows(self) -> np.ndarray:
        """The view row of every message."""
        return self.rows[self.table.messages["row"]]


@dataclass(frozen=True)
class ServerNames:
    """The server a flow's originator names: TLS SNI (ClientHello) or HTTP Host (or CONNECT target).

    `name[row]` is None where the flow names none; `source[row]` is SOURCE_SNI, SOURCE_HOST or 0."""

    name: np.ndarray  # object [rows]
    source: np.ndarray  # uint8 [rows]

    def get(self, row: int) -> tuple[str, str] | None:
        """(name, "tls_sni" | "http_host") of one row, or None."""
        name = self.name[row]
        return None if name is None else (name, SOURCE_NAMES[int(self.source[row])])


@dataclass(frozen=True)
class CarrierFlow:
    """One flow's carrier chain (payload/carriers.py) and its inner kept bytes per direction (peeled, de-framed)."""

    carrier: Carrier
    inner: tuple[bytes, bytes]  # (originator, responder)

    @property
    def chain(self) -> tuple[str, ...]:
        return self.carrier.chain

    @property
    def target(self) -> tuple[str, int] | None:
        return self.carrier.target


@dataclass(frozen=True)
class BatchCarriers:
    """The rows of a batch that open with a carrier (HTTP CONNECT, SOCKS, WebSocket, PROXY protocol)."""

    rows: np.ndarray  # int64, sorted view rows that have a carrier
    flows: dict[int, CarrierFlow]  # view row -> its carrier and inner bytes

    def get(self, row: int) -> CarrierFlow | None:
        return self.flows.get(int(row))


class FlowView:
    """A batch of FLOW records with read access to what each flow kept.

    Args:
        records: FLOW records (finished flows, or a snapshot of open ones).
        table: the flow table whose payload slots the records name (None: no kept bytes, e.g. records read back).
        capture: the capture (or live source) the flows come from.
        open_flows: True for a snapshot of flows still open (live rounds).
    """

    def __init__(self, records: np.ndarray, table: FlowTable | None, capture: str, open_flows: bool = False):
        self.records = records
        self.capture = capture
        self.open_flows = open_flows
        self._table = table
        self._prefix: np.ndarray | None = None

    @classmethod
    def of_batch(cls, batch: FlowBatch, capture: str) -> "FlowView":
        return cls(batch.records, batch.table, capture, open_flows=not batch.releasable)

    @classmethod
    def empty(cls, capture: str) -> "FlowView":
        return cls(np.zeros(0, FLOW_DTYPE), None, capture)

    def __len__(self) -> int:
        return len(self.records)

    # ---- kept bytes
    def prefix(self, n: int) -> np.ndarray:
        """The first n kept bytes of every row, both directions: uint8 [rows, 2, n], zero past what was kept."""
        if self._prefix is None or self._prefix.shape[2] < n:
            self._prefix = self._payload_prefix(max(n, SIGNATURE_BYTES))
        return self._prefix[:, :, :n]

    def _payload_prefix(self, n: int) -> np.ndarray:
        if self._table is None:
            return np.zeros((len(self.records), 2, n), np.uint8)
        return self._table.payload_prefix(self.records["slot"], n)

    def kept(self, rows: np.ndarray, direction: int, width: int) -> tuple[np.ndarray, np.ndarray]:
        """(uint8 [len(rows), w] kept bytes of one direction, bytes kept per row capped at w), w = min(width, the
        table's kept bytes); bytes past the fill are not meaningful. Rows without a payload slot read as empty."""
        if self._table is None:
            return np.zeros((len(rows), min(width, 16)), np.uint8), np.zeros(len(rows), np.int64)
        return self._table.kept_rows(self.records["slot"][rows], direction, width)

    def kept_stream(self, row: int, direction: int) -> bytes:
        """The kept payload of one direction of one row as one byte string (packets concatenated)."""
        return b"" if self._table is None else self._table.kept_stream(int(self.records["slot"][row]), direction)

    def kept_payload(self, row: int, direction: int) -> list[bytes]:
        """The kept payload pieces of one direction of one row, one bytes per packet."""
        return [] if self._table is None else self._table.kept_payload(int(self.records["slot"][row]), direction)

    def kept_lengths(self, row: int, direction: int) -> np.ndarray:
        """Payload length on the wire of each kept packet of one direction of one row."""
        if self._table is None:
            return np.zeros(0, np.uint32)
        return self._table.kept_lengths(int(self.records["slot"][row]), direction)

    def first_sizes(self, rows: np.ndarray, k: int) -> np.ndarray:
        """int64 [len(rows), k]: the first k entries of each row's early payload sequence (+ originator, -
        responder), 0 past the row's sequence."""
        out = np.zeros((len(rows), k), np.int64)
        if self._table is None or not len(rows):
            return out
        out[:] = self._table.sequence_prefix(self.records["slot"][rows], k)
        out[np.arange(k)[None, :] >= self.records["seq_count"][rows][:, None]] = 0
        return out

    def early_sequence(self, row: int) -> tuple[np.ndarray, np.ndarray]:
        """(signed payload sizes: + orig / - resp, microseconds since first_seen) of the early payload packets."""
        if self._table is None:
            return np.zeros(0, np.int32), np.zeros(0, np.uint32)
        rec = self.records[row]
        return self._table.early_sequence(int(rec["slot"]), int(rec["seq_count"]))

    def conversation(self, row: int) -> Conversation | None:
        """The conversation shape of one row over its whole life, or None when it kept no payload slot."""
        return None if self._table is None else self._table.conversation(int(self.records["slot"][row]))

    # ---- computed once per batch, for every detector
    @cached_property
    def app(self) -> np.ndarray:
        """AppTag bits of every row (uint32), from the first kept bytes and the ports (one numba pass)."""
        recs = self.records
        if self._table is None:
            data, fills, slots = np.zeros((1, 2, 1), np.uint8), np.zeros((1, 2), np.uint32), np.full(len(recs), -1)
        else:
            data, _, _, _, fills, _, _ = self._table.kept_arrays()
            slots = recs["slot"]
        return app_tags(data, fills, slots, recs["proto"], recs["orig_port"], recs["resp_port"])

    def tagged(self, tags: AppTag) -> np.ndarray:
        """Rows carrying any of `tags` (bool mask)."""
        return (self.app & np.uint32(tags)) != 0

    @cached_property
    def dns(self) -> BatchDns:
        """Every DNS message the DNS and mDNS flows of the batch kept, decoded in one numba pass."""
        recs = self.records
        rows = np.flatnonzero(self.tagged(AppTag.DNS | AppTag.MDNS) & (recs["slot"] >= 0))
        if self._table is None or not len(rows):
            return BatchDns(rows, EMPTY_DNS)
        sub = recs[rows]
        return BatchDns(rows, decode_dns(self._table.kept_arrays(), sub["slot"], sub["proto"], sub["first_seen_ns"],
                                         sub["seq_count"]))

    @cached_property
    def server_names(self) -> ServerNames:
        """The TLS server name or HTTP Host each originator sent (SNI located in numpy, hosts read per request)."""
        n = len(self.records)
        names = np.full(n, None, object)
        source = np.zeros(n, np.uint8)
        has_slot = self.records["slot"] >= 0
        hello = np.flatnonzero(self.tagged(AppTag.TLS_CLIENT_HELLO) & has_slot)
        for lo in range(0, len(hello), CHUNK):
            self._find_sni(hello[lo:lo + CHUNK], names, source)
        http = np.flatnonzero(self.tagged(AppTag.HTTP_REQUEST) & has_slot)
        for lo in range(0, len(http), CHUNK):
            rows = http[lo:lo + CHUNK]
            for row, host in zip(rows.tolist(), request_hosts(*self.kept(rows, ORIG, HTTP_HEAD))):
                if host:
                    names[row], source[row] = host, SOURCE_HOST
        return ServerNames(names, source)

    @cached_property
    def carriers(self) -> BatchCarriers:
        """Carrier chains of the TCP rows whose originator opens like one (numpy prefilter, then the parser on those
        few): chain, inner target and the inner bytes per direction (payload/carriers.py)."""
        recs = self.records
        flows: dict[int, CarrierFlow] = {}
        if self._table is not None and len(recs):
            maybe = candidates(self.prefix(16)) & (recs["proto"] == 6) & (recs["slot"] >= 0)
            for row in np.flatnonzero(maybe).tolist():
                orig, resp = self.kept_stream(row, ORIG), self.kept_stream(row, RESP)
                carrier = peel(orig, resp)
                if carrier is not None:
                    flows[row] = CarrierFlow(carrier, carrier.inner(orig, resp))
        return BatchCarriers(np.array(sorted(flows), np.int64), flows)

    @cached_property
    def inner_app(self) -> np.ndarray:
        """AppTag bits (uint32) of what each row carries inside its carrier (SSH banner, Stratum JSON, TLS
        ClientHello, HTTP, ...); 0 for rows without a carrier. The same signature kernel as `app`."""
        out = np.zeros(len(self.records), np.uint32)
        car = self.carriers
        if not len(car.rows):
            return out
        width = SIGNATURE_BYTES
        data = np.zeros((len(car.rows), 2, width), np.uint8)
        fills = np.zeros((len(car.rows), 2), np.uint32)
        for i, row in enumerate(car.rows.tolist()):
            for d, inner in enumerate(car.flows[row].inner):
                head = inner[:width]
                data[i, d, :len(head)] = np.frombuffer(head, np.uint8)
                fills[i, d] = len(inner)
        sub = self.records[car.rows]
        out[car.rows] = app_tags(data, fills, np.arange(len(car.rows)), sub["proto"], sub["orig_port"],
                                 sub["resp_port"])
        return out

    def inner_tagged(self, tags: AppTag) -> np.ndarray:
        """Rows whose carrier carries any of `tags` inside (bool mask)."""
        return (self.inner_app & np.uint32(tags)) != 0

    def _find_sni(self, rows: np.ndarray, names: np.ndarray, source: np.ndarray) -> None:
        """Server names of ClientHello rows: a first narrow look, a wider one for hellos that name their server
        late, the Python parser for unusual layouts."""
        todo = rows
        for width in (SNI_FIRST_LOOK, SNI_WIDTH):
            if not len(todo):
                return
            data, fill = self.kept(todo, ORIG, width)
            offset, length, status = find_sni(data, fill)
            for i in np.flatnonzero(offset >= 0).tolist():
                names[todo[i]] = sni_text(data[i, offset[i]:offset[i] + length[i]].tobytes())
                source[todo[i]] = SOURCE_SNI
            for i in np.flatnonzero(status == 2).tolist():
                parsed = parse_client_hello(self.kept_stream(int(todo[i]), ORIG))
                if parsed is not None and parsed.sni:
                    names[todo[i]], source[todo[i]] = parsed.sni, SOURCE_SNI
            record_end = 5 + ((data[:, 3].astype(np.int64) << 8) | data[:, 4])
            todo = todo[(offset < 0) & (status == 1) & (fill >= data.shape[1]) & (record_end > data.shape[1])]

    @cached_property
    def ja4(self) -> dict[int, str]:
        """JA4 fingerprint (payload/ja4.py) of each row whose originator's kept bytes hold a whole ClientHello."""
        rows = np.flatnonzero(self.tagged(AppTag.TLS_CLIENT_HELLO) & (self.records["slot"] >= 0))
        found = {row: hello_ja4(self.kept_stream(row, ORIG)) for row in rows.tolist()}
        return {row: value for row, value in found.items() if value is not None}

    def ja4_of(self, row: int) -> str | None:
        """JA4 of one row, without fingerprinting the whole batch when the batch's were not asked for."""
        known = self.__dict__.get("ja4")
        return known.get(row) if known is not None else hello_ja4(self.kept_stream(row, ORIG))


__all__ = ["BatchCarriers", "BatchDns", "CarrierFlow", "FlowView", "ServerNames", "SOURCE_HOST", "SOURCE_SNI"]
