"""The seed's factory functions, with the seed's signatures (thin: they construct
the backend and components of :mod:`omniq.backends.sqlite`)."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

from omniq.backends.sqlite import SQLBackend, SQLiteBackend, check_worker_type
from omniq.models.config import OmniQConfig
from omniq.storage import SQLiteEventStorage, SQLiteResultStorage, SQLiteTaskQueue
from omniq.workers import SQLiteWorker

__all__ = [
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


def create_sqlite_backend(
    project_name: str, base_dir: str | os.PathLike[str] = "./omniq_data", **kwargs: Any
) -> SQLiteBackend:
    """A SQLite backend (opened on first use); ``kwargs``: settings, allow_modules."""
    return SQLiteBackend(project_name, base_dir, **kwargs)


def create_sqlite_task_queue(
    backend: SQLBackend, queues: Sequence[str] | None = None
) -> SQLiteTaskQueue:
    """The task queue of ``backend`` serving ``queues`` (``["default"]`` when None)."""
    return backend.get_task_queue(queues)


def create_sqlite_result_storage(backend: SQLBackend) -> SQLiteResultStorage:
    """The result storage of ``backend``."""
    return backend.get_result_storage()


def create_sqlite_event_storage(backend: SQLBackend) -> SQLiteEventStorage:
    """The event storage of ``backend``."""
    return backend.get_event_storage()


def create_sqlite_worker(
    task_queue: SQLiteTaskQueue,
    result_storage: SQLiteResultStorage,
    event_storage: SQLiteEventStorage,
    worker_id: str | None = None,
    max_workers: int = 1,
    poll_interval: float = 1.0,
    **kwargs: Any,
) -> SQLiteWorker:
    """A worker over these components (``kwargs`` go to :class:`omniq.worker.Worker`)."""
    return SQLiteWorker(
        task_queue,
        result_storage,
        event_storage,
        worker_id=worker_id,
        max_workers=max_workers,
        poll_interval=poll_interval,
        **kwargs,
    )


def create_sqlite_components_from_config(
    config: OmniQConfig | Mapping[str, Any],
) -> dict[str, Any]:
    """``{"backend", "task_queue", "result_storage", "event_storage", "worker"}`` from a
    config (an :class:`OmniQConfig` or a dict, with the seed's sections or flat keys).

    ``task_queue.base_dir`` and ``task_queue.queues``, ``worker.max_workers``,
    ``worker.poll_interval`` and ``worker.worker_type`` are honoured; a ``url``
    opens that database instead of the SQLite file.
    """
    cfg = config if isinstance(config, OmniQConfig) else OmniQConfig.from_dict(config)
    backend: SQLBackend
    if cfg.task_queue.url:
        backend = SQLBackend(
            cfg.task_queue.url, project_name=cfg.project_name, settings=cfg.settings
        )
    else:
        backend = create_sqlite_backend(
            cfg.project_name, cfg.task_queue.base_dir, settings=cfg.settings
        )
    task_queue = create_sqlite_task_queue(backend, cfg.task_queue.queues)
    result_storage = create_sqlite_result_storage(backend)
    event_storage = create_sqlite_event_storage(backend)
    worker = create_sqlite_worker(
        task_queue,
        result_storage,
        event_storage,
        max_workers=cfg.worker.max_workers,
        poll_interval=cfg.worker.poll_interval,
        executor=cfg.worker.worker_type,
    )
    return {
        "backend": backend,
        "task_queue": task_queue,
        "result_storage": result_storage,
        "event_storage": event_storage,
        "worker": worker,
    }


def get_task_queue(backend: SQLBackend, queues: Sequence[str] | None = None) -> SQLiteTaskQueue:
    """The task queue of ``backend`` (see :func:`create_sqlite_task_queue`)."""
    return create_sqlite_task_queue(backend, queues)


def get_result_storage(backend: SQLBackend) -> SQLiteResultStorage:
    """The result storage of ``backend``."""
    return create_sqlite_result_storage(backend)


def get_event_storage(backend: SQLBackend) -> SQLiteEventStorage:
    """The event storage of ``backend``."""
    return create_sqlite_event_storage(backend)


def get_worker(
    worker_type: str,
    task_queue: SQLiteTaskQueue,
    result_storage: SQLiteResultStorage,
    event_storage: SQLiteEventStorage,
    **kwargs: Any,
) -> SQLiteWorker:
    """A worker whose sync functions run on the loop's threads (``"async"``), a thread
    pool (``"thread"``) or child processes (``"process"``)."""
    return create_sqlite_worker(
        task_queue,
        result_storage,
        event_storage,
        executor=check_worker_type(worker_type),
        **kwargs,
    )
