"""The kill switch: an operator's command run for each new finding, with the finding on standard input.

The command is the operator's own argv (split once, like a shell would, when the option is read); nothing from the
wire is ever put into it. What the command needs to act on comes in environment variables whose values egressguard
made itself (addresses it formatted, interface names the kernel reported) and as the finding JSON on stdin.
"""
from __future__ import annotations

import os
import queue
import shlex
import subprocess
import threading
from dataclasses import dataclass
from typing import Callable

from egressguard.report.jsonl import dumps
from egressguard.schema import Severity

HOOK_TIMEOUT_S = 30.0
QUEUE_LIMIT = 256  # findings waiting for the hook; more are reported as dropped rather than piling up


def parse_command(text: str) -> list[str]:
    """argv from the --on-finding text (ValueError with the reason when it cannot be split)."""
    argv = shlex.split(text)
    if not argv:
        raise ValueError("the command is empty")
    return argv


def hook_environment(record: dict) -> dict[str, str]:
    """The EGRESSGUARD_* variables for one finding record (only values egressguard formatted itself)."""
    env = {
        "EGRESSGUARD_KIND": str(record.get("kind", "")),
        "EGRESSGUARD_SEVERITY": str(record.get("severity", "")),
        "EGRESSGUARD_SANDBOX_IP": str(record.get("src_ip", "")),
        "EGRESSGUARD_DST_IP": str(record.get("dst_ip", "")),
        "EGRESSGUARD_DST_PORT": str(record.get("dst_port", "")),
        "EGRESSGUARD_PROTO": str(record.get("proto", "")),
        "EGRESSGUARD_SANDBOX_MAC": str(record.get("src_mac") or ""),
        "EGRESSGUARD_SANDBOX_PORT": str(record.get("sandbox_port") or ""),
        "EGRESSGUARD_INTERFACE": str(record.get("interface") or ""),
    }
    return env


@dataclass(frozen=True)
class HookOutcome:
    """What happened when the hook ran for one finding."""

    ok: bool
    message: str


class FindingHook:
    """Runs `argv` for each finding at or above `min_severity`, one at a time, in a worker thread (the capture loop
    never waits for it); each outcome goes to `report` (failures are reported, never fatal)."""

    def __init__(self, argv: list[str], min_severity: Severity, report: Callable[[HookOutcome], None],
                 timeout_s: float = HOOK_TIMEOUT_S):
        self.argv = list(argv)
        self.min_severity = min_severity
        self.timeout_s = timeout_s
        self._report = report
        self.runs = self.failures = 0  # outcomes so far (a full queue counts as a failure); read by the metrics
        self._queue: queue.Queue = queue.Queue(QUEUE_LIMIT)
        self._worker = threading.Thread(target=self._work, name="finding-hook", daemon=True)
        self._worker.start()

    def offer(self, record: dict) -> None:
        """Queue a finding record for the hook if it is severe enough."""
        if _severity(record) < self.min_severity:
            return
        try:
            self._queue.put_nowait(record)
        except queue.Full:
            self.failures += 1
            self._report(HookOutcome(False, f"hook queue full ({QUEUE_LIMIT}): not run for a {record.get('kind')} "
                                            f"finding about {record.get('src_ip')}"))

    def close(self, wait_s: float = HOOK_TIMEOUT_S) -> None:
        """Run what is queued (up to wait_s), then stop the worker."""
        self._queue.put(None)
        self._worker.join(wait_s)

    def _work(self) -> None:
        while True:
            record = self._queue.get()
            if record is None:
                return
            outcome = self.run(record)
            self.runs += 1
            self.failures += not outcome.ok
            self._report(outcome)

    def run(self, record: dict) -> HookOutcome:
        """Run the command once for `record` (synchronously)."""
        what = f"{record.get('kind')} finding about {record.get('src_ip')}"
        env = {**os.environ, **hook_environment(record)}
        try:
            proc = subprocess.run(self.argv, input=(dumps(record) + "\n").encode(), env=env, capture_output=True,
                                  timeout=self.timeout_s, close_fds=True)
        except FileNotFoundError:
            return HookOutcome(False, f"hook {self.argv[0]!r} not found (for a {what})")
        except PermissionError:
            return HookOutcome(False, f"hook {self.argv[0]!r} is not executable (for a {what})")
        except subprocess.TimeoutExpired:
            return HookOutcome(False, f"hook {self.argv[0]!r} did not finish within {self.timeout_s:g} s "
                                      f"(for a {what}); killed")
        except OSError as exc:
            return HookOutcome(False, f"hook {self.argv[0]!r} could not start: {exc.strerror or exc}")
        if proc.returncode != 0:
            err = proc.stderr.decode("utf-8", "replace").strip().splitlines()
            tail = f": {err[-1][:200]}" if err else ""
            return HookOutcome(False, f"hook {self.argv[0]!r} failed with exit code {proc.returncode} "
                                      f"(for a {what}){tail}")
        return HookOutcome(True, f"hook {self.argv[0]!r} ran for a {what}")


def cut_port(port: str) -> str:
    """Set a sandbox's bridge port (its veth) down: the kill switch egressguard ships. Returns what was done;
    raises ValueError when `port` is not an existing interface name, RuntimeError when `ip` fails."""
    if not port or len(port) > 15 or not all(c.isalnum() or c in "-_.@" for c in port) or \
            not os.path.exists(f"/sys/class/net/{port}"):
        raise ValueError(f"no interface named {port!r} to cut (EGRESSGUARD_SANDBOX_PORT names the sandbox's "
                         f"bridge port; it is empty when the port is unknown)")
    if os.path.isdir(f"/sys/class/net/{port}/bridge"):
        raise ValueError(f"{port!r} is the bridge itself, not a sandbox's port: refusing to cut every sandbox")
    proc = subprocess.run(["ip", "link", "set", "dev", port, "down"], capture_output=True, text=True, timeout=10)
    if proc.returncode != 0:
        raise RuntimeError(f"ip link set dev {port} down failed: {proc.stderr.strip() or proc.returncode}")
    return f"{port} set down"


def _severity(record: dict) -> Severity:
    """The severity of a finding record (low when it has none that parses)."""
    try:
        return Severity.parse(record.get("severity"))
    except ValueError:
        return Severity.LOW
