"""The marker of ``omniq migrate-db`` (``omniq_db_migration``): Core statements.

A database whose queue was moved elsewhere holds a row of role ``source``:
while it is there, claims take nothing (:func:`claims_open`, part of every
claim statement), schedules do not fire, and enqueues raise
:class:`~omniq.errors.DatabaseMigrated` (:func:`refuse_if_migrated`, in the
enqueue transactions). The database that received the copy holds a row of
role ``target`` with the same migration id.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import attrs
import sqlalchemy as sa
from sqlalchemy.engine import Connection

from omniq.db.schema import db_migration as m
from omniq.errors import DatabaseMigrated
from omniq.repositories._base import MIGRATED, translate_errors

__all__ = [
    "REFUSE_TRIGGER",
    "SOURCE",
    "SQLITE_DROP_TRIGGER",
    "SQLITE_REFUSE_TRIGGER",
    "TARGET",
    "MigrationMark",
    "claims_open",
    "clear_mark",
    "copy_arriving",
    "read_mark",
    "refuse_if_migrated",
    "write_mark",
]

#: The role of a database whose queue moved to another one (flagged: read-only).
SOURCE = "source"
#: The role of the database that received a copy.
TARGET = "target"
#: The state of a mark while the copy runs (then ``done``).
COPYING = "copying"


@attrs.frozen
class MigrationMark:
    """One row of ``omniq_db_migration``."""

    role: str
    migration_id: str
    peer: str
    state: str
    cutoff: datetime
    started_at: datetime
    finished_at: datetime | None = None


# --- the claim's gate ---------------------------------------------------------------------


def claims_open() -> sa.ColumnElement[bool]:
    """The condition every claim (and schedule fire) adds: the database was not migrated
    away, and is not receiving a copy that has not finished.

    One uncorrelated ``NOT EXISTS`` on a table of at most two rows: the claim
    statement stays one statement, and a worker of a flagged database claims
    nothing from the moment the flag commits. On the target, workers started
    before the copy finished wait for it: a schedule cannot fire there a run
    whose task is still to be copied, nor a task run before its dependency
    edges arrive.
    """
    return ~sa.exists().where(sa.or_(m.c.role == SOURCE, m.c.state == COPYING))


# --- reads and writes -------------------------------------------------------------------------


def read_mark(conn: Connection, role: str) -> MigrationMark | None:
    """The mark of ``role`` in this database, if any."""
    with translate_errors("read the migration mark"):
        row = conn.execute(sa.select(m).where(m.c.role == role)).mappings().first()
    return None if row is None else MigrationMark(**dict(row))


#: The name of the trigger that refuses new tasks on a flagged source (revision 0012).
REFUSE_TRIGGER = "omniq_tasks_refuse_if_migrated"

#: SQLite: the trigger exists only while the database is flagged (revision 0013). A
#: SQLite trigger runs once per inserted row, and one that checked the flag on every
#: row cost an unflagged database's enqueues a third of their speed; PostgreSQL's runs
#: once per statement and stays (revision 0012).
SQLITE_REFUSE_TRIGGER = f"""
CREATE TRIGGER IF NOT EXISTS {REFUSE_TRIGGER}
BEFORE INSERT ON omniq_tasks
BEGIN
    SELECT RAISE(ABORT, '{MIGRATED}');
END
"""
SQLITE_DROP_TRIGGER = f"DROP TRIGGER IF EXISTS {REFUSE_TRIGGER}"

#: Built once: operator writes run it (enqueues are refused by a trigger, revision 0012).
_SOURCE_MARK = sa.select(m.c.peer, m.c.started_at).where(m.c.role == SOURCE)


def copy_arriving(conn: Connection) -> bool:
    """True while this database receives a migration's copy that has not finished."""
    with translate_errors("read the migration mark"):
        found = conn.execute(sa.select(m.c.role).where(m.c.role == TARGET, m.c.state == COPYING))
        return found.first() is not None


def refuse_if_migrated(conn: Connection) -> None:
    """Raise :class:`DatabaseMigrated` when this database was migrated away (an enqueue's check)."""
    with translate_errors("check the migration mark"):
        row = conn.execute(_SOURCE_MARK).first()
    if row is not None:
        raise DatabaseMigrated(row.peer, row.started_at)


def write_mark(conn: Connection, mark: MigrationMark) -> None:
    """Insert or replace the mark of ``mark.role``.

    On SQLite, the mark of a source also creates the trigger that refuses new
    tasks, in the same transaction (see :data:`SQLITE_REFUSE_TRIGGER`).
    """
    values: dict[str, Any] = attrs.asdict(mark)
    with translate_errors("write the migration mark"):
        conn.execute(sa.delete(m).where(m.c.role == mark.role))
        conn.execute(sa.insert(m).values(values))
        if mark.role == SOURCE and conn.dialect.name == "sqlite":
            conn.exec_driver_sql(SQLITE_REFUSE_TRIGGER)


def clear_mark(conn: Connection, role: str) -> bool:
    """Delete the mark of ``role``; True when there was one (on SQLite, clearing a
    source's mark drops its trigger too)."""
    with translate_errors("clear the migration mark"):
        if role == SOURCE and conn.dialect.name == "sqlite":
            conn.exec_driver_sql(SQLITE_DROP_TRIGGER)
        return bool(conn.execute(sa.delete(m).where(m.c.role == role)).rowcount)
