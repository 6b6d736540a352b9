"""Errors a user can cause, and the exit codes the CLI maps them to (in one place)."""
from __future__ import annotations

import enum


class ExitStatus(enum.IntEnum):
    """Process exit codes, documented in README.md."""

    OK = 0  # ran, nothing to report
    FINDINGS = 1  # ran, at least one finding
    USAGE = 2  # bad command line (click's own code too)
    CAPTURE = 3  # a capture file or interface could not be read
    RULES = 4  # a rules file is invalid
    INTERRUPTED = 130  # SIGINT


class EgressGuardError(Exception):
    """Base of every error that is the user's to fix; `str()` is the whole message."""

    exit_status = ExitStatus.USAGE


class CaptureError(EgressGuardError):
    """A capture source is missing, unreadable, not a capture, or uses something we cannot decode."""

    exit_status = ExitStatus.CAPTURE

    def __init__(self, source: str, problem: str):
        self.source = source
        self.problem = problem
        super().__init__(f"{source}: {problem}")


class RulesError(EgressGuardError):
    """A rules file is invalid: one message naming the file, the line, the key, the bad value and the fix.

    `str()` reads `FILE:LINE: KEY = VALUE: PROBLEM. Fix: FIX` (parts that do not apply are left out).
    """

    exit_status = ExitStatus.RULES

    def __init__(self, path: str, problem: str, *, line: int | None = None, key: str | None = None,
                 value: str | None = None, fix: str | None = None):
        self.path, self.line, self.key, self.value, self.problem, self.fix = path, line, key, value, problem, fix
        where = f"{path}:{line}" if line else path
        what = f"{key} = {value}" if key and value is not None else (key or value or "")
        text = f"{where}: {what}: {problem}" if what else f"{where}: {problem}"
        super().__init__(f"{text}. Fix: {fix}" if fix else text)
