"""Regression tests of the core's promises at the edges (issue "One trustworthy core").

Each runs on SQLite and, when configured, PostgreSQL: cancellation at every
await of enqueue and claim, cancel requests that meet a failing attempt,
dependencies that would otherwise wait forever, unique keys inside a batch,
unreadable schedules, ``cleanup()``, text that no database can store, and the
database's clock.
"""

from __future__ import annotations

import asyncio
import threading
from datetime import timedelta
from typing import Any

import pytest
import sqlalchemy as sa

from omniq import AsyncOmniQ
from omniq._time import utcnow
from omniq.db import schema
from omniq.errors import SerializationError, ValidationError
from omniq.models import EventType, Schedule, ScheduleStatus, Task, TaskStatus
from omniq.services import ErrorInfo, Services
from tests.integration.test_services_queue import FUNC, claim_one, event_types, must_get
from tests.waiting import DEADLINE

pytestmark = pytest.mark.anyio

t = schema.tasks


async def statuses(svc: Services) -> dict[str, TaskStatus]:
    return {x.id: x.status for x in await svc.queue.list_tasks_async(limit=100_000)}


# --- 1. group commit: a cancelled caller never strands the others ----------------------------


@pytest.mark.parametrize("yields", [0, 1, 2, 3, 5, 8])
async def test_cancelling_one_enqueue_of_a_shared_batch_never_hangs_the_others(
    svc: Services, yields: int
) -> None:
    calls = [asyncio.ensure_future(svc.queue.enqueue_async(FUNC, [i])) for i in range(50)]
    for _ in range(yields):
        await asyncio.sleep(0)
    calls[0].cancel()
    calls[25].cancel()
    done = await asyncio.wait_for(asyncio.gather(*calls, return_exceptions=True), timeout=DEADLINE)
    stored = await statuses(svc)
    for i, outcome in enumerate(done):
        if i in (0, 25):
            continue  # cancelled: written or not, but nobody waits forever
        assert isinstance(outcome, str), outcome
        assert stored[outcome] is TaskStatus.PENDING
    # Every id a caller got back is stored, and nothing else.
    assert len(stored) in (48, 49, 50)


# --- 2. a cancelled claim leaves nothing claimed under a dead lease --------------------------


@pytest.mark.parametrize("yields", [0, 1, 2, 4, 8, 16])
async def test_a_cancelled_claim_gives_its_tasks_back(svc: Services, yields: int) -> None:
    tasks = [svc.queue.build_task(FUNC, [i]) for i in range(1000)]
    await svc.queue.enqueue_many_async(tasks)
    claim = asyncio.ensure_future(svc.queue.dequeue_many_async(1000, worker_id="gone"))
    for _ in range(yields):
        await asyncio.sleep(0)
    claim.cancel()
    with pytest.raises(asyncio.CancelledError):
        await claim
    await asyncio.wait_for(svc.storage.wait_detached(), timeout=DEADLINE)
    assert set((await statuses(svc)).values()) == {TaskStatus.PENDING}
    listed = await svc.queue.list_tasks_async(limit=2000)
    assert all(x.attempts == 0 and x.lease_token is None for x in listed)
    # And they are claimable at once, by someone alive.
    again = await svc.queue.dequeue_many_async(1000, worker_id="alive")
    assert len(again) == 1000


@pytest.mark.parametrize("turns", [0, 1, 2, 3])
async def test_a_worker_cancelled_as_its_claim_returns_gives_the_tasks_back(
    svc: Services, turns: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The worker's own task is cancelled ``turns`` turns of the loop after its
    # claim returned, before the claim loop took the tasks: they must not stay
    # running under a lease nobody holds (they did, with 0-2 turns).
    from omniq.worker import Worker

    ids = await svc.queue.enqueue_many_async(
        [svc.queue.build_task("tests.worker_tasks:sleep_async", [30]) for _ in range(3)]
    )
    worker = Worker(
        svc.queue,
        allow_modules=["tests.worker_tasks"],
        concurrency=4,
        run_scheduler=False,
        run_maintenance=False,
        grace_period=0.2,
    )
    claim = svc.queue.dequeue_many_async
    run: asyncio.Future[None] | None = None

    async def claim_then_cancel(*args: Any, **kwargs: Any) -> list[Task]:
        claimed = await claim(*args, **kwargs)
        if claimed and run is not None:
            loop = asyncio.get_running_loop()

            def later(n: int) -> None:
                if n:
                    loop.call_soon(later, n - 1)
                else:
                    run.cancel()

            later(turns)
        return claimed

    monkeypatch.setattr(svc.queue, "dequeue_many_async", claim_then_cancel)
    run = asyncio.ensure_future(worker.run_async())
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(run, timeout=DEADLINE)
    await asyncio.wait_for(svc.storage.wait_detached(), timeout=DEADLINE)
    listed = {x.id: x for x in await svc.queue.list_tasks_async(limit=100)}
    assert {x.status for x in listed.values()} == {TaskStatus.PENDING}, listed
    assert all(listed[i].attempts == 0 and listed[i].lease_token is None for i in ids)


@pytest.mark.parametrize("yields", [0, 1, 2, 4, 8])
async def test_a_cancelled_completion_is_all_or_nothing_and_never_hangs(
    svc: Services, yields: int
) -> None:
    await svc.queue.enqueue_many_async([svc.queue.build_task(FUNC, [i]) for i in range(200)])
    claimed = await svc.queue.dequeue_many_async(200, worker_id="w")
    done = asyncio.ensure_future(
        svc.queue.complete_many_async([(x, {"i": i}, 0.0) for i, x in enumerate(claimed)])
    )
    for _ in range(yields):
        await asyncio.sleep(0)
    done.cancel()
    with pytest.raises(asyncio.CancelledError):
        await done
    await asyncio.wait_for(svc.storage.wait_detached(), timeout=DEADLINE)
    stored = await svc.queue.list_tasks_async(limit=1000)
    # One transaction: all completed, or (cancelled before it ran) all still held
    # under the caller's own lease, so it can complete them again.
    assert {x.status for x in stored} in ({TaskStatus.COMPLETED}, {TaskStatus.RUNNING})
    if stored[0].status is TaskStatus.RUNNING:
        leases = {x.id: x.lease_token for x in claimed}
        assert all(x.lease_token == leases[x.id] for x in stored)
        again = [(x, None, 0.0) for x in claimed]
        assert len(await svc.queue.complete_many_async(again)) == 200


# --- 3. a blocking enqueue from another thread while the app's loop enqueues -----------------


def _double(x: int) -> int:
    return 2 * x


async def test_blocking_enqueue_from_a_thread_while_the_loop_enqueues(db_url: str) -> None:
    async with AsyncOmniQ(url=db_url) as oq:
        handle = oq.task()(_double)
        from_thread: list[str] = []

        def sync_endpoint() -> None:
            for i in range(20):
                from_thread.append(handle.enqueue(i))

        thread = threading.Thread(target=sync_endpoint)
        thread.start()
        in_loop = [await handle.enqueue_async(100 + i) for i in range(20)]
        await asyncio.wait_for(asyncio.to_thread(thread.join), timeout=DEADLINE)
        assert len(from_thread) == 20
        for task_id in [*from_thread, *in_loop]:
            assert (await oq.get_task_async(task_id)) is not None


# --- 4. a cancel requested while the task runs survives a failed attempt ---------------------


async def test_a_cancel_requested_during_a_failing_attempt_is_not_retried(svc: Services) -> None:
    q = svc.queue
    task_id = await q.enqueue_async(FUNC, max_retries=3, retry_delay=0)
    running = await claim_one(svc, task_id)
    assert await q.cancel_async(task_id)  # running: cancellation requested
    status = await q.fail_async(running, ErrorInfo(type="ValueError", message="boom"))
    assert status is TaskStatus.CANCELLED
    task = await must_get(svc, task_id)
    assert task.status is TaskStatus.CANCELLED
    assert task.retry_count == 0
    assert await q.dequeue_async() is None
    assert EventType.RETRY not in await event_types(svc, task_id)


# --- 5. dependencies never wait forever ------------------------------------------------------


async def _failed_task(svc: Services) -> str:
    task_id = await svc.queue.enqueue_async(FUNC, max_retries=0)
    await svc.queue.fail_async(await claim_one(svc, task_id), ErrorInfo(type="E", message="x"))
    assert (await must_get(svc, task_id)).status is TaskStatus.FAILED
    return task_id


async def test_a_batch_is_resolved_in_dependency_order_not_input_order(svc: Services) -> None:
    dead = await _failed_task(svc)
    a = svc.queue.build_task(FUNC, depends_on=[dead])
    b = svc.queue.build_task(FUNC, depends_on=[a.id])
    c = svc.queue.build_task(FUNC, depends_on=[b.id])
    await svc.queue.enqueue_many_async([c, b, a])  # dependents first
    for task in (a, b, c):
        assert (await must_get(svc, task.id)).status is TaskStatus.CANCELLED


async def test_deleting_an_unfinished_dependency_cancels_its_dependents(svc: Services) -> None:
    parent = await svc.queue.enqueue_async(FUNC)
    child = await svc.queue.enqueue_async(FUNC, depends_on=[parent])
    grandchild = await svc.queue.enqueue_async(FUNC, depends_on=[child])
    assert await svc.queue.delete_task_async(parent)
    assert (await must_get(svc, child)).status is TaskStatus.CANCELLED
    assert (await must_get(svc, grandchild)).status is TaskStatus.CANCELLED


async def test_deleting_a_completed_dependency_does_not_block_its_dependents(
    svc: Services,
) -> None:
    done = await svc.queue.enqueue_async(FUNC)
    other = await svc.queue.enqueue_async(FUNC, priority=-1)
    child = await svc.queue.enqueue_async(FUNC, depends_on=[done, other])
    assert await svc.queue.complete_async(await claim_one(svc, done))
    assert await svc.queue.delete_task_async(done)
    assert (await must_get(svc, child)).status is TaskStatus.WAITING
    assert await svc.queue.complete_async(await claim_one(svc, other))
    assert (await must_get(svc, child)).status is TaskStatus.PENDING


async def test_clearing_a_queue_cancels_dependents_in_other_queues(svc: Services) -> None:
    parent = await svc.queue.enqueue_async(FUNC, queue_name="q1")
    child = await svc.queue.enqueue_async(FUNC, queue_name="q2", depends_on=[parent])
    assert await svc.queue.clear_async("q1") == 1
    assert await svc.queue.get_task_async(parent) is None
    task = await must_get(svc, child)
    assert task.status is TaskStatus.CANCELLED
    assert parent in (task.last_error or "")


async def test_the_sweep_settles_waiting_tasks_whose_dependency_is_dead_or_gone(
    svc: Services,
) -> None:
    dead = await _failed_task(svc)
    parent = await svc.queue.enqueue_async(FUNC)
    stuck = svc.queue.build_task(FUNC, depends_on=[parent])
    orphan = svc.queue.build_task(FUNC, depends_on=[parent])
    await svc.queue.enqueue_many_async([stuck, orphan])
    edges = schema.task_dependencies

    def rewrite(conn: sa.Connection) -> None:
        # As if a cancellation had been lost: an edge to a dead task, and a
        # dependency removed behind OmniQ's back.
        conn.execute(sa.update(edges).where(edges.c.task_id == stuck.id).values(depends_on_id=dead))
        conn.execute(sa.delete(edges).where(edges.c.task_id == orphan.id))

    await svc.storage.write(rewrite)
    assert await svc.queue.settle_orphans_async() == 2
    assert (await must_get(svc, stuck.id)).status is TaskStatus.CANCELLED
    assert (await must_get(svc, orphan.id)).status is TaskStatus.PENDING
    assert await svc.queue.settle_orphans_async() == 0


# --- 6. unique keys inside a batch -----------------------------------------------------------


async def test_a_task_may_depend_on_a_unique_task_of_the_same_batch(svc: Services) -> None:
    unique = svc.queue.build_task(FUNC, unique_key="report-1")
    child = svc.queue.build_task(FUNC, depends_on=[unique.id])
    ids = await svc.queue.enqueue_many_async([child, unique])
    assert ids == [child.id, unique.id]
    assert (await must_get(svc, unique.id)).status is TaskStatus.PENDING
    assert (await must_get(svc, child.id)).status is TaskStatus.WAITING
    assert await svc.queue.complete_async(await claim_one(svc, unique.id))
    assert (await must_get(svc, child.id)).status is TaskStatus.PENDING


async def test_a_dependent_of_a_deduplicated_unique_task_waits_on_the_live_one(
    svc: Services,
) -> None:
    live = await svc.queue.enqueue_async(FUNC, unique_key="nightly")
    again = svc.queue.build_task(FUNC, unique_key="nightly")
    child = svc.queue.build_task(FUNC, depends_on=[again.id])
    ids = await svc.queue.enqueue_many_async([again, child])
    assert ids == [live, child.id]
    stored = await must_get(svc, child.id)
    assert stored.depends_on == (live,)
    assert stored.status is TaskStatus.WAITING
    assert await svc.queue.complete_async(await claim_one(svc, live))
    assert (await must_get(svc, child.id)).status is TaskStatus.PENDING


# --- 11. one unreadable schedule does not stop the others ------------------------------------


@pytest.mark.parametrize(
    "column",
    [
        {"timezone": "Mars/Olympus_Mons"},
        {"payload": "{not json"},
        {"task_options": {"priority": "high", "max_retries": -3}},
    ],
    ids=["time zone", "payload", "task options"],
)
async def test_an_unreadable_schedule_is_quarantined_and_the_others_fire(
    svc: Services, column: dict[str, object]
) -> None:
    q = svc.queue
    now = utcnow()
    good = await q.schedule_async(
        Schedule(
            func=FUNC, schedule_type="interval", interval=timedelta(seconds=60), next_run_at=now
        )
    )
    bad = await q.schedule_async(
        Schedule(func=FUNC, schedule_type="cron", cron_expression="* * * * *", next_run_at=now)
    )
    s = schema.schedules
    await svc.storage.write(
        lambda conn: conn.execute(sa.update(s).where(s.c.id == bad).values(**column))
    )
    scheduler = _scheduler(svc)
    assert await scheduler.fire_due_async(now + timedelta(seconds=1)) == 1
    fired = await q.list_tasks_async()
    assert [x.schedule_id for x in fired] == [good]
    row = await svc.storage.read(
        lambda conn: conn.execute(sa.select(s.c.status).where(s.c.id == bad)).scalar_one()
    )
    assert row == ScheduleStatus.PAUSED.value
    runs = await svc.storage.read(
        lambda conn: conn.execute(sa.select(s.c.run_count).where(s.c.id == bad)).scalar_one()
    )
    assert runs == 0  # a run it could not make is not spent
    errors = await svc.events.get_events_async(schedule_id=bad, level="error")
    assert errors and "cannot be read" in (errors[0].message or "")
    # The next fire is not blocked either.
    assert await scheduler.fire_due_async(now + timedelta(seconds=61)) == 1


async def test_an_unreadable_schedule_is_left_out_of_listings_and_can_be_deleted(
    svc: Services, caplog: pytest.LogCaptureFixture
) -> None:
    q = svc.queue
    good = await q.schedule_async(
        Schedule(func=FUNC, schedule_type="interval", interval=timedelta(seconds=60))
    )
    bad = await q.schedule_async(
        Schedule(func=FUNC, schedule_type="cron", cron_expression="* * * * *")
    )
    s = schema.schedules
    await svc.storage.write(
        lambda conn: conn.execute(
            sa.update(s).where(s.c.id == bad).values(timezone="Mars/Olympus_Mons")
        )
    )
    # Listings (the CLI's, the dashboard's) show the others and name the bad row.
    assert [x.id for x in await q.list_schedules_async()] == [good]
    assert any(bad in r.getMessage() and "left out" in r.getMessage() for r in caplog.records)
    assert await _scheduler(svc).next_due_async() is not None
    # "Fix or delete it": deleting works on a row that cannot be read.
    assert await q.delete_schedule_async(bad) is True
    assert await q.delete_schedule_async(bad) is False
    (deleted,) = await svc.events.get_events_async(schedule_id=bad, event_type=EventType.DELETED)
    assert "Mars" in (deleted.error or "")
    assert [x.id for x in await q.list_schedules_async()] == [good]


def _scheduler(svc: Services) -> Any:
    from omniq.services.scheduler import Scheduler

    return Scheduler(svc.storage, svc.queue)


# --- 12. cleanup() runs the sweeps now, and holds no lease afterwards ------------------------


async def test_cleanup_runs_every_sweep_now_even_while_a_worker_holds_the_lease(
    db_url: str,
) -> None:
    async with AsyncOmniQ(url=db_url) as oq:
        svc = oq.services
        from omniq.services.maintenance import Maintenance

        holder = Maintenance(svc.storage, svc.queue, svc.results, svc.events, owner="worker-x")
        assert await holder.acquire_async()
        past = utcnow() - timedelta(hours=1)
        stale = svc.queue.build_task(FUNC, ttl=60)
        import attrs

        stale = attrs.evolve(stale, created_at=past, run_at=past, expires_at=past)
        await svc.queue.enqueue_many_async([stale])
        report = await oq.cleanup_async()
        assert report.expired == 1
        assert (await must_get(svc, stale.id)).status is TaskStatus.EXPIRED
        # A second call works at once too (no lease left behind by the first).
        again = svc.queue.build_task(FUNC, ttl=60)
        again = attrs.evolve(again, created_at=past, run_at=past, expires_at=past)
        await svc.queue.enqueue_many_async([again])
        assert (await oq.cleanup_async()).expired == 1
        owner = await svc.storage.read(
            lambda conn: conn.execute(sa.select(schema.locks.c.owner)).scalars().all()
        )
        assert owner == ["worker-x"]


# --- 14. text no database can store -----------------------------------------------------------


@pytest.mark.parametrize(
    ("options", "field"),
    [
        ({"func_args": ["bad \udc80 byte"]}, "func_args"),
        ({"func_kwargs": {"path": "\ud800"}}, "func_args/func_kwargs"),
        ({"name": "report \udcff"}, "name"),
        ({"tags": ["ok", "\udce9"]}, "tags"),
    ],
)
async def test_a_lone_surrogate_is_a_serialization_error_naming_the_field(
    svc: Services, options: dict[str, Any], field: str
) -> None:
    before = await statuses(svc)
    with pytest.raises(SerializationError, match=field.split("/")[0]):
        await svc.queue.enqueue_async(FUNC, **options)
    with pytest.raises(SerializationError):
        await svc.queue.enqueue_many_async([svc.queue.build_task(FUNC, **options)])
    assert await statuses(svc) == before


@pytest.mark.parametrize(
    ("options", "field"),
    [
        ({"tags": ["ok", "\ud800"]}, "tags"),
        ({"metadata": {"owner": "\udce9"}}, "metadata"),
        ({"metadata": {"\udce9": 1}}, "metadata"),
        ({"description": "nightly \udcff"}, "description"),
    ],
)
async def test_a_schedule_with_a_lone_surrogate_is_refused_naming_the_field(
    svc: Services, options: dict[str, Any], field: str
) -> None:
    schedule = Schedule(
        func=FUNC, schedule_type="interval", interval=timedelta(minutes=1), **options
    )
    with pytest.raises(SerializationError, match=field):
        await svc.queue.schedule_async(schedule)
    assert await svc.queue.list_schedules_async() == []


async def test_lookups_with_text_no_database_stores_or_a_wrong_type_are_typed_errors(
    svc: Services,
) -> None:
    # On PostgreSQL these were a generic DatabaseError (asyncpg refused the argument).
    task_id = await svc.queue.enqueue_async(FUNC, depends_on=[])
    before = await statuses(svc)
    bad = "x\udc80"
    for call in (
        lambda: svc.queue.get_task_async(bad),
        lambda: svc.results.get_async(bad),
        lambda: svc.queue.cancel_async(bad),
        lambda: svc.queue.list_tasks_async(queue_name=bad),
        lambda: svc.events.get_events_async(task_id=bad),
        lambda: svc.queue.enqueue_async(FUNC, depends_on=[bad]),
    ):
        with pytest.raises(SerializationError, match="UTF-8"):
            await call()
    # An id that is not a string: refused alike on every engine (SQLite compared it
    # loosely and found no row, PostgreSQL refused it with its own message).
    with pytest.raises(ValidationError, match="task_id: expected a string, got int"):
        await svc.queue.get_task_async(5)  # type: ignore[arg-type]
    assert await statuses(svc) == before
    assert (await svc.queue.get_task_async(task_id)) is not None


async def test_ids_and_indexed_keys_past_their_columns_are_refused_before_the_database(
    svc: Services,
) -> None:
    before = await statuses(svc)
    with pytest.raises(ValidationError, match="1-64 characters"):
        await svc.queue.enqueue_many_async([Task(func=FUNC, id="t" * 65)])
    with pytest.raises(ValidationError, match="unique_key"):
        await svc.queue.enqueue_async(FUNC, unique_key="k" * 2001)
    with pytest.raises(ValidationError, match="depends_on"):
        await svc.queue.enqueue_async(FUNC, depends_on=[f"t{i}" for i in range(10_001)])
    with pytest.raises(ValidationError, match="name"):
        Schedule(
            func=FUNC, schedule_type="interval", interval=timedelta(minutes=1), name="é" * 1001
        )
    assert await statuses(svc) == before
    # At the limits they are stored (on PostgreSQL too).
    assert await svc.queue.enqueue_async(FUNC, unique_key="k" * 2000)
    assert await svc.queue.enqueue_many_async([Task(func=FUNC, id="t" * 64)]) == ["t" * 64]


async def test_a_cancel_that_loses_a_race_with_a_worker_reads_the_task_again(
    svc: Services, monkeypatch: pytest.MonkeyPatch
) -> None:
    # On PostgreSQL a worker may move the task between cancel's reading and its
    # update: that update matches no row. Before, cancel raised InvalidTransition.
    task_id = await svc.queue.enqueue_async(FUNC)
    running = await claim_one(svc)
    assert running.id == task_id
    real = svc.storage.tasks.transition
    missed: list[str] = []

    def racing(conn: Any, tid: str, **kwargs: Any) -> Any:
        if not missed:
            missed.append(tid)
            return None  # as if the row had changed under this statement
        return real(conn, tid, **kwargs)

    monkeypatch.setattr(svc.storage.tasks, "transition", racing)
    assert await svc.queue.cancel_async(task_id) is True
    assert missed == [task_id]
    assert (await must_get(svc, task_id)).cancel_requested


async def test_enqueue_arguments_of_the_wrong_kind_are_validation_errors(svc: Services) -> None:
    before = await statuses(svc)
    with pytest.raises(ValidationError, match="on_duplicate"):  # was taken as "return"
        await svc.queue.enqueue_async(FUNC, unique_key="k", on_duplicate="ignore")  # type: ignore[arg-type]
    with pytest.raises(ValidationError, match="tasks"):  # was a raw TypeError
        await svc.queue.enqueue_many_async(None)  # type: ignore[arg-type]
    assert await statuses(svc) == before


async def test_a_schedule_takes_seconds_and_a_zoneinfo_as_schedule_does(svc: Services) -> None:
    from zoneinfo import ZoneInfo

    # update_schedule(interval=5) was refused although schedule(interval=5) took it;
    # timezone=ZoneInfo("Europe/Paris") said "unknown time zone".
    schedule = Schedule(
        func=FUNC,
        schedule_type="cron",
        cron_expression="0 9 * * *",
        timezone=ZoneInfo("Europe/Paris"),
    )
    assert schedule.timezone == "Europe/Paris"
    schedule_id = await svc.queue.schedule_async(
        Schedule(func=FUNC, schedule_type="interval", interval=60)  # type: ignore[arg-type]
    )
    updated = await svc.queue.update_schedule_async(schedule_id, interval=5)
    assert updated.interval == timedelta(seconds=5)
    with pytest.raises(ValidationError, match="interval"):
        await svc.queue.update_schedule_async(schedule_id, interval=-5)


def test_a_progress_past_the_largest_float_is_refused_at_the_call() -> None:
    from omniq.models.progress import check_progress

    with pytest.raises(ValidationError, match="done"):  # was a raw OverflowError
        check_progress(10**400)


def test_a_progress_message_with_a_lone_surrogate_is_refused_at_the_call() -> None:
    from omniq.models.progress import check_progress

    # Refused where the task reports it, not later by the batched progress write.
    with pytest.raises(SerializationError, match="message"):
        check_progress(1, 10, "copying \udcff.txt")


# --- 13. one clock: the database's, on PostgreSQL ---------------------------------------------


async def test_leases_and_due_times_follow_the_database_clock_not_the_clients(
    svc: Services, monkeypatch: pytest.MonkeyPatch
) -> None:
    if svc.storage.dialect.name != "postgresql":
        pytest.skip("SQLite runs on one machine: its clock is the database's clock")
    import omniq._time

    real = omniq._time.utcnow
    skewed = lambda: real() + timedelta(minutes=30)  # noqa: E731 - a client clock 30 min ahead
    monkeypatch.setattr(omniq._time, "utcnow", skewed)
    monkeypatch.setattr("omniq.services._storage.utcnow", skewed)
    task_id = await svc.queue.enqueue_async(FUNC)
    db_now = await svc.storage.read(
        lambda conn: conn.execute(sa.select(sa.func.clock_timestamp())).scalar_one()
    )
    task = await claim_one(svc, task_id)  # due now by the database's clock
    assert task.lease_expires_at is not None
    lease_left = task.lease_expires_at - db_now
    assert timedelta(seconds=30) < lease_left < timedelta(seconds=90)
    assert abs(task.run_at - db_now) < timedelta(seconds=30)


async def test_a_result_s_expiry_follows_the_database_clock_not_the_reader_s(
    svc: Services, monkeypatch: pytest.MonkeyPatch
) -> None:
    if svc.storage.dialect.name != "postgresql":
        pytest.skip("SQLite runs on one machine: its clock is the database's clock")
    import omniq._time

    task_id = await svc.queue.enqueue_async(FUNC, result_ttl=timedelta(hours=1))
    assert await svc.queue.complete_async(await claim_one(svc, task_id), 42)
    real = omniq._time.utcnow
    skewed = lambda: real() + timedelta(hours=2)  # noqa: E731 - a reader's clock 2 h ahead
    monkeypatch.setattr(omniq._time, "utcnow", skewed)
    monkeypatch.setattr("omniq.services._storage.utcnow", skewed)
    monkeypatch.setattr("omniq.services.results.utcnow", skewed, raising=False)
    result = await svc.results.get_async(task_id)
    assert result is not None and result.result == 42


async def test_the_database_clock_does_not_step_back_when_read_again(
    svc: Services, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The database's clock is read again every minute; each reading is known only
    # to within half its round trip. A reading whose request was held up before
    # it was sent (a busy machine) put the clock ahead by up to half that trip,
    # and the next, quicker reading put it back (in a CI run: a schedule updated
    # after a time was read got a next run 0.6 ms before that time + interval).
    if svc.storage.dialect.name != "postgresql":
        pytest.skip("SQLite runs on one machine: its clock is the database's clock")
    import omniq.services._storage as storage_module

    real = storage_module._elapsed_clock
    held_up = [0.020]  # the next reading's request seems to start 20 ms before it did

    def elapsed() -> float:
        return real() - (held_up.pop() if held_up else 0.0)

    monkeypatch.setattr(storage_module, "_elapsed_clock", elapsed)
    await svc.storage.sync_clock()  # the held-up reading: the clock runs up to 10 ms ahead
    assert not held_up
    for _ in range(20):
        before = svc.storage.now()
        await svc.storage.sync_clock()  # quick readings
        assert svc.storage.now() >= before


# --- found in review: fencing of a durable start, cancel requests, unstorable errors ------------


async def test_a_released_task_whose_cancel_was_requested_is_cancelled_not_rerun(
    svc: Services,
) -> None:
    task_id = await svc.queue.enqueue_async(FUNC)
    held = await claim_one(svc, task_id)
    assert await svc.queue.cancel_async(task_id)  # running: requested
    assert await svc.queue.release_many_async([held]) == []
    assert (await must_get(svc, task_id)).status is TaskStatus.CANCELLED
    assert await svc.queue.dequeue_async() is None


async def test_a_recovered_task_whose_cancel_was_requested_is_cancelled(svc: Services) -> None:
    from tests.integration.test_services_queue import expire_lease

    task_id = await svc.queue.enqueue_async(FUNC)
    await claim_one(svc, task_id)
    assert await svc.queue.cancel_async(task_id)
    await expire_lease(svc, task_id)
    assert await svc.queue.recover_expired_leases_async() == 1
    assert (await must_get(svc, task_id)).status is TaskStatus.CANCELLED


async def test_a_durable_start_that_does_not_land_under_the_lease_is_not_run(
    svc: Services, tmp_path: Any
) -> None:
    from omniq.worker import Worker

    log = tmp_path / "ran.log"
    task_id = await svc.queue.enqueue_async(
        "tests.worker_tasks:record_sync", [str(log), "x"], max_retries=0
    )
    claimed = await svc.queue.dequeue_many_async(1, worker_id="w", start=False)
    # Recovered once before (lost_count > 0), and meanwhile its lease went to
    # someone else: the durable start matches no row.
    await svc.storage.write(
        lambda conn: conn.execute(
            sa.update(t).where(t.c.id == task_id).values(lease_token="someone-else", lost_count=1)
        )
    )
    task = claimed[0]
    import attrs

    worker = Worker(
        svc.queue, allow_modules=["tests.worker_tasks"], run_scheduler=False, run_maintenance=False
    )
    status = await worker.run_claimed_async(attrs.evolve(task, lost_count=1))
    assert status is None
    assert not log.exists()  # never ran
    assert (await must_get(svc, task_id)).status is TaskStatus.RUNNING  # still the other's


async def test_an_error_text_with_nul_is_stored_and_the_task_fails(svc: Services) -> None:
    from omniq.worker import Worker

    task_id = await svc.queue.enqueue_async(
        "tests.worker_tasks:always_fails", ["bad\x00byte"], max_retries=0
    )
    worker = Worker(
        svc.queue, allow_modules=["tests.worker_tasks"], run_scheduler=False, run_maintenance=False
    )
    await asyncio.wait_for(worker.run_until_complete_async(), timeout=DEADLINE)
    task = await must_get(svc, task_id)
    assert task.status is TaskStatus.FAILED
    result = await svc.results.get_async(task_id)
    assert result is not None and "bad\\x00byte" in (result.error or "")


async def test_a_completion_writes_the_buffered_starts_of_its_batch_once(svc: Services) -> None:
    # A worker buffers the start of a quick task and writes it with the task's
    # completion: the first start counts one attempt and sets started_at; a
    # start under a lost lease changes nothing; a start of a task still running
    # is written too.
    ids = [await svc.queue.enqueue_async(FUNC, [i]) for i in range(4)]
    claimed = {x.id: x for x in await svc.queue.dequeue_many_async(4, worker_id="w", start=False)}
    assert set(claimed) == set(ids)
    done, lost, still_running, unstarted = (claimed[x] for x in ids)
    t0 = utcnow().replace(microsecond=0)
    starts = [
        (done.id, done.lease_token, t0),
        (done.id, done.lease_token, t0 + timedelta(seconds=5)),  # listed twice: first counts
        (lost.id, "an-old-lease", t0),
        (still_running.id, still_running.lease_token, t0 + timedelta(seconds=1)),
    ]
    completed = await svc.queue.complete_many_async(
        [(done, 1, 0.1), (lost, 2, 0.1), (unstarted, 3, 0.1)], worker_id="w", starts=starts
    )
    assert set(completed) == {done.id, lost.id, unstarted.id}
    got = {x: await must_get(svc, x) for x in ids}
    assert got[done.id].status is TaskStatus.COMPLETED
    assert (got[done.id].attempts, got[done.id].started_at) == (1, t0)
    # Completed without a start of its own lease: no attempt counted here.
    assert got[lost.id].status is TaskStatus.COMPLETED
    assert (got[lost.id].attempts, got[lost.id].started_at) == (0, None)
    assert (got[unstarted.id].attempts, got[unstarted.id].started_at) == (0, None)
    assert got[still_running.id].status is TaskStatus.RUNNING
    assert (got[still_running.id].attempts, got[still_running.id].started_at) == (
        1,
        t0 + timedelta(seconds=1),
    )
    # An already started task keeps its first start.
    again = await svc.queue.enqueue_async(FUNC, [9])
    (task,) = await svc.queue.dequeue_many_async(1, worker_id="w", start=False)
    assert task.id == again
    await svc.queue.mark_started_async([(task.id, task.lease_token, t0)])
    later = t0 + timedelta(hours=1)
    await svc.queue.complete_many_async(
        [(task, 1, 0.1)], worker_id="w", starts=[(task.id, task.lease_token, later)]
    )
    final = await must_get(svc, again)
    assert (final.status, final.attempts, final.started_at) == (TaskStatus.COMPLETED, 1, t0)


async def test_a_start_counts_only_under_its_own_lease_when_a_batch_repeats_a_task(
    svc: Services,
) -> None:
    from omniq.services._shared import _finish_values

    task_id = await svc.queue.enqueue_async(FUNC, [1])
    (task,) = await svc.queue.dequeue_many_async(1, worker_id="w", start=False)
    at = utcnow()
    # The row is held under the claim's lease; a start under another token for
    # the same task (listed twice in the batch) must not count.
    held = await svc.storage.write(
        lambda conn: svc.storage.tasks.finish_leased(
            conn,
            [(task_id, task.lease_token), (task_id, "another-lease")],
            _finish_values(TaskStatus.COMPLETED, at),
            [(task_id, "another-lease", at)],
        )
    )
    assert held == {task_id}
    final = await must_get(svc, task_id)
    assert (final.status, final.attempts, final.started_at) == (TaskStatus.COMPLETED, 0, None)


async def test_a_retried_failure_found_written_after_its_retry_crashed(svc: Services) -> None:
    """An attempt's failure (retry scheduled) commits, but its worker sees an error and
    writes it again, only after the retry was claimed by another worker that died and
    was recovered (the row's counts moved on). The rewrite still learns that its first
    try landed: PENDING (the worker counts a retry, not a lost task), nothing twice."""
    from tests.integration.test_services_queue import expire_lease

    task_id = await svc.queue.enqueue_async(FUNC, max_retries=2, retry_delay=0)
    first = await claim_one(svc, task_id, worker_id="w1")
    error = ErrorInfo(type="ValueError", message="boom")
    assert await svc.queue.fail_many_async([(first, error, True, 0.1)], worker_id="w1") == [
        TaskStatus.PENDING
    ]
    await claim_one(svc, task_id, worker_id="w2")  # the retry, whose worker dies
    await expire_lease(svc, task_id)
    assert await svc.queue.recover_expired_leases_async() == 1
    # w1's write again (the caller saw an error the first time).
    again = await svc.queue.fail_many_async(
        [(first, error, True, 0.1)], worker_id="w1", rewrites=[(task_id, first.lease_token)]
    )
    assert again == [TaskStatus.PENDING]
    task = await must_get(svc, task_id)
    assert (task.status, task.retry_count, task.lost_count) == (TaskStatus.PENDING, 1, 1)
    attempts = await svc.queue.get_attempts_async(task_id)
    assert [(x.worker_id, x.error.type) for x in attempts] == [
        ("w1", "ValueError"),
        ("w2", "WorkerLost"),
    ]
    assert (await event_types(svc, task_id)).count(EventType.RETRY) == 2


async def test_a_failure_whose_lease_was_lost_is_not_taken_for_a_landed_retry(
    svc: Services,
) -> None:
    """The other side: an attempt that lost its lease before its failure was written
    (recovered, retried by another worker) is not reported as retried."""
    from tests.integration.test_services_queue import expire_lease

    task_id = await svc.queue.enqueue_async(FUNC, max_retries=2, retry_delay=0)
    first = await claim_one(svc, task_id, worker_id="w1")
    await expire_lease(svc, task_id)
    assert await svc.queue.recover_expired_leases_async() == 1
    second = await claim_one(svc, task_id, worker_id="w2")
    error = ErrorInfo(type="ValueError", message="boom")
    assert await svc.queue.fail_many_async([(second, error, True, 0.1)], worker_id="w2") == [
        TaskStatus.PENDING
    ]
    late = await svc.queue.fail_many_async(
        [(first, error, True, 0.1)], worker_id="w1", rewrites=[(task_id, first.lease_token)]
    )
    assert late == [None]
    attempts = await svc.queue.get_attempts_async(task_id)
    assert [(x.worker_id, x.error.type) for x in attempts] == [
        ("w1", "WorkerLost"),
        ("w2", "ValueError"),
    ]
