"""OmniQ: a task queue whose whole state lives in SQL.

SQLite by default (one file, zero setup, safe with many worker processes);
PostgreSQL when the work outgrows one machine: the same code, another URL.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from omniq._version import VERSION

if TYPE_CHECKING:
    from omniq.app import AsyncOmniQ, TaskHandle
    from omniq.config import OmniQConfig
    from omniq.errors import (
        ConfigurationError,
        DatabaseBusy,
        DatabaseClosed,
        DatabaseError,
        DatabaseMigrated,
        DatabaseUnavailable,
        DuplicateTask,
        InvalidRow,
        InvalidTransition,
        LeaseLost,
        MigrationRefused,
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
        WorkflowFailed,
        WorkflowNotFound,
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
        Workflow,
        WorkflowMember,
        WorkflowStatus,
    )
    from omniq.models.limits import Limit, QueueLimits, Rate
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
    from omniq.workflows import Signature, WorkflowHandle, chain, chord, group

__version__ = VERSION

# The names below are imported when first used (PEP 562), so that ``import omniq``
# (and the ``omniq`` command, whose ``--help`` needs none of them) starts fast.
_LAZY: dict[str, str] = {
    "AsyncOmniQ": "omniq.app",
    "TaskHandle": "omniq.app",
    "OmniQConfig": "omniq.config",
    "ConfigurationError": "omniq.errors",
    "DatabaseBusy": "omniq.errors",
    "DatabaseClosed": "omniq.errors",
    "DatabaseError": "omniq.errors",
    "DatabaseMigrated": "omniq.errors",
    "DatabaseUnavailable": "omniq.errors",
    "DuplicateTask": "omniq.errors",
    "InvalidRow": "omniq.errors",
    "InvalidTransition": "omniq.errors",
    "LeaseLost": "omniq.errors",
    "MigrationRefused": "omniq.errors",
    "NoCurrentTask": "omniq.errors",
    "WrongDatabase": "omniq.errors",
    "OmniQError": "omniq.errors",
    "ScheduleNotFound": "omniq.errors",
    "SchemaOutOfDate": "omniq.errors",
    "SerializationError": "omniq.errors",
    "StorageFull": "omniq.errors",
    "SyncInAsyncContext": "omniq.errors",
    "TaskNotFound": "omniq.errors",
    "UnsafePayload": "omniq.errors",
    "ValidationError": "omniq.errors",
    "WorkflowFailed": "omniq.errors",
    "WorkflowNotFound": "omniq.errors",
    "EventLevel": "omniq.models",
    "EventType": "omniq.models",
    "MisfirePolicy": "omniq.models",
    "ResultStatus": "omniq.models",
    "Schedule": "omniq.models",
    "ScheduleStatus": "omniq.models",
    "ScheduleType": "omniq.models",
    "Settings": "omniq.models",
    "Task": "omniq.models",
    "TaskEvent": "omniq.models",
    "TaskProgress": "omniq.models",
    "TaskResult": "omniq.models",
    "TaskStatus": "omniq.models",
    "Limit": "omniq.models.limits",
    "QueueLimits": "omniq.models.limits",
    "Rate": "omniq.models.limits",
    "Workflow": "omniq.models",
    "WorkflowMember": "omniq.models",
    "WorkflowStatus": "omniq.models",
    "ErrorInfo": "omniq.services",
    "EventStorage": "omniq.services",
    "ResultStorage": "omniq.services",
    "Services": "omniq.services",
    "Storage": "omniq.services",
    "TaskQueue": "omniq.services",
    "OmniQ": "omniq.sync",
    "SyncEventStorage": "omniq.sync",
    "SyncResultStorage": "omniq.sync",
    "SyncServices": "omniq.sync",
    "SyncTaskQueue": "omniq.sync",
    "SyncWorker": "omniq.sync",
    "TaskRegistry": "omniq.worker",
    "Worker": "omniq.worker",
    "WorkerStats": "omniq.worker",
    "task": "omniq.worker",
    "CurrentTask": "omniq.task_context",
    "current_task": "omniq.task_context",
    "Signature": "omniq.workflows",
    "WorkflowHandle": "omniq.workflows",
    "chain": "omniq.workflows",
    "chord": "omniq.workflows",
    "group": "omniq.workflows",
}

__all__ = [
    "AsyncOmniQ",
    "ConfigurationError",
    "CurrentTask",
    "DatabaseBusy",
    "DatabaseClosed",
    "DatabaseError",
    "DatabaseMigrated",
    "DatabaseUnavailable",
    "DuplicateTask",
    "ErrorInfo",
    "EventLevel",
    "EventStorage",
    "EventType",
    "InvalidRow",
    "InvalidTransition",
    "LeaseLost",
    "Limit",
    "MigrationRefused",
    "MisfirePolicy",
    "NoCurrentTask",
    "OmniQ",
    "OmniQConfig",
    "OmniQError",
    "QueueLimits",
    "Rate",
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
    "Signature",
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
    "Workflow",
    "WorkflowFailed",
    "WorkflowHandle",
    "WorkflowMember",
    "WorkflowNotFound",
    "WorkflowStatus",
    "WrongDatabase",
    "__version__",
    "chain",
    "chord",
    "current_task",
    "group",
    "task",
]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'omniq' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
