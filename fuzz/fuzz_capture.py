"""atheris target: the capture readers (pcap, pcapng, compressed) and the decoder on coverage-guided file bytes.

Each input is written to a file in /dev/shm (CaptureFile reads paths) and read to the end with small chunks, so
record walks also cross buffer refills; every chunk is decoded. A crash is any exception other than CaptureError
(the documented error the CLI turns into exit code 3) or a frame outside its buffer. Coverage covers the Python
side (files.py); the numba walkers and decoder are exercised but not instrumented.

    python fuzz/fuzz_capture.py fuzz/corpus/capture -max_total_time=300
"""
from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

import atheris

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this working tree's egressguard, not an installed one
# numba kernel modules must stay as written: instrumented bytecode cannot be compiled by numba
KERNEL_MODULES = ["egressguard.capture.records", "egressguard.decode.kernels", "egressguard.flows.kernels",
                  "egressguard.flows.conversation"]

with atheris.instrument_imports(include=["egressguard"], exclude=KERNEL_MODULES):
    from egressguard.capture import CaptureFile
    from egressguard.decode import Decoder
    from egressguard.errors import CaptureError

_DIR = "/dev/shm" if os.path.isdir("/dev/shm") else None
_PATH = os.path.join(tempfile.mkdtemp(prefix=f"eg-fuzz-{os.getpid()}-", dir=_DIR), "input.cap")


def check(data: bytes) -> None:
    with open(_PATH, "wb") as fh:
        fh.write(data)
    small = bool(data) and data[-1] & 1  # half the inputs read with the smallest buffers
    kw = {"chunk_bytes": 1, "chunk_frames": 5} if small else {}
    decoder = Decoder()
    try:
        with CaptureFile(_PATH, **kw) as cf:
            for chunk in cf.chunks():
                f = chunk.frames
                if len(f):
                    assert int((f["offset"].astype("i8") + f["caplen"]).max()) <= len(chunk.buf)
                    decoder.decode_batch(chunk.buf, f)
            assert cf.stats.complete or cf.stats.warnings
    except CaptureError:
        pass


def main() -> None:
    atheris.Setup(sys.argv, check)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
