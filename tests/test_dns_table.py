"""The DNS message table (payload/dns_table.py, name_features.py, suffixes.py): byte-literal messages (A, AAAA, CNAME
chains, compression, pointer loops, cut messages, TCP streams, EDNS, NXDOMAIN, binary labels); every DNS message of
the lab and public captures against dpkt, the former tunnel reader and the naive twin (tests/naive_dns.py); question
names against detect/dns_names.py's rules with publicsuffixlist's registered domains; fuzzing for totality."""
import os
import struct
import subprocess
import sys
import tomllib
from pathlib import Path
from types import SimpleNamespace

import dpkt
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import LAB_CAPTURES, PUBLIC_CAPTURES, REPO
from egressguard.payload.dns_table import (DnsTable, KeptArrays, bindings, decode_dns, domain_text, name_labels,
                                           name_text, unique_names)
from egressguard.payload.suffixes import SuffixSet, registered_domain_start
from egressguard.capture import CaptureFile
from egressguard.decode import Decoder
from egressguard.flows import FlowTable
from egressguard.schema import DNS_CHARSETS

sys.path.insert(0, str(Path(__file__).parent))
import naive_dns as naive  # noqa: E402
from naive_dns import Flow  # noqa: E402

T0 = 1_700_000_000_000_000_000
EXAMPLES = int(os.environ.get("EGRESSGUARD_FUZZ_EXAMPLES", "60"))
FUZZ = settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck))
PUBLIC_DNS = ["dmachard-datasets-malicious-dns/" + n for n in
              ("dns2tcp.pcap", "dnscat2.pcap", "dnsextrator.pcap", "iodine.pcap", "sods.pcap")] + \
    ["ntop-nDPI/" + n for n in ("dns-exf.pcap", "dns-tunnel-iodine.pcap", "dns.pcap", "dns_exfiltration.pcap",
                                "KakaoTalk_chat.pcap")] + \
    ["zeek/ipv6-fragmented-dns.pcap", "zeek/pcapng-multi-interface.pcapng", "FoxIO-ja4/pcap/ssh2.pcapng"]
CAPTURES = sorted(LAB_CAPTURES.glob("*.pcap")) + [PUBLIC_CAPTURES / p for p in PUBLIC_DNS]


# ------------------------------------------------------------------------------------------------ helpers
def wire(name: str | bytes) -> bytes:
    labels = name.split(b".") if isinstance(name, bytes) else name.encode().split(b".")
    return b"".join(bytes([len(x)]) + x for x in labels if x) + b"\0"


def message(ident=0x1234, flags=0x8180, questions=(("example.com", 1),), answers=(), authority=0, additional=b"",
            counts=None) -> bytes:
    """A DNS message; answers are raw RR bytes (see rr()); `additional` raw bytes counted as one record."""
    qd, an, ns, ar = counts or (len(questions), len(answers), authority, 1 if additional else 0)
    out = struct.pack("!HHHHHH", ident, flags, qd, an, ns, ar)
    out += b"".join(wire(q) + struct.pack("!HH", t, 1) for q, t in questions)
    return out + b"".join(answers) + additional


def rr(owner: bytes, rtype: int, rdata: bytes, ttl=300, rclass=1) -> bytes:
    return owner + struct.pack("!HHIH", rtype, rclass, ttl, len(rdata)) + rdata


def decode(flows: list[Flow], **keep) -> tuple[DnsTable, list[dict]]:
    """The kernel's table of these flows (one slot each) and the naive twin's rows."""
    arrays, seq_count = naive.kept_arrays(flows, **keep)
    slots = np.arange(len(flows))
    protos = np.array([f.proto for f in flows])
    first = np.array([f.first_seen_ns for f in flows], np.int64)
    table = decode_dns(KeptArrays(*arrays), slots, protos, first, seq_count)
    return table, naive.naive_table(arrays, slots, protos, first, seq_count)


def rows(table: DnsTable) -> list[dict]:
    """The table's messages as the naive twin writes them (names as label tuples)."""
    out = []
    for i, m in enumerate(table.messages):
        got = {k: int(m[k]) for k in ("row", "direction", "index", "ts_ns", "id", "flags", "is_response", "opcode",
                                      "rcode", "qdcount", "ancount", "nscount", "arcount", "size", "truncated",
                                      "qtype", "qclass", "edns_size", "answer_rdata_bytes")}
        got["qname"] = name_labels(table, m["qname"]) if m["qname"] >= 0 else None
        assert m["qname"] < 0 or m["qname_labels"] == len(got["qname"])
        answers = table.answers[m["answer_first"]:m["answer_first"] + m["answer_count"]]
        assert m["answers_read"] == m["answer_count"] == len(answers) and (answers["message"] == i).all()
        got["answers"] = [dict(rtype=int(a["rtype"]), ttl=int(a["ttl"]), rdlength=int(a["rdlength"]),
                               name=name_labels(table, a["name"]), addr_hi=int(a["addr_hi"]), addr_lo=int(a["addr_lo"]),
                               target=name_labels(table, a["target"]) if a["target"] >= 0 else None) for a in answers]
        out.append(got)
    return out


def udp(*packets, first=T0) -> Flow:
    """A UDP flow: packets are (direction, bytes) or (direction, bytes, wire length), 1 ms apart."""
    return Flow(17, [(p[0], p[1], p[2] if len(p) > 2 else None, 1000 * (k + 1)) for k, p in enumerate(packets)], first)


# ------------------------------------------------------------------------------------------------ byte literals
def test_a_response_gives_header_question_and_ipv4_mapped_address():
    query = message(flags=0x0100, questions=(("Pypi.org", 1),))
    answer = message(questions=(("Pypi.org", 1),), answers=(rr(b"\xc0\x0c", 1, bytes([151, 101, 0, 223]), ttl=60),))
    table, twin = decode([udp((0, query), (1, answer))])
    assert rows(table) == twin
    q, r = table.messages
    assert (q["direction"], q["is_response"], q["qtype"], q["qclass"], q["id"], q["size"]) == (0, 0, 1, 1, 0x1234, 26)
    assert (r["direction"], r["is_response"], r["rcode"], r["ancount"], r["answers_read"]) == (1, 1, 0, 1, 1)
    assert (q["ts_ns"], r["ts_ns"]) == (T0 + 1_000_000, T0 + 2_000_000)
    a = table.answers[0]
    assert (a["rtype"], a["ttl"], a["rdlength"], a["addr_hi"], a["addr_lo"]) == (1, 60, 4, 0, 0xFFFF_9765_00DF)
    assert name_labels(table, a["name"]) == (b"Pypi", b"org") and name_text(table, a["name"]) == "pypi.org"
    assert r["answer_rdata_bytes"] == 4 and domain_text(table, 1) == "pypi.org"


def test_aaaa_address_is_split_big_endian():
    addr = bytes.fromhex("2a044e42000000000000000000000223")
    table, twin = decode([udp((1, message(answers=(rr(b"\xc0\x0c", 28, addr),))))])
    assert rows(table) == twin
    a = table.answers[0]
    assert (a["addr_hi"], a["addr_lo"]) == (0x2A044E4200000000, 0x223)


def test_cname_chain_binds_every_name_leading_to_the_addresses():
    # pkg.example -> alias.cdn.example -> edge.cdn.net -> A and AAAA; compressed as resolvers do
    msg = message(questions=(("pkg.example", 5),), answers=(
        rr(b"\xc0\x0c", 5, b"\x05alias\x03cdn\xc0\x10"),  # alias.cdn.<example at 16>
        rr(b"\xc0\x29", 5, b"\x04edge\x03cdn\x03net\x00"),
        rr(b"\xc0\x41", 1, bytes([151, 101, 0, 223])),  # edge.cdn.net at 65
        rr(b"\xc0\x41", 28, bytes(16))))
    table, twin = decode([udp((1, msg))])
    assert rows(table) == twin
    answers, names = bindings(table)
    bound = {int(a): sorted(name_text(table, n) for n, b in zip(names, answers) if b == a) for a in answers}
    chain = ["alias.cdn.example", "edge.cdn.net", "pkg.example"]
    assert bound == {2: chain, 3: chain}
    assert name_text(table, table.answers[0]["target"]) == "alias.cdn.example"


def test_bindings_need_a_response_and_an_address_of_the_types_size():
    short = rr(b"\xc0\x0c", 1, b"\x01\x02\x03")  # A with 3 bytes: no address
    table, _ = decode([udp((0, message(flags=0x0100, answers=(rr(b"\xc0\x0c", 1, bytes(4)),))),
                           (1, message(answers=(short,))))])
    assert len(bindings(table)[0]) == 0
    assert table.answers["addr_lo"].tolist() == [0xFFFF00000000, 0] and table.answers[1]["rdlength"] == 3


def test_compression_pointers_forward_and_backward_are_followed():
    # question name "a" + pointer to "b.example" written after the question (a forward pointer, which BIND rejects
    # and Unbound follows: both are read here)
    msg = struct.pack("!HHHHHH", 7, 0x0100, 1, 0, 0, 0) + b"\x01a\xc0\x14" + struct.pack("!HH", 1, 1) + \
        b"\x01b\x07example\x00"
    table, twin = decode([udp((0, msg))])
    assert rows(table) == twin and name_text(table, table.messages[0]["qname"]) == "a.b.example"


@pytest.mark.parametrize("name", [b"\xc0\x0c", b"\x01a\xc0\x0c", b"\xc0\x0e\xc0\x0c", b"\x01a\xc0\xff"])
def test_pointer_loops_and_wild_pointers_make_the_name_unreadable(name):
    msg = struct.pack("!HHHHHH", 1, 0x0100, 1, 0, 0, 0) + name + struct.pack("!HH", 1, 1)
    table, twin = decode([udp((0, msg))])
    assert rows(table) == twin
    assert table.messages[0]["qname"] == -1 and table.messages[0]["qtype"] == 0 and len(table.names) == 0


def test_names_longer_than_255_bytes_are_unreadable():
    long = ".".join(["a" * 63] * 4)  # 4 * 64 = 256 bytes of labels
    table, _ = decode([udp((0, message(questions=((long, 1),))), (0, message(questions=((long[2:], 1),))))])
    assert table.messages["qname"][0] == -1 and table.messages["qname_labels"][1] == 4


def test_cut_message_keeps_the_complete_answers():
    full = message(answers=tuple(rr(b"\xc0\x0c", 1, bytes([10, 0, 0, i])) for i in range(4)))
    table, twin = decode([udp((1, full[:-6], len(full)))])  # the snap length cut the last record
    assert rows(table) == twin
    m = table.messages[0]
    assert (m["size"], m["truncated"], m["ancount"], m["answers_read"]) == (len(full), 1, 4, 3)


def test_tcp_stream_of_two_messages_and_a_cut_one():
    one, two = message(ident=1), message(ident=2, answers=(rr(b"\xc0\x0c", 1, bytes(4)),))
    stream = b"".join(struct.pack("!H", len(m)) + m for m in (one, two, message(ident=3)))[:-5]
    query = struct.pack("!H", len(one)) + message(ident=1, flags=0x0100)
    flow = Flow(6, [(0, query, None, 10), (1, stream[:40], None, 500), (1, stream[40:], None, 700)])
    table, twin = decode([flow])
    assert rows(table) == twin
    assert table.messages["id"].tolist() == [1, 1, 2] and table.messages["index"].tolist() == [0, 0, 1]
    assert table.messages["ts_ns"].tolist() == [T0 + 10_000, T0 + 500_000, T0 + 500_000]  # first segment's time


def test_edns_opt_size_and_nxdomain():
    opt = b"\x00" + struct.pack("!HHIH", 41, 1232, 0, 0)  # root owner, type OPT, CLASS = UDP payload size
    nx = message(flags=0x8183, questions=(("nope.example.com", 28),), additional=opt)
    table, twin = decode([udp((0, message(flags=0x0100, additional=opt)), (1, nx))])
    assert rows(table) == twin
    assert table.messages["edns_size"].tolist() == [1232, 1232] and table.messages["rcode"].tolist() == [0, 3]


def test_binary_labels_stay_raw_and_are_judged_binary():
    # iodine's raw labels: any byte, a '.' and a zero byte inside a label included
    label = bytes(range(0x2A, 0x2A + 40)) + b"\x00.\xff"
    qname = bytes([len(label)]) + label + wire("t.tunnel.example")
    msg = struct.pack("!HHHHHH", 9, 0x0100, 1, 0, 0, 0) + qname + struct.pack("!HH", 10, 1)
    table, twin = decode([udp((0, msg))])
    assert rows(table) == twin
    m = table.messages[0]
    assert name_labels(table, m["qname"])[0] == label
    assert name_text(table, m["qname"]).endswith("\x00.\\xff.t.tunnel.example")  # as payload/dns.py's _name
    assert (DNS_CHARSETS[m["charset"]], m["encoded"], domain_text(table, 0)) == ("binary", 1, "tunnel.example")


def test_short_packets_other_protocols_and_rows_without_slot_give_no_rows():
    arrays, seq_count = naive.kept_arrays([udp((0, b"\x00" * 11)), udp((0, message()))])
    table = decode_dns(KeptArrays(*arrays), np.array([0, 1, -1, 1]), np.array([17, 1, 17, 58]),
                       np.zeros(4, np.int64), np.array([1, 1, 0, 1]))
    assert len(table.messages) == 0


def test_udp_messages_take_the_time_of_their_own_packet():
    flow = Flow(17, [(0, message(ident=i, flags=0x0100), None, 100 * i) for i in range(3)] +
                [(1, message(ident=i), None, 100 * i + 50) for i in range(3)])
    table, twin = decode([flow])
    assert rows(table) == twin
    assert table.messages["ts_ns"].tolist() == [T0 + 100_000 * i + 50_000 * d for d in (0, 1) for i in range(3)]


def test_buffers_grow_when_decompression_multiplies_the_names():
    # each 14-byte answer decompresses into two ~250-byte names: far more than the first buffer guess
    deep = wire(".".join(["x" * 60] * 4)[:240])
    head = struct.pack("!HHHHHH", 1, 0x8180, 1, 60, 0, 0) + deep + struct.pack("!HH", 5, 1)
    msg = head + b"".join(rr(b"\xc0\x0c", 5, b"\xc0\x0c") for _ in range(60))
    flows = [udp(*[(1, msg)] * 4) for _ in range(40)]
    table, twin = decode(flows, keep_bytes=4 * len(msg))
    assert rows(table) == twin and len(table.answers) == 40 * 4 * 60 and len(table.names) > 40 * 4 * 60 * 400


def test_input_validation_names_the_array_and_the_layout():
    arrays, seq_count = naive.kept_arrays([udp((0, message()))])
    bad = KeptArrays(*arrays)._replace(fill=arrays[4].astype(np.int64))
    with pytest.raises(TypeError, match="fill"):
        decode_dns(bad, np.zeros(1), np.full(1, 17), np.zeros(1), seq_count)
    with pytest.raises(ValueError, match="one length"):
        decode_dns(KeptArrays(*arrays), np.zeros(2), np.full(1, 17), np.zeros(1), seq_count)


# ------------------------------------------------------------------------------------------------ real captures
def flow_batches(path: Path):
    """The finished flows of a capture, batch by batch, straight from the flow table (no detectors)."""
    if not path.exists():
        pytest.skip(f"capture {path} not found")
    table, decoder = FlowTable(), Decoder()
    with CaptureFile(str(path), 1 << 24, 1 << 16) as capture:
        for chunk in capture.chunks():
            yield from table.update(decoder.decode_batch(chunk.buf, chunk.frames), chunk.buf)
    yield from table.flush()


def capture_batches(path: Path):
    """Per batch with DNS flows (TCP/UDP with port 53 or 5353 on either side and kept payload): the kernel's table
    and the messages as the flow batch's own accessors give them: (row, direction, index, ts_ns, bytes, wire)."""
    for batch in flow_batches(path):
        recs = batch.records
        dns = np.flatnonzero(np.isin(recs["proto"], (6, 17)) & (recs["slot"] >= 0) &
                             (np.isin(recs["resp_port"], (53, 5353)) | np.isin(recs["orig_port"], (53, 5353))))
        if not len(dns):
            continue
        r = recs[dns]
        table = decode_dns(KeptArrays.of(batch.table.t), r["slot"], r["proto"], r["first_seen_ns"], r["seq_count"])
        pieces = []
        for i, row in enumerate(dns.tolist()):
            sizes, dt_us = batch.early_sequence(row)
            first = int(recs[row]["first_seen_ns"])
            for d in (0, 1):
                times = [first + int(t) * 1000 for t in dt_us[sizes > 0 if d == 0 else sizes < 0]]
                lengths = batch.table.kept_lengths(int(recs[row]["slot"]), d)
                if recs[row]["proto"] == 17:
                    for k, piece in enumerate(batch.kept_payload(row, d)):
                        pieces.append((i, d, k, times[k] if k < len(times) else first, piece, int(lengths[k])))
                else:
                    stream, pos, k = batch.kept_stream(row, d), 0, 0
                    while pos + 2 <= len(stream) and 0 < (n := int.from_bytes(stream[pos:pos + 2], "big")) <= \
                            len(stream) - pos - 2:
                        pieces.append((i, d, k, times[0] if times else first, stream[pos + 2:pos + 2 + n], n))
                        pos, k = pos + 2 + n, k + 1
        yield table, [p for p in pieces if len(p[4]) >= 12]


def _dpkt(piece: bytes):
    try:
        return dpkt.dns.DNS(piece)
    except (dpkt.UnpackError, struct.error, IndexError, ValueError, UnicodeDecodeError):
        return None


def _dpkt_name(labels) -> str:
    return b".".join(labels).decode("utf-8")  # dpkt joins the labels and decodes them as UTF-8


def _check_against_dpkt(row: dict, msg) -> None:
    assert (row["id"], row["flags"], row["is_response"], row["opcode"], row["rcode"]) == \
        (msg.id, msg.op, msg.qr, msg.opcode, msg.rcode)
    assert (row["qdcount"], row["ancount"], row["nscount"], row["arcount"]) == \
        (len(msg.qd), len(msg.an), len(msg.ns), len(msg.ar))
    if msg.qd:
        assert (_dpkt_name(row["qname"]), row["qtype"], row["qclass"]) == (msg.qd[0].name, msg.qd[0].type,
                                                                           msg.qd[0].cls)
    assert len(row["answers"]) == len(msg.an)
    for got, rr in zip(row["answers"], msg.an):
        assert (_dpkt_name(got["name"]), got["rtype"], got["ttl"], got["rdlength"]) == (rr.name, rr.type, rr.ttl,
                                                                                        len(rr.rdata))
        if rr.type == 1 and len(rr.rdata) == 4:
            assert got["addr_lo"] == 0xFFFF00000000 | int.from_bytes(rr.ip, "big")
        if rr.type == 28 and len(rr.rdata) == 16:
            assert (got["addr_hi"] << 64 | got["addr_lo"]) == int.from_bytes(rr.ip6, "big")
        target = {2: "nsname", 5: "cname", 12: "ptrname", 15: "mxname"}.get(rr.type)
        if target:
            assert _dpkt_name(got["target"]) == getattr(rr, target)
    opts = [rr.cls for rr in msg.ar if rr.type == 41]
    assert row["edns_size"] == (opts[-1] if opts else 0)


@pytest.mark.parametrize("path", CAPTURES, ids=lambda p: p.name)
def test_every_message_of_the_captures_matches_dpkt_and_the_twin(path):
    messages = parsed = 0
    for table, pieces in capture_batches(path):
        got = rows(table)
        assert [(m["row"], m["direction"], m["index"], m["ts_ns"]) for m in got] == [p[:4] for p in pieces]
        for row, (_, _, _, _, piece, size) in zip(got, pieces):
            assert row == {**row, **naive.decode_message(piece, size)}  # the twin, on the batch's own bytes
            msg = _dpkt(piece)
            if msg is not None:
                _check_against_dpkt(row, msg)
                parsed += 1
        messages += len(got)
    assert parsed > 0 or not messages
    print(f"{path.name}: {messages} messages, {parsed} compared with dpkt")


@pytest.mark.parametrize("path", CAPTURES, ids=lambda p: p.name)
def test_captures_match_the_former_tunnel_reader(path):
    for table, pieces in capture_batches(path):
        for i, (_, _, _, _, piece, _) in enumerate(pieces):
            old = naive.summarize_message(piece)
            if old is None:
                continue
            m = table.messages[i]
            answers = table.answers[m["answer_first"]:m["answer_first"] + m["answer_count"]]
            assert (bool(m["is_response"]), m["rcode"], name_labels(table, m["qname"]), m["qtype"]) == \
                (old.is_response, old.rcode, old.qname, old.qtype)
            assert (tuple(answers["rtype"].tolist()), m["answer_rdata_bytes"], m["edns_size"]) == \
                (old.answer_types, old.answer_bytes, old.edns_size)
            assert m["size"] == old.size or m["truncated"]


@pytest.mark.parametrize("path", CAPTURES, ids=lambda p: p.name)
def test_question_names_of_the_captures_are_judged_as_dns_names_did(path):
    for table, _ in capture_batches(path):
        for i, m in enumerate(table.messages):
            if m["qname"] >= 0:
                check_question(table, i)


def check_question(table: DnsTable, i: int) -> None:
    """The question-name fields of message i equal split_name/name_features of its labels."""
    m = table.messages[i]
    split = naive.split_name(name_labels(table, m["qname"]))
    assert domain_text(table, i) == (split.domain if split else None)
    if split is None:
        assert (m["domain"], m["sub_length"], m["encoded"], m["charset"]) == (-1, 0, 0, 0)
        return
    f = naive.name_features(split.sub)
    assert (bool(m["no_tld"]), m["sub_length"], m["longest_label"], DNS_CHARSETS[m["charset"]], bool(m["encoded"])) \
        == (split.no_tld, f.length, f.longest_label, f.charset, f.encoded)
    assert m["entropy"] == np.float32(f.entropy)


@pytest.mark.parametrize("path", CAPTURES, ids=lambda p: p.name)
def test_bindings_of_the_captures_follow_cname_chains_as_the_binding_did(path):
    for table, _ in capture_batches(path):
        answers, names = bindings(table)
        got: dict[int, set[bytes]] = {}
        for a, n in zip(answers.tolist(), names.tolist()):
            got.setdefault(a, set()).add(b".".join(x.lower() for x in name_labels(table, n)))
        want = {}
        for m, row in zip(table.messages, rows(table)):
            if m["is_response"]:
                want.update({int(m["answer_first"]) + i: aliases for i, aliases in naive.chains(row["answers"])})
        assert got == want


# ------------------------------------------------------------------------------------------------ registered domains
def names_table(names: list[tuple[bytes, ...]]) -> tuple[SimpleNamespace, np.ndarray]:
    """A names buffer holding these names in wire form, and their offsets."""
    buf, offsets = bytearray(), []
    for labels in names:
        offsets.append(len(buf))
        buf += b"".join(bytes([len(x)]) + x for x in labels) + b"\0"
    return SimpleNamespace(names=np.frombuffer(bytes(buf), np.uint8)), np.array(offsets, np.int64)


def expected_start(labels: tuple[bytes, ...]) -> int:
    registered = naive.PSL.privatesuffix(labels)
    return -1 if registered is None else len(labels) - len(registered)


def _psl_rules() -> list[str]:
    from publicsuffixlist import PSLFILE
    lines = Path(PSLFILE).read_text(encoding="utf-8").splitlines()
    return [x.split(" ")[0] for x in lines if x.strip() and not x.startswith("//") and x.split(" ")[0].isascii()]


PSL_RULES = _psl_rules()
WORDS = [b"www", b"api", b"mail", b"cdn", b"edge", b"city", b"pool", b"t1", b"xn--bcher-kva", b"_dmarc", b"_tcp"]
HOSTNAME = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_"
ALPHABETS = ["0123456789abcdef", "0123456789ABCDEF", "abcdefghijklmnopqrstuvwxyz234567",
             "ABCDEFGHIJKLMNOPQRSTUVWXYZ234567", HOSTNAME, HOSTNAME[:-1] + "+/=",
             "abcdefghijklmnopqrstuvwxyz0123456789", "aeioubcdfghlmnrst", "0123456789.-"]


@st.composite
def labels_below(draw, max_labels=4) -> tuple[bytes, ...]:
    """Labels as tunnels and ordinary names make them: an alphabet's text, raw bytes, a word."""
    out = []
    for _ in range(draw(st.integers(0, max_labels))):
        kind = draw(st.integers(0, 4))
        if kind == 0:
            out.append(draw(st.binary(min_size=1, max_size=63)))
        elif kind == 1:
            out.append(draw(st.sampled_from(WORDS)))
        else:
            alphabet = draw(st.sampled_from(ALPHABETS))
            out.append(draw(st.text(alphabet, min_size=1, max_size=draw(st.sampled_from([8, 24, 63])))).encode())
    return tuple(out)


@st.composite
def dns_names(draw) -> tuple[bytes, ...]:
    """A name under a PSL rule (wildcards and exceptions included), an ignored zone, a no-TLD or a random tail."""
    kind = draw(st.integers(0, 3))
    if kind == 0:
        rule = draw(st.sampled_from(PSL_RULES)).lstrip("!")
        tail = [x.encode() for x in rule.split(".")]
        tail = [draw(st.sampled_from(WORDS)) if x == b"*" else x for x in tail]
    elif kind == 1:
        tail = [x.encode() for x in draw(st.sampled_from(["in-addr.arpa", "ip6.arpa", "local", "home.arpa", "com",
                                                          "co.uk", "github.io", "12345", "localhost", "x" * 25]))]
    else:
        tail = list(draw(labels_below(2)))
    labels = list(draw(labels_below())) + tail
    labels = [x.upper() if draw(st.booleans()) else x for x in labels]
    return tuple(labels)


def _fits(labels) -> bool:
    return sum(len(x) + 1 for x in labels) <= 255 and all(labels)


def _capture_names() -> list[tuple[bytes, ...]]:
    found = set()
    for path in CAPTURES:
        if path.exists():
            for table, _ in capture_batches(path):
                offsets = np.concatenate([table.messages["qname"], table.answers["name"], table.answers["target"]])
                found |= {name_labels(table, off) for off in offsets[offsets >= 0].tolist()}
    return sorted(found)


def test_registered_domains_of_the_capture_names_match_publicsuffixlist():
    missing = [p.name for p in CAPTURES if not p.exists()]
    if missing:
        pytest.skip(f"public DNS captures not found under {PUBLIC_CAPTURES}: {', '.join(missing[:3])}")
    names = _capture_names()
    table, offsets = names_table(names)
    assert registered_domain_start(table, offsets).tolist() == [expected_start(x) for x in names]
    assert len(names) > 500


@FUZZ
@given(st.lists(dns_names().filter(_fits), min_size=1, max_size=30))
def test_registered_domains_match_publicsuffixlist(names):
    table, offsets = names_table(names)
    assert registered_domain_start(table, offsets).tolist() == [expected_start(x) for x in names]


def test_psl_wildcards_and_exceptions():
    names = [(b"a", b"b", b"kawasaki", b"jp"), (b"www", b"city", b"kawasaki", b"jp"), (b"city", b"kawasaki", b"jp"),
             (b"kawasaki", b"jp"), (b"x", b"WWW", b"ck"), (b"x", b"y", b"ck"), (b"foo", b"github", b"io"),
             (b"a", b"b", b"unknowntld"), (b"x", b"co.uk"), (b"q", b"xn--fiqs8s")]
    table, offsets = names_table(names)
    assert registered_domain_start(table, offsets).tolist() == [0, 1, 0, -1, 1, 0, 0, 1, 0, 0]


@FUZZ
@given(labels_below(), dns_names())
def test_question_names_are_judged_as_dns_names_did(below, name):
    labels = below + name
    msg = struct.pack("!HHHHHH", 1, 0x0100, 1, 0, 0, 0) + b"".join(bytes([len(x)]) + x for x in labels) + \
        b"\0" + struct.pack("!HH", 16, 1)
    table, twin = decode([udp((0, msg))])
    assert rows(table) == twin
    if _fits(labels):
        check_question(table, 0)
    else:
        assert table.messages[0]["qname"] == -1


def test_pool_suffixes_match_at_label_boundaries_longest_first():
    pools = tomllib.loads((REPO / "rules" / "pools.toml").read_text())
    suffixes = [d["suffix"] for d in pools["domain"]] + ["eth.nanopool.org"]
    names = [(b"xmr", b"nanopool", b"org"), (b"eth", b"NanoPool", b"org"), (b"a", b"eth", b"nanopool", b"org"),
             (b"xnanopool", b"org"), (b"nanopool", b"org", b"evil"), (b"org",), (b"nanopool.org",)]
    table, offsets = names_table(names)
    got = SuffixSet.of(suffixes).match(table, offsets).tolist()
    assert [suffixes[i] if i >= 0 else None for i in got] == \
        ["nanopool.org", "eth.nanopool.org", "eth.nanopool.org", None, None, None, "nanopool.org"]


@FUZZ
@given(st.lists(dns_names().filter(_fits), min_size=1, max_size=20), st.lists(dns_names(), min_size=1, max_size=8))
def test_suffix_set_matches_the_longest_listed_suffix(names, listed):
    listed = [s for s in listed if s and all(x.isascii() and b"." not in x for x in s) and len(b".".join(s)) < 250]
    suffixes = [b".".join(s).decode() for s in listed] or ["com"]
    table, offsets = names_table(names)
    want = []
    for labels in names:
        dotted = [b".".join(labels[i:]).lower().decode("latin-1") for i in range(len(labels))]
        hit = next((s for s in dotted if s in [x.lower() for x in suffixes]), None)
        want.append(None if hit is None else [x.lower() for x in suffixes].index(hit))
    got = SuffixSet.of(suffixes).match(table, offsets).tolist()
    assert [None if i < 0 else i for i in got] == want


def test_suffix_set_refuses_what_is_no_dns_suffix():
    for bad in ("", "a..b", "bücher.de", "x" * 300):
        with pytest.raises(ValueError, match="not a DNS suffix"):
            SuffixSet.of([bad])


def test_unique_names_groups_equal_names_ignoring_case():
    names = [(b"a", b"Example", b"com"), (b"A", b"example", b"COM"), (b"b", b"example", b"com"), (b"a",), ()]
    table, offsets = names_table(names)
    group, first = unique_names(table, np.append(offsets, -1))
    assert group[0] == group[1] and len(set(group.tolist())) == 5
    assert first.tolist() == [int(np.flatnonzero(group == g)[0]) for g in range(len(first))]
    first_labels, _ = unique_names(table, offsets, np.ones(5))
    assert first_labels[0] == first_labels[1] == first_labels[3] != first_labels[2]


# ------------------------------------------------------------------------------------------------ totality
def _seed_messages() -> list[bytes]:
    seeds = [message(), message(answers=(rr(b"\xc0\x0c", 5, b"\x01a\xc0\x0c"), rr(b"\xc0\x0c", 1, bytes(4)))),
             message(flags=0x0100, additional=b"\x00" + struct.pack("!HHIH", 41, 4096, 0, 0))]
    for name in ("dns-lookups-benign.pcap", "dns-tunnel-iodine.pcap", "dns-tunnel-dns2tcp.pcap"):
        for _, pieces in capture_batches(LAB_CAPTURES / name):
            seeds += [p[4] for p in pieces[:40]]
    return seeds


SEEDS = _seed_messages()


@st.composite
def mutated(draw) -> bytes:
    """A real message with flipped bytes, cuts, insertions and pointers aimed anywhere."""
    data = bytearray(draw(st.sampled_from(SEEDS)))
    for _ in range(draw(st.integers(0, 6))):
        i = draw(st.integers(0, max(len(data) - 1, 0)))
        op = draw(st.integers(0, 4))
        if op == 0 and data:
            data[i] = draw(st.integers(0, 255))
        elif op == 1:
            data = data[:i]
        elif op == 2:
            data[i:i] = draw(st.binary(max_size=8))
        elif op == 3 and i + 1 < len(data):
            data[i:i + 2] = struct.pack("!H", 0xC000 | draw(st.integers(0, 0x3FFF)))
        elif op == 4 and len(data) >= 12:
            data[4 + 2 * draw(st.integers(0, 3)):][:2] = struct.pack("!H", draw(st.sampled_from([0, 1, 255, 0xFFFF])))
    return bytes(data)


payloads = st.one_of(mutated(), st.binary(min_size=0, max_size=300))


@FUZZ
@given(st.lists(st.tuples(st.integers(0, 1), payloads), min_size=1, max_size=6), st.sampled_from([6, 17]),
       st.sampled_from([64, 2048]))
def test_any_bytes_give_the_twins_rows(packets, proto, keep_bytes):
    if proto == 6:  # a stream: each payload behind its length, sometimes a wrong one
        packets = [(d, struct.pack("!H", len(p) if len(p) % 7 else len(p) + 3) + p) for d, p in packets]
    flow = Flow(proto, [(d, p, None, 10 * k) for k, (d, p) in enumerate(packets)])
    table, twin = decode([flow, flow], keep_bytes=keep_bytes)
    assert rows(table) == twin
    answers, names = bindings(table)
    assert len(answers) == len(names) and (names >= 0).all()
    unique_names(table, table.messages["qname"])


@FUZZ
@given(st.data())
def test_inconsistent_kept_arrays_are_read_within_their_bounds(data):
    """Counts, caps, fills and sequence lengths that disagree with each other and with the array shapes."""
    arrays, _ = naive.kept_arrays([udp((0, p), (1, p)) for p in data.draw(st.lists(payloads, min_size=2, max_size=2))])
    arrays = [a.copy() for a in arrays]
    rand = lambda a: data.draw(st.integers(0, int(np.iinfo(a.dtype).max)))  # noqa: E731
    for a in arrays[1:]:  # cap, length, count, fill, seq_size, seq_dt_us
        for index in data.draw(st.lists(st.tuples(*[st.integers(0, n - 1) for n in a.shape]), max_size=4)):
            a[index] = rand(a)
    slots, protos = np.array([0, 1, 5, -3]), np.array([17, 6, 17, 6])
    first, seq_count = np.zeros(4, np.int64), np.array([data.draw(st.integers(0, 70000)) for _ in range(4)])
    table = decode_dns(KeptArrays(*arrays), slots, protos, first, seq_count)
    assert rows(table) == naive.naive_table(arrays, slots, protos, first, seq_count)


BOUNDS_CHECK = r"""
import random, struct, sys, numpy as np
sys.path.insert(0, sys.argv[1])
import naive_dns as naive
from egressguard.payload.dns_table import KeptArrays, bindings, decode_dns, unique_names
from egressguard.payload.suffixes import SuffixSet, registered_domain_start
rng = random.Random(7)
seed = bytes.fromhex(sys.argv[2])
for i in range(400):
    flows = []
    for _ in range(3):
        data = bytearray(seed if rng.random() < 0.7 else rng.randbytes(rng.randrange(0, 80)))
        for _ in range(rng.randrange(0, 8)):
            j = rng.randrange(0, len(data) + 1)
            junk = struct.pack("!H", rng.randrange(65536))
            data[j:j + 1] = bytes([rng.randrange(256)]) if rng.random() < 0.7 else junk
        proto = rng.choice((6, 17))
        flows.append(naive.Flow(proto, [(rng.randrange(2), bytes(data), None, 5)] * rng.randrange(1, 5)))
    arrays, seq = naive.kept_arrays(flows, keep_bytes=rng.choice((16, 200)))
    arrays = [a.copy() for a in arrays]
    for a in arrays[1:]:
        a.flat[rng.randrange(a.size)] = rng.randrange(int(np.iinfo(a.dtype).max) + 1)
    t = decode_dns(KeptArrays(*arrays), np.array([0, 1, 2, 9]), np.array([17, 6, 17, 6]), np.zeros(4, np.int64),
                   np.append(seq, 1) + rng.randrange(0, 3))
    bindings(t)
    offsets = np.concatenate([t.messages["qname"], t.answers["name"], t.answers["target"]])
    unique_names(t, offsets)
    registered_domain_start(t, offsets)
    SuffixSet.of(["example.com", "co.uk"]).match(t, offsets)
print("ok")
"""


def test_no_kernel_reads_out_of_bounds(tmp_path):
    """The fuzzing above again with numba's bounds checks compiled in (a fresh cache: ~30 s of compiling)."""
    env = {**os.environ, "NUMBA_BOUNDSCHECK": "1", "NUMBA_CACHE_DIR": str(tmp_path), "PYTHONPATH": str(REPO)}
    seed = SEEDS[min(5, len(SEEDS) - 1)]
    done = subprocess.run([sys.executable, "-c", BOUNDS_CHECK, str(Path(__file__).parent), seed.hex()], env=env,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr[-3000:]


def test_importing_the_table_reads_and_compiles_nothing():
    probe = ("import sys; import egressguard.payload.dns_table as t, egressguard.payload.suffixes as s; "
             "assert 'publicsuffixlist' not in sys.modules; assert s.public_suffix_rules.cache_info().currsize == 0; "
             "assert not t._decode_rows.overloads and not s._registered_starts.overloads; print('ok')")
    done = subprocess.run([sys.executable, "-c", probe], env={**os.environ, "PYTHONPATH": str(REPO)},
                          capture_output=True, text=True, timeout=120)
    assert done.stdout.strip() == "ok", done.stderr[-2000:]
