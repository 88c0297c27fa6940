"""``Settings(db_schema=...)``: OmniQ in a PostgreSQL schema of its own; refused on SQLite.

Every table, index, trigger function and OmniQ's version table live in the
schema; the default (``public``) schema holds none of them; the whole path
(enqueue, a worker running tasks, results, events, the NOTIFY wake-up) works
there, and OmniQ's ``alembic check`` is clean.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

import pytest
import sqlalchemy as sa

from omniq import AsyncOmniQ, Settings, TaskStatus
from omniq.config import OmniQConfig
from omniq.db import migrate
from omniq.db.engine import create_engine, schema_of
from omniq.db.migrate import VERSION_TABLE
from omniq.db.schema import metadata
from omniq.db.schema import tasks as tasks_table
from omniq.errors import ConfigurationError, ValidationError
from omniq.services import Services, Storage
from tests import app_tasks
from tests.conftest import PostgresDatabases, require_postgres

REPO = Path(__file__).resolve().parents[2]
SCHEMA = "omniq_jobs"
OMNIQ_TABLES = set(metadata.tables)
DEADLINE = 30.0


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OMNIQ_")}
    env.pop("PYTHONPATH", None)
    env.update(extra)
    return env


def _run(args: list[str], cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        args, cwd=cwd, env=env, capture_output=True, text=True, timeout=300, check=False
    )


@pytest.fixture
def pg_url(postgres_databases: PostgresDatabases | None) -> str:
    """A new, empty PostgreSQL database (no schema, nothing migrated)."""
    return require_postgres(postgres_databases).create(migrated=False)


async def _catalog(url: str) -> dict[str, set[str]]:
    """OmniQ-looking objects by schema: tables, and functions named omniq_*."""
    engine = create_engine(url)
    try:
        async with engine.connect() as conn:
            tables = (
                await conn.execute(
                    sa.text(
                        "SELECT table_schema, table_name FROM information_schema.tables "
                        "WHERE table_schema NOT IN ('pg_catalog', 'information_schema')"
                    )
                )
            ).all()
            functions = (
                await conn.execute(
                    sa.text(
                        "SELECT n.nspname, p.proname FROM pg_catalog.pg_proc p "
                        "JOIN pg_catalog.pg_namespace n ON n.oid = p.pronamespace "
                        "WHERE p.proname LIKE 'omniq%'"
                    )
                )
            ).all()
    finally:
        await engine.dispose()
    found: dict[str, set[str]] = {}
    for schema, name in [*tables, *functions]:
        found.setdefault(schema, set()).add(name)
    return found


@pytest.mark.anyio
async def test_the_whole_path_runs_in_the_schema(pg_url: str) -> None:
    settings = Settings(db_schema=SCHEMA, auto_migrate=True, default_max_retries=0)
    async with AsyncOmniQ(url=pg_url, settings=settings) as oq:
        a = await oq.enqueue_async(app_tasks.add, [1, 2])
        b = await oq.enqueue_async(app_tasks.async_double, {"x": 21}, depends_on=[a])
        bad = await oq.enqueue_async(app_tasks.explode, max_retries=0)
        await oq.start_worker_async(concurrency=2, poll_interval=0.05)
        result = await oq.get_result_async(b, wait=True, timeout=DEADLINE)
        assert result is not None and result.result == 42
        failed = await oq.get_result_async(bad, wait=True, timeout=DEADLINE)
        assert failed is not None and failed.error_type == "RuntimeError"
        await oq.stop_worker_async()
        assert (await oq.get_task_async(a)).status is TaskStatus.COMPLETED  # type: ignore[union-attr]
        events = await oq.get_events_async(task_id=b)
        assert {"enqueued", "completed"} <= {e.event_type.value for e in events}
        stats = await oq.stats_async()
        assert stats["task_totals"] == {"completed": 2, "failed": 1}

    catalog = await _catalog(pg_url)
    assert catalog[SCHEMA] == OMNIQ_TABLES | {
        VERSION_TABLE,
        "omniq_notify_work",
        "omniq_notify_work_inserted",
        "omniq_refuse_if_migrated",
    }
    assert set(catalog) == {SCHEMA}, "the public schema holds no OmniQ object"
    assert await asyncio.to_thread(migrate.current, pg_url) is None  # nothing in public
    assert await asyncio.to_thread(migrate.current, pg_url, schema=SCHEMA) == migrate.head()

    # OmniQ's own Alembic environment and the omniq command see the schema and find it clean.
    check = _run(
        [
            *(sys.executable, "-m", "alembic", "-c", str(REPO / "alembic.ini")),
            *("-x", f"url={pg_url}", "-x", f"schema={SCHEMA}", "check"),
        ],
        cwd=REPO,
        env=_env(),
    )
    assert check.returncode == 0, check.stderr
    assert "No new upgrade operations detected" in check.stdout + check.stderr
    cli = _run(
        [sys.executable, "-m", "omniq", "db", "check", "--url", pg_url],
        cwd=REPO,
        env=_env(OMNIQ_DB_SCHEMA=SCHEMA),
    )
    assert cli.returncode == 0, cli.stdout + cli.stderr


@pytest.mark.anyio
async def test_a_task_written_elsewhere_wakes_a_listener_through_the_schemas_trigger(
    pg_url: str,
) -> None:
    settings = Settings(db_schema=SCHEMA)
    await asyncio.to_thread(migrate.upgrade, pg_url, schema=SCHEMA)
    svc = await Services.open_async(pg_url, settings)
    try:
        async with svc.storage.listen_for_work() as listening:
            assert listening is True
            woke = asyncio.ensure_future(svc.storage.notifier.wait(DEADLINE))
            await asyncio.sleep(0)  # one turn of the loop: the waiter is registered
            # Another "process": its own engine, inserting a pending task in the schema.
            task = svc.queue.build_task("tests.worker_tasks:add_sync", [1, 2])
            other = create_engine(pg_url, settings)
            try:
                async with other.begin() as conn:
                    await conn.run_sync(
                        svc.storage.tasks.insert_rows, [svc.storage.tasks.to_row(task)]
                    )
            finally:
                await other.dispose()
            assert await woke is True, "the trigger in the schema sent no NOTIFY"
    finally:
        await svc.close_async()
    engine = create_engine(pg_url, settings)
    try:
        async with engine.connect() as conn:
            count = (
                await conn.execute(sa.select(sa.func.count()).select_from(tasks_table))
            ).scalar()
    finally:
        await engine.dispose()
    assert count == 1


@pytest.mark.anyio
async def test_an_engine_of_the_application_gets_the_schema_added(pg_url: str) -> None:
    await asyncio.to_thread(migrate.upgrade, pg_url, schema=SCHEMA)
    own = create_engine(pg_url)  # the application's engine: no schema_translate_map
    assert schema_of(own) is None
    try:
        async with AsyncOmniQ(url=own, settings=Settings(db_schema=SCHEMA)) as oq:
            task_id = await oq.enqueue_async(app_tasks.add, [2, 3])
        async with AsyncOmniQ(url=pg_url, settings=Settings(db_schema=SCHEMA)) as oq:
            assert (await oq.get_task_async(task_id)) is not None
        assert schema_of(own) is None  # the application's engine itself is unchanged
    finally:
        await own.dispose()


@pytest.mark.anyio
async def test_an_enqueue_in_the_applications_transaction_writes_into_the_schema(
    pg_url: str,
) -> None:
    """``connection=`` of an application's engine without the schema: OmniQ's
    statements on it use the schema, and the connection is left as it was."""
    await asyncio.to_thread(migrate.upgrade, pg_url, schema=SCHEMA)
    app = create_engine(pg_url)
    try:
        async with AsyncOmniQ(url=pg_url, settings=Settings(db_schema=SCHEMA)) as oq:
            async with app.connect() as conn:
                await conn.begin()
                task_id = await oq.enqueue_async(app_tasks.add, [2, 3], connection=conn)
                options = conn.sync_connection.get_execution_options()  # type: ignore[union-attr]
                assert options.get("schema_translate_map") is None
                await conn.commit()
            task = await oq.get_task_async(task_id)
            assert task is not None and task.status is TaskStatus.PENDING
    finally:
        await app.dispose()


def test_omniq_db_upgrade_creates_the_schema_from_the_environment(
    pg_url: str, tmp_path: Path
) -> None:
    up = _run(
        [sys.executable, "-m", "omniq", "db", "upgrade", "--url", pg_url],
        cwd=tmp_path,
        env=_env(OMNIQ_DB_SCHEMA=SCHEMA),
    )
    assert up.returncode == 0, up.stdout + up.stderr
    catalog = asyncio.run(_catalog(pg_url))
    assert set(catalog) == {SCHEMA}
    assert catalog[SCHEMA] >= OMNIQ_TABLES
    down = _run(
        [
            *(sys.executable, "-m", "alembic", "-c", str(REPO / "alembic.ini")),
            *("-x", f"url={pg_url}", "downgrade", "base"),
        ],
        cwd=tmp_path,
        env=_env(OMNIQ_DB_SCHEMA=SCHEMA),
    )
    assert down.returncode == 0, down.stderr
    assert asyncio.run(_catalog(pg_url)) == {SCHEMA: {VERSION_TABLE}}


# --- SQLite refuses it; the name is checked ----------------------------------------------------


def test_sqlite_refuses_a_schema(tmp_path: Path) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path / 'q.db'}"
    with pytest.raises(ConfigurationError, match="db_schema='jobs' needs PostgreSQL"):
        create_engine(url, Settings(db_schema="jobs"))
    with pytest.raises(ConfigurationError, match="needs PostgreSQL"):
        migrate.upgrade(url, schema="jobs")
    engine = create_engine(url)
    try:
        with pytest.raises(ConfigurationError, match="SQLite has no schemas"):
            Storage(engine, Settings(db_schema="jobs"))
    finally:
        asyncio.run(engine.dispose())
    cli = _run(
        [sys.executable, "-m", "omniq", "db", "upgrade", "--url", url],
        cwd=tmp_path,
        env=_env(OMNIQ_DB_SCHEMA="jobs"),
    )
    assert cli.returncode != 0
    assert "needs PostgreSQL" in cli.stderr
    assert not (tmp_path / "q.db").exists() or (tmp_path / "q.db").stat().st_size == 0


@pytest.mark.parametrize(
    "name", ["", "1jobs", "jobs-q", "jobs; DROP TABLE x", "pg_jobs", "information_schema", "a" * 64]
)
def test_a_schema_name_must_be_a_plain_identifier(name: str) -> None:
    with pytest.raises(ValidationError, match="db_schema"):
        Settings(db_schema=name)


def test_the_schema_comes_from_the_environment() -> None:
    assert OmniQConfig.from_env({"OMNIQ_DB_SCHEMA": "jobs"}).settings.db_schema == "jobs"
    assert OmniQConfig.from_env({"OMNIQ_DB_SCHEMA": ""}).settings.db_schema is None
    assert OmniQConfig.from_env({}).settings.db_schema is None
    assert OmniQConfig.from_dict({"db_schema": "jobs"}).settings.db_schema == "jobs"
    with pytest.raises(ValidationError, match="db_schema"):
        OmniQConfig.from_env({"OMNIQ_DB_SCHEMA": "no-dashes"})
