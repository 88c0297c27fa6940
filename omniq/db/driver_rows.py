"""Many rows through one INSERT's own text, bound natively by SQLite's driver.

For plain INSERTs (and upserts) SQLite binds each row's values in the
driver's C loop (``executemany``), which costs less than reading the rows
back out of one JSON text (:class:`omniq.db.engine.Batch`). Two details keep
that loop cheap:

- Values are bound by position (``?``), not by name: a named parameter costs
  the driver a string and a dictionary lookup per value.
- A column that is NULL in every row of a call is left out of that call's
  statement (a task row has about twenty such columns, an event row about
  seven): the driver binds ``None`` through its adapter lookup, which costs
  more than storing the row. Only nullable columns without a default are
  left out, so the row stored is the same.
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import sqlalchemy as sa

from omniq.db.values import converter, one_value

__all__ = ["DriverRows"]

#: Statements kept per DriverRows (one per set of all-NULL columns seen).
_MAX_SHAPES = 64


class DriverRows:
    """An INSERT (or upsert) run once per row by the driver's executemany (SQLite)."""

    def __init__(
        self, stmt: sa.Insert, columns: Sequence[tuple[str, sa.types.TypeEngine[Any]]]
    ) -> None:
        from sqlalchemy.dialects import sqlite

        self._stmt = stmt
        self._dialect = sqlite.dialect(paramstyle="qmark")
        types = dict(columns)
        self._keys = list(types)
        sql, order = self._compile(self._keys)
        #: The statement's text with every column (``?`` parameters).
        self.sql = sql
        bound = {self._keys[i] for i in order}
        self._keys = [key for key in self._keys if key in bound]
        index = {key: i for i, key in enumerate(self._keys)}
        self._getter: Callable[[Mapping[str, Any]], Sequence[Any]] = (
            operator.itemgetter(*self._keys) if len(self._keys) > 1 else one_value(self._keys[0])
        )
        self._convert = [
            (index[key], fn)
            for key in self._keys
            if (fn := converter(types[key], self._dialect, json_text=True)) is not None
        ]
        table = stmt.table
        self._optional = tuple(
            index[c.key]
            for c in table.c
            if c.key in index
            and c.nullable
            and not c.primary_key
            and c.default is None
            and c.server_default is None
        )
        self._shapes: dict[tuple[int, ...], tuple[str, list[int]]] = {
            (): (sql, [index[key] for key in self._keys])
        }

    def _compile(self, keys: list[str]) -> tuple[str, list[int]]:
        """The statement's text binding ``keys`` and, in bind order, their positions."""
        compiled = self._stmt.compile(dialect=self._dialect, column_keys=keys)
        names = list(compiled.positiontup or ())
        position = {key: i for i, key in enumerate(keys)}
        unknown = sorted(set(names) - position.keys())
        if unknown:
            raise ValueError(f"statement binds values not in the rows: {unknown}")
        return str(compiled), [position[name] for name in names]

    def _statement(self, absent: tuple[int, ...]) -> tuple[str, list[int]]:
        """The text leaving out the columns at ``absent`` and the positions it binds."""
        found = self._shapes.get(absent)
        if found is not None:
            return found
        if len(self._shapes) >= _MAX_SHAPES:
            return self._shapes[()]
        left_out = set(absent)
        kept = [i for i in range(len(self._keys)) if i not in left_out]
        sql, order = self._compile([self._keys[i] for i in kept])
        found = self._shapes[absent] = (sql, [kept[i] for i in order])
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
        conn.exec_driver_sql(sql, list(zip(*(columns[i] for i in order), strict=True)))
