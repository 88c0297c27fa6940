"""The worker's background loops: heartbeats (leases, cancel requests), scheduler, maintenance.

Every loop survives every error: it reports it, waits its interval and
tries again, so a database outage pauses the loops and never ends them.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
from datetime import datetime
from typing import Any

from omniq._version import VERSION
from omniq.errors import DatabaseError
from omniq.models import EventType, Settings, Task, WorkerInfo
from omniq.services import event_row
from omniq.services._storage import Storage
from omniq.services.maintenance import Maintenance
from omniq.services.scheduler import Scheduler
from omniq.services.workers import WorkerRegistry
from omniq.worker.outcomes import OutcomeWriting, _Running, log

__all__ = ["BackgroundLoops", "TaskTimeout"]

#: Seconds between a busy worker's reads of its tasks' cancel requests.
_CANCEL_CHECK_EVERY = 1.0


#: After a failed heartbeat, the next try comes this soon (seconds; at most the interval);
#: a heartbeat without a reply this long (or an interval, if longer) has the leases
#: renewed alone meanwhile.
_RENEW_AGAIN = 1.0


class BackgroundLoops(OutcomeWriting):
    """Heartbeat, scheduler and maintenance loops of a worker (a part of :class:`Worker`)."""

    settings: Settings
    scheduler: Scheduler
    maintenance: Maintenance
    scheduler_interval: float
    maintenance_interval: float
    _running: dict[str, _Running]
    _buffer: list[Task]
    _tasks_settled: asyncio.Event
    _winding_down: asyncio.Event
    storage: Storage
    worker_registry: WorkerRegistry
    _registered_at: datetime | None

    # --- the worker registry ----------------------------------------------------------

    def _worker_info(self) -> WorkerInfo | None:
        """This worker's registry row (None until it started)."""
        if self._registered_at is None:
            return None
        return WorkerInfo(
            id=self.worker_id,
            host=socket.gethostname(),
            pid=os.getpid(),
            queues=tuple(self.queues) if self.queues else None,
            concurrency=self.concurrency,
            executor=self.executor.kind,
            version=VERSION,
            started_at=self._registered_at,
            last_heartbeat=self.storage.now(),
        )

    async def _register(self, **data: Any) -> None:
        """Register this worker and write its ``worker_started`` event (one transaction)."""
        self._registered_at = self.storage.now()
        info = self._worker_info()
        assert info is not None
        row = self._worker_event(EventType.WORKER_STARTED, **data)
        try:
            await self.worker_registry.register_async(info, [row])
        except Exception as exc:
            # The next heartbeat writes the row; the worker runs on regardless.
            log.error("could not register worker %s: %s", self.worker_id, exc)

    async def _unregister(self) -> None:
        """Remove this worker's row and write its ``worker_stopped`` event."""
        row = self._worker_event(EventType.WORKER_STOPPED)
        try:
            await self.worker_registry.unregister_async(self.worker_id, [row])
        except Exception as exc:
            log.error("could not unregister worker %s: %s", self.worker_id, exc)
        self._registered_at = None

    def _worker_event(self, kind: EventType, **data: Any) -> dict[str, Any]:
        return event_row(
            kind,
            worker_id=self.worker_id,
            source="worker",
            data={
                "queues": self.queues,
                "concurrency": self.concurrency,
                "executor": self.executor.kind,
                **data,
                **self._counts,
            },
        )

    # --- heartbeats -------------------------------------------------------------------

    def _cancel_local(self, task_id: str) -> None:
        """Stop ``task_id`` here because its cancellation was requested (see Worker)."""
        raise NotImplementedError

    async def _heartbeat_loop(self) -> None:
        interval = self.settings.heartbeat_interval.total_seconds()
        wait = interval
        while not await _wait(self._tasks_settled, wait):
            # A failed renewal is tried again soon, not a whole interval later:
            # the lease outlives a few of them, not the wait for the next.
            wait = interval if await self._heartbeat() else min(interval, _RENEW_AGAIN)

    def _leases(self) -> dict[str, str]:
        """``{task_id: lease_token}`` of the tasks held here (running or queued ahead)."""
        leases = {
            task_id: entry.task.lease_token
            for task_id, entry in self._running.items()
            if entry.task.lease_token is not None
        }
        leases.update({t.id: t.lease_token for t in self._buffer if t.lease_token is not None})
        return leases

    async def _heartbeat(self) -> bool:
        """Renew the leases held here; False if the renewal failed (reported)."""
        leases = self._leases()
        events, starts = self._take_buffered()
        patience = max(self.settings.heartbeat_interval.total_seconds(), _RENEW_AGAIN)
        # A renewal of its own may take up to half the lease: on a slow link one that
        # takes a little longer than the interval still lands (cut off at the
        # interval, every try failed and the leases ran out under a live worker).
        renew_limit = max(patience, self.settings.lease_duration.total_seconds() / 2)
        call = asyncio.ensure_future(
            self._in_turn(
                self.queue.heartbeat_async(leases, events, starts, worker=self._worker_info())
            )
        )
        try:
            while not (await asyncio.wait({call}, timeout=patience))[0]:
                # No reply after an interval (a server or link that stopped
                # answering: the call waits up to server_timeout, by default as
                # long as the lease). Its events stay with it, to land once or
                # not at all; the leases alone are renewed on another connection
                # meanwhile, each try bounded, so a blip costs no lease (those of
                # tasks claimed since this heartbeat began too).
                await self._renew_only(self._leases(), renew_limit)
            held = call.result()
        except Exception as exc:
            self._restore(events, starts)
            await self._report_error("heartbeat failed", exc)
            return False
        for task_id, token in leases.items():
            if task_id not in held:
                self._lose(task_id, token)
            elif held[task_id]:
                self._cancel_local(task_id)
        return True

    async def _renew_only(self, leases: dict[str, str], limit: float) -> None:
        """Renew ``leases`` (nothing else), waiting ``limit`` seconds at most; a failure
        is logged and left to the next try (the renewal is fenced by each lease).

        It runs beside this worker's own writes (the heartbeat waits behind them), so
        it skips the rows one of them is writing: on PostgreSQL the two would lock
        the same rows in different orders and deadlock (a row being written is
        finished or released by that write, or renewed by the next heartbeat).
        """
        try:
            async with asyncio.timeout(limit):
                await self.queue.heartbeat_async(leases, (), (), skip_locked=True)
        except Exception as exc:
            log.warning("renewing leases alone failed (tried again): %r", exc)

    async def _cancel_watch_loop(self) -> None:
        """Between heartbeats, look for cancels requested from other processes (or
        machines) every ``_CANCEL_CHECK_EVERY`` seconds while tasks are held: one
        read, so a cancelled task stops soon and a prefetched one never starts."""
        while not await _wait(self._tasks_settled, _CANCEL_CHECK_EVERY):
            await self._check_cancels()

    async def _check_cancels(self) -> None:
        ids = [
            task_id
            for task_id, entry in self._running.items()
            if not (entry.cancel_requested or entry.lost or entry.releasing)
        ]
        ids.extend(task.id for task in self._buffer)
        if not ids:
            return
        try:
            requested = await self.queue.cancels_requested_async(ids)
        except (DatabaseError, OSError) as exc:
            # An outage: the heartbeat reports it; cancels are looked for again soon.
            log.debug("checking for cancel requests failed: %s", exc)
            return
        except Exception as exc:
            await self._report_error("checking for cancel requests failed", exc)
            return
        for task_id in requested:
            self._cancel_local(task_id)

    def _lose(self, task_id: str, token: str) -> None:
        """The lease ``token`` of ``task_id`` is no longer held: stop what runs under it.

        Only under that lease: the leases were read before the heartbeat waited its
        turn, and meanwhile the task may have failed and been claimed here again
        under a new lease (its retry), which is not lost.
        """
        self._buffer = [t for t in self._buffer if not (t.id == task_id and t.lease_token == token)]
        entry = self._running.get(task_id)
        if entry is not None and entry.task.lease_token == token and not entry.lost:
            log.warning("task %s: lease lost; stopping it and discarding its outcome", task_id)
            entry.lost = True
            if entry.handle is not None and entry.in_call:
                entry.handle.cancel()

    # --- scheduler and maintenance -------------------------------------------------------

    async def _scheduler_loop(self) -> None:
        while True:
            await self._fire_schedules()
            if await _wait(self._winding_down, self.scheduler_interval):
                return

    async def _fire_schedules(self) -> None:
        try:
            await self.scheduler.fire_due_async()
        except Exception as exc:
            await self._report_error("scheduler failed", exc)

    async def _maintenance_loop(self) -> None:
        while True:
            try:
                if await self.maintenance.run_once_async() is None:
                    await self.maintenance.recover_async()
            except Exception as exc:
                await self._report_error("maintenance failed", exc)
            if await _wait(self._winding_down, self.maintenance_interval):
                return


async def _wait(event: asyncio.Event, seconds: float) -> bool:
    """Wait up to ``seconds`` for ``event``; True if it is set."""
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(event.wait(), seconds)
    return event.is_set()


class TaskTimeout(TimeoutError):
    """The task ran longer than its timeout."""
