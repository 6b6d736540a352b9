"""Data contracts shared by every stage: record dtypes, flag values and link types.

Each dtype is declared once, as ``(name, numpy type, meaning)`` rows (dpkt's ``__hdr__`` style), so the
documentation and the layout cannot drift apart. Kernels receive arrays of these dtypes and only numbers.
"""
from __future__ import annotations

import enum
from dataclasses import dataclass, field

import numpy as np


def _dtype(fields: tuple[tuple[str, str, str], ...]) -> np.dtype:
    return np.dtype([(name, kind) for name, kind, _ in fields])


# One captured frame as found by a capture reader: where its bytes sit in the chunk buffer.
FRAME_FIELDS = (
    ("offset", "i8", "offset of the frame's first byte in the chunk buffer"),
    ("caplen", "u4", "bytes captured"),
    ("wirelen", "u4", "frame length on the wire"),
    ("ts_ns", "i8", "capture time, ns since the Unix epoch"),
    ("linktype", "u2", "LINKTYPE_* of the frame's interface"),
    ("iface", "u2", "capture interface index (pcapng IDB order in the section, live socket order)"),
)
FRAME_DTYPE = _dtype(FRAME_FIELDS)

# One decoded packet. IPv4 addresses are stored IPv4-mapped (::ffff:a.b.c.d) so one layout serves both families.
PACKET_FIELDS = (
    ("ts_ns", "i8", "capture time, ns since the Unix epoch"),
    ("src_hi", "u8", "source address, high 64 bits"),
    ("src_lo", "u8", "source address, low 64 bits"),
    ("dst_hi", "u8", "destination address, high 64 bits"),
    ("dst_lo", "u8", "destination address, low 64 bits"),
    ("src_mac", "u8", "source MAC address in the low 48 bits, 0 when the link has none"),
    ("dst_mac", "u8", "destination MAC address in the low 48 bits, 0 when the link has none"),
    ("tcp_seq", "u4", "TCP sequence number, 0 unless TCP"),
    ("wire_bytes", "u4", "frame length on the wire"),
    ("payload_bytes", "u4", "L4 payload length according to the IP/L4 headers"),
    ("payload_offset", "u4", "offset of the first payload byte in the chunk buffer"),
    ("payload_caplen", "u4", "payload bytes actually captured (<= payload_bytes)"),
    ("sport", "u2", "source port; ICMP type for ICMP (Community ID convention)"),
    ("dport", "u2", "destination port; ICMP code or counterpart type for ICMP (Community ID convention)"),
    ("vlan", "u2", "outermost 802.1Q/802.1ad VLAN id, 0 if untagged"),
    ("iface", "u2", "capture interface index"),
    ("proto", "u1", "IP protocol number"),
    ("tcp_flags", "u1", "TCP flag byte, 0 unless TCP"),
    ("status", "u1", "PacketStatus bits"),
    ("ip_version", "u1", "4 or 6; 0 when no IP header was decoded"),
)
PACKET_DTYPE = _dtype(PACKET_FIELDS)


class PacketStatus(enum.IntFlag):
    """Per-packet decode status bits (PACKET.status)."""

    OK = 0
    SNAPLEN_CUT = 1  # caplen < wirelen: the capture cut the frame
    NOT_IP = 2  # an intact frame that carries no IP (ARP, LLDP, ...): counted, not a flow
    UNDECODABLE = 4  # a header is too short or inconsistent: counted, not a flow
    FRAGMENT = 8  # an IP fragment (first or later)
    LATER_FRAGMENT = 16  # a non-first fragment: ports unknown unless the first fragment was seen
    HEADERS_CUT = 32  # the capture cut inside the IP/L4 headers: addresses or ports missing


# Bidirectional flow record, as the flow table keeps it. `orig` opened the flow (sent the SYN, else the
# first packet seen); `resp` is the other side. Per-direction groups use the prefixes orig_/resp_.
_DIRECTION_FIELDS = (
    ("pkts", "u8", "packets sent"),
    ("bytes", "u8", "frame bytes on the wire"),
    ("payload_bytes", "u8", "L4 payload bytes"),
    ("payload_pkts", "u4", "packets with L4 payload"),
    ("bare_acks", "u4", "TCP segments with ACK set, no payload and no SYN/FIN/RST"),
    ("retransmits", "u4", "TCP payload segments that repeat already-seen sequence space"),
    ("tcp_flags", "u1", "OR of all TCP flag bytes"),
    ("payload_min", "u2", "smallest non-zero payload (capped at 65535)"),
    ("payload_max", "u2", "largest payload (capped at 65535)"),
    ("payload_mean", "f8", "mean payload size of payload packets (Welford)"),
    ("payload_m2", "f8", "sum of squared deviations of payload size (Welford M2)"),
    ("iat_mean", "f8", "mean inter-arrival time of packets in this direction, seconds (Welford)"),
    ("iat_m2", "f8", "sum of squared deviations of the inter-arrival time (Welford M2)"),
    ("last_ns", "i8", "time of the last packet in this direction, 0 if none"),
    ("next_seq", "u4", "next expected TCP sequence number (for retransmission detection)"),
)

FLOW_FIELDS = (
    ("key_hash", "u8", "hash of the canonical 5-tuple"),
    ("orig_hi", "u8", "originator address, high 64 bits"),
    ("orig_lo", "u8", "originator address, low 64 bits"),
    ("resp_hi", "u8", "responder address, high 64 bits"),
    ("resp_lo", "u8", "responder address, low 64 bits"),
    ("orig_mac", "u8", "originator MAC (low 48 bits) of the first packet it sent, 0 if unknown"),
    ("resp_mac", "u8", "responder MAC (low 48 bits) of the first packet it sent, 0 if unknown"),
    ("first_seen_ns", "i8", "time of the first packet, ns since the Unix epoch"),
    ("last_seen_ns", "i8", "time of the last packet, ns since the Unix epoch"),
    ("orig_port", "u2", "originator port (ICMP: type)"),
    ("resp_port", "u2", "responder port (ICMP: code or counterpart type)"),
    ("vlan", "u2", "VLAN id of the first packet"),
    ("iface", "u2", "capture interface of the first packet"),
    ("proto", "u1", "IP protocol number"),
    ("ip_version", "u1", "4 or 6"),
    ("flow_flags", "u1", "FlowFlag bits"),
    ("end_reason", "u1", "EndReason of the emitted record"),
    ("fragments", "u4", "IP fragments counted in this flow"),
    ("slot", "i4", "payload slot index, -1 when the flow kept no payload"),
    ("seq_count", "u2", "entries used in the slot's early-packet sequence"),
) + tuple(("orig_" + n, k, "originator: " + d) for n, k, d in _DIRECTION_FIELDS) + tuple(
    ("resp_" + n, k, "responder: " + d) for n, k, d in _DIRECTION_FIELDS
)
# Bursts over the flow's whole life (flows/conversation.py update_bursts): runs of payload packets, either side,
# separated by >= 1 s without payload. Beacons and C2 polling inside one long connection show as regular bursts.
BURST_INTERVAL_BINS = 24  # bin k >= 1 starts at 2^(k/2) s (detection-science 4.3); bin 23 holds 2896 s and longer
FLOW_FIELDS += (
    ("burst_count", "u4", "bursts of payload packets (either side) separated by >= 1 s without payload"),
    ("burst_start_ms", "u4", "start of the latest burst, ms after first_seen_ns (saturating)"),
    ("burst_last_ms", "u4", "last payload packet, ms after first_seen_ns (saturating)"),
    ("burst_open_bytes", "u4", "payload bytes of the latest burst, which is still open (saturating)"),
    ("burst_interval_mean", "f4", "mean seconds between consecutive burst starts (Welford)"),
    ("burst_interval_m2", "f4", "sum of squared deviations of those intervals (Welford M2)"),
    ("burst_bytes_mean", "f4", "mean payload bytes of the closed bursts (Welford)"),
    ("burst_bytes_m2", "f4", "sum of squared deviations of closed-burst bytes (Welford M2)"),
    ("burst_interval_hist", f"({BURST_INTERVAL_BINS},)u1",
     "intervals between burst starts: bin 0 below 2^(1/2) s, bin k from 2^(k/2) s; all bins halve when one would "
     "pass 255, so the shape (quantiles) survives long flows"),
)
FLOW_DTYPE = _dtype(FLOW_FIELDS)


class FlowFlag(enum.IntFlag):
    """Per-flow fact bits (FLOW.flow_flags)."""

    NONE = 0
    SAW_SYN = 1  # a bare SYN opened the flow: orig/resp roles are certain
    SLOT_DENIED = 2  # the flow carried payload but ended without a payload slot (pool empty, or never answered while
    # only the reserved quarter was free); the value 16 is used inside the flow table only (kernels.F_SLOT_WAITING)
    CONTINUED = 4  # the flow was split by the active timeout; an earlier record covers its start
    PORT_REUSE = 8  # a new SYN on a closed 5-tuple started this flow


class EndReason(enum.IntEnum):
    """Why a flow record was emitted."""

    ACTIVE = 0  # still open (snapshot)
    IDLE = 1  # no packet for the idle timeout
    ACTIVE_TIMEOUT = 2  # open longer than the active timeout; the flow goes on in a new record
    EVICTED = 3  # the table was full and this was the oldest idle flow
    END_OF_INPUT = 4  # the capture ended
    PORT_REUSE = 5  # a new SYN arrived on a 5-tuple whose connection had closed


class Direction(enum.IntEnum):
    """Index of a flow direction."""

    ORIG = 0
    RESP = 1


class LinkType(enum.IntEnum):
    """LINKTYPE_* values the decoder understands (tcpdump.org/linktypes.html)."""

    NULL = 0  # BSD loopback, host byte order family
    ETHERNET = 1
    RAW_BSD12 = 12  # DLT_RAW on some BSDs
    RAW_BSD14 = 14  # DLT_RAW on OpenBSD
    RAW = 101
    LOOP = 108  # OpenBSD loopback, network byte order family
    LINUX_SLL = 113
    IPV4 = 228
    IPV6 = 229
    LINUX_SLL2 = 276


SUPPORTED_LINKTYPES = frozenset(int(v) for v in LinkType)

PROTO_NAMES = {1: "icmp", 6: "tcp", 17: "udp", 58: "icmpv6"}
PROTO_NUMBERS = {v: k for k, v in PROTO_NAMES.items()}


def proto_name(proto: int) -> str | int:
    """The protocol's name for output (``tcp``, ``udp``, ``icmp``, ``icmpv6``) or its number."""
    return PROTO_NAMES.get(int(proto), int(proto))


@dataclass(frozen=True)
class CaptureSummary:
    """What one capture contained and what analysing it cost; `complete` is False when reading stopped early."""

    capture: str
    format: str
    compression: str
    packets: int
    wire_bytes: int
    captured_bytes: int
    flows: int
    snaplen_cut: int
    headers_cut: int
    undecodable: int
    not_ip: int
    fragments: int
    first_ns: int
    last_ns: int
    link_types: frozenset[int]
    evictions: int
    slot_denied: int
    complete: bool
    warnings: tuple[str, ...] = ()


class Severity(enum.IntEnum):
    """How urgently an operator should look; the text form (`low` ... `critical`) is the output contract."""

    LOW = 1
    MEDIUM = 2
    HIGH = 3
    CRITICAL = 4

    def label(self) -> str:
        return self.name.lower()

    @classmethod
    def labels(cls) -> tuple[str, ...]:
        return tuple(s.label() for s in cls)

    @classmethod
    def parse(cls, label: object) -> "Severity":
        """The severity named by its label (`low`, `medium`, `high`, `critical`); ValueError for anything else."""
        if isinstance(label, str) and label in cls.labels():
            return cls[label.upper()]
        raise ValueError(f"not a severity: {label!r} (write one of {', '.join(cls.labels())})")


class FindingKind(enum.StrEnum):
    """What a finding is about (the `kind` field of finding records)."""

    REVERSE_SSH_TUNNEL = "reverse_ssh_tunnel"  # an SSH connection out of the sandbox that carries traffic back in
    SSH_TUNNEL = "ssh_tunnel"  # SSH used as a tunnel (-L, -D, VPN over SSH, SSH inside another protocol)
    MINING = "mining"
    UNEXPECTED_DESTINATION = "unexpected_destination"
    DNS_TUNNEL = "dns_tunnel"
    ICMP_TUNNEL = "icmp_tunnel"
    BEACON = "beacon"
    LONG_CONNECTION = "long_connection"
    REVERSE_SHELL = "reverse_shell"  # a connection out of the sandbox over which the remote side drives a shell
    RESOURCE_ACQUISITION = "resource_acquisition"  # billing, provisioning, payment, exchange or wallet endpoints


def copy_record(rec: np.void) -> np.void:
    """A copy of one structured record made through its bytes: numpy copies a record of FLOW_DTYPE (59 fields) field
    by field in about 20 us, this in about 2 us, and detectors copy one for every finding and remembered flow."""
    return np.frombuffer(bytearray(rec.tobytes()), rec.dtype)[0]


@dataclass(frozen=True)
class Finding:
    """One thing an operator must see, with the evidence that supports it.

    `flow` is a copy of the FLOW record it is about; `details` holds kind-specific objects (e.g. `ssh`) that go
    into the output record under their own keys. `subject` says what the finding is about beyond its flow's
    endpoints (the egress reason, the tunnelled DNS domain), so that two findings about the same thing can be told
    apart from two about different things without reading their details.
    """

    kind: FindingKind
    severity: Severity
    score: float
    evidence: tuple[str, ...]
    flow: np.void
    capture: str
    details: dict = field(default_factory=dict)
    subject: str | None = None


class AppTag(enum.IntFlag):
    """What a flow's first kept bytes (either direction) or its ports say it carries; payload/signatures.py sets
    them for a whole batch at once. A flow can carry several (a WebSocket upgrade is also an HTTP request)."""

    NONE = 0
    SSH = 1  # an "SSH-" banner opens either direction (Zeek dpd.sig: case-insensitive "SSH-")
    TLS = 2  # the originator opens with a TLS handshake record (0x16 0x03)
    TLS_CLIENT_HELLO = 4  # ... whose first handshake message is a ClientHello (type 1)
    HTTP_REQUEST = 8  # the originator opens with an HTTP/1 method (RFC 9110 9)
    HTTP_RESPONSE = 16  # the responder opens with "HTTP/1."
    WEBSOCKET = 32  # a GET answered with "HTTP/1.1 101" (RFC 6455 4.2.2)
    JSON = 64  # the first non-blank byte of either direction is "{" or "["
    MQTT = 128  # an MQTT CONNECT (type 1, "MQ" of "MQTT"/"MQIsdp" in the variable header)
    DNS = 256  # TCP/UDP to port 53
    MDNS = 512  # UDP/TCP to port 5353: multicast DNS (RFC 6762), the DNS format but link-local
    HTTP_CONNECT = 1024  # the originator opens with "CONNECT host:port HTTP/1.x" (RFC 9110 9.3.6)
    SOCKS4 = 2048  # a SOCKS4/4a CONNECT request (version 4, command 1)
    SOCKS5 = 4096  # a SOCKS5 greeting (version 5, 1-255 methods) answered 0x05 <method> (RFC 1928 3)
    PROXY_V1 = 8192  # a PROXY protocol v1 header ("PROXY TCP4 "/"TCP6 "/"UNKNOWN")
    PROXY_V2 = 16384  # a PROXY protocol v2 signature (12 bytes, haproxy doc/proxy-protocol.txt 2.2)
    ECHO = 32768  # ICMP/ICMPv6 echo request/reply flow


# ------------------------------------------------------------------------------------------------ live monitoring
# What `watch` knows at one moment, handed to the dashboard (pure render functions) and nothing else. Strings that
# came from the wire (names bound by DNS, finding evidence, banners inside `findings`) are raw here; the renderer
# escapes them.
@dataclass(frozen=True)
class InterfaceView:
    """One monitored interface: totals since start and a short per-second rate history (oldest first)."""

    name: str
    up: bool
    packets: int
    bytes: int
    kernel_drops: int  # packets the kernel dropped because we read too slowly (PACKET_STATISTICS tp_drops)
    pps_history: tuple[float, ...] = ()  # packets per second, one entry per second
    bps_history: tuple[float, ...] = ()  # bits per second, one entry per second
    worker: int | None = None  # `watch --workers N`: the worker process (fanout member) these counts are of


@dataclass(frozen=True)
class SandboxView:
    """One sandbox as seen from the bridge: who it is and what it did."""

    name: str  # human name from the rules file's [sandboxes], else the address
    address: str  # IP address (the flows' originator)
    mac: str | None
    port: str | None  # bridge port / veth it sits behind, when known
    flows: int  # flows it opened since start (active and finished)
    bytes_out: int  # bytes it sent
    destinations: int  # distinct (address, port, protocol) it contacted
    worst: Severity | None  # the worst current finding about it
    worst_kind: str | None
    compute: "ComputeUsage | None" = None  # what its processes compute, when watch samples it


@dataclass(frozen=True)
class ComputeUsage:
    """What one sandbox's processes compute (watch samples it from cgroup v2 `cpu.stat`, or the processes' own
    /proc counters, and NVML for GPUs), attributed through the network namespace the processes are in."""

    cpu_cores: float  # CPU seconds per second of wall time over the last ~10 s (1.0 = one core kept busy)
    cpu_limit_cores: float  # the cgroup's quota (cpu.max) in cores, else the host's core count
    busy_for_s: float  # how long cpu_cores has stayed at or above the busy threshold without a break
    source: str  # "cgroup:/path" or "processes:N" (no cgroup of its own: the namespace's processes summed)
    processes: int  # processes in the sandbox's network namespace
    gpu_percent: float | None = None  # NVML utilisation of the GPUs its processes use (None: no GPU seen)
    gpu_memory_bytes: int | None = None

    @property
    def cpu_share(self) -> float:
        """cpu_cores as a share of the limit (0..1)."""
        return self.cpu_cores / self.cpu_limit_cores if self.cpu_limit_cores > 0 else 0.0

    def evidence(self) -> dict:
        """The JSON object findings carry as `compute`."""
        out = {"cpu_cores": round(self.cpu_cores, 2), "cpu_limit_cores": round(self.cpu_limit_cores, 2),
               "cpu_share": round(self.cpu_share, 3), "busy_for_s": round(self.busy_for_s, 1),
               "source": self.source, "processes": self.processes}
        if self.gpu_percent is not None:
            out["gpu_percent"] = round(self.gpu_percent, 1)
            out["gpu_memory_bytes"] = self.gpu_memory_bytes
        return out


@dataclass(frozen=True)
class DestinationView:
    """A destination a sandbox contacted for the first time."""

    time_ns: int
    sandbox: str
    destination: str  # "203.0.113.9:443/tcp"
    names: tuple[str, ...]  # names bound to the address by DNS answers seen on the wire


@dataclass(frozen=True)
class LiveSnapshot:
    """Everything the dashboard shows; `findings` are finding records (the JSONL `finding` dicts) plus a
    `sandbox` key, worst first; `messages` are recent operator notes (hook failures, rule reloads, interface
    changes), newest last."""

    time_ns: int
    started_ns: int
    interfaces: tuple[InterfaceView, ...]
    active_flows: int
    finished_flows: int
    evictions: int
    findings: tuple[dict, ...]
    sandboxes: tuple[SandboxView, ...]
    new_destinations: tuple[DestinationView, ...]  # newest first
    messages: tuple[str, ...] = ()


# ---- DNS message table (payload/dns_table.py)
# One row per DNS message read from a batch's kept payload, one per answer record, and the names they refer to as
# offsets into a uint8 buffer holding each name in wire form (RFC 1035 3.1: length-prefixed labels, then 0), bytes and
# case as sent, decompressed (4.1.4). Field meanings are those of RFC 1035 4.1.1-4.1.3 unless said otherwise.
DNS_CHARSETS = ("text", "hex", "base32", "base64", "random", "symbols", "binary")  # DNS_MESSAGE.charset codes
DNS_MESSAGE_FIELDS = (
    ("row", "i4", "position of the flow in the rows given to decode_dns"),
    ("direction", "u1", "0 originator (client), 1 responder"),
    ("index", "u1", "k-th kept packet (UDP) or length-prefixed message (TCP) of that direction (saturating)"),
    ("ts_ns", "i8", "time of the packet that carried it (UDP) or of the direction's first payload packet (TCP)"),
    ("id", "u2", "message ID"),
    ("flags", "u2", "the header's second 16-bit word: QR, OPCODE, AA, TC, RD, RA, Z/AD/CD, RCODE"),
    ("is_response", "u1", "QR bit"),
    ("opcode", "u1", "OPCODE (0 QUERY)"),
    ("rcode", "u1", "RCODE of the header (3 NXDOMAIN)"),
    ("qdcount", "u2", "questions announced by the header"),
    ("ancount", "u2", "answer records announced"),
    ("nscount", "u2", "authority records announced"),
    ("arcount", "u2", "additional records announced"),
    ("size", "u2", "message bytes on the wire: the UDP payload length, or the TCP length prefix (saturating)"),
    ("truncated", "u1", "1 when only a prefix of the message was kept (cut by the keep limit or the snap length)"),
    ("qtype", "u2", "type of the first question (0 when unreadable)"),
    ("qclass", "u2", "class of the first question (0 when unreadable)"),
    ("qname", "i4", "offset of the first question's name in `names`, -1 when unreadable"),
    ("qname_labels", "u1", "labels of that name"),
    ("edns_size", "u2", "CLASS of the OPT record in the additional section: the sender's UDP size (RFC 6891 6.1.2)"),
    ("answer_first", "i4", "first row of this message in `answers`"),
    ("answer_count", "i4", "rows of this message in `answers` (= answers_read)"),
    ("answers_read", "u2", "answer records read completely (a kept message may be cut)"),
    ("answer_rdata_bytes", "i4", "RDATA bytes of those records"),
    ("domain", "i4", "offset of the registered domain's first label in `names` (inside qname), -1: never judged"),
    ("domain_labels", "u1", "labels of the registered domain (1 with no_tld: the first label stands for it)"),
    ("no_tld", "u1", "the last label cannot be a top-level domain (digits, too long): e.g. dnscat.<hex>"),
    ("sub_length", "u2", "bytes of the labels below the registered domain (structural '_' labels removed)"),
    ("longest_label", "u1", "longest of those labels"),
    ("entropy", "f4", "Shannon entropy of those labels joined, bits per byte"),
    ("charset", "u1", "their alphabet, an index into DNS_CHARSETS"),
    ("encoded", "u1", "they look like encoded data rather than a name"),
)
DNS_MESSAGE_DTYPE = _dtype(DNS_MESSAGE_FIELDS)
DNS_ANSWER_FIELDS = (
    ("message", "i4", "row of the message in `messages`"),
    ("rtype", "u2", "TYPE"),
    ("ttl", "u4", "TTL, seconds"),
    ("rdlength", "u2", "RDATA bytes"),
    ("name", "i4", "offset of the owner name in `names`"),
    ("addr_hi", "u8", "A/AAAA address, high 64 bits (IPv4 stored IPv4-mapped, as flow records store it)"),
    ("addr_lo", "u8", "A/AAAA address, low 64 bits; both 0 unless RDATA has the type's size (4 or 16)"),
    ("target", "i4", "offset of the CNAME/NS/PTR/MX target name in `names`, -1 otherwise or when unreadable"),
)
DNS_ANSWER_DTYPE = _dtype(DNS_ANSWER_FIELDS)
