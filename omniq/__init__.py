"""OmniQ: a task queue whose whole state lives in SQL.

SQLite by default (one file, zero setup, safe with many worker processes);
PostgreSQL when the work outgrows one machine: the same code, another URL.
"""

from __future__ import annotations

from omniq._version import VERSION
from omniq.app import AsyncOmniQ, TaskHandle
from omniq.config import OmniQConfig
from omniq.errors import (
    ConfigurationError,
    DatabaseBusy,
    DatabaseError,
    DatabaseUnavailable,
    DuplicateTask,
    InvalidRow,
    InvalidTransition,
    LeaseLost,
    NoCurrentTask,
    OmniQError,
    ScheduleNotFound,
    SchemaOutOfDate,
    SerializationError,
    StorageFull,
    SyncInAsyncContext,
    TaskNotFound,
    UnsafePayload,
    ValidationError,
    WrongDatabase,
)
from omniq.models import (
    EventLevel,
    EventType,
    MisfirePolicy,
    ResultStatus,
    Schedule,
    ScheduleStatus,
    ScheduleType,
    Settings,
    Task,
    TaskEvent,
    TaskProgress,
    TaskResult,
    TaskStatus,
)
from omniq.services import ErrorInfo, EventStorage, ResultStorage, Services, Storage, TaskQueue
from omniq.sync import (
    OmniQ,
    SyncEventStorage,
    SyncResultStorage,
    SyncServices,
    SyncTaskQueue,
    SyncWorker,
)
from omniq.task_context import CurrentTask, current_task
from omniq.worker import TaskRegistry, Worker, WorkerStats, task

__version__ = VERSION

__all__ = [
    "AsyncOmniQ",
    "ConfigurationError",
    "CurrentTask",
    "DatabaseBusy",
    "DatabaseError",
    "DatabaseUnavailable",
    "DuplicateTask",
    "ErrorInfo",
    "EventLevel",
    "EventStorage",
    "EventType",
    "InvalidRow",
    "InvalidTransition",
    "LeaseLost",
    "MisfirePolicy",
    "NoCurrentTask",
    "OmniQ",
    "OmniQConfig",
    "OmniQError",
    "ResultStatus",
    "ResultStorage",
    "Schedule",
    "ScheduleNotFound",
    "ScheduleStatus",
    "ScheduleType",
    "SchemaOutOfDate",
    "SerializationError",
    "Services",
    "Settings",
    "Storage",
    "StorageFull",
    "SyncEventStorage",
    "SyncInAsyncContext",
    "SyncResultStorage",
    "SyncServices",
    "SyncTaskQueue",
    "SyncWorker",
    "Task",
    "TaskEvent",
    "TaskHandle",
    "TaskNotFound",
    "TaskProgress",
    "TaskQueue",
    "TaskRegistry",
    "TaskResult",
    "TaskStatus",
    "UnsafePayload",
    "ValidationError",
    "Worker",
    "WorkerStats",
    "WrongDatabase",
    "__version__",
    "current_task",
    "task",
]
