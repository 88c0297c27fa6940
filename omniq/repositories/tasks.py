"""Tasks repository: Core statements on ``omniq_tasks`` and its dependency edges.

Methods run on an Connection handed in by a service, inside the
service's transaction; they never begin or commit, and hold no business
rules beyond the conditions that make a transition atomic.
"""

from __future__ import annotations

import operator
from collections.abc import Collection, Iterable, Mapping, Sequence
from datetime import datetime
from typing import Any

import cattrs
import sqlalchemy as sa
from sqlalchemy.engine import Connection

from omniq.db.driver_exec import own_connection
from omniq.db.engine import Dialect
from omniq.db.schema import task_dependencies as deps_t
from omniq.db.schema import tasks as t
from omniq.errors import InvalidRow, OmniQError, ValidationError
from omniq.models import Task, TaskStatus
from omniq.models._fields import check_utf8
from omniq.models.task import field_keys
from omniq.repositories._base import PayloadCodec, translate_errors
from omniq.repositories.db_migration import claims_open
from omniq.repositories.dependencies import DependencyStatements
from omniq.repositories.limits import controlled_queues, unlimited
from omniq.repositories.task_browse import BrowseStatements
from omniq.repositories.task_leases import LeaseStatements, status_values
from omniq.repositories.task_picks import PickStatements
from omniq.repositories.task_sweeps import SweepStatements

#: Task fields stored as they are in their own column (the call's arguments go into
#: ``payload``; ``status`` is stored as its value).
#: The keys are the Task fields' own names: plain strings (a column's key is a str
#: subclass, whose instances the garbage collector tracks, and so every dict keyed by it).
_ROW_FIELDS = tuple(field_keys(c.key for c in t.c if c.key not in ("payload", "status")))
_row_values = operator.attrgetter(*_ROW_FIELDS)
#: Text columns written from user input (checked to be storable UTF-8).
_TEXT_COLUMNS = tuple(
    c.key
    for c in t.c
    if isinstance(c.type, sa.String | sa.Text) and c.key not in ("payload", "status")
)
_text_values = operator.attrgetter(*_TEXT_COLUMNS)
_LIVE = (TaskStatus.PENDING.value, TaskStatus.WAITING.value, TaskStatus.RUNNING.value)
_ORDER = (t.c.priority.desc(), t.c.run_at, t.c.id)

#: Columns that list/filter APIs may sort by (everything else is rejected).
SORTABLE = {
    "created_at": t.c.created_at,
    "run_at": t.c.run_at,
    "priority": t.c.priority,
    "completed_at": t.c.completed_at,
    "id": t.c.id,
}


def _naming_schedule(exc: ValidationError, rows: Sequence[Mapping[str, Any]]) -> ValidationError:
    """``exc`` of a task insert; a foreign-key failure names ``schedule_id``, a task
    row's only foreign key (SQLite's message names no column; the statement's
    transaction is aborted on PostgreSQL, so which id is unknown is not looked up)."""
    if "foreign key" not in str(exc).lower():
        return exc
    given = sorted({row["schedule_id"] for row in rows if row.get("schedule_id")})
    shown = ", ".join(repr(x) for x in given[:3]) + (", ..." if len(given) > 3 else "")
    return ValidationError("schedule_id", f"names no stored schedule (given: {shown or 'none'})")


class TaskRepository(
    DependencyStatements, SweepStatements, BrowseStatements, PickStatements, LeaseStatements
):
    """CRUD, the atomic claim and conditional transitions of tasks."""

    def __init__(self, dialect: Dialect, codec: PayloadCodec | None = None) -> None:
        self.dialect = dialect
        self.codec = codec or PayloadCodec()
        self._insert = t.insert()
        self._insert_deps = deps_t.insert()
        self._dependency_statements()
        self._get = sa.select(t).where(t.c.id == sa.bindparam("id"))
        live_where = sa.text(
            "unique_key IS NOT NULL AND status IN ('pending', 'waiting', 'running')"
        )
        self._insert_unique = (
            dialect.insert(t)
            .on_conflict_do_nothing(index_elements=[t.c.unique_key], index_where=live_where)
            .returning(t.c.id)
        )
        self._insert_scheduled = (
            dialect.insert(t)
            .on_conflict_do_nothing(
                index_elements=[t.c.schedule_id, t.c.scheduled_for],
                index_where=sa.text("scheduled_for IS NOT NULL"),
            )
            .returning(t.c.id)
        )
        self._live_by_key = sa.select(t.c.id).where(
            t.c.unique_key == sa.bindparam("key"), t.c.status.in_(_LIVE)
        )
        #: Claim statements by (by_queue, start, guarded): ``start`` also marks the tasks
        #: started; ``guarded`` claims only while no limit row may bind the claim.
        self._claims = {
            (by_queue, start, guarded): self._claim_statement(
                by_queue=by_queue, start=start, guarded=guarded
            )
            for by_queue in (True, False)
            for start in (True, False)
            for guarded in (True, False)
        }
        #: SQLite: the claim statements run by the driver where they can be (see
        #: omniq.db.driver_query); None: by SQLAlchemy.
        self._driver_claims = {
            key: dialect.driver_query(stmt) for key, stmt in self._claims.items()
        }
        self._lease_statements(dialect)
        #: SQLite: many task rows bound natively by the driver (see Dialect.driver_rows);
        #: PostgreSQL's arrays cannot carry the JSON list columns: executemany there.
        self._insert_rows = dialect.driver_rows(t.insert(), [(c.key, c.type) for c in t.c])

    # --- rows <-> models ---------------------------------------------------

    def to_row(self, task: Task) -> dict[str, Any]:
        """The column values of ``task`` (payload serialized)."""
        # Only plain values (no enum member): a dict of them is not tracked by the
        # garbage collector, so a batch of rows waiting for its write costs no
        # collection time.
        row = dict(zip(_ROW_FIELDS, _row_values(task), strict=True))
        texts = [x for x in _text_values(task) if x is not None]
        texts.extend(task.tags)
        try:
            "".join(texts).encode("utf-8")
        except (UnicodeEncodeError, TypeError):
            # Name the field: not text (a field without a validator), or a lone surrogate.
            for name in _TEXT_COLUMNS:
                value = row[name]
                if value is not None and not isinstance(value, str):
                    raise ValidationError(
                        name, f"expected text, got {type(value).__name__}"
                    ) from None
                if value is not None:
                    check_utf8(value, name)
            for tag in task.tags:
                check_utf8(tag, "tags")
        row["status"] = task.status._value_
        row["payload"] = self.encode_payload(task)
        return row

    def encode_payload(self, task: Task) -> str:
        """The payload column of ``task``: its arguments, serialized (and signed)."""
        return self.codec.encode_call(
            task.serializer,
            task.func_args,
            task.func_kwargs,
            task.callback_args,
            subject=f"{task.func}\n{task.callback or ''}",
        )

    def from_row(self, row: Mapping[str, Any] | sa.RowMapping) -> Task:
        """The Task of a row; an undecodable payload is reported in ``payload_error``."""
        return self.from_values(dict(zip(field_keys(row.keys()), row.values(), strict=True)))

    def from_values(self, data: dict[str, Any]) -> Task:
        """The Task of a row's values keyed by :func:`field_keys` (``data`` is consumed)."""
        payload = data.pop("payload")
        try:
            subject = f"{data.get('func')}\n{data.get('callback') or ''}"
            args, kwargs, cb_args = self.codec.decode_call(
                data["serializer"], payload, subject=subject
            )
            data.update(func_args=args, func_kwargs=kwargs, callback_args=cb_args)
        except OmniQError as exc:
            data.update(func_args=(), func_kwargs={}, callback_args=())
            data["payload_error"] = f"{type(exc).__name__}: {exc}"
        try:
            return Task(**data)
        except (cattrs.BaseValidationError, OmniQError, ValueError, TypeError) as exc:
            raise InvalidRow(f"task {data.get('id')!r} cannot be read: {_root(exc)}") from exc

    # --- inserts -----------------------------------------------------------

    def insert_many(self, conn: Connection, tasks: Sequence[Task]) -> None:
        """Insert tasks (one multi-row statement) and their dependency edges."""
        edges = [{"task_id": x.id, "depends_on_id": d} for x in tasks for d in x.depends_on]
        self.insert_rows(conn, [self.to_row(task) for task in tasks], edges)

    def insert_rows(
        self,
        conn: Connection,
        rows: Sequence[Mapping[str, Any]],
        edges: Sequence[Mapping[str, str]] = (),
    ) -> None:
        """Insert rows made by :meth:`to_row` and dependency edges."""
        if not rows:
            return
        try:  # a plain try on this hot path: no context manager entered per batch
            with translate_errors("enqueue"):
                if self._insert_rows is not None:
                    self._insert_rows.execute(conn, rows)
                else:
                    conn.execute(self._insert, rows[0] if len(rows) == 1 else list(rows))
        except ValidationError as exc:
            named = _naming_schedule(exc, rows)
            if named is exc:
                raise
            raise named from exc
        if edges:
            with translate_errors("enqueue"):
                conn.execute(self._insert_deps, list(edges))

    def insert_unique(self, conn: Connection, task: Task) -> str | None:
        """Insert a task row that has a unique key; None if a live task holds the key.

        Its dependency edges are inserted by :meth:`insert_edges`.
        """
        row = self.to_row(task)
        try:
            with translate_errors("enqueue"):
                inserted: str | None = conn.execute(self._insert_unique, row).scalar_one_or_none()
        except ValidationError as exc:
            named = _naming_schedule(exc, [row])
            if named is exc:
                raise
            raise named from exc
        return inserted

    def insert_scheduled(self, conn: Connection, tasks: Sequence[Task]) -> set[str]:
        """Insert tasks created by a schedule; skip any (schedule, fire time) already present.

        Returns the ids inserted. The unique index on (schedule_id,
        scheduled_for) is the last line of exactly-once firing: a duplicate is
        skipped, never an error that would roll back the other schedules' fires.
        """
        inserted: set[str] = set()
        with translate_errors("fire schedule"):
            for task in tasks:
                row = self.to_row(task)
                got = (conn.execute(self._insert_scheduled, row)).scalar_one_or_none()
                if got is not None:
                    inserted.add(got)
        return inserted

    def live_id_for_key(self, conn: Connection, key: str) -> str | None:
        """The id of the live task holding ``key``, if any."""
        with translate_errors("get task"):
            return (conn.execute(self._live_by_key, {"key": key})).scalar_one_or_none()

    # --- reads ---------------------------------------------------------------

    def get(self, conn: Connection, task_id: str) -> Task | None:
        """The task with ``task_id``, or None."""
        with translate_errors("get task"):
            row = (conn.execute(self._get, {"id": task_id})).mappings().one_or_none()
        return None if row is None else self.from_row(row)

    def statuses(
        self, conn: Connection, ids: Collection[str], *, lock: bool = False
    ) -> dict[str, TaskStatus]:
        """Status of each existing id among ``ids`` (locked FOR SHARE where rows lock)."""
        if not ids:
            return {}
        stmt = sa.select(t.c.id, t.c.status).where(t.c.id.in_(list(ids)))
        if lock and self.dialect.skip_locked:
            stmt = stmt.with_for_update(read=True)
        with translate_errors("get task"):
            rows = (conn.execute(stmt)).all()
        try:
            return {row.id: TaskStatus(row.status) for row in rows}
        except ValueError as exc:
            raise InvalidRow(f"task status cannot be read: {exc}") from exc

    def query(
        self,
        conn: Connection,
        *,
        status: Iterable[TaskStatus] | None = None,
        queue_name: str | None = None,
        schedule_id: str | None = None,
        limit: int = 100,
        offset: int = 0,
        order_by: str = "created_at",
        descending: bool = False,
    ) -> list[Task]:
        """Tasks matching the filters, ordered by an allow-listed column."""
        column = SORTABLE[order_by]
        stmt = sa.select(t)
        if status is not None:
            stmt = stmt.where(t.c.status.in_([s.value for s in status]))
        if queue_name is not None:
            stmt = stmt.where(t.c.queue_name == queue_name)
        if schedule_id is not None:
            stmt = stmt.where(t.c.schedule_id == schedule_id)
        order = column.desc() if descending else column.asc()
        stmt = stmt.order_by(order, t.c.id.desc() if descending else t.c.id).limit(limit)
        stmt = stmt.offset(offset)
        with translate_errors("list tasks"):
            rows = (conn.execute(stmt)).mappings().all()
        return [self.from_row(row) for row in rows]

    def count_by(
        self, conn: Connection, *, queue_name: str | None = None
    ) -> dict[tuple[str, str], int]:
        """Counts per (queue_name, status), one GROUP BY."""
        stmt = sa.select(t.c.queue_name, t.c.status, sa.func.count()).group_by(
            t.c.queue_name, t.c.status
        )
        if queue_name is not None:
            stmt = stmt.where(t.c.queue_name == queue_name)
        with translate_errors("count tasks"):
            rows = (conn.execute(stmt)).all()
        return {(row[0], row[1]): int(row[2]) for row in rows}

    def count(self, conn: Connection, status: TaskStatus, queue_name: str | None = None) -> int:
        """How many tasks have ``status`` (in ``queue_name``, if given)."""
        stmt = sa.select(sa.func.count()).select_from(t).where(t.c.status == status.value)
        if queue_name is not None:
            stmt = stmt.where(t.c.queue_name == queue_name)
        with translate_errors("count tasks"):
            return int((conn.execute(stmt)).scalar_one())

    def next_run_at(self, conn: Connection, queues: Sequence[str] | None) -> datetime | None:
        """The earliest run_at of a pending task in ``queues`` (None: no pending task)."""
        stmt = sa.select(sa.func.min(t.c.run_at)).where(t.c.status == TaskStatus.PENDING.value)
        if queues:
            stmt = stmt.where(t.c.queue_name.in_(list(queues)))
        with translate_errors("peek tasks"):
            # min() keeps the column's type: the value is already an aware datetime.
            value: datetime | None = (conn.execute(stmt)).scalar_one_or_none()
        return value

    # --- the claim -----------------------------------------------------------

    def _claim_statement(self, *, by_queue: bool, start: bool, guarded: bool) -> sa.Update:
        sub = sa.select(t.c.id).where(*_plainly_ready())
        if guarded:
            sub = sub.where(unlimited(by_queue))
        if by_queue:
            sub = sub.where(t.c.queue_name == sa.bindparam("queue"))
        sub = sub.order_by(*_ORDER).limit(sa.bindparam("n"))
        if self.dialect.skip_locked:
            sub = sub.with_for_update(skip_locked=True)
        values: dict[str, Any] = {
            "status": TaskStatus.RUNNING.value,
            "lease_token": sa.bindparam("token"),
            "lease_expires_at": sa.bindparam("lease_until", type_=t.c.lease_expires_at.type),
            "worker_id": sa.bindparam("worker_id"),
        }
        if start:
            values.update(
                attempts=t.c.attempts + 1,
                started_at=sa.bindparam("now", type_=t.c.started_at.type),
            )
        else:
            values["started_at"] = None
        return sa.update(t).where(t.c.id.in_(sub)).values(values).returning(*t.c)

    def ready_now(self, conn: Connection, queues: Sequence[str] | None, now: datetime) -> bool:
        """True if the plain claim of ``queues`` (None: all) would take a task at ``now``.

        One read, no lock (the SQLite work watch asks it when the database
        changed): it walks the claim index as the claim does, so with many
        tasks not yet due it reads them all; tasks that limits may hold back
        are not counted.
        """
        stmt = sa.select(t.c.id).where(*_plainly_ready())
        if queues:
            stmt = stmt.where(t.c.queue_name.in_(list(queues)))
        with translate_errors("peek tasks"):
            return conn.execute(stmt.limit(1), {"now": now}).first() is not None

    def claim(
        self,
        conn: Connection,
        *,
        queues: Sequence[str] | None,
        n: int,
        now: datetime,
        token: str,
        lease_until: datetime,
        worker_id: str,
        unreadable: list[tuple[str, str]] | None = None,
        start: bool = True,
        guarded: bool = False,
    ) -> list[Task]:
        """Atomically move up to ``n`` ready tasks to running under a new lease.

        Queues listed first are served first; within a queue: higher priority,
        then earlier run_at, then FIFO. With ``start`` the tasks are also marked
        started (``attempts`` + 1); a worker that prefetches claims with
        ``start=False`` and marks each task with :meth:`mark_started` when its
        function starts.
        Claimed rows that cannot be read are appended to ``unreadable`` as
        ``(task_id, reason)`` (they stay claimed under this lease, for the
        caller to fail); without that list, :class:`InvalidRow` is raised.
        ``guarded``: each statement claims nothing while a limit row may bind
        a claim from ``queues`` (:func:`~omniq.repositories.limits.unlimited`),
        so what it claims is what the limited claim would have taken first.
        """
        params: dict[str, Any] = {
            "now": now,
            "token": token,
            "lease_until": lease_until,
            "worker_id": worker_id,
        }
        claimed: list[Task] = []
        with translate_errors("claim tasks"):
            if not queues:
                params["n"] = n
                claimed.extend(self._claim_rows(conn, (False, start, guarded), params, unreadable))
            else:
                if guarded:
                    params["queues"] = list(queues)
                for queue in queues:
                    want = n - len(claimed)
                    if want <= 0:
                        break
                    params.update(queue=queue, n=want)
                    claimed.extend(
                        self._claim_rows(conn, (True, start, guarded), params, unreadable)
                    )
        return claimed

    def _claim_rows(
        self,
        conn: Connection,
        key: tuple[bool, bool, bool],
        params: dict[str, Any],
        unreadable: list[tuple[str, str]] | None,
    ) -> list[Task]:
        """One claim statement's Tasks (by the driver on OmniQ's own SQLite
        connections, where it can: see omniq.db.driver_exec)."""
        driver = self._driver_claims[key]
        if driver is not None and own_connection(conn):
            return self.claimed_rows(driver.keys, driver.execute(conn, params), unreadable)
        result = conn.execute(self._claims[key], params)
        return self.claimed_rows(result.keys(), result.all(), unreadable)

    def claimed_rows(
        self,
        keys: Iterable[str],
        rows: Sequence[Sequence[Any]],
        unreadable: list[tuple[str, str]] | None,
    ) -> list[Task]:
        """The Tasks of rows a claim returned (``keys``: the result's columns), in
        claim order; unreadable rows as in :meth:`claim`."""
        names = field_keys(keys)
        tasks = []
        for values in rows:
            data = dict(zip(names, values, strict=True))
            try:
                tasks.append(self.from_values(data))
            except InvalidRow as exc:
                if unreadable is None:
                    raise
                unreadable.append((str(data["id"]), str(exc)))
        tasks.sort(key=lambda x: (-x.priority, x.run_at, x.id))
        return tasks

    # --- conditional transitions ---------------------------------------------

    def transition(
        self,
        conn: Connection,
        task_id: str,
        *,
        expected: Collection[TaskStatus],
        values: Mapping[str, Any],
        lease_token: str | None = None,
        where: sa.ColumnElement[bool] | None = None,
    ) -> Task | None:
        """Update one task only if it is in ``expected`` (and holds ``lease_token``,
        and matches ``where``).

        Returns the updated task, or None when the condition did not hold (the
        row count was zero): the caller lost the race or the lease.
        """
        stmt = (
            sa.update(t)
            .where(t.c.id == task_id, t.c.status.in_([s.value for s in expected]))
            .values(**status_values(values))
            .returning(*t.c)
        )
        if lease_token is not None:
            stmt = stmt.where(t.c.lease_token == lease_token)
        if where is not None:
            stmt = stmt.where(where)
        with translate_errors("update task"):
            row = (conn.execute(stmt)).mappings().one_or_none()
        return None if row is None else self.from_row(row)

    def transition_many(
        self,
        conn: Connection,
        *,
        where: sa.ColumnElement[bool],
        values: Mapping[str, Any],
        limit: int | None = None,
    ) -> list[Task]:
        """Update every task matching ``where`` (up to ``limit``); return them."""
        target: sa.ColumnElement[bool] = where
        if limit is not None:
            sub = sa.select(t.c.id).where(where).limit(limit)
            if self.dialect.skip_locked:
                sub = sub.with_for_update(skip_locked=True)
            target = t.c.id.in_(sub)
        stmt = sa.update(t).where(target).values(**status_values(values)).returning(*t.c)
        with translate_errors("update tasks"):
            rows = (conn.execute(stmt)).mappings().all()
        return [self.from_row(row) for row in rows]


def _plainly_ready() -> tuple[sa.ColumnElement[bool], ...]:
    """What the plain claim takes (binding ``now``): a pending task that is due and
    not expired, with no limit key, in a queue without a queue row (paused or
    queue-wide limits), while claims are open (not migrated away by ``migrate-db``)."""
    return (
        t.c.status == TaskStatus.PENDING.value,
        t.c.run_at <= sa.bindparam("now", type_=t.c.run_at.type),
        sa.or_(
            t.c.expires_at.is_(None),
            t.c.expires_at > sa.bindparam("now", type_=t.c.expires_at.type),
        ),
        # Tasks that limits or a queue's row may hold back: the limited claim's.
        t.c.concurrency_key.is_(None),
        t.c.rate_key.is_(None),
        t.c.queue_name.not_in(controlled_queues()),
        claims_open(),
    )


def _root(exc: BaseException) -> str:
    if isinstance(exc, cattrs.BaseValidationError) and exc.exceptions:
        return _root(exc.exceptions[0])
    return str(exc)
