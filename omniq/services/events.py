"""Event storage: the audit trail of tasks, schedules and workers, with retention."""

from __future__ import annotations

from collections.abc import Collection, Iterable
from datetime import datetime, timedelta
from typing import Any

from omniq._time import require_aware, to_timedelta
from omniq.errors import ValidationError
from omniq.models import EventLevel, EventType, TaskEvent
from omniq.models._fields import lookup_key
from omniq.services._shared import _check_batch
from omniq.services._storage import Storage

__all__ = ["EventStorage"]

_BATCH = 5000
_DEFAULT = object()


class EventStorage:
    """Log and query events; apply the retention policy."""

    def __init__(self, storage: Storage) -> None:
        self.storage = storage

    async def log_async(self, event: TaskEvent) -> None:
        """Append one event."""
        await self.log_many_async([event])

    async def log_many_async(self, events: Iterable[TaskEvent]) -> None:
        """Append events in one transaction."""
        batch = list(events)
        for event in batch:
            if not isinstance(event, TaskEvent):
                raise ValidationError("event", f"expected a TaskEvent, got {type(event).__name__}")
        await self.storage.write(
            lambda conn: self.storage.events.insert_many(conn, batch), what="log events"
        )

    async def get_events_async(
        self,
        task_id: str | None = None,
        event_type: EventType | str | Collection[EventType | str] | None = None,
        queue_name: str | None = None,
        worker_id: str | None = None,
        schedule_id: str | None = None,
        level: EventLevel | str | None = None,
        start_time: datetime | None = None,
        end_time: datetime | None = None,
        limit: int = 100,
        offset: int = 0,
    ) -> list[TaskEvent]:
        """Events matching every given filter, paginated, the last written first
        (their order of insertion; ``timestamp`` is when each happened)."""
        for key, given in (
            ("task_id", task_id),
            ("queue_name", queue_name),
            ("worker_id", worker_id),
            ("schedule_id", schedule_id),
        ):
            lookup_key(given, key)
        types = None
        if event_type is not None:
            if not isinstance(event_type, str | Collection):
                raise ValidationError(
                    "event_type", f"expected a type or a list, got {event_type!r}"
                )
            items = [event_type] if isinstance(event_type, str) else list(event_type)
            types = [_enum(EventType, x, "event_type") for x in items]
        for name, value in (("limit", limit), ("offset", offset)):
            if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < 2**63:
                raise ValidationError(name, f"must be a non-negative 64-bit integer, got {value!r}")

        return await self.storage.read(
            lambda conn: self.storage.events.query(
                conn,
                task_id=task_id,
                event_types=types,
                queue_name=queue_name,
                worker_id=worker_id,
                schedule_id=schedule_id,
                level=None if level is None else _enum(EventLevel, level, "level"),
                start_time=None if start_time is None else require_aware(start_time, "start_time"),
                end_time=None if end_time is None else require_aware(end_time, "end_time"),
                limit=limit,
                offset=offset,
            ),
            what="get events",
        )

    async def get_latest_events_async(self, limit: int = 10) -> list[TaskEvent]:
        """The ``limit`` newest events."""
        return await self.get_events_async(limit=limit)

    async def cleanup_expired_async(
        self, max_age: timedelta | float | object | None = _DEFAULT, batch_size: int = _BATCH
    ) -> int:
        """Delete events older than ``max_age`` (default: the retention setting; None keeps all)."""
        _check_batch(batch_size, "batch_size")
        if max_age is _DEFAULT:
            age = self.storage.settings.event_retention
        elif max_age is None:
            age = None
        else:
            age = to_timedelta(max_age, "max_age")
        if age is None:
            return 0
        cutoff = self.storage.now() - age
        total = 0
        while True:
            n = await self.storage.write(
                lambda conn: self.storage.events.delete_older_than(conn, cutoff, batch_size),
                what="delete old events",
            )
            total += n
            if n < batch_size:
                return total

    async def get_stats_async(self) -> dict[str, dict[str, int]]:
        """Event counts by type and by level (one GROUP BY each), with totals."""
        by_type, by_level = await self.storage.read(
            lambda conn: (
                self.storage.events.count_by(conn, "event_type"),
                self.storage.events.count_by(conn, "level"),
            ),
            what="count events",
        )
        return {
            "by_type": by_type,
            "by_level": by_level,
            "total": {"events": sum(by_type.values())},
        }


def _enum(kind: type[EventType] | type[EventLevel], value: Any, field: str) -> Any:
    try:
        return kind(value)
    except ValueError:
        allowed = ", ".join(x.value for x in kind)
        raise ValidationError(field, f"unknown value {value!r} (one of: {allowed})") from None
