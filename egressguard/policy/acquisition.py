"""Resource-acquisition endpoints (policy/acquisition.toml) and the rules file's `[[acquisition]]` grants.

The endpoint list says which server names and ports are billing, provisioning, payment, exchange or wallet APIs,
each citing the provider's documentation; it is loaded once per run by whoever builds the detector context, and a
bad file is a RulesError naming the file, the entry and the fix (exit status 4). A grant, written in the rules
file, allows categories or endpoints for the sandboxes that legitimately use them.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from egressguard.errors import RulesError
from egressguard.policy.model import Sources
from egressguard.policy.syntax import read_data_file

DEFAULT_ACQUISITION = Path(__file__).resolve().with_name("acquisition.toml")
CATEGORIES = {
    "cloud_billing": "billing, budget, cost and price APIs of cloud accounts",
    "compute_provisioning": "APIs that start instances or rent GPUs",
    "payment": "payment processors' APIs",
    "crypto_exchange": "crypto exchanges' trading APIs",
    "wallet_rpc": "hosted blockchain node RPC and node RPC ports",
}
_NAME_RE = re.compile(r"^(?=.{3,253}$)((\*|[a-z0-9]([a-z0-9*-]{0,61}[a-z0-9*])?)\.)+[a-z0-9-]{2,63}$")
_URL_RE = re.compile(r"^https://[A-Za-z0-9.-]+\.[A-Za-z]{2,}(/\S*)?$")


@dataclass(frozen=True)
class Endpoint:
    """One entry: the names (or the port) it covers, its category, who runs it and where that is documented."""

    category: str
    provider: str
    names: tuple[str, ...]
    source: str
    note: str = ""
    port: int = 0


def _glob(pattern: str) -> re.Pattern:
    """A name pattern with `*` standing for the characters of one label, as a whole-name regex."""
    return re.compile("^" + "[a-z0-9-]+".join(re.escape(p) for p in pattern.split("*")) + "$")


def name_matches(name: str, pattern: str) -> bool:
    """`name` is `pattern` or lies under it (label boundary); a pattern with `*` must match the whole name."""
    name = name.lower().rstrip(".")
    if "*" in pattern:
        return _glob(pattern).match(name) is not None
    return name == pattern or name.endswith("." + pattern)


@dataclass
class AcquisitionList:
    """The endpoints of policy/acquisition.toml, matched by name (suffix or one-label glob) and by port."""

    endpoints: tuple[Endpoint, ...] = ()
    path: str = ""
    _suffixes: dict[str, Endpoint] = field(default_factory=dict, repr=False)
    _globs: list[tuple[re.Pattern, str, Endpoint]] = field(default_factory=list, repr=False)
    _ports: dict[int, Endpoint] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        for e in self.endpoints:
            if e.port:
                self._ports[e.port] = e
            for n in e.names:
                if "*" in n:
                    self._globs.append((_glob(n), n, e))
                else:
                    self._suffixes.setdefault(n, e)

    def match(self, name: str | None) -> tuple[str, Endpoint] | None:
        """(the listed name or pattern, its entry) that `name` falls under, longest suffix first; None if none."""
        if not name:
            return None
        text = name.lower().rstrip(".")
        labels = text.split(".")
        for i in range(len(labels) - 1):
            hit = self._suffixes.get(".".join(labels[i:]))
            if hit is not None:
                return ".".join(labels[i:]), hit
        for rx, pattern, e in self._globs:
            if rx.match(text):
                return pattern, e
        return None

    def port(self, port: int) -> Endpoint | None:
        return self._ports.get(int(port))

    @property
    def ports(self) -> tuple[int, ...]:
        return tuple(sorted(self._ports))

    def count(self, category: str) -> int:
        return sum(1 for e in self.endpoints if e.category == category)


def load_acquisition(path: Path | str = DEFAULT_ACQUISITION) -> AcquisitionList:
    """Read and validate an endpoint list; raises RulesError naming the file, the line, the entry and the fix."""
    path = Path(path)
    text, data = read_data_file(path, "resource-acquisition endpoint list", "egressguard/policy/acquisition.toml")

    def fail(problem: str, key: str, value, fix: str) -> RulesError:
        needle = str(value) if isinstance(value, (str, int)) and not isinstance(value, bool) else ""
        line = next((i for i, ln in enumerate(text.splitlines(), 1) if needle and needle in ln), None)
        return RulesError(str(path), problem, line=line, key=key, value=repr(value), fix=fix)

    out: list[Endpoint] = []
    for section in ("endpoint", "port"):
        entries = data.get(section, [])
        if not isinstance(entries, list):
            raise fail(f"{section} must be a list of tables", section, entries, f"write [[{section}]] tables")
        for entry in entries:
            if not isinstance(entry, dict):
                raise fail("an entry must be a table", section, entry, f"write a [[{section}]] table")
            category, provider, source = entry.get("category"), entry.get("provider"), entry.get("source")
            if category not in CATEGORIES:
                raise fail("not a resource-acquisition category", "category", category,
                           f"one of {', '.join(CATEGORIES)}")
            if not isinstance(provider, str) or not provider.strip():
                raise fail("every entry names its provider", "provider", provider, 'provider = "Stripe"')
            if not isinstance(source, str) or not _URL_RE.match(source):
                raise fail(f"{provider}: source must be the https URL of the provider's documentation", "source",
                           source, 'source = "https://docs.example.com/api"')
            note = str(entry.get("note", ""))
            if section == "port":
                port = entry.get("port")
                if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535:
                    raise fail("not a port number", "port", port, "an integer 1..65535")
                out.append(Endpoint(category, provider.strip(), (), source, note, port))
                continue
            names = entry.get("names")
            if not isinstance(names, list) or not names or not all(isinstance(n, str) and _NAME_RE.match(n)
                                                                   for n in names):
                bad = next((n for n in names if not (isinstance(n, str) and _NAME_RE.match(n))), names) \
                    if isinstance(names, list) and names else names
                raise fail(f"{provider}: names must be lower-case DNS names (\"*\" for one label)", "names", bad,
                           'names = ["api.example.com", "ec2.*.amazonaws.com"]')
            out.append(Endpoint(category, provider.strip(), tuple(names), source, note))
    return AcquisitionList(tuple(out), str(path))


# ------------------------------------------------------------------------------------------------ rules grants
GRANT_KEYS = ("name", "categories", "endpoints", "sources")


@dataclass(frozen=True)
class AcquisitionGrant:
    """A rules file's [[acquisition]] entry: these categories or endpoints are allowed for these sandboxes."""

    index: int
    name: str
    line: int
    categories: tuple[str, ...] = ()
    endpoints: tuple[str, ...] = ()  # names: each matches itself and the names under it
    sources: Sources | None = None  # None: every sandbox

    def covers(self, category: str, name: str | None) -> bool:
        return category in self.categories or (name is not None and any(name_matches(name, e)
                                                                        for e in self.endpoints))

    def applies_to(self, address: int, mac: int) -> bool:
        """Whether the sandbox (storage-form address, MAC) is one of the grant's sources."""
        if self.sources is None:
            return True
        return any(a <= address <= b for a, b in self.sources.cidrs) or mac in self.sources.macs

    def label(self) -> str:
        return f'acquisition[{self.index}] "{self.name}"' + (f" (line {self.line})" if self.line else "")


def parse_grants(ctx, doc: dict, parse_sources) -> tuple[AcquisitionGrant, ...]:
    """The [[acquisition]] entries of a rules document, validated (`ctx` is the rules file's syntax.Context,
    `parse_sources` the rules' own `sources` parser, so the key means what it means in [[allow]])."""
    import difflib

    raw = doc.get("acquisition", [])
    if not isinstance(raw, list):
        ctx.fail(("acquisition",), raw, "acquisition must be a list of tables",
                 'write [[acquisition]] tables, e.g. categories = ["payment"]')
    out = []
    for i, item in enumerate(raw):
        path = ("acquisition", i)
        if not isinstance(item, dict):
            ctx.fail(path, item, "an entry must be a table", 'write [[acquisition]] with categories = ["payment"]')
        ctx.unknown_keys(path, item, GRANT_KEYS)
        name = item.get("name", f"acquisition[{i}]")
        if not isinstance(name, str) or not name.strip():
            ctx.fail(path + ("name",), name, "must be a non-empty string", 'write name = "billing agent"')
        categories = ctx.list_of(path + ("categories",), item.get("categories", []), str, '["payment"]')
        for j, c in enumerate(categories):
            if c not in CATEGORIES:
                close = difflib.get_close_matches(c, list(CATEGORIES), n=1)
                ctx.fail(path + ("categories", j), c, "not a resource-acquisition category",
                         (f'did you mean "{close[0]}"? ' if close else "") + f"categories: {', '.join(CATEGORIES)}")
        endpoints = ctx.list_of(path + ("endpoints",), item.get("endpoints", []), str, '["api.stripe.com"]')
        endpoints = [e.lower().rstrip(".") for e in endpoints]
        for j, e in enumerate(endpoints):
            if "*" in e or not _NAME_RE.match(e):
                ctx.fail(path + ("endpoints", j), item["endpoints"][j], "not a server name",
                         'write a DNS name such as "api.stripe.com" (it covers the names under it too)')
        if not categories and not endpoints:
            ctx.fail(path, item, "the entry allows nothing", 'give categories = ["payment"] or endpoints = '
                     '["api.stripe.com"]')
        sources = parse_sources(ctx, path, item["sources"]) if "sources" in item else None
        if sources is not None and sources.interfaces:
            ctx.fail(path + ("sources", "interfaces"), list(sources.interfaces),
                     "acquisition entries select sandboxes by address or MAC only",
                     "use sources = { cidrs = [...] } or { macs = [...] }")
        out.append(AcquisitionGrant(i, name.strip(), ctx.line(path) or 0, tuple(categories), tuple(endpoints),
                                    sources))
    return tuple(out)


__all__ = ["AcquisitionGrant", "AcquisitionList", "CATEGORIES", "DEFAULT_ACQUISITION", "Endpoint", "load_acquisition",
           "name_matches", "parse_grants"]
