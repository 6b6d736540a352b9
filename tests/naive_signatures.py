"""Plain-numpy twin of payload/signatures.py's kernel: the same AppTag bits from a zero-padded prefix of the kept
bytes (uint8 [rows, 2, 16], zero past what was kept), one array operation per signature."""
import numpy as np

from egressguard.payload.signatures import HTTP_METHODS, PROXY_V1_STARTS, PROXY_V2_SIGNATURE, starts_with
from egressguard.schema import AppTag

ORIG, RESP = 0, 1


def app_tags(prefix: np.ndarray, proto: np.ndarray, orig_port: np.ndarray, resp_port: np.ndarray) -> np.ndarray:
    tags = np.zeros(len(proto), np.uint32)

    def tag(mask, value):
        tags[mask] |= np.uint32(value)

    p = prefix[:, :, :16]
    tcp, udp = proto == 6, proto == 17
    upper = p[:, :, :3] & 0xDF
    tag(tcp & ((upper[:, :, 0] == 83) & (upper[:, :, 1] == 83) & (upper[:, :, 2] == 72) & (p[:, :, 3] == 45)).any(1),
        AppTag.SSH)
    tls = tcp & (p[:, ORIG, 0] == 0x16) & (p[:, ORIG, 1] == 0x03)
    tag(tls, AppTag.TLS)
    tag(tls & (p[:, ORIG, 5] == 1), AppTag.TLS_CLIENT_HELLO)
    methods = np.array([np.frombuffer(m, np.uint8) for m in HTTP_METHODS])
    tag(tcp & (p[:, ORIG, None, :4] == methods[None]).all(2).any(1), AppTag.HTTP_REQUEST)
    tag(tcp & starts_with(p, RESP, b"HTTP/1."), AppTag.HTTP_RESPONSE)
    tag(tcp & starts_with(p, ORIG, b"GET ") & starts_with(p, RESP, b"HTTP/1.1 101"), AppTag.WEBSOCKET)
    blank = np.isin(p, (32, 9, 10, 13))
    first = np.take_along_axis(p, np.argmax(~blank, axis=2)[:, :, None], axis=2)[:, :, 0]
    tag(tcp & ((first == ord("{")) | (first == ord("["))).any(1), AppTag.JSON)
    mq = np.frombuffer(b"MQ", np.uint8)
    tag(tcp & (p[:, ORIG, 0] == 0x10) & ((p[:, ORIG, 4:6] == mq).all(1) | (p[:, ORIG, 5:7] == mq).all(1)), AppTag.MQTT)
    tag((tcp | udp) & (resp_port == 53), AppTag.DNS)
    tag((tcp | udp) & (resp_port == 5353), AppTag.MDNS)
    tag(tcp & starts_with(p, ORIG, b"CONNECT "), AppTag.HTTP_CONNECT)
    tag(tcp & (p[:, ORIG, 0] == 4) & (p[:, ORIG, 1] == 1) & (p[:, RESP, 0] == 0) & np.isin(p[:, RESP, 1], (90, 91, 92, 93)),
        AppTag.SOCKS4)
    tag(tcp & (p[:, ORIG, 0] == 5) & (p[:, ORIG, 1] >= 1) & (p[:, RESP, 0] == 5) & np.isin(p[:, RESP, 1], (0, 1, 2, 255)),
        AppTag.SOCKS5)
    tag(tcp & np.any([starts_with(p, ORIG, s) for s in PROXY_V1_STARTS], axis=0), AppTag.PROXY_V1)
    tag(tcp & starts_with(p, ORIG, PROXY_V2_SIGNATURE), AppTag.PROXY_V2)
    echo = ((proto == 1) & np.isin(orig_port, (0, 8)) & np.isin(resp_port, (0, 8))) | \
        ((proto == 58) & np.isin(orig_port, (128, 129)) & np.isin(resp_port, (128, 129)))
    tag(echo, AppTag.ECHO)
    return tags
