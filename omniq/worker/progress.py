"""Progress reported by running tasks, coalesced and written a few times per second.

``progress()`` may be called from the event loop, from pool threads and (via
the executor's pipe) from child processes, as often as a task likes: each
report replaces the task's pending value (the last one wins), and one
flusher on the worker's loop writes every pending value in one transaction
at most every :data:`FLUSH_INTERVAL` seconds. When a function returns, the
worker writes its last pending report before the task's outcome, so the
final value is stored; a task killed mid-way keeps its last written value.
Progress is best effort: a failed write is logged and the next report (or
the final flush) writes again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from typing import Any

from omniq.models import Task
from omniq.services._storage import Storage
from omniq.services.progress import ProgressStorage
from omniq.task_context import CurrentTask

log = logging.getLogger("omniq.worker")

__all__ = ["FLUSH_INTERVAL", "ProgressReporter"]

#: At most one progress write per this many seconds (per worker, so per task too).
FLUSH_INTERVAL = 0.25


class ProgressReporter:
    """Coalesces the progress of a worker's tasks and writes it (see the module docstring)."""

    def __init__(self, storage: Storage, interval: float = FLUSH_INTERVAL) -> None:
        self.storage = storage
        self.progress = ProgressStorage(storage)
        self.interval = interval
        #: Progress transactions written (a worker-level counter).
        self.writes = 0
        self._pending: dict[str, dict[str, Any]] = {}
        self._lock = threading.Lock()
        self._scheduled = False
        self._last_write = float("-inf")
        self._loop: asyncio.AbstractEventLoop | None = None
        self._write_lock: asyncio.Lock | None = None
        self._flusher: asyncio.Task[None] | None = None

    def current(self, task: Task, attempt: int) -> CurrentTask:
        """The :class:`CurrentTask` of ``task`` (called on the worker's loop)."""
        if self._loop is None:
            self._loop = asyncio.get_running_loop()
            self._write_lock = asyncio.Lock()
        task_id, lease = task.id, task.lease_token

        def sink(done: float, total: float | None, message: str | None) -> None:
            self._report(task_id, lease, attempt, done, total, message)

        return CurrentTask(
            id=task_id, attempt=attempt, queue=task.queue_name, function=task.func, sink=sink
        )

    def _report(
        self,
        task_id: str,
        lease: str | None,
        attempt: int,
        done: float,
        total: float | None,
        message: str | None,
    ) -> None:
        """Keep a (checked) report as the task's pending value; any thread."""
        row = {
            "task_id": task_id,
            "lease_token": lease,
            "attempt": attempt,
            "done": done,
            "total": total,
            "message": message,
            "updated_at": self.storage.now(),
        }
        with self._lock:
            self._pending[task_id] = row
            if self._scheduled:
                return
            self._scheduled = True
        loop = self._loop
        try:
            if loop is None:
                raise RuntimeError("the worker has stopped")
            loop.call_soon_threadsafe(self._start_flusher)
        except RuntimeError:  # the worker stopped (its loop closed): nothing writes it
            with self._lock:
                self._scheduled = False

    def _start_flusher(self) -> None:
        assert self._loop is not None
        self._flusher = self._loop.create_task(self._flush_later())

    def has_pending(self, task_id: str) -> bool:
        """True when ``task_id`` reported progress that is not written yet."""
        return task_id in self._pending

    async def _flush_later(self) -> None:
        delay = self._last_write + self.interval - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        assert self._write_lock is not None
        async with self._write_lock:
            with self._lock:
                rows, self._pending = self._pending, {}
                self._scheduled = False
            await self._write(list(rows.values()))

    async def flush_task(self, task_id: str) -> None:
        """Write ``task_id``'s pending report now (its function returned)."""
        if self._write_lock is None:
            return
        async with self._write_lock:
            with self._lock:
                row = self._pending.pop(task_id, None)
                idle = not self._pending
                if idle:
                    self._scheduled = False
            flusher = self._flusher
            if idle and flusher is not None and not flusher.done():
                # Nothing left for it (it waits for its turn or its interval); a
                # report from now on starts a new one. No await since the check.
                flusher.cancel()
            if row is not None:
                await self._write([row])

    async def _write(self, rows: list[dict[str, Any]]) -> None:
        if not rows:
            return
        self._last_write = time.monotonic()
        try:
            await self.progress.write_async(rows)
        except Exception as exc:
            log.warning("could not write the progress of %d task(s): %s", len(rows), exc)
        else:
            self.writes += 1

    async def close(self) -> None:
        """Write what is pending and stop (the worker is stopping)."""
        flusher, self._flusher = self._flusher, None
        if flusher is not None and not flusher.done():
            flusher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await flusher
        if self._write_lock is None:
            return
        async with self._write_lock:
            with self._lock:
                rows, self._pending = self._pending, {}
                self._scheduled = False
            await self._write(list(rows.values()))
        self._loop = self._write_lock = None
