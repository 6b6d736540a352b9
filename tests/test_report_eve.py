"""`--format eve`: Suricata EVE events that Suricata's own schema accepts, one alert per finding, one flow event per
flow, and Community IDs as the spec defines them."""
import copy
import ipaddress
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import communityid
import jsonschema
import pytest
from click.testing import CliRunner

from conftest import PUBLIC_CAPTURES, missing_tools, public_capture
from egressguard.cli import main
from egressguard.report.community_id import community_id_v1, decoded_community_id, flow_hash
from egressguard.report.eve import alert_event, eve_severity, signature_id
from egressguard.schema import FindingKind

REPO = Path(__file__).resolve().parents[1]
LAB_RULES = REPO / "captures" / "rules.toml"
SCHEMA_PATH = REPO.parent / "shared" / "reference" / "suricata-eve-schema.json"
LAB = ["ssh-reverse-shell.pcap", "stratum-tls-pool-name.pcap", "dns-lookups-benign.pcap", "icmp-tunnel-ptunnel.pcap",
       "dns-tunnel-iodine.pcap"]
PUBLIC = ["ntop-nDPI/http_ipv6.pcap", "ntop-nDPI/icmp-tunnel.pcap", "ntop-nDPI/monero.pcap", "ntop-nDPI/ssh.pcap",
          "ntop-nDPI/KakaoTalk_chat.pcap", "FoxIO-ja4/pcap/ssh-r.pcap"]

# Community ID v1 test vectors of the spec (corelight/community-id-spec baseline/baseline_deflt.json, seed 0; ports
# as hashed: ICMP type and counterpart type, or code for one-way messages), and the spec README's seed 1 examples
SPEC_VECTORS = [
    (58, "fe80::200:86ff:fe05:80da", "fe80::260:97ff:fe07:69ea", 135, 136, "1:dGHyGvjMfljg6Bppwm3bg0LO8TY="),
    (58, "fe80::260:97ff:fe07:69ea", "fe80::200:86ff:fe05:80da", 136, 135, "1:dGHyGvjMfljg6Bppwm3bg0LO8TY="),
    (58, "fe80::260:97ff:fe07:69ea", "fe80::200:86ff:fe05:80da", 135, 136, "1:zavyT/cezQr1fmImYCwYnMXbgck="),
    (58, "3ffe:501:1800:2345::2", "3ffe:507:0:1:200:86ff:fe05:80da", 3, 0, "1:2ObVBgIn28oZvibYZhZMBgh7WdQ="),
    (58, "3ffe:501:410:0:2c0:dfff:fe47:33e", "3ffe:507:0:1:200:86ff:fe05:80da", 1, 4, "1:hLZd0XGWojozrvxqE0dWB1iM6R0="),
    (58, "3ffe:507:0:1:200:86ff:fe05:80da", "3ffe:501:0:1001::2", 128, 129, "1:+TW+HtLHvV1xnGhV1lv7XoJrqQg="),
    (58, "3ffe:501:0:1001::2", "3ffe:507:0:1:200:86ff:fe05:80da", 129, 128, "1:+TW+HtLHvV1xnGhV1lv7XoJrqQg="),
    (58, "fe80::200:86ff:fe05:80da", "ff02::2", 133, 134, "1:hO+sN4H+MG5MY/8hIrXPqc4ZQz0="),
    (1, "192.168.0.89", "192.168.0.1", 8, 0, "1:X0snYXpgwiv9TZtqg64sgzUn6Dk="),
    (1, "192.168.0.1", "192.168.0.89", 0, 8, "1:X0snYXpgwiv9TZtqg64sgzUn6Dk="),
    (1, "10.0.0.1", "10.0.0.2", 11, 0, "1:YHxtAirCG//0OzkcVAukqKQN9xM="),
    (6, "2001:470:e5bf:dead:4957:2174:e82c:4887", "2607:f8b0:400c:c03::1a", 63943, 25,
     "1:/qFaeAR+gFe1KYjMzVDsMv+wgU4="),
    (6, "2607:f8b0:400c:c03::1a", "2001:470:e5bf:dead:4957:2174:e82c:4887", 25, 63943,
     "1:/qFaeAR+gFe1KYjMzVDsMv+wgU4="),
    (132, "192.168.170.8", "192.168.170.56", 7, 7, "1:MP2EtRCAUIZvTw6MxJHLV7N7JDs="),
    (6, "128.232.110.120", "66.35.250.204", 34855, 80, "1:LQU9qZlK+B5F3KDmev6m5PMibrg="),
    (17, "192.168.1.52", "8.8.8.8", 54585, 53, "1:d/FP5EW3wiY1vCndhwleRRKHowQ="),
    (17, "8.8.8.8", "192.168.1.52", 53, 54585, "1:d/FP5EW3wiY1vCndhwleRRKHowQ="),
    (46, "10.1.12.1", "10.1.12.2", None, None, "1:KHlLkgoJW7ifUTyTSgyVfkFHzKw="),
    (46, "10.1.12.2", "10.1.12.1", None, None, "1:KHlLkgoJW7ifUTyTSgyVfkFHzKw="),
]


@pytest.mark.parametrize("proto, src, dst, sport, dport, expected", SPEC_VECTORS)
def test_community_id_spec_vectors(proto, src, dst, sport, dport, expected):
    s, d = ipaddress.ip_address(src).packed, ipaddress.ip_address(dst).packed
    if sport is None:
        assert flow_hash(s, d, proto, None, None) == expected
    else:
        assert decoded_community_id(s, d, proto, sport, dport) == expected


def test_community_id_spec_readme_examples():
    """Type/code form (the spec README and Zeek's btest): ICMP code, not counterpart, and seed 1."""
    assert community_id_v1("1.2.3.4", "5.6.7.8", 6, 1122, 3344) == "1:wCb3OG7yAFWelaUydu0D+125CLM="
    assert community_id_v1("5.6.7.8", "1.2.3.4", 6, 3344, 1122) == "1:wCb3OG7yAFWelaUydu0D+125CLM="
    assert community_id_v1("1.2.3.4", "5.6.7.8", 17, 1122, 3344) == "1:0Mu9InQx6z4ZiCZM/7HXi2WMhOg="
    assert community_id_v1("1.2.3.4", "5.6.7.8", 1, 8, 0) == "1:crodRHL2FEsHjbv3UkRrfbs4bZ0="
    assert community_id_v1("5.6.7.8", "1.2.3.4", 1, 0, 0) == "1:crodRHL2FEsHjbv3UkRrfbs4bZ0="
    assert community_id_v1("fe80:1:203:405:607:809:a0b:c0d", "fe80:1011:1213:1415:1617:1819:1a1b:1c1d", 58,
                           128, 0) == "1:0bf7hyMJUwt3fMED7z8LIfRpBeo="
    assert community_id_v1("1.2.3.4", "5.6.7.8", 6, 1122, 3344, seed=1) == "1:HhA1B+6CoLbiKPEs5nhNYN4XWfk="
    assert community_id_v1("1.2.3.4", "5.6.7.8", 17, 1122, 3344, seed=1) == "1:OShq+iKDAMVouh/4bMxB9Sz4amw="
    assert community_id_v1("1.2.3.4", "5.6.7.8", 1, 8, 0, seed=1) == "1:9pr4ZGTICiuZoIh90RRYE2RyXpU="


def test_eve_severity_mapping():
    """1 is the highest: critical 1, high 1/2, medium 2/3, low 3/4 (the higher one from the documented score)."""
    assert eve_severity("critical", 0.1) == 1
    assert (eve_severity("high", 0.95), eve_severity("high", 0.6)) == (1, 2)
    assert (eve_severity("medium", 0.8), eve_severity("medium", 0.5)) == (2, 3)
    assert (eve_severity("low", 0.5), eve_severity("low", 0.2)) == (3, 4)
    ids = [signature_id(str(k)) for k in FindingKind]
    assert len(set(ids)) == len(ids) and all(1_000_000 <= i < 2_000_000 for i in ids)


# ------------------------------------------------------------------------------------------------ real runs
@pytest.fixture(scope="module")
def validator():
    """Suricata's schema with the one key egressguard adds; everything else stays as strict as Suricata's."""
    if not SCHEMA_PATH.exists():
        pytest.skip(f"Suricata's EVE schema not found at {SCHEMA_PATH}")
    schema = json.loads(SCHEMA_PATH.read_text())
    assert schema["additionalProperties"] is False  # unknown top-level keys are errors in the schema itself
    schema = copy.deepcopy(schema)
    schema["properties"]["egressguard"] = {"type": "object"}
    cls = jsonschema.validators.validator_for(schema, default=jsonschema.Draft202012Validator)
    cls.check_schema(schema)
    return cls(schema)


def _run(fmt: str, captures: list[Path], *extra: str) -> list[dict]:
    args = ["analyze", "--rules", str(LAB_RULES), "--format", fmt, *extra, *map(str, captures)]
    result = CliRunner().invoke(main, args)
    assert result.exit_code in (0, 1), result.output
    return [json.loads(line) for line in result.stdout.splitlines()]


def _check_run(captures: list[Path], validator) -> list[dict]:
    """EVE of the captures, checked against the JSONL of the same run: schema, counts, Community IDs, flow ids."""
    events = _run("eve", captures)
    records = _run("jsonl", captures, "--flows")
    for event in events:
        errors = [e.message for e in validator.iter_errors(event)]
        assert not errors, (event["event_type"], errors[:3])
        bogus = dict(event, bogus_key=1)
        assert not validator.is_valid(bogus)  # only `egressguard` may be added
    kinds = [e["event_type"] for e in events]
    jsonl_flows = [r for r in records if r["type"] == "flow"]
    findings = [r for r in records if r["type"] == "finding"]
    summaries = [r for r in records if r["type"] == "summary"]
    assert kinds.count("flow") == len(jsonl_flows) == sum(s["flows"] for s in summaries)
    assert kinds.count("alert") == len(findings)
    assert kinds.count("stats") == len(captures)
    assert sorted(e["egressguard"]["kind"] for e in events if e["event_type"] == "alert") == \
        sorted(f["kind"] for f in findings)
    assert [e["egressguard"]["flows"] for e in events if e["event_type"] == "stats"] == \
        [s["flows"] for s in summaries]
    # Community IDs of TCP/UDP flows computed by the reference implementation from the EVE keys alone
    oracle = communityid.CommunityID()
    flows = [e for e in events if e["event_type"] == "flow"]
    for flow in flows:
        if flow["proto"] in ("TCP", "UDP"):
            make = communityid.FlowTuple.make_tcp if flow["proto"] == "TCP" else communityid.FlowTuple.make_udp
            tpl = make(flow["src_ip"], flow["dest_ip"], flow["src_port"], flow["dest_port"])
            assert flow["community_id"] == oracle.calc(tpl)
        assert flow["in_iface"] == flow["egressguard"]["capture"]
    # every alert points at a flow event of the run (same flow_id and community_id)
    by_id = {f["flow_id"]: f for f in flows}
    for alert in (e for e in events if e["event_type"] == "alert"):
        assert alert["flow_id"] in by_id
        assert by_id[alert["flow_id"]]["community_id"] == alert["community_id"]
        assert alert["egressguard"]["evidence"] and alert["egressguard"]["score"] >= 0
    assert len(by_id) == len(flows)  # one flow_id per flow
    alerted = {a["flow_id"] for a in events if a["event_type"] == "alert"}
    assert all(f["flow_id"] in alerted for f in flows if f["flow"]["alerted"])
    return events


def test_eve_lab_captures(validator):
    events = _check_run([REPO / "captures" / name for name in LAB], validator)
    ssh = [e for e in events if e["event_type"] == "ssh"]
    assert ssh and ssh[0]["ssh"]["client"]["software_version"].startswith("OpenSSH_")
    assert ssh[0]["ssh"]["server"]["proto_version"] == "2.0"
    alerts = [e for e in events if e["event_type"] == "alert"]
    reverse = [a for a in alerts if a["egressguard"]["kind"] == "reverse_ssh_tunnel"]
    assert reverse and reverse[0]["alert"]["severity"] == 1
    assert reverse[0]["alert"]["signature_id"] == signature_id("reverse_ssh_tunnel")
    assert next(f for f in events if f["event_type"] == "flow" and f["flow_id"] == reverse[0]["flow_id"])[
        "flow"]["alerted"] is True  # found when the flow ended: its flow event says so
    assert "ssh" in reverse[0]["egressguard"]  # the finding's details stay whole inside `egressguard`
    assert {"tls": {"sni": "zec-eu1.nanopool.org"}}.items() <= \
        next(e for e in events if e["event_type"] == "tls").items()
    benign = "captures/dns-lookups-benign.pcap"
    queries = {q["rrname"] for e in events if e["event_type"] == "dns" and e["in_iface"].endswith(benign)
               for q in e["dns"].get("queries", ())}
    assert "pypi.org" in queries and len(queries) > 20
    responses = [e for e in events if e["event_type"] == "dns" and e["dns"]["type"] == "response"]
    assert any(a.get("rdata") for r in responses for a in r["dns"].get("answers", ()))
    icmp = [e for e in events if e["event_type"] == "flow" and e["proto"] == "ICMP"]
    assert icmp and all("src_port" not in e and "icmp_type" in e for e in icmp)


def test_eve_output_file(tmp_path, validator):
    out = tmp_path / "eve.json"
    capture = REPO / "captures" / "ssh-reverse-shell.pcap"
    result = CliRunner().invoke(main, ["analyze", "--rules", str(LAB_RULES), "--format", "eve", "-o", str(out),
                                       str(capture)])
    assert result.exit_code == 1 and result.stdout == ""
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert lines and all(validator.is_valid(e) for e in lines)
    bad = CliRunner().invoke(main, ["analyze", "--format", "eve", "-o", str(tmp_path / "no" / "x"), str(capture)])
    assert bad.exit_code == 2 and "cannot write the output file" in bad.output


def test_live_finding_record_as_eve(validator):
    """What `watch --format eve` writes: a live finding record (with sandbox, port, interface) as an alert."""
    events = _run("jsonl", [REPO / "captures" / "stratum-tls-pool-name.pcap"])
    finding = next(r for r in events if r["type"] == "finding" and r["kind"] == "mining")
    live = dict(finding, sandbox="miner-1", sandbox_port="veth-miner", interface="br-sandbox")
    alert = alert_event(live)
    assert validator.is_valid(alert)
    assert alert["in_iface"] == "br-sandbox"
    assert alert["egressguard"]["sandbox"] == "miner-1" and alert["egressguard"]["mining"]["pool"]
    assert alert["alert"]["category"] == "Crypto Currency Mining Activity Detected"


@pytest.mark.public
def test_eve_public_captures(validator):
    paths = [public_capture(p) for p in PUBLIC]
    events = _check_run(paths, validator)
    assert any(e["event_type"] == "flow" and ":" in e["src_ip"] for e in events)  # IPv6 flows
    assert any(e["event_type"] == "tls" for e in events)
    assert PUBLIC_CAPTURES.exists()


SEND_FRAMES = """
import socket, sys, time
import dpkt
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
s.bind((sys.argv[1], 0))
with open(sys.argv[2], "rb") as f:
    for _, frame in dpkt.pcap.Reader(f):
        s.send(frame)
        time.sleep(0.002)
"""


@pytest.mark.root
@pytest.mark.skipif(os.geteuid() != 0, reason="watch needs raw sockets and the test creates a namespace: root")
@pytest.mark.skipif(bool(missing_tools("ip")), reason="missing tool: ip")
def test_watch_format_eve_on_stdout_and_in_the_alerts_file(tmp_path, validator):
    """watch --format eve on one end of a veth pair in a namespace of its own, the frames of a recorded mining
    session (TLS to a pool name) sent into the other end: the finding comes out as a valid EVE alert, on stdout
    and in --alerts alike."""
    ns = f"egeve{os.getpid() % 100000}"
    alerts = tmp_path / "alerts.json"
    subprocess.run(["ip", "netns", "add", ns], check=True)
    try:
        for cmd in (["ip", "link", "add", "ega", "type", "veth", "peer", "name", "egb"],
                    ["ip", "link", "set", "ega", "up"], ["ip", "link", "set", "egb", "up"]):
            subprocess.run(["ip", "netns", "exec", ns, *cmd], check=True)
        proc = subprocess.Popen(["ip", "netns", "exec", ns, sys.executable, "-m", "egressguard", "watch", "-i", "ega",
                                 "--no-dashboard", "--format", "eve", "--alerts", str(alerts), "--rules",
                                 str(LAB_RULES)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO)
        try:
            deadline = time.time() + 180
            for line in proc.stderr:
                if "watching" in line or time.time() > deadline:
                    break
            subprocess.run(["ip", "netns", "exec", ns, sys.executable, "-c", SEND_FRAMES, "egb",
                            str(REPO / "captures" / "stratum-tls-pool-name.pcap")], check=True, timeout=60)
            time.sleep(3.0)
        finally:
            proc.send_signal(signal.SIGTERM)
            out, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, err
        printed = [json.loads(line) for line in out.splitlines()]
        written = [json.loads(line) for line in alerts.read_text().splitlines()]
        assert printed and printed == written
        for event in printed:
            assert event["event_type"] == "alert" and validator.is_valid(event), event
            assert event["in_iface"] == "ega"
        mining = [e for e in printed if e["egressguard"]["kind"] == "mining"]
        assert mining and mining[0]["alert"]["signature_id"] == signature_id("mining")
        assert mining[0]["egressguard"]["sandbox"] and mining[0]["dest_port"] == 443
    finally:
        subprocess.run(["ip", "netns", "del", ns], capture_output=True)
