#!/usr/bin/env python3
"""Evaluate the detectors against labelled captures: per-class precision and recall, every miss and false alarm.

Usage: python benchmarks/evaluate.py [FOLDER ...] [--json OUT]
       (default folders: captures/ and ../shared/captures/public/ when present)

A folder holds captures and a labels.csv in one of two layouts:
  lab:    file,client,server,class,note             client "ip" or "ip:port", server "ip:port"
  public: file,flow,server,expected_class,...       flow "TCP a:p -> b:p", "UDP a:* -> b:53 (...)",
                                                    "ICMP a <-> b (...)", or "*" (every other flow of the file)
Classes: reverse_ssh_tunnel, ssh_tunnel_other, ssh_interactive, ssh_transfer, stratum, dns_tunnel, icmp_tunnel,
reverse_shell, unexpected_destination, benign. A labelled flow (or, for a row matching several flows, the row) is predicted as the
class of its worst threat finding, else `unexpected_destination` when a policy finding covers it, else from the SSH
use the detector assigned, else benign. Findings about more than one flow count for each flow they cover: a
`dns_tunnel` finding (per sandbox and domain, often reported when the capture ends) covers every DNS flow from its
sandbox to the resolvers it names; any other finding that arrives after its flow's batch covers its own flow.

Policy findings (`unexpected_destination`) are judged against the policy of the folder: its rules.toml when it has
one (captures/rules.toml for the lab). A folder without one is analysed with the default rules, and its policy
findings are ignored: the default policy says nothing about someone else's network, and a policy finding never
counts as a prediction of a threat class (tunnel, mining) nor as a false alarm on their benign flows.
"""
from __future__ import annotations

import argparse
import csv
import json
import re
import sys
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from egressguard.errors import EgressGuardError  # noqa: E402
from egressguard.pipeline import Analyzer, FlowsReady  # noqa: E402
from egressguard.report.records import flow_fields  # noqa: E402
from egressguard.policy.rules import load_rules  # noqa: E402

FINDING_CLASS = {"reverse_ssh_tunnel": "reverse_ssh_tunnel", "ssh_tunnel": "ssh_tunnel_other", "mining": "stratum",
                 "dns_tunnel": "dns_tunnel", "icmp_tunnel": "icmp_tunnel", "reverse_shell": "reverse_shell"}
POLICY_KINDS = {"unexpected_destination"}  # policy findings: scored only against a folder's own rules.toml
def finding_class(finding) -> str:
    """The label class a finding stands for: its kind's class; a resource_acquisition finding's category."""
    if str(finding.kind) == "resource_acquisition":
        return str(finding.details.get("category", "resource_acquisition"))
    return FINDING_CLASS.get(str(finding.kind), str(finding.kind))


SSH_USE_CLASS = {"interactive": "ssh_interactive", "file_transfer": "ssh_transfer", "command": "ssh_command"}
SEVERITY = {"low": 1, "medium": 2, "high": 3, "critical": 4}
FLOW_SPEC = re.compile(r"^(?P<proto>TCP|UDP|ICMP)\s+(?P<a>\S+)\s+(?P<arrow>->|<->)\s+(?P<b>\S+)", re.I)


@dataclass
class FlowSeen:
    proto: str
    src: str
    sport: int
    dst: str
    dport: int
    predicted: str
    detail: str
    key: tuple[int, int] = (0, 0)  # (key_hash, first_seen_ns) of the flow record
    rank: int = 0  # severity of the finding behind `predicted`, 0 without one


@dataclass
class LabelRow:
    file: str
    cls: str
    proto: str | None
    client: str | None
    client_port: int | None
    server: str | None
    server_port: int | None
    both_ways: bool
    wildcard: bool
    text: str
    flows: list[FlowSeen] = field(default_factory=list)

    def matches(self, f: FlowSeen) -> bool:
        if self.wildcard:
            return True
        if self.proto and f.proto != self.proto:
            return False
        ends = [(f.src, f.sport, f.dst, f.dport)]
        if self.both_ways:
            ends.append((f.dst, f.dport, f.src, f.sport))
        for a, ap, b, bp in ends:
            if self.client and a != self.client:
                continue
            if self.client_port is not None and ap != self.client_port:
                continue
            if self.server and b != self.server:
                continue
            if self.server_port is not None and bp != self.server_port:
                continue
            return True
        return False


def _split_endpoint(text: str) -> tuple[str | None, int | None]:
    if text in ("*", ""):
        return None, None
    if text.count(":") == 1 or (text.startswith("[") and "]:" in text):
        host, _, port = text.rpartition(":")
        return host.strip("[]"), None if port == "*" else int(port)
    return text, None


def read_labels(folder: Path) -> list[LabelRow]:
    rows = []
    with (folder / "labels.csv").open(newline="") as fh:
        for rec in csv.DictReader(fh):
            if "flow" in rec:  # public layout
                cls, spec = rec["expected_class"], rec["flow"].strip()
                if spec.startswith("*"):
                    rows.append(LabelRow(rec["file"], cls, None, None, None, None, None, False, True, spec))
                    continue
                m = FLOW_SPEC.match(spec)
                if not m:
                    print(f"evaluate: {folder}/labels.csv: cannot read flow {spec!r}; row skipped", file=sys.stderr)
                    continue
                a, ap = _split_endpoint(m["a"])
                b, bp = _split_endpoint(m["b"])
                rows.append(LabelRow(rec["file"], cls, m["proto"].lower(), a, ap, b, bp, m["arrow"] == "<->", False,
                                     spec))
            else:  # lab layout
                a, ap = _split_endpoint(rec["client"])
                b, bp = _split_endpoint(rec["server"])
                rows.append(LabelRow(rec["file"], rec["class"], None, a, ap, b, bp, False, False,
                                     f"{rec['client']} -> {rec['server']}"))
    return rows


def analyse(path: Path, analyzer: Analyzer, score_policy: bool = False) -> list[FlowSeen]:
    flows = []
    policy: dict[tuple, str] = {}  # (src, dst, proto, port) -> detail, from policy findings (reported per capture)
    late = []  # threat findings about flows of other batches (aggregated ones: DNS tunnels, reported at the end)
    for event in analyzer.analyze(str(path)):
        if not isinstance(event, FlowsReady):
            continue
        worst: dict[int, tuple[int, str, str]] = {}
        for finding in event.result.findings:
            if str(finding.kind) in POLICY_KINDS:
                f = flow_fields(finding.flow)
                egress = finding.details.get("egress", {})
                for p in egress.get("ports") or [{"proto": f["proto"], "port": f["dst_port"]}]:
                    policy[(f["src_ip"], f["dst_ip"], str(p["proto"]), p["port"])] = \
                        f"{finding.kind} {finding.details.get('reason')} {finding.severity.label()}"
                continue
            matched = False
            for row in range(len(event.view.records)):
                if event.view.records[row]["key_hash"] == finding.flow["key_hash"] and \
                        event.view.records[row]["first_seen_ns"] == finding.flow["first_seen_ns"]:
                    matched = True
                    cls = finding_class(finding)
                    rank = int(finding.severity)
                    if row not in worst or rank > worst[row][0]:
                        worst[row] = (rank, cls, f"{finding.kind} {finding.severity.label()} {finding.score:.2f}")
            if not matched or str(finding.kind) == "dns_tunnel":
                late.append(finding)
        for row in range(len(event.view.records)):
            rec = event.view.records[row]
            f = flow_fields(rec)
            rank = 0
            if row in worst:
                rank, predicted, detail = worst[row]
            else:
                use = event.result.annotations.get(row, {}).get("ssh_use")
                predicted, detail = SSH_USE_CLASS.get(use, "benign"), f"ssh_use={use}" if use else "no finding"
            flows.append(FlowSeen(str(f["proto"]), f["src_ip"], f["src_port"], f["dst_ip"], f["dst_port"],
                                  predicted, detail, (int(rec["key_hash"]), int(rec["first_seen_ns"])), rank))
    for finding in late:
        _cover(flows, finding)
    if score_policy:
        for f in flows:
            hit = policy.get((f.src, f.dst, f.proto, f.dport))
            if hit and f.predicted not in FINDING_CLASS.values():
                f.predicted, f.detail = "unexpected_destination", hit
    return flows


def _cover(flows: list[FlowSeen], finding) -> None:
    """Predict a finding's class for the flows it is about: its own flow record, and for an aggregated DNS tunnel
    finding every DNS flow from its sandbox to the resolvers it names (per (sandbox, domain), not per flow)."""
    cls = finding_class(finding)
    detail = f"{finding.kind} {finding.severity.label()} {finding.score:.2f}"
    key = (int(finding.flow["key_hash"]), int(finding.flow["first_seen_ns"]))
    dns = finding.details.get("dns_tunnel")
    for f in flows:
        covered = f.key == key
        if dns is not None:
            covered |= f.src == dns["sandbox"] and f.dst in dns["resolvers"] and f.dport == 53 and \
                f.proto in ("udp", "tcp")
        if covered and int(finding.severity) > f.rank:
            f.predicted, f.detail, f.rank = cls, detail, int(finding.severity)


def evaluate(folders: list[Path]) -> dict:
    units = []  # (folder, file, label text, expected, predicted, detail)
    for folder in folders:
        rules_file = folder / "rules.toml"
        analyzer = Analyzer(rules=load_rules(rules_file) if rules_file.exists() else None)
        rows = read_labels(folder)
        by_file: dict[str, list[LabelRow]] = defaultdict(list)
        for row in rows:
            by_file[row.file].append(row)
        for file, file_rows in sorted(by_file.items()):
            path = folder / file
            try:
                flows = analyse(path, analyzer, score_policy=rules_file.exists())
            except EgressGuardError as exc:
                print(f"evaluate: {exc}", file=sys.stderr)
                continue
            specific = [r for r in file_rows if not r.wildcard]
            for row in specific:
                matched = [f for f in flows if row.matches(f)]
                if not matched:
                    units.append((folder.name, file, row.text, row.cls, "missing", "no such flow in the capture"))
                    continue
                # a row that covers several flows is found when any of its flows is predicted as its class
                hit = next((f for f in matched if f.predicted == row.cls), None)
                chosen = hit or max(matched, key=lambda f: f.predicted != "benign")
                units.append((folder.name, file, row.text, row.cls, chosen.predicted, chosen.detail))
            for row in (r for r in file_rows if r.wildcard):
                for f in flows:
                    if any(s.matches(f) for s in specific):
                        continue
                    text = f"{f.proto} {f.src}:{f.sport} -> {f.dst}:{f.dport}"
                    units.append((folder.name, file, text, row.cls, f.predicted, f.detail))
    classes = sorted({u[3] for u in units} | {u[4] for u in units if u[4] != "missing"})
    table = {}
    for cls in classes:
        tp = sum(1 for u in units if u[3] == cls and u[4] == cls)
        labelled = sum(1 for u in units if u[3] == cls)
        predicted = sum(1 for u in units if u[4] == cls)
        table[cls] = {"labelled": labelled, "predicted": predicted, "true_positive": tp,
                      "precision": tp / predicted if predicted else None, "recall": tp / labelled if labelled else None}
    errors = [dict(zip(("folder", "file", "flow", "expected", "predicted", "detail"), u)) for u in units
              if u[3] != u[4]]
    return {"classes": table, "errors": errors, "units": len(units)}


def _fmt(x: float | None) -> str:
    return "   -" if x is None else f"{x:4.2f}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("folders", nargs="*", type=Path)
    parser.add_argument("--json", type=Path, help="also write the results as JSON here")
    args = parser.parse_args(argv)
    folders = args.folders or [p for p in (REPO / "captures", REPO.parent / "shared" / "captures" / "public")
                               if (p / "labels.csv").exists()]
    for folder in folders:
        if not (folder / "labels.csv").exists():
            parser.error(f"{folder}: no labels.csv")
    result = evaluate(folders)
    print(f"{'class':22} {'labelled':>8} {'predicted':>9} {'TP':>4} {'precision':>9} {'recall':>6}")
    for cls, row in result["classes"].items():
        print(f"{cls:22} {row['labelled']:8d} {row['predicted']:9d} {row['true_positive']:4d} "
              f"{_fmt(row['precision']):>9} {_fmt(row['recall']):>6}")
    print(f"\n{len(result['errors'])} of {result['units']} labelled units disagree:")
    for e in result["errors"]:
        kind = "MISS" if e["expected"] != "benign" else "FALSE ALARM"
        if e["expected"] != "benign" and e["predicted"] != "benign":
            kind = "CONFUSED"
        print(f"  {kind:11} {e['folder']}/{e['file']}: {e['flow']}: expected {e['expected']}, got {e['predicted']} "
              f"({e['detail']})")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
