"""In-process wake-ups are never lost, on every engine.

An enqueue in this process wakes an idle worker (and a ``wait_async`` caller)
at once instead of at its next poll. A wake-up that arrives while the worker
is inside a claim, after the claim's snapshot, used to be lost: the worker
then slept through its whole poll interval with a ready task in the queue.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from omniq.models import Task
from omniq.services import Services, TaskQueue
from omniq.worker import Worker

_ROOT = str(Path(__file__).resolve().parents[2])
if _ROOT not in sys.path:
    sys.path.append(_ROOT)

from tests.claim_times import ClaimTimes, spaced  # noqa: E402
from tests.waiting import wait_until  # noqa: E402

pytestmark = pytest.mark.anyio

POLL = 30.0  # the worker's poll interval: far longer than any wait below


async def test_a_notification_after_a_reading_of_the_generation_is_not_missed(
    svc: Services,
) -> None:
    notifier = svc.storage.notifier
    seen = notifier.generation
    notifier.notify()  # nobody waits yet: before, this wake-up was lost
    started = time.monotonic()
    assert await notifier.wait(POLL, seen) is True
    assert time.monotonic() - started < POLL / 2  # at once, not after the timeout
    # Without a reading, or with the current one, it waits as before.
    assert await notifier.wait(0.01) is False
    assert await notifier.wait(0.01, notifier.generation) is False


class RacingQueue(ClaimTimes):
    """Enqueues a task while the worker's claim is under way, once armed.

    The claim's snapshot is already taken when the enqueue commits, so the
    claim returns without it: only the enqueue's wake-up can bring the
    worker back before its next poll.
    """

    def __init__(self, base: TaskQueue) -> None:
        super().__init__(base)
        self.armed = False
        self.racer: str | None = None
        #: The empty claim the racer raced: when it ended, and its gap to the one before.
        self.raced: tuple[float, float] | None = None

    async def dequeue_many_async(
        self, n: int, queues: Sequence[str] | None = None, timeout: Any = None, **kw: Any
    ) -> list[Task]:
        claimed = await super().dequeue_many_async(n, queues, timeout, **kw)
        if self.armed and not claimed:
            self.armed = False
            self.raced = (self.claim_times[-1], self.last_gap())
            self.racer = await self.enqueue_async("tests.worker_tasks:add", [1, 2])
        return claimed


async def test_an_enqueue_committed_during_a_claim_wakes_the_idle_worker(svc: Services) -> None:
    queue = RacingQueue(svc.queue)
    worker = Worker(
        queue,
        svc.results,
        svc.events,
        allow_modules=["tests.worker_tasks"],
        poll_interval=POLL,
        run_scheduler=False,
        run_maintenance=False,
    )
    await worker.start_async()
    try:
        # Idle long enough that the worker's empty claims are a second or more apart:
        # from here on a missed wake-up costs it over a second.
        await spaced(queue, 1.0)
        queue.armed = True

        async def raced() -> bool:
            return queue.racer is not None

        await wait_until(raced, "the enqueue during a claim", timeout=POLL)
        assert queue.racer is not None and queue.raced is not None
        result = await svc.results.wait_async(queue.racer, timeout=POLL)
        assert result is not None and result.result == 3
        # Woken by the enqueue, not by the next poll.
        queue.woken_for(queue.racer, *queue.raced)
    finally:
        await worker.stop_async(grace_period=1.0)
