"""Sweeps: TTL expiry, retention, quarantine of unreadable rows, orphaned waiting tasks.

Each sweep works in bounded batches, each its own short transaction.
"""

from __future__ import annotations

import asyncio
from datetime import datetime, timedelta

import sqlalchemy as sa

from omniq.db.schema import tasks as t
from omniq.models import EventLevel, EventType, TaskStatus
from omniq.repositories.events import event_row
from omniq.repositories.task_sweeps import final_before
from omniq.services._shared import (
    _EXPIRY_SWEEP_EVERY,
    _QUEUED,
    _SWEEP_BATCH,
    _check_batch,
    _finish_values,
)
from omniq.services.building import TaskBuilder
from omniq.services.dependencies import finalize, settle_orphans

__all__ = ["Sweeps"]

_EXPIRED = TaskStatus.EXPIRED


class Sweeps(TaskBuilder):
    """Expire, purge, quarantine and settle, in batches."""

    _last_sweep = 0.0

    async def expire_due_async(self, limit: int = _SWEEP_BATCH) -> int:
        """Expire queued tasks whose TTL passed (with events); return how many."""
        _check_batch(limit, "limit")
        now = self.storage.now()
        n = await self.storage.write(lambda conn: self._expire(conn, now, limit), what="expire")
        if n:
            self.storage.notifier.notify()
        return n

    async def purge_finished_async(
        self, older_than: timedelta | None = None, batch_size: int = _SWEEP_BATCH
    ) -> int:
        """Delete finished tasks completed longer ago than the retention (in batches)."""
        _check_batch(batch_size, "batch_size")
        retention = older_than if older_than is not None else self.settings.finished_task_retention
        if retention is None:
            return 0
        cutoff = self.storage.now() - retention
        total = 0

        def body(conn: sa.Connection) -> list[str]:
            ids = self.storage.tasks.delete_where(conn, final_before(cutoff), batch_size)
            # A workflow goes with its last task (its members' results with it).
            self.storage.workflows.delete_gone(conn, ids)
            return ids

        while True:
            ids = await self.storage.write(body, what="purge tasks")
            total += len(ids)
            if len(ids) < batch_size:
                return total

    async def quarantine_unknown_statuses_async(self, limit: int = _SWEEP_BATCH) -> int:
        """Fail tasks whose stored status is unknown (hand-written rows), with events."""
        _check_batch(limit, "limit")
        now = self.storage.now()

        def body(conn: sa.Connection) -> int:
            failed = self.storage.tasks.fail_unknown_statuses(conn, now, limit)
            self.storage.events.insert_rows(
                conn,
                [
                    event_row(
                        EventType.FAILED,
                        task_id=task_id,
                        queue_name=queue,
                        timestamp=now,
                        level=EventLevel.ERROR,
                        message=f"quarantined: unknown status {old!r}",
                        error=f"InvalidRow: unknown status {old!r}",
                    )
                    for task_id, old, queue in failed
                ],
            )
            return len(failed)

        return await self.storage.write(body, what="quarantine tasks")

    async def settle_orphans_async(self, limit: int = _SWEEP_BATCH) -> int:
        """Settle waiting tasks whose dependencies are gone or ended badly; return how many.

        A dependency that failed, was cancelled or expired cancels its waiting
        dependents; a waiting task whose remaining dependencies all completed
        (or were deleted or purged) becomes pending.
        """
        _check_batch(limit, "limit")
        now = self.storage.now()
        n = await self.storage.write(
            lambda conn: settle_orphans(conn, self.storage, now, limit), what="settle waiting tasks"
        )
        if n:
            self.storage.notifier.notify()
        return n

    def _expire(self, conn: sa.Connection, now: datetime, limit: int) -> int:
        expired = self.storage.tasks.transition_many(
            conn,
            where=sa.and_(t.c.expires_at <= now, t.c.status.in_([s.value for s in _QUEUED])),
            values={**_finish_values(_EXPIRED, now), "last_error": "TTL expired"},
            limit=limit,
        )
        if expired:
            finalize(conn, self.storage, expired, _EXPIRED, now)
        return len(expired)

    def _expiry_due(self) -> bool:
        """True (once a second) when a claim should also expire TTL-passed tasks."""
        clock = asyncio.get_running_loop().time()
        if clock - self._last_sweep >= _EXPIRY_SWEEP_EVERY:
            self._last_sweep = clock
            return True
        return False
