"""Live monitoring: the engine driven by live interfaces and timers (monitor.py), the finding gate (gate.py) and the
per-sandbox book and rate meters the dashboard shows (sandboxes.py)."""
from egressguard.live.gate import FindingGate, finding_key
from egressguard.live.monitor import WINDOW_FLOWS, LiveMonitor, LiveSource, WatchSettings
from egressguard.live.sandboxes import RateMeter, SandboxBook

__all__ = ["FindingGate", "LiveMonitor", "LiveSource", "RateMeter", "SandboxBook", "WINDOW_FLOWS", "WatchSettings",
           "finding_key"]
