"""Hostile strings from the wire reach the operator escaped and bounded, in the table and in JSONL.

Real lab captures are patched in place, each wire string replaced by a hostile one of the same length (so every
TCP sequence number and length stays right and the detectors still fire): SSH banners of a reverse tunnel, the
login and agent of an xmrig session (as JSON escapes, including a lone surrogate), a TLS server name, an HTTP Host
and DNS labels of the egress-policy capture. The hostile strings carry ANSI/OSC escapes (clear screen, OSC 8
hyperlinks, OSC 52 clipboard writes), the one-byte C1 CSI, rich markup, bidi overrides, NUL, invalid UTF-8 and
UTF-8-encoded surrogates. Then `egressguard analyze` (through click's runner, as a user runs it) must write:
  table: strict UTF-8 with no control character but newline, no C1, no bidi/zero-width mark, markup shown
         literally, lines and output bounded;
  jsonl: every line strict JSON, ASCII, and every string in it encodable as UTF-8 (no lone surrogates).
"""
from __future__ import annotations

import io
import json
import re
from pathlib import Path

import pytest
from click.testing import CliRunner
from rich.console import Console

from conftest import LAB_CAPTURES
from egressguard.cli import main
from egressguard.report.table import render_findings, render_summary
from egressguard.report.text import safe_markup, safe_text

RULES = LAB_CAPTURES / "rules.toml"

# Pieces a hostile peer would send: each is a way to act on, or lie to, the operator's terminal.
CLEAR = b"\x1b[2J\x1b[H"
OSC8 = b"\x1b]8;;http://evil.example/\x1b\\click\x1b]8;;\x1b\\"
OSC52 = b"\x1b]52;c;cm0gLXJmIH4=\x07"
C1_CSI = "\u009b31m".encode()
BIDI = "\u202e\u2066\u200b".encode()
MARKUP = b"[bold red]ALERT[/bold red][link=http://evil.example]x[/link]"
NUL = b"\x00"
BAD_UTF8 = b"\xff\xfe\xc0\x80\xed\xa0\x80"  # invalid bytes, an overlong NUL, a UTF-8-encoded surrogate


def hostile(length: int, *pieces: bytes) -> bytes:
    """Exactly `length` bytes made of the pieces (cut or padded with 'A')."""
    data = b"".join(pieces)[:length]
    return data + b"A" * (length - len(data))


def json_hostile(length: int) -> bytes:
    """Exactly `length` bytes that are valid inside a JSON string and decode to hostile text (escapes, a lone
    surrogate, raw control bytes that strict=False lets through, markup)."""
    text = (rb"\u001b[2J\u001b]52;c;cm0=\u0007\ud800\u202e\u009b31m" + b"\x01\x07" + b"[bold red]X[/][link=http://e]y"
            + b"\xff")
    return hostile(length, text)


def patched(tmp_path: Path, name: str, replacements: list[tuple[bytes, list[bytes]]]) -> Path:
    """A copy of a lab capture with the i-th occurrence of each `old` replaced by news[i] (the last one repeats)."""
    data = (LAB_CAPTURES / name).read_bytes()
    for old, news in replacements:
        parts = data.split(old)
        assert len(parts) > 1, f"{old!r} not in {name}"
        out = parts[0]
        for i, part in enumerate(parts[1:]):
            new = news[min(i, len(news) - 1)]
            assert len(new) == len(old)
            out += new + part
        data = out
    path = tmp_path / f"hostile-{name}"
    path.write_bytes(data)
    return path


def _label_hostile(labels: list[bytes]) -> list[bytes]:
    """DNS labels of the same lengths, each filled with hostile bytes (a label may hold any octet, RFC 2181 11)."""
    fill = CLEAR + BIDI + NUL + b".[b]" + BAD_UTF8
    return [hostile(len(label), fill[i:]) for i, label in enumerate(labels)]


def hostile_captures(tmp_path: Path) -> dict[str, Path]:
    banner = b"OpenSSH_9.2p1 Debian-2+deb12u10"
    login = b"44AFFq5kSiGBoZ4NMDwYtN18obc8AemS33DBLWs3H7otXft3XjrpDtQGv7SqSsaBYBb98uNbr2VBBEt7f2wfn3RVGQBEP3A"
    agent = b"XMRig/6.26.0 (Linux x86_64) libuv/1.44.2 gcc/12.2.0"
    upload = [b"upload", b"tunnel", b"example"]
    dns_old = b"".join(bytes([len(x)]) + x for x in upload)
    dns_new = b"".join(bytes([len(x)]) + x for x in _label_hostile(upload))
    return {
        "ssh": patched(tmp_path, "ssh-reverse-shell.pcap", [
            (banner, [hostile(len(banner), CLEAR, BAD_UTF8, BIDI, NUL, OSC52),
                      hostile(len(banner), OSC8[:12], C1_CSI, MARKUP)])]),
        "mining": patched(tmp_path, "xmrig-style-login.pcap", [
            (login, [json_hostile(len(login))]), (agent, [hostile(len(agent), MARKUP, b"\\u001b]8;;x\\u0007")])]),
        "egress": patched(tmp_path, "egress-policy.pcap", [
            (b"upload.tunnel.example", [hostile(21, CLEAR, BIDI, b"[b]", NUL)]),
            (b"mirror.other.example", [hostile(20, OSC52, C1_CSI, b"[i]")]),
            (dns_old, [dns_new])]),
    }


# Nothing a terminal acts on may come out: C0 controls but newline, DEL, C1, bidi/zero-width/format marks.
FORBIDDEN = re.compile("[\x00-\x09\x0b-\x1f\x7f-\x9f\u200b-\u200f\u2028-\u202e\u2060-\u206f\ufeff]")


def check_table(out: bytes) -> str:
    text = out.decode("utf-8")  # strict: invalid UTF-8 from the wire must not pass through
    bad = FORBIDDEN.search(text)
    assert bad is None, f"raw {bad.group()!r} in table output near {text[max(0, bad.start() - 60):bad.end() + 20]!r}"
    assert len(text) < 200_000
    assert max(len(line) for line in text.splitlines()) <= 140  # the width the CLI uses when not on a terminal
    return text


def check_jsonl(out: bytes) -> list[dict]:
    out.decode("ascii")  # the contract: ASCII only
    records = []
    for line in out.splitlines():
        rec = json.loads(line)
        json.dumps(rec, ensure_ascii=False).encode("utf-8")  # strict: no lone surrogate in any string
        records.append(rec)
    return records


def run(*args) -> tuple[int, bytes]:
    result = CliRunner().invoke(main, ["analyze", "--rules", str(RULES), *map(str, args)])
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    return result.exit_code, result.stdout_bytes


@pytest.fixture(scope="module")
def captures(tmp_path_factory):
    return hostile_captures(tmp_path_factory.mktemp("hostile"))


def test_ssh_banners_escaped_in_table_and_exact_in_jsonl(captures):
    code, out = run("--format", "table", captures["ssh"])
    assert code == 1
    text = check_table(out)
    assert "reverse_ssh_tunnel" in text
    assert "\\x1b[2J" in text and "\\u202e" in text and "\\x9b31m" in text and "\\x00" in text
    assert "[bold" in text  # markup shown literally, not interpreted
    code, out = run("--format", "jsonl", captures["ssh"])
    findings = [r for r in check_jsonl(out) if r["type"] == "finding" and r["kind"] == "reverse_ssh_tunnel"]
    assert findings
    banners = {findings[0]["ssh"]["client_banner"], findings[0]["ssh"]["server_banner"]}
    # as received (bounded at 255 by the parser), undecodable bytes spelled as \xNN by the SSH parser
    assert any(b.startswith("SSH-2.0-\x1b[2J") and "\\xff" in b for b in banners)
    assert all(len(b) <= 4 * 255 for b in banners)


def test_stratum_login_and_agent_escaped_lone_surrogate_never_written(captures):
    code, out = run("--format", "table", captures["mining"])
    assert code == 1
    text = check_table(out)
    assert "mining" in text and "\\x1b[2J" in text and "\\ud800" in text
    code, out = run("--format", "jsonl", captures["mining"])
    mining = [r for r in check_jsonl(out) if r["type"] == "finding" and r["kind"] == "mining"]
    assert mining
    login = mining[0]["mining"]["login"]
    assert login.startswith("\x1b[2J\x1b]52;c;cm0=\x07")  # exact text, escaped by the JSON encoder
    assert "\\ud800" in login  # the lone surrogate spelled out as text
    assert len(login.replace("\\ud800", "?")) <= 64 + 3  # cut to 64 characters (and "...") by the parser


def test_sni_http_host_and_dns_names_escaped(captures):
    code, out = run("--format", "table", captures["egress"])
    text = check_table(out)
    assert "unexpected_destination" in text and "\\x1b[2J" in text
    code, out = run("--format", "jsonl", captures["egress"])
    records = check_jsonl(out)
    blob = json.dumps([r for r in records if r["type"] == "finding"])
    # the hostile SNI (lower-cased by the parser), HTTP Host and DNS names reached the findings, escaped by json
    assert "\\u001b[2j" in blob and "\\u001b]52;c;" in blob


HOSTILE_TEXTS = [
    "SSH-2.0-[bold red]owned[/bold red]\x1b[2J\x1b]0;title\x07\u202eevil",
    "\x1b]8;;http://evil.example/\x1b\\click\x1b]8;;\x1b\\",
    "\x1b]52;c;cm0gLXJmIH4=\x07",
    "\u009b31mred\u0085next\u2028line",
    "[link=http://evil.example]x[/link]\\[bold]\\",
    "nul\x00tab\tcr\rlf\nbs\x08",
    "lone \ud800 surrogate \udfff",
    "tag \U000e0041 chars \u061c\u00ad",
    "A" * 65536,
    "\x1b" * 65536,
]


@pytest.mark.parametrize("value", HOSTILE_TEXTS, ids=range(len(HOSTILE_TEXTS)))
def test_every_rendered_field_is_escaped_and_bounded(value):
    """Every wire field the table renders, fed each hostile string (64 KiB ones too), through rich."""
    finding = {
        "kind": "mining", "severity": "high", "score": 0.9, "evidence": [value, f"pool {value}"],
        "src_ip": "10.0.0.1", "src_port": 1, "dst_ip": "192.0.2.1", "dst_port": 3333, "proto": "tcp",
        "first_seen": 0.0, "last_seen": 1.0,
        "ssh": {k: value for k in ("client_banner", "server_banner", "cipher", "mac", "auth", "hassh",
                                   "hassh_server")},
        "mining": {"protocol": value, "pool": value, "pool_source": value, "methods": [value, value],
                   "login": value, "worker": value, "agent": value, "coin": value, "algorithm": value},
        "egress": {"reason": value, "deny_rule": value, "server_name": value, "address_class": value,
                   "sandbox": value},
    }
    summary = {"capture": value, "format": "pcap", "compression": None, "packets": 1, "bytes": 1, "flows": 1,
               "duration": 0.0, "truncated": 0, "headers_cut": 0, "undecodable": 0, "not_ip": 0, "fragments": 0,
               "evictions": 0, "payload_slots_exhausted": 0, "file_complete": False, "warnings": [value]}
    buf = io.StringIO()
    console = Console(file=buf, width=140, color_system=None)
    console.print(render_findings([finding] * 2, limit=1))
    console.print(render_summary(summary))
    text = buf.getvalue()
    check_table(text.encode("utf-8"))
    assert len(text) < 60_000  # 64 KiB inputs come out cut to a few hundred characters per field


def test_safe_text_escapes_each_unsafe_class_and_keeps_ordinary_text():
    assert safe_text("caf\u00e9 \u4e2d\u6587 \U0001F600 ok") == "caf\u00e9 \u4e2d\u6587 \U0001F600 ok"
    assert safe_text("\x1b\x9b\u202e\ud800\U000e0041\u2028\x7f") == "\\x1b\\x9b\\u202e\\ud800\\U000e0041\\u2028\\x7f"
    assert safe_markup("[b]x[/b]") == "\\[b]x\\[/b]"
    assert safe_text("x" * 300) == "x" * 200 + "...(+100 chars)"
