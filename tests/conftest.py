"""Shared fixtures: every integration test runs on each engine URL it is given.

- SQLite: a fresh database file in tmp_path (copied from a template migrated once).
- PostgreSQL: when OMNIQ_TEST_POSTGRES_URL is set (CI sets it), a database of
  its own for this test run, migrated once, emptied before each test, and
  dropped at the end. Without the variable those tests skip with a reason.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from omniq.db import migrate
from omniq.db.engine import create_engine, normalize_url
from omniq.db.schema import metadata

POSTGRES_ENV = "OMNIQ_TEST_POSTGRES_URL"
ENGINES = ["sqlite", "postgres"]


@pytest.fixture(scope="session")
def anyio_backend() -> str:
    return "asyncio"


async def _admin(url: sa.URL, sql: str) -> None:
    engine = create_engine(url.set(database="postgres"), isolation_level="AUTOCOMMIT")
    try:
        async with engine.connect() as conn:
            await conn.exec_driver_sql(sql)
    finally:
        await engine.dispose()


class PostgresDatabases:
    """Creates throwaway PostgreSQL databases and drops them at the end."""

    def __init__(self, base: str) -> None:
        self.base = normalize_url(base)
        self.created: list[str] = []

    def create(self, *, migrated: bool) -> str:
        name = f"omniq_test_{uuid.uuid4().hex[:12]}"
        asyncio.run(_admin(self.base, f'CREATE DATABASE "{name}"'))
        self.created.append(name)
        url = self.base.set(database=name).render_as_string(hide_password=False)
        if migrated:
            migrate.upgrade(url)
        return url

    def drop_all(self) -> None:
        for name in self.created:
            asyncio.run(_admin(self.base, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@pytest.fixture(scope="session")
def postgres_databases() -> Iterator[PostgresDatabases | None]:
    base = os.environ.get(POSTGRES_ENV)
    if not base:
        yield None
        return
    dbs = PostgresDatabases(base)
    try:
        yield dbs
    finally:
        dbs.drop_all()


@pytest.fixture(scope="session")
def postgres_session_url(postgres_databases: PostgresDatabases | None) -> str | None:
    """One migrated PostgreSQL database shared by the run (emptied per test)."""
    return None if postgres_databases is None else postgres_databases.create(migrated=True)


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A SQLite file migrated to head once; tests copy it."""
    path = tmp_path_factory.mktemp("template") / "template.db"
    migrate.upgrade(f"sqlite+aiosqlite:///{path}")
    return path


def _truncate(url: str) -> None:
    async def run() -> None:
        engine = create_engine(url)
        try:
            async with engine.begin() as conn:
                names = ", ".join(f'"{t.name}"' for t in metadata.sorted_tables)
                await conn.exec_driver_sql(f"TRUNCATE {names} RESTART IDENTITY CASCADE")
        finally:
            await engine.dispose()

    asyncio.run(run())


def require_postgres(postgres_databases: PostgresDatabases | None) -> PostgresDatabases:
    """Skip (with the reason) when no PostgreSQL server was given."""
    if postgres_databases is None:
        if os.environ.get("OMNIQ_REQUIRE_POSTGRES"):
            pytest.fail(f"OMNIQ_REQUIRE_POSTGRES is set but {POSTGRES_ENV} is not")
        pytest.skip(
            f"PostgreSQL tests need {POSTGRES_ENV} (e.g. postgresql://postgres@127.0.0.1/test)"
        )
    return postgres_databases


@pytest.fixture(params=ENGINES)
def db_url(
    request: pytest.FixtureRequest,
    tmp_path: Path,
    sqlite_template: Path,
    postgres_databases: PostgresDatabases | None,
    postgres_session_url: str | None,
) -> str:
    """A migrated, empty database URL per test, on each engine."""
    if request.param == "sqlite":
        path = tmp_path / "omniq.db"
        shutil.copyfile(sqlite_template, path)
        path.chmod(0o600)
        return f"sqlite+aiosqlite:///{path}"
    require_postgres(postgres_databases)
    assert postgres_session_url is not None
    _truncate(postgres_session_url)
    return postgres_session_url


@pytest.fixture(params=ENGINES)
def empty_db_url(
    request: pytest.FixtureRequest, tmp_path: Path, postgres_databases: PostgresDatabases | None
) -> str:
    """A brand-new, never-migrated database URL per test, on each engine."""
    if request.param == "sqlite":
        return f"sqlite+aiosqlite:///{tmp_path / 'fresh.db'}"
    return require_postgres(postgres_databases).create(migrated=False)


@pytest.fixture
async def engine(db_url: str) -> AsyncIterator[AsyncEngine]:
    """An AsyncEngine on the migrated test database."""
    eng = create_engine(db_url)
    try:
        yield eng
    finally:
        await eng.dispose()


@pytest.fixture(params=ENGINES)
def own_migrated_db_url(
    request: pytest.FixtureRequest,
    tmp_path: Path,
    sqlite_template: Path,
    postgres_databases: PostgresDatabases | None,
) -> str:
    """A migrated database that no other test shares (a new one per test), on each engine."""
    if request.param == "sqlite":
        path = tmp_path / "own.db"
        shutil.copyfile(sqlite_template, path)
        path.chmod(0o600)
        return f"sqlite+aiosqlite:///{path}"
    return require_postgres(postgres_databases).create(migrated=True)
