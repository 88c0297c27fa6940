"""Task progress: what running tasks reported about how far they got.

A worker writes the last value each task reported, a few times per second at
most (see :mod:`omniq.worker.progress`); readers get it with
:meth:`ProgressStorage.get_async`. Progress is not a state change of the
task: it writes no event, and a row outlives its task's run (it is deleted
with the task).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from omniq.models import TaskProgress
from omniq.models._fields import lookup_key
from omniq.services._storage import Storage

__all__ = ["ProgressStorage"]


class ProgressStorage:
    """Write and read the progress of tasks."""

    def __init__(self, storage: Storage) -> None:
        self.storage = storage
        self.repository = storage.progress

    async def write_async(self, rows: Sequence[Mapping[str, Any]]) -> None:
        """Upsert progress rows in one transaction (rows of tasks not running under
        their ``lease_token`` are skipped)."""
        await self.storage.write(lambda conn: self.repository.write(conn, rows), what="progress")

    async def get_async(self, task_id: str) -> TaskProgress | None:
        """The last progress ``task_id`` reported, or None."""
        lookup_key(task_id, "task_id")
        return await self.storage.read(
            lambda conn: self.repository.get(conn, task_id), what="get progress"
        )
