"""Eager mode runs exactly the task it enqueued (and what its completion releases), in memory."""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

import pytest

from omniq import AsyncOmniQ, OmniQ, TaskStatus

_ROOT = str(Path(__file__).resolve().parents[2])
if _ROOT not in sys.path:
    sys.path.append(_ROOT)

from tests import worker_tasks  # noqa: E402
from tests.waiting import wait_until  # noqa: E402

pytestmark = pytest.mark.anyio

RAN: list[str] = []


def record(name: str) -> str:
    RAN.append(name)
    return name


def explode() -> None:
    raise RuntimeError("boom")


async def test_eager_runs_only_the_task_it_enqueued(db_url: str) -> None:
    RAN.clear()
    async with AsyncOmniQ(url=db_url) as normal:  # another producer's ready task
        other = await normal.enqueue_async(record, ["someone else's"])
    async with AsyncOmniQ(url=db_url, mode="eager") as oq:
        mine = await oq.enqueue_async(record, ["mine"])
        assert RAN == ["mine"]
        assert (await oq.get_task_async(mine)).status is TaskStatus.COMPLETED  # type: ignore[union-attr]
        assert (await oq.get_task_async(other)).status is TaskStatus.PENDING  # type: ignore[union-attr]


async def test_eager_runs_dependents_released_by_the_completion(db_url: str) -> None:
    RAN.clear()
    async with AsyncOmniQ(url=db_url, mode="eager") as oq:
        later = await oq.enqueue_async(record, ["later"], run_in=3600)
        first = await oq.enqueue_async(record, ["first"])
        # Enqueued after its dependency completed: ready at once, runs inline.
        second = await oq.enqueue_async(record, ["second"], depends_on=[first])
        assert RAN == ["first", "second"]
        # A batch: the dependent waits for its dependency, then runs after it.
        parent = oq.build_task(record, ["parent"])
        child = oq.build_task(record, ["child"], depends_on=[parent.id])
        await oq.enqueue_many_async([child, parent])
        assert RAN == ["first", "second", "parent", "child"]
        assert (await oq.get_task_async(later)).status is TaskStatus.PENDING  # type: ignore[union-attr]
        assert (await oq.get_result_async(second)).result == "second"  # type: ignore[union-attr]


async def test_eager_retries_and_fails_like_a_worker(db_url: str) -> None:
    async with AsyncOmniQ(url=db_url, mode="eager") as oq:
        bad = await oq.enqueue_async(explode, max_retries=2, retry_delay=0)
        task = await oq.get_task_async(bad)
        assert task is not None and task.status is TaskStatus.FAILED and task.attempts == 3
        result = await oq.get_result_async(bad)
        assert result is not None and result.error_type == "RuntimeError"


def test_eager_on_an_in_memory_database_leaves_no_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    RAN.clear()
    for url in ("sqlite+aiosqlite:///:memory:", None):  # None: eager's default is in memory
        with OmniQ("eager_memory", url=url, mode="eager") as oq:
            handle = oq.task(record)
            task_id = handle.enqueue("in memory")
            assert oq.get_result(task_id).result == "in memory"  # type: ignore[union-attr]
            assert len(oq.list_tasks()) == 1  # a private database per app
        with OmniQ("eager_memory", url=url, mode="eager") as oq:
            assert oq.list_tasks() == []  # gone with the app
    assert os.listdir(tmp_path) == []


async def test_in_memory_app_runs_a_background_worker() -> None:
    """One shared connection: the worker's transactions and the caller's take turns."""
    async with AsyncOmniQ(url="sqlite+aiosqlite:///:memory:") as oq:
        ids = [await oq.enqueue_async(record, [f"t{i}"]) for i in range(20)]
        await oq.start_worker_async(concurrency=4, poll_interval=0.05)
        results = [await oq.get_result_async(i, wait=True, timeout=30) for i in ids]
        await oq.stop_worker_async()
    assert [r.result for r in results if r is not None] == [f"t{i}" for i in range(20)]


async def test_a_cancelled_eager_enqueue_gives_its_running_task_back(db_url: str) -> None:
    # Cancelled while its task ran (a timed-out request in a test): before, the
    # task stayed running under a lease nobody held, and no worker runs eagerly.
    key = f"eager-cancel-{os.getpid()}-{db_url[-12:]}"
    async with AsyncOmniQ(url=db_url, mode="eager") as oq:
        call = asyncio.ensure_future(oq.enqueue_async(worker_tasks.gate_then_fail, [key]))

        async def started() -> bool:
            return worker_tasks.has_started(key)

        await wait_until(started, "the task to start")
        call.cancel()
        with pytest.raises(asyncio.CancelledError):
            await call
        (task,) = await oq.list_tasks_async()
        assert task.status is TaskStatus.PENDING and task.attempts == 0
        assert task.lease_token is None
        worker_tasks.release(key)
