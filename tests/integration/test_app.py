"""The facade: AsyncOmniQ, its sync twin OmniQ, eager mode, @task, the seed API."""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.ext.asyncio import create_async_engine

from omniq import AsyncOmniQ, OmniQ, Settings, SyncInAsyncContext, TaskStatus, _portal
from omniq.backends import (
    SQLBackend,
    SQLiteBackend,
    create_sqlite_components_from_config,
    get_worker,
)
from omniq.config import OmniQConfig
from omniq.errors import ConfigurationError, DatabaseClosed, ValidationError
from tests import app_tasks

pytestmark = pytest.mark.anyio


def _triple(x: int) -> int:
    return 3 * x


def _square(x: int) -> int:
    return x * x


async def test_async_facade_end_to_end(db_url: str) -> None:
    async with AsyncOmniQ(url=db_url, settings=Settings(default_max_retries=0)) as oq:
        a = await oq.enqueue_async(app_tasks.add, [1, 2], priority=3, tags=["t"])
        b = await oq.enqueue_async(app_tasks.async_double, {"x": 21}, depends_on=[a])
        bad = await oq.enqueue_async(app_tasks.explode, max_retries=1, retry_delay=0)
        later = await oq.enqueue_async(app_tasks.add, [0, 0], run_in=timedelta(hours=1))
        assert (await oq.get_task_async(b)).status is TaskStatus.WAITING  # type: ignore[union-attr]
        await oq.start_worker_async(concurrency=4, poll_interval=0.05)
        result = await oq.get_result_async(b, wait=True, timeout=30)
        assert result is not None and result.result == 42
        failed = await oq.get_result_async(bad, wait=True, timeout=30)
        assert failed is not None and failed.error_type == "RuntimeError"
        await oq.stop_worker_async()
        assert (await oq.get_task_async(later)).status is TaskStatus.PENDING  # type: ignore[union-attr]
        assert await oq.cancel_async(later)
        requeued = await oq.requeue_async(bad)
        assert requeued.status is TaskStatus.PENDING
        listed = await oq.list_tasks_async(status="completed")
        assert {t.id for t in listed} == {a, b}
        events = await oq.get_events_async(task_id=bad, event_type=["retry", "failed"])
        assert [e.event_type.value for e in events] == ["failed", "retry"]
        stats = await oq.stats_async()
        assert stats["task_totals"] == {"completed": 2, "pending": 1, "cancelled": 1}
        report = await oq.cleanup_async()
        assert report.recovered == 0


async def test_schedule_and_latest_result(db_url: str) -> None:
    async with AsyncOmniQ(url=db_url) as oq:
        sid = await oq.schedule_async(
            app_tasks.add, [2, 2], interval=0.2, max_runs=2, start_at=datetime.now(UTC)
        )
        await oq.start_worker_async(poll_interval=0.05, scheduler_interval=0.05)
        deadline = asyncio.get_running_loop().time() + 30
        while True:
            schedule = await oq.get_schedule_async(sid)
            latest = await oq.get_result_async(schedule_id=sid)
            assert schedule is not None
            if schedule.status.value == "completed" and latest is not None:
                tasks = await oq.list_tasks_async(status="completed")
                if len(tasks) == 2:
                    break
            assert asyncio.get_running_loop().time() < deadline, "schedule never completed"
            await asyncio.sleep(0.05)
        await oq.stop_worker_async()
        assert latest.result == 4
        with pytest.raises(ValidationError, match="exactly one of cron=, interval= or at="):
            await oq.schedule_async(app_tasks.add, [1, 1], cron="* * * * *", interval=5)
        with pytest.raises(ValidationError, match="exactly one of task_id or schedule_id"):
            await oq.get_result_async()


async def test_task_decorator_and_eager_mode(db_url: str) -> None:
    oq = AsyncOmniQ(url=db_url, mode="eager")
    triple = oq.task(queue_name="math", max_retries=2)(_triple)

    async with oq:
        assert triple(2) == 6  # still a plain function
        first = await triple.enqueue_async(5)
        task = await oq.get_task_async(first)
        assert task is not None and task.status is TaskStatus.COMPLETED
        assert task.queue_name == "math" and task.max_retries == 2
        result = await oq.get_result_async(first)
        assert result is not None and result.result == 15
        chain_a = await oq.enqueue_async(app_tasks.add, [1, 1])
        chain_b = await oq.enqueue_async(app_tasks.add, [2, 2], depends_on=[chain_a])
        assert (await oq.get_result_async(chain_b)).result == 4  # type: ignore[union-attr]
        events = await oq.get_events_async(task_id=first)
        assert [e.event_type.value for e in reversed(events)][:2] == ["enqueued", "dequeued"]


def test_sync_facade_from_threads(db_url: str) -> None:
    with OmniQ(url=db_url) as oq:
        ids: list[str] = []
        lock = threading.Lock()

        def produce(n: int) -> None:
            for i in range(5):
                task_id = oq.enqueue(app_tasks.add, [n, i])
                with lock:
                    ids.append(task_id)

        threads = [threading.Thread(target=produce, args=(n,)) for n in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert len(set(ids)) == 40
        stats = oq.run_worker(concurrency=8)
        assert stats.completed == 40
        assert oq.get_result(ids[0]).result is not None  # type: ignore[union-attr]

        square = oq.task(_square)
        task_id = square.enqueue(7)
        oq.run_worker()
        assert oq.get_result(task_id, wait=True, timeout=10).result == 49  # type: ignore[union-attr]


async def test_sync_facade_inside_event_loop_raises(tmp_path: Path) -> None:
    oq = OmniQ("inside", base_dir=tmp_path)
    with pytest.raises(SyncInAsyncContext, match="enqueue_async"):
        oq.enqueue(app_tasks.add, [1, 2])


def test_facade_parity() -> None:
    async_methods = {
        name: member
        for name, member in inspect.getmembers(AsyncOmniQ, inspect.iscoroutinefunction)
        if name.endswith("_async") and not name.startswith("_")
    }
    assert len(async_methods) >= 20
    for name, method in async_methods.items():
        twin = getattr(OmniQ, name.removesuffix("_async"), None)
        assert twin is not None, f"OmniQ lacks {name.removesuffix('_async')}"
        assert inspect.signature(twin) == inspect.signature(method), name


def test_construction_from_config_env_and_backend(
    db_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = OmniQConfig.from_dict({"url": db_url, "queues": ["q1"], "max_retries": 2})
    with OmniQ.from_config(config) as oq:
        task_id = oq.enqueue(app_tasks.add, [1, 1], queue_name="q1")
        assert oq.get_task(task_id).max_retries == 2  # type: ignore[union-attr]
    monkeypatch.setenv("OMNIQ_DATABASE_URL", db_url)
    monkeypatch.setenv("OMNIQ_MAX_RETRIES", "4")
    with OmniQ.from_env() as oq:
        assert oq.app.settings.default_max_retries == 4
        assert len(oq.list_tasks()) == 1
    path = tmp_path / "omniq.json"
    path.write_text(f'{{"url": "{db_url}", "result_ttl": "1h"}}', encoding="utf-8")
    with OmniQ.from_config_file(path) as oq:
        assert oq.app.settings.default_result_ttl == timedelta(hours=1)
    backend = SQLBackend(db_url)
    with backend, OmniQ.from_backend(backend) as oq:
        assert len(oq.list_tasks()) == 1


def test_seed_backend_components(tmp_path: Path) -> None:
    backend = SQLiteBackend("seed", base_dir=tmp_path, allow_modules=["tests.app_tasks"])
    backend.initialize()
    try:
        assert (tmp_path / "seed.db").exists()
        queue = backend.get_task_queue(["default"])
        task_id = queue.enqueue("tests.app_tasks:add", [2, 3])
        assert queue.size() == 1
        worker = backend.get_worker("thread")
        assert worker.run_until_complete().completed == 1
        assert backend.get_result_storage().get(task_id).result == 5  # type: ignore[union-attr]
        events = backend.get_event_storage().get_events(task_id=task_id)
        assert events[0].event_type.value == "completed"

        async def use_async_twins() -> int:
            other = await queue.enqueue_async("tests.app_tasks:add", [4, 4])
            await worker.run_until_complete_async()
            result = await backend.get_result_storage().get_async(other)
            assert result is not None
            return int(result.result)

        assert asyncio.run(use_async_twins()) == 8
        with pytest.raises(ConfigurationError, match="unknown worker type 'gpu'"):
            backend.get_worker("gpu")
    finally:
        backend.close()
    parts = create_sqlite_components_from_config(
        {"project_name": "seed", "base_dir": str(tmp_path), "queues": ["default"]}
    )
    try:
        assert parts["task_queue"].size() == 0
        assert parts["result_storage"].get_stats()["total"] == 2
        worker = get_worker(
            "process", parts["task_queue"], parts["result_storage"], parts["event_storage"]
        )
        assert worker.worker_id
    finally:
        parts["backend"].close()


async def test_a_cancelled_stop_worker_can_be_awaited_again(db_url: str) -> None:
    async with AsyncOmniQ(url=db_url) as oq:
        for i in range(10):
            await oq.enqueue_async(app_tasks.add, [i, i])
        await oq.start_worker_async(concurrency=2, poll_interval=0.05)
        stopping = asyncio.create_task(oq.stop_worker_async(grace_period=10))
        await asyncio.sleep(0)  # let the stop begin
        stopping.cancel()
        with pytest.raises(asyncio.CancelledError):
            await stopping
        # The shutdown went on; stopping again waits for it to finish.
        await asyncio.wait_for(oq.stop_worker_async(), 30)
        assert await oq.list_workers_async() == []
        assert await oq.list_tasks_async(status="running") == []


@pytest.mark.parametrize("how", ["stop", "error in the block"])
async def test_a_stop_right_after_start_worker_is_not_lost(db_url: str, how: str) -> None:
    """Stopping (or leaving the app with an error) before the worker's task has
    run a single step: the stop holds and shutdown ends (it once hung for good)."""

    async def use() -> None:
        async with AsyncOmniQ(url=db_url) as oq:
            await oq.start_worker_async(poll_interval=0.05)
            if how == "stop":
                await oq.stop_worker_async()
            else:
                raise RuntimeError("the application failed")

    with pytest.raises(RuntimeError) if how != "stop" else contextlib.nullcontext():
        await asyncio.wait_for(use(), 30)
    async with AsyncOmniQ(url=db_url) as again:
        assert await again.list_workers_async() == []


async def test_a_blocking_call_that_opens_the_app_first_does_not_bind_it_to_another_loop(
    db_url: str,
) -> None:
    # A sync endpoint of an async web app runs first, in a thread, and opens the
    # app (on the sync portal's loop); then the app's own loop uses it.
    oq = AsyncOmniQ(url=db_url)
    add = oq.task(app_tasks.add)
    loop = asyncio.get_running_loop()
    try:
        first = await loop.run_in_executor(None, add.enqueue, 1, 2)
        second = await asyncio.wait_for(add.enqueue_async(3, 4), 30)
        third = await loop.run_in_executor(None, add.enqueue, 5, 6)
        assert oq.loop is loop  # blocking calls are now handed to this loop
        for task_id in (first, second, third):
            task = await asyncio.wait_for(oq.get_task_async(task_id), 30)
            assert task is not None and task.status is TaskStatus.PENDING
    finally:
        await oq.close_async()


async def test_a_blocking_call_racing_the_apps_own_open_is_made_on_the_apps_loop(
    db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A thread's blocking ``.enqueue()`` is handed to the sync portal (the app is not
    open yet), but runs there only after the app's own loop opened the app: it is
    made on the app's loop, with the app's connections (it used to take them onto
    the portal's loop and deadlock)."""
    loop = asyncio.get_running_loop()
    real_portal = _portal.portal
    dispatched, holding, go = threading.Event(), threading.Event(), threading.Event()

    def portal_noting_calls() -> Any:
        if threading.current_thread() is not threading.main_thread():
            dispatched.set()
        return real_portal()

    async def hold_the_portal() -> None:
        holding.set()
        go.wait(30)  # blocks the portal's loop on purpose: the thread's call waits

    oq = AsyncOmniQ(url=db_url)
    add = oq.task(app_tasks.add)
    held = loop.run_in_executor(None, real_portal().call, hold_the_portal)
    try:
        await loop.run_in_executor(None, holding.wait, 30)
        monkeypatch.setattr(_portal, "portal", portal_noting_calls)
        from_thread = loop.run_in_executor(None, add.enqueue, 1, 2)
        await loop.run_in_executor(None, dispatched.wait, 30)
        await asyncio.wait_for(oq.open_async(), 30)
        go.set()
        first = await asyncio.wait_for(from_thread, 30)
        second = await asyncio.wait_for(loop.run_in_executor(None, add.enqueue, 3, 4), 30)
        assert oq.loop is loop
        for task_id in (first, second):
            task = await asyncio.wait_for(oq.get_task_async(task_id), 30)
            assert task is not None and task.status is TaskStatus.PENDING
    finally:
        go.set()
        await asyncio.wait_for(held, 30)
        await asyncio.wait_for(oq.close_async(), 30)


async def test_an_async_call_from_another_threads_loop_is_made_on_the_apps_loop(
    db_url: str,
) -> None:
    """An app open on this loop, awaited from another thread's running loop: each
    call is made on this loop, whose connections it needs (on PostgreSQL they
    belonged to this loop and were used from the other: raw errors, then a
    crashed process). A write in the other loop's own transaction stays there."""
    oq = AsyncOmniQ(url=db_url)
    add = oq.task(app_tasks.add)
    loop = asyncio.get_running_loop()
    await oq.open_async()

    async def elsewhere() -> list[str]:
        assert asyncio.get_running_loop() is not loop
        ids = [await oq.enqueue_async(app_tasks.add, [1, 2]), await add.enqueue_async(3, 4)]
        ids += await oq.enqueue_many_async([oq.build_task(app_tasks.add, [5, 6])])
        listed = await asyncio.gather(*(oq.list_tasks_async() for _ in range(5)))
        assert all(sorted(x.id for x in tasks) == sorted(ids) for tasks in listed)
        engine = create_async_engine(db_url)  # the application's own, on this loop
        try:
            async with engine.begin() as conn:
                ids.append(await oq.enqueue_async(add, [7, 8], connection=conn))
        finally:
            await engine.dispose()
        return ids

    try:
        ids = await asyncio.wait_for(loop.run_in_executor(None, asyncio.run, elsewhere()), 60)
        assert oq.loop is loop
        for task_id in ids:
            task = await oq.get_task_async(task_id)
            assert task is not None and task.status is TaskStatus.PENDING
        assert len(ids) == 4
    finally:
        await oq.close_async()


@pytest.mark.parametrize("ending", ["stopped and closed", "asyncio.run"])
def test_a_blocking_call_handed_to_a_loop_that_ends_is_made_or_refused_never_hung(
    db_url: str, monkeypatch: pytest.MonkeyPatch, ending: str
) -> None:
    """A thread's ``.enqueue()`` is handed to the app's loop, which is busy and then
    ends. Before, the thread got a bare ``CancelledError``, or waited forever when
    the loop closed with the call unresolved. Now a call that never began is made
    on the sync portal; one that began when ``asyncio.run`` cancelled what was
    left is refused with ``DatabaseClosed`` (it may have done part of its work)."""
    real = asyncio.run_coroutine_threadsafe
    dispatched = threading.Event()

    def noting(coro: Any, loop: asyncio.AbstractEventLoop) -> Any:
        future = real(coro, loop)
        if threading.current_thread() is not threading.main_thread():
            dispatched.set()
        return future

    monkeypatch.setattr(asyncio, "run_coroutine_threadsafe", noting)
    oq = OmniQ(url=db_url)
    outcome: dict[str, Any] = {}

    def from_thread() -> None:
        try:
            outcome["id"] = oq.enqueue(app_tasks.add, [1, 2])
        except BaseException as exc:
            outcome["error"] = exc

    async def app_loop() -> None:
        await oq.app.enqueue_async(app_tasks.add, [0, 0])  # the app opens on this loop
        thread.start()
        # Busy (blocking on purpose) until the thread's call was handed here.
        assert dispatched.wait(30)

    thread = threading.Thread(target=from_thread)
    try:
        if ending == "asyncio.run":
            asyncio.run(app_loop())
        else:  # the loop stops right after: the handed call never begins
            loop = asyncio.new_event_loop()
            loop.run_until_complete(app_loop())
            loop.close()
        thread.join(30)
        assert not thread.is_alive(), "the thread's call hung"
        if ending == "asyncio.run" and "error" in outcome:
            assert isinstance(outcome["error"], DatabaseClosed), outcome
            return
        assert "error" not in outcome, outcome
        task = oq.get_task(outcome["id"])
        assert task is not None and task.status is TaskStatus.PENDING
    finally:
        oq.close()


def test_sync_worker_run_blocks_until_stopped_from_another_thread(db_url: str) -> None:
    """SyncWorker.run is run_async's blocking twin: it works until stop()."""
    from tests.waiting import wait_until_sync

    backend = SQLBackend(db_url, allow_modules=["tests.app_tasks"])
    try:
        queue = backend.get_task_queue(["default"])
        worker = backend.get_worker("thread", poll_interval=0.05)
        runner = threading.Thread(target=worker.run, name="sync-run")
        runner.start()
        task_id = queue.enqueue("tests.app_tasks:add", [2, 3])
        results = backend.get_result_storage()
        wait_until_sync(lambda: results.get(task_id) is not None, "the task to run")
        assert runner.is_alive()  # still working, not a burst
        worker.stop()
        runner.join(timeout=30)
        assert not runner.is_alive()
        assert worker.get_stats().completed == 1
        caught: list[BaseException] = []

        def in_thread() -> None:
            try:
                worker.run(install_signal_handlers=True)
            except BaseException as exc:
                caught.append(exc)

        other = threading.Thread(target=in_thread)
        other.start()
        other.join(timeout=30)
        assert len(caught) == 1 and isinstance(caught[0], ConfigurationError)
        assert "main thread" in str(caught[0])
    finally:
        backend.close()


def test_sync_worker_run_stops_gracefully_on_sigterm(db_url: str, tmp_path: Path) -> None:
    """run(install_signal_handlers=True) in a script's main thread: SIGTERM stops the
    worker gracefully (deregistered) and run returns."""
    import os
    import signal
    import subprocess
    import sys

    from tests.waiting import wait_until_sync

    script = tmp_path / "run_worker.py"
    script.write_text(
        "import sys\n"
        "from omniq.backends import SQLBackend\n"
        "backend = SQLBackend(sys.argv[1])\n"
        "worker = backend.get_worker('thread', poll_interval=0.05)\n"
        "worker.run(install_signal_handlers=True)\n"
        "print('returned', flush=True)\n"
        "backend.close()\n",
        encoding="utf-8",
    )
    child = subprocess.Popen(
        [sys.executable, str(script), db_url],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])},
    )
    try:
        with OmniQ(url=db_url) as oq:
            wait_until_sync(lambda: len(oq.list_workers()) == 1, "the worker to register")
            child.send_signal(signal.SIGTERM)
            out, err = child.communicate(timeout=60)
            assert child.returncode == 0, err.decode()
            assert out.decode().strip() == "returned"
            assert oq.list_workers() == []
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()


def test_an_app_outlives_the_event_loops_that_used_it(db_url: str) -> None:
    """An app used from an asyncio.run() that has since returned keeps working, from
    the next loop and from its blocking twin (PostgreSQL's connections belong to the
    loop that opened them: new ones are opened, the old ones let go)."""
    with OmniQ(url=db_url) as oq:
        first = oq.enqueue(app_tasks.add, [1, 2])
        second = asyncio.run(oq.app.enqueue_async(app_tasks.add, [3, 4]))
        assert oq.get_task(first).status is TaskStatus.PENDING  # type: ignore[union-attr]
        third = oq.enqueue(app_tasks.add, [5, 6])
        assert {t.id for t in oq.list_tasks()} == {first, second, third}

    app = AsyncOmniQ(url=db_url)

    async def enqueue() -> str:
        return await app.enqueue_async(app_tasks.add, [7, 8])

    async def read_then_close(task_id: str) -> TaskStatus:
        try:
            task = await app.get_task_async(task_id)
            assert task is not None
            return task.status
        finally:
            await app.close_async()

    task_id = asyncio.run(enqueue())  # not closed: its loop ends with the app open
    assert asyncio.run(read_then_close(task_id)) is TaskStatus.PENDING


@pytest.mark.parametrize(
    ("call", "field"),
    [
        ({"func": 5}, "func"),
        ({"func": None}, "func"),
        ({"func": {"x": 1}}, "func"),
        ({"func": lambda: 1}, "func"),
        ({"func": app_tasks.add, "callback": 7}, "callback"),
    ],
    ids=["int", "none", "dict", "lambda", "callback"],
)
async def test_what_is_not_a_function_is_refused_naming_the_field(
    db_url: str, call: dict[str, Any], field: str
) -> None:
    async with AsyncOmniQ(url=db_url) as oq:
        call = dict(call)  # the parameters are shared by both engines' runs
        func = call.pop("func")
        with pytest.raises(ValidationError) as refused:
            await oq.enqueue_async(func, [1, 2], **call)
        assert refused.value.field == field
        with pytest.raises(ValidationError) as refused:
            await oq.enqueue_many_async([oq.build_task(func, [1, 2], **call)])
        assert refused.value.field == field
        assert await oq.list_tasks_async() == []


async def test_an_unknown_result_kind_is_refused_for_a_task_too(db_url: str) -> None:
    async with AsyncOmniQ(url=db_url) as oq:
        task_id = await oq.enqueue_async(app_tasks.add, [1, 2])
        with pytest.raises(ValidationError) as refused:
            await oq.get_result_async(task_id, kind="first")  # type: ignore[arg-type]
        assert refused.value.field == "kind"


@pytest.mark.parametrize("name", ["", 5, "a/b", "a\x00b"])
def test_a_project_name_that_names_no_file_is_refused(tmp_path: Path, name: Any) -> None:
    with pytest.raises(ConfigurationError, match="project_name"):
        OmniQ(name, base_dir=tmp_path)
    with pytest.raises(ConfigurationError, match="project_name"):
        SQLiteBackend(name, base_dir=tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_the_apps_enqueue_many_takes_on_duplicate_as_enqueue_does(db_url: str) -> None:
    """``OmniQ.enqueue_many`` had no ``on_duplicate``: a batch meeting a live unique key
    could only return the holder's id. With "raise" the whole batch is refused."""
    from omniq.errors import DuplicateTask

    with OmniQ(url=db_url) as oq:
        held = oq.enqueue(app_tasks.add, [1, 1], unique_key="report-1")
        again = oq.build_task(app_tasks.add, [2, 2], unique_key="report-1")
        other = oq.build_task(app_tasks.add, [3, 3])
        with pytest.raises(DuplicateTask):
            oq.enqueue_many([other, again], on_duplicate="raise")
        assert oq.get_task(other.id) is None  # all or nothing
        assert oq.enqueue_many([other, again]) == [other.id, held]
        with pytest.raises(ValidationError):
            oq.enqueue_many([again], on_duplicate="ignore")  # type: ignore[arg-type]
