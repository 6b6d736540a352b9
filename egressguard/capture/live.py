"""Live capture: raw frames from network interfaces, in the same Chunk layout as the capture-file readers.

Each interface gets one packet socket opened through scapy (L2ListenSocket: ETH_P_ALL, both directions) with a
TPACKET_V3 receive ring mmap'd on it; the numba walker in ring.py copies frames out of the ring into the chunk
buffer. When the ring cannot be set up, frames are read one by one with recvmsg (the slow "recv" path). scapy is
imported only inside the functions that open sockets, so `import egressguard.capture` stays fast.
"""
from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import logging
import mmap
import os
import select
import socket
import struct
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np

from egressguard.capture import ring
from egressguard.capture.files import Chunk
from egressguard.errors import CaptureError
from egressguard.schema import FRAME_DTYPE, LinkType

# Linux uapi constants (include/uapi/linux/if_packet.h, asm-generic/socket.h, linux/sockios.h, linux/if.h)
SOL_PACKET = 263
PACKET_ADD_MEMBERSHIP = 1
PACKET_MR_PROMISC = 1
PACKET_RX_RING = 5
PACKET_STATISTICS = 6
PACKET_AUXDATA = 8
PACKET_VERSION = 10
PACKET_IGNORE_OUTGOING = 23  # Linux 4.20+
TPACKET_V3 = 2
SO_ATTACH_FILTER = 26
SO_RCVBUFFORCE = 33
SCM_TIMESTAMPNS = 35
SIOCGIFFLAGS = 0x8913
SIOCGIFINDEX = 0x8933
SIOCGIFHWADDR = 0x8927
SIOCETHTOOL = 0x8946
ETHTOOL_GDRVINFO = 0x3
ETHTOOL_DRVINFO_BYTES = 196  # sizeof(struct ethtool_drvinfo) (include/uapi/linux/ethtool.h)
IFF_UP = 0x1
IFNAME_MAX = 15  # IFNAMSIZ - 1 (include/uapi/linux/if.h)
# ARPHRD_* (include/uapi/linux/if_arp.h) -> the LINKTYPE of what a SOCK_RAW packet socket delivers: devices without
# a link-layer header (tun, PPP, IP-in-IP) deliver the IP packet itself, as libpcap's DLT_RAW mapping says.
ARPHRD_LINKTYPES = {
    1: LinkType.ETHERNET,  # ARPHRD_ETHER: Ethernet, veth, bridge
    772: LinkType.ETHERNET,  # ARPHRD_LOOPBACK: Linux gives loopback frames a zeroed Ethernet header
    512: LinkType.RAW,  # ARPHRD_PPP
    519: LinkType.RAW,  # ARPHRD_RAWIP
    768: LinkType.RAW,  # ARPHRD_TUNNEL (ipip)
    769: LinkType.RAW,  # ARPHRD_TUNNEL6
    776: LinkType.RAW,  # ARPHRD_SIT
    0xFFFE: LinkType.RAW,  # ARPHRD_NONE: tun, WireGuard
}
ARPHRD_LOOPBACK = 772
DOWN_ERRNOS = (errno.ENETDOWN, errno.ENODEV, errno.ENXIO)
NEEDS_PRIVILEGE = "capturing needs root or CAP_NET_RAW (permission denied opening a packet socket)"
# Ring geometry. A block is handed to user space when full or RETIRE_MS after its first frame (the kernel's block
# retire timer), so at low rates 128 blocks buffer 128 x 20 ms of a stalled reader and at high rates each chunk
# carries whole blocks. A block must hold one snaplen frame plus its tpacket3_hdr and sockaddr_ll.
RING_BLOCKS_WANTED = 128
RING_BLOCK_MAX = 1 << 20
RETIRE_MS = 20
NOMINAL_FRAME = 2048  # tp_frame_size: only checked for consistency by TPACKET_V3, which packs frames tightly
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


class _Port:
    """One interface's packet socket with its ring (or recv fallback), state and counters."""

    def __init__(self, name: str, index: int):
        self.name, self.index = name, index
        self.scapy_sock = None
        self.raw: socket.socket | None = None
        self.ifindex = 0
        self.linktype = 0
        self.method = ""
        self.mm: mmap.mmap | None = None
        self.ring: np.ndarray | None = None
        self.ring32: np.ndarray | None = None
        self.block_size = 0
        self.cursor = np.zeros(ring.CURSOR_SLOTS, np.int64)
        self.up = False
        self.gone = False
        self.packets = self.bytes = self.drops = self.freeze_q = 0

    def release(self) -> None:
        """Unmap the ring and close the socket (the caller has read the statistics)."""
        self.ring = self.ring32 = None  # the numpy views must go before the map can close
        if self.mm is not None:
            with contextlib.suppress(BufferError, ValueError):
                self.mm.close()
            self.mm = None
        if self.scapy_sock is not None:
            with contextlib.suppress(OSError):
                self.scapy_sock.close()
        self.scapy_sock = self.raw = None


class _InterfaceDown(CaptureError):
    """The interface exists but is down, so no socket could be opened on it yet."""


@contextlib.contextmanager
def _quiet_scapy():
    """Keep scapy's import-time and socket warnings (e.g. "Unable to guess type") off the user's terminal."""
    log = logging.getLogger("scapy")
    level = log.level
    log.setLevel(logging.ERROR)
    try:
        yield
    finally:
        log.setLevel(level)


def _existing_interfaces() -> str:
    names = sorted(name for _, name in socket.if_nameindex())
    return ", ".join(names[:12]) + (f" and {len(names) - 12} more" if len(names) > 12 else "") or "none"


def _compile_bpf(name: str, bpf: str, linktype: int):
    """Compile `bpf` with libpcap (through scapy) for a link type; the caller frees it (scapy's free_filter)."""
    from scapy.arch.common import compile_filter
    from scapy.error import Scapy_Exception

    dlt = 12 if linktype == LinkType.RAW else linktype  # libpcap's DLT_RAW is 12 on Linux
    try:
        return compile_filter(bpf, linktype=dlt)
    except ImportError:
        raise CaptureError(name, "a BPF filter needs libpcap (Debian package libpcap0.8)") from None
    except Scapy_Exception as exc:
        why = str(exc).rsplit("(", 1)[-1].rstrip(")") if "(" in str(exc) else str(exc)
        raise CaptureError(name, f"bad BPF filter {bpf!r}: {why}") from None


def _attach_bpf(port: _Port, bpf: str) -> None:
    """Compile `bpf` for the port's link type and attach it to the socket."""
    from scapy.arch.common import free_filter
    from scapy.libs.structures import sock_fprog

    program = _compile_bpf(port.name, bpf, port.linktype)
    try:
        port.raw.setsockopt(socket.SOL_SOCKET, SO_ATTACH_FILTER, bytes(sock_fprog(program.bf_len, program.bf_insns)))
    finally:
        free_filter(program)


def _check_bpf(ctl: socket.socket, name: str, bpf: str) -> None:
    """Raise CaptureError now if `bpf` does not compile for the interface (one that is down, opened later)."""
    from scapy.arch.common import free_filter

    try:
        hatype = struct.unpack_from("H", fcntl.ioctl(ctl, SIOCGIFHWADDR, struct.pack("16s16x", name.encode())), 16)[0]
    except OSError:
        return
    free_filter(_compile_bpf(name, bpf, int(ARPHRD_LINKTYPES.get(hatype, LinkType.ETHERNET))))


def _setup_ring(port: _Port, ring_bytes: int, snaplen: int) -> bool:
    """Set up and map a TPACKET_V3 receive ring on the port's socket; False when the kernel refuses it."""
    need = snaplen + 4 + 128  # frame + a re-inserted VLAN tag + tpacket3_hdr and sockaddr_ll, rounded up
    block = max(mmap.PAGESIZE, 1 << (need - 1).bit_length(),
                min(RING_BLOCK_MAX, 1 << max(0, (ring_bytes // RING_BLOCKS_WANTED).bit_length() - 1)))
    blocks = max(2, ring_bytes // block)
    req = struct.pack("7I", block, blocks, NOMINAL_FRAME, block // NOMINAL_FRAME * blocks, RETIRE_MS, 0, 0)
    try:
        port.raw.setsockopt(SOL_PACKET, PACKET_VERSION, TPACKET_V3)
        port.raw.setsockopt(SOL_PACKET, PACKET_RX_RING, req)
    except OSError:
        return False
    try:
        port.mm = mmap.mmap(port.raw.fileno(), block * blocks, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
    except OSError:  # an unmapped ring would swallow every frame: take it down so recv sees them
        port.raw.setsockopt(SOL_PACKET, PACKET_RX_RING, bytes(struct.calcsize("7I")))
        return False
    port.ring = np.frombuffer(port.mm, np.uint8)
    port.ring32 = port.ring.view(np.uint32)
    port.block_size = block
    port.cursor[:] = 0
    # frames queued on the plain socket before the ring existed would keep poll() readable: discard them
    with contextlib.suppress(OSError):
        while True:
            port.raw.recv(1, socket.MSG_DONTWAIT)
    return True


def _open_port(port: _Port, bpf: str | None, snaplen: int, ring_bytes: int, promisc: bool, use_ring: bool) -> None:
    """Open the port's packet socket through scapy, attach the filter, set up the ring (or the recv path)."""
    with _quiet_scapy():
        from scapy.arch.linux import L2ListenSocket
        try:
            port.scapy_sock = L2ListenSocket(iface=port.name, promisc=False, nofilter=1)
        except PermissionError:
            raise CaptureError(port.name, NEEDS_PRIVILEGE) from None
        except ValueError:  # scapy found no interface of that name
            raise CaptureError(port.name, f"no such interface (existing: {_existing_interfaces()})") from None
        except OSError as exc:
            if exc.errno == errno.ENETDOWN:  # scapy reads the new socket, which reports the interface down
                raise _InterfaceDown(port.name, "interface is down") from None
            if exc.errno in (errno.ENODEV, errno.ENXIO):
                raise CaptureError(port.name, f"no such interface (existing: {_existing_interfaces()})") from None
            if exc.errno == errno.EPERM:
                raise CaptureError(port.name, NEEDS_PRIVILEGE) from None
            raise CaptureError(port.name, f"cannot open a packet socket: {exc.strerror or exc}") from None
    port.raw = port.scapy_sock.ins
    try:
        hatype = port.raw.getsockname()[3]
        if hatype not in ARPHRD_LINKTYPES:
            raise CaptureError(port.name, f"unsupported link type (ARPHRD {hatype}); Ethernet, veth, bridges, "
                                          "loopback, tun and IP tunnels are supported")
        port.linktype = int(ARPHRD_LINKTYPES[hatype])
        port.ifindex = socket.if_nametoindex(port.name)
        if bpf:
            _attach_bpf(port, bpf)
        if promisc or _driver(port.raw, port.name) == "bridge":
            # a bridge hands the frames it forwards between its ports to its own taps only when promiscuous
            # (br_handle_frame_finish: local_rcv when IFF_PROMISC); the membership ends with the socket
            mreq = struct.pack("iHH8s", port.ifindex, PACKET_MR_PROMISC, 0, b"")
            port.raw.setsockopt(SOL_PACKET, PACKET_ADD_MEMBERSHIP, mreq)
        if hatype == ARPHRD_LOOPBACK:  # loopback shows each packet leaving and arriving: keep one copy, as libpcap
            with contextlib.suppress(OSError):
                port.raw.setsockopt(SOL_PACKET, PACKET_IGNORE_OUTGOING, 1)
        port.method = "tpacket_v3" if use_ring and _setup_ring(port, ring_bytes, snaplen) else "recv"
        if port.method == "recv":  # the socket queue is the only buffer: give it the ring's memory
            try:
                port.raw.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, ring_bytes)
            except OSError:
                port.raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, ring_bytes)
    except OSError as exc:
        port.release()
        raise CaptureError(port.name, f"cannot set up the packet socket: {exc.strerror or exc}") from None
    except CaptureError:
        port.release()
        raise
    port.gone = False


def _driver(sock: socket.socket, name: str) -> str:
    """The interface's driver name (ETHTOOL_GDRVINFO, e.g. "bridge", "veth"); "" when it does not say."""
    info = ctypes.create_string_buffer(struct.pack("I", ETHTOOL_GDRVINFO), ETHTOOL_DRVINFO_BYTES)
    try:
        fcntl.ioctl(sock, SIOCETHTOOL, struct.pack("16sP16x", name.encode(), ctypes.addressof(info)))
    except OSError:
        return ""
    return info.raw[4:36].split(b"\0", 1)[0].decode("ascii", "replace")


def _interface_state(ctl: socket.socket, name: str) -> tuple[int, int]:
    """(ifindex, flags) of an interface in the namespace of `ctl`; (0, 0) when it does not exist."""
    req = struct.pack("16s16x", name.encode())
    try:
        index = struct.unpack_from("i", fcntl.ioctl(ctl, SIOCGIFINDEX, req), 16)[0]
        flags = struct.unpack_from("H", fcntl.ioctl(ctl, SIOCGIFFLAGS, req), 16)[0]
    except OSError:
        return 0, 0
    return index, flags


def _warm_up_ring_kernel() -> None:
    """Compile (or load from numba's cache) walk_ring now, with the argument types of real use, so that dropping
    privileges later cannot keep it from compiling."""
    dummy = np.zeros(2 * mmap.PAGESIZE, np.uint8)
    ring.walk_ring(dummy, dummy.view(np.uint32), mmap.PAGESIZE, np.zeros(ring.CURSOR_SLOTS, np.int64), 0,
                   int(LinkType.ETHERNET), 64, np.zeros(64, np.uint8), 0, np.zeros(1, FRAME_DTYPE), 0)


def _recv_frames(port: _Port, buf: np.ndarray, view: memoryview, pos: int, frames: np.ndarray, nf: int,
                 snaplen: int) -> tuple[int, int, int]:
    """The fallback path: recvmsg frames into buf until the socket is empty; same returns as ring.walk_ring."""
    wire_total = 0
    while nf < len(frames) and pos + snaplen + ring.VLAN_TAG_BYTES <= len(buf):
        try:
            n, anc, _, _ = port.raw.recvmsg_into([view[pos:pos + snaplen]], 256, socket.MSG_DONTWAIT | socket.MSG_TRUNC)
        except BlockingIOError:
            break
        except OSError as exc:
            if exc.errno in DOWN_ERRNOS:
                port.up = False
                break
            raise CaptureError(port.name, f"receive failed: {exc.strerror or exc}") from None
        ts_ns, wire, tag = time.time_ns(), n, None
        for level, kind, data in anc:
            if level == socket.SOL_SOCKET and kind == SCM_TIMESTAMPNS and len(data) >= 16:
                sec, nsec = struct.unpack_from("qq", data)
                ts_ns = sec * 1_000_000_000 + nsec
            elif level == SOL_PACKET and kind == PACKET_AUXDATA and len(data) >= 20:
                status, wire, _, _, _, tci, tpid = struct.unpack_from("IIIHHHH", data)
                if status & ring.TP_STATUS_VLAN_VALID:
                    tag = (tpid if status & ring.TP_STATUS_VLAN_TPID_VALID else ring.ETH_P_8021Q, tci)
        caplen = min(n, snaplen)
        if tag is not None and port.linktype == LinkType.ETHERNET and caplen >= ring.ETH_ADDRS_BYTES:
            at = pos + ring.ETH_ADDRS_BYTES  # put back the 802.1Q tag the kernel took out, as walk_ring does
            buf[at + 4:pos + caplen + 4] = buf[at:pos + caplen].copy()
            buf[at:at + 4] = np.frombuffer(struct.pack(">HH", *tag), np.uint8)
            caplen, wire = min(caplen + 4, snaplen), wire + 4
        frames[nf] = (pos, caplen, wire, ts_ns, port.linktype, port.index)
        pos, nf, wire_total = pos + caplen, nf + 1, wire_total + wire
    return pos, nf, wire_total


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
                    _open_port(port, self.bpf, self.snaplen, self.ring_bytes, self.promisc, self.use_ring)
                except _InterfaceDown:  # opened by _refresh_interfaces once it is up; a bad filter fails now
                    if self.bpf:
                        _check_bpf(self._ctl, port.name, self.bpf)
                port.up = port.raw is not None and bool(_interface_state(self._ctl, port.name)[1] & IFF_UP)
        except BaseException:
            self._closing = True
            self._teardown()
            raise
        if self.use_ring:
            _warm_up_ring_kernel()
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
            raw = port.raw
            if raw is None:
                return
            try:
                data = raw.getsockopt(SOL_PACKET, PACKET_STATISTICS, 12)  # tpacket_stats_v3 (8 bytes before V3)
            except OSError:
                return
            port.drops += struct.unpack_from("I", data, 4)[0]
            if len(data) >= 12:
                port.freeze_q += struct.unpack_from("I", data, 8)[0]

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
                pos, nf, wire = _recv_frames(port, self._buf, self._view, pos, self._frames, nf, self.snaplen)
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
            ifindex, flags = _interface_state(self._ctl, port.name)
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
                    _open_port(port, self.bpf, self.snaplen, self.ring_bytes, self.promisc, self.use_ring)
                except CaptureError:
                    continue
                self._generation += 1
                port.up = True


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
