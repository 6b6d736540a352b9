"""Mining-pool protocols from a flow's kept bytes: Stratum v1, CryptoNote/xmrig, Ethereum stratum, getwork over HTTP,
and the Stratum V2 Noise handshake by its sizes.

The JSON is parsed for real (detection-science 2.1-2.5): newline-delimited JSON-RPC, several objects per segment, a
line split across segments (the kept stream is the segments concatenated), any whitespace, objects back to back
without a newline, JSON-RPC batches, and a last line cut off by the kept-bytes budget (its members that arrived whole
are recovered). A flow counts as mining only when a message carries a method or answer that only mining protocols
use (mining.*, a CryptoNote login with an agent, a job with a blob, a share with nonce and result, eth_submitLogin /
eth_getWork / eth_submitWork, EthereumStratum/..., getwork, the X-Mining-Extensions / X-Stratum headers); other
JSON-RPC (a `login` without an agent, `echo`, zabbix.status ...) is not.

Plain Python on a few kilobytes per candidate flow; any input gives a result or None, never an exception. Strings
from the wire are returned as received (bounded); escaping for display is the renderer's job.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field

MAX_STREAM = 65536  # bytes of one direction looked at (the flow table keeps at most this much)
MAX_MESSAGES = 64  # JSON messages read per direction
MAX_HTTP_MESSAGES = 16
MAX_TEXT = 64  # login, agent, pool host ... are cut to this many characters
MAX_WORKER = 32
MAX_METHODS = 24  # distinct methods reported per flow
MAX_DEPTH = 64  # nesting followed when recovering a cut-off last object
# Malformed JSON lines retried before a direction is given up: a line that opens a value only the end of the input could
# close (strict=False lets strings run over newlines) makes each retry rescan the rest, so unbounded retries cost
# O(n^2) (0.3 s for 64 KiB of '["' lines). A mining conversation never needs this many junk lines first.
MAX_JUNK_LINES = 64

def _int(text: str) -> int | None:
    """JSON integers; absurdly long ones (which Python refuses to convert) become None instead of failing the line."""
    return int(text) if len(text) <= 64 else None


# strict=False: control characters inside strings do not stop the parse
_DECODER = json.JSONDecoder(strict=False, parse_int=_int)
_WS = " \t\r\n"

# Methods only mining protocols use, by the side that sends them (2.1 slush/NOMP, 2.2 xmrig, 2.3 ethminer/NiceHash).
STRATUM_MINER_METHODS = frozenset({
    "mining.subscribe", "mining.authorize", "mining.configure", "mining.submit", "mining.extranonce.subscribe",
    "mining.suggest_difficulty", "mining.suggest_target", "mining.get_transactions", "mining.hello",
    "mining.hashrate", "mining.noop",
})
STRATUM_POOL_METHODS = frozenset({
    "mining.notify", "mining.set_difficulty", "mining.set_target", "mining.set_extranonce", "mining.set",
    "mining.bye",
})
STRATUM_CLIENT_METHODS = frozenset({"client.reconnect", "client.get_version", "client.show_message"})  # supporting only
ETH_METHODS = frozenset({"eth_submitLogin", "eth_getWork", "eth_submitWork", "eth_submitHashrate"})
GETWORK_METHODS = frozenset({"getwork", "getblocktemplate"})  # Bitcoin getwork (ET 2016758 context), ET 2017878
CRYPTONOTE_METHODS = frozenset({"login", "job", "submit", "keepalived", "getjob"})
MINER_SIDE = STRATUM_MINER_METHODS | ETH_METHODS | GETWORK_METHODS | {"login", "submit", "keepalived", "getjob",
                                                                       "submitblock"}
POOL_SIDE = STRATUM_POOL_METHODS | STRATUM_CLIENT_METHODS | {"job"}
HTTP_MINING_HEADERS = ("x-mining-extensions", "x-stratum")  # ET 2016758, 2017960
HTTP_METHODS = (b"POST ", b"GET ", b"PUT ", b"HEAD ", b"OPTIONS ", b"DELETE ", b"PATCH ")


class Family:
    """Protocol family names (the `protocol` field of a finding's `mining` object)."""

    STRATUM_V1 = "stratum_v1"
    ETHEREUM_STRATUM = "ethereum_stratum"  # EthereumStratum/1.0.0 (NiceHash) and 2.0.0 (mining.hello)
    ETHEREUM_PROXY = "ethereum_proxy"  # ETHPROXY / stratum1: eth_submitLogin, eth_getWork ... over TCP lines
    CRYPTONOTE = "cryptonote"  # xmrig / xmr-stak login, job, submit, keepalived
    GETWORK_HTTP = "getwork_http"  # getwork, eth_getWork or getblocktemplate in HTTP POST bodies; mining headers
    STRATUM_V2 = "stratum_v2"
    COINHIVE = "coinhive"  # CoinHive-style WebSocket messages {"type": auth|submit / authed|job|hash_accepted}


# ------------------------------------------------------------------------------------------------ JSON messages
@dataclass
class JsonStream:
    """The JSON values read from one direction's kept bytes."""

    messages: list = field(default_factory=list)  # top-level objects (batch arrays are flattened)
    other_lines: int = 0  # lines that were not JSON
    truncated: bool = False  # the last object was cut off (its complete members were kept)


def _text(stream: bytes) -> str:
    return stream[:MAX_STREAM].decode("utf-8", "replace")


def json_messages(stream: bytes | str, limit: int = MAX_MESSAGES) -> JsonStream:
    """Every JSON object in newline-delimited (or back-to-back) JSON text, tolerating junk and a cut-off end."""
    text = _text(stream) if isinstance(stream, (bytes, bytearray)) else stream[:MAX_STREAM]
    out = JsonStream()
    pos, n = 0, len(text)
    failures = 0
    while pos < n and len(out.messages) < limit and failures < MAX_JUNK_LINES:
        while pos < n and text[pos] in _WS:
            pos += 1
        if pos >= n:
            break
        if text[pos] not in "{[":
            out.other_lines += 1
            nl = text.find("\n", pos)
            if nl < 0:
                break
            pos = nl + 1
            continue
        try:
            value, end = _DECODER.raw_decode(text, pos)
        except (ValueError, RecursionError):  # JSONDecodeError is a ValueError; so are over-long integers
            nl = text.find("\n", pos)
            if nl >= 0:  # a malformed line: skip it
                failures += 1
                out.other_lines += 1
                pos = nl + 1
                continue
            value = _recover_prefix(text[pos:])  # the last line was cut off by the kept-bytes budget
            if value is not None:
                out.truncated = True
                _add(out.messages, value, limit)
            break
        _add(out.messages, value, limit)
        pos = end
    return out


def _add(messages: list, value, limit: int) -> None:
    """Keep the objects of a value (an empty {} says nothing: a random key that starts with "{" is followed by "}" once in 256)."""
    if isinstance(value, dict) and value:
        messages.append(value)
    elif isinstance(value, list):  # a JSON-RPC batch
        for item in value[:limit]:
            if isinstance(item, dict) and item and len(messages) < limit:
                messages.append(item)


_CLOSE = {"{": "}", "[": "]"}
_BARE = frozenset(":0123456789+-.eEtruefalsn")  # what JSON allows outside strings besides brackets and commas


def _recover_prefix(text: str):
    """The members of a cut-off JSON object (or array) that arrived whole: `{"id":4,"method":"mining.submit","par`
    gives {"id": 4, "method": "mining.submit"}. Returns None when nothing whole arrived."""
    stack: list[str] = []
    cut = None  # (position, open brackets) of the last point where the text so far can be closed
    in_string = escape = is_value = False
    last = ""  # the last structural character outside strings
    for i, ch in enumerate(text):
        if in_string:
            if escape:
                escape = False
            elif ch == "\\":
                escape = True
            elif ch == '"':
                in_string = False
                if is_value:  # a whole string value (not a key): the text can be closed right after it
                    cut = (i + 1, tuple(stack))
            continue
        if ch in _WS:
            continue
        if ch == '"':
            in_string = True
            is_value = bool(stack) and (stack[-1] == "[" or last == ":")
        elif ch in "{[":
            if len(stack) >= MAX_DEPTH:
                break
            stack.append(ch)
            cut = (i + 1, tuple(stack))
        elif ch in "}]":
            if not stack or _CLOSE[stack[-1]] != ch:
                return None
            stack.pop()
            if not stack:
                break  # a whole value: raw_decode would have taken it, so what follows is what failed
            cut = (i + 1, tuple(stack))
        elif ch == ",":
            cut = (i, tuple(stack))
        elif ch not in _BARE:  # not JSON outside a string: this was never a cut-off JSON line
            return None
        last = ch
    if cut is None:
        return None
    pos, opened = cut
    candidate = text[:pos].rstrip().rstrip(",") + "".join(_CLOSE[c] for c in reversed(opened))
    try:
        value = _DECODER.decode(candidate)
    except (ValueError, RecursionError):
        return None
    return value if isinstance(value, (dict, list)) and value else None  # "{" alone: nothing whole arrived


# ------------------------------------------------------------------------------------------------ HTTP
@dataclass(frozen=True)
class HttpMessage:
    start: str  # request or status line
    headers: dict  # lower-case name -> value (first occurrence)
    body: bytes


def http_messages(stream: bytes, limit: int = MAX_HTTP_MESSAGES) -> list[HttpMessage]:
    """HTTP/1.x requests or responses at the start of a kept stream (Content-Length and chunked bodies)."""
    out: list[HttpMessage] = []
    pos = 0
    data = stream[:MAX_STREAM]
    while pos < len(data) and len(out) < limit:
        head_end = data.find(b"\r\n\r\n", pos)
        if head_end < 0:
            break
        lines = data[pos:head_end].split(b"\r\n")
        start = lines[0].decode("latin-1")
        if not (start.startswith("HTTP/1.") or any(lines[0].startswith(m) for m in HTTP_METHODS)):
            break
        headers: dict[str, str] = {}
        for line in lines[1:64]:
            name, sep, value = line.partition(b":")
            if sep:
                headers.setdefault(name.strip().lower().decode("latin-1"), value.strip().decode("latin-1")[:256])
        pos = head_end + 4
        body = b""
        if "chunked" in headers.get("transfer-encoding", "").lower():
            body, pos = _chunked(data, pos)
        else:
            try:
                length = max(0, int(headers.get("content-length", "0") or 0))
            except ValueError:
                length = 0
            body = data[pos:pos + length]
            pos += length
        out.append(HttpMessage(start[:256], headers, body))
    return out


def _chunked(data: bytes, pos: int) -> tuple[bytes, int]:
    body = bytearray()
    for _ in range(64):
        nl = data.find(b"\r\n", pos)
        if nl < 0:
            return bytes(body + data[pos:]), len(data)
        try:
            size = int(data[pos:nl].split(b";")[0].strip() or b"0", 16)
        except ValueError:
            return bytes(body), len(data)
        pos = nl + 2
        if size == 0:
            end = data.find(b"\r\n", pos)
            return bytes(body), (end + 2 if end >= 0 else len(data))
        body += data[pos:pos + size]
        pos += size + 2
    return bytes(body), pos


def looks_like_http(stream: bytes) -> bool:
    return stream.startswith(b"HTTP/1.") or any(stream.startswith(m) for m in HTTP_METHODS)


# ------------------------------------------------------------------------------------------------ interpretation
@dataclass
class _Side:
    methods: list = field(default_factory=list)  # distinct methods in order of appearance
    miner: int = 0  # messages that only a miner sends
    pool: int = 0  # messages (requests or answers) that only a pool sends
    strong: int = 0  # messages that only mining protocols use
    messages: int = 0
    shares: int = 0  # share submissions
    jobs: int = 0  # work pushed by the pool
    answers: list = field(default_factory=list)  # recognised pool answers, described


@dataclass(frozen=True)
class StratumSession:
    """What the kept bytes of a flow showed about a mining-pool conversation."""

    family: str
    miner_is_orig: bool  # the flow's originator is the miner (False: the originator is the pool)
    miner_methods: tuple[str, ...]
    pool_methods: tuple[str, ...]
    pool_answers: tuple[str, ...]  # pool answers recognised by their shape (subscribe result, login result, ...)
    both_sides: bool  # the miner's requests and the pool's messages were both seen
    shares: int
    jobs: int
    login: str | None = None  # wallet/user as sent (cut to MAX_TEXT)
    worker: str | None = None
    agent: str | None = None
    algorithm: str | None = None
    coin: str | None = None
    pool_host: str | None = None  # the pool host the miner names (subscribe params, HTTP Host)
    extensions: tuple[str, ...] = ()  # xmrig login-result extensions / HTTP mining headers
    messages: int = 0
    truncated: bool = False

    @property
    def methods(self) -> tuple[str, ...]:
        seen = dict.fromkeys(self.miner_methods + self.pool_methods)
        return tuple(seen)[:MAX_METHODS]


def _bounded(value, limit: int = MAX_TEXT) -> str | None:
    if value is None or isinstance(value, (dict, list)):
        return None
    text = str(value)
    if not text:
        return None
    return text if len(text) <= limit else text[:limit] + "..."


def _is_host_name(value) -> bool:
    """A DNS name (not an address): letters, digits, dots and dashes, at least one dot and one letter."""
    return (isinstance(value, str) and 3 <= len(value) <= 253 and "." in value and any(c.isalpha() for c in value)
            and all(c.isalnum() or c in ".-" for c in value))


def _is_hex(value, min_len: int = 1) -> bool:
    if not isinstance(value, str):
        return False
    v = value[2:] if value.startswith("0x") else value
    return len(v) >= min_len and all(c in "0123456789abcdefABCDEF" for c in v)


class _Reader:
    """Reads the JSON messages of both directions and keeps what identifies a mining session."""

    def __init__(self) -> None:
        self.sides = (_Side(), _Side())
        self.login = self.worker = self.agent = self.algorithm = self.coin = self.pool_host = None
        self.extensions: list[str] = []
        self.families: dict[str, int] = {}
        self.truncated = False

    def family(self, name: str) -> None:
        self.families[name] = self.families.get(name, 0) + 1

    def method_seen(self, side: _Side, method: str) -> None:
        if method not in side.methods and len(side.methods) < MAX_METHODS:
            side.methods.append(method)

    def read(self, d: int, msg: dict) -> None:
        side = self.sides[d]
        side.messages += 1
        method = msg.get("method")
        params = msg.get("params")
        if isinstance(method, str) and method:
            self._request(side, method[:64], params, msg)
        elif "result" in msg or "error" in msg:
            self._answer(side, msg.get("result"))
        if self._mentions_ethereum_stratum(msg):
            side.strong += 1
            self.family(Family.ETHEREUM_STRATUM)
            self.coin = self.coin or "ethereum"

    def _request(self, side: _Side, method: str, params, msg: dict) -> None:
        pdict = params if isinstance(params, dict) else {}
        plist = params if isinstance(params, list) else []
        strong = miner = pool = False
        if method in STRATUM_MINER_METHODS or method in STRATUM_POOL_METHODS:
            strong = True
            miner = method in STRATUM_MINER_METHODS
            pool = not miner
            self.family(Family.ETHEREUM_STRATUM if method in ("mining.hello", "mining.set", "mining.bye")
                        else Family.STRATUM_V1)
            if method == "mining.subscribe" and plist:
                self.agent = self.agent or _bounded(plist[0])
                if len(plist) >= 3 and _is_host_name(plist[2]):
                    self.pool_host = self.pool_host or _bounded(plist[2])  # [agent, session, host, port] (equihash)
            elif method in ("mining.authorize", "mining.submit") and plist:
                self._set_login(plist[0])
            elif method == "mining.hello" and pdict:
                self.agent = self.agent or _bounded(pdict.get("agent"))
                host = pdict.get("host")
                self.pool_host = self.pool_host or (_bounded(host) if _is_host_name(host) else None)
            if method == "mining.submit":
                side.shares += 1
            elif method == "mining.notify":
                side.jobs += 1
        elif method in ETH_METHODS:
            strong = miner = True
            self.family(Family.ETHEREUM_PROXY)
            self.coin = self.coin or "ethereum"
            if method == "eth_submitLogin":
                worker = msg.get("worker")  # ETHPROXY sends the worker name as a member of the request (2.3)
                if isinstance(worker, str) and worker and self.worker is None:
                    self.worker = _bounded(worker, MAX_WORKER)
                if plist:
                    self._set_login(plist[0])
            elif method == "eth_submitWork":
                side.shares += 1
        elif method in GETWORK_METHODS:
            strong = miner = True
            self.family(Family.GETWORK_HTTP)
        elif method == "login" and "login" in pdict and ("agent" in pdict or ("pass" in pdict and "algo" in pdict)):
            strong = miner = True  # ET 2022886 / 2024792: a login with an agent (xmrig always sends one)
            self.family(Family.CRYPTONOTE)
            self._set_login(pdict.get("login"))
            self.agent = self.agent or _bounded(pdict.get("agent"))
            if pdict.get("rigid") and self.worker is None:
                self.worker = _bounded(pdict.get("rigid"), MAX_WORKER)
            self._set_algorithm(pdict.get("algo"))
        elif method == "job" and "blob" in pdict:
            strong = pool = True
            self.family(Family.CRYPTONOTE)
            side.jobs += 1
            self._set_algorithm(pdict.get("algo"))
        elif method == "submit" and "nonce" in pdict and "result" in pdict:
            strong = miner = True
            self.family(Family.CRYPTONOTE)
            side.shares += 1
            self._set_algorithm(pdict.get("algo"))
        elif method in ("keepalived", "getjob") and isinstance(pdict.get("id"), (str, int)):
            strong = miner = True  # xmrig keepalive: params {"id": <rpc id from the login result>}
            self.family(Family.CRYPTONOTE)
        elif method in STRATUM_CLIENT_METHODS:
            pool = True  # the pool asks the miner; common words otherwise, so only supporting
        else:
            return
        self.method_seen(side, method)
        side.strong += strong
        side.miner += miner
        side.pool += pool

    def _answer(self, side: _Side, result) -> None:
        """Pool answers recognised by their shape (2.1 subscribe result, 2.2 login result, 2.3 getWork result)."""
        if isinstance(result, list) and result and isinstance(result[0], list):
            pairs = result[0] if result[0] and isinstance(result[0][0], list) else [result[0]]
            names = {p[0] for p in pairs if isinstance(p, list) and p and isinstance(p[0], str)}
            if names & {"mining.notify", "mining.set_difficulty"}:  # ET 2017872
                side.strong += 1
                side.pool += 1
                self.family(Family.STRATUM_V1)
                self._note_answer(side, "subscribe result")
        elif isinstance(result, dict):
            job = result.get("job")
            if isinstance(job, dict) and "blob" in job:
                side.strong += 1
                side.pool += 1
                side.jobs += 1
                self.family(Family.CRYPTONOTE)
                self._set_algorithm(job.get("algo"))
                ext = result.get("extensions")
                if isinstance(ext, list):
                    for e in ext[:8]:
                        if isinstance(e, str) and e[:16] not in self.extensions:
                            self.extensions.append(e[:16])
                self._note_answer(side, "login result with a job")
            elif result.get("status") == "OK":
                self._note_answer(side, "status OK")  # supporting only: many APIs answer this way
        elif isinstance(result, list) and len(result) >= 3 and all(_is_hex(x, 32) for x in result[:3]):
            self._note_answer(side, "work package")  # eth_getWork: [header hash, seed hash, boundary]
            side.pool += 1

    @staticmethod
    def _note_answer(side: _Side, what: str) -> None:
        if what not in side.answers and len(side.answers) < 8:
            side.answers.append(what)

    @staticmethod
    def _mentions_ethereum_stratum(msg: dict) -> bool:
        for key in ("params", "result"):
            value = msg.get(key)
            if isinstance(value, list):
                flat = value if not (value and isinstance(value[0], list)) else value[0] + value[1:]
                if any(isinstance(x, str) and x.startswith("EthereumStratum/") for x in flat[:8]):
                    return True
            elif isinstance(value, dict):
                proto = value.get("proto")
                if isinstance(proto, str) and proto.startswith("EthereumStratum/"):
                    return True
        return False

    def _set_login(self, value) -> None:
        if self.login is not None or not isinstance(value, str) or not value:
            return
        self.login = _bounded(value)
        worker = value.rsplit(".", 1)[1] if "." in value else ""
        if self.worker is None and worker and not any(c in worker for c in "/@:"):
            self.worker = _bounded(worker, MAX_WORKER)  # ADDRESS.worker (2.1)

    def _set_algorithm(self, value) -> None:
        if self.algorithm is not None:
            return
        if isinstance(value, list):
            value = ",".join(str(v) for v in value[:4] if isinstance(v, str))
        self.algorithm = _bounded(value, 32)


def _miner_first(reader: _Reader) -> bool:
    """Which direction is the miner's: the side with more miner-only messages (ties: the side with fewer pool-only
    messages; then the originator)."""
    a, b = reader.sides
    if a.miner != b.miner:
        return a.miner > b.miner
    if a.pool != b.pool:
        return a.pool < b.pool
    return True


def _session(reader: _Reader, extra_family: str | None = None, headers: tuple[str, ...] = ()) -> StratumSession | None:
    a, b = reader.sides
    if a.strong + b.strong == 0 and not headers:
        return None
    miner_orig = _miner_first(reader)
    miner, pool = (a, b) if miner_orig else (b, a)
    family = extra_family or max(reader.families, key=reader.families.get)
    for name in (Family.ETHEREUM_STRATUM,):  # EthereumStratum rides on mining.* methods: it names the dialect
        if name in reader.families:
            family = name
    if "zcash" in (reader.pool_host or "").lower() or "zcash" in (reader.agent or "").lower():
        reader.coin = reader.coin or "zcash"  # nDPI's sub-tag rule (2.4)
    return StratumSession(
        family=family, miner_is_orig=miner_orig,
        miner_methods=tuple(miner.methods), pool_methods=tuple(pool.methods),
        pool_answers=tuple(pool.answers),
        both_sides=(miner.miner > 0 or miner.strong > 0) and (pool.pool > 0 or pool.strong > 0 or bool(pool.answers)),
        shares=miner.shares, jobs=pool.jobs,
        login=reader.login, worker=reader.worker, agent=reader.agent, algorithm=reader.algorithm,
        coin=reader.coin, pool_host=reader.pool_host,
        extensions=tuple(reader.extensions) + headers, messages=a.messages + b.messages, truncated=reader.truncated,
    )


def parse_json_session(orig: bytes, resp: bytes) -> StratumSession | None:
    """A mining session in newline-delimited JSON-RPC (either direction may be missing), or None."""
    reader = _Reader()
    for d, stream in enumerate((orig, resp)):
        if not stream:
            continue
        js = json_messages(stream)
        reader.truncated |= js.truncated
        for msg in js.messages:
            reader.read(d, msg)
    return _session(reader)


def parse_http_session(orig: bytes, resp: bytes) -> StratumSession | None:
    """Mining over HTTP: getwork / eth_getWork / getblocktemplate JSON-RPC in POST bodies, mining headers."""
    reader = _Reader()
    headers: list[str] = []
    for d, stream in enumerate((orig, resp)):
        for msg in http_messages(stream):
            for name in HTTP_MINING_HEADERS:
                if name in msg.headers:
                    label = f"{name}: {msg.headers[name][:48]}"
                    if label not in headers:
                        headers.append(label)
                        reader.sides[d].strong += 1
            if d == 0 and msg.start.startswith("POST "):
                host = msg.headers.get("host")
                path = msg.start.split(" ")[1] if " " in msg.start else ""
                if "miner=" in path and reader.login is None:
                    reader.login = _bounded(path.split("miner=", 1)[1].split("&", 1)[0])
                if host and reader.pool_host is None:
                    reader.pool_host = _bounded(host.split(":")[0])
                if reader.agent is None and msg.headers.get("user-agent"):
                    reader.agent = _bounded(msg.headers["user-agent"])
            if msg.body:
                js = json_messages(msg.body, limit=8)
                reader.truncated |= js.truncated
                for m in js.messages:
                    reader.read(d, m)
    if not (reader.sides[0].strong + reader.sides[1].strong):
        return None
    if headers:
        reader.sides[0].miner += 1  # the requests come from the originator
    return _session(reader, Family.GETWORK_HTTP, tuple(headers))


def parse_session(orig: bytes, resp: bytes) -> StratumSession | None:
    """Any mining session in the kept bytes of a TCP flow: HTTP (getwork, mining headers) or JSON lines."""
    try:
        if looks_like_http(orig) or looks_like_http(resp):
            return parse_http_session(orig, resp)
        return parse_json_session(orig, resp)
    except (ValueError, TypeError, KeyError, IndexError, AttributeError, RecursionError):  # never on any input
        return None


# ------------------------------------------------------------------------------------------------ Stratum V2
SV2_ACT1 = 64  # initiator: ElligatorSwift ephemeral key (sv2-spec 4, Noise NX with secp256k1 + EllSwift)
SV2_ACT2 = 234  # responder: 64 + (64 + 16) + (74 + 16) (SRI noise_sv2 INITIATOR_EXPECTED_HANDSHAKE_MESSAGE_SIZE)
SV2_FRAME_MIN = 22 + 16  # encrypted header (6 + 16 MAC) + an empty payload's 16-byte MAC (2.6)
SV2_MIN_DISTINCT = 40  # byte values in a 64-byte random-looking key: a random one has ~56 on average


# cazala/coin-hive-stratum src/Miner.ts, src/types.ts (research/carriers-and-implementations.md 5.1)
COINHIVE_MINER_TYPES = ("auth", "submit")
COINHIVE_POOL_TYPES = ("authed", "job", "hash_accepted", "banned")


def parse_coinhive_session(orig: bytes, resp: bytes) -> StratumSession | None:
    """A CoinHive-style browser-miner session (one JSON object per WebSocket text message, `{"type": ...,
    "params": {...}}`), or None: miner types auth/submit, pool types authed/job/hash_accepted; a `job` needs a
    `blob` and a `target`."""
    sides = []
    for stream in (orig, resp):
        types, shares, jobs, login = [], 0, 0, None
        for msg in json_messages(stream).messages if stream else ():
            kind = msg.get("type") if isinstance(msg, dict) else None
            params = msg.get("params") if isinstance(msg, dict) else None
            if not isinstance(kind, str) or not isinstance(params, dict):
                continue
            if kind == "job" and not ("blob" in params and "target" in params):
                continue
            if kind in COINHIVE_MINER_TYPES + COINHIVE_POOL_TYPES and kind not in types:
                types.append(kind)
            shares += kind == "submit"
            jobs += kind == "job"
            if kind == "auth":
                login = _bounded(params.get("site_key")) or login
        sides.append((types, shares, jobs, login))
    miner_score = [sum(t in COINHIVE_MINER_TYPES for t in side[0]) for side in sides]
    pool_score = [sum(t in COINHIVE_POOL_TYPES for t in side[0]) for side in sides]
    if not any(miner_score) and not any(pool_score):
        return None
    miner_orig = miner_score[0] > miner_score[1] or (miner_score[0] == miner_score[1] and pool_score[0] <= pool_score[1])
    miner, pool = (sides[0], sides[1]) if miner_orig else (sides[1], sides[0])
    miner_types = tuple(t for t in miner[0] if t in COINHIVE_MINER_TYPES)
    pool_types = tuple(t for t in pool[0] if t in COINHIVE_POOL_TYPES)
    return StratumSession(family=Family.COINHIVE, miner_is_orig=miner_orig, miner_methods=miner_types,
                          pool_methods=pool_types, pool_answers=(), both_sides=bool(miner_types and pool_types),
                          shares=miner[1], jobs=pool[2], login=miner[3], messages=0)


@dataclass(frozen=True)
class Sv2Handshake:
    """The Stratum V2 Noise handshake as sizes: act 1 from the originator, act 2 from the responder."""

    act1: int
    act2: int
    records_after: int  # later payload packets, each at least one encrypted frame (22 + n + 16 B)
    records_min: int  # smallest of them (0 when none)


def sv2_handshake(sizes, first_orig: bytes) -> Sv2Handshake | None:
    """Stratum V2's handshake in the early payload sequence (signed sizes: + originator, - responder) and the
    originator's first kept bytes: exactly 64 B from the originator (random-looking, no TLS record header), then
    exactly 234 B back, then frames no smaller than 38 B."""
    seq = [int(x) for x in sizes[:64]]
    if len(seq) < 2 or seq[0] != SV2_ACT1 or seq[1] != -SV2_ACT2:
        return None
    key = first_orig[:SV2_ACT1]
    tls_header = key[:1] == b"\x16" and key[1:2] == b"\x03" and key[2:3] <= b"\x04"
    if len(key) < SV2_ACT1 or tls_header or len(set(key)) < SV2_MIN_DISTINCT:
        return None
    later = [abs(x) for x in seq[2:]]
    if any(x < SV2_FRAME_MIN for x in later):
        return None
    return Sv2Handshake(SV2_ACT1, SV2_ACT2, len(later), min(later) if later else 0)
