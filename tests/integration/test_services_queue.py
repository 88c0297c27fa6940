"""TaskQueue contract, run on every engine: enqueue, claim, dependencies, unique keys,
user and worker transitions, schedules CRUD.

Every transition is checked together with the event it must leave behind
(DESIGN.md §2.1) and, for worker transitions, its lease fencing (§2.3).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta
from typing import Any

import anyio
import attrs
import pytest
import sqlalchemy as sa

from omniq._time import utcnow
from omniq.db import schema
from omniq.db.engine import create_engine
from omniq.errors import (
    DuplicateTask,
    InvalidTransition,
    ScheduleNotFound,
    SerializationError,
    TaskNotFound,
    ValidationError,
)
from omniq.models import (
    EventLevel,
    EventType,
    ResultStatus,
    Schedule,
    ScheduleStatus,
    Settings,
    Task,
    TaskStatus,
)
from omniq.services import ErrorInfo, Services, timing
from tests.waiting import wait_until, waits_for_a_lock

pytestmark = pytest.mark.anyio

FUNC = "tests.helpers:func"
HOUR = timedelta(hours=1)
DEADLINE = 30.0  # seconds: a wait that should take milliseconds

#: The ``open_services`` fixture (tests/integration/conftest.py).
ServicesFactory = Callable[..., Awaitable[Services]]


# --- helpers ---------------------------------------------------------------------------


async def must_get(svc: Services, task_id: str) -> Task:
    task = await svc.queue.get_task_async(task_id)
    assert task is not None, f"task {task_id} vanished"
    return task


async def event_types(svc: Services, task_id: str) -> list[EventType]:
    """The task's events, oldest first."""
    events = await svc.events.get_events_async(task_id=task_id, limit=1000)
    return [e.event_type for e in reversed(events)]


async def all_tasks(svc: Services) -> list[Task]:
    return await svc.queue.list_tasks_async(limit=10_000)


async def event_count(svc: Services) -> int:
    stats = await svc.events.get_stats_async()
    return stats["total"]["events"]


async def claim_one(svc: Services, task_id: str | None = None, **kwargs: Any) -> Task:
    """Claim the next task; when ``task_id`` is given, it must be that one."""
    task = await svc.queue.dequeue_async(**kwargs)
    assert task is not None, "expected a claimable task"
    if task_id is not None:
        assert task.id == task_id
    return task


async def expire_lease(svc: Services, task_id: str) -> None:
    """Move a running task's lease into the past (as if its worker died long ago)."""
    t = schema.tasks
    await svc.storage.write(
        lambda conn: conn.execute(
            sa.update(t)
            .where(t.c.id == task_id)
            .values(lease_expires_at=utcnow() - timedelta(minutes=5))
        )
    )


def pre_expired(svc: Services, **options: Any) -> Task:
    """A task whose TTL passed an hour ago (built, not written)."""
    task = svc.queue.build_task(FUNC, ttl=timedelta(minutes=1), **options)
    past = utcnow() - HOUR
    return attrs.evolve(task, created_at=past, run_at=past, expires_at=past)


def error_info(message: str = "kaput") -> ErrorInfo:
    try:
        raise RuntimeError(message)
    except RuntimeError as exc:
        return ErrorInfo.from_exception(exc)


def module_level_function(x: int) -> int:
    return x


# --- enqueue -----------------------------------------------------------------------------


async def test_enqueue_stores_reference_args_and_enqueued_event(svc: Services) -> None:
    task_id = await svc.queue.enqueue_async(FUNC, [1, "two", {"three": 3}], name="n")
    task = await must_get(svc, task_id)
    assert task.func == FUNC
    assert task.func_args == (1, "two", {"three": 3})
    assert task.func_kwargs == {}
    assert task.status is TaskStatus.PENDING
    assert task.queue_name == "default"
    assert task.name == "n"
    assert task.attempts == 0
    assert task.created_at.tzinfo is not None
    assert await event_types(svc, task_id) == [EventType.ENQUEUED]
    assert await svc.queue.size_async() == 1


async def test_enqueue_a_callable_stores_its_reference(svc: Services) -> None:
    task_id = await svc.queue.enqueue_async(module_level_function, [3])
    task = await must_get(svc, task_id)
    assert task.func.endswith(":module_level_function")
    assert task.func_args == (3,)


async def test_enqueue_dict_args_are_keyword_arguments(svc: Services) -> None:
    task_id = await svc.queue.enqueue_async(FUNC, {"x": 1, "y": [2, 3]})
    task = await must_get(svc, task_id)
    assert task.func_args == ()
    assert task.func_kwargs == {"x": 1, "y": [2, 3]}

    both = await svc.queue.enqueue_async(FUNC, [1], {"k": "v"})
    task = await must_get(svc, both)
    assert task.func_args == (1,)
    assert task.func_kwargs == {"k": "v"}

    with pytest.raises(ValidationError) as err:
        await svc.queue.enqueue_async(FUNC, {"x": 1}, {"y": 2})
    assert err.value.field == "func_args"
    assert len(await all_tasks(svc)) == 2


async def test_run_in_and_future_run_at_are_not_claimable(svc: Services) -> None:
    # run_in counts from the storage's clock (the database's on PostgreSQL), which may
    # differ from this machine's by a few microseconds: bound it by that clock.
    before = svc.storage.now()
    later = await svc.queue.enqueue_async(FUNC, run_in=3600)
    at = await svc.queue.enqueue_async(FUNC, run_at=utcnow() + timedelta(days=1))
    task = await must_get(svc, later)
    assert before + HOUR <= task.run_at <= svc.storage.now() + HOUR
    assert await svc.queue.dequeue_async() is None
    assert await svc.queue.dequeue_many_async(10) == []
    # Both still pending (a delay is not a state of its own).
    assert (await must_get(svc, later)).status is TaskStatus.PENDING
    assert (await must_get(svc, at)).status is TaskStatus.PENDING

    ready = await svc.queue.enqueue_async(FUNC, run_at=utcnow() - timedelta(seconds=5))
    claimed = await claim_one(svc, ready)
    assert claimed.status is TaskStatus.RUNNING
    assert await svc.queue.dequeue_async() is None


async def test_run_in_timedelta_and_both_delays_rejected(svc: Services) -> None:
    task_id = await svc.queue.enqueue_async(FUNC, run_in=timedelta(minutes=10))
    assert (await must_get(svc, task_id)).run_at > utcnow() + timedelta(minutes=9)
    with pytest.raises(ValidationError) as err:
        await svc.queue.enqueue_async(FUNC, run_in=1, run_at=utcnow())
    assert err.value.field == "run_at"
    with pytest.raises(ValidationError) as err:
        await svc.queue.enqueue_async(FUNC, run_in=-5)
    assert err.value.field == "run_in"
    assert len(await all_tasks(svc)) == 1


async def test_naive_run_at_is_rejected_naming_the_field(svc: Services) -> None:
    with pytest.raises(ValidationError) as err:
        await svc.queue.enqueue_async(FUNC, run_at=datetime(2030, 1, 1, 12, 0))
    assert err.value.field == "run_at"
    assert "run_at" in str(err.value)
    assert "naive" in str(err.value)
    assert await all_tasks(svc) == []
    assert await event_count(svc) == 0


async def test_priority_then_fifo_and_queue_order(svc: Services) -> None:
    q = svc.queue
    a_low = await q.enqueue_async(FUNC, queue_name="a", priority=0)
    a_high = await q.enqueue_async(FUNC, queue_name="a", priority=5)
    b_low1 = await q.enqueue_async(FUNC, queue_name="b", priority=-1)
    b_mid1 = await q.enqueue_async(FUNC, queue_name="b", priority=3)
    b_mid2 = await q.enqueue_async(FUNC, queue_name="b", priority=3)
    b_low2 = await q.enqueue_async(FUNC, queue_name="b", priority=-1)
    await q.enqueue_async(FUNC, queue_name="c", priority=100)

    claimed = await q.dequeue_many_async(10, queues=["b", "a"])
    # Queues listed first come first; within a queue priority desc, then FIFO.
    assert [x.id for x in claimed] == [b_mid1, b_mid2, b_low1, b_low2, a_high, a_low]
    assert all(x.status is TaskStatus.RUNNING and x.attempts == 1 for x in claimed)
    assert await q.dequeue_many_async(10, queues=["a", "b"]) == []
    assert await q.size_async("c") == 1


async def test_fifo_tie_break_one_at_a_time(svc: Services) -> None:
    ids = [await svc.queue.enqueue_async(FUNC, [i]) for i in range(6)]
    got = []
    for _ in ids:
        task = await claim_one(svc)
        got.append(task.id)
    assert got == ids
    assert await svc.queue.dequeue_async() is None


async def test_dequeue_many_claims_up_to_n(svc: Services) -> None:
    ids = [await svc.queue.enqueue_async(FUNC, [i]) for i in range(5)]
    first = await svc.queue.dequeue_many_async(3)
    assert [x.id for x in first] == ids[:3]
    rest = await svc.queue.dequeue_many_async(3)
    assert [x.id for x in rest] == ids[3:]
    tokens = {x.lease_token for x in first} | {x.lease_token for x in rest}
    assert None not in tokens
    with pytest.raises(ValidationError):
        await svc.queue.dequeue_many_async(0)


async def test_claim_writes_a_dequeued_event_with_worker(svc: Services) -> None:
    task_id = await svc.queue.enqueue_async(FUNC)
    task = await claim_one(svc, task_id, worker_id="w-1")
    assert task.worker_id == "w-1"
    assert task.lease_token
    assert task.lease_expires_at is not None
    assert task.lease_expires_at > utcnow()
    assert task.started_at is not None
    assert await event_types(svc, task_id) == [EventType.ENQUEUED, EventType.DEQUEUED]
    (dequeued,) = await svc.events.get_events_async(task_id=task_id, event_type="dequeued")
    assert dequeued.worker_id == "w-1"


async def test_enqueue_many_writes_all_in_one_go(svc: Services) -> None:
    tasks = [svc.queue.build_task(FUNC, [i]) for i in range(20)]
    ids = await svc.queue.enqueue_many_async(tasks)
    assert ids == [x.id for x in tasks]
    assert await svc.queue.size_async() == 20
    stats = await svc.events.get_stats_async()
    assert stats["by_type"] == {"enqueued": 20}
    assert await svc.queue.enqueue_many_async([]) == []


async def test_enqueue_many_with_unknown_dependency_writes_nothing(svc: Services) -> None:
    good = svc.queue.build_task(FUNC, [1])
    bad = svc.queue.build_task(FUNC, [2], depends_on=["no-such-task"])
    with pytest.raises(ValidationError) as err:
        await svc.queue.enqueue_many_async([good, bad])
    assert err.value.field == "depends_on"
    assert "no-such-task" in str(err.value)
    assert await all_tasks(svc) == []
    assert await event_count(svc) == 0


@pytest.mark.parametrize(
    "status",
    [TaskStatus.RUNNING, TaskStatus.COMPLETED, TaskStatus.FAILED, TaskStatus.WAITING],
)
async def test_a_task_record_of_another_state_is_refused_and_nothing_written(
    svc: Services, status: TaskStatus
) -> None:
    """A Task record given to enqueue (say ``attrs.evolve(task, status=...)``) must be
    new: stored ``running`` it was never run nor recovered, and its dependents waited
    forever; ``completed`` released them without a run. (``waiting`` needs
    dependencies.)"""
    odd = attrs.evolve(svc.queue.build_task(FUNC, [1]), status=status)
    dependent = svc.queue.build_task(FUNC, [2], depends_on=[odd.id])
    with pytest.raises(ValidationError) as err:
        await svc.queue.enqueue_many_async([odd, dependent])
    assert err.value.field == "status" and status.value in str(err.value)
    with pytest.raises(ValidationError):
        await svc.queue.enqueue_async(odd)
    assert await all_tasks(svc) == []
    assert await event_count(svc) == 0


async def test_enqueue_many_with_repeated_id_writes_nothing(svc: Services) -> None:
    a = svc.queue.build_task(FUNC, [1])
    b = attrs.evolve(svc.queue.build_task(FUNC, [2]), id=a.id)
    with pytest.raises(DuplicateTask):
        await svc.queue.enqueue_many_async([a, b])
    assert await all_tasks(svc) == []
    assert await event_count(svc) == 0


async def test_enqueue_many_with_existing_id_writes_nothing(svc: Services) -> None:
    existing = await svc.queue.enqueue_async(FUNC, [0])
    fresh = svc.queue.build_task(FUNC, [1])
    clash = svc.queue.build_task(FUNC, [2], task_id=existing)
    with pytest.raises(DuplicateTask):
        await svc.queue.enqueue_many_async([fresh, clash])
    assert [x.id for x in await all_tasks(svc)] == [existing]
    assert await event_count(svc) == 1


async def test_enqueue_many_rejects_dependency_cycle(svc: Services) -> None:
    a = svc.queue.build_task(FUNC, task_id="cyc-a", depends_on=["cyc-b"])
    b = svc.queue.build_task(FUNC, task_id="cyc-b", depends_on=["cyc-a"])
    with pytest.raises(ValidationError) as err:
        await svc.queue.enqueue_many_async([a, b])
    assert err.value.field == "depends_on"
    assert await all_tasks(svc) == []


@pytest.mark.parametrize(
    ("args", "kwargs"),
    # Sets are a payload type now (tests/unit/test_payload_types.py); a set of
    # objects and a naive datetime are not.
    [
        ([object()], None),
        (None, {"x": object()}),
        ([{1, object()}], None),
        ([datetime(2026, 1, 1)], None),
    ],
    ids=["arg", "kwarg", "set-of-objects", "naive-datetime"],
)
async def test_unserializable_arguments_raise_and_write_nothing(
    svc: Services, args: list[Any] | None, kwargs: dict[str, Any] | None
) -> None:
    with pytest.raises(SerializationError):
        await svc.queue.enqueue_async(FUNC, args, kwargs)
    with pytest.raises(SerializationError):
        await svc.queue.enqueue_async(FUNC, args, kwargs, unique_key="k")
    good = svc.queue.build_task(FUNC, [1])
    bad = svc.queue.build_task(FUNC, args, kwargs)
    with pytest.raises(SerializationError):
        await svc.queue.enqueue_many_async([good, bad])
    assert await all_tasks(svc) == []
    assert await event_count(svc) == 0


async def test_enqueue_rejects_bad_options_naming_the_field(svc: Services) -> None:
    with pytest.raises(ValidationError) as err:
        await svc.queue.enqueue_async("not a reference")
    assert err.value.field == "func"
    with pytest.raises(ValidationError) as err:
        await svc.queue.enqueue_async(FUNC, queue_name="q" * 201)
    assert err.value.field == "queue_name"
    with pytest.raises(ValidationError) as err:  # not quietly the default queue
        await svc.queue.enqueue_async(FUNC, queue_name="")
    assert err.value.field == "queue_name"
    with pytest.raises(ValidationError) as err:
        await svc.queue.enqueue_async(FUNC, depends_on="abc")
    assert err.value.field == "depends_on"
    assert await all_tasks(svc) == []


# --- dequeue with a timeout ------------------------------------------------------------


async def test_dequeue_timeout_returns_none_when_empty(svc: Services) -> None:
    start = time.monotonic()
    assert await svc.queue.dequeue_async(timeout=0.3) is None
    elapsed = time.monotonic() - start
    assert 0.25 <= elapsed < 5.0


@pytest.mark.parametrize("producer", ["same", "other"])
async def test_dequeue_returns_promptly_on_concurrent_enqueue(
    svc: Services, open_services: ServicesFactory, producer: str
) -> None:
    # "same": woken in-process; "other": another engine, found by polling.
    other = svc if producer == "same" else await open_services()

    async def produce() -> str:
        await asyncio.sleep(0.2)  # let the consumer start waiting first
        return await other.queue.enqueue_async(FUNC, ["late"])

    start = time.monotonic()
    got, task_id = await asyncio.gather(svc.queue.dequeue_async(timeout=5), produce())
    elapsed = time.monotonic() - start
    assert got is not None
    assert got.id == task_id
    assert got.func_args == ("late",)
    assert elapsed < 3.0, f"dequeue took {elapsed:.2f}s for a task enqueued after 0.2s"


# --- TTL ---------------------------------------------------------------------------------


async def test_task_past_its_ttl_expires_with_event_and_result(svc: Services) -> None:
    task = pre_expired(svc)
    await svc.queue.enqueue_many_async([task])
    assert await svc.queue.expire_due_async() == 1
    stored = await must_get(svc, task.id)
    assert stored.status is TaskStatus.EXPIRED
    assert stored.completed_at is not None
    assert await event_types(svc, task.id) == [EventType.ENQUEUED, EventType.EXPIRED]
    result = await svc.results.get_async(task.id)
    assert result is not None
    assert result.status is ResultStatus.EXPIRED
    assert await svc.queue.dequeue_async() is None
    assert await svc.queue.expire_due_async() == 0


async def test_expired_task_is_never_claimed(svc: Services) -> None:
    expired = pre_expired(svc)
    alive = svc.queue.build_task(FUNC, ttl=HOUR)
    await svc.queue.enqueue_many_async([expired, alive])
    claimed = await svc.queue.dequeue_many_async(10)
    assert [x.id for x in claimed] == [alive.id]
    await svc.queue.expire_due_async()
    assert (await must_get(svc, expired.id)).status is TaskStatus.EXPIRED
    assert EventType.DEQUEUED not in await event_types(svc, expired.id)


async def test_ttl_expiry_cancels_dependents(svc: Services) -> None:
    parent = pre_expired(svc)
    child = svc.queue.build_task(FUNC, depends_on=[parent.id])
    await svc.queue.enqueue_many_async([parent, child])
    assert (await must_get(svc, child.id)).status is TaskStatus.WAITING
    await svc.queue.expire_due_async()
    assert (await must_get(svc, child.id)).status is TaskStatus.CANCELLED
    assert await event_types(svc, child.id) == [EventType.ENQUEUED, EventType.CANCELLED]


# --- dependencies --------------------------------------------------------------------------


async def test_dependency_chain_runs_in_order(svc: Services) -> None:
    q = svc.queue
    a = await q.enqueue_async(FUNC, ["a"], max_retries=0)
    b = await q.enqueue_async(FUNC, ["b"], depends_on=[a])
    c = await q.enqueue_async(FUNC, ["c"], depends_on=[b])
    assert [(await must_get(svc, x)).status for x in (a, b, c)] == [
        TaskStatus.PENDING,
        TaskStatus.WAITING,
        TaskStatus.WAITING,
    ]
    order = []
    for expected in (a, b, c):
        claimed = await q.dequeue_many_async(10)
        assert [x.id for x in claimed] == [expected]
        order.append(claimed[0].func_args[0])
        assert await q.complete_async(claimed[0], claimed[0].func_args[0])
    assert order == ["a", "b", "c"]
    assert await q.dequeue_many_async(10) == []
    assert await event_types(svc, b) == [
        EventType.ENQUEUED,
        EventType.READY,
        EventType.DEQUEUED,
        EventType.COMPLETED,
    ]


async def test_fan_in_waits_for_every_dependency(svc: Services) -> None:
    q = svc.queue
    a = await q.enqueue_async(FUNC, ["a"])
    b = await q.enqueue_async(FUNC, ["b"])
    c = await q.enqueue_async(FUNC, ["c"], depends_on=[a, b])
    first = await claim_one(svc, a)
    second = await claim_one(svc, b)
    assert await q.dequeue_async() is None
    assert await q.complete_async(first)
    assert (await must_get(svc, c)).status is TaskStatus.WAITING
    assert await q.dequeue_async() is None
    assert await q.complete_async(second)
    assert (await must_get(svc, c)).status is TaskStatus.PENDING
    await claim_one(svc, c)


async def test_failure_cancels_dependents_in_cascade(svc: Services) -> None:
    q = svc.queue
    a = await q.enqueue_async(FUNC, ["a"], max_retries=0)
    b = await q.enqueue_async(FUNC, ["b"], depends_on=[a])
    c = await q.enqueue_async(FUNC, ["c"], depends_on=[b])
    independent = await q.enqueue_async(FUNC, ["x"], run_in=3600)
    running = await claim_one(svc, a)
    assert await q.fail_async(running, error_info()) is TaskStatus.FAILED

    for dependent in (b, c):
        task = await must_get(svc, dependent)
        assert task.status is TaskStatus.CANCELLED
        assert task.last_error is not None
        assert a in task.last_error
        assert await event_types(svc, dependent) == [EventType.ENQUEUED, EventType.CANCELLED]
        (event,) = await svc.events.get_events_async(task_id=dependent, event_type="cancelled")
        assert event.message is not None
        assert a in event.message
        assert event.level is EventLevel.WARNING
        result = await svc.results.get_async(dependent)
        assert result is not None
        assert result.status is ResultStatus.CANCELLED
        assert result.error is not None
        assert a in result.error
    assert (await must_get(svc, independent)).status is TaskStatus.PENDING


async def test_cancel_of_a_dependency_cancels_dependents(svc: Services) -> None:
    a = await svc.queue.enqueue_async(FUNC, ["a"])
    b = await svc.queue.enqueue_async(FUNC, ["b"], depends_on=[a])
    assert await svc.queue.cancel_async(a)
    task = await must_get(svc, b)
    assert task.status is TaskStatus.CANCELLED
    assert task.last_error is not None
    assert a in task.last_error


async def test_unknown_dependency_is_rejected(svc: Services) -> None:
    with pytest.raises(ValidationError) as err:
        await svc.queue.enqueue_async(FUNC, depends_on=["missing-id"])
    assert err.value.field == "depends_on"
    assert "missing-id" in str(err.value)
    assert await all_tasks(svc) == []
    assert await event_count(svc) == 0


async def test_depending_on_finished_tasks(svc: Services) -> None:
    q = svc.queue
    ok = await q.enqueue_async(FUNC, ["ok"])
    bad = await q.enqueue_async(FUNC, ["bad"], max_retries=0)
    assert await q.complete_async(await claim_one(svc, ok))
    assert await q.fail_async(await claim_one(svc, bad), error_info()) is TaskStatus.FAILED

    after_ok = await q.enqueue_async(FUNC, depends_on=[ok])
    assert (await must_get(svc, after_ok)).status is TaskStatus.PENDING
    await claim_one(svc, after_ok)

    after_bad = await q.enqueue_async(FUNC, depends_on=[bad])
    task = await must_get(svc, after_bad)
    assert task.status is TaskStatus.CANCELLED
    assert task.last_error is not None
    assert bad in task.last_error
    assert await event_types(svc, after_bad) == [EventType.CANCELLED]
    result = await svc.results.get_async(after_bad)
    assert result is not None
    assert result.status is ResultStatus.CANCELLED
    assert await q.dequeue_async() is None


async def test_dependencies_inside_one_batch(svc: Services) -> None:
    a = svc.queue.build_task(FUNC, ["a"])
    b = svc.queue.build_task(FUNC, ["b"], depends_on=[a.id])
    await svc.queue.enqueue_many_async([a, b])
    assert (await must_get(svc, b.id)).status is TaskStatus.WAITING
    assert await svc.queue.complete_async(await claim_one(svc, a.id))
    await claim_one(svc, b.id)


# --- unique keys ---------------------------------------------------------------------------


async def test_concurrent_producers_with_one_unique_key_make_one_task(
    svc: Services, open_services: ServicesFactory
) -> None:
    ids = await asyncio.gather(
        *(svc.queue.enqueue_async(FUNC, [i], unique_key="only-one") for i in range(50))
    )
    assert len(set(ids)) == 1
    tasks = await all_tasks(svc)
    assert [x.id for x in tasks] == [ids[0]]
    assert await event_count(svc) == 1


async def test_unique_key_across_separate_engines(
    svc: Services, open_services: ServicesFactory
) -> None:
    producers = [svc, *[await open_services() for _ in range(4)]]
    ids = await asyncio.gather(
        *(
            producers[i % len(producers)].queue.enqueue_async(FUNC, [i], unique_key="shared")
            for i in range(50)
        )
    )
    assert len(set(ids)) == 1
    assert [x.id for x in await all_tasks(svc)] == [ids[0]]
    assert await event_types(svc, ids[0]) == [EventType.ENQUEUED]


async def test_unique_key_duplicate_raise_and_key_freed_after_completion(svc: Services) -> None:
    q = svc.queue
    first = await q.enqueue_async(FUNC, unique_key="job")
    assert await q.enqueue_async(FUNC, unique_key="job") == first
    with pytest.raises(DuplicateTask) as err:
        await q.enqueue_async(FUNC, unique_key="job", on_duplicate="raise")
    assert err.value.existing_id == first
    # Still live while running.
    running = await claim_one(svc, first)
    assert await q.enqueue_async(FUNC, unique_key="job") == first
    assert await q.complete_async(running)
    second = await q.enqueue_async(FUNC, unique_key="job")
    assert second != first
    assert (await must_get(svc, second)).status is TaskStatus.PENDING
    # A cancelled task frees its key too.
    assert await q.cancel_async(second)
    third = await q.enqueue_async(FUNC, unique_key="job")
    assert third not in (first, second)
    assert len(await all_tasks(svc)) == 3


async def test_enqueue_many_unique_keys_return_existing(svc: Services) -> None:
    existing = await svc.queue.enqueue_async(FUNC, unique_key="k1")
    a = svc.queue.build_task(FUNC, unique_key="k1")
    b = svc.queue.build_task(FUNC, unique_key="k2")
    ids = await svc.queue.enqueue_many_async([a, b])
    assert ids == [existing, b.id]
    with pytest.raises(DuplicateTask):
        await svc.queue.enqueue_many_async(
            [svc.queue.build_task(FUNC), svc.queue.build_task(FUNC, unique_key="k2")],
            on_duplicate="raise",
        )
    assert len(await all_tasks(svc)) == 2


# --- user transitions ----------------------------------------------------------------------


async def test_cancel_pending_running_and_finished(svc: Services) -> None:
    q = svc.queue
    pending = await q.enqueue_async(FUNC, ["p"])
    running_id = await q.enqueue_async(FUNC, ["r"])
    done_id = await q.enqueue_async(FUNC, ["d"])

    assert await q.cancel_async(pending)
    task = await must_get(svc, pending)
    assert task.status is TaskStatus.CANCELLED
    assert task.completed_at is not None
    assert await event_types(svc, pending) == [EventType.ENQUEUED, EventType.CANCELLED]
    result = await svc.results.get_async(pending)
    assert result is not None
    assert result.status is ResultStatus.CANCELLED

    running = await claim_one(svc, running_id)
    assert await q.cancel_async(running_id)
    task = await must_get(svc, running_id)
    assert task.status is TaskStatus.RUNNING
    assert task.cancel_requested is True
    assert (await event_types(svc, running_id))[-1] is EventType.CANCEL_REQUESTED
    assert await svc.results.get_async(running_id) is None
    # The worker still owns it; its completion honours the request (result dropped).
    assert await q.complete_async(running) is False
    task = await must_get(svc, running_id)
    assert task.status is TaskStatus.CANCELLED
    assert (await event_types(svc, running_id))[-1] is EventType.CANCELLED

    assert await q.complete_async(await claim_one(svc, done_id))
    events_before = await event_count(svc)
    assert await q.cancel_async(done_id) is False
    assert await q.cancel_async(pending) is False
    assert await event_count(svc) == events_before
    with pytest.raises(TaskNotFound):
        await q.cancel_async("no-such-task")


@pytest.mark.parametrize("how", ["failed", "cancelled", "expired"])
async def test_requeue_of_dead_task(svc: Services, how: str) -> None:
    q = svc.queue
    if how == "expired":
        task = pre_expired(svc)
        await q.enqueue_many_async([task])
        await q.expire_due_async()
        task_id = task.id
    else:
        task_id = await q.enqueue_async(FUNC, max_retries=1, retry_delay=0)
        if how == "failed":
            await q.fail_async(await claim_one(svc, task_id), error_info())
            await q.fail_async(await claim_one(svc, task_id), error_info())
        else:
            await q.cancel_async(task_id)
    dead = await must_get(svc, task_id)
    assert dead.status is TaskStatus(how)
    assert await svc.results.get_async(task_id) is not None

    requeued = await q.requeue_async(task_id)
    assert requeued.status is TaskStatus.PENDING
    assert requeued.attempts == 0
    assert requeued.retry_count == 0
    assert requeued.completed_at is None
    assert requeued.last_error is None
    assert requeued.lease_token is None
    if how == "expired":
        assert requeued.expires_at is not None
        assert requeued.expires_at > utcnow()
    assert await svc.results.get_async(task_id) is None
    assert (await event_types(svc, task_id))[-1] is EventType.REQUEUED
    claimed = await claim_one(svc, task_id)
    assert claimed.attempts == 1


async def test_requeue_of_live_task_is_invalid(svc: Services) -> None:
    task_id = await svc.queue.enqueue_async(FUNC)
    with pytest.raises(InvalidTransition):
        await svc.queue.requeue_async(task_id)
    await claim_one(svc, task_id)
    with pytest.raises(InvalidTransition):
        await svc.queue.requeue_async(task_id)
    with pytest.raises(TaskNotFound):
        await svc.queue.requeue_async("nope")
    assert EventType.REQUEUED not in await event_types(svc, task_id)


async def test_requeue_with_future_run_at_and_naive_rejected(svc: Services) -> None:
    task_id = await svc.queue.enqueue_async(FUNC)
    await svc.queue.cancel_async(task_id)
    with pytest.raises(ValidationError) as err:
        await svc.queue.requeue_async(task_id, run_at=datetime(2030, 1, 1))
    assert err.value.field == "run_at"
    assert (await must_get(svc, task_id)).status is TaskStatus.CANCELLED
    await svc.queue.requeue_async(task_id, run_at=utcnow() + HOUR)
    assert await svc.queue.dequeue_async() is None


async def test_update_task_priority_and_run_at(svc: Services) -> None:
    q = svc.queue
    low = await q.enqueue_async(FUNC, ["low"])
    later = await q.enqueue_async(FUNC, ["later"], run_in=3600)
    high = await q.enqueue_async(FUNC, ["high"])

    updated = await q.update_task_async(high, priority=10)
    assert updated.priority == 10
    updated = await q.update_task_async(later, run_at=utcnow() - timedelta(seconds=1), priority=5)
    assert updated.priority == 5
    assert (await event_types(svc, later))[-1] is EventType.UPDATED
    (event,) = await svc.events.get_events_async(task_id=later, event_type=EventType.UPDATED)
    assert event.data is not None
    assert event.data["fields"] == ["priority", "run_at"]

    claimed = await q.dequeue_many_async(3)
    assert [x.id for x in claimed] == [high, later, low]


async def test_update_task_rejects_bad_changes(svc: Services) -> None:
    q = svc.queue
    task_id = await q.enqueue_async(FUNC)
    with pytest.raises(ValidationError) as err:
        await q.update_task_async(task_id, func="tests.helpers:other")
    assert err.value.field == "changes"
    with pytest.raises(ValidationError) as err:
        await q.update_task_async(task_id, status="completed")
    with pytest.raises(ValidationError) as err:
        await q.update_task_async(task_id, run_at=datetime(2030, 1, 1))
    assert err.value.field == "run_at"
    with pytest.raises(TaskNotFound):
        await q.update_task_async("nope", priority=1)
    await claim_one(svc, task_id)
    with pytest.raises(InvalidTransition):
        await q.update_task_async(task_id, priority=3)
    task = await must_get(svc, task_id)
    assert task.priority == 0
    assert EventType.UPDATED not in await event_types(svc, task_id)


async def test_update_task_ttl_recomputes_expiry(svc: Services) -> None:
    task_id = await svc.queue.enqueue_async(FUNC)
    created = (await must_get(svc, task_id)).created_at
    updated = await svc.queue.update_task_async(task_id, ttl=120)
    assert updated.ttl == timedelta(seconds=120)
    assert updated.expires_at == created + timedelta(seconds=120)
    updated = await svc.queue.update_task_async(task_id, ttl=None)
    assert updated.expires_at is None


async def test_delete_task(svc: Services) -> None:
    q = svc.queue
    task_id = await q.enqueue_async(FUNC)
    assert await q.delete_task_async(task_id)
    assert await q.get_task_async(task_id) is None
    assert await event_types(svc, task_id) == [EventType.ENQUEUED, EventType.DELETED]
    assert await q.delete_task_async(task_id) is False

    running = await q.enqueue_async(FUNC)
    await claim_one(svc, running)
    with pytest.raises(InvalidTransition):
        await q.delete_task_async(running)
    assert (await must_get(svc, running)).status is TaskStatus.RUNNING

    done = await q.enqueue_async(FUNC)
    assert await q.complete_async(await claim_one(svc, done), 1)
    assert await q.delete_task_async(done)
    assert await svc.results.get_async(done) is None


async def test_clear_removes_queued_tasks_of_one_queue(svc: Services) -> None:
    q = svc.queue
    for i in range(3):
        await q.enqueue_async(FUNC, [i], queue_name="a")
    waiting_parent = await q.enqueue_async(FUNC, queue_name="b")
    await q.enqueue_async(FUNC, queue_name="a", depends_on=[waiting_parent])
    running = await claim_one(svc, waiting_parent, queues=["b"])
    keep = await q.enqueue_async(FUNC, queue_name="b")

    assert await q.clear_async("a") == 4
    assert await q.list_tasks_async(queue_name="a") == []
    assert (await must_get(svc, keep)).status is TaskStatus.PENDING
    assert (await must_get(svc, running.id)).status is TaskStatus.RUNNING
    stats = await svc.events.get_stats_async()
    assert stats["by_type"]["deleted"] == 4

    assert await q.clear_async() == 1
    assert [x.id for x in await all_tasks(svc)] == [running.id]
    assert await q.clear_async() == 0


async def test_list_tasks_filters_and_pagination(svc: Services) -> None:
    q = svc.queue
    ids = [await q.enqueue_async(FUNC, [i], queue_name="a") for i in range(5)]
    other = await q.enqueue_async(FUNC, queue_name="b")
    await claim_one(svc, ids[0], queues=["a"])
    await q.cancel_async(ids[1])

    assert [x.id for x in await q.list_tasks_async()] == [*ids, other]
    assert [x.id for x in await q.list_tasks_async(queue_name="b")] == [other]
    assert [x.id for x in await q.list_tasks_async("running")] == [ids[0]]
    assert [x.id for x in await q.list_tasks_async(TaskStatus.CANCELLED)] == [ids[1]]
    assert {x.id for x in await q.list_tasks_async(["running", "cancelled"])} == set(ids[:2])
    assert [x.id for x in await q.list_tasks_async("pending", queue_name="a")] == ids[2:]
    assert [x.id for x in await q.list_tasks_async(limit=2, offset=1)] == ids[1:3]
    assert [x.id for x in await q.list_tasks_async(limit=2, offset=5)] == [other]
    assert [x.id for x in await q.list_tasks_async(descending=True, limit=2)] == [other, ids[4]]
    assert await q.list_tasks_async(limit=0) == []
    with pytest.raises(ValidationError):
        await q.list_tasks_async("nonsense")
    with pytest.raises(ValidationError):
        await q.list_tasks_async(order_by="func")
    with pytest.raises(ValidationError):
        await q.list_tasks_async(limit=-1)


async def test_size_and_stats(svc: Services) -> None:
    q = svc.queue
    assert await q.size_async() == 0
    assert await q.stats_async() == {}
    for i in range(3):
        await q.enqueue_async(FUNC, [i], queue_name="a")
    await q.enqueue_async(FUNC, queue_name="b")
    await claim_one(svc, queues=["a"])
    assert await q.size_async() == 3
    assert await q.size_async("a") == 2
    assert await q.size_async("b") == 1
    assert await q.size_async("nope") == 0
    assert await q.stats_async() == {"a": {"pending": 2, "running": 1}, "b": {"pending": 1}}


async def test_get_task_unknown_is_none(svc: Services) -> None:
    assert await svc.queue.get_task_async("nope") is None


# --- worker transitions ------------------------------------------------------------------


async def test_complete_writes_status_result_and_event_together(svc: Services) -> None:
    task_id = await svc.queue.enqueue_async(FUNC, result_ttl=600)
    running = await claim_one(svc, task_id, worker_id="w")
    before = svc.storage.now()  # the clock outcomes are stamped with (the database's on PG)
    assert await svc.queue.complete_async(running, {"answer": 42}, execution_time=0.5)
    after = svc.storage.now()
    task = await must_get(svc, task_id)
    assert task.status is TaskStatus.COMPLETED
    assert task.completed_at is not None
    assert before <= task.completed_at <= after
    assert task.lease_token is None
    assert task.lease_expires_at is None
    result = await svc.results.get_async(task_id)
    assert result is not None
    assert result.status is ResultStatus.SUCCESS
    assert result.success
    assert result.result == {"answer": 42}
    assert result.execution_time == 0.5
    assert result.worker_id == "w"
    assert result.expires_at is not None
    assert result.completed_at is not None
    assert result.expires_at == result.created_at + timedelta(seconds=600)
    assert await event_types(svc, task_id) == [
        EventType.ENQUEUED,
        EventType.DEQUEUED,
        EventType.COMPLETED,
    ]
    (event,) = await svc.events.get_events_async(task_id=task_id, event_type="completed")
    assert event.execution_time == 0.5
    # Completing twice is a lost lease: nothing changes.
    assert await svc.queue.complete_async(running, "again") is False
    again = await svc.results.get_async(task_id)
    assert again is not None
    assert again.result == {"answer": 42}


async def test_complete_without_stored_result(svc: Services) -> None:
    task_id = await svc.queue.enqueue_async(FUNC, store_result=False)
    assert await svc.queue.complete_async(await claim_one(svc, task_id), 1)
    assert (await must_get(svc, task_id)).status is TaskStatus.COMPLETED
    assert await svc.results.get_async(task_id) is None
    assert await svc.results.wait_async(task_id, timeout=1) is None


async def test_unserializable_result_fails_alone_and_writes_nothing(svc: Services) -> None:
    task_id = await svc.queue.enqueue_async(FUNC)
    running = await claim_one(svc, task_id)
    with pytest.raises(SerializationError):
        await svc.queue.complete_async(running, object())
    task = await must_get(svc, task_id)
    assert task.status is TaskStatus.RUNNING
    assert EventType.COMPLETED not in await event_types(svc, task_id)
    assert await svc.queue.complete_async(running, "fine")


async def test_complete_many(svc: Services) -> None:
    ids = [await svc.queue.enqueue_async(FUNC, [i]) for i in range(3)]
    claimed = await svc.queue.dequeue_many_async(3)
    stale = attrs.evolve(claimed[2], lease_token="not-mine")
    done = await svc.queue.complete_many_async(
        [(claimed[0], 0, None), (claimed[1], 1, 0.1), (stale, 2, None)]
    )
    assert sorted(done) == sorted(ids[:2])
    assert (await must_get(svc, ids[2])).status is TaskStatus.RUNNING
    assert await svc.queue.complete_many_async([]) == []


async def test_stale_lease_cannot_complete_or_fail(svc: Services) -> None:
    q = svc.queue
    task_id = await q.enqueue_async(FUNC, max_retries=3, retry_delay=0)
    old = await claim_one(svc, task_id, worker_id="old")
    await expire_lease(svc, task_id)
    assert await q.recover_expired_leases_async() == 1
    new = await claim_one(svc, task_id, worker_id="new")
    assert new.lease_token != old.lease_token
    events_before = await event_types(svc, task_id)

    assert await q.complete_async(old, "stale") is False
    assert await q.fail_async(old, error_info()) is None
    assert await q.release_async(old) is False
    assert await q.renew_leases_async({task_id: old.lease_token or ""}) == set()

    task = await must_get(svc, task_id)
    assert task.status is TaskStatus.RUNNING
    assert task.lease_token == new.lease_token
    assert task.worker_id == "new"
    assert await svc.results.get_async(task_id) is None
    assert await event_types(svc, task_id) == events_before
    assert await q.complete_async(new, "fresh")
    result = await svc.results.get_async(task_id)
    assert result is not None
    assert result.result == "fresh"


async def test_fail_with_retries_then_final_failure(svc: Services) -> None:
    q = svc.queue
    task_id = await q.enqueue_async(FUNC, max_retries=2, retry_delay=60)
    for attempt in (1, 2):
        running = await claim_one(svc, task_id, worker_id="w")
        assert running.attempts == attempt
        before = utcnow()
        assert await q.fail_async(running, error_info(f"try {attempt}")) is TaskStatus.PENDING
        task = await must_get(svc, task_id)
        assert task.status is TaskStatus.PENDING
        assert task.retry_count == attempt
        assert task.lease_token is None
        assert task.last_error is not None
        assert f"try {attempt}" in task.last_error
        # Backoff 60 s * 2 ** (attempt - 1), jitter +/- 10 %.
        base = 60 * 2 ** (attempt - 1)
        assert before + timedelta(seconds=base * 0.85) <= task.run_at
        assert task.run_at <= utcnow() + timedelta(seconds=base * 1.15)
        assert await q.dequeue_async() is None  # not before its retry time
        (retry,) = await svc.events.get_events_async(task_id=task_id, event_type="retry", limit=1)
        assert retry.retry_count == attempt
        assert retry.level is EventLevel.WARNING
        assert retry.error is not None
        assert f"try {attempt}" in retry.error
        await q.update_task_async(task_id, run_at=utcnow())

    running = await claim_one(svc, task_id)
    assert running.attempts == 3
    assert await q.fail_async(running, error_info("last")) is TaskStatus.FAILED
    task = await must_get(svc, task_id)
    assert task.status is TaskStatus.FAILED
    assert task.completed_at is not None
    result = await svc.results.get_async(task_id)
    assert result is not None
    assert result.status is ResultStatus.ERROR
    assert not result.success
    assert result.error_type == "RuntimeError"
    assert result.error is not None
    assert "last" in result.error
    assert result.error_traceback is not None
    assert "RuntimeError: last" in result.error_traceback
    assert result.retry_count == 2
    assert await event_types(svc, task_id) == [
        EventType.ENQUEUED,
        EventType.DEQUEUED,
        EventType.RETRY,
        EventType.UPDATED,
        EventType.DEQUEUED,
        EventType.RETRY,
        EventType.UPDATED,
        EventType.DEQUEUED,
        EventType.FAILED,
    ]
    (failed,) = await svc.events.get_events_async(task_id=task_id, event_type="failed")
    assert failed.level is EventLevel.ERROR


async def test_fail_without_retry_flag_fails_at_once(svc: Services) -> None:
    task_id = await svc.queue.enqueue_async(FUNC, max_retries=5)
    running = await claim_one(svc, task_id)
    status = await svc.queue.fail_async(running, ValueError("bad input"), retry=False)
    assert status is TaskStatus.FAILED
    result = await svc.results.get_async(task_id)
    assert result is not None
    assert result.error_type == "ValueError"


async def test_release_returns_task_without_spending_an_attempt(svc: Services) -> None:
    task_id = await svc.queue.enqueue_async(FUNC)
    running = await claim_one(svc, task_id, worker_id="w")
    assert running.attempts == 1
    assert await svc.queue.release_async(running, worker_id="w")
    task = await must_get(svc, task_id)
    assert task.status is TaskStatus.PENDING
    assert task.attempts == 0
    assert task.lease_token is None
    assert task.started_at is None
    assert (await event_types(svc, task_id))[-1] is EventType.RELEASED
    again = await claim_one(svc, task_id)
    assert again.attempts == 1
    assert await svc.queue.release_async(running) is False


async def test_renew_leases_extends_only_held_leases(svc: Services) -> None:
    a = await svc.queue.enqueue_async(FUNC)
    b = await svc.queue.enqueue_async(FUNC)
    ta = await claim_one(svc, a)
    tb = await claim_one(svc, b)
    assert ta.lease_token
    assert tb.lease_token
    assert ta.lease_expires_at
    await expire_lease(svc, a)
    renewed = await svc.queue.renew_leases_async(
        {a: ta.lease_token, b: ta.lease_token}  # b with a's token: not b's lease
    )
    assert renewed == {a}
    lease = (await must_get(svc, a)).lease_expires_at
    assert lease is not None
    assert lease > utcnow() + timedelta(seconds=30)
    assert (await must_get(svc, b)).lease_expires_at == tb.lease_expires_at
    assert await svc.queue.renew_leases_async({}) == set()


async def test_a_renewal_beside_a_write_skips_the_rows_that_write_holds(
    svc: Services, db_url: str
) -> None:
    # A worker renews its leases alone beside its own slow outcome write; on
    # PostgreSQL the two locked the same rows in different orders and deadlocked
    # (a second of deadlock_timeout, then "writing the outcome failed"). Such a
    # renewal skips a row another transaction holds instead of waiting for it.
    a = await svc.queue.enqueue_async(FUNC)
    b = await svc.queue.enqueue_async(FUNC)
    ta = await claim_one(svc, a)
    tb = await claim_one(svc, b)
    leases = {a: ta.lease_token or "", b: tb.lease_token or ""}
    if not db_url.startswith("postgresql"):
        # One writer: nothing else holds a row while the renewal runs.
        with anyio.fail_after(DEADLINE):
            held = await svc.queue.heartbeat_async(leases, skip_locked=True)
        assert held == {a: False, b: False}
        return
    await expire_lease(svc, a)
    await expire_lease(svc, b)
    engine = create_engine(db_url)
    try:
        async with engine.connect() as writer:
            await writer.begin()
            row = sa.select(schema.tasks.c.id).where(schema.tasks.c.id == a)
            await writer.execute(row.with_for_update())
            with anyio.fail_after(DEADLINE):
                held = await svc.queue.heartbeat_async(leases, skip_locked=True)
            assert held == {b: False}  # a is skipped, not waited for nor said lost
            await writer.rollback()
    finally:
        await engine.dispose()
    renewed, skipped = (await must_get(svc, b)), (await must_get(svc, a))
    assert renewed.lease_expires_at
    assert renewed.lease_expires_at > utcnow() + timedelta(seconds=30)
    assert skipped.lease_expires_at
    assert skipped.lease_expires_at <= utcnow()
    # Once the row is free, the next renewal (skipping or not) renews it.
    assert await svc.queue.heartbeat_async(leases, skip_locked=True) == {a: False, b: False}


async def test_a_write_rolled_back_by_a_deadlock_runs_again(svc: Services, db_url: str) -> None:
    # PostgreSQL breaks a deadlock by rolling one of its transactions back; that
    # one wrote nothing and runs again (a worker's outcome write reported
    # "deadlock detected" instead, in a CI run).
    if not db_url.startswith("postgresql"):
        pytest.skip("deadlocks: PostgreSQL (SQLite has one writer)")
    tasks = schema.tasks
    a = await svc.queue.enqueue_async(FUNC)
    b = await svc.queue.enqueue_async(FUNC)
    runs = 0

    def set_priority(conn: sa.Connection, task_id: str, value: int) -> None:
        conn.execute(sa.update(tasks).where(tasks.c.id == task_id).values(priority=value))

    def a_then_b(conn: sa.Connection) -> str:
        nonlocal runs
        runs += 1
        set_priority(conn, a, 1)
        set_priority(conn, b, 1)  # waits for the other transaction: the first to wait
        return "written"

    engine = create_engine(db_url)
    try:
        async with engine.connect() as other, engine.connect() as watcher:
            await other.begin()
            await other.run_sync(set_priority, b, 2)
            write = asyncio.ensure_future(svc.storage.write(a_then_b))

            await wait_until(lambda: waits_for_a_lock(watcher), "the write waiting for b's row")
            # Now the other transaction waits for a: a deadlock. The write, the
            # first to wait, is the one PostgreSQL rolls back; this one goes on.
            with anyio.fail_after(DEADLINE):
                await other.run_sync(set_priority, a, 2)
                await other.commit()
        with anyio.fail_after(DEADLINE):
            assert await write == "written"
    finally:
        await engine.dispose()
    assert runs == 2
    assert (await must_get(svc, a)).priority == 1
    assert (await must_get(svc, b)).priority == 1


async def test_recover_expired_leases_uses_the_crash_budget_then_fails_worker_lost(
    svc: Services,
) -> None:
    q = svc.queue
    budget = svc.storage.settings.crash_retries
    assert budget == 2  # the default
    task_id = await q.enqueue_async(FUNC, max_retries=0, retry_delay=0)
    healthy_id = await q.enqueue_async(FUNC, run_in=0)
    tokens = set()
    for crash in range(1, budget + 2):
        claimed = await claim_one(svc, task_id, worker_id=f"dead-{crash}")
        if crash == 1:
            await claim_one(svc, healthy_id)
        assert claimed.attempts == crash  # dequeue marks it started
        tokens.add(claimed.lease_token)
        assert await q.recover_expired_leases_async() == 0  # leases still valid
        await expire_lease(svc, task_id)
        assert await q.recover_expired_leases_async() == 1
        task = await must_get(svc, task_id)
        if crash <= budget:
            # Run again from the crash budget; max_retries=0 is not spent.
            assert task.status is TaskStatus.PENDING
            assert task.retry_count == 0
            assert task.lost_count == crash
            assert task.lease_token is None
    assert len(tokens) == budget + 1
    retries = await svc.events.get_events_async(task_id=task_id, event_type="retry")
    assert len(retries) == budget
    assert all(r.error is not None and "WorkerLost" in r.error for r in retries)
    assert {r.worker_id for r in retries} == {"dead-1", "dead-2"}
    task = await must_get(svc, task_id)
    assert task.status is TaskStatus.FAILED
    assert "crash_retries=2" in (task.last_error or "")
    result = await svc.results.get_async(task_id)
    assert result is not None
    assert result.status is ResultStatus.ERROR
    assert result.error_type == "WorkerLost"
    assert await event_types(svc, task_id) == [
        EventType.ENQUEUED,
        *([EventType.DEQUEUED, EventType.RETRY] * budget),
        EventType.DEQUEUED,
        EventType.FAILED,
    ]
    assert (await must_get(svc, healthy_id)).status is TaskStatus.RUNNING
    assert await q.recover_expired_leases_async() == 0


async def test_a_recovered_task_that_never_started_spends_nothing(svc: Services) -> None:
    q = svc.queue
    ids = [await q.enqueue_async(FUNC, max_retries=0) for _ in range(5)]
    held = await q.dequeue_many_async(5, worker_id="dead", start=False)
    assert {x.id for x in held} == set(ids)
    assert all(x.started_at is None and x.attempts == 0 for x in held)
    # One of them started (its mark was written) before the worker died.
    started = held[0]
    await q.mark_started_async([(started.id, started.lease_token, utcnow())])
    for task_id in ids:
        await expire_lease(svc, task_id)
    assert await q.recover_expired_leases_async() == 5
    for task_id in ids:
        task = await must_get(svc, task_id)
        assert task.status is TaskStatus.PENDING
        assert task.lost_count == 1
        assert task.retry_count == 0
        assert task.started_at is None
        kinds = await event_types(svc, task_id)
        if task_id == started.id:
            assert task.attempts == 1
            assert kinds[-1] is EventType.RETRY
        else:
            assert task.attempts == 0  # never started: nothing spent
            assert kinds[-1] is EventType.RELEASED


async def test_recover_with_short_lease_setting(open_services: ServicesFactory) -> None:
    svc = await open_services(Settings(lease_duration=timedelta(milliseconds=50)))
    task_id = await svc.queue.enqueue_async(FUNC)
    await claim_one(svc, task_id)
    deadline = time.monotonic() + 5
    recovered = 0
    while recovered == 0 and time.monotonic() < deadline:
        recovered = await svc.queue.recover_expired_leases_async()
        if not recovered:
            await asyncio.sleep(0.02)
    assert recovered == 1
    task = await must_get(svc, task_id)
    assert task.status is TaskStatus.PENDING  # run again from the crash budget
    assert task.lost_count == 1


async def test_purge_finished_keeps_recent_and_live(svc: Services) -> None:
    q = svc.queue
    done = await q.enqueue_async(FUNC)
    assert await q.complete_async(await claim_one(svc, done))
    live = await q.enqueue_async(FUNC)
    assert await q.purge_finished_async() == 0  # default retention: 7 days
    assert await q.purge_finished_async(older_than=timedelta(0)) == 1
    assert await q.get_task_async(done) is None
    assert (await must_get(svc, live)).status is TaskStatus.PENDING


# --- schedules ---------------------------------------------------------------------------------


def interval_schedule(**kwargs: Any) -> Schedule:
    kwargs.setdefault("func", FUNC)
    kwargs.setdefault("schedule_type", "interval")
    kwargs.setdefault("interval", timedelta(minutes=5))
    return Schedule(**kwargs)


async def test_schedule_crud(svc: Services) -> None:
    q = svc.queue
    before = svc.storage.now()  # the clock schedules are timed by (the database's on PG)
    sid = await q.schedule_async(interval_schedule(func_args=[1], name="every5"))
    after = svc.storage.now()
    schedule = await q.get_schedule_async(sid)
    assert schedule is not None
    assert schedule.status is ScheduleStatus.ACTIVE
    assert schedule.func_args == (1,)
    assert schedule.next_run_at is not None
    assert before + timedelta(minutes=5) <= schedule.next_run_at <= after + timedelta(minutes=5)

    cron_id = await q.schedule_async(
        Schedule(func=FUNC, schedule_type="cron", cron_expression="0 3 * * *", timezone="UTC")
    )
    cron = await q.get_schedule_async(cron_id)
    assert cron is not None
    assert cron.next_run_at is not None
    assert cron.next_run_at > before
    assert (cron.next_run_at.hour, cron.next_run_at.minute) == (3, 0)
    assert cron.next_run_at - before <= timedelta(days=1)

    assert [x.id for x in await q.list_schedules_async()] == [sid, cron_id]

    # A timing change recomputes next_run_at.
    updated = await q.update_schedule_async(sid, interval=timedelta(hours=2))
    assert updated.interval == timedelta(hours=2)
    assert updated.next_run_at is not None
    assert updated.next_run_at >= before + timedelta(hours=2)
    assert updated.updated_at is not None
    renamed = await q.update_schedule_async(sid, name="every2h")
    assert renamed.name == "every2h"
    assert renamed.next_run_at == updated.next_run_at
    with pytest.raises(ValidationError):
        await q.update_schedule_async(sid, status="paused")

    paused = await q.pause_schedule_async(sid)
    assert paused.status is ScheduleStatus.PAUSED
    assert paused.paused_at is not None
    assert [x.id for x in await q.list_schedules_async("paused")] == [sid]
    assert [x.id for x in await q.list_schedules_async(ScheduleStatus.ACTIVE)] == [cron_id]
    with pytest.raises(InvalidTransition):
        await q.pause_schedule_async(sid)

    resume_time = svc.storage.now()  # the clock the schedule is timed by (the database's on PG)
    resumed = await q.resume_schedule_async(sid)
    assert resumed.status is ScheduleStatus.ACTIVE
    assert resumed.resumed_at is not None
    assert resumed.next_run_at is not None
    assert resumed.next_run_at >= resume_time + timedelta(hours=2)
    with pytest.raises(InvalidTransition):
        await q.resume_schedule_async(sid)

    cancelled = await q.cancel_schedule_async(sid)
    assert cancelled.status is ScheduleStatus.CANCELLED
    assert cancelled.next_run_at is None
    with pytest.raises(InvalidTransition):
        await q.cancel_schedule_async(sid)
    assert [x.id for x in await q.list_schedules_async(["cancelled", "active"])] == [sid, cron_id]

    assert await q.delete_schedule_async(sid)
    assert await q.get_schedule_async(sid) is None
    assert await q.delete_schedule_async(sid) is False
    with pytest.raises(ScheduleNotFound):
        await q.pause_schedule_async(sid)
    with pytest.raises(ScheduleNotFound):
        await q.update_schedule_async(sid, name="x")

    events = await svc.events.get_events_async(schedule_id=sid, limit=100)
    assert [e.event_type for e in reversed(events)] == [
        EventType.SCHEDULED,
        EventType.SCHEDULE_UPDATED,
        EventType.SCHEDULE_UPDATED,
        EventType.SCHEDULE_PAUSED,
        EventType.SCHEDULE_RESUMED,
        EventType.SCHEDULE_CANCELLED,
        EventType.DELETED,
    ]


async def test_resume_computes_next_run_from_now(svc: Services) -> None:
    q = svc.queue
    start = utcnow() - timedelta(days=2)
    sid = await q.schedule_async(interval_schedule(run_at=start, interval=HOUR))
    schedule = await q.get_schedule_async(sid)
    assert schedule is not None
    assert schedule.next_run_at == start
    await q.pause_schedule_async(sid)
    now = utcnow()
    resumed = await q.resume_schedule_async(sid)
    # Not two days of missed runs: the next one is in the future.
    assert resumed.next_run_at is not None
    assert resumed.next_run_at >= now


async def test_get_ready_schedules(svc: Services) -> None:
    q = svc.queue
    due = await q.schedule_async(
        Schedule(func=FUNC, schedule_type="timestamp", run_at=utcnow() - timedelta(minutes=1))
    )
    later = await q.schedule_async(interval_schedule(interval=HOUR))
    paused = await q.schedule_async(
        Schedule(func=FUNC, schedule_type="timestamp", run_at=utcnow() - timedelta(minutes=2))
    )
    await q.pause_schedule_async(paused)

    assert [x.id for x in await q.get_ready_schedules_async()] == [due]
    soon = await q.get_ready_schedules_async(now=utcnow() + timedelta(hours=2))
    assert [x.id for x in soon] == [due, later]
    assert [x.id for x in await q.get_ready_schedules_async(now=utcnow() + HOUR * 2, limit=1)] == [
        due
    ]
    with pytest.raises(ValidationError) as err:
        await q.get_ready_schedules_async(now=datetime(2030, 1, 1))
    assert err.value.field == "now"


async def test_schedule_cron_with_timezone_and_start(svc: Services) -> None:
    start = utcnow() + timedelta(days=3)
    schedule = Schedule(
        func=FUNC,
        schedule_type="cron",
        cron_expression="30 9 * * *",
        timezone="Europe/Berlin",
        run_at=start,
    )
    sid = await svc.queue.schedule_async(schedule)
    stored = await svc.queue.get_schedule_async(sid)
    assert stored is not None
    assert stored.next_run_at is not None
    assert stored.next_run_at == timing.first_run(schedule, utcnow())
    assert stored.next_run_at >= start
    assert stored.next_run_at - start <= timedelta(days=1)


async def test_schedule_rejects_non_schedule(svc: Services) -> None:
    with pytest.raises(ValidationError):
        await svc.queue.schedule_async("nope")  # type: ignore[arg-type]
    assert await svc.queue.list_schedules_async() == []


@pytest.mark.parametrize("unique", [False, True], ids=["plain", "unique key"])
async def test_a_task_naming_an_unknown_schedule_is_refused_naming_schedule_id(
    svc: Services, unique: bool
) -> None:
    """A hand-built task's ``schedule_id`` is a foreign key: SQLite's refusal named no
    column ("FOREIGN KEY constraint failed"). Nothing of the batch is stored."""
    q = svc.queue
    kept = await q.enqueue_async(q.build_task(FUNC, [0]))
    extra = {"unique_key": "k"} if unique else {}
    orphan = attrs.evolve(q.build_task(FUNC, [1], **extra), schedule_id="no-such-schedule")
    for enqueue in (
        lambda: q.enqueue_async(orphan),
        lambda: q.enqueue_many_async([q.build_task(FUNC, [2]), orphan]),
    ):
        with pytest.raises(ValidationError) as err:
            await enqueue()
        assert err.value.field == "schedule_id"
        assert "no-such-schedule" in str(err.value)
    assert [t.id for t in await q.list_tasks_async()] == [kept]
