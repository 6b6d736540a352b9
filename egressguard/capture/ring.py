"""numba kernel that walks a TPACKET_V3 receive ring (PACKET_RX_RING, Linux packet(7)) into FRAME rows.

The ring is the socket's mmap'd memory: `block_nr` blocks of `block_size` bytes, each starting with a
`struct tpacket_block_desc` and holding `struct tpacket3_hdr` frames (include/uapi/linux/if_packet.h). The kernel
hands a block over by setting TP_STATUS_USER in its status word and takes it back when user space writes
TP_STATUS_KERNEL. Frames are copied into the chunk buffer, so a block goes back to the kernel as soon as it is read.
Only numbers and uint8/uint32 arrays cross this boundary.
"""
from __future__ import annotations

import numpy as np
from numba import njit

# struct tpacket_block_desc: version u32, offset_to_priv u32, then struct tpacket_hdr_v1 (byte offsets below)
BLOCK_STATUS = 8
BLOCK_NUM_PKTS = 12
BLOCK_FIRST_PKT = 16
# struct tpacket3_hdr (byte offsets)
PKT_NEXT = 0
PKT_SEC = 4
PKT_NSEC = 8
PKT_SNAPLEN = 12
PKT_LEN = 16
PKT_STATUS = 20
PKT_MAC = 24  # u16: offset of the frame's first byte from the header
PKT_VLAN_TCI = 32
PKT_VLAN_TPID = 36  # u16
TPACKET3_HDR_BYTES = 48  # sizeof(struct tpacket3_hdr) with its padding
TP_STATUS_KERNEL = 0
TP_STATUS_USER = 1
TP_STATUS_VLAN_VALID = 1 << 4  # the kernel took an 802.1Q tag out of the frame (VLAN offload) and reports it here
TP_STATUS_VLAN_TPID_VALID = 1 << 6
ETH_P_8021Q = 0x8100
VLAN_TAG_BYTES = 4
ETH_ADDRS_BYTES = 12  # destination + source MAC: the tag goes after them, as libpcap re-inserts it
LINKTYPE_ETHERNET = 1

# cursor slots (int64 array of CURSOR_SLOTS per ring, mutated by walk_ring)
CUR_BLOCK = 0  # block being read
CUR_TAKEN = 1  # frames of that block already copied out
CUR_OFFSET = 2  # byte offset of the next frame header inside the block
CUR_BAD = 3  # frames skipped because their header pointed outside their block (never expected from the kernel)
CURSOR_SLOTS = 4


@njit(cache=True, inline="always")
def _u16(ring, i):
    return np.uint32(ring[i]) | (np.uint32(ring[i + 1]) << 8)  # little-endian host (x86-64, aarch64)


@njit(cache=True, nogil=True)
def walk_ring(ring, ring32, block_size, cursor, iface, linktype, snaplen, buf, buf_pos, frames, frame_pos):
    """Copy the frames of every block the kernel has handed over, in ring order, into buf and FRAME rows.

    Stops when the next block still belongs to the kernel, `frames` is full, or the next frame does not fit in
    `buf`; a partly read block is resumed from `cursor` on the next call. Fully read blocks are returned to the
    kernel with one aligned 32-bit store of TP_STATUS_KERNEL after its frames were copied, with no fence, as libpcap
    does (x86-64 never moves a store ahead of earlier loads).

    Args:
        ring: uint8 array, the whole mmap'd ring (block_nr * block_size bytes); ring32: the same memory as uint32.
        block_size: bytes per block (a multiple of the page size, so every block is 4-byte aligned).
        cursor: int64 array of CURSOR_SLOTS, mutated (block, frames taken, next frame offset, bad frames).
        iface, linktype: written into every FRAME row; snaplen: longest frame kept (longer ones are cut).
        buf: uint8 array, the chunk buffer, mutated from buf_pos; frames: FRAME array, mutated from frame_pos.

    Returns:
        (buf_pos after the last copied frame, frame_pos after the last row, wire bytes of the copied frames).
    """
    block_nr = ring.shape[0] // block_size
    cap = frames.shape[0]
    buf_cap = buf.shape[0]
    wire_total = 0
    while frame_pos < cap:
        base = cursor[CUR_BLOCK] * block_size
        if (ring32[(base + BLOCK_STATUS) >> 2] & TP_STATUS_USER) == 0:
            break
        num_pkts = ring32[(base + BLOCK_NUM_PKTS) >> 2]
        if cursor[CUR_TAKEN] == 0:
            cursor[CUR_OFFSET] = ring32[(base + BLOCK_FIRST_PKT) >> 2]
        full = False
        while cursor[CUR_TAKEN] < num_pkts:
            hdr = base + cursor[CUR_OFFSET]
            if cursor[CUR_OFFSET] + TPACKET3_HDR_BYTES > block_size:
                cursor[CUR_BAD] += num_pkts - cursor[CUR_TAKEN]
                break
            status = ring32[(hdr + PKT_STATUS) >> 2]
            snap = np.int64(ring32[(hdr + PKT_SNAPLEN) >> 2])
            src = hdr + np.int64(_u16(ring, hdr + PKT_MAC))
            if src + snap > base + block_size:
                cursor[CUR_BAD] += num_pkts - cursor[CUR_TAKEN]
                break
            tagged = (status & TP_STATUS_VLAN_VALID) != 0 and linktype == LINKTYPE_ETHERNET and snap >= ETH_ADDRS_BYTES
            extra = VLAN_TAG_BYTES if tagged else 0
            out_len = min(snap + extra, snaplen)
            if frame_pos >= cap or buf_pos + out_len > buf_cap:
                full = True
                break
            if tagged:
                buf[buf_pos:buf_pos + ETH_ADDRS_BYTES] = ring[src:src + ETH_ADDRS_BYTES]
                tpid = np.int64(ETH_P_8021Q)
                if status & TP_STATUS_VLAN_TPID_VALID:
                    tpid = np.int64(_u16(ring, hdr + PKT_VLAN_TPID))
                tci = np.int64(ring32[(hdr + PKT_VLAN_TCI) >> 2])
                t = buf_pos + ETH_ADDRS_BYTES
                buf[t] = (tpid >> 8) & 0xFF
                buf[t + 1] = tpid & 0xFF
                buf[t + 2] = (tci >> 8) & 0xFF
                buf[t + 3] = tci & 0xFF
                rest = out_len - ETH_ADDRS_BYTES - VLAN_TAG_BYTES
                if rest > 0:
                    s = src + ETH_ADDRS_BYTES
                    buf[t + 4:t + 4 + rest] = ring[s:s + rest]
            else:
                buf[buf_pos:buf_pos + out_len] = ring[src:src + out_len]
            wire = np.int64(ring32[(hdr + PKT_LEN) >> 2]) + extra
            row = frames[frame_pos]  # item syntax, not attributes: also works as plain Python (NUMBA_DISABLE_JIT)
            row["offset"] = buf_pos
            row["caplen"] = out_len
            row["wirelen"] = wire
            sec, nsec = np.int64(ring32[(hdr + PKT_SEC) >> 2]), np.int64(ring32[(hdr + PKT_NSEC) >> 2])
            row["ts_ns"] = sec * 1_000_000_000 + nsec
            row["linktype"] = linktype
            row["iface"] = iface
            wire_total += wire
            buf_pos += out_len
            frame_pos += 1
            cursor[CUR_TAKEN] += 1
            cursor[CUR_OFFSET] += ring32[(hdr + PKT_NEXT) >> 2]
        if full:
            break
        ring32[(base + BLOCK_STATUS) >> 2] = TP_STATUS_KERNEL
        cursor[CUR_BLOCK] = (cursor[CUR_BLOCK] + 1) % block_nr
        cursor[CUR_TAKEN] = 0
        cursor[CUR_OFFSET] = 0
    return buf_pos, frame_pos, wire_total

