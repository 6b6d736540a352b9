"""`analyze` over several workers: local processes (`--workers N`) or tasks on a Dask distributed cluster (`--dask`).

Each worker runs one shard (shards.py) over every capture of the run, in order: it reads and decodes each capture
whole and keeps the packets of its sandboxes, so a sandbox's DNS answers, pair memory, beacon series and egress
aggregates never leave its worker, and state a run carries from one capture to the next (DNS binding, mining's pair
memory) carries over per sandbox as in one process. A worker sends back, per batch, only what the output format
renders (parcels); `ShardedAnalyzer.analyze` merges the shards' parcels of a capture by time and yields the same
events as `pipeline.Analyzer.analyze`, so the CLI renders them unchanged.

What differs from one process: bounded memories and caps are per worker, and a few capture clocks follow their
worker's flows (README "Several workers" says which, exactly).
"""
from __future__ import annotations

import heapq
import multiprocessing
import os
import queue as queue_module
import threading
import time
import traceback
import uuid
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Iterator, Sequence

import numpy as np

from egressguard.detect import BatchResult
from egressguard.detect.egress import Params as EgressParams
from egressguard.engine import CaptureDone, Event, FlowsReady, Settings
from egressguard.errors import EgressGuardError, ExitStatus
from egressguard.pipeline import Analyzer, ProgressCallback, default_context
from egressguard.policy.rules import load_rules
from egressguard.report.table import top_rows
from egressguard.schema import FLOW_DTYPE, CaptureSummary, FindingKind
from egressguard.shards import ShardFilter

LAST = np.iinfo(np.int64).max  # merge key of a batch without flows (findings held back until a capture's end)
PROGRESS_EVERY_S = 0.25  # a worker reports its reading position at most this often
CONNECT_TIMEOUT_S = 5.0  # distributed's Client default is 30 s; an unreachable scheduler should fail fast


class ClusterError(EgressGuardError):
    """--dask cannot be used: distributed is not installed, or the scheduler cannot be reached or has no workers.
    A usage problem, like a --metrics address that cannot be bound (exit 2)."""

    exit_status = ExitStatus.USAGE
    fatal = True  # ends the run: no further capture can be analysed either


class WorkerLost(EgressGuardError):
    """A local worker process ended without its result (killed, e.g. by the OOM killer): the run cannot be complete."""

    exit_status = ExitStatus.USAGE  # like ClusterError: the way the run was asked to go cannot go on
    fatal = True


class ShardCaptureError(EgressGuardError):
    """A capture the workers could not read: the message and exit status of the worker's own error."""

    def __init__(self, message: str, status: int):
        super().__init__(message)
        self.exit_status = ExitStatus(status)


@dataclass(frozen=True)
class Ship:
    """What a worker sends back per batch: every flow record ("all"), the `top` largest by bytes ("top", what the
    table report can show), or none; and with `facts` the per-row app tags, DNS messages and server names that EVE
    and Zeek records are made from."""

    flows: str = "all"
    top: int = 10
    facts: bool = False


@dataclass(frozen=True)
class ShardJob:
    """One run, as every worker gets it (plain values: it crosses process and host boundaries)."""

    captures: tuple[str, ...]
    shards: int
    settings: Settings = Settings()
    rules_file: str | None = None  # None: the packaged default rules
    detect: bool = True
    ship: Ship = Ship()


@dataclass(frozen=True)
class DetachedView:
    """The parts of a FlowView the reports read (records; for EVE and Zeek `app`, `dns`, `server_names`), with no
    flow table behind it, so that it can be pickled."""

    records: np.ndarray
    app: Any = None
    dns: Any = None
    server_names: Any = None


@dataclass(frozen=True)
class Parcel:
    """One batch of one shard: `key` (its newest flow's last packet, LAST for held-back findings) orders the merge."""

    key: int
    view: DetachedView
    findings: list
    annotations: dict


@dataclass
class CaptureOutcome:
    """One capture as one shard saw it: its parcels and summary, or the error that stopped it."""

    capture: str
    parcels: list[Parcel] = field(default_factory=list)
    summary: CaptureSummary | None = None
    error: str | None = None
    status: int = int(ExitStatus.CAPTURE)


# ---------------------------------------------------------------------------------------------------- worker side
def run_shard(job: ShardJob, shard: int, report: Callable[[int, str, int, int | None], None] | None = None
              ) -> list[CaptureOutcome]:
    """Analyse shard `shard` of every capture of `job`, in order; `report(index, capture, done, total)` is told the
    reading position now and then. A capture that cannot be read becomes an outcome with its error."""
    rules = load_rules(job.rules_file)
    ctx = default_context(rules) if job.detect else None
    analyzer = Analyzer(job.settings, detectors=None if job.detect else [], ctx=ctx)
    keep = ShardFilter(rules, shard, job.shards).keep
    outcomes = []
    for index, spec in enumerate(job.captures):
        progress = _throttled(report, index) if report is not None else None
        outcome = CaptureOutcome(spec)
        try:
            for event in analyzer.analyze(spec, progress, keep):
                if isinstance(event, FlowsReady):
                    parcel = _parcel(event, job.ship)
                    if parcel is not None:
                        outcome.parcels.append(parcel)
                else:
                    outcome.summary = event.summary
        except EgressGuardError as exc:
            outcome = CaptureOutcome(spec, error=str(exc), status=int(exc.exit_status))
        outcomes.append(outcome)
    return outcomes


def _throttled(report: Callable, index: int) -> ProgressCallback:
    last = [0.0]

    def progress(name: str, done: int, total: int | None) -> None:
        now = time.monotonic()
        if now - last[0] >= PROGRESS_EVERY_S or (total is not None and done >= total):
            last[0] = now
            report(index, name, done, total)
    return progress


def _parcel(event: FlowsReady, ship: Ship) -> Parcel | None:
    """What of one judged batch goes back to the caller (None: nothing the output renders)."""
    view, result = event.view, event.result
    recs = view.records
    key = int(recs["last_seen_ns"].max()) if len(recs) else LAST
    if ship.flows == "all":
        kept, annotations = recs, result.annotations
    elif ship.flows == "top" and len(recs):
        kept, annotations = recs[np.sort(top_rows(recs, ship.top))], {}
    else:
        kept, annotations = np.zeros(0, FLOW_DTYPE), {}
    if not len(kept) and not result.findings:
        return None
    if ship.facts and ship.flows == "all" and len(recs):
        detached = DetachedView(recs, view.app, view.dns, view.server_names)
    else:
        detached = DetachedView(kept)
    return Parcel(key, detached, list(result.findings), dict(annotations))


# ---------------------------------------------------------------------------------------------------- caller side
def merged_events(spec: str, outcomes: Sequence[CaptureOutcome]) -> Iterator[Event]:
    """The events of one capture from every shard's outcome: batches merged by time (each shard's own order kept;
    deterministic), then one summary whose flow counts are the shards' sums."""
    failed = next((o for o in outcomes if o.error is not None), None)
    if failed is not None:
        raise ShardCaptureError(failed.error, failed.status)
    for parcel in heapq.merge(*(o.parcels for o in outcomes), key=lambda p: p.key):
        yield FlowsReady(spec, parcel.view, BatchResult(parcel.findings, parcel.annotations))
    summary = merge_summaries([o.summary for o in outcomes])
    if len(outcomes) > 1 and egress_cap_reached(outcomes):
        summary = replace(summary, warnings=summary.warnings + (
            f"{spec}: each of {len(outcomes)} workers caps unexpected_destination findings at "
            f"{EgressParams().max_findings}: those beyond differ from one process",))
    yield CaptureDone(summary)


def egress_cap_reached(outcomes: Sequence[CaptureOutcome]) -> bool:
    """Whether the per-capture cap of unexpected-destination findings could have made one process report other
    findings: a worker reached it, or the workers together passed it. Below it, every worker admits exactly the
    destinations one process would (the per-sandbox cap is a sandbox's own, and so its worker's)."""
    cap = EgressParams().max_findings
    counts = [sum(1 for p in o.parcels for f in p.findings if f.kind is FindingKind.UNEXPECTED_DESTINATION
                  and not f.details.get("egress", {}).get("summary") and "carrier" not in f.details.get("egress", {}))
              for o in outcomes]
    return max(counts) >= cap or sum(counts) > cap


def merge_summaries(summaries: Sequence[CaptureSummary]) -> CaptureSummary:
    """One capture's summary from its shards': every shard decoded every packet (decode counters, time span,
    warnings are each shard's), flows and table counters are split between them (summed)."""
    first = summaries[0]
    return replace(first, flows=sum(s.flows for s in summaries), evictions=sum(s.evictions for s in summaries),
                   slot_denied=sum(s.slot_denied for s in summaries),
                   complete=all(s.complete for s in summaries))


class ShardedAnalyzer:
    """Stands in for pipeline.Analyzer in the CLI: the workers start at once; `analyze(spec)` (called for each
    capture of the job, in order) waits for them the first time, then yields that capture's merged events."""

    def __init__(self, job: ShardJob, backend: "ProcessShards | DaskShards"):
        self.job = job
        self.backend = backend
        self._outcomes: list[list[CaptureOutcome | None]] | None = None
        self._next = 0

    def analyze(self, spec: str, progress: ProgressCallback | None = None) -> Iterator[Event]:
        if self._next >= len(self.job.captures) or self.job.captures[self._next] != spec:
            raise ValueError(f"captures must be analysed in the job's order; got {spec!r}")
        index, self._next = self._next, self._next + 1
        if self._outcomes is None:
            self._outcomes = [list(shard) for shard in self.backend.results(progress)]
        outcomes = [shard[index] for shard in self._outcomes]
        for shard in self._outcomes:
            shard[index] = None  # rendered once; let the memory go
        yield from merged_events(spec, outcomes)

    def close(self) -> None:
        self.backend.close()


class _ProgressBook:
    """The reading position of each capture: the slowest shard's (every shard reads the whole capture)."""

    def __init__(self, job: ShardJob, progress: ProgressCallback | None):
        self.progress = progress
        self.done = [[0] * job.shards for _ in job.captures]
        self.shown = [-1] * len(job.captures)

    def update(self, shard: int, index: int, name: str, done: int, total: int | None) -> None:
        if self.progress is None:
            return
        self.done[index][shard] = max(self.done[index][shard], done)
        least = min(self.done[index])
        if least != self.shown[index]:
            self.shown[index] = least
            self.progress(name, least, total)


# ---- local processes
def _process_main(job: ShardJob, shard: int, out) -> None:
    """A worker process: progress messages, then its outcomes (or the traceback of what went wrong)."""
    try:
        outcomes = run_shard(job, shard, lambda i, name, done, total: out.put(("progress", shard, i, name, done,
                                                                               total)))
        out.put(("done", shard, outcomes))
    except MemoryError:
        out.put(("memory", shard, None))
    except BaseException:  # noqa: BLE001 - handed to the caller, which raises it
        out.put(("crash", shard, traceback.format_exc()))


class ProcessShards:
    """N local worker processes, one shard each; started at construction. Forked when the caller runs no other
    thread (the workers then start with every module already imported), else spawned."""

    def __init__(self, job: ShardJob):
        self.job = job
        method = "fork" if os.name == "posix" and threading.active_count() == 1 else "spawn"
        mp = multiprocessing.get_context(method)
        self._queue = mp.Queue()
        self._procs = [mp.Process(target=_process_main, args=(job, k, self._queue), name=f"egressguard-shard-{k}",
                                  daemon=True) for k in range(job.shards)]
        for proc in self._procs:
            proc.start()

    def results(self, progress: ProgressCallback | None) -> list[list[CaptureOutcome]]:
        """Every shard's outcomes (waits for all workers; reports progress meanwhile)."""
        book = _ProgressBook(self.job, progress)
        done: dict[int, list[CaptureOutcome]] = {}
        while len(done) < len(self._procs):
            try:
                message = self._queue.get(timeout=0.5)
            except queue_module.Empty:
                dead = [k for k, p in enumerate(self._procs) if k not in done and not p.is_alive()]
                if dead and self._queue.empty():
                    time.sleep(0.5)  # a result may still be on its way through the pipe
                    if self._queue.empty():
                        code = self._procs[dead[0]].exitcode
                        why = f"killed by signal {-code}" if code is not None and code < 0 else f"exit code {code}"
                        raise WorkerLost(f"worker {dead[0]} ended without a result ({why}; the kernel's OOM killer "
                                         f"sends signal 9). Fix: fewer --workers, or a smaller --capacity")
                continue
            kind, shard = message[0], message[1]
            if kind == "progress":
                book.update(shard, *message[2:])
            elif kind == "done":
                done[shard] = message[2]
            elif kind == "memory":
                raise MemoryError(f"worker {shard}")
            else:
                raise RuntimeError(f"worker {shard} failed:\n{message[2]}")
        for proc in self._procs:
            proc.join()
        return [done[k] for k in range(len(self._procs))]

    def close(self) -> None:
        """Stop the workers that still run (an abandoned run: an error, or Ctrl-C)."""
        for proc in self._procs:
            if proc.is_alive():
                proc.terminate()
        for proc in self._procs:
            proc.join(timeout=5)
        self._queue.close()
        self._queue.cancel_join_thread()


# ---- Dask distributed
def _dask_task(job: ShardJob, shard: int, queue_name: str | None) -> list[CaptureOutcome]:
    """A shard as a Dask task; progress goes to a distributed Queue (small messages through the scheduler)."""
    report = None
    if queue_name is not None:
        from distributed import Queue, get_client

        progress_queue = Queue(queue_name, client=get_client())

        def report(index: int, name: str, done: int, total: int | None) -> None:
            progress_queue.put((shard, index, name, done, total))
    return run_shard(job, shard, report)


class DaskShards:
    """The shards as tasks on a Dask distributed cluster (`dask scheduler`, `dask worker ADDRESS`). The workers run
    egressguard themselves: captures and the rules file are opened at the paths given, on the worker's host.

    Args:
        address: the scheduler, e.g. tcp://10.0.0.5:8786.
        job: the run; `job.shards` 0 means one shard per worker thread of the cluster.
    """

    def __init__(self, address: str, job: ShardJob, timeout_s: float = CONNECT_TIMEOUT_S):
        try:
            from distributed import Client, Queue
        except ImportError:
            raise ClusterError("--dask needs the distributed package. Fix: pip install 'egressguard[dask]'") \
                from None
        try:
            self.client = Client(address, timeout=timeout_s, set_as_default=False)
        except (OSError, TimeoutError, ValueError, TypeError) as exc:
            reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise ClusterError(f"{address}: cannot reach the Dask scheduler ({reason}). Fix: start it with "
                               f"`dask scheduler` and give its address, e.g. tcp://127.0.0.1:8786") from None
        try:
            threads = sum(w.get("nthreads", 1) for w in self.client.scheduler_info()["workers"].values())
            if not threads:
                raise ClusterError(f"{address}: the Dask scheduler has no workers. Fix: start some with "
                                   f"`dask worker {address} --nthreads 1`")
            self.job = job if job.shards else replace(job, shards=threads)
            name = f"egressguard-progress-{uuid.uuid4().hex}"
            self._queue = Queue(name, client=self.client)
            self._futures = [self.client.submit(_dask_task, self.job, k, name, pure=False,
                                                key=f"egressguard-shard-{k}-{name[-12:]}")
                             for k in range(self.job.shards)]
        except BaseException:
            self.client.close()
            raise

    def results(self, progress: ProgressCallback | None) -> list[list[CaptureOutcome]]:
        book = _ProgressBook(self.job, progress)
        while True:
            pending = [f for f in self._futures if not f.done()]
            for message in self._drain():
                book.update(*message)
            if not pending:
                break
            time.sleep(PROGRESS_EVERY_S)
        try:
            return self.client.gather(self._futures)
        except EgressGuardError as exc:  # e.g. the rules file is not at its path on a worker's host
            exc.fatal = True
            raise
        except (OSError, TimeoutError) as exc:
            raise ClusterError(f"lost the Dask cluster: {exc}") from None
        except Exception as exc:  # noqa: BLE001 - e.g. egressguard not installed on a worker
            first = str(exc).splitlines()[0] if str(exc) else ""
            raise ClusterError(f"a Dask worker failed: {type(exc).__name__}: {first}. Fix: install egressguard "
                               f"(with its dask extra) on every worker") from None

    def _drain(self) -> list[tuple]:
        try:
            n = self._queue.qsize()
            return self._queue.get(batch=n) if n else []
        except (OSError, TimeoutError):
            return []

    def close(self) -> None:
        for f in getattr(self, "_futures", ()):
            f.cancel()
        self.client.close()


def sharded_analyzer(captures: Sequence[str], settings: Settings, rules_file: str | None, detect: bool, ship: Ship,
                     workers: int | None, dask_address: str | None) -> ShardedAnalyzer:
    """The analyzer of a run over `workers` local processes, or over a Dask cluster (`workers` shards, default one
    per worker thread). Raises ClusterError when the cluster cannot be used."""
    job = ShardJob(tuple(captures), workers or 0, settings, rules_file, detect, ship)
    if dask_address is not None:
        return ShardedAnalyzer(job, DaskShards(dask_address, job))
    return ShardedAnalyzer(job, ProcessShards(job))


__all__ = ["ClusterError", "DaskShards", "DetachedView", "Parcel", "ProcessShards", "ShardCaptureError",
           "ShardJob", "ShardedAnalyzer", "Ship", "merge_summaries", "merged_events", "run_shard",
           "sharded_analyzer"]
