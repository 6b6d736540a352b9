#!/usr/bin/env python3
"""Flood benchmark: does a real reverse SSH tunnel survive millions of distinct flows around it?

    python benchmarks/bench_flood.py [--flows N] [--span S] [--seed S] [--capacity C ...] [--keep]

Writes benchmarks/data/flood.pcap: N flood packets, each its own flow (a SYN flood from spoofed 10.0.0.0/8 sources
with random ports, UDP noise with 18-byte payloads, ICMP echo requests with random identifiers), spread evenly over
S seconds, and the 265 packets of captures/ssh-reverse-shell.pcap (`ssh -N -R` on 443, a shell typed from outside)
spliced in with their timestamps shifted to the middle of the flood, in their original order. Every flood frame is
60 bytes (Ethernet's minimum) so the flood is built as one numpy byte matrix, not packet by packet.

Then `egressguard analyze --format jsonl --rules captures/rules.toml` runs on it in a subprocess for each capacity
(default: the CLI default 262144 and 65536) and reports flows, wall time, peak RSS, evictions, payload slots
exhausted, and whether the reverse_ssh_tunnel finding is still there (and what its flow record says).
Results go to benchmarks/data/flood_last_run.json. The run fails (exit 1) when the tunnel is lost at any capacity.

What keeps the tunnel (flows/kernels.py): one-way flows, which are the flood here, go first when the table evicts and
may not take the last quarter of the payload slots; before that rule the tunnel's banner found no free slot at the
default capacity (tunnel lost) and its pauses got it evicted at 65536 (8 fragments). tests/test_flood.py runs the
same flood at 1/30 of the size through a 4096-flow table.
"""
from __future__ import annotations

import argparse
import json
import struct
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
DATA = HERE / "data"
sys.path.insert(0, str(HERE))
from bench_analyze import child_env, eg, run_child  # noqa: E402  (subprocess runner measuring the child's RSS)

TUNNEL = REPO / "captures" / "ssh-reverse-shell.pcap"
RULES = REPO / "captures" / "rules.toml"
FRAME = 60  # bytes per flood frame: Ethernet minimum, so SYN (54 B) is padded and UDP/ICMP carry 18 B
RECORD = 16 + FRAME
# Lab "internet" addresses (RFC 2544 benchmarking range, allowed by captures/rules.toml): 16 flood targets.
TARGETS = np.array([0xC6120000 + 0x100 + i for i in range(16)], np.uint32)  # 198.18.1.0 - 198.18.1.15
SPOOF_BASE, SPOOF_SIZE = 0x0A000000, 1 << 24  # 10.0.0.0/8
KIND_SHARE = (0.8, 0.15, 0.05)  # SYN, UDP, ICMP


def _ip_checksum(headers: np.ndarray) -> np.ndarray:
    """RFC 791 header checksums of many 20-byte IPv4 headers (uint8 [n, 20], checksum field zero)."""
    words = headers.reshape(len(headers), 10, 2).astype(np.uint32)
    total = (words[:, :, 0] << 8 | words[:, :, 1]).sum(axis=1)
    while (total >> 16).any():
        total = (total & 0xFFFF) + (total >> 16)
    return (~total & 0xFFFF).astype(np.uint16)


def flood_records(n: int, start_ns: int, span_ns: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(records uint8 [n, RECORD], timestamps int64 [n]): pcap record headers + 60-byte frames, in time order."""
    rng = np.random.default_rng(seed)
    ts = start_ns + (np.arange(n, dtype=np.int64) * span_ns) // max(n, 1)
    kind = rng.choice(3, size=n, p=KIND_SHARE).astype(np.uint8)
    rec = np.zeros((n, RECORD), np.uint8)
    hdr = rec[:, :16].view("<u4")  # ts_sec, ts_usec, caplen, wirelen
    hdr[:, 0] = ts // 1_000_000_000
    hdr[:, 1] = (ts % 1_000_000_000) // 1000
    hdr[:, 2] = FRAME
    hdr[:, 3] = FRAME
    eth = rec[:, 16:30]
    eth[:, 0:6] = (0x02, 0, 0, 0, 0, 0x02)
    eth[:, 6:12] = (0x02, 0, 0, 0, 0, 0x01)
    eth[:, 12:14] = (0x08, 0x00)
    ip = rec[:, 30:50]
    ip[:, 0] = 0x45
    total_len = np.where(kind == 0, 40, 46).astype(">u2")
    ip[:, 2:4] = total_len.view(np.uint8).reshape(n, 2)
    ip[:, 4:6] = rng.integers(0, 1 << 16, n, dtype=np.uint16).astype(">u2").view(np.uint8).reshape(n, 2)
    ip[:, 8] = 64
    ip[:, 9] = np.choose(kind, [6, 17, 1])
    src = (SPOOF_BASE + rng.integers(1, SPOOF_SIZE - 1, n, dtype=np.uint32)).astype(">u4")
    dst = TARGETS[rng.integers(0, len(TARGETS), n)].astype(">u4")
    ip[:, 12:16] = src.view(np.uint8).reshape(n, 4)
    ip[:, 16:20] = dst.view(np.uint8).reshape(n, 4)
    ip[:, 10:12] = _ip_checksum(ip).astype(">u2").view(np.uint8).reshape(n, 2)
    l4 = rec[:, 50:]
    sport = rng.integers(1024, 65536, n, dtype=np.uint32).astype(np.uint16)
    dport = rng.integers(1, 65536, n, dtype=np.uint32).astype(np.uint16)
    ports = np.stack([sport, dport], axis=1).astype(">u2").view(np.uint8).reshape(n, 4)
    syn, udp, icmp = kind == 0, kind == 1, kind == 2
    l4[syn, 0:4] = ports[syn]
    l4[syn, 4:8] = rng.integers(0, 1 << 32, int(syn.sum()), dtype=np.uint64).astype(">u4").view(np.uint8).reshape(-1, 4)
    l4[syn, 12] = 0x50  # data offset 5 words
    l4[syn, 13] = 0x02  # SYN
    l4[syn, 14:16] = (0xFA, 0xF0)  # window 64240
    l4[udp, 0:4] = ports[udp]
    l4[udp, 4:6] = (0, 26)  # UDP length 8 + 18
    l4[udp, 8:26] = rng.integers(0, 256, (int(udp.sum()), 18), dtype=np.uint8)
    l4[icmp, 0] = 8  # echo request, identifier and sequence random: each its own flow
    l4[icmp, 4:8] = ports[icmp]
    l4[icmp, 8:26] = 0x61
    return rec, ts


def tunnel_records(shift_to_ns: int) -> tuple[list[bytes], np.ndarray]:
    """The reverse-shell capture's records (headers rewritten with shifted times) and their new timestamps."""
    raw = TUNNEL.read_bytes()
    assert raw[:4] == b"\xd4\xc3\xb2\xa1", "expected a little-endian microsecond pcap"
    out, stamps, pos, first = [], [], 24, None
    while pos + 16 <= len(raw):
        sec, usec, caplen, wirelen = struct.unpack_from("<IIII", raw, pos)
        t = sec * 1_000_000_000 + usec * 1000
        first = t if first is None else first
        new = shift_to_ns + (t - first)
        out.append(struct.pack("<IIII", new // 1_000_000_000, (new % 1_000_000_000) // 1000, caplen, wirelen)
                   + raw[pos + 16:pos + 16 + caplen])
        stamps.append(new)
        pos += 16 + caplen
    return out, np.array(stamps, np.int64)


def write_flood(path: Path, n: int, span_s: float, seed: int) -> dict:
    """Write the flood capture; returns what was written."""
    t0 = time.perf_counter()
    start_ns = 1_790_000_000 * 1_000_000_000
    span_ns = int(span_s * 1e9)
    rec, ts = flood_records(n, start_ns, span_ns, seed)
    tunnel, tunnel_ts = tunnel_records(start_ns + span_ns // 2 - 10 * 1_000_000_000)
    at = np.searchsorted(ts, tunnel_ts, side="right")
    with open(path, "wb") as fh:
        fh.write(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 262144, 1))
        prev = 0
        for i, record in zip(at.tolist(), tunnel):
            fh.write(rec[prev:i].tobytes())
            fh.write(record)
            prev = i
        fh.write(rec[prev:].tobytes())
    return {"flood_packets": n, "tunnel_packets": len(tunnel), "span_s": span_s, "bytes": path.stat().st_size,
            "generate_s": round(time.perf_counter() - t0, 2),
            "tunnel_span_s": round((int(tunnel_ts[-1]) - int(tunnel_ts[0])) / 1e9, 2)}


def analyze(path: Path, capacity: int, timeout: float) -> dict:
    """`egressguard analyze --format jsonl` at one capacity: summary figures and the tunnel finding."""
    out_path = DATA / f"flood_{capacity}.jsonl"
    child = run_child(eg("analyze", "--format", "jsonl", "--capacity", str(capacity), "--rules", str(RULES),
                         str(path)), child_env(REPO / ".pytest_cache" / "numba-bench"), stdout=out_path,
                      timeout=timeout, stderr_path=DATA / "flood_stderr.txt")
    summary, tunnels, kinds = None, [], {}
    with open(out_path) as fh:
        for line in fh:
            rec = json.loads(line)
            if rec["type"] == "summary":
                summary = rec
            elif rec["type"] == "finding":
                kinds[rec["kind"]] = kinds.get(rec["kind"], 0) + 1
                if rec["kind"] == "reverse_ssh_tunnel":
                    tunnels.append({k: rec.get(k) for k in ("severity", "score", "src_ip", "dst_port", "first_seen",
                                                            "last_seen")} | {"evidence": rec["evidence"][:3]})
    return {"capacity": capacity, "rc": child["rc"], "crashed": child["crashed"], "wall_s": round(child["wall_s"], 1),
            "peak_rss_mib": round(child["peak_rss_bytes"] / 2**20, 1),
            "flows": summary and summary["flows"], "packets": summary and summary["packets"],
            "evictions": summary and summary["evictions"],
            "payload_slots_exhausted": summary and summary["payload_slots_exhausted"],
            "findings": kinds, "reverse_ssh_tunnel": tunnels, "stderr_tail": child["stderr_tail"][-500:]}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--flows", type=int, default=3_000_000, help="flood packets, each its own flow")
    ap.add_argument("--span", type=float, default=30.0, help="seconds of capture time the flood covers")
    ap.add_argument("--seed", type=int, default=5)
    ap.add_argument("--capacity", type=int, action="append", help="flow table capacity (repeatable)")
    ap.add_argument("--timeout", type=float, default=1800.0)
    ap.add_argument("--keep", action="store_true", help="keep an existing flood.pcap of the same parameters")
    args = ap.parse_args(argv)
    DATA.mkdir(exist_ok=True)
    path = DATA / "flood.pcap"
    meta_path = DATA / "flood.pcap.json"
    wanted = {"flows": args.flows, "span": args.span, "seed": args.seed}
    if args.keep and path.exists() and meta_path.exists() and json.loads(meta_path.read_text())["args"] == wanted:
        written = json.loads(meta_path.read_text())["written"]
    else:
        written = write_flood(path, args.flows, args.span, args.seed)
        meta_path.write_text(json.dumps({"args": wanted, "written": written}))
    print(f"capture: {written}")
    runs = []
    for capacity in args.capacity or [1 << 18, 1 << 16]:
        res = analyze(path, capacity, args.timeout)
        runs.append(res)
        found = "FOUND" if res["reverse_ssh_tunnel"] else "LOST"
        print(f"capacity {capacity:>8}: {res['flows']} flows, {res['wall_s']} s, peak RSS {res['peak_rss_mib']} MiB, "
              f"evictions {res['evictions']}, payload slots exhausted {res['payload_slots_exhausted']}, "
              f"reverse_ssh_tunnel {found}, findings {res['findings']}, rc {res['rc']}")
    (DATA / "flood_last_run.json").write_text(json.dumps({"capture": written, "runs": runs}, indent=1))
    return 0 if all(r["reverse_ssh_tunnel"] and not r["crashed"] for r in runs) else 1


if __name__ == "__main__":
    sys.exit(main())
