"""Maintenance: lease recovery, TTL expiry, retention, WAL checkpoint.

Run by workers; a named lease in ``omniq_locks`` makes sure one worker at a
time per database does it. Every sweep works in bounded batches, each its
own short transaction. A database whose queue ``omniq migrate-db`` moved
elsewhere is left as it is (no sweep changes what was copied).
"""

from __future__ import annotations

import logging
from datetime import timedelta

import attrs

from omniq.repositories.db_migration import COPYING, SOURCE, TARGET, read_mark
from omniq.services._storage import Storage
from omniq.services.events import EventStorage
from omniq.services.queue import TaskQueue
from omniq.services.results import ResultStorage
from omniq.services.workers import WorkerRegistry

log = logging.getLogger("omniq.maintenance")

LOCK_NAME = "maintenance"

__all__ = ["Maintenance", "MaintenanceReport"]


@attrs.frozen(kw_only=True)
class MaintenanceReport:
    """What one maintenance run did."""

    recovered: int = 0
    expired: int = 0
    quarantined: int = 0
    #: Waiting tasks settled because a dependency was gone or ended badly.
    settled: int = 0
    results_deleted: int = 0
    events_deleted: int = 0
    tasks_purged: int = 0
    #: Registry rows of workers silent for longer than LOST_WORKER_RETENTION.
    workers_pruned: int = 0
    #: Flow control rows of keys no live task carries (idle for LIMIT_RETENTION).
    limits_pruned: int = 0
    checkpointed: bool = False


class Maintenance:
    """One maintenance pass, under the database-wide maintenance lease."""

    def __init__(
        self,
        storage: Storage,
        queue: TaskQueue,
        results: ResultStorage,
        events: EventStorage,
        *,
        owner: str,
        lease: timedelta = timedelta(seconds=60),
    ) -> None:
        self.storage = storage
        self.queue = queue
        self.results = results
        self.events = events
        self.owner = owner
        self.lease = lease
        self._warned = False

    async def _migrated_away(self) -> bool:
        """True when this database was migrated away (flagged), or receives a copy that
        has not finished (a sweep there would change rows the copy still counts, e.g.
        release a waiting task whose dependency edges are on their way): nothing is swept."""
        mark, arriving = await self.storage.read(
            lambda c: (read_mark(c, SOURCE), read_mark(c, TARGET)), what="read the flag"
        )
        if mark is not None and not self._warned:
            self._warned = True
            log.warning(
                "this database was migrated to %s by omniq migrate-db: nothing is claimed "
                "or swept here; point the workers at the new database",
                mark.peer,
            )
        return mark is not None or (arriving is not None and arriving.state == COPYING)

    async def acquire_async(self) -> bool:
        """Take (or renew) the maintenance lease; False if another worker holds it."""
        now = self.storage.now()
        return await self.storage.write(
            lambda conn: self.storage.locks.acquire(
                conn, LOCK_NAME, self.owner, now, now + self.lease
            ),
            what="acquire maintenance lease",
        )

    async def release_async(self) -> None:
        """Give the maintenance lease up (on shutdown)."""
        await self.storage.write(
            lambda conn: self.storage.locks.release(conn, LOCK_NAME, self.owner),
            what="release maintenance lease",
        )

    async def recover_async(self) -> MaintenanceReport:
        """The sweeps every worker may run at once (each change is conditional).

        Lease recovery, TTL expiry and quarantine need no lease: a worker that
        does not hold the maintenance lease still runs them, so the crash of the
        lease holder never delays the recovery of lost tasks.
        """
        if await self._migrated_away():
            return MaintenanceReport()
        return MaintenanceReport(
            recovered=await self.queue.recover_expired_leases_async(),
            expired=await self.queue.expire_due_async(),
            quarantined=await self.queue.quarantine_unknown_statuses_async(),
            settled=await self.queue.settle_orphans_async(),
        )

    async def run_once_async(self) -> MaintenanceReport | None:
        """Run every sweep once if this worker holds the lease; None if another does."""
        if not await self.acquire_async():
            return None
        return await self.sweep_all_async()

    async def sweep_all_async(self) -> MaintenanceReport:
        """Run every sweep once, now (the caller decides who sweeps)."""
        if await self._migrated_away():
            return MaintenanceReport()
        recovered = await self.recover_async()
        report = attrs.evolve(
            recovered,
            results_deleted=await self.results.cleanup_expired_async(),
            events_deleted=await self.events.cleanup_expired_async(),
            tasks_purged=await self.queue.purge_finished_async(),
            workers_pruned=await WorkerRegistry(self.storage).prune_async(),
            limits_pruned=await self.queue.prune_limits_async(),
            checkpointed=await self._checkpoint(),
        )
        if any(attrs.astuple(report)[:9]):
            log.info("maintenance: %s", report)
        return report

    async def _checkpoint(self) -> bool:
        """Checkpoint the SQLite WAL so it does not grow without bound."""
        if self.storage.dialect.name != "sqlite":
            return False
        return await self.storage.checkpoint()
