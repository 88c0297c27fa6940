"""Result storage: what tasks returned, kept until their TTL passes."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import Any

import attrs

from omniq._time import to_timedelta, utcnow
from omniq.errors import TaskNotFound, ValidationError
from omniq.models import TaskResult
from omniq.services._storage import Storage

__all__ = ["ResultStorage"]

_BATCH = 1000
_UPDATABLE = frozenset(
    {"status", "result", "error", "error_type", "error_traceback", "ttl", "expires_at"}
)


class ResultStorage:
    """Store, fetch, wait for and expire task results."""

    def __init__(self, storage: Storage) -> None:
        self.storage = storage

    async def store_async(self, result: TaskResult) -> None:
        """Store ``result`` (replacing any earlier result of the same task)."""
        if not isinstance(result, TaskResult):
            raise ValidationError("result", f"expected a TaskResult, got {type(result).__name__}")
        self.storage.results.to_row(result)
        async with self.storage.write() as conn:
            await self.storage.results.upsert_many(conn, [result])
        self.storage.notifier.notify()

    async def get_async(self, task_id: str) -> TaskResult | None:
        """The result of ``task_id`` (None if none is stored or it expired)."""
        async with self.storage.read() as conn:
            result = await self.storage.results.get(conn, task_id)
        return None if result is None or _expired(result) else result

    async def get_latest_async(self, schedule_id: str) -> TaskResult | None:
        """The newest unexpired result of the tasks created by ``schedule_id``."""
        async with self.storage.read() as conn:
            result = await self.storage.results.latest_for_schedule(conn, schedule_id)
        return None if result is None or _expired(result) else result

    async def update_async(self, task_id: str, **changes: Any) -> TaskResult:
        """Change fields of a stored result (status, result, error..., ttl)."""
        unknown = set(changes) - _UPDATABLE
        if unknown:
            raise ValidationError(
                "changes", f"cannot update {sorted(unknown)}; allowed: {sorted(_UPDATABLE)}"
            )
        async with self.storage.write() as conn:
            current = await self.storage.results.get(conn, task_id)
            if current is None:
                raise TaskNotFound(f"no result for task {task_id!r}")
            if "ttl" in changes:
                changes["ttl"] = (
                    None if changes["ttl"] is None else to_timedelta(changes["ttl"], "ttl")
                )
                if "expires_at" not in changes:
                    ttl = changes["ttl"]
                    changes["expires_at"] = current.created_at + ttl if ttl is not None else None
            updated = attrs.evolve(current, **changes)
            row = self.storage.results.to_row(updated)
            await self.storage.results.update(conn, task_id, {k: row[k] for k in changes})
        return updated

    async def delete_async(self, task_id: str) -> bool:
        """Delete the result of ``task_id``; True if one existed."""
        async with self.storage.write() as conn:
            return await self.storage.results.delete(conn, task_id)

    async def cleanup_expired_async(self, batch_size: int = _BATCH) -> int:
        """Delete expired results in batches (short transactions); return how many."""
        total = 0
        while True:
            async with self.storage.write() as conn:
                n = await self.storage.results.delete_expired(conn, utcnow(), batch_size)
            total += n
            if n < batch_size:
                return total

    async def get_stats_async(self) -> dict[str, int]:
        """Result counts per status, and the total."""
        async with self.storage.read() as conn:
            counts = await self.storage.results.count_by_status(conn)
        return {**counts, "total": sum(counts.values())}

    async def wait_async(
        self, task_id: str, timeout: timedelta | float | None = None
    ) -> TaskResult | None:
        """Wait until ``task_id`` is final; return its result (None on timeout).

        A task that finished without a stored result (``store_result=False``)
        returns None at once. Unknown ids raise :class:`TaskNotFound`.
        """
        limit = None if timeout is None else to_timedelta(timeout, "timeout").total_seconds()
        loop = asyncio.get_running_loop()
        deadline = None if limit is None else loop.time() + limit
        poll = 0.005
        while True:
            async with self.storage.read() as conn:
                # Task first: a final status is committed together with its result,
                # so a result read after it sees that result even where each
                # statement has its own snapshot (PostgreSQL READ COMMITTED).
                task = await self.storage.tasks.get(conn, task_id)
                result = await self.storage.results.get(conn, task_id)
            if result is not None:
                return result
            if task is None:
                raise TaskNotFound(f"no task with id {task_id!r}")
            if task.is_final:
                return None
            remaining = None if deadline is None else deadline - loop.time()
            if remaining is not None and remaining <= 0:
                return None
            await self.storage.notifier.wait(poll if remaining is None else min(poll, remaining))
            poll = min(poll * 2, 0.5)


def _expired(result: TaskResult) -> bool:
    return result.expires_at is not None and result.expires_at <= utcnow()
