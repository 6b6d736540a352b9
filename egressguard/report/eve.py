"""Suricata EVE JSON output (docs.suricata.io output/eve/eve-json-format): `flow`, `alert`, `ssh`, `tls`, `dns` and
`stats` events, one JSON object per line, so that Filebeat's Suricata module, Splunk's Suricata app, Logstash or
Vector ingest egressguard like a Suricata sensor.

Every event has Suricata's common keys (`timestamp`, `event_type`, `flow_id`, `community_id`, `in_iface`, `src_ip`,
`src_port`, `dest_ip`, `dest_port`, `proto`) where they apply; egressguard's own data (kind, score, evidence,
details, every other field of its JSONL record) is in the one `egressguard` object, the only key Suricata's schema
does not know. `src` is always the flow's originator. For ICMP the flow's ports become `icmp_type` (and
`icmp_code` for messages without a request/reply counterpart, whose code egressguard keeps).

Alert severity, EVE style (1 is the highest; Suricata classification.config priorities 1-4):
    critical -> 1; high -> 1 with score >= 0.9, else 2; medium -> 2 with score >= 0.7, else 3;
    low -> 3 with score >= 0.5, else 4.
"""
from __future__ import annotations

import datetime as _dt
import hashlib
import zlib
from typing import Any, TextIO

import numpy as np

from egressguard.report.app_facts import (dns_messages, rcode_name, rr_type_name, services, split_ssh_banner,
                                          tls_server_names)
from egressguard.report.community_id import ICMP_COUNTERPART
from egressguard.report.jsonl import dumps
from egressguard.report.records import finding_record, flow_record, summary_record
from egressguard.schema import CaptureSummary, EndReason, Finding

# IANA protocol numbers -> the names Suricata writes in `proto`
PROTO_TEXT = {"tcp": "TCP", "udp": "UDP", "icmp": "ICMP", "icmpv6": "IPv6-ICMP", 2: "IGMP", 47: "GRE", 50: "ESP",
              51: "AH", 132: "SCTP"}
# Stable per kind, in the range Suricata leaves for local rules (1000000-1999999, suricata.readthedocs.io rules
# "sid"): never renumber; a new kind takes the next number.
SIGNATURE_IDS = {"reverse_ssh_tunnel": 1_510_001, "ssh_tunnel": 1_510_002, "mining": 1_510_003,
                 "unexpected_destination": 1_510_004, "dns_tunnel": 1_510_005, "icmp_tunnel": 1_510_006,
                 "beacon": 1_510_007, "long_connection": 1_510_008}
SIGNATURES = {"reverse_ssh_tunnel": "EGRESSGUARD reverse SSH tunnel out of a sandbox (remote side drives a shell)",
              "ssh_tunnel": "EGRESSGUARD SSH used as a tunnel (port forwarding, SOCKS, VPN)",
              "mining": "EGRESSGUARD cryptocurrency mining pool connection",
              "unexpected_destination": "EGRESSGUARD egress to a destination the rules do not allow",
              "dns_tunnel": "EGRESSGUARD data tunnelled through DNS queries",
              "icmp_tunnel": "EGRESSGUARD data tunnelled through ICMP",
              "beacon": "EGRESSGUARD periodic beaconing (command-and-control polling)",
              "long_connection": "EGRESSGUARD unusually long connection"}
# Suricata/ET classification.config descriptions (classtypes trojan-activity, policy-violation, coin-mining,
# bad-unknown, misc-activity)
CATEGORIES = {"reverse_ssh_tunnel": "A Network Trojan was detected",
              "ssh_tunnel": "Potential Corporate Privacy Violation",
              "mining": "Crypto Currency Mining Activity Detected",
              "unexpected_destination": "Potentially Bad Traffic",
              "dns_tunnel": "Potential Corporate Privacy Violation",
              "icmp_tunnel": "Potential Corporate Privacy Violation",
              "beacon": "A Network Trojan was detected",
              "long_connection": "Misc activity"}
# score from which a finding takes the higher of the two EVE severities its own severity spans
_SEVERITY_SPLIT = {"critical": (1, 1, 0.0), "high": (1, 2, 0.9), "medium": (2, 3, 0.7), "low": (3, 4, 0.5)}
# keys of egressguard's records that become EVE's common keys (the rest goes into `egressguard`)
_COMMON = ("type", "src_ip", "src_port", "dst_ip", "dst_port", "proto", "community_id")
FLOW_ID_BITS = 51  # Suricata masks flow_id to 51 bits so JSON readers with doubles keep it exact
_END_REASON = {EndReason.ACTIVE: "forced", EndReason.IDLE: "timeout", EndReason.ACTIVE_TIMEOUT: "timeout",
               EndReason.EVICTED: "forced", EndReason.END_OF_INPUT: "shutdown", EndReason.PORT_REUSE: "forced"}
_TCP_FIN, _TCP_SYN, _TCP_RST = 0x01, 0x02, 0x04


def eve_severity(severity: str, score: float) -> int:
    """EVE alert severity (1 highest .. 4) of an egressguard severity label and score (see the module doc)."""
    high, low, split = _SEVERITY_SPLIT.get(severity, (3, 4, 0.5))
    return high if score >= split else low


def signature_id(kind: str) -> int:
    """The stable signature id of a finding kind (a kind not in the table gets one from its name's CRC)."""
    return SIGNATURE_IDS.get(kind) or 1_519_000 + zlib.crc32(kind.encode()) % 1000


def eve_timestamp(seconds: float) -> str:
    """EVE's timestamp form, in UTC: 2026-11-27T21:28:15.853096+0000."""
    t = _dt.datetime.fromtimestamp(seconds, _dt.timezone.utc)
    return t.strftime("%Y-%m-%dT%H:%M:%S.%f+0000")


def flow_id(record: dict[str, Any]) -> int:
    """A stable integer per flow record: the same for its flow event and every alert about it (both carry the
    flow's community ID, originator and first packet time)."""
    key = f"{record.get('community_id')}|{record.get('src_ip')}|{record.get('src_port')}|{record.get('first_seen')}"
    return int.from_bytes(hashlib.sha1(key.encode()).digest()[:8], "big") & ((1 << FLOW_ID_BITS) - 1)


def _common(record: dict[str, Any], event_type: str, in_iface: str | None, seconds: float | None) -> dict[str, Any]:
    """The keys every flow-bound EVE event starts with, from an egressguard flow or finding record."""
    when = record.get("last_seen") if seconds is None else seconds
    out: dict[str, Any] = {"timestamp": eve_timestamp(float(when or 0.0)), "flow_id": flow_id(record)}
    if in_iface:
        out["in_iface"] = str(in_iface)
    out["event_type"] = event_type
    out["src_ip"] = record["src_ip"]
    proto = record["proto"]
    counterparts = ICMP_COUNTERPART.get({"icmp": 1, "icmpv6": 58}.get(proto, -1))
    if counterparts is not None:
        out["icmp_type"] = int(record["src_port"])
        if int(record["src_port"]) not in counterparts:
            out["icmp_code"] = int(record["dst_port"])
    elif proto in ("tcp", "udp") or proto == 132:
        out["src_port"] = int(record["src_port"])
    out["dest_ip"] = record["dst_ip"]
    if counterparts is None and (proto in ("tcp", "udp") or proto == 132):
        out["dest_port"] = int(record["dst_port"])
    out["proto"] = PROTO_TEXT.get(proto, str(proto))
    out["community_id"] = record["community_id"]
    return out


def _own(record: dict[str, Any]) -> dict[str, Any]:
    """egressguard's fields of a record that EVE's common keys do not carry."""
    return {k: v for k, v in record.items() if k not in _COMMON}


def alert_event(finding: dict[str, Any], in_iface: str | None = None) -> dict[str, Any]:
    """The EVE `alert` of one egressguard finding record (records.finding_record, or a live one with `sandbox`,
    `interface`); `in_iface` defaults to the record's `interface`, then its capture."""
    kind = str(finding["kind"])
    iface = in_iface or finding.get("interface") or finding.get("capture")
    out = _common(finding, "alert", iface, None)
    out["alert"] = {
        "action": "allowed",
        "gid": 1,
        "signature_id": signature_id(kind),
        "rev": 1,
        "signature": SIGNATURES.get(kind, f"EGRESSGUARD {kind.replace('_', ' ')}"),
        "category": CATEGORIES.get(kind, "Misc activity"),
        "severity": eve_severity(str(finding["severity"]), float(finding["score"])),
        "source": {"ip": finding["src_ip"]},
        "target": {"ip": finding["dst_ip"]},
    }
    if "src_port" in out:
        out["alert"]["source"]["port"] = out["src_port"]
        out["alert"]["target"]["port"] = out["dest_port"]
    if "app" in finding and isinstance(finding["app"], str):
        out["app_proto"] = finding["app"]
    out["egressguard"] = _own(finding)
    return out


def _flow_state(rec: np.void) -> str:
    """Suricata's flow.state: new (one side only), established, closed (FIN or RST seen)."""
    flags = int(rec["orig_tcp_flags"]) | int(rec["resp_tcp_flags"])
    if int(rec["proto"]) == 6 and flags & (_TCP_FIN | _TCP_RST):
        return "closed"
    return "established" if int(rec["orig_pkts"]) and int(rec["resp_pkts"]) else "new"


def flow_event(rec: np.void, capture: str, annotations: dict | None, in_iface: str | None, alerted: bool,
               service: str | None) -> dict[str, Any]:
    """The EVE `flow` event of one FLOW record. `alerted` says a finding about the flow was made when the flow
    ended; findings held back until the capture ends (unexpected destinations) follow later, as alerts only."""
    record = flow_record(rec, capture, annotations)
    out = _common(record, "flow", in_iface, None)
    if service:
        out["app_proto"] = {"ssl": "tls"}.get(service, service)
    first, last = float(record["first_seen"]), float(record["last_seen"])
    out["flow"] = {
        "pkts_toserver": record["src_pkts"], "pkts_toclient": record["dst_pkts"],
        "bytes_toserver": record["src_bytes"], "bytes_toclient": record["dst_bytes"],
        "start": eve_timestamp(first), "end": eve_timestamp(last), "age": int(last - first),
        "state": _flow_state(rec), "reason": _END_REASON.get(EndReason(int(rec["end_reason"])), "timeout"),
        "alerted": alerted,
    }
    out["egressguard"] = _own(record)
    return out


class EveReport:
    """Writes EVE events: per batch a `flow` for every flow record, `ssh`/`tls`/`dns` where the flow's kept bytes
    or the detectors tell them, an `alert` per finding; a `stats` event per capture summary.

    Args:
        out: where the lines go.
        in_iface: the `in_iface` of every event (default: the capture's name).
    """

    wants_view = True  # batch() takes the FlowView, for DNS messages and TLS server names

    def __init__(self, out: TextIO, in_iface: str | None = None):
        self.out = out
        self.in_iface = in_iface
        self.findings_total = 0
        self._counts: dict[str, int] = {}

    def batch(self, capture: str, recs: np.ndarray, annotations: dict[int, dict], findings: list[Finding],
              view: Any = None) -> None:
        """A batch of flow records (FLOW array) with their annotations and findings, and the view they came from
        (None: no DNS/TLS events)."""
        write = self.out.write
        iface = self.in_iface or capture
        alerts = [finding_record(f) for f in findings]
        alerted = {flow_id(a) for a in alerts}
        service = services(view, annotations, len(recs))
        dns = dns_messages(view) if len(recs) else {}
        sni = tls_server_names(view) if len(recs) else {}
        for i in range(len(recs)):
            rec, ann = recs[i], annotations.get(i)
            event = flow_event(rec, capture, ann, iface, False, service[i])
            event["flow"]["alerted"] = event["flow_id"] in alerted
            write(dumps(event) + "\n")
            base = {k: event[k] for k in event if k not in ("timestamp", "event_type", "flow", "egressguard",
                                                           "app_proto")}
            if ann and ann.get("ssh"):
                write(dumps(self._ssh(event, base, ann)) + "\n")
            if i in sni:
                write(dumps(self._event(event, base, "tls", None, {"sni": sni[i]})) + "\n")
            for m in dns.get(i, ()):
                write(dumps(self._event(event, base, "dns", m.ts_ns / 1e9, _dns_object(m))) + "\n")
        for finding, record in zip(findings, alerts):
            write(dumps(alert_event(record, iface)) + "\n")
            self._counts[str(finding.kind)] = self._counts.get(str(finding.kind), 0) + 1
            self.findings_total += 1

    @staticmethod
    def _event(flow: dict, base: dict, event_type: str, seconds: float | None, body: dict) -> dict[str, Any]:
        when = flow["timestamp"] if seconds is None else eve_timestamp(seconds)
        out = {"timestamp": when, **base, "event_type": event_type}
        out[event_type] = body
        return out

    def _ssh(self, flow: dict, base: dict, ann: dict) -> dict[str, Any]:
        info = ann["ssh"]
        body: dict[str, Any] = {}
        for side, banner_key, hassh_key in (("client", "client_banner", "hassh"),
                                            ("server", "server_banner", "hassh_server")):
            proto, software = split_ssh_banner(info.get(banner_key))
            part: dict[str, Any] = {}
            if proto:
                part["proto_version"] = proto
            if software:
                part["software_version"] = software
            if info.get(hassh_key):
                part["hassh"] = {"hash": str(info[hassh_key])}
            if part:
                body[side] = part
        out = self._event(flow, base, "ssh", None, body)
        out["egressguard"] = {k: v for k, v in info.items() if k not in ("hassh", "hassh_server")}
        if ann.get("ssh_use"):
            out["egressguard"]["ssh_use"] = ann["ssh_use"]
        return out

    def summary(self, summary: CaptureSummary) -> None:
        """A capture ended: its `stats` event, egressguard's summary record (findings per kind) inside."""
        record = summary_record(summary, self._counts)
        seconds = record["last_seen"] if record["last_seen"] is not None else 0.0
        event = {"timestamp": eve_timestamp(seconds), "event_type": "stats",
                 "in_iface": self.in_iface or summary.capture,
                 "stats": {"uptime": int(record["duration"]),
                           "decoder": {"pkts": record["packets"], "bytes": record["bytes"],
                                       "invalid": record["undecodable"] + record["headers_cut"]},
                           "flow": {"total": record["flows"]}},
                 "egressguard": _own(record)}
        self.out.write(dumps(event) + "\n")
        self._counts = {}

    def close(self) -> None:
        self.out.flush()


def _dns_object(m) -> dict[str, Any]:
    """The `dns` object (EVE DNS v3) of one message."""
    body: dict[str, Any] = {"version": 3, "type": "response" if m.is_response else "request", "id": m.id,
                            "flags": f"{m.flags:x}", "qr": m.is_response, "rd": bool(m.flags & 0x0100),
                            "opcode": m.opcode}
    if m.is_response:
        body.update(aa=bool(m.flags & 0x0400), tc=bool(m.flags & 0x0200), ra=bool(m.flags & 0x0080),
                    rcode=rcode_name(m.rcode))
    if m.qname is not None:
        body["queries"] = [{"rrname": m.qname, "rrtype": rr_type_name(m.qtype)}]
    answers = []
    for a in m.answers:
        answer: dict[str, Any] = {"rrname": a.name, "rrtype": rr_type_name(a.rtype), "ttl": a.ttl}
        if a.rdata is not None:
            answer["rdata"] = a.rdata
        answers.append(answer)
    if answers:
        body["answers"] = answers
    return body

