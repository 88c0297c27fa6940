"""Administration: cancel, requeue, update, delete and clear tasks."""

from __future__ import annotations

from typing import Any

import attrs
import sqlalchemy as sa

from omniq._time import require_aware, to_timedelta
from omniq.db.schema import tasks as t
from omniq.errors import InvalidTransition, TaskNotFound, ValidationError
from omniq.models import EventType, Task, TaskStatus
from omniq.models._fields import lookup_key
from omniq.repositories.db_migration import refuse_if_migrated
from omniq.services._shared import (
    _DEAD,
    _NO_LEASE,
    _QUEUED,
    _RUNNING,
    _SWEEP_BATCH,
    _event,
    _finish_values,
)
from omniq.services.dependencies import cancel_dependents, finalize
from omniq.services.flow_steps import members_ended
from omniq.services.leases import Leases
from omniq.services.waiting import to_cancelled

__all__ = ["UPDATABLE_FIELDS", "Administration"]


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


#: How many times a cancel reads the task again when a worker moved it meanwhile.
_CANCEL_TRIES = 5


class Administration(Leases):
    """What users and operators do to tasks by hand."""

    async def cancel_async(self, task_id: str) -> bool:
        """Cancel a task: queued -> cancelled; running -> cancellation requested.

        Returns False when the task already finished.
        """
        lookup_key(task_id, "task_id")
        now = self.storage.now()

        def body(conn: sa.Connection) -> TaskStatus | None:
            refuse_if_migrated(conn)
            # A worker may move the task between the reading and the update (it
            # starts, finishes or is retried; PostgreSQL's READ COMMITTED): read
            # again and decide anew.
            for _ in range(_CANCEL_TRIES):
                task = self._require(conn, task_id)
                if task.status in _QUEUED:
                    updated = self.storage.tasks.transition(
                        conn,
                        task_id,
                        expected=_QUEUED,
                        values={
                            **_finish_values(TaskStatus.CANCELLED, now),
                            "last_error": "cancelled by request",
                        },
                    )
                    if updated is None:
                        continue
                    finalize(conn, self.storage, [updated], TaskStatus.CANCELLED, now)
                    return task.status
                if task.status is TaskStatus.RUNNING:
                    updated = self.storage.tasks.transition(
                        conn, task_id, expected=_RUNNING, values={"cancel_requested": True}
                    )
                    if updated is None:
                        continue
                    self.storage.events.insert_rows(
                        conn, [_event(EventType.CANCEL_REQUESTED, task, timestamp=now)]
                    )
                    return task.status
                return None
            raise InvalidTransition(f"task {task_id} kept changing state during cancel; retry")

        before = await self.storage.write(body, what="cancel task")
        if before is None:
            return False
        # After the commit: workers of this process stop the task at once.
        if before is TaskStatus.RUNNING:
            self.storage.announce_cancel(task_id)
        return True

    async def requeue_async(self, task_id: str, *, run_at: Any = None) -> Task:
        """Send a failed, cancelled or expired task back to the queue (dead-letter retry)."""
        lookup_key(task_id, "task_id")
        now = self.storage.now()
        when = require_aware(run_at, "run_at") if run_at is not None else now

        def body(conn: sa.Connection) -> Task:
            refuse_if_migrated(conn)
            task = self._require(conn, task_id)
            if task.status not in _DEAD:
                raise InvalidTransition(
                    f"task {task_id} is {task.status}; only failed, cancelled or expired "
                    "tasks can be requeued"
                )
            # Its limits' rows may have been pruned while it was dead: declare them
            # again, first (as claims lock them, before any task row).
            self.storage.limits.declare(conn, [task], now)
            status = TaskStatus.PENDING
            if task.depends_on:
                deps = self.storage.tasks.statuses(conn, task.depends_on, lock=True)
                dead = [d for d, st in deps.items() if st in _DEAD]
                if dead:
                    raise InvalidTransition(
                        f"task {task_id} depends on {dead[0]} which is {deps[dead[0]]}; "
                        "requeue that dependency first"
                    )
                if any(st is not TaskStatus.COMPLETED for st in deps.values()):
                    status = TaskStatus.WAITING
            ttl_expiry = now + task.ttl if task.ttl is not None else None
            updated = self.storage.tasks.transition(
                conn,
                task_id,
                expected=_DEAD,
                values={
                    "status": status,
                    "run_at": when,
                    "retry_count": 0,
                    "attempts": 0,
                    "lost_count": 0,
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
            self.storage.results.delete(conn, task_id)
            self.storage.events.insert_rows(
                conn,
                [_event(EventType.REQUEUED, updated, timestamp=now, data={"status": status})],
            )
            return updated

        updated = await self.storage.write(body, what="requeue task")
        self.storage.notifier.notify()
        return updated

    async def update_task_async(self, task_id: str | Task, **changes: Any) -> Task:
        """Change options of a pending or waiting task (priority, run_at, queue, ...).

        Given a :class:`Task` record (the seed's ``update_task_async(task)``),
        its updatable fields are written, as the record holds them.
        """
        if isinstance(task_id, Task):
            if changes:
                raise ValidationError("changes", "give a Task record or changes, not both")
            record, task_id = task_id, task_id.id
            changes = {name: getattr(record, name) for name in UPDATABLE_FIELDS}
        elif not isinstance(task_id, str):
            raise ValidationError(
                "task_id", f"expected a task id or a Task, got {type(task_id).__name__}"
            )
        lookup_key(task_id, "task_id")
        unknown = set(changes) - UPDATABLE_FIELDS
        if unknown:
            raise ValidationError(
                "changes", f"cannot update {sorted(unknown)}; allowed: {sorted(UPDATABLE_FIELDS)}"
            )
        now = self.storage.now()
        values = dict(changes)
        for key in ("ttl", "retry_delay", "timeout", "result_ttl"):
            if key in values and values[key] is not None:
                values[key] = to_timedelta(values[key], key)

        def body(conn: sa.Connection) -> Task:
            refuse_if_migrated(conn)
            task = self._require(conn, task_id)
            if task.status not in _QUEUED:
                raise InvalidTransition(
                    f"task {task_id} is {task.status}; only queued tasks change"
                )
            candidate = attrs.evolve(task, **values)
            if "ttl" in changes:
                ttl = candidate.ttl
                candidate = attrs.evolve(
                    candidate, expires_at=task.created_at + ttl if ttl is not None else None
                )
            row = self.storage.tasks.to_row(candidate)
            column_values = {k: row[k] for k in (*values, "expires_at") if k in row}
            updated = self.storage.tasks.transition(
                conn, task_id, expected=_QUEUED, values=column_values
            )
            if updated is None:
                raise InvalidTransition(f"task {task_id} changed state during update; retry")
            self.storage.events.insert_rows(
                conn,
                [
                    _event(
                        EventType.UPDATED, updated, timestamp=now, data={"fields": sorted(changes)}
                    )
                ],
            )
            return updated

        updated = await self.storage.write(body, what="update task")
        self.storage.notifier.notify()
        return updated

    async def delete_task_async(self, task_id: str) -> bool:
        """Delete a task that is not running (its events stay); True if it existed.

        Tasks waiting on it are settled in the same transaction: cancelled if
        it had not completed, released if it had (and nothing else blocks them).
        """
        lookup_key(task_id, "task_id")
        now = self.storage.now()

        def body(conn: sa.Connection) -> bool:
            refuse_if_migrated(conn)
            task = self.storage.tasks.get(conn, task_id)
            if task is None:
                return False
            if task.status is TaskStatus.RUNNING:
                raise InvalidTransition(f"task {task_id} is running; cancel it first")
            waiting = self.storage.tasks.dependents(conn, [task_id])
            if task.status is not TaskStatus.COMPLETED:
                cancel_dependents(
                    conn, self.storage, {task_id: f"dependency {task_id} was deleted"}, now
                )
            if task.workflow_id is not None and not task.is_final:
                ended = [(task, TaskStatus.CANCELLED, f"task {task_id} was deleted")]
                members_ended(conn, self.storage, ended, now)
            self.storage.tasks.delete(conn, task_id)
            self.storage.results.delete(conn, task_id)
            self.storage.events.insert_rows(conn, [_event(EventType.DELETED, task, timestamp=now)])
            if task.status is TaskStatus.COMPLETED and waiting:
                released = self.storage.tasks.release_ready(conn, waiting, now)
                if released:
                    self.storage.events.insert_rows(
                        conn,
                        [_event(EventType.READY, x, timestamp=now) for x in released],
                    )
            return True

        deleted = await self.storage.write(body, what="delete task")
        self.storage.notifier.notify()
        return deleted

    async def clear_async(self, queue_name: str | None = None) -> int:
        """Delete every pending and waiting task (of one queue, or all); return how many.

        Tasks in other queues that wait on a deleted task are cancelled.
        """
        lookup_key(queue_name, "queue_name")
        now = self.storage.now()
        where: sa.ColumnElement[bool] = t.c.status.in_([s.value for s in _QUEUED])
        if queue_name is not None:
            where = sa.and_(where, t.c.queue_name == queue_name)

        def body(conn: sa.Connection) -> int:
            refuse_if_migrated(conn)
            # A no-op SET: lock and return the batch (an empty SET is invalid SQL).
            batch = self.storage.tasks.transition_many(
                conn, where=where, values={"status": t.c.status}, limit=_SWEEP_BATCH
            )
            if not batch:
                return 0
            ids = [x.id for x in batch]
            gone = set(ids)
            cause: dict[str, str] = {}
            for edge_task, dep in self.storage.tasks.dependency_edges(conn, ids):
                if edge_task not in gone:
                    cause.setdefault(edge_task, f"dependency {dep} was cleared")
            self.storage.tasks.delete_where(conn, t.c.id.in_(ids), limit=len(batch))
            members = [(x, TaskStatus.CANCELLED, "cleared") for x in batch if x.workflow_id]
            if members:
                members_ended(conn, self.storage, members, now)
            self.storage.events.insert_rows(
                conn, [_event(EventType.DELETED, x, timestamp=now) for x in batch]
            )
            cancelled = to_cancelled(conn, self.storage, cause, now)
            if cancelled:
                finalize(conn, self.storage, cancelled, TaskStatus.CANCELLED, now)
            return len(batch)

        total = 0
        while True:
            n = await self.storage.write(body, what="clear tasks")
            total += n
            if n == 0:
                return total

    def _require(self, conn: sa.Connection, task_id: str) -> Task:
        task = self.storage.tasks.get(conn, task_id)
        if task is None:
            raise TaskNotFound(f"no task with id {task_id!r}")
        return task
