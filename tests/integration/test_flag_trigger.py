"""The trigger that makes a database ``omniq migrate-db`` flagged refuse new tasks.

On SQLite it exists only while the flag does (revision 0013): a per-row
trigger that checked the flag cost every enqueue of every unflagged
database. These tests pin what a user relies on, on both engines: a flagged
source refuses every enqueue path, an unflagged one (never flagged, or
unflagged again, or upgraded from revision 0012 either way) takes tasks.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

import anyio
import pytest
import sqlalchemy as sa
from sqlalchemy.orm import Session

from omniq import AsyncOmniQ, OmniQ, Settings
from omniq.db import migrate
from omniq.db.engine import create_engine
from omniq.errors import DatabaseMigrated
from omniq.migrate_db import unflag_async
from omniq.repositories.db_migration import SOURCE, MigrationMark, write_mark
from tests.caller_tx_app import APP_METADATA, orders, sync_url

pytestmark = pytest.mark.anyio

FUNC = "builtins:print"


async def _flag(url: str) -> None:
    engine = create_engine(url)
    try:
        now = datetime.now(UTC)
        mark = MigrationMark(
            role=SOURCE,
            migration_id="m1",
            peer="postgresql://elsewhere/db",
            state="done",
            cutoff=now,
            started_at=now,
        )
        async with engine.begin() as conn:
            await conn.run_sync(lambda sync: write_mark(sync, mark))
    finally:
        await engine.dispose()


async def _triggers(url: str) -> list[str]:
    """SQLite: the triggers on omniq_tasks (PostgreSQL: not asked)."""
    engine = create_engine(url)
    try:
        async with engine.connect() as conn:
            rows = await conn.execute(
                sa.text(
                    "SELECT name FROM sqlite_master WHERE type = 'trigger' "
                    "AND tbl_name = 'omniq_tasks'"
                )
            )
            return [row[0] for row in rows]
    finally:
        await engine.dispose()


async def _upgrade(url: str, revision: str) -> None:
    await asyncio.to_thread(migrate.upgrade, url, revision)


async def _takes_tasks(url: str) -> bool:
    """True when an enqueue and a batch enqueue land; False when every path is refused."""
    async with AsyncOmniQ(url=url, settings=Settings(auto_migrate=False)) as oq:
        refused: list[DatabaseMigrated] = []
        for enqueue in (
            lambda: oq.enqueue_async(FUNC, ["one"]),
            lambda: oq.enqueue_many_async([oq.build_task(FUNC, ["two"])]),
            lambda: oq.enqueue_async(FUNC, ["three"], unique_key="k"),
        ):
            try:
                await enqueue()
            except DatabaseMigrated as exc:
                refused.append(exc)
        assert len(refused) in (0, 3), f"only some enqueue paths were refused: {refused}"
        # The error names where the queue went (read from the flag).
        assert all(exc.target == "postgresql://elsewhere/db" for exc in refused)
        return not refused


async def test_a_flag_refuses_enqueues_and_unflag_lets_them_in(own_migrated_db_url: str) -> None:
    url = own_migrated_db_url
    sqlite = url.startswith("sqlite")
    if sqlite:
        assert await _triggers(url) == []  # nothing runs per inserted row
    assert await _takes_tasks(url)
    await _flag(url)
    await _flag(url)  # flagging again (a resumed migration) is harmless
    assert not await _takes_tasks(url)
    assert await unflag_async(url)
    if sqlite:
        assert await _triggers(url) == []
    assert await _takes_tasks(url)


async def test_upgrading_from_0012_keeps_a_flagged_source_refusing(empty_db_url: str) -> None:
    url = empty_db_url
    await _upgrade(url, "0012")
    await _flag(url)
    await _upgrade(url, "head")
    assert not await _takes_tasks(url)
    assert await unflag_async(url)
    assert await _takes_tasks(url)


async def test_upgrading_an_unflagged_0012_database_drops_the_per_row_check(
    empty_db_url: str,
) -> None:
    url = empty_db_url
    await _upgrade(url, "0012")
    await _upgrade(url, "head")
    if url.startswith("sqlite"):
        assert await _triggers(url) == []
    assert await _takes_tasks(url)
    # Back to 0012 (its per-row trigger returns on SQLite) and up again: still open.
    await asyncio.to_thread(migrate.downgrade, url, "0012")
    if url.startswith("sqlite"):
        assert await _triggers(url) == ["omniq_tasks_refuse_if_migrated"]
    await _flag(url)
    await _upgrade(url, "head")
    assert not await _takes_tasks(url)


def test_an_enqueue_in_the_callers_sync_transaction_names_where_the_queue_went(
    own_migrated_db_url: str,
) -> None:
    """On a flagged database, ``connection=`` / ``session=`` of the sync API raise the
    named DatabaseMigrated (they raised an untyped RuntimeError), and the caller's
    own rows still commit."""
    url = own_migrated_db_url
    anyio.run(_flag, url)
    engine = sa.create_engine(sync_url(url))
    APP_METADATA.create_all(engine)
    try:
        with OmniQ(url=url) as oq:
            with engine.begin() as conn:
                conn.execute(orders.insert().values(item="connection"))
                with pytest.raises(DatabaseMigrated) as raised:
                    oq.enqueue(FUNC, ["x"], connection=conn)
                assert raised.value.target == "postgresql://elsewhere/db"
            with Session(engine) as session:
                session.execute(orders.insert().values(item="session"))
                with pytest.raises(DatabaseMigrated) as raised:
                    oq.enqueue(FUNC, ["x"], session=session)
                assert raised.value.target == "postgresql://elsewhere/db"
                session.commit()
            assert oq.list_tasks() == []
        with engine.connect() as conn:
            items = list(conn.execute(sa.select(orders.c.item).order_by(orders.c.id)).scalars())
        assert items == ["connection", "session"]
    finally:
        APP_METADATA.drop_all(engine)
        engine.dispose()
