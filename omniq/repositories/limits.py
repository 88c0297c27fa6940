"""Limits repository: Core statements on ``omniq_limits`` and the limited part of the claim.

A row per key: kind ``concurrency`` (``max_running``), ``rate`` (a token
bucket: ``rate_limit`` tokens per ``rate_period``, ``tokens`` left at
``refilled_at``) or ``queue`` (a queue's own limits, and ``paused_at``).
Running tasks are counted from ``omniq_tasks``, never stored: a task that
leaves ``running`` (completion, failure, retry, release, lease recovery)
gives its slot back in that same transaction, by construction.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from omniq._time import to_micros
from omniq.db.engine import Dialect
from omniq.db.schema import limits as lim
from omniq.db.schema import tasks as t
from omniq.models import Task, TaskStatus
from omniq.repositories._base import translate_errors
from omniq.repositories.db_migration import claims_open

__all__ = [
    "CONCURRENCY",
    "QUEUE",
    "RATE",
    "LimitRepository",
    "binding_limits",
    "controlled_queues",
    "unlimited",
]

CONCURRENCY = "concurrency"
RATE = "rate"
QUEUE = "queue"

_PENDING = TaskStatus.PENDING.value
_RUNNING = TaskStatus.RUNNING.value
_ORDER = (t.c.priority.desc(), t.c.run_at, t.c.id)


def controlled_queues() -> sa.Select[tuple[str]]:
    """The queues a plain claim skips: paused, or with queue-wide limits (a queue row)."""
    return sa.select(lim.c.key).where(lim.c.kind == QUEUE)


def binding_limits(by_queue: bool, tasks: sa.FromClause) -> sa.ColumnElement[bool]:
    """Which ``omniq_limits`` rows may bind a claim (binding ``queues`` when
    ``by_queue``): the rows of the keys pending tasks carry (found through the
    keys' indexes) and the queues' own rows. ``tasks``: the tasks table, or an
    alias of it inside a statement on that table (so it is not correlated).
    """
    in_queues = [tasks.c.queue_name.in_(sa.bindparam("queues", expanding=True))] if by_queue else []
    pending = tasks.c.status == _PENDING
    by_concurrency = sa.exists().where(
        tasks.c.concurrency_key.is_not(None),
        tasks.c.concurrency_key == lim.c.key,
        pending,
        *in_queues,
    )
    by_rate = sa.exists().where(
        tasks.c.rate_key.is_not(None), tasks.c.rate_key == lim.c.key, pending, *in_queues
    )
    own = lim.c.key.in_(sa.bindparam("queues", expanding=True)) if by_queue else sa.true()
    return sa.or_(
        sa.and_(lim.c.kind == CONCURRENCY, by_concurrency),
        sa.and_(lim.c.kind == RATE, by_rate),
        sa.and_(lim.c.kind == QUEUE, own),
    )


def unlimited(by_queue: bool) -> sa.ColumnElement[bool]:
    """True while no ``omniq_limits`` row may bind a claim (see :func:`binding_limits`):
    the plain claim then takes every ready task in claim order by itself."""
    return ~sa.exists().where(binding_limits(by_queue, t.alias("keyed")))


class LimitRepository:
    """Declared limits, queue settings, and the statements of the limited claim."""

    def __init__(self, dialect: Dialect) -> None:
        self.dialect = dialect
        insert = dialect.insert(lim)
        # Always written (updated_at too): a prune that waited for this row's lock
        # sees it in use and keeps it (see prune).
        self._declare = insert.on_conflict_do_update(
            index_elements=[lim.c.kind, lim.c.key],
            set_={
                "max_running": insert.excluded.max_running,
                "rate_limit": insert.excluded.rate_limit,
                "rate_period": insert.excluded.rate_period,
                "updated_at": insert.excluded.updated_at,
            },
        )
        self._spend = (
            sa.update(lim)
            .where(lim.c.kind == sa.bindparam("k_kind"), lim.c.key == sa.bindparam("k_key"))
            .values(
                tokens=sa.bindparam("k_tokens", type_=lim.c.tokens.type),
                refilled_at=sa.bindparam("k_at", type_=lim.c.refilled_at.type),
            )
        )

        # A refund never fills a bucket past its size (tokens None: full).
        held = sa.func.coalesce(lim.c.tokens, lim.c.rate_limit) + sa.bindparam(
            "k_count", type_=lim.c.tokens.type
        )
        self._refund = (
            sa.update(lim)
            .where(
                lim.c.kind == sa.bindparam("k_kind"),
                lim.c.key == sa.bindparam("k_key"),
                lim.c.rate_limit.is_not(None),
            )
            .values(tokens=sa.case((held > lim.c.rate_limit, lim.c.rate_limit), else_=held))
        )

        #: The rate buckets among given (kind, key) rows, locked, by "skip locked rows".
        self._buckets: dict[bool, sa.Select[Any]] = {}

        #: Rows are locked in (kind, key) order by code point, the order in which
        #: :meth:`declare` writes them (Python's), whatever the database's collation:
        #: two transactions never wait for each other's rows in opposite orders.
        self._key_order = (
            (lim.c.kind.collate("C"), lim.c.key.collate("C"))
            if dialect.name == "postgresql"
            else (lim.c.kind, lim.c.key)
        )
        for skip in (False, True):
            buckets = (
                sa.select(lim.c.kind, lim.c.key)
                .where(
                    sa.tuple_(lim.c.kind, lim.c.key).in_(sa.bindparam("needs", expanding=True)),
                    lim.c.rate_limit.is_not(None),
                )
                .order_by(*self._key_order)
            )
            if dialect.skip_locked:
                buckets = buckets.with_for_update(of=lim, skip_locked=skip)
            self._buckets[skip] = buckets
        #: The claim's lock statement, by "for given queues" (built once: hot path).
        self._lock = {by_queue: self._lock_statement(by_queue) for by_queue in (False, True)}
        #: Its candidates, by "from one queue".
        self._candidates = {one: _candidates_statement(one) for one in (False, True)}
        #: The claim of the first candidates at once (when every budget has room), by
        #: ("from one queue", start).
        self._claim_open = {
            (one, start): self._claim_open_statement(one, start)
            for one in (False, True)
            for start in (False, True)
        }

    def _claim_open_statement(self, one_queue: bool, start: bool) -> sa.Update:
        sub = _candidates_statement(one_queue).with_only_columns(t.c.id)
        if self.dialect.skip_locked:
            sub = sub.with_for_update(skip_locked=True)
        now = sa.bindparam("now", type_=t.c.run_at.type)
        return (
            sa.update(t)
            .where(t.c.id.in_(sub), claims_open())
            .values(
                status=_RUNNING,
                lease_token=sa.bindparam("token"),
                lease_expires_at=sa.bindparam("lease_until", type_=t.c.lease_expires_at.type),
                worker_id=sa.bindparam("worker_id"),
                attempts=t.c.attempts + 1 if start else t.c.attempts,
                started_at=now if start else None,
            )
            .returning(*t.c)
        )

    def _lock_statement(self, by_queue: bool) -> sa.Select[Any]:
        stmt = sa.select(lim).where(binding_limits(by_queue, t)).order_by(*self._key_order)
        if self.dialect.skip_locked:
            stmt = stmt.with_for_update(of=lim)
        return stmt

    # --- declarations -------------------------------------------------------------

    def declare(self, conn: Connection, tasks: Iterable[Task], now: datetime) -> None:
        """Create (or update to the latest declaration) the rows of these tasks' keys."""
        rows: dict[tuple[str, str], dict[str, Any]] = {}
        for x in tasks:
            if x.concurrency_key is not None:
                rows[CONCURRENCY, x.concurrency_key] = _row(
                    CONCURRENCY, x.concurrency_key, now, max_running=x.concurrency_max
                )
            if x.rate_key is not None:
                rows[RATE, x.rate_key] = _row(
                    RATE,
                    x.rate_key,
                    now,
                    rate_limit=x.rate_limit,
                    rate_period=x.rate_period,
                    tokens=float(x.rate_limit or 0),
                    refilled_at=now,
                )
        if not rows:
            return
        # In key order, as claims lock them: concurrent writers cannot deadlock.
        with translate_errors("declare limits"):
            for key in sorted(rows):
                conn.execute(self._declare, rows[key])

    def prune(self, conn: Connection, now: datetime, before: datetime) -> int:
        """Delete the rows of keys that no live task carries, declared before
        ``before``, whose bucket (rate) is full again by ``now``; how many.

        Enqueue re-creates a key's row with the task (the same transaction), so
        a pruned key loses nothing: its slots are counted, its bucket was full.
        """
        live = t.c.status.in_([_PENDING, TaskStatus.WAITING.value, _RUNNING])
        used_c = sa.exists().where(
            t.c.concurrency_key.is_not(None), t.c.concurrency_key == lim.c.key, live
        )
        used_r = sa.exists().where(t.c.rate_key.is_not(None), t.c.rate_key == lim.c.key, live)
        # Numbers as stored: refilled_at in microseconds, rate_period in seconds.
        refilled = sa.type_coerce(lim.c.refilled_at, sa.BigInteger)
        period = sa.type_coerce(lim.c.rate_period, sa.Float)
        full_at = (
            refilled + (lim.c.rate_limit - lim.c.tokens) * period * 1_000_000 / lim.c.rate_limit
        )
        stmt = sa.delete(lim).where(
            lim.c.updated_at < before,
            sa.or_(
                sa.and_(lim.c.kind == CONCURRENCY, ~used_c),
                sa.and_(
                    lim.c.kind == RATE,
                    ~used_r,
                    sa.or_(lim.c.refilled_at.is_(None), full_at <= to_micros(now)),
                ),
            ),
        )
        with translate_errors("prune limits"):
            return int(conn.execute(stmt).rowcount)

    def get(self, conn: Connection, kind: str, key: str) -> dict[str, Any] | None:
        """The row of ``(kind, key)``, or None."""
        stmt = sa.select(lim).where(lim.c.kind == kind, lim.c.key == key)
        with translate_errors("get limits"):
            row = conn.execute(stmt).mappings().one_or_none()
        return None if row is None else dict(row)

    def of_kind(self, conn: Connection, kind: str) -> list[dict[str, Any]]:
        """Every row of ``kind``, by key."""
        stmt = sa.select(lim).where(lim.c.kind == kind).order_by(lim.c.key)
        with translate_errors("list limits"):
            return [dict(row) for row in conn.execute(stmt).mappings().all()]

    def put(self, conn: Connection, row: Mapping[str, Any]) -> None:
        """Write the whole row of ``(row["kind"], row["key"])`` (insert or replace)."""
        insert = self.dialect.insert(lim)
        stmt = insert.on_conflict_do_update(
            index_elements=[lim.c.kind, lim.c.key],
            set_={c.key: insert.excluded[c.key] for c in lim.c if not c.primary_key},
        )
        with translate_errors("set limits"):
            conn.execute(stmt, dict(row))

    def delete(self, conn: Connection, kind: str, key: str) -> bool:
        """Remove the row of ``(kind, key)``; True if there was one."""
        stmt = sa.delete(lim).where(lim.c.kind == kind, lim.c.key == key)
        with translate_errors("set limits"):
            return bool(conn.execute(stmt).rowcount)

    # --- the limited claim ----------------------------------------------------------

    def lock_for_claim(
        self, conn: Connection, queues: Sequence[str] | None
    ) -> dict[tuple[str, str], dict[str, Any]]:
        """Lock (PostgreSQL: FOR UPDATE, in key order) and read the rows that may
        bind a claim from ``queues``: the rows of the keys pending tasks carry
        (found through the keys' indexes) and the queues' own rows.

        Claimers of the same keys queue on these row locks, so each one counts
        running tasks and spends tokens after the previous one committed. No row:
        nothing limits the claim (the plain claim runs).
        """
        stmt = self._lock[bool(queues)]
        params = {"queues": list(queues)} if queues else {}
        with translate_errors("claim tasks"):
            rows = conn.execute(stmt, params).mappings().all()
        return {(row["kind"], row["key"]): dict(row) for row in rows}

    def running(
        self, conn: Connection, keys: Sequence[str], queues: Sequence[str]
    ) -> tuple[dict[str, int], dict[str, int]]:
        """Running (claimed) tasks per concurrency key of ``keys``, and per queue of ``queues``."""
        by_key: dict[str, int] = {}
        by_queue: dict[str, int] = {}
        with translate_errors("claim tasks"):
            if keys:
                stmt = (
                    sa.select(t.c.concurrency_key, sa.func.count())
                    .where(
                        t.c.concurrency_key.is_not(None),
                        t.c.concurrency_key.in_(list(keys)),
                        t.c.status == _RUNNING,
                    )
                    .group_by(t.c.concurrency_key)
                )
                by_key = {row[0]: int(row[1]) for row in conn.execute(stmt).all()}
            if queues:
                stmt = (
                    sa.select(t.c.queue_name, sa.func.count())
                    .where(t.c.queue_name.in_(list(queues)), t.c.status == _RUNNING)
                    .group_by(t.c.queue_name)
                )
                by_queue = {row[0]: int(row[1]) for row in conn.execute(stmt).all()}
        return by_key, by_queue

    def candidates(
        self,
        conn: Connection,
        queue: str | None,
        now: datetime,
        *,
        open_keys: Sequence[str],
        open_rate_keys: Sequence[str],
        closed_queues: Sequence[str],
        skip: Sequence[str],
        limit: int,
    ) -> list[Any]:
        """Ready tasks of ``queue`` (None: any) in claim order, at most ``limit``, that
        no limit holds back for sure: without a key or with an open one, outside
        the closed (paused or full) queues, not among ``skip``.

        The keys at their limit are left out by the statement itself, so a hot
        key's backlog never hides a quiet key's tasks behind it.
        """
        stmt = self._candidates[queue is not None]
        params = _pick_params(queue, now, open_keys, open_rate_keys, closed_queues, skip, limit)
        with translate_errors("claim tasks"):
            return list(conn.execute(stmt, params).all())

    def claim_open(
        self,
        conn: Connection,
        queue: str | None,
        now: datetime,
        *,
        open_keys: Sequence[str],
        open_rate_keys: Sequence[str],
        closed_queues: Sequence[str],
        n: int,
        token: str,
        lease_until: datetime,
        worker_id: str,
        start: bool,
    ) -> tuple[list[str], list[sa.Row[Any]]]:
        """Claim (as :meth:`candidates` reads them) the first ``n`` such tasks in one
        statement: for a claim whose every budget has room for ``n`` tasks. The
        result's columns and its rows."""
        params = {
            **_pick_params(queue, now, open_keys, open_rate_keys, closed_queues, (), n),
            "token": token,
            "lease_until": lease_until,
            "worker_id": worker_id,
        }
        stmt = self._claim_open[queue is not None, start]
        with translate_errors("claim tasks"):
            result = conn.execute(stmt, params)
            return list(result.keys()), list(result.all())

    def spend(self, conn: Connection, spent: Sequence[tuple[str, str, float, datetime]]) -> None:
        """Store rate buckets after a claim: ``(kind, key, tokens left, refilled at)``."""
        if not spent:
            return
        params = [
            {"k_kind": k, "k_key": key, "k_tokens": left, "k_at": at} for k, key, left, at in spent
        ]
        with translate_errors("claim tasks"):
            conn.execute(self._spend, params)

    def lock_buckets(
        self, conn: Connection, needs: Sequence[tuple[str, str]], *, skip_locked: bool = False
    ) -> set[tuple[str, str]]:
        """Which of these ``(kind, key)`` rows hold a rate (a key's bucket, a queue's
        rate), locked (PostgreSQL: ``FOR UPDATE`` in key order, as claims lock them;
        with ``skip_locked``, rows another transaction holds are left out)."""
        if not needs:
            return set()
        stmt = self._buckets[skip_locked]
        with translate_errors("release tasks"):
            rows = conn.execute(stmt, {"needs": list(needs)}).all()
        return {(row[0], row[1]) for row in rows}

    def refund(self, conn: Connection, refunds: Sequence[tuple[str, str, int]]) -> None:
        """Give tokens back to rate buckets: ``(kind, key, how many)`` (the key's rate
        row, or a queue's row with a rate), each bucket at most full; rows without a
        rate are left alone."""
        if not refunds:
            return
        params = [{"k_kind": k, "k_key": key, "k_count": float(n)} for k, key, n in refunds]
        with translate_errors("release tasks"):
            conn.execute(self._refund, params)


def _pick_params(
    queue: str | None,
    now: datetime,
    open_keys: Sequence[str],
    open_rate_keys: Sequence[str],
    closed_queues: Sequence[str],
    skip: Sequence[str],
    limit: int,
) -> dict[str, Any]:
    """The parameters of :func:`_candidates_statement` (and the claim built on it)."""
    return {
        "now": now,
        "queue": queue,
        "open_keys": list(open_keys),
        "open_rate_keys": list(open_rate_keys),
        "closed_queues": list(closed_queues),
        "skip": list(skip),
        "limit": limit,
    }


def _candidates_statement(one_queue: bool) -> sa.Select[Any]:
    now = sa.bindparam("now", type_=t.c.run_at.type)
    cond = [
        t.c.status == _PENDING,
        t.c.run_at <= now,
        sa.or_(t.c.expires_at.is_(None), t.c.expires_at > now),
        sa.or_(
            t.c.concurrency_key.is_(None),
            t.c.concurrency_key.in_(sa.bindparam("open_keys", expanding=True)),
        ),
        sa.or_(
            t.c.rate_key.is_(None),
            t.c.rate_key.in_(sa.bindparam("open_rate_keys", expanding=True)),
        ),
        t.c.queue_name.not_in(sa.bindparam("closed_queues", expanding=True)),
        t.c.id.not_in(sa.bindparam("skip", expanding=True)),
    ]
    if one_queue:
        cond.append(t.c.queue_name == sa.bindparam("queue"))  # walks the claim index in order
    return (
        sa.select(
            t.c.id, t.c.queue_name, t.c.priority, t.c.run_at, t.c.concurrency_key, t.c.rate_key
        )
        .where(*cond)
        .order_by(*_ORDER)
        .limit(sa.bindparam("limit"))
    )


def _row(kind: str, key: str, now: datetime, **values: Any) -> dict[str, Any]:
    row: dict[str, Any] = {c.key: None for c in lim.c}
    row.update(kind=kind, key=key, updated_at=now, **values)
    return row
