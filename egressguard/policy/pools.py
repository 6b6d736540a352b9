"""The mining pool list (rules/pools.toml): pool domain suffixes and pool ports, each citing its sources.

Loaded and validated once per run by whoever builds the detector context; a bad file is a RulesError naming the
file, the line, the entry and the fix (exit status 4).
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from egressguard.errors import RulesError
from egressguard.policy.syntax import read_data_file

# rules/pools.toml, linked into the package (egressguard/policy/pools.toml) so that an installed egressguard has it
DEFAULT_POOLS = Path(__file__).resolve().with_name("pools.toml")


@dataclass(frozen=True)
class PoolDomain:
    suffix: str
    sources: tuple[str, ...]
    note: str = ""


@dataclass(frozen=True)
class PoolPort:
    port: int
    sources: tuple[str, ...]
    shared: bool = False
    note: str = ""


@dataclass
class PoolList:
    """Pool domain suffixes and pool ports with their sources (rules/pools.toml)."""

    domains: dict[str, PoolDomain] = field(default_factory=dict)
    ports: dict[int, PoolPort] = field(default_factory=dict)
    sources: dict[str, dict] = field(default_factory=dict)  # key -> {"name": ..., "reference": ...}
    path: str = ""

    def match(self, name: str | None) -> PoolDomain | None:
        """The listed suffix that `name` is or lies under (label boundary), or None."""
        if not name:
            return None
        labels = name.lower().rstrip(".").split(".")
        for i in range(len(labels) - 1):
            hit = self.domains.get(".".join(labels[i:]))
            if hit is not None:
                return hit
        return None

    def port(self, port: int) -> PoolPort | None:
        hit = self.ports.get(int(port))
        return hit if hit is not None and not hit.shared else None

    def cite(self, sources: tuple[str, ...]) -> str:
        """The short names of the sources, for evidence sentences."""
        return ", ".join(self.sources.get(s, {}).get("name", s) for s in sources)


_SUFFIX_RE = re.compile(r"^(?=.{3,253}$)([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?\.)+[a-z0-9-]{2,63}$")


def load_pools(path: Path | str = DEFAULT_POOLS) -> PoolList:
    """Read and validate a pools file; raises RulesError naming the file, the line, the entry and the fix."""
    path = Path(path)
    text, data = read_data_file(path, "mining pool list", "rules/pools.toml")

    def fail(problem: str, key: str, value, fix: str) -> RulesError:
        shown = repr(value)
        needle = str(value) if not isinstance(value, (list, dict)) else ""
        line = next((i for i, ln in enumerate(text.splitlines(), 1) if needle and needle in ln), None)
        return RulesError(str(path), problem, line=line, key=key, value=shown, fix=fix)

    sources = data.get("sources", {})
    if not isinstance(sources, dict) or not sources:
        raise fail("[sources] is missing", "sources", "", "add [sources.KEY] tables with name and reference")
    for key, value in sources.items():
        if not isinstance(value, dict) or not all(isinstance(value.get(k), str) and value.get(k)
                                                  for k in ("name", "reference")):
            raise fail(f"source {key} needs a name and a reference", "sources." + key, key,
                       f'[sources.{key}] name = "...", reference = "..."')

    def cited(entry: dict, what: str) -> tuple[str, ...]:
        src = entry.get("source")
        src = [src] if isinstance(src, str) else src
        if not src or not isinstance(src, list) or any(s not in sources for s in src):
            raise fail(f"{what} must cite sources listed in [sources]", "source", entry.get("source"),
                       f"use keys of [sources]: {', '.join(sorted(sources))}")
        return tuple(src)

    domains: dict[str, PoolDomain] = {}
    for entry in data.get("domain", []):
        suffix = entry.get("suffix") if isinstance(entry, dict) else None
        if not isinstance(suffix, str) or not _SUFFIX_RE.match(suffix):
            raise fail("not a DNS suffix", "suffix", suffix, "a lower-case DNS name with at least one dot")
        domains[suffix] = PoolDomain(suffix, cited(entry, f"domain {suffix}"), str(entry.get("note", "")))
    ports: dict[int, PoolPort] = {}
    for entry in data.get("port", []):
        port = entry.get("port") if isinstance(entry, dict) else None
        if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535:
            raise fail("not a port number", "port", port, "an integer 1..65535")
        shared = entry.get("shared", False)
        if not isinstance(shared, bool):
            raise fail(f"port {port}: shared must be a boolean", "shared", shared, "true or false")
        ports[port] = PoolPort(port, cited(entry, f"port {port}"), shared, str(entry.get("note", "")))
    return PoolList(domains, ports, dict(sources), str(path))


__all__ = ["DEFAULT_POOLS", "PoolDomain", "PoolList", "PoolPort", "load_pools"]
