"""Code written as the seed shows it runs unchanged: every seed import path, the seed's
flow (backend -> queue -> worker -> result/event storage -> factory from a config
dict), blocking and async. The flows run on SQLite files (the seed's backend) and,
through ``SQLBackend(url)``, on every engine."""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from omniq.backends.factory import (
    create_sqlite_backend,
    create_sqlite_components_from_config,
    create_sqlite_event_storage,
    create_sqlite_result_storage,
    create_sqlite_task_queue,
    create_sqlite_worker,
    get_event_storage,
    get_result_storage,
    get_task_queue,
    get_worker,
)
from omniq.backends.sqlite import SQLBackend, SQLiteBackend
from omniq.errors import ConfigurationError
from omniq.models.config import (
    EventStorageConfig,
    OmniQConfig,
    ResultStorageConfig,
    TaskQueueConfig,
    WorkerConfig,
)
from omniq.models.event import EventType, TaskEvent
from omniq.models.result import ResultStatus, TaskResult
from omniq.models.schedule import Schedule, ScheduleStatus, ScheduleType
from omniq.models.task import Task, TaskStatus
from omniq.storage.sqlite_event import SQLiteEventStorage
from omniq.storage.sqlite_queue import SQLiteTaskQueue
from omniq.storage.sqlite_result import SQLiteResultStorage
from omniq.workers.sqlite_worker import SQLiteWorker
from tests import app_tasks, seed_tasks
from tests.waiting import DEADLINE, wait_until

ENOUGH = DEADLINE


def wait_for(condition: Callable[[], Any], what: str) -> Any:
    """Blocking wait on ``condition`` with a deadline (the seed's sync flow)."""
    deadline = time.monotonic() + ENOUGH
    while not (value := condition()):
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.02)
    return value


def test_every_seed_name_is_the_one_implementation() -> None:
    import omniq
    from omniq import models, services, sync, worker

    assert Task is models.Task is omniq.Task
    assert TaskStatus is models.TaskStatus
    assert (TaskResult, ResultStatus, TaskEvent, EventType) == (
        models.TaskResult,
        models.ResultStatus,
        models.TaskEvent,
        models.EventType,
    )
    assert (Schedule, ScheduleType, ScheduleStatus) == (
        models.Schedule,
        models.ScheduleType,
        models.ScheduleStatus,
    )
    assert OmniQConfig is omniq.OmniQConfig
    # Components are the sync twins over the services; the worker is OmniQ's Worker.
    assert issubclass(SQLiteTaskQueue, sync.SyncTaskQueue)
    assert issubclass(SQLiteResultStorage, sync.SyncResultStorage)
    assert issubclass(SQLiteEventStorage, sync.SyncEventStorage)
    assert issubclass(SQLiteWorker, sync.SyncWorker)
    assert services.TaskQueue and worker.Worker


def test_the_seed_flow_blocking(tmp_path: Path) -> None:
    backend = SQLiteBackend("seed", base_dir=str(tmp_path / "data"))
    assert backend.db_path == tmp_path / "data" / "seed.db"
    task_queue = SQLiteTaskQueue(backend, ["default"])
    result_storage = SQLiteResultStorage(backend)
    event_storage = SQLiteEventStorage(backend)
    task_queue.start()
    try:
        task = Task(func=seed_tasks.seed_add, func_args=[2, 3], name="add")
        task_id = task_queue.enqueue(task)
        assert task_id == task.id
        assert task_queue.size() == 1
        worker = get_worker(
            "async",
            task_queue=task_queue,
            result_storage=result_storage,
            event_storage=event_storage,
            poll_interval=0.05,
        )
        assert not worker.is_running
        worker.start()
        assert worker.is_running
        result = wait_for(lambda: result_storage.get(task_id), "the result")
        worker.stop()
        assert not worker.is_running
        assert result.status is ResultStatus.SUCCESS and result.result == 5
        assert result_storage.get_results(status="success")[0].task_id == task_id
        kinds = [e.event_type for e in event_storage.get_events(task_id=task_id)]
        assert EventType.COMPLETED in kinds and EventType.ENQUEUED in kinds
        assert task_queue.get_task(task_id).status is TaskStatus.COMPLETED  # type: ignore[union-attr]
        assert event_storage.get_stats()["total"]["events"] >= 3
        result_storage.stop()
        event_storage.stop()
        task_queue.stop()
    finally:
        backend.close()
    assert (tmp_path / "data" / "seed.db").exists()


@pytest.mark.anyio
async def test_the_seed_flow_async(tmp_path: Path) -> None:
    backend = create_sqlite_backend("seed_async", base_dir=tmp_path)
    task_queue = create_sqlite_task_queue(backend, ["high", "default"])
    result_storage = create_sqlite_result_storage(backend)
    event_storage = create_sqlite_event_storage(backend)
    await task_queue.start_async()
    await result_storage.start_async()
    await event_storage.start_async()
    try:
        task_id = await task_queue.enqueue_async(
            Task(func=seed_tasks.seed_add, func_args=[20, 22], queue_name="high")
        )
        worker = create_sqlite_worker(
            task_queue,
            result_storage,
            event_storage,
            worker_id="w-1",
            max_workers=2,
            poll_interval=0.05,
        )
        assert (worker.worker_id, worker.max_workers) == ("w-1", 2)
        await worker.start_async()

        async def stored() -> bool:
            return await result_storage.get_async(task_id) is not None

        await wait_until(stored, "the result")
        await worker.stop_async()
        result = await result_storage.get_async(task_id)
        assert result is not None and result.result == 42 and result.worker_id == "w-1"
        events = await event_storage.get_events_async(task_id=task_id)
        assert {e.worker_id for e in events if e.event_type is EventType.COMPLETED} == {"w-1"}
        assert await task_queue.size_async() == 0
        await task_queue.stop_async()
    finally:
        await backend.close_async()


def test_components_from_a_config_dict(tmp_path: Path) -> None:
    config = {
        "project_name": "seed_cfg",
        "task_queue": {"base_dir": str(tmp_path), "queues": ["emails", "default"]},
        "result_storage": {"base_dir": str(tmp_path)},
        "event_storage": {"base_dir": str(tmp_path)},
        "worker": {"max_workers": 3, "poll_interval": 0.05},
    }
    parts = create_sqlite_components_from_config(config)
    assert set(parts) == {"backend", "task_queue", "result_storage", "event_storage", "worker"}
    backend = parts["backend"]
    try:
        assert isinstance(backend, SQLiteBackend)
        assert backend.db_path == tmp_path / "seed_cfg.db"
        assert parts["task_queue"].queues == ["emails", "default"]
        assert parts["worker"].max_workers == 3
        task_id = parts["task_queue"].enqueue(
            Task(func=seed_tasks.seed_add, func_args=[1, 2], queue_name="emails")
        )
        stats = parts["worker"].run_until_complete()
        assert stats.completed == 1
        assert parts["result_storage"].get(task_id).result == 3
        # The factory's worker honours max_workers: its slots.
        assert parts["worker"]._async.concurrency == 3
    finally:
        backend.close()
    cfg = OmniQConfig.from_dict(config)
    assert cfg.task_queue == TaskQueueConfig(
        base_dir=str(tmp_path), queues=("emails", "default"), url=None
    )
    assert cfg.worker == WorkerConfig(max_workers=3, poll_interval=0.05, worker_type="async")
    assert isinstance(cfg.result_storage, ResultStorageConfig)
    assert isinstance(cfg.event_storage, EventStorageConfig)


def test_config_sections_are_checked() -> None:
    with pytest.raises(ConfigurationError, match=r"unknown configuration key worker\.threads"):
        OmniQConfig.from_dict({"worker": {"threads": 2}})
    with pytest.raises(ConfigurationError, match="task_queue: expected a mapping"):
        OmniQConfig.from_dict({"task_queue": ["a"]})
    with pytest.raises(ConfigurationError, match=r"result_storage\.base_dir: 'b' conflicts"):
        OmniQConfig.from_dict(
            {"task_queue": {"base_dir": "a"}, "result_storage": {"base_dir": "b"}}
        )
    with pytest.raises(ConfigurationError, match="executor: unknown 'gpu'"):
        OmniQConfig.from_dict({"worker": {"worker_type": "gpu"}})


def test_worker_types_and_the_getters(tmp_path: Path) -> None:
    backend = SQLiteBackend("seed_types", base_dir=tmp_path, allow_modules=["tests.app_tasks"])
    try:
        queue = get_task_queue(backend)
        assert queue.queues == ["default"]
        assert hasattr(queue, "dequeue_async") and not hasattr(queue, "no_such_async")
        results, events = get_result_storage(backend), get_event_storage(backend)
        ids = [queue.enqueue(Task(func=app_tasks.add, func_args=[n, n])) for n in range(3)]
        for kind in ("thread", "process"):
            worker = get_worker(kind, queue, results, events, max_workers=2)
            assert worker._async.executor.kind == kind
        assert get_worker("process", queue, results, events).run_until_complete().completed == 3
        assert [results.get(i).result for i in ids] == [0, 2, 4]  # type: ignore[union-attr]
        with pytest.raises(ConfigurationError, match="unknown worker type 'gpu'"):
            get_worker("gpu", queue, results, events)
        other = SQLiteBackend("other", base_dir=tmp_path)
        with pytest.raises(ConfigurationError, match="result_storage belongs to another backend"):
            get_worker("async", queue, SQLiteResultStorage(other), events)
    finally:
        backend.close()


def test_the_seed_components_on_any_engine(db_url: str) -> None:
    backend = SQLBackend(db_url)
    try:
        queue = backend.get_task_queue()
        results = backend.get_result_storage()
        failing = Task(func=seed_tasks.always_fails, max_retries=1, retry_delay=timedelta(0))
        ok = queue.enqueue(Task(func=seed_tasks.seed_add, func_args=[1, 1]))
        bad = queue.enqueue(failing)
        assert backend.get_worker("thread", poll_interval=0.05).run_until_complete().completed == 1
        assert [r.task_id for r in results.list_results(status="error")] == [bad]
        assert [r.task_id for r in results.get_results(func=seed_tasks.seed_add)] == [ok]
        attempts = queue.get_attempts(bad)
        assert [(a.attempt, a.will_retry, a.error.type) for a in attempts] == [
            (1, True, "RuntimeError"),
            (2, False, "RuntimeError"),
        ]
    finally:
        backend.close()


def _count_tasks(rows: Any) -> int:
    return int(rows.scalar_one())


def _seen_by(engine: sa.Engine) -> list[str]:
    """Statements ``engine``'s cursor events see from now on (the application's
    instrumentation): OmniQ's writes on a lent connection are among them."""
    seen: list[str] = []

    def record(_conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
        seen.append(" ".join(statement.split()[:3]).upper())

    sa.event.listen(engine, "before_cursor_execute", record)
    return seen


def test_a_connection_of_the_backend_blocking(db_url: str) -> None:
    """The seed's ``backend.get_connection()``: a transaction of your own on the
    backend's database, committed at the end of the block, rolled back if it raises."""
    backend = SQLBackend(db_url)
    try:
        queue = backend.get_task_queue()
        count = sa.text("SELECT count(*) FROM omniq_tasks")
        with backend.get_connection() as conn:
            seen = _seen_by(conn.engine)
            assert _count_tasks(conn.execute(count)) == 0
            kept = queue.enqueue(Task(func=seed_tasks.seed_add, func_args=[1, 2]), connection=conn)
            # A connection of your own: OmniQ's writes on it go through SQLAlchemy.
            assert "INSERT INTO OMNIQ_TASKS" in seen and "INSERT INTO OMNIQ_EVENTS" in seen

        def enqueue_then_change_my_mind() -> None:
            with backend.get_connection() as conn:
                queue.enqueue(Task(func=seed_tasks.seed_add, func_args=[3, 4]), connection=conn)
                assert _count_tasks(conn.execute(count)) == 2  # seen inside its transaction
                raise RuntimeError("changed my mind")

        with pytest.raises(RuntimeError, match="changed my mind"):
            enqueue_then_change_my_mind()
        assert [t.id for t in queue.list_tasks()] == [kept]
        with backend.get_connection() as conn:
            assert _count_tasks(conn.execute(count)) == 1
    finally:
        backend.close()


@pytest.mark.anyio
async def test_a_connection_of_the_backend_async(db_url: str) -> None:
    backend = SQLBackend(db_url)
    try:
        queue = backend.get_task_queue()
        count = sa.text("SELECT count(*) FROM omniq_tasks")
        async with backend.get_connection_async() as conn:
            seen = _seen_by(conn.sync_engine)
            assert _count_tasks(await conn.execute(count)) == 0
            kept = await queue.enqueue_async(
                Task(func=seed_tasks.seed_add, func_args=[1, 2]), connection=conn
            )
            assert "INSERT INTO OMNIQ_TASKS" in seen and "INSERT INTO OMNIQ_EVENTS" in seen

        async def enqueue_then_change_my_mind() -> None:
            async with backend.get_connection_async() as conn:
                await queue.enqueue_async(
                    Task(func=seed_tasks.seed_add, func_args=[3, 4]), connection=conn
                )
                raise RuntimeError("changed my mind")

        with pytest.raises(RuntimeError, match="changed my mind"):
            await enqueue_then_change_my_mind()
        assert [t.id for t in await queue.list_tasks_async()] == [kept]
        async with backend.get_connection_async() as conn:
            assert _count_tasks(await conn.execute(count)) == 1
    finally:
        await backend.close_async()
