"""The PostgreSQL floor: OmniQ's claim/complete work done with plain asyncpg.

Each connection loops: claim up to 100 pending tasks with one
``UPDATE ... WHERE id IN (SELECT ... FOR UPDATE SKIP LOCKED LIMIT 100)
RETURNING *`` (the statement OmniQ's claim compiles to), then complete them
with one conditional ``UPDATE`` per batch. With ``events`` each step is a
transaction that also writes the rows OmniQ writes: a ``dequeued`` event
per task with the claim; ``executing`` and ``completed`` events (one
multi-row insert) and a result row per task (an upsert) with the
completion. Without ``events`` the two updates run alone (autocommit). No
task function runs: this is the database's part only.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from typing import Any

import asyncpg

from bench.common import rate

CLAIM = """
UPDATE omniq_tasks
SET status = 'running', attempts = attempts + 1, started_at = $1,
    lease_token = $2, lease_expires_at = $3, worker_id = $4
WHERE id IN (
    SELECT id FROM omniq_tasks
    WHERE status = 'pending' AND run_at <= $1 AND (expires_at IS NULL OR expires_at > $1)
    ORDER BY priority DESC, run_at, id
    LIMIT $5
    FOR UPDATE SKIP LOCKED)
RETURNING *
"""
COMPLETE = """
UPDATE omniq_tasks
SET status = 'completed', completed_at = $1, lease_token = NULL, lease_expires_at = NULL
WHERE id = ANY($2::varchar[]) AND lease_token = $3 AND status = 'running'
RETURNING id
"""
EVENT_COLUMNS = (
    "task_id",
    "event_type",
    '"timestamp"',
    "queue_name",
    "worker_id",
    "schedule_id",
    "message",
    "data",
    "execution_time",
    "retry_count",
    "error",
    "source",
    "level",
)
INSERT_EVENT = (
    f"INSERT INTO omniq_events ({', '.join(EVENT_COLUMNS)}) "
    f"VALUES ({', '.join(f'${i + 1}' for i in range(len(EVENT_COLUMNS)))})"
)
RESULT_COLUMNS = (
    "task_id",
    "schedule_id",
    "status",
    "result",
    "serializer",
    "error",
    "error_type",
    "error_traceback",
    "created_at",
    "started_at",
    "completed_at",
    "ttl",
    "expires_at",
    "execution_time",
    "worker_id",
    "retry_count",
)
UPSERT_RESULT = (
    f"INSERT INTO omniq_results ({', '.join(RESULT_COLUMNS)}) "
    f"VALUES ({', '.join(f'${i + 1}' for i in range(len(RESULT_COLUMNS)))}) "
    "ON CONFLICT (task_id) DO UPDATE SET "
    + ", ".join(f"{c} = EXCLUDED.{c}" for c in RESULT_COLUMNS[1:])
)
LEASE_MICROS = 300 * 1_000_000


def _micros() -> int:
    return time.time_ns() // 1000


def _event(row: Any, kind: str, now: int, worker: str, **fields: Any) -> tuple[Any, ...]:
    values = {
        "task_id": row["id"],
        "event_type": kind,
        '"timestamp"': now,
        "queue_name": row["queue_name"],
        "worker_id": worker,
        "schedule_id": row["schedule_id"],
        "level": "info",
        **fields,
    }
    return tuple(values.get(c) for c in EVENT_COLUMNS)


def _result(row: Any, now: int, worker: str) -> tuple[Any, ...]:
    ttl = row["result_ttl"]
    return (
        row["id"],
        row["schedule_id"],
        "success",
        None,
        row["serializer"],
        None,
        None,
        None,
        now,
        row["started_at"],
        now,
        ttl,
        None if ttl is None else now + int(ttl * 1_000_000),
        0.0001,
        worker,
        row["retry_count"],
    )


class Marks:
    """Tasks done, first claim and last completion (wall clock) over all connections."""

    def __init__(self) -> None:
        self.done = 0
        self.first: float | None = None
        self.last: float | None = None


async def _drain(conn: asyncpg.Connection, events: bool, batch: int, marks: Marks) -> None:
    worker = f"raw:{uuid.uuid4().hex[:8]}"
    while True:
        started = time.time()
        now, token = _micros(), uuid.uuid4().hex
        claim = (now, token, now + LEASE_MICROS, worker, batch)
        if events:
            async with conn.transaction():
                rows = await conn.fetch(CLAIM, *claim)
                if rows:
                    attempt = [json.dumps({"attempt": r["attempts"]}) for r in rows]
                    await conn.executemany(
                        INSERT_EVENT,
                        [
                            _event(r, "dequeued", now, worker, data=a)
                            for r, a in zip(rows, attempt, strict=True)
                        ],
                    )
        else:
            rows = await conn.fetch(CLAIM, *claim)
        if not rows:
            return
        if marks.first is None or started < marks.first:
            marks.first = started
        now = _micros()
        ids = [r["id"] for r in rows]
        if events:
            async with conn.transaction():
                done = await conn.fetch(COMPLETE, now, ids, token)
                log = [
                    _event(
                        r,
                        "executing",
                        now,
                        worker,
                        data=json.dumps({"attempt": r["attempts"]}),
                        retry_count=r["retry_count"],
                    )
                    for r in rows
                ]
                log += [
                    _event(
                        r,
                        "completed",
                        now,
                        worker,
                        execution_time=0.0001,
                        retry_count=r["retry_count"],
                    )
                    for r in rows
                ]
                await conn.executemany(INSERT_EVENT, log)
                await conn.executemany(UPSERT_RESULT, [_result(r, now, worker) for r in rows])
        else:
            done = await conn.fetch(COMPLETE, now, ids, token)
        marks.done += len(done)
        marks.last = time.time()


async def drain_rate(
    dsn: str, n: int, *, events: bool, connections: int = 1, batch: int = 100
) -> float:
    """Tasks/s of ``connections`` connections draining the ``n`` pending tasks of ``dsn``."""
    conns = [await asyncpg.connect(dsn) for _ in range(connections)]
    try:
        marks = Marks()
        await asyncio.gather(*(_drain(c, events, batch, marks) for c in conns))
    finally:
        for conn in conns:
            await conn.close()
    if marks.done != n:
        raise RuntimeError(f"raw asyncpg completed {marks.done} of {n} tasks")
    if marks.first is None or marks.last is None:
        return 0.0
    return rate(n, marks.last - marks.first)
