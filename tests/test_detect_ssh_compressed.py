"""SSH under compression (zlib@openssh.com: dbclient's default, ssh -C) and inside a shipped agent (sshuttle): the
sizes after the login say little, so the opening is read by order, direction and timing (detect/ssh_opening.py).

Sequences are signed payload sizes (+ client / - server) and seconds, as the capture point at the sandbox sees them:
a reply from the sandbox's own program leaves within milliseconds, one from the remote side after a round trip."""
import dataclasses

import pytest

from conftest import LAB_CAPTURES
from egressguard.detect.ssh_opening import Opening, ShippedAgent, _shape_reading, shipped_agent
from egressguard.detect.ssh_tunnel import Params, SshUse, classify
from egressguard.payload.ssh import record_model
from test_detect_ssh import HS, _signals

CHACHA = record_model("chacha20-poly1305@openssh.com", "")
RTT = 0.03


def _read(events, hostkeys=False):
    """(forward, reply, session, opens) of a sequence that starts with the server's login success at t=0."""
    seq = [-28] + [size for size, _ in events]
    times = [0.0] + [t for _, t in events]
    return _shape_reading(CHACHA, seq, times, 0, list(range(1, len(seq))), hostkeys)


def test_a_session_is_opened_and_used_at_once():
    """Session open, confirmation, then the pty/exec requests at once: a session, no opens read after it."""
    forward, _, session, opens = _read([(52, 0.001), (-52, 0.001 + RTT), (60, 0.002 + RTT), (-36, 0.002 + 2 * RTT),
                                        (-300, 1.5), (36, 1.501), (-200, 1.52)])
    assert session and forward is None and opens == ()


def test_a_request_granted_and_then_nothing_is_a_remote_forward():
    """One request, a short success, then only keepalive pairs: 'tcpip-forward' (ssh -R), parked."""
    forward, reply, session, opens = _read([(68, 0.001), (-44, 0.001 + RTT), (60, 5.0), (-36, 5.0 + RTT),
                                            (36, 10.0), (-36, 10.0 + RTT)])
    assert (forward, reply, session) == (68, 44, False)
    assert opens == ()  # the client's keepalives are answered by the server, after a round trip: no channel


def test_a_channel_to_a_service_that_speaks_first_is_a_forward():
    """A jump (-J, -W, dbclient multi-hop): the server's answer carries the next host's banner."""
    _, _, session, opens = _read([(76, 0.001), (-148, 0.001 + RTT), (404, 0.002 + RTT), (-316, 0.002 + 2 * RTT)])
    assert not session and [(o.by_client, o.kind) for o in opens] == [(True, "tcp")]


def test_openssh_host_keys_after_the_login_are_not_taken_for_data():
    """sshd sends 'hostkeys-00@openssh.com' unasked right after the login: for an OpenSSH server it is set aside,
    and the session open behind it is still a session."""
    events = [(52, 0.001), (-240, 0.003), (-72, 0.001 + RTT), (60, 0.002 + RTT), (-36, 0.002 + 2 * RTT)]
    assert _read(events, hostkeys=True)[2] is True
    assert _read(events, hostkeys=False)[3], "without the set-aside, the host keys read as a service speaking first"


def test_channels_opened_from_outside_are_confirmed_at_once_by_the_sandbox():
    """After a pause the remote side leads, the sandbox's program confirms within milliseconds and data follows:
    -R in use. A keepalive from the server is answered as fast, but nothing follows it."""
    quiet_forward = [(68, 0.001), (-44, 0.001 + RTT)]
    pull = [(-100, 1.0), (68, 1.001), (-116, 1.001 + RTT), (1448, 1.032), (1448, 1.032), (52, 1.033)]
    keepalive = [(-36, 3.0), (36, 3.001)]
    _, _, _, opens = _read(quiet_forward + pull + keepalive + [(-36, 6.0), (36, 6.001)])
    assert [(o.by_client, o.at) for o in opens] == [(False, 1.0)]


def test_channels_the_sandbox_opens_go_on_at_once_but_typing_does_not():
    """-L: the sandbox leads, the server confirms after a round trip, the sandbox's program sends the request it
    held at once. A person typing sends the next key long after the echo."""
    fetch = [(76, 0.7), (-44, 0.7 + RTT), (108, 0.701 + RTT), (-1448, 0.71 + 2 * RTT), (-396, 0.71 + 2 * RTT)]
    _, _, _, opens = _read(fetch)
    assert [o.by_client for o in opens] == [True]
    typing = [(36, 0.7), (-36, 0.7 + RTT), (36, 0.85 + RTT), (-36, 0.85 + 2 * RTT), (36, 1.1), (-36, 1.1 + RTT)]
    assert _read(typing)[3] == ()


def _opening(login_at):
    return Opening(CHACHA, False, False, True, None, None, False, True, (), login_at, False)


def test_a_program_shipped_down_a_session_then_serving_requests_is_an_agent():
    """sshuttle's shape: ~17 KB sent down the session right after the login before any answer, then short requests
    after pauses answered in bulk."""
    sizes = [-28, 112, -264, -72, 268, -72] + [1448] * 12 + [-52, -52, 52]
    times = [0.0, 0.001, 0.003, 0.04, 0.041, 0.05] + [0.06] * 12 + [0.3, 0.5, 0.51]
    for start in (2.0, 2.6, 3.4):
        sizes += [60, 132, -1448, -588, -44, 44]
        times += [start, start + 0.001, start + 0.012, start + 0.012, start + 0.013, start + 0.014]
    agent = shipped_agent(sizes, times, _opening(0.0))
    assert agent is not None and agent.shipped == 112 + 268 + 12 * 1448 and agent.served == 3
    assert agent.asked == 192 and agent.answered == 2080


@pytest.mark.parametrize("change", ["server_speaks_first", "slow_shipment", "big_requests", "one_exchange"])
def test_no_agent_without_every_part_of_the_shape(change):
    sizes = [-28, 112, -72, 268] + [1448] * 12
    times = [0.0, 0.001, 0.04, 0.041] + [0.06] * 12
    if change == "server_speaks_first":  # git push, rsync: the far side's program talks before the bulk
        sizes[2], times[2] = -2600, 0.04
    if change == "slow_shipment":  # a person pasting, long after the login
        times = times[:4] + [1.5] * 12
    exchanges = 1 if change == "one_exchange" else 3
    for n in range(exchanges):
        lead = [60, 9000] if change == "big_requests" else [60, 132]  # ansible's module, sent for each task
        sizes += lead + [-1448, -588]
        times += [2.0 + n, 2.001 + n, 2.012 + n, 2.012 + n]
    assert shipped_agent(sizes, times, _opening(0.0)) is None


FOLDER = LAB_CAPTURES / "ssh-implementations"


def _findings(name):
    from egressguard.pipeline import Analyzer, FlowsReady
    out = []
    for event in Analyzer().analyze(str(FOLDER / name)):
        if isinstance(event, FlowsReady):
            out += [f for f in event.result.findings if str(f.kind) in ("reverse_ssh_tunnel", "ssh_tunnel")]
    return out


@pytest.mark.parametrize("name,kind,use,says", [
    ("dropbear-reverse-parked-443.pcap", "reverse_ssh_tunnel", "parked", "by its place and answer"),
    ("openssh-reverse-http-compressed.pcap", "reverse_ssh_tunnel", "pull", "confirmed by a program in the sandbox"),
    ("dropbear-local-forward.pcap", "ssh_tunnel", "forward", "the order of channels opened from the sandbox"),
    ("dropbear-multihop-jump.pcap", "ssh_tunnel", "forward", "a service that speaks first"),
    ("sshuttle-vpn.pcap", "ssh_tunnel", "forward", "a program shipped to run on the far side"),
])
def test_compressed_and_shipped_tunnels_say_how_they_were_read(name, kind, use, says):
    found = _findings(name)
    assert found and {str(f.kind) for f in found} == {kind}
    assert {f.details["ssh"]["tunnel_use"] for f in found} == {use}
    assert all(any(says in e for e in f.evidence) for f in found), found[0].evidence


def test_a_shipped_agent_survives_the_echoes_of_its_mux_but_not_typing():
    """sshuttle's mux frames (64 B under ssh -C) and the far side's short answers pair up like keystrokes: a few such
    pairs (4 in a CI recording) must not hide the agent when compression leaves no size model; as many as typing
    makes do."""
    agent = ShippedAgent(16496, 4, 64, 4592)
    hs = dataclasses.replace(HS, compression="zlib@openssh.com")
    mux = _signals(keystroke=None, echo_fwd=4, echo_rev=3, agent=agent, bytes_fwd=40_000, bytes_rev=900_000)
    assert classify(hs, mux).use is SshUse.TUNNEL
    typed = dataclasses.replace(mux, echo_fwd=Params().min_echo_pairs_unmodelled + 5)
    assert classify(hs, typed).use is not SshUse.TUNNEL
    modelled = dataclasses.replace(mux, keystroke=36, echo_fwd=Params().min_echo_pairs)
    assert classify(HS, modelled).use is not SshUse.TUNNEL
