"""The seed's backends: a database and the getters of its components.

:class:`SQLiteBackend` is ``<base_dir>/<project_name>.db``; :class:`SQLBackend`
takes any engine URL (PostgreSQL too). A backend opens on first use (or
``initialize``) on OmniQ's portal thread and is shared by its components.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa

from omniq._portal import run_in_portal, run_sync
from omniq.db.engine import create_engine, default_sqlite_url, normalize_url, sqlite_writer_engine
from omniq.errors import ConfigurationError
from omniq.models import Settings
from omniq.models.config import EXECUTOR_KINDS
from omniq.services import Services
from omniq.storage import SQLiteEventStorage, SQLiteResultStorage, SQLiteTaskQueue
from omniq.worker import TaskRegistry
from omniq.workers import SQLiteWorker

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncConnection

__all__ = ["SQLBackend", "SQLiteBackend"]


class SQLBackend:
    """A database (any supported engine URL) with the seed's component getters.

    ``allow_modules`` names modules whose functions this backend's workers
    may run (besides ``@task`` functions and functions passed as objects).
    """

    def __init__(
        self,
        url: str,
        *,
        project_name: str = "omniq",
        settings: Settings | None = None,
        allow_modules: Sequence[str] = (),
    ) -> None:
        self.url = url
        self.project_name = project_name
        self.settings = settings or Settings()
        self.registry = TaskRegistry(allow_modules)
        self._services: Services | None = None
        self._opening: asyncio.Lock | None = None

    async def _open(self) -> Services:
        # Runs on the portal loop only, so the lock belongs to that loop.
        if self._opening is None:
            self._opening = asyncio.Lock()
        async with self._opening:
            if self._services is None:
                self._services = await Services.open_async(self.url, self.settings)
            return self._services

    async def _close(self) -> None:
        if self._services is not None:
            services, self._services = self._services, None
            await services.close_async()

    def initialize(self) -> None:
        """Connect and check (or migrate) the schema; idempotent (after :meth:`close`
        too: the components made before use the database opened again)."""
        run_sync(self._open)

    async def initialize_async(self) -> None:
        """Awaitable :meth:`initialize`."""
        if self._services is None:
            await run_in_portal(self._open)

    def close(self) -> None:
        """Close the database connections."""
        run_sync(self._close)

    async def close_async(self) -> None:
        """Awaitable :meth:`close`."""
        await run_in_portal(self._close)

    @contextlib.asynccontextmanager
    async def get_connection_async(self) -> AsyncIterator[AsyncConnection]:
        """A connection of your own to this database, in a transaction: committed
        when the block ends, rolled back if it raises (the schema is created first).

        It is opened on the calling event loop and closed after the block; OmniQ's
        own connections are not lent out. Write OmniQ's tables through its API:
        this is for your own statements (and ``enqueue(..., connection=conn)``).
        """
        await self.initialize_async()
        # Lent to the application: its statements go through SQLAlchemy (own=False).
        engine = create_engine(self.url, self.settings, own=False, poolclass=sa.pool.NullPool)
        try:
            async with engine.begin() as conn:
                yield conn
        finally:
            await engine.dispose()

    @contextlib.contextmanager
    def get_connection(self) -> Iterator[sa.Connection]:
        """Blocking :meth:`get_connection_async`: a sync SQLAlchemy connection in a
        transaction (SQLite through Python's ``sqlite3``; PostgreSQL needs ``psycopg``)."""
        self.initialize()
        engine = _sync_engine(self.url, self.settings)
        try:
            with engine.begin() as conn:
                yield conn
        finally:
            engine.dispose()

    def __enter__(self) -> SQLBackend:
        self.initialize()
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    @property
    def services(self) -> Services:
        """The services underneath (initializes on first use, and after :meth:`close`)."""
        services = self._services
        return run_sync(self._open) if services is None else services

    async def services_async(self) -> Services:
        """Awaitable :attr:`services`."""
        services = self._services
        return await run_in_portal(self._open) if services is None else services

    @property
    def open_services(self) -> Services | None:
        """The services open now (None before first use and after :meth:`close`)."""
        return self._services

    def get_task_queue(self, queues: Sequence[str] | None = None) -> SQLiteTaskQueue:
        """A task queue serving ``queues`` (``["default"]`` when None)."""
        return SQLiteTaskQueue(self, queues)

    def get_result_storage(self) -> SQLiteResultStorage:
        """The result storage."""
        return SQLiteResultStorage(self)

    def get_event_storage(self) -> SQLiteEventStorage:
        """The event storage."""
        return SQLiteEventStorage(self)

    def get_worker(
        self, worker_type: str = "async", queues: Sequence[str] | None = None, **options: Any
    ) -> SQLiteWorker:
        """A worker of ``queues``: ``worker_type`` is async, thread or process (the executor)."""
        return SQLiteWorker(
            self.get_task_queue(queues),
            self.get_result_storage(),
            self.get_event_storage(),
            executor=check_worker_type(worker_type),
            **options,
        )


class SQLiteBackend(SQLBackend):
    """The embedded default: the SQLite file ``<base_dir>/<project_name>.db``."""

    def __init__(
        self,
        project_name: str,
        base_dir: str | os.PathLike[str] = "./omniq_data",
        **kwargs: Any,
    ) -> None:
        super().__init__(
            default_sqlite_url(project_name, base_dir), project_name=project_name, **kwargs
        )
        self.base_dir = Path(base_dir)
        self.db_path = self.base_dir / f"{project_name}.db"


def check_worker_type(worker_type: str) -> str:
    """``worker_type`` if it names an executor, else :class:`ConfigurationError`."""
    if worker_type not in EXECUTOR_KINDS:
        raise ConfigurationError(
            f"unknown worker type {worker_type!r}: use one of {', '.join(EXECUTOR_KINDS)}"
        )
    return worker_type


def _sync_engine(url: str, settings: Settings) -> sa.Engine:
    """A sync engine on the database of ``url`` (one connection, closed on dispose)."""
    parsed = normalize_url(url)
    if parsed.get_backend_name() == "sqlite":
        return sqlite_writer_engine(parsed, settings, own=False)  # lent to the application
    try:
        import psycopg  # noqa: F401
    except ImportError:
        raise ConfigurationError(
            "get_connection() on PostgreSQL needs the psycopg driver "
            "(pip install 'psycopg[binary]'); get_connection_async() needs nothing more"
        ) from None
    return sa.create_engine(parsed.set(drivername="postgresql+psycopg"), poolclass=sa.pool.NullPool)
