"""The overview of a database's queues: counts, backlog age, throughput, workers, schedules."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

import attrs
import sqlalchemy as sa

from omniq.models import Schedule, ScheduleStatus, TaskStatus, WorkerInfo
from omniq.repositories.limits import QUEUE
from omniq.services._storage import Storage
from omniq.services.workers import WorkerRegistry

__all__ = ["MinuteOutcomes", "Overview", "QueueGauges", "QueueOverview", "QueueSummary"]

#: At most this many overdue schedules are read per scrape (the most overdue first).
OVERDUE_SCHEDULES_READ = 1000


@attrs.frozen(kw_only=True)
class QueueSummary:
    """One queue: task counts by status and the age of its oldest pending task."""

    name: str
    counts: dict[TaskStatus, int]
    oldest_pending_age: timedelta | None
    #: Flow control: workers do not claim from a paused queue.
    paused: bool = False
    #: The queue's own limits in words (e.g. "5 running, 50 per 1s"), if any.
    limits: str | None = None


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


@attrs.frozen(kw_only=True)
class QueueGauges:
    """The figures the metrics gauges report, read in one transaction at ``now``.

    - ``tasks``: per ``(queue, status)``, how many tasks have that status.
    - ``oldest_pending_age``: per queue with tasks, how long its longest-waiting
      ready pending task has been due (``run_at`` to now); zero when none is due.
    - ``workers``: registered workers by state, ``alive`` and ``lost`` (silent
      longer than the lease duration, as the worker registry shows them).
    - ``schedule_lag``: per overdue active schedule (its name, else its id),
      how long past its ``next_run_at`` it is.
    """

    now: datetime
    tasks: dict[tuple[str, str], int]
    oldest_pending_age: dict[str, timedelta]
    workers: dict[str, int]
    schedule_lag: dict[str, timedelta]


def _limits_text(row: dict[str, Any] | None) -> str | None:
    """A queue row's limits in words, e.g. "5 running, 50 per 0:00:01"."""
    if row is None:
        return None
    parts = []
    if row["max_running"] is not None:
        parts.append(f"{row['max_running']} running")
    if row["rate_limit"] is not None:
        parts.append(f"{row['rate_limit']} per {row['rate_period']}")
    return ", ".join(parts) or None


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
            list[dict[str, Any]],
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
                    unreadable=[],  # an unreadable row is left out (and quarantined)
                ),
                self.storage.limits.of_kind(conn, QUEUE),
            )

        counts, oldest, outcomes, schedules, controls = await self.storage.read(
            body, what="overview"
        )
        control = {row["key"]: row for row in controls}
        per_queue: dict[str, dict[TaskStatus, int]] = {}
        for (queue, status), n in counts.items():
            try:
                per_queue.setdefault(queue, {})[TaskStatus(status)] = n
            except ValueError:
                continue  # a status written by hand: quarantined by maintenance
        queues = [
            QueueSummary(
                name=name,
                counts=per_queue.get(name, {}),
                oldest_pending_age=max(now - oldest[name], timedelta(0))
                if name in oldest
                else None,
                paused=name in control and control[name]["paused_at"] is not None,
                limits=_limits_text(control.get(name)),
            )
            for name in sorted({*per_queue, *control})
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

    async def gauges_async(self) -> QueueGauges:
        """Task counts per queue and status, backlog age, workers, schedule lag (one read)."""
        now = self.storage.now()

        def body(
            conn: sa.Connection,
        ) -> tuple[
            dict[tuple[str, str], tuple[int, datetime | None]],
            list[WorkerInfo],
            list[tuple[str, str | None, datetime]],
        ]:
            return (
                self.storage.tasks.counts_and_oldest_due(conn, now),
                self.storage.workers.list(conn),
                self.storage.schedules.overdue(conn, now, OVERDUE_SCHEDULES_READ),
            )

        groups, workers, overdue = await self.storage.read(body, what="metrics")
        tasks: dict[tuple[str, str], int] = {}
        oldest: dict[str, timedelta] = {}
        for (queue, status), (count, due) in groups.items():
            tasks[(queue, status)] = count
            age = oldest.setdefault(queue, timedelta(0))
            if status == TaskStatus.PENDING.value and due is not None:
                oldest[queue] = max(age, now - due)
        bound = self.storage.settings.lease_duration
        lost = sum(1 for w in workers if w.is_lost(now, bound))
        lag: dict[str, timedelta] = {}
        for schedule_id, name, next_run_at in overdue:
            label = name or schedule_id
            lag[label] = max(lag.get(label, timedelta(0)), now - next_run_at)
        return QueueGauges(
            now=now,
            tasks=tasks,
            oldest_pending_age=oldest,
            workers={"alive": len(workers) - lost, "lost": lost},
            schedule_lag=lag,
        )
