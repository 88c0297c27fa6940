"""Progress repository: the last progress of running tasks, in ``omniq_task_progress``."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from omniq.db.engine import Dialect
from omniq.db.schema import task_progress as p
from omniq.db.schema import tasks as t
from omniq.errors import InvalidRow, OmniQError
from omniq.models import TaskProgress, TaskStatus
from omniq.repositories._base import root_message, translate_errors

__all__ = ["ProgressRepository"]

_COLUMNS = ("task_id", "attempt", "done", "total", "message", "updated_at")


class ProgressRepository:
    """Write (fenced by the task's lease) and read the progress of tasks."""

    def __init__(self, dialect: Dialect) -> None:
        # One row per task, written only while the task runs under the writer's
        # lease: a worker that lost the task cannot overwrite its new owner's
        # progress, and a finished or deleted task gets no row.
        source = sa.select(
            t.c.id,
            sa.bindparam("attempt", type_=p.c.attempt.type),
            sa.bindparam("done", type_=p.c.done.type),
            sa.bindparam("total", type_=p.c.total.type),
            sa.bindparam("message", type_=p.c.message.type),
            sa.bindparam("updated_at", type_=p.c.updated_at.type),
        ).where(
            t.c.id == sa.bindparam("task_id"),
            t.c.lease_token == sa.bindparam("lease_token"),
            t.c.status == TaskStatus.RUNNING.value,
        )
        insert = dialect.insert(p).from_select(list(_COLUMNS), source)
        self._upsert = insert.on_conflict_do_update(
            index_elements=[p.c.task_id],
            set_={key: insert.excluded[key] for key in _COLUMNS if key != "task_id"},
        )
        self._get = sa.select(p).where(p.c.task_id == sa.bindparam("task_id"))

    def write(self, conn: Connection, rows: Sequence[Mapping[str, Any]]) -> None:
        """Upsert progress rows (keys: task_id, lease_token and the columns).

        A row whose task is not running under ``lease_token`` is skipped.
        Rows are written in task-id order (one lock order for every writer).
        """
        if not rows:
            return
        ordered = sorted(rows, key=lambda row: str(row["task_id"]))
        with translate_errors("write progress"):
            conn.execute(self._upsert, ordered)

    def get(self, conn: Connection, task_id: str) -> TaskProgress | None:
        """The last progress of ``task_id``, or None."""
        with translate_errors("get progress"):
            row = conn.execute(self._get, {"task_id": task_id}).mappings().one_or_none()
        return None if row is None else self.from_row(row)

    @staticmethod
    def from_row(row: Mapping[str, Any] | sa.RowMapping) -> TaskProgress:
        """The TaskProgress of a row."""
        try:
            return TaskProgress(
                task_id=row["task_id"],
                attempt=row["attempt"],
                done=float(row["done"]),
                total=None if row["total"] is None else float(row["total"]),
                message=row["message"],
                updated_at=row["updated_at"],
            )
        except (OmniQError, TypeError, ValueError) as exc:
            raise InvalidRow(
                f"the progress of task {row.get('task_id')!r} cannot be read: {root_message(exc)}"
            ) from exc
