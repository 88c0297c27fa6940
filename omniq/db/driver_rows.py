"""Many rows through one INSERT's own text, bound natively by SQLite's driver.

For plain INSERTs (and upserts) SQLite binds each row's values in the
driver's C loop (``executemany``), which costs less than reading the rows
back out of one JSON text (:class:`omniq.db.engine.Batch`). Rows are bound
by position (``?`` placeholders, a tuple per row): binding by name makes
``sqlite3`` build and look up every parameter's name per row, which cost
about twice the time of storing a 40-column task row. A column that is
NULL in every row of a call is left out of that call's statement (a new task
row has about twenty such columns, an event row about seven): Python's
``sqlite3`` binds a ``None`` through its adapter lookup, which costs more
than storing the row. Only nullable columns without a default are left out,
so the row stored is the same. On OmniQ's own connections the statement goes
to the driver without SQLAlchemy's execution (see :mod:`omniq.db.driver_exec`).
"""

from __future__ import annotations

import functools
import operator
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import sqlalchemy as sa

from omniq.db.driver_exec import own_connection, run_on_driver
from omniq.db.values import converter, one_value

__all__ = ["DriverRows"]

#: Statements kept per DriverRows (one per set of all-NULL columns seen).
_MAX_SHAPES = 64

#: A named placeholder in compiled text (``:key``; not ``::`` or part of a word).
_NAMED = re.compile(r"(?<![:\w]):(\w+)")


@functools.cache
def _dialects() -> tuple[sa.Dialect, sa.Dialect]:
    """SQLite's dialect compiling named (``:key``) and positional (``?``) placeholders."""
    from sqlalchemy.dialects import sqlite

    return sqlite.dialect(paramstyle="named"), sqlite.dialect(paramstyle="qmark")


def positional_text(
    stmt: sa.ClauseElement, keys: list[str] | None = None
) -> tuple[str, list[str], sa.engine.Compiled]:
    """``stmt``'s text with ``?`` placeholders for SQLite's driver, the name of each
    placeholder's parameter in order, and the positional compilation (whose
    ``construct_params`` gives every parameter's value by name).

    ``keys``: the columns an INSERT binds (None: what the statement holds). The
    order is read off the same statement compiled with named placeholders; the
    two texts must agree on how many values they bind, else ValueError (a
    statement with an expanding ``IN`` cannot be compiled once).
    """
    named_dialect, positional_dialect = _dialects()
    names = _NAMED.findall(str(stmt.compile(dialect=named_dialect, column_keys=keys)))
    if keys is not None:
        unknown = sorted(set(names) - set(keys))
        if unknown:
            raise ValueError(f"statement binds values not in the rows: {unknown}")
    compiled = stmt.compile(dialect=positional_dialect, column_keys=keys)
    sql = str(compiled)
    if sql.count("?") != len(names) or len(compiled.params) != len(set(names)):
        raise ValueError(f"cannot bind this statement by position: {sql}")
    return sql, names, compiled


def positional_dialect() -> sa.Dialect:
    """The SQLite dialect compiling ``?`` placeholders (its processors: SQLite's own)."""
    return _dialects()[1]


class DriverRows:
    """An INSERT (or upsert) run once per row by the driver's executemany (SQLite)."""

    def __init__(
        self, stmt: sa.Insert, columns: Sequence[tuple[str, sa.types.TypeEngine[Any]]]
    ) -> None:
        self._stmt = stmt
        self._dialect = _dialects()[0]
        types = dict(columns)
        sql, names = self._compile(list(types))
        #: The keys the statement binds; a row's values are read in this order.
        self._keys = names
        self._index = {key: i for i, key in enumerate(names)}
        self._getter: Callable[[Mapping[str, Any]], Sequence[Any]] = (
            operator.itemgetter(*names) if len(names) > 1 else one_value(names[0])
        )
        self._convert = [
            (i, fn)
            for i, key in enumerate(names)
            if (fn := converter(types[key], self._dialect, json_text=True)) is not None
        ]
        self._optional = tuple(
            self._index[c.key]
            for c in stmt.table.c
            if c.key in self._index
            and c.nullable
            and not c.primary_key
            and c.default is None
            and c.server_default is None
        )
        #: By the positions left out: the text and the positions of the values it binds.
        self._shapes: dict[tuple[int, ...], tuple[str, list[int]]] = {
            (): (sql, list(range(len(names))))
        }

    def _compile(self, keys: list[str]) -> tuple[str, list[str]]:
        """The statement's positional text binding ``keys``, and the key of each
        placeholder in order (see :func:`positional_text`)."""
        sql, names, _ = positional_text(self._stmt, keys)
        return sql, names

    def _statement(self, absent: tuple[int, ...]) -> tuple[str, list[int]]:
        """The statement leaving out the columns at positions ``absent``."""
        found = self._shapes.get(absent)
        if found is not None:
            return found
        if len(self._shapes) >= _MAX_SHAPES:
            return self._shapes[()]
        left_out = set(absent)
        sql, names = self._compile([k for i, k in enumerate(self._keys) if i not in left_out])
        found = self._shapes[absent] = (sql, [self._index[name] for name in names])
        return found

    def execute(self, conn: sa.Connection, rows: Sequence[Mapping[str, Any]]) -> None:
        """Run the statement once per row of ``rows`` (mappings by column key), in order."""
        if not rows:
            return
        columns = [list(column) for column in zip(*map(self._getter, rows), strict=True)]
        for i, fn in self._convert:
            columns[i] = [None if value is None else fn(value) for value in columns[i]]
        n = len(rows)
        absent = tuple(i for i in self._optional if columns[i].count(None) == n)
        sql, order = self._statement(absent)
        params = list(zip(*(columns[i] for i in order), strict=True))
        if own_connection(conn):
            run_on_driver(conn, sql, params, many=True)  # see omniq.db.driver_exec
        else:
            conn.exec_driver_sql(sql, params)
