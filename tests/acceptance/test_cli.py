"""The `omniq` command as a user runs it: subprocesses, exit codes, --json, SIGTERM."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from omniq.db import migrate

ROOT = Path(__file__).resolve().parents[2]
APP = "tests.acceptance.cli_tasks"


def omniq(url: str, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "OMNIQ_DATABASE_URL": url, "PYTHONPATH": str(ROOT)}
    return subprocess.run(
        [sys.executable, "-m", "omniq", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def as_json(proc: subprocess.CompletedProcess[str]) -> object:
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def wait_for(condition: Callable[[], bool], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met before the deadline")
        time.sleep(0.05)


def test_enqueue_worker_result_round_trip(db_url: str) -> None:
    task_id = as_json(omniq(db_url, "enqueue", f"{APP}:add", "--args", "[1, 2]", "--json"))
    assert isinstance(task_id, dict)
    enqueued = omniq(db_url, "enqueue", f"{APP}:greet", "--kwargs", '{"name": "Tom"}')
    assert enqueued.returncode == 0, enqueued.stderr
    kw_id = enqueued.stdout.strip()
    pending = as_json(omniq(db_url, "tasks", "--status", "pending", "--json"))
    assert isinstance(pending, list)
    assert {t["id"] for t in pending} == {task_id["task_id"], kw_id}, pending

    worker = omniq(db_url, "worker", "--app", APP, "--burst", "--json")
    assert worker.returncode == 0, worker.stderr
    assert json.loads(worker.stdout)["completed"] == 2

    result = as_json(omniq(db_url, "result", task_id["task_id"], "--json"))
    assert isinstance(result, dict)
    assert result["status"] == "success" and result["result"] == 3
    text = omniq(db_url, "result", kw_id)
    assert text.returncode == 0 and "hello Tom" in text.stdout

    table = omniq(db_url, "tasks")
    assert table.returncode == 0
    assert table.stdout.splitlines()[0].split()[:3] == ["ID", "QUEUE", "STATUS"]
    events = as_json(omniq(db_url, "events", "--task", task_id["task_id"], "--json"))
    assert isinstance(events, list)
    assert [e["event_type"] for e in events][::-1][:3] == ["enqueued", "dequeued", "executing"]
    stats = as_json(omniq(db_url, "stats", "--json"))
    assert isinstance(stats, dict) and stats["task_totals"] == {"completed": 2}


def test_delays_priorities_cancel_and_requeue(db_url: str) -> None:
    later = omniq(db_url, "enqueue", f"{APP}:add", "--args", "[1, 1]", "--in", "1h").stdout.strip()
    task = as_json(omniq(db_url, "task", later, "--json"))
    assert isinstance(task, dict) and task["status"] == "pending"
    assert omniq(db_url, "cancel", later).returncode == 0
    again = omniq(db_url, "cancel", later)
    assert again.returncode == 1 and "already finished" in again.stderr
    requeued = omniq(db_url, "requeue", later)
    assert requeued.returncode == 0 and "pending" in requeued.stdout


def test_bad_input_gives_one_line_and_exit_code(db_url: str, tmp_path: Path) -> None:
    bad_json = omniq(db_url, "enqueue", f"{APP}:add", "--args", "[1,")
    assert bad_json.returncode == 2
    assert bad_json.stderr.strip().startswith("omniq: error: --args: not valid JSON")
    assert len(bad_json.stderr.strip().splitlines()) == 1

    not_a_list = omniq(db_url, "enqueue", f"{APP}:add", "--args", '{"a": 1}')
    assert not_a_list.returncode == 2 and "expected a JSON list" in not_a_list.stderr

    bad_ref = omniq(db_url, "enqueue", "not a reference")
    assert bad_ref.returncode == 2 and "func" in bad_ref.stderr

    unknown = omniq(db_url, "task", "no-such-task")
    assert unknown.returncode == 2 and "no task with id 'no-such-task'" in unknown.stderr

    bad_url = omniq("mysql://localhost/x", "tasks")
    assert bad_url.returncode == 2 and "unsupported database URL scheme" in bad_url.stderr

    bad_duration = omniq(db_url, "enqueue", f"{APP}:add", "--in", "soon")
    assert bad_duration.returncode == 2 and "--in" in bad_duration.stderr

    bad_status = omniq(db_url, "tasks", "--status", "bogus")
    assert bad_status.returncode == 2 and "unknown status 'bogus'" in bad_status.stderr

    for command in ("results", "events"):  # was an OverflowError, exit 1
        too_far = omniq(db_url, command, "--since", "99999999d")
        assert too_far.returncode == 2 and "before year 1" in too_far.stderr

    # Nothing was written by the failed commands.
    assert as_json(omniq(db_url, "tasks", "--json")) == []

    # --queues naming no queue is a mistake, not "every queue" (the worker does not start).
    for empty in (",,", " , "):
        worker = omniq(db_url, "worker", "--queues", empty, "--burst")
        assert worker.returncode == 2 and "--queues: no queue name" in worker.stderr


def test_db_commands_on_a_new_database(empty_db_url: str) -> None:
    if empty_db_url.startswith("sqlite"):
        # `db current` only reads: it does not create the file.
        missing = omniq(empty_db_url, "db", "current", "--json")
        assert missing.returncode == 1 and "there is no OmniQ database" in missing.stderr
    else:
        current = as_json(omniq(empty_db_url, "db", "current", "--json"))
        assert current == {"current": None, "head": migrate.head(), "up_to_date": False}
    assert omniq(empty_db_url, "db", "upgrade").returncode == 0
    assert as_json(omniq(empty_db_url, "db", "current", "--json")) == {
        "current": migrate.head(),
        "head": migrate.head(),
        "up_to_date": True,
    }
    check = omniq(empty_db_url, "db", "check")
    assert check.returncode == 0 and "schema matches head" in check.stdout


def test_server_database_behind_head_is_reported(empty_db_url: str) -> None:
    if empty_db_url.startswith("sqlite"):
        # Reading never creates a SQLite file (a worker or `db upgrade` does).
        proc = omniq(empty_db_url, "tasks", "--json")
        assert proc.returncode == 1 and "there is no OmniQ database" in proc.stderr
        return
    proc = omniq(empty_db_url, "tasks")
    assert proc.returncode == 1
    assert "SchemaOutOfDate" in proc.stderr and "omniq db upgrade" in proc.stderr


@pytest.mark.parametrize("burst", [False, True], ids=["serving", "burst"])
def test_worker_sigterm_releases_unfinished_task(db_url: str, tmp_path: Path, burst: bool) -> None:
    """`omniq worker --burst` had no SIGTERM handler: it was killed (exit 143) and
    left its tasks running under leases nobody held, until they expired."""
    marker = tmp_path / "started.txt"
    task_id = omniq(
        db_url, "enqueue", f"{APP}:slow", "--args", json.dumps([30, str(marker)])
    ).stdout.strip()
    env = {**os.environ, "OMNIQ_DATABASE_URL": db_url, "PYTHONPATH": str(ROOT)}
    worker = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "omniq",
            "worker",
            "--app",
            APP,
            "--executor",
            "thread",
            "--grace-period",
            "0.5s",
            "--poll-interval",
            "0.1s",
            *(["--burst"] if burst else []),
        ],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_for(marker.exists)
        worker.send_signal(signal.SIGTERM)
        _, stderr = worker.communicate(timeout=30)
    finally:
        if worker.poll() is None:
            worker.kill()
    assert worker.returncode == 0, stderr
    task = as_json(omniq(db_url, "task", task_id, "--json"))
    assert isinstance(task, dict)
    assert task["status"] == "pending" and task["attempts"] == 0
    events = as_json(omniq(db_url, "events", "--task", task_id, "--json"))
    assert isinstance(events, list) and events[0]["event_type"] == "released"


@pytest.mark.parametrize("fmt", ["toml", "json"])
def test_schedules_listing_and_actions(db_url: str, fmt: str) -> None:
    from omniq import OmniQ

    with OmniQ(url=db_url) as oq:
        sid = oq.schedule(f"{APP}:add", [1, 2], interval=60, name=f"every-minute-{fmt}")
    listing = omniq(db_url, "schedules")
    assert listing.returncode == 0 and f"every-minute-{fmt}" in listing.stdout
    paused = omniq(db_url, "schedule", "pause", sid)
    assert paused.returncode == 0 and "paused" in paused.stdout
    again = omniq(db_url, "schedule", "pause", sid)
    assert again.returncode == 1 and "expected active" in again.stderr
    assert omniq(db_url, "schedule", "resume", sid).returncode == 0
    missing = omniq(db_url, "schedule", "cancel", "nope")
    assert missing.returncode == 2 and "no schedule with id 'nope'" in missing.stderr


def test_a_cli_worker_recovers_a_killed_workers_task_at_its_maintenance_interval(
    db_url: str, tmp_path: Path
) -> None:
    marker = tmp_path / "started.txt"
    task_id = omniq(
        db_url, "enqueue", f"{APP}:slow", "--args", json.dumps([60, str(marker)])
    ).stdout.strip()
    env = {**os.environ, "OMNIQ_DATABASE_URL": db_url, "PYTHONPATH": str(ROOT)}
    short = ["--lease-duration", "4s", "--heartbeat-interval", "0.5s", "--poll-interval", "0.1s"]

    def start(*extra: str) -> subprocess.Popen[str]:
        command = [sys.executable, "-m", "omniq", "worker", "--app", APP, "--executor", "thread"]
        return subprocess.Popen(
            [*command, *short, *extra],
            cwd=ROOT,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )

    doomed = start()
    try:
        wait_for(marker.exists)
    finally:
        doomed.kill()
        doomed.communicate(timeout=30)
    marker.unlink()
    # The default maintenance interval is 30 s; this worker sweeps every 0.3 s, so
    # the dead worker's task is recovered soon after its 4 s lease runs out, and
    # runs again (at-least-once; crashes do not spend max_retries).
    rescuer = start("--maintenance-interval", "0.3s", "--prefetch", "0", "--grace-period", "1s")
    try:
        wait_for(marker.exists, timeout=60)
        task = as_json(omniq(db_url, "task", task_id, "--json"))
        assert isinstance(task, dict) and task["status"] == "running"
        assert task["lost_count"] == 1 and task["retry_count"] == 0
    finally:
        rescuer.send_signal(signal.SIGTERM)
        _, stderr = rescuer.communicate(timeout=30)
    assert rescuer.returncode == 0, stderr
    events = as_json(omniq(db_url, "events", "--task", task_id, "--json"))
    assert any("lost the lease" in str(e.get("message")) for e in events)


def test_worker_no_gc_freeze_leaves_the_heap_alone(db_url: str) -> None:
    proc = omniq(db_url, "worker", "--burst", "--no-gc-freeze", "--log-level", "info")
    assert proc.returncode == 0, proc.stderr
    banner = next(line for line in proc.stderr.splitlines() if " starting" in line)
    assert banner.endswith(", gc freeze off"), banner


def test_worker_flags_are_checked(db_url: str) -> None:
    for flags, named in (
        (["--prefetch", "-1"], "--prefetch"),
        (["--maintenance-interval", "soon"], "--maintenance-interval"),
    ):
        proc = omniq(db_url, "worker", "--burst", *flags)
        assert proc.returncode == 2, proc.stderr
        assert named in proc.stderr and proc.stderr.startswith("omniq: error:")


def test_results_listing_and_a_tasks_failed_attempts(db_url: str) -> None:
    ok = as_json(omniq(db_url, "enqueue", f"{APP}:add", "--args", "[2, 2]", "--json"))
    bad = as_json(omniq(db_url, "enqueue", f"{APP}:boom", "--max-retries", "1", "--json"))
    assert isinstance(ok, dict) and isinstance(bad, dict)

    def failed_for_good() -> bool:
        # Burst mode stops when nothing is ready: the retry waits about a second.
        worker = omniq(db_url, "worker", "--app", APP, "--burst", "--json")
        assert worker.returncode == 0, worker.stderr
        task = as_json(omniq(db_url, "task", bad["task_id"], "--json"))
        return isinstance(task, dict) and task["status"] == "failed"

    wait_for(failed_for_good)

    listed = as_json(omniq(db_url, "results", "--json"))
    assert isinstance(listed, list)
    assert {r["task_id"] for r in listed} == {ok["task_id"], bad["task_id"]}
    errors = as_json(omniq(db_url, "results", "--status", "error", "--json"))
    assert isinstance(errors, list) and [r["task_id"] for r in errors] == [bad["task_id"]]
    by_func = as_json(omniq(db_url, "results", "--func", f"{APP}:add", "--since", "1h", "--json"))
    assert isinstance(by_func, list) and [r["task_id"] for r in by_func] == [ok["task_id"]]
    paged = as_json(omniq(db_url, "results", "--limit", "1", "--offset", "1", "--json"))
    assert isinstance(paged, list) and len(paged) == 1
    table = omniq(db_url, "results", "--status", "error")
    assert table.returncode == 0
    assert table.stdout.splitlines()[0].split()[:2] == ["TASK", "STATUS"]
    assert "RuntimeError: boom" in table.stdout
    unknown = omniq(db_url, "results", "--status", "done")
    assert unknown.returncode == 2 and "status: unknown status 'done'" in unknown.stderr

    task = as_json(omniq(db_url, "task", bad["task_id"], "--json"))
    assert isinstance(task, dict) and task["status"] == "failed"
    attempts = task["failed_attempts"]
    assert [(a["attempt"], a["error"]["type"], a["error"]["retryable"]) for a in attempts] == [
        (1, "RuntimeError", True),
        (2, "RuntimeError", False),
    ]
    text = omniq(db_url, "task", bad["task_id"])
    assert text.returncode == 0 and "failed attempts:" in text.stdout
    assert "RuntimeError: boom" in text.stdout
    assert "failed attempts:" not in omniq(db_url, "task", ok["task_id"]).stdout
