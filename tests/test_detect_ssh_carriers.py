"""SSH behind a carrier (captures/carriers: CONNECT through squid and tinyproxy, SOCKS4/5 through Dante and pproxy,
WebSocket through websockify and wstunnel, PROXY v1/v2 through HAProxy, TLS through stunnel, socat and ncat): the
inner SSH is found and judged as if it were bare, the right way round, and ordinary traffic through the same
proxies gives no SSH finding."""
import csv
import functools

import numpy as np
import pytest

from conftest import LAB_CAPTURES
from egressguard.detect.ssh_opening import ssh_inside_tls
from egressguard.detect.ssh_tunnel import inner_sequence
from egressguard.pipeline import Analyzer, FlowsReady
from egressguard.policy.rules import load_rules
from egressguard.report.records import flow_fields
from egressguard.schema import AppTag

FOLDER = LAB_CAPTURES / "carriers"
EXPECTED = {"reverse_ssh_tunnel": "reverse_ssh_tunnel", "ssh_tunnel_other": "ssh_tunnel"}
SSH_KINDS = set(EXPECTED.values())


def _rows():
    with (FOLDER / "labels.csv").open(newline="") as fh:
        return list(csv.DictReader(fh))


@functools.lru_cache(maxsize=None)
def _ssh_findings(name):
    """SSH findings of one capture: (client, server ip, server port) -> [(kind, ssh object)]."""
    out = {}
    for event in Analyzer(rules=load_rules(str(FOLDER / "rules.toml"))).analyze(str(FOLDER / name)):
        if not isinstance(event, FlowsReady):
            continue
        for f in event.result.findings:
            if str(f.kind) in SSH_KINDS:
                ff = flow_fields(f.flow)
                out.setdefault((ff["src_ip"], ff["dst_ip"], ff["dst_port"]), []).append((str(f.kind),
                                                                                        f.details["ssh"], f))
    return out


@pytest.mark.parametrize("row", [r for r in _rows() if r["class"] in EXPECTED], ids=lambda r: r["file"])
def test_ssh_behind_every_carrier_found_the_right_way_round(row):
    ip, port = row["server"].rsplit(":", 1)
    found = _ssh_findings(row["file"]).get((row["client"], ip, int(port)), [])
    assert [kind for kind, _, _ in found] == [EXPECTED[row["class"]]], row["note"]
    kind, ssh, finding = found[0]
    assert ssh["carrier"], "the carrier chain is named"
    assert any("inside" in e for e in finding.evidence)


@pytest.mark.parametrize("row", [r for r in _rows() if r["class"] not in EXPECTED], ids=lambda r: r["file"])
def test_no_ssh_finding_on_other_traffic_through_the_same_carriers(row):
    assert _ssh_findings(row["file"]) == {} or all(
        kind not in SSH_KINDS for flows in _ssh_findings(row["file"]).values() for kind, _, _ in flows)


def test_inner_sequence_drops_the_preamble_and_the_frame_headers():
    # a CONNECT request (60 B) and its reply (39 B), then SSH packets
    assert inner_sequence([60, -39, 41, -41, 1500], [0, .1, .2, .3, .4], (60, 39), (0, 0)) == \
        ([41, -41, 1500], [.2, .3, .4])
    # the request and the first SSH bytes in one segment: the SSH part stays
    assert inner_sequence([100, -39, 28], [0, .1, .2], (60, 39), (0, 0)) == ([40, 28], [0, .2])
    # WebSocket: 6 B per masked client frame (8 from 126 B), 2 per server frame (4 from 126 B)
    assert inner_sequence([46, -30, 300, -300], [0, 1, 2, 3], (0, 0), (6, 2)) == ([40, -28, 292, -296],
                                                                                  [0, 1, 2, 3])


def test_ssh_inside_tls_never_claimed_for_ordinary_tls():
    """Every TLS flow of the lab's other captures (HTTPS through proxies, gRPC, git, pip, TLS Stratum, ncat --ssl
    shells) is not taken for SSH."""
    checked = 0
    names = [p for p in sorted(LAB_CAPTURES.glob("*.pcap")) + sorted((LAB_CAPTURES / "reverse-shells").glob("*.pcap"))
             + sorted(FOLDER.glob("*.pcap")) if not p.name.startswith("tls-") or "stratum" in p.name]
    for path in names:
        for event in Analyzer(detectors=[]).analyze(str(path)):
            if not isinstance(event, FlowsReady):
                continue
            v = event.view
            for row in np.flatnonzero(v.tagged(AppTag.TLS)).tolist():
                sizes, micros = v.early_sequence(row)
                checked += 1
                assert ssh_inside_tls(sizes.tolist(), (micros / 1e6).tolist()) is None, (path.name, row)
    assert checked >= 20


@pytest.mark.parametrize("name,traits", [
    ("tls-reverse-pull.pcap", ["an IP address as server name (198.18.0.5)", "no ALPN", "JA4 t13"]),
    ("tls-forward.pcap", ["server name edge.lab-proxy.example", "no ALPN", "JA4 t13"]),
])
def test_ssh_inside_tls_names_the_clients_tls_traits(name, traits):
    """nDPI's signs of TLS not carrying HTTPS (no ALPN, an address as server name) and the JA4 of the client
    (issue 12 point 3) are evidence of SSH hidden in TLS."""
    findings = [f for flows in _ssh_findings(name).values() for _, _, f in flows]
    assert findings
    hidden = [e for e in findings[0].evidence if e.startswith("inside TLS")]
    assert hidden and all(t in hidden[0] for t in traits), hidden
