"""Four OS processes claim from one database: every task is claimed exactly once.

Concurrency is made certain, not hoped for: the processes meet (through files
in the test's tmp_path) before anyone claims, and each holds its first batch
(claimed, not finished) until every process holds one, so all of them are
claiming from the same queue at the same time however the OS schedules them.
Every rendezvous has a deadline, so a bug fails with a message instead of a hang.
Each process claims and finishes through ``Storage.write`` as a worker does: on
PostgreSQL through ``AsyncConnection.run_sync``, on SQLite on the process's
writer thread.
"""

from __future__ import annotations

import asyncio
import functools
import multiprocessing
import os
import queue
import random
import time
import traceback
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from omniq._time import new_id, utcnow
from omniq.db.engine import create_engine, dialect_of
from omniq.db.schema import tasks as t
from omniq.models import Task, TaskStatus
from omniq.repositories import TaskRepository
from omniq.services import Storage

PROCESSES = 4
TASKS = 2_000
BATCH = (10, 50)  # claim sizes; PROCESSES first batches leave work for everyone
assert PROCESSES * BATCH[1] < TASKS
RENDEZVOUS_TIMEOUT = 60.0  # seconds, per meeting; normally they all meet within one
DEADLINE = 300.0  # seconds, the parent's: both meetings plus the work (a few seconds)
GIVE_UP_GRACE = 30.0  # seconds the parent still waits for the rest once one process failed


# --- meeting points between the processes -----------------------------------------------------


class Rendezvous:
    """Processes meet through marker files in ``directory``.

    ``arrive(phase)`` creates ``<phase>-<me>``; ``wait_all(phase)`` returns once
    every process has arrived. A process that fails creates ``failed-<me>``, so
    the others give up at once instead of waiting out the deadline.
    """

    def __init__(self, directory: Path, me: int, count: int) -> None:
        self.directory, self.me, self.count = directory, me, count

    def _mark(self, name: str) -> None:
        os.close(os.open(self.directory / name, os.O_WRONLY | os.O_CREAT, 0o600))

    def arrive(self, phase: str) -> None:
        self._mark(f"{phase}-{self.me}")

    def fail(self) -> None:
        self._mark(f"failed-{self.me}")

    def _missing(self, phase: str) -> list[int]:
        return [i for i in range(self.count) if not (self.directory / f"{phase}-{i}").exists()]

    def _failed(self) -> list[int]:
        return [i for i in range(self.count) if (self.directory / f"failed-{i}").exists()]

    async def wait_all(self, phase: str, timeout: float = RENDEZVOUS_TIMEOUT) -> None:
        deadline = time.monotonic() + timeout
        while missing := self._missing(phase):
            if failed := self._failed():
                raise RuntimeError(f"process {self.me}: gave up on {phase!r}, {failed} failed")
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"process {self.me}: processes {missing} not {phase!r} after {timeout:g}s"
                )
            await asyncio.sleep(0.01)


# --- the worker process ------------------------------------------------------------------------


async def _claim_until_empty(url: str, meet: Rendezvous) -> list[str]:
    storage = Storage.from_url(url)
    repo = storage.tasks
    rng = random.Random(meet.me)
    worker_id = f"proc-{meet.me}"
    claimed: list[str] = []
    try:
        # Ready = imported and connected (reads, and writes: on SQLite the writer
        # thread's connection); nobody claims before everybody is.
        await storage.open()
        await storage.read(lambda conn: conn.execute(sa.text("SELECT 1")).scalar_one())
        await storage.write(lambda conn: conn.execute(sa.text("SELECT 1")).scalar_one())
        meet.arrive("ready")
        await meet.wait_all("ready")
        while True:
            now = utcnow()
            token = new_id()
            n = rng.randint(*BATCH)
            got = await storage.write(
                functools.partial(
                    repo.claim,
                    queues=["default"],
                    n=n,
                    now=now,
                    token=token,
                    lease_until=now + timedelta(minutes=5),
                    worker_id=worker_id,
                ),
                what="claim tasks",
            )
            if not got:
                if not claimed:
                    raise AssertionError(
                        f"{worker_id} found nothing to claim although the others hold at most "
                        f"{(PROCESSES - 1) * BATCH[1]} of {TASKS} tasks"
                    )
                return claimed
            ids = [x.id for x in got]
            if not claimed:
                # Hold the first batch (claimed, unfinished) until every process holds one.
                meet.arrive("claimed")
                await meet.wait_all("claimed")
            claimed.extend(ids)
            # Finish them under the lease, as a worker would.
            done = await storage.write(
                functools.partial(
                    repo.transition_many,
                    where=sa.and_(
                        t.c.id.in_(ids),
                        t.c.lease_token == token,
                        t.c.status == TaskStatus.RUNNING.value,
                    ),
                    values={"status": TaskStatus.COMPLETED, "completed_at": utcnow()},
                ),
                what="complete tasks",
            )
            if sorted(x.id for x in done) != sorted(ids):
                raise AssertionError(f"{worker_id} lost tasks it had just claimed")
    finally:
        await storage.close()


def claim_worker(url: str, worker_no: int, meeting_dir: str, results: Any) -> None:
    """Process entry point: claim in batches until nothing is left; report ids or the error."""
    meet = Rendezvous(Path(meeting_dir), worker_no, PROCESSES)
    try:
        ids = asyncio.run(_claim_until_empty(url, meet))
        results.put((worker_no, ids, None))
    except BaseException:
        meet.fail()
        results.put((worker_no, [], traceback.format_exc()))


# --- the test ------------------------------------------------------------------------------------


async def _enqueue(url: str, count: int) -> None:
    engine = create_engine(url)
    repo = TaskRepository(dialect_of(engine))
    created = utcnow() - timedelta(seconds=1)
    try:
        tasks = [
            Task(func="m:f", func_args=[i], priority=i % 5, created_at=created)
            for i in range(count)
        ]
        async with engine.begin() as conn:
            for start in range(0, count, 500):
                await conn.run_sync(repo.insert_many, tasks[start : start + 500])
    finally:
        await engine.dispose()


async def _summary(url: str) -> tuple[dict[str, int], dict[int, int]]:
    engine = create_engine(url)
    try:
        async with engine.begin() as conn:
            statuses = (
                await conn.execute(sa.select(t.c.status, sa.func.count()).group_by(t.c.status))
            ).all()
            attempts = (
                await conn.execute(sa.select(t.c.attempts, sa.func.count()).group_by(t.c.attempts))
            ).all()
    finally:
        await engine.dispose()
    return {row[0]: int(row[1]) for row in statuses}, {int(row[0]): int(row[1]) for row in attempts}


def _collect(
    procs: list[Any], results: Any, meeting_dir: Path
) -> dict[int, tuple[list[str], str | None]]:
    """Every process's report; fail with the errors and the silent processes if any."""
    reports: dict[int, tuple[list[str], str | None]] = {}
    died: set[int] = set()
    deadline = time.monotonic() + DEADLINE
    while len(reports) + len(died) < len(procs):
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            break
        try:
            worker_no, ids, error = results.get(timeout=min(remaining, 1.0))
        except queue.Empty:
            for no, proc in enumerate(procs):
                # Exited, and its report is not in the queue (a report is flushed before exit).
                if no not in reports and no not in died and proc.exitcode is not None:
                    if not results.empty():
                        break
                    died.add(no)
                    Rendezvous(meeting_dir, no, len(procs)).fail()  # so the rest give up
                    deadline = min(deadline, time.monotonic() + GIVE_UP_GRACE)
            continue
        reports[worker_no] = (ids, error)
        if error:
            # The rest give up at once (they see its failed-* marker) or finish the queue.
            deadline = min(deadline, time.monotonic() + GIVE_UP_GRACE)
    errors = [f"process {no}:\n{error}" for no, (_, error) in sorted(reports.items()) if error]
    silent = [
        f"process {no} sent no report ("
        + (f"died, exit code {proc.exitcode}" if no in died else "still running: hung?")
        + ")"
        for no, proc in enumerate(procs)
        if no not in reports
    ]
    assert not errors and not silent, "\n".join(errors + silent)
    for proc in procs:
        proc.join(timeout=max(1.0, deadline - time.monotonic()))
        assert proc.exitcode == 0
    return reports


@pytest.mark.slow
def test_processes_claim_every_task_exactly_once(own_migrated_db_url: str, tmp_path: Path) -> None:
    asyncio.run(_enqueue(own_migrated_db_url, TASKS))
    meeting_dir = tmp_path / "rendezvous"
    meeting_dir.mkdir()
    ctx = multiprocessing.get_context("spawn")
    results = ctx.Queue()
    procs = [
        ctx.Process(
            target=claim_worker,
            args=(own_migrated_db_url, i, str(meeting_dir), results),
            daemon=True,
        )
        for i in range(PROCESSES)
    ]
    for proc in procs:
        proc.start()
    try:
        reports = _collect(procs, results, meeting_dir)
    finally:
        for proc in procs:
            if proc.is_alive():
                proc.kill()
                proc.join(timeout=10)
        results.close()

    claimed = [task_id for ids, _ in reports.values() for task_id in ids]
    assert len(claimed) == TASKS
    assert len(set(claimed)) == TASKS, "a task was claimed more than once"
    # Certain, not lucky: each process held its first batch until all of them held one.
    idle = sorted(no for no, (ids, _) in reports.items() if not ids)
    assert idle == [], f"processes {idle} claimed nothing"
    statuses, attempts = asyncio.run(_summary(own_migrated_db_url))
    assert statuses == {"completed": TASKS}
    assert attempts == {1: TASKS}
