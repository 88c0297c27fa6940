"""The SQLite writer: one thread that owns this process's write connection.

A task queue's cost on SQLite is its write transactions, and SQLite runs one
writer at a time anyway. Every write transaction of this process is a plain
function over a sync SQLAlchemy :class:`~sqlalchemy.engine.Connection`
(``body(conn)``), handed to this thread, which runs ``BEGIN IMMEDIATE``, the
body and ``COMMIT`` on a pysqlite connection to the database file: one trip
to a thread per transaction, public SQLAlchemy API only. PostgreSQL runs the
very same bodies through ``AsyncConnection.run_sync``.

Rules the thread keeps:

- A body that raises is rolled back; a failed COMMIT or ROLLBACK drops the
  connection (never reused inside a begun transaction); the next body opens
  a new one.
- While another process holds the database lock past ``busy_timeout``, the
  body is retried from the start (it was rolled back) with jittered backoff
  until ``lock_deadline``.
- A job cancelled before the thread takes it never runs.

A small write may also run on the caller's own thread (:meth:`run_inline`)
when the connection is idle and the database lock is free at once: the same
body, the same transaction, without the trip to the thread and back (about
40 % of a sequential enqueue). It never waits: ``busy_timeout`` is 0 for it,
and anything that would make it wait (the thread at work, another process
holding the lock) sends the body to the thread instead. Its commits do not
checkpoint the WAL (that can take milliseconds); every
``_THREAD_COMMIT_EVERY``-th small write goes through the thread, whose
commits do.
"""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import random
import threading
import time
import weakref
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any, TypeVar

import sqlalchemy as sa
import sqlalchemy.exc as sa_exc

from omniq.db.write_lock import WriteLock
from omniq.errors import DatabaseBusy, DatabaseClosed

log = logging.getLogger("omniq.db")

T = TypeVar("T")
Body = Callable[[sa.Connection], T]

__all__ = ["DECLINED", "SQLiteWriter", "TooBigInline", "run_in_transaction", "running_inline"]

#: Every this many inline writes, one goes through the thread instead (its
#: commit checkpoints the WAL when the WAL has grown past SQLite's threshold).
_THREAD_COMMIT_EVERY = 64


class _Declined:
    def __repr__(self) -> str:
        return "DECLINED"


#: What :meth:`SQLiteWriter.run_inline` returns when the body must go to the thread.
DECLINED: Any = _Declined()


class TooBigInline(Exception):
    """Raised by a body running inline (:func:`running_inline`) that turned out to
    be more than a small write: it is rolled back and runs on the writer thread
    instead, so the caller's thread (an event loop) is not held for long."""


_inline = threading.local()


def running_inline() -> bool:
    """True while this thread runs a body inline (:meth:`SQLiteWriter.run_inline`)."""
    return bool(getattr(_inline, "active", False))


#: Every writer of this process, so that a forked child can start them afresh.
_WRITERS: weakref.WeakSet[SQLiteWriter] = weakref.WeakSet()
#: In a forked child: the parent's connections, kept open and never used.
#: Closing one could drop this process's locks on the file (POSIX locks are
#: per process) or touch a transaction that is the parent's.
_ABANDONED: list[sa.Connection] = []


def _after_fork_in_child() -> None:
    for writer in list(_WRITERS):
        writer._forget_parent()


os.register_at_fork(after_in_child=_after_fork_in_child)


def run_in_transaction(conn: sa.Connection, body: Body[T]) -> T:
    """``body(conn)`` in one transaction: committed if it returns, rolled back if it raises."""
    with conn.begin():
        return body(conn)


class SQLiteWriter:
    """A daemon thread running write-transaction bodies one after another."""

    def __init__(
        self,
        engine: sa.Engine,
        *,
        lock_deadline: float,
        is_locked: Callable[[sa_exc.DBAPIError], bool],
        write_lock: WriteLock | None = None,
    ) -> None:
        self.engine = engine
        self.lock_deadline = lock_deadline
        self._is_locked = is_locked
        #: Orders this file's OmniQ writers across processes (see omniq.db.write_lock).
        self._write_lock = write_lock
        self._jobs: queue.SimpleQueue[tuple[Future[Any], Body[Any] | _Raw] | None] = (
            queue.SimpleQueue()
        )
        self._held_conn: sa.Connection | None = None
        #: Held by whoever uses the connection: the thread (per job) or an inline write.
        self._conn_lock = threading.Lock()
        self._busy_ms = 0
        self._autocheckpoint = 1000
        #: True while the held connection's pragmas are those of inline writes
        #: (``busy_timeout`` and ``wal_autocheckpoint`` 0), not as configured.
        self._inline_mode = False
        self._inline_count = 0
        #: How many connections the writer opened (tells their change counters apart).
        self._connections = 0
        self._thread: threading.Thread | None = None
        self._start_lock = threading.Lock()
        self._closed = False
        _WRITERS.add(self)

    def _forget_parent(self) -> None:
        """In a forked child: the parent's thread, queued jobs, connection and locks
        (perhaps held mid-write at the fork) are not this process's; start afresh."""
        self._conn_lock = threading.Lock()
        self._start_lock = threading.Lock()
        self._jobs = queue.SimpleQueue()
        if self._held_conn is not None:
            _ABANDONED.append(self._held_conn)  # the parent's: never used, nor closed, here
        self._held_conn = None
        self._inline_mode = False
        self._thread = None
        if self._write_lock is not None:
            self._write_lock.forget_parent()

    def submit(self, body: Body[T]) -> Future[T]:
        """Queue ``body`` for the thread; the future holds its result or error."""
        future: Future[T] = Future()
        self._enqueue(future, body)
        return future

    def _enqueue(self, future: Future[Any], job: Body[Any] | _Raw) -> None:
        """Queue a job, or fail its future if the writer is closed (under the lock)."""
        with self._start_lock:
            if self._closed:
                future.set_exception(DatabaseClosed("the database was closed"))
                return
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(
                    target=self._serve, name="omniq-sqlite-writer", daemon=True
                )
                self._thread.start()
            self._jobs.put((future, job))

    def run_inline(self, body: Body[T]) -> T | Any:
        """Run ``body`` in a write transaction on the calling thread, or return DECLINED.

        Declined unless the thread is idle, its connection open, and the
        database's write lock free at once (``BEGIN IMMEDIATE`` with
        ``busy_timeout = 0``): the caller never waits for a lock here. A body
        that raises is rolled back and its error raised, as on the thread; one
        that raises :class:`TooBigInline` is rolled back and declined.
        """
        if not self._conn_lock.acquire(blocking=False):
            return DECLINED
        try:
            conn = self._held_conn
            if self._closed or conn is None or conn.closed or conn.invalidated:
                return DECLINED
            self._inline_count += 1
            if self._inline_count % _THREAD_COMMIT_EVERY == 0:
                return DECLINED
            lock = self._write_lock
            taken = None if lock is None else lock.try_acquire()
            if taken is False:
                return DECLINED  # another process is writing: wait on the thread
            try:
                if not self._set_inline_mode(True):
                    return DECLINED
                _inline.active = True
                return self._transact(body, inline=True)
            except sa_exc.OperationalError as exc:
                if self._is_locked(exc):
                    return DECLINED  # rolled back; the thread runs it again, waiting
                raise
            except TooBigInline:
                return DECLINED  # rolled back; the thread runs it
            finally:
                _inline.active = False
                if taken:
                    assert lock is not None
                    lock.release()
        finally:
            self._conn_lock.release()

    def _set_inline_mode(self, inline: bool) -> bool:
        """Set the held connection's pragmas for inline writes (never wait for a
        lock, never checkpoint) or back as configured (the thread's).

        Consecutive writes of one kind pay nothing. False if the connection is
        gone or the pragmas failed (it is dropped then).
        """
        if self._inline_mode == inline:
            return True
        conn = self._held_conn
        driver = None if conn is None else conn.connection.dbapi_connection
        if driver is None:
            return False
        try:
            driver.execute(f"PRAGMA busy_timeout = {0 if inline else self._busy_ms}")
            driver.execute(f"PRAGMA wal_autocheckpoint = {0 if inline else self._autocheckpoint}")
        except Exception:
            self._drop()
            return False
        self._inline_mode = inline
        return True

    def data_version(self) -> tuple[int, int] | None:
        """(which connection, its ``PRAGMA data_version``) on the held connection, without
        waiting.

        Commits of other connections (other processes) change the counter;
        writes made on this connection do not. A new connection (after one
        was dropped) starts its own counter, hence the connection's number
        beside it. None when the connection is in use (a write is running) or
        not open (see :meth:`open_connection`), the writer is closed, or the
        reading failed; it never waits for a lock.
        """
        if not self._conn_lock.acquire(blocking=False):
            return None
        try:
            if self._closed:
                return None
            conn = self._held_conn
            # Not opened yet, or dropped after an error: the next write opens it.
            if conn is None or conn.closed or conn.invalidated or conn.in_transaction():
                return None
            driver = conn.connection.dbapi_connection
            if driver is None:
                return None
            if self._inline_mode:  # busy_timeout is 0 already
                return self._connections, int(driver.execute(_DATA_VERSION).fetchone()[0])
            # Never wait here (the caller is an event loop): a file being recovered
            # by another connection is read at the next tick.
            driver.execute("PRAGMA busy_timeout = 0")
            try:
                return self._connections, int(driver.execute(_DATA_VERSION).fetchone()[0])
            finally:
                try:
                    driver.execute(f"PRAGMA busy_timeout = {self._busy_ms}")
                except Exception:
                    self._drop()  # not left unable to wait: the next write opens another
                    raise
        except Exception:
            return None  # a reading that fails is no reading (the tick is skipped)
        finally:
            self._conn_lock.release()

    def open_connection(self) -> Future[None]:
        """Have the thread open its connection now (it is otherwise opened by the first write)."""
        return self.submit_outside_transaction(lambda _driver: None)

    def submit_outside_transaction(self, fn: Callable[[Any], T]) -> Future[T]:
        """Queue ``fn(driver_connection)``, run outside any transaction, once (no retry).

        For the statements SQLite refuses inside a transaction, such as
        ``PRAGMA wal_checkpoint``; ``fn`` gets the pysqlite connection.
        """

        def body(conn: sa.Connection) -> T:
            return fn(conn.connection.dbapi_connection)

        future: Future[T] = Future()
        self._enqueue(future, _Raw(body))
        return future

    def close(self) -> None:
        """Finish the queued bodies, close the connection and stop the thread."""
        with self._start_lock:
            self._closed = True
            thread = self._thread
        if thread is not None and thread.is_alive():
            self._jobs.put(None)
            thread.join()
        if self._write_lock is not None:
            self._write_lock.close()
        self.engine.dispose()

    def _serve(self) -> None:
        try:
            while True:
                job = self._jobs.get()
                if job is None:
                    # Closed: nothing can be queued after the sentinel (see _enqueue).
                    return
                future, body = job
                if not future.set_running_or_notify_cancel():
                    continue  # cancelled while queued: it never runs
                try:
                    with self._conn_lock:
                        result = (
                            body.fn(self._connect()) if isinstance(body, _Raw) else self._run(body)
                        )
                except BaseException as exc:
                    future.set_exception(exc)
                else:
                    future.set_result(result)
        finally:
            with self._conn_lock:
                self._drop()

    def _run(self, body: Body[T]) -> T:
        deadline = time.monotonic() + self.lock_deadline
        delay = 0.01
        lock = self._write_lock
        while True:
            taken = None if lock is None else lock.acquire(deadline - time.monotonic())
            if taken is False:
                raise DatabaseBusy(
                    f"database is locked: another OmniQ process kept writing for "
                    f"{self.lock_deadline:g} s (lock_deadline)"
                )
            try:
                return self._transact(body)
            except sa_exc.OperationalError as exc:
                if not self._is_locked(exc) or time.monotonic() >= deadline:
                    raise
            finally:
                if taken:
                    assert lock is not None
                    lock.release()
            if delay == 0.01:
                log.warning("database is locked by another writer; retrying until it is free")
            time.sleep(min(delay * random.uniform(0.5, 1.5), max(0.0, deadline - time.monotonic())))
            delay = min(delay * 2, 1.0)

    def _connect(self) -> sa.Connection:
        conn = self._held_conn
        if conn is not None and self._inline_mode and not self._set_inline_mode(False):
            conn = None  # dropped
        if conn is None or conn.closed or conn.invalidated:
            conn = self._held_conn = self.engine.connect()
            self._connections += 1
            self._inline_mode = False
            driver = conn.connection.dbapi_connection
            if driver is not None:
                self._busy_ms = int(driver.execute("PRAGMA busy_timeout").fetchone()[0])
                self._autocheckpoint = int(
                    driver.execute("PRAGMA wal_autocheckpoint").fetchone()[0]
                )
        return conn

    def _transact(self, body: Body[T], *, inline: bool = False) -> T:
        conn = self._held_conn if inline else self._connect()
        assert conn is not None
        try:
            transaction = conn.begin()
        except BaseException as exc:
            # BEGIN IMMEDIATE refused (locked past busy_timeout, I/O error): start
            # clean. Inline, a lock merely taken leaves the connection fine.
            if not (inline and isinstance(exc, sa_exc.OperationalError) and self._is_locked(exc)):
                self._drop()
            raise
        try:
            result = body(conn)
        except BaseException:
            try:
                transaction.rollback()
            except BaseException:
                self._drop()
                raise
            if _driver_in_transaction(conn):
                self._drop()
            raise
        try:
            transaction.commit()
        except BaseException:
            # SQLite may be left inside the transaction (e.g. disk full at COMMIT).
            self._drop()
            raise
        return result

    def _drop(self) -> None:
        conn, self._held_conn = self._held_conn, None
        if conn is None:
            return
        with contextlib.suppress(Exception):
            conn.invalidate()
        with contextlib.suppress(Exception):
            conn.close()


_DATA_VERSION = "PRAGMA data_version"


class _Raw:
    """A job run on the connection outside any transaction."""

    def __init__(self, fn: Callable[[sa.Connection], Any]) -> None:
        self.fn = fn


def _driver_in_transaction(conn: sa.Connection) -> bool:
    """True if the driver connection is still inside a transaction (or cannot tell)."""
    try:
        dbapi = conn.connection.dbapi_connection
    except Exception:
        return True
    return bool(getattr(dbapi, "in_transaction", True))
