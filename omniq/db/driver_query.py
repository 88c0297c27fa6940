"""A statement that returns rows, run through SQLite's driver directly.

On SQLite the claim (:meth:`omniq.repositories.tasks.TaskRepository.claim`)
hands its statement to the driver (why: :mod:`omniq.db.driver_exec`; SQLite
itself claims one task in a few tens of µs, less than SQLAlchemy's execution
of the statement costs run cold). The statement is still built with
SQLAlchemy Core and compiled by SQLAlchemy, once (as :mod:`omniq.db.driver_rows`
compiles its INSERTs: public compilation only); its parameters come from the
compilation's ``construct_params`` and are bound as OmniQ stores such values,
and its rows are converted by the result processors of the column types, the
functions SQLAlchemy's own execution applies (public ``TypeEngine``
methods). Statements with an expanding ``IN`` cannot be compiled once;
:meth:`DriverQuery.of` returns None for them."""

from __future__ import annotations

import enum
from collections.abc import Callable, Mapping
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa

from omniq.db.driver_exec import run_on_driver
from omniq.db.driver_rows import positional_dialect, positional_text
from omniq.db.types import Duration, UTCDateTime
from omniq.db.values import converter

__all__ = ["DriverQuery"]

_Processor = Callable[[Any], Any]

#: How an instant and a duration are stored (see omniq.db.values.converter).
_INSTANT = converter(UTCDateTime(), positional_dialect())
_DURATION = converter(Duration(), positional_dialect())


def _stored(value: Any) -> Any:
    """A parameter as OmniQ's columns store it: every instant of the schema is a
    :class:`UTCDateTime` (microseconds), every duration a :class:`Duration`
    (seconds), an enum its value; anything else as the driver binds it."""
    if isinstance(value, datetime):
        return _INSTANT(value)
    if isinstance(value, timedelta):
        return _DURATION(value)
    if isinstance(value, enum.Enum):
        return value.value
    return value


class DriverQuery:
    """A Core statement returning rows, compiled once, run by SQLite's driver."""

    def __init__(self, stmt: sa.Update) -> None:
        """Raises ValueError if ``stmt`` cannot be compiled once (see :meth:`of`)."""
        self._sql, self._names, self._compiled = positional_text(stmt)
        columns = list(stmt.exported_columns)
        #: The names of the columns it returns, in order.
        self.keys: list[str] = [c.name for c in columns]
        self._types = [c.type for c in columns]
        self._results: tuple[sa.Dialect, list[tuple[int, _Processor]]] | None = None

    @classmethod
    def of(cls, stmt: sa.Update) -> DriverQuery | None:
        """``stmt`` run by the driver; None if it cannot be compiled once (expanding IN)."""
        try:
            return cls(stmt)
        except ValueError:
            return None

    def execute(self, conn: sa.Connection, params: Mapping[str, Any]) -> list[list[Any]]:
        """The statement's rows for ``params`` (by bind name), converted as
        SQLAlchemy converts them; each row a list in :attr:`keys` order.

        Every parameter's value (given, or carried by the statement) comes from
        the compilation's own ``construct_params``, which refuses a missing one;
        it is bound as OmniQ stores such a value (:func:`_stored`).
        A stored value its column's processor cannot convert (text where an
        instant belongs) is left as stored, for the record built from the row
        to refuse, naming the field: the claim quarantines that row instead of
        failing every claim that meets it (SQLAlchemy's execution raised).
        """
        given = self._compiled.construct_params(dict(params))
        assert given is not None  # a compiled statement's parameters, by name
        rows = run_on_driver(conn, self._sql, [_stored(given[name]) for name in self._names])
        processors = self._processors(conn.dialect)
        out = []
        for row in rows:
            converted = list(row)
            for i, process in processors:
                try:  # noqa: SIM105 (a plain try per value: no context manager entered)
                    converted[i] = process(converted[i])
                except (ValueError, TypeError, OverflowError):
                    pass  # left as stored (see above)
            out.append(converted)
        return out

    def _processors(self, dialect: sa.Dialect) -> list[tuple[int, _Processor]]:
        """The result processors of the returned columns for ``dialect`` (the
        connection's own: its JSON deserializer is the engine's)."""
        cached = self._results
        if cached is not None and cached[0] is dialect:
            return cached[1]
        processors: list[tuple[int, _Processor]] = [
            (i, process)
            for i, type_ in enumerate(self._types)
            if (process := type_.dialect_impl(dialect).result_processor(dialect, None)) is not None
        ]
        self._results = (dialect, processors)
        return processors
