"""Zeek logs as JSON lines (Zeek's LogAscii::use_json form): conn.log, dns.log and ssl.log in one directory, with the
field names and types RITA v5 imports (activecm/rita importer/zeektypes: it takes the log type from the file name's
prefix), so a fleet's flows can be analysed centrally by RITA, or by anything that reads Zeek logs.

What is approximated, because egressguard keeps per flow and direction the OR of the TCP flags, counters and
timestamps, not each packet:
  * `history` holds each letter at most once, in the fixed order S h A D T a d t F f R r (originator upper case),
    not in the order the events happened and without Zeek's repeat letters; `h` is a SYN+ACK of the responder.
  * `conn_state` is derived from those flags (docs.zeek.org conn.log); when both sides sent a RST or FIN, which
    came first is unknown: RSTO is preferred over RSTR, and SF needs a FIN from both sides.
  * `orig_bytes`/`resp_bytes` are the L4 payload bytes seen (Zeek counts TCP sequence space, so retransmitted
    bytes count here); `orig_ip_bytes`/`resp_ip_bytes` are the frame bytes less 14 bytes of Ethernet header per
    packet (18 with a VLAN tag) when the flow came with MAC addresses, else the frame bytes.
  * `missed_bytes` is 0: egressguard does not track sequence gaps.
  * `local_orig`/`local_resp` are true for private, loopback, link-local and shared (CGNAT) addresses; Zeek uses
    its configured Site::local_nets instead.
  * ICMP: `id.orig_p` is the type; `id.resp_p` is the code for messages without a request/reply counterpart, 0 for
    echo and the other paired types (their code is not kept). Protocols other than TCP/UDP/ICMP are logged with
    proto `unknown_transport` and ports 0.
  * `uid` is derived from the flow (community ID, originator, first packet time), stable across runs.
  * dns.log has one entry per question sent by the originator, matched to the response by transaction ID; ssl.log
    has the server name only (no version, cipher or JA3: egressguard does not keep the server's hello or compute
    JA3).
"""
from __future__ import annotations

import contextlib
import hashlib
import ipaddress
import os
from pathlib import Path
from typing import Any, TextIO

import numpy as np

from egressguard.errors import EgressGuardError
from egressguard.report.app_facts import (RR_CLASSES, dns_messages, rcode_name, rr_type_name, services,
                                          tls_server_names)
from egressguard.report.community_id import ICMP_COUNTERPART
from egressguard.report.jsonl import dumps
from egressguard.report.records import flow_record
from egressguard.schema import CaptureSummary, Finding

LOG_TYPES = ("conn", "dns", "ssl")
_BASE62 = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
_FIN, _SYN, _RST, _ACK = 0x01, 0x02, 0x04, 0x10
ETHERNET_HEADER, VLAN_TAG = 14, 4  # IEEE 802.3 header, 802.1Q tag
# Site-local address space (RFC 1918, RFC 6598 shared, RFC 4193 ULA, loopback, link-local)
LOCAL_NETS = tuple(ipaddress.ip_network(n) for n in (
    "10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "100.64.0.0/10", "127.0.0.0/8", "169.254.0.0/16",
    "fc00::/7", "fe80::/10", "::1/128"))


class OutputDirError(EgressGuardError):
    """--output-dir is missing, not a directory or not writable."""


def zeek_uid(record: dict[str, Any]) -> str:
    """A Zeek-style connection uid ("C" + 17 base-62 characters) derived from the flow record."""
    key = f"{record['community_id']}|{record['src_ip']}|{record['src_port']}|{record['first_seen']}"
    n = int.from_bytes(hashlib.sha1(key.encode()).digest()[:13], "big")
    chars = []
    for _ in range(17):
        n, r = divmod(n, 62)
        chars.append(_BASE62[r])
    return "C" + "".join(chars)


def is_local(address: str) -> bool:
    ip = ipaddress.ip_address(address)
    if ip.version == 6 and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return any(ip in net for net in LOCAL_NETS if net.version == ip.version)


def conn_state(proto: int, o_flags: int, r_flags: int, o_pkts: int, r_pkts: int) -> str:
    """Zeek's conn_state from the flags each side sent (OR over the flow) and packet counts (see module doc)."""
    if proto != 6:
        if o_pkts and r_pkts:
            return "SF"
        return "S0" if o_pkts else "SHR"
    o_syn = bool(o_flags & _SYN)
    r_synack = bool(r_flags & _SYN) and bool(r_flags & _ACK)
    if o_syn and not r_synack:
        if r_flags & _RST:
            return "REJ"
        if o_flags & _RST:
            return "RSTOS0"
        if o_flags & _FIN:
            return "SH"
        return "S0" if not r_pkts else "OTH"
    if r_synack and not o_syn:
        if r_flags & _RST:
            return "RSTRH"
        if r_flags & _FIN:
            return "SHR"
        return "OTH"
    if not o_syn:
        return "OTH"
    if o_flags & _RST:
        return "RSTO"
    if r_flags & _RST:
        return "RSTR"
    if o_flags & _FIN and r_flags & _FIN:
        return "SF"
    if o_flags & _FIN:
        return "S2"
    if r_flags & _FIN:
        return "S3"
    return "S1"


def history(rec: np.void) -> str:
    """Zeek's history letters that the flow record supports, in a fixed order (see module doc)."""
    tcp = int(rec["proto"]) == 6
    letters = []
    for prefix, upper in (("orig_", True), ("resp_", False)):
        flags = int(rec[prefix + "tcp_flags"])
        side = []
        if tcp and flags & _SYN:
            side.append("S" if upper else "H")  # the responder's SYN is its SYN+ACK: Zeek writes "h"
        if tcp and (int(rec[prefix + "bare_acks"]) or flags & _ACK):
            side.append("A")
        if int(rec[prefix + "payload_pkts"]):
            side.append("D")
        if tcp and int(rec[prefix + "retransmits"]):
            side.append("T")
        letters.append([c if upper else c.lower() for c in side])
    o, r = letters
    order = [c for c in o if c in "S"] + [c for c in r if c == "h"] + [c for c in o if c in "ADT"] + \
        [c for c in r if c in "adt"]
    for prefix, letter in (("orig_", "F"), ("resp_", "f"), ("orig_", "R"), ("resp_", "r")):
        bit = _FIN if letter in "Ff" else _RST
        if tcp and int(rec[prefix + "tcp_flags"]) & bit:
            order.append(letter)
    return "".join(order)


def _ip_bytes(rec: np.void, prefix: str) -> int:
    frame = int(rec[prefix + "bytes"])
    if not int(rec["orig_mac"]) and not int(rec["resp_mac"]):
        return frame
    per_packet = ETHERNET_HEADER + (VLAN_TAG if int(rec["vlan"]) else 0)
    return max(int(rec[prefix + "payload_bytes"]), frame - per_packet * int(rec[prefix + "pkts"]))


def _ids(record: dict[str, Any], proto: int) -> dict[str, Any]:
    orig_p, resp_p = int(record["src_port"]), int(record["dst_port"])
    if proto in ICMP_COUNTERPART and orig_p in ICMP_COUNTERPART[proto]:
        resp_p = 0
    elif proto not in (6, 17) and proto not in ICMP_COUNTERPART:
        orig_p = resp_p = 0
    return {"id.orig_h": record["src_ip"], "id.orig_p": orig_p, "id.resp_h": record["dst_ip"], "id.resp_p": resp_p}


def _zeek_proto(proto: int) -> str:
    return {6: "tcp", 17: "udp", 1: "icmp", 58: "icmp"}.get(proto, "unknown_transport")


def conn_entry(rec: np.void, capture: str, service: str | None) -> dict[str, Any]:
    """One conn.log entry of a FLOW record."""
    record = flow_record(rec, capture)
    proto = int(rec["proto"])
    out: dict[str, Any] = {"ts": float(record["first_seen"]), "uid": zeek_uid(record)}
    out.update(_ids(record, proto))
    out["proto"] = _zeek_proto(proto)
    if service:
        out["service"] = service
    out["duration"] = float(record["duration"])
    out["orig_bytes"] = int(rec["orig_payload_bytes"])
    out["resp_bytes"] = int(rec["resp_payload_bytes"])
    out["conn_state"] = conn_state(proto, int(rec["orig_tcp_flags"]), int(rec["resp_tcp_flags"]),
                                   int(rec["orig_pkts"]), int(rec["resp_pkts"]))
    out["local_orig"] = is_local(record["src_ip"])
    out["local_resp"] = is_local(record["dst_ip"])
    out["missed_bytes"] = 0
    out["history"] = history(rec)
    out["orig_pkts"] = int(rec["orig_pkts"])
    out["orig_ip_bytes"] = _ip_bytes(rec, "orig_")
    out["resp_pkts"] = int(rec["resp_pkts"])
    out["resp_ip_bytes"] = _ip_bytes(rec, "resp_")
    return out


def dns_entries(conn: dict[str, Any], messages: list) -> list[dict[str, Any]]:
    """dns.log entries of one flow: one per question its originator sent, with the matching response."""
    responses: dict[int, Any] = {}
    for m in messages:
        if m.is_response and m.id not in responses:
            responses[m.id] = m
    out = []
    for m in messages:
        if m.is_response or m.direction != 0:
            continue
        entry: dict[str, Any] = {"ts": round(m.ts_ns / 1e9, 6), "uid": conn["uid"]}
        entry.update({k: conn[k] for k in ("id.orig_h", "id.orig_p", "id.resp_h", "id.resp_p", "proto")})
        entry["trans_id"] = m.id
        if m.qname is not None:
            entry["query"] = m.qname
            entry["qclass"] = m.qclass
            entry["qclass_name"] = RR_CLASSES.get(m.qclass, f"qclass-{m.qclass}")
            entry["qtype"] = m.qtype
            entry["qtype_name"] = rr_type_name(m.qtype)
        entry["RD"] = bool(m.flags & 0x0100)
        response = responses.get(m.id)
        if response is not None:
            entry["rtt"] = round(max(0.0, (response.ts_ns - m.ts_ns) / 1e9), 6)
            entry["rcode"] = response.rcode
            entry["rcode_name"] = rcode_name(response.rcode)
            entry["AA"] = bool(response.flags & 0x0400)
            entry["TC"] = bool(response.flags & 0x0200)
            entry["RA"] = bool(response.flags & 0x0080)
            entry["Z"] = (response.flags >> 4) & 0x7
            answers = [a for a in response.answers if a.rdata is not None]
            if answers:
                entry["answers"] = [a.rdata for a in answers]
                entry["TTLs"] = [float(a.ttl) for a in answers]
            entry["rejected"] = response.rcode == 5
        else:
            entry["AA"] = entry["TC"] = entry["RA"] = False
            entry["Z"] = (m.flags >> 4) & 0x7
            entry["rejected"] = False
        out.append(entry)
    return out


def check_output_dir(path: str | os.PathLike) -> Path:
    """The output directory, created when its parent exists; OutputDirError when it cannot be written."""
    directory = Path(path)
    try:
        directory.mkdir(exist_ok=True)
    except FileExistsError:
        raise OutputDirError(f"{directory}: not a directory. Fix: give --output-dir a directory") from None
    except OSError as exc:
        raise OutputDirError(f"{directory}: cannot create the output directory: {exc.strerror or exc}") from None
    if not directory.is_dir():
        raise OutputDirError(f"{directory}: not a directory. Fix: give --output-dir a directory")
    if not os.access(directory, os.W_OK | os.X_OK):
        raise OutputDirError(f"{directory}: the output directory is not writable")
    return directory


class ZeekReport:
    """Writes conn.log (every flow), dns.log and ssl.log as Zeek JSON lines into `directory` (files replaced).

    Findings are not Zeek logs: they are counted (for the exit status) and left to the JSONL or EVE formats."""

    wants_view = True  # batch() takes the FlowView, for DNS messages and TLS server names

    def __init__(self, directory: str | os.PathLike):
        self.directory = check_output_dir(directory)
        self.findings_total = 0
        self.files: dict[str, TextIO] = {}
        try:
            for log in LOG_TYPES:
                self.files[log] = open(self.directory / f"{log}.log", "w", encoding="ascii")
        except OSError as exc:
            self.close()
            raise OutputDirError(f"{self.directory}: cannot write the {log}.log file: {exc.strerror or exc}") \
                from None

    def batch(self, capture: str, recs: np.ndarray, annotations: dict[int, dict], findings: list[Finding],
              view: Any = None) -> None:
        """A batch of flow records with their annotations and findings, and the view they came from."""
        self.findings_total += len(findings)
        if not len(recs):
            return
        service = services(view, annotations, len(recs))
        dns = dns_messages(view)
        sni = tls_server_names(view)
        conn_log, dns_log, ssl_log = self.files["conn"].write, self.files["dns"].write, self.files["ssl"].write
        for i in range(len(recs)):
            conn = conn_entry(recs[i], capture, service[i])
            conn_log(dumps(conn) + "\n")
            for entry in dns_entries(conn, dns.get(i, ())):
                dns_log(dumps(entry) + "\n")
            if i in sni:
                entry = {"ts": conn["ts"], "uid": conn["uid"]}
                entry.update({k: conn[k] for k in ("id.orig_h", "id.orig_p", "id.resp_h", "id.resp_p")})
                entry["server_name"] = sni[i]
                ssl_log(dumps(entry) + "\n")

    def summary(self, summary: CaptureSummary) -> None:
        """Zeek writes no per-capture record; the logs are flushed so a reader sees whole lines."""
        for f in self.files.values():
            f.flush()

    def close(self) -> None:
        """Close the logs; a log that got no entry is removed, as Zeek writes no file for a log it never wrote to
        (and RITA warns about empty files)."""
        for f in self.files.values():
            empty = f.tell() == 0
            f.close()
            if empty:
                with contextlib.suppress(OSError):
                    os.unlink(f.name)
        self.files = {}
