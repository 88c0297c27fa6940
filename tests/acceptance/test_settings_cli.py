"""Settings checked at the door, as `omniq worker` meets them: options and environment."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
APP = "tests.acceptance.log_tasks"


def worker(
    url: str, *flags: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("OMNIQ_")}
    return subprocess.run(
        [sys.executable, "-m", "omniq", "worker", "--app", APP, "--burst", "--json", *flags],
        cwd=ROOT,
        env={**base, "OMNIQ_DATABASE_URL": url, "PYTHONPATH": str(ROOT), **(env or {})},
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.mark.parametrize(
    ("flags", "env", "named"),
    [
        (["--lease-duration", "3s", "--heartbeat-interval", "10s"], {}, "heartbeat_interval"),
        ([], {"OMNIQ_LEASE_DURATION": "3s", "OMNIQ_HEARTBEAT_INTERVAL": "10s"}, "lease_duration"),
        (["--lease-duration", "3s"], {"OMNIQ_HEARTBEAT_INTERVAL": "2s"}, "lease_duration / 3"),
        (["--concurrency", "0"], {}, "concurrency"),
        (["--concurrency", "99999999999999999999"], {}, "concurrency"),
        ([], {"OMNIQ_CONCURRENCY": "2000000"}, "concurrency"),
        # Separators alone: `--queues ',,'` was refused, the same from the
        # environment served every queue.
        ([], {"OMNIQ_QUEUES": ",,"}, "no queue name"),
        (["--queues", ",,"], {}, "no queue name"),
        (["--maintenance-interval", "0s"], {}, "maintenance_interval"),
        (["--poll-interval", "2d"], {}, "poll_interval"),
        ([], {"OMNIQ_EVENT_RETENTION": "0s"}, "event_retention"),
    ],
)
def test_bad_combinations_exit_2_naming_the_fields(
    db_url: str, flags: list[str], env: dict[str, str], named: str
) -> None:
    proc = worker(db_url, *flags, env=env)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.startswith("omniq: error: ") and named in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr


def test_a_lease_alone_brings_its_heartbeat_along(db_url: str) -> None:
    # --lease-duration 2s with the default heartbeat: the heartbeat becomes 0.5s.
    proc = worker(db_url, "--lease-duration", "2s")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["completed"] == 0
