"""Work enqueued by another process wakes an idle worker at once, on every engine.

PostgreSQL LISTENs (revision 0004's triggers); on a SQLite file a watch reads
the file's change counter (``PRAGMA data_version``) every few milliseconds
and wakes the worker when another process's commit made a task ready
(:mod:`omniq.services.sqlite_watch`). Before the watch, a worker on SQLite
found another process's task only at its next poll: up to ``poll_interval``
later after a quiet spell.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest

from omniq.services import Services, TaskQueue
from omniq.worker import Worker

_ROOT = Path(__file__).resolve().parents[2]
if str(_ROOT) not in sys.path:
    sys.path.append(str(_ROOT))

from tests.claim_times import ClaimTimes, spaced  # noqa: E402
from tests.waiting import wait_until  # noqa: E402

pytestmark = pytest.mark.anyio

POLL = 30.0  # the worker's poll interval: far longer than any wait below

#: A producer process: opens the database, says "ready", and on each line of
#: stdin enqueues ``tests.worker_tasks:add`` with that line's arguments (a
#: JSON array, and the keyword options of build_task) and prints the task's id.
_PRODUCER = textwrap.dedent(
    """
    import asyncio, json, sys
    from omniq.services import Services

    async def main(url):
        services = await Services.open_async(url)
        try:
            print("ready", flush=True)
            loop = asyncio.get_running_loop()
            while line := await loop.run_in_executor(None, sys.stdin.readline):
                args, options = json.loads(line)
                task_id = await services.queue.enqueue_async(
                    "tests.worker_tasks:add", args, **options
                )
                print(task_id, flush=True)
        finally:
            await services.close_async()

    asyncio.run(main(sys.argv[1]))
    """
)


class Producer:
    """The producer process, driven line by line."""

    def __init__(self, url: str) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-c", _PRODUCER, url],
            cwd=_ROOT,
            env={**os.environ, "PYTHONPATH": str(_ROOT)},
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        assert self._line() == "ready"

    def _line(self) -> str:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            _, err = self.proc.communicate(timeout=30)
            pytest.fail(f"the producer exited: {err}")
        return line.strip()

    def enqueue(self, args: list[Any], **options: Any) -> tuple[str, float]:
        """Enqueue in the producer; (task id, monotonic time once it was committed)."""
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps([args, options]) + "\n")
        self.proc.stdin.flush()
        task_id = self._line()
        return task_id, time.monotonic()

    def close(self) -> None:
        """End of input: the producer exits (its pipes are closed here)."""
        _, err = self.proc.communicate(timeout=30)
        assert self.proc.returncode == 0, err


def _worker(svc: Services, queue: TaskQueue) -> Worker:
    return Worker(
        queue,
        svc.results,
        svc.events,
        allow_modules=["tests.worker_tasks"],
        queues=["default"],
        poll_interval=POLL,
        run_scheduler=False,
        run_maintenance=False,
    )


async def test_a_task_enqueued_by_another_process_starts_before_the_next_poll(
    db_url: str, svc: Services
) -> None:
    producer = Producer(db_url)
    queue = ClaimTimes(svc.queue)
    worker = _worker(svc, queue)
    await worker.start_async()
    try:
        for n in range(3):
            # From here on the worker's next poll is at least twice this gap away.
            gap = await spaced(queue, 1.0)
            last = queue.claim_times[-1]
            task_id, _ = producer.enqueue([n, 1])
            result = await svc.results.wait_async(task_id, timeout=POLL)
            assert result is not None and result.result == n + 1
            queue.woken_for(task_id, last, gap)
    finally:
        await worker.stop_async(grace_period=1.0)
        producer.close()


async def test_another_process_commit_that_makes_nothing_ready_wakes_no_claim(
    db_url: str, svc: Services
) -> None:
    if svc.storage.dialect.name != "sqlite":
        pytest.skip(
            "PostgreSQL's trigger notifies for a due task of any queue: a worker of "
            "other queues wakes, and its claim finds nothing"
        )
    producer = Producer(db_url)
    queue = ClaimTimes(svc.queue)
    worker = _worker(svc, queue)
    await worker.start_async()
    try:
        gap = await spaced(queue, 1.0)
        last = queue.claim_times[-1]
        claims = len(queue.claim_times)
        # Due in an hour, and in a queue this worker does not serve: nothing to claim.
        later, committed = producer.enqueue([0, 0], run_in=3600)
        elsewhere, _ = producer.enqueue([0, 0], queue_name="elsewhere")

        async def polled() -> bool:
            return len(queue.claim_times) > claims

        await wait_until(polled, "the next poll", timeout=POLL)
        # The next claim was the poll (about 2 x gap after the last), not a wake-up.
        assert queue.claim_times[claims] - last > 1.5 * gap, (
            f"a claim {queue.claim_times[claims] - committed:.2f}s after a commit "
            "that made nothing ready"
        )
        for task_id in (later, elsewhere):
            assert (await svc.queue.get_task_async(task_id)).status.value == "pending"
        # Ready work still wakes it at once.
        gap = await spaced(queue, 1.0)
        last = queue.claim_times[-1]
        task_id, _ = producer.enqueue([5, 5])
        result = await svc.results.wait_async(task_id, timeout=POLL)
        assert result is not None and result.result == 10
        queue.woken_for(task_id, last, gap)
    finally:
        await worker.stop_async(grace_period=1.0)
        producer.close()
