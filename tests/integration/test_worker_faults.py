"""The worker under injected database errors: outcomes are not dropped, loops survive.

Errors are injected at the service boundary (what a refused connection, a
restart or a full disk look like to the worker); tests/faults/ makes the same
faults for real.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from omniq.errors import DatabaseUnavailable, StorageFull
from omniq.models import EventType, Settings, TaskStatus
from omniq.services import Services
from tests import worker_tasks
from tests.integration.test_worker import make_worker, ref
from tests.waiting import wait_until

pytestmark = pytest.mark.anyio

ServicesFactory = Callable[..., Awaitable[Services]]


def fail_first(
    monkeypatch: pytest.MonkeyPatch,
    target: Any,
    name: str,
    times: int,
    error: BaseException,
    only: Callable[[dict[str, Any]], bool] | None = None,
) -> list[int]:
    """Make ``target.name`` raise ``error`` on its first ``times`` calls; count the calls.

    With ``only``, just the calls whose keyword arguments it accepts count and fail.
    """
    real = getattr(target, name)
    calls = [0]

    async def flaky(*args: Any, **kwargs: Any) -> Any:
        if only is not None and not only(kwargs):
            return await real(*args, **kwargs)
        calls[0] += 1
        if calls[0] <= times:
            raise error
        return await real(*args, **kwargs)

    monkeypatch.setattr(target, name, flaky)
    return calls


def land_then_fail(
    monkeypatch: pytest.MonkeyPatch, target: Any, name: str, times: int
) -> list[int]:
    """Make ``target.name`` write, then raise as if the commit's reply was lost, on its
    first ``times`` calls (an ambiguous commit); count those calls."""
    real = getattr(target, name)
    landed = [0]

    async def lands_then_raises(*args: Any, **kwargs: Any) -> Any:
        written = await real(*args, **kwargs)
        if landed[0] < times:
            landed[0] += 1
            raise DatabaseUnavailable("connection lost before the commit's reply")
        return written

    monkeypatch.setattr(target, name, lands_then_raises)
    return landed


@pytest.mark.parametrize(
    "error",
    [DatabaseUnavailable("connection refused"), StorageFull("disk full"), OSError("refused")],
    ids=["unavailable", "full", "oserror"],
)
async def test_a_completion_whose_write_fails_is_retried_not_dropped(
    svc: Services, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, error: BaseException
) -> None:
    log = tmp_path / "runs.log"
    ids = [
        await svc.queue.enqueue_async(ref("record_sync"), [str(log), f"t{i}"], max_retries=2)
        for i in range(20)
    ]
    calls = fail_first(monkeypatch, svc.queue, "settle_completions_async", 3, error)
    worker = make_worker(svc, concurrency=4)
    await asyncio.wait_for(worker.run_until_complete_async(), timeout=60)
    assert calls[0] > 3
    for task_id in ids:
        task = await svc.queue.get_task_async(task_id)
        assert task is not None and task.status is TaskStatus.COMPLETED
        assert task.retry_count == 0
        # The events the failed writes carried were written once, with a later one.
        executing = await svc.events.get_events_async(task_id=task_id, event_type="executing")
        assert len(executing) == 1
    runs = [line[0] for line in worker_tasks.read_records(log)]
    assert sorted(runs) == sorted(f"t{i}" for i in range(20))  # each exactly once
    stats = worker.get_stats()
    assert (stats.completed, stats.failed, stats.retried, stats.lost) == (20, 0, 0, 0)


async def test_a_completion_whose_commit_landed_but_raised_counts_as_completed(
    svc: Services,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """An ambiguous commit: the completion is written, then the caller sees an error
    (a connection lost before the reply). The retried write finds the tasks completed
    by this very attempt: they count as completed, not lost, and nothing is written
    twice."""
    log = tmp_path / "runs.log"
    ids = [
        await svc.queue.enqueue_async(ref("record_sync"), [str(log), f"t{i}"]) for i in range(20)
    ]
    landed = land_then_fail(monkeypatch, svc.queue, "settle_completions_async", 2)
    worker = make_worker(svc, concurrency=4)
    with caplog.at_level("WARNING", logger="omniq.queue"):
        await asyncio.wait_for(worker.run_until_complete_async(), timeout=60)
    assert landed[0] == 2
    assert "completion discarded" not in caplog.text
    stats = worker.get_stats()
    assert (stats.completed, stats.failed, stats.retried, stats.lost) == (20, 0, 0, 0)
    runs = [line[0] for line in worker_tasks.read_records(log)]
    assert sorted(runs) == sorted(f"t{i}" for i in range(20))  # each exactly once
    for task_id in ids:
        task = await svc.queue.get_task_async(task_id)
        assert task is not None and task.status is TaskStatus.COMPLETED
        assert task.attempts == 1
        completed = await svc.events.get_events_async(task_id=task_id, event_type="completed")
        assert len(completed) == 1
        executing = await svc.events.get_events_async(task_id=task_id, event_type="executing")
        assert len(executing) == 1
        assert await svc.results.get_async(task_id) is not None


@pytest.mark.parametrize("max_retries", [0, 1], ids=["fails", "retried-then-fails"])
async def test_a_failure_whose_commit_landed_but_raised_counts_as_written(
    svc: Services,
    monkeypatch: pytest.MonkeyPatch,
    max_retries: int,
) -> None:
    """An ambiguous commit of failed attempts (final, and retried): the retried write
    finds the outcome this attempt wrote before and reports it; no attempt record,
    event or retry is written twice."""
    ids = [
        await svc.queue.enqueue_async(
            ref("always_fails"), [f"boom {i}"], max_retries=max_retries, retry_delay=0
        )
        for i in range(10)
    ]
    landed = land_then_fail(monkeypatch, svc.queue, "fail_many_async", 3)
    worker = make_worker(svc, concurrency=4)
    await asyncio.wait_for(worker.run_until_complete_async(), timeout=60)
    assert landed[0] == 3
    stats = worker.get_stats()
    assert (stats.completed, stats.failed, stats.retried, stats.lost) == (
        0,
        10,
        10 * max_retries,
        0,
    ), str(stats)
    for task_id in ids:
        task = await svc.queue.get_task_async(task_id)
        assert task is not None and task.status is TaskStatus.FAILED
        assert (task.attempts, task.retry_count) == (1 + max_retries, max_retries)
        attempts = await svc.queue.get_attempts_async(task_id)
        assert [x.attempt for x in attempts] == list(range(1, 2 + max_retries))
        events = await svc.events.get_events_async(task_id=task_id)
        kinds = sorted(e.event_type.value for e in events)
        assert kinds.count("failed") == 1
        assert kinds.count("retry") == max_retries
        assert kinds.count("executing") == 1 + max_retries


async def test_a_failure_whose_write_fails_is_retried_too(
    svc: Services, monkeypatch: pytest.MonkeyPatch
) -> None:
    task_id = await svc.queue.enqueue_async(ref("always_fails"), ["boom"], max_retries=0)
    fail_first(monkeypatch, svc.queue, "fail_many_async", 2, DatabaseUnavailable("down"))
    worker = make_worker(svc)
    await asyncio.wait_for(worker.run_until_complete_async(), timeout=60)
    task = await svc.queue.get_task_async(task_id)
    assert task is not None and task.status is TaskStatus.FAILED
    assert len(await svc.events.get_events_async(task_id=task_id, event_type="failed")) == 1


async def test_every_loop_survives_any_error_and_resumes(
    open_services: ServicesFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    svc = await open_services(
        Settings(lease_duration=timedelta(seconds=5), heartbeat_interval=timedelta(seconds=0.1))
    )
    # The heartbeat loop's own calls fail (they name the worker); the calls that
    # report errors as events go through, else which failures get reported would
    # depend on which loop happened to run first.
    heartbeats = fail_first(
        monkeypatch,
        svc.queue,
        "heartbeat_async",
        5,
        OSError("refused"),
        only=lambda kwargs: "worker" in kwargs,
    )
    claims = fail_first(
        monkeypatch, svc.queue, "dequeue_many_async", 2, ConnectionRefusedError("refused")
    )
    worker = make_worker(
        svc,
        run_scheduler=True,
        run_maintenance=True,
        scheduler_interval=0.05,
        maintenance_interval=0.05,
        poll_interval=0.05,
    )
    from omniq.services.scheduler import Scheduler

    fires = fail_first(monkeypatch, Scheduler, "fire_due_async", 3, RuntimeError("bug"))
    await worker.start_async()
    try:
        task_id = await svc.queue.enqueue_async(ref("add"), [1, 2])

        async def completed() -> bool:
            task = await svc.queue.get_task_async(task_id)
            return task is not None and task.status is TaskStatus.COMPLETED

        await wait_until(completed, "the task to complete after the claim errors")

        async def all_resumed() -> bool:
            return heartbeats[0] > 5 and claims[0] > 2 and fires[0] > 3

        await wait_until(all_resumed, "heartbeat, claim and scheduler loops to run again")
    finally:
        await worker.stop_async(grace_period=5)
    errors = await svc.events.get_events_async(event_type="error", limit=100)
    # Each loop's failures were reported, as events too.
    reported = {x.message for x in errors}
    assert {"heartbeat failed", "claim failed", "scheduler failed"} <= reported
    stopped = await svc.events.get_events_async(event_type=EventType.WORKER_STOPPED)
    assert len(stopped) == 1


async def test_a_cancelled_stop_still_releases_and_deregisters(
    svc: Services, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A stop cancelled half-way (a timed-out request, a cancelled app shutdown):
    # the shutdown goes on in the worker's own task; the caller gets its
    # CancelledError; a second stop waits for the same shutdown.
    ids = [await svc.queue.enqueue_async(ref("sleep_async"), [0.2]) for _ in range(30)]
    releasing, go_on = asyncio.Event(), asyncio.Event()
    real_release = svc.queue.release_many_async

    async def gated_release(*args: Any, **kwargs: Any) -> Any:
        releasing.set()
        await go_on.wait()
        return await real_release(*args, **kwargs)

    monkeypatch.setattr(svc.queue, "release_many_async", gated_release)
    worker = make_worker(svc, concurrency=2, prefetch=20)
    await worker.start_async()

    async def prefetched() -> bool:
        claimed = await svc.events.get_events_async(event_type="dequeued", limit=100)
        return len(claimed) >= 10

    await wait_until(prefetched, "the worker to prefetch tasks")
    stopper = asyncio.create_task(worker.stop_async(grace_period=10))
    await asyncio.wait_for(releasing.wait(), 30)  # the shutdown is releasing the prefetch
    stopper.cancel()
    with pytest.raises(asyncio.CancelledError):
        await stopper
    go_on.set()
    await asyncio.wait_for(worker.stop_async(), 30)
    assert not worker.is_running
    tasks = [await svc.queue.get_task_async(task_id) for task_id in ids]
    statuses = {task.status for task in tasks if task is not None}
    assert len(tasks) == 30 and statuses <= {TaskStatus.COMPLETED, TaskStatus.PENDING}
    for task in tasks:
        assert task is not None
        if task.status is TaskStatus.PENDING:  # back unspent, no lease left behind
            assert (task.attempts, task.lease_token) == (0, None)
    assert await svc.workers.list_workers_async() == []
    stopped = await svc.events.get_events_async(event_type=EventType.WORKER_STOPPED)
    assert len(stopped) == 1


async def test_stop_waits_for_an_earlier_attempts_outcome_write(
    svc: Services, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An attempt's failure (retry scheduled) commits but raises; while its write is
    retried, the retry runs and fails for good. stop() still waits for the first
    attempt's write: it lands (found written, not written twice) before stop returns."""
    task_id = await svc.queue.enqueue_async(
        ref("always_fails"), ["boom"], max_retries=1, retry_delay=0
    )
    real = svc.queue.fail_many_async
    gate = asyncio.Event()
    first: list[str | None] = []  # the first attempt's lease token
    rewritten: list[list[TaskStatus | None]] = []

    async def flaky(failures: Any, **kwargs: Any) -> list[TaskStatus | None]:
        tokens = {task.lease_token for task, *_ in failures}
        if not first:
            first.append(failures[0][0].lease_token)
            await real(failures, **kwargs)
            raise DatabaseUnavailable("connection lost before the commit's reply")
        if first[0] in tokens and not gate.is_set():
            raise DatabaseUnavailable("still down")
        written: list[TaskStatus | None] = await real(failures, **kwargs)
        if first[0] in tokens:
            rewritten.append(written)
        return written

    monkeypatch.setattr(svc.queue, "fail_many_async", flaky)
    worker = make_worker(svc)
    await worker.start_async()
    try:

        async def retry_failed() -> bool:
            task = await svc.queue.get_task_async(task_id)
            return task is not None and task.status is TaskStatus.FAILED

        await wait_until(retry_failed, "the retry's final failure")
        assert not rewritten  # the first attempt's write is still being retried
        stopping = asyncio.ensure_future(worker.stop_async(grace_period=30))
        gate.set()
        await asyncio.wait_for(stopping, timeout=60)
        assert rewritten == [[TaskStatus.PENDING]], "stop returned before the write landed"
    finally:
        await worker.stop_async()
    stats = worker.get_stats()
    assert (stats.failed, stats.retried, stats.lost) == (1, 1, 0), str(stats)
    events = await svc.events.get_events_async(task_id=task_id)
    kinds = sorted(x.event_type.value for x in events)
    assert (kinds.count("retry"), kinds.count("failed")) == (1, 1), kinds
    assert [x.attempt for x in await svc.queue.get_attempts_async(task_id)] == [1, 2]


async def test_renewals_slower_than_the_heartbeat_interval_still_keep_the_lease(
    open_services: ServicesFactory, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """A slow link (a helper's proxy: 0.3 s a round trip, a 6 s lease): the heartbeat
    waited behind the worker's slow writes, and every renewal of the leases alone took
    a little longer than the interval, was cut off at it and failed; the leases ran
    out under a live worker, which ran its tasks twice. Renewals alone may now take
    half the lease, and renew the tasks claimed since the heartbeat began too."""
    svc = await open_services(
        Settings(lease_duration=timedelta(seconds=4), heartbeat_interval=timedelta(seconds=1))
    )
    real = svc.queue.heartbeat_async

    async def slow_link(*args: Any, **kwargs: Any) -> Any:
        # The heartbeat proper (it names the worker) waits longer than the lease;
        # a renewal alone longer than the interval, within half the lease.
        await asyncio.sleep(5.0 if "worker" in kwargs else 1.3)
        return await real(*args, **kwargs)

    monkeypatch.setattr(svc.queue, "heartbeat_async", slow_link)
    runs = tmp_path / "runs"
    task_id = await svc.queue.enqueue_async(
        ref("record_and_sleep"), [str(runs), "slow", 6.0], max_retries=0
    )
    # Its own maintenance would recover an expired lease (as another worker's would).
    worker = make_worker(svc, run_maintenance=True, maintenance_interval=0.1)
    await worker.start_async()
    try:

        async def finished() -> bool:
            task = await svc.queue.get_task_async(task_id)
            return task is not None and task.status.is_final

        await wait_until(finished, "the task to finish", timeout=60)
    finally:
        await worker.stop_async(grace_period=10)
    task = await svc.queue.get_task_async(task_id)
    assert task is not None and task.status is TaskStatus.COMPLETED, task
    assert [r[0] for r in worker_tasks.read_records(runs)] == ["slow"]  # once: the lease held
    assert worker.get_stats().lost == 0


async def test_a_write_cancelled_while_waiting_its_turn_is_closed_not_left_unawaited(
    open_services: ServicesFactory,
) -> None:
    """A stop that cancelled a release still waiting behind another write left its
    coroutine never awaited (a RuntimeWarning in a fresh-clone run's stall test)."""
    import inspect

    svc = await open_services()
    worker = make_worker(svc)
    ran: list[str] = []

    async def write() -> str:
        ran.append("written")
        return "written"

    pending = write()
    async with worker._lease_writes:  # another write holds the turn
        waiting = asyncio.ensure_future(worker._in_turn(pending))
        await asyncio.sleep(0)
        waiting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiting
    assert inspect.getcoroutinestate(pending) == "CORO_CLOSED" and ran == []
    assert await worker._in_turn(write()) == "written"  # the turn is free again
