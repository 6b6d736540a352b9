"""`egressguard rules check`: what a rules file allows and denies, as rich tables. Render functions are pure."""
from __future__ import annotations

from rich.console import Group
from rich.markup import escape
from rich.table import Table

from egressguard.policy.allowlist import CLASS_NAMES, CLASSES, Allowlist
from egressguard.policy.acquisition import CATEGORIES, DEFAULT_ACQUISITION, AcquisitionList, load_acquisition
from egressguard.policy.addrclass import DOH_ADDRESSES, DOH_NAMES
from egressguard.netaddr import range_text

SHOWN = 12  # items per cell before "... N more"
MAX_ENTRIES = 200  # entries listed one by one
SEVERITY_STYLE = {"critical": "bold white on red", "high": "bold red", "medium": "yellow", "low": "cyan"}  # as in table.py
TREATMENT_STYLE = {"deny": "red", "allowlist": "yellow", "ignore": "dim"}


def _items(values: list[str], limit: int = SHOWN) -> str:
    shown = [escape(v) for v in values[:limit]]
    if len(values) > limit:
        shown.append(f"[dim]... {len(values) - limit:,} more[/dim]")
    return "\n".join(shown)


def render_settings(rules: Allowlist) -> Table:
    """The [settings] and [sandboxes] of a rules file, with the defaults spelled out."""
    s = rules.settings
    t = Table(show_header=False, title=f"Rules {escape(rules.source)}", title_justify="left")
    t.add_column("setting", style="bold", no_wrap=True)
    t.add_column("value", overflow="fold")
    nets = [range_text(a, b) for a, b in s.sandbox_networks]
    t.add_row("sandbox networks", _items(nets) if nets else
              "[dim]not set: an originator with a private or CGNAT address is a sandbox; every destination is "
              "judged[/dim]")
    t.add_row("host addresses", _items([range_text(a, b) for a, b in s.host_addresses]) or "[dim]none[/dim]")
    t.add_row("resolvers", _items([range_text(a, b) for a, b in s.resolvers]) or
              "[dim]not set: DNS is judged by the allow entries; no rogue_resolver findings[/dim]")
    t.add_row("minimum DNS TTL", f"{s.min_dns_ttl_s:g} s" + (" (each answer's own TTL)" if not s.min_dns_ttl_s else ""))
    if s.sandbox_names:
        t.add_row("sandbox names", _items([f"{_key(k)} = {n}" for k, n in s.sandbox_names]))
    deny = sum(1 for e in rules.entries if e.action == "deny")
    t.add_row("entries", f"{deny} deny (evaluated first), {len(rules.entries) - deny} allow")
    return t


def _key(key: object) -> str:
    if isinstance(key, tuple):
        return range_text(*key)
    return ":".join(f"{b:02x}" for b in int(key).to_bytes(6, "big"))


def render_entries(rules: Allowlist, limit: int = MAX_ENTRIES) -> Table:
    """One row per entry, in evaluation order: what it matches and on which ports, for which sandboxes (the first
    `limit` entries; a last row counts the rest)."""
    t = Table(title="Entries (in evaluation order)", title_justify="left", show_lines=True)
    for col in ("entry", "line", "destinations", "ports", "sandboxes", "severity"):
        t.add_column(col, overflow="fold", no_wrap=col in ("line", "severity"))
    for e in rules.entries[:limit]:
        dests = [f"{c}" for c in e.cidr_text]
        if e.except_text:
            dests.append("except " + ", ".join(e.except_text))
        dests += list(e.domains)
        dests += [f"class {c}" for c in e.classes]
        colour = "red" if e.action == "deny" else "green"
        severity = e.severity.label() if e.severity else ""
        t.add_row(f"[{colour}]{e.action}[{e.index}][/{colour}] {escape(e.name)}", str(e.line or ""),
                  _items(dests), escape(e.services.text()), escape(e.sources.text()) if e.sources else "any",
                  f"[{SEVERITY_STYLE.get(severity, '')}]{severity}[/]" if severity else "")
    if len(rules.entries) > limit:
        t.add_row(f"[dim]... {len(rules.entries) - limit:,} more entries[/dim]", "", "", "", "", "")
    if not len(rules.entries):
        t.add_row("[dim]no entries: every destination outside the sandbox is reported[/dim]", "", "", "", "", "")
    return t


def render_classes(rules: Allowlist) -> Table:
    """How each address class is treated (defaults, or the file's [classes])."""
    overridden = {name for name, _, _ in rules.settings.class_overrides}
    t = Table(title="Address classes", title_justify="left")
    for col in ("class", "treatment", "severity", "addresses"):
        t.add_column(col, overflow="fold", no_wrap=col != "addresses")
    for i, name in enumerate(CLASS_NAMES):
        treatment = str(rules.treatment(i))
        severity = rules.severities[i]
        if i < len(CLASSES):
            c = CLASSES[i]
            where = ", ".join(c.cidrs) if c.cidrs else (
                ", ".join(range_text(a, b) for a, b in rules.settings.host_addresses) or "none configured"
                if name == "host" else "everything else")
        else:
            where = f"{len(DOH_ADDRESSES)} public resolver addresses on 443/853, {len(DOH_NAMES)} names on 443, " \
                    f"any port 853"
        mark = " [bold](set here)[/bold]" if name in overridden else ""
        sev = ["", "low", "medium", "high", "critical"][int(severity)]
        t.add_row(name, f"[{TREATMENT_STYLE[treatment]}]{treatment}[/]{mark}", sev, escape(where))
    return t


def render_acquisition(rules: Allowlist, endpoints: AcquisitionList | None = None) -> Table:
    """The resource-acquisition categories: what each covers, its listed endpoints, and the [[acquisition]] entries
    that allow it (for which sandboxes)."""
    if endpoints is None:
        endpoints = load_acquisition(DEFAULT_ACQUISITION) if DEFAULT_ACQUISITION.exists() else AcquisitionList()
    t = Table(title="Resource acquisition (resource_acquisition findings)", title_justify="left")
    for col in ("category", "covers", "listed", "allowed by"):
        t.add_column(col, overflow="fold", no_wrap=col == "category")
    grants = rules.settings.acquisition
    for category, text in CATEGORIES.items():
        allowed = [f"{escape(g.label())}: " + (escape(g.sources.text()) if g.sources else "every sandbox")
                   for g in grants if category in g.categories]
        t.add_row(category, text, str(endpoints.count(category)), "\n".join(allowed) or "[dim]reported[/dim]")
    for g in grants:
        if g.endpoints:
            t.add_row("[dim]endpoints[/dim]", _items(list(g.endpoints)), "",
                      f"{escape(g.label())}: " + (escape(g.sources.text()) if g.sources else "every sandbox"))
    return t


def render_rules(rules: Allowlist) -> Group:
    """Everything `rules check` prints for a valid file."""
    return Group(render_settings(rules), render_entries(rules), render_classes(rules), render_acquisition(rules))
