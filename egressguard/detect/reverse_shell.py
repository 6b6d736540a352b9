"""Reverse shells: a connection the sandbox opened over which the remote side leads and the sandbox's shell answers.

Two ways of knowing. In plaintext the kept bytes say it: command lines (or keystrokes) from the remote side, and
from the sandbox side prompts, job-control warnings, terminal noise, the echo of those commands or their typical
output. Wrapped or encrypted (TLS, WebSocket, CONNECT/SOCKS) only the conversation's shape is left: after each pause
the remote side speaks first with a small message, the sandbox answers at once with more, at a person's pace
(keystrokes 50-700 ms apart, commands seconds apart); that is reported with a lower severity that says so.
SSH is the SSH detector's; plain HTTP request/response flows are never judged by shape (long polls answer late).
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from statistics import median

import numpy as np

from egressguard.detect.base import BatchResult, DetectorContext, LiveMode, noisy_or
from egressguard.flows.view import FlowView
from egressguard.payload.tls import hello_traits, parse_client_hello
from egressguard.payload.websocket import websocket_streams
from egressguard.schema import AppTag, Finding, FindingKind, FlowFlag, Severity, copy_record

ORIG, RESP = 0, 1
WRAPPED_TAGS = AppTag.TLS | AppTag.WEBSOCKET | AppTag.HTTP_CONNECT | AppTag.SOCKS4 | AppTag.SOCKS5 | \
    AppTag.PROXY_V1 | AppTag.PROXY_V2


@dataclass(frozen=True)
class Params:
    """Thresholds, each with where it comes from."""

    min_payload_pkts: int = 6  # a prompt, a command and its answer at the least
    min_remote_pkts: int = 2  # the remote side sent something beyond a greeting
    min_duration_s: float = 1.0  # a person needs a second to type the first command
    max_remote_mean: float = 600.0  # mean remote payload packet: commands and keys are short (downloads are not)
    pause_s: float = 0.5  # silence that ends a burst: above inter-keystroke time (80-260 ms typing, lab_shells.py)
    answer_window_s: float = 1.0  # the shell answers a command within this (output of id/ls/uname is immediate)
    min_plain_weight: float = 0.8  # noisy-OR of the sandbox side's shell markers needed in plaintext
    min_led: int = 3  # shape: remote-led bursts (commands) needed
    led_share: float = 0.75  # ... and their share of all bursts after the setup
    answered_share: float = 0.75  # ... of which this share the sandbox answered
    max_ask_bytes: int = 300  # median remote message of a burst: a command line or a few keys (plus wrapping)
    answer_ratio: float = 1.5  # median sandbox answer over median remote message: output is larger than input
    min_command_cv: float = 0.15  # remote-led bursts at metronome regularity are a machine (pings), not a person
    min_keystrokes: int = 8  # shape: single small remote packets echoed at once, for a high severity
    keystroke_gap_s: tuple[float, float] = (0.04, 0.7)  # typing cadence (Dhakal et al. 2018: ~120-240 ms mean IKI)
    echo_within_s: float = 0.1  # a pty's echo follows the key at once
    min_typed_keys: int = 4  # plaintext: echoed remote keys that stand in for a complete command line


# ------------------------------------------------------------------------------------------- plaintext recogniser
# First words of what an operator types first in a reverse shell (HackTricks/PayloadsAllTheThings "full TTY" and
# enumeration cheat sheets).
COMMANDS = frozenset("""
id whoami uname ls ll cat pwd hostname ps cd python python2 python3 perl ruby php export wget curl echo ifconfig ip
netstat ss env printenv sudo su find w who uptime history stty script nc ncat bash sh zsh dash chmod which grep head
tail df mount crontab sleep reset clear exit top kill getent set unset file touch rm mkdir cp mv dmesg lsb_release
last lsof arp route iptables systemctl service docker kubectl tar base64 xxd less more vi vim nano awk sed sort
dir type ipconfig systeminfo net tasklist powershell cmd whoami.exe hostname.exe date arch groups lscpu free nproc
locale alias compgen getcap tty stat
""".split())
_LINE_SPLIT = re.compile(rb"\r\n|\r|\n")
_ANSI = re.compile(rb"\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)|\x1b\[[0-9;?]*[ -/]*[@-~]|\x1b[()][0-9A-Za-z]|\x1b[=>]")
_OSC_TITLE = re.compile(rb"\x1b\]0;[^\x07]{0,200}\x07")
_BRACKETED_PASTE = b"\x1b[?2004h"
_USER_PROMPT = re.compile(rb"(?:^|[\r\n])([\w.-]{1,32}@[\w.-]{1,64}[: ][^\r\n$#%]{0,120}[#$%] ?)(?=$|[\r\n]|[ -~])")
_WINDOWS_PROMPT = re.compile(rb"(?:^|[\r\n])((?:PS )?[A-Z]:\\[^\r\n<>]{0,120}> ?)$")
_SHELL_PROMPT = re.compile(rb"(?:^|[\r\n])((?:ba|z|da|k)?sh(?:-\d+(?:\.\d+)*)?[#$] )")
_BARE_PROMPT = re.compile(rb"(?:^|\n)((?:~|/[\w/.-]{0,100})? ?[#$] )$")
_JOB_CONTROL = (b"no job control in this shell", b"can't access tty", b"cannot set terminal process group",
                b"job control turned off")
_OUTPUTS = (  # output of the usual first commands
    (re.compile(rb"uid=\d+\([^)\s]{1,32}\) gid=\d+\("), "`id` output"),
    (re.compile(rb"Linux \S{1,64} \d+\.\d+\S* #\d"), "`uname -a` output"),
    (re.compile(rb"(?:^|\n)total \d+\r?\n[-dlcbsp][rwxsStT-]{9}"), "`ls -l` output"),
    (re.compile(rb"PRETTY_NAME=\""), "/etc/os-release"),
    (re.compile(rb"root:x:0:0:"), "/etc/passwd"),
    (re.compile(rb"(?:^|\n)USER {1,8}PID %CPU"), "`ps aux` output"),
)


@dataclass(frozen=True)
class ShellText:
    """What the plaintext recogniser found: commands from the remote side and shell markers from the sandbox side."""

    commands: tuple[str, ...]
    markers: tuple[tuple[float, str], ...]
    first_prompt: str | None

    @property
    def weight(self) -> float:
        return noisy_or(w for w, _ in self.markers)


_TYPED_BYTES = bytes(range(0x20, 0x7F)) + b"\x7f\x08\t"  # what a typed line may hold (printable, rub-outs)


def _edit(line: bytes) -> bytes:
    """A typed line after its DEL/backspace rub-outs."""
    if b"\x7f" not in line and b"\x08" not in line:
        return line
    out = bytearray()
    for b in line:
        if b in (0x7F, 0x08):
            if out:
                out.pop()
        else:
            out.append(b)
    return bytes(out)


def remote_commands(remote: bytes) -> list[str]:
    """Shell command lines in what the remote side sent: whole lines, or keys sent one by one and joined, whose
    first word (after `sudo`, `VAR=value`) is a command an operator types; only terminated lines count."""
    found = []
    pieces = _LINE_SPLIT.split(remote)
    for raw in pieces[:-1]:  # the last piece has no line end yet
        # no typed command line is this long, even with its rub-outs, or holds other control or non-ASCII bytes
        if len(raw) > 600 or raw.translate(None, _TYPED_BYTES):
            continue
        line = _edit(raw).strip()
        if not line or len(line) > 300 or any(b < 0x20 or b > 0x7E for b in line):
            continue
        words = line.decode("ascii").split()
        while len(words) > 1 and ((words[0] == "sudo" and not words[1].startswith("-"))
                                  or re.fullmatch(r"[A-Za-z_]\w*=\S*", words[0])):
            words = words[1:]
        if words:
            words[0] = re.split(r"[;|&<>]", words[0])[0]  # "id;uname -a"
        if words and (words[0] in COMMANDS or re.fullmatch(r"(?:/|\./)[\w./-]{1,100}", words[0])):
            found.append(line.decode("ascii"))
    return found


def shell_markers(sandbox: bytes, commands: list[str]) -> tuple[list[tuple[float, str]], str | None]:
    """Signs in the sandbox side's bytes that a shell talks: (weight, sentence) each, and the first prompt seen."""
    markers: list[tuple[float, str]] = []
    for text in _JOB_CONTROL:
        if text in sandbox:
            markers.append((0.9, f"the sandbox side printed the shell's job-control warning {_quote(text)}"))
            break
    plain = _ANSI.sub(b"", sandbox)
    prompt = None
    for pattern, weight, what in ((_USER_PROMPT, 0.85, "a user@host prompt"), (_SHELL_PROMPT, 0.8, "a shell prompt"),
                                  (_WINDOWS_PROMPT, 0.8, "a Windows command prompt"),
                                  (_BARE_PROMPT, 0.6, "a bare prompt")):
        m = pattern.search(plain)
        if m:
            prompt = m.group(1)
            markers.append((weight, f"the sandbox side sent {what}: {_quote(prompt)}"))
            break
    noise = [name for name, hit in (("an xterm title sequence", _OSC_TITLE.search(sandbox) is not None),
                                    ("bracketed-paste mode", _BRACKETED_PASTE in sandbox)) if hit]
    if noise:
        markers.append((0.4, f"the sandbox side sent terminal control codes of an interactive shell "
                             f"({' and '.join(noise)})"))
    outputs = [what for pattern, what in _OUTPUTS if pattern.search(plain)]
    if outputs:
        markers.append((0.8 if len(outputs) > 1 else 0.7, f"the sandbox side answered with {', '.join(outputs)}"))
    echoed = [c for c in commands if len(c) >= 2 and c.encode() in plain]
    if echoed:
        markers.append((0.6, f"the sandbox side echoed the remote command line {_quote(echoed[0].encode())} "
                             f"(a terminal)"))
    return markers, None if prompt is None else _quote(prompt)


def recognise(sandbox: bytes, remote: bytes, min_weight: float = Params.min_plain_weight,
              typed: bool = False) -> ShellText | None:
    """A shell in plaintext: command lines from the remote side answered by shell markers from the sandbox side.
    With `typed` (the shape shows keys from the remote side echoed one by one) the markers alone suffice: a long
    first command typed key by key may not have reached its Enter within the kept bytes."""
    commands = remote_commands(remote)
    if not commands and not typed:
        return None
    markers, prompt = shell_markers(sandbox, commands)
    found = ShellText(tuple(commands), tuple(markers), prompt)
    return found if found.weight >= min_weight else None


# ---- CONNECT preamble the carrier layer could not read whole (a reply cut off in the kept bytes)
_CONNECT_REQUEST = re.compile(rb"CONNECT [^\r\n ]{1,300} HTTP/1\.[01]\r?\n(?:[^\r\n]{0,1000}\r?\n){0,40}?\r?\n")
_CONNECT_REPLY = re.compile(rb"HTTP/1\.[01] 200[^\r\n]{0,200}\r?\n(?:[^\r\n]{0,1000}\r?\n){0,40}?\r?\n")


def strip_connect(orig: bytes, resp: bytes) -> tuple[bytes, bytes, str] | None:
    """(orig, resp, target) after an HTTP CONNECT request and its 200 reply, or None when the flow is not one; the
    fallback for flows payload/carriers.py did not peel."""
    req = _CONNECT_REQUEST.match(orig)
    rep = _CONNECT_REPLY.match(resp)
    if req is None or rep is None:
        return None
    target = orig[8:orig.index(b" ", 8)].decode("latin-1")
    return orig[req.end():], resp[rep.end():], target


# ---------------------------------------------------------------------------------------------- conversation shape
@dataclass
class Shape:
    """A conversation cut into bursts at pauses, from the early payload sequence (after the first, setup burst)."""

    led_remote: int = 0
    led_sandbox: int = 0
    answered: int = 0
    asks: list[int] = field(default_factory=list)  # remote bytes of each remote-led burst
    answers: list[int] = field(default_factory=list)  # sandbox bytes of each answered remote-led burst
    lead_gaps: list[float] = field(default_factory=list)  # seconds between starts of remote-led bursts
    keystrokes: int = 0
    key_gaps: list[float] = field(default_factory=list)
    first_lead_s: float | None = None  # when the remote side first led, seconds after the flow began

    def gap_cv(self) -> float:
        if len(self.lead_gaps) < 3:
            return float("inf")
        mean = float(np.mean(self.lead_gaps))
        return float(np.std(self.lead_gaps)) / mean if mean > 0 else 0.0


ASK_KEY_MAX = 64  # a keystroke in a record or frame: 1 byte plus TLS 1.3 (22 B) or WebSocket (2-14 B) wrapping


def measure_shape(sizes: np.ndarray, times_us: np.ndarray, p: Params = Params()) -> Shape:
    """Who leads each burst, what the remote side asks and the sandbox answers, and the typing cadence (plain
    Python over the at most 64 early packets: numpy's per-call cost is larger than the work here)."""
    shape = Shape()
    n = len(sizes)
    if n < 2:
        return shape
    sizes = [int(x) for x in sizes.tolist()] if hasattr(sizes, "tolist") else list(sizes)
    t = [x / 1e6 for x in (times_us.tolist() if hasattr(times_us, "tolist") else times_us)]
    cuts = [i + 1 for i in range(n - 1) if t[i + 1] - t[i] >= p.pause_s]
    bounds = list(zip([0] + cuts, cuts + [n]))
    if t[0] < p.pause_s:
        bounds = bounds[1:]  # the first burst is the setup (banner, prompt, TLS or proxy handshake)
    last_lead = None
    for lo, hi in bounds:
        s = sizes[lo:hi]
        if s[0] > 0:
            shape.led_sandbox += 1
            continue
        shape.led_remote += 1
        if shape.first_lead_s is None:
            shape.first_lead_s = t[lo]
        if last_lead is not None:
            shape.lead_gaps.append(t[lo] - last_lead)
        last_lead = t[lo]
        shape.asks.append(-sum(x for x in s if x < 0))
        first_answer = next((k for k, x in enumerate(s) if x > 0), None)
        if first_answer is not None and t[lo + first_answer] - t[lo] <= p.answer_window_s:
            shape.answered += 1
            shape.answers.append(sum(x for x in s if x > 0))
        # keystrokes: a small remote packet answered by the sandbox within echo_within_s
        prev_key = None
        for i in range(lo, hi - 1):
            if -ASK_KEY_MAX <= sizes[i] < 0 and sizes[i + 1] > 0 and t[i + 1] - t[i] <= p.echo_within_s:
                shape.keystrokes += 1
                if prev_key is not None and p.keystroke_gap_s[0] <= t[i] - prev_key <= p.keystroke_gap_s[1]:
                    shape.key_gaps.append(t[i] - prev_key)
                prev_key = t[i]
    return shape



def shape_verdict(shape: Shape, p: Params = Params()) -> tuple[float, list[str]] | None:
    """(score, evidence) when the shape is that of someone outside driving a shell, else None."""
    led = shape.led_remote
    total = led + shape.led_sandbox
    if led < p.min_led or led < p.led_share * total or shape.answered < p.answered_share * led:
        return None
    ask, answer = median(shape.asks), median(shape.answers) if shape.answers else 0
    if ask > p.max_ask_bytes or answer < p.answer_ratio * ask:
        return None
    if shape.gap_cv() < p.min_command_cv:
        return None
    evidence = [f"the remote side spoke first after {led} of {total} pauses, and the sandbox side answered "
                f"{shape.answered} of them within {p.answer_window_s:g} s",
                f"median remote message {ask:g} B, median sandbox answer {answer:g} B"]
    if shape.lead_gaps:
        evidence.append(f"median {median(shape.lead_gaps):.1f} s between remote messages (spacing CV "
                        f"{min(shape.gap_cv(), 99):.2f}): a person's pace, not a timer")
    score = 0.6
    if shape.keystrokes >= p.min_keystrokes and shape.key_gaps:
        evidence.append(f"{shape.keystrokes} single keystrokes from the remote side, each echoed by the sandbox "
                        f"side at once, median {1000 * median(shape.key_gaps):.0f} ms apart (typing)")
        score = 0.85
    return score, evidence


# --------------------------------------------------------------------------------------------------- the detector
def _quote(raw: bytes, limit: int = 80) -> str:
    """Wire bytes as an escaped, cut string for evidence (repr-style escaping, never raw control bytes)."""
    text = repr(raw[:limit])[2:-1]
    return text[:limit] + ("..." if len(raw) > limit or len(text) > limit else "")


class ReverseShellDetector:
    """Reports `reverse_shell`: a sandbox-opened TCP connection whose remote side drives a shell in the sandbox."""

    name = "reverse_shell"
    kinds = (FindingKind.REVERSE_SHELL,)
    live = LiveMode.OPEN_FLOWS  # reported while the shell is open, within a round of the first commands

    def __init__(self, ctx: DetectorContext | None = None, params: Params = Params()):
        self.params = params
        self._capture = ""

    def start(self, capture: str) -> None:
        self._capture = capture

    def finish(self) -> BatchResult:
        return BatchResult()

    def candidates(self, view: FlowView) -> np.ndarray:
        """Rows worth a look, over the whole batch at once: TCP opened by a SYN from the originator (the sandbox
        side), a back-and-forth of some packets with the remote side speaking too in short messages, over at least a
        second, and not SSH (the SSH detector's)."""
        r = view.records
        p = self.params
        if not len(r):
            return np.zeros(0, np.int64)
        pkts = r["orig_payload_pkts"].astype(np.int64) + r["resp_payload_pkts"]
        mask = (r["proto"] == 6) & (r["slot"] >= 0) & ((r["flow_flags"] & int(FlowFlag.SAW_SYN)) != 0)
        mask &= (pkts >= p.min_payload_pkts) & (r["resp_payload_pkts"] >= p.min_remote_pkts)
        mask &= r["orig_payload_pkts"] >= 1
        mask &= (r["last_seen_ns"] - r["first_seen_ns"]) >= int(p.min_duration_s * 1e9)
        mask &= (r["burst_count"] >= 2) & (r["resp_payload_mean"] <= p.max_remote_mean)
        if mask.any():
            mask &= ~view.tagged(AppTag.SSH)
        return np.flatnonzero(mask)

    def inspect(self, view: FlowView) -> BatchResult:
        result = BatchResult()
        rows = self.candidates(view)
        if not len(rows):
            return result
        app = view.app
        for row in rows.tolist():
            finding = self._judge(view, row, int(app[row]))
            if finding is not None:
                result.findings.append(finding)
        return result

    def _judge(self, view: FlowView, row: int, tags: int) -> Finding | None:
        p = self.params
        orig, resp = view.kept_stream(row, ORIG), view.kept_stream(row, RESP)
        carrier = tls_client = None
        carried = view.carriers.get(row)
        if carried is not None:  # CONNECT, SOCKS, PROXY protocol, WebSocket: peeled by payload/carriers.py
            orig, resp = carried.inner
            target = carried.carrier.target_text
            carrier = carried.carrier.text + (f" to {_quote(target.encode())}" if target else "")
        elif tags & AppTag.HTTP_CONNECT:
            peeled = strip_connect(orig, resp)
            if peeled is not None:
                orig, resp, target = peeled
                carrier = f"http_connect to {_quote(target.encode())}"
        elif tags & AppTag.WEBSOCKET:
            inner = websocket_streams(orig, resp)
            carrier = "websocket"
            if inner is not None:
                orig, resp = inner
        elif tags & AppTag.TLS:
            carrier = "tls"
            tls_client = hello_traits(parse_client_hello(orig), int(view.records[row]["resp_port"]), view.ja4_of(row))
        elif tags & (AppTag.SOCKS4 | AppTag.SOCKS5):
            carrier = "socks"
        elif tags & (AppTag.PROXY_V1 | AppTag.PROXY_V2):
            carrier = "proxy_protocol"
        sizes, times = view.early_sequence(row)
        shape = measure_shape(sizes, times, p)
        typed = shape.keystrokes >= p.min_typed_keys
        text = None if tags & AppTag.TLS else recognise(orig, resp, p.min_plain_weight, typed)
        rec = view.records[row]
        details = {"carrier": carrier, "tls_client": tls_client, "remote_led_bursts": shape.led_remote, "sandbox_led_bursts": shape.led_sandbox,
                   "median_remote_bytes": median(shape.asks) if shape.asks else None,
                   "median_sandbox_bytes": median(shape.answers) if shape.answers else None,
                   "median_command_gap_s": round(median(shape.lead_gaps), 3) if shape.lead_gaps else None,
                   "keystrokes": shape.keystrokes,
                   "median_keystroke_gap_ms": round(1000 * median(shape.key_gaps)) if shape.key_gaps else None}
        if text is not None:
            if shape.led_remote < 1:
                return None  # shell bytes, but the remote side never spoke first after a pause
            first = _quote(text.commands[0].encode()) if text.commands else None
            evidence = [f"the remote side sent shell command lines, first {first} ({len(text.commands)} in the "
                        f"kept bytes)" if first else f"the remote side typed {shape.keystrokes} keys, each echoed "
                                                       f"by the sandbox side at once"]
            evidence += [s for _, s in text.markers]
            evidence.append(f"the remote side spoke first after {shape.led_remote} of "
                            f"{shape.led_remote + shape.led_sandbox} pauses"
                            + (f", median {median(shape.lead_gaps):.1f} s apart" if shape.lead_gaps else ""))
            score = noisy_or([0.7, text.weight])
            severity = Severity.HIGH
            details.update(evidence="plaintext", first_command=first,
                           first_prompt=text.first_prompt)
        else:
            readable = not tags & WRAPPED_TAGS and _readable(orig, resp)
            if readable and _SERVER_PROTOCOL.match(resp):
                return None  # a server protocol (SMTP/FTP/POP/IMAP codes, IRC, Redis, HTTP): content outranks shape
            if tags & (AppTag.HTTP_REQUEST | AppTag.HTTP_RESPONSE) and not tags & (AppTag.WEBSOCKET |
                                                                                   AppTag.HTTP_CONNECT):
                return None  # plain HTTP: long polls answer after a wait without anyone typing
            conv = view.conversation(row)
            if conv is not None and sum(conv.nested_handshakes):
                return None  # a handshake inside the connection: a tunnelled protocol (SSH), not a shell
            verdict = shape_verdict(shape, p)
            if verdict is None:
                return None
            score, evidence = verdict
            content = f"wrapped ({carrier})" if carrier else "readable but not recognised as a shell" if readable \
                else "not readable"
            evidence.append(f"the content is {content}: the conversation's shape and timing alone are the evidence")
            severity = Severity.HIGH if score >= 0.85 else Severity.MEDIUM
            details.update(evidence="shape", first_command=None, first_prompt=None)
        if carrier:
            evidence.append(f"carrier: {carrier}" + (f" ({tls_client})" if tls_client else ""))
        return Finding(kind=FindingKind.REVERSE_SHELL, severity=severity, score=round(score, 3),
                       evidence=tuple(evidence), flow=copy_record(rec), capture=self._capture,
                       details={"reverse_shell": details})


# What servers of line protocols send first: reply codes (SMTP/FTP/NNTP "220 ", POP "+OK", IMAP "* OK"), IRC
# prefixes, Redis RESP types, HTTP status lines, a JSON/XML document (RFC 5321 4.2, RFC 959 4.2, RFC 1939 3,
# RFC 9051 7.1, RFC 2812 2.3.1, redis.io RESP, RFC 9112 4).
_SERVER_PROTOCOL = re.compile(rb"\s*(?:\d{3}[ -]|\+OK|-ERR|\* (?:OK|PREAUTH|BYE)|:\S+ |NOTICE |PING |[*$+:-]-?\d*\r\n|"
                              rb"HTTP/\d|[{\[<])")


def _readable(orig: bytes, resp: bytes) -> bool:
    """Both directions are mostly printable text (a line protocol the recogniser could read)."""
    data = orig + resp
    if len(data) < 16:
        return False
    arr = np.frombuffer(data, np.uint8)
    text = ((arr >= 0x20) & (arr < 0x7F)) | (arr == 0x0A) | (arr == 0x0D) | (arr == 0x09) | (arr == 0x1B)
    return float(text.mean()) >= 0.9


__all__ = ["Params", "ReverseShellDetector", "ShellText", "Shape", "measure_shape", "recognise",
           "remote_commands", "shape_verdict", "shell_markers", "strip_connect"]
