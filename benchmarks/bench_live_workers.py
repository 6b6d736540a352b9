#!/usr/bin/env python3
"""`watch --workers N` benchmark: the packet rate the whole live engine sustains with zero kernel drops, with one
worker (today's in-process path) and with two (a fanout group sharded by sandbox), measured in the same run, and
whether a reverse SSH tunnel is still reported within 20 s under that load.

    sudo python benchmarks/bench_live_workers.py [--rates 25000,50000,...,0] [--seconds 3] [--workers 1,2]
                                                 [--sandboxes 1000] [--no-tunnel]

Needs root, iproute2, tcpdump, OpenSSH (the capture lab, captures/lab.py) and trafgen (Debian package netsniff-ng).
Topology: the lab's sandbox, gateway bridge br0 and outside host, plus a "load" namespace on the bridge whose trafgen
sends 60-byte UDP frames from `--sandboxes` spoofed sandbox addresses (10.77.1.1 ...) to the gateway, so that the
fanout program has many sandboxes to spread. `egressguard watch -i br0 --workers N --metrics ...` runs in the gateway
namespace (the real command: decode, flow table, every detector, open-flow rounds, the finding gate); the packets and
kernel drops it counted come from its Prometheus endpoint after each step.

  a. Rate steps, per N: trafgen sends rate x seconds frames (`--rate`: one sendto per frame; 0 = top speed through
     its TX ring); a step is clean when no frame was dropped by the kernel and every frame was counted. The result
     is the highest clean rate trafgen achieved, per N, and their ratio.
  b. Tunnel under load, per N: trafgen at N's highest clean rate for 40 s while the lab sandbox opens `ssh -N -R` to
     the outside and the outside logs back in through it: seconds until the `reverse_ssh_tunnel` finding.

All of it shares the machine's cores: on the veth path the kernel's receive work (bridge, fanout, the copy into the
rings) runs on the sender's CPU, so with 2 cores trafgen and the kernel take most of one. The table says how many
cores there were. Results go to benchmarks/data/live_workers_last_run.json.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
DATA = HERE / "data"
sys.path.insert(0, str(REPO / "captures"))

LOAD_IP = "10.77.0.250"


def _trafgen_config(gateway_mac: str, sandboxes: int) -> str:
    """60-byte frames 10.77.X.Y:port -> 10.77.0.1:9/udp; X, Y and the port's low byte count up per frame, so the
    source addresses cycle through 3 x min(250, sandboxes) spoofed sandboxes (trafgen(8): dinc). The IPv4 checksum is
    left 0: the gateway's stack drops the frames at once (ip_rcv_core), after the packet taps saw them, so the
    sender's CPU goes to sending rather than to the frames' way through the gateway's stack."""
    mac = ", ".join(f"0x{b}" for b in gateway_mac.split(":"))
    # X runs over 3 values (an odd count) so that X's and Y's parities do not move in step: with both counting up
    # by one per frame, an even range would give every frame the same low bit after the program's xor fold
    x_max = 3
    return f"""{{
  {mac}, 0x02, 0x00, 0x00, 0x00, 0x00, 0xfa, 0x08, 0x00,
  0x45, 0x00, 0x00, 0x2e, 0x00, 0x00, 0x40, 0x00, 0x40, 0x11, 0x00, 0x00,
  10, 77, dinc(1, {x_max}), dinc(1, {min(250, sandboxes)}),
  10, 77, 0, 1,
  0x9c, dinc(0, 255), 0x00, 0x09, 0x00, 0x1a, 0x00, 0x00,
  fill(0x41, 18)
}}
"""


def _scrape(lab, port: int) -> str:
    code = f"import urllib.request; print(urllib.request.urlopen('http://127.0.0.1:{port}/metrics', timeout=10)" \
           ".read().decode())"
    return lab.run(lab.gw, sys.executable, "-c", code).stdout


def _sum(text: str, name: str) -> int:
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name + "{") or line.startswith(name + " "):
            total += float(line.rsplit(" ", 1)[1])
    return int(total)


def _on_cpu_ns(pid: int) -> int:
    """Nanoseconds the process's threads ran on a CPU (/proc/PID/task/*/schedstat, first field)."""
    total = 0
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return 0
    for task in tasks:
        try:
            total += int(open(f"/proc/{pid}/task/{task}/schedstat").read().split()[0])
        except (OSError, ValueError, IndexError):
            pass
    return total


def _cpu_s(pids: list[int]) -> float:
    """User + system CPU seconds of the processes (and their reaped children), from /proc/PID/stat."""
    total = 0
    for pid in pids:
        try:
            fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += sum(int(f) for f in fields[11:15])
    return total / os.sysconf("SC_CLK_TCK")


class Watch:
    """`egressguard watch --workers N` in the gateway namespace, its stdout in a file, its metrics on a port."""

    def __init__(self, lab, workers: int, rules: Path, port: int, workdir: Path):
        self.lab, self.port = lab, port
        self.out = workdir / f"watch-{workers}.jsonl"
        self.err = workdir / f"watch-{workers}.err"
        env = dict(os.environ, PYTHONPATH=str(REPO))
        self.proc = lab.popen(lab.gw, sys.executable, "-m", "egressguard", "watch", "-i", "br0", "--no-dashboard",
                              "--workers", str(workers), "--rules", str(rules), "--metrics", f"127.0.0.1:{port}",
                              stdout=open(self.out, "w"), stderr=open(self.err, "w"), env=env, cwd=REPO)
        deadline = time.time() + 300
        while "watching" not in self.err.read_text():
            if self.proc.poll() is not None or time.time() > deadline:
                raise SystemExit(f"watch --workers {workers} did not start:\n{self.err.read_text()}")
            time.sleep(0.5)
        found = re.findall(r"worker \d+ started \(pid (\d+)\)", self.err.read_text())
        self.pids = [self.proc.pid] + [int(p) for p in found]
        self.readers = [int(p) for p in found] or [self.proc.pid]  # the processes that read the rings
        time.sleep(2.0)

    def counters(self) -> tuple[int, int]:
        text = _scrape(self.lab, self.port)
        return _sum(text, "egressguard_packets_total"), _sum(text, "egressguard_kernel_drops_total")

    def findings(self) -> list[dict]:
        return [json.loads(line) for line in self.out.read_text().splitlines() if line.strip()]

    def stop(self) -> int:
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=120)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return -9


def _trafgen(lab, ns: str, config: Path, packets: int, rate: int, background: bool = False):
    cmd = ["trafgen", "--dev", "eth0", "--conf", str(config), "-n", str(packets), "-P", "1", "-C", "-E", "1"]
    if rate:
        cmd += ["--rate", f"{rate}pps"]
    if background:
        return lab.popen(ns, *cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    start = time.perf_counter()
    lab.run(ns, *cmd, timeout=600)
    return time.perf_counter() - start


def rate_steps(lab, watch: Watch, load_ns: str, config: Path, rates: list[int], seconds: float) -> list[dict]:
    steps = []
    for rate in rates:
        packets0, drops0 = watch.counters()
        cpu0 = _cpu_s(watch.pids)
        sent = int((rate or 400_000) * seconds)
        took = _trafgen(lab, load_ns, config, sent, rate)
        time.sleep(3.0)  # the workers read what is left; their counters reach the parent within ~1.5 s
        packets1, drops1 = watch.counters()
        got, dropped = packets1 - packets0, drops1 - drops0
        steps.append({"offered_pps": rate or "top speed", "achieved_pps": round(sent / took), "sent": sent,
                      "received": got, "kernel_drops": dropped,
                      "cpu_us_per_packet": round((_cpu_s(watch.pids) - cpu0) / max(got, 1) * 1e6, 3)})
        print(f"    {steps[-1]}", flush=True)
        if dropped > sent // 10:  # far past what it sustains: higher steps only take time
            break
    return steps


def drain(lab, watch: Watch, load_ns: str, config: Path, packets: int) -> dict:
    """The readers are stopped (SIGSTOP) while trafgen puts `packets` frames into their rings at top speed, then
    continued: packets/s from SIGCONT until every reader has gone idle (less than 20% of a CPU for 100 ms), read
    from the threads' on-CPU time (schedstat, ns) sampled every 2 ms. The sender is idle meanwhile, so this is
    what the readers sustain when the cores are theirs."""
    packets0, drops0 = watch.counters()
    for pid in watch.readers:
        os.kill(pid, signal.SIGSTOP)
    try:
        _trafgen(lab, load_ns, config, packets, 0)
        time.sleep(0.5)
    finally:
        base = {pid: _on_cpu_ns(pid) for pid in watch.readers}
        t0 = time.perf_counter()
        for pid in watch.readers:
            os.kill(pid, signal.SIGCONT)
    samples = []
    while time.perf_counter() - t0 < 4.0:
        samples.append((time.perf_counter() - t0, {pid: _on_cpu_ns(pid) - base[pid] for pid in watch.readers}))
        time.sleep(0.002)
    ends = {}
    for pid in watch.readers:
        ends[pid] = samples[-1][0]
        for i, (t, cpu) in enumerate(samples):
            later = next((s for s in samples[i:] if s[0] >= t + 0.1), None)
            if later is not None and later[1][pid] - cpu[pid] < 0.02e9:
                ends[pid] = t
                break
    time.sleep(2.0)
    packets1, drops1 = watch.counters()
    seconds = max(ends.values())
    got = packets1 - packets0
    return {"sent": packets, "received": got, "kernel_drops": drops1 - drops0, "seconds": round(seconds, 3),
            "pps": round(got / max(seconds, 1e-9)), "cpu_s": round(sum(samples[-1][1].values()) / 1e9, 3),
            "per_reader_s": [round(v, 3) for v in ends.values()]}


def _stop_load(lab, load_ns: str, load: subprocess.Popen) -> None:
    """trafgen forks its sending processes: end every process of the load namespace."""
    for pid in subprocess.run(["ip", "netns", "pids", load_ns], capture_output=True, text=True).stdout.split():
        try:
            os.kill(int(pid), signal.SIGKILL)
        except (ProcessLookupError, ValueError):
            pass
    load.wait(timeout=30)


def tunnel_under_load(lab, labmod, watch: Watch, load_ns: str, config: Path, rate: int) -> dict:
    """Seconds from `ssh -R` to its finding on watch's stdout (watched by a thread every 0.2 s, while the session
    goes on) while trafgen sends at `rate` (0: top speed)."""
    load = _trafgen(lab, load_ns, config, (rate or 400_000) * 60, rate, background=True)
    found: list[float] = []
    done = threading.Event()

    def look() -> None:
        while not done.is_set() and not found:
            if any(r.get("kind") == "reverse_ssh_tunnel" for r in watch.findings()):
                found.append(time.time())
            time.sleep(0.2)

    try:
        time.sleep(2.0)
        packets0, drops0 = watch.counters()
        with labmod.sshd(lab, lab.out), labmod.sshd(lab, lab.sbx):
            start = time.time()
            threading.Thread(target=look, daemon=True).start()
            with labmod.ssh_client(lab, lab.sbx, "-N", "-p", "443", "-R", "2222:127.0.0.1:22",
                                   f"root@{labmod.OUTSIDE_IP}"):
                labmod.type_into(lab, lab.out, labmod.ssh_args(lab, "-tt", "-p", "2222", "root@127.0.0.1"),
                                 labmod.SHELL_LINES[:3], seed=5)
                while not found and time.time() - start < 30:
                    time.sleep(0.2)
                session_s = round(time.time() - start, 1)
        packets1, drops1 = watch.counters()
    finally:
        done.set()
        _stop_load(lab, load_ns, load)
    return {"load_pps": rate or "top speed", "tunnel_reported_after_s": round(found[0] - start, 1) if found else None,
            "session_s": session_s, "packets_meanwhile": packets1 - packets0,
            "kernel_drops_meanwhile": drops1 - drops0}


def run(args: argparse.Namespace) -> dict:
    import lab as labmod
    from test_watch import _add_sandbox, _extra_namespaces  # the second sandbox helper of the watch tests

    workdir = Path(tempfile.mkdtemp(prefix="egbw-"))
    rules = workdir / "rules.toml"
    rules.write_text((REPO / "captures" / "rules.toml").read_text())
    result: dict = {"cpus": os.cpu_count(), "workers": {}}
    try:
        with labmod.topology() as L, _extra_namespaces(L) as extra:
            load_ns, _ = _add_sandbox(labmod, L, "load", LOAD_IP)
            extra.append(load_ns)
            mac = L.run(L.gw, "cat", "/sys/class/net/br0/address").stdout.strip()
            # br_netfilter, where loaded, would drop the load's zero-checksum frames before the bridge's taps
            L.run(L.gw, "sysctl", "-qw", "net.bridge.bridge-nf-call-iptables=0", check=False)
            config = workdir / "flood.cfg"
            config.write_text(_trafgen_config(mac, args.sandboxes))
            for n in args.workers:
                print(f"watch --workers {n}", flush=True)
                watch = Watch(L, n, rules, 19500 + n, workdir)
                try:
                    steps = rate_steps(L, watch, load_ns, config, args.rates, args.seconds)
                    clean = [s for s in steps if s["kernel_drops"] == 0 and s["received"] >= s["sent"]]
                    best = max(clean, key=lambda s: s["achieved_pps"], default=None)
                    entry = {"steps": steps, "best_clean_pps": best and best["achieved_pps"],
                             "best_clean_offered": best and best["offered_pps"]}
                    entry["drain"] = drain(L, watch, load_ns, config, args.drain_packets * n)
                    print(f"    drain: {entry['drain']}", flush=True)
                    if not args.no_tunnel and best is not None:
                        rate = args.tunnel_rate if args.tunnel_rate is not None else \
                            best["offered_pps"] if isinstance(best["offered_pps"], int) else 0
                        entry["tunnel"] = tunnel_under_load(L, labmod, watch, load_ns, config, rate)
                        print(f"    {entry['tunnel']}", flush=True)
                finally:
                    entry_exit = watch.stop()
                entry["exit"] = entry_exit
                result["workers"][n] = entry
    finally:
        if args.keep:
            print(f"watch output kept in {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    ones, twos = result["workers"].get(1, {}), result["workers"].get(2, {})
    if ones.get("best_clean_pps") and twos.get("best_clean_pps"):
        result["ratio_2_over_1"] = round(twos["best_clean_pps"] / ones["best_clean_pps"], 2)
    if ones.get("drain") and twos.get("drain"):
        result["drain_ratio_2_over_1"] = round(twos["drain"]["pps"] / max(ones["drain"]["pps"], 1), 2)
    result["load_average"] = os.getloadavg()
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rates", default="50000,100000,200000,300000,0",
                        type=lambda s: [int(float(x)) for x in s.split(",")], help="packets/s per step; 0 = top speed")
    parser.add_argument("--seconds", type=float, default=3.0, help="length of each step")
    parser.add_argument("--workers", default="1,2", type=lambda s: [int(x) for x in s.split(",")])
    parser.add_argument("--sandboxes", type=int, default=1000, help="spoofed sandbox addresses in the load")
    parser.add_argument("--no-tunnel", action="store_true", help="skip the tunnel-under-load part")
    parser.add_argument("--tunnel-rate", type=int, default=None,
                        help="load during the tunnel part [default: the highest clean rate; 0 = top speed]")
    parser.add_argument("--keep", action="store_true", help="keep the watch output (stdout, stderr) for a look")
    parser.add_argument("--drain-packets", type=int, default=180_000,
                        help="frames per reader for the drain test (a 32 MiB ring holds about 230,000 60-byte frames)")
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        print("bench_live_workers needs root (it creates network namespaces)", file=sys.stderr)
        return 2
    if shutil.which("trafgen") is None:
        print("bench_live_workers needs trafgen: apt-get install netsniff-ng", file=sys.stderr)
        return 2
    sys.path.insert(0, str(REPO / "tests"))
    result = run(args)
    print(f"\n{result['cpus']} CPUs")
    print(f"{'workers':>7} {'offered pps':>12} {'achieved':>9} {'sent':>9} {'received':>9} {'drops':>8} "
          f"{'CPU us/pkt':>10}")
    for n, entry in result["workers"].items():
        for s in entry["steps"]:
            print(f"{n:>7} {s['offered_pps']!s:>12} {s['achieved_pps']:>9} {s['sent']:>9} {s['received']:>9} "
                  f"{s['kernel_drops']:>8} {s['cpu_us_per_packet']:>10}")
    for n, entry in result["workers"].items():
        tunnel = entry.get("tunnel") or {}
        print(f"workers {n}: highest rate with zero drops {entry['best_clean_pps']} packets/s; reverse tunnel "
              f"reported after {tunnel.get('tunnel_reported_after_s')} s under {tunnel.get('load_pps')} pps "
              f"(kernel drops meanwhile: {tunnel.get('kernel_drops_meanwhile')})")
    for n, entry in result["workers"].items():
        d = entry.get("drain") or {}
        print(f"workers {n}: drain {d.get('received')} of {d.get('sent')} frames in {d.get('seconds')} s = "
              f"{d.get('pps')} packets/s (kernel drops {d.get('kernel_drops')}, CPU {d.get('cpu_s')} s)")
    print(f"ratio 2 workers / 1 worker: sustained {result.get('ratio_2_over_1')}, drain "
          f"{result.get('drain_ratio_2_over_1')}")
    DATA.mkdir(exist_ok=True)
    (DATA / "live_workers_last_run.json").write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
