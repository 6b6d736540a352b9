"""A cache of compiled rules, for big rules files: 100,000 [[allow]] tables take seconds to parse (most of it in
tomllib) and a tenth of a second to load compiled.

Used only for files of at least MIN_BYTES or that read list files (`cidrs_file`, `domains_file`). An entry is keyed
by the SHA-256 of the rules file's bytes, its path, the egressguard, Python and numpy versions and CACHE_FORMAT; the
list files it read are checked by size and modification time before it is used. It lives in
`$EGRESSGUARD_CACHE_DIR` (default `$XDG_CACHE_HOME/egressguard` or `~/.cache/egressguard`), under `rules/`, and is
read only from a directory that the current user owns and nobody else may write to (it holds pickles, like numba's
cache). `EGRESSGUARD_RULES_CACHE=0` turns it off. Any problem with the cache means parsing the file again, never an
error: the cache can only make loading faster. `cached_arrays` keeps other compiled data (the Public Suffix List's
hash tables) the same way, as numpy archives under `<kind>/` beside `rules/`.
"""
from __future__ import annotations

import hashlib
import os
import pickle
import sys
import tempfile
from pathlib import Path
from typing import Callable

import numpy as np

from egressguard import __version__

CACHE_FORMAT = 1
MIN_BYTES = 64 * 1024


def cache_dir() -> Path | None:
    """Where compiled rules are cached, or None when the cache is off."""
    if os.environ.get("EGRESSGUARD_RULES_CACHE", "1").lower() in ("0", "off", "no", "false"):
        return None
    base = os.environ.get("EGRESSGUARD_CACHE_DIR")
    if not base:
        xdg = os.environ.get("XDG_CACHE_HOME")
        base = str(Path(xdg) / "egressguard") if xdg else str(Path.home() / ".cache" / "egressguard")
    return Path(base) / "rules"


def wanted(data: bytes) -> bool:
    """Whether a rules file is big enough (or reads list files) to be worth caching."""
    return len(data) >= MIN_BYTES or b"_file" in data


def _key(path: Path, shown: str, data: bytes) -> str:
    h = hashlib.sha256()
    for part in (str(CACHE_FORMAT), __version__, sys.version, np.__version__, str(path.resolve()), shown):
        h.update(part.encode() + b"\0")
    h.update(data)
    return h.hexdigest()


def _trusted(directory: Path) -> bool:
    try:
        st = directory.stat()
    except OSError:
        return False
    return st.st_uid == os.geteuid() and not st.st_mode & 0o022


def _stat(path: str) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_size, st.st_mtime_ns


def load(path: Path, shown: str, data: bytes):
    """The cached Allowlist for these rules, or None."""
    directory = cache_dir()
    if directory is None or not _trusted(directory):
        return None
    try:
        with open(directory / f"{_key(path, shown, data)}.pickle", "rb") as fh:
            deps = pickle.load(fh)
            if any(_stat(name) != tuple(stat) for name, stat in deps):
                return None
            return pickle.load(fh)
    except Exception:  # noqa: BLE001 - a damaged or foreign cache file only means parsing again
        return None


def store(path: Path, shown: str, data: bytes, allowlist, deps: list[str]) -> None:
    """Cache a compiled Allowlist (silently does nothing when the cache cannot be written)."""
    directory = cache_dir()
    if directory is None:
        return
    try:
        directory.mkdir(parents=True, mode=0o700, exist_ok=True)
        if not _trusted(directory):
            return
        stats = [(name, _stat(name)) for name in deps]
        fd, tmp = tempfile.mkstemp(dir=directory, suffix=".tmp")
        with os.fdopen(fd, "wb") as fh:
            pickle.dump(stats, fh, protocol=pickle.HIGHEST_PROTOCOL)
            pickle.dump(allowlist, fh, protocol=pickle.HIGHEST_PROTOCOL)
        os.replace(tmp, directory / f"{_key(path, shown, data)}.pickle")
    except Exception:  # noqa: BLE001
        try:
            os.unlink(tmp)  # type: ignore[possibly-undefined]
        except Exception:  # noqa: BLE001
            pass


def cached_arrays(kind: str, source: bytes, build: Callable[[], dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """Arrays compiled from `source` (e.g. the Public Suffix List), built by `build()` once and then loaded from the
    cache, keyed by the source's content; without a usable cache they are built every time."""
    directory = cache_dir()
    key = hashlib.sha256(b"\0".join((str(CACHE_FORMAT).encode(), __version__.encode(), kind.encode(), source)))
    path = directory.parent / kind / f"{key.hexdigest()}.npz" if directory is not None else None
    if path is not None and _trusted(path.parent):
        try:
            with np.load(path, allow_pickle=False) as stored:
                return {name: stored[name] for name in stored.files}
        except Exception:  # noqa: BLE001 - a missing, damaged or foreign file only means building again
            pass
    arrays = build()
    if path is not None:
        try:
            path.parent.mkdir(parents=True, mode=0o700, exist_ok=True)
            if _trusted(path.parent):
                fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
                with os.fdopen(fd, "wb") as fh:
                    np.savez(fh, **arrays)
                os.replace(tmp, path)
        except Exception:  # noqa: BLE001 - not cached this time
            pass
    return arrays
