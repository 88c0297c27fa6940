"""Seed-compatible entry points: backends, components and factory functions.

These names come from OmniQ's original plan. They are thin: every call goes
to the same services as :class:`omniq.OmniQ`. A backend lives on OmniQ's
portal thread; its components offer each method twice, blocking
(``enqueue``) and awaitable (``enqueue_async``), and both run there.
"""

from __future__ import annotations

import os
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any

import attrs

from omniq._portal import run_in_portal, run_sync
from omniq.config import OmniQConfig
from omniq.db.engine import default_sqlite_url
from omniq.errors import ConfigurationError
from omniq.models import Settings
from omniq.services import Services
from omniq.sync import SyncEventStorage, SyncResultStorage, SyncTaskQueue, SyncWorker
from omniq.worker import EXECUTOR_KINDS, TaskRegistry, Worker

__all__ = [
    "SQLBackend",
    "SQLiteBackend",
    "create_sqlite_backend",
    "create_sqlite_components_from_config",
    "create_sqlite_event_storage",
    "create_sqlite_result_storage",
    "create_sqlite_task_queue",
    "create_sqlite_worker",
    "get_event_storage",
    "get_result_storage",
    "get_task_queue",
    "get_worker",
]


class _AwaitableTwins:
    """Adds ``name_async`` methods that run the async original on the portal loop."""

    _async: Any

    def __getattr__(self, name: str) -> Callable[..., Awaitable[Any]]:
        if not name.endswith("_async"):
            raise AttributeError(name)
        target = getattr(self._async, name)

        async def method(*args: Any, **kwargs: Any) -> Any:
            return await run_in_portal(target, *args, **kwargs)

        method.__name__ = name
        method.__doc__ = target.__doc__
        return method


class TaskQueueComponent(_AwaitableTwins, SyncTaskQueue):
    """The seed's task queue: blocking methods and ``*_async`` twins."""


class ResultStorageComponent(_AwaitableTwins, SyncResultStorage):
    """The seed's result storage: blocking methods and ``*_async`` twins."""


class EventStorageComponent(_AwaitableTwins, SyncEventStorage):
    """The seed's event storage: blocking methods and ``*_async`` twins."""


class WorkerComponent(_AwaitableTwins, SyncWorker):
    """The seed's worker: ``start``/``stop`` (blocking) and ``start_async``/``stop_async``."""


class SQLBackend:
    """A database (any supported engine URL) with the seed's component getters."""

    def __init__(
        self,
        url: str,
        *,
        project_name: str = "omniq",
        settings: Settings | None = None,
        allow_modules: Sequence[str] = (),
    ) -> None:
        self.url = url
        self.project_name = project_name
        self.settings = settings or Settings()
        self.registry = TaskRegistry(allow_modules)
        self._services: Services | None = None

    async def _open(self) -> None:
        if self._services is None:
            self._services = await Services.open_async(self.url, self.settings)

    async def _close(self) -> None:
        if self._services is not None:
            services, self._services = self._services, None
            await services.close_async()

    def initialize(self) -> None:
        """Connect and check (or migrate) the schema."""
        run_sync(self._open)

    async def initialize_async(self) -> None:
        """Awaitable :meth:`initialize`."""
        await run_in_portal(self._open)

    def close(self) -> None:
        """Close the database connection."""
        run_sync(self._close)

    async def close_async(self) -> None:
        """Awaitable :meth:`close`."""
        await run_in_portal(self._close)

    def __enter__(self) -> SQLBackend:
        self.initialize()
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    @property
    def services(self) -> Services:
        """The services underneath (initializes on first use)."""
        if self._services is None:
            self.initialize()
        assert self._services is not None
        return self._services

    def get_task_queue(self, queues: Sequence[str] | None = None) -> TaskQueueComponent:
        """A task queue serving ``queues`` (all queues when None)."""
        from omniq.services import TaskQueue

        return TaskQueueComponent(TaskQueue(self.services.storage, queues))

    def get_result_storage(self) -> ResultStorageComponent:
        """The result storage."""
        return ResultStorageComponent(self.services.results)

    def get_event_storage(self) -> EventStorageComponent:
        """The event storage."""
        return EventStorageComponent(self.services.events)

    def get_worker(self, worker_type: str = "async", **options: Any) -> WorkerComponent:
        """A worker: ``worker_type`` is async, thread or process (the executor)."""
        if worker_type not in EXECUTOR_KINDS:
            raise ConfigurationError(
                f"unknown worker type {worker_type!r}: use one of {', '.join(EXECUTOR_KINDS)}"
            )
        svc = self.services
        queue = svc.queue
        if options.get("queues"):
            from omniq.services import TaskQueue

            queue = TaskQueue(svc.storage, options["queues"])
        options.setdefault("registry", self.registry)
        worker = Worker(queue, svc.results, svc.events, executor=worker_type, **options)
        return WorkerComponent(worker)


class SQLiteBackend(SQLBackend):
    """The embedded default: ``<base_dir>/<project_name>.db``."""

    def __init__(
        self,
        project_name: str = "omniq",
        base_dir: str | os.PathLike[str] = "./omniq_data",
        *,
        settings: Settings | None = None,
        allow_modules: Sequence[str] = (),
    ) -> None:
        super().__init__(
            default_sqlite_url(project_name, base_dir),
            project_name=project_name,
            settings=settings,
            allow_modules=allow_modules,
        )
        self.base_dir = str(base_dir)


def create_sqlite_backend(
    project_name: str = "omniq", base_dir: str | os.PathLike[str] = "./omniq_data", **kwargs: Any
) -> SQLiteBackend:
    """An initialized :class:`SQLiteBackend`."""
    backend = SQLiteBackend(project_name, base_dir, **kwargs)
    backend.initialize()
    return backend


def create_sqlite_task_queue(
    project_name: str = "omniq",
    base_dir: str | os.PathLike[str] = "./omniq_data",
    queues: Sequence[str] | None = None,
) -> TaskQueueComponent:
    """A task queue on the SQLite file of ``project_name``."""
    return create_sqlite_backend(project_name, base_dir).get_task_queue(queues)


def create_sqlite_result_storage(
    project_name: str = "omniq", base_dir: str | os.PathLike[str] = "./omniq_data"
) -> ResultStorageComponent:
    """A result storage on the SQLite file of ``project_name``."""
    return create_sqlite_backend(project_name, base_dir).get_result_storage()


def create_sqlite_event_storage(
    project_name: str = "omniq", base_dir: str | os.PathLike[str] = "./omniq_data"
) -> EventStorageComponent:
    """An event storage on the SQLite file of ``project_name``."""
    return create_sqlite_backend(project_name, base_dir).get_event_storage()


def create_sqlite_worker(
    project_name: str = "omniq",
    base_dir: str | os.PathLike[str] = "./omniq_data",
    worker_type: str = "async",
    **options: Any,
) -> WorkerComponent:
    """A worker on the SQLite file of ``project_name``."""
    return create_sqlite_backend(project_name, base_dir).get_worker(worker_type, **options)


@attrs.frozen
class Components:
    """What :func:`create_sqlite_components_from_config` returns."""

    backend: SQLBackend
    task_queue: TaskQueueComponent
    result_storage: ResultStorageComponent
    event_storage: EventStorageComponent
    worker: WorkerComponent


def create_sqlite_components_from_config(config: Mapping[str, Any] | OmniQConfig) -> Components:
    """Backend and every component from a config (dict or :class:`OmniQConfig`)."""
    cfg = config if isinstance(config, OmniQConfig) else OmniQConfig.from_dict(config)
    url = cfg.url or default_sqlite_url(cfg.project_name, cfg.base_dir)
    backend = SQLBackend(url, project_name=cfg.project_name, settings=cfg.settings)
    backend.initialize()
    return Components(
        backend=backend,
        task_queue=backend.get_task_queue(cfg.queues),
        result_storage=backend.get_result_storage(),
        event_storage=backend.get_event_storage(),
        worker=backend.get_worker(
            cfg.executor,
            queues=cfg.queues,
            concurrency=cfg.concurrency,
            poll_interval=cfg.poll_interval,
        ),
    )


def get_task_queue(
    queues: Sequence[str] | None = None,
    *,
    project_name: str = "omniq",
    base_dir: str | os.PathLike[str] = "./omniq_data",
) -> TaskQueueComponent:
    """A task queue on the default SQLite backend."""
    return create_sqlite_task_queue(project_name, base_dir, queues)


def get_result_storage(
    *, project_name: str = "omniq", base_dir: str | os.PathLike[str] = "./omniq_data"
) -> ResultStorageComponent:
    """The result storage of the default SQLite backend."""
    return create_sqlite_result_storage(project_name, base_dir)


def get_event_storage(
    *, project_name: str = "omniq", base_dir: str | os.PathLike[str] = "./omniq_data"
) -> EventStorageComponent:
    """The event storage of the default SQLite backend."""
    return create_sqlite_event_storage(project_name, base_dir)


def get_worker(
    worker_type: str = "async",
    *,
    project_name: str = "omniq",
    base_dir: str | os.PathLike[str] = "./omniq_data",
    **options: Any,
) -> WorkerComponent:
    """A worker (``"async"``, ``"thread"`` or ``"process"``) on the default SQLite backend."""
    return create_sqlite_worker(project_name, base_dir, worker_type, **options)
