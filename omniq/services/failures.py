"""Failed attempts: retry with backoff, fail for good, or cancel when a cancel was requested.

Part of the worker's lease protocol (:mod:`omniq.services.leases` builds on
it): every write is conditional on the task's status and the claimer's lease
token, in one transaction with its events and the attempt's error record.
"""

from __future__ import annotations

import random
from collections.abc import Collection, Mapping, Sequence
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
    ErrorInfo,
    _event,
    _finish_values,
    _landed,
)
from omniq.services.claims import Claims, Start
from omniq.services.dependencies import finalize

__all__ = ["Failures"]

#: The outcomes a failed attempt's write leaves: retried (or cancelled on request), failed.
_RETRIED = (TaskStatus.PENDING, TaskStatus.CANCELLED)
_FAILED = (TaskStatus.FAILED,)


class Failures(Claims):
    """Record failed attempts of claimed tasks (and cancel those whose cancel was requested)."""

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
        rewrites: Collection[tuple[str, str | None]] = (),
    ) -> list[TaskStatus | None]:
        """Record several failed attempts in one transaction (see :meth:`fail_async`).

        ``failures`` holds ``(task, error, retry, execution_time)``; returns each
        task's new status (None: lease lost), in order. ``rewrites`` names leases
        ``(task_id, lease_token)`` whose failure was written before and raised:
        an outcome that earlier try left (its commit landed) is returned as
        written, and nothing is written again.
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
            return self._landed_before(conn, prepared, statuses, worker_id, rewrites)

        statuses = await self.storage.write(body, what="fail tasks")
        self.storage.notifier.notify()
        return statuses

    def _landed_before(
        self,
        conn: sa.Connection,
        prepared: Sequence[tuple[Task, ErrorInfo, bool, float | None, timedelta]],
        statuses: list[TaskStatus | None],
        worker_id: str | None,
        rewrites: Collection[tuple[str, str | None]],
    ) -> list[TaskStatus | None]:
        """``statuses`` with each lost lease (None) replaced by the outcome this very
        attempt wrote before, if a retried write finds it (its earlier commit landed
        though the caller saw an error): failed, back to pending for its retry, or
        cancelled (a cancel requested while it ran); nothing is written again."""
        marks = self.storage.tasks.outcome_marks(
            conn,
            [
                task.id
                for (task, *_), status in zip(prepared, statuses, strict=True)
                if status is None and (task.id, task.lease_token) in rewrites
            ],
        )
        if not marks:
            return statuses
        landed = list(statuses)
        unsure: dict[int, tuple[str, str | None, datetime, ErrorInfo]] = {}
        for i, (task, info, retry, _, _) in enumerate(prepared):
            mark = marks.get(task.id)
            if landed[i] is not None or mark is None:
                continue
            retried = retry and task.retry_count < task.max_retries
            for status in _RETRIED if retried else _FAILED:
                if _landed(task, worker_id, status, mark):
                    landed[i] = status
            if landed[i] is None and retried and task.started_at is not None:
                # The row moved on since (its retry ran, crashed and was recovered):
                # the attempt's own record tells whether this retry was written.
                unsure[i] = (task.id, worker_id or task.worker_id, task.started_at, info)
        if unsure:
            written = self.storage.attempts.retried(conn, unsure.values())
            for i, attempt in unsure.items():
                if attempt[0] in written:
                    landed[i] = TaskStatus.PENDING
        return landed

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
            unless_cancel_requested=True,
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
