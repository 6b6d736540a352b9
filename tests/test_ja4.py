"""JA4 TLS client fingerprint (payload/ja4.py): FoxIO's worked example and reference outputs, and the `ja4` field
of flow records."""
import json
import struct

import numpy as np
import pytest
from click.testing import CliRunner
from conftest import PUBLIC_CAPTURES

from egressguard.cli import main
from egressguard.engine import FlowsReady, Settings
from egressguard.payload.ja4 import hello_fields, is_grease, ja4
from egressguard.pipeline import Analyzer
from egressguard.schema import AppTag

FOXIO = PUBLIC_CAPTURES / "FoxIO-ja4"

# FoxIO technical_details/JA4.md worked example: ciphers and extensions in offered order, signature algorithms
SPEC_CIPHERS = [0x1301, 0x1302, 0x1303, 0xC02B, 0xC02F, 0xC02C, 0xC030, 0xCCA9, 0xCCA8, 0xC013, 0xC014, 0x009C,
                0x009D, 0x002F, 0x0035]
SPEC_EXTENSIONS = [0x001B, 0x0000, 0x0033, 0x0010, 0x4469, 0x0017, 0x002D, 0x000D, 0x0005, 0x0023, 0x0012, 0x002B,
                   0xFF01, 0x000B, 0x000A, 0x0015]
SPEC_SIGALGS = [0x0403, 0x0804, 0x0401, 0x0503, 0x0805, 0x0501, 0x0806, 0x0601]
SPEC_JA4 = "t13d1516h2_8daaf6152771_e5627efa2ab1"
SPEC_NO_SIGALGS_HASH = "6d807ffa2a79"  # JA4.md: the same extensions with no signature algorithms


def _u16s(values) -> bytes:
    return b"".join(struct.pack("!H", v) for v in values)


def _ext_data(ext: int, sni: str, alpn: list[bytes], sigalgs: list[int], versions: list[int]) -> bytes:
    if ext == 0x0000:
        name = sni.encode()
        entry = b"\x00" + struct.pack("!H", len(name)) + name
        return struct.pack("!H", len(entry)) + entry
    if ext == 0x0010:
        names = b"".join(bytes([len(n)]) + n for n in alpn)
        return struct.pack("!H", len(names)) + names
    if ext == 0x000D:
        return struct.pack("!H", 2 * len(sigalgs)) + _u16s(sigalgs)
    if ext == 0x002B:
        return bytes([2 * len(versions)]) + _u16s(versions)
    return b"\x00"


def build_hello(ciphers, extensions, *, sni="example.com", alpn=(b"h2", b"http/1.1"), sigalgs=SPEC_SIGALGS,
                versions=(0x0304, 0x0303), client_version=0x0303, record_size=16384) -> bytes:
    """A ClientHello in TLS records of at most `record_size` bytes (a hello may span records)."""
    ext_bytes = b"".join(struct.pack("!H", e) + struct.pack("!H", len(d)) + d for e in extensions
                         for d in [_ext_data(e, sni, list(alpn), list(sigalgs), list(versions))])
    body = (struct.pack("!H", client_version) + bytes(range(32)) + b"\x20" + bytes(32)
            + struct.pack("!H", 2 * len(ciphers)) + _u16s(ciphers) + b"\x01\x00"
            + struct.pack("!H", len(ext_bytes)) + ext_bytes)
    hs = b"\x01" + len(body).to_bytes(3, "big") + body
    return b"".join(b"\x16\x03\x01" + struct.pack("!H", len(hs[i:i + record_size])) + hs[i:i + record_size]
                    for i in range(0, len(hs), record_size))


def test_grease_values():
    assert all(is_grease(v) for v in (0x0A0A, 0x1A1A, 0x7A7A, 0xFAFA))
    assert not any(is_grease(v) for v in (0x0A1A, 0x1301, 0x0000, 0xFF01, 0x4469))


def test_spec_example():
    assert ja4(build_hello(SPEC_CIPHERS, SPEC_EXTENSIONS)) == SPEC_JA4


def test_grease_ignored_everywhere():
    hello = build_hello([0x2A2A] + SPEC_CIPHERS, [0x0A0A] + SPEC_EXTENSIONS + [0xFAFA],
                        sigalgs=[0x5A5A] + SPEC_SIGALGS, versions=(0x3A3A, 0x0304, 0x0303))
    assert ja4(hello) == SPEC_JA4


def test_no_sni_no_alpn():
    exts = [e for e in SPEC_EXTENSIONS if e not in (0x0000, 0x0010)]
    # SNI and ALPN are counted but left out of the extension hash: only section a changes
    assert ja4(build_hello(SPEC_CIPHERS, exts)) == "t13i151400_8daaf6152771_e5627efa2ab1"
    no_sni = [e for e in SPEC_EXTENSIONS if e != 0x0000]
    assert ja4(build_hello(SPEC_CIPHERS, no_sni)) == "t13i1515h2_8daaf6152771_e5627efa2ab1"


def test_empty_signature_algorithms():
    assert ja4(build_hello(SPEC_CIPHERS, SPEC_EXTENSIONS, sigalgs=[])).endswith("_" + SPEC_NO_SIGALGS_HASH)


def test_version_and_alpn_rules():
    no_versions = [e for e in SPEC_EXTENSIONS if e != 0x002B]
    assert ja4(build_hello(SPEC_CIPHERS, no_versions, client_version=0x0303)).startswith("t12d1515h2_")
    assert ja4(build_hello(SPEC_CIPHERS, no_versions, client_version=0x0301)).startswith("t10d1515h2_")
    assert ja4(build_hello(SPEC_CIPHERS, no_versions, client_version=0x9999)).startswith("t00d1515h2_")
    assert ja4(build_hello(SPEC_CIPHERS, SPEC_EXTENSIONS, alpn=(b"http/1.1",))).startswith("t13d1516h1_")
    assert ja4(build_hello(SPEC_CIPHERS, SPEC_EXTENSIONS, alpn=(b"\xab\x01\xcd",))).startswith("t13d1516ad_")


def test_empty_lists_are_zeros():
    assert ja4(build_hello([], [0x0000, 0x0010], alpn=())) == "t12d000200_000000000000_000000000000"


def test_hello_spanning_records_and_bare_handshake():
    one = build_hello(SPEC_CIPHERS, SPEC_EXTENSIONS)
    assert ja4(build_hello(SPEC_CIPHERS, SPEC_EXTENSIONS, record_size=50)) == SPEC_JA4
    assert ja4(one[5:]) == SPEC_JA4  # handshake layer without the record header


def test_not_a_whole_hello():
    hello = build_hello(SPEC_CIPHERS, SPEC_EXTENSIONS)
    assert ja4(hello[:-3]) is None  # kept bytes ended inside the extensions
    assert ja4(hello[:60]) is None
    assert ja4(b"SSH-2.0-OpenSSH_9.6\r\n") is None
    assert ja4(b"") is None
    assert hello_fields(b"\x16\x03\x01\x00\x04\x02\x00\x00\x00") is None  # a ServerHello


def _expected_tcp_ja4() -> dict[str, dict[int, str]]:
    """pcap name -> {client port: JA4} from the reference tool's output (python/test/testdata), TCP streams."""
    out = {}
    for path in sorted((FOXIO / "expected" / "python").glob("*.json")):
        ja4s = {int(s["srcport"]): s.get("JA4", s.get("JA4.1")) for s in json.loads(path.read_text())
                if s.get("JA4", s.get("JA4.1", "")).startswith("t")}
        if ja4s:
            out[path.name.removesuffix(".json")] = ja4s
    return out


@pytest.mark.public
def test_foxio_reference_outputs():
    if not FOXIO.exists():
        pytest.skip(f"FoxIO-ja4 public captures not found (expected under {FOXIO})")
    expected = _expected_tcp_ja4()
    assert expected, "no expected JA4 values in FoxIO-ja4/expected/python"
    analyzer = Analyzer(Settings(), detectors=[])
    compared = 0
    for name, by_port in expected.items():
        got: dict[int, str | None] = {}
        for event in analyzer.analyze(str(FOXIO / "pcap" / name)):
            if isinstance(event, FlowsReady):
                view = event.view
                for row in np.flatnonzero(view.tagged(AppTag.TLS_CLIENT_HELLO) & (view.records["proto"] == 6)):
                    got[int(view.records["orig_port"][row])] = ja4(view.kept_stream(int(row), 0))
        assert {port: got.get(port) for port in by_port} == by_port, name
        compared += len(by_port)
    assert compared >= 5  # ssh2.pcapng: five TLS-over-TCP streams


@pytest.mark.public
def test_flow_records_carry_ja4(tmp_path):
    capture = FOXIO / "pcap" / "ssh2.pcapng"
    if not capture.exists():
        pytest.skip(f"public capture not found: {capture}")
    out = tmp_path / "flows.jsonl"
    result = CliRunner().invoke(main, ["analyze", "--format", "jsonl", "--flows", "-o", str(out), str(capture)])
    assert result.exit_code in (0, 1), result.output
    flows = [r for r in map(json.loads, out.read_text().splitlines()) if r["type"] == "flow"]
    by_port = {r["src_port"]: r.get("ja4") for r in flows if r["proto"] == "tcp" and r.get("ja4")}
    assert by_port == _expected_tcp_ja4()["ssh2.pcapng"]
    assert not any("ja4" in r for r in flows if r["dst_port"] == 22 or r["proto"] != "tcp")


@pytest.mark.public
@pytest.mark.parametrize("fingerprints", [True, False])
def test_ja4_is_computed_only_for_runs_that_write_flow_records(fingerprints):
    capture = FOXIO / "pcap" / "ssh2.pcapng"
    if not capture.exists():
        pytest.skip(f"public capture not found: {capture}")
    annotated = set()
    for event in Analyzer(Settings(fingerprints=fingerprints)).analyze(str(capture)):
        if isinstance(event, FlowsReady):
            annotated |= {int(event.view.records["orig_port"][row]) for row, values in
                          event.result.annotations.items() if "ja4" in values}
    assert annotated == (set(_expected_tcp_ja4()["ssh2.pcapng"]) if fingerprints else set())


# ---- the ClientHello's traits in words (payload/tls.hello_traits), as evidence of TLS carrying something else

def _openssl_hello(server_name, alpn=None):
    from egressbuilders import client_hello
    from egressguard.payload.tls import parse_client_hello
    return parse_client_hello(client_hello(server_name, alpn))


def test_hello_traits_name_what_a_non_web_client_leaves_out():
    from egressguard.payload.tls import hello_traits
    bare = hello_traits(_openssl_hello(None), 9443, "t13i181000_85036bcba153_d41ae481755e")
    assert bare == ("no server name, no ALPN, port 9443, not an HTTPS port, "
                    "JA4 t13i181000_85036bcba153_d41ae481755e")
    from egressguard.payload.tls import parse_client_hello
    # Python's ssl sends no SNI for an address (RFC 6066 3); ncat --ssl and socat's snihost do
    literal = hello_traits(parse_client_hello(build_hello(SPEC_CIPHERS, [0x0000, 0x002B], sni="198.18.0.5")), 443)
    assert literal.startswith("an IP address as server name (198.18.0.5), no ALPN")
    assert "port" not in literal and "JA4" not in literal


def test_hello_traits_of_a_browser_like_hello_say_nothing_odd():
    from egressguard.payload.tls import hello_traits
    web = hello_traits(_openssl_hello("pkg.example", ["h2", "http/1.1"]), 8443)
    assert web == "server name pkg.example, ALPN h2,http/1.1"
    other = hello_traits(_openssl_hello("mqtt.example", ["mqtt"]), 8883)
    assert other == "server name mqtt.example, ALPN mqtt (no web protocol), port 8883, not an HTTPS port"
    assert hello_traits(None, 443) == "no server name, no ALPN"
