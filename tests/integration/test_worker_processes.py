"""Workers as OS processes on one database (SQLite file, PostgreSQL): crash recovery
after kill -9, exactly-once execution across processes, graceful SIGTERM shutdown, and
cancellation reaching a worker in another process.

Each worker runs tests/worker_process.py; task functions are in tests/worker_tasks.py
and record every execution as a line in a file in tmp_path, so that executions are
counted independently of the database.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import IO

import anyio
import pytest

from omniq.models import EventType, Task, TaskStatus
from omniq.services import Services

_ROOT = Path(__file__).resolve().parents[2]
if str(_ROOT) not in sys.path:
    sys.path.append(str(_ROOT))

from tests import worker_tasks  # noqa: E402

pytestmark = [pytest.mark.anyio, pytest.mark.slow]

SCRIPT = _ROOT / "tests" / "worker_process.py"
RECORD = "tests.worker_tasks:record"
DEADLINE = 60.0


# --- worker processes ---------------------------------------------------------------------------


class WorkerProcess:
    """One ``tests/worker_process.py`` subprocess; its output goes to a log file."""

    def __init__(self, url: str, log_dir: Path, worker_id: str, *options: str) -> None:
        self.worker_id = worker_id
        self.log_path = log_dir / f"{worker_id}.log"
        self._log: IO[bytes] = self.log_path.open("wb")
        self.proc = subprocess.Popen(
            [sys.executable, str(SCRIPT), url, "--worker-id", worker_id, *options],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            cwd=_ROOT,
        )

    @property
    def pid(self) -> int:
        return self.proc.pid

    def signal(self, sig: signal.Signals) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)

    async def wait_exit(self, timeout: float = DEADLINE) -> int:
        """Wait (polling) for the process to exit; return its exit code."""
        deadline = time.monotonic() + timeout
        while (code := self.proc.poll()) is None:
            if time.monotonic() > deadline:
                pytest.fail(f"worker {self.worker_id} did not exit within {timeout:g}s")
            await anyio.sleep(0.02)
        return code

    def output(self) -> str:
        self._log.flush()
        return self.log_path.read_text(errors="replace")

    def cleanup(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=30)
        self._log.close()


@pytest.fixture
async def spawn(db_url: str, tmp_path: Path) -> AsyncIterator[Callable[..., WorkerProcess]]:
    """Start worker processes on the test database; any still alive are killed at the end."""
    started: list[WorkerProcess] = []

    def start(worker_id: str, *options: str) -> WorkerProcess:
        process = WorkerProcess(db_url, tmp_path, worker_id, *options)
        started.append(process)
        return process

    try:
        yield start
    finally:
        for process in started:
            process.cleanup()


async def wait_until(
    condition: Callable[[], Awaitable[bool]],
    what: str,
    timeout: float = DEADLINE,
    workers: tuple[WorkerProcess, ...] = (),
) -> None:
    """Poll ``condition``; fail naming ``what`` (with the workers' output) on timeout."""
    deadline = time.monotonic() + timeout
    while not await condition():
        for worker in workers:
            if worker.proc.poll() is not None:
                pytest.fail(
                    f"worker {worker.worker_id} exited ({worker.proc.returncode}) while "
                    f"waiting for {what}:\n{worker.output()}"
                )
        if time.monotonic() > deadline:
            logs = "\n".join(f"--- {w.worker_id}:\n{w.output()}" for w in workers)
            pytest.fail(f"timed out after {timeout:g}s waiting for {what}\n{logs}")
        await anyio.sleep(0.02)


async def status_counts(svc: Services) -> dict[str, int]:
    return (await svc.queue.stats_async()).get("default", {})


async def all_final(svc: Services) -> bool:
    counts = await status_counts(svc)
    return not any(counts.get(s, 0) for s in ("pending", "waiting", "running"))


async def all_tasks(svc: Services) -> list[Task]:
    tasks: list[Task] = []
    while batch := await svc.queue.list_tasks_async(limit=1000, offset=len(tasks)):
        tasks.extend(batch)
    return tasks


# --- crash recovery -----------------------------------------------------------------------------


async def test_killed_worker_tasks_are_recovered_and_rerun_boundedly(
    svc: Services, spawn: Callable[..., WorkerProcess], tmp_path: Path
) -> None:
    kills = 3
    concurrency = 4
    count = 200
    log = tmp_path / "executions"
    for i in range(count):
        seconds = 0.02 + (i % 4) * 0.01  # 20-50 ms of work each
        await svc.queue.enqueue_async(
            "tests.worker_tasks:record_and_sleep",
            [str(log), f"t{i}", seconds],
            max_retries=kills + 2,
            retry_delay=0,
        )
    # A lease that a stall of a loaded machine cannot outlast by chance.
    lease = ("--lease", "5", "--heartbeat", "0.5")
    victim_options = (*lease, "--concurrency", str(concurrency))

    # Kill the worker while it holds claimed tasks, restart it, a few times. Nobody
    # recovers the killed tasks meanwhile: their leases just expire.
    for k in range(kills):
        victim = spawn(f"victim-{k}", *victim_options)

        async def victim_holds_tasks(worker_id: str = victim.worker_id) -> bool:
            running = await svc.queue.list_tasks_async(status="running", limit=1000)
            return any(task.worker_id == worker_id for task in running)

        await wait_until(victim_holds_tasks, f"victim-{k} to claim tasks", workers=(victim,))
        victim.signal(signal.SIGKILL)
        assert await victim.wait_exit() == -signal.SIGKILL

    # Restarted once more, with a second worker that runs maintenance (lease recovery).
    last = spawn(f"victim-{kills}", *victim_options)
    keeper = spawn("keeper", *lease, "--concurrency", "2", "--maintenance-interval", "0.3")
    await wait_until(
        lambda: all_final(svc), "every task to finish", timeout=90, workers=(last, keeper)
    )
    for worker in (last, keeper):
        worker.signal(signal.SIGTERM)
    for worker in (last, keeper):
        assert await worker.wait_exit() == 0, worker.output()

    tasks = await all_tasks(svc)
    assert len(tasks) == count
    assert {t.status for t in tasks} <= {TaskStatus.COMPLETED, TaskStatus.FAILED}
    assert sum(t.status is TaskStatus.COMPLETED for t in tasks) >= count - kills * concurrency
    executions = Counter(label for label, _pid in worker_tasks.read_records(log))
    assert set(executions) == {f"t{i}" for i in range(count)}
    assert max(executions.values()) <= 1 + kills
    # A kill interrupts at most the tasks that process had claimed.
    reruns = sum(n - 1 for n in executions.values())
    assert reruns <= kills * concurrency
    recovered = [t for t in tasks if t.lost_count > 0]
    assert recovered, "no kill hit a claimed task"
    for task in recovered:
        kinds = [EventType.RETRY, EventType.RELEASED]
        events = await svc.events.get_events_async(task_id=task.id, event_type=kinds)
        assert any("lost the lease" in (e.message or "") for e in events)
        assert task.retry_count == 0  # crashes never spend max_retries
    for task in tasks:
        # Attempts count the starts written before a crash; a run cut short before
        # its start was written is counted as a lost lease instead.
        assert task.attempts + task.lost_count >= executions[str(task.func_args[1])]


async def test_a_task_that_kills_its_worker_stops_after_its_crash_budget(
    svc: Services, spawn: Callable[..., WorkerProcess], tmp_path: Path
) -> None:
    # A poison task is not run forever: its first run may die before its start
    # was written (free), every later start is written before it runs and
    # counts against crash_retries (default 2); max_retries is not spent.
    budget = svc.storage.settings.crash_retries
    log = tmp_path / "executions"
    task_id = await svc.queue.enqueue_async(
        "tests.worker_tasks:record_then_kill_worker", [str(log), "poison"], max_retries=5
    )
    runs = 2 + budget
    for run in range(1, runs + 1):
        worker = spawn(f"doomed-{run}", "--lease", "1", "--heartbeat", "0.2")
        assert await worker.wait_exit() == -signal.SIGKILL
        assert worker_tasks.count_lines(log) == run
        recovered = 0

        async def lease_recovered() -> bool:
            nonlocal recovered
            recovered += await svc.queue.recover_expired_leases_async()
            return recovered > 0

        await wait_until(lease_recovered, "the dead worker's lease to be recovered")

    task = await svc.queue.get_task_async(task_id)
    assert task is not None
    assert task.status is TaskStatus.FAILED
    assert task.retry_count == 0
    assert task.attempts == budget + 1  # the written starts
    result = await svc.results.get_async(task_id)
    assert result is not None and result.error_type == "WorkerLost"
    assert await svc.queue.dequeue_async() is None


# --- exactly once across processes ------------------------------------------------------------


async def test_four_worker_processes_execute_every_task_exactly_once(
    svc: Services, spawn: Callable[..., WorkerProcess], tmp_path: Path
) -> None:
    count = 2_000
    log = tmp_path / "executions"
    gate = tmp_path / "go"
    # The first 32 tasks (highest priority) hold their slot until each of the 4
    # processes claimed one: with 8 slots each, every process must take part.
    meet = str(tmp_path / "rendezvous")
    first = [
        svc.queue.build_task(
            "tests.worker_tasks:record_when_all_claimed", [str(log), f"t{i}", meet, 4], priority=1
        )
        for i in range(32)
    ]
    tasks = first + [svc.queue.build_task(RECORD, [str(log), f"t{i}"]) for i in range(32, count)]
    for start in range(0, count, 500):
        await svc.queue.enqueue_many_async(tasks[start : start + 500])
    workers = [
        spawn(f"proc-{n}", "--burst", "--concurrency", "8", "--gate", str(gate)) for n in range(4)
    ]
    gate.touch()

    for worker in workers:
        assert await worker.wait_exit(timeout=120) == 0, worker.output()

    records = worker_tasks.read_records(log)
    executions = Counter(label for label, _ in records)
    assert set(executions) == {f"t{i}" for i in range(count)}
    duplicated = {label: n for label, n in executions.items() if n > 1}
    assert duplicated == {}, f"tasks executed more than once: {duplicated}"
    assert len({pid for _, pid in records}) == 4, "every process did work"
    assert await status_counts(svc) == {"completed": count}
    assert {t.attempts for t in await all_tasks(svc)} == {1}


# --- graceful shutdown ------------------------------------------------------------------------


async def test_sigterm_finishes_running_tasks_within_grace_and_releases_the_rest(
    svc: Services, spawn: Callable[..., WorkerProcess], tmp_path: Path
) -> None:
    # Short tasks take 3 s: long enough to be still running when the test sees all
    # four start, short enough to finish well inside the 8 s grace period.
    grace = 8.0
    log = tmp_path / "progress"
    func = "tests.worker_tasks:started_and_finished"
    short = [
        await svc.queue.enqueue_async(func, [str(log), f"short{i}", 3], priority=10)
        for i in range(2)
    ]
    long = [
        await svc.queue.enqueue_async(func, [str(log), f"long{i}", 60], priority=10)
        for i in range(2)
    ]
    queued = [
        await svc.queue.enqueue_async(func, [str(log), f"queued{i}", 0], priority=0)
        for i in range(3)
    ]
    worker = spawn("graceful", "--concurrency", "4", "--grace", str(grace))

    async def all_started() -> bool:
        started = {r[1] for r in worker_tasks.read_records(log) if r[0] == "start"}
        return started >= {"short0", "short1", "long0", "long1"}

    await wait_until(all_started, "the four tasks to start", workers=(worker,))
    assert not [r for r in worker_tasks.read_records(log) if r[0] == "end"]
    signalled = time.monotonic()
    worker.signal(signal.SIGTERM)

    code = await worker.wait_exit(timeout=grace + 30)
    elapsed = time.monotonic() - signalled
    assert code == 0, worker.output()
    assert elapsed < grace + 10, f"exit took {elapsed:.1f}s with a {grace:g}s grace period"

    ended = {r[1] for r in worker_tasks.read_records(log) if r[0] == "end"}
    assert ended == {"short0", "short1"}
    for task_id in short:
        task = await svc.queue.get_task_async(task_id)
        assert task is not None and task.status is TaskStatus.COMPLETED
        result = await svc.results.get_async(task_id)
        assert result is not None and result.success
    for task_id in long + queued:
        task = await svc.queue.get_task_async(task_id)
        assert task is not None
        assert (task.status, task.attempts, task.lease_token) == (TaskStatus.PENDING, 0, None)
    for task_id in long:
        released = await svc.events.get_events_async(task_id=task_id, event_type=EventType.RELEASED)
        assert len(released) == 1
    stopped = await svc.events.get_events_async(
        worker_id="graceful", event_type=EventType.WORKER_STOPPED
    )
    assert len(stopped) == 1


async def test_sigterm_does_not_wait_for_a_blocked_thread_beyond_the_grace_period(
    svc: Services, spawn: Callable[..., WorkerProcess], tmp_path: Path
) -> None:
    # A thread cannot be stopped: the worker releases its task after the grace
    # period and exits; the thread dies with the process.
    grace = 1.0
    log = tmp_path / "progress"
    task_id = await svc.queue.enqueue_async(
        "tests.worker_tasks:started_and_finished_sync", [str(log), "blocked", 60]
    )
    worker = spawn("threads", "--executor", "thread", "--grace", str(grace))

    async def started() -> bool:
        return ["start", "blocked"] in worker_tasks.read_records(log)

    await wait_until(started, "the task to start", workers=(worker,))
    signalled = time.monotonic()
    worker.signal(signal.SIGTERM)

    assert await worker.wait_exit(timeout=grace + 30) == 0, worker.output()
    assert time.monotonic() - signalled < grace + 10
    task = await svc.queue.get_task_async(task_id)
    assert task is not None
    assert (task.status, task.attempts) == (TaskStatus.PENDING, 0)
    assert ["end", "blocked"] not in worker_tasks.read_records(log)


async def test_killed_worker_takes_its_task_processes_with_it(
    svc: Services, spawn: Callable[..., WorkerProcess], tmp_path: Path
) -> None:
    pid_file = tmp_path / "child.pid"
    await svc.queue.enqueue_async("tests.worker_tasks:write_pid_then_sleep", [str(pid_file), 60])
    worker = spawn("parent", "--executor", "process")

    async def child_started() -> bool:
        return pid_file.exists() and pid_file.read_text() != ""

    await wait_until(child_started, "the task process to start", workers=(worker,))
    child = int(pid_file.read_text())
    assert worker_tasks.pid_alive(child)
    worker.signal(signal.SIGKILL)
    assert await worker.wait_exit() == -signal.SIGKILL

    async def child_gone() -> bool:
        return not worker_tasks.pid_alive(child)

    # Otherwise the orphan would run on while its task is recovered and rerun.
    await wait_until(child_gone, f"task process {child} to exit with its worker", timeout=20)


# --- cancellation across processes ------------------------------------------------------------


async def test_cancel_reaches_a_worker_in_another_process(
    svc: Services, spawn: Callable[..., WorkerProcess], tmp_path: Path
) -> None:
    log = tmp_path / "progress"
    task_id = await svc.queue.enqueue_async(
        "tests.worker_tasks:started_and_finished", [str(log), "victim", 60]
    )
    worker = spawn("remote", "--heartbeat", "0.2", "--lease", "5")

    async def started() -> bool:
        return ["start", "victim"] in worker_tasks.read_records(log)

    await wait_until(started, "the task to start", workers=(worker,))
    assert await svc.queue.cancel_async(task_id)

    async def cancelled() -> bool:
        task = await svc.queue.get_task_async(task_id)
        return task is not None and task.status is TaskStatus.CANCELLED

    await wait_until(cancelled, "the remote worker to cancel the task", workers=(worker,))
    worker.signal(signal.SIGTERM)
    assert await worker.wait_exit() == 0, worker.output()
    assert ["end", "victim"] not in worker_tasks.read_records(log)
    result = await svc.results.get_async(task_id)
    assert result is not None and result.status.value == "cancelled"
