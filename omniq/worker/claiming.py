"""Claiming and slots (a part of :class:`~omniq.worker.Worker`).

The claim loop fills every free slot with one batched claim and loops at once
while work exists; idle, it waits on in-process wake-ups or an adaptive poll
(short after activity, up to ``poll_interval``; until the next token when rate
limits hold the ready tasks back). Claimed tasks beyond the free slots wait in
a buffer (the adaptive prefetch); a slot is held while a task's function runs,
not while its outcome commits.
"""

from __future__ import annotations

import asyncio
import inspect

from omniq.errors import DatabaseClosed, OmniQError
from omniq.models import Task
from omniq.services.claims import SMALL_CLAIM
from omniq.worker.outcomes import _needs_durable_start, _Running, log
from omniq.worker.shutdown import Stopping

_MIN_POLL = 0.005
#: Adaptive prefetch: hold what the slots finish within this many seconds...
_PREFETCH_HORIZON = 0.02
#: ... and at most this many times the concurrency, and at most _PREFETCH_MAX
#: tasks (a worker's memory stays flat however many slots it has).
_PREFETCH_FACTOR = 30
_PREFETCH_MAX = 1000


#: While a claim waits for the server, how often the worker looks for a stop (seconds).
_STOP_LOOK = 0.5


class Claiming(Stopping):
    """The claim loop, the prefetch buffer and slot accounting (see the module docstring)."""

    concurrency: int
    prefetch: int | None
    poll_interval: float
    _mean_run: float | None
    _claim_batch: int
    _executing: int
    _pooled_slots: int
    _sync_refs: dict[str, bool]

    async def _claim_loop(self, burst: bool) -> None:
        idle = _MIN_POLL
        # After a claim that found fewer tasks than it asked for, the next asks
        # for few: it is likely one just enqueued, and a small claim runs on
        # this thread when the database is free (no trip to the writer thread
        # and back, on SQLite). Found as many as asked, the next asks for all.
        dry = True
        while not self._stopping:
            # Claim in batches: wait until half the capacity is free (or the worker
            # is empty), so one claim and one completion flush serve many tasks.
            self._claim_batch = max(1, (self.concurrency + self._prefetch_now()) // 2)
            self._start_buffered()
            free = self._free()
            if self._has_room():
                # Tasks running when the claim starts may end (and make retries or
                # dependents ready) after the claim's snapshot: burst mode must
                # not stop on that claim's empty answer.
                busy = bool(self._running)
                # An in-process enqueue that commits while this claim runs (after
                # its snapshot) wakes the wait below instead of being missed.
                seen: int | None = self.storage.notifier.generation
                failed = False
                try:
                    ask = min(free, SMALL_CLAIM) if dry else free
                    claimed = await self._claim_unless_stopped(ask)
                except DatabaseClosed:
                    # Closed for good (not an outage): the worker stops with the error.
                    self._request_stop("the database was closed")
                    raise
                except Exception as exc:
                    # A failed claim (database down, a bug) must not end the worker:
                    # report it and retry after a full poll interval.
                    if not isinstance(exc, OmniQError):
                        log.exception("claim failed unexpectedly")
                    await self._report_error("claim failed", exc)
                    claimed, failed = [], True
                    idle = self.poll_interval
                    seen = None
                dry = len(claimed) < ask
                if claimed:
                    self._buffer.extend(claimed)
                    self._start_buffered()
                    idle = _MIN_POLL
                    if not dry:
                        continue  # there may be more: claim again as soon as slots free up
                    # Fewer than asked: the ready tasks ran out at the claim's snapshot.
                    # Claiming again at once would mostly find nothing and, on SQLite,
                    # take the write lock and the GIL from the tasks just claimed;
                    # wait for a wake-up (an enqueue here, a slot freed) or a short poll.
                elif (
                    burst
                    and not failed  # a failed claim found nothing out: try again
                    and not self._running
                    and not self._buffer
                    and not self._superseded
                ):
                    if not busy:
                        return
                    continue
            else:
                seen = None
            # Rate limits hold ready tasks back until then (set by this worker's
            # last claim when it got nothing; another worker's is not ours to wait on).
            due = self.queue.take_flow_wait(self.worker_id)
            wait = idle if due is None else min(max(due, _MIN_POLL), self.poll_interval)
            await self.storage.notifier.wait(wait, seen)
            idle = min(idle * 2, self.poll_interval)

    async def _claim_unless_stopped(self, free: int) -> list[Task]:
        """Claim up to ``free`` tasks; a claim still waiting for the server when the
        worker is asked to stop is cut off (its undo gives back what it took, should
        it commit), so a server that does not answer cannot hold the stop for
        server_timeout."""
        claim = asyncio.ensure_future(
            self.queue.dequeue_many_async(free, self.queues, worker_id=self.worker_id, start=False)
        )
        try:
            while not (await asyncio.wait({claim}, timeout=_STOP_LOOK))[0]:
                if self._stopping:
                    claim.cancel()
                    try:
                        # Done meanwhile, it keeps its tasks: the stop releases them.
                        return await claim
                    except asyncio.CancelledError:
                        current = asyncio.current_task()
                        if current is not None and current.cancelling():
                            raise
                        return []
        except asyncio.CancelledError:
            # This loop was cancelled: so is the claim (its undo gives back what it
            # took). Done already, its tasks go where shutdown releases them.
            if not claim.done():
                claim.cancel()
            elif not claim.cancelled() and claim.exception() is None:
                self._buffer.extend(claim.result())
            raise
        return claim.result()

    def _prefetch_now(self) -> int:
        """How many tasks to hold beyond the free slots.

        With ``prefetch=None``: as many as the slots finish within ``_PREFETCH_HORIZON``
        at the recent average run time (none until a task has run; at most
        ``_PREFETCH_FACTOR`` x concurrency and ``_PREFETCH_MAX``). Short tasks then share
        claims and completion flushes; long tasks are not hoarded from other workers.
        """
        if self.prefetch is not None:
            return self.prefetch
        mean = self._mean_run
        if mean is None:
            return 0
        limit = min(_PREFETCH_FACTOR * self.concurrency, _PREFETCH_MAX)
        if mean <= 0:
            return limit
        return min(limit, int(self.concurrency * _PREFETCH_HORIZON / mean))

    def _start_buffered(self) -> None:
        # Once stopping, claimed but unstarted tasks stay put: shutdown releases them.
        # (No loop yet: process_task_async runs tasks outside the claim loop.)
        if self._stopping or not self._buffer or self._loop is None:
            return
        while self._buffer and self._executing < self.concurrency:
            self._start(self._buffer.pop(0))
        if not self._buffer or not self.executor.pools_sync_calls:
            return
        # Prefetched sync functions may also wait in the thread pool's queue, up
        # to one per slot and no more than the prefetch: a thread that finishes
        # a call starts the next at once, instead of waiting for the loop to
        # hand it one. The pool has one thread per slot, so no more than
        # ``concurrency`` functions run at a time; with the adaptive prefetch,
        # long tasks (no prefetch) are not queued this way.
        # Only while every slot holder is such a call: a slot held by an async
        # function leaves a thread idle, and a queued call would start beside it.
        ahead = self.concurrency + min(self.concurrency, self._prefetch_now())
        while (
            self._buffer
            and self._executing < ahead
            and self._pooled_slots == self._executing
            and self._sync_call(self._buffer[0])
        ):
            self._start(self._buffer.pop(0), pooled=True)

    def _start(self, task: Task, *, pooled: bool | None = None) -> None:
        assert self._loop is not None
        if pooled is None:
            pooled = self._sync_call(task)
        entry = _Running(task=task, pooled=pooled)
        earlier = self._running.get(task.id)
        if earlier is not None:
            self._superseded.add(earlier)
        self._running[task.id] = entry
        self._take_slot(entry)
        entry.handle = self._loop.create_task(self._execute(entry))

    def _sync_call(self, task: Task) -> bool:
        """True when ``task`` will run a sync function in the thread pool."""
        if (
            task.payload_error is not None
            or not self.executor.pools_sync_calls
            or _needs_durable_start(task)
        ):
            return False
        sync = self._sync_refs.get(task.func)
        if sync is None:
            try:
                func = self.registry.resolve(task.func)
            except Exception:
                # Unknown, refused or broken on import: not queued ahead; the task
                # fails in _execute, with the error naming why.
                sync = False
            else:
                sync = not inspect.iscoroutinefunction(func)
            self._sync_refs[task.func] = sync
        return sync

    def _take_slot(self, entry: _Running) -> None:
        if not entry.slot:
            entry.slot = True
            self._executing += 1
            self._pooled_slots += entry.pooled

    def _free_slot(self, entry: _Running) -> None:
        """The function returned: its slot is free for the next task (the outcome still commits)."""
        if entry.slot:
            entry.slot = False
            self._executing -= 1
            self._pooled_slots -= entry.pooled
            self._start_buffered()
            # Wake the claim loop only when it would claim (not once per task).
            if self._free() >= self._claim_batch or not self._executing:
                self.storage.notifier.notify()

    def _has_room(self) -> bool:
        """True while a claim would take tasks (the claim loop's own test): new work
        in another process is worth a look only then."""
        free = self._free()
        return free >= self._claim_batch or (free > 0 and not self._executing and not self._buffer)

    def _free(self) -> int:
        return self.concurrency + self._prefetch_now() - self._executing - len(self._buffer)
