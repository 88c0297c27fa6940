"""Schedule CRUD: create, read, change, pause, resume, cancel, delete (the scheduler fires)."""

from __future__ import annotations

from collections.abc import Callable, Collection
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

import attrs
import sqlalchemy as sa

from omniq._time import require_aware
from omniq.errors import (
    DuplicateTask,
    InvalidRow,
    InvalidTransition,
    ScheduleNotFound,
    ValidationError,
)
from omniq.models import EventType, Schedule, ScheduleStatus, Task
from omniq.models._fields import lookup_key
from omniq.repositories.db_migration import refuse_if_migrated
from omniq.repositories.events import event_row
from omniq.services import timing
from omniq.services._shared import _check_batch, _check_page, _schedule_event, _status_list, log
from omniq.services.caller_tx import CallerTx, caller_tx
from omniq.services.queries import Queries

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession
    from sqlalchemy.orm import Session

#: A schedule's task options that are its tasks' flow-control fields (resolved when the
#: schedule was made; ``rate_period`` in seconds).
_LIMIT_FIELDS = ("concurrency_key", "concurrency_max", "rate_key", "rate_limit", "rate_period")

__all__ = ["ScheduleAdmin"]

#: When these change, a schedule's next run is computed again.
_TIMING = frozenset(
    {"schedule_type", "cron_expression", "timezone", "interval", "run_at", "end_at"}
)
#: What a declaration in code sets (the rest is the schedule's own history).
_DECLARED = (
    *sorted(_TIMING),
    "func",
    "func_args",
    "func_kwargs",
    "queue_name",
    "max_runs",
    "metadata",
    "misfire_policy",
    "misfire_grace",
    "description",
    "tags",
    "task_options",
    "serializer",
)
#: The columns a declaration writes (its arguments are stored as ``payload``).
_DECLARED_COLUMNS = (
    *(field for field in _DECLARED if field not in ("func_args", "func_kwargs")),
    "payload",
)


#: What an update never changes (pause/resume/cancel change the status).
_FIXED = frozenset({"id", "created_at", "run_count", "last_run_at", "status"})


class ScheduleAdmin(Queries):
    """Stored schedules and their lifecycle."""

    async def schedule_async(
        self,
        schedule: Schedule,
        *,
        connection: AsyncConnection | sa.Connection | None = None,
        session: AsyncSession | Session | None = None,
    ) -> str:
        """Store a new schedule (next_run_at computed if unset); return its id.

        With ``connection=`` (or ``session=``), in that open transaction of the
        application's.
        """
        tx = caller_tx(connection, session)
        if not isinstance(schedule, Schedule):
            raise ValidationError("schedule", f"expected a Schedule, got {type(schedule).__name__}")
        now = self.storage.now()
        if schedule.next_run_at is None and schedule.status is ScheduleStatus.ACTIVE:
            first = timing.first_run(schedule, now)
            if first is None and schedule.end_at is not None:
                raise ValidationError(
                    "end_at", f"{schedule.end_at.isoformat()} comes before the first run"
                )
            schedule = attrs.evolve(schedule, next_run_at=first)
        self.storage.schedules.to_row(schedule)
        self._check_template(schedule)

        def body(conn: sa.Connection) -> None:
            refuse_if_migrated(conn)
            self.storage.schedules.insert(conn, schedule)
            self.storage.events.insert_rows(
                conn, [_schedule_event(EventType.SCHEDULED, schedule, now)]
            )

        if tx is not None:
            await tx.write(self.storage, body, what="create schedule", wake=False)
        else:
            await self.storage.write(body, what="create schedule")
        return schedule.id

    async def upsert_schedule_async(
        self,
        schedule: Schedule,
        *,
        connection: AsyncConnection | sa.Connection | None = None,
        session: AsyncSession | Session | None = None,
    ) -> Schedule:
        """Create the schedule named ``schedule.name``, or bring the stored one up to date.

        Declared in code, a named schedule is stored once, however many times
        the app starts. A stored one keeps its id, status, run count and last
        run; its template and timing become the given ones, and when the
        timing changed (cron, interval, time zone, start/``at``, end) its next
        run is computed again from now. Returns the stored schedule. With
        ``connection=`` (or ``session=``), in that open transaction of the
        application's.
        """
        tx = caller_tx(connection, session)
        if not isinstance(schedule, Schedule):
            raise ValidationError("schedule", f"expected a Schedule, got {type(schedule).__name__}")
        if not schedule.name:
            raise ValidationError("name", "an upserted schedule needs a name")
        name = schedule.name
        self.storage.schedules.to_row(schedule)
        self._check_template(schedule)
        for attempt in range(3):
            try:
                return await self._upsert_once(schedule, name, tx)
            except DuplicateTask:
                # Another process inserted the same name first: update that one.
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")  # pragma: no cover

    async def _upsert_once(self, schedule: Schedule, name: str, tx: CallerTx | None) -> Schedule:
        now = self.storage.now()

        def body(conn: sa.Connection) -> Schedule:
            refuse_if_migrated(conn)
            # Locked (PostgreSQL) until the write: a fire cannot commit in between.
            current = self.storage.schedules.get_by_name(conn, name, lock=True)
            if current is None:
                new = schedule
                if new.next_run_at is None and new.status is ScheduleStatus.ACTIVE:
                    first = timing.first_run(new, now)
                    if first is None and new.end_at is not None:
                        raise ValidationError(
                            "end_at", f"{new.end_at.isoformat()} comes before the first run"
                        )
                    new = attrs.evolve(new, next_run_at=first)
                self.storage.schedules.insert(conn, new)
                self.storage.events.insert_rows(
                    conn, [_schedule_event(EventType.SCHEDULED, new, now)]
                )
                return new
            changes = {
                field: getattr(schedule, field)
                for field in _DECLARED
                if getattr(schedule, field) != getattr(current, field)
            }
            if not changes:
                return current
            candidate = attrs.evolve(current, **changes)
            row = self.storage.schedules.to_row(candidate)
            # Only the declaration's own columns: the run count, last run and (unless
            # the timing changed) next run and status are the fires' to write.
            values: dict[str, Any] = {column: row[column] for column in _DECLARED_COLUMNS}
            values["updated_at"] = now
            if _TIMING & set(changes) and current.status is ScheduleStatus.ACTIVE:
                nxt = timing.run_from_now(candidate, now)
                values["next_run_at"] = nxt
                if nxt is None:
                    values["status"] = ScheduleStatus.COMPLETED
            # Compare-and-set on what was read (the lock makes it hold).
            updated = self.storage.schedules.update(
                conn,
                current.id,
                values,
                expected_status=[current.status],
                expected_next_run_at=current.next_run_at,
            )
            if updated is None:
                raise InvalidTransition(f"schedule {current.id} changed during upsert; retry")
            self.storage.events.insert_rows(
                conn,
                [
                    _schedule_event(
                        EventType.SCHEDULE_UPDATED, updated, now, data={"fields": sorted(changes)}
                    )
                ],
            )
            return updated

        if tx is not None:
            stored: Schedule = await tx.write(
                self.storage, body, what="upsert schedule", wake=False
            )
            return stored
        return await self.storage.write(body, what="upsert schedule")

    def _check_template(self, schedule: Schedule) -> None:
        """Build (not store) a task from the template: options that cannot make a
        task would otherwise fail every fire of the schedule."""
        self.storage.tasks.to_row(self.template_task(schedule))

    def template_task(self, schedule: Schedule) -> Task:
        """A task as the schedule makes them (its fire time not set yet)."""
        options = dict(schedule.task_options)
        limits = {k: options.pop(k) for k in _LIMIT_FIELDS if k in options}
        if limits.get("rate_period") is not None:
            limits["rate_period"] = timedelta(seconds=limits["rate_period"])
        options.setdefault("name", schedule.name)
        options.setdefault("description", schedule.description)
        task = self.build_task(
            schedule.func,
            schedule.func_args,
            schedule.func_kwargs,
            queue_name=schedule.queue_name,
            serializer=schedule.serializer,
            **options,
        )
        return attrs.evolve(task, **limits) if limits else task

    async def get_schedule_async(self, schedule_id: str) -> Schedule | None:
        """The schedule with ``schedule_id``, or None."""
        lookup_key(schedule_id, "schedule_id")
        return await self.storage.read(
            lambda conn: self.storage.schedules.get(conn, schedule_id), what="get schedule"
        )

    async def list_schedules_async(
        self,
        status: ScheduleStatus | str | Collection[ScheduleStatus | str] | None = None,
        limit: int = 100,
        offset: int = 0,
    ) -> list[Schedule]:
        """Schedules (optionally by status), oldest first."""
        _check_page(limit, offset)
        wanted = _status_list(status, ScheduleStatus)
        unreadable: list[tuple[str, str]] = []
        listed = await self.storage.read(
            lambda conn: self.storage.schedules.query(
                conn, status=wanted, limit=limit, offset=offset, unreadable=unreadable
            ),
            what="list schedules",
        )
        # One bad row must not hide the others (the CLI, the dashboard): it is
        # left out and named; delete_schedule_async removes it.
        for schedule_id, reason in unreadable:
            log.warning("schedule %s is left out: %s (delete or fix it)", schedule_id, reason)
        return listed

    async def get_ready_schedules_async(
        self, now: datetime | None = None, limit: int = 100
    ) -> list[Schedule]:
        """Active schedules whose next run time has come."""
        _check_batch(limit, "limit")
        when = require_aware(now, "now") if now is not None else self.storage.now()
        return await self.storage.read(
            lambda conn: self.storage.schedules.due(conn, when, limit), what="find due schedules"
        )

    async def update_schedule_async(self, schedule_id: str | Schedule, **changes: Any) -> Schedule:
        """Change a schedule's template or timing; next_run_at is recomputed when timing changes.

        Given a :class:`Schedule` record (the seed's ``update_schedule_async(schedule)``),
        its template and timing are written as the record holds them (its run
        count, last run and status stay the stored ones: see pause/resume/cancel).
        """
        if isinstance(schedule_id, Schedule):
            if changes:
                raise ValidationError("changes", "give a Schedule record or changes, not both")
            record, schedule_id = schedule_id, schedule_id.id
            kept = {*_FIXED, "updated_at", "next_run_at"}
            changes = {
                a.name: getattr(record, a.name)
                for a in attrs.fields(Schedule)
                if a.name not in kept
            }
        elif not isinstance(schedule_id, str):
            raise ValidationError(
                "schedule_id",
                f"expected a schedule id or a Schedule, got {type(schedule_id).__name__}",
            )
        lookup_key(schedule_id, "schedule_id")
        forbidden = _FIXED & set(changes)
        if forbidden:
            raise ValidationError(
                "changes", f"cannot update {sorted(forbidden)} (use pause/resume/cancel)"
            )
        now = self.storage.now()

        def body(conn: sa.Connection) -> Schedule:
            refuse_if_migrated(conn)
            # Locked (PostgreSQL) until the write: the whole row is written back.
            current = self._require_schedule(conn, schedule_id, lock=True)
            candidate = attrs.evolve(current, updated_at=now, **changes)
            timing_keys = {
                "schedule_type",
                "cron_expression",
                "timezone",
                "interval",
                "run_at",
                "end_at",
            }
            if timing_keys & set(changes) and "next_run_at" not in changes:
                nxt = timing.run_from_now(candidate, now)
                if nxt is None and candidate.status is ScheduleStatus.ACTIVE:
                    # The new end_at lies before the next run: the schedule is done.
                    candidate = attrs.evolve(candidate, status=ScheduleStatus.COMPLETED)
                candidate = attrs.evolve(candidate, next_run_at=nxt)
            row = self.storage.schedules.to_row(candidate)
            self._check_template(candidate)
            row.pop("id")
            updated = self.storage.schedules.update(
                conn, schedule_id, row, expected_status=[current.status]
            )
            if updated is None:
                raise InvalidTransition(f"schedule {schedule_id} changed during update; retry")
            self.storage.events.insert_rows(
                conn,
                [
                    _schedule_event(
                        EventType.SCHEDULE_UPDATED, updated, now, data={"fields": sorted(changes)}
                    )
                ],
            )
            return updated

        return await self.storage.write(body, what="update schedule")

    async def pause_schedule_async(self, schedule_id: str) -> Schedule:
        """Pause an active schedule (it creates no tasks until resumed)."""
        lookup_key(schedule_id, "schedule_id")
        return await self._set_schedule_status(
            schedule_id,
            from_=[ScheduleStatus.ACTIVE],
            to=ScheduleStatus.PAUSED,
            event=EventType.SCHEDULE_PAUSED,
            extra=lambda _s, now: {"paused_at": now},
        )

    async def resume_schedule_async(self, schedule_id: str) -> Schedule:
        """Resume a paused schedule; its next run is computed from now (no burst of missed runs)."""
        lookup_key(schedule_id, "schedule_id")

        def values(schedule: Schedule, now: datetime) -> dict[str, Any]:
            nxt = timing.run_from_now(schedule, now)
            # Past its end_at while paused: it resumes straight into completed.
            done = {"status": ScheduleStatus.COMPLETED} if nxt is None else {}
            return {"resumed_at": now, "next_run_at": nxt, **done}

        return await self._set_schedule_status(
            schedule_id,
            from_=[ScheduleStatus.PAUSED],
            to=ScheduleStatus.ACTIVE,
            event=EventType.SCHEDULE_RESUMED,
            extra=values,
        )

    async def cancel_schedule_async(self, schedule_id: str) -> Schedule:
        """Cancel a schedule for good (it stays visible with status cancelled)."""
        lookup_key(schedule_id, "schedule_id")
        return await self._set_schedule_status(
            schedule_id,
            from_=[ScheduleStatus.ACTIVE, ScheduleStatus.PAUSED],
            to=ScheduleStatus.CANCELLED,
            event=EventType.SCHEDULE_CANCELLED,
            extra=lambda _s, _now: {"next_run_at": None},
        )

    async def delete_schedule_async(self, schedule_id: str) -> bool:
        """Delete a schedule (its tasks stay, detached); True if it existed."""
        lookup_key(schedule_id, "schedule_id")
        now = self.storage.now()

        def body(conn: sa.Connection) -> bool:
            refuse_if_migrated(conn)
            try:
                schedule = self.storage.schedules.get(conn, schedule_id)
            except InvalidRow as exc:
                # A row that cannot be read (quarantined) can still be deleted.
                if not self.storage.schedules.delete(conn, schedule_id):
                    return False
                event = event_row(
                    EventType.DELETED,
                    schedule_id=schedule_id,
                    timestamp=now,
                    source="scheduler",
                    message="deleted an unreadable schedule",
                    error=str(exc),
                )
                self.storage.events.insert_rows(conn, [event])
                return True
            if schedule is None:
                return False
            self.storage.schedules.delete(conn, schedule_id)
            self.storage.events.insert_rows(
                conn, [_schedule_event(EventType.DELETED, schedule, now)]
            )
            return True

        return await self.storage.write(body, what="delete schedule")

    async def _set_schedule_status(
        self,
        schedule_id: str,
        *,
        from_: list[ScheduleStatus],
        to: ScheduleStatus,
        event: EventType,
        extra: Callable[[Schedule, datetime], dict[str, Any]],
    ) -> Schedule:
        now = self.storage.now()

        def body(conn: sa.Connection) -> Schedule:
            refuse_if_migrated(conn)
            current = self._require_schedule(conn, schedule_id)
            if current.status not in from_:
                raise InvalidTransition(
                    f"schedule {schedule_id} is {current.status}; expected "
                    + " or ".join(str(s) for s in from_)
                )
            values = {"status": to, "updated_at": now, **extra(current, now)}
            updated = self.storage.schedules.update(
                conn, schedule_id, values, expected_status=[current.status]
            )
            if updated is None:
                raise InvalidTransition(f"schedule {schedule_id} changed concurrently; retry")
            self.storage.events.insert_rows(conn, [_schedule_event(event, updated, now)])
            return updated

        return await self.storage.write(body, what="update schedule")

    def _require_schedule(
        self, conn: sa.Connection, schedule_id: str, *, lock: bool = False
    ) -> Schedule:
        schedule = self.storage.schedules.get(conn, schedule_id, lock=lock)
        if schedule is None:
            raise ScheduleNotFound(f"no schedule with id {schedule_id!r}")
        return schedule
