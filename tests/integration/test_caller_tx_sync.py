"""Enqueue in the caller's transaction through the sync API (Connection, Session), both engines.

The application's engine is a sync one (pysqlite, psycopg) on OmniQ's
database; OmniQ's sync twins write on that connection from the calling
thread, in its transaction.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.orm import Session

from omniq import OmniQ, SyncServices, TaskStatus
from omniq.errors import DuplicateTask, ValidationError
from tests import app_tasks
from tests.caller_tx_app import APP_METADATA, NotifySpy, orders, sync_url
from tests.waiting import wait_until_sync

pytest.importorskip("psycopg", reason="the sync API's PostgreSQL tests need psycopg (dev extra)")


@pytest.fixture
def app_engine(db_url: str) -> Iterator[sa.Engine]:
    """The application's own sync engine on OmniQ's database, with its table ``app_orders``."""
    engine = sa.create_engine(sync_url(db_url))
    APP_METADATA.create_all(engine)
    try:
        yield engine
    finally:
        APP_METADATA.drop_all(engine)
        engine.dispose()


@pytest.fixture
def oq(db_url: str) -> Iterator[OmniQ]:
    with OmniQ(url=db_url) as app:
        yield app


def _items(engine: sa.Engine) -> list[str]:
    with engine.connect() as conn:
        return list(conn.execute(sa.select(orders.c.item).order_by(orders.c.id)).scalars())


def test_sync_connection_commit_rollback_and_the_writing_thread(
    oq: OmniQ, app_engine: sa.Engine
) -> None:
    writers: list[int] = []

    def on_execute(_conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
        if "omniq_tasks" in statement and statement.lstrip().upper().startswith("INSERT"):
            writers.append(threading.get_ident())

    event.listen(app_engine, "before_cursor_execute", on_execute)
    with app_engine.connect() as conn:
        conn.execute(orders.insert().values(item="book"))
        task_id = oq.enqueue(app_tasks.add, [40, 2], connection=conn)
        assert oq.get_task(task_id) is None  # OmniQ's own engine cannot see it yet
        conn.commit()
    # OmniQ's rows went through the application's connection, on this very thread.
    assert writers == [threading.get_ident()]
    assert oq.get_task(task_id).status is TaskStatus.PENDING  # type: ignore[union-attr]
    with app_engine.connect() as conn:
        many = oq.enqueue_many([oq.build_task(app_tasks.add, [1, 1])], connection=conn)
        sid = oq.schedule(app_tasks.add, [1, 1], interval=60, connection=conn)
        conn.execute(orders.insert().values(item="dropped"))
        conn.rollback()
    assert oq.get_task(many[0]) is None and oq.get_schedule(sid) is None
    assert _items(app_engine) == ["book"]
    assert [e.event_type.value for e in oq.get_events(task_id=task_id)] == ["enqueued"]
    assert oq.run_worker(run_scheduler=False).completed == 1
    assert oq.get_result(task_id).result == 42  # type: ignore[union-attr]


def test_sync_refusal_keeps_the_callers_rows(oq: OmniQ, app_engine: sa.Engine) -> None:
    with app_engine.begin() as conn:
        conn.execute(orders.insert().values(item="before"))
        kept = oq.enqueue(app_tasks.add, [1, 1], unique_key="k", connection=conn)
        with pytest.raises(DuplicateTask):
            oq.enqueue(app_tasks.add, [2, 2], unique_key="k", on_duplicate="raise", connection=conn)
        with pytest.raises(ValidationError, match="depends_on"):
            oq.enqueue(app_tasks.add, [2, 2], depends_on=["missing"], connection=conn)
        conn.execute(orders.insert().values(item="after"))
    assert _items(app_engine) == ["before", "after"]
    assert [t.id for t in oq.list_tasks()] == [kept]


def test_a_database_refusal_in_a_session_keeps_the_session(
    db_url: str, oq: OmniQ, app_engine: sa.Engine
) -> None:
    """A refusal by the database itself (a duplicate task id) rolls back only OmniQ's
    savepoint: on PostgreSQL it used to abort the session's whole transaction."""
    with Session(app_engine) as session, SyncServices.open(db_url) as services:
        session.execute(orders.insert().values(item="before"))
        kept = oq.enqueue(app_tasks.add, [1, 1], session=session)
        with pytest.raises(DuplicateTask):
            services.queue.enqueue(app_tasks.add, [2, 2], task_id=kept, session=session)
        session.execute(orders.insert().values(item="after"))
        session.commit()
    assert _items(app_engine) == ["before", "after"]
    assert [t.id for t in oq.list_tasks()] == [kept]


def test_sync_wake_up_after_the_commit(oq: OmniQ, app_engine: sa.Engine) -> None:
    notifier = oq.app.services.storage.notifier
    with app_engine.connect() as conn, NotifySpy(notifier, conn.in_transaction) as spy:
        oq.enqueue(app_tasks.add, [1, 2], connection=conn)
        assert spy.calls == []
        conn.commit()
        wait_until_sync(lambda: bool(spy.calls), "the wake-up after the commit")
        assert spy.calls == [False]


def test_sync_session_task_handle_and_service_layer(
    db_url: str, oq: OmniQ, app_engine: sa.Engine
) -> None:
    add = oq.task(queue_name="math")(app_tasks.add)
    with Session(app_engine) as session:
        session.execute(orders.insert().values(item="with a session"))
        first = oq.enqueue(app_tasks.add, [1, 2], session=session)
        second = add.enqueue_in(session, 3, 4)
        session.commit()
        dropped = add.enqueue_in(session, 5, 6)
        session.rollback()
    with pytest.raises(ValidationError, match="enqueue_in_async"):
        add.enqueue_in(object(), 1, 2)  # type: ignore[arg-type]
    with SyncServices.open(db_url) as services, app_engine.connect() as conn:
        third = services.queue.enqueue(app_tasks.add, [5, 5], connection=conn)
        conn.commit()
    assert oq.get_task(dropped) is None
    assert oq.get_task(second).queue_name == "math"  # type: ignore[union-attr]
    assert oq.run_worker(run_scheduler=False).completed == 3
    results = [oq.get_result(i).result for i in (first, second, third)]  # type: ignore[union-attr]
    assert results == [3, 7, 10]


def test_a_sync_write_in_the_callers_transaction_from_a_coroutine_runs_inline(
    oq: OmniQ, app_engine: sa.Engine
) -> None:
    """A sync handler called from an async one (its event loop running on this
    thread) writes in its own sync transaction: that needs no loop. Before, OmniQ
    took the running loop for its own, dropped its open services to reopen there,
    and failed with a raw RuntimeError."""
    with app_engine.begin() as conn:  # OmniQ gets ready for callers' transactions
        first = oq.enqueue(app_tasks.add, [1, 1], connection=conn)

    async def handler() -> str:
        with app_engine.begin() as conn:
            conn.execute(orders.insert().values(item="pen"))
            return oq.enqueue(app_tasks.add, [2, 2], connection=conn)

    second = asyncio.run(handler())
    for task_id in (first, second):
        assert oq.get_task(task_id).status is TaskStatus.PENDING  # type: ignore[union-attr]
    assert _items(app_engine) == ["pen"]
    assert oq.enqueue(app_tasks.add, [3, 3])  # the app's own services still serve
