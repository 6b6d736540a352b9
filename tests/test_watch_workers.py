"""`egressguard watch --workers N`: the kernel fanout program that shards traffic by sandbox, and the worker pool.

1. The classic-BPF program (capture/fanout.py) against its plain twin (`expected_key`, the rule written out), run by
   a small cBPF interpreter on random addresses: no privileges needed.
2. The same program in the kernel (root): real frames sent over a veth pair in a namespace this test creates, read
   by N member sockets of one fanout group, both on the receiving side (frames enter the stack) and on the sending
   side (frames leave it): each frame must reach the member the twin names, and both directions of a sandbox's
   flows, its DNS to the gateway included, must reach the same member.
3. `watch --workers 2` on the lab bridge with three sandboxes (root, OpenSSH): a reverse SSH tunnel is reported
   within 20 s and once while another sandbox fetches web pages; per-worker packet counters in the metrics; a worker
   killed with SIGKILL is reported and restarted, and the restarted worker (reading the same ring) reports a mining
   session; SIGTERM ends every process. All traffic stays inside the namespaces the test creates.
"""
import contextlib
import ipaddress
import json
import os
import random
import re
import signal
import socket
import struct
import subprocess
import sys
import threading
import time

import pytest

from test_watch import Watcher as BaseWatcher
from conftest import LAB_CAPTURES, REPO, missing_tools
from egressguard.capture import fanout
from egressguard.capture.fanout import default_inside, shard_mix, shard_program
from egressguard.netaddr import parse_network

sys.path.insert(0, str(LAB_CAPTURES))

GATEWAY = "10.77.0.1"
RESOLVER = "10.77.0.53"  # a resolver in another namespace, named in the rules' `resolvers`
SANDBOXES = ["10.77.0.2", "10.77.0.3", "10.77.0.4", "10.77.0.9", "100.64.3.7", "fd00:77::5", "fd00:77::6"]
OUTSIDE = ["198.18.0.2", "93.184.216.34", "2001:db8::80", "2606:4700::1111"]


# ---------------------------------------------------------------- the rule, written out, and a cBPF interpreter

def expected_key(src: str, dst: str, services: list[str], inside: list[str]) -> int:
    """The sandbox-side key of the module docstring of capture/fanout.py, from addresses as text."""
    s, d = ipaddress.ip_address(src), ipaddress.ip_address(dst)
    within = lambda a, nets: any(a.version == n.version and a in n for n in nets)  # noqa: E731
    svc = [ipaddress.ip_network(x) for x in services]
    ins = [ipaddress.ip_network(x) for x in inside]
    if within(s, svc):
        key = d
    elif within(d, svc):
        key = s
    elif within(s, ins):
        key = min(s, d, key=lambda a: int(a) & 0xFFFFFFFF) if within(d, ins) else s
    else:
        key = d
    return shard_mix(int(key) & 0xFFFFFFFF)


def run_cbpf(program: list[tuple], net: bytes, protocol: int) -> int:
    """Classic BPF as the kernel runs it for a fanout group (net/core/filter.c), for the opcodes the shard program
    uses; `net` is the packet from its network header on, `protocol` skb->protocol."""
    a = x = 0
    mem = [0] * 16
    pc = 0
    while True:
        code, jt, jf, k = program[pc]
        pc += 1
        if code == fanout.LD_H_ABS and k == fanout.SKF_AD_PROTOCOL_K:
            a = protocol
        elif code == fanout.LD_W_ABS:
            off = (k + 0x100000) & 0xFFFFFFFF  # SKF_NET_OFF + off
            if off + 4 > len(net):
                return 0  # a load past the packet ends the program with 0
            a = int.from_bytes(net[off:off + 4], "big")
        elif code == fanout.LD_MEM:
            a = mem[k]
        elif code == fanout.LDX_MEM:
            x = mem[k]
        elif code == fanout.ST:
            mem[k] = a
        elif code == fanout.AND_K:
            a &= k
        elif code == fanout.RSH_K:
            a >>= k
        elif code == fanout.XOR_X:
            a ^= x
        elif code == fanout.TAX:
            x = a
        elif code == fanout.JA:
            pc += k
        elif code == fanout.JEQ_K:
            pc += jt if a == k else jf
        elif code == fanout.JGT_X:
            pc += jt if a > x else jf
        elif code == fanout.RET_A:
            return a
        elif code == fanout.RET_K:
            return k
        else:
            raise AssertionError(f"opcode {code:#x} not expected in the shard program")


def ip_header(src: str, dst: str, ident: int, proto: int = 17, payload: bytes = b"") -> tuple[bytes, int]:
    """An IPv4 or IPv6 header (and payload) from src to dst, and its ethertype."""
    s, d = ipaddress.ip_address(src), ipaddress.ip_address(dst)
    if s.version == 4:
        return struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(payload), ident, 0, 64, proto, 0, s.packed,
                           d.packed) + payload, 0x0800
    return struct.pack("!IHBB16s16s", 0x60000000 | ident, len(payload), proto, 64, s.packed, d.packed) + payload, 0x86DD


def udp(sport: int, dport: int, data: bytes = b"") -> bytes:
    return struct.pack("!HHHH", sport, dport, 8 + len(data), 0) + data


def _ranges(texts: list[str]) -> list[tuple[int, int]]:
    return [parse_network(t) for t in texts]


SERVICES = [GATEWAY + "/32", "fe80::1/128", RESOLVER + "/32"]


def test_program_picks_the_sandbox_side_address_as_the_rule_says():
    program = shard_program(_ranges(SERVICES), default_inside())
    inside = list(fanout.DEFAULT_INSIDE)
    rng = random.Random(15)
    peers = SANDBOXES + OUTSIDE + [GATEWAY, RESOLVER, "10.1.2.3", "172.20.0.9", "192.168.1.1"]
    v4 = [p for p in peers if ":" not in p] + [str(ipaddress.IPv4Address(rng.getrandbits(32))) for _ in range(300)]
    v6 = [p for p in peers if ":" in p] + ["fe80::1"] + [str(ipaddress.IPv6Address(rng.getrandbits(128)))
                                                          for _ in range(300)]
    for family in (v4, v6):
        for _ in range(3000):
            src, dst = rng.choice(family), rng.choice(family)
            net, proto = ip_header(src, dst, 1, payload=udp(1000, 53))
            assert run_cbpf(program, net, proto) == expected_key(src, dst, SERVICES, inside), (src, dst)


def test_both_directions_and_dns_to_the_gateway_share_a_key():
    program = shard_program(_ranges(SERVICES), default_inside())

    def key(src, dst):
        net, proto = ip_header(src, dst, 1, payload=udp(40000, 53))
        return run_cbpf(program, net, proto)

    for sandbox in SANDBOXES:
        own = shard_mix(int(ipaddress.ip_address(sandbox)) & 0xFFFFFFFF)
        gateway = GATEWAY if ":" not in sandbox else "fe80::1"
        for other in [gateway, RESOLVER if ":" not in sandbox else "fe80::1"] + [o for o in OUTSIDE
                                                                                if (":" in o) == (":" in sandbox)]:
            assert key(sandbox, other) == key(other, sandbox) == own, (sandbox, other)
    # sandbox to sandbox: one key for both directions (the smaller address's)
    assert key("10.77.0.2", "10.77.0.9") == key("10.77.0.9", "10.77.0.2") == shard_mix(0x0A4D0002)
    # not IP (ARP) and a packet cut inside its header: member 0
    assert run_cbpf(program, b"\x00\x01\x08\x00\x06\x04\x00\x01", 0x0806) == 0
    assert run_cbpf(program, ip_header("10.77.0.2", "198.18.0.2", 1)[0][:14], 0x0800) == 0


def test_sandbox_networks_from_the_rules_replace_the_default():
    program = shard_program(_ranges([GATEWAY + "/32"]), _ranges(["198.18.0.0/15"]))
    net, proto = ip_header("198.18.0.7", "10.77.0.2", 1)
    assert run_cbpf(program, net, proto) == shard_mix(int(ipaddress.ip_address("198.18.0.7")))
    net, proto = ip_header("10.77.0.2", "198.18.0.7", 1)
    assert run_cbpf(program, net, proto) == shard_mix(int(ipaddress.ip_address("198.18.0.7")))


# ---------------------------------------------------------------- the program in the kernel

def _in_namespace(name: str, fn, *args):
    """Run fn(*args) in a thread that joined network namespace `name` (sockets keep the namespace they are made in)."""
    import ctypes

    out: dict = {}

    def body():
        libc = ctypes.CDLL(None, use_errno=True)
        fd = os.open(f"/var/run/netns/{name}", os.O_RDONLY)
        try:
            if libc.setns(fd, 0x40000000) != 0:  # CLONE_NEWNET
                raise OSError(ctypes.get_errno(), "setns")
        finally:
            os.close(fd)
        try:
            out["value"] = fn(*args)
        except BaseException as exc:  # noqa: BLE001 - re-raised in the caller
            out["error"] = exc

    t = threading.Thread(target=body)
    t.start()
    t.join(120)
    if "error" in out:
        raise out["error"]
    return out["value"]


@pytest.fixture
def veth_namespace():
    ns = f"egfo{os.getpid() % 100000}"
    cmds = [["netns", "add", ns], ["-n", ns, "link", "add", "v0", "type", "veth", "peer", "name", "v1"],
            ["-n", ns, "addr", "add", GATEWAY + "/24", "dev", "v1"],
            ["-n", ns, "addr", "add", "fd00:77::1/64", "dev", "v1", "nodad"]]
    try:
        for cmd in cmds:
            subprocess.run(["ip", *cmd], check=True, capture_output=True)
        subprocess.run(["ip", "netns", "exec", ns, "sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=0"],
                       capture_output=True)
        for dev in ("v0", "v1", "lo"):
            subprocess.run(["ip", "-n", ns, "link", "set", dev, "up"], check=True, capture_output=True)
        # a veth drops what is sent before both ends have carrier: wait until the kernel says they are up
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            links = subprocess.run(["ip", "-n", ns, "-o", "link", "show"], capture_output=True, text=True).stdout
            if all(f"{dev}@" in links and "state UP" in line for dev in ("v0", "v1")
                   for line in links.splitlines() if f" {dev}@" in line):
                break
            time.sleep(0.05)
        yield ns
    finally:
        subprocess.run(["ip", "netns", "del", ns], capture_output=True)


def _frames() -> list[tuple[bytes, str, str]]:
    """(Ethernet frame, src, dst): each sandbox to the outside and back, DNS to the gateway and the resolver and
    back, sandbox to sandbox both ways; the IP id / flow label carries the frame's number."""
    pairs = []
    for sandbox in SANDBOXES:
        v6 = ":" in sandbox
        for other in ([o for o in OUTSIDE if (":" in o) == v6]
                      + ([GATEWAY, RESOLVER] if not v6 else ["fd00:77::1"])):
            pairs += [(sandbox, other), (other, sandbox)]
    pairs += [("10.77.0.2", "10.77.0.3"), ("10.77.0.3", "10.77.0.2"), ("fd00:77::5", "fd00:77::6"),
              ("fd00:77::6", "fd00:77::5")]
    out = []
    for i, (src, dst) in enumerate(pairs):
        net, proto = ip_header(src, dst, 0x100 + i, payload=udp(40000 + i, 53, b"q"))
        out.append((b"\x02\x00\x00\x00\x00\x02\x02\x00\x00\x00\x00\x01" + struct.pack("!H", proto) + net, src, dst))
    return out


def _frame_number(frame: bytes) -> int | None:
    ethertype = frame[12:14]
    if ethertype == b"\x08\x00":
        return struct.unpack_from("!H", frame, 18)[0] - 0x100
    if ethertype == b"\x86\xdd":
        return (struct.unpack_from("!I", frame, 14)[0] & 0xFFFFF) - 0x100
    return None


def _members_see(workers: int, iface: str, send_on: str, frames: list[bytes]) -> dict[int, int]:
    """Open a fanout group of `workers` members on `iface` (program built from the namespace's own addresses of
    v1 and the resolver), send the frames on `send_on`, return frame number -> member that received it."""
    services = [(a, a) for a in fanout.interface_addresses(["v1"])] + [parse_network(RESOLVER + "/32")]
    program = shard_program(services, default_inside())
    members, ports = fanout.open_group(iface, 0, workers, program, None, 65535, 1 << 20, False)
    captures = [fanout.MemberCapture([m]) for m in members]
    try:
        for cap in captures:
            cap.open()
        sender = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
        sender.bind((send_on, 0))
        for frame in frames:
            sender.send(frame)
        sender.close()
        seen: dict[int, int] = {}
        readers = [cap.chunks(0.05) for cap in captures]
        deadline = time.monotonic() + 10.0  # the block retire timer hands a partly filled block over within 20 ms
        while time.monotonic() < deadline and len(seen) < len(frames):
            for w, chunks in enumerate(readers):
                chunk = next(chunks)
                for row in chunk.frames:
                    data = bytes(chunk.buf[row["offset"]:row["offset"] + row["caplen"]])
                    n = _frame_number(data)
                    if n is not None and 0 <= n < len(frames) and data == frames[n]:
                        assert n not in seen, f"frame {n} reached two members"
                        seen[n] = w
        return seen
    finally:
        for cap in captures:
            cap.close()
        for port in ports:
            port.release()


@pytest.mark.root
@pytest.mark.skipif(os.geteuid() != 0, reason="fanout sockets and namespaces need root")
@pytest.mark.parametrize("workers", [2, 3])
@pytest.mark.parametrize("side", ["received", "sent"])
def test_kernel_sends_each_frame_to_the_member_of_its_sandbox(veth_namespace, workers, side):
    frames = _frames()
    iface, send_on = ("v1", "v0") if side == "received" else ("v0", "v0")
    seen = _in_namespace(veth_namespace, _members_see, workers, iface, send_on, [f for f, _, _ in frames])
    assert sorted(seen) == list(range(len(frames)))
    services = [GATEWAY + "/32", "fd00:77::1/128", RESOLVER + "/32"]
    by_sandbox: dict[str, set[int]] = {}
    for n, (_, src, dst) in enumerate(frames):
        assert seen[n] == expected_key(src, dst, services, list(fanout.DEFAULT_INSIDE)) % workers, (src, dst)
        for end in (src, dst):
            if end in SANDBOXES:
                by_sandbox.setdefault(end, set())
        sandbox = src if src in SANDBOXES and dst not in SANDBOXES else dst if dst in SANDBOXES and src not in \
            SANDBOXES else None
        if sandbox is not None:
            by_sandbox[sandbox].add(seen[n])
    assert all(len(members) == 1 for members in by_sandbox.values()), by_sandbox  # every flow, both ways, DNS too
    assert len({m for members in by_sandbox.values() for m in members}) > 1  # and the sandboxes are spread out


# ---------------------------------------------------------------- watch --workers 2 on the lab bridge

needs = missing_tools("ip", "tcpdump", "ssh", "ssh-keygen", "sshd")
WEB_IP, MINER_IP = "10.77.0.3", "10.77.0.4"
FINDING_WITHIN_S = 20.0
SEVERITIES = ["low", "medium", "high", "critical"]


def _member(address: str, workers: int = 2) -> int:
    return shard_mix(int(ipaddress.ip_address(address)) & 0xFFFFFFFF) % workers


class Watcher(BaseWatcher):
    """test_watch's watcher (JSON lines with arrival times, stderr lines), with what the worker pool prints."""

    @property
    def records(self) -> list[tuple[float, dict]]:
        return self.findings

    def wait_line(self, pattern: str, timeout: float) -> re.Match | None:
        deadline = time.time() + timeout
        while time.time() < deadline:
            for line in list(self.stderr):
                found = re.search(pattern, line)
                if found:
                    return found
            time.sleep(0.2)
        return None

    def worker_pids(self) -> dict[int, list[int]]:
        out: dict[int, list[int]] = {}
        for line in list(self.stderr):
            found = re.search(r"worker (\d+) started \(pid (\d+)\)", line)
            if found:
                out.setdefault(int(found[1]), []).append(int(found[2]))
        return out


def _children(pid: int) -> set[int]:
    out = set()
    with contextlib.suppress(OSError):
        for task in os.listdir(f"/proc/{pid}/task"):
            with contextlib.suppress(OSError):
                out |= {int(c) for c in open(f"/proc/{pid}/task/{task}/children").read().split()}
    return out


def _alive(pid: int) -> bool:
    try:
        state = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def _scrape(lab, port: int) -> str:
    return lab.run(lab.gw, sys.executable, "-c", f"import urllib.request; print(urllib.request.urlopen("
                                                 f"'http://127.0.0.1:{port}/metrics', timeout=10).read().decode())"
                   ).stdout


def _metric(text: str, name: str, **labels) -> float | None:
    for line in text.splitlines():
        if line.startswith(name + "{") and all(f'{k}="{v}"' in line for k, v in labels.items()):
            return float(line.rsplit(" ", 1)[1])
    return None


@pytest.fixture(scope="module")
def session(tmp_path_factory):
    if os.geteuid() != 0:
        pytest.skip("watch needs raw sockets and the test creates namespaces: root")
    if needs:
        pytest.skip(f"missing tools: {', '.join(needs)}")
    import lab
    import lab_mining
    from test_watch import _add_sandbox, _extra_namespaces

    assert _member(lab.SANDBOX_IP) != _member(WEB_IP) and _member(MINER_IP) == _member(lab.SANDBOX_IP)
    tmp = tmp_path_factory.mktemp("workers")
    rules = tmp / "rules.toml"
    text = (LAB_CAPTURES / "rules.toml").read_text()
    rules.write_text(text.replace('[sandboxes]\n', f'[sandboxes]\n"{WEB_IP}" = "web-agent"\n'
                                                   f'"{MINER_IP}" = "miner-agent"\n', 1))
    alerts = tmp / "alerts.jsonl"
    port = 19000 + os.getpid() % 1000
    result: dict = {"metrics_port": port}
    with lab.topology() as L, _extra_namespaces(L) as extra:
        web_ns, _ = _add_sandbox(lab, L, "web", WEB_IP)
        miner_ns, _ = _add_sandbox(lab, L, "mine", MINER_IP)
        extra += [web_ns, miner_ns]
        proc = L.popen(L.gw, sys.executable, "-m", "egressguard", "watch", "-i", "br0", "--no-dashboard",
                       "--workers", "2", "--rules", str(rules), "--alerts", str(alerts), "--metrics",
                       f"127.0.0.1:{port}", "--evidence", str(tmp / "evidence"), stdout=subprocess.PIPE,
                       stderr=subprocess.PIPE, text=True, cwd=REPO)
        watcher = Watcher(proc)
        children: set[int] = set()
        try:
            assert watcher.ready.wait(180), "\n".join(watcher.stderr)
            result["ready_pids"] = watcher.worker_pids()
            time.sleep(1.0)
            www = lab._web_root(L)
            with lab.background(L, L.out, sys.executable, "-m", "http.server", "8080", "--bind", lab.OUTSIDE_IP,
                                "--directory", str(www), ready_port=8080):
                # 1. other traffic: the web agent fetches pages all along, on the other worker
                fetch = L.popen(web_ns, sys.executable, "-c", lab.PY_HTTP_FETCH, lab.OUTSIDE_IP, "8080", "12",
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                # 2. the reverse tunnel from the lab sandbox; the outside logs back in through it
                with lab.sshd(L, L.out), lab.sshd(L, L.sbx):
                    result["tunnel_start"] = time.time()
                    with lab.ssh_client(L, L.sbx, "-N", "-p", "443", "-R", "2222:127.0.0.1:22",
                                        f"root@{lab.OUTSIDE_IP}"):
                        lab.type_into(L, L.out, lab.ssh_args(L, "-tt", "-p", "2222", "root@127.0.0.1"),
                                      lab.SHELL_LINES[:3], seed=5)
                        result["tunnel"] = watcher.wait_for(lambda r: r["kind"] == "reverse_ssh_tunnel", 30)
                        time.sleep(6.0)  # three more judging rounds: the tunnel must not be said again
                result["fetch_exit"] = fetch.wait(timeout=60)
            time.sleep(2.0)
            result["metrics_before"] = _scrape(L, port)
            # 3. kill the worker of the lab sandbox and the miner
            victim = _member(lab.SANDBOX_IP)
            result["victim"] = victim
            result["victim_pid"] = watcher.worker_pids()[victim][-1]
            os.kill(result["victim_pid"], signal.SIGKILL)
            result["died_line"] = watcher.wait_line(rf"worker {victim} \(pid {result['victim_pid']}\) killed by "
                                                    r"signal 9; restarting", 15)
            result["restarted"] = watcher.wait_line(rf"worker {victim} started \(pid (?!{result['victim_pid']}\))"
                                                    r"\d+\)", 15)
            time.sleep(8.0)  # the new process loads its kernels (from numba's cache) and resumes the ring
            # 4. the restarted worker reports a mining session of its sandbox
            with lab_mining._pool_address(L), lab_mining._server(L, "cryptonote", 14444):
                result["mining_start"] = time.time()
                L.run(miner_ns, *lab_mining._peer(L, miner_ns, "client", "cryptonote", lab_mining.POOL_IP, 14444,
                                                  duration=10.0), timeout=60, check=False)
            result["mining"] = watcher.wait_for(lambda r: r["kind"] == "mining", 30)
            result["metrics_after"] = _scrape(L, port)
            children = _children(proc.pid)
        finally:
            proc.send_signal(signal.SIGTERM)
            try:
                result["exit"] = proc.wait(timeout=90)
            except subprocess.TimeoutExpired:
                proc.kill()
                result["exit"] = "hung"
        deadline = time.time() + 10
        while time.time() < deadline and any(_alive(pid) for pid in children):
            time.sleep(0.2)
        result["children"] = children
        result["left"] = [pid for pid in children if _alive(pid)]
        time.sleep(0.3)
    result.update(records=[r for _, r in watcher.records], stderr=watcher.stderr, alerts=alerts,
                  pids=watcher.worker_pids())
    return result


@pytest.mark.root
def test_reverse_tunnel_is_reported_within_seconds_and_once(session):
    assert session["tunnel"] is not None, session["stderr"]
    at, record = session["tunnel"]
    assert at - session["tunnel_start"] < FINDING_WITHIN_S
    assert record["src_ip"] == "10.77.0.2" and record["sandbox"] == "lab-sandbox" and record["interface"] == "br0"
    # one gate for every worker: said once, and again only when it got worse (the gate's rule, as without workers)
    tunnels = [(SEVERITIES.index(r["severity"]), r["score"]) for r in session["records"]
               if r["kind"] == "reverse_ssh_tunnel"]
    assert tunnels[0][0] >= SEVERITIES.index("high")
    assert all(b[0] > a[0] or b[1] >= a[1] + 0.1 - 1e-9 for a, b in zip(tunnels, tunnels[1:])), tunnels
    assert session["fetch_exit"] == 0
    assert not [r for r in session["records"] if r["src_ip"] == WEB_IP]


@pytest.mark.root
def test_each_worker_writes_the_evidence_of_its_findings(session):
    _, record = session["tunnel"]
    path = record["evidence_pcap"]
    assert os.path.dirname(path) == str(session["alerts"].parent / "evidence") and record["evidence_packets"] > 0
    count = subprocess.run(["tcpdump", "-nr", path], capture_output=True, text=True)
    assert count.returncode == 0 and len(count.stdout.splitlines()) >= record["evidence_packets"]
    result = subprocess.run([sys.executable, "-m", "egressguard", "analyze", "--format", "jsonl", path],
                            capture_output=True, text=True, cwd=REPO)
    kinds = {json.loads(line).get("kind") for line in result.stdout.splitlines()}
    assert "reverse_ssh_tunnel" in kinds, result.stdout[-2000:]


@pytest.mark.root
def test_each_worker_reads_its_own_share_of_the_bridge(session):
    text = session["metrics_before"]
    counts = [_metric(text, "egressguard_packets_total", interface="br0", worker=w) for w in (0, 1)]
    assert all(c is not None and c > 50 for c in counts), counts  # the tunnel on one worker, the web on the other
    assert _metric(text, "egressguard_kernel_drops_total", interface="br0", worker=0) == 0


@pytest.mark.root
def test_a_killed_worker_is_reported_and_restarted_and_reads_on(session):
    assert session["died_line"] is not None, session["stderr"]
    assert session["restarted"] is not None, session["stderr"]
    assert _metric(session["metrics_after"], "egressguard_worker_restarts_total", worker=session["victim"]) == 1
    assert session["mining"] is not None, session["stderr"]
    at, record = session["mining"]
    assert at - session["mining_start"] < FINDING_WITHIN_S and record["src_ip"] == MINER_IP


@pytest.mark.root
def test_sigterm_stops_every_process_and_the_alerts_file_has_every_finding(session):
    assert session["exit"] == 0, session["stderr"]
    assert any("stopped:" in line for line in session["stderr"])
    pids = {pid for ps in session["pids"].values() for pid in ps}
    assert len(pids) == 3 and pids <= session["children"] | {session["victim_pid"]}
    assert session["left"] == [], session["left"]
    alerts = [json.loads(line) for line in session["alerts"].read_text().splitlines()]
    assert alerts == session["records"] and alerts
