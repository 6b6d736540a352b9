#!/usr/bin/env python3
"""Live-capture benchmark: how many packets/s LiveCapture + decode + flow table keep up with, on a veth pair.

    sudo python benchmarks/bench_live.py [--rates 100000,200000,300000,0] [--seconds 2] [--flows 4096]
                                         [--ring-mb 32] [--drain-packets 150000] [--no-ring]

Needs root and trafgen (Debian package netsniff-ng). Two network namespaces (their names carry the pid) joined by
a veth pair: the sender's s0 and the receiver's r0. The receiver is this script run with --receive inside its
namespace, and it runs the loop of the live engine (pipeline._analyze_one): LiveCapture(["r0"]) ->
Decoder.decode_batch -> FlowTable.update, with idle sweeps.

  a. Rate steps: for each rate the sender sends rate x seconds 60-byte UDP frames over --flows source ports
     (`trafgen --rate`, which paces with one sendto per packet; rate 0 = top speed through trafgen's TX ring). Per
     step: the rate trafgen achieved, frames received, ring drops (PACKET_STATISTICS) and the receiver's process
     CPU time per packet. On the veth path the kernel's own receive work (including the copy into our ring) runs
     on the sender's CPU, so the receiver's CPU is ours alone.
  b. Drain: the receiver stops reading, the sender fills the ring at top speed, then the receiver reads it all
     back as fast as it can: its packets/s is the rate the receiver sustains when the sender is not the limit.
Prints a table and writes benchmarks/data/live_last_run.json.
"""
from __future__ import annotations

import argparse
import json
import os
import select
import shutil
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
DATA = HERE / "data"

TRAFGEN_CONFIG = """{{
  eth(da=02:00:00:00:00:02, sa=02:00:00:00:00:01),
  ipv4(saddr=10.99.0.1, daddr=10.99.0.2, ttl=64),
  udp(sp=dinc(1024, {last_port}), dp=4433),
  fill(0x41, 18)
}}
"""


# ---------------------------------------------------------------- receiver (runs inside the receiver namespace)

def _warm_up(decoder, table) -> None:
    """Compile (or load) the decode and flow kernels (update, idle sweep, flush) before timing, on one UDP frame."""
    import numpy as np

    from egressguard.schema import FRAME_DTYPE, EndReason

    frame = bytes.fromhex("020000000002020000000001" "0800" "45000024000100004011" "0000" "0a630001" "0a630002"
                          "04004451001000000000000000000000")
    buf = np.frombuffer(frame, np.uint8).copy()
    frames = np.zeros(1, FRAME_DTYPE)
    frames[0] = (0, len(frame), len(frame), time.time_ns(), 1, 0)
    for _ in table.update(decoder.decode_batch(buf, frames), buf):
        pass
    for _ in table.expire(time.time_ns()):
        pass
    for _ in table.flush(EndReason.END_OF_INPUT):
        pass


def receive(iface: str, ring_mb: int, use_ring: bool = True) -> None:
    """Capture, decode and track flows until told to quit; answer `stats`, `pause`/`resume` on standard input."""
    sys.path.insert(0, str(REPO))
    from egressguard.capture import LiveCapture
    from egressguard.decode import Decoder
    from egressguard.flows import FlowSettings, FlowTable

    decoder, table = Decoder(), FlowTable(FlowSettings())
    _warm_up(decoder, table)
    settings = FlowSettings()
    sweep_every = int(min(settings.tcp_idle_s, settings.other_idle_s, settings.closed_idle_s) * 1e9 / 2)
    last_sweep = time.time_ns()
    packets = chunks = 0
    drain = None  # (start time, start cpu, start packets, time of the last non-empty chunk) while draining
    with LiveCapture([iface], ring_bytes=ring_mb << 20, use_ring=use_ring) as live:
        print("ready", flush=True)
        for chunk in live.chunks(0.05):
            n = len(chunk.frames)
            if n:
                batch = decoder.decode_batch(chunk.buf, chunk.frames)
                for _ in table.update(batch, chunk.buf):
                    pass
                now = int(batch["ts_ns"].max())
                if now - last_sweep >= sweep_every:
                    last_sweep = now
                    for _ in table.expire(now):
                        pass
                packets += n
                chunks += 1
                if drain:
                    drain[3] = time.perf_counter()
            elif drain:
                t0, cpu0, p0, t_last = drain
                print(json.dumps({"packets": packets - p0, "seconds": t_last - t0,
                                  "cpu_s": time.process_time() - cpu0}), flush=True)
                drain = None
            if not select.select([sys.stdin], [], [], 0)[0]:
                continue
            command = sys.stdin.readline().strip()
            if command == "stats":
                (counters,) = live.interface_stats()
                print(json.dumps({"packets": packets, "chunks": chunks, "drops": counters.kernel_drops,
                                  "freeze_q": counters.freeze_q, "cpu_s": time.process_time(),
                                  "method": counters.method, "flows": table.created}), flush=True)
            elif command == "pause":
                print("paused", flush=True)
                sys.stdin.readline()  # block (the ring fills) until `resume`
                drain = [time.perf_counter(), time.process_time(), packets, time.perf_counter()]
            elif command in ("quit", ""):
                break


# ---------------------------------------------------------------- driver

def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True)


def _ask(proc: subprocess.Popen, command: str) -> dict | str:
    proc.stdin.write(command + "\n")
    proc.stdin.flush()
    line = proc.stdout.readline()
    if not line:
        raise SystemExit(f"receiver stopped: {proc.stderr.read()}")
    return json.loads(line) if line.startswith("{") else line.strip()


def _trafgen(ns: str, config: Path, packets: int, rate: int) -> float:
    """Send `packets` frames from s0 (at `rate` pps, or top speed for 0); return the seconds it took."""
    cmd = ["ip", "netns", "exec", ns, "trafgen", "--dev", "s0", "--conf", str(config), "-n", str(packets), "-P", "1",
           "-C", "-E", "1"]
    if rate:
        cmd += ["--rate", f"{rate}pps"]
    start = time.perf_counter()
    subprocess.run(cmd, check=True, capture_output=True, timeout=600)
    return time.perf_counter() - start


def run(args: argparse.Namespace) -> dict:
    tag = f"egcb{os.getpid()}"
    sender, receiver = f"{tag}s", f"{tag}r"
    config = Path(f"/tmp/{tag}.cfg")
    config.write_text(TRAFGEN_CONFIG.format(last_port=1024 + args.flows - 1))
    proc = None
    try:
        for ns in (sender, receiver):
            _ip("netns", "add", ns)
            subprocess.run(["ip", "netns", "exec", ns, "sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1",
                            "net.ipv6.conf.default.disable_ipv6=1"], capture_output=True)
        _ip("link", "add", "s0", "netns", sender, "type", "veth", "peer", "name", "r0", "netns", receiver)
        _ip("-n", sender, "link", "set", "s0", "up")
        _ip("-n", receiver, "link", "set", "r0", "up")
        env = dict(os.environ, PYTHONPATH=str(REPO))
        proc = subprocess.Popen(["ip", "netns", "exec", receiver, sys.executable, __file__, "--receive", "r0",
                                 "--ring-mb", str(args.ring_mb)] + (["--no-ring"] if args.no_ring else []), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, env=env)
        if proc.stdout.readline().strip() != "ready":
            raise SystemExit(f"receiver failed: {proc.stderr.read()}")
        steps = []
        for rate in args.rates:
            before = _ask(proc, "stats")
            sent = int((rate or 300_000) * args.seconds)
            seconds = _trafgen(sender, config, sent, rate)
            time.sleep(0.5)  # let the receiver read what is left in the ring
            after = _ask(proc, "stats")
            got = after["packets"] - before["packets"]
            steps.append({"offered_pps": rate or "top speed", "achieved_pps": round(sent / seconds), "sent": sent,
                          "received": got, "ring_drops": after["drops"] - before["drops"],
                          "cpu_us_per_packet": round((after["cpu_s"] - before["cpu_s"]) / max(got, 1) * 1e6, 3),
                          "method": after["method"]})
        assert _ask(proc, "pause") == "paused"
        _trafgen(sender, config, args.drain_packets, 0)
        drained = _ask(proc, "resume")
        stats = _ask(proc, "stats")
        drain = {"packets": drained["packets"], "pps": round(drained["packets"] / max(drained["seconds"], 1e-9)),
                 "cpu_us_per_packet": round(drained["cpu_s"] / max(drained["packets"], 1) * 1e6, 3),
                 "ring_drops_total": stats["drops"]}
        proc.stdin.write("quit\n")
        proc.stdin.flush()
        proc.wait(timeout=30)
    finally:
        if proc is not None and proc.poll() is None:
            proc.kill()
        for ns in (sender, receiver):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)
        config.unlink(missing_ok=True)
    clean = [s for s in steps if s["ring_drops"] == 0 and s["received"] >= s["sent"]]
    best = max(clean, key=lambda s: s["achieved_pps"], default=None)
    return {"steps": steps, "drain": drain, "best_clean_pps": best and best["achieved_pps"],
            "cpus": os.cpu_count(), "load_average": os.getloadavg()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rates", default="100000,200000,300000,0",
                        type=lambda s: [int(float(x)) for x in s.split(",")], help="packets/s per step; 0 = top speed")
    parser.add_argument("--seconds", type=float, default=2.0, help="length of each step")
    parser.add_argument("--flows", type=int, default=4096, help="distinct UDP source ports")
    parser.add_argument("--ring-mb", type=int, default=32, help="receive ring size")
    parser.add_argument("--drain-packets", type=int, default=150_000, help="frames put in the ring for the drain test")
    parser.add_argument("--no-ring", action="store_true", help="measure the recvmsg fallback instead of the ring")
    parser.add_argument("--receive", metavar="IFACE", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.receive:
        receive(args.receive, args.ring_mb, not args.no_ring)
        return 0
    if os.geteuid() != 0:
        print("bench_live needs root (it creates network namespaces)", file=sys.stderr)
        return 2
    if shutil.which("trafgen") is None:
        print("bench_live needs trafgen: apt-get install netsniff-ng", file=sys.stderr)
        return 2
    result = run(args)
    print(f"{'offered pps':>12} {'achieved':>10} {'sent':>9} {'received':>9} {'ring drops':>10} {'CPU us/pkt':>10}")
    for s in result["steps"]:
        print(f"{s['offered_pps']!s:>12} {s['achieved_pps']:>10} {s['sent']:>9} {s['received']:>9} "
              f"{s['ring_drops']:>10} {s['cpu_us_per_packet']:>10}")
    d = result["drain"]
    print(f"drain: {d['packets']} packets read back at {d['pps']} packets/s, {d['cpu_us_per_packet']} us CPU/packet")
    print(f"highest rate with zero drops: {result['best_clean_pps']} packets/s "
          f"(capture path: {result['steps'][0]['method'] if result['steps'] else '?'})")
    DATA.mkdir(exist_ok=True)
    (DATA / "live_last_run.json").write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
