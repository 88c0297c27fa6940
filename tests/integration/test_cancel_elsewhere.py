"""Cancels requested from another process (``omniq cancel``), which shares no
in-process notification with the worker.

A worker hears of them by reading its held tasks' cancel requests about every
second, long before its next heartbeat (set to a minute here); and a task whose
function returned before the worker heard ends cancelled all the same: the
completion write itself honours the request (the result is dropped).
"""

from __future__ import annotations

import asyncio
import os
import sys
from datetime import timedelta
from pathlib import Path

import pytest

from omniq.models import EventType, ResultStatus, Settings, TaskStatus
from omniq.services import Services
from tests import worker_tasks
from tests.integration.test_worker import (
    ServicesFactory,
    events_of,
    make_worker,
    must_result,
    ref,
    status_of,
)
from tests.waiting import wait_until

pytestmark = pytest.mark.anyio

#: Heartbeats far apart: what a test sees within seconds did not come from one.
SLOW_HEARTBEAT = Settings(
    lease_duration=timedelta(minutes=5), heartbeat_interval=timedelta(minutes=1)
)


async def cancel_in_another_process(url: str, task_id: str) -> None:
    """``omniq cancel TASK_ID`` in a process of its own."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "omniq",
        "cancel",
        task_id,
        env={**os.environ, "OMNIQ_DATABASE_URL": url},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(), timeout=60)
    assert process.returncode == 0, (out + err).decode()


async def test_a_completion_after_a_cancel_request_ends_cancelled(svc: Services) -> None:
    """The function returned, and the cancel was requested before its completion
    was written: the task ends cancelled, its result dropped, its dependents
    cancelled; complete_many_async reports it not completed."""
    task_id = await svc.queue.enqueue_async(ref("add"), [1, 2])
    child = await svc.queue.enqueue_async(ref("add"), [3, 4], depends_on=[task_id])
    other = await svc.queue.enqueue_async(ref("add"), [5, 6])
    claimed = await svc.queue.dequeue_many_async(2, worker_id="w")
    assert {task.id for task in claimed} == {task_id, other}
    assert await svc.queue.cancel_async(task_id)  # running: requested
    by_id = {task.id: task for task in claimed}
    statuses = await svc.queue.settle_completions_async(
        [(by_id[task_id], 3, 0.01), (by_id[other], 11, 0.01)], worker_id="w"
    )
    assert statuses == [TaskStatus.CANCELLED, TaskStatus.COMPLETED]
    assert await status_of(svc, task_id) is TaskStatus.CANCELLED
    assert (await must_result(svc, task_id)).status is ResultStatus.CANCELLED
    assert await status_of(svc, child) is TaskStatus.CANCELLED
    assert (await must_result(svc, other)).result == 11
    assert len(await events_of(svc, task_id, EventType.CANCELLED)) == 1
    assert await events_of(svc, task_id, EventType.COMPLETED) == []
    # The list form says which were completed.
    again = await svc.queue.enqueue_async(ref("add"), [0, 0])
    held = await svc.queue.dequeue_async(worker_id="w")
    assert held is not None and held.id == again
    assert await svc.queue.cancel_async(again)
    assert await svc.queue.complete_many_async([(held, 0, 0.01)], worker_id="w") == []
    assert await status_of(svc, again) is TaskStatus.CANCELLED


async def test_a_running_thread_task_cancelled_from_another_process_ends_cancelled(
    open_services: ServicesFactory, db_url: str
) -> None:
    mine = await open_services(SLOW_HEARTBEAT)
    key = f"elsewhere-{mine.storage.dialect.name}-{id(mine)}"
    task_id = await mine.queue.enqueue_async(ref("block_until_released"), [key])
    child = await mine.queue.enqueue_async(ref("add"), [1, 1], depends_on=[task_id])
    worker = make_worker(mine)
    await worker.start_async()
    try:

        async def running() -> bool:
            return await status_of(mine, task_id) is TaskStatus.RUNNING

        await wait_until(running, "the task to start")
        await cancel_in_another_process(db_url, task_id)

        async def cancelled() -> bool:
            return await status_of(mine, task_id) is TaskStatus.CANCELLED

        # Thread tasks cannot be stopped: the task ends cancelled while it still runs.
        await wait_until(cancelled, "the worker to hear of the cancel", timeout=20)
        assert not worker_tasks.has_finished(key)
    finally:
        worker_tasks.release(key)
        await worker.stop_async(grace_period=5)
    assert (await must_result(mine, task_id)).status is ResultStatus.CANCELLED
    assert await status_of(mine, child) is TaskStatus.CANCELLED
    stats = worker.get_stats()
    assert (stats.completed, stats.cancelled, stats.lost) == (0, 1, 0), str(stats)


async def test_a_prefetched_task_cancelled_from_another_process_never_runs(
    open_services: ServicesFactory, db_url: str, tmp_path: Path
) -> None:
    mine = await open_services(SLOW_HEARTBEAT)
    key = f"prefetched-{mine.storage.dialect.name}-{id(mine)}"
    log = tmp_path / "ran"
    first = await mine.queue.enqueue_async(ref("block_until_released"), [key], priority=10)
    second = await mine.queue.enqueue_async(ref("record"), [str(log), "second"])
    dependent = await mine.queue.enqueue_async(
        ref("record"), [str(log), "dependent"], depends_on=[second]
    )
    worker = make_worker(mine, concurrency=1, prefetch=1)
    await worker.start_async()
    try:

        async def both_claimed() -> bool:
            statuses = {await status_of(mine, first), await status_of(mine, second)}
            return statuses == {TaskStatus.RUNNING}

        await wait_until(both_claimed, "the worker to claim both tasks")
        await cancel_in_another_process(db_url, second)

        async def cancelled() -> bool:
            return await status_of(mine, second) is TaskStatus.CANCELLED

        # While the first task still holds the only slot.
        await wait_until(cancelled, "the prefetched task to be cancelled", timeout=20)
        assert await status_of(mine, first) is TaskStatus.RUNNING
    finally:
        worker_tasks.release(key)
        await worker.stop_async(grace_period=5)
    assert await status_of(mine, first) is TaskStatus.COMPLETED
    assert await status_of(mine, dependent) is TaskStatus.CANCELLED
    assert worker_tasks.read_records(log) == []
