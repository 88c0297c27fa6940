"""`python bench/run.py --quick` runs to the end and prints the whole table.

It reports numbers; this test never looks at them (DESIGN.md: no timed asserts).
The PostgreSQL rows run when a server is given (OMNIQ_BENCH_POSTGRES_URL or
OMNIQ_TEST_POSTGRES_URL); otherwise they are printed as skipped, with the reason.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from bench import dashboard, limits, startup

ROOT = Path(__file__).resolve().parents[2]

HEADER = ("benchmark", "omniq", "comparison", "ratio", "target")
ROWS = (
    "1. enqueue_many (batch 1k)",
    "1r. enqueue_many vs raw sqlite3",
    "2. enqueue_async sequential",
    "3. enqueue_async 100 producers",
    "4. claim+complete at big backlog",
    "5. burn-down, 1 worker process",
    "5m. burn-down, metrics on vs off",
    "6a. 2 worker processes vs 1",
    "6b. 4 worker processes vs 1",
    "7a. latency, in-process worker",
    "7b. latency, worker process",
    "8. worker RSS, many vs few tasks",
    "9a. failing tasks vs no-op",
    "9b. refused tasks vs no-op",
    "9c. failing + 1 retry vs no-op",
    *dashboard.LABELS,
    *startup.LABELS,
    "13a. burn-down, tracing on vs off",
    "13b. enqueue_async, tracing on vs off",
    *limits.LABELS,
)
POSTGRES_ROWS = (
    "10a. PG burn-down, 1 worker process",
    "10b. PG 4 worker processes vs 1",
    "10c. PG raw asyncpg, events vs bare",
    "10d. PG raw asyncpg, 4 conns vs 1",
)
POSTGRES_ENVS = ("OMNIQ_BENCH_POSTGRES_URL", "OMNIQ_TEST_POSTGRES_URL")


def _row(lines: list[str], label: str, stdout: str) -> str:
    row = [line for line in lines if line.startswith(label + "  ")]
    assert row, f"missing row {label!r}:\n{stdout}"
    assert "ERROR" not in row[0], row[0]
    return row[0]


@pytest.mark.slow
def test_quick_bench_prints_every_row() -> None:
    proc = subprocess.run(
        [sys.executable, "bench/run.py", "--smoke"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, f"stdout:\n{proc.stdout}\nstderr:\n{proc.stderr[-4000:]}"
    lines = proc.stdout.splitlines()
    assert any(re.fullmatch(r"\s*".join(HEADER) + r"\s*", line) for line in lines), proc.stdout
    for label in ROWS:
        row = _row(lines, label, proc.stdout)
        assert re.search(r"\b(PASS|MISS|ref)\b", row), row
    postgres = any(os.environ.get(name, "").strip() for name in POSTGRES_ENVS)
    for label in POSTGRES_ROWS:
        row = _row(lines, label, proc.stdout)
        if postgres:
            assert re.search(r"\b(PASS|MISS|ref)\b", row), row
        else:
            assert re.search(r"\bskipped\b.*\bSKIP\b", row), row
            number = label.split(" ", 1)[0]
            assert any(
                line.startswith(f"{number} skipped: set {POSTGRES_ENVS[0]}") for line in lines
            ), proc.stdout
