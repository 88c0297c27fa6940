"""The batch statements (PostgreSQL: arrays + unnest; SQLite: executemany / IN lists).

Both shapes must keep the semantics of writing the rows one after another:
fenced by lease token, a task listed twice marked once, the last result of a
task winning, events written with every column.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from omniq.db import schema
from omniq.db.engine import dialect_of
from omniq.models import EventType, ResultStatus, Task, TaskResult, TaskStatus
from omniq.repositories import EventRepository, ResultRepository, TaskRepository
from omniq.repositories.events import event_row

pytestmark = pytest.mark.anyio

T0 = datetime(2030, 1, 1, tzinfo=UTC)


async def _claimed(engine: AsyncEngine, n: int) -> tuple[TaskRepository, list[Task]]:
    repo = TaskRepository(dialect_of(engine))
    tasks = [Task(func="m:f", created_at=T0 - timedelta(seconds=1)) for _ in range(n)]
    async with engine.begin() as conn:
        await conn.run_sync(repo.insert_many, tasks)
        claimed = await conn.run_sync(
            lambda c: repo.claim(
                c,
                queues=None,
                n=n,
                now=T0,
                token="tok",
                lease_until=T0 + timedelta(minutes=1),
                worker_id="w",
                start=False,
            )
        )
    assert len(claimed) == n
    return repo, claimed


async def _rows(engine: AsyncEngine, table: sa.Table) -> list[Any]:
    async with engine.begin() as conn:
        return list((await conn.execute(sa.select(table))).mappings().all())


async def test_mark_started_batch_is_fenced_and_marks_once(engine: AsyncEngine) -> None:
    repo, claimed = await _claimed(engine, 4)
    a, b, c, d = (x.id for x in claimed)
    starts = [
        (a, "tok", T0),
        (a, "tok", T0 + timedelta(seconds=5)),  # listed twice: marked once
        (b, "other", T0),  # not this lease: skipped
        (c, "tok", T0 + timedelta(seconds=1)),
    ]
    async with engine.begin() as conn:
        await conn.run_sync(repo.mark_started, starts)
    rows = {r["id"]: r for r in await _rows(engine, schema.tasks)}
    assert rows[a]["attempts"] == 1 and rows[a]["started_at"] == T0
    assert rows[b]["attempts"] == 0 and rows[b]["started_at"] is None
    assert rows[c]["attempts"] == 1 and rows[c]["started_at"] == T0 + timedelta(seconds=1)
    assert rows[d]["started_at"] is None


async def test_finish_leased_and_heartbeat_batch_skip_lost_leases(engine: AsyncEngine) -> None:
    repo, claimed = await _claimed(engine, 3)
    a, b, c = (x.id for x in claimed)
    async with engine.begin() as conn:
        beat = await conn.run_sync(repo.heartbeat, {a: "tok", b: "nope"}, T0 + timedelta(minutes=5))
        done = await conn.run_sync(
            repo.finish_leased,
            [(a, "tok"), (b, "wrong"), (c, None), ("missing", "tok")],
            {"status": TaskStatus.COMPLETED, "completed_at": T0, "lease_token": None},
        )
    assert beat == {a: False}
    assert done == {a}
    rows = {r["id"]: r for r in await _rows(engine, schema.tasks)}
    assert rows[a]["status"] == "completed" and rows[a]["lease_token"] is None
    assert rows[b]["status"] == rows[c]["status"] == "running"


async def test_event_batch_writes_every_column(engine: AsyncEngine) -> None:
    repo = EventRepository(dialect_of(engine))
    rows = [
        event_row(EventType.DEQUEUED, task_id="t1", timestamp=T0, data={"attempt": 1}),
        event_row(EventType.COMPLETED, task_id="t2", timestamp=T0, execution_time=0.5),
        event_row(EventType.FAILED, message="boom", error="E", retry_count=2, timestamp=T0),
    ]
    async with engine.begin() as conn:
        await conn.run_sync(repo.insert_rows, rows)
    stored = sorted(await _rows(engine, schema.events), key=lambda r: r["id"])
    assert [r["event_type"] for r in stored] == ["dequeued", "completed", "failed"]
    assert stored[0]["data"] == {"attempt": 1} and stored[1]["data"] is None
    assert stored[1]["execution_time"] == 0.5 and stored[2]["retry_count"] == 2
    assert all(r["timestamp"] == T0 for r in stored)


async def test_result_batch_upsert_last_row_wins(engine: AsyncEngine) -> None:
    repo = ResultRepository(dialect_of(engine))

    def result(task_id: str, value: Any) -> dict[str, Any]:
        return repo.to_row(
            TaskResult(
                task_id=task_id,
                status=ResultStatus.SUCCESS,
                result=value,
                created_at=T0,
                completed_at=T0,
            )
        )

    async with engine.begin() as conn:
        await conn.run_sync(repo.upsert_rows, [result("t1", 1), result("t2", [2])])
        await conn.run_sync(
            repo.upsert_rows, [result("t1", "x"), result("t3", None), result("t1", "y")]
        )
        got = {x: await conn.run_sync(repo.get, x) for x in ("t1", "t2", "t3")}
    assert got["t1"] is not None and got["t1"].result == "y"
    assert got["t2"] is not None and got["t2"].result == [2]
    assert got["t3"] is not None and got["t3"].result is None


async def test_an_upsert_whose_rows_leave_a_column_null_clears_it(engine: AsyncEngine) -> None:
    # On SQLite a column NULL in every row of a call is left out of that call's
    # statement; the replaced row must still end up NULL there, not keep its value.
    repo = ResultRepository(dialect_of(engine))

    def failed(task_id: str, error: str | None) -> dict[str, Any]:
        return repo.to_row(
            TaskResult(
                task_id=task_id,
                status=ResultStatus.ERROR if error else ResultStatus.SUCCESS,
                error=error,
                error_type="ValueError" if error else None,
                worker_id="w1" if error else None,
                ttl=timedelta(hours=1) if error else None,
                execution_time=0.25 if error else None,
                created_at=T0,
                completed_at=T0,
            )
        )

    async with engine.begin() as conn:
        await conn.run_sync(repo.upsert_rows, [failed("t1", "boom"), failed("t2", "bang")])
        await conn.run_sync(repo.upsert_rows, [failed("t1", None), failed("t2", None)])
        got = [await conn.run_sync(repo.get, x) for x in ("t1", "t2")]
    for result in got:
        assert result is not None and result.status is ResultStatus.SUCCESS
        assert (result.error, result.error_type, result.worker_id) == (None, None, None)
        assert (result.ttl, result.expires_at, result.execution_time) == (None, None, None)


async def test_rows_of_every_null_pattern_are_stored_as_given_in_order(
    engine: AsyncEngine,
) -> None:
    # Each call below has its own set of NULL columns (more sets than SQLite's
    # statement cache keeps), one call mixes them: every value lands, in order.
    repo = EventRepository(dialect_of(engine))
    optional = ["task_id", "worker_id", "schedule_id", "message", "error", "source", "retry_count"]
    value_of: dict[str, Any] = {
        "task_id": "t",
        "worker_id": "w",
        "schedule_id": "s",
        "message": "m",
        "error": "e",
        "source": "src",
        "retry_count": 3,
    }
    calls = []
    for mask in range(1 << len(optional)):
        given = {k: value_of[k] for i, k in enumerate(optional) if mask >> i & 1}
        calls.append([event_row(EventType.RETRY, timestamp=T0, data={"mask": mask}, **given)])
    mixed = [row for call in calls[:20] for row in call]
    async with engine.begin() as conn:
        for call in calls:
            await conn.run_sync(repo.insert_rows, call)
        await conn.run_sync(repo.insert_rows, mixed)
    stored = sorted(await _rows(engine, schema.events), key=lambda r: r["id"])
    expected = [row for call in calls for row in call] + mixed
    assert len(stored) == len(expected)
    for got, want in zip(stored, expected, strict=True):
        assert got["data"] == want["data"]
        assert {k: got[k] for k in optional} == {k: want[k] for k in optional}


async def test_tasks_with_and_without_optional_fields_round_trip(engine: AsyncEngine) -> None:
    repo = TaskRepository(dialect_of(engine))
    plain = Task(func="m:f", created_at=T0)
    full = Task(
        func="m:f",
        created_at=T0,
        name="n",
        description="d",
        ttl=timedelta(minutes=5),
        callback="m:cb",
        result_ttl=timedelta(hours=1),
        timeout=timedelta(seconds=9),
        unique_key="k",
        trace_context='{"traceparent":"x"}',
        concurrency_key="c",
        concurrency_max=2,
        workflow_id="wf",
    )
    async with engine.begin() as conn:
        await conn.run_sync(repo.insert_many, [plain, full, Task(func="m:g", created_at=T0)])
        got = [await conn.run_sync(repo.get, x.id) for x in (plain, full)]
    assert got == [plain, full]
