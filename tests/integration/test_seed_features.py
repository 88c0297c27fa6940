"""The seed's features on the services, on every engine: functions as Task.func,
attempt history, result listing, schedule end and metadata."""

from __future__ import annotations

import uuid
from datetime import timedelta
from typing import Any

import attrs
import pytest

from omniq import AsyncOmniQ
from omniq._time import utcnow
from omniq.errors import TaskNotFound, ValidationError
from omniq.models import (
    ResultStatus,
    Schedule,
    ScheduleStatus,
    Settings,
    Task,
    TaskResult,
    TaskStatus,
)
from omniq.services import Services
from omniq.services.scheduler import Scheduler
from omniq.worker import Worker
from tests import seed_tasks

pytestmark = pytest.mark.anyio


def worker(svc: Services, **options: Any) -> Worker:
    """A worker with no registry or allow-list of its own: only process-wide functions."""
    return Worker(
        svc.queue,
        svc.results,
        svc.events,
        run_scheduler=False,
        run_maintenance=False,
        poll_interval=0.05,
        **options,
    )


async def test_a_function_passed_as_task_func_is_run_by_this_process_workers(
    svc: Services,
) -> None:
    task = Task(func=seed_tasks.seed_add, func_args=[2, 3])
    assert task.func == "tests.seed_tasks:seed_add"
    task_id = await svc.queue.enqueue_async(task)
    stats = await worker(svc).run_until_complete_async()
    assert stats.completed == 1
    result = await svc.results.get_async(task_id)
    assert result is not None and result.result == 5
    # A reference nobody handed over as a function is still refused.
    other = await svc.queue.enqueue_async(Task(func="tests.broken_tasks:anything", max_retries=0))
    await worker(svc).run_until_complete_async()
    stored = await svc.results.get_async(other)
    assert stored is not None and stored.status is ResultStatus.ERROR
    assert "not registered" in (stored.error or "")


async def test_each_failed_attempt_keeps_its_error_record(svc: Services) -> None:
    key = uuid.uuid4().hex
    task = Task(
        func=seed_tasks.flaky,
        func_args=[2, key],
        max_retries=3,
        retry_delay=timedelta(0),
    )
    task_id = await svc.queue.enqueue_async(task)
    before = utcnow()
    await worker(svc).run_until_complete_async()
    final = await svc.queue.get_task_async(task_id)
    assert final is not None and final.status is TaskStatus.COMPLETED
    attempts = await svc.queue.get_attempts_async(task_id)
    assert [a.attempt for a in attempts] == [1, 2]
    for n, attempt in enumerate(attempts, start=1):
        assert attempt.task_id == task_id
        assert attempt.error.type == "ValueError"
        assert attempt.error.message == f"attempt {n} of {key} failed"
        assert attempt.error.traceback and "raise ValueError" in attempt.error.traceback
        assert attempt.error.attempt == n
        assert attempt.will_retry and attempt.error.retryable
        assert attempt.started_at is not None and before <= attempt.started_at
        assert attempt.started_at <= attempt.finished_at == attempt.error.at
        assert attempt.worker_id


async def test_the_last_failed_attempt_is_not_retried_and_matches_the_result(
    svc: Services,
) -> None:
    task_id = await svc.queue.enqueue_async(
        Task(func=seed_tasks.always_fails, max_retries=1, retry_delay=timedelta(0))
    )
    await worker(svc).run_until_complete_async()
    attempts = await svc.queue.get_attempts_async(task_id)
    assert [(a.attempt, a.will_retry) for a in attempts] == [(1, True), (2, False)]
    result = await svc.results.get_async(task_id)
    assert result is not None and result.task_error is not None
    assert result.task_error.type == attempts[-1].error.type == "RuntimeError"
    assert result.task_error.message == attempts[-1].error.message == "always"
    assert (
        await svc.queue.get_attempts_async(
            await svc.queue.enqueue_async(Task(func=seed_tasks.seed_add, func_args=[1, 1]))
        )
        == []
    )
    with pytest.raises(TaskNotFound):
        await svc.queue.get_attempts_async("no-such-task")


async def _stored(svc: Services, func: Any, status: ResultStatus, **task_options: Any) -> str:
    task = Task(func=func, **task_options)
    await svc.queue.enqueue_async(task)
    await svc.results.store_async(
        TaskResult(
            task_id=task.id,
            status=status,
            result=1,
            schedule_id=task_options.get("schedule_id"),
        )
    )
    return task.id


async def test_results_are_listed_with_filters_and_paging(svc: Services) -> None:
    ok1 = await _stored(svc, seed_tasks.seed_add, ResultStatus.SUCCESS, name="adder")
    middle = utcnow()
    ok2 = await _stored(svc, seed_tasks.seed_add, ResultStatus.SUCCESS)
    bad = await _stored(svc, seed_tasks.always_fails, ResultStatus.ERROR)
    later = utcnow()
    listed = await svc.results.list_results_async()
    assert [r.task_id for r in listed] == [bad, ok2, ok1]  # newest first
    assert [r.task_id for r in await svc.results.list_results_async(status="error")] == [bad]
    assert {
        r.task_id for r in await svc.results.list_results_async(status=["success", "error"])
    } == {ok1, ok2, bad}
    by_func = await svc.results.list_results_async(func=seed_tasks.seed_add)
    assert [r.task_id for r in by_func] == [ok2, ok1]
    by_ref = await svc.results.get_results_async(func="tests.seed_tasks:always_fails")
    assert [r.task_id for r in by_ref] == [bad]
    assert [r.task_id for r in await svc.results.list_results_async(task_name="adder")] == [ok1]
    since = await svc.results.list_results_async(start_time=middle, end_time=later)
    assert [r.task_id for r in since] == [bad, ok2]
    assert [r.task_id for r in await svc.results.list_results_async(limit=1, offset=1)] == [ok2]
    assert await svc.results.list_results_async(end_time=middle - timedelta(hours=1)) == []
    with pytest.raises(ValidationError, match=r"^status: unknown status 'done'"):
        await svc.results.list_results_async(status="done")
    with pytest.raises(ValidationError, match=r"^limit: "):
        await svc.results.list_results_async(limit=-1)
    with pytest.raises(ValidationError, match=r"^start_time: naive"):
        await svc.results.list_results_async(start_time=middle.replace(tzinfo=None))
    with pytest.raises(ValidationError, match=r"^func: "):
        await svc.results.list_results_async(func=lambda: None)


async def test_results_are_listed_by_schedule(svc: Services) -> None:
    at = svc.storage.now()
    schedule_id = await svc.queue.schedule_async(
        Schedule(func=seed_tasks.seed_add, func_args=[1, 2], schedule_type="timestamp", run_at=at)
    )
    fired = await Scheduler(svc.storage, svc.queue).fire_due_async(now=at)
    assert fired == 1
    await worker(svc).run_until_complete_async()
    await _stored(svc, seed_tasks.seed_add, ResultStatus.SUCCESS)  # not the schedule's
    listed = await svc.results.list_results_async(schedule_id=schedule_id)
    assert len(listed) == 1 and listed[0].result == 3 and listed[0].schedule_id == schedule_id


async def test_a_schedule_keeps_its_metadata_and_completes_at_its_end(svc: Services) -> None:
    now = svc.storage.now()
    schedule_id = await svc.queue.schedule_async(
        Schedule(
            func=seed_tasks.seed_add,
            func_args=[1, 1],
            schedule_type="interval",
            interval=timedelta(minutes=10),
            end_at=now + timedelta(minutes=25),
            metadata={"team": "ops", "tags": ["a", 1]},
        )
    )
    stored = await svc.queue.get_schedule_async(schedule_id)
    assert stored is not None and stored.next_run_at is not None
    assert stored.metadata == {"team": "ops", "tags": ["a", 1]}
    assert stored.end_at == now + timedelta(minutes=25)
    first = stored.next_run_at
    scheduler = Scheduler(svc.storage, svc.queue)
    assert await scheduler.fire_due_async(now=first) == 1
    after_first = await svc.queue.get_schedule_async(schedule_id)
    assert after_first is not None and after_first.status is ScheduleStatus.ACTIVE
    # The run at +20 min is the last before end_at (+25 min): then it completes.
    assert await scheduler.fire_due_async(now=first + timedelta(minutes=10)) == 1
    done = await svc.queue.get_schedule_async(schedule_id)
    assert done is not None
    assert (done.status, done.next_run_at, done.run_count) == (ScheduleStatus.COMPLETED, None, 2)
    assert await scheduler.fire_due_async(now=now + timedelta(hours=5)) == 0
    updated = await svc.queue.update_schedule_async(schedule_id, metadata={"team": "dev"})
    assert updated.metadata == {"team": "dev"}


async def test_end_at_before_the_first_run_is_refused_and_moving_it_back_completes(
    svc: Services,
) -> None:
    now = svc.storage.now()
    template: dict[str, Any] = {
        "func": seed_tasks.seed_add,
        "schedule_type": "interval",
        "interval": timedelta(hours=1),
    }
    with pytest.raises(ValidationError, match=r"^end_at: .* comes before the first run"):
        await svc.queue.schedule_async(Schedule(**template, end_at=now + timedelta(minutes=5)))
    schedule_id = await svc.queue.schedule_async(Schedule(**template))
    changed = await svc.queue.update_schedule_async(schedule_id, end_at=now + timedelta(minutes=5))
    assert changed.status is ScheduleStatus.COMPLETED and changed.next_run_at is None


async def test_the_facade_lists_results_shows_attempts_and_schedules_with_an_end(
    db_url: str,
) -> None:
    async with AsyncOmniQ(
        "facade", db_url, settings=Settings(default_retry_delay=timedelta(0))
    ) as oq:
        bad = await oq.enqueue_async(seed_tasks.always_fails, max_retries=2)
        good = await oq.enqueue_async(seed_tasks.seed_add, [1, 2], name="sum")
        await oq.run_worker_async(executor="thread")
        attempts = await oq.get_attempts_async(bad)
        assert [(a.attempt, a.will_retry) for a in attempts] == [(1, True), (2, True), (3, False)]
        assert [r.task_id for r in await oq.list_results_async(status="error")] == [bad]
        assert [r.task_id for r in await oq.list_results_async(task_name="sum")] == [good]
        end = utcnow() + timedelta(days=1)
        schedule_id = await oq.schedule_async(
            seed_tasks.seed_add, [1, 1], interval=3600, end_at=end, metadata={"k": "v"}
        )
        schedule = await oq.get_schedule_async(schedule_id)
        assert schedule is not None
        assert (schedule.end_at, schedule.metadata) == (end, {"k": "v"})
        with pytest.raises(ValidationError, match=r"^end_at: naive"):
            await oq.schedule_async(
                seed_tasks.seed_add, interval=3600, end_at=end.replace(tzinfo=None)
            )


async def test_records_given_to_the_update_methods_are_written_as_they_hold(
    svc: Services,
) -> None:
    # The seed's update_task_async(task), update_schedule_async(schedule) and
    # results.update_async(result): before, each failed with a DatabaseError about
    # a value it could not bind.
    task_id = await svc.queue.enqueue_async(seed_tasks.seed_add, [1, 2])
    task = await svc.queue.get_task_async(task_id)
    assert task is not None
    updated = await svc.queue.update_task_async(attrs.evolve(task, priority=7, max_retries=1))
    assert (updated.priority, updated.max_retries) == (7, 1)
    with pytest.raises(ValidationError, match="not both"):
        await svc.queue.update_task_async(task, priority=1)
    with pytest.raises(ValidationError, match="task_id"):
        await svc.queue.update_task_async(5)  # type: ignore[arg-type]

    schedule_id = await svc.queue.schedule_async(
        Schedule(func=seed_tasks.seed_add, schedule_type="interval", interval=timedelta(minutes=5))
    )
    schedule = await svc.queue.get_schedule_async(schedule_id)
    assert schedule is not None
    changed = await svc.queue.update_schedule_async(
        attrs.evolve(schedule, interval=timedelta(minutes=1), description="every minute")
    )
    assert changed.interval == timedelta(minutes=1) and changed.description == "every minute"
    assert changed.run_count == schedule.run_count and changed.status is schedule.status

    result = TaskResult(task_id=task_id, status=ResultStatus.SUCCESS, result=3)
    assert await svc.results.update_async(result) == result
    stored = await svc.results.get_async(task_id)
    assert stored is not None and stored.result == 3
