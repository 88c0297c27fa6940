"""`python bench/run.py --quick` runs to the end and prints the whole table.

It reports numbers; this test never looks at them (DESIGN.md: no timed asserts).
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

HEADER = ("benchmark", "omniq", "comparison", "ratio", "target")
ROWS = (
    "1. enqueue_many (batch 1k)",
    "1r. enqueue_many vs raw sqlite3",
    "2. enqueue_async sequential",
    "3. enqueue_async 100 producers",
    "4. claim+complete at big backlog",
    "5. burn-down, 1 worker process",
    "6a. 2 worker processes vs 1",
    "6b. 4 worker processes vs 1",
    "7a. latency, in-process worker",
    "7b. latency, worker process",
    "8. worker RSS, many vs few tasks",
)


@pytest.mark.slow
def test_quick_bench_prints_every_row() -> None:
    proc = subprocess.run(
        [sys.executable, "bench/run.py", "--quick"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, f"stdout:\n{proc.stdout}\nstderr:\n{proc.stderr[-4000:]}"
    lines = proc.stdout.splitlines()
    assert any(re.fullmatch(r"\s*".join(HEADER) + r"\s*", line) for line in lines), proc.stdout
    for label in ROWS:
        row = [line for line in lines if line.startswith(label + "  ")]
        assert row, f"missing row {label!r}:\n{proc.stdout}"
        assert "ERROR" not in row[0], row[0]
        assert re.search(r"\b(PASS|MISS|ref)\b", row[0]), row[0]
