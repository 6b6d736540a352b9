"""DNS tunnels: every labelled public tunnel capture and the lab's iodine/dns2tcp recordings are found with the
domain and figures in the evidence; ordinary resolver traffic, CDN and cloud names, mDNS/DNS-SD, reverse lookups,
mail TXT checks and package downloads are not; findings come once per (sandbox, domain), early when the evidence
is strong, again only when it got worse; memory stays bounded."""
import csv
import random
import struct
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import LAB_CAPTURES, PUBLIC_CAPTURES, public_capture
from egressguard.detect import BY_NAME
from egressguard.detect.dns_tunnel import DnsTunnelDetector, Params
from egressguard.payload.dns import name_text
from egressguard.payload.dns_table import decode_dns, domain_text, name_labels
from egressguard.pipeline import Analyzer, FlowsReady
from egressguard.schema import DNS_CHARSETS, FindingKind, Severity

sys.path.insert(0, str(Path(__file__).parent))
import naive_dns  # noqa: E402
from egressbuilders import Capture, dns_message  # noqa: E402
from framebuilders import udp  # noqa: E402
from tunnelbuilders import (BASE32, BASE64URL, HEX, dns_answer, dns_exchange, dns_query,  # noqa: E402
                            encoded_label)

SBX, RESOLVER, OUTSIDE = "10.77.0.2", "10.77.0.1", "198.51.100.53"


def dns_findings(path, detector=None):
    """[(finding, reported_from_a_batch_with_flows)] of kind dns_tunnel."""
    out = []
    detector = detector or DnsTunnelDetector()
    for event in Analyzer(detectors=[lambda ctx: detector]).analyze(str(path)):
        if isinstance(event, FlowsReady):
            out += [(f, len(event.view.records) > 0) for f in event.result.findings]
    assert all(f.kind == FindingKind.DNS_TUNNEL for f, _ in out)
    return out


def raw_batches(path):
    """The flow batches of a capture, for driving a detector by hand (as live mode does)."""
    for event in Analyzer(detectors=[]).analyze(str(path)):
        if isinstance(event, FlowsReady):
            yield event.view


# ----------------------------------------------------------------------------------------------- public captures
PUBLIC_TUNNELS = {  # file -> registered domain the finding must name (labels.csv, class dns_tunnel)
    "dmachard-datasets-malicious-dns/dns2tcp.pcap": "hsc.fr",
    "dmachard-datasets-malicious-dns/dnscat2.pcap": "biillpi.com",
    "dmachard-datasets-malicious-dns/dnsextrator.pcap": "hsc.fr",
    "dmachard-datasets-malicious-dns/iodine.pcap": "biillpi.com",
    "dmachard-datasets-malicious-dns/sods.pcap": "hsc.fr",
    "ntop-nDPI/dns-exf.pcap": "test.txt",
    "ntop-nDPI/dns-tunnel-iodine.pcap": "pirate.sea",
    "ntop-nDPI/dns_exfiltration.pcap": "dnscat",
}


def test_every_labelled_public_dns_tunnel_is_listed_here():
    labels = PUBLIC_CAPTURES / "labels.csv"
    if not labels.exists():
        pytest.skip("public captures not present")
    with labels.open(newline="") as fh:
        labelled = {row["file"] for row in csv.DictReader(fh) if row["expected_class"] == "dns_tunnel"}
    assert labelled == set(PUBLIC_TUNNELS)


@pytest.mark.parametrize("name", sorted(PUBLIC_TUNNELS))
def test_public_dns_tunnel_is_found_once_with_its_domain(name):
    found = dns_findings(public_capture(name))
    assert len(found) == 1, [f.evidence for f, _ in found]
    finding = found[0][0]
    assert finding.details["dns_tunnel"]["domain"] == PUBLIC_TUNNELS[name]
    assert PUBLIC_TUNNELS[name] in finding.evidence[0]
    assert finding.severity >= Severity.MEDIUM


def test_public_iodine_single_flow_counts_queries_it_could_not_read():
    finding = dns_findings(public_capture("ntop-nDPI/dns-tunnel-iodine.pcap"))[0][0]
    facts = finding.details["dns_tunnel"]
    assert facts["queries"] == 222 and facts["names_read"] == 4 and facts["flows"] == 1  # labels.csv: 222 NULL
    assert facts["qtypes"] == {"NULL": 1.0} and facts["edns_max"] == 4096
    assert finding.severity == Severity.HIGH
    assert "\\x" in facts["example"] or any("\\x" in e for e in finding.evidence)  # raw label bytes, escaped


def _public_negatives():
    if not PUBLIC_CAPTURES.exists():
        return []
    files = sorted(p for p in PUBLIC_CAPTURES.rglob("*") if p.suffix in (".pcap", ".pcapng", ".cap"))
    return [str(p.relative_to(PUBLIC_CAPTURES)) for p in files if str(p.relative_to(PUBLIC_CAPTURES))
            not in PUBLIC_TUNNELS]


@pytest.mark.parametrize("name", _public_negatives())
def test_public_captures_without_a_dns_tunnel_raise_none(name):
    assert dns_findings(public_capture(name)) == []


def _lab_files():
    return sorted(p.name for p in LAB_CAPTURES.glob("*.pcap"))


@pytest.mark.parametrize("name", _lab_files())
def test_lab_captures_raise_dns_tunnel_findings_only_for_tunnel_scenarios(name):
    found = dns_findings(LAB_CAPTURES / name)
    if name.startswith("dns-tunnel-"):
        assert len(found) == 1 and found[0][0].details["dns_tunnel"]["domain"] == "tunnel-lab.example"
    else:
        assert found == []


def test_detector_is_registered():
    assert BY_NAME["dns_tunnel"] is DnsTunnelDetector


# ----------------------------------------------------------------------------------------------- negatives
def _resolver_traffic(cap: Capture) -> None:
    names = ["pypi.org", "files.pythonhosted.org", "github.com", "api.github.com", "www.google.com", "deb.debian.org",
             "security.debian.org", "registry.npmjs.org", "huggingface.co", "cdn-lfs.huggingface.co", "api.openai.com",
             "objects.githubusercontent.com", "dualstack.python.map.fastly.net", "www.bbc.co.uk"]
    for i in range(300):  # 300 lookups of 14 names, A and AAAA, over 10 minutes
        dns_exchange(cap, i * 2.0, SBX, RESOLVER, names[i % len(names)], "AAAA" if i % 2 else "A")


def _cdn_lookups(cap: Capture) -> None:
    rng = random.Random(11)
    alnum = "abcdefghijklmnopqrstuvwxyz0123456789"
    t = 0.0
    for i in range(80):  # many distinct CDN and cloud names: long, but low-entropy or structured
        for name in (f"e{rng.randint(1000, 99999)}.dscb.akamaiedge.net",
                     "d" + encoded_label(rng, 13, alnum) + ".cloudfront.net",
                     f"prod-api-{rng.randint(10 ** 9, 10 ** 10)}.us-east-1.elb.amazonaws.com",
                     f"ec2-{rng.randint(1, 254)}-{rng.randint(0, 255)}-{rng.randint(0, 255)}-{rng.randint(1, 254)}"
                     f".compute-1.amazonaws.com",
                     f"r{rng.randint(1, 9)}---sn-{encoded_label(rng, 8, alnum)}.googlevideo.com",
                     f"my-bucket-{i}.s3.amazonaws.com"):
            dns_exchange(cap, t, SBX, RESOLVER, name)
            t += 0.5


def _mdns_and_dns_sd(cap: Capture) -> None:
    rng = random.Random(5)
    for i in range(100):
        sp = 5353  # multicast DNS: own port, own group address
        name = f"{encoded_label(rng, 24, HEX)}._googlecast._tcp.local"
        cap.add(i * 0.2, SBX, "224.0.0.251", 17, udp(sp, 5353, dns_query(name, "PTR")))
    for i in range(40):  # unicast DNS-SD browsing
        dns_exchange(cap, 30 + i, SBX, RESOLVER, f"_services._dns-sd._udp.lab{i}.example.com", "PTR")


def _reverse_lookups(cap: Capture) -> None:
    rng = random.Random(3)
    for i in range(200):
        dns_exchange(cap, i * 0.3, SBX, RESOLVER, f"{rng.randint(1, 254)}.{rng.randint(0, 255)}.51.198.in-addr.arpa",
                     "PTR")
        nibbles = ".".join(rng.choice(HEX) for _ in range(32))
        dns_exchange(cap, i * 0.3 + 0.1, SBX, RESOLVER, f"{nibbles}.ip6.arpa", "PTR")


def _mail_txt_checks(cap: Capture) -> None:
    t = 0.0
    for domain in ("example.com", "example.org", "mail.example.net", "lists.example.co.uk"):
        for name, qtype in ((domain, "TXT"), (f"_dmarc.{domain}", "TXT"), (f"selector1._domainkey.{domain}", "TXT"),
                            (f"google._domainkey.{domain}", "TXT"), (f"20230601._domainkey.{domain}", "TXT"),
                            (domain, "MX")):
            for _ in range(3):  # repeated checks, as a mail filter makes them
                dns_exchange(cap, t, SBX, RESOLVER, name, qtype, rdata=b"\x20v=spf1 include:_spf.example ~all")
                t += 1.0


def _package_downloads(cap: Capture) -> None:
    t = 0.0
    for _ in range(5):
        for name in ("pypi.org", "files.pythonhosted.org", "deb.debian.org", "debian.map.fastlydns.net",
                     "github.com", "codeload.github.com", "objects.githubusercontent.com",
                     "github-releases.githubusercontent.com", "registry.npmjs.org", "registry-1.docker.io",
                     "production.cloudflare.docker.com", "auth.docker.io", "download.pytorch.org",
                     "e3b0c44298fc1c149afbf4c8996fb924.safeframe.googlesyndication.com"):
            dns_exchange(cap, t, SBX, RESOLVER, name)
            dns_exchange(cap, t + 0.01, SBX, RESOLVER, name, "AAAA")
            t += 0.2


def _search_domain_nxdomain(cap: Capture) -> None:
    for i in range(60):
        for suffix in ("corp.example.com", "svc.cluster.local", "example.internal"):
            dns_exchange(cap, i * 3.0, SBX, RESOLVER, f"printer-{i % 6}.{suffix}", rcode=3)


NEGATIVES = {f.__name__.lstrip("_"): f for f in (_resolver_traffic, _cdn_lookups, _mdns_and_dns_sd, _reverse_lookups,
                                                  _mail_txt_checks, _package_downloads, _search_domain_nxdomain)}


@pytest.mark.parametrize("name", sorted(NEGATIVES))
def test_ordinary_dns_raises_no_finding(name, tmp_path):
    cap = Capture()
    NEGATIVES[name](cap)
    detector = DnsTunnelDetector()
    assert dns_findings(cap.write(tmp_path / f"{name}.pcap"), detector) == []
    assert detector.names_read + detector.names_ignored >= 40  # the names were read, and judged or ruled out


# ----------------------------------------------------------------------------------------------- positives
def _dnscat_like(cap: Capture, server: str = RESOLVER, count: int = 30) -> None:
    rng = random.Random(1)
    for i in range(count):  # dnscat2: 34-hex-char labels, MX/TXT/CNAME, a fresh source port per query
        name = f"{encoded_label(rng, 34, HEX)}.c2.example"
        dns_exchange(cap, i * 1.0, SBX, server, name, ("MX", "TXT", "CNAME")[i % 3], rdata=b"\x00\x0a\x05mail0\x00")


def test_dnscat_like_session_is_high_with_figures(tmp_path):
    cap = Capture()
    _dnscat_like(cap)
    (finding, early), = dns_findings(cap.write(tmp_path / "dnscat.pcap"))
    facts = finding.details["dns_tunnel"]
    assert finding.severity == Severity.HIGH and early  # reported from inspect, not held to the end
    assert facts["domain"] == "c2.example" and facts["queries"] == 30 and facts["unique_subdomains"] == 30
    assert facts["flows"] == 30 and facts["median_label"] == 34 and facts["resolvers"] == [RESOLVER]
    assert facts["qtypes"] == {"MX": pytest.approx(1 / 3, abs=0.01), "TXT": pytest.approx(1 / 3, abs=0.01),
                               "CNAME": pytest.approx(1 / 3, abs=0.01)}
    assert finding.evidence[0].startswith(f"{SBX} sent 30 queries for 30 unique subdomains of c2.example in 29 s")
    assert "hex 100%" in finding.evidence[1] and "MX 33%" in finding.evidence[2]


def test_direct_queries_to_an_outside_server_are_found_too(tmp_path):
    cap = Capture()
    _dnscat_like(cap, server=OUTSIDE)
    (finding, _), = dns_findings(cap.write(tmp_path / "direct.pcap"))
    assert finding.details["dns_tunnel"]["resolvers"] == [OUTSIDE]


def test_single_port_iodine_like_flow_counts_unread_queries(tmp_path):
    rng = random.Random(2)
    cap = Capture()
    for i in range(120):  # one source port for the whole session: one flow, of which 4 queries are kept
        name = f"{encoded_label(rng, 40, 'abcdefghijklmnopqrstuvwxyz012345')}.t.io.example"  # iodine's base32
        dns_exchange(cap, i * 0.1, SBX, OUTSIDE, name, "NULL", sport=40404, edns=4096, rdata=rng.randbytes(600))
    (finding, _), = dns_findings(cap.write(tmp_path / "iodine.pcap"))
    facts = finding.details["dns_tunnel"]
    assert facts["queries"] == 120 and facts["names_read"] == 4 and facts["flows"] == 1
    assert facts["edns_max"] == 4096 and facts["answer_max"] > 600 and finding.severity == Severity.HIGH
    assert "120 queries" in finding.evidence[0] and "4 names read" in finding.evidence[0]


def test_binary_labels_are_found_and_escaped_in_evidence(tmp_path):
    rng = random.Random(4)
    cap = Capture()
    for i in range(6):
        label = bytes([0xE4, 0x01]) + rng.randbytes(20)
        dns_exchange(cap, i * 0.5, SBX, OUTSIDE, (label, b"pirate", b"sea"), "NULL")
    (finding, _), = dns_findings(cap.write(tmp_path / "binary.pcap"))
    assert finding.details["dns_tunnel"]["domain"] == "pirate.sea"
    assert "\\xe4\\x01" in finding.details["dns_tunnel"]["example"]
    assert all(c.isprintable() for c in "".join(finding.evidence))


def test_one_query_carrying_base64_data_is_reported(tmp_path):
    cap = Capture()
    name = "H4sICN03*2QAA3Rlc3QudHh0AAvJyCxWAKJEheLU5KLUEoW0zJxULgAge-.4S2FgAAAA==-.exfil.example"  # base64(gzip)
    dns_exchange(cap, 0, SBX, RESOLVER, name)
    (finding, _), = dns_findings(cap.write(tmp_path / "one.pcap"))
    assert finding.severity == Severity.MEDIUM and "bytes no host name can" in finding.evidence[-1]


def test_txt_exfiltration_in_base64url_chunks(tmp_path):
    rng = random.Random(6)
    cap = Capture()
    for i in range(14):  # DNSExfiltrator: numbered 63-char base64url chunks, TXT
        name = f"{i}.{encoded_label(rng, 63, BASE64URL)}.{encoded_label(rng, 40, BASE64URL)}.drop.example.co.uk"
        dns_exchange(cap, i * 0.01, SBX, RESOLVER, name, "TXT", rdata=b"\x02OK")
    (finding, _), = dns_findings(cap.write(tmp_path / "exf.pcap"))
    assert finding.details["dns_tunnel"]["domain"] == "example.co.uk"  # co.uk is a public suffix
    assert finding.severity == Severity.HIGH and "base64" in finding.evidence[1]


def test_dns_over_tcp_tunnel(tmp_path):
    rng = random.Random(8)
    cap = Capture()
    for i in range(25):
        query = dns_query(f"{encoded_label(rng, 50, BASE32)}.tcp.example", "TXT")
        answer = dns_answer(query, b"\x10" + rng.randbytes(16))
        cap.tcp_session(i * 1.0, SBX, RESOLVER, 53, struct.pack("!H", len(query)) + query,
                        struct.pack("!H", len(answer)) + answer)
    (finding, early), = dns_findings(cap.write(tmp_path / "tcp.pcap"))
    # closed connections end 10 s after their FIN: the finding comes from a batch, once 8 TXT names are read
    assert early and Params().unique_medium <= finding.details["dns_tunnel"]["queries"] < 25
    assert finding.severity == Severity.HIGH


# ----------------------------------------------------------------------------------------------- reporting
def test_a_long_tunnel_is_reported_once_across_many_batches(tmp_path):
    rng = random.Random(9)
    cap = Capture()
    for i in range(120):  # 10 minutes: UDP flows end on their idle timeout, batch after batch
        dns_exchange(cap, i * 5.0, SBX, RESOLVER, f"{encoded_label(rng, 30, HEX)}.slow.example", "TXT")
    found = dns_findings(cap.write(tmp_path / "slow.pcap"))
    assert len(found) == 1 and found[0][1]  # one finding, emitted early from a batch
    assert found[0][0].details["dns_tunnel"]["queries"] < 120  # ... before the whole session was seen


def test_live_intervals_report_again_only_when_it_got_worse(tmp_path):
    rng = random.Random(10)
    first, second = Capture(), Capture(start=1_700_000_100.0)
    for i in range(10):  # 10 encoded A lookups: medium, held until the interval ends
        dns_exchange(first, i * 1.0, SBX, RESOLVER, f"{encoded_label(rng, 30, HEX)}.live.example")
    for i in range(30):  # 30 more: high, reported as soon as it is seen
        dns_exchange(second, i * 1.0, SBX, RESOLVER, f"{encoded_label(rng, 30, HEX)}.live.example")
    detector = DnsTunnelDetector()
    detector.start("br0")
    during = [f for b in raw_batches(first.write(tmp_path / "a.pcap")) for f in detector.inspect(b).findings]
    at_end = detector.finish().findings
    assert during == [] and [f.severity for f in at_end] == [Severity.MEDIUM]
    during = [f for b in raw_batches(second.write(tmp_path / "b.pcap")) for f in detector.inspect(b).findings]
    assert [f.severity for f in during] == [Severity.HIGH]
    assert during[0].details["dns_tunnel"]["queries"] == 40
    assert detector.finish().findings == []
    assert detector.finish().findings == []


def test_state_is_bounded_and_drops_are_counted(tmp_path):
    rng = random.Random(12)
    cap = Capture()
    for d in range(10):
        for i in range(3):
            dns_exchange(cap, d * 3 + i, SBX, RESOLVER, f"{encoded_label(rng, 30, HEX)}.d{d}.example")
    detector = DnsTunnelDetector(params=Params(max_domains=4, max_subdomains=2))
    detector.start("x")
    for batch in raw_batches(cap.write(tmp_path / "many.pcap")):
        detector.inspect(batch)
    assert len(detector._states) == 4 and detector.dropped_domains == 6
    assert all(len(s.subdomains) <= 2 and s.subdomains_full for s in detector._states.values())


# ----------------------------------------------------------------------------------------------- names and messages
@pytest.mark.parametrize("name, domain, sub", [
    ("a.b.example.com", "example.com", (b"a", b"b")),
    ("x.tunnel.co.uk", "tunnel.co.uk", (b"x",)),
    ("d1234abcd.cloudfront.net", "d1234abcd.cloudfront.net", ()),
    ("s1._domainkey.example.org", "example.org", (b"s1",)),
    ("dnscat.0a1b2c3d4e5f", "dnscat", (b"0a1b2c3d4e5f",)),
])
def test_split_name(name, domain, sub):
    table = _question_table(name)
    assert domain_text(table, 0) == domain
    assert table.messages[0]["sub_length"] == len(b"".join(sub))


@pytest.mark.parametrize("name", ["4.3.2.1.in-addr.arpa", "b.a.ip6.arpa", "printer.local", "wpad", "_x._tcp.local"])
def test_names_never_judged(name):
    assert domain_text(_question_table(name), 0) is None


def _question_table(name: str):
    """The message table of one A query for `name`."""
    query = dns_query(tuple(p.encode() for p in name.split(".")), "A")
    arrays, seq = naive_dns.kept_arrays([naive_dns.Flow(17, [(0, query, None, 5)])])
    return decode_dns(arrays, np.array([0]), np.array([17]), np.zeros(1, np.int64), seq)


@pytest.mark.parametrize("sub, charset, encoded", [
    ("147901b8d3df9cc46c59d600078b3316ce", "hex", True),
    ("knjuqljsfyyc2t3qmvxfgu2il44c4olqgeqfkytvnz2hkljtovrhk3tu", "base32", True),
    ("r747Clg-tK5pUdkH0R12a7gJ9sFPi9Aackw0kGtq", "base64", True),
    ("AAAAAH7wQA.=auth.dns2tcp", "symbols", True),
    ("laczi1dwmfbaywb0fm5xhkrgz0heotzq", "random", True),
    ("firefox-settings-attachments.cdn", "text", False),
    ("prod-api-1234567890.us-east-1", "text", False),
    ("e1234.dscb", "text", False),
    ("d111111abcdef8", "hex", False),  # a CloudFront distribution: too short to be called data
    ("incoming.telemetry", "text", False),
])
def test_name_features(sub, charset, encoded):
    """The kernel's verdict on the labels below a registered domain (payload/name_features.py)."""
    name = sub + ".example.com"
    m = _question_table(name).messages[0]
    assert (DNS_CHARSETS[m["charset"]], bool(m["encoded"])) == (charset, encoded)


def test_table_reads_names_dpkt_refuses_and_the_edns_size():
    query = dns_query((b"\xe4\xff\x00raw", b"pirate", b"sea"), "NULL", edns=4096)
    answer = dns_answer(query, b"\x00" * 300)
    tcp = struct.pack("!H", len(query)) + query
    arrays, seq = naive_dns.kept_arrays([naive_dns.Flow(17, [(0, query, None, 5), (1, answer, None, 9)]),
                                         naive_dns.Flow(6, [(0, tcp * 3, None, 5)])])
    table = decode_dns(arrays, np.array([0, 1]), np.array([17, 6]), np.zeros(2, np.int64), seq)
    q, a = table.messages[0], table.messages[1]
    assert name_labels(table, int(q["qname"])) == (b"\xe4\xff\x00raw", b"pirate", b"sea") and q["qtype"] == 10
    assert q["edns_size"] == 4096 and not q["is_response"]
    assert a["is_response"] and a["answers_read"] == 1 and a["answer_rdata_bytes"] == 300
    assert table.answers[a["answer_first"]]["rtype"] == 10
    assert name_text(name_labels(table, int(q["qname"]))) == "\\xe4\\xff\\x00raw.pirate.sea"
    assert (table.messages["row"] == 1).sum() == 3


def test_summary_never_raises_on_damaged_messages():
    rng = random.Random(13)
    good = dns_message("www.example.com", [("www.example.com", "A", 60, "192.0.2.1")])
    for _ in range(3000):
        data = bytearray(good[:rng.randint(0, len(good))])
        for _ in range(rng.randint(0, 4)):
            if data:
                data[rng.randrange(len(data))] = rng.randrange(256)
        summary = naive_dns.summarize_message(bytes(data))
        assert summary is None or summary.size == len(data)
    loop = struct.pack("!HHHHHH", 1, 0x0100, 1, 0, 0, 0) + b"\xc0\x0c" + b"\0\1\0\1"  # a pointer to itself
    assert naive_dns.summarize_message(loop) is None


def test_a_flow_that_mixes_domains_attributes_only_what_it_read(tmp_path):
    rng = random.Random(14)
    cap = Capture()
    for i in range(12):  # one source port asking about two domains (a forwarder reusing its socket)
        name = f"{encoded_label(rng, 30, HEX)}.mixed.example" if i % 2 else f"www{i}.other.example"
        dns_exchange(cap, i * 0.2, SBX, RESOLVER, name, sport=5353 + 1)
    detector = DnsTunnelDetector()
    assert dns_findings(cap.write(tmp_path / "mixed.pcap"), detector) == []  # 2 encoded names read: not enough
    assert detector.unattributed_queries == 12 - 4
    assert {s.domain: s.queries for s in detector._states.values()} == {"mixed.example": 2, "other.example": 2}
