"""`omniq worker` started while its PostgreSQL server cannot be reached (a compose file
that starts both at once, a server restarting): it waits, saying why, and serves once
the server answers; a SIGTERM meanwhile stops it cleanly, even in the middle of a
connection attempt the server does not answer. Errors that waiting cannot cure (a
missing database, a wrong user, a TLS setting the server refuses) still end it at
once, as `--burst` does for any. The server is made unreachable by the tests' own TCP
proxy refusing connections, or accepting them and passing nothing on."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import IO

import pytest
import sqlalchemy as sa

from omniq.models import TaskStatus
from omniq.services import Services
from tests import waiting
from tests.faults import MODULE, ROOT, ref
from tests.faults.proxy import FaultProxy

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(120)]

WAITING = "waiting for the database"


class CliWorker:
    """``python -m omniq worker --url URL ...`` with its output in a file."""

    def __init__(self, url: str, log: Path, *options: str) -> None:
        self.log = log
        self._out: IO[bytes] = log.open("wb")
        env = {**os.environ, "PYTHONPATH": ROOT}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "omniq", "worker", "--url", url, *options],
            stdout=self._out,
            stderr=subprocess.STDOUT,
            cwd=ROOT,
            env=env,
        )

    def output(self) -> str:
        self._out.flush()
        return self.log.read_text(errors="replace")

    def alive(self) -> bool:
        if self.proc.poll() is not None:
            pytest.fail(f"the worker exited ({self.proc.returncode}):\n{self.output()}")
        return True

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(30)
        self._out.close()


@pytest.fixture
def cli_workers(tmp_path: Path) -> Iterator[list[CliWorker]]:
    started: list[CliWorker] = []
    yield started
    for worker in started:
        worker.close()


def start(started: list[CliWorker], tmp_path: Path, url: str, *options: str) -> CliWorker:
    worker = CliWorker(url, tmp_path / f"worker-{len(started)}.log", *options)
    started.append(worker)
    return worker


def exit_code(worker: CliWorker) -> int:
    try:
        return worker.proc.wait(waiting.DEADLINE)
    except subprocess.TimeoutExpired:
        pytest.fail(f"the worker did not exit:\n{worker.output()}")


async def test_a_worker_started_before_its_database_waits_for_it_then_serves(
    pg_proxy: tuple[FaultProxy, str, str], tmp_path: Path, cli_workers: list[CliWorker]
) -> None:
    proxy, url, direct = pg_proxy
    proxy.refuse()
    worker = start(cli_workers, tmp_path, url, "--app", MODULE, "--concurrency", "2")

    def tried_twice() -> bool:
        return worker.alive() and worker.output().count(WAITING) >= 2

    # It is still trying (not exited) after two refused tries, and says why.
    waiting.wait_until_sync(tried_twice, "the worker to try the refused database twice")
    assert "connection refused" in worker.output()

    runs = tmp_path / "runs.txt"
    svc = await Services.open_async(direct)
    try:
        task_id = await svc.queue.enqueue_async(ref("record"), [str(runs), "after the wait"])
        proxy.resume()

        async def finished() -> bool:
            worker.alive()
            task = await svc.queue.get_task_async(task_id)
            return task is not None and task.is_final

        await waiting.wait_until(finished, "the worker to run the task once the server answers")
        task = await svc.queue.get_task_async(task_id)
        assert task is not None and task.status is TaskStatus.COMPLETED, worker.output()
        assert runs.read_text().splitlines() == ["after the wait"]
    finally:
        await svc.close_async()

    worker.proc.send_signal(signal.SIGTERM)
    assert exit_code(worker) == 0, worker.output()
    assert "stopped after" in worker.output() and "1 succeeded" in worker.output()


async def test_sigterm_while_a_worker_waits_for_its_database_stops_it_cleanly(
    pg_proxy: tuple[FaultProxy, str, str], tmp_path: Path, cli_workers: list[CliWorker]
) -> None:
    proxy, url, _ = pg_proxy
    proxy.refuse()
    worker = start(cli_workers, tmp_path, url)
    waiting.wait_until_sync(
        lambda: worker.alive() and WAITING in worker.output(),
        "the worker to find the database unreachable",
    )
    worker.proc.send_signal(signal.SIGTERM)
    assert exit_code(worker) == 0, worker.output()
    out = worker.output()
    assert "SIGTERM received before the database could be reached" in out
    assert "Traceback" not in out


async def test_sigterm_during_a_connection_attempt_nobody_answers_stops_the_worker(
    pg_proxy: tuple[FaultProxy, str, str], tmp_path: Path, cli_workers: list[CliWorker]
) -> None:
    """A server that takes the connection and never answers holds a try until the
    connection timeout (a minute by default): the SIGTERM must not wait for it."""
    proxy, url, _ = pg_proxy
    proxy.stall()
    worker = start(cli_workers, tmp_path, url)
    waiting.wait_until_sync(
        lambda: worker.alive() and proxy.clients > 0, "the worker to connect through the proxy"
    )
    worker.proc.send_signal(signal.SIGTERM)
    assert exit_code(worker) == 0, worker.output()
    out = worker.output()
    assert "SIGTERM received before the database could be reached" in out, out
    assert "Traceback" not in out


async def test_errors_that_waiting_cannot_cure_end_a_serving_worker_at_once(
    pg_proxy: tuple[FaultProxy, str, str], tmp_path: Path, cli_workers: list[CliWorker]
) -> None:
    _, _, direct = pg_proxy
    base = sa.make_url(direct)
    for target, words in [
        (base.set(database="omniq_no_such_database"), "does not exist"),
        (base.set(username="omniq_no_such_user", password=None), "authentication failed"),
        # The tests' server has no TLS: asyncpg says it "rejected SSL upgrade".
        (base.update_query_dict({"ssl": "require"}), "SSL"),
    ]:
        worker = start(cli_workers, tmp_path, target.render_as_string(hide_password=False))
        assert exit_code(worker) == 1, worker.output()
        out = worker.output()
        assert words in out and WAITING not in out, out
