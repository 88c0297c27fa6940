"""ResultStorage and EventStorage contract, run on every engine."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import attrs
import pytest

from omniq._time import utcnow
from omniq.errors import TaskNotFound, ValidationError
from omniq.models import (
    EventLevel,
    EventType,
    ResultStatus,
    Settings,
    TaskEvent,
    TaskResult,
    TaskStatus,
)
from omniq.services import ErrorInfo, Services

pytestmark = pytest.mark.anyio

FUNC = "tests.helpers:func"
HOUR = timedelta(hours=1)

#: The ``open_services`` fixture (tests/integration/conftest.py).
ServicesFactory = Callable[..., Awaitable[Services]]


def result(task_id: str, **kwargs: Any) -> TaskResult:
    kwargs.setdefault("status", ResultStatus.SUCCESS)
    return TaskResult(task_id=task_id, **kwargs)


def event(kind: EventType | str, **kwargs: Any) -> TaskEvent:
    return TaskEvent(event_type=kind, **kwargs)


# --- results ------------------------------------------------------------------------------


async def test_store_and_get_roundtrip(svc: Services) -> None:
    stored = result(
        "t-1",
        result={"rows": [1, 2, 3], "ok": True},
        started_at=utcnow() - timedelta(seconds=2),
        completed_at=utcnow(),
        ttl=HOUR,
        execution_time=1.25,
        worker_id="w",
        retry_count=2,
    )
    await svc.results.store_async(stored)
    got = await svc.results.get_async("t-1")
    assert got == stored
    assert got is not None
    assert got.success
    assert got.expires_at == stored.created_at + HOUR
    assert await svc.results.get_async("unknown") is None


async def test_store_replaces_earlier_result(svc: Services) -> None:
    await svc.results.store_async(result("t", result=1))
    await svc.results.store_async(result("t", status="error", error="boom", error_type="E"))
    got = await svc.results.get_async("t")
    assert got is not None
    assert got.status is ResultStatus.ERROR
    assert got.result is None
    assert got.error == "boom"
    assert got.error_type == "E"
    stats = await svc.results.get_stats_async()
    assert stats == {"error": 1, "total": 1}


async def test_store_rejects_bad_input(svc: Services) -> None:
    with pytest.raises(ValidationError):
        await svc.results.store_async({"task_id": "x"})  # type: ignore[arg-type]
    with pytest.raises(ValidationError) as err:
        result("x", completed_at=datetime(2030, 1, 1))
    assert err.value.field == "completed_at"
    assert (await svc.results.get_stats_async())["total"] == 0


async def test_get_latest_by_schedule(svc: Services) -> None:
    now = utcnow()
    for name, age in (("a", 3), ("b", 1), ("c", 2)):
        await svc.results.store_async(
            result(f"s1-{name}", schedule_id="s1", result=name, created_at=now - age * HOUR)
        )
    await svc.results.store_async(result("s2-x", schedule_id="s2", result="x", created_at=now))
    latest = await svc.results.get_latest_async("s1")
    assert latest is not None
    assert latest.task_id == "s1-b"
    assert latest.result == "b"
    latest2 = await svc.results.get_latest_async("s2")
    assert latest2 is not None
    assert latest2.task_id == "s2-x"
    assert await svc.results.get_latest_async("nope") is None


async def test_get_latest_of_only_expired_results_is_none(svc: Services) -> None:
    past = utcnow() - HOUR
    await svc.results.store_async(result("t", schedule_id="s", created_at=past, expires_at=past))
    assert await svc.results.get_latest_async("s") is None


async def test_get_latest_skips_an_expired_newest_result(svc: Services) -> None:
    now = utcnow()
    await svc.results.store_async(
        result("old", schedule_id="s", result="old", created_at=now - 2 * HOUR)
    )
    await svc.results.store_async(
        result(
            "new", schedule_id="s", result="new", created_at=now - HOUR, expires_at=now - HOUR / 2
        )
    )
    latest = await svc.results.get_latest_async("s")
    assert latest is not None
    assert latest.task_id == "old"


async def test_update_result(svc: Services) -> None:
    created = utcnow() - timedelta(minutes=5)
    await svc.results.store_async(result("t", result=1, created_at=created))
    updated = await svc.results.update_async("t", result={"v": 2}, error="note")
    assert updated.result == {"v": 2}
    got = await svc.results.get_async("t")
    assert got is not None
    assert got.result == {"v": 2}
    assert got.error == "note"

    updated = await svc.results.update_async("t", ttl=3600)
    assert updated.ttl == HOUR
    assert updated.expires_at == created + HOUR
    got = await svc.results.get_async("t")
    assert got is not None
    assert got.expires_at == created + HOUR

    updated = await svc.results.update_async("t", status="error")
    assert updated.status is ResultStatus.ERROR

    with pytest.raises(ValidationError) as err:
        await svc.results.update_async("t", schedule_id="other")
    assert err.value.field == "changes"
    with pytest.raises(ValidationError):
        await svc.results.update_async("t", status="bogus")
    with pytest.raises(TaskNotFound):
        await svc.results.update_async("missing", result=1)
    got = await svc.results.get_async("t")
    assert got is not None
    assert got.status is ResultStatus.ERROR


async def test_update_ttl_to_the_past_hides_result(svc: Services) -> None:
    await svc.results.store_async(result("t", created_at=utcnow() - HOUR))
    await svc.results.update_async("t", ttl=60)
    assert await svc.results.get_async("t") is None
    assert await svc.results.cleanup_expired_async() == 1


async def test_delete_result(svc: Services) -> None:
    await svc.results.store_async(result("t"))
    assert await svc.results.delete_async("t")
    assert await svc.results.get_async("t") is None
    assert await svc.results.delete_async("t") is False


async def test_cleanup_expired_results(svc: Services) -> None:
    now = utcnow()
    for i in range(5):
        await svc.results.store_async(
            result(f"old-{i}", created_at=now - 2 * HOUR, ttl=HOUR)  # expired an hour ago
        )
    await svc.results.store_async(result("fresh", ttl=HOUR))
    await svc.results.store_async(result("forever"))
    # An expired result is invisible even before the cleanup runs.
    assert await svc.results.get_async("old-0") is None
    assert await svc.results.cleanup_expired_async(batch_size=2) == 5
    assert await svc.results.get_async("fresh") is not None
    assert await svc.results.get_async("forever") is not None
    assert (await svc.results.get_stats_async())["total"] == 2
    assert await svc.results.cleanup_expired_async() == 0


async def test_result_stats(svc: Services) -> None:
    assert await svc.results.get_stats_async() == {"total": 0}
    await svc.results.store_async(result("a"))
    await svc.results.store_async(result("b"))
    await svc.results.store_async(result("c", status="error"))
    await svc.results.store_async(result("d", status="cancelled"))
    assert await svc.results.get_stats_async() == {
        "success": 2,
        "error": 1,
        "cancelled": 1,
        "total": 4,
    }


async def test_wait_returns_result_once_completed(svc: Services) -> None:
    task_id = await svc.queue.enqueue_async(FUNC, [21])

    async def work() -> None:
        task = await svc.queue.dequeue_async(timeout=5)
        assert task is not None
        assert await svc.queue.complete_async(task, task.func_args[0] * 2)

    start = time.monotonic()
    got, _ = await asyncio.gather(svc.results.wait_async(task_id, timeout=10), work())
    assert got is not None
    assert got.result == 42
    assert time.monotonic() - start < 5


async def test_wait_sees_completion_by_another_engine(
    svc: Services, open_services: ServicesFactory
) -> None:
    worker = await open_services()
    task_id = await svc.queue.enqueue_async(FUNC, max_retries=0)

    async def work() -> None:
        task = await worker.queue.dequeue_async(timeout=5)
        assert task is not None
        await worker.queue.fail_async(task, ErrorInfo(type="E", message="nope"))

    got, _ = await asyncio.gather(svc.results.wait_async(task_id, timeout=10), work())
    assert got is not None
    assert got.status is ResultStatus.ERROR
    assert got.error_type == "E"


async def test_wait_times_out_and_rejects_unknown_ids(svc: Services) -> None:
    task_id = await svc.queue.enqueue_async(FUNC)
    start = time.monotonic()
    assert await svc.results.wait_async(task_id, timeout=0.3) is None
    assert 0.25 <= time.monotonic() - start < 5
    assert await svc.results.wait_async(task_id, timeout=0) is None
    with pytest.raises(TaskNotFound):
        await svc.results.wait_async("no-such-task", timeout=1)
    with pytest.raises(ValidationError):
        await svc.results.wait_async(task_id, timeout=-1)


async def test_wait_for_already_finished_task(svc: Services) -> None:
    task_id = await svc.queue.enqueue_async(FUNC)
    await svc.queue.cancel_async(task_id)
    got = await svc.results.wait_async(task_id, timeout=1)
    assert got is not None
    assert got.status is ResultStatus.CANCELLED


# --- events -------------------------------------------------------------------------------


async def test_log_and_log_many(svc: Services) -> None:
    await svc.events.log_async(event("worker_started", worker_id="w", source="worker"))
    await svc.events.log_many_async(
        [event(EventType.ENQUEUED, task_id="t1"), event(EventType.DEQUEUED, task_id="t1")]
    )
    await svc.events.log_many_async([])
    events = await svc.events.get_events_async()
    assert [e.event_type for e in events] == [
        EventType.DEQUEUED,
        EventType.ENQUEUED,
        EventType.WORKER_STARTED,
    ]
    ids = [e.id for e in events]
    assert all(isinstance(i, int) for i in ids)
    assert ids == sorted(ids, reverse=True)  # type: ignore[type-var]
    assert events[2].worker_id == "w"
    assert events[2].source == "worker"
    assert events[2].timestamp.tzinfo is not None
    with pytest.raises(ValidationError):
        await svc.events.log_many_async([{"event_type": "enqueued"}])  # type: ignore[list-item]


async def test_event_roundtrip_keeps_every_field(svc: Services) -> None:
    when = datetime(2026, 1, 2, 3, 4, 5, 678901, tzinfo=UTC)
    original = event(
        "failed",
        task_id="t",
        timestamp=when,
        queue_name="q",
        worker_id="w",
        schedule_id="s",
        message="m",
        data={"k": [1, "two"], "n": None},
        execution_time=0.25,
        retry_count=3,
        error="E: x",
        source="worker",
        level="error",
    )
    await svc.events.log_async(original)
    (got,) = await svc.events.get_events_async()
    assert got.id is not None
    assert got == attrs.evolve(original, id=got.id)


async def test_unknown_event_type_or_level_is_rejected(svc: Services) -> None:
    with pytest.raises(ValidationError):
        event("bogus")
    with pytest.raises(ValidationError) as err:
        await svc.events.get_events_async(event_type="bogus")
    assert err.value.field == "event_type"
    with pytest.raises(ValidationError) as err:
        await svc.events.get_events_async(event_type=["enqueued", "bogus"])
    assert err.value.field == "event_type"
    with pytest.raises(ValidationError) as err:
        await svc.events.get_events_async(level="loud")
    assert err.value.field == "level"
    with pytest.raises(ValidationError) as err:
        await svc.events.get_events_async(limit=-1)
    assert err.value.field == "limit"


async def test_get_events_filters(svc: Services) -> None:
    base = utcnow() - timedelta(days=1)
    rows = [
        event("enqueued", task_id="t1", queue_name="q1", timestamp=base),
        event(
            "dequeued",
            task_id="t1",
            queue_name="q1",
            worker_id="w1",
            timestamp=base + timedelta(minutes=1),
        ),
        event(
            "failed",
            task_id="t1",
            queue_name="q1",
            worker_id="w1",
            level="error",
            timestamp=base + timedelta(minutes=2),
        ),
        event("enqueued", task_id="t2", queue_name="q2", schedule_id="s1", timestamp=base),
        event(
            "dequeued",
            task_id="t2",
            queue_name="q2",
            worker_id="w2",
            schedule_id="s1",
            timestamp=base + timedelta(minutes=3),
        ),
        event("worker_started", worker_id="w1", timestamp=base + timedelta(minutes=4)),
    ]
    await svc.events.log_many_async(rows)

    async def kinds(**filters: Any) -> list[tuple[str | None, str]]:
        found = await svc.events.get_events_async(**filters)
        return [(e.task_id, e.event_type.value) for e in found]

    assert await kinds(task_id="t1") == [("t1", "failed"), ("t1", "dequeued"), ("t1", "enqueued")]
    assert await kinds(event_type="enqueued") == [("t2", "enqueued"), ("t1", "enqueued")]
    assert await kinds(event_type=EventType.FAILED) == [("t1", "failed")]
    assert await kinds(event_type=["failed", EventType.WORKER_STARTED]) == [
        (None, "worker_started"),
        ("t1", "failed"),
    ]
    assert await kinds(queue_name="q2") == [("t2", "dequeued"), ("t2", "enqueued")]
    assert await kinds(worker_id="w1") == [
        (None, "worker_started"),
        ("t1", "failed"),
        ("t1", "dequeued"),
    ]
    assert await kinds(schedule_id="s1") == [("t2", "dequeued"), ("t2", "enqueued")]
    assert await kinds(level="error") == [("t1", "failed")]
    assert await kinds(level=EventLevel.INFO, task_id="t1") == [
        ("t1", "dequeued"),
        ("t1", "enqueued"),
    ]
    window = {
        "start_time": base + timedelta(minutes=1),
        "end_time": base + timedelta(minutes=3),
    }
    assert await kinds(**window) == [("t2", "dequeued"), ("t1", "failed"), ("t1", "dequeued")]
    assert await kinds(start_time=base + timedelta(minutes=4)) == [(None, "worker_started")]
    assert await kinds(end_time=base) == [("t2", "enqueued"), ("t1", "enqueued")]
    assert await kinds(task_id="t1", event_type="dequeued", worker_id="w1", queue_name="q1") == [
        ("t1", "dequeued")
    ]
    assert await kinds(task_id="t1", worker_id="w2") == []
    # Pagination, newest first.
    assert await kinds(limit=2) == [(None, "worker_started"), ("t2", "dequeued")]
    assert await kinds(limit=2, offset=2) == [("t2", "enqueued"), ("t1", "failed")]
    assert await kinds(limit=10, offset=5) == [("t1", "enqueued")]
    # A list of types is a set: an empty one matches nothing (as list_tasks(status=[])).
    assert await kinds(event_type=[]) == []
    task_id = await svc.queue.enqueue_async(FUNC)
    assert await svc.queue.list_tasks_async(status=[]) == []
    assert [x.id for x in await svc.queue.list_tasks_async(status=["pending"])] == [task_id]
    assert await kinds(event_type=[], task_id=task_id) == []
    assert await kinds(limit=0) == []
    # Aware times only.
    with pytest.raises(ValidationError) as err:
        await svc.events.get_events_async(start_time=datetime(2026, 1, 1))
    assert err.value.field == "start_time"
    with pytest.raises(ValidationError) as err:
        await svc.events.get_events_async(end_time=datetime(2026, 1, 1))
    assert err.value.field == "end_time"


async def test_time_filters_accept_other_time_zones(svc: Services) -> None:
    when = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)
    await svc.events.log_async(event("enqueued", task_id="t", timestamp=when))
    plus2 = when.astimezone(ZoneInfo("Europe/Berlin"))
    assert len(await svc.events.get_events_async(start_time=plus2, end_time=plus2)) == 1
    assert await svc.events.get_events_async(start_time=plus2 + timedelta(microseconds=1)) == []


async def test_get_latest_events(svc: Services) -> None:
    await svc.events.log_many_async([event("enqueued", task_id=f"t{i}") for i in range(15)])
    latest = await svc.events.get_latest_events_async()
    assert [e.task_id for e in latest] == [f"t{i}" for i in range(14, 4, -1)]
    assert [e.task_id for e in await svc.events.get_latest_events_async(3)] == [
        "t14",
        "t13",
        "t12",
    ]


async def test_event_retention(svc: Services) -> None:
    now = utcnow()
    await svc.events.log_many_async(
        [
            event("enqueued", task_id="ancient", timestamp=now - timedelta(days=30)),
            event("enqueued", task_id="old", timestamp=now - timedelta(days=8)),
            event("enqueued", task_id="week", timestamp=now - timedelta(days=6)),
            event("enqueued", task_id="hour", timestamp=now - timedelta(hours=2)),
            event("enqueued", task_id="now", timestamp=now),
        ]
    )

    async def left() -> list[str | None]:
        return [e.task_id for e in await svc.events.get_events_async()]

    assert await svc.events.cleanup_expired_async(None) == 0
    assert len(await left()) == 5
    assert await svc.events.cleanup_expired_async() == 2  # default retention: 7 days
    assert await left() == ["now", "hour", "week"]
    assert await svc.events.cleanup_expired_async(timedelta(days=1)) == 1
    assert await left() == ["now", "hour"]
    assert await svc.events.cleanup_expired_async(3600) == 1  # seconds
    assert await left() == ["now"]
    with pytest.raises(ValidationError):
        await svc.events.cleanup_expired_async(-1)


async def test_event_retention_in_batches(svc: Services) -> None:
    old = utcnow() - timedelta(days=10)
    await svc.events.log_many_async(
        [event("enqueued", task_id=f"t{i}", timestamp=old) for i in range(7)]
    )
    await svc.events.log_async(event("enqueued", task_id="keep"))
    assert await svc.events.cleanup_expired_async(batch_size=3) == 7
    assert [e.task_id for e in await svc.events.get_events_async()] == ["keep"]


async def test_retention_none_in_settings_keeps_all(open_services: ServicesFactory) -> None:
    svc = await open_services(Settings(event_retention=None))
    await svc.events.log_async(
        event("enqueued", task_id="t", timestamp=utcnow() - timedelta(days=365))
    )
    assert await svc.events.cleanup_expired_async() == 0
    assert len(await svc.events.get_events_async()) == 1
    assert await svc.events.cleanup_expired_async(timedelta(days=1)) == 1


async def test_event_stats(svc: Services) -> None:
    empty = await svc.events.get_stats_async()
    assert empty == {"by_type": {}, "by_level": {}, "total": {"events": 0}}
    await svc.events.log_many_async(
        [
            event("enqueued"),
            event("enqueued"),
            event("failed", level="error"),
            event("retry", level="warning"),
        ]
    )
    stats = await svc.events.get_stats_async()
    assert stats["by_type"] == {"enqueued": 2, "failed": 1, "retry": 1}
    assert stats["by_level"] == {"info": 2, "error": 1, "warning": 1}
    assert stats["total"] == {"events": 4}


async def test_queue_transitions_are_visible_in_events(svc: Services) -> None:
    task_id = await svc.queue.enqueue_async(FUNC, queue_name="mail")
    task = await svc.queue.dequeue_async(worker_id="w9")
    assert task is not None
    await svc.queue.complete_async(task, "sent")
    by_worker = await svc.events.get_events_async(worker_id="w9")
    assert {e.event_type for e in by_worker} == {EventType.DEQUEUED, EventType.COMPLETED}
    by_queue = await svc.events.get_events_async(queue_name="mail")
    assert [e.event_type for e in by_queue] == [
        EventType.COMPLETED,
        EventType.DEQUEUED,
        EventType.ENQUEUED,
    ]
    assert all(e.task_id == task_id for e in by_queue)
    stored = await svc.queue.get_task_async(task_id)
    assert stored is not None
    assert stored.status is TaskStatus.COMPLETED


async def test_waiting_for_an_expired_result_finds_none(svc: Services) -> None:
    """wait_async agrees with get_async: a result past its TTL is gone."""
    from tests.waiting import wait_until

    task_id = await svc.queue.enqueue_async(
        "tests.worker_tasks:add", [1, 2], result_ttl=timedelta(milliseconds=50)
    )
    task = await svc.queue.dequeue_async(worker_id="w")
    assert task is not None and task.id == task_id
    assert await svc.queue.complete_async(task, 3)

    async def expired() -> bool:
        return await svc.results.get_async(task_id) is None

    await wait_until(expired, "the result to expire")
    assert await svc.results.wait_async(task_id, timeout=1) is None


@pytest.mark.parametrize("bad", [[], 5, b"id", {"id": 1}, 1.5, "a\x00b"], ids=repr)
async def test_a_lookup_by_something_not_a_string_is_refused_alike_on_every_engine(
    svc: Services, bad: Any
) -> None:
    """SQLite compared an integer id as text (5 found nothing, or the task '5') and
    refused a list while binding it (a DatabaseError); PostgreSQL refused both with
    its own message. Every lookup now names the argument, before any statement."""
    q, results, events = svc.queue, svc.results, svc.events
    task_id = await q.enqueue_async(q.build_task(FUNC, [1]))
    lookups: list[tuple[str, Callable[[], Awaitable[Any]]]] = [
        ("task_id", lambda: q.get_task_async(bad)),
        ("task_id", lambda: q.get_attempts_async(bad)),
        ("task_id", lambda: q.get_progress_async(bad)),
        ("task_id", lambda: q.cancel_async(bad)),
        ("task_id", lambda: q.requeue_async(bad)),
        ("task_id", lambda: q.delete_task_async(bad)),
        ("queue_name", lambda: q.list_tasks_async(queue_name=bad)),
        ("queue_name", lambda: q.size_async(bad)),
        ("queue_name", lambda: q.clear_async(bad)),
        ("schedule_id", lambda: q.get_schedule_async(bad)),
        ("schedule_id", lambda: q.pause_schedule_async(bad)),
        ("schedule_id", lambda: q.resume_schedule_async(bad)),
        ("schedule_id", lambda: q.cancel_schedule_async(bad)),
        ("schedule_id", lambda: q.delete_schedule_async(bad)),
        ("schedule_id", lambda: q.update_schedule_async(bad, priority=1)),
        ("task_id", lambda: q.update_task_async(bad, priority=1)),
        ("task_id", lambda: results.update_async(bad, result=1)),
        ("task_id", lambda: results.get_async(bad)),
        ("task_id", lambda: results.delete_async(bad)),
        ("task_id", lambda: results.wait_async(bad, timeout=1)),
        ("schedule_id", lambda: results.get_latest_async(bad)),
        ("schedule_id", lambda: results.list_results_async(schedule_id=bad)),
        ("task_id", lambda: events.get_events_async(task_id=bad)),
        ("queue_name", lambda: events.get_events_async(queue_name=bad)),
        ("worker_id", lambda: events.get_events_async(worker_id=bad)),
        ("schedule_id", lambda: events.get_events_async(schedule_id=bad)),
    ]
    for name, call in lookups:
        with pytest.raises(ValidationError) as err:
            await call()
        assert err.value.field == name, (name, err.value)
        assert ("NUL" if isinstance(bad, str) else type(bad).__name__) in str(err.value)
    # Nothing was touched: the queue still holds its task, pending.
    stored = await q.get_task_async(task_id)
    assert stored is not None and stored.status is TaskStatus.PENDING
    assert await q.size_async() == 1


@pytest.mark.parametrize("bad", [0, -1, "x", 2.0, True], ids=repr)
async def test_a_batch_size_that_is_not_positive_is_refused_not_looped_on(
    svc: Services, bad: Any
) -> None:
    """The cleanups delete in batches until one comes back short: a batch of 0 never
    does (they hung on both engines), and SQLite read a negative LIMIT as none."""
    q, results, events = svc.queue, svc.results, svc.events
    task_id = await q.enqueue_async(q.build_task(FUNC, [1]))
    calls: list[tuple[str, Callable[[], Awaitable[Any]]]] = [
        ("batch_size", lambda: results.cleanup_expired_async(bad)),
        ("batch_size", lambda: events.cleanup_expired_async(timedelta(0), batch_size=bad)),
        ("batch_size", lambda: q.purge_finished_async(timedelta(0), batch_size=bad)),
        ("limit", lambda: q.expire_due_async(bad)),
        ("limit", lambda: q.recover_expired_leases_async(bad)),
        ("limit", lambda: q.quarantine_unknown_statuses_async(bad)),
        ("limit", lambda: q.settle_orphans_async(bad)),
        ("limit", lambda: q.get_ready_schedules_async(limit=bad)),
    ]
    for name, call in calls:
        with pytest.raises(ValidationError) as err:
            await asyncio.wait_for(call(), 30)
        assert err.value.field == name, (name, err.value)
    assert (await events.get_events_async(task_id=task_id)) != []  # nothing was deleted
    stored = await q.get_task_async(task_id)
    assert stored is not None and stored.status is TaskStatus.PENDING


async def test_list_schedules_refuses_a_status_that_is_not_one(svc: Services) -> None:
    """``list_schedules(status=5)`` raised a raw TypeError; its siblings a ValidationError."""
    for bad in (5, ["nope"]):
        with pytest.raises(ValidationError) as err:
            await svc.queue.list_schedules_async(status=bad)  # type: ignore[arg-type]
        assert err.value.field == "status"
    assert await svc.queue.list_schedules_async(status=[]) == []
