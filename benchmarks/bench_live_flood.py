#!/usr/bin/env python3
"""Does the live dashboard stay responsive while the monitor digests a flood?

    python benchmarks/bench_live_flood.py [--capacity C] [--frames-per-s F] [--pace PPS] [--capture PCAP]

Replays benchmarks/data/flood.pcap (written by bench_flood.py: millions of spoofed one-packet flows with a real
`ssh -N -R` spliced in) through LiveMonitor -- the engine `egressguard watch` runs, with its snapshot judgements,
finding gate and per-sandbox book -- in a worker thread, as fast as it can (or paced at PPS packets/s, using the
capture's own clock), while the main thread renders the dashboard (render_dashboard into an in-memory console of
160x50) at F frames per second, as `watch` does. Reports packets/s through the monitor, dashboard frame render
times and the longest gap between frames (what an operator would feel as a freeze), evictions, and whether the
reverse_ssh_tunnel finding arrived. `--capture benchmarks/data/bench.pcap` (make_capture.py's ordinary mix) measures
the whole engine on everyday traffic instead. Results go to benchmarks/data/live_flood_last_run.json.
"""
from __future__ import annotations

import argparse
import io
import json
import resource
import sys
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(REPO))

from egressguard.capture.replay import ReplaySource  # noqa: E402
from egressguard.flows import FlowSettings  # noqa: E402
from egressguard.live import LiveMonitor, WatchSettings  # noqa: E402
from egressguard.pipeline import Settings, default_context  # noqa: E402
from egressguard.policy.rules import load_rules  # noqa: E402

FLOOD = HERE / "data" / "flood.pcap"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--capacity", type=int, default=1 << 18)
    ap.add_argument("--frames-per-s", type=float, default=2.0)
    ap.add_argument("--pace", type=float, default=None, help="packets/s to replay at (default: as fast as possible)")
    ap.add_argument("--capture", type=Path, default=FLOOD, help="capture to replay (default: the flood)")
    ap.add_argument("--judge-every", type=float, default=2.0,
                    help="seconds of capture time between judgements of open flows (watch: 2 s of wall time; a "
                         "replay faster than real time judges more often per packet unless this is raised)")
    args = ap.parse_args(argv)
    if not args.capture.exists():
        print(f"{args.capture} missing: run python benchmarks/bench_flood.py (or make_capture.py) first",
              file=sys.stderr)
        return 1
    from rich.console import Console

    from egressguard.report.dashboard import render_dashboard

    findings: list[dict] = []
    source = ReplaySource(str(args.capture), "br0", pace_pps=args.pace)
    flows = FlowSettings(capacity=args.capacity, payload_slots=args.capacity // 8)
    monitor = LiveMonitor(source, default_context(load_rules(REPO / "captures" / "rules.toml")), findings.append,
                          WatchSettings(pipeline=Settings(flows=flows), judge_every_s=args.judge_every), clock=source.clock)
    monitor.warm_up()
    stop = threading.Event()
    done = threading.Event()
    t0 = time.perf_counter()

    def work() -> None:
        monitor.run(stop)
        done.set()

    worker = threading.Thread(target=work)
    worker.start()
    console = Console(file=io.StringIO(), width=160, height=50, color_system="truecolor", force_terminal=True)
    render_s: list[float] = []
    frame_at: list[float] = []
    period = 1.0 / args.frames_per_s
    while not done.is_set():
        start = time.perf_counter()
        view = monitor.snapshot()
        if view is not None:
            console.file = io.StringIO()
            console.print(render_dashboard(view, height=50))
        render_s.append(time.perf_counter() - start)
        frame_at.append(time.perf_counter())
        done.wait(max(0.0, period - (time.perf_counter() - start)))
    worker.join()
    wall = time.perf_counter() - t0
    gaps = [b - a for a, b in zip(frame_at, frame_at[1:])] or [0.0]
    summary = monitor.summary()
    tunnel = [f for f in findings if f["kind"] == "reverse_ssh_tunnel"]
    result = {
        "capture": str(args.capture), "judge_every_s": args.judge_every, "packets": summary.packets, "flows": summary.flows, "wall_s": round(wall, 2),
        "packets_per_s": round(summary.packets / wall), "evictions": summary.evictions,
        "frames": len(render_s), "frame_render_ms_median": round(1000 * sorted(render_s)[len(render_s) // 2], 1),
        "frame_render_ms_max": round(1000 * max(render_s), 1),
        "longest_gap_between_frames_s": round(max(gaps), 3), "target_gap_s": round(period, 3),
        "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
        "findings": len(findings), "reverse_ssh_tunnel_found": bool(tunnel),
    }
    for key, value in result.items():
        print(f"{key:32} {value}")
    (HERE / "data" / "live_flood_last_run.json").write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
