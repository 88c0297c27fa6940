"""Stopping a worker (a part of :class:`~omniq.worker.Worker`).

``stop_async`` (or a signal) stops the claims; the prefetched tasks go back
to pending unspent; running tasks get the grace period, then are released
(all but a sync function still running in its thread, which cannot be stopped:
its task stays running under its lease, for recovery once that expires);
heartbeats go on until every running task is settled, so their leases hold
meanwhile; then the worker's registry row, maintenance lease and executor
are let go.
"""

from __future__ import annotations

import asyncio
import contextlib
from datetime import timedelta
from typing import Any

from omniq._time import to_timedelta
from omniq.models import Task
from omniq.services.maintenance import Maintenance
from omniq.worker.cancellation import Cancellation
from omniq.worker.executors import Executor
from omniq.worker.outcomes import _Running, log
from omniq.worker.progress import ProgressReporter

#: The longest one write of the shutdown is waited for (seconds).
SHUTDOWN_STEP = 10.0
#: ... once a write of this shutdown went unanswered: the server is not answering,
#: so the next writes are tried briefly, not waited for 10 s each (seconds).
AFTER_NO_ANSWER = 2.0


class Stopping(Cancellation):
    """Stop requests and the shutdown sequence (see the module docstring)."""

    grace_period: float
    run_maintenance: bool
    maintenance: Maintenance
    executor: Executor
    _progress: ProgressReporter
    _stopping: bool
    _stop_reason: str
    _main: asyncio.Task[None] | None
    _background: list[asyncio.Task[None]]
    _winding_down: asyncio.Event
    _buffer: list[Task]
    _superseded: set[_Running]
    #: A write of this shutdown got no answer in time (see ``_step``).
    _no_answer: bool = False

    async def stop_async(self, grace_period: timedelta | float | None = None) -> None:
        """Stop claiming; let running tasks finish within the grace period, release the rest.

        Cancelling this call does not cut the shutdown short: it goes on in
        the worker's own task (prefetched tasks released, the registry row
        removed) while the caller gets its ``CancelledError``; calling
        ``stop_async`` again waits for the same shutdown.
        """
        if grace_period is not None:
            self.grace_period = to_timedelta(grace_period, "grace_period").total_seconds()
        self._request_stop()
        main = self._main
        if main is None:
            return
        try:
            await asyncio.shield(main)
        except asyncio.CancelledError:
            current = asyncio.current_task()
            if not main.done() or (current is not None and current.cancelling()):
                raise  # this caller was cancelled; the shutdown goes on
            # The worker's own task was cancelled elsewhere: it has stopped.

    def _request_stop(self, reason: str = "stop requested") -> None:
        if not self._stopping:
            self._stop_reason = reason
        self._stopping = True
        self.storage.notifier.notify()

    async def _shutdown(self) -> None:
        # Background loops finish the write they are in (a cancelled write would
        # leave the connection inside its transaction); heartbeats go on until the
        # running tasks are settled, so their leases hold through the grace period
        # (and cancels requested meanwhile are still looked for).
        heartbeat, cancel_watch, *others = self._background
        self._withdraw_queued_calls()
        self._winding_down.set()
        self._no_answer = not await _finish(others, SHUTDOWN_STEP)
        buffered, self._buffer = self._buffer, []
        if buffered:
            await self._step(
                self._in_turn(self.queue.release_many_async(buffered, worker_id=self.worker_id))
            )
        # The running tasks, and earlier attempts whose outcome write is still
        # retried while their task's retry runs (superseded).
        entries = [*self._running.values(), *self._superseded]
        handles = [e.handle for e in entries if e.handle is not None]
        if handles:
            _, pending = await asyncio.wait(handles, timeout=self.grace_period)
            # Past the grace period, outcome writes that keep failing stop retrying.
            self._abandon_writes = True
            for entry in entries:
                if entry.handle in pending:
                    entry.releasing = True
                    if entry.in_call:
                        entry.handle.cancel()
            if pending:
                # Bounded: a write that hangs (not fails) must not hold shutdown; its
                # transaction is shielded and finishes or rolls back on its own.
                _, stuck = await asyncio.wait(pending, timeout=self._step_limit(self.grace_period))
                for handle in stuck:
                    handle.cancel()
                if stuck:
                    await asyncio.wait(stuck, timeout=5.0)
        self._tasks_settled.set()
        if not await _finish([heartbeat, cancel_watch], self._step_limit()):
            self._no_answer = True
        self._background = []
        if self._pending_events or self._started_events:
            await self._step(self.queue.heartbeat_async({}, self._take_events()))
        await self._progress.close()
        if self.run_maintenance:
            await self._step(self.maintenance.release_async())
        self.storage.notifier.cancel_listeners.discard(self._on_cancel_requested)
        await self._step(self._unregister())
        self.executor.shutdown()

    async def _step(self, awaitable: Any) -> Any:
        """A write of the shutdown, its error reported (see ``_guard``), given
        ``SHUTDOWN_STEP`` seconds: a server that does not answer must not hold the
        exit for server_timeout per step (its transaction is shielded and ends on
        its own; what it would have let go expires and is recovered)."""
        limit = self._step_limit()
        try:
            async with asyncio.timeout(limit):
                return await self._guard(awaitable)
        except TimeoutError:
            self._no_answer = True
            log.warning("stopping: a write got no answer within %.0f s; going on without it", limit)
            return None

    def _step_limit(self, at_least: float = 0.0) -> float:
        """How long the next write of the shutdown is waited for: ``SHUTDOWN_STEP``
        (or ``at_least``), ``AFTER_NO_ANSWER`` once one went unanswered."""
        return AFTER_NO_ANSWER if self._no_answer else max(SHUTDOWN_STEP, at_least)


async def _finish(jobs: list[asyncio.Task[None]], limit: float) -> bool:
    """Let background loops end the write they are in, for ``limit`` seconds at most
    (a write is shielded: cut off, it still commits or rolls back whole); False if
    some did not end in time."""
    if not jobs:
        return True
    _, late = await asyncio.wait(jobs, timeout=limit)
    for job in late:
        job.cancel()
    for job in jobs:
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await job
    return not late
