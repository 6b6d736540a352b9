"""Every way a rules file or a command-line option can be wrong: one clear line and the right exit code.

Cases already covered elsewhere (not repeated here): TOML syntax errors and every key/value rule of the format
(tests/test_rules.py BAD: bad CIDRs, domains, ports, protocols, severities, classes, sources, settings, unknown keys,
version), list files with a bad line or missing (test_rules.py), a missing or non-UTF-8 rules file (test_rules.py),
exit 4 through both commands (test_cli.py), --capacity 0, --payload-slots > --capacity, --flows without jsonl and
'-' twice (test_cli.py usage errors).

Here, the remaining cases:
  rules file: empty path, a directory, NUL bytes, deep nesting (tomllib recursion), duplicate keys, a byte-order
  mark (accepted), values of the wrong TOML type (float / bool / date / huge integer / string where a number or
  list belongs, NaN and infinity), top-level keys of the wrong shape, a list file that is a directory, binary, or
  holds a NUL;
  options: out-of-range and non-numeric --capacity / --payload-slots, zero / negative / infinite / NaN timeouts,
  an unknown --format, an unknown option, `rules check` without a file, and a --capacity too large for memory.
Each one: the exit code of errors.ExitStatus, one `egressguard: error:` line (or click's usage block) naming the file
or option and the value, a fix where the format has one, and never a traceback.
"""
from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from egressguard.cli import main
from egressguard.errors import ExitStatus

REPO = Path(__file__).resolve().parents[1]
DEMO = REPO / "captures" / "benign-web.pcap"


def invoke(*args):
    result = CliRunner().invoke(main, [str(a) for a in args])
    # an exception other than SystemExit is a traceback for the user
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    assert "Traceback" not in result.output
    return result


def rules_error(tmp_path: Path, text: str | bytes, name: str = "r.toml") -> tuple[str, Path]:
    """The one stderr line of `rules check` on a file with this content (exit 4 asserted)."""
    path = tmp_path / name
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    result = invoke("rules", "check", path)
    assert result.exit_code == ExitStatus.RULES, result.output
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"egressguard: error: {path.parent}/"), result.stderr  # or a list file
    assert result.stdout == ""
    return lines[0], path


# ------------------------------------------------------------------------------------------------ rules files
RULES_CASES = [
    ("nul bytes", b"\x00\x01version = 1\n", "not valid TOML"),
    ("nested arrays", "a = " + "[" * 3000 + "]" * 3000 + "\n", "nested too deeply"),
    ("nested inline tables", "a = " + "{b = " * 2000 + "1" + "}" * 2000 + "\n", "nested too deeply"),
    ("duplicate key", "version = 1\nversion = 1\n", ":2: version = 1: not valid TOML: cannot overwrite a value"),
    ("port as float", '[[allow]]\ncidrs = ["192.0.2.0/24"]\nports = [443.0]\n', "ports[0] = 443.0: not a port"),
    ("port as bool", '[[allow]]\ncidrs = ["192.0.2.0/24"]\nports = [true]\n', "ports[0] = true: not a port"),
    ("port beyond 64 bits", '[[allow]]\ncidrs = ["192.0.2.0/24"]\nports = [99999999999999999999999]\n',
     "ports[0] = 99999999999999999999999: not a port (0-65535)"),
    ("ttl NaN", "[settings]\nmin_dns_ttl = nan\n", "settings.min_dns_ttl = NaN: must be a number of seconds"),
    ("ttl infinity", "[settings]\nmin_dns_ttl = inf\n", "settings.min_dns_ttl = Infinity: must be a number"),
    ("ttl as string", '[settings]\nmin_dns_ttl = "60"\n', 'settings.min_dns_ttl = "60": must be a number'),
    ("version as string", 'version = "1"\n', 'version = "1": unsupported rules format version'),
    ("cidrs as dates", "[[allow]]\ncidrs = [1979-05-27]\n", "allow[0].cidrs = [1979-05-27]: must be a list of strings"),
    ("name as number", '[[allow]]\nname = 5\ncidrs = ["192.0.2.0/24"]\n', "allow[0].name = 5: must be a non-empty"),
    ("sandboxes as list", "sandboxes = [1]\n", "sandboxes = [1]: must be a table"),
    ("settings as string", 'settings = "x"\n', 'settings = "x": must be a table'),
    ("deny as table", "[deny]\nname = 'x'\n", "deny must be a list of tables"),
]


@pytest.mark.parametrize("text,expected", [c[1:] for c in RULES_CASES], ids=[c[0] for c in RULES_CASES])
def test_bad_rules_files(tmp_path, text, expected):
    line, _ = rules_error(tmp_path, text)
    assert expected in line
    if "not valid TOML" not in expected and "nested" not in expected:
        assert "Fix: " in line


def test_a_byte_order_mark_is_accepted(tmp_path):
    path = tmp_path / "bom.toml"
    path.write_bytes(b'\xef\xbb\xbfversion = 1\n[[allow]]\nname = "docs"\ncidrs = ["192.0.2.0/24"]\n')
    result = invoke("rules", "check", path)
    assert result.exit_code == ExitStatus.OK, result.output
    assert "docs" in result.stdout


@pytest.mark.parametrize("setup,expected", [
    ("dir", "is a directory"),
    ("binary", "cannot be read as UTF-8 text"),
    ("nul", '"pypi.org\\u0000": a label must be'),
], ids=["directory", "binary", "nul"])
def test_bad_list_files(tmp_path, setup, expected):
    if setup == "dir":
        (tmp_path / "lists.txt").mkdir()
    elif setup == "binary":
        (tmp_path / "lists.txt").write_bytes(b"\xff\xfe\x00garbage\n")
    else:
        (tmp_path / "lists.txt").write_bytes(b"pypi.org\x00\nexample.com\n")
    line, _ = rules_error(tmp_path, '[[allow]]\ndomains_file = "lists.txt"\n')
    assert "domains_file" in line and expected in line and "Fix: " in line


def test_empty_rules_path(tmp_path):
    result = invoke("analyze", "--rules", "", DEMO)
    assert result.exit_code == ExitStatus.RULES
    assert result.stderr == ("egressguard: error: '': an empty path names no rules file. Fix: give the path of a rules "
                             "file (see rules/README.md)\n")


@pytest.mark.parametrize("command", [["rules", "check", "{dir}"], ["analyze", "--rules", "{dir}", str(DEMO)]])
def test_rules_path_is_a_directory(tmp_path, command):
    result = invoke(*[c.format(dir=tmp_path) for c in command])
    assert result.exit_code == ExitStatus.USAGE
    assert f"'{tmp_path}' is a directory" in result.stderr


# ------------------------------------------------------------------------------------------------ options
OPTION_CASES = [
    (["--capacity", "-1"], "Invalid value for '--capacity': -1 is not in the range 1<=x<=268435456"),
    (["--capacity", "abc"], "Invalid value for '--capacity': 'abc' is not a valid integer"),
    (["--capacity", str((1 << 28) + 1)], "Invalid value for '--capacity'"),
    (["--payload-slots", "-1"], "Invalid value for '--payload-slots': -1 is not in the range"),
    (["--tcp-idle", "0"], "Invalid value for '--tcp-idle': 0.0 is not in the range 0<x<=1000000000.0"),
    (["--tcp-idle", "inf"], "Invalid value for '--tcp-idle': inf is not in the range"),
    (["--idle", "-1"], "Invalid value for '--idle': -1.0 is not in the range 0<x<=1000000000.0"),
    (["--idle", "ten"], "Invalid value for '--idle': 'ten' is not a valid float"),
    (["--active-timeout", "-5"], "Invalid value for '--active-timeout': -5.0 is not in the range"),
    (["--active-timeout", "1e300"], "Invalid value for '--active-timeout': 1e+300 is not in the range"),
    # NaN passes click's own range checks; the option type refuses it by name
    (["--tcp-idle", "nan"], "Invalid value for '--tcp-idle': NaN is not a number of seconds"),
    (["--active-timeout", "nan"], "Invalid value for '--active-timeout': NaN is not a number of seconds"),
    (["--format", "xml"], "Invalid value for '--format': 'xml' is not one of 'table', 'jsonl'"),
    (["--bogus"], "No such option '--bogus'"),
]


@pytest.mark.parametrize("args,expected", OPTION_CASES, ids=[" ".join(a) for a, _ in OPTION_CASES])
def test_bad_analyze_options(args, expected):
    result = invoke("analyze", *args, DEMO)
    assert result.exit_code == ExitStatus.USAGE
    assert expected in result.stderr, result.stderr
    assert result.stdout == ""


def test_rules_check_without_a_file():
    result = invoke("rules", "check")
    assert result.exit_code == ExitStatus.USAGE and "Missing argument 'FILE'" in result.stderr


def test_capacity_too_large_for_memory_is_one_clear_error():
    """2^28 flows (the option's documented maximum) need ~280 GB at ~1 KB per flow: not a MemoryError traceback but
    one line naming --capacity, its value and the fix."""
    result = invoke("analyze", "--capacity", str(1 << 28), DEMO)
    assert result.exit_code == ExitStatus.USAGE
    assert "--capacity" in result.stderr and str(1 << 28) in result.stderr
