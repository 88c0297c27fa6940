"""Four OS processes claim from one database: every task is claimed exactly once."""

from __future__ import annotations

import asyncio
import multiprocessing
import queue
import random
import time
import traceback
from datetime import timedelta
from typing import Any

import pytest
import sqlalchemy as sa

from omniq._time import new_id, utcnow
from omniq.db.engine import create_engine, dialect_of
from omniq.db.schema import tasks as t
from omniq.models import Task, TaskStatus
from omniq.repositories import TaskRepository

PROCESSES = 4
TASKS = 2_000
DEADLINE = 120.0  # seconds; the run takes a few


# --- the worker process ------------------------------------------------------------------------


async def _claim_until_empty(url: str, worker_no: int) -> list[str]:
    engine = create_engine(url)
    repo = TaskRepository(dialect_of(engine))
    rng = random.Random(worker_no)
    worker_id = f"proc-{worker_no}"
    claimed: list[str] = []
    try:
        while True:
            now = utcnow()
            token = new_id()
            async with engine.begin() as conn:
                got = await repo.claim(
                    conn,
                    queues=["default"],
                    n=rng.randint(10, 50),
                    now=now,
                    token=token,
                    lease_until=now + timedelta(minutes=5),
                    worker_id=worker_id,
                )
            if not got:
                return claimed
            ids = [x.id for x in got]
            claimed.extend(ids)
            # Finish them under the lease, as a worker would.
            async with engine.begin() as conn:
                done = await repo.transition_many(
                    conn,
                    where=sa.and_(
                        t.c.id.in_(ids),
                        t.c.lease_token == token,
                        t.c.status == TaskStatus.RUNNING.value,
                    ),
                    values={"status": TaskStatus.COMPLETED, "completed_at": utcnow()},
                )
            if sorted(x.id for x in done) != sorted(ids):
                raise AssertionError(f"{worker_id} lost tasks it had just claimed")
    finally:
        await engine.dispose()


def claim_worker(url: str, worker_no: int, start: Any, results: Any) -> None:
    """Process entry point: claim in batches until nothing is left; report ids or the error."""
    try:
        start.wait(timeout=60)
        ids = asyncio.run(_claim_until_empty(url, worker_no))
        results.put((worker_no, ids, None))
    except BaseException:
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
                await repo.insert_many(conn, tasks[start : start + 500])
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


@pytest.mark.slow
def test_processes_claim_every_task_exactly_once(own_migrated_db_url: str) -> None:
    asyncio.run(_enqueue(own_migrated_db_url, TASKS))
    ctx = multiprocessing.get_context("spawn")
    start = ctx.Barrier(PROCESSES)
    results = ctx.Queue()
    procs = [
        ctx.Process(target=claim_worker, args=(own_migrated_db_url, i, start, results), daemon=True)
        for i in range(PROCESSES)
    ]
    for proc in procs:
        proc.start()
    reports: dict[int, tuple[list[str], str | None]] = {}
    deadline = time.monotonic() + DEADLINE
    try:
        while len(reports) < PROCESSES:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                pytest.fail(f"only {len(reports)} of {PROCESSES} processes reported in time")
            try:
                worker_no, ids, error = results.get(timeout=min(remaining, 1.0))
            except queue.Empty:
                dead = [p for p in procs if p.exitcode not in (None, 0)]
                if dead and len(reports) < PROCESSES and results.empty():
                    codes = [p.exitcode for p in dead]
                    pytest.fail(f"worker process died without reporting (exit codes {codes})")
                continue
            reports[worker_no] = (ids, error)
        for proc in procs:
            proc.join(timeout=max(1.0, deadline - time.monotonic()))
            assert proc.exitcode == 0
    finally:
        for proc in procs:
            if proc.is_alive():
                proc.kill()
                proc.join(timeout=10)
        results.close()

    errors = {no: error for no, (_, error) in reports.items() if error}
    assert errors == {}, "\n".join(f"process {no}:\n{error}" for no, error in errors.items())
    claimed = [task_id for ids, _ in reports.values() for task_id in ids]
    assert len(claimed) == TASKS
    assert len(set(claimed)) == TASKS, "a task was claimed more than once"
    assert sum(1 for ids, _ in reports.values() if ids) >= 2, "no concurrency happened"
    statuses, attempts = asyncio.run(_summary(own_migrated_db_url))
    assert statuses == {"completed": TASKS}
    assert attempts == {1: TASKS}
