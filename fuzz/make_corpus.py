"""Build the atheris seed corpora from the project's own captures (nothing is copied from elsewhere).

    python fuzz/make_corpus.py            # writes fuzz/corpus/capture/* and fuzz/corpus/payload/*

capture/: the first records of each lab capture, as pcap, as pcapng (re-framed) and gzip-compressed.
payload/: each TCP direction pair and UDP payload of the lab captures (fuzz/seeds.py), once per inspector, in the
layout fuzz_payload.py expects.
"""
from __future__ import annotations

import gzip
import hashlib
import struct
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import seeds  # noqa: E402
from fuzz_payload import INSPECTORS  # noqa: E402

SEED_BYTES = 8192  # enough records to reach every block type, small enough for fast executions


def _pcapng_of(pcap: bytes) -> bytes:
    """The records of a little-endian microsecond pcap re-framed as pcapng (SHB, IDB, EPBs)."""
    linktype = struct.unpack_from("<I", pcap, 20)[0] & 0xFFFF
    shb_body = struct.pack("<IHHq", 0x1A2B3C4D, 1, 0, -1)
    out = [struct.pack("<II", 0x0A0D0D0A, 12 + len(shb_body)) + shb_body + struct.pack("<I", 12 + len(shb_body))]
    idb_body = struct.pack("<HHI", linktype, 0, 0)
    out.append(struct.pack("<II", 1, 12 + len(idb_body)) + idb_body + struct.pack("<I", 12 + len(idb_body)))
    pos = 24
    while pos + 16 <= len(pcap):
        sec, usec, caplen, wirelen = struct.unpack_from("<IIII", pcap, pos)
        data = pcap[pos + 16:pos + 16 + caplen]
        if len(data) < caplen:
            break
        ts = sec * 1_000_000 + usec
        body = struct.pack("<IIIII", 0, ts >> 32, ts & 0xFFFFFFFF, caplen, wirelen) + data + b"\0" * (-caplen % 4)
        out.append(struct.pack("<II", 6, 12 + len(body)) + body + struct.pack("<I", 12 + len(body)))
        pos += 16 + caplen
    return b"".join(out)


def _write(folder: Path, data: bytes) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / hashlib.sha1(data).hexdigest()).write_bytes(data)


def main() -> None:
    capture_dir, payload_dir = HERE / "corpus" / "capture", HERE / "corpus" / "payload"
    for name in seeds.LAB_SEEDS:
        head = (seeds.REPO / "captures" / name).read_bytes()[:SEED_BYTES]
        for data in (head, _pcapng_of(head), gzip.compress(head)):
            _write(capture_dir, data)
    tcp, udp = seeds.seed_payloads()
    pairs = [(tcp[i], tcp[i + 1] if i + 1 < len(tcp) else b"") for i in range(0, len(tcp), 2)]
    pairs += [(u, b"") for u in udp]
    for index, _ in enumerate(INSPECTORS):
        for orig, resp in pairs:
            orig = orig[:4096]
            _write(payload_dir, bytes([index]) + len(orig).to_bytes(2, "big") + orig + resp[:4096])
    counts = [sum(1 for _ in folder.iterdir()) for folder in (capture_dir, payload_dir)]
    print(f"{counts[0]} capture seeds, {counts[1]} payload seeds")


if __name__ == "__main__":
    main()
