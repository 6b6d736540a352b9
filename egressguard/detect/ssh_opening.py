"""What the first encrypted packets of an SSH connection say, read from their sizes, order and direction.

After the login every request a client makes and every channel either side opens has a size that the negotiated
record model predicts (carriers-and-implementations 1.2-1.3), but many sizes collide (a `tcpip-forward ""`, a
keepalive and a session open share one size in every suite), and TCP coalesces packets. So nothing here trusts a
single size: a request is a forward request when it is the client's first word after the login *and* the server
answers it with a request-success; a channel open is a packet the other side answers with an open confirmation;
the side that opens a channel is the side that uses the connection. Sizes are read from the early payload
sequence (the first payload packets of the flow, signed +client / -server).
"""
from __future__ import annotations

from dataclasses import dataclass

from egressguard.payload.ssh import RecordModel, SshHandshake, record_model

# Payload sizes p of the messages read here (RFC 4252, 4253, 4254; OpenSSH PROTOCOL)
SERVICE = 1 + 4 + 12  # SERVICE_REQUEST / SERVICE_ACCEPT "ssh-userauth"
SUCCESS = 1  # USERAUTH_SUCCESS, REQUEST_SUCCESS / REQUEST_FAILURE without a port
SUCCESS_PORT = 5  # REQUEST_SUCCESS with the port the server chose
IGNORE = 1 + 4  # SSH_MSG_IGNORE with an empty string (asyncssh before requests, PuTTY's keepalive)
TCPIP_FORWARD = 1 + 4 + 13 + 1 + 4 + 4  # GLOBAL_REQUEST "tcpip-forward" + bind address (its length added) + port
BIND_MAX = 45  # bind addresses sent: "", "localhost", "0.0.0.0", "127.0.0.1", an IPv6 literal, a host name
COMMON_BINDS = (0, 1, 2, 3, 7, 9)  # "", "*", "::", "::1", "0.0.0.0", "localhost" / "127.0.0.1" (OpenSSH, dropbear, PuTTY)
KEEPALIVE = 1 + 4 + 21 + 1  # GLOBAL_REQUEST "keepalive@openssh.com"
NO_MORE_SESSIONS = 1 + 4 + 28 + 1  # GLOBAL_REQUEST "no-more-sessions@openssh.com" (OpenSSH's client, want_reply 0)
CHANNEL_KEEPALIVE = 1 + 4 + 4 + 21 + 1  # CHANNEL_REQUEST "keepalive@openssh.com" (sshd ClientAliveInterval): the
# largest keepalive; paramiko's keepalive@lag.net (23), PuTTY's empty IGNORE (5) and the replies are smaller
SESSION_OPEN = 1 + 4 + 7 + 4 + 4 + 4  # CHANNEL_OPEN "session"
OPEN_CONFIRMATION = 1 + 4 + 4 + 4 + 4  # CHANNEL_OPEN_CONFIRMATION
# CHANNEL_OPEN "direct-tcpip" (client: -L, -D, -J) and "forwarded-tcpip" (server: -R) carry two addresses and ports:
# p = 49 + len(host) + len(originator address), resp. 52 + ...; up to a 255-byte name and an IPv6 originator
TCP_OPEN_MIN, TCP_OPEN_MAX = 49, 52 + 255 + 39
# Suites a connection is tried against when its KEXINITs could not be read whole (asyncssh's is over 2 KB): the
# defaults of the common implementations (carriers-and-implementations 1.1)
COMMON_SUITES = (
    ("chacha20-poly1305@openssh.com", ""), ("aes128-gcm@openssh.com", ""), ("aes128-ctr", "hmac-sha2-256"),
    ("aes128-ctr", "hmac-sha2-256-etm@openssh.com"), ("aes128-ctr", "umac-64-etm@openssh.com"),
    ("aes128-ctr", "hmac-sha2-512"), ("aes128-ctr", "hmac-sha2-512-etm@openssh.com"), ("aes128-ctr", "hmac-sha1"),
)
OPENING_GAP_S = 1.0  # the login's own exchange ends at the first second of silence
AUTH_WINDOW = 24  # packets after the service accept in which the login ends (a few methods tried, each 2-4 packets)
PROBE_MAX = 64  # payload of the largest request a success cannot answer ("none" with a long user name)
BULK_SEGMENT = 1400  # a segment this large is data (full-sized TCP segments are ~1448 B): the login is over
SANDBOX_REPLY_S = 0.05  # the sandbox side's program confirms a channel within this (measured: under 5 ms)
ANSWER_GAP_S = 0.2  # a pause that ends one side's answer
ZLIB_SLACK = 12  # bytes zlib@openssh.com can add to a short message: the stream header once, then a partial flush's
# empty stored block per packet (RFC 1950 2.2, RFC 1951 3.2.4; OpenSSH packet.c compress_buffer)


@dataclass(frozen=True)
class ChannelOpen:
    """A channel one side opened and the other confirmed."""

    by_client: bool
    size: int  # wire size of the open
    kind: str  # "session", "tcp" (direct-tcpip from the client, forwarded-tcpip from the server), "other"
    at: float  # seconds after the flow's start


@dataclass(frozen=True)
class Opening:
    """What the login and the first requests after it show (None where it could not be told)."""

    model: RecordModel | None  # the record model the sizes were read with
    model_inferred: bool  # the KEXINITs could not be read whole: the model was chosen by the login's sizes
    compressed: bool  # zlib@openssh.com: sizes after the login are compressed, only the shape can be read
    auth_success: bool | None
    forward_request: int | None  # wire size of a 'tcpip-forward' request answered by the server
    forward_reply: int | None  # wire size of the server's request-success
    no_more_sessions: bool  # OpenSSH's `ssh -N`: 'no-more-sessions' sent right after the login
    session: bool  # the client's first request opened a session (a shell, a command, sftp, scp, git)
    opens: tuple[ChannelOpen, ...]  # channels opened after the login, in order
    login_at: float | None  # seconds after the flow's start when the login succeeded
    quiet_after: bool  # after the login's own exchange, only keepalive-sized packets (or silence) follow


def _sizes(model: RecordModel, payloads) -> set[int]:
    """Wire sizes of these payloads: with minimal padding, and with the padding some implementations add so that a
    packet is at least 16 bytes (dropbear; RFC 4253 6) or one more block (PuTTY)."""
    out = set()
    for p in payloads:
        out.add(model.size(p))
        # at least 16 bytes before the MAC: padding_length, payload and padding (plus the length when it is padded)
        out.add(model.size(max(p, 11 if model.length_outside else 7)))
    return out




def read_opening(hs: SshHandshake | None, sizes: list[int], times_s: list[float]) -> Opening:
    """Read the opening of one SSH connection from its early payload sequence (`sizes` signed +orig / -resp,
    `times_s` seconds after the flow's start). `hs` None: the handshake was not seen (SSH inside TLS); the
    originator is taken as the client and the record model is chosen by the login's sizes."""
    sign = 1 if hs is None or hs.client_is_orig else -1
    seq = [sign * s for s in sizes]  # + client, - server
    compressed = hs is not None and hs.compression not in (None, "none")
    model, inferred = (None, False) if hs is None else (hs.model, False)
    if hs is not None and model is None and hs.cipher is not None and hs.mac is not None:
        model = record_model(hs.cipher, "" if hs.mac == "<implicit>" else hs.mac)  # compression: login sizes
    login = _login(model, seq) if model is not None else None
    if login is None:
        for cipher, mac in COMMON_SUITES:
            candidate = record_model(cipher, mac)
            login = _login(candidate, seq)
            if login is not None:
                model, inferred = candidate, True
                break
    if login is None or model is None:
        return Opening(model, inferred, compressed, None, None, None, False, False, (), None, False)
    accept_at, success_at = login
    if success_at is None:
        failed = len(seq) > accept_at + 6  # the login went on and no success came
        return Opening(model, inferred, compressed, False if failed else None, None, None, False, False, (), None,
                       False)
    after = list(range(success_at + 1, len(seq)))
    if compressed:
        hostkeys = hs is not None and "OpenSSH" in (hs.server.banner or "")
        forward, reply, session, opens = _shape_reading(model, seq, times_s, success_at, after, hostkeys)
        return Opening(model, inferred, compressed, True, forward, reply, False, session, opens,
                       times_s[success_at], _quiet_after(model, seq, times_s, after, compressed))
    forward, reply = _forward_request(model, seq, after)
    nms = model.size(NO_MORE_SESSIONS) != model.size(SESSION_OPEN) and any(
        seq[k] == model.size(NO_MORE_SESSIONS) for k in _client(seq, after)[:3])
    session = _session_first(model, seq, times_s, after)
    opens = _channel_opens(model, seq, times_s, after)
    if session and forward is None:  # channels on a session's connection are the session's data: not opens
        opens = tuple(o for o in opens if o.kind == "session")
    return Opening(model, inferred, compressed, True, forward, reply, nms, session, opens, times_s[success_at],
                   _quiet_after(model, seq, times_s, after, compressed))


def _login(model: RecordModel, seq: list[int]) -> tuple[int, int | None] | None:
    """(index of the server's SERVICE_ACCEPT, index of its USERAUTH_SUCCESS or None), when the sizes fit.

    The accept is the first server packet of its size that the client answers. Failures, IGNOREs and the answer
    to a public-key query can take a success's size, so the success is the success-sized answer to the client's
    largest authentication request (a signed public-key request, or a password OpenSSH pads to 64 bytes), among
    the packets before the first full-sized segment (bulk data comes only after the login)."""
    accept, success = _sizes(model, (SERVICE,)), _sizes(model, (SUCCESS,))
    i = next((k for k, s in enumerate(seq) if -s in accept and any(x > 0 for x in seq[k + 1:k + 3])), None)
    if i is None:
        return None
    end = next((k for k in range(i + 1, len(seq)) if abs(seq[k]) >= BULK_SEGMENT), len(seq))
    probe = model.size(PROBE_MAX)
    best, best_request = None, probe
    for k in range(i + 1, min(end, i + AUTH_WINDOW)):
        if -seq[k] not in success:
            continue
        request = next((seq[m] for m in range(k - 1, i, -1) if seq[m] > 0), 0)
        if request > best_request:
            best, best_request = k, request
    return i, best


def _client(seq: list[int], indices) -> list[int]:
    return [k for k in indices if seq[k] > 0]


def _forward_request(model: RecordModel, seq: list[int], after: list[int]) -> tuple[int | None, int | None]:
    """The client's first word after the login, when it is a 'tcpip-forward' request (ssh -R).

    The server's first answers tell: an open confirmation means it was a channel open; a request-success means a
    global request with a reply, which right after the login is a forward request (keepalives come later). Without
    either (sshd may send its host keys in the same segment as the success), only a size shared with no other early
    request, for one of the common bind addresses, counts."""
    ignore = _sizes(model, (IGNORE,))
    client = [k for k in _client(seq, after) if seq[k] not in ignore]  # asyncssh sends an IGNORE before requests
    if not client:
        return None, None
    k = client[0]
    size = seq[k]
    if size not in _sizes(model, range(TCPIP_FORWARD, TCPIP_FORWARD + BIND_MAX + 1)):
        return None, None
    confirm, replies = _sizes(model, (OPEN_CONFIRMATION,)), _sizes(model, (SUCCESS, SUCCESS_PORT))
    answers = [-seq[m] for m in after if m > k and seq[m] < 0][:2]
    if any(a in confirm for a in answers):
        return None, None  # a channel the server confirmed: a session or a direct-tcpip open
    reply = next((a for a in answers if a in replies), None)
    if reply is None:
        shared = _sizes(model, (KEEPALIVE, NO_MORE_SESSIONS, SESSION_OPEN, 23))  # 23: paramiko's keepalive@lag.net
        if size in shared or size not in _sizes(model, [TCPIP_FORWARD + n for n in COMMON_BINDS]):
            return None, None
    return size, reply


def _answer_burst(seq: list[int], times_s: list[float], after: list[int], k: int) -> list[int]:
    """The server's answer to the client's packet k: its packets after k, up to the first pause of ANSWER_GAP_S or
    the client's next packet."""
    out = []
    for m in (m for m in after if m > k):
        if seq[m] > 0 or (out and times_s[m] - times_s[out[-1]] > ANSWER_GAP_S):
            break
        out.append(m)
    return out


def _session_first(model: RecordModel, seq: list[int], times_s: list[float], after: list[int]) -> bool:
    """The client's first request after the login opened a session channel (alone, or in one segment with
    OpenSSH's 'no-more-sessions'): the server confirmed it, or the client went on at once (within SANDBOX_REPLY_S
    of the server's answer, sshd's host keys may hide the confirmation) with the session's requests."""
    ignore = _sizes(model, (IGNORE,))
    client = [k for k in _client(seq, after) if seq[k] not in ignore]
    if not client:
        return False
    k = client[0]
    session = _sizes(model, (SESSION_OPEN,))
    if seq[k] not in session | {s + n for s in session for n in _sizes(model, (NO_MORE_SESSIONS,))}:
        return False
    confirm, replies = _sizes(model, (OPEN_CONFIRMATION,)), _sizes(model, (SUCCESS, SUCCESS_PORT))
    answers = _answer_burst(seq, times_s, after, k)
    if answers and -seq[answers[0]] in replies:
        return False  # a request-success: the request was a global one ('tcpip-forward'), not an open
    if any(-seq[m] in confirm for m in answers):
        return True
    if not answers or len(client) < 2:
        return False
    return 0 <= times_s[client[1]] - times_s[answers[-1]] <= SANDBOX_REPLY_S


def _channel_opens(model: RecordModel, seq: list[int], times_s: list[float], after: list[int]) -> tuple:
    """Channels opened after the login: a packet of an open's size that the other side answers, as its next
    packet, with an open confirmation. Where the sandbox is the one confirming (a channel the remote side opened),
    the confirmation leaves within SANDBOX_REPLY_S: the capture point is at the sandbox, and a program answers at
    once where a person (a keystroke after output) does not."""
    confirm = _sizes(model, (OPEN_CONFIRMATION,))
    session = _sizes(model, (SESSION_OPEN,))
    tcp = _sizes(model, range(TCP_OPEN_MIN, TCP_OPEN_MAX + 1))
    first_client = next((k for k in after if seq[k] > 0), None)
    out = []
    for n, k in enumerate(after):
        s = seq[k]
        # a session is the client's first channel, right after the login; servers open no sessions
        is_session = s > 0 and k == first_client and s in session
        if not is_session and abs(s) not in tcp:
            continue
        answers = [m for m in after[n + 1:] if (seq[m] > 0) != (s > 0)][:2]  # an IGNORE may come first
        answer = next((m for m in answers if abs(seq[m]) in confirm), None)
        if answer is None:
            continue
        if s < 0 and times_s[answer] - times_s[k] > SANDBOX_REPLY_S:
            continue
        kind = "session" if is_session else "tcp"
        out.append(ChannelOpen(s > 0, abs(s), kind, times_s[k]))
    return tuple(out)


def _shape_reading(model: RecordModel, seq: list[int], times_s: list[float], success_at: int, after: list[int],
                   hostkeys: bool) -> tuple[int | None, int | None, bool, tuple[ChannelOpen, ...]]:
    """(forward request, its reply, session, channel opens) under compression, where sizes after the login say
    little: read from order, direction and timing instead, with the capture point at the sandbox (the client).

    The client's first word, sent within SANDBOX_REPLY_S of the login's success, is a program's: a session open
    (the client goes on at once with its requests once the server confirms), a global request answered by a short
    success and followed by nothing (ssh -R's 'tcpip-forward'), or a channel to a service that speaks first (the
    server's answer is more than a confirmation: the banner of the host behind a jump, -J / -W). After the login,
    every channel open is answered by a confirmation before the opener may send data (RFC 4254 5.1): an exchange
    after a pause in which the remote side leads, the sandbox confirms within SANDBOX_REPLY_S and data follows is a
    channel opened from outside (-R in use); one in which the sandbox leads and sends again within SANDBOX_REPLY_S
    of the remote's short answer is a channel the sandbox opened (-L, -D). On a session's connection channels are
    the session's data, so opens are only read when no session was opened."""
    small = max(_sizes(model, (OPEN_CONFIRMATION + ZLIB_SLACK,)))  # a confirmation or a request-success
    largest_open = max(_sizes(model, (TCP_OPEN_MAX + ZLIB_SLACK,)))
    client = _client(seq, after)
    forward = reply = None
    opens: list[ChannelOpen] = []
    first = client[0] if client and times_s[client[0]] - times_s[success_at] <= SANDBOX_REPLY_S else None
    if first is not None:
        words = [first]
        while words[-1] + 1 < len(seq) and seq[words[-1] + 1] > 0 and \
                times_s[words[-1] + 1] - times_s[first] <= SANDBOX_REPLY_S:
            words.append(words[-1] + 1)
        answers = _answer_burst(seq, times_s, after, words[-1])
        sizes = [-seq[m] for m in answers]
        if hostkeys and sizes and sizes[0] > small:
            sizes = sizes[1:]  # sshd's unasked 'hostkeys-00@openssh.com' right after the login (OpenSSH PROTOCOL)
        later = [k for k in client if answers and k > answers[-1]]
        went_on = bool(later) and times_s[later[0]] - times_s[answers[-1]] <= SANDBOX_REPLY_S
        if sum(sizes) > 2 * small * len(words) and went_on:  # more than a confirmation and one more short message
            opens.append(ChannelOpen(True, seq[first], "tcp", times_s[first]))  # a service that speaks first
        elif sizes and went_on:
            return None, None, True, ()
        elif sizes:
            forward, reply = seq[first], sizes[0]
    for n in range(len(after) - 2):
        k, r, c = after[n], after[n + 1], after[n + 2]
        if times_s[k] - times_s[after[n - 1] if n else success_at] < ANSWER_GAP_S or abs(seq[k]) > largest_open or \
                (seq[k] > 0) == (seq[r] > 0) or times_s[c] - times_s[r] > ANSWER_GAP_S:
            continue
        if seq[k] < 0 and seq[r] <= 2 * small and times_s[r] - times_s[k] <= SANDBOX_REPLY_S:
            opens.append(ChannelOpen(False, -seq[k], "tcp", times_s[k]))
        elif seq[k] > 0 and seq[c] > 0 and times_s[c] - times_s[r] <= SANDBOX_REPLY_S:
            opens.append(ChannelOpen(True, seq[k], "tcp", times_s[k]))
    return forward, reply, False, tuple(opens)


def _quiet_after(model: RecordModel, seq: list[int], times_s: list[float], after: list[int],
                 compressed: bool) -> bool:
    """After the login's own exchange (up to the first second of silence), only keepalive-sized packets follow, or
    nothing at all: a parked connection."""
    later = []
    for n in range(1, len(after)):
        if times_s[after[n]] - times_s[after[n - 1]] >= OPENING_GAP_S:
            later = after[n:]
            break
    small = model.size(CHANNEL_KEEPALIVE) + (2 * model.block if compressed else 0)
    return all(abs(seq[k]) <= small for k in later)


@dataclass(frozen=True)
class ShippedAgent:
    """A session whose command was sent a program to run before it answered, and which then served requests: the
    shape of sshuttle (its assembler and zlib-compressed modules go down the session's stdin, then its mux carries
    the sandbox's connections) and of other agents that make an SSH session into a VPN."""

    shipped: int  # bytes the client sent right after the login, before the server answered with data
    served: int  # later exchanges: a pause, a short message from the client, a bulk answer from the server
    asked: int  # median bytes the client sent to open such an exchange
    answered: int  # median bytes the server answered with


SHIPPED_MIN = 8192  # a program sent to the far side: sshuttle's bootstrap is ~17 KB (sshuttle ssh.py: assembler.py
# plus its zlib-compressed modules on stdin)
SHIPPED_WITHIN_S = 1.0  # ... by a program, right after the login (a person pasting cannot be this quick)
SERVER_BEFORE_MAX = 2048  # what the server may send before the shipment: replies and OpenSSH's host keys, no data
LEAD_MAX_BYTES = 600  # a short request: a mux frame and a connection's first bytes
SERVED_MIN_BYTES = 1024  # a bulk answer: at least this, and ANSWER_RATIO times the request
ANSWER_RATIO = 4  # as flows/conversation.py's answered bursts
SERVED_MIN = 2


def shipped_agent(sizes: list[int], times_s: list[float], op: Opening | None,
                  client_is_orig: bool = True) -> ShippedAgent | None:
    """Read a shipped agent from the early payload sequence (signed +orig / -resp) of a connection whose first
    act after the login was a session; None when the shape is not there."""
    if op is None or not op.session or op.login_at is None:
        return None
    sign = 1 if client_is_orig else -1
    seq = [sign * x for x in sizes]
    start = next((k for k, t in enumerate(times_s) if t > op.login_at), None)
    if start is None:
        return None
    server_before = shipped = 0
    k = start
    while k < len(seq) and times_s[k] - op.login_at <= SHIPPED_WITHIN_S:
        if seq[k] > 0:
            shipped += seq[k]
        elif shipped >= SHIPPED_MIN:
            break  # the far side's first answer after the shipment
        else:
            server_before -= seq[k]
            if server_before > SERVER_BEFORE_MAX:
                return None
        k += 1
    if shipped < SHIPPED_MIN:
        return None
    asked, answered = [], []
    n = len(seq)
    while k < n:
        if k == 0 or times_s[k] - times_s[k - 1] < ANSWER_GAP_S or seq[k] < 0:
            k += 1
            continue
        lead, m = 0, k
        while m < n and seq[m] > 0 and (m == k or times_s[m] - times_s[m - 1] < ANSWER_GAP_S):
            lead += seq[m]
            m += 1
        answer = 0
        while m < n and times_s[m] - times_s[m - 1] < ANSWER_GAP_S:
            answer += -seq[m] if seq[m] < 0 else 0
            m += 1
        if lead <= LEAD_MAX_BYTES and answer >= max(SERVED_MIN_BYTES, ANSWER_RATIO * lead):
            asked.append(lead)
            answered.append(answer)
        k = max(m, k + 1)
    if len(asked) < SERVED_MIN:
        return None
    return ShippedAgent(shipped, len(asked), sorted(asked)[len(asked) // 2], sorted(answered)[len(answered) // 2])


# Bytes a TLS record adds to what it carries (RFC 8446 5.2: 5-byte header, 1-byte inner type, 16-byte AEAD tag;
# RFC 5288: TLS 1.2 AES-GCM adds an 8-byte explicit nonce; RFC 7905: TLS 1.2 ChaCha20-Poly1305 none)
TLS_RECORD_OVERHEADS = (22, 29, 21)
BANNER_MIN, BANNER_MAX = 10, 255  # RFC 4253 4.2: an identification line is at most 255 bytes
KEXINIT_MIN = 300  # a KEXINIT lists a dozen algorithms in each of its name-lists (the shortest seen: ~600 B)


def ssh_inside_tls(sizes: list[int], times_s: list[float]) -> tuple[int, Opening] | None:
    """Read an SSH opening from the record sizes of a TLS connection, when the TLS carries SSH (stunnel, socat
    OPENSSL, ncat --ssl as a ProxyCommand): after the TLS handshake both sides send a banner-sized record, then
    each a KEXINIT-sized one; the records after it, less the TLS record overhead, must show an SSH login under one
    of the common suites. Returns (the overhead that fitted, the opening) or None."""
    start = _banners(sizes)
    if start is None:
        return None
    for overhead in TLS_RECORD_OVERHEADS:
        inner = [s - overhead if s > 0 else s + overhead for s in sizes[start:]]
        if any(abs(s) <= 0 for s in inner):
            continue
        opening = read_opening(None, inner, times_s[start:])
        if opening.auth_success:
            return overhead, opening
    return None


def _banners(sizes: list[int]) -> int | None:
    """Index of the first of two banner-sized packets, one each way within 4 packets of each other (TLS 1.3
    session tickets may come between), followed in each direction by a KEXINIT-sized one within 4 packets."""
    def banner(size: int) -> bool:
        return BANNER_MIN + 21 <= abs(size) <= BANNER_MAX + 29

    for k in range(min(len(sizes) - 3, 16)):
        if not banner(sizes[k]):
            continue
        m = next((m for m in range(k + 1, min(k + 5, len(sizes)))
                  if sizes[m] * sizes[k] < 0 and banner(sizes[m])), None)
        if m is None:
            continue
        later = sizes[m + 1:m + 5]
        if any(s >= KEXINIT_MIN for s in later) and any(-s >= KEXINIT_MIN for s in later):
            return k
    return None


__all__ = ["ChannelOpen", "Opening", "ShippedAgent", "TLS_RECORD_OVERHEADS", "read_opening", "shipped_agent",
           "ssh_inside_tls"]
