"""Result storage: what tasks returned, kept until their TTL passes."""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable, Collection
from datetime import datetime, timedelta
from typing import Any

import attrs
import sqlalchemy as sa

from omniq._time import require_aware, to_timedelta
from omniq.errors import SerializationError, TaskNotFound, ValidationError
from omniq.models import ResultStatus, Task, TaskResult
from omniq.models._fields import lookup_key
from omniq.refs import callable_ref
from omniq.services._shared import _check_batch, _check_page, _status_list
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
        await self.storage.write(
            lambda conn: self.storage.results.upsert_many(conn, [result]), what="store result"
        )
        self.storage.notifier.notify()

    async def get_async(self, task_id: str) -> TaskResult | None:
        """The result of ``task_id`` (None if none is stored or it expired)."""
        lookup_key(task_id, "task_id")
        result = await self.storage.read(
            lambda conn: self.storage.results.get(conn, task_id), what="get result"
        )
        return None if result is None or _expired(result, self.storage.now()) else result

    async def get_latest_async(self, schedule_id: str) -> TaskResult | None:
        """The newest unexpired result of the tasks created by ``schedule_id``."""
        lookup_key(schedule_id, "schedule_id")
        result = await self.storage.read(
            lambda conn: self.storage.results.latest_for_schedule(conn, schedule_id),
            what="get result",
        )
        return None if result is None or _expired(result, self.storage.now()) else result

    async def list_results_async(
        self,
        status: ResultStatus | str | Collection[ResultStatus | str] | None = None,
        func: Callable[..., Any] | str | None = None,
        task_name: str | None = None,
        schedule_id: str | None = None,
        start_time: datetime | None = None,
        end_time: datetime | None = None,
        limit: int = 100,
        offset: int = 0,
    ) -> list[TaskResult]:
        """Unexpired results, newest first: by status (one or several), the task's
        function (a function or its reference) or name, schedule, and a range of
        ``created_at`` (the time the outcome was stored); paginated."""
        lookup_key(schedule_id, "schedule_id")
        statuses = _status_list(status, ResultStatus)
        _check_page(limit, offset)
        since = None if start_time is None else require_aware(start_time, "start_time")
        until = None if end_time is None else require_aware(end_time, "end_time")
        ref = None if func is None else _func_ref(func)
        if task_name is not None and not isinstance(task_name, str):
            raise ValidationError("task_name", f"expected a string, got {task_name!r}")
        now = self.storage.now()
        return await self.storage.read(
            lambda conn: self.storage.results.query(
                conn,
                now=now,
                status=statuses,
                func=ref,
                task_name=task_name,
                schedule_id=schedule_id,
                since=since,
                until=until,
                limit=limit,
                offset=offset,
            ),
            what="list results",
        )

    async def get_results_async(self, *args: Any, **kwargs: Any) -> list[TaskResult]:
        """The seed's name of :meth:`list_results_async` (the same arguments)."""
        return await self.list_results_async(*args, **kwargs)

    async def update_async(self, task_id: str | TaskResult, **changes: Any) -> TaskResult:
        """Change fields of a stored result (status, result, error..., ttl).

        Given a :class:`TaskResult` record (the seed's ``update_async(result)``),
        that result is stored in place of the task's (see :meth:`store_async`).
        """
        if isinstance(task_id, TaskResult):
            if changes:
                raise ValidationError("changes", "give a TaskResult record or changes, not both")
            await self.store_async(task_id)
            return task_id
        if not isinstance(task_id, str):
            raise ValidationError(
                "task_id", f"expected a task id or a TaskResult, got {type(task_id).__name__}"
            )
        lookup_key(task_id, "task_id")
        unknown = set(changes) - _UPDATABLE
        if unknown:
            raise ValidationError(
                "changes", f"cannot update {sorted(unknown)}; allowed: {sorted(_UPDATABLE)}"
            )

        def body(conn: sa.Connection) -> TaskResult:
            current = self.storage.results.get(conn, task_id)
            if current is None:
                raise TaskNotFound(f"no result for task {task_id!r}")
            values = dict(changes)
            if "ttl" in values:
                values["ttl"] = (
                    None if values["ttl"] is None else to_timedelta(values["ttl"], "ttl")
                )
                if "expires_at" not in values:
                    ttl = values["ttl"]
                    values["expires_at"] = current.created_at + ttl if ttl is not None else None
            updated = attrs.evolve(current, **values)
            row = self.storage.results.to_row(updated)
            self.storage.results.update(conn, task_id, {k: row[k] for k in values})
            return updated

        return await self.storage.write(body, what="update result")

    async def delete_async(self, task_id: str) -> bool:
        """Delete the result of ``task_id``; True if one existed."""
        lookup_key(task_id, "task_id")
        return await self.storage.write(
            lambda conn: self.storage.results.delete(conn, task_id), what="delete result"
        )

    async def cleanup_expired_async(self, batch_size: int = _BATCH) -> int:
        """Delete expired results in batches (short transactions); return how many."""
        _check_batch(batch_size, "batch_size")
        total = 0
        while True:
            n = await self.storage.write(
                functools.partial(
                    self.storage.results.delete_expired,
                    now=self.storage.now(),
                    limit=batch_size,
                ),
                what="delete expired results",
            )
            total += n
            if n < batch_size:
                return total

    async def get_stats_async(self) -> dict[str, int]:
        """Result counts per status, and the total."""
        counts = await self.storage.read(self.storage.results.count_by_status, what="count results")
        return {**counts, "total": sum(counts.values())}

    async def wait_async(
        self, task_id: str, timeout: timedelta | float | None = None
    ) -> TaskResult | None:
        """Wait until ``task_id`` is final; return its result (None on timeout).

        A task that finished without a stored result (``store_result=False``)
        returns None at once. Unknown ids raise :class:`TaskNotFound`.
        """
        lookup_key(task_id, "task_id")
        limit = None if timeout is None else to_timedelta(timeout, "timeout").total_seconds()
        loop = asyncio.get_running_loop()
        deadline = None if limit is None else loop.time() + limit
        poll = 0.005
        notifier = self.storage.notifier
        while True:
            seen = notifier.generation  # a completion while we read wakes the wait below
            remaining = None if deadline is None else deadline - loop.time()
            try:
                # A server that stops answering does not hold the caller past its
                # timeout (each read still gets a moment: timeout=0 checks once).
                async with asyncio.timeout(None if remaining is None else max(remaining, 0.5)):
                    task, result = await self.storage.read(
                        self._task_and_result(task_id), what="wait"
                    )
            except TimeoutError:
                if deadline is not None and loop.time() >= deadline:
                    return None
                raise
            if result is not None:
                # An expired result is gone, as for get_async.
                return None if _expired(result, self.storage.now()) else result
            if task is None:
                raise TaskNotFound(f"no task with id {task_id!r}")
            if task.is_final:
                return None
            remaining = None if deadline is None else deadline - loop.time()
            if remaining is not None and remaining <= 0:
                return None
            await notifier.wait(poll if remaining is None else min(poll, remaining), seen)
            poll = min(poll * 2, 0.5)

    def _task_and_result(
        self, task_id: str
    ) -> Callable[[sa.Connection], tuple[Task | None, TaskResult | None]]:
        def body(conn: sa.Connection) -> tuple[Task | None, TaskResult | None]:
            # Task first: a final status is committed together with its result,
            # so a result read after it sees that result even where each
            # statement has its own snapshot (PostgreSQL READ COMMITTED).
            return self.storage.tasks.get(conn, task_id), self.storage.results.get(conn, task_id)

        return body


def _func_ref(func: Callable[..., Any] | str) -> str:
    try:
        return callable_ref(func)
    except SerializationError as exc:
        raise ValidationError("func", str(exc)) from None


def _expired(result: TaskResult, now: datetime) -> bool:
    # ``now`` is the clock the expiry was stamped with (the database's on PostgreSQL).
    return result.expires_at is not None and result.expires_at <= now
