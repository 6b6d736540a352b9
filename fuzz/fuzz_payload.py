"""atheris target: every payload inspector on coverage-guided inputs.

Input layout (so that seeds are real flows, see make_corpus.py): byte 0 picks the inspector, bytes 1-2 (big endian)
give the length of the originator's stream, the originator's bytes follow, the rest is the responder's stream.
A crash is any exception: the inspectors document "any input gives a result or None".

    python fuzz/fuzz_payload.py fuzz/corpus/payload -max_total_time=300
"""
from __future__ import annotations

import sys
from pathlib import Path

import atheris

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this working tree's egressguard, not an installed one
# numba kernel modules must stay as written: instrumented bytecode cannot be compiled by numba
KERNEL_MODULES = ["egressguard.capture.records", "egressguard.decode.kernels", "egressguard.flows.kernels",
                  "egressguard.flows.conversation", "egressguard.payload.dns_table", "egressguard.payload.suffixes",
                  "egressguard.payload.name_features", "egressguard.payload.signatures", "egressguard.payload.http"]

with atheris.instrument_imports(include=["egressguard"], exclude=KERNEL_MODULES):
    import numpy as np

    from egressguard.payload import http, ssh, stratum, tls, websocket
    from egressguard.payload.dns_table import decode_dns

INSPECTORS = ("ssh", "tls", "dns", "dns_tcp", "http", "websocket", "stratum", "sv2")


def split(data: bytes) -> tuple[str, bytes, bytes]:
    """(inspector name, originator bytes, responder bytes) of one fuzz input."""
    if len(data) < 3:
        return INSPECTORS[0], data, b""
    which = INSPECTORS[data[0] % len(INSPECTORS)]
    n = int.from_bytes(data[1:3], "big")
    return which, data[3:3 + n], data[3 + n:]


def _kept(orig: bytes, resp: bytes, keep: int = 2048):
    """One flow table slot holding `orig` and `resp` as one packet each (payload/dns_table.KeptArrays order)."""
    data = np.zeros((1, 2, keep), np.uint8)
    cap, length = np.zeros((1, 2, 4), np.uint16), np.zeros((1, 2, 4), np.uint32)
    count, fill = np.zeros((1, 2), np.uint8), np.zeros((1, 2), np.uint32)
    for d, raw in enumerate((orig[:keep], resp[:keep])):
        data[0, d, :len(raw)] = np.frombuffer(raw, np.uint8)
        cap[0, d, 0], length[0, d, 0], count[0, d], fill[0, d] = len(raw), len(raw), 1, len(raw)
    return data, cap, length, count, fill, np.array([[len(orig), -len(resp)]], np.int32), np.zeros((1, 2), np.uint32)


def check(data: bytes) -> None:
    """Run one inspector and assert the bounds the test suite asserts (tests/test_fuzz_payload.py)."""
    which, orig, resp = split(data)
    if which == "ssh":
        hs = ssh.parse_handshake(orig, resp)
        if hs is not None:
            assert hs.client.banner is None or len(hs.client.banner) <= 4 * ssh.MAX_BANNER
            ssh.post_auth(hs, [len(resp) % 200, -(len(orig) % 200), 52, -52, 36, -36])
            hs.tunnelled_keystroke_sizes()
    elif which == "tls":
        hello = tls.parse_client_hello(orig)
        assert hello is None or hello.sni is None or len(hello.sni) <= 4 * tls.MAX_NAME
        row = np.zeros((1, 512), np.uint8)
        kept = orig[:512]
        row[0, :len(kept)] = np.frombuffer(kept, np.uint8)
        offset, length, _ = tls.find_sni(row, np.array([len(kept)]))
        assert offset[0] < 0 or offset[0] + length[0] <= len(kept)
    elif which in ("dns", "dns_tcp"):
        decode_dns(_kept(orig, resp), np.array([0]), np.array([17 if which == "dns" else 6]), np.zeros(1, np.int64),
                   np.array([2]))
    elif which == "http":
        host = http.request_host(orig)
        assert host is None or len(host) <= 4 * http.MAX_HOST
    elif which == "websocket":
        streams = websocket.websocket_streams(orig, resp)
        assert streams is None or (len(streams[0]) <= len(orig) and len(streams[1]) <= len(resp))
    elif which == "stratum":
        session = stratum.parse_session(orig, resp)
        assert session is None or session.login is None or len(session.login) <= stratum.MAX_TEXT + 3
    else:
        stratum.sv2_handshake([int(x) - 128 for x in resp[:64]] or [64, -234], orig)


def main() -> None:
    atheris.Setup(sys.argv, check)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
