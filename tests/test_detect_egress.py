"""Unexpected destinations: each reason on a synthetic capture, the forensic order of DNS answers and the flows that
use them, aggregation and its caps, rules swapped between captures, and the lab's egress-policy recording (allowed,
denied, unbound, mismatched, ...) judged by captures/rules.toml; the SSH and web recordings raise nothing under it."""
import csv
import json
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from conftest import LAB_CAPTURES, lab_capture
from egressguard.cli import main
from egressguard.detect.egress import Params, UnexpectedDestinationDetector
from egressguard.pipeline import Analyzer, FlowsReady
from egressguard.policy.rules import ActiveRules, load_rules, parse_rules
from egressguard.schema import FindingKind

sys.path.insert(0, str(Path(__file__).parent))
from egressbuilders import Capture, client_hello, http_request  # noqa: E402

SBX, GW = "10.77.0.2", "10.77.0.1"
RULES = """
version = 1
[settings]
sandbox_networks = ["10.77.0.0/24", "fd77::/64"]
host_addresses = ["10.77.0.1"]
resolvers = ["10.77.0.1"]
min_dns_ttl = 60
[sandboxes]
"10.77.0.2" = "agent-1"
[[deny]]
name = "tunnels"
domains = ["**.tunnel.example"]
severity = "critical"
[[allow]]
name = "mirror"
domains = ["pkg.example", "docs.example"]
ports = [80, 443]
[[allow]]
name = "partner"
cidrs = ["93.184.0.0/16"]
except = ["93.184.99.0/24"]
"""


def findings(path, rules, detectors=None):
    """(reason, destination) -> finding, for one capture."""
    out = {}
    analyzer = Analyzer(rules=rules, detectors=detectors)
    for event in analyzer.analyze(str(path)):
        if isinstance(event, FlowsReady):
            for f in event.result.findings:
                if f.kind == FindingKind.UNEXPECTED_DESTINATION:
                    key = (f.details["reason"], f.details["egress"].get("destination"))
                    assert key not in out, f"two findings for {key}"
                    out[key] = f
    return out


@pytest.fixture(scope="module")
def scenario(tmp_path_factory):
    c = Capture()
    c.dns_udp(0, SBX, GW, "pkg.example", [("pkg.example", "CNAME", 5, "edge.cdn.example"),
                                          ("edge.cdn.example", "A", 5, "151.101.0.10")])
    c.tcp_session(0.1, SBX, "151.101.0.10", 443, client_hello("pkg.example"), b"\x16\x03\x03" + b"x" * 90)
    c.dns_tcp(0.2, SBX, GW, "docs.example", [("docs.example", "A", 30, "151.101.0.10")])
    c.tcp_session(0.3, SBX, "151.101.0.10", 80, http_request("docs.example"), b"HTTP/1.1 200 OK\r\n\r\n")
    c.dns_udp(0.4, SBX, GW, "up.tunnel.example", [("up.tunnel.example", "A", 30, "151.101.0.11")])
    c.tcp_session(0.5, SBX, "151.101.0.11", 443, client_hello("up.tunnel.example"))
    for i in range(5):
        c.tcp_session(0.6 + 0.1 * i, SBX, "151.101.0.12", 8443, b"hello")
    c.dns_udp(1.2, SBX, GW, "cdn2.other.example", [("cdn2.other.example", "A", 30, "151.101.0.13")])
    c.tcp_session(1.3, SBX, "151.101.0.13", 443, client_hello("pkg.example"))
    c.dns_udp(1.4, SBX, GW, "mirror.other.example", [("mirror.other.example", "A", 30, "151.101.0.14")])
    c.tcp_session(1.5, SBX, "151.101.0.14", 80, http_request("mirror.other.example"))
    c.tcp_session(1.6, SBX, "151.101.0.10", 443, client_hello("evil.example"))  # an allowed address, another name
    c.tcp_session(1.7, SBX, "8.8.8.8", 853, b"\x00\x1c" + b"\x00" * 28)
    c.tcp_session(1.8, SBX, "1.1.1.1", 443, client_hello("cloudflare-dns.com"))
    c.dns_udp(1.9, SBX, "9.9.9.9", "x.example", [("x.example", "A", 30, "151.101.0.99")])
    c.tcp_session(2.0, SBX, "169.254.169.254", 80, http_request("169.254.169.254"))
    c.tcp_session(2.1, SBX, GW, 2375, b"GET /containers/json HTTP/1.1\r\n\r\n")
    c.dns_udp(2.2, SBX, GW, "dhcp-less", [])  # DNS to the resolver: allowed
    c.tcp_session(2.3, SBX, "93.184.216.34", 443, b"x")  # allowed by CIDR, no DNS needed
    c.tcp_session(2.4, SBX, "93.184.99.1", 443, b"x")  # in the except range
    c.tcp_session(2.5, SBX, "10.77.0.3", 22, b"SSH-2.0-x\r\n")  # east-west: not egress
    c.tcp_session(2.6, "151.101.0.50", SBX, 22, b"SSH-2.0-x\r\n")  # inbound: not egress
    c.ping(2.7, SBX, "224.0.0.251")  # multicast: ignored
    c.tcp_session(2.8, "fd77::2", "2606:4700::6810:84e5", 443, client_hello("pkg.example"))  # IPv6, unbound address
    c.tcp_session(2.9, GW, "151.101.9.9", 443, b"x")  # the host itself is no sandbox
    return c.write(tmp_path_factory.mktemp("egress") / "scenario.pcap")


EXPECTED = {
    ("denied", "151.101.0.11"): "critical",
    ("unbound_ip", "151.101.0.12"): "medium",
    ("sni_mismatch", "151.101.0.13"): "medium",
    ("not_allowlisted", "151.101.0.14"): "medium",
    ("sni_mismatch", "151.101.0.10"): "high",
    ("doh", "8.8.8.8"): "high",
    ("doh", "1.1.1.1"): "high",
    ("rogue_resolver", "9.9.9.9"): "medium",
    ("address_class", "169.254.169.254"): "critical",
    ("address_class", "10.77.0.1"): "critical",
    ("unbound_ip", "93.184.99.1"): "medium",
    ("sni_mismatch", "2606:4700::6810:84e5"): "medium",
}


def test_each_reason_once_and_allowed_flows_silent(scenario):
    got = findings(scenario, parse_rules(RULES, "t.toml"))
    assert {k: f.severity.label() for k, f in got.items()} == EXPECTED


def test_finding_records_say_why(scenario):
    got = findings(scenario, parse_rules(RULES, "t.toml"))
    denied = got[("denied", "151.101.0.11")].details["egress"]
    assert denied["deny_rule"] == 'deny[0] "tunnels" (line 10)'
    assert denied["server_name"] == "up.tunnel.example" and denied["names"] == ["up.tunnel.example"]
    assert denied["sandbox"] == "agent-1"
    unbound = got[("unbound_ip", "151.101.0.12")]
    assert unbound.details["egress"]["flows"] == 5 and unbound.details["egress"]["ports"] == [{"proto": "tcp",
                                                                                              "port": 8443}]
    assert "5 flows" in unbound.evidence[1]
    mismatch = got[("sni_mismatch", "151.101.0.13")]
    assert mismatch.evidence[0].startswith("the TLS server name pkg.example is allowed (allow[0] \"mirror\"")
    assert "pkg.example was bound to 151.101.0.10" in mismatch.evidence[0]
    assert mismatch.details["egress"]["names"] == ["cdn2.other.example"]
    fronted = got[("sni_mismatch", "151.101.0.10")].evidence[0]
    assert "asks for evil.example" in fronted and "edge.cdn.example" in fronted
    host = got[("address_class", "10.77.0.1")].evidence[0]
    assert "Docker API" in host
    assert "metadata" in got[("address_class", "169.254.169.254")].evidence[0]


def test_a_dns_answer_that_ends_after_the_connection_still_binds(tmp_path):
    """The UDP answer's flow ends 60 s after its packet; the TCP connection that used it closes (10 s) first."""
    c = Capture()
    c.dns_udp(0.0, SBX, GW, "pkg.example", [("pkg.example", "A", 300, "151.101.0.10")])
    c.tcp_session(0.1, SBX, "151.101.0.10", 443, client_hello("pkg.example"))
    c.tcp_session(30.0, SBX, "93.184.216.34", 443, b"x")  # traffic that makes the table sweep
    c.tcp_session(45.0, SBX, "93.184.216.34", 443, b"x")
    path = c.write(tmp_path / "late.pcap")
    order = []
    rules = parse_rules(RULES, "t.toml")
    for event in Analyzer(detectors=[UnexpectedDestinationDetector], rules=rules).analyze(str(path)):
        if isinstance(event, FlowsReady):
            order += [int(p) for p in event.view.records["resp_port"]]
    assert order.index(443) < order.index(53)  # judged before its answer arrived ...
    assert findings(path, rules) == {}  # ... and still allowed


def test_thousands_of_flows_to_one_address_are_one_finding(tmp_path):
    c = Capture()
    for i in range(2000):
        c.udp_exchange(i * 0.01, SBX, "151.101.7.7", 9999)
    got = findings(c.write(tmp_path / "many.pcap"), parse_rules(RULES, "t.toml"))
    assert list(got) == [("unbound_ip", "151.101.7.7")]
    assert got[("unbound_ip", "151.101.7.7")].details["egress"]["flows"] == 2000


def test_caps_sum_up_the_rest(tmp_path):
    c = Capture()
    for i in range(10):
        c.tcp_session(i * 0.1, SBX, f"151.101.8.{i}", 443, b"x")
    rules = parse_rules(RULES, "t.toml")
    got = findings(c.write(tmp_path / "scan.pcap"), rules,
                   [lambda ctx: UnexpectedDestinationDetector(ctx, Params(max_destinations_per_sandbox=3))])
    summary = got.pop(("unbound_ip", None))
    assert sorted(d for _, d in got) == ["151.101.8.0", "151.101.8.1", "151.101.8.2"]  # the first three seen
    assert summary.details["egress"]["summary"] and summary.details["egress"]["pairs"] == 7
    assert summary.details["egress"]["flows"] == 7


def test_rules_swapped_between_captures(scenario):
    active = ActiveRules(parse_rules(RULES, "t.toml"))
    analyzer = Analyzer(rules=active)
    first = [f for e in analyzer.analyze(str(scenario)) if isinstance(e, FlowsReady) for f in e.result.findings
             if f.kind == FindingKind.UNEXPECTED_DESTINATION]
    active.swap(parse_rules(RULES + '[[allow]]\ncidrs = ["151.101.0.12/32"]\n', "t2.toml"))
    second = [f for e in analyzer.analyze(str(scenario)) if isinstance(e, FlowsReady) for f in e.result.findings
              if f.kind == FindingKind.UNEXPECTED_DESTINATION]
    assert len(second) == len(first) - 1
    assert all(f.details["egress"]["destination"] != "151.101.0.12" for f in second)


def test_default_rules_without_sandbox_networks(scenario):
    got = findings(scenario, None)  # rules/default.toml: originators with private addresses are sandboxes
    assert ("address_class", "169.254.169.254") in got
    assert ("unbound_ip", "151.101.0.12") in got
    assert all(dst != "224.0.0.251" and dst != SBX for _, dst in got)


# ------------------------------------------------------------------------------------------ the lab
def lab_rows(name):
    with (LAB_CAPTURES / "labels.csv").open(newline="") as fh:
        return [row for row in csv.DictReader(fh) if row["file"] == name]


def test_lab_egress_policy_recording():
    got = findings(lab_capture("egress-policy.pcap"), load_rules(LAB_CAPTURES / "rules.toml"))
    by_destination = {(dst, p["port"]): reason for (reason, dst), f in got.items()
                      for p in f.details["egress"]["ports"]}
    rows = lab_rows("egress-policy.pcap")
    assert len(rows) == 9
    for row in rows:
        host, port = row["server"].rsplit(":", 1)
        if row["class"] == "benign":
            assert (host, int(port)) not in by_destination, row
        else:
            assert row["class"] == "unexpected_destination"
            reason = row["note"].split(":")[0].removeprefix("reason ")
            assert by_destination.get((host, int(port))) == reason, (row, by_destination)
    assert len(got) == 6


@pytest.mark.parametrize("name", ["benign-web.pcap", "ssh-reverse-shell.pcap", "ssh-interactive.pcap",
                                  "scp-transfer.pcap", "ssh-local-forward.pcap", "autossh-reverse-http.pcap"])
def test_lab_recordings_raise_no_policy_finding_under_the_lab_rules(name):
    assert findings(lab_capture(name), load_rules(LAB_CAPTURES / "rules.toml")) == {}


def test_default_rules_flag_the_lab_host_as_never_routed():
    """198.18.0.0/15 is benchmarking space: under the default rules the lab's outside host is an address_class."""
    got = findings(lab_capture("benign-web.pcap"), None)
    assert list(got) == [("address_class", "198.18.0.2")]


def test_cli_jsonl_finding_contract():
    result = CliRunner().invoke(main, ["analyze", "--format", "jsonl", "--rules", str(LAB_CAPTURES / "rules.toml"),
                                       str(lab_capture("egress-policy.pcap"))])
    assert result.exit_code == 1, result.output
    records = [json.loads(line) for line in result.stdout.splitlines()]
    egress = [r for r in records if r["type"] == "finding" and r["kind"] == "unexpected_destination"]
    assert len(egress) == 6 and records[-1]["findings"]["unexpected_destination"] == 6
    for r in egress:
        assert r["reason"] == r["egress"]["reason"] and r["evidence"] and r["src_ip"] == "10.77.0.2"
        assert {"destination", "names", "deny_rule", "address_class", "flows", "sandbox"} <= set(r["egress"])
