"""The TaskResult record."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

import attrs

from omniq._time import utcnow
from omniq.models._fields import (
    aware,
    finite_float,
    name_str,
    non_negative_duration,
    non_negative_int,
    to_result_status,
)
from omniq.models.enums import ResultStatus
from omniq.models.error import TaskError

__all__ = ["ResultStatus", "TaskError", "TaskResult"]


def _default_expires(result: TaskResult) -> datetime | None:
    # Bad types are left to the field validators, which name the field.
    if not isinstance(result.ttl, timedelta) or not isinstance(result.created_at, datetime):
        return None
    try:
        return result.created_at + result.ttl
    except OverflowError:
        return None  # past the year 9999: never expires


@attrs.frozen(kw_only=True)
class TaskResult:
    """What a task returned (or how it failed), kept until ``expires_at``."""

    task_id: str = attrs.field(validator=name_str)
    status: ResultStatus = attrs.field(converter=to_result_status)
    result: Any = None
    error: str | None = None
    error_type: str | None = None
    error_traceback: str | None = None
    schedule_id: str | None = None
    created_at: datetime = attrs.field(factory=utcnow, validator=aware)
    started_at: datetime | None = attrs.field(default=None, validator=aware)
    completed_at: datetime | None = attrs.field(default=None, validator=aware)
    ttl: timedelta | None = attrs.field(default=None, validator=non_negative_duration)
    expires_at: datetime | None = attrs.field(
        default=attrs.Factory(_default_expires, takes_self=True), validator=aware
    )
    execution_time: float | None = attrs.field(default=None, validator=finite_float)
    worker_id: str | None = None
    retry_count: int = attrs.field(default=0, validator=non_negative_int)
    serializer: str = "json"

    @property
    def task_error(self) -> TaskError | None:
        """The error as a :class:`TaskError` record (None for a success)."""
        if self.status is ResultStatus.SUCCESS or self.error is None:
            return None
        kind = self.error_type or self.status.value
        return TaskError(
            type=kind,
            # ``error`` reads "Type: message" (as str(TaskError) does).
            message=self.error.removeprefix(f"{kind}: "),
            traceback=self.error_traceback,
            attempt=self.retry_count + 1,
            at=self.completed_at,
            retryable=False,
        )

    @property
    def success(self) -> bool:
        """True when the task completed without error."""
        return self.status is ResultStatus.SUCCESS
