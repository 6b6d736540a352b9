"""The one table of protocol signatures: what a flow's first kept bytes (and its ports) say it carries.

One numba pass over a batch reads the first SIGNATURE_BYTES kept bytes of each direction straight from the flow
table's payload slots, in the spirit of Zeek's dpd.sig: a few fixed bytes at the start of a direction, never a
parse. Detectors read the tags (schema.AppTag) instead of checking bytes themselves; the parsers in this package
then confirm what a tag suggests. tests/naive_signatures.py is the plain-numpy twin of the kernel.
"""
from __future__ import annotations

import numpy as np
from numba import njit

from egressguard.schema import AppTag

SIGNATURE_BYTES = 16  # bytes of each direction looked at
ORIG, RESP = 0, 1
DNS_PORT = 53  # RFC 1035 4.2
MDNS_PORT = 5353  # RFC 6762
# HTTP/1 request methods by their first four bytes (RFC 9110 9, RFC 5789 PATCH)
HTTP_METHODS = (b"GET ", b"POST", b"HEAD", b"PUT ", b"DELE", b"OPTI", b"PATC", b"CONN", b"TRAC")
PROXY_V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"  # haproxy doc/proxy-protocol.txt 2.2
PROXY_V1_STARTS = (b"PROXY TCP4 ", b"PROXY TCP6 ", b"PROXY UNKNOWN")  # ... 2.1
SOCKS4_GRANTED = (0x5A, 0x5B, 0x5C, 0x5D)  # SOCKS4 reply codes 90-93 (granted, rejected, no identd, identd differs)
SOCKS5_METHODS = (0x00, 0x01, 0x02, 0xFF)  # RFC 1928 3: none, GSSAPI, username/password, no acceptable method
ECHO_TYPES = {1: (0, 8), 58: (128, 129)}  # ICMP echo reply/request (RFC 792), ICMPv6 (RFC 4443 4.1-4.2)


def _pattern_table(patterns: tuple[bytes, ...]) -> tuple[np.ndarray, np.ndarray]:
    """Byte patterns as a zero-padded uint8 [k, longest] table and their lengths (kernel arguments)."""
    width = max(len(p) for p in patterns)
    table = np.zeros((len(patterns), width), np.uint8)
    for i, p in enumerate(patterns):
        table[i, :len(p)] = np.frombuffer(p, np.uint8)
    return table, np.array([len(p) for p in patterns], np.int64)


# the AppTag bits as plain ints: numba freezes module globals into the kernel as constants
T_SSH, T_TLS, T_HELLO, T_REQUEST, T_RESPONSE = (int(AppTag.SSH), int(AppTag.TLS), int(AppTag.TLS_CLIENT_HELLO),
                                               int(AppTag.HTTP_REQUEST), int(AppTag.HTTP_RESPONSE))
T_WEBSOCKET, T_JSON, T_MQTT, T_DNS, T_MDNS = (int(AppTag.WEBSOCKET), int(AppTag.JSON), int(AppTag.MQTT),
                                              int(AppTag.DNS), int(AppTag.MDNS))
T_CONNECT, T_SOCKS4, T_SOCKS5, T_PROXY_V1, T_PROXY_V2, T_ECHO = (
    int(AppTag.HTTP_CONNECT), int(AppTag.SOCKS4), int(AppTag.SOCKS5), int(AppTag.PROXY_V1), int(AppTag.PROXY_V2),
    int(AppTag.ECHO))
_METHOD_TABLE = _pattern_table(HTTP_METHODS)
_PROXY_V1_TABLE = _pattern_table(PROXY_V1_STARTS)
_CONSTANTS = _pattern_table((b"HTTP/1.", b"GET ", b"HTTP/1.1 101", b"CONNECT ", PROXY_V2_SIGNATURE, b"POST "))


@njit(cache=True, nogil=True, inline="always")
def _starts(data, s, d, fill, table, i, n):
    """Kept bytes data[s, d] (fill bytes kept) start with pattern i of `table` (its first n bytes)."""
    if fill < n:
        return False
    for j in range(n):
        if data[s, d, j] != table[i, j]:
            return False
    return True


@njit(cache=True, nogil=True, inline="always")
def _any_start(data, s, d, fill, table, lengths):
    for i in range(table.shape[0]):
        if _starts(data, s, d, fill, table, i, lengths[i]):
            return True
    return False


@njit(cache=True, nogil=True)
def _tag_kernel(data, fills, slots, proto, orig_port, resp_port, methods, method_len, v1, v1_len, const,
                const_len, out):
    """AppTag bits of every row into `out` (see app_tags); data/fills are the flow table's keep_data/keep_fill."""
    for r in range(slots.shape[0]):
        t = np.uint32(0)
        p = proto[r]
        if p == 6 or p == 17:
            if resp_port[r] == 53:
                t |= np.uint32(T_DNS)
            elif resp_port[r] == 5353:
                t |= np.uint32(T_MDNS)
        elif (p == 1 and (orig_port[r] == 0 or orig_port[r] == 8) and (resp_port[r] == 0 or resp_port[r] == 8)) or \
                (p == 58 and (orig_port[r] == 128 or orig_port[r] == 129)
                 and (resp_port[r] == 128 or resp_port[r] == 129)):
            t |= np.uint32(T_ECHO)
        s = slots[r]
        if p == 6 and s >= 0:
            fo = fills[s, 0]
            fr = fills[s, 1]
            for d in range(2):  # Zeek dpd.sig: "SSH-" opens either direction, case-insensitive
                f = fills[s, d]
                if f >= 4 and (data[s, d, 0] & 0xDF) == 83 and (data[s, d, 1] & 0xDF) == 83 and \
                        (data[s, d, 2] & 0xDF) == 72 and data[s, d, 3] == 45:
                    t |= np.uint32(T_SSH)
            if fo >= 2 and data[s, 0, 0] == 0x16 and data[s, 0, 1] == 0x03:  # RFC 8446 5.1 handshake record
                t |= np.uint32(T_TLS)
                if fo >= 6 and data[s, 0, 5] == 1:  # RFC 8446 4: client_hello
                    t |= np.uint32(T_HELLO)
            if _any_start(data, s, 0, fo, methods, method_len):
                t |= np.uint32(T_REQUEST)
            if _starts(data, s, 1, fr, const, 0, const_len[0]):
                t |= np.uint32(T_RESPONSE)
            if _starts(data, s, 0, fo, const, 1, const_len[1]) and _starts(data, s, 1, fr, const, 2, const_len[2]):
                t |= np.uint32(T_WEBSOCKET)  # RFC 6455 4.2.2
            for d in range(2):  # RFC 8259 2: JSON after insignificant whitespace
                for j in range(min(fills[s, d], 16)):
                    b = data[s, d, j]
                    if b == 32 or b == 9 or b == 10 or b == 13:
                        continue
                    if b == 123 or b == 91:
                        t |= np.uint32(T_JSON)
                    break
            # MQTT 3.1.1 3.1.2.1: CONNECT (0x10), "MQ" of "MQTT"/"MQIsdp" after one or two length bytes
            if fo >= 6 and data[s, 0, 0] == 0x10 and ((data[s, 0, 4] == 77 and data[s, 0, 5] == 81)
                                                      or (fo >= 7 and data[s, 0, 5] == 77 and data[s, 0, 6] == 81)):
                t |= np.uint32(T_MQTT)
            if _starts(data, s, 0, fo, const, 3, const_len[3]):
                t |= np.uint32(T_CONNECT)  # HTTP CONNECT, RFC 9110 9.3.6
            if fo >= 2 and fr >= 2 and data[s, 0, 0] == 4 and data[s, 0, 1] == 1 and data[s, 1, 0] == 0 and \
                    0x5A <= data[s, 1, 1] <= 0x5D:
                t |= np.uint32(T_SOCKS4)  # SOCKS4 CONNECT and its reply
            if fo >= 2 and fr >= 2 and data[s, 0, 0] == 5 and data[s, 0, 1] >= 1 and data[s, 1, 0] == 5 and \
                    (data[s, 1, 1] <= 2 or data[s, 1, 1] == 0xFF):
                t |= np.uint32(T_SOCKS5)  # RFC 1928 3: greeting and method choice
            if _any_start(data, s, 0, fo, v1, v1_len):
                t |= np.uint32(T_PROXY_V1)
            if _starts(data, s, 0, fo, const, 4, const_len[4]):
                t |= np.uint32(T_PROXY_V2)
        out[r] = t


def app_tags(data: np.ndarray, fills: np.ndarray, slots: np.ndarray, proto: np.ndarray, orig_port: np.ndarray,
             resp_port: np.ndarray) -> np.ndarray:
    """AppTag bits (uint32) of every row: `data`/`fills` are the flow table's kept bytes (uint8 [slots, 2, n]) and
    bytes kept per slot and direction, `slots` each row's payload slot (-1: none); the rest FLOW columns."""
    out = np.zeros(len(slots), np.uint32)
    if len(slots):
        _tag_kernel(data, fills, np.asarray(slots, np.int64), np.asarray(proto, np.int64),
                    np.asarray(orig_port, np.int64), np.asarray(resp_port, np.int64), *_METHOD_TABLE,
                    *_PROXY_V1_TABLE, *_CONSTANTS, out)
    return out


def starts_with(prefix: np.ndarray, direction: int, text: bytes) -> np.ndarray:
    """Rows whose kept bytes of `direction` start with `text` (prefix: uint8 [rows, 2, >= len(text)])."""
    return (prefix[:, direction, :len(text)] == np.frombuffer(text, np.uint8)).all(axis=1)


__all__ = ["DNS_PORT", "HTTP_METHODS", "MDNS_PORT", "SIGNATURE_BYTES", "app_tags", "starts_with"]
