"""The lease protocol's statements on the tasks table: mark started, finish under a
lease, renew leases (a part of :class:`~omniq.repositories.tasks.TaskRepository`)."""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from datetime import datetime
from typing import Any, NamedTuple

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from omniq.db.engine import Dialect
from omniq.db.schema import tasks as t
from omniq.models import TaskStatus
from omniq.repositories._base import translate_errors

__all__ = ["LeaseStatements", "OutcomeMark", "status_values"]

#: Finishing statements kept per repository (one per shape of plain values).
_FINISHING_KEPT = 32


class OutcomeMark(NamedTuple):
    """What an outcome leaves on a task row (see :meth:`LeaseStatements.outcome_marks`)."""

    status: TaskStatus
    worker_id: str | None
    attempts: int
    retry_count: int
    lost_count: int


def status_values(values: Mapping[str, Any]) -> dict[str, Any]:
    """Column values with statuses as their stored text."""
    return {k: (v.value if isinstance(v, TaskStatus) else v) for k, v in values.items()}


class LeaseStatements:
    """Statements of a worker's leases: start marks, finishing updates, renewals."""

    dialect: Dialect

    def _lease_statements(self, dialect: Dialect) -> None:
        """Build the statements (called once by the repository's constructor)."""
        self._mark_started = (
            sa.update(t)
            .where(
                t.c.id == sa.bindparam("task_id"),
                t.c.lease_token == sa.bindparam("token"),
                t.c.status == TaskStatus.RUNNING.value,
                t.c.started_at.is_(None),
            )
            .values(attempts=t.c.attempts + 1, started_at=sa.bindparam("at"))
        )
        #: "status = 'running'" in statements joined to a batch. SQLite must not
        #: plan it as an index search (it would scan every running task per batch
        #: row): wrapped, the batch drives and each task is a primary-key lookup.
        self._running_in_batch: sa.ColumnElement[bool] = (
            t.c.status == TaskStatus.RUNNING.value
            if dialect.name == "postgresql"
            else sa.func.coalesce(t.c.status, "") == TaskStatus.RUNNING.value
        )
        #: Batches of (task_id, lease_token[, at]), each bound as one value.
        self._leases = dialect.batch_rows(
            "held", [("task_id", t.c.id.type), ("token", t.c.lease_token.type)]
        )
        starts = self._starts = dialect.batch_rows(
            "starts",
            [
                ("task_id", t.c.id.type),
                ("token", t.c.lease_token.type),
                ("at", t.c.started_at.type),
            ],
        )
        self._mark_started_batch = (
            sa.update(t)
            .where(
                t.c.id == starts.c.task_id,
                t.c.lease_token == starts.c.token,
                self._running_in_batch,
                t.c.started_at.is_(None),
            )
            .values(attempts=t.c.attempts + 1, started_at=starts.c.at)
        )
        #: The finishing UPDATEs of plain values, by shape (see :meth:`finish_leased`).
        self._finishing: dict[tuple[tuple[str, ...], bool, bool], sa.Update] = {}

    def mark_started(
        self, conn: Connection, starts: Sequence[tuple[str, str | None, datetime]]
    ) -> int:
        """Mark running tasks started: ``(task_id, lease_token, started_at)`` each.

        Only tasks still held under that lease and not yet marked change;
        returns how many did.
        """
        if not starts:
            return 0
        with translate_errors("mark tasks started"):
            if len(starts) > 1:
                # A lease listed twice is marked once, by its first start. Another
                # lease of the same task (an earlier attempt's start, put back after
                # a write that raised) is kept too: only the held one can match.
                first: dict[tuple[str, str | None], tuple[str, str | None, datetime]] = {}
                for start in starts:
                    first.setdefault((start[0], start[1]), start)
                params = self._starts.params(list(first.values()))
                return int(conn.execute(self._mark_started_batch, params).rowcount)
            ((task_id, token, at),) = starts
            params = {"task_id": task_id, "token": token, "at": at}
            return int(conn.execute(self._mark_started, params).rowcount)

    def finish_leased(
        self,
        conn: Connection,
        leases: Sequence[tuple[str, str | None]],
        values: Mapping[str, Any],
        starts: Sequence[tuple[str, str | None, datetime]] = (),
        *,
        unless_cancel_requested: bool = False,
    ) -> set[str]:
        """Update running tasks still held under ``(task_id, lease_token)``; return their ids.

        One statement for the whole batch; pairs whose lease was lost (or, with
        ``unless_cancel_requested``, whose cancellation was requested) are
        skipped. ``starts`` (as for :meth:`mark_started`) of tasks in ``leases``
        are written by the same statement (one row version per task, not two);
        any others with :meth:`mark_started`.
        """
        leased = set(leases)
        started: dict[tuple[str, str | None], datetime] = {}
        others = []
        for task_id, token, at in starts:
            if (task_id, token) in leased:
                started.setdefault((task_id, token), at)  # the first start counts
            else:
                others.append((task_id, token, at))
        self.mark_started(conn, others)
        if not leases:
            return set()
        plain = status_values(values)
        if any(isinstance(value, sa.ClauseElement) for value in plain.values()):
            # Per-task values (CASE expressions): a statement of this call's own.
            stmt = self._finish_statement(plain, bool(started), unless_cancel_requested)
            params: dict[str, Any] = {}
        else:
            # Plain values are bound: one statement per shape, built once (building
            # and keying a new one cost more than running it).
            shape = (tuple(plain), bool(started), unless_cancel_requested)
            found = self._finishing.get(shape)
            if found is None:
                binds = {key: sa.bindparam(f"set_{key}", type_=t.c[key].type) for key in plain}
                found = self._finish_statement(binds, bool(started), unless_cancel_requested)
                if len(self._finishing) < _FINISHING_KEPT:
                    self._finishing[shape] = found
            stmt = found
            params = {f"set_{key}": value for key, value in plain.items()}
        if started:
            rows = [(task_id, token, started.get((task_id, token))) for task_id, token in leases]
            params.update(self._starts.params(rows))
        else:
            params.update(self._held_params(leases))
        with translate_errors("update tasks"):
            return set((conn.execute(stmt, params)).scalars().all())

    def _finish_statement(
        self, values: Mapping[str, Any], started: bool, unless_cancel_requested: bool
    ) -> sa.Update:
        """The finishing UPDATE setting ``values`` on the held tasks of a batch; with
        ``started``, it also marks the tasks of its starts batch started (as
        :meth:`mark_started` does: the first start counts an attempt)."""
        if started:
            batch = self._starts
            starting = sa.and_(t.c.started_at.is_(None), batch.c.at.is_not(None))
            stmt = (
                sa.update(t)
                .where(
                    t.c.id == batch.c.task_id,
                    t.c.lease_token == batch.c.token,
                    self._running_in_batch,
                )
                .values(
                    **values,
                    attempts=t.c.attempts + sa.case((starting, 1), else_=0),
                    started_at=sa.func.coalesce(t.c.started_at, batch.c.at),
                )
            )
        else:
            stmt = sa.update(t).where(self._held_condition()).values(**values)
        if unless_cancel_requested:
            stmt = stmt.where(~t.c.cancel_requested)
        return stmt.returning(t.c.id)

    def _held_condition(self) -> sa.ColumnElement[bool]:
        """The condition "the task is held under one of the leases of the batch"
        (its parameters: :meth:`_held_params`).

        The batch of ids and tokens is joined (one fixed statement, a primary-key
        lookup per held lease, see :attr:`_running_in_batch`).
        """
        return sa.and_(
            t.c.id == self._leases.c.task_id,
            t.c.lease_token == self._leases.c.token,
            self._running_in_batch,
        )

    def _held_params(self, leases: Sequence[tuple[str, str | None]]) -> dict[str, Any]:
        """The parameters binding ``leases`` to :meth:`_held_condition`."""
        return self._leases.params(leases)

    def outcome_marks(self, conn: Connection, ids: Collection[str]) -> dict[str, OutcomeMark]:
        """What an outcome leaves on each task of ``ids``: status, last worker,
        attempts started, retries and crash recoveries. A retried write compares
        them with what its earlier try would have left, to learn whether that
        try's commit landed (the caller saw an error, say a connection lost
        before the reply)."""
        if not ids:
            return {}
        stmt = sa.select(
            t.c.id, t.c.status, t.c.worker_id, t.c.attempts, t.c.retry_count, t.c.lost_count
        ).where(t.c.id.in_(list(ids)))
        with translate_errors("get task"):
            rows = conn.execute(stmt).all()
        statuses = {status.value: status for status in TaskStatus}
        return {
            row.id: OutcomeMark(
                statuses[row.status], row.worker_id, row.attempts, row.retry_count, row.lost_count
            )
            for row in rows
            if row.status in statuses
        }

    def renew_leases(
        self, conn: Connection, leases: Mapping[str, str], until: datetime
    ) -> set[str]:
        """Extend the leases ``{task_id: token}`` still held; return the ids renewed."""
        return set(self.heartbeat(conn, leases, until))

    def cancels_requested(self, conn: Connection, ids: Collection[str]) -> set[str]:
        """The running tasks among ``ids`` whose cancellation was requested."""
        if not ids:
            return set()
        stmt = sa.select(t.c.id).where(
            t.c.id.in_(list(ids)),
            t.c.status == TaskStatus.RUNNING.value,
            t.c.cancel_requested,
        )
        with translate_errors("get tasks"):
            return set(conn.execute(stmt).scalars().all())

    def heartbeat(
        self,
        conn: Connection,
        leases: Mapping[str, str],
        until: datetime,
        *,
        skip_locked: bool = False,
    ) -> dict[str, bool]:
        """Extend held leases; return ``{task_id: cancel_requested}`` for those still held.

        With ``skip_locked`` (PostgreSQL), a task whose row another transaction
        holds now is skipped, not waited for: a renewal beside this worker's own
        outcome write can then neither wait on it nor deadlock with it (the two
        would lock the same rows, each in its plan's order). Left out of the
        answer, such a task is not said to be lost.
        """
        if not leases:
            return {}
        held, params = self._held_condition(), self._held_params(list(leases.items()))
        if skip_locked and self.dialect.skip_locked:
            free = sa.select(t.c.id).where(held).with_for_update(of=t, skip_locked=True)
            free = free.correlate(None)  # its own scan of tasks, not the updated row
            held = t.c.id.in_(free.scalar_subquery())
        stmt = (
            sa.update(t)
            .where(held)
            .values(lease_expires_at=until)
            .returning(t.c.id, t.c.cancel_requested)
        )
        with translate_errors("renew leases"):
            rows = (conn.execute(stmt, params)).all()
        return {row.id: bool(row.cancel_requested) for row in rows}
