"""Column types: one instant type (UTC microseconds) and one duration type (seconds)."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa

from omniq._time import from_micros, require_aware, to_micros


class UTCDateTime(sa.types.TypeDecorator[datetime]):
    """An aware datetime stored as integer microseconds since the Unix epoch.

    Integers compare and sort identically on every engine, so ordering and
    range queries on instants are correct everywhere. Naive datetimes are
    rejected; values read back are aware UTC datetimes.
    """

    impl = sa.BigInteger
    cache_ok = True

    def process_bind_param(self, value: datetime | int | None, dialect: sa.Dialect) -> int | None:
        if value is None:
            return None
        if isinstance(value, int):  # already converted (e.g. bulk paths)
            return value
        return to_micros(require_aware(value, "datetime"))

    def process_result_value(self, value: Any, dialect: sa.Dialect) -> datetime | None:
        if value is None:
            return None
        return from_micros(int(value))


class Duration(sa.types.TypeDecorator[timedelta]):
    """A timedelta stored as a float number of seconds."""

    impl = sa.Float
    cache_ok = True

    def process_bind_param(
        self, value: timedelta | float | None, dialect: sa.Dialect
    ) -> float | None:
        if value is None:
            return None
        if isinstance(value, int | float):
            return float(value)
        return value.total_seconds()

    def process_result_value(self, value: Any, dialect: sa.Dialect) -> timedelta | None:
        if value is None:
            return None
        seconds = float(value)
        found = _DURATIONS.get(seconds)
        if found is not None:
            return found
        try:
            found = timedelta(seconds=seconds)
        except OverflowError:
            # Beyond timedelta's range (timedelta.max itself rounds up as a float):
            # read the extreme rather than make the whole row unreadable.
            return timedelta.max if seconds > 0 else timedelta.min
        if len(_DURATIONS) >= _DURATIONS_KEPT:
            _DURATIONS.clear()
        _DURATIONS[seconds] = found
        return found


#: Durations read back, by their seconds: a claim reads a few values (a task's
#: timeout, retry delay, result TTL) over and over, and timedeltas are immutable.
_DURATIONS: dict[float, timedelta] = {}
_DURATIONS_KEPT = 1024
