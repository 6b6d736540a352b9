"""Live capture: raw frames from network interfaces, in the same Chunk layout as the capture-file readers.

Each interface gets one packet socket (packet_socket.py: opened through scapy, TPACKET_V3 ring or recvmsg); the
numba walker in ring.py copies frames out of the ring into the chunk buffer. Here: the chunk loop, polling, the
interface state checks that reopen a socket when an interface comes (back) up, and the counters.
"""
from __future__ import annotations

import contextlib
import os
import select
import socket
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np

from egressguard.capture import ring
from egressguard.capture.files import Chunk
from egressguard.capture.packet_socket import (DOWN_ERRNOS, IFF_UP, InterfaceDown, PacketSocket, check_bpf,
                                               interface_state, open_packet_socket, recv_frames,
                                               warm_up_ring_kernel)
from egressguard.errors import CaptureError
from egressguard.schema import FRAME_DTYPE

IFNAME_MAX = 15  # IFNAMSIZ - 1 (include/uapi/linux/if.h)
CHUNK_BUF_MAX = 32 << 20
STATE_CHECK_S = 0.5  # longest time between two interface state checks (ioctl by name: cheap)


@dataclass
class InterfaceCounters:
    """Counters of one capture interface, cumulative since open."""

    name: str
    up: bool  # the interface exists and is IFF_UP
    packets: int  # frames received
    bytes: int  # wire bytes of those frames
    kernel_drops: int  # PACKET_STATISTICS tp_drops (the kernel resets them on each read; summed here)
    freeze_q: int = 0  # TPACKET_V3 tp_freeze_q_cnt: times the ring was full
    method: str = ""  # "tpacket_v3" (memory-mapped ring) or "recv" (one recvmsg per frame)


class _Port(PacketSocket):
    """One capture interface: its packet socket, whether it is up (or gone), and its counters."""

    def __init__(self, name: str, index: int):
        super().__init__(name, index)
        self.up = False
        self.gone = False
        self.packets = self.bytes = self.drops = self.freeze_q = 0


class LiveCapture:
    """Raw frames from one or more interfaces (a bridge, its veth ports, any interface), in the Chunk layout of the
    capture-file readers (buf uint8 array + FRAME_DTYPE rows), so the same decode and flow kernels run on them.

    Args:
        interfaces: interface names; frames["iface"] is the index into this list.
        bpf: optional BPF filter expression (tcpdump syntax), applied in the kernel.
        snaplen: longest part of a frame kept.
        ring_bytes: memory of each interface's receive ring.
        chunk_frames: most frames per chunk.
        promisc: put the interfaces into promiscuous mode while capturing.
        use_ring: False forces the slower recvmsg path (tests, kernels without TPACKET_V3).
    """

    def __init__(self, interfaces: Sequence[str], bpf: str | None = None, snaplen: int = 65535,
                 ring_bytes: int = 32 << 20, chunk_frames: int = 1 << 16, promisc: bool = False,
                 use_ring: bool = True):
        if not interfaces:
            raise CaptureError("live capture", "no interface given")
        for name in interfaces:
            if (not isinstance(name, str) or not 0 < len(name.encode()) <= IFNAME_MAX or name in (".", "..")
                    or any(c == "/" or c.isspace() or not c.isprintable() for c in name)):
                raise CaptureError(repr(name), f"not an interface name (1-{IFNAME_MAX} bytes, no '/' or spaces)")
            if list(interfaces).count(name) > 1:
                raise CaptureError(name, "interface given twice")
        self.interfaces = list(interfaces)
        self.bpf, self.promisc, self.use_ring = bpf, promisc, use_ring
        self.snaplen = min(max(int(snaplen), 64), 262144)
        self.ring_bytes = max(int(ring_bytes), 1 << 20)
        self.chunk_frames = max(int(chunk_frames), 1)
        self._ports: list[_Port] = []
        self._ctl: socket.socket | None = None
        self._wake: tuple[int, int] | None = None
        self._closing = False
        self._busy = False  # chunks() is inside a ring walk, poll or reopen (not suspended at a yield)
        self._teardown_lock = threading.Lock()
        # guards the counters and the fds close() and _teardown() share; re-entrant because close() may run in a
        # signal handler on the thread that holds it
        self._lock = threading.RLock()
        self._generation = 0  # bumped when a port's socket changes, so the poll set is rebuilt
        self._rotate = 0
        self._next_check = 0.0

    def __enter__(self) -> "LiveCapture":
        self.open()
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def open(self) -> None:
        """Open one packet socket per interface; raises CaptureError naming the interface and the problem."""
        if self._ports and not self._closing:
            return
        self._closing = False
        self._teardown_lock = threading.Lock()
        self._ports = [_Port(name, i) for i, name in enumerate(self.interfaces)]
        self._ctl = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)  # ioctls by name, in this namespace
        self._wake = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        try:
            for port in self._ports:
                try:
                    open_packet_socket(port, self.bpf, self.snaplen, self.ring_bytes, self.promisc, self.use_ring)
                except InterfaceDown:  # opened by _refresh_interfaces once it is up; a bad filter fails now
                    if self.bpf:
                        check_bpf(self._ctl, port.name, self.bpf)
                port.up = port.raw is not None and bool(interface_state(self._ctl, port.name)[1] & IFF_UP)
        except BaseException:
            self._closing = True
            self._teardown()
            raise
        if self.use_ring:
            warm_up_ring_kernel()
        buf_bytes = min(CHUNK_BUF_MAX, max(self.chunk_frames * 2048, 4 * (self.snaplen + 4)))
        self._buf = np.zeros(max(buf_bytes, 4 * (self.snaplen + 4)), np.uint8)
        self._view = memoryview(self._buf)
        self._frames = np.zeros(self.chunk_frames, FRAME_DTYPE)

    def chunks(self, timeout_s: float = 0.1) -> Iterator[Chunk]:
        """Yield chunks until close(): whatever arrived, and an empty chunk at least every timeout_s.

        A chunk is valid until the next one is requested. Raises CaptureError on an unexpected socket error.
        """
        if self._closing:
            return
        if not self._ports:
            self.open()
        timeout_s = max(float(timeout_s), 0.001)
        poller, generation = None, -1
        deadline = time.monotonic() + timeout_s
        try:
            while True:
                self._busy = True
                if self._closing:
                    return
                now = time.monotonic()
                if now >= self._next_check:
                    self._refresh_interfaces()
                    self._next_check = now + min(timeout_s, STATE_CHECK_S)
                n = self._collect()
                if n or now >= deadline:
                    self._busy = False
                    yield Chunk(self._buf, self._frames[:n])
                    deadline = time.monotonic() + timeout_s
                    continue
                if generation != self._generation:
                    poller, generation = self._poller(), self._generation
                for fd, events in poller.poll(max(1, int((deadline - now) * 1000) + 1)):
                    if fd == self._wake[0]:
                        with contextlib.suppress(OSError):
                            os.read(fd, 64)
                    elif events & (select.POLLERR | select.POLLNVAL):
                        self._socket_error(fd)
        finally:
            self._busy = False
            if self._closing:
                self._teardown()

    def interface_stats(self) -> list[InterfaceCounters]:
        """Counters of every interface, in the order given; reads (and sums) the kernel's drop counters."""
        out = []
        for port in self._ports:
            self._read_stats(port)
            out.append(InterfaceCounters(port.name, port.up, port.packets, port.bytes, port.drops, port.freeze_q,
                                         port.method))
        return out

    def close(self) -> None:
        """Stop capturing; safe from a signal handler or another thread (a running chunks() then ends)."""
        self._closing = True
        with self._lock, contextlib.suppress(OSError):
            if self._wake is not None:
                os.write(self._wake[1], b"x")
        if not self._busy:
            self._teardown()

    def _teardown(self) -> None:
        if not self._teardown_lock.acquire(blocking=False):
            return  # another thread is tearing down, or it is done
        for port in self._ports:
            self._read_stats(port)
            port.release()
            port.up = False
        if self._ctl is not None:
            self._ctl.close()
            self._ctl = None
        with self._lock:
            for fd in self._wake or ():
                with contextlib.suppress(OSError):
                    os.close(fd)
            self._wake = None

    def _read_stats(self, port: _Port) -> None:
        with self._lock:
            drops, freeze_q = port.read_statistics()
            port.drops += drops
            port.freeze_q += freeze_q

    def _poller(self) -> select.poll:
        poller = select.poll()
        poller.register(self._wake[0], select.POLLIN)
        for port in self._ports:
            if port.raw is not None:
                poller.register(port.raw.fileno(), select.POLLIN | select.POLLERR)
        return poller

    def _collect(self) -> int:
        """Move everything ready on every port into the chunk buffer (ports in rotating order); frames collected."""
        pos = nf = 0
        k = len(self._ports)
        self._rotate = (self._rotate + 1) % k
        for j in range(k):
            port = self._ports[(self._rotate + j) % k]
            start = nf
            if port.ring is not None:
                if not port.ring32[(int(port.cursor[ring.CUR_BLOCK]) * port.block_size + ring.BLOCK_STATUS) >> 2] & 1:
                    continue
                pos, nf, wire = ring.walk_ring(port.ring, port.ring32, port.block_size, port.cursor, port.index,
                                               port.linktype, self.snaplen, self._buf, pos, self._frames, nf)
            elif port.raw is not None:
                pos, nf, wire, down = recv_frames(port, self._buf, self._view, pos, self._frames, nf, self.snaplen)
                if down:
                    port.up = False
            else:
                continue
            port.packets += nf - start
            port.bytes += int(wire)
        return nf

    def _socket_error(self, fd: int) -> None:
        port = next((p for p in self._ports if p.raw is not None and p.raw.fileno() == fd), None)
        if port is None:
            return
        err = port.raw.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if err in DOWN_ERRNOS:  # the interface went down or away: say so, look again soon
            port.up = False
            self._next_check = 0.0
        elif err:
            raise CaptureError(port.name, f"capture socket failed: {os.strerror(err)}")

    def _refresh_interfaces(self) -> None:
        """Update each port's up state; open a socket for an interface that came back or came up."""
        for port in self._ports:
            ifindex, flags = interface_state(self._ctl, port.name)
            if ifindex == 0:
                port.up, port.gone = False, True
                continue
            if port.raw is not None and not port.gone and ifindex == port.ifindex:
                port.up = bool(flags & IFF_UP)
                continue
            # deleted and re-created (a deleted interface unbinds its sockets for good: packet_notifier), or down
            # when it was first opened: a new socket is needed, and can be bound once the interface is up
            if port.raw is not None:
                self._read_stats(port)
                port.release()
                self._generation += 1
            port.up = False
            if flags & IFF_UP:
                try:
                    open_packet_socket(port, self.bpf, self.snaplen, self.ring_bytes, self.promisc, self.use_ring)
                except CaptureError:
                    continue
                self._generation += 1
                port.up, port.gone = True, False


def bridge_ports(bridge: str) -> dict[int, str]:
    """MAC address (int, low 48 bits) -> name of the bridge port it was learned on; {} when not a bridge.

    Reads /sys/class/net/BRIDGE/brforward (struct __fdb_entry records, include/uapi/linux/if_bridge.h) and
    brif/*/port_no. Entries for the host's own addresses (is_local) are left out: no sandbox sits behind them.
    """
    if not bridge or "/" in bridge or bridge in (".", ".."):
        return {}
    base = Path("/sys/class/net") / bridge
    try:
        table = (base / "brforward").read_bytes()
        numbers = {int((port / "port_no").read_text(), 16): port.name for port in (base / "brif").iterdir()}
    except (OSError, ValueError):
        return {}
    out = {}
    for off in range(0, len(table) - 15, 16):  # mac[6], port_no u8, is_local u8, ageing u32, port_hi u8, pad
        name = numbers.get(table[off + 6] | table[off + 12] << 8)
        if name is not None and not table[off + 7]:
            out[int.from_bytes(table[off:off + 6], "big")] = name
    return out


def drop_privileges(user: str) -> None:
    """Switch to `user` (a name or a uid) for good, after the capture sockets are open.

    Raises:
        CaptureError: unknown user, root given as the user, not permitted, or root could be regained afterwards.
    """
    import pwd

    source = f"user {user}"
    try:
        entry = pwd.getpwnam(str(user))
        uid, gid = entry.pw_uid, entry.pw_gid
    except KeyError:
        if not str(user).isdigit():
            raise CaptureError(source, "no such user") from None
        uid = int(user)
        try:
            gid = pwd.getpwuid(uid).pw_gid
        except KeyError:
            gid = uid  # a bare uid without a passwd entry (containers): its own group
    if uid == 0:
        raise CaptureError(source, "is root: name an unprivileged user to run as")
    try:
        os.setgroups([])
        os.setgid(gid)
        os.setuid(uid)
    except PermissionError:
        raise CaptureError(source, "not permitted to switch to it (needs root, or CAP_SETUID and CAP_SETGID)") from None
    try:
        os.setuid(0)
    except PermissionError:
        pass
    else:
        raise CaptureError(source, "root could be regained after switching; refusing to go on")
    if set(os.getresuid()) != {uid} or set(os.getresgid()) != {gid} or os.getgroups():
        raise CaptureError(source, "the switch left other ids in place; refusing to go on")
