"""Faults: a SQLite write lock held by another process, hand-written bad rows, a full
database, and PostgreSQL connections killed under a running worker.

Faults are injected on purpose (a raw ``sqlite3`` connection holding ``BEGIN
IMMEDIATE`` and released by a timer, raw SQL updates, ``PRAGMA max_page_count``,
``pg_terminate_backend``); the tests then wait on conditions with deadlines.
"""

from __future__ import annotations

import contextlib
import shutil
import sqlite3
import threading
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path

import anyio
import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from omniq._time import utcnow
from omniq.db.engine import create_engine
from omniq.errors import DatabaseBusy, DatabaseError, StorageFull
from omniq.models import EventType, ResultStatus, Schedule, ScheduleStatus, Settings, TaskStatus
from omniq.services import Services
from omniq.services.maintenance import Maintenance
from omniq.services.scheduler import Scheduler
from tests.conftest import PostgresDatabases, require_postgres
from tests.hardening import (
    count_tasks,
    drain,
    execute,
    fetch,
    make_worker,
    ref,
    wait_until,
)
from tests.hardening.tasks import read_lines

pytestmark = pytest.mark.anyio

FAST_LOCK = Settings(busy_timeout=timedelta(milliseconds=50))


@pytest.fixture
def sqlite_path(tmp_path: Path, sqlite_template: Path) -> Path:
    """A migrated SQLite file of this test's own."""
    path = tmp_path / "omniq.db"
    shutil.copyfile(sqlite_template, path)
    path.chmod(0o600)
    return path


def sqlite_url(path: Path) -> str:
    return f"sqlite+aiosqlite:///{path}"


@pytest.fixture
async def services(sqlite_path: Path) -> AsyncIterator[list[Services]]:
    """A list that tests append opened Services to; all closed at the end."""
    opened: list[Services] = []
    try:
        yield opened
    finally:
        for svc in opened:
            await svc.close_async()


async def open_on(opened: list[Services], url: str, settings: Settings | None = None) -> Services:
    svc = await Services.open_async(url, settings)
    opened.append(svc)
    return svc


class HeldLock:
    """Another "process" holding the SQLite write lock: a raw connection in BEGIN IMMEDIATE."""

    def __init__(self, path: Path) -> None:
        self._conn = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._conn.execute("BEGIN IMMEDIATE")
        self._guard = threading.Lock()
        self._timer: threading.Timer | None = None
        self.released = threading.Event()

    def release(self) -> None:
        """Roll back and close (idempotent, thread-safe)."""
        with self._guard:
            if self.released.is_set():
                return
            self._conn.execute("ROLLBACK")
            self._conn.close()
            self.released.set()

    def release_after(self, seconds: float) -> None:
        """Release from a timer thread after ``seconds``."""
        self._timer = threading.Timer(seconds, self.release)
        self._timer.start()

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self.release()


async def hold_lock(path: Path) -> HeldLock:
    """Take the write lock from a thread: a worker's transaction on this loop may hold it."""
    return await anyio.to_thread.run_sync(HeldLock, path)


# --- a SQLite write lock held elsewhere -------------------------------------------------------


async def test_enqueue_waits_out_a_lock_held_past_busy_timeout(
    sqlite_path: Path, services: list[Services]
) -> None:
    url = sqlite_url(sqlite_path)
    svc = await open_on(services, url, FAST_LOCK)
    lock = await hold_lock(sqlite_path)
    try:
        lock.release_after(1.0)
        # Readers are not blocked by the writer.
        assert await svc.queue.list_tasks_async() == []
        task_id = await svc.queue.enqueue_async(ref("noop"), [1])
        assert lock.released.is_set(), "the enqueue cannot have committed under the lock"
        lock2 = await hold_lock(sqlite_path)
        try:
            lock2.release_after(0.5)
            ids = await svc.queue.enqueue_many_async(
                [svc.queue.build_task(ref("noop"), [i]) for i in range(3)]
            )
            assert lock2.released.is_set()
        finally:
            lock2.close()
    finally:
        lock.close()
    assert {t.id for t in await svc.queue.list_tasks_async()} == {task_id, *ids}


async def test_running_worker_rides_out_a_held_lock(
    sqlite_path: Path, services: list[Services], tmp_path: Path
) -> None:
    url = sqlite_url(sqlite_path)
    svc = await open_on(services, url, FAST_LOCK)
    producer = await open_on(services, url, FAST_LOCK)
    out = tmp_path / "out"
    first = await svc.queue.enqueue_many_async(
        # 60 tasks of 0.2 s on 4 slots take 3 s: the lock is surely taken before they end.
        [svc.queue.build_task(ref("record_async"), [str(out), f"a{i}", 0.2]) for i in range(60)]
    )
    worker = make_worker(svc, concurrency=4)
    await worker.start_async()
    try:

        async def started() -> bool:
            return len(read_lines(out)) >= 4

        await wait_until(started, "the worker to be busy")
        lock = await hold_lock(sqlite_path)
        try:
            lock.release_after(1.0)
            # Nothing commits under the lock: the worker meets it with work in hand.
            counts = await producer.queue.stats_async()
            assert counts["default"].get("completed", 0) < len(first)
            late = await producer.queue.enqueue_async(ref("record_async"), [str(out), "late"])
            assert lock.released.is_set()
        finally:
            lock.close()

        async def all_done() -> bool:
            stats = await producer.queue.stats_async()
            return stats.get("default", {}).get("completed", 0) == len(first) + 1

        await wait_until(all_done, "every task to complete after the lock")
        # The worker is still alive: it picks up new work.
        after = await producer.queue.enqueue_async(ref("record_async"), [str(out), "after"])

        async def after_done() -> bool:
            task = await producer.queue.get_task_async(after)
            return task is not None and task.status is TaskStatus.COMPLETED

        await wait_until(after_done, "a task enqueued after the lock to complete")
    finally:
        with anyio.fail_after(30):
            await worker.stop_async()
    stats = worker.get_stats()
    assert stats.completed == len(first) + 2 and stats.failed == 0 and stats.lost == 0
    assert sorted(read_lines(out)) == sorted([f"a{i}" for i in range(60)] + ["late", "after"])
    assert late in {t.id for t in await producer.queue.list_tasks_async(limit=1000)}
    errors = await producer.events.get_events_async(event_type=EventType.ERROR)
    assert errors == [], [(e.message, e.error) for e in errors]


async def test_lock_deadline_raises_database_busy_and_writes_nothing(
    sqlite_path: Path, services: list[Services]
) -> None:
    url = sqlite_url(sqlite_path)
    settings = Settings(
        busy_timeout=timedelta(milliseconds=50), lock_deadline=timedelta(milliseconds=300)
    )
    svc = await open_on(services, url, settings)
    lock = await hold_lock(sqlite_path)
    try:
        with anyio.fail_after(10), pytest.raises(DatabaseBusy, match="locked") as caught:
            await svc.queue.enqueue_async(ref("noop"), [1])
        assert isinstance(caught.value, DatabaseError)
        with anyio.fail_after(10), pytest.raises(DatabaseBusy):
            await svc.queue.enqueue_many_async(
                [svc.queue.build_task(ref("noop"), [i]) for i in range(3)]
            )
        with anyio.fail_after(10), pytest.raises(DatabaseBusy):
            await svc.queue.schedule_async(
                Schedule(func=ref("noop"), schedule_type="interval", interval=timedelta(seconds=5))
            )
    finally:
        lock.close()
    assert await count_tasks(url) == 0
    assert await fetch(url, "SELECT id FROM omniq_events") == []
    # Once the lock is gone, the same Services write again.
    await svc.queue.enqueue_async(ref("noop"), [1])
    assert await count_tasks(url) == 1


# --- hand-written bad rows ------------------------------------------------------------------


async def test_unknown_status_is_quarantined_by_maintenance(db_url: str, tmp_path: Path) -> None:
    svc = await Services.open_async(db_url)
    try:
        out = tmp_path / "out"
        good = await svc.queue.enqueue_async(ref("record"), [str(out), "good"])
        bad = await svc.queue.enqueue_async(ref("record"), [str(out), "bad"])
        await execute(db_url, "UPDATE omniq_tasks SET status = 'bogus' WHERE id = :id", {"id": bad})

        assert (await drain(svc)).completed == 1  # the bogus row is not claimed
        assert read_lines(out) == ["good"]

        maintenance = Maintenance(svc.storage, svc.queue, svc.results, svc.events, owner="test")
        report = await maintenance.run_once_async()
        assert report is not None and report.quarantined == 1
        task = await svc.queue.get_task_async(bad)
        assert task is not None and task.status is TaskStatus.FAILED
        assert "bogus" in (task.last_error or "")
        (failed,) = await svc.events.get_events_async(bad, EventType.FAILED)
        assert "unknown status 'bogus'" in (failed.message or "")
        assert (await svc.queue.get_task_async(good)).status is TaskStatus.COMPLETED  # type: ignore[union-attr]
        report = await maintenance.run_once_async()
        assert report is not None and report.quarantined == 0
    finally:
        await svc.close_async()


def _bad_tags(db_url: str) -> str:
    # PostgreSQL's json column cannot hold invalid JSON: store a JSON number instead.
    return "{not json" if db_url.startswith("sqlite") else "5"


@pytest.mark.parametrize(
    ("column", "what"),
    [
        ("tags", "malformed tags"),
        ("payload", "payload that is not JSON"),
        ("payload_shape", "payload that is JSON but not an object"),
        ("timeout", "duration out of range"),
    ],
)
async def test_worker_fails_an_unreadable_row_and_runs_the_rest(
    db_url: str, tmp_path: Path, column: str, what: str
) -> None:
    svc = await Services.open_async(db_url)
    try:
        out = tmp_path / "out"
        ids = await svc.queue.enqueue_many_async(
            [svc.queue.build_task(ref("record"), [str(out), f"t{i}"]) for i in range(6)]
        )
        bad = ids[2]
        statement = {
            "tags": f"UPDATE omniq_tasks SET tags = '{_bad_tags(db_url)}' WHERE id = :id",
            "payload": "UPDATE omniq_tasks SET payload = 'not json {' WHERE id = :id",
            "payload_shape": "UPDATE omniq_tasks SET payload = '[1, 2]' WHERE id = :id",
            "timeout": "UPDATE omniq_tasks SET timeout = 1e300 WHERE id = :id",
        }[column]
        assert await execute(db_url, statement, {"id": bad}) == 1

        stats = await drain(svc)
        others = [x for x in ids if x != bad]
        for task_id in others:
            task = await svc.queue.get_task_async(task_id)
            assert task is not None and task.status is TaskStatus.COMPLETED, (what, task)
        lines = sorted(read_lines(out))
        if column == "timeout":
            # A huge stored duration is read as the largest one: the task just runs.
            assert stats.completed == 6 and lines == [f"t{i}" for i in range(6)]
            return
        assert stats.completed == 5, (what, stats)
        assert lines == [f"t{i}" for i in range(6) if i != 2]
        rows = await fetch(
            db_url, "SELECT status, last_error FROM omniq_tasks WHERE id = :id", {"id": bad}
        )
        assert rows[0][0] == "failed", (what, rows)
        events = await svc.events.get_events_async(bad, EventType.FAILED)
        assert len(events) == 1, (what, events)
        result = await svc.results.get_async(bad)
        assert result is not None and result.status is ResultStatus.ERROR
        if column == "tags":
            assert result.error_type == "InvalidRow"
            assert "quarantined" in (events[0].message or "")
            assert "tags" in (result.error or "")
        else:
            assert result.error_type == "SerializationError"
            assert "payload" in (result.error or "")
    finally:
        await svc.close_async()


async def test_schedule_that_cannot_make_its_task_does_not_stop_the_others(db_url: str) -> None:
    svc = await Services.open_async(db_url)
    try:
        due = utcnow() - timedelta(seconds=5)

        def every_minute(arg: int) -> Schedule:
            return Schedule(
                func=ref("noop"),
                func_args=[arg],
                schedule_type="interval",
                interval=timedelta(minutes=1),
                run_at=due,
            )

        bad = await svc.queue.schedule_async(every_minute(1))
        good = await svc.queue.schedule_async(every_minute(2))
        # A hand-edited template (the API refuses such options when a schedule is made).
        await execute(
            db_url,
            "UPDATE omniq_schedules SET task_options = :options WHERE id = :id",
            {"options": '{"timeout": -1}', "id": bad},
        )
        scheduler = Scheduler(svc.storage, svc.queue)
        assert await scheduler.fire_due_async() == 1
        (task,) = await svc.queue.list_tasks_async()
        assert task.schedule_id == good
        # Quarantined: paused with an event naming why, its run not spent; it does
        # not fail every later pass.
        (paused,) = await svc.events.get_events_async(
            schedule_id=bad, event_type=EventType.SCHEDULE_PAUSED
        )
        assert "timeout" in (paused.error or "")
        assert await scheduler.fire_due_async() == 0
        schedule = await svc.queue.get_schedule_async(bad)
        assert schedule is not None and schedule.status is ScheduleStatus.PAUSED
        assert schedule.run_count == 0
    finally:
        await svc.close_async()


# --- a full database --------------------------------------------------------------------------


async def test_full_database_raises_storage_full_and_keeps_committed_tasks(
    sqlite_path: Path, tmp_path: Path
) -> None:
    url = sqlite_url(sqlite_path)
    out = tmp_path / "out"
    svc = await Services.open_async(url)
    try:
        before = await svc.queue.enqueue_many_async(
            [svc.queue.build_task(ref("record"), [str(out), f"b{i}"]) for i in range(20)]
        )
    finally:
        await svc.close_async()
    with sqlite3.connect(sqlite_path) as raw:
        pages = raw.execute("PRAGMA page_count").fetchone()[0]

    # The size limit applies to every connection, the writer thread's included.
    svc = await Services.open_async(url, Settings(sqlite_max_page_count=pages + 4))
    try:
        big = "x" * 200_000
        with pytest.raises(StorageFull, match="full"):
            await svc.queue.enqueue_many_async(
                [svc.queue.build_task(ref("noop"), [big]) for _ in range(10)]
            )
        with pytest.raises(StorageFull):
            await svc.queue.enqueue_async(ref("noop"), [big * 2])
        # What was committed before is all there, intact; nothing of the failed writes.
        kept = await svc.queue.list_tasks_async(limit=1000)
        assert sorted(t.id for t in kept) == sorted(before)
        assert sorted(t.func_args[1] for t in kept) == sorted(f"b{i}" for i in range(20))
    finally:
        await svc.close_async()
    with sqlite3.connect(sqlite_path) as raw:
        assert raw.execute("PRAGMA integrity_check").fetchone()[0] == "ok"

    # Without the limit, the same database takes new work and a worker drains it.
    svc = await Services.open_async(url)
    try:
        after = await svc.queue.enqueue_async(ref("record"), [str(out), "after"])
        assert (await drain(svc)).completed == 21
        assert (await svc.queue.get_task_async(after)).status is TaskStatus.COMPLETED  # type: ignore[union-attr]
        assert sorted(read_lines(out)) == sorted([f"b{i}" for i in range(20)] + ["after"])
    finally:
        await svc.close_async()


async def test_opening_a_new_database_on_a_full_disk_raises_storage_full(
    tmp_path: Path,
) -> None:
    # Creating the schema needs pages the limit does not allow: before, the open
    # raised SQLAlchemy's raw OperationalError.
    url = sqlite_url(tmp_path / "new.db")
    with pytest.raises(StorageFull, match="open the database"):
        await Services.open_async(url, Settings(sqlite_max_page_count=3))
    svc = await Services.open_async(url)  # with room, it opens
    await svc.close_async()


async def test_a_full_database_fails_a_schedule_fire_without_pausing_the_schedule(
    sqlite_path: Path,
) -> None:
    # SQLite rolls the whole transaction back when a statement meets a full
    # file, so the savepoint around one schedule's fire cannot be rolled back
    # either: that is the database failing, not the schedule being unreadable.
    url = sqlite_url(sqlite_path)
    svc = await Services.open_async(url)
    try:
        schedule_id = await svc.queue.schedule_async(
            Schedule(
                func=ref("noop"),
                schedule_type="interval",
                interval=timedelta(minutes=1),
                run_at=utcnow() - timedelta(seconds=5),
            )
        )
    finally:
        await svc.close_async()
    with sqlite3.connect(sqlite_path) as raw:
        pages = raw.execute("PRAGMA page_count").fetchone()[0]
        raw.execute("CREATE TABLE filler (b BLOB)")
    limit = pages + 30
    svc = await Services.open_async(url, Settings(sqlite_max_page_count=limit))
    try:
        # Fill the file to its very last byte: tasks of a queue nobody serves (their
        # table's and indexes' pages), then small rows of a table of our own.
        async def park_until_full() -> None:
            for _ in range(10_000):
                await svc.queue.enqueue_async(ref("noop"), queue_name="parked", tags=["x" * 500])

        with pytest.raises(StorageFull):
            await park_until_full()
        with sqlite3.connect(sqlite_path) as raw:
            raw.execute(f"PRAGMA max_page_count = {limit}")
            for size in (4000, 500, 50, 5):
                with contextlib.suppress(sqlite3.OperationalError):
                    while True:
                        raw.execute("INSERT INTO filler VALUES (randomblob(?))", (size,))
                        raw.commit()
                raw.rollback()
        scheduler = Scheduler(svc.storage, svc.queue)
        with pytest.raises(StorageFull):
            await scheduler.fire_due_async()
        schedule = await svc.queue.get_schedule_async(schedule_id)
        assert schedule is not None
        assert (schedule.status.value, schedule.run_count) == ("active", 0)
        assert await svc.events.get_events_async(event_type=EventType.SCHEDULE_PAUSED) == []
        with sqlite3.connect(sqlite_path) as raw:
            raw.execute("DELETE FROM filler")
            raw.execute("DELETE FROM omniq_tasks WHERE queue_name = 'parked'")
        # Space is back: the same schedule fires.
        assert await scheduler.fire_due_async() == 1
        schedule = await svc.queue.get_schedule_async(schedule_id)
        assert schedule is not None and schedule.run_count == 1
    finally:
        await svc.close_async()


# --- PostgreSQL connections killed mid-run -----------------------------------------------------


@pytest.fixture
def pg_url(postgres_databases: PostgresDatabases | None) -> str:
    """A migrated PostgreSQL database of this test's own."""
    return require_postgres(postgres_databases).create(migrated=True)


async def _terminate_others(admin: AsyncEngine) -> int:
    async with admin.connect() as conn:
        rows = await conn.execute(
            sa.text(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE datname = current_database() AND pid <> pg_backend_pid()"
            )
        )
        return sum(1 for (ok,) in rows.all() if ok)


async def test_worker_survives_killed_postgres_connections(pg_url: str, tmp_path: Path) -> None:
    out = tmp_path / "out"
    total = 200
    settings = Settings(
        lease_duration=timedelta(seconds=2), heartbeat_interval=timedelta(milliseconds=300)
    )
    svc = await Services.open_async(pg_url, settings)
    admin = create_engine(pg_url, isolation_level="AUTOCOMMIT")
    worker = make_worker(svc, concurrency=8, run_maintenance=True, maintenance_interval=0.5)
    try:
        await svc.queue.enqueue_many_async(
            [
                svc.queue.build_task(
                    ref("record_async"),
                    [str(out), str(i), 0.01],
                    max_retries=10,
                    retry_delay=0.05,
                )
                for i in range(total)
            ]
        )
        await worker.start_async()
        kills = 0
        for round_ in range(4):
            target = (round_ + 1) * total // 6

            async def progressed(target: int = target) -> bool:
                return len(set(read_lines(out))) >= target

            await wait_until(progressed, f"{target} tasks to have run")
            kills += await _terminate_others(admin)
        assert kills >= 4

        async def finished() -> bool:
            rows = await fetch(pg_url, "SELECT status, count(*) FROM omniq_tasks GROUP BY status")
            return dict(rows) == {"completed": total}

        await wait_until(finished, "every task to complete", timeout=120)
    finally:
        with anyio.fail_after(60):
            await worker.stop_async()
        await svc.close_async()
        await admin.dispose()
    ran = read_lines(out)
    assert set(ran) == {str(i) for i in range(total)}
    results = await fetch(pg_url, "SELECT status, count(*) FROM omniq_results GROUP BY status")
    assert dict(results) == {"success": total}
