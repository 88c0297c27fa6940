"""Prometheus metrics scraped over HTTP from an in-process worker, on every engine.

The tasks are held on gates while the test reads, so the database and the
scrape describe the same moment: the database is counted before and after
the scrape and must not have moved.
"""

from __future__ import annotations

import asyncio
import urllib.request
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa

pytest.importorskip("prometheus_client", reason='metrics tests need "omniq[metrics]"')

from prometheus_client.parser import text_string_to_metric_families

from omniq import AsyncOmniQ, Settings
from omniq.db.engine import create_engine
from omniq.db.schema import tasks as tasks_table
from omniq.metrics import DatabaseCollector, WorkerMetrics, start_metrics_server
from omniq.worker import Worker
from tests import worker_tasks
from tests.waiting import wait_until

pytestmark = pytest.mark.anyio

BLOCK = "tests.worker_tasks:block_until_released"
ADD = "tests.worker_tasks:add"
FAILS = "tests.worker_tasks:always_fails"

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def parse(text: str) -> Samples:
    """Every sample of a scrape: (name, sorted labels) -> value."""
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def pick(samples: Samples, name: str, **labels: str) -> float:
    """The value of one sample (it must be there)."""
    return samples[(name, tuple(sorted(labels.items())))]


def by_label(samples: Samples, name: str, *keys: str) -> dict[tuple[str, ...], float]:
    """The samples of ``name``, keyed by the values of ``keys``."""
    return {
        tuple(dict(labels)[k] for k in keys): value
        for (n, labels), value in samples.items()
        if n == name
    }


async def scrape(url: str) -> Samples:
    """GET the metrics page from another thread (the worker's loop stays free to answer)."""

    def get() -> str:
        with urllib.request.urlopen(url, timeout=30) as response:
            assert response.status == 200
            body: bytes = response.read()
            return body.decode()

    return parse(await asyncio.to_thread(get))


async def counts(engine: sa.ext.asyncio.AsyncEngine) -> dict[tuple[str, str], int]:
    """SELECT queue_name, status, count(*) ... GROUP BY queue_name, status."""
    t = tasks_table
    stmt = sa.select(t.c.queue_name, t.c.status, sa.func.count()).group_by(
        t.c.queue_name, t.c.status
    )
    async with engine.connect() as conn:
        rows = (await conn.execute(stmt)).all()
    return {(q, s): int(n) for q, s, n in rows}


@pytest.fixture
async def raw_engine(db_url: str) -> AsyncIterator[sa.ext.asyncio.AsyncEngine]:
    engine = create_engine(db_url)
    try:
        yield engine
    finally:
        await engine.dispose()


async def test_scraped_worker_matches_the_database_and_its_finished_tasks(
    db_url: str, raw_engine: sa.ext.asyncio.AsyncEngine
) -> None:
    key = f"metrics-{id(raw_engine)}"
    settings = Settings(heartbeat_interval=timedelta(seconds=0.2))
    async with AsyncOmniQ(url=db_url, settings=settings) as oq:
        # fast: two that complete, one that fails after two retries (three attempts).
        for i in range(2):
            await oq.enqueue_async(ADD, [i, 1], queue_name="fast")
        await oq.enqueue_async(FAILS, ["boom"], queue_name="fast", max_retries=2, retry_delay=0)
        # later: not served by this worker, not due for an hour.
        for _ in range(2):
            await oq.enqueue_async(ADD, [0, 0], queue_name="later", run_in=3600)
        await oq.schedule_async(
            ADD,
            [1, 1],
            interval=60,
            start_at=oq.services.storage.now() - timedelta(hours=1),
            name="hourly-sum",
        )

        metrics = WorkerMetrics()
        worker = await oq.start_worker_async(
            queues=["fast", "slow"],
            concurrency=3,
            prefetch=0,
            executor="thread",
            poll_interval=0.05,
            run_scheduler=False,  # the schedule stays overdue
            metrics=metrics,
            allow_modules=["tests.worker_tasks"],
        )
        assert isinstance(worker, Worker) and worker.metrics is metrics
        server = start_metrics_server(oq, port=0, worker=metrics)
        try:

            async def fast_done() -> bool:
                stats = worker.get_stats()
                return (stats.completed, stats.failed, stats.retried) == (2, 1, 2)

            await wait_until(fast_done, "the fast tasks to finish")
            # slow: four held on a gate; three run (concurrency 3), one waits, due.
            for _ in range(4):
                await oq.enqueue_async(BLOCK, [key], queue_name="slow")

            async def settled() -> bool:
                db = await counts(raw_engine)
                return (
                    db.get(("slow", "running")) == 3
                    and db.get(("fast", "completed")) == 2
                    and db.get(("fast", "failed")) == 1
                    and worker.running_per_queue() == {"slow": 3}
                    and worker.get_stats().completed == 2
                    and worker.get_stats().failed == 1
                )

            await wait_until(settled, "three slow tasks running, the fast ones finished")
            before = await counts(raw_engine)
            samples = await scrape(server.url)
            assert await counts(raw_engine) == before  # nothing moved during the scrape

            # The gauges are the database's GROUP BY, zero for statuses it lacks.
            tasks = by_label(samples, "omniq_tasks", "queue", "status")
            assert {k: v for k, v in tasks.items() if v} == before
            assert {q for q, _ in tasks} == {"fast", "slow", "later"}
            assert pick(samples, "omniq_database_up") == 1
            assert pick(samples, "omniq_tasks_running", queue="slow") == 3
            assert pick(samples, "omniq_tasks_running", queue="fast") == 0
            ages = by_label(samples, "omniq_queue_oldest_pending_age_seconds", "queue")
            assert ages[("slow",)] > 0  # one due task waits
            assert ages[("later",)] == 0 and ages[("fast",)] == 0  # none due / none pending
            assert pick(samples, "omniq_workers", state="alive") == 1
            assert pick(samples, "omniq_workers", state="lost") == 0
            lag = pick(samples, "omniq_schedule_lag_seconds", schedule="hourly-sum")
            assert 3600 <= lag < 3600 + 300

            # Counters: the tasks that finished, and every retry.
            finished = by_label(samples, "omniq_tasks_finished_total", "queue", "task", "outcome")
            assert finished == {("fast", ADD, "completed"): 2, ("fast", FAILS, "failed"): 1}
            retries = by_label(samples, "omniq_task_retries_total", "queue", "task")
            assert retries == {("fast", FAILS): 2}
            # Histograms count every attempt: ended ones for durations, started ones for waits.
            durations = by_label(samples, "omniq_task_duration_seconds_count", "queue", "task")
            assert durations == {("fast", ADD): 2, ("fast", FAILS): 3}
            waits = by_label(samples, "omniq_task_wait_seconds_count", "queue")
            assert waits == {("fast",): 5, ("slow",): 3}
            assert (
                pick(
                    samples, "omniq_task_duration_seconds_bucket", queue="fast", task=ADD, le="+Inf"
                )
                == 2
            )
            # No label carries a task id or an argument.
            ids = {t.id for t in await oq.list_tasks_async(limit=100)}
            labels = {v for (_, pairs) in samples for _, v in pairs}
            assert not ids & labels and "boom" not in labels

            worker_tasks.release(key)

            async def drained() -> bool:
                db = await counts(raw_engine)
                return db.get(("slow", "completed")) == 4 and worker.get_stats().completed == 6

            await wait_until(drained, "the slow tasks to complete")
            after = await scrape(server.url)
            assert pick(after, "omniq_tasks", queue="slow", status="completed") == 4
            assert pick(after, "omniq_tasks", queue="slow", status="running") == 0
            assert pick(after, "omniq_tasks_running", queue="slow") == 0
            assert (
                pick(
                    after,
                    "omniq_tasks_finished_total",
                    queue="slow",
                    task=BLOCK,
                    outcome="completed",
                )
                == 4
            )
            assert pick(after, "omniq_task_duration_seconds_count", queue="slow", task=BLOCK) == 4
            assert pick(after, "omniq_task_wait_seconds_count", queue="slow") == 4
        finally:
            worker_tasks.release(key)
            server.close()
            await oq.stop_worker_async()


async def test_a_worker_without_metrics_calls_no_hook(db_url: str) -> None:
    async with AsyncOmniQ(url=db_url) as oq:
        await oq.enqueue_async(ADD, [1, 2])
        worker = Worker(oq.services.queue, allow_modules=["tests.worker_tasks"])
        assert worker.metrics is None
        stats = await worker.run_until_complete_async()
        assert stats.completed == 1


async def test_gauges_report_the_database_down_instead_of_failing_the_scrape(
    tmp_path: Path,
) -> None:
    never_opened = AsyncOmniQ(url=f"sqlite+aiosqlite:///{tmp_path / 'never-opened.db'}")
    with start_metrics_server(never_opened, port=0, worker=WorkerMetrics()) as server:
        text = await asyncio.to_thread(lambda: urllib.request.urlopen(server.url).read().decode())
    samples = parse(text)
    assert pick(samples, "omniq_database_up") == 0
    assert not by_label(samples, "omniq_tasks", "queue", "status")
    # The worker's own metrics are still served (nothing counted yet).
    assert "# TYPE omniq_task_duration_seconds histogram" in text
    assert "# TYPE omniq_tasks_finished_total counter" in text


async def test_collector_read_async_on_the_owning_loop(db_url: str) -> None:
    async with AsyncOmniQ(url=db_url) as oq:
        await oq.enqueue_async(ADD, [1, 2], queue_name="q1")
        gauges = await DatabaseCollector(oq).read_async()
        assert gauges.tasks == {("q1", "pending"): 1}
        assert gauges.workers == {"alive": 0, "lost": 0}
        # Blocking collect() on this very loop would deadlock: it reports the database down.
        (up, *_rest) = list(DatabaseCollector(oq).collect())
        assert up.samples[0].value == 0


async def test_two_workers_in_one_process_keep_their_own_metrics(db_url: str) -> None:
    async with AsyncOmniQ(url=db_url) as oq:
        for i in range(20):
            await oq.enqueue_async(ADD, [i, i])
        metrics = [WorkerMetrics(), WorkerMetrics()]
        workers = [
            Worker(oq.services.queue, allow_modules=["tests.worker_tasks"], metrics=m)
            for m in metrics
        ]
        servers = [start_metrics_server(oq, port=0, worker=m) for m in metrics]
        try:
            stats = await asyncio.gather(*(w.run_until_complete_async() for w in workers))
            scraped = [await scrape(server.url) for server in servers]
        finally:
            for server in servers:
                server.close()
        for one, samples in zip(stats, scraped, strict=True):
            counted = by_label(samples, "omniq_tasks_finished_total", "task", "outcome")
            assert counted.get((ADD, "completed"), 0) == one.completed
            assert pick(samples, "omniq_tasks", queue="default", status="completed") == 20
        assert sum(s.completed for s in stats) == 20
