"""The facade's schedule methods (a part of :class:`omniq.AsyncOmniQ`)."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from omniq._time import require_aware, to_timedelta
from omniq.errors import ValidationError
from omniq.models import MisfirePolicy, Schedule, ScheduleStatus, ScheduleType, Settings
from omniq.refs import callable_ref
from omniq.services import Services

if TYPE_CHECKING:
    import sqlalchemy as sa
    from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession
    from sqlalchemy.orm import Session

__all__ = ["ScheduleMethods"]


class ScheduleMethods:
    """Create, read, pause, resume, cancel and list schedules."""

    settings: Settings

    async def _svc(self) -> Services:
        raise NotImplementedError

    def _remember(self, func: Callable[..., Any] | str) -> None:
        raise NotImplementedError

    # --- schedules -------------------------------------------------------------------

    async def schedule_async(
        self,
        func: Callable[..., Any] | str,
        func_args: Sequence[Any] | Mapping[str, Any] | None = None,
        func_kwargs: Mapping[str, Any] | None = None,
        *,
        cron: str | None = None,
        interval: timedelta | float | None = None,
        at: datetime | None = None,
        timezone: str = "UTC",
        start_at: datetime | None = None,
        queue_name: str | None = None,
        max_runs: int | None = None,
        end_at: datetime | None = None,
        metadata: Mapping[str, Any] | None = None,
        misfire: MisfirePolicy | str = MisfirePolicy.RUN_ONCE,
        misfire_grace: timedelta | float | None = None,
        name: str | None = None,
        description: str | None = None,
        tags: Sequence[str] | None = None,
        connection: AsyncConnection | sa.Connection | None = None,
        session: AsyncSession | Session | None = None,
        **task_options: Any,
    ) -> str:
        """Create a schedule: ``cron=`` (in ``timezone``), ``interval=`` or one-shot ``at=``.

        Each fire creates a new task from this template; ``task_options``
        (priority, max_retries, timeout, ...) apply to those tasks. The
        schedule completes after ``max_runs`` runs, or at ``end_at``;
        ``metadata`` is free-form JSON kept with it. With ``connection=`` /
        ``session=`` the schedule is created in that open transaction of the
        application's.
        """
        svc = await self._svc()
        given = [x for x in (cron, interval, at) if x is not None]
        if len(given) != 1:
            raise ValidationError("schedule", "give exactly one of cron=, interval= or at=")
        self._remember(func)
        if isinstance(func_args, Mapping):
            func_kwargs = func_args
            func_args = ()
        kind = (
            ScheduleType.CRON
            if cron is not None
            else ScheduleType.INTERVAL
            if interval is not None
            else ScheduleType.TIMESTAMP
        )
        options = {
            k: (v.total_seconds() if isinstance(v, timedelta) else v)
            for k, v in task_options.items()
        }
        schedule = Schedule(
            func=callable_ref(func),
            func_args=func_args or (),
            func_kwargs=func_kwargs or {},
            schedule_type=kind,
            cron_expression=cron,
            timezone=timezone,
            interval=to_timedelta(interval, "interval", allow_zero=False)
            if interval is not None
            else None,
            run_at=require_aware(at, "at")
            if at is not None
            else (require_aware(start_at, "start_at") if start_at is not None else None),
            queue_name=queue_name or self.settings.default_queue,
            max_runs=max_runs,
            end_at=None if end_at is None else require_aware(end_at, "end_at"),
            metadata=metadata,
            misfire_policy=misfire,
            misfire_grace=to_timedelta(misfire_grace, "misfire_grace")
            if misfire_grace is not None
            else None,
            name=name,
            description=description,
            tags=tags if isinstance(tags, str) or not isinstance(tags, Iterable) else tuple(tags),
            task_options=options,
            serializer=self.settings.serializer,
        )
        return await svc.queue.schedule_async(schedule, connection=connection, session=session)

    async def get_schedule_async(self, schedule_id: str) -> Schedule | None:
        """The schedule with ``schedule_id``, or None."""
        return await (await self._svc()).queue.get_schedule_async(schedule_id)

    async def pause_schedule_async(self, schedule_id: str) -> Schedule:
        """Pause a schedule."""
        return await (await self._svc()).queue.pause_schedule_async(schedule_id)

    async def resume_schedule_async(self, schedule_id: str) -> Schedule:
        """Resume a paused schedule (next run computed from now)."""
        return await (await self._svc()).queue.resume_schedule_async(schedule_id)

    async def cancel_schedule_async(self, schedule_id: str) -> Schedule:
        """Cancel a schedule for good."""
        return await (await self._svc()).queue.cancel_schedule_async(schedule_id)

    async def list_schedules_async(
        self, status: ScheduleStatus | str | Sequence[ScheduleStatus | str] | None = None
    ) -> list[Schedule]:
        """Schedules, optionally by status."""
        return await (await self._svc()).queue.list_schedules_async(status)
