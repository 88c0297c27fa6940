"""Dependencies and final states: pieces of transactions, run inside a service's body.

A task that depends on others waits until all of them completed; one that
ends badly (failed, cancelled, expired, deleted unfinished) cancels the
tasks that wait on it, transitively, in the same transaction. These are
plain functions over the transaction's ``Connection``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime

import attrs
import sqlalchemy as sa

from omniq.db.schema import task_dependencies as deps_t
from omniq.db.schema import tasks as t
from omniq.errors import ValidationError
from omniq.models import Task, TaskStatus
from omniq.services._shared import (
    _DEAD,
    _FINAL_EVENT,
    ErrorInfo,
    _event,
    _final_result,
    _ready_events,
)
from omniq.services._storage import Storage
from omniq.services.flow_steps import members_ended
from omniq.services.waiting import cancel_waiting

__all__ = [
    "cancel_dependents",
    "dependency_order",
    "finalize",
    "initial_status",
    "release_dependents",
    "settle_orphans",
]

_WAITING = frozenset({TaskStatus.WAITING})


def dependency_order(batch: list[Task]) -> list[Task]:
    """``batch`` ordered so that every task comes after the tasks of the batch it depends on.

    Raises :class:`ValidationError` on a cycle. Ties keep the input order.
    """
    if not any(x.depends_on for x in batch):
        return list(batch)  # most batches: nothing to order
    by_id = {x.id: x for x in batch}
    state: dict[str, int] = {}
    out: list[Task] = []

    def visit(task: Task, path: list[str]) -> None:
        state[task.id] = 1
        for dep in task.depends_on:
            if state.get(dep) == 1:
                raise ValidationError(
                    "depends_on", f"dependency cycle: {' -> '.join([*path, dep])}"
                )
            if dep in by_id and not state.get(dep):
                visit(by_id[dep], [*path, dep])
        state[task.id] = 2
        out.append(task)

    for task in batch:
        if not state.get(task.id):
            visit(task, [task.id])
    return out


def initial_status(task: Task, status_of: dict[str, TaskStatus]) -> Task:
    """``task`` with the status its dependencies give it: cancelled, pending or waiting."""
    if not task.depends_on:
        return task
    dead = [d for d in task.depends_on if status_of.get(d) in _DEAD]
    if dead:
        return attrs.evolve(
            task,
            status=TaskStatus.CANCELLED,
            completed_at=task.created_at,
            last_error=f"dependency {dead[0]} is {status_of[dead[0]]}",
        )
    if all(status_of.get(d) is TaskStatus.COMPLETED for d in task.depends_on):
        return attrs.evolve(task, status=TaskStatus.PENDING)
    return attrs.evolve(task, status=TaskStatus.WAITING)


def release_dependents(
    conn: sa.Connection, storage: Storage, done_ids: Sequence[str], now: datetime
) -> None:
    """Move the waiting dependents of ``done_ids`` whose dependencies all completed to pending."""
    candidates = storage.tasks.dependents(conn, done_ids)
    if not candidates:
        return
    released = storage.tasks.release_ready(conn, candidates, now)
    storage.events.insert_rows(
        conn,
        _ready_events([(x.id, x.queue_name, x.schedule_id, x.attempts) for x in released], now),
    )


def finalize(
    conn: sa.Connection,
    storage: Storage,
    tasks: Sequence[Task],
    status: TaskStatus,
    now: datetime,
    *,
    error: ErrorInfo | Mapping[str, ErrorInfo] | None = None,
    worker_id: str | None = None,
    execution_time: float | Mapping[str, float | None] | None = None,
) -> None:
    """Events, results and dependent cancellation for tasks that just ended badly.

    ``error`` and ``execution_time`` are one value for all tasks or one per task id.
    """
    kind, result_status, level = _FINAL_EVENT[status]
    events = []
    results = []
    members = []
    for x in tasks:
        info = error.get(x.id) if isinstance(error, Mapping) else error
        elapsed = (
            execution_time.get(x.id) if isinstance(execution_time, Mapping) else execution_time
        )
        message = str(info) if info else x.last_error
        if x.workflow_id is not None:
            members.append((x, status, message))
        events.append(
            _event(
                kind,
                x,
                timestamp=now,
                worker_id=worker_id,
                message=message,
                error=str(info) if info else None,
                execution_time=elapsed,
                retry_count=x.retry_count,
                level=level,
                data=info.as_event_data() if info else None,
            )
        )
        if x.store_result:
            results.append(
                _final_result(
                    x,
                    result_status,
                    message,
                    now=now,
                    error=info,
                    worker_id=worker_id,
                    execution_time=elapsed,
                )
            )
    storage.events.insert_rows(conn, events)
    storage.results.upsert_many(conn, results)
    cancel_dependents(conn, storage, {x.id: f"dependency {x.id} {status}" for x in tasks}, now)
    if members:
        members_ended(conn, storage, members, now)


def cancel_dependents(
    conn: sa.Connection, storage: Storage, causes: dict[str, str], now: datetime
) -> None:
    """Cancel, transitively, the waiting tasks that depend on ``causes``' ids.

    ``causes`` maps each ended task id to the reason its dependents get.
    """
    cause = dict(causes)
    frontier = list(causes)
    while frontier:
        waiting = storage.tasks.dependents(conn, frontier)
        if not waiting:
            return
        reasons: dict[str, str] = {}
        for dep_id in waiting:
            task = storage.tasks.get(conn, dep_id)
            if task is not None:
                reasons[dep_id] = next(
                    (cause[d] for d in task.depends_on if d in cause), "a dependency ended"
                )
        cancelled = cancel_waiting(conn, storage, reasons, now)
        cause.update((x.id, reasons[x.id]) for x in cancelled)
        members = [(x, TaskStatus.CANCELLED, x.last_error) for x in cancelled if x.workflow_id]
        if members:
            members_ended(conn, storage, members, now)
        frontier = [x.id for x in cancelled]


def settle_orphans(conn: sa.Connection, storage: Storage, now: datetime, limit: int) -> int:
    """Settle waiting tasks nothing will ever wake: return how many changed.

    A waiting task with a dependency that ended badly is cancelled; one whose
    remaining dependencies all completed (or are gone: deleted or purged) is
    released to pending.
    """
    dep = t.alias("dep")
    dead = (
        sa.select(deps_t.c.depends_on_id)
        .select_from(deps_t.join(dep, dep.c.id == deps_t.c.depends_on_id))
        .join(t, t.c.id == deps_t.c.task_id)
        .where(
            t.c.status == TaskStatus.WAITING.value,
            dep.c.status.in_([s.value for s in _DEAD]),
        )
        .distinct()
        .limit(limit)
    )
    dead_ids = list(conn.execute(dead).scalars().all())
    waiting_before = storage.tasks.count(conn, TaskStatus.WAITING)
    if dead_ids:
        statuses = storage.tasks.statuses(conn, dead_ids)
        cancel_dependents(
            conn, storage, {i: f"dependency {i} {statuses.get(i, 'ended')}" for i in dead_ids}, now
        )
    unblocked = sa.select(t.c.id).where(
        t.c.status == TaskStatus.WAITING.value,
        # Workflow members wait on their workflow's counters, not on edges.
        t.c.workflow_id.is_(None),
        ~sa.exists(
            sa.select(sa.literal(1))
            .select_from(deps_t.join(dep, dep.c.id == deps_t.c.depends_on_id))
            .where(deps_t.c.task_id == t.c.id, dep.c.status != TaskStatus.COMPLETED.value)
        ),
    )
    candidates = list(conn.execute(unblocked.limit(limit)).scalars().all())
    if candidates:
        released = storage.tasks.release_ready(conn, candidates, now)
        storage.events.insert_rows(
            conn,
            _ready_events([(x.id, x.queue_name, x.schedule_id, x.attempts) for x in released], now),
        )
    return waiting_before - storage.tasks.count(conn, TaskStatus.WAITING)
