"""Rules files: the semantics of every kind of entry (a table of cases), the address classes, loading, every
malformed case with its exact message, and the atomic swap."""
import numpy as np
import pytest

from egressguard.policy.allowlist import CLASS_NAMES, DOH, FlowContext
from egressguard.errors import ExitStatus, RulesError
from egressguard.netaddr import parse_address
from egressguard.policy.rules import ActiveRules, load_rules, parse_rules
from egressguard.schema import FLOW_DTYPE, Severity

MASK64 = (1 << 64) - 1
PROTO = {"tcp": 6, "udp": 17, "icmp": 1}


def flows(*specs):
    """FLOW records from (src, dst, proto, port[, mac[, iface]]) tuples."""
    recs = np.zeros(len(specs), FLOW_DTYPE)
    for i, (src, dst, proto, port, *rest) in enumerate(specs):
        s, d = parse_address(src), parse_address(dst)
        recs[i]["orig_hi"], recs[i]["orig_lo"] = s >> 64, s & MASK64
        recs[i]["resp_hi"], recs[i]["resp_lo"] = d >> 64, d & MASK64
        recs[i]["proto"], recs[i]["resp_port"] = PROTO[proto], port
        recs[i]["orig_mac"] = rest[0] if rest else 0
        recs[i]["iface"] = rest[1] if len(rest) > 1 else 0
    return recs


def verdict(rules, src, dst, proto="tcp", port=443, names=(), mac=0, iface=0):
    """The static verdict of one flow, in the detector's order: deny entries, deny-treated classes that no allow
    entry lifts, allow entries (by address, class or name); None: left to the DNS binding."""
    recs = flows((src, dst, proto, port, mac, iface))
    ctx = FlowContext(recs["resp_hi"], recs["resp_lo"], recs["proto"], recs["resp_port"], rules.scopes(recs))
    cls = rules.classify(recs["resp_hi"], recs["resp_lo"])
    if rules.match_cidr("deny", ctx)[0] or rules.match_class("deny", cls, ctx)[0] or \
            rules.match_names("deny", names, ctx.scopes[:, 0], PROTO[proto], port):
        return "denied"
    if rules.treatment(int(cls[0])) == "ignore":
        return "ignored"
    if rules.treatment(int(cls[0])) == "deny" and not rules.lifted(cls, ctx)[0]:
        return "address_class"
    if rules.match_cidr("allow", ctx)[0] or rules.match_class("allow", cls, ctx)[0] or \
            rules.match_names("allow", names, ctx.scopes[:, 0], PROTO[proto], port):
        return "allowed"
    return None


SBX = "10.0.0.2"
RULES = {
    "cidr": '[[allow]]\ncidrs = ["93.184.216.0/24", "2606:2800:220::/48"]',
    "except": '[[allow]]\ncidrs = ["93.184.0.0/16"]\nexcept = ["93.184.216.0/24", "93.184.1.7/32"]',
    "ports": '[[allow]]\ncidrs = ["93.184.216.0/24"]\nports = [443, "8000-8002"]',
    "udp": '[[allow]]\ncidrs = ["93.184.216.0/24"]\nports = [53]\nprotocols = ["udp"]',
    "icmp": '[[allow]]\ncidrs = ["93.184.216.0/24"]\nprotocols = ["icmp"]',
    "exact": '[[allow]]\ndomains = ["pypi.org"]',
    "one": '[[allow]]\ndomains = ["*.pypi.org"]',
    "deep": '[[allow]]\ndomains = ["**.pypi.org"]',
    "infix": '[[allow]]\ndomains = ["api-*.example.com"]',
    "every": '[[allow]]\ndomains = ["**"]',
    "deny_first": '[[allow]]\ncidrs = ["0.0.0.0/0"]\n[[deny]]\ncidrs = ["93.184.216.34/32"]',
    "deny_name": '[[allow]]\ndomains = ["**.example"]\n[[deny]]\ndomains = ["bad.example"]\nports = [443]',
    "sources": '[[allow]]\ncidrs = ["93.184.216.0/24"]\nsources = { cidrs = ["10.0.0.2/32"], macs = ["02:00:00:00:00:07"] }',
    "iface": '[[allow]]\ncidrs = ["93.184.216.0/24"]\nsources = { interfaces = [1] }',
    "world": '[[allow]]\ncidrs = ["0.0.0.0/0", "::/0"]',
    "lift_exact": '[[allow]]\ncidrs = ["169.254.169.254/32"]\nports = [80]',
    "lift_class": '[[allow]]\nclasses = ["metadata"]',
    "class_global": '[[allow]]\nclasses = ["global"]\nports = [443]',
    "private_deny": '[classes]\nprivate = "deny"\n[[allow]]\ncidrs = ["0.0.0.0/0"]',
    "lab": '[classes]\nbenchmarking = "allowlist"\n[[allow]]\ncidrs = ["198.18.0.2/32"]',
    "host": '[settings]\nhost_addresses = ["10.0.0.1"]\n[[allow]]\ncidrs = ["10.0.0.0/8"]',
    "host_dns": '[settings]\nhost_addresses = ["10.0.0.1"]\n[[allow]]\nclasses = ["host"]\nports = [53]',
}
CASES = [
    # rules, destination, proto, port, names, mac, iface, expected
    ("cidr", "93.184.216.34", "tcp", 443, (), 0, 0, "allowed"),
    ("cidr", "93.184.217.1", "tcp", 443, (), 0, 0, None),
    ("cidr", "2606:2800:220:1::1", "tcp", 443, (), 0, 0, "allowed"),
    ("cidr", "2606:2800:221::1", "tcp", 443, (), 0, 0, None),
    ("except", "93.184.5.5", "tcp", 443, (), 0, 0, "allowed"),
    ("except", "93.184.216.34", "tcp", 443, (), 0, 0, None),  # in the except range
    ("except", "93.184.1.7", "tcp", 443, (), 0, 0, None),
    ("except", "93.184.1.8", "tcp", 443, (), 0, 0, "allowed"),  # next to the hole
    ("ports", "93.184.216.34", "tcp", 443, (), 0, 0, "allowed"),
    ("ports", "93.184.216.34", "udp", 443, (), 0, 0, "allowed"),  # ports without protocols: tcp, udp, sctp
    ("ports", "93.184.216.34", "tcp", 8002, (), 0, 0, "allowed"),
    ("ports", "93.184.216.34", "tcp", 8003, (), 0, 0, None),
    ("ports", "93.184.216.34", "icmp", 0, (), 0, 0, None),  # an entry with ports matches no portless protocol
    ("udp", "93.184.216.34", "udp", 53, (), 0, 0, "allowed"),
    ("udp", "93.184.216.34", "tcp", 53, (), 0, 0, None),
    ("icmp", "93.184.216.34", "icmp", 8, (), 0, 0, "allowed"),
    ("icmp", "93.184.216.34", "tcp", 443, (), 0, 0, None),
    ("exact", "93.184.216.34", "tcp", 443, ("pypi.org",), 0, 0, "allowed"),
    ("exact", "93.184.216.34", "tcp", 443, ("www.pypi.org",), 0, 0, None),
    ("exact", "93.184.216.34", "tcp", 443, ("pypi.org.evil.com",), 0, 0, None),
    ("one", "93.184.216.34", "tcp", 443, ("files.pypi.org",), 0, 0, "allowed"),
    ("one", "93.184.216.34", "tcp", 443, ("pypi.org",), 0, 0, None),  # the apex is not one label under itself
    ("one", "93.184.216.34", "tcp", 443, ("a.b.pypi.org",), 0, 0, None),  # exactly one label
    ("one", "93.184.216.34", "tcp", 443, ("xpypi.org",), 0, 0, None),
    ("deep", "93.184.216.34", "tcp", 443, ("a.b.pypi.org",), 0, 0, "allowed"),
    ("deep", "93.184.216.34", "tcp", 443, ("files.pypi.org",), 0, 0, "allowed"),
    ("deep", "93.184.216.34", "tcp", 443, ("pypi.org",), 0, 0, None),
    ("infix", "93.184.216.34", "tcp", 443, ("api-eu.example.com",), 0, 0, "allowed"),
    ("infix", "93.184.216.34", "tcp", 443, ("api-.example.com",), 0, 0, "allowed"),  # zero characters
    ("infix", "93.184.216.34", "tcp", 443, ("api-eu.x.example.com",), 0, 0, None),  # * never crosses a dot
    ("infix", "93.184.216.34", "tcp", 443, ("web-eu.example.com",), 0, 0, None),
    ("every", "93.184.216.34", "tcp", 443, ("anything.at.all",), 0, 0, "allowed"),
    ("every", "93.184.216.34", "tcp", 443, (), 0, 0, None),  # a name is needed
    ("deny_first", "93.184.216.34", "tcp", 443, (), 0, 0, "denied"),  # deny wins over a broader allow
    ("deny_first", "93.184.216.35", "tcp", 443, (), 0, 0, "allowed"),
    ("deny_name", "93.184.216.34", "tcp", 443, ("bad.example",), 0, 0, "denied"),
    ("deny_name", "93.184.216.34", "tcp", 80, ("bad.example",), 0, 0, "allowed"),  # the deny entry's ports
    ("deny_name", "93.184.216.34", "tcp", 443, ("good.example",), 0, 0, "allowed"),
    ("sources", "93.184.216.34", "tcp", 443, (), 0, 0, "allowed"),
    ("sources", "93.184.216.34", "tcp", 443, (), 0x020000000007, 0, "allowed"),  # by MAC from another address
    ("iface", "93.184.216.34", "tcp", 443, (), 0, 1, "allowed"),
    ("iface", "93.184.216.34", "tcp", 443, (), 0, 0, None),
    ("world", "8.8.4.4", "tcp", 443, (), 0, 0, "allowed"),
    ("world", "169.254.169.254", "tcp", 80, (), 0, 0, "address_class"),  # 0.0.0.0/0 never lifts metadata
    ("world", "169.254.1.1", "tcp", 80, (), 0, 0, "address_class"),
    ("world", "fe80::1", "tcp", 80, (), 0, 0, "address_class"),
    ("world", "198.51.100.7", "tcp", 80, (), 0, 0, "address_class"),  # documentation
    ("world", "240.0.0.1", "tcp", 80, (), 0, 0, "address_class"),  # reserved
    ("world", "64:ff9b::a9fe:a9fe", "tcp", 80, (), 0, 0, "address_class"),  # NAT64 of 169.254.169.254
    ("world", "64:ff9b::808:808", "tcp", 443, (), 0, 0, "allowed"),  # NAT64 of 8.8.8.8, in 0.0.0.0/0
    ("world", "224.0.0.251", "udp", 5353, (), 0, 0, "ignored"),
    ("world", "255.255.255.255", "udp", 67, (), 0, 0, "ignored"),
    ("world", "127.0.0.1", "tcp", 80, (), 0, 0, "ignored"),
    ("world", "100.64.1.1", "tcp", 443, (), 0, 0, "allowed"),  # CGNAT: judged by the entries
    ("lift_exact", "169.254.169.254", "tcp", 80, (), 0, 0, "allowed"),
    ("lift_exact", "169.254.169.254", "tcp", 443, (), 0, 0, "address_class"),  # the lifting entry's ports
    ("lift_class", "169.254.169.254", "tcp", 80, (), 0, 0, "allowed"),
    ("lift_class", "169.254.1.1", "tcp", 80, (), 0, 0, "address_class"),  # link_local is another class
    ("class_global", "8.8.4.4", "tcp", 443, (), 0, 0, "allowed"),
    ("class_global", "10.1.2.3", "tcp", 443, (), 0, 0, None),  # private is not global
    ("private_deny", "10.1.2.3", "tcp", 443, (), 0, 0, "address_class"),
    ("lab", "198.18.0.2", "tcp", 22, (), 0, 0, "allowed"),
    ("lab", "198.18.0.9", "tcp", 22, (), 0, 0, None),
    ("host", "10.0.0.1", "tcp", 2375, (), 0, 0, "address_class"),  # the host, although 10/8 is allowed
    ("host", "10.0.0.9", "tcp", 2375, (), 0, 0, "allowed"),
    ("host_dns", "10.0.0.1", "udp", 53, (), 0, 0, "allowed"),
    ("host_dns", "10.0.0.1", "tcp", 22, (), 0, 0, "address_class"),
]


@pytest.mark.parametrize("rules,dst,proto,port,names,mac,iface,expected", CASES)
def test_rule_semantics(rules, dst, proto, port, names, mac, iface, expected):
    allowlist = parse_rules(RULES[rules], "t.toml")
    src = "10.0.0.99" if mac else SBX
    assert verdict(allowlist, src, dst, proto, port, names, mac, iface) == expected


def test_sources_limit_the_entry_to_those_sandboxes():
    allowlist = parse_rules(RULES["sources"], "t.toml")
    assert verdict(allowlist, "10.0.0.3", "93.184.216.34") is None


def test_class_table_smallest_range_wins_and_names():
    allowlist = load_rules()
    cases = {"169.254.169.254": "metadata", "169.254.170.2": "metadata", "169.254.0.1": "link_local",
             "fd00:ec2::254": "metadata", "168.63.129.16": "metadata", "100.100.100.200": "metadata",
             "100.64.0.1": "cgnat", "10.9.9.9": "private", "fd12::1": "private", "198.18.0.2": "benchmarking",
             "2001:db8::1": "documentation", "3fff::1": "documentation", "0.1.2.3": "reserved", "::": "reserved",
             "240.1.1.1": "reserved", "255.255.255.255": "broadcast", "239.255.255.250": "multicast",
             "ff02::fb": "multicast", "127.0.0.53": "loopback", "::1": "loopback", "1.1.1.1": "global",
             "2606:4700::1": "global"}
    recs = flows(*[(SBX, a, "tcp", 1) for a in cases])
    got = [allowlist.class_name(int(c)) for c in allowlist.classify(recs["resp_hi"], recs["resp_lo"])]
    assert dict(zip(cases, got)) == cases
    assert allowlist.severities[CLASS_NAMES.index("metadata")] == Severity.CRITICAL
    assert allowlist.severities[DOH] == Severity.HIGH


def test_inside_defaults_to_private_and_cgnat_and_follows_sandbox_networks():
    default = parse_rules("", "t.toml")
    recs = flows((SBX, "1.1.1.1", "tcp", 1), ("100.64.3.4", "1.1.1.1", "tcp", 1), ("8.8.8.8", "1.1.1.1", "tcp", 1))
    assert default.inside(recs["orig_hi"], recs["orig_lo"]).tolist() == [True, True, False]
    assert not default.dest_inside(recs["orig_hi"], recs["orig_lo"]).any()
    set_ = parse_rules('[settings]\nsandbox_networks = ["10.0.0.0/30"]', "t.toml")
    assert set_.inside(recs["orig_hi"], recs["orig_lo"]).tolist() == [True, False, False]


def test_sandbox_names_by_mac_and_most_specific_cidr():
    rules = parse_rules('[sandboxes]\n"10.0.0.0/24" = "fleet"\n"10.0.0.2" = "agent-2"\n'
                        '"02:42:ac:11:00:02" = "by-mac"', "t.toml")
    assert rules.sandbox_name(parse_address("10.0.0.2"), 0) == "agent-2"
    assert rules.sandbox_name(parse_address("10.0.0.3"), 0) == "fleet"
    assert rules.sandbox_name(parse_address("10.0.1.3"), 0x0242AC110002) == "by-mac"
    assert rules.sandbox_name(parse_address("10.0.1.3"), 0) is None


def test_entry_labels_name_the_line_and_services_read_well():
    rules = parse_rules('version = 1\n\n[[deny]]\nname = "x"\ndomains = ["a.example"]\n\n[[allow]]\n'
                        'cidrs = ["1.2.3.0/24"]\nports = [53, "60-61"]\nprotocols = ["udp", "tcp"]\n', "t.toml")
    deny, allow = rules.entries
    assert deny.label() == 'deny[0] "x" (line 3)'
    assert allow.label() == 'allow[0] "allow[0]" (line 7)'
    assert allow.services.text() == "tcp, udp: 53, 60-61"
    assert deny.severity == Severity.HIGH


def test_default_rules_load_and_say_what_they_claim():
    rules = load_rules()
    assert [e.name for e in rules.entries if e.action == "deny"] == ["tunnel and reverse-proxy services",
                                                                     "paste and file-drop services"]
    assert verdict(rules, SBX, "151.101.0.223", names=("pypi.org",)) == "allowed"
    assert verdict(rules, SBX, "151.101.0.223", names=("abc.ngrok-free.app",)) == "denied"
    assert verdict(rules, SBX, "169.254.169.254", port=80) == "address_class"
    assert verdict(rules, SBX, "10.0.0.1", "udp", 53) == "allowed"


def test_list_files_load_many_items(tmp_path):
    (tmp_path / "nets.txt").write_text("# feed\n192.0.2.0/24\n2001:db8::/32  # v6\n\n203.0.113.7\n")
    (tmp_path / "names.txt").write_text("a.example\n**.b.example\n")
    (tmp_path / "r.toml").write_text('[[allow]]\ncidrs_file = "nets.txt"\ndomains_file = "names.txt"\n')
    rules = load_rules(tmp_path / "r.toml")
    assert rules.entries[0].domains == ("a.example", "**.b.example")
    assert rules.entries[0].cidr_text == ("192.0.2.0/24", "2001:db8::/32", "203.0.113.7")
    for dst in ("192.0.2.9", "2001:db8::5", "203.0.113.7"):
        assert verdict(parse_rules('[classes]\ndocumentation = "allowlist"\n' + (tmp_path / "r.toml").read_text(),
                                   "r.toml", tmp_path), SBX, dst) == "allowed"


def test_big_rules_are_cached_compiled_and_the_cache_follows_the_files(tmp_path, monkeypatch):
    monkeypatch.setenv("EGRESSGUARD_CACHE_DIR", str(tmp_path / "cache"))
    (tmp_path / "nets.txt").write_text("93.184.216.0/24\n")
    (tmp_path / "r.toml").write_text('[[allow]]\ncidrs_file = "nets.txt"\n')
    first = load_rules(tmp_path / "r.toml")
    assert list((tmp_path / "cache" / "rules").glob("*.pickle"))
    again = load_rules(tmp_path / "r.toml")
    assert again is not first and verdict(again, SBX, "93.184.216.34") == "allowed"
    (tmp_path / "nets.txt").write_text("93.184.217.0/24\n")  # a list file changed: the cache entry is stale
    changed = load_rules(tmp_path / "r.toml")
    assert verdict(changed, SBX, "93.184.216.34") is None and verdict(changed, SBX, "93.184.217.1") == "allowed"
    (tmp_path / "cache" / "rules").chmod(0o777)  # a directory others may write to is never read
    for f in (tmp_path / "cache" / "rules").glob("*.pickle"):
        f.write_bytes(b"not a pickle")
    assert verdict(load_rules(tmp_path / "r.toml"), SBX, "93.184.217.1") == "allowed"


# ------------------------------------------------------------------------------------------ malformed files
BAD = [
    ("ports = [443,, 80]\n",
     "t.toml:1: ports = [443,, 80]: not valid TOML: invalid value at column 14. Fix: strings need double quotes, "
     "lists are [a, b], entries are [[allow]] / [[deny]] tables (see rules/README.md)"),
    ("version = 1\nallows = []\n",
     't.toml:2: allows: unknown key. Fix: did you mean "allow"? known keys here: version, settings, sandboxes, '
     "classes, allow, deny, acquisition"),
    ("version = 2\n",
     "t.toml:1: version = 2: unsupported rules format version (this egressguard reads 1). Fix: write version = 1"),
    ('[[allow]]\ncidrs = ["10.0.0.0/33"]\n',
     't.toml:2: allow[0].cidrs[0] = "10.0.0.0/33": the prefix length must be 0-32 for IPv4. Fix: write e.g. '
     '"10.0.0.0/32" for the one address'),
    ('[[allow]]\ncidrs = ["10.0.0.1/8"]\n',
     't.toml:2: allow[0].cidrs[0] = "10.0.0.1/8": host bits are set after the prefix length. Fix: write '
     '"10.0.0.0/8" for the network, or "10.0.0.1/32" for the one address'),
    ('[[allow]]\ncidrs = ["2001:db8::1/32"]\n',
     't.toml:2: allow[0].cidrs[0] = "2001:db8::1/32": host bits are set after the prefix length. Fix: write '
     '"2001:db8::/32" for the network, or "2001:db8::1/128" for the one address'),
    ('[[allow]]\ncidrs = ["pypi.org"]\n',
     't.toml:2: allow[0].cidrs[0] = "pypi.org": not an IP network (it looks like a domain name). Fix: put names '
     'under domains = ["pypi.org"]'),
    ('[[allow]]\ncidrs = ["10.0.0"]\n',
     't.toml:2: allow[0].cidrs[0] = "10.0.0": not an IP network. Fix: write an address with a prefix length, e.g. '
     '"192.0.2.0/24" or "2001:db8::/32"'),
    ('[[allow]]\ncidrs = "10.0.0.0/8"\n',
     't.toml:2: allow[0].cidrs = "10.0.0.0/8": must be a list of strings. Fix: write cidrs = ["192.0.2.0/24"]'),
    ('[[allow]]\ncidrs = ["10.0.0.0/8"]\nexcept = ["11.0.0.0/16"]\n',
     't.toml:3: allow[0].except[0] = "11.0.0.0/16": an except range must lie inside one of the entry\'s cidrs. '
     "Fix: remove it, or add the network it belongs to under cidrs"),
    ('[[allow]]\ndomains = ["https://pypi.org/simple"]\n',
     't.toml:2: allow[0].domains[0] = "https://pypi.org/simple": a URL, not a domain name. Fix: write just the host '
     'name, "pypi.org"'),
    ('[[allow]]\ndomains = ["pypi.org:443"]\n',
     't.toml:2: allow[0].domains[0] = "pypi.org:443": a port is not part of a domain name. Fix: write "pypi.org" and '
     "put the port under ports = [443]"),
    ('[[allow]]\ndomains = ["*"]\n',
     't.toml:2: allow[0].domains[0] = "*": "*" alone matches one label only (a top-level domain). Fix: write "**" '
     'for every name, or "*.example.com" for one label under example.com'),
    ('[[allow]]\ndomains = ["a.**.example.com"]\n',
     't.toml:2: allow[0].domains[0] = "a.**.example.com": "**" must be the whole first label. Fix: write '
     '"**.example.com" (any depth under example.com)'),
    ('[[allow]]\ndomains = ["bücher.example"]\n',
     't.toml:2: allow[0].domains[0] = "bücher.example": not ASCII. Fix: write the punycode form '
     '"xn--bcher-kva.example"'),
    ('[[allow]]\ndomains = ["a..example"]\n',
     't.toml:2: allow[0].domains[0] = "a..example": an empty label (two dots in a row, or a leading dot). Fix: '
     'write "a.example"'),
    ('[[allow]]\ndomains = ["-bad.example"]\n',
     "t.toml:2: allow[0].domains[0] = \"-bad.example\": a label must be 1-63 letters, digits, '-', '_' or '*', not "
     "starting or ending with '-'. Fix: check the spelling of the name"),
    ('[[allow]]\ndomains = ["1.2.3.4"]\n',
     't.toml:2: allow[0].domains[0] = "1.2.3.4": an address, not a domain name. Fix: put addresses under cidrs = '
     '["1.2.3.4/32"]'),
    ('[[allow]]\ncidrs = ["1.2.3.0/24"]\nports = [70000]\n',
     't.toml:3: allow[0].ports[0] = 70000: not a port (0-65535). Fix: write a number such as 443, or a range such '
     'as "8000-8100"'),
    ('[[allow]]\ncidrs = ["1.2.3.0/24"]\nports = ["90-80"]\n',
     't.toml:3: allow[0].ports[0] = "90-80": a port range is "low-high" with 0 <= low <= high <= 65535. Fix: write '
     '"80-90"'),
    ('[[allow]]\ncidrs = ["1.2.3.0/24"]\nports = ["https"]\n',
     't.toml:3: allow[0].ports[0] = "https": not a port or port range. Fix: write a number such as 443, or a range '
     'such as "8000-8100"'),
    ('[[allow]]\ncidrs = ["1.2.3.0/24"]\nprotocols = ["tcpp"]\n',
     't.toml:3: allow[0].protocols[0] = "tcpp": not a protocol. Fix: write one of "tcp", "udp", "icmp", "icmpv6", '
     '"sctp", or an IP protocol number 0-255'),
    ('[[allow]]\ncidrs = ["1.2.3.0/24"]\nports = [443]\nprotocols = ["tcp", "icmp"]\n',
     't.toml:4: allow[0].protocols = ["tcp", "icmp"]: ports apply only to tcp, udp and sctp. Fix: put the portless '
     "protocols (icmp, ...) in an entry of their own, without ports"),
    ('[[allow]]\nports = [443]\n',
     't.toml:1: allow[0] = { ports = [443] }: the entry names no destination. Fix: give cidrs, domains or classes '
     '(every address: cidrs = ["0.0.0.0/0", "::/0"])'),
    ('[[allow]]\ncidrs = ["1.2.3.0/24"]\nseverity = "high"\n',
     't.toml:3: allow[0].severity = "high": only deny entries have a severity. Fix: remove it (a flow that an allow '
     "entry matches raises no finding)"),
    ('[[deny]]\ncidrs = ["1.2.3.0/24"]\nseverity = "urgent"\n',
     't.toml:3: deny[0].severity = "urgent": not a severity. Fix: write one of "low", "medium", "high", "critical"'),
    ('[[allow]]\nclasses = ["metdata"]\n',
     't.toml:2: allow[0].classes[0] = "metdata": not an address class. Fix: did you mean "metadata"? classes: '
     "loopback, metadata, link_local, private, cgnat, multicast, broadcast, documentation, benchmarking, reserved, "
     "host, global, doh"),
    ('[[allow]]\ncidrs = ["1.2.3.0/24"]\nport = [443]\n',
     't.toml:3: allow[0].port: unknown key. Fix: did you mean "ports"? known keys here: name, cidrs, except, '
     "cidrs_file, domains, domains_file, classes, ports, protocols, sources, severity, ssh_tunnels"),
    ('[[allow]]\nname = ""\ncidrs = ["1.2.3.0/24"]\n',
     't.toml:2: allow[0].name = "": must be a non-empty string. Fix: write name = "package registries"'),
    ('[[allow]]\ncidrs = ["1.2.3.0/24"]\nsources = { macs = ["02:42:ac:11:00"] }\n',
     't.toml:3: allow[0].sources.macs[0] = "02:42:ac:11:00": not a MAC address. Fix: write six hex pairs, e.g. '
     '"02:42:ac:11:00:02"'),
    ('[[allow]]\ncidrs = ["1.2.3.0/24"]\nsources = {}\n',
     "t.toml:3: allow[0].sources = {  }: sources names no sandbox. Fix: give cidrs, macs or interfaces, or remove "
     "sources (any sandbox)"),
    ("[settings]\nmin_dns_ttl = -5\n",
     "t.toml:2: settings.min_dns_ttl = -5: must be a number of seconds, 0-604800. Fix: write min_dns_ttl = 3600 (0 "
     "keeps the TTL each answer carries)"),
    ('[settings]\nresolvers = ["dns.google"]\n',
     't.toml:2: settings.resolvers[0] = "dns.google": not an IP network (it looks like a domain name). Fix: put '
     'names under domains = ["dns.google"]'),
    ("[settings]\nsandbox_network = []\n",
     't.toml:2: settings.sandbox_network: unknown key. Fix: did you mean "sandbox_networks"? known keys here: '
     "sandbox_networks, host_addresses, resolvers, min_dns_ttl"),
    ('[sandboxes]\n"agent" = "a-1"\n',
     't.toml:2: sandboxes.agent = "a-1": the key "agent" is not an address, a CIDR or a MAC address. Fix: key the '
     'name by "10.0.0.2", "10.0.0.0/28" or "02:42:ac:11:00:02"'),
    ('[classes]\nprivate = "block"\n',
     't.toml:2: classes.private = "block": not a treatment. Fix: write one of "deny", "allowlist", "ignore"'),
    ('[classes]\nprivat = "deny"\n',
     't.toml:2: classes.privat: unknown key. Fix: did you mean "private"? known keys here: loopback, metadata, '
     "link_local, private, cgnat, multicast, broadcast, documentation, benchmarking, reserved, host, global, doh"),
    ('allow = "everything"\n',
     't.toml:1: allow = "everything": allow must be a list of tables. Fix: write each entry as a [[allow]] table '
     "(see rules/README.md)"),
]


@pytest.mark.parametrize("text,message", BAD, ids=[m.split(": ", 2)[1][:40] for _, m in BAD])
def test_malformed_rules_give_one_exact_message(text, message):
    with pytest.raises(RulesError) as err:
        parse_rules(text, "t.toml")
    assert str(err.value) == message
    assert err.value.exit_status == ExitStatus.RULES


def test_errors_in_list_files_name_the_list_file_and_its_line(tmp_path):
    (tmp_path / "nets.txt").write_text("192.0.2.0/24\n\n10.0.0.0/33\n")
    (tmp_path / "r.toml").write_text('[[allow]]\ncidrs_file = "nets.txt"\n')
    with pytest.raises(RulesError) as err:
        load_rules(tmp_path / "r.toml")
    assert str(err.value) == (f'{tmp_path / "nets.txt"}:3: allow[0].cidrs_file = "10.0.0.0/33": the prefix length '
                              f'must be 0-32 for IPv4. Fix: write e.g. "10.0.0.0/32" for the one address')
    (tmp_path / "r.toml").write_text('[[allow]]\ncidrs_file = "missing.txt"\n')
    with pytest.raises(RulesError, match=r"r\.toml:2: allow\[0\]\.cidrs_file = \"missing\.txt\": no such file"):
        load_rules(tmp_path / "r.toml")


def test_missing_and_unreadable_files(tmp_path):
    with pytest.raises(RulesError) as err:
        load_rules(tmp_path / "nope.toml")
    assert str(err.value) == f"{tmp_path / 'nope.toml'}: no such file. Fix: give the path of a rules file (see " \
                             f"rules/README.md)"
    (tmp_path / "latin1.toml").write_bytes(b'[[allow]]\nname = "caf\xe9"\n')
    with pytest.raises(RulesError, match="not UTF-8 text"):
        load_rules(tmp_path / "latin1.toml")


def test_swap_is_atomic_and_a_bad_file_keeps_the_old_rules(tmp_path):
    path = tmp_path / "r.toml"
    path.write_text('[[allow]]\nname = "one"\ncidrs = ["1.2.3.0/24"]\n')
    active = ActiveRules(load_rules(path))
    first = active.current
    path.write_text('[[allow]]\nname = "two"\ncidrs = ["1.2.3.0/33"]\n')
    error = active.reload()
    assert isinstance(error, RulesError) and "prefix length" in str(error)
    assert active.current is first and first.entries[0].name == "one"
    path.write_text('[[allow]]\nname = "two"\ncidrs = ["1.2.4.0/24"]\n')
    assert active.reload() is None
    assert active.current.entries[0].name == "two" and first.entries[0].name == "one"  # the old object is intact
