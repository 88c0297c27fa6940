"""`omniq task ID` shows the progress a running task reported, as a user runs it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
APP = "tests.acceptance.cli_progress_tasks"


def omniq(url: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "OMNIQ_DATABASE_URL": url, "PYTHONPATH": str(ROOT)}
    return subprocess.run(
        [sys.executable, "-m", "omniq", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def task_json(url: str, task_id: str) -> dict[str, Any]:
    proc = omniq(url, "task", task_id, "--json")
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    assert isinstance(data, dict)
    return data


def test_omniq_task_shows_the_progress_of_a_running_then_finished_task(
    db_url: str, tmp_path: Path
) -> None:
    gate = tmp_path / "gate"
    enqueued = omniq(db_url, "enqueue", f"{APP}:two_steps", "--args", json.dumps([str(gate)]))
    assert enqueued.returncode == 0, enqueued.stderr
    task_id = enqueued.stdout.strip()
    assert task_json(db_url, task_id)["progress"] is None
    assert "progress:" not in omniq(db_url, "task", task_id).stdout

    env = {**os.environ, "OMNIQ_DATABASE_URL": db_url, "PYTHONPATH": str(ROOT)}
    worker = subprocess.Popen(
        [sys.executable, "-m", "omniq", "worker", "--app", APP, "--burst"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 60
        while (progress := task_json(db_url, task_id)["progress"]) is None:
            assert worker.poll() is None, worker.communicate()[1]
            assert time.monotonic() < deadline, "no progress shown within 60s"
            time.sleep(0.05)
        assert progress["done"] == 1 and progress["total"] == 4
        assert progress["percent"] == 25 and progress["message"] == "first quarter"
        assert progress["attempt"] == 1
        text = omniq(db_url, "task", task_id).stdout
        assert "progress: [#####...............] 25% (1 of 4) first quarter" in text
        gate.touch()
        _, errors = worker.communicate(timeout=60)
        assert worker.returncode == 0, errors
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.communicate()
    finished = task_json(db_url, task_id)
    assert finished["status"] == "completed"
    assert finished["progress"]["percent"] == 100
    assert finished["progress"]["message"] == "all done"
    assert "100% (4 of 4) all done" in omniq(db_url, "task", task_id).stdout
