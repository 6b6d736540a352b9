"""Mining protocols in kept bytes: the JSON reader, each protocol family, negatives, hostile input, Stratum V2 sizes."""
import json
import random

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from egressguard.payload.stratum import (MAX_TEXT, Family, http_messages, json_messages, parse_session,
                                         sv2_handshake)


def lines(*objs, sep=b"\n") -> bytes:
    return b"".join(json.dumps(o).encode() + sep for o in objs)


# ---- the JSON reader
def test_several_objects_per_segment_and_whitespace_variants():
    stream = (b'{"id":1,"method":"a"}\n{ "id" : 2 , "method" : "b" }\r\n\r\n\t  {"id":3}{"id":4}\n'
              b'[{"id":5},{"id":6}]\n')
    js = json_messages(stream)
    assert [m["id"] for m in js.messages] == [1, 2, 3, 4, 5, 6]
    assert not js.truncated and js.other_lines == 0


def test_line_split_across_segments_is_read_from_the_concatenated_stream():
    whole = lines({"id": 1, "method": "mining.subscribe", "params": ["cpuminer/2.5"]})
    pieces = [whole[:7], whole[7:30], whole[30:]]
    assert json_messages(b"".join(pieces)).messages == json_messages(whole).messages


def test_truncated_last_line_keeps_the_members_that_arrived_whole():
    js = json_messages(b'{"id":1}\n{"id":100,"method":"mining.submit","params":["t1abc.rig4","8c6f","a9cc405a","3e27')
    assert js.truncated
    assert js.messages[1] == {"id": 100, "method": "mining.submit", "params": ["t1abc.rig4", "8c6f", "a9cc405a"]}
    cut = json_messages(b'{"id":1,"jsonrpc":"2.0","method":"login","params":{"login":"4BCe","pass":"x","agent":"XM')
    assert cut.messages == [{"id": 1, "jsonrpc": "2.0", "method": "login", "params": {"login": "4BCe", "pass": "x"}}]
    assert json_messages(b'{"id').messages == []  # nothing whole arrived
    assert json_messages(b'{"id":1, \xd7').messages == []  # not JSON outside a string: never a cut-off line


def test_random_bytes_after_a_bracket_are_not_json():
    """A Noise key or any ciphertext starts with '{' or '[' once in 128; the rest must not make it 'JSON' (an empty
    {} or a recovered '{' alone used to, hiding Stratum V2 handshakes about one time in seven)."""
    rng = random.Random(7)
    for _ in range(3000):
        for first in (b"{", b"["):
            stream = first + rng.randbytes(rng.choice((63, 181, 233, 311)))
            assert json_messages(stream).messages == [], stream
    assert json_messages(b"{}\n[{}, {}]\n{\"id\": 1}\n").messages == [{"id": 1}]


def test_junk_and_malformed_lines_are_skipped():
    js = json_messages(b'GET / HTTP/1.1\n{"id": 1 "method"}\n{"id":2}\n\x00\xff\xfe\n')
    assert [m["id"] for m in js.messages] == [2]
    assert js.other_lines == 3


# ---- families (exact strings of detection-science 2.1-2.5)
def test_stratum_v1_both_sides():
    miner = lines({"id": 1, "method": "mining.subscribe",
                   "params": ["EWBF 0.3.4b", None, "eu1-zcash.flypool.org", "3333"]},
                  {"id": 2, "method": "mining.authorize", "params": ["t1fAhZF5aUJdY7CikGULHmeYk7id8qmvbAd.rig4", "x"]},
                  {"id": 3, "method": "mining.extranonce.subscribe", "params": []},
                  {"id": 4, "method": "mining.configure", "params": [["version-rolling"], {}]},
                  {"id": 100, "method": "mining.submit", "params": ["t1f.rig4", "8c6f", "a9cc405a", "3e27"]})
    pool = lines({"id": 1, "result": [[["mining.set_difficulty", "b4"], ["mining.notify", "b4"]], "08000002", 4],
                  "error": None},
                 {"id": None, "method": "mining.set_difficulty", "params": [4096]},
                 {"id": None, "method": "mining.notify", "params": ["8f8", "1cf6", "01", "02", [], "20000000",
                                                                    "1a0", "5a0", True]})
    s = parse_session(miner, pool)
    assert s.family == Family.STRATUM_V1 and s.miner_is_orig and s.both_sides
    assert s.miner_methods == ("mining.subscribe", "mining.authorize", "mining.extranonce.subscribe",
                               "mining.configure", "mining.submit")
    assert s.pool_methods == ("mining.set_difficulty", "mining.notify") and "subscribe result" in s.pool_answers
    assert (s.login, s.worker, s.agent) == ("t1fAhZF5aUJdY7CikGULHmeYk7id8qmvbAd.rig4", "rig4", "EWBF 0.3.4b")
    assert s.pool_host == "eu1-zcash.flypool.org" and s.coin == "zcash"  # nDPI's ZCash sub-tag rule
    assert s.shares == 1 and s.jobs == 1


def test_miner_side_alone_is_still_mining_and_the_pool_side_alone_too():
    attempt = parse_session(b'{"id": 2, "method": "mining.subscribe", "params": ["cgminer/3.7.2"]}\n', b"")
    assert attempt.family == Family.STRATUM_V1 and not attempt.both_sides and attempt.agent == "cgminer/3.7.2"
    pushes = parse_session(lines({"id": None, "method": "mining.notify", "params": ["1", "2"]}), b"")
    assert pushes is not None and not pushes.miner_is_orig  # the originator sent the pool's messages
    assert parse_session(b"", lines({"id": None, "method": "mining.notify", "params": ["1"]})).miner_is_orig


def test_cryptonote_xmrig_login_job_submit_keepalived():
    login = {"id": 1, "jsonrpc": "2.0", "method": "login", "params": {
        "login": "44AFFq5kSiGBoZ4NMDwYtN18obc8AemS33DBLWs3H7otXft3XjrpDtQGv7SqSsaBYBb98uNbr2VBBEt7f2wfn3RVGQBEP3A",
        "pass": "x", "agent": "XMRig/6.26.0 (Linux x86_64) libuv/1.44.2 gcc/12.2.0", "algo": ["rx/0"], "rigid": "r1"}}
    result = {"id": 1, "jsonrpc": "2.0", "error": None, "result": {
        "id": "4790", "job": {"blob": "0e0e", "job_id": "1", "target": "dcff1100", "algo": "rx/0"},
        "extensions": ["algo", "nicehash", "keepalive"], "status": "OK"}}
    miner = lines(login, {"id": 2, "jsonrpc": "2.0", "method": "submit", "params": {
        "id": "4790", "job_id": "1", "nonce": "98024001", "result": "c9be" * 16}},
                  {"id": 3, "jsonrpc": "2.0", "method": "keepalived", "params": {"id": "4790"}})
    pool = lines(result, {"jsonrpc": "2.0", "method": "job", "params": {"blob": "0e0f", "job_id": "2", "target": "ff"}})
    s = parse_session(miner, pool)
    assert s.family == Family.CRYPTONOTE and s.both_sides
    assert s.miner_methods == ("login", "submit", "keepalived") and s.pool_methods == ("job",)
    assert s.agent.startswith("XMRig/6.26.0") and s.worker == "r1" and s.algorithm == "rx/0"
    assert len(s.login) == MAX_TEXT + 3 and s.login.endswith("...")
    assert s.extensions == ("algo", "nicehash", "keepalive") and s.shares == 1 and s.jobs == 2


def test_xmr_stak_login_without_jsonrpc_member_and_midsession_submit_only():
    s = parse_session(lines({"method": "login", "params": {"login": "kvetak.worker1", "pass": "password",
                                                           "agent": "xmr/1.0"}, "id": 1}), b"")
    assert s.family == Family.CRYPTONOTE and s.login == "kvetak.worker1" and s.worker == "worker1"
    mid = parse_session(lines({"id": "10", "jsonrpc": "2.0", "method": "submit", "params": {
        "id": "1332", "job_id": "1182", "nonce": "90290080", "result": "c325" * 16}}),
        lines({"jsonrpc": "2.0", "result": {"status": "OK"}, "id": "10", "error": None}))
    assert mid.family == Family.CRYPTONOTE and mid.both_sides and mid.pool_answers == ("status OK",)


def test_ethereum_proxy_and_ethereum_stratum():
    eth = parse_session(lines({"worker": "eth1.0", "jsonrpc": "2.0", "params": ["0x9c99d212/tester.worker1/a@b", "x"],
                               "id": 2, "method": "eth_submitLogin"},
                              {"worker": "", "jsonrpc": "2.0", "params": [], "id": 3, "method": "eth_getWork"},
                              {"id": 4, "method": "eth_submitWork", "params": ["0x1", "0x2", "0x3"]}),
                        lines({"id": 3, "jsonrpc": "2.0", "result": ["0x" + "41" * 32, "0x" + "71" * 32,
                                                                     "0x" + "00" * 32]}))
    assert eth.family == Family.ETHEREUM_PROXY and eth.coin == "ethereum" and eth.both_sides
    assert eth.worker == "eth1.0" and "work package" in eth.pool_answers  # "/" logins give no '.'-split worker
    es1 = parse_session(lines({"id": 1, "method": "mining.subscribe",
                               "params": ["ethminer/0.19", "EthereumStratum/1.0.0"]}),
                        lines({"id": 1, "result": [["mining.notify", "ae68", "EthereumStratum/1.0.0"], "080c"]}))
    assert es1.family == Family.ETHEREUM_STRATUM and es1.coin == "ethereum"
    es2 = parse_session(lines({"id": 0, "method": "mining.hello", "params": {
        "agent": "ethminer-0.19", "host": "eth.pool.example", "port": "4d2", "proto": "EthereumStratum/2.0.0"}}), b"")
    assert es2.family == Family.ETHEREUM_STRATUM and es2.pool_host == "eth.pool.example"


def test_getwork_over_http_bodies_and_mining_headers():
    body = json.dumps({"id": 1, "jsonrpc": "2.0", "method": "eth_getWork", "params": []}).encode()
    req = (b"POST /?miner=30@0x4b99@Rig HTTP/1.1\r\nHost: pool.eth.pp.ua\r\nContent-Type: application/json\r\n"
           b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)
    answer = json.dumps({"id": 1, "jsonrpc": "2.0", "result": True}).encode()
    resp = (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + f"{len(answer):x}".encode() + b"\r\n"
            + answer + b"\r\n0\r\n\r\n")
    s = parse_session(req * 2, resp * 2)
    assert s.family == Family.GETWORK_HTTP and s.login == "30@0x4b99@Rig" and s.pool_host == "pool.eth.pp.ua"
    assert [m.body for m in http_messages(resp * 2)] == [answer, answer]
    bitcoin = json.dumps({"method": "getwork", "params": [], "id": 0}).encode()
    hdr = (b"POST / HTTP/1.1\r\nHost: 10.0.0.1:8332\r\nX-Mining-Extensions: longpoll midstate rollntime\r\n"
           b"Content-Length: " + str(len(bitcoin)).encode() + b"\r\n\r\n" + bitcoin)
    g = parse_session(hdr, b"HTTP/1.1 200 OK\r\nX-Stratum: stratum+tcp://pool.example:3333\r\n"
                           b"Content-Length: 0\r\n\r\n")
    assert g.family == Family.GETWORK_HTTP and "getwork" in g.miner_methods
    assert any(e.startswith("x-stratum: stratum+tcp") for e in g.extensions)
    assert any(e.startswith("x-mining-extensions") for e in g.extensions)


# ---- negatives: JSON-RPC that is not mining
@pytest.mark.parametrize("orig,resp", [
    (lines({"jsonrpc": "2.0", "method": "echo", "params": ["Testing!"], "id": "ca08"}), b""),
    (lines({"jsonrpc": "2.0", "method": "login", "params": {"login": "alice", "pass": "secret"}, "id": 1}),
     lines({"jsonrpc": "2.0", "result": {"status": "OK"}, "id": 1})),  # no agent: ET also requires one
    (lines({"jsonrpc": "2.0", "method": "submit", "params": {"form": "contact", "result": "ok"}, "id": 2}), b""),
    (lines({"jsonrpc": "2.0", "method": "job", "params": {"job_id": "build-17"}, "id": 3}), b""),
    (lines({"jsonrpc": "2.0", "method": "eth_blockNumber", "params": [], "id": 4},
           {"jsonrpc": "2.0", "method": "eth_call", "params": [{"to": "0x1"}, "latest"], "id": 5}),
     lines({"jsonrpc": "2.0", "result": "0x10d4f", "id": 4})),
    (lines({"jsonrpc": "2.0", "method": "notify", "params": {"event": "tick"}},
           {"jsonrpc": "2.0", "method": "client.reconnect", "params": []}), b""),  # supporting words only
    (b'POST /zabbix/jsrpc.php?output=json-rpc HTTP/1.1\r\nHost: z.example\r\nContent-Length: 76\r\n\r\n'
     b'{"jsonrpc": "2.0", "method": "zabbix.status", "params": {}, "auth": "6089", "id": 1}',
     b'HTTP/1.0 200 OK\r\nContent-Length: 67\r\n\r\n'
     b'{"jsonrpc":"2.0","result":{"result":true,"message":""},"id":103796}'),
    (b'{"text": "please run mining.subscribe for me"}\n', b""),  # a method name inside a string is not a method
])
def test_other_json_rpc_is_not_mining(orig, resp):
    assert parse_session(orig, resp) is None


# ---- hostile input
@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=3000), st.binary(max_size=3000))
def test_random_bytes_never_raise(orig, resp):
    parse_session(orig, resp)
    parse_session(b"{" + orig, b'{"id":' + resp)
    parse_session(b"POST / HTTP/1.1\r\n\r\n" + orig, b"HTTP/1.1 200 OK\r\n\r\n" + resp)
    json_messages(orig)


@settings(max_examples=200, deadline=None)
@given(st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=20),
                    lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=8), c, max_size=4),
                    max_leaves=30),
       st.sampled_from(["mining.subscribe", "login", "submit", "job", "eth_submitLogin", "keepalived",
                        "mining.notify", "mining.hello"]))
def test_any_params_shape_never_raises(params, method):
    msg = {"id": 1, "method": method, "params": params, "result": params, "worker": params}
    parse_session(lines(msg), lines({"id": 1, "result": params}))


def test_huge_lines_deep_nesting_long_numbers_and_bad_utf8():
    huge = b'{"id":1,"method":"mining.subscribe","params":["' + b"A" * 1_000_000 + b'"]}\n'
    s = parse_session(huge, b"")  # read up to MAX_STREAM: the cut-off agent string is dropped, the method kept
    assert s is not None and s.miner_methods == ("mining.subscribe",) and s.agent is None
    s = parse_session(huge[:5000] + b'"]}\n', b"")
    assert len(s.agent) == MAX_TEXT + 3
    assert parse_session(b"[" * 100_000, b"{" * 100_000) is None
    assert parse_session(b'{"id":' + b"9" * 10_000 + b',"method":"mining.submit","params":[]}\n', b"") is not None
    assert parse_session(b'{"id":1,"method":"mining.authorize","params":["\xff\xfe\xc3(",""]}\n', b"") is not None
    truncated = b'{"a":' * 5000
    assert json_messages(truncated).messages == [] or json_messages(truncated).truncated


def test_control_characters_in_logins_are_kept_bounded_and_never_interpreted():
    login = "wallet\x1b[31m\x07\u202e.rig\r\nX-Injected: 1" + "\x00" * 200
    s = parse_session(lines({"id": 2, "method": "mining.authorize", "params": [login, "x"]}), b"")
    assert s.login == login[:MAX_TEXT] + "..."
    out = json.dumps({"login": s.login}, ensure_ascii=True)
    assert "\x1b" not in out and "\u202e" not in out and "\r" not in out


# ---- Stratum V2
def test_sv2_handshake_sizes():
    key = random.Random(3).randbytes(64)
    hs = sv2_handshake(np.array([64, -234, 118, -78, 88, -128]), key)
    assert hs is not None and hs.records_after == 4 and hs.records_min == 78
    assert sv2_handshake(np.array([64, -234]), key).records_after == 0
    assert sv2_handshake(np.array([64, -230, 118]), key) is None  # not the 234-byte act 2
    assert sv2_handshake(np.array([-234, 64]), key) is None  # the responder spoke first
    assert sv2_handshake(np.array([64, -234, 20]), key) is None  # a 20-byte record cannot be an SV2 frame
    assert sv2_handshake(np.array([64, -234]), b"\x16\x03\x01" + key[3:]) is None  # a TLS record header
    assert sv2_handshake(np.array([64, -234]), b"A" * 64) is None  # not a random-looking key
    assert sv2_handshake(np.array([64, -234]), key[:10]) is None
