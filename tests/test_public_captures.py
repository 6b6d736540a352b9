"""Real captures from public repositories (../shared/captures/public, see its MANIFEST.md).

Our readers are checked record by record against dpkt (pcap.Reader / pcapng.Reader, chosen by the magic number,
not the file name), and against a small independent pure-Python walker where dpkt cannot follow the file: its
pcapng reader applies the first interface's time resolution to every interface and skips Simple Packet Blocks.
A few facts the captures' sources document are checked on the decoded packets too.
"""
from __future__ import annotations

import collections
import struct
from pathlib import Path

import dpkt
import numpy as np
import pytest

from egressguard.capture import CaptureFile
from egressguard.decode import Decoder
from egressguard.schema import PacketStatus as S

PUBLIC = Path(__file__).resolve().parents[2] / "shared/captures/public"

if not PUBLIC.is_dir():
    pytest.skip(f"public captures folder {PUBLIC} is absent (it is shared outside the repository)",
                allow_module_level=True)

pytestmark = pytest.mark.public

CAPTURES = sorted(p for p in PUBLIC.rglob("*") if p.is_file() and p.suffix in (".pcap", ".pcapng", ".cap"))
PCAPNG_MAGIC = b"\x0a\x0d\x0d\x0a"
PCAP_NS_MAGICS = (b"\x4d\x3c\xb2\xa1", b"\xa1\xb2\x3c\x4d")


def _id(p: Path) -> str:
    return str(p.relative_to(PUBLIC))


# ============================================================================================ reference readers

def py_walk_pcap(data: bytes) -> list[tuple[int, int, int]]:
    """(ts_ns, caplen, wirelen) of every complete record of a classic pcap file."""
    magic = data[:4]
    endian = "<" if magic in (b"\xd4\xc3\xb2\xa1", b"\x4d\x3c\xb2\xa1") else ">"
    frac_ns = 1 if magic in PCAP_NS_MAGICS else 1000
    out, pos = [], 24
    while pos + 16 <= len(data):
        sec, frac, caplen, wirelen = struct.unpack(endian + "IIII", data[pos:pos + 16])
        if pos + 16 + caplen > len(data):
            break
        out.append((sec * 1_000_000_000 + frac * frac_ns, caplen, wirelen))
        pos += 16 + caplen
    return out


def py_walk_pcapng(data: bytes):
    """(frames, info): frames = [(ts_ns, caplen, wirelen)], info = what a dpkt comparison needs to know."""
    out = []
    info = {"sections": 0, "spb": 0, "resolutions": set(), "undefined_iface": 0}
    endian, ifaces, last_ts, pos = "<", [], 0, 0
    while pos + 12 <= len(data):
        if data[pos:pos + 4] == PCAPNG_MAGIC:
            endian = "<" if data[pos + 8:pos + 12] == b"\x4d\x3c\x2b\x1a" else ">"
            ifaces = []
            info["sections"] += 1
        btype, blen = struct.unpack(endian + "II", data[pos:pos + 8])
        if blen < 12 or pos + blen > len(data):
            break
        body = data[pos + 8:pos + blen - 4]
        if btype == 1:
            linktype, _, snaplen = struct.unpack(endian + "HHI", body[:8])
            resol, offset, opt = 6, 0, 8
            while opt + 4 <= len(body):
                code, length = struct.unpack(endian + "HH", body[opt:opt + 4])
                if code == 0:
                    break
                value = body[opt + 4:opt + 4 + length]
                if code == 9:
                    resol = value[0]
                elif code == 14:
                    offset = struct.unpack(endian + "q", value[:8])[0]
                opt += 4 + (length + 3) // 4 * 4
            ifaces.append((resol, offset, snaplen))
            info["resolutions"].add((resol, offset))
        elif btype in (2, 6):
            if btype == 6:
                iface, hi, lo, caplen, wirelen = struct.unpack(endian + "IIIII", body[:20])
            else:
                iface, _, hi, lo, caplen, wirelen = struct.unpack(endian + "HHIIII", body[:20])
            raw = (hi << 32) | lo
            if iface < len(ifaces):
                resol, offset, _ = ifaces[iface]
                if resol & 0x80:
                    ts = (raw * 1_000_000_000 >> (resol & 0x7F)) + offset * 1_000_000_000
                else:
                    ts = raw * 1_000_000_000 // 10 ** resol + offset * 1_000_000_000
            else:
                ts = last_ts
                info["undefined_iface"] += 1
            out.append((ts, caplen, wirelen))
            last_ts = ts
        elif btype == 3:
            (wirelen,) = struct.unpack(endian + "I", body[:4])
            caplen = min(wirelen, len(body) - 4)
            if ifaces and ifaces[0][2]:
                caplen = min(caplen, ifaces[0][2])
            out.append((last_ts, caplen, wirelen))
            info["spb"] += 1
        pos += blen
    return out, info


def dpkt_records(path: Path, is_pcapng: bool) -> list[tuple[float, int]]:
    with open(path, "rb") as f:
        reader = dpkt.pcapng.Reader(f) if is_pcapng else dpkt.pcap.Reader(f)
        return [(ts, len(buf)) for ts, buf in reader]


def reference(path: Path):
    """(name, [(ts_us, caplen)], tolerance_us) from dpkt where it can follow the file, else from the walker.

    Whenever both apply they must agree, which checks the walker itself."""
    data = path.read_bytes()
    is_pcapng = data[:4] == PCAPNG_MAGIC
    if is_pcapng:
        walked, info = py_walk_pcapng(data)
        dpkt_ok = info["sections"] == 1 and info["spb"] == 0 and len(info["resolutions"]) <= 1
        sub_us = any(not r & 0x80 and r > 6 or r & 0x80 and (r & 0x7F) > 20 for r, _ in info["resolutions"])
    else:
        walked = py_walk_pcap(data)
        dpkt_ok = True
        sub_us = data[:4] in PCAP_NS_MAGICS
    walked_us = [(ts // 1000, cap) for ts, cap, _ in walked]
    if dpkt_ok:
        try:
            recs = dpkt_records(path, is_pcapng)
        except Exception:  # noqa: BLE001 - dpkt could not read it: the walker is the reference
            return "walker", walked_us, 0
        ref = [(round(ts * 1e6), cap) for ts, cap in recs]
        tol = 1 if sub_us else 0  # float seconds round where integer nanoseconds truncate
        assert len(ref) == len(walked_us)
        for (rt, rc), (wt, wc) in zip(ref, walked_us):
            assert rc == wc and abs(rt - wt) <= tol
        return "dpkt", ref, tol
    return "walker", walked_us, 0


def ours(path: Path, **kw):
    out, stats = [], None
    with CaptureFile(str(path), **kw) as cf:
        for chunk in cf.chunks():
            f = chunk.frames
            out.extend(zip((f["ts_ns"] // 1000).tolist(), f["caplen"].tolist(), f["wirelen"].tolist()))
        stats = cf.stats
    return out, stats


# ============================================================================================ per-file checks

def test_public_captures_found():
    assert len(CAPTURES) >= 40, f"expected the public corpus under {PUBLIC}, found {len(CAPTURES)} captures"
    magics = {p.read_bytes()[:4] for p in CAPTURES}
    assert PCAPNG_MAGIC in magics and b"\xd4\xc3\xb2\xa1" in magics


@pytest.mark.parametrize("path", CAPTURES, ids=_id)
def test_frames_match_reference_reader(path):
    name, ref, tol = reference(path)
    got, stats = ours(path)
    assert stats.warnings == [] and stats.complete
    assert stats.format == ("pcapng" if path.read_bytes()[:4] == PCAPNG_MAGIC else "pcap")
    assert len(got) == len(ref), f"frame count differs from {name}"
    assert stats.frames == len(ref)
    for i, ((gt, gc, _), (rt, rc)) in enumerate(zip(got, ref)):
        assert gc == rc, f"frame {i}: caplen {gc} != {name} {rc}"
        assert abs(gt - rt) <= tol, f"frame {i}: ts {gt} us != {name} {rt} us"


@pytest.mark.parametrize("path", CAPTURES, ids=_id)
def test_small_chunks_and_decoding(path):
    """Tiny buffers give the same frames; every frame decodes to exactly one row and the counters add up."""
    ref, _ = ours(path)
    got, stats = ours(path, chunk_bytes=65536, chunk_frames=7)
    assert got == ref
    d = Decoder()
    statuses = []
    with CaptureFile(str(path), chunk_frames=100) as cf:
        for chunk in cf.chunks():
            pk = d.decode_batch(chunk.buf, chunk.frames)
            statuses.extend(pk["status"].tolist())
            assert (pk["ip_version"][(pk["status"] & (S.NOT_IP | S.UNDECODABLE)) != 0] == 0).all()
    assert d.count("packets") == len(ref) == len(statuses)
    assert d.count("wire_bytes") == sum(w for _, _, w in ref)
    assert d.count("captured_bytes") == sum(c for _, c, _ in ref)
    # these real captures hold nothing broken: every frame is IP or an intact non-IP frame (ARP, RARP)
    assert d.count("undecodable") == 0 and d.count("headers_cut") == 0


def test_pcapng_multi_interface_uses_each_interface_resolution():
    # interface 0 has if_tsresol 9 (ns), interface 1 the default (us); dpkt would apply ns to both
    data = (PUBLIC / "zeek/pcapng-multi-interface.pcapng").read_bytes()
    walked, info = py_walk_pcapng(data)
    assert info["resolutions"] == {(9, 0), (6, 0)}
    got, _ = ours(PUBLIC / "zeek/pcapng-multi-interface.pcapng")
    assert [t for t, _, _ in got] == [ts // 1000 for ts, _, _ in walked]
    times = [t for t, _, _ in got]
    # both interfaces' packets were captured on 2026-01-06, within six minutes (a wrong resolution on either
    # interface would put its packets in 1970 or far in the future)
    assert max(times) - min(times) < 360_000_000, times
    assert {str(np.datetime64(t, "us"))[:10] for t in times} == {"2026-01-06"}


# ============================================================================================ decoded facts

def decode_all(rel: str):
    d = Decoder()
    rows = []
    with CaptureFile(str(PUBLIC / rel)) as cf:
        for chunk in cf.chunks():
            rows.append(d.decode_batch(chunk.buf, chunk.frames).copy())
    return np.concatenate(rows), d


def test_ipv6_fragmented_dns():
    """zeek's ipv6-fragmented-dns.pcap: DNS TXT queries and large answers split into IPv6 fragments.

    Frame 3 is the last fragment (offset 2896) of datagram 1, whose earlier fragments are not in the capture: its
    ports are unknown. Frames 5-7 are the three fragments of datagram 2, the answer to the query in frames 2 and 4
    (client port 51851): all three must land on the answer's 5-tuple, reversed from the query's.
    """
    pk, d = decode_all("zeek/ipv6-fragmented-dns.pcap")
    assert len(pk) == 8 and d.count("fragments") == 4
    assert set(pk["ip_version"].tolist()) == {6} and set(pk["proto"].tolist()) == {17}
    ports = [(int(p["sport"]), int(p["dport"])) for p in pk]
    assert ports[:3] == [(51850, 53), (53, 51850), (51851, 53)]
    assert ports[3] == (0, 0)
    assert ports[4] == (51851, 53)
    assert ports[5:] == [(53, 51851)] * 3
    assert [int(s) for s in pk["status"]] == [0, 0, 0, S.FRAGMENT | S.LATER_FRAGMENT, 0, S.FRAGMENT,
                                              S.FRAGMENT | S.LATER_FRAGMENT, S.FRAGMENT | S.LATER_FRAGMENT]
    client, server = (pk[4]["src_hi"], pk[4]["src_lo"]), (pk[4]["dst_hi"], pk[4]["dst_lo"])
    for p in pk[5:]:
        assert (p["src_hi"], p["src_lo"]) == server and (p["dst_hi"], p["dst_lo"]) == client
    # the three fragments carry the whole UDP payload: 3238 (UDP length field) - 8 header bytes
    raw = (PUBLIC / "zeek/ipv6-fragmented-dns.pcap").read_bytes()
    first_frag = py_walk_pcap(raw)  # find the UDP length in the first fragment independently
    offset = 24 + sum(16 + cap for _, cap, _ in first_frag[:5]) + 16
    udp_len = struct.unpack(">H", raw[offset + 14 + 40 + 8 + 4:offset + 14 + 40 + 8 + 6])[0]
    assert udp_len == 3238
    assert int(pk["payload_bytes"][5:].sum()) == udp_len - 8


def test_double_vlan_icmp():
    # peafowl 802.1Q_dvlan.cap: 20 ICMP packets inside two 802.1Q tags (outer ids 118 and 209)
    pk, d = decode_all("DanieleDeSensi-peafowl/test/pcaps/802.1Q_dvlan.cap")
    assert len(pk) == 20 and set(pk["proto"].tolist()) == {1}
    assert collections.Counter(pk["vlan"].tolist()) == {118: 10, 209: 10}
    assert set(pk["status"].tolist()) == {0}


def test_qinq_and_vlan_zero():
    # zeek http-qinq-0 / http-vlan-0: the same HTTP GET with VLAN id 0 (priority 5) tags; id 0 is "untagged"
    for rel in ("zeek/http-qinq-0.pcap", "zeek/http-vlan-0.pcap"):
        pk, _ = decode_all(rel)
        assert len(pk) == 14 and set(pk["vlan"].tolist()) == {0}
        assert set(pk["proto"].tolist()) == {6} and set(pk["status"].tolist()) == {0}
        assert all(80 in (int(p["sport"]), int(p["dport"])) for p in pk)


def test_pppoe_in_qinq_dns():
    # nDPI dns.pcap (pcapng despite its name): 3 plain DNS packets and 2 in 802.1Q 421 / 802.1Q 785 / PPPoE
    pk, _ = decode_all("ntop-nDPI/dns.pcap")
    assert pk["vlan"].tolist() == [0, 0, 0, 421, 421]
    assert set(pk["proto"].tolist()) == {17} and set(pk["status"].tolist()) == {0}
    assert all(53 in (int(p["sport"]), int(p["dport"])) for p in pk)


def test_linux_cooked_captures():
    pk, d = decode_all("zeek/linux_dlt_sll2.pcap")
    assert len(pk) == 6 and d.count("not_ip") == 2  # ARP and RARP
    assert sorted(pk["proto"][pk["ip_version"] > 0].tolist()) == [1, 1, 58, 58]
    pk, d = decode_all("ntop-nDPI/KakaoTalk_chat.pcap")
    assert len(pk) == 347 and d.count("not_ip") == 0 and set(pk["ip_version"].tolist()) == {4}


def test_bsd_null_capture():
    pk, _ = decode_all("zeek/ssh/ssh-over-udp.pcap")
    assert len(pk) == 2 and set(pk["ip_version"].tolist()) == {6} and set(pk["proto"].tolist()) == {17}
    assert set(pk["status"].tolist()) == {0}


def test_icmp_pings_pair_up():
    pk, _ = decode_all("zeek/icmp/5-pings.pcap")
    assert len(pk) == 10
    assert collections.Counter((int(p["sport"]), int(p["dport"])) for p in pk) == {(8, 0): 5, (0, 8): 5}
