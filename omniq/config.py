"""Configuration: :class:`OmniQConfig` (defined in :mod:`omniq.models.config`)."""

from __future__ import annotations

from omniq.models.config import (
    EXECUTOR_KINDS,
    EventStorageConfig,
    OmniQConfig,
    ResultStorageConfig,
    TaskQueueConfig,
    WorkerConfig,
    parse_duration,
)

__all__ = [
    "EXECUTOR_KINDS",
    "EventStorageConfig",
    "OmniQConfig",
    "ResultStorageConfig",
    "TaskQueueConfig",
    "WorkerConfig",
    "parse_duration",
]
