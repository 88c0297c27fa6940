"""The worker, in process, on every engine: executors, results, retries and backoff,
timeouts, callbacks, cancellation, dependencies, the allow-list, leases and fencing,
and the maintenance sweeps.

Task functions live in ``tests/worker_tasks.py``; their side effects go to files
in the test's tmp_path. Nothing sleeps to "let things happen": tests wait on a
condition with a deadline (task functions may sleep as their workload).
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import anyio
import attrs
import pytest
import sqlalchemy as sa

from omniq._time import utcnow
from omniq.db.schema import tasks as tasks_table
from omniq.errors import ConfigurationError, DatabaseUnavailable, LeaseLost, OmniQError
from omniq.models import (
    EventType,
    ResultStatus,
    Settings,
    Task,
    TaskEvent,
    TaskResult,
    TaskStatus,
)
from omniq.services import ErrorInfo, Services, TaskQueue
from omniq.services.maintenance import Maintenance
from omniq.worker import Worker

# The worker resolves "tests.worker_tasks:..." by import: the repository root
# must be importable (pytest puts only the test directories on sys.path).
_ROOT = str(Path(__file__).resolve().parents[2])
if _ROOT not in sys.path:
    sys.path.append(_ROOT)

from tests import worker_tasks  # noqa: E402
from tests.waiting import wait_until  # noqa: E402

pytestmark = pytest.mark.anyio

MODULE = "tests.worker_tasks"
DEADLINE = 30.0  # generous: a condition that holds is seen within milliseconds

ServicesFactory = Callable[..., Awaitable[Services]]


def ref(name: str) -> str:
    """The reference of a function in tests/worker_tasks.py."""
    return f"{MODULE}:{name}"


# --- helpers ----------------------------------------------------------------------------------


def make_worker(
    svc: Services,
    *,
    also_allow: tuple[str, ...] = (),
    queue: TaskQueue | None = None,
    **options: Any,
) -> Worker:
    """A worker on ``svc`` (or on ``queue``, a TaskQueue over its storage) allowed to
    run tests/worker_tasks.py (no scheduler/maintenance)."""
    options.setdefault("run_scheduler", False)
    options.setdefault("run_maintenance", False)
    options.setdefault("poll_interval", 0.1)
    modules = [MODULE, *also_allow]
    return Worker(queue or svc.queue, svc.results, svc.events, allow_modules=modules, **options)


async def must_task(svc: Services, task_id: str) -> Task:
    task = await svc.queue.get_task_async(task_id)
    assert task is not None, f"task {task_id} vanished"
    return task


async def must_result(svc: Services, task_id: str) -> TaskResult:
    result = await svc.results.get_async(task_id)
    assert result is not None, f"no result for task {task_id}"
    return result


async def status_of(svc: Services, task_id: str) -> TaskStatus:
    return (await must_task(svc, task_id)).status


async def wait_for_status(svc: Services, task_id: str, status: TaskStatus, what: str) -> None:
    """Wait (with the tests' deadline) until the task's stored status is ``status``."""

    async def reached() -> bool:
        return await status_of(svc, task_id) is status

    await wait_until(reached, what)


async def events_of(svc: Services, task_id: str, kind: EventType) -> list[TaskEvent]:
    return await svc.events.get_events_async(task_id=task_id, event_type=kind, limit=1000)


pid_alive = worker_tasks.pid_alive


async def _true(value: bool) -> bool:
    """``value`` as an awaitable condition (for :func:`wait_until`)."""
    return value


@pytest.fixture
async def fast_leases(open_services: ServicesFactory) -> Services:
    """Services whose leases last 2 s and are renewed every 0.2 s."""
    settings = Settings(
        lease_duration=timedelta(seconds=2), heartbeat_interval=timedelta(seconds=0.2)
    )
    return await open_services(settings)


@pytest.fixture
async def running_worker(svc: Services) -> AsyncIterator[Worker]:
    """A worker started in the background (start_async), stopped at the end."""
    worker = make_worker(svc, concurrency=4)
    await worker.start_async()
    try:
        yield worker
    finally:
        await worker.stop_async(grace_period=1.0)


# --- executors, results, stats ---------------------------------------------------------------


async def test_burst_worker_runs_async_and_sync_tasks_and_stores_results(svc: Services) -> None:
    async_id = await svc.queue.enqueue_async(ref("add"), [2, 3])
    sync_id = await svc.queue.enqueue_async(ref("add_sync"), [4, 5])
    kw_id = await svc.queue.enqueue_async(ref("add"), {"a": 10, "b": 1})

    stats = await make_worker(svc, executor="thread", concurrency=2).run_until_complete_async()

    assert (await must_result(svc, async_id)).result == 5
    sync_result = await must_result(svc, sync_id)
    assert sync_result.status is ResultStatus.SUCCESS
    assert sync_result.result["sum"] == 9
    # Sync functions run in the worker's thread pool, not on the event loop's thread.
    assert sync_result.result["thread"].startswith("omniq-task")
    assert (await must_result(svc, kw_id)).result == 11
    for task_id in (async_id, sync_id, kw_id):
        task = await must_task(svc, task_id)
        assert task.status is TaskStatus.COMPLETED
        assert task.attempts == 1
        assert task.lease_token is None
        result = await must_result(svc, task_id)
        assert result.success
        assert result.worker_id == stats.worker_id
        assert result.execution_time is not None and result.execution_time >= 0
        assert len(await events_of(svc, task_id, EventType.COMPLETED)) == 1
        assert len(await events_of(svc, task_id, EventType.EXECUTING)) == 1
    assert stats.completed == 3
    assert (stats.failed, stats.retried, stats.cancelled, stats.lost, stats.running) == (0,) * 5
    assert stats.executor == "thread"
    assert stats.concurrency == 2


async def test_process_executor_runs_sync_tasks_in_child_processes(svc: Services) -> None:
    cpu_id = await svc.queue.enqueue_async(ref("cpu_bound"), [10_000])
    async_id = await svc.queue.enqueue_async(ref("add"), [1, 1])
    failing_id = await svc.queue.enqueue_async(ref("fail_in_process"), ["nope"], max_retries=0)

    stats = await make_worker(svc, executor="process", concurrency=3).run_until_complete_async()

    cpu = (await must_result(svc, cpu_id)).result
    assert cpu["value"] == sum(i * i for i in range(10_000))
    assert cpu["pid"] != os.getpid()
    assert (await must_result(svc, async_id)).result == 2
    # An exception in the child keeps its type, message and traceback.
    failed = await must_result(svc, failing_id)
    assert failed.status is ResultStatus.ERROR
    assert failed.error_type == "KeyError"
    assert "nope" in (failed.error or "")
    assert "fail_in_process" in (failed.error_traceback or "")
    assert (await status_of(svc, failing_id)) is TaskStatus.FAILED
    assert (stats.completed, stats.failed, stats.executor) == (2, 1, "process")


async def test_stats_count_outcomes(svc: Services, tmp_path: Path) -> None:
    for i in range(3):
        await svc.queue.enqueue_async(ref("add"), [i, i])
    await svc.queue.enqueue_async(
        ref("flaky"), [str(tmp_path / "flaky"), 1], max_retries=2, retry_delay=0
    )
    await svc.queue.enqueue_async(ref("always_fails"), ["boom"], max_retries=0)
    worker = make_worker(svc, concurrency=3)
    assert worker.get_stats().completed == 0

    stats = await worker.run_until_complete_async()

    assert (stats.completed, stats.failed, stats.retried) == (4, 1, 1)
    assert (stats.cancelled, stats.lost, stats.running) == (0, 0, 0)
    assert stats.uptime > 0
    again = await worker.get_stats_async()
    assert (again.completed, again.failed, again.retried) == (4, 1, 1)
    counts = await svc.queue.stats_async()
    assert counts == {"default": {"completed": 4, "failed": 1}}


# --- retries and backoff ---------------------------------------------------------------------


async def test_retries_until_success_with_one_retry_event_per_failed_attempt(
    svc: Services, tmp_path: Path
) -> None:
    counter = tmp_path / "calls"
    task_id = await svc.queue.enqueue_async(
        ref("flaky"), [str(counter), 2, "finally"], max_retries=3, retry_delay=0
    )

    stats = await make_worker(svc, executor="thread").run_until_complete_async()

    task = await must_task(svc, task_id)
    assert task.status is TaskStatus.COMPLETED
    assert worker_tasks.count_lines(counter) == 3
    assert task.retry_count == 2
    assert task.attempts == 3
    result = await must_result(svc, task_id)
    assert (result.result, result.retry_count) == ("finally", 2)
    retries = await events_of(svc, task_id, EventType.RETRY)
    assert sorted(e.retry_count or 0 for e in retries) == [1, 2]
    assert all("RuntimeError: flaky failure" in (e.error or "") for e in retries)
    assert await events_of(svc, task_id, EventType.FAILED) == []
    assert (stats.retried, stats.completed, stats.failed) == (2, 1, 0)


async def test_final_failure_stores_error_type_message_traceback_and_a_failed_event(
    svc: Services,
) -> None:
    task_id = await svc.queue.enqueue_async(
        ref("always_fails"), ["out of cheese"], max_retries=2, retry_delay=0
    )

    await make_worker(svc).run_until_complete_async()

    task = await must_task(svc, task_id)
    assert task.status is TaskStatus.FAILED
    assert (task.attempts, task.retry_count) == (3, 2)
    assert task.last_error == "ValueError: out of cheese"
    result = await must_result(svc, task_id)
    assert result.status is ResultStatus.ERROR
    assert result.error_type == "ValueError"
    assert "out of cheese" in (result.error or "")
    assert result.error_traceback is not None
    assert "Traceback" in result.error_traceback
    assert "always_fails" in result.error_traceback
    assert len(await events_of(svc, task_id, EventType.RETRY)) == 2
    failed = await events_of(svc, task_id, EventType.FAILED)
    assert len(failed) == 1
    assert "out of cheese" in (failed[0].error or "")


@pytest.mark.parametrize("executor", ["async", "process"])
async def test_an_exception_whose_str_raises_still_fails_its_task(
    svc: Services, executor: str
) -> None:
    # Its message could not be read: before, the worker's handling of the failure
    # crashed and the task stayed running under a lease until it expired.
    task_id = await svc.queue.enqueue_async(ref("raises_unprintable"), max_retries=0)
    after = await svc.queue.enqueue_async(ref("add"), [1, 2])

    await make_worker(svc, executor=executor, concurrency=1).run_until_complete_async()

    task = await must_task(svc, task_id)
    assert task.status is TaskStatus.FAILED
    result = await must_result(svc, task_id)
    assert result.error_type == "Unprintable"
    assert "str() of Unprintable failed" in (result.error or "")
    assert (await must_result(svc, after)).result == 3


async def test_a_process_task_whose_return_value_cannot_pickle_fails_as_serialization_error(
    svc: Services,
) -> None:
    task_id = await svc.queue.enqueue_async(ref("returns_a_lock"), max_retries=0)
    await make_worker(svc, executor="process", concurrency=1).run_until_complete_async()
    result = await must_result(svc, task_id)
    assert result.status is ResultStatus.ERROR
    assert result.error_type == "SerializationError"  # was a pickling TypeError
    assert "cannot leave the worker process" in (result.error or "")


async def test_a_burst_worker_whose_claim_fails_tries_again_instead_of_ending(
    svc: Services,
) -> None:
    # A failed claim (database down, disk full) found nothing out: before, a burst
    # worker took it for an empty queue and returned with every task pending.
    class FailingOnce(TaskQueue):
        failures = 0

        async def dequeue_many_async(self, *args: Any, **kwargs: Any) -> list[Task]:
            if self.failures < 2:
                self.failures += 1
                raise DatabaseUnavailable("claim tasks: connection refused")
            return await super().dequeue_many_async(*args, **kwargs)

    ids = [await svc.queue.enqueue_async(ref("add"), [n, 1]) for n in range(3)]
    queue = FailingOnce(svc.storage, svc.queue.queues)
    worker = make_worker(svc, queue=queue, poll_interval=0.05)
    await worker.run_until_complete_async()
    assert queue.failures == 2
    for n, task_id in enumerate(ids):
        assert (await must_result(svc, task_id)).result == n + 1


async def test_a_worker_or_claim_given_a_string_for_queues_refuses_it(svc: Services) -> None:
    # Before, "emails" served the queues e, m, a, i, l and s: its tasks never ran.
    with pytest.raises(ConfigurationError, match="got the string 'emails'"):
        make_worker(svc, queues="emails")
    with pytest.raises(ConfigurationError, match="1-200 characters"):
        await svc.queue.dequeue_many_async(1, [""])
    task_id = await svc.queue.enqueue_async(ref("add"), [1, 1], queue_name="emails")
    await make_worker(svc, queues=["emails"]).run_until_complete_async()
    assert (await must_result(svc, task_id)).result == 2


async def test_settings_defaults_apply_to_tasks_omniq_builds_not_to_task_records(
    open_services: ServicesFactory,
) -> None:
    # As the README says: a Task record keeps its own values.
    settings = Settings(default_max_retries=0, default_result_ttl=timedelta(hours=2))
    svc = await open_services(settings)
    built = await svc.queue.enqueue_async(ref("add"), [1, 1])
    record = await svc.queue.enqueue_async(Task(func=ref("add"), func_args=(1, 1)))
    assert (await must_task(svc, built)).max_retries == 0
    assert (await must_task(svc, built)).result_ttl == timedelta(hours=2)
    assert (await must_task(svc, record)).max_retries == 3
    assert (await must_task(svc, record)).result_ttl is None


async def test_retry_delay_backoff_is_exponential_and_capped(
    open_services: ServicesFactory,
) -> None:
    settings = Settings(retry_backoff=2, retry_jitter=0, max_retry_delay=timedelta(seconds=30))
    queue = (await open_services(settings)).queue
    base = Task(func=ref("add"), retry_delay=timedelta(seconds=1))
    delays = [
        queue.retry_delay_for(Task(func=base.func, retry_delay=base.retry_delay, retry_count=n))
        for n in range(7)
    ]
    assert delays == [timedelta(seconds=s) for s in (1, 2, 4, 8, 16, 30, 30)]
    assert queue.retry_delay_for(Task(func=base.func, retry_delay=timedelta(0))) == timedelta(0)


async def test_retry_delay_jitter_stays_within_bounds(open_services: ServicesFactory) -> None:
    settings = Settings(retry_backoff=3, retry_jitter=0.25)
    queue = (await open_services(settings)).queue
    task = Task(func=ref("add"), retry_delay=timedelta(seconds=2), retry_count=2)
    samples = {queue.retry_delay_for(task).total_seconds() for _ in range(300)}
    assert all(18 * 0.75 <= s <= 18 * 1.25 for s in samples)
    assert len(samples) > 1, "jitter never varied the delay"


async def test_end_to_end_retry_events_carry_the_backoff_delay(
    open_services: ServicesFactory, tmp_path: Path
) -> None:
    svc = await open_services(Settings(retry_backoff=2, retry_jitter=0))
    task_id = await svc.queue.enqueue_async(
        ref("flaky"), [str(tmp_path / "n"), 2], max_retries=2, retry_delay=0.05
    )

    # Not burst mode: a burst worker stops when no task is ready, and a retry
    # waiting out its backoff is not ready yet.
    worker = make_worker(svc)
    await worker.start_async()
    try:

        async def completed() -> bool:
            return await status_of(svc, task_id) is TaskStatus.COMPLETED

        await wait_until(completed, "the retried task to complete")
    finally:
        await worker.stop_async(grace_period=1.0)
    retries = await events_of(svc, task_id, EventType.RETRY)
    delays = sorted((e.data or {})["delay"] for e in retries)
    assert delays == pytest.approx([0.05, 0.1])


# --- timeouts --------------------------------------------------------------------------------


async def test_async_task_timeout_cancels_it(svc: Services) -> None:
    task_id = await svc.queue.enqueue_async(ref("sleep_async"), [30], timeout=0.2, max_retries=0)
    started = time.monotonic()

    stats = await make_worker(svc).run_until_complete_async()

    assert time.monotonic() - started < 15, "the timed-out task was not cancelled"
    assert await status_of(svc, task_id) is TaskStatus.FAILED
    result = await must_result(svc, task_id)
    assert result.status is ResultStatus.ERROR
    assert result.error_type == "TaskTimeout"
    assert "timed out after 0.2s" in (result.error or "")
    assert stats.failed == 1


async def test_thread_task_timeout_marks_it_timed_out_while_the_thread_runs_on(
    svc: Services,
) -> None:
    # A thread cannot be killed: the task is marked timed out at once and its
    # late result is discarded, but the function keeps running in its thread
    # until it returns. The test releases it instead of waiting for it.
    key = f"thread-timeout-{uuid.uuid4().hex}"
    task_id = await svc.queue.enqueue_async(
        ref("block_until_released"), [key], timeout=0.2, max_retries=0
    )
    try:
        await make_worker(svc, executor="thread").run_until_complete_async()

        result = await must_result(svc, task_id)
        assert result.error_type == "TaskTimeout"
        assert await status_of(svc, task_id) is TaskStatus.FAILED
        assert not worker_tasks.has_finished(key), "the thread is expected to run on"
    finally:
        worker_tasks.release(key)
    await wait_until(lambda: _true(worker_tasks.has_finished(key)), "the thread to return")
    assert (await must_result(svc, task_id)).error_type == "TaskTimeout"
    assert await status_of(svc, task_id) is TaskStatus.FAILED


async def test_a_short_thread_timeout_fires_beside_a_long_one(svc: Services) -> None:
    # The pool's calls share one timer, set for the soonest timeout: a call with a
    # short timeout that starts after one with a long timeout moves it earlier.
    key = f"long-and-short-{uuid.uuid4().hex}"
    long_id = await svc.queue.enqueue_async(
        ref("block_until_released"), [key], timeout=600, priority=10
    )
    short_id = await svc.queue.enqueue_async(
        ref("block_until_released"), [key], timeout=0.3, max_retries=0
    )
    worker = make_worker(svc, executor="thread", concurrency=2)
    await worker.start_async()
    try:
        await wait_for_status(svc, short_id, TaskStatus.FAILED, "the short timeout to fire")
        assert (await must_result(svc, short_id)).error_type == "TaskTimeout"
        assert await status_of(svc, long_id) is TaskStatus.RUNNING
        worker_tasks.release(key)

        await wait_for_status(
            svc, long_id, TaskStatus.COMPLETED, "the long task to finish within its timeout"
        )
    finally:
        worker_tasks.release(key)
        await worker.stop_async(grace_period=5.0)


async def test_process_task_timeout_kills_the_child_process(svc: Services, tmp_path: Path) -> None:
    pid_file = tmp_path / "child.pid"
    task_id = await svc.queue.enqueue_async(
        ref("write_pid_then_sleep"), [str(pid_file), 120], timeout=10, max_retries=0
    )
    started = time.monotonic()

    # 10 s leaves a loaded machine time to start the child before the timeout.
    await make_worker(svc, executor="process").run_until_complete_async()

    assert time.monotonic() - started < 90
    result = await must_result(svc, task_id)
    assert result.error_type == "TaskTimeout"
    assert await status_of(svc, task_id) is TaskStatus.FAILED
    child = int(pid_file.read_text())
    assert child != os.getpid()
    await wait_until(lambda: _true(not pid_alive(child)), f"child process {child} to be gone")


# --- callbacks -------------------------------------------------------------------------------


async def test_callback_gets_the_result_and_callback_args(svc: Services, tmp_path: Path) -> None:
    out = tmp_path / "callback.json"
    task_id = await svc.queue.enqueue_async(
        ref("add"), [20, 22], callback=ref("record_callback"), callback_args=[str(out), "tag-1"]
    )

    await make_worker(svc).run_until_complete_async()

    assert json.loads(out.read_text()) == {"result": 42, "tag": "tag-1"}
    assert await status_of(svc, task_id) is TaskStatus.COMPLETED


async def test_failing_callback_logs_an_event_and_the_task_stays_completed(
    svc: Services,
) -> None:
    task_id = await svc.queue.enqueue_async(ref("add"), [1, 2], callback=ref("callback_fails"))

    stats = await make_worker(svc).run_until_complete_async()

    assert await status_of(svc, task_id) is TaskStatus.COMPLETED
    assert (await must_result(svc, task_id)).result == 3
    failed = await events_of(svc, task_id, EventType.CALLBACK_FAILED)
    assert len(failed) == 1
    assert "callback refused 3" in (failed[0].error or "")
    assert (stats.completed, stats.failed) == (1, 0)


# --- cancellation and dependencies -------------------------------------------------------------


async def test_cancel_running_async_task_promptly_and_its_dependents(
    svc: Services, running_worker: Worker
) -> None:
    task_id = await svc.queue.enqueue_async(ref("sleep_async"), [30])
    child = await svc.queue.enqueue_async(ref("add"), [1, 1], depends_on=[task_id])
    grandchild = await svc.queue.enqueue_async(ref("add"), [1, 1], depends_on=[child])

    async def running() -> bool:
        return await status_of(svc, task_id) is TaskStatus.RUNNING

    await wait_until(running, "the task to start")
    asked = time.monotonic()
    assert await svc.queue.cancel_async(task_id)

    async def cancelled() -> bool:
        return await status_of(svc, task_id) is TaskStatus.CANCELLED

    await wait_until(cancelled, "the running task to be cancelled", timeout=10)
    assert time.monotonic() - asked < 10
    result = await must_result(svc, task_id)
    assert result.status is ResultStatus.CANCELLED
    for dependent in (child, grandchild):
        assert await status_of(svc, dependent) is TaskStatus.CANCELLED
        assert (await must_result(svc, dependent)).status is ResultStatus.CANCELLED
    assert len(await events_of(svc, task_id, EventType.CANCEL_REQUESTED)) == 1
    assert len(await events_of(svc, task_id, EventType.CANCELLED)) == 1
    assert running_worker.get_stats().cancelled == 1
    # The worker keeps working after a cancellation.
    after = await svc.queue.enqueue_async(ref("add"), [5, 5])
    assert (await svc.results.wait_async(after, timeout=DEADLINE)) is not None


async def test_cancel_running_process_task_kills_the_child(svc: Services, tmp_path: Path) -> None:
    pid_file = tmp_path / "child.pid"
    task_id = await svc.queue.enqueue_async(ref("write_pid_then_sleep"), [str(pid_file), 60])
    worker = make_worker(svc, executor="process")
    await worker.start_async()
    try:

        async def child_started() -> bool:
            return pid_file.exists() and pid_file.read_text() != ""

        await wait_until(child_started, "the child process to start")
        child = int(pid_file.read_text())
        assert await svc.queue.cancel_async(task_id)

        async def cancelled() -> bool:
            return await status_of(svc, task_id) is TaskStatus.CANCELLED

        await wait_until(cancelled, "the process task to be cancelled")
        await wait_until(lambda: _true(not pid_alive(child)), f"child process {child} to be gone")
    finally:
        await worker.stop_async(grace_period=1.0)
    assert (await must_result(svc, task_id)).status is ResultStatus.CANCELLED


async def test_cancel_of_a_prefetched_task_keeps_it_from_running(
    svc: Services, tmp_path: Path
) -> None:
    log = tmp_path / "ran"
    first = await svc.queue.enqueue_async(ref("sleep_async"), [1.0, "first"], priority=10)
    second = await svc.queue.enqueue_async(ref("record"), [str(log), "second"])
    worker = make_worker(svc, concurrency=1, prefetch=1)
    await worker.start_async()
    try:

        async def both_claimed() -> bool:
            return {await status_of(svc, first), await status_of(svc, second)} == {
                TaskStatus.RUNNING
            }

        await wait_until(both_claimed, "the worker to claim both tasks")
        assert await svc.queue.cancel_async(second)

        async def settled() -> bool:
            return (await status_of(svc, first)).is_final and (
                await status_of(svc, second)
            ).is_final

        await wait_until(settled, "both tasks to settle")
    finally:
        await worker.stop_async(grace_period=1.0)
    assert await status_of(svc, first) is TaskStatus.COMPLETED
    assert await status_of(svc, second) is TaskStatus.CANCELLED
    assert worker_tasks.read_records(log) == []


async def test_a_task_cancelled_while_it_runs_counts_the_attempt_it_made(
    svc: Services,
) -> None:
    # The cancel is requested while each function runs (async ones are cancelled,
    # sync ones fail afterwards), while the worker's other writes are in flight.
    # Each start (buffered by the worker) must be counted whichever of the
    # worker's writes lands first: attempts counts starts (it read 0 on
    # PostgreSQL when the cancel committed before the flush holding the start).
    run = f"cancel-counts-{svc.storage.dialect.name}-{id(svc)}"
    cases = [
        (f"{run}-{func}-{i}", func)
        for func in ("gate_then_fail", "block_then_fail")
        for i in range(6)
    ]
    ids = [
        await svc.queue.enqueue_async(ref(func), [key], max_retries=3, retry_delay=0)
        for key, func in cases
    ]
    worker = make_worker(svc, concurrency=16)
    await worker.start_async()
    try:

        async def cancel_when_started(task_id: str, key: str) -> None:
            await wait_until(lambda: _true(worker_tasks.has_started(key)), f"{key} to start")
            assert await svc.queue.cancel_async(task_id)
            worker_tasks.release(key)

        await asyncio.gather(
            *(
                cancel_when_started(task_id, key)
                for task_id, (key, _) in zip(ids, cases, strict=True)
            )
        )

        async def all_cancelled() -> bool:
            return all([await status_of(svc, task_id) is TaskStatus.CANCELLED for task_id in ids])

        await wait_until(all_cancelled, "every task to end cancelled")
    finally:
        await worker.stop_async(grace_period=5)
    for task_id in ids:
        task = await must_task(svc, task_id)
        assert (task.attempts, task.retry_count) == (1, 0), task_id  # ran once, not retried


async def test_dependency_chain_runs_in_order(svc: Services, tmp_path: Path) -> None:
    log = tmp_path / "order"
    a = svc.queue.build_task(ref("record"), [str(log), "a"])
    b = svc.queue.build_task(ref("record"), [str(log), "b"], depends_on=[a.id], priority=5)
    c = svc.queue.build_task(ref("record"), [str(log), "c"], depends_on=[b.id], priority=9)
    d = svc.queue.build_task(ref("record"), [str(log), "d"], depends_on=[a.id, c.id])
    free = svc.queue.build_task(ref("record"), [str(log), "free"], priority=-5)
    await svc.queue.enqueue_many_async([d, c, b, free, a])

    await make_worker(svc, concurrency=4).run_until_complete_async()

    order = [label for label, _ in worker_tasks.read_records(log)]
    assert sorted(order) == ["a", "b", "c", "d", "free"]
    chain = [x for x in order if x != "free"]
    assert chain == ["a", "b", "c", "d"]
    for task in (a, b, c, d, free):
        assert await status_of(svc, task.id) is TaskStatus.COMPLETED


# --- the allow-list ----------------------------------------------------------------------------


async def test_unknown_function_reference_fails_with_task_not_found_without_importing(
    svc: Services, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    canary = f"omniq_canary_{uuid.uuid4().hex}"
    imported = tmp_path / "imported"
    (tmp_path / f"{canary}.py").write_text(
        f"from pathlib import Path\nPath({str(imported)!r}).write_text('imported')\n"
        "def run() -> None:\n    pass\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    shell_marker = tmp_path / "shell-ran"
    run_marker = tmp_path / "run-ran"
    ids = [
        await svc.queue.enqueue_async(f"{canary}:run", max_retries=3),
        await svc.queue.enqueue_async("os:system", [f"touch {shell_marker}"], max_retries=3),
        await svc.queue.enqueue_async(
            "subprocess:run", [["touch", str(run_marker)]], max_retries=3
        ),
        # Allowed module, missing function.
        await svc.queue.enqueue_async(ref("no_such_function"), max_retries=3),
    ]

    stats = await make_worker(svc, executor="thread").run_until_complete_async()

    for task_id in ids:
        task = await must_task(svc, task_id)
        # No retries: an unknown function does not become known by retrying.
        assert (task.status, task.attempts, task.retry_count) == (TaskStatus.FAILED, 1, 0)
        result = await must_result(svc, task_id)
        assert result.error_type == "TaskNotFound"
    assert canary not in sys.modules
    assert not imported.exists()
    assert not shell_marker.exists()
    assert not run_marker.exists()
    assert (stats.failed, stats.retried) == (4, 0)


# --- leases and fencing ------------------------------------------------------------------------


async def test_heartbeat_renews_the_lease_of_a_long_task(fast_leases: Services) -> None:
    svc = fast_leases
    task_id = await svc.queue.enqueue_async(ref("sleep_async"), [4, "done"])
    worker = make_worker(svc)
    recovered = 0
    expiries: set[Any] = set()

    async def sweep_until_final() -> None:
        nonlocal recovered
        deadline = time.monotonic() + DEADLINE
        while time.monotonic() < deadline:
            recovered += await svc.queue.recover_expired_leases_async()
            task = await must_task(svc, task_id)
            if task.status is TaskStatus.RUNNING and task.lease_expires_at is not None:
                expiries.add(task.lease_expires_at)
            if task.is_final:
                return
            await anyio.sleep(0.05)

    async with anyio.create_task_group() as group:
        group.start_soon(worker.run_until_complete_async)
        group.start_soon(sweep_until_final)

    task = await must_task(svc, task_id)
    assert recovered == 0, "a task whose worker heartbeats was recovered"
    assert task.status is TaskStatus.COMPLETED
    assert task.attempts == 1
    assert (await must_result(svc, task_id)).result == "done"
    assert task.started_at is not None
    # The 2 s lease was pushed forward while the 4 s task ran.
    assert max(expiries) > task.started_at + timedelta(seconds=3)
    assert worker.get_stats().lost == 0


async def test_worker_that_lost_its_lease_stops_the_task_and_writes_nothing(
    fast_leases: Services,
) -> None:
    svc = fast_leases
    task_id = await svc.queue.enqueue_async(ref("sleep_async"), [30, "never"])
    worker = make_worker(svc)
    await worker.start_async()
    try:

        async def running() -> bool:
            return await status_of(svc, task_id) is TaskStatus.RUNNING

        await wait_until(running, "the task to start")
        # Another worker takes the task over (as after a recovery and a new claim).
        async with svc.storage.engine.begin() as conn:
            await conn.execute(
                sa.update(tasks_table)
                .where(tasks_table.c.id == task_id)
                .values(lease_token="stolen", worker_id="thief")
            )

        async def stopped() -> bool:
            return worker.get_stats().running == 0

        await wait_until(stopped, "the worker to drop the task", timeout=10)
    finally:
        await worker.stop_async(grace_period=1.0)
    task = await must_task(svc, task_id)
    assert (task.status, task.lease_token, task.worker_id) == (
        TaskStatus.RUNNING,
        "stolen",
        "thief",
    )
    assert await svc.results.get_async(task_id) is None
    stats = worker.get_stats()
    assert (stats.completed, stats.failed, stats.cancelled) == (0, 0, 0)
    assert stats.lost == 1


async def test_lease_taken_over_fences_the_first_worker(open_services: ServicesFactory) -> None:
    svc = await open_services(Settings(lease_duration=timedelta(seconds=0.3)))
    task_id = await svc.queue.enqueue_async(ref("add"), [1, 2], max_retries=1, retry_delay=0)
    first = await svc.queue.dequeue_async(worker_id="w1")
    assert first is not None and first.id == task_id
    recovered = 0

    async def lease_recovered() -> bool:
        nonlocal recovered
        recovered += await svc.queue.recover_expired_leases_async()
        return recovered > 0

    await wait_until(lease_recovered, "the expired lease to be recovered")
    assert recovered == 1
    second = await svc.queue.dequeue_async(timeout=DEADLINE, worker_id="w2")
    assert second is not None and second.id == task_id
    assert second.attempts == 2
    assert second.lease_token != first.lease_token

    # The first worker comes back: every write it tries is rejected.
    assert await svc.queue.complete_async(first, "first", worker_id="w1") is False
    assert await svc.queue.fail_async(first, ErrorInfo(type="X", message="late")) is None
    assert await svc.queue.heartbeat_async({task_id: first.lease_token or ""}) == {}
    assert not await svc.queue.release_async(first, worker_id="w1")
    assert not await svc.queue.cancel_running_async(first, worker_id="w1")
    assert await svc.results.get_async(task_id) is None

    assert await svc.queue.complete_async(second, "second", worker_id="w2") is True
    result = await must_result(svc, task_id)
    assert (result.result, result.worker_id) == ("second", "w2")
    task = await must_task(svc, task_id)
    assert (task.status, task.attempts) == (TaskStatus.COMPLETED, 2)
    assert len(await events_of(svc, task_id, EventType.COMPLETED)) == 1
    assert len(await events_of(svc, task_id, EventType.RETRY)) == 1


async def test_recovered_lease_without_attempts_left_fails_as_worker_lost(
    open_services: ServicesFactory,
) -> None:
    svc = await open_services(Settings(lease_duration=timedelta(seconds=0.3), crash_retries=0))
    task_id = await svc.queue.enqueue_async(ref("add"), [1, 2])
    assert await svc.queue.dequeue_async(worker_id="crashed") is not None

    async def recovered() -> bool:
        return await svc.queue.recover_expired_leases_async() == 1

    await wait_until(recovered, "the expired lease to be recovered")
    task = await must_task(svc, task_id)
    assert (task.status, task.attempts) == (TaskStatus.FAILED, 1)
    result = await must_result(svc, task_id)
    assert result.error_type == "WorkerLost"
    assert len(await events_of(svc, task_id, EventType.FAILED)) == 1


# --- maintenance -------------------------------------------------------------------------------


def maintenance(svc: Services, owner: str, lease: float = 60.0) -> Maintenance:
    return Maintenance(
        svc.storage, svc.queue, svc.results, svc.events, owner=owner, lease=timedelta(seconds=lease)
    )


async def test_maintenance_recovers_expires_and_cleans_up(open_services: ServicesFactory) -> None:
    svc = await open_services(Settings(lease_duration=timedelta(seconds=0.3)))
    old = utcnow() - timedelta(days=30)
    # A running task whose worker died.
    lost_id = await svc.queue.enqueue_async(ref("add"), [1, 1], max_retries=1, retry_delay=0)
    assert await svc.queue.dequeue_async(worker_id="dead") is not None
    # A queued task whose TTL passed.
    stale = Task(func=ref("add"), created_at=utcnow() - timedelta(hours=2), ttl=timedelta(hours=1))
    stale_id = await svc.queue.enqueue_async(stale)
    fresh_id = await svc.queue.enqueue_async(ref("add"), [2, 2], ttl=3600, run_in=3600)
    # An expired result and a live one.
    await svc.results.store_async(
        TaskResult(
            task_id="old-result",
            status=ResultStatus.SUCCESS,
            result=1,
            created_at=utcnow() - timedelta(hours=2),
            ttl=timedelta(hours=1),
        )
    )
    await svc.results.store_async(
        TaskResult(task_id="new-result", status=ResultStatus.SUCCESS, ttl=timedelta(hours=1))
    )
    # Events older than the retention (7 days by default) and a recent one.
    await svc.events.log_many_async(
        [TaskEvent(event_type=EventType.UPDATED, task_id="ancient", timestamp=old)] * 3
        + [TaskEvent(event_type=EventType.UPDATED, task_id="recent")]
    )
    sweeper = maintenance(svc, "maintainer")
    totals = {"recovered": 0, "expired": 0, "results": 0, "events": 0}

    async def swept_everything() -> bool:
        report = await sweeper.run_once_async()
        assert report is not None, "a lone maintainer must hold the lease"
        totals["recovered"] += report.recovered
        totals["expired"] += report.expired
        totals["results"] += report.results_deleted
        totals["events"] += report.events_deleted
        return totals["recovered"] >= 1

    await wait_until(swept_everything, "the expired lease to be recovered")
    assert totals == {"recovered": 1, "expired": 1, "results": 1, "events": 3}
    lost = await must_task(svc, lost_id)
    # Run again from the crash budget; max_retries is not spent.
    assert (lost.status, lost.retry_count, lost.lost_count) == (TaskStatus.PENDING, 0, 1)
    assert "WorkerLost" in (lost.last_error or "")
    assert await status_of(svc, stale_id) is TaskStatus.EXPIRED
    assert (await must_result(svc, stale_id)).status is ResultStatus.EXPIRED
    assert len(await events_of(svc, stale_id, EventType.EXPIRED)) == 1
    assert await status_of(svc, fresh_id) is TaskStatus.PENDING
    assert await svc.results.get_async("new-result") is not None
    assert await svc.storage.read(lambda conn: svc.storage.results.get(conn, "old-result")) is None
    assert await svc.events.get_events_async(task_id="ancient") == []
    assert len(await svc.events.get_events_async(task_id="recent")) == 1


async def test_only_one_maintenance_owner_holds_the_lease(
    open_services: ServicesFactory,
) -> None:
    svc_a = await open_services()
    svc_b = await open_services()
    a = maintenance(svc_a, "owner-a")
    b = maintenance(svc_b, "owner-b")

    for _ in range(5):
        got = await asyncio.gather(a.acquire_async(), b.acquire_async())
        assert sorted(got) == [False, True], "both or neither maintainer got the lease"
    holder, other = (a, b) if await a.acquire_async() else (b, a)
    assert await holder.run_once_async() is not None
    assert await other.run_once_async() is None
    assert await holder.acquire_async()  # renewal by the holder
    await holder.release_async()
    assert await other.run_once_async() is not None
    assert await holder.run_once_async() is None
    assert not await holder.acquire_async()


async def test_maintenance_lease_passes_on_when_its_holder_stops_renewing(
    open_services: ServicesFactory,
) -> None:
    svc_a = await open_services()
    svc_b = await open_services()
    # 2 s: the survivor's first look surely falls inside the crashed holder's lease.
    crashed = maintenance(svc_a, "crashed", lease=2.0)
    survivor = maintenance(svc_b, "survivor", lease=60)
    assert await crashed.acquire_async()
    assert await survivor.run_once_async() is None

    async def taken_over() -> bool:
        return await survivor.run_once_async() is not None

    await wait_until(taken_over, "the survivor to take the expired maintenance lease")
    assert not await crashed.acquire_async()


async def test_worker_runs_maintenance_in_the_background(open_services: ServicesFactory) -> None:
    svc = await open_services(Settings(lease_duration=timedelta(seconds=0.3)))
    task_id = await svc.queue.enqueue_async(ref("add"), [3, 4], max_retries=1, retry_delay=0)
    assert await svc.queue.dequeue_async(worker_id="crashed-worker") is not None
    worker = make_worker(svc, run_maintenance=True, maintenance_interval=0.1)
    await worker.start_async()
    try:

        async def completed() -> bool:
            return await status_of(svc, task_id) is TaskStatus.COMPLETED

        await wait_until(completed, "the crashed worker's task to be recovered and rerun")
    finally:
        await worker.stop_async(grace_period=1.0)
    task = await must_task(svc, task_id)
    assert (task.attempts, task.retry_count, task.lost_count) == (2, 0, 1)
    assert (await must_result(svc, task_id)).result == 7


# --- stopping ----------------------------------------------------------------------------------


async def test_stopping_a_worker_leaves_the_services_usable(
    open_services: ServicesFactory,
) -> None:
    # Heartbeats and maintenance write all the time here, so stopping the worker
    # lands in the middle of one of their writes.
    svc = await open_services(Settings(heartbeat_interval=timedelta(milliseconds=1)))
    for _ in range(15):
        worker = make_worker(svc, run_maintenance=True, maintenance_interval=0.001)
        await worker.start_async()
        task_id = await svc.queue.enqueue_async(ref("add"), [1, 2])
        assert await svc.results.wait_async(task_id, timeout=DEADLINE) is not None
        await worker.stop_async(grace_period=1.0)
        # The same services still write after the stop.
        assert await svc.queue.cancel_async(await svc.queue.enqueue_async(ref("add"), [0, 0]))
    assert await svc.events.get_events_async(event_type=EventType.ERROR) == []


async def test_a_retry_claimed_while_its_failure_is_still_being_settled_runs(
    open_services: ServicesFactory, tmp_path: Path
) -> None:
    # The failed attempt's bookkeeping ends only after its retry (the same task
    # id) was claimed again by this worker: finishing the first attempt must
    # not drop the retry from the running tasks (a burst worker then stopped
    # with the retry left running under its lease, and no heartbeat renewed it).
    svc = await open_services()

    class SettlesLate(TaskQueue):
        async def fail_many_async(self, failures: Any, **kwargs: Any) -> Any:
            statuses = await super().fail_many_async(failures, **kwargs)
            task_id = failures[0][0].id

            async def claimed_again() -> bool:
                return await status_of(svc, task_id) is TaskStatus.RUNNING

            await wait_until(claimed_again, "the retry to be claimed")
            return statuses

    task_id = await svc.queue.enqueue_async(
        ref("flaky"), [str(tmp_path / "count"), 1], max_retries=1, retry_delay=0
    )
    worker = Worker(
        SettlesLate(svc.storage, svc.queue.queues),
        svc.results,
        svc.events,
        allow_modules=[MODULE],
        run_scheduler=False,
        run_maintenance=False,
        poll_interval=0.02,
    )
    with anyio.fail_after(DEADLINE):
        stats = await worker.run_until_complete_async()
    assert (stats.retried, stats.completed) == (1, 1)
    assert await status_of(svc, task_id) is TaskStatus.COMPLETED


async def test_heartbeats_beside_completions_never_deadlock(
    open_services: ServicesFactory,
) -> None:
    # A heartbeat renews the leases of the running tasks while completions settle
    # some of them: on PostgreSQL two such statements locking the same rows in
    # different orders deadlocked (each costing a second of deadlock_timeout and
    # an "outcome write failed" error). Every write must succeed the first time.
    svc = await open_services(Settings(heartbeat_interval=timedelta(milliseconds=1)))
    ids = await svc.queue.enqueue_many_async(
        [Task(func=ref("add"), func_args=[i, 1]) for i in range(1500)]
    )
    worker = make_worker(svc, concurrency=50)
    with anyio.fail_after(DEADLINE * 4):
        await worker.run_until_complete_async()
    assert await svc.events.get_events_async(event_type=EventType.ERROR) == []
    stats = await svc.queue.stats_async()
    assert stats["default"].get("completed") == len(ids), stats


async def test_a_heartbeat_with_an_earlier_attempts_lease_does_not_stop_the_retry(
    svc: Services, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A heartbeat reads the leases it renews, then waits its turn behind the
    # worker's outcome writes. Meanwhile a task may fail, be retried and be claimed
    # here again under a new lease: the heartbeat then finds the earlier lease gone,
    # and must not stop the retry that runs under the new one (it was marked lost
    # and cancelled: a CI run's retried task never finished).
    key = f"retry-lease-{uuid.uuid4().hex}"
    task_id = await svc.queue.enqueue_async(ref("block_until_released"), [key])
    worker = make_worker(svc, executor="thread")
    await worker.start_async()
    try:

        async def running() -> bool:
            return worker.get_stats().running == 1 and (
                await status_of(svc, task_id) is TaskStatus.RUNNING
            )

        await wait_until(running, "the task to run")
        with monkeypatch.context() as patched:
            patched.setattr(worker, "_leases", lambda: {task_id: "an-earlier-attempts-lease"})
            assert await worker._heartbeat()  # the earlier lease is not held
        worker_tasks.release(key)

        await wait_for_status(
            svc, task_id, TaskStatus.COMPLETED, "the task to complete under its own lease"
        )
    finally:
        worker_tasks.release(key)
        await worker.stop_async(grace_period=5.0)
    assert worker.get_stats().lost == 0
    assert (await must_result(svc, task_id)).result == "late result"


async def test_leases_hold_while_a_stopping_worker_lets_tasks_finish(
    open_services: ServicesFactory,
) -> None:
    # A 3 s lease renewed every 0.2 s: a 2 s lease once expired in a loaded CI run
    # on PostgreSQL (no renewal landed for 2 s; not seen again in 30 loaded reruns).
    svc = await open_services(
        Settings(lease_duration=timedelta(seconds=3), heartbeat_interval=timedelta(seconds=0.2))
    )
    task_id = await svc.queue.enqueue_async(ref("sleep_async"), [6.5, "finished"])
    worker = make_worker(svc)
    await worker.start_async()

    async def running() -> bool:
        return await status_of(svc, task_id) is TaskStatus.RUNNING

    await wait_until(running, "the task to start")
    recovered = 0

    async def sweep_while_stopping() -> None:
        # Maintenance elsewhere keeps looking for expired leases meanwhile (a lease
        # that expired and was recovered ends the look: the task is pending again).
        nonlocal recovered
        while not recovered and not (await must_task(svc, task_id)).is_final:
            recovered += await svc.queue.recover_expired_leases_async()
            await anyio.sleep(0.05)

    with anyio.fail_after(DEADLINE):
        async with anyio.create_task_group() as group:
            group.start_soon(sweep_while_stopping)
            # The 3 s lease must outlive the 6.5 s task within the 15 s grace period.
            await worker.stop_async(grace_period=15)

    assert recovered == 0, "the lease expired while the stopping worker ran the task"
    assert await status_of(svc, task_id) is TaskStatus.COMPLETED
    assert (await must_result(svc, task_id)).result == "finished"
    assert worker.get_stats().lost == 0


# --- slots and adaptive prefetch ----------------------------------------------------------


async def test_a_finished_function_frees_its_slot_before_its_outcome_commits(
    svc: Services, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    log = tmp_path / "ran"
    ids = await svc.queue.enqueue_many_async(
        [svc.queue.build_task(ref("record_sync"), [str(log), label]) for label in "ab"]
    )
    worker = make_worker(svc, concurrency=1, prefetch=1)
    gate = asyncio.Event()
    complete = worker.queue.settle_completions_async

    async def held(*args: Any, **kwargs: Any) -> list[TaskStatus | None]:
        await gate.wait()
        return await complete(*args, **kwargs)

    monkeypatch.setattr(worker.queue, "settle_completions_async", held)
    await worker.start_async()
    try:

        async def both_ran() -> bool:
            return len(worker_tasks.read_records(log)) == 2

        # One slot, and the first outcome cannot commit yet: the second task
        # still runs, because a returned function no longer holds its slot.
        await wait_until(both_ran, "both functions to run while the first outcome is held")
        assert [await status_of(svc, x) for x in ids] == [TaskStatus.RUNNING] * 2
        gate.set()

        async def completed() -> bool:
            return all([await status_of(svc, x) is TaskStatus.COMPLETED for x in ids])

        await wait_until(completed, "both outcomes to commit")
    finally:
        gate.set()
        await worker.stop_async(grace_period=1.0)


async def test_queued_sync_calls_never_run_more_than_the_slots(svc: Services) -> None:
    worker_tasks.overlap_peak = 0
    await svc.queue.enqueue_many_async(
        [svc.queue.build_task(ref("overlap_probe"), [0.002]) for _ in range(60)]
    )
    # prefetch=4 lets two calls wait in the pool's queue beside the two running.
    stats = await make_worker(svc, concurrency=2, prefetch=4).run_until_complete_async()
    assert stats.completed == 60
    assert worker_tasks.overlap_peak == 2  # both slots used, never more


async def test_sync_calls_never_queue_beside_running_async_ones(svc: Services) -> None:
    worker_tasks.overlap_peak = 0
    await svc.queue.enqueue_many_async(
        [
            svc.queue.build_task(ref(name), [0.005])
            for _ in range(20)
            for name in ("overlap_probe_async", "overlap_probe")
        ]
    )
    stats = await make_worker(svc, concurrency=2, prefetch=4).run_until_complete_async()
    assert stats.completed == 40
    assert worker_tasks.overlap_peak == 2  # async and sync functions together, never more


async def test_a_module_that_fails_to_import_fails_its_task_and_the_worker_goes_on(
    svc: Services,
) -> None:
    broken = await svc.queue.enqueue_async(
        "tests.broken_tasks:never_runs", priority=10, max_retries=0
    )
    fine = await svc.queue.enqueue_async(ref("add_sync"), [2, 3])
    worker = make_worker(svc, also_allow=("tests.broken_tasks",), concurrency=2, prefetch=4)
    with anyio.fail_after(DEADLINE):
        stats = await worker.run_until_complete_async()
    assert (stats.completed, stats.failed, stats.running) == (1, 1, 0)
    assert await status_of(svc, broken) is TaskStatus.FAILED
    error = await must_result(svc, broken)
    assert error.error_type == "KeyError" and "OMNIQ_TEST_SETTING" in (error.error or "")
    assert (await must_result(svc, fine)).result["sum"] == 5


@pytest.mark.parametrize("func", ["raises_cancelled", "raises_cancelled_sync"])
async def test_a_task_raising_cancelled_error_itself_fails_and_is_retried(
    svc: Services, func: str
) -> None:
    # Nobody cancelled it: the attempt failed like any other, it is not left running.
    task_id = await svc.queue.enqueue_async(ref(func), max_retries=1, retry_delay=0)
    fine = await svc.queue.enqueue_async(ref("add_sync"), [2, 3])
    worker = make_worker(svc, concurrency=2)
    with anyio.fail_after(DEADLINE):
        stats = await worker.run_until_complete_async()
    assert (stats.completed, stats.retried, stats.failed, stats.lost) == (1, 1, 1, 0)
    task = await must_task(svc, task_id)
    assert (task.status, task.attempts, task.lease_token) == (TaskStatus.FAILED, 2, None)
    error = await must_result(svc, task_id)
    assert error.error_type == "CancelledError" and "raised by the task" in (error.error or "")
    assert (await must_result(svc, fine)).result["sum"] == 5


async def test_a_thread_stuck_past_its_timeout_does_not_hold_up_the_next_task(
    svc: Services,
) -> None:
    key = f"stuck-{uuid.uuid4()}"
    stuck = await svc.queue.enqueue_async(
        ref("block_until_released"), [key], timeout=0.2, priority=10, max_retries=0
    )
    after = await svc.queue.enqueue_async(ref("add_sync"), [4, 5])
    worker = make_worker(svc, concurrency=1, prefetch=1)
    try:
        with anyio.fail_after(DEADLINE):
            stats = await worker.run_until_complete_async()
        # The one slot's thread is still blocked, yet the next task ran in another.
        assert not worker_tasks.has_finished(key)
    finally:
        worker_tasks.release(key)
    assert (stats.completed, stats.failed) == (1, 1)
    assert (await must_result(svc, stuck)).error_type == "TaskTimeout"
    assert (await must_result(svc, after)).result["sum"] == 9


async def test_a_sync_task_still_in_its_thread_after_the_grace_period_is_not_released(
    svc: Services,
) -> None:
    # Its thread cannot be stopped: released, the task ran again beside it (a
    # second worker took it at once). It stays running under its lease instead.
    key = f"left-{uuid.uuid4()}"
    task_id = await svc.queue.enqueue_async(ref("block_then_fail"), [key])
    worker = make_worker(svc, concurrency=1)
    await worker.start_async()
    try:

        async def started() -> bool:
            return worker_tasks.has_started(key)

        await wait_until(started, "the sync task to start in its thread")
        await worker.stop_async(grace_period=0.2)
        assert await status_of(svc, task_id) is TaskStatus.RUNNING
        other = make_worker(svc, concurrency=1)
        await other.run_until_complete_async()
        assert other.get_stats().completed == 0  # it did not run the task again
        assert await status_of(svc, task_id) is TaskStatus.RUNNING
    finally:
        worker_tasks.release(key)


async def test_a_sync_task_waiting_for_a_thread_counts_its_timeout_from_its_start(
    svc: Services,
) -> None:
    key = f"ahead-{uuid.uuid4()}"
    blockers = [
        await svc.queue.enqueue_async(ref("block_until_released"), [key], priority=10)
        for _ in range(2)
    ]
    quick = await svc.queue.enqueue_async(ref("add_sync"), [1, 2], timeout=0.3)
    cancelled = await svc.queue.enqueue_async(ref("add_sync"), [3, 4], priority=-1)
    # Two slots, prefetch 2: both quick tasks wait in the pool's queue behind the blockers.
    worker = make_worker(svc, concurrency=2, prefetch=2)
    await worker.start_async()
    try:

        async def queued() -> bool:
            statuses = [await status_of(svc, x) for x in (*blockers, quick, cancelled)]
            return worker.get_stats().running == 4 and statuses == [TaskStatus.RUNNING] * 4

        await wait_until(queued, "both quick tasks queued in the pool behind the blockers")
        # A call still waiting for a thread can be cancelled: it never runs.
        assert await svc.queue.cancel_async(cancelled)

        async def was_cancelled() -> bool:
            return await status_of(svc, cancelled) is TaskStatus.CANCELLED

        await wait_until(was_cancelled, "the queued call to be cancelled")
        # The quick task now waits longer than its 0.3 s timeout, which has not
        # started: it counts from when a thread runs the function.
        waited_from = time.monotonic()
        await wait_until(
            lambda: _true(time.monotonic() - waited_from >= 0.6), "0.6 s to pass", timeout=5
        )
        assert await status_of(svc, quick) is TaskStatus.RUNNING
        assert not await events_of(svc, quick, EventType.EXECUTING)  # not started yet
        released_at = utcnow()
        worker_tasks.release(key)

        async def done() -> bool:
            ids = (*blockers, quick)
            return all([await status_of(svc, x) is TaskStatus.COMPLETED for x in ids])

        await wait_until(done, "the tasks to complete once the blockers return")
    finally:
        worker_tasks.release(key)
        await worker.stop_async(grace_period=5.0)
    assert (await must_result(svc, quick)).result["sum"] == 3
    (executing,) = await events_of(svc, quick, EventType.EXECUTING)
    assert executing.timestamp >= released_at  # logged when the function started
    assert not await events_of(svc, cancelled, EventType.EXECUTING)
    assert (await must_result(svc, cancelled)).status is ResultStatus.CANCELLED


async def test_adaptive_prefetch_follows_how_fast_tasks_finish(svc: Services) -> None:
    worker = make_worker(svc, concurrency=4)
    assert worker.prefetch is None
    assert worker._prefetch_now() == 0  # nothing ran yet: claim only free slots
    quick = 0

    async def quick_tasks_ran() -> bool:
        # A stall of the machine weighs in the running mean for a while: on a
        # busy one, quick tasks may take more than one round to be seen as quick.
        nonlocal quick
        await svc.queue.enqueue_many_async(
            [svc.queue.build_task(ref("add_sync"), [i, i]) for i in range(50)]
        )
        quick += 50
        stats = await worker.run_until_complete_async()
        assert stats.completed == quick
        return worker._prefetch_now() > 0

    # Quick tasks: hold more than the free slots, at most 30x concurrency.
    await wait_until(quick_tasks_ran, "quick tasks to raise the prefetch above the free slots")
    assert worker._prefetch_now() <= 120

    await svc.queue.enqueue_many_async(
        [svc.queue.build_task(ref("sleep_async"), [0.05]) for _ in range(20)]
    )
    stats = await worker.run_until_complete_async()
    assert stats.completed == quick + 20
    # 4 slots x 20 ms horizon / ~50 ms per task: nothing is hoarded.
    assert worker._prefetch_now() <= 1


async def test_adaptive_prefetch_is_capped_by_concurrency_and_in_all(svc: Services) -> None:
    few, many = make_worker(svc, concurrency=4), make_worker(svc, concurrency=100)
    for worker in (few, many):
        worker._mean_run = 1e-9  # as quick as tasks get
    assert few._prefetch_now() == 120  # 30x concurrency
    assert many._prefetch_now() == 1000  # not 3,000: memory stays flat


async def test_a_fixed_prefetch_is_kept_and_a_bad_one_is_refused(svc: Services) -> None:
    assert make_worker(svc, prefetch=3)._prefetch_now() == 3
    for bad in (-1, 1.5, True, "2"):
        with pytest.raises(OmniQError, match="prefetch"):
            make_worker(svc, prefetch=bad)


async def test_an_unexpected_claim_error_is_reported_and_the_worker_goes_on(
    svc: Services, monkeypatch: pytest.MonkeyPatch
) -> None:
    task_id = await svc.queue.enqueue_async(ref("add_sync"), [2, 3])
    worker = make_worker(svc, poll_interval=0.05)
    claim = worker.queue.dequeue_many_async
    calls = 0

    async def flaky_claim(*args: Any, **kwargs: Any) -> list[Task]:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise RuntimeError("driver blew up")
        return await claim(*args, **kwargs)

    monkeypatch.setattr(worker.queue, "dequeue_many_async", flaky_claim)
    await worker.start_async()
    try:

        async def done() -> bool:
            return await status_of(svc, task_id) is TaskStatus.COMPLETED

        await wait_until(done, "the task to complete after the failed claim")
    finally:
        await worker.stop_async(grace_period=1.0)
    errors = await svc.events.get_events_async(event_type=EventType.ERROR)
    assert any("claim failed" in (e.message or "") for e in errors)
    assert any("driver blew up" in (e.error or "") for e in errors)


async def test_shutdown_releases_prefetched_tasks_without_running_them(
    svc: Services, tmp_path: Path
) -> None:
    log = tmp_path / "ran"
    first = await svc.queue.enqueue_async(
        ref("started_and_finished_sync"), [str(log), "a", 2.0], priority=10
    )
    rest = await svc.queue.enqueue_many_async(
        [svc.queue.build_task(ref("record_sync"), [str(log), label]) for label in "bc"]
    )
    worker = make_worker(svc, concurrency=1, prefetch=2, run_maintenance=True)
    await worker.start_async()
    try:

        async def started() -> bool:
            statuses = {await status_of(svc, x) for x in [first, *rest]}
            return ["start", "a"] in worker_tasks.read_records(log) and statuses == {
                TaskStatus.RUNNING
            }

        await wait_until(started, "the first task to start with the other two prefetched")
    finally:
        await worker.stop_async(grace_period=5.0)
    assert await status_of(svc, first) is TaskStatus.COMPLETED
    for task_id in rest:
        task = await must_task(svc, task_id)
        assert task.status is TaskStatus.PENDING and task.attempts == 0
    assert worker_tasks.read_records(log) == [["start", "a"], ["end", "a"]]


async def test_process_task_refuses_a_task_it_does_not_hold_before_running_it(
    svc: Services, tmp_path: Path
) -> None:
    # Before, it ran the function (side effects) and then dropped the outcome as
    # "lease lost": a pending task given to it later ran a second time.
    worker = make_worker(svc)
    log = tmp_path / "runs.log"
    task_id = await svc.queue.enqueue_async(ref("record_sync"), [str(log), "x"])
    pending = await must_task(svc, task_id)
    with pytest.raises(LeaseLost, match="pending"):
        await worker.process_task_async(pending)
    never = Task(func=ref("record_sync"), func_args=(str(log), "y"))
    with pytest.raises(LeaseLost, match="not enqueued"):
        await worker.process_task_async(never)
    claimed = await svc.queue.dequeue_async(worker_id="someone-else")
    assert claimed is not None
    stale = attrs.evolve(claimed, lease_token="an-old-lease")
    with pytest.raises(LeaseLost, match="running"):
        await worker.process_task_async(stale)
    assert not log.exists()  # nothing ran
    await worker.process_task_async(claimed)  # the holder's record runs
    assert [label for label, _pid in worker_tasks.read_records(log)] == ["x"]


async def test_process_task_runs_a_claimed_task_without_the_worker_loop(svc: Services) -> None:
    worker = make_worker(svc)
    task_id = await svc.queue.enqueue_async(ref("add_sync"), [20, 22])
    claimed = await svc.queue.dequeue_async(worker_id=worker.worker_id)
    assert claimed is not None and claimed.id == task_id
    result = await worker.process_task_async(claimed)
    assert result is not None and result.result["sum"] == 42
    assert (await must_result(svc, task_id)).result["sum"] == 42
    assert worker.get_stats().completed == 1 and worker.get_stats().running == 0
    kinds = [e.event_type for e in await svc.events.get_events_async(task_id=task_id)]
    assert EventType.EXECUTING in kinds and EventType.COMPLETED in kinds
