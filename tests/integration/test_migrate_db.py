"""``omniq migrate-db``: a SQLite queue graduates to PostgreSQL (and to another SQLite file).

The source is always a SQLite file; the target runs on each engine. The
big test moves 10,000 tasks in every status with schedules and results,
then runs them on the target: each pending task once, each schedule once
at its next time. Others: an interrupted copy resumes without duplicates
(a failure injected after N batches; a process SIGKILLed mid-copy), a dry
run changes nothing, an old source is refused, claims stop on a flagged
source and ``force`` releases running tasks, enqueues there raise
``DatabaseMigrated``, unflag undoes it, and a target holding other data is
refused.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import subprocess
import sys
from collections import Counter
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import create_async_engine

from omniq import AsyncOmniQ
from omniq._time import utcnow
from omniq.db import migrate
from omniq.db.schema import attempts as attempts_table
from omniq.db.schema import db_migration as migration_table
from omniq.db.schema import events as events_table
from omniq.db.schema import metadata
from omniq.db.schema import results as results_table
from omniq.db.schema import tasks as tasks_table
from omniq.errors import DatabaseMigrated, MigrationRefused, ValidationError
from omniq.migrate_db import Progress, migrate_db, migrate_db_async, plan, unflag_async
from omniq.migrate_db.plan import RULES
from omniq.models import Schedule, ScheduleType, Settings, Task, TaskStatus
from omniq.services import ErrorInfo, Services
from omniq.services.maintenance import Maintenance, MaintenanceReport
from omniq.services.scheduler import Scheduler
from omniq.worker import Worker
from tests.acceptance.test_cli import omniq
from tests.conftest import ENGINES, PostgresDatabases, require_postgres
from tests.waiting import wait_until

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.append(str(ROOT))

pytestmark = pytest.mark.anyio

FUNC = "tests.worker_tasks:add"
HOUR = timedelta(hours=1)


@pytest.fixture
def source_url(tmp_path: Path, sqlite_template: Path) -> str:
    path = tmp_path / "source.db"
    shutil.copyfile(sqlite_template, path)
    path.chmod(0o600)
    return f"sqlite+aiosqlite:///{path}"


@pytest.fixture(params=ENGINES)
def target_url(
    request: pytest.FixtureRequest, tmp_path: Path, postgres_databases: PostgresDatabases | None
) -> str:
    """An empty, never-migrated database: a new SQLite file, or a new PostgreSQL database."""
    if request.param == "sqlite":
        return f"sqlite+aiosqlite:///{tmp_path / 'target.db'}"
    return require_postgres(postgres_databases).create(migrated=False)


# --- building a source ------------------------------------------------------------------


async def _claim_all(svc: Services, queue: str) -> list[Task]:
    claimed: list[Task] = []
    while batch := await svc.queue.dequeue_many_async(500, [queue]):
        claimed += batch
    return claimed


async def _enqueue(svc: Services, queue: str, n: int, **options: Any) -> list[str]:
    ids: list[str] = []
    for start in range(0, n, 1000):
        tasks = [
            svc.queue.build_task(FUNC, [i, 1], queue_name=queue, **options)
            for i in range(start, min(n, start + 1000))
        ]
        ids += await svc.queue.enqueue_many_async(tasks)
    return ids


async def seed(url: str, counts: dict[str, int]) -> dict[str, list[str]]:
    """A queue with ``counts`` tasks per status (completed, failed, cancelled, running,
    waiting, pending); the ids of each status."""
    ids: dict[str, list[str]] = {}
    svc = await Services.open_async(url)
    try:
        q = svc.queue
        ids["completed"] = await _enqueue(svc, "done", counts["completed"])
        for _ in range(0, counts["completed"], 500):
            claimed = await _claim_all_n(svc, "done", 500)
            await q.complete_many_async([(t, t.id, 0.01) for t in claimed])
        ids["failed"] = await _enqueue(svc, "fail", counts["failed"], max_retries=1)
        for retry in (True, False):  # one retried failure (an attempt row), then the final one
            claimed = await _claim_all(svc, "fail")
            error = ErrorInfo(type="Boom", message="boom")
            await q.fail_many_async([(t, error, retry, 0.01) for t in claimed])
            if retry:
                await q.storage.write(
                    lambda c: c.execute(
                        sa.update(tasks_table)
                        .where(tasks_table.c.queue_name == "fail")
                        .values(run_at=utcnow() - HOUR)
                    )
                )
        ids["cancelled"] = await _enqueue(svc, "cancel", counts["cancelled"])
        for task_id in ids["cancelled"]:
            await q.cancel_async(task_id)
        ids["running"] = await _enqueue(svc, "default", counts["running"])
        assert len(await _claim_all(svc, "default")) == counts["running"]
        ids["pending"] = await _enqueue(svc, "default", counts["pending"])
        parents = ids["pending"][: counts["waiting"]]
        waiting = [
            q.build_task(FUNC, [i, 2], depends_on=[parent]) for i, parent in enumerate(parents)
        ]
        ids["waiting"] = await q.enqueue_many_async(waiting)
    finally:
        await svc.close_async()
    return ids


async def _claim_all_n(svc: Services, queue: str, n: int) -> list[Task]:
    return await svc.queue.dequeue_many_async(n, [queue])


async def statuses(svc: Services) -> Counter[str]:
    rows = await svc.storage.read(
        lambda c: c.execute(sa.select(tasks_table.c.status)).scalars().all()
    )
    return Counter(rows)


async def rows_of(url: str) -> dict[str, int]:
    """Rows per table of every OmniQ table (a snapshot to compare)."""
    svc = await Services.open_async(url, Settings(auto_migrate=False))
    try:

        def body(conn: sa.Connection) -> dict[str, int]:
            return {
                t.name: int(conn.execute(sa.select(sa.func.count()).select_from(t)).scalar_one())
                for t in metadata.sorted_tables
            }

        return await svc.storage.read(body)
    finally:
        await svc.close_async()


def burst_worker(svc: Services) -> Worker:
    return Worker(
        svc.queue,
        svc.results,
        svc.events,
        allow_modules=["tests.worker_tasks"],
        concurrency=50,
        poll_interval=0.05,
        run_scheduler=False,
        run_maintenance=False,
    )


# --- the plan -------------------------------------------------------------------------------


def test_every_table_is_copied_or_skipped_with_a_reason() -> None:
    decided = {item.name: item for item in plan(frozenset({"events"}))}
    assert set(decided) == {t.name for t in metadata.sorted_tables}
    assert set(RULES) <= set(decided), "a rule names a table the schema does not have"
    for item in decided.values():
        if item.skipped is not None:
            assert item.rule.skip, f"{item.name} is skipped without a reason"
            assert len(item.skipped) > 15
    skipped = {name for name, item in decided.items() if item.skipped}
    assert skipped == {"omniq_locks", "omniq_workers", "omniq_db_migration"}
    without_events = {item.name: item.skipped for item in plan()}
    assert without_events["omniq_events"] == "copied only with --events"
    # Dependency order: a table comes after the tables its foreign keys point at.
    order = [item.name for item in plan()]
    for table in metadata.sorted_tables:
        for fk in table.foreign_keys:
            assert order.index(fk.column.table.name) < order.index(table.name)


# --- 10,000 tasks -------------------------------------------------------------------------------

BIG = {
    "completed": 4000,
    "failed": 1000,
    "cancelled": 500,
    "running": 500,
    "pending": 3000,
    "waiting": 1000,
}


async def test_ten_thousand_tasks_graduate_and_run_once_each(
    source_url: str, target_url: str
) -> None:
    assert sum(BIG.values()) == 10_000
    ids = await seed(source_url, BIG)
    now = utcnow() - 3 * HOUR  # fire times in the past: their tasks are ready at once
    src = await Services.open_async(source_url)
    try:
        fired = await src.queue.schedule_async(hourly(now, (1, 2)))
        later = await src.queue.schedule_async(hourly(now + 2 * HOUR, (3, 4)))
        assert await Scheduler(src.storage, src.queue).fire_due_async(now) == 1
        ids["pending"].append(await _fired_task(src, fired))
        # Ten results already expired: not copied.
        expired = ids["completed"][:10]
        await src.storage.write(
            lambda c: c.execute(
                sa.update(results_table)
                .where(results_table.c.task_id.in_(expired))
                .values(expires_at=now - HOUR)
            )
        )
    finally:
        await src.close_async()
    before = await rows_of(source_url)

    steps: list[Progress] = []
    report = await migrate_db_async(
        source_url, target_url, force=True, events=True, batch_size=700, progress=steps.append
    )

    assert report.ok, report.summary()
    assert report.released == BIG["running"]
    assert report.target_revision is None and not report.resumed
    by_table = {t.table: t for t in report.tables}
    tasks_report = by_table["omniq_tasks"]
    assert tasks_report.written == 10_001
    assert (
        tasks_report.source
        == tasks_report.target
        == {
            "completed": BIG["completed"],
            "failed": BIG["failed"],
            "cancelled": BIG["cancelled"],
            "pending": BIG["running"] + BIG["pending"] + 1,
            "waiting": BIG["waiting"],
        }
    )
    results_written = BIG["completed"] + BIG["failed"] + BIG["cancelled"] - 10
    assert by_table["omniq_results"].written == results_written
    assert by_table["omniq_task_dependencies"].written == BIG["waiting"]
    assert by_table["omniq_task_attempts"].written == 2 * BIG["failed"]  # retried, then final
    assert by_table["omniq_schedules"].written == 2
    assert by_table["omniq_events"].written == before["omniq_events"] + BIG["running"]  # released
    assert not by_table["omniq_locks"].copied and not by_table["omniq_workers"].copied
    assert steps[-1].table == "omniq_task_progress"
    assert any(s.table == "omniq_tasks" and 0 < s.done < s.total for s in steps)
    if target_url.startswith("postgresql"):
        assert set(report.sequences) == {"omniq_events", "omniq_task_attempts"}

    # The source is flagged: nothing is claimed, fired or enqueued there.
    src = await Services.open_async(source_url)
    try:
        assert await src.queue.dequeue_many_async(10) == []
        assert await Scheduler(src.storage, src.queue).fire_due_async(now + 2 * HOUR) == 0
        with pytest.raises(DatabaseMigrated) as raised:
            await src.queue.enqueue_async(FUNC, [1, 2])
        assert raised.value.target == report.target
    finally:
        await src.close_async()

    dst = await Services.open_async(target_url)
    try:
        # Serial keys continue after the copied ids.
        await dst.storage.write(lambda c: _insert_serial_rows(c, ids["failed"][0]))
        # Every schedule fires once at its next time, never again for a past one.
        scheduler = Scheduler(dst.storage, dst.queue)
        assert await scheduler.fire_due_async(now) == 0
        assert await scheduler.fire_due_async(now + HOUR) == 1
        assert await scheduler.fire_due_async(now + HOUR) == 0
        ids["pending"].append(await _fired_task(dst, fired))
        assert await scheduler.fire_due_async(now + 2 * HOUR) == 2  # and `later`'s first run
        ids["pending"] += [await _fired_task(dst, fired), await _fired_task(dst, later)]
        assert len(set(ids["pending"])) == BIG["pending"] + 4

        stats = await burst_worker(dst).run_until_complete_async()
        runnable = ids["pending"] + ids["running"] + ids["waiting"]
        assert stats.completed == len(runnable)
        final = await _tasks_by_id(dst, runnable)
        assert {t.status for t in final.values()} == {TaskStatus.COMPLETED}
        assert Counter(t.attempts for t in final.values()) == {1: len(runnable)}
        assert await statuses(dst) == {
            "completed": BIG["completed"] + len(runnable),
            "failed": BIG["failed"],
            "cancelled": BIG["cancelled"],
        }
        copied_expired = await dst.storage.read(
            lambda c: c.execute(
                sa.select(sa.func.count())
                .select_from(results_table)
                .where(results_table.c.task_id.in_(expired))
            ).scalar_one()
        )
        assert copied_expired == 0
        kept = await dst.results.get_async(ids["completed"][-1])
        assert kept is not None and kept.result == ids["completed"][-1]
    finally:
        await dst.close_async()


def hourly(first: datetime, args: tuple[int, int]) -> Schedule:
    return Schedule(
        func=FUNC,
        func_args=args,
        schedule_type=ScheduleType.INTERVAL,
        interval=HOUR,
        next_run_at=first,
    )


async def _fired_task(svc: Services, schedule_id: str) -> str:
    tasks = await svc.queue.list_tasks_async(TaskStatus.PENDING, limit=20_000)
    mine = [t for t in tasks if t.schedule_id == schedule_id]
    return max(mine, key=lambda t: t.scheduled_for or t.created_at).id


async def _tasks_by_id(svc: Services, ids: list[str]) -> dict[str, Task]:
    out: dict[str, Task] = {}
    for task_id in ids:
        task = await svc.queue.get_task_async(task_id)
        assert task is not None
        out[task_id] = task
    return out


def _insert_serial_rows(conn: sa.Connection, task_id: str) -> None:
    now = utcnow()
    conn.execute(sa.insert(events_table).values(event_type="note", timestamp=now, level="info"))
    conn.execute(
        sa.insert(attempts_table).values(
            task_id=task_id,
            attempt=9,
            error_type="X",
            message="after the migration",
            finished_at=now,
            retryable=False,
        )
    )


# --- interrupted, resumed -------------------------------------------------------------------------

SMALL = {
    "completed": 300,
    "failed": 50,
    "cancelled": 20,
    "running": 30,
    "pending": 1500,
    "waiting": 100,
}


def start_stopping_migration(source: str, target: str, ready: Path) -> subprocess.Popen[bytes]:
    """tests/migrate_process.py: copies three batches of tasks, then waits to be killed."""
    script = str(ROOT / "tests" / "migrate_process.py")
    args = [source, target, "--stop-after", "3", "--ready", str(ready)]
    return subprocess.Popen([sys.executable, script, *args], cwd=ROOT)


class Interrupt(Exception):
    pass


async def test_copy_interrupted_after_some_batches_resumes_without_duplicates(
    source_url: str, target_url: str
) -> None:
    await seed(source_url, SMALL)
    batches = 0

    def fail_after_five(step: Progress) -> None:
        nonlocal batches
        if step.table == "omniq_tasks" and step.done:
            batches += 1
            if batches == 5:
                raise Interrupt

    with pytest.raises(Interrupt):
        await migrate_db_async(
            source_url, target_url, force=True, batch_size=100, progress=fail_after_five
        )
    partial = await rows_of(target_url)
    assert partial["omniq_tasks"] == 500
    # Until the copy finishes, the target's workers claim nothing (a task's
    # dependency edges or a schedule's fired runs may still be on their way).
    dst = await Services.open_async(target_url)
    try:
        assert await dst.queue.dequeue_many_async(100) == []
    finally:
        await dst.close_async()
    report = await migrate_db_async(source_url, target_url, batch_size=100)
    assert report.ok and report.resumed, report.summary()
    by_table = {t.table: t for t in report.tables}
    assert by_table["omniq_tasks"].written == sum(SMALL.values()) - 500
    assert by_table["omniq_tasks"].target["pending"] == SMALL["pending"] + SMALL["running"]
    assert (await rows_of(target_url))["omniq_tasks"] == sum(SMALL.values())
    again = await migrate_db_async(source_url, target_url)
    assert again.already_done and again.ok


async def test_the_targets_maintenance_changes_nothing_until_the_copy_finished(
    source_url: str, target_url: str
) -> None:
    """A worker started early on the target sweeps nothing while the copy arrives: the
    waiting tasks whose dependency edges are not copied yet stay waiting (else the
    sweep releases them, the counts differ and the target never opens)."""
    await seed(source_url, SMALL)

    def stop_before_the_edges(step: Progress) -> None:
        if step.table == "omniq_task_dependencies":
            raise Interrupt

    with pytest.raises(Interrupt):
        await migrate_db_async(source_url, target_url, force=True, progress=stop_before_the_edges)
    dst = await Services.open_async(target_url)
    try:
        assert (await statuses(dst))["waiting"] == SMALL["waiting"]
        sweeps = Maintenance(dst.storage, dst.queue, dst.results, dst.events, owner="test")
        assert await sweeps.sweep_all_async() == MaintenanceReport()
        assert await sweeps.recover_async() == MaintenanceReport()
        assert (await statuses(dst))["waiting"] == SMALL["waiting"]
    finally:
        await dst.close_async()
    report = await migrate_db_async(source_url, target_url)
    assert report.ok and report.resumed, report.summary()
    dst = await Services.open_async(target_url)
    try:  # once the copy finished, the target sweeps as usual
        sweeps = Maintenance(dst.storage, dst.queue, dst.results, dst.events, owner="test")
        await sweeps.sweep_all_async()
        assert (await statuses(dst))["waiting"] == SMALL["waiting"]
    finally:
        await dst.close_async()


async def test_an_app_opened_on_the_target_during_the_copy_declares_its_schedules_after_it(
    source_url: str, target_url: str
) -> None:
    """An app (or `omniq worker --app`) opened on the target before the copy finished
    does not declare its periodic schedules there: the source's ones of those names
    are on their way, and a new one collided with its copy (the resume failed)."""
    from tests import worker_tasks

    def app(url: str) -> AsyncOmniQ:
        oq = AsyncOmniQ("app", url=url)
        oq.periodic(interval=HOUR, name="heartbeat", args=[1, 2])(worker_tasks.add)
        return oq

    async with app(source_url) as oq:
        schedule_id = (await oq.list_schedules_async())[0].id

    def stop_before_the_schedules(step: Progress) -> None:
        if step.table == "omniq_schedules":
            raise Interrupt

    with pytest.raises(Interrupt):
        await migrate_db_async(source_url, target_url, progress=stop_before_the_schedules)
    async with app(target_url) as oq:
        assert await oq.list_schedules_async() == []
    report = await migrate_db_async(source_url, target_url)
    assert report.ok and report.resumed, report.summary()
    async with app(target_url) as oq:  # once the copy finished: the copied one, upserted
        assert [x.id for x in await oq.list_schedules_async()] == [schedule_id]


async def test_killed_between_the_targets_done_mark_and_the_sources_resumes_as_done(
    source_url: str, target_url: str
) -> None:
    """The target is marked done before the source: a run killed between the two left
    the target open, and its workers ran tasks. Run again, the migration is done (it
    does not count the target's rows against the source's again) and marks the source."""
    counts = {"completed": 0, "failed": 0, "cancelled": 0, "running": 0, "pending": 3, "waiting": 0}
    await seed(source_url, counts)
    assert (await migrate_db_async(source_url, target_url)).ok
    src = await Services.open_async(source_url)
    try:  # as if killed after the target's done mark, before the source's
        await src.storage.write(
            lambda c: c.execute(
                sa.update(migration_table)
                .where(migration_table.c.role == "source")
                .values(state="copying", finished_at=None)
            )
        )
    finally:
        await src.close_async()
    dst = await Services.open_async(target_url)
    try:
        [task] = await dst.queue.dequeue_many_async(1)
        assert await dst.queue.complete_async(task, 3)
    finally:
        await dst.close_async()
    report = await migrate_db_async(source_url, target_url)
    assert report.ok and report.already_done, report.summary()
    src = await Services.open_async(source_url)
    try:
        state = await src.storage.read(
            lambda c: c.execute(sa.select(migration_table.c.state)).scalar_one()
        )
        assert state == "done"
    finally:
        await src.close_async()


async def test_migration_process_killed_mid_copy_resumes_with_the_cli(
    source_url: str, target_url: str, tmp_path: Path
) -> None:
    await seed(source_url, SMALL)
    ready = tmp_path / "ready"
    proc = await asyncio.to_thread(start_stopping_migration, source_url, target_url, ready)

    async def stopped() -> bool:
        return await asyncio.to_thread(ready.exists)

    try:
        await wait_until(stopped, "the copy to reach its third batch of tasks", timeout=120)
    finally:
        proc.send_signal(signal.SIGKILL)
        await asyncio.to_thread(proc.wait)
    assert (await rows_of(target_url))["omniq_tasks"] in (200, 300)

    # --from: the database of --url / OMNIQ_DATABASE_URL.
    done = await asyncio.to_thread(omniq, source_url, "migrate-db", "--to", target_url)
    assert done.returncode == 0, done.stderr
    assert "resumed and finished" in done.stdout
    assert "omniq_tasks" in done.stderr and "100%" in done.stderr  # the progress bar
    target = await rows_of(target_url)
    assert target["omniq_tasks"] == sum(SMALL.values())
    dst = await Services.open_async(target_url)
    try:
        assert (await statuses(dst))["pending"] == SMALL["pending"] + SMALL["running"]
    finally:
        await dst.close_async()


# --- dry run, refusals --------------------------------------------------------------------------


async def test_dry_run_reports_and_changes_nothing(source_url: str, target_url: str) -> None:
    await seed(source_url, {**SMALL, "pending": 40})
    before = await rows_of(source_url)
    report = await migrate_db_async(source_url, target_url, dry_run=True)
    assert report.dry_run and report.ok and report.running == SMALL["running"]
    tasks_report = {t.table: t for t in report.tables}["omniq_tasks"]
    assert tasks_report.source["pending"] == 40 + SMALL["running"]
    assert tasks_report.target == {} and tasks_report.written == 0
    assert await rows_of(source_url) == before
    assert "dry run: nothing changed" in report.summary()
    if target_url.startswith("sqlite"):
        assert not await asyncio.to_thread(Path(target_url.split("///", 1)[1]).exists)
    else:
        assert await asyncio.to_thread(migrate.current, target_url) is None
    src = await Services.open_async(source_url)
    try:
        await src.queue.enqueue_async(FUNC, [1, 1])  # not flagged
    finally:
        await src.close_async()


async def test_source_at_an_older_revision_is_refused(tmp_path: Path, target_url: str) -> None:
    old = f"sqlite+aiosqlite:///{tmp_path / 'old.db'}"
    await asyncio.to_thread(migrate.upgrade, old, "0008")
    with pytest.raises(MigrationRefused, match=r"at revision 0008.*upgrade it first"):
        await migrate_db_async(old, target_url)
    assert await asyncio.to_thread(migrate.current, old) == "0008"


async def test_target_holding_other_data_is_refused(
    source_url: str, target_url: str, tmp_path: Path, sqlite_template: Path
) -> None:
    await seed(source_url, {**SMALL, "pending": 10, "completed": 5})
    await asyncio.to_thread(migrate.upgrade, target_url)
    other = await Services.open_async(target_url)
    try:
        await other.queue.enqueue_async(FUNC, [1, 1])
    finally:
        await other.close_async()
    with pytest.raises(MigrationRefused, match=r"already holds OmniQ data \(1 row"):
        await migrate_db_async(source_url, target_url, force=True)
    await unflag_async(source_url)  # the refusal came before any flag; nothing to clear
    assert (await rows_of(source_url))["omniq_db_migration"] == 0


async def test_target_of_another_migration_is_refused(
    source_url: str, target_url: str, tmp_path: Path, sqlite_template: Path
) -> None:
    second = tmp_path / "second.db"
    shutil.copyfile(sqlite_template, second)
    second_url = f"sqlite+aiosqlite:///{second}"
    await seed(source_url, {**SMALL, "pending": 10, "running": 0})
    assert (await migrate_db_async(source_url, target_url)).ok
    with pytest.raises(MigrationRefused, match="already received migration"):
        await migrate_db_async(second_url, target_url)
    with pytest.raises(MigrationRefused, match="already holds OmniQ data"):
        await migrate_db_async(second_url, source_url)


# --- the flag ----------------------------------------------------------------------------------


async def test_claims_stop_on_the_flagged_source_until_running_tasks_end_or_are_released(
    source_url: str, target_url: str
) -> None:
    counts = {"completed": 0, "failed": 0, "cancelled": 0, "running": 3, "pending": 5, "waiting": 0}
    await seed(source_url, counts)
    with pytest.raises(MigrationRefused, match=r"3 task\(s\) still run on the source.*--force"):
        await migrate_db_async(source_url, target_url, wait=0.3)
    src = await Services.open_async(source_url)
    try:
        # Flagged: a worker on the source claims nothing, the running tasks stay as they are.
        assert await src.queue.dequeue_many_async(10) == []
        stats = await burst_worker(src).run_until_complete_async()
        assert stats.completed == 0
        assert (await statuses(src))["pending"] == 5
        # Nor does its maintenance change anything (here: a pending task past its TTL).
        await src.storage.write(
            lambda c: c.execute(
                sa.update(tasks_table)
                .where(tasks_table.c.status == "pending")
                .values(expires_at=utcnow() - HOUR)
            )
        )
        sweeps = Maintenance(src.storage, src.queue, src.results, src.events, owner="test")
        assert await sweeps.sweep_all_async() == MaintenanceReport()
        assert await sweeps.recover_async() == MaintenanceReport()
        assert (await statuses(src))["pending"] == 5
        # One running task ends while the migration waits; then --force releases the others.
        running = await src.queue.list_tasks_async(TaskStatus.RUNNING)
        assert await src.queue.complete_async(running[0], 2)
    finally:
        await src.close_async()
    report = await migrate_db_async(source_url, target_url, force=True)
    assert report.ok and report.released == 2 and report.resumed
    tasks_report = {t.table: t for t in report.tables}["omniq_tasks"]
    assert tasks_report.target == {"pending": 7, "completed": 1}
    src = await Services.open_async(source_url)
    try:
        released = await src.queue.list_tasks_async(TaskStatus.PENDING)
        assert len(released) == 7 and all(t.attempts == 0 for t in released)
    finally:
        await src.close_async()


async def test_migration_waits_for_running_tasks_to_end(source_url: str, target_url: str) -> None:
    counts = {"completed": 0, "failed": 0, "cancelled": 0, "running": 2, "pending": 1, "waiting": 0}
    await seed(source_url, counts)
    src = await Services.open_async(source_url)
    try:
        running = await src.queue.list_tasks_async(TaskStatus.RUNNING)
        migration = asyncio.ensure_future(migrate_db_async(source_url, target_url, wait=60))

        async def flagged() -> bool:
            return bool((await rows_of(source_url))["omniq_db_migration"])

        await wait_until(flagged, "the source to be flagged")
        assert not migration.done()
        for task in running:  # the tasks end while the migration waits
            assert await src.queue.complete_async(task, 1)
        report = await migration
    finally:
        await src.close_async()
    assert report.ok and report.released == 0
    assert {t.table: t for t in report.tables}["omniq_tasks"].target == {
        "completed": 2,
        "pending": 1,
    }


async def test_enqueue_on_the_flagged_source_raises_and_unflag_restores_it(
    source_url: str, target_url: str
) -> None:
    counts = {"completed": 1, "failed": 0, "cancelled": 0, "running": 0, "pending": 2, "waiting": 0}
    await seed(source_url, counts)
    if target_url.startswith("postgresql"):  # the local server trusts: any password goes
        target_url = sa.make_url(target_url).set(password="s3cret").render_as_string(False)
    report = await migrate_db_async(source_url, target_url)
    assert report.ok
    assert "s3cret" not in report.target
    src = await Services.open_async(source_url)
    try:
        with pytest.raises(DatabaseMigrated, match="was migrated to") as raised:
            await src.queue.enqueue_async(FUNC, [1, 2])
        assert raised.value.target == report.target
        assert "s3cret" not in str(raised.value)
        with pytest.raises(DatabaseMigrated):
            await src.queue.enqueue_many_async([src.queue.build_task(FUNC, [1, 2])])
        with pytest.raises(DatabaseMigrated):
            await src.queue.enqueue_async(FUNC, [1, 2], unique_key="k")
        # The source is read-only: what an operator would change there is refused too,
        # and nothing changes.
        pending = [x.id for x in await src.queue.list_tasks_async([TaskStatus.PENDING])]
        assert len(pending) == 2
        for change in (
            lambda: src.queue.cancel_async(pending[0]),
            lambda: src.queue.requeue_async(pending[0]),
            lambda: src.queue.update_task_async(pending[0], priority=5),
            lambda: src.queue.delete_task_async(pending[0]),
            lambda: src.queue.clear_async(),
            lambda: src.queue.schedule_async(hourly(utcnow() + HOUR, (1, 2))),
        ):
            with pytest.raises(DatabaseMigrated):
                await change()
        assert await statuses(src) == Counter({"pending": 2, "completed": 1})
        assert await src.queue.list_schedules_async() == []
    finally:
        await src.close_async()

    refused = await asyncio.to_thread(omniq, source_url, "enqueue", FUNC, "--args", "[1, 2]")
    assert refused.returncode == 1
    assert "DatabaseMigrated" in refused.stderr and "--unflag" in refused.stderr
    unflagged = await asyncio.to_thread(omniq, source_url, "migrate-db", "--unflag")
    assert unflagged.returncode == 0, unflagged.stderr
    assert "flag cleared" in unflagged.stdout
    assert not await unflag_async(source_url)  # already clear
    src = await Services.open_async(source_url)
    try:
        await src.queue.enqueue_async(FUNC, [1, 2])
        assert len(await src.queue.dequeue_many_async(10)) == 3
    finally:
        await src.close_async()


async def test_queue_limits_and_pauses_on_the_flagged_source_are_refused(
    source_url: str, target_url: str
) -> None:
    """Flow control is an operator's write too: on the read-only source, setting or
    clearing a queue's limits and pausing or resuming a queue raise DatabaseMigrated
    and change nothing (they would be lost: the target holds the copy)."""
    counts = {"completed": 0, "failed": 0, "cancelled": 0, "running": 0, "pending": 1, "waiting": 0}
    await seed(source_url, counts)
    src = await Services.open_async(source_url)
    try:
        await src.queue.set_queue_limit_async("limited", concurrency=2)
        await src.queue.pause_queue_async("paused")
    finally:
        await src.close_async()
    assert (await migrate_db_async(source_url, target_url)).ok
    src = await Services.open_async(source_url)
    try:
        before = await src.queue.list_queue_limits_async()
        for change in (
            lambda: src.queue.set_queue_limit_async("limited", concurrency=5),
            lambda: src.queue.set_queue_limit_async("other", concurrency=1),
            lambda: src.queue.clear_queue_limit_async("limited"),
            lambda: src.queue.pause_queue_async("default"),
            lambda: src.queue.resume_queue_async("paused"),
        ):
            with pytest.raises(DatabaseMigrated):
                await change()
        assert await src.queue.list_queue_limits_async() == before
    finally:
        await src.close_async()


def test_the_source_itself_is_refused_as_target(source_url: str) -> None:
    relative = "sqlite+aiosqlite:///" + os.path.relpath(source_url.split("///", 1)[1])
    with pytest.raises(ValidationError, match="is the source database itself"):
        migrate_db(source_url, relative)  # the blocking twin
    with pytest.raises(ValidationError, match="batch_size"):
        migrate_db(source_url, source_url + "x", batch_size=0)


async def test_a_target_at_an_older_revision_is_upgraded_and_the_cli_dry_run_prints_json(
    source_url: str, target_url: str
) -> None:
    counts = {"completed": 2, "failed": 0, "cancelled": 0, "running": 0, "pending": 3, "waiting": 1}
    await seed(source_url, counts)
    await asyncio.to_thread(migrate.upgrade, target_url, "0008")
    dry = await asyncio.to_thread(
        omniq, source_url, "migrate-db", "--to", target_url, "--dry-run", "--json"
    )
    assert dry.returncode == 0, dry.stderr
    data = json.loads(dry.stdout)
    assert data["dry_run"] is True and data["target_revision"] == "0008"
    tables = {t["table"]: t for t in data["tables"]}
    assert tables["omniq_tasks"]["source"] == {"completed": 2, "pending": 3, "waiting": 1}
    assert await asyncio.to_thread(migrate.current, target_url) == "0008"
    report = await migrate_db_async(source_url, target_url)
    assert report.ok and report.target_revision == "0008"
    assert await asyncio.to_thread(migrate.current, target_url) == migrate.head()


def test_an_unreachable_target_is_named(source_url: str) -> None:
    with pytest.raises(MigrationRefused, match=r"cannot open the target database .*:9/nowhere"):
        migrate_db(source_url, "postgresql+asyncpg://nobody:pw@127.0.0.1:9/nowhere")
    assert rows_count_of_marker(source_url) == 0  # nothing was flagged


def rows_count_of_marker(url: str) -> int:
    import sqlite3
    from contextlib import closing

    with closing(sqlite3.connect(url.split("///", 1)[1])) as conn:
        return int(conn.execute("SELECT count(*) FROM omniq_db_migration").fetchone()[0])


@pytest.fixture
def postgres_source(postgres_databases: PostgresDatabases | None) -> str:
    """A migrated, empty PostgreSQL database."""
    return require_postgres(postgres_databases).create(migrated=True)


async def test_a_postgresql_source_waits_for_transactions_older_than_its_flag(
    tmp_path: Path, postgres_source: str
) -> None:
    """A claim that began before the flag committed did not see it: until every such
    transaction ended, the copy does not start (here one stays open, then ends)."""
    source = postgres_source
    target = f"sqlite+aiosqlite:///{tmp_path / 'target.db'}"
    src = await Services.open_async(source)
    try:
        ids = await _enqueue(src, "default", 3)
    finally:
        await src.close_async()
    holder = create_async_engine(source)
    try:
        async with holder.connect() as conn:
            await conn.execute(sa.text("SELECT 1"))  # a transaction begins, and stays open
            with pytest.raises(MigrationRefused, match="began before the source was flagged"):
                await migrate_db_async(source, target, wait=0.5)
            await conn.rollback()
        report = await migrate_db_async(source, target, wait=5)
    finally:
        await holder.dispose()
    assert report.ok and report.resumed, report.summary()
    dst = await Services.open_async(target)
    try:
        claimed = await dst.queue.dequeue_many_async(10)
        assert sorted(x.id for x in claimed) == sorted(ids)
    finally:
        await dst.close_async()
