"""The queue's hot paths on SQLite, each one transaction in one driver hop.

Same statements as the general repositories (SQLAlchemy Core, compiled
once), run by :func:`omniq.db.onehop.in_transaction` on aiosqlite's thread:
enqueue (tasks + events), claim (claim + ``dequeued`` events) and complete
(conditional update + results + events + dependency release). PostgreSQL
uses the general path, where a network round trip dominates anyway.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from omniq.db.onehop import Compiled, RowCodec, in_transaction
from omniq.db.schema import events as e
from omniq.db.schema import results as r
from omniq.db.schema import task_dependencies as d
from omniq.db.schema import tasks as t
from omniq.models import TaskStatus

__all__ = ["ClaimOutcome", "SQLiteHotPaths"]

Body = Callable[[sqlite3.Connection], Any]
#: (task_id, queue_name, schedule_id, attempts) of a row the body touched.
Touched = tuple[str, str, str | None, int]

_RUNNING = TaskStatus.RUNNING.value
_WAITING = TaskStatus.WAITING.value


def _json_each(name: str) -> Any:
    return sa.func.json_each(sa.bindparam(name, type_=sa.String)).table_valued("value")


class ClaimOutcome:
    """Raw rows claimed (driver values, in the claim's RETURNING column order)."""

    def __init__(self, rows: list[tuple[Any, ...]]) -> None:
        self.rows = rows


class SQLiteHotPaths:
    """Compiled statements and transaction bodies for enqueue, claim and complete."""

    def __init__(self, dialect: sa.Dialect, claim_by_queue: sa.Update, claim_any: sa.Update):
        self.tasks = RowCodec(t, dialect)
        self.events = RowCodec(e, dialect)
        self.results = RowCodec(r, dialect)
        utc = self.tasks.bind["run_at"]
        claim_binds = {"now": utc, "lease_until": utc}
        self._insert_task = Compiled(
            t.insert().values({c.key: sa.bindparam(c.key) for c in t.c}), dialect, self.tasks.bind
        )
        event_cols = [c for c in e.c if c.key != "id"]
        self._insert_event = Compiled(
            e.insert().values({c.key: sa.bindparam(c.key) for c in event_cols}),
            dialect,
            self.events.bind,
        )
        upsert = sqlite_insert(r).values({c.key: sa.bindparam(c.key) for c in r.c})
        upsert = upsert.on_conflict_do_update(
            index_elements=[r.c.task_id],
            set_={c.key: upsert.excluded[c.key] for c in r.c if c.key != "task_id"},
        )
        self._upsert_result = Compiled(upsert, dialect, self.results.bind)
        self._claim_by_queue = Compiled(claim_by_queue, dialect, claim_binds)
        self._claim_any = Compiled(claim_any, dialect, claim_binds)
        self._load_task = self.tasks.loader(self._claim_any.returning)
        pairs = _json_each("pairs")
        held = sa.select(
            sa.func.json_extract(pairs.c.value, "$[0]"), sa.func.json_extract(pairs.c.value, "$[1]")
        )
        self._complete = Compiled(
            sa.update(t)
            .where(t.c.status == _RUNNING, sa.tuple_(t.c.id, t.c.lease_token).in_(held))
            .values(
                status=sa.bindparam("status"),
                completed_at=sa.bindparam("now"),
                lease_token=None,
                lease_expires_at=None,
            )
            .returning(t.c.id),
            dialect,
            {"now": utc},
        )
        done = _json_each("done")
        self._dependents = Compiled(
            sa.select(t.c.id)
            .join(d, d.c.task_id == t.c.id)
            .where(d.c.depends_on_id.in_(sa.select(done.c.value)), t.c.status == _WAITING)
            .distinct(),
            dialect,
            {},
        )
        candidates = _json_each("candidates")
        other = t.alias("dep")
        unmet = (
            sa.select(sa.literal(1))
            .select_from(d.join(other, other.c.id == d.c.depends_on_id))
            .where(d.c.task_id == t.c.id, other.c.status != TaskStatus.COMPLETED.value)
        )
        self._release = Compiled(
            sa.update(t)
            .where(
                t.c.id.in_(sa.select(candidates.c.value)),
                t.c.status == _WAITING,
                ~sa.exists(unmet),
            )
            .values(status=TaskStatus.PENDING.value)
            .returning(t.c.id, t.c.queue_name, t.c.schedule_id, t.c.attempts),
            dialect,
            {},
        )

    # --- enqueue -------------------------------------------------------------------

    def enqueue(
        self, task_rows: Sequence[Mapping[str, Any]], event_rows: Sequence[Mapping[str, Any]]
    ) -> Body:
        """Insert task rows (made by ``TaskRepository.to_row``) and their events."""
        task_params = [self._insert_task.params(row) for row in task_rows]
        event_params = [self._insert_event.params(row) for row in event_rows]

        def body(conn: sqlite3.Connection) -> None:
            self._insert_task.insert_many(conn, task_params)
            self._insert_event.insert_many(conn, event_params)

        return lambda conn: in_transaction(conn, body)

    # --- claim -----------------------------------------------------------------------

    def claim(
        self,
        *,
        queues: Sequence[str] | None,
        n: int,
        params: Mapping[str, Any],
        events: Callable[[list[Touched]], list[dict[str, Any]]],
    ) -> Body:
        """Claim up to ``n`` tasks (queues in order) and log an event per claimed task."""
        if queues:
            statements = [(self._claim_by_queue, {**params, "queue": q}) for q in queues]
        else:
            statements = [(self._claim_any, dict(params))]
        prepared = [(c, values) for c, values in statements]
        insert_event = self._insert_event
        columns = self._claim_any.returning
        i_id, i_queue = columns.index("id"), columns.index("queue_name")
        i_schedule, i_attempts = columns.index("schedule_id"), columns.index("attempts")

        def body(conn: sqlite3.Connection) -> ClaimOutcome:
            raw: list[tuple[Any, ...]] = []
            for compiled, values in prepared:
                want = n - len(raw)
                if want <= 0:
                    break
                raw.extend(conn.execute(compiled.sql, compiled.params({**values, "n": want})))
            touched = [(row[i_id], row[i_queue], row[i_schedule], row[i_attempts]) for row in raw]
            if touched:
                insert_event.insert_many(conn, [insert_event.params(ev) for ev in events(touched)])
            return ClaimOutcome(raw)

        return lambda conn: in_transaction(conn, body)

    def load_claimed(self, outcome: ClaimOutcome) -> list[dict[str, Any]]:
        """Python values of the claimed rows (result processors applied)."""
        return [self._load_task(row) for row in outcome.rows]

    # --- complete ----------------------------------------------------------------------

    def complete(
        self,
        *,
        leases: Sequence[tuple[str, str | None]],
        now: datetime,
        result_rows: Mapping[str, Mapping[str, Any]],
        completed_events: Mapping[str, Mapping[str, Any]],
        extra_events: Sequence[Mapping[str, Any]],
        ready_events: Callable[[list[Touched]], list[dict[str, Any]]],
    ) -> Body:
        """Complete tasks still held under their lease; results, events, dependents.

        Returns (in the body's result) the set of task ids completed.
        """
        complete = self._complete
        params = complete.params(
            {"pairs": json.dumps([list(p) for p in leases]), "status": "completed", "now": now}
        )
        insert_event = self._insert_event
        upsert = self._upsert_result
        results = {k: upsert.params(v) for k, v in result_rows.items()}
        done_events = {k: insert_event.params(v) for k, v in completed_events.items()}
        extra = [insert_event.params(v) for v in extra_events]
        dependents, release = self._dependents, self._release

        def body(conn: sqlite3.Connection) -> set[str]:
            if extra:
                insert_event.insert_many(conn, extra)
            held = {row[0] for row in conn.execute(complete.sql, params)}
            if not held:
                return held
            insert_event.insert_many(conn, [done_events[i] for i in held])
            rows = [results[i] for i in held if i in results]
            if rows:
                upsert.insert_many(conn, rows)
            ids = json.dumps(sorted(held))
            found = conn.execute(dependents.sql, dependents.params({"done": ids}))
            waiting = [row[0] for row in found]
            if waiting:
                released = [
                    (row[0], row[1], row[2], row[3])
                    for row in conn.execute(
                        release.sql, release.params({"candidates": json.dumps(waiting)})
                    )
                ]
                if released:
                    insert_event.insert_many(
                        conn, [insert_event.params(ev) for ev in ready_events(released)]
                    )
            return held

        return lambda conn: in_transaction(conn, body)
