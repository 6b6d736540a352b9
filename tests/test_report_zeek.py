"""`--format zeek`: conn.log, dns.log and ssl.log as Zeek JSON lines with the fields and JSON types RITA v5 imports,
checked against the JSONL of the same run and against the packets themselves (dpkt)."""
import ipaddress
import json
from collections import defaultdict
from pathlib import Path

import dpkt
import pytest
from click.testing import CliRunner

from conftest import public_capture
from egressguard.cli import main

REPO = Path(__file__).resolve().parents[1]
LAB_RULES = REPO / "captures" / "rules.toml"
LAB = ["ssh-reverse-shell.pcap", "stratum-tls-pool-name.pcap", "dns-lookups-benign.pcap", "icmp-tunnel-ptunnel.pcap"]
PUBLIC = ["ntop-nDPI/http_ipv6.pcap", "ntop-nDPI/icmp-tunnel.pcap", "ntop-nDPI/KakaoTalk_chat.pcap",
          "FoxIO-ja4/pcap/ssh-r.pcap"]

# The JSON types of RITA v5's structs (activecm/rita importer/zeektypes conn.go, dns.go, ssl.go: Go's
# encoding/json rejects a float for a uint64 and a string for a bool): "float" is any JSON number
COUNT, PORT, FLOAT, TEXT, ADDR, BOOL = "count", "port", "float", "text", "addr", "bool"
CONN_FIELDS = {"ts": FLOAT, "uid": TEXT, "id.orig_h": ADDR, "id.orig_p": PORT, "id.resp_h": ADDR, "id.resp_p": PORT,
               "proto": TEXT, "duration": FLOAT, "orig_bytes": COUNT, "resp_bytes": COUNT, "conn_state": TEXT,
               "local_orig": BOOL, "local_resp": BOOL, "missed_bytes": COUNT, "history": TEXT, "orig_pkts": COUNT,
               "orig_ip_bytes": COUNT, "resp_pkts": COUNT, "resp_ip_bytes": COUNT}
CONN_OPTIONAL = {"service": TEXT}
DNS_FIELDS = {"ts": FLOAT, "uid": TEXT, "id.orig_h": ADDR, "id.orig_p": PORT, "id.resp_h": ADDR, "id.resp_p": PORT,
              "proto": TEXT, "trans_id": COUNT, "RD": BOOL, "AA": BOOL, "TC": BOOL, "RA": BOOL, "Z": COUNT,
              "rejected": BOOL}
DNS_OPTIONAL = {"query": TEXT, "qclass": COUNT, "qclass_name": TEXT, "qtype": COUNT, "qtype_name": TEXT,
                "rcode": COUNT, "rcode_name": TEXT, "rtt": FLOAT, "answers": list, "TTLs": list}
SSL_FIELDS = {"ts": FLOAT, "uid": TEXT, "id.orig_h": ADDR, "id.orig_p": PORT, "id.resp_h": ADDR, "id.resp_p": PORT,
              "server_name": TEXT}
CONN_STATES = {"S0", "S1", "SF", "REJ", "S2", "S3", "RSTO", "RSTR", "RSTOS0", "RSTRH", "SH", "SHR", "OTH"}


def _typed(value, kind) -> bool:
    if kind is COUNT:
        return type(value) is int and value >= 0
    if kind is PORT:
        return type(value) is int and 0 <= value <= 65535
    if kind is FLOAT:
        return type(value) in (int, float) and value >= 0
    if kind is BOOL:
        return type(value) is bool
    if kind is ADDR:
        return isinstance(value, str) and bool(ipaddress.ip_address(value))
    if kind is list:
        return isinstance(value, list)
    return isinstance(value, str)


def _check_fields(entry: dict, required: dict, optional: dict) -> None:
    assert set(required) <= set(entry), set(required) - set(entry)
    assert set(entry) <= set(required) | set(optional), set(entry) - set(required) - set(optional)
    for key, value in entry.items():
        assert _typed(value, {**required, **optional}[key]), (key, value)


def _analyze(tmp_path: Path, captures: list[Path]) -> tuple[dict[str, list[dict]], list[dict]]:
    out = tmp_path / "zeek"
    args = ["analyze", "--rules", str(LAB_RULES), "--format", "zeek", "--output-dir", str(out), *map(str, captures)]
    result = CliRunner().invoke(main, args)
    assert result.exit_code in (0, 1), result.output
    assert result.stdout == ""
    logs = {}
    for log in ("conn", "dns", "ssl"):
        path = out / f"{log}.log"
        logs[log] = [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []
    jsonl = CliRunner().invoke(main, ["analyze", "--rules", str(LAB_RULES), "--format", "jsonl", "--flows",
                                      *map(str, captures)])
    return logs, [json.loads(line) for line in jsonl.stdout.splitlines()]


def _check_logs(logs: dict[str, list[dict]], records: list[dict]) -> None:
    flows = [r for r in records if r["type"] == "flow"]
    assert len(logs["conn"]) == len(flows) == sum(r["flows"] for r in records if r["type"] == "summary")
    for entry in logs["conn"]:
        _check_fields(entry, CONN_FIELDS, CONN_OPTIONAL)
        assert entry["conn_state"] in CONN_STATES
        assert entry["uid"].startswith("C") and len(entry["uid"]) == 18
    assert len({e["uid"] for e in logs["conn"]}) == len(logs["conn"])
    # same flows as the JSONL records, field for field where Zeek and egressguard mean the same thing
    assert sorted((e["id.orig_h"], e["id.resp_h"], e["orig_pkts"], e["resp_pkts"], e["orig_bytes"])
                  for e in logs["conn"]) == \
        sorted((f["src_ip"], f["dst_ip"], f["src_pkts"], f["dst_pkts"], f["src_payload_bytes"]) for f in flows)
    uids = {e["uid"] for e in logs["conn"]}
    for entry in logs["dns"]:
        _check_fields(entry, DNS_FIELDS, DNS_OPTIONAL)
        assert entry["uid"] in uids
        assert len(entry.get("answers", ())) == len(entry.get("TTLs", ()))
    for entry in logs["ssl"]:
        _check_fields(entry, SSL_FIELDS, {})
        assert entry["uid"] in uids


def _tcp_flags_per_direction(path: Path) -> dict[tuple, dict[str, int]]:
    """(orig addr, orig port, resp addr, resp port) -> OR of the TCP flags each side sent; orig sent the first
    bare SYN, else the first packet (dpkt, independent of egressguard's decoder)."""
    seen: dict[frozenset, tuple] = {}
    flags: dict[tuple, dict[str, int]] = defaultdict(lambda: {"orig": 0, "resp": 0})
    with open(path, "rb") as f:
        for _, buf in dpkt.pcap.Reader(f):
            ip = dpkt.ethernet.Ethernet(buf).data
            if not isinstance(ip, (dpkt.ip.IP, dpkt.ip6.IP6)) or not isinstance(ip.data, dpkt.tcp.TCP):
                continue
            tcp = ip.data
            src = (ipaddress.ip_address(ip.src).compressed, tcp.sport)
            dst = (ipaddress.ip_address(ip.dst).compressed, tcp.dport)
            key = frozenset((src, dst))
            if key not in seen:
                seen[key] = src + dst
            tpl = seen[key]
            flags[tpl]["orig" if src == tpl[:2] else "resp"] |= tcp.flags
    return flags


def test_zeek_lab_captures(tmp_path):
    captures = [REPO / "captures" / name for name in LAB]
    logs, records = _analyze(tmp_path, captures)
    _check_logs(logs, records)
    # dns.log has every question the benign lookups capture asked (read with dpkt)
    asked = set()
    with open(REPO / "captures" / "dns-lookups-benign.pcap", "rb") as f:
        for _, buf in dpkt.pcap.Reader(f):
            udp = dpkt.ethernet.Ethernet(buf).data.data
            if isinstance(udp, dpkt.udp.UDP) and udp.dport == 53:
                asked.update(q.name for q in dpkt.dns.DNS(udp.data).qd)
    logged = {e["query"] for e in logs["dns"] if "query" in e}
    assert asked and asked <= logged
    answered = [e for e in logs["dns"] if e.get("query") == "pypi.org"]
    assert answered and answered[0]["qtype_name"] == "A" and answered[0]["rcode_name"] == "NOERROR"
    assert all(ipaddress.ip_address(a) for a in answered[0]["answers"])
    assert {"server_name": "zec-eu1.nanopool.org"}.items() <= logs["ssl"][0].items()
    services = {e.get("service") for e in logs["conn"]}
    assert {"ssh", "ssl", "dns"} <= services
    assert {e["proto"] for e in logs["conn"]} >= {"tcp", "udp", "icmp"}
    # history letters and conn_state follow the flags each side really sent
    for capture in ("ssh-reverse-shell.pcap", "stratum-tls-pool-name.pcap"):
        for (oh, op, rh, rp), f in _tcp_flags_per_direction(REPO / "captures" / capture).items():
            entry = next(e for e in logs["conn"] if (e["id.orig_h"], e["id.orig_p"], e["id.resp_h"],
                                                     e["id.resp_p"]) == (oh, op, rh, rp))
            o, r = f["orig"], f["resp"]
            history = entry["history"]
            assert ("S" in history) == bool(o & dpkt.tcp.TH_SYN)
            assert ("h" in history) == bool(r & dpkt.tcp.TH_SYN)
            assert ("F" in history, "f" in history) == (bool(o & dpkt.tcp.TH_FIN), bool(r & dpkt.tcp.TH_FIN))
            assert ("R" in history, "r" in history) == (bool(o & dpkt.tcp.TH_RST), bool(r & dpkt.tcp.TH_RST))
            fins = o & r & dpkt.tcp.TH_FIN and not (o | r) & dpkt.tcp.TH_RST
            assert (entry["conn_state"] == "SF") == bool(fins and o & dpkt.tcp.TH_SYN and r & dpkt.tcp.TH_SYN)
            if not (o | r) & (dpkt.tcp.TH_FIN | dpkt.tcp.TH_RST) and o & r & dpkt.tcp.TH_SYN:
                assert entry["conn_state"] == "S1"


def test_zeek_output_dir_errors(tmp_path):
    capture = str(REPO / "captures" / "ssh-reverse-shell.pcap")
    missing = CliRunner().invoke(main, ["analyze", "--format", "zeek", capture])
    assert missing.exit_code == 2 and "--output-dir" in missing.output
    a_file = tmp_path / "file"
    a_file.write_text("")
    result = CliRunner().invoke(main, ["analyze", "--format", "zeek", "--output-dir", str(a_file), capture])
    assert result.exit_code == 2 and "is a file" in result.output  # click's own check of the option
    result = CliRunner().invoke(main, ["analyze", "--format", "zeek", "--output-dir", str(a_file / "sub"), capture])
    assert result.exit_code == 2, result.output
    assert result.output.startswith("egressguard: error:") and "cannot create the output directory" in result.output
    assert result.output.count("\n") == 1  # one line, no traceback
    wrong = CliRunner().invoke(main, ["analyze", "--format", "jsonl", "--output-dir", str(tmp_path), capture])
    assert wrong.exit_code == 2 and "--output-dir is for --format zeek" in wrong.output


@pytest.mark.public
def test_zeek_public_captures(tmp_path):
    captures = [public_capture(p) for p in PUBLIC]
    logs, records = _analyze(tmp_path, captures)
    _check_logs(logs, records)
    assert any(":" in e["id.orig_h"] for e in logs["conn"])  # IPv6
    assert logs["ssl"] and logs["dns"]
