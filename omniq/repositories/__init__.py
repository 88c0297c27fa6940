"""Repositories: one per table, Core statements on a sync Connection handed in."""

from __future__ import annotations

from omniq.repositories.attempts import AttemptRepository
from omniq.repositories.events import EventRepository
from omniq.repositories.results import ResultRepository
from omniq.repositories.schedules import ScheduleRepository
from omniq.repositories.tasks import TaskRepository

__all__ = [
    "AttemptRepository",
    "EventRepository",
    "ResultRepository",
    "ScheduleRepository",
    "TaskRepository",
]
