"""Fault injection: a database that refuses connections, restarts or fills up under a
running worker. Promises checked: nothing lost, nothing failed that succeeded, nothing
run twice without a crash, every worker loop alive. Real faults only: a TCP proxy of
our own before PostgreSQL (``proxy.py``), a real server restart and a size-limited
tmpfs under SQLite (``injectors.py``).

The task functions below record each run with one ``os.write`` on an ``O_APPEND``
file (:func:`tests.worker_tasks.append_line`), so a run is recorded even when the
database write after it fails. Workers import them as ``"tests.faults:<name>"``.
"""

from __future__ import annotations

import asyncio
import sys
import time
from pathlib import Path

import anyio

# Workers import "tests.faults": the repository root must be importable.
ROOT = str(Path(__file__).resolve().parents[2])
if ROOT not in sys.path:
    sys.path.append(ROOT)

from tests.worker_tasks import append_line  # noqa: E402

MODULE = "tests.faults"


def ref(name: str) -> str:
    """The reference of a task function of this module."""
    return f"{MODULE}:{name}"


async def record(path: str, label: str, seconds: float = 0.0, pad: str = "") -> str:
    """Append ``label`` to ``path``, then sleep ``seconds`` (its workload)."""
    append_line(path, label)
    await asyncio.sleep(seconds)
    return label


async def gated(path: str, label: str, gate: str, limit: float = 60.0) -> str:
    """Append ``label``; wait until the file ``gate`` exists; append ``returned:<label>``."""
    append_line(path, label)
    deadline = time.monotonic() + limit
    while not await anyio.Path(gate).exists():
        if time.monotonic() > deadline:
            raise TimeoutError(f"gate {gate} never opened")
        await asyncio.sleep(0.01)
    append_line(path, f"returned:{label}")
    return label
