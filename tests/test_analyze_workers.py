"""`analyze --workers N` and `analyze --dask ADDRESS`: sandbox shards in several processes (or on a real Dask
cluster) give the output of one process: the same findings, flows and summaries (compared as sorted sets of JSON
lines), in a deterministic order; the shard key keeps both directions of a flow, and a sandbox's DNS with its other
flows, in one shard; bad input is one line and an exit status."""
import json
import re
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from hypothesis import given, settings, strategies as st

from conftest import LAB_CAPTURES, PUBLIC_CAPTURES, REPO
from egressguard.cli import main
from egressguard.policy.rules import load_rules
from egressguard.schema import PACKET_DTYPE
from egressguard.shards import shard_key, shard_of

CAPTURE_NAME = re.compile(r"\.pcap(ng)?(\.(gz|bz2|xz))?$")


def capture_groups() -> list[tuple[str, Path, list[Path]]]:
    """The lab's captures by folder, each judged by its folder's rules.toml (the lab's internet is RFC 2544)."""
    groups = []
    for rules in sorted(LAB_CAPTURES.rglob("rules.toml")):
        caps = sorted(p for p in rules.parent.iterdir() if p.is_file() and CAPTURE_NAME.search(p.name))
        if caps:
            groups.append((str(rules.parent.relative_to(REPO)), rules, caps))
    return groups


def public_captures() -> list[Path]:
    if not PUBLIC_CAPTURES.is_dir():
        pytest.skip(f"public captures not found (expected under {PUBLIC_CAPTURES})")
    caps = sorted(p for p in PUBLIC_CAPTURES.rglob("*") if p.is_file() and CAPTURE_NAME.search(p.name))
    if not caps:
        pytest.skip(f"no capture files under {PUBLIC_CAPTURES}")
    return caps


def analyze(*args) -> tuple[int, str, str]:
    """(exit status, stdout, stderr) of `egressguard analyze ARGS` run in this process (workers are real
    processes or Dask tasks all the same)."""
    result = CliRunner().invoke(main, ["analyze", *map(str, args)])
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result.exit_code, result.stdout, result.stderr


def lines(text: str) -> list[str]:
    """JSON lines as a sorted list of canonical strings (record order may differ between shard counts)."""
    return sorted(json.dumps(json.loads(line), sort_keys=True) for line in text.splitlines() if line.strip())


def same_output(base: tuple, other: tuple, what: str) -> None:
    assert other[0] == base[0], f"{what}: exit status {other[0]} != {base[0]}\n{other[2]}"
    a, b = lines(base[1]), lines(other[1])
    only_base, only_other = sorted(set(a) - set(b))[:3], sorted(set(b) - set(a))[:3]
    assert a == b, f"{what}: records differ\nonly in one worker: {only_base}\nonly here: {only_other}"
    assert other[2] == base[2], f"{what}: stderr differs"
    records = [json.loads(x) for x in a]
    assert any(r.get("type") == "summary" or r.get("event_type") == "stats" for r in records)


# ---------------------------------------------------------------------------------------------------- shard key
def packets(src: list, dst: list, sport: list, dport: list, proto: list) -> np.ndarray:
    """PACKET rows for IPv4 addresses given as integers (stored IPv4-mapped: hi 0, lo ::ffff:a.b.c.d)."""
    p = np.zeros(len(src), PACKET_DTYPE)
    p["src_lo"] = np.array(src, np.uint64) | np.uint64(0xFFFF << 32)
    p["dst_lo"] = np.array(dst, np.uint64) | np.uint64(0xFFFF << 32)
    p["sport"], p["dport"], p["proto"] = sport, dport, proto
    p["ip_version"] = 4
    return p


def reversed_packets(p: np.ndarray) -> np.ndarray:
    r = p.copy()
    for a, b in (("src_hi", "dst_hi"), ("src_lo", "dst_lo"), ("sport", "dport")):
        r[a], r[b] = p[b], p[a]
    return r


def ip(text: str) -> int:
    return int.from_bytes(socket.inet_aton(text), "big")


@pytest.fixture(scope="module")
def lab_rules():
    return load_rules(LAB_CAPTURES / "rules.toml")  # sandbox_networks = 10.77.0.0/24


@pytest.fixture(scope="module")
def default_rules():
    return load_rules(None)  # no sandbox networks: private and CGNAT addresses are inside


ADDRESSES = st.sampled_from(["10.77.0.2", "10.77.0.3", "10.77.0.1", "198.18.0.2", "8.8.8.8", "192.168.1.5",
                             "100.64.0.9", "2.2.2.2"]).map(ip) | st.integers(0, 2**32 - 1)
PORTS = st.sampled_from([53, 22, 443, 3333, 8080, 32768, 40000, 60999]) | st.integers(0, 65535)
PROTOS = st.sampled_from([6, 17, 1, 58, 47, 132])


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(ADDRESSES, ADDRESSES, PORTS, PORTS, PROTOS), min_size=1, max_size=40))
def test_both_directions_of_a_flow_get_the_same_shard(lab_rules, default_rules, rows):
    src, dst, sport, dport, proto = map(list, zip(*rows))
    p = packets(src, dst, sport, dport, proto)
    for rules in (lab_rules, default_rules):
        assert (shard_key(p, rules) == shard_key(reversed_packets(p), rules)).all()
        for n in (2, 3, 7):
            assert (shard_of(p, rules, n) == shard_of(reversed_packets(p), rules, n)).all()
            assert ((shard_of(p, rules, n) >= 0) & (shard_of(p, rules, n) < n)).all()


@settings(max_examples=200, deadline=None)
@given(st.integers(1024, 65535), st.integers(1024, 65535), st.sampled_from([443, 22, 3333, 8080, 853]),
       st.sampled_from(["10.77.0.2", "10.77.0.77"]))
def test_a_sandboxs_dns_and_its_other_flows_share_a_shard(lab_rules, dns_port, tcp_port, service, sandbox):
    """The resolver inside the sandbox network (both ends inside: the client's ephemeral port decides) or outside
    (the inside end decides); the sandbox's connection outside, its pool port, an ICMP echo: one key, the sandbox's."""
    s = ip(sandbox)
    p = packets([s, s, s, s, s], [ip("10.77.0.1"), ip("8.8.8.8"), ip("198.18.0.2"), ip("198.18.0.9"),
                                  ip("198.18.0.2")],
                [dns_port, dns_port, tcp_port, tcp_port, 8], [53, 53, service, 3333, 0], [17, 17, 6, 6, 1])
    both = np.concatenate([p, reversed_packets(p)])
    keys = shard_key(both, lab_rules)
    assert len(set(keys.tolist())) == 1
    alone = packets([s], [s], [0], [0], [1])  # the key is the sandbox's own address
    assert keys[0] == shard_key(alone, lab_rules)[0]


def test_without_sandbox_networks_the_client_side_is_the_key(default_rules):
    """Two public hosts (neither inside): the larger (ephemeral) port names the client; a tie, the smaller address."""
    client, server = ip("2.2.2.2"), ip("9.9.9.9")
    p = packets([client, server, server], [server, client, client], [50000, 53, 80], [53, 50000, 80], [17, 17, 6])
    keys = shard_key(p, default_rules)
    assert keys[0] == keys[1] == shard_key(packets([client], [client], [0], [0], [1]), default_rules)[0]
    assert keys[2] == keys[0]  # the tie: 2.2.2.2 < 9.9.9.9


NAT64_HI = 0x0064FF9B00000000  # 64:ff9b::/96 (RFC 6052): classified by the IPv4 address it embeds
HALVES = st.one_of(
    st.tuples(st.just(0), ADDRESSES.map(lambda a: a | 0xFFFF << 32)),  # IPv4 (::ffff:a.b.c.d)
    st.tuples(st.just(NAT64_HI), ADDRESSES),  # NAT64, embedding an IPv4 address
    st.tuples(st.sampled_from([0xFD00 << 48, 0xFE80 << 48, 0x2001_0DB8 << 32]) | st.integers(0, 2**64 - 1),
              st.integers(0, 2**64 - 1)))  # IPv6: ULA (private), link-local, documentation, anything


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(HALVES, HALVES, PORTS, PORTS, PROTOS, st.sampled_from([4, 6, 0])), min_size=1,
                max_size=40), st.integers(2, 9))
def test_the_shard_kernel_matches_its_numpy_twin(lab_rules, default_rules, rows, n):
    from egressguard.shards import ShardFilter

    p = np.zeros(len(rows), PACKET_DTYPE)
    for i, ((sh, sl), (dh, dl), sport, dport, proto, version) in enumerate(rows):
        p[i] = 0
        p["src_hi"][i], p["src_lo"][i], p["dst_hi"][i], p["dst_lo"][i] = sh, sl, dh, dl
        p["sport"][i], p["dport"][i], p["proto"][i], p["ip_version"][i] = sport, dport, proto, version
    for rules in (lab_rules, default_rules):
        got = ShardFilter(rules, 0, n).shards_of(p)
        assert (got == shard_of(p, rules, n)).all()
        assert (ShardFilter(rules, n - 1, n).keep(p) == (got == n - 1)).all()


def test_packets_without_ip_go_to_shard_zero(lab_rules):
    p = packets([ip("10.77.0.5")] * 4, [ip("198.18.0.2")] * 4, [40000] * 4, [443] * 4, [6] * 4)
    p["ip_version"] = 0
    assert (shard_of(p, lab_rules, 4) == 0).all()


# ---------------------------------------------------------------------------------------------------- equal output
@pytest.mark.parametrize("group", capture_groups(), ids=lambda g: g[0])
def test_lab_captures_two_workers_same_as_one(group):
    _, rules, caps = group
    one = analyze("--rules", rules, "--format", "jsonl", "--flows", *caps)
    assert one[0] in (0, 1), one[2]
    same_output(one, analyze("--rules", rules, "--format", "jsonl", "--flows", "--workers", 2, *caps), "2 workers")


def test_public_captures_two_and_three_workers_same_as_one():
    caps = public_captures()
    one = analyze("--format", "jsonl", "--flows", *caps)
    assert one[0] in (0, 1, 3), one[2]
    for n in (2, 3):
        same_output(one, analyze("--format", "jsonl", "--flows", "--workers", n, *caps), f"{n} workers")


def test_every_format_and_output_option_is_the_same(tmp_path):
    rules = LAB_CAPTURES / "rules.toml"
    caps = sorted(LAB_CAPTURES.glob("*.pcap"))
    for fmt in ("eve", "jsonl"):
        outs = []
        for n in (1, 2):
            out = tmp_path / f"{fmt}-{n}.json"
            status, stdout, stderr = analyze("--rules", rules, "--format", fmt, "-o", out, "--workers", n, *caps)
            assert stdout == ""
            outs.append((status, out.read_text(), stderr))
        same_output(outs[0], outs[1], f"--format {fmt} -o")
    logs = []
    for n in (1, 2):
        status, _, _ = analyze("--rules", rules, "--format", "zeek", "--output-dir", tmp_path / f"zeek{n}",
                               "--workers", n, *caps)
        logs.append((status, {p.name: lines(p.read_text()) for p in (tmp_path / f"zeek{n}").iterdir()}))
    assert logs[0] == logs[1] and set(logs[0][1]) == {"conn.log", "dns.log", "ssl.log"}
    table = [analyze("--rules", rules, "--workers", n, *caps) for n in (1, 2)]
    assert table[0] == table[1] and table[0][0] == 1 and "reverse_ssh_tunnel" in table[0][1]


def test_evidence_pcaps_are_the_same(tmp_path):
    rules = LAB_CAPTURES / "rules.toml"
    caps = [LAB_CAPTURES / "ssh-reverse-shell.pcap", LAB_CAPTURES / "egress-policy.pcap"]
    runs = []
    for n in (1, 2):
        status, stdout, stderr = analyze("--rules", rules, "--format", "jsonl", "--evidence", tmp_path / f"ev{n}",
                                         "--workers", n, *caps)
        files = {p.name: p.read_bytes() for p in (tmp_path / f"ev{n}").iterdir()}
        runs.append((status, stdout.replace(str(tmp_path / f"ev{n}"), "EV"), stderr, files))
    same_output(runs[0][:3], runs[1][:3], "--evidence")
    assert runs[0][3] == runs[1][3] and runs[0][3]


def test_order_is_deterministic_and_errors_match():
    """Two runs with two workers write the same bytes; an unreadable capture is reported the same way (exit 3), and
    the others are still analysed."""
    rules = LAB_CAPTURES / "rules.toml"
    caps = [LAB_CAPTURES / "ssh-reverse-shell.pcap", REPO / "pyproject.toml", LAB_CAPTURES / "benign-web.pcap",
            LAB_CAPTURES / "no-such.pcap"]
    runs = [analyze("--rules", rules, "--format", "jsonl", "--flows", "--workers", 2, *caps) for _ in range(2)]
    assert runs[0] == runs[1]
    one = analyze("--rules", rules, "--format", "jsonl", "--flows", *caps)
    same_output(one, runs[0], "unreadable captures")
    assert one[0] == 3 and one[2].count("egressguard: error:") == 2


# ---------------------------------------------------------------------------------------------------- bad input
def cli(*args, timeout=120, prelude="") -> subprocess.CompletedProcess:
    code = f"{prelude}import sys; from egressguard.cli import main; sys.argv = ['egressguard'] + sys.argv[1:]; main()"
    return subprocess.run([sys.executable, "-c", code, *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, cwd=REPO)


def one_error_line(proc: subprocess.CompletedProcess) -> str:
    assert "Traceback" not in proc.stderr, proc.stderr
    errors = [line for line in proc.stderr.splitlines() if "rror" in line]
    assert len(errors) == 1, proc.stderr
    return errors[0]


def test_workers_zero_is_a_usage_error():
    proc = cli("analyze", "--workers", 0, LAB_CAPTURES / "benign-web.pcap")
    assert proc.returncode == 2
    assert "--workers" in one_error_line(proc)


def test_standard_input_cannot_be_sharded():
    proc = cli("analyze", "--workers", 2, "-")
    assert proc.returncode == 2
    assert "standard input" in one_error_line(proc)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_unreachable_scheduler_is_one_line_and_exit_2():
    pytest.importorskip("distributed", reason="distributed is not installed (pip install 'egressguard[dask]')")
    address = f"tcp://127.0.0.1:{free_port()}"
    started = time.monotonic()
    proc = cli("analyze", "--dask", address, LAB_CAPTURES / "benign-web.pcap")
    assert proc.returncode == 2
    line = one_error_line(proc)
    assert address in line and "scheduler" in line
    assert time.monotonic() - started < 60


def test_dask_without_distributed_is_one_line_and_exit_2():
    """A Python that cannot import distributed (as where the extra is not installed)."""
    proc = cli("analyze", "--dask", "tcp://127.0.0.1:1", LAB_CAPTURES / "benign-web.pcap",
               prelude="import sys; sys.modules['distributed'] = None; ")
    assert proc.returncode == 2
    assert "pip install 'egressguard[dask]'" in one_error_line(proc)


# ---------------------------------------------------------------------------------------------------- Dask
@pytest.fixture(scope="module")
def dask_cluster():
    """A real `dask scheduler` and two `dask worker` processes on 127.0.0.1 (one thread each), stopped afterwards."""
    pytest.importorskip("distributed", reason="distributed is not installed (pip install 'egressguard[dask]')")
    dask = shutil.which("dask") or str(Path(sys.executable).with_name("dask"))
    if not Path(dask).exists():
        pytest.skip("the `dask` command of distributed is not on PATH")
    port = free_port()
    address = f"tcp://127.0.0.1:{port}"
    procs = [subprocess.Popen([dask, "scheduler", "--host", "127.0.0.1", "--port", str(port),
                               "--dashboard-address", "127.0.0.1:0", "--no-show"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=REPO)]
    try:
        for _ in range(2):
            procs.append(subprocess.Popen([dask, "worker", address, "--nthreads", "1", "--nworkers", "1",
                                           "--host", "127.0.0.1", "--dashboard-address", "127.0.0.1:0",
                                           "--memory-limit", "0"],
                                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=REPO))
        from distributed import Client

        deadline = time.monotonic() + 90
        client = None
        while time.monotonic() < deadline:
            try:
                client = client or Client(address, timeout=5, set_as_default=False)
                if len(client.scheduler_info()["workers"]) == 2:
                    break
            except OSError:
                pass
            time.sleep(0.5)
        else:
            pytest.fail("the Dask scheduler and two workers did not come up within 90 s")
        client.close()
        yield address
    finally:
        for proc in reversed(procs):
            proc.terminate()
        for proc in procs:
            try:
                proc.wait(timeout=3)
            except subprocess.TimeoutExpired:  # a worker still closing its connections: it is ours to kill
                proc.kill()
                proc.wait()


def test_dask_cluster_gives_the_same_output(dask_cluster):
    rules = LAB_CAPTURES / "rules.toml"
    caps = sorted(LAB_CAPTURES.glob("*.pcap"))
    one = analyze("--rules", rules, "--format", "jsonl", "--flows", *caps)
    same_output(one, analyze("--rules", rules, "--format", "jsonl", "--flows", "--dask", dask_cluster, *caps),
                "Dask, one shard per worker")
    same_output(one, analyze("--rules", rules, "--format", "jsonl", "--flows", "--dask", dask_cluster,
                             "--workers", 3, *caps), "Dask, 3 shards")


def test_dask_cluster_on_public_captures(dask_cluster):
    caps = public_captures()
    one = analyze("--format", "jsonl", "--flows", *caps)
    same_output(one, analyze("--format", "jsonl", "--flows", "--dask", dask_cluster, *caps), "Dask")
