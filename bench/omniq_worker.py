"""An OmniQ worker process for the benchmarks.

``python -m bench.omniq_worker URL [--serve] [--rss-at 10000,100000] [--concurrency N]
[--trace-sql] [--metrics]``

Opens the services, builds a default :class:`omniq.worker.Worker` (events
and results on, ``allow_modules=["bench.tasks"]``), reports ``ready``, waits
for ``go`` on stdin, then either drains the queue in burst mode
(``run_until_complete_async``) or, with ``--serve``, works until stdin says
``stop``. It reports its own timings: the wall-clock time just before the
first claim that returned tasks and just after the last committed outcome
(a completion or a failure), so interpreter start-up and shutdown are
excluded. ``--trace-sql`` also reports what the engine sent to the database
(see :func:`trace_sql`). ``--metrics`` turns Prometheus metrics on (a
``WorkerMetrics`` and its HTTP server on a free port, as ``omniq worker
--metrics-port`` does) and reports how many finished tasks they counted,
scraped over HTTP at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import re
import time
from collections import Counter
from collections.abc import Sequence
from datetime import timedelta
from typing import Any

from sqlalchemy import event

from bench import tracing
from bench.common import emit, rss_kib, wait_for_go
from omniq.models import Task, TaskStatus
from omniq.services import Services, TaskQueue
from omniq.worker import Worker


class TimedQueue(TaskQueue):
    """A TaskQueue that notes when claims and outcomes happen (the library is untouched)."""

    def __init__(self, base: TaskQueue, rss_at: Sequence[int] = ()) -> None:
        super().__init__(base.storage, base.queues)
        self.first_claim: float | None = None
        self.last_complete: float | None = None
        #: Process CPU time (all threads) at those two moments.
        self.cpu_first: float | None = None
        self.cpu_last: float | None = None
        self.completed = 0
        self.claims = 0
        self.flushes = 0
        self.fail_writes = 0
        self.rss_at = sorted(rss_at)
        self.rss: dict[int, int] = {}

    async def dequeue_many_async(
        self,
        n: int,
        queues: Sequence[str] | None = None,
        timeout: timedelta | float | None = None,
        *,
        worker_id: str | None = None,
        **kwargs: Any,
    ) -> list[Task]:
        started, cpu = time.time(), time.process_time()
        claimed = await super().dequeue_many_async(
            n, queues, timeout, worker_id=worker_id, **kwargs
        )
        if claimed:
            self.claims += 1
            if self.first_claim is None:
                self.first_claim, self.cpu_first = started, cpu
        return claimed

    async def settle_completions_async(
        self,
        completions: Sequence[tuple[Task, Any, float | None]],
        **kwargs: Any,
    ) -> list[TaskStatus | None]:
        statuses = await super().settle_completions_async(completions, **kwargs)
        self.last_complete, self.cpu_last = time.time(), time.process_time()
        self.completed += sum(status is TaskStatus.COMPLETED for status in statuses)
        self.flushes += 1
        while self.rss_at and self.completed >= self.rss_at[0]:
            self.rss[self.rss_at.pop(0)] = rss_kib()
        return statuses

    async def fail_many_async(self, failures: Any, **kwargs: Any) -> Any:
        statuses = await super().fail_many_async(failures, **kwargs)
        self.last_complete, self.cpu_last = time.time(), time.process_time()
        self.fail_writes += 1
        return statuses

    async def fail_async(self, task: Task, error: Any, **kwargs: Any) -> Any:
        status = await super().fail_async(task, error, **kwargs)
        self.last_complete, self.cpu_last = time.time(), time.process_time()
        self.fail_writes += 1
        return status


_TABLE = re.compile(r"\b(?:INTO|UPDATE|FROM)\s+\"?(\w+)", re.IGNORECASE)


def trace_sql(services: Services) -> dict[str, Any]:
    """Count what the engine sends (filled in as the worker runs; bench-only hooks).

    Statements by kind (verb + table), transactions begun / committed, pool
    check-outs, the most connections checked out at once beside the pool's
    size (a pool that never ran out never made a coroutine wait), pre-ping
    round trips, and the time spent awaiting statements and pings. Empty if
    the services have no SQLAlchemy engine to listen on. Only public hooks:
    engine and pool events, and the dialect's ``do_ping``.
    """
    stats: dict[str, Any] = {
        "statements": 0,
        "executemany": 0,
        "begins": 0,
        "commits": 0,
        "rollbacks": 0,
        "checkouts": 0,
        "pings": 0,
        "statement_s": 0.0,
        "ping_s": 0.0,
        "out": 0,
        "peak_out": 0,
        "pool_size": 0,
        "kinds": Counter(),
    }
    storage = getattr(services, "storage", None)
    engine = getattr(storage, "engine", None)
    sync = getattr(engine, "sync_engine", None)
    if sync is None:
        return {}
    # Reads go through the async engine; writes through Storage.write_engine
    # (on SQLite the writer thread's own engine).
    engines = [sync]
    writes = getattr(storage, "write_engine", sync)
    if writes is not sync:
        engines.append(writes)

    def before(conn: Any, cursor: Any, sql: str, params: Any, ctx: Any, many: bool) -> None:
        conn.info["bench_t0"] = time.perf_counter()

    def after(conn: Any, cursor: Any, sql: str, params: Any, ctx: Any, many: bool) -> None:
        stats["statement_s"] += time.perf_counter() - conn.info.pop("bench_t0", time.perf_counter())
        stats["statements"] += 1
        stats["executemany"] += bool(many)
        table = _TABLE.search(sql)
        stats["kinds"][f"{sql.split(None, 1)[0].upper()} {table[1] if table else ''}".strip()] += 1

    def counter(key: str) -> Any:
        def count(*_: Any) -> None:
            stats[key] += 1

        return count

    for each in engines:
        event.listen(each, "before_cursor_execute", before)
        event.listen(each, "after_cursor_execute", after)
        for name in ("begin", "commit", "rollback"):
            event.listen(each, name, counter(f"{name}s"))
    pool = sync.pool
    size = getattr(pool, "size", None)  # QueuePool.size(); NullPool has none
    stats["pool_size"] = size() if callable(size) else 0

    def checkout(*_: Any) -> None:
        stats["checkouts"] += 1
        stats["out"] += 1
        stats["peak_out"] = max(stats["peak_out"], stats["out"])

    def checkin(*_: Any) -> None:
        stats["out"] -= 1

    event.listen(pool, "checkout", checkout)
    event.listen(pool, "checkin", checkin)

    def timed(obj: Any, attr: str, key: str, count: str | None = None) -> None:
        original = getattr(obj, attr, None)
        if original is None:
            return

        def wrapper(*args: Any, **kwargs: Any) -> Any:
            began = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                stats[key] += time.perf_counter() - began
                if count:
                    stats[count] += 1

        setattr(obj, attr, wrapper)

    # The pre-ping round trip of each check-out (Dialect.do_ping, public).
    timed(sync.dialect, "do_ping", "ping_s", "pings")
    return stats


def _metrics_on(services: Services) -> tuple[Any, Any]:
    """A WorkerMetrics and its HTTP server (port 0), as `omniq worker --metrics-port` runs them."""
    from omniq.metrics import WorkerMetrics, start_metrics_server

    metrics = WorkerMetrics()
    return metrics, start_metrics_server(services, port=0, worker=metrics)


def _scraped_finished(server: Any) -> int:
    """The finished tasks the metrics page counts (scraped over HTTP, from a thread)."""
    import urllib.request

    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(server.url, timeout=30) as response:
        text = response.read().decode()
    return int(
        sum(
            s.value
            for family in text_string_to_metric_families(text)
            for s in family.samples
            if s.name == "omniq_tasks_finished_total"
        )
    )


async def main_async(
    url: str,
    serve: bool,
    rss_at: Sequence[int],
    concurrency: int | None,
    trace: bool,
    metrics_on: bool = False,
) -> None:
    services = await Services.open_async(url)
    try:
        queue = TimedQueue(services.queue, rss_at)
        metrics, server = _metrics_on(services) if metrics_on else (None, None)
        worker = Worker(
            queue,
            services.results,
            services.events,
            allow_modules=["bench.tasks"],
            concurrency=concurrency,
            metrics=metrics,
            gc_freeze=True,  # a worker process, as `omniq worker` runs it
        )
        sql = trace_sql(services) if trace else {}
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
        last = queue.last_complete
        # Failures are timed through fail_async; should the library record them some
        # other way, time to the worker's return instead (shutdown included).
        to_exit = last is None or stats.failed + stats.retried > queue.fail_writes
        if to_exit:
            last = time.time()
        counted = None
        if server is not None:
            counted = await loop.run_in_executor(None, _scraped_finished, server)
            server.close()
        emit(
            {
                "event": "done",
                "first_claim": queue.first_claim,
                "last_complete": last,
                "timed_to_exit": to_exit,
                "completed": stats.completed,
                "failed": stats.failed,
                "retried": stats.retried,
                "lost": stats.lost,
                "claims": queue.claims,
                "flushes": queue.flushes,
                "fail_writes": queue.fail_writes,
                "cpu_s": None
                if queue.cpu_first is None or queue.cpu_last is None
                else queue.cpu_last - queue.cpu_first,
                "rss_kib": {str(k): v for k, v in queue.rss.items()},
                "sql": sql,
                "metrics_finished": counted,
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
    parser.add_argument("--trace-sql", action="store_true", help="count statements sent")
    parser.add_argument("--metrics", action="store_true", help="Prometheus metrics on")
    args = parser.parse_args()
    rss_at = [int(x) for x in args.rss_at.split(",") if x]
    tracing.install_if_asked()  # row 13: OMNIQ_BENCH_TRACING
    asyncio.run(
        main_async(args.url, args.serve, rss_at, args.concurrency, args.trace_sql, args.metrics)
    )


if __name__ == "__main__":
    main()
