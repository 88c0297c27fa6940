"""How a Python value is stored in a column: the converters batches and bulk inserts share.

Bind processing per value is a hot path's cost when rows are bound as data
(:class:`omniq.db.engine.Batch`) or through the driver directly
(:class:`omniq.db.driver_rows.DriverRows`): each column gets the cheapest
function that stores what its type's own bind processor would store.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import sqlalchemy as sa

from omniq._time import EPOCH
from omniq.db.types import Duration, UTCDateTime

__all__ = ["COMPACT", "converter", "one_value", "stored_type"]

#: Compact JSON text (one encoder, not one per value as ``json.dumps(separators=)``).
COMPACT = json.JSONEncoder(separators=(",", ":"))

_MICROSECOND = timedelta(microseconds=1)


def _json_text(value: Any) -> str:
    """A JSON column's value bound directly: its compact JSON text."""
    if not value and value.__class__ in _ARRAYS:
        return "[]"  # most documents an enqueue writes: a task's empty tags and depends_on
    return COMPACT.encode(value)


_ARRAYS = (list, tuple)


def _native_json(value: Any) -> Any:
    """A JSON column's value inside a batch: arrays and objects as they are."""
    if isinstance(value, list | tuple | dict):
        return value
    return json.dumps(value)  # a scalar document: its JSON text, stored as text


def stored_type(type_: sa.types.TypeEngine[Any]) -> sa.types.TypeEngine[Any]:
    """What an instant or a duration is stored as; other types as they are."""
    if isinstance(type_, UTCDateTime):
        return sa.BigInteger()
    if isinstance(type_, Duration):
        return sa.Float()
    return type_


def one_value(key: str) -> Callable[[Mapping[str, Any]], Sequence[Any]]:
    """The getter of a one-column batch's values."""
    return lambda row: (row[key],)


def converter(
    type_: sa.types.TypeEngine[Any], dialect: sa.Dialect, *, json_text: bool = False
) -> Any:
    """The function storing a non-None value of ``type_`` in SQLite (None: as is).

    JSON documents are embedded as they are in a JSON batch, or as their
    compact text (``json_text``) where bound directly. Instants and durations
    already in their canonical form (aware UTC datetimes, timedeltas) are
    converted inline; anything else goes through the type's own bind
    processing, which validates it.
    """
    if isinstance(type_, sa.JSON):
        return _json_text if json_text else _native_json
    if isinstance(type_, UTCDateTime):
        slow_instant = type_.process_bind_param

        def instant(value: Any) -> Any:
            if value.__class__ is datetime and value.tzinfo is UTC:
                return (value - EPOCH) // _MICROSECOND
            return slow_instant(value, dialect)

        return instant
    if isinstance(type_, Duration):
        slow_duration = type_.process_bind_param

        def duration(value: Any) -> Any:
            if value.__class__ is timedelta:
                return value.total_seconds()
            return slow_duration(value, dialect)

        return duration
    return type_.dialect_impl(dialect).bind_processor(dialect)
