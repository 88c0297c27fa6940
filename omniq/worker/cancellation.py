"""Cancelling a worker's running and prefetched tasks (a part of :class:`~omniq.worker.Worker`).

A cancel requested in the database reaches the worker as an in-process
notification, or from another process through the worker's read of its held
tasks' cancel requests (about every second, see ``BackgroundLoops``) or its
heartbeat: a running task's call is cancelled, a prefetched one is settled as
cancelled and never runs. A function that returned before the worker heard
ends cancelled all the same (the completion write honours the request).
At shutdown, sync calls still waiting for a pool thread are withdrawn.
"""

from __future__ import annotations

import asyncio
import threading

from omniq.worker.background import BackgroundLoops
from omniq.worker.outcomes import _Running


class Cancellation(BackgroundLoops):
    """Cancel requests and withdrawn calls (see the module docstring)."""

    _loop: asyncio.AbstractEventLoop | None
    _start_lock: threading.Lock

    async def _execute(self, entry: _Running) -> None:
        raise NotImplementedError

    def _on_cancel_requested(self, task_id: str) -> None:
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is loop:
            self._cancel_local(task_id)
        else:
            loop.call_soon_threadsafe(self._cancel_local, task_id)

    def _cancel_local(self, task_id: str) -> None:
        entry = self._running.get(task_id)
        if entry is None:
            # Claimed but not started (prefetched): settle it as cancelled, never run it.
            task = next((t for t in self._buffer if t.id == task_id), None)
            if task is None or self._loop is None:
                return
            self._buffer.remove(task)
            entry = self._running[task_id] = _Running(task=task, cancel_requested=True)
            entry.handle = self._loop.create_task(self._execute(entry))
            return
        if entry.cancel_requested:
            return
        entry.cancel_requested = True
        if entry.handle is not None and entry.in_call:
            entry.handle.cancel()

    def _withdraw_queued_calls(self) -> None:
        """Pool calls still waiting for a thread are prefetched work: release, never run them."""
        for entry in list(self._running.values()):
            if not (entry.pooled and entry.in_call and entry.handle is not None):
                continue
            with self._start_lock:
                if entry.started is not None:
                    continue  # running: it gets the grace period
                entry.releasing = True
            entry.handle.cancel()
