"""Browsing tasks: filtered keyset pages, one task's whole story, and actions on a filter.

The reads behind the dashboard's task views; actions on many tasks go one
task at a time through the same service calls as the API and the CLI
(``requeue_async``, ``cancel_async``), so each writes its own event.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import json
from datetime import datetime
from enum import StrEnum

import attrs
import sqlalchemy as sa

from omniq._time import from_micros, to_micros
from omniq.errors import InvalidRow, InvalidTransition, TaskNotFound, ValidationError
from omniq.models import (
    FINAL_TASK_STATUSES,
    LIVE_TASK_STATUSES,
    Schedule,
    Task,
    TaskEvent,
    TaskFilter,
    TaskResult,
    TaskSort,
    TaskStatus,
)
from omniq.models._fields import lookup_key
from omniq.repositories.task_browse import SortKey, sort_key
from omniq.services._storage import Storage
from omniq.services.queue import TaskQueue

__all__ = ["BulkAction", "BulkOutcome", "TaskBrowser", "TaskDetail", "TaskPage"]

#: Statuses a retry (requeue) applies to; a cancel applies to the live ones.
RETRYABLE = FINAL_TASK_STATUSES - {TaskStatus.COMPLETED}
#: The most events a task's timeline shows (its newest).
TIMELINE_LIMIT = 500


class BulkAction(StrEnum):
    """What to do to every task matching a filter."""

    RETRY = "retry"
    CANCEL = "cancel"

    @property
    def statuses(self) -> frozenset[TaskStatus]:
        """The statuses this action applies to."""
        return RETRYABLE if self is BulkAction.RETRY else LIVE_TASK_STATUSES


@attrs.frozen(kw_only=True)
class TaskPage:
    """One page of a listing and the cursor of the next (None: the last page)."""

    tasks: list[Task]
    next_cursor: str | None


@attrs.frozen(kw_only=True)
class TaskDetail:
    """A task with its result, events (oldest first), dependencies, dependents, schedule."""

    task: Task
    result: TaskResult | None
    events: list[TaskEvent]
    dependencies: dict[str, TaskStatus | None]
    dependents: dict[str, TaskStatus]
    schedule: Schedule | None


@attrs.frozen(kw_only=True)
class BulkOutcome:
    """How many tasks an action changed, and how many had moved on meanwhile."""

    changed: int
    skipped: int


def encode_cursor(sort: TaskSort, key: SortKey) -> str:
    """An opaque cursor for the page after ``key``."""
    parts = [to_micros(x) if isinstance(x, datetime) else x for x in key]
    text = json.dumps([sort.value, *parts], separators=(",", ":"))
    return base64.urlsafe_b64encode(text.encode()).decode().rstrip("=")


def decode_cursor(sort: TaskSort, cursor: str) -> SortKey:
    """The sort key in ``cursor``; :class:`ValidationError` if it is not one of ``sort``."""
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        data = json.loads(raw)
    except (binascii.Error, ValueError):
        raise ValidationError("cursor", "not a cursor of this listing") from None
    shapes = {TaskSort.PRIORITY: (int, int, str)}
    shape = shapes.get(sort, (int, str))
    if (
        not isinstance(data, list)
        or len(data) != len(shape) + 1
        or data[0] != sort.value
        or not all(
            isinstance(v, kind) and not isinstance(v, bool)
            for v, kind in zip(data[1:], shape, strict=True)
        )
    ):
        raise ValidationError("cursor", "not a cursor of this listing (or of another sort order)")
    values = data[1:]
    try:
        if sort is TaskSort.PRIORITY:
            return (values[0], from_micros(values[1]), values[2])
        return (from_micros(values[0]), values[1])
    except OverflowError:
        raise ValidationError("cursor", "not a cursor of this listing") from None


class TaskBrowser:
    """The task views of the dashboard, over the services' storage."""

    def __init__(self, storage: Storage, queue: TaskQueue) -> None:
        self.storage = storage
        self.queue = queue

    async def page_async(
        self,
        flt: TaskFilter,
        sort: TaskSort = TaskSort.NEWEST,
        *,
        cursor: str | None = None,
        limit: int = 50,
    ) -> TaskPage:
        """The page of tasks matching ``flt`` after ``cursor`` (None: the first page)."""
        if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= 1000:
            raise ValidationError("limit", f"must be between 1 and 1000, got {limit!r}")
        after = decode_cursor(sort, cursor) if cursor else None
        tasks = await self.storage.read(
            lambda conn: self.storage.tasks.page(conn, flt, sort, after=after, limit=limit + 1),
            what="list tasks",
        )
        more = len(tasks) > limit
        tasks = tasks[:limit]
        next_cursor = encode_cursor(sort, sort_key(sort, tasks[-1])) if more else None
        return TaskPage(tasks=tasks, next_cursor=next_cursor)

    async def count_async(self, flt: TaskFilter | None, cap: int) -> int:
        """How many tasks match ``flt`` (None: none can), counting no further than ``cap``."""
        if flt is None:
            return 0
        return await self.storage.read(
            lambda conn: self.storage.tasks.count_matching(conn, flt, cap), what="count tasks"
        )

    async def actionable_async(self, action: BulkAction, flt: TaskFilter, cap: int) -> int:
        """How many tasks matching ``flt`` ``action`` applies to (at most ``cap``)."""
        return await self.count_async(flt.narrowed(action.statuses), cap)

    async def detail_async(self, task_id: str) -> TaskDetail | None:
        """Everything the database knows of ``task_id``; None if there is no such task."""
        lookup_key(task_id, "task_id")

        def body(conn: sa.Connection) -> TaskDetail | None:
            task = self.storage.tasks.get(conn, task_id)
            if task is None:
                return None
            known = self.storage.tasks.statuses(conn, task.depends_on)
            events = self.storage.events.query(conn, task_id=task_id, limit=TIMELINE_LIMIT)
            schedule = None
            if task.schedule_id:
                # A schedule that cannot be read (quarantined) is not shown.
                with contextlib.suppress(InvalidRow):
                    schedule = self.storage.schedules.get(conn, task.schedule_id)
            return TaskDetail(
                task=task,
                result=self.storage.results.get(conn, task_id),
                events=events[::-1],
                dependencies={d: known.get(d) for d in task.depends_on},
                dependents=self.storage.tasks.all_dependents(conn, task_id),
                schedule=schedule,
            )

        return await self.storage.read(body, what="get task")

    async def apply_async(self, action: BulkAction, flt: TaskFilter, cap: int) -> BulkOutcome:
        """Retry or cancel up to ``cap`` tasks matching ``flt``, oldest first.

        Each task goes through :meth:`TaskQueue.requeue_async` or
        :meth:`TaskQueue.cancel_async` (its own transaction and event); a
        task that changed state or vanished meanwhile is skipped.
        """
        narrowed = flt.narrowed(action.statuses)
        if narrowed is None:
            return BulkOutcome(changed=0, skipped=0)
        ids = await self.storage.read(
            lambda conn: self.storage.tasks.ids_matching(conn, narrowed, cap), what="list tasks"
        )
        changed = 0
        for task_id in ids:
            try:
                if action is BulkAction.RETRY:
                    await self.queue.requeue_async(task_id)
                    changed += 1
                elif await self.queue.cancel_async(task_id):
                    changed += 1
            except (InvalidTransition, TaskNotFound):
                pass
        return BulkOutcome(changed=changed, skipped=len(ids) - changed)
