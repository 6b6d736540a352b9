"""The reverse SSH tunnel is still found under a flood of spoofed one-packet flows (issue 8, item 2), at unit-test
scale: the flood of benchmarks/bench_flood.py (80% SYNs from spoofed 10/8 sources, 15% UDP with 18-byte payloads,
5% ICMP echo, each packet its own flow) around captures/ssh-reverse-shell.pcap, through a table of 4096 flows and
512 payload slots, as the library Analyzer runs it.

At this scale the flood keeps the table full (it turns over about once a second, shorter than the tunnel's pauses)
and leaves more live UDP flows than payload slots, the two ways the tunnel was lost before one-way flows were put
first in line for eviction and kept out of the last quarter of the payload slots (flows/kernels.py).
"""
from __future__ import annotations

import sys
from collections import Counter

import pytest

from egressguard.flows import FlowSettings
from egressguard.pipeline import Analyzer, CaptureDone, FlowsReady, Settings
from egressguard.policy.rules import load_rules
from egressguard.schema import EndReason
from tests.conftest import REPO, lab_capture

sys.path.insert(0, str(REPO / "benchmarks"))
from bench_flood import write_flood  # noqa: E402  (the benchmark's own flood generator, numpy-vectorised)

FLOOD_FLOWS = 100_000
FLOOD_SPAN_S = 30.0  # 3,300 new flows per second of capture time around the tunnel's 19 s
SETTINGS = Settings(flows=FlowSettings(capacity=4096, payload_slots=512))


@pytest.fixture(scope="module")
def flood_run(tmp_path_factory) -> tuple[CaptureDone, Counter, list]:
    """(summary, findings per kind, the reverse_ssh_tunnel findings) of one Analyzer run over the flood capture."""
    lab_capture("ssh-reverse-shell.pcap")  # the generator reads it from there; say so when it is missing
    path = tmp_path_factory.mktemp("flood") / "flood.pcap"
    written = write_flood(path, FLOOD_FLOWS, FLOOD_SPAN_S, seed=5)
    assert written["tunnel_packets"] == 265
    analyzer = Analyzer(SETTINGS, rules=load_rules(str(lab_capture("rules.toml"))))
    kinds, tunnels, done = Counter(), [], None
    for event in analyzer.analyze(str(path)):
        if isinstance(event, FlowsReady):
            for finding in event.result.findings:
                kinds[finding.kind] += 1
                if finding.kind == "reverse_ssh_tunnel":
                    tunnels.append(finding)
        elif isinstance(event, CaptureDone):
            done = event
    assert done is not None
    return done, kinds, tunnels


def test_tunnel_is_found_once_under_a_flood(flood_run):
    done, kinds, tunnels = flood_run
    assert len(tunnels) == 1, f"reverse_ssh_tunnel findings: {len(tunnels)}; all findings: {dict(kinds)}"
    assert kinds["ssh_tunnel"] == 0  # not split into fragments that each look like a tunnel of another kind
    flow = tunnels[0].flow
    assert int(flow["resp_port"]) == 443 and int(flow["end_reason"]) != EndReason.EVICTED
    assert int(flow["orig_pkts"]) + int(flow["resp_pkts"]) > 250  # the whole connection in one record


def test_flood_is_counted(flood_run):
    done, _, _ = flood_run
    summary = done.summary
    assert summary.packets == FLOOD_FLOWS + 265
    # every flood packet is its own flow; the tunnel capture adds a few (its SSH connection, ARP is not IP)
    assert FLOOD_FLOWS < summary.flows < FLOOD_FLOWS + 50
    # the table stayed at its capacity: all but the last 4096 flows ended by eviction (none went idle within the
    # 60 s UDP/ICMP and 900 s TCP timeouts of a 30 s capture)
    assert summary.flows - 4096 <= summary.evictions < summary.flows
    # only the flood's UDP and ICMP flows (20%) carry payload; those that end without a slot are counted
    assert 0 < summary.slot_denied < 0.2 * FLOOD_FLOWS
