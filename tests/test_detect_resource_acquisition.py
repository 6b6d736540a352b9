"""`resource_acquisition` (issue 16): billing, provisioning, payment, exchange and wallet endpoints by server name
(TLS SNI, HTTP Host, DNS binding), node RPC ports, and wallet JSON-RPC methods in plaintext.

Recall on the acquisition lab (captures/acquisition, recorded by captures/lab_acquisition.py) with the right
category; nothing on its negatives, on every other lab recording and on the public set; [[acquisition]] entries of
the rules file silence what they allow; the endpoint list and the method finder on their own.
"""
from __future__ import annotations

import csv
import re
from pathlib import Path

import pytest
from click.testing import CliRunner

from conftest import LAB_CAPTURES, PUBLIC_CAPTURES
from egressguard.cli import main
from egressguard.detect.resource_acquisition import (CRITICAL_METHODS, METHODS, ResourceAcquisitionDetector,
                                                     find_methods)
from egressguard.errors import ExitStatus, RulesError
from egressguard.pipeline import Analyzer, FlowsReady, default_context
from egressguard.policy.acquisition import CATEGORIES, load_acquisition
from egressguard.policy.rules import load_rules, parse_rules
from egressguard.schema import FindingKind, Severity

LAB = LAB_CAPTURES / "acquisition"
CAPTURE_SUFFIXES = (".pcap", ".pcapng", ".cap", ".pcap.gz", ".pcapng.gz", ".pcap.xz", ".pcap.bz2")


def findings(path: Path, rules_path: Path | None = None, rules=None) -> list:
    """resource_acquisition findings of one capture, with only this detector running."""
    rules = rules if rules is not None else load_rules(rules_path)
    out = []
    analyzer = Analyzer(detectors=[ResourceAcquisitionDetector], ctx=default_context(rules))
    for event in analyzer.analyze(str(path)):
        if isinstance(event, FlowsReady):
            out += [f for f in event.result.findings if f.kind == FindingKind.RESOURCE_ACQUISITION]
    return out


def _labels() -> list[dict]:
    with (LAB / "labels.csv").open(newline="") as fh:
        return list(csv.DictReader(fh))


def _server(f) -> str:
    from egressguard.netaddr import endpoint_text

    return f"{endpoint_text(f.flow, 'resp')}:{int(f.flow['resp_port'])}"


_CACHE: dict[Path, list] = {}


def _lab_findings(name: str) -> list:
    path = LAB / name
    if path not in _CACHE:
        _CACHE[path] = findings(path, LAB / "rules.toml")
    return _CACHE[path]


# ------------------------------------------------------------------------------------------------ the lab
@pytest.mark.parametrize("row", [r for r in _labels() if r["class"] != "benign"],
                         ids=lambda r: f"{r['file']}:{r['server']}")
def test_every_acquisition_flow_of_the_lab_is_found_with_its_category(row):
    hits = [f for f in _lab_findings(row["file"]) if _server(f) == row["server"]]
    assert len(hits) == 1, (row, [(_server(f), f.details) for f in _lab_findings(row["file"])])
    f = hits[0]
    assert f.details["category"] == row["class"]
    assert f.severity >= Severity.HIGH
    acq = f.details["acquisition"]
    if acq["methods"]:  # plaintext wallet calls: the method, critical for the ones that move funds or unlock
        assert acq["method"] in METHODS and acq["method"] in row["note"]
        assert f.severity == Severity.CRITICAL
    else:  # by name: the name the flow or DNS gave, where it came from, and the documentation it is listed by
        assert acq["name"] and acq["name"] in row["note"]
        assert acq["name_from"] in ("tls_sni", "http_host", "dns")
        assert acq["source"].startswith("https://") and acq["provider"]
        assert any(acq["name"] in e for e in f.evidence)


def test_the_hosted_node_behind_dns_is_named_by_the_dns_answer():
    (f,) = _lab_findings("wallet-rpc-dns.pcap")
    assert f.details["acquisition"]["name_from"] == "dns"
    assert f.details["acquisition"]["name"] == "eth-mainnet.g.alchemy.com"


def test_the_negatives_raise_nothing():
    benign = {(r["file"], r["server"]) for r in _labels() if r["class"] == "benign"}
    assert len(benign) >= 8
    for name in sorted({r["file"] for r in _labels()}):
        wrong = [(_server(f), f.details["category"]) for f in _lab_findings(name) if (name, _server(f)) in benign]
        assert not wrong, (name, wrong)
    assert _lab_findings("acquisition-negatives.pcap") == []


def test_every_finding_of_the_lab_is_labelled():
    labelled = {(r["file"], r["server"]) for r in _labels() if r["class"] != "benign"}
    for name in sorted({r["file"] for r in _labels()}):
        for f in _lab_findings(name):
            assert (name, _server(f)) in labelled


# ------------------------------------------------------------------------------------------------ rules grants
def _rules_with(tmp_path: Path, extra: str) -> Path:
    path = tmp_path / "rules.toml"
    path.write_text((LAB / "rules.toml").read_text() + "\n" + extra)
    return path


def test_a_category_allowed_for_the_sandbox_is_silenced_and_the_others_are_not(tmp_path):
    rules = _rules_with(tmp_path, '[[acquisition]]\nname = "checkout agent"\ncategories = ["payment"]\n'
                                  'sources = { cidrs = ["10.77.0.2/32"] }\n')
    got = findings(LAB / "payment-exchange-tls.pcap", rules)
    assert got and {f.details["category"] for f in got} == {"crypto_exchange"}
    before = {f.details["category"] for f in _lab_findings("payment-exchange-tls.pcap")}
    assert before == {"payment", "crypto_exchange"}


def test_a_grant_for_another_sandbox_silences_nothing(tmp_path):
    rules = _rules_with(tmp_path, '[[acquisition]]\ncategories = ["payment", "crypto_exchange"]\n'
                                  'sources = { cidrs = ["10.77.0.9/32"] }\n')
    assert len(findings(LAB / "payment-exchange-tls.pcap", rules)) == 6


def test_an_allowed_endpoint_covers_that_name_only(tmp_path):
    rules = _rules_with(tmp_path, '[[acquisition]]\nendpoints = ["api.stripe.com", "kraken.com"]\n')
    names = {f.details["acquisition"]["name"] for f in findings(LAB / "payment-exchange-tls.pcap", rules)}
    assert names == {"api-m.paypal.com", "api.braintreegateway.com", "api.binance.com", "api.coinbase.com"}


def test_wallet_rpc_allowed_silences_the_plaintext_calls(tmp_path):
    rules = _rules_with(tmp_path, '[[acquisition]]\ncategories = ["wallet_rpc"]\n')
    assert findings(LAB / "wallet-rpc-plaintext.pcap", rules) == []
    assert findings(LAB / "wallet-rpc-dns.pcap", rules) == []


@pytest.mark.parametrize("text, needle", [
    ('[[acquisition]]\ncategories = ["paymnet"]\n', 'did you mean "payment"'),
    ('[[acquisition]]\ncategories = "payment"\n', "must be a list of strings"),
    ('[[acquisition]]\nendpoints = ["*.stripe.com"]\n', "not a server name"),
    ('[[acquisition]]\nname = "nothing"\n', "allows nothing"),
    ('[[acquisition]]\ncategory = ["payment"]\n', 'did you mean "categories"'),
    ('[[acquisition]]\ncategories = ["payment"]\nsources = { interfaces = ["veth1"] }\n', "address or MAC only"),
    ('[acquisition]\nallow = ["payment"]\n', "list of tables"),
])
def test_bad_acquisition_entries_are_one_clear_error(tmp_path, text, needle):
    path = tmp_path / "bad.toml"
    path.write_text("version = 1\n" + text)
    result = CliRunner().invoke(main, ["rules", "check", str(path)])
    assert result.exit_code == ExitStatus.RULES, result.output
    assert needle in result.output and "Traceback" not in result.output
    assert re.search(r"bad\.toml:\d+: ", result.output), result.output


def test_rules_check_shows_the_categories_and_what_allows_them(tmp_path):
    rules = _rules_with(tmp_path, '[[acquisition]]\nname = "finance bot"\ncategories = ["cloud_billing"]\n')
    result = CliRunner().invoke(main, ["rules", "check", str(rules)], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    for category in CATEGORIES:
        assert category in result.output
    assert 'acquisition[0] "finance bot"' in result.output


# ------------------------------------------------------------------------------------------------ method finder
@pytest.mark.parametrize("data, expected", [
    (b'{"jsonrpc":"2.0","id":1,"method":"eth_sendRawTransaction","params":["0xf8"]}', ["eth_sendRawTransaction"]),
    (b'POST / HTTP/1.1\r\nHost: x\r\n\r\n{"jsonrpc": "1.0", "id": "a", "method" : "sendtoaddress", "params": []}',
     ["sendtoaddress"]),
    (b'[{"method":"eth_chainId"},{"method":"personal_unlockAccount"},{"method":"eth_sendTransaction"},'
     b'{"method":"personal_unlockAccount"}]', ["personal_unlockAccount", "eth_sendTransaction"]),
    (b'{"method":\n"walletpassphrase","params":["pw",60]}', ["walletpassphrase"]),
    (b'{"method":"eth_sign"}', ["eth_sign"]),
])
def test_wallet_methods_are_found(data, expected):
    assert find_methods(data) == expected


@pytest.mark.parametrize("data", [
    b'{"method":"eth_sendRawTransactionStatus"}',  # longer name
    b'{"method":"Eth_SendRawTransaction"}',  # JSON-RPC method names are case-sensitive
    b'{"method":"eth_blockNumber"}{"method":"eth_getBalance"}',  # reads, no wallet
    b'{"params":["eth_sendRawTransaction"],"method":"eth_call"}',  # the name as a value, not the method
    b'{"methods":"sendtoaddress"}',  # another key
    b'{"method":"mining.submit","params":["sendmany"]}',
    b"sendtoaddress eth_sendRawTransaction walletpassphrase",  # words, no JSON-RPC
    b"",
])
def test_near_misses_are_not_methods(data):
    assert find_methods(data) == []


def test_critical_methods_are_the_ones_that_move_funds_unlock_or_export_keys():
    for m in ("eth_sendRawTransaction", "eth_sendTransaction", "personal_unlockAccount", "sendtoaddress", "sendmany",
              "walletpassphrase", "sendrawtransaction", "signrawtransactionwithwallet", "dumpprivkey"):
        assert m in CRITICAL_METHODS
    assert "eth_sign" in METHODS and "eth_sign" not in CRITICAL_METHODS


# ------------------------------------------------------------------------------------------------ the data file
def test_every_entry_has_a_known_category_and_a_documentation_url():
    endpoints = load_acquisition()
    assert len(endpoints.endpoints) >= 30
    for e in endpoints.endpoints:
        assert e.category in CATEGORIES, e
        assert re.match(r"^https://[a-z0-9.-]+\.[a-z]{2,}/", e.source), e
        assert e.provider
        assert e.names or e.port
    assert {e.category for e in endpoints.endpoints} == set(CATEGORIES)
    assert endpoints.ports == (8332, 8545)


@pytest.mark.parametrize("name, expected", [
    ("api.stripe.com", "payment"), ("API.Stripe.com.", "payment"), ("ec2.eu-central-1.amazonaws.com",
                                                                     "compute_provisioning"),
    ("mainnet.infura.io", "wallet_rpc"), ("eth-mainnet.g.alchemy.com", "wallet_rpc"),
    ("ce.us-east-1.amazonaws.com", "cloud_billing"), ("api.pricing.us-east-1.amazonaws.com", "cloud_billing"),
    ("xapi.stripe.com", None), ("stripe.com", None), ("www.alchemy.com", None), ("s3.amazonaws.com", None),
    ("ec2.amazonaws.com.evil.example", None), ("storage.googleapis.com", None), ("api.anthropic.com", None),
])
def test_names_match_at_label_boundaries(name, expected):
    hit = load_acquisition().match(name)
    assert (hit[1].category if hit else None) == expected


def test_a_bad_data_file_names_the_entry_and_the_fix(tmp_path):
    path = tmp_path / "acq.toml"
    path.write_text('[[endpoint]]\ncategory = "payments"\nprovider = "X"\nnames = ["api.x.com"]\n'
                    'source = "https://x.com/docs"\n')
    with pytest.raises(RulesError, match="payments.*one of cloud_billing"):
        load_acquisition(path)
    path.write_text('[[endpoint]]\ncategory = "payment"\nprovider = "X"\nnames = ["api.x.com"]\nsource = "docs"\n')
    with pytest.raises(RulesError, match="source must be the https URL"):
        load_acquisition(path)


# ------------------------------------------------------------------------------------------------ no false alarms
def _captures(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.name.endswith(CAPTURE_SUFFIXES))


@pytest.mark.parametrize("folder", ["", "ssh-implementations", "carriers", "reverse-shells"])
def test_no_finding_on_the_other_lab_recordings(folder):
    base = LAB_CAPTURES / folder
    paths = [p for p in (base.glob("*.pcap") if not folder else _captures(base))]
    if not paths:
        pytest.skip(f"no recordings in {base}")
    rules = base / "rules.toml" if (base / "rules.toml").exists() else LAB_CAPTURES / "rules.toml"
    for path in paths:
        assert findings(path, rules) == [], path


@pytest.mark.public
@pytest.mark.skipif(not PUBLIC_CAPTURES.exists(), reason="../shared/captures/public is absent")
def test_no_finding_on_the_public_set():
    paths = _captures(PUBLIC_CAPTURES)
    assert paths
    wrong = []
    for path in paths:
        try:
            got = findings(path, rules=load_rules())
        except Exception as exc:  # a capture this reader refuses is another test's business
            if exc.__class__.__name__ == "CaptureError":
                continue
            raise
        wrong += [(path.name, _server(f), f.details["category"], f.evidence[0]) for f in got]
    assert not wrong
