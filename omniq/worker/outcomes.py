"""How a worker writes what happened: outcomes, start marks, events, errors.

A finished task's outcome is written by group commit (completions and
failures each share transactions), retried while the database refuses it
and the task's lease holds; start marks and ``executing`` events are
buffered and written with the next transaction. :class:`OutcomeWriting` is
the part of :class:`~omniq.worker.Worker` that does this.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import inspect
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any, TypeVar, cast

import attrs

from omniq.errors import (
    DatabaseClosed,
    DatabaseError,
    SerializationError,
    TaskNotFound,
    ValidationError,
)
from omniq.group_commit import GroupCommit
from omniq.models import EventLevel, EventType, Task, TaskStatus
from omniq.models.task import task_started
from omniq.services import event_row, maybe_written
from omniq.services._storage import Storage
from omniq.services.queue import ErrorInfo, Start, TaskQueue
from omniq.worker import logs
from omniq.worker.executors import Executor, RemoteError
from omniq.worker.metering import WorkerMetricsHook, outcome_of
from omniq.worker.registry import TaskRegistry

if TYPE_CHECKING:
    from omniq._otel_spans import AttemptTrace

log = logging.getLogger("omniq.worker")

T = TypeVar("T")


@attrs.define(eq=False)  # identity: an attempt, kept in sets
class _Running:
    task: Task
    handle: asyncio.Task[None] | None = None
    cancel_requested: bool = False
    lost: bool = False
    releasing: bool = False
    #: True while the task's function runs: only then may it be cancelled (never
    #: while its outcome is being written, which would break the transaction).
    in_call: bool = False
    #: The function runs in a pool thread, which cannot be stopped (a sync function,
    #: thread or async executor).
    in_thread: bool = False
    #: True until the function has returned: the task holds one of the
    #: ``concurrency`` slots; its outcome is then written without holding one.
    slot: bool = False
    #: A sync function run in the thread pool: its ``executing`` event is
    #: logged (and its run time measured) when a thread starts it.
    pooled: bool = False
    #: ``time.perf_counter()`` when the function started (None: not yet).
    started: float | None = None
    #: Tracing: the attempt's span (None: tracing is off), how the attempt ended
    #: (succeeded, retried, failed, cancelled, lost, released) and its error.
    trace: AttemptTrace | None = None
    outcome: str | None = None
    error: BaseException | None = None


class OutcomeWriting:
    """Writes outcomes, start marks and events for a worker (a part of :class:`Worker`)."""

    queue: TaskQueue
    storage: Storage
    worker_id: str
    registry: TaskRegistry
    executor: Executor
    queues: list[str] | None
    concurrency: int
    metrics: WorkerMetricsHook | None
    _counts: dict[str, int]
    _outcome: dict[str, TaskStatus | None]
    _pending_events: list[dict[str, Any]]
    _rewrites: set[tuple[str, str | None]]
    _started_events: collections.deque[dict[str, Any]]
    _starts: collections.deque[Start]
    _abandon_writes: bool
    _completions: GroupCommit[tuple[Task, Any, float], TaskStatus | None]
    _failures: GroupCommit[tuple[Task, ErrorInfo, bool, float], TaskStatus | None]
    _lease_writes: asyncio.Lock

    async def _in_turn(self, write: Awaitable[T]) -> T:
        """Await ``write`` (a lease-protocol write of this worker) after the one before it."""
        try:
            async with self._lease_writes:
                return await write
        except BaseException:
            # Cancelled while waiting its turn: the write never began (nothing was
            # written); closed, it is not reported as a coroutine never awaited.
            if inspect.iscoroutine(write) and inspect.getcoroutinestate(write) == "CORO_CREATED":
                write.close()
            raise

    async def _succeeded(self, entry: _Running, result: Any, elapsed: float) -> None:
        task = entry.task
        try:
            status = await self._write_outcome(
                entry, lambda: self._completions.submit((entry.task, result, elapsed))
            )
        except (SerializationError, ValidationError) as exc:
            # The result cannot be stored (here or by this database): the task fails.
            await self._failed(entry, exc, elapsed)
            return
        if status is None:
            self._counts["lost"] += 1
            return
        if status is TaskStatus.CANCELLED:
            # Its cancel was requested while it ran (from elsewhere): result dropped.
            self._settle_cancelled(entry)
            return
        entry.outcome = "succeeded"
        self._counts["completed"] += 1
        if log.isEnabledFor(logging.INFO):
            logs.task_succeeded(self.worker_id, task, elapsed)
        self._settle(task.id, TaskStatus.COMPLETED)
        if self.metrics is not None:
            self.metrics.attempt_settled(task, "completed")
        if task.callback:
            await self._run_callback(task, result)

    async def _flush_completions(
        self, items: list[tuple[Task, Any, float]]
    ) -> list[TaskStatus | None]:
        return await _in_rounds(items, self._flush_completion_round)

    async def _flush_completion_round(
        self, items: list[tuple[Task, Any, float]]
    ) -> list[TaskStatus | None]:
        events, starts = self._take_buffered()
        try:
            return await self._in_turn(
                self.queue.settle_completions_async(
                    items,
                    worker_id=self.worker_id,
                    rewrites=self._rewrites_of([task for task, _, _ in items]),
                    events=events,
                    starts=_with_own_starts(starts, [task for task, _, _ in items]),
                )
            )
        except BaseException:
            self._restore(events, starts)
            raise

    async def _flush_failures(
        self, items: list[tuple[Task, ErrorInfo, bool, float]]
    ) -> list[TaskStatus | None]:
        return await _in_rounds(items, self._flush_failure_round)

    async def _flush_failure_round(
        self, items: list[tuple[Task, ErrorInfo, bool, float]]
    ) -> list[TaskStatus | None]:
        events, starts = self._take_buffered()
        try:
            return await self._in_turn(
                self.queue.fail_many_async(
                    items,
                    worker_id=self.worker_id,
                    rewrites=self._rewrites_of([task for task, *_ in items]),
                    events=events,
                    starts=_with_own_starts(starts, [task for task, *_ in items]),
                )
            )
        except BaseException:
            self._restore(events, starts)
            raise

    async def _failed(self, entry: _Running, exc: BaseException, elapsed: float) -> None:
        info = _error_info(exc)
        retry = not isinstance(exc, TaskNotFound | SerializationError)
        entry.error = exc

        try:
            status = await self._write_outcome(
                entry, lambda: self._failures.submit((entry.task, info, retry, elapsed))
            )
        except (SerializationError, ValidationError) as exc:
            await self._report_error(f"the failure of task {entry.task.id} cannot be stored", exc)
            status = None
        entry.outcome = "lost" if status is None else _FAILED_OUTCOMES.get(status, "lost")
        if status is TaskStatus.PENDING:
            self._counts["retried"] += 1
        elif status is TaskStatus.FAILED:
            self._counts["failed"] += 1
        elif status is TaskStatus.CANCELLED:
            self._counts["cancelled"] += 1
        elif status is None:
            self._counts["lost"] += 1
        if status is not None:
            logs.task_failed(self.worker_id, entry.task, info, status, elapsed)
            self._settle(entry.task.id, status)
            if self.metrics is not None:
                outcome = outcome_of(status)
                if outcome is not None:
                    self.metrics.attempt_settled(entry.task, outcome)

    async def _cancelled(self, entry: _Running) -> None:
        async def write() -> bool:
            events, starts = self._take_buffered()
            try:
                # In turn: a flush that took this task's start commits first.
                return await self._in_turn(
                    self.queue.cancel_running_async(
                        entry.task,
                        worker_id=self.worker_id,
                        events=events,
                        starts=_with_own_starts(starts, [entry.task]),
                    )
                )
            except BaseException:
                self._restore(events, starts)
                raise

        try:
            cancelled = await self._write_outcome(entry, write)
        except (SerializationError, ValidationError) as exc:
            await self._report_error(f"the cancel of task {entry.task.id} cannot be stored", exc)
            cancelled = None
        if cancelled:
            self._settle_cancelled(entry)
        else:
            self._counts["lost"] += 1

    def _settle_cancelled(self, entry: _Running) -> None:
        """Count and log an attempt that ended cancelled."""
        entry.outcome = "cancelled"
        self._counts["cancelled"] += 1
        ran = None if entry.started is None else time.perf_counter() - entry.started
        logs.task_cancelled(self.worker_id, entry.task, ran)
        self._settle(entry.task.id, TaskStatus.CANCELLED)
        if self.metrics is not None:
            self.metrics.attempt_settled(entry.task, "cancelled")

    async def _write_outcome(self, entry: _Running, write: Callable[[], Awaitable[T]]) -> T | None:
        """Write a finished task's outcome, retrying until it lands or the lease is lost.

        The task stays in ``_running`` meanwhile, so heartbeats keep its lease
        alive; the write is fenced by the lease, so a retry never overwrites a
        task someone else now owns. Only database errors are retried (busy,
        unavailable, full, a lost connection); bad values (serialization,
        validation) are the caller's. Returns None when the write was given up
        (any other error, lease lost, or shutdown's grace period ended: lease
        recovery then decides).
        """
        delay = 0.05
        reported = False
        last_try = False
        lease = (entry.task.id, entry.task.lease_token)
        try:
            while True:
                try:
                    return await write()
                except (SerializationError, ValidationError):
                    raise
                except Exception as exc:
                    # Its next try may find what this one wrote (a commit that landed).
                    self._rewrites.add(lease)
                    if not await self._after_write_error(entry, exc, reported, last_try):
                        return None
                    last_try = last_try or entry.lost
                    reported = True
                await asyncio.sleep(delay)
                delay = min(delay * 2, 2.0)
        finally:
            self._rewrites.discard(lease)

    def _rewrites_of(self, tasks: Sequence[Task]) -> set[tuple[str, str | None]]:
        """The leases among ``tasks`` whose outcome write is a retry."""
        if not self._rewrites:
            return set()
        return {(t.id, t.lease_token) for t in tasks} & self._rewrites

    async def _after_write_error(
        self, entry: _Running, exc: Exception, reported: bool, last_try: bool
    ) -> bool:
        """Whether to try an outcome write again after ``exc`` (reported once)."""
        if not isinstance(exc, DatabaseError | OSError) or isinstance(exc, DatabaseClosed):
            log.error("task %s: outcome not written: %s", entry.task.id, exc)
            await self._report_error(f"writing the outcome of task {entry.task.id}", exc)
            return False
        # The lease looks gone, maybe because the failed try's commit landed after
        # all: one more try (fenced) learns which.
        if (entry.lost and last_try) or self._abandon_writes:
            log.error(
                "task %s: outcome not written (%s); left to lease recovery", entry.task.id, exc
            )
            return False
        if not reported:
            await self._report_error(
                f"writing the outcome of task {entry.task.id} failed; retrying", exc
            )
        return True

    async def _mark_started_durably(self, entry: _Running) -> bool:
        """Commit the task's start under its lease; False if it did not land (do not run)."""
        task = entry.task
        now = self.storage.now()
        started = (task.id, task.lease_token, now)
        try:
            marked = await self._write_outcome(
                entry, lambda: self.queue.mark_started_async([started])
            )
        except (SerializationError, ValidationError):
            return False
        if marked != 1:
            log.warning("task %s: its start could not be written under its lease; not run", task.id)
            return False
        entry.task = task_started(task, now)
        return True

    async def _run_callback(self, task: Task, result: Any) -> None:
        assert task.callback is not None
        try:
            callback = self.registry.resolve(task.callback)
            await self.executor.call(callback, result, *task.callback_args)
        except Exception as exc:
            log.warning("callback %s of task %s failed: %s", task.callback, task.id, exc)
            await self._log_event_now(
                EventType.CALLBACK_FAILED,
                task_id=task.id,
                queue_name=task.queue_name,
                level=EventLevel.WARNING,
                error=str(_error_info(exc)),
                message=f"callback {task.callback} failed; the task's outcome is unchanged",
            )

    def _settle(self, task_id: str, status: TaskStatus) -> None:
        if task_id in self._outcome:
            self._outcome[task_id] = status

    def _mark_start(self, entry: _Running) -> None:
        """The task's function starts now: buffer its start mark and ``executing`` event.

        Safe from a pool thread (deques); the record in ``entry`` is replaced
        by the started one (started_at, attempts + 1).
        """
        task = entry.task
        if task.started_at is None:
            now = self.storage.now()  # the clock outcomes are stamped with
            task = entry.task = task_started(task, now)
            self._starts.append((task.id, task.lease_token, now))
        if entry.trace is not None:  # tracing: the attempt's span starts with the function
            entry.trace.start(task, current=not entry.pooled)
        self._started_events.append(self._executing_event(task))
        if self.metrics is not None:
            self.metrics.attempt_started(task, self.storage.now())

    def _executing_event(self, task: Task) -> dict[str, Any]:
        return event_row(
            EventType.EXECUTING,
            task_id=task.id,
            queue_name=task.queue_name,
            schedule_id=task.schedule_id,
            worker_id=self.worker_id,
            retry_count=task.retry_count,
            data={"attempt": task.attempts},
        )

    def _take_events(self) -> list[dict[str, Any]]:
        """The buffered events (``executing``), to write with the next transaction."""
        events, self._pending_events = self._pending_events, []
        started = self._started_events
        while started:
            events.append(started.popleft())
        return events

    def _take_buffered(self) -> tuple[list[dict[str, Any]], list[Start]]:
        """The buffered events and start marks, to write with the next transaction."""
        starts = []
        while self._starts:
            starts.append(self._starts.popleft())
        return self._take_events(), starts

    def _restore(self, events: list[dict[str, Any]], starts: list[Start]) -> None:
        """Put back what a failed transaction took (it is written with the next one).

        Its commit may have landed all the same (a connection lost before the
        reply): the events are marked so that they are not written twice; a
        start is marked once whatever happens.
        """
        self._pending_events[:0] = [maybe_written(row) for row in events]
        self._starts.extendleft(reversed(starts))

    async def _guard(self, awaitable: Any) -> Any:
        """Await a database write; report (not raise) any error."""
        try:
            return await awaitable
        except Exception as exc:
            await self._report_error("database write failed", exc)
            return None

    # --- events -----------------------------------------------------------------------

    async def _log_event_now(self, kind: EventType, **fields: Any) -> None:
        row = event_row(kind, worker_id=self.worker_id, source="worker", **fields)
        try:
            await self.queue.heartbeat_async({}, [row])
        except Exception as exc:
            log.error("could not log %s event: %s", kind, exc)

    async def _report_error(self, what: str, exc: BaseException) -> None:
        log.error("%s: %s", what, exc)
        with contextlib.suppress(Exception):  # best effort: the database may be what failed
            await self.queue.heartbeat_async(
                {},
                [
                    event_row(
                        EventType.ERROR,
                        worker_id=self.worker_id,
                        source="worker",
                        level=EventLevel.ERROR,
                        message=what,
                        error=str(_error_info(exc)),
                    )
                ],
            )


#: A failed attempt's outcome, by the status its failure left the task in.
_FAILED_OUTCOMES = {
    TaskStatus.PENDING: "retried",
    TaskStatus.FAILED: "failed",
    TaskStatus.CANCELLED: "cancelled",
}


def _needs_durable_start(task: Task) -> bool:
    """A task recovered before (lease lost) is marked started in the database before it runs."""
    return task.lost_count > 0 and task.started_at is None


def _error_info(exc: BaseException) -> ErrorInfo:
    if isinstance(exc, RemoteError):
        return ErrorInfo(type=exc.type_name, message=str(exc), traceback=exc.remote_traceback)
    return ErrorInfo.from_exception(exc)


_Item = TypeVar("_Item", bound=tuple[Any, ...])


async def _in_rounds(
    items: list[_Item], flush: Callable[[list[_Item]], Awaitable[list[T]]]
) -> list[T]:
    """``flush`` the outcomes ``items`` (each led by its Task), in order; a task listed
    twice goes in a later round (a transaction of its own).

    That happens when an attempt's write is retried (it raised, and may have landed)
    while a later attempt of the same task finishes: the services match a batch's
    rows by task id, so each transaction holds one outcome per task.
    """
    if len({item[0].id for item in items}) == len(items):
        return await flush(items)
    rounds: list[list[int]] = []
    seen: list[set[str]] = []
    for i, item in enumerate(items):
        task_id = item[0].id
        for round_, ids in zip(rounds, seen, strict=True):
            if task_id not in ids:
                ids.add(task_id)
                round_.append(i)
                break
        else:
            rounds.append([i])
            seen.append({task_id})
    results: list[T | None] = [None] * len(items)
    for round_ in rounds:
        for i, result in zip(round_, await flush([items[i] for i in round_]), strict=True):
            results[i] = result
    return cast(list[T], results)


def _with_own_starts(starts: list[Start], tasks: Sequence[Task]) -> list[Start]:
    """``starts`` and the starts of ``tasks`` themselves (an outcome counts its own start).

    The buffered start of a task may ride with another transaction of this
    worker; writing it again here is harmless (a start is marked once, under
    its lease) and makes the outcome count it whichever commits first.
    """
    taken = {start[0] for start in starts}
    own = [
        (task.id, task.lease_token, task.started_at)
        for task in tasks
        if task.started_at is not None and task.id not in taken
    ]
    return [*starts, *own] if own else starts
