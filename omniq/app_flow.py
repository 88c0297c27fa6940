"""The facade's flow control methods (a part of :class:`omniq.AsyncOmniQ`):
queue-wide limits and queue pause. Per-task limits are declared on ``@oq.task``
(``concurrency=Limit(...)``, ``rate=Rate(...)``, see :mod:`omniq.models.limits`)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from omniq.models.limits import Limit, QueueLimits, Rate, check_declaration
from omniq.services import Services

__all__ = ["FlowMethods", "check_task_limits", "queue_limits_data"]


def check_task_limits(func: Callable[..., Any], options: Mapping[str, Any]) -> None:
    """Refuse ``@oq.task`` limit options that cannot work for ``func`` (at declaration)."""
    check_declaration(func, "concurrency", options.get("concurrency"), Limit)
    check_declaration(func, "rate", options.get("rate"), Rate)


def queue_limits_data(limits: QueueLimits) -> dict[str, Any]:
    """A queue's settings as JSON data (``omniq stats --json``)."""
    rate = limits.rate
    return {
        "paused": limits.paused,
        "concurrency": limits.concurrency,
        "rate": None if rate is None else {"limit": rate.limit, "per": rate.per.total_seconds()},
    }


class FlowMethods:
    """Queue-wide limits, pause and resume (each with a sync twin on :class:`omniq.OmniQ`)."""

    async def _svc(self, caller_tx: bool = False) -> Services:
        raise NotImplementedError

    async def set_queue_limit_async(
        self, queue_name: str, *, concurrency: int | None = None, rate: Rate | None = None
    ) -> QueueLimits:
        """Limit a whole queue, across every worker: at most ``concurrency`` of its tasks
        running and ``rate`` (``Rate(50, per=timedelta(seconds=1))``, no key) starts;
        None removes that limit. Returns the queue's settings."""
        svc = await self._svc()
        return await svc.queue.set_queue_limit_async(queue_name, concurrency=concurrency, rate=rate)

    async def clear_queue_limit_async(self, queue_name: str) -> QueueLimits:
        """Remove a queue's limits (a pause stays)."""
        return await (await self._svc()).queue.clear_queue_limit_async(queue_name)

    async def get_queue_limit_async(self, queue_name: str) -> QueueLimits:
        """A queue's limits and whether it is paused."""
        return await (await self._svc()).queue.get_queue_limit_async(queue_name)

    async def list_queue_limits_async(self) -> list[QueueLimits]:
        """The queues that have limits or are paused."""
        return await (await self._svc()).queue.list_queue_limits_async()

    async def pause_queue_async(self, queue_name: str) -> bool:
        """Stop workers from claiming this queue's tasks, at their next claim (running
        tasks finish; enqueue still works). Kept in the database until resumed.
        False if it was already paused."""
        return await (await self._svc()).queue.pause_queue_async(queue_name)

    async def resume_queue_async(self, queue_name: str) -> bool:
        """Let workers claim this queue's tasks again; False if it was not paused."""
        return await (await self._svc()).queue.resume_queue_async(queue_name)

    async def list_paused_queues_async(self) -> list[str]:
        """The names of the paused queues."""
        return await (await self._svc()).queue.list_paused_queues_async()
