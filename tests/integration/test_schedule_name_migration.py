"""Revision 0009: unique schedule names, tolerating names an older database repeated."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
import sqlalchemy as sa

from omniq import AsyncOmniQ, Schedule, ScheduleType
from omniq.db import migrate
from omniq.db.engine import create_engine, dialect_of
from omniq.db.schema import schedules
from omniq.repositories.schedules import ScheduleRepository

pytestmark = pytest.mark.anyio


def report(kind: str) -> str:
    return kind


async def test_upgrade_keeps_one_schedule_per_repeated_name(empty_db_url: str) -> None:
    await _upgrade(empty_db_url, "0008")
    now = datetime.now(UTC)
    rows = [
        # name, status, created (minutes ago)
        ("nightly", "cancelled", 1),
        ("nightly", "active", 30),
        ("nightly", "active", 10),  # keeps the name: live, then newest
        ("hourly", "active", 5),
        (None, "active", 5),
        (None, "active", 6),
    ]
    engine = create_engine(empty_db_url)
    try:
        repo = ScheduleRepository(dialect_of(engine))
        made = [
            Schedule(
                func=f"{__name__}:report",
                name=name,
                schedule_type=ScheduleType.INTERVAL,
                interval=timedelta(minutes=5),
                status=status,
                created_at=now - timedelta(minutes=ago),
                next_run_at=now + timedelta(minutes=5),
            )
            for name, status, ago in rows
        ]
        async with engine.begin() as conn:
            await conn.execute(sa.insert(schedules), [repo.to_row(s) for s in made])
    finally:
        await engine.dispose()

    await _upgrade(empty_db_url, "head")

    async with AsyncOmniQ(url=empty_db_url) as oq:
        names = {s.id: s.name for s in await oq.list_schedules_async()}
        kept = made[2].id
        assert names[kept] == "nightly"
        assert names[made[0].id] == f"nightly (duplicate {made[0].id})"
        assert names[made[1].id] == f"nightly (duplicate {made[1].id})"
        assert names[made[3].id] == "hourly"
        assert names[made[4].id] is None and names[made[5].id] is None
        # The app's next start updates the schedule that kept the name.
        again = await oq.schedule_async(report, ["x"], interval=60, name="nightly")
        assert again == kept
        assert len(await oq.list_schedules_async()) == len(rows)


async def test_the_name_index_refuses_a_second_schedule_of_a_name(db_url: str) -> None:
    engine = create_engine(db_url)
    try:
        repo = ScheduleRepository(dialect_of(engine))
        one, two = (
            Schedule(
                func=f"{__name__}:report",
                name="same",
                schedule_type=ScheduleType.INTERVAL,
                interval=timedelta(minutes=5),
            )
            for _ in range(2)
        )
        async with engine.begin() as conn:
            await conn.execute(sa.insert(schedules), [repo.to_row(one)])
        with pytest.raises(sa.exc.IntegrityError):
            async with engine.begin() as conn:
                await conn.execute(sa.insert(schedules), [repo.to_row(two)])
    finally:
        await engine.dispose()


async def _upgrade(url: str, revision: str) -> None:
    engine = create_engine(url)
    try:
        await migrate.upgrade_async(engine, revision)
    finally:
        await engine.dispose()
