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
from omniq.errors import InvalidRow
from omniq.models import Task, TaskStatus
from omniq.repositories._base import translate_errors
from omniq.repositories.db_migration import claims_open

__all__ = ["PickStatements"]


def _claim_ids_statement(start: bool) -> sa.Update:
    now = sa.bindparam("now", type_=t.c.run_at.type)
    return (
        sa.update(t)
        .where(
            t.c.id.in_(sa.bindparam("ids", expanding=True)),
            t.c.status == TaskStatus.PENDING.value,
            t.c.run_at <= now,
            sa.or_(t.c.expires_at.is_(None), t.c.expires_at > now),
            claims_open(),
        )
        .values(
            status=TaskStatus.RUNNING.value,
            lease_token=sa.bindparam("token"),
            lease_expires_at=sa.bindparam("lease_until", type_=t.c.lease_expires_at.type),
            worker_id=sa.bindparam("worker_id"),
            attempts=t.c.attempts + 1 if start else t.c.attempts,
            started_at=now if start else None,
        )
        .returning(*t.c)
    )


#: Claims by id, by ``start`` (built once: the limited claim runs one per claim).
_CLAIM_IDS = {start: _claim_ids_statement(start) for start in (True, False)}


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
        start: bool = True,
        unreadable: list[tuple[str, str]] | None = None,
    ) -> list[Task]:
        """Move those of ``ids`` that are ready (pending, due, unexpired) to running,
        started (``attempts`` + 1) unless ``start=False``; ``unreadable`` as for
        ``TaskRepository.claim``."""
        if not ids:
            return []
        stmt = _CLAIM_IDS[start]
        params = {
            "ids": list(ids),
            "now": now,
            "token": token,
            "lease_until": lease_until,
            "worker_id": worker_id,
        }
        with translate_errors("claim tasks"):
            rows = conn.execute(stmt, params).mappings().all()
        order = {task_id: i for i, task_id in enumerate(ids)}
        claimed = []
        for row in rows:
            try:
                claimed.append(self.from_row(row))
            except InvalidRow as exc:
                if unreadable is None:
                    raise
                unreadable.append((str(row["id"]), str(exc)))
        return sorted(claimed, key=lambda x: order[x.id])

    def dependents_of(self, conn: Connection, task_id: str) -> list[str]:
        """Ids of the tasks that depend on ``task_id`` (any status), oldest edge first."""
        stmt = sa.select(deps_t.c.task_id).where(deps_t.c.depends_on_id == task_id)
        with translate_errors("find dependents"):
            return list(conn.execute(stmt.order_by(deps_t.c.task_id)).scalars().all())
