"""Synthetic timing for the beacon tests: series of connections and long TCP connections with bursts at chosen
times, on top of egressbuilders.Capture (hand-built frames, classic pcap). Random timings are drawn by the caller
from a seeded numpy Generator, so every capture is the same on every run."""
from __future__ import annotations

from egressbuilders import Capture
from framebuilders import TCP_ACK, TCP_FIN, TCP_PSH, TCP_SYN, tcp

SANDBOX = "10.20.0.5"


def connections(cap: Capture, starts, server: str, port: int, request: int = 300, response: int = 900,
                client: str = SANDBOX) -> None:
    """One short TCP connection (handshake, request, response, FIN) at each start time (seconds)."""
    for t in starts:
        cap.tcp_session(float(t), client, server, port, b"q" * request, b"r" * response)


def long_connection(cap: Capture, bursts, server: str, port: int, request: int = 300, response: int = 900,
                    client: str = SANDBOX, sport: int = 45000, end: float | None = None) -> None:
    """One TCP connection opened at bursts[0] - 1 s whose client sends `request` bytes at every burst time and gets
    `response` bytes back 50 ms later (sequence numbers consistent: nothing looks retransmitted); closed at `end`
    (default: 1 s after the last burst). `request`/`response` may be lists, one size per burst."""
    bursts = [float(t) for t in bursts]
    t0 = bursts[0] - 1.0
    c, s = 1000, 5000
    cap.add(t0, client, server, 6, tcp(sport, port, seq=c, flags=TCP_SYN))
    cap.add(t0 + 0.01, server, client, 6, tcp(port, sport, seq=s, ack=c + 1, flags=TCP_SYN | TCP_ACK))
    c, s = c + 1, s + 1
    cap.add(t0 + 0.02, client, server, 6, tcp(sport, port, seq=c, ack=s, flags=TCP_ACK))
    for i, t in enumerate(bursts):
        q = request[i] if isinstance(request, (list, tuple)) else request
        a = response[i] if isinstance(response, (list, tuple)) else response
        cap.add(t, client, server, 6, tcp(sport, port, b"q" * q, seq=c, ack=s, flags=TCP_ACK | TCP_PSH))
        c += q
        if a:
            cap.add(t + 0.05, server, client, 6, tcp(port, sport, b"r" * a, seq=s, ack=c, flags=TCP_ACK | TCP_PSH))
            s += a
            cap.add(t + 0.09, client, server, 6, tcp(sport, port, seq=c, ack=s, flags=TCP_ACK))
    t_end = bursts[-1] + 1.0 if end is None else end
    cap.add(t_end, client, server, 6, tcp(sport, port, seq=c, ack=s, flags=TCP_FIN | TCP_ACK))
    cap.add(t_end + 0.01, server, client, 6, tcp(port, sport, seq=s, ack=c + 1, flags=TCP_FIN | TCP_ACK))
    cap.add(t_end + 0.02, client, server, 6, tcp(sport, port, seq=c + 1, ack=s + 1, flags=TCP_ACK))
