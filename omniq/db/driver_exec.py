"""A statement run on a SQLAlchemy ``Connection``'s driver connection directly.

SQLAlchemy's execution of a statement (its compiled-cache lookup, the
parameters' construction, the execution context, the result's set-up and
the cursor events) costs about 20 µs when its code is warm and ten times
that when it runs cold, in a process that sat idle for some milliseconds:
a worker or a producer that handles one task now and then pays that on
each of a transaction's statements. OmniQ's own SQLite connections (of the
engines it creates for its own use, marked with :data:`OWN_ENGINE`; not
those whose connections it lends to the application) therefore hand their
hot statements to the driver: ``BEGIN IMMEDIATE`` (:mod:`omniq.db.engine`),
the INSERTs of tasks, events and results (:mod:`omniq.db.driver_rows`) and
the claim (:mod:`omniq.db.driver_query`). The transaction stays SQLAlchemy's (begun
and ended through the ``Connection``, its transaction events fire); a
driver error is raised wrapped as SQLAlchemy wraps it, and a lost
connection is invalidated as SQLAlchemy invalidates it. What SQLAlchemy's
cursor events (and ``echo``) no longer see are these statements.
A connection of the application's (a transactional enqueue) is never
bypassed, whatever engine it came from (``omniq.services.caller_tx`` clears
the mark while OmniQ writes on it): its statements go through SQLAlchemy,
where the application's instrumentation sees them.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa

__all__ = ["OWN_ENGINE", "own_connection", "run_on_driver"]

#: The execution option that marks OmniQ's own SQLite engines (see the module docstring).
OWN_ENGINE = "omniq_own_sqlite"


def own_connection(conn: sa.Connection) -> bool:
    """True when ``conn`` is one of OmniQ's own SQLite connections (see the module docstring)."""
    return bool(conn.get_execution_options().get(OWN_ENGINE))


def run_on_driver(
    conn: sa.Connection,
    sql: str,
    params: Sequence[Any],
    *,
    many: bool = False,
    autobegin: bool = True,
) -> list[Any]:
    """Run ``sql`` on ``conn``'s driver connection, in its transaction; its rows.

    ``many``: ``params`` is a sequence of rows, run by ``executemany`` (no rows
    returned). As SQLAlchemy's own execution does, a transaction is begun if
    none is (unless ``autobegin`` is false: the statement that begins one), a
    driver error is raised wrapped (``DBAPIError.instance``), and a
    connection the driver reports lost is invalidated.
    """
    if autobegin and not conn.in_transaction():
        conn.begin()  # SQLAlchemy's autobegin (on SQLite: BEGIN IMMEDIATE, see engine.py)
    driver = conn.connection.dbapi_connection
    assert driver is not None  # a Connection in use has its driver connection
    dbapi = conn.dialect.loaded_dbapi
    cursor = None
    try:
        cursor = driver.cursor()  # the DBAPI's own (pysqlite, or aiosqlite's adapter)
        if many:
            cursor.executemany(sql, params)
            return []
        cursor.execute(sql, params)
        return list(cursor.fetchall())
    except dbapi.Error as exc:
        lost = conn.dialect.is_disconnect(exc, driver, cursor)
        if lost:
            conn.invalidate(exc)
        raise sa.exc.DBAPIError.instance(
            sql,
            params,
            exc,
            dbapi.Error,
            hide_parameters=conn.engine.hide_parameters,
            connection_invalidated=lost,
            dialect=conn.dialect,
            ismulti=many,
        ) from exc
    finally:
        if cursor is not None:
            with contextlib.suppress(dbapi.Error):  # a closed connection: already raised
                cursor.close()
