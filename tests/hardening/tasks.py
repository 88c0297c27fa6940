"""Task functions run by the hardening tests and the chaos/soak scripts.

Workers run them as ``"tests.hardening.tasks:<name>"`` (allowed with
``allow_modules=["tests.hardening.tasks"]`` or ``omniq worker --app
tests.hardening.tasks``). Side effects go to files whose paths the caller
passes (inside the test's tmp_path): one line per execution, appended with a
single ``os.write`` on an ``O_APPEND`` descriptor so that lines written by
concurrent processes never interleave.
"""

from __future__ import annotations

import asyncio
import os
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


def read_lines(path: str | Path) -> list[str]:
    """The lines appended to ``path``; [] if nothing was written."""
    try:
        return [x for x in Path(path).read_text().splitlines() if x]
    except FileNotFoundError:
        return []


# --- pickle tripwire ------------------------------------------------------------------------


def _tripped(marker: str) -> Tripped:
    """Called by pickle when a :class:`Tripwire` is unpickled: leaves ``marker`` behind."""
    append_line(marker, "unpickled")
    return Tripped(marker)


class Tripped:
    """What a :class:`Tripwire` becomes once unpickled."""

    def __init__(self, marker: str) -> None:
        self.marker = marker


class Tripwire:
    """An argument whose unpickling writes a marker file (proves pickle.loads ran)."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, tuple[str]]:
        return _tripped, (self.marker,)


# --- tasks ------------------------------------------------------------------------------------


def record(path: str, tag: str) -> str:
    """Append ``tag`` to ``path``; return it."""
    append_line(path, tag)
    return tag


async def record_async(path: str, tag: str, delay: float = 0.0) -> str:
    """Async: wait ``delay`` seconds (the workload), then append ``tag`` to ``path``."""
    if delay:
        await asyncio.sleep(delay)
    append_line(path, tag)
    return tag


def touch_arg(value: Any, path: str) -> str:
    """Append the type name of ``value`` to ``path`` (a run that received the argument)."""
    append_line(path, type(value).__name__)
    return type(value).__name__


def fail(message: str) -> None:
    """Raise ValueError(message): a failing task, with a traceback."""
    raise ValueError(message)


def noop(*_args: Any, **_kwargs: Any) -> None:
    """Do nothing."""


def chaos_work(path: str, n: int, millis: float) -> int:
    """Record ``"<n> <pid>"`` in ``path`` as the run starts, then work ``millis`` ms."""
    append_line(path, f"{n} {os.getpid()}")
    time.sleep(millis / 1000)
    return n


def soak_work(millis: float = 0.0) -> int:
    """A small unit of work for the soak run: sleep ``millis`` ms, return the pid."""
    if millis:
        time.sleep(millis / 1000)
    return os.getpid()
