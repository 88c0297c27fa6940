"""The facade's read methods: tasks, results, progress, attempts, events, stats, workers.

A part of :class:`omniq.AsyncOmniQ`; each has a blocking twin on :class:`omniq.OmniQ`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import datetime, timedelta
from typing import Any, Literal

from omniq.app_flow import queue_limits_data
from omniq.errors import ValidationError
from omniq.models import (
    EventLevel,
    EventType,
    ResultStatus,
    ScheduleStatus,
    Task,
    TaskAttempt,
    TaskEvent,
    TaskProgress,
    TaskResult,
    TaskStatus,
    WorkerInfo,
)
from omniq.services import Services

__all__ = ["QueryMethods"]


class QueryMethods:
    """Read what the database holds; nothing here writes."""

    async def _svc(self, caller_tx: bool = False) -> Services:
        raise NotImplementedError

    async def get_task_async(self, task_id: str) -> Task | None:
        """The task with ``task_id``, or None."""
        return await (await self._svc()).queue.get_task_async(task_id)

    async def get_result_async(
        self,
        task_id: str | None = None,
        *,
        wait: bool = False,
        timeout: timedelta | float | None = None,
        schedule_id: str | None = None,
        kind: Literal["latest"] = "latest",
    ) -> TaskResult | None:
        """A task's result (waiting for it with ``wait=True``), or the latest of a schedule."""
        svc = await self._svc()
        if (task_id is None) == (schedule_id is None):
            raise ValidationError("task_id", "give exactly one of task_id or schedule_id")
        if kind != "latest":
            raise ValidationError("kind", f"unknown kind {kind!r} (only 'latest')")
        if schedule_id is not None:
            return await svc.results.get_latest_async(schedule_id)
        assert task_id is not None
        if wait:
            return await svc.results.wait_async(task_id, timeout)
        return await svc.results.get_async(task_id)

    async def list_results_async(
        self,
        status: ResultStatus | str | Sequence[ResultStatus | str] | None = None,
        func: Callable[..., Any] | str | None = None,
        task_name: str | None = None,
        schedule_id: str | None = None,
        start_time: datetime | None = None,
        end_time: datetime | None = None,
        limit: int = 100,
        offset: int = 0,
    ) -> list[TaskResult]:
        """Stored results, newest first, filtered (see ``ResultStorage.list_results_async``)."""
        return await (await self._svc()).results.list_results_async(
            status, func, task_name, schedule_id, start_time, end_time, limit, offset
        )

    async def get_progress_async(self, task_id: str) -> TaskProgress | None:
        """The last progress ``task_id`` reported (see :func:`omniq.current_task`), or None."""
        return await (await self._svc()).queue.get_progress_async(task_id)

    async def get_attempts_async(self, task_id: str) -> list[TaskAttempt]:
        """The failed attempts of a task, oldest first, each with its error record."""
        return await (await self._svc()).queue.get_attempts_async(task_id)

    async def list_tasks_async(
        self,
        status: TaskStatus | str | Sequence[TaskStatus | str] | None = None,
        queue_name: str | None = None,
        limit: int = 100,
        offset: int = 0,
    ) -> list[Task]:
        """Tasks by status and queue, oldest first."""
        return await (await self._svc()).queue.list_tasks_async(status, queue_name, limit, offset)

    # --- events and stats --------------------------------------------------------------

    async def get_events_async(
        self,
        task_id: str | None = None,
        event_type: EventType | str | Sequence[EventType | str] | None = None,
        queue_name: str | None = None,
        worker_id: str | None = None,
        schedule_id: str | None = None,
        level: EventLevel | str | None = None,
        start_time: datetime | None = None,
        end_time: datetime | None = None,
        limit: int = 100,
        offset: int = 0,
    ) -> list[TaskEvent]:
        """Events matching the filters, newest first."""
        return await (await self._svc()).events.get_events_async(
            task_id,
            event_type,
            queue_name,
            worker_id,
            schedule_id,
            level,
            start_time,
            end_time,
            limit,
            offset,
        )

    async def stats_async(self) -> dict[str, Any]:
        """Counts: tasks per queue and status, results per status, events per type/level;
        paused queues and queue-wide limits."""
        svc = await self._svc()
        tasks = await svc.queue.stats_async()
        controls = await svc.queue.list_queue_limits_async()
        totals: dict[str, int] = {}
        for per_status in tasks.values():
            for status, n in per_status.items():
                totals[status] = totals.get(status, 0) + n
        return {
            "tasks": tasks,
            "task_totals": totals,
            "results": await svc.results.get_stats_async(),
            "events": await svc.events.get_stats_async(),
            "schedules": len(await svc.queue.list_schedules_async(ScheduleStatus.ACTIVE)),
            # Flow control: paused queues and queue-wide limits (README: "Flow control").
            "paused_queues": [x.queue_name for x in controls if x.paused],
            "queue_limits": {x.queue_name: queue_limits_data(x) for x in controls},
        }

    async def list_workers_async(self) -> list[WorkerInfo]:
        """Worker processes registered in this database (``lost``: silent past the lease)."""
        return await (await self._svc()).workers.list_workers_async()
