"""A named schedule re-declared (or updated) while another process fires it keeps every run.

A re-declaration (``upsert_schedule_async``) or an update
(``update_schedule_async``) reads the stored schedule and writes it back. A
fire that another process commits between that read and that write must
survive: its run count, next run and last run stay, so each fire makes one
task, ``run_count`` counts them and ``max_runs`` holds.

The fire is put exactly there: the change's read of the schedule is wrapped so
that, right after it, another "process" (Services with their own engine, on
their own event loop in a thread) fires the schedule. Where write transactions
serialize (SQLite) that fire waits for the change's commit; on PostgreSQL the
test waits until it finished (it commits, or skips a row the change locked).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import sys
import threading
from collections.abc import Coroutine
from datetime import timedelta
from pathlib import Path
from typing import Any, TypeVar

import pytest
import sqlalchemy as sa

from omniq.db.schema import tasks as tasks_table
from omniq.models import Schedule, ScheduleStatus, ScheduleType
from omniq.services import Services
from omniq.services.scheduler import Scheduler

# The schedule's template task names "tests.worker_tasks:stamp": the repository
# root must be importable.
_ROOT = str(Path(__file__).resolve().parents[2])
if _ROOT not in sys.path:
    sys.path.append(_ROOT)

pytestmark = pytest.mark.anyio

T = TypeVar("T")
FUNC = "tests.worker_tasks:stamp"
MAX_RUNS = 3
#: Deadline of every wait on the other thread (never a sleep).
DEADLINE = 30.0


class OtherProcess:
    """Services on their own event loop in a thread: a second process's scheduler."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.services: Services | None = None

    def submit(self, coro: Coroutine[Any, Any, T]) -> concurrent.futures.Future[T]:
        return asyncio.run_coroutine_threadsafe(coro, self.loop)

    async def call(self, coro: Coroutine[Any, Any, T]) -> T:
        return await asyncio.wait_for(asyncio.wrap_future(self.submit(coro)), DEADLINE)

    async def open(self, url: str) -> Scheduler:
        self.services = await self.call(Services.open_async(url))
        return Scheduler(self.services.storage, self.services.queue)

    async def close(self) -> None:
        try:
            if self.services is not None:
                await self.call(self.services.close_async())
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(DEADLINE)
            assert not self.thread.is_alive()
            self.loop.close()


def declaration(**fields: Any) -> Schedule:
    values: dict[str, Any] = {
        "func": FUNC,
        "schedule_type": ScheduleType.INTERVAL,
        "interval": timedelta(hours=1),
        "name": "redeclared",
        "max_runs": MAX_RUNS,
        "func_args": ("v0",),
        **fields,
    }
    return Schedule(**values)


async def tasks_made(svc: Services, schedule_id: str) -> list[Any]:
    """``scheduled_for`` of every task the schedule made."""
    rows = await svc.storage.read(
        lambda conn: conn.execute(
            sa.select(tasks_table.c.scheduled_for).where(tasks_table.c.schedule_id == schedule_id)
        ).all()
    )
    return [row[0] for row in rows]


async def stored(svc: Services, schedule_id: str) -> Schedule:
    schedule = await svc.queue.get_schedule_async(schedule_id)
    assert schedule is not None
    return schedule


@pytest.mark.parametrize("how", ["upsert", "update"])
@pytest.mark.parametrize(
    "change",
    [
        pytest.param({"func_args": ("v1",)}, id="arguments"),
        pytest.param({"interval": timedelta(hours=2)}, id="interval"),
    ],
)
async def test_a_fire_between_the_redeclarations_read_and_write_is_kept(
    svc: Services,
    db_url: str,
    monkeypatch: pytest.MonkeyPatch,
    change: dict[str, Any],
    how: str,
) -> None:
    first = await svc.queue.upsert_schedule_async(declaration())
    assert first.next_run_at is not None
    other = OtherProcess()
    try:
        their_scheduler = await other.open(db_url)
        repository = svc.storage.schedules
        read = repository.get_by_name if how == "upsert" else repository.get
        interleaved: list[concurrent.futures.Future[int]] = []

        def read_then_fire(conn: sa.Connection, key: str, **kwargs: Any) -> Schedule | None:
            current = read(conn, key, **kwargs)
            if not interleaved:
                assert first.next_run_at is not None
                fire = other.submit(their_scheduler.fire_due_async(first.next_run_at))
                interleaved.append(fire)
                if not svc.storage.dialect.single_writer:
                    # PostgreSQL: the fire finishes before the upsert writes.
                    fire.result(DEADLINE)
            return current

        monkeypatch.setattr(repository, read.__name__, read_then_fire)
        if how == "upsert":
            again = await svc.queue.upsert_schedule_async(declaration(**change))
        else:
            again = await svc.queue.update_schedule_async(first.id, **change)
        monkeypatch.undo()
        assert again.id == first.id
        assert len(interleaved) == 1
        # SQLite: the fire waited for the change's write lock and runs now.
        await asyncio.wait_for(asyncio.wrap_future(interleaved[0]), DEADLINE)

        # The fire survived the change, or (its row locked) it did not happen:
        # either way every task made is counted.
        now = await stored(svc, first.id)
        made = await tasks_made(svc, first.id)
        assert now.run_count == len(made)
        assert now.status is ScheduleStatus.ACTIVE
        for field, value in change.items():
            assert getattr(now, field) == value
        if made:
            assert now.last_run_at is not None
            assert now.next_run_at is not None and now.next_run_at > first.next_run_at

        # Fire until it completes: max_runs tasks, one per fire time, all counted.
        scheduler = Scheduler(svc.storage, svc.queue)
        for _ in range(MAX_RUNS + 1):
            if now.status is not ScheduleStatus.ACTIVE:
                break
            assert now.next_run_at is not None
            await scheduler.fire_due_async(now.next_run_at)
            now = await stored(svc, first.id)
        made = await tasks_made(svc, first.id)
        assert now.status is ScheduleStatus.COMPLETED
        assert now.run_count == len(made) == MAX_RUNS
        assert len(set(made)) == len(made)
    finally:
        await other.close()
