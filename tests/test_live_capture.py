"""Live capture for real (root only): packet sockets with TPACKET_V3 rings, in network namespaces this test creates.

Topology (namespace names carry the pid): namespace A, the "sandbox" (veth a0, 10.77.0.1) -- b0 [bridge br0 in
namespace B] b1 -- c0 (namespace C, 10.77.0.2). Captures run in B, in a thread that joined B with setns (a socket
keeps the namespace it was created in); frames are sent from A with AF_PACKET sockets, ping and a tun device.
Privilege, signal and sysfs checks run as `ip netns exec` subprocesses. Nothing here touches the host's interfaces.
"""
import concurrent.futures
import ctypes
import fcntl
import json
import os
import shutil
import socket
import struct
import subprocess
import sys
import threading
import time
from dataclasses import dataclass

import numpy as np
import pytest

from conftest import REPO
from egressguard.capture import LiveCapture
from egressguard.errors import CaptureError

CLONE_NEWNET = 0x40000000
ETHERTYPE_TEST = b"\x88\xb5"  # IEEE 802 Local Experimental Ethertype 1: nothing else on the link uses it
ETHERTYPE_OTHER = b"\x88\xb6"  # Local Experimental Ethertype 2
SRC_MAC = bytes.fromhex("020000000a01")
TUNSETIFF = 0x400454CA  # include/uapi/linux/if_tun.h
IFF_TUN = 0x0001
IFF_NO_PI = 0x1000


def root_only(test):
    """Mark a test as needing root and iproute2, and skip it cleanly without them."""
    test = pytest.mark.skipif(shutil.which("ip") is None, reason="needs iproute2 (ip netns)")(test)
    test = pytest.mark.skipif(os.geteuid() != 0, reason="live capture in network namespaces needs root")(test)
    return pytest.mark.root(test)


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=30)


def _join_netns(name: str) -> None:
    """Move the calling thread (only) into network namespace `name`."""
    libc = ctypes.CDLL(None, use_errno=True)
    fd = os.open(f"/var/run/netns/{name}", os.O_RDONLY)
    try:
        if libc.setns(fd, CLONE_NEWNET) != 0:
            raise OSError(ctypes.get_errno(), f"setns {name}")
    finally:
        os.close(fd)


@dataclass
class Lab:
    a: str
    b: str
    c: str
    threads: dict

    def run(self, ns: str, fn, *args):
        """Run fn(*args) in a thread that lives in namespace `ns`; return its result."""
        return self.threads[ns].submit(fn, *args).result(timeout=60)

    def sh(self, ns: str, *cmd: str) -> subprocess.CompletedProcess:
        env = dict(os.environ, PYTHONPATH=str(REPO))  # the working tree's egressguard, not an installed one
        return subprocess.run(["ip", "netns", "exec", ns, *cmd], capture_output=True, text=True, timeout=60, env=env)


@pytest.fixture(scope="module")
def lab():
    if os.geteuid() != 0 or shutil.which("ip") is None:
        pytest.skip("needs root and iproute2")
    tag = f"egc{os.getpid()}"
    names = [f"{tag}a", f"{tag}b", f"{tag}c"]
    threads = {}
    try:
        for ns in names:
            _ip("netns", "add", ns)
            subprocess.run(["ip", "netns", "exec", ns, "sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1",
                            "net.ipv6.conf.default.disable_ipv6=1"], capture_output=True)
            _ip("-n", ns, "link", "set", "lo", "up")
        a, b, c = names
        _ip("link", "add", "a0", "netns", a, "type", "veth", "peer", "name", "b0", "netns", b)
        _ip("link", "add", "c0", "netns", c, "type", "veth", "peer", "name", "b1", "netns", b)
        _ip("-n", b, "link", "add", "br0", "type", "bridge")
        for port in ("b0", "b1"):
            _ip("-n", b, "link", "set", port, "master", "br0")
        _ip("-n", a, "addr", "add", "10.77.0.1/24", "dev", "a0")
        _ip("-n", c, "addr", "add", "10.77.0.2/24", "dev", "c0")
        for ns, dev in ((a, "a0"), (b, "b0"), (b, "b1"), (b, "br0"), (c, "c0")):
            _ip("-n", ns, "link", "set", dev, "up")
        for ns in names:
            threads[ns] = concurrent.futures.ThreadPoolExecutor(1, initializer=_join_netns, initargs=(ns,))
        yield Lab(a, b, c, threads)
    finally:
        for pool in threads.values():
            pool.shutdown(wait=True)
        for ns in names:
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)


def _send_frames(dev: str, frames: list[bytes]) -> None:
    sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
    try:
        sock.bind((dev, 0))
        for frame in frames:
            sock.send(frame)
    finally:
        sock.close()


def _test_frames(n: int, seed: int, ethertype: bytes = ETHERTYPE_TEST) -> list[bytes]:
    """n broadcast frames of sizes 60..1514 B with seeded random payloads (a sequence number first)."""
    rng = np.random.default_rng(seed)
    sizes = rng.integers(60, 1515, n)
    return [b"\xff" * 6 + SRC_MAC + ethertype + i.to_bytes(4, "big") + rng.bytes(int(size) - 18)
            for i, size in enumerate(sizes)]


@dataclass
class Seen:
    data: bytes
    ts_ns: int
    iface: int
    linktype: int
    caplen: int
    wirelen: int


def _capture(lab: Lab, interfaces, send, keep, count: int, timeout_s: float = 5.0, **options):
    """Open a LiveCapture in B, call send() once the sockets are open, collect frames for which keep(bytes) holds
    until `count` of them arrived or timeout_s passed. Returns (frames, interface counters, time before sending)."""
    def body():
        seen = []
        with LiveCapture(interfaces, **options) as live:
            chunks = live.chunks(0.05)
            next(chunks)
            t_send = time.time_ns()
            send()
            deadline = time.monotonic() + timeout_s
            for chunk in chunks:
                for row in chunk.frames:
                    data = bytes(chunk.buf[row["offset"]:row["offset"] + row["caplen"]])
                    if keep(data):
                        seen.append(Seen(data, int(row["ts_ns"]), int(row["iface"]), int(row["linktype"]),
                                         int(row["caplen"]), int(row["wirelen"])))
                if len(seen) >= count or time.monotonic() > deadline:
                    break
            return seen, live.interface_stats(), t_send
    return lab.run(lab.b, body)


def _is_test_frame(data: bytes) -> bool:
    return data[12:14] == ETHERTYPE_TEST


@root_only
@pytest.mark.parametrize("use_ring", [True, False], ids=["tpacket_v3", "recv"])
def test_frames_arrive_byte_exact_in_order_with_kernel_timestamps(lab, use_ring):
    sent = _test_frames(300, seed=6)
    seen, stats, t_send = _capture(lab, ["b0"], lambda: lab.run(lab.a, _send_frames, "a0", sent), _is_test_frame,
                                   len(sent), use_ring=use_ring)
    t_end = time.time_ns()
    assert [s.data for s in seen] == sent
    assert all(s.iface == 0 and s.linktype == 1 and s.caplen == s.wirelen == len(s.data) for s in seen)
    stamps = [s.ts_ns for s in seen]
    assert t_send <= stamps[0] and stamps[-1] <= t_end and stamps == sorted(stamps)
    (counters,) = stats
    assert counters.name == "b0" and counters.up
    assert counters.method == ("tpacket_v3" if use_ring else "recv")
    assert counters.packets >= len(sent) and counters.bytes >= sum(map(len, sent))
    assert counters.kernel_drops == 0


@root_only
@pytest.mark.parametrize("use_ring", [True, False], ids=["tpacket_v3", "recv"])
def test_vlan_tag_taken_out_by_the_kernel_is_put_back(lab, use_ring):
    frame = b"\xff" * 6 + SRC_MAC + b"\x81\x00\x20\x2a" + ETHERTYPE_TEST + bytes(range(60))  # PCP 1, VLAN 42
    seen, _, _ = _capture(lab, ["b0"], lambda: lab.run(lab.a, _send_frames, "a0", [frame]),
                          lambda d: d[16:18] == ETHERTYPE_TEST or d[12:14] == ETHERTYPE_TEST, 1, use_ring=use_ring)
    assert [(s.data, s.wirelen) for s in seen] == [(frame, len(frame))]


@root_only
def test_snaplen_cuts_long_frames_and_keeps_their_wire_length(lab):
    sent = [f for f in _test_frames(40, seed=7) if len(f) > 200][:10]
    seen, _, _ = _capture(lab, ["b0"], lambda: lab.run(lab.a, _send_frames, "a0", sent), _is_test_frame,
                          len(sent), snaplen=128)
    assert [(s.data, s.caplen, s.wirelen) for s in seen] == [(f[:128], 128, len(f)) for f in sent]


@root_only
def test_bpf_filter_keeps_only_what_it_matches(lab):
    wanted = _test_frames(20, seed=8)
    other = _test_frames(20, seed=9, ethertype=ETHERTYPE_OTHER)
    mixed = [f for pair in zip(wanted, other) for f in pair]
    seen, _, _ = _capture(lab, ["b0"], lambda: lab.run(lab.a, _send_frames, "a0", mixed), lambda d: True,
                          len(mixed), timeout_s=1.5, bpf="ether proto 0x88b5")
    assert [s.data for s in seen] == wanted


@root_only
def test_several_interfaces_at_once_name_each_frame_s_interface(lab):
    def is_echo_request(d: bytes) -> bool:  # IPv4 (no options), ICMP, echo request
        return d[12:14] == b"\x08\x00" and d[23] == 1 and d[34] == 8

    seen, stats, _ = _capture(lab, ["br0", "b0", "b1"], lambda: lab.sh(lab.a, "ping", "-c", "3", "-i", "0.2", "-W",
                                                                       "1", "10.77.0.2"), is_echo_request, 9)
    assert sorted(s.iface for s in seen) == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    by_iface = {i: [s.data for s in seen if s.iface == i] for i in range(3)}
    assert by_iface[0] == by_iface[1] == by_iface[2]  # the bridge forwards the same frames it received on b0
    assert [c.name for c in stats] == ["br0", "b0", "b1"] and all(c.up and c.packets >= 3 for c in stats)


@root_only
@pytest.mark.skipif(not os.path.exists("/dev/net/tun"), reason="no /dev/net/tun")
def test_tun_interface_delivers_raw_ip_frames(lab):
    ipv4_udp = bytes.fromhex("4500002400010000401100000a5800020a580001" "d4310035001000000000000000000000")
    tun = {}

    def create_tun() -> None:  # in B: a tun device stays up (carrier on) while its file is open
        tun["fd"] = os.open("/dev/net/tun", os.O_RDWR)
        fcntl.ioctl(tun["fd"], TUNSETIFF, struct.pack("16sH", b"tun0", IFF_TUN | IFF_NO_PI))
        _ip("-n", lab.b, "link", "set", "tun0", "up")

    lab.run(lab.b, create_tun)
    try:
        seen, stats, _ = _capture(lab, ["tun0"], lambda: os.write(tun["fd"], ipv4_udp),
                                  lambda d: d == ipv4_udp, 1)
    finally:
        os.close(tun["fd"])
    assert [(s.data, s.linktype, s.iface) for s in seen] == [(ipv4_udp, 101, 0)]
    assert stats[0].up and stats[0].method == "tpacket_v3"


@root_only
def test_kernel_drops_are_counted_when_the_ring_overflows(lab):
    def body():
        with LiveCapture(["b0"], ring_bytes=1 << 20) as live:
            sent = _test_frames(3000, seed=10)
            lab.run(lab.a, _send_frames, "a0", [f[:14] + f[14:].ljust(1400, b"\0") for f in sent])
            time.sleep(0.1)  # nothing reads the 1 MiB ring while ~4 MB arrive
            return live.interface_stats()[0]

    counters = lab.run(lab.b, body)
    assert counters.kernel_drops > 0 and counters.freeze_q > 0


@root_only
def test_missing_interface_is_named_with_the_existing_ones(lab):
    with pytest.raises(CaptureError) as caught:
        lab.run(lab.b, lambda: LiveCapture(["b0", "nosuch0"]).open())
    assert str(caught.value).startswith("nosuch0: no such interface (existing: ")
    assert "br0" in str(caught.value) and "lo" in str(caught.value)


@root_only
def test_bad_filter_says_why(lab):
    with pytest.raises(CaptureError) as caught:
        lab.run(lab.b, lambda: LiveCapture(["b0"], bpf="tcp prt 22").open())
    # the reason is libpcap's own words (1.10: "can't parse filter expression: syntax error")
    assert str(caught.value).startswith("b0: bad BPF filter 'tcp prt 22': ") and "syntax error" in str(caught.value)


@root_only
def test_no_permission_as_user_nobody_is_one_clear_message():
    import scapy.arch.linux  # noqa: F401  (the child cannot read the interpreter's files once it is nobody)

    read_end, write_end = os.pipe()
    child = os.fork()
    if child == 0:  # pragma: no cover - runs in the child
        try:
            os.setgroups([])
            os.setgid(65534)
            os.setuid(65534)
            try:
                LiveCapture(["lo"]).open()
                message = "opened"
            except CaptureError as exc:
                message = str(exc)
            os.write(write_end, message.encode())
        finally:
            os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as pipe:
        message = pipe.read().decode()
    os.waitpid(child, 0)
    assert message == "lo: capturing needs root or CAP_NET_RAW (permission denied opening a packet socket)"


def _watch(lab: Lab, interfaces, steps, timeout_s: float = 10.0, **options):
    """Run a capture in B while `steps` (a list of (condition on the interface counters, action)) happen in order:
    each action runs once its condition holds. Returns the test frames seen and how many steps never happened."""
    def body():
        seen, pending = [], list(steps)
        with LiveCapture(interfaces, **options) as live:
            deadline = time.monotonic() + timeout_s
            for chunk in live.chunks(0.05):
                seen += [bytes(chunk.buf[r["offset"]:r["offset"] + r["caplen"]]) for r in chunk.frames]
                if pending and pending[0][0](live.interface_stats()[0]):
                    pending.pop(0)[1]()
                if not pending or time.monotonic() > deadline:
                    break
            return [d for d in seen if _is_test_frame(d)], len(pending)
    return lab.run(lab.b, body)


@root_only
def test_interface_going_down_is_reported_and_capture_resumes_when_it_comes_back(lab):
    before, after = _test_frames(5, seed=11), _test_frames(5, seed=12)
    steps = [
        (lambda c: c.up, lambda: lab.run(lab.a, _send_frames, "a0", before)),
        (lambda c: c.packets >= 5, lambda: _ip("-n", lab.b, "link", "set", "b0", "down")),
        (lambda c: not c.up, lambda: _ip("-n", lab.b, "link", "set", "b0", "up")),
        (lambda c: c.up, lambda: time.sleep(0.2) or lab.run(lab.a, _send_frames, "a0", after)),
        (lambda c: c.packets >= 10, lambda: None),
    ]
    try:
        seen, unfinished = _watch(lab, ["b0"], steps)
    finally:
        _ip("-n", lab.b, "link", "set", "b0", "up")
    assert unfinished == 0 and seen == before + after


@root_only
def test_interface_deleted_and_recreated_is_reopened(lab):
    def create() -> None:
        _ip("link", "add", "e0", "netns", lab.a, "type", "veth", "peer", "name", "d0", "netns", lab.b)
        _ip("-n", lab.a, "link", "set", "e0", "up")
        _ip("-n", lab.b, "link", "set", "d0", "up")

    frames = _test_frames(5, seed=13)
    steps = [
        (lambda c: c.up, lambda: _ip("-n", lab.b, "link", "del", "d0")),
        (lambda c: not c.up, create),
        (lambda c: c.up, lambda: time.sleep(0.2) or lab.run(lab.a, _send_frames, "e0", frames)),
        (lambda c: c.packets >= 5, lambda: None),
    ]
    create()
    try:
        seen, unfinished = _watch(lab, ["d0"], steps)
    finally:
        subprocess.run(["ip", "-n", lab.b, "link", "del", "d0"], capture_output=True)
    assert unfinished == 0 and seen == frames


@root_only
def test_interface_down_at_open_is_captured_once_it_comes_up(lab):
    _ip("link", "add", "g0", "netns", lab.a, "type", "veth", "peer", "name", "f0", "netns", lab.b)
    _ip("-n", lab.a, "link", "set", "g0", "up")
    frames = _test_frames(5, seed=14)
    steps = [
        (lambda c: not c.up, lambda: _ip("-n", lab.b, "link", "set", "f0", "up")),
        (lambda c: c.up, lambda: time.sleep(0.2) or lab.run(lab.a, _send_frames, "g0", frames)),
        (lambda c: c.packets >= 5, lambda: None),
    ]
    try:
        with pytest.raises(CaptureError, match=r"^f0: bad BPF filter 'tcp prt 22': .*syntax error$"):
            lab.run(lab.b, lambda: LiveCapture(["f0"], bpf="tcp prt 22").open())  # checked even while down
        seen, unfinished = _watch(lab, ["f0"], steps)
    finally:
        subprocess.run(["ip", "-n", lab.b, "link", "del", "f0"], capture_output=True)
    assert unfinished == 0 and seen == frames


@root_only
def test_close_from_another_thread_ends_chunks_which_come_every_timeout_without_traffic(lab):
    def body():
        live = LiveCapture(["lo"])
        live.open()
        times, closed_at = [], []
        threading.Timer(0.5, lambda: closed_at.append(time.monotonic()) or live.close()).start()
        cpu_before = time.thread_time()
        for chunk in live.chunks(0.05):
            times.append(time.monotonic())
            assert len(chunk.frames) == 0
        return times, time.monotonic() - closed_at[0], time.thread_time() - cpu_before, live.interface_stats()

    times, ended_after_close_s, cpu_s, stats = lab.run(lab.c, body)  # C's loopback: up, and nothing talks on it
    gaps = np.diff(times)
    assert 5 <= len(times) <= 11 and 0.04 <= np.median(gaps) <= 0.08 and gaps.max() < 0.3
    assert ended_after_close_s < 0.1  # close() wakes the waiting poll
    assert cpu_s < 0.1  # waiting costs no CPU: no busy loop
    assert stats[0].name == "lo" and stats[0].packets == 0


SIGNAL_SCRIPT = """
import signal, time
from egressguard.capture import LiveCapture
live = LiveCapture(["lo"])
live.open()
signal.signal(signal.SIGALRM, lambda *_: live.close())
signal.setitimer(signal.ITIMER_REAL, 0.3)
start = time.monotonic()
chunks = sum(1 for _ in live.chunks(timeout_s=5.0))
print(chunks, time.monotonic() - start, live.interface_stats()[0].up)
"""


@root_only
def test_close_from_a_signal_handler_ends_a_waiting_chunks_loop(lab):
    proc = lab.sh(lab.a, sys.executable, "-c", SIGNAL_SCRIPT)
    chunks, seconds, up = proc.stdout.split()
    assert (chunks, up) == ("0", "False") and 0.25 <= float(seconds) < 1.5, proc.stderr


@root_only
def test_bridge_ports_finds_the_port_a_mac_sits_behind(lab):
    assert lab.sh(lab.a, "ping", "-c", "2", "-i", "0.2", "-W", "1", "10.77.0.2").returncode == 0
    mac = {ns: lab.sh(ns, "cat", f"/sys/class/net/{dev}/address").stdout.strip() for ns, dev in
           ((lab.a, "a0"), (lab.c, "c0"))}
    script = ("import json; from egressguard.capture import bridge_ports as p; "
              "print(json.dumps([p('br0'), p('b0'), p('nosuch0'), p('../br0')]))")
    out = lab.sh(lab.b, sys.executable, "-c", script)  # `ip netns exec` mounts B's own /sys
    on_bridge, on_port, missing, sneaky = json.loads(out.stdout)
    assert on_bridge[str(int(mac[lab.a].replace(":", ""), 16))] == "b0"
    assert on_bridge[str(int(mac[lab.c].replace(":", ""), 16))] == "b1"
    assert on_port == {} and missing == {} and sneaky == {}


DROP_SCRIPT = """
import json, os, socket, time
from egressguard.capture import LiveCapture, drop_privileges
from egressguard.errors import CaptureError
out = {}
for user in ("nosuchuser-egc", "root"):
    try:
        drop_privileges(user)
    except CaptureError as exc:
        out[user] = str(exc)
with LiveCapture(["lo"]) as live:
    drop_privileges("nobody")
    out["ids"] = [os.getresuid(), os.getresgid(), os.getgroups()]
    try:
        drop_privileges("nobody")
    except CaptureError as exc:
        out["again"] = str(exc)
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    chunks = live.chunks(0.05)
    next(chunks)
    udp.sendto(b"after the drop", ("127.0.0.1", 9))
    deadline = time.monotonic() + 5
    for chunk in chunks:
        if any(b"after the drop" in bytes(chunk.buf[r["offset"]:r["offset"] + r["caplen"]]) for r in chunk.frames):
            out["captured"] = True
            break
        if time.monotonic() > deadline:
            break
print(json.dumps(out))
"""


@root_only
def test_drop_privileges_keeps_the_open_sockets_and_cannot_be_undone(lab):
    env = dict(os.environ, PYTHONPATH=str(REPO))
    proc = subprocess.run(["ip", "netns", "exec", lab.a, sys.executable, "-c", DROP_SCRIPT], capture_output=True,
                          text=True, timeout=120, env=env)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["nosuchuser-egc"] == "user nosuchuser-egc: no such user"
    assert out["root"] == "user root: is root: name an unprivileged user to run as"
    assert out["ids"] == [[65534] * 3, [65534] * 3, []]
    assert out["again"] == ("user nobody: not permitted to switch to it (needs root, or CAP_SETUID and "
                            "CAP_SETGID)")
    assert out["captured"] is True


def test_importing_the_capture_stage_does_not_import_scapy():
    code = "import sys, egressguard.capture; print(sorted(m for m in sys.modules if m.startswith('scapy')))"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=60)
    assert proc.stdout.strip() == "[]", proc.stderr


@pytest.mark.parametrize("interfaces, message", [
    ([], "live capture: no interface given"),
    (["a" * 16], f"'{'a' * 16}': not an interface name (1-15 bytes, no '/' or spaces)"),
    (["../lo"], "'../lo': not an interface name (1-15 bytes, no '/' or spaces)"),
    (["eth 0"], "'eth 0': not an interface name (1-15 bytes, no '/' or spaces)"),
    (["lo", "lo"], "lo: interface given twice"),
])
def test_impossible_interface_lists_are_refused_before_any_socket_opens(interfaces, message):
    with pytest.raises(CaptureError) as caught:
        LiveCapture(interfaces)
    assert str(caught.value) == message
