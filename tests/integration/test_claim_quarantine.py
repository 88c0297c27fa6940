"""A claim that takes rows it cannot read still finds the ready tasks behind them.

Unreadable rows (say a stored function reference that no longer parses) are
quarantined in the claim's transaction. They used to take the claim's places:
a claim that took only such rows came back empty, and a burst worker stopped
with ready tasks still queued.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import sqlalchemy as sa

from omniq.db.schema import tasks as tasks_table
from omniq.models import TaskStatus
from omniq.services import Services
from omniq.worker import Worker

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
