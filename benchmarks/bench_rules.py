#!/usr/bin/env python3
"""What 100,000 allowlist entries cost `egressguard analyze` on the benchmark capture.

Usage: python benchmarks/bench_rules.py [--file benchmarks/data/bench.pcap] [--repeat 3] [--entries 100000]

Writes two rules files into benchmarks/data/ (git-ignored) with the same random mix (half CIDRs: IPv4 /16-/32 and
IPv6 /64; half names: exact, `*.` and `**.`; 70 % with one port): one with an [[allow]] table per entry, one with
two entries that read the same items from `cidrs_file`/`domains_file`. Then runs `analyze FILE` with the default
rules and with each of the two, interleaved, `--repeat` times each, and prints every wall time and the best of
each. The first run of each big file compiles it (and fills the compiled-rules cache, egressguard/rules_cache.py,
here in a fresh directory); the later ones load it from the cache. The machine is shared: compare best-of runs
taken together, never numbers from different runs. Make the capture first with bench_analyze.py.
"""
from __future__ import annotations

import argparse
import ipaddress
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DATA = REPO / "benchmarks" / "data"


def write_rules(entries: int, seed: int = 7) -> tuple[Path, Path]:
    rng = random.Random(seed)
    cidrs, names, tables = [], [], ["version = 1", ""]
    for i in range(entries):
        port = f"ports = [{rng.choice([443, 80, 8080, 22, 53])}]" if rng.random() < 0.7 else ""
        if i % 2 == 0:
            if rng.random() < 0.8:
                net = ipaddress.ip_network(f"{ipaddress.IPv4Address(rng.getrandbits(32))}/"
                                           f"{rng.choice([16, 20, 24, 28, 32])}", strict=False)
            else:
                net = ipaddress.ip_network(f"2001:db8:{rng.getrandbits(16):x}:{rng.getrandbits(16):x}::/64")
            cidrs.append(str(net))
            tables += ["[[allow]]", f'name = "e{i}"', f'cidrs = ["{net}"]', port, ""]
        else:
            k, d = rng.random(), f"host{i}.example{i % 997}.com"
            name = d if k < 0.6 else ("*." if k < 0.85 else "**.") + d
            names.append(name)
            tables += ["[[allow]]", f'name = "e{i}"', f'domains = ["{name}"]', port, ""]
    table_file = DATA / f"rules-{entries}.toml"
    table_file.write_text("\n".join(tables))
    (DATA / f"lists-{entries}-cidrs.txt").write_text("\n".join(cidrs) + "\n")
    (DATA / f"lists-{entries}-domains.txt").write_text("\n".join(names) + "\n")
    list_file = DATA / f"rules-{entries}-lists.toml"
    list_file.write_text(f'version = 1\n[[allow]]\nname = "networks"\ncidrs_file = "lists-{entries}-cidrs.txt"\n'
                         f'ports = [443, 80]\n[[allow]]\nname = "names"\ndomains_file = "lists-{entries}-domains.txt"\n'
                         f"ports = [443]\n")
    return table_file, list_file


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--file", type=Path, default=DATA / "bench.pcap")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--entries", type=int, default=100_000)
    args = parser.parse_args(argv)
    if not args.file.exists():
        parser.error(f"{args.file}: no such capture (python benchmarks/bench_analyze.py makes it)")
    table_file, list_file = write_rules(args.entries)
    cache = tempfile.mkdtemp(prefix="eg-rules-cache-")
    env = dict(os.environ, PYTHONPATH=str(REPO), NUMBA_CACHE_DIR=str(DATA / "numba_cache"),
               EGRESSGUARD_CACHE_DIR=cache)
    configs = {"default rules": [], f"{args.entries:,} [[allow]] tables": ["--rules", str(table_file)],
               f"{args.entries:,} items in list files": ["--rules", str(list_file)]}
    subprocess.run([sys.executable, "-m", "egressguard", "analyze", str(DATA / "tiny.pcap")], env=env,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # warm the kernels
    subprocess.run(["cat", str(args.file)], stdout=subprocess.DEVNULL)  # and the page cache
    runs: dict[str, list[float]] = {name: [] for name in configs}
    for _ in range(args.repeat):
        for name, extra in configs.items():
            start = time.perf_counter()
            proc = subprocess.run([sys.executable, "-m", "egressguard", "analyze", *extra, str(args.file)], env=env,
                                  stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
            runs[name].append(round(time.perf_counter() - start, 2))
            if proc.returncode not in (0, 1) or "Traceback" in proc.stderr:
                print(proc.stderr[-2000:], file=sys.stderr)
                return 1
            print(f"{name:32} {runs[name][-1]:6.2f} s   load {os.getloadavg()[0]:.2f}", flush=True)
    base = min(runs["default rules"])
    print(json.dumps({name: {"runs": r, "best": min(r), "first": r[0],
                             "best_vs_default": f"{(min(r) / base - 1) * 100:+.1f} %"} for name, r in runs.items()},
                     indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
