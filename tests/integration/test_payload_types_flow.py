"""Payload types through the queue: enqueue, a worker runs, results read back."""

from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta, timezone
from decimal import Decimal
from typing import Any
from uuid import UUID, uuid4

import pytest
import sqlalchemy as sa

from omniq import AsyncOmniQ, SerializationError, TaskStatus
from omniq.db.engine import create_engine
from omniq.db.schema import results as results_table
from omniq.db.schema import tasks as tasks_table

pytestmark = pytest.mark.anyio

ARGS: tuple[Any, ...] = (
    datetime(2026, 3, 29, 1, 30, tzinfo=timezone(timedelta(hours=2))),
    date(2026, 2, 28),
    time(8, 15),
    timedelta(minutes=90),
    UUID("12345678-1234-5678-1234-567812345678"),
    Decimal("19.99"),
    b"\x00\x01",
    {"a", "b"},
    frozenset({1}),
    (1, (2, 3)),
    {1: "one", (2, 3): "pair"},
)


def echo(*args: Any, **kwargs: Any) -> dict[str, Any]:
    """Returns what it got, and the type names it saw (checked inside the task)."""
    return {"args": args, "kwargs": kwargs, "types": [type(a).__name__ for a in args]}


class Widget:
    pass


def make_widget() -> Widget:
    return Widget()


def make_number(n: int) -> int:
    return n


async def test_everyday_types_reach_the_task_and_come_back(db_url: str) -> None:
    async with AsyncOmniQ(url=db_url) as oq:
        task_id = await oq.enqueue_async(echo, list(ARGS), {"when": ARGS[0], "ids": [uuid4()]})
        await oq.run_worker_async(burst=True)
        result = await oq.get_result_async(task_id)
        task = await oq.get_task_async(task_id)
    assert task is not None and task.status is TaskStatus.COMPLETED
    assert task.func_args == ARGS
    assert result is not None and result.result is not None
    value = result.result
    assert value["args"] == ARGS
    assert value["types"] == [type(a).__name__ for a in ARGS]
    assert value["kwargs"]["when"] == ARGS[0] and isinstance(value["kwargs"]["ids"][0], UUID)


async def test_an_unsupported_argument_is_refused_at_enqueue(db_url: str) -> None:
    async with AsyncOmniQ(url=db_url) as oq:
        with pytest.raises(SerializationError, match=r"^argument 2 \(func_args\[1\]\): .*Widget"):
            await oq.enqueue_async(echo, [1, Widget()])
        with pytest.raises(SerializationError, match=r"^keyword argument 'at' .*naive datetime"):
            await oq.enqueue_async(echo, [], {"at": datetime(2026, 1, 1)})
        assert await oq.list_tasks_async() == []


async def test_an_unsupported_result_fails_the_task_before_it_counts_as_succeeded(
    db_url: str,
) -> None:
    async with AsyncOmniQ(url=db_url) as oq:
        bad = await oq.enqueue_async(make_widget, max_retries=3)
        good = [await oq.enqueue_async(make_number, [n]) for n in range(5)]
        stats = await oq.run_worker_async(burst=True, concurrency=8)
        task = await oq.get_task_async(bad)
        result = await oq.get_result_async(bad)
        events = [e.event_type.value for e in reversed(await oq.get_events_async(task_id=bad))]
        assert task is not None and task.status is TaskStatus.FAILED
        assert task.attempts == 1  # not retried: the same code would return the same value
        assert result is not None and result.error_type == "SerializationError"
        assert result.error is not None and "result: a value of type" in result.error
        assert "Widget cannot be stored as JSON" in result.error
        assert "completed" not in events and events[-1] == "failed"
        for n, task_id in enumerate(good):
            done = await oq.get_result_async(task_id)
            assert done is not None and done.result == n
        assert stats.completed == 5 and stats.failed == 1


async def test_rows_written_in_the_old_payload_format_still_read(db_url: str) -> None:
    """A task and a result stored before type tags existed (plain JSON text)."""
    async with AsyncOmniQ(url=db_url) as oq:
        task_id = await oq.enqueue_async(echo, [0])
        done_id = await oq.enqueue_async(make_number, [1])
        await oq.run_worker_async(burst=True, queues=["none-such"])
    engine = create_engine(db_url)
    try:
        async with engine.begin() as conn:
            await conn.execute(
                sa.update(tasks_table)
                .where(tasks_table.c.id == task_id)
                .values(payload='{"a":[[1,2],"2026-01-01T00:00:00+00:00"],"k":{"m":{"1":"x"}}}')
            )
    finally:
        await engine.dispose()
    async with AsyncOmniQ(url=db_url, allow_modules=[__name__]) as oq:
        task = await oq.get_task_async(task_id)
        assert task is not None
        assert task.func_args == ([1, 2], "2026-01-01T00:00:00+00:00")
        await oq.run_worker_async(burst=True)
        result = await oq.get_result_async(task_id)
        assert result is not None and result.result is not None
        assert result.result["args"] == ([1, 2], "2026-01-01T00:00:00+00:00")
        assert result.result["kwargs"] == {"m": {"1": "x"}}
    engine = create_engine(db_url)
    try:
        async with engine.begin() as conn:
            await conn.execute(
                sa.update(results_table)
                .where(results_table.c.task_id == done_id)
                .values(result='{"total":3,"when":"2026-01-01"}')
            )
    finally:
        await engine.dispose()
    async with AsyncOmniQ(url=db_url) as oq:
        old = await oq.get_result_async(done_id)
        assert old is not None and old.result == {"total": 3, "when": "2026-01-01"}


async def test_schedules_keep_tagged_arguments(db_url: str) -> None:
    async with AsyncOmniQ(url=db_url) as oq:
        start = datetime(2030, 1, 1, tzinfo=UTC)
        sid = await oq.schedule_async(echo, [start, {1, 2}], interval=60, name="tagged")
        assert await oq.schedule_async(echo, [start, {1, 2}], interval=60, name="tagged") == sid
        schedule = await oq.get_schedule_async(sid)
        assert schedule is not None and schedule.func_args == (start, {1, 2})
        assert schedule.updated_at is None  # the same declaration: nothing to update
