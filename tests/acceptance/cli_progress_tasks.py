"""A task that reports progress, for the CLI progress test (`omniq worker --app`)."""

from __future__ import annotations

import time
from pathlib import Path

import omniq


def two_steps(gate: str) -> str:
    """Report 1 of 4, wait until the file ``gate`` exists, then report 4 of 4."""
    task = omniq.current_task()
    task.progress(1, 4, "first quarter")
    deadline = time.monotonic() + 60
    while not Path(gate).exists():
        if time.monotonic() > deadline:
            raise TimeoutError("gate never opened")
        time.sleep(0.01)
    task.progress(4, 4, "all done")
    return "ok"
