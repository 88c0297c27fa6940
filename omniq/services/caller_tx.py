"""Enqueue in the caller's transaction: OmniQ's rows written on the application's connection.

``enqueue_async(..., connection=conn)`` (or ``session=``) writes the task, its
dependency edges and its event with the application's own SQLAlchemy
connection or ORM session, inside its open transaction: nothing is visible to
others until the application commits, and nothing is left if it rolls back.

- The rows are written in a SAVEPOINT (``begin_nested``): a refused enqueue
  (a duplicate unique key, bad input, a database error) rolls back only the
  savepoint, raises OmniQ's usual typed error, and the caller's own work in
  the transaction stays intact and can still commit.
- The connection must be on OmniQ's database: the same SQLite file, or on
  PostgreSQL the same database of the same server (asked of the server:
  database name, port and postmaster start time), with OmniQ's schema at head
  as seen through that connection. Otherwise :class:`WrongDatabase` or
  :class:`SchemaOutOfDate`; both are checked once per application engine.
- This process's workers are woken after the commit, never before
  (:mod:`omniq.services.after_commit`).
- SQLite: the write runs on the caller's connection, not on OmniQ's writer
  thread, and the caller's transaction holds the database's write lock from
  its first write until it ends. pysqlite and aiosqlite start a transaction
  lazily, at the first INSERT: a SAVEPOINT opened outside one would become the
  outermost transaction and its RELEASE would commit on its own, so when the
  driver is not inside a transaction yet, ``BEGIN IMMEDIATE`` starts the
  caller's transaction first.

The work on a sync connection or session never waits on an event loop, so the
sync API runs it on the caller's own thread (:func:`run_inline`).
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import os
import weakref
from collections.abc import Callable, Coroutine, Iterator
from typing import Any, TypeVar

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession
from sqlalchemy.orm import Session

from omniq.db.driver_exec import OWN_ENGINE
from omniq.db.engine import sqlite_path
from omniq.db.migrate import current_revision, head
from omniq.errors import SchemaOutOfDate, ValidationError, WrongDatabase
from omniq.repositories._base import translate_errors
from omniq.services._storage import Storage
from omniq.services.after_commit import wake_after_commit

__all__ = [
    "CallerTx",
    "caller_tx",
    "is_sync_transaction",
    "prepare_caller_tx",
    "ready_for_caller_tx",
    "run_inline",
]

T = TypeVar("T")
Body = Callable[[sa.Connection], T]

#: OmniQ's own database identity per Storage (None on SQLite: the file is compared).
_identities: weakref.WeakKeyDictionary[Storage, tuple[Any, ...] | None] = (
    weakref.WeakKeyDictionary()
)
#: Application engines already found on OmniQ's database with the schema at head.
_verified: weakref.WeakKeyDictionary[Storage, weakref.WeakSet[sa.Engine]] = (
    weakref.WeakKeyDictionary()
)
_head = functools.cache(head)


def caller_tx(connection: Any = None, session: Any = None) -> CallerTx | None:
    """The caller's transaction given as ``connection=`` or ``session=`` (None: OmniQ's own)."""
    if connection is None and session is None:
        return None
    if connection is not None and session is not None:
        raise ValidationError("connection", "give connection= or session=, not both")
    if connection is not None:
        if isinstance(connection, Session | AsyncSession):
            raise ValidationError(
                "connection", "got an ORM session: pass it as session=, not connection="
            )
        if not isinstance(connection, AsyncConnection | sa.Connection):
            raise ValidationError(
                "connection",
                "expected a SQLAlchemy Connection or AsyncConnection, "
                f"got {type(connection).__name__}",
            )
        if connection.closed:
            raise ValidationError("connection", "the connection is closed")
        return CallerTx(connection, "connection")
    if isinstance(session, AsyncConnection | sa.Connection):
        raise ValidationError("session", "got a connection: pass it as connection=, not session=")
    if not isinstance(session, Session | AsyncSession):
        raise ValidationError(
            "session",
            f"expected a SQLAlchemy Session or AsyncSession, got {type(session).__name__}",
        )
    return CallerTx(session, "session")


def is_sync_transaction(kwargs: dict[str, Any]) -> bool:
    """True if ``kwargs`` give a sync ``connection=`` or ``session=`` (run on this thread)."""
    return isinstance(kwargs.get("connection"), sa.Connection) or isinstance(
        kwargs.get("session"), Session
    )


class CallerTx:
    """The application's connection or session whose transaction OmniQ writes in."""

    def __init__(
        self, target: AsyncConnection | AsyncSession | sa.Connection | Session, field: str
    ) -> None:
        self.target = target
        self.field = field

    async def write(self, storage: Storage, body: Body[T], *, what: str, wake: bool) -> T:
        """Run ``body(conn)`` in a savepoint of the caller's transaction; return its result.

        With ``wake``, this process's workers are woken once the caller commits.
        """
        await prepare_caller_tx(storage)
        run = functools.partial(_write_on, storage, body, what, wake, self.field)
        target = self.target
        if isinstance(target, AsyncConnection):
            return await target.run_sync(run)
        if isinstance(target, AsyncSession):
            return await target.run_sync(run)
        return run(target)


async def prepare_caller_tx(storage: Storage) -> None:
    """Learn OmniQ's own database identity, once per Storage (PostgreSQL: one query)."""
    if storage in _identities:
        return
    identity = None
    if storage.dialect.name == "postgresql":
        identity = await storage.read(_server_identity, what="identify the database")
    _identities[storage] = identity


def ready_for_caller_tx(storage: Storage) -> bool:
    """True once :func:`prepare_caller_tx` ran for ``storage``."""
    return storage in _identities


def run_inline(coro: Coroutine[Any, Any, T]) -> T:
    """Finish ``coro`` on this thread, with no event loop: a sync twin's work in the
    caller's own transaction.

    On a sync connection nothing awaits the event loop (OmniQ is open and
    :func:`prepare_caller_tx` ran), so the coroutine completes at its first step.
    """
    token = _INLINE.set(True)
    try:
        coro.send(None)
    except StopIteration as done:
        result: T = done.value
        return result
    finally:
        _INLINE.reset(token)
    coro.close()
    raise RuntimeError("OmniQ bug: work on a sync connection waited for an event loop")


#: True while :func:`run_inline` runs a coroutine (on whatever thread, even one
#: whose event loop is running: that loop is not the one running it).
_INLINE: contextvars.ContextVar[bool] = contextvars.ContextVar("omniq_inline", default=False)


def running_inline() -> bool:
    """True inside :func:`run_inline`: no event loop runs this work."""
    return _INLINE.get()


# --- on the caller's connection (sync; in its thread, or in run_sync's greenlet) -----------


def _write_on(
    storage: Storage,
    body: Body[T],
    what: str,
    wake: bool,
    field: str,
    target: sa.Connection | Session,
) -> T:
    if isinstance(target, Session):
        # The caller's pending objects are theirs: flushed (and failing) as their own.
        target.flush()
        conn = target.connection()
    else:
        conn = target
    with translate_errors(what), _option(conn, OWN_ENGINE, False):
        _check_database(storage, conn, field)
        if not conn.in_transaction():
            conn.begin()  # what the first statement would do (SQLAlchemy's autobegin)
        if storage.dialect.single_writer:
            _begin_immediate(conn)
        schema = storage.engine.get_execution_options().get("schema_translate_map")
        with target.begin_nested(), _option(conn, "schema_translate_map", schema or None):
            if isinstance(target, Session):
                # A Session emits its SAVEPOINT when its connection is next asked for:
                # without this the statements below ran outside it, and a database
                # error aborted the caller's whole transaction on PostgreSQL.
                target.connection()
            _check_schema(storage, conn)
            result = body(conn)
    if wake:
        wake_after_commit(conn, storage.notifier, storage.loop)
    return result


def _check_database(storage: Storage, conn: sa.Connection, field: str) -> None:
    """Raise :class:`WrongDatabase` unless ``conn`` is on OmniQ's database (cached per engine)."""
    verified = _verified.get(storage)
    if verified is not None and conn.engine in verified:
        return
    omniq_url = storage.url.render_as_string(hide_password=True)
    theirs = conn.engine.url.render_as_string(hide_password=True)
    if conn.dialect.name != storage.dialect.name:
        raise WrongDatabase(
            f"{field}: it is on a {conn.dialect.name} database ({theirs}) but OmniQ's "
            f"database is {storage.dialect.name} ({omniq_url}); a task can be enqueued in "
            "your transaction only when OmniQ's tables are in the same database"
        )
    if storage.dialect.name == "sqlite":
        ours = sqlite_path(storage.url)
        path = conn.engine.url.database
        if not path or path == ":memory:" or path.startswith("file:") or not _same_file(path, ours):
            raise WrongDatabase(
                f"{field}: it is on the SQLite database {path or ':memory:'!r} but OmniQ's "
                f"is the file {str(ours)!r}; a task can be enqueued in your transaction only "
                "when OmniQ's tables are in the same database"
            )
        return
    identity = _server_identity(conn)
    if identity != _identities.get(storage):
        raise WrongDatabase(
            f"{field}: it is on database {identity[0]!r} of the server at {theirs} but OmniQ's "
            f"database is {omniq_url}; a task can be enqueued in your transaction only when "
            "OmniQ's tables are in the same database"
        )


def _check_schema(storage: Storage, conn: sa.Connection) -> None:
    """Raise :class:`SchemaOutOfDate` unless OmniQ's schema is at head through ``conn``."""
    verified = _verified.setdefault(storage, weakref.WeakSet())
    if conn.engine in verified:
        return
    at = current_revision(conn)
    if at != _head():
        raise SchemaOutOfDate(at, _head())
    verified.add(conn.engine)


def _server_identity(conn: sa.Connection) -> tuple[Any, ...]:
    """PostgreSQL: which database of which server ``conn`` is on."""
    row = conn.execute(
        sa.select(
            sa.func.current_database(),
            sa.func.current_setting("port"),
            sa.func.pg_postmaster_start_time(),
        )
    ).one()
    return tuple(row)


def _same_file(path: str, ours: os.PathLike[str] | None) -> bool:
    if ours is None:
        return False
    try:
        return os.path.samefile(path, ours)
    except OSError:
        return False


def _begin_immediate(conn: sa.Connection) -> None:
    """SQLite: start the caller's transaction in the driver if it has not begun yet."""
    driver = conn.connection.driver_connection
    if not getattr(driver, "in_transaction", True):
        conn.exec_driver_sql("BEGIN IMMEDIATE")


@contextlib.contextmanager
def _option(conn: sa.Connection, name: str, value: Any) -> Iterator[None]:
    """``conn``'s execution option ``name`` set to ``value`` for the block, then put
    back as it was (``value`` None: left as it is).

    On the caller's connection, OmniQ's statements use OmniQ's engine's
    ``schema_translate_map``, and go through SQLAlchemy even if the connection
    came from an engine OmniQ made (not its own: see :mod:`omniq.db.driver_exec`),
    where the application's instrumentation sees them.
    """
    if value is None:
        yield
        return
    before = conn.get_execution_options().get(name)
    conn.execution_options(**{name: value})
    try:
        yield
    finally:
        conn.execution_options(**{name: before})
