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
"""

from __future__ import annotations

import contextlib
import logging
import queue
import random
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any, TypeVar

import sqlalchemy as sa
import sqlalchemy.exc as sa_exc

from omniq.errors import DatabaseError

log = logging.getLogger("omniq.db")

T = TypeVar("T")
Body = Callable[[sa.Connection], T]

__all__ = ["SQLiteWriter", "run_in_transaction"]


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
    ) -> None:
        self.engine = engine
        self.lock_deadline = lock_deadline
        self._is_locked = is_locked
        self._jobs: queue.SimpleQueue[tuple[Future[Any], Body[Any] | _Raw] | None] = (
            queue.SimpleQueue()
        )
        self._held_conn: sa.Connection | None = None
        self._thread: threading.Thread | None = None
        self._start_lock = threading.Lock()
        self._closed = False

    def submit(self, body: Body[T]) -> Future[T]:
        """Queue ``body`` for the thread; the future holds its result or error."""
        future: Future[T] = Future()
        self._enqueue(future, body)
        return future

    def _enqueue(self, future: Future[Any], job: Body[Any] | _Raw) -> None:
        """Queue a job, or fail its future if the writer is closed (under the lock)."""
        with self._start_lock:
            if self._closed:
                future.set_exception(DatabaseError("the database was closed"))
                return
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(
                    target=self._serve, name="omniq-sqlite-writer", daemon=True
                )
                self._thread.start()
            self._jobs.put((future, job))

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
                    result = body.fn(self._connect()) if isinstance(body, _Raw) else self._run(body)
                except BaseException as exc:
                    future.set_exception(exc)
                else:
                    future.set_result(result)
        finally:
            self._drop()

    def _run(self, body: Body[T]) -> T:
        deadline = time.monotonic() + self.lock_deadline
        delay = 0.01
        while True:
            try:
                return self._transact(body)
            except sa_exc.OperationalError as exc:
                if not self._is_locked(exc) or time.monotonic() >= deadline:
                    raise
            if delay == 0.01:
                log.warning("database is locked by another writer; retrying until it is free")
            time.sleep(min(delay * random.uniform(0.5, 1.5), max(0.0, deadline - time.monotonic())))
            delay = min(delay * 2, 1.0)

    def _connect(self) -> sa.Connection:
        conn = self._held_conn
        if conn is None or conn.closed or conn.invalidated:
            conn = self._held_conn = self.engine.connect()
        return conn

    def _transact(self, body: Body[T]) -> T:
        conn = self._connect()
        try:
            transaction = conn.begin()
        except BaseException:
            # BEGIN IMMEDIATE refused (locked past busy_timeout, I/O error): start clean.
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
