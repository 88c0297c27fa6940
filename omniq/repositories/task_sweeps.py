"""Sweeps of the tasks table: quarantine, lost leases, deletes, retention (a part of
:class:`~omniq.repositories.tasks.TaskRepository`)."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from omniq.db.engine import Dialect
from omniq.db.schema import tasks as t
from omniq.models import FINAL_TASK_STATUSES, Task, TaskStatus
from omniq.repositories._base import translate_errors

__all__ = ["SweepStatements", "final_before"]


class SweepStatements:
    """Statements of the maintenance sweeps and of deletes."""

    dialect: Dialect

    def from_row(self, row: Mapping[str, Any] | sa.RowMapping) -> Task:
        """The Task of a row (see TaskRepository)."""
        raise NotImplementedError

    def fail_unknown_statuses(
        self, conn: Connection, now: datetime, limit: int
    ) -> list[tuple[str, str, str | None]]:
        """Fail rows whose status OmniQ does not know (written by hand); return them.

        Returns ``(task_id, old_status, queue_name)`` for each row failed.
        """
        known = [s.value for s in TaskStatus]
        sub = sa.select(t.c.id).where(t.c.status.not_in(known)).limit(limit)
        old = sa.select(t.c.id, t.c.status, t.c.queue_name).where(t.c.id.in_(sub))
        with translate_errors("quarantine tasks"):
            rows = (conn.execute(old)).all()
            if not rows:
                return []
            conn.execute(
                sa.update(t)
                .where(t.c.id.in_([r.id for r in rows]), t.c.status.not_in(known))
                .values(
                    status=TaskStatus.FAILED.value,
                    completed_at=now,
                    lease_token=None,
                    lease_expires_at=None,
                    last_error=sa.literal("quarantined: unknown status ") + t.c.status,
                )
            )
        return [(r.id, r.status, r.queue_name) for r in rows]

    def list_expired_leases(self, conn: Connection, now: datetime, limit: int) -> list[Task]:
        """Running tasks whose lease expired before ``now`` (their worker is gone)."""
        stmt = (
            sa.select(t)
            .where(t.c.lease_expires_at < now, t.c.status == TaskStatus.RUNNING.value)
            .order_by(t.c.lease_expires_at)
            .limit(limit)
        )
        if self.dialect.skip_locked:
            stmt = stmt.with_for_update(skip_locked=True)
        with translate_errors("find lost leases"):
            rows = (conn.execute(stmt)).mappings().all()
        return [self.from_row(row) for row in rows]

    # --- deletes ----------------------------------------------------------------

    def delete(self, conn: Connection, task_id: str) -> bool:
        """Delete one task; True if it existed."""
        with translate_errors("delete task"):
            result = conn.execute(sa.delete(t).where(t.c.id == task_id))
        return result.rowcount > 0

    def delete_where(
        self, conn: Connection, where: sa.ColumnElement[bool], limit: int
    ) -> list[str]:
        """Delete up to ``limit`` tasks matching ``where``; return their ids."""
        sub = sa.select(t.c.id).where(where).limit(limit)
        stmt = sa.delete(t).where(t.c.id.in_(sub)).returning(t.c.id)
        with translate_errors("delete tasks"):
            return list((conn.execute(stmt)).scalars().all())


def final_before(cutoff: datetime) -> sa.ColumnElement[bool]:
    """Finished tasks completed before ``cutoff`` (for retention)."""
    return sa.and_(
        t.c.completed_at < cutoff, t.c.status.in_([s.value for s in FINAL_TASK_STATUSES])
    )
