"""Attempts repository: Core statements on ``omniq_task_attempts`` (failed attempts)."""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from omniq.db.schema import attempts as a
from omniq.errors import InvalidRow, OmniQError
from omniq.models import Task, TaskAttempt, TaskError
from omniq.repositories._base import root_message, translate_errors


def attempt_row(
    task: Task, error: TaskError, *, finished_at: datetime, worker_id: str | None
) -> dict[str, Any]:
    """The row of a failed attempt of ``task`` (``error.attempt`` is its number)."""
    return {
        "task_id": task.id,
        "attempt": error.attempt,
        "error_type": error.type,
        "message": error.message,
        "traceback": error.traceback,
        "started_at": task.started_at,
        "finished_at": finished_at,
        "retryable": error.retryable,
        "worker_id": worker_id or task.worker_id,
    }


class AttemptRepository:
    """Append and read the failed attempts of tasks."""

    def __init__(self) -> None:
        self._insert = a.insert()
        self._for_task = sa.select(a).where(a.c.task_id == sa.bindparam("task_id")).order_by(a.c.id)

    def insert_rows(self, conn: Connection, rows: Sequence[Mapping[str, Any]]) -> None:
        """Insert rows made by :func:`attempt_row`."""
        if rows:
            with translate_errors("record attempt"):
                conn.execute(self._insert, list(rows))

    def counts(self, conn: Connection, task_ids: Collection[str]) -> dict[str, int]:
        """How many failed attempts each of ``task_ids`` has recorded (absent: none)."""
        if not task_ids:
            return {}
        stmt = (
            sa.select(a.c.task_id, sa.func.count())
            .where(a.c.task_id.in_(list(task_ids)))
            .group_by(a.c.task_id)
        )
        with translate_errors("count attempts"):
            return {row[0]: int(row[1]) for row in conn.execute(stmt).all()}

    def retried(
        self, conn: Connection, attempts: Collection[tuple[str, str | None, datetime, TaskError]]
    ) -> set[str]:
        """The task ids of ``attempts`` (task id, worker id, start, error) recorded
        as failed with that error and retried: that attempt's retry was written. Its
        start and worker tell one attempt of a task from every other; its error, a
        failure from the same attempt's crash recovery (``WorkerLost``)."""
        if not attempts:
            return set()
        wanted = {(x[0], x[1], x[2], x[3].type, x[3].message) for x in attempts}
        stmt = sa.select(
            a.c.task_id, a.c.worker_id, a.c.started_at, a.c.error_type, a.c.message
        ).where(a.c.task_id.in_({x[0] for x in wanted}), a.c.retryable)
        with translate_errors("get attempts"):
            rows = conn.execute(stmt).all()
        return {row[0] for row in rows if tuple(row) in wanted}

    def for_task(self, conn: Connection, task_id: str) -> list[TaskAttempt]:
        """The failed attempts of ``task_id``, oldest first."""
        with translate_errors("get attempts"):
            rows = conn.execute(self._for_task, {"task_id": task_id}).mappings().all()
        return [self.from_row(row) for row in rows]

    @staticmethod
    def from_row(row: Mapping[str, Any] | sa.RowMapping) -> TaskAttempt:
        """The TaskAttempt of a row."""
        try:
            return TaskAttempt(
                task_id=row["task_id"],
                attempt=row["attempt"],
                started_at=row["started_at"],
                finished_at=row["finished_at"],
                worker_id=row["worker_id"],
                error=TaskError(
                    type=row["error_type"],
                    message=row["message"],
                    traceback=row["traceback"],
                    attempt=row["attempt"],
                    at=row["finished_at"],
                    retryable=bool(row["retryable"]),
                ),
            )
        except (OmniQError, TypeError, ValueError) as exc:
            raise InvalidRow(
                f"attempt {row.get('id')!r} of task {row.get('task_id')!r} cannot be read: "
                f"{root_message(exc)}"
            ) from exc
