from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from omniq._time import new_id, utcnow
from omniq.db.engine import dialect_of
from omniq.models import Task, TaskStatus
from omniq.repositories import TaskRepository

pytestmark = pytest.mark.anyio


async def test_claim_roundtrip(engine: AsyncEngine) -> None:
    repo = TaskRepository(dialect_of(engine))
    tasks = [Task(func="m:f", func_args=[i], priority=i % 3) for i in range(10)]
    async with engine.begin() as conn:
        await conn.run_sync(repo.insert_many, tasks)
    now = utcnow()
    async with engine.begin() as conn:
        got = await conn.run_sync(
            repo.claim,
            queues=["default"],
            n=4,
            now=now,
            token=new_id(),
            lease_until=now + timedelta(seconds=30),
            worker_id="w",
        )
    assert [x.priority for x in got] == [2, 2, 2, 1]
    assert all(x.status is TaskStatus.RUNNING and x.attempts == 1 for x in got)
