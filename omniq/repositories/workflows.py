"""Workflows (chain, group, chord): Core statements on ``omniq_workflows`` and
``omniq_workflow_tasks``."""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from omniq.db.schema import tasks as t
from omniq.db.schema import workflow_tasks as m
from omniq.db.schema import workflows as w
from omniq.repositories._base import translate_errors

__all__ = ["WorkflowRepository"]


class WorkflowRepository:
    """Insert a workflow and its members, count settled inputs down, record outcomes."""

    def __init__(self) -> None:
        self._decrement = (
            sa.update(m)
            .where(m.c.task_id == sa.bindparam("id"))
            .values(remaining=m.c.remaining - 1)
            .returning(m.c.remaining, m.c.inputs, m.c.input_mode)
        )
        self._record = (
            sa.update(m)
            .where(m.c.task_id == sa.bindparam("id"), m.c.status.is_(None))
            .values(
                status=sa.bindparam("status"),
                result=sa.bindparam("result"),
                error=sa.bindparam("error"),
            )
        )

    def insert(
        self, conn: Connection, workflow: Mapping[str, Any], members: Sequence[Mapping[str, Any]]
    ) -> None:
        """Insert a workflow row and its member rows."""
        with translate_errors("enqueue workflow"):
            conn.execute(w.insert(), [dict(workflow)])
            conn.execute(m.insert(), [dict(x) for x in members])

    def members(self, conn: Connection, task_ids: Collection[str]) -> dict[str, sa.RowMapping]:
        """The member rows of ``task_ids``, by task id."""
        if not task_ids:
            return {}
        stmt = sa.select(m).where(m.c.task_id.in_(list(task_ids)))
        with translate_errors("read workflow members"):
            return {row["task_id"]: row for row in conn.execute(stmt).mappings().all()}

    def record(self, conn: Connection, outcomes: Sequence[Mapping[str, Any]]) -> None:
        """Record members' final ``status``, ``result`` and ``error`` (once per member)."""
        if outcomes:
            with translate_errors("record workflow outcome"):
                conn.execute(self._record, [dict(x) for x in outcomes])

    def settle_input(self, conn: Connection, task_id: str) -> tuple[int, list[str], str] | None:
        """Count one settled input off ``task_id``'s counter: ``(remaining, inputs, mode)``."""
        with translate_errors("count workflow inputs"):
            row = conn.execute(self._decrement, {"id": task_id}).one_or_none()
        return None if row is None else (int(row[0]), list(row[1]), str(row[2]))

    def downstream_of(self, conn: Connection, task_id: str) -> list[str]:
        """The members that receive ``task_id``'s result (none if it is no member)."""
        stmt = sa.select(m.c.downstream).where(m.c.task_id == task_id)
        with translate_errors("read workflow members"):
            found = conn.execute(stmt).scalar_one_or_none()
        return list(found or ())

    def delete_gone(self, conn: Connection, task_ids: Collection[str]) -> int:
        """Delete the workflows of ``task_ids`` (tasks just deleted) that have no task
        left, with their member rows; return how many."""
        if not task_ids:
            return 0
        of_tasks = sa.select(m.c.workflow_id).where(m.c.task_id.in_(list(task_ids))).distinct()
        alive = (
            sa.select(sa.literal(1))
            .select_from(m.join(t, t.c.id == m.c.task_id))
            .where(m.c.workflow_id == w.c.id)
        )
        with translate_errors("purge workflows"):
            gone = list(
                conn.execute(
                    sa.select(w.c.id).where(w.c.id.in_(of_tasks), ~sa.exists(alive))
                ).scalars()
            )
            if gone:
                conn.execute(sa.delete(m).where(m.c.workflow_id.in_(gone)))
                conn.execute(sa.delete(w).where(w.c.id.in_(gone)))
        return len(gone)

    def get(self, conn: Connection, workflow_id: str) -> sa.RowMapping | None:
        """The workflow row, or None."""
        with translate_errors("get workflow"):
            return conn.execute(sa.select(w).where(w.c.id == workflow_id)).mappings().one_or_none()

    def member_rows(self, conn: Connection, workflow_id: str) -> list[sa.RowMapping]:
        """The members of a workflow in position order, with their task's status and
        function (None once the task row is gone)."""
        stmt = (
            sa.select(m, t.c.status.label("task_status"), t.c.func)
            .select_from(m.outerjoin(t, t.c.id == m.c.task_id))
            .where(m.c.workflow_id == workflow_id)
            .order_by(m.c.position)
        )
        with translate_errors("get workflow"):
            return list(conn.execute(stmt).mappings().all())
