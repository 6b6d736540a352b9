"""SSH on any port: who is really typing, and which way the tunnel points.

Every flow whose kept bytes start with an SSH banner (or carries one inside WebSocket frames) is classified as a
reverse tunnel, another tunnel, an interactive session, a file transfer, or undetermined. Encryption hides the
content, so the verdict comes from record sizes predicted from the negotiated cipher (detection-science 1.4) and
from the conversation's rhythm (1.6-1.7): which side types, which side speaks first after a pause, which side
starts handshakes inside the connection, which side only acknowledges.
"""
from __future__ import annotations

import enum
import functools
from collections import OrderedDict
from dataclasses import dataclass

import numpy as np

from egressguard.detect.base import BatchResult, DetectorContext, LiveMode, allow_match, noisy_or
from egressguard.detect.ssh_opening import (SANDBOX_REPLY_S, Opening, ShippedAgent, read_opening, shipped_agent,
                                           ssh_inside_tls)
from egressguard.flows.table import Conversation
from egressguard.flows.view import CarrierFlow, FlowView
from egressguard.payload.ssh import PostAuth, SshHandshake, parse_handshake, post_auth
from egressguard.payload.tls import hello_traits, parse_client_hello
from egressguard.payload.websocket import websocket_streams
from egressguard.schema import AppTag, EndReason, Finding, FindingKind, FlowFlag, Severity, copy_record

ORIG, RESP = 0, 1


class SshUse(enum.StrEnum):
    """What an SSH connection is used for (the `ssh_use` field of flow records)."""

    REVERSE_TUNNEL = "reverse_tunnel"  # ssh -R, autossh -R, a reverse connection: the outside reaches in
    TUNNEL = "tunnel"  # ssh -L, -D, VPN over SSH, SSH inside another protocol
    INTERACTIVE = "interactive"  # a person (or agent) typing into a shell
    FILE_TRANSFER = "file_transfer"  # scp, sftp, rsync, git: bulk one way
    COMMAND = "command"  # a session that ran a command and ended (ssh host cmd, ansible, a CI step)
    UNDETERMINED = "undetermined"


class TunnelUse(enum.StrEnum):
    """What a tunnel carries (the `tunnel_use` field of the `ssh` object), as far as the shape tells."""

    PARKED = "parked"  # held open, nothing carried yet: a door left open
    PULL = "pull"  # bulk data out of the sandbox on requests from outside (files pulled through it)
    SERVICE = "service"  # short requests from outside answered by the sandbox (a service inside used from outside)
    SHELL = "shell"  # keystrokes from outside echoed by the sandbox
    FORWARD = "forward"  # connections from the sandbox carried out (-L, -D, -J, VPN)


@dataclass(frozen=True)
class Params:
    """Thresholds, each with where it comes from."""

    min_echo_pairs: int = 4  # detection-science 1.7 R2 (Trisul alerts at 3 per direction, Althouse at 5 alternations)
    min_echo_pairs_unmodelled: int = 20  # the same when the cipher is unknown and any small size counts
    min_tunnel_echo_pairs: int = 8  # nested keystrokes from the sandbox side (jump host): typing, not a few packets
    echo_dominance: float = 2.0  # reverse echoes must outnumber forward ones by this factor
    min_led_bursts: int = 5  # 1.7 R4: over >= 5 bursts
    min_answers: int = 2  # request/bulk-answer bursts needed to say who serves whom
    led_ratio: float = 0.6  # 1.7 R4 proposes >= 0.5; 0.6 leaves room for keepalive replies
    ack_ratio: float = 3.0  # 1.7 R5 (JA4SSH: the server side acknowledges a reverse shell)
    min_acks: int = 20  # 1.7 R5
    keepalive_min: int = 5  # 1.7 R7: regular client keepalives on an otherwise silent session
    keepalive_max_cv: float = 0.2  # 1.7 R7 uses CV < 0.1 over hours; short lab runs jitter more
    interactive_echo_pairs: int = 20  # a bulk flow with this many typed keystrokes is a session, not a copy
    transfer_min_bytes: int = 256 * 1024  # bulk: at least this much one way ...
    transfer_share: float = 0.9  # ... and this share of all payload bytes in that direction
    nonstandard_port_bonus: float = 0.05  # 1.7 R1: SSH away from port 22 is worth a little more suspicion
    min_packets: int = 16  # payload packets below which a flow is no more than a handshake and a login attempt
    remembered_connections: int = 65536  # SSH flows cut by a timeout or eviction, kept to recognise their rest


@dataclass(frozen=True)
class SshSignals:
    """The measured facts behind a verdict (all counts over the whole flow)."""

    keystroke: int | None
    tunnel_keystrokes: tuple[int, ...]
    echo_fwd: int  # keystroke-sized packets from the sandbox side echoed by the remote side
    echo_rev: int  # keystroke-sized packets from the remote side echoed by the sandbox side
    tunnel_echo_fwd: int
    tunnel_echo_rev: int
    led_fwd: int
    led_rev: int
    nested_fwd: int
    nested_rev: int
    acks_fwd: int  # bare ACKs sent by the sandbox side
    acks_rev: int
    keepalives: int
    keepalive_interval: float
    keepalive_cv: float
    bytes_fwd: int
    bytes_rev: int
    answered_fwd: int  # bursts in which the sandbox side asked briefly and got bulk data back
    answered_rev: int  # bursts in which the remote side asked briefly and the sandbox side answered in bulk
    login: PostAuth
    opening: Opening | None = None  # the login and the first requests after it (ssh_opening.py)
    framed: bool = False  # carried in WebSocket frames: the conversation was measured on the frames' sizes
    agent: ShippedAgent | None = None  # a program shipped down the session, then serving requests (sshuttle)


def _echo_count(conv: Conversation, leader: int, sizes: set[int]) -> int:
    return sum(conv.echoes(leader, s) for s in sizes)


def measure(hs: SshHandshake, conv: Conversation, rec: np.void, early_sizes: list[int],
            early_times_s: list[float] | None = None, framed: bool = False) -> SshSignals:
    """Read the signals of one SSH flow from its conversation shape and flow counters."""
    k1 = hs.keystroke_size()
    k2 = set(hs.tunnelled_keystroke_sizes())
    if k1 is None:
        # unknown cipher: use the most echoed small size on each side as the keystroke size
        sizes = {int(np.argmax(conv.echo_pairs[d])) * 4 for d in (ORIG, RESP) if conv.echo_pairs[d].any()}
        plain = sizes
    else:
        plain = {k1} - k2
    opening = read_opening(hs, early_sizes, early_times_s) if early_times_s is not None else None
    pp = conv.pingpongs[ORIG]
    mean = conv.pingpong_interval_mean[ORIG]
    cv = conv.pingpong_interval_sd[ORIG] / mean if mean > 0 else float("inf")
    return SshSignals(
        keystroke=k1, tunnel_keystrokes=tuple(sorted(k2)),
        echo_fwd=_echo_count(conv, ORIG, plain | k2), echo_rev=_echo_count(conv, RESP, plain | k2),
        tunnel_echo_fwd=_echo_count(conv, ORIG, k2), tunnel_echo_rev=_echo_count(conv, RESP, k2),
        led_fwd=conv.bursts_led[ORIG], led_rev=conv.bursts_led[RESP],
        nested_fwd=conv.nested_handshakes[ORIG], nested_rev=conv.nested_handshakes[RESP],
        acks_fwd=int(rec["orig_bare_acks"]), acks_rev=int(rec["resp_bare_acks"]),
        keepalives=pp, keepalive_interval=mean, keepalive_cv=cv,
        bytes_fwd=int(rec["orig_payload_bytes"]), bytes_rev=int(rec["resp_payload_bytes"]),
        answered_fwd=conv.answered[ORIG], answered_rev=conv.answered[RESP],
        login=post_auth(hs, early_sizes),
        opening=opening, framed=framed,
        agent=shipped_agent(early_sizes, early_times_s, opening, hs.client_is_orig) if opening is not None else None,
    )


@dataclass(frozen=True)
class Verdict:
    use: SshUse
    score: float
    evidence: tuple[str, ...]
    tunnel_use: TunnelUse | None = None


def classify(hs: SshHandshake, sig: SshSignals, p: Params = Params()) -> Verdict:
    """Decide what an SSH flow is used for; evidence sentences carry the measured values."""
    op = sig.opening
    rev: list[tuple[float, str]] = []
    if not hs.client_is_orig:
        rev.append((0.95, "the side that opened the TCP connection answered as the SSH server (it sent the "
                          "key-exchange reply): a reverse connection, the outside host drives a shell on this side"))
    if op is not None and op.forward_request is not None and op.compressed:
        rev.append((0.75, f"right after login the sandbox side made one request ({op.forward_request} B) that the "
                          f"server granted with a short success ({op.forward_reply} B), and opened no session: "
                          f"compression hides what a request is, but by its place and answer it is a "
                          f"'tcpip-forward' asking the server to listen and forward connections back (ssh -R)"))
    elif op is not None and op.forward_request is not None:
        reply = (f", which the server granted (a {op.forward_reply} B request-success)" if op.forward_reply
                 else "")
        rev.append((0.75, f"right after login the sandbox side asked the server to listen and forward connections "
                          f"back to it (a {op.forward_request} B 'tcpip-forward' request{reply}: ssh -R)"))
    elif op is None and sig.login.forward_request:
        rev.append((0.75, f"right after login the sandbox side asked the server to listen and forward connections "
                          f"back to it (a {sig.login.forward_request} B 'tcpip-forward' request: ssh -R)"))
    server_opens = [o for o in op.opens if not o.by_client and o.kind == "tcp"] if op is not None else []
    if server_opens and op.compressed:
        rev.append((0.85, f"{len(server_opens)} time(s), after a pause, the remote side sent a short message that the "
                          f"sandbox side answered within {int(1000 * SANDBOX_REPLY_S)} ms before data followed: the "
                          f"order of a channel opened from outside and confirmed by a program in the sandbox "
                          f"(compression hides the sizes): connections from outside carried into the sandbox"))
    elif server_opens:
        sizes = "/".join(sorted({str(o.size) for o in server_opens}))
        rev.append((0.85, f"the remote side opened {len(server_opens)} channel(s) of a forwarded connection's size "
                          f"({sizes} B) that the sandbox side confirmed within "
                          f"{int(1000 * SANDBOX_REPLY_S)} ms: connections from outside carried into the sandbox"))
    # without a size model (unknown cipher, SSH-1) echoes of any small size are much weaker evidence
    min_echo = p.min_echo_pairs if sig.keystroke is not None else p.min_echo_pairs_unmodelled
    # Channels the sandbox opened (-L, -D), none from outside, no forward request: the server ends each with an EOF
    # and a CLOSE that the client's CLOSE answers, packets of a keystroke's size under an AEAD suite (RFC 4254 5.3),
    # so echo pairs led from outside are the channels' bookkeeping, not typing
    forwarded_out = (op is not None and op.forward_request is None and not op.session and not server_opens
                     and any(o.by_client and o.kind == "tcp" for o in op.opens))
    echo_rev_ok = not forwarded_out and sig.echo_rev >= min_echo and \
        sig.echo_rev >= p.echo_dominance * max(sig.echo_fwd, 1)
    if echo_rev_ok and sig.tunnel_echo_rev >= p.min_echo_pairs:
        sizes = "/".join(str(s) for s in sig.tunnel_keystrokes)
        rev.append((0.9, f"the remote side sent {sig.tunnel_echo_rev} packets of the size of a keystroke inside a "
                         f"nested SSH session ({sizes} B), each echoed by the sandbox side within 0.5 s: someone "
                         f"outside is typing into a shell that runs through this connection"))
    elif echo_rev_ok:
        size = f" ({sig.keystroke} B)" if sig.keystroke else ""
        rev.append((0.8, f"the remote side sent {sig.echo_rev} keystroke-sized packets{size} echoed by the sandbox "
                         f"side within 0.5 s: the typing comes from outside"))
    # in WebSocket frames the burst sizes are the frames': one bulk exchange can be the login's, not a handshake
    if sig.nested_rev >= (2 if sig.framed else 1):
        rev.append((0.85, f"{sig.nested_rev} time(s) the remote side opened a burst with a bulk exchange in both "
                          f"directions: a new connection (handshake) started from outside and carried inside"))
    answered_rev = sig.answered_rev >= p.min_answers and sig.answered_rev > sig.answered_fwd
    if answered_rev:
        rev.append((0.7, f"{sig.answered_rev} times the remote side sent a short request and the sandbox side "
                         f"answered with bulk data: a service inside the sandbox is used from outside"))
    # supporting evidence only: a server that pushes (tail -f, notifications) also speaks first, and an upload
    # from the sandbox also makes the remote side acknowledge
    led_total = sig.led_fwd + sig.led_rev
    if rev and sig.led_rev >= p.min_led_bursts and sig.led_rev >= p.led_ratio * led_total:
        rev.append((0.6, f"after each pause the remote side spoke first in {sig.led_rev} of {led_total} bursts"))
    if rev and sig.acks_rev >= p.min_acks and sig.acks_rev >= p.ack_ratio * (sig.acks_fwd + 1):
        rev.append((0.3, f"the remote side sent {sig.acks_rev} bare ACKs against {sig.acks_fwd} from the sandbox "
                         f"side: data flows out of the sandbox in answer to requests from outside"))
    held = _held_open(sig, p)
    if rev:
        if held:
            rev.append((0.3, held))
        use = _reverse_use(sig, p, echo_rev_ok, answered_rev)
        if use is TunnelUse.PARKED:
            rev.append((0.0, "nothing has been carried through it yet: a parked tunnel, a door left open for later"))
        return Verdict(SshUse.REVERSE_TUNNEL, _combine(rev), tuple(text for _, text in rev), use)

    fwd: list[tuple[float, str]] = []
    client_opens = [o for o in op.opens if o.by_client and o.kind == "tcp"] if op is not None else []
    if client_opens and not op.session and op.compressed:
        fwd.append((0.8, f"with no shell session, {len(client_opens)} time(s) the sandbox side opened an exchange "
                         f"that the server answered briefly and the sandbox side went on within "
                         f"{int(1000 * SANDBOX_REPLY_S)} ms, or the server answered with more than a confirmation "
                         f"(a service that speaks first, as SSH behind a jump host): the order of channels opened "
                         f"from the sandbox (compression hides the sizes): connections carried out through SSH "
                         f"(-L, -D or -J)"))
    elif client_opens and not op.session:
        sizes = "/".join(sorted({str(o.size) for o in client_opens}))
        fwd.append((0.8, f"with no shell session, the sandbox side opened {len(client_opens)} channel(s) of a "
                         f"forwarded connection's size ({sizes} B) that the server confirmed: connections from the "
                         f"sandbox carried out through SSH (-L, -D or -J)"))
    plain_fwd = sig.echo_fwd - sig.tunnel_echo_fwd
    if sig.tunnel_echo_fwd >= p.min_tunnel_echo_pairs and sig.tunnel_echo_fwd >= 2 * plain_fwd:
        sizes = "/".join(str(s) for s in sig.tunnel_keystrokes)
        fwd.append((0.8, f"the sandbox side sent {sig.tunnel_echo_fwd} packets of the size of a keystroke inside a "
                         f"nested SSH session ({sizes} B): an SSH session runs through this one (jump host, -L)"))
    if sig.nested_fwd:
        fwd.append((0.7, f"{sig.nested_fwd} time(s) the sandbox side opened a burst with a bulk exchange in both "
                         f"directions: a new connection started inside the SSH connection (-L, -D or -J)"))
    agent = sig.agent
    # a mux's short frames and their answers pair up as echoes; only as many as typing makes rule out a VPN
    if agent is not None and sig.echo_fwd < min_echo:
        fwd.append((0.7, f"right after the login the sandbox side sent {agent.shipped} B down its session before the "
                         f"server answered with data (a program shipped to run on the far side, as sshuttle does), "
                         f"then {agent.served} times, after a pause, a short message (median {agent.asked} B) "
                         f"answered in bulk (median {agent.answered} B): connections carried through that program, "
                         f"a VPN over SSH"))
    if fwd:
        return Verdict(SshUse.TUNNEL, _combine(fwd), tuple(text for _, text in fwd), TunnelUse.FORWARD)
    total = sig.bytes_fwd + sig.bytes_rev
    if sig.echo_fwd < p.interactive_echo_pairs and total and max(sig.bytes_fwd, sig.bytes_rev) >= p.transfer_min_bytes and \
            max(sig.bytes_fwd, sig.bytes_rev) >= p.transfer_share * total:
        way = "to" if sig.bytes_fwd > sig.bytes_rev else "from"
        return Verdict(SshUse.FILE_TRANSFER, 0.0, (f"{max(sig.bytes_fwd, sig.bytes_rev)} bytes {way} the remote side "
                                                   f"in bulk",))
    if sig.echo_fwd >= min_echo:  # without a size model (compression, an unknown cipher) only many echoes count
        return Verdict(SshUse.INTERACTIVE, 0.0, (f"{sig.echo_fwd} keystrokes from the sandbox side echoed by the "
                                                 f"remote side",))
    no_session = sig.login.no_session if op is None or op.auth_success is None else (
        op.no_more_sessions and not op.session)
    if no_session and sig.answered_fwd >= 1 and sig.answered_fwd >= sig.answered_rev:
        fwd.append((0.7, f"with no shell session (ssh -N), the sandbox side sent {sig.answered_fwd} short requests "
                         f"answered with bulk data through the connection: a port forward (-L) or SOCKS proxy (-D)"))
    elif no_session and held:
        fwd.append((0.5, "ssh -N: no session was opened; " + held))
    if fwd:
        return Verdict(SshUse.TUNNEL, _combine(fwd), tuple(text for _, text in fwd), TunnelUse.FORWARD)
    if op is not None and op.session and total < p.transfer_min_bytes:
        return Verdict(SshUse.COMMAND, 0.0, ("a session was opened right after login and little was typed: a "
                                             "command run over SSH",))
    if hs.compression not in (None, "none"):
        return Verdict(SshUse.UNDETERMINED, 0.0, (f"{hs.compression} compression: the sizes after the login cannot "
                                                  f"be predicted, and the shape alone did not tell",))
    return Verdict(SshUse.UNDETERMINED, 0.0, ())


def _reverse_use(sig: SshSignals, p: Params, typed: bool, answered: bool) -> TunnelUse:
    """What a reverse tunnel carries: typing from outside, a service, files pulled, or nothing yet."""
    if typed:
        return TunnelUse.SHELL
    total = sig.bytes_fwd + sig.bytes_rev
    if sig.bytes_fwd >= p.transfer_min_bytes and sig.bytes_fwd >= p.transfer_share * total:
        return TunnelUse.PULL
    if answered or (sig.opening is not None and any(not o.by_client for o in sig.opening.opens)):
        return TunnelUse.SERVICE
    if sig.opening is not None and sig.opening.quiet_after:
        return TunnelUse.PARKED
    return TunnelUse.SERVICE if sig.answered_rev else TunnelUse.PARKED


def _held_open(sig: SshSignals, p: Params) -> str | None:
    """1.7 R7: a connection that carries nothing but regular keepalives from the sandbox side."""
    if sig.keepalives >= p.keepalive_min and sig.keepalive_cv <= p.keepalive_max_cv and \
            sig.led_fwd + sig.led_rev <= 2:
        return (f"the connection is held open by {sig.keepalives} keepalives every {sig.keepalive_interval:.1f} s "
                f"(spacing CV {sig.keepalive_cv:.2f}) and carries nothing else")
    return None


def _combine(parts: list[tuple[float, str]]) -> float:
    """Noisy-OR of independent pieces of evidence."""
    return noisy_or(score for score, _ in parts)


def _severity(use: SshUse, score: float, n_evidence: int) -> Severity:
    if use is SshUse.REVERSE_TUNNEL:
        return Severity.CRITICAL if score >= 0.9 and n_evidence >= 2 else Severity.HIGH
    return Severity.HIGH if score >= 0.9 else Severity.MEDIUM


@dataclass(frozen=True)
class _Remembered:
    """An SSH flow that ended without closing: its rest may come as a flow with no handshake."""

    handshake: SshHandshake
    use: SshUse
    first_seen: float
    flow: np.void  # the record it was remembered from: its 5-tuple must match the rest's


TLS_MIN_PACKETS = 8  # payload packets each way: a TLS handshake, an SSH key exchange and a login take more
_CUT_SHORT = (int(EndReason.IDLE), int(EndReason.ACTIVE_TIMEOUT), int(EndReason.EVICTED))


class SshTunnelDetector:
    """Finds SSH on any port and reports reverse tunnels (`reverse_ssh_tunnel`) and other tunnels (`ssh_tunnel`).

    It remembers SSH flows that were cut by a timeout or an eviction, so that the rest of such a connection (which
    arrives with no banner) is still recognised and classified with the original handshake.
    """

    name = "ssh_tunnel"
    kinds = (FindingKind.REVERSE_SSH_TUNNEL, FindingKind.SSH_TUNNEL)
    live = LiveMode.OPEN_FLOWS  # a tunnel is reported while it lasts

    def __init__(self, ctx: DetectorContext | None = None, params: Params = Params()):
        self.params = params
        self._ctx = ctx
        self._capture = ""
        self._remembered: OrderedDict[int, _Remembered] = OrderedDict()  # by the flow's direction-free key hash

    def start(self, capture: str) -> None:
        self._capture = capture  # remembered connections stay: a capture rotated mid-connection goes on in the next

    def finish(self) -> BatchResult:
        return BatchResult()

    def inspect(self, view: FlowView) -> BatchResult:
        result = BatchResult()
        recs = view.records
        if not len(recs):
            return result
        ssh = view.tagged(AppTag.SSH)
        ws = view.tagged(AppTag.WEBSOCKET)
        tcp = recs["proto"] == 6
        carried = np.zeros(len(recs), bool)
        carriers = view.carriers
        if len(carriers.rows):
            carried[carriers.rows] = True
            for row in np.flatnonzero(view.inner_tagged(AppTag.SSH) & tcp).tolist():
                self._inspect_flow(view, row, False, result, carriers.get(row))
        for row in np.flatnonzero((ssh | ws) & tcp & ~carried).tolist():
            self._inspect_flow(view, row, bool(ssh[row]), result)
        # SSH inside TLS: only connections long enough to hold a handshake, a login and some use of it
        tls = view.tagged(AppTag.TLS) & tcp & ~ssh & ~carried & \
            (recs["orig_payload_pkts"] >= TLS_MIN_PACKETS) & (recs["resp_payload_pkts"] >= TLS_MIN_PACKETS)
        for row in np.flatnonzero(tls).tolist():
            self._inspect_tls(view, row, result)
        if self._remembered:
            flags = recs["flow_flags"]
            no_handshake = tcp & ~ssh & ~ws & ~carried & (((flags & int(FlowFlag.SAW_SYN)) == 0)
                                                          | ((flags & int(FlowFlag.CONTINUED)) != 0))
            rows = np.flatnonzero(no_handshake)
            for row, key in zip(rows.tolist(), recs["key_hash"][rows].tolist()):
                if key not in self._remembered:
                    continue
                prior = self._remembered.pop(key)
                if _endpoints(prior.flow) == _endpoints(recs[row]):  # the hash matched; so must the connection
                    self._inspect_continuation(view, row, prior, result)
        return result

    def _inspect_flow(self, view: FlowView, row: int, plain: bool, result: BatchResult,
                      carried: CarrierFlow | None = None) -> None:
        orig, resp = view.kept_stream(row, 0), view.kept_stream(row, 1)
        early, micros = view.early_sequence(row)
        sizes, times_s = early.tolist(), (micros / 1e6).tolist()
        carrier = None
        if carried is not None:
            orig, resp = carried.inner
            carrier = carried.carrier.text
            sizes, times_s = inner_sequence(sizes, times_s, carried.carrier.offset, carried.carrier.overhead)
        elif not plain:
            inner = websocket_streams(orig, resp)
            if inner is None:
                return
            orig, resp = inner
            carrier = "websocket"
        hs = parse_handshake(orig, resp)
        if hs is None:
            return
        rec = view.records[row]
        if carrier is not None and carried is None:
            # record sizes inside WebSocket frames the carrier layer could not read do not follow the SSH model;
            # the carrier is the evidence
            verdict = Verdict(SshUse.TUNNEL, 0.9, (f"SSH ({_banner(hs)}) carried inside WebSocket frames after an "
                                                    f"HTTP Upgrade: SSH hidden in web traffic (wstunnel-like)",),
                              TunnelUse.FORWARD)
        elif hs.client_is_orig and \
                int(rec["orig_payload_pkts"]) + int(rec["resp_payload_pkts"]) < self.params.min_packets:
            # a handshake and a login at most: nothing to classify beyond what the handshake showed
            verdict = Verdict(SshUse.UNDETERMINED, 0.0, ())
        else:
            verdict = None
        if verdict is None:
            conv = view.conversation(row)
            framed = carried is not None and carried.carrier.framed
            verdict = classify(hs, measure(hs, conv, rec, sizes, times_s, framed), self.params) if conv else \
                Verdict(SshUse.UNDETERMINED, 0.0, ())
        if carried is not None:
            target = carried.carrier.target_text
            hidden = (f"SSH ({_banner(hs)}) carried inside {carrier}" +
                      (f" to {target}" if target else "") + ": SSH hidden behind a proxy or relay")
            if verdict.use in (SshUse.REVERSE_TUNNEL, SshUse.TUNNEL):
                verdict = Verdict(verdict.use, verdict.score, verdict.evidence + (hidden,), verdict.tunnel_use)
            else:
                # SSH that a proxy hides is a tunnel out of the sandbox whatever it carries
                verdict = Verdict(SshUse.TUNNEL, 0.7, (hidden,) + verdict.evidence, TunnelUse.FORWARD)
        if int(rec["end_reason"]) in _CUT_SHORT:
            self._remember(rec, _Remembered(hs, verdict.use, float(rec["first_seen_ns"]) / 1e9, copy_record(rec)))
        login = post_auth(hs, sizes) if carrier is None or carried is not None else None
        self._report(rec, row, hs, verdict, result, login, carried)

    def _inspect_tls(self, view: FlowView, row: int, result: BatchResult) -> None:
        """A TLS connection whose record sizes, less the TLS overhead, show an SSH banner exchange, KEXINITs and a
        login (stunnel, socat OPENSSL, ncat --ssl as ssh's ProxyCommand): judged by its opening alone."""
        early, micros = view.early_sequence(row)
        found = ssh_inside_tls(early.tolist(), (micros / 1e6).tolist())
        if found is None:
            return
        overhead, op = found
        rec = view.records[row]
        names = view.server_names.get(row)
        traits = hello_traits(parse_client_hello(view.kept_stream(row, ORIG)), int(rec["resp_port"]),
                              view.ja4_of(row))
        hidden = (f"inside TLS ({traits}), records {overhead} B larger than what they carry show an SSH banner "
                  f"exchange, key exchange and a login under a common cipher suite: SSH hidden in TLS")
        server_opens = [o for o in op.opens if not o.by_client and o.kind == "tcp"]
        client_opens = [o for o in op.opens if o.by_client and o.kind == "tcp"]
        evidence = [hidden]
        if op.forward_request is not None or server_opens:
            use, score = SshUse.REVERSE_TUNNEL, 0.8
            if op.forward_request is not None:
                evidence.append(f"right after login the sandbox side sent a {op.forward_request} B request the "
                                f"size of a 'tcpip-forward' (ssh -R)")
            if server_opens:
                evidence.append(f"the remote side opened {len(server_opens)} channel(s) of a forwarded "
                                f"connection's size that the sandbox side confirmed within "
                                f"{int(1000 * SANDBOX_REPLY_S)} ms: connections from outside carried in")
                score = 0.9
            tunnel_use = TunnelUse.SERVICE if server_opens else TunnelUse.PARKED
        else:
            use, score, tunnel_use = SshUse.TUNNEL, 0.7, TunnelUse.FORWARD
            if client_opens and not op.session:
                evidence.append(f"with no shell session, the sandbox side opened {len(client_opens)} forwarded "
                                f"channel(s) that the server confirmed (-L, -D)")
                score = 0.8
        ssh_info = {"client_banner": None, "server_banner": None, "hassh": None, "hassh_server": None,
                    "cipher": None, "mac": None, "auth": "success", "client_software": None,
                    "server_software": None, "tunnel_use": str(tunnel_use), "implementation": None,
                    "use": str(tunnel_use), "sizes_predictable": True, "carrier": ["tls"],
                    "carrier_target": names[0] if names else None}
        result.annotate(row, app="ssh", ssh_use=str(use), ssh=ssh_info)
        kind = FindingKind.REVERSE_SSH_TUNNEL if use is SshUse.REVERSE_TUNNEL else FindingKind.SSH_TUNNEL
        result.findings.append(Finding(
            kind=kind, severity=Severity.HIGH if score >= 0.8 else Severity.MEDIUM, score=score,
            evidence=tuple(evidence), flow=copy_record(rec), capture=self._capture,
            details={"ssh": ssh_info, "ssh_use": str(use)}))

    def _expected(self, rec: np.void, use: str) -> str | None:
        """The allow entry that expects SSH tunnels of `use` to this flow's destination (by address, class or a
        name the sandbox's DNS bound to it), as its label; None when none does."""
        if self._ctx is None:
            return None
        match = allow_match(self._ctx.rules.current, self._ctx.binding, rec)
        entry = match.entry if match is not None else None
        return entry.label() if entry is not None and use in entry.ssh_tunnels else None

    def _inspect_continuation(self, view: FlowView, row: int, prior: _Remembered, result: BatchResult) -> None:
        rec = view.records[row]
        hs = prior.handshake
        conv = view.conversation(row)
        verdict = classify(hs, measure(hs, conv, rec, []), self.params) if conv is not None else \
            Verdict(SshUse.UNDETERMINED, 0.0, ())
        note = (f"this flow continues an SSH connection between the same endpoints first seen at "
                f"{prior.first_seen:.3f} (no new handshake), which was classified as {prior.use}")
        if prior.use in (SshUse.REVERSE_TUNNEL, SshUse.TUNNEL) and verdict.use not in (SshUse.REVERSE_TUNNEL,
                                                                                      SshUse.TUNNEL):
            verdict = Verdict(prior.use, 0.8, ())
        verdict = Verdict(verdict.use, verdict.score, (note,) + verdict.evidence)
        if int(rec["end_reason"]) in _CUT_SHORT:
            self._remember(rec, _Remembered(hs, verdict.use, prior.first_seen, prior.flow))
        self._report(rec, row, hs, verdict, result)

    def _remember(self, rec: np.void, item: _Remembered) -> None:
        self._remembered[int(rec["key_hash"])] = item
        while len(self._remembered) > self.params.remembered_connections:
            self._remembered.popitem(last=False)

    def _report(self, rec: np.void, row: int, hs: SshHandshake, verdict: Verdict, result: BatchResult,
                login: PostAuth | None = None, carried: CarrierFlow | None = None) -> None:
        auth = None if login is None or login.auth_success is None else (
            "success" if login.auth_success else "failure")
        ssh_info = {
            "client_banner": hs.client.banner, "server_banner": hs.server.banner,
            "hassh": hs.hassh(), "hassh_server": hs.hassh_server(), "cipher": hs.cipher, "mac": hs.mac,
            "auth": auth,  # inferred from record sizes (Zeek's method, detection-science 1.5); null when unknown
            "client_software": software(hs.client.banner), "server_software": software(hs.server.banner),
            "tunnel_use": None if verdict.tunnel_use is None else str(verdict.tunnel_use),
            # the program that opened the connection, and what it is used for (issue 13 item 5)
            "implementation": software(hs.client.banner),
            "use": str(verdict.tunnel_use or verdict.use),
            # compression (ssh -C, dropbear's zlib) hides every size after the login: only the shape can be read
            "sizes_predictable": hs.compression in (None, "none") and hs.model is not None,
        }
        if carried is not None:
            ssh_info["carrier"] = list(carried.chain)
            ssh_info["carrier_target"] = carried.carrier.target_text
        result.annotate(row, app="ssh", ssh_use=str(verdict.use), ssh=ssh_info)
        if verdict.use not in (SshUse.REVERSE_TUNNEL, SshUse.TUNNEL):
            return
        expected = self._expected(rec, "reverse" if verdict.use is SshUse.REVERSE_TUNNEL else "forward")
        if expected:
            result.annotate(row, ssh_tunnel_expected=expected)  # the rules expect it: no finding
            return
        score = verdict.score
        evidence = list(verdict.evidence)
        port = int(rec["resp_port"])
        if port != 22:
            score = min(1.0, score + self.params.nonstandard_port_bonus)
            evidence.append(f"SSH runs on port {port}, not 22")
        kind = FindingKind.REVERSE_SSH_TUNNEL if verdict.use is SshUse.REVERSE_TUNNEL else FindingKind.SSH_TUNNEL
        result.findings.append(Finding(
            kind=kind, severity=_severity(verdict.use, score, len(verdict.evidence)), score=round(score, 3),
            evidence=tuple(evidence), flow=copy_record(rec), capture=self._capture,
            details={"ssh": ssh_info, "ssh_use": str(verdict.use)}))


def inner_sequence(sizes: list[int], times_s: list[float], offset: tuple[int, int],
                   overhead: tuple[int, int]) -> tuple[list[int], list[float]]:
    """The early payload sequence (signed +orig / -resp) of what a carrier carries: the packets of the carrier's
    own preamble (the first `offset` bytes of each direction) dropped or cut, and each later packet's framing
    (`overhead` per direction, a WebSocket frame header: RFC 6455 5.2, 2 more bytes from 126-byte payloads) taken
    off."""
    seen = [0, 0]
    out_sizes, out_times = [], []
    for signed, t in zip(sizes, times_s):
        d = 0 if signed > 0 else 1
        size = abs(signed)
        skip = max(0, min(size, offset[d] - seen[d]))
        seen[d] += size
        size -= skip
        if size and overhead[d]:
            size -= overhead[d] + (2 if size - overhead[d] > 125 else 0)
        if size > 0:
            out_sizes.append(size if d == 0 else -size)
            out_times.append(t)
    return out_sizes, out_times


def _endpoints(rec: np.void) -> tuple:
    """Direction-free identity of a connection (the 5-tuple)."""
    a = (int(rec["orig_hi"]), int(rec["orig_lo"]), int(rec["orig_port"]))
    b = (int(rec["resp_hi"]), int(rec["resp_lo"]), int(rec["resp_port"]))
    return (int(rec["proto"]),) + (a + b if a <= b else b + a)


# Software names in identification strings (RFC 4253 4.2: SSH-protoversion-softwareversion SP comments), by the
# prefix each implementation sends (carriers-and-implementations 1.1)
SOFTWARE_PREFIXES = (("OpenSSH_", "OpenSSH"), ("dropbear_", "Dropbear"), ("dropbear", "Dropbear"),
                     ("PuTTY", "PuTTY"), ("paramiko_", "Paramiko"), ("AsyncSSH_", "AsyncSSH"),
                     ("libssh_", "libssh"), ("libssh2_", "libssh2"), ("Go", "Go x/crypto/ssh"),
                     ("ssh2js", "ssh2 (Node.js)"), ("JSCH", "JSch"), ("WinSCP", "WinSCP"), ("Cisco", "Cisco"),
                     ("RomSShell", "RomSShell"), ("ROSSSH", "MikroTik"), ("Sun_SSH", "Sun SSH"))


@functools.lru_cache(maxsize=4096)
def software(banner: str | None) -> str | None:
    """The implementation an SSH identification string names ("OpenSSH 9.2p1"), or its raw software field (once per
    distinct banner: a fleet sends the same few again and again)."""
    if not banner or not banner.startswith("SSH-"):
        return None
    field = banner.split("-", 2)[2] if banner.count("-") >= 2 else ""
    field = field.split(" ", 1)[0]
    for prefix, name in SOFTWARE_PREFIXES:
        if field.startswith(prefix):
            version = field[len(prefix):].lstrip("_-") if prefix.endswith("_") or prefix in ("Go",) else \
                field[len(prefix):].lstrip("_-")
            return f"{name} {version}".strip() if version else name
    return field[:64] or None


def _banner(hs: SshHandshake) -> str:
    return hs.client.banner or hs.server.banner or "no banner"
