"""One-hop transactions on SQLite: a whole write transaction in one trip to the driver thread.

aiosqlite runs every call on its connection's own thread; through
SQLAlchemy's async execution each statement costs a thread round trip plus
~100 µs of statement machinery. The queue's hot paths (enqueue, claim,
complete) are short transactions of two to five statements, so on SQLite
they run as one function on aiosqlite's thread instead: ``BEGIN IMMEDIATE``,
the statements, ``COMMIT``. The statements are SQLAlchemy Core statements
compiled once for the dialect; values go through the columns' own bind and
result processors (SQLAlchemy's public type API), so rows read and written
here are the same as on the general path.
"""

from __future__ import annotations

import operator
import sqlite3
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar, cast

import sqlalchemy as sa
from sqlalchemy.sql.compiler import SQLCompiler

from omniq._time import EPOCH, to_micros
from omniq.db.types import Duration, UTCDateTime

T = TypeVar("T")
Processor = Callable[[Any], Any]

#: Rows per multi-row INSERT (a power of two; 128 x 35 columns stays far below
#: SQLite's limit of 32,766 parameters).
_ROWS_PER_STATEMENT = 128

#: Durations read back through the fast path (beyond it, the column type decides).
_FAST_SECONDS = 1e12


def _fast_bind(column_type: sa.types.TypeEngine[Any], slow: Processor) -> Processor:
    """``slow`` (the column type's own bind processor) with a shortcut for common values.

    The shortcuts give exactly what ``slow`` gives for those values; anything
    else (naive datetimes, odd types) still goes through ``slow`` and its checks.
    """
    if isinstance(column_type, UTCDateTime):

        def instant(value: Any) -> Any:
            if value.__class__ is datetime and value.tzinfo is UTC:
                return to_micros(value)
            return slow(value)

        return instant
    if isinstance(column_type, Duration):

        def duration(value: Any) -> Any:
            if value.__class__ is timedelta:
                return value.total_seconds()
            return slow(value)

        return duration
    if isinstance(column_type, sa.JSON):

        def document(value: Any) -> Any:
            if value == () or value == []:
                return "[]"
            if value.__class__ is dict and len(value) == 1:
                # Event data such as {"attempt": 2}: json.dumps' own text, without its machinery.
                ((key, number),) = value.items()
                if (
                    key.__class__ is str
                    and key.isascii()
                    and key.isidentifier()
                    and number.__class__ is int
                ):
                    return f'{{"{key}": {number}}}'
            return slow(value)

        return document
    if isinstance(column_type, sa.Boolean):

        def flag(value: Any) -> Any:
            if value is True:
                return 1
            if value is False:
                return 0
            return slow(value)

        return flag
    return slow


def _fast_result(column_type: sa.types.TypeEngine[Any], slow: Processor) -> Processor:
    """``slow`` (the column type's result processor) with a shortcut for common values."""
    if isinstance(column_type, UTCDateTime):

        def instant(value: Any) -> Any:
            if value.__class__ is int:
                return EPOCH + timedelta(microseconds=value)
            return slow(value)

        return instant
    if isinstance(column_type, Duration):

        def duration(value: Any) -> Any:
            # int too: SQLite's RETURNING gives whole REAL values as integers.
            cls = value.__class__
            if (cls is float or cls is int) and -_FAST_SECONDS < value < _FAST_SECONDS:
                return timedelta(seconds=value)
            return slow(value)

        return duration
    if isinstance(column_type, sa.JSON):

        def document(value: Any) -> Any:
            if value == "[]":
                return []
            return slow(value)

        return document
    return slow


__all__ = ["Compiled", "RowCodec", "in_transaction"]


class RowCodec:
    """Bind and result processors of a table's columns for one dialect."""

    def __init__(self, table: sa.Table, dialect: sa.Dialect) -> None:
        self.table = table
        self.bind: dict[str, Callable[[Any], Any] | None] = {}
        self.result: dict[str, Callable[[Any], Any] | None] = {}
        for column in table.c:
            impl = column.type.dialect_impl(dialect)
            bind = impl.bind_processor(dialect)
            result = impl.result_processor(dialect, None)
            self.bind[column.key] = None if bind is None else _fast_bind(column.type, bind)
            self.result[column.key] = None if result is None else _fast_result(column.type, result)

    def loader(self, names: Sequence[str]) -> Callable[[Sequence[Any]], dict[str, Any]]:
        """A function turning raw driver values (columns ``names``, in order) into a row.

        Generated code (one dict display, like attrs' generated ``__init__``):
        the claim reads thousands of 33-column rows per second. Each column's
        result processor runs on its non-NULL values; a raw row of the wrong
        length raises ValueError.
        """
        names = tuple(names)
        namespace: dict[str, Any] = {}
        items = []
        for i, name in enumerate(names):
            fn = self.result[name]
            if fn is None:
                items.append(f"{name!r}: v{i}")
            else:
                namespace[f"p{i}"] = fn
                items.append(f"{name!r}: None if v{i} is None else p{i}(v{i})")
        # A trailing comma keeps a one-column row a tuple unpacking.
        unpack = "".join(f"v{i}, " for i in range(len(names)))
        source = f"def load(raw):\n    {unpack} = raw\n    return {{{', '.join(items)}}}\n"
        exec(compile(source, f"<omniq loader of {self.table.name}>", "exec"), namespace)
        load: Callable[[Sequence[Any]], dict[str, Any]] = namespace["load"]
        return load


class Compiled:
    """A Core statement compiled once: SQL text with ``?`` placeholders in a known order."""

    def __init__(
        self,
        statement: sa.ClauseElement,
        dialect: sa.Dialect,
        processors: Mapping[str, Callable[[Any], Any] | None] | None = None,
    ) -> None:
        compiled = cast(SQLCompiler, statement.compile(dialect=dialect))
        self.sql = compiled.string
        self.names: tuple[str, ...] = tuple(compiled.positiontup or ())
        if processors is None:
            processors = {
                name: compiled.binds[name].type.dialect_impl(dialect).bind_processor(dialect)
                for name in set(self.names)
            }
        self._converting = [
            (i, fn) for i, name in enumerate(self.names) if (fn := processors.get(name)) is not None
        ]
        # Literal values the statement carries itself (e.g. status = 'running').
        self._constants = {
            name: compiled.binds[name].effective_value
            for name in set(self.names)
            if not compiled.binds[name].required
        }
        self._pick = operator.itemgetter(*self.names) if self.names else None
        self._multi: dict[int, str] = {}
        returning = getattr(compiled, "returning", None) or ()
        self.returning: tuple[str, ...] = tuple(c.key for c in returning)

    def insert_many(self, conn: sqlite3.Connection, rows: Sequence[Sequence[Any]]) -> None:
        """Run this INSERT for many parameter rows, as multi-row ``VALUES`` statements.

        ``executemany`` steps the statement once per row, and the driver takes
        the GIL back after every step: a busy event loop then stalls each row.
        One statement for up to ``_ROWS_PER_STATEMENT`` rows is one step. Row
        counts are split into powers of two, so few statement texts are compiled.
        """
        if len(rows) == 1:
            conn.execute(self.sql, rows[0])
            return
        start = 0
        while start < len(rows):
            left = len(rows) - start
            size = (
                _ROWS_PER_STATEMENT if left >= _ROWS_PER_STATEMENT else 1 << (left.bit_length() - 1)
            )
            chunk = rows[start : start + size]
            conn.execute(self._multi_row_sql(size), [v for row in chunk for v in row])
            start += size

    def _multi_row_sql(self, rows: int) -> str:
        sql = self._multi.get(rows)
        if sql is None:
            head, sep, tail = self.sql.partition(" VALUES ")
            if not sep or not tail.startswith("("):
                raise ValueError(f"not a single-row INSERT ... VALUES statement: {self.sql}")
            group = tail[: tail.index(")") + 1]
            sql = self._multi[rows] = f"{head}{sep}{', '.join([group] * rows)}{tail[len(group) :]}"
        return sql

    def params(self, values: Mapping[str, Any]) -> tuple[Any, ...]:
        """The positional parameters for ``values`` (bound literals fill the rest)."""
        constants = self._constants
        if self._pick is not None and not constants:
            picked = self._pick(values)  # every name at C speed (the common case)
            out = list(picked) if len(self.names) > 1 else [picked]
        else:
            out = [values[name] if name in values else constants[name] for name in self.names]
        for i, process in self._converting:
            value = out[i]
            if value is not None:
                out[i] = process(value)
        return tuple(out)


def in_transaction(conn: sqlite3.Connection, body: Callable[[sqlite3.Connection], T]) -> T:
    """Run ``body`` between ``BEGIN IMMEDIATE`` and ``COMMIT`` (rolled back on error).

    Meant to run on the driver's own thread (``aiosqlite.Connection._execute``).
    """
    conn.execute("BEGIN IMMEDIATE")
    try:
        result = body(conn)
    except BaseException:
        # SQLite may already have rolled back (e.g. on SQLITE_FULL); keep the real error.
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")
    return result
