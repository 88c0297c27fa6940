"""A queue that notes its idle worker's claims: woken by a wake-up, or by a poll?

An idle worker doubles its wait after each empty claim (up to its poll
interval). A test that wants to show a wake-up waits until those claims are
far apart (:func:`spaced`), makes work, and then asks whether the claim that
took it began before the next poll could have (:meth:`ClaimTimes.woken_for`).
Only the start of that claim is compared: a loaded machine makes the wake-up
later, never the poll sooner, and how long the task then takes to run and
commit is not what such a test measures.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from omniq.models import Task
from omniq.services import TaskQueue
from tests.waiting import wait_until

__all__ = ["ClaimTimes", "spaced"]


class ClaimTimes(TaskQueue):
    """Notes when each claim started and ended, and what it took (the library is untouched)."""

    def __init__(self, base: TaskQueue) -> None:
        super().__init__(base.storage, base.queues)
        self.claim_times: list[float] = []  # when each claim ended
        self.started: dict[str, float] = {}  # task id -> when the claim that took it started

    async def dequeue_many_async(
        self, n: int, queues: Sequence[str] | None = None, timeout: Any = None, **kw: Any
    ) -> list[Task]:
        start = time.monotonic()
        claimed = await super().dequeue_many_async(n, queues, timeout, **kw)
        self.claim_times.append(time.monotonic())
        self.started.update((task.id, start) for task in claimed)
        return claimed

    def last_gap(self) -> float:
        """Between the ends of the last two claims."""
        return self.claim_times[-1] - self.claim_times[-2]

    def woken_for(self, task_id: str, last: float, gap: float) -> None:
        """Assert the claim that took ``task_id`` came from a wake-up, not a poll.

        After an empty claim ending at ``last``, ``gap`` (a wait and a claim)
        after the one before, the next poll starts ``2 * (gap - claim)`` later
        at the soonest: past ``1.5 * gap`` for any claim shorter than a quarter
        of the gap. A claim that began before that was woken.
        """
        began = self.started[task_id] - last
        assert began < 1.5 * gap, (
            f"the claim that took the task began {began:.2f}s after the last empty one "
            f"(gap {gap:.2f}s): a poll, not a wake-up"
        )


async def spaced(queue: ClaimTimes, seconds: float) -> float:
    """Wait until the idle worker's empty claims are ``seconds`` apart; the last gap."""

    async def far_apart() -> bool:
        return len(queue.claim_times) >= 2 and queue.last_gap() >= seconds

    await wait_until(far_apart, f"empty claims {seconds:g}s apart", timeout=60)
    return queue.last_gap()
