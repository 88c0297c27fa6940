"""Task functions that report progress, for the progress tests.

Gates are files: a function waits at a checkpoint until the test creates
``<gate_dir>/<n>`` (so the test sees the progress stored at that point
without sleeping), which works the same in threads, on the loop and in
child processes of the process executor.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import omniq

CHECKPOINTS = (25, 50, 75)


def _wait_for(path: Path, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        if time.monotonic() > deadline:
            raise TimeoutError(f"gate {path} was not opened")
        time.sleep(0.005)


def count_to_100(gate_dir: str) -> dict[str, Any]:
    """Report 0..100 of 100, waiting at each checkpoint until the test opens its gate."""
    task = omniq.current_task()
    for done in range(101):
        task.progress(done, 100, f"step {done}")
        if done in CHECKPOINTS:
            _wait_for(Path(gate_dir) / str(done))
    return {"id": task.id, "attempt": task.attempt, "queue": task.queue, "func": task.function}


async def count_to_100_async(gate_dir: str) -> dict[str, Any]:
    """:func:`count_to_100` as a coroutine (run on the worker's event loop)."""
    task = omniq.current_task()
    for done in range(101):
        task.progress(done, 100, f"step {done}")
        if done in CHECKPOINTS:
            await asyncio.to_thread(_wait_for, Path(gate_dir) / str(done))
    return {"id": task.id, "attempt": task.attempt, "queue": task.queue, "func": task.function}


def report_many(calls: int) -> float:
    """Call progress() ``calls`` times as fast as it goes; return the seconds it took."""
    task = omniq.current_task()
    started = time.monotonic()
    for done in range(calls + 1):
        task.progress(done, calls)
    return time.monotonic() - started


def report_then_hang(gate_dir: str) -> None:
    """Report 40 of 100 with a message, then wait for a gate that never opens."""
    omniq.current_task().progress(40, 100, "stuck at 40")
    _wait_for(Path(gate_dir) / "never", timeout=600.0)


def bad_progress(done: Any, total: Any, message: Any) -> str:
    """Report an invalid progress; return the error's type and message."""
    try:
        omniq.current_task().progress(done, total, message)
    except omniq.ValidationError as exc:
        return f"{type(exc).__name__}: {exc}"
    return "accepted"


def no_task_error() -> str:
    """What current_task() raises outside a task (called directly, not by a worker)."""
    try:
        omniq.current_task()
    except omniq.NoCurrentTask as exc:
        return str(exc)
    return "no error"


def fail_first_attempt() -> int:
    """Report ``attempt`` of 2 with a message; fail on the first attempt."""
    task = omniq.current_task()
    task.progress(task.attempt, 2, f"attempt {task.attempt}")
    if task.attempt == 1:
        raise RuntimeError("first attempt fails")
    return task.attempt
