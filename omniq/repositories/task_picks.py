"""Claims of named tasks (eager mode runs exactly the task it enqueued): Core statements on
``omniq_tasks`` (a part of :class:`~omniq.repositories.tasks.TaskRepository`)."""

from __future__ import annotations

from collections.abc import Collection, Mapping
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from omniq.db.schema import task_dependencies as deps_t
from omniq.db.schema import tasks as t
from omniq.models import Task, TaskStatus
from omniq.repositories._base import translate_errors
from omniq.repositories.db_migration import claims_open

__all__ = ["PickStatements"]


class PickStatements:
    """Claim given tasks by id (when ready); the ids of a task's dependents."""

    def from_row(self, row: Mapping[str, Any] | sa.RowMapping) -> Task:
        """The Task of a row (see TaskRepository)."""
        raise NotImplementedError

    def claim_ids(
        self,
        conn: Connection,
        ids: Collection[str],
        *,
        now: datetime,
        token: str,
        lease_until: datetime,
        worker_id: str,
    ) -> list[Task]:
        """Move those of ``ids`` that are ready (pending, due, unexpired) to running, started."""
        if not ids:
            return []
        stmt = (
            sa.update(t)
            .where(
                t.c.id.in_(list(ids)),
                t.c.status == TaskStatus.PENDING.value,
                t.c.run_at <= now,
                sa.or_(t.c.expires_at.is_(None), t.c.expires_at > now),
                claims_open(),
            )
            .values(
                status=TaskStatus.RUNNING.value,
                lease_token=token,
                lease_expires_at=lease_until,
                worker_id=worker_id,
                attempts=t.c.attempts + 1,
                started_at=now,
            )
            .returning(*t.c)
        )
        with translate_errors("claim tasks"):
            rows = conn.execute(stmt).mappings().all()
        order = {task_id: i for i, task_id in enumerate(ids)}
        return sorted((self.from_row(row) for row in rows), key=lambda x: order[x.id])

    def dependents_of(self, conn: Connection, task_id: str) -> list[str]:
        """Ids of the tasks that depend on ``task_id`` (any status), oldest edge first."""
        stmt = sa.select(deps_t.c.task_id).where(deps_t.c.depends_on_id == task_id)
        with translate_errors("find dependents"):
            return list(conn.execute(stmt.order_by(deps_t.c.task_id)).scalars().all())
