"""What EVE and Zeek records say about a flow's application, read from a batch's FlowView: DNS messages, the TLS
server name, SSH banners, the service. The view is taken duck-typed (`.dns`, `.server_names`, `.app`): the report
layer sits below flows/ and imports nothing from it. Names from the wire keep their bytes, outside ASCII as \\xNN.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from egressguard.netaddr import format_address
from egressguard.schema import AppTag

# RFC 1035 3.2.2 and the IANA DNS parameters registry: the types and classes named in logs
RR_TYPES = {1: "A", 2: "NS", 5: "CNAME", 6: "SOA", 10: "NULL", 12: "PTR", 13: "HINFO", 15: "MX", 16: "TXT",
            28: "AAAA", 33: "SRV", 35: "NAPTR", 39: "DNAME", 41: "OPT", 43: "DS", 44: "SSHFP", 46: "RRSIG",
            47: "NSEC", 48: "DNSKEY", 64: "SVCB", 65: "HTTPS", 99: "SPF", 252: "AXFR", 255: "ANY", 257: "CAA"}
RR_CLASSES = {1: "C_INTERNET", 3: "C_CHAOS", 4: "C_HESIOD", 254: "C_NONE", 255: "C_ANY"}  # Zeek's DNS::classes
RCODES = {0: "NOERROR", 1: "FORMERR", 2: "SERVFAIL", 3: "NXDOMAIN", 4: "NOTIMP", 5: "REFUSED", 6: "YXDOMAIN",
          7: "YXRRSET", 8: "NXRRSET", 9: "NOTAUTH", 10: "NOTZONE"}  # RFC 6895 2.3
NAME_TARGET_TYPES = {2, 5, 12, 15, 39}  # NS, CNAME, PTR, MX, DNAME: RDATA holds a name
MAX_NAME = 255


def rr_type_name(rtype: int) -> str:
    """Mnemonic of a record type; RFC 3597 5 `TYPE<n>` for one without."""
    return RR_TYPES.get(int(rtype), f"TYPE{int(rtype)}")


def rcode_name(rcode: int) -> str:
    return RCODES.get(int(rcode), f"RCODE{int(rcode)}")


@dataclass
class DnsAnswer:
    name: str
    rtype: int
    ttl: int
    rdata: str | None  # an address or a target name; None for other types


@dataclass
class DnsMessage:
    """One DNS message of a flow (payload/dns_table.py's DNS_MESSAGE row, names as text)."""

    ts_ns: int
    direction: int  # 0 sent by the flow's originator
    id: int
    flags: int
    is_response: bool
    opcode: int
    rcode: int
    qname: str | None
    qtype: int
    qclass: int
    answers: list[DnsAnswer] = field(default_factory=list)


def name_at(names: np.ndarray, off: int) -> str | None:
    """The dotted name at names[off] (wire form: length-prefixed labels, then 0), None for off -1; no trailing dot,
    case as sent, bytes outside ASCII as \\xNN, at most 255 characters."""
    if off < 0:
        return None
    labels, pos = [], int(off)
    while 0 <= pos < len(names) and names[pos]:
        k = int(names[pos])
        labels.append(names[pos + 1:pos + 1 + k].tobytes())
        pos += 1 + k
    return b".".join(labels).decode("ascii", "backslashreplace")[:MAX_NAME]


def dns_messages(view: Any) -> dict[int, list[DnsMessage]]:
    """The DNS messages of every DNS/mDNS row of the view that kept payload, in wire order per row."""
    if view is None:
        return {}
    batch = view.dns
    table = batch.table
    msgs, answers, names = table.messages, table.answers, table.names
    if not len(msgs):
        return {}
    rows = batch.flow_rows()
    out: dict[int, list[DnsMessage]] = {}
    for i in range(len(msgs)):
        m = msgs[i]
        message = DnsMessage(int(m["ts_ns"]), int(m["direction"]), int(m["id"]), int(m["flags"]),
                             bool(m["is_response"]), int(m["opcode"]), int(m["rcode"]),
                             name_at(names, int(m["qname"])), int(m["qtype"]), int(m["qclass"]))
        first, count = int(m["answer_first"]), int(m["answer_count"])
        for a in answers[first:first + count]:
            rtype = int(a["rtype"])
            if rtype in (1, 28) and (int(a["addr_hi"]) or int(a["addr_lo"])):
                rdata = format_address(int(a["addr_hi"]), int(a["addr_lo"]), 4 if rtype == 1 else 6)
            elif rtype in NAME_TARGET_TYPES:
                rdata = name_at(names, int(a["target"]))
            else:
                rdata = None
            message.answers.append(DnsAnswer(name_at(names, int(a["name"])) or "", rtype, int(a["ttl"]), rdata))
        out.setdefault(int(rows[i]), []).append(message)
    return out


def tls_server_names(view: Any) -> dict[int, str]:
    """Row -> the server name the TLS ClientHello of that row sent (SNI); HTTP Host names are left out."""
    if view is None:
        return {}
    names = view.server_names
    out = {}
    for row in np.flatnonzero(names.source == 1).tolist():  # flows/view.py SOURCE_SNI
        out[row] = str(names.name[row])
    return out


def services(view: Any, annotations: dict[int, dict], n: int) -> list[str | None]:
    """Zeek-style service of each row ("ssh", "ssl", "dns", "http"; None when unknown), from the detectors' `app`
    annotation and the payload signatures of the first kept bytes."""
    out: list[str | None] = [None] * n
    tags = view.app if view is not None and n else np.zeros(n, np.uint32)
    for row in range(n):
        t = int(tags[row])
        app = (annotations.get(row) or {}).get("app")
        if app == "ssh" or t & AppTag.SSH:
            out[row] = "ssh"
        elif t & AppTag.TLS:
            out[row] = "ssl"
        elif t & (AppTag.DNS | AppTag.MDNS):
            out[row] = "dns"
        elif t & (AppTag.HTTP_REQUEST | AppTag.HTTP_RESPONSE):
            out[row] = "http"
        elif app:
            out[row] = str(app)
    return out


def split_ssh_banner(banner: str | None) -> tuple[str | None, str | None]:
    """(protocol version, software version) of an identification string `SSH-2.0-OpenSSH_9.2p1 Debian-2`
    (RFC 4253 4.2: SSH-protoversion-softwareversion SP comments); (None, None) when it is not one."""
    if not banner or not banner.startswith("SSH-"):
        return None, None
    proto, _, rest = banner[4:].partition("-")
    software = rest.split(" ", 1)[0]
    return proto or None, software or None
