"""No-op task functions for the benchmarks (OmniQ workers allow ``bench.tasks``).

``fail(i)`` raises ValueError (the failing-task benchmark).

``record`` and ``stamp`` leave a trace of each execution:

- ``record(i)`` appends ``i`` to a file per process under ``$OMNIQ_BENCH_RECORD_DIR``
  (one ``O_APPEND`` write per call), so the parent can count executions
  exactly and find double runs.
- ``stamp(i)`` notes ``time.time()`` when it starts: in :data:`STAMPS` (same
  process) and, when ``$OMNIQ_BENCH_STAMP_FILE`` is set, as a line ``i t`` in
  that file (another process).
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable

RECORD_DIR_ENV = "OMNIQ_BENCH_RECORD_DIR"
STAMP_FILE_ENV = "OMNIQ_BENCH_STAMP_FILE"

#: ``{i: time.time() at start}`` of the ``stamp`` tasks run in this process.
STAMPS: dict[int, float] = {}
#: Called (from the task's thread) with ``i`` after ``stamp(i)`` noted its time.
on_stamp: Callable[[int], None] | None = None

_fds: dict[str, int] = {}
_fd_lock = threading.Lock()


def _append_fd(path: str) -> int:
    fd = _fds.get(path)
    if fd is None:
        with _fd_lock:
            fd = _fds.get(path)
            if fd is None:
                fd = _fds[path] = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    return fd


def noop(i: int) -> None:
    """Do nothing."""


def fail(i: int) -> None:
    """Raise ValueError (the failing-task benchmark: the traceback is stored)."""
    raise ValueError(f"bench task {i} fails on purpose")


async def anoop(i: int) -> None:
    """Do nothing, as a coroutine (runs on the worker's event loop)."""


def record(i: int) -> None:
    """Append ``i`` to this process's execution log under ``$OMNIQ_BENCH_RECORD_DIR``."""
    directory = os.environ[RECORD_DIR_ENV]
    fd = _append_fd(os.path.join(directory, f"exec-{os.getpid()}.log"))
    os.write(fd, f"{i}\n".encode())


def stamp(i: int) -> None:
    """Note when this task started (in :data:`STAMPS` and ``$OMNIQ_BENCH_STAMP_FILE``)."""
    now = time.time()
    STAMPS[i] = now
    path = os.environ.get(STAMP_FILE_ENV)
    if path:
        os.write(_append_fd(path), f"{i} {now!r}\n".encode())
    if on_stamp is not None:
        on_stamp(i)
