"""The worker's lease protocol: claim, start, complete, fail, release, heartbeat, recover.

Claims are one atomic statement; every later transition is conditional on
the status and the claimer's lease token (a worker that lost its lease
changes nothing). Each is one transaction with its events.
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any

import attrs
import sqlalchemy as sa

from omniq.db.schema import tasks as t
from omniq.models import EventLevel, EventType, Task, TaskStatus
from omniq.repositories.attempts import attempt_row
from omniq.services._shared import (
    _NO_LEASE,
    _RUNNING,
    _SWEEP_BATCH,
    ErrorInfo,
    _completed_event,
    _completed_ids,
    _event,
    _finish_values,
)
from omniq.services.claims import Claims, Start
from omniq.services.dependencies import finalize, release_dependents
from omniq.services.flow_steps import members_completed

__all__ = ["Leases", "Start"]


class Leases(Claims):
    """The outcomes of claimed tasks (complete, fail, release, cancel) and lease recovery."""

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
        starts: Sequence[Start] = (),
    ) -> list[str]:
        """Complete several running tasks in one transaction; return the ids completed.

        ``events`` (rows from :func:`omniq.repositories.events.event_row`) and
        ``starts`` (see :meth:`mark_started_async`) are written first in the
        same transaction: a worker flushes what it buffered this way.
        """
        if not completions:
            return []
        now = self.storage.now()
        results_repo = self.storage.results
        prepared = []
        for task, value, elapsed in completions:
            # Serialize before the transaction: an unserializable result fails alone.
            row = None
            # A workflow member's result is kept for the members it feeds (flow_steps).
            if task.store_result or task.workflow_id is not None:
                row = results_repo.success_row(
                    task, value, now=now, execution_time=elapsed, worker_id=worker_id
                )
            prepared.append((task, row, elapsed))

        def body(conn: sa.Connection) -> list[str]:
            # The starts of these tasks are written by the same UPDATE.
            held = self.storage.tasks.finish_leased(
                conn,
                [(task.id, task.lease_token) for task, _, _ in prepared],
                _finish_values(TaskStatus.COMPLETED, now),
                starts,
            )
            done = _completed_ids(prepared, held)
            # The buffered events first, then the completions', in one statement.
            self.storage.events.insert_rows(
                conn,
                [
                    *events,
                    *(
                        _completed_event(task, now, worker_id, elapsed)
                        for task, _, elapsed in prepared
                        if task.id in held
                    ),
                ],
            )
            results_repo.upsert_rows(
                conn,
                [
                    row
                    for task, row, _ in prepared
                    if row is not None and task.store_result and task.id in held
                ],
            )
            if done:
                release_dependents(conn, self.storage, done, now)
                members = [
                    (task, row["result"])
                    for task, row, _ in prepared
                    if task.workflow_id is not None and row is not None and task.id in held
                ]
                if members:
                    members_completed(conn, self.storage, members, now)
            return done

        done = await self.storage.write(body, what="complete tasks")
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
        starts: Sequence[Start] = (),
    ) -> TaskStatus | None:
        """Record a failed attempt: retry with backoff while retries remain, else fail.

        A task whose cancellation was requested while it ran is cancelled
        instead of retried. Returns the new status (pending for a retry,
        failed, cancelled), or None when the lease was lost. ``events`` and
        ``starts`` are written first in the same transaction.
        """
        (status,) = await self.fail_many_async(
            [(task, error, retry, execution_time)],
            worker_id=worker_id,
            events=events,
            starts=starts,
        )
        return status

    async def fail_many_async(
        self,
        failures: Sequence[tuple[Task, ErrorInfo | BaseException, bool, float | None]],
        *,
        worker_id: str | None = None,
        events: Sequence[Mapping[str, Any]] = (),
        starts: Sequence[Start] = (),
    ) -> list[TaskStatus | None]:
        """Record several failed attempts in one transaction (see :meth:`fail_async`).

        ``failures`` holds ``(task, error, retry, execution_time)``; returns each
        task's new status (None: lease lost), in order.
        """
        now = self.storage.now()
        prepared = [
            (
                task,
                error if isinstance(error, ErrorInfo) else ErrorInfo.from_exception(error),
                retry,
                elapsed,
                self.retry_delay_for(task),
            )
            for task, error, retry, elapsed in failures
        ]

        def body(conn: sa.Connection) -> list[TaskStatus | None]:
            self.storage.events.insert_rows(conn, events)
            self.storage.tasks.mark_started(conn, starts)
            final = [
                (task, info, elapsed)
                for task, info, retry, elapsed, _ in prepared
                if not (retry and task.retry_count < task.max_retries)
            ]
            failed = self._fail_final(conn, final, now, worker_id) if final else set()
            retries = [
                (task, info, elapsed, delay)
                for task, info, retry, elapsed, delay in prepared
                if retry and task.retry_count < task.max_retries
            ]
            retried = self._retry(conn, retries, now, worker_id) if retries else {}
            statuses = [
                retried.get(task.id, TaskStatus.FAILED if task.id in failed else None)
                for task, *_ in prepared
            ]
            self._record_attempts(
                conn,
                [
                    (task, info, status)
                    for (task, info, *_), status in zip(prepared, statuses, strict=True)
                ],
                now,
                worker_id,
            )
            return statuses

        statuses = await self.storage.write(body, what="fail tasks")
        self.storage.notifier.notify()
        return statuses

    def _fail_final(
        self,
        conn: sa.Connection,
        final: Sequence[tuple[Task, ErrorInfo, float | None]],
        now: datetime,
        worker_id: str | None,
    ) -> set[str]:
        """Fail tasks for good, all in one statement; return the ids whose lease held."""
        messages = {task.id: str(info) for task, info, _ in final}
        held = self.storage.tasks.finish_leased(
            conn,
            [(task.id, task.lease_token) for task, _, _ in final],
            {
                **_finish_values(TaskStatus.FAILED, now),
                "last_error": sa.case(messages, value=t.c.id),
            },
        )
        if held:
            finalize(
                conn,
                self.storage,
                [
                    attrs.evolve(
                        task,
                        status=TaskStatus.FAILED,
                        completed_at=now,
                        last_error=messages[task.id],
                        lease_token=None,
                        lease_expires_at=None,
                    )
                    for task, _, _ in final
                    if task.id in held
                ],
                TaskStatus.FAILED,
                now,
                error={task.id: info for task, info, _ in final},
                worker_id=worker_id,
                execution_time={task.id: elapsed for task, _, elapsed in final},
            )
        return held

    def _retry(
        self,
        conn: sa.Connection,
        retries: Sequence[tuple[Task, ErrorInfo, float | None, timedelta]],
        now: datetime,
        worker_id: str | None,
    ) -> dict[str, TaskStatus | None]:
        """Send failed attempts back to pending for their retry, all in one statement.

        A task whose cancel was requested while it ran is cancelled instead;
        one whose lease was lost is left alone (None).
        """
        run_type = t.c.run_at.type
        held = self.storage.tasks.finish_leased(
            conn,
            [(task.id, task.lease_token) for task, *_ in retries],
            {
                "status": TaskStatus.PENDING,
                "run_at": sa.case(
                    {task.id: sa.literal(now + delay, run_type) for task, _, _, delay in retries},
                    value=t.c.id,
                ),
                "retry_count": t.c.retry_count + 1,
                "last_error": sa.case(
                    {task.id: str(info) for task, info, _, _ in retries}, value=t.c.id
                ),
                "started_at": None,
                **_NO_LEASE,
            },
            where=~t.c.cancel_requested,
        )
        self.storage.events.insert_rows(
            conn,
            [
                _event(
                    EventType.RETRY,
                    task,
                    timestamp=now,
                    worker_id=worker_id or task.worker_id,
                    error=str(info),
                    retry_count=task.retry_count + 1,
                    execution_time=elapsed,
                    level=EventLevel.WARNING,
                    data={
                        "delay": delay.total_seconds(),
                        "attempt": task.attempts,
                        **info.as_event_data(),
                    },
                )
                for task, info, elapsed, delay in retries
                if task.id in held
            ],
        )
        statuses: dict[str, TaskStatus | None] = {}
        for task, info, _, _ in retries:
            if task.id in held:
                statuses[task.id] = TaskStatus.PENDING
                continue
            # Not retried: the lease was lost, or a cancel was requested while it ran.
            reason = f"cancelled by request (the attempt failed: {info})"
            worker = worker_id or task.worker_id
            cancelled = self._cancel_if_requested(conn, task, now, worker, reason)
            statuses[task.id] = TaskStatus.CANCELLED if cancelled else None
        return statuses

    def _record_attempts(
        self,
        conn: sa.Connection,
        failed: Sequence[tuple[Task, ErrorInfo, TaskStatus | None]],
        now: datetime,
        worker_id: str | None,
    ) -> None:
        """Keep the error record of each failed attempt whose outcome was written
        (status None: the lease was lost, nothing was written). Attempts are
        numbered 1, 2, ... per task, in the order their failures commit."""
        written = [(task, info, status) for task, info, status in failed if status is not None]
        if not written:
            return
        before = self.storage.attempts.counts(conn, {task.id for task, _, _ in written})
        rows = []
        for task, info, status in written:
            number = before[task.id] = before.get(task.id, 0) + 1
            error = attrs.evolve(
                info, attempt=number, at=now, retryable=status is TaskStatus.PENDING
            )
            rows.append(attempt_row(task, error, finished_at=now, worker_id=worker_id))
        self.storage.attempts.insert_rows(conn, rows)

    def retry_delay_for(self, task: Task) -> timedelta:
        """Exponential backoff with jitter for the task's next retry."""
        s = self.settings
        base = task.retry_delay.total_seconds() * (s.retry_backoff**task.retry_count)
        base = min(base, s.max_retry_delay.total_seconds())
        jitter = 1 + random.uniform(-s.retry_jitter, s.retry_jitter)
        return timedelta(seconds=max(0.0, base * jitter))

    def _fail(
        self,
        conn: sa.Connection,
        task: Task,
        info: ErrorInfo,
        *,
        now: datetime,
        retry: bool,
        delay: timedelta,
        worker_id: str | None,
        execution_time: float | None,
    ) -> TaskStatus | None:
        worker = worker_id or task.worker_id
        tasks = self.storage.tasks
        if retry and task.retry_count < task.max_retries:
            return self._retry(conn, [(task, info, execution_time, delay)], now, worker_id)[task.id]
        updated = tasks.transition(
            conn,
            task.id,
            expected=_RUNNING,
            lease_token=task.lease_token,
            values={**_finish_values(TaskStatus.FAILED, now), "last_error": str(info)},
        )
        if updated is None:
            return None
        finalize(
            conn,
            self.storage,
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
        return bool(await self.release_many_async([task], worker_id=worker_id, events=events))

    async def release_many_async(
        self,
        tasks: Sequence[Task],
        *,
        worker_id: str | None = None,
        events: Sequence[Mapping[str, Any]] = (),
    ) -> list[str]:
        """Give running tasks back to pending in one transaction; return the ids released.

        Nothing is spent: a task that was marked started gets its attempt back.
        A task whose cancellation was requested meanwhile is cancelled instead.
        """
        now = self.storage.now()

        def body(conn: sa.Connection) -> list[str]:
            self.storage.events.insert_rows(conn, events)
            released = []
            for task in tasks:
                updated = self.storage.tasks.transition(
                    conn,
                    task.id,
                    expected=_RUNNING,
                    lease_token=task.lease_token,
                    values={
                        "status": TaskStatus.PENDING,
                        "attempts": sa.case(
                            (t.c.started_at.is_(None), t.c.attempts), else_=t.c.attempts - 1
                        ),
                        "started_at": None,
                        **_NO_LEASE,
                    },
                    where=~t.c.cancel_requested,
                )
                if updated is not None:
                    released.append(task.id)
                    self.storage.events.insert_rows(
                        conn,
                        [_event(EventType.RELEASED, task, timestamp=now, worker_id=worker_id)],
                    )
                else:
                    self._cancel_if_requested(conn, task, now, worker_id)
            return released

        released = await self.storage.write(body, what="release tasks")
        if released:
            self.storage.notifier.notify()
        return released

    async def cancel_running_async(
        self,
        task: Task,
        *,
        worker_id: str | None = None,
        reason: str = "cancelled by request",
        events: Sequence[Mapping[str, Any]] = (),
        starts: Sequence[Start] = (),
    ) -> bool:
        """Worker side of a cancel: running -> cancelled, if the lease still holds."""
        now = self.storage.now()

        def body(conn: sa.Connection) -> bool:
            self.storage.events.insert_rows(conn, events)
            self.storage.tasks.mark_started(conn, starts)
            updated = self.storage.tasks.transition(
                conn,
                task.id,
                expected=_RUNNING,
                lease_token=task.lease_token,
                values={**_finish_values(TaskStatus.CANCELLED, now), "last_error": reason},
            )
            if updated is None:
                return False
            finalize(conn, self.storage, [updated], TaskStatus.CANCELLED, now, worker_id=worker_id)
            return True

        done = await self.storage.write(body, what="cancel task")
        self.storage.notifier.notify()
        return done

    async def recover_expired_leases_async(self, limit: int = _SWEEP_BATCH) -> int:
        """Recover running tasks whose lease expired (their worker died); return how many.

        A task that never started goes back to pending, spending nothing. One
        that was running is run again while its crash budget
        (``Settings.crash_retries``, separate from ``max_retries``) lasts,
        else failed with a ``WorkerLost`` error. Either way ``lost_count`` + 1:
        a recovered task is marked started in the database before it runs
        again, so a task that kills its worker is counted and stops.
        """
        now = self.storage.now()
        budget = self.settings.crash_retries

        def body(conn: sa.Connection) -> int:
            recovered = 0
            for task in self.storage.tasks.list_expired_leases(conn, now, limit):
                recovered += self._recover(conn, task, now, budget)
            return recovered

        recovered = await self.storage.write(body, what="recover lost tasks")
        if recovered:
            self.storage.notifier.notify()
        return recovered

    def _cancel_if_requested(
        self,
        conn: sa.Connection,
        task: Task,
        now: datetime,
        worker_id: str | None,
        reason: str = "cancelled by request",
    ) -> bool:
        """Cancel a held task whose cancellation was requested (instead of running it again)."""
        cancelled = self.storage.tasks.transition(
            conn,
            task.id,
            expected=_RUNNING,
            lease_token=task.lease_token,
            values={
                **_finish_values(TaskStatus.CANCELLED, now),
                "last_error": reason,
            },
            where=t.c.cancel_requested,
        )
        if cancelled is None:
            return False
        finalize(conn, self.storage, [cancelled], TaskStatus.CANCELLED, now, worker_id=worker_id)
        return True

    def _recover(self, conn: sa.Connection, task: Task, now: datetime, budget: int) -> int:
        if task.cancel_requested:
            return int(self._cancel_if_requested(conn, task, now, task.worker_id))
        lost = f"worker {task.worker_id} lost the lease"
        # Every start not ended by a retried failure ended in a crash (completion,
        # final failure and cancel are final; a release gives its attempt back).
        crashes = task.attempts - task.retry_count
        started = task.started_at is not None
        if started and crashes > budget:
            info = ErrorInfo(
                type="WorkerLost",
                message=f"{lost} while the task ran, {crashes} time(s) "
                f"(crash_retries={budget}); not run again",
            )
            status = self._fail(
                conn,
                task,
                info,
                now=now,
                retry=False,
                delay=timedelta(0),
                worker_id=task.worker_id,
                execution_time=None,
            )
            self._record_attempts(conn, [(task, info, status)], now, task.worker_id)
            return int(status is not None)
        updated = self.storage.tasks.transition(
            conn,
            task.id,
            expected=_RUNNING,
            lease_token=task.lease_token,
            values={
                "status": TaskStatus.PENDING,
                "started_at": None,
                "lost_count": t.c.lost_count + 1,
                "last_error": f"WorkerLost: {lost}" if started else task.last_error,
                **_NO_LEASE,
            },
        )
        if updated is None:
            return 0
        message = (
            f"{lost} while the task ran (crash {crashes} of {budget} allowed); run again"
            if started
            else f"{lost} before the task started; back to pending, nothing spent"
        )
        if started:
            info = ErrorInfo(type="WorkerLost", message=message)
            self._record_attempts(conn, [(task, info, TaskStatus.PENDING)], now, task.worker_id)
        self.storage.events.insert_rows(
            conn,
            [
                _event(
                    EventType.RETRY if started else EventType.RELEASED,
                    task,
                    timestamp=now,
                    worker_id=task.worker_id,
                    error=f"WorkerLost: {lost}" if started else None,
                    message=message,
                    level=EventLevel.WARNING,
                    data={"attempt": task.attempts, "crashes": crashes if started else 0},
                )
            ],
        )
        return 1
