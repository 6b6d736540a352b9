"""Decode stage: raw frames -> PACKET rows (kernels in decode/kernels.py)."""
from __future__ import annotations

import numpy as np

from egressguard.decode import kernels
from egressguard.schema import FRAME_DTYPE, PACKET_DTYPE


class Decoder:
    """Decodes chunks of frames, keeping the state that spans chunks (fragment ports) and running counters.

    Args:
        ring: PACKET buffers used in rotation, so that a reading thread can decode the next chunk while the last
            one's rows are still being aggregated (a result stays valid for `ring - 1` further calls).
    """

    def __init__(self, ring: int = 1) -> None:
        self.frag_cache = np.zeros((kernels.FRAG_CACHE_SIZE, kernels.FRAG_CACHE_COLS), np.uint64)
        self.counters = np.zeros(kernels.N_COUNTERS, np.int64)
        self._ring = [np.zeros(0, PACKET_DTYPE) for _ in range(max(ring, 1))]
        self._next = 0

    def decode_batch(self, buf: np.ndarray, frames: np.ndarray) -> np.ndarray:
        """PACKET rows for `frames` (FRAME array) whose offsets index `buf`; the result is reused by a later call."""
        if frames.dtype != FRAME_DTYPE:
            raise TypeError(f"frames must have FRAME_DTYPE, got {frames.dtype}")
        at = self._next
        self._next = (at + 1) % len(self._ring)
        if len(self._ring[at]) < len(frames):
            self._ring[at] = np.zeros(max(len(frames), 1024), PACKET_DTYPE)
        packets = self._ring[at][:len(frames)]
        kernels.decode_frames(buf, frames, packets, self.frag_cache, self.counters)
        return packets

    def count(self, name: str) -> int:
        """A running counter by name: packets, wire_bytes, captured_bytes, snaplen_cut, not_ip, undecodable,
        headers_cut, fragments, first_ns, last_ns."""
        return int(self.counters[getattr(kernels, "C_" + name.upper())])


def decode_frames_once(buf: np.ndarray, frames: np.ndarray) -> np.ndarray:
    """Decode one batch with fresh state (tests, one-off use); returns a new PACKET array."""
    return Decoder().decode_batch(buf, frames).copy()
