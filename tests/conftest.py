"""Shared test setup: a numba cache that cannot go stale, and where the captures are."""
import contextlib
import hashlib
import os
import shutil
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
LAB_CAPTURES = REPO / "captures"
PUBLIC_CAPTURES = REPO.parent / "shared" / "captures" / "public"

# numba's on-disk cache is keyed by each kernel file's own timestamp, not by the kernels it inlines from other
# files; key the cache directory by the hash of every kernel source so an edit anywhere recompiles everything.
_sources = sorted((REPO / "egressguard").rglob("*.py"))
_digest = hashlib.sha256(b"".join(p.read_bytes() for p in _sources)).hexdigest()[:16]
os.environ.setdefault("NUMBA_CACHE_DIR", str(REPO / ".pytest_cache" / "numba" / _digest))
os.environ.setdefault("EGRESSGUARD_CACHE_DIR", str(REPO / ".pytest_cache" / "egressguard"))  # compiled big rules


def missing_tools(*names: str) -> list[str]:
    """The programs among `names` found neither on PATH nor in the sbin folders (sshd, iodined: root's tools)."""
    return [name for name in names if shutil.which(name) is None
            and not any(os.access(f"{folder}/{name}", os.X_OK) for folder in ("/usr/sbin", "/sbin"))]


def public_capture(relative: str) -> Path:
    """Path of a capture in ../shared/captures/public, skipping the test when it is not there."""
    path = PUBLIC_CAPTURES / relative
    if not path.exists():
        pytest.skip(f"public capture {relative} not found (expected under {PUBLIC_CAPTURES})")
    return path


def lab_capture(name: str) -> Path:
    path = LAB_CAPTURES / name
    assert path.exists(), f"lab capture {name} missing: run `python captures/lab.py record` as root"
    return path


@contextlib.contextmanager
def lab_scenarios_restored():
    """While a lab module (captures/lab_*.py) is imported and records, its scenarios join lab.SCENARIOS; that
    registry is left as it was afterwards, since tests/test_lab.py records and judges every scenario in it."""
    import lab

    before = dict(lab.SCENARIOS)
    try:
        yield
    finally:
        lab.SCENARIOS.clear()
        lab.SCENARIOS.update(before)
