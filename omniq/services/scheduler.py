"""The scheduler: turns due schedules into tasks, exactly once per fire time.

Any number of workers may run it at once. Each fire is one transaction that
compare-and-sets the schedule's ``next_run_at`` (only the transaction that
still sees the old value fires it) and inserts the tasks with their
``scheduled_for`` time, which a unique index on (schedule_id, scheduled_for)
backs up. Missed fire times are handled by the schedule's misfire policy.
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta
from typing import Any

import attrs
import sqlalchemy as sa

from omniq._time import require_aware
from omniq.errors import DatabaseError, InvalidRow
from omniq.models import (
    EventLevel,
    EventType,
    MisfirePolicy,
    Schedule,
    ScheduleStatus,
    ScheduleType,
    Task,
)
from omniq.repositories.events import event_row
from omniq.services import timing
from omniq.services._storage import Storage
from omniq.services.queue import TaskQueue

log = logging.getLogger("omniq.scheduler")

__all__ = ["DEFAULT_MISFIRE_GRACE", "Scheduler"]

#: A fire time later than this is a misfire (unless the schedule sets its own grace).
DEFAULT_MISFIRE_GRACE = timedelta(seconds=60)
#: At most this many missed runs are caught up at once with ``run_all``.
MAX_CATCH_UP = 100
_ACTIVE = [ScheduleStatus.ACTIVE]


def _database_error_behind(exc: BaseException) -> DatabaseError | None:
    """The OmniQ database error a driver error was raised while handling, if any."""
    if not isinstance(exc, sa.exc.SQLAlchemyError):
        return None
    seen: BaseException | None = exc.__context__
    while seen is not None and not isinstance(seen, DatabaseError):
        seen = seen.__context__
    return seen


class Scheduler:
    """Fires due schedules; safe to run in every worker at once."""

    def __init__(self, storage: Storage, queue: TaskQueue, *, batch_size: int = 100) -> None:
        self.storage = storage
        self.queue = queue
        self.batch_size = batch_size

    async def fire_due_async(self, now: datetime | None = None) -> int:
        """Create the tasks of every schedule due at ``now``; return how many were created.

        A schedule row that cannot be read (say an unknown time zone) is
        quarantined: paused, with an error event saying why; the others fire.
        """
        when = require_aware(now, "now") if now is not None else self.storage.now()

        def body(conn: sa.Connection) -> int:
            unreadable: list[tuple[str, str]] = []
            due = self.storage.schedules.due(conn, when, self.batch_size, unreadable)
            for schedule_id, reason in unreadable:
                self._quarantine(conn, schedule_id, reason, when)
            created = 0
            for schedule in due:
                # One schedule whose timing cannot be computed must not stop the others.
                try:
                    with conn.begin_nested():
                        created += self._fire(conn, schedule, when)
                except (DatabaseError, sa.exc.SQLAlchemyError) as exc:
                    # The database failed, not the schedule: the whole transaction
                    # fails and nothing is quarantined. A full SQLite file rolls the
                    # transaction back itself, so the savepoint's rollback fails
                    # too ("no such savepoint"): report the error that caused it.
                    cause = _database_error_behind(exc)
                    if cause is not None:
                        raise cause from None
                    raise
                except Exception as exc:
                    self._quarantine(conn, schedule.id, f"{type(exc).__name__}: {exc}", when)
            return created

        created = await self.storage.write(body, what="fire schedules")
        if created:
            self.storage.notifier.notify()
        return created

    async def next_due_async(self) -> datetime | None:
        """The earliest next_run_at of an active schedule (None: nothing scheduled)."""
        return await self.storage.read(self.storage.schedules.next_run_at, what="list schedules")

    def _quarantine(
        self, conn: sa.Connection, schedule_id: str, reason: str, now: datetime
    ) -> None:
        log.error("schedule %s cannot be read and was paused: %s", schedule_id, reason)
        if self.storage.schedules.quarantine(conn, schedule_id, now):
            self.storage.events.insert_rows(
                conn,
                [
                    event_row(
                        EventType.SCHEDULE_PAUSED,
                        schedule_id=schedule_id,
                        timestamp=now,
                        source="scheduler",
                        level=EventLevel.ERROR,
                        message="quarantined: the stored schedule cannot be read; fix or delete it",
                        error=reason,
                    )
                ],
            )

    def _fire(self, conn: sa.Connection, schedule: Schedule, now: datetime) -> int:
        first = schedule.next_run_at
        assert first is not None
        missed: list[datetime] = []
        cursor: datetime | None = first
        while cursor is not None and cursor <= now and len(missed) <= MAX_CATCH_UP:
            missed.append(cursor)
            cursor = timing.next_run(schedule, cursor)
        following = cursor
        if following is not None and following <= now:  # more than MAX_CATCH_UP behind
            # The policies want the latest missed time (run_once, skip) and the grid kept.
            missed[-1], following = _latest_missed(schedule, following, now)
        to_run = self._apply_misfire_policy(schedule, missed, now)
        if schedule.max_runs is not None:
            to_run = to_run[: max(0, schedule.max_runs - schedule.run_count)]
        if schedule.payload_error is not None:
            # Quarantined by the caller (paused with an event), its runs not spent.
            raise InvalidRow(f"its stored payload cannot be read: {schedule.payload_error}")
        # A stored template that cannot make a task (e.g. a hand-edited option)
        # raises here, before anything is written: quarantined the same way.
        tasks = [self._task_for(schedule, fire_time, now) for fire_time in to_run]
        run_count = schedule.run_count + len(to_run)
        done = following is None or (
            schedule.max_runs is not None and run_count >= schedule.max_runs
        )
        values: dict[str, Any] = {
            "next_run_at": None if done else following,
            "run_count": run_count,
            "updated_at": now,
        }
        if to_run:
            values["last_run_at"] = now
        if done:
            values["status"] = ScheduleStatus.COMPLETED
        # Compare-and-set: only the transaction that still sees ``first`` fires it.
        updated = self.storage.schedules.update(
            conn, schedule.id, values, expected_status=_ACTIVE, expected_next_run_at=first
        )
        if updated is None:
            return 0
        events = []
        skipped = len(missed) - len(to_run)
        if tasks:
            inserted = self.storage.tasks.insert_scheduled(conn, tasks)
            tasks = [task for task in tasks if task.id in inserted]
            self.storage.limits.declare(conn, tasks, now)
        for task in tasks:
            events.append(
                _event(
                    EventType.SCHEDULE_FIRED,
                    schedule,
                    now,
                    task_id=task.id,
                    data={
                        "scheduled_for": task.scheduled_for.isoformat()
                        if task.scheduled_for
                        else None
                    },
                )
            )
            events.append(
                event_row(
                    EventType.ENQUEUED,
                    task_id=task.id,
                    queue_name=task.queue_name,
                    schedule_id=schedule.id,
                    timestamp=now,
                    source="scheduler",
                    data={"status": task.status.value},
                )
            )
        if skipped:
            events.append(
                _event(
                    EventType.SCHEDULE_FIRED,
                    schedule,
                    now,
                    level=EventLevel.WARNING,
                    message=f"misfire ({schedule.misfire_policy}): {skipped} missed run(s) skipped",
                    data={"skipped": skipped},
                )
            )
        if done:
            events.append(_event(EventType.SCHEDULE_COMPLETED, schedule, now))
        self.storage.events.insert_rows(conn, events)
        return len(tasks)

    @staticmethod
    def _apply_misfire_policy(
        schedule: Schedule, missed: list[datetime], now: datetime
    ) -> list[datetime]:
        if not missed:
            return []
        grace = (
            schedule.misfire_grace if schedule.misfire_grace is not None else DEFAULT_MISFIRE_GRACE
        )
        policy = schedule.misfire_policy
        if policy is MisfirePolicy.RUN_ALL:
            return missed[:MAX_CATCH_UP]
        if policy is MisfirePolicy.RUN_ONCE:
            return missed[-1:]
        return [t for t in missed if now - t <= grace][-1:]

    def _task_for(self, schedule: Schedule, fire_time: datetime, now: datetime) -> Task:
        return attrs.evolve(
            self.queue.template_task(schedule),
            schedule_id=schedule.id,
            scheduled_for=fire_time,
            created_at=now,
            run_at=now,
        )


def _latest_missed(
    schedule: Schedule, cursor: datetime, now: datetime
) -> tuple[datetime, datetime | None]:
    """The last fire time at or after ``cursor`` (<= ``now``), and the fire time after it.

    Without walking every missed run: intervals by arithmetic; cron by looking
    back from ``now`` over growing windows until one holds a fire time.
    """
    if schedule.schedule_type is ScheduleType.INTERVAL:
        assert schedule.interval is not None
        latest = cursor + ((now - cursor) // schedule.interval) * schedule.interval
        return latest, latest + schedule.interval
    latest, window = cursor, timedelta(minutes=1)
    while True:
        start = max(cursor, now - window)
        candidate = timing.next_run(schedule, start)
        if candidate is not None and candidate <= now:
            latest = candidate
            break
        if start == cursor:
            break
        window *= 4
    following = timing.next_run(schedule, latest)
    while following is not None and following <= now:
        latest, following = following, timing.next_run(schedule, following)
    return latest, following


def _event(kind: EventType, schedule: Schedule, now: datetime, **fields: Any) -> dict[str, Any]:
    return event_row(
        kind,
        schedule_id=schedule.id,
        queue_name=schedule.queue_name,
        timestamp=now,
        source="scheduler",
        **fields,
    )
