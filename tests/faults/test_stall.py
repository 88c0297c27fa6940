"""PostgreSQL stops answering: connections stay open and nothing comes back (a hung
server, a link that silently drops packets). ``Settings.server_timeout`` bounds every
wait for a reply, so no caller, worker loop or shutdown waits for good.
"""

from __future__ import annotations

import asyncio
import time
from datetime import timedelta
from pathlib import Path

import anyio
import pytest

from omniq.errors import DatabaseUnavailable
from omniq.models import Settings, TaskStatus
from omniq.services import Services
from omniq.worker import Worker
from tests import waiting
from tests.faults import MODULE, ref
from tests.faults.proxy import FaultProxy

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(120)]

#: Short, so the test sees the bound soon.
BOUND = Settings(server_timeout=timedelta(seconds=2))


async def readable(svc: Services, task_id: str) -> bool:
    """True once ``svc`` reads the task again (the server answers)."""
    try:
        return await svc.queue.get_task_async(task_id) is not None
    except DatabaseUnavailable:
        return False


async def wait_running(observer: Services, task_id: str) -> None:
    """Wait until ``observer`` (a direct connection) sees the task running."""

    async def running() -> bool:
        task = await observer.queue.get_task_async(task_id)
        return task is not None and task.status is TaskStatus.RUNNING

    await waiting.wait_until(running, "the task to run")


async def test_a_server_that_stops_answering_holds_no_caller_for_good(
    pg_proxy: tuple[FaultProxy, str, str], tmp_path: Path
) -> None:
    proxy, url, _direct = pg_proxy
    svc = await Services.open_async(url, BOUND)
    try:
        task_id = await svc.queue.enqueue_async(ref("record"), [str(tmp_path / "out"), "a"])
        proxy.stall()
        with anyio.fail_after(10):  # its own timeout, not the server's reply
            assert await svc.results.wait_async(task_id, timeout=1) is None
        with anyio.fail_after(30), pytest.raises(DatabaseUnavailable):
            await svc.queue.get_task_async(task_id)
        with anyio.fail_after(30), pytest.raises(DatabaseUnavailable):
            await svc.queue.enqueue_async(ref("record"), [str(tmp_path / "out"), "b"])
        proxy.resume()
        await waiting.wait_until(lambda: readable(svc, task_id), "the server to answer again")
        task = await svc.queue.get_task_async(task_id)
        assert task is not None and task.status is TaskStatus.PENDING
    finally:
        proxy.resume()
        with anyio.move_on_after(30):
            await svc.close_async()


async def test_closing_while_the_server_does_not_answer_ends_in_bounded_time(
    pg_proxy: tuple[FaultProxy, str, str],
) -> None:
    """Services whose server went silent close within CLOSE_WAIT (their connections
    are let go), instead of waiting for each connection's goodbye for good."""
    proxy, url, _ = pg_proxy
    svc = await Services.open_async(url, Settings(server_timeout=timedelta(seconds=300)))
    try:
        await svc.queue.enqueue_async(ref("record"), ["unused", "x"])  # connections in use
        proxy.stall()
        began = time.monotonic()
        with anyio.fail_after(60):
            await svc.close_async()
        assert time.monotonic() - began < 30
    finally:
        proxy.resume()


@pytest.mark.parametrize("server_timeout", [2, 300])
async def test_a_worker_stops_while_the_server_does_not_answer(
    pg_proxy: tuple[FaultProxy, str, str], tmp_path: Path, server_timeout: int
) -> None:
    """stop() returns in bounded time though every write hangs; the task it held is
    left to lease recovery, not lost and not failed. With a long server_timeout
    each step of the shutdown used to wait for it (SIGTERM took minutes): every
    write of the shutdown now has SHUTDOWN_STEP, the LISTEN connection a probe."""
    proxy, url, direct = pg_proxy
    settings = Settings(server_timeout=timedelta(seconds=server_timeout))
    svc = await Services.open_async(url, settings)
    observer = await Services.open_async(direct)
    out = tmp_path / "out"
    gate = tmp_path / "gate"
    task_id = await svc.queue.enqueue_async(ref("gated"), [str(out), "held", str(gate)])
    worker = Worker(
        svc.queue,
        svc.results,
        svc.events,
        allow_modules=[MODULE],
        poll_interval=0.1,
        run_scheduler=False,
        run_maintenance=server_timeout > 2,  # its lease is let go at the end too
    )
    await worker.start_async()
    try:
        await wait_running(observer, task_id)
        proxy.stall()
        began = time.monotonic()
        with anyio.fail_after(90):
            await worker.stop_async(grace_period=1)
        # Once a write of the shutdown went unanswered, the next ones are tried for
        # 2 s, not 10 s each: about 30 s at most here, where it took over 60 s.
        assert time.monotonic() - began < 45
    finally:
        proxy.resume()
        gate.touch()
        with anyio.move_on_after(30):
            await worker.stop_async()
            await svc.close_async()
    try:
        task = await observer.queue.get_task_async(task_id)
        assert task is not None
        # Released, or still running under a lease that recovery will take back.
        assert task.status in (TaskStatus.PENDING, TaskStatus.RUNNING), task.status
        assert task.last_error is None
    finally:
        await observer.close_async()


async def test_a_listen_connection_that_went_silent_is_noticed_and_replaced(
    pg_proxy: tuple[FaultProxy, str, str],
) -> None:
    """The LISTEN connection looks open but nothing comes back (a NAT forgot it):
    before, it was never noticed and workers polled for good."""
    import sqlalchemy as sa
    from sqlalchemy.ext.asyncio import create_async_engine

    from omniq.services.work_listener import WORK_CHANNEL, WorkListener

    proxy, url, direct = pg_proxy
    woken: list[int] = []
    listener = WorkListener(
        sa.make_url(url), lambda: woken.append(1), check_every=0.2, probe_timeout=0.5
    )
    assert await listener.open()
    runner = asyncio.ensure_future(listener.run())
    notifier = create_async_engine(direct)

    async def notify() -> None:
        async with notifier.connect() as conn:
            await conn.execute(sa.text(f"NOTIFY {WORK_CHANNEL}"))
            await conn.commit()

    async def heard() -> bool:
        await notify()
        return bool(woken)

    try:
        await waiting.wait_until(heard, "a notification through the proxy")
        proxy.silence_live()

        async def replaced() -> bool:
            return listener.connects >= 2 and listener.listening()

        await waiting.wait_until(replaced, "the silent LISTEN connection to be replaced")
        woken.clear()
        await waiting.wait_until(heard, "a notification on the new connection")
    finally:
        runner.cancel()
        with anyio.move_on_after(10):
            await listener.close()
        await notifier.dispose()


async def test_a_blip_of_lost_replies_costs_a_running_task_no_lease(
    pg_proxy: tuple[FaultProxy, str, str], tmp_path: Path
) -> None:
    """A second of lost replies: the heartbeat that was waiting for one waits up
    to server_timeout (longer than the lease here, as long as it by default).
    Before, the lease ran out meanwhile (another worker then ran the task
    again); now the leases alone are renewed on another connection."""
    proxy, url, direct = pg_proxy
    settings = Settings(
        lease_duration=timedelta(seconds=2),
        heartbeat_interval=timedelta(seconds=0.4),
        server_timeout=timedelta(seconds=8),
    )
    svc = await Services.open_async(url, settings)
    watcher = await Services.open_async(direct)
    out = tmp_path / "out"
    try:
        task_id = await svc.queue.enqueue_async(ref("record"), [str(out), "a", 5.0])
        worker = Worker(
            svc.queue,
            allow_modules=[MODULE],
            run_scheduler=False,
            run_maintenance=False,
            poll_interval=0.05,
        )
        await worker.start_async()
        try:
            await wait_running(watcher, task_id)
            proxy.drop_replies()
            await anyio.sleep(1.0)  # the fault lasts this long (not a wait for a condition)
            proxy.resume()
            # Until it completes, its lease never runs out (checked by the database's clock).
            while True:
                task = await watcher.queue.get_task_async(task_id)
                assert task is not None
                if task.status is not TaskStatus.RUNNING:
                    break
                now = watcher.storage.now()
                assert task.lease_expires_at is not None and task.lease_expires_at > now, (
                    "the lease ran out while its worker was alive"
                )
                await anyio.sleep(0.1)
            assert task.status is TaskStatus.COMPLETED
        finally:
            with anyio.move_on_after(30):
                await worker.stop_async(grace_period=1.0)
    finally:
        proxy.resume()
        with anyio.move_on_after(30):
            await svc.close_async()
        await watcher.close_async()
