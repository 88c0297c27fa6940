"""The shared state of the services: engine, repositories, settings, wake-ups, the clock.

Services own transactions, and every transaction is a plain function over a
sync SQLAlchemy ``Connection`` (``body(conn)``), written once for both
engines: :meth:`Storage.write` runs it on PostgreSQL through
``AsyncConnection.run_sync`` and on SQLite on this process's writer thread
(:mod:`omniq.db.writer`); :meth:`Storage.read` runs read-only bodies through
``run_sync`` on the AsyncEngine (aiosqlite or asyncpg).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from datetime import datetime, timedelta
from typing import Any, ClassVar, TypeVar, cast

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from omniq._time import utcnow
from omniq.db.engine import (
    create_engine,
    dialect_of,
    full_file_system,
    is_memory_sqlite,
    normalize_url,
    read_engine,
    server_connect_args,
    sqlite_path,
    sqlite_writer_engine,
    with_schema,
)
from omniq.db.migrate import ensure_schema
from omniq.db.write_lock import WriteLock, lock_path
from omniq.db.writer import DECLINED, SQLiteWriter, run_in_transaction
from omniq.errors import DatabaseClosed, DatabaseError, StorageFull
from omniq.models import Settings
from omniq.repositories import (
    AttemptRepository,
    EventRepository,
    ResultRepository,
    ScheduleRepository,
    TaskRepository,
)
from omniq.repositories._base import (
    PayloadCodec,
    is_locked_error,
    is_transient_conflict,
    translate_errors,
)
from omniq.repositories.limits import LimitRepository
from omniq.repositories.locks import LockRepository
from omniq.repositories.progress import ProgressRepository
from omniq.repositories.workers import WorkerRepository
from omniq.repositories.workflows import WorkflowRepository
from omniq.serialization import SerializerRegistry
from omniq.services.sqlite_watch import watching_file
from omniq.services.work_listener import WorkListener

__all__ = ["Notifier", "Storage"]

log = logging.getLogger("omniq.db")

#: How often the PostgreSQL clock offset is measured again (seconds).
_CLOCK_REFRESH = 60.0

#: How many times a PostgreSQL write rolled back by a deadlock (or a serialization
#: failure) runs again before its error reaches the caller.
_CONFLICT_RETRIES = 5

#: The longest a close waits for writes in flight, then for its connections to
#: close (seconds); a server that does not answer is let go after that.
CLOSE_WAIT = 10.0

T = TypeVar("T")
Body = Callable[[sa.Connection], T]


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
        #: How many notifications there have been: a caller that reads it before
        #: looking at the database and passes it to :meth:`wait` as ``since``
        #: misses no notification that came while it looked.
        self.generation = 0
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

    def waiting(self) -> bool:
        """True while someone waits for a notification."""
        return bool(self._waiters)

    def notify(self) -> None:
        """Wake every current waiter (thread-safe)."""
        with self._lock:
            self.generation += 1
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

    async def wait(self, timeout: float, since: int | None = None) -> bool:
        """Wait up to ``timeout`` seconds for a notification; True if one came.

        With ``since`` (a :attr:`generation` read earlier), one that came after
        that reading counts: the wait returns at once.
        """
        entry = (asyncio.get_running_loop(), asyncio.Event())
        with self._lock:
            if since is not None and since != self.generation:
                return True
            self._waiters.add(entry)
        try:
            # Not wait_for: on 3.11 it runs the wait in a task of its own, one
            # more turn of the loop for every wake-up.
            async with asyncio.timeout(timeout):
                await entry[1].wait()
        except TimeoutError:
            return False
        finally:
            with self._lock:
                self._waiters.discard(entry)
        return True


class Storage:
    """Engine, dialect strategy, repositories, settings and clock shared by the services.

    Services own transactions: :meth:`write` runs a write transaction body,
    :meth:`read` a read-only one. Objects bound to an event loop (the engine's
    pool on asyncpg) are used from the loop that opened this Storage
    (:attr:`loop`); blocking callers elsewhere are handed to it.
    """

    def __init__(
        self,
        engine: AsyncEngine,
        settings: Settings | None = None,
        *,
        owns_engine: bool = False,
        serializers: SerializerRegistry | None = None,
    ) -> None:
        self.settings = settings or Settings()
        # Settings.db_schema (PostgreSQL): statements name OmniQ's schema.
        self.engine = with_schema(engine, self.settings)
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
        self.workers = WorkerRepository(self.dialect)
        self.attempts = AttemptRepository()
        self.progress = ProgressRepository(self.dialect)
        self.limits = LimitRepository(self.dialect)
        self.workflows = WorkflowRepository()
        key = engine.url.render_as_string(hide_password=True)
        if self.settings.db_schema is not None:
            key = f"{key}#{self.settings.db_schema}"
        self.notifier = Notifier.for_key(key)
        self._reader = read_engine(engine)
        self._opened = False
        self._closed = False
        self._writer: SQLiteWriter | None = None
        #: In-memory SQLite: one shared connection, so one transaction at a time.
        self._serial: asyncio.Lock | None = None
        if is_memory_sqlite(engine.url):
            self._serial = asyncio.Lock()
        elif self.dialect.single_writer:
            url = normalize_url(engine.url)
            path = sqlite_path(url)
            self._writer = SQLiteWriter(
                sqlite_writer_engine(url, self.settings),
                lock_deadline=self.settings.lock_deadline.total_seconds(),
                is_locked=is_locked_error,
                # One lock file per database file, however a process names it.
                write_lock=None if path is None else WriteLock(lock_path(path.resolve())),
            )
        #: The event loop this Storage was opened on (None until opened).
        self.loop: asyncio.AbstractEventLoop | None = None
        #: Database time minus local time, measured on PostgreSQL (zero on SQLite).
        self._clock_base: tuple[datetime, float] | None = None
        self._clock_read = 0.0  # when the clock was last read (monotonic seconds)
        self._clock_error = 0.0  # half the round trip of the reading in _clock_base
        #: Writes that outlived their cancelled caller; awaited on close.
        self._detached: set[asyncio.Future[Any]] = set()

    @classmethod
    def from_url(
        cls, url: str | sa.URL, settings: Settings | None = None, **engine_kwargs: Any
    ) -> Storage:
        """A Storage that owns a new engine for ``url``."""
        settings = settings or Settings()
        return cls(create_engine(url, settings, **engine_kwargs), settings, owns_engine=True)

    @property
    def writer(self) -> SQLiteWriter | None:
        """SQLite: the writer that runs this process's write transactions (else None)."""
        return self._writer

    @property
    def write_engine(self) -> sa.Engine:
        """The sync Engine write transactions run on (SQLite: the writer thread's own)."""
        if self._writer is not None:
            return self._writer.engine
        return self.engine.sync_engine

    @property
    def url(self) -> sa.URL:
        """The engine URL."""
        if self._serial is not None:
            return self.engine.url
        return normalize_url(self.engine.url)

    @property
    def closed(self) -> bool:
        """True once :meth:`close` began: every read and write raises :class:`DatabaseClosed`."""
        return self._closed

    def check_open(self) -> None:
        """Raise :class:`DatabaseClosed` if this Storage was closed (the same on every engine)."""
        if self._closed:
            raise DatabaseClosed("the database was closed")

    async def open(self) -> None:
        """Check (or bring) the schema at head; idempotent (a closed Storage stays closed)."""
        self.check_open()
        if self._opened:
            return
        auto = self.settings.auto_migrate
        if auto is None:
            auto = self.dialect.name == "sqlite"
        try:
            with translate_errors("open the database"):  # a full disk is StorageFull here too
                await ensure_schema(self.engine, auto_migrate=auto)
        except DatabaseError as exc:
            full = full_file_system(self.engine.url)
            if full is None or type(exc) is not DatabaseError:
                raise
            said = str(exc).removeprefix("open the database: ")
            raise StorageFull(f"open the database: {full} has no free space ({said})") from exc
        self.loop = asyncio.get_running_loop()
        await self.sync_clock()
        self._opened = True

    async def close(self) -> None:
        """Finish detached writes; stop the writer; dispose the engine if this Storage made it.

        From then on it is closed for good, on every engine (an AsyncEngine
        would connect again after ``dispose``): whoever opened it opens new
        services (the seed's backend, see :mod:`omniq.storage._component`).
        """
        # A server that does not answer must not hold the close (nor a worker's exit)
        # for good: what is still waiting for it after CLOSE_WAIT is let go
        # (its transaction rolls back on the server's side when the socket closes).
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(CLOSE_WAIT):
                await self.wait_detached()
        self._closed = True
        if self._writer is not None:
            await asyncio.get_running_loop().run_in_executor(None, self._writer.close)
        if self.owns_engine:
            try:
                async with asyncio.timeout(CLOSE_WAIT):
                    await self.engine.dispose()
            except TimeoutError:
                await self.engine.dispose(close=False)

    @property
    def loop_bound(self) -> bool:
        """True when connections belong to the event loop that opened them (asyncpg's):
        they cannot be used, nor closed, from another loop."""
        return self.dialect.name != "sqlite"

    async def let_go(self) -> None:
        """Close from another loop after the loop that opened this Storage has ended:
        loop-bound connections are let go (dereferenced, not closed); the rest closes."""
        if not self.loop_bound:
            await self.close()
            return
        if self.owns_engine:
            await self.engine.dispose(close=False)

    # --- the clock -----------------------------------------------------------------

    def now(self) -> datetime:
        """The current time by the database's clock (PostgreSQL) or this machine's (SQLite).

        On PostgreSQL, where workers run on many machines, lease expiry and due
        times must come from one clock: the database's time is measured (at
        open, then every minute) and carried forward by this process's
        monotonic clock, so neither clock skew between machines nor a jump of
        the local wall clock changes a decision.
        """
        base = self._clock_base
        if base is None:
            return utcnow()
        db_time, mono = base
        return db_time + timedelta(seconds=_elapsed_clock() - mono)

    async def sync_clock(self, *, force: bool = True) -> None:
        """Measure the database's clock again (PostgreSQL; no-op on SQLite)."""
        if self.dialect.name != "postgresql":
            return
        base = self._clock_base
        if not force and base is not None and _elapsed_clock() - self._clock_read < _CLOCK_REFRESH:
            return
        with translate_errors("read the database clock"):
            async with self.engine.connect() as conn:
                before = _elapsed_clock()
                value = (await conn.execute(sa.select(sa.func.clock_timestamp()))).scalar_one()
                after = _elapsed_clock()
        middle = self._clock_read = (before + after) / 2
        if base is not None:
            # Each reading is known to within half its round trip. One that puts
            # the clock back by no more than both readings' error does not
            # contradict the estimate, which is kept: the clock does not step back
            # at a refresh for a reading's noise (a time read before a write would
            # come after the write's own). Forward, or back by more, it is taken.
            step = (value - base[0]).total_seconds() - (middle - base[1])
            if -(self._clock_error + (after - before) / 2 + 2e-6) <= step < 0:  # 2 µs: rounding
                return
        self._clock_base = (value, middle)
        self._clock_error = (after - before) / 2

    # --- transactions --------------------------------------------------------------

    async def write(
        self,
        body: Body[T],
        *,
        what: str = "write",
        undo: Callable[[T], Awaitable[Any]] | None = None,
        small: bool = False,
    ) -> T:
        """Run ``body(conn)`` in one write transaction; return what it returns.

        The transaction is shielded from the caller's cancellation: it commits
        or rolls back as a whole, never half. A caller cancelled while the
        work runs (on PostgreSQL: at any point) gets ``CancelledError`` and the
        work finishes on its own; ``undo(result)`` is then run after the commit
        (a claim gives its tasks back this way). On SQLite a caller cancelled
        while its work still waits for the writer thread leaves nothing written.

        ``small``: a transaction of a few rows (one enqueue, one admin action).
        On SQLite it runs on this thread when the writer is idle and the lock
        is free at once (:meth:`SQLiteWriter.run_inline`), without waiting for
        either; it cannot be interrupted there.
        """
        self.check_open()
        cancel: Callable[[], bool]
        if small and self._writer is not None:
            with translate_errors(what):
                result = self._writer.run_inline(body)
            if result is not DECLINED:
                return cast(T, result)
        if self._writer is not None:
            job = self._writer.submit(body)
            future: asyncio.Future[T] = asyncio.wrap_future(job)
            cancel = job.cancel  # succeeds only while the job waits for the thread
        else:
            if self._clock_base is not None:
                await self.sync_clock(force=False)
            future = asyncio.ensure_future(self._serialized(self._run_sync(body)))
            cancel = _never
        try:
            with translate_errors(what):
                return await asyncio.shield(future)
        except asyncio.CancelledError:
            if not cancel():
                self._detach(future, undo)
            raise

    async def _serialized(self, work: Awaitable[T]) -> T:
        """``work``, alone on the connection when it is the one shared (in-memory SQLite)."""
        if self._serial is None:
            return await work
        async with self._serial:
            return await work

    async def _run_sync(self, body: Body[T]) -> T:
        attempt = 0
        while True:
            try:
                async with self.engine.connect() as conn:
                    return await conn.run_sync(run_in_transaction, body)
            except sa.exc.DBAPIError as exc:
                # A deadlock with another transaction (PostgreSQL picks one of the two
                # to roll back) wrote nothing: the body runs again, as PostgreSQL's
                # documentation advises, instead of failing a write that can land.
                attempt += 1
                if attempt > _CONFLICT_RETRIES or not is_transient_conflict(exc):
                    raise
                log.info("%s; running the transaction again", type(exc.orig).__name__)
                await asyncio.sleep(random.uniform(0.0, 0.01 * attempt))

    def undo_later(self, undo: Callable[[T], Awaitable[Any]], result: T) -> None:
        """Run ``undo(result)`` on its own, for a committed write whose caller is gone
        (cancelled, or failed further on); :meth:`wait_detached` waits for it."""
        done: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        done.set_result(result)
        self._detach(done, undo)

    def _detach(
        self, future: asyncio.Future[Any], undo: Callable[[Any], Awaitable[Any]] | None
    ) -> None:
        """Keep a write whose caller was cancelled; undo its effect once it committed."""

        async def settle() -> None:
            try:
                result = await future
            except BaseException:
                return  # rolled back: nothing to undo
            if undo is not None:
                try:
                    await undo(result)
                except Exception as exc:
                    log.error("could not undo the write of a cancelled caller: %s", exc)

        job = asyncio.ensure_future(settle())
        self._detached.add(job)
        job.add_done_callback(self._detached.discard)

    async def checkpoint(self) -> bool:
        """SQLite: checkpoint the WAL (PASSIVE) so it does not grow; True if it completed."""
        if self._writer is None:
            return False

        def run(driver: Any) -> Any:
            return driver.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()

        with translate_errors("checkpoint"):
            row = await asyncio.wrap_future(self._writer.submit_outside_transaction(run))
        return bool(row) and row[0] == 0

    async def wait_detached(self) -> None:
        """Wait until the writes whose callers were cancelled, and their undos, are done."""
        while self._detached:
            await asyncio.gather(*list(self._detached), return_exceptions=True)

    async def read(self, body: Body[T], *, what: str = "read") -> T:
        """Run ``body(conn)`` in one read-only transaction (deferred on SQLite)."""
        self.check_open()
        with translate_errors(what):
            if self._serial is not None:
                return await self._serialized(self._read(body))
            return await self._read(body)

    async def _read(self, body: Body[T]) -> T:
        async with self._reader.connect() as conn:
            return await conn.run_sync(body)

    # --- wake-ups ----------------------------------------------------------------------

    @asynccontextmanager
    async def listen_for_work(
        self, queues: Sequence[str] | None = None, wanted: Callable[[], bool] | None = None
    ) -> AsyncIterator[bool]:
        """While open, wake this process's waiters when other processes make work.

        On PostgreSQL the tasks table's triggers (revision 0004) send ``NOTIFY
        omniq_work`` when a statement makes tasks pending; this holds one
        connection of its own (outside the pool) that LISTENs, wakes
        :attr:`notifier`, and is re-established when lost (a server restart;
        see :mod:`omniq.services.work_listener`). On a SQLite file a watch
        reads the file's change counter every few milliseconds and wakes the
        waiters when another connection's commit made a task of ``queues``
        (None: any) ready (see :mod:`omniq.services.sqlite_watch`), while
        ``wanted()`` (default: someone waits on :attr:`notifier`; a worker:
        it has room to claim); an in-memory database has no other
        connection. Yields whether it listens at the start; where it cannot,
        polling (always on) finds the work while it tries again.
        """
        if self.dialect.name != "postgresql":
            if self._writer is None:
                yield False
                return
            tasks, now, notifier = self.tasks, self.now, self.notifier

            async def ready() -> bool:
                return await self.read(
                    lambda conn: tasks.ready_now(conn, queues, now()), what="peek tasks"
                )

            async with watching_file(
                self._writer,
                ready,
                notifier.notify,
                wanted or notifier.waiting,
                lambda: notifier.generation,
            ):
                yield True
            return
        listener = WorkListener(
            self.engine.url,
            self.notifier.notify,
            connect_args=server_connect_args(self.engine.url, self.settings),
        )
        listening = await listener.open()
        keeper = asyncio.get_running_loop().create_task(listener.run())
        try:
            yield listening
        finally:
            listener.stopping = True
            # Until it ends: a cancellation that lands as a connect attempt
            # finishes can be lost inside the driver's own timeout handling
            # (asyncio.wait_for before Python 3.12), and the keeper went on
            # reconnecting while the worker waited for it, for good.
            while not keeper.done():
                keeper.cancel()
                await asyncio.wait({keeper}, timeout=1.0)
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await keeper
            await listener.close()

    def announce_cancel(self, task_id: str) -> None:
        """Tell this process's workers on the database that ``task_id`` should stop."""
        for listener in list(self.notifier.cancel_listeners):
            listener(task_id)


def _elapsed_clock() -> float:
    """Seconds of a clock that keeps counting through a system suspend (Linux
    ``CLOCK_BOOTTIME``; the monotonic clock elsewhere), never set back."""
    boottime = getattr(time, "CLOCK_BOOTTIME", None)
    if boottime is not None:
        return time.clock_gettime(boottime)
    return time.monotonic()


def _never() -> bool:
    return False
