"""Task functions of the flow control process tests (tests/integration/test_flow_processes.py).

Each records its run as a line ``"<label> <start> <end> <pid>"`` (wall clock,
shared by every process on the machine) in a file, so that overlaps are
checked independently of the database.
"""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path

from tests.worker_tasks import append_line


async def timed(path: str, label: str, seconds: float) -> str:
    """Sleep ``seconds``; record the run's start and end."""
    start = time.time()
    await asyncio.sleep(seconds)
    append_line(path, f"{label} {start:.6f} {time.time():.6f} {os.getpid()}")
    return label


async def hold_first_time(path: str, label: str, marker: str) -> str:
    """The first run (no ``marker`` yet) creates it and holds its slot for a minute
    (its worker is killed meanwhile); later runs record themselves and return."""
    start = time.time()
    if not os.path.exists(marker):  # noqa: ASYNC240 (a test task: a tiny local file)
        append_line(marker, str(os.getpid()))
        await asyncio.sleep(60)
    append_line(path, f"{label} {start:.6f} {time.time():.6f} {os.getpid()}")
    return label


def intervals(path: str) -> list[tuple[str, float, float]]:
    """The recorded runs: ``(label, start, end)``."""
    rows = []
    for line in Path(path).read_text().splitlines():
        label, start, end, _pid = line.split()
        rows.append((label, float(start), float(end)))
    return rows


def most_at_once(runs: list[tuple[float, float]]) -> int:
    """The largest number of runs overlapping at one instant."""
    edges = sorted([(s, 1) for s, _ in runs] + [(e, -1) for _, e in runs])
    most = now = 0
    for _, step in edges:
        now += step
        most = max(most, now)
    return most
