"""Packet sockets for live capture: one per interface, opened through scapy, with a BPF filter and a TPACKET_V3
receive ring mmap'd on it (or one recvmsg per frame when the kernel refuses the ring), and the interface ioctls.

scapy is imported only inside the functions that open sockets, so `import egressguard.capture` stays fast.
"""
from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import logging
import mmap
import socket
import struct
import time

import numpy as np

from egressguard.capture import ring
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


class PacketSocket:
    """One interface's packet socket with its ring (or the recv path), as open_packet_socket left it."""

    def __init__(self, name: str, index: int):
        self.name, self.index = name, index  # index: the interface's position in the capture's list
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

    def read_statistics(self) -> tuple[int, int]:
        """Kernel drops and ring-full counts since the last read (the kernel resets them); (0, 0) when closed."""
        if self.raw is None:
            return 0, 0
        try:
            data = self.raw.getsockopt(SOL_PACKET, PACKET_STATISTICS, 12)  # tpacket_stats_v3 (8 bytes before V3)
        except OSError:
            return 0, 0
        return struct.unpack_from("I", data, 4)[0], (struct.unpack_from("I", data, 8)[0] if len(data) >= 12 else 0)


class InterfaceDown(CaptureError):
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


def _attach_bpf(port: PacketSocket, bpf: str) -> None:
    """Compile `bpf` for the port's link type and attach it to the socket."""
    from scapy.arch.common import free_filter
    from scapy.libs.structures import sock_fprog

    program = _compile_bpf(port.name, bpf, port.linktype)
    try:
        port.raw.setsockopt(socket.SOL_SOCKET, SO_ATTACH_FILTER, bytes(sock_fprog(program.bf_len, program.bf_insns)))
    finally:
        free_filter(program)


def check_bpf(ctl: socket.socket, name: str, bpf: str) -> None:
    """Raise CaptureError now if `bpf` does not compile for the interface (one that is down, opened later)."""
    from scapy.arch.common import free_filter

    try:
        hatype = struct.unpack_from("H", fcntl.ioctl(ctl, SIOCGIFHWADDR, struct.pack("16s16x", name.encode())), 16)[0]
    except OSError:
        return
    free_filter(_compile_bpf(name, bpf, int(ARPHRD_LINKTYPES.get(hatype, LinkType.ETHERNET))))


def _setup_ring(port: PacketSocket, ring_bytes: int, snaplen: int) -> bool:
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


def open_packet_socket(port: PacketSocket, bpf: str | None, snaplen: int, ring_bytes: int, promisc: bool,
                       use_ring: bool) -> None:
    """Open the port's packet socket through scapy, attach the filter, set up the ring (or the recv path).

    Args:
        port: a closed PacketSocket; filled in (raw, linktype, ifindex, method, ring), released again on failure.
        bpf: filter expression (tcpdump syntax) or None; snaplen: longest part of a frame kept.
        ring_bytes: memory of the ring (or of the socket queue on the recv path).
        promisc: join PACKET_MR_PROMISC (bridges always do); use_ring: False takes the recv path.
    Raises:
        InterfaceDown: the interface is down (open it again once it is up).
        CaptureError: no such interface, no privilege, an unsupported link type, a bad filter, a socket error.
    """
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
                raise InterfaceDown(port.name, "interface is down") from None
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


def _driver(sock: socket.socket, name: str) -> str:
    """The interface's driver name (ETHTOOL_GDRVINFO, e.g. "bridge", "veth"); "" when it does not say."""
    info = ctypes.create_string_buffer(struct.pack("I", ETHTOOL_GDRVINFO), ETHTOOL_DRVINFO_BYTES)
    try:
        fcntl.ioctl(sock, SIOCETHTOOL, struct.pack("16sP16x", name.encode(), ctypes.addressof(info)))
    except OSError:
        return ""
    return info.raw[4:36].split(b"\0", 1)[0].decode("ascii", "replace")


def interface_state(ctl: socket.socket, name: str) -> tuple[int, int]:
    """(ifindex, flags) of an interface in the namespace of `ctl`; (0, 0) when it does not exist."""
    req = struct.pack("16s16x", name.encode())
    try:
        index = struct.unpack_from("i", fcntl.ioctl(ctl, SIOCGIFINDEX, req), 16)[0]
        flags = struct.unpack_from("H", fcntl.ioctl(ctl, SIOCGIFFLAGS, req), 16)[0]
    except OSError:
        return 0, 0
    return index, flags


def warm_up_ring_kernel() -> None:
    """Compile (or load from numba's cache) walk_ring now, with the argument types of real use, so that dropping
    privileges later cannot keep it from compiling."""
    dummy = np.zeros(2 * mmap.PAGESIZE, np.uint8)
    ring.walk_ring(dummy, dummy.view(np.uint32), mmap.PAGESIZE, np.zeros(ring.CURSOR_SLOTS, np.int64), 0,
                   int(LinkType.ETHERNET), 64, np.zeros(64, np.uint8), 0, np.zeros(1, FRAME_DTYPE), 0)


def recv_frames(port: PacketSocket, buf: np.ndarray, view: memoryview, pos: int, frames: np.ndarray, nf: int,
                snaplen: int) -> tuple[int, int, int, bool]:
    """The fallback path: recvmsg frames into buf until the socket is empty; ring.walk_ring's returns, and whether
    the interface went down."""
    wire_total, down = 0, False
    while nf < len(frames) and pos + snaplen + ring.VLAN_TAG_BYTES <= len(buf):
        try:
            n, anc, _, _ = port.raw.recvmsg_into([view[pos:pos + snaplen]], 256, socket.MSG_DONTWAIT | socket.MSG_TRUNC)
        except BlockingIOError:
            break
        except OSError as exc:
            if exc.errno in DOWN_ERRNOS:
                down = True
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
    return pos, nf, wire_total, down

