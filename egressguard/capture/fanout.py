"""Kernel fanout for `watch --workers N`: the N packet sockets of one interface form one PACKET_FANOUT group whose
classic-BPF program sends every frame of one sandbox to the same member, and a LiveCapture that reads an inherited
member socket instead of opening its own.

Why by sandbox and not by 5-tuple: DNS binding, mining's pair memory, unexpected-destination aggregation, DNS/ICMP
tunnel aggregation and beaconing all need every flow of one sandbox in one engine (research/scale-and-ecosystem.md
1). The program (PACKET_FANOUT_CBPF, packet(7); the kernel runs it and takes its return value modulo the number of
members, net/packet/af_packet.c fanout_demux_bpf) picks the sandbox-side address of an IPv4 or IPv6 packet:

  1. the source is a service address (the watched interfaces' own addresses: the gateway; the rules' `resolvers`
     and `host_addresses`): the destination;
  2. the destination is a service address: the source;
  3. the source is inside the sandbox networks (the rules' `sandbox_networks`, default private and CGNAT): the
     source, or when the destination is inside too (sandbox to sandbox) the smaller of the two, so that both
     directions agree;
  4. otherwise (from outside): the destination;

and returns a mix of its last 32 bits (the IPv4 address, or the IPv6 interface identifier's low half). Anything else
(ARP, PPPoE, frames whose VLAN tag the kernel did not take out) goes to member 0. Addresses are read relative to the
network header (SKF_NET_OFF, linux/filter.h), so frames received and frames sent by the host are read alike.

The parent process opens every member socket and keeps it open for the whole run, so a member's index in the group
(its position in the kernel's array, in the order the sockets joined) never changes: a worker that dies leaves its
socket in the group, its ring fills meanwhile, and its successor resumes reading the same ring.
"""
from __future__ import annotations

import contextlib
import ctypes
import errno
import ipaddress
import mmap
import os
import socket
import struct
import threading
from dataclasses import dataclass
from typing import Iterable, Sequence

import numpy as np

from egressguard.capture import ring
from egressguard.capture.live import IFNAME_MAX, LiveCapture, _Port
from egressguard.capture.packet_socket import (IFF_UP, SOL_PACKET, PacketSocket, interface_state, open_packet_socket,
                                               warm_up_ring_kernel)
from egressguard.errors import CaptureError
from egressguard.schema import FRAME_DTYPE

# include/uapi/linux/if_packet.h
PACKET_FANOUT = 18
PACKET_FANOUT_DATA = 22  # Linux 4.3+: the group's BPF program (struct sock_fprog for CBPF)
PACKET_FANOUT_CBPF = 6
PACKET_FANOUT_FLAG_UNIQUEID = 0x2000  # Linux 4.14+: the kernel picks a group id no other group uses
# classic BPF (include/uapi/linux/bpf_common.h, filter.h); every instruction is struct sock_filter {u16 code; u8 jt;
# u8 jf; u32 k}. Loads at SKF_NET_OFF + n read byte n of the network header, SKF_AD_OFF + SKF_AD_PROTOCOL reads
# skb->protocol in host order (net/core/filter.c).
SKF_AD_PROTOCOL_K = (-0x1000 + 0) & 0xFFFFFFFF
SKF_NET_OFF = -0x100000
LD_W_ABS, LD_H_ABS, LD_MEM, LDX_MEM, ST = 0x20, 0x28, 0x60, 0x61, 0x02
AND_K, RSH_K, XOR_X = 0x54, 0x74, 0xAC
JA, JEQ_K, JGT_X = 0x05, 0x15, 0x2D
TAX, RET_A, RET_K = 0x07, 0x16, 0x06
BPF_MAXINSNS = 4096
ETH_P_IP, ETH_P_IPV6 = 0x0800, 0x86DD
V4_SRC, V4_DST = 12, 16  # byte offsets in the IPv4 header (RFC 791 3.1)
V6_SRC, V6_DST = 8, 24  # byte offsets in the IPv6 header (RFC 8200 3)
# the private and CGNAT ranges the rules treat as sandboxes when `sandbox_networks` is unset (policy/addrclass.py)
DEFAULT_INSIDE = ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "100.64.0.0/10", "fc00::/7")
V4_MAPPED = 0xFFFF << 32
BLOCK_SEQ = 24  # struct tpacket_block_desc: 8 bytes, then tpacket_hdr_v1 {status, num_pkts, offset, blk_len, seq_num}


class _Asm:
    """A classic-BPF assembler with labels; conditional jumps only skip one instruction (their 8-bit offsets can
    never overflow), far jumps are JA with a 32-bit offset."""

    def __init__(self):
        self.code: list[list] = []
        self.labels: dict[str, int] = {}
        self._n = 0

    def op(self, code: int, k: int = 0, jt: int = 0, jf: int = 0) -> None:
        self.code.append([code, jt, jf, k & 0xFFFFFFFF, None])

    def ja(self, label: str) -> None:
        self.code.append([JA, 0, 0, 0, label])

    def label(self, name: str) -> None:
        self.labels[name] = len(self.code)

    def fresh(self) -> str:
        self._n += 1
        return f"_l{self._n}"

    def assemble(self) -> list[tuple[int, int, int, int]]:
        out = []
        for i, (code, jt, jf, k, target) in enumerate(self.code):
            if target is not None:
                k = self.labels[target] - i - 1
            out.append((code, jt, jf, k))
        if len(out) > BPF_MAXINSNS:
            raise ValueError(f"shard program of {len(out)} instructions exceeds BPF_MAXINSNS ({BPF_MAXINSNS}): "
                             "fewer sandbox networks or service addresses")
        return out


def _networks(ranges: Iterable[tuple[int, int]]) -> tuple[list, list]:
    """Storage-form inclusive ranges (IPv4 mapped, netaddr.py) as (IPv4 networks, IPv6 networks)."""
    v4, v6 = [], []
    for first, last in ranges:
        lo, hi = max(first, V4_MAPPED), min(last, V4_MAPPED | 0xFFFFFFFF)
        if lo <= hi:
            v4 += ipaddress.summarize_address_range(ipaddress.IPv4Address(lo & 0xFFFFFFFF),
                                                    ipaddress.IPv4Address(hi & 0xFFFFFFFF))
        if first < V4_MAPPED or last > V4_MAPPED | 0xFFFFFFFF:
            v6 += ipaddress.summarize_address_range(ipaddress.IPv6Address(first), ipaddress.IPv6Address(last))
    return list(ipaddress.collapse_addresses(v4)), list(ipaddress.collapse_addresses(v6))


def _match(asm: _Asm, slot: int, words: int, nets, target: str) -> None:
    """Jump to `target` when the address in scratch slots slot..slot+words-1 lies in one of `nets`."""
    for net in nets:
        if net.prefixlen == 0:
            asm.ja(target)
            return
        value, bits = int(net.network_address), net.max_prefixlen
        miss = asm.fresh()
        for w in range(-(-net.prefixlen // 32)):
            keep = min(32, net.prefixlen - 32 * w)
            word = (value >> (bits - 32 * (w + 1))) & 0xFFFFFFFF
            mask = (0xFFFFFFFF << (32 - keep)) & 0xFFFFFFFF
            asm.op(LD_MEM, slot + w)
            if mask != 0xFFFFFFFF:
                asm.op(AND_K, mask)
            asm.op(JEQ_K, word, jt=1)  # equal: skip the jump to `miss`
            asm.ja(miss)
        asm.ja(target)
        asm.label(miss)


def _family(asm: _Asm, tag: str, src: int, dst: int, words: int, services, inside) -> None:
    """The rule of the module docstring for one address family; src/dst: header offsets; words: 1 or 4."""
    for w in range(words):  # M[0..words-1] = source, M[words..2*words-1] = destination
        asm.op(LD_W_ABS, SKF_NET_OFF + src + 4 * w)
        asm.op(ST, w)
        asm.op(LD_W_ABS, SKF_NET_OFF + dst + 4 * w)
        asm.op(ST, words + w)
    key_src, key_dst, src_inside = f"{tag}_src", f"{tag}_dst", f"{tag}_inside"
    _match(asm, 0, words, services, key_dst)
    _match(asm, words, words, services, key_src)
    _match(asm, 0, words, inside, src_inside)
    asm.ja(key_dst)
    asm.label(src_inside)
    both = f"{tag}_both"
    _match(asm, words, words, inside, both)
    asm.ja(key_src)
    asm.label(both)  # sandbox to sandbox: the smaller last word, the same for both directions
    asm.op(LDX_MEM, words - 1)
    asm.op(LD_MEM, 2 * words - 1)
    asm.op(JGT_X, 0, jt=0, jf=1)
    asm.ja(key_src)
    asm.label(key_dst)
    asm.op(LD_MEM, 2 * words - 1)
    asm.ja("mix")
    asm.label(key_src)
    asm.op(LD_MEM, words - 1)
    asm.ja("mix")


def shard_program(services: Iterable[tuple[int, int]], inside: Iterable[tuple[int, int]]) -> list[tuple]:
    """The fanout program: (code, jt, jf, k) instructions (see the module docstring for the rule).

    Args:
        services: storage-form inclusive ranges (netaddr.py) of the gateway, resolver and host addresses.
        inside: storage-form ranges of the sandbox networks (DEFAULT_INSIDE when the rules set none).
    """
    s4, s6 = _networks(services)
    i4, i6 = _networks(inside)
    asm = _Asm()
    asm.op(LD_H_ABS, SKF_AD_PROTOCOL_K)
    asm.op(JEQ_K, ETH_P_IP, jt=0, jf=1)
    asm.ja("v4")
    asm.op(JEQ_K, ETH_P_IPV6, jt=0, jf=1)
    asm.ja("v6")
    asm.op(RET_K, 0)
    asm.label("v4")
    _family(asm, "v4", V4_SRC, V4_DST, 1, s4, i4)
    asm.label("v6")
    _family(asm, "v6", V6_SRC, V6_DST, 4, s6, i6)
    asm.label("mix")  # fold the high bytes into the low ones: a ^= a >> 16; a ^= a >> 8
    for shift in (16, 8):
        asm.op(TAX)
        asm.op(RSH_K, shift)
        asm.op(XOR_X)
    asm.op(RET_A)
    return asm.assemble()


def shard_mix(key: int) -> int:
    """What the program returns for a sandbox-side key (the address's last 32 bits); the kernel takes it modulo the
    number of members."""
    key ^= key >> 16
    return key ^ (key >> 8)


def default_inside() -> list[tuple[int, int]]:
    """Storage-form ranges of DEFAULT_INSIDE."""
    out = []
    for text in DEFAULT_INSIDE:
        net = ipaddress.ip_network(text)
        first, last = int(net.network_address), int(net.broadcast_address)
        out.append((V4_MAPPED | first, V4_MAPPED | last) if net.version == 4 else (first, last))
    return out


def _fprog(program: Sequence[tuple]) -> tuple[bytes, ctypes.Array]:
    """struct sock_fprog {u16 len; struct sock_filter *filter} for setsockopt, and the buffer it points to (keep it
    alive until the call returns)."""
    code = b"".join(struct.pack("HBBI", *insn) for insn in program)
    buf = ctypes.create_string_buffer(code, len(code))
    return struct.pack("HP", len(program), ctypes.addressof(buf)), buf


def set_program(sock: socket.socket, program: Sequence[tuple]) -> None:
    """Set (or replace) the fanout group's program through one member (it applies to the whole group)."""
    fprog, keep = _fprog(program)
    sock.setsockopt(SOL_PACKET, PACKET_FANOUT_DATA, fprog)
    del keep


def join_group(sock: socket.socket, group_id: int | None) -> int:
    """Join `sock` to fanout group `group_id` of type CBPF, or create a group with a kernel-chosen unique id when
    None (PACKET_FANOUT_FLAG_UNIQUEID); returns the group id. Members get consecutive indexes in joining order."""
    if group_id is None:
        sock.setsockopt(SOL_PACKET, PACKET_FANOUT, (PACKET_FANOUT_CBPF | PACKET_FANOUT_FLAG_UNIQUEID) << 16)
        return struct.unpack("I", sock.getsockopt(SOL_PACKET, PACKET_FANOUT, 4))[0] & 0xFFFF
    sock.setsockopt(SOL_PACKET, PACKET_FANOUT, (group_id & 0xFFFF) | PACKET_FANOUT_CBPF << 16)
    return group_id


@dataclass
class Member:
    """One worker's socket of one interface, as the parent opened it; multiprocessing passes `sock` to the worker
    process as a file descriptor."""

    name: str  # interface
    index: int  # the interface's position in the watch's list
    worker: int  # the member's index in the fanout group
    sock: socket.socket
    ifindex: int
    linktype: int
    method: str  # "tpacket_v3" or "recv"
    block_size: int
    ring_bytes: int  # whole ring (block_size * blocks); 0 on the recv path


def open_group(name: str, index: int, workers: int, program: Sequence[tuple], bpf: str | None, snaplen: int,
               ring_bytes: int, promisc: bool) -> tuple[list[Member], list[PacketSocket]]:
    """Open `workers` packet sockets with rings on one interface and join them, in order, to a new fanout group
    running `program`. Returns the members and the sockets (the caller keeps them open for the whole run).

    Raises:
        CaptureError: as open_packet_socket (a down interface included), or the kernel refused the fanout group.
    """
    ports: list[PacketSocket] = []
    members = []
    group = None
    try:
        for w in range(workers):
            port = PacketSocket(name, index)
            open_packet_socket(port, bpf, snaplen, ring_bytes, promisc, use_ring=True)
            ports.append(port)
            try:
                group = join_group(port.raw, group)
                if w == 0:
                    set_program(port.raw, program)
            except OSError as exc:
                why = exc.strerror or str(exc)
                if exc.errno == errno.EINVAL:
                    why += " (PACKET_FANOUT_CBPF needs Linux 4.3+, a unique group id Linux 4.14+)"
                raise CaptureError(name, f"cannot join the workers' fanout group: {why}") from None
            size = len(port.mm) if port.mm is not None else 0
            members.append(Member(name, index, w, port.raw, port.ifindex, port.linktype, port.method,
                                  port.block_size, size))
    except BaseException:
        for port in ports:
            port.release()
        raise
    for port in ports:  # the parent keeps the sockets, not the maps: each worker maps its ring itself
        port.ring = port.ring32 = None
        if port.mm is not None:
            with contextlib.suppress(BufferError, ValueError):
                port.mm.close()
            port.mm = None
    return members, ports


def resume_block(ring32: np.ndarray, block_size: int) -> int:
    """The block to read next in a ring another reader used before: the oldest block handed to user space (lowest
    tpacket_hdr_v1.seq_num), else the block the kernel is filling (highest seq_num; it is numbered when opened)."""
    blocks = len(ring32) * 4 // block_size
    starts = np.arange(blocks, dtype=np.int64) * block_size
    status = ring32[(starts + ring.BLOCK_STATUS) >> 2]
    seq = ring32[(starts + BLOCK_SEQ) >> 2].astype(np.uint64) | (ring32[(starts + BLOCK_SEQ + 4) >> 2].astype(
        np.uint64) << np.uint64(32))
    user = (status & ring.TP_STATUS_USER) != 0
    if user.any():
        return int(np.flatnonzero(user)[np.argmin(seq[user])])
    return int(np.argmax(seq))



class MemberCapture(LiveCapture):
    """A LiveCapture over member sockets the parent opened (one per interface, in the watch's order): maps each ring
    and resumes it where the kernel is. An interface deleted and re-created is shown down, not reopened (a new
    socket would join a new group; the parent owns the groups)."""

    def __init__(self, members: Sequence[Member], snaplen: int = 65535, chunk_frames: int = 1 << 16):
        super().__init__([m.name for m in members], snaplen=snaplen, chunk_frames=chunk_frames)
        self.members = list(members)

    def open(self) -> None:
        if self._ports and not self._closing:
            return
        self._closing = False
        self._teardown_lock = threading.Lock()
        self._ports = []
        self._ctl = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self._wake = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        for i, m in enumerate(self.members):
            port = _Port(m.name, i)
            port.raw = port.scapy_sock = m.sock  # release() closes it; the parent's copy keeps it in the group
            port.ifindex, port.linktype, port.method = m.ifindex, m.linktype, m.method
            if m.method == "tpacket_v3":
                port.mm = mmap.mmap(m.sock.fileno(), m.ring_bytes, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
                port.ring = np.frombuffer(port.mm, np.uint8)
                port.ring32 = port.ring.view(np.uint32)
                port.block_size = m.block_size
                port.cursor[:] = 0
                port.cursor[ring.CUR_BLOCK] = resume_block(port.ring32, m.block_size)
            port.up = bool(interface_state(self._ctl, m.name)[1] & IFF_UP)
            self._ports.append(port)
        warm_up_ring_kernel()
        buf_bytes = max(min(32 << 20, self.chunk_frames * 2048), 4 * (self.snaplen + 4))
        self._buf = np.zeros(buf_bytes, np.uint8)
        self._view = memoryview(self._buf)
        self._frames = np.zeros(self.chunk_frames, FRAME_DTYPE)

    def _refresh_interfaces(self) -> None:
        for port in self._ports:
            ifindex, flags = interface_state(self._ctl, port.name)
            port.gone = ifindex != port.ifindex
            port.up = not port.gone and bool(flags & IFF_UP)


def interface_addresses(names: Iterable[str]) -> list[int]:
    """Storage-form addresses (IPv4 mapped) configured on the named interfaces, read with one rtnetlink
    RTM_GETADDR dump (rtnetlink(7)); interfaces that do not exist have none."""
    wanted = set()
    for name in names:
        if 0 < len(name.encode()) <= IFNAME_MAX:
            with contextlib.suppress(OSError):
                wanted.add(socket.if_nametoindex(name))
    if not wanted:
        return []
    # include/uapi/linux/netlink.h, rtnetlink.h, if_addr.h
    rtm_getaddr, rtm_newaddr, nlmsg_done, nlmsg_error = 22, 20, 3, 2
    nlm_f_request, nlm_f_dump = 0x1, 0x300
    ifa_address, ifa_local = 1, 2
    out: set[int] = set()
    with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, 0) as nl:
        nl.send(struct.pack("=IHHII", 24, rtm_getaddr, nlm_f_request | nlm_f_dump, 1, 0)
                + struct.pack("=BBBBI", socket.AF_UNSPEC, 0, 0, 0, 0))
        done = False
        while not done:
            data = nl.recv(65536)
            if not data:
                break
            off = 0
            while off + 16 <= len(data):
                length, kind = struct.unpack_from("=IH", data, off)
                if length < 16:
                    done = True
                    break
                if kind in (nlmsg_done, nlmsg_error):
                    done = True
                elif kind == rtm_newaddr:
                    family, _, _, _, index = struct.unpack_from("=BBBBI", data, off + 16)
                    at = off + 24
                    while index in wanted and at + 4 <= off + length:
                        rta_len, rta_type = struct.unpack_from("=HH", data, at)
                        if rta_len < 4:
                            break
                        value = data[at + 4:at + rta_len]
                        if rta_type in (ifa_address, ifa_local) and family == socket.AF_INET and len(value) == 4:
                            out.add(V4_MAPPED | int.from_bytes(value, "big"))
                        elif rta_type in (ifa_address, ifa_local) and family == socket.AF_INET6 and len(value) == 16:
                            out.add(int.from_bytes(value, "big"))
                        at += (rta_len + 3) & ~3
                off += (length + 3) & ~3
    return sorted(out)


__all__ = ["DEFAULT_INSIDE", "Member", "MemberCapture", "default_inside", "interface_addresses", "join_group",
           "open_group", "resume_block", "set_program", "shard_mix", "shard_program"]
