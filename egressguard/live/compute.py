"""What each sandbox computes, joined to where it talks (issue 16): CPU from cgroup v2 `cpu.stat` (or the processes'
own /proc counters when the sandbox has no cgroup of its own) and GPU through NVML, attributed to a sandbox through
the network namespace its processes are in, and that namespace's addresses are the ones its flows come from.

`ComputeSampler.start()` samples every few seconds in a thread of its own (`sample()` once); `usage(address)` answers
detectors (through DetectorContext.compute), the dashboard and finding records; each sample replaces the address map
whole, so readers in other threads see one sample or the next. Reads only /proc and /sys; never enters a namespace.
"""
from __future__ import annotations

import os
import threading
import time
from collections import deque
from dataclasses import dataclass, field

from egressguard.netaddr import parse_address
from egressguard.schema import ComputeUsage

# A sandbox is busy when it keeps at least half a core, or most of its own quota, busy. xmrig and other CPU miners
# run one thread per core they are given at 100 % (xmrig docs: "cpu": {"max-threads-hint": 100} by default).
BUSY_MIN_CORES = 0.5
BUSY_MIN_SHARE = 0.8
RATE_WINDOW_S = 10.0  # CPU use is averaged over this long: a scheduler's hiccup on a loaded host is no break
ADDRESSES_EVERY_S = 10.0  # a namespace's addresses are re-read this often (they rarely change)
CLOCK_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100  # /proc/PID/stat times are in ticks (proc(5))


@dataclass
class _Namespace:
    """One network namespace other than the monitor's: its addresses and the CPU time counters last read."""

    inode: int
    addresses: tuple[int, ...] = ()
    macs: tuple[int, ...] = ()  # its interfaces' MACs, where its processes have a sysfs of their own
    addresses_at: float = -1e18
    sampled_at: float | None = None  # when its rate was last computed (two reads apart)
    cores: float = 0.0
    limit: float = 0.0
    busy_since: float | None = None
    source: str = ""
    processes: int = 0
    used_s: float = 0.0  # CPU seconds counted since the namespace was first sampled
    history: deque = field(default_factory=deque)  # (time, used_s) over the last RATE_WINDOW_S
    pid_times: dict[int, float] = field(default_factory=dict)  # loose processes: CPU seconds at the last sample
    cgroup_times: dict[str, float] = field(default_factory=dict)
    gpu_percent: float | None = None
    gpu_memory: int | None = None


class ComputeSampler:
    """Per-sandbox CPU (and GPU where NVML finds one), sampled on demand; bounded by the namespaces that exist.

    Args:
        proc: the proc file system (tests may point at their own).
        gpu: try NVML (nvidia-ml-py); `gpu_status` says why GPUs are not sampled when they are not.
    """

    def __init__(self, proc: str = "/proc", gpu: bool = True):
        self.proc = proc
        self.cgroup2 = _cgroup2_mount(proc)
        self.cgroup_v1_cpu = _cgroup_v1_mount(proc, "cpu")
        self.host_cores = float(os.cpu_count() or 1)
        self._own_netns = _netns(proc, "self")
        self._namespaces: dict[int, _Namespace] = {}
        self._by_address: dict[int, list[_Namespace]] = {}
        self._own_mnt = _mntns(proc, "self")
        self.gpu = _Nvml() if gpu else None
        self.gpu_status = self.gpu.status if self.gpu is not None else "GPU sampling turned off"
        self.samples = 0
        self.errors = 0  # processes or files that vanished or could not be read while sampling (normal churn)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # ---- running beside the capture
    def start(self, every_s: float) -> None:
        """Sample every `every_s` in a thread of its own: a scan of /proc on a host with many processes must not
        hold up the thread that empties the capture rings."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, args=(every_s,), name="compute-sampler", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def _run(self, every_s: float) -> None:
        while not self._stop.is_set():
            self.sample(time.time())
            self._stop.wait(every_s)

    # ---- reading
    def usage(self, address: int, mac: int = 0) -> ComputeUsage | None:
        """The latest sample of the sandbox that owns `address` (storage form, netaddr.endpoint); when several
        namespaces hold that address (sandboxes on separate bridges may reuse one), the one whose interface has
        `mac`. None when no namespace (or more than one) matches, or it has not been sampled twice yet."""
        held = self._by_address.get(address, ())
        if len(held) > 1:
            held = [ns for ns in held if mac and mac in ns.macs]
        if len(held) != 1 or held[0].sampled_at is None:
            return None
        ns = held[0]
        busy_for = (ns.sampled_at - ns.busy_since) if ns.busy_since is not None else 0.0
        return ComputeUsage(ns.cores, ns.limit, busy_for, ns.source, ns.processes, ns.gpu_percent, ns.gpu_memory)

    @staticmethod
    def busy(usage: ComputeUsage) -> bool:
        """At least BUSY_MIN_CORES, or BUSY_MIN_SHARE of its limit."""
        return usage.cpu_cores >= BUSY_MIN_CORES or usage.cpu_share >= BUSY_MIN_SHARE

    def addresses(self) -> list[int]:
        return list(self._by_address)

    # ---- sampling
    def sample(self, now_s: float) -> None:
        """Read every other network namespace's processes and CPU counters once; rates need two samples."""
        self.samples += 1
        members: dict[int, list[int]] = {}
        for pid in _pids(self.proc):
            inode = _netns(self.proc, pid)
            if inode is None or inode == self._own_netns:
                continue
            members.setdefault(inode, []).append(pid)
        for inode in list(self._namespaces):
            if inode not in members:
                del self._namespaces[inode]
        gpu = self.gpu.per_process() if self.gpu is not None and self.gpu.ready else {}
        by_address: dict[int, list[_Namespace]] = {}
        for inode, pids in members.items():
            ns = self._namespaces.get(inode)
            if ns is None:
                ns = self._namespaces[inode] = _Namespace(inode)
            if now_s - ns.addresses_at >= ADDRESSES_EVERY_S:
                ns.addresses_at = now_s
                ns.addresses = self._addresses(pids)
                ns.macs = self._macs(pids)
            self._sample_cpu(ns, pids, now_s)
            used = [gpu[p] for p in pids if p in gpu]
            ns.gpu_percent = sum(u for u, _ in used) if used else None
            ns.gpu_memory = sum(m for _, m in used) if used else None
            for address in ns.addresses:
                by_address.setdefault(address, []).append(ns)
        self._by_address = by_address  # one assignment: readers see the old map or the new one

    def _addresses(self, pids: list[int]) -> tuple[int, ...]:
        for pid in pids:  # any process of the namespace shows its interfaces; the first that can be read
            try:
                return tuple(local_addresses(self.proc, pid))
            except OSError:
                self.errors += 1
        return ()

    def _macs(self, pids: list[int]) -> tuple[int, ...]:
        """MACs of the namespace's interfaces, read from a process's own sysfs (containers and `ip netns exec`
        mount one for their network namespace); none when its processes share the monitor's mounts."""
        for pid in pids:
            if _mntns(self.proc, pid) in (None, self._own_mnt):
                continue
            out = []
            try:
                for name in os.listdir(f"{self.proc}/{pid}/root/sys/class/net"):
                    with open(f"{self.proc}/{pid}/root/sys/class/net/{name}/address") as fh:
                        value = int(fh.read().strip().replace(":", "") or "0", 16)
                    if value:
                        out.append(value)
            except (OSError, ValueError):
                continue
            return tuple(out)
        return ()

    def _sample_cpu(self, ns: _Namespace, pids: list[int], now_s: float) -> None:
        """CPU seconds of the namespace: whole cgroups that hold only its processes (their counters keep the time
        of processes that have exited), plus the /proc counters of its other processes."""
        by_cgroup: dict[str, list[int]] = {}
        loose: list[int] = []
        for pid in pids:
            path = _cgroup_path(self.proc, pid)
            (by_cgroup.setdefault(path, []) if path not in (None, "/") else loose).append(pid)
        own = set(pids)
        total = 0.0
        cgroup_times: dict[str, float] = {}
        sources = []
        limit = 0.0
        for path, procs in by_cgroup.items():
            members = _cgroup_procs(self.cgroup2, path)
            used = _cgroup_usage_s(self.cgroup2, path) if members is not None and members <= own else None
            if used is None:  # shared with other namespaces, or unreadable: count its processes one by one
                loose.extend(procs)
                continue
            delta = used - ns.cgroup_times.get(path, used)
            cgroup_times[path] = used
            total += delta
            sources.append("cgroup:" + path)
            limit += _cgroup_limit_cores(self.cgroup2, path) or 0.0
        pid_times: dict[int, float] = {}
        for pid in loose:
            t = _process_cpu_s(self.proc, pid)
            if t is None:
                self.errors += 1
                continue
            pid_times[pid] = t
            prior = ns.pid_times.get(pid)
            total += (t - prior) if prior is not None else 0.0
        if loose:
            sources.append(f"processes:{len(pid_times)}")
            v1 = _cgroup_v1_limit_cores(self.proc, self.cgroup_v1_cpu, loose[0])
            limit += v1 or 0.0
        ns.pid_times, ns.cgroup_times = pid_times, cgroup_times
        ns.source = "+".join(sources)
        ns.processes = len(pids)
        ns.limit = min(limit, self.host_cores) if limit > 0 else self.host_cores
        previous = ns.history[-1][0] if ns.history else None  # when its counters were last read
        ns.used_s += max(total, 0.0)
        ns.history.append((now_s, ns.used_s))
        while len(ns.history) > 2 and now_s - ns.history[1][0] >= RATE_WINDOW_S:
            ns.history.popleft()
        if previous is None or now_s <= previous:  # a rate needs two samples
            return
        (t0, u0), (t1, u1) = ns.history[0], ns.history[-1]
        ns.cores = (u1 - u0) / (t1 - t0) if t1 > t0 else 0.0
        ns.sampled_at = now_s
        if self.busy(ComputeUsage(ns.cores, ns.limit, 0.0, ns.source, ns.processes)):
            ns.busy_since = previous if ns.busy_since is None else ns.busy_since
        else:
            ns.busy_since = None


def with_compute(make_context, rules):
    """`make_context(rules)` with a sampler of its own: what each `watch --workers` process runs with."""
    from dataclasses import replace

    return replace(make_context(rules), compute=ComputeSampler())


# ------------------------------------------------------------------------------------------------ /proc and /sys
def _pids(proc: str) -> list[int]:
    try:
        return [int(n) for n in os.listdir(proc) if n.isdigit()]
    except OSError:
        return []


def _netns(proc: str, pid) -> int | None:
    """The inode of a process's network namespace (namespaces(7): the link reads 'net:[inode]')."""
    try:
        return os.stat(f"{proc}/{pid}/ns/net").st_ino
    except OSError:
        return None


def _mntns(proc: str, pid) -> int | None:
    try:
        return os.stat(f"{proc}/{pid}/ns/mnt").st_ino
    except OSError:
        return None


def local_addresses(proc: str, pid: int) -> list[int]:
    """The addresses of the interfaces in `pid`'s network namespace, loopback and link-local left out, in storage
    form: IPv4 from /proc/PID/net/fib_trie (its 'host LOCAL' leaves), IPv6 from /proc/PID/net/if_inet6."""
    out: list[int] = []
    with open(f"{proc}/{pid}/net/fib_trie") as fh:
        last = None
        for line in fh:
            text = line.strip()
            if text.startswith("|--"):
                last = text[3:].strip()
            elif text.endswith("host LOCAL") and last and not last.startswith("127."):
                value = parse_address(last)
                if value not in out:
                    out.append(value)
    try:
        with open(f"{proc}/{pid}/net/if_inet6") as fh:
            for line in fh:
                parts = line.split()
                if len(parts) >= 4 and int(parts[3], 16) == 0:  # scope 0: global (if_inet6 in proc(5))
                    out.append(int(parts[0], 16))
    except OSError:
        pass  # IPv6 turned off in that namespace
    return out


def _cgroup_path(proc: str, pid: int) -> str | None:
    """The process's cgroup v2 path ('0::/path' in /proc/PID/cgroup, cgroups(7))."""
    try:
        with open(f"{proc}/{pid}/cgroup") as fh:
            for line in fh:
                if line.startswith("0::"):
                    return line[3:].strip() or "/"
    except OSError:
        return None
    return None


def _cgroup2_mount(proc: str) -> str | None:
    return _mount_of(proc, lambda fstype, options: fstype == "cgroup2")


def _cgroup_v1_mount(proc: str, controller: str) -> str | None:
    return _mount_of(proc, lambda fstype, options: fstype == "cgroup" and controller in options.split(","))


def _mount_of(proc: str, wanted) -> str | None:
    """Where a file system is mounted: in our own mounts, else in another process's (our parent's, init's, ...),
    reached through /proc/PID/root, so that a monitor in a mount namespace of its own (`ip netns exec` mounts a
    fresh /sys) still finds the host's cgroups."""
    others = [str(os.getppid()), "1"] + [str(p) for p in sorted(_pids(proc))[:256]]
    for who, prefix in [("self", "")] + [(pid, f"{proc}/{pid}/root") for pid in others]:
        try:
            with open(f"{proc}/{who}/mounts") as fh:
                for line in fh:
                    parts = line.split()
                    if len(parts) >= 4 and wanted(parts[2], parts[3]) and os.path.isdir(prefix + parts[1]):
                        return prefix + parts[1]
        except OSError:
            continue
    return None


def _cgroup_procs(mount: str | None, path: str) -> set[int] | None:
    if mount is None:
        return None
    try:
        with open(f"{mount}{path}/cgroup.procs") as fh:
            return {int(x) for x in fh.read().split()}
    except (OSError, ValueError):
        return None


def _cgroup_usage_s(mount: str | None, path: str) -> float | None:
    """CPU seconds the cgroup used (cpu.stat usage_usec, Documentation/admin-guide/cgroup-v2.rst)."""
    try:
        with open(f"{mount}{path}/cpu.stat") as fh:
            for line in fh:
                key, _, value = line.partition(" ")
                if key == "usage_usec":
                    return int(value) / 1e6
    except (OSError, ValueError):
        return None
    return None


def _cgroup_limit_cores(mount: str | None, path: str) -> float | None:
    """The cgroup's quota in cores: cpu.max is '$MAX $PERIOD' or 'max $PERIOD' (cgroup-v2.rst)."""
    try:
        with open(f"{mount}{path}/cpu.max") as fh:
            quota, period = fh.read().split()[:2]
        return None if quota == "max" else int(quota) / int(period)
    except (OSError, ValueError):
        return None


def _cgroup_v1_limit_cores(proc: str, mount: str | None, pid: int) -> float | None:
    """The CFS quota of the process's v1 cpu cgroup (cpu.cfs_quota_us / cpu.cfs_period_us; -1 is none)."""
    if mount is None:
        return None
    try:
        path = None
        with open(f"{proc}/{pid}/cgroup") as fh:
            for line in fh:
                parts = line.strip().split(":", 2)
                if len(parts) == 3 and "cpu" in parts[1].split(","):
                    path = parts[2]
        if path is None or path == "/":
            return None
        with open(f"{mount}{path}/cpu.cfs_quota_us") as fh:
            quota = int(fh.read())
        with open(f"{mount}{path}/cpu.cfs_period_us") as fh:
            period = int(fh.read())
        return quota / period if quota > 0 and period > 0 else None
    except (OSError, ValueError):
        return None


def _process_cpu_s(proc: str, pid: int) -> float | None:
    """utime + stime + cutime + cstime of a process in seconds (fields 14-17 of /proc/PID/stat, proc(5)); the
    command name (field 2) may hold spaces and parentheses, so the fields are counted after its last ')'."""
    try:
        with open(f"{proc}/{pid}/stat") as fh:
            text = fh.read()
        fields = text[text.rindex(")") + 2:].split()
        return sum(int(fields[k]) for k in (11, 12, 13, 14)) / CLOCK_TICKS
    except (OSError, ValueError, IndexError):
        return None


class _Nvml:
    """GPU use per process through NVML (nvidia-ml-py), when the package and an NVIDIA driver are there."""

    def __init__(self):
        self.ready = False
        try:
            import pynvml  # nvidia-ml-py
        except ImportError:
            self.status = "GPU not sampled: nvidia-ml-py is not installed"
            return
        try:
            pynvml.nvmlInit()
            self.devices = [pynvml.nvmlDeviceGetHandleByIndex(i) for i in range(pynvml.nvmlDeviceGetCount())]
        except Exception as exc:  # NVMLError_LibraryNotFound, _DriverNotLoaded, ...: no GPU here
            self.status = f"GPU not sampled: NVML is not available ({exc})"
            return
        self.nvml = pynvml
        self.ready = bool(self.devices)
        self.status = f"GPU sampled through NVML ({len(self.devices)} devices)" if self.ready else \
            "GPU not sampled: NVML found no devices"
        self._last_seen = 0

    def per_process(self) -> dict[int, tuple[float, int]]:
        """pid -> (SM utilisation %, GPU memory bytes) over every device."""
        out: dict[int, tuple[float, int]] = {}
        nv = self.nvml
        for handle in self.devices:
            try:
                memory = {p.pid: int(p.usedGpuMemory or 0) for p in nv.nvmlDeviceGetComputeRunningProcesses(handle)}
                util: dict[int, float] = {}
                try:
                    for s in nv.nvmlDeviceGetProcessUtilization(handle, self._last_seen):
                        util[s.pid] = max(util.get(s.pid, 0.0), float(s.smUtil))
                except nv.NVMLError:
                    pass  # no samples since the last call
                for pid in set(memory) | set(util):
                    u, m = out.get(pid, (0.0, 0))
                    out[pid] = (u + util.get(pid, 0.0), m + memory.get(pid, 0))
            except nv.NVMLError:
                continue
        self._last_seen = int(__import__("time").time() * 1e6)
        return out


__all__ = ["BUSY_MIN_CORES", "BUSY_MIN_SHARE", "ComputeSampler", "local_addresses", "with_compute"]
