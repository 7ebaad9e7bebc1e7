"""The worker: pull problems from its model's queue, run `sdpo_core.solve`, report to Redis.

One worker = one loaded model (one GPU), running up to `concurrency` problems at once
(SDPO_WORKER_CONCURRENCY): each in a slot of the one base model, with its own adapters,
optimizer, RNG, checkpoint directory, claim, cancel flag and event stream
(sdpo_core/slots.py). It
- reads new queue entries (XREADGROUP) while it has a free slot and takes over entries of
  dead workers (XAUTOCLAIM once their heartbeat lapsed), resuming from the checkpoint
  directory recorded in Redis;
- heartbeats: refreshes its liveness (capacity, active problems) and re-claims its own
  entries so nobody takes them over;
- writes every solve event to the problem's event log once (attempts deduplicated by index,
  steps by number, terminal events by the status change) and fenced by an owner token, so a
  worker whose problem was taken over cannot write any more. The solve thread only queues
  an event; one async writer per run writes them, in order;
- stops a run within one step on its cancel (a flag, set when writing its next event reports
  the cancel, or by its heartbeat; its neighbours go on) or every run on SIGTERM (problems
  handed back to the queue, status `queued`), and rides out Redis restarts by reconnecting:
  while Redis is away (or full: maxmemory reached) the runs pause at their next phase and
  their wall-clock budgets stand still;
- deletes the checkpoints (adapter) of problems past the retention;
- keeps its Prometheus counters in its own process and serves them on its own port
  (service/worker_metrics.py).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import shutil
import signal
import socket
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import OutOfMemoryError as RedisOutOfMemoryError
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from sdpo_core.contract import (
    AttemptPayload,
    ExhaustedPayload,
    FailedPayload,
    SolvedPayload,
    StepPayload,
)
from sdpo_core.problem import ProblemSpec
from sdpo_core.types import SolveEvent, SolveResult
from service.queue import Entry, Queue
from service.settings import Settings
from service.store import TERMINAL, Store, connect
from service.worker_metrics import WorkerMetrics

log = logging.getLogger("sdpo.worker")
# Redis away, or full (maxmemory, noeviction): the run pauses and the writes are retried
_TRANSIENT = (RedisConnectionError, RedisTimeoutError, RedisOutOfMemoryError, OSError)
_WRITTEN = ("ok", "cancel_requested")  # Store.record outcomes that logged the event


def model_name_for(model_path: str | None) -> str:
    """The queue name of a model: `toy` for the bundled model, else the directory name."""
    if model_path is None:
        return "toy"
    from sdpo_core.toy import DEFAULT_MODEL_DIR

    path = Path(model_path).resolve()
    return "toy" if path == Path(DEFAULT_MODEL_DIR).resolve() else path.name


@dataclass
class _Job:
    entry: Entry
    pid: str
    owner: str
    slot: int
    lost: bool = False  # another worker took the problem over
    cancel: bool = False  # the heartbeat saw cancel_requested
    started: float = field(default_factory=time.monotonic)


class Outage:
    """Time Redis has been unreachable (thread-safe): the solve clock leaves it out."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._since: float | None = None
        self._total = 0.0

    def down(self) -> None:
        with self._lock:
            if self._since is None:
                self._since = time.monotonic()

    def up(self) -> None:
        with self._lock:
            if self._since is not None:
                self._total += time.monotonic() - self._since
                self._since = None

    @property
    def is_down(self) -> bool:
        return self._since is not None

    def total(self) -> float:
        with self._lock:
            ongoing = time.monotonic() - self._since if self._since is not None else 0.0
            return self._total + ongoing

    def clock(self) -> float:
        """A monotonic clock that stands still while Redis is away."""
        return time.monotonic() - self.total()


class _Writer:
    """Writes one run's events to Redis in order, from a queue the solve thread fills."""

    def __init__(self, worker: Worker, job: _Job) -> None:
        self.worker, self.job = worker, job
        self.loop = asyncio.get_running_loop()
        self.queue: asyncio.Queue[SolveEvent | None] = asyncio.Queue()
        self.task = asyncio.create_task(self._run())

    def put(self, event: SolveEvent) -> None:
        """From the solve thread: returns at once."""
        self.loop.call_soon_threadsafe(self.queue.put_nowait, event)

    async def _run(self) -> None:
        while (event := await self.queue.get()) is not None:
            status = await self.worker._publish(self.job, event)
            if status == "not_owner":
                self.job.lost = True
            elif status == "cancel_requested":  # seen with the event it wrote: no extra trip
                self.job.cancel = True

    async def close(self) -> None:
        """Write what is queued, then stop."""
        self.queue.put_nowait(None)
        await self.task


class Worker:
    """A queue consumer that runs problems on one loaded runtime."""

    def __init__(
        self,
        settings: Settings,
        *,
        model_path: str | None = None,
        model_name: str | None = None,
        engine: str = "hf",
        vllm_url: str | None = None,
        device: str | None = None,
        name: str | None = None,
        redis_url: str | None = None,
        metrics_port: int | None = None,
        concurrency: int | None = None,
    ) -> None:
        """`metrics_port`: where to serve /metrics (default SDPO_WORKER_METRICS_PORT; 0: not
        served, e.g. local mode, whose API serves this worker's registry). `concurrency`:
        problems at once (default SDPO_WORKER_CONCURRENCY)."""
        self.settings = settings
        self.model_path = model_path
        self.model = model_name or model_name_for(model_path)
        self.engine = engine
        self.vllm_url = vllm_url
        self.device = device
        self.name = name or f"{socket.gethostname()}-{os.getpid()}"
        self.redis_url = redis_url or settings.redis_url or "redis://127.0.0.1:6379/0"
        self.concurrency = concurrency or settings.worker_concurrency
        self._stop = threading.Event()
        self.outage = Outage()
        self.jobs: dict[str, _Job] = {}  # problem id -> its run, while it runs
        self._free_slots = list(range(self.concurrency - 1, -1, -1))  # pop() gives slot 0 first
        self._last_sweep = 0.0
        self.runtime: Any = None
        self.problems_done = 0
        self.metrics = WorkerMetrics()
        self._metrics_port = settings.worker_metrics_port if metrics_port is None else metrics_port
        self.metrics_port: int | None = None  # where it is served, once running
        # one thread per slot: asyncio's default pool (min(32, cores + 4) threads) would hold
        # back runs beyond its size, and the heartbeat's own to_thread calls behind them
        self._solvers = ThreadPoolExecutor(self.concurrency, thread_name_prefix="solve")

    def stop(self) -> None:
        """Ask the worker to hand back its problems and exit (what SIGTERM does)."""
        self._stop.set()

    # ------------------------------------------------------------------ main loop
    async def run(self, *, max_problems: int | None = None) -> None:
        from sdpo_core.runtime import load_runtime, use_cpu_threads
        from sdpo_sandbox import configure_sandbox

        configure_sandbox(self.settings.sandbox)
        self.metrics_port = self.metrics.serve(
            self.settings.worker_metrics_host, self._metrics_port
        )
        local_vllm = self.engine == "vllm" and not self.vllm_url
        threads, why = use_cpu_threads(self.settings.cpu_threads, beside_vllm=local_vllm)
        log.info(
            "worker %s: loading %s (%s engine, %d CPU threads: %s)",
            self.name,
            self.model_path or "the bundled toy model",
            self.engine,
            threads,
            why,
        )
        self.runtime = await asyncio.to_thread(
            load_runtime,
            self.model_path,
            engine=self.engine,
            vllm_url=self.vllm_url,
            device=self.device,
            vllm_python=self.settings.vllm_python,
            vllm_api_key=self.settings.vllm_api_key,
            concurrency=self.concurrency,
            schedule=self.settings.worker_schedule,
        )
        self.metrics.watch(self.runtime.phases, self.concurrency, lambda: len(self.jobs))
        redis = connect(self.redis_url)
        self.store = Store(
            redis,
            self.settings.key_prefix,
            retention_s=self.settings.retention_seconds,
            events_maxlen=self.settings.events_maxlen,
        )
        self.queue = Queue(redis, self.settings.key_prefix, self.model)
        beat = asyncio.create_task(self._heartbeat_loop())
        log.info(
            "worker %s: serving model %r, %d problem(s) at once",
            self.name,
            self.model,
            self.concurrency,
        )
        runs: set[asyncio.Task[None]] = set()
        try:
            while not self._stop.is_set():
                if max_problems is not None and self.problems_done + len(runs) >= max_problems:
                    if not runs:
                        break
                    await asyncio.wait(runs, return_when=asyncio.FIRST_COMPLETED)
                    continue
                if not self._free_slots:  # full: wait for a run to end (or a stop)
                    await asyncio.wait(runs, timeout=1.0, return_when=asyncio.FIRST_COMPLETED)
                    continue
                try:
                    await self.queue.ensure_group()
                    entry = await self.queue.claim_stale(
                        self.name, self.settings.heartbeat_timeout
                    ) or await self.queue.read(self.name, block_s=1.0)
                except _TRANSIENT as exc:
                    log.warning("worker %s: redis unavailable (%s); retrying", self.name, exc)
                    await asyncio.sleep(1.0)
                    continue
                if entry is not None:
                    run = asyncio.create_task(self._run_entry(entry, self._free_slots.pop()))
                    runs.add(run)
                    run.add_done_callback(runs.discard)
        finally:
            if runs:  # on stop each run hands its problem back within a step
                await asyncio.gather(*runs, return_exceptions=True)
            beat.cancel()
            try:
                await self.store.remove_worker(self.name)
            except _TRANSIENT:
                pass
            await redis.aclose()
            self.runtime.close()
            self._solvers.shutdown(wait=False)
            self.metrics.close()
            log.info("worker %s: stopped", self.name)

    async def _heartbeat_loop(self) -> None:
        while True:
            try:
                jobs = list(self.jobs.values())
                info = {"model": self.model, "host": socket.gethostname(), "pid": os.getpid()}
                info["metrics_port"] = self.metrics_port or ""
                info["problem"] = ",".join(job.pid for job in jobs)
                info["capacity"] = self.concurrency
                info["active"] = len(jobs)
                await self.store.heartbeat(self.name, info, self.settings.heartbeat_timeout)
                for job in jobs:
                    if not await self.queue.touch(self.name, job.entry.entry_id):
                        log.warning("worker %s: lost %s to another worker", self.name, job.pid)
                        job.lost = True
                    if await self.store.cancel_requested(job.pid):
                        job.cancel = True
                self.outage.up()
                await self._sweep()
            except _TRANSIENT as exc:
                self.outage.down()
                log.warning("worker %s: heartbeat failed (%s)", self.name, exc)
            except RedisError as exc:
                log.warning("worker %s: heartbeat error (%s)", self.name, exc)
            await asyncio.sleep(self.settings.heartbeat_seconds)

    async def _sweep(self) -> None:
        """Forget problems past the retention (at most once a minute) and delete their
        checkpoints, if they lie under this worker's checkpoint directory."""
        period = min(60.0, max(1.0, self.settings.retention_seconds / 4))
        if time.monotonic() - self._last_sweep < period:
            return
        self._last_sweep = time.monotonic()
        root = self.settings.checkpoint_dir.resolve()
        for gone in await self.store.sweep():
            path = Path(gone["checkpoint_dir"] or "/").resolve()
            if path.parent == root and path.name == gone["id"]:
                await asyncio.to_thread(shutil.rmtree, path, ignore_errors=True)

    async def _retry(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        """`_retry`, recording the outage (the run's clock stops while Redis is away)."""
        return await _retry(fn, *args, outage=self.outage, **kwargs)

    # --------------------------------------------------------------- one problem
    async def _run_entry(self, entry: Entry, slot: int) -> None:
        """Run one queue entry in `slot` (given back when it ends)."""
        try:
            await self._run_in_slot(entry, slot)
        except Exception:  # a bug in ours: the other runs go on, the entry is redelivered
            log.exception("worker %s: running %s failed", self.name, entry.problem_id)
        finally:
            self._free_slots.append(slot)

    async def _run_in_slot(self, entry: Entry, slot: int) -> None:
        from sdpo_core.solve import solve

        store, pid = self.store, entry.problem_id
        row = await self._retry(store.get_problem, pid)
        if row is None or row.get("status") in TERMINAL:
            await self._retry(self.queue.ack, entry.entry_id)
            return
        if entry.claimed:
            deliveries = await self._retry(self.queue.deliveries, entry.entry_id)
            if deliveries > self.settings.max_deliveries:
                error = f"abandoned: {deliveries - 1} workers died running it"
                await self._finish(pid, "", "failed", {"error": error}, {"error": error})
                await self._retry(self.queue.ack, entry.entry_id)
                return
        if row.get("cancel_requested") == "1":
            await self._cancelled(pid, "", row)
            await self._retry(self.queue.ack, entry.entry_id)
            return

        owner = f"{self.name}:{uuid.uuid4().hex[:12]}"
        outcome = await self._retry(
            store.transition,
            pid,
            "running",
            event="status",
            data={"status": "running", "worker": self.name, "resumed": entry.claimed},
            fields={
                "owner": owner,
                "worker": self.name,
                "started_at": row.get("started_at") or f"{time.time():.6f}",
            },
        )
        if outcome != "ok":
            await self._retry(self.queue.ack, entry.entry_id)
            return
        job = self.jobs[pid] = _Job(entry, pid, owner, slot)
        log.info(
            "worker %s: running %s in slot %d (resumed=%s)", self.name, pid, slot, entry.claimed
        )
        spec = ProblemSpec.from_stored(row["spec"])  # validated at submit
        writer = _Writer(self, job)

        def stopping() -> bool:
            return self._stop.is_set() or job.lost or job.cancel

        def should_stop() -> bool:  # the solve thread, between phases: no Redis round trip
            while self.outage.is_down and not stopping():
                time.sleep(0.1)  # Redis away: pause here (the budget clock stands still)
            return stopping()

        try:
            run = functools.partial(
                solve,
                spec,
                self.runtime.for_slot(slot),
                on_event=writer.put,
                checkpoint_dir=row["checkpoint_dir"],
                should_stop=should_stop,
                clock=self.outage.clock,
            )
            loop = asyncio.get_running_loop()
            result: SolveResult = await loop.run_in_executor(self._solvers, run)
        except Exception as exc:  # solve reports its own errors; this is a bug in ours
            log.exception("worker %s: solve raised", self.name)
            result = SolveResult("failed", False, 0, None, None, 0.0, 0, 0.0, 0, repr(exc))
        finally:
            self.jobs.pop(pid, None)
            await writer.close()
        await self._after(job, result)
        self.problems_done += 1

    async def _after(self, job: _Job, result: SolveResult) -> None:
        pid, owner, entry = job.pid, job.owner, job.entry
        if job.lost:  # someone else owns it now: leave their queue entry alone
            log.warning("worker %s: %s was taken over; dropping", self.name, pid)
            return
        if result.status == "stopped":
            if self._stop.is_set():  # shutdown: hand the problem back
                await self._retry(
                    self.queue.requeue,
                    problem_key=self.store.problem_key(pid),
                    queued_key=self.store.key("queued"),
                    events_key=self.store.events_key(pid),
                    entry=entry,
                    owner=owner,
                    now=time.time(),
                )
                log.info("worker %s: handed %s back to the queue", self.name, pid)
                return
            row = await self._retry(self.store.get_problem, pid) or {}
            await self._cancelled(pid, owner, row)
        else:  # normally the terminal event already did this; make sure
            fields = {
                "attempts": result.attempts,
                "steps": result.steps,
                "error": result.error if result.status == "failed" else None,
            }
            data = {"error": result.error, "attempts": result.attempts, "steps": result.steps}
            await self._finish(pid, owner, result.status, fields, data)
        await self._retry(self.queue.ack, entry.entry_id)

    async def _cancelled(self, pid: str, owner: str, row: dict[str, str]) -> None:
        data = {"attempts": int(row.get("attempts") or 0), "steps": int(row.get("steps") or 0)}
        await self._finish(pid, owner, "cancelled", {}, data)

    async def _finish(
        self, pid: str, owner: str, status: str, fields: dict[str, Any], data: dict[str, Any]
    ) -> str:
        row = await self._retry(self.store.get_problem, pid) or {}
        outcome = await self._retry(
            self.store.transition,
            pid,
            status,
            owner=owner,
            event=status,
            data=data,
            fields=fields,
        )
        if outcome == "ok":  # counted and logged by the one writer that finished it
            started = row.get("started_at")
            seconds = time.time() - float(started) if started else None
            self.metrics.finished(status, seconds)
            error = str(data.get("error") or "").strip().splitlines()[:1]  # one line per event
            log.log(
                logging.WARNING if status == "failed" else logging.INFO,
                "worker %s: %s %s after %s attempts, %s steps%s%s",
                self.name,
                pid,
                status,
                data.get("attempts", "?"),
                data.get("steps", "?"),
                f", {seconds:.1f} s" if seconds is not None else "",
                f": {error[0]}" if status == "failed" and error else "",
            )
        return outcome

    async def _publish(self, job: _Job, event: SolveEvent) -> str:
        """Write one solve event to Redis (deduplicated, fenced by the owner token)."""
        store, pid, owner = self.store, job.pid, job.owner
        data = event.model_dump(exclude={"kind"})  # the event as the contract declares it
        if isinstance(event, AttemptPayload):
            v = event.verdict
            record = {
                "index": event.index,
                "step": event.step,
                "text": event.text,
                "passed": v.passed,
                "score": v.score,
                "feedback": v.feedback,
                "num_tokens": event.num_tokens,
                "created_at": round(time.time(), 6),
            }
            outcome = await self._retry(
                store.record,
                pid,
                owner=owner,
                counter="last_attempt_index",
                seq=event.index,
                event="attempt",
                data=data,
                record=record,
                score=v.score,
                fields={"attempts": event.index},
            )
            if outcome in _WRITTEN:  # a replayed attempt ('dup') is not counted again
                self.metrics.attempt(v.passed, "verifier_error" in v.details)
            return outcome
        if isinstance(event, StepPayload):
            outcome = await self._retry(
                store.record,
                pid,
                owner=owner,
                counter="last_step",
                seq=event.step,
                event="step",
                data=data,
                fields={"steps": event.step, "adapter_version": event.adapter_version},
            )
            if outcome in _WRITTEN:
                self.metrics.step(event.metrics)
            return outcome
        if isinstance(event, SolvedPayload):
            fields = {
                "solution": event.solution,
                "solved_attempt": event.attempt_index,
                "attempts": event.attempts,
                "steps": event.steps,
            }
            return await self._finish(pid, owner, "solved", fields, data)
        if isinstance(event, ExhaustedPayload):
            fields = {
                "exhausted_reason": event.reason,
                "attempts": event.attempts,
                "steps": event.steps,
            }
            return await self._finish(pid, owner, "exhausted", fields, data)
        if isinstance(event, FailedPayload):
            fields = {"error": event.error, "attempts": event.attempts, "steps": event.steps}
            return await self._finish(pid, owner, "failed", fields, data)
        raise TypeError(f"unknown event {event!r}")


async def _retry(fn: Any, *args: Any, outage: Outage | None = None, **kwargs: Any) -> Any:
    """Call `fn` until Redis answers (however long a Redis restart takes)."""
    delay = 0.2
    while True:
        try:
            result = await fn(*args, **kwargs)
        except _TRANSIENT as exc:
            if outage is not None:
                outage.down()
            log.warning("redis unavailable (%s); retrying in %.1fs", exc, delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5.0)
            continue
        if outage is not None:
            outage.up()
        return result


def run_worker(
    settings: Settings,
    *,
    model_path: str | None,
    engine: str = "hf",
    vllm_url: str | None = None,
    device: str | None = None,
    name: str | None = None,
    model_name: str | None = None,
    metrics_port: int | None = None,
    concurrency: int | None = None,
) -> int:
    """`sdpo worker`: run until SIGTERM/SIGINT, then hand the current problems back."""
    worker = Worker(
        settings,
        model_path=model_path,
        model_name=model_name,
        engine=engine,
        vllm_url=vllm_url,
        device=device,
        name=name,
        metrics_port=metrics_port,
        concurrency=concurrency,
    )

    async def main() -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, worker.stop)
        await worker.run()

    asyncio.run(main())
    return 0
