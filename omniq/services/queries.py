"""Queries: read tasks, list them, count them."""

from __future__ import annotations

from collections.abc import Collection

import sqlalchemy as sa

from omniq.errors import TaskNotFound, ValidationError
from omniq.models import Task, TaskAttempt, TaskProgress, TaskStatus
from omniq.models._fields import lookup_key
from omniq.services._shared import _check_page, _statuses
from omniq.services.admin import Administration

__all__ = ["Queries"]


class Queries(Administration):
    """Read-only views of the tasks."""

    async def get_task_async(self, task_id: str) -> Task | None:
        """The task with ``task_id``, or None."""
        lookup_key(task_id, "task_id")
        return await self.storage.read(
            lambda conn: self.storage.tasks.get(conn, task_id), what="get task"
        )

    async def get_attempts_async(self, task_id: str) -> list[TaskAttempt]:
        """The failed attempts of ``task_id``, oldest first, each with its error record.

        The final outcome is the task's result; an unknown task raises
        :class:`TaskNotFound`.
        """
        lookup_key(task_id, "task_id")

        def body(conn: sa.Connection) -> list[TaskAttempt]:
            attempts = self.storage.attempts.for_task(conn, task_id)
            if not attempts and self.storage.tasks.get(conn, task_id) is None:
                raise TaskNotFound(f"no task with id {task_id!r}")
            return attempts

        return await self.storage.read(body, what="get attempts")

    async def get_progress_async(self, task_id: str) -> TaskProgress | None:
        """The last progress ``task_id`` reported from inside its function, or None.

        Kept after the task finished (its final report); an unknown task raises
        :class:`TaskNotFound`.
        """
        lookup_key(task_id, "task_id")

        def body(conn: sa.Connection) -> TaskProgress | None:
            progress = self.storage.progress.get(conn, task_id)
            if progress is None and self.storage.tasks.get(conn, task_id) is None:
                raise TaskNotFound(f"no task with id {task_id!r}")
            return progress

        return await self.storage.read(body, what="get progress")

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
        lookup_key(queue_name, "queue_name")
        statuses = _statuses(status)
        _check_page(limit, offset)
        if order_by not in ("created_at", "run_at", "priority", "completed_at", "id"):
            raise ValidationError("order_by", f"cannot sort by {order_by!r}")
        return await self.storage.read(
            lambda conn: self.storage.tasks.query(
                conn,
                status=statuses,
                queue_name=queue_name,
                limit=limit,
                offset=offset,
                order_by=order_by,
                descending=descending,
            ),
            what="list tasks",
        )

    async def size_async(self, queue_name: str | None = None) -> int:
        """How many tasks are pending (in ``queue_name``, or in all queues)."""
        lookup_key(queue_name, "queue_name")
        return await self.storage.read(
            lambda conn: self.storage.tasks.count(conn, TaskStatus.PENDING, queue_name),
            what="count tasks",
        )

    async def stats_async(self) -> dict[str, dict[str, int]]:
        """Task counts ``{queue_name: {status: n}}`` (one GROUP BY)."""
        counts = await self.storage.read(self.storage.tasks.count_by, what="count tasks")
        out: dict[str, dict[str, int]] = {}
        for (queue, status), n in sorted(counts.items()):
            out.setdefault(queue, {})[status] = n
        return out
