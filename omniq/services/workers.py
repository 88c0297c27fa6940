"""The worker registry: which worker processes run, and which stopped answering.

A worker registers at start (its row and its ``worker_started`` event in one
transaction), refreshes ``last_heartbeat`` in the transaction that renews its
leases, and unregisters at a clean stop (row deleted, ``worker_stopped``
event written). A worker whose heartbeat is older than the lease duration is
shown as lost; maintenance deletes rows silent for longer than
:data:`LOST_WORKER_RETENTION`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import timedelta
from typing import Any

import attrs
import sqlalchemy as sa

from omniq.models import WorkerInfo
from omniq.services._storage import Storage

__all__ = ["LOST_WORKER_RETENTION", "WorkerRegistry"]

#: A lost worker's row is kept this long after its last heartbeat, then pruned.
LOST_WORKER_RETENTION = timedelta(days=1)


class WorkerRegistry:
    """Register, unregister, list and prune worker processes."""

    def __init__(self, storage: Storage) -> None:
        self.storage = storage

    async def register_async(
        self, info: WorkerInfo, events: Sequence[Mapping[str, Any]] = ()
    ) -> None:
        """Insert (or replace) the row of ``info`` and write ``events``, in one transaction."""

        def body(conn: sa.Connection) -> None:
            self.storage.workers.register(conn, info)
            self.storage.events.insert_rows(conn, events)

        await self.storage.write(body, what="register worker")

    async def unregister_async(
        self, worker_id: str, events: Sequence[Mapping[str, Any]] = ()
    ) -> bool:
        """Delete the row of ``worker_id`` and write ``events``; True if it was registered."""

        def body(conn: sa.Connection) -> bool:
            self.storage.events.insert_rows(conn, events)
            return self.storage.workers.remove(conn, worker_id)

        return await self.storage.write(body, what="unregister worker")

    async def list_workers_async(self) -> list[WorkerInfo]:
        """Registered workers, oldest first; ``lost`` when silent longer than the lease."""
        workers = await self.storage.read(self.storage.workers.list, what="list workers")
        now = self.storage.now()
        bound = self.storage.settings.lease_duration
        return [attrs.evolve(x, lost=x.is_lost(now, bound)) for x in workers]

    async def prune_async(self, silent_for: timedelta = LOST_WORKER_RETENTION) -> int:
        """Delete the rows of workers silent for longer than ``silent_for``; how many."""
        before = self.storage.now() - silent_for
        return await self.storage.write(
            lambda conn: self.storage.workers.remove_silent_since(conn, before),
            what="prune workers",
        )
