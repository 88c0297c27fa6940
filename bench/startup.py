"""12: how long the ``omniq`` command takes to start, beside another queue's CLI.

Each figure is the median wall time of a few runs of a fresh process, from
spawn to exit. The comparison is ``huey_consumer --help`` (Huey's CLI, in the
bench extra); without it, ``python -c pass`` (the interpreter's own floor).
``omniq tasks`` reads an empty migrated SQLite file: it pays for SQLAlchemy,
the driver and one query, which ``--help`` never imports.
"""

from __future__ import annotations

import os
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from bench.common import Row, sqlite_url
from bench.workspace import Sizes, Workspace

LABELS = (
    "12a. `omniq --help` start-up",
    "12b. `omniq tasks` start-up",
)


def _median_seconds(command: Sequence[str], runs: int, env: dict[str, str]) -> float:
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        subprocess.run(command, env=env, check=True, capture_output=True, timeout=120)
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def _comparison() -> tuple[list[str], str]:
    huey = shutil.which("huey_consumer") or str(Path(sys.executable).with_name("huey_consumer"))
    if Path(huey).exists():
        return [huey, "--help"], "`huey_consumer --help`"
    return [sys.executable, "-c", "pass"], "`python -c pass` (no huey_consumer here)"


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:.0f} ms"


def bench_startup(ws: Workspace, sizes: Sizes) -> list[Row]:
    """Rows 12a/12b: median start-up of the ``omniq`` command vs another CLI."""
    runs = max(5, sizes.repeats * 3)
    env = {k: v for k, v in os.environ.items() if not k.startswith("OMNIQ_")}
    omniq = [sys.executable, "-m", "omniq"]
    db = ws.omniq_db("startup")
    other_cmd, other_name = _comparison()
    other = _median_seconds(other_cmd, runs, env)
    floor = _median_seconds([sys.executable, "-c", "pass"], runs, env)
    help_time = _median_seconds([*omniq, "--help"], runs, env)
    tasks_time = _median_seconds([*omniq, "tasks", "--url", sqlite_url(db)], runs, env)
    note = f"median of {runs} fresh processes vs {other_name}; `python -c pass` took {_ms(floor)}."
    return [
        Row(
            LABELS[0],
            _ms(help_time),
            _ms(other),
            help_time / other if other else None,
            "ref",
            None,
            f"`python -m omniq --help` (imports no SQLAlchemy), {note}",
        ),
        Row(
            LABELS[1],
            _ms(tasks_time),
            _ms(other),
            tasks_time / other if other else None,
            "ref",
            None,
            f"`python -m omniq tasks` on an empty SQLite file (SQLAlchemy, aiosqlite, one "
            f"query), {note}",
        ),
    ]
