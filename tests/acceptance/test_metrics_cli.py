"""Prometheus metrics from the command line: `omniq metrics --port` and
`omniq worker --metrics-port`, scraped over HTTP as Prometheus would."""

from __future__ import annotations

import asyncio
import os
import queue
import re
import signal
import socket
import subprocess
import sys
import threading
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO

import pytest
import sqlalchemy as sa

pytest.importorskip("prometheus_client", reason='metrics tests need "omniq[metrics]"')

from prometheus_client.parser import text_string_to_metric_families

from omniq import OmniQ
from omniq.db.engine import create_engine
from omniq.db.schema import tasks as tasks_table
from tests.waiting import wait_until_sync

ROOT = Path(__file__).resolve().parents[2]
APP = "tests.acceptance.cli_tasks"
URL_LINE = re.compile(r"(http://\S+/metrics)")


def _lines(stream: IO[str], into: queue.Queue[str]) -> None:
    for line in stream:
        into.put(line)


@contextmanager
def command(db_url: str, *args: str, url_from: str) -> Iterator[tuple[subprocess.Popen[str], str]]:
    """Run `omniq ARGS`; yield it and the metrics URL it announced on ``url_from``."""
    env = {**os.environ, "OMNIQ_DATABASE_URL": db_url, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "omniq", *args],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    lines: queue.Queue[str] = queue.Queue()
    stream = proc.stdout if url_from == "stdout" else proc.stderr
    assert stream is not None
    threading.Thread(target=_lines, args=(stream, lines), daemon=True).start()
    seen: list[str] = []
    try:
        while True:
            try:
                line = lines.get(timeout=60)
            except queue.Empty:
                pytest.fail(f"no metrics URL announced; got {seen!r}")
            seen.append(line)
            found = URL_LINE.search(line)
            if found:
                break
        yield proc, found.group(1)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=30)


def scrape(url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    with urllib.request.urlopen(url, timeout=30) as response:
        text = response.read().decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def task_gauges(samples: dict[tuple[str, tuple[tuple[str, str], ...]], float]) -> dict:
    """The non-zero omniq_tasks samples as {(queue, status): count}."""
    return {
        (dict(labels)["queue"], dict(labels)["status"]): int(v)
        for (n, labels), v in samples.items()
        if n == "omniq_tasks" and v
    }


def db_counts(db_url: str) -> dict[tuple[str, str], int]:
    """SELECT queue_name, status, count(*) FROM omniq_tasks GROUP BY queue_name, status."""

    async def run() -> dict[tuple[str, str], int]:
        engine = create_engine(db_url)
        t = tasks_table
        stmt = sa.select(t.c.queue_name, t.c.status, sa.func.count()).group_by(
            t.c.queue_name, t.c.status
        )
        try:
            async with engine.connect() as conn:
                return {(q, s): int(n) for q, s, n in (await conn.execute(stmt)).all()}
        finally:
            await engine.dispose()

    return asyncio.run(run())


def test_omniq_metrics_serves_the_database_gauges(db_url: str) -> None:
    with OmniQ(url=db_url) as oq:
        for _ in range(3):
            oq.enqueue(f"{APP}:add", [1, 2], queue_name="alpha")
        oq.enqueue(f"{APP}:add", [1, 2], queue_name="beta")
        with command(db_url, "metrics", "--port", "0", url_from="stdout") as (proc, url):
            samples = scrape(url)
            assert task_gauges(samples) == db_counts(db_url)
            assert task_gauges(samples) == {("alpha", "pending"): 3, ("beta", "pending"): 1}
            assert samples[("omniq_workers", (("state", "alive"),))] == 0
            assert samples[("omniq_database_up", ())] == 1
            # No worker here: no per-process metrics.
            assert not any(name.startswith("omniq_task_") for name, _ in samples)
            # Read at each scrape, not cached.
            oq.enqueue(f"{APP}:add", [1, 2], queue_name="beta")
            assert task_gauges(scrape(url))[("beta", "pending")] == 2
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=30) == 0


def test_worker_metrics_port_serves_its_counters_and_the_gauges(
    db_url: str, tmp_path: Path
) -> None:
    marker = tmp_path / "started.txt"
    with OmniQ(url=db_url) as oq:
        for i in range(2):
            oq.enqueue(f"{APP}:add", [i, 1])
        oq.enqueue(f"{APP}:boom", max_retries=0)
        oq.enqueue(f"{APP}:slow", [120, str(marker)], queue_name="long")
    args = ("worker", "--app", APP, "--executor", "thread", "--poll-interval", "0.1s")
    args += ("--queues", "default,long", "--grace-period", "0.5s", "--metrics-port", "0")
    with command(db_url, *args, url_from="stderr") as (proc, url):
        finished = ("omniq_tasks_finished_total",)

        def settled() -> bool:
            samples = scrape(url)
            done = {
                (dict(labels)["task"], dict(labels)["outcome"]): v
                for (n, labels), v in samples.items()
                if n in finished
            }
            running = samples.get(("omniq_tasks_running", (("queue", "long"),)))
            return (
                marker.exists()
                and running == 1
                and done == {(f"{APP}:add", "completed"): 2, (f"{APP}:boom", "failed"): 1}
            )

        wait_until_sync(settled, "the worker's counters to show its finished tasks")
        before = db_counts(db_url)
        samples = scrape(url)
        assert db_counts(db_url) == before
        assert task_gauges(samples) == before
        assert before == {
            ("default", "completed"): 2,
            ("default", "failed"): 1,
            ("long", "running"): 1,
        }
        assert samples[("omniq_workers", (("state", "alive"),))] == 1
        duration = samples[
            ("omniq_task_duration_seconds_count", (("queue", "default"), ("task", f"{APP}:add")))
        ]
        assert duration == 2
        assert samples[("omniq_task_wait_seconds_count", (("queue", "default"),))] == 3
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0


def test_worker_metrics_port_in_use_is_a_clear_error(db_url: str) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        env = {**os.environ, "OMNIQ_DATABASE_URL": db_url, "PYTHONPATH": str(ROOT)}
        proc = subprocess.run(
            [sys.executable, "-m", "omniq", "worker", "--burst", "--metrics-port", str(port)],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert proc.returncode == 2  # a bad option value
    assert f"omniq: error: cannot serve metrics on 127.0.0.1:{port}" in proc.stderr
