"""SSH from the first payload bytes a flow kept: version banners, KEXINIT (HASSH), the negotiated cipher and MAC,
and from those the sizes that encrypted keystrokes and control messages take on the wire.

Plain Python on a few kilobytes per SSH flow. Every string from the wire is returned as received (decoded with
`backslashreplace`) and bounded; escaping for terminals is the renderer's job.
"""
from __future__ import annotations

import functools
import hashlib
import math
import struct
from dataclasses import dataclass, field

MAX_BANNER = 255  # RFC 4253 4.2: the identification line is at most 255 characters
BANNER_SEARCH = 1024  # a server may send other lines first (RFC 4253 4.2); look this far for the version line
MSG_KEXINIT = 20  # RFC 4253 12
MSG_NEWKEYS = 21
MSG_KEX_ECDH_INIT = 30  # RFC 5656 7.1 (also curve25519, sntrup761, mlkem768 hybrids)
MSG_KEX_ECDH_REPLY = 31
MSG_KEX_DH_GEX_REQUEST = 34  # RFC 4419

# Cipher block sizes (bytes) for the record-length model (detection-science 1.4; RFC 4253 6, RFC 4344, RFC 5647).
CIPHER_BLOCK = {
    "chacha20-poly1305@openssh.com": 8,
    "aes128-ctr": 16, "aes192-ctr": 16, "aes256-ctr": 16,
    "aes128-gcm@openssh.com": 16, "aes256-gcm@openssh.com": 16,
    "aes128-cbc": 16, "aes192-cbc": 16, "aes256-cbc": 16, "rijndael-cbc@lysator.liu.se": 16,
    "3des-cbc": 8, "blowfish-cbc": 8, "cast128-cbc": 8,
    "arcfour": 8, "arcfour128": 8, "arcfour256": 8,  # stream ciphers: RFC 4253 6 uses a minimum block of 8
}
AEAD_CIPHERS = {"chacha20-poly1305@openssh.com", "aes128-gcm@openssh.com", "aes256-gcm@openssh.com"}
# MAC tag lengths (RFC 4253 6.4, RFC 6668, openssh PROTOCOL; Gatchell's reverse_ssh.bro table)
MAC_LENGTH = {
    "hmac-sha1": 20, "hmac-sha1-96": 12, "hmac-md5": 16, "hmac-md5-96": 12, "hmac-ripemd160": 20,
    "hmac-sha2-256": 32, "hmac-sha2-512": 64, "umac-64@openssh.com": 8, "umac-128@openssh.com": 16,
}
# Inner suites tried for SSH nested in SSH: the inner client need not match the outer one (detection-science 1.4).
INNER_SUITES = (
    ("chacha20-poly1305@openssh.com", ""),
    ("aes128-gcm@openssh.com", ""),
    ("aes128-ctr", "umac-64-etm@openssh.com"),
    ("aes128-ctr", "hmac-sha2-256-etm@openssh.com"),
    ("aes128-ctr", "hmac-sha2-256"),
    ("aes128-ctr", "hmac-sha1"),
)
CHANNEL_DATA_KEYSTROKE = 10  # SSH_MSG_CHANNEL_DATA carrying one byte: 1 + 4 + 4 + 1 (RFC 4254 5.2)
CHANNEL_DATA_OVERHEAD = 9


@dataclass(frozen=True)
class RecordModel:
    """How an SSH binary packet of payload p becomes an encrypted record on the wire."""

    block: int
    mac: int
    length_outside: bool  # AEAD or encrypt-then-MAC: the 4-byte length is not padded with the rest

    def size(self, payload: int) -> int:
        """Bytes on the wire for an SSH packet with `payload` bytes (padding >= 4, RFC 4253 6)."""
        if self.length_outside:
            return 4 + self.block * math.ceil((1 + payload + 4) / self.block) + self.mac
        return self.block * math.ceil((4 + 1 + payload + 4) / self.block) + self.mac


def record_model(cipher: str, mac: str) -> RecordModel | None:
    """The record model for a negotiated cipher and MAC, or None when either is unknown."""
    block = CIPHER_BLOCK.get(cipher)
    if block is None:
        return None
    if cipher in AEAD_CIPHERS:
        return RecordModel(block, 16, True)
    etm = mac.endswith("-etm@openssh.com")
    base = mac[: -len("-etm@openssh.com")] + "@openssh.com" if etm and mac.startswith("umac") else (
        mac[: -len("-etm@openssh.com")] if etm else mac)
    tag = MAC_LENGTH.get(base)
    if tag is None:
        return None
    return RecordModel(block, tag, etm)


@dataclass(frozen=True)
class KexInit:
    """The name-lists of one SSH_MSG_KEXINIT (RFC 4253 7.1)."""

    kex: tuple[str, ...]
    host_key: tuple[str, ...]
    enc_c2s: tuple[str, ...]
    enc_s2c: tuple[str, ...]
    mac_c2s: tuple[str, ...]
    mac_s2c: tuple[str, ...]
    comp_c2s: tuple[str, ...]
    comp_s2c: tuple[str, ...]

    def hassh(self, client: bool) -> str:
        """HASSH (client) or HASSHServer: MD5 of kex;enc;mac;comp as sent (salesforce/hassh)."""
        return _hassh(self, client)


@functools.lru_cache(maxsize=4096)
def _hassh(k: KexInit, client: bool) -> str:
    """HASSH of a KEXINIT, computed once per distinct one (a host's clients send the same lists again and again)."""
    enc, mac, comp = (k.enc_c2s, k.mac_c2s, k.comp_c2s) if client else (k.enc_s2c, k.mac_s2c, k.comp_s2c)
    text = ";".join(",".join(x) for x in (k.kex, enc, mac, comp))
    return hashlib.md5(text.encode("ascii", "backslashreplace")).hexdigest()


@dataclass
class SshSide:
    """What one direction of a flow said in the clear."""

    banner: str | None = None
    kexinit: KexInit | None = None
    messages: list[int] = field(default_factory=list)  # unencrypted message types in order
    newkeys_at: int | None = None  # byte offset in the kept stream just after NEWKEYS, when seen
    kept_all: bool = True  # False when the kept bytes ended before NEWKEYS

    @property
    def is_ssh(self) -> bool:
        return self.banner is not None


def find_banner(stream: bytes) -> tuple[str | None, int]:
    """The SSH identification line in the first bytes of a direction and the offset just after it."""
    window = stream[:BANNER_SEARCH]
    at = 0
    while at < len(window):
        end = window.find(b"\n", at)
        line_end = len(window) if end < 0 else end
        line = window[at:line_end]
        if line[:4].upper() == b"SSH-":
            text = line.rstrip(b"\r")[:MAX_BANNER].decode("utf-8", "backslashreplace")
            return text, (line_end + 1 if end >= 0 else line_end)
        if end < 0:
            break
        at = end + 1
    return None, 0


def _name_lists(payload: bytes, offset: int, count: int) -> tuple[list[tuple[str, ...]], int] | None:
    lists = []
    for _ in range(count):
        if offset + 4 > len(payload):
            return None
        (n,) = struct.unpack_from("!I", payload, offset)
        offset += 4
        if n > 8192 or offset + n > len(payload):
            return None
        raw = payload[offset:offset + n].decode("ascii", "backslashreplace")
        lists.append(tuple(raw.split(",")) if raw else ())
        offset += n
    return lists, offset


def parse_kexinit(payload: bytes) -> KexInit | None:
    """Parse an SSH_MSG_KEXINIT payload (starting at the message byte), or None if it is malformed."""
    if len(payload) < 17 or payload[0] != MSG_KEXINIT:
        return None
    parsed = _name_lists(payload, 17, 10)  # message byte + 16-byte cookie
    if parsed is None:
        return None
    lists, _ = parsed
    return KexInit(*lists[:8])


def parse_side(stream: bytes) -> SshSide:
    """Banner, clear-text message types and KEXINIT of one direction's kept bytes."""
    side = SshSide()
    side.banner, pos = find_banner(stream)
    if side.banner is None:
        return side
    while pos + 6 <= len(stream):
        (length,) = struct.unpack_from("!I", stream, pos)
        padding = stream[pos + 4]
        if length < 5 or length > 35000 or padding >= length:  # RFC 4253 6.1: 35000 is the floor every impl. accepts
            break
        if pos + 4 + length > len(stream):
            side.kept_all = False
            msg = stream[pos + 5]
            side.messages.append(msg)
            break
        msg = stream[pos + 5]
        side.messages.append(msg)
        if msg == MSG_KEXINIT and side.kexinit is None:
            side.kexinit = parse_kexinit(stream[pos + 5:pos + 4 + length - padding])
        pos += 4 + length
        if msg == MSG_NEWKEYS:
            side.newkeys_at = pos
            break
    else:
        side.kept_all = side.newkeys_at is not None
    return side


@dataclass(frozen=True)
class SshHandshake:
    """What the clear-text start of an SSH connection tells, from the point of view of the TCP originator."""

    orig: SshSide
    resp: SshSide
    client_is_orig: bool  # False when the TCP originator plays the SSH server (a reverse connection)
    cipher: str | None
    mac: str | None
    compression: str | None
    model: RecordModel | None

    @property
    def client(self) -> SshSide:
        return self.orig if self.client_is_orig else self.resp

    @property
    def server(self) -> SshSide:
        return self.resp if self.client_is_orig else self.orig

    def hassh(self) -> str | None:
        k = self.client.kexinit
        return k.hassh(client=True) if k else None

    def hassh_server(self) -> str | None:
        k = self.server.kexinit
        return k.hassh(client=False) if k else None

    def keystroke_size(self) -> int | None:
        """Wire size of one typed character (SSH_MSG_CHANNEL_DATA with one byte), K1 in detection-science 1.4."""
        return self.model.size(CHANNEL_DATA_KEYSTROKE) if self.model else None

    def tunnelled_keystroke_sizes(self) -> tuple[int, ...]:
        """Wire sizes of one keystroke of an SSH session carried inside this one (K2), for likely inner suites."""
        if self.model is None:
            return ()
        sizes = set()
        for cipher, mac in INNER_SUITES:
            inner = record_model(cipher, mac)
            if inner is not None:
                sizes.add(self.model.size(CHANNEL_DATA_OVERHEAD + inner.size(CHANNEL_DATA_KEYSTROKE)))
        sizes.add(self.model.size(CHANNEL_DATA_OVERHEAD + self.model.size(CHANNEL_DATA_KEYSTROKE)))
        return tuple(sorted(sizes))


def _first_common(client_list: tuple[str, ...], server_list: tuple[str, ...]) -> str | None:
    """RFC 4253 7.1: the first algorithm on the client's list that the server also supports."""
    server = set(server_list)
    return next((a for a in client_list if a in server), None)


def parse_handshake(orig_stream: bytes, resp_stream: bytes) -> SshHandshake | None:
    """The SSH handshake of a flow from the kept bytes of both directions, or None when neither side is SSH."""
    orig, resp = parse_side(orig_stream), parse_side(resp_stream)
    if not (orig.is_ssh or resp.is_ssh):
        return None
    # The SSH client sends KEX_ECDH_INIT / DH_GEX_REQUEST; the server sends the REPLY (RFC 5656 7.1, RFC 4419).
    client_is_orig = True
    if MSG_KEX_ECDH_REPLY in orig.messages or MSG_KEX_ECDH_INIT in resp.messages or \
            MSG_KEX_DH_GEX_REQUEST in resp.messages:
        client_is_orig = False
    client, server = (orig, resp) if client_is_orig else (resp, orig)
    cipher = mac = comp = None
    if client.kexinit and server.kexinit:
        # the outer suite as seen on the wire; c2s and s2c are negotiated separately, and agree in practice
        cipher = _first_common(client.kexinit.enc_c2s, server.kexinit.enc_c2s)
        comp = _first_common(client.kexinit.comp_c2s, server.kexinit.comp_c2s)
        if cipher in AEAD_CIPHERS:
            mac = "<implicit>"
        else:
            mac = _first_common(client.kexinit.mac_c2s, server.kexinit.mac_c2s)
    model = None
    if cipher and mac and comp in (None, "none"):  # zlib compression breaks the size model (Zeek main.zeek)
        model = record_model(cipher, "" if mac == "<implicit>" else mac)
    return SshHandshake(orig, resp, client_is_orig, cipher, mac, comp, model)


# Post-authentication requests (RFC 4254) and their payload sizes p, for the record-length model.
# GLOBAL_REQUEST "tcpip-forward" (RFC 4254 7.1): byte + string(13) + bool + string(bind address) + uint32 port
TCPIP_FORWARD_BASE = 1 + 4 + 13 + 1 + 4 + 4
BIND_ADDRESS_LENGTHS = (9, 0, 7, 1, 2, 3)  # "localhost" (OpenSSH's default), "", "0.0.0.0", "*", "::", "::1"
NO_MORE_SESSIONS = 1 + 4 + 26 + 1  # GLOBAL_REQUEST "no-more-sessions@openssh.com", sent by `ssh -N`
CHANNEL_OPEN_SESSION = 1 + 4 + 7 + 4 + 4 + 4  # SSH_MSG_CHANNEL_OPEN "session" (RFC 4254 6.1)
SERVICE_ACCEPT = 1 + 4 + 12  # SSH_MSG_SERVICE_ACCEPT "ssh-userauth" (RFC 4253 10)
USERAUTH_SUCCESS = 1  # RFC 4252 5.1
POST_AUTH_WINDOW = 4  # sandbox-side packets right after the login that are examined


@dataclass(frozen=True)
class PostAuth:
    """What the sizes of the first encrypted packets say (Zeek's auth inference, detection-science 1.5 and R8)."""

    auth_success: bool | None  # None: could not be told
    forward_request: int | None  # size of a 'tcpip-forward' request (ssh -R) sent right after login, if any
    no_session: bool  # `ssh -N`: 'no-more-sessions' sent and no session opened right after login


def post_auth(hs: SshHandshake, sizes: "list[int]") -> PostAuth:
    """Read login success and the first requests after it from the early signed size sequence (+orig / -resp)."""
    if hs.model is None:
        return PostAuth(None, None, False)
    m = hs.model
    sign = 1 if hs.client_is_orig else -1
    seq = [sign * s for s in sizes]  # + client, - server
    accept = m.size(SERVICE_ACCEPT)
    success = m.size(USERAUTH_SUCCESS)
    try:
        i = next(k for k, s in enumerate(seq) if s == -accept)
    except StopIteration:
        return PostAuth(None, None, False)
    try:
        j = next(k for k in range(i + 1, len(seq)) if seq[k] == -success)
    except StopIteration:
        return PostAuth(False if len(seq) > i + 6 else None, None, False)
    after = [s for s in seq[j + 1:] if s > 0][:POST_AUTH_WINDOW]
    # sizes shared with 'keepalive@openssh.com' or 'no-more-sessions@openssh.com' cannot be told apart: skip them
    ambiguous = {m.size(1 + 4 + 21 + 1), m.size(NO_MORE_SESSIONS)}
    forward_sizes = {m.size(TCPIP_FORWARD_BASE + n) for n in BIND_ADDRESS_LENGTHS} - ambiguous
    forward = next((s for s in after[:2] if s in forward_sizes), None)
    # 'no-more-sessions' is only recognisable where it differs in size from a session channel open
    # (CHANNEL_OPEN "session", RFC 4254 6.1): with classic MACs on 16-byte blocks both take the same record size
    nms = m.size(NO_MORE_SESSIONS)
    no_session = bool(after) and nms != m.size(CHANNEL_OPEN_SESSION) and nms in after[:2]
    return PostAuth(True, forward, no_session)
