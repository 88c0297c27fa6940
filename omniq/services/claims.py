"""Claims: atomically take ready tasks under a new lease, hold it (start marks,
heartbeats), and give unwanted tasks back.

Claims are one atomic statement; every later transition is conditional on
the status and the claimer's lease token (a worker that lost its lease
changes nothing). Each is one transaction with its events.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Collection, Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any

import attrs
import sqlalchemy as sa

from omniq._time import new_id, to_timedelta
from omniq.db.schema import tasks as t
from omniq.db.writer import TooBigInline, running_inline
from omniq.errors import ValidationError
from omniq.models import (
    EventLevel,
    EventType,
    ResultStatus,
    Task,
    TaskResult,
    TaskStatus,
    WorkerInfo,
)
from omniq.models.rules import queue_names
from omniq.repositories.events import event_row
from omniq.services._shared import (
    _NO_LEASE,
    _RUNNING,
    _SWEEP_BATCH,
    _dequeued_events,
    _event,
    _finish_values,
    log,
)
from omniq.services.dependencies import cancel_dependents
from omniq.services.flow import FlowControl

__all__ = ["SMALL_CLAIM", "Claims", "Start"]

#: Claims of up to this many tasks are "small" writes: on SQLite they may run on
#: the caller's thread when the writer is idle (see ``Storage.write``).
SMALL_CLAIM = 32

#: Unreadable rows one claim transaction quarantines at most; a claim that meets
#: more goes on in another transaction.
_QUARANTINED_PER_TRANSACTION = 256

#: What a claim transaction returns: the tasks, and whether to go on in another.
_Claimed = tuple[list[Task], bool]

#: A task's function started: ``(task_id, lease_token, started_at)``.
Start = tuple[str, str | None, datetime]


class Claims(FlowControl):
    """Claims of ready tasks by workers (and by hand)."""

    async def dequeue_async(
        self,
        queues: Sequence[str] | None = None,
        timeout: timedelta | float | None = None,
        *,
        worker_id: str | None = None,
    ) -> Task | None:
        """Claim the next ready task (waiting up to ``timeout`` for one); None if none."""
        claimed = await self.dequeue_many_async(1, queues, timeout, worker_id=worker_id)
        return claimed[0] if claimed else None

    async def dequeue_many_async(
        self,
        n: int,
        queues: Sequence[str] | None = None,
        timeout: timedelta | float | None = None,
        *,
        worker_id: str | None = None,
        start: bool = True,
    ) -> list[Task]:
        """Atomically claim up to ``n`` ready tasks under a lease.

        Queues listed first come first, then higher priority, earlier run_at,
        FIFO. With ``timeout``, waits (woken by in-process enqueues, else
        polling) until a task is ready or the timeout passes. The tasks are
        marked started (``attempts`` + 1) unless ``start=False``: a worker that
        holds tasks before running them marks each when it starts
        (:meth:`mark_started_async`, or with its next transition). A caller
        cancelled during the claim gets ``CancelledError`` and the tasks that
        were claimed for it go back to pending, unspent.
        """
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ValidationError("n", f"must be a positive integer, got {n!r}")
        wait = to_timedelta(timeout, "timeout").total_seconds() if timeout is not None else 0.0
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait
        poll = 0.01
        queue_list = queue_names(queues) or self.queues
        notifier = self.storage.notifier
        while True:
            seen = notifier.generation  # an enqueue while we claim wakes the wait below
            claimed = await self._claim(n, queue_list, worker_id, start)
            remaining = deadline - loop.time()
            if claimed or remaining <= 0:
                return claimed
            await notifier.wait(min(poll, remaining), seen)
            poll = min(poll * 2, 0.5)

    async def dequeue_ids_async(
        self, task_ids: Sequence[str], *, worker_id: str | None = None
    ) -> list[Task]:
        """Claim exactly these tasks, those of them that are ready, started, in the order given.

        Eager mode runs the task it just enqueued this way (never another one).
        """
        ids = list(dict.fromkeys(task_ids))
        if not ids:
            return []
        now = self.storage.now()
        token = new_id()
        worker = worker_id or "anonymous"

        def body(conn: sa.Connection) -> list[Task]:
            claimed = self.storage.tasks.claim_ids(
                conn,
                ids,
                now=now,
                token=token,
                lease_until=now + self.settings.lease_duration,
                worker_id=worker,
            )
            self.storage.events.insert_rows(
                conn,
                _dequeued_events(
                    [(x.id, x.queue_name, x.schedule_id, x.attempts) for x in claimed],
                    worker,
                    now,
                ),
            )
            return claimed

        async def undo(claimed: list[Task]) -> None:
            await self._release_unstarted(claimed, worker)

        return await self.storage.write(body, what="claim tasks", undo=undo)

    async def _claim(
        self, n: int, queues: list[str] | None, worker_id: str | None, start: bool
    ) -> list[Task]:
        now = self.storage.now()
        token = new_id()
        worker = worker_id or "anonymous"
        sweep = self._expiry_due()

        def body_for(want: int, sweep: bool) -> Callable[[sa.Connection], _Claimed]:
            def body(conn: sa.Connection) -> _Claimed:
                if sweep:
                    inline = running_inline()
                    # Inline, the sweep only looks: finding expired tasks to settle,
                    # it sends the claim to the writer thread (see TooBigInline).
                    if self._expire(conn, now, 1 if inline else _SWEEP_BATCH) and inline:
                        raise TooBigInline
                claimed: list[Task] = []
                quarantined = 0
                more = False
                # Rows that cannot be read take places in a claim: it claims again for
                # them, so ready tasks behind them are not missed (a burst worker would
                # stop on an empty answer with tasks still ready). Each statement asks
                # for no more rows than may still be quarantined here; past that bound
                # the claim goes on in the next transaction, so that this one does not
                # hold back the process's other writes (heartbeats).
                while len(claimed) < want:
                    ask = min(want - len(claimed), _QUARANTINED_PER_TRANSACTION - quarantined)
                    if ask <= 0:
                        more = True
                        break
                    unreadable: list[tuple[str, str]] = []
                    # Limits and paused queues are looked at first (see services/flow.py).
                    got = self._claim_within_limits(
                        conn,
                        queues=queues,
                        n=ask,
                        now=now,
                        token=token,
                        lease_until=now + self.settings.lease_duration,
                        worker_id=worker,
                        unreadable=unreadable,
                        start=start,
                    )
                    claimed += got
                    if unreadable:
                        if running_inline():
                            # Quarantining rows (and cancelling their dependents) is
                            # no small write: not on the caller's event loop.
                            raise TooBigInline
                        self._quarantine(conn, unreadable, token, now)
                        quarantined += len(unreadable)
                    if len(got) + len(unreadable) < ask:
                        break  # the ready tasks (or the limits' room) ran out
                attempt = 0 if start else 1
                rows = [(x.id, x.queue_name, x.schedule_id, x.attempts + attempt) for x in claimed]
                self.storage.events.insert_rows(conn, _dequeued_events(rows, worker, now))
                return claimed, more

            return body

        async def undo(result: _Claimed) -> None:
            await self._release_unstarted(result[0], worker)

        # Not small: a claim from queues whose last claim met limits (reading and
        # locking them costs far more than a claim).
        small = n <= SMALL_CLAIM and not self._limits_met(queues)
        claimed: list[Task] = []
        try:
            while True:
                got, more = await self.storage.write(
                    body_for(n - len(claimed), sweep), what="claim tasks", undo=undo, small=small
                )
                claimed += got
                sweep = False
                if not more or len(claimed) >= n:
                    break
        except BaseException:
            if claimed:  # committed by an earlier transaction of this claim: given back
                self.storage.undo_later(undo, (claimed, False))
            raise
        rank = {name: i for i, name in enumerate(queues or ())}
        claimed.sort(key=lambda x: (rank.get(x.queue_name, 0), -x.priority, x.run_at, x.id))
        return claimed

    async def _release_unstarted(self, tasks: Sequence[Task], worker_id: str | None) -> None:
        """Give claimed tasks back to pending as if never claimed (their claimer is gone)."""
        if not tasks:
            return
        now = self.storage.now()

        def body(conn: sa.Connection) -> None:
            buckets = self._rate_buckets(conn, tasks)
            unstarted = []
            for task in tasks:
                started = task.started_at is not None
                updated = self.storage.tasks.transition(
                    conn,
                    task.id,
                    expected=_RUNNING,
                    lease_token=task.lease_token,
                    values={
                        "status": TaskStatus.PENDING,
                        "attempts": t.c.attempts - 1 if started else t.c.attempts,
                        "started_at": None,
                        **_NO_LEASE,
                    },
                )
                if updated is not None:
                    self.storage.events.insert_rows(
                        conn,
                        [_event(EventType.RELEASED, task, timestamp=now, worker_id=worker_id)],
                    )
                    unstarted.append(task)  # its function never ran, whatever the mark says
            self._refund(conn, unstarted, buckets)

        await self.storage.write(body, what="release tasks")
        self.storage.notifier.notify()

    def _quarantine(
        self, conn: sa.Connection, rows: list[tuple[str, str]], token: str, now: datetime
    ) -> None:
        """Fail claimed rows that cannot be read, with an event saying why; their
        waiting dependents are cancelled, as a failed task's are."""
        failed: dict[str, str] = {}
        for task_id, reason in rows:
            log.error("task %s cannot be read and was failed: %s", task_id, reason)
            done = self.storage.tasks.finish_leased(
                conn,
                [(task_id, token)],
                {**_finish_values(TaskStatus.FAILED, now), "last_error": reason},
            )
            if not done:
                continue
            self.storage.events.insert_rows(
                conn,
                [
                    event_row(
                        EventType.FAILED,
                        task_id=task_id,
                        timestamp=now,
                        level=EventLevel.ERROR,
                        message="quarantined: the stored task cannot be read",
                        error=reason,
                    )
                ],
            )
            self.storage.results.upsert_rows(
                conn,
                [
                    self.storage.results.to_row(
                        TaskResult(
                            task_id=task_id,
                            status=ResultStatus.ERROR,
                            error=reason,
                            error_type="InvalidRow",
                            created_at=now,
                            completed_at=now,
                            ttl=self.settings.default_result_ttl,
                        )
                    )
                ],
            )
            failed[task_id] = f"dependency {task_id} failed"
        if failed:
            cancel_dependents(conn, self.storage, failed, now)

    # --- starts --------------------------------------------------------------------------

    async def mark_started_async(self, starts: Sequence[Start]) -> int:
        """Record that these claimed tasks' functions started (``attempts`` + 1 each).

        ``starts`` holds ``(task_id, lease_token, started_at)``; tasks no longer
        held under that lease (or already marked) are skipped. Returns how many
        were marked.
        """
        if not starts:
            return 0
        return await self.storage.write(
            lambda conn: self.storage.tasks.mark_started(conn, starts), what="mark started"
        )

    # --- outcomes ------------------------------------------------------------------------

    # --- holding leases --------------------------------------------------------------

    async def cancels_requested_async(self, task_ids: Collection[str]) -> set[str]:
        """The running tasks among ``task_ids`` whose cancellation was requested (a
        read: a worker learns of cancels from other processes between heartbeats)."""
        ids = list(task_ids)
        return await self.storage.read(
            lambda conn: self.storage.tasks.cancels_requested(conn, ids), what="get tasks"
        )

    async def renew_leases_async(self, leases: Mapping[str, str]) -> set[str]:
        """Extend the leases ``{task_id: lease_token}``; return the ids still held."""
        return set(await self.heartbeat_async(leases))

    async def heartbeat_async(
        self,
        leases: Mapping[str, str],
        events: Sequence[Mapping[str, Any]] = (),
        starts: Sequence[Start] = (),
        worker: WorkerInfo | None = None,
        *,
        skip_locked: bool = False,
    ) -> dict[str, bool]:
        """Extend held leases (writing ``events``, ``starts``): ``{task_id: cancel_requested}``.

        With ``worker``, its registry row is written too (its heartbeat now).
        With ``skip_locked``, a task another transaction is writing now (on
        PostgreSQL) is skipped and left out of the answer, not waited for.
        """
        await self.storage.sync_clock(force=False)
        now = self.storage.now()
        until = now + self.settings.lease_duration
        if worker is not None:
            worker = attrs.evolve(worker, last_heartbeat=now)

        def body(conn: sa.Connection) -> dict[str, bool]:
            if worker is not None:
                self.storage.workers.register(conn, worker)
            self.storage.events.insert_rows(conn, events)
            self.storage.tasks.mark_started(conn, starts)
            return self.storage.tasks.heartbeat(conn, leases, until, skip_locked=skip_locked)

        return await self.storage.write(body, what="renew leases")
