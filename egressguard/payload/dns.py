"""DNS text helpers shared by the detectors: a message as plain data (what DnsBinding.observe takes), record type
names, and names made safe for evidence. Messages on the wire are decoded by payload/dns_table.py, in a kernel."""
from __future__ import annotations

from dataclasses import dataclass

MAX_NAME = 255  # RFC 1035 2.3.4
TYPE_NAMES = {1: "A", 2: "NS", 5: "CNAME", 6: "SOA", 10: "NULL", 12: "PTR", 15: "MX", 16: "TXT", 28: "AAAA",
              33: "SRV", 64: "SVCB", 65: "HTTPS", 255: "ANY"}


@dataclass(frozen=True)
class DnsRecord:
    """One resource record: `value` is the address text for A/AAAA, the target name for CNAME/NS/PTR/MX, the text
    for TXT, '' otherwise."""

    name: str
    rtype: int
    ttl: int
    value: str


@dataclass(frozen=True)
class DnsMessage:
    id: int
    is_response: bool
    rcode: int
    questions: tuple[tuple[str, int], ...]  # (name, qtype)
    answers: tuple[DnsRecord, ...]


def name_text(labels: tuple[bytes, ...], limit: int = MAX_NAME) -> str:
    """A name for evidence: labels joined by dots, bytes outside printable ASCII as \\xNN, cut to `limit` chars."""
    text = ".".join(label.decode("ascii", "backslashreplace") for label in labels)
    text = "".join(c if " " < c < "\x7f" else f"\\x{ord(c):02x}" for c in text)
    return text if len(text) <= limit else text[:limit - 3] + "..."
