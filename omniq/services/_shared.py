"""Pieces shared by the queue's services: error info, event and result rows, checks."""

from __future__ import annotations

import logging
from collections.abc import Collection, Iterable, Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any, TypeVar

from omniq._time import to_timedelta, utcnow
from omniq.errors import ValidationError
from omniq.models import (
    EventLevel,
    EventType,
    ResultStatus,
    Schedule,
    ScheduleStatus,
    Task,
    TaskError,
    TaskResult,
    TaskStatus,
)
from omniq.repositories.events import event_row
from omniq.repositories.task_leases import OutcomeMark

#: (task_id, queue_name, schedule_id, attempts) of a row a transaction touched.
log = logging.getLogger("omniq.queue")

Touched = tuple[str, str, str | None, int]

_PENDING = frozenset({TaskStatus.PENDING})
_RUNNING = frozenset({TaskStatus.RUNNING})
_QUEUED = frozenset({TaskStatus.PENDING, TaskStatus.WAITING})
_DEAD = frozenset({TaskStatus.FAILED, TaskStatus.CANCELLED, TaskStatus.EXPIRED})
_EXPIRY_SWEEP_EVERY = 1.0
_SWEEP_BATCH = 500


#: How a task failed (the record results and attempts carry); the former name.
ErrorInfo = TaskError


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


def _landed(task: Task, worker_id: str | None, status: TaskStatus, mark: OutcomeMark) -> bool:
    """Whether ``mark`` (its row now) shows that this attempt of ``task`` wrote its
    outcome ``status`` before: a retried write learns that its earlier try landed
    though the caller saw an error. No crash recovery came between (``lost_count``);
    a final outcome leaves the row as this attempt's, a retry leaves one more retry
    (the task may have been claimed and run again since)."""
    if mark.lost_count != task.lost_count:
        return False
    if status is TaskStatus.PENDING:
        return mark.retry_count == task.retry_count + 1 and mark.attempts >= task.attempts
    return mark == (
        status,
        worker_id or task.worker_id,
        task.attempts,
        task.retry_count,
        task.lost_count,
    )


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


S = TypeVar("S", TaskStatus, ScheduleStatus, ResultStatus)


def _status_list(value: S | str | Collection[S | str] | None, kind: type[S]) -> list[S] | None:
    """One status or several (as members or values) of ``kind``; None stays None."""
    if value is None:
        return None
    if not isinstance(value, str | Collection):
        raise ValidationError("status", f"expected a status or a list of them, got {value!r}")
    items = [value] if isinstance(value, str) else list(value)
    return [_status(item, kind) for item in items]


def _status(value: S | str, kind: type[S]) -> S:
    try:
        return kind(value)
    except ValueError:
        allowed = ", ".join(s.value for s in kind)
        raise ValidationError("status", f"unknown status {value!r} (one of: {allowed})") from None


def _statuses(
    value: TaskStatus | str | Collection[TaskStatus | str] | None,
) -> list[TaskStatus] | None:
    return _status_list(value, TaskStatus)


def _schedule_status(value: ScheduleStatus | str) -> ScheduleStatus:
    return _status(value, ScheduleStatus)


def _check_page(limit: int, offset: int) -> None:
    for name, value in (("limit", limit), ("offset", offset)):
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < 2**63:
            raise ValidationError(name, f"must be a non-negative 64-bit integer, got {value!r}")


def _check_batch(value: int, name: str) -> None:
    """A batch size or per-run limit: a positive integer (a loop that runs until a
    batch comes back short never ends on 0, and engines read a negative LIMIT apart)."""
    if isinstance(value, bool) or not isinstance(value, int) or not 0 < value < 2**63:
        raise ValidationError(name, f"must be a positive 64-bit integer, got {value!r}")


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
