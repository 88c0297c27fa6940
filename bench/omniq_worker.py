"""An OmniQ worker process for the benchmarks.

``python -m bench.omniq_worker URL [--serve] [--rss-at 10000,100000] [--concurrency N]``

Opens the services, builds a default :class:`omniq.worker.Worker` (events
and results on, ``allow_modules=["bench.tasks"]``), reports ``ready``, waits
for ``go`` on stdin, then either drains the queue in burst mode
(``run_until_complete_async``) or, with ``--serve``, works until stdin says
``stop``. It reports its own timings: the wall-clock time just before the
first claim that returned tasks and just after the last committed
completion, so interpreter start-up and shutdown are excluded.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from collections.abc import Mapping, Sequence
from datetime import timedelta
from typing import Any

from bench.common import emit, rss_kib, wait_for_go
from omniq.models import Task
from omniq.services import Services, TaskQueue
from omniq.worker import Worker


class TimedQueue(TaskQueue):
    """A TaskQueue that notes when claims and completions happen (the library is untouched)."""

    def __init__(self, base: TaskQueue, rss_at: Sequence[int] = ()) -> None:
        super().__init__(base.storage, base.queues)
        self.first_claim: float | None = None
        self.last_complete: float | None = None
        self.completed = 0
        self.claims = 0
        self.flushes = 0
        self.rss_at = sorted(rss_at)
        self.rss: dict[int, int] = {}

    async def dequeue_many_async(
        self,
        n: int,
        queues: Sequence[str] | None = None,
        timeout: timedelta | float | None = None,
        *,
        worker_id: str | None = None,
    ) -> list[Task]:
        started = time.time()
        claimed = await super().dequeue_many_async(n, queues, timeout, worker_id=worker_id)
        if claimed:
            self.claims += 1
            if self.first_claim is None:
                self.first_claim = started
        return claimed

    async def complete_many_async(
        self,
        completions: Sequence[tuple[Task, Any, float | None]],
        *,
        worker_id: str | None = None,
        events: Sequence[Mapping[str, Any]] = (),
    ) -> list[str]:
        done = await super().complete_many_async(completions, worker_id=worker_id, events=events)
        self.last_complete = time.time()
        self.completed += len(done)
        self.flushes += 1
        while self.rss_at and self.completed >= self.rss_at[0]:
            self.rss[self.rss_at.pop(0)] = rss_kib()
        return done


async def main_async(url: str, serve: bool, rss_at: Sequence[int], concurrency: int | None) -> None:
    services = await Services.open_async(url)
    try:
        queue = TimedQueue(services.queue, rss_at)
        worker = Worker(
            queue,
            services.results,
            services.events,
            allow_modules=["bench.tasks"],
            concurrency=concurrency,
        )
        emit({"event": "ready", "rss_kib": rss_kib()})
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, wait_for_go)
        if serve:
            await worker.start_async()
            await loop.run_in_executor(None, wait_for_go)
            await worker.stop_async()
        else:
            await worker.run_until_complete_async()
        stats = worker.get_stats()
        emit(
            {
                "event": "done",
                "first_claim": queue.first_claim,
                "last_complete": queue.last_complete,
                "completed": stats.completed,
                "failed": stats.failed,
                "lost": stats.lost,
                "claims": queue.claims,
                "flushes": queue.flushes,
                "rss_kib": {str(k): v for k, v in queue.rss.items()},
            }
        )
    finally:
        await services.close_async()


def main() -> None:
    """Entry point of the worker process."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("url")
    parser.add_argument("--serve", action="store_true", help="work until stdin says stop")
    parser.add_argument("--rss-at", default="", help="completion counts at which to read VmRSS")
    parser.add_argument("--concurrency", type=int, default=None, help="default: the Worker's")
    args = parser.parse_args()
    rss_at = [int(x) for x in args.rss_at.split(",") if x]
    asyncio.run(main_async(args.url, args.serve, rss_at, args.concurrency))


if __name__ == "__main__":
    main()
