"""The worker: claims tasks in batches, runs them concurrently, reports outcomes.

- Fills every free slot with one claim; loops at once while work exists
  (claiming.py: the claim loop, prefetch and slots).
- Completions are group-committed: tasks finishing together share one transaction
  (status, results, events); a caller learns of a completion after its commit.
- Leases are renewed by heartbeat; a task whose lease was lost is stopped and
  its outcome discarded (the database rejects it anyway).
- Timeouts, retries with backoff, cancellation, callbacks, graceful shutdown.
- Optionally runs the scheduler and the maintenance sweeps.
"""

from __future__ import annotations

import asyncio
import collections
import gc
import inspect
import logging
import os
import signal
import socket
import threading
import time
from collections.abc import Iterable, Sequence
from datetime import datetime, timedelta
from typing import Any, TypeVar

from omniq._time import new_id, to_timedelta
from omniq.errors import (
    LeaseLost,
    SerializationError,
    UnsafePayload,
)
from omniq.group_commit import GroupCommit
from omniq.models import Task, TaskResult, TaskStatus
from omniq.models.rules import check_worker_options, queue_names
from omniq.services.events import EventStorage
from omniq.services.maintenance import Maintenance
from omniq.services.queue import ErrorInfo, Start, TaskQueue
from omniq.services.results import ResultStorage
from omniq.services.scheduler import Scheduler
from omniq.services.workers import WorkerRegistry
from omniq.task_context import _current
from omniq.tracing import attempt_trace
from omniq.worker import logs
from omniq.worker.background import TaskTimeout
from omniq.worker.claiming import Claiming
from omniq.worker.executors import Executor
from omniq.worker.heap import freeze_startup_heap
from omniq.worker.metering import WorkerMetricsHook
from omniq.worker.outcomes import _needs_durable_start, _Running
from omniq.worker.progress import ProgressReporter
from omniq.worker.registry import TaskRegistry, default_registry
from omniq.worker.stats import WorkerStats

log = logging.getLogger("omniq.worker")

__all__ = ["Worker", "WorkerStats"]

T = TypeVar("T")


def default_worker_id() -> str:
    """A new worker id: ``host:pid:random``."""
    return f"{socket.gethostname()}:{os.getpid()}:{new_id()[-8:]}"


class Worker(Claiming):
    """Runs tasks from a :class:`TaskQueue`: async functions on the loop, sync ones in threads.

    ``executor="process"`` runs sync functions in child processes instead
    (CPU-bound work; a timeout kills the process). ``metrics`` (an
    :class:`omniq.metrics.WorkerMetrics`) counts attempts, outcomes and their
    durations for Prometheus. ``gc_freeze=True`` (what ``omniq worker`` does):
    before its first claim the worker collects garbage once, freezes what is
    alive out of the garbage collector's walk and raises the youngest
    generation's threshold, once per process (see :mod:`omniq.worker.heap`);
    off by default for a worker in a process of
    yours, whose garbage collector is yours.
    """

    def __init__(
        self,
        task_queue: TaskQueue,
        result_storage: ResultStorage | None = None,
        event_storage: EventStorage | None = None,
        *,
        worker_id: str | None = None,
        queues: Sequence[str] | None = None,
        concurrency: int | None = None,
        max_workers: int | None = None,
        poll_interval: timedelta | float = 1.0,
        executor: str = "async",
        registry: TaskRegistry | None = None,
        allow_modules: Iterable[str] = (),
        prefetch: int | None = None,
        grace_period: timedelta | float = 30.0,
        run_scheduler: bool = True,
        run_maintenance: bool = True,
        maintenance_interval: timedelta | float = 30.0,
        scheduler_interval: timedelta | float = 1.0,
        metrics: WorkerMetricsHook | None = None,
        gc_freeze: bool = False,
    ) -> None:
        self.queue = task_queue
        self.storage = task_queue.storage
        self.settings = self.storage.settings
        self.results = result_storage or ResultStorage(self.storage)
        self.events = event_storage or EventStorage(self.storage)
        self.worker_registry = WorkerRegistry(self.storage)
        self._registered_at: datetime | None = None
        self.worker_id = worker_id or default_worker_id()
        #: Set by stop_for_exit: the process ends after this worker stops.
        self._exiting = False
        self.queues = queue_names(queues) or task_queue.queues
        slots = concurrency if concurrency is not None else max_workers
        self.concurrency = slots if slots is not None else 10
        check_worker_options(
            self.settings,
            {
                "concurrency": self.concurrency,
                "prefetch": prefetch,
                "poll_interval": poll_interval,
                "maintenance_interval": maintenance_interval,
                "scheduler_interval": scheduler_interval,
                "grace_period": grace_period,
                "gc_freeze": gc_freeze,
                "worker_id": worker_id,
                "metrics": metrics,
                "allow_modules": allow_modules,
            },
        )
        self.poll_interval = to_timedelta(poll_interval, "poll_interval").total_seconds()
        #: Tasks claimed beyond the free slots; None: adapt to how fast tasks finish.
        self.prefetch = prefetch
        self._mean_run: float | None = None  # moving average of function run times (s)
        self.grace_period = to_timedelta(grace_period, "grace_period").total_seconds()
        parents = (registry, default_registry) if registry is not None else (default_registry,)
        self.registry = TaskRegistry(allow_modules, parents=parents)
        self.executor = Executor(executor, self.concurrency)
        self.run_scheduler = run_scheduler
        #: Freeze the process's start-up heap before the first claim (see omniq.worker.heap).
        self.gc_freeze = gc_freeze
        self.run_maintenance = run_maintenance
        self.maintenance_interval = to_timedelta(
            maintenance_interval, "maintenance_interval"
        ).total_seconds()
        self.scheduler_interval = to_timedelta(
            scheduler_interval, "scheduler_interval"
        ).total_seconds()
        self.scheduler = Scheduler(self.storage, task_queue)
        #: Told of every attempt (omniq.metrics.WorkerMetrics); None: metrics off, no per-task work.
        self.metrics = metrics
        if metrics is not None:
            metrics.attach(self)
        self.maintenance = Maintenance(
            self.storage,
            task_queue,
            self.results,
            self.events,
            owner=self.worker_id,
            lease=timedelta(seconds=max(60.0, 3 * self.maintenance_interval)),
        )
        self._running: dict[str, _Running] = {}
        #: Attempts whose outcome write is still being retried while a later attempt
        #: of the same task runs (the earlier write landed though it raised).
        self._superseded: set[_Running] = set()
        #: Tasks whose function is running (holding a slot); the others in
        #: ``_running`` only wait for their outcome's commit.
        self._executing = 0
        #: Of those, sync functions run in the thread pool (``_Running.pooled``).
        self._pooled_slots = 0
        #: The claim loop claims once this many tasks can be taken.
        self._claim_batch = 1
        self._buffer: list[Task] = []
        self._pending_events: list[dict[str, Any]] = []
        #: Leases (task id, token) whose outcome write raised and is being retried.
        self._rewrites: set[tuple[str, str | None]] = set()
        #: ``executing`` events of pool calls, appended by the threads that start them.
        self._started_events: collections.deque[dict[str, Any]] = collections.deque()
        #: Tasks whose function started, to be marked in the next transaction
        #: (appended by the loop and by pool threads).
        self._starts: collections.deque[Start] = collections.deque()
        #: Set once shutdown's grace period is over: outcome writes stop retrying.
        self._abandon_writes = False
        #: Function reference -> True for a sync function (resolved ones only).
        self._sync_refs: dict[str, bool] = {}
        #: Orders a pool thread starting a queued call against shutdown withdrawing it.
        self._start_lock = threading.Lock()
        #: One lease-protocol write (outcomes, heartbeat, release) at a time: on
        #: PostgreSQL a heartbeat and a completion locking the same task rows in
        #: different orders would deadlock (and wait out ``deadlock_timeout``).
        self._lease_writes = asyncio.Lock()
        self._completions: GroupCommit[tuple[Task, Any, float], TaskStatus | None] = GroupCommit(
            self._flush_completions
        )
        self._failures: GroupCommit[tuple[Task, ErrorInfo, bool, float], TaskStatus | None] = (
            GroupCommit(self._flush_failures)
        )
        self._stopping = False
        #: Why the worker stops (the shutdown log line).
        self._stop_reason = "stop requested"
        self._main: asyncio.Task[None] | None = None
        self._background: list[asyncio.Task[None]] = []
        self._winding_down = asyncio.Event()  # scheduler and maintenance loops: stop
        self._tasks_settled = asyncio.Event()  # heartbeat loop: stop
        self._loop: asyncio.AbstractEventLoop | None = None
        self._started_at: float | None = None
        #: Outcomes of tasks run through process_task_async (only those: no growth).
        self._outcome: dict[str, TaskStatus | None] = {}
        self._counts = {"completed": 0, "failed": 0, "retried": 0, "cancelled": 0, "lost": 0}
        #: Progress reported by running tasks (omniq.current_task().progress()).
        self._progress = ProgressReporter(self.storage)

    # --- lifecycle -------------------------------------------------------------

    @property
    def is_running(self) -> bool:
        """True while started with :meth:`start_async` and not stopped."""
        return self._main is not None and not self._main.done()

    async def start_async(self) -> None:
        """Start working in the background of the running event loop."""
        if self._main is not None and not self._main.done():
            return
        self._reset_stop()  # before the task starts: a stop requested meanwhile holds
        self._main = asyncio.get_running_loop().create_task(self._run(burst=False))

    def _reset_stop(self) -> None:
        self._stopping = False
        self._stop_reason = "stop requested"

    async def run_async(self, *, install_signal_handlers: bool = False) -> None:
        """Work until :meth:`stop_async` (or SIGTERM/SIGINT when handlers are installed)."""
        await self._run_handling_signals(burst=False, handlers=install_signal_handlers)

    async def run_until_complete_async(
        self, *, install_signal_handlers: bool = False
    ) -> WorkerStats:
        """Burst mode: run until no task is ready and none is running; return the stats.

        With ``install_signal_handlers``, SIGTERM/SIGINT stop it as they stop
        :meth:`run_async` (its tasks released or finished, not left to their leases).
        """
        await self._run_handling_signals(burst=True, handlers=install_signal_handlers)
        return self.get_stats()

    async def _run_handling_signals(self, *, burst: bool, handlers: bool) -> None:
        loop = asyncio.get_running_loop()
        self._reset_stop()  # before the handlers: a signal from then on is not forgotten
        if handlers:
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(sig, self.stop_for_exit, f"{sig.name} received")
        try:
            await self._run(burst=burst)
        finally:
            if handlers:
                for sig in (signal.SIGTERM, signal.SIGINT):
                    loop.remove_signal_handler(sig)

    def get_stats(self) -> WorkerStats:
        """Counters of this worker since it started."""
        uptime = time.monotonic() - self._started_at if self._started_at else 0.0
        return WorkerStats(
            worker_id=self.worker_id,
            running=len(self._running),
            uptime=uptime,
            queues=tuple(self.queues) if self.queues else None,
            concurrency=self.concurrency,
            executor=self.executor.kind,
            **self._counts,
        )

    async def get_stats_async(self) -> WorkerStats:
        """Counters of this worker since it started (async twin of :meth:`get_stats`)."""
        return self.get_stats()

    def running_per_queue(self) -> dict[str, int]:
        """How many task functions run now, per queue (read it on the worker's event loop)."""
        counts: dict[str, int] = {}
        for entry in list(self._running.values()):
            if entry.slot and entry.started is not None:
                queue = entry.task.queue_name
                counts[queue] = counts.get(queue, 0) + 1
        return counts

    # --- the loop ----------------------------------------------------------------

    async def _run(self, *, burst: bool) -> None:
        # A worker cannot work on closed services: it says so instead of idling.
        self.storage.check_open()
        self._loop = asyncio.get_running_loop()
        self._abandon_writes = False
        self._started_at = time.monotonic()
        self.storage.notifier.cancel_listeners.add(self._on_cancel_requested)
        await self._register(burst=burst)
        if self.gc_freeze:
            freeze_startup_heap()
        if log.isEnabledFor(logging.INFO):
            logs.started(
                worker_id=self.worker_id,
                url=self.storage.engine.url.render_as_string(hide_password=True),
                queues=self.queues,
                concurrency=self.concurrency,
                executor=self.executor.kind,
                prefetch=self.prefetch,
                burst=burst,
                scheduler=self.run_scheduler,
                maintenance=self.run_maintenance,
                gc_frozen=gc.get_freeze_count() if self.gc_freeze else None,
            )
        self._winding_down = asyncio.Event()
        self._tasks_settled = asyncio.Event()
        self._background = [
            self._loop.create_task(self._heartbeat_loop()),
            self._loop.create_task(self._cancel_watch_loop()),
        ]
        if self.run_maintenance:
            self._background.append(self._loop.create_task(self._maintenance_loop()))
        if self.run_scheduler:
            if burst:
                await self._fire_schedules()
            else:
                self._background.append(self._loop.create_task(self._scheduler_loop()))
        try:
            # Other processes' new work wakes this worker (polling stays on).
            async with self.storage.listen_for_work(self.queues, self._has_room):
                await self._claim_loop(burst)
        finally:
            if self._stopping:
                reason = self._stop_reason
            else:
                reason = "burst: no task left" if burst else "worker cancelled"
            logs.shutting_down(self.worker_id, reason, len(self._running), self.grace_period)
            await self._shutdown()
            logs.stopped(self.get_stats())

    # --- one task ---------------------------------------------------------------------

    def stop_for_exit(self, reason: str = "stopping for the process to exit") -> None:
        """Ask the worker to stop (as :meth:`stop_async`, without waiting) because the
        process is about to exit (SIGTERM, SIGINT): past the grace period, tasks whose
        sync functions still run in a thread are released too, as those threads end
        with the process. Thread-safe (it sets flags and wakes the worker)."""
        self._exiting = True
        self._request_stop(reason)

    async def process_task_async(self, task: Task) -> TaskResult | None:
        """Run one task claimed for this call (``dequeue_async``) to its outcome; its result.

        The task must be running under the lease ``task`` holds: anything else
        (pending, finished, never enqueued, claimed since by another) raises
        :class:`~omniq.errors.LeaseLost` before the function runs. Returns the
        stored result once the task is final (None when it keeps none, or was
        retried: it is pending again).
        """
        current = await self.queue.get_task_async(task.id)
        if (
            current is None
            or current.status is not TaskStatus.RUNNING
            or task.lease_token is None
            or current.lease_token != task.lease_token
        ):
            state = "not enqueued" if current is None else current.status.value
            raise LeaseLost(
                f"task {task.id} is not running under this record's lease ({state}): "
                "process_task runs a task claimed with dequeue_async"
            )
        status = await self.run_claimed_async(task)
        if status is None or not status.is_final:
            return None
        return await self.results.get_async(task.id)

    async def run_claimed_async(self, task: Task) -> TaskStatus | None:
        """Run one task this process claimed (running, under ``task``'s lease) to its
        outcome, unchecked; the resulting status (None: the lease was lost)."""
        entry = self._running.setdefault(task.id, _Running(task=task, pooled=self._sync_call(task)))
        self._take_slot(entry)
        self._outcome[task.id] = None
        try:
            await self._execute(entry)
        finally:
            status = self._outcome.pop(task.id, None)
        return status

    async def _execute(self, entry: _Running) -> None:
        started = time.perf_counter()
        entry.trace = attempt_trace(self.worker_id)  # None unless tracing is on
        try:
            try:
                # Recovered before: its start is committed before it runs again, so
                # a task that kills its worker is counted (crash budget). If the mark
                # does not land under this lease, the task is not run.
                if (
                    _needs_durable_start(entry.task)
                    and not entry.cancel_requested
                    and not await self._mark_started_durably(entry)
                ):
                    entry.lost = True
                    raise asyncio.CancelledError
                if not entry.pooled and not entry.cancel_requested:
                    entry.started = started
                    self._mark_start(entry)
                outcome = await self._call(entry)
            finally:
                self._free_slot(entry)
                if entry.started is not None:
                    started = entry.started
                    ran = time.perf_counter() - started
                    mean = self._mean_run
                    self._mean_run = ran if mean is None else mean + (ran - mean) * 0.1
                    if self.metrics is not None:
                        self.metrics.attempt_ended(entry.task, ran)
        except asyncio.CancelledError as exc:
            task = entry.task
            if (
                entry.releasing
                and entry.in_thread
                and entry.started is not None
                and not self._exiting
            ):
                # A sync function began in a pool thread, which cannot be stopped,
                # and this process goes on: released, the task would run again
                # beside it. It stays running under its lease (no longer renewed);
                # once that expires, lease recovery runs it again (as after a
                # crash). A process that exits (a signal) ends the thread with it.
                entry.outcome = "left running"
                logs.left_running(self.worker_id, task)
            elif entry.releasing:
                entry.outcome = "released"
                events = self._take_events()
                released = self.queue.release_async(task, worker_id=self.worker_id, events=events)
                if await self._guard(self._in_turn(released)) is None:
                    self._restore(events, [])  # written with the next transaction instead
            elif entry.cancel_requested:
                await self._cancelled(entry)
            elif entry.lost:
                self._counts["lost"] += 1
            elif not _being_cancelled():
                # The function raised CancelledError itself: its attempt failed.
                await self._failed(entry, exc, time.perf_counter() - (entry.started or started))
            else:
                raise
        except BaseException as exc:
            elapsed = time.perf_counter() - (entry.started or started)
            if entry.lost:
                self._counts["lost"] += 1
            else:
                await self._failed(entry, exc, elapsed)
        else:
            elapsed = time.perf_counter() - (entry.started or started)
            if entry.lost:
                self._counts["lost"] += 1
            elif entry.cancel_requested:
                await self._cancelled(entry)
            else:
                await self._succeeded(entry, outcome, elapsed)
        finally:
            if entry.trace is not None:
                entry.trace.end(entry.outcome, entry.error)
            self._free_slot(entry)
            # Only this attempt's own entry: its retry (the same task id) may
            # already be claimed and running while this attempt's outcome was
            # being written.
            if self._running.get(entry.task.id) is entry:
                del self._running[entry.task.id]
            self._superseded.discard(entry)
            if not self._running and not self._superseded:
                self.storage.notifier.notify()  # burst mode ends on an empty worker

    async def _call(self, entry: _Running) -> Any:
        task = entry.task
        if entry.cancel_requested or entry.lost or entry.releasing:
            raise asyncio.CancelledError
        if task.payload_error is not None:
            kind = UnsafePayload if "UnsafePayload" in task.payload_error else SerializationError
            raise kind(task.payload_error)
        func = self.registry.resolve(task.func)
        if entry.pooled and entry.trace is not None:
            func = entry.trace.bind(func)  # the span is current in the pool thread too
        timeout = task.timeout.total_seconds() if task.timeout else None
        on_start = None
        if entry.pooled:

            def on_start() -> None:  # in the pool thread, just before the function runs
                with self._start_lock:
                    if entry.releasing or entry.cancel_requested or entry.lost:
                        raise asyncio.CancelledError  # withdrawn while waiting: never runs
                    entry.started = time.perf_counter()
                self._mark_start(entry)

        # Tracing, process executor: the child makes the attempt's span current.
        carrier = None
        if entry.trace is not None and not self.executor.pools_sync_calls:
            carrier = entry.trace.carrier()
        entry.in_call = True
        entry.in_thread = self.executor.pools_sync_calls and not inspect.iscoroutinefunction(func)
        # omniq.current_task() inside the function (its attempt counts the start).
        attempt = task.attempts if task.started_at is not None else task.attempts + 1
        current = _current.set(self._progress.current(task, attempt))
        try:
            return await self.executor.run(
                func, task.func, task.func_args, task.func_kwargs, timeout, on_start, carrier
            )
        except TimeoutError as exc:
            raise TaskTimeout(f"task timed out after {timeout:g}s") from exc
        finally:
            entry.in_call = False
            _current.reset(current)
            if self._progress.has_pending(task.id) and not entry.lost:
                await self._progress.flush_task(task.id)  # its last report, before the outcome


def _being_cancelled() -> bool:
    """True when this asyncio task was asked to stop (not a CancelledError raised by code)."""
    current = asyncio.current_task()
    return current is not None and current.cancelling() > 0
