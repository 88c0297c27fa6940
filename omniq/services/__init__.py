"""Services: own the transactions, compose repositories, enforce the rules."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from omniq.models import Settings
from omniq.repositories.events import event_row, maybe_written
from omniq.services._storage import Storage
from omniq.services.events import EventStorage
from omniq.services.queue import ErrorInfo, TaskQueue
from omniq.services.results import ResultStorage
from omniq.services.workers import WorkerRegistry
from omniq.services.workflows import WorkflowService

__all__ = [
    "ErrorInfo",
    "EventStorage",
    "ResultStorage",
    "Services",
    "Storage",
    "TaskQueue",
    "WorkerRegistry",
    "WorkflowService",
    "event_row",
    "maybe_written",
]


class Services:
    """The queue, result storage and event storage over one database."""

    def __init__(self, storage: Storage, queues: Sequence[str] | None = None) -> None:
        self.storage = storage
        self.queue = TaskQueue(storage, queues)
        self.results = ResultStorage(storage)
        self.events = EventStorage(storage)
        self.workers = WorkerRegistry(storage)
        self.workflows = WorkflowService(storage, self.queue)

    @classmethod
    async def open_async(
        cls,
        url: str | sa.URL | AsyncEngine,
        settings: Settings | None = None,
        *,
        queues: Sequence[str] | None = None,
        **engine_kwargs: Any,
    ) -> Services:
        """Connect to ``url`` (or use an existing engine) and check the schema."""
        if isinstance(url, AsyncEngine):
            storage = Storage(url, settings)
        else:
            storage = Storage.from_url(url, settings, **engine_kwargs)
        try:
            await storage.open()
        except BaseException:
            await storage.close()
            raise
        return cls(storage, queues)

    async def close_async(self) -> None:
        """Release the engine (if these services created it)."""
        await self.storage.close()
