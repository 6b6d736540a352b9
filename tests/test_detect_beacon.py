"""Beacon and long-connection detection (egressguard/detect/beacon.py) on synthetic captures with known timing,
on the benign public captures and on the lab's captures.

Every random timing is drawn from a seeded generator. Addresses: the sandbox is private (10.20.0.5, inside by the
default rules), destinations are documentation addresses (outside)."""
from __future__ import annotations

import csv

import numpy as np
import pytest

from beaconbuilders import SANDBOX, connections, long_connection
from conftest import LAB_CAPTURES, PUBLIC_CAPTURES, public_capture
from egressbuilders import Capture
from egressguard.detect import BY_NAME, DetectorContext
from egressguard.detect.beacon import PAIR_GAP_EDGES_S, BeaconDetector, Params
from egressguard.detect.rhythm import hist_quantiles, measure_rhythm, rita_part_score
from egressguard.flows.view import FlowView
from egressguard.pipeline import Analyzer, FlowsReady
from egressguard.policy.rules import load_rules, parse_rules
from egressguard.schema import FLOW_DTYPE, EndReason, FindingKind, Severity

C2 = "203.0.113.9"
KINDS = (FindingKind.BEACON, FindingKind.LONG_CONNECTION)


def run(path, rules=None, params: Params = Params()) -> list:
    """Beacon findings of one capture, through the pipeline (flows arrive in many batches, finish at the end)."""
    ctx = DetectorContext.build(rules if rules is not None else load_rules())
    analyzer = Analyzer(detectors=[lambda ctx: BeaconDetector(ctx, params)], ctx=ctx)
    out = []
    for event in analyzer.analyze(str(path)):
        if isinstance(event, FlowsReady):
            out += [f for f in event.result.findings if f.kind in KINDS]
    return out


def capture_with(tmp_path, build) -> str:
    cap = Capture()
    build(cap)
    return str(cap.write(tmp_path / "c.pcap"))


# ---------------------------------------------------------------- connection starts across flows

def test_jittered_periodic_connections_are_a_beacon(tmp_path):
    rng = np.random.default_rng(1)
    starts = np.cumsum(rng.uniform(54, 66, 47))  # every 60 s +-10 %, 47 minutes
    found = run(capture_with(tmp_path, lambda cap: connections(cap, starts, C2, 443)))
    assert len(found) == 1
    f = found[0]
    assert f.kind == FindingKind.BEACON and f.severity >= Severity.MEDIUM and f.details["beacon"]["scope"] == \
        "connections"
    n = f.details["beacon"]["connections"]  # reported as soon as the evidence sufficed, before the capture ended
    assert 10 <= n <= 47 and 57 <= f.details["beacon"]["interval_s"] <= 63
    assert f.evidence[0].startswith(f"{n} connections from {SANDBOX} to {C2}:443/tcp every 6")
    assert "300 B sent each" in f.evidence[0]
    assert f.flow["first_seen_ns"] == int(round((1_700_000_000 + starts[0]) * 1e6)) * 1000


def test_poisson_connections_are_not_a_beacon(tmp_path):
    rng = np.random.default_rng(2)
    starts = np.cumsum(rng.exponential(60, 60))  # same sizes, random times
    assert run(capture_with(tmp_path, lambda cap: connections(cap, starts, C2, 443))) == []


def test_three_connections_are_too_few(tmp_path):
    """RITA's threshold: at least 4 check-ins (3 intervals)."""
    assert run(capture_with(tmp_path, lambda cap: connections(cap, [0, 300, 600], C2, 443))) == []
    assert len(run(capture_with(tmp_path, lambda cap: connections(cap, [0, 300, 600, 900], C2, 443)))) == 1


def test_a_scripts_loop_is_no_rhythm(tmp_path):
    """Fetches every 2-3 s for a minute (a script's loop, issue 12 point 7): under the 10-minute span, nothing; the
    same rhythm kept up for 15 minutes is a beacon."""
    rng = np.random.default_rng(7)
    short = np.cumsum(rng.uniform(2.2, 2.6, 25))
    assert run(capture_with(tmp_path, lambda cap: connections(cap, short, C2, 443))) == []
    long = np.cumsum(rng.uniform(54, 66, 16))
    assert len(run(capture_with(tmp_path, lambda cap: connections(cap, long, C2, 443)))) == 1


def test_parallel_connections_in_one_second_are_one_checkin(tmp_path):
    """A browser opening six connections at once, five times at random: no interval below a second counts."""
    rng = np.random.default_rng(3)
    starts = [t + 0.05 * k for t in np.cumsum(rng.exponential(40, 5)) for k in range(6)]
    assert run(capture_with(tmp_path, lambda cap: connections(cap, starts, C2, 443, response=20000))) == []


def test_a_beacon_is_reported_once_across_batches_and_again_only_when_worse(tmp_path):
    starts = np.arange(0, 60 * 80, 60.0)  # 80 connections, exactly every minute
    found = run(capture_with(tmp_path, lambda cap: connections(cap, starts, C2, 8443)))
    severities = [f.severity for f in found]
    assert severities and severities == sorted(set(severities))  # each one worse than the one before


def test_allowed_destination_gets_its_rhythm_annotated_not_a_finding(tmp_path):
    """A health check every 60 s to an allowed monitoring host: the flow records say so, nobody is alarmed."""
    starts = np.arange(0, 60 * 40, 60.0)
    path = capture_with(tmp_path, lambda cap: connections(cap, starts, C2, 443))
    assert len(run(path)) == 1
    rules = parse_rules('version = 1\n[[allow]]\nname = "telemetry"\ncidrs = ["203.0.113.0/24"]\n')
    assert run(path, rules) == []
    detector = BeaconDetector(DetectorContext.build(rules))
    detector.start("c")
    notes = []
    for event in Analyzer(detectors=[]).analyze(path):
        if isinstance(event, FlowsReady):
            notes += [a["rhythm"] for a in detector.inspect(event.view).annotations.values() if "rhythm" in a]
    assert notes and "telemetry" in notes[-1]["allowed_by"] and notes[-1]["scope"] == "connections"
    assert 59 <= notes[-1]["interval_s"] <= 61 and notes[-1]["kind"] == "beacon"


# ---------------------------------------------------------------- services that poll by design

def test_ntp_polling_is_exempt_but_not_its_port(tmp_path):
    def ntp(size):
        def build(cap):
            for k in range(60):  # every 64 s for an hour (ntpd's minpoll, RFC 5905)
                cap.add(64.0 * k, SANDBOX, "198.51.100.123", 17, _udp(123, 123, b"\x23" + b"\0" * (size - 1)))
                cap.add(64.0 * k + 0.02, "198.51.100.123", SANDBOX, 17, _udp(123, 123, b"\x24" + b"\0" * (size - 1)))
        return build
    assert run(capture_with(tmp_path, ntp(48))) == []
    found = run(capture_with(tmp_path, ntp(600)))  # not NTP-sized: judged like anything else
    assert [f.kind for f in found][:1] == [FindingKind.BEACON]


def test_dns_lookups_repeated_by_ttl_are_exempt(tmp_path):
    def build(cap):
        for k in range(40):
            cap.dns_udp(300.0 * k, SANDBOX, "198.51.100.53", "api.example", [("api.example", "A", 300, C2)])
    assert run(capture_with(tmp_path, build)) == []


def test_package_download_and_browser_session_are_not_beacons(tmp_path):
    rng = np.random.default_rng(4)

    def build(cap):
        connections(cap, [0, 0.2, 0.4, 1.5], "198.51.100.80", 443, response=60_000)  # a download
        t = 10.0
        for _ in range(120):  # a browser: page loads and clicks at human times to three hosts
            t += float(rng.exponential(8))
            host = ("198.51.100.10", "198.51.100.11", "198.51.100.12")[int(rng.integers(0, 3))]
            connections(cap, [t], host, 443, request=int(rng.integers(200, 900)),
                        response=int(rng.integers(500, 50_000)))
    assert run(capture_with(tmp_path, build)) == []


def test_interactive_ssh_session_is_not_a_beacon(tmp_path):
    rng = np.random.default_rng(5)
    times = np.cumsum(rng.exponential(4, 200) + rng.choice([0, 0, 0, 30], 200))  # typing with pauses, ~40 min
    sizes = [36] * len(times)
    found = run(capture_with(tmp_path, lambda cap: long_connection(cap, times, "198.51.100.22", 22, sizes, sizes)))
    assert found == []


# ---------------------------------------------------------------- bursts inside one long flow

def test_c2_polling_inside_one_connection_is_a_beacon(tmp_path):
    rng = np.random.default_rng(6)
    bursts = np.arange(0, 50 * 60, 30.0) + rng.uniform(-1, 1, 100)  # every 30 s for 50 min, in one TLS flow
    found = run(capture_with(tmp_path, lambda cap: long_connection(cap, bursts, C2, 443, 420, 1300)))
    assert [f.kind for f in found] == [FindingKind.BEACON]
    f = found[0]
    assert f.details["beacon"]["scope"] == "bursts" and f.details["beacon"]["bursts"] == 100
    assert 28 <= f.details["beacon"]["interval_s"] <= 32 and f.severity >= Severity.MEDIUM
    assert f"holds one connection to {C2}:443/tcp open for 50 min with 100 bursts" in f.evidence[0]


def test_keepalive_sized_bursts_are_reported_low(tmp_path):
    bursts = np.arange(0, 20 * 60, 30.0)  # an idle MQTT-like keepalive every 30 s for 20 min
    found = run(capture_with(tmp_path, lambda cap: long_connection(cap, bursts, C2, 8883, 2, 2)))
    assert len(found) == 1 and found[0].severity == Severity.LOW
    assert any("keepalive-sized" in e for e in found[0].evidence)


def test_short_periodic_flows_are_not_judged(tmp_path):
    """Keepalives every 2 s for 5 minutes (the lab's idle reverse tunnel does this for 15 s): under 10 min."""
    found = run(capture_with(tmp_path, lambda cap: long_connection(cap, np.arange(0, 300, 2.0), C2, 22, 36, 36)))
    assert found == []


# ---------------------------------------------------------------- long connections

@pytest.mark.parametrize("hours, severity, from_s", [(0.9, None, 0), (1.2, Severity.LOW, 3600),
                                                     (5, Severity.MEDIUM, 14400), (9, Severity.HIGH, 28800),
                                                     (13, Severity.HIGH, 28800)])
def test_long_connection_buckets(tmp_path, hours, severity, from_s):
    rng = np.random.default_rng(7)
    gaps = rng.uniform(30, 800, int(hours * 3600 / 200))  # irregular traffic, never idle for 15 min
    bursts = np.cumsum(gaps)
    bursts = bursts[bursts < hours * 3600]
    found = run(capture_with(tmp_path, lambda cap: long_connection(cap, bursts, C2, 443, end=hours * 3600 + 1)))
    longs = [f for f in found if f.kind == FindingKind.LONG_CONNECTION]
    if severity is None:
        assert longs == []
        return
    # reported when the active timeout (1 h) hands out each record, again only when the bucket got worse
    assert longs[-1].severity == severity
    assert [f.severity for f in longs] == sorted({f.severity for f in longs})
    span = (longs[-1].flow["last_seen_ns"] - longs[-1].flow["first_seen_ns"]) / 1e9
    assert longs[-1].details["long_connection"]["duration_s"] == pytest.approx(span, abs=1e-3)
    assert from_s <= span <= hours * 3600 + 2
    shown = f"{span / 60:.0f} min" if span < 7200 else f"{span / 3600:.1f} h"
    assert f"{SANDBOX} held a connection to {C2}:443/tcp open for {shown}" in longs[-1].evidence[0]


def test_open_flow_in_a_snapshot_is_judged_on_its_own_span():
    """Live mode: a fresh detector judges the open record (end_reason ACTIVE) as it is."""
    rec = np.zeros(1, FLOW_DTYPE)
    rec["orig_lo"], rec["resp_lo"] = (0xFFFF << 32) | 0x0A140005, (0xFFFF << 32) | 0xCB007109
    rec["proto"], rec["resp_port"], rec["ip_version"] = 6, 443, 4
    rec["first_seen_ns"], rec["last_seen_ns"] = 10**18, 10**18 + 5 * 3600 * 10**9
    rec["end_reason"] = int(EndReason.ACTIVE)
    det = beacon_detector()
    det.start("live")
    found = det.inspect(FlowView(rec, None, "live", open_flows=True)).findings
    assert [(f.kind, f.severity) for f in found] == [(FindingKind.LONG_CONNECTION, Severity.MEDIUM)]
    assert "still open for 5.0 h" in found[0].evidence[0]


# ---------------------------------------------------------------- the pair table, fed records directly

def flow_records(starts_s, dst_lo: int = 0xCB007109, port: int = 443, sent: int = 300) -> np.ndarray:
    """Finished TCP records from the sandbox (10.20.0.5) to ::ffff:<dst_lo>, one per start time (1 s long)."""
    recs = np.zeros(len(starts_s), FLOW_DTYPE)
    recs["orig_lo"], recs["resp_lo"] = (0xFFFF << 32) | 0x0A140005, (0xFFFF << 32) | dst_lo
    recs["proto"], recs["resp_port"], recs["ip_version"], recs["orig_port"] = 6, port, 4, 40000
    recs["first_seen_ns"] = (1_700_000_000 + np.asarray(starts_s, float)) * 1e9
    recs["last_seen_ns"] = recs["first_seen_ns"] + 10**9
    recs["orig_payload_bytes"], recs["end_reason"] = sent, int(EndReason.IDLE)
    return recs


def beacon_detector(params: Params = Params()) -> BeaconDetector:
    """A beacon detector over the default rules, fed records directly (no engine)."""
    return BeaconDetector(DetectorContext.build(load_rules()), params)


def feed(det: BeaconDetector, *batches, capture: str = "c") -> list:
    """Findings of batches of records of one capture, then of `finish`."""
    det.start(capture)
    out = []
    for recs in batches:
        out += det.inspect(FlowView(recs, None, capture)).findings
    return out + det.finish().findings


def test_starts_within_the_last_checkin_second_add_no_interval():
    det = beacon_detector()
    assert feed(det, flow_records([0.0]), flow_records([0.5]), flow_records([0.7, 0.9])) == []
    s = int(det.pairs.slot_of[0])
    assert len(det.pairs.keys) == 1 and det.pairs.count[s] == 4 and det.pairs.checkins[s] == 1
    assert det.pairs.gap[s, 0] == 0


def test_full_pair_table_evicts_the_least_recent_and_counts():
    det = beacon_detector(Params(max_pairs=8))
    others = [flow_records([5.0 * k], dst_lo=0xCB007200 + k) for k in range(20)]
    beacon = [flow_records([100.0 + 60 * k]) for k in range(12)]
    found = feed(det, *others, *beacon)
    assert det.pairs.evicted >= 12 and len(det.pairs.keys) <= 8
    assert [f.kind for f in found] == [FindingKind.BEACON] and found[0].details["beacon"]["connections"] >= 10


def test_a_new_capture_starts_a_new_series():
    det = beacon_detector()
    assert feed(det, flow_records([0, 60, 120]), capture="a") == []
    assert feed(det, flow_records([180]), capture="b") == []  # 4 starts in all, but only one in capture b


# ---------------------------------------------------------------- the estimators

def test_quantiles_of_a_log_histogram():
    counts = np.zeros(len(PAIR_GAP_EDGES_S) + 1, np.int64)
    counts[18] = 100  # [2^6, 2^6.5) s = [64, 90.5) s
    q1, q2, q3 = hist_quantiles(counts, PAIR_GAP_EDGES_S)
    assert 64 < q1 < q2 < q3 < 90.6 and q2 == pytest.approx(64 * 2 ** 0.25)


def test_rhythm_uses_welford_when_the_values_sit_in_one_bin():
    counts = np.zeros(len(PAIR_GAP_EDGES_S) + 1, np.int64)
    counts[18] = 100
    r = measure_rhythm(counts, PAIR_GAP_EDGES_S, 100, 70.0, 99 * 0.25)  # sd 0.5 s around 70 s
    assert r.median == 70.0 and r.mad == pytest.approx(0.6745 * 0.5) and r.skew == 0.0
    assert rita_part_score(r, 1.0) == pytest.approx((1 + (70 - r.mad) / 70) / 2)


def test_rhythm_of_exponential_gaps_scores_low():
    rng = np.random.default_rng(8)
    x = rng.exponential(60, 5000)
    counts = np.bincount(np.searchsorted(PAIR_GAP_EDGES_S, x, side="right"), minlength=len(PAIR_GAP_EDGES_S) + 1)
    r = measure_rhythm(counts, PAIR_GAP_EDGES_S, len(x), float(x.mean()), float(((x - x.mean()) ** 2).sum()))
    assert r.median == pytest.approx(60 * np.log(2), rel=0.1) and rita_part_score(r, 1.0) < 0.6


# ---------------------------------------------------------------- registry, real captures

def test_registered():
    assert BY_NAME["beacon"] is BeaconDetector


def _benign_public() -> list[str]:
    labels = PUBLIC_CAPTURES / "labels.csv"
    if not labels.exists():
        pytest.skip("public captures not found")
    with labels.open() as fh:
        rows = list(csv.DictReader(fh))
    return sorted({r["file"] for r in rows if r["expected_class"] == "benign"})


def test_no_findings_on_benign_public_captures():
    for rel in _benign_public():
        assert run(public_capture(rel)) == [], rel


def test_no_findings_on_lab_captures():
    """The lab's captures last under 20 s: too short for any beacon or long-connection verdict, including the
    keepalive-driven reverse tunnels (their 2 s keepalives would count as periodic bursts from 10 min on)."""
    rules = load_rules(LAB_CAPTURES / "rules.toml")
    paths = sorted(LAB_CAPTURES.glob("*.pcap"))
    assert paths
    for path in paths:
        assert run(path, rules) == [], path.name


def _udp(sport: int, dport: int, payload: bytes) -> bytes:
    from framebuilders import udp
    return udp(sport, dport, payload)
