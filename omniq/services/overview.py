"""The overview of a database's queues: counts, backlog age, throughput, workers, schedules."""

from __future__ import annotations

from datetime import datetime, timedelta

import attrs
import sqlalchemy as sa

from omniq.models import Schedule, ScheduleStatus, TaskStatus, WorkerInfo
from omniq.services._storage import Storage
from omniq.services.workers import WorkerRegistry

__all__ = ["MinuteOutcomes", "Overview", "QueueOverview", "QueueSummary"]


@attrs.frozen(kw_only=True)
class QueueSummary:
    """One queue: task counts by status and the age of its oldest pending task."""

    name: str
    counts: dict[TaskStatus, int]
    oldest_pending_age: timedelta | None


@attrs.frozen(kw_only=True)
class MinuteOutcomes:
    """Tasks that completed and failed within one minute (starting at ``minute``)."""

    minute: datetime
    completed: int
    failed: int


@attrs.frozen(kw_only=True)
class Overview:
    """Everything the overview page shows, read at ``now``."""

    now: datetime
    queues: list[QueueSummary]
    throughput: list[MinuteOutcomes]
    workers: list[WorkerInfo]
    due_schedules: list[Schedule]


class QueueOverview:
    """Reads the overview from the tables."""

    def __init__(self, storage: Storage) -> None:
        self.storage = storage
        self.workers = WorkerRegistry(storage)

    async def overview_async(self, *, minutes: int = 60, due_schedules: int = 10) -> Overview:
        """Counts per queue, throughput per minute over the last ``minutes``, live
        workers and the ``due_schedules`` active schedules that fire next."""
        now = self.storage.now()
        end = now.replace(second=0, microsecond=0) + timedelta(minutes=1)
        since = end - timedelta(minutes=minutes)

        def body(
            conn: sa.Connection,
        ) -> tuple[
            dict[tuple[str, str], int],
            dict[str, datetime],
            dict[tuple[datetime, TaskStatus], int],
            list[Schedule],
        ]:
            tasks = self.storage.tasks
            return (
                tasks.count_by(conn),
                tasks.oldest_pending(conn),
                tasks.outcomes_per_minute(conn, since),
                self.storage.schedules.query(
                    conn,
                    status=[ScheduleStatus.ACTIVE],
                    limit=due_schedules,
                    order_by="next_run_at",
                ),
            )

        counts, oldest, outcomes, schedules = await self.storage.read(body, what="overview")
        per_queue: dict[str, dict[TaskStatus, int]] = {}
        for (queue, status), n in counts.items():
            try:
                per_queue.setdefault(queue, {})[TaskStatus(status)] = n
            except ValueError:
                continue  # a status written by hand: quarantined by maintenance
        queues = [
            QueueSummary(
                name=name,
                counts=per_queue[name],
                oldest_pending_age=max(now - oldest[name], timedelta(0))
                if name in oldest
                else None,
            )
            for name in sorted(per_queue)
        ]
        series = [
            MinuteOutcomes(
                minute=minute,
                completed=outcomes.get((minute, TaskStatus.COMPLETED), 0),
                failed=outcomes.get((minute, TaskStatus.FAILED), 0),
            )
            for minute in (since + timedelta(minutes=i) for i in range(minutes))
        ]
        return Overview(
            now=now,
            queues=queues,
            throughput=series,
            workers=await self.workers.list_workers_async(),
            due_schedules=schedules,
        )
