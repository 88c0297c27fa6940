"""The copy of one table, batch by batch, resumable: Core statements built from the Table.

Rows are read in primary-key order (keyset pages: ``WHERE pk > last``), so a
page is cheap however far the copy got. Each page is written in one target
transaction, without the rows the target already has (looked up by primary
key): a copy interrupted at any point and run again writes each row once.
Values go through the columns' own types, so ids, UTC instants, durations
and JSON arrive as they were, whatever the two engines are.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import REGCLASS
from sqlalchemy.engine import Connection

from omniq.db.engine import schema_of
from omniq.migrate_db.plan import Row, TablePlan
from omniq.services import Storage

__all__ = ["advance_sequences", "copy_table", "count_rows", "status_counts"]

Key = tuple[Any, ...]


def _key_columns(table: sa.Table) -> list[sa.Column[Any]]:
    return list(table.primary_key.columns)


def _after(columns: Sequence[sa.Column[Any]], last: Key) -> sa.ColumnElement[bool]:
    if len(columns) == 1:
        after: sa.ColumnElement[bool] = columns[0] > last[0]
        return after
    values = (sa.literal(v, type_=c.type) for v, c in zip(last, columns, strict=True))
    return sa.tuple_(*columns) > sa.tuple_(*values)


def _among(columns: Sequence[sa.Column[Any]], keys: Sequence[Key]) -> sa.ColumnElement[bool]:
    if len(columns) == 1:
        return columns[0].in_([k[0] for k in keys])
    return sa.tuple_(*columns).in_(keys)


def _page(
    table: sa.Table, where: sa.ColumnElement[bool] | None, last: Key | None, size: int
) -> Callable[[Connection], list[Row]]:
    columns = _key_columns(table)

    def body(conn: Connection) -> list[Row]:
        stmt = sa.select(table).order_by(*columns).limit(size)
        if where is not None:
            stmt = stmt.where(where)
        if last is not None:
            stmt = stmt.where(_after(columns, last))
        return [{c.key: row[c] for c in table.c} for row in conn.execute(stmt).mappings()]

    return body


def _insert_missing(
    table: sa.Table, rows: list[Row], change: Callable[[Row], Row] | None
) -> Callable[[Connection], int]:
    columns = _key_columns(table)

    def body(conn: Connection) -> int:
        keys = [tuple(row[c.key] for c in columns) for row in rows]
        present = {tuple(r) for r in conn.execute(sa.select(*columns).where(_among(columns, keys)))}
        missing = [row for row, key in zip(rows, keys, strict=True) if key not in present]
        if change is not None:
            missing = [change(dict(row)) for row in missing]
        if missing:
            conn.execute(table.insert(), missing)
        return len(missing)

    return body


async def copy_table(
    source: Storage,
    target: Storage,
    item: TablePlan,
    *,
    cutoff: datetime,
    batch_size: int,
    progress: Callable[[int, int], None],
) -> int:
    """Copy the rows of ``item`` missing from the target; return how many were written.

    ``progress(read, written)`` is called after each batch committed.
    """
    where = item.where(cutoff)
    columns = _key_columns(item.table)
    last: Key | None = None
    written = 0
    while True:
        rows = await source.read(
            _page(item.table, where, last, batch_size), what=f"read {item.name}"
        )
        if not rows:
            return written
        added = await target.write(
            _insert_missing(item.table, rows, item.rule.change), what=f"copy {item.name}"
        )
        written += added
        last = tuple(rows[-1][c.key] for c in columns)
        progress(len(rows), added)
        if len(rows) < batch_size:
            return written


def count_rows(item: TablePlan, cutoff: datetime | None) -> Callable[[Connection], int]:
    """The number of rows of ``item`` (those the rule copies, given ``cutoff``)."""

    def body(conn: Connection) -> int:
        stmt = sa.select(sa.func.count()).select_from(item.table)
        where = item.where(cutoff) if cutoff is not None else None
        if where is not None:
            stmt = stmt.where(where)
        return int(conn.execute(stmt).scalar_one())

    return body


def status_counts(
    item: TablePlan, cutoff: datetime | None, *, as_copied: bool
) -> Callable[[Connection], dict[str, int]]:
    """Rows per status (``{"*": n}`` for a table without one); ``as_copied``: the
    statuses the target gets (running counted as pending)."""

    def body(conn: Connection) -> dict[str, int]:
        column = item.table.c.get("status")
        if column is None:
            return {"*": count_rows(item, cutoff)(conn)}
        stmt = sa.select(column, sa.func.count()).group_by(column)
        where = item.where(cutoff) if cutoff is not None else None
        if where is not None:
            stmt = stmt.where(where)
        counts: dict[str, int] = {}
        for status, n in conn.execute(stmt).all():
            name = str(status)
            if as_copied:
                name = item.rule.status_as.get(name, name)
            counts[name] = counts.get(name, 0) + int(n)
        return counts

    return body


def _serial_column(table: sa.Table) -> sa.Column[Any] | None:
    """The table's autoincrement integer key (a sequence on PostgreSQL), if it has one."""
    columns = _key_columns(table)
    if len(columns) != 1:
        return None
    column = columns[0]
    if column.autoincrement is True or (
        column.autoincrement == "auto" and isinstance(column.type, sa.Integer)
    ):
        return column
    return None


def serial_tops(tables: Sequence[sa.Table]) -> Callable[[Connection], dict[str, int]]:
    """The largest serial id of each table that has a serial key and rows."""

    def body(conn: Connection) -> dict[str, int]:
        tops = {}
        for table in tables:
            column = _serial_column(table)
            if column is None:
                continue
            top = conn.execute(sa.select(sa.func.max(column))).scalar_one_or_none()
            if top is not None:
                tops[table.name] = int(top)
        return tops

    return body


def advance_sequences(
    tables: Sequence[sa.Table], floors: Mapping[str, int] | None = None
) -> Callable[[Connection], list[str]]:
    """PostgreSQL: move each serial key's sequence past the largest id in the table, or
    past ``floors[table name]`` when larger (setval; never backwards).

    Run before the copy with the source's largest ids, rows the target writes
    meanwhile (an enqueue's event) never take an id a copied row needs; run
    after it, new rows never collide with copied ones. SQLite needs nothing
    (a new rowid is the largest plus one). Returns the tables whose sequence moved.
    """

    def body(conn: Connection) -> list[str]:
        if conn.dialect.name != "postgresql":
            return []
        schema = schema_of(conn)
        tops = serial_tops(tables)(conn)
        moved = []
        for table in tables:
            column = _serial_column(table)
            if column is None:
                continue
            top = max(tops.get(table.name, 0), (floors or {}).get(table.name, 0))
            if top <= 0:
                continue
            name = f'"{schema}"."{table.name}"' if schema else table.name
            sequence = sa.func.pg_get_serial_sequence(name, column.name)
            last = sa.func.coalesce(sa.func.pg_sequence_last_value(sa.cast(sequence, REGCLASS)), 0)
            conn.execute(sa.select(sa.func.setval(sequence, sa.func.greatest(top, last))))
            moved.append(table.name)
        return moved

    return body
