"""Engines: SQLite file safety, PRAGMAs, BEGIN IMMEDIATE, URL checks, claim query plans."""

from __future__ import annotations

import asyncio
import sqlite3
import stat
import threading
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from unittest import mock

import anyio
import pytest
import sqlalchemy as sa
from sqlalchemy.dialects import sqlite as sqlite_dialect
from sqlalchemy.ext.asyncio import AsyncEngine

from omniq._time import new_id
from omniq.db import driver_query, migrate
from omniq.db.driver_exec import run_on_driver
from omniq.db.engine import (
    create_engine,
    default_sqlite_url,
    dialect_of,
    normalize_url,
    read_engine,
    sqlite_path,
    sqlite_writer_engine,
)
from omniq.db.schema import tasks as t
from omniq.errors import ConfigurationError, DatabaseBusy
from omniq.models import Settings, Task, TaskStatus
from omniq.repositories import TaskRepository
from omniq.services import Storage

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture
def sqlite_url(tmp_path: Path, sqlite_template: Path) -> str:
    """A migrated SQLite file of this test's own."""
    path = tmp_path / "omniq.db"
    path.write_bytes(sqlite_template.read_bytes())
    path.chmod(0o600)
    return f"sqlite+aiosqlite:///{path}"


@pytest.fixture
async def sqlite_engine(sqlite_url: str) -> AsyncIterator[AsyncEngine]:
    engine = create_engine(sqlite_url)
    try:
        yield engine
    finally:
        await engine.dispose()


async def pragma(engine: AsyncEngine, name: str) -> object:
    async with engine.connect() as conn:
        return (await conn.exec_driver_sql(f"PRAGMA {name}")).scalar_one()


def writer_pragmas(url: str, settings: Settings | None = None) -> dict[str, object]:
    """The PRAGMAs of a connection of the writer thread's engine (pysqlite)."""
    engine = sqlite_writer_engine(normalize_url(url), settings or Settings())
    try:
        with engine.connect() as conn:
            return {
                name: conn.exec_driver_sql(f"PRAGMA {name}").scalar_one()
                for name in ("journal_mode", "foreign_keys", "synchronous", "busy_timeout")
            }
    finally:
        engine.dispose()


# --- the database file ---------------------------------------------------------------------


@pytest.mark.anyio
async def test_sqlite_file_created_0600_in_new_directory_0700(tmp_path: Path) -> None:
    directory = tmp_path / "fresh"
    path = directory / "omniq.db"
    engine = create_engine(f"sqlite+aiosqlite:///{path}")
    try:
        assert directory.is_dir()
        assert mode(directory) == 0o700
        assert path.is_file()
        assert mode(path) == 0o600
        async with engine.connect() as conn:
            await conn.exec_driver_sql("CREATE TABLE probe (x INTEGER)")
            await conn.exec_driver_sql("INSERT INTO probe VALUES (1)")
            await conn.commit()
            # SQLite gives its side files the database file's permissions. (Checked
            # while a connection is open: closing the last one removes the WAL.)
            wal = path.with_name(path.name + "-wal")
            assert wal.exists()
            assert mode(wal) == 0o600
        assert mode(path) == 0o600
    finally:
        await engine.dispose()


@pytest.mark.anyio
async def test_existing_file_and_directory_are_kept(tmp_path: Path) -> None:
    path = tmp_path / "existing.db"
    sqlite3.connect(path).close()
    path.chmod(0o640)
    engine = create_engine(f"sqlite+aiosqlite:///{path}")
    try:
        assert mode(path) == 0o640  # not ours to change; only warned about when world-writable
        assert await pragma(engine, "journal_mode") == "wal"
    finally:
        await engine.dispose()


def test_create_engine_bad_url_creates_nothing(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError):
        create_engine(f"sqlite+pysqlite:///{tmp_path / 'sub' / 'x.db'}")
    assert list(tmp_path.iterdir()) == []


# --- PRAGMAs ----------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_sqlite_pragmas_default(sqlite_engine: AsyncEngine) -> None:
    assert await pragma(sqlite_engine, "journal_mode") == "wal"
    assert await pragma(sqlite_engine, "foreign_keys") == 1
    assert await pragma(sqlite_engine, "synchronous") == 1  # NORMAL
    assert await pragma(sqlite_engine, "busy_timeout") == 30_000


def test_sqlite_writer_pragmas_default(sqlite_url: str) -> None:
    assert writer_pragmas(sqlite_url) == {
        "journal_mode": "wal",
        "foreign_keys": 1,
        "synchronous": 1,  # NORMAL
        "busy_timeout": 30_000,
    }


@pytest.mark.anyio
async def test_sqlite_pragmas_from_settings(sqlite_url: str) -> None:
    settings = Settings(sqlite_synchronous="FULL", busy_timeout=timedelta(seconds=2.5))
    engine = create_engine(sqlite_url, settings)
    try:
        assert await pragma(engine, "synchronous") == 2  # FULL
        assert await pragma(engine, "busy_timeout") == 2_500
        assert await pragma(engine, "foreign_keys") == 1
        assert await pragma(engine, "journal_mode") == "wal"
    finally:
        await engine.dispose()
    # The writer thread's connections (where every write of a process runs) too.
    assert writer_pragmas(sqlite_url, settings) == {
        "journal_mode": "wal",
        "foreign_keys": 1,
        "synchronous": 2,  # FULL
        "busy_timeout": 2_500,
    }


@pytest.mark.anyio
async def test_pragmas_hold_on_every_pooled_connection(sqlite_engine: AsyncEngine) -> None:
    # Read connections (deferred BEGIN): several can be open at once.
    conns = [await read_engine(sqlite_engine).connect() for _ in range(3)]
    try:
        for conn in conns:
            assert (await conn.exec_driver_sql("PRAGMA foreign_keys")).scalar_one() == 1
            assert (await conn.exec_driver_sql("PRAGMA busy_timeout")).scalar_one() == 30_000
    finally:
        for conn in conns:
            await conn.close()


# --- transactions: BEGIN IMMEDIATE -------------------------------------------------------------
#
# Every write transaction of a process runs as ``Storage.write(body)``: on SQLite,
# on that Storage's writer thread (omniq.db.writer), over a pysqlite connection
# of its own. Several Storages on one file stand for several processes.


async def _insert(engine: AsyncEngine, *tasks: Task) -> None:
    async with engine.begin() as conn:
        await conn.run_sync(TaskRepository(dialect_of(engine)).insert_many, tasks)


def _count_tasks(conn: sa.Connection) -> int:
    return int(conn.execute(sa.select(sa.func.count()).select_from(t)).scalar_one())


@asynccontextmanager
async def _open_storages(url: str, *settings: Settings) -> AsyncIterator[list[Storage]]:
    """One opened Storage (writer thread, engine) per ``settings``; all closed at the end."""
    storages: list[Storage] = []
    try:
        for each in settings:
            storage = Storage.from_url(url, each)
            storages.append(storage)
            await storage.open()
        yield storages
    finally:
        for storage in storages:
            await storage.close()


async def _until_began(write: asyncio.Future[Any], began: asyncio.Event) -> None:
    """Wait until the body of ``write`` signalled ``began`` (raise if the write failed first)."""
    signalled: asyncio.Future[Any] = asyncio.ensure_future(began.wait())
    try:
        with anyio.fail_after(10):
            await asyncio.wait([write, signalled], return_when=asyncio.FIRST_COMPLETED)
    finally:
        signalled.cancel()
    if not began.is_set():
        write.result()  # it ended before its body began: report why
        raise AssertionError("the write ended without running its body")


@asynccontextmanager
async def _holding_write_transaction(storage: Storage) -> AsyncIterator[None]:
    """A write transaction of ``storage`` that has begun and written nothing, until exit."""
    loop = asyncio.get_running_loop()
    began, release = asyncio.Event(), threading.Event()

    def body(conn: sa.Connection) -> None:
        loop.call_soon_threadsafe(began.set)
        if not release.wait(30):
            raise TimeoutError("the write transaction was held for 30 s")

    holding = asyncio.ensure_future(storage.write(body))
    try:
        await _until_began(holding, began)
        yield
    finally:
        release.set()
        await holding


@pytest.mark.anyio
async def test_write_transaction_takes_the_write_lock_at_begin(sqlite_url: str) -> None:
    impatient = Settings(
        busy_timeout=timedelta(milliseconds=50), lock_deadline=timedelta(milliseconds=200)
    )
    async with _open_storages(sqlite_url, Settings(), impatient) as (holder, other):
        async with _holding_write_transaction(holder):
            # The holder has not written anything yet: only BEGIN IMMEDIATE holds the lock.
            with pytest.raises(DatabaseBusy, match="locked"):
                await other.write(lambda conn: None)
            # Write transactions on the async engine begin IMMEDIATE as well.
            with pytest.raises((DatabaseBusy, sa.exc.OperationalError), match="locked"):
                async with other.engine.begin():
                    pass
            # Readers are not blocked by a writer (WAL, deferred read transactions).
            assert await other.read(_count_tasks) == 0
        # Free again once the holder committed.
        await other.write(lambda conn: other.tasks.insert_many(conn, [Task(func="m:f")]))
        assert await holder.read(_count_tasks) == 1


@pytest.mark.anyio
async def test_second_writer_waits_until_first_commits(sqlite_url: str) -> None:
    patient = Settings(busy_timeout=timedelta(seconds=20))
    order: list[str] = []
    seen_by_second: list[int] = []
    about_to_begin = threading.Event()
    first_began = asyncio.Event()
    loop = asyncio.get_running_loop()
    async with _open_storages(sqlite_url, Settings(), patient) as (first, second):

        def first_body(conn: sa.Connection) -> None:
            order.append("first began")
            loop.call_soon_threadsafe(first_began.set)
            if not about_to_begin.wait(10):
                raise AssertionError("the second writer never tried to begin")
            # Work (round trips to the driver) while the second writer is trying to begin.
            for i in range(20):
                first.tasks.insert_many(conn, [Task(func="m:f", name=str(i))])
                _count_tasks(conn)
                time.sleep(0.005)
            assert order == ["first began"]
            order.append("first committing")

        def second_body(conn: sa.Connection) -> None:
            order.append("second began")
            seen_by_second.append(_count_tasks(conn))

        writing = asyncio.ensure_future(first.write(first_body))
        await _until_began(writing, first_began)
        with anyio.fail_after(30):
            assert order == ["first began"]
            about_to_begin.set()
            await asyncio.gather(writing, second.write(second_body))
    # The second transaction began after the first's COMMIT (it sees all 20 rows);
    # both bodies ran on their writer threads, so that is where the order is kept.
    assert order == ["first began", "first committing", "second began"]
    assert seen_by_second == [20]


@pytest.mark.anyio
@pytest.mark.parametrize("small", [False, True], ids=["thread", "small-writes-inline"])
async def test_read_modify_write_never_loses_updates(sqlite_url: str, small: bool) -> None:
    counter = Task(func="m:f", priority=0)
    errors: list[BaseException] = []
    async with _open_storages(sqlite_url, Settings(), Settings()) as storages:
        await storages[0].write(lambda conn: storages[0].tasks.insert_many(conn, [counter]))

        def increment(conn: sa.Connection) -> None:
            value = conn.execute(sa.select(t.c.priority).where(t.c.id == counter.id)).scalar_one()
            time.sleep(0.001)  # widen the window a deferred BEGIN would lose an update in
            conn.execute(sa.update(t).where(t.c.id == counter.id).values(priority=value + 1))

        async def run(storage: Storage) -> None:
            try:
                await storage.write(increment, small=small)
            except BaseException as exc:  # report, don't cancel the others
                errors.append(exc)

        with anyio.fail_after(60):
            async with anyio.create_task_group() as tg:
                for i in range(30):
                    tg.start_soon(run, storages[i % 2])
        assert errors == []
        final = await storages[1].read(
            lambda conn: conn.execute(
                sa.select(t.c.priority).where(t.c.id == counter.id)
            ).scalar_one()
        )
    assert final == 30


# --- small writes on the caller's thread --------------------------------------------------------


def _busy_timeout(conn: sa.Connection) -> int:
    return int(conn.exec_driver_sql("PRAGMA busy_timeout").scalar_one())


@pytest.mark.anyio
async def test_a_small_write_runs_on_the_callers_thread_when_the_writer_is_idle(
    sqlite_url: str,
) -> None:
    async with _open_storages(sqlite_url, Settings(busy_timeout=timedelta(seconds=7))) as (
        storage,
    ):
        await storage.write(lambda conn: None)  # the writer's connection is open
        seen: list[tuple[int, int]] = []

        def body(conn: sa.Connection) -> None:
            seen.append((threading.get_ident(), _busy_timeout(conn)))
            storage.tasks.insert_many(conn, [Task(func="m:f")])

        await storage.write(body, small=True)
        # Here, it never waits for a lock (busy_timeout 0): another writer sends it
        # to the thread instead (next test).
        assert seen == [(threading.get_ident(), 0)]
        # The thread's own transactions still wait for the lock as configured.
        assert await storage.write(_busy_timeout) == 7000
        assert await storage.read(_count_tasks) == 1


@pytest.mark.anyio
async def test_a_small_write_never_blocks_the_event_loop_on_a_held_lock(sqlite_url: str) -> None:
    patient = Settings(busy_timeout=timedelta(seconds=20))
    async with _open_storages(sqlite_url, Settings(), patient) as (holder, other):
        await other.write(lambda conn: None)
        ran_on: list[int] = []

        def body(conn: sa.Connection) -> None:
            ran_on.append(threading.get_ident())
            other.tasks.insert_many(conn, [Task(func="m:f")])

        async with _holding_write_transaction(holder):
            ticks = 0
            with anyio.fail_after(10):
                writing = asyncio.ensure_future(other.write(body, small=True))
                # The loop keeps running while the write waits for the other
                # process's lock (a blocked loop would not get here for 20 s).
                while ticks < 50:
                    await asyncio.sleep(0)
                    ticks += 1
            assert not writing.done()
            assert ran_on == []
        with anyio.fail_after(30):
            await writing
        assert len(ran_on) == 1 and ran_on[0] != threading.get_ident()  # on the thread
        assert await other.read(_count_tasks) == 1


@pytest.mark.anyio
async def test_a_small_write_waits_its_turn_behind_the_writer_threads_work(
    sqlite_url: str,
) -> None:
    async with _open_storages(sqlite_url, Settings()) as (storage,):
        await storage.write(lambda conn: None)
        order: list[str] = []

        def small_body(conn: sa.Connection) -> None:
            order.append("small")
            storage.tasks.insert_many(conn, [Task(func="m:f")])

        async with _holding_write_transaction(storage):
            writing = asyncio.ensure_future(storage.write(small_body, small=True))
            for _ in range(20):
                await asyncio.sleep(0)
            # Not run beside the thread's open transaction on the same connection.
            assert order == []
        with anyio.fail_after(30):
            await writing
        assert order == ["small"]
        assert await storage.read(_count_tasks) == 1


@pytest.mark.anyio
async def test_small_writes_alone_keep_the_wal_checkpointed(sqlite_url: str) -> None:
    path = sqlite_path(sa.make_url(sqlite_url))
    assert path is not None
    wal = path.with_name(path.name + "-wal")
    async with _open_storages(sqlite_url, Settings()) as (storage,):
        await storage.write(lambda conn: None)
        highest = 0
        for i in range(3000):
            row = Task(func="m:f", description="x" * 400, name=str(i))

            def insert(conn: sa.Connection, row: Task = row) -> None:
                storage.tasks.insert_many(conn, [row])

            await storage.write(insert, small=True)
            highest = max(highest, wal.stat().st_size)
        assert await storage.read(_count_tasks) == 3000
    # Never checkpointed, these commits grow the WAL past 100 MiB; the writer
    # thread's commits in between checkpoint it once past SQLite's threshold
    # (1,000 pages, 4 MiB), so it stays near that (about 6 MiB here).
    assert highest < 12 * 2**20, highest


@pytest.mark.anyio
async def test_concurrent_claims_on_two_engines_never_share_a_task(sqlite_url: str) -> None:
    claimed: list[str] = []
    now = T0 + timedelta(hours=1)
    async with _open_storages(sqlite_url, Settings(), Settings(), Settings()) as storages:
        tasks = [Task(func="m:f", created_at=T0) for _ in range(300)]
        await storages[0].write(lambda conn: storages[0].tasks.insert_many(conn, tasks))

        async def worker(storage: Storage) -> None:
            while True:
                got = await storage.write(
                    lambda conn: storage.tasks.claim(
                        conn,
                        queues=["default"],
                        n=7,
                        now=now,
                        token=new_id(),
                        lease_until=now + timedelta(minutes=1),
                        worker_id="w",
                    )
                )
                if not got:
                    return
                claimed.extend(x.id for x in got)

        with anyio.fail_after(60):
            async with anyio.create_task_group() as tg:
                for i in range(6):
                    tg.start_soon(worker, storages[i % 3])
    assert len(claimed) == 300
    assert len(set(claimed)) == 300


# --- URLs ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "url",
    [
        "mysql://user@localhost/db",
        "oracle+cx_oracle://u:p@h/db",
        "not a url at all",
        "",
        "sqlite+aiosqlite://",
        "sqlite:///:memory:",
        "sqlite+aiosqlite:///:memory:",
        "sqlite+aiosqlite:///file::memory:?cache=shared",
        "sqlite+pysqlite:///omniq.db",
        "sqlite+pysqlcipher:///omniq.db",
        "postgresql+psycopg2://postgres@localhost/db",
        "postgresql+psycopg://postgres@localhost/db",
    ],
)
def test_normalize_url_rejects(url: str) -> None:
    with pytest.raises(ConfigurationError):
        normalize_url(url)


@pytest.mark.parametrize(
    ("url", "driver"),
    [
        ("sqlite:///omniq_data/omniq.db", "sqlite+aiosqlite"),
        ("sqlite+aiosqlite:////abs/path.db", "sqlite+aiosqlite"),
        ("postgresql://postgres@127.0.0.1/test", "postgresql+asyncpg"),
        ("postgres://postgres@127.0.0.1/test", "postgresql+asyncpg"),
        ("postgresql+asyncpg://u:p@h:5433/db", "postgresql+asyncpg"),
    ],
)
def test_normalize_url_picks_async_driver(url: str, driver: str) -> None:
    parsed = normalize_url(url)
    assert parsed.drivername == driver
    assert parsed.database == sa.make_url(url).database


def test_sqlite_path_and_default_url() -> None:
    assert sqlite_path(normalize_url("sqlite:///a/b.db")) == Path("a/b.db")
    assert sqlite_path(normalize_url("postgresql://h/db")) is None
    assert default_sqlite_url() == "sqlite+aiosqlite:///omniq_data/omniq.db"
    assert default_sqlite_url("proj", "/data") == "sqlite+aiosqlite:////data/proj.db"


def test_dialect_of_rejects_other_databases() -> None:
    from sqlalchemy.dialects import mysql

    with pytest.raises(ConfigurationError):
        dialect_of(mysql.dialect())
    assert dialect_of(sqlite_dialect.dialect()).single_writer is True


# --- the claim's query plan on SQLite ---------------------------------------------------------


def _claim_with_plans(
    url: str, queues: Sequence[str] | None, *, start: bool, now: datetime
) -> tuple[list[Task], list[list[str]]]:
    """Run a claim in a transaction that is rolled back; the query plan of each UPDATE it sent.

    The claim runs on the writer thread's engine (pysqlite), where claims run,
    and each plan is of the statement and parameters the claim really sent:
    through SQLAlchemy (seen by its cursor events) or, where the claim hands
    its statement to the driver itself (omniq.db.driver_query), through that.
    """
    engine = sqlite_writer_engine(normalize_url(url), Settings())
    repo = TaskRepository(dialect_of(engine.dialect))
    sent: list[tuple[str, Any]] = []

    def capture(
        conn: Any, cursor: Any, statement: str, parameters: Any, context: Any, many: bool
    ) -> None:
        if statement.lstrip().upper().startswith("UPDATE"):
            sent.append((statement, parameters))

    def on_driver(conn: Any, sql: str, params: Any, *, many: bool = False) -> list[Any]:
        capture(conn, None, sql, tuple(params), None, many)
        return run_on_driver(conn, sql, params, many=many)

    sa.event.listen(engine, "before_cursor_execute", capture)
    try:
        with engine.connect() as conn, mock.patch.object(driver_query, "run_on_driver", on_driver):
            transaction = conn.begin()
            try:
                got = repo.claim(
                    conn,
                    queues=queues,
                    n=10,
                    now=now,
                    token=new_id(),
                    lease_until=now + timedelta(minutes=1),
                    worker_id="w",
                    start=start,
                )
                plans = [
                    [
                        str(row[-1])
                        for row in conn.exec_driver_sql(f"EXPLAIN QUERY PLAN {sql}", params)
                    ]
                    for sql, params in list(sent)
                ]
            finally:
                transaction.rollback()
    finally:
        engine.dispose()
    return got, plans


@pytest.mark.anyio
@pytest.mark.parametrize("start", [True, False], ids=["start", "prefetch"])
@pytest.mark.parametrize("analyze", [False, True], ids=["plain", "analyzed"])
async def test_claim_uses_index_without_sort(
    sqlite_url: str, sqlite_engine: AsyncEngine, analyze: bool, start: bool
) -> None:
    statuses = [TaskStatus.PENDING] * 6 + [TaskStatus.COMPLETED] * 3 + [TaskStatus.RUNNING]
    tasks = [
        Task(
            func="m:f",
            queue_name=f"q{i % 4}",
            priority=i % 5,
            status=statuses[i % len(statuses)],
            created_at=T0 + timedelta(seconds=i % 97),
            ttl=timedelta(hours=1) if i % 3 == 0 else None,
        )
        for i in range(4000)
    ]
    await _insert(sqlite_engine, *tasks)
    await sqlite_engine.dispose()
    path = sqlite_path(normalize_url(sqlite_url))
    assert path is not None
    if analyze:
        con = sqlite3.connect(path)
        con.execute("ANALYZE")
        con.commit()
        con.close()
    now = T0 + timedelta(minutes=30)

    got, (by_queue,) = _claim_with_plans(sqlite_url, ["q1"], start=start, now=now)
    assert any("ix_omniq_tasks_claim" in line for line in by_queue), by_queue
    assert not any("TEMP B-TREE" in line for line in by_queue), by_queue
    # The plan serves the claim: it still returns the right tasks.
    pending = [x for x in tasks if x.status is TaskStatus.PENDING]
    expected = sorted(
        (x for x in pending if x.queue_name == "q1"), key=lambda x: (-x.priority, x.run_at, x.id)
    )[:10]
    assert [x.id for x in got] == [x.id for x in expected]

    got, (any_queue,) = _claim_with_plans(sqlite_url, None, start=start, now=now)
    assert any("ix_omniq_tasks_status_order" in line for line in any_queue), any_queue
    assert not any("TEMP B-TREE" in line for line in any_queue), any_queue
    expected = sorted(pending, key=lambda x: (-x.priority, x.run_at, x.id))[:10]
    assert [x.id for x in got] == [x.id for x in expected]


def test_migrated_template_has_claim_indexes(sqlite_template: Path) -> None:
    con = sqlite3.connect(sqlite_template)
    try:
        indexes = dict(con.execute("SELECT name, sql FROM sqlite_master WHERE type='index'"))
    finally:
        con.close()
    assert {"ix_omniq_tasks_claim", "ix_omniq_tasks_status_order"} <= indexes.keys()
    # In the claim's order (priority DESC, run_at, id), so that it needs no sort.
    assert "(queue_name, status, priority DESC, run_at, id)" in indexes["ix_omniq_tasks_claim"]
    assert "(status, priority DESC, run_at, id)" in indexes["ix_omniq_tasks_status_order"]
    assert migrate.head()


@pytest.mark.anyio
async def test_lookups_by_schedule_use_the_partial_schedule_indexes(sqlite_url: str) -> None:
    from omniq.models import Schedule
    from omniq.services import Services

    svc = await Services.open_async(sqlite_url)
    try:
        schedule = Schedule(func="m:f", schedule_type="interval", interval=timedelta(hours=1))
        sid = await svc.queue.schedule_async(schedule)
        await svc.queue.enqueue_many_async([svc.queue.build_task("m:f") for _ in range(3)])
        assert [e.schedule_id for e in await svc.events.get_events_async(schedule_id=sid)] == [sid]
    finally:
        await svc.close_async()
    path = sqlite_path(normalize_url(sqlite_url))
    assert path is not None
    con = sqlite3.connect(path)
    try:
        indexed = {
            row[0]: row[1]
            for row in con.execute("SELECT name, sql FROM sqlite_master WHERE type='index'")
        }
        for name in ("ix_omniq_events_schedule", "ix_omniq_results_schedule"):
            assert "WHERE schedule_id IS NOT NULL" in indexed[name]
        # Only the schedule's own event is in the partial index, not the 3 enqueues.
        (entries,) = con.execute(
            "SELECT count(*) FROM omniq_events INDEXED BY ix_omniq_events_schedule "
            "WHERE schedule_id IS NOT NULL"
        ).fetchone()
        (total,) = con.execute("SELECT count(*) FROM omniq_events").fetchone()
        assert (entries, total) == (1, 4)
        for sql in (
            "SELECT * FROM omniq_events WHERE schedule_id = ? ORDER BY id DESC LIMIT 100",
            "SELECT * FROM omniq_results WHERE schedule_id = ? ORDER BY created_at DESC LIMIT 1",
        ):
            plan = " ".join(str(r[-1]) for r in con.execute(f"EXPLAIN QUERY PLAN {sql}", (sid,)))
            assert "_schedule" in plan and "TEMP B-TREE" not in plan, plan
    finally:
        con.close()
