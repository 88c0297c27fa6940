"""Small claims on SQLite run on the caller's thread, and only small ones.

A claim of up to ``SMALL_CLAIM`` tasks is a small write: when the writer
thread is idle and the lock free, it runs on the event loop's own thread (no
trip to the writer thread and back). A claim that turns out to be more than
that (rows to quarantine, limits to read and lock) is rolled back there and
runs on the writer thread instead, so the event loop is not held: before, a
claim of one task over 20,000 unreadable rows held the loop for 8.5 s.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
import sqlalchemy as sa

from omniq import Limit
from omniq.db.schema import tasks as tasks_table
from omniq.models import TaskStatus
from omniq.services import Services
from tests.integration.test_services_queue import must_get, pre_expired

pytestmark = pytest.mark.anyio

ADD = "tests.worker_tasks:add"


def _only_sqlite(svc: Services) -> None:
    if svc.storage.dialect.name != "sqlite":
        pytest.skip("writes on the caller's thread: SQLite (PostgreSQL has no writer thread)")


@contextmanager
def transactions() -> Iterator[list[tuple[str, bool]]]:
    """(how each transaction ended, whether on this thread), in order."""
    seen: list[tuple[str, bool]] = []
    here = threading.get_ident()

    def commit(conn: sa.Connection) -> None:
        seen.append(("commit", threading.get_ident() == here))

    def rollback(conn: sa.Connection) -> None:
        seen.append(("rollback", threading.get_ident() == here))

    sa.event.listen(sa.Engine, "commit", commit)
    sa.event.listen(sa.Engine, "rollback", rollback)
    try:
        yield seen
    finally:
        sa.event.remove(sa.Engine, "commit", commit)
        sa.event.remove(sa.Engine, "rollback", rollback)


async def test_a_small_claim_commits_on_the_callers_thread(svc: Services) -> None:
    _only_sqlite(svc)
    task_id = await svc.queue.enqueue_async(ADD, [1, 2])
    with transactions() as seen:
        claimed = await svc.queue.dequeue_many_async(1, worker_id="w")
    assert [x.id for x in claimed] == [task_id]
    assert seen == [("commit", True)]


async def test_a_claim_over_unreadable_rows_quarantines_them_on_the_writer_thread(
    svc: Services,
) -> None:
    _only_sqlite(svc)
    broken = await svc.queue.enqueue_many_async(
        [svc.queue.build_task(ADD, [i, i], priority=10) for i in range(200)]
    )
    async with svc.storage.engine.begin() as conn:
        await conn.execute(
            sa.update(tasks_table)
            .where(tasks_table.c.id.in_(broken))
            .values(func="not a reference")
        )
    good = await svc.queue.enqueue_async(ADD, [1, 1])
    with transactions() as seen:
        claimed = await svc.queue.dequeue_many_async(1, worker_id="w")
    assert [x.id for x in claimed] == [good]
    # Tried here, rolled back at the first unreadable row, done on the writer thread.
    assert seen == [("rollback", True), ("commit", False)]
    async with svc.storage.engine.connect() as conn:
        rows = await conn.execute(
            sa.select(tasks_table.c.id).where(tasks_table.c.status == TaskStatus.FAILED.value)
        )
        failed = {row.id for row in rows}
    assert failed == set(broken)


async def test_a_claim_that_meets_limits_reads_them_on_the_writer_thread(svc: Services) -> None:
    _only_sqlite(svc)
    ids = await svc.queue.enqueue_many_async(
        [
            svc.queue.build_task(ADD, [i, i], concurrency=Limit(1), concurrency_key="k")
            for i in range(3)
        ]
    )
    with transactions() as seen:
        first = await svc.queue.dequeue_many_async(2, worker_id="w")
    assert [x.id for x in first] == ids[:1]
    assert seen == [("rollback", True), ("commit", False)]
    # The next claim from these queues goes to the writer thread at once.
    with transactions() as seen:
        second = await svc.queue.dequeue_many_async(2, worker_id="w")
    assert second == []
    assert seen == [("commit", False)]


async def test_a_claim_whose_sweep_finds_expired_tasks_runs_on_the_writer_thread(
    svc: Services,
) -> None:
    _only_sqlite(svc)
    expired = [pre_expired(svc) for _ in range(3)]
    alive = svc.queue.build_task(ADD, [1, 1])
    await svc.queue.enqueue_many_async([*expired, alive])
    with transactions() as seen:
        # The first claim of these services also sweeps expired tasks.
        claimed = await svc.queue.dequeue_many_async(1, worker_id="w")
    assert [x.id for x in claimed] == [alive.id]
    assert seen == [("rollback", True), ("commit", False)]
    for task in expired:
        assert (await must_get(svc, task.id)).status is TaskStatus.EXPIRED
