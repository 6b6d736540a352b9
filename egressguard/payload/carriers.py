"""Carrier framing in front of a flow's real protocol: HTTP CONNECT, SOCKS4/4a/5, WebSocket, PROXY protocol v1/v2.

A sandbox allowed out only through a proxy wraps SSH or Stratum in a carrier; this module peels the carrier from
the first kept bytes of each direction (research/carriers-and-implementations.md 3.1-3.4, 3.6) so the inspectors
see the inner protocol and the policy sees the target the proxy was asked for.

API (for detectors; FlowView.carriers builds it once per batch):

* `candidates(prefix)`: numpy prefilter over a batch (uint8 [rows, 2, >=16] first kept bytes): the rows whose
  originator opens like a carrier. Only those go to the parser.
* `peel(orig, resp) -> Carrier | None`: the carrier chain of one flow from its kept bytes per direction (orig =
  originator's stream, resp = responder's). Never raises on any input.
* `Carrier.chain`: names outermost first, e.g. ("http_connect",), ("http_connect", "websocket"), ("proxy_v2",).
* `Carrier.target`: (host or address text, port) the innermost carrier that names one was asked for (CONNECT
  authority, SOCKS destination, WebSocket URI `?dst=host:port`), else None; `Carrier.targets` every named one as
  (carrier, host, port), outermost first.
* `Carrier.offset`: (orig, resp) byte offsets where the inner bytes start (for WebSocket: where its frames start).
* `Carrier.inner(orig, resp) -> (bytes, bytes)`: the inner bytes per direction; through WebSocket the data frames
  de-framed (unmasked, control frames dropped, permessage-deflate inflated when possible; a text message ends with
  "\n" when it does not already, so line-based inspectors see one JSON message per line).
* FlowView.carriers (flows/view.py): computed once per batch, `.rows` (view rows with a carrier) and
  `.get(row) -> CarrierFlow | None` with `.chain`, `.target`, `.carrier` and `.inner` (orig, resp) peeled bytes;
  FlowView.inner_app / inner_tagged(AppTag.SSH) give the signature tag of what is inside (SSH, JSON, TLS, HTTP).
* `Carrier.overhead`: bytes of framing per inner message and direction (0 except WebSocket: 2/6 bytes for short
  frames), for size models; `Carrier.text` "http_connect > websocket" for evidence.
"""
from __future__ import annotations

import base64
import ipaddress
import json
import zlib
from dataclasses import dataclass, field
from urllib.parse import parse_qs, unquote, urlsplit

import numpy as np

HTTP_CONNECT, SOCKS4, SOCKS5, WEBSOCKET, PROXY_V1, PROXY_V2 = (
    "http_connect", "socks4", "socks5", "websocket", "proxy_v1", "proxy_v2")
PROXY_V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"  # haproxy doc/proxy-protocol.txt 2.2
MAX_HEAD = 8192  # bytes searched for the end of an HTTP header block
MAX_DEPTH = 4  # carriers nested (e.g. PROXY > CONNECT > WebSocket)
MAX_FRAMES = 64  # WebSocket frames de-framed per direction (the flow keeps ~2 KiB anyway)
PROXY_V1_MAX = 107  # haproxy doc/proxy-protocol.txt 2.1: the v1 line is at most 107 bytes
TARGET_PARAMS = ("dst", "target", "host", "to")  # URI query keys relays use for their target (mhzed/wstunnel: dst)
WS_MASKED_OVERHEAD, WS_SERVER_OVERHEAD = 6, 2  # RFC 6455 5.2: header of a <=125-byte frame, masked / unmasked


@dataclass(frozen=True)
class Carrier:
    """The carrier chain of one flow (see the module docstring)."""

    chain: tuple[str, ...]
    offset: tuple[int, int]
    targets: tuple[tuple[str, str, int], ...] = ()
    details: dict = field(default_factory=dict, compare=False)  # per carrier: URI, Host, PROXY addresses, ...

    @property
    def target(self) -> tuple[str, int] | None:
        return (self.targets[-1][1], self.targets[-1][2]) if self.targets else None

    @property
    def target_text(self) -> str | None:
        t = self.target
        if t is None:
            return None
        return f"[{t[0]}]:{t[1]}" if ":" in t[0] else f"{t[0]}:{t[1]}"

    @property
    def text(self) -> str:
        return " > ".join(self.chain)

    @property
    def framed(self) -> bool:
        """The inner bytes are WebSocket frames (de-frame with `inner`)."""
        return bool(self.chain) and self.chain[-1] == WEBSOCKET

    @property
    def overhead(self) -> tuple[int, int]:
        return (WS_MASKED_OVERHEAD, WS_SERVER_OVERHEAD) if self.framed else (0, 0)

    def inner(self, orig: bytes, resp: bytes) -> tuple[bytes, bytes]:
        o, r = orig[self.offset[0]:], resp[self.offset[1]:]
        if self.framed:
            return deframe(o), deframe(r)
        return o, r


# ------------------------------------------------------------------------------------------------ prefilter
def candidates(prefix: np.ndarray) -> np.ndarray:
    """Rows (bool) of a batch whose originator's first bytes open like a carrier: `CONNECT `, SOCKS4 `04 01|02`,
    SOCKS5 `05 n`, `GET ` answered `HTTP/1.x 101` or not answered (a WebSocket upgrade, confirmed by the parser;
    ordinary GETs stay out), `PROXY `, or the PROXY v2 signature."""
    p = prefix[:, 0, :]
    if not len(p):
        return np.zeros(0, bool)

    def starts(text: bytes, side: np.ndarray = p) -> np.ndarray:
        return (side[:, :len(text)] == np.frombuffer(text, np.uint8)).all(axis=1)
    socks4 = (p[:, 0] == 4) & ((p[:, 1] == 1) | (p[:, 1] == 2))
    socks5 = (p[:, 0] == 5) & (p[:, 1] >= 1) & (p[:, 1] <= 16)
    r = prefix[:, 1, :]
    switched = (starts(b"HTTP/1.", r) & (r[:, 8] == 32) & starts(b"101", r[:, 9:])) | ~r.any(axis=1)
    return starts(b"CONNECT ") | socks4 | socks5 | (starts(b"GET ") & switched) | starts(b"PROXY ") | \
        starts(PROXY_V2_SIGNATURE)


# ------------------------------------------------------------------------------------------------ parser
def peel(orig: bytes, resp: bytes) -> Carrier | None:
    """The carrier chain of a flow from the kept bytes of each direction, or None (never raises)."""
    try:
        return _peel(bytes(orig), bytes(resp))
    except Exception:  # noqa: BLE001 - wire bytes: a parser bug must not stop the batch
        return None


def _peel(orig: bytes, resp: bytes) -> Carrier | None:
    chain: list[str] = []
    targets: list[tuple[str, str, int]] = []
    details: dict = {}
    o = r = 0
    for _ in range(MAX_DEPTH):
        step = None
        for layer in (_proxy_v2, _proxy_v1, _connect, _socks4, _socks5, _websocket):
            step = layer(orig, o, resp, r)
            if step is not None:
                break
        if step is None:
            break
        name, o, r, target, info = step
        chain.append(name)
        if target is not None:
            targets.append((name, target[0], target[1]))
        if info:
            details[name] = info
        if name == WEBSOCKET:
            break  # frames follow: de-framed by Carrier.inner
    if not chain:
        return None
    return Carrier(tuple(chain), (o, r), tuple(targets), details)


def _head(data: bytes, at: int) -> int:
    """Offset just past the blank line ending the HTTP header block starting at `at`, or -1."""
    end = data.find(b"\r\n\r\n", at, at + MAX_HEAD)
    return -1 if end < 0 else end + 4


def _authority(text: str) -> tuple[str, int] | None:
    """host:port (or [v6]:port) as (host, port); None when it is not one."""
    text = text.strip()
    if text.startswith("["):
        close = text.find("]")
        if close < 0 or text[close + 1:close + 2] != ":":
            return None
        host, port = text[1:close], text[close + 2:]
    else:
        host, _, port = text.rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536 or len(host) > 255:
        return None
    if any(c.isspace() or ord(c) < 33 or ord(c) > 126 for c in host):
        return None
    return host.lower(), int(port)


def _status_2xx(resp: bytes, r: int) -> int | None:
    """End of a 2xx HTTP/1.x response head at `r`, -1 if none has arrived, None if another status answered."""
    if len(resp) <= r:
        return -1
    if not resp.startswith(b"HTTP/1.", r):
        return None
    line = resp[r:resp.find(b"\r\n", r, r + 256)]
    parts = line.split(b" ")
    if len(parts) < 2 or len(parts[1]) != 3 or not parts[1].isdigit():
        return None
    end = _head(resp, r)
    if not parts[1].startswith(b"2"):
        return None
    return end


def _connect(orig: bytes, o: int, resp: bytes, r: int):
    """HTTP CONNECT (RFC 9110 9.3.6): request head, a 2xx answer; a 407 answer and a retry on the same connection
    (proxy authentication) are skipped."""
    if not orig.startswith(b"CONNECT ", o):
        return None
    for _ in range(3):
        end = _head(orig, o)
        line = orig[o:orig.find(b"\r\n", o, o + 1024)]
        parts = line.split(b" ")
        if end < 0 or len(parts) != 3 or not parts[2].startswith(b"HTTP/1."):
            return None
        target = _authority(parts[1].decode("latin-1"))
        if target is None:
            return None
        if len(resp) > r and resp.startswith(b"HTTP/1.", r) and resp[r + 9:r + 12] == b"407":
            r_end = _head(resp, r)
            if r_end < 0 or not orig.startswith(b"CONNECT ", end):
                return None
            length = _content_length(resp[r:r_end])
            r, o = r_end + length, end
            continue
        answer = _status_2xx(resp, r)
        if answer is None:
            return None
        return HTTP_CONNECT, end, (answer if answer >= 0 else len(resp)), target, \
            {"authority": parts[1].decode("latin-1")[:260]}
    return None


def _content_length(head: bytes) -> int:
    for line in head.split(b"\r\n"):
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length" and value.strip().isdigit():
            return min(int(value.strip()), 1 << 20)
    return 0


def _socks4(orig: bytes, o: int, resp: bytes, r: int):
    """SOCKS4/4a CONNECT (or BIND): `04 cmd port ip userid 00 [host 00]`, reply `00 5A port ip` (8 bytes)."""
    if len(orig) < o + 9 or orig[o] != 4 or orig[o + 1] not in (1, 2):
        return None
    port = int.from_bytes(orig[o + 2:o + 4], "big")
    ip = orig[o + 4:o + 8]
    nul = orig.find(b"\x00", o + 8, o + 8 + 256)
    if nul < 0:
        return None
    end = nul + 1
    if ip[:3] == b"\x00\x00\x00" and ip[3] != 0:  # SOCKS4a: a host name follows the user id
        nul2 = orig.find(b"\x00", end, end + 256)
        if nul2 <= end:
            return None
        host = orig[end:nul2].decode("latin-1").lower()
        end = nul2 + 1
    else:
        host = str(ipaddress.IPv4Address(ip))
    if len(resp) > r:
        if len(resp) < r + 8 or resp[r] != 0 or resp[r + 1] != 0x5A:
            return None
        r += 8
    return SOCKS4, end, r, (host, port), {}


def _socks5(orig: bytes, o: int, resp: bytes, r: int):
    """SOCKS5 (RFC 1928, 1929): greeting, method choice, user/password, request (IPv4/domain/IPv6), reply."""
    if len(orig) < o + 3 or orig[o] != 5:
        return None
    n = orig[o + 1]
    if n == 0 or len(orig) < o + 2 + n:
        return None
    pos = o + 2 + n
    method = None
    rp = r
    if len(resp) >= rp + 2:
        if resp[rp] != 5:
            return None
        method = resp[rp + 1]
        if method == 0xFF:
            return None
        rp += 2
    if orig[pos:pos + 1] == b"\x01" and (method == 2 or (method is None and orig[pos + 1:pos + 2] != b"\x00")):
        ulen = orig[pos + 1] if len(orig) > pos + 1 else 0
        plen_at = pos + 2 + ulen
        if len(orig) <= plen_at:
            return None
        pos = plen_at + 1 + orig[plen_at]
        if len(resp) >= rp + 2:
            if resp[rp] != 1 or resp[rp + 1] != 0:
                return None
            rp += 2
    if len(orig) < pos + 4 or orig[pos] != 5 or orig[pos + 1] not in (1, 2, 3) or orig[pos + 2] != 0:
        return None
    atyp, at = orig[pos + 3], pos + 4
    if len(orig) < at + {1: 4, 3: 1, 4: 16}.get(atyp, 0) + 2:
        return None
    if atyp == 1:
        host, at = str(ipaddress.IPv4Address(orig[at:at + 4])), at + 4
    elif atyp == 3:
        ln = orig[at] if len(orig) > at else 0
        if ln == 0:
            return None
        host, at = orig[at + 1:at + 1 + ln].decode("latin-1").lower(), at + 1 + ln
    elif atyp == 4:
        host, at = str(ipaddress.IPv6Address(orig[at:at + 16])), at + 16
    else:
        return None
    if len(orig) < at + 2:
        return None
    port = int.from_bytes(orig[at:at + 2], "big")
    end = at + 2
    if len(resp) > rp:  # the reply: 05 REP 00 ATYP BND.ADDR BND.PORT
        if len(resp) < rp + 4 or resp[rp] != 5 or resp[rp + 1] != 0:
            return None
        batyp = resp[rp + 3]
        size = {1: 4, 4: 16}.get(batyp)
        if size is None:
            if batyp != 3 or len(resp) <= rp + 4:
                return None
            size = 1 + resp[rp + 4]
        rp += 4 + size + 2
    return SOCKS5, end, rp, (host, port), {"auth": "user/password" if method == 2 else "none"}


def _websocket(orig: bytes, o: int, resp: bytes, r: int):
    """HTTP Upgrade to WebSocket (RFC 6455 4): a GET with `Upgrade: websocket`, `101` back (or no answer yet)."""
    if not orig.startswith(b"GET ", o):
        return None
    end = _head(orig, o)
    if end < 0:
        return None
    head = orig[o:end].decode("latin-1")
    lines = head.split("\r\n")
    headers = {}
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if sep:
            headers[name.strip().lower()] = value.strip()
    if "websocket" not in headers.get("upgrade", "").lower():
        return None
    if len(resp) > r:
        if not (resp.startswith(b"HTTP/1.1 101", r) or resp.startswith(b"HTTP/1.0 101", r)):
            return None
        r_end = _head(resp, r)
        r = r_end if r_end >= 0 else len(resp)
    parts = lines[0].split(" ")
    uri = parts[1] if len(parts) >= 2 else ""
    info = {"uri": uri[:300], "host": headers.get("host", "")[:260]}
    if headers.get("sec-websocket-protocol"):
        info["protocol"] = headers["sec-websocket-protocol"][:300]
    return WEBSOCKET, end, r, _uri_target(uri, headers.get("sec-websocket-protocol", "")), info


def _uri_target(uri: str, protocols: str) -> tuple[str, int] | None:
    """A relay target named in the upgrade: a `?dst=host:port` style query (mhzed/wstunnel), or the `r`/`rp`
    claims of erebe/wstunnel's JWT in Sec-WebSocket-Protocol (`authorization.bearer.<jwt>`)."""
    try:
        query = parse_qs(urlsplit(uri).query)
    except ValueError:  # e.g. "//[" : urlsplit rejects a malformed IPv6 authority
        query = {}
    for key in TARGET_PARAMS:
        for value in query.get(key, ()):
            target = _authority(unquote(value))
            if target is not None:
                return target
    for proto in protocols.split(","):
        proto = proto.strip()
        if proto.startswith("authorization.bearer."):
            parts = proto[len("authorization.bearer."):].split(".")
            if len(parts) >= 2:
                try:
                    claims = json.loads(base64.urlsafe_b64decode(parts[1] + "=" * (-len(parts[1]) % 4)))
                except ValueError:  # binascii.Error and JSONDecodeError are ValueErrors
                    return None
                if isinstance(claims, dict) and isinstance(claims.get("r"), str) and isinstance(claims.get("rp"), int):
                    return _authority(f"{claims['r']}:{claims['rp']}")
    return None


def _proxy_v1(orig: bytes, o: int, resp: bytes, r: int):
    """PROXY protocol v1: one text line `PROXY TCP4|TCP6|UNKNOWN src dst sport dport\\r\\n`."""
    if not orig.startswith(b"PROXY ", o):
        return None
    eol = orig.find(b"\r\n", o, o + PROXY_V1_MAX)
    if eol < 0:
        return None
    fields = orig[o:eol].decode("latin-1").split(" ")
    if fields[1] not in ("TCP4", "TCP6", "UNKNOWN") or (fields[1] != "UNKNOWN" and len(fields) != 6):
        return None
    info = {"source": f"{fields[2]}:{fields[4]}", "destination": f"{fields[3]}:{fields[5]}"} \
        if fields[1] != "UNKNOWN" else {}
    return PROXY_V1, eol + 2, r, None, info


def _proxy_v2(orig: bytes, o: int, resp: bytes, r: int):
    """PROXY protocol v2: 12-byte signature, ver/cmd, family, length, addresses and TLVs."""
    if not orig.startswith(PROXY_V2_SIGNATURE, o) or len(orig) < o + 16:
        return None
    ver_cmd, fam = orig[o + 12], orig[o + 13]
    if ver_cmd >> 4 != 2:
        return None
    length = int.from_bytes(orig[o + 14:o + 16], "big")
    body = orig[o + 16:o + 16 + length]
    info: dict = {"command": "proxy" if ver_cmd & 0xF == 1 else "local"}
    if fam >> 4 == 1 and len(body) >= 12:
        info["source"] = f"{ipaddress.IPv4Address(body[0:4])}:{int.from_bytes(body[8:10], 'big')}"
        info["destination"] = f"{ipaddress.IPv4Address(body[4:8])}:{int.from_bytes(body[10:12], 'big')}"
    elif fam >> 4 == 2 and len(body) >= 36:
        info["source"] = f"[{ipaddress.IPv6Address(body[0:16])}]:{int.from_bytes(body[32:34], 'big')}"
        info["destination"] = f"[{ipaddress.IPv6Address(body[16:32])}]:{int.from_bytes(body[34:36], 'big')}"
    return PROXY_V2, o + 16 + length, r, None, info


# ------------------------------------------------------------------------------------------------ WebSocket frames
def frames(data: bytes, limit: int = MAX_FRAMES) -> list[tuple[int, bool, bool, bytes]]:
    """(opcode, fin, rsv1, unmasked payload) of the WebSocket frames at the start of `data`; the last may be cut
    short where the kept bytes end. RFC 6455 5.2: 7/16/64-bit lengths, 4-byte mask key on client frames."""
    out = []
    pos = 0
    while len(out) < limit and pos + 2 <= len(data):
        b0, b1 = data[pos], data[pos + 1]
        if b0 & 0x30:  # RSV2/RSV3: no extension we know sets them, so not a frame
            break
        length, pos = b1 & 0x7F, pos + 2
        if length == 126:
            if pos + 2 > len(data):
                break
            length, pos = int.from_bytes(data[pos:pos + 2], "big"), pos + 2
        elif length == 127:
            if pos + 8 > len(data):
                break
            length, pos = int.from_bytes(data[pos:pos + 8], "big"), pos + 8
        key = None
        if b1 & 0x80:
            if pos + 4 > len(data):
                break
            key, pos = data[pos:pos + 4], pos + 4
        chunk = data[pos:pos + length]
        if key is not None and chunk:
            mask = (key * (len(chunk) // 4 + 1))[:len(chunk)]
            chunk = (int.from_bytes(chunk, "big") ^ int.from_bytes(mask, "big")).to_bytes(len(chunk), "big")
        out.append((b0 & 0x0F, bool(b0 & 0x80), bool(b0 & 0x40), chunk))
        pos += length
        if len(chunk) < length:
            break
    return out


def deframe(data: bytes, limit: int = MAX_FRAMES) -> bytes:
    """The data carried by the WebSocket frames at the start of `data`: data frames unmasked and concatenated,
    control frames (ping/pong/close) dropped, permessage-deflate messages (RSV1) inflated as far as possible, a
    newline after each complete text message that does not end with one."""
    out = bytearray()
    text = deflated = False
    inflater = None
    for opcode, fin, rsv1, chunk in frames(data, limit):
        if opcode >= 8:
            continue
        if opcode in (1, 2):
            text, deflated = opcode == 1, rsv1
        elif opcode != 0:
            break
        if deflated:
            inflater = inflater or zlib.decompressobj(-15)
            try:
                chunk = inflater.decompress(chunk + (b"\x00\x00\xff\xff" if fin else b""))
            except zlib.error:
                break
        out += chunk
        if fin and text and not out.endswith(b"\n"):
            out += b"\n"
    return bytes(out)


__all__ = ["HTTP_CONNECT", "PROXY_V1", "PROXY_V2", "SOCKS4", "SOCKS5", "WEBSOCKET", "Carrier", "candidates",
           "deframe", "frames", "peel"]
