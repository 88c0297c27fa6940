"""Progress reported from inside tasks, on every engine and executor.

A task reports 0..100 and waits at checkpoints (file gates in tmp_path) so a
reader sees the stored value move without sleeping; reports are coalesced to
a few writes per second; the last report is stored before the outcome; a
worker killed while its task waits leaves the task's last progress stored.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import IO, Any

import pytest
import sqlalchemy as sa

from omniq.db.schema import task_progress
from omniq.errors import TaskNotFound
from omniq.models import TaskProgress, TaskStatus
from omniq.services import Services
from omniq.worker import Worker
from omniq.worker.progress import FLUSH_INTERVAL

_ROOT = Path(__file__).resolve().parents[2]
if str(_ROOT) not in sys.path:
    sys.path.append(str(_ROOT))

from tests import progress_tasks  # noqa: E402
from tests.waiting import wait_until  # noqa: E402

pytestmark = pytest.mark.anyio

MODULE = "tests.progress_tasks"

#: (executor, function): the async executor runs the coroutine on its loop;
#: thread and process run the sync function in a pool thread / child process.
EXECUTORS = [
    pytest.param("async", "count_to_100_async", id="async"),
    pytest.param("thread", "count_to_100", id="thread"),
    pytest.param("process", "count_to_100", id="process"),
]


def make_worker(svc: Services, executor: str) -> Worker:
    return Worker(
        svc.queue,
        svc.results,
        svc.events,
        executor=executor,
        concurrency=2,
        allow_modules=[MODULE],
        poll_interval=0.05,
        run_scheduler=False,
        run_maintenance=False,
    )


@pytest.fixture
async def svc(db_url: str) -> AsyncIterator[Services]:
    services = await Services.open_async(db_url)
    try:
        yield services
    finally:
        await services.close_async()


async def progress_of(svc: Services, task_id: str) -> TaskProgress | None:
    return await svc.queue.get_progress_async(task_id)


@pytest.mark.parametrize(("executor", "func"), EXECUTORS)
async def test_a_reader_sees_progress_move_and_end_at_100(
    svc: Services, tmp_path: Path, executor: str, func: str
) -> None:
    task_id = await svc.queue.enqueue_async(f"{MODULE}:{func}", [str(tmp_path)], queue_name="q1")
    assert await progress_of(svc, task_id) is None  # nothing reported yet
    worker = make_worker(svc, executor)
    await worker.start_async()
    seen: list[float] = []
    try:
        for checkpoint in progress_tasks.CHECKPOINTS:

            async def at_checkpoint(cp: int = checkpoint) -> bool:
                progress = await progress_of(svc, task_id)
                return progress is not None and progress.done == cp

            await wait_until(at_checkpoint, f"progress {checkpoint} stored")
            progress = await progress_of(svc, task_id)
            assert progress is not None
            seen.append(progress.done)
            assert progress.total == 100
            assert progress.message == f"step {checkpoint}"
            assert progress.percent == checkpoint
            assert progress.attempt == 1
            task = await svc.queue.get_task_async(task_id)
            assert task is not None and task.status is TaskStatus.RUNNING
            (tmp_path / str(checkpoint)).touch()

        async def completed() -> bool:
            task = await svc.queue.get_task_async(task_id)
            return task is not None and task.status is TaskStatus.COMPLETED

        await wait_until(completed, "the task completed")
    finally:
        await worker.stop_async(grace_period=5)
    assert seen == [25, 50, 75]
    final = await progress_of(svc, task_id)
    assert final is not None
    assert (final.done, final.total, final.message) == (100, 100, "step 100")
    assert final.fraction == 1.0
    result = await svc.results.get_async(task_id)
    assert result is not None
    # current_task() inside the function described the task.
    assert result.result == {
        "id": task_id,
        "attempt": 1,
        "queue": "q1",
        "func": f"{MODULE}:{func}",
    }


@pytest.fixture
def progress_statements() -> Iterator[list[str]]:
    """SQL statements that write omniq_task_progress, on every engine of this process."""
    seen: list[str] = []

    def record(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        if "omniq_task_progress" in statement and statement.lstrip().upper().startswith("INSERT"):
            seen.append(statement)

    sa.event.listen(sa.engine.Engine, "before_cursor_execute", record)
    try:
        yield seen
    finally:
        sa.event.remove(sa.engine.Engine, "before_cursor_execute", record)


@pytest.mark.parametrize("executor", ["thread", "process"])
async def test_ten_thousand_reports_make_a_handful_of_writes(
    svc: Services, progress_statements: list[str], executor: str
) -> None:
    task_id = await svc.queue.enqueue_async(f"{MODULE}:report_many", [10_000])
    stats = await make_worker(svc, executor).run_until_complete_async()
    assert stats.completed == 1
    result = await svc.results.get_async(task_id)
    assert result is not None
    elapsed = result.result  # seconds the 10,001 calls took inside the function
    final = await progress_of(svc, task_id)
    assert final is not None and (final.done, final.total) == (10_000, 10_000)
    # One write per flush interval at most, plus the final one (and one spare).
    assert 1 <= len(progress_statements) <= elapsed / FLUSH_INTERVAL + 3
    assert len(progress_statements) < 100


async def test_progress_of_an_unknown_task_raises(svc: Services) -> None:
    with pytest.raises(TaskNotFound):
        await svc.queue.get_progress_async("no-such-task")


async def test_invalid_progress_raises_a_typed_error_in_the_task(svc: Services) -> None:
    cases = {
        "negative": ([-1, None, None], "done: must be >= 0"),
        "zero total": ([1, 0, None], "total: must be > 0"),
        "over": ([5, 4, None], "done: 5 is more than total 4"),
        "long": ([1, 2, "x" * 1001], "message: 1001 characters"),
        "text done": (["1", None, None], "done: expected a number"),
    }
    ids = {
        name: await svc.queue.enqueue_async(f"{MODULE}:bad_progress", args)
        for name, (args, _) in cases.items()
    }
    await make_worker(svc, "thread").run_until_complete_async()
    for name, (_, expected) in cases.items():
        result = await svc.results.get_async(ids[name])
        assert result is not None
        assert result.result.startswith("ValidationError: "), name
        assert expected in result.result, name
        assert await progress_of(svc, ids[name]) is None  # nothing stored


def start_worker(db_url: str, executor: str, log: IO[bytes]) -> subprocess.Popen[bytes]:
    """tests/worker_process.py on ``db_url``, allowed to run tests/progress_tasks.py."""
    script = str(_ROOT / "tests" / "worker_process.py")
    options = ["--worker-id", "victim", "--executor", executor, "--allow", MODULE]
    return subprocess.Popen(
        [sys.executable, script, db_url, *options],
        stdout=log,
        stderr=subprocess.STDOUT,
        cwd=_ROOT,
    )


@pytest.mark.slow
@pytest.mark.parametrize("executor", ["thread", "process"])
async def test_a_killed_worker_leaves_the_last_progress_stored(
    db_url: str, svc: Services, tmp_path: Path, executor: str
) -> None:
    task_id = await svc.queue.enqueue_async(f"{MODULE}:report_then_hang", [str(tmp_path)])
    log_path = tmp_path / "worker.log"
    with log_path.open("wb") as log:
        proc = start_worker(db_url, executor, log)
        try:

            async def reported() -> bool:
                if proc.poll() is not None:
                    pytest.fail(f"the worker exited early:\n{log_path.read_text()}")
                return await progress_of(svc, task_id) is not None

            await wait_until(reported, "the task's progress stored")
            proc.send_signal(signal.SIGKILL)
            assert proc.wait(timeout=30) == -signal.SIGKILL
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(timeout=30)
    task = await svc.queue.get_task_async(task_id)
    assert task is not None and task.status is TaskStatus.RUNNING  # left to lease recovery
    progress = await progress_of(svc, task_id)
    assert progress is not None
    assert (progress.done, progress.total, progress.message) == (40, 100, "stuck at 40")
    assert progress.attempt == 1


def test_current_task_outside_a_task_raises_no_current_task() -> None:
    assert "outside a task" in progress_tasks.no_task_error()
    # Nor in a thread of its own.
    box: list[str] = []
    thread = threading.Thread(target=lambda: box.append(progress_tasks.no_task_error()))
    thread.start()
    thread.join()
    assert "outside a task" in box[0]


@pytest.mark.parametrize("executor", ["thread", "process"])
async def test_a_retry_reports_again_under_its_own_attempt(svc: Services, executor: str) -> None:
    task_id = await svc.queue.enqueue_async(
        f"{MODULE}:fail_first_attempt", max_retries=1, retry_delay=0
    )
    stats = await make_worker(svc, executor).run_until_complete_async()
    assert (stats.retried, stats.completed) == (1, 1)
    progress = await progress_of(svc, task_id)
    assert progress is not None
    assert (progress.attempt, progress.done, progress.message) == (2, 2, "attempt 2")
    task = await svc.queue.get_task_async(task_id)
    assert task is not None and task.attempts == 2


async def test_progress_is_deleted_with_its_task(svc: Services) -> None:
    task_id = await svc.queue.enqueue_async(f"{MODULE}:report_many", [10])
    await make_worker(svc, "thread").run_until_complete_async()
    assert await progress_of(svc, task_id) is not None
    assert await svc.queue.delete_task_async(task_id)
    with pytest.raises(TaskNotFound):
        await progress_of(svc, task_id)

    def rows(conn: sa.Connection) -> int:
        return len(conn.execute(sa.select(task_progress.c.task_id)).all())

    assert await svc.storage.read(rows) == 0
