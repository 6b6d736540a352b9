"""The rules file: TOML (stdlib tomllib) -> validated, immutable `Allowlist`; `ActiveRules` swaps rules atomically.

Every key is documented in rules/README.md. Validation is complete before anything is built, so a file that fails
to load leaves nothing half-configured; each problem is one `RulesError` naming the file, the line, the key path
(entries counted from 0, as in a JSON path), the bad value and the fix.
"""
from __future__ import annotations

import difflib
import json
import math
import re
import threading
import tomllib
from pathlib import Path

from egressguard.errors import RulesError
from egressguard.netaddr import subtract
from egressguard.policy import cache as rules_cache
from egressguard.policy import syntax
from egressguard.policy.acquisition import parse_grants
from egressguard.policy.addrclass import ADDRESS_CLASSES, DOH_CLASS, GLOBAL_CLASS, HOST_CLASS, Treatment
from egressguard.policy.allowlist import Allowlist, Entry, RuleSettings, Services, Sources
from egressguard.policy.syntax import Context, domain_pattern
from egressguard.schema import Severity

SCHEMA_VERSION = 1
DEFAULT_RULES = Path(__file__).with_name("default_rules.toml")  # the same file as rules/default.toml
DEFAULT_MIN_DNS_TTL_S = 3600  # Cilium's --tofqdns-min-ttl default: short TTLs must not unbind names in use
MAX_MIN_DNS_TTL_S = 7 * 86400
TOP_KEYS = ("version", "settings", "sandboxes", "classes", "allow", "deny", "acquisition")
SETTINGS_KEYS = ("sandbox_networks", "host_addresses", "resolvers", "min_dns_ttl")
ENTRY_KEYS = ("name", "cidrs", "except", "cidrs_file", "domains", "domains_file", "classes", "ports", "protocols",
              "sources", "severity", "ssh_tunnels")
SSH_TUNNEL_USES = ("forward", "reverse")  # what an allow entry may expect of SSH to its destination
_ENTRY_KEYSET = frozenset(ENTRY_KEYS)
SOURCE_KEYS = ("cidrs", "macs", "interfaces")
PORT_PROTOCOLS = (6, 17, 132)  # protocols whose flows have ports
CLASS_NAMES = tuple(c.name for c in ADDRESS_CLASSES) + (HOST_CLASS.name, GLOBAL_CLASS.name, DOH_CLASS)
_MAC = re.compile(r"^[0-9a-f]{2}([:-])(?:[0-9a-f]{2}\1){4}[0-9a-f]{2}$")


def load_rules(path: str | Path | None = None) -> Allowlist:
    """Read and validate a rules file (the shipped default when `path` is None) into an Allowlist.

    Raises:
        RulesError: the file is missing, not TOML, or breaks a rule of the format (one message, with the fix).
    """
    if path is not None and not str(path):  # Path("") would read as "." and report a directory
        raise RulesError("''", "an empty path names no rules file",
                         fix="give the path of a rules file (see rules/README.md)")
    path = Path(path) if path is not None else DEFAULT_RULES
    shown = str(path) if path != DEFAULT_RULES else "rules/default.toml"
    try:
        data = path.read_bytes()
        text = data.decode("utf-8")
        # a byte-order mark (Windows editors write one) is not TOML, but it says nothing: read past it
        text = text[1:] if text.startswith("\ufeff") else text
    except FileNotFoundError:
        raise RulesError(shown, "no such file", fix="give the path of a rules file (see rules/README.md)") from None
    except IsADirectoryError:
        raise RulesError(shown, "is a directory", fix="give the path of a .toml rules file") from None
    except UnicodeDecodeError as exc:
        raise RulesError(shown, f"not UTF-8 text (byte {exc.start})", fix="save the file as UTF-8") from None
    except OSError as exc:
        raise RulesError(shown, f"cannot be read ({exc.strerror})", fix="check the path and its permissions") from None
    if rules_cache.wanted(data):  # big files: compiled once, then loaded from the cache (policy/cache.py)
        cached = rules_cache.load(path, shown, data)
        if cached is not None:
            return cached
        deps: list[str] = []
        allowlist = parse_rules(text, shown, base_dir=path.parent, source_path=str(path), deps=deps)
        rules_cache.store(path, shown, data, allowlist, deps)
        return allowlist
    return parse_rules(text, shown, base_dir=path.parent, source_path=str(path))


def parse_rules(text: str, name: str = "<rules>", base_dir: Path | None = None,
                source_path: str | None = None, deps: list[str] | None = None) -> Allowlist:
    """Validate rules given as TOML text; `name` is used in messages, `base_dir` resolves *_file keys,
    `source_path` is what `ActiveRules.reload()` re-reads; the list files read are appended to `deps`."""
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise syntax.syntax_error(name, text, exc) from None
    except RecursionError:  # tomllib parses nested arrays and inline tables recursively
        raise RulesError(name, "values are nested too deeply to read (hundreds of [ or { inside each other)",
                         fix="a rules file needs only tables, lists, strings and numbers (see rules/README.md)"
                         ) from None
    ctx = Context(name, text, base_dir or Path.cwd(), syntax.entry_lines(text), deps if deps is not None else [])
    ctx.unknown_keys((), doc, TOP_KEYS)
    version = doc.get("version", SCHEMA_VERSION)
    if version != SCHEMA_VERSION or isinstance(version, bool):
        ctx.fail(("version",), version, f"unsupported rules format version (this egressguard reads {SCHEMA_VERSION})",
                 f"write version = {SCHEMA_VERSION}")
    settings = _settings(ctx, doc)
    entries = []
    for action in ("deny", "allow"):  # deny entries are evaluated first
        raw = doc.get(action, [])
        if not isinstance(raw, list):
            ctx.fail((action,), raw, f"{action} must be a list of tables",
                     f"write each entry as a [[{action}]] table (see rules/README.md)")
        entries += [_entry(ctx, action, i, item) for i, item in enumerate(raw)]
    return Allowlist.compile(tuple(entries), settings, name, source_path)


class ActiveRules:
    """The rules in force, swapped atomically: readers take `current` once per batch and see one whole version."""

    def __init__(self, allowlist: Allowlist):
        self._current = allowlist
        self._lock = threading.Lock()

    @property
    def current(self) -> Allowlist:
        return self._current

    def swap(self, allowlist: Allowlist) -> Allowlist:
        """Put `allowlist` in force; returns the rules it replaced."""
        with self._lock:
            old, self._current = self._current, allowlist
        return old

    def reload(self, path: str | Path | None = None) -> RulesError | None:
        """Load `path` (default: the file in force) and swap it in; on any error keep the old rules and return the
        error (for live mode's SIGHUP: report it, carry on)."""
        try:
            new = load_rules(path if path is not None else self._current.source_path)
        except RulesError as exc:
            return exc
        self.swap(new)
        return None


# ------------------------------------------------------------------------------------------ sections
def _settings(ctx: Context, doc: dict) -> RuleSettings:
    raw = doc.get("settings", {})
    if not isinstance(raw, dict):
        ctx.fail(("settings",), raw, "must be a table", "write a [settings] table")
    ctx.unknown_keys(("settings",), raw, SETTINGS_KEYS)
    nets = {}
    for key in ("sandbox_networks", "host_addresses", "resolvers"):
        values = ctx.list_of(("settings", key), raw.get(key, []), str, '["10.0.0.0/24"]')
        nets[key] = tuple(syntax.network(ctx, ("settings", key, i), v) for i, v in enumerate(values))
    ttl = raw.get("min_dns_ttl", DEFAULT_MIN_DNS_TTL_S)
    if isinstance(ttl, bool) or not isinstance(ttl, (int, float)) or not math.isfinite(ttl) or \
            not 0 <= ttl <= MAX_MIN_DNS_TTL_S:
        ctx.fail(("settings", "min_dns_ttl"), ttl, f"must be a number of seconds, 0-{MAX_MIN_DNS_TTL_S}",
                 f"write min_dns_ttl = {DEFAULT_MIN_DNS_TTL_S} (0 keeps the TTL each answer carries)")
    return RuleSettings(sandbox_networks=nets["sandbox_networks"], host_addresses=nets["host_addresses"],
                        resolvers=nets["resolvers"], min_dns_ttl_s=float(ttl),
                        sandbox_names=_sandbox_names(ctx, doc), class_overrides=_class_overrides(ctx, doc),
                        acquisition=parse_grants(ctx, doc, _sources))


def _sandbox_names(ctx: Context, doc: dict) -> tuple[tuple[object, str], ...]:
    raw = doc.get("sandboxes", {})
    if not isinstance(raw, dict):
        ctx.fail(("sandboxes",), raw, "must be a table", 'write [sandboxes] then lines such as "10.0.0.2" = "agent-1"')
    out = []
    for key, name in raw.items():
        path = ("sandboxes", key)
        if not isinstance(name, str) or not name.strip() or len(name) > 64:
            ctx.fail(path, name, "a sandbox name is a string of 1-64 characters", f'write "{key}" = "agent-1"')
        if _MAC.match(key.lower()):
            out.append((int(re.sub("[:-]", "", key.lower()), 16), name.strip()))
        else:
            try:
                out.append((syntax.network(ctx, path, key), name.strip()))
            except RulesError:
                ctx.fail(path, name, f'the key "{key}" is not an address, a CIDR or a MAC address',
                         'key the name by "10.0.0.2", "10.0.0.0/28" or "02:42:ac:11:00:02"')
    return tuple(out)


def _class_overrides(ctx: Context, doc: dict) -> tuple[tuple[str, Treatment, Severity | None], ...]:
    raw = doc.get("classes", {})
    if not isinstance(raw, dict):
        ctx.fail(("classes",), raw, "must be a table", 'write [classes] then lines such as private = "deny"')
    ctx.unknown_keys(("classes",), raw, CLASS_NAMES)
    out = []
    choices = ", ".join(json.dumps(str(t)) for t in Treatment)
    for key, value in raw.items():
        path = ("classes", key)
        severity = None
        if isinstance(value, dict):
            ctx.unknown_keys(path, value, ("treatment", "severity"))
            severity_raw = value.get("severity")
            if severity_raw is not None:
                severity = _severity(ctx, path + ("severity",), severity_raw)
            value = value.get("treatment", None)
            if value is None:
                ctx.fail(path, raw[key], "a class table needs a treatment", f"write {{ treatment = \"deny\" }} ({choices})")
        if value not in tuple(str(t) for t in Treatment):
            ctx.fail(path, value, "not a treatment", f"write one of {choices}")
        out.append((key, Treatment(value), severity))
    return tuple(out)


def _severity(ctx: Context, path: tuple, raw: object) -> Severity:
    """A severity label of the rules file; anything else fails with the labels it could be."""
    try:
        return Severity.parse(raw)
    except ValueError:
        ctx.fail(path, raw, "not a severity", f"write one of {', '.join(json.dumps(s) for s in Severity.labels())}")


def _entry(ctx: Context, action: str, i: int, raw: object) -> Entry:
    path = (action, i)
    if not isinstance(raw, dict):
        ctx.fail(path, raw, "an entry must be a table", f"write it as a [[{action}]] table with keys such as cidrs, "
                 "domains, ports")
    if not _ENTRY_KEYSET.issuperset(raw):
        ctx.unknown_keys(path, raw, ENTRY_KEYS)
    name = raw.get("name", f"{action}[{i}]")
    if not isinstance(name, str) or not name.strip():
        ctx.fail(path + ("name",), name, "must be a non-empty string", 'write name = "package registries"')
    cidrs: list[tuple[tuple[int, int], str]] = []
    if "cidrs" in raw:
        values = ctx.list_of(path + ("cidrs",), raw["cidrs"], str, '["192.0.2.0/24"]')
        cidrs = [(syntax.fast_network(c) or syntax.network(ctx, path + ("cidrs", j), c), c) for j, c in enumerate(values)]
    if "cidrs_file" in raw:
        shown, items = syntax.read_list(ctx, path + ("cidrs_file",), raw["cidrs_file"])
        cidrs += [(syntax.fast_network(item) or syntax.network(ctx, path + ("cidrs_file",), item, file=shown, line=no), item)
                  for no, item in items]
    holes: list[tuple[tuple[int, int], str]] = []
    if "except" in raw:
        values = ctx.list_of(path + ("except",), raw["except"], str, '["192.0.2.128/25"]')
        holes = [(syntax.network(ctx, path + ("except", j), c), c) for j, c in enumerate(values)]
        for j, ((a, b), text) in enumerate(holes):
            if not any(x <= a and b <= y for (x, y), _ in cidrs):
                ctx.fail(path + ("except", j), text, "an except range must lie inside one of the entry's cidrs",
                         "remove it, or add the network it belongs to under cidrs")
    ranges = tuple(r for (a, b), _ in cidrs for r in subtract(a, b, [h for h, _ in holes])) if holes else \
        tuple(r for r, _ in cidrs)
    domains: list[str] = []
    if "domains" in raw:
        values = ctx.list_of(path + ("domains",), raw["domains"], str, '["pypi.org", "*.pypi.org"]')
        for j, d in enumerate(values):
            pattern, problem, fix = domain_pattern(d)
            if problem:
                ctx.fail(path + ("domains", j), d, problem, fix)
            domains.append(pattern)
    if "domains_file" in raw:
        shown, items = syntax.read_list(ctx, path + ("domains_file",), raw["domains_file"])
        for no, item in items:
            pattern, problem, fix = domain_pattern(item)
            if problem:
                ctx.fail(path + ("domains_file",), item, problem, fix, file=shown, line=no)
            domains.append(pattern)
    classes: list[str] = []
    if "classes" in raw:
        classes = ctx.list_of(path + ("classes",), raw["classes"], str, '["metadata"]')
        for j, c in enumerate(classes):
            if c not in CLASS_NAMES:
                close = difflib.get_close_matches(c, CLASS_NAMES, n=1)
                ctx.fail(path + ("classes", j), c, "not an address class",
                         (f'did you mean "{close[0]}"? ' if close else "") + f"classes: {', '.join(CLASS_NAMES)}")
    if not (cidrs or domains or classes):
        ctx.fail(path, raw, "the entry names no destination",
                 'give cidrs, domains or classes (every address: cidrs = ["0.0.0.0/0", "::/0"])')
    severity = None
    if "severity" in raw:
        if action != "deny":
            ctx.fail(path + ("severity",), raw["severity"], "only deny entries have a severity",
                     "remove it (a flow that an allow entry matches raises no finding)")
        severity = _severity(ctx, path + ("severity",), raw["severity"])
    tunnels: list[str] = []
    if "ssh_tunnels" in raw:
        if action != "allow":
            ctx.fail(path + ("ssh_tunnels",), raw["ssh_tunnels"], "only allow entries expect SSH tunnels",
                     "remove it, or move the destination to an [[allow]] entry")
        tunnels = ctx.list_of(path + ("ssh_tunnels",), raw["ssh_tunnels"], str, '["forward"]')
        for j, use in enumerate(tunnels):
            if use not in SSH_TUNNEL_USES:
                ctx.fail(path + ("ssh_tunnels", j), use, "not an SSH tunnel use",
                         f"write one of {', '.join(SSH_TUNNEL_USES)} (forward: -L, -D, -J, -w; reverse: -R)")
    cidr_text = tuple(t for _, t in cidrs[:20])
    if len(cidrs) > 20:
        cidr_text += (f"... {len(cidrs) - 20:,} more",)
    return Entry(action, i, name.strip(), ctx.entry_line(action, i), ranges, cidr_text,
                 tuple(t for _, t in holes), tuple(domains), tuple(classes), _services(ctx, path, raw),
                 _sources(ctx, path, raw["sources"]) if "sources" in raw else None,
                 severity if action == "allow" else (severity or Severity.HIGH), tuple(tunnels))


_SERVICES_CACHE: dict[tuple, Services] = {}


def _services(ctx: Context, path: tuple, raw: dict) -> Services:
    try:  # 100,000 entries share a handful of port lists
        key = (tuple(raw["ports"]) if "ports" in raw else None, tuple(raw["protocols"]) if "protocols" in raw else None)
        cached = _SERVICES_CACHE.get(key) if all(type(x) in (int, str) for part in key if part for x in part) else None
    except TypeError:
        key, cached = None, None
    if cached is not None:
        return cached
    ports = syntax.ports(ctx, path + ("ports",), raw["ports"]) if "ports" in raw else []
    protocols = syntax.protocols(ctx, path + ("protocols",), raw["protocols"]) if "protocols" in raw else []
    if ports and protocols:
        bad = [p for p in protocols if p not in PORT_PROTOCOLS]
        if bad:
            ctx.fail(path + ("protocols",), raw["protocols"], "ports apply only to tcp, udp and sctp",
                     "put the portless protocols (icmp, ...) in an entry of their own, without ports")
    services = Services.build(ports, protocols or (list(PORT_PROTOCOLS) if ports else []))
    if key is not None and len(_SERVICES_CACHE) < 4096:
        _SERVICES_CACHE[key] = services
    return services


def _sources(ctx: Context, path: tuple, raw: object) -> Sources | None:
    if raw is None:
        return None
    path = path + ("sources",)
    if not isinstance(raw, dict):
        ctx.fail(path, raw, "must be a table",
                 'write sources = { cidrs = ["10.0.0.2/32"], macs = ["02:42:ac:11:00:02"], interfaces = ["veth1"] }')
    ctx.unknown_keys(path, raw, SOURCE_KEYS)
    cidrs = tuple(syntax.network(ctx, path + ("cidrs", i), c) for i, c in
                  enumerate(ctx.list_of(path + ("cidrs",), raw.get("cidrs", []), str, '["10.0.0.2/32"]')))
    macs = []
    for i, m in enumerate(ctx.list_of(path + ("macs",), raw.get("macs", []), str, '["02:42:ac:11:00:02"]')):
        if not _MAC.match(m.lower()):
            ctx.fail(path + ("macs", i), m, "not a MAC address", 'write six hex pairs, e.g. "02:42:ac:11:00:02"')
        macs.append(int(re.sub("[:-]", "", m.lower()), 16))
    interfaces = raw.get("interfaces", [])
    if not isinstance(interfaces, list) or not all(isinstance(x, (str, int)) and not isinstance(x, bool)
                                                   for x in interfaces):
        ctx.fail(path + ("interfaces",), interfaces, "must be a list of interface names or capture interface numbers",
                 'write interfaces = ["veth1a2b3c"] or interfaces = [0]')
    if not (cidrs or macs or interfaces):
        ctx.fail(path, raw, "sources names no sandbox", "give cidrs, macs or interfaces, or remove sources (any "
                 "sandbox)")
    return Sources(cidrs=cidrs, macs=tuple(sorted(set(macs))), interfaces=tuple(interfaces))
