"""Events repository: Core statements on ``omniq_events``."""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from datetime import datetime
from typing import Any

import cattrs
import sqlalchemy as sa
from sqlalchemy.engine import Connection

from omniq._time import utcnow
from omniq.db.engine import Dialect
from omniq.db.schema import events as e
from omniq.errors import InvalidRow, OmniQError
from omniq.models import EventLevel, EventType, TaskEvent
from omniq.repositories._base import root_message, translate_errors
from omniq.serialization import converter

_EVENT_DEFAULTS: dict[str, Any] = {
    "task_id": None,
    "queue_name": None,
    "worker_id": None,
    "schedule_id": None,
    "message": None,
    "data": None,
    "execution_time": None,
    "retry_count": None,
    "error": None,
    "source": None,
}


#: The key marking an event row whose earlier write may have landed (see :func:`maybe_written`).
_MAYBE_WRITTEN = "omniq_maybe_written"


def maybe_written(row: Mapping[str, Any]) -> dict[str, Any]:
    """``row`` marked as possibly written already: a transaction that held it raised,
    but its commit may have landed (a connection lost before the reply). When it is
    written again, it is left out if a row of the same task, type, time and worker is
    stored (times are to the microsecond, so that is the same event)."""
    return {**row, _MAYBE_WRITTEN: True}


def event_row(kind: EventType, **fields: Any) -> dict[str, Any]:
    """A complete event row (every column but id), for the hot paths.

    ``level`` defaults to info and ``timestamp`` to now.
    """
    row = {**_EVENT_DEFAULTS, **fields}
    # ``_value_`` is the member's value without the ``.value`` property's cost.
    row["event_type"] = kind._value_
    level = row.get("level")
    row["level"] = level._value_ if isinstance(level, EventLevel) else (level or "info")
    if row.get("timestamp") is None:
        row["timestamp"] = utcnow()
    return row


class EventRepository:
    """Append, filtered queries, retention and stats of events."""

    def __init__(self, dialect: Dialect) -> None:
        self.dialect = dialect
        self._insert = e.insert()
        #: Column keys of an event row (every column but the id).
        self._keys = [c.key for c in e.c if c.key != "id"]
        columns = [(c.key, c.type) for c in e.c if c.key != "id"]
        #: SQLite: rows bound natively by the driver (see Dialect.driver_rows).
        self._insert_rows = dialect.driver_rows(self._insert, columns)
        self._insert_batch: sa.Insert | None = None
        if self._insert_rows is None:
            # One fixed INSERT ... SELECT FROM unnest(arrays) per batch (PostgreSQL).
            self._batch = dialect.batch_rows("v", columns)
            self._insert_batch = e.insert().from_select(
                self._keys, sa.select(*self._batch.c).where(sa.true())
            )

    @staticmethod
    def to_row(event: TaskEvent) -> dict[str, Any]:
        """The column values of ``event`` (without the database-assigned id)."""
        row: dict[str, Any] = converter.unstructure(event)
        row.pop("id")
        return row

    @staticmethod
    def from_row(row: Mapping[str, Any] | sa.RowMapping) -> TaskEvent:
        """The TaskEvent of a row."""
        try:
            return converter.structure(dict(row), TaskEvent)
        except (cattrs.BaseValidationError, OmniQError, ValueError, TypeError) as exc:
            raise InvalidRow(
                f"event {row.get('id')!r} cannot be read: {root_message(exc)}"
            ) from exc

    def insert_many(self, conn: Connection, events: Sequence[TaskEvent]) -> None:
        """Append events (one multi-row statement)."""
        if not events:
            return
        self.insert_rows(conn, [self.to_row(x) for x in events])

    def insert_rows(self, conn: Connection, rows: Sequence[Mapping[str, Any]]) -> None:
        """Append pre-built event rows (the hot paths build rows directly)."""
        if not rows:
            return
        if any(_MAYBE_WRITTEN in row for row in rows):
            rows = self._not_stored(conn, rows)
            if not rows:
                return
        with translate_errors("log event"):
            if self._insert_rows is not None:
                self._insert_rows.execute(conn, rows)
            elif self._insert_batch is not None and len(rows) > 1:
                conn.execute(self._insert_batch, self._batch.params(rows))
            else:
                conn.execute(self._insert, rows[0] if len(rows) == 1 else list(rows))

    def _not_stored(
        self, conn: Connection, rows: Sequence[Mapping[str, Any]]
    ) -> list[Mapping[str, Any]]:
        """``rows`` without the rows marked :func:`maybe_written` that are stored: a row
        of the same task (or, for a worker's own event, no task and the same worker),
        type and time. A marked row of neither a task nor a worker is written again."""
        unsure = [row for row in rows if _MAYBE_WRITTEN in row]
        stored: set[tuple[Any, ...]] = set()
        about_tasks = sorted({row["task_id"] for row in unsure if row.get("task_id")})
        workers = sorted(
            {row["worker_id"] for row in unsure if row.get("worker_id") and not row.get("task_id")}
        )
        whose: list[sa.ColumnElement[bool]] = []
        if about_tasks:
            whose.append(e.c.task_id.in_(about_tasks))
        if workers:
            whose.append(sa.and_(e.c.task_id.is_(None), e.c.worker_id.in_(workers)))
        if whose:
            stmt = sa.select(e.c.task_id, e.c.event_type, e.c.timestamp, e.c.worker_id).where(
                sa.or_(*whose),
                e.c.event_type.in_(sorted({row["event_type"] for row in unsure})),
                e.c.timestamp.in_(sorted({row["timestamp"] for row in unsure})),
            )
            with translate_errors("log event"):
                stored = {tuple(found) for found in conn.execute(stmt)}
        kept = []
        for row in rows:
            if _MAYBE_WRITTEN in row:
                row = {k: v for k, v in row.items() if k != _MAYBE_WRITTEN}
                key = (row.get("task_id"), row["event_type"], row["timestamp"], row["worker_id"])
                if key in stored:
                    continue
            kept.append(row)
        return kept

    def query(
        self,
        conn: Connection,
        *,
        task_id: str | None = None,
        event_types: Collection[EventType] | None = None,
        queue_name: str | None = None,
        worker_id: str | None = None,
        schedule_id: str | None = None,
        level: EventLevel | None = None,
        start_time: datetime | None = None,
        end_time: datetime | None = None,
        limit: int = 100,
        offset: int = 0,
    ) -> list[TaskEvent]:
        """Events matching every given filter, newest first."""
        stmt = sa.select(e)
        if task_id is not None:
            stmt = stmt.where(e.c.task_id == task_id)
        if event_types is not None:  # an empty list matches nothing, as a task query's
            stmt = stmt.where(e.c.event_type.in_([x.value for x in event_types]))
        if queue_name is not None:
            stmt = stmt.where(e.c.queue_name == queue_name)
        if worker_id is not None:
            stmt = stmt.where(e.c.worker_id == worker_id)
        if schedule_id is not None:
            stmt = stmt.where(e.c.schedule_id == schedule_id)
        if level is not None:
            stmt = stmt.where(e.c.level == level.value)
        if start_time is not None:
            stmt = stmt.where(e.c.timestamp >= start_time)
        if end_time is not None:
            stmt = stmt.where(e.c.timestamp <= end_time)
        stmt = stmt.order_by(e.c.id.desc()).limit(limit).offset(offset)
        with translate_errors("query events"):
            rows = (conn.execute(stmt)).mappings().all()
        return [self.from_row(row) for row in rows]

    def delete_older_than(self, conn: Connection, cutoff: datetime, limit: int) -> int:
        """Delete up to ``limit`` events with a timestamp before ``cutoff``."""
        sub = sa.select(e.c.id).where(e.c.timestamp < cutoff).limit(limit)
        with translate_errors("clean up events"):
            res = conn.execute(sa.delete(e).where(e.c.id.in_(sub)))
        return int(res.rowcount)

    def count_by(self, conn: Connection, column: str) -> dict[str, int]:
        """Counts grouped by ``event_type`` or ``level`` (one GROUP BY)."""
        col = {"event_type": e.c.event_type, "level": e.c.level}[column]
        stmt = sa.select(col, sa.func.count()).group_by(col)
        with translate_errors("event stats"):
            return {row[0]: int(row[1]) for row in (conn.execute(stmt)).all()}
