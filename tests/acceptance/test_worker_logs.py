"""`omniq worker` logs as an operator reads them: banner, outcomes, tracebacks, shutdown, summary.

Run as a user runs it (a subprocess), in text and in JSON lines, on each engine.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from omniq import OmniQ
from omniq._version import VERSION
from tests.waiting import wait_until_sync

ROOT = Path(__file__).resolve().parents[2]
APP = "tests.acceptance.log_tasks"


def _with_password(url: str) -> str:
    """PostgreSQL: the URL with a password (the local server trusts; the banner must mask it)."""
    parsed = sa.make_url(url)
    if parsed.get_backend_name() != "postgresql":
        return url
    return parsed.set(password="s3cret-pw").render_as_string(hide_password=False)


def _env(url: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OMNIQ_")}
    return {**env, "OMNIQ_DATABASE_URL": url, "PYTHONPATH": str(ROOT)}


def _enqueue_three(url: str, tmp_path: Path) -> dict[str, str]:
    with OmniQ(url=url) as oq:
        return {
            "ok": oq.enqueue(f"{APP}:ok", [21]),
            "kaboom": oq.enqueue(f"{APP}:kaboom", max_retries=0),
            "flaky": oq.enqueue(
                f"{APP}:flaky", [str(tmp_path / "flaky.marker")], max_retries=2, retry_delay=0
            ),
        }


def _no_chatter(stderr: str) -> None:
    """Only OmniQ speaks: no driver or Alembic lines, no raw stats repr."""
    for line in stderr.splitlines():
        header = re.match(r"\d{4}-\d\d-\d\d [\d:,]+ ([A-Z]+) (\S+): ", line)
        if header:
            assert header.group(2).startswith("omniq."), line
        elif line.startswith("{"):
            assert json.loads(line)["logger"].startswith("omniq."), line
    for word in ("Context impl", "Will assume", "WorkerStats("):
        assert word not in stderr, f"{word!r} in the worker's log:\n{stderr}"


class _Lines:
    """Collects a child's stderr lines on a thread, so the test can wait on them."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self.lines: list[str] = []
        assert proc.stderr is not None
        stream = proc.stderr
        self._thread = threading.Thread(target=lambda: self.lines.extend(stream), daemon=True)
        self._thread.start()

    def text(self) -> str:
        return "".join(self.lines)

    def join(self) -> str:
        self._thread.join(timeout=60)
        return self.text()


def test_text_logs_banner_outcomes_traceback_shutdown_and_summary(
    db_url: str, tmp_path: Path
) -> None:
    ids = _enqueue_three(db_url, tmp_path)
    url = _with_password(db_url)
    proc = subprocess.Popen(
        [
            *(sys.executable, "-m", "omniq", "worker", "--app", APP, "--queues", "default"),
            *("--concurrency", "3", "--executor", "thread", "--poll-interval", "0.1s"),
            *("--log-level", "debug"),
        ],
        cwd=tmp_path,
        env=_env(url),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    lines = _Lines(proc)
    try:
        wait_until_sync(
            lambda: f"{APP}:flaky[{ids['flaky']}] succeeded" in lines.text(),
            "the flaky task to succeed on its retry",
            timeout=60,
        )
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
    stderr = lines.join()
    assert proc.returncode == 0, stderr

    banner = next(line for line in stderr.splitlines() if " starting" in line)
    assert f"INFO omniq.worker: omniq {VERSION} worker " in banner
    assert f"pid {proc.pid}," in banner
    assert "serving queues default, concurrency 3, executor thread" in banner
    assert f"database {sa.make_url(url).render_as_string(hide_password=True)}," in banner
    # The start-up heap is frozen out of the garbage collector's walk (omniq.worker.heap).
    frozen = re.search(r", gc freeze on \(([\d,]+) objects\)$", banner)
    assert frozen and int(frozen[1].replace(",", "")) > 10_000, banner
    if "s3cret-pw" in url:
        assert "s3cret-pw" not in stderr and ":***@" in banner

    assert re.search(rf"INFO omniq\.worker: task {APP}:ok\[{ids['ok']}\] succeeded in \d", stderr)
    failed = re.search(
        rf"ERROR omniq\.worker: task {APP}:kaboom\[{ids['kaboom']}\] failed in [\d.]+s "
        r"\(attempt 1, no retries left\): ValueError: kaboom\n"
        r"Traceback \(most recent call last\):\n(?:.*\n)*?.*raise ValueError\(\"kaboom\"\)\n"
        r"ValueError: kaboom\n",
        stderr,
    )
    assert failed, stderr
    assert re.search(
        rf"INFO omniq\.worker: task {APP}:flaky\[{ids['flaky']}\] failed in [\d.]+s, "
        r"retrying \(retry 1 of 2\): RuntimeError: first attempt fails\n",
        stderr,
    ), stderr
    assert "shutting down (SIGTERM received)" in stderr
    summary = stderr.strip().splitlines()[-1]
    assert re.search(
        r"INFO omniq\.worker: worker \S+ stopped after [\d.]+s: 2 succeeded, 1 failed, "
        r"1 retried, 0 cancelled, 0 lost$",
        summary,
    ), summary
    _no_chatter(stderr)


def test_json_logs_one_object_per_line_with_fields(db_url: str, tmp_path: Path) -> None:
    ids = _enqueue_three(db_url, tmp_path)
    with OmniQ(url=db_url) as oq:
        ids["sleepy"] = oq.enqueue(f"{APP}:sleepy", [30], timeout=0.3, max_retries=0)
    proc = subprocess.run(
        [
            *(sys.executable, "-m", "omniq", "worker", "--app", APP, "--burst", "--json"),
            *("--log-format", "json", "--executor", "process", "--concurrency", "4"),
        ],
        cwd=tmp_path,
        env=_env(db_url),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    records = [json.loads(line) for line in proc.stderr.splitlines()]  # every line is JSON
    for record in records:
        assert {"time", "level", "logger", "message"} <= record.keys(), record
    _no_chatter(proc.stderr)

    banner = records[0]
    assert banner["logger"] == "omniq.worker" and banner["level"] == "INFO"
    assert banner["version"] == VERSION and f"pid {banner['pid']}," in banner["message"]
    assert banner["url"] == db_url and banner["queues"] is None
    assert (banner["concurrency"], banner["executor"], banner["burst"]) == (4, "process", True)

    def outcome(task_id: str, kind: str) -> dict[str, Any]:
        found = [r for r in records if r.get("task_id") == task_id and r.get("outcome") == kind]
        assert len(found) == 1, (task_id, kind, records)
        return found[0]

    ok = outcome(ids["ok"], "succeeded")
    assert (ok["level"], ok["func"], ok["queue"]) == ("INFO", f"{APP}:ok", "default")
    assert ok["attempt"] == 1
    assert isinstance(ok["duration"], float) and ok["duration"] >= 0
    failed = outcome(ids["kaboom"], "failed")
    assert failed["level"] == "ERROR" and failed["error"] == "ValueError: kaboom"
    assert failed["will_retry"] is False
    assert "Traceback" in failed["traceback"] and "ValueError: kaboom" in failed["traceback"]
    retrying = outcome(ids["flaky"], "retrying")
    assert (retrying["retry"], retrying["max_retries"], retrying["will_retry"]) == (1, 2, True)
    assert retrying["error"] == "RuntimeError: first attempt fails"
    assert outcome(ids["flaky"], "succeeded")["attempt"] == 2
    timed_out = outcome(ids["sleepy"], "timed_out")
    assert timed_out["level"] == "ERROR" and timed_out["error_type"] == "TaskTimeout"
    assert timed_out["duration"] >= 0.3

    shutdown = [r for r in records if "reason" in r]
    assert [r["reason"] for r in shutdown] == ["burst: no task left"]
    summary = records[-1]
    assert "stopped after" in summary["message"]
    assert (summary["succeeded"], summary["failed"], summary["retried"]) == (2, 2, 1)
    assert json.loads(proc.stdout)["completed"] == 2  # --json: the stats on stdout


def test_alembic_speaks_only_when_a_migration_runs(tmp_path: Path) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path / 'fresh.db'}"

    def worker() -> str:
        proc = subprocess.run(
            [sys.executable, "-m", "omniq", "worker", "--app", APP, "--burst"],
            cwd=tmp_path,
            env=_env(url),
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert proc.returncode == 0, proc.stderr
        return proc.stderr

    first = worker()  # a new SQLite file is migrated on first use
    assert "Running upgrade  -> 0001" in first
    assert first.count("Context impl") == 1
    assert first.index("Context impl") < first.index("Running upgrade")
    second = worker()  # already at head: nothing to say
    assert "Running upgrade" not in second and "Context impl" not in second
    assert "Will assume" not in second and " starting" in second


@pytest.mark.parametrize(
    ("flags", "expected"),
    [
        (["--log-format", "xml"], "--log-format"),
        (["--log-level", "loud"], "--log-level"),
    ],
)
def test_log_options_are_checked(flags: list[str], expected: str, tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "omniq", "worker", "--burst", *flags],
        cwd=tmp_path,
        env=_env(f"sqlite+aiosqlite:///{tmp_path / 'x.db'}"),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2 and expected in proc.stderr, proc.stderr
