"""Enqueue in the caller's transaction (async API), on both engines.

The application has its own SQLAlchemy engine on OmniQ's database and its own
table (``app_orders``); a task enqueued with ``connection=`` / ``session=``
commits with the application's rows or not at all.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, create_async_engine
from sqlalchemy.orm import DeclarativeBase, Mapped

from omniq import AsyncOmniQ, Settings, TaskStatus
from omniq.db.schema import events as events_t
from omniq.db.schema import schedules as schedules_t
from omniq.db.schema import task_dependencies as deps_t
from omniq.db.schema import tasks as tasks_t
from omniq.errors import (
    DuplicateTask,
    SchemaOutOfDate,
    SerializationError,
    ValidationError,
    WrongDatabase,
)
from tests import app_tasks
from tests.caller_tx_app import APP_METADATA, NotifySpy, WaitSpy, orders
from tests.waiting import wait_until

pytestmark = pytest.mark.anyio

#: How long "nothing happened" is watched for (a wake-up comes within milliseconds).
QUIET = 0.3


class Base(DeclarativeBase):
    metadata = APP_METADATA


class Order(Base):
    __table__ = orders

    id: Mapped[int]
    item: Mapped[str]


@pytest.fixture
async def app_engine(db_url: str) -> AsyncIterator[AsyncEngine]:
    """The application's own engine on OmniQ's database, with its table ``app_orders``."""
    engine = create_async_engine(db_url)
    async with engine.begin() as conn:
        await conn.run_sync(APP_METADATA.create_all)
    try:
        yield engine
    finally:
        async with engine.begin() as conn:
            await conn.run_sync(APP_METADATA.drop_all)
        await engine.dispose()


@pytest.fixture
async def oq(db_url: str) -> AsyncIterator[AsyncOmniQ]:
    async with AsyncOmniQ(url=db_url, settings=Settings(default_max_retries=0)) as app:
        yield app


async def _count(oq: AsyncOmniQ, table: sa.Table) -> int:
    def body(conn: sa.Connection) -> int:
        return int(conn.execute(sa.select(sa.func.count()).select_from(table)).scalar_one())

    return await oq.services.storage.read(body)


async def _items(engine: AsyncEngine) -> list[str]:
    async with engine.connect() as conn:
        return list((await conn.execute(sa.select(orders.c.item).order_by(orders.c.id))).scalars())


async def test_commit_makes_the_task_visible_and_a_worker_runs_it(
    oq: AsyncOmniQ, app_engine: AsyncEngine
) -> None:
    async with app_engine.connect() as conn:
        await conn.begin()
        await conn.execute(orders.insert().values(item="book"))
        task_id = await oq.enqueue_async(app_tasks.add, [40, 2], connection=conn)
        # Invisible to everyone else (OmniQ's own engine included) until the commit.
        assert await oq.get_task_async(task_id) is None
        assert await oq.get_events_async(task_id=task_id) == []
        await conn.commit()
    task = await oq.get_task_async(task_id)
    assert task is not None and task.status is TaskStatus.PENDING
    assert [e.event_type.value for e in await oq.get_events_async(task_id=task_id)] == ["enqueued"]
    assert await _items(app_engine) == ["book"]
    await oq.start_worker_async(poll_interval=0.05)
    result = await oq.get_result_async(task_id, wait=True, timeout=30)
    assert result is not None and result.result == 42


async def test_omniqs_statements_on_the_callers_connection_go_through_sqlalchemy(
    oq: AsyncOmniQ, db_url: str
) -> None:
    """A connection passed as ``connection=`` is the application's, even from an
    engine OmniQ made (whose own connections hand hot statements to the driver):
    OmniQ's INSERTs on it are seen by the engine's cursor events, and the
    connection is left as it was."""
    from omniq.db.driver_exec import OWN_ENGINE
    from omniq.db.engine import create_engine

    engine = create_engine(db_url)
    seen: list[str] = []

    def record(_conn: object, _cursor: object, statement: str, *_: object) -> None:
        seen.append(" ".join(statement.split()[:3]).upper())

    sa.event.listen(engine.sync_engine, "before_cursor_execute", record)
    try:
        async with engine.connect() as conn:
            own_before = conn.sync_connection.get_execution_options().get(OWN_ENGINE)  # type: ignore[union-attr]
            await conn.begin()
            task_id = await oq.enqueue_async(app_tasks.add, [40, 2], connection=conn)
            await conn.commit()
            after = conn.sync_connection.get_execution_options().get(OWN_ENGINE)  # type: ignore[union-attr]
            assert after == own_before
        assert "INSERT INTO OMNIQ_TASKS" in seen and "INSERT INTO OMNIQ_EVENTS" in seen
        task = await oq.get_task_async(task_id)
        assert task is not None and task.status is TaskStatus.PENDING
    finally:
        await engine.dispose()


async def test_rollback_leaves_no_task_no_event_no_edge(
    oq: AsyncOmniQ, app_engine: AsyncEngine
) -> None:
    done = await oq.enqueue_async(app_tasks.add, [1, 1])  # committed before, by OmniQ
    before = {t: await _count(oq, t) for t in (tasks_t, events_t, deps_t, schedules_t)}
    async with app_engine.connect() as conn:
        await conn.begin()
        # OmniQ's write comes first in the transaction: SQLite's drivers begin
        # lazily, and the savepoint must not become a transaction of its own.
        first = await oq.enqueue_async(app_tasks.add, [1, 2], connection=conn)
        batch = [
            oq.build_task(app_tasks.add, [2, 2], depends_on=[first, done]),
            oq.build_task(app_tasks.add, [3, 3], unique_key="once"),
        ]
        await oq.enqueue_many_async(batch, connection=conn)
        await oq.schedule_async(app_tasks.add, [1, 1], interval=60, connection=conn)
        await conn.execute(orders.insert().values(item="book"))
        await conn.rollback()
    assert {t: await _count(oq, t) for t in before} == before
    assert await _items(app_engine) == []
    assert await oq.get_task_async(first) is None


async def test_dependency_edges_commit_with_the_callers_transaction(
    oq: AsyncOmniQ, app_engine: AsyncEngine
) -> None:
    async with app_engine.begin() as conn:
        a = oq.build_task(app_tasks.add, [1, 2])
        b = oq.build_task(app_tasks.add, [3, 4], depends_on=[a.id])
        ids = await oq.enqueue_many_async([b, a], connection=conn)
        schedule_id = await oq.schedule_async(app_tasks.add, [5, 5], interval=60, connection=conn)
    assert ids == [b.id, a.id]
    assert (await oq.get_task_async(b.id)).status is TaskStatus.WAITING  # type: ignore[union-attr]
    assert await _count(oq, deps_t) == 1
    assert await oq.get_schedule_async(schedule_id) is not None
    stats = await oq.run_worker_async(run_scheduler=False)
    assert stats.completed == 2
    assert (await oq.get_result_async(b.id)).result == 7  # type: ignore[union-attr]


async def test_a_refused_enqueue_keeps_the_callers_transaction(
    oq: AsyncOmniQ, app_engine: AsyncEngine
) -> None:
    async with app_engine.connect() as conn:
        await conn.begin()
        await conn.execute(orders.insert().values(item="before"))
        kept = await oq.enqueue_async(app_tasks.add, [1, 1], unique_key="k", connection=conn)
        with pytest.raises(DuplicateTask) as dup:
            await oq.enqueue_async(
                app_tasks.add, [2, 2], unique_key="k", on_duplicate="raise", connection=conn
            )
        assert dup.value.existing_id == kept
        # The default answer to a duplicate: the live task's id, nothing written.
        assert await oq.enqueue_async(app_tasks.add, [3, 3], unique_key="k", connection=conn) == (
            kept
        )
        # A duplicate task id: the database refuses the INSERT (on PostgreSQL that
        # would abort the whole transaction without the savepoint).
        with pytest.raises(DuplicateTask):
            await oq.services.queue.enqueue_async(
                app_tasks.add, [4, 4], task_id=kept, connection=conn
            )
        with pytest.raises(ValidationError, match="depends_on"):
            await oq.enqueue_async(app_tasks.add, [5, 5], depends_on=["nope"], connection=conn)
        with pytest.raises(SerializationError):
            await oq.enqueue_async(app_tasks.add, [object(), 1], connection=conn)
        with pytest.raises(ValidationError, match="run_at"):
            await oq.enqueue_async(app_tasks.add, [1, 1], run_at=object(), connection=conn)  # type: ignore[arg-type]
        await conn.execute(orders.insert().values(item="after"))
        await conn.commit()
    assert await _items(app_engine) == ["before", "after"]
    assert [t.id for t in await oq.list_tasks_async()] == [kept]
    assert len(await oq.get_events_async()) == 1


async def test_no_wake_up_before_the_commit_and_none_on_rollback(
    oq: AsyncOmniQ, app_engine: AsyncEngine
) -> None:
    notifier = oq.services.storage.notifier
    async with app_engine.connect() as conn:
        with NotifySpy(notifier, conn.in_transaction) as spy:
            await conn.begin()
            await oq.enqueue_async(app_tasks.add, [1, 2], connection=conn)
            await oq.enqueue_many_async([oq.build_task(app_tasks.add, [1])], connection=conn)
            for _ in range(20):
                await asyncio.sleep(0)  # turns of the loop: nothing is scheduled to wake
            assert spy.calls == []
            await conn.commit()
            await wait_until(lambda: _true(bool(spy.calls)), "the wake-up after the commit")
            # One wake-up for the transaction, after the driver's COMMIT returned.
            assert spy.calls == [False]

            spy.calls.clear()
            await conn.begin()
            await oq.enqueue_async(app_tasks.add, [3, 4], connection=conn)
            await conn.rollback()
            # The next transaction on the same connection owes nothing.
            await conn.begin()
            await conn.execute(orders.insert().values(item="later"))
            await conn.commit()
            deadline = time.monotonic() + QUIET
            while time.monotonic() < deadline:
                await asyncio.sleep(0.01)
                assert spy.calls == []


async def _true(value: bool) -> bool:
    return value


async def test_an_idle_worker_in_this_process_wakes_after_the_commit(
    db_url: str, app_engine: AsyncEngine
) -> None:
    app = AsyncOmniQ(url=db_url, poll_interval=60)
    async with app:
        with WaitSpy(app.services.storage.notifier) as spy:
            await app.start_worker_async(run_scheduler=False, run_maintenance=False)
            # The worker backs off while idle: wait until it sleeps long enough that
            # only a wake-up (not its next poll) can start the task promptly.
            await wait_until(
                lambda: _true(spy.long_wait_in_progress(2.0) is not None), "an idle worker"
            )
            sleeping = spy.long_wait_in_progress(2.0)
            assert sleeping is not None
            async with app_engine.connect() as conn:
                await conn.begin()
                task_id = await app.enqueue_async(app_tasks.add, [20, 22], connection=conn)
                deadline = time.monotonic() + QUIET
                while time.monotonic() < deadline:  # the worker neither wakes nor sees it
                    await asyncio.sleep(0.02)
                    assert "end" not in sleeping
                assert await app.get_task_async(task_id) is None
                committing = time.monotonic()
                await conn.commit()
                committed = time.monotonic()  # before the loop's next turn
            result = await app.get_result_async(task_id, wait=True, timeout=30)
            assert result is not None and result.result == 42
            assert sleeping["woke"] is True and sleeping["end"] >= committing
            if app.services.storage.dialect.name == "sqlite":
                # This process's wake-up: once the driver's COMMIT returned. (On
                # PostgreSQL the server's NOTIFY, sent at its commit, may reach the
                # listening worker before the COMMIT's reply reaches this client.)
                assert sleeping["end"] >= committed
            assert sleeping["end"] - sleeping["start"] < sleeping["timeout"]


async def test_session_commit_and_rollback(oq: AsyncOmniQ, app_engine: AsyncEngine) -> None:
    async with AsyncSession(app_engine) as session:
        session.add(Order(item="kept"))
        kept = await oq.enqueue_async(app_tasks.add, [1, 2], session=session)
        sid = await oq.schedule_async(app_tasks.add, [1, 1], interval=60, session=session)
        await oq.enqueue_async(app_tasks.add, [0, 0], unique_key="u", session=session)
        with pytest.raises(DuplicateTask):
            await oq.enqueue_async(
                app_tasks.add, [0, 0], unique_key="u", on_duplicate="raise", session=session
            )
        await session.commit()

        session.add(Order(item="dropped"))
        dropped = await oq.enqueue_async(app_tasks.add, [3, 4], session=session)
        await session.rollback()
    assert await _items(app_engine) == ["kept"]
    assert await oq.get_task_async(kept) is not None
    assert await oq.get_schedule_async(sid) is not None
    assert await oq.get_task_async(dropped) is None
    await oq.run_worker_async(run_scheduler=False)
    assert (await oq.get_result_async(kept)).result == 3  # type: ignore[union-attr]


async def test_the_session_variant_through_the_task_handle(
    oq: AsyncOmniQ, app_engine: AsyncEngine
) -> None:
    add = oq.task(queue_name="math")(app_tasks.add)
    async with AsyncSession(app_engine) as session, session.begin():
        session.add(Order(item="x"))
        task_id = await add.enqueue_in_async(session, 2, 3)
    async with app_engine.connect() as conn:
        await conn.begin()
        dropped = await add.enqueue_in_async(conn, 5, 5)
        await conn.rollback()
    task = await oq.get_task_async(task_id)
    assert task is not None and task.queue_name == "math"
    assert await oq.get_task_async(dropped) is None
    await oq.run_worker_async(run_scheduler=False)
    assert (await oq.get_result_async(task_id)).result == 5  # type: ignore[union-attr]


async def test_wrong_database_or_schema_is_refused(
    oq: AsyncOmniQ, app_engine: AsyncEngine, empty_db_url: str
) -> None:
    other = create_async_engine(empty_db_url)
    try:
        async with other.connect() as conn:
            await conn.begin()
            with pytest.raises(WrongDatabase, match=r"connection: .*OmniQ"):
                await oq.enqueue_async(app_tasks.add, [1, 1], connection=conn)
    finally:
        await other.dispose()
    # The same database seen through a fresh engine, whose transaction shows an
    # older revision: OmniQ's schema is checked through the caller's connection.
    fresh = create_async_engine(str(app_engine.url.render_as_string(hide_password=False)))
    try:
        async with fresh.connect() as conn:
            await conn.begin()
            names = await conn.run_sync(lambda c: sa.inspect(c).get_table_names())
            version = (
                "omniq_alembic_version" if "omniq_alembic_version" in names else ("alembic_version")
            )
            await conn.execute(
                sa.table(version, sa.column("version_num")).update().values(version_num="0001")
            )
            await conn.execute(orders.insert().values(item="mine"))
            with pytest.raises(SchemaOutOfDate):
                await oq.enqueue_async(app_tasks.add, [1, 1], connection=conn)
            # The caller's transaction survived the refusal.
            assert (
                await conn.execute(sa.select(sa.func.count()).select_from(orders))
            ).scalar() == 1
            await conn.rollback()
    finally:
        await fresh.dispose()
    assert await oq.list_tasks_async() == []


async def test_bad_connection_arguments(oq: AsyncOmniQ, app_engine: AsyncEngine) -> None:
    async with app_engine.connect() as conn, AsyncSession(app_engine) as session:
        with pytest.raises(ValidationError, match="not both"):
            await oq.enqueue_async(app_tasks.add, [1, 1], connection=conn, session=session)
        with pytest.raises(ValidationError, match="session="):
            await oq.enqueue_async(app_tasks.add, [1, 1], connection=session)  # type: ignore[arg-type]
        with pytest.raises(ValidationError, match="connection="):
            await oq.enqueue_async(app_tasks.add, [1, 1], session=conn)  # type: ignore[arg-type]
        with pytest.raises(ValidationError, match="got str"):
            await oq.enqueue_async(app_tasks.add, [1, 1], connection="postgres://")  # type: ignore[arg-type]
    with pytest.raises(ValidationError, match="closed"):
        await oq.enqueue_async(app_tasks.add, [1, 1], connection=conn)
