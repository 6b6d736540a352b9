#!/usr/bin/env python3
"""End-to-end benchmark of `egressguard analyze` against a plain dpkt loop, in one run on one capture file.

    python benchmarks/bench_analyze.py [--packets N] [--flows F] [--seed S] [--repeat R] [--file PATH]
                                       [--full-baseline | --baseline-packets N]

Measures (see benchmarks/README.md for what each number means):
  a. `egressguard --help` time (and that it compiles nothing); the one-time JIT compile cost: `analyze` on a
     1000-packet capture with a fresh NUMBA_CACHE_DIR (cold) minus the same with that cache filled (warm);
  b. `egressguard analyze FILE` end to end in a subprocess, warm cache, file page-cached, best of --repeat:
     packets/s and the child's peak RSS;
  c. `egressguard analyze FILE --format jsonl --flows > /dev/null` once;
  d. the dpkt baseline in-process (Ethernet/IP/L4 parse + dict flow table), on the first 500,000 packets unless
     --full-baseline, and the ratio egressguard packets/s / dpkt packets/s;
  e. the flow table's memory per flow slot (FlowTable.memory_bytes() / capacity, default FlowSettings).
Prints a table and writes the numbers to benchmarks/data/last_run.json.

The CLI is run as `python -m egressguard ...` with PYTHONPATH set to the repository root: no install needed.
"""
from __future__ import annotations

import argparse
import json
import mmap
import os
import platform
import re
import signal
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
DATA = HERE / "data"
sys.path.insert(0, str(HERE))

from make_capture import DEFAULT_FLOWS, DEFAULT_PACKETS, DEFAULT_SEED, make_capture  # noqa: E402

TINY_PACKETS, TINY_FLOWS = 1000, 40
TARGET_PPS = 3.5e6
TARGET_BYTES_PER_FLOW = 1024
DEFAULT_BASELINE_PACKETS = 500_000

# Run the CLI's --help and report, at exit, whether numba was imported and how many signatures were compiled or
# loaded (with a fresh NUMBA_CACHE_DIR, any signature present had to be compiled). Imports nothing itself.
HELP_PROBE = r"""
import atexit, gc, os, runpy, sys
def _report():
    n = 0
    if "numba.core.dispatcher" in sys.modules:
        D = sys.modules["numba.core.dispatcher"].Dispatcher
        n = sum(len(o.overloads) for o in gc.get_objects() if isinstance(o, D))
    os.write(2, ("\n__EG_PROBE__ numba=%d compiled=%d\n" % ("numba" in sys.modules, n)).encode())
atexit.register(_report)
sys.argv = ["egressguard"] + sys.argv[1:]
runpy.run_module("egressguard", run_name="__main__", alter_sys=True)
"""

TABLE_PROBE = r"""
import json
from egressguard.flows import FlowSettings, FlowTable
s = FlowSettings()
t = FlowTable(s)
print(json.dumps({"capacity": s.capacity, "payload_slots": s.payload_slots, "bytes": t.memory_bytes()}))
"""


# ---------------------------------------------------------------------------------------------------- helpers
class ChildResult(dict):
    @property
    def ok(self) -> bool:
        """Exit 0 (nothing found) or 1 (findings reported) are both successful runs of `analyze`; but Python also
        exits with 1 on an uncaught exception, so a traceback on stderr makes the run a failure."""
        return self["rc"] in (0, 1) and not self["crashed"]


def child_env(cache_dir: Path | str) -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO)] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    env["NUMBA_CACHE_DIR"] = str(cache_dir)
    return env


# Runs argv[2:] in a forked grandchild and writes its wall time and rusage to argv[1]. Needed because Python
# starts children with vfork and Linux carries the parent's RSS high-water mark across exec into the child's
# ru_maxrss: measured directly, every child would report at least the benchmark's own peak (the generator's ~1 GB).
# This launcher is small, and a real fork gives the grandchild a fresh high-water mark starting from it.
LAUNCHER = r"""
import json, os, sys, time
out, argv = sys.argv[1], sys.argv[2:]
t0 = time.perf_counter()
pid = os.fork()
if pid == 0:
    try:
        os.execvp(argv[0], argv)
    finally:
        os._exit(127)
_, status, ru = os.wait4(pid, 0)
wall = time.perf_counter() - t0
with open(out, "w") as f:
    json.dump({"wall_s": wall, "cpu_s": ru.ru_utime + ru.ru_stime, "maxrss_kib": ru.ru_maxrss,
               "rc": os.waitstatus_to_exitcode(status)}, f)
"""


def run_child(argv: list[str], env: dict, stdout: str | os.PathLike = os.devnull, timeout: float = 3600.0,
              stderr_path: Path | None = None) -> ChildResult:
    """Run argv; wall time, CPU time and peak RSS of that process alone (wait4 rusage, taken by LAUNCHER),
    exit code and the tail of its stderr."""
    err_path = stderr_path or (DATA / "child_stderr.txt")
    with tempfile.NamedTemporaryFile(prefix="eg-rusage-", suffix=".json", delete=False) as tf:
        rusage_path = tf.name
    try:
        with open(stdout, "wb") as out, open(err_path, "wb") as err:
            proc = subprocess.Popen([sys.executable, "-c", LAUNCHER, rusage_path, *argv], env=env, stdout=out,
                                    stderr=err, cwd=REPO, start_new_session=True)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)  # the launcher and the measured process (own session)
                proc.wait()
                raise RuntimeError(f"`{' '.join(argv[2:])}` took longer than {timeout:.0f} s; killed")
        err_text = Path(err_path).read_bytes()
        tail = err_text[-4000:].decode(errors="replace")
        crashed = b"Traceback (most recent call last):" in err_text
        if proc.returncode != 0 or os.path.getsize(rusage_path) == 0:
            raise RuntimeError(f"launcher failed (rc {proc.returncode}):\n{tail}")
        ru = json.loads(Path(rusage_path).read_text())
    finally:
        os.unlink(rusage_path)
    return ChildResult(wall_s=ru["wall_s"], cpu_s=ru["cpu_s"], peak_rss_bytes=ru["maxrss_kib"] * 1024,
                       rc=ru["rc"], crashed=crashed, stderr_tail=tail)


def eg(*args: str) -> list[str]:
    return [sys.executable, "-m", "egressguard", *args]


def count_pcap(path: Path) -> int:
    """Packets in a classic pcap file (walks the record headers)."""
    with open(path, "rb") as fh, mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as mm:
        magic = mm[:4]
        if magic in (b"\xd4\xc3\xb2\xa1", b"\x4d\x3c\xb2\xa1"):
            fmt = "<I"
        elif magic in (b"\xa1\xb2\xc3\xd4", b"\xa1\xb2\x3c\x4d"):
            fmt = ">I"
        else:
            raise SystemExit(f"{path}: not a classic pcap file (count its packets another way)")
        unpack, size, pos, n = struct.Struct(fmt).unpack_from, len(mm), 24, 0
        while pos + 16 <= size:
            pos += 16 + unpack(mm, pos + 8)[0]
            n += 1
        return n


def page_cache(path: Path) -> float:
    """Read the whole file once so that timed runs read from the page cache; returns seconds."""
    t0 = time.perf_counter()
    buf = bytearray(64 << 20)
    with open(path, "rb", buffering=0) as fh:
        while fh.readinto(buf):
            pass
    return time.perf_counter() - t0


def dpkt_baseline(path: Path, limit: int | None) -> dict:
    """The same work as a plain dpkt loop: parse Ethernet / IPv4|IPv6 / TCP|UDP and keep a dict flow table keyed
    by the canonical bidirectional 5-tuple with per-direction packets and bytes and first/last time."""
    import dpkt

    IP, IP6, TCP, UDP = dpkt.ip.IP, dpkt.ip6.IP6, dpkt.tcp.TCP, dpkt.udp.UDP
    Ethernet = dpkt.ethernet.Ethernet
    table: dict[tuple, list] = {}
    n = skipped = 0
    t0 = time.perf_counter()
    with open(path, "rb") as fh:
        for ts, buf in dpkt.pcap.Reader(fh):
            n += 1
            ip = Ethernet(buf).data
            if isinstance(ip, IP):
                proto = ip.p
            elif isinstance(ip, IP6):
                proto = ip.nxt
            else:
                skipped += 1
                proto = None
            if proto is not None:
                l4 = ip.data
                if isinstance(l4, (TCP, UDP)):
                    a, b = (ip.src, l4.sport), (ip.dst, l4.dport)
                    if a <= b:
                        key, d = (proto, a, b), 2
                    else:
                        key, d = (proto, b, a), 4
                    rec = table.get(key)
                    if rec is None:
                        rec = table[key] = [ts, ts, 0, 0, 0, 0]
                    rec[1] = ts
                    rec[d] += 1
                    rec[d + 1] += len(buf)
                else:
                    skipped += 1
            if limit and n >= limit:
                break
    seconds = time.perf_counter() - t0
    return dict(packets=n, seconds=seconds, pps=n / seconds, flows_seen=len(table), skipped=skipped)


def source_state() -> dict:
    """The commit and a hash of the egressguard sources (the tree may change while a benchmark runs)."""
    import hashlib

    h = hashlib.sha1()
    for f in sorted((REPO / "egressguard").rglob("*.py")):
        h.update(str(f.relative_to(REPO)).encode() + b"\0" + f.read_bytes())
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True,
                              timeout=10).stdout.strip()
        dirty = bool(subprocess.run(["git", "status", "--porcelain", "--", "egressguard"], cwd=REPO,
                                    capture_output=True, text=True, timeout=10).stdout.strip())
    except (OSError, subprocess.SubprocessError):
        head, dirty = "", None
    return dict(commit=head, uncommitted_changes=dirty, sources_sha1=h.hexdigest()[:12])


def fmt_rate(pps: float | None) -> str:
    return "-" if pps is None else f"{pps / 1e6:.2f} M/s" if pps >= 1e6 else f"{pps / 1e3:.1f} k/s"


def fmt_mib(b: float | None) -> str:
    return "-" if b is None else f"{b / 2**20:,.0f} MiB"


# ---------------------------------------------------------------------------------------------------- stages
def prepare_capture(args) -> dict:
    """The benchmark capture: --file as given, else benchmarks/data/bench.pcap (regenerated when missing or made
    with other parameters)."""
    if args.file:
        path = Path(args.file)
        if not path.is_file():
            raise SystemExit(f"{path}: no such file")
        t0 = time.perf_counter()
        packets = count_pcap(path)
        info = dict(path=str(path), packets=packets, flows=None, bytes=path.stat().st_size, generated=False,
                    count_seconds=round(time.perf_counter() - t0, 2))
        side = path.with_name(path.name + ".json")
        if side.is_file():
            meta = json.loads(side.read_text())
            if meta.get("packets") == packets and meta.get("bytes") == info["bytes"]:
                info["flows"] = meta.get("flows")
        return info
    path = DATA / "bench.pcap"
    side = DATA / "bench.pcap.json"
    want = dict(packets=args.packets, flows=args.flows, seed=args.seed)
    if path.is_file() and side.is_file():
        meta = json.loads(side.read_text())
        if all(meta.get(k) == v for k, v in want.items()) and meta.get("bytes") == path.stat().st_size:
            return dict(meta, path=str(path), generated=False)
    print(f"generating {path} ({args.packets:,} packets, {args.flows:,} flows, seed {args.seed}) ...", flush=True)
    stats = make_capture(path, args.packets, args.flows, args.seed, quiet=False)
    side.write_text(json.dumps(stats, indent=1))
    return dict(stats, path=str(path), generated=True)


def bench_cli(res: dict, cap: dict, args) -> None:
    """Stages a-c (the CLI in subprocesses)."""
    big = Path(cap["path"])
    tiny = DATA / "tiny.pcap"
    make_capture(tiny, TINY_PACKETS, TINY_FLOWS, args.seed)
    out_txt = DATA / "analyze_stdout.txt"

    # a. --help: timed (best of 2) and probed for JIT compilation, each with a fresh cache directory
    with tempfile.TemporaryDirectory(prefix="eg-numba-") as fresh:
        runs = [run_child(eg("--help"), child_env(fresh), stdout=out_txt) for _ in range(2)]
        if runs[0]["rc"] != 0:
            raise RuntimeError("`python -m egressguard --help` failed (rc %d):\n%s" % (runs[0]["rc"],
                                                                                     runs[0]["stderr_tail"]))
        cache_files = sum(len(f) for _, _, f in os.walk(fresh))
    with tempfile.TemporaryDirectory(prefix="eg-numba-") as fresh:
        probe = run_child([sys.executable, "-c", HELP_PROBE, "--help"], child_env(fresh))
    numba_imported = compiled = None
    for line in probe["stderr_tail"].splitlines():
        if line.startswith("__EG_PROBE__"):
            kv = dict(x.split("=") for x in line.split()[1:])
            numba_imported, compiled = bool(int(kv["numba"])), int(kv["compiled"])
    res["cli_help"] = dict(seconds=min(r["wall_s"] for r in runs), peak_rss_bytes=runs[0]["peak_rss_bytes"],
                           numba_imported=numba_imported, functions_compiled=compiled,
                           cache_files_written=cache_files,
                           compiles_nothing=(compiled == 0 and cache_files == 0) if compiled is not None else None)

    # a. JIT compile cost on the tiny capture: fresh cache (cold), then the same cache (warm, best of 2)
    with tempfile.TemporaryDirectory(prefix="eg-numba-") as fresh:
        env = child_env(fresh)
        cold = run_child(eg("analyze", str(tiny)), env, stdout=out_txt)
        if not cold.ok:
            raise RuntimeError("`python -m egressguard analyze` failed (rc %d):\n%s" % (cold["rc"],
                                                                                      cold["stderr_tail"]))
        warm = [run_child(eg("analyze", str(tiny)), env, stdout=out_txt) for _ in range(2)]
        cache_files = sum(len(f) for _, _, f in os.walk(fresh))
    warm_s = min(r["wall_s"] for r in warm)
    res["jit"] = dict(capture_packets=TINY_PACKETS, cold_s=cold["wall_s"], warm_s=warm_s,
                      compile_s=cold["wall_s"] - warm_s, cold_cpu_s=cold["cpu_s"],
                      warm_peak_rss_bytes=min(r["peak_rss_bytes"] for r in warm), cache_files=cache_files)

    # b. analyze end to end, warm persistent cache (warmed on the tiny capture in both output modes), page-cached
    cache = DATA / "numba_cache"
    env = child_env(cache)
    for argv in (eg("analyze", str(tiny)), eg("analyze", str(tiny), "--format", "jsonl", "--flows")):
        w = run_child(argv, env, stdout=out_txt)
        if not w.ok:
            raise RuntimeError(f"warm-up `{' '.join(argv[2:])}` failed (rc {w['rc']}):\n{w['stderr_tail']}")
    res["capture"]["page_cache_read_s"] = page_cache(big)
    runs = []
    for i in range(args.repeat):
        r = run_child(eg("analyze", str(big)), env, stdout=out_txt, timeout=args.timeout)
        if not r.ok:
            raise RuntimeError(f"`analyze {big}` failed (rc {r['rc']}):\n{r['stderr_tail']}")
        runs.append(r)
        print(f"  analyze run {i + 1}/{args.repeat}: {r['wall_s']:.2f} s", flush=True)
    best = min(runs, key=lambda r: r["wall_s"])
    packets = cap["packets"]
    res["analyze"] = dict(
        runs_s=[r["wall_s"] for r in runs], best_s=best["wall_s"], pps=packets / best["wall_s"],
        cpu_s=best["cpu_s"], peak_rss_bytes=max(r["peak_rss_bytes"] for r in runs),
        rss_growth_over_tiny_bytes=max(r["peak_rss_bytes"] for r in runs) - res["jit"]["warm_peak_rss_bytes"],
        stdout_bytes=out_txt.stat().st_size, exit_code=best["rc"],
        pps_per_cpu_s=packets / best["cpu_s"] if best["cpu_s"] else None,
    )
    # the per-packet rate once the fixed start-up (interpreter, imports, cached kernels: the warm tiny run) is paid
    steady = best["wall_s"] - res["jit"]["warm_s"]
    res["analyze"]["pps_excluding_startup"] = packets / steady if steady > 0 else None
    # what the CLI says it read (table output: "packets │ 200,000", "flows │ 8,000"), as a sanity check
    text = out_txt.read_text(errors="replace")
    for name in ("packets", "flows"):
        m = re.search(name + r"\s*[│|]\s*([\d,]+)", text)
        res["analyze"]["reported_" + name] = int(m.group(1).replace(",", "")) if m else None
    if cap.get("flows"):
        res["analyze"]["rss_growth_per_flow_bytes"] = res["analyze"]["rss_growth_over_tiny_bytes"] / cap["flows"]

    # c. jsonl flow records to /dev/null, once
    r = run_child(eg("analyze", str(big), "--format", "jsonl", "--flows"), env, stdout=os.devnull,
                  timeout=args.timeout)
    if not r.ok:
        raise RuntimeError(f"`analyze --format jsonl --flows` failed (rc {r['rc']}):\n{r['stderr_tail']}")
    res["analyze_jsonl_flows"] = dict(seconds=r["wall_s"], pps=packets / r["wall_s"], cpu_s=r["cpu_s"],
                                      peak_rss_bytes=r["peak_rss_bytes"])
    print(f"  analyze --format jsonl --flows: {r['wall_s']:.2f} s", flush=True)


def bench_table(res: dict) -> None:
    """Flow table bytes per flow slot, default settings (a child process: numpy only, nothing compiled)."""
    with tempfile.TemporaryDirectory(prefix="eg-numba-") as fresh:
        out = DATA / "table_probe.json"
        r = run_child([sys.executable, "-c", TABLE_PROBE], child_env(fresh), stdout=out)
        if r["rc"] != 0:
            raise RuntimeError(f"flow table probe failed:\n{r['stderr_tail']}")
        t = json.loads(out.read_text())
        out.unlink()
    res["flow_table"] = dict(t, bytes_per_flow=t["bytes"] / t["capacity"])


# ---------------------------------------------------------------------------------------------------- report
def report(res: dict) -> str:
    cap = res["capture"]
    L = []
    h = res["host"]
    L.append(f"egressguard benchmark {res['started']}  ({h['cpus']} CPUs, load {h['load_before']}; "
             f"Python {h['python']}, numba {h['numba']}, numpy {h['numpy']}, dpkt {h['dpkt']})")
    flows = f"{cap['flows']:,} flows" if cap.get("flows") else "flows unknown"
    src = res.get("source", {})
    if src:
        L.append(f"egressguard at {src['commit'] or '?'}" + (" + uncommitted changes" if src["uncommitted_changes"]
                                                            else "") + f" (sources {src['sources_sha1']})")
    L.append(f"capture {cap['path']}: {cap['packets']:,} packets, {flows}, {cap['bytes'] / 2**20:,.1f} MiB"
             + (f" (generated in {cap['seconds']:.1f} s)" if cap.get("generated") else ""))
    L.append("")
    rows = [("measurement", "value", "target / note")]

    def row(a, b, c=""):
        rows.append((a, b, c))

    def verdict(ok):
        return "PASS" if ok else "FAIL"

    if "cli_help" in res:
        c = res["cli_help"]
        note = "must compile nothing: "
        if c["functions_compiled"] is None:
            note += "probe gave no answer"
        else:
            note += (f"{verdict(c['compiles_nothing'])} ({c['functions_compiled']} signatures compiled, "
                     f"{c['cache_files_written']} cache files, numba {'imported' if c['numba_imported'] else 'not imported'})")
        row("egressguard --help", f"{c['seconds']:.2f} s", note)
    if "jit" in res:
        j = res["jit"]
        row(f"JIT compile cost (cold - warm, {j['capture_packets']} pkts)", f"{j['compile_s']:.2f} s",
            f"cold {j['cold_s']:.2f} s, warm {j['warm_s']:.2f} s, {j['cache_files']} cache files")
    if "analyze" in res:
        a = res["analyze"]
        seen = f"reported {a['reported_packets']:,} packets" if a.get("reported_packets") is not None else ""
        if a.get("reported_flows") is not None:
            seen += f", {a['reported_flows']:,} flows"
        if a.get("reported_packets") not in (None, cap["packets"]):
            seen += f" (MISMATCH: the capture holds {cap['packets']:,} packets)"
        elif cap.get("flows") and a.get("reported_flows") not in (None, cap["flows"]):
            seen += f" (the capture holds {cap['flows']:,} 5-tuples)"
        row(f"analyze, warm, best of {len(a['runs_s'])}", f"{a['best_s']:.2f} s",
            "runs " + ", ".join(f"{s:.2f}" for s in a["runs_s"]) + " s" + (f"; {seen}" if seen else ""))
        row("  packets/s end to end", fmt_rate(a["pps"]), f">= {TARGET_PPS / 1e6:g} M/s: {verdict(a['pps'] >= TARGET_PPS)}")
        if a.get("pps_excluding_startup"):
            row("  packets/s excluding start-up", fmt_rate(a["pps_excluding_startup"]),
                f"packets / (best - warm tiny run {res['jit']['warm_s']:.2f} s)")
        row("  CPU time (user+sys) of best run", f"{a['cpu_s']:.2f} s",
            f"{a['cpu_s'] / a['best_s']:.2f} cores busy on average")
        row("  peak RSS (child)", fmt_mib(a["peak_rss_bytes"]),
            f"tiny-capture run: {fmt_mib(res['jit']['warm_peak_rss_bytes'])}")
        if "rss_growth_per_flow_bytes" in a:
            row("  peak RSS growth over tiny run / flow", f"{a['rss_growth_per_flow_bytes']:,.0f} B",
                "upper bound for the memory one flow costs (everything that grew)")
    if "analyze_jsonl_flows" in res:
        j = res["analyze_jsonl_flows"]
        row("analyze --format jsonl --flows >/dev/null", f"{j['seconds']:.2f} s",
            f"{fmt_rate(j['pps'])}, peak RSS {fmt_mib(j['peak_rss_bytes'])}")
    if "flow_table" in res:
        t = res["flow_table"]
        row("flow table memory per flow slot", f"{t['bytes_per_flow']:,.0f} B",
            f"<= {TARGET_BYTES_PER_FLOW} B: {verdict(t['bytes_per_flow'] <= TARGET_BYTES_PER_FLOW)} "
            f"({fmt_mib(t['bytes'])} for {t['capacity']:,} flows, {t['payload_slots']:,} payload slots)")
    if "baseline_dpkt" in res:
        b = res["baseline_dpkt"]
        part = "all" if b["packets"] >= cap["packets"] else f"first {b['packets']:,}"
        row(f"dpkt baseline ({part} packets)", fmt_rate(b["pps"]),
            f"{b['seconds']:.1f} s; whole file ~{cap['packets'] / b['pps']:.1f} s; {b['flows_seen']:,} flows seen")
    if res.get("ratio") is not None:
        row("egressguard / dpkt packets/s", f"{res['ratio']:.1f}x", "same run, same file")
    w = [max(len(r[i]) for r in rows) for i in range(3)]
    for k, r in enumerate(rows):
        L.append(f"{r[0]:<{w[0]}}  {r[1]:>{w[1]}}  {r[2]}".rstrip())
        if k == 0:
            L.append(f"{'-' * w[0]}  {'-' * w[1]}  {'-' * w[2]}")
    for e in res["errors"]:
        L.append("")
        L.append("NOT MEASURED: " + e)
    if src and res.get("source_sha1_after") not in (None, src["sources_sha1"]):
        L.append("")
        L.append(f"WARNING: the egressguard sources changed during the run ({src['sources_sha1']} -> "
                 f"{res['source_sha1_after']}): the numbers may mix two versions; rerun.")
    busy = max(h["load_before"], res.get("load_after") or 0)
    if busy >= 0.5:
        L.append("")
        L.append(f"NOTE: load average {h['load_before']} before / {res.get('load_after')} after on {h['cpus']} CPUs: "
                 "other processes competed for the CPU, so times are pessimistic and vary from run to run; "
                 "compare ratios, or rerun on an idle machine.")
    return "\n".join(L)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Benchmark `egressguard analyze` against a dpkt loop.")
    ap.add_argument("--packets", type=int, default=DEFAULT_PACKETS, help="packets of the generated capture")
    ap.add_argument("--flows", type=int, default=None, help="flows of the generated capture (default: "
                    f"{DEFAULT_FLOWS:,} for the default size, else packets/25)")
    ap.add_argument("--seed", type=int, default=DEFAULT_SEED)
    ap.add_argument("--repeat", type=int, default=3, help="analyze runs; the best counts (default %(default)s)")
    ap.add_argument("--file", help="benchmark this existing classic pcap instead of generating one")
    g = ap.add_mutually_exclusive_group()
    g.add_argument("--full-baseline", action="store_true", help="run the dpkt baseline on the whole file")
    g.add_argument("--baseline-packets", type=int, default=DEFAULT_BASELINE_PACKETS,
                   help="packets the dpkt baseline reads (default %(default)s; its packets/s is extrapolated)")
    ap.add_argument("--timeout", type=float, default=1800.0, help="seconds before a CLI run is killed")
    ap.add_argument("--json", default=str(DATA / "last_run.json"), help="where to write the numbers")
    args = ap.parse_args(argv)
    if args.flows is None:
        args.flows = DEFAULT_FLOWS if args.packets == DEFAULT_PACKETS else max(1, args.packets // 25)
    DATA.mkdir(parents=True, exist_ok=True)

    import dpkt
    import numba
    import numpy

    res: dict = dict(
        started=time.strftime("%Y-%m-%d %H:%M:%S"),
        host=dict(cpus=os.cpu_count(), load_before=round(os.getloadavg()[0], 2), python=platform.python_version(),
                  numba=numba.__version__, numpy=numpy.__version__, dpkt=dpkt.__version__,
                  platform=platform.platform()),
        targets=dict(analyze_pps=TARGET_PPS, flow_table_bytes_per_flow=TARGET_BYTES_PER_FLOW),
        source=source_state(),
        errors=[],
    )
    res["capture"] = prepare_capture(args)
    print(f"capture: {res['capture']['path']} ({res['capture']['packets']:,} packets)", flush=True)

    try:
        bench_cli(res, res["capture"], args)
    except (RuntimeError, OSError) as e:
        res["errors"].append(f"egressguard CLI: {e}")
        print(f"egressguard CLI stage stopped: {str(e).splitlines()[0]}", flush=True)
    try:
        bench_table(res)
    except (RuntimeError, OSError, ValueError) as e:
        res["errors"].append(f"flow table probe: {e}")

    limit = None if args.full_baseline else args.baseline_packets
    print(f"dpkt baseline on {'all' if limit is None else f'the first {limit:,}'} packets ...", flush=True)
    if limit is None and "page_cache_read_s" not in res["capture"]:
        res["capture"]["page_cache_read_s"] = page_cache(Path(res["capture"]["path"]))
    b = dpkt_baseline(Path(res["capture"]["path"]), limit)
    b["extrapolated"] = b["packets"] < res["capture"]["packets"]
    res["baseline_dpkt"] = b
    if b["packets"] == res["capture"]["packets"] and res["capture"].get("flows") is None:
        res["capture"]["flows"] = b["flows_seen"]
    res["ratio"] = res["analyze"]["pps"] / b["pps"] if "analyze" in res else None

    res["finished"] = time.strftime("%Y-%m-%d %H:%M:%S")
    res["load_after"] = round(os.getloadavg()[0], 2)
    res["source_sha1_after"] = source_state()["sources_sha1"]
    Path(args.json).write_text(json.dumps(res, indent=1, default=float))
    print()
    print(report(res))
    print(f"\nnumbers written to {args.json}")
    return 1 if res["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
