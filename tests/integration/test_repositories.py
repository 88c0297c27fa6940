"""Contract suite for the four repositories, run on every engine the fixtures give.

Repository methods are sync functions over a SQLAlchemy ``Connection``. Each
runs here through ``AsyncConnection.run_sync`` inside ``engine.begin()``: the
connection handed in is inside a transaction the caller owns, the way the
services' transaction bodies (``Storage.write`` / ``Storage.read``) use them.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import attrs
import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from omniq._time import new_id
from omniq.db import schema
from omniq.db.engine import dialect_of
from omniq.errors import DuplicateTask, InvalidRow, OmniQError, SerializationError
from omniq.models import (
    EventLevel,
    EventType,
    ResultStatus,
    Schedule,
    ScheduleStatus,
    Task,
    TaskEvent,
    TaskResult,
    TaskStatus,
)
from omniq.repositories import (
    EventRepository,
    ResultRepository,
    ScheduleRepository,
    TaskRepository,
)
from omniq.repositories.events import event_row, maybe_written
from omniq.repositories.task_sweeps import final_before

pytestmark = pytest.mark.anyio

FUNC = "tests.jobs:work"
T0 = datetime(2026, 5, 1, 12, 0, 0, tzinfo=UTC)
NOW = T0 + timedelta(hours=1)
LEASE = timedelta(seconds=30)
t = schema.tasks


# --- helpers -------------------------------------------------------------------------


def task(**kwargs: Any) -> Task:
    """A task created at T0 (so it is due at NOW) unless told otherwise."""
    kwargs.setdefault("func", FUNC)
    kwargs.setdefault("created_at", T0)
    return Task(**kwargs)


def utc_aware(value: datetime | None) -> bool:
    return value is not None and value.tzinfo is not None and value.utcoffset() == timedelta(0)


async def insert(engine: AsyncEngine, *tasks: Task) -> None:
    repo = TaskRepository(dialect_of(engine))
    async with engine.begin() as conn:
        await conn.run_sync(repo.insert_many, tasks)


async def get(engine: AsyncEngine, task_id: str) -> Task | None:
    repo = TaskRepository(dialect_of(engine))
    async with engine.begin() as conn:
        return await conn.run_sync(repo.get, task_id)


async def lease_of(engine: AsyncEngine, task_id: str) -> datetime | None:
    stored = await get(engine, task_id)
    assert stored is not None
    return stored.lease_expires_at


async def claim(
    engine: AsyncEngine,
    *,
    queues: Sequence[str] | None = None,
    n: int = 100,
    now: datetime = NOW,
    token: str | None = None,
    worker_id: str = "worker-1",
    start: bool = True,
) -> list[Task]:
    repo = TaskRepository(dialect_of(engine))
    async with engine.begin() as conn:
        return await conn.run_sync(
            repo.claim,
            queues=queues,
            n=n,
            now=now,
            token=token or new_id(),
            lease_until=now + LEASE,
            worker_id=worker_id,
            start=start,
        )


async def claim_one_by_one(engine: AsyncEngine, *, queues: Sequence[str] | None) -> list[str]:
    """Claim with n=1 until nothing is left: the order the database hands tasks out."""
    order: list[str] = []
    while got := await claim(engine, queues=queues, n=1):
        assert len(got) == 1
        order.append(got[0].id)
    return order


async def set_column(engine: AsyncEngine, table: sa.Table, key: Any, **values: Any) -> None:
    """Write column values by hand, bypassing the repositories (a corrupted row)."""
    pk = next(iter(table.primary_key.columns))
    async with engine.begin() as conn:
        result = await conn.execute(sa.update(table).where(pk == key).values(**values))
        assert result.rowcount == 1


async def task_ids_in_db(engine: AsyncEngine) -> set[str]:
    async with engine.begin() as conn:
        return set((await conn.execute(sa.select(t.c.id))).scalars().all())


def schedule(**kwargs: Any) -> Schedule:
    kwargs.setdefault("func", FUNC)
    kwargs.setdefault("schedule_type", "interval")
    kwargs.setdefault("interval", timedelta(minutes=5))
    kwargs.setdefault("created_at", T0)
    return Schedule(**kwargs)


# --- tasks: insert and read back ----------------------------------------------------------


async def test_engine_dialect(engine: AsyncEngine) -> None:
    dialect = dialect_of(engine)
    assert dialect.name in ("sqlite", "postgresql")
    assert dialect.skip_locked is (dialect.name == "postgresql")
    assert dialect.single_writer is (dialect.name == "sqlite")


async def test_task_round_trip_all_fields(engine: AsyncEngine) -> None:
    ist = timezone(timedelta(hours=5, minutes=30))
    owner = schedule()
    parent = task(queue_name="очередь ✓")
    original = Task(
        func="pkg.sub_mod:Outer.method",
        func_args=(1, "zwei", [3.5, None], {"vier": True}),
        func_kwargs={"name": "Zoë 漢字 🚀", "nested": {"list": [1, {"x": "y"}]}, "empty": {}},
        id=new_id(),
        queue_name="очередь ✓",
        name="naïve name",
        description="multi\nline — description",
        tags=("ταγ", "tag two", "🚀"),
        priority=2**62,
        created_at=T0.astimezone(ist),
        run_at=(T0 + timedelta(minutes=3, microseconds=7)).astimezone(ist),
        ttl=timedelta(days=3, microseconds=7),
        depends_on=(parent.id,),
        status=TaskStatus.RUNNING,
        started_at=T0 + timedelta(seconds=1, microseconds=999_999),
        completed_at=None,
        callback="pkg.callbacks:on_done",
        callback_args=("cb", 2),
        retry_count=2,
        max_retries=7,
        retry_delay=timedelta(milliseconds=1500),
        result_ttl=timedelta(hours=6),
        store_result=False,
        timeout=timedelta(minutes=2, milliseconds=250),
        unique_key="unique ключ",
        schedule_id=owner.id,
        scheduled_for=T0 - timedelta(days=365 * 60),  # before the epoch
        attempts=3,
        lost_count=4,
        lease_token=new_id(),
        lease_expires_at=T0 + timedelta(seconds=90),
        worker_id="host:1234",
        last_error="Traceback…",
        cancel_requested=True,
    )
    tasks = TaskRepository(dialect_of(engine))
    async with engine.begin() as conn:
        await conn.run_sync(ScheduleRepository(dialect_of(engine)).insert, owner)
        await conn.run_sync(tasks.insert_many, [parent, original])
    got = await get(engine, original.id)
    assert got is not None
    assert got == original
    assert got.payload_error is None
    for name, value in attrs.asdict(got, recurse=False).items():
        if isinstance(value, datetime):
            assert utc_aware(value), name
    assert got.created_at == T0
    assert got.func_kwargs["name"] == "Zoë 漢字 🚀"
    assert got.tags == ("ταγ", "tag two", "🚀")
    assert got.ttl == timedelta(days=3, microseconds=7)
    assert got.expires_at == T0 + timedelta(days=3, microseconds=7)
    assert got.scheduled_for == T0 - timedelta(days=365 * 60)
    assert got.priority == 2**62
    assert got.lost_count == 4


async def test_task_round_trip_defaults_and_extremes(engine: AsyncEngine) -> None:
    minimal = Task(func="m:f")
    low = task(priority=-(2**63))
    async with engine.begin() as conn:
        await conn.run_sync(TaskRepository(dialect_of(engine)).insert_many, [minimal, low])
    assert await get(engine, minimal.id) == minimal
    got_low = await get(engine, low.id)
    assert got_low is not None
    assert got_low.priority == -(2**63)
    assert await get(engine, "no-such-task") is None


async def test_get_by_id_and_statuses(engine: AsyncEngine) -> None:
    a, b = task(), task(status=TaskStatus.COMPLETED)
    await insert(engine, a, b)
    repo = TaskRepository(dialect_of(engine))
    async with engine.begin() as conn:
        assert await conn.run_sync(repo.statuses, [a.id, b.id, "missing"]) == {
            a.id: TaskStatus.PENDING,
            b.id: TaskStatus.COMPLETED,
        }
        assert await conn.run_sync(repo.statuses, [a.id], lock=True) == {a.id: TaskStatus.PENDING}
        assert await conn.run_sync(repo.statuses, []) == {}


async def test_insert_many_empty_is_a_no_op(engine: AsyncEngine) -> None:
    await insert(engine)
    assert await task_ids_in_db(engine) == set()


# --- tasks: the claim --------------------------------------------------------------------


async def test_claim_order_priority_then_run_at_then_fifo(engine: AsyncEngine) -> None:
    same_time = T0 + timedelta(seconds=10)
    fifo = [task(run_at=same_time) for _ in range(4)]  # ids ascend in creation order
    high_late = task(priority=5, run_at=T0 + timedelta(seconds=20))
    high_early = task(priority=5, run_at=T0 + timedelta(seconds=5))
    low = task(priority=-1, run_at=T0)
    # Insert out of order: the database must order, not the insertion.
    await insert(engine, low, *reversed(fifo), high_late, high_early)
    order = await claim_one_by_one(engine, queues=["default"])
    assert order == [high_early.id, high_late.id, *[x.id for x in fifo], low.id]


async def test_claim_batch_is_returned_in_claim_order(engine: AsyncEngine) -> None:
    tasks = [task(priority=i % 3, run_at=T0 + timedelta(seconds=i)) for i in range(9)]
    await insert(engine, *tasks)
    got = await claim(engine, queues=["default"], n=4)
    expected = sorted(tasks, key=lambda x: (-x.priority, x.run_at, x.id))[:4]
    assert [x.id for x in got] == [x.id for x in expected]


async def test_claim_serves_queues_in_listed_order(engine: AsyncEngine) -> None:
    urgent = [task(queue_name="urgent", priority=0) for _ in range(2)]
    bulk = [task(queue_name="bulk", priority=p) for p in (100, 50, 1)]
    other = task(queue_name="other", priority=1000)
    await insert(engine, *bulk, *urgent, other)
    got = await claim(engine, queues=["urgent", "bulk"], n=4)
    assert [x.id for x in got] == [urgent[0].id, urgent[1].id, bulk[0].id, bulk[1].id]
    # An unlisted queue is never served.
    assert [x.id for x in await claim(engine, queues=["urgent", "bulk"], n=10)] == [bulk[2].id]
    assert await claim(engine, queues=["urgent", "bulk"]) == []
    remaining = await get(engine, other.id)
    assert remaining is not None
    assert remaining.status is TaskStatus.PENDING


async def test_claim_skips_empty_leading_queue(engine: AsyncEngine) -> None:
    b = task(queue_name="b")
    await insert(engine, b)
    assert [x.id for x in await claim(engine, queues=["a", "b"], n=5)] == [b.id]


async def test_claim_all_queues_by_priority(engine: AsyncEngine) -> None:
    a = task(queue_name="a", priority=1)
    b = task(queue_name="b", priority=3)
    c = task(queue_name="c", priority=2)
    await insert(engine, a, b, c)
    assert await claim_one_by_one(engine, queues=None) == [b.id, c.id, a.id]


async def test_delayed_tasks_are_not_claimable(engine: AsyncEngine) -> None:
    delayed = task(run_at=NOW + timedelta(minutes=1))
    exactly_now = task(run_at=NOW)
    await insert(engine, delayed, exactly_now)
    assert [x.id for x in await claim(engine)] == [exactly_now.id]
    assert await claim(engine, now=NOW + timedelta(seconds=59)) == []
    later = await claim(engine, now=NOW + timedelta(minutes=1))
    assert [x.id for x in later] == [delayed.id]


async def test_expired_tasks_are_not_claimable(engine: AsyncEngine) -> None:
    expired = task(ttl=timedelta(minutes=30))  # expires at T0 + 30 min < NOW
    at_now = task(expires_at=NOW)  # expires_at <= now: expired
    just_alive = task(expires_at=NOW + timedelta(microseconds=1))
    forever = task()
    await insert(engine, expired, at_now, just_alive, forever)
    got = {x.id for x in await claim(engine)}
    assert got == {just_alive.id, forever.id}
    for task_id in (expired.id, at_now.id):
        stored = await get(engine, task_id)
        assert stored is not None
        assert stored.status is TaskStatus.PENDING


async def test_only_pending_tasks_are_claimable(engine: AsyncEngine) -> None:
    pending = task()
    others = [
        task(status=status)
        for status in TaskStatus
        if status is not TaskStatus.PENDING and status is not TaskStatus.WAITING
    ]
    waiting = task(depends_on=[pending.id])
    await insert(engine, pending, waiting, *others)
    assert [x.id for x in await claim(engine)] == [pending.id]


async def test_claim_limit(engine: AsyncEngine) -> None:
    await insert(engine, *[task() for _ in range(10)])
    assert len(await claim(engine, queues=["default"], n=3)) == 3
    assert len(await claim(engine, queues=None, n=4)) == 4
    assert len(await claim(engine, n=100)) == 3
    assert await claim(engine) == []


async def test_claim_sets_lease_and_counts_attempts(engine: AsyncEngine) -> None:
    job = task(max_retries=3)
    await insert(engine, job)
    token = new_id()
    (got,) = await claim(engine, token=token, worker_id="host:42")
    assert got.status is TaskStatus.RUNNING
    assert got.attempts == 1
    assert got.lease_token == token
    assert got.lease_expires_at == NOW + LEASE
    assert got.worker_id == "host:42"
    assert got.started_at == NOW
    assert utc_aware(got.lease_expires_at)
    assert await get(engine, job.id) == got

    # Back to pending (a retry): the next claim counts a second attempt.
    repo = TaskRepository(dialect_of(engine))
    async with engine.begin() as conn:
        retried = await conn.run_sync(
            repo.transition,
            job.id,
            expected=[TaskStatus.RUNNING],
            lease_token=token,
            values={"status": TaskStatus.PENDING, "lease_token": None, "retry_count": 1},
        )
    assert retried is not None
    assert retried.status is TaskStatus.PENDING
    (again,) = await claim(engine, now=NOW + timedelta(seconds=5))
    assert again.attempts == 2
    assert again.retry_count == 1
    assert again.lease_token != token


async def test_claim_without_start_then_mark_started(engine: AsyncEngine) -> None:
    job = task()
    await insert(engine, job)
    token = new_id()
    (got,) = await claim(engine, token=token, worker_id="host:7", start=False)
    # Claimed under a lease, but not started: no attempt counted yet.
    assert got.status is TaskStatus.RUNNING
    assert got.lease_token == token
    assert got.lease_expires_at == NOW + LEASE
    assert got.worker_id == "host:7"
    assert got.started_at is None
    assert got.attempts == 0
    assert await get(engine, job.id) == got

    repo = TaskRepository(dialect_of(engine))
    started = NOW + timedelta(seconds=2)
    async with engine.begin() as conn:
        await conn.run_sync(repo.mark_started, [(job.id, "stolen", started)])  # not its lease
        await conn.run_sync(repo.mark_started, [])
    stored = await get(engine, job.id)
    assert stored is not None
    assert (stored.started_at, stored.attempts) == (None, 0)
    async with engine.begin() as conn:
        await conn.run_sync(repo.mark_started, [(job.id, token, started)])
        # Marked once: a second mark changes nothing.
        await conn.run_sync(repo.mark_started, [(job.id, token, started + timedelta(seconds=1))])
    stored = await get(engine, job.id)
    assert stored is not None
    assert stored.started_at == started
    assert utc_aware(stored.started_at)
    assert stored.attempts == 1
    assert stored.lease_token == token


# --- tasks: conditional transitions ----------------------------------------------------------


async def test_transition_is_fenced_by_status_and_lease(engine: AsyncEngine) -> None:
    job = task()
    await insert(engine, job)
    token = new_id()
    await claim(engine, token=token)
    repo = TaskRepository(dialect_of(engine))
    done = {"status": TaskStatus.COMPLETED, "completed_at": NOW + timedelta(seconds=1)}
    async with engine.begin() as conn:
        assert (
            await conn.run_sync(
                repo.transition,
                job.id,
                expected=[TaskStatus.RUNNING],
                lease_token="stolen",
                values=done,
            )
            is None
        )
        assert (
            await conn.run_sync(
                repo.transition,
                job.id,
                expected=[TaskStatus.PENDING],
                lease_token=token,
                values=done,
            )
            is None
        )
        assert (
            await conn.run_sync(
                repo.transition,
                "missing",
                expected=[TaskStatus.RUNNING],
                lease_token=token,
                values=done,
            )
            is None
        )
    stored = await get(engine, job.id)
    assert stored is not None
    assert stored.status is TaskStatus.RUNNING

    async with engine.begin() as conn:
        completed = await conn.run_sync(
            repo.transition, job.id, expected=[TaskStatus.RUNNING], lease_token=token, values=done
        )
    assert completed is not None
    assert completed.status is TaskStatus.COMPLETED
    assert completed.completed_at == NOW + timedelta(seconds=1)
    assert await get(engine, job.id) == completed

    # A second completion (a stale worker) finds nothing to change.
    async with engine.begin() as conn:
        assert (
            await conn.run_sync(
                repo.transition,
                job.id,
                expected=[TaskStatus.RUNNING],
                lease_token=token,
                values=done,
            )
            is None
        )


async def test_transition_without_lease_and_several_expected(engine: AsyncEngine) -> None:
    a, b = task(), task(status=TaskStatus.WAITING)
    await insert(engine, a, b)
    repo = TaskRepository(dialect_of(engine))
    expected = [TaskStatus.PENDING, TaskStatus.WAITING]
    async with engine.begin() as conn:
        for job in (a, b):
            cancelled = await conn.run_sync(
                repo.transition,
                job.id,
                expected=expected,
                values={"status": TaskStatus.CANCELLED, "last_error": "cancelled by user"},
            )
            assert cancelled is not None
            assert cancelled.status is TaskStatus.CANCELLED
            assert cancelled.last_error == "cancelled by user"


async def test_transition_many_with_limit(engine: AsyncEngine) -> None:
    mine = [task(queue_name="sweep") for _ in range(5)]
    keep = task(queue_name="keep")
    await insert(engine, *mine, keep)
    repo = TaskRepository(dialect_of(engine))
    where = sa.and_(t.c.queue_name == "sweep", t.c.status == TaskStatus.PENDING.value)
    values = {"status": TaskStatus.EXPIRED, "completed_at": NOW}
    async with engine.begin() as conn:
        first = await conn.run_sync(repo.transition_many, where=where, values=values, limit=2)
    assert len(first) == 2
    assert all(x.status is TaskStatus.EXPIRED and x.completed_at == NOW for x in first)
    async with engine.begin() as conn:
        rest = await conn.run_sync(repo.transition_many, where=where, values=values)
    assert len(rest) == 3
    assert {x.id for x in first} | {x.id for x in rest} == {x.id for x in mine}
    async with engine.begin() as conn:
        assert await conn.run_sync(repo.transition_many, where=where, values=values, limit=10) == []
    kept = await get(engine, keep.id)
    assert kept is not None
    assert kept.status is TaskStatus.PENDING


async def test_renew_leases_only_for_matching_tokens(engine: AsyncEngine) -> None:
    a, b, c = task(priority=3), task(priority=2), task(priority=1)
    await insert(engine, a, b, c)
    token_ab, token_c = new_id(), new_id()
    await claim(engine, n=2, token=token_ab)
    await claim(engine, n=1, token=token_c)
    repo = TaskRepository(dialect_of(engine))
    until = NOW + timedelta(minutes=10)
    async with engine.begin() as conn:
        renewed = await conn.run_sync(
            repo.renew_leases,
            {a.id: token_ab, b.id: "lost-token", c.id: token_c, "gone": token_ab},
            until,
        )
    assert renewed == {a.id, c.id}
    assert await lease_of(engine, a.id) == until
    assert await lease_of(engine, c.id) == until
    assert await lease_of(engine, b.id) == NOW + LEASE  # its caller named the wrong token

    # Tokens swapped between tasks: each one's token exists, but not on that task.
    later = NOW + timedelta(minutes=20)
    async with engine.begin() as conn:
        assert (
            await conn.run_sync(repo.renew_leases, {a.id: token_c, c.id: token_ab}, later) == set()
        )
        assert await conn.run_sync(repo.renew_leases, {}, later) == set()
    for task_id in (a.id, c.id):
        assert await lease_of(engine, task_id) == until, "a lease under another token was extended"


async def test_renew_leases_ignores_finished_tasks(engine: AsyncEngine) -> None:
    job = task()
    await insert(engine, job)
    token = new_id()
    await claim(engine, token=token)
    repo = TaskRepository(dialect_of(engine))
    async with engine.begin() as conn:
        await conn.run_sync(
            repo.transition,
            job.id,
            expected=[TaskStatus.RUNNING],
            lease_token=token,
            values={"status": TaskStatus.COMPLETED},
        )
        assert (
            await conn.run_sync(repo.renew_leases, {job.id: token}, NOW + timedelta(hours=1))
            == set()
        )


# --- tasks: unique keys ---------------------------------------------------------------------


async def test_insert_unique(engine: AsyncEngine) -> None:
    repo = TaskRepository(dialect_of(engine))
    first = task(unique_key="report:2026-05")
    duplicate = task(unique_key="report:2026-05")
    other_key = task(unique_key="report:2026-06")
    async with engine.begin() as conn:
        assert await conn.run_sync(repo.insert_unique, first) == first.id
    async with engine.begin() as conn:
        assert await conn.run_sync(repo.insert_unique, duplicate) is None
        assert await conn.run_sync(repo.insert_unique, other_key) == other_key.id
        assert await conn.run_sync(repo.live_id_for_key, "report:2026-05") == first.id
    assert await get(engine, duplicate.id) is None

    # Running still holds the key.
    token = new_id()
    claimed = await claim(engine, token=token, n=1)
    assert [x.id for x in claimed] == [first.id]
    async with engine.begin() as conn:
        assert await conn.run_sync(repo.insert_unique, task(unique_key="report:2026-05")) is None

    # Completed frees the key.
    async with engine.begin() as conn:
        assert await conn.run_sync(
            repo.transition,
            first.id,
            expected=[TaskStatus.RUNNING],
            lease_token=token,
            values={"status": TaskStatus.COMPLETED},
        )
        assert await conn.run_sync(repo.live_id_for_key, "report:2026-05") is None
    again = task(unique_key="report:2026-05")
    async with engine.begin() as conn:
        assert await conn.run_sync(repo.insert_unique, again) == again.id
        assert await conn.run_sync(repo.live_id_for_key, "report:2026-05") == again.id
    stored = await get(engine, again.id)
    assert stored == again


async def test_insert_unique_key_held_by_waiting_task_and_dependencies(engine: AsyncEngine) -> None:
    repo = TaskRepository(dialect_of(engine))
    parent = task()
    await insert(engine, parent)
    child = task(unique_key="k", depends_on=[parent.id])
    async with engine.begin() as conn:
        assert await conn.run_sync(repo.insert_unique, child) == child.id
        # The row only: its dependency edges are written by insert_edges.
        assert await conn.run_sync(repo.dependents, [parent.id]) == []
        await conn.run_sync(repo.insert_edges, [child])
        assert await conn.run_sync(repo.insert_unique, task(unique_key="k")) is None
        assert await conn.run_sync(repo.dependents, [parent.id]) == [child.id]
        await conn.run_sync(repo.insert_edges, [])  # nothing to write
    stored = await get(engine, child.id)
    assert stored == child
    assert stored is not None
    assert stored.status is TaskStatus.WAITING


async def test_insert_many_duplicate_live_unique_key_raises(engine: AsyncEngine) -> None:
    existing = task(unique_key="same")
    await insert(engine, existing)
    batch = [task(), task(unique_key="same")]
    with pytest.raises(DuplicateTask):
        await insert(engine, *batch)
    assert await task_ids_in_db(engine) == {existing.id}


# --- tasks: failed batches write nothing --------------------------------------------------------


async def test_failing_insert_many_writes_none_of_the_batch(engine: AsyncEngine) -> None:
    prior = task(name="prior")
    await insert(engine, prior)
    good = [task(name=f"good {i}") for i in range(3)]
    dup_in_batch = attrs.evolve(task(), id=good[1].id)
    with pytest.raises(DuplicateTask):
        await insert(engine, *good, dup_in_batch)
    assert await task_ids_in_db(engine) == {prior.id}
    with pytest.raises(DuplicateTask):
        await insert(engine, task(name="new"), attrs.evolve(task(), id=prior.id, name="clash"))
    assert await task_ids_in_db(engine) == {prior.id}
    stored = await get(engine, prior.id)
    assert stored == prior
    assert stored is not None
    assert stored.name == "prior"


async def test_insert_many_missing_dependency_is_typed_and_writes_nothing(
    engine: AsyncEngine,
) -> None:
    orphan = task(depends_on=["no-such-parent"])
    with pytest.raises(OmniQError):
        await insert(engine, task(), orphan)
    assert await task_ids_in_db(engine) == set()


async def test_insert_many_unserializable_payload_writes_nothing(engine: AsyncEngine) -> None:
    bad = task(func_args=(object(),))
    with pytest.raises(SerializationError, match="func_args"):
        await insert(engine, task(), bad)
    assert await task_ids_in_db(engine) == set()


# --- tasks: dependencies ------------------------------------------------------------------------


async def test_dependents_and_release_ready_fan_in(engine: AsyncEngine) -> None:
    a, b, lone = task(), task(), task()
    both = task(depends_on=[a.id, b.id])
    only_a = task(depends_on=[a.id])
    await insert(engine, a, b, lone, both, only_a)
    assert both.status is TaskStatus.WAITING
    repo = TaskRepository(dialect_of(engine))
    async with engine.begin() as conn:
        assert set(await conn.run_sync(repo.dependents, [a.id])) == {both.id, only_a.id}
        assert await conn.run_sync(repo.dependents, [b.id]) == [both.id]
        assert await conn.run_sync(repo.dependents, [lone.id]) == []
        assert await conn.run_sync(repo.dependents, []) == []
        assert sorted(await conn.run_sync(repo.dependents, [a.id, b.id])) == sorted(
            {both.id, only_a.id}
        )
    # Waiting tasks are never claimed.
    assert {x.id for x in await claim(engine, n=10)} == {a.id, b.id, lone.id}

    async def complete(task_id: str) -> None:
        async with engine.begin() as conn:
            done = await conn.run_sync(
                repo.transition,
                task_id,
                expected=[TaskStatus.RUNNING],
                values={"status": TaskStatus.COMPLETED, "completed_at": NOW},
            )
            assert done is not None

    await complete(a.id)
    async with engine.begin() as conn:
        released = await conn.run_sync(repo.release_ready, [both.id, only_a.id], NOW)
    assert [x.id for x in released] == [only_a.id]
    assert released[0].status is TaskStatus.PENDING
    stored_both = await get(engine, both.id)
    assert stored_both is not None
    assert stored_both.status is TaskStatus.WAITING

    # A failed dependency does not count as met.
    async with engine.begin() as conn:
        await conn.run_sync(
            repo.transition,
            b.id,
            expected=[TaskStatus.RUNNING],
            values={"status": TaskStatus.FAILED},
        )
        assert await conn.run_sync(repo.release_ready, [both.id], NOW) == []
        await conn.run_sync(
            repo.transition,
            b.id,
            expected=[TaskStatus.FAILED],
            values={"status": TaskStatus.COMPLETED},
        )
        released = await conn.run_sync(repo.release_ready, [both.id], NOW)
        assert [x.id for x in released] == [both.id]
        # Released once: a second call finds nothing waiting.
        assert await conn.run_sync(repo.release_ready, [both.id], NOW) == []
        assert await conn.run_sync(repo.release_ready, [], NOW) == []
        assert await conn.run_sync(repo.dependents, [a.id, b.id]) == []
    assert {x.id for x in await claim(engine, n=10)} == {both.id, only_a.id}


# --- tasks: deletes ----------------------------------------------------------------------------


async def test_delete_and_delete_where(engine: AsyncEngine) -> None:
    old_done = [task(status=TaskStatus.COMPLETED, completed_at=T0) for _ in range(3)]
    recent_done = task(status=TaskStatus.FAILED, completed_at=NOW)
    pending = task()
    child = task(depends_on=[pending.id])
    await insert(engine, *old_done, recent_done, pending, child)
    repo = TaskRepository(dialect_of(engine))
    async with engine.begin() as conn:
        assert await conn.run_sync(repo.delete, "missing") is False
        first = await conn.run_sync(
            repo.delete_where, final_before(T0 + timedelta(minutes=1)), limit=2
        )
        assert len(first) == 2
        second = await conn.run_sync(
            repo.delete_where, final_before(T0 + timedelta(minutes=1)), limit=2
        )
        assert set(first) | set(second) == {x.id for x in old_done}
        assert (
            await conn.run_sync(repo.delete_where, final_before(T0 + timedelta(minutes=1)), 10)
            == []
        )
        # Deleting a task removes its dependency edges too.
        assert await conn.run_sync(repo.delete, pending.id) is True
        assert await conn.run_sync(repo.dependents, [pending.id]) == []
        edges = (
            await conn.execute(sa.select(sa.func.count()).select_from(schema.task_dependencies))
        ).scalar_one()
        assert edges == 0
    assert await task_ids_in_db(engine) == {recent_done.id, child.id}


# --- tasks: counts, listings, peeks -------------------------------------------------------------


async def test_count_by_and_count(engine: AsyncEngine) -> None:
    await insert(
        engine,
        *[task(queue_name="a") for _ in range(3)],
        task(queue_name="a", status=TaskStatus.COMPLETED),
        *[task(queue_name="b", status=TaskStatus.FAILED) for _ in range(2)],
    )
    repo = TaskRepository(dialect_of(engine))
    async with engine.begin() as conn:
        assert await conn.run_sync(repo.count_by) == {
            ("a", "pending"): 3,
            ("a", "completed"): 1,
            ("b", "failed"): 2,
        }
        assert await conn.run_sync(repo.count_by, queue_name="b") == {("b", "failed"): 2}
        assert await conn.run_sync(repo.count_by, queue_name="nope") == {}
        assert await conn.run_sync(repo.count, TaskStatus.PENDING) == 3
        assert await conn.run_sync(repo.count, TaskStatus.FAILED, queue_name="a") == 0
        assert await conn.run_sync(repo.count, TaskStatus.FAILED, queue_name="b") == 2


async def test_list_filters_order_and_pagination(engine: AsyncEngine) -> None:
    owner = schedule()
    async with engine.begin() as conn:
        await conn.run_sync(ScheduleRepository(dialect_of(engine)).insert, owner)
    tasks = [
        task(
            queue_name="a" if i % 2 else "b",
            priority=i,
            created_at=T0 + timedelta(seconds=i),
            status=TaskStatus.COMPLETED if i >= 8 else TaskStatus.PENDING,
            schedule_id=owner.id if i in (1, 2) else None,
        )
        for i in range(10)
    ]
    await insert(engine, *reversed(tasks))
    repo = TaskRepository(dialect_of(engine))
    ids = [x.id for x in tasks]
    async with engine.begin() as conn:
        everything = await conn.run_sync(repo.query)
        assert [x.id for x in everything] == ids  # created_at ascending by default
        assert [x.id for x in await conn.run_sync(repo.query, limit=3, offset=2)] == ids[2:5]
        assert [x.id for x in await conn.run_sync(repo.query, limit=3, offset=9)] == ids[9:]
        assert [
            x.id for x in await conn.run_sync(repo.query, order_by="priority", descending=True)
        ] == ids[::-1]
        assert [
            x.id
            for x in await conn.run_sync(repo.query, order_by="priority", descending=True, limit=2)
        ] == [ids[9], ids[8]]
        assert [x.id for x in await conn.run_sync(repo.query, queue_name="a")] == ids[1::2]
        assert [
            x.id for x in await conn.run_sync(repo.query, status=[TaskStatus.COMPLETED])
        ] == ids[8:]
        assert [
            x.id
            for x in await conn.run_sync(
                repo.query, status=[TaskStatus.COMPLETED, TaskStatus.PENDING], queue_name="b"
            )
        ] == ids[0::2]
        assert [x.id for x in await conn.run_sync(repo.query, schedule_id=owner.id)] == ids[1:3]
        assert await conn.run_sync(repo.query, status=[TaskStatus.RUNNING]) == []
        assert [x.id for x in await conn.run_sync(repo.query, order_by="id")] == sorted(ids)
        assert everything == tasks


async def test_next_run_at(engine: AsyncEngine) -> None:
    repo = TaskRepository(dialect_of(engine))
    async with engine.begin() as conn:
        assert await conn.run_sync(repo.next_run_at, None) is None
    soon = T0 + timedelta(minutes=5, microseconds=1)
    await insert(
        engine,
        task(queue_name="a", run_at=T0 + timedelta(hours=1)),
        task(queue_name="a", run_at=soon),
        task(queue_name="b", run_at=T0 + timedelta(minutes=1)),
        task(queue_name="a", run_at=T0, status=TaskStatus.COMPLETED),  # not pending
    )
    async with engine.begin() as conn:
        first_a = await conn.run_sync(repo.next_run_at, ["a"])
        assert first_a == soon
        assert utc_aware(first_a)
        assert await conn.run_sync(repo.next_run_at, None) == T0 + timedelta(minutes=1)
        assert await conn.run_sync(repo.next_run_at, ["a", "b"]) == T0 + timedelta(minutes=1)
        assert await conn.run_sync(repo.next_run_at, ["empty"]) is None


async def test_next_run_at_at_the_epoch(engine: AsyncEngine) -> None:
    epoch = datetime(1970, 1, 1, tzinfo=UTC)
    await insert(engine, task(created_at=epoch))
    repo = TaskRepository(dialect_of(engine))
    async with engine.begin() as conn:
        assert await conn.run_sync(repo.next_run_at, ["default"]) == epoch


# --- tasks: unreadable rows ----------------------------------------------------------------------


async def test_unknown_task_status_in_row_raises_invalid_row(engine: AsyncEngine) -> None:
    job = task()
    await insert(engine, job)
    await set_column(engine, t, job.id, status="bogus")
    repo = TaskRepository(dialect_of(engine))
    async with engine.begin() as conn:
        with pytest.raises(InvalidRow, match="bogus"):
            await conn.run_sync(repo.get, job.id)
    async with engine.begin() as conn:
        with pytest.raises(InvalidRow):
            await conn.run_sync(repo.query)
    async with engine.begin() as conn:
        with pytest.raises(InvalidRow):
            await conn.run_sync(repo.statuses, [job.id])


async def test_invalid_stored_func_reference_raises_invalid_row(engine: AsyncEngine) -> None:
    job = task()
    await insert(engine, job)
    await set_column(engine, t, job.id, func="not a reference")
    async with engine.begin() as conn:
        with pytest.raises(InvalidRow, match="func"):
            await conn.run_sync(TaskRepository(dialect_of(engine)).get, job.id)


@pytest.mark.parametrize(
    ("payload", "serializer"),
    [
        ("{not json", "json"),
        ("[1, 2, 3]", "json"),
        ('{"a": "not a list"}', "json"),
        ('{"k": [1]}', "json"),
        ('{"c": 5}', "json"),
        ('{"a": [1], "c": "abc"}', "json"),
        ("NaN", "json"),
        ("gASVBQAAAAAAAACMAXiULg==", "pickle"),
        ("{}", "unknown-serializer"),
    ],
)
async def test_malformed_payload_sets_payload_error(
    engine: AsyncEngine, payload: str, serializer: str
) -> None:
    job = task(func_args=(1,), func_kwargs={"k": "v"})
    await insert(engine, job)
    await set_column(engine, t, job.id, payload=payload, serializer=serializer)
    got = await get(engine, job.id)
    assert got is not None
    assert got.payload_error is not None
    assert got.func_args == ()
    assert got.func_kwargs == {}
    assert got.callback_args == ()
    assert got.id == job.id
    assert got.status is TaskStatus.PENDING
    if serializer == "pickle":
        assert "UnsafePayload" in got.payload_error
    # The claim hands it out too, so that a worker can fail it with the message.
    (claimed,) = await claim(engine)
    assert claimed.payload_error == got.payload_error


# --- schedules ------------------------------------------------------------------------------------


async def test_schedule_round_trip(engine: AsyncEngine) -> None:
    repo = ScheduleRepository(dialect_of(engine))
    cron = Schedule(
        func="pkg.mod:nightly",
        schedule_type="cron",
        cron_expression="0 3 * * *",
        timezone="Europe/Berlin",
        func_args=(1, "zwei"),
        func_kwargs={"grüße": ["ä", "ö"]},
        queue_name="nightly",
        task_options={"priority": 5, "tags": ["n"], "max_retries": 2},
        name="Nächtlich",
        description="runs at 3",
        tags=("cron", "ü"),
        max_runs=10,
        misfire_policy="skip",
        misfire_grace=timedelta(minutes=5),
        created_at=T0,
        updated_at=T0,
        last_run_at=T0 - timedelta(days=1),
        next_run_at=T0 + timedelta(hours=3),
        run_count=7,
    )
    interval = schedule(interval=timedelta(seconds=90, microseconds=5))
    one_shot = schedule(schedule_type="timestamp", interval=None, run_at=NOW)
    async with engine.begin() as conn:
        for item in (cron, interval, one_shot):
            await conn.run_sync(repo.insert, item)
    async with engine.begin() as conn:
        for item in (cron, interval, one_shot):
            got = await conn.run_sync(repo.get, item.id)
            assert got == item
            assert got is not None
            assert got.payload_error is None
            assert utc_aware(got.created_at)
        assert await conn.run_sync(repo.get, "missing") is None
    async with engine.begin() as conn:
        with pytest.raises(DuplicateTask):
            await conn.run_sync(repo.insert, cron)


async def test_schedule_query(engine: AsyncEngine) -> None:
    repo = ScheduleRepository(dialect_of(engine))
    items = [
        schedule(
            created_at=T0 + timedelta(seconds=i),
            status=ScheduleStatus.PAUSED if i % 2 else ScheduleStatus.ACTIVE,
            next_run_at=None if i == 2 else NOW - timedelta(minutes=i),
        )
        for i in range(5)
    ]
    async with engine.begin() as conn:
        for item in reversed(items):
            await conn.run_sync(repo.insert, item)
        ids = [x.id for x in items]
        assert [x.id for x in await conn.run_sync(repo.query)] == ids  # oldest first
        assert await conn.run_sync(repo.query) == items
        assert [x.id for x in await conn.run_sync(repo.query, limit=2, offset=1)] == ids[1:3]
        assert [
            x.id for x in await conn.run_sync(repo.query, status=[ScheduleStatus.PAUSED])
        ] == ids[1::2]
        assert await conn.run_sync(repo.query, status=[ScheduleStatus.CANCELLED]) == []
        by_next = await conn.run_sync(repo.query, order_by="next_run_at")
        assert [x.id for x in by_next] == [ids[4], ids[3], ids[1], ids[0]]  # unscheduled left out


async def test_schedule_due(engine: AsyncEngine) -> None:
    repo = ScheduleRepository(dialect_of(engine))
    late = schedule(next_run_at=NOW - timedelta(minutes=10))
    on_time = schedule(next_run_at=NOW)
    future = schedule(next_run_at=NOW + timedelta(microseconds=1))
    paused = schedule(next_run_at=NOW - timedelta(hours=1), status="paused")
    never = schedule(next_run_at=None)
    async with engine.begin() as conn:
        for item in (on_time, future, paused, never, late):
            await conn.run_sync(repo.insert, item)
    async with engine.begin() as conn:
        assert [x.id for x in await conn.run_sync(repo.due, NOW, limit=10)] == [late.id, on_time.id]
        assert [x.id for x in await conn.run_sync(repo.due, NOW, limit=1)] == [late.id]


async def test_schedule_update_compare_and_set(engine: AsyncEngine) -> None:
    repo = ScheduleRepository(dialect_of(engine))
    fire = NOW
    item = schedule(next_run_at=fire)
    async with engine.begin() as conn:
        await conn.run_sync(repo.insert, item)
    next_fire = fire + timedelta(minutes=5)
    async with engine.begin() as conn:
        stale = await conn.run_sync(
            repo.update,
            item.id,
            {"next_run_at": next_fire},
            expected_next_run_at=fire - timedelta(microseconds=1),
        )
        assert stale is None
        wrong_status = await conn.run_sync(
            repo.update,
            item.id,
            {"next_run_at": next_fire},
            expected_status=[ScheduleStatus.PAUSED],
        )
        assert wrong_status is None
        assert (
            await conn.run_sync(repo.update, item.id, {"run_count": 1}, expected_next_run_at=None)
            is None
        )
        assert await conn.run_sync(repo.update, "missing", {"run_count": 1}) is None
        updated = await conn.run_sync(
            repo.update,
            item.id,
            {"next_run_at": next_fire, "last_run_at": fire, "run_count": 1},
            expected_status=[ScheduleStatus.ACTIVE],
            expected_next_run_at=fire,
        )
    assert updated is not None
    assert updated.next_run_at == next_fire
    assert updated.last_run_at == fire
    assert updated.run_count == 1
    # The same compare-and-set again (a second scheduler) loses.
    async with engine.begin() as conn:
        assert (
            await conn.run_sync(repo.update, item.id, {"run_count": 2}, expected_next_run_at=fire)
            is None
        )
        paused = await conn.run_sync(
            repo.update,
            item.id,
            {"status": ScheduleStatus.PAUSED, "paused_at": NOW, "next_run_at": None},
            expected_status=[ScheduleStatus.ACTIVE],
        )
        assert paused is not None
        assert paused.status is ScheduleStatus.PAUSED
        resumed = await conn.run_sync(
            repo.update,
            item.id,
            {"status": ScheduleStatus.ACTIVE, "next_run_at": next_fire},
            expected_next_run_at=None,
        )
        assert resumed is not None
        assert resumed.status is ScheduleStatus.ACTIVE
        assert await conn.run_sync(repo.get, item.id) == resumed


async def test_schedule_delete_detaches_its_tasks(engine: AsyncEngine) -> None:
    repo = ScheduleRepository(dialect_of(engine))
    item = schedule()
    async with engine.begin() as conn:
        await conn.run_sync(repo.insert, item)
    made = task(schedule_id=item.id, scheduled_for=NOW)
    await insert(engine, made)
    async with engine.begin() as conn:
        assert await conn.run_sync(repo.delete, item.id) is True
        assert await conn.run_sync(repo.delete, item.id) is False
        assert await conn.run_sync(repo.get, item.id) is None
    stored = await get(engine, made.id)
    assert stored is not None
    assert stored.schedule_id is None


async def test_one_task_per_schedule_fire_time(engine: AsyncEngine) -> None:
    item = schedule()
    async with engine.begin() as conn:
        await conn.run_sync(ScheduleRepository(dialect_of(engine)).insert, item)
    first = task(schedule_id=item.id, scheduled_for=NOW)
    await insert(engine, first)
    with pytest.raises(DuplicateTask):
        await insert(engine, task(schedule_id=item.id, scheduled_for=NOW))
    await insert(engine, task(schedule_id=item.id, scheduled_for=NOW + timedelta(minutes=5)))
    assert len(await task_ids_in_db(engine)) == 2


async def test_schedule_unreadable_rows(engine: AsyncEngine) -> None:
    repo = ScheduleRepository(dialect_of(engine))
    broken_payload = schedule(func_args=(1,))
    bogus_status = schedule()
    async with engine.begin() as conn:
        await conn.run_sync(repo.insert, broken_payload)
        await conn.run_sync(repo.insert, bogus_status)
    await set_column(engine, schema.schedules, broken_payload.id, payload="{oops")
    await set_column(engine, schema.schedules, bogus_status.id, status="bogus")
    async with engine.begin() as conn:
        got = await conn.run_sync(repo.get, broken_payload.id)
        assert got is not None
        assert got.payload_error is not None
        assert got.func_args == ()
        with pytest.raises(InvalidRow, match="bogus"):
            await conn.run_sync(repo.get, bogus_status.id)


# --- results --------------------------------------------------------------------------------------


def result(task_id: str | None = None, **kwargs: Any) -> TaskResult:
    kwargs.setdefault("status", ResultStatus.SUCCESS)
    kwargs.setdefault("created_at", T0)
    return TaskResult(task_id=task_id or new_id(), **kwargs)


async def test_result_upsert_get_and_replace(engine: AsyncEngine) -> None:
    repo = ResultRepository(dialect_of(engine))
    first = result(
        result={"answer": 42, "text": "naïve ✓", "items": [1, 2.5, None, True]},
        started_at=T0,
        completed_at=T0 + timedelta(seconds=2),
        ttl=timedelta(days=1),
        execution_time=1.75,
        worker_id="w1",
        retry_count=1,
        schedule_id="s1",
    )
    failed = result(
        status=ResultStatus.ERROR,
        error="ValueError: bad",
        error_type="ValueError",
        error_traceback="Traceback (most recent call last): ...",
    )
    none_value = result(result=None)
    async with engine.begin() as conn:
        await conn.run_sync(repo.upsert_many, [first, failed, none_value])
        await conn.run_sync(repo.upsert_many, [])
    async with engine.begin() as conn:
        assert await conn.run_sync(repo.get, first.task_id) == first
        assert await conn.run_sync(repo.get, failed.task_id) == failed
        stored_none = await conn.run_sync(repo.get, none_value.task_id)
        assert stored_none == none_value
        assert await conn.run_sync(repo.get, "missing") is None
        got = await conn.run_sync(repo.get, first.task_id)
        assert got is not None
        assert utc_aware(got.created_at)
        assert got.expires_at == T0 + timedelta(days=1)
    replacement = result(first.task_id, status=ResultStatus.TIMEOUT, error="too slow")
    async with engine.begin() as conn:
        await conn.run_sync(repo.upsert_many, [replacement])
    async with engine.begin() as conn:
        assert await conn.run_sync(repo.get, first.task_id) == replacement
        assert await conn.run_sync(repo.count_by_status) == {"success": 1, "error": 1, "timeout": 1}


async def test_result_value_must_serialize(engine: AsyncEngine) -> None:
    repo = ResultRepository(dialect_of(engine))
    with pytest.raises(SerializationError, match="result"):
        async with engine.begin() as conn:
            await conn.run_sync(repo.upsert_many, [result(), result(result={"x": float("nan")})])
    async with engine.begin() as conn:
        assert await conn.run_sync(repo.count_by_status) == {}


async def test_result_latest_for_schedule(engine: AsyncEngine) -> None:
    repo = ResultRepository(dialect_of(engine))
    older = result(schedule_id="sched", created_at=T0)
    newest = result(schedule_id="sched", created_at=T0 + timedelta(minutes=2))
    middle = result(schedule_id="sched", created_at=T0 + timedelta(minutes=1))
    other = result(schedule_id="other", created_at=T0 + timedelta(hours=1))
    async with engine.begin() as conn:
        await conn.run_sync(repo.upsert_many, [older, newest, middle, other])
        assert await conn.run_sync(repo.latest_for_schedule, "sched") == newest
        assert await conn.run_sync(repo.latest_for_schedule, "none") is None


async def test_result_update_delete_and_expiry(engine: AsyncEngine) -> None:
    repo = ResultRepository(dialect_of(engine))
    expired = [result(ttl=timedelta(minutes=1)) for _ in range(3)]  # expire at T0 + 1 min
    at_now = result(expires_at=NOW)
    alive = result(ttl=timedelta(days=1))
    forever = result()
    async with engine.begin() as conn:
        await conn.run_sync(repo.upsert_many, [*expired, at_now, alive, forever])
    async with engine.begin() as conn:
        assert (
            await conn.run_sync(repo.update, alive.task_id, {"worker_id": "w9", "error": "x"})
            is True
        )
        assert await conn.run_sync(repo.update, "missing", {"worker_id": "w9"}) is False
        updated = await conn.run_sync(repo.get, alive.task_id)
        assert updated is not None
        assert (updated.worker_id, updated.error) == ("w9", "x")
        assert await conn.run_sync(repo.delete_expired, NOW, limit=2) == 2
        assert await conn.run_sync(repo.delete_expired, NOW, limit=10) == 2
        assert await conn.run_sync(repo.delete_expired, NOW, limit=10) == 0
        assert await conn.run_sync(repo.delete, forever.task_id) is True
        assert await conn.run_sync(repo.delete, forever.task_id) is False
        assert await conn.run_sync(repo.count_by_status) == {"success": 1}
        assert await conn.run_sync(repo.get, alive.task_id) is not None


async def test_result_unreadable_rows(engine: AsyncEngine) -> None:
    repo = ResultRepository(dialect_of(engine))
    bogus, broken = result(), result(result=[1])
    async with engine.begin() as conn:
        await conn.run_sync(repo.upsert_many, [bogus, broken])
    await set_column(engine, schema.results, bogus.task_id, status="bogus")
    await set_column(engine, schema.results, broken.task_id, result="{not json")
    async with engine.begin() as conn:
        with pytest.raises(InvalidRow, match="bogus"):
            await conn.run_sync(repo.get, bogus.task_id)
        with pytest.raises(InvalidRow):
            await conn.run_sync(repo.get, broken.task_id)


# --- events ---------------------------------------------------------------------------------------


def event(**kwargs: Any) -> TaskEvent:
    return TaskEvent(**kwargs)


async def test_event_insert_and_query_filters(engine: AsyncEngine) -> None:
    repo = EventRepository(dialect_of(engine))
    ev = [
        event(event_type="enqueued", task_id="t1", queue_name="q1", timestamp=T0),
        event(
            event_type="dequeued",
            task_id="t1",
            queue_name="q1",
            worker_id="w1",
            timestamp=T0 + timedelta(seconds=1),
        ),
        event(
            event_type="completed",
            task_id="t1",
            queue_name="q1",
            worker_id="w1",
            execution_time=0.25,
            retry_count=0,
            data={"result_size": 3, "ünïcode": ["✓"]},
            timestamp=T0 + timedelta(seconds=2),
        ),
        event(
            event_type="failed",
            task_id="t2",
            queue_name="q2",
            worker_id="w2",
            level="error",
            error="boom",
            message="it failed",
            timestamp=T0 + timedelta(seconds=3),
        ),
        event(
            event_type="schedule_fired",
            schedule_id="s1",
            source="scheduler",
            timestamp=T0 + timedelta(seconds=4),
        ),
        event(
            event_type="worker_started",
            worker_id="w1",
            level="debug",
            timestamp=T0 + timedelta(seconds=5),
        ),
    ]
    async with engine.begin() as conn:
        await conn.run_sync(repo.insert_many, ev)
        await conn.run_sync(repo.insert_many, [])

    async def ids(**filters: Any) -> list[int]:
        async with engine.begin() as conn:
            found = await conn.run_sync(repo.query, **filters)
        assert all(x.id is not None for x in found)
        return [x.id for x in found]  # type: ignore[misc]

    all_ids = await ids()
    assert len(all_ids) == 6
    assert all_ids == sorted(all_ids, reverse=True)  # newest first
    by_pos = dict(enumerate(reversed(all_ids)))  # insertion position -> id

    async with engine.begin() as conn:
        stored = await conn.run_sync(repo.query)
    assert [attrs.evolve(x, id=None) for x in reversed(stored)] == ev
    assert all(utc_aware(x.timestamp) for x in stored)

    assert await ids(task_id="t1") == [by_pos[2], by_pos[1], by_pos[0]]
    assert await ids(event_types=[EventType.FAILED, EventType.ENQUEUED]) == [by_pos[3], by_pos[0]]
    assert await ids(event_types=[EventType.RETRY]) == []
    assert await ids(queue_name="q2") == [by_pos[3]]
    assert await ids(worker_id="w1") == [by_pos[5], by_pos[2], by_pos[1]]
    assert await ids(schedule_id="s1") == [by_pos[4]]
    assert await ids(level=EventLevel.ERROR) == [by_pos[3]]
    assert await ids(level=EventLevel.DEBUG) == [by_pos[5]]
    assert await ids(start_time=T0 + timedelta(seconds=2)) == [by_pos[i] for i in (5, 4, 3, 2)]
    assert await ids(end_time=T0 + timedelta(seconds=1)) == [by_pos[1], by_pos[0]]
    assert await ids(start_time=T0 + timedelta(seconds=1), end_time=T0 + timedelta(seconds=3)) == [
        by_pos[3],
        by_pos[2],
        by_pos[1],
    ]
    assert await ids(task_id="t1", worker_id="w1", event_types=[EventType.COMPLETED]) == [by_pos[2]]
    assert await ids(limit=2) == [by_pos[5], by_pos[4]]
    assert await ids(limit=2, offset=2) == [by_pos[3], by_pos[2]]
    assert await ids(limit=10, offset=5) == [by_pos[0]]
    assert await ids(offset=6) == []


async def test_event_ids_are_assigned_in_order(engine: AsyncEngine) -> None:
    repo = EventRepository(dialect_of(engine))
    for i in range(3):
        async with engine.begin() as conn:
            await conn.run_sync(repo.insert_many, [event(event_type="enqueued", task_id=f"t{i}")])
    async with engine.begin() as conn:
        found = await conn.run_sync(repo.query)
    assert [x.task_id for x in found] == ["t2", "t1", "t0"]


async def test_event_insert_rows(engine: AsyncEngine) -> None:
    repo = EventRepository(dialect_of(engine))
    rows = [repo.to_row(event(event_type="retry", task_id="t", retry_count=2))]
    async with engine.begin() as conn:
        await conn.run_sync(repo.insert_rows, rows)
        await conn.run_sync(repo.insert_rows, [])
        (found,) = await conn.run_sync(repo.query)
    assert found.event_type is EventType.RETRY
    assert found.retry_count == 2


async def test_event_rows_maybe_written_are_not_written_twice(engine: AsyncEngine) -> None:
    """Rows put back after a write that raised but may have committed (an ambiguous
    commit): written again only where no such row is stored, for a task's events and
    for a worker's own (no task) alike."""
    repo = EventRepository(dialect_of(engine))
    landed = [
        event_row(EventType.EXECUTING, task_id="t1", worker_id="w1"),
        event_row(EventType.ERROR, worker_id="w1", message="boom", level="error"),
    ]
    lost = [
        event_row(EventType.EXECUTING, task_id="t2", worker_id="w1"),
        event_row(EventType.ERROR, worker_id="w1", message="again", level="error"),
    ]
    fresh = event_row(EventType.ERROR, worker_id="w1", message="new", level="error")
    async with engine.begin() as conn:
        await conn.run_sync(repo.insert_rows, landed)
    async with engine.begin() as conn:
        again = [maybe_written(row) for row in [*landed, *lost]]
        await conn.run_sync(repo.insert_rows, [*again, fresh])
        found = await conn.run_sync(repo.query)
    stored = sorted((x.task_id or "", x.event_type.value, x.message or "") for x in found)
    assert stored == [
        ("", "error", "again"),
        ("", "error", "boom"),
        ("", "error", "new"),
        ("t1", "executing", ""),
        ("t2", "executing", ""),
    ]


async def test_event_retention_and_counts(engine: AsyncEngine) -> None:
    repo = EventRepository(dialect_of(engine))
    old = [event(event_type="enqueued", timestamp=T0 + timedelta(seconds=i)) for i in range(5)]
    new = [
        event(event_type="completed", timestamp=NOW),
        event(event_type="failed", level="error", timestamp=NOW),
    ]
    async with engine.begin() as conn:
        await conn.run_sync(repo.insert_many, [*old, *new])
        assert await conn.run_sync(repo.count_by, "event_type") == {
            "enqueued": 5,
            "completed": 1,
            "failed": 1,
        }
        assert await conn.run_sync(repo.count_by, "level") == {"info": 6, "error": 1}
        assert await conn.run_sync(repo.delete_older_than, NOW, limit=3) == 3
        assert await conn.run_sync(repo.delete_older_than, NOW, limit=3) == 2
        assert await conn.run_sync(repo.delete_older_than, NOW, limit=3) == 0  # cutoff is exclusive
        assert await conn.run_sync(repo.count_by, "event_type") == {"completed": 1, "failed": 1}


async def test_event_unreadable_row(engine: AsyncEngine) -> None:
    repo = EventRepository(dialect_of(engine))
    async with engine.begin() as conn:
        await conn.run_sync(repo.insert_many, [event(event_type="enqueued")])
        (stored,) = await conn.run_sync(repo.query)
    await set_column(engine, schema.events, stored.id, level="bogus")
    async with engine.begin() as conn:
        with pytest.raises(InvalidRow, match="bogus"):
            await conn.run_sync(repo.query)
    await set_column(engine, schema.events, stored.id, level="info", event_type="bogus")
    async with engine.begin() as conn:
        with pytest.raises(InvalidRow, match="bogus"):
            await conn.run_sync(repo.query)
