#!/usr/bin/env python3
"""DNS messages per second: the message table kernel (payload/dns_table.decode_dns, question names judged included)
against the per-message Python parse it replaced (dpkt; kept in tests/naive_dns.py as the oracle), on the same kept bytes.

    python benchmarks/bench_dns.py [--file benchmarks/data/bench.pcap] [--repeat 3] [--real-flows 60000]

Two workloads: the DNS flows (port 53/5353, TCP or UDP, with kept payload) of the benchmark capture, whose payload
bytes are filler (make_capture.py writes sizes, not DNS), and the DNS flows of the lab and public captures repeated
until there are --real-flows of them, for real messages (answers, compression, tunnel names). Flows come straight
from the flow table (no detectors). The kernel is timed best of --repeat per batch, the Python loop once; the numba
cache is warmed first. Prints messages/s of each (messages: kept pieces of at least a DNS header, each of which the
kernel turns into a row whatever it holds) and their ratio.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(REPO))

from egressguard.capture import CaptureFile  # noqa: E402
from egressguard.decode import Decoder  # noqa: E402
from egressguard.flows import FlowTable  # noqa: E402
sys.path.insert(0, str(REPO / "tests"))
from naive_dns import parse_message, tcp_messages  # noqa: E402  (the dpkt reader the DNS binding used before)
from egressguard.payload.dns_table import KeptArrays, decode_dns  # noqa: E402
from egressguard.payload.suffixes import public_suffix_rules  # noqa: E402

DNS_PORTS = (53, 5353)
REAL = [REPO / "captures" / "dns-lookups-benign.pcap", REPO / "captures" / "dns-tunnel-iodine.pcap",
        REPO / "captures" / "dns-tunnel-dns2tcp.pcap"] + \
    sorted((REPO.parent / "shared" / "captures" / "public" / "dmachard-datasets-malicious-dns").glob("*.pcap"))


def batches(path: Path):
    """Finished flow batches of a capture, straight from the flow table."""
    table, decoder = FlowTable(), Decoder()
    with CaptureFile(str(path)) as capture:
        for chunk in capture.chunks():
            yield from table.update(decoder.decode_batch(chunk.buf, chunk.frames), chunk.buf)
    yield from table.flush()


def dns_rows(recs: np.ndarray) -> np.ndarray:
    return np.flatnonzero(np.isin(recs["proto"], (6, 17)) & (recs["slot"] >= 0) &
                          (np.isin(recs["resp_port"], DNS_PORTS) | np.isin(recs["orig_port"], DNS_PORTS)))


def python_loop(batch, rows: np.ndarray) -> tuple[int, int, float]:
    """Today's reader: every kept message of both directions through parse_message, as the DNS binding reads them;
    (messages of at least a header offered, messages parsed, seconds)."""
    t0 = time.perf_counter()
    offered = parsed = 0
    for row in rows.tolist():
        udp = int(batch.records[row]["proto"]) == 17
        for d in (0, 1):
            pieces = batch.kept_payload(row, d) if udp else list(tcp_messages(batch.kept_stream(row, d)))
            offered += sum(len(p) >= 12 for p in pieces)
            parsed += sum(parse_message(p) is not None for p in pieces)
    return offered, parsed, time.perf_counter() - t0


def kernel(batch, rows: np.ndarray, repeat: int) -> tuple[int, float]:
    """The table kernel on the same rows: (messages decoded, best seconds)."""
    recs = batch.records[rows]
    keep = KeptArrays.of(batch.table.t)
    best, table = float("inf"), None
    for _ in range(repeat):
        t0 = time.perf_counter()
        table = decode_dns(keep, recs["slot"], recs["proto"], recs["first_seen_ns"], recs["seq_count"])
        best = min(best, time.perf_counter() - t0)
    return len(table.messages), best


def measure(paths: list[Path], repeat: int, tile: int = 1) -> dict:
    """Sums over every batch with DNS flows; with `tile`, each batch's DNS rows are decoded `tile` times over."""
    out = dict(flows=0, k_msgs=0, k_s=0.0, p_msgs=0, p_parsed=0, p_s=0.0)
    for path in paths:
        for batch in batches(path):
            rows = dns_rows(batch.records)
            if not len(rows):
                continue
            rows = np.tile(rows, tile)
            out["flows"] += len(rows)
            n, s = kernel(batch, rows, repeat)
            out["k_msgs"], out["k_s"] = out["k_msgs"] + n, out["k_s"] + s
            n, parsed, s = python_loop(batch, rows)
            out["p_msgs"], out["p_parsed"], out["p_s"] = out["p_msgs"] + n, out["p_parsed"] + parsed, out["p_s"] + s
    return out


def report(title: str, m: dict) -> None:
    k_rate, p_rate = m["k_msgs"] / max(m["k_s"], 1e-9), m["p_msgs"] / max(m["p_s"], 1e-9)
    print(f"{title}: {m['flows']} DNS flows")
    print(f"  kernel     {m['k_msgs']:>9} messages in {m['k_s']:8.3f} s  {k_rate:>12,.0f} messages/s")
    print(f"  parse loop {m['p_msgs']:>9} messages in {m['p_s']:8.3f} s  {p_rate:>12,.0f} messages/s "
          f"({m['p_parsed']} of them parsed by dpkt)")
    print(f"  ratio (kernel / parse_message loop, messages/s): {k_rate / max(p_rate, 1e-9):,.0f}x")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--file", type=Path, default=HERE / "data" / "bench.pcap")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--real-flows", type=int, default=60_000)
    args = ap.parse_args()
    public_suffix_rules()  # compiled once per process, not part of the per-batch cost
    real = [p for p in REAL if p.exists()]
    measure(real[:1], 1)  # warm the numba cache
    found = sum(len(dns_rows(b.records)) for p in real for b in batches(p))
    report(f"real messages ({len(real)} captures, each DNS flow repeated)",
           measure(real, args.repeat, max(1, args.real_flows // max(found, 1))))
    if args.file.exists():
        report(f"{args.file.name} (filler payload)", measure([args.file], args.repeat))
    else:
        print(f"{args.file} not found: run benchmarks/make_capture.py (or bench_analyze.py) first")


if __name__ == "__main__":
    main()
