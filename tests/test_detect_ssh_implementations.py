"""SSH tunnels made with other implementations and uses (captures/ssh-implementations, recorded with OpenSSH,
dropbear, PuTTY, paramiko, asyncssh, libssh, Go x/crypto/ssh, node ssh2, sshuttle): every labelled flow classified,
reverse tunnels found whatever they carry, and no tunnel finding on sessions, commands and transfers."""
import csv
import functools

import pytest

from conftest import LAB_CAPTURES
from egressguard.detect.ssh_opening import read_opening
from egressguard.detect.ssh_tunnel import software
from egressguard.payload.ssh import parse_handshake
from egressguard.pipeline import Analyzer, FlowsReady
from egressguard.report.records import flow_fields
from egressguard.schema import AppTag

FOLDER = LAB_CAPTURES / "ssh-implementations"
TUNNEL_KINDS = {"reverse_ssh_tunnel", "ssh_tunnel"}
def _rows():
    with (FOLDER / "labels.csv").open(newline="") as fh:
        return list(csv.DictReader(fh))


@functools.lru_cache(maxsize=None)
def _verdicts(path):
    """(ssh_use, finding kind or None, ssh object) of every SSH flow, by (client, server ip, server port)."""
    out = {}
    for event in Analyzer().analyze(str(path)):
        if not isinstance(event, FlowsReady):
            continue
        found = {}
        for f in event.result.findings:
            found[int(f.flow["slot"]), int(f.flow["first_seen_ns"])] = f
        for row, ann in event.result.annotations.items():
            if "ssh_use" not in ann:
                continue
            rec = event.view.records[row]
            ff = flow_fields(rec)
            finding = found.get((int(rec["slot"]), int(rec["first_seen_ns"])))
            kind = str(finding.kind) if finding is not None and str(finding.kind) in TUNNEL_KINDS else None
            out.setdefault((ff["src_ip"], ff["dst_ip"], ff["dst_port"]), []).append((ann["ssh_use"], kind,
                                                                                     ann["ssh"], finding))
    return out


def _labelled(row):
    ip, port = row["server"].rsplit(":", 1)
    return _verdicts(FOLDER / row["file"]).get((row["client"], ip, int(port)), [])


@pytest.mark.parametrize("row", [r for r in _rows() if r["class"] == "reverse_ssh_tunnel"],
                         ids=lambda r: r["file"])
def test_reverse_tunnel_found_whatever_it_carries(row):
    verdicts = _labelled(row)
    assert verdicts, "no SSH flow on the labelled server"
    use, kind, ssh, finding = verdicts[0]
    assert kind == "reverse_ssh_tunnel", (use, ssh)
    assert finding.severity.label() in ("high", "critical")
    assert ssh["tunnel_use"] in ("parked", "pull", "service", "shell")
    # the evidence names what was measured: the forward request, the channels opened from outside, or the typing
    text = " ".join(finding.evidence)
    assert any(word in text for word in ("tcpip-forward", "remote side opened", "keystroke", "answered as the SSH",
                                         "remote side sent"))


@pytest.mark.parametrize("row", [r for r in _rows() if r["class"] == "ssh_tunnel_other"],
                         ids=lambda r: r["file"])
def test_forward_tunnel_found(row):
    verdicts = _labelled(row)
    assert verdicts, "no SSH flow on the labelled server"
    assert any(kind == "ssh_tunnel" for _, kind, _, _ in verdicts), [(u, k) for u, k, _, _ in verdicts]


@pytest.mark.parametrize("row", [r for r in _rows() if r["class"] in ("ssh_interactive", "ssh_transfer",
                                                                       "ssh_command")], ids=lambda r: r["file"])
def test_no_tunnel_finding_on_sessions_commands_and_transfers(row):
    verdicts = _labelled(row)
    assert verdicts, "no SSH flow on the labelled server"
    for use, kind, _, _ in verdicts:
        assert kind is None, f"{row['file']}: {use} reported as {kind}"


def test_parked_tunnels_are_named_parked_and_pulls_named_pull():
    uses = {}
    for name in ("openssh-reverse-parked-silent.pcap", "paramiko-reverse-parked.pcap", "plink-reverse-parked.pcap",
                 "go-reverse-http-gcm.pcap", "plink-reverse-http.pcap"):
        verdicts = _verdicts(FOLDER / name)
        uses[name] = {ssh["tunnel_use"] for vs in verdicts.values() for _, kind, ssh, _ in vs if kind}
    assert uses["openssh-reverse-parked-silent.pcap"] == {"parked"}
    assert uses["paramiko-reverse-parked.pcap"] == {"parked"}
    assert uses["plink-reverse-parked.pcap"] == {"parked"}
    assert uses["go-reverse-http-gcm.pcap"] & {"pull", "service"}
    assert uses["plink-reverse-http.pcap"] & {"pull", "service"}


def test_implementation_named_from_the_banner():
    assert software("SSH-2.0-OpenSSH_9.2p1 Debian-2+deb12u3") == "OpenSSH 9.2p1"
    assert software("SSH-2.0-dropbear_2022.83") == "Dropbear 2022.83"
    assert software("SSH-2.0-PuTTY_Release_0.78") == "PuTTY Release_0.78"
    assert software("SSH-2.0-Go") == "Go x/crypto/ssh"
    assert software("SSH-2.0-paramiko_3.4.0") == "Paramiko 3.4.0"
    assert software("SSH-2.0-SomethingNew_1.0") == "SomethingNew_1.0"
    assert software("not a banner") is None and software(None) is None
    seen = set()
    for name in ("dropbear-command.pcap", "plink-command.pcap", "ssh2-command.pcap", "libssh-command.pcap"):
        for vs in _verdicts(FOLDER / name).values():
            seen.update(ssh["client_software"].split()[0] for _, _, ssh, _ in vs if ssh["client_software"])
    assert {"Dropbear", "PuTTY", "ssh2", "libssh"} <= seen


def test_opening_reads_forward_request_and_server_opens_of_each_implementation():
    """The forward request is answered by a request-success, and the channels the outside opened are confirmed by
    the sandbox, for implementations that size their packets differently (dropbear-style minimum padding, PuTTY,
    Go, libssh): read from the early payload sequence alone."""
    found = {}
    for name in ("libssh-reverse-service.pcap", "paramiko-reverse-shell.pcap", "autossh-reverse-service.pcap",
                 "go-local-forward.pcap", "openssh-command.pcap"):
        for event in Analyzer(detectors=[]).analyze(str(FOLDER / name)):
            if not isinstance(event, FlowsReady):
                continue
            v = event.view
            for row in v.tagged(AppTag.SSH).nonzero()[0].tolist():
                hs = parse_handshake(v.kept_stream(row, 0), v.kept_stream(row, 1))
                sizes, micros = v.early_sequence(row)
                found.setdefault(name, []).append(read_opening(hs, sizes.tolist(), (micros / 1e6).tolist()))
    for name in ("libssh-reverse-service.pcap", "paramiko-reverse-shell.pcap", "autossh-reverse-service.pcap"):
        op = found[name][0]
        assert op.auth_success and op.forward_request and op.forward_reply, name
        assert any(not o.by_client and o.kind == "tcp" for o in op.opens), name
    go = found["go-local-forward.pcap"][0]
    assert go.forward_request is None and not go.session
    assert [o.by_client for o in go.opens if o.kind == "tcp"] == [True] * 3
    for op in found["openssh-command.pcap"]:
        assert op.session and op.forward_request is None
        assert not any(o.kind == "tcp" for o in op.opens)


def _kinds_with(rules_text, name):
    from egressguard.policy.rules import parse_rules
    kinds, notes = [], []
    for event in Analyzer(rules=parse_rules(rules_text)).analyze(str(FOLDER / name)):
        if isinstance(event, FlowsReady):
            kinds += [str(f.kind) for f in event.result.findings if str(f.kind) in TUNNEL_KINDS]
            notes += [a["ssh_tunnel_expected"] for a in event.result.annotations.values()
                      if "ssh_tunnel_expected" in a]
    return kinds, notes


BASTION = 'version = 1\n[[allow]]\nname = "bastion"\ncidrs = ["198.18.0.2/32"]\nssh_tunnels = [{uses}]\n'


def test_rules_can_expect_forward_tunnels_to_a_bastion_but_never_reverse_by_default():
    assert _kinds_with('version = 1\n[[allow]]\nname = "bastion"\ncidrs = ["198.18.0.2/32"]\n',
                       "go-local-forward.pcap")[0] == ["ssh_tunnel"]  # allowed destination, no tunnel expected
    kinds, notes = _kinds_with(BASTION.format(uses='"forward"'), "go-local-forward.pcap")
    assert kinds == [] and notes and "bastion" in notes[0]
    # a forward expectation does not cover a reverse tunnel to the same host; only saying so does
    assert _kinds_with(BASTION.format(uses='"forward"'), "paramiko-reverse-shell.pcap")[0] == ["reverse_ssh_tunnel"]
    assert _kinds_with(BASTION.format(uses='"forward", "reverse"'), "paramiko-reverse-shell.pcap")[0] == []


def test_bad_ssh_tunnel_use_is_one_clear_error():
    from egressguard.errors import EgressGuardError
    from egressguard.policy.rules import parse_rules
    with pytest.raises(EgressGuardError, match="not an SSH tunnel use"):
        parse_rules(BASTION.format(uses='"jump"'))
    with pytest.raises(EgressGuardError, match="only allow entries"):
        parse_rules('version = 1\n[[deny]]\nname = "x"\ncidrs = ["192.0.2.0/24"]\nssh_tunnels = ["forward"]\n')
