"""The one direction of data (ARCHITECTURE.md 3): the import-linter layers contract in pyproject.toml holds, and it
does catch an import against the direction."""
import shutil
import subprocess
import sys
from pathlib import Path

from conftest import REPO

LINT = [sys.executable, "-c", "import sys; from importlinter.cli import lint_imports_command; "
        "sys.exit(lint_imports_command())"]


def lint(root: Path) -> subprocess.CompletedProcess:
    """import-linter on the package under `root` (with that folder first on the import path)."""
    return subprocess.run(LINT, cwd=root, capture_output=True, text=True, timeout=300,
                          env={"PYTHONPATH": str(root), "PATH": "/usr/bin:/bin"})


def test_every_module_imports_only_from_the_layers_below_it():
    proc = lint(REPO)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "1 kept, 0 broken" in proc.stdout


def test_an_import_against_the_direction_breaks_the_contract(tmp_path):
    shutil.copytree(REPO / "egressguard", tmp_path / "egressguard", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(REPO / "pyproject.toml", tmp_path)
    view = tmp_path / "egressguard" / "flows" / "view.py"
    view.write_text(view.read_text().replace("from __future__ import annotations\n",
                                             "from __future__ import annotations\n\nimport egressguard.engine\n", 1))
    proc = lint(tmp_path)
    assert proc.returncode != 0
    assert "egressguard.flows.view -> egressguard.engine" in proc.stdout
