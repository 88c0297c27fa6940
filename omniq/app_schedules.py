"""The facade's schedule methods (a part of :class:`omniq.AsyncOmniQ`)."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, ParamSpec, TypeVar

from omniq._time import require_aware, to_timedelta
from omniq.errors import ValidationError
from omniq.models import MisfirePolicy, Schedule, ScheduleStatus, ScheduleType, Settings
from omniq.models.limits import task_limit_fields
from omniq.refs import callable_ref
from omniq.repositories.db_migration import copy_arriving
from omniq.services import Services
from omniq.task_handle import TaskHandle

if TYPE_CHECKING:
    import sqlalchemy as sa
    from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession
    from sqlalchemy.orm import Session


P = ParamSpec("P")
R = TypeVar("R")

__all__ = ["ScheduleMethods", "declared_periodic"]

#: Options of a schedule's tasks that limit them (resolved to their keys when it is made).
_LIMIT_OPTIONS = ("concurrency", "rate", "concurrency_key", "rate_key")


#: Periodic tasks declared in this process, by schedule name: the declaring
#: module and the factory of the schedule. ``omniq worker --app module``
#: upserts those declared in the modules it imports (see ``adopt_periodic``).
declared_periodic: dict[str, tuple[str, Callable[[], Schedule]]] = {}


class ScheduleMethods:
    """Create, read, pause, resume, cancel and list schedules; declare periodic tasks."""

    settings: Settings
    #: Periodic schedules declared with :meth:`periodic`, by name.
    _declared: dict[str, Callable[[], Schedule]]
    #: Names declared but not yet upserted into the database.
    _unsynced: set[str]

    async def _svc(self, caller_tx: bool = False) -> Services:
        raise NotImplementedError

    def _remember(self, func: Callable[..., Any] | str) -> None:
        raise NotImplementedError

    def task(self, func: Callable[P, R], /, **options: Any) -> TaskHandle[P, R]:
        raise NotImplementedError

    # --- periodic tasks declared in code ----------------------------------------------

    def periodic(
        self,
        *,
        cron: str | None = None,
        interval: timedelta | float | None = None,
        name: str | None = None,
        args: Sequence[Any] | None = None,
        kwargs: Mapping[str, Any] | None = None,
        timezone: str = "UTC",
        start_at: datetime | None = None,
        queue_name: str | None = None,
        max_runs: int | None = None,
        end_at: datetime | None = None,
        metadata: Mapping[str, Any] | None = None,
        misfire: MisfirePolicy | str = MisfirePolicy.RUN_ONCE,
        misfire_grace: timedelta | float | None = None,
        description: str | None = None,
        tags: Sequence[str] | None = None,
        **task_options: Any,
    ) -> Callable[[Callable[P, R]], TaskHandle[P, R]]:
        """Decorator: a task (as ``@task``) that also runs on ``cron=`` or every ``interval=``.

        The schedule is declared, not added: it is upserted by ``name``
        (default: the function's ``module:qualname``) when the app opens
        (``with OmniQ(...)``, ``open()``, or its first call that touches the
        database; a declaration made after that is upserted by the next
        call). Restarting the app updates the stored schedule instead of
        adding one; a changed cron or interval recomputes its next run; a
        paused or cancelled schedule stays so. ``args``/``kwargs`` are the
        arguments of each run; other options apply to the tasks it creates.
        """
        if (cron is None) == (interval is None):
            raise ValidationError("periodic", "give exactly one of cron= or interval=")

        def decorate(func: Callable[P, R]) -> TaskHandle[P, R]:
            # Its own enqueues use the same options as the tasks its schedule makes.
            options = {**task_options, **({"queue_name": queue_name} if queue_name else {})}
            handle = self.task(func, **options)
            key = name or handle.ref

            def declared() -> Schedule:
                return self._build_schedule(
                    func,
                    args,
                    kwargs,
                    cron=cron,
                    interval=interval,
                    timezone=timezone,
                    start_at=start_at,
                    queue_name=queue_name,
                    max_runs=max_runs,
                    end_at=end_at,
                    metadata=metadata,
                    misfire=misfire,
                    misfire_grace=misfire_grace,
                    name=key,
                    description=description,
                    tags=tags,
                    **task_options,
                )

            declared()  # a bad declaration fails here, at import, not at the next start
            self._declared[key] = declared
            self._unsynced.add(key)
            declared_periodic[key] = (str(getattr(func, "__module__", "")), declared)
            return handle

        return decorate

    def adopt_periodic(self, modules: Iterable[str]) -> list[str]:
        """Also upsert (on open) the periodic tasks declared in ``modules`` by other apps.

        ``omniq worker --app myapp.tasks`` uses it: the worker's app declares
        what the imported module's app declared. Returns the names adopted.
        """
        wanted = tuple(modules)
        adopted = []
        for key, (module, factory) in declared_periodic.items():
            if any(module == m or module.startswith(m + ".") for m in wanted):
                self._declared[key] = factory
                self._unsynced.add(key)
                adopted.append(key)
        return adopted

    async def _upsert_declared_async(self, services: Services) -> None:
        """Upsert the declared periodic schedules not yet written (see :meth:`periodic`).

        Not on a database still receiving a migration's copy: the source's schedules
        of those names are on their way (a new one would collide with its copy); they
        are upserted at the next open.
        """
        if await services.storage.read(copy_arriving, what="read the migration mark"):
            return
        for key in sorted(self._unsynced):
            await services.queue.upsert_schedule_async(self._declared[key]())
            self._unsynced.discard(key)

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
        ``session=`` the schedule is created (or updated) in that open
        transaction of the application's.

        With a ``name``, the schedule is declared rather than added: the
        schedule of that name is created once and later calls update it
        (a changed cron or interval recomputes its next run), so restarting
        an app never makes a second one. The id is the stored schedule's.
        """
        svc = await self._svc(caller_tx=connection is not None or session is not None)
        schedule = self._build_schedule(
            func,
            func_args,
            func_kwargs,
            cron=cron,
            interval=interval,
            at=at,
            timezone=timezone,
            start_at=start_at,
            queue_name=queue_name,
            max_runs=max_runs,
            end_at=end_at,
            metadata=metadata,
            misfire=misfire,
            misfire_grace=misfire_grace,
            name=name,
            description=description,
            tags=tags,
            **task_options,
        )
        if name is not None:
            stored = await svc.queue.upsert_schedule_async(
                schedule, connection=connection, session=session
            )
            return stored.id
        return await svc.queue.schedule_async(schedule, connection=connection, session=session)

    def _build_schedule(
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
        **task_options: Any,
    ) -> Schedule:
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
        limits = {k: task_options.pop(k, None) for k in _LIMIT_OPTIONS}
        if isinstance(func, TaskHandle):
            for k in ("concurrency", "rate"):
                limits[k] = limits[k] or func.options.get(k)
        if any(v is not None for v in limits.values()):
            task_options.update(
                task_limit_fields(
                    **limits,
                    ref=callable_ref(func),
                    func=None if isinstance(func, str) else func,
                    args=tuple(func_args or ()),
                    kwargs=dict(func_kwargs or {}),
                )
            )
        options = {
            k: (v.total_seconds() if isinstance(v, timedelta) else v)
            for k, v in task_options.items()
        }
        return Schedule(
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
            queue_name=self.settings.default_queue if queue_name is None else queue_name,
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
