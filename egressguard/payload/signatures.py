"""The one table of protocol signatures: what a flow's first kept bytes (and its ports) say it carries.

Computed for a whole batch at once in numpy from the first SIGNATURE_BYTES kept bytes of each direction, in the
spirit of Zeek's dpd.sig: a few fixed bytes at the start of a direction, never a parse. Detectors read the tags
(schema.AppTag) instead of checking bytes themselves; the parsers in this package then confirm what a tag suggests.
"""
from __future__ import annotations

import numpy as np

from egressguard.schema import AppTag

SIGNATURE_BYTES = 16  # bytes of each direction looked at
ORIG, RESP = 0, 1
DNS_PORT = 53  # RFC 1035 4.2
MDNS_PORT = 5353  # RFC 6762
# HTTP/1 request methods by their first four bytes (RFC 9110 9, RFC 5789 PATCH)
HTTP_METHODS = (b"GET ", b"POST", b"HEAD", b"PUT ", b"DELE", b"OPTI", b"PATC", b"CONN", b"TRAC")
_METHODS = np.array([np.frombuffer(m, np.uint8) for m in HTTP_METHODS])
_BLANKS = (32, 9, 10, 13)  # RFC 8259 2: insignificant whitespace before a JSON value
PROXY_V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"  # haproxy doc/proxy-protocol.txt 2.2
PROXY_V1_STARTS = (b"PROXY TCP4 ", b"PROXY TCP6 ", b"PROXY UNKNOWN")  # ... 2.1
SOCKS4_GRANTED = (0x5A, 0x5B, 0x5C, 0x5D)  # SOCKS4 reply codes 90-93 (granted, rejected, no identd, identd differs)
SOCKS5_METHODS = (0x00, 0x01, 0x02, 0xFF)  # RFC 1928 3: none, GSSAPI, username/password, no acceptable method
ECHO_TYPES = {1: (0, 8), 58: (128, 129)}  # ICMP echo reply/request (RFC 792), ICMPv6 (RFC 4443 4.1-4.2)


def starts_with(prefix: np.ndarray, direction: int, text: bytes) -> np.ndarray:
    """Rows whose kept bytes of `direction` start with `text` (prefix: uint8 [rows, 2, >= len(text)])."""
    return (prefix[:, direction, :len(text)] == np.frombuffer(text, np.uint8)).all(axis=1)


def first_non_blank(prefix: np.ndarray) -> np.ndarray:
    """The first byte after leading JSON whitespace of each direction: uint8 [rows, 2] (0 when none)."""
    blank = np.isin(prefix, _BLANKS)
    at = np.argmax(~blank, axis=2)
    return np.take_along_axis(prefix, at[:, :, None], axis=2)[:, :, 0]


def http_request(prefix: np.ndarray, direction: int = ORIG) -> np.ndarray:
    """Rows whose kept bytes of `direction` open with an HTTP/1 request method."""
    head = prefix[:, direction, :4]
    return (head[:, None, :] == _METHODS[None, :, :]).all(axis=2).any(axis=1)


def app_tags(prefix: np.ndarray, proto: np.ndarray, orig_port: np.ndarray, resp_port: np.ndarray) -> np.ndarray:
    """AppTag bits (uint32) of every row: `prefix` is uint8 [rows, 2, >= SIGNATURE_BYTES] of the first kept bytes,
    zero past what was kept; the other arrays are FLOW columns."""
    n = len(proto)
    tags = np.zeros(n, np.uint32)
    if not n:
        return tags

    def tag(mask: np.ndarray, value: AppTag) -> None:
        tags[mask] |= np.uint32(value)

    p = prefix[:, :, :SIGNATURE_BYTES]
    tcp, udp = proto == 6, proto == 17
    upper = p[:, :, :3] & 0xDF  # ASCII upper case: Zeek matches "SSH-" case-insensitively (dpd.sig)
    tag(tcp & ((upper[:, :, 0] == 83) & (upper[:, :, 1] == 83) & (upper[:, :, 2] == 72)
               & (p[:, :, 3] == 45)).any(axis=1), AppTag.SSH)
    tls = tcp & (p[:, ORIG, 0] == 0x16) & (p[:, ORIG, 1] == 0x03)  # RFC 8446 5.1: handshake record, legacy version
    tag(tls, AppTag.TLS)
    tag(tls & (p[:, ORIG, 5] == 1), AppTag.TLS_CLIENT_HELLO)  # RFC 8446 4: msg_type client_hello
    request = tcp & http_request(p)
    tag(request, AppTag.HTTP_REQUEST)
    tag(tcp & starts_with(p, RESP, b"HTTP/1."), AppTag.HTTP_RESPONSE)
    tag(tcp & starts_with(p, ORIG, b"GET ") & starts_with(p, RESP, b"HTTP/1.1 101"), AppTag.WEBSOCKET)
    first = first_non_blank(p)
    tag(tcp & ((first == ord("{")) | (first == ord("["))).any(axis=1), AppTag.JSON)
    mq = np.frombuffer(b"MQ", np.uint8)  # MQTT 3.1.1 3.1.2.1 "MQTT", 3.1 "MQIsdp", after 1-2 length bytes
    tag(tcp & (p[:, ORIG, 0] == 0x10) & ((p[:, ORIG, 4:6] == mq).all(axis=1) | (p[:, ORIG, 5:7] == mq).all(axis=1)),
        AppTag.MQTT)
    tcp_udp = tcp | udp
    tag(tcp_udp & (resp_port == DNS_PORT), AppTag.DNS)
    tag(tcp_udp & (resp_port == MDNS_PORT), AppTag.MDNS)
    tag(tcp & starts_with(p, ORIG, b"CONNECT "), AppTag.HTTP_CONNECT)
    tag(tcp & (p[:, ORIG, 0] == 4) & (p[:, ORIG, 1] == 1) & (p[:, RESP, 0] == 0)
        & np.isin(p[:, RESP, 1], SOCKS4_GRANTED), AppTag.SOCKS4)
    tag(tcp & (p[:, ORIG, 0] == 5) & (p[:, ORIG, 1] >= 1) & (p[:, RESP, 0] == 5)
        & np.isin(p[:, RESP, 1], SOCKS5_METHODS), AppTag.SOCKS5)
    v1 = np.zeros(n, bool)
    for start in PROXY_V1_STARTS:
        v1 |= starts_with(p, ORIG, start)
    tag(tcp & v1, AppTag.PROXY_V1)
    tag(tcp & starts_with(p, ORIG, PROXY_V2_SIGNATURE), AppTag.PROXY_V2)
    echo = np.zeros(n, bool)
    for number, types in ECHO_TYPES.items():
        echo |= (proto == number) & np.isin(orig_port, types) & np.isin(resp_port, types)
    tag(echo, AppTag.ECHO)
    return tags


__all__ = ["DNS_PORT", "HTTP_METHODS", "MDNS_PORT", "SIGNATURE_BYTES", "app_tags", "first_non_blank",
           "http_request", "starts_with"]
