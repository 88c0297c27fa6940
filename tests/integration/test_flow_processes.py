"""Flow control across worker PROCESSES (issue 16), on each engine.

- 100 tasks of tenant A (concurrency 2 and a rate limit) and 10 of tenant B,
  three worker processes: never more than 2 of A run at once (sampled from the
  database while they run, and from the runs' own wall-clock intervals), B
  finishes first, no attempt is spent on waiting, A's claims respect the rate.
- kill -9 of a worker holding a key's only slot: the slot comes back once its
  lease is recovered, and the key's next task runs.

The issue's rate is 10 per minute; that would take ten minutes, so the period is
scaled down to one second (10 per second): the same shape in about ten seconds.
"""

from __future__ import annotations

import signal
import sys
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa

from omniq import Limit, Rate
from omniq.db.schema import events as ev
from omniq.db.schema import tasks as t
from omniq.models import EventType, TaskStatus
from omniq.services import Services
from tests.flow_tasks import intervals, most_at_once
from tests.integration.test_worker_processes import WorkerProcess, wait_until

pytestmark = [pytest.mark.anyio, pytest.mark.slow]

_ROOT = Path(__file__).resolve().parents[2]
if str(_ROOT) not in sys.path:
    sys.path.append(str(_ROOT))

TIMED = "tests.flow_tasks:timed"
HOLD = "tests.flow_tasks:hold_first_time"
ALLOW = ("--allow", "tests.flow_tasks")
#: The scaled-down rate: 10 per second (the issue: 10 per minute).
RATE = Rate(10, per=timedelta(seconds=1))


@pytest.fixture
def spawn(db_url: str, tmp_path: Path) -> Callable[..., WorkerProcess]:
    started: list[WorkerProcess] = []

    def start(worker_id: str, *options: str) -> WorkerProcess:
        process = WorkerProcess(db_url, tmp_path, worker_id, *ALLOW, *options)
        started.append(process)
        return process

    yield start  # type: ignore[misc]
    for process in started:
        process.cleanup()


async def running_per_key(svc: Services) -> dict[str, int]:
    def body(conn: sa.Connection) -> dict[str, int]:
        stmt = (
            sa.select(t.c.concurrency_key, sa.func.count())
            .where(t.c.status == TaskStatus.RUNNING.value, t.c.concurrency_key.is_not(None))
            .group_by(t.c.concurrency_key)
        )
        return {row[0]: int(row[1]) for row in conn.execute(stmt).all()}

    return await svc.storage.read(body)


async def completed(svc: Services) -> int:
    def body(conn: sa.Connection) -> int:
        return svc.storage.tasks.count(conn, TaskStatus.COMPLETED)

    return await svc.storage.read(body)


async def test_tenants_share_workers_within_their_limits(
    svc: Services, spawn: Callable[..., WorkerProcess], tmp_path: Path
) -> None:
    runs = str(tmp_path / "runs.txt")
    q = svc.queue
    build = [
        q.build_task(
            TIMED,
            [runs, tenant, 0.05],
            concurrency=Limit(2),
            concurrency_key=tenant,
            rate=RATE,
            rate_key=tenant,
        )
        for tenant, count in (("A", 100), ("B", 10))
        for _ in range(count)
    ]
    ids = await q.enqueue_many_async(build)
    workers = tuple(spawn(f"w{i}", "--concurrency", "4") for i in range(3))
    most_running: dict[str, int] = {}

    async def all_done() -> bool:
        for key, n in (await running_per_key(svc)).items():
            most_running[key] = max(most_running.get(key, 0), n)
        return await completed(svc) == len(ids)

    await wait_until(all_done, "every task completed", timeout=120, workers=workers)
    for worker in workers:
        worker.signal(signal.SIGTERM)
    assert most_running.get("A", 0) <= 2 and most_running.get("B", 0) <= 2, most_running

    done = [await q.get_task_async(i) for i in ids]
    assert all(x is not None and x.attempts == 1 for x in done), "an attempt was spent waiting"
    recorded = intervals(runs)
    assert len(recorded) == 110
    for tenant in ("A", "B"):
        assert most_at_once([(s, e) for label, s, e in recorded if label == tenant]) <= 2
    finished = {
        tenant: sorted(x.completed_at for x in done if x and x.concurrency_key == tenant)
        for tenant in ("A", "B")
    }
    # B's ten did not wait behind A's hundred: they were done before half of A's.
    assert finished["B"][-1] < finished["A"][49]  # type: ignore[operator]

    # A's claims respect the token bucket: at most 10 + 10 per second elapsed
    # in any window (plus one token of slack for the processes' clock estimates).
    a_ids = [x.id for x in done if x and x.concurrency_key == "A"]

    def claims(conn: sa.Connection) -> list[int]:
        stmt = sa.select(ev.c.timestamp).where(
            ev.c.event_type == EventType.DEQUEUED.value, ev.c.task_id.in_(a_ids)
        )
        return sorted(conn.execute(stmt).scalars().all())

    times = [x.timestamp() for x in await svc.storage.read(claims)]
    assert len(times) == 100
    per = RATE.per.total_seconds()
    for i in range(len(times)):
        for j in range(i, len(times)):
            allowed = RATE.limit + (times[j] - times[i]) * RATE.limit / per + 1
            assert j - i + 1 <= allowed, (i, j, times[j] - times[i])


async def test_a_killed_workers_slot_comes_back_with_its_lease(
    svc: Services, spawn: Callable[..., WorkerProcess], tmp_path: Path
) -> None:
    runs = str(tmp_path / "runs.txt")
    marker = tmp_path / "first-run"
    q = svc.queue
    short = ("--lease", "1", "--heartbeat", "0.25")
    holder = spawn("holder", *short)
    first = await q.enqueue_async(HOLD, [runs, "first", str(marker)], concurrency=Limit(1))
    key = (await q.get_task_async(first)).concurrency_key  # type: ignore[union-attr]

    async def holding() -> bool:
        return marker.exists() and (await running_per_key(svc)).get(key or "") == 1

    await wait_until(holding, "the first task holding the key's slot", workers=(holder,))
    second = await q.enqueue_async(HOLD, [runs, "second", str(marker)], concurrency=Limit(1))
    rescuer = spawn("rescuer", *short, "--maintenance-interval", "0.2")
    holder.signal(signal.SIGKILL)

    async def both_done() -> bool:
        if (await running_per_key(svc)).get(key or "", 0) > 1:
            pytest.fail("two tasks of a key limited to one ran at once")
        return await completed(svc) == 2

    await wait_until(both_done, "both tasks completed", workers=(rescuer,))
    rescuer.signal(signal.SIGTERM)
    recovered = await q.get_task_async(first)
    assert recovered is not None and recovered.lost_count == 1
    later = await q.get_task_async(second)
    assert later is not None and later.attempts == 1
    assert most_at_once([(s, e) for _, s, e in intervals(runs)]) == 1
