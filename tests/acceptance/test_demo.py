"""The README's first command: `omniq demo` shows the whole system and can be rerun."""

from __future__ import annotations

import asyncio
import io
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from omniq import AsyncOmniQ
from omniq.demo import _nothing_due, run_demo
from omniq.services import Services

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


async def test_the_bulk_ends_when_only_tasks_whose_time_is_ahead_are_left(
    tmp_path: Path,
) -> None:
    # The demo's throughput covers the bulk up to the first moment nothing is left
    # to run: a retry waiting out its delay or a schedule's next run is not work
    # left (an earlier version waited them out and reported a tenth of the rate).
    url = f"sqlite+aiosqlite:///{tmp_path / 'q.db'}"
    async with AsyncOmniQ(url=url) as oq:
        await oq.enqueue_async("omniq.demo:heartbeat", ["later"], run_in=3600)
        assert await _nothing_due(oq, 1)
        await oq.enqueue_async("omniq.demo:heartbeat", ["now"])
        assert not await _nothing_due(oq, 2)
        services = await Services.open_async(url)
        try:  # the due one is claimed (running): still work left
            assert await services.queue.dequeue_async() is not None
        finally:
            await services.close_async()
        assert not await _nothing_due(oq, 2)
        assert not await _nothing_due(oq, 51)  # many left: not looked at


def test_demo_command(tmp_path: Path) -> None:
    # stdout is a pipe here, not a terminal: plain progress lines, no carriage returns.
    scratch_before = set(Path(tempfile.gettempdir()).glob("omniq-demo-*"))
    (tmp_path / "demo-scratch").mkdir()  # left behind by an earlier version
    proc = subprocess.run(
        [sys.executable, "-m", "omniq", "demo", "--tasks", "200", "--base-dir", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert "OmniQ demo" in out and "throughput:" in out
    assert "\r" not in out
    progress = [line for line in out.splitlines() if line.startswith("  worker: ")]
    assert progress, out
    # Sparingly: a line when the count changed (at most about one a second), and the last.
    counts = [line.split()[1] for line in progress]
    assert len(set(counts[:-1])) == len(counts[:-1]), progress
    last = re.match(r"  worker: (\d+) of the (\d+) tasks in the database finished", progress[-1])
    assert last and last.group(1) == last.group(2), progress
    # Each count says what it covers.
    bulk = r"^bulk \(until nothing was left to run, [\d.]+ s\): \d+ tasks finished"
    assert re.search(bulk, out, re.M), out
    whole = r"^worker \S+ \(its whole run, [\d.]+ s, schedule runs included\)"
    assert re.search(whole, out, re.M), out
    assert "tasks per queue and status (the database at the end" in out
    # The failures are shown by the demo itself, not as worker log lines on stderr.
    assert "Traceback" not in proc.stderr and "omniq.worker" not in proc.stderr, proc.stderr
    # Nothing left behind but the database (and its writers' lock file, see
    # omniq.db.write_lock: removing it could let two writers lock two files).
    assert sorted(p.name for p in tmp_path.iterdir()) == ["demo.db", "demo.db-omniq-lock"]
    assert set(Path(tempfile.gettempdir()).glob("omniq-demo-*")) <= scratch_before


def test_demo_progress_is_one_line_rewritten_on_a_terminal(tmp_path: Path) -> None:
    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    out = Terminal()
    asyncio.run(run_demo(tmp_path, tasks=50, out=out))
    text = out.getvalue()
    rows = [row for row in text.split("\n") if "worker: " in row]
    assert len(rows) == 1 and rows[0].startswith("\r  worker: "), rows
