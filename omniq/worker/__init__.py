"""Worker: the loop, leases and heartbeats, executors, the function registry."""

from __future__ import annotations

from omniq.worker.background import TaskTimeout
from omniq.worker.executors import EXECUTOR_KINDS
from omniq.worker.registry import TaskRegistry, default_registry, task
from omniq.worker.stats import WorkerStats
from omniq.worker.worker import Worker

__all__ = [
    "EXECUTOR_KINDS",
    "TaskRegistry",
    "TaskTimeout",
    "Worker",
    "WorkerStats",
    "default_registry",
    "task",
]
