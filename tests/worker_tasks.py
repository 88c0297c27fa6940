"""Task functions that the worker and scheduler tests enqueue by reference.

Workers run them as ``"tests.worker_tasks:<name>"`` (tests pass
``allow_modules=["tests.worker_tasks"]``). Side effects go to files whose
paths the tests pass as arguments (always inside the test's tmp_path):
``record*`` functions append one line per execution with ``os.write`` on an
``O_APPEND`` descriptor, so lines written by concurrent processes never
interleave.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import threading
import time
from pathlib import Path
from typing import Any

# --- side-effect helpers (used by tasks and by tests) ---------------------------------------


def append_line(path: str | Path, line: str) -> None:
    """Append ``line`` to ``path`` in one ``write`` call (atomic across processes)."""
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        os.write(fd, (line + "\n").encode())
    finally:
        os.close(fd)


def read_records(path: str | Path) -> list[list[str]]:
    """The lines appended to ``path`` (split on spaces); [] if nothing was written."""
    try:
        text = Path(path).read_text()
    except FileNotFoundError:
        return []
    return [line.split(" ") for line in text.splitlines() if line]


def count_lines(path: str | Path) -> int:
    """How many records ``path`` holds."""
    return len(read_records(path))


def pid_alive(pid: int) -> bool:
    """True while process ``pid`` exists and is not a zombie (Linux /proc)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


# --- plain work -------------------------------------------------------------------------------


async def add(a: int, b: int) -> int:
    """Async: a + b."""
    await asyncio.sleep(0)
    return a + b


def add_sync(a: int, b: int) -> dict[str, Any]:
    """Sync: a + b, and which thread ran it."""
    return {"sum": a + b, "thread": threading.current_thread().name}


def pid() -> int:
    """The id of the process that runs the task."""
    return os.getpid()


def cpu_bound(n: int) -> dict[str, int]:
    """Sum of squares below ``n`` (CPU work), and the process that computed it."""
    return {"value": sum(i * i for i in range(n)), "pid": os.getpid()}


def stamp() -> float:
    """The wall-clock time at execution."""
    return time.time()


async def sleep_async(seconds: float, value: Any = None) -> Any:
    """Sleep, then return ``value``."""
    await asyncio.sleep(seconds)
    return value


# --- failures -------------------------------------------------------------------------------


async def always_fails(message: str) -> None:
    """Raise ValueError(message)."""
    raise ValueError(message)


async def raises_cancelled() -> None:
    """Raise CancelledError itself (nobody cancelled it): a failed attempt."""
    raise asyncio.CancelledError("raised by the task")


def raises_cancelled_sync() -> None:
    """Sync twin of :func:`raises_cancelled` (run in the worker's thread pool)."""
    raise asyncio.CancelledError("raised by the task")


class Unprintable(Exception):
    """An exception whose ``str()`` itself raises."""

    def __str__(self) -> str:
        raise RuntimeError("str() of this exception fails")


def raises_unprintable() -> None:
    """Raise :class:`Unprintable` (any executor)."""
    raise Unprintable()


def returns_a_lock() -> Any:
    """Return what cannot be pickled (run by the process executor: it cannot leave)."""
    return threading.Lock()


def fail_in_process(message: str) -> None:
    """Raise KeyError(message) (run by the process executor)."""
    raise KeyError(message)


def flaky(counter_path: str, failures: int, value: Any = "ok") -> Any:
    """Fail the first ``failures`` calls (counted in ``counter_path``), then return ``value``."""
    append_line(counter_path, "call")
    calls = count_lines(counter_path)
    if calls <= failures:
        raise RuntimeError(f"flaky failure {calls} of {failures}")
    return value


# --- recording executions --------------------------------------------------------------------


async def record(path: str, label: str) -> str:
    """Append ``"<label> <pid>"`` to ``path``; return ``label``."""
    append_line(path, f"{label} {os.getpid()}")
    return label


async def record_when_all_claimed(path: str, label: str, rendezvous: str, processes: int) -> str:
    """:func:`record`, then hold the slot until ``processes`` processes ran such a task.

    Makes "several processes competed" certain instead of hoped for: nobody
    finishes a rendezvous task until every process has claimed one. Fails after
    60 s if they never do.
    """
    append_line(path, f"{label} {os.getpid()}")
    os.makedirs(rendezvous, exist_ok=True)
    append_line(os.path.join(rendezvous, f"pid-{os.getpid()}"), "here")
    deadline = time.monotonic() + 60
    while len(os.listdir(rendezvous)) < processes:
        if time.monotonic() > deadline:
            raise TimeoutError(f"only {len(os.listdir(rendezvous))} of {processes} processes")
        await asyncio.sleep(0.02)
    return label


def record_sync(path: str, label: str) -> str:
    """Sync twin of :func:`record`."""
    append_line(path, f"{label} {os.getpid()}")
    return label


async def record_and_sleep(path: str, label: str, seconds: float) -> str:
    """Record ``"<label> <pid>"`` at the start, then sleep (a task with a workload)."""
    append_line(path, f"{label} {os.getpid()}")
    await asyncio.sleep(seconds)
    return label


async def started_and_finished(path: str, label: str, seconds: float) -> str:
    """Record ``"start <label>"``, sleep, record ``"end <label>"``."""
    append_line(path, f"start {label}")
    await asyncio.sleep(seconds)
    append_line(path, f"end {label}")
    return label


def started_and_finished_sync(path: str, label: str, seconds: float) -> str:
    """Sync twin of :func:`started_and_finished` (blocks its thread)."""
    append_line(path, f"start {label}")
    time.sleep(seconds)
    append_line(path, f"end {label}")
    return label


async def record_then_kill_worker(path: str, label: str) -> None:
    """Record ``"<label> <pid>"``, then SIGKILL the process running it (a poison task)."""
    append_line(path, f"{label} {os.getpid()}")
    os.kill(os.getpid(), signal.SIGKILL)


def write_pid_then_sleep(path: str, seconds: float) -> None:
    """Write this process's id to ``path``, then sleep (killed by a timeout)."""
    Path(path).write_text(str(os.getpid()))
    time.sleep(seconds)


# --- callbacks ---------------------------------------------------------------------------------


def record_callback(result: Any, path: str, tag: str) -> None:
    """A callback: write the task's result and the callback args to ``path`` as JSON."""
    Path(path).write_text(json.dumps({"result": result, "tag": tag}))


async def callback_fails(result: Any) -> None:
    """A callback that always raises."""
    raise RuntimeError(f"callback refused {result!r}")


# --- threads the test controls --------------------------------------------------------------

_gates: dict[str, threading.Event] = {}
_finished: dict[str, threading.Event] = {}
_started: dict[str, threading.Event] = {}
_gates_lock = threading.Lock()


def _gate(table: dict[str, threading.Event], key: str) -> threading.Event:
    with _gates_lock:
        return table.setdefault(key, threading.Event())


def block_until_released(key: str, limit: float = 30.0) -> str:
    """Sync: block (in a worker thread) until :func:`release` (``key``), at most ``limit`` s."""
    _gate(_gates, key).wait(limit)
    _gate(_finished, key).set()
    return "late result"


def block_then_fail(key: str, limit: float = 30.0) -> None:
    """Sync: like :func:`block_until_released`, then raise RuntimeError (a failed attempt)."""
    _gate(_started, key).set()
    block_until_released(key, limit)
    raise RuntimeError(f"{key} failed after its cancel was requested")


async def gate_then_fail(key: str, limit: float = 30.0) -> None:
    """Async: note the start (:func:`has_started`), wait for :func:`release`, then raise."""
    _gate(_started, key).set()
    deadline = time.monotonic() + limit
    # Polled: the gate is a threading.Event (set from any thread), and a cancel
    # must reach this coroutine at one of its awaits.
    while not _gate(_gates, key).is_set() and time.monotonic() < deadline:  # noqa: ASYNC110
        await asyncio.sleep(0.005)
    raise RuntimeError(f"{key} failed after its cancel was requested")


def has_started(key: str) -> bool:
    """True once :func:`gate_then_fail` or :func:`block_then_fail` (``key``) started."""
    return _gate(_started, key).is_set()


def release(key: str) -> None:
    """Unblock :func:`block_until_released` (``key``)."""
    _gate(_gates, key).set()


def has_finished(key: str) -> bool:
    """True once :func:`block_until_released` (``key``) returned."""
    return _gate(_finished, key).is_set()


_running_now = 0
#: The most sync calls of :func:`overlap_probe` seen running at once (this process).
overlap_peak = 0
_overlap_lock = threading.Lock()


def _rendezvous_deadline() -> float:
    """Until when the first probe waits for a second one (so two surely overlap once)."""
    return time.monotonic() + 10.0


def overlap_probe(seconds: float) -> int:
    """Sync: note how many probes run at once (see :data:`overlap_peak`), sleep, return it.

    Until two probes have run at once, a probe waits (up to 10 s) for a second
    one: with two slots the peak is then 2 on any machine, however loaded.
    """
    global _running_now, overlap_peak
    with _overlap_lock:
        _running_now += 1
        overlap_peak = max(overlap_peak, _running_now)
        now = _running_now
    deadline = _rendezvous_deadline()
    while overlap_peak < 2 and time.monotonic() < deadline:
        time.sleep(0.001)
    time.sleep(seconds)
    with _overlap_lock:
        _running_now -= 1
    return now


async def overlap_probe_async(seconds: float) -> int:
    """Async twin of :func:`overlap_probe` (same counter): runs on the worker's loop."""
    global _running_now, overlap_peak
    with _overlap_lock:
        _running_now += 1
        overlap_peak = max(overlap_peak, _running_now)
        now = _running_now
    deadline = _rendezvous_deadline()
    # Polled: the peak is also raised by sync probes in pool threads (no loop Event).
    while overlap_peak < 2 and time.monotonic() < deadline:  # noqa: ASYNC110
        await asyncio.sleep(0.001)
    await asyncio.sleep(seconds)
    with _overlap_lock:
        _running_now -= 1
    return now
