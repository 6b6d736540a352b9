"""DNS binding: TTL expiry and the minimum TTL, CNAME chains, several names per address, per-sandbox separation,
keep-alive while a flow is open, answers that come after a connection, and observe_dns on real DNS flows."""
import sys
from pathlib import Path

import numpy as np

from egressguard.detect.dns_binding import MAX_NAMES_PER_ADDRESS, DnsBinding, observe_dns
from egressguard.netaddr import parse_address
from egressguard.payload.dns import DnsMessage, DnsRecord
from egressguard.pipeline import Analyzer, FlowsReady

sys.path.insert(0, str(Path(__file__).parent))
from egressbuilders import Capture, dns_message  # noqa: E402
from naive_dns import parse_message  # noqa: E402

SBX, OTHER = "10.0.0.2", "10.0.0.3"


def answer(*records, question="q.example"):
    """A response whose answers are (name, type, ttl, value) with type 1 (A), 5 (CNAME), 28 (AAAA) or 12 (PTR)."""
    return DnsMessage(1, True, 0, ((question, 1),), tuple(DnsRecord(*r) for r in records))


def test_ttl_expiry_measured_in_capture_time():
    b = DnsBinding(min_ttl_s=0)
    b.observe(SBX, answer(("a.example", 1, 30, "93.184.216.34")), ts=1000.0)
    assert b.names(SBX, "93.184.216.34", 1000.0) == ["a.example"]
    assert b.names(SBX, "93.184.216.34", 1030.0) == ["a.example"]  # the last second of the TTL
    assert b.names(SBX, "93.184.216.34", 1030.5) == []
    assert b.lookup(SBX, "93.184.216.34", 1031.0) == ([], ["a.example"], [])


def test_short_ttls_are_raised_to_the_minimum():
    b = DnsBinding(min_ttl_s=300)
    b.observe(SBX, answer(("a.example", 1, 5, "93.184.216.34")), ts=1000.0)
    assert b.names(SBX, "93.184.216.34", 1299.0) == ["a.example"]
    assert b.names(SBX, "93.184.216.34", 1301.0) == []
    b.observe(SBX, answer(("b.example", 1, 900, "93.184.216.35")), ts=1000.0)  # longer TTLs are kept
    assert b.names(SBX, "93.184.216.35", 1899.0) == ["b.example"]


def test_cname_chain_binds_the_asked_name_and_every_alias():
    b = DnsBinding(min_ttl_s=0)
    b.observe(SBX, answer(("pkg.example", 5, 60, "alias.cdn.example"), ("alias.cdn.example", 5, 60, "edge.cdn.net"),
                          ("edge.cdn.net", 1, 60, "151.101.0.223"), ("edge.cdn.net", 28, 60, "2a04:4e42::223"),
                          question="pkg.example"), ts=1.0)
    chain = ["alias.cdn.example", "edge.cdn.net", "pkg.example"]
    assert b.names(SBX, "151.101.0.223", 2.0) == chain
    assert b.names(SBX, "2a04:4e42::223", 2.0) == chain
    assert b.addresses(SBX, "pkg.example") == ["151.101.0.223", "2a04:4e42::223"]


def test_several_names_per_address_are_all_kept():
    b = DnsBinding(min_ttl_s=0)
    b.observe(SBX, answer(("pypi.org", 1, 60, "151.101.0.223")), ts=1.0)
    b.observe(SBX, answer(("files.pythonhosted.org", 1, 120, "151.101.0.223")), ts=2.0)
    assert b.names(SBX, "151.101.0.223", 10.0) == ["files.pythonhosted.org", "pypi.org"]
    assert b.names(SBX, "151.101.0.223", 100.0) == ["files.pythonhosted.org"]  # each name expires on its own


def test_names_per_address_are_bounded_soonest_expiring_first():
    b = DnsBinding(min_ttl_s=0)
    for i in range(MAX_NAMES_PER_ADDRESS + 5):
        b.observe(SBX, answer((f"n{i}.example", 1, 1000 + i, "93.184.216.34")), ts=0.0)
    names = b.names(SBX, "93.184.216.34", 1.0)
    assert len(names) == MAX_NAMES_PER_ADDRESS and "n0.example" not in names and "n68.example" in names


def test_bindings_are_per_sandbox():
    b = DnsBinding()
    b.observe(SBX, answer(("a.example", 1, 60, "93.184.216.34")), ts=1.0)
    assert b.names(OTHER, "93.184.216.34", 2.0) == []
    assert b.bound_anywhere(np.array([0], np.uint64), np.array([parse_address("93.184.216.34")], np.uint64)).all()


def test_keep_alive_holds_names_while_a_flow_is_open():
    b = DnsBinding(min_ttl_s=0)
    b.observe(SBX, answer(("a.example", 1, 60, "93.184.216.34")), ts=0.0)
    b.keep_alive(SBX, "93.184.216.34", until=3600.0, since=10.0)
    assert b.names(SBX, "93.184.216.34", 3599.0) == ["a.example"]
    assert b.names(SBX, "93.184.216.34", 3601.0) == []
    b.observe(SBX, answer(("late.example", 1, 60, "93.184.216.34")), ts=5000.0)
    b.keep_alive(SBX, "93.184.216.34", until=9000.0, since=4000.0)  # a flow that started before late.example
    assert b.lookup(SBX, "93.184.216.34", 8000.0) == ([], ["a.example", "late.example"], [])


def test_answers_after_the_connection_are_told_apart():
    b = DnsBinding()
    b.observe(SBX, answer(("a.example", 1, 60, "93.184.216.34")), ts=100.0)
    assert b.lookup(SBX, "93.184.216.34", 99.0) == ([], [], ["a.example"])


def test_queries_ptr_and_failed_answers_bind_nothing():
    b = DnsBinding()
    b.observe(SBX, DnsMessage(1, False, 0, (("a.example", 1),), ()), ts=1.0)
    b.observe(SBX, answer(("34.216.184.93.in-addr.arpa", 12, 60, "evil.example")), ts=1.0)
    b.observe(SBX, answer(("a.example", 1, 60, "not-an-address")), ts=1.0)
    assert len(b) == 0


def test_lru_bound_on_addresses():
    b = DnsBinding(max_addresses=2)
    for i in range(3):
        b.observe(SBX, answer((f"n{i}.example", 1, 60, f"93.184.216.{i}")), ts=1.0)
    assert len(b) == 2 and b.names(SBX, "93.184.216.0", 2.0) == []
    assert b.addresses(SBX, "n0.example") == [] and b.addresses(SBX, "n2.example") == ["93.184.216.2"]


def test_wire_messages_round_trip():
    msg = parse_message(dns_message("pkg.example", [("pkg.example", "CNAME", 30, "edge.example"),
                                                    ("edge.example", "A", 30, "93.184.216.34")]))
    b = DnsBinding()
    b.observe(SBX, msg, ts=1.0)
    assert b.names(SBX, "93.184.216.34", 1.5) == ["edge.example", "pkg.example"]


def test_observer_binds_udp_and_tcp_answers_at_the_time_they_were_sent(tmp_path):
    cap = Capture()
    cap.dns_udp(1.0, SBX, "10.0.0.1", "u.example", [("u.example", "A", 30, "93.184.216.1")])
    cap.dns_tcp(2.0, SBX, "10.0.0.1", "t.example", [("t.example", "AAAA", 30, "2606:2800:220:1::1")], qtype="AAAA")
    path = cap.write(tmp_path / "dns.pcap")
    binding = DnsBinding(min_ttl_s=0)
    for event in Analyzer(detectors=[]).analyze(str(path)):
        if isinstance(event, FlowsReady):
            observe_dns(binding, event.view)
    t0 = cap.start
    assert binding.lookup(SBX, "93.184.216.1", t0 + 1.005) == ([], [], ["u.example"])  # the answer left at +1.01 s
    assert binding.names(SBX, "93.184.216.1", t0 + 1.02) == ["u.example"]
    assert binding.names(SBX, "2606:2800:220:1::1", t0 + 2.01) == ["t.example"]
