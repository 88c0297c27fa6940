"""The seed's ``SQLiteWorker``: OmniQ's worker over a backend's components."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from omniq._portal import run_in_portal, run_sync
from omniq.errors import ConfigurationError
from omniq.services import Services
from omniq.storage import SQLiteEventStorage, SQLiteResultStorage, SQLiteTaskQueue
from omniq.storage._component import Component
from omniq.sync import SyncWorker
from omniq.worker import Worker
from omniq.worker.worker import default_worker_id

__all__ = ["SQLiteWorker"]


class SQLiteWorker(Component, SyncWorker):
    """Runs the tasks of ``task_queue``'s queues (``max_workers`` at a time), storing
    outcomes in ``result_storage`` and ``event_storage``: :class:`omniq.worker.Worker`
    with the seed's constructor. Other keyword arguments go to the Worker
    (``executor="thread"``, ``run_scheduler=False``, ...).

    ``start``/``stop`` run it in the background (``start_async``/``stop_async``
    too); ``run_until_complete`` works until nothing is ready.
    """

    service_type = Worker

    def __init__(
        self,
        task_queue: SQLiteTaskQueue,
        result_storage: SQLiteResultStorage,
        event_storage: SQLiteEventStorage,
        worker_id: str | None = None,
        max_workers: int = 1,
        poll_interval: float = 1.0,
        **kwargs: Any,
    ) -> None:
        backend = task_queue.backend
        for name, part in (("result_storage", result_storage), ("event_storage", event_storage)):
            if part.backend is not backend:
                raise ConfigurationError(f"{name} belongs to another backend than task_queue")
        super().__init__(backend)
        self.task_queue = task_queue
        self.result_storage = result_storage
        self.event_storage = event_storage
        self.max_workers = max_workers
        self.poll_interval = poll_interval
        self._worker_id = worker_id or default_worker_id()
        self._options = kwargs
        self._options.setdefault("registry", backend.registry)

    @property
    def worker_id(self) -> str:
        """The worker's id."""
        return self._worker_id

    @property
    def is_running(self) -> bool:
        """True between ``start`` and ``stop``."""
        return self._service is not None and bool(self._service.is_running)

    def _keeps_service(self) -> bool:
        return self.is_running

    def stop(self, grace_period: timedelta | float | None = None) -> None:
        """Stop the worker started by :meth:`start` (opens nothing; see Worker.stop_async).

        A worker whose backend was closed while it ran has stopped already:
        this raises its :class:`~omniq.errors.DatabaseClosed`.
        """
        if self._service is not None:
            run_sync(self._service.stop_async, grace_period)

    async def stop_async(self, grace_period: timedelta | float | None = None) -> None:
        """Awaitable :meth:`stop`."""
        if self._service is not None:
            await run_in_portal(self._service.stop_async, grace_period)

    def _make_service(self, services: Services) -> Worker:
        worker = Worker(
            self.task_queue._service_for(services),
            self.result_storage._service_for(services),
            self.event_storage._service_for(services),
            worker_id=self._worker_id,
            max_workers=self.max_workers,
            poll_interval=self.poll_interval,
            **self._options,
        )
        previous: Worker | None = self._service
        if previous is not None:
            # Made again over a reopened backend: still this worker, its counters go on.
            worker._counts.update(previous._counts)
        return worker
