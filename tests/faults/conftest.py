"""Fixtures: a PostgreSQL database behind a FaultProxy, a SQLite database on a small
disk, and ``fault`` (indirectly parametrized): one of them behind inject()/heal()."""

from __future__ import annotations

import asyncio
import logging
import shutil
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import anyio
import pytest
import sqlalchemy as sa

from omniq.db.engine import create_engine
from omniq.errors import DatabaseError, StorageFull
from tests.conftest import PostgresDatabases, require_postgres
from tests.faults.injectors import SmallDisk, local_cluster, restart_postgres
from tests.faults.proxy import FaultProxy

# A restart breaks every other PostgreSQL session on the server, so that case is
# ``serial``: `make test` runs it alone, after the parallel part of the suite.
FAULTS = [
    "sqlite-full",
    "postgres-refused",
    pytest.param("postgres-restart", marks=pytest.mark.serial),
]


class LogTap(logging.Handler):
    """Counts the warnings and errors OmniQ (and asyncio) log: how often a fault was met."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.count = 0

    def emit(self, record: logging.LogRecord) -> None:
        self.count += 1


@pytest.fixture
def tap() -> Iterator[LogTap]:
    handler = LogTap()
    loggers = [logging.getLogger("omniq"), logging.getLogger("asyncio")]
    for logger in loggers:
        logger.addHandler(handler)
    yield handler
    for logger in loggers:
        logger.removeHandler(handler)


@pytest.fixture
def pg_proxy(postgres_databases: PostgresDatabases | None) -> Iterator[tuple[FaultProxy, str, str]]:
    """A new migrated PostgreSQL database behind a FaultProxy: (proxy, url, direct url)."""
    direct = sa.make_url(require_postgres(postgres_databases).create(migrated=True))
    with FaultProxy((direct.host or "127.0.0.1", direct.port or 5432)) as proxy:
        url = direct.set(host="127.0.0.1", port=proxy.port)
        yield proxy, url.render_as_string(False), direct.render_as_string(False)


@pytest.fixture
def small_sqlite(tmp_path: Path, sqlite_template: Path) -> Iterator[tuple[SmallDisk, Path]]:
    """A migrated SQLite database on a 32 MB tmpfs: (disk, database path); unmounted after."""
    disk = SmallDisk(tmp_path / "small")
    reason = disk.mount()
    if reason is not None:
        pytest.skip(f"no size-limited disk for SQLite: {reason}")
    try:
        path = disk.path / "omniq.db"
        shutil.copyfile(sqlite_template, path)
        path.chmod(0o600)
        yield disk, path
    finally:
        disk.unmount()


Step = Callable[[], Awaitable[object]]


@dataclass
class Fault:
    """The worker uses ``url`` (behind the fault); the test reads on ``observer_url``."""

    kind: str
    url: str
    observer_url: str
    inject: Step
    heal: Step
    #: What a write raises while the fault lasts (None: not caught in the act).
    write_error: type[Exception] | None
    #: True: the fault lasts from inject() to heal(); False: inject() is the whole outage.
    lasting: bool = True


async def _clients(base: sa.URL) -> list[str | None]:
    """The databases of the server's client sessions (but this one)."""
    engine = create_engine(base.set(database="postgres"))
    try:
        async with engine.connect() as conn:
            rows = await conn.exec_driver_sql(
                "SELECT datname FROM pg_stat_activity "
                "WHERE backend_type = 'client backend' AND pid <> pg_backend_pid()"
            )
            return [row[0] for row in rows]
    finally:
        await engine.dispose()


@pytest.fixture
def fault(request: pytest.FixtureRequest) -> Fault:
    kind: str = request.param
    if kind == "sqlite-full":
        disk, path = request.getfixturevalue("small_sqlite")
        url = f"sqlite+aiosqlite:///{path}"

        async def fill() -> None:
            await anyio.to_thread.run_sync(disk.fill, path)

        async def free() -> None:
            await anyio.to_thread.run_sync(disk.free)

        return Fault(kind, url, url, fill, free, StorageFull)
    if kind == "postgres-refused":
        proxy, url, direct_url = request.getfixturevalue("pg_proxy")

        async def refuse() -> None:
            proxy.refuse()
            proxy.drop()

        async def resume() -> None:
            proxy.resume()

        return Fault(kind, url, direct_url, refuse, resume, DatabaseError)
    assert kind == "postgres-restart", kind
    dbs = require_postgres(request.getfixturevalue("postgres_databases"))
    cluster = local_cluster(dbs.base.render_as_string(hide_password=False))
    if isinstance(cluster, str):
        pytest.skip(f"cannot restart PostgreSQL: {cluster}")
    if others := [d for d in asyncio.run(_clients(dbs.base)) if d not in dbs.created]:
        pytest.skip(f"other clients use the server (databases {sorted(set(others))}): no restart")
    url = dbs.create(migrated=True)

    async def restart() -> None:
        await anyio.to_thread.run_sync(restart_postgres, url)

    async def nothing() -> None:
        return None

    return Fault(kind, url, url, restart, nothing, None, lasting=False)
