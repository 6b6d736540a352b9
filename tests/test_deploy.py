"""deploy/: the systemd unit, the Containerfile and the DaemonSet are checked by the tools that read them (where they
are installed) and against the command line they run, so an option renamed in cli.py breaks this test, not a node."""
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO

from egressguard.cli import watch

DEPLOY = REPO / "deploy"
WATCH_OPTIONS = {opt for param in watch.params for opt in (*param.opts, *param.secondary_opts)}


def _options(argv: list[str]) -> list[str]:
    """The options (words starting with -) of a `watch` argument list."""
    assert argv[0] == "watch", argv
    return [word for word in argv[1:] if word.startswith("-")]


def _unit_lines(text: str) -> list[str]:
    """The unit file's logical lines (continuations joined, comments dropped)."""
    return [line for line in text.replace("\\\n", " ").splitlines() if line and not line.startswith("#")]


def test_the_unit_runs_options_watch_has_and_keeps_only_cap_net_raw():
    lines = _unit_lines((DEPLOY / "egressguard.service").read_text())
    [exec_start] = [line.split("=", 1)[1] for line in lines if line.startswith("ExecStart=")]
    argv = shlex.split(exec_start)
    assert Path(argv[0]).name == "egressguard"
    assert set(_options(argv[1:])) <= WATCH_OPTIONS and "--metrics" in argv and "--alerts" in argv
    settings = dict(line.split("=", 1) for line in lines if "=" in line and not line.startswith(("Exec", "Env")))
    assert settings["AmbientCapabilities"] == settings["CapabilityBoundingSet"] == "CAP_NET_RAW"
    assert settings["NoNewPrivileges"] == "yes" and settings["ProtectSystem"] == "strict"
    alerts = Path(argv[argv.index("--alerts") + 1])
    assert str(alerts.parent) in settings["ReadWritePaths"].split()


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="missing tool: systemd-analyze (systemd)")
def test_systemd_analyze_verify_accepts_the_unit(tmp_path):
    """Every key known and every value parsed (systemd-analyze exits 0 on an unknown key, so its output must be
    silent about the unit too). ExecStart points to where this machine installed egressguard: verify checks that
    the program exists."""
    installed = shutil.which("egressguard") or str(Path(sys.executable).parent / "egressguard")
    if not Path(installed).exists():
        pytest.skip("egressguard is not installed as a program (pip install .)")
    unit = tmp_path / "egressguard.service"
    unit.write_text((DEPLOY / "egressguard.service").read_text().replace("/usr/local/bin/egressguard", installed))
    proc = subprocess.run(["systemd-analyze", "verify", "--man=no", str(unit)], capture_output=True, text=True,
                          timeout=60)
    about_unit = [line for line in (proc.stdout + proc.stderr).splitlines() if "egressguard" in line]
    assert proc.returncode == 0 and about_unit == [], proc.stdout + proc.stderr


def _instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of a Containerfile, continuation lines joined."""
    joined = re.sub(r"\\\n\s*", " ", text)
    return [tuple(line.split(None, 1)) for line in joined.splitlines()
            if line.strip() and not line.lstrip().startswith("#")]


def test_the_containerfile_copies_only_files_of_the_repository_and_runs_watch():
    steps = _instructions((DEPLOY / "Containerfile").read_text())
    copies = [args.split() for op, args in steps if op in ("COPY", "ADD")]
    assert copies
    for args in copies:
        sources = [a for a in args[:-1] if not a.startswith("--")]
        for source in sources:
            assert (REPO / source).exists(), f"Containerfile copies {source}, which is not in the repository"
    # the package data links into rules/: the build context must carry it too
    for link in (REPO / "egressguard").rglob("*"):
        if link.is_symlink():
            target = (link.parent / link.readlink()).resolve().relative_to(REPO)
            assert any(str(target).startswith(s.rstrip("/")) for args in copies for s in args[:-1]), target
    entry = next(args for op, args in steps if op == "ENTRYPOINT")
    cmd = next(args for op, args in steps if op == "CMD")
    import json

    assert json.loads(entry)[1:] == ["-m", "egressguard"]
    assert set(_options(json.loads(cmd))) <= WATCH_OPTIONS
    assert any(op == "USER" and args.strip() not in ("root", "0") for op, args in steps)


def test_the_daemonset_parses_and_runs_watch_on_the_host_network():
    yaml = pytest.importorskip("yaml", reason="PyYAML is not installed")
    [daemonset] = [doc for doc in yaml.safe_load_all((DEPLOY / "daemonset.yaml").read_text()) if doc]
    assert daemonset["kind"] == "DaemonSet" and daemonset["apiVersion"] == "apps/v1"
    pod = daemonset["spec"]["template"]["spec"]
    assert pod["hostNetwork"] is True
    assert daemonset["spec"]["selector"]["matchLabels"].items() <= daemonset["spec"]["template"]["metadata"][
        "labels"].items()
    [container] = pod["containers"]
    args = [str(a) for a in container["args"]]
    assert set(_options(args)) <= WATCH_OPTIONS
    assert container["securityContext"]["capabilities"]["add"] == ["NET_RAW"]
    port = int(args[args.index("--metrics") + 1].rsplit(":", 1)[1])
    assert port in [p["containerPort"] for p in container["ports"]]
    volumes = {v["name"]: v for v in pod["volumes"]}
    mounts = {m["mountPath"]: volumes[m["name"]] for m in container["volumeMounts"]}
    alerts = str(Path(args[args.index("--alerts") + 1]).parent)
    assert "hostPath" in mounts[alerts]
    assert str(Path(args[args.index("--rules") + 1]).parent) in mounts
    defined = {e["name"] for e in container["env"]}
    assert set(re.findall(r"\$\((\w+)\)", " ".join(args))) <= defined


def test_the_readme_explains_each_deploy_file_and_shell_completion():
    readme = (REPO / "README.md").read_text()
    for name in ("deploy/egressguard.service", "deploy/Containerfile", "deploy/daemonset.yaml",
                 "_EGRESSGUARD_COMPLETE=bash_source egressguard"):
        assert name in readme, name


PY_PROGRAM = "from egressguard.cli import main; main(prog_name='egressguard')"  # what the installed script runs


def test_bash_completion_completes_watch_options():
    """click's completion, as the README documents it: the script is produced and completes `watch --met`."""
    env = {**os.environ, "_EGRESSGUARD_COMPLETE": "bash_source"}
    script = subprocess.run([sys.executable, "-c", PY_PROGRAM], env=env, capture_output=True, text=True, timeout=60,
                            cwd=REPO)
    assert "complete " in script.stdout and "_egressguard_completion" in script.stdout, script.stderr
    env.update(_EGRESSGUARD_COMPLETE="bash_complete", COMP_WORDS="egressguard watch --met", COMP_CWORD="2")
    words = subprocess.run([sys.executable, "-c", PY_PROGRAM], env=env, capture_output=True, text=True, timeout=60,
                           cwd=REPO)
    assert "plain,--metrics" in words.stdout.splitlines(), words.stdout + words.stderr
