"""The task queue service: one facade over the queue's concepts.

Each concept lives in its own module (imports flow downward):
:mod:`~omniq.services.building` (building tasks) ->
:mod:`~omniq.services.sweeps` -> :mod:`~omniq.services.enqueue` ->
:mod:`~omniq.services.claims` -> :mod:`~omniq.services.failures` (failed
attempts: retry, fail, cancel on request) -> :mod:`~omniq.services.leases`
(completion, release, heartbeat and recovery of claimed tasks) ->
:mod:`~omniq.services.admin` -> :mod:`~omniq.services.queries` ->
:mod:`~omniq.services.schedules` (schedule CRUD). Every state change is one
short write transaction that also writes its event (DESIGN.md §2.1);
transitions after the claim are conditional on the expected status and, for
a worker, its lease token (§2.3). Dependency handling shared by them is in
:mod:`~omniq.services.dependencies`.
"""

from __future__ import annotations

from omniq.services._shared import ErrorInfo
from omniq.services.admin import UPDATABLE_FIELDS
from omniq.services.leases import Start
from omniq.services.schedules import ScheduleAdmin

__all__ = ["UPDATABLE_FIELDS", "ErrorInfo", "Start", "TaskQueue"]


class TaskQueue(ScheduleAdmin):
    """Named queues of tasks with priorities, delays, TTL, dependencies and retries."""
