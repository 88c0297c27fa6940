"""Repositories: one per table, async Core statements on a connection handed in."""

from __future__ import annotations

from omniq.repositories.events import EventRepository
from omniq.repositories.results import ResultRepository
from omniq.repositories.schedules import ScheduleRepository
from omniq.repositories.tasks import TaskRepository

__all__ = ["EventRepository", "ResultRepository", "ScheduleRepository", "TaskRepository"]
