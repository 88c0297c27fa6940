"""Records and enums: Task, Schedule, TaskResult, TaskEvent, Settings. No I/O."""

from __future__ import annotations

from omniq.models.attempt import TaskAttempt
from omniq.models.enums import (
    FINAL_TASK_STATUSES,
    LIVE_TASK_STATUSES,
    EventLevel,
    EventType,
    MisfirePolicy,
    ResultStatus,
    ScheduleStatus,
    ScheduleType,
    TaskStatus,
)
from omniq.models.error import TaskError
from omniq.models.event import TaskEvent
from omniq.models.filters import TaskFilter, TaskSort
from omniq.models.progress import TaskProgress
from omniq.models.result import TaskResult
from omniq.models.schedule import TASK_OPTION_KEYS, Schedule
from omniq.models.settings import Settings
from omniq.models.task import Task
from omniq.models.worker import WorkerInfo
from omniq.models.workflow import Workflow, WorkflowMember, WorkflowStatus

__all__ = [
    "FINAL_TASK_STATUSES",
    "LIVE_TASK_STATUSES",
    "TASK_OPTION_KEYS",
    "EventLevel",
    "EventType",
    "MisfirePolicy",
    "ResultStatus",
    "Schedule",
    "ScheduleStatus",
    "ScheduleType",
    "Settings",
    "Task",
    "TaskAttempt",
    "TaskError",
    "TaskEvent",
    "TaskFilter",
    "TaskProgress",
    "TaskResult",
    "TaskSort",
    "TaskStatus",
    "WorkerInfo",
    "Workflow",
    "WorkflowMember",
    "WorkflowStatus",
]
