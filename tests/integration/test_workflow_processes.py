"""Workflows across worker processes: a 50-task chord whose worker is killed
(SIGKILL) mid-way runs its callback exactly once, with all 50 results in order.

The worker processes run tests/worker_process.py (helpers shared with
test_worker_processes.py); leases are short so the killed worker's tasks come
back quickly through a surviving worker's maintenance.
"""

from __future__ import annotations

import json
import signal
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from omniq import AsyncOmniQ, TaskStatus, WorkflowStatus, chord
from tests.integration import test_worker_processes as procs
from tests.integration.test_worker_processes import WorkerProcess, wait_until
from tests.worker_tasks import read_records

pytestmark = [pytest.mark.anyio, pytest.mark.slow]

#: The worker-process fixture of test_worker_processes.py, shared.
spawn = procs.spawn

MEMBERS = 50
LEASE = ("--lease", "2", "--heartbeat", "0.3", "--allow", "tests.workflow_funcs")


@pytest.fixture
async def oq(db_url: str) -> AsyncIterator[AsyncOmniQ]:
    async with AsyncOmniQ("flows", db_url) as app:
        yield app


async def test_a_chord_survives_a_killed_worker_and_calls_back_exactly_once(
    oq: AsyncOmniQ,
    spawn: Callable[..., WorkerProcess],
    tmp_path: Path,
) -> None:
    runs = tmp_path / "runs"
    calls = tmp_path / "callback"
    members = [
        oq.signature("tests.worker_tasks:record_and_sleep", str(runs), f"m{i}", 0.2).set(
            max_retries=3, retry_delay=0
        )
        for i in range(MEMBERS)
    ]
    handle = await oq.enqueue_workflow_async(
        chord(members, oq.signature("tests.workflow_funcs:record_results", str(calls)))
    )
    member_ids = (await handle.get_async()).task_ids[:-1]

    victim = spawn("victim", *LEASE, "--concurrency", "4")

    async def mid_way() -> bool:
        # The victim holds tasks, and some members already completed. It is
        # stopped while this looks, so it still holds them when it is killed
        # (on a busy machine it could otherwise finish them in between).
        victim.signal(signal.SIGSTOP)
        running = await oq.list_tasks_async(status="running", limit=100)
        done = await oq.list_tasks_async(status="completed", limit=100)
        if len(done) >= 8 and any(t.worker_id == "victim" for t in running):
            return True
        victim.signal(signal.SIGCONT)
        return False

    await wait_until(mid_way, "the victim to be mid-way through the chord", workers=(victim,))
    victim.signal(signal.SIGKILL)
    assert await victim.wait_exit() == -signal.SIGKILL
    completed_at_kill = len(await oq.list_tasks_async(status="completed", limit=100))
    assert completed_at_kill < MEMBERS

    # Survivors: one recovers expired leases (maintenance), both work.
    keeper = spawn("keeper", *LEASE, "--concurrency", "4", "--maintenance-interval", "0.3")
    helper = spawn("helper", *LEASE, "--concurrency", "4")
    survivors = (keeper, helper)

    async def finished() -> bool:
        stats = (await oq.stats_async())["task_totals"]
        return stats.get("completed", 0) == MEMBERS + 1 and not any(
            stats.get(s) for s in ("pending", "waiting", "running")
        )

    await wait_until(finished, "the chord to finish", timeout=90, workers=survivors)
    assert await handle.result_async(timeout=30) == MEMBERS
    for worker in survivors:
        worker.signal(signal.SIGTERM)
    for worker in survivors:
        assert await worker.wait_exit() == 0, worker.output()

    # Exactly one callback run, with every member's result in group order.
    lines = calls.read_text().splitlines()
    assert len(lines) == 1
    assert json.loads(lines[0]) == [f"m{i}" for i in range(MEMBERS)]
    workflow = await handle.get_async()
    assert workflow.status is WorkflowStatus.COMPLETED
    assert workflow.members[-1].remaining == 0
    # The kill hit claimed members: their leases were recovered and they ran again.
    tasks = [await oq.get_task_async(x) for x in member_ids]
    assert all(t is not None and t.status is TaskStatus.COMPLETED for t in tasks)
    assert any(t is not None and t.lost_count > 0 for t in tasks)
    assert {label for label, _pid in read_records(runs)} == {f"m{i}" for i in range(MEMBERS)}
