"""Compute joined to flows (issue 16): the sampler reads real /proc and cgroup v2 files, the mining detector turns
sustained compute plus a long, rhythmic, opaque flow to a destination the rules do not allow into a finding (C1),
and `watch` does it live with a real cgroup and a busy process in a sandbox namespace (root)."""
from __future__ import annotations

import contextlib
import os
import random
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import LAB_CAPTURES, REPO, missing_tools
from egressguard.detect.mining import MiningDetector, Params
from egressguard.engine import FlowsReady
from egressguard.live.compute import ComputeSampler, local_addresses
from egressguard.netaddr import parse_address
from egressguard.pipeline import Analyzer, default_context
from egressguard.policy.rules import load_rules
from egressguard.schema import ComputeUsage
from test_detect_mining import SANDBOX, Pcap, stratum_events  # builders only

sys.path.insert(0, str(LAB_CAPTURES))

REMOTE = "203.0.113.77"
BUSY = ComputeUsage(1.9, 2.0, 95.0, "cgroup:/sandbox-a", 3)


class FixedReadings(ComputeSampler):
    """The sampler's answers fixed for one address (the detector's side of the join; the sampling itself is
    tested against real namespaces and cgroups below)."""

    def __init__(self, usage: ComputeUsage | None, address: str = SANDBOX):
        super().__init__(gpu=False)
        self.fixed, self.address = usage, parse_address(address)

    def usage(self, address: int, mac: int = 0) -> ComputeUsage | None:
        return self.fixed if address == self.address else None


def rhythmic(duration=45.0, every=2.0, push=180, reply=150, seed=3):
    """An opaque conversation: the remote side pushes `push` random bytes every `every` s, the sandbox answers
    every third push."""
    rng = random.Random(seed)
    events, t, k = [(0.1, 0, rng.randbytes(90))], 1.0, 0
    while t < duration:
        events.append((t, 1, rng.randbytes(push + rng.randint(-6, 6))))
        k += 1
        if k % 3 == 0:
            events.append((t + 0.3, 0, rng.randbytes(reply)))
        t += every * (1 + rng.uniform(-0.05, 0.05))
    return events


def bulk(duration=45.0, seed=4):
    """A download: one request, then the remote side streams without a rhythm, in bursts of random length."""
    rng = random.Random(seed)
    events, t = [(0.1, 0, b"GET-ish " + rng.randbytes(60))], 0.5
    while t < duration:
        events.append((t, 1, rng.randbytes(1400)))
        t += rng.expovariate(1 / 0.7)
    return events


def findings(path: Path, readings, rules_path: Path | None = None):
    ctx = default_context(load_rules(rules_path) if rules_path else None)
    if readings is not None:
        ctx = ctx.__class__(ctx.rules, ctx.binding, ctx.pools, ctx.acquisition, readings)
    out = []
    for event in Analyzer(detectors=[lambda c: MiningDetector(c, Params())], ctx=ctx).analyze(str(path)):
        if isinstance(event, FlowsReady):
            out += event.result.findings
    return out


def capture(tmp_path: Path, events, name="c.pcap", port=7443) -> Path:
    cap = Pcap()
    cap.tcp(SANDBOX, REMOTE, port, events)
    return cap.write(tmp_path / name)


# ------------------------------------------------------------------------------------------------ the detector
def test_busy_sandbox_with_a_rhythmic_opaque_flow_is_a_medium_mining_finding(tmp_path):
    [f] = findings(capture(tmp_path, rhythmic()), FixedReadings(BUSY))
    mining = f.details["mining"]
    assert f.severity.label() == "medium" and mining["signals"] == ["C1"]
    assert mining["compute"]["source"] == "cgroup:/sandbox-a" and mining["compute"]["cpu_cores"] == 1.9
    assert 1.8 <= mining["behaviour"]["push_interval_median_s"] <= 2.2
    assert "busy for 95 s" in f.evidence[0] and REMOTE == mining["pool_ip"]


@pytest.mark.parametrize("usage, events, why", [
    (None, rhythmic(), "no compute sample (files, or a sandbox not seen)"),
    (ComputeUsage(0.1, 2.0, 0.0, "cgroup:/idle", 2), rhythmic(), "idle sandbox"),
    (ComputeUsage(1.9, 2.0, 10.0, "cgroup:/a", 2), rhythmic(), "busy only for 10 s"),
    (BUSY, bulk(), "a download has no pushed rhythm"),
    (BUSY, rhythmic(duration=20.0), "a short flow"),
    (BUSY, rhythmic(every=200.0, duration=900.0), "too few pushes"),
])
def test_compute_alone_does_not_fire(tmp_path, usage, events, why):
    assert findings(capture(tmp_path, events), FixedReadings(usage)) == [], why


def test_no_compute_context_no_c1(tmp_path):
    assert findings(capture(tmp_path, rhythmic()), None) == []


def test_an_allowed_destination_is_not_judged_by_compute(tmp_path):
    rules = tmp_path / "rules.toml"
    rules.write_text(f'version = 1\n[settings]\nsandbox_networks = ["10.0.0.0/24"]\n'
                     f'[[allow]]\nname = "model API"\ncidrs = ["{REMOTE}/32"]\n')
    assert findings(capture(tmp_path, rhythmic()), FixedReadings(BUSY), rules) == []
    assert findings(capture(tmp_path, rhythmic(), "d.pcap"), FixedReadings(BUSY))  # the same flow, not allowed


def test_compute_raises_an_existing_mining_finding(tmp_path):
    path = capture(tmp_path, stratum_events(), port=3333)
    [plain] = findings(path, None)
    [joined] = findings(path, FixedReadings(BUSY))
    assert "C1" in joined.details["mining"]["signals"] and "C1" not in plain.details["mining"]["signals"]
    assert joined.score > plain.score and joined.severity == plain.severity
    assert joined.details["mining"]["compute"]["busy_for_s"] == 95.0


# ------------------------------------------------------------------------------------------------ the sampler
def test_local_addresses_read_fib_trie_and_if_inet6(tmp_path):
    net = tmp_path / "42" / "net"
    net.mkdir(parents=True)
    (net / "fib_trie").write_text(
        "Main:\n  +-- 0.0.0.0/0 3 0 5\n     |-- 0.0.0.0\n        /0 universe UNICAST\n"
        "     +-- 10.77.0.0/24 2 0 2\n        |-- 10.77.0.0\n           /24 link UNICAST\n"
        "        |-- 10.77.0.4\n           /32 host LOCAL\n"
        "Local:\n  +-- 127.0.0.0/8 2 0 2\n     |-- 127.0.0.1\n        /32 host LOCAL\n"
        "        |-- 10.77.0.4\n           /32 host LOCAL\n")
    (net / "if_inet6").write_text(
        "00000000000000000000000000000001 01 80 10 80       lo\n"
        "fe800000000000000000000000000001 02 40 20 80     eth0\n"
        "20010db8000000000000000000000007 02 40 00 80     eth0\n")
    assert local_addresses(str(tmp_path), 42) == [parse_address("10.77.0.4"), parse_address("2001:db8::7")]


def _fake_proc(root: Path, pid: int, address: str, mac: str, ticks: int) -> None:
    """A process of its own network and mount namespace in a proc tree laid out as proc(5) describes it."""
    d = root / str(pid)
    (d / "ns").mkdir(parents=True, exist_ok=True)
    for ns in ("net", "mnt"):
        (d / "ns" / ns).write_text(f"{ns}:{pid}")  # a file of its own: an inode of its own
    (d / "net").mkdir(exist_ok=True)
    (d / "net" / "fib_trie").write_text(f"Local:\n  |-- {address}\n     /32 host LOCAL\n")
    (d / "cgroup").write_text("0::/\n")
    (d / "stat").write_text(f"{pid} (python (busy) x) R 1 1 1 0 -1 0 0 0 0 0 {ticks} 0 0 0 20 0 1 0 5 0 0\n")
    sysnet = d / "root" / "sys" / "class" / "net" / "eth0"
    sysnet.mkdir(parents=True, exist_ok=True)
    (sysnet / "address").write_text(mac + "\n")


def test_namespaces_that_reuse_an_address_are_told_apart_by_mac(tmp_path):
    own = tmp_path / "self"
    (own / "ns").mkdir(parents=True)
    (own / "ns" / "net").write_text("host")
    (own / "ns" / "mnt").write_text("host")
    (own / "mounts").write_text("cgroup2 /nonexistent cgroup2 rw 0 0\n")
    hz = os.sysconf("SC_CLK_TCK")
    _fake_proc(tmp_path, 100, "10.0.0.2", "02:00:00:00:00:0a", 0)
    _fake_proc(tmp_path, 200, "10.0.0.2", "02:00:00:00:00:0b", 0)
    sampler = ComputeSampler(proc=str(tmp_path), gpu=False)
    sampler.sample(1000.0)
    _fake_proc(tmp_path, 100, "10.0.0.2", "02:00:00:00:00:0a", 4 * hz)  # 4 CPU seconds in 4 s: one core
    _fake_proc(tmp_path, 200, "10.0.0.2", "02:00:00:00:00:0b", 0)
    sampler.sample(1004.0)
    address = parse_address("10.0.0.2")
    assert sampler.usage(address) is None  # two namespaces hold it: no guess
    busy, idle = sampler.usage(address, 0x02000000000A), sampler.usage(address, 0x02000000000B)
    assert busy.cpu_cores == pytest.approx(1.0) and busy.source == "processes:1" and busy.busy_for_s == 4.0
    assert idle.cpu_cores == 0.0 and idle.busy_for_s == 0.0


def test_the_sampler_reads_this_machine_without_error():
    sampler = ComputeSampler(gpu=True)
    sampler.sample(time.time())
    sampler.sample(time.time() + 0.5)
    assert sampler.gpu_status.startswith("GPU")
    for address in sampler.addresses():
        u = sampler.usage(address)
        assert u is None or (u.cpu_cores >= 0 and u.cpu_limit_cores > 0 and u.processes >= 1)


def test_gpu_path_reads_nvml_where_a_gpu_is_present():
    sampler = ComputeSampler(gpu=True)
    if sampler.gpu is None or not sampler.gpu.ready:
        pytest.skip(sampler.gpu_status)
    usage = sampler.gpu.per_process()
    assert all(u >= 0 and m >= 0 for u, m in usage.values())


# ------------------------------------------------------------------------------------------------ live, root
needs = missing_tools("ip", "tcpdump", "curl")

PUSHER = r'''
import os, random, socket, sys, time
host, port, every = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
srv = socket.create_server((host, port))
srv.settimeout(90)
conn, _ = srv.accept()
conn.settimeout(0.05)
rng = random.Random(7)
end = time.time() + 80
while time.time() < end:
    try:
        conn.sendall(os.urandom(170 + rng.randint(0, 12)))
    except OSError:
        break
    stop = time.time() + every
    while time.time() < stop:
        try:
            if not conn.recv(4096):
                end = 0
                break
        except socket.timeout:
            pass
'''

WORKER = r'''
import os, socket, sys, time
conn = socket.create_connection((sys.argv[1], int(sys.argv[2])))
end, k = time.time() + float(sys.argv[3]), 0
conn.settimeout(1.0)
while time.time() < end:
    try:
        if conn.recv(4096):
            k += 1
            if k % 3 == 0:
                conn.sendall(os.urandom(140))
    except socket.timeout:
        pass
conn.close()
'''


@contextlib.contextmanager
def busy_cgroup(lab, ns: str, name: str):
    """A cgroup v2 group holding two processes that keep the CPU busy inside namespace `ns` (two, so that the
    sandbox stays above half a core on a loaded two-core test machine)."""
    mount = ComputeSampler(gpu=False).cgroup2
    if mount is None:
        pytest.skip("no cgroup v2 hierarchy is mounted")
    group = Path(mount) / name
    group.mkdir()
    procs = [lab.popen(ns, sys.executable, "-c", "while True: pass") for _ in range(2)]
    try:
        for proc in procs:
            (group / "cgroup.procs").write_text(str(proc.pid))
        yield "/" + name
    finally:
        for proc in procs:
            proc.kill()
            proc.wait()
        for _ in range(50):
            with contextlib.suppress(OSError):
                group.rmdir()
                break
            time.sleep(0.1)


@pytest.mark.root
@pytest.mark.skipif(os.geteuid() != 0, reason="namespaces and cgroups need root")
@pytest.mark.skipif(bool(needs), reason=f"missing tools: {', '.join(needs)}")
def test_watch_joins_a_busy_cgroup_to_its_rhythmic_flow(tmp_path):
    import lab
    from test_watch import Watcher, _add_sandbox, _extra_namespaces

    far = "198.18.0.9"  # an address the test's rules do not allow (lab rules allow 198.18.0.2/31)
    quiet_ip = "10.77.0.6"
    rules = tmp_path / "rules.toml"
    rules.write_text((LAB_CAPTURES / "rules.toml").read_text().replace('cidrs = ["198.18.0.2/31"]',
                                                                       'cidrs = ["198.18.0.2/32"]'))
    with lab.topology() as L, _extra_namespaces(L) as extra:
        quiet_ns, _port = _add_sandbox(lab, L, "quiet", quiet_ip)
        extra.append(quiet_ns)
        L.run(L.out, "ip", "addr", "add", f"{far}/24", "dev", "eth0")
        proc = L.popen(L.gw, sys.executable, "-m", "egressguard", "watch", "-i", "br0", "--no-dashboard",
                       "--rules", str(rules), "--metrics", "127.0.0.1:9479", stdout=subprocess.PIPE,
                       stderr=subprocess.PIPE, text=True, cwd=REPO)
        watcher = Watcher(proc)
        servers = []
        try:
            assert watcher.ready.wait(120), "\n".join(watcher.stderr)
            www = tmp_path / "www"
            www.mkdir()
            (www / "model.bin").write_bytes(os.urandom(3 << 20))
            with busy_cgroup(L, L.sbx, f"eg{L.tag}-busy") as group:
                for port in (7443, 7444):
                    servers.append(L.popen(L.out, sys.executable, "-c", PUSHER, far, str(port), "2.0"))
                servers.append(L.popen(L.out, sys.executable, "-m", "http.server", "8080", "--bind", far,
                                       "--directory", str(www), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
                time.sleep(1.0)
                clients = [L.popen(ns, sys.executable, "-c", WORKER, far, str(port), "60")
                           for ns, port in ((L.sbx, 7443), (quiet_ns, 7444))]
                # ordinary work of a busy sandbox: a slow download (curl, rate-limited: ~55 s) from the same host
                clients.append(L.popen(L.sbx, "curl", "-s", "-o", "/dev/null", "--limit-rate", "56k",
                                       f"http://{far}:8080/model.bin"))
                hit = watcher.wait_for(lambda r: r["kind"] == "mining" and r["src_ip"] == lab.SANDBOX_IP, 75)
                time.sleep(1.0)  # the exporter reads the monitor's view, refreshed twice a second
                metrics = L.run(L.gw, "curl", "-s", "http://127.0.0.1:9479/metrics", check=False).stdout
                for c in clients:
                    c.wait(timeout=70)
        finally:
            for p in servers:
                p.kill()
            proc.send_signal(2)
            proc.wait(timeout=60)
        assert hit is not None, "no mining finding for the busy sandbox:\n" + "\n".join(watcher.stderr[-20:]) + \
            "\n" + "\n".join(str(r) for _, r in watcher.findings)
        record = hit[1]
        assert "C1" in record["mining"]["signals"] and record["severity"] == "medium"
        assert record["compute"]["source"].startswith("cgroup:" + group) and record["compute"]["cpu_cores"] >= 0.5
        assert record["mining"]["compute"]["busy_for_s"] >= 30
        quiet = [r for _, r in watcher.findings if r["kind"] == "mining" and r["src_ip"] == quiet_ip]
        assert quiet == [], "the idle sandbox with the same flow must not be called a miner"
        cpu = [float(line.split()[-1]) for line in metrics.splitlines()
               if line.startswith('egressguard_sandbox_cpu_cores{sandbox="lab-sandbox"}')]
        assert cpu and cpu[0] >= 0.5, metrics[-2000:]
        download = [r for _, r in watcher.findings if r["kind"] == "mining" and r["dst_port"] == 8080]
        assert download == [], "a busy sandbox's download is no pool"
