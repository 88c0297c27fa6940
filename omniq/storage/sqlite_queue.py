"""The seed's ``SQLiteTaskQueue``: the task queue service of a backend."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from omniq.models.rules import queue_names
from omniq.services import Services, TaskQueue
from omniq.storage._component import StorageComponent
from omniq.sync import SyncTaskQueue

if TYPE_CHECKING:
    from omniq.backends.sqlite import SQLBackend

__all__ = ["SQLiteTaskQueue"]


class SQLiteTaskQueue(StorageComponent, SyncTaskQueue):
    """Named queues of a backend (``["default"]`` unless given), e.g.
    ``SQLiteTaskQueue(backend, ["emails"])``; every method of
    :class:`omniq.services.TaskQueue`, blocking and as ``*_async``."""

    service_type = TaskQueue

    def __init__(self, backend: SQLBackend, queues: Sequence[str] | None = None) -> None:
        super().__init__(backend)
        self.queues = queue_names(queues) or ["default"]

    def _make_service(self, services: Services) -> TaskQueue:
        return TaskQueue(services.storage, self.queues)
