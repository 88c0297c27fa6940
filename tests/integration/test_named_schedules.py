"""Named schedules are declared once: schedule(name=...) and @oq.periodic upsert by name."""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa

from omniq import AsyncOmniQ, OmniQ, ScheduleStatus
from omniq.app_schedules import declared_periodic

pytestmark = pytest.mark.anyio


def report(kind: str) -> str:
    return f"{kind} report"


def cleanup(days: int = 7) -> int:
    return days


async def test_schedule_with_a_name_is_upserted_across_restarts(db_url: str) -> None:
    ids = []
    for _ in range(3):  # three "starts" of the same app
        async with AsyncOmniQ(url=db_url) as oq:
            ids.append(await oq.schedule_async(report, ["nightly"], cron="30 1 * * *", name="n"))
            await oq.schedule_async(report, ["unnamed"], interval=60)  # today's behaviour
    async with AsyncOmniQ(url=db_url) as oq:
        schedules = await oq.list_schedules_async()
    assert len(set(ids)) == 1
    named = [s for s in schedules if s.name == "n"]
    assert [s.id for s in named] == ids[:1]
    assert len([s for s in schedules if s.name is None]) == 3


async def test_changing_the_cron_of_a_named_schedule_updates_it(db_url: str) -> None:
    async with AsyncOmniQ(url=db_url) as oq:
        first = await oq.schedule_async(report, ["x"], cron="30 1 * * *", name="nightly")
        before = await oq.get_schedule_async(first)
        assert before is not None and before.next_run_at is not None
        assert (before.next_run_at.hour, before.next_run_at.minute) == (1, 30)
        again = await oq.schedule_async(report, ["x"], cron="0 4 * * *", name="nightly")
        after = await oq.get_schedule_async(first)
        assert again == first
        assert after is not None and after.cron_expression == "0 4 * * *"
        assert after.next_run_at is not None
        assert (after.next_run_at.hour, after.next_run_at.minute) == (4, 0)
        assert after.created_at == before.created_at
        # Same declaration again: nothing changes (no update event, same next run).
        await oq.schedule_async(report, ["x"], cron="0 4 * * *", name="nightly")
        unchanged = await oq.get_schedule_async(first)
        assert unchanged == after
        # Arguments change without touching the timing.
        await oq.schedule_async(report, ["y"], cron="0 4 * * *", name="nightly")
        changed = await oq.get_schedule_async(first)
        assert changed is not None and changed.func_args == ("y",)
        assert changed.next_run_at == after.next_run_at
        updates = await oq.get_events_async(schedule_id=first, event_type="schedule_updated")
        assert len(updates) == 2
        assert len(await oq.list_schedules_async()) == 1


async def test_a_paused_named_schedule_stays_paused_when_redeclared(db_url: str) -> None:
    async with AsyncOmniQ(url=db_url) as oq:
        sid = await oq.schedule_async(report, ["x"], interval=60, name="every-minute")
        await oq.pause_schedule_async(sid)
        assert await oq.schedule_async(report, ["x"], interval=120, name="every-minute") == sid
        stored = await oq.get_schedule_async(sid)
        assert stored is not None
        assert stored.status is ScheduleStatus.PAUSED
        assert stored.interval == timedelta(seconds=120)


async def test_periodic_decorator_upserts_when_the_app_opens(db_url: str) -> None:
    counts = []
    for minutes in (5, 5, 10):  # three starts; the last one changes the interval
        oq = AsyncOmniQ(url=db_url)
        handle = oq.periodic(interval=timedelta(minutes=minutes), name="cleanup", args=[3])(cleanup)
        assert handle(2) == 2  # still the function
        async with oq:
            schedules = await oq.list_schedules_async()
            counts.append(len(schedules))
        (stored,) = schedules
        assert stored.name == "cleanup" and stored.func_args == (3,)
        assert stored.interval == timedelta(minutes=minutes)
        assert stored.next_run_at is not None
        left = stored.next_run_at - datetime.now(UTC)
        assert timedelta(minutes=minutes - 1) < left <= timedelta(minutes=minutes)
    assert counts == [1, 1, 1]
    # The worker of that app runs the scheduled function (it is registered).
    async with AsyncOmniQ(url=db_url) as oq:
        oq.periodic(cron="* * * * *", name="cleanup")(cleanup)
        (stored,) = await oq.list_schedules_async()
        assert stored.cron_expression == "* * * * *" and stored.interval is None
        assert oq.registry.is_allowed(stored.func)


async def test_periodic_declared_after_open_is_upserted_by_the_next_call(db_url: str) -> None:
    async with AsyncOmniQ(url=db_url) as oq:
        assert await oq.list_schedules_async() == []
        oq.periodic(cron="0 * * * *")(report)  # name defaults to the function's reference
        (stored,) = await oq.list_schedules_async()
        assert stored.name == f"{__name__}:report"


def test_periodic_needs_exactly_one_timing() -> None:
    oq = OmniQ("unused")
    with pytest.raises(Exception, match="exactly one of cron= or interval="):
        oq.periodic(name="x")
    with pytest.raises(Exception, match="cron"):
        oq.periodic(cron="not a cron", name="bad")(report)


def test_sync_app_upserts_named_schedules(tmp_path: Path) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path / 'sync.db'}"
    for _ in range(2):
        with OmniQ(url=url) as oq:
            oq.schedule(report, ["a"], cron="0 1 * * *", name="one")
            oq.schedule(report, ["b"], interval=timedelta(minutes=5), name="two")
            oq.schedule(report, ["c"], at=datetime.now(UTC) + timedelta(hours=1), name="three")
    with OmniQ(url=url) as oq:
        assert sorted(s.name or "" for s in oq.list_schedules()) == ["one", "three", "two"]


TASKS_MODULE = """
from datetime import timedelta

from omniq import OmniQ

oq = OmniQ("declared")


@oq.periodic(cron="{cron}", name="nightly")
def nightly():
    return "ran"


@oq.periodic(interval=timedelta(minutes=5), name="five")
def five():
    return "ran"
"""


WORKER = [sys.executable, "-m", "omniq", "worker", "--app", "declared_tasks", "--burst"]


def test_cli_worker_upserts_the_periodic_tasks_of_its_app_module(tmp_path: Path) -> None:
    """`omniq worker --app module` started twice keeps one schedule per name."""
    db = tmp_path / "declared.db"
    url = f"sqlite+aiosqlite:///{db}"
    env = {**os.environ, "PYTHONPATH": str(tmp_path)}
    for cron in ("0 1 * * *", "0 1 * * *", "15 3 * * *"):
        (tmp_path / "declared_tasks.py").write_text(
            TASKS_MODULE.replace("{cron}", cron), encoding="utf-8"
        )
        proc = subprocess.run(
            [*WORKER, "--url", url],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert proc.returncode == 0, proc.stdout + proc.stderr
    engine = sa.create_engine(f"sqlite:///{db}")
    with engine.connect() as conn:
        rows = conn.execute(
            sa.text("SELECT name, cron_expression FROM omniq_schedules ORDER BY name")
        ).all()
    engine.dispose()
    assert [tuple(r) for r in rows] == [("five", None), ("nightly", "15 3 * * *")]


def test_declarations_are_recorded_process_wide() -> None:
    oq = OmniQ("unused")
    oq.periodic(interval=60, name="recorded-once")(cleanup)
    assert declared_periodic["recorded-once"][0] == __name__
    other = OmniQ("other")
    package = __name__.rpartition(".")[0]
    # Other test modules of the run may have declared periodic tasks of functions
    # in modules elsewhere (tests.worker_tasks): those are not adopted.
    assert other.app.adopt_periodic([package]) == [
        name
        for name, (module, _) in declared_periodic.items()
        if module == package or module.startswith(package + ".")
    ]
    assert "recorded-once" in other.app.adopt_periodic([package])
