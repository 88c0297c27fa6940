"""The TaskEvent record."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import attrs

from omniq._time import utcnow
from omniq.models._fields import (
    aware,
    finite_float,
    non_negative_int,
    to_event_level,
    to_event_type,
)
from omniq.models.enums import EventLevel, EventType

__all__ = ["EventLevel", "EventType", "TaskEvent"]


@attrs.frozen(kw_only=True)
class TaskEvent:
    """One thing that happened to a task, schedule or worker.

    ``id`` is assigned by the database (monotonic per database) and is None
    until the event is stored.
    """

    event_type: EventType = attrs.field(converter=to_event_type)
    task_id: str | None = None
    id: int | None = None
    timestamp: datetime = attrs.field(factory=utcnow, validator=aware)
    queue_name: str | None = None
    worker_id: str | None = None
    schedule_id: str | None = None
    message: str | None = None
    data: dict[str, Any] | None = None
    execution_time: float | None = attrs.field(default=None, validator=finite_float)
    retry_count: int | None = attrs.field(default=None, validator=non_negative_int)
    error: str | None = None
    source: str | None = None
    level: EventLevel = attrs.field(default=EventLevel.INFO, converter=to_event_level)
