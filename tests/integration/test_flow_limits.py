"""Flow control in the claim (issue 16), on each engine: per-key concurrency and rate
limits, queue-wide limits, queue pause; a held-back task costs no attempt; slots come
back with completion, failure/retry, release and lease recovery; concurrent claimers
never exceed a limit."""

from __future__ import annotations

import asyncio
from datetime import timedelta

import pytest
import sqlalchemy as sa

from omniq import AsyncOmniQ, Limit, Rate, TaskStatus, ValidationError
from omniq._time import utcnow
from omniq.db.engine import create_engine
from omniq.db.schema import events as ev
from omniq.db.schema import limits as lim
from omniq.db.schema import tasks as t
from omniq.models import EventType, Settings, Task
from omniq.services import ErrorInfo, Services
from omniq.services.scheduler import Scheduler
from tests.integration.conftest import ServicesFactory
from tests.waiting import DEADLINE, wait_until, waits_for_a_lock

pytestmark = pytest.mark.anyio

FUNC = "tests.helpers:func"
#: A rate that never refills within a test: its tokens are the bucket's size.
SLOW = timedelta(hours=1)


async def enqueue(svc: Services, n: int, **options: object) -> list[str]:
    return [await svc.queue.enqueue_async(FUNC, [i], **options) for i in range(n)]  # type: ignore[arg-type]


async def running_of(svc: Services, key: str) -> int:
    def body(conn: sa.Connection) -> int:
        stmt = sa.select(sa.func.count()).where(
            t.c.concurrency_key == key, t.c.status == TaskStatus.RUNNING.value
        )
        return int(conn.execute(stmt).scalar_one())

    return await svc.storage.read(body)


# --- concurrency -------------------------------------------------------------------------


async def test_a_key_at_its_limit_is_passed_over_and_a_quiet_key_flows(svc: Services) -> None:
    hot = await enqueue(svc, 20, concurrency=Limit(2), concurrency_key="A")
    quiet = await enqueue(svc, 3, concurrency=Limit(5), concurrency_key="B")
    claimed = await svc.queue.dequeue_many_async(3)
    assert [x.id for x in claimed] == [hot[0], hot[1], quiet[0]]
    # A is full: the next claim looks past its 18 pending tasks and finds B's.
    more = await svc.queue.dequeue_many_async(10)
    assert [x.id for x in more] == quiet[1:]
    assert await svc.queue.dequeue_many_async(10) == []
    # Held back tasks are pending and spent nothing.
    held = await svc.queue.get_task_async(hot[5])
    assert held is not None and held.status is TaskStatus.PENDING and held.attempts == 0


async def test_slots_come_back_with_completion_failure_retry_and_release(svc: Services) -> None:
    await enqueue(svc, 6, concurrency=Limit(1), concurrency_key="K", retry_delay=0)
    (first,) = await svc.queue.dequeue_many_async(5)
    assert await svc.queue.dequeue_many_async(5) == []
    assert await svc.queue.complete_async(first, "ok")
    (second,) = await svc.queue.dequeue_many_async(5)
    boom = ErrorInfo(type="E", message="boom")
    assert await svc.queue.fail_async(second, boom) is TaskStatus.PENDING
    (third,) = await svc.queue.dequeue_many_async(5)
    assert await svc.queue.release_async(third)
    (fourth,) = await svc.queue.dequeue_many_async(5)
    assert await svc.queue.fail_async(fourth, ErrorInfo(type="E", message="x"), retry=False) is (
        TaskStatus.FAILED
    )
    assert len(await svc.queue.dequeue_many_async(5)) == 1


async def test_a_prefetched_task_holds_its_slot(svc: Services) -> None:
    await enqueue(svc, 3, concurrency=Limit(2), concurrency_key="P")
    held = await svc.queue.dequeue_many_async(5, start=False)
    assert len(held) == 2 and all(x.attempts == 0 for x in held)
    assert await svc.queue.dequeue_many_async(5) == []
    assert await running_of(svc, "P") == 2


async def test_lease_recovery_gives_the_slot_back(open_services: ServicesFactory) -> None:
    svc = await open_services(
        Settings(lease_duration=timedelta(seconds=1), heartbeat_interval=timedelta(seconds=0.2))
    )
    await enqueue(svc, 2, concurrency=Limit(1), concurrency_key="L")
    (lost,) = await svc.queue.dequeue_many_async(5)
    assert await svc.queue.dequeue_many_async(5) == []
    # The claimer vanished: once its lease expired, recovery frees the slot.
    for _ in range(200):
        if await svc.queue.recover_expired_leases_async():
            break
        await asyncio.sleep(0.05)
    again = await svc.queue.dequeue_many_async(5)
    assert len(again) == 1
    recovered = await svc.queue.get_task_async(lost.id)
    assert recovered is not None and recovered.lost_count == 1


async def test_a_claim_finds_many_free_keys_behind_long_backlogs(svc: Services) -> None:
    # 30 tenants of Limit(1), each tenant's 40 tasks before the next tenant's in claim
    # order: a claim of 20 takes one task of each of the first 20 tenants (four reads of
    # candidates of a fixed size took 6 to 8).
    tasks = [
        svc.queue.build_task(
            FUNC, [k, j], priority=1000 - k, concurrency=Limit(1), concurrency_key=f"t{k:02d}"
        )
        for k in range(30)
        for j in range(40)
    ]
    await svc.queue.enqueue_many_async(tasks)
    claimed = await svc.queue.dequeue_many_async(20, start=False, worker_id="w")
    assert [x.concurrency_key for x in claimed] == [f"t{k:02d}" for k in range(20)]
    assert [x.func_args for x in claimed] == [(k, 0) for k in range(20)]


async def test_claim_order_holds_across_keyed_and_plain_tasks(svc: Services) -> None:
    # A claim tries the plain claim first when its queues had no limits last time;
    # a keyed task of higher priority must still come first.
    q = svc.queue
    await enqueue(svc, 1, queue_name="mix")
    assert len(await q.dequeue_many_async(1, ["mix"])) == 1  # no limits seen here yet
    low = await q.enqueue_async(FUNC, [0], queue_name="mix")
    keyed = await q.enqueue_async(
        FUNC, [1], queue_name="mix", priority=10, concurrency=Limit(5), concurrency_key="K"
    )
    mid = await q.enqueue_async(FUNC, [2], queue_name="mix", priority=5)
    order = [(await q.dequeue_many_async(1, ["mix"]))[0].id for _ in range(3)]
    assert order == [keyed, mid, low]
    # The key's row outlives its tasks (maintenance prunes it later): plain tasks
    # are claimed in order as before.
    later = [await q.enqueue_async(FUNC, [i], queue_name="mix", priority=i) for i in range(3)]
    claimed = await q.dequeue_many_async(2, ["mix"])
    assert [x.id for x in claimed] == [later[2], later[1]]
    assert [x.id for x in await q.dequeue_many_async(5)] == [later[0]]


async def test_limits_set_by_another_app_bind_the_next_claim(
    open_services: ServicesFactory,
) -> None:
    # Two apps on one database (as two processes): the claimer has seen no limits,
    # the other pauses a queue, then limits a key; the next claim obeys both.
    claimer, other = await open_services(), await open_services()
    await enqueue(claimer, 1, queue_name="p")
    assert len(await claimer.queue.dequeue_many_async(1, ["p"])) == 1
    assert len(await claimer.queue.dequeue_many_async(1)) == 0
    await other.queue.pause_queue_async("p")
    await enqueue(other, 2, queue_name="p")
    assert await claimer.queue.dequeue_many_async(5, ["p"]) == []
    assert await claimer.queue.dequeue_many_async(5) == []
    await other.queue.resume_queue_async("p")
    await enqueue(other, 3, queue_name="k", concurrency=Limit(1), concurrency_key="one")
    claimed = await claimer.queue.dequeue_many_async(10)
    assert sorted(x.queue_name for x in claimed) == ["k", "p", "p"]
    assert await claimer.queue.dequeue_many_async(10) == []


async def test_limits_across_queues_share_the_key(svc: Services) -> None:
    await enqueue(svc, 2, queue_name="a", concurrency=Limit(1), concurrency_key="S")
    await enqueue(svc, 2, queue_name="b", concurrency=Limit(1), concurrency_key="S")
    assert len(await svc.queue.dequeue_many_async(5, ["a", "b"])) == 1
    assert await svc.queue.dequeue_many_async(5, ["b"]) == []


async def test_concurrent_claimers_never_exceed_a_limit(open_services: ServicesFactory) -> None:
    # Each claimer serves its own queue, so they never compete for the same task
    # rows: only the lock on the key's limit row keeps them under its maximum.
    claimers = [await open_services() for _ in range(6)]
    first = claimers[0]
    await first.queue.enqueue_many_async(
        [
            first.queue.build_task(
                FUNC, [i], queue_name=f"q{i % 6}", concurrency=Limit(3), concurrency_key="C"
            )
            for i in range(60)
        ]
    )
    done = 0
    for _ in range(8):
        got = await asyncio.gather(
            *(c.queue.dequeue_many_async(4, [f"q{i}"]) for i, c in enumerate(claimers))
        )
        held = [(c, x) for c, tasks in zip(claimers, got, strict=True) for x in tasks]
        assert len(held) == 3, [len(x) for x in got]
        assert await running_of(first, "C") == 3
        for c, x in held:
            assert await c.queue.complete_async(x, None)
        done += len(held)
    assert done == 24


async def test_maintenance_prunes_the_rows_of_idle_keys(svc: Services) -> None:
    q = svc.queue
    await enqueue(svc, 1, concurrency=Limit(1), concurrency_key="busy")
    (done,) = await enqueue(svc, 1, concurrency=Limit(1), concurrency_key="idle")
    await enqueue(svc, 1, rate=Rate(2, per=SLOW), rate_key="slow")
    await enqueue(svc, 1, rate=Rate(2, per=timedelta(microseconds=1)), rate_key="fast")
    claimed = await q.dequeue_ids_async([done])
    assert await q.complete_async(claimed[0], None)
    for task in await q.dequeue_many_async(10):
        if task.rate_key is not None:
            assert await q.complete_async(task, None)
    # Rows in use (a live task), or whose bucket is not full again, stay.
    assert await q.prune_limits_async(idle_for=timedelta(0)) == 2

    def keys(conn: sa.Connection) -> list[tuple[str, str]]:
        return [
            (r["kind"], r["key"])
            for k in ("concurrency", "rate")
            for r in svc.storage.limits.of_kind(conn, k)
        ]

    assert await svc.storage.read(keys) == [("concurrency", "busy"), ("rate", "slow")]
    assert await q.prune_limits_async() == 0  # the default keeps rows idle for an hour
    # A key pruned is declared again with its next task.
    await enqueue(svc, 2, concurrency=Limit(1), concurrency_key="idle")
    assert len(await q.dequeue_many_async(10)) == 1


async def test_a_requeued_task_declares_its_pruned_keys_again(svc: Services) -> None:
    # A dead task's key rows may be pruned (no live task carries them); requeued
    # later, the task must be claimable again, within its limits.
    fast = Rate(5, per=timedelta(microseconds=1))
    (task_id,) = await enqueue(
        svc, 1, concurrency=Limit(1), concurrency_key="K", rate=fast, rate_key="R"
    )
    (task,) = await svc.queue.dequeue_many_async(5)
    boom = ErrorInfo(type="E", message="boom")
    assert await svc.queue.fail_async(task, boom, retry=False) is TaskStatus.FAILED
    assert await svc.queue.prune_limits_async(idle_for=timedelta(0)) == 2
    await svc.queue.requeue_async(task_id)
    (again,) = await svc.queue.dequeue_many_async(5)
    assert again.id == task_id
    assert await svc.queue.dequeue_many_async(5) == []


async def test_enqueue_takes_a_keys_row_before_its_dependencies_rows(
    svc: Services, db_url: str
) -> None:
    # A claim locks the key rows first, then updates tasks. An enqueue that locked
    # a dependency's row (FOR SHARE) before the key's row would deadlock with a
    # claim that holds the key and claims that dependency.
    if not db_url.startswith("postgresql"):
        pytest.skip("row locks: PostgreSQL (SQLite has one writer)")
    (parent,) = await enqueue(svc, 1, concurrency=Limit(1), concurrency_key="K")
    engine = create_engine(db_url)
    try:
        async with engine.connect() as claimer, engine.connect() as watcher:
            await claimer.begin()
            key_row = sa.select(lim.c.key).where(lim.c.kind == "concurrency", lim.c.key == "K")
            await claimer.execute(key_row.with_for_update())
            child = asyncio.ensure_future(
                svc.queue.enqueue_async(
                    FUNC, [1], concurrency=Limit(1), concurrency_key="K", depends_on=[parent]
                )
            )

            await wait_until(
                lambda: waits_for_a_lock(watcher), "the enqueue waiting for the key's row"
            )
            claim = sa.update(t).where(t.c.id == parent).values(status="running")
            await claimer.execute(claim)
            await claimer.rollback()
        assert await child
    finally:
        await engine.dispose()


# --- rate --------------------------------------------------------------------------------


async def test_a_rate_limit_leaves_over_rate_tasks_pending_at_no_cost(svc: Services) -> None:
    ids = await enqueue(svc, 8, rate=Rate(3, per=SLOW), rate_key="R")
    other = await enqueue(svc, 1, rate=Rate(3, per=SLOW), rate_key="Q")
    claimed = await svc.queue.dequeue_many_async(10)
    assert sorted(x.rate_key or "" for x in claimed) == ["Q", "R", "R", "R"]
    for x in claimed:
        assert await svc.queue.complete_async(x, None)
    assert await svc.queue.dequeue_many_async(10, worker_id="w") == []
    # The next token is due in about SLOW / 3: the worker would sleep, not spin.
    wait = svc.queue.take_flow_wait("w")
    assert wait is not None and wait > 60
    left = [await svc.queue.get_task_async(i) for i in ids[3:]]
    assert all(x is not None and x.status is TaskStatus.PENDING and x.attempts == 0 for x in left)
    assert other


async def released_events(svc: Services) -> int:
    def body(conn: sa.Connection) -> int:
        stmt = sa.select(sa.func.count()).where(ev.c.event_type == EventType.RELEASED.value)
        return int(conn.execute(stmt).scalar_one())

    return await svc.storage.read(body)


async def test_a_cancelled_claim_gives_its_rate_tokens_back(svc: Services) -> None:
    # A claim undone because its caller was cancelled spent nothing: neither the
    # tasks' attempts nor the tokens of their key's and their queue's buckets.
    q = svc.queue
    await q.set_queue_limit_async("rq", rate=Rate(2, per=SLOW))
    ids = await enqueue(svc, 2, queue_name="rq", rate=Rate(2, per=SLOW), rate_key="R")
    for turns in range(200):  # until the cancel lands while the claim's write runs
        claim = asyncio.ensure_future(q.dequeue_many_async(2, worker_id="gone", start=False))
        for _ in range(turns):
            await asyncio.sleep(0)
        claim.cancel()
        try:
            got = await claim
        except asyncio.CancelledError:
            await asyncio.wait_for(svc.storage.wait_detached(), timeout=DEADLINE)
            if await released_events(svc):
                break
        else:
            await q.release_many_async(got, worker_id="gone")  # never started: refunded too
    assert await released_events(svc), "no cancel landed during the claim's write"
    again = await q.dequeue_many_async(5, worker_id="alive")
    assert sorted(x.id for x in again) == sorted(ids)
    assert all(x.attempts == 1 for x in again)


async def test_a_released_task_that_never_started_gives_its_tokens_back(svc: Services) -> None:
    q = svc.queue
    await q.set_queue_limit_async("rq", rate=Rate(3, per=SLOW))
    await enqueue(svc, 3, queue_name="rq", rate=Rate(3, per=SLOW), rate_key="R")
    held = await q.dequeue_many_async(3, start=False, worker_id="w")  # prefetched
    assert len(held) == 3
    assert await q.dequeue_many_async(3, worker_id="w") == []  # both buckets empty
    assert len(await q.release_many_async(held[:2], worker_id="w")) == 2
    # Two tokens back in each bucket: the two tasks are claimed (and started) at once.
    started = await q.dequeue_many_async(3, worker_id="w")
    assert sorted(x.id for x in started) == sorted(x.id for x in held[:2])
    # A task released after it started gets its attempt back, not its token: it
    # did start (a rate limits starts), so it waits for a refill.
    assert len(await q.release_many_async(started, worker_id="w")) == 2
    assert await q.dequeue_many_async(3, worker_id="w") == []
    wait = q.take_flow_wait("w")
    assert wait is not None and wait > 60


async def test_lease_recovery_of_an_unstarted_task_gives_its_tokens_back(
    open_services: ServicesFactory,
) -> None:
    svc = await open_services(
        Settings(lease_duration=timedelta(seconds=1), heartbeat_interval=timedelta(seconds=0.2))
    )
    (task_id,) = await enqueue(svc, 1, rate=Rate(1, per=SLOW), rate_key="L")
    (lost,) = await svc.queue.dequeue_many_async(5, start=False, worker_id="gone")

    # Its claimer vanished before starting it: once the lease expired, recovery puts it
    # back unspent, and it can be claimed at once.
    async def recovered() -> bool:
        return bool(await svc.queue.recover_expired_leases_async())

    await wait_until(recovered, "the lease expired and the task recovered")
    again = await svc.queue.dequeue_many_async(5, worker_id="alive")
    assert [x.id for x in again] == [lost.id] == [task_id]


async def test_tokens_refill_with_time(svc: Services) -> None:
    await enqueue(svc, 4, rate=Rate(2, per=timedelta(milliseconds=200)), rate_key="F")
    assert len(await svc.queue.dequeue_many_async(10)) == 2
    got: list[Task] = []
    for _ in range(200):
        got += await svc.queue.dequeue_many_async(10)
        if len(got) == 2:
            break
        await asyncio.sleep(0.02)
    assert len(got) == 2


async def test_a_claim_with_an_older_clock_does_not_turn_a_bucket_back(
    svc: Services, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A claimer whose ``now`` is older than the bucket's last refill (it read the
    # clock, then waited for the writer or the row lock; or its clock lags) must
    # not store that older time: the next claimer would refill the interval twice.
    start = svc.storage.now()
    clock = [start]
    monkeypatch.setattr(svc.storage, "now", lambda: clock[0])
    await enqueue(svc, 30, rate=Rate(10, per=timedelta(seconds=10)), rate_key="B")
    assert len(await svc.queue.dequeue_many_async(30)) == 10  # the full bucket
    clock[0] = start + timedelta(seconds=5)  # 5 tokens refilled
    assert len(await svc.queue.dequeue_many_async(3)) == 3
    clock[0] = start + timedelta(seconds=1)  # a late claimer with an older clock
    assert len(await svc.queue.dequeue_many_async(30)) == 2
    clock[0] = start + timedelta(seconds=5)
    # 15 tokens in 5 seconds, all spent: nothing more now.
    assert await svc.queue.dequeue_many_async(30) == []


# --- queue-wide limits and pause -----------------------------------------------------------


async def test_queue_wide_concurrency_and_rate(svc: Services) -> None:
    q = svc.queue
    settings = await q.set_queue_limit_async("emails", concurrency=2)
    assert settings.concurrency == 2 and settings.rate is None
    await enqueue(svc, 5, queue_name="emails")
    await enqueue(svc, 2, queue_name="other")
    assert len(await q.dequeue_many_async(10, ["emails"])) == 2
    assert len(await q.dequeue_many_async(10)) == 2  # "other" is not limited
    await q.set_queue_limit_async("emails", rate=Rate(1, per=SLOW))
    assert (await q.get_queue_limit_async("emails")).rate == Rate(1, per=SLOW)
    assert len(await q.dequeue_many_async(10, ["emails"])) == 1
    assert await q.dequeue_many_async(10, ["emails"]) == []
    cleared = await q.clear_queue_limit_async("emails")
    assert cleared.concurrency is None and cleared.rate is None
    assert await q.list_queue_limits_async() == []
    assert len(await q.dequeue_many_async(10, ["emails"])) == 2


async def test_queue_limit_input_is_checked(svc: Services) -> None:
    with pytest.raises(ValidationError, match="concurrency"):
        await svc.queue.set_queue_limit_async("q", concurrency=0)
    # Beyond the stored integer: refused as input, not a database error (PostgreSQL).
    with pytest.raises(ValidationError, match="concurrency"):
        await svc.queue.set_queue_limit_async("q", concurrency=2**31)
    with pytest.raises(ValidationError, match=r"rate\.key"):
        await svc.queue.set_queue_limit_async("q", rate=Rate(1, key="x"))
    with pytest.raises(ValidationError, match="queue_name"):
        await svc.queue.pause_queue_async("")


async def test_pause_holds_claims_enqueue_works_and_resume_restores(svc: Services) -> None:
    q = svc.queue
    await enqueue(svc, 2, queue_name="emails")
    assert await q.pause_queue_async("emails")
    assert not await q.pause_queue_async("emails")
    await enqueue(svc, 1, queue_name="emails")  # enqueue still works while paused
    await enqueue(svc, 1, queue_name="other")
    claimed = await q.dequeue_many_async(10)
    assert [x.queue_name for x in claimed] == ["other"]
    assert await q.dequeue_many_async(10, ["emails"]) == []
    assert await q.list_paused_queues_async() == ["emails"]
    assert await q.resume_queue_async("emails")
    assert not await q.resume_queue_async("emails")
    assert len(await q.dequeue_many_async(10, ["emails"])) == 3


async def test_a_pause_survives_a_new_app(db_url: str) -> None:
    async with AsyncOmniQ(url=db_url) as oq:
        await oq.enqueue_async(FUNC, [1], queue_name="emails")
        await oq.pause_queue_async("emails")
    async with AsyncOmniQ(url=db_url) as oq:
        assert await oq.list_paused_queues_async() == ["emails"]
        assert (await oq.get_queue_limit_async("emails")).paused
        assert await oq.services.queue.dequeue_many_async(5) == []
        stats = await oq.stats_async()
        assert stats["paused_queues"] == ["emails"]
        assert stats["queue_limits"]["emails"]["paused"] is True
        await oq.resume_queue_async("emails")
        assert len(await oq.services.queue.dequeue_many_async(5)) == 1


# --- declarations and keys -----------------------------------------------------------------


def constant(x: int) -> int:
    return x


def by_arg(tenant: str, x: int = 0) -> int:
    return x


def by_callable(order: dict[str, int]) -> None:
    return None


def whole_task() -> None:
    return None


def shop_of(order: dict[str, int]) -> str:
    return f"shop-{order['shop']}"


def no_key(x: int) -> None:
    return None


def user_task(user: str) -> None:
    return None


async def test_keys_from_a_constant_an_argument_and_a_callable(db_url: str) -> None:
    async with AsyncOmniQ(url=db_url) as oq:
        const = oq.task(concurrency=Limit(1, key="shared"))(constant)
        arg = oq.task(concurrency=Limit(2, key_arg="tenant"), rate=Rate(5, key_arg="tenant"))(
            by_arg
        )
        call = oq.task(concurrency=Limit(3, key=shop_of))(by_callable)
        whole = oq.task(concurrency=Limit(4))(whole_task)
        tasks = {
            "constant": await const.enqueue_async(1),
            "positional": await arg.enqueue_async("t1", 2),
            "keyword": await arg.enqueue_async(tenant="t2"),
            "callable": await call.enqueue_async({"shop": 7}),
            "override": await arg.with_options(concurrency_key="vip").enqueue_async("t3"),
            "default": await whole.enqueue_async(),
            "via enqueue": await oq.enqueue_async(arg, ["t4"], concurrency_key="x"),
        }
        got = {k: await oq.get_task_async(v) for k, v in tasks.items()}
        keys = {k: (x.concurrency_key, x.concurrency_max) for k, x in got.items() if x}
        assert keys == {
            "constant": ("shared", 1),
            "positional": ("t1", 2),
            "keyword": ("t2", 2),
            "callable": ("shop-7", 3),
            "override": ("vip", 2),
            "default": (got["default"].func if got["default"] else "", 4),
            "via enqueue": ("x", 2),
        }
        positional = got["positional"]
        assert positional is not None and positional.rate_key == "t1"
        assert positional.rate_limit == 5 and positional.rate_period == timedelta(seconds=1)


async def test_bad_declarations_and_keys_name_the_field(db_url: str) -> None:
    async with AsyncOmniQ(url=db_url) as oq:
        with pytest.raises(ValidationError, match=r"concurrency\.key_arg"):
            oq.task(concurrency=Limit(2, key_arg="tenant"))(user_task)
        with pytest.raises(ValidationError, match="concurrency"):
            oq.task(concurrency=2)(user_task)
        bad_key = oq.task(rate=Rate(2, key=lambda x: None))(no_key)
        with pytest.raises(ValidationError, match=r"rate\.key"):
            await bad_key.enqueue_async(1)
        plain = oq.task(no_key)
        with pytest.raises(ValidationError, match="concurrency_key"):
            await plain.with_options(concurrency_key="a").enqueue_async(1)
        with pytest.raises(ValidationError, match="concurrency_key"):
            await oq.enqueue_async(FUNC, [1], concurrency=Limit(1), concurrency_key="")


async def test_schedules_fire_tasks_that_keep_their_limits(db_url: str) -> None:
    """A schedule of a limited task (or with limits of its own) makes tasks that carry
    the keys, resolved from the schedule's fixed arguments, and the claim holds them."""
    async with AsyncOmniQ(url=db_url) as oq:
        limited = oq.task(concurrency=Limit(1, key_arg="tenant"))(by_arg)
        start = utcnow() - timedelta(minutes=5)
        for x in range(3):
            await oq.schedule_async(limited, ["acme", x], interval=3600, start_at=start)
        await oq.schedule_async(
            by_arg, ["globex"], interval=3600, start_at=start, rate=Rate(1, per=SLOW)
        )
        scheduler = Scheduler(oq.services.storage, oq.services.queue)
        assert await scheduler.fire_due_async() == 4
        fired = await oq.list_tasks_async(TaskStatus.PENDING)
        keys = sorted(str((x.concurrency_key, x.concurrency_max, x.rate_key)) for x in fired)
        ref = fired[0].func
        assert keys == [str(("acme", 1, None))] * 3 + [str((None, None, ref))]
        claimed = await oq.services.queue.dequeue_many_async(10)
        # One of acme's three (its limit) and globex's one token.
        assert sorted(x.func_args[0] for x in claimed) == ["acme", "globex"]
        assert await oq.services.queue.dequeue_many_async(10) == []
        with pytest.raises(ValidationError, match=r"concurrency\.key_arg"):
            await oq.schedule_async(by_arg, [], interval=60, concurrency=Limit(1, key_arg="nope"))


async def test_each_worker_waits_on_its_own_claims_rate_limit(svc: Services) -> None:
    """One queue object serves every worker of an app: a worker's claim on a plain
    queue must not pick up the token wait another worker's rate-limited claim got."""
    await enqueue(svc, 4, rate=Rate(1, per=SLOW), rate_key="R")
    assert len(await svc.queue.dequeue_many_async(10, worker_id="limited")) == 1
    assert await svc.queue.dequeue_many_async(10, worker_id="limited") == []
    # Another worker, whose claims no limit held back, waits on nothing of the first's.
    assert await svc.queue.dequeue_many_async(10, ["plain"], worker_id="plain") == []
    assert svc.queue.take_flow_wait("plain") is None
    wait = svc.queue.take_flow_wait("limited")
    assert wait is not None and wait > 60
    assert svc.queue.take_flow_wait("limited") is None  # taken once
