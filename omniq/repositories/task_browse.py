"""Browsing the tasks table: filtered keyset pages, capped counts, per-minute outcomes
(a part of :class:`~omniq.repositories.tasks.TaskRepository`).

Pages are keysets, never offsets: the next page starts after the last row's
sort key, so page 5,000 costs what page 1 costs. The sort keys are indexed:
``(created_at, id)`` and ``(status, created_at, id)`` for time,
``(priority DESC, run_at, id)`` and ``(status, priority DESC, run_at, id)``
for priority (revision 0006 and the claim indexes).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from omniq._time import from_micros
from omniq.db.schema import task_dependencies as deps_t
from omniq.db.schema import tasks as t
from omniq.models import Task, TaskFilter, TaskSort, TaskStatus
from omniq.repositories._base import translate_errors

__all__ = ["BrowseStatements", "SortKey"]

#: The sort key of a row: (created_at, id) or (priority, run_at, id).
SortKey = tuple[Any, ...]

_MINUTE_US = 60_000_000


def _like(text: str) -> str:
    """``%text%`` with LIKE's wildcards escaped (escape character ``\\``)."""
    escaped = text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"%{escaped}%"


def where_filter(flt: TaskFilter) -> list[sa.ColumnElement[bool]]:
    """The WHERE clauses of ``flt`` (Core expressions, bound parameters only)."""
    clauses: list[sa.ColumnElement[bool]] = []
    if flt.queue_name is not None:
        clauses.append(t.c.queue_name == flt.queue_name)
    if flt.statuses:
        clauses.append(t.c.status.in_(sorted(s.value for s in flt.statuses)))
    if flt.func:
        clauses.append(t.c.func.ilike(_like(flt.func), escape="\\"))
    if flt.name:
        clauses.append(t.c.name.ilike(_like(flt.name), escape="\\"))
    if flt.tag is not None:
        # Tags are a JSON list: match the tag's JSON string (both encodings of non-ASCII).
        text = sa.cast(t.c.tags, sa.Text)
        forms = {json.dumps(flt.tag), json.dumps(flt.tag, ensure_ascii=False)}
        clauses.append(sa.or_(*(text.like(_like(form), escape="\\") for form in forms)))
    if flt.created_from is not None:
        clauses.append(t.c.created_at >= flt.created_from)
    if flt.created_to is not None:
        clauses.append(t.c.created_at < flt.created_to)
    return clauses


def _after(sort: TaskSort, key: SortKey) -> sa.ColumnElement[bool]:
    """Rows strictly after ``key`` in ``sort`` order.

    The leading column's bound comes first as a plain range (``<=``/``>=``), so
    the index is entered at the key instead of scanned from its start.
    """
    if sort is TaskSort.PRIORITY:
        priority, run_at, task_id = key
        return sa.and_(
            t.c.priority <= priority,
            sa.or_(
                t.c.priority < priority,
                t.c.run_at > run_at,
                sa.and_(t.c.run_at == run_at, t.c.id > task_id),
            ),
        )
    created, task_id = key
    if sort is TaskSort.NEWEST:
        return sa.and_(
            t.c.created_at <= created, sa.or_(t.c.created_at < created, t.c.id < task_id)
        )
    return sa.and_(t.c.created_at >= created, sa.or_(t.c.created_at > created, t.c.id > task_id))


_ORDERS: dict[TaskSort, tuple[sa.UnaryExpression[Any], ...]] = {
    TaskSort.NEWEST: (t.c.created_at.desc(), t.c.id.desc()),
    TaskSort.OLDEST: (t.c.created_at.asc(), t.c.id.asc()),
    TaskSort.PRIORITY: (t.c.priority.desc(), t.c.run_at.asc(), t.c.id.asc()),
}


def sort_key(sort: TaskSort, task: Task) -> SortKey:
    """The key of ``task`` in ``sort`` order (what the next page starts after)."""
    if sort is TaskSort.PRIORITY:
        return (task.priority, task.run_at, task.id)
    return (task.created_at, task.id)


class BrowseStatements:
    """Filtered keyset pages and the counts and series of the dashboard."""

    def from_row(self, row: Mapping[str, Any] | sa.RowMapping) -> Task:
        """The Task of a row (see TaskRepository)."""
        raise NotImplementedError

    def page(
        self,
        conn: Connection,
        flt: TaskFilter,
        sort: TaskSort,
        *,
        after: SortKey | None,
        limit: int,
    ) -> list[Task]:
        """Up to ``limit`` tasks matching ``flt`` in ``sort`` order, after ``after``."""
        stmt = sa.select(t).where(*where_filter(flt))
        if after is not None:
            stmt = stmt.where(_after(sort, after))
        stmt = stmt.order_by(*_ORDERS[sort]).limit(limit)
        with translate_errors("list tasks"):
            rows = conn.execute(stmt).mappings().all()
        return [self.from_row(row) for row in rows]

    def count_matching(self, conn: Connection, flt: TaskFilter, cap: int) -> int:
        """How many tasks match ``flt``, counting no further than ``cap``."""
        sub = sa.select(t.c.id).where(*where_filter(flt)).limit(cap).subquery()
        with translate_errors("count tasks"):
            return int(conn.execute(sa.select(sa.func.count()).select_from(sub)).scalar_one())

    def ids_matching(self, conn: Connection, flt: TaskFilter, limit: int) -> list[str]:
        """Ids of up to ``limit`` tasks matching ``flt``, oldest first."""
        stmt = (
            sa.select(t.c.id)
            .where(*where_filter(flt))
            .order_by(*_ORDERS[TaskSort.OLDEST])
            .limit(limit)
        )
        with translate_errors("list tasks"):
            return list(conn.execute(stmt).scalars().all())

    def outcomes_per_minute(
        self, conn: Connection, since: datetime
    ) -> dict[tuple[datetime, TaskStatus], int]:
        """Tasks completed and failed since ``since``, per (minute, status)."""
        minute = sa.type_coerce(t.c.completed_at, sa.BigInteger) // _MINUTE_US
        stmt = (
            sa.select(minute, t.c.status, sa.func.count())
            .where(
                t.c.completed_at >= since,
                t.c.status.in_([TaskStatus.COMPLETED.value, TaskStatus.FAILED.value]),
            )
            .group_by(minute, t.c.status)
        )
        with translate_errors("count outcomes"):
            rows = conn.execute(stmt).all()
        return {(from_micros(int(m) * _MINUTE_US), TaskStatus(s)): int(n) for m, s, n in rows}

    def oldest_pending(self, conn: Connection) -> dict[str, datetime]:
        """The creation time of the oldest pending task of each queue."""
        stmt = (
            sa.select(t.c.queue_name, sa.func.min(t.c.created_at))
            .where(t.c.status == TaskStatus.PENDING.value)
            .group_by(t.c.queue_name)
        )
        with translate_errors("count tasks"):
            rows = conn.execute(stmt).all()
        return {row[0]: row[1] for row in rows if row[1] is not None}

    def counts_and_oldest_due(
        self, conn: Connection, now: datetime
    ) -> dict[tuple[str, str], tuple[int, datetime | None]]:
        """Per (queue_name, status): the count and the earliest run_at at or before ``now``.

        One GROUP BY (the metrics' scrape): a pending group's earliest due
        run_at is when its longest-waiting ready task became due.
        """
        oldest_due = sa.func.min(sa.case((t.c.run_at <= now, t.c.run_at), else_=None))
        stmt = sa.select(
            t.c.queue_name, t.c.status, sa.func.count(), sa.type_coerce(oldest_due, t.c.run_at.type)
        ).group_by(t.c.queue_name, t.c.status)
        with translate_errors("count tasks"):
            rows = conn.execute(stmt).all()
        return {(row[0], row[1]): (int(row[2]), row[3]) for row in rows}

    def all_dependents(self, conn: Connection, task_id: str) -> dict[str, TaskStatus]:
        """Every task that depends on ``task_id``, with its status (no locks)."""
        stmt = (
            sa.select(t.c.id, t.c.status)
            .join(deps_t, deps_t.c.task_id == t.c.id)
            .where(deps_t.c.depends_on_id == task_id)
            .order_by(t.c.id)
        )
        with translate_errors("find dependents"):
            return {row[0]: TaskStatus(row[1]) for row in conn.execute(stmt).all()}
