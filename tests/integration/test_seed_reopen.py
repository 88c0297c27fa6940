"""Seed components outlive their backend's close: made before ``backend.close()``, they
work once the backend is opened again (``initialize``, or their own next call), on
every engine. Closed services stay closed: a worker on them raises
:class:`DatabaseClosed` instead of returning having run nothing."""

from __future__ import annotations

import pytest

from omniq.backends.factory import get_worker
from omniq.backends.sqlite import SQLBackend
from omniq.errors import DatabaseClosed
from omniq.models.event import EventType
from omniq.models.result import ResultStatus
from omniq.models.task import Task
from omniq.services import Services
from omniq.worker import Worker
from tests import seed_tasks
from tests.waiting import wait_until_sync


def add(a: int, b: int) -> Task:
    return Task(func=seed_tasks.seed_add, func_args=[a, b])


def test_components_made_before_close_work_after_initialize(db_url: str) -> None:
    backend = SQLBackend(db_url)
    try:
        queue = backend.get_task_queue()
        results, events = backend.get_result_storage(), backend.get_event_storage()
        worker = get_worker("thread", queue, results, events, poll_interval=0.05)
        first = queue.enqueue(add(1, 2))
        assert worker.run_until_complete().completed == 1
        backend.close()
        backend.initialize()
        second = queue.enqueue(add(3, 4))
        third = queue.enqueue(add(5, 6))
        # Counters run on across the reopen (the same worker): 1 before, 2 now.
        assert worker.run_until_complete().completed == 3
        assert [results.get(t).result for t in (first, second, third)] == [3, 7, 11]  # type: ignore[union-attr]
        kinds = {e.event_type for e in events.get_events(task_id=third)}
        assert {EventType.ENQUEUED, EventType.COMPLETED} <= kinds
        # A worker made after the reopen from the same components works as well.
        fourth = queue.enqueue(add(7, 8))
        again = get_worker("async", queue, results, events, poll_interval=0.05)
        assert again.run_until_complete().completed == 1
        assert results.get(fourth).status is ResultStatus.SUCCESS  # type: ignore[union-attr]
    finally:
        backend.close()


@pytest.mark.anyio
async def test_a_component_reopens_its_closed_backend_on_first_use(db_url: str) -> None:
    backend = SQLBackend(db_url)
    try:
        queue = backend.get_task_queue()
        results, events = backend.get_result_storage(), backend.get_event_storage()
        worker = get_worker("async", queue, results, events, poll_interval=0.05)
        await queue.start_async()
        await backend.close_async()
        assert backend.open_services is None
        task_id = await queue.enqueue_async(add(20, 22))  # opens the backend again
        assert backend.open_services is not None
        assert (await worker.run_until_complete_async()).completed == 1
        result = await results.get_async(task_id)
        assert result is not None and result.result == 42
        assert await events.get_events_async(task_id=task_id)
    finally:
        await backend.close_async()


@pytest.mark.anyio
async def test_a_worker_on_closed_services_raises_database_closed(db_url: str) -> None:
    services = await Services.open_async(db_url)
    task_id = await services.queue.enqueue_async(add(1, 1))
    worker = Worker(services.queue, services.results, services.events, poll_interval=0.05)
    await services.close_async()
    # The same on both engines: nothing is read, written or run on closed services.
    with pytest.raises(DatabaseClosed, match="the database was closed"):
        await worker.run_until_complete_async()
    with pytest.raises(DatabaseClosed):
        await services.queue.enqueue_async(add(2, 2))
    with pytest.raises(DatabaseClosed):
        await services.queue.get_task_async(task_id)
    reopened = await Services.open_async(db_url)
    try:
        task = await reopened.queue.get_task_async(task_id)
        assert task is not None and task.status.value == "pending"
    finally:
        await reopened.close_async()


def test_a_running_worker_whose_backend_closes_stops_with_database_closed(db_url: str) -> None:
    backend = SQLBackend(db_url)
    try:
        queue = backend.get_task_queue()
        results, events = backend.get_result_storage(), backend.get_event_storage()
        worker = get_worker("async", queue, results, events, poll_interval=0.05)
        worker.start()
        first = queue.enqueue(add(1, 2))
        wait_until_sync(lambda: results.get(first) is not None, "the first result")
        backend.close()
        wait_until_sync(lambda: not worker.is_running, "the worker to stop")
        with pytest.raises(DatabaseClosed):
            worker.stop()
        # The worker works again on the reopened backend.
        second = queue.enqueue(add(3, 4))
        assert worker.run_until_complete().completed == 2
        assert results.get(second).result == 7  # type: ignore[union-attr]
    finally:
        backend.close()
