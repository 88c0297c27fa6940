"""The worker's log records in-process: cancellations, plain formatters, a filtered level."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import pytest

from omniq.logs import JsonFormatter
from omniq.models import TaskStatus
from omniq.services import Services

_ROOT = str(Path(__file__).resolve().parents[2])
if _ROOT not in sys.path:
    sys.path.append(_ROOT)

from tests.integration.test_worker import make_worker, ref, status_of  # noqa: E402
from tests.waiting import wait_until  # noqa: E402

pytestmark = pytest.mark.anyio


def outcomes(caplog: pytest.LogCaptureFixture, task_id: str) -> list[logging.LogRecord]:
    return [r for r in caplog.records if getattr(r, "task_id", None) == task_id]


async def test_cancelled_tasks_are_logged_running_or_prefetched(
    svc: Services, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="omniq.worker")
    running = await svc.queue.enqueue_async(ref("sleep_async"), [30], priority=10)
    prefetched = await svc.queue.enqueue_async(ref("add"), [1, 2])
    worker = make_worker(svc, concurrency=1, prefetch=1)
    await worker.start_async()
    try:

        async def both_claimed() -> bool:
            statuses = {await status_of(svc, running), await status_of(svc, prefetched)}
            return statuses == {TaskStatus.RUNNING}

        await wait_until(both_claimed, "the worker to claim both tasks")
        assert await svc.queue.cancel_async(prefetched)
        assert await svc.queue.cancel_async(running)

        async def settled() -> bool:
            return all([(await status_of(svc, t)).is_final for t in (running, prefetched)])

        await wait_until(settled, "both tasks to be cancelled")
    finally:
        await worker.stop_async(grace_period=1.0)
    [stopped] = outcomes(caplog, running)
    assert stopped.levelno == logging.INFO and stopped.outcome == "cancelled"  # type: ignore[attr-defined]
    assert stopped.duration >= 0  # type: ignore[attr-defined]
    assert f"sleep_async[{running}] cancelled after " in stopped.getMessage()
    [never] = outcomes(caplog, prefetched)
    assert never.duration is None  # type: ignore[attr-defined]
    assert never.getMessage().endswith(f"add[{prefetched}] cancelled before it started")
    summary = caplog.records[-1]
    assert "stopped after" in summary.getMessage() and summary.cancelled == 2  # type: ignore[attr-defined]


async def test_a_failure_reads_well_in_any_formatter(
    svc: Services, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="omniq.worker")
    task_id = await svc.queue.enqueue_async(ref("always_fails"), ["nope"], max_retries=0)
    await make_worker(svc).run_until_complete_async()
    [failed] = outcomes(caplog, task_id)
    assert failed.levelno == logging.ERROR
    plain = logging.Formatter("%(levelname)s %(message)s").format(failed)
    first, *rest = plain.splitlines()
    assert first.startswith(f"ERROR task {ref('always_fails')}[{task_id}] failed in ")
    assert rest[0] == "Traceback (most recent call last):" and rest[-1].endswith(": nope")
    data = JsonFormatter().format(failed)
    assert "\n" not in data and '"outcome": "failed"' in data and "Traceback" in data


async def test_a_filtered_level_logs_no_task_lines(
    svc: Services, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="omniq.worker")
    ids = [await svc.queue.enqueue_async(ref("add"), [i, i]) for i in range(20)]
    stats = await make_worker(svc).run_until_complete_async()
    assert stats.completed == len(ids)
    assert [r for r in caplog.records if r.name == "omniq.worker"] == []
