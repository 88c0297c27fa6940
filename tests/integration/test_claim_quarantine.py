"""A claim that takes rows it cannot read still finds the ready tasks behind them.

Unreadable rows (say a stored function reference that no longer parses) are
quarantined in the claim's transaction. They used to take the claim's places:
a claim that took only such rows came back empty, and a burst worker stopped
with ready tasks still queued.
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from omniq.db.schema import tasks as tasks_table
from omniq.models import Task, TaskStatus
from omniq.services import Services, claims
from omniq.worker import Worker
from tests.waiting import DEADLINE

_ROOT = str(Path(__file__).resolve().parents[2])
if _ROOT not in sys.path:
    sys.path.append(_ROOT)

pytestmark = pytest.mark.anyio

ADD = "tests.worker_tasks:add"


async def test_a_burst_worker_runs_the_tasks_behind_a_claim_of_unreadable_rows(
    svc: Services,
) -> None:
    broken = [await svc.queue.enqueue_async(ADD, [i, i], priority=10) for i in range(3)]
    async with svc.storage.engine.begin() as conn:
        await conn.execute(
            sa.update(tasks_table)
            .where(tasks_table.c.id.in_(broken))
            .values(func="not a reference")
        )
    good = [await svc.queue.enqueue_async(ADD, [i, 1]) for i in range(2)]
    # Three slots and no prefetch: the first claim asks for exactly the three broken rows.
    worker = Worker(
        svc.queue,
        svc.results,
        svc.events,
        allow_modules=["tests.worker_tasks"],
        concurrency=3,
        prefetch=0,
        run_scheduler=False,
        run_maintenance=False,
    )
    stats = await worker.run_until_complete_async()

    for i, task_id in enumerate(good):
        result = await svc.results.get_async(task_id)
        assert result is not None and result.result == i + 1, f"task {i} did not run"
    assert stats.completed == 2
    async with svc.storage.engine.connect() as conn:
        rows = await conn.execute(
            sa.select(tasks_table.c.status, tasks_table.c.last_error).where(
                tasks_table.c.id.in_(broken)
            )
        )
        quarantined = list(rows)
    assert [row.status for row in quarantined] == [TaskStatus.FAILED.value] * 3
    assert all("func" in (row.last_error or "") for row in quarantined)


async def test_the_dependents_of_a_quarantined_task_are_cancelled_at_once(
    svc: Services,
) -> None:
    broken = await svc.queue.enqueue_async(ADD, [1, 1])
    dependent = await svc.queue.enqueue_async(ADD, [2, 2], depends_on=[broken])
    grandchild = await svc.queue.enqueue_async(ADD, [3, 3], depends_on=[dependent])
    async with svc.storage.engine.begin() as conn:
        await conn.execute(
            sa.update(tasks_table).where(tasks_table.c.id == broken).values(func="not a reference")
        )
    # No maintenance sweep: the claim that quarantines the row settles its dependents.
    worker = Worker(
        svc.queue,
        svc.results,
        svc.events,
        allow_modules=["tests.worker_tasks"],
        run_scheduler=False,
        run_maintenance=False,
    )
    await worker.run_until_complete_async()
    for task_id in (dependent, grandchild):
        task = await svc.queue.get_task_async(task_id)
        assert task is not None
        assert task.status is TaskStatus.CANCELLED, f"{task_id} is {task.status}"
    first = await svc.queue.get_task_async(dependent)
    assert first is not None and broken in (first.last_error or "")


async def _broken(svc: Services, n: int) -> list[str]:
    """``n`` ready tasks, ahead of any other by priority, whose rows cannot be read."""
    ids = await svc.queue.enqueue_many_async(
        [svc.queue.build_task(ADD, [i, i], priority=10) for i in range(n)]
    )
    async with svc.storage.engine.begin() as conn:
        await conn.execute(
            sa.update(tasks_table).where(tasks_table.c.id.in_(ids)).values(func="not a reference")
        )
    return ids


async def _statuses(svc: Services, ids: list[str]) -> set[str]:
    async with svc.storage.engine.connect() as conn:
        rows = await conn.execute(sa.select(tasks_table.c.status).where(tasks_table.c.id.in_(ids)))
        return {row.status for row in rows}


@pytest.mark.parametrize("n", [1, 10])
async def test_many_unreadable_rows_are_quarantined_over_several_transactions(
    svc: Services, monkeypatch: pytest.MonkeyPatch, n: int
) -> None:
    # One transaction quarantines a bounded number of rows (256; 5 here), so a claim
    # that meets thousands does not hold the process's other writes (heartbeats)
    # back for seconds; the claim goes on in the next one and still finds the task.
    monkeypatch.setattr(claims, "_QUARANTINED_PER_TRANSACTION", 5)
    broken = await _broken(svc, 12)
    good = await svc.queue.enqueue_async(ADD, [1, 1])
    commits: list[int] = []

    def commit(conn: sa.Connection) -> None:
        commits.append(1)

    sa.event.listen(sa.Engine, "commit", commit)
    try:
        claimed = await svc.queue.dequeue_many_async(n, worker_id="w")
    finally:
        sa.event.remove(sa.Engine, "commit", commit)
    assert [x.id for x in claimed] == [good]
    # 5 + 5 + 2 rows quarantined, then the task claimed: however many the claim
    # asks for, a transaction quarantines no more than the bound.
    assert len(commits) == 3
    assert await _statuses(svc, broken) == {TaskStatus.FAILED.value}


@pytest.mark.parametrize("at", [1, 2, 3, 4, 5, 7])
async def test_a_claim_cancelled_between_its_transactions_gives_its_tasks_back(
    svc: Services, monkeypatch: pytest.MonkeyPatch, at: int
) -> None:
    # Two rows quarantined a transaction: the two good tasks are claimed by the
    # first, the last task by the fifth. The caller is cancelled while the
    # ``at``-th row is quarantined (in transaction (at + 1) // 2).
    monkeypatch.setattr(claims, "_QUARANTINED_PER_TRANSACTION", 2)
    good = await svc.queue.enqueue_many_async(
        [svc.queue.build_task(ADD, [i, 1], priority=20) for i in range(2)]
    )
    await _broken(svc, 8)
    later = await svc.queue.enqueue_async(ADD, [9, 1])
    loop = asyncio.get_running_loop()
    quarantine = svc.queue._quarantine
    calls: list[int] = []
    claim: asyncio.Future[list[Task]] | None = None

    def cancel_at(*args: Any) -> None:
        calls.append(1)
        if len(calls) == at and claim is not None:
            loop.call_soon_threadsafe(claim.cancel)
        quarantine(*args)

    monkeypatch.setattr(svc.queue, "_quarantine", cancel_at)
    claim = asyncio.ensure_future(svc.queue.dequeue_many_async(3, worker_id="gone"))
    with pytest.raises(asyncio.CancelledError):
        await claim
    await asyncio.wait_for(svc.storage.wait_detached(), timeout=DEADLINE)
    # None is left running under the lease of a caller that is gone: pending
    # again, unspent.
    assert await _statuses(svc, [*good, later]) == {TaskStatus.PENDING.value}
    for task_id in [*good, later]:
        task = await svc.queue.get_task_async(task_id)
        assert task is not None and task.attempts == 0 and task.lease_token is None


@pytest.mark.parametrize("column", ["created_at", "ttl"])
async def test_a_stored_value_that_cannot_be_converted_is_quarantined(
    svc: Services, column: str
) -> None:
    # SQLite stores any value in any column: text where an instant or a duration
    # belongs made every claim that met the row raise, and a worker met it again
    # at every claim. (PostgreSQL's typed columns cannot hold such a value.)
    if svc.storage.dialect.name != "sqlite":
        pytest.skip("PostgreSQL's typed columns cannot store text in a number column")
    broken = await _broken_by(svc, column, "not a number")
    good = await svc.queue.enqueue_async(ADD, [1, 1])
    claimed = await svc.queue.dequeue_many_async(5, worker_id="w")
    assert [x.id for x in claimed] == [good]
    async with svc.storage.engine.connect() as conn:
        row = (
            await conn.execute(
                sa.select(tasks_table.c.status, tasks_table.c.last_error).where(
                    tasks_table.c.id == broken
                )
            )
        ).one()
    assert row.status == TaskStatus.FAILED.value
    assert column in (row.last_error or ""), row.last_error


async def _broken_by(svc: Services, column: str, value: Any) -> str:
    """One ready task, ahead of any other by priority, with ``value`` stored in ``column``."""
    task_id = await svc.queue.enqueue_async(ADD, [0, 0], priority=10)
    async with svc.storage.engine.begin() as conn:
        await conn.exec_driver_sql(
            f"UPDATE omniq_tasks SET {column} = ? WHERE id = ?", (value, task_id)
        )
    return task_id
