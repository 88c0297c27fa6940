"""The README's first command: `omniq demo` shows the whole system and can be rerun."""

from __future__ import annotations

import io
import subprocess
import sys
from pathlib import Path

import pytest

from omniq.demo import run_demo

pytestmark = pytest.mark.anyio


async def test_demo_runs_everything_and_reruns(tmp_path: Path) -> None:
    for _ in range(2):  # a rerun starts from a fresh database
        out = io.StringIO()
        summary = await run_demo(tmp_path, tasks=300, out=out)
        text = out.getvalue()
        assert summary["task_totals"]["failed"] == 2  # always_fails and too_slow
        assert summary["completed"] >= 300 + 3 + 1  # bulk, chain, flaky (+ interval runs)
        assert summary["retried"] >= 2
        for needle in (
            "succeeded on retry",
            "ValueError: this task always fails",
            "TaskTimeout: task timed out",
            "latest result: interval tick",
            "retry      ConnectionError",
            "tasks per queue and status",
            "throughput:",
        ):
            assert needle in text, needle


def test_demo_command(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "omniq", "demo", "--tasks", "200", "--base-dir", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    assert "OmniQ demo" in proc.stdout and "throughput:" in proc.stdout
    assert (tmp_path / "demo.db").exists()
