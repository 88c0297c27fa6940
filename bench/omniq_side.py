"""In-process OmniQ measurements: enqueue paths, claim rate, in-process latency."""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from bench import tasks
from bench.common import percentile, rate, sqlite_url
from omniq.services import Services
from omniq.worker import Worker

NOOP = "bench.tasks:noop"


def url_of(target: Path | str) -> str:
    """The OmniQ URL of a SQLite file (a Path) or the URL itself (a str)."""
    return sqlite_url(target) if isinstance(target, Path) else target


async def _with_services(target: Path | str, body: Callable[[Services], Awaitable[float]]) -> float:
    services = await Services.open_async(url_of(target))
    try:
        return await body(services)
    finally:
        await services.close_async()


async def fill(
    target: Path | str, n: int, func: str = NOOP, batch: int = 1000, **options: Any
) -> None:
    """Enqueue ``n`` tasks of ``func`` (in batches of ``batch``); untimed setup.

    ``target`` is a SQLite file or a database URL; ``options`` go to ``build_task``
    (e.g. ``max_retries``).
    """

    async def body(services: Services) -> float:
        queue = services.queue
        for start in range(0, n, batch):
            size = min(batch, n - start)
            await queue.enqueue_many_async(
                [queue.build_task(func, [start + i], **options) for i in range(size)]
            )
        return 0.0

    await _with_services(target, body)


async def enqueue_many_rate(path: Path, n: int, batch: int = 1000) -> float:
    """Tasks/s: build and enqueue ``n`` tasks with ``enqueue_many_async`` in batches."""

    async def body(services: Services) -> float:
        queue = services.queue
        func = tasks.noop
        started = time.perf_counter()
        for start in range(0, n, batch):
            size = min(batch, n - start)
            await queue.enqueue_many_async(
                [queue.build_task(func, [start + i]) for i in range(size)]
            )
        return rate(n, time.perf_counter() - started)

    return await _with_services(path, body)


async def enqueue_single_rate(path: Path, n: int) -> float:
    """Tasks/s: ``n`` sequential ``await queue.enqueue_async(noop, [i])``."""

    async def body(services: Services) -> float:
        queue = services.queue
        func = tasks.noop
        started = time.perf_counter()
        for i in range(n):
            await queue.enqueue_async(func, [i])
        return rate(n, time.perf_counter() - started)

    return await _with_services(path, body)


async def enqueue_concurrent_rate(path: Path, producers: int, each: int) -> float:
    """Tasks/s: ``producers`` coroutines (one gather) each awaiting ``each`` enqueue_async."""

    async def body(services: Services) -> float:
        queue = services.queue
        func = tasks.noop

        async def producer(k: int) -> None:
            for i in range(each):
                await queue.enqueue_async(func, [k * each + i])

        started = time.perf_counter()
        await asyncio.gather(*(producer(k) for k in range(producers)))
        return rate(producers * each, time.perf_counter() - started)

    return await _with_services(path, body)


async def _refill(services: Services, n: int, serial: int) -> int:
    queue = services.queue
    for start in range(0, n, 1000):
        size = min(1000, n - start)
        await queue.enqueue_many_async(
            [queue.build_task(NOOP, [serial + start + i]) for i in range(size)]
        )
    return serial + n


async def _claim_rounds(services: Services, rounds: int, batch: int) -> tuple[int, float]:
    """(tasks, seconds) of ``rounds`` claim + complete rounds."""
    queue = services.queue
    done = 0
    started = time.perf_counter()
    for _ in range(rounds):
        claimed = await queue.dequeue_many_async(batch, worker_id="bench")
        if not claimed:
            raise RuntimeError("the claim benchmark ran out of tasks")
        await queue.complete_many_async([(task, None, 0.0) for task in claimed], worker_id="bench")
        done += len(claimed)
    return done, time.perf_counter() - started


async def claim_rates(
    big: Path,
    small: Path,
    backlogs: tuple[int, int],
    per_run: int,
    repeats: int,
    *,
    batch: int = 100,
    block: int = 5,
) -> tuple[float, float]:
    """Best tasks/s of ``dequeue_many_async(batch)`` + ``complete_many_async`` rounds
    on a big backlog and on a small one, as (big, small).

    The two databases take turns every ``block`` rounds, so both see the same
    machine load. Backlogs are topped up outside the timed sections: the small
    one after each of its rounds, the big one after each run.
    """
    await fill(big, backlogs[0])
    await fill(small, backlogs[1])
    services = (
        await Services.open_async(sqlite_url(big)),
        await Services.open_async(sqlite_url(small)),
    )
    try:
        serial = [backlogs[0], backlogs[1]]
        best = [0.0, 0.0]
        for _ in range(repeats):
            done = [0, 0]
            timed = [0.0, 0.0]
            while done[0] < per_run or done[1] < per_run:
                for which in (0, 1):
                    for _ in range(block if done[which] < per_run else 0):
                        n, seconds = await _claim_rounds(services[which], 1, batch)
                        done[which] += n
                        timed[which] += seconds
                        if which == 1:
                            serial[1] = await _refill(services[1], n, serial[1])
            for which in (0, 1):
                best[which] = max(best[which], rate(done[which], timed[which]))
            serial[0] = await _refill(services[0], done[0], serial[0])
        return best[0], best[1]
    finally:
        for item in services:
            await item.close_async()


def spacing(count: int, seed: int = 7) -> list[float]:
    """Pauses between the latency probes: uniform 10-100 ms, seeded."""
    rng = random.Random(seed)
    return [rng.uniform(0.010, 0.100) for _ in range(count)]


async def in_process_latency(path: Path, count: int) -> tuple[float, float]:
    """(p50, p95) seconds from before ``enqueue_async`` to the task's start.

    The worker runs on this event loop, idle between probes (each probe
    waits for the previous one to start, then pauses); the enqueue wakes it
    through the in-process notifier.
    """
    services = await Services.open_async(sqlite_url(path))
    loop = asyncio.get_running_loop()
    started = asyncio.Event()

    def wake(_i: int) -> None:
        loop.call_soon_threadsafe(started.set)

    tasks.on_stamp = wake
    try:
        worker = Worker(
            services.queue, services.results, services.events, allow_modules=["bench.tasks"]
        )
        await worker.start_async()
        tasks.STAMPS.clear()
        latencies = []
        await asyncio.sleep(0.2)
        for i, pause in enumerate(spacing(count)):
            await asyncio.sleep(pause)
            started.clear()
            enqueued = time.time()
            await services.queue.enqueue_async(tasks.stamp, [i])
            await asyncio.wait_for(started.wait(), 30)
            latencies.append(tasks.STAMPS[i] - enqueued)
        await worker.stop_async()
        return percentile(latencies, 50), percentile(latencies, 95)
    finally:
        tasks.on_stamp = None
        await services.close_async()


async def enqueue_spaced(path: Path, count: int) -> dict[int, float]:
    """Enqueue ``count`` ``stamp`` probes with pauses; return ``{i: time before enqueue}``."""
    services = await Services.open_async(sqlite_url(path))
    try:
        enqueued: dict[int, float] = {}
        for i, pause in enumerate(spacing(count)):
            await asyncio.sleep(pause)
            enqueued[i] = time.time()
            await services.queue.enqueue_async(tasks.stamp, [i])
        return enqueued
    finally:
        await services.close_async()
