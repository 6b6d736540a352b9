"""The live dashboard: exact text of fixed snapshots at fixed widths, fitting short terminals, hostile wire strings,
and the refresh loop on a console that is not a terminal."""
import io
import re
import threading
import unicodedata

import pytest
from rich.cells import cell_len
from rich.console import Console

from egressguard.report.dashboard import (render_dashboard, render_findings, render_interfaces, render_messages,
                                          run_dashboard, sparkline)
from egressguard.schema import ComputeUsage, DestinationView, InterfaceView, LiveSnapshot, SandboxView, Severity

T0_NS = 1_800_000_000 * 10**9  # 2027-01-15 08:00:00 UTC
T0 = T0_NS / 1e9
SECOND = 10**9


def render(renderable, width=100, color=False):
    console = Console(file=io.StringIO(), width=width, color_system="truecolor" if color else None,
                      force_terminal=color, legacy_windows=False)
    console.print(renderable)
    return console.file.getvalue()


def lines_of(text):
    """Rendered lines without the trailing blanks rich pads table cells with."""
    return [line.rstrip() for line in text.rstrip("\n").split("\n")]


def rule(title, width=100):
    return f"{title} " + "─" * (width - len(title) - 1)


def finding(kind, severity, score, evidence, sandbox, dst, first_seen=T0 + 60, **details):
    ip, port = dst.split(":")
    return {"type": "finding", "kind": kind, "severity": severity, "score": score, "evidence": list(evidence),
            "src_ip": "10.0.0.7", "src_port": 40022, "dst_ip": ip, "dst_port": int(port), "proto": "tcp",
            "first_seen": first_seen, "last_seen": first_seen + 240, "capture": "br0", "community_id": "1:x",
            "sandbox": sandbox, **details}


TUNNEL = finding("reverse_ssh_tunnel", "critical", 0.97,
                 ["the remote side sent 51 packets of the size of a keystroke inside a nested SSH session "
                  "(68/76/92/100 B), each echoed by the sandbox side within 0.5 s",
                  "a tcpip-forward request right after login",
                  "the TCP opener acted as the SSH server"],
                 "agent-1", "203.0.113.9:443", ssh={"client_banner": "SSH-2.0-OpenSSH_9.2"})
MINING = finding("mining", "high", 0.9, ["the pool answered mining.subscribe and mining.authorize"],
                 "agent-2", "198.51.100.20:3333", first_seen=T0 + 200,
                 mining={"pool": "pool.example.net", "login": "4Abc.w1"})


def snapshot(**changes):
    base = dict(
        time_ns=T0_NS + 3723 * SECOND, started_ns=T0_NS,
        interfaces=(InterfaceView("br0", True, 123_456, 98_765_432, 0, pps_history=(0, 10, 20, 40, 80, 160, 80, 40),
                                  bps_history=(0.0, 1e3, 9.6e6)),
                    InterfaceView("veth-a", False, 10, 1000, 12)),
        active_flows=12, finished_flows=340, evictions=0, findings=(TUNNEL, MINING),
        sandboxes=(SandboxView("agent-1", "10.0.0.7", None, "veth-a", 40, 3_500_000, 7, Severity.CRITICAL,
                               "reverse_ssh_tunnel"),
                   SandboxView("agent-2", "10.0.0.8", "02:00:00:00:00:08", "veth-b", 5, 2048, 2, Severity.HIGH,
                               "mining", ComputeUsage(1.96, 2.0, 95.0, "cgroup:/agent-2", 3)),
                   SandboxView("agent-3", "10.0.0.9", None, None, 1, 300, 1, None, None)),
        new_destinations=(DestinationView(T0_NS + 290 * SECOND, "agent-2", "198.51.100.20:3333/tcp",
                                          ("pool.example.net",)),),
        messages=("rules reloaded from rules.toml",))
    base.update(changes)
    return LiveSnapshot(**base)


def test_dashboard_at_100_columns_shows_every_section():
    expected = [
        "egressguard  09:02:03 UTC  up 1h 02m 03s  findings 2  flows 12 active, 340 ended  evictions 0",
        rule("Interfaces (2)"),
        "interface  state  drops  pkt/s  bit/s  pkt/s, last 16 s  packets",
        "br0        up         0     40   9.6M   ▁▁▂▄█▄▂          123,456",
        "veth-a     down      12      0      0                         10",
        rule("Findings (2)"),
        "CRITICAL  reverse_ssh_tunnel  agent-1 -> 203.0.113.9:443/tcp  score 0.97  since 08:01:00  client SS…",
        "    the remote side sent 51 packets of the size of a keystroke inside a nested SSH session (68/76/9…",
        "    a tcpip-forward request right after login",
        "HIGH      mining              agent-2 -> 198.51.100.20:3333/tcp  score 0.90  since 08:03:20  pool p…",
        "    the pool answered mining.subscribe and mining.authorize",
        rule("Sandboxes (3)"),
        "sandbox  address   port    worst finding                  cpu  bytes out  flows  destinations",
        "agent-1  10.0.0.7  veth-a  critical reverse_ssh_tunnel      -    3.3 MiB     40             7",
        "agent-2  10.0.0.8  veth-b  high mining                  2.0/2    2.0 KiB      5             2",
        "agent-3  10.0.0.9  -       -                                -      300 B      1             1",
        rule("New destinations"),
        "time      sandbox  destination             names",
        "08:04:50  agent-2  198.51.100.20:3333/tcp  pool.example.net",
        rule("Messages"),
        "  rules reloaded from rules.toml",
    ]
    assert lines_of(render(render_dashboard(snapshot()))) == expected


def test_dashboard_at_60_columns_drops_minor_columns_and_cuts_long_lines():
    expected = [
        "egressguard  09:02:03 UTC  up 1h 02m 03s  findings 2  flows…",
        rule("Interfaces (2)", 60),
        "interface  state  drops  pkt/s  bit/s  pkt/s, last 16 s",  # total packets left out
        "br0        up         0     40   9.6M   ▁▁▂▄█▄▂",
        "veth-a     down      12      0      0",
        rule("Findings (2)", 60),
        "CRITICAL  reverse_ssh_tunnel  agent-1 -> 203.0.113.9:443/tc…",
        "    the remote side sent 51 packets of the size of a keystr…",
        "    a tcpip-forward request right after login",
        "HIGH      mining              agent-2 -> 198.51.100.20:3333…",
        "    the pool answered mining.subscribe and mining.authorize",
        rule("Sandboxes (3)", 60),
        "sandbox  port    worst finding                bytes out",  # address, cpu, flows, destinations left out
        "agent-1  veth-a  critical reverse_ssh_tunnel    3.3 MiB",
        "agent-2  veth-b  high mining                    2.0 KiB",
        "agent-3  -       -                                300 B",
        rule("New destinations", 60),
        "time      sandbox  destination             names",
        "08:04:50  agent-2  198.51.100.20:3333/tcp  pool.example.net",
        rule("Messages", 60),
        "  rules reloaded from rules.toml",
    ]
    assert lines_of(render(render_dashboard(snapshot()), width=60)) == expected


def test_short_terminal_keeps_findings_and_drops_the_rest_last():
    expected = [
        "egressguard  09:02:03 UTC  up 1h 02m 03s  findings 2  flows 12 active, 340 ended  evictions 0",
        rule("Interfaces (2)"),
        "interface  state  drops  pkt/s  bit/s  pkt/s, last 16 s  packets",
        "br0        up         0     40   9.6M   ▁▁▂▄█▄▂          123,456",
        "veth-a     down      12      0      0                         10",
        rule("Findings (2)"),
        "CRITICAL  reverse_ssh_tunnel  agent-1 -> 203.0.113.9:443/tcp  score 0.97  since 08:01:00  client SS…",
        "HIGH      mining              agent-2 -> 198.51.100.20:3333/tcp  score 0.90  since 08:03:20  pool p…",
    ]
    assert lines_of(render(render_dashboard(snapshot(), height=8))) == expected
    assert lines_of(render(render_dashboard(snapshot(), height=4))) == [expected[0]] + expected[5:]
    assert lines_of(render(render_dashboard(snapshot(), height=1))) == [expected[0]]


@pytest.mark.parametrize("width", [20, 40, 60, 100, 160])
@pytest.mark.parametrize("height", [1, 2, 3, 5, 8, 13, 21, 34, 60])
def test_any_terminal_size_fits(width, height):
    many = snapshot(findings=tuple(dict(TUNNEL, score=0.5 + i / 1000) for i in range(300)),
                    sandboxes=snapshot().sandboxes * 50, interfaces=snapshot().interfaces * 10,
                    new_destinations=snapshot().new_destinations * 40, messages=("m",) * 9)
    lines = lines_of(render(render_dashboard(many, height=height), width=width))
    assert len(lines) <= height
    assert all(cell_len(line) <= width for line in lines)
    assert lines[0].startswith("egressguard"[:width - 1])


def test_many_findings_show_what_fits_and_count_the_rest():
    findings = tuple(finding("unexpected_destination", "medium", 0.5, [f"flow {i} to an address no rule allows"],
                             f"box-{i}", f"192.0.2.{i}:80", egress={"reason": "not_allowlisted"})
                     for i in range(250))
    expected = [
        rule("Findings (250)", 110),
        "MEDIUM    unexpected_destination  box-0 -> 192.0.2.0:80/tcp  score 0.50  since 08:01:00  not_allowlisted",
        "    flow 0 to an address no rule allows",
        "MEDIUM    unexpected_destination  box-1 -> 192.0.2.1:80/tcp  score 0.50  since 08:01:00  not_allowlisted",
        "    flow 1 to an address no rule allows",
        "MEDIUM    unexpected_destination  box-2 -> 192.0.2.2:80/tcp  score 0.50  since 08:01:00  not_allowlisted",
        "    flow 2 to an address no rule allows",
        "  and 247 more findings",
    ]
    assert lines_of(render(render_findings(snapshot(findings=findings), lines=9), width=110)) == expected
    # too short for evidence under the first three: head lines only
    assert lines_of(render(render_findings(snapshot(findings=findings), lines=5), width=110)) == (
        [expected[0], expected[1], expected[3], expected[5], expected[7]])


class OnlyTheFirstFew(tuple):
    """A findings tuple that fails the test if rendering looks beyond its first 50 entries."""

    def __getitem__(self, index):
        stop = index.stop if isinstance(index, slice) else index
        assert stop is not None and 0 <= stop <= 50, f"rendering looked at findings[{index}]"
        return super().__getitem__(index)

    def __iter__(self):
        raise AssertionError("rendering iterated over every finding")


def test_render_cost_does_not_grow_with_the_number_of_findings():
    findings = OnlyTheFirstFew([TUNNEL] * 1_000_000)
    text = render(render_dashboard(snapshot(findings=findings)))
    assert "Findings (1,000,000)" in text
    assert "  and 999,992 more findings" in text


def test_no_interfaces_no_findings_no_sandboxes():
    quiet = snapshot(interfaces=(), findings=(), sandboxes=(), new_destinations=(), messages=(),
                     time_ns=T0_NS + 59 * SECOND, active_flows=0, finished_flows=0)
    assert lines_of(render(render_dashboard(quiet))) == [
        "egressguard  08:00:59 UTC  up 0m 59s  findings 0  flows 0 active, 0 ended  evictions 0",
        rule("Interfaces (0)"),
        "  no interfaces",
        rule("Findings (0)"),
        "  no findings",
        rule("Sandboxes (0)"),
        "  no sandbox traffic yet",
        rule("New destinations"),
        "  none yet",
    ]


def test_interface_down_and_kernel_drops_are_highlighted():
    colored = render(render_interfaces(snapshot()), color=True)
    # rich's truecolor output: bold red = ESC[1;31m, green = ESC[32m
    assert "\x1b[1;31mdown\x1b[0m" in colored and "\x1b[32mup\x1b[0m" in colored
    assert "\x1b[1;31m12\x1b[0m" in colored  # veth-a dropped 12 packets
    assert "\x1b[1;31m0" not in colored  # br0 dropped none: plain


def test_severities_have_their_colours_in_findings_and_sandboxes():
    colored = render(render_dashboard(snapshot()), color=True)
    # critical: bold white on red (ESC[1;37;41m), high: bold red (ESC[1;31m)
    assert "\x1b[1;37;41mCRITICAL\x1b[0m" in colored and "\x1b[1;31mHIGH\x1b[0m" in colored
    assert "\x1b[1;37;41mcritical\x1b[0m reverse_ssh_tunnel" in colored and "\x1b[1;31mhigh\x1b[0m mining" in colored


def test_evictions_are_highlighted_in_the_header():
    assert "\x1b[1;33mevictions 5\x1b[0m" in render(render_dashboard(snapshot(evictions=5)), color=True)
    assert "\x1b[1;33mevictions" not in render(render_dashboard(snapshot()), color=True)


@pytest.mark.parametrize("history, expected", [
    ((0, 10, 20, 40, 80, 160, 80, 40), " ▁▁▂▄█▄▂"),
    ((5, 5, 5), "███"),
    ((0, 0), "  "),
    ((), ""),
    ((float("nan"), float("inf"), -3, 8), "   █"),  # junk counts as no traffic
    (tuple(range(1, 41)), "▅▆▆▆▆▆▇▇▇▇▇█████"),  # the last 16 of 40 seconds, scaled to their own maximum
])
def test_sparkline(history, expected):
    assert sparkline(history) == expected


HOSTILE = ("[bold red]x[/]\x1b[2J\x1b]0;pwned\x07\r\n\x9b31m\u202eevil\u200b\u2066\u2028\U000110bd\ufeff"
           "\U000e0041\ud800:smile:")
SHOWN = ("[bold red]x[/]\\x1b[2J\\x1b]0;pwned\\x07\\x0d\\x0a\\x9b31m\\u202eevil\\u200b\\u2066\\u2028\\U000110bd\\ufeff"
         "\\U000e0041\\ud800:smile:")
HUGE = "A" * 10_000
WIDE = "界" * 5_000  # two terminal cells each
SANDBOX_SHOWN = "[bold red]x[/]\\x1b[2J\\x1b]0;pwned\\x07\\x0d\\x0a\\x9b31m\\u202eevil\\u200b...(+13 chars)"  # 40 kept
BAD_FINDING = finding("mining", "high", 0.9, [HOSTILE, HUGE], HOSTILE, "198.51.100.20:3333",
                      mining={"pool": HOSTILE, "login": HUGE}, ssh={"client_banner": HOSTILE})


def hostile_snapshot():
    return snapshot(
        interfaces=(InterfaceView(HOSTILE, True, 1, 1, 0),),
        findings=(BAD_FINDING, dict(BAD_FINDING, kind=HOSTILE, severity=HOSTILE, score="junk", first_seen=None,
                                    evidence=HOSTILE, egress={"reason": HOSTILE, "server_name": HUGE})),
        sandboxes=(SandboxView(HOSTILE, HOSTILE, HOSTILE, HOSTILE, 1, 1, 1, Severity.HIGH, HOSTILE),),
        new_destinations=(DestinationView(T0_NS, HOSTILE, HOSTILE, (HOSTILE, HUGE, "a", "b")),),
        messages=(HOSTILE, HUGE, WIDE))


def test_hostile_strings_are_shown_literally():
    lines = lines_of(render(render_findings(snapshot(findings=(BAD_FINDING,))), width=1000))
    assert lines[1:] == [
        f"HIGH      mining  {SANDBOX_SHOWN} -> 198.51.100.20:3333/tcp  score 0.90  since 08:01:00  "
        f"client {SHOWN}  pool {SHOWN}  login {'A' * 60}...(+9940 chars)",
        f"    {SHOWN}",
        "    " + "A" * 400 + "...(+9600 chars)",  # evidence sentences kept to 400 characters
    ]


def test_hostile_finding_fields_of_the_wrong_shape_render():
    odd = dict(BAD_FINDING, kind=HOSTILE, severity=HOSTILE, score="junk", first_seen=None, evidence=HOSTILE)
    lines = lines_of(render(render_findings(snapshot(findings=(odd,))), width=1000))
    assert lines[1].startswith(f"[bold re...(+45 chars)  {SANDBOX_SHOWN}  {SANDBOX_SHOWN} -> ")
    assert lines[2] == f"    {SHOWN}"


@pytest.mark.parametrize("width", [40, 100, 400])
def test_hostile_strings_never_reach_the_terminal_raw(width):
    text = render(render_dashboard(hostile_snapshot()), width=width)
    text.encode("utf-8")  # no lone surrogate: the console could not write it
    assert "  [bold red]x[/]\\x1b[2J" in text  # markup prints as the characters it is made of (a message here)
    unsafe = [c for c in text if c != "\n" and unicodedata.category(c) in ("Cc", "Cf", "Cs", "Zl", "Zp")]
    assert unsafe == []
    lines = lines_of(text)
    assert all(cell_len(line) <= width for line in lines)
    assert len(lines) == 1 + 3 + 6 + 3 + 3 + 4  # one line per row: 10 kB strings are cut, never wrapped


@pytest.mark.parametrize("hidden", ["\u00ad", "\u061c", "\u180e", "\u2064", "\ufff9", "\U000110bd", "\U0001d173",
                                    "\U000e0001", "\udfff", "\u2029", "\x85"])
def test_invisible_code_points_are_escaped(hidden):
    text = render(render_messages(snapshot(messages=(f"a{hidden}b",))))
    assert hidden not in text
    assert f"a\\x{ord(hidden):02x}b" in text or f"a\\u{ord(hidden):04x}b" in text or f"a\\U{ord(hidden):08x}b" in text


def test_hostile_strings_in_color_output_add_no_escape_sequences():
    text = render(render_dashboard(hostile_snapshot()), width=100, color=True)
    plain = render(render_dashboard(hostile_snapshot()), width=100)
    # the only ESC bytes in the colored output are rich's own SGR codes: removing them gives the plain text
    assert re.sub("\x1b\\[[0-9;]*m", "", text) == plain


def test_run_dashboard_prints_the_last_frame_when_the_source_ends():
    frames = iter([snapshot(active_flows=1), snapshot(active_flows=2), None, snapshot(active_flows=99)])
    console = Console(file=io.StringIO(), width=100, color_system=None)
    run_dashboard(lambda: next(frames), console, refresh_s=0.001)
    text = console.file.getvalue()
    assert text.count("egressguard  ") == 1  # not a terminal: the final frame, once
    assert "flows 2 active" in text
    assert next(frames).active_flows == 99  # it stopped asking at the first None


def test_run_dashboard_ends_within_a_frame_of_stop():
    stop = threading.Event()
    calls = []

    def next_snapshot():
        calls.append(1)
        if len(calls) == 3:
            stop.set()
        return snapshot(active_flows=len(calls))

    console = Console(file=io.StringIO(), width=100, color_system=None)
    loop = threading.Thread(target=run_dashboard, args=(next_snapshot, console, 0.01, stop))
    loop.start()
    loop.join(timeout=10)
    assert not loop.is_alive()
    assert len(calls) == 3
    assert "flows 3 active" in console.file.getvalue()


def test_run_dashboard_with_stop_already_set_asks_for_nothing():
    stop = threading.Event()
    stop.set()
    console = Console(file=io.StringIO(), width=100, color_system=None)
    run_dashboard(lambda: pytest.fail("asked for a snapshot after stop"), console, refresh_s=60, stop=stop)
    assert console.file.getvalue().strip() == ""
