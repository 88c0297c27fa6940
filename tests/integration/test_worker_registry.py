"""The worker registry: a running worker has a row (refreshed by its heartbeat, with the
tasks it holds), a clean stop removes it, a silent one shows as lost and is pruned."""

from __future__ import annotations

from datetime import timedelta

import pytest

from omniq import AsyncOmniQ, Settings
from omniq.models import EventType, WorkerInfo
from omniq.services.workers import WorkerRegistry
from tests import worker_tasks
from tests.waiting import wait_until

pytestmark = pytest.mark.anyio


async def test_worker_registers_heartbeats_and_unregisters(db_url: str) -> None:
    settings = Settings(
        heartbeat_interval=timedelta(seconds=0.05), lease_duration=timedelta(seconds=10)
    )
    async with AsyncOmniQ(url=db_url, settings=settings) as oq:
        key = f"registry-{db_url[-8:]}"
        task_id = await oq.enqueue_async(worker_tasks.block_until_released, [key])
        worker = await oq.start_worker_async(
            queues=["default"], concurrency=3, executor="thread", poll_interval=0.05
        )
        try:

            async def holds_the_task() -> bool:
                rows = await oq.list_workers_async()
                return len(rows) == 1 and rows[0].tasks_held == 1

            await wait_until(holds_the_task, "the worker's row holding one task")
            (row,) = await oq.list_workers_async()
            assert row.id == worker.worker_id
            assert row.queues == ("default",)
            assert (row.concurrency, row.executor, row.lost) == (3, "thread", False)
            assert row.pid > 0 and row.host and row.version
            first = row.last_heartbeat

            async def heartbeat_moved() -> bool:
                rows = await oq.list_workers_async()
                return bool(rows) and rows[0].last_heartbeat > first

            await wait_until(heartbeat_moved, "the heartbeat to refresh the row")
            assert (await oq.list_workers_async())[0].started_at == row.started_at
        finally:
            worker_tasks.release(key)
            await oq.stop_worker_async()
        assert await oq.list_workers_async() == []
        assert (await oq.get_result_async(task_id)) is not None
        kinds = [
            e.event_type
            for e in await oq.get_events_async(worker_id=worker.worker_id)
            if e.event_type in (EventType.WORKER_STARTED, EventType.WORKER_STOPPED)
        ]
        assert kinds == [EventType.WORKER_STOPPED, EventType.WORKER_STARTED]


async def test_silent_worker_is_lost_then_pruned(db_url: str) -> None:
    async with AsyncOmniQ(
        url=db_url, settings=Settings(lease_duration=timedelta(seconds=30))
    ) as oq:
        registry: WorkerRegistry = oq.services.workers
        now = oq.services.storage.now()

        def info(worker_id: str, age: timedelta) -> WorkerInfo:
            return WorkerInfo(
                id=worker_id,
                host="h",
                pid=1,
                concurrency=1,
                executor="async",
                version="0",
                started_at=now - age,
                last_heartbeat=now - age,
            )

        await registry.register_async(info("fresh", timedelta(seconds=1)))
        await registry.register_async(info("silent", timedelta(minutes=5)))
        await registry.register_async(info("gone", timedelta(days=2)))
        lost = {w.id: w.lost for w in await oq.list_workers_async()}
        assert lost == {"gone": True, "silent": True, "fresh": False}
        report = await oq.cleanup_async()
        assert report.workers_pruned == 1
        assert {w.id for w in await oq.list_workers_async()} == {"fresh", "silent"}
        assert await registry.unregister_async("fresh")
        assert not await registry.unregister_async("fresh")
