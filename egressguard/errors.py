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
    """A rules file is invalid."""

    exit_status = ExitStatus.RULES
