"""Mining detection: the pool list, each signal (M1-M7) on synthetic captures, hostile input, and whole captures that
must (not) fire: every `stratum` flow of the public set and of the lab, and their negatives."""
import csv
import json
import random
import struct
from pathlib import Path

import numpy as np
import pytest

from conftest import LAB_CAPTURES, PUBLIC_CAPTURES, public_capture
from egressguard.detect import BY_NAME
from egressguard.detect.mining import MiningDetector, Params
from egressguard.engine import Engine
from egressguard.errors import ExitStatus, RulesError
from egressguard.pipeline import Analyzer, FlowsReady, Settings, default_context
from egressguard.payload.dns_table import decode_dns
from egressguard.payload.suffixes import SuffixSet
from egressguard.policy.pools import load_pools
from egressguard.report.jsonl import dumps
from egressguard.report.records import finding_record, flow_fields
import naive_dns
from egressbuilders import client_hello
from framebuilders import TCP_ACK, TCP_FIN, TCP_PSH, TCP_SYN, ethernet, ipv4, pcap_file, tcp, udp

SANDBOX, POOL, OTHER, RESOLVER = "10.0.0.2", "203.0.113.9", "203.0.113.50", "10.0.0.53"


# ------------------------------------------------------------------------------------------------ builders
class Pcap:
    """Packets of synthetic conversations (seconds as floats), written as one classic pcap."""

    def __init__(self, start: float = 1_700_000_000.0):
        self.start = start
        self.records: list[tuple[float, bytes]] = []
        self._port = 40000

    def add(self, t: float, src: str, dst: str, proto: int, payload: bytes) -> None:
        self.records.append((self.start + t, ethernet(ipv4(src, dst, proto, payload))))

    def tcp(self, client: str, server: str, dport: int, events, t0: float = 0.0, acks: bool = True) -> None:
        """A TCP connection: handshake at t0, then (t, direction, payload) events (0 = client -> server), each
        acknowledged by the other side, then FIN both ways after the last event."""
        self._port += 1
        sp = self._port
        seq = [1000, 5000]
        ends = [(client, sp), (server, dport)]

        def send(t, d, data, flags):
            (a, pa), (b, pb) = ends[d], ends[1 - d]
            self.add(t, a, b, 6, tcp(pa, pb, data, seq=seq[d], ack=seq[1 - d], flags=flags))
            seq[d] += len(data) + (1 if flags & (TCP_SYN | TCP_FIN) else 0)

        send(t0, 0, b"", TCP_SYN)
        send(t0 + 0.001, 1, b"", TCP_SYN | TCP_ACK)
        send(t0 + 0.002, 0, b"", TCP_ACK)
        last = t0 + 0.002
        for t, d, data in events:
            send(t0 + t, d, data, TCP_ACK | TCP_PSH)
            if acks:
                send(t0 + t + 0.0005, 1 - d, b"", TCP_ACK)
            last = t0 + t + 0.001
        send(last + 0.01, 0, b"", TCP_FIN | TCP_ACK)
        send(last + 0.02, 1, b"", TCP_FIN | TCP_ACK)
        send(last + 0.03, 0, b"", TCP_ACK)

    def dns(self, t: float, client: str, name: str, address: str, ttl: int = 300) -> None:
        self._port += 1
        q = b"".join(bytes([len(p)]) + p.encode() for p in name.split(".")) + b"\0" + struct.pack("!HH", 1, 1)
        query = struct.pack("!HHHHHH", 0x4242, 0x0100, 1, 0, 0, 0) + q
        answer = struct.pack("!HHHHHH", 0x4242, 0x8180, 1, 1, 0, 0) + q + b"\xc0\x0c" + \
            struct.pack("!HHIH", 1, 1, ttl, 4) + bytes(int(x) for x in address.split("."))
        self.add(t, client, RESOLVER, 17, udp(self._port, 53, query))
        self.add(t + 0.01, RESOLVER, client, 17, udp(53, self._port, answer))

    def write(self, path: Path) -> Path:
        recs = sorted(self.records, key=lambda r: r[0])
        path.write_bytes(pcap_file([(int(ts), int(round((ts % 1) * 1e6)) % 1_000_000, f) for ts, f in recs]))
        return path


def jl(*objs) -> bytes:
    return b"".join(json.dumps(o).encode() + b"\n" for o in objs)


NOISE = random.Random(2026)  # ciphertext stand-in: seeded so that every run sees the same bytes


def tls_record(n: int) -> bytes:
    return b"\x17\x03\x03" + struct.pack("!H", n) + NOISE.randbytes(n)


SUBSCRIBE = {"id": 1, "method": "mining.subscribe", "params": ["cpuminer/2.5.1"]}
AUTHORIZE = {"id": 2, "method": "mining.authorize", "params": ["1BoatSLRHtKNngkdXEeobR76b53LETtpyT.rig1", "x"]}
SUB_RESULT = {"id": 1, "result": [[["mining.notify", "ae68"]], "08000002", 4], "error": None}
NOTIFY = {"id": None, "method": "mining.notify", "params": ["1", "00" * 32, "01", "02", [], "20000000", "1d00ffff",
                                                            "5a0f3c2d", True]}


def stratum_events(t: float = 0.1):
    return [(t, 0, jl(SUBSCRIBE, AUTHORIZE)), (t + 0.05, 1, jl(SUB_RESULT, {"id": 2, "result": True}, NOTIFY))]


def mining_detector(**params) -> MiningDetector:
    """A mining detector with the default pool list and a fresh DNS binding (its context: `detector.ctx`)."""
    ctx = default_context()
    detector = MiningDetector(ctx, Params(**params))
    detector.ctx = ctx
    return detector


def mining_analyzer(detector: MiningDetector, settings: Settings = Settings()) -> Analyzer:
    """An Analyzer that runs only `detector` (the engine feeds the detector's DNS binding first)."""
    return Analyzer(settings, detectors=[lambda ctx: detector], ctx=detector.ctx)


def mining_findings(path: Path, detector: MiningDetector | None = None):
    """(findings of kind mining, annotations by dst port) of one capture, with only the mining detector (a fresh
    one unless one is given)."""
    detector = detector or mining_detector()
    findings, apps = [], {}
    for event in mining_analyzer(detector).analyze(str(path)):
        if isinstance(event, FlowsReady):
            findings += [f for f in event.result.findings if str(f.kind) == "mining"]
            for row, ann in event.result.annotations.items():
                apps[int(event.view.records[row]["resp_port"])] = ann.get("app")
    return findings, apps


def by_port(findings):
    return {int(f.flow["resp_port"]): f for f in findings}


# ------------------------------------------------------------------------------------------------ the pool list
def test_pool_file_loads_and_every_entry_cites_a_known_source():
    pools = load_pools()
    assert {"nanopool.org", "supportxmr.com", "herominers.com", "donate.ssl.xmrig.com"} <= set(pools.domains)
    for entry in list(pools.domains.values()) + list(pools.ports.values()):
        assert entry.sources and set(entry.sources) <= set(pools.sources)
    assert all(v["name"] and v["reference"] for v in pools.sources.values())
    assert pools.port(3333) is not None and pools.port(34254) is not None
    assert pools.port(8080) is None and pools.port(25) is None and pools.port(443) is None  # shared / unlisted


@pytest.mark.parametrize("name,hit", [
    ("xmr-eu1.nanopool.org", "nanopool.org"), ("nanopool.org", "nanopool.org"), ("NanoPool.ORG.", "nanopool.org"),
    ("donate.ssl.xmrig.com", "donate.ssl.xmrig.com"), ("www.xmrig.com", None), ("xnanopool.org", None),
    ("nanopool.org.evil.example", None), ("mysrv.cloud", None), ("", None), (None, None),
])
def test_pool_names_match_on_label_boundaries(name, hit):
    found = load_pools().match(name)
    assert (found.suffix if found else None) == hit


@pytest.mark.parametrize("text,problem", [
    ('[sources.a]\nname = "A"\nreference = "r"\n[[domain]]\nsuffix = "Bad_Name"\nsource = ["a"]\n', "DNS suffix"),
    ('[sources.a]\nname = "A"\nreference = "r"\n[[domain]]\nsuffix = "pool.example"\nsource = ["b"]\n', "cite"),
    ('[sources.a]\nname = "A"\nreference = "r"\n[[port]]\nport = 70000\nsource = ["a"]\n', "port"),
    ('[sources.a]\nname = "A"\n', "reference"),
    ("[[domain]\nsuffix = 1", "TOML"),
])
def test_invalid_pool_files_are_rules_errors(tmp_path, text, problem):
    path = tmp_path / "pools.toml"
    path.write_text(text)
    with pytest.raises(RulesError) as err:
        load_pools(path)
    assert problem in str(err.value) and str(path) in str(err.value)
    assert err.value.exit_status == ExitStatus.RULES
    with pytest.raises(RulesError):
        load_pools(tmp_path / "missing.toml")


def test_pool_suffixes_match_dns_names_as_the_list_does():
    """The message-table matcher the detector uses for DNS answers agrees with PoolList.match on names."""
    pools = load_pools()
    names = ["pool.supportxmr.com", "SUPPORTXMR.COM", "xsupportxmr.com", "a.b.c", "2miners.com", "xmr.2miners.com",
             "herominers.com.evil", "x.y.nanopool.org"]
    flows = [naive_dns.Flow(17, [(1, struct.pack("!HHHHHH", 7, 0x8180, 1, 0, 0, 0) + b"".join(
        bytes([len(p)]) + p.encode() for p in n.split(".")) + b"\0\0\1\0\1", None, 5)]) for n in names]
    arrays, seq = naive_dns.kept_arrays(flows)
    table = decode_dns(arrays, np.arange(len(flows)), np.full(len(flows), 17), np.zeros(len(flows), np.int64), seq)
    hits = SuffixSet.of(pools.domains).match(table, table.messages["qname"])
    assert (hits >= 0).tolist() == [pools.match(n) is not None for n in names]


def test_registered_and_given_the_shared_dns_binding():
    assert BY_NAME["mining"] is MiningDetector
    ctx = default_context()
    engine = Engine(Settings(), ctx)
    mining = next(d for d in engine.detectors if isinstance(d, MiningDetector))
    assert mining.binding is ctx.binding and mining.pools is ctx.pools


# ------------------------------------------------------------------------------------------------ M1
def test_stratum_v1_json_is_mining_on_any_port_with_details(tmp_path):
    cap = Pcap()
    cap.tcp(SANDBOX, POOL, 3333, stratum_events())
    cap.tcp(SANDBOX, OTHER, 443, stratum_events())  # plain Stratum on 443: content decides, not the port
    found, apps = mining_findings(cap.write(tmp_path / "s.pcap"))
    f = by_port(found)
    assert set(f) == {3333, 443} and apps[3333] == "stratum"
    rec = finding_record(f[3333])
    assert rec["severity"] == "critical" and rec["score"] >= 0.99
    m = rec["mining"]
    assert m["protocol"] == "stratum_v1" and m["methods"][:2] == ["mining.subscribe", "mining.authorize"]
    assert m["login"] == "1BoatSLRHtKNngkdXEeobR76b53LETtpyT.rig1" and m["worker"] == "rig1"
    assert m["agent"] == "cpuminer/2.5.1" and m["miner_ip"] == SANDBOX and m["pool_ip"] == POOL
    assert any("well-known mining pool port" in e for e in rec["evidence"])  # M6 on 3333 ...
    assert not any("well-known" in e for e in finding_record(f[443])["evidence"])  # ... not on 443
    assert "the sandbox side (miner) sent mining.subscribe, mining.authorize" in rec["evidence"][0]


def test_one_sided_attempt_is_high_and_other_json_rpc_is_nothing(tmp_path):
    cap = Pcap()
    cap.tcp(SANDBOX, POOL, 9999, [(0.1, 0, jl({"id": 2, "method": "mining.subscribe", "params": ["cgminer/3.7.2"]}))])
    cap.tcp(SANDBOX, OTHER, 4444, [(0.1, 0, jl({"jsonrpc": "2.0", "id": 1, "method": "login",
                                                "params": {"login": "alice", "pass": "pw"}})),
                                   (0.2, 1, jl({"jsonrpc": "2.0", "id": 1, "result": {"status": "OK"}}))])
    f = by_port(mining_findings(cap.write(tmp_path / "a.pcap"))[0])
    assert set(f) == {9999} and f[9999].severity.label() == "high"
    assert "connection attempt" in f[9999].evidence[0]


def test_getwork_over_http_and_stratum_inside_websocket(tmp_path):
    body = json.dumps({"id": 1, "jsonrpc": "2.0", "method": "eth_getWork", "params": []}).encode()
    post = b"POST / HTTP/1.1\r\nHost: pool.example\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)
    ws_req = b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n"
    frame = jl(SUBSCRIBE)
    masked = bytes([0x81, 0x80 | len(frame)]) + b"\0\0\0\0" + frame
    cap = Pcap()
    cap.tcp(SANDBOX, POOL, 80, [(0.1, 0, post), (0.2, 1, b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}")])
    cap.tcp(SANDBOX, OTHER, 8080, [(0.1, 0, ws_req), (0.2, 1, b"HTTP/1.1 101 Switching Protocols\r\n"
                                                              b"Upgrade: websocket\r\n\r\n"), (0.3, 0, masked)])
    found, apps = mining_findings(cap.write(tmp_path / "h.pcap"))
    f = by_port(found)
    assert f[80].details["mining"]["protocol"] == "getwork_http" and apps[80] == "getwork"
    assert f[8080].details["mining"]["carrier"] == "websocket"


# ------------------------------------------------------------------------------------------------ M3
def test_pool_server_name_in_tls_is_high_and_a_web_visit_is_low(tmp_path):
    cap = Pcap()
    for i, (port, name, alpn) in enumerate(((443, "pool.supportxmr.com", None),
                                            (8443, "www.supportxmr.com", ["h2", "http/1.1"]),
                                            (9443, "notsupportxmr.com", None), (10443, None, None))):
        # a server each: the pair memory would rightly carry the first verdict over to the others
        cap.tcp(SANDBOX, f"203.0.113.{30 + i}", port, [(0.1, 0, client_hello(name, alpn)), (0.2, 1, tls_record(120))])
    f = by_port(mining_findings(cap.write(tmp_path / "t.pcap"))[0])
    assert set(f) == {443, 8443}
    assert f[443].severity.label() == "high" and f[443].details["mining"]["pool"] == "pool.supportxmr.com"
    assert f[443].details["mining"]["pool_source"] == "sni" and f[443].details["mining"]["protocol"] == "tls"
    assert f[8443].severity.label() == "low" and "website" in f[8443].evidence[0]


def test_address_bound_to_a_pool_name_by_dns(tmp_path):
    cap = Pcap()
    cap.dns(0.0, SANDBOX, "xmr-eu1.nanopool.org", POOL)
    cap.dns(0.0, SANDBOX, "cdn.example", OTHER)
    cap.tcp(SANDBOX, POOL, 14433, [(0.1, 0, client_hello(None)), (0.2, 1, tls_record(200))], t0=0.1)  # no SNI
    cap.tcp(SANDBOX, POOL, 443, [(0.1, 0, client_hello("shop.example")), (0.2, 1, tls_record(200))], t0=0.2)
    cap.tcp(SANDBOX, POOL, 80, [(0.1, 0, b"GET / HTTP/1.1\r\nHost: www.example\r\n\r\n")], t0=0.3)
    cap.tcp(SANDBOX, OTHER, 14433, [(0.1, 0, client_hello(None)), (0.2, 1, tls_record(200))], t0=0.4)
    f = by_port(mining_findings(cap.write(tmp_path / "d.pcap"))[0])
    assert set(f) == {14433} and f[14433].flow["resp_lo"] & 0xFFFFFFFF == 0xCB007109
    rec = finding_record(f[14433])
    assert rec["severity"] == "high" and rec["mining"]["pool"] == "xmr-eu1.nanopool.org"
    assert rec["mining"]["pool_source"] == "dns" and "bind 203.0.113.9 to 'xmr-eu1.nanopool.org'" in rec["evidence"][0]


def test_dns_answer_read_after_the_flow_still_names_the_pool(tmp_path):
    """A UDP DNS flow ends only after its idle timeout, so a short TCP connection that used its answer is often
    reported first; the detector keeps such flows and reports them when the answer is read."""
    from egressguard.pipeline import Settings

    cap = Pcap()
    cap.dns(0.0, SANDBOX, "xmr-eu1.nanopool.org", POOL)
    cap.tcp(SANDBOX, POOL, 14433, [(0.1, 0, client_hello(None)), (0.2, 1, tls_record(200))], t0=0.1)
    cap.tcp(SANDBOX, POOL, 443, [(0.1, 0, client_hello("shop.example")), (0.2, 1, tls_record(200))], t0=0.2)
    for i in range(120):  # other traffic for two minutes: the TCP flows close long before the DNS flow idles out
        cap.add(1.0 + i, SANDBOX, OTHER, 17, udp(5000, 5001, b"x"))
    path = cap.write(tmp_path / "late.pcap")
    batches = []
    for event in mining_analyzer(mining_detector(), Settings(chunk_frames=8)).analyze(str(path)):
        if isinstance(event, FlowsReady):
            batches.append(([int(p) for p in event.view.records["resp_port"]],
                            [f for f in event.result.findings if str(f.kind) == "mining"]))
    tcp_batch = next(i for i, (ports, _) in enumerate(batches) if 14433 in ports)
    dns_batch = next(i for i, (ports, _) in enumerate(batches) if 53 in ports)
    assert tcp_batch < dns_batch and not batches[tcp_batch][1]
    late = batches[dns_batch][1]
    assert [int(f.flow["resp_port"]) for f in late] == [14433]  # the TLS flow naming another server stays clean
    assert late[0].severity.label() == "high" and "comes late" in late[0].evidence[0]
    assert late[0].details["mining"]["protocol"] == "tls"


# ------------------------------------------------------------------------------------------------ M2
def test_stratum_v2_handshake_sizes_and_bitcoin_p2p(tmp_path):
    rng = random.Random(5)

    def sv2(act2=234, first=b""):  # random keys: one may begin with '{', '[' or 0x16 like any other byte
        return [(0.1, 0, first + rng.randbytes(64 - len(first))), (0.2, 1, b"[" + rng.randbytes(act2 - 1)),
                (0.3, 0, rng.randbytes(22 + 80 + 16)), (0.4, 1, rng.randbytes(22 + 40 + 16))]
    cap = Pcap()
    cap.tcp(SANDBOX, "203.0.113.41", 34254, sv2(first=b"{"))
    cap.tcp(SANDBOX, "203.0.113.42", 8333, sv2(first=b"\x16"))
    cap.tcp(SANDBOX, "203.0.113.43", 4000, sv2(230))
    found, apps = mining_findings(cap.write(tmp_path / "v2.pcap"))
    f = by_port(found)
    assert set(f) == {34254, 8333} and apps[34254] == "stratum_v2"
    assert f[34254].severity.label() == "high" and f[34254].details["mining"]["protocol"] == "stratum_v2"
    assert f[8333].severity.label() == "medium" and "BIP324" in " ".join(f[8333].evidence)


# ------------------------------------------------------------------------------------------------ M4 / M5
def _long_flow(push_every=30.0, jitter=0.1, client_size=230, duration=900.0, seed=1, submit_every=20.0,
               poisson=False):
    """An encrypted-looking long flow: pool pushes every push_every s (+-jitter, or Poisson), client messages at
    random."""
    rng = random.Random(seed)
    events = [(0.1, 0, client_hello(None)), (0.15, 1, tls_record(1200)), (0.2, 0, tls_record(80))]
    t = 1.0
    while t < duration:
        events.append((t, 1, tls_record(rng.randint(330, 420))))
        t += rng.expovariate(1 / push_every) + 1.5 if poisson else push_every * (1 + rng.uniform(-jitter, jitter))
    t = 5.0
    while t < duration:
        events += [(t, 0, tls_record(client_size)), (t + 0.05, 1, tls_record(40))]
        t += rng.expovariate(1 / submit_every) + 2.0
    return sorted(events)


def test_behaviour_alone_is_medium_with_measured_values(tmp_path):
    cap = Pcap()
    cap.tcp(SANDBOX, POOL, 443, _long_flow())
    f = by_port(mining_findings(cap.write(tmp_path / "b.pcap"))[0])
    assert f[443].severity.label() == "medium"
    b = f[443].details["mining"]["behaviour"]
    assert 25 <= b["push_interval_median_s"] <= 35 and b["push_interval_cv"] <= 0.5 and b["cesnet_score"] >= 7
    text = " ".join(f[443].evidence)
    assert "median interval of" in text and "CESNET-style miner score" in text


@pytest.mark.parametrize("kw", [
    dict(client_size=26),  # MQTT/WebSocket keepalives in TLS: the client sends only tiny pings
    dict(poisson=True, push_every=40.0),  # pushes at random, not on a job timer
    dict(duration=200.0),  # too short
    dict(push_every=5.0),  # faster than any pool pushes jobs
])
def test_behaviour_negatives(tmp_path, kw):
    cap = Pcap()
    cap.tcp(SANDBOX, POOL, 443, _long_flow(**kw))
    assert mining_findings(cap.write(tmp_path / "n.pcap"))[0] == []


# ------------------------------------------------------------------------------------------------ M7
def test_pair_memory_escalates_later_flows_with_a_note(tmp_path):
    cap = Pcap()
    cap.tcp(SANDBOX, POOL, 3333, stratum_events())
    cap.tcp(SANDBOX, POOL, 443, [(0.1, 0, client_hello(None)), (0.2, 1, tls_record(300))], t0=60.0)  # reconnect
    cap.tcp(SANDBOX, POOL, 80, [(0.1, 0, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")], t0=70.0)  # explained: web
    cap.tcp(SANDBOX, OTHER, 443, [(0.1, 0, client_hello(None)), (0.2, 1, tls_record(300))], t0=80.0)
    cap.tcp(SANDBOX, POOL, 5000, [(0.1, 0, NOISE.randbytes(50))], t0=3 * 86400.0)  # long after: forgotten
    detector = mining_detector()
    f = by_port(mining_findings(cap.write(tmp_path / "p.pcap"), detector)[0])
    assert set(f) == {3333, 443}
    rec = finding_record(f[443])
    assert rec["mining"]["inherited"]["protocol"] == "stratum_v1" and rec["mining"]["inherited"]["port"] == 3333
    assert "already proven" in rec["evidence"][0] and rec["severity"] == "high"
    # a later capture with the same pair still inherits (memory spans captures, bounded in time)
    later = Pcap(start=1_700_000_000.0 + 3600)
    later.tcp(SANDBOX, POOL, 443, [(0.1, 0, client_hello(None)), (0.2, 1, tls_record(300))])
    assert set(by_port(mining_findings(later.write(tmp_path / "p2.pcap"), detector)[0])) == {443}


def test_pair_memory_is_bounded(tmp_path):
    detector = mining_detector(pair_memory=2)
    cap = Pcap()
    for i in range(5):
        cap.tcp(SANDBOX, f"203.0.113.{20 + i}", 3333, stratum_events(), t0=i)
    mining_findings(cap.write(tmp_path / "m.pcap"), detector)
    assert len(detector._proven) == 2


# ------------------------------------------------------------------------------------------------ hostile input
def test_random_payloads_and_hostile_logins_never_break_the_detector_or_the_output(tmp_path):
    rng = random.Random(7)
    cap = Pcap()
    for i in range(60):
        first = rng.choice([b"{", b"[", b"\x16\x03\x01", b"POST / HTTP/1.1\r\n", b"", b"\x10\x0cMQTT"])
        cap.tcp(SANDBOX, OTHER, 1000 + i, [(0.1, 0, first + NOISE.randbytes(rng.randint(0, 1400))),
                                           (0.2, 1, rng.choice([b"{", b"HTTP/1.1 101 x\r\n"]) + NOISE.randbytes(300))])
    hostile = "\x1b]0;pwned\x07\x1b[2J\u202eevil\r\n[bold]x[/bold]" + "A" * 500
    cap.tcp(SANDBOX, POOL, 3333, [(0.1, 0, jl({"id": 2, "method": "mining.authorize", "params": [hostile, "x"]}))])
    found, _ = mining_findings(cap.write(tmp_path / "r.pcap"))
    f = by_port(found)
    assert 3333 in f
    line = dumps(finding_record(f[3333]))
    assert line.isascii() and "\x1b" not in line and "\r" not in line
    assert json.loads(line)["mining"]["login"].startswith("\x1b]0;pwned")  # exact, escaped only by JSON
    from rich.console import Console
    from egressguard.report.table import render_findings
    console = Console(record=True, width=200)
    console.print(render_findings([finding_record(f[3333])]))
    text = console.export_text()
    assert "\x1b" not in text and "\\x1b" in text and "[bold]x[/bold]" in text


# ------------------------------------------------------------------------------------------------ whole captures
def _label_rows(path: Path, cls_key: str):
    if not path.exists():
        return []
    with path.open(newline="") as fh:
        return list(csv.DictReader(fh))


def _public_rows(cls: str):
    return [r for r in _label_rows(PUBLIC_CAPTURES / "labels.csv", "expected_class") if r["expected_class"] == cls]


def _all_mining(path: Path):
    """Findings of the mining detector and its DNS observer (fresh, one capture at a time)."""
    out = []
    for event in mining_analyzer(mining_detector()).analyze(str(path)):
        if isinstance(event, FlowsReady):
            out += [f for f in event.result.findings if str(f.kind) == "mining"]
    return out


_CACHE: dict[Path, list] = {}


def _cached(path: Path):
    if path not in _CACHE:
        _CACHE[path] = _all_mining(path)
    return _CACHE[path]


@pytest.mark.public
@pytest.mark.skipif(not (PUBLIC_CAPTURES / "labels.csv").exists(), reason="../shared/captures/public is absent")
@pytest.mark.parametrize("row", _public_rows("stratum"), ids=lambda r: f"{r['file']}:{r['flow'][4:40]}")
def test_every_public_stratum_flow_is_found(row):
    src, _, dst = row["flow"][4:].partition(" -> ")
    src_ip, src_port = src.rsplit(":", 1)
    dst_ip, dst_port = dst.split(" ")[0].rsplit(":", 1)
    hits = [f for f in _cached(public_capture(row["file"]))
            if (flow_fields(f.flow)["src_ip"], flow_fields(f.flow)["src_port"], flow_fields(f.flow)["dst_ip"],
                flow_fields(f.flow)["dst_port"]) == (src_ip, int(src_port), dst_ip, int(dst_port))]
    assert hits, row["notes"]
    assert hits[0].severity.label() in ("high", "critical") and "M1" in hits[0].details["mining"]["signals"]


@pytest.mark.public
@pytest.mark.skipif(not (PUBLIC_CAPTURES / "labels.csv").exists(), reason="../shared/captures/public is absent")
@pytest.mark.parametrize("name", sorted({r["file"] for r in _public_rows("benign")} | {"ntop-nDPI/monero.pcap"}))
def test_public_negatives_raise_no_mining_finding(name):
    assert _cached(public_capture(name)) == []


@pytest.mark.public
def test_public_non_mining_json_rpc_capture_is_clean():
    path = public_capture("ntop-nDPI/jsonrpc.pcap")
    assert _cached(path) == []


@pytest.mark.public
@pytest.mark.skipif(not (PUBLIC_CAPTURES / "labels.csv").exists(), reason="../shared/captures/public is absent")
def test_public_mining_files_have_nothing_but_their_labelled_flows():
    """The captures with mining carry other traffic too (desktop TLS, cgminer's refused probes): only the labelled
    flows, and flows between the same proven pairs, may fire."""
    labelled: dict[str, set] = {}
    for r in _public_rows("stratum"):
        src, _, dst = r["flow"][4:].partition(" -> ")
        labelled.setdefault(r["file"], set()).add((src.rsplit(":", 1)[0], dst.split(" ")[0].rsplit(":", 1)[0]))
    for file, pairs in labelled.items():
        for f in _cached(public_capture(file)):
            ff = flow_fields(f.flow)
            assert (ff["src_ip"], ff["dst_ip"]) in pairs, (file, ff)


def _lab_rows():
    return _label_rows(LAB_CAPTURES / "labels.csv", "class")


@pytest.mark.parametrize("row", [r for r in _lab_rows() if r["class"] == "stratum"],
                         ids=lambda r: f"{r['file']}:{r['server']}")
def test_every_lab_mining_scenario_is_found(row):
    server_ip, server_port = row["server"].rsplit(":", 1)
    hits = [f for f in _cached(LAB_CAPTURES / row["file"])
            if flow_fields(f.flow)["dst_ip"] == server_ip and flow_fields(f.flow)["dst_port"] == int(server_port)]
    assert hits, row["note"]
    assert hits[0].severity.label() in ("high", "critical")


@pytest.mark.parametrize("name", sorted({r["file"] for r in _lab_rows() if r["class"] != "stratum"}))
def test_lab_negatives_raise_no_mining_finding(name):
    assert _cached(LAB_CAPTURES / name) == []


def test_lab_mining_details():
    by_file = {f.capture.rsplit("/", 1)[-1]: finding_record(f)
               for name in ("stratum-v1-proxy.pcap", "stratum-tls-pool-name.pcap", "stratum-tls-dns-only.pcap",
                            "xmrig-style-login.pcap", "stratum-odd-port.pcap", "stratum-v2-sizes.pcap")
               for f in _cached(LAB_CAPTURES / name)}
    assert by_file["stratum-v1-proxy.pcap"]["mining"]["agent"].startswith("aiostratum-proxy") or \
        by_file["stratum-v1-proxy.pcap"]["mining"]["agent"] == "lab-miner/1.0"
    assert by_file["stratum-tls-pool-name.pcap"]["mining"]["pool"] == "zec-eu1.nanopool.org"
    assert by_file["stratum-tls-dns-only.pcap"]["mining"]["pool_source"] == "dns"
    assert by_file["xmrig-style-login.pcap"]["mining"]["agent"].startswith("XMRig/")
    assert by_file["stratum-odd-port.pcap"]["mining"]["protocol"] == "ethereum_stratum"
    assert by_file["stratum-v2-sizes.pcap"]["mining"]["protocol"] == "stratum_v2"


# ---- Stratum inside TLS, from record sizes and timing (issue 12 point 3)
def _pool_records(push=317, submit=375, ack=58, n=5, gap=2.5, jitter=0.0, seed=0):
    """Signed record sizes (+client) and times of a TLS handshake, then a pool's pushes and a miner's acked shares."""
    rng = np.random.default_rng(seed)
    seq = [(348, 0.0), (-823, 0.001), (80, 0.003), (-287, 0.003), (142, 0.004), (-71, 0.005)]
    t = 1.0
    for _ in range(n):
        seq += [(submit, t), (-ack, t + 0.001)]
        t += gap / 2 + rng.uniform(-jitter, jitter)
        seq += [(-push - int(rng.integers(0, 4)), t)]
        t += gap / 2
    return [s for s, _ in seq], [x for _, x in seq]


def test_tls_pool_rhythm_reads_pushes_and_acked_shares():
    from egressguard.detect.mining import Params, tls_pool_rhythm
    sizes, times = _pool_records()
    pushes, push_size, gap, submits, submit_size, ack = tls_pool_rhythm(sizes, times, Params())
    assert pushes == 5 and abs(push_size - 318) <= 3 and gap == 2.5 and submits == 5 and submit_size == 375 and \
        ack == 58
    # three pushes are too few, and so are shares the pool does not acknowledge at once
    assert tls_pool_rhythm(*_pool_records(n=3), Params()) is None


def test_tls_pool_rhythm_ignores_web_like_traffic():
    from egressguard.detect.mining import Params, tls_pool_rhythm
    rng = np.random.default_rng(5)
    # server-sent events: pushes of varying size at irregular times, the client silent
    sizes = [348, -823, 80, -287] + [-int(rng.integers(120, 900)) for _ in range(12)]
    times = [0, .001, .003, .004] + list(np.cumsum(rng.exponential(1.5, 12)))
    assert tls_pool_rhythm(sizes, times, Params()) is None
    # polling: requests answered by bodies of varying size, no unasked pushes
    sizes, times = [348, -823, 80, -287], [0, .001, .003, .004]
    t = 1.0
    for _ in range(10):
        sizes += [200, -int(rng.integers(300, 1400))]
        times += [t, t + 0.02]
        t += 2.5
    assert tls_pool_rhythm(sizes, times, Params()) is None
    # keepalive pings answered at once and pushes of one size, but far too fast to be jobs (under a second)
    sizes, times = _pool_records(gap=0.5)
    assert tls_pool_rhythm(sizes, times, Params()) is None
    # MQTT over TLS: telemetry published every 5 s, PINGREQ/PINGRESP (2 B + 22 B of TLS 1.3) answered at once
    sizes, times = _pool_records(push=180, submit=24, ack=24, gap=5.0)
    assert tls_pool_rhythm(sizes, times, Params()) is None
