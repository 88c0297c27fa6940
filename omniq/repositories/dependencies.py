"""Dependency edges of tasks: Core statements on ``omniq_task_dependencies`` (a part of
:class:`~omniq.repositories.tasks.TaskRepository`)."""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from omniq.db.engine import Dialect
from omniq.db.schema import task_dependencies as deps_t
from omniq.db.schema import tasks as t
from omniq.models import Task, TaskStatus
from omniq.repositories._base import translate_errors

__all__ = ["DependencyStatements"]


class DependencyStatements:
    """Insert edges, find waiting dependents, release those whose dependencies completed."""

    dialect: Dialect
    _insert_deps: sa.Insert

    def _dependency_statements(self) -> None:
        """Build the fixed statements (called by the repository's constructor)."""
        done = self._done = self.dialect.batch_rows("done", [("id", deps_t.c.depends_on_id.type)])
        # SQLite must not search the status index (every waiting task, per batch
        # row): wrapped, the batch drives through the edges' index to each task.
        waiting = (
            t.c.status == TaskStatus.WAITING.value
            if self.dialect.name == "postgresql"
            else sa.func.coalesce(t.c.status, "") == TaskStatus.WAITING.value
        )
        stmt = (
            sa.select(t.c.id)
            .select_from(done.rows)
            .join(deps_t, deps_t.c.depends_on_id == done.c.id)
            .join(t, t.c.id == deps_t.c.task_id)
            .where(waiting)
            .order_by(t.c.id)
        )
        if self.dialect.skip_locked:
            # Serialise concurrent completions of two dependencies of one task.
            stmt = stmt.with_for_update(of=t)
        self._dependents = stmt

    def from_row(self, row: Mapping[str, Any] | sa.RowMapping) -> Task:
        """The Task of a row (see TaskRepository)."""
        raise NotImplementedError

    def insert_edges(self, conn: Connection, tasks: Sequence[Task]) -> None:
        """Insert the dependency edges of ``tasks`` (every endpoint already exists)."""
        edges = [{"task_id": x.id, "depends_on_id": d} for x in tasks for d in x.depends_on]
        if edges:
            with translate_errors("enqueue"):
                conn.execute(self._insert_deps, edges)

    # --- dependencies ----------------------------------------------------------

    def dependents(self, conn: Connection, task_ids: Collection[str]) -> list[str]:
        """Ids of waiting tasks that depend on any of ``task_ids`` (locked where rows lock)."""
        if not task_ids:
            return []
        params = self._done.params([(x,) for x in task_ids])
        with translate_errors("find dependents"):
            return list(dict.fromkeys((conn.execute(self._dependents, params)).scalars().all()))

    def dependency_edges(
        self, conn: Connection, depends_on: Collection[str]
    ) -> list[tuple[str, str]]:
        """``(task_id, depends_on_id)`` of waiting tasks that depend on any of ``depends_on``."""
        if not depends_on:
            return []
        stmt = (
            sa.select(deps_t.c.task_id, deps_t.c.depends_on_id)
            .join(t, t.c.id == deps_t.c.task_id)
            .where(
                deps_t.c.depends_on_id.in_(list(depends_on)),
                t.c.status == TaskStatus.WAITING.value,
            )
            .order_by(deps_t.c.task_id)
        )
        with translate_errors("find dependents"):
            return [(row[0], row[1]) for row in conn.execute(stmt).all()]

    def release_ready(
        self, conn: Connection, candidate_ids: Collection[str], now: datetime
    ) -> list[Task]:
        """Move waiting candidates whose dependencies all completed to pending."""
        if not candidate_ids:
            return []
        other = t.alias("dep")
        unmet = (
            sa.select(sa.literal(1))
            .select_from(deps_t.join(other, other.c.id == deps_t.c.depends_on_id))
            .where(
                deps_t.c.task_id == t.c.id,
                other.c.status != TaskStatus.COMPLETED.value,
            )
        )
        stmt = (
            sa.update(t)
            .where(
                t.c.id.in_(list(candidate_ids)),
                t.c.status == TaskStatus.WAITING.value,
                ~sa.exists(unmet),
            )
            .values(status=TaskStatus.PENDING.value)
            .returning(*t.c)
        )
        with translate_errors("release dependents"):
            rows = (conn.execute(stmt)).mappings().all()
        return [self.from_row(row) for row in rows]
