"""A worker under outages: PostgreSQL refusing connections, a real PostgreSQL restart,
a full disk under SQLite. Leases (8 s) outlast every outage: no task may be recovered
and run again. Outcomes are read back from the database afterwards.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import os
import signal
import time
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import anyio
import pytest

from omniq.models import EventType, ResultStatus, Schedule, Settings, TaskStatus
from omniq.services import Services, TaskQueue
from omniq.worker import Worker
from tests import waiting
from tests.faults import MODULE, ref
from tests.faults.conftest import FAULTS, Fault, LogTap
from tests.hardening.tasks import read_lines

# Bounded even if a fault blocks the event loop (the waits' deadlines cannot fire then).
pytestmark = [pytest.mark.anyio, pytest.mark.timeout(120)]

LEASE = 8.0  # outlasts every outage here: nobody may recover a live worker's task
OUTAGE = 2.5  # a lasting fault is held this long at least, and until the worker met it
TOTAL = 500
SETTINGS = Settings(
    lease_duration=timedelta(seconds=LEASE), heartbeat_interval=timedelta(seconds=0.25)
)


async def wait(what: str, condition: Callable[[], Any]) -> None:
    """Wait (30 s at most) until ``condition()`` (a bool, or an awaitable of one) holds."""

    async def check() -> bool:
        value = condition()
        return bool(await value if inspect.isawaitable(value) else value)

    await waiting.wait_until(check, what, timeout=30.0)


def make_worker(svc: Services, **options: Any) -> Worker:
    return Worker(
        svc.queue, svc.results, svc.events, allow_modules=[MODULE], queues=["default"],
        concurrency=8, poll_interval=0.1, scheduler_interval=0.2, maintenance_interval=0.5,
        grace_period=10.0, **options,
    )  # fmt: skip


def runs(path: Path) -> Counter[str]:
    """How many times each label started running."""
    return Counter(x for x in read_lines(path) if not x.startswith("returned:"))


async def settled(queue: TaskQueue, task_id: str, *, final: bool = True) -> bool:
    """The task left running (``final=False``) or reached a final status."""
    task = await queue.get_task_async(task_id)
    if task is None or task.status is TaskStatus.RUNNING:
        return False
    return task.status.is_final or not final


async def lease_beyond(queue: TaskQueue, task_id: str, when: datetime) -> bool:
    task = await queue.get_task_async(task_id)
    return bool(task and task.lease_expires_at and task.lease_expires_at > when)


async def fired_since(queue: TaskQueue, schedule_id: str, when: datetime) -> bool:
    newest = await queue.list_tasks_async(limit=20, order_by="created_at", descending=True)
    return any(t.schedule_id == schedule_id and t.created_at > when for t in newest)


async def only_completed(svc: Services) -> bool:
    return set((await svc.queue.stats_async()).get("default", {})) == {"completed"}


async def stop_quietly(
    worker: Worker, runner: asyncio.Task[None] | None, *services: Services
) -> None:
    """Cleanup, also after a failure: stop the worker and close ``services``, bounded."""
    with anyio.move_on_after(15), contextlib.suppress(Exception):
        await worker.stop_async()
    if runner is not None and not runner.done():
        runner.cancel()
        with contextlib.suppress(BaseException):
            await runner
    for svc in services:
        with anyio.move_on_after(10), contextlib.suppress(Exception):
            await svc.close_async()


@pytest.mark.parametrize("fault", FAULTS, indirect=True)
async def test_worker_rides_out_an_outage(fault: Fault, tmp_path: Path, tap: LogTap) -> None:
    out, ticks, gate, mid_gate = (tmp_path / x for x in ("runs", "ticks", "gate", "mid"))
    svc = await Services.open_async(fault.url, SETTINGS)  # the worker's: behind the fault
    observer = await Services.open_async(fault.observer_url)
    dead = await Services.open_async(
        fault.observer_url, Settings(lease_duration=timedelta(seconds=1))
    )
    queue, worker = observer.queue, make_worker(svc, run_scheduler=True, run_maintenance=True)
    runner: asyncio.Task[None] | None = None
    try:
        long_id = await queue.enqueue_async(ref("gated"), [str(out), "long", str(gate)], priority=9)
        # "mid" returns during the fault: its completion must be retried, not dropped.
        await queue.enqueue_async(ref("gated"), [str(out), "mid", str(mid_gate)], priority=9)
        tick = Schedule(
            func=ref("record"), func_args=[str(ticks), "tick"], schedule_type="interval",
            interval=timedelta(seconds=1),
        )  # fmt: skip
        sched_id = await queue.schedule_async(tick)
        labels = [f"t{i}" for i in range(TOTAL)]
        build = queue.build_task
        await queue.enqueue_many_async([build(ref("record"), [str(out), x, 0.02]) for x in labels])
        runner = asyncio.create_task(worker.run_async(install_signal_handlers=True))
        await wait(
            "the worker to be busy and the schedule to have fired",
            lambda: (
                runs(out)["long"] == runs(out)["mid"] == 1
                and len(runs(out)) >= 100
                and read_lines(ticks)
            ),
        )

        before, seen, since = datetime.now(UTC), tap.count, time.monotonic()
        if not fault.lasting:
            mid_gate.touch()
        await fault.inject()
        write_error: BaseException | None = None
        if fault.lasting:
            mid_gate.touch()
            try:
                await svc.queue.enqueue_async(ref("record"), [str(out), "big", 0, "x" * 10**6])
            except Exception as exc:
                write_error = exc
            await wait(
                f"the worker to meet the fault ({fault.kind})",
                lambda: (
                    tap.count >= seen + 3
                    and time.monotonic() - since >= OUTAGE
                    and "returned:mid" in read_lines(out)
                ),
            )
            await fault.heal()
        healed = datetime.now(UTC)
        late = [f"late{i}" for i in range(50)]
        await queue.enqueue_many_async([build(ref("record"), [str(out), x]) for x in late])

        renewal = before + timedelta(seconds=LEASE + 0.5)  # only a heartbeat after the fault
        await wait(
            "the heartbeat loop to renew a lease after the fault",
            lambda: lease_beyond(queue, long_id, renewal),
        )
        await wait(
            "the scheduler loop to fire after the fault",
            lambda: fired_since(queue, sched_id, healed),
        )
        await queue.pause_schedule_async(sched_id)
        ghost = await dead.queue.enqueue_async(
            ref("record"), [str(out), "ghost"], queue_name="ghost", max_retries=1
        )
        claimed = await dead.queue.dequeue_many_async(1, ["ghost"], worker_id="dead-worker")
        assert [t.id for t in claimed] == [ghost]
        await wait(
            "the maintenance loop to recover a dead worker's task after the fault",
            lambda: settled(queue, ghost, final=False),
        )
        gate.touch()
        expected = {"long", "mid", *labels, *late}
        await wait(
            "every task to complete after the fault",
            lambda: set(runs(out)) >= expected and only_completed(observer),
        )
        os.kill(os.getpid(), signal.SIGTERM)  # handled by the worker's loop
        with anyio.fail_after(30):
            await runner
    finally:
        await stop_quietly(worker, runner, svc, dead)

    try:
        tasks = await queue.list_tasks_async(queue_name="default", limit=10_000)
        statuses = Counter(t.status for t in tasks)
        assert statuses == {TaskStatus.COMPLETED: len(tasks)}, statuses
        done = runs(out)
        twice = sorted(x for x, n in done.items() if n > 1)
        assert not twice, f"{len(twice)} tasks ran more than once without a crash: {twice[:10]}"
        assert set(done) == expected, expected ^ set(done)
        fired = [t for t in tasks if t.schedule_id == sched_id]
        assert len(read_lines(ticks)) == len(fired), "a scheduled task ran twice"
        results = await observer.results.get_stats_async()
        assert results == {"success": len(tasks), "total": len(tasks)}, results
        assert await queue.list_tasks_async(TaskStatus.RUNNING) == []
        stopped = await observer.events.get_events_async(
            event_type=EventType.WORKER_STOPPED, worker_id=worker.worker_id
        )
        assert len(stopped) == 1, "the worker did not stop cleanly"
        if fault.write_error is not None:
            assert isinstance(write_error, fault.write_error), repr(write_error)
    finally:
        await stop_quietly(worker, None, observer)


@pytest.mark.parametrize("fault", FAULTS[:2], indirect=True)
async def test_outcome_whose_commit_fails_is_kept(
    fault: Fault, tmp_path: Path, tap: LogTap
) -> None:
    out, gate = tmp_path / "runs", tmp_path / "gate"
    svc = await Services.open_async(fault.url, SETTINGS)
    observer = await Services.open_async(fault.observer_url)
    worker = make_worker(svc, run_scheduler=False, run_maintenance=True)
    await worker.start_async()
    try:
        task_id = await observer.queue.enqueue_async(ref("gated"), [str(out), "only", str(gate)])
        await wait("the task to start", lambda: runs(out)["only"] == 1)
        await fault.inject()
        gate.touch()
        await wait(
            "the function to return during the fault",
            lambda: "returned:only" in read_lines(out),
        )
        seen = tap.count
        await wait("the worker to meet the fault after the return", lambda: tap.count >= seen + 2)
        await fault.heal()

        await wait(
            "the task to be settled after the fault", lambda: settled(observer.queue, task_id)
        )
        # The worker's own Services still write: a new task is claimed and completed.
        after = await svc.queue.enqueue_async(ref("record"), [str(out), "after"])
        await wait("a task enqueued after the fault to complete", lambda: settled(svc.queue, after))
        with anyio.fail_after(30):
            await worker.stop_async()
    finally:
        await stop_quietly(worker, None, svc)
    try:
        task = await observer.queue.get_task_async(task_id)
        assert task is not None
        assert task.status is TaskStatus.COMPLETED, (task.status, task.last_error)
        assert runs(out) == {"only": 1, "after": 1}, runs(out)
        assert await settled(observer.queue, after) and await only_completed(observer)
        assert task.attempts == 1
        result = await observer.results.get_async(task_id)
        assert result is not None and result.status is ResultStatus.SUCCESS
        assert result.result == "only"
        kinds = Counter(e.event_type for e in await observer.events.get_events_async(task_id))
        assert kinds[EventType.COMPLETED] == 1, kinds
        assert kinds[EventType.FAILED] == kinds[EventType.RETRY] == 0, kinds
        stopped = await observer.events.get_events_async(
            event_type=EventType.WORKER_STOPPED, worker_id=worker.worker_id
        )
        assert len(stopped) == 1, "the worker did not stop cleanly"
    finally:
        await stop_quietly(worker, None, observer)


async def test_opening_on_a_full_file_system_is_storage_full_and_loses_nothing(
    small_sqlite: tuple[Any, Path],
) -> None:
    """SQLite says "disk I/O error" when it cannot make its WAL and shared-memory files
    on a full file system; opening the database raised a plain DatabaseError (so an
    `omniq worker` started on a full disk did not say why)."""
    from omniq.errors import StorageFull

    disk, path = small_sqlite
    url = f"sqlite+aiosqlite:///{path}"
    services = await Services.open_async(url)
    try:
        kept = await services.queue.enqueue_async(services.queue.build_task(ref("noop")))
    finally:
        await services.close_async()
    disk.fill(path)
    with pytest.raises(StorageFull) as err:
        await Services.open_async(url)
    assert str(path.parent) in str(err.value)
    disk.free()
    services = await Services.open_async(url)
    try:
        task = await services.queue.get_task_async(kept)
        assert task is not None and task.status is TaskStatus.PENDING
    finally:
        await services.close_async()


async def test_a_connection_closed_during_its_handshake_is_database_unavailable(
    pg_proxy: tuple[Any, str, str],
) -> None:
    """A server (or link) that closes a new connection after part of its start-up
    exchange: asyncpg says "connection was closed in the middle of operation" and
    SQLAlchemy does not mark it invalidated, so it came out as a plain DatabaseError
    (about 9 % of a helper's enqueue_many batches through a resetting proxy); a
    caller that retries on DatabaseUnavailable took it for a permanent error."""
    import sqlalchemy as sa

    from omniq.errors import DatabaseUnavailable

    _, _, direct_url = pg_proxy
    target = sa.make_url(direct_url)

    async def cut_after_first_reply(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        upstream_r, upstream_w = await asyncio.open_connection(target.host, target.port or 5432)

        async def client_to_server() -> None:
            while data := await reader.read(65536):
                upstream_w.write(data)
                await upstream_w.drain()

        pump = asyncio.ensure_future(client_to_server())
        first = await upstream_r.read(65536)
        writer.write(first[:1])  # a byte of the server's answer, then the end
        await writer.drain()
        writer.close()
        upstream_w.close()
        pump.cancel()

    server = await asyncio.start_server(cut_after_first_reply, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    url = target.set(host="127.0.0.1", port=port).render_as_string(False)
    try:
        with pytest.raises(DatabaseUnavailable):
            await Services.open_async(url, Settings(auto_migrate=False))
    finally:
        server.close()
