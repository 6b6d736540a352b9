"""The syntax of a rules file: where a key is (lines for messages), how a value is shown, and the parsers of single
values (CIDRs, domain patterns, ports, protocols, list files), each failing with a RulesError that names the file,
line, key, value and the fix. rules.py assembles the sections from these.
"""
from __future__ import annotations

import difflib
import encodings.idna  # noqa: F401  (registers the "idna" codec used for the punycode hint)
import ipaddress
import json
import re
import socket
import tomllib
from dataclasses import dataclass
from pathlib import Path

from egressguard.errors import RulesError
from egressguard.netaddr import V4_MAPPED, parse_address, parse_network

PROTOCOLS = {"tcp": 6, "udp": 17, "icmp": 1, "icmpv6": 58, "sctp": 132}
_LABEL = re.compile(r"^(?:\*|[a-z0-9_*](?:[a-z0-9_*-]{0,61}[a-z0-9_*])?)$")
_ALL_DIGITS = re.compile(r"[0-9.]+")


def key_lines(text: str) -> dict[tuple, int]:
    """Line of each table header and key: ("allow", 2) -> line of the third [[allow]], ("allow", 2, "ports") ->
    its `ports =` line. Good enough for messages; tomllib itself reports no positions for valid TOML."""
    lines: dict[tuple, int] = {}
    table: tuple = ()
    counts: dict[str, int] = {}
    for no, raw in enumerate(text.splitlines(), 1):
        s = raw.strip()
        if s.startswith("[["):
            name = s[2:].split("]]")[0].strip()
            table = (name, counts.get(name, 0))
            counts[name] = table[1] + 1
            lines.setdefault(table, no)
        elif s.startswith("["):
            table = (s[1:].split("]")[0].strip().strip('"'),)
            lines.setdefault(table, no)
        else:
            m = _KEY.match(s)
            if m:
                lines.setdefault(table + (m.group(1) if m.group(1) is not None else m.group(2),), no)
    return lines


_KEY = re.compile(r'^(?:"([^"]*)"|([A-Za-z0-9_\-]+))\s*=')
_ENTRY_HEADER = re.compile(r"^[ \t]*\[\[[ \t]*(allow|deny)[ \t]*\]\]", re.MULTILINE)


def entry_lines(text: str) -> dict[tuple, int]:
    """Only the line of each [[allow]]/[[deny]] header (fast: 100,000 entries in a few ms)."""
    out: dict[tuple, int] = {}
    counts = {"allow": 0, "deny": 0}
    line, at = 1, 0
    for m in _ENTRY_HEADER.finditer(text):
        line += text.count("\n", at, m.start())
        at = m.start()
        name = m.group(1)
        out[(name, counts[name])] = line
        counts[name] += 1
    return out


def _path_text(path: tuple) -> str:
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        elif re.fullmatch(r"[A-Za-z0-9_\-]+", part):
            out += ("." if out else "") + part
        else:
            out += f'["{part}"]' if out else f'"{part}"'
    return out


def show(value: object, limit: int = 80) -> str:
    """A value as TOML would write it (bounded)."""
    if isinstance(value, bool):
        text = "true" if value else "false"
    elif isinstance(value, (str, int, float)):
        text = json.dumps(value, ensure_ascii=False)
    elif isinstance(value, list):
        text = "[" + ", ".join(show(v, limit) for v in value) + "]"
    elif isinstance(value, dict):
        text = "{ " + ", ".join(f"{k} = {show(v, limit)}" for k, v in value.items()) + " }"
    else:
        text = str(value)
    return text if len(text) <= limit else text[:limit - 3] + "..."


@dataclass
class Context:
    name: str
    text: str
    base_dir: Path
    entry_lines: dict[tuple, int]
    deps: list[str]
    _lines: dict[tuple, int] | None = None

    def entry_line(self, action: str, i: int) -> int:
        return self.entry_lines.get((action, i), 0)

    def line(self, path: tuple) -> int | None:
        """The line of a key path (the full scan of the text runs only when a message needs it)."""
        if self._lines is None:
            self._lines = key_lines(self.text)
        for n in range(len(path), 0, -1):
            if path[:n] in self._lines:
                return self._lines[path[:n]]
        return None

    def fail(self, path: tuple, value: object, problem: str, fix: str, *, file: str | None = None,
             line: int | None = None):
        raise RulesError(file or self.name, problem, line=line if file else self.line(_strip_indexes(path)),
                         key=_path_text(path), value=show(value), fix=fix)

    def unknown_keys(self, path: tuple, table: dict, known: tuple[str, ...]) -> None:
        for key in table:
            if key not in known:
                close = difflib.get_close_matches(key, known, n=1)
                hint = f'did you mean "{close[0]}"? ' if close else ""
                raise RulesError(self.name, "unknown key", line=self.line(_strip_indexes(path + (key,))),
                                 key=_path_text(path + (key,)),
                                 fix=f"{hint}known keys here: {', '.join(known)}")

    def list_of(self, path: tuple, value: object, kind: type, example: str) -> list:
        if type(value) is not list or not all(type(v) is kind for v in value):
            self.fail(path, value, f"must be a list of {'strings' if kind is str else 'numbers'}",
                      f"write {path[-1]} = {example}")
        return value


def _strip_indexes(path: tuple) -> tuple:
    """(allow, 2, ports, 0) -> (allow, 2, ports): lines are known per key, not per list element."""
    if len(path) > 2 and isinstance(path[-1], int):
        return path[:-1]
    return path


def read_data_file(path: Path, what: str, restore: str) -> tuple[str, dict]:
    """(text, parsed TOML) of a shipped data file (the pool list, the acquisition endpoints); a file that cannot be
    read or is not TOML is one RulesError naming `what` it is and where to `restore` it from."""
    try:
        text = path.read_text(encoding="utf-8")
        return text, tomllib.loads(text)
    except OSError as exc:
        raise RulesError(str(path), f"cannot read the {what} ({exc.strerror or exc})",
                         fix=f"restore {restore} from the repository") from exc
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise RulesError(str(path), f"not valid TOML ({exc})", fix="see the format in the file's header") from exc


def syntax_error(name: str, text: str, exc: tomllib.TOMLDecodeError) -> RulesError:
    m = re.search(r"\(at line (\d+), column (\d+)\)", str(exc))
    problem = re.sub(r"\s*\(at line.*\)", "", str(exc))
    if not m:
        return RulesError(name, f"not valid TOML: {problem}", fix="check quotes, commas and brackets")
    line, col = int(m.group(1)), int(m.group(2))
    source = text.splitlines()[line - 1].strip() if line <= len(text.splitlines()) else ""
    return RulesError(name, f"not valid TOML: {problem.lower()} at column {col}", line=line, value=source or None,
                      fix="strings need double quotes, lists are [a, b], entries are [[allow]] / [[deny]] tables "
                          "(see rules/README.md)")


# ------------------------------------------------------------------------------------------ values
def network(ctx: Context, path: tuple, text: object, *, file: str | None = None,
             line: int | None = None) -> tuple[int, int]:
    if not isinstance(text, str):
        ctx.fail(path, text, "must be a string", 'write a CIDR in quotes, e.g. "192.0.2.0/24"', file=file, line=line)
    fast = fast_network(text)
    if fast is not None:
        return fast
    try:
        return parse_network(text)
    except ValueError:
        pass
    addr, _, plen = text.partition("/")
    try:
        version = 4 if ":" not in addr else 6
        parse_address(addr)
    except ValueError:
        if re.fullmatch(r"[A-Za-z0-9*._-]+", text) and re.search(r"[A-Za-z*]", text):
            ctx.fail(path, text, "not an IP network (it looks like a domain name)",
                     f'put names under domains = ["{text}"]', file=file, line=line)
        ctx.fail(path, text, "not an IP network", 'write an address with a prefix length, e.g. "192.0.2.0/24" or '
                 '"2001:db8::/32"', file=file, line=line)
    top = 32 if version == 4 else 128
    if not (plen.isascii() and plen.isdigit()) or int(plen) > top:
        ctx.fail(path, text, f"the prefix length must be 0-{top} for IPv{version}",
                 f'write e.g. "{addr}/{top}" for the one address', file=file, line=line)
    net = ipaddress.ip_network(text, strict=False)
    ctx.fail(path, text, "host bits are set after the prefix length",
             f'write "{net}" for the network, or "{addr}/{top}" for the one address', file=file, line=line)


def fast_network(text: str) -> tuple[int, int] | None:
    """"a.b.c.d/n" or "x:y::/n" without ipaddress (5x faster, for lists of 100k CIDRs); None sends the text to the
    full parser, which explains what is wrong with it."""
    addr, sep, plen = text.partition("/")
    family, top, base = (socket.AF_INET6, 128, 0) if ":" in addr else (socket.AF_INET, 32, V4_MAPPED)
    try:
        value = int.from_bytes(socket.inet_pton(family, addr), "big")
    except (OSError, ValueError):
        return None
    if sep and not (plen.isascii() and plen.isdigit() and len(plen) <= 3):
        return None
    bits = int(plen) if sep else top
    if bits > top or "%" in addr:
        return None
    host = (1 << (top - bits)) - 1
    if value & host:
        return None
    return base | value, base | value | host


_PLAIN_NAME = re.compile(r"(?:\*\*?\.)?(?:[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?\.)*[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?")


def domain_pattern(text: str) -> tuple[str | None, str | None, str | None]:
    """(normalised pattern, problem, fix): lower case, no trailing dot; `*` within a label matches any characters
    except a dot, `**` as the whole first label matches one or more labels, `**` alone matches every name."""
    name = text.strip().lower().rstrip(".")
    if len(name) <= 253 and _PLAIN_NAME.fullmatch(name) and not _ALL_DIGITS.fullmatch(name):
        return name, None, None  # the common case: a plain name, "*.name" or "**.name"
    if not name.isascii():
        try:
            puny = name.encode("idna").decode("ascii")
            return None, "not ASCII", f'write the punycode form "{puny}"'
        except UnicodeError:
            return None, "not ASCII", "write the name in its punycode (xn--) form"
    if "/" in name or ":" in name:
        if "://" in name or "/" in name:
            host = re.sub(r"^[a-z]+://", "", name).split("/")[0].split(":")[0]
            return None, "a URL, not a domain name", f'write just the host name, "{host}"'
        host, _, port = name.rpartition(":")
        return None, "a port is not part of a domain name", f'write "{host}" and put the port under ports = [{port}]'
    if re.fullmatch(r"[0-9.]+", name):
        return None, "an address, not a domain name", f'put addresses under cidrs = ["{name}/32"]'
    if name == "**":
        return name, None, None
    if name == "*":
        return None, '"*" alone matches one label only (a top-level domain)', \
            'write "**" for every name, or "*.example.com" for one label under example.com'
    if not name or len(name) > 253:
        return None, "a domain name is 1-253 characters", "write a name such as \"pypi.org\""
    labels = name.split(".")
    for i, label in enumerate(labels):
        if "**" in label and (i > 0 or label != "**"):
            return None, '"**" must be the whole first label', 'write "**.example.com" (any depth under example.com)'
        if label != "**" and not _LABEL.match(label):
            if not label:
                return None, "an empty label (two dots in a row, or a leading dot)", \
                    f'write "{".".join(x for x in labels if x)}"'
            return None, "a label must be 1-63 letters, digits, '-', '_' or '*', not starting or ending with '-'", \
                "check the spelling of the name"
    return name, None, None


def ports(ctx: Context, path: tuple, raw: object) -> list[tuple[int, int]]:
    if not isinstance(raw, list):
        ctx.fail(path, raw, "must be a list of ports", 'write ports = [443] or ports = [80, 443, "8000-8100"]')
    out = []
    for i, p in enumerate(raw):
        here = path + (i,)
        if isinstance(p, int) and not isinstance(p, bool):
            if not 0 <= p <= 65535:
                ctx.fail(here, p, "not a port (0-65535)", 'write a number such as 443, or a range such as "8000-8100"')
            out.append((p, p))
        elif isinstance(p, str) and re.fullmatch(r"\d{1,5}-\d{1,5}", p.strip()):
            a, b = (int(x) for x in p.strip().split("-"))
            if not (0 <= a <= b <= 65535):
                ctx.fail(here, p, "a port range is \"low-high\" with 0 <= low <= high <= 65535",
                         f'write "{min(a, b)}-{min(max(a, b), 65535)}"')
            out.append((a, b))
        else:
            ctx.fail(here, p, "not a port or port range", 'write a number such as 443, or a range such as "8000-8100"')
    return out


def protocols(ctx: Context, path: tuple, raw: object) -> list[int]:
    if not isinstance(raw, list):
        ctx.fail(path, raw, "must be a list of protocols", 'write protocols = ["tcp"] or protocols = ["tcp", "udp"]')
    out = []
    for i, p in enumerate(raw):
        if isinstance(p, str) and p.lower() in PROTOCOLS:
            out.append(PROTOCOLS[p.lower()])
        elif isinstance(p, int) and not isinstance(p, bool) and 0 <= p <= 255:
            out.append(p)
        else:
            ctx.fail(path + (i,), p, "not a protocol",
                     f"write one of {', '.join(json.dumps(k) for k in PROTOCOLS)}, or an IP protocol number 0-255")
    return out


def read_list(ctx: Context, path: tuple, raw: object) -> tuple[str, list[tuple[int, str]]]:
    """(shown file name, [(line, item)]) of a one-item-per-line list file; '#' starts a comment."""
    if not isinstance(raw, str):
        ctx.fail(path, raw, "must be a file name", 'write e.g. "lists/registries.txt" (relative to this file)')
    target = ctx.base_dir / raw
    ctx.deps.append(str(target))
    try:
        text = target.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        problem = ("no such file" if isinstance(exc, FileNotFoundError) else
                   "is a directory" if isinstance(exc, IsADirectoryError) else "cannot be read as UTF-8 text")
        ctx.fail(path, raw, f"{problem} ({target})", "give a path relative to the rules file, one item per line")
    items = []
    for no, line in enumerate(text.splitlines(), 1):
        item = line.split("#", 1)[0].strip()
        if item:
            items.append((no, item))
    return str(target), items
