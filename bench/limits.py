"""14: flow control (issue 16): what limits cost the claim, and what waiting costs a worker.

- 14a: ``dequeue_many_async(100)`` + ``complete_many_async`` rounds on a backlog
  whose every task has a concurrency limit and a rate limit that never bind
  (10 tenant keys, 10,000 slots and a million tokens a second each), vs the
  same rounds on a backlog without limits. The two take turns every 5 rounds.
- 14b: the CPU time of a worker process (``python -m bench.limits``) held for a
  few seconds in front of a backlog that a rate limit holds back (its bucket
  is empty for an hour), vs the same worker idle on an empty queue.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path

from bench.common import REPO_ROOT, Row, child_env, rate, ratio_row, sqlite_url, verdict
from bench.omniq_side import NOOP
from bench.workspace import Sizes, Workspace
from omniq import Limit, Rate
from omniq.services import Services

LABELS = (
    "14a. claim, limits not binding vs none",
    "14b. worker CPU, rate-held vs idle",
)

#: Non-binding limits of row 14a.
_LOOSE = {"concurrency": Limit(10_000), "rate": Rate(1_000_000, per=timedelta(seconds=1))}
_TENANTS = 10
_BATCH = 100
_BLOCK = 5


async def _fill(path: Path, n: int, *, limited: bool) -> None:
    services = await Services.open_async(sqlite_url(path))
    try:
        q = services.queue
        for start in range(0, n, 1000):
            tasks = []
            for i in range(start, min(n, start + 1000)):
                options = {}
                if limited:
                    tenant = f"tenant-{i % _TENANTS}"
                    options = {**_LOOSE, "concurrency_key": tenant, "rate_key": tenant}
                tasks.append(q.build_task(NOOP, [i], **options))  # type: ignore[arg-type]
            await q.enqueue_many_async(tasks)
    finally:
        await services.close_async()


async def _rounds(services: Services, rounds: int) -> tuple[int, float]:
    q = services.queue
    done = 0
    started = time.perf_counter()
    for _ in range(rounds):
        claimed = await q.dequeue_many_async(_BATCH, worker_id="bench")
        if not claimed:
            break
        await q.complete_many_async([(x, None, 0.0) for x in claimed], worker_id="bench")
        done += len(claimed)
    return done, time.perf_counter() - started


async def claim_rates(
    limited: Path, plain: Path, per_run: int, repeats: int
) -> tuple[float, float]:
    """Best tasks/s of claim + complete rounds with non-binding limits, and without."""
    total = per_run * repeats
    await _fill(limited, total, limited=True)
    await _fill(plain, total, limited=False)
    services = (
        await Services.open_async(sqlite_url(limited)),
        await Services.open_async(sqlite_url(plain)),
    )
    try:
        best = [0.0, 0.0]
        for _ in range(repeats):
            done, timed = [0, 0], [0.0, 0.0]
            while done[0] < per_run or done[1] < per_run:
                for which in (0, 1):
                    if done[which] < per_run:
                        n, seconds = await _rounds(services[which], _BLOCK)
                        done[which] += n
                        timed[which] += seconds
            for which in (0, 1):
                best[which] = max(best[which], rate(done[which], timed[which]))
        return best[0], best[1]
    finally:
        for item in services:
            await item.close_async()


async def _hold_backlog(path: Path, n: int) -> None:
    """``n`` tasks behind an empty bucket: one token an hour, spent by the first task."""
    services = await Services.open_async(sqlite_url(path))
    try:
        q = services.queue
        held = Rate(1, per=timedelta(hours=1))
        await q.enqueue_many_async(
            [q.build_task(NOOP, [i], rate=held, rate_key="held") for i in range(n)]
        )
        (first,) = await q.dequeue_many_async(10)
        await q.complete_async(first, None)
    finally:
        await services.close_async()


def _worker_cpu(path: Path, seconds: float, cwd: Path) -> float:
    """CPU seconds a worker process spent over ``seconds`` of running (after start-up)."""
    out = subprocess.run(
        [sys.executable, "-m", "bench.limits", sqlite_url(path), str(seconds)],
        cwd=cwd,
        env=child_env(),
        capture_output=True,
        text=True,
        timeout=120 + seconds,
        check=True,
    )
    report = json.loads(out.stdout.strip().splitlines()[-1])
    return float(report["cpu_s"])


def bench_limits(ws: Workspace, sizes: Sizes) -> list[Row]:
    """Rows 14a and 14b."""
    per_run = sizes.claim_per_run
    limited, plain = asyncio.run(
        claim_rates(ws.omniq_db("limits-loose"), ws.omniq_db("limits-none"), per_run, sizes.repeats)
    )
    held_db, idle_db = ws.omniq_db("limits-held"), ws.omniq_db("limits-idle")
    asyncio.run(_hold_backlog(held_db, 1_000))
    seconds = 3.0 if sizes.repeats == 1 else 10.0
    held = min(_worker_cpu(held_db, seconds, REPO_ROOT) for _ in range(sizes.repeats))
    idle = min(_worker_cpu(idle_db, seconds, REPO_ROOT) for _ in range(sizes.repeats))
    ratio = held / idle if idle else None
    # "Does not burn CPU": under 5 % of a core while held back (an idle worker's polls
    # cost a few ms a second).
    ok = held <= 0.05 * seconds

    def cpu(value: float) -> str:
        return f"{value * 1000 / seconds:.0f} ms/s"

    return [
        ratio_row(
            LABELS[0],
            limited,
            plain,
            0.9,
            ">= 0.9x",
            f"dequeue_many_async({_BATCH}) + complete_many_async rounds, {per_run:,} tasks per "
            f"run: every task with Limit(10_000) and Rate(1_000_000/s) on {_TENANTS} tenant "
            "keys (omniq) vs the same tasks without limits (comparison), turns every "
            f"{_BLOCK} rounds; backlog {per_run * sizes.repeats:,} each.",
        ),
        Row(
            LABELS[1],
            cpu(held),
            cpu(idle),
            ratio,
            f"{verdict(ok)} <= 50 ms/s",
            ok,
            f"CPU time per second of a worker process (concurrency 10, poll_interval 1 s) "
            f"over {seconds:g} s in front of 1,000 tasks held back by an empty token bucket "
            "(omniq) vs the same worker on an empty queue (comparison); it sleeps until the "
            "next token or the poll interval, never spins.",
        ),
    ]


async def _run_worker(url: str, seconds: float) -> None:
    from omniq.worker import Worker

    services = await Services.open_async(url)
    try:
        worker = Worker(
            services.queue,
            services.results,
            services.events,
            concurrency=10,
            poll_interval=1.0,
            allow_modules=["bench.tasks"],
            run_scheduler=False,
            run_maintenance=False,
        )
        runner = asyncio.ensure_future(worker.run_async())
        await asyncio.sleep(0.5)  # start-up (imports, registry) is not measured
        cpu = time.process_time()
        await asyncio.sleep(seconds)
        spent = time.process_time() - cpu
        await worker.stop_async()
        await runner
        print(json.dumps({"cpu_s": spent}), flush=True)
    finally:
        await services.close_async()


if __name__ == "__main__":
    asyncio.run(_run_worker(sys.argv[1], float(sys.argv[2])))
