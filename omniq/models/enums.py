"""Enumerations with lowercase string values (stored as-is in the database)."""

from __future__ import annotations

from enum import StrEnum


class TaskStatus(StrEnum):
    """Lifecycle state of a task."""

    PENDING = "pending"
    WAITING = "waiting"  # unmet dependencies
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"
    EXPIRED = "expired"

    @property
    def is_final(self) -> bool:
        """True for states a task never leaves on its own."""
        return self in FINAL_TASK_STATUSES


FINAL_TASK_STATUSES = frozenset(
    {TaskStatus.COMPLETED, TaskStatus.FAILED, TaskStatus.CANCELLED, TaskStatus.EXPIRED}
)
LIVE_TASK_STATUSES = frozenset({TaskStatus.PENDING, TaskStatus.WAITING, TaskStatus.RUNNING})


class ResultStatus(StrEnum):
    """Outcome recorded in a task result."""

    SUCCESS = "success"
    ERROR = "error"
    CANCELLED = "cancelled"
    EXPIRED = "expired"
    TIMEOUT = "timeout"


class EventType(StrEnum):
    """What an event row records."""

    ENQUEUED = "enqueued"
    WAITING = "waiting"
    READY = "ready"
    DEQUEUED = "dequeued"
    EXECUTING = "executing"
    COMPLETED = "completed"
    FAILED = "failed"
    RETRY = "retry"
    CANCELLED = "cancelled"
    CANCEL_REQUESTED = "cancel_requested"
    EXPIRED = "expired"
    REQUEUED = "requeued"
    RELEASED = "released"
    TIMEOUT = "timeout"
    CALLBACK_FAILED = "callback_failed"
    UPDATED = "updated"
    DELETED = "deleted"
    SCHEDULED = "scheduled"
    SCHEDULE_FIRED = "schedule_fired"
    SCHEDULE_UPDATED = "schedule_updated"
    SCHEDULE_PAUSED = "schedule_paused"
    SCHEDULE_RESUMED = "schedule_resumed"
    SCHEDULE_COMPLETED = "schedule_completed"
    SCHEDULE_CANCELLED = "schedule_cancelled"
    WORKER_STARTED = "worker_started"
    WORKER_STOPPED = "worker_stopped"
    ERROR = "error"


class EventLevel(StrEnum):
    """Severity of an event."""

    DEBUG = "debug"
    INFO = "info"
    WARNING = "warning"
    ERROR = "error"


class ScheduleType(StrEnum):
    """How a schedule computes its fire times."""

    CRON = "cron"
    INTERVAL = "interval"
    TIMESTAMP = "timestamp"


class ScheduleStatus(StrEnum):
    """Lifecycle state of a schedule."""

    ACTIVE = "active"
    PAUSED = "paused"
    COMPLETED = "completed"
    CANCELLED = "cancelled"


class MisfirePolicy(StrEnum):
    """What a schedule does with fire times missed while nobody was running it."""

    SKIP = "skip"
    RUN_ONCE = "run_once"
    RUN_ALL = "run_all"
