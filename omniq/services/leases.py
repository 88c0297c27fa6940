"""The worker's lease protocol: claim, start, complete, fail, release, heartbeat, recover.

Claims are one atomic statement; every later transition is conditional on
the status and the claimer's lease token (a worker that lost its lease
changes nothing). Each is one transaction with its events.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa

from omniq.db.schema import tasks as t
from omniq.models import EventLevel, EventType, Task, TaskStatus
from omniq.services._shared import (
    _NO_LEASE,
    _RUNNING,
    _SWEEP_BATCH,
    ErrorInfo,
    _check_batch,
    _completed_event,
    _event,
    _finish_values,
    _landed,
    log,
)
from omniq.services.claims import Start
from omniq.services.dependencies import finalize, release_dependents
from omniq.services.failures import Failures
from omniq.services.flow_steps import members_completed

__all__ = ["Leases", "Start"]

#: Why a task whose cancel was requested while it ran ends cancelled at completion.
_RESULT_DROPPED = "cancelled by request (it had finished; its result was dropped)"


class Leases(Failures):
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
        rewrites: Collection[tuple[str, str | None]] = (),
    ) -> list[str]:
        """Complete several running tasks in one transaction; return the ids completed.

        A task whose cancellation was requested while it ran is cancelled
        instead (see :meth:`settle_completions_async`, which says which).
        """
        statuses = await self.settle_completions_async(
            completions, worker_id=worker_id, events=events, starts=starts, rewrites=rewrites
        )
        return [
            task.id
            for (task, _, _), status in zip(completions, statuses, strict=True)
            if status is TaskStatus.COMPLETED
        ]

    async def settle_completions_async(
        self,
        completions: Sequence[tuple[Task, Any, float | None]],
        *,
        worker_id: str | None = None,
        events: Sequence[Mapping[str, Any]] = (),
        starts: Sequence[Start] = (),
        rewrites: Collection[tuple[str, str | None]] = (),
    ) -> list[TaskStatus | None]:
        """Write the outcomes of running tasks whose function returned, in one transaction.

        Each task ends ``COMPLETED`` (result, event, dependents released) or,
        when its cancellation was requested while it ran (from any process,
        even after the function returned), ``CANCELLED`` with its result
        dropped and its dependents cancelled. None: the lease was lost,
        nothing was written. Returned in order.

        ``rewrites`` names leases ``(task_id, lease_token)`` whose outcome was
        written before and raised: an outcome that earlier try left (its
        commit landed) is returned as written, and nothing is written again.

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

        def body(conn: sa.Connection) -> list[TaskStatus | None]:
            # The starts of these tasks are written by the same UPDATE.
            held = self.storage.tasks.finish_leased(
                conn,
                [(task.id, task.lease_token) for task, _, _ in prepared],
                _finish_values(TaskStatus.COMPLETED, now),
                starts,
                unless_cancel_requested=True,
            )
            buffered = list(events)
            settled: dict[str, TaskStatus] = dict.fromkeys(held, TaskStatus.COMPLETED)
            rest = [task for task, _, _ in prepared if task.id not in held]
            if rest:
                # The buffered events come first, as they happened.
                self.storage.events.insert_rows(conn, buffered)
                buffered = []
                settled.update(self._settle_unheld(conn, rest, starts, rewrites, now, worker_id))
            # The buffered events first, then the completions', in one statement.
            self.storage.events.insert_rows(
                conn,
                [
                    *buffered,
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
            if held:
                release_dependents(
                    conn, self.storage, [task.id for task, _, _ in prepared if task.id in held], now
                )
                members = [
                    (task, row["result"])
                    for task, row, _ in prepared
                    if task.workflow_id is not None and row is not None and task.id in held
                ]
                if members:
                    members_completed(conn, self.storage, members, now)
            return [settled.get(task.id) for task, _, _ in prepared]

        statuses = await self.storage.write(body, what="complete tasks")
        lost = [
            task.id for (task, _, _), status in zip(prepared, statuses, strict=True) if not status
        ]
        if lost:
            log.warning("lease lost, completion discarded for task(s) %s", ", ".join(lost))
        self.storage.notifier.notify()
        return statuses

    def _settle_unheld(
        self,
        conn: sa.Connection,
        tasks: Sequence[Task],
        starts: Sequence[Start],
        rewrites: Collection[tuple[str, str | None]],
        now: datetime,
        worker_id: str | None,
    ) -> dict[str, TaskStatus]:
        """The completions the UPDATE left: a task whose cancel was requested while it
        ran is cancelled (result dropped); a retried write whose earlier commit
        landed finds what that try wrote. Lost leases are left out."""
        ids = {task.id for task in tasks}
        self.storage.tasks.mark_started(conn, [start for start in starts if start[0] in ids])
        settled: dict[str, TaskStatus] = {}
        for task in tasks:
            worker = worker_id or task.worker_id
            if self._cancel_if_requested(conn, task, now, worker, _RESULT_DROPPED):
                settled[task.id] = TaskStatus.CANCELLED
        marks = self.storage.tasks.outcome_marks(
            conn,
            [
                task.id
                for task in tasks
                if task.id not in settled and (task.id, task.lease_token) in rewrites
            ],
        )
        for task in tasks:
            mark = marks.get(task.id)
            for status in (TaskStatus.COMPLETED, TaskStatus.CANCELLED):
                if mark is not None and _landed(task, worker_id, status, mark):
                    settled[task.id] = status
        return settled

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

        Nothing is spent: a task that was marked started gets its attempt back,
        one that had not started (``started_at`` None) the rate tokens its claim
        took. A task whose cancellation was requested meanwhile is cancelled instead.
        """
        now = self.storage.now()

        def body(conn: sa.Connection) -> list[str]:
            buckets = self._rate_buckets(conn, [x for x in tasks if x.started_at is None])
            self.storage.events.insert_rows(conn, events)
            released = []
            unstarted = []
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
                    if task.started_at is None:
                        unstarted.append(task)
                else:
                    self._cancel_if_requested(conn, task, now, worker_id)
            self._refund(conn, unstarted, buckets)
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
        _check_batch(limit, "limit")
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
        else:
            # The listing locked this task's row already: take its buckets only if free.
            self._refund(conn, [task], self._rate_buckets(conn, [task], skip_locked=True))
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
