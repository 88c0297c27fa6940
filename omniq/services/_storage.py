"""The shared state of the services: engine, repositories, settings, wake-ups."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import sqlite3
import threading
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any, ClassVar, TypeVar, cast

import sqlalchemy as sa
import sqlalchemy.exc as sa_exc
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, AsyncTransaction
from sqlalchemy.pool import QueuePool

from omniq.db.engine import create_engine, dialect_of, normalize_url, read_engine
from omniq.db.migrate import ensure_schema
from omniq.models import Settings
from omniq.repositories import (
    EventRepository,
    ResultRepository,
    ScheduleRepository,
    TaskRepository,
)
from omniq.repositories._base import PayloadCodec, is_locked_error, translate_errors
from omniq.repositories.hot import SQLiteHotPaths
from omniq.repositories.locks import LockRepository
from omniq.serialization import SerializerRegistry

__all__ = ["Notifier", "Storage"]

log = logging.getLogger("omniq.db")

#: PostgreSQL channel on which new pending work is announced (see revision 0004).
WORK_CHANNEL = "omniq_work"

T = TypeVar("T")


class Notifier:
    """In-process wake-ups: waiters are released when a writer signals a change.

    Workers and result waiters in this process wake at once instead of
    waiting for their next poll; other processes poll. One notifier exists
    per database URL per process, so every Storage on the same database
    shares it, whichever event loop (or thread) each runs on.
    """

    _by_key: ClassVar[dict[str, Notifier]] = {}
    _registry_lock: ClassVar[threading.Lock] = threading.Lock()

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._waiters: set[tuple[asyncio.AbstractEventLoop, asyncio.Event]] = set()
        #: Called with a task id when a running task's cancellation is requested.
        self.cancel_listeners: set[Callable[[str], None]] = set()

    @classmethod
    def for_key(cls, key: str) -> Notifier:
        """The process-wide notifier for ``key`` (a database URL)."""
        with cls._registry_lock:
            notifier = cls._by_key.get(key)
            if notifier is None:
                notifier = cls._by_key[key] = Notifier()
            return notifier

    def notify(self) -> None:
        """Wake every current waiter (thread-safe)."""
        with self._lock:
            waiters, self._waiters = self._waiters, set()
        for loop, event in waiters:
            try:
                running = asyncio.get_running_loop()
            except RuntimeError:
                running = None
            if loop is running:
                event.set()
            elif not loop.is_closed():
                loop.call_soon_threadsafe(event.set)

    async def wait(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds for a notification; True if one came."""
        entry = (asyncio.get_running_loop(), asyncio.Event())
        with self._lock:
            self._waiters.add(entry)
        try:
            await asyncio.wait_for(entry[1].wait(), timeout)
        except TimeoutError:
            return False
        finally:
            with self._lock:
                self._waiters.discard(entry)
        return True


class Storage:
    """Engine, dialect strategy, repositories and settings shared by the services.

    Services own transactions: :meth:`write` for a write transaction (on
    SQLite it begins IMMEDIATE), :meth:`read` for a read-only one.
    """

    def __init__(
        self,
        engine: AsyncEngine,
        settings: Settings | None = None,
        *,
        owns_engine: bool = False,
        serializers: SerializerRegistry | None = None,
    ) -> None:
        self.engine = engine
        self.settings = settings or Settings()
        self.owns_engine = owns_engine
        self.dialect = dialect_of(engine)
        self.serializers = serializers or SerializerRegistry(
            default=self.settings.serializer, allow_pickle=self.settings.allow_pickle
        )
        codec = PayloadCodec(self.serializers, self.settings.signing_key)
        self.tasks = TaskRepository(self.dialect, codec)
        self.schedules = ScheduleRepository(self.dialect, codec)
        self.results = ResultRepository(self.dialect, codec)
        self.events = EventRepository(self.dialect)
        self.locks = LockRepository(self.dialect)
        #: One-hop transactions for the queue's hot paths (SQLite only).
        self.hot = (
            SQLiteHotPaths(
                engine.sync_engine.dialect, self.tasks.claim_by_queue, self.tasks.claim_any
            )
            if self.dialect.name == "sqlite"
            else None
        )
        self.notifier = Notifier.for_key(engine.url.render_as_string(hide_password=True))
        self._reader = read_engine(engine)
        self._opened = False
        self._writer: AsyncConnection | None = None
        #: aiosqlite's connection under ``_writer`` (one-hop bodies run on its thread).
        self._driver: Any = None
        self._write_lock: asyncio.Lock | None = None

    @classmethod
    def from_url(
        cls, url: str | sa.URL, settings: Settings | None = None, **engine_kwargs: Any
    ) -> Storage:
        """A Storage that owns a new engine for ``url``."""
        settings = settings or Settings()
        return cls(create_engine(url, settings, **engine_kwargs), settings, owns_engine=True)

    @property
    def url(self) -> sa.URL:
        """The engine URL."""
        return normalize_url(self.engine.url)

    async def open(self) -> None:
        """Check (or bring) the schema at head; idempotent."""
        if self._opened:
            return
        auto = self.settings.auto_migrate
        if auto is None:
            auto = self.dialect.name == "sqlite"
        await ensure_schema(self.engine, auto_migrate=auto)
        self._opened = True

    async def close(self) -> None:
        """Dispose the engine if this Storage created it."""
        if self._writer is not None:
            writer, self._writer = self._writer, None
            await writer.close()
        if self.owns_engine:
            await self.engine.dispose()

    @asynccontextmanager
    async def listen_for_work(self) -> AsyncIterator[bool]:
        """While open, wake this process's waiters when other processes make work.

        On PostgreSQL the tasks table's triggers (revision 0004) send ``NOTIFY
        omniq_work`` when a statement makes tasks pending; this holds one
        connection that LISTENs and wakes :attr:`notifier`. Yields whether it
        listens: on SQLite, or if LISTEN fails, it does nothing and polling
        (always on) finds the work.
        """
        if self.dialect.name != "postgresql":
            yield False
            return
        pool = self.engine.sync_engine.pool
        if (
            isinstance(pool, QueuePool)
            and pool.size() > 0  # 0: no limit
            and pool._max_overflow >= 0  # -1: no limit
            and pool.size() + pool._max_overflow < 3
        ):
            # Holding one of so few connections would starve the worker's own writes.
            log.warning("connection pool too small to LISTEN for new work: workers poll instead")
            yield False
            return
        conn: AsyncConnection | None = None
        driver: Any = None
        try:
            conn = await self.engine.connect()
            driver = (await conn.get_raw_connection()).driver_connection
            await driver.add_listener(WORK_CHANNEL, self._on_work)
        except Exception as exc:
            log.warning("cannot LISTEN for new work (workers poll instead): %s", exc)
            if conn is not None:
                with contextlib.suppress(Exception):
                    await conn.close()
            yield False
            return
        try:
            yield True
        finally:
            try:
                with contextlib.suppress(Exception):
                    await driver.remove_listener(WORK_CHANNEL, self._on_work)
            finally:
                with contextlib.suppress(Exception):
                    await conn.close()

    def _on_work(self, *_: Any) -> None:
        # asyncpg calls this on the loop that owns the listening connection.
        self.notifier.notify()

    def announce_cancel(self, task_id: str) -> None:
        """Tell this process's workers on the database that ``task_id`` should stop."""
        for listener in list(self.notifier.cancel_listeners):
            listener(task_id)

    @asynccontextmanager
    async def write(self) -> AsyncIterator[AsyncConnection]:
        """One write transaction (committed on success, rolled back on error).

        On SQLite, where writers serialize on the database anyway, writers of
        this process queue on an asyncio lock and share one held connection:
        no pool round trip per transaction, and no busy-waiting inside SQLite
        for a lock another coroutine of this process holds.
        """
        if not self.dialect.single_writer:
            with translate_errors("write"):
                async with self.engine.begin() as conn:
                    yield conn
            return
        async with self._lock():
            with translate_errors("write"):
                writer = await self._open_writer()
                try:
                    transaction = await self._begin_immediate(writer)
                    try:
                        yield writer
                    except BaseException:
                        await transaction.rollback()
                        raise
                    await transaction.commit()
                except asyncio.CancelledError:
                    # A cancelled await can leave SQLite inside a transaction that
                    # SQLAlchemy no longer tracks: drop this connection, never reuse it.
                    self._writer = None
                    with contextlib.suppress(Exception):
                        await asyncio.shield(writer.invalidate())
                    raise

    async def one_hop(self, body: Callable[[sqlite3.Connection], T]) -> T:
        """Run a transaction body (see :mod:`omniq.db.onehop`) on the SQLite writer's thread.

        Serialized with :meth:`write` on this process's write lock; retried with
        jittered backoff while another process holds the database lock (the body
        rolled back, so a retry starts clean), up to ``lock_deadline``.
        """
        async with self._lock():
            with translate_errors("write"):
                await self._open_writer()
                driver = self._driver
                if driver is None:
                    assert self._writer is not None
                    raw = await self._writer.get_raw_connection()
                    driver = self._driver = raw.driver_connection
                loop = asyncio.get_running_loop()
                deadline = loop.time() + self.settings.lock_deadline.total_seconds()
                delay = 0.01
                while True:
                    try:
                        # aiosqlite runs the callable on the connection's own thread.
                        return cast(T, await driver._execute(body, driver._conn))
                    except sqlite3.Error as exc:
                        wrapped = sa_exc.DBAPIError.instance(None, None, exc, sqlite3.Error)
                        if not (
                            isinstance(wrapped, sa_exc.OperationalError)
                            and is_locked_error(wrapped)
                            and loop.time() < deadline
                        ):
                            raise wrapped from exc
                    if delay == 0.01:
                        log.warning("database is locked by another writer; retrying until free")
                    await asyncio.sleep(
                        min(delay * random.uniform(0.5, 1.5), max(0.0, deadline - loop.time()))
                    )
                    delay = min(delay * 2, 1.0)

    def _lock(self) -> asyncio.Lock:
        """This process's SQLite write lock (made in the running loop on first use)."""
        if self._write_lock is None:
            self._write_lock = asyncio.Lock()
        return self._write_lock

    async def _open_writer(self) -> AsyncConnection:
        """The held writer connection, reconnected if it was dropped (under the lock)."""
        writer = self._writer
        if writer is None or writer.closed or writer.invalidated:
            writer = self._writer = await self.engine.connect()
            self._driver = None  # the new connection's driver is looked up once
        return writer

    async def _begin_immediate(self, writer: AsyncConnection) -> AsyncTransaction:
        """BEGIN IMMEDIATE, retried with jittered backoff while another process holds the lock.

        SQLite already waits ``busy_timeout`` inside each attempt; past
        ``lock_deadline`` the error surfaces as :class:`DatabaseBusy`.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.settings.lock_deadline.total_seconds()
        delay = 0.01
        while True:
            try:
                return await writer.begin()
            except sa_exc.OperationalError as exc:
                if not is_locked_error(exc) or loop.time() >= deadline:
                    raise
                if delay == 0.01:
                    log.warning("database is locked by another writer; retrying until it is free")
                await asyncio.sleep(min(delay * random.uniform(0.5, 1.5), deadline - loop.time()))
                delay = min(delay * 2, 1.0)

    @asynccontextmanager
    async def read(self) -> AsyncIterator[AsyncConnection]:
        """One read-only transaction (deferred on SQLite)."""
        with translate_errors("read"):
            async with self._reader.connect() as conn:
                yield conn
