"""The task queue service: enqueue, claim, transitions, dependencies, schedules CRUD.

Every state change is one short write transaction that also writes its event
(DESIGN.md §2.1). Transitions after the claim are conditional on the expected
status and, for a worker, its lease token (§2.3).
"""

from __future__ import annotations

import asyncio
import logging
import random
import traceback
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any, Literal

import attrs
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from omniq._time import new_id, require_aware, to_timedelta, utcnow
from omniq.db.schema import tasks as t
from omniq.errors import (
    DuplicateTask,
    InvalidRow,
    InvalidTransition,
    ScheduleNotFound,
    TaskNotFound,
    ValidationError,
)
from omniq.models import (
    EventLevel,
    EventType,
    ResultStatus,
    Schedule,
    ScheduleStatus,
    Task,
    TaskResult,
    TaskStatus,
)
from omniq.repositories.events import event_row
from omniq.repositories.hot import Touched
from omniq.repositories.tasks import final_before
from omniq.serialization import callable_ref
from omniq.services import timing
from omniq.services._batch import GroupCommit
from omniq.services._storage import Storage

log = logging.getLogger("omniq.queue")

__all__ = ["ErrorInfo", "TaskQueue"]

_PENDING = frozenset({TaskStatus.PENDING})
_RUNNING = frozenset({TaskStatus.RUNNING})
_QUEUED = frozenset({TaskStatus.PENDING, TaskStatus.WAITING})
_DEAD = frozenset({TaskStatus.FAILED, TaskStatus.CANCELLED, TaskStatus.EXPIRED})
_EXPIRY_SWEEP_EVERY = 1.0
_SWEEP_BATCH = 500

#: Fields of a queued task that ``update_task`` may change.
UPDATABLE_FIELDS = frozenset(
    {
        "priority",
        "run_at",
        "queue_name",
        "ttl",
        "max_retries",
        "retry_delay",
        "timeout",
        "result_ttl",
        "store_result",
        "name",
        "description",
        "tags",
    }
)


@attrs.frozen(kw_only=True)
class ErrorInfo:
    """How a task failed: exception type, message and traceback text."""

    type: str
    message: str
    traceback: str | None = None

    @classmethod
    def from_exception(cls, exc: BaseException) -> ErrorInfo:
        """Capture an exception (with its traceback)."""
        return cls(
            type=type(exc).__qualname__,
            message=str(exc) or type(exc).__qualname__,
            traceback="".join(traceback.format_exception(exc)),
        )

    def __str__(self) -> str:
        return f"{self.type}: {self.message}"


def _event(kind: EventType, task: Task, **fields: Any) -> dict[str, Any]:
    """An event row about ``task`` (rows, not records: this is the hot path)."""
    return event_row(
        kind, task_id=task.id, queue_name=task.queue_name, schedule_id=task.schedule_id, **fields
    )


_FINAL_EVENT = {
    TaskStatus.FAILED: (EventType.FAILED, ResultStatus.ERROR, EventLevel.ERROR),
    TaskStatus.CANCELLED: (EventType.CANCELLED, ResultStatus.CANCELLED, EventLevel.WARNING),
    TaskStatus.EXPIRED: (EventType.EXPIRED, ResultStatus.EXPIRED, EventLevel.WARNING),
}


class TaskQueue:
    """Named queues of tasks with priorities, delays, TTL, dependencies and retries."""

    def __init__(self, storage: Storage, queues: Sequence[str] | None = None) -> None:
        self.storage = storage
        self.settings = storage.settings
        self.queues = list(queues) if queues else None
        self._group = GroupCommit(self._write_simple_batch)
        self._last_sweep = 0.0

    # --- building tasks ------------------------------------------------------

    def build_task(
        self,
        func: Callable[..., Any] | str,
        func_args: Sequence[Any] | Mapping[str, Any] | None = None,
        func_kwargs: Mapping[str, Any] | None = None,
        *,
        queue_name: str | None = None,
        priority: int = 0,
        run_at: datetime | None = None,
        run_in: timedelta | float | None = None,
        ttl: timedelta | float | None = None,
        result_ttl: timedelta | float | None = None,
        max_retries: int | None = None,
        retry_delay: timedelta | float | None = None,
        timeout: timedelta | float | None = None,
        depends_on: Sequence[str] | None = None,
        callback: Callable[..., Any] | str | None = None,
        callback_args: Sequence[Any] | None = None,
        unique_key: str | None = None,
        name: str | None = None,
        description: str | None = None,
        tags: Sequence[str] | None = None,
        store_result: bool = True,
        serializer: str | None = None,
        task_id: str | None = None,
    ) -> Task:
        """A validated Task with this queue's defaults applied (nothing is written)."""
        s = self.settings
        if isinstance(func_args, Mapping):
            if func_kwargs:
                raise ValidationError(
                    "func_args",
                    "a mapping of keyword arguments cannot be combined with func_kwargs",
                )
            func_kwargs = func_args
            func_args = ()
        now = utcnow()
        if run_at is not None and run_in is not None:
            raise ValidationError("run_at", "give run_at or run_in, not both")
        when = now
        if run_at is not None:
            when = require_aware(run_at, "run_at")
        elif run_in is not None:
            try:
                when = now + to_timedelta(run_in, "run_in")
            except OverflowError:
                raise ValidationError("run_in", f"{run_in!r} is past the year 9999") from None
        if isinstance(depends_on, str):
            raise ValidationError("depends_on", "expected a list of task ids, got a string")
        opts: dict[str, Any] = {}
        if task_id is not None:
            opts["id"] = task_id
        return Task(
            func=callable_ref(func),
            func_args=func_args or (),
            func_kwargs=func_kwargs or {},
            queue_name=queue_name or s.default_queue,
            priority=priority,
            created_at=now,
            run_at=when,
            ttl=_duration(ttl, "ttl", s.default_task_ttl),
            result_ttl=_duration(result_ttl, "result_ttl", s.default_result_ttl),
            max_retries=s.default_max_retries if max_retries is None else max_retries,
            retry_delay=_duration(retry_delay, "retry_delay", s.default_retry_delay)
            or timedelta(0),
            timeout=_duration(timeout, "timeout", s.default_timeout),
            depends_on=_as_tuple(depends_on),
            callback=callable_ref(callback) if callback is not None else None,
            callback_args=_as_tuple(callback_args),
            unique_key=unique_key,
            name=name,
            description=description,
            tags=_as_tuple(tags),
            store_result=store_result,
            serializer=serializer or self.storage.serializers.default.name,
            **opts,
        )

    # --- enqueue -------------------------------------------------------------

    async def enqueue_async(
        self,
        func: Task | Callable[..., Any] | str,
        func_args: Sequence[Any] | Mapping[str, Any] | None = None,
        func_kwargs: Mapping[str, Any] | None = None,
        *,
        on_duplicate: Literal["return", "raise"] = "return",
        **options: Any,
    ) -> str:
        """Enqueue one task; return its id.

        ``func`` is a Task, or a callable / ``"module:qualname"`` reference with
        ``func_args`` (a list, or a mapping of keyword arguments),
        ``func_kwargs`` and the options of :meth:`build_task`. When a live
        task holds the same ``unique_key``, its id is returned (or
        :class:`DuplicateTask` raised with ``on_duplicate="raise"``).
        """
        task = (
            func
            if isinstance(func, Task)
            else self.build_task(func, func_args, func_kwargs, **options)
        )
        if task.depends_on or task.unique_key is not None or task.status is not TaskStatus.PENDING:
            ids = await self._enqueue_in_own_transaction([task], on_duplicate)
            return ids[0]
        # Serialize now, so a bad payload fails before anything is written.
        await self._group.submit((task, self.storage.tasks.to_row(task)))
        self.storage.notifier.notify()
        return task.id

    async def enqueue_many_async(
        self,
        tasks: Iterable[Task],
        *,
        on_duplicate: Literal["return", "raise"] = "return",
    ) -> list[str]:
        """Enqueue tasks in one transaction (multi-row insert): all or none."""
        batch = list(tasks)
        if not batch:
            return []
        for task in batch:
            if not isinstance(task, Task):
                raise ValidationError("tasks", f"expected Task records, got {type(task).__name__}")
        ids = [x.id for x in batch]
        if len(set(ids)) != len(ids):
            raise DuplicateTask("enqueue_many: the batch repeats a task id")
        return await self._enqueue_in_own_transaction(batch, on_duplicate)

    async def _write_simple_batch(self, items: list[tuple[Task, dict[str, Any]]]) -> None:
        if self.storage.hot is not None:
            events = [
                _event(EventType.ENQUEUED, x, timestamp=x.created_at, data=self._enqueued(x))
                for x, _ in items
            ]
            await self.storage.one_hop(self.storage.hot.enqueue([row for _, row in items], events))
            return
        async with self.storage.write() as conn:
            await self.storage.tasks.insert_rows(conn, [row for _, row in items])
            await self.storage.events.insert_rows(
                conn,
                [
                    _event(EventType.ENQUEUED, x, timestamp=x.created_at, data=self._enqueued(x))
                    for x, _ in items
                ],
            )

    async def _enqueue_in_own_transaction(
        self, batch: list[Task], on_duplicate: Literal["return", "raise"]
    ) -> list[str]:
        hot = self.storage.hot
        if hot is not None and all(
            not x.depends_on and x.unique_key is None and x.status is TaskStatus.PENDING
            for x in batch
        ):
            rows = [self.storage.tasks.to_row(x) for x in batch]
            events = [
                _event(EventType.ENQUEUED, x, timestamp=x.created_at, data=self._enqueued(x))
                for x in batch
            ]
            await self.storage.one_hop(hot.enqueue(rows, events))
            self.storage.notifier.notify()
            return [x.id for x in batch]
        _check_cycles(batch)
        repo = self.storage.tasks
        async with self.storage.write() as conn:
            batch = await self._resolve_dependencies(conn, batch)
            plain = [x for x in batch if x.unique_key is None]
            await repo.insert_many(conn, plain)
            ids: dict[str, str] = {}
            written = list(plain)
            for task in batch:
                if task.unique_key is None:
                    ids[task.id] = task.id
                    continue
                inserted = await repo.insert_unique(conn, task)
                if inserted is None:
                    existing = await repo.live_id_for_key(conn, task.unique_key)
                    if on_duplicate == "raise" or existing is None:
                        raise DuplicateTask(
                            f"a live task ({existing}) already holds unique_key "
                            f"{task.unique_key!r}",
                            existing_id=existing,
                        )
                    ids[task.id] = existing
                else:
                    ids[task.id] = task.id
                    written.append(task)
            await self._log_enqueued(conn, written)
        self.storage.notifier.notify()
        return [ids[x.id] for x in batch]

    def _enqueued(self, task: Task) -> dict[str, Any]:
        """The data of an ``enqueued`` event: ids and names, arguments only if asked."""
        if not self.settings.log_arguments or task.serializer != "json":
            return {"status": task.status.value}
        return {
            "status": task.status.value,
            "args": list(task.func_args),
            "kwargs": task.func_kwargs,
        }

    async def _log_enqueued(self, conn: AsyncConnection, tasks: list[Task]) -> None:
        events = []
        results = []
        for x in tasks:
            if x.status is TaskStatus.CANCELLED:
                events.append(
                    _event(EventType.CANCELLED, x, message=x.last_error, level=EventLevel.WARNING)
                )
                if x.store_result:
                    results.append(_final_result(x, ResultStatus.CANCELLED, x.last_error))
            else:
                events.append(
                    _event(EventType.ENQUEUED, x, timestamp=x.created_at, data=self._enqueued(x))
                )
        await self.storage.events.insert_rows(conn, events)
        await self.storage.results.upsert_many(conn, results)

    async def _resolve_dependencies(self, conn: AsyncConnection, batch: list[Task]) -> list[Task]:
        """Validate dependency ids and set each task's initial status from them."""
        in_batch = {x.id for x in batch}
        outside = {d for x in batch for d in x.depends_on} - in_batch
        if not outside and not any(x.depends_on for x in batch):
            return batch
        known = await self.storage.tasks.statuses(conn, outside, lock=True)
        unknown = sorted(outside - known.keys())
        if unknown:
            raise ValidationError("depends_on", f"unknown task id(s): {', '.join(unknown)}")
        status_of: dict[str, TaskStatus] = dict(known)
        resolved = []
        for task in batch:
            if task.depends_on:
                dead = [d for d in task.depends_on if status_of.get(d) in _DEAD]
                if dead:
                    cause = f"dependency {dead[0]} is {status_of[dead[0]]}"
                    task = attrs.evolve(
                        task,
                        status=TaskStatus.CANCELLED,
                        completed_at=task.created_at,
                        last_error=cause,
                    )
                elif all(status_of.get(d) is TaskStatus.COMPLETED for d in task.depends_on):
                    task = attrs.evolve(task, status=TaskStatus.PENDING)
                else:
                    task = attrs.evolve(task, status=TaskStatus.WAITING)
            status_of[task.id] = task.status
            resolved.append(task)
        return resolved

    # --- claim -----------------------------------------------------------------

    async def dequeue_async(
        self,
        queues: Sequence[str] | None = None,
        timeout: timedelta | float | None = None,
        *,
        worker_id: str | None = None,
    ) -> Task | None:
        """Claim the next ready task (waiting up to ``timeout`` for one); None if none."""
        claimed = await self.dequeue_many_async(1, queues, timeout, worker_id=worker_id)
        return claimed[0] if claimed else None

    async def dequeue_many_async(
        self,
        n: int,
        queues: Sequence[str] | None = None,
        timeout: timedelta | float | None = None,
        *,
        worker_id: str | None = None,
    ) -> list[Task]:
        """Atomically claim up to ``n`` ready tasks under a lease.

        Queues listed first come first, then higher priority, earlier run_at,
        FIFO. With ``timeout``, waits (woken by in-process enqueues, else
        polling) until a task is ready or the timeout passes.
        """
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ValidationError("n", f"must be a positive integer, got {n!r}")
        wait = to_timedelta(timeout, "timeout").total_seconds() if timeout is not None else 0.0
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait
        poll = 0.01
        while True:
            claimed = await self._claim(n, list(queues) if queues else self.queues, worker_id)
            remaining = deadline - loop.time()
            if claimed or remaining <= 0:
                return claimed
            await self.storage.notifier.wait(min(poll, remaining))
            poll = min(poll * 2, 0.5)

    async def _claim(self, n: int, queues: list[str] | None, worker_id: str | None) -> list[Task]:
        now = utcnow()
        token = new_id()
        worker = worker_id or "anonymous"
        unreadable: list[tuple[str, str]] = []
        if self.storage.hot is not None:
            return await self._claim_one_hop(n, queues, worker, now, token)
        async with self.storage.write() as conn:
            await self._sweep_expired_if_due(conn, now)
            claimed = await self.storage.tasks.claim(
                conn,
                queues=queues,
                n=n,
                now=now,
                token=token,
                lease_until=now + self.settings.lease_duration,
                worker_id=worker,
                unreadable=unreadable,
            )
            if unreadable:
                await self._quarantine(conn, unreadable, token, now)
            if claimed:
                await self.storage.events.insert_rows(
                    conn,
                    _dequeued_events(
                        [(x.id, x.queue_name, x.schedule_id, x.attempts) for x in claimed],
                        worker,
                        now,
                    ),
                )
        return claimed

    async def _claim_one_hop(
        self, n: int, queues: list[str] | None, worker: str, now: datetime, token: str
    ) -> list[Task]:
        hot = self.storage.hot
        assert hot is not None
        clock = asyncio.get_running_loop().time()
        if clock - self._last_sweep >= _EXPIRY_SWEEP_EVERY:
            async with self.storage.write() as conn:
                await self._sweep_expired_if_due(conn, now)

        def dequeued(touched: list[Touched]) -> list[dict[str, Any]]:
            return _dequeued_events(touched, worker, now)

        outcome = await self.storage.one_hop(
            hot.claim(
                queues=queues,
                n=n,
                params={
                    "now": now,
                    "token": token,
                    "lease_until": now + self.settings.lease_duration,
                    "worker_id": worker,
                },
                events=dequeued,
            )
        )
        claimed: list[Task] = []
        unreadable: list[tuple[str, str]] = []
        for row in hot.load_claimed(outcome):
            try:
                claimed.append(self.storage.tasks.from_row(row))
            except InvalidRow as exc:
                unreadable.append((str(row["id"]), str(exc)))
        if unreadable:
            async with self.storage.write() as conn:
                await self._quarantine(conn, unreadable, token, now)
        rank = {name: i for i, name in enumerate(queues or ())}
        claimed.sort(key=lambda x: (rank.get(x.queue_name, 0), -x.priority, x.run_at, x.id))
        return claimed

    async def _quarantine(
        self, conn: AsyncConnection, rows: list[tuple[str, str]], token: str, now: datetime
    ) -> None:
        """Fail claimed rows that cannot be read, with an event saying why."""
        for task_id, reason in rows:
            log.error("task %s cannot be read and was failed: %s", task_id, reason)
            done = await self.storage.tasks.finish_leased(
                conn,
                [(task_id, token)],
                {**_finish_values(TaskStatus.FAILED, now), "last_error": reason},
            )
            if not done:
                continue
            await self.storage.events.insert_rows(
                conn,
                [
                    event_row(
                        EventType.FAILED,
                        task_id=task_id,
                        timestamp=now,
                        level=EventLevel.ERROR,
                        message="quarantined: the stored task cannot be read",
                        error=reason,
                    )
                ],
            )
            await self.storage.results.upsert_rows(
                conn,
                [
                    self.storage.results.to_row(
                        TaskResult(
                            task_id=task_id,
                            status=ResultStatus.ERROR,
                            error=reason,
                            error_type="InvalidRow",
                            created_at=now,
                            completed_at=now,
                            ttl=self.settings.default_result_ttl,
                        )
                    )
                ],
            )

    async def quarantine_unknown_statuses_async(self, limit: int = _SWEEP_BATCH) -> int:
        """Fail tasks whose stored status is unknown (hand-written rows), with events."""
        now = utcnow()
        async with self.storage.write() as conn:
            failed = await self.storage.tasks.fail_unknown_statuses(conn, now, limit)
            await self.storage.events.insert_rows(
                conn,
                [
                    event_row(
                        EventType.FAILED,
                        task_id=task_id,
                        queue_name=queue,
                        timestamp=now,
                        level=EventLevel.ERROR,
                        message=f"quarantined: unknown status {old!r}",
                        error=f"InvalidRow: unknown status {old!r}",
                    )
                    for task_id, old, queue in failed
                ],
            )
        return len(failed)

    async def _sweep_expired_if_due(self, conn: AsyncConnection, now: datetime) -> None:
        clock = asyncio.get_running_loop().time()
        if clock - self._last_sweep >= _EXPIRY_SWEEP_EVERY:
            self._last_sweep = clock
            await self._expire(conn, now, _SWEEP_BATCH)

    # --- worker transitions --------------------------------------------------------

    async def complete_async(
        self,
        task: Task,
        result: Any = None,
        *,
        execution_time: float | None = None,
        worker_id: str | None = None,
    ) -> bool:
        """Mark a running task completed (with result and event) if its lease still holds.

        Returns False when the lease was lost (another worker owns the task or
        it was recovered); nothing is written then.
        """
        done = await self.complete_many_async([(task, result, execution_time)], worker_id=worker_id)
        return bool(done)

    async def complete_many_async(
        self,
        completions: Sequence[tuple[Task, Any, float | None]],
        *,
        worker_id: str | None = None,
        events: Sequence[Mapping[str, Any]] = (),
    ) -> list[str]:
        """Complete several running tasks in one transaction; return the ids completed.

        ``events`` (rows from :func:`omniq.repositories.events.event_row`) are
        appended in the same transaction: a worker flushes its buffered
        ``executing`` events this way.
        """
        if not completions:
            return []
        now = utcnow()
        results_repo = self.storage.results
        prepared = []
        for task, value, elapsed in completions:
            # Serialize before the transaction: an unserializable result fails alone.
            row = None
            if task.store_result:
                row = results_repo.success_row(
                    task, value, now=now, execution_time=elapsed, worker_id=worker_id
                )
            prepared.append((task, row, elapsed))
        if self.storage.hot is not None:
            return await self._complete_one_hop(prepared, now, worker_id, events)
        async with self.storage.write() as conn:
            await self.storage.events.insert_rows(conn, events)
            held = await self.storage.tasks.finish_leased(
                conn,
                [(task.id, task.lease_token) for task, _, _ in prepared],
                _finish_values(TaskStatus.COMPLETED, now),
            )
            done = _completed_ids(prepared, held)
            await self.storage.events.insert_rows(
                conn,
                [
                    _completed_event(task, now, worker_id, elapsed)
                    for task, _, elapsed in prepared
                    if task.id in held
                ],
            )
            await results_repo.upsert_rows(
                conn, [row for task, row, _ in prepared if row is not None and task.id in held]
            )
            if done:
                await self._release_dependents(conn, done, now)
        self.storage.notifier.notify()
        return done

    async def _complete_one_hop(
        self,
        prepared: list[tuple[Task, dict[str, Any] | None, float | None]],
        now: datetime,
        worker_id: str | None,
        events: Sequence[Mapping[str, Any]],
    ) -> list[str]:
        hot = self.storage.hot
        assert hot is not None

        def ready(touched: list[Touched]) -> list[dict[str, Any]]:
            return _ready_events(touched, now)

        held = await self.storage.one_hop(
            hot.complete(
                leases=[(task.id, task.lease_token) for task, _, _ in prepared],
                now=now,
                result_rows={task.id: row for task, row, _ in prepared if row is not None},
                completed_events={
                    task.id: _completed_event(task, now, worker_id, elapsed)
                    for task, _, elapsed in prepared
                },
                extra_events=events,
                ready_events=ready,
            )
        )
        done = _completed_ids(prepared, held)
        self.storage.notifier.notify()
        return done

    async def fail_async(
        self,
        task: Task,
        error: ErrorInfo | BaseException,
        *,
        retry: bool = True,
        worker_id: str | None = None,
        execution_time: float | None = None,
        events: Sequence[Mapping[str, Any]] = (),
    ) -> TaskStatus | None:
        """Record a failed attempt: retry with backoff while retries remain, else fail.

        Returns the new status (pending for a retry, failed), or None when the
        lease was lost. ``events`` are appended in the same transaction.
        """
        info = error if isinstance(error, ErrorInfo) else ErrorInfo.from_exception(error)
        now = utcnow()
        async with self.storage.write() as conn:
            await self.storage.events.insert_rows(conn, events)
            status = await self._fail(
                conn,
                task,
                info,
                now=now,
                retry=retry,
                worker_id=worker_id,
                execution_time=execution_time,
                lease_token=task.lease_token,
            )
        self.storage.notifier.notify()
        return status

    def retry_delay_for(self, task: Task) -> timedelta:
        """Exponential backoff with jitter for the task's next retry."""
        s = self.settings
        base = task.retry_delay.total_seconds() * (s.retry_backoff**task.retry_count)
        base = min(base, s.max_retry_delay.total_seconds())
        jitter = 1 + random.uniform(-s.retry_jitter, s.retry_jitter)
        return timedelta(seconds=max(0.0, base * jitter))

    async def _fail(
        self,
        conn: AsyncConnection,
        task: Task,
        info: ErrorInfo,
        *,
        now: datetime,
        retry: bool,
        worker_id: str | None,
        execution_time: float | None,
        lease_token: str | None,
    ) -> TaskStatus | None:
        worker = worker_id or task.worker_id
        if retry and task.retry_count < task.max_retries:
            delay = self.retry_delay_for(task)
            updated = await self.storage.tasks.transition(
                conn,
                task.id,
                expected=_RUNNING,
                lease_token=lease_token,
                values={
                    "status": TaskStatus.PENDING,
                    "run_at": now + delay,
                    "retry_count": task.retry_count + 1,
                    "last_error": str(info),
                    **_NO_LEASE,
                },
            )
            if updated is None:
                return None
            await self.storage.events.insert_rows(
                conn,
                [
                    _event(
                        EventType.RETRY,
                        task,
                        timestamp=now,
                        worker_id=worker,
                        error=str(info),
                        retry_count=task.retry_count + 1,
                        execution_time=execution_time,
                        level=EventLevel.WARNING,
                        data={"delay": delay.total_seconds(), "attempt": task.attempts},
                    )
                ],
            )
            return TaskStatus.PENDING
        updated = await self.storage.tasks.transition(
            conn,
            task.id,
            expected=_RUNNING,
            lease_token=lease_token,
            values={**_finish_values(TaskStatus.FAILED, now), "last_error": str(info)},
        )
        if updated is None:
            return None
        await self._finalize(
            conn,
            [updated],
            TaskStatus.FAILED,
            now,
            error=info,
            worker_id=worker,
            execution_time=execution_time,
        )
        return TaskStatus.FAILED

    async def release_async(
        self,
        task: Task,
        *,
        worker_id: str | None = None,
        events: Sequence[Mapping[str, Any]] = (),
    ) -> bool:
        """Give a running task back to pending without spending an attempt (shutdown).

        ``events`` are appended in the same transaction.
        """
        now = utcnow()
        async with self.storage.write() as conn:
            await self.storage.events.insert_rows(conn, events)
            updated = await self.storage.tasks.transition(
                conn,
                task.id,
                expected=_RUNNING,
                lease_token=task.lease_token,
                values={
                    "status": TaskStatus.PENDING,
                    "attempts": t.c.attempts - 1,
                    "started_at": None,
                    **_NO_LEASE,
                },
            )
            if updated is None:
                return False
            await self.storage.events.insert_rows(
                conn,
                [_event(EventType.RELEASED, task, timestamp=now, worker_id=worker_id)],
            )
        self.storage.notifier.notify()
        return True

    async def cancel_running_async(
        self,
        task: Task,
        *,
        worker_id: str | None = None,
        reason: str = "cancelled by request",
        events: Sequence[Mapping[str, Any]] = (),
    ) -> bool:
        """Worker side of a cancel: running -> cancelled, if the lease still holds."""
        now = utcnow()
        async with self.storage.write() as conn:
            await self.storage.events.insert_rows(conn, events)
            updated = await self.storage.tasks.transition(
                conn,
                task.id,
                expected=_RUNNING,
                lease_token=task.lease_token,
                values={**_finish_values(TaskStatus.CANCELLED, now), "last_error": reason},
            )
            if updated is None:
                return False
            await self._finalize(conn, [updated], TaskStatus.CANCELLED, now, worker_id=worker_id)
        self.storage.notifier.notify()
        return True

    async def renew_leases_async(self, leases: Mapping[str, str]) -> set[str]:
        """Extend the leases ``{task_id: lease_token}``; return the ids still held."""
        return set(await self.heartbeat_async(leases))

    async def heartbeat_async(
        self, leases: Mapping[str, str], events: Sequence[Mapping[str, Any]] = ()
    ) -> dict[str, bool]:
        """Extend held leases (and append ``events``): ``{task_id: cancel_requested}``."""
        until = utcnow() + self.settings.lease_duration
        async with self.storage.write() as conn:
            await self.storage.events.insert_rows(conn, events)
            return await self.storage.tasks.heartbeat(conn, leases, until)

    async def recover_expired_leases_async(self, limit: int = _SWEEP_BATCH) -> int:
        """Recover running tasks whose lease expired (their worker died).

        Each is retried while attempts remain, else failed with a
        "worker lost" error; returns how many were recovered.
        """
        now = utcnow()
        recovered = 0
        async with self.storage.write() as conn:
            lost = await self.storage.tasks.list_expired_leases(conn, now, limit)
            for task in lost:
                info = ErrorInfo(
                    type="WorkerLost",
                    message=f"worker {task.worker_id} lost the lease "
                    f"(attempt {task.attempts} of {task.max_retries + 1})",
                )
                # Attempts count at claim, so a task that kills its worker stops
                # after max_retries + 1 claims (retry_count < attempts always holds).
                status = await self._fail(
                    conn,
                    task,
                    info,
                    now=now,
                    retry=task.attempts <= task.max_retries,
                    worker_id=task.worker_id,
                    execution_time=None,
                    lease_token=task.lease_token,
                )
                recovered += status is not None
        if recovered:
            self.storage.notifier.notify()
        return recovered

    # --- user transitions ---------------------------------------------------------

    async def cancel_async(self, task_id: str) -> bool:
        """Cancel a task: queued -> cancelled; running -> cancellation requested.

        Returns False when the task already finished.
        """
        now = utcnow()
        async with self.storage.write() as conn:
            task = await self._require(conn, task_id)
            if task.status in _QUEUED:
                updated = await self.storage.tasks.transition(
                    conn,
                    task_id,
                    expected=_QUEUED,
                    values={
                        **_finish_values(TaskStatus.CANCELLED, now),
                        "last_error": "cancelled by request",
                    },
                )
                if updated is None:
                    raise InvalidTransition(f"task {task_id} changed state during cancel; retry")
                await self._finalize(conn, [updated], TaskStatus.CANCELLED, now)
            elif task.status is TaskStatus.RUNNING:
                updated = await self.storage.tasks.transition(
                    conn, task_id, expected=_RUNNING, values={"cancel_requested": True}
                )
                if updated is None:
                    raise InvalidTransition(f"task {task_id} changed state during cancel; retry")
                await self.storage.events.insert_rows(
                    conn, [_event(EventType.CANCEL_REQUESTED, task, timestamp=now)]
                )
            else:
                return False
        # Outside the transaction: workers of this process stop the task at once.
        if task.status is TaskStatus.RUNNING:
            self.storage.announce_cancel(task_id)
        return True

    async def requeue_async(self, task_id: str, *, run_at: datetime | None = None) -> Task:
        """Send a failed, cancelled or expired task back to the queue (dead-letter retry)."""
        now = utcnow()
        when = require_aware(run_at, "run_at") if run_at is not None else now
        async with self.storage.write() as conn:
            task = await self._require(conn, task_id)
            if task.status not in _DEAD:
                raise InvalidTransition(
                    f"task {task_id} is {task.status}; only failed, cancelled or expired "
                    "tasks can be requeued"
                )
            status = TaskStatus.PENDING
            if task.depends_on:
                deps = await self.storage.tasks.statuses(conn, task.depends_on, lock=True)
                dead = [d for d, st in deps.items() if st in _DEAD]
                if dead:
                    raise InvalidTransition(
                        f"task {task_id} depends on {dead[0]} which is {deps[dead[0]]}; "
                        "requeue that dependency first"
                    )
                if any(st is not TaskStatus.COMPLETED for st in deps.values()):
                    status = TaskStatus.WAITING
            ttl_expiry = now + task.ttl if task.ttl is not None else None
            updated = await self.storage.tasks.transition(
                conn,
                task_id,
                expected=_DEAD,
                values={
                    "status": status,
                    "run_at": when,
                    "retry_count": 0,
                    "attempts": 0,
                    "completed_at": None,
                    "started_at": None,
                    "last_error": None,
                    "cancel_requested": False,
                    "expires_at": ttl_expiry,
                    **_NO_LEASE,
                },
            )
            if updated is None:
                raise InvalidTransition(f"task {task_id} changed state during requeue; retry")
            await self.storage.results.delete(conn, task_id)
            await self.storage.events.insert_rows(
                conn,
                [_event(EventType.REQUEUED, updated, timestamp=now, data={"status": status})],
            )
        self.storage.notifier.notify()
        return updated

    async def update_task_async(self, task_id: str, **changes: Any) -> Task:
        """Change options of a pending or waiting task (priority, run_at, queue, ...)."""
        unknown = set(changes) - UPDATABLE_FIELDS
        if unknown:
            raise ValidationError(
                "changes", f"cannot update {sorted(unknown)}; allowed: {sorted(UPDATABLE_FIELDS)}"
            )
        now = utcnow()
        async with self.storage.write() as conn:
            task = await self._require(conn, task_id)
            if task.status not in _QUEUED:
                raise InvalidTransition(
                    f"task {task_id} is {task.status}; only queued tasks change"
                )
            values = dict(changes)
            for key in ("ttl", "retry_delay", "timeout", "result_ttl"):
                if key in values and values[key] is not None:
                    values[key] = to_timedelta(values[key], key)
            candidate = attrs.evolve(task, **values)
            if "ttl" in changes:
                ttl = candidate.ttl
                candidate = attrs.evolve(
                    candidate, expires_at=task.created_at + ttl if ttl is not None else None
                )
            row = self.storage.tasks.to_row(candidate)
            column_values = {k: row[k] for k in (*values, "expires_at") if k in row}
            updated = await self.storage.tasks.transition(
                conn, task_id, expected=_QUEUED, values=column_values
            )
            if updated is None:
                raise InvalidTransition(f"task {task_id} changed state during update; retry")
            await self.storage.events.insert_rows(
                conn,
                [
                    _event(
                        EventType.UPDATED, updated, timestamp=now, data={"fields": sorted(changes)}
                    )
                ],
            )
        self.storage.notifier.notify()
        return updated

    async def delete_task_async(self, task_id: str) -> bool:
        """Delete a task that is not running (its events stay); True if it existed."""
        now = utcnow()
        async with self.storage.write() as conn:
            task = await self.storage.tasks.get(conn, task_id)
            if task is None:
                return False
            if task.status is TaskStatus.RUNNING:
                raise InvalidTransition(f"task {task_id} is running; cancel it first")
            await self.storage.tasks.delete(conn, task_id)
            await self.storage.results.delete(conn, task_id)
            await self.storage.events.insert_rows(
                conn, [_event(EventType.DELETED, task, timestamp=now)]
            )
        return True

    async def clear_async(self, queue_name: str | None = None) -> int:
        """Delete every pending and waiting task (of one queue, or all); return how many."""
        now = utcnow()
        where: sa.ColumnElement[bool] = t.c.status.in_([s.value for s in _QUEUED])
        if queue_name is not None:
            where = sa.and_(where, t.c.queue_name == queue_name)
        total = 0
        while True:
            async with self.storage.write() as conn:
                # A no-op SET: lock and return the batch (an empty SET is invalid SQL).
                batch = await self.storage.tasks.transition_many(
                    conn, where=where, values={"status": t.c.status}, limit=_SWEEP_BATCH
                )
                if not batch:
                    return total
                await self.storage.tasks.delete_where(
                    conn, t.c.id.in_([x.id for x in batch]), limit=len(batch)
                )
                await self.storage.events.insert_rows(
                    conn, [_event(EventType.DELETED, x, timestamp=now) for x in batch]
                )
                total += len(batch)

    # --- reads ------------------------------------------------------------------------

    async def get_task_async(self, task_id: str) -> Task | None:
        """The task with ``task_id``, or None."""
        async with self.storage.read() as conn:
            return await self.storage.tasks.get(conn, task_id)

    async def list_tasks_async(
        self,
        status: TaskStatus | str | Collection[TaskStatus | str] | None = None,
        queue_name: str | None = None,
        limit: int = 100,
        offset: int = 0,
        *,
        order_by: str = "created_at",
        descending: bool = False,
    ) -> list[Task]:
        """Tasks filtered by status (one or several) and queue, paginated."""
        statuses = _statuses(status)
        _check_page(limit, offset)
        if order_by not in ("created_at", "run_at", "priority", "completed_at", "id"):
            raise ValidationError("order_by", f"cannot sort by {order_by!r}")
        async with self.storage.read() as conn:
            return await self.storage.tasks.query(
                conn,
                status=statuses,
                queue_name=queue_name,
                limit=limit,
                offset=offset,
                order_by=order_by,
                descending=descending,
            )

    async def size_async(self, queue_name: str | None = None) -> int:
        """How many tasks are pending (in ``queue_name``, or in all queues)."""
        async with self.storage.read() as conn:
            return await self.storage.tasks.count(conn, TaskStatus.PENDING, queue_name)

    async def stats_async(self) -> dict[str, dict[str, int]]:
        """Task counts ``{queue_name: {status: n}}`` (one GROUP BY)."""
        async with self.storage.read() as conn:
            counts = await self.storage.tasks.count_by(conn)
        out: dict[str, dict[str, int]] = {}
        for (queue, status), n in sorted(counts.items()):
            out.setdefault(queue, {})[status] = n
        return out

    # --- sweeps ------------------------------------------------------------------------

    async def expire_due_async(self, limit: int = _SWEEP_BATCH) -> int:
        """Expire queued tasks whose TTL passed (with events); return how many."""
        now = utcnow()
        async with self.storage.write() as conn:
            n = await self._expire(conn, now, limit)
        if n:
            self.storage.notifier.notify()
        return n

    async def purge_finished_async(
        self, older_than: timedelta | None = None, batch_size: int = _SWEEP_BATCH
    ) -> int:
        """Delete finished tasks completed longer ago than the retention (in batches)."""
        retention = older_than if older_than is not None else self.settings.finished_task_retention
        if retention is None:
            return 0
        cutoff = utcnow() - retention
        total = 0
        while True:
            async with self.storage.write() as conn:
                ids = await self.storage.tasks.delete_where(conn, final_before(cutoff), batch_size)
            total += len(ids)
            if len(ids) < batch_size:
                return total

    async def _expire(self, conn: AsyncConnection, now: datetime, limit: int) -> int:
        expired = await self.storage.tasks.transition_many(
            conn,
            where=sa.and_(t.c.expires_at <= now, t.c.status.in_([s.value for s in _QUEUED])),
            values={**_finish_values(TaskStatus.EXPIRED, now), "last_error": "TTL expired"},
            limit=limit,
        )
        if expired:
            await self._finalize(conn, expired, TaskStatus.EXPIRED, now)
        return len(expired)

    # --- dependency propagation and final states ------------------------------------------

    async def _finalize(
        self,
        conn: AsyncConnection,
        tasks: list[Task],
        status: TaskStatus,
        now: datetime,
        *,
        error: ErrorInfo | None = None,
        worker_id: str | None = None,
        execution_time: float | None = None,
    ) -> None:
        """Events, results and dependent cancellation for tasks that just ended badly."""
        kind, result_status, level = _FINAL_EVENT[status]
        events = []
        results = []
        for x in tasks:
            message = str(error) if error else x.last_error
            events.append(
                _event(
                    kind,
                    x,
                    timestamp=now,
                    worker_id=worker_id,
                    message=message,
                    error=str(error) if error else None,
                    execution_time=execution_time,
                    retry_count=x.retry_count,
                    level=level,
                )
            )
            if x.store_result:
                results.append(
                    _final_result(
                        x,
                        result_status,
                        message,
                        now=now,
                        error=error,
                        worker_id=worker_id,
                        execution_time=execution_time,
                    )
                )
        await self.storage.events.insert_rows(conn, events)
        await self.storage.results.upsert_many(conn, results)
        await self._cancel_dependents(conn, [x.id for x in tasks], status, now)

    async def _cancel_dependents(
        self, conn: AsyncConnection, ids: list[str], status: TaskStatus, now: datetime
    ) -> None:
        cause = {i: f"dependency {i} {status}" for i in ids}
        frontier = ids
        while frontier:
            waiting = await self.storage.tasks.dependents(conn, frontier)
            if not waiting:
                return
            cancelled: list[Task] = []
            for dep_id in waiting:
                task = await self.storage.tasks.get(conn, dep_id)
                if task is None:
                    continue
                reason = next(
                    (cause[d] for d in task.depends_on if d in cause), "a dependency ended"
                )
                updated = await self.storage.tasks.transition(
                    conn,
                    dep_id,
                    expected=frozenset({TaskStatus.WAITING}),
                    values={**_finish_values(TaskStatus.CANCELLED, now), "last_error": reason},
                )
                if updated is not None:
                    cancelled.append(updated)
                    cause[dep_id] = reason
            events = [
                _event(
                    EventType.CANCELLED,
                    x,
                    timestamp=now,
                    message=x.last_error,
                    level=EventLevel.WARNING,
                    data={"cause": x.last_error},
                )
                for x in cancelled
            ]
            await self.storage.events.insert_rows(conn, events)
            await self.storage.results.upsert_many(
                conn,
                [
                    _final_result(x, ResultStatus.CANCELLED, x.last_error, now=now)
                    for x in cancelled
                    if x.store_result
                ],
            )
            frontier = [x.id for x in cancelled]

    async def _release_dependents(
        self, conn: AsyncConnection, completed_ids: list[str], now: datetime
    ) -> None:
        candidates = await self.storage.tasks.dependents(conn, completed_ids)
        if not candidates:
            return
        released = await self.storage.tasks.release_ready(conn, candidates, now)
        await self.storage.events.insert_rows(
            conn,
            _ready_events([(x.id, x.queue_name, x.schedule_id, x.attempts) for x in released], now),
        )

    async def _require(self, conn: AsyncConnection, task_id: str) -> Task:
        task = await self.storage.tasks.get(conn, task_id)
        if task is None:
            raise TaskNotFound(f"no task with id {task_id!r}")
        return task

    # --- schedules (CRUD; firing is the scheduler's) ------------------------------------

    async def schedule_async(self, schedule: Schedule) -> str:
        """Store a new schedule (next_run_at computed if unset); return its id."""
        if not isinstance(schedule, Schedule):
            raise ValidationError("schedule", f"expected a Schedule, got {type(schedule).__name__}")
        now = utcnow()
        if schedule.next_run_at is None and schedule.status is ScheduleStatus.ACTIVE:
            schedule = attrs.evolve(schedule, next_run_at=timing.first_run(schedule, now))
        self.storage.schedules.to_row(schedule)
        self._check_template(schedule)
        async with self.storage.write() as conn:
            await self.storage.schedules.insert(conn, schedule)
            await self.storage.events.insert_rows(
                conn, [_schedule_event(EventType.SCHEDULED, schedule, now)]
            )
        return schedule.id

    def _check_template(self, schedule: Schedule) -> None:
        """Build (not store) a task from the template: options that cannot make a
        task would otherwise fail every fire of the schedule."""
        self.storage.tasks.to_row(
            self.build_task(
                schedule.func,
                schedule.func_args,
                schedule.func_kwargs,
                queue_name=schedule.queue_name,
                serializer=schedule.serializer,
                **schedule.task_options,
            )
        )

    async def get_schedule_async(self, schedule_id: str) -> Schedule | None:
        """The schedule with ``schedule_id``, or None."""
        async with self.storage.read() as conn:
            return await self.storage.schedules.get(conn, schedule_id)

    async def list_schedules_async(
        self,
        status: ScheduleStatus | str | Collection[ScheduleStatus | str] | None = None,
        limit: int = 100,
        offset: int = 0,
    ) -> list[Schedule]:
        """Schedules (optionally by status), oldest first."""
        _check_page(limit, offset)
        wanted = None
        if status is not None:
            items = [status] if isinstance(status, str) else list(status)
            wanted = [_schedule_status(x) for x in items]
        async with self.storage.read() as conn:
            return await self.storage.schedules.query(
                conn, status=wanted, limit=limit, offset=offset
            )

    async def get_ready_schedules_async(
        self, now: datetime | None = None, limit: int = 100
    ) -> list[Schedule]:
        """Active schedules whose next run time has come."""
        when = require_aware(now, "now") if now is not None else utcnow()
        async with self.storage.read() as conn:
            return await self.storage.schedules.due(conn, when, limit)

    async def update_schedule_async(self, schedule_id: str, **changes: Any) -> Schedule:
        """Change a schedule's template or timing; next_run_at is recomputed when timing changes."""
        forbidden = {"id", "created_at", "run_count", "last_run_at", "status"} & set(changes)
        if forbidden:
            raise ValidationError(
                "changes", f"cannot update {sorted(forbidden)} (use pause/resume/cancel)"
            )
        now = utcnow()
        async with self.storage.write() as conn:
            current = await self._require_schedule(conn, schedule_id)
            candidate = attrs.evolve(current, updated_at=now, **changes)
            timing_keys = {"schedule_type", "cron_expression", "timezone", "interval", "run_at"}
            if timing_keys & set(changes) and "next_run_at" not in changes:
                candidate = attrs.evolve(candidate, next_run_at=timing.run_from_now(candidate, now))
            row = self.storage.schedules.to_row(candidate)
            self._check_template(candidate)
            row.pop("id")
            updated = await self.storage.schedules.update(
                conn, schedule_id, row, expected_status=[current.status]
            )
            if updated is None:
                raise InvalidTransition(f"schedule {schedule_id} changed during update; retry")
            await self.storage.events.insert_rows(
                conn,
                [
                    _schedule_event(
                        EventType.SCHEDULE_UPDATED, updated, now, data={"fields": sorted(changes)}
                    )
                ],
            )
        return updated

    async def pause_schedule_async(self, schedule_id: str) -> Schedule:
        """Pause an active schedule (it creates no tasks until resumed)."""
        return await self._set_schedule_status(
            schedule_id,
            from_=[ScheduleStatus.ACTIVE],
            to=ScheduleStatus.PAUSED,
            event=EventType.SCHEDULE_PAUSED,
            extra=lambda _s, now: {"paused_at": now},
        )

    async def resume_schedule_async(self, schedule_id: str) -> Schedule:
        """Resume a paused schedule; its next run is computed from now (no burst of missed runs)."""

        def values(schedule: Schedule, now: datetime) -> dict[str, Any]:
            return {"resumed_at": now, "next_run_at": timing.run_from_now(schedule, now)}

        return await self._set_schedule_status(
            schedule_id,
            from_=[ScheduleStatus.PAUSED],
            to=ScheduleStatus.ACTIVE,
            event=EventType.SCHEDULE_RESUMED,
            extra=values,
        )

    async def cancel_schedule_async(self, schedule_id: str) -> Schedule:
        """Cancel a schedule for good (it stays visible with status cancelled)."""
        return await self._set_schedule_status(
            schedule_id,
            from_=[ScheduleStatus.ACTIVE, ScheduleStatus.PAUSED],
            to=ScheduleStatus.CANCELLED,
            event=EventType.SCHEDULE_CANCELLED,
            extra=lambda _s, _now: {"next_run_at": None},
        )

    async def delete_schedule_async(self, schedule_id: str) -> bool:
        """Delete a schedule (its tasks stay, detached); True if it existed."""
        now = utcnow()
        async with self.storage.write() as conn:
            schedule = await self.storage.schedules.get(conn, schedule_id)
            if schedule is None:
                return False
            await self.storage.schedules.delete(conn, schedule_id)
            await self.storage.events.insert_rows(
                conn, [_schedule_event(EventType.DELETED, schedule, now)]
            )
        return True

    async def _set_schedule_status(
        self,
        schedule_id: str,
        *,
        from_: list[ScheduleStatus],
        to: ScheduleStatus,
        event: EventType,
        extra: Callable[[Schedule, datetime], dict[str, Any]],
    ) -> Schedule:
        now = utcnow()
        async with self.storage.write() as conn:
            current = await self._require_schedule(conn, schedule_id)
            if current.status not in from_:
                raise InvalidTransition(
                    f"schedule {schedule_id} is {current.status}; expected "
                    + " or ".join(str(s) for s in from_)
                )
            values = {"status": to, "updated_at": now, **extra(current, now)}
            updated = await self.storage.schedules.update(
                conn, schedule_id, values, expected_status=[current.status]
            )
            if updated is None:
                raise InvalidTransition(f"schedule {schedule_id} changed concurrently; retry")
            await self.storage.events.insert_rows(conn, [_schedule_event(event, updated, now)])
        return updated

    async def _require_schedule(self, conn: AsyncConnection, schedule_id: str) -> Schedule:
        schedule = await self.storage.schedules.get(conn, schedule_id)
        if schedule is None:
            raise ScheduleNotFound(f"no schedule with id {schedule_id!r}")
        return schedule


# --- helpers ----------------------------------------------------------------------

_NO_LEASE: dict[str, Any] = {"lease_token": None, "lease_expires_at": None}


def _completed_event(
    task: Task, now: datetime, worker_id: str | None, elapsed: float | None
) -> dict[str, Any]:
    """The ``completed`` event row of a task (both completion paths)."""
    return _event(
        EventType.COMPLETED,
        task,
        timestamp=now,
        worker_id=worker_id or task.worker_id,
        execution_time=elapsed,
        retry_count=task.retry_count,
    )


def _completed_ids(
    prepared: Sequence[tuple[Task, Any, float | None]], held: Collection[str]
) -> list[str]:
    """Ids completed, in order; logs the ones whose lease was lost (nothing written)."""
    lost = [task.id for task, _, _ in prepared if task.id not in held]
    if lost:
        log.warning("lease lost, completion discarded for task(s) %s", ", ".join(lost))
    return [task.id for task, _, _ in prepared if task.id in held]


def _dequeued_events(
    touched: Sequence[Touched], worker: str, now: datetime
) -> list[dict[str, Any]]:
    """``dequeued`` event rows for claimed tasks (both claim paths)."""
    return [
        event_row(
            EventType.DEQUEUED,
            task_id=task_id,
            queue_name=queue,
            schedule_id=schedule,
            worker_id=worker,
            timestamp=now,
            data={"attempt": attempt},
        )
        for task_id, queue, schedule, attempt in touched
    ]


def _ready_events(touched: Sequence[Touched], now: datetime) -> list[dict[str, Any]]:
    """``ready`` event rows for tasks whose dependencies all completed (both paths)."""
    return [
        event_row(
            EventType.READY, task_id=task_id, queue_name=queue, schedule_id=schedule, timestamp=now
        )
        for task_id, queue, schedule, _ in touched
    ]


def _finish_values(status: TaskStatus, now: datetime) -> dict[str, Any]:
    return {"status": status, "completed_at": now, **_NO_LEASE}


def _final_result(
    task: Task,
    status: ResultStatus,
    message: str | None,
    *,
    now: datetime | None = None,
    error: ErrorInfo | None = None,
    worker_id: str | None = None,
    execution_time: float | None = None,
) -> TaskResult:
    when = now or task.completed_at or utcnow()
    return TaskResult(
        task_id=task.id,
        status=status,
        error=message,
        error_type=error.type if error else status.value,
        error_traceback=error.traceback if error else None,
        schedule_id=task.schedule_id,
        created_at=when,
        started_at=task.started_at,
        completed_at=when,
        ttl=task.result_ttl,
        execution_time=execution_time,
        worker_id=worker_id,
        retry_count=task.retry_count,
        serializer=task.serializer,
    )


def _schedule_event(
    kind: EventType, schedule: Schedule, now: datetime, data: dict[str, Any] | None = None
) -> dict[str, Any]:
    return event_row(
        kind,
        schedule_id=schedule.id,
        queue_name=schedule.queue_name,
        timestamp=now,
        source="scheduler",
        data={"status": schedule.status.value, **(data or {})},
    )


def _as_tuple(value: Any) -> Any:
    """An iterable (not a string or mapping) as a tuple; anything else is left to the
    record's converter, which rejects it naming the field."""
    if value is None:
        return ()
    if isinstance(value, str | bytes | Mapping) or not isinstance(value, Iterable):
        return value
    return tuple(value)


def _duration(
    value: timedelta | float | None, field: str, default: timedelta | None
) -> timedelta | None:
    if value is None:
        return default
    return to_timedelta(value, field)


def _statuses(
    value: TaskStatus | str | Collection[TaskStatus | str] | None,
) -> list[TaskStatus] | None:
    if value is None:
        return None
    if not isinstance(value, str | Collection):
        raise ValidationError("status", f"expected a status or a list of them, got {value!r}")
    items = [value] if isinstance(value, str) else list(value)
    out = []
    for item in items:
        try:
            out.append(TaskStatus(item))
        except ValueError:
            allowed = ", ".join(s.value for s in TaskStatus)
            raise ValidationError(
                "status", f"unknown status {item!r} (one of: {allowed})"
            ) from None
    return out


def _schedule_status(value: ScheduleStatus | str) -> ScheduleStatus:
    try:
        return ScheduleStatus(value)
    except ValueError:
        allowed = ", ".join(s.value for s in ScheduleStatus)
        raise ValidationError("status", f"unknown status {value!r} (one of: {allowed})") from None


def _check_page(limit: int, offset: int) -> None:
    for name, value in (("limit", limit), ("offset", offset)):
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < 2**63:
            raise ValidationError(name, f"must be a non-negative 64-bit integer, got {value!r}")


def _check_cycles(batch: list[Task]) -> None:
    graph = {x.id: list(x.depends_on) for x in batch}
    state: dict[str, int] = {}

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for dep in graph.get(node, ()):
            if state.get(dep) == 1:
                raise ValidationError(
                    "depends_on", f"dependency cycle: {' -> '.join([*path, dep])}"
                )
            if dep in graph and not state.get(dep):
                visit(dep, [*path, dep])
        state[node] = 2

    for node in graph:
        if not state.get(node):
            visit(node, [node])
