"""Output records: flow and summary records as plain dicts (the JSONL contract), Community ID, address text.

Field names here are the stable output contract documented in README.md; add fields, never rename them.
"""
from __future__ import annotations

import struct
from typing import Any

import numpy as np

from egressguard.netaddr import format_address, format_mac  # noqa: F401  (re-exported for report users)
from egressguard.report.community_id import decoded_community_id
from egressguard.schema import CaptureSummary, EndReason, Finding, FlowFlag, proto_name

_IPV4_MAPPED = 0xFFFF << 32


def address_bytes(hi: int, lo: int, ip_version: int) -> bytes:
    """Network-order bytes of an address stored as (hi, lo): 4 bytes for IPv4, 16 for IPv6."""
    if ip_version == 4:
        return struct.pack("!I", lo & 0xFFFFFFFF)
    return struct.pack("!QQ", hi, lo)


def community_id(src: bytes, dst: bytes, proto: int, sport: int, dport: int, seed: int = 0) -> str:
    """Community ID v1 of a flow (github.com/corelight/community-id-spec): base64 SHA-1 over the ordered tuple.

    For ICMP, sport/dport are the type and counterpart type or code, as the decoder stores them."""
    return decoded_community_id(src, dst, proto, sport, dport, seed)


def _seconds(ns: int) -> float:
    return round(ns / 1e9, 6)


def flow_fields(rec: np.void) -> dict[str, Any]:
    """The flow fields shared by flow and finding records; `src` is always the originator."""
    v = int(rec["ip_version"])
    return {
        "src_ip": format_address(int(rec["orig_hi"]), int(rec["orig_lo"]), v),
        "src_port": int(rec["orig_port"]),
        "dst_ip": format_address(int(rec["resp_hi"]), int(rec["resp_lo"]), v),
        "dst_port": int(rec["resp_port"]),
        "proto": proto_name(int(rec["proto"])),
        "first_seen": _seconds(int(rec["first_seen_ns"])),
        "last_seen": _seconds(int(rec["last_seen_ns"])),
    }


def flow_community_id(rec: np.void) -> str:
    """Community ID of a FLOW record."""
    v = int(rec["ip_version"])
    return community_id(address_bytes(int(rec["orig_hi"]), int(rec["orig_lo"]), v),
                        address_bytes(int(rec["resp_hi"]), int(rec["resp_lo"]), v),
                        int(rec["proto"]), int(rec["orig_port"]), int(rec["resp_port"]))


def finding_record(finding: Finding) -> dict[str, Any]:
    """One `{"type": "finding", ...}` record: what, how bad, why (evidence sentences), and the flow it is about."""
    out: dict[str, Any] = {
        "type": "finding",
        "kind": str(finding.kind),
        "severity": finding.severity.label(),
        "score": round(float(finding.score), 3),
        "evidence": list(finding.evidence),
        "capture": finding.capture,
    }
    out.update(flow_fields(finding.flow))
    out["community_id"] = flow_community_id(finding.flow)
    out.update(finding.details)
    return out


def flow_record(rec: np.void, capture: str, annotations: dict[str, Any] | None = None) -> dict[str, Any]:
    """One `{"type": "flow", ...}` record (with detector labels such as `app` and `ssh_use` when given)."""
    v = int(rec["ip_version"])
    out: dict[str, Any] = {"type": "flow", "capture": capture}
    out.update(flow_fields(rec))
    out["duration"] = round((int(rec["last_seen_ns"]) - int(rec["first_seen_ns"])) / 1e9, 6)
    for side, prefix in (("src", "orig_"), ("dst", "resp_")):
        out[f"{side}_pkts"] = int(rec[prefix + "pkts"])
        out[f"{side}_bytes"] = int(rec[prefix + "bytes"])
        out[f"{side}_payload_bytes"] = int(rec[prefix + "payload_bytes"])
    out["community_id"] = flow_community_id(rec)
    out["ip_version"] = v
    out["vlan"] = int(rec["vlan"]) or None
    out["src_mac"] = format_mac(int(rec["orig_mac"]))
    out["dst_mac"] = format_mac(int(rec["resp_mac"]))
    flags = FlowFlag(int(rec["flow_flags"]))
    out["roles_certain"] = bool(flags & FlowFlag.SAW_SYN)
    out["continued"] = bool(flags & FlowFlag.CONTINUED)
    out["end_reason"] = EndReason(int(rec["end_reason"])).name.lower()
    if int(rec["proto"]) == 6:
        out["src_retransmits"] = int(rec["orig_retransmits"])
        out["dst_retransmits"] = int(rec["resp_retransmits"])
    if annotations:
        out["app"] = annotations.get("app")
        for key, value in annotations.items():
            if key not in ("app", "ssh"):
                out[key] = value
    return out


def summary_record(summary: CaptureSummary, findings: dict[str, int] | None = None) -> dict[str, Any]:
    """One `{"type": "summary", ...}` record per capture."""
    first = _seconds(summary.first_ns) if summary.packets else None
    last = _seconds(summary.last_ns) if summary.packets else None
    return {
        "type": "summary",
        "capture": summary.capture,
        "format": summary.format,
        "compression": summary.compression or None,
        "packets": summary.packets,
        "bytes": summary.wire_bytes,
        "captured_bytes": summary.captured_bytes,
        "flows": summary.flows,
        "truncated": summary.snaplen_cut,
        "headers_cut": summary.headers_cut,
        "undecodable": summary.undecodable,
        "not_ip": summary.not_ip,
        "fragments": summary.fragments,
        "first_seen": first,
        "last_seen": last,
        "duration": round((summary.last_ns - summary.first_ns) / 1e9, 6) if summary.packets else 0.0,
        "link_types": sorted(summary.link_types),
        "evictions": summary.evictions,
        "payload_slots_exhausted": summary.slot_denied,
        "file_complete": summary.complete,
        "warnings": list(summary.warnings),
        "findings": dict(sorted((findings or {}).items())),
    }
