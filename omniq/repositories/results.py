"""Results repository: Core statements on ``omniq_results``."""

from __future__ import annotations

import contextlib
import operator
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

import cattrs
import sqlalchemy as sa
from sqlalchemy.engine import Connection

from omniq._time import utcnow
from omniq.db.engine import Dialect
from omniq.db.schema import results as r
from omniq.db.schema import tasks as t
from omniq.errors import InvalidRow, OmniQError
from omniq.models import ResultStatus, Task, TaskResult
from omniq.repositories._base import PayloadCodec, root_message, translate_errors
from omniq.serialization import converter

#: TaskResult fields stored as they are (``result`` is serialized).
#: Plain strings: a column's key is a str subclass, which makes every dict keyed by it
#: one the garbage collector tracks.
_ROW_FIELDS = tuple(str(c.key) for c in r.c)
_row_values = operator.attrgetter(*_ROW_FIELDS)
_SUCCESS = ResultStatus.SUCCESS.value


class ResultRepository:
    """Upsert, lookups, expiry and stats of task results."""

    def __init__(self, dialect: Dialect, codec: PayloadCodec | None = None) -> None:
        self.dialect = dialect
        self.codec = codec or PayloadCodec()
        ins = dialect.insert(r)
        self._upsert = ins.on_conflict_do_update(
            index_elements=[r.c.task_id],
            set_={c.name: ins.excluded[c.name] for c in r.c if c.name != "task_id"},
        )
        columns = [(c.key, c.type) for c in r.c]
        #: SQLite: rows bound natively by the driver (see Dialect.driver_rows); a
        #: task's later row replaces its earlier one, as statements one by one would.
        self._upsert_rows = dialect.driver_rows(self._upsert, columns)
        self._upsert_batch: sa.Insert | None = None
        if self._upsert_rows is None:
            # One fixed INSERT ... SELECT FROM unnest(arrays) per batch (PostgreSQL).
            self._batch = dialect.batch_rows("v", columns)
            ins = dialect.insert(r).from_select(list(_ROW_FIELDS), sa.select(*self._batch.c))
            self._upsert_batch = ins.on_conflict_do_update(
                index_elements=[r.c.task_id],
                set_={c.name: ins.excluded[c.name] for c in r.c if c.name != "task_id"},
            )
        self._get = sa.select(r).where(r.c.task_id == sa.bindparam("id"))
        self._latest = (
            sa.select(r)
            .where(
                r.c.schedule_id == sa.bindparam("sid"),
                sa.or_(
                    r.c.expires_at.is_(None),
                    r.c.expires_at > sa.bindparam("now", type_=r.c.expires_at.type),
                ),
            )
            .order_by(r.c.created_at.desc(), r.c.task_id.desc())
            .limit(1)
        )

    def to_row(self, result: TaskResult) -> dict[str, Any]:
        """The column values of ``result`` (value serialized)."""
        row = dict(zip(_ROW_FIELDS, _row_values(result), strict=True))
        row["status"] = result.status._value_
        row["result"] = (
            None
            if result.result is None
            else self.codec.encode_value(result.serializer, result.result, "result")
        )
        return row

    def success_row(
        self,
        task: Task,
        value: Any,
        *,
        now: datetime,
        execution_time: float | None,
        worker_id: str | None,
    ) -> dict[str, Any]:
        """The row ``to_row`` makes for the success result of ``task`` (the hot path).

        Every field comes from a validated Task and the worker's own clock, so
        no TaskResult record is built on the way.
        """
        ttl = task.result_ttl
        expires_at = None
        if ttl is not None:
            with contextlib.suppress(OverflowError):  # past the year 9999: never expires
                expires_at = now + ttl
        return {
            "task_id": task.id,
            "schedule_id": task.schedule_id,
            "status": _SUCCESS,
            "result": None
            if value is None
            else self.codec.encode_value(task.serializer, value, "result"),
            "serializer": task.serializer,
            "error": None,
            "error_type": None,
            "error_traceback": None,
            "created_at": now,
            "started_at": task.started_at,
            "completed_at": now,
            "ttl": ttl,
            "expires_at": expires_at,
            "execution_time": execution_time,
            "worker_id": worker_id or task.worker_id,
            "retry_count": task.retry_count,
        }

    def from_row(self, row: Mapping[str, Any] | sa.RowMapping) -> TaskResult:
        """The TaskResult of a row."""
        data = dict(row)
        try:
            if data["result"] is not None:
                data["result"] = self.codec.decode_value(data["serializer"], data["result"])
            return converter.structure(data, TaskResult)
        except (cattrs.BaseValidationError, OmniQError, ValueError, TypeError) as exc:
            raise InvalidRow(
                f"result of task {data.get('task_id')!r} cannot be read: {root_message(exc)}"
            ) from exc

    def upsert_many(self, conn: Connection, results: Sequence[TaskResult]) -> None:
        """Insert results, replacing any stored for the same task."""
        self.upsert_rows(conn, [self.to_row(x) for x in results])

    def upsert_rows(self, conn: Connection, rows: Sequence[Mapping[str, Any]]) -> None:
        """Insert rows made by :meth:`to_row`, replacing any stored for the same task."""
        if not rows:
            return
        with translate_errors("store result"):
            if self._upsert_rows is not None:
                self._upsert_rows.execute(conn, rows)
            elif self._upsert_batch is not None and len(rows) > 1:
                # One statement cannot upsert a row twice: the last row of a task wins,
                # as it does when the rows are written one after another.
                last = list({row["task_id"]: row for row in rows}.values())
                conn.execute(self._upsert_batch, self._batch.params(last))
            else:
                conn.execute(self._upsert, rows[0] if len(rows) == 1 else list(rows))

    def get(self, conn: Connection, task_id: str) -> TaskResult | None:
        """The result of ``task_id``, or None."""
        with translate_errors("get result"):
            row = (conn.execute(self._get, {"id": task_id})).mappings().one_or_none()
        return None if row is None else self.from_row(row)

    def latest_for_schedule(
        self, conn: Connection, schedule_id: str, now: datetime | None = None
    ) -> TaskResult | None:
        """The newest result, unexpired at ``now`` (default: now), of a schedule's tasks."""
        params = {"sid": schedule_id, "now": now or utcnow()}
        with translate_errors("get result"):
            row = (conn.execute(self._latest, params)).mappings().one_or_none()
        return None if row is None else self.from_row(row)

    def query(
        self,
        conn: Connection,
        *,
        now: datetime,
        status: Sequence[ResultStatus] | None = None,
        func: str | None = None,
        task_name: str | None = None,
        schedule_id: str | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
        limit: int = 100,
        offset: int = 0,
    ) -> list[TaskResult]:
        """Unexpired results, newest first, filtered; ``func``/``task_name`` match the
        result's task (results whose task was purged match neither)."""
        stmt = sa.select(r).where(sa.or_(r.c.expires_at.is_(None), r.c.expires_at > now))
        if func is not None or task_name is not None:
            stmt = stmt.join(t, t.c.id == r.c.task_id)
            if func is not None:
                stmt = stmt.where(t.c.func == func)
            if task_name is not None:
                stmt = stmt.where(t.c.name == task_name)
        if status is not None:
            stmt = stmt.where(r.c.status.in_([x.value for x in status]))
        if schedule_id is not None:
            stmt = stmt.where(r.c.schedule_id == schedule_id)
        if since is not None:
            stmt = stmt.where(r.c.created_at >= since)
        if until is not None:
            stmt = stmt.where(r.c.created_at <= until)
        stmt = stmt.order_by(r.c.created_at.desc(), r.c.task_id.desc()).limit(limit).offset(offset)
        with translate_errors("list results"):
            rows = conn.execute(stmt).mappings().all()
        return [self.from_row(row) for row in rows]

    def update(self, conn: Connection, task_id: str, values: Mapping[str, Any]) -> bool:
        """Update columns of one result; True if it existed."""
        with translate_errors("update result"):
            res = conn.execute(sa.update(r).where(r.c.task_id == task_id).values(**values))
        return res.rowcount > 0

    def delete(self, conn: Connection, task_id: str) -> bool:
        """Delete one result; True if it existed."""
        with translate_errors("delete result"):
            res = conn.execute(sa.delete(r).where(r.c.task_id == task_id))
        return res.rowcount > 0

    def delete_expired(self, conn: Connection, now: datetime, limit: int) -> int:
        """Delete up to ``limit`` results whose expires_at has passed."""
        sub = sa.select(r.c.task_id).where(r.c.expires_at <= now).limit(limit)
        with translate_errors("clean up results"):
            res = conn.execute(sa.delete(r).where(r.c.task_id.in_(sub)))
        return int(res.rowcount)

    def count_by_status(self, conn: Connection) -> dict[str, int]:
        """Counts per result status (one GROUP BY)."""
        stmt = sa.select(r.c.status, sa.func.count()).group_by(r.c.status)
        with translate_errors("result stats"):
            return {row[0]: int(row[1]) for row in (conn.execute(stmt)).all()}
