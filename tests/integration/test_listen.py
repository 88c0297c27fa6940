"""Work another process makes wakes this one's waiters at once, on every engine.

PostgreSQL: revision 0004's triggers send ``NOTIFY omniq_work`` when a
statement makes tasks pending, and :meth:`Storage.listen_for_work` (held by
every worker) LISTENs. A SQLite file: the same context watches the file's
change counter and, when another connection committed, wakes the waiters
if a task is ready (:mod:`omniq.services.sqlite_watch`). The rows here are
written through a separate engine, as another process would write them:
nothing in this process calls the notifier itself, so only the database's
notification (or the watch) can wake the waiter.
"""

from __future__ import annotations

import asyncio
import logging
from datetime import timedelta
from typing import Any

import anyio
import pytest
import sqlalchemy as sa

from omniq.db.engine import create_engine
from omniq.db.schema import tasks as tasks_table
from omniq.models import TaskStatus
from omniq.services import Services
from omniq.services.work_listener import WorkListener
from tests.waiting import wait_until

pytestmark = pytest.mark.anyio

DEADLINE = 30.0  # a notification arrives within milliseconds
QUIET = 0.5  # how long "nothing woke the waiter" is watched for


async def _write_elsewhere(
    db_url: str, svc: Services, *, status: TaskStatus, delay: timedelta | None = None
) -> str:
    """Insert a task with ``status`` through an engine of its own; its id."""
    task = svc.queue.build_task("tests.worker_tasks:add_sync", [1, 2], run_in=delay)
    row = {**svc.storage.tasks.to_row(task), "status": status.value}
    engine = create_engine(db_url)
    try:
        async with engine.begin() as conn:
            await conn.run_sync(svc.storage.tasks.insert_rows, [row])
    finally:
        await engine.dispose()
    return task.id


async def _set_status_elsewhere(db_url: str, task_id: str, status: TaskStatus) -> None:
    engine = create_engine(db_url)
    try:
        async with engine.begin() as conn:
            await conn.execute(
                sa.update(tasks_table)
                .where(tasks_table.c.id == task_id)
                .values(status=status.value)
            )
    finally:
        await engine.dispose()


def _postgres_only(svc: Services) -> None:
    if svc.storage.dialect.name != "postgresql":
        pytest.skip("LISTEN/NOTIFY is PostgreSQL's (a SQLite file is watched instead)")


async def test_in_memory_sqlite_has_nobody_else_to_hear(tmp_path: Any) -> None:
    services = await Services.open_async("sqlite://")
    try:
        async with services.storage.listen_for_work() as listening:
            assert listening is False
    finally:
        await services.close_async()


async def test_sqlite_s_change_counter_counts_other_connections_commits_only(
    db_url: str, svc: Services
) -> None:
    writer = svc.storage.writer
    if writer is None:
        pytest.skip("the change counter is read on a SQLite file's writer connection")
    assert writer.data_version() is None  # nothing written yet: no connection to read on
    await asyncio.wrap_future(writer.open_connection())
    first = writer.data_version()
    assert first is not None
    # This process's own writes (its writer's connection) leave it as it was...
    await svc.queue.enqueue_async("tests.worker_tasks:add_sync", [1, 2])
    assert writer.data_version() == first
    # ... another connection's commit moves it.
    await _write_elsewhere(db_url, svc, status=TaskStatus.COMPLETED)
    moved = writer.data_version()
    assert moved is not None and moved != first
    svc.storage.writer.close()
    assert writer.data_version() is None  # closed: no reading


async def test_a_pending_task_written_elsewhere_wakes_a_listening_process(
    db_url: str, svc: Services
) -> None:
    notifier = svc.storage.notifier
    async with svc.storage.listen_for_work() as listening:
        assert listening is True
        woke = asyncio.ensure_future(notifier.wait(DEADLINE))
        await asyncio.sleep(0)  # one turn of the loop: the waiter is registered
        first = await _write_elsewhere(db_url, svc, status=TaskStatus.PENDING)
        assert await woke is True

        # A task moved back to pending (a retry, a requeue) wakes it too. (The
        # first one is claimed away first: a task still ready would wake the
        # waiter whatever came next.)
        await _set_status_elsewhere(db_url, first, TaskStatus.RUNNING)
        failed = await _write_elsewhere(db_url, svc, status=TaskStatus.FAILED)
        woke = asyncio.ensure_future(notifier.wait(DEADLINE))
        await asyncio.sleep(0)
        await _set_status_elsewhere(db_url, failed, TaskStatus.PENDING)
        assert await woke is True


async def test_work_is_looked_for_only_while_it_is_wanted(db_url: str, svc: Services) -> None:
    # A worker passes "I have room to claim": a full worker is not woken (on a
    # SQLite file the watch does not even look; PostgreSQL notifies regardless).
    if svc.storage.writer is None:
        pytest.skip("the watch of a SQLite file; PostgreSQL's NOTIFY comes regardless")
    notifier = svc.storage.notifier
    room = False
    async with svc.storage.listen_for_work(None, lambda: room):
        quiet = asyncio.ensure_future(notifier.wait(QUIET))
        await asyncio.sleep(0)
        await _write_elsewhere(db_url, svc, status=TaskStatus.PENDING)
        assert await quiet is False  # full: nobody woken
        room = True  # a slot came free: the change not looked at yet is looked at now
        assert await notifier.wait(DEADLINE) is True


async def test_only_work_that_can_run_is_announced(db_url: str, svc: Services) -> None:
    notifier = svc.storage.notifier
    async with svc.storage.listen_for_work():
        # A task waiting for its dependencies, or one that finished: nothing to claim.
        quiet = asyncio.ensure_future(notifier.wait(QUIET))
        await asyncio.sleep(0)
        waiting = await _write_elsewhere(db_url, svc, status=TaskStatus.WAITING)
        await _set_status_elsewhere(db_url, waiting, TaskStatus.COMPLETED)
        # Nor one due in an hour (a delay, a retry's backoff): polling finds it then.
        later = await _write_elsewhere(
            db_url, svc, status=TaskStatus.FAILED, delay=timedelta(hours=1)
        )
        await _write_elsewhere(db_url, svc, status=TaskStatus.PENDING, delay=timedelta(hours=1))
        await _set_status_elsewhere(db_url, later, TaskStatus.PENDING)
        assert await quiet is False


async def test_without_listening_another_process_s_work_is_only_found_by_polling(
    db_url: str, svc: Services
) -> None:
    quiet = asyncio.ensure_future(svc.storage.notifier.wait(QUIET))
    await asyncio.sleep(0)
    await _write_elsewhere(db_url, svc, status=TaskStatus.PENDING)
    assert await quiet is False


async def test_listening_uses_a_connection_of_its_own_even_with_a_tiny_pool(
    db_url: str, open_services: Any
) -> None:
    if not db_url.startswith("postgresql"):
        pytest.skip("LISTEN/NOTIFY is PostgreSQL's (a SQLite file is watched instead)")
    small: Services = await open_services(pool_size=1, max_overflow=0)
    async with small.storage.listen_for_work() as listening:
        assert listening is True
        pool = small.storage.engine.sync_engine.pool
        assert pool.checkedout() == 0  # the pool's one connection stays free for writes
        task_id = await small.queue.enqueue_async("tests.worker_tasks:add_sync", [1, 2])
        assert await small.queue.get_task_async(task_id) is not None


async def test_a_lost_listen_connection_comes_back(
    db_url: str, svc: Services, caplog: pytest.LogCaptureFixture
) -> None:
    # A server restart ends the LISTEN connection without a word; the listener
    # notices, connects again, and other processes' work wakes this one again.
    _postgres_only(svc)
    caplog.set_level(logging.INFO, logger="omniq.listen")
    admin = create_engine(db_url)
    try:
        async with svc.storage.listen_for_work() as listening:
            assert listening is True
            async with admin.connect() as conn:
                killed = (
                    await conn.execute(
                        sa.text(
                            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                            "WHERE datname = current_database() AND pid <> pg_backend_pid() "
                            "AND query LIKE 'LISTEN%'"
                        )
                    )
                ).scalar_one()
            assert killed >= 1

            async def listening_again() -> bool:
                return any("listening for new work again" in r.message for r in caplog.records)

            await wait_until(listening_again, "the listener to LISTEN again")
            assert any("LISTEN connection was lost" in r.message for r in caplog.records)
            woke = asyncio.ensure_future(svc.storage.notifier.wait(DEADLINE))
            await asyncio.sleep(0)  # one turn of the loop: the waiter is registered
            await _write_elsewhere(db_url, svc, status=TaskStatus.PENDING)
            assert await woke is True
    finally:
        await admin.dispose()


async def test_listening_ends_though_a_reconnect_swallowed_its_cancellation(
    db_url: str, svc: Services, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A cancellation that lands as a connect attempt finishes can be lost inside
    # the driver's timeout handling (asyncio.wait_for before Python 3.12): the
    # listener went on reconnecting, and a worker's shutdown waited for it for good
    # (SIGTERM during an outage: no exit, even after the server came back).
    _postgres_only(svc)
    real_connect = WorkListener._connect
    reconnecting = asyncio.Event()
    swallowed: list[bool] = []

    async def connect_once_deaf(self: WorkListener) -> None:
        if self.connects >= 1 and not swallowed:  # the first reconnect
            reconnecting.set()
            try:
                await asyncio.sleep(3600)
            except asyncio.CancelledError:
                swallowed.append(True)  # lost: the attempt just "failed"
                raise ConnectionRefusedError("refused") from None
        await real_connect(self)

    monkeypatch.setattr(WorkListener, "_connect", connect_once_deaf)
    admin = create_engine(db_url)
    try:
        with anyio.fail_after(30):
            async with svc.storage.listen_for_work() as listening:
                assert listening is True
                async with admin.connect() as conn:
                    await conn.execute(
                        sa.text(
                            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                            "WHERE datname = current_database() AND pid <> pg_backend_pid() "
                            "AND query LIKE 'LISTEN%'"
                        )
                    )
                await asyncio.wait_for(reconnecting.wait(), DEADLINE)
        assert swallowed == [True]
    finally:
        await admin.dispose()
