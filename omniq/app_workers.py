"""The facade's worker methods (a part of :class:`omniq.AsyncOmniQ`): start, stop
or run a worker of the app's tasks, and run the maintenance sweeps now."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import timedelta
from typing import Any

from omniq.errors import ConfigurationError
from omniq.services import Services
from omniq.services.maintenance import Maintenance, MaintenanceReport
from omniq.worker import TaskRegistry, Worker, WorkerStats

__all__ = ["WorkerMethods"]


class WorkerMethods:
    """Workers of the app (each with a sync twin on :class:`omniq.OmniQ`)."""

    queues: list[str] | None
    registry: TaskRegistry
    worker_defaults: dict[str, Any]
    _worker: Worker | None

    @property
    def services(self) -> Services:
        raise NotImplementedError

    async def _svc(self, caller_tx: bool = False) -> Services:
        raise NotImplementedError

    async def cleanup_async(self) -> MaintenanceReport:
        """Run every maintenance sweep now (expiry, lease recovery, retention, checkpoint).

        The sweeps are conditional and batched, so they are safe beside
        workers doing the same; no maintenance lease is taken or held.
        """
        svc = await self._svc()
        return await Maintenance(
            svc.storage, svc.queue, svc.results, svc.events, owner="cleanup"
        ).sweep_all_async()

    def _make_worker(self, **options: Any) -> Worker:
        svc = self.services
        merged = {**self.worker_defaults, **{k: v for k, v in options.items() if v is not None}}
        merged.setdefault("queues", self.queues)
        return Worker(svc.queue, svc.results, svc.events, registry=self.registry, **merged)

    async def start_worker_async(
        self,
        queues: Sequence[str] | None = None,
        concurrency: int | None = None,
        executor: str | None = None,
        **options: Any,
    ) -> Worker:
        """Start a worker in the background of this event loop (one per app)."""
        await self._svc()
        if self._worker is not None:
            raise ConfigurationError("a worker is already running; stop_worker_async() first")
        self._worker = self._make_worker(
            queues=queues, concurrency=concurrency, executor=executor, **options
        )
        await self._worker.start_async()
        return self._worker

    async def stop_worker_async(self, grace_period: timedelta | float | None = None) -> None:
        """Stop the worker started by :meth:`start_worker_async` (graceful).

        A cancelled call leaves the shutdown running; calling this again waits for it.
        """
        worker = self._worker
        if worker is None:
            return
        await worker.stop_async(grace_period)
        if self._worker is worker:
            self._worker = None

    async def run_worker_async(
        self,
        queues: Sequence[str] | None = None,
        concurrency: int | None = None,
        executor: str | None = None,
        *,
        burst: bool = True,
        **options: Any,
    ) -> WorkerStats:
        """Run a worker here: with ``burst=True`` until nothing is ready, else until stopped."""
        await self._svc()
        worker = self._make_worker(
            queues=queues, concurrency=concurrency, executor=executor, **options
        )
        if burst:
            return await worker.run_until_complete_async()
        await worker.run_async(install_signal_handlers=False)
        return worker.get_stats()

    async def _run_eagerly(self, task_ids: Sequence[str]) -> None:
        """Eager mode: run exactly these tasks inline (and what their completion releases)."""
        from omniq.eager import run_inline

        worker = self._make_worker(run_scheduler=False, run_maintenance=False, queues=None)
        await run_inline(self.services, worker, task_ids)
