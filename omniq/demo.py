"""``omniq demo``: the whole system on the embedded SQLite default, in under a minute.

Migrates a fresh database, enqueues a few thousand tasks across queues and
priorities, a dependency chain, a task that fails then succeeds on retry,
one that fails for good, one that times out, an interval and a cron
schedule; runs a worker with a live progress line (rewritten in place on a
terminal, a plain line now and then otherwise); then prints results, one
task's events, stats per status and queue, and the throughput reached. Each
count says what it covers: the bulk (until nothing was left to run), the
worker's whole run (the schedules' runs too), or the database at the end.
Scratch files live in a temporary directory, removed at the end.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, TextIO

from omniq.app import AsyncOmniQ
from omniq.db import migrate
from omniq.models import ScheduleStatus, TaskStatus

# --- the demo's task functions (referenced as "omniq.demo:<name>") -------------


def noop(i: int) -> int:
    """A tiny unit of work."""
    return i


async def fetch(source: str) -> dict[str, Any]:
    """First step of the chain."""
    await asyncio.sleep(0.01)
    return {"source": source, "rows": 3}


def transform(step: str) -> str:
    """Second step of the chain."""
    return f"{step}: transformed"


def load(step: str) -> str:
    """Last step of the chain."""
    return f"{step}: loaded"


def flaky(marker: str) -> str:
    """Fails on its first attempt, succeeds on the next (state in a marker file)."""
    path = Path(marker)
    if not path.exists():
        path.write_text("attempted")
        raise ConnectionError("upstream not ready (first attempt fails on purpose)")
    return "succeeded on retry"


def always_fails() -> None:
    """Fails every time: ends as failed with its traceback stored."""
    raise ValueError("this task always fails")


async def too_slow() -> None:
    """Sleeps far past its timeout: cancelled and recorded as timed out."""
    await asyncio.sleep(30)


async def _nothing_due(oq: AsyncOmniQ, live: int) -> bool:
    """True when none of the ``live`` unfinished tasks can run yet (checked only
    once few are left): each is pending with a run time still ahead."""
    if live > _FEW:
        return False
    now = time.time()
    left = await oq.list_tasks_async(["pending", "waiting", "running"], limit=_FEW + 1)
    return all(x.status is TaskStatus.PENDING and x.run_at.timestamp() > now for x in left)


_FEW = 50


def heartbeat(kind: str) -> str:
    """Run by the schedules."""
    return f"{kind} tick"


# --- the demo itself ---------------------------------------------------------------


class _NoOutcomeLines(logging.Filter):
    """Drops the worker's per-task outcome lines: the demo reports outcomes itself."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not hasattr(record, "outcome")


@contextlib.contextmanager
def _quiet_outcomes() -> Iterator[None]:
    logger = logging.getLogger("omniq.worker")
    quiet = _NoOutcomeLines()
    logger.addFilter(quiet)
    try:
        yield
    finally:
        logger.removeFilter(quiet)


class _Progress:
    """The worker's progress: one line rewritten in place on a terminal, else a line a second."""

    def __init__(self, out: TextIO, every: float = 1.0) -> None:
        self.out = out
        isatty = getattr(out, "isatty", None)
        self.tty = bool(isatty and isatty())
        self.every = every
        self.last = -every
        self.shown = False
        self.key: object = None

    def update(self, text: str, key: object, *, final: bool = False) -> None:
        """Show ``text``; off a terminal only when ``key`` changed, at most once a second."""
        now = time.perf_counter()
        if self.tty:
            self.out.write(f"\r  {text}   ")
            self.shown = True
        elif final or (key != self.key and now - self.last >= self.every):
            self.out.write(f"  {text}\n")
            self.last, self.key = now, key
        self.out.flush()

    def end(self) -> None:
        if self.tty and self.shown:
            self.out.write("\n")
            self.out.flush()


async def run_demo(
    base_dir: str | Path = "omniq_data", tasks: int = 3000, out: TextIO = sys.stdout
) -> dict[str, Any]:
    """Run the demo in ``base_dir`` (its ``demo.db`` is reset first); return a summary."""
    base = Path(base_dir)
    for suffix in ("", "-wal", "-shm"):
        (base / f"demo.db{suffix}").unlink(missing_ok=True)
    # Earlier versions left their scratch files here.
    shutil.rmtree(base / "demo-scratch", ignore_errors=True)
    with tempfile.TemporaryDirectory(prefix="omniq-demo-") as scratch, _quiet_outcomes():
        return await _run_demo(base, tasks, out, Path(scratch))


async def _run_demo(base: Path, tasks: int, out: TextIO, scratch: Path) -> dict[str, Any]:
    def say(text: str = "") -> None:
        print(text, file=out, flush=True)

    oq = AsyncOmniQ("demo", base_dir=base, allow_modules=["omniq.demo"], concurrency=32)
    async with oq:
        say(f"OmniQ demo -- database {base / 'demo.db'} (schema at revision {migrate.head()})")
        queues = [("high", 10), ("default", 0), ("low", -5)]
        records = [
            oq.build_task(
                noop,
                [i],
                queue_name=queues[i % 3][0],
                priority=queues[i % 3][1] + (i % 4),
                tags=["bulk"],
            )
            for i in range(tasks)
        ]
        started = time.perf_counter()
        await oq.enqueue_many_async(records)
        enqueue_rate = tasks / (time.perf_counter() - started)
        say(
            f"enqueued {tasks} tasks across high/default/low in one transaction "
            f"({enqueue_rate:,.0f} tasks/s)"
        )
        first = await oq.enqueue_async(fetch, ["warehouse"], name="fetch")
        second = await oq.enqueue_async(transform, ["orders"], depends_on=[first], name="transform")
        third = await oq.enqueue_async(load, ["orders"], depends_on=[second], name="load")
        flaky_id = await oq.enqueue_async(
            flaky, [str(scratch / "flaky.marker")], max_retries=2, retry_delay=0.2, name="flaky"
        )
        failing = await oq.enqueue_async(always_fails, max_retries=1, retry_delay=0.1)
        slow = await oq.enqueue_async(
            too_slow, timeout=0.5, max_retries=1, retry_delay=0.2, name="too_slow"
        )
        interval = await oq.schedule_async(heartbeat, ["interval"], interval=1.0, max_runs=3)
        cron = await oq.schedule_async(heartbeat, ["cron"], cron="* * * * *", misfire="skip")
        say("plus: a chain fetch -> transform -> load, a flaky task (retries), a failing task,")
        say("      a task that times out, an interval schedule (every 1 s, 3 runs) and a cron one")

        worker = await oq.start_worker_async(concurrency=32)
        progress = _Progress(out)
        t0 = time.perf_counter()
        deadline = t0 + 50
        # Throughput is measured over the bulk (until the first moment nothing is
        # left to run: a retry waiting out its delay or a schedule's next run
        # waiting for its time is not), not over the wait for the interval
        # schedule's last tick.
        drained: tuple[int, float] | None = None
        while True:
            stats = await oq.stats_async()
            counts = stats["task_totals"]
            done = sum(counts.get(s.value, 0) for s in TaskStatus if s.is_final)
            schedule = await oq.get_schedule_async(interval)
            elapsed = time.perf_counter() - t0
            live = sum(counts.get(s, 0) for s in ("pending", "waiting", "running"))
            finished = schedule is not None and schedule.status is ScheduleStatus.COMPLETED
            last = (live == 0 and finished) or time.perf_counter() > deadline
            progress.update(
                f"worker: {done} of the {sum(counts.values())} tasks in the database finished, "
                f"{done / max(elapsed, 1e-9):,.0f} tasks/s",
                done,
                final=last,
            )
            if drained is None and (live == 0 or await _nothing_due(oq, live)):
                drained = (done, elapsed)
            if last:
                break
            await asyncio.sleep(0.1)
        progress.end()
        elapsed = time.perf_counter() - t0
        await oq.stop_worker_async()
        wstats = worker.get_stats()
        bulk_done, bulk_elapsed = drained or (wstats.completed + wstats.failed, elapsed)
        throughput = bulk_done / bulk_elapsed if bulk_elapsed else 0.0
        say(
            f"bulk (until nothing was left to run, {bulk_elapsed:.1f} s): "
            f"{bulk_done} tasks finished, {throughput:,.0f} tasks/s"
        )
        say(
            f"worker {wstats.worker_id} (its whole run, {elapsed:.1f} s, schedule runs "
            f"included): {wstats.completed} completed, {wstats.failed} failed, "
            f"{wstats.retried} retried"
        )
        say()
        say("results:")
        for label, task_id in (
            ("chain/load", third),
            ("flaky", flaky_id),
            ("always_fails", failing),
            ("too_slow", slow),
        ):
            result = await oq.get_result_async(task_id)
            shown = (
                result.result if result and result.success else (result.error if result else None)
            )
            status = result.status.value if result else "-"
            say(f"  {label:<14} {status:<8} {shown}")
        latest = await oq.get_result_async(schedule_id=interval)
        say(f"  {'interval':<14} latest result: {latest.result if latest else None}")
        say()
        say("the life of the flaky task (events, oldest first):")
        for event in reversed(await oq.get_events_async(task_id=flaky_id)):
            detail = event.error or event.message or ""
            say(f"  {event.timestamp:%H:%M:%S.%f}  {event.event_type.value:<10} {detail}")
        say()
        stats = await oq.stats_async()
        say("tasks per queue and status (the database at the end, schedule runs included):")
        statuses = sorted({s for per in stats["tasks"].values() for s in per})
        say("  " + f"{'queue':<10}" + "".join(f"{s:>11}" for s in statuses))
        for queue_name, per in sorted(stats["tasks"].items()):
            say("  " + f"{queue_name:<10}" + "".join(f"{per.get(s, 0):>11}" for s in statuses))
        await oq.cancel_schedule_async(cron)
        say()
        say(
            f"throughput: {throughput:,.0f} tasks/s end to end over the bulk "
            f"(one worker, 32 slots, events and results on); enqueue {enqueue_rate:,.0f}/s"
        )
        return {
            "tasks": tasks,
            "completed": wstats.completed,
            "failed": wstats.failed,
            "retried": wstats.retried,
            "throughput": throughput,
            "bulk_seconds": bulk_elapsed,
            "seconds": elapsed,
            "task_totals": stats["task_totals"],
        }
