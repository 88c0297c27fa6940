"""AsyncOmniQ: the facade users import (its sync twin is :class:`omniq.OmniQ`)."""

from __future__ import annotations

import asyncio
import inspect
import logging
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, Literal, ParamSpec, TypeVar, overload

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from omniq._portal import OwnedElsewhere, handed_over, is_portal_loop, made_on
from omniq.app_flow import FlowMethods, check_task_limits
from omniq.app_queries import QueryMethods
from omniq.app_schedules import ScheduleMethods
from omniq.app_workers import WorkerMethods
from omniq.app_workflows import WorkflowMethods
from omniq.config import OmniQConfig
from omniq.db.engine import default_sqlite_url
from omniq.errors import ConfigurationError
from omniq.models import Settings, Task
from omniq.models.limits import Limit, Rate
from omniq.models.rules import check_worker_options, queue_names
from omniq.refs import function_ref
from omniq.services import Services
from omniq.services.caller_tx import running_inline
from omniq.task_handle import TaskHandle
from omniq.worker import TaskRegistry, Worker

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession
    from sqlalchemy.orm import Session

log = logging.getLogger("omniq.app")

P = ParamSpec("P")
R = TypeVar("R")

__all__ = ["MEMORY_URL", "AsyncOmniQ", "TaskHandle"]

Mode = Literal["normal", "eager"]

#: The in-memory SQLite URL: a private database per app, gone when it closes.
MEMORY_URL = "sqlite+aiosqlite:///:memory:"


class AsyncOmniQ(WorkerMethods, QueryMethods, ScheduleMethods, FlowMethods, WorkflowMethods):
    """One OmniQ project: its database, queue, results, events, schedules and workers.

    ``url=None`` means the SQLite file ``<base_dir>/<project_name>.db`` (with
    ``mode="eager"``: a private in-memory database, see :mod:`omniq.eager`); an
    AsyncEngine may be passed instead of a URL (it is then not disposed on
    close). ``worker`` holds default options of the workers this app starts
    (``{"concurrency": 20, "executor": "thread", ...}``). Use ``async with
    AsyncOmniQ(...) as oq`` to open and close it.
    """

    def __init__(
        self,
        project_name: str = "omniq",
        url: str | sa.URL | AsyncEngine | None = None,
        *,
        queues: Sequence[str] | None = None,
        settings: Settings | None = None,
        base_dir: str | os.PathLike[str] = "omniq_data",
        mode: Mode = "normal",
        concurrency: int = 10,
        executor: str = "async",
        poll_interval: float = 1.0,
        allow_modules: Iterable[str] = (),
        worker: Mapping[str, Any] | None = None,
    ) -> None:
        if mode not in ("normal", "eager"):
            raise ConfigurationError(f"mode must be 'normal' or 'eager', got {mode!r}")
        self.project_name = project_name
        if url is None:
            # Eager mode is for tests: a private in-memory database, nothing on disk.
            url = MEMORY_URL if mode == "eager" else default_sqlite_url(project_name, base_dir)
        self.url = url
        self.queues = queue_names(queues)
        self.settings = settings or Settings()
        self.mode = mode
        self.worker_defaults: dict[str, Any] = {
            "concurrency": concurrency,
            "executor": executor,
            "poll_interval": poll_interval,
            **(worker or {}),
        }
        check_worker_options(
            self.settings, {**self.worker_defaults, "allow_modules": allow_modules}
        )
        self.registry = TaskRegistry(allow_modules)
        self._services: Services | None = None
        #: Services opened on the sync portal's loop and left for this loop's (see _svc).
        self._left: list[Services] = []
        self._worker: Worker | None = None
        self._declared = {}
        self._unsynced = set()

    # --- construction ---------------------------------------------------------

    @classmethod
    def from_config(cls, config: OmniQConfig, **overrides: Any) -> AsyncOmniQ:
        """Build from an :class:`OmniQConfig`."""
        kwargs: dict[str, Any] = {
            "project_name": config.project_name,
            "url": config.url,
            "queues": config.queues,
            "settings": config.settings,
            "base_dir": config.base_dir,
            "concurrency": config.concurrency,
            "executor": config.executor,
            "poll_interval": config.poll_interval,
            **overrides,
        }
        if config.log_level:
            logging.getLogger("omniq").setLevel(config.log_level.upper())
        return cls(**kwargs)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], **overrides: Any) -> AsyncOmniQ:
        """Build from a mapping (see :meth:`OmniQConfig.from_dict`)."""
        return cls.from_config(OmniQConfig.from_dict(data), **overrides)

    @classmethod
    def from_env(cls, **overrides: Any) -> AsyncOmniQ:
        """Build from ``OMNIQ_*`` environment variables."""
        return cls.from_config(OmniQConfig.from_env(), **overrides)

    @classmethod
    def from_config_file(cls, path: str | os.PathLike[str], **overrides: Any) -> AsyncOmniQ:
        """Build from a TOML or JSON file."""
        return cls.from_config(OmniQConfig.from_file(path), **overrides)

    @classmethod
    def from_backend(cls, backend: Any, **overrides: Any) -> AsyncOmniQ:
        """Build on a seed-style backend (:class:`omniq.backends.SQLBackend`): same database."""
        return cls(
            getattr(backend, "project_name", "omniq"),
            backend.url,
            settings=getattr(backend, "settings", None),
            **overrides,
        )

    # --- lifecycle ---------------------------------------------------------------

    async def open_async(self) -> AsyncOmniQ:
        """Connect and check (or migrate) the schema; idempotent."""
        if self._services is None:
            await self._adopt(
                await Services.open_async(self.url, self.settings, queues=self.queues)
            )
        services = self.services
        if self._unsynced and not _elsewhere(services, _running_loop()):
            await self._upsert_declared_async(services)
        return self

    async def _adopt(self, opened: Services) -> None:
        """Keep ``opened`` unless another caller opened the app meanwhile."""
        current = self._services
        if current is None:
            self._services = opened
        elif (
            self._worker is None
            and is_portal_loop(current.storage.loop)
            and not is_portal_loop(opened.storage.loop)
        ):
            # A blocking call from a thread opened it on the sync portal's loop
            # while the app's own loop did: the app's own loop keeps it (see _svc).
            self._left.append(current)
            self._services = opened
        else:
            await opened.close_async()

    async def close_async(self) -> None:
        """Stop the worker (if started here) and close the database."""
        if self._worker is not None:
            await self.stop_worker_async()
        for left in self._left:
            await _close_on_own_loop(left)
        self._left.clear()
        if self._services is not None:
            services, self._services = self._services, None
            # Opened again (perhaps on another database), it upserts its declarations again.
            self._unsynced.update(self._declared)
            await _close_on_own_loop(services)

    async def __aenter__(self) -> AsyncOmniQ:
        return await self.open_async()

    async def __aexit__(self, *_exc: object) -> None:
        await self.close_async()

    @property
    def loop(self) -> asyncio.AbstractEventLoop | None:
        """The event loop this app's database connections belong to (None: not open)."""
        return None if self._services is None else self._services.storage.loop

    @property
    def services(self) -> Services:
        """The underlying services (queue, results, events); opens nothing."""
        if self._services is None:
            raise ConfigurationError(
                "OmniQ is not open: use `async with AsyncOmniQ(...) as oq` or await open_async()"
            )
        return self._services

    async def _svc(self, caller_tx: bool = False) -> Services:
        """The services, open and serving this loop (``caller_tx``: for a write in
        the application's own transaction, whose connection belongs to this loop).

        When they belong to another running loop, :class:`OwnedElsewhere` has the
        call made there (see ``handed_over``), except for a write in the
        application's transaction on its own loop: that stays here, once the
        services are ready for it (made ready on their own loop).
        """
        opened = False
        while True:
            services = self._services
            here = _running_loop()
            owner = None if services is None else services.storage.loop
            if services is not None and here is not None and owner is not here:
                if (
                    self._worker is None
                    and owner is not None
                    and not owner.is_running()
                    and services.storage.loop_bound
                ):
                    # The loop that opened these connections has ended (an
                    # asyncio.run() returned): they cannot serve this loop, so
                    # open again here; the old ones are let go with the app.
                    self._left.append(services)
                    self._services = None
                    self._unsynced.update(self._declared)
                elif self._worker is None and is_portal_loop(owner):
                    # A blocking call from a thread opened this app on the sync
                    # portal's loop before the app's own loop did; a connection
                    # belongs to the loop that opened it (asyncpg's do), so open
                    # again here. Blocking calls now go to this loop; the first
                    # services close with the app.
                    self._left.append(services)
                    self._services = None
                    self._unsynced.update(self._declared)
                elif owner is not None and _elsewhere(services, here):
                    if caller_tx and not is_portal_loop(here):
                        # The application's own transaction, on its own loop: the
                        # write stays here, on its connection.
                        if not services.queue._ready_for_caller_tx():
                            await made_on(owner, services.queue._prepare_caller_tx_async)
                        return services
                    # A blocking call from a thread, while the app is open on its
                    # own loop (or an async call from another thread's loop while
                    # the connections belong to that one): the call is made there
                    # (nothing was done yet; see handed_over).
                    raise OwnedElsewhere(owner)
            if self._services is not None and (not self._unsynced or opened):
                return self._services
            # Then look again: another loop may have opened the app meanwhile.
            await self.open_async()
            opened = True

    # --- tasks ----------------------------------------------------------------------

    @overload
    def task(
        self, func: Callable[P, R], /, *, queue_name: str | None = None, **options: Any
    ) -> TaskHandle[P, R]: ...
    @overload
    def task(
        self, func: None = None, /, *, queue_name: str | None = None, **options: Any
    ) -> Callable[[Callable[P, R]], TaskHandle[P, R]]: ...
    def task(
        self,
        func: Callable[P, R] | None = None,
        /,
        *,
        queue_name: str | None = None,
        **options: Any,
    ) -> TaskHandle[P, R] | Callable[[Callable[P, R]], TaskHandle[P, R]]:
        """Decorator: register a function (workers of this app may run it) and give it ``enqueue``.

        Options (queue_name, priority, max_retries, retry_delay, timeout, ttl,
        result_ttl...) become the defaults of its ``enqueue``. The handle keeps
        the function's signature for type checkers (see :class:`TaskHandle`).
        ``concurrency=Limit(...)`` and ``rate=Rate(...)`` limit its runs across
        every worker (README: "Flow control").
        """
        if queue_name is not None:
            options["queue_name"] = queue_name

        def decorate(f: Callable[P, R]) -> TaskHandle[P, R]:
            check_task_limits(f, options)
            self.registry.register(f)
            return TaskHandle(self, f, options)

        return decorate(func) if func is not None else decorate

    def _remember(self, func: Callable[..., Any] | str, field: str = "func") -> None:
        # A function object passed in by code (not a string from data) is
        # trusted: workers started by this app may run it.
        if not isinstance(func, str):
            function_ref(func, field)  # what is not a function is refused naming the field
            self.registry.register(func)

    async def enqueue_async(
        self,
        func: Callable[..., Any] | str,
        func_args: Sequence[Any] | Mapping[str, Any] | None = None,
        func_kwargs: Mapping[str, Any] | None = None,
        *,
        queue_name: str | None = None,
        priority: int = 0,
        run_at: datetime | None = None,
        run_in: timedelta | float | None = None,
        ttl: timedelta | float | None = None,
        result_ttl: timedelta | float | None = None,
        max_retries: int | None = None,
        retry_delay: timedelta | float | None = None,
        timeout: timedelta | float | None = None,
        depends_on: Sequence[str] | None = None,
        callback: Callable[..., Any] | str | None = None,
        callback_args: Sequence[Any] | None = None,
        unique_key: str | None = None,
        name: str | None = None,
        description: str | None = None,
        tags: Sequence[str] | None = None,
        store_result: bool = True,
        on_duplicate: Literal["return", "raise"] = "return",
        connection: AsyncConnection | sa.Connection | None = None,
        session: AsyncSession | Session | None = None,
        concurrency: Limit | None = None,
        rate: Rate | None = None,
        concurrency_key: str | None = None,
        rate_key: str | None = None,
    ) -> str:
        """Enqueue ``func(*func_args, **func_kwargs)``; return the task id.

        ``concurrency`` / ``rate`` limit it (a task handle brings those it was
        declared with); ``concurrency_key`` / ``rate_key`` set this call's keys.

        ``func_args`` may also be a mapping of keyword arguments. With
        ``connection=`` (an ``AsyncConnection``, or a ``Connection`` for the
        sync twin) or ``session=`` (an ``AsyncSession`` / ``Session``) the task
        is written in that open transaction of the application's, in a
        savepoint: it exists once the application commits, not at all if it
        rolls back (README: "Enqueue in your transaction").
        """
        svc = await self._svc(caller_tx=connection is not None or session is not None)
        self._remember(func)
        if callback is not None:
            self._remember(callback, "callback")
        if isinstance(func, TaskHandle):
            concurrency = concurrency or func.options.get("concurrency")
            rate = rate or func.options.get("rate")
        task_id = await svc.queue.enqueue_async(
            func,
            func_args,
            func_kwargs,
            queue_name=queue_name,
            priority=priority,
            run_at=run_at,
            run_in=run_in,
            ttl=ttl,
            result_ttl=result_ttl,
            max_retries=max_retries,
            retry_delay=retry_delay,
            timeout=timeout,
            depends_on=depends_on,
            callback=callback,
            callback_args=callback_args,
            unique_key=unique_key,
            name=name,
            description=description,
            tags=tags,
            store_result=store_result,
            on_duplicate=on_duplicate,
            connection=connection,
            session=session,
            concurrency=concurrency,
            rate=rate,
            concurrency_key=concurrency_key,
            rate_key=rate_key,
        )
        # A task in the caller's transaction cannot run before that commits.
        if self.mode == "eager" and connection is None and session is None:
            await self._run_eagerly([task_id])
        return task_id

    async def enqueue_many_async(
        self,
        tasks: Iterable[Task],
        *,
        on_duplicate: Literal["return", "raise"] = "return",
        connection: AsyncConnection | sa.Connection | None = None,
        session: AsyncSession | Session | None = None,
    ) -> list[str]:
        """Enqueue Task records (see :meth:`build_task`) in one transaction
        (OmniQ's own, or the application's with ``connection=`` / ``session=``).

        A task whose unique key a live task holds gives that task's id, or,
        with ``on_duplicate="raise"``, :class:`DuplicateTask` and nothing of
        the batch is stored (as :meth:`enqueue_async`)."""
        svc = await self._svc(caller_tx=connection is not None or session is not None)
        ids = await svc.queue.enqueue_many_async(
            tasks, on_duplicate=on_duplicate, connection=connection, session=session
        )
        if self.mode == "eager" and connection is None and session is None:
            await self._run_eagerly(ids)
        return ids

    async def _prepare_caller_tx_async(self) -> None:
        """Open, and get ready to write in the application's transactions."""
        await (await self._svc()).queue._prepare_caller_tx_async()

    def _ready_for_caller_tx(self) -> bool:
        return self._services is not None and self._services.queue._ready_for_caller_tx()

    def _prepare_for_sync_caller_tx(self) -> None:
        """Blocking :meth:`_prepare_caller_tx_async` (a no-op once done)."""
        if not self._ready_for_caller_tx():
            from omniq._portal import run_sync_on

            run_sync_on(self.loop, self._prepare_caller_tx_async)

    def build_task(self, func: Callable[..., Any] | str, *args: Any, **options: Any) -> Task:
        """A Task record for :meth:`enqueue_many_async` (same options as enqueue)."""
        self._remember(func)
        return self.services.queue.build_task(func, *args, **options)

    async def cancel_async(self, task_id: str) -> bool:
        """Cancel a queued task, or request cancellation of a running one."""
        return await (await self._svc()).queue.cancel_async(task_id)

    async def requeue_async(self, task_id: str) -> Task:
        """Send a failed, cancelled or expired task back to the queue."""
        task = await (await self._svc()).queue.requeue_async(task_id)
        if self.mode == "eager":
            await self._run_eagerly([task.id])
        return task


def _running_loop() -> asyncio.AbstractEventLoop | None:
    """The running event loop (None: run inline without one, as the sync caller-tx path does)."""
    if running_inline():
        return None  # inside a loop's thread perhaps, but that loop does not run this
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None


def _elsewhere(services: Services, here: asyncio.AbstractEventLoop | None) -> bool:
    """True when ``services`` belong to another running loop and the call is to be
    made there (see ``AsyncOmniQ._svc``): on the sync portal's loop, or on any other
    loop when their connections are bound to the loop that opened them (asyncpg's)."""
    owner = services.storage.loop
    return (
        (is_portal_loop(here) or services.storage.loop_bound)
        and owner is not None
        and owner is not here
        and owner.is_running()
        and not owner.is_closed()
    )


async def _close_on_own_loop(services: Services) -> None:
    """Close ``services`` on the loop that opened them (if it runs elsewhere)."""
    loop = services.storage.loop
    if loop is None or loop is _running_loop():
        await services.close_async()
    elif loop.is_running():
        await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(services.close_async(), loop))
    else:
        await services.storage.let_go()  # its loop has ended


def _hand_over_async_methods(cls: type) -> None:
    """Wrap each public ``*_async`` method of ``cls`` (and its bases) in :func:`handed_over`."""
    for name in dir(cls):
        method = getattr(cls, name)
        if (
            name.endswith("_async")
            and not name.startswith("_")
            and inspect.iscoroutinefunction(method)
        ):
            setattr(cls, name, handed_over(method))


_hand_over_async_methods(AsyncOmniQ)
